//! The tokio side: one thread, one current-thread runtime, a few LDAP connections.
//!
//! [`spawn`] starts the thread; it connects, binds, reports the outcome on a channel, then
//! serves [`Request`]s from its inbox until every sender (every `Directory` clone and every
//! open `EntryStream`) is gone, and unbinds. Each request runs as its own tokio task.
//! Results travel back on `smol::channel`s, which work under any executor.
//!
//! Connections:
//! * The **main** connection serves base reads (`read`, rootDSE, range follow-ups); ldap3
//!   multiplexes concurrent reads on it. If it is found closed (server idle timeout, network),
//!   the next request binds a new one; operations in flight when it broke fail.
//! * Every **paged search leases a connection of its own**, from a small idle pool or newly
//!   bound. OpenLDAP keeps one paged-results state per connection: a second paged search on
//!   the same connection invalidates the first one's cookie ("paged results cookie is invalid
//!   or old", 53). Leasing also lets a consumer nest searches without deadlock, and keeps a
//!   slow consumer's search from delaying anyone else. A connection returns to the pool only
//!   after its search completed; after a failure or an abandoned search it is unbound.
//!   A DirSync search (`dirsync.rs`, one request, no paging) leases one the same way.
//!
//! Invariants:
//! * A search reports its end explicitly: the last item on its channel is [`StreamItem::Done`]
//!   (every page ended with success and the last page had an empty cookie) or
//!   [`StreamItem::Failed`]. A channel that closes without either means the task died.
//! * Paging is done here, not by ldap3's `PagedResults` adapter: that adapter carries on to
//!   the next page whenever a cookie comes back, even if the page's result code was an
//!   error, and that error would be lost. Here every page's result code is checked.
//! * Memory per search stays bounded: ldap3 buffers at most the current page (the next page
//!   is only requested after this one has been handed on), plus the bounded output channel.
//! * A search whose consumer went away, or that failed half-way, is abandoned on the server.

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use futures_rustls::rustls;
use ldap3::{Ldap, SearchStream};
use smol::channel::{Receiver, Sender};

use super::conn::{connect_bound, op_error, tls_mode};
use super::content_sync::{self, SyncJob};
use super::dirsync::{self, DirSyncJob, DirSyncMsg};
use super::range;
use super::tls;
use super::wire::{self, RawEntry};
use super::{DirectoryConfig, Entry, LdapError, ResultCode, Scope};

/// The base read filter (matches every entry).
const ANY_OBJECT: &str = "(objectClass=*)";
/// How long the worker waits for an unbind or abandon to be sent.
const UNBIND_GRACE: Duration = Duration::from_secs(2);
/// Idle search connections kept for the next search.
const MAX_IDLE: usize = 8;
/// An idle search connection older than this is unbound rather than reused (servers drop
/// idle connections: AD after 900 s by default).
const MAX_IDLE_AGE: Duration = Duration::from_secs(60);
/// Entries per [`StreamItem::Entries`]: a batch is sent when full and at each page's end.
pub(crate) const BATCH: usize = 32;
/// Work for the LDAP thread.
pub(crate) enum Request {
    /// A (paged) search; items go to `out`.
    Search {
        base: String,
        scope: Scope,
        filter: String,
        attrs: Vec<String>,
        /// Also send the AD show-deleted control (uSN polling must see tombstones).
        show_deleted: bool,
        out: Sender<StreamItem>,
    },
    /// A base-scope read of one entry; `None` for noSuchObject.
    Read {
        dn: String,
        attrs: Vec<String>,
        reply: Sender<Result<Option<Entry>, LdapError>>,
    },
    /// A base-scope read as the server answered it: ranged attributes not completed.
    ReadRaw {
        dn: String,
        attrs: Vec<String>,
        reply: Sender<Result<Option<RawEntry>, LdapError>>,
    },
    /// The size of the server's TLS certificate, if the connection is TLS.
    PeerCertificate { reply: Sender<Option<usize>> },
    /// An RFC 4533 content-sync search on a connection of its own (`content_sync.rs`).
    ContentSync(SyncJob),
    /// One AD DirSync search on a leased connection (`dirsync.rs`).
    DirSync(DirSyncJob),
    /// An AD change notification search on a connection of its own (`notify.rs`).
    Notify(super::notify::NotifyJob),
}

/// One item of a search's output channel.
pub(crate) enum StreamItem {
    /// Entries in server order, ranged attributes completed; at most [`BATCH`] of them.
    /// Batching saves a cross-thread wake-up per entry.
    Entries(Vec<Entry>),
    /// The search completed successfully; nothing follows.
    Done,
    /// The search failed; nothing follows.
    Failed(LdapError),
}

/// How TLS was set up, reported back to the handle.
pub(crate) struct Connected {
    /// `Some(("ldaps" | "StartTLS", trust sentence))` when the connection is TLS.
    pub tls: Option<(&'static str, String)>,
}

/// Starts the LDAP thread. The returned channel yields the outcome of connect + bind once.
pub(crate) fn spawn(
    cfg: DirectoryConfig,
    inbox: Receiver<Request>,
) -> Result<Receiver<Result<Connected, LdapError>>, LdapError> {
    let (ready_tx, ready_rx) = smol::channel::bounded(1);
    thread::Builder::new()
        .name("idrelay-ldap".into())
        .spawn(move || run(cfg, inbox, ready_tx))
        .map_err(|e| LdapError::Worker {
            detail: format!("cannot start the thread: {e}"),
        })?;
    Ok(ready_rx)
}

/// The single-threaded tokio runtime an LDAP thread runs ldap3 on (tokio stays inside
/// `src/ldap`).
pub(super) fn current_thread_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
}

fn run(
    cfg: DirectoryConfig,
    inbox: Receiver<Request>,
    ready: Sender<Result<Connected, LdapError>>,
) {
    let rt = match current_thread_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.try_send(Err(LdapError::Worker {
                detail: format!("cannot start the tokio runtime: {e}"),
            }));
            return;
        }
    };
    rt.block_on(async move {
        let (session, connected) = match Session::open(&cfg).await {
            Ok(ok) => ok,
            Err(e) => {
                let _ = ready.send(Err(e)).await;
                return;
            }
        };
        if ready.send(Ok(connected)).await.is_err() {
            // The caller stopped waiting for connect(); nobody will use this connection.
            session.close().await;
            return;
        }
        drop(ready);
        while let Ok(request) = inbox.recv().await {
            let session = session.clone();
            tokio::spawn(async move { session.serve(request).await });
        }
        session.close().await;
    });
}

/// Why a search loop stopped early (also used by the content-sync loop).
pub(super) enum Stop {
    /// The consumer dropped its stream; nothing to report.
    Consumer,
    /// The search failed.
    Failed(LdapError),
}

impl From<LdapError> for Stop {
    fn from(e: LdapError) -> Self {
        Stop::Failed(e)
    }
}

/// Everything needed to open another bound connection, and the idle ones.
struct Link {
    cfg: DirectoryConfig,
    /// `("ldaps" | "StartTLS", client config)` when the connection is TLS.
    tls: Option<(&'static str, Arc<rustls::ClientConfig>)>,
    /// The main connection (see the module doc); replaced when found closed.
    main: Mutex<Ldap>,
    /// Idle search connections and when they were put back.
    idle: Mutex<Vec<(Ldap, Instant)>>,
}

/// A handle on the connections and settings; cheap to clone.
#[derive(Clone)]
struct Session {
    link: Arc<Link>,
}

type Stream = SearchStream<'static, String, Vec<String>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // No code panics while holding these locks; a poisoned lock still holds valid data.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Unbinds (best effort) and drops a connection.
pub(super) async fn close(mut ldap: Ldap) {
    let _ = tokio::time::timeout(UNBIND_GRACE, ldap.unbind()).await;
}

impl Session {
    /// Checks the settings, connects (TLS or StartTLS as configured) and binds.
    async fn open(cfg: &DirectoryConfig) -> Result<(Session, Connected), LdapError> {
        let mode = tls_mode(&cfg.url, cfg.starttls)?;
        let (tls, trust) = match mode {
            Some(mode) => {
                let setup = tls::client_setup(cfg.ca_file.as_deref())?;
                (Some((mode, setup.config)), Some((mode, setup.trust)))
            }
            None => (None, None),
        };
        let mut cfg = cfg.clone();
        cfg.range_step = cfg.range_step.filter(|s| *s > 0);
        let main = connect_bound(&cfg, tls.as_ref()).await?;
        let link = Link {
            cfg,
            tls,
            main: Mutex::new(main),
            idle: Mutex::new(Vec::new()),
        };
        Ok((
            Session {
                link: Arc::new(link),
            },
            Connected { tls: trust },
        ))
    }

    fn url(&self) -> &str {
        &self.link.cfg.url
    }

    fn timeout(&self) -> Duration {
        self.link.cfg.timeout
    }

    /// The main connection, bound anew if the old one is closed.
    async fn main(&self) -> Result<Ldap, LdapError> {
        let mut current = lock(&self.link.main).clone();
        if !current.is_closed() {
            return Ok(current);
        }
        log::info!(
            "LDAP connection to {} was closed; connecting again",
            self.url()
        );
        let fresh = connect_bound(&self.link.cfg, self.link.tls.as_ref()).await?;
        let mut slot = lock(&self.link.main);
        if slot.is_closed() {
            *slot = fresh.clone();
            Ok(fresh)
        } else {
            // Another task reconnected first; use its connection (ours closes when dropped).
            Ok(slot.clone())
        }
    }

    /// A connection for one paged search: a recent idle one, or a new one.
    async fn lease(&self) -> Result<Ldap, LdapError> {
        let reusable = {
            let mut idle = lock(&self.link.idle);
            let mut found = None;
            while let Some((mut ldap, since)) = idle.pop() {
                if since.elapsed() < MAX_IDLE_AGE && !ldap.is_closed() {
                    found = Some(ldap);
                    break;
                }
            }
            found
        };
        match reusable {
            Some(ldap) => Ok(ldap),
            None => connect_bound(&self.link.cfg, self.link.tls.as_ref()).await,
        }
    }

    /// Returns a search connection after a completed search.
    async fn give_back(&self, ldap: Ldap) {
        let surplus = {
            let mut idle = lock(&self.link.idle);
            if idle.len() < MAX_IDLE {
                idle.push((ldap, Instant::now()));
                None
            } else {
                Some(ldap)
            }
        };
        if let Some(ldap) = surplus {
            close(ldap).await;
        }
    }

    /// Unbinds every connection (the last handle is gone).
    async fn close(&self) {
        let idle: Vec<(Ldap, Instant)> = std::mem::take(&mut *lock(&self.link.idle));
        for (ldap, _) in idle {
            close(ldap).await;
        }
        let main = lock(&self.link.main).clone();
        close(main).await;
    }

    async fn serve(self, request: Request) {
        match request {
            Request::Search {
                base,
                scope,
                filter,
                attrs,
                show_deleted,
                out,
            } => {
                let last = match self
                    .search(&base, scope, &filter, &attrs, show_deleted, &out)
                    .await
                {
                    Ok(()) => StreamItem::Done,
                    Err(Stop::Failed(e)) => StreamItem::Failed(e),
                    Err(Stop::Consumer) => return,
                };
                let _ = out.send(last).await;
            }
            Request::ContentSync(job) => {
                content_sync::serve(&self.link.cfg, self.link.tls.as_ref(), job).await;
            }
            Request::Notify(job) => {
                super::notify::serve(&self.link.cfg, self.link.tls.as_ref(), job).await;
            }
            Request::DirSync(job) => {
                let conn = match self.lease().await {
                    Ok(conn) => conn,
                    Err(e) => {
                        let _ = job.out.send(DirSyncMsg::Failed(e.into())).await;
                        return;
                    }
                };
                if dirsync::serve(&self.link.cfg, &conn, job).await {
                    self.give_back(conn).await;
                } else {
                    close(conn).await;
                }
            }
            Request::Read { dn, attrs, reply } => {
                let _ = reply.send(self.read(&dn, &attrs).await).await;
            }
            Request::ReadRaw { dn, attrs, reply } => {
                let _ = reply.send(self.read_raw(&dn, attrs).await).await;
            }
            Request::PeerCertificate { reply } => {
                let size = match self.main().await {
                    Ok(mut ldap) => {
                        let cert =
                            tokio::time::timeout(self.timeout(), ldap.get_peer_certificate());
                        cert.await
                            .ok()
                            .and_then(Result::ok)
                            .flatten()
                            .map(|c| c.len())
                    }
                    Err(_) => None,
                };
                let _ = reply.send(size).await;
            }
        }
    }

    /// A paged search on a leased connection; the connection goes back to the pool only if
    /// the search completed.
    async fn search(
        &self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[String],
        show_deleted: bool,
        out: &Sender<StreamItem>,
    ) -> Result<(), Stop> {
        let conn = self.lease().await?;
        let outcome = self
            .search_on(&conn, base, scope, filter, attrs, show_deleted, out)
            .await;
        if outcome.is_ok() {
            self.give_back(conn).await;
        } else {
            close(conn).await;
        }
        outcome
    }

    /// The page loop: every entry goes to `out` with its ranged attributes completed.
    #[allow(clippy::too_many_arguments)]
    async fn search_on(
        &self,
        conn: &Ldap,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[String],
        show_deleted: bool,
        out: &Sender<StreamItem>,
    ) -> Result<(), Stop> {
        let page_size = self.link.cfg.page_size;
        let attrs = range::initial_attrs(attrs, self.link.cfg.range_step);
        let what = || format!("search of {base:?} with filter {filter}");
        let mut cookie: Vec<u8> = Vec::new();
        let mut pages = 0u64;
        loop {
            let mut ldap = conn.clone();
            ldap.with_timeout(self.timeout());
            let mut controls = Vec::with_capacity(2);
            if page_size > 0 {
                let size = i32::try_from(page_size).unwrap_or(i32::MAX);
                controls.push(
                    ldap3::controls::PagedResults {
                        size,
                        cookie: std::mem::take(&mut cookie),
                    }
                    .into(),
                );
            }
            if show_deleted {
                controls.push(dirsync::show_deleted_control());
            }
            if !controls.is_empty() {
                ldap.with_controls(controls);
            }
            let mut stream = self
                .start(&mut ldap, base, scope, filter, attrs.clone(), what)
                .await?;
            let mut batch = Vec::with_capacity(BATCH);
            loop {
                let raw = match self.next_raw(&mut stream, what).await {
                    Ok(Some(raw)) => raw,
                    Ok(None) => break,
                    Err(e) => return Err(Stop::Failed(e)),
                };
                let entry = match self.complete_ranges(raw).await {
                    Ok(entry) => entry,
                    Err(e) => {
                        abandon(&mut stream).await;
                        return Err(Stop::Failed(e));
                    }
                };
                batch.push(entry);
                if batch.len() == BATCH
                    && out
                        .send(StreamItem::Entries(std::mem::take(&mut batch)))
                        .await
                        .is_err()
                {
                    abandon(&mut stream).await;
                    return Err(Stop::Consumer);
                }
            }
            pages += 1;
            let res = stream.finish().await;
            if res.rc != 0 {
                return Err(Stop::Failed(LdapError::Search {
                    base: base.to_owned(),
                    filter: filter.to_owned(),
                    code: ResultCode(res.rc),
                    message: res.text,
                }));
            }
            if !batch.is_empty() && out.send(StreamItem::Entries(batch)).await.is_err() {
                return Err(Stop::Consumer);
            }
            match wire::paged_cookie(&res.ctrls)? {
                Some(next) if !next.is_empty() && page_size > 0 => cookie = next,
                _ => {
                    log::debug!("{} done in {pages} page(s)", what());
                    return Ok(());
                }
            }
        }
    }

    /// A base-scope read with ranged attributes completed; `None` for noSuchObject.
    async fn read(&self, dn: &str, attrs: &[String]) -> Result<Option<Entry>, LdapError> {
        let attrs = range::initial_attrs(attrs, self.link.cfg.range_step);
        match self.read_raw(dn, attrs).await? {
            Some(raw) => self.complete_ranges(raw).await.map(Some),
            None => Ok(None),
        }
    }

    /// A base-scope read as the server answered it (no range completion).
    async fn read_raw(&self, dn: &str, attrs: Vec<String>) -> Result<Option<RawEntry>, LdapError> {
        let what = || format!("read of {dn:?}");
        let mut ldap = self.main().await?;
        ldap.with_timeout(self.timeout());
        let mut stream = self
            .start(&mut ldap, dn, Scope::Base, ANY_OBJECT, attrs, what)
            .await?;
        let mut found = None;
        while let Some(raw) = self.next_raw(&mut stream, what).await? {
            found.get_or_insert(raw);
        }
        let res = stream.finish().await;
        match ResultCode(res.rc) {
            ResultCode::SUCCESS => Ok(found),
            ResultCode::NO_SUCH_OBJECT => Ok(None),
            code => Err(LdapError::Search {
                base: dn.to_owned(),
                filter: ANY_OBJECT.to_owned(),
                code,
                message: res.text,
            }),
        }
    }

    /// Sends a search request.
    async fn start(
        &self,
        ldap: &mut Ldap,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: Vec<String>,
        what: impl Fn() -> String,
    ) -> Result<Stream, LdapError> {
        let scope = match scope {
            Scope::Base => ldap3::Scope::Base,
            Scope::One => ldap3::Scope::OneLevel,
            Scope::Subtree => ldap3::Scope::Subtree,
        };
        ldap.streaming_search(base, scope, filter, attrs)
            .await
            .map_err(|e| match e {
                ldap3::LdapError::FilterParsing => LdapError::InvalidFilter {
                    filter: filter.to_owned(),
                },
                e => self.op_error(e, what),
            })
    }

    /// The next entry of the current page, skipping continuation references (never chased)
    /// and intermediate messages; `None` at the page's end. On error the search is abandoned.
    async fn next_raw(
        &self,
        stream: &mut Stream,
        what: impl Fn() -> String,
    ) -> Result<Option<RawEntry>, LdapError> {
        loop {
            let item = match stream.next().await {
                Ok(Some(item)) => item,
                Ok(None) => return Ok(None),
                Err(e) => {
                    abandon(stream).await;
                    return Err(self.op_error(e, what));
                }
            };
            if item.is_ref() || item.is_intermediate() {
                continue;
            }
            return match RawEntry::from_tag(item.0) {
                Ok(raw) => Ok(Some(raw)),
                Err(e) => {
                    abandon(stream).await;
                    Err(e)
                }
            };
        }
    }

    /// Folds AD range chunks and fetches the rest of every ranged attribute.
    async fn complete_ranges(&self, mut raw: RawEntry) -> Result<Entry, LdapError> {
        let range_error = |dn: &str, attribute: &str, detail: String| LdapError::Range {
            dn: dn.to_owned(),
            attribute: attribute.to_owned(),
            detail,
        };
        let pending = range::fold_first_chunks(&mut raw)
            .map_err(|(attr, detail)| range_error(&raw.dn, &attr, detail))?;
        for p in pending {
            let mut next = p.next;
            loop {
                let request = range::range_request(&p.attr, next, self.link.cfg.range_step);
                let Some(more) = self.read_raw(&raw.dn, vec![request]).await? else {
                    let detail = "the entry disappeared during the read".to_owned();
                    return Err(range_error(&raw.dn, &p.attr, detail));
                };
                match range::fold_next_chunk(&mut raw, &p.attr, next, more) {
                    Ok(Some(n)) => next = n,
                    Ok(None) => break,
                    Err(detail) => return Err(range_error(&raw.dn, &p.attr, detail)),
                }
            }
        }
        Ok(raw.into_entry())
    }

    /// Maps an ldap3 error of an operation on the open connection.
    fn op_error(&self, e: ldap3::LdapError, what: impl Fn() -> String) -> LdapError {
        op_error(&self.link.cfg, e, what)
    }
}

/// Tells the server to stop a search and forgets it locally (best effort).
pub(super) async fn abandon(stream: &mut Stream) {
    let id = stream.ldap_handle().last_id();
    let mut ldap = stream.ldap_handle().clone();
    let _ = tokio::time::timeout(UNBIND_GRACE, ldap.abandon(id)).await;
    let _ = stream.finish().await;
}
