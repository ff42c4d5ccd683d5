//! Admission of a pass's single requests under the latency-aware window
//! ([`crate::sync::adaptive`]): a worker enters before it sends an object's requests and
//! leaves with what it saw (the latency, whether the endpoint throttled). Shared by the
//! pass's workers; at most the window's limit are inside at once, none during a
//! Retry-After pause. Not used by the pass yet (see [`crate::sync::adaptive`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sync::adaptive::Window;

/// How often a waiting worker looks again.
const POLL: Duration = Duration::from_millis(5);

/// The window and who is inside it.
#[derive(Debug)]
pub struct Admission {
    window: Mutex<Window>,
    inside: AtomicUsize,
}

/// A worker inside: when it entered.
#[derive(Debug)]
pub struct Ticket(Instant);

impl Admission {
    /// At most `max` (`sync.concurrency`) inside at once.
    pub fn new(max: usize) -> Admission {
        Admission {
            window: Mutex::new(Window::new(max)),
            inside: AtomicUsize::new(0),
        }
    }

    /// Waits until the window has room and no pause holds.
    pub async fn enter(&self) -> Ticket {
        loop {
            let now = Instant::now();
            let wait = {
                let w = self.window.lock().unwrap_or_else(|e| e.into_inner());
                match w.pause(now) {
                    Some(p) => p,
                    None => {
                        let limit = w.limit();
                        let got = self
                            .inside
                            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                                (n < limit).then_some(n + 1)
                            })
                            .is_ok();
                        if got {
                            return Ticket(now);
                        }
                        POLL
                    }
                }
            };
            smol::Timer::after(wait).await;
        }
    }

    /// Leaves; `throttled`: the endpoint answered 429 or 503 meanwhile.
    pub fn leave(&self, t: Ticket, throttled: bool) {
        self.inside.fetch_sub(1, Ordering::AcqRel);
        let now = Instant::now();
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if throttled {
            w.throttled(None, now);
        } else {
            w.answered(now.duration_since(t.0), now);
        }
    }

    /// The current limit (for the log).
    pub fn limit(&self) -> usize {
        self.window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .limit()
    }
}
