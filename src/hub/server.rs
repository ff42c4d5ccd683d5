//! The hub's sockets: the listener, TLS, async-h1 connections, and the handlers that turn
//! HTTP requests into [`HubState`] calls.
//!
//! Limits (a slow or hostile client cannot hold a task or memory for long):
//! * at most `max_connections` open connections and `max_connections_per_address` from
//!   one address; at a cap the oldest connection without a valid token yet is closed to
//!   make room, and only when there is none the new one is (see `conn::Registry`);
//! * a connection that has not carried a request with a valid token within
//!   [`PENDING_DEADLINE`] is closed;
//! * TLS handshake [`TLS_HANDSHAKE`]; request head 8 KiB / 128 headers / 60 s (async-h1);
//! * request bodies [`BODY_LIMIT`] (operator and SCIM), [`SMALL_LIMIT`] (poll, heartbeat),
//!   each read within [`BODY_TIMEOUT`]; a body that is refused or not read closes the
//!   connection. Bodies are read only after the token was checked;
//! * an agent's `responses` are read as a stream, one answer at a time: at most
//!   [`REPLY_LIMIT`] per answer (a larger one is answered 502 to whoever waits for it, the
//!   rest of the batch goes on) and [`RESPONSES_LIMIT`] in all;
//! * the bytes of bodies being read, across all connections, stay within [`BODY_BUDGET`];
//!   a request that would pass it waits up to [`BUDGET_WAIT`], then gets 503 + Retry-After;
//! * a response write that stalls for [`WRITE_STALL`] fails;
//! * a poll is held at most `poll_wait_secs`, and ends as soon as its client has gone; a
//!   batch is handed to a poll only after checking that its client is still there (else the
//!   requests go back to the queue at once); a SCIM forward waits at most
//!   `forward_timeout_secs`.
//!
//! Tokens are compared in constant time and never logged; failed authentication is logged
//! with the agent id and the endpoint only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http_types::{Request, Response, StatusCode};
use serde_json::{json, Value};
use smol::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use smol::Timer;

use super::config::{valid_name, AgentAuth, HubConfig, Role};
use super::conn::{peer_gone, peer_gone_now, Guarded, Refused, Registry, PENDING_DEADLINE};
use super::listing::{parse_query, Kind};
use super::replies::{Item, Scanner};
use super::route::{route, AgentCall, Route};
use super::state::{
    Answered, Command, EnqueueError, HubState, Limits, Reply, Timing, WallClock, Work,
};
use super::store::{Store, StoreError};
use super::HubError;
use crate::relay::protocol::scim_error_body;
use crate::secret::Secret;
use crate::signals::Control;

// Beside other replicas on one database: the claim, the lease, their changes.
#[path = "replica.rs"]
mod replica;

/// Protocol major versions served.
pub const PROTOCOLS: [u32; 1] = [1];
/// Largest operator or SCIM request body.
pub const BODY_LIMIT: usize = 1 << 20;
/// Largest poll or heartbeat body.
pub const SMALL_LIMIT: usize = 64 << 10;
/// Largest body of one answer in an agent's `responses`.
pub const REPLY_LIMIT: usize = 16 << 20;
/// Largest `responses` body from an agent (read as a stream, never held whole).
pub const RESPONSES_LIMIT: usize = 256 << 20;
/// What an agent's call comes to (a return value only, so its size does not matter).
#[allow(clippy::large_enum_variant)]
enum AgentAnswer {
    /// Answered.
    Now(Response),
    /// A valid poll, its body read: hold it up to this long.
    Hold(Duration),
}

/// Bytes of request bodies being read at once, across all connections.
pub const BODY_BUDGET: usize = 64 << 20;
/// Longest a request waits for room in [`BODY_BUDGET`].
pub const BUDGET_WAIT: Duration = Duration::from_secs(5);
/// Bytes read from a streamed body at a time.
const READ_CHUNK: usize = 64 << 10;
/// Longest a request body may take to arrive.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a response write may make no progress.
pub const WRITE_STALL: Duration = Duration::from_secs(30);
/// Longest a TLS handshake may take.
pub const TLS_HANDSHAKE: Duration = Duration::from_secs(10);
/// Longest a stop waits for requests in flight.
const STOP_GRACE: Duration = Duration::from_secs(3);

const SCIM_CONTENT_TYPE: &str = "application/scim+json";

/// The running hub: config, memory, store and counters.
pub struct Hub {
    cfg: HubConfig,
    state: Mutex<HubState>,
    store: Arc<dyn Store>,
    /// Held while the journal is written, so writes keep the state's order.
    writer: smol::lock::Mutex<()>,
    in_flight: AtomicUsize,
    connections: Registry,
    budget: Budget,
}

/// One accepted connection, as its handlers see it.
struct Conn {
    id: u64,
    /// The socket (a clone), to look at whether the client has gone.
    tcp: smol::net::TcpStream,
    tls: bool,
    /// A request with a valid token arrived.
    authenticated: AtomicBool,
}

/// Bytes of request bodies being read, bounded by [`BODY_BUDGET`].
struct Budget {
    used: Mutex<usize>,
    cap: usize,
}

/// A share of the [`Budget`], given back on drop.
struct Grant<'a> {
    budget: &'a Budget,
    bytes: usize,
}

impl Budget {
    /// Takes `bytes`, waiting up to [`BUDGET_WAIT`] for room; `None` when there was none.
    /// With nothing else in flight any size fits (one request is never refused alone).
    async fn take(&self, bytes: usize) -> Option<Grant<'_>> {
        let until = Instant::now() + BUDGET_WAIT;
        loop {
            {
                let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
                if *used == 0 || *used + bytes <= self.cap {
                    *used += bytes;
                    return Some(Grant {
                        budget: self,
                        bytes,
                    });
                }
            }
            if Instant::now() >= until {
                return None;
            }
            Timer::after(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Grant<'_> {
    fn drop(&mut self) {
        let mut used = self.budget.used.lock().unwrap_or_else(|p| p.into_inner());
        *used -= self.bytes;
    }
}

/// 503 + Retry-After: the body budget is spent.
fn busy(scim: bool) -> Response {
    let msg = "the hub is reading as many request bodies as it may; try again shortly";
    let mut r = if scim {
        scim_error(503, None, msg)
    } else {
        error(503, msg)
    };
    r.insert_header("Retry-After", "2");
    r
}

/// Counts something while alive.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(c: &'a AtomicUsize) -> Counted<'a> {
        c.fetch_add(1, Ordering::SeqCst);
        Counted(c)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Marks a poll ended when the handler returns (or is dropped).
struct PollOpen<'a> {
    hub: &'a Hub,
    agent: &'a str,
}

impl Drop for PollOpen<'_> {
    fn drop(&mut self) {
        self.hub.state().poll_ended(self.agent, Instant::now());
    }
}

/// Withdraws a SCIM forward when its handler ends, however it ends (nothing when it was
/// answered or withdrawn already).
struct Withdraw<'a> {
    hub: &'a Hub,
    agent: &'a str,
    id: &'a str,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        self.hub.state().withdraw(self.agent, self.id);
    }
}

/// Why a request body was not read.
enum BodyError {
    TooLarge,
    Slow,
    Busy,
    Broken(String),
}

impl BodyError {
    fn status(&self) -> u16 {
        match self {
            BodyError::TooLarge => 413,
            BodyError::Slow => 408,
            BodyError::Busy => 503,
            BodyError::Broken(_) => 400,
        }
    }
    fn message(&self, limit: usize) -> String {
        match self {
            BodyError::TooLarge => format!("request body larger than {limit} bytes"),
            BodyError::Slow => format!(
                "request body not received within {} s",
                BODY_TIMEOUT.as_secs()
            ),
            BodyError::Busy => {
                "the hub is reading as many request bodies as it may; try again shortly".into()
            }
            BodyError::Broken(e) => format!("request body unreadable: {e}"),
        }
    }

    /// The error answer (with Retry-After for 503).
    fn response(&self, limit: usize, scim: bool) -> Response {
        if let BodyError::Busy = self {
            return busy(scim);
        }
        if scim {
            scim_error(self.status(), None, &self.message(limit))
        } else {
            error(self.status(), &self.message(limit))
        }
    }
}

/// Connections the kernel queues for accepting (capped by `net.core.somaxconn`).
pub const LISTEN_BACKLOG: i32 = 4096;

/// Raises the listening socket's accept queue from the standard library's 128 to
/// [`LISTEN_BACKLOG`] (Linux takes a second `listen` as a new backlog): when a replica dies
/// its thousands of agents come back here within a second, and each connection a full queue
/// drops costs its client a SYN retransmission (1 s, then 3 s, 7 s ...). rustix's `net`
/// feature comes with async-io (smol's); naming it in Cargo.toml made the static agent
/// binary 467 KB larger (measured with scripts/build-static.sh, cause not found), so it is
/// not named there.
fn widen_backlog(listener: &smol::net::TcpListener) {
    #[cfg(unix)]
    if let Err(e) = rustix::net::listen(listener, LISTEN_BACKLOG) {
        log::warn!("cannot widen the accept queue to {LISTEN_BACKLOG}: {e}; it stays at 128");
    }
    #[cfg(not(unix))]
    let _ = listener;
}

impl Hub {
    /// A hub for `cfg` with the state kept in `store` (read here, blocking).
    pub fn new(cfg: HubConfig, store: Arc<dyn Store>) -> Result<Hub, StoreError> {
        let timing = Timing {
            redeliver: cfg.redeliver,
            poll_wait: cfg.poll_wait,
            lease_ttl: cfg.lease_ttl(),
        };
        let limits = Limits {
            queue_len: cfg.queue_limit,
            ..Limits::default()
        };
        let boot = format!("{:08x}", fastrand::u32(..));
        let mut state = HubState::new(
            cfg.agents.iter().map(|a| (a.id.clone(), a.group.clone())),
            timing,
            limits,
            &boot,
        );
        state.set_clock(WallClock::now());
        let restored = state.restore(store.load()?);
        let mut boot = boot;
        while state.boot_in_use(&boot) {
            boot = format!("{:08x}", fastrand::u32(..));
        }
        state.set_boot(&boot);
        if store.shared().is_some() {
            state.share_forwards(cfg.forward_timeout);
        }
        log::info!(
            "state kept in {}: {} command(s) waiting for their agent, {} answer(s) kept{}",
            store.describe(),
            restored.requests,
            restored.results,
            if restored.dropped > 0 {
                format!(
                    "; {} row(s) of agents or groups no longer configured left out",
                    restored.dropped
                )
            } else {
                String::new()
            }
        );
        let connections = Registry::new(cfg.max_connections, cfg.max_per_address);
        Ok(Hub {
            cfg,
            state: Mutex::new(state),
            store,
            writer: smol::lock::Mutex::new(()),
            in_flight: AtomicUsize::new(0),
            connections,
            budget: Budget {
                used: Mutex::new(0),
                cap: BODY_BUDGET,
            },
        })
    }

    /// Writes the state's journal to the store (on a blocking thread), in order: when it
    /// returns, every change recorded before the call is stored. Changes of concurrent
    /// requests go in the same transaction.
    async fn persist(&self) -> Result<(), StoreError> {
        let _turn = self.writer.lock().await;
        let changes = self.state().take_journal();
        if changes.is_empty() {
            return Ok(());
        }
        let store = self.store.clone();
        let (result, changes) = smol::unblock(move || {
            let r = store.apply(&changes);
            (r, changes)
        })
        .await;
        if result.is_err() {
            // Kept for the next try, ahead of what came since.
            let mut s = self.state();
            let newer = s.take_journal();
            s.requeue_journal(changes, newer);
        }
        result
    }

    /// [`Hub::persist`], a failure logged (the change stays in memory and is written with
    /// the next one).
    async fn persist_logged(&self) {
        if let Err(e) = self.persist().await {
            log::error!("{e}");
        }
    }

    /// The client the request's bearer token was issued to, by `[introspection]`
    /// (`Ok(None)`: no token, or not active).
    async fn introspected(
        &self,
        req: &Request,
    ) -> Result<Option<String>, super::introspect::IntrospectError> {
        match (bearer(req), &self.cfg.introspection) {
            (Some(token), Some(i)) if !token.is_empty() => i.client_of(token).await,
            _ => Ok(None),
        }
    }

    fn state(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Listens and serves until `control` asks for a stop.
    pub fn serve(self, control: &Control) -> Result<(), HubError> {
        let hub = Arc::new(self);
        smol::block_on(async {
            hub.follow_replicas();
            let addr = hub.cfg.listen;
            let listener = smol::net::TcpListener::bind(addr)
                .await
                .map_err(|source| HubError::Bind { addr, source })?;
            widen_backlog(&listener);
            let local = listener.local_addr().unwrap_or(addr);
            let tls = hub.cfg.tls.clone().map(futures_rustls::TlsAcceptor::from);
            log::info!(
                "idrelay-hub listening on {}://{local} for {} agent(s); leases last {} s",
                if tls.is_some() { "https" } else { "http" },
                hub.cfg.agents.len(),
                hub.cfg.lease_ttl().as_secs()
            );
            for w in hub.cfg.warnings() {
                log::warn!("{w}");
            }
            log::info!(
                "at most {} connections, {} from one address; {} s to authenticate",
                hub.cfg.max_connections,
                hub.cfg.max_per_address,
                PENDING_DEADLINE.as_secs()
            );
            let mut refused_logged: Option<Instant> = None;
            loop {
                let next = smol::future::or(async { Some(listener.accept().await) }, async {
                    control.wait().await;
                    None
                })
                .await;
                let (tcp, peer) = match next {
                    None => break,
                    Some(Ok(x)) => x,
                    Some(Err(e)) => {
                        // EMFILE and friends: do not spin.
                        log::warn!("accept failed: {e}");
                        Timer::after(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (id, close) = match hub.connections.admit(peer.ip()) {
                    Ok((admitted, close)) => (admitted.id, close),
                    Err(why) => {
                        // At most one line a second: a flood must not flood the log.
                        if refused_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                            refused_logged = Some(Instant::now());
                            let (open, _) = hub.connections.counts();
                            match why {
                                Refused::PerAddress => log::warn!(
                                    "{peer}: {} connections from this address, all authenticated; \
                                     closing the new one (max_connections_per_address)",
                                    hub.cfg.max_per_address
                                ),
                                Refused::Total => log::warn!(
                                    "{open} connections open, all authenticated; closing the one \
                                     from {peer} (max_connections)"
                                ),
                            }
                        }
                        continue;
                    }
                };
                let hub = hub.clone();
                let tls = tls.clone();
                smol::spawn(async move {
                    let ended = hub.connection(tcp, peer, tls, id, close).await;
                    hub.connections.closed(id);
                    if let Some(why) = ended {
                        log::debug!("connection from {peer} closed: {why}");
                    }
                })
                .detach();
            }
            log::info!("idrelay-hub stopping");
            for w in hub.state().stop() {
                let _ = w.try_send(());
            }
            let until = Instant::now() + STOP_GRACE;
            while hub.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < until {
                Timer::after(Duration::from_millis(20)).await;
            }
            hub.persist_logged().await;
            Ok(())
        })
    }

    /// Serves one connection until it ends, the registry closes it, or it stays pending
    /// past [`PENDING_DEADLINE`]; says why when it was closed.
    async fn connection(
        self: &Arc<Self>,
        tcp: smol::net::TcpStream,
        peer: SocketAddr,
        tls: Option<futures_rustls::TlsAcceptor>,
        id: u64,
        close: smol::channel::Receiver<()>,
    ) -> Option<&'static str> {
        let _ = tcp.set_nodelay(true);
        let conn = Arc::new(Conn {
            id,
            tcp: tcp.clone(),
            tls: tls.is_some(),
            authenticated: AtomicBool::new(false),
        });
        let pending_deadline = async {
            Timer::after(PENDING_DEADLINE).await;
            if conn.authenticated.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            Some("no request with a valid token in time")
        };
        let evicted = async {
            let _ = close.recv().await;
            Some("closed to make room for a new connection")
        };
        let serve = async {
            self.serve_connection(tcp, peer, tls, conn.clone()).await;
            None
        };
        smol::future::or(serve, smol::future::or(evicted, pending_deadline)).await
    }

    async fn serve_connection(
        self: &Arc<Self>,
        tcp: smol::net::TcpStream,
        peer: SocketAddr,
        tls: Option<futures_rustls::TlsAcceptor>,
        conn: Arc<Conn>,
    ) {
        match tls {
            None => self.http(tcp, peer, conn).await,
            Some(acceptor) => {
                let handshake = smol::future::or(
                    async { Some(Box::pin(acceptor.accept(tcp)).await) },
                    async {
                        Timer::after(TLS_HANDSHAKE).await;
                        None
                    },
                )
                .await;
                match handshake {
                    Some(Ok(stream)) => {
                        let io = async_dup::Arc::new(async_dup::Mutex::new(stream));
                        self.http(io, peer, conn).await
                    }
                    Some(Err(e)) => log::warn!("TLS handshake with {peer} failed: {e}"),
                    None => log::warn!("TLS handshake with {peer} timed out"),
                }
            }
        }
    }

    async fn http<S>(self: &Arc<Self>, io: S, peer: SocketAddr, conn: Arc<Conn>)
    where
        S: AsyncRead + AsyncWrite + Clone + Send + Sync + Unpin + 'static,
    {
        let io = Guarded::new(io, WRITE_STALL);
        let poison = io.poison();
        let hub = self.clone();
        let served = super::http1::serve(io, move |req| {
            let hub = hub.clone();
            let poison = poison.clone();
            let conn = conn.clone();
            async move { hub.handle(req, &poison, &conn).await }
        })
        .await;
        if let Err(e) = served {
            log::debug!("connection from {peer} ended: {e}");
        }
    }

    /// Answers one request; never fails (every problem is a status).
    async fn handle(&self, mut req: Request, poison: &AtomicBool, conn: &Conn) -> Response {
        let _busy = Counted::new(&self.in_flight);
        let started = Instant::now();
        let method = req.method().to_string();
        let path = req.url().path().to_string();
        // Whether the body was read to its end; if not, the connection cannot be reused.
        let mut consumed = req.len() == Some(0);
        // Rare or large calls are boxed: a connection's task is allocated at its largest
        // state, and most connections only ever hold an agent's poll (see `http1`).
        let mut res = match route(&method, &path) {
            Route::Agent(agent, call) => {
                match self
                    .agent_call(&mut req, &agent, call, &mut consumed, conn)
                    .await
                {
                    AgentAnswer::Now(r) => r,
                    AgentAnswer::Hold(wait) => {
                        // Its headers, URL and channels are not needed for the wait.
                        drop(req);
                        self.poll(&agent, wait, conn).await
                    }
                }
            }
            // The page holds no data; the token goes with its API calls (dashboard.rs).
            Route::Dashboard => super::dashboard::response(),
            Route::ListAgents => match self.refuse_operator(&req, conn, Role::Read) {
                Some(refused) => refused,
                None => self.listing(&req, Kind::Agents),
            },
            Route::ListGroups => match self.refuse_operator(&req, conn, Role::Read) {
                Some(refused) => refused,
                None => self.listing(&req, Kind::Groups),
            },
            Route::Command(agent) => match self.refuse_operator(&req, conn, Role::Admin) {
                Some(refused) => refused,
                None => Box::pin(self.command(&mut req, &agent, &mut consumed)).await,
            },
            Route::Request(id) => match self.refuse_operator(&req, conn, Role::Read) {
                Some(refused) => refused,
                None => match self.state().request_view(&id, Instant::now()) {
                    Some((status, v)) => json_response(status, &v),
                    None => error(
                        404,
                        &format!("no request `{id}` (unknown, or answered long ago)"),
                    ),
                },
            },
            Route::Scim(agent, scim_path) => match self.operator_role(&req, conn) {
                Some(Role::Admin) => {
                    Box::pin(self.scim(&mut req, &method, &agent, scim_path, &mut consumed)).await
                }
                Some(Role::Read) => {
                    log::warn!(
                        "operator request {method} {path} refused: the token has role `read`"
                    );
                    scim_error(403, None, &needs_admin())
                }
                None => scim_unauthorized(),
            },
            Route::ScimNotFound => {
                if self.operator_ok(&req, conn) && req.url().path().ends_with("/.search") {
                    // RFC 7644 §3.4.3 search by POST: not offered (GET with a filter is).
                    scim_error(
                        501,
                        None,
                        "POST .search is not implemented; use GET with a filter",
                    )
                } else if self.operator_ok(&req, conn) {
                    scim_error(
                        404,
                        None,
                        "not a forwarded SCIM endpoint: use /Users, /Groups, \
                         /ServiceProviderConfig, /ResourceTypes or /Schemas",
                    )
                } else {
                    scim_unauthorized()
                }
            }
            Route::MethodNotAllowed(allow) => {
                let mut r = error(
                    405,
                    &format!("method {method} not allowed here; use {allow}"),
                );
                r.insert_header("Allow", allow);
                r
            }
            Route::NotFound => error(404, "no such endpoint"),
        };
        if !consumed {
            poison.store(true, Ordering::SeqCst);
            res.insert_header("Connection", "close");
        }
        log::debug!(
            "{method} {path} -> {} in {} ms",
            u16::from(res.status()),
            started.elapsed().as_millis()
        );
        res
    }

    /// `GET /v1/agents` (every agent when the query is empty, a page otherwise) and
    /// `GET /v1/groups` (docs/hub.md); a bad query is `400` naming the parameter.
    fn listing(&self, req: &Request, kind: Kind) -> Response {
        let query = req.url().query().unwrap_or("");
        let now = Instant::now();
        if kind == Kind::Agents && query.is_empty() {
            return json_text(200, self.state().agents_view(now));
        }
        match parse_query(kind, query) {
            Err(e) => error(400, &e.to_string()),
            Ok(q) if kind == Kind::Agents => json_text(200, self.state().agents_page(&q, now)),
            Ok(q) => json_text(200, self.state().groups_page(&q, now)),
        }
    }

    fn operator_ok(&self, req: &Request, conn: &Conn) -> bool {
        self.operator_role(req, conn).is_some()
    }

    /// The role of the operator token the request carries (every token is compared, in
    /// constant time); `None` without a valid one.
    fn operator_role(&self, req: &Request, conn: &Conn) -> Option<Role> {
        let mut role = None;
        for o in &self.cfg.operators {
            if bearer_matches(req, &o.token) && role.is_none() {
                role = Some(o.role);
            }
        }
        if role.is_some() {
            self.authenticated(conn);
        }
        role
    }

    /// The connection carried a valid token: no deadline, never closed to make room.
    fn authenticated(&self, conn: &Conn) {
        if !conn.authenticated.swap(true, Ordering::SeqCst) {
            self.connections.authenticated(conn.id);
        }
    }

    /// `Some(401)` unless the request carries an operator token, `Some(403)` when its role
    /// is `read` and `need` is `admin`.
    fn refuse_operator(&self, req: &Request, conn: &Conn, need: Role) -> Option<Response> {
        match self.operator_role(req, conn) {
            Some(Role::Admin) => None,
            Some(Role::Read) if need == Role::Read => None,
            Some(Role::Read) => {
                log::warn!(
                    "operator request {} {} refused: the token has role `read`",
                    req.method(),
                    req.url().path()
                );
                Some(error(403, &needs_admin()))
            }
            None => {
                log::warn!(
                    "operator request {} {} without the operator token",
                    req.method(),
                    req.url().path()
                );
                Some(unauthorized("operator token missing or wrong"))
            }
        }
    }

    /// Checks an agent's call and answers it, except a poll: that is held by the caller,
    /// once it has dropped the request (see [`AgentAnswer::Hold`]).
    async fn agent_call(
        &self,
        req: &mut Request,
        agent: &str,
        call: AgentCall,
        consumed: &mut bool,
        conn: &Conn,
    ) -> AgentAnswer {
        let version = header(req, "Idrelay-Protocol");
        if !version.is_some_and(|v| PROTOCOLS.iter().any(|p| p.to_string() == v.trim())) {
            log::warn!(
                "agent {agent}: {} with protocol {}; this hub speaks {PROTOCOLS:?}",
                call.name(),
                version.map_or("(none)".into(), |v| format!(
                    "`{}`",
                    v.chars().take(16).collect::<String>()
                ))
            );
            return AgentAnswer::Now(json_response(426, &json!({"supported": PROTOCOLS})));
        }
        let Some(entry) = self.cfg.agents.iter().find(|a| a.id == agent) else {
            log::warn!("{}: unknown agent `{agent}`", call.name());
            return AgentAnswer::Now(unauthorized("unknown agent or wrong token"));
        };
        let valid = match &entry.auth {
            AgentAuth::Token(t) => bearer_matches(req, t),
            AgentAuth::OAuthClient(client) => {
                // Boxed: a large future most connections never need (see `http1`).
                match Box::pin(self.introspected(req)).await {
                    Ok(issued_to) => issued_to.as_deref() == Some(client.as_str()),
                    // The provider could not say: not the agent's fault, try again.
                    Err(e) => {
                        log::warn!("agent {agent}: {}: {e}", call.name());
                        let mut r = error(503, "the hub cannot check the token now");
                        r.insert_header("Retry-After", "5");
                        return AgentAnswer::Now(r);
                    }
                }
            }
        };
        if !valid {
            log::warn!(
                "agent {agent}: {} with a missing or wrong token",
                call.name()
            );
            return AgentAnswer::Now(unauthorized("unknown agent or wrong token"));
        }
        self.authenticated(conn);
        if header(req, "Idrelay-Agent").is_some_and(|h| h != agent) {
            return AgentAnswer::Now(error(
                400,
                "Idrelay-Agent does not match the agent in the path",
            ));
        }
        let instance = header(req, "Idrelay-Instance").map(str::to_string);
        if instance.as_deref().is_some_and(|i| !valid_name(i)) {
            return AgentAnswer::Now(error(
                400,
                "Idrelay-Instance must be 1-64 of [A-Za-z0-9._-]",
            ));
        }
        match call {
            AgentCall::Poll => {
                let body = match self.read_body(req, SMALL_LIMIT, consumed).await {
                    Ok(b) => b,
                    Err(e) => return AgentAnswer::Now(e.response(SMALL_LIMIT, false)),
                };
                let wait = if body.iter().all(u8::is_ascii_whitespace) {
                    self.cfg.poll_wait
                } else {
                    match serde_json::from_slice::<Value>(&body) {
                        Ok(v) if v.is_object() => v
                            .get("wait_secs")
                            .and_then(Value::as_u64)
                            .map_or(self.cfg.poll_wait, |s| {
                                Duration::from_secs(s).min(self.cfg.poll_wait)
                            }),
                        _ => {
                            return AgentAnswer::Now(error(400, "poll body must be a JSON object"))
                        }
                    }
                };
                AgentAnswer::Hold(wait)
            }
            AgentCall::Responses => {
                AgentAnswer::Now(Box::pin(self.responses(req, agent, consumed)).await)
            }
            AgentCall::Heartbeat => {
                let body = match self.read_body(req, SMALL_LIMIT, consumed).await {
                    Ok(b) => b,
                    Err(e) => return AgentAnswer::Now(e.response(SMALL_LIMIT, false)),
                };
                let Some(instance) = instance else {
                    return AgentAnswer::Now(error(
                        400,
                        "a heartbeat needs the Idrelay-Instance header",
                    ));
                };
                AgentAnswer::Now(self.heartbeat(agent, &instance, &body).await)
            }
        }
    }

    async fn poll(&self, agent: &str, wait: Duration, conn: &Conn) -> Response {
        let now = Instant::now();
        if !self.state().poll_started(agent, now) {
            log::info!("agent {agent} is polling");
        }
        let _open = PollOpen { hub: self, agent };
        let deadline = now + wait;
        loop {
            let (tx, rx) = smol::channel::bounded(1);
            let batch = {
                let mut s = self.state();
                if s.stopping() {
                    return empty(204);
                }
                let b = s.take_batch(agent, Instant::now());
                if b.envelopes.is_empty() {
                    s.add_waiter(agent, tx);
                }
                b
            };
            if !batch.envelopes.is_empty() {
                // Stored as delivered before it leaves: after a restart it is not handed
                // out again before `redeliver_secs`.
                self.persist_logged().await;
                // Beside other replicas: only what the database gives this poll.
                let batch = self.claim_batch(agent, batch).await;
                if batch.envelopes.is_empty() {
                    // Another poll holds them: look again shortly, not at once.
                    if Instant::now() >= deadline {
                        return empty(204);
                    }
                    Timer::after(Duration::from_millis(100)).await;
                    continue;
                }
                if peer_gone_now(&conn.tcp, conn.tls).await {
                    // Not delivered: back to the queue at once, for the agent's next poll.
                    let ids: Vec<String> = batch
                        .envelopes
                        .iter()
                        .filter_map(|e| e["id"].as_str().map(str::to_string))
                        .collect();
                    let n = {
                        let mut s = self.state();
                        s.poll_gone(agent);
                        s.requeue(agent, &ids)
                    };
                    self.persist_logged().await;
                    log::info!(
                        "agent {agent}: its poll's client has gone; {n} request(s) back in the queue"
                    );
                    return empty(204);
                }
                log::debug!(
                    "agent {agent}: {} request(s) delivered",
                    batch.envelopes.len()
                );
                return json_response(200, &json!({"requests": batch.envelopes}));
            }
            if Instant::now() >= deadline {
                return empty(204);
            }
            let wake = batch.next_due.map_or(deadline, |d| d.min(deadline));
            let gone = smol::future::or(
                async {
                    let _ = rx.recv().await;
                    false
                },
                smol::future::or(
                    async {
                        Timer::at(wake).await;
                        false
                    },
                    async {
                        peer_gone(&conn.tcp, conn.tls).await;
                        true
                    },
                ),
            )
            .await;
            if gone {
                self.state().poll_gone(agent);
                log::info!("agent {agent}: the client of its held poll has gone");
                return empty(204);
            }
        }
    }

    /// Reads an agent's answers as a stream (see [`Scanner`]) and hands each on as soon as
    /// it is complete.
    async fn responses(&self, req: &mut Request, agent: &str, consumed: &mut bool) -> Response {
        let r = self.read_responses(req, agent, consumed).await;
        // The answers taken are stored before the agent hears that they arrived.
        match self.persist().await {
            Ok(()) => r,
            Err(e) => {
                log::error!("{e}");
                let mut r = error(503, "the hub cannot store the answers now");
                r.insert_header("Retry-After", "5");
                r
            }
        }
    }

    async fn read_responses(
        &self,
        req: &mut Request,
        agent: &str,
        consumed: &mut bool,
    ) -> Response {
        if req.len().is_some_and(|n| n > RESPONSES_LIMIT) {
            return error(413, &BodyError::TooLarge.message(RESPONSES_LIMIT));
        }
        // At most one answer's body is held at a time, plus what one read brings.
        let need = req.len().unwrap_or(usize::MAX).min(REPLY_LIMIT) + READ_CHUNK;
        let Some(_grant) = self.budget.take(need).await else {
            return busy(false);
        };
        let mut body = req.take_body();
        let mut scanner = Scanner::new(REPLY_LIMIT);
        let mut chunk = vec![0u8; READ_CHUNK];
        let mut items = Vec::new();
        let mut total = 0usize;
        let until = Instant::now() + BODY_TIMEOUT;
        loop {
            let read = smol::future::or(async { Some(body.read(&mut chunk).await) }, async {
                Timer::at(until).await;
                None
            })
            .await;
            let n = match read {
                None => return error(408, &BodyError::Slow.message(RESPONSES_LIMIT)),
                Some(Err(e)) => {
                    return error(400, &BodyError::Broken(e.to_string()).message(0));
                }
                Some(Ok(0)) => break,
                Some(Ok(n)) => n,
            };
            total += n;
            if total > RESPONSES_LIMIT {
                return error(413, &BodyError::TooLarge.message(RESPONSES_LIMIT));
            }
            if let Err(e) = scanner.feed(&chunk[..n], &mut items) {
                return error(400, &format!("responses body: {e}"));
            }
            for item in items.drain(..) {
                self.take_answer(agent, item);
            }
        }
        *consumed = true;
        match scanner.finish() {
            Ok(()) => empty(204),
            Err(e) => error(400, &format!("responses body: {e}")),
        }
    }

    fn take_answer(&self, agent: &str, item: Item) {
        let (id, reply) = match item {
            Item::Answer { id, status, body } => (id, Reply { status, body }),
            Item::TooLarge { id, size } => {
                log::warn!(
                    "agent {agent}: the answer to {} is {size} bytes, over the {} a single \
                     answer may have; answered 502 instead",
                    printable(&id),
                    REPLY_LIMIT
                );
                let detail = format!(
                    "agent `{agent}` answered with {size} bytes, more than the hub passes on \
                     ({REPLY_LIMIT}); ask for less (a smaller `count`)"
                );
                (id, Reply::json(502, &scim_error_body(502, None, &detail)))
            }
            Item::Bad { id: None, why } => {
                log::warn!("agent {agent}: an answer ignored: {why}");
                return;
            }
            Item::Bad { id: Some(id), why } => {
                log::warn!("agent {agent}: the answer to {}: {why}", printable(&id));
                let detail = format!("agent `{agent}` sent an unusable answer: {why}");
                (id, Reply::json(502, &scim_error_body(502, None, &detail)))
            }
        };
        let status = reply.status;
        match self.state().answer(agent, &id, reply) {
            Answered::Ignored => log::debug!(
                "agent {agent}: answer to unknown or answered request {} ignored",
                printable(&id)
            ),
            Answered::Forwarded | Answered::Stored | Answered::Relayed => {
                log::debug!(
                    "agent {agent}: request {} answered {status}",
                    printable(&id)
                )
            }
        }
    }

    async fn heartbeat(&self, agent: &str, instance: &str, body: &[u8]) -> Response {
        let v: Value = match serde_json::from_slice(body) {
            Ok(v @ Value::Object(_)) => v,
            _ => return error(400, "heartbeat body must be a JSON object"),
        };
        let Some(mut beat) = self.state().heartbeat(agent, instance, v, Instant::now()) else {
            return unauthorized("unknown agent or wrong token");
        };
        self.persist_logged().await;
        if let Err(e) = self.lease_decision(agent, instance, &mut beat).await {
            log::error!("{e}");
            let mut r = error(503, "the hub cannot decide the lease now");
            r.insert_header("Retry-After", "5");
            return r;
        }
        if let Some(reported) = &beat.group_mismatch {
            log::warn!(
                "agent {agent} reports group `{reported}`, but the hub config puts it in `{}`; the hub's group counts",
                beat.group
            );
        }
        if let Some(previous) = &beat.grant.moved_from {
            match previous {
                Some(p) if p != agent => log::info!(
                    "group {}: agent {agent} (instance {instance}) is now ACTIVE; {p} stopped heartbeating",
                    beat.group
                ),
                Some(_) => log::info!(
                    "group {}: agent {agent} is ACTIVE again with a new instance {instance}",
                    beat.group
                ),
                None => log::info!(
                    "group {}: agent {agent} (instance {instance}) is ACTIVE",
                    beat.group
                ),
            }
        }
        json_response(
            200,
            &json!({
                "lease": {
                    "role": if beat.grant.active { "active" } else { "standby" },
                    "holder": beat.grant.holder,
                    "ttl_secs": self.cfg.lease_ttl().as_secs(),
                },
                "heartbeat_secs": self.cfg.heartbeat.as_secs(),
            }),
        )
    }

    async fn command(&self, req: &mut Request, agent: &str, consumed: &mut bool) -> Response {
        if !self.state().knows(agent) {
            return error(404, &format!("no agent `{agent}` in the hub config"));
        }
        let body = match self.read_body(req, BODY_LIMIT, consumed).await {
            Ok(b) => b,
            Err(e) => return e.response(BODY_LIMIT, false),
        };
        let v: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return error(400, &format!("command body: {e}")),
        };
        let command = match Command::parse(&v) {
            Ok(c) => c,
            Err(e) => return error(400, &e),
        };
        let name = command.name();
        let queued = self
            .state()
            .enqueue(agent, &Work::Command(command), None, Instant::now());
        match queued {
            Ok(id) => {
                // Stored before the operator holds its id: a restart does not lose it.
                if let Err(e) = self.persist().await {
                    log::error!("{e}");
                    self.state().withdraw(agent, &id);
                    self.persist_logged().await;
                    let mut r = error(503, "the hub cannot store the command now");
                    r.insert_header("Retry-After", "5");
                    return r;
                }
                log::info!("operator: command {name} queued for agent {agent} as {id}");
                json_response(202, &json!({"id": id}))
            }
            Err(e) => enqueue_failed(agent, &e, false),
        }
    }

    async fn scim(
        &self,
        req: &mut Request,
        method: &str,
        agent: &str,
        path: String,
        consumed: &mut bool,
    ) -> Response {
        if !self.state().knows(agent) {
            return scim_error(404, None, &format!("no agent `{agent}` in the hub config"));
        }
        let body = match method {
            "GET" | "DELETE" => Value::Null,
            "POST" | "PUT" | "PATCH" => {
                let bytes = match self.read_body(req, BODY_LIMIT, consumed).await {
                    Ok(b) => b,
                    Err(e) => return e.response(BODY_LIMIT, true),
                };
                if bytes.iter().all(u8::is_ascii_whitespace) {
                    Value::Null
                } else {
                    match serde_json::from_slice(&bytes) {
                        Ok(v) => v,
                        Err(e) => {
                            return scim_error(
                                400,
                                Some("invalidSyntax"),
                                &format!("body is not JSON: {e}"),
                            )
                        }
                    }
                }
            }
            _ => {
                let mut r = scim_error(405, None, &format!("method {method} not supported"));
                r.insert_header("Allow", "GET, POST, PUT, PATCH, DELETE");
                return r;
            }
        };
        let query = req.url().query().unwrap_or("").to_string();
        let work = Work::Scim {
            method: method.to_string(),
            path,
            query,
            body,
        };
        let (tx, rx) = smol::channel::bounded(1);
        // Beside other replicas, an agent that polls another one is reachable too.
        let here = self.state().connected(agent, Instant::now());
        let elsewhere = match (here, self.reachable_elsewhere(agent).await) {
            (true, _) | (false, None) => false,
            (false, Some(Ok(seen))) => seen,
            (false, Some(Err(e))) => return database_unreachable(agent, &e),
        };
        let queued = {
            let now = Instant::now();
            let mut s = self.state();
            if here || elsewhere || s.connected(agent, now) {
                s.enqueue(agent, &work, Some(tx), now)
            } else {
                let when = match s.last_poll_age(agent, now) {
                    Some(age) => format!("last poll {age} s ago"),
                    None => "it has not polled since the hub started".into(),
                };
                drop(s);
                let mut r = scim_error(
                    503,
                    None,
                    &format!("agent `{agent}` is not connected ({when})"),
                );
                r.insert_header("Retry-After", self.cfg.poll_wait.as_secs().to_string());
                return r;
            }
        };
        let id = match queued {
            Ok(id) => id,
            Err(e) => return enqueue_failed(agent, &e, true),
        };
        // A caller that goes away (this future dropped) withdraws its forward too.
        let _withdraw = Withdraw {
            hub: self,
            agent,
            id: &id,
        };
        // Beside other replicas: in the database before any poll may take it.
        if self.store.shared().is_some() {
            if let Err(e) = self.persist().await {
                self.state().withdraw(agent, &id);
                return database_unreachable(agent, &e);
            }
        }
        let answer = smol::future::or(async { rx.recv().await.ok() }, async {
            Timer::after(self.cfg.forward_timeout).await;
            None
        })
        .await;
        let Some(reply) = answer else {
            let withdrawn = self.state().withdraw(agent, &id);
            // Out of the database too: no replica hands it out any more.
            self.persist_logged().await;
            log::warn!(
                "agent {agent} did not answer {id} within {} s{}",
                self.cfg.forward_timeout.as_secs(),
                if withdrawn { "; withdrawn" } else { "" }
            );
            return scim_error(
                504,
                None,
                &format!(
                    "agent `{agent}` did not answer within {} s",
                    self.cfg.forward_timeout.as_secs()
                ),
            );
        };
        let Some(status) = StatusCode::try_from(reply.status)
            .ok()
            .filter(|_| reply.status >= 200)
        else {
            return scim_error(
                502,
                None,
                &format!("agent `{agent}` answered with status {}", reply.status),
            );
        };
        let mut r = Response::new(status);
        if let Some(body) = reply.body {
            r.set_body(body);
            r.insert_header("Content-Type", SCIM_CONTENT_TYPE);
        }
        r
    }

    /// Reads the whole body (at most `limit` bytes, within [`BODY_TIMEOUT`], inside the
    /// [`Budget`]).
    async fn read_body(
        &self,
        req: &mut Request,
        limit: usize,
        consumed: &mut bool,
    ) -> Result<Vec<u8>, BodyError> {
        if req.len().is_some_and(|n| n > limit) {
            return Err(BodyError::TooLarge);
        }
        let need = req.len().unwrap_or(limit).min(limit);
        let Some(_grant) = self.budget.take(need).await else {
            return Err(BodyError::Busy);
        };
        read_body(req, limit, need, consumed).await
    }
}

/// Up to 64 characters of `s` with control characters escaped, for a log line.
fn printable(s: &str) -> String {
    s.chars().take(64).flat_map(char::escape_default).collect()
}

/// Reads the whole body (at most `limit` bytes, within [`BODY_TIMEOUT`]).
async fn read_body(
    req: &mut Request,
    limit: usize,
    expected: usize,
    consumed: &mut bool,
) -> Result<Vec<u8>, BodyError> {
    let body = req.take_body();
    let mut buf = Vec::with_capacity(expected);
    let read = smol::future::or(
        async { Some(body.take(limit as u64 + 1).read_to_end(&mut buf).await) },
        async {
            Timer::after(BODY_TIMEOUT).await;
            None
        },
    )
    .await;
    match read {
        None => Err(BodyError::Slow),
        Some(Err(e)) => Err(BodyError::Broken(e.to_string())),
        Some(Ok(_)) if buf.len() > limit => Err(BodyError::TooLarge),
        Some(Ok(_)) => {
            *consumed = true;
            Ok(buf)
        }
    }
}

/// The single `name` header's value (`None` when absent or repeated).
fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    let values = req.header(name)?;
    (values.iter().count() == 1).then(|| values.as_str())
}

/// The token of `Authorization: Bearer <token>`, if the request carries one.
fn bearer(req: &Request) -> Option<&str> {
    let (scheme, given) = header(req, "Authorization")?.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| given.trim())
}

/// Whether the request carries `Authorization: Bearer <token>` (compared in constant time).
fn bearer_matches(req: &Request, token: &Secret) -> bool {
    bearer(req).is_some_and(|given| constant_time_eq(given.as_bytes(), token.expose().as_bytes()))
}

/// Compares without an early exit: the time depends on the lengths only.
pub fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = (given.len() ^ expected.len()) as u64;
    for (i, e) in expected.iter().enumerate() {
        let g = given.get(i).copied().unwrap_or(!e);
        diff |= u64::from(g ^ e);
    }
    diff == 0
}

fn status_of(code: u16) -> StatusCode {
    StatusCode::try_from(code).unwrap_or(StatusCode::InternalServerError)
}

fn empty(code: u16) -> Response {
    Response::new(status_of(code))
}

fn json_response(code: u16, v: &Value) -> Response {
    let mut r = Response::new(status_of(code));
    r.set_body(v.to_string());
    r.insert_header("Content-Type", "application/json");
    r
}

/// `code` with `body`, JSON text already.
fn json_text(code: u16, body: String) -> Response {
    let mut r = Response::new(status_of(code));
    r.set_body(body);
    r.insert_header("Content-Type", "application/json");
    r
}

fn error(code: u16, message: &str) -> Response {
    json_response(code, &json!({"error": message}))
}

fn unauthorized(message: &str) -> Response {
    let mut r = error(401, message);
    r.insert_header("WWW-Authenticate", "Bearer");
    r
}

fn scim_error(code: u16, scim_type: Option<&str>, detail: &str) -> Response {
    let body = scim_error_body(code, scim_type, detail);
    let mut r = Response::new(status_of(code));
    r.set_body(body.to_string());
    r.insert_header("Content-Type", SCIM_CONTENT_TYPE);
    r
}

/// Why a `read` operator token is refused.
fn needs_admin() -> String {
    "this operator token has role `read` (the agents' status and command answers only); \
     commands and the SCIM forwarder need a token with role `admin`"
        .to_string()
}

fn scim_unauthorized() -> Response {
    log::warn!("SCIM request without the operator token");
    let mut r = scim_error(401, None, "operator token missing or wrong");
    r.insert_header("WWW-Authenticate", "Bearer");
    r
}

/// 503 to a SCIM forward: the database (replicas) cannot be asked.
fn database_unreachable(agent: &str, e: &StoreError) -> Response {
    log::error!("{e}; a SCIM forward to agent {agent} refused");
    let mut r = scim_error(
        503,
        None,
        &format!(
            "the hub cannot reach its database to forward to agent `{agent}`; try again shortly"
        ),
    );
    r.insert_header("Retry-After", "5");
    r
}

fn enqueue_failed(agent: &str, e: &EnqueueError, scim: bool) -> Response {
    let (code, msg) = match e {
        EnqueueError::UnknownAgent => (404, format!("no agent `{agent}` in the hub config")),
        EnqueueError::QueueFull { len, bytes } => {
            log::warn!("agent {agent}: queue full ({len} requests, {bytes} bytes)");
            (
                503,
                format!("agent `{agent}` has {len} requests waiting; try again later"),
            )
        }
        EnqueueError::Stopping => (503, "the hub is stopping".to_string()),
    };
    let mut r = if scim {
        scim_error(code, None, &msg)
    } else {
        error(code, &msg)
    };
    if code == 503 {
        r.insert_header("Retry-After", "5");
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret-longer", b"secret"));
        assert!(!constant_time_eq(b"sec", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
    }

    #[test]
    fn bearer_headers() {
        let token = Secret::new("t0k");
        let mut req = Request::new(http_types::Method::Get, "http://h/v1/agents");
        assert!(!bearer_matches(&req, &token));
        req.insert_header("Authorization", "bearer t0k");
        assert!(bearer_matches(&req, &token));
        req.insert_header("Authorization", "Basic t0k");
        assert!(!bearer_matches(&req, &token));
        req.insert_header("Authorization", "Bearer t0k");
        req.append_header("Authorization", "Bearer t0k");
        assert!(
            !bearer_matches(&req, &token),
            "a repeated header is refused"
        );
    }

    #[test]
    fn scim_errors_follow_rfc_7644() {
        let r = scim_error(404, Some("invalidPath"), "nope");
        assert_eq!(u16::from(r.status()), 404);
        assert_eq!(
            r.header("Content-Type").unwrap().as_str(),
            SCIM_CONTENT_TYPE
        );
    }
}

#[cfg(test)]
mod future_sizes {
    use super::*;
    use crate::hub::store::MemoryStore;
    use std::path::Path;

    fn hub() -> Arc<Hub> {
        let text = "operator_token_file = \"/s/op\"\nstorage = \"memory\"\n\
                    [[agent]]\nid = \"a1\"\ntoken_file = \"/s/a1\"\n";
        let files = |p: &Path| Ok(format!("token-0123456789abcdef-{}", p.display()).into_bytes());
        let cfg = HubConfig::parse(Path::new("hub.toml"), text, &files).unwrap();
        Arc::new(Hub::new(cfg, Arc::new(MemoryStore::default())).unwrap())
    }

    /// What every open connection carries while an agent's poll is held: the task's future
    /// is allocated at its largest state, so a rare large handler would cost them all.
    #[test]
    fn a_connection_future_is_small() {
        let hub = hub();
        smol::block_on(async {
            let listener = smol::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let _client = smol::net::TcpStream::connect(addr).await.unwrap();
            let (tcp, peer) = listener.accept().await.unwrap();
            let conn = Conn {
                id: 1,
                tcp: tcp.clone(),
                tls: false,
                authenticated: AtomicBool::new(false),
            };
            let poison = AtomicBool::new(false);
            let req = Request::new(http_types::Method::Post, "http://h/v1/agents/a1/poll");
            let handle = size_of_val(&hub.handle(req, &poison, &conn));
            let poll = size_of_val(&hub.poll("a1", Duration::from_secs(1), &conn));
            let (_tx, close) = smol::channel::bounded(1);
            let whole = size_of_val(&hub.connection(tcp, peer, None, 1, close));
            eprintln!("handle {handle} B, poll {poll} B, connection {whole} B");
            // 9,336 bytes (unoptimized build) with async_h1::accept and nothing boxed.
            assert!(whole <= 7 * 1024, "a connection's future is {whole} bytes");
        });
    }
}
