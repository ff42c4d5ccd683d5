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

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::ldap::{Directory, LdapError, SyncEvent, SyncMode};
use crate::queue::{AppendOutcome, Queue, QueueError, ResyncReason};
use crate::relay::backoff::Backoff;
use crate::scim::client::ScimClient;
use crate::scim::mapping::{self, Reference, Resolver};
use crate::scim::profile::SyncProfile;
use crate::scim::ResourceKind;
use crate::sync::anchors::{representation_hash, Anchor, AnchorIndex};
use crate::sync::dn;
use crate::sync::pass::{full_pass, PassSettings};
use crate::sync::provision::{provision, Job, Outcome, ProvisionMode};

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
        /// entryUUID.
        uuid: String,
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
}

impl FollowSettings {
    fn scope_fingerprint(&self) -> String {
        let text = format!(
            "{}\n{}\n{}\n{}",
            dn::normalize(&self.base_dn),
            self.pass
                .include
                .iter()
                .map(|d| dn::normalize(d))
                .collect::<Vec<_>>()
                .join(";"),
            self.pass.user_filter,
            self.pass.group_filter
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
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Queue(e) => write!(f, "queue: {e}"),
            RunError::State(e) => write!(f, "anchor index: {e}"),
        }
    }
}

impl std::error::Error for RunError {}

type SharedQueue = Arc<Mutex<Queue>>;

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

/// Runs until the process is stopped. Only errors that make further work impossible end it.
pub async fn run(
    dir: &Directory,
    scim: &ScimClient,
    profile: &SyncProfile,
    index: &mut AnchorIndex,
    queue: Queue,
    settings: &FollowSettings,
) -> Result<(), RunError> {
    let queue: SharedQueue = Arc::new(Mutex::new(queue));
    let scope = settings.scope_fingerprint();
    let mut retry = Backoff::new(Duration::from_secs(1), Duration::from_secs(15));
    loop {
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
            match resync(dir, scim, profile, index, &queue, settings, &scope).await {
                Ok(()) => retry.reset(),
                Err(e) => {
                    let wait = retry.next_delay().unwrap_or(Duration::from_secs(60));
                    log::warn!(
                        "full pass did not complete ({e}); retrying in {:.0} s",
                        wait.as_secs_f64()
                    );
                    smol::Timer::after(wait).await;
                }
            }
            continue;
        }
        let cookie = cookie.expect("checked above");
        let (notify_tx, notify_rx) = smol::channel::bounded::<()>(1);
        let feed = smol::spawn(feed(
            dir.clone(),
            settings.base_dn.clone(),
            settings.feed_filter(),
            cookie,
            queue.clone(),
            scope.clone(),
            settings.pass.include.clone(),
            notify_tx,
        ));
        let outcome = send_loop(
            dir, scim, profile, index, &queue, settings, &feed, &notify_rx,
        )
        .await;
        let feed_ended = match outcome {
            // The task has finished: awaiting it only collects its reason.
            SendEnd::FeedEnded => Some(feed.await),
            _ => {
                drop(feed); // cancels the feed task and abandons its search
                None
            }
        };
        index.save().map_err(RunError::State)?;
        match outcome {
            SendEnd::ResyncOwed => {}
            SendEnd::FeedEnded => {
                let e = feed_ended.unwrap_or_default();
                let wait = retry.next_delay().unwrap_or(Duration::from_secs(60));
                log::warn!(
                    "change feed stopped ({e}); restarting it in {:.0} s",
                    wait.as_secs_f64()
                );
                smol::Timer::after(wait).await;
            }
            SendEnd::Fatal(e) => return Err(e),
        }
    }
}

async fn resync(
    dir: &Directory,
    scim: &ScimClient,
    profile: &SyncProfile,
    index: &mut AnchorIndex,
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
    let cookie = current_cookie(dir, &settings.base_dn, &settings.feed_filter())
        .await
        .map_err(|e| format!("reading the directory's sync cookie: {e}"))?;
    let report = full_pass(dir, scim, profile, index, &settings.pass)
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
    include: Vec<String>,
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
            SyncEvent::Upsert { uuid, entry } => {
                if dn::under_any(&entry.dn, &include) {
                    batch.push(encode(&Change::Upsert { dn: entry.dn, uuid }));
                }
            }
            SyncEvent::Delete { uuid, .. } => batch.push(encode(&Change::Delete { uuid })),
            SyncEvent::IdSet {
                uuids,
                deletes: true,
            } => {
                batch.extend(
                    uuids
                        .into_iter()
                        .map(|uuid| encode(&Change::Delete { uuid })),
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
            let mut pause = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
            loop {
                let p = payloads.clone();
                let m = mark.clone();
                match with_queue(&queue, move |q| q.append(&p, &m)).await {
                    Ok(AppendOutcome::Appended { .. }) => break,
                    Ok(AppendOutcome::Overflowed { dropped }) => {
                        log::warn!(
                            "change queue is full: dropped {dropped} pending changes; a full pass will run when the endpoint is reachable"
                        );
                        let _ = notify.try_send(());
                        return "queue overflow".into();
                    }
                    Err(e) if e.is_retryable() => {
                        let wait = pause.next_delay().unwrap_or(Duration::from_secs(30));
                        log::warn!("cannot append to the change queue ({e}); feed paused, retrying in {:.1} s", wait.as_secs_f64());
                        smol::Timer::after(wait).await;
                    }
                    Err(e) => return format!("queue: {e}"),
                }
            }
            let _ = notify.try_send(());
        }
    }
}

fn encode(c: &Change) -> Vec<u8> {
    serde_json::to_vec(c).unwrap_or_default()
}

enum SendEnd {
    ResyncOwed,
    FeedEnded,
    Fatal(RunError),
}

/// How many queued changes the sender takes at a time (acknowledged together).
const SEND_BATCH: usize = 100;
const INDEX_SAVE_EVERY: Duration = Duration::from_secs(5);
const STATUS_LOG_EVERY: Duration = Duration::from_secs(60);

#[allow(clippy::too_many_arguments)]
async fn send_loop(
    dir: &Directory,
    scim: &ScimClient,
    profile: &SyncProfile,
    index: &mut AnchorIndex,
    queue: &SharedQueue,
    settings: &FollowSettings,
    feed: &smol::Task<String>,
    notify: &smol::channel::Receiver<()>,
) -> SendEnd {
    let attrs = profile.object_attributes();
    let attrs: Vec<&str> = attrs.iter().map(String::as_str).collect();
    let mut last_save = Instant::now();
    let mut last_log = Instant::now();
    let mut applied = 0u64;
    let mut failed = 0u64;
    loop {
        if feed.is_finished() {
            return SendEnd::FeedEnded;
        }
        let read = with_queue(queue, |q| {
            if q.resync_owed() {
                return Ok(None);
            }
            q.read(None, SEND_BATCH).map(Some)
        })
        .await;
        let records = match read {
            Ok(Some(r)) => r,
            Ok(None) => return SendEnd::ResyncOwed,
            Err(QueueError::Corrupt { .. }) => return SendEnd::ResyncOwed,
            Err(e) => return SendEnd::Fatal(RunError::Queue(e)),
        };
        if records.is_empty() {
            if last_save.elapsed() >= INDEX_SAVE_EVERY {
                if let Err(e) = index.save() {
                    log::warn!("cannot save the anchor index yet: {e}");
                }
                last_save = Instant::now();
            }
            if last_log.elapsed() >= STATUS_LOG_EVERY {
                log::info!("following changes: {applied} applied, {failed} failed in the last minute; queue empty");
                applied = 0;
                failed = 0;
                last_log = Instant::now();
            }
            // Wake on the feed's signal, or look again after a while.
            let _ = smol::future::or(
                async {
                    let _ = notify.recv().await;
                },
                async {
                    smol::Timer::after(Duration::from_secs(2)).await;
                },
            )
            .await;
            continue;
        }
        let last = records.last().map(|r| r.seq).unwrap_or(0);
        for r in records {
            let change: Change = match serde_json::from_slice(&r.payload) {
                Ok(c) => c,
                Err(e) => {
                    log::error!(
                        "queued change {} is not readable ({e}); skipped, a full pass follows",
                        r.seq
                    );
                    let _ = with_queue(queue, |q| q.mark_resync_owed(ResyncReason::CorruptRecord))
                        .await;
                    return SendEnd::ResyncOwed;
                }
            };
            let mut wait = Backoff::new(Duration::from_millis(500), Duration::from_secs(15));
            loop {
                match apply(dir, scim, profile, index, settings, &attrs, &change).await {
                    Applied::Done => {
                        applied += 1;
                        break;
                    }
                    Applied::Failed(why) => {
                        failed += 1;
                        log::warn!("{why}");
                        break;
                    }
                    Applied::Retry(why) => {
                        let d = wait.next_delay().unwrap_or(Duration::from_secs(60));
                        log::warn!(
                            "{why}; retrying in {:.1} s (later changes wait, to keep their order)",
                            d.as_secs_f64()
                        );
                        smol::Timer::after(d).await;
                        if with_queue(queue, |q| q.resync_owed()).await {
                            return SendEnd::ResyncOwed;
                        }
                    }
                }
            }
        }
        if let Err(e) = with_queue(queue, move |q| q.ack(last)).await {
            return SendEnd::Fatal(RunError::Queue(e));
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

async fn apply(
    dir: &Directory,
    scim: &ScimClient,
    profile: &SyncProfile,
    index: &mut AnchorIndex,
    settings: &FollowSettings,
    attrs: &[&str],
    change: &Change,
) -> Applied {
    match change {
        Change::Upsert { dn: target, uuid } => {
            let entry = match dir.read(target, attrs).await {
                Ok(Some(e)) => e,
                // Renamed or deleted since: the feed reports that separately.
                Ok(None) => return Applied::Done,
                Err(e) => return Applied::Retry(format!("directory: reading {target}: {e}")),
            };
            let Some(kind) = profile.classify(&entry) else {
                return Applied::Done;
            };
            if !dn::under_any(&entry.dn, &settings.pass.include) {
                return Applied::Done;
            }
            let filter = match kind {
                ResourceKind::User => &settings.pass.user_filter,
                ResourceKind::Group => &settings.pass.group_filter,
            };
            match dir.matches(&entry.dn, filter).await {
                Ok(true) => {}
                Ok(false) => return Applied::Done,
                Err(e) => return Applied::Retry(format!("directory: {e}")),
            }
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
            let hash = representation_hash(&mapped.resource);
            let known = index.get(kind, &mapped.external_id).cloned();
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
            let mode = ProvisionMode {
                dry_run: false,
                soft_match: settings.pass.mode.soft_match,
            };
            match provision(scim, &job, mode).await {
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
        Change::Delete { uuid } => {
            let Some(a) = index.get_any(uuid).cloned() else {
                return Applied::Done; // never provisioned: nothing to undo
            };
            let result = match a.kind {
                // Users are deactivated, not deleted: reversible, and what most clouds expect.
                ResourceKind::User => {
                    let ops = vec![
                        serde_json::json!({"op": "replace", "path": "active", "value": false}),
                    ];
                    scim.patch(a.kind, &a.scim_id, ops).await
                }
                ResourceKind::Group => scim.delete(a.kind, &a.scim_id).await,
            };
            match result {
                Ok(()) => {
                    log::info!(
                        "{} {} deleted in the directory: {} at the endpoint",
                        a.kind.word(),
                        a.dn,
                        match a.kind {
                            ResourceKind::User => "deactivated",
                            ResourceKind::Group => "deleted",
                        }
                    );
                    index.remove(uuid);
                    Applied::Done
                }
                Err(e) if e.status() == Some(404) => {
                    index.remove(uuid);
                    Applied::Done
                }
                Err(e) if e.is_transient() => Applied::Retry(format!("{}: {e}", a.dn)),
                Err(e) => Applied::Failed(format!("{}: {e}", a.dn)),
            }
        }
    }
}
