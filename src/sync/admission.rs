//! A full pass's admission of its single requests under the adaptive window
//! ([`crate::sync::adaptive`]): the pass's coordinator asks [`Admission::gate`] before it
//! hands an object to a worker, tells [`Admission::sent`] when it did and
//! [`Admission::landed`] with the object's latency when it came back. Throttling is read
//! from the SCIM client's counter at each gate, so a 429 pauses new requests while the
//! throttled one is still waiting out its Retry-After. SCIM Bulk requests are not counted
//! here (they have their own bound, [`crate::sync::bulk_window`]).
//!
//! Changes of the limit are logged at debug; [`Admission::summary`] says once per pass
//! where it went.

use std::time::{Duration, Instant};

use crate::sync::adaptive::Window;

/// Whether the next object may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Yes.
    Go,
    /// Not before this long (a Retry-After).
    Wait(Duration),
    /// Not before one of those out has landed.
    Full,
}

/// The window and what is out under it.
#[derive(Debug)]
pub struct Admission {
    window: Window,
    out: usize,
    throttles: u64,
    throttled: u64,
    sent: u64,
    lowest: usize,
    highest: usize,
    /// The limit summed at each landing (its mean over the objects).
    limit_sum: u64,
    landed: u64,
}

impl Admission {
    /// At most `max` (`sync.concurrency`) out, adapting when `adaptive`; `throttles`: the
    /// SCIM client's throttle count now.
    pub fn new(max: usize, adaptive: bool, throttles: u64) -> Admission {
        let window = match adaptive {
            true => Window::new(max),
            false => Window::fixed(max),
        };
        let l = window.limit();
        Admission {
            window,
            out: 0,
            throttles,
            throttled: 0,
            sent: 0,
            lowest: l,
            highest: l,
            limit_sum: 0,
            landed: 0,
        }
    }

    /// Whether an object may go now; `throttles` and `retry_until`: the SCIM client's
    /// throttle count and the end of its latest Retry-After.
    pub fn gate(&mut self, throttles: u64, retry_until: Option<Instant>, now: Instant) -> Gate {
        if throttles > self.throttles {
            self.throttled += throttles - self.throttles;
            self.throttles = throttles;
            let before = self.window.limit();
            self.window.throttled(retry_until, now);
            self.moved(before, "the endpoint throttled");
        }
        if let Some(d) = self.window.pause(now) {
            return Gate::Wait(d);
        }
        match self.out < self.window.limit() {
            true => Gate::Go,
            false => Gate::Full,
        }
    }

    /// An object was handed to a worker.
    pub fn sent(&mut self) {
        self.out += 1;
        self.sent += 1;
    }

    /// An object handed out came back after `latency`.
    pub fn landed(&mut self, latency: Duration, now: Instant) {
        self.out = self.out.saturating_sub(1);
        let before = self.window.limit();
        self.limit_sum += before as u64;
        self.landed += 1;
        self.window.answered(latency, now);
        self.moved(before, "throughput");
    }

    /// How many are out.
    pub fn out(&self) -> usize {
        self.out
    }

    fn moved(&mut self, before: usize, why: &str) {
        let now = self.window.limit();
        if now != before {
            log::debug!(
                "SCIM requests in flight: {before} -> {now} ({why}; at most {})",
                self.window.max()
            );
            self.lowest = self.lowest.min(now);
            self.highest = self.highest.max(now);
        }
    }

    /// The pass's line about it: None when no single request went.
    pub fn summary(&self) -> Option<String> {
        if self.sent == 0 {
            return None;
        }
        let max = self.window.max();
        let mut s = format!(
            "SCIM requests in flight: {} at the end of the pass (between {} and {}, {:.1} on average; at most {max}, sync.concurrency)",
            self.window.limit(),
            self.lowest,
            self.highest,
            self.limit_sum as f64 / self.landed.max(1) as f64
        );
        if self.throttled > 0 {
            s.push_str(&format!("; {} answers throttled (429/503)", self.throttled));
        }
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_keeps_at_most_the_limit_out_and_opens_when_one_lands() {
        let mut a = Admission::new(2, true, 0);
        let now = Instant::now();
        assert_eq!(a.gate(0, None, now), Gate::Go);
        a.sent();
        assert_eq!(a.gate(0, None, now), Gate::Go);
        a.sent();
        assert_eq!(a.gate(0, None, now), Gate::Full);
        a.landed(Duration::from_millis(10), now);
        assert_eq!(a.gate(0, None, now), Gate::Go);
        assert_eq!(a.out(), 1);
    }

    #[test]
    fn a_throttle_seen_at_the_gate_halves_and_its_retry_after_pauses() {
        let mut a = Admission::new(8, true, 5);
        let now = Instant::now();
        // START (4) in flight.
        for _ in 0..4 {
            assert_eq!(a.gate(5, None, now), Gate::Go);
            a.sent();
        }
        assert_eq!(a.gate(5, None, now), Gate::Full);
        let until = now + Duration::from_secs(2);
        assert_eq!(
            a.gate(6, Some(until), now),
            Gate::Wait(Duration::from_secs(2))
        );
        assert_eq!(
            a.gate(6, Some(until), until),
            Gate::Full,
            "2 of 4 may be out"
        );
        a.landed(Duration::from_millis(10), until);
        a.landed(Duration::from_millis(10), until);
        assert_eq!(a.gate(6, Some(until), until), Gate::Full);
        a.landed(Duration::from_millis(10), until);
        assert_eq!(a.gate(6, Some(until), until), Gate::Go);
        let s = a.summary().unwrap();
        assert!(
            s.contains("between 2 and 4, 2.0 on average; at most 8"),
            "{s}"
        );
        assert!(s.contains("1 answers throttled"), "{s}");
    }

    #[test]
    fn a_fixed_admission_lets_the_ceiling_out_whatever_happens() {
        let mut a = Admission::new(3, false, 0);
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(a.gate(9, Some(now + Duration::from_secs(9)), now), Gate::Go);
            a.sent();
        }
        assert_eq!(a.gate(9, None, now), Gate::Full);
        assert!(a.summary().unwrap().contains("between 3 and 3"));
        assert_eq!(Admission::new(3, true, 0).summary(), None);
    }
}
