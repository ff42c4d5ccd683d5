//! LDAP side: connection, paged and ranged search, rootDSE, dialect detection, entry model.
//!
//! # What this module owns
//! * [`Directory`]: a cheap, cloneable handle to a bound directory (simple bind over
//!   `ldap://`, `ldap://` + StartTLS, or `ldaps://`), with paged streaming
//!   [`Directory::search`], base [`Directory::read`] and [`Directory::root_dse`].
//! * [`detect_kind`]: which directory family a rootDSE belongs to (pure).
//! * AD change feeds (in `dirsync.rs`): [`Directory::dirsync`] (DirSync with its cookie),
//!   [`Directory::usn_state`] and [`Directory::usn_changes`] (uSNChanged polling with
//!   show-deleted), [`AdChange`] and [`AdFeedError`].
//! * [`Entry`] (in `entry.rs`): the entry model the rest of the agent sees.
//!
//! # Threads, runtimes, connections
//! ldap3 runs on tokio; the agent runs on smol. tokio never leaves this module: each
//! `Directory` owns a dedicated thread (`idrelay-ldap`) running a current-thread tokio
//! runtime (see `worker.rs`). The handle talks to it over `smol::channel`s, which are
//! executor-agnostic, so every public `async fn` here can be awaited from smol (or any other
//! executor). Requests run as concurrent tokio tasks. Base reads share one main connection
//! (multiplexed); each paged search leases a connection of its own (from a small idle pool),
//! because OpenLDAP keeps one paged-results state per connection: two paged searches on one
//! connection break each other. So searches may run side by side or nested, and a search
//! waiting for a slow consumer never blocks a `read`.
//!
//! # Invariants
//! * **A broken read never looks complete.** [`EntryStream::next`] returns `None` only after
//!   the server reported success for the last page; any failure (result code, timeout, lost
//!   connection, malformed message, incomplete ranged attribute, dead worker) is delivered as
//!   `Some(Err(_))` and then the stream ends.
//! * **Bounded memory.** Search results flow through a bounded channel ([`STREAM_CAPACITY`]
//!   batches of up to 32 entries) and ldap3 holds at most one page, so a 150,000-object scan
//!   costs the same memory as a 1,000-object one. (Measured against the test slapd: resident
//!   memory of the reading process 4.4 MB after 2,000 entries and 4.5 MB after 40,000;
//!   about 60,000 entries/s with page size 500.)
//! * **Ranged attributes arrive whole.** An AD `member;range=0-1499` is completed with
//!   follow-up reads and merged under `member` before the entry is handed on (`range.rs`).
//! * **Continuation references are skipped, never chased** (Samba returns one for
//!   `CN=Configuration` on a subtree search of the domain).
//! * **No secret in errors or logs.** The bind password leaves [`Secret`] only on the wire.
//!
//! # Limits
//! * A broken connection fails the operations in flight ([`LdapError::ConnectionLost`]);
//!   the next operation binds a new connection. Nothing is retried behind the caller's back.
//! * Simple bind only (no SASL / Kerberos); TLS verification cannot be switched off.
//! * Every operation waits at most [`DirectoryConfig::timeout`] for each server message.

pub mod dn;
pub mod entry;
pub mod filter;
pub mod members;
mod notify;

mod catch_up;
mod conn;
mod content_sync;
mod dialect;
mod dirsync;
mod error;
mod gate;
mod range;
mod sync_cookie;
mod tls;
mod wire;
mod worker;
mod write;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use smol::channel::{Receiver, Sender};

use crate::secret::Secret;

pub use catch_up::CatchUpStream;
pub use content_sync::{SyncEvent, SyncMode, SyncStream};
pub use dialect::{
    detect_kind, naming_contexts, supports_control, DirectoryKind, AD_CAPABILITY_OIDS, DIRSYNC_OID,
    NOTIFICATION_OID, PAGED_RESULTS_OID, SHOW_DELETED_OID, SYNC_REQUEST_OID,
};
pub use dirsync::{
    decode_request, decode_response, encode_request, encode_response, is_tombstone, plain_dn,
    usn_filter, AdChange, AdFeedError, DirSyncBatch, DirSyncControlError, DirSyncFlags,
    DirSyncItem, DirSyncRequestValue, DirSyncResponseValue, DirSyncStream, UsnState, ValueDelta,
    DIRSYNC_MAX_BYTES,
};
pub use entry::Entry;
pub use error::{LdapError, ResultCode};
pub use notify::NotifyStream;
pub use write::{DirectoryWriter, Modification, WriteError, WriteOp};

use worker::{Request, StreamItem};

/// Default number of entries per page of a paged search.
pub const DEFAULT_PAGE_SIZE: u32 = 500;
/// Default per-operation timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How many batches of entries (up to 32 each) a search may have in flight between the
/// LDAP thread and its consumer.
pub const STREAM_CAPACITY: usize = 4;

/// How to reach and bind to the directory.
#[derive(Clone, Debug)]
pub struct DirectoryConfig {
    /// `ldap://host:port` or `ldaps://host:port` (use `127.0.0.1`, not `localhost`, when the
    /// certificate names the address).
    pub url: String,
    /// Upgrade an `ldap://` connection with StartTLS before binding (refused with `ldaps://`).
    pub starttls: bool,
    /// CA certificates (PEM) to trust; `None` means the system trust store.
    pub ca_file: Option<PathBuf>,
    /// The DN to bind as; empty means anonymous (no bind).
    pub bind_dn: String,
    /// The bind password (never printed).
    pub password: Secret,
    /// How long any one operation waits for the server (connect, bind, each search message).
    pub timeout: Duration,
    /// Entries per page of a search (RFC 2696); 0 sends no paging control at all.
    pub page_size: u32,
    /// Ask for `member` in explicit chunks of this many values (`member;range=0-(n-1)`, ...).
    /// `None` lets the server decide, as AD does (1500). Mostly for tests against Samba,
    /// which does not enforce ranges; also caps the values per reply on any AD server.
    pub range_step: Option<u32>,
}

impl DirectoryConfig {
    /// A plain `ldap://`/`ldaps://` configuration with the defaults: no StartTLS, system
    /// trust store, [`DEFAULT_TIMEOUT`], [`DEFAULT_PAGE_SIZE`], server-chosen ranges.
    pub fn new(url: impl Into<String>, bind_dn: impl Into<String>, password: Secret) -> Self {
        DirectoryConfig {
            url: url.into(),
            starttls: false,
            ca_file: None,
            bind_dn: bind_dn.into(),
            password,
            timeout: DEFAULT_TIMEOUT,
            page_size: DEFAULT_PAGE_SIZE,
            range_step: None,
        }
    }
}

/// Search scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The base entry only.
    Base,
    /// The base's immediate children.
    One,
    /// The base and everything below it.
    Subtree,
}

/// A bound connection to a directory (plus one per running search). Clones share them; they
/// close (with an unbind) when the last clone and the last [`EntryStream`] are dropped.
#[derive(Clone)]
pub struct Directory {
    inner: Arc<Handle>,
}

struct Handle {
    requests: Sender<Request>,
    url: String,
    tls: Option<(&'static str, String)>,
}

impl fmt::Debug for Directory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Directory")
            .field("url", &self.inner.url)
            .field("tls", &self.inner.tls.as_ref().map(|t| t.0))
            .finish()
    }
}

/// The error for a request whose worker thread has gone away.
fn worker_gone() -> LdapError {
    LdapError::Worker {
        detail: "the LDAP client thread stopped".into(),
    }
}

impl Directory {
    /// Connects to `cfg.url` (TLS / StartTLS as configured, verifying the server certificate)
    /// and binds as `cfg.bind_dn`.
    ///
    /// Errors: [`LdapError::InvalidUrl`], [`LdapError::CaFile`], [`LdapError::Connect`],
    /// [`LdapError::Tls`], [`LdapError::Timeout`], [`LdapError::Bind`] (e.g. 49
    /// invalidCredentials), [`LdapError::EmptyPassword`]. None of them holds the password.
    pub async fn connect(cfg: &DirectoryConfig) -> Result<Directory, LdapError> {
        let (requests, inbox) = smol::channel::unbounded();
        let ready = worker::spawn(cfg.clone(), inbox)?;
        let connected = ready.recv().await.map_err(|_| worker_gone())??;
        Ok(Directory {
            inner: Arc::new(Handle {
                requests,
                url: cfg.url.clone(),
                tls: connected.tls,
            }),
        })
    }

    /// The server URL this handle is connected to.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The rootDSE with all user and operational attributes (`*`, `+`).
    pub async fn root_dse(&self) -> Result<Entry, LdapError> {
        match self.read("", &["*", "+"]).await? {
            Some(entry) => Ok(entry),
            None => Err(LdapError::Protocol {
                detail: format!("{} returned no rootDSE", self.inner.url),
            }),
        }
    }

    /// Starts a paged subtree/one-level/base search. Entries arrive through the returned
    /// stream as the consumer asks for them (backpressure); ranged attributes are completed;
    /// continuation references are skipped. See [`EntryStream::next`] for how the end is
    /// reported. Nothing is sent until the worker picks the request up.
    pub fn search(&self, base: &str, scope: Scope, filter: &str, attrs: &[&str]) -> EntryStream {
        let (out, entries) = smol::channel::bounded(STREAM_CAPACITY);
        // If the worker is gone the request (and with it `out`) is dropped here, and the
        // stream reports a broken search on its first `next()`.
        let _ = self.inner.requests.try_send(Request::Search {
            base: base.to_owned(),
            scope,
            filter: filter.to_owned(),
            attrs: attrs.iter().map(|a| (*a).to_owned()).collect(),
            show_deleted: false,
            out,
        });
        EntryStream {
            entries,
            batch: Vec::new().into_iter(),
            state: StreamState::Open,
            _directory: self.clone(),
        }
    }

    /// Starts an RFC 4533 content-sync search (subtree, no paging) on a connection of its
    /// own; `cookie` resumes from an earlier one. `attrs` as for [`Directory::search`];
    /// `entryUUID` is always requested too. See [`SyncStream::next`] for how it ends;
    /// dropping the stream abandons the search and unbinds its connection.
    pub fn content_sync(
        &self,
        base: &str,
        filter: &str,
        attrs: &[&str],
        cookie: Option<Vec<u8>>,
        mode: SyncMode,
    ) -> SyncStream {
        let (stream, job) = SyncStream::new(self.clone(), base, filter, attrs, cookie, mode);
        // If the worker is gone the job (and its sender) is dropped here, and the stream
        // reports a broken search on its first `next()`.
        let _ = self.inner.requests.try_send(Request::ContentSync(job));
        stream
    }

    /// Starts one AD DirSync request (subtree of `base`, which must be a naming-context
    /// root) on a leased connection: the changes since `cookie` (everything, old tombstones
    /// included, when `None`), then the new cookie and the `more` flag; repeat with that
    /// cookie while `more`. See [`DirSyncStream::next`] and the `dirsync` module doc for the
    /// server's behaviour; lack of rights is [`AdFeedError::MissingReplicationRights`].
    pub fn dirsync(
        &self,
        base: &str,
        filter: &str,
        attrs: &[&str],
        cookie: Option<Vec<u8>>,
        flags: DirSyncFlags,
    ) -> DirSyncStream {
        let (stream, job) = DirSyncStream::new(self.clone(), base, filter, attrs, cookie, flags);
        // If the worker is gone the job (and its sender) is dropped here, and the stream
        // reports a broken search on its first `next()`.
        let _ = self.inner.requests.try_send(Request::DirSync(job));
        stream
    }

    /// Starts an AD change notification search under `base` on a connection of its own
    /// (see the `notify` module): the stream wakes whenever something there changes.
    /// Dropping it abandons the search.
    pub fn notifications(&self, base: &str) -> NotifyStream {
        let (stream, job) = NotifyStream::new(self.clone(), base);
        // If the worker is gone the job is dropped here, and the stream reports the end on
        // its first `next()`.
        let _ = self.inner.requests.try_send(Request::Notify(job));
        stream
    }

    /// The DC's position for uSN polling: rootDSE `highestCommittedUSN` and `dsServiceName`,
    /// plus the `invocationId` of that NTDS Settings object when it can be read. Read it
    /// *before* a [`Directory::usn_changes`] pass and store it with the changes it covers.
    pub async fn usn_state(&self) -> Result<UsnState, AdFeedError> {
        let dse = self
            .read("", &["highestCommittedUSN", "dsServiceName"])
            .await?
            .ok_or_else(|| AdFeedError::RootDse {
                url: self.inner.url.clone(),
                detail: "no rootDSE returned".into(),
            })?;
        let invocation_id = match dse.first_str("dsServiceName") {
            Some(ntds) if !ntds.is_empty() => self
                .read(ntds, &["invocationId"])
                .await
                .ok()
                .flatten()
                .and_then(|e| e.first_bytes("invocationId").map(<[u8]>::to_vec)),
            _ => None,
        };
        dirsync::usn_state_from(&self.inner.url, &dse, invocation_id)
    }

    /// The objects under `base` (subtree) with `uSNChanged >= since` that match `filter`,
    /// tombstones included (show-deleted control 1.2.840.113556.1.4.417, critical), as a
    /// paged search. `objectGUID`, `isDeleted`, `lastKnownParent` and `uSNChanged` are always
    /// requested, so every entry converts with [`AdChange::from_entry`]. Pass the stored
    /// `highestCommittedUSN + 1` as `since`.
    pub fn usn_changes(&self, base: &str, filter: &str, attrs: &[&str], since: u64) -> EntryStream {
        let (out, entries) = smol::channel::bounded(STREAM_CAPACITY);
        let _ = self.inner.requests.try_send(Request::Search {
            base: base.to_owned(),
            scope: Scope::Subtree,
            filter: usn_filter(since, filter),
            attrs: dirsync::usn_attrs(attrs),
            show_deleted: true,
            out,
        });
        EntryStream {
            entries,
            batch: Vec::new().into_iter(),
            state: StreamState::Open,
            _directory: self.clone(),
        }
    }

    /// Reads one entry (base-scope search); `Ok(None)` when it does not exist (result 32
    /// noSuchObject). Ranged attributes are completed.
    pub async fn read(&self, dn: &str, attrs: &[&str]) -> Result<Option<Entry>, LdapError> {
        let (reply, answer) = smol::channel::bounded(1);
        self.inner
            .requests
            .send(Request::Read {
                dn: dn.to_owned(),
                attrs: attrs.iter().map(|a| (*a).to_owned()).collect(),
                reply,
            })
            .await
            .map_err(|_| worker_gone())?;
        answer.recv().await.map_err(|_| worker_gone())?
    }

    /// Whether the entry at `dn` exists and matches `filter` (a base-scope search that
    /// returns no attributes). A failed search is an error, never "does not match".
    pub async fn matches(&self, dn: &str, filter: &str) -> Result<bool, LdapError> {
        let mut s = self.search(dn, Scope::Base, filter, &["1.1"]);
        let mut found = false;
        while let Some(e) = s.next().await {
            e?;
            found = true;
        }
        Ok(found)
    }

    /// What protects the connection, for `idrelay status` and logs, e.g. "ldaps to
    /// ldaps://127.0.0.1:636; server certificate (1234 bytes DER) verified against the CA
    /// file /etc/idrelay/ca.pem (1 certificate)". `None` on a plain `ldap://` connection.
    pub async fn tls_facts(&self) -> Option<String> {
        let (mode, trust) = self.inner.tls.as_ref()?;
        let (reply, answer) = smol::channel::bounded(1);
        let peer = match self
            .inner
            .requests
            .send(Request::PeerCertificate { reply })
            .await
        {
            Ok(()) => answer.recv().await.ok().flatten(),
            Err(_) => None,
        };
        let url = &self.inner.url;
        Some(match peer {
            Some(len) => format!(
                "{mode} to {url}; server certificate ({len} bytes DER) verified against {trust}"
            ),
            None => format!("{mode} to {url}; server certificate verified against {trust}"),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamState {
    Open,
    Complete,
    Failed,
}

/// The entries of one search, in server order.
///
/// `next()` yields `Some(Ok(entry))` for each entry, then exactly one of: `None` (the search
/// completed successfully: every page ended with result 0) or `Some(Err(e))` (it did not;
/// the entries seen so far are a partial result), and `None` from then on. Dropping the
/// stream early abandons the search on the server.
pub struct EntryStream {
    entries: Receiver<StreamItem>,
    batch: std::vec::IntoIter<Entry>,
    state: StreamState,
    _directory: Directory,
}

impl fmt::Debug for EntryStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntryStream")
            .field("state", &self.state)
            .finish()
    }
}

impl EntryStream {
    /// The next entry; `None` only after a successful end (see the type's doc).
    pub async fn next(&mut self) -> Option<Result<Entry, LdapError>> {
        loop {
            if let Some(entry) = self.batch.next() {
                return Some(Ok(entry));
            }
            if self.state != StreamState::Open {
                return None;
            }
            match self.entries.recv().await {
                Ok(StreamItem::Entries(batch)) => self.batch = batch.into_iter(),
                Ok(StreamItem::Done) => {
                    self.state = StreamState::Complete;
                    return None;
                }
                Ok(StreamItem::Failed(e)) => {
                    self.state = StreamState::Failed;
                    return Some(Err(e));
                }
                Err(_) => {
                    self.state = StreamState::Failed;
                    return Some(Err(LdapError::Worker {
                        detail: "the search ended without a final result (the LDAP client \
                                 task stopped)"
                            .into(),
                    }));
                }
            }
        }
    }

    /// Whether the search has ended successfully (`next()` returned `None`).
    pub fn is_complete(&self) -> bool {
        self.state == StreamState::Complete
    }

    /// Every remaining entry, or the error that ended the search. For small result sets;
    /// large scans should consume [`EntryStream::next`] one entry at a time.
    pub async fn collect(mut self) -> Result<Vec<Entry>, LdapError> {
        let mut all = Vec::new();
        while let Some(entry) = self.next().await {
            all.push(entry?);
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    /// A handle whose worker is `requests`' receiver (or gone, if that is dropped).
    fn handle(requests: Sender<Request>) -> Directory {
        Directory {
            inner: Arc::new(Handle {
                requests,
                url: "ldap://127.0.0.1:1".into(),
                tls: None,
            }),
        }
    }

    /// A stream fed by the returned sender, as the worker would feed it.
    fn stream() -> (Sender<StreamItem>, EntryStream) {
        let (requests, _inbox) = smol::channel::unbounded();
        let (out, entries) = smol::channel::bounded(STREAM_CAPACITY);
        let stream = EntryStream {
            entries,
            batch: Vec::new().into_iter(),
            state: StreamState::Open,
            _directory: handle(requests),
        };
        (out, stream)
    }

    #[test]
    fn handles_and_streams_cross_threads() {
        assert_send_sync::<Directory>();
        assert_send_sync::<EntryStream>();
    }

    #[test]
    fn only_an_explicit_done_ends_a_stream_with_none() {
        smol::block_on(async {
            let (out, mut s) = stream();
            let batch = vec![Entry::new("cn=a"), Entry::new("cn=b")];
            out.send(StreamItem::Entries(batch)).await.unwrap();
            out.send(StreamItem::Done).await.unwrap();
            assert_eq!(s.next().await.unwrap().unwrap().dn, "cn=a");
            assert_eq!(s.next().await.unwrap().unwrap().dn, "cn=b");
            assert!(!s.is_complete());
            assert!(s.next().await.is_none());
            assert!(s.is_complete());
            assert!(s.next().await.is_none());
        });
    }

    #[test]
    fn a_failure_is_an_error_after_the_entries_before_it() {
        smol::block_on(async {
            let (out, s) = stream();
            out.send(StreamItem::Entries(vec![Entry::new("cn=a")]))
                .await
                .unwrap();
            let e = LdapError::Search {
                base: "dc=x".into(),
                filter: "(cn=*)".into(),
                code: ResultCode(51),
                message: String::new(),
            };
            out.send(StreamItem::Failed(e.clone())).await.unwrap();
            assert_eq!(s.collect().await, Err(e));
        });
    }

    #[test]
    fn a_stream_whose_task_vanished_is_broken_not_finished() {
        smol::block_on(async {
            let (out, mut s) = stream();
            out.send(StreamItem::Entries(vec![Entry::new("cn=a")]))
                .await
                .unwrap();
            drop(out);
            assert!(s.next().await.unwrap().is_ok());
            assert!(matches!(
                s.next().await,
                Some(Err(LdapError::Worker { .. }))
            ));
            assert!(!s.is_complete());
            assert!(s.next().await.is_none());
        });
    }

    #[test]
    fn requests_to_a_dead_worker_fail() {
        let (requests, inbox) = smol::channel::unbounded();
        drop(inbox);
        let dir = handle(requests);
        smol::block_on(async {
            let mut s = dir.search("dc=x", Scope::Subtree, "(cn=*)", &["cn"]);
            assert!(matches!(
                s.next().await,
                Some(Err(LdapError::Worker { .. }))
            ));
            let read = dir.read("cn=a,dc=x", &[]).await;
            assert!(matches!(read, Err(LdapError::Worker { .. })));
        });
    }
}
