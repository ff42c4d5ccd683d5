//! The sender: reads the queue oldest first, hands the batch to the batch machine
//! ([`super::batch`]), then acknowledges the leading run of handled changes. Deletes and
//! scope exits wait in the delete gate's settle window (`sync.delete_settle_secs`, see
//! [`crate::sync::deletes`]); between batches the sender closes a window that is due,
//! weighing everything that arrived in it as one burst, and carries out what it admitted.
//!
//! Between batches it retries the parked objects whose time has come (or that `idrelay
//! retry` asked for): each is read again from the directory by its DN and goes through the
//! batch machine like a queued change, tried once, parked again if refused again.
//!
//! What it must never do: acknowledge a change that is not done (provisioned, failed for
//! good, parked, or held for approval) or any change after one that is not (an ack covers a
//! prefix of the queue); acknowledge a batch whose scope exits were interrupted; acknowledge
//! changes before the held deletes and the parked objects they caused are durable; start a
//! new batch while a write it owes (held deletes, parked objects, an ack) waits for disk
//! space; send anything while the agent is on standby or a full pass is owed.

use std::time::{Duration, Instant, SystemTime};

use crate::net::backoff::Backoff;
use crate::queue::QueueError;
use crate::scim::profile::SyncProfile;
use crate::signals::Control;
use crate::state_dir::is_disk_full;
use crate::status::AgentState;
use crate::sync::anchors::AnchorIndex;
use crate::sync::deletes::{DeleteGate, GateError, Verdict};
use crate::sync::scope_groups::AllowedSet;

use super::batch::{
    apply_batch, send_delete, Applied, DirectoryReads, EndpointWrites, RETRY_FIRST_WAIT,
};
use super::parking::{unix_now, Parking, Refusal};
use super::{
    full_pass_due, last_full_pass, release_approved, save_index, with_queue, Change,
    FollowSettings, RunError, SharedQueue,
};

pub(super) enum SendEnd {
    ResyncOwed,
    FeedEnded,
    Signal,
    Fatal(RunError),
}

/// What the sender reads but never changes: the directory and the endpoint as its two
/// seams ([`Directory`](crate::ldap::Directory) and
/// [`ScimEndpoint`](super::batch::ScimEndpoint) in `run`, fakes in tests).
pub(super) struct SendCtx<'a, D, E> {
    pub(super) dir: &'a D,
    pub(super) endpoint: &'a E,
    pub(super) profile: &'a SyncProfile,
    pub(super) settings: &'a FollowSettings,
    pub(super) control: &'a Control,
    pub(super) agent: &'a AgentState,
    /// What `scope.groups` allows, computed when following started (None: no group-based
    /// scoping).
    pub(super) allowed: Option<&'a AllowedSet>,
}

/// How many queued changes the sender takes at a time (acknowledged together).
const SEND_BATCH: usize = 100;
const INDEX_SAVE_EVERY: Duration = Duration::from_secs(5);
const STATUS_LOG_EVERY: Duration = Duration::from_secs(60);

pub(super) async fn send_loop<D: DirectoryReads, E: EndpointWrites>(
    ctx: &SendCtx<'_, D, E>,
    index: &mut AnchorIndex,
    gate: &mut DeleteGate,
    parking: &mut Parking,
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
    let mut parked = 0u64;
    loop {
        if ctx.control.requested().is_some() || !ctx.agent.is_active() {
            return SendEnd::Signal;
        }
        if feed.is_finished() {
            return SendEnd::FeedEnded;
        }
        if let Err(e) = release_approved(ctx.endpoint, index, gate).await {
            return SendEnd::Fatal(e);
        }
        if let Some(end) = settle_deletes(ctx, index, gate, parking, queue).await {
            return end;
        }
        parking.take_request();
        if let Some(end) = retry_parked(ctx, index, gate, parking, queue, &attrs).await {
            return end;
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
        // A delete often starts a burst (a script, a subtree): let the rest of it arrive
        // (a second at most) so that it is applied as one batch. The weighing does not
        // depend on it: the gate's settle window collects the burst across batches.
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
        if records.is_empty() {
            if last_save.elapsed() >= INDEX_SAVE_EVERY {
                save_index(index);
                last_save = Instant::now();
            }
            if last_log.elapsed() >= STATUS_LOG_EVERY {
                log::info!(
                    "following changes: {applied} applied, {failed} failed, {parked} parked in the last minute; queue empty{}{}",
                    match gate.held().len() {
                        0 => String::new(),
                        n => format!("; {n} deletes held for approval"),
                    },
                    match parking.len() {
                        0 => String::new(),
                        n => format!("; {n} objects parked (see `idrelay status`)"),
                    }
                );
                applied = 0;
                failed = 0;
                parked = 0;
                last_log = Instant::now();
            }
            if full_pass_due(
                last_full_pass(&ctx.settings.state_dir),
                ctx.settings.full_pass_interval,
                SystemTime::now(),
            ) {
                return SendEnd::ResyncOwed;
            }
            // Wake on the feed's signal, an operator's request, or look again after a while
            // (at the latest when the settle window closes).
            let idle = gate
                .window_closes_at(ctx.settings.delete_settle)
                .map(|at| Duration::from_secs(at.saturating_sub(unix_now())))
                .map_or(IDLE_LOOK, |d| d.clamp(WINDOW_LOOK, IDLE_LOOK));
            let _ = smol::future::or(
                async {
                    let _ = notify.recv().await;
                },
                async {
                    ctx.control.sleep(idle).await;
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
            parking,
            ctx.settings.park_after,
            queue,
            &attrs,
            records,
        )
        .await;
        applied += batch.applied;
        failed += batch.failed;
        parked += batch.parked;
        let (handled, end) = (batch.handled, batch.end);
        if let Err(end) = acknowledge(ctx, gate, parking, queue, handled).await {
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

/// Makes the held deletes and the parked objects durable, then acknowledges the queue up
/// to `handled` (both are durable before the changes that caused them are acknowledged). A
/// write that
/// may succeed later (a full disk) pauses the sender and is retried with a backoff, as the
/// feed does for appends; nothing new is sent meanwhile. `Err` is how the sender must end
/// (a stop request while paused: what is not acknowledged is re-sent after the restart).
async fn acknowledge<D, E>(
    ctx: &SendCtx<'_, D, E>,
    gate: &mut DeleteGate,
    parking: &mut Parking,
    queue: &SharedQueue,
    handled: Option<u64>,
) -> Result<(), SendEnd> {
    let mut pause = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let why = match (parking.save(), gate.save()) {
            (Err(e), _) => match e.io() {
                Some(source) if is_disk_full(source) => {
                    format!("disk full: cannot record parked objects ({e})")
                }
                _ => return Err(SendEnd::Fatal(RunError::Parking(e))),
            },
            (Ok(()), Err(e)) => match &e {
                GateError::Io { source, .. } if is_disk_full(source) => {
                    format!("disk full: cannot record held deletes ({e})")
                }
                _ => return Err(SendEnd::Fatal(RunError::Deletes(e))),
            },
            (Ok(()), Ok(())) => {
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

/// Closes the delete gate's settle window if it is due (everything that arrived in it
/// weighed as one burst: all admitted, or all held) and carries out the admitted deletes,
/// each retried while the endpoint is unavailable; the gate is saved after each (a kill
/// resends at most the one in flight, which then finds it gone). Returns how the sender
/// must end, if it must.
async fn settle_deletes<D: DirectoryReads, E: EndpointWrites>(
    ctx: &SendCtx<'_, D, E>,
    index: &mut AnchorIndex,
    gate: &mut DeleteGate,
    parking: &mut Parking,
    queue: &SharedQueue,
) -> Option<SendEnd> {
    gate.set_scope(index.len());
    let settle = ctx.settings.delete_settle;
    let why = gate.hold_reason(gate.pending().len());
    let first = gate
        .pending()
        .first()
        .map(|t| (t.dn.clone(), t.reason.clone()));
    match gate.close_window(settle, unix_now()) {
        None => {}
        Some((Verdict::Held, n)) => {
            let (dn, reason) = first.unwrap_or_default();
            log::warn!(
                "{n} deletes within {} s held for approval ({why}; {} held in all; first: {dn}, {reason}): nothing is deleted until `idrelay approve-deletes`",
                settle.as_secs(),
                gate.held().len()
            );
        }
        Some((Verdict::Go, n)) => {
            log::info!("{n} deletes within {} s: sending them", settle.as_secs());
        }
    }
    if let Err(e) = acknowledge(ctx, gate, parking, queue, None).await {
        return Some(e);
    }
    while let Some(t) = gate.going().first().cloned() {
        if ctx.control.requested().is_some() {
            return Some(SendEnd::Signal); // the rest is sent after the restart
        }
        let mut wait = Backoff::new(RETRY_FIRST_WAIT, Duration::from_secs(15));
        loop {
            match send_delete(ctx, index, &t).await {
                Applied::Done => break,
                Applied::Failed(why) => {
                    // It stays in the anchor index: the next full pass finds it again.
                    log::warn!("{why}");
                    ctx.agent.set_error(why);
                    break;
                }
                Applied::Park(r) => {
                    log::warn!("{}: {}", r.dn, r.reason);
                    break;
                }
                Applied::Retry(why) => {
                    let d = wait.next_delay().unwrap_or(Duration::from_secs(60));
                    log::warn!("{why}; retrying in {:.1} s", d.as_secs_f64());
                    if ctx.control.sleep(d).await.is_some() {
                        // Still going: sent after the restart.
                        return Some(SendEnd::Signal);
                    }
                }
            }
        }
        gate.gone(&t.anchor);
        if let Err(e) = acknowledge(ctx, gate, parking, queue, None).await {
            return Some(e);
        }
    }
    None
}

/// Retries the parked objects that are due: each read again from the directory (by its DN,
/// never the stale payload) and applied by the batch machine as a queued change would be,
/// tried once; refused again, it is parked again with a longer wait. Nothing is
/// acknowledged (they are not in the queue); the list is saved. Returns how the sender
/// must end, if it must.
async fn retry_parked<D: DirectoryReads, E: EndpointWrites>(
    ctx: &SendCtx<'_, D, E>,
    index: &mut AnchorIndex,
    gate: &mut DeleteGate,
    parking: &mut Parking,
    queue: &SharedQueue,
    attrs: &[&str],
) -> Option<SendEnd> {
    let now = unix_now();
    let due = parking.due(now);
    if due.is_empty() {
        return None;
    }
    log::info!(
        "retrying {} parked {}",
        due.len(),
        if due.len() == 1 { "object" } else { "objects" }
    );
    let records = due
        .iter()
        .map(|p| crate::queue::Record {
            seq: 0,
            payload: serde_json::to_vec(&Change::Upsert {
                dn: p.dn.clone(),
                uuid: p.uuid.clone(),
            })
            .unwrap_or_default(),
            appended_at_ms: 0,
        })
        .collect();
    let batch = apply_batch(ctx, index, gate, parking, 1, queue, attrs, records).await;
    let end = batch.end;
    // One that neither went out nor was parked again (a mapping error, an interrupted
    // batch) waits its next round too: a due entry is never tried in a tight loop.
    for p in &due {
        let still_due = parking
            .find(&p.uuid, None)
            .is_some_and(|e| e.next_at <= now);
        if still_due {
            parking.park(
                Refusal {
                    uuid: p.uuid.clone(),
                    anchor: p.anchor.clone(),
                    kind: if p.kind == "group" { "group" } else { "user" },
                    dn: p.dn.clone(),
                    reason: p.reason.clone(),
                    attempts: 1,
                },
                now,
            );
        }
    }
    if let Err(e) = acknowledge(ctx, gate, parking, queue, None).await {
        return Some(e);
    }
    end
}

/// How often an idle sender looks at the queue without a signal from the feed.
const IDLE_LOOK: Duration = Duration::from_secs(2);
/// The shortest idle wait while a settle window is open.
const WINDOW_LOOK: Duration = Duration::from_millis(50);

fn is_delete(payload: &[u8]) -> bool {
    matches!(
        serde_json::from_slice::<Change>(payload),
        Ok(Change::Delete { .. })
    )
}

/// How long the sender waits for the rest of a burst of deletes before applying it (short
/// in unit tests, whose bursts are queued whole).
const DELETE_LINGER: Duration = if cfg!(test) {
    Duration::from_millis(5)
} else {
    Duration::from_secs(1)
};
