//! RFC 4533 content synchronization ("syncrepl") as a stream of [`SyncEvent`]s.
//!
//! # What this module owns
//! * [`SyncMode`], [`SyncEvent`], [`SyncStream`]: the consumer's side of one content-sync
//!   search, started with [`super::Directory::content_sync`].
//! * Decoding of the Sync State / Sync Done controls and the Sync Info intermediate message
//!   (pure, never panics: ldap3's own parsers panic on malformed input, so they are not used)
//!   and their translation into events ([`events_for_entry`], [`events_for_info`],
//!   [`events_for_done`]).
//! * The worker task ([`serve`]) that runs one sync search on the LDAP thread.
//!
//! # Invariants
//! * **A cookie comes after what it covers.** Every [`SyncEvent::Cookie`] follows the events
//!   of the message that carried it, so a consumer that persists a cookie when it sees one
//!   has already handled everything the cookie covers.
//! * **A broken feed never looks finished.** `next()` returns `None` only when the server
//!   ended the search with success (refreshOnly after SyncDone); everything else (result
//!   code, e-syncRefreshRequired 4096, refresh timeout, lost connection, malformed message)
//!   is one `Some(Err(_))`, then the stream ends.
//! * **Own connection, no paging.** Each sync search binds a connection of its own (never the
//!   main one, never one from the paged-search pool) and sends no paged-results control. The
//!   connection is unbound when the search ends or the [`SyncStream`] is dropped (the search
//!   is abandoned first), so nothing leaks.
//! * **Timeouts.** Connect, bind and every message of the refresh phase wait at most the
//!   configured timeout; once the refresh is done, a refreshAndPersist search waits for
//!   changes without limit (it may be idle for hours).
//! * **Bounded memory.** Events travel in batches of up to [`super::worker::BATCH`] through a
//!   channel of [`super::STREAM_CAPACITY`] batches; after the refresh each message's events are
//!   handed on at once (latency), before that when a batch is full or a marker/cookie arrives.
//!   ldap3 decodes the socket into an unbounded channel of its own, so the search's
//!   connection is paused while that output channel is full (`gate.rs`: the server's replies
//!   wait in TCP), and the reader drains ldap3's channel outside tokio's budget
//!   ([`next_item`]). Without both, a listing of 1,000,000 entries to a consumer on the
//!   other thread held 185-437 MiB; with both, 17-21 MiB (`sync_cookie.rs` has the runs).
//! * **A cookie for "now"** (`Directory::sync_cookie`, `sync_cookie.rs`) is the same
//!   refreshOnly search with its listing dropped on this thread: only the last cookie is
//!   handed on.
//!
//! # Limits
//! * Scope is always subtree. AD-style ranged attributes are not completed (syncrepl is an
//!   OpenLDAP / 389-DS feature; they do not range `member`).
//! * A present-state entry without attributes (RFC 4533 allows it) is reported as a
//!   one-UUID [`SyncEvent::IdSet`] with `deletes: false`.

use std::time::Duration;

use ldap3::asn1::{parse_tag, StructureTag, TagClass, PL};
use ldap3::controls::{Control, MakeCritical, RefreshMode, SyncRequest};
use ldap3::{Ldap, ResultEntry, Scope as Ldap3Scope};
use smol::channel::{Receiver, Sender};

use super::conn::{connect_unless_cancelled, op_error};
use super::gate::Gate;
use super::wire::RawEntry;
use super::worker::{abandon, close, BATCH};
use super::{DirectoryConfig, Entry, LdapError, ResultCode};

/// OID of the Sync State control on each entry.
pub const SYNC_STATE_OID: &str = "1.3.6.1.4.1.4203.1.9.1.2";
/// OID of the Sync Done control on the search result.
pub const SYNC_DONE_OID: &str = "1.3.6.1.4.1.4203.1.9.1.3";
/// OID (responseName) of the Sync Info intermediate message.
pub const SYNC_INFO_OID: &str = "1.3.6.1.4.1.4203.1.9.1.4";

/// Which kind of content-sync search to run (RFC 4533 section 3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Refresh only: the changes since the cookie (or everything), then the search ends.
    RefreshOnly,
    /// Refresh, then stay open and deliver every change as it happens.
    RefreshAndPersist,
}

/// One thing the server told the consumer, in server order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncEvent {
    /// Entry added, modified, renamed (new DN, same uuid) or listed as present with its
    /// attributes.
    Upsert {
        /// The syncUUID in standard UUID text, lower-case 8-4-4-4-12. OpenLDAP sends the
        /// entryUUID (so this equals the `entryUUID` value); 389-DS sends the 16 bytes of the
        /// entry's nsUniqueId (`b4f55441-f16a11f1-b259f0ea-34f55c5e` arrives as
        /// `b4f55441-f16a-11f1-b259-f0ea34f55c5e`), unrelated to its entryUUID.
        uuid: String,
        /// The entry with the requested attributes (and `entryUUID`).
        entry: Entry,
    },
    /// Entry deleted (persist phase `delete` state, or refresh-phase delete).
    Delete {
        /// The syncUUID in standard UUID text (as for [`SyncEvent::Upsert`]).
        uuid: String,
        /// The DN the server sent with the delete, if any (both OpenLDAP and 389-DS send
        /// it in the persist phase).
        dn: Option<String>,
    },
    /// syncIdSet: these UUIDs are deleted (`deletes = true`) or present (`deletes = false`:
    /// part of a present phase).
    IdSet {
        /// syncUUIDs in standard UUID text, in server order (no DNs: a refresh from a
        /// cookie reports what was deleted meanwhile this way).
        uuids: Vec<String>,
        /// Whether they are deletions (true) or a present list (false).
        deletes: bool,
    },
    /// syncInfo refreshPresent (`deletes = false`) / refreshDelete (`deletes = true`): the end
    /// of a refresh phase, with the server's refreshDone flag. With `done = true` a
    /// [`SyncEvent::RefreshDone`] follows.
    Phase {
        /// refreshDelete (true) or refreshPresent (false).
        deletes: bool,
        /// The refreshDone flag.
        done: bool,
    },
    /// End of the refresh phase (SyncDone in refreshOnly; syncInfo refreshPresent /
    /// refreshDelete with refreshDone=true in refreshAndPersist). `refresh_deletes = false`
    /// means present semantics: entries not listed during the refresh are gone.
    RefreshDone {
        /// Whether the refresh reported deletions (true) or listed the present (false).
        refresh_deletes: bool,
    },
    /// A new cookie: every event before it is covered by it.
    Cookie(Vec<u8>),
}

/// The entry state of a Sync State control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryState {
    Present,
    Add,
    Modify,
    Delete,
}

/// A decoded Sync State control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyncStateValue {
    pub state: EntryState,
    pub uuid: Vec<u8>,
    pub cookie: Option<Vec<u8>>,
}

/// A decoded Sync Done control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyncDoneValue {
    pub cookie: Option<Vec<u8>>,
    pub refresh_deletes: bool,
}

/// A decoded Sync Info message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SyncInfoValue {
    NewCookie(Vec<u8>),
    Refresh {
        deletes: bool,
        cookie: Option<Vec<u8>>,
        done: bool,
    },
    IdSet {
        cookie: Option<Vec<u8>>,
        deletes: bool,
        uuids: Vec<Vec<u8>>,
    },
}

fn protocol(detail: impl Into<String>) -> LdapError {
    LdapError::Protocol {
        detail: detail.into(),
    }
}

/// The lower-case 8-4-4-4-12 text form of a 16-byte syncUUID (whatever the server means by
/// those bytes: see [`SyncEvent::Upsert`]).
pub(crate) fn uuid_text(bytes: &[u8]) -> Result<String, LdapError> {
    if bytes.len() != 16 {
        return Err(protocol(format!(
            "content sync: a syncUUID has {} bytes, expected 16",
            bytes.len()
        )));
    }
    let mut s = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{b:02x}"));
    }
    Ok(s)
}

fn ber(val: &[u8], what: &str) -> Result<StructureTag, LdapError> {
    match parse_tag(val) {
        Ok(([], tag)) => Ok(tag),
        _ => Err(protocol(format!("content sync: {what} is not valid BER"))),
    }
}

fn children(tag: StructureTag, what: &str) -> Result<Vec<StructureTag>, LdapError> {
    match tag.payload {
        PL::C(inner) => Ok(inner),
        PL::P(_) => Err(protocol(format!(
            "content sync: {what} is not a constructed value"
        ))),
    }
}

fn bytes(tag: StructureTag, what: &str) -> Result<Vec<u8>, LdapError> {
    match tag.payload {
        PL::P(b) => Ok(b),
        PL::C(_) => Err(protocol(format!(
            "content sync: {what} is not a primitive value"
        ))),
    }
}

fn boolean(tag: StructureTag, what: &str) -> Result<bool, LdapError> {
    match bytes(tag, what)?.as_slice() {
        [b] => Ok(*b != 0),
        _ => Err(protocol(format!("content sync: {what} is not a BOOLEAN"))),
    }
}

const UNIVERSAL_BOOLEAN: u64 = 1;
const UNIVERSAL_OCTET_STRING: u64 = 4;
const UNIVERSAL_ENUMERATED: u64 = 10;
const UNIVERSAL_SET: u64 = 17;

fn is_universal(tag: &StructureTag, id: u64) -> bool {
    tag.class == TagClass::Universal && tag.id == id
}

/// Decodes a Sync State control value: `SEQUENCE { state ENUMERATED, entryUUID, cookie? }`.
pub(crate) fn parse_sync_state(val: &[u8]) -> Result<SyncStateValue, LdapError> {
    let mut parts = children(ber(val, "Sync State control")?, "Sync State control")?.into_iter();
    let state_tag = parts
        .next()
        .filter(|t| is_universal(t, UNIVERSAL_ENUMERATED))
        .ok_or_else(|| protocol("content sync: Sync State control without a state"))?;
    let state = match bytes(state_tag, "Sync State state")?.as_slice() {
        [0] => EntryState::Present,
        [1] => EntryState::Add,
        [2] => EntryState::Modify,
        [3] => EntryState::Delete,
        other => {
            return Err(protocol(format!(
                "content sync: unknown Sync State state {other:?}"
            )))
        }
    };
    let uuid = parts
        .next()
        .filter(|t| is_universal(t, UNIVERSAL_OCTET_STRING))
        .ok_or_else(|| protocol("content sync: Sync State control without an entryUUID"))?;
    let uuid = bytes(uuid, "Sync State entryUUID")?;
    let cookie = match parts.next() {
        Some(t) if is_universal(&t, UNIVERSAL_OCTET_STRING) => Some(bytes(t, "Sync State cookie")?),
        Some(_) => {
            return Err(protocol(
                "content sync: Sync State cookie is not an OCTET STRING",
            ))
        }
        None => None,
    };
    Ok(SyncStateValue {
        state,
        uuid,
        cookie,
    })
}

/// Decodes a Sync Done control value: `SEQUENCE { cookie?, refreshDeletes BOOLEAN DEFAULT FALSE }`.
pub(crate) fn parse_sync_done(val: &[u8]) -> Result<SyncDoneValue, LdapError> {
    let mut done = SyncDoneValue {
        cookie: None,
        refresh_deletes: false,
    };
    for t in children(ber(val, "Sync Done control")?, "Sync Done control")? {
        if is_universal(&t, UNIVERSAL_OCTET_STRING) {
            done.cookie = Some(bytes(t, "Sync Done cookie")?);
        } else if is_universal(&t, UNIVERSAL_BOOLEAN) {
            done.refresh_deletes = boolean(t, "Sync Done refreshDeletes")?;
        } else {
            return Err(protocol(
                "content sync: unexpected element in Sync Done control",
            ));
        }
    }
    Ok(done)
}

/// Decodes a Sync Info value (the intermediate message's responseValue).
pub(crate) fn parse_sync_info(val: &[u8]) -> Result<SyncInfoValue, LdapError> {
    let tag = ber(val, "Sync Info message")?;
    if tag.class != TagClass::Context {
        return Err(protocol(
            "content sync: Sync Info is not a context-tagged choice",
        ));
    }
    let id = tag.id;
    if id == 0 {
        return Ok(SyncInfoValue::NewCookie(bytes(tag, "Sync Info newcookie")?));
    }
    if !(1..=3).contains(&id) {
        return Err(protocol(format!(
            "content sync: unknown Sync Info choice [{id}]"
        )));
    }
    let mut cookie = None;
    // refreshDone DEFAULT TRUE; refreshDeletes DEFAULT FALSE.
    let mut flag = id != 3;
    let mut uuids = Vec::new();
    for t in children(tag, "Sync Info sequence")? {
        if is_universal(&t, UNIVERSAL_OCTET_STRING) {
            cookie = Some(bytes(t, "Sync Info cookie")?);
        } else if is_universal(&t, UNIVERSAL_BOOLEAN) {
            flag = boolean(t, "Sync Info flag")?;
        } else if id == 3 && is_universal(&t, UNIVERSAL_SET) {
            for u in children(t, "syncUUIDs")? {
                uuids.push(bytes(u, "syncUUID")?);
            }
        } else {
            return Err(protocol("content sync: unexpected element in Sync Info"));
        }
    }
    Ok(match id {
        3 => SyncInfoValue::IdSet {
            cookie,
            deletes: flag,
            uuids,
        },
        _ => SyncInfoValue::Refresh {
            deletes: id == 1,
            cookie,
            done: flag,
        },
    })
}

/// The responseValue of an intermediate message whose responseName is Sync Info; `None` for
/// other intermediate messages.
pub(crate) fn sync_info_value(tag: StructureTag) -> Result<Option<Vec<u8>>, LdapError> {
    let mut name = None;
    let mut value = None;
    for t in children(tag, "intermediate response")? {
        match (t.class, t.id) {
            (TagClass::Context, 0) => name = Some(bytes(t, "intermediate responseName")?),
            (TagClass::Context, 1) => value = Some(bytes(t, "intermediate responseValue")?),
            _ => {}
        }
    }
    if name.as_deref() != Some(SYNC_INFO_OID.as_bytes()) {
        return Ok(None);
    }
    value
        .map(Some)
        .ok_or_else(|| protocol("content sync: Sync Info message without a value"))
}

/// The events for one search result entry with its Sync State.
pub(crate) fn events_for_entry(
    raw: RawEntry,
    state: SyncStateValue,
) -> Result<Vec<SyncEvent>, LdapError> {
    let uuid = uuid_text(&state.uuid)?;
    let mut events = Vec::with_capacity(2);
    match state.state {
        EntryState::Delete => events.push(SyncEvent::Delete {
            uuid,
            dn: (!raw.dn.is_empty()).then_some(raw.dn),
        }),
        EntryState::Present if raw.attrs.is_empty() => events.push(SyncEvent::IdSet {
            uuids: vec![uuid],
            deletes: false,
        }),
        EntryState::Present | EntryState::Add | EntryState::Modify => {
            events.push(SyncEvent::Upsert {
                uuid,
                entry: raw.into_entry(),
            })
        }
    }
    events.extend(state.cookie.map(SyncEvent::Cookie));
    Ok(events)
}

/// The events for one Sync Info message.
pub(crate) fn events_for_info(info: SyncInfoValue) -> Result<Vec<SyncEvent>, LdapError> {
    Ok(match info {
        SyncInfoValue::NewCookie(c) => vec![SyncEvent::Cookie(c)],
        SyncInfoValue::Refresh {
            deletes,
            cookie,
            done,
        } => {
            let mut ev = vec![SyncEvent::Phase { deletes, done }];
            if done {
                ev.push(SyncEvent::RefreshDone {
                    refresh_deletes: deletes,
                });
            }
            ev.extend(cookie.map(SyncEvent::Cookie));
            ev
        }
        SyncInfoValue::IdSet {
            cookie,
            deletes,
            uuids,
        } => {
            let uuids = uuids
                .iter()
                .map(|u| uuid_text(u))
                .collect::<Result<Vec<_>, _>>()?;
            let mut ev = vec![SyncEvent::IdSet { uuids, deletes }];
            ev.extend(cookie.map(SyncEvent::Cookie));
            ev
        }
    })
}

/// The events for the Sync Done control of a successful search result.
pub(crate) fn events_for_done(done: Option<SyncDoneValue>) -> Vec<SyncEvent> {
    let Some(done) = done else {
        return Vec::new();
    };
    let mut ev = vec![SyncEvent::RefreshDone {
        refresh_deletes: done.refresh_deletes,
    }];
    ev.extend(done.cookie.map(SyncEvent::Cookie));
    ev
}

/// The attribute list to send: the caller's, plus `entryUUID` unless already covered.
pub(crate) fn sync_attrs(attrs: &[String]) -> Vec<String> {
    let mut out: Vec<String> = attrs.to_vec();
    if out.is_empty() {
        out.push("*".into());
    }
    let covered = out
        .iter()
        .any(|a| a == "+" || a.eq_ignore_ascii_case("entryUUID"));
    if !covered {
        out.push("entryUUID".into());
    }
    out
}

// ---------------------------------------------------------------------------------------
// The consumer's side.

/// One item on a sync search's channel.
pub(crate) enum SyncItem {
    /// Events in server order.
    Events(Vec<SyncEvent>),
    /// The server ended the search with success; nothing follows.
    Done,
    /// The search failed; nothing follows.
    Failed(LdapError),
}

/// A content-sync search for the LDAP thread.
pub(crate) struct SyncJob {
    pub base: String,
    pub filter: String,
    pub attrs: Vec<String>,
    pub cookie: Option<Vec<u8>>,
    pub mode: SyncMode,
    /// Hand on only the last cookie, drop everything else on this thread
    /// (`sync_cookie.rs`).
    pub cookie_only: bool,
    pub out: Sender<SyncItem>,
    /// Never sent on; closes when the [`SyncStream`] is dropped, which cancels the search.
    pub cancel: Receiver<()>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    Complete,
    Failed,
}

/// The events of one content-sync search. Dropping it abandons the search on the server and
/// unbinds its connection.
pub struct SyncStream {
    items: Receiver<SyncItem>,
    batch: std::vec::IntoIter<SyncEvent>,
    state: State,
    _cancel: Sender<()>,
    _directory: super::Directory,
}

impl std::fmt::Debug for SyncStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncStream")
            .field("state", &self.state)
            .finish()
    }
}

impl SyncStream {
    /// Creates the stream and the job the worker runs for it.
    pub(crate) fn new(
        directory: super::Directory,
        base: &str,
        filter: &str,
        attrs: &[&str],
        cookie: Option<Vec<u8>>,
        mode: SyncMode,
    ) -> (SyncStream, SyncJob) {
        let (out, items) = smol::channel::bounded(super::STREAM_CAPACITY);
        let (cancel_tx, cancel) = smol::channel::bounded(1);
        let job = SyncJob {
            base: base.to_owned(),
            filter: filter.to_owned(),
            attrs: attrs.iter().map(|a| (*a).to_owned()).collect(),
            cookie,
            mode,
            cookie_only: false,
            out,
            cancel,
        };
        let stream = SyncStream {
            items,
            batch: Vec::new().into_iter(),
            state: State::Open,
            _cancel: cancel_tx,
            _directory: directory,
        };
        (stream, job)
    }

    /// Next event; `None` only when the search ended successfully (refreshOnly after
    /// SyncDone; refreshAndPersist only if the server ends it with success). Errors
    /// (connection lost, e-syncRefreshRequired 4096 — see
    /// [`LdapError::is_sync_refresh_required`] —, timeout in the refresh phase) come as
    /// `Some(Err)` and end the stream.
    pub async fn next(&mut self) -> Option<Result<SyncEvent, LdapError>> {
        loop {
            if let Some(ev) = self.batch.next() {
                return Some(Ok(ev));
            }
            if self.state != State::Open {
                return None;
            }
            match self.items.recv().await {
                Ok(SyncItem::Events(batch)) => self.batch = batch.into_iter(),
                Ok(SyncItem::Done) => {
                    self.state = State::Complete;
                    return None;
                }
                Ok(SyncItem::Failed(e)) => {
                    self.state = State::Failed;
                    return Some(Err(e));
                }
                Err(_) => {
                    self.state = State::Failed;
                    return Some(Err(LdapError::Worker {
                        detail: "the content sync ended without a final result (the LDAP \
                                 client task stopped)"
                            .into(),
                    }));
                }
            }
        }
    }

    /// Whether the search has ended successfully (`next()` returned `None`).
    pub fn is_complete(&self) -> bool {
        self.state == State::Complete
    }
}

// ---------------------------------------------------------------------------------------
// The worker's side (runs on the LDAP thread).

use super::worker::Stop;

pub(super) type Stream = ldap3::SearchStream<'static, String, Vec<String>>;

/// Runs one content-sync search on a connection of its own until it ends, fails, or the
/// consumer drops the stream; then abandons it if needed and unbinds.
pub(crate) async fn serve(
    cfg: &DirectoryConfig,
    tls: Option<&(
        &'static str,
        std::sync::Arc<futures_rustls::rustls::ClientConfig>,
    )>,
    job: SyncJob,
) {
    let gate = Gate::default();
    let ldap = match connect_unless_cancelled(cfg, tls, &job.cancel, gate.clone()).await {
        None => return,
        Some(Ok(ldap)) => ldap,
        Some(Err(e)) => {
            let _ = job.out.send(SyncItem::Failed(e)).await;
            return;
        }
    };
    let last = match run(cfg, ldap.clone(), &job, &gate).await {
        Ok(()) => Some(SyncItem::Done),
        Err(Stop::Failed(e)) => Some(SyncItem::Failed(e)),
        Err(Stop::Consumer) => None,
    };
    close(ldap).await;
    if let Some(last) = last {
        let _ = job.out.send(last).await;
    }
}

async fn run(
    cfg: &DirectoryConfig,
    mut ldap: Ldap,
    job: &SyncJob,
    gate: &Gate,
) -> Result<(), Stop> {
    let what = || format!("content sync of {:?} with filter {}", job.base, job.filter);
    let request = SyncRequest {
        mode: match job.mode {
            SyncMode::RefreshOnly => RefreshMode::RefreshOnly,
            SyncMode::RefreshAndPersist => RefreshMode::RefreshAndPersist,
        },
        cookie: job.cookie.clone(),
        reload_hint: false,
    };
    // No ldap3 timeout: it would also apply while a persist search waits for changes.
    ldap.with_controls(request.critical());
    let start = ldap.streaming_search(
        &job.base,
        Ldap3Scope::Subtree,
        &job.filter,
        sync_attrs(&job.attrs),
    );
    let mut stream: Stream = match tokio::time::timeout(cfg.timeout, start).await {
        Err(_) => {
            return Err(Stop::Failed(LdapError::Timeout {
                operation: what(),
                after: cfg.timeout,
            }))
        }
        Ok(Err(ldap3::LdapError::FilterParsing)) => {
            return Err(Stop::Failed(LdapError::InvalidFilter {
                filter: job.filter.clone(),
            }))
        }
        Ok(Err(e)) => return Err(Stop::Failed(op_error(cfg, e, what))),
        Ok(Ok(s)) => s,
    };
    let outcome = if job.cookie_only {
        super::sync_cookie::drain(cfg, &mut stream, job, gate, &what).await
    } else {
        pump(cfg, &mut stream, job, gate, &what).await
    };
    if outcome.is_err() {
        abandon(&mut stream).await;
    }
    outcome
}

/// Reads messages and forwards their events until the search result arrives.
async fn pump(
    cfg: &DirectoryConfig,
    stream: &mut Stream,
    job: &SyncJob,
    gate: &Gate,
    what: &impl Fn() -> String,
) -> Result<(), Stop> {
    let mut refreshing = true;
    let mut batch: Vec<SyncEvent> = Vec::with_capacity(BATCH);
    loop {
        let limit = refreshing.then_some(cfg.timeout);
        let Some(item) = next_item(cfg, stream, &job.cancel, limit, what).await? else {
            break;
        };
        let events = decode(item)?;
        let mut flush = !refreshing || batch.len() + events.len() >= BATCH;
        for ev in &events {
            match ev {
                SyncEvent::RefreshDone { .. } => {
                    refreshing = false;
                    flush = true;
                }
                SyncEvent::Phase { .. } | SyncEvent::Cookie(_) => flush = true,
                _ => {}
            }
        }
        batch.extend(events);
        if flush && !batch.is_empty() {
            send(&job.out, std::mem::take(&mut batch), gate).await?;
        }
    }
    batch.extend(events_for_done(finish(stream, job).await?));
    if !batch.is_empty() {
        send(&job.out, batch, gate).await?;
    }
    log::debug!("{} ended", what());
    Ok(())
}

/// The search's result after its last message: its Sync Done control, or the failure.
pub(super) async fn finish(
    stream: &mut Stream,
    job: &SyncJob,
) -> Result<Option<SyncDoneValue>, Stop> {
    let res = stream.finish().await;
    if res.rc != 0 {
        return Err(Stop::Failed(LdapError::Search {
            base: job.base.clone(),
            filter: job.filter.clone(),
            code: ResultCode(res.rc),
            message: res.text,
        }));
    }
    Ok(match find_control(&res.ctrls, SYNC_DONE_OID) {
        Some(val) => Some(parse_sync_done(val)?),
        None => None,
    })
}

/// Hands a batch on; while the output channel is full, the connection's ldap3 task is paused
/// (`gate.rs`), so the server's replies wait in TCP rather than in ldap3's channel.
pub(super) async fn send(
    out: &Sender<SyncItem>,
    batch: Vec<SyncEvent>,
    gate: &Gate,
) -> Result<(), Stop> {
    let _paused = out.is_full().then(|| gate.pause());
    out.send(SyncItem::Events(batch))
        .await
        .map_err(|_| Stop::Consumer)
}

/// The next message of the search (`None` at its end), racing the consumer's cancel signal
/// and, when `limit` is set, a timeout.
///
/// Outside tokio's cooperative budget: each receive from ldap3's channel would spend one
/// unit of it, so the reader would yield after 128 messages while ldap3's connection task
/// decodes the socket into that (unbounded) channel for up to 128 reads a turn; the channel
/// then grows for as long as the server sends faster than that. Unconstrained, a turn of
/// the reader empties the channel (or stops at a full output channel), so what waits in it
/// is at most one turn of the connection task.
pub(super) async fn next_item(
    cfg: &DirectoryConfig,
    stream: &mut Stream,
    cancel: &Receiver<()>,
    limit: Option<Duration>,
    what: &impl Fn() -> String,
) -> Result<Option<ResultEntry>, Stop> {
    let read = async {
        match limit {
            Some(after) => match tokio::time::timeout(after, stream.next()).await {
                Ok(r) => r.map_err(|e| Stop::Failed(op_error(cfg, e, what))),
                Err(_) => Err(Stop::Failed(LdapError::Timeout {
                    operation: format!("{} (refresh phase)", what()),
                    after,
                })),
            },
            None => stream
                .next()
                .await
                .map_err(|e| Stop::Failed(op_error(cfg, e, what))),
        }
    };
    tokio::task::unconstrained(smol::future::or(read, async {
        let _ = cancel.recv().await;
        Err(Stop::Consumer)
    }))
    .await
}

pub(super) fn find_control<'a>(ctrls: &'a [Control], oid: &str) -> Option<&'a [u8]> {
    ctrls
        .iter()
        .map(|c| &c.1)
        .find(|raw| raw.ctype == oid)
        .map(|raw| raw.val.as_deref().unwrap_or(&[]))
}

/// The events of one message (entry, reference or intermediate).
fn decode(item: ResultEntry) -> Result<Vec<SyncEvent>, LdapError> {
    if item.is_ref() {
        return Ok(Vec::new());
    }
    if item.is_intermediate() {
        return match sync_info_value(item.0)? {
            Some(val) => events_for_info(parse_sync_info(&val)?),
            None => Ok(Vec::new()),
        };
    }
    let state = match find_control(&item.1, SYNC_STATE_OID) {
        Some(val) => parse_sync_state(val)?,
        None => {
            return Err(protocol(
                "content sync: an entry came without a Sync State control",
            ))
        }
    };
    events_for_entry(RawEntry::from_tag(item.0)?, state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        assert!(content.len() < 128);
        let mut v = vec![tag, content.len() as u8];
        v.extend_from_slice(content);
        v
    }

    const U: [u8; 16] = [
        0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd,
        0xef,
    ];
    const U_TEXT: &str = "12345678-9abc-def0-0123-456789abcdef";

    #[test]
    fn uuid_text_matches_the_entryuuid_form() {
        assert_eq!(uuid_text(&U).unwrap(), U_TEXT);
        assert!(uuid_text(&U[..15]).is_err());
    }

    #[test]
    fn sync_state_decodes_every_state_and_the_optional_cookie() {
        for (n, want) in [
            (0, EntryState::Present),
            (1, EntryState::Add),
            (2, EntryState::Modify),
            (3, EntryState::Delete),
        ] {
            let mut inner = tlv(0x0a, &[n]);
            inner.extend(tlv(0x04, &U));
            let v = parse_sync_state(&tlv(0x30, &inner)).unwrap();
            assert_eq!(v.state, want);
            assert_eq!(v.cookie, None);
        }
        let mut inner = tlv(0x0a, &[2]);
        inner.extend(tlv(0x04, &U));
        inner.extend(tlv(0x04, b"rid=000,csn=1"));
        let v = parse_sync_state(&tlv(0x30, &inner)).unwrap();
        assert_eq!(v.cookie.as_deref(), Some(&b"rid=000,csn=1"[..]));
        assert!(parse_sync_state(&tlv(0x30, &tlv(0x0a, &[9]))).is_err());
        assert!(parse_sync_state(&[0x30, 0x05, 0x0a]).is_err());
        assert!(parse_sync_state(&tlv(0x30, &tlv(0x0a, &[1]))).is_err());
    }

    #[test]
    fn sync_done_defaults_and_flags() {
        let d = parse_sync_done(&tlv(0x30, &[])).unwrap();
        assert_eq!(d.cookie, None);
        assert!(!d.refresh_deletes);
        let mut inner = tlv(0x04, b"c");
        inner.extend(tlv(0x01, &[0xff]));
        let d = parse_sync_done(&tlv(0x30, &inner)).unwrap();
        assert_eq!(d.cookie, Some(b"c".to_vec()));
        assert!(d.refresh_deletes);
        assert!(parse_sync_done(&tlv(0x30, &tlv(0x02, &[1]))).is_err());
    }

    #[test]
    fn sync_info_decodes_each_choice_with_rfc_defaults() {
        assert_eq!(
            parse_sync_info(&tlv(0x80, b"ck")).unwrap(),
            SyncInfoValue::NewCookie(b"ck".to_vec())
        );
        // refreshDelete with nothing: refreshDone defaults to TRUE.
        assert_eq!(
            parse_sync_info(&tlv(0xa1, &[])).unwrap(),
            SyncInfoValue::Refresh {
                deletes: true,
                cookie: None,
                done: true
            }
        );
        let mut inner = tlv(0x04, b"ck");
        inner.extend(tlv(0x01, &[0]));
        assert_eq!(
            parse_sync_info(&tlv(0xa2, &inner)).unwrap(),
            SyncInfoValue::Refresh {
                deletes: false,
                cookie: Some(b"ck".to_vec()),
                done: false
            }
        );
        // syncIdSet without refreshDeletes: present (FALSE by default).
        let mut set = tlv(0x04, &U);
        set.extend(tlv(0x04, &U));
        let v = parse_sync_info(&tlv(0xa3, &tlv(0x31, &set))).unwrap();
        assert_eq!(
            v,
            SyncInfoValue::IdSet {
                cookie: None,
                deletes: false,
                uuids: vec![U.to_vec(), U.to_vec()]
            }
        );
        assert!(parse_sync_info(&tlv(0xa4, &[])).is_err());
        assert!(parse_sync_info(&tlv(0x04, b"x")).is_err());
        assert!(parse_sync_info(&[0xa3, 0x10]).is_err());
    }

    #[test]
    fn a_cookie_follows_the_events_it_covers() {
        let raw = RawEntry {
            dn: "uid=a,dc=x".into(),
            attrs: vec![("cn".into(), vec![b"a".to_vec()])],
        };
        let ev = events_for_entry(
            raw.clone(),
            SyncStateValue {
                state: EntryState::Modify,
                uuid: U.to_vec(),
                cookie: Some(b"c1".to_vec()),
            },
        )
        .unwrap();
        assert!(
            matches!(&ev[0], SyncEvent::Upsert { uuid, entry } if uuid == U_TEXT && entry.dn == "uid=a,dc=x")
        );
        assert_eq!(ev[1], SyncEvent::Cookie(b"c1".to_vec()));

        let ev = events_for_entry(
            RawEntry {
                dn: "uid=a,dc=x".into(),
                attrs: vec![],
            },
            SyncStateValue {
                state: EntryState::Delete,
                uuid: U.to_vec(),
                cookie: None,
            },
        )
        .unwrap();
        assert_eq!(
            ev,
            vec![SyncEvent::Delete {
                uuid: U_TEXT.into(),
                dn: Some("uid=a,dc=x".into())
            }]
        );

        let ev = events_for_info(SyncInfoValue::Refresh {
            deletes: false,
            cookie: Some(b"c2".to_vec()),
            done: true,
        })
        .unwrap();
        assert_eq!(
            ev,
            vec![
                SyncEvent::Phase {
                    deletes: false,
                    done: true
                },
                SyncEvent::RefreshDone {
                    refresh_deletes: false
                },
                SyncEvent::Cookie(b"c2".to_vec()),
            ]
        );
        let ev = events_for_done(Some(SyncDoneValue {
            cookie: Some(b"c3".to_vec()),
            refresh_deletes: true,
        }));
        assert_eq!(
            ev,
            vec![
                SyncEvent::RefreshDone {
                    refresh_deletes: true
                },
                SyncEvent::Cookie(b"c3".to_vec())
            ]
        );
        assert!(events_for_done(None).is_empty());
    }

    #[test]
    fn present_without_attributes_is_a_one_uuid_present_set() {
        let ev = events_for_entry(
            RawEntry {
                dn: "uid=a,dc=x".into(),
                attrs: vec![],
            },
            SyncStateValue {
                state: EntryState::Present,
                uuid: U.to_vec(),
                cookie: None,
            },
        )
        .unwrap();
        assert_eq!(
            ev,
            vec![SyncEvent::IdSet {
                uuids: vec![U_TEXT.into()],
                deletes: false
            }]
        );
    }

    #[test]
    fn entryuuid_is_always_requested() {
        assert_eq!(sync_attrs(&[]), vec!["*", "entryUUID"]);
        assert_eq!(sync_attrs(&["cn".into()]), vec!["cn", "entryUUID"]);
        assert_eq!(sync_attrs(&["*".into(), "+".into()]), vec!["*", "+"]);
        assert_eq!(sync_attrs(&["entryuuid".into()]), vec!["entryuuid"]);
    }
}
