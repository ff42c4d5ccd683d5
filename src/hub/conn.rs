//! A guard around one accepted connection, so a slow or hostile client cannot hold a task
//! forever.
//!
//! * Writes: a write or flush that makes no progress for `write_stall` fails with
//!   `TimedOut` (a client that stops reading its answer).
//! * Reads: once the handler declares the request body abandoned ([`Guarded::poison`]:
//!   too large, unread, or read too slowly), every further read returns end-of-file, so
//!   async-h1 does not drain the rest of a huge body, and the connection closes.
//! * Reading a request head is bounded by async-h1 (8 KiB, 128 headers, 60 s); reading a
//!   body by the handler (size and time).
//!
//! Clones share the poison flag (async-h1 clones the stream); each clone has its own stall
//! timer.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use smol::future::Future;
use smol::io::{AsyncRead, AsyncWrite};
use smol::Timer;

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
