//! A fault-injecting proxy for integration tests: sits on 127.0.0.1 between the agent and a
//! real server (scim2-server over HTTP, slapd over LDAP) and misbehaves on command.
//!
//! Owns: one listening port, one thread that accepts, and one or two threads per connection.
//! Uses std threads and blocking sockets only; knows nothing of the code under test.
//!
//! Two flavours:
//! * [`FaultProxy::tcp`] forwards bytes both ways (for LDAP). Faults: outage (connect is
//!   refused, or accepted and closed at once), cutting every open connection, and cutting
//!   the connection that carries the server's Nth byte from now.
//! * [`FaultProxy::http`] reads one HTTP/1.x request per connection (framed by
//!   `Content-Length`), forwards it with `Connection: close`, relays the response until the
//!   server closes, then closes. On top of the TCP faults it can answer the next requests
//!   itself (any status, with or without `Retry-After`) or stall one: forward it, relay the
//!   response head and half of its body, then hold the connection open without a byte more
//!   until the client gives up (or the proxy is dropped).
//!
//! Faults queued with [`FaultProxy::answer_next`] / [`FaultProxy::stall_next`] (or their
//! `_of` forms, which wait for a request with the given method) apply to the next requests
//! in arrival order, one fault per request; [`FaultProxy::refuse_path`] answers every request
//! for one path (one resource) until lifted, ahead of the queue. Every request (HTTP) or connection
//! (TCP) is recorded as an [`Event`] with its arrival time and what the proxy did, so a test
//! can check counts and the pauses between retries.
//!
//! Limits: no TLS (it would need the server's key), no chunked request bodies, requests up
//! to 16 MiB. "Cutting" a connection is a shutdown of both directions (the peer reads
//! end-of-file): std has no stable way to send a TCP RST. While refusing, the port is not
//! listened on; it is bound again (SO_REUSEADDR) when the outage ends.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Largest request the HTTP flavour reads.
const MAX_REQUEST: usize = 16 << 20;
/// Longest a stalled connection is held.
const MAX_STALL: Duration = Duration::from_secs(300);

/// What the proxy does with new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Accept and forward (faults queued for requests still apply).
    Pass,
    /// Do not listen: connecting is refused.
    Refuse,
    /// Accept and close at once, before reading anything.
    Drop,
}

/// A fault for one HTTP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status (and `Retry-After`, if given) instead of forwarding.
    Answer {
        /// The status code.
        status: u16,
        /// The `Retry-After` header value.
        retry_after: Option<String>,
    },
    /// Forward, relay the head and half the body, then hang.
    Stall,
    /// Forward as usual (a placeholder that puts the faults behind it further on).
    Forward,
    /// Close the client's connection without an answer and keep the request; it reaches
    /// the server only after the next request has been processed there, before that
    /// request's answer goes back (a write the server finishes late, after the client's
    /// lookup, like a slow server behind a cut link).
    Late,
}

/// What the proxy did with one request (HTTP) or connection (TCP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Forwarded; the server's status when it answered (HTTP), `None` for TCP or no answer.
    Forwarded(Option<u16>),
    /// Answered by the proxy with this status.
    Answered(u16),
    /// Forwarded, then stalled mid-body (the server's status).
    Stalled(Option<u16>),
    /// Accepted and closed at once ([`Mode::Drop`]).
    Dropped,
    /// The server could not be reached; the client connection was closed.
    NoUpstream,
    /// Forwarded, but the connection was cut before any response came back.
    Cut,
    /// Kept and closed unanswered ([`Fault::Late`]); forwarded after the next request
    /// (the server's status then).
    Late(Option<u16>),
}

/// One request or connection, as the proxy saw it.
#[derive(Debug, Clone)]
pub struct Event {
    /// When it arrived (HTTP: when the whole request was read).
    pub at: Instant,
    /// HTTP method (empty for TCP).
    pub method: String,
    /// HTTP path and query (empty for TCP).
    pub path: String,
    /// What the proxy did.
    pub action: Action,
}

struct Shared {
    target: u16,
    http: bool,
    stop: AtomicBool,
    mode: Mutex<Mode>,
    faults: Mutex<VecDeque<(Option<String>, Fault)>>,
    events: Mutex<Vec<Event>>,
    open: Mutex<HashMap<u64, Vec<TcpStream>>>,
    next_id: AtomicU64,
    /// Requests held by [`Fault::Late`], with their event index.
    late: Mutex<Vec<(usize, Request)>>,
    /// Paths answered with a status for as long as they are listed (substring, status).
    refused_paths: Mutex<Vec<(String, u16)>>,
    /// TCP: bytes the server may still send before the connection carrying the next is
    /// cut, once ([`FaultProxy::cut_after_bytes`]).
    down_budget: Mutex<Option<u64>>,
    /// `"bulkId:` strings seen in request bodies (HTTP): SCIM Bulk references.
    bulk_id_refs: AtomicU64,
}

impl Shared {
    fn record(&self, method: &str, path: &str, action: Action) -> usize {
        let mut ev = self.events.lock().unwrap();
        ev.push(Event {
            at: Instant::now(),
            method: method.to_string(),
            path: path.to_string(),
            action,
        });
        ev.len() - 1
    }

    fn set_action(&self, index: usize, action: Action) {
        if let Some(e) = self.events.lock().unwrap().get_mut(index) {
            e.action = action;
        }
    }

    /// Counts `n` bytes from a server against [`Shared::down_budget`]; true when they
    /// exhaust it (the budget is then lifted).
    fn spend(&self, n: u64) -> bool {
        let mut b = self.down_budget.lock().unwrap();
        match *b {
            Some(left) if n >= left => {
                *b = None;
                true
            }
            Some(left) => {
                *b = Some(left - n);
                false
            }
            None => false,
        }
    }

    /// Tracks sockets of one connection so [`FaultProxy::cut_all`] can close them.
    fn track(&self, streams: &[&TcpStream]) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let clones = streams.iter().filter_map(|s| s.try_clone().ok()).collect();
        self.open.lock().unwrap().insert(id, clones);
        id
    }

    fn untrack(&self, id: u64) {
        if let Some(v) = self.open.lock().unwrap().remove(&id) {
            for s in v {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

/// The proxy. Dropping it stops accepting and closes every connection.
pub struct FaultProxy {
    /// The loopback port to point the client at.
    pub port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// A byte-forwarding proxy to `127.0.0.1:target_port`.
    pub fn tcp(target_port: u16) -> FaultProxy {
        FaultProxy::start(target_port, false)
    }

    /// An HTTP proxy (one request per connection) to `127.0.0.1:target_port`.
    pub fn http(target_port: u16) -> FaultProxy {
        FaultProxy::start(target_port, true)
    }

    fn start(target: u16, http: bool) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fault proxy");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let shared = Arc::new(Shared {
            target,
            http,
            stop: AtomicBool::new(false),
            mode: Mutex::new(Mode::Pass),
            faults: Mutex::new(VecDeque::new()),
            events: Mutex::new(Vec::new()),
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            late: Mutex::new(Vec::new()),
            refused_paths: Mutex::new(Vec::new()),
            down_budget: Mutex::new(None),
            bulk_id_refs: AtomicU64::new(0),
        });
        let s = shared.clone();
        let acceptor = std::thread::spawn(move || accept_loop(s, Some(listener), port));
        FaultProxy {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// `http://127.0.0.1:PORT` followed by `path` (e.g. `/v2`).
    pub fn http_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Sets what happens to new connections (open ones are left alone).
    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    /// Back to forwarding new connections.
    pub fn pass(&self) {
        self.set_mode(Mode::Pass);
    }

    /// An outage: connecting is refused until [`FaultProxy::pass`].
    pub fn refuse(&self) {
        self.set_mode(Mode::Refuse);
    }

    /// Closes every open connection, both sides; returns how many connections it closed.
    pub fn cut_all(&self) -> usize {
        let all: Vec<(u64, Vec<TcpStream>)> = self.shared.open.lock().unwrap().drain().collect();
        for (_, streams) in &all {
            for s in streams {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        all.len()
    }

    /// TCP: once the server has sent `n` more bytes (over all connections), the connection
    /// that carries the next one is cut, that chunk unsent; then forwarding goes on as before.
    pub fn cut_after_bytes(&self, n: u64) {
        *self.shared.down_budget.lock().unwrap() = Some(n);
    }

    /// An outage that also breaks what is in flight: refuse new connections, cut open ones.
    pub fn outage(&self) {
        self.refuse();
        self.cut_all();
    }

    /// The next `n` HTTP requests are answered by the proxy with `status` (with
    /// `Retry-After: retry_after` when given) instead of being forwarded.
    pub fn answer_next(&self, n: usize, status: u16, retry_after: Option<&str>) {
        self.queue(None, n, answer(status, retry_after));
    }

    /// Like [`FaultProxy::answer_next`], for the next `n` requests with this method only.
    pub fn answer_next_of(&self, method: &str, n: usize, status: u16, retry_after: Option<&str>) {
        self.queue(Some(method), n, answer(status, retry_after));
    }

    /// The next `n` HTTP requests are forwarded, but their responses stall mid-body.
    pub fn stall_next(&self, n: usize) {
        self.queue(None, n, Fault::Stall);
    }

    /// Like [`FaultProxy::stall_next`], for the next `n` requests with this method only.
    /// Every `_of` form also takes `"METHOD /part"`: that method on a path ending with
    /// `/part` (e.g. `"POST /Bulk"`).
    pub fn stall_next_of(&self, method: &str, n: usize) {
        self.queue(Some(method), n, Fault::Stall);
    }

    /// The next `n` requests with this method are answered by closing the connection and
    /// reach the server late: see [`Fault::Late`].
    pub fn late_next_of(&self, method: &str, n: usize) {
        self.queue(Some(method), n, Fault::Late);
    }

    /// Lets the next `n` requests with this method through untouched, so that faults queued
    /// after this hit later requests of that method.
    pub fn forward_next_of(&self, method: &str, n: usize) {
        self.queue(Some(method), n, Fault::Forward);
    }

    fn queue(&self, method: Option<&str>, n: usize, fault: Fault) {
        // The method is upper-cased, the path part kept as written.
        let mut f = self.shared.faults.lock().unwrap();
        for _ in 0..n {
            let m = method.map(|m| match m.split_once(' ') {
                Some((verb, part)) => format!("{} {part}", verb.to_ascii_uppercase()),
                None => m.to_ascii_uppercase(),
            });
            f.push_back((m, fault.clone()));
        }
    }

    /// Every request whose path contains `part` (e.g. one resource's id) is answered with
    /// `status` until [`FaultProxy::accept_paths`], before any queued fault: one object the
    /// endpoint keeps refusing while it takes the others.
    pub fn refuse_path(&self, part: &str, status: u16) {
        let mut r = self.shared.refused_paths.lock().unwrap();
        r.push((part.to_string(), status));
    }

    /// Stops refusing the paths of [`FaultProxy::refuse_path`].
    pub fn accept_paths(&self) {
        self.shared.refused_paths.lock().unwrap().clear();
    }

    /// Faults queued and not yet applied.
    pub fn pending_faults(&self) -> usize {
        self.shared.faults.lock().unwrap().len()
    }

    /// Drops the faults not yet applied.
    pub fn clear_faults(&self) {
        self.shared.faults.lock().unwrap().clear();
    }

    /// Every request (HTTP) or connection (TCP) seen so far.
    pub fn events(&self) -> Vec<Event> {
        self.shared.events.lock().unwrap().clone()
    }

    /// How many requests (HTTP) or connections (TCP) arrived.
    pub fn requests(&self) -> usize {
        self.shared.events.lock().unwrap().len()
    }

    /// How many `"bulkId:...` values (RFC 7644 §3.7.2 references) the request bodies held.
    pub fn bulk_id_references(&self) -> u64 {
        self.shared.bulk_id_refs.load(Ordering::SeqCst)
    }

    /// How many requests the proxy answered itself with `status`.
    pub fn answered(&self, status: u16) -> usize {
        self.events()
            .iter()
            .filter(|e| e.action == Action::Answered(status))
            .count()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.cut_all();
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
    }
}

fn answer(status: u16, retry_after: Option<&str>) -> Fault {
    Fault::Answer {
        status,
        retry_after: retry_after.map(str::to_string),
    }
}

fn accept_loop(shared: Arc<Shared>, mut listener: Option<TcpListener>, port: u16) {
    let idle = Duration::from_millis(5);
    while !shared.stop.load(Ordering::SeqCst) {
        let mode = *shared.mode.lock().unwrap();
        if mode == Mode::Refuse {
            listener = None; // closing the socket refuses (and resets) pending connects
            std::thread::sleep(idle);
            continue;
        }
        let l = match &listener {
            Some(l) => l,
            None => match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => {
                    l.set_nonblocking(true).unwrap();
                    listener.insert(l)
                }
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            },
        };
        match l.accept() {
            Ok((client, _)) => {
                let _ = client.set_nonblocking(false);
                let _ = client.set_nodelay(true);
                if mode == Mode::Drop {
                    shared.record("", "", Action::Dropped);
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let s = shared.clone();
                std::thread::spawn(move || {
                    if s.http {
                        serve_http(&s, client);
                    } else {
                        serve_tcp(&s, client);
                    }
                });
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(idle),
            Err(_) => std::thread::sleep(idle),
        }
    }
}

fn connect_upstream(shared: &Shared) -> Option<TcpStream> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], shared.target));
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    let _ = s.set_nodelay(true);
    Some(s)
}

fn serve_tcp(shared: &Arc<Shared>, client: TcpStream) {
    let Some(server) = connect_upstream(shared) else {
        shared.record("", "", Action::NoUpstream);
        return;
    };
    shared.record("", "", Action::Forwarded(None));
    let id = shared.track(&[&client, &server]);
    let (Ok(mut c2), Ok(mut s2)) = (client.try_clone(), server.try_clone()) else {
        shared.untrack(id);
        return;
    };
    let up = std::thread::spawn(move || {
        let mut client = client;
        let mut server = server;
        let _ = std::io::copy(&mut client, &mut server);
        let _ = server.shutdown(Shutdown::Both);
        let _ = client.shutdown(Shutdown::Both);
    });
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match s2.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if shared.spend(n as u64) {
            shared.record("", "", Action::Cut);
            break;
        }
        if c2.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = c2.shutdown(Shutdown::Both);
    let _ = s2.shutdown(Shutdown::Both);
    let _ = up.join();
    shared.untrack(id);
}

/// One parsed request: method, path, the head as forwarded, the body.
struct Request {
    method: String,
    path: String,
    head: Vec<u8>,
    body: Vec<u8>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one request; `None` when the client closed first or sent something unusable.
fn read_request(client: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_REQUEST {
            return None;
        }
        let n = client.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let version = first.next().unwrap_or("HTTP/1.1").to_string();
    let mut len = 0usize;
    let mut out = format!("{method} {path} {version}\r\n");
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let lower = name.trim().to_ascii_lowercase();
        if lower == "content-length" {
            len = value.trim().parse().ok()?;
        }
        if lower == "connection" || lower == "keep-alive" {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    if len > MAX_REQUEST {
        return None;
    }
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = client.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Some(Request {
        method,
        path,
        head: out.into_bytes(),
        body,
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Fault",
    }
}

fn status_of(response: &[u8]) -> Option<u16> {
    let line_end = find(response, b"\r\n")?;
    let line = std::str::from_utf8(&response[..line_end]).ok()?;
    line.split(' ').nth(1)?.parse().ok()
}

fn serve_http(shared: &Arc<Shared>, mut client: TcpStream) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(60)));
    let id = shared.track(&[&client]);
    let Some(req) = read_request(&mut client) else {
        shared.untrack(id);
        return;
    };
    let refs = req.body.windows(8).filter(|w| w == b"\"bulkId:").count();
    shared.bulk_id_refs.fetch_add(refs as u64, Ordering::SeqCst);
    let refused = {
        let r = shared.refused_paths.lock().unwrap();
        r.iter()
            .find(|(part, _)| req.path.contains(part.as_str()))
            .map(|&(_, status)| answer(status, None))
    };
    let fault = refused.or_else(|| {
        let mut q = shared.faults.lock().unwrap();
        let at = q.iter().position(|(m, _)| {
            m.as_ref()
                .is_none_or(|m| matches_request(m, &req.method, &req.path))
        });
        at.and_then(|i| q.remove(i)).map(|(_, f)| f)
    });
    match fault {
        Some(Fault::Answer {
            status,
            retry_after,
        }) => {
            shared.record(&req.method, &req.path, Action::Answered(status));
            let body = format!(
                "{{\"schemas\":[\"urn:ietf:params:scim:api:messages:2.0:Error\"],\"status\":\"{status}\",\"detail\":\"injected by the fault proxy\"}}"
            );
            let mut resp = format!(
                "HTTP/1.1 {status} {}\r\nContent-Type: application/scim+json\r\nContent-Length: {}\r\nConnection: close\r\n",
                reason(status),
                body.len()
            );
            if let Some(r) = retry_after {
                resp.push_str(&format!("Retry-After: {r}\r\n"));
            }
            resp.push_str("\r\n");
            resp.push_str(&body);
            let _ = client.write_all(resp.as_bytes());
        }
        Some(Fault::Stall) => {
            let index = shared.record(&req.method, &req.path, Action::Stalled(None));
            let response = exchange(shared, &req);
            let status = response.as_deref().and_then(status_of);
            shared.set_action(index, Action::Stalled(status));
            if let Some(resp) = response {
                let head_end = find(&resp, b"\r\n\r\n").map_or(resp.len(), |i| i + 4);
                let body_len = resp.len() - head_end;
                // Head and half the body (at least the head; a body of one byte sends none).
                let _ = client.write_all(&resp[..head_end + body_len / 2]);
                let _ = client.flush();
                hang(shared, &mut client);
            }
        }
        Some(Fault::Late) => {
            let index = shared.record(&req.method, &req.path, Action::Late(None));
            shared.late.lock().unwrap().push((index, req));
        }
        None | Some(Fault::Forward) if !shared.late.lock().unwrap().is_empty() => {
            // This request first, then the held ones, then this request's answer.
            let index = shared.record(&req.method, &req.path, Action::Forwarded(None));
            let response = exchange(shared, &req);
            let held = std::mem::take(&mut *shared.late.lock().unwrap());
            for (at, late) in held {
                let status = exchange(shared, &late).as_deref().and_then(status_of);
                shared.set_action(at, Action::Late(status));
            }
            let status = response.as_deref().and_then(status_of);
            if let Some(resp) = response {
                let _ = client.write_all(&resp);
                let _ = client.flush();
            }
            shared.set_action(index, Action::Forwarded(status));
        }
        None | Some(Fault::Forward) => {
            let index = shared.record(&req.method, &req.path, Action::Forwarded(None));
            let action = match relay(shared, &req, &mut client, id) {
                Err(()) => Action::NoUpstream,
                Ok(Some(status)) => Action::Forwarded(Some(status)),
                Ok(None) => Action::Cut,
            };
            shared.set_action(index, action);
        }
    }
    shared.untrack(id);
}

/// Sends the request upstream and reads the whole response (until the server closes).
fn exchange(shared: &Shared, req: &Request) -> Option<Vec<u8>> {
    let mut server = connect_upstream(shared)?;
    let _ = server.set_read_timeout(Some(Duration::from_secs(60)));
    server.write_all(&req.head).ok()?;
    server.write_all(&req.body).ok()?;
    let mut resp = Vec::new();
    server.read_to_end(&mut resp).ok()?;
    Some(resp)
}

/// Forwards the request and streams the response back; the server's status, if it answered
/// (`Err` when the server could not be reached).
fn relay(
    shared: &Shared,
    req: &Request,
    client: &mut TcpStream,
    id: u64,
) -> Result<Option<u16>, ()> {
    let Some(mut server) = connect_upstream(shared) else {
        return Err(());
    };
    if let Ok(s) = server.try_clone() {
        if let Some(v) = shared.open.lock().unwrap().get_mut(&id) {
            v.push(s);
        }
    }
    let _ = server.set_read_timeout(Some(Duration::from_secs(60)));
    if server.write_all(&req.head).is_err() || server.write_all(&req.body).is_err() {
        return Ok(None);
    }
    let mut first: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        let n = match server.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if first.len() < 64 {
            first.extend_from_slice(&chunk[..n.min(64)]);
        }
        if client.write_all(&chunk[..n]).is_err() {
            break;
        }
    }
    let _ = client.flush();
    Ok(status_of(&first))
}

/// Holds a stalled connection: reads (and discards) until the client closes, the proxy
/// stops, or [`MAX_STALL`] passes.
fn hang(shared: &Shared, client: &mut TcpStream) {
    let _ = client.set_read_timeout(Some(Duration::from_millis(100)));
    let end = Instant::now() + MAX_STALL;
    let mut sink = [0u8; 1024];
    while Instant::now() < end && !shared.stop.load(Ordering::SeqCst) {
        match client.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// Whether a queued fault's matcher (`"METHOD"` or `"METHOD /part"`) takes this request.
fn matches_request(matcher: &str, method: &str, path: &str) -> bool {
    match matcher.split_once(' ') {
        Some((verb, part)) => {
            verb == method && path.split('?').next().unwrap_or("").ends_with(part)
        }
        None => matcher == method,
    }
}
