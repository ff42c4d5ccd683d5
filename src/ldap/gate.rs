//! Flow control for one LDAP connection: while its [`Gate`] is paused, the connection's
//! ldap3 task is not polled, so it reads nothing from the socket and the server's replies
//! wait in the kernel's buffers and then in the server (TCP flow control).
//!
//! # Why
//! ldap3's connection task decodes every message it reads into an unbounded channel per
//! search and reads the socket whenever it runs; it has no flow control of its own. A
//! search whose reader cannot hand its results on (the consumer on the other thread is
//! behind) would otherwise let that channel grow for as long as the server sends: measured
//! with a content-sync search listing 1,000,000 entries to a consumer on another thread,
//! 282-437 MiB of resident memory. The content-sync reader pauses its connection's gate
//! while it waits for room in its bounded output channel (`content_sync::send`), and
//! reads ldap3's channel outside tokio's budget (`content_sync::next_item`), so what waits
//! in that channel is at most what the connection task decoded in one turn.
//!
//! # Invariants
//! * **Paused only while someone waits for room.** [`Gate::pause`] returns a guard that
//!   resumes on drop, so an error, a cancelled wait or a dropped future never leaves the
//!   connection paused (an abandon or an unbind needs the task to run).
//! * **Nothing is lost while paused**: the task is simply not polled; the socket's readiness
//!   stays with it and it goes on where it stopped when resumed.
//! * Only connections of their own are gated (a content-sync search's): pausing one never
//!   holds up another operation.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

/// Shared switch between a connection's task ([`Gate::run`]) and its reader.
#[derive(Clone, Default)]
pub(crate) struct Gate(Arc<Mutex<GateState>>);

#[derive(Default)]
struct GateState {
    paused: bool,
    /// The connection task's waker, left while it was paused.
    waker: Option<Waker>,
}

/// Resumes the gate when dropped.
pub(crate) struct Paused<'a>(&'a Gate);

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        let waker = {
            let mut s = self.0.state();
            s.paused = false;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl Gate {
    fn state(&self) -> MutexGuard<'_, GateState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops polling the connection task until the guard is dropped.
    pub(crate) fn pause(&self) -> Paused<'_> {
        self.state().paused = true;
        Paused(self)
    }

    /// Runs `task` (a connection's ldap3 task), polling it only while the gate is open.
    pub(crate) async fn run<F: Future>(&self, task: F) -> F::Output {
        let mut task = std::pin::pin!(task);
        std::future::poll_fn(|cx| {
            {
                let mut s = self.state();
                if s.paused {
                    s.waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
            task.as_mut().poll(cx)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_paused_task_is_not_polled_and_goes_on_when_resumed() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let gate = Gate::default();
            let steps = Arc::new(AtomicUsize::new(0));
            let task = {
                let (gate, steps) = (gate.clone(), steps.clone());
                tokio::spawn(async move {
                    gate.run(async {
                        for _ in 0..1000 {
                            steps.fetch_add(1, Ordering::SeqCst);
                            tokio::task::yield_now().await;
                        }
                        "done"
                    })
                    .await
                })
            };
            tokio::task::yield_now().await;
            let paused = gate.pause();
            let at_pause = steps.load(Ordering::SeqCst);
            assert!(at_pause < 1000);
            for _ in 0..50 {
                tokio::task::yield_now().await;
            }
            assert_eq!(steps.load(Ordering::SeqCst), at_pause);
            drop(paused);
            assert_eq!(task.await.unwrap(), "done");
            assert_eq!(steps.load(Ordering::SeqCst), 1000);
        });
    }

    #[test]
    fn an_early_return_resumes_the_gate() {
        let gate = Gate::default();
        let wait = || -> Result<(), ()> {
            let _paused = gate.pause();
            Err(())
        };
        assert!(wait().is_err());
        assert!(!gate.state().paused);
    }
}
