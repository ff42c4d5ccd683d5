//! The feed tasks: follow the directory (RFC 4533 refreshAndPersist, or a polling feed of
//! [`super::poll`]) and append what changed to the queue, each batch in one append together
//! with the watermark that covers it.
//!
//! What it must never do: store a watermark ahead of the changes it covers (a polling answer
//! split into several appends carries the old watermark on all but the last); leave out a
//! change under the base because it looks out of scope (a move out of the included subtrees
//! is a delete the sender must see); read objects, decide scope or talk to the endpoint;
//! clear a resync flag (only a complete full pass does).

use std::sync::Arc;
use std::time::Duration;

use crate::ldap::{Directory, LdapError, SyncEvent};
use crate::net::backoff::Backoff;
use crate::queue::{AppendOutcome, ResyncReason};
use crate::status::FeedLink;

use super::poll::{self, PollError, PollSpec};
use super::{with_queue, Change, SharedQueue, Watermark};

/// A cookie for "now": a refreshOnly search whose listing the LDAP thread drops as it reads
/// it (see [`Directory::sync_cookie`]); awaited before the full pass starts reading.
pub(super) async fn current_cookie(
    dir: &Directory,
    base: &str,
    filter: &str,
) -> Result<Vec<u8>, LdapError> {
    dir.sync_cookie(base, filter).await
}

/// Largest batch the feed appends without a new cookie (covered by the previous one).
const FEED_BATCH: usize = 500;

#[allow(clippy::too_many_arguments)]
pub(super) async fn feed(
    dir: Directory,
    base: String,
    filter: String,
    cookie: Vec<u8>,
    queue: SharedQueue,
    scope: String,
    notify: smol::channel::Sender<()>,
    link: Arc<FeedLink>,
    catch_up: Option<Duration>,
) -> String {
    // Down again when this task ends or is dropped.
    let _link = link.guard();
    let mut stream = dir.content_sync_caught_up(
        &base,
        &filter,
        &["entryUUID"],
        Some(cookie.clone()),
        catch_up,
    );
    let mut last_cookie = cookie;
    let mut batch: Vec<Vec<u8>> = Vec::new();
    loop {
        let ev = match stream.next().await {
            None => return "the directory ended the sync search".into(),
            Some(Err(e)) => {
                if e.is_sync_refresh_required() {
                    let _ = with_queue(&queue, |q| q.mark_resync_owed(ResyncReason::FeedPosition))
                        .await;
                    let _ = notify.try_send(());
                }
                return e.to_string();
            }
            Some(Ok(ev)) => {
                // The search is up: the server sent something (at the latest, the end of
                // the refresh phase).
                link.up();
                ev
            }
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
                let _ =
                    with_queue(&queue, |q| q.mark_resync_owed(ResyncReason::FeedPosition)).await;
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
#[allow(clippy::too_many_arguments)]
pub(super) async fn poll_feed(
    dir: Directory,
    spec: PollSpec,
    feed_filter: String,
    mut mark: Vec<u8>,
    queue: SharedQueue,
    scope: String,
    notify: smol::channel::Sender<()>,
    link: Arc<FeedLink>,
) -> String {
    let _link = link.guard();
    let mut changes_notified = spec.notifications.then(|| dir.notifications(&spec.base));
    if changes_notified.is_some() {
        log::info!(
            "{} feed: change notifications on: a change is read as soon as the directory reports it (at the latest every {} s)",
            spec.kind.as_str(),
            spec.interval.as_secs()
        );
    }
    loop {
        match poll::poll_once(&dir, &spec, &feed_filter, &mark).await {
            Ok((changes, next)) => {
                link.up();
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
                let _ =
                    with_queue(&queue, |q| q.mark_resync_owed(ResyncReason::FeedPosition)).await;
                let _ = notify.try_send(());
                return why;
            }
            Err(PollError::Failed(why)) => return why,
        }
        if let Err(why) = wait_for_change(&mut changes_notified, spec.interval).await {
            log::warn!(
                "{} feed: change notifications ended ({why}); polling every {} s",
                spec.kind.as_str(),
                spec.interval.as_secs()
            );
            changes_notified = None;
        }
    }
}

/// Waits `interval`, or less when the directory notifies a change first (then a moment
/// more, so that a burst of changes is read by one poll). An error: the notifications
/// ended (refused, connection lost); the wait is then over too.
async fn wait_for_change(
    notified: &mut Option<crate::ldap::NotifyStream>,
    interval: Duration,
) -> Result<(), String> {
    let Some(stream) = notified.as_mut() else {
        smol::Timer::after(interval).await;
        return Ok(());
    };
    let notified = smol::future::or(async { Some(stream.next().await) }, async {
        smol::Timer::after(interval).await;
        None
    })
    .await;
    match notified {
        None => Ok(()),
        Some(Ok(_)) => {
            smol::Timer::after(NOTIFY_SETTLE).await;
            Ok(())
        }
        Some(Err(e)) => Err(e.to_string()),
    }
}

/// After a change notification, how long the poll waits for more of the same burst.
const NOTIFY_SETTLE: Duration = Duration::from_millis(200);

fn encode(c: &Change) -> Vec<u8> {
    serde_json::to_vec(c).unwrap_or_default()
}
