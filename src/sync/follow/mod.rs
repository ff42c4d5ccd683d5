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
//! * A change is acknowledged only after it was provisioned, held for approval, or parked,
//!   and only together with every change before it in the queue (an ack covers a prefix).
//!   While the endpoint is unreachable the sender waits and retries the change; nothing new
//!   starts meanwhile.
//! * No head-of-line blocking: a change the endpoint refuses (a 4xx other than 408/429, or
//!   a 5xx / transport failure for that object past `sync.max_attempts` tries while the
//!   endpoint answers otherwise) is parked durably in the state directory (`parked.json`,
//!   see [`parking`]) before its record is acknowledged, so the changes after it flow on.
//!   Per object, order holds: a later change of a parked object re-reads it and sends its
//!   current state, and its success (or the object's delete) removes the entry. Parked
//!   objects are read again and retried when their backoff ends (2 min doubling to 6 h),
//!   on `idrelay retry`, and by every full pass, which clears the entries of the objects
//!   it brought in step and parks those the endpoint refused.
//! * Per object, changes are applied in queue order: the sender works on up to
//!   `MAX_IN_FLIGHT` (8) changes of a batch at a time (directory read, scope check, SCIM
//!   write), but never on two of the same object (same uuid or DN) at once. A change whose
//!   object refers to one that an earlier change of the batch is still creating (a group
//!   and its new member) waits for it, then maps again. Deletes and scope exits go through
//!   the delete gate's settle window in turn (see below). The anchor index and the gate are
//!   changed only by the sender's own task, between awaits; the concurrent work is reads
//!   and writes only. Where the endpoint offers SCIM Bulk (`sync.bulk = "auto"`), the
//!   users' PUTs a batch decided are gathered and go out together once no read of the
//!   batch is in flight (`together`); each keeps its own outcome.
//! * A burst of deletes is judged whole: a delete or scope exit waits
//!   `sync.delete_settle_secs` (30 s) in the gate's `pending` list, durably (its change is
//!   acknowledged, later changes of other objects flow on), and when the window closes
//!   everything that arrived in it is weighed at once with the count-and-share rule of a
//!   full pass, so a 600-user mass delete sends nothing before `idrelay approve-deletes`,
//!   however many queue reads the feed spread it over. A later change of the same object
//!   (re-added, modified, back in scope) withdraws its waiting delete, in queue order. A
//!   full pass drops the waiting list: it finds those objects gone again and weighs them.
//! * The watermark (the syncrepl cookie) is stored only together with the changes it covers
//!   (one queue append). After a crash the feed resumes from the last durable cookie and
//!   the sender re-reads every change not acknowledged: at-least-once, and provisioning is
//!   idempotent (the sender re-reads the object's current state by DN and compares hashes).
//! * A full pass runs when the queue owes one (first start, overflow, damage, a present
//!   phase, e-syncRefreshRequired). The feed is stopped meanwhile; the cookie is taken
//!   before the pass, so changes made during the pass are replayed after it (the syncrepl
//!   cookie's read ends before the pass reads anything; its listing of the whole scope is
//!   dropped on the LDAP thread as it arrives: `Directory::sync_cookie`). The pass is
//!   done (the queue's resync flag cleared) only when no object failed because the endpoint
//!   was unavailable; otherwise it runs again after a backoff (objects already in step cost
//!   no write), so a 5xx burst or an outage mid-pass loses nothing. One exception keeps a
//!   few objects the endpoint always fails from holding the feed back forever: when a
//!   repeat of an incomplete pass does no better than the pass before it (with the endpoint
//!   reachable at its start), the pass counts as done, with a warning; those objects are
//!   parked (retried with a backoff, when they change, or by `idrelay retry`), and deletes
//!   wait for a complete pass. A complete pass parks the objects the endpoint refused too.
//! * A delete is never lost silently. The feed keeps the DN the directory sent with it; the
//!   sender finds the object by any text form of the delete's uuid (389-DS names entries by
//!   their nsUniqueId's 16 bytes, which the anchor writes `8-8-8-8`), else by that DN, and
//!   deletes an object found by DN only once the directory confirms that no entry holds its
//!   anchor (see [`crate::sync::deletes::find_deleted`]). A delete that matches nothing
//!   provisioned is acknowledged with a warning naming its DN (or uuid) and counted for
//!   `idrelay status`; only one whose DN lies outside the included subtrees (never in scope)
//!   is acknowledged quietly.
//! * Group-based scoping (`scope.groups`): the allowed set is computed when following
//!   starts (a failed read: nothing is sent until it reads, nothing leaves scope on it); an
//!   object outside it is out of scope like one outside the filters. A change to a group
//!   whose members make the set (a listed group; with `nested` any group in the tree) owes
//!   a full pass: that pass computes the set again, provisions the objects that joined and
//!   sends those that left through the delete gate. Simpler than diffing two sets in the
//!   sender, and the pass already weighs a burst of leavers against the threshold; the cost
//!   is a full pass per such change (see docs/config.md).
//! * A delete is never inferred: an object the directory no longer returns is left alone
//!   (the feed reports its delete or its move), and a failed read is retried, never taken
//!   for a missing object.
//! * A changed group's members are read as a full pass reads them (`directory.member_reads`:
//!   in pieces, apart from the entry, into a list that spills to disk; `group_members`) and
//!   sent as the difference to the members last confirmed at the endpoint. A member read
//!   cut short is a failed read: retried, nothing sent for the group, no member removed.
//!
//! Change feeds: RFC 4533 syncrepl (OpenLDAP's syncprov, 389-DS's Content Synchronization), and the
//! polling feeds of [`poll`] (AD DirSync, uSN, modifyTimestamp).
//!
//! Where each part lives (each file's doc says what it must never do):
//! * this file: the run loop (standby, full passes, starting the feed and the sender,
//!   restarting them), the queue's payload schema ([`Change`], [`Watermark`]) and the
//!   approved deletes;
//! * `feed.rs`: the feed tasks, which append changes with the watermark that covers them
//!   and keep the agent's [`crate::status::FeedLink`] (up while the search or the polls
//!   are answered, down when the task ends) for `idrelay status`;
//! * `poll.rs`: the polling feeds' queries (what changed since a watermark);
//! * `send.rs`: the sender, which reads the queue, closes the deletes' settle window, acknowledges, and
//!   retries the parked objects that are due;
//! * `parking.rs`: the parked list (file format, backoff, the `retry` request, status);
//! * `batch.rs`: the batch machine, which applies one batch in per-object order and says
//!   which leading run of it is done. It and the sender reach the directory and the
//!   endpoint only through two narrow traits defined there (`DirectoryReads`: read an
//!   entry, check its scope, find an anchor's holder, read a group's member DNs in
//!   pieces; `EndpointWrites`: provision one
//!   object, delete one), so that `tests.rs` runs them against fakes, without sockets;
//! * `group_members.rs`: a changed group's members read in pieces apart from its entry
//!   (`directory.member_reads`), as a full pass reads them, and resolved between awaits.

mod batch;
mod feed;
mod group_members;
pub mod parking;
pub mod poll;
mod send;
#[cfg(test)]
mod tests;
mod together;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::ldap::dn;
use crate::ldap::Directory;
use crate::net::backoff::Backoff;
use crate::queue::{Queue, QueueError, ResyncReason};
use crate::scim::client::ScimClient;
use crate::scim::profile::SyncProfile;
use crate::signals::{Control, Request};
use crate::status::AgentState;
use crate::sync::anchors::{representation_hash, AnchorIndex};
use crate::sync::deletes::{DeleteGate, GateError};
use crate::sync::pass::{full_pass, PassSettings};
use batch::{EndpointWrites, ScimEndpoint};
use feed::{current_cookie, feed, poll_feed};
use parking::{Parking, ParkingError};
use poll::PollSpec;
use send::{send_loop, SendCtx, SendEnd};

pub use crate::sync::change::{Change, SharedQueue, Watermark};

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
    /// Tries (`sync.max_attempts`) after which an object the endpoint keeps answering 5xx
    /// is parked, when the endpoint answers otherwise.
    pub park_after: u32,
    /// How long a delete waits to be weighed with the others of its burst
    /// (`sync.delete_settle_secs`).
    pub delete_settle: Duration,
    /// With syncrepl, the catch-up search after each persist session's refresh, and how
    /// long after it (389-DS loses changes at a session's start: see `ldap::catch_up`).
    pub persist_catch_up: Option<Duration>,
}

/// How long after a persist session's refresh its catch-up search runs on 389-DS: time for
/// a change caught in the gap to reach the retro changelog.
pub const PERSIST_CATCH_UP_DELAY: Duration = Duration::from_millis(500);

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
    let text = crate::state_dir::read_to_string(&state_dir.join(LAST_PASS_FILE)).ok()?;
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
    let ok = crate::state_dir::replace(
        &path,
        format!("{secs}\n").as_bytes(),
        crate::state_dir::Durability::Sync,
    );
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
        ) + &self.scope_groups_fingerprint();
        format!(
            "{:016x}",
            representation_hash(&serde_json::Value::String(text))
        )
    }

    /// `scope.groups` and flattening in the scope fingerprint: other groups, or members
    /// flattened or not, are another scope (a full pass follows the change). Empty without
    /// them, so other scopes keep their watermark.
    fn scope_groups_fingerprint(&self) -> String {
        let flatten = if self.pass.flatten.is_some() {
            "\nflatten"
        } else {
            ""
        };
        flatten.to_string()
            + &match &self.pass.scope_groups {
                None => String::new(),
                Some(g) => {
                    let mut dns: Vec<String> = g.groups.iter().map(|d| dn::normalize(d)).collect();
                    dns.sort();
                    format!(
                        "\ngroups{}:{}",
                        if g.nested { " nested" } else { "" },
                        dns.join(";")
                    )
                }
            }
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
    /// The parked-objects file cannot be written.
    Parking(ParkingError),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Queue(e) => write!(f, "queue: {e}"),
            RunError::Deletes(e) => write!(f, "held deletes: {e}"),
            RunError::Parking(e) => write!(f, "parked objects: {e}"),
        }
    }
}

impl std::error::Error for RunError {}

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
    scim.pin_member_removal(
        profile
            .resource(crate::scim::resource::ResourceKind::Group)
            .member_removal(),
    );
    let endpoint = ScimEndpoint {
        scim,
        pass: &settings.pass,
        together: together::Together::new(settings.pass.mode.bulk && !settings.pass.mode.dry_run),
    };
    let mut was_standby = false;
    let scope = settings.scope_fingerprint();
    let mut retry = Backoff::new(Duration::from_secs(1), Duration::from_secs(15));
    // How many objects the previous, incomplete full pass could not send (see
    // `accept_stalled_pass`).
    let mut stalled: Option<u64> = None;
    // The reason of the owed full pass last logged (see the outage below).
    let mut said_owed: Option<&'static str> = None;
    let mut parking = match Parking::open(&settings.state_dir) {
        Ok(p) => p,
        Err(e) => {
            // What was parked is unknown: a full pass sends every object again.
            log::warn!("parked objects unreadable ({e}); starting with none, after a full pass");
            with_queue(&queue, |q| q.mark_resync_owed(ResyncReason::Requested))
                .await
                .map_err(RunError::Queue)?;
            Parking::empty(&settings.state_dir)
        }
    };
    if !parking.is_empty() {
        log::info!(
            "{} objects parked (refused by the endpoint); retried when their backoff ends",
            parking.len()
        );
    }
    loop {
        if let Some(r) = control.requested() {
            save_index(index);
            gate.save().map_err(RunError::Deletes)?;
            parking.save().map_err(RunError::Parking)?;
            return Ok(r);
        }
        if !agent.is_active() {
            // Another agent of the group holds the lease: provision nothing, keep state.
            if !was_standby {
                if agent.lease_known() {
                    log::info!("standby: another agent of this directory group is active; waiting for the lease");
                } else {
                    log::info!("standby until the hub grants this agent the lease");
                }
                agent.set_phase("standby");
                was_standby = true;
            }
            // A cheap check: a granted lease starts provisioning within half a second.
            control.sleep(Duration::from_millis(500)).await;
            continue;
        }
        if was_standby {
            log::info!("active: this agent holds the lease; provisioning");
            was_standby = false;
        }
        release_approved(&endpoint, index, gate).await?;
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
            with_queue(&queue, |q| q.mark_resync_owed(ResyncReason::ScopeChanged))
                .await
                .map_err(RunError::Queue)?;
            continue;
        }
        if owed {
            let reason = with_queue(&queue, |q| q.resync_reason()).await;
            let reason = reason.map(|r| r.as_str()).unwrap_or("unknown");
            // Tried again for the same reason during an endpoint outage: nothing new to say.
            let level = match scim.outage() {
                Some(w) if w.is_down() && said_owed == Some(reason) => log::Level::Debug,
                _ => log::Level::Info,
            };
            said_owed = Some(reason);
            log::log!(level, "full pass owed ({reason}); starting it");
            agent.set_phase("full-pass");
            let pass = resync(
                dir,
                scim,
                profile,
                index,
                gate,
                &mut parking,
                &queue,
                settings,
                &scope,
                agent,
            );
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
                Some(Ok(PassEnd::Unavailable(n, mark, failures)))
                    if accept_stalled_pass(stalled, n) =>
                {
                    log::warn!(
                        "full pass: {n} objects failed again although the endpoint answers \
                         others (see the warnings above and the provisioning log); taking the \
                         pass as done so that changes flow: they are parked and retried with a \
                         backoff, when they change, or by `idrelay retry`; deletes wait for a \
                         complete pass"
                    );
                    park_pass_failures(&mut parking, &failures);
                    with_queue(&queue, move |q| q.mark_resync_done(&mark))
                        .await
                        .map_err(RunError::Queue)?;
                    record_full_pass(&settings.state_dir);
                    retry.reset();
                    stalled = None;
                    None
                }
                // Still owed: run it again.
                Some(Ok(PassEnd::Unavailable(n, _, _))) => {
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
                // During an endpoint outage its watch said so once and paces the tries.
                match scim.outage().and_then(|w| w.next_wait()) {
                    Some(wait) => {
                        log::debug!("{why}; retrying in {:.0} s", wait.as_secs_f64());
                        outage_sleep(scim, control, wait).await;
                    }
                    None => {
                        let wait = retry.next_delay().unwrap_or(Duration::from_secs(60));
                        log::warn!("{why}; retrying in {:.0} s", wait.as_secs_f64());
                        control.sleep(wait).await;
                    }
                }
            }
            continue;
        }
        let cookie = cookie.expect("checked above");
        // The set `scope.groups` allows, as of now: a change to one of its groups after
        // this owes a full pass (see `batch`), which computes it again.
        let allowed = match &settings.pass.scope_groups {
            None => None,
            Some(g) => {
                match crate::sync::scope_groups::allowed_set(dir, g, &settings.state_dir).await {
                    Ok(set) => Some(set),
                    Err(e) => {
                        // Nothing is taken out of scope on it: nothing is sent until it reads.
                        let why = e.to_string();
                        agent.set_error(why.clone());
                        agent.set_phase("degraded");
                        let wait = retry.next_delay().unwrap_or(Duration::from_secs(60));
                        log::warn!(
                            "{why}; changes wait, retrying in {:.0} s",
                            wait.as_secs_f64()
                        );
                        control.sleep(wait).await;
                        continue;
                    }
                }
            }
        };
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
                agent.feed.clone(),
                settings.persist_catch_up,
            )),
            Feed::Poll(spec) => smol::spawn(poll_feed(
                dir.clone(),
                spec.clone(),
                settings.feed_filter(),
                cookie,
                queue.clone(),
                scope.clone(),
                notify_tx,
                agent.feed.clone(),
            )),
        };
        let ctx = SendCtx {
            dir,
            endpoint: &endpoint,
            profile,
            settings,
            control,
            agent,
            allowed: allowed.as_ref(),
        };
        agent.set_phase("following");
        let outcome = send_loop(&ctx, index, gate, &mut parking, &queue, &feed, &notify_rx).await;
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
        parking.save().map_err(RunError::Parking)?;
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

/// Waits `wait` during an endpoint outage: cut short by a stop or reload request
/// (returned) and by a new token in `scim.token_file`, looked for every second, so that a
/// fixed token is tried at once however long the wait had grown.
async fn outage_sleep(scim: &ScimClient, control: &Control, wait: Duration) -> Option<Request> {
    let end = std::time::Instant::now() + wait;
    loop {
        let left = end.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        if let Some(r) = control.sleep(left.min(Duration::from_secs(1))).await {
            return Some(r);
        }
        if scim.credential_renewed() {
            if let Some(w) = scim.outage() {
                w.operator_acted();
            }
            return None;
        }
    }
}

/// Sends the deletes `approve-deletes` released, if an approval is waiting: each once, as
/// [`crate::sync::deletes::send_approved`] does when no agent runs (they passed the gate
/// already; a failed one stays in the index and the next full pass finds it again). Through
/// the endpoint seam, so the sender stays testable; same log lines as there.
async fn release_approved(
    endpoint: &impl EndpointWrites,
    index: &mut AnchorIndex,
    gate: &mut DeleteGate,
) -> Result<(), RunError> {
    let Some(targets) = gate.take_approval() else {
        return Ok(());
    };
    gate.save().map_err(RunError::Deletes)?;
    let (mut sent, mut failed) = (0u64, 0usize);
    for t in &targets {
        match endpoint.delete(t).await {
            Ok(word) => {
                crate::sync::deletes::landed(index, t, word);
                sent += 1;
            }
            Err(e) => {
                log::warn!("{} {}: delete failed: {e}", t.kind.word(), t.dn);
                failed += 1;
            }
        }
    }
    log::info!(
        "approved deletes: {sent} sent, {failed} failed (failed ones are found again by the next full pass)"
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
    /// is still owed. With the watermark it would have recorded, and the pass's failures
    /// (parked if the pass is taken as done).
    Unavailable(u64, Vec<u8>, Vec<crate::sync::pass::Failure>),
}

/// Parks the objects a full pass taken as done could not send because of the endpoint
/// (refused, or 5xx after every retry), so that they are retried with a backoff rather
/// than only when they change or at the next full pass.
fn park_pass_failures(parking: &mut Parking, failures: &[crate::sync::pass::Failure]) {
    let now = parking::unix_now();
    let mut n = 0;
    for f in failures {
        let Some((kind, anchor)) = &f.endpoint else {
            continue;
        };
        let r = parking::Refusal {
            uuid: anchor.clone(),
            anchor: anchor.clone(),
            kind: kind.word(),
            dn: f.dn.clone(),
            reason: f.reason.clone(),
            attempts: 1,
        };
        if parking.park(r, now) {
            n += 1;
        }
    }
    if n > 0 {
        log::warn!(
            "full pass: {n} objects the endpoint refused are parked (retried from 2 min on; `idrelay status` lists them)"
        );
    }
    if let Err(e) = parking.save() {
        log::warn!("cannot record parked objects yet ({e}); will retry");
    }
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
    parking: &mut Parking,
    queue: &SharedQueue,
    settings: &FollowSettings,
    scope: &str,
    agent: &AgentState,
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
    // The pass finds every object that is gone and weighs their deletes itself.
    let waiting = gate.forget_waiting();
    if waiting > 0 {
        log::info!("{waiting} deletes waiting to be weighed are left to the full pass");
    }
    let report = full_pass(dir, scim, profile, index, gate, &settings.pass)
        .await
        .map_err(|e| e.to_string())?;
    log::info!("{report}");
    crate::sync::kept::record(&settings.state_dir, scim);
    // The heartbeat's counts include what full passes wrote, not only the feed's changes.
    agent.provisioned.fetch_add(
        report.created + report.replaced + report.matched,
        std::sync::atomic::Ordering::Relaxed,
    );
    agent.failed.fetch_add(
        report.failures.len() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    for f in &report.failures {
        log::warn!("not in step after the full pass: {}: {}", f.dn, f.reason);
    }
    // The pass visited every object in scope: what it did not fail is in step (or gone),
    // so its parked entry is settled.
    let failed: std::collections::HashSet<String> = report
        .failures
        .iter()
        .map(|f| dn::normalize(&f.dn))
        .collect();
    let cleared = parking.keep_failed(&failed);
    if cleared > 0 {
        log::info!("full pass: {cleared} parked objects are in step again, no longer parked");
    }
    let mark = Watermark::encode(scope, &cookie);
    if report.unavailable > 0 {
        // Not done: the queue keeps owing the pass (and the changes it holds), and the
        // feed does not start from this cookie unless `run` decides the pass is stalled.
        if let Err(e) = parking.save() {
            log::warn!("cannot record parked objects yet ({e}); will retry");
        }
        return Ok(PassEnd::Unavailable(
            report.unavailable,
            mark,
            report.failures,
        ));
    }
    // Done: what the endpoint refused is parked.
    park_pass_failures(parking, &report.failures);
    with_queue(queue, move |q| q.mark_resync_done(&mark))
        .await
        .map_err(|e| format!("queue: {e}"))?;
    Ok(PassEnd::Complete)
}
