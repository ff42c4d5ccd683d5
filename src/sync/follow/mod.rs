//! Continuous sync (`idrelay run`): a change feed writes into the on-disk queue; the sender
//! reads it in order, provisions, and acknowledges.
//!
//! ```text
//! directory ──syncrepl persist──▶ feed task ──append(batch, cookie)──▶ queue
//!                                                                        │ read (oldest first)
//! SCIM endpoint ◀── provision, up to 8 changes at once ◀── sender ◀─────┘ ack after provisioning
//! ```
//!
//! Invariants:
//! * A change is acknowledged only after it was provisioned or failed for good (a 4xx that
//!   no retry will fix, reported in the log), and only together with every change before
//!   it in the queue (an ack covers a prefix). While the endpoint is unreachable the sender
//!   waits and retries the change; nothing new starts meanwhile.
//! * Per object, changes are applied in queue order: the sender works on up to
//!   [`MAX_IN_FLIGHT`] changes of a batch at a time (directory read, scope check, SCIM
//!   write), but never on two of the same object (same uuid or DN) at once. A change whose
//!   object refers to one that an earlier change of the batch is still creating (a group
//!   and its new member) waits for it, then maps again. Deletes and scope exits go through
//!   the delete gate in turn. The anchor index and the gate are changed only by the
//!   sender's own task, between awaits; the concurrent work is reads and writes only.
//! * The watermark (the syncrepl cookie) is stored only together with the changes it covers
//!   (one queue append). After a crash the feed resumes from the last durable cookie and
//!   the sender re-reads every change not acknowledged: at-least-once, and provisioning is
//!   idempotent (the sender re-reads the object's current state by DN and compares hashes).
//! * A full pass runs when the queue owes one (first start, overflow, damage, a present
//!   phase, e-syncRefreshRequired). The feed is stopped meanwhile; the cookie is taken
//!   before the pass, so changes made during the pass are replayed after it. The pass is
//!   done (the queue's resync flag cleared) only when no object failed because the endpoint
//!   was unavailable; otherwise it runs again after a backoff (objects already in step cost
//!   no write), so a 5xx burst or an outage mid-pass loses nothing. One exception keeps a
//!   few objects the endpoint always fails from holding the feed back forever: when a
//!   repeat of an incomplete pass does no better than the pass before it (with the endpoint
//!   reachable at its start), the pass counts as done, with a warning; those objects go out
//!   when they change or at the next full pass, and deletes wait for a complete pass.
//! * A delete is never lost silently. The feed keeps the DN the directory sent with it; the
//!   sender finds the object by any text form of the delete's uuid (389-DS names entries by
//!   their nsUniqueId's 16 bytes, which the anchor writes `8-8-8-8`), else by that DN, and
//!   deletes an object found by DN only once the directory confirms that no entry holds its
//!   anchor (see [`crate::sync::deletes::find_deleted`]). A delete that matches nothing
//!   provisioned is acknowledged with a warning naming its DN (or uuid) and counted for
//!   `idrelay status`; only one whose DN lies outside the included subtrees (never in scope)
//!   is acknowledged quietly.
//!
//! Change feeds: RFC 4533 syncrepl (OpenLDAP's syncprov, 389-DS's Content Synchronization), and the
//! polling feeds of [`crate::sync::poll`] (AD DirSync, uSN, modifyTimestamp).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::ldap::{Directory, LdapError, Scope, SyncEvent, SyncMode};
use crate::queue::{AppendOutcome, Queue, QueueError, ResyncReason};
use crate::relay::agent::AgentState;
use crate::relay::backoff::Backoff;
use crate::scim::client::ScimClient;
use crate::scim::mapping::{self, Reference, Resolver};
use crate::scim::profile::SyncProfile;
use crate::scim::ResourceKind;
use crate::signals::{Control, Request};
use crate::sync::anchors::{representation_hash, representation_hash_with, Anchor, AnchorIndex};
use crate::sync::deletes::{self, DeleteGate, Found, GateError, MatchedBy, Target, Verdict};
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
        /// The uuid the feed names it by: syncrepl's syncUUID in standard UUID text (the
        /// entryUUID on OpenLDAP, the nsUniqueId's bytes on 389-DS), objectGUID in base64
        /// on AD.
        uuid: String,
        /// The DN it had, when the feed knows it (syncrepl persist-phase deletes, AD
        /// tombstones): finds objects whose anchor is not a form of the uuid
        /// (mS-DS-ConsistencyGuid, an entryUUID anchor on 389-DS).
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
    /// The held-deletes file cannot be written.
    Deletes(GateError),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Queue(e) => write!(f, "queue: {e}"),
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
    // How many objects the previous, incomplete full pass could not send (see
    // `accept_stalled_pass`).
    let mut stalled: Option<u64> = None;
    loop {
        if let Some(r) = control.requested() {
            save_index(index);
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
            let problem = match outcome {
                None => {
                    log::info!(
                        "full pass interrupted by a {:?} request",
                        control.requested()
                    );
                    None
                }
                Some(Ok(PassEnd::Complete)) => {
                    record_full_pass(&settings.state_dir);
                    retry.reset();
                    stalled = None;
                    None
                }
                Some(Ok(PassEnd::Unavailable(n, mark))) if accept_stalled_pass(stalled, n) => {
                    log::warn!(
                        "full pass: {n} objects failed again although the endpoint answers \
                         others (see the warnings above and the provisioning log); taking the \
                         pass as done so that changes flow: they are sent again when they \
                         change or at the next full pass; deletes wait for a complete pass"
                    );
                    with_queue(&queue, move |q| q.mark_resync_done(&mark))
                        .await
                        .map_err(RunError::Queue)?;
                    record_full_pass(&settings.state_dir);
                    retry.reset();
                    stalled = None;
                    None
                }
                // Still owed: run it again.
                Some(Ok(PassEnd::Unavailable(n, _))) => {
                    stalled = Some(n);
                    Some(format!(
                        "full pass: {n} objects could not be sent (endpoint unavailable)"
                    ))
                }
                Some(Err(e)) => Some(format!("full pass did not complete ({e})")),
            };
            if let Some(why) = problem {
                agent.set_error(why.clone());
                agent.set_phase("degraded");
                let wait = retry.next_delay().unwrap_or(Duration::from_secs(60));
                log::warn!("{why}; retrying in {:.0} s", wait.as_secs_f64());
                control.sleep(wait).await;
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
        save_index(index);
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
    save_index(index);
    Ok(())
}

/// Saves the anchor index; a failure (a full disk) is a warning, not the end of the agent:
/// the index stays unsaved in memory and the next save tries again. Should the agent stop
/// before one succeeds, objects provisioned since the last save are found again by
/// externalId (nothing is duplicated).
fn save_index(index: &mut AnchorIndex) {
    if let Err(e) = index.save() {
        log::warn!("cannot save the anchor index yet ({e}); will retry");
    }
}

/// How a full pass of `run` that ran to its end left things.
enum PassEnd {
    /// Everything the endpoint could take is in step: the pass is done.
    Complete,
    /// This many objects could not be sent because the endpoint was unavailable: the pass
    /// is still owed. With the watermark it would have recorded.
    Unavailable(u64, Vec<u8>),
}

/// Whether an incomplete full pass that could not send `now` objects is taken as done
/// anyway: when the pass before it (`before`, also incomplete, with the endpoint reachable
/// at its start) did no worse. An outage is not a stall: a pass that starts while the
/// endpoint is down ends before any object is tried and leaves `before` as it was. A stall
/// is one or a few objects the endpoint keeps failing (a 5xx for that object alone): repeating
/// the pass would re-read the whole directory every few seconds and keep the change feed
/// from ever starting, so after one repeat that made no progress the pass counts as done.
fn accept_stalled_pass(before: Option<u64>, now: u64) -> bool {
    before.is_some_and(|b| now >= b)
}

/// Runs the owed full pass; marks it done in the queue (with the cookie taken before it)
/// only when no object failed because the endpoint was unavailable.
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
) -> Result<PassEnd, String> {
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
    if report.unavailable > 0 {
        // Not done: the queue keeps owing the pass (and the changes it holds), and the
        // feed does not start from this cookie unless `run` decides the pass is stalled.
        return Ok(PassEnd::Unavailable(report.unavailable, mark));
    }
    with_queue(queue, move |q| q.mark_resync_done(&mark))
        .await
        .map_err(|e| format!("queue: {e}"))?;
    Ok(PassEnd::Complete)
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
            SyncEvent::Delete { uuid, dn } => batch.push(encode(&Change::Delete { uuid, dn })),
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
                // Matches by DN count too (before the directory confirms them): the burst
                // may only be overestimated.
                Ok(Change::Delete { uuid, dn }) => {
                    deletes::find_deleted(index, &uuid, dn.as_deref())
                        .filter(|f| !gate.is_held(&f.anchor))
                        .map(|f| Target::of(&f.anchor, &f.object, "deleted in the directory"))
                }
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
                save_index(index);
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
        let batch = apply_batch(
            ctx,
            index,
            gate,
            queue,
            &mut admitted,
            &mut exits,
            &attrs,
            records,
        )
        .await;
        applied += batch.applied;
        failed += batch.failed;
        let (mut handled, mut end) = (batch.handled, batch.end);
        if end.is_none() && !exits.is_empty() {
            if let Some(e) = send_exits(ctx, index, gate, std::mem::take(&mut exits)).await {
                // Interrupted: acknowledge nothing of this batch; it is re-read (and
                // re-applied idempotently) after the restart.
                handled = None;
                end = Some(e);
            }
        }
        if let Err(end) = acknowledge(ctx, gate, queue, handled).await {
            return end;
        }
        if let Some(end) = end {
            return end;
        }
        if last_save.elapsed() >= INDEX_SAVE_EVERY {
            save_index(index);
            last_save = Instant::now();
        }
    }
}

/// Whether an I/O error is a full disk or an exceeded quota: freeing space fixes it.
fn is_disk_full(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(e.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded)
        || matches!(e.raw_os_error(), Some(28) | Some(122)) // ENOSPC, EDQUOT on Linux
}

/// Makes the held deletes durable, then acknowledges the queue up to `handled` (held
/// deletes are durable before the changes that held them are acknowledged). A write that
/// may succeed later (a full disk) pauses the sender and is retried with a backoff, as the
/// feed does for appends; nothing new is sent meanwhile. `Err` is how the sender must end
/// (a stop request while paused: what is not acknowledged is re-sent after the restart).
async fn acknowledge(
    ctx: &SendCtx<'_>,
    gate: &mut DeleteGate,
    queue: &SharedQueue,
    handled: Option<u64>,
) -> Result<(), SendEnd> {
    let mut pause = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let why = match gate.save() {
            Err(e) => match &e {
                GateError::Io { source, .. } if is_disk_full(source) => {
                    format!("cannot record held deletes ({e})")
                }
                _ => return Err(SendEnd::Fatal(RunError::Deletes(e))),
            },
            Ok(()) => {
                let Some(last) = handled else {
                    return Ok(());
                };
                match with_queue(queue, move |q| q.ack(last)).await {
                    Ok(()) => return Ok(()),
                    Err(e) if e.is_retryable() => {
                        format!("cannot acknowledge sent changes in the change queue ({e})")
                    }
                    Err(e) => return Err(SendEnd::Fatal(RunError::Queue(e))),
                }
            }
        };
        let wait = pause.next_delay().unwrap_or(Duration::from_secs(30));
        log::warn!(
            "{why}; sender paused, retrying in {:.1} s",
            wait.as_secs_f64()
        );
        ctx.agent.set_error(why);
        if ctx.control.sleep(wait).await.is_some() {
            return Err(SendEnd::Signal);
        }
    }
}

enum Applied {
    Done,
    Failed(String),
    Retry(String),
}

/// Most changes of one batch in step at the same time (directory reads and SCIM writes).
const MAX_IN_FLIGHT: usize = 8;

/// What [`apply_batch`] did.
struct BatchEnd {
    /// The last sequence number of the batch's leading run of applied changes (every change
    /// up to it is done): what may be acknowledged.
    handled: Option<u64>,
    /// How the sender must end, if it must.
    end: Option<SendEnd>,
    /// Changes applied, and failed for good.
    applied: u64,
    failed: u64,
}

/// Where one change of a batch stands.
enum Step {
    /// Not started (or to be started again after a retry).
    Waiting,
    /// Its directory read is in flight.
    Reading,
    /// Read; waits for its decision (after a [`Decision::Blocked`], for every earlier
    /// change to be done).
    Read(Prepared, bool),
    /// Its SCIM write is in flight.
    Sending,
    /// Applied or failed for good.
    Done,
}

/// What an in-flight future of [`apply_batch`] reports.
enum Landed {
    Read(Result<Prepared, String>),
    Sent(Box<Job>, Outcome),
}

/// Whether two changes touch the same object (same uuid or same DN): those are applied in
/// queue order, one after the other.
fn same_object(a: &(String, Option<String>), b: &(String, Option<String>)) -> bool {
    a.0 == b.0 || (a.1.is_some() && a.1 == b.1)
}

/// Applies one batch of queued changes, up to [`MAX_IN_FLIGHT`] at a time.
///
/// Order: two changes of the same object (same uuid or DN) never overlap and run in queue
/// order; a change that refers to an object an earlier change is still creating waits for
/// it (see [`IndexResolver`]); deletes are weighed and sent by the sender itself, in turn.
/// The index and the gate are touched only here, between awaits, never by the futures.
/// A change the endpoint or the directory cannot take now (retry) pauses the batch: what
/// is in flight lands, then after a backoff the change is tried again, as before.
/// Acknowledgement: only the leading run of done changes ([`BatchEnd::handled`]); a change
/// done beyond a gap is applied again after a restart (idempotent).
#[allow(clippy::too_many_arguments)]
async fn apply_batch(
    ctx: &SendCtx<'_>,
    index: &mut AnchorIndex,
    gate: &mut DeleteGate,
    queue: &SharedQueue,
    admitted: &mut HashSet<String>,
    exits: &mut Vec<Target>,
    attrs: &[&str],
    records: Vec<crate::queue::Record>,
) -> BatchEnd {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::Poll;

    let mut out = BatchEnd {
        handled: None,
        end: None,
        applied: 0,
        failed: 0,
    };
    let mut seqs = Vec::with_capacity(records.len());
    let mut changes = Vec::with_capacity(records.len());
    for r in records {
        match serde_json::from_slice::<Change>(&r.payload) {
            Ok(c) => {
                seqs.push(r.seq);
                changes.push(c);
            }
            Err(e) => {
                log::error!(
                    "queued change {} is not readable ({e}); skipped, a full pass follows",
                    r.seq
                );
                let _ =
                    with_queue(queue, |q| q.mark_resync_owed(ResyncReason::CorruptRecord)).await;
                out.end = Some(SendEnd::ResyncOwed);
                break;
            }
        }
    }
    let n = changes.len();
    let keys: Vec<(String, Option<String>)> = changes
        .iter()
        .map(|c| match c {
            Change::Upsert { dn: d, uuid } => (uuid.clone(), Some(dn::normalize(d))),
            Change::Delete { uuid, dn: d } => (uuid.clone(), d.as_deref().map(dn::normalize)),
        })
        .collect();
    let mut steps: Vec<Step> = (0..n).map(|_| Step::Waiting).collect();
    let mut waits: Vec<Option<Backoff>> = (0..n).map(|_| None).collect();
    type InFlight<'f> = Vec<(usize, Pin<Box<dyn Future<Output = Landed> + 'f>>)>;
    let mut flying: InFlight<'_> = Vec::new();
    // Changes that asked to be retried: the batch starts nothing new until they are.
    let mut retry: Vec<(usize, String)> = Vec::new();
    let mode = &ctx.settings.pass.mode;

    let outcome = |i: usize,
                   a: Applied,
                   steps: &mut Vec<Step>,
                   retry: &mut Vec<(usize, String)>,
                   out: &mut BatchEnd| match a {
        Applied::Done => {
            steps[i] = Step::Done;
            out.applied += 1;
            ctx.agent
                .provisioned
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Applied::Failed(why) => {
            steps[i] = Step::Done;
            out.failed += 1;
            ctx.agent
                .failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            log::warn!("{why}");
            ctx.agent.set_error(why);
        }
        Applied::Retry(why) => {
            steps[i] = Step::Waiting;
            retry.push((i, why));
        }
    };

    while out.end.is_none() {
        if ctx.control.requested().is_some() {
            out.end = Some(SendEnd::Signal);
            break;
        }
        let mut progressed = false;
        // Decide what was read, in queue order.
        for i in 0..n {
            if !matches!(steps[i], Step::Read(..)) {
                continue;
            }
            let earlier_busy = (0..i).any(|j| !matches!(steps[j], Step::Done));
            if let Step::Read(_, true) = steps[i] {
                if earlier_busy {
                    continue; // blocked until everything before it landed
                }
            }
            let Step::Read(prepared, _) = std::mem::replace(&mut steps[i], Step::Sending) else {
                unreachable!("checked above");
            };
            progressed = true;
            let busy: HashSet<String> = (0..i)
                .filter(|&j| !matches!(steps[j], Step::Done))
                .filter_map(|j| keys[j].1.clone())
                .collect();
            let uuid = &keys[i].0;
            match decide(ctx, index, gate, exits, uuid, prepared, &busy) {
                Decision::Done(a) => outcome(i, a, &mut steps, &mut retry, &mut out),
                Decision::Blocked(p) => steps[i] = Step::Read(p, true),
                Decision::Send(job) => {
                    let job = Box::new(job);
                    flying.push((
                        i,
                        Box::pin(async move {
                            let o = provision(ctx.scim, &job, mode).await;
                            Landed::Sent(job, o)
                        }),
                    ));
                }
            }
        }
        // Start what may start: in order, while there is room, never two of one object.
        if retry.is_empty() {
            for i in 0..n {
                if flying.len() >= MAX_IN_FLIGHT {
                    break;
                }
                if !matches!(steps[i], Step::Waiting) {
                    continue;
                }
                if (0..i)
                    .any(|j| !matches!(steps[j], Step::Done) && same_object(&keys[j], &keys[i]))
                {
                    continue;
                }
                progressed = true;
                match &changes[i] {
                    Change::Upsert { dn: target, .. } => {
                        steps[i] = Step::Reading;
                        flying.push((
                            i,
                            Box::pin(
                                async move { Landed::Read(prepare(ctx, attrs, target).await) },
                            ),
                        ));
                    }
                    Change::Delete { .. } => {
                        // Deletes go through the gate and the index: applied here, in turn.
                        let a = apply(ctx, index, gate, admitted, exits, attrs, &changes[i]).await;
                        outcome(i, a, &mut steps, &mut retry, &mut out);
                    }
                }
            }
        }
        if flying.is_empty() {
            if let Some(&(i, ref why)) = retry.first() {
                // Everything in flight landed: wait, then try the retried changes again.
                let wait = waits[i]
                    .get_or_insert_with(|| {
                        Backoff::new(Duration::from_millis(500), Duration::from_secs(15))
                    })
                    .next_delay()
                    .unwrap_or(Duration::from_secs(60));
                log::warn!(
                    "{why}; retrying in {:.1} s (later changes wait, to keep their order)",
                    wait.as_secs_f64()
                );
                retry.clear();
                if ctx.control.sleep(wait).await.is_some() {
                    out.end = Some(SendEnd::Signal);
                } else if with_queue(queue, |q| q.resync_owed()).await {
                    out.end = Some(SendEnd::ResyncOwed);
                }
                continue;
            }
            if steps.iter().all(|s| matches!(s, Step::Done)) || !progressed {
                break;
            }
            continue;
        }
        // Wait for the first future to land.
        let (i, landed) = std::future::poll_fn(|cx| {
            for k in 0..flying.len() {
                if let Poll::Ready(v) = flying[k].1.as_mut().poll(cx) {
                    let (i, _) = flying.swap_remove(k);
                    return Poll::Ready((i, v));
                }
            }
            Poll::Pending
        })
        .await;
        match landed {
            Landed::Read(Ok(p)) => steps[i] = Step::Read(p, false),
            Landed::Read(Err(why)) => {
                outcome(i, Applied::Retry(why), &mut steps, &mut retry, &mut out)
            }
            Landed::Sent(job, o) => {
                let a = commit(index, *job, o);
                outcome(i, a, &mut steps, &mut retry, &mut out);
            }
        }
    }
    drop(flying);
    let done = steps.iter().take_while(|s| matches!(s, Step::Done)).count();
    out.handled = done.checked_sub(1).map(|k| seqs[k]);
    out
}

/// Resolves references through the anchor index alone (between passes there is no scope
/// scan): what the index does not know is left out until it is provisioned. A reference
/// to an object that an earlier change of the batch is still bringing in step (`busy`,
/// normalised DNs) is noted in `blocked`: the change waits for it and maps again, as it
/// would have seen it had the changes been applied one after the other.
struct IndexResolver<'a> {
    index: &'a AnchorIndex,
    busy: &'a HashSet<String>,
    blocked: std::cell::Cell<bool>,
}

impl<'a> IndexResolver<'a> {
    fn new(index: &'a AnchorIndex, busy: &'a HashSet<String>) -> IndexResolver<'a> {
        IndexResolver {
            index,
            busy,
            blocked: std::cell::Cell::new(false),
        }
    }
}

impl Resolver for IndexResolver<'_> {
    fn resolve(&self, target: &str) -> Reference {
        match self.index.by_dn(target) {
            Some((_, a)) => Reference::Id(a.scim_id.clone()),
            None => {
                if !self.busy.is_empty() && self.busy.contains(&dn::normalize(target)) {
                    self.blocked.set(true);
                }
                Reference::OutOfScope
            }
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
    match change {
        Change::Upsert { dn: target, uuid } => {
            let prepared = match prepare(ctx, attrs, target).await {
                Ok(p) => p,
                Err(why) => return Applied::Retry(why),
            };
            match decide(ctx, index, gate, exits, uuid, prepared, &HashSet::new()) {
                Decision::Done(a) => a,
                // Nothing is busy here: a change applied alone waits for nobody.
                Decision::Blocked(_) => Applied::Done,
                Decision::Send(job) => {
                    let outcome = provision(ctx.scim, &job, &ctx.settings.pass.mode).await;
                    commit(index, job, outcome)
                }
            }
        }
        Change::Delete { uuid, dn } => {
            let dn = dn.as_deref();
            let Some(found) = deletes::find_deleted(index, uuid, dn) else {
                unmatched(ctx, gate, uuid, dn, "not in the anchor index");
                return Applied::Done;
            };
            if found.by == MatchedBy::Dn {
                match anchor_gone(ctx, &found).await {
                    Ok(None) => {}
                    Ok(Some(why)) => {
                        if admitted.remove(&found.anchor) {
                            gate.refund(1); // counted with its burst, not sent
                        }
                        unmatched(ctx, gate, uuid, dn, &why);
                        return Applied::Done;
                    }
                    Err(why) => return Applied::Retry(why),
                }
            }
            let anchor = found.anchor;
            let t = Target::of(&anchor, &found.object, "deleted in the directory");
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

/// What the directory says about an object the feed reported, read without touching any
/// state (so that several can be read at once).
enum Prepared {
    /// Renamed or deleted since: the feed reports that separately.
    Gone,
    /// The entry, its kind, and why it is out of scope if it is.
    Read {
        entry: crate::ldap::Entry,
        kind: Option<ResourceKind>,
        out: Option<&'static str>,
    },
}

/// Reads the object at `target` and checks its scope. `Err` is a reason to retry.
async fn prepare(ctx: &SendCtx<'_>, attrs: &[&str], target: &str) -> Result<Prepared, String> {
    let entry = match ctx.dir.read(target, attrs).await {
        Ok(Some(e)) => e,
        Ok(None) => return Ok(Prepared::Gone),
        Err(e) => return Err(format!("directory: reading {target}: {e}")),
    };
    let kind = ctx.profile.classify(&entry);
    let out = out_of_scope(ctx, &entry, kind)
        .await
        .map_err(|e| format!("directory: {e}"))?;
    Ok(Prepared::Read { entry, kind, out })
}

/// What to do with a read object.
enum Decision {
    /// Nothing (more) to send.
    Done(Applied),
    /// Provision this job, then [`commit`] its outcome.
    Send(Job),
    /// It refers to an object an earlier change is still bringing in step: decide again
    /// once that one landed (the read stays valid).
    Blocked(Prepared),
}

/// The in-memory part of applying an upsert: scope exits, mapping, the unchanged check.
/// `busy` holds the normalised DNs of earlier changes of the batch not yet applied.
fn decide(
    ctx: &SendCtx<'_>,
    index: &mut AnchorIndex,
    gate: &mut DeleteGate,
    exits: &mut Vec<Target>,
    uuid: &str,
    prepared: Prepared,
    busy: &HashSet<String>,
) -> Decision {
    let profile = ctx.profile;
    let Prepared::Read { entry, kind, out } = prepared else {
        return Decision::Done(Applied::Done);
    };
    if let Some(why) = out {
        // Leaving scope is a delete of what was provisioned (if anything was).
        let anchor = kind
            .and_then(|k| mapping::anchor_of(&entry, k, profile).ok())
            .unwrap_or_else(|| uuid.to_string());
        let Some(a) = index.get_any(&anchor) else {
            return Decision::Done(Applied::Done);
        };
        let mut t = Target::of(&anchor, &a, why);
        t.dn = entry.dn.clone();
        // Weighed with the rest of the batch (an OU moved out of scope is a burst), sent
        // after it.
        exits.retain(|x| x.anchor != t.anchor);
        exits.push(t);
        return Decision::Done(Applied::Done);
    }
    let kind = kind.expect("in scope means classified");
    let resolver = IndexResolver::new(index, busy);
    let mapped = match mapping::map_entry_split(&entry, kind, profile, &resolver) {
        Ok(m) => m,
        Err(e) => return Decision::Done(Applied::Failed(e.to_string())),
    };
    if resolver.blocked.get() {
        return Decision::Blocked(Prepared::Read {
            entry,
            kind: Some(kind),
            out: None,
        });
    }
    if mapped.external_id != uuid {
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
    let hash = representation_hash_with(&mapped.resource, &mapped.members);
    let known = index.get(kind, &mapped.external_id);
    if known.as_ref().is_some_and(|a| a.hash == hash) {
        index.note_dn(&mapped.external_id, &entry.dn);
        return Decision::Done(Applied::Done);
    }
    Decision::Send(Job {
        kind,
        dn: entry.dn,
        external_id: mapped.external_id,
        body: mapped.resource,
        members: mapped.members,
        hash,
        known_id: known.map(|a| a.scim_id),
    })
}

/// Records a provisioning outcome in the index.
fn commit(index: &mut AnchorIndex, job: Job, outcome: Outcome) -> Applied {
    match outcome {
        Outcome::Created(id) | Outcome::Replaced(id) | Outcome::Matched(id) => {
            index.put(
                &job.external_id,
                Anchor {
                    kind: job.kind,
                    scim_id: id,
                    hash: job.hash,
                    dn: job.dn,
                },
            );
            Applied::Done
        }
        Outcome::Unavailable(reason) => Applied::Retry(format!("{}: {reason}", job.dn)),
        Outcome::Failed(reason) => Applied::Failed(format!("{}: {reason}", job.dn)),
    }
}

/// Whether the directory confirms that the object a delete matched by DN is gone: `None`
/// when no entry under the base holds its anchor; else why it is not proven gone (an entry
/// still holds the anchor: the DN was another object's; or the directory refused the search
/// or the anchor cannot be searched for). `Err` (retry) when the directory could not be
/// asked.
async fn anchor_gone(ctx: &SendCtx<'_>, found: &Found) -> Result<Option<String>, String> {
    let Some(filter) = mapping::anchor_filter(ctx.profile, found.object.kind, &found.anchor) else {
        return Ok(Some(format!(
            "{} {}, last sent under this DN, has an anchor the profile cannot search for",
            found.object.kind.word(),
            found.anchor
        )));
    };
    let mut s = ctx
        .dir
        .search(&ctx.settings.base_dn, Scope::Subtree, &filter, &["1.1"]);
    match s.next().await {
        None => Ok(None),
        Some(Ok(e)) => Ok(Some(format!(
            "{} {}, last sent under this DN, is still in the directory at {}",
            found.object.kind.word(),
            found.anchor,
            e.dn
        ))),
        Some(Err(e @ (LdapError::Search { .. } | LdapError::InvalidFilter { .. }))) => {
            Ok(Some(format!(
                "cannot confirm that {} {}, last sent under this DN, is gone: {e}",
                found.object.kind.word(),
                found.anchor
            )))
        }
        Some(Err(e)) => Err(format!(
            "directory: checking that {} is gone: {e}",
            found.object.dn
        )),
    }
}

/// A feed's delete that matches no provisioned object: acknowledged, since there is nothing
/// the agent can prove gone, but never silently (see the module doc).
fn unmatched(ctx: &SendCtx<'_>, gate: &mut DeleteGate, uuid: &str, dn: Option<&str>, why: &str) {
    if let Some(d) = dn {
        if !dn::under_any(d, &ctx.settings.pass.include) {
            log::debug!("delete of {d} (outside the included subtrees): nothing to undo");
            return;
        }
    }
    let what = match dn {
        Some(d) => format!("delete of {d} (uuid {uuid})"),
        None => format!("delete of the object with uuid {uuid} (the directory sent no DN)"),
    };
    log::warn!(
        "{what} matches nothing this agent provisioned ({why}); nothing was sent for it. \
         Objects it provisioned and no longer finds are removed by the next full pass"
    );
    gate.note_unmatched(uuid, dn);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_incomplete_pass_is_accepted_only_after_a_repeat_without_progress() {
        // The first incomplete pass is always repeated.
        assert!(!accept_stalled_pass(None, 1));
        assert!(!accept_stalled_pass(None, 500));
        // Progress: repeat again.
        assert!(!accept_stalled_pass(Some(500), 20));
        assert!(!accept_stalled_pass(Some(2), 1));
        // No progress: the same (or more) objects failed again.
        assert!(accept_stalled_pass(Some(2), 2));
        assert!(accept_stalled_pass(Some(1), 3));
    }

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
    fn changes_of_one_object_are_those_sharing_a_uuid_or_a_dn() {
        let k = |u: &str, d: Option<&str>| (u.to_string(), d.map(str::to_string));
        assert!(
            same_object(&k("u1", Some("a")), &k("u1", Some("b"))),
            "renamed"
        );
        assert!(
            same_object(&k("u1", Some("a")), &k("u2", Some("a"))),
            "DN reused"
        );
        assert!(same_object(&k("u1", None), &k("u1", Some("a"))));
        assert!(!same_object(&k("u1", None), &k("u2", None)));
        assert!(!same_object(&k("u1", Some("a")), &k("u2", Some("b"))));
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
