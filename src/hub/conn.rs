//! A guard around one accepted connection, so a slow or hostile client cannot hold a task
//! forever.
//!
//! * Writes: a write or flush that makes no progress for `write_stall` fails with
//!   `TimedOut` (a client that stops reading its answer).
//! * Reads: once the handler declares the request body abandoned ([`Guarded::poison`]:
//!   too large, unread, or read too slowly), every further read returns end-of-file, so
//!   nothing drains the rest of a huge body, and the connection closes.
//! * Reading a request head is bounded by async-h1's decoder (8 KiB, 128 headers) and
//!   `http1` (60 s); reading a
//!   body by the handler (size and time).
//!
//! Clones share the poison flag (the HTTP decoder clones the stream); each clone has its own stall
//! timer.
//!
//! [`Registry`] caps the open connections in total and per client address. A connection is
//! *pending* until a request carrying a valid token (agent or operator) arrives on it; when
//! a cap is reached, the oldest pending connection (of that address, for the address cap)
//! is closed to make room, and only when none is pending is the new one refused. So
//! clients without a token can hold at most the slots nobody with a token needs, never an
//! agent's held poll. The server closes a connection still pending after
//! [`PENDING_DEADLINE`].
//!
//! [`peer_gone_now`] and [`peer_gone`] tell whether the client of a connection has gone
//! (its socket reads end-of-file or an error, or a TLS alert waits), without reading.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use smol::channel::{Receiver, Sender};
use smol::future::Future;
use smol::io::{AsyncRead, AsyncWrite};
use smol::Timer;

/// Longest a connection may stay without a request that carries a valid token.
pub const PENDING_DEADLINE: Duration = Duration::from_secs(10);

/// Why a new connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its address holds its cap of connections, none of them pending.
    PerAddress,
    /// The hub holds its cap of connections, none of them pending.
    Total,
}

struct Entry {
    ip: IpAddr,
    pending: bool,
    /// Dropped to close the connection (its task waits on the receiver).
    _close: Sender<()>,
}

#[derive(Default)]
struct Open {
    next: u64,
    entries: HashMap<u64, Entry>,
    per_ip: HashMap<IpAddr, usize>,
    /// Ids of pending connections, oldest first; may hold ids no longer pending (skipped).
    pending: VecDeque<u64>,
    pending_per_ip: HashMap<IpAddr, VecDeque<u64>>,
    pending_live: usize,
}

/// The open connections, capped in total and per address.
pub struct Registry {
    open: Mutex<Open>,
    max_total: usize,
    max_per_ip: usize,
}

/// What was closed to admit a connection.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Admitted {
    /// The connection's id.
    pub id: u64,
    /// A pending connection of the same address was closed for it.
    pub evicted_same_address: bool,
    /// A pending connection of any address was closed for it.
    pub evicted_any: bool,
}

impl Registry {
    /// At most `max_total` connections, `max_per_ip` from one address.
    pub fn new(max_total: usize, max_per_ip: usize) -> Registry {
        Registry {
            open: Mutex::new(Open::default()),
            max_total,
            max_per_ip,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a connection from `ip` (pending), closing the oldest pending one when a cap is
    /// reached; the receiver ends when the registry closes it.
    pub fn admit(&self, ip: IpAddr) -> Result<(Admitted, Receiver<()>), Refused> {
        let mut o = self.lock();
        let mut admitted = Admitted::default();
        if o.per_ip.get(&ip).copied().unwrap_or(0) >= self.max_per_ip {
            if !o.evict_pending(Some(ip)) {
                return Err(Refused::PerAddress);
            }
            admitted.evicted_same_address = true;
        }
        if o.entries.len() >= self.max_total {
            if !o.evict_pending(None) {
                return Err(Refused::Total);
            }
            admitted.evicted_any = true;
        }
        let (tx, rx) = smol::channel::bounded(1);
        o.next += 1;
        let id = o.next;
        o.entries.insert(
            id,
            Entry {
                ip,
                pending: true,
                _close: tx,
            },
        );
        *o.per_ip.entry(ip).or_default() += 1;
        o.pending.push_back(id);
        o.pending_per_ip.entry(ip).or_default().push_back(id);
        o.pending_live += 1;
        o.compact();
        admitted.id = id;
        Ok((admitted, rx))
    }

    /// Connection `id` carried a valid token: never closed to make room from now on.
    pub fn authenticated(&self, id: u64) {
        let mut o = self.lock();
        if let Some(e) = o.entries.get_mut(&id) {
            if e.pending {
                e.pending = false;
                o.pending_live -= 1;
            }
        }
    }

    /// Connection `id` ended (a no-op when the registry closed it).
    pub fn closed(&self, id: u64) {
        self.lock().remove(id);
    }

    /// Open connections, and how many of them are pending.
    pub fn counts(&self) -> (usize, usize) {
        let o = self.lock();
        (o.entries.len(), o.pending_live)
    }
}

impl Open {
    fn remove(&mut self, id: u64) -> bool {
        let Some(e) = self.entries.remove(&id) else {
            return false;
        };
        if let Some(n) = self.per_ip.get_mut(&e.ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&e.ip);
            }
        }
        if e.pending {
            self.pending_live -= 1;
        }
        true
    }

    /// Closes the oldest pending connection (of `ip`, when given); false when none is.
    fn evict_pending(&mut self, ip: Option<IpAddr>) -> bool {
        loop {
            let next = match ip {
                Some(ip) => self
                    .pending_per_ip
                    .get_mut(&ip)
                    .and_then(VecDeque::pop_front),
                None => self.pending.pop_front(),
            };
            let Some(id) = next else {
                return false;
            };
            if self.entries.get(&id).is_some_and(|e| e.pending) {
                return self.remove(id);
            }
        }
    }

    /// Drops ids that are no longer pending once they outnumber the live ones.
    fn compact(&mut self) {
        if self.pending.len() <= 2 * self.pending_live + 64 {
            return;
        }
        let entries = &self.entries;
        self.pending
            .retain(|id| entries.get(id).is_some_and(|e| e.pending));
        self.pending_per_ip.clear();
        for id in &self.pending {
            if let Some(e) = entries.get(id) {
                self.pending_per_ip.entry(e.ip).or_default().push_back(*id);
            }
        }
    }
}

/// Whether the client of `tcp` has gone, looking without waiting or reading: end-of-file,
/// an error, or (with `tls`) a TLS alert record waiting (a close_notify).
pub async fn peer_gone_now(tcp: &smol::net::TcpStream, tls: bool) -> bool {
    let mut b = [0u8; 1];
    match smol::future::poll_once(tcp.peek(&mut b)).await {
        None => false,
        Some(r) => gone(r, b[0], tls),
    }
}

/// Resolves when the client of `tcp` has gone (see [`peer_gone_now`]); never when it sends
/// something else instead.
pub async fn peer_gone(tcp: &smol::net::TcpStream, tls: bool) {
    let mut b = [0u8; 1];
    let r = tcp.peek(&mut b).await;
    if !gone(r, b[0], tls) {
        std::future::pending::<()>().await;
    }
}

fn gone(peeked: io::Result<usize>, first: u8, tls: bool) -> bool {
    match peeked {
        Ok(0) | Err(_) => true,
        // 21: a TLS alert record; a client that waits for its answer sends nothing else.
        Ok(_) => tls && first == 21,
    }
}

/// A stream with a write-stall timeout and a shared "stop reading" switch.
pub struct Guarded<S> {
    inner: S,
    poisoned: Arc<AtomicBool>,
    write_stall: Duration,
    timer: Option<Timer>,
}

impl<S: Clone> Clone for Guarded<S> {
    fn clone(&self) -> Self {
        Guarded {
            inner: self.inner.clone(),
            poisoned: self.poisoned.clone(),
            write_stall: self.write_stall,
            timer: None,
        }
    }
}

impl<S> Guarded<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, write_stall: Duration) -> Guarded<S> {
        Guarded {
            inner,
            poisoned: Arc::new(AtomicBool::new(false)),
            write_stall,
            timer: None,
        }
    }

    /// The switch that makes all clones read end-of-file from now on.
    pub fn poison(&self) -> Arc<AtomicBool> {
        self.poisoned.clone()
    }

    fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let limit = self.write_stall;
        let t = self.timer.get_or_insert_with(|| Timer::after(limit));
        Pin::new(t).poll(cx).is_ready()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(0));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => {
                if self.stalled(cx) {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client stopped reading",
                    )))
                } else {
                    Poll::Pending
                }
            }
            ready => {
                self.timer = None;
                ready
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => {
                if self.stalled(cx) {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client stopped reading",
                    )))
                } else {
                    Poll::Pending
                }
            }
            ready => {
                self.timer = None;
                ready
            }
        }
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smol::io::{AsyncReadExt, AsyncWriteExt};

    /// A writer that never accepts a byte.
    #[derive(Clone)]
    struct Stuck;
    impl AsyncWrite for Stuck {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Pending
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn a_stalled_write_times_out() {
        let mut g = Guarded::new(Stuck, Duration::from_millis(30));
        let e = smol::block_on(g.write_all(b"hello")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn caps_close_the_oldest_pending_connection_first() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let r = Registry::new(4, 2);
        let (a1, rx1) = r.admit(a).unwrap();
        let (a2, _rx2) = r.admit(a).unwrap();
        r.authenticated(a2.id);
        // a's cap: the pending a1 makes room, the authenticated a2 stays.
        let (a3, _rx3) = r.admit(a).unwrap();
        assert!(a3.evicted_same_address);
        assert!(rx1.is_closed(), "a1 was told to close");
        r.closed(a1.id);
        r.authenticated(a3.id);
        assert_eq!(r.admit(a).unwrap_err(), Refused::PerAddress);
        // The total cap: b's pending ones make room for each other, then none is left.
        let (b1, _) = r.admit(b).unwrap();
        let (b2, _) = r.admit(b).unwrap();
        assert_eq!(r.counts(), (4, 2));
        r.authenticated(b2.id);
        let (b3, rx_b3) = r.admit(b).unwrap();
        assert!(b3.evicted_same_address || b3.evicted_any);
        assert!(!r.lock().entries.contains_key(&b1.id));
        r.authenticated(b3.id);
        drop(rx_b3);
        assert!(r.admit("10.0.0.3".parse().unwrap()).is_err());
        assert_eq!(r.counts(), (4, 0));
        r.closed(a2.id);
        assert!(r.admit(a).is_ok());
    }

    #[test]
    fn stale_pending_ids_do_not_pile_up() {
        let r = Registry::new(100, 100);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..10_000 {
            let (c, _) = r.admit(ip).unwrap();
            r.authenticated(c.id);
            r.closed(c.id);
        }
        assert!(r.lock().pending.len() <= 66);
    }

    #[test]
    fn poison_reads_end_of_file_on_every_clone() {
        let g = Guarded::new(
            smol::io::Cursor::new(b"abcdef".to_vec()),
            Duration::from_secs(1),
        );
        let mut c = g.clone();
        let mut buf = [0u8; 2];
        assert_eq!(smol::block_on(c.read(&mut buf)).unwrap(), 2);
        g.poison().store(true, Ordering::SeqCst);
        assert_eq!(smol::block_on(c.read(&mut buf)).unwrap(), 0);
    }
}
