//! Continuous sync (`idrelay run`): a change feed writes into the on-disk queue; the sender
//! reads it in order, provisions, and acknowledges.
//!
//! ```text
//! directory ──syncrepl persist──▶ feed task ──append(batch, cookie)──▶ queue
//!                                                                        │ read (oldest first)
//! SCIM endpoint ◀──── provision one change at a time ◀──── sender ◀─────┘ ack after provisioning
//! ```
//!
//! Invariants:
//! * A change is acknowledged only after it was provisioned or failed for good (a 4xx that
//!   no retry will fix, reported in the log). While the endpoint is unreachable the sender
//!   waits and retries the same change; nothing behind it overtakes it, so the order per
//!   object is the order of the directory.
//! * The watermark (the syncrepl cookie) is stored only together with the changes it covers
//!   (one queue append). After a crash the feed resumes from the last durable cookie and
//!   the sender re-reads every change not acknowledged: at-least-once, and provisioning is
//!   idempotent (the sender re-reads the object's current state by DN and compares hashes).
//! * A full pass runs when the queue owes one (first start, overflow, damage, a present
//!   phase, e-syncRefreshRequired). The feed is stopped meanwhile; the cookie is taken
//!   before the pass, so changes made during the pass are replayed after it.
//!
//! Change feeds: OpenLDAP (and other servers with RFC 4533 syncprov) only, for now.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::ldap::{Directory, LdapError, SyncEvent, SyncMode};
use crate::queue::{AppendOutcome, Queue, QueueError, ResyncReason};
use crate::relay::agent::AgentState;
use crate::relay::backoff::Backoff;
use crate::scim::client::ScimClient;
use crate::scim::mapping::{self, Reference, Resolver};
use crate::scim::profile::SyncProfile;
use crate::scim::ResourceKind;
use crate::signals::{Control, Request};
use crate::sync::anchors::{representation_hash, Anchor, AnchorIndex};
use crate::sync::deletes::{self, DeleteGate, GateError, Target, Verdict};
use crate::sync::dn;
use crate::sync::pass::{full_pass, PassSettings};
use crate::sync::poll::{self, PollError, PollSpec};
use crate::sync::provision::{provision, Job, Outcome};

/// One change as stored in the queue (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Change {
    /// Added, modified, renamed or moved: re-read by DN and bring in step.
    Upsert {
        /// The DN the feed reported.
        dn: String,
        /// entryUUID.
        uuid: String,
    },
    /// Deleted in the directory.
    Delete {
        /// entryUUID (objectGUID in base64 on AD).
        uuid: String,
        /// The DN it had, when the feed knows it (AD tombstones): finds objects whose
        /// anchor is not the uuid (mS-DS-ConsistencyGuid).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dn: Option<String>,
    },
}

/// The watermark stored with each batch: the cookie, and which scope it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    /// Format version.
    pub v: u8,
    /// Fingerprint of base and filters; a different scope needs a new full pass.
    pub scope: String,
    /// The syncrepl cookie (text as the server sent it; lossy for non-UTF-8 bytes is not
    /// acceptable, so it is kept as bytes in base64).
    pub cookie: String,
}

impl Watermark {
    fn encode(scope: &str, cookie: &[u8]) -> Vec<u8> {
        serde_json::to_vec(&Watermark {
            v: 1,
            scope: scope.to_string(),
            cookie: crate::scim::base64::encode(cookie),
        })
        .unwrap_or_default()
    }

    /// Decodes a stored watermark into the cookie, if it belongs to `scope`.
    pub fn cookie_for(bytes: &[u8], scope: &str) -> Option<Vec<u8>> {
        let w: Watermark = serde_json::from_slice(bytes).ok()?;
        if w.v != 1 || w.scope != scope {
            return None;
        }
        crate::scim::base64::decode(&w.cookie).ok()
    }
}

/// What `run` needs besides its connections.
pub struct FollowSettings {
    /// The full-pass settings (scope, filters, concurrency).
    pub pass: PassSettings,
    /// The naming context the feed follows.
    pub base_dn: String,
    /// The state directory (for the time of the last full pass).
    pub state_dir: PathBuf,
    /// How often a full pass runs anyway (zero: only when owed).
    pub full_pass_interval: Duration,
    /// The change feed.
    pub feed: Feed,
}

/// The change feed `run` follows (resolved: never "auto").
#[derive(Debug, Clone)]
pub enum Feed {
    /// RFC 4533 refreshAndPersist.
    Syncrepl,
    /// A polling feed.
    Poll(PollSpec),
}

impl Feed {
    /// Its name in logs and in the config.
    pub fn name(&self) -> &'static str {
        match self {
            Feed::Syncrepl => "syncrepl",
            Feed::Poll(p) => p.kind.as_str(),
        }
    }
}

/// The file (in the state directory) holding the unix time of the last completed full pass.
pub const LAST_PASS_FILE: &str = "last-full-pass";

/// When the last full pass completed, if ever (read from the state directory).
pub fn last_full_pass(state_dir: &std::path::Path) -> Option<SystemTime> {
    let text = std::fs::read_to_string(state_dir.join(LAST_PASS_FILE)).ok()?;
    let secs: u64 = text.trim().parse().ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

/// Records that a full pass completed now.
pub fn record_full_pass(state_dir: &std::path::Path) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let path = state_dir.join(LAST_PASS_FILE);
    let tmp = path.with_extension("tmp");
    let ok = std::fs::write(&tmp, format!("{secs}\n")).and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = ok {
        log::warn!(
            "cannot record the time of the full pass in {}: {e}",
            path.display()
        );
    }
}

/// Whether the periodic full pass is due (`interval` zero: never).
fn full_pass_due(last: Option<SystemTime>, interval: Duration, now: SystemTime) -> bool {
    if interval.is_zero() {
        return false;
    }
    match last {
        None => false, // no pass recorded: the queue owes one anyway
        // A clock that jumped back makes the pass look recent; one that jumped forward
        // only brings the pass forward: both harmless.
        Some(t) => now
            .duration_since(t)
            .map(|e| e >= interval)
            .unwrap_or(false),
    }
}

impl FollowSettings {
    fn scope_fingerprint(&self) -> String {
        let text = format!(
            "{}\n{}\n{}\n{}{}",
            dn::normalize(&self.base_dn),
            self.pass
                .include
                .iter()
                .map(|d| dn::normalize(d))
                .collect::<Vec<_>>()
                .join(";"),
            self.pass.user_filter,
            self.pass.group_filter,
            // Watermarks of one feed mean nothing to another (syncrepl kept the old text).
            match &self.feed {
                Feed::Syncrepl => String::new(),
                f => format!("\n{}", f.name()),
            }
        );
        format!(
            "{:016x}",
            representation_hash(&serde_json::Value::String(text))
        )
    }

    fn feed_filter(&self) -> String {
        format!("(|{}{})", self.pass.user_filter, self.pass.group_filter)
    }
}

/// Why the run loop stopped.
#[derive(Debug)]
pub enum RunError {
    /// The queue cannot be used (locked by another agent, newer format, I/O).
    Queue(QueueError),
    /// The anchor index cannot be written.
    State(std::io::Error),
    /// The held-deletes file cannot be written.
    Deletes(GateError),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Queue(e) => write!(f, "queue: {e}"),
            RunError::State(e) => write!(f, "anchor index: {e}"),
            RunError::Deletes(e) => write!(f, "held deletes: {e}"),
        }
    }
}

impl std::error::Error for RunError {}

/// The queue, shared between the feed task and the sender.
pub type SharedQueue = Arc<Mutex<Queue>>;

async fn with_queue<T: Send + 'static>(
    q: &SharedQueue,
    f: impl FnOnce(&mut Queue) -> T + Send + 'static,
) -> T {
    let q = q.clone();
    smol::unblock(move || {
        let mut g = q.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    })
    .await
}

/// The mutable state `run` works on.
pub struct State<'a> {
    /// externalId → SCIM id and last hash.
    pub index: &'a mut AnchorIndex,
    /// The deletion threshold and held deletes.
    pub gate: &'a mut DeleteGate,
    /// The on-disk change queue.
    pub queue: SharedQueue,
    /// Lease, phase and counters shared with the relay.
    pub agent: &'a AgentState,
}

/// Runs until an operator asks it to stop or reload (the request is returned), or until an
/// error makes further work impossible.
pub async fn run(
    dir: &Directory,
    scim: &ScimClient,
    profile: &SyncProfile,
    st: State<'_>,
    settings: &FollowSettings,
    control: &Control,
) -> Result<Request, RunError> {
    let State {
        index,
        gate,
        queue,
        agent,
    } = st;
    let mut was_standby = false;
    let scope = settings.scope_fingerprint();
    let mut retry = Backoff::new(Duration::from_secs(1), Duration::from_secs(15));
    loop {
        if let Some(r) = control.requested() {
            index.save().map_err(RunError::State)?;
            gate.save().map_err(RunError::Deletes)?;
            return Ok(r);
        }
        if !agent.is_active() {
            // Another agent of the group holds the lease: provision nothing, keep state.
            if !was_standby {
                log::info!("standby: another agent of this directory group is active; waiting for the lease");
                agent.set_phase("standby");
                was_standby = true;
            }
            control.sleep(Duration::from_secs(2)).await;
            continue;
        }
        if was_standby {
            log::info!("active: this agent holds the lease; provisioning");
            was_standby = false;
        }
        release_approved(scim, index, gate, settings).await?;
        if full_pass_due(
            last_full_pass(&settings.state_dir),
            settings.full_pass_interval,
            SystemTime::now(),
        ) {
            log::info!(
                "the periodic full pass is due (every {})",
                crate::sync::progress::format_duration(settings.full_pass_interval)
            );
            with_queue(&queue, |q| q.mark_resync_owed(ResyncReason::Scheduled))
                .await
                .map_err(RunError::Queue)?;
        }
        // A watermark from another scope cannot be followed.
        let (owed, mark) = with_queue(&queue, |q| {
            (q.resync_owed(), q.watermark().map(<[u8]>::to_vec))
        })
        .await;
        let cookie = mark
            .as_deref()
            .and_then(|m| Watermark::cookie_for(m, &scope));
        if !owed && cookie.is_none() {
            log::info!("the stored watermark belongs to another scope; a full pass is needed");
            with_queue(&queue, |q| q.mark_resync_owed(ResyncReason::Requested))
                .await
                .map_err(RunError::Queue)?;
            continue;
        }
        if owed {
            let reason = with_queue(&queue, |q| q.resync_reason()).await;
            log::info!(
                "full pass owed ({}); starting it",
                reason.map(|r| r.as_str()).unwrap_or("unknown")
            );
            agent.set_phase("full-pass");
            let pass = resync(dir, scim, profile, index, gate, &queue, settings, &scope);
            // A stop during a pass abandons it: requests in flight are dropped, and what
            // landed is in the index (saved above on the next turn). Nothing is lost: the
            // pass is still owed and runs again at the next start.
            let outcome = smol::future::or(async { Some(pass.await) }, async {
                control.wait().await;
                None
            })
            .await;
            match outcome {
                None => log::info!(
                    "full pass interrupted by a {:?} request",
                    control.requested()
                ),
                Some(Ok(())) => {
                    record_full_pass(&settings.state_dir);
                    retry.reset();
                }
                Some(Err(e)) => {
                    agent.set_error(format!("full pass: {e}"));
                    agent.set_phase("degraded");
                    let wait = retry.next_delay().unwrap_or(Duration::from_secs(60));
                    log::warn!(
                        "full pass did not complete ({e}); retrying in {:.0} s",
                        wait.as_secs_f64()
                    );
                    control.sleep(wait).await;
                }
            }
            continue;
        }
        let cookie = cookie.expect("checked above");
        let (notify_tx, notify_rx) = smol::channel::bounded::<()>(1);
        let feed = match &settings.feed {
            Feed::Syncrepl => smol::spawn(feed(
                dir.clone(),
                settings.base_dn.clone(),
                settings.feed_filter(),
                cookie,
                queue.clone(),
                scope.clone(),
                notify_tx,
            )),
            Feed::Poll(spec) => smol::spawn(poll_feed(
                dir.clone(),
                spec.clone(),
                settings.feed_filter(),
                cookie,
                queue.clone(),
                scope.clone(),
                notify_tx,
            )),
        };
        let ctx = SendCtx {
            dir,
            scim,
            profile,
            settings,
            control,
            agent,
        };
        agent.set_phase("following");
        let outcome = send_loop(&ctx, index, gate, &queue, &feed, &notify_rx).await;
        let feed_ended = match outcome {
            // The task has finished: awaiting it only collects its reason.
            SendEnd::FeedEnded => Some(feed.await),
            _ => {
                drop(feed); // cancels the feed task and abandons its search
                None
            }
        };
        index.save().map_err(RunError::State)?;
        gate.save().map_err(RunError::Deletes)?;
        match outcome {
            SendEnd::ResyncOwed | SendEnd::Signal => {}
            SendEnd::FeedEnded => {
                let e = feed_ended.unwrap_or_default();
                agent.set_error(format!("change feed: {e}"));
                let wait = retry.next_delay().unwrap_or(Duration::from_secs(60));
                log::warn!(
                    "change feed stopped ({e}); restarting it in {:.0} s",
                    wait.as_secs_f64()
                );
                control.sleep(wait).await;
            }
            SendEnd::Fatal(e) => return Err(e),
        }
    }
}

/// Sends the deletes `approve-deletes` released, if an approval is waiting.
async fn release_approved(
    scim: &ScimClient,
    index: &mut AnchorIndex,
    gate: &mut DeleteGate,
    settings: &FollowSettings,
) -> Result<(), RunError> {
    let Some(targets) = gate.take_approval() else {
        return Ok(());
    };
    gate.save().map_err(RunError::Deletes)?;
    let s = deletes::send_approved(scim, index, settings.pass.user_delete, targets).await;
    log::info!(
        "approved deletes: {} sent, {} failed (failed ones are found again by the next full pass)",
        s.sent,
        s.failed.len()
    );
    index.save().map_err(RunError::State)
}

#[allow(clippy::too_many_arguments)]
async fn resync(
    dir: &Directory,
    scim: &ScimClient,
    profile: &SyncProfile,
    index: &mut AnchorIndex,
    gate: &mut DeleteGate,
    queue: &SharedQueue,
    settings: &FollowSettings,
    scope: &str,
) -> Result<(), String> {
    // The endpoint first: an outage means waiting here, not failing every object.
    match scim.service_provider_config().await {
        Ok(_) => {}
        Err(e) if e.status() == Some(404) => {}
        Err(e) => return Err(format!("SCIM endpoint unreachable: {e}")),
    }
    // The cookie before the pass: what changes during the pass is replayed after it.
    let cookie = match &settings.feed {
        Feed::Syncrepl => current_cookie(dir, &settings.base_dn, &settings.feed_filter())
            .await
            .map_err(|e| format!("reading the directory's sync cookie: {e}"))?,
        Feed::Poll(spec) => poll::position(dir, spec)
            .await
            .map_err(|e| format!("reading the {} watermark: {e}", spec.kind.as_str()))?,
    };
    let report = full_pass(dir, scim, profile, index, gate, &settings.pass)
        .await
        .map_err(|e| e.to_string())?;
    log::info!("{report}");
    for f in &report.failures {
        log::warn!("not in step after the full pass: {}: {}", f.dn, f.reason);
    }
    let mark = Watermark::encode(scope, &cookie);
    with_queue(queue, move |q| q.mark_resync_done(&mark))
        .await
        .map_err(|e| format!("queue: {e}"))?;
    Ok(())
}

/// A cookie for "now": a refreshOnly search that lists DNs only and ends with a cookie.
async fn current_cookie(dir: &Directory, base: &str, filter: &str) -> Result<Vec<u8>, LdapError> {
    let mut s = dir.content_sync(base, filter, &["1.1"], None, SyncMode::RefreshOnly);
    let mut cookie = None;
    while let Some(ev) = s.next().await {
        if let SyncEvent::Cookie(c) = ev? {
            cookie = Some(c);
        }
    }
    cookie.ok_or_else(|| LdapError::Protocol {
        detail: format!(
            "the server sent no sync cookie for {base}; is the syncprov overlay loaded?"
        ),
    })
}

/// Largest batch the feed appends without a new cookie (covered by the previous one).
const FEED_BATCH: usize = 500;

#[allow(clippy::too_many_arguments)]
async fn feed(
    dir: Directory,
    base: String,
    filter: String,
    cookie: Vec<u8>,
    queue: SharedQueue,
    scope: String,
    notify: smol::channel::Sender<()>,
) -> String {
    let mut stream = dir.content_sync(
        &base,
        &filter,
        &["entryUUID"],
        Some(cookie.clone()),
        SyncMode::RefreshAndPersist,
    );
    let mut last_cookie = cookie;
    let mut batch: Vec<Vec<u8>> = Vec::new();
    loop {
        let ev = match stream.next().await {
            None => return "the directory ended the sync search".into(),
            Some(Err(e)) => {
                if e.is_sync_refresh_required() {
                    let _ =
                        with_queue(&queue, |q| q.mark_resync_owed(ResyncReason::Requested)).await;
                    let _ = notify.try_send(());
                }
                return e.to_string();
            }
            Some(Ok(ev)) => ev,
        };
        let mut flush = false;
        match ev {
            // Every change under the base goes in: one that moved out of the included
            // subtrees is a delete the sender must see.
            SyncEvent::Upsert { uuid, entry } => {
                batch.push(encode(&Change::Upsert { dn: entry.dn, uuid }));
            }
            SyncEvent::Delete { uuid, .. } => {
                batch.push(encode(&Change::Delete { uuid, dn: None }))
            }
            SyncEvent::IdSet {
                uuids,
                deletes: true,
            } => {
                batch.extend(
                    uuids
                        .into_iter()
                        .map(|uuid| encode(&Change::Delete { uuid, dn: None })),
                );
            }
            SyncEvent::IdSet { deletes: false, .. } | SyncEvent::Phase { deletes: false, .. } => {
                // A present phase (the server forgot our position): what is missing can only
                // be found by a full pass.
                log::info!("the directory answered with a present phase; a full pass follows");
                let _ = with_queue(&queue, |q| q.mark_resync_owed(ResyncReason::Requested)).await;
                let _ = notify.try_send(());
                return "present phase".into();
            }
            SyncEvent::Phase { .. } | SyncEvent::RefreshDone { .. } => flush = !batch.is_empty(),
            SyncEvent::Cookie(c) => {
                last_cookie = c;
                flush = true;
            }
        }
        if flush || batch.len() >= FEED_BATCH {
            let payloads = std::mem::take(&mut batch);
            let mark = Watermark::encode(&scope, &last_cookie);
            if let Err(why) = append(&queue, payloads, mark).await {
                let _ = notify.try_send(());
                return why;
            }
            let _ = notify.try_send(());
        }
    }
}

/// Appends one batch with its watermark; waits out retryable I/O errors (a full disk).
/// Returns why the feed must stop (overflow: a full pass is owed; a fatal queue error).
async fn append(queue: &SharedQueue, payloads: Vec<Vec<u8>>, mark: Vec<u8>) -> Result<(), String> {
    let mut pause = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let p = payloads.clone();
        let m = mark.clone();
        match with_queue(queue, move |q| q.append(&p, &m)).await {
            Ok(AppendOutcome::Appended { .. }) => return Ok(()),
            Ok(AppendOutcome::Overflowed { dropped }) => {
                log::warn!(
                    "change queue is full: dropped {dropped} pending changes; a full pass will run when the endpoint is reachable"
                );
                return Err("queue overflow".into());
            }
            Err(e) if e.is_retryable() => {
                let wait = pause.next_delay().unwrap_or(Duration::from_secs(30));
                log::warn!(
                    "cannot append to the change queue ({e}); feed paused, retrying in {:.1} s",
                    wait.as_secs_f64()
                );
                smol::Timer::after(wait).await;
            }
            Err(e) => return Err(format!("queue: {e}")),
        }
    }
}

/// A polling feed (DirSync, uSN, modifyTimestamp): polls every interval, appends what
/// changed together with the watermark that covers it.
async fn poll_feed(
    dir: Directory,
    spec: PollSpec,
    feed_filter: String,
    mut mark: Vec<u8>,
    queue: SharedQueue,
    scope: String,
    notify: smol::channel::Sender<()>,
) -> String {
    loop {
        match poll::poll_once(&dir, &spec, &feed_filter, &mark).await {
            Ok((changes, next)) => {
                if !changes.is_empty() || next != mark {
                    let n = changes.len();
                    let mut payloads: Vec<Vec<u8>> = changes.iter().map(encode).collect();
                    // Earlier chunks carry the old watermark: only the last one covers all.
                    while payloads.len() > FEED_BATCH {
                        let rest = payloads.split_off(FEED_BATCH);
                        let chunk = std::mem::replace(&mut payloads, rest);
                        if let Err(why) =
                            append(&queue, chunk, Watermark::encode(&scope, &mark)).await
                        {
                            let _ = notify.try_send(());
                            return why;
                        }
                    }
                    if let Err(why) =
                        append(&queue, payloads, Watermark::encode(&scope, &next)).await
                    {
                        let _ = notify.try_send(());
                        return why;
                    }
                    if n > 0 {
                        log::debug!("{} feed: {n} changes queued", spec.kind.as_str());
                        let _ = notify.try_send(());
                    }
                    mark = next;
                }
            }
            Err(PollError::Resync(why)) => {
                log::warn!("{} feed: {why}; a full pass follows", spec.kind.as_str());
                let _ = with_queue(&queue, |q| q.mark_resync_owed(ResyncReason::Requested)).await;
                let _ = notify.try_send(());
                return why;
            }
            Err(PollError::Failed(why)) => return why,
        }
        smol::Timer::after(spec.interval).await;
    }
}

fn encode(c: &Change) -> Vec<u8> {
    serde_json::to_vec(c).unwrap_or_default()
}

enum SendEnd {
    ResyncOwed,
    FeedEnded,
    Signal,
    Fatal(RunError),
}

/// What the sender reads but never changes.
struct SendCtx<'a> {
    dir: &'a Directory,
    scim: &'a ScimClient,
    profile: &'a SyncProfile,
    settings: &'a FollowSettings,
    control: &'a Control,
    agent: &'a AgentState,
}

/// How many queued changes the sender takes at a time (acknowledged together).
const SEND_BATCH: usize = 100;
const INDEX_SAVE_EVERY: Duration = Duration::from_secs(5);
const STATUS_LOG_EVERY: Duration = Duration::from_secs(60);

async fn send_loop(
    ctx: &SendCtx<'_>,
    index: &mut AnchorIndex,
    gate: &mut DeleteGate,
    queue: &SharedQueue,
    feed: &smol::Task<String>,
    notify: &smol::channel::Receiver<()>,
) -> SendEnd {
    let attrs = ctx.profile.object_attributes();
    let attrs: Vec<&str> = attrs.iter().map(String::as_str).collect();
    let mut last_save = Instant::now();
    let mut last_log = Instant::now();
    let mut applied = 0u64;
    let mut failed = 0u64;
    loop {
        if ctx.control.requested().is_some() || !ctx.agent.is_active() {
            return SendEnd::Signal;
        }
        ctx.agent.progressed();
        if feed.is_finished() {
            return SendEnd::FeedEnded;
        }
        if let Err(e) = release_approved(ctx.scim, index, gate, ctx.settings).await {
            return SendEnd::Fatal(e);
        }
        let read = with_queue(queue, |q| {
            if q.resync_owed() {
                return Ok(None);
            }
            q.read(None, SEND_BATCH).map(Some)
        })
        .await;
        let mut records = match read {
            Ok(Some(r)) => r,
            Ok(None) => return SendEnd::ResyncOwed,
            Err(QueueError::Corrupt { .. }) => return SendEnd::ResyncOwed,
            Err(e) => return SendEnd::Fatal(RunError::Queue(e)),
        };
        // Deletes are weighed against the threshold as a burst, not one by one: let the
        // rest of a burst arrive (a second at most) before deciding.
        if records.len() < SEND_BATCH && records.iter().any(|r| is_delete(&r.payload)) {
            if ctx.control.sleep(DELETE_LINGER).await.is_some() {
                return SendEnd::Signal;
            }
            match with_queue(queue, |q| q.read(None, SEND_BATCH)).await {
                Ok(r) => records = r,
                Err(QueueError::Corrupt { .. }) => return SendEnd::ResyncOwed,
                Err(e) => return SendEnd::Fatal(RunError::Queue(e)),
            }
        }
        let burst: Vec<Target> = records
            .iter()
            .filter_map(|r| match serde_json::from_slice::<Change>(&r.payload) {
                Ok(Change::Delete { uuid, dn }) => deleted_anchor(index, &uuid, dn.as_deref())
                    .filter(|(x, _)| !gate.is_held(x))
                    .map(|(x, a)| Target::of(&x, &a, "deleted in the directory")),
                _ => None,
            })
            .collect();
        let mut admitted: HashSet<String> = HashSet::new();
        let mut exits: Vec<Target> = Vec::new();
        if !burst.is_empty() {
            let anchors: Vec<String> = burst.iter().map(|t| t.anchor.clone()).collect();
            let n = burst.len();
            match gate.admit(burst) {
                Verdict::Go => admitted.extend(anchors),
                Verdict::Held => log::warn!(
                    "{n} deletes in one burst are over sync.delete_threshold: held for approval ({} held in all); run `idrelay approve-deletes` to release them",
                    gate.held().len()
                ),
            }
        }
        if records.is_empty() {
            if last_save.elapsed() >= INDEX_SAVE_EVERY {
                if let Err(e) = index.save() {
                    log::warn!("cannot save the anchor index yet: {e}");
                }
                last_save = Instant::now();
            }
            if last_log.elapsed() >= STATUS_LOG_EVERY {
                log::info!(
                    "following changes: {applied} applied, {failed} failed in the last minute; queue empty{}",
                    match gate.held().len() {
                        0 => String::new(),
                        n => format!("; {n} deletes held for approval"),
                    }
                );
                applied = 0;
                failed = 0;
                last_log = Instant::now();
            }
            if full_pass_due(
                last_full_pass(&ctx.settings.state_dir),
                ctx.settings.full_pass_interval,
                SystemTime::now(),
            ) {
                return SendEnd::ResyncOwed;
            }
            // Wake on the feed's signal, an operator's request, or look again after a while.
            let _ = smol::future::or(
                async {
                    let _ = notify.recv().await;
                },
                async {
                    ctx.control.sleep(Duration::from_secs(2)).await;
                },
            )
            .await;
            continue;
        }
        // Acknowledge what was handled, also when a stop request ends the batch early.
        let mut handled: Option<u64> = None;
        let mut end = None;
        'records: for r in records {
            let change: Change = match serde_json::from_slice(&r.payload) {
                Ok(c) => c,
                Err(e) => {
                    log::error!(
                        "queued change {} is not readable ({e}); skipped, a full pass follows",
                        r.seq
                    );
                    let _ = with_queue(queue, |q| q.mark_resync_owed(ResyncReason::CorruptRecord))
                        .await;
                    end = Some(SendEnd::ResyncOwed);
                    break;
                }
            };
            let mut wait = Backoff::new(Duration::from_millis(500), Duration::from_secs(15));
            loop {
                match apply(ctx, index, gate, &mut admitted, &mut exits, &attrs, &change).await {
                    Applied::Done => {
                        applied += 1;
                        ctx.agent
                            .provisioned
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        break;
                    }
                    Applied::Failed(why) => {
                        failed += 1;
                        ctx.agent
                            .failed
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        log::warn!("{why}");
                        ctx.agent.set_error(why);
                        break;
                    }
                    Applied::Retry(why) => {
                        let d = wait.next_delay().unwrap_or(Duration::from_secs(60));
                        log::warn!(
                            "{why}; retrying in {:.1} s (later changes wait, to keep their order)",
                            d.as_secs_f64()
                        );
                        if ctx.control.sleep(d).await.is_some() {
                            end = Some(SendEnd::Signal);
                            break 'records;
                        }
                        if with_queue(queue, |q| q.resync_owed()).await {
                            end = Some(SendEnd::ResyncOwed);
                            break 'records;
                        }
                    }
                }
            }
            handled = Some(r.seq);
            if ctx.control.requested().is_some() {
                end = Some(SendEnd::Signal);
                break;
            }
        }
        if end.is_none() && !exits.is_empty() {
            if let Some(e) = send_exits(ctx, index, gate, std::mem::take(&mut exits)).await {
                // Interrupted: acknowledge nothing of this batch; it is re-read (and
                // re-applied idempotently) after the restart.
                handled = None;
                end = Some(e);
            }
        }
        // Held deletes are durable before the changes that held them are acknowledged.
        if let Err(e) = gate.save() {
            return SendEnd::Fatal(RunError::Deletes(e));
        }
        if let Some(last) = handled {
            if let Err(e) = with_queue(queue, move |q| q.ack(last)).await {
                return SendEnd::Fatal(RunError::Queue(e));
            }
        }
        if let Some(end) = end {
            return end;
        }
        if last_save.elapsed() >= INDEX_SAVE_EVERY {
            if let Err(e) = index.save() {
                log::warn!("cannot save the anchor index yet: {e}");
            }
            last_save = Instant::now();
        }
    }
}

enum Applied {
    Done,
    Failed(String),
    Retry(String),
}

/// Resolves references through the anchor index alone (between passes there is no scope
/// scan): what the index does not know is left out until it is provisioned.
struct IndexResolver<'a>(&'a AnchorIndex);

impl Resolver for IndexResolver<'_> {
    fn resolve(&self, target: &str) -> Reference {
        match self.0.by_dn(target) {
            Some((_, a)) => Reference::Id(a.scim_id.clone()),
            None => Reference::OutOfScope,
        }
    }
}

/// Why an object the feed reported is not (or no longer) in scope, if it is not.
async fn out_of_scope(
    ctx: &SendCtx<'_>,
    entry: &crate::ldap::Entry,
    kind: Option<ResourceKind>,
) -> Result<Option<&'static str>, LdapError> {
    let Some(kind) = kind else {
        return Ok(Some("no longer a user or group the profile maps"));
    };
    if !dn::under_any(&entry.dn, &ctx.settings.pass.include) {
        return Ok(Some("moved out of the included subtrees"));
    }
    let filter = match kind {
        ResourceKind::User => &ctx.settings.pass.user_filter,
        ResourceKind::Group => &ctx.settings.pass.group_filter,
    };
    if ctx.dir.matches(&entry.dn, filter).await? {
        Ok(None)
    } else {
        Ok(Some(match kind {
            ResourceKind::User => "no longer matches scope.user_filter",
            ResourceKind::Group => "no longer matches scope.group_filter",
        }))
    }
}

/// One delete through the gate: sent now, or held for approval.
async fn delete_one(
    ctx: &SendCtx<'_>,
    index: &mut AnchorIndex,
    gate: &mut DeleteGate,
    target: Target,
) -> Applied {
    match gate.admit(vec![target.clone()]) {
        Verdict::Held => {
            log::warn!(
                "{} {} ({}): delete held for approval ({} held; run `idrelay approve-deletes` to release)",
                target.kind.word(),
                target.dn,
                target.reason,
                gate.held().len()
            );
            Applied::Done
        }
        Verdict::Go => {
            let r = send_delete(ctx, index, &target).await;
            if matches!(r, Applied::Retry(_)) {
                gate.refund(1); // admitted again on the retry
            }
            r
        }
    }
}

/// The objects that left scope in one batch, weighed as one burst and sent (each retried
/// while the endpoint is unavailable). Returns how the sender must end, if it must.
async fn send_exits(
    ctx: &SendCtx<'_>,
    index: &mut AnchorIndex,
    gate: &mut DeleteGate,
    exits: Vec<Target>,
) -> Option<SendEnd> {
    let n = exits.len();
    if gate.admit(exits.clone()) == Verdict::Held {
        log::warn!(
            "{n} objects left scope at once, over sync.delete_threshold: their deletes are held for approval ({} held in all; first: {}, {}); run `idrelay approve-deletes` to release them",
            gate.held().len(),
            exits[0].dn,
            exits[0].reason
        );
        return None;
    }
    for t in &exits {
        let mut wait = Backoff::new(Duration::from_millis(500), Duration::from_secs(15));
        loop {
            match send_delete(ctx, index, t).await {
                Applied::Done => break,
                Applied::Failed(why) => {
                    log::warn!("{why}");
                    break;
                }
                Applied::Retry(why) => {
                    let d = wait.next_delay().unwrap_or(Duration::from_secs(60));
                    log::warn!("{why}; retrying in {:.1} s", d.as_secs_f64());
                    if ctx.control.sleep(d).await.is_some() {
                        // Not acknowledged: the move is re-read after the restart.
                        return Some(SendEnd::Signal);
                    }
                }
            }
        }
    }
    None
}

/// Sends one admitted delete.
async fn send_delete(ctx: &SendCtx<'_>, index: &mut AnchorIndex, target: &Target) -> Applied {
    match deletes::execute(ctx.scim, ctx.settings.pass.user_delete, target).await {
        Ok(word) => {
            log::info!(
                "{} {} ({}): {word} at the endpoint",
                target.kind.word(),
                target.dn,
                target.reason
            );
            index.remove(&target.anchor);
            Applied::Done
        }
        Err(e) if e.is_transient() => Applied::Retry(format!("{}: {e}", target.dn)),
        Err(e) => Applied::Failed(format!("{}: delete failed: {e}", target.dn)),
    }
}

fn is_delete(payload: &[u8]) -> bool {
    matches!(
        serde_json::from_slice::<Change>(payload),
        Ok(Change::Delete { .. })
    )
}

/// How long the sender waits for the rest of a burst of deletes before weighing it.
const DELETE_LINGER: Duration = Duration::from_secs(1);

async fn apply(
    ctx: &SendCtx<'_>,
    index: &mut AnchorIndex,
    gate: &mut DeleteGate,
    admitted: &mut HashSet<String>,
    exits: &mut Vec<Target>,
    attrs: &[&str],
    change: &Change,
) -> Applied {
    let profile = ctx.profile;
    match change {
        Change::Upsert { dn: target, uuid } => {
            let entry = match ctx.dir.read(target, attrs).await {
                Ok(Some(e)) => e,
                // Renamed or deleted since: the feed reports that separately.
                Ok(None) => return Applied::Done,
                Err(e) => return Applied::Retry(format!("directory: reading {target}: {e}")),
            };
            let kind = profile.classify(&entry);
            match out_of_scope(ctx, &entry, kind).await {
                Ok(None) => {}
                Ok(Some(why)) => {
                    // Leaving scope is a delete of what was provisioned (if anything was).
                    let anchor = kind
                        .and_then(|k| mapping::anchor_of(&entry, k, profile).ok())
                        .unwrap_or_else(|| uuid.clone());
                    let Some(a) = index.get_any(&anchor) else {
                        return Applied::Done;
                    };
                    let mut t = Target::of(&anchor, &a, why);
                    t.dn = entry.dn.clone();
                    // Weighed with the rest of the batch (an OU moved out of scope is a
                    // burst), sent after it.
                    exits.retain(|x| x.anchor != t.anchor);
                    exits.push(t);
                    return Applied::Done;
                }
                Err(e) => return Applied::Retry(format!("directory: {e}")),
            }
            let kind = kind.expect("in scope means classified");
            let mapped = match mapping::map_entry(&entry, kind, profile, &IndexResolver(index)) {
                Ok(m) => m,
                Err(e) => return Applied::Failed(e.to_string()),
            };
            if &mapped.external_id != uuid {
                log::debug!(
                    "{}: anchor {} differs from the feed's uuid {uuid}",
                    entry.dn,
                    mapped.external_id
                );
            }
            exits.retain(|x| x.anchor != mapped.external_id);
            if gate.unhold(&mapped.external_id) {
                log::info!(
                    "{} {} is back in scope: its held delete is withdrawn",
                    kind.word(),
                    entry.dn
                );
            }
            let hash = representation_hash(&mapped.resource);
            let known = index.get(kind, &mapped.external_id);
            if known.as_ref().is_some_and(|a| a.hash == hash) {
                index.note_dn(&mapped.external_id, &entry.dn);
                return Applied::Done;
            }
            let job = Job {
                kind,
                dn: entry.dn.clone(),
                external_id: mapped.external_id.clone(),
                body: mapped.resource,
                hash,
                known_id: known.map(|a| a.scim_id),
            };
            let mode = &ctx.settings.pass.mode;
            match provision(ctx.scim, &job, mode).await {
                Outcome::Created(id) | Outcome::Replaced(id) | Outcome::Matched(id) => {
                    index.put(
                        &job.external_id,
                        Anchor {
                            kind,
                            scim_id: id,
                            hash,
                            dn: job.dn,
                        },
                    );
                    Applied::Done
                }
                Outcome::Unavailable(reason) => Applied::Retry(format!("{}: {reason}", job.dn)),
                Outcome::Failed(reason) => Applied::Failed(format!("{}: {reason}", job.dn)),
            }
        }
        Change::Delete { uuid, dn } => {
            let Some((anchor, a)) = deleted_anchor(index, uuid, dn.as_deref()) else {
                return Applied::Done; // never provisioned: nothing to undo
            };
            let t = Target::of(&anchor, &a, "deleted in the directory");
            if gate.is_held(&anchor) {
                return Applied::Done; // waits for approval
            }
            if admitted.contains(&anchor) {
                // Admitted with its burst: send it (a retry keeps the admission).
                let r = send_delete(ctx, index, &t).await;
                if matches!(r, Applied::Done | Applied::Failed(_)) {
                    admitted.remove(&anchor);
                }
                return r;
            }
            delete_one(ctx, index, gate, t).await
        }
    }
}

/// The indexed object a feed's delete refers to: by its uuid, else by the DN it had.
fn deleted_anchor(index: &AnchorIndex, uuid: &str, dn: Option<&str>) -> Option<(String, Anchor)> {
    if let Some(a) = index.get_any(uuid) {
        return Some((uuid.to_string(), a.clone()));
    }
    let (x, a) = index.by_dn(dn?)?;
    Some((x.to_string(), a.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_periodic_pass_is_due_only_after_its_interval() {
        let day = Duration::from_secs(86_400);
        let now = SystemTime::now();
        assert!(!full_pass_due(None, day, now));
        assert!(!full_pass_due(
            Some(now - Duration::from_secs(10)),
            day,
            now
        ));
        assert!(full_pass_due(Some(now - day), day, now));
        assert!(!full_pass_due(Some(now - day), Duration::ZERO, now));
        // A clock that jumped back: the last pass is "in the future"; not due, no panic.
        assert!(!full_pass_due(Some(now + day), day, now));
    }

    #[test]
    fn watermarks_belong_to_their_scope() {
        let w = Watermark::encode("scope-a", b"rid=001,csn=x");
        assert_eq!(
            Watermark::cookie_for(&w, "scope-a").as_deref(),
            Some(&b"rid=001,csn=x"[..])
        );
        assert_eq!(Watermark::cookie_for(&w, "scope-b"), None);
        assert_eq!(Watermark::cookie_for(b"garbage", "scope-a"), None);
    }
}
