//! Process signals for `run`: SIGTERM and SIGINT ask it to stop, SIGHUP to reload its
//! config.
//!
//! A dedicated thread (signal-hook's iterator, which does the async-signal-safe part) turns
//! each signal into a message; [`Control`] remembers the strongest request so every loop of
//! the agent can both poll it between steps and wake up on it while sleeping. A stop beats a
//! reload. Nothing here cancels work by itself: the loops decide where it is safe to stop
//! (after the in-flight request, with the queue acknowledged and the index saved).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use smol::channel::{Receiver, Sender};

/// What an operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// SIGTERM / SIGINT: finish the in-flight request, persist, exit 0.
    Stop,
    /// SIGHUP: re-read the config; keep the old one if the new one is invalid.
    Reload,
}

const NONE: u8 = 0;
const RELOAD: u8 = 1;
const STOP: u8 = 2;

/// Shared view of pending requests. Clones see the same state.
#[derive(Clone, Debug)]
pub struct Control {
    pending: Arc<AtomicU8>,
    wake: Receiver<()>,
    tx: Sender<()>,
}

impl Default for Control {
    fn default() -> Self {
        Control::new()
    }
}

impl Control {
    /// A control no signal reaches (tests, one-shot commands); see [`Control::raise`].
    pub fn new() -> Control {
        let (tx, wake) = smol::channel::unbounded();
        Control {
            pending: Arc::new(AtomicU8::new(NONE)),
            wake,
            tx,
        }
    }

    /// Installs handlers for SIGTERM, SIGINT and SIGHUP that feed this control.
    #[cfg(unix)]
    pub fn install(&self) -> std::io::Result<()> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
        let me = self.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    let req = if sig == SIGHUP {
                        Request::Reload
                    } else {
                        Request::Stop
                    };
                    me.raise(req);
                }
            })?;
        Ok(())
    }

    /// Installs nothing where there are no POSIX signals.
    #[cfg(not(unix))]
    pub fn install(&self) -> std::io::Result<()> {
        Ok(())
    }

    /// Records a request and wakes whoever waits.
    pub fn raise(&self, req: Request) {
        let v = match req {
            Request::Stop => STOP,
            Request::Reload => RELOAD,
        };
        self.pending.fetch_max(v, Ordering::SeqCst);
        let _ = self.tx.try_send(());
    }

    /// The pending request, if any (not consumed).
    pub fn requested(&self) -> Option<Request> {
        match self.pending.load(Ordering::SeqCst) {
            STOP => Some(Request::Stop),
            RELOAD => Some(Request::Reload),
            _ => None,
        }
    }

    /// Clears a handled reload (a stop stays).
    pub fn clear_reload(&self) {
        let _ = self
            .pending
            .compare_exchange(RELOAD, NONE, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Waits until a request is pending.
    pub async fn wait(&self) -> Request {
        loop {
            if let Some(r) = self.requested() {
                return r;
            }
            if self.wake.recv().await.is_err() {
                // Cannot happen while `self` holds a sender; never spin.
                smol::Timer::after(Duration::from_secs(3600)).await;
            }
        }
    }

    /// Sleeps for `d` unless a request arrives first; returns the request if one did.
    pub async fn sleep(&self, d: Duration) -> Option<Request> {
        if let Some(r) = self.requested() {
            return Some(r);
        }
        smol::future::or(async { Some(self.wait().await) }, async {
            smol::Timer::after(d).await;
            None
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_beats_a_reload_and_stays() {
        let c = Control::new();
        assert_eq!(c.requested(), None);
        c.raise(Request::Reload);
        assert_eq!(c.requested(), Some(Request::Reload));
        c.raise(Request::Stop);
        c.raise(Request::Reload);
        assert_eq!(c.requested(), Some(Request::Stop));
        c.clear_reload();
        assert_eq!(c.requested(), Some(Request::Stop));
    }

    #[test]
    fn sleep_wakes_on_a_request() {
        let c = Control::new();
        let c2 = c.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            c2.raise(Request::Stop);
        });
        let started = std::time::Instant::now();
        let r = smol::block_on(c.sleep(Duration::from_secs(30)));
        t.join().unwrap();
        assert_eq!(r, Some(Request::Stop));
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn sleep_without_a_request_times_out() {
        let c = Control::new();
        assert_eq!(smol::block_on(c.sleep(Duration::from_millis(10))), None);
    }
}
