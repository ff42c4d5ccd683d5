//! Latency-aware concurrency: how many single requests a full pass keeps in flight, learnt
//! from the link (issue 15 item 3). Pure: the pass reports each answered request's latency
//! and each throttling answer (429/503); this says how many may be out.
//!
//! Rounds: a round ends when as many requests as the limit allowed have been answered. At
//! its end the round's throughput (answers per second) and mean latency are compared:
//! * while starting, the limit doubles as long as latency holds (within [`HOLDS`] × the
//!   lowest round mean seen) and throughput grew (by [`GREW`] at least); the first round
//!   that fails either ends the start;
//! * after it, one more in flight each round whose latency holds (a probe: on a full link
//!   or a busy endpoint latency then grows);
//! * latency beyond [`QUEUED`] × the lowest: requests queue somewhere: a quarter fewer.
//!   Between the two it holds (a margin for noise).
//!
//! A throttling answer halves the limit at once, and a Retry-After pauses new requests
//! until it passed. The limit stays within 1 ..= `sync.concurrency`, whatever happens.
//! On a WAN (latency set by distance, not load) it climbs to `sync.concurrency`; against
//! a server that is the bottleneck (latency grows with load) it stays where throughput
//! stops growing.
//!
//! **Not wired into the pass yet.** Measured with `scripts/bench-wan.sh --only-off
//! --concurrency 32` (80 ms, 20 Mbit/s, scim2-server, 5,000 users + 100 groups, bulk off):
//! a pass admitting its single requests through [`crate::sync::admission`] took 100.5 s
//! against 52.4 s with a fixed 32 in the same run. Through the proxy, latency grows with
//! what is in flight (scim2-server queues) while throughput still grows, so a rule that
//! stops at growing latency stops too early; the next step is a rule on throughput alone
//! (grow while it grows, cut when it falls or the endpoint throttles), measured the same
//! way. The wiring is four lines in `sync::pass` around `provision_with`: `enter` before,
//! `leave` after with whether [`crate::scim::client::ScimClient::throttled`] moved.

use std::time::{Duration, Instant};

/// Requests in flight at the start (or `sync.concurrency` when lower).
pub const START: usize = 4;
/// Latency still holds while a round's mean is within this factor of the lowest seen.
pub const HOLDS: f64 = 1.5;
/// Throughput grew when a round's is at least this factor of the round before.
pub const GREW: f64 = 1.15;
/// Requests queue when a round's mean latency is beyond this factor of the lowest seen.
pub const QUEUED: f64 = 2.0;
/// The longest pause a Retry-After imposes.
const MAX_PAUSE: Duration = Duration::from_secs(60);

/// The controller (one per pass).
#[derive(Debug, Clone)]
pub struct Window {
    max: usize,
    limit: usize,
    starting: bool,
    base: Option<Duration>,
    round_start: Option<Instant>,
    answered: usize,
    latency_sum: Duration,
    last_rate: f64,
    paused_until: Option<Instant>,
    last_cut: Option<Instant>,
}

impl Window {
    /// A window of at most `max` requests in flight (at least 1).
    pub fn new(max: usize) -> Window {
        let max = max.max(1);
        Window {
            max,
            limit: START.min(max),
            starting: true,
            base: None,
            round_start: None,
            answered: 0,
            latency_sum: Duration::ZERO,
            last_rate: 0.0,
            paused_until: None,
            last_cut: None,
        }
    }

    /// How many requests may be in flight now.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// How long new requests must still wait (a Retry-After), if at all.
    pub fn pause(&self, now: Instant) -> Option<Duration> {
        self.paused_until
            .and_then(|t| t.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    /// A request was answered (not throttled) after `latency`.
    pub fn answered(&mut self, latency: Duration, now: Instant) {
        let start = *self.round_start.get_or_insert(now - latency);
        self.answered += 1;
        self.latency_sum += latency;
        if self.answered < self.limit {
            return;
        }
        let secs = now.duration_since(start).as_secs_f64().max(1e-6);
        let rate = self.answered as f64 / secs;
        let mean = self.latency_sum / u32::try_from(self.answered).unwrap_or(u32::MAX);
        let base = *self.base.get_or_insert(mean);
        let base = base.min(mean);
        self.base = Some(base);
        let holds = mean.as_secs_f64() <= base.as_secs_f64() * HOLDS;
        let queued = mean.as_secs_f64() > base.as_secs_f64() * QUEUED;
        let grew = rate >= self.last_rate * GREW;
        if queued {
            self.limit = (self.limit * 3 / 4).max(1);
            self.starting = false;
        } else if self.starting && holds && grew {
            self.limit = (self.limit * 2).min(self.max);
        } else if self.starting {
            self.starting = false;
        } else if holds {
            self.limit = (self.limit + 1).min(self.max);
        }
        self.last_rate = rate;
        self.new_round(now);
    }

    /// The endpoint throttled a request (429, 503), asking to wait `retry_after` if it said.
    /// One halving per round trip: the requests in flight when the endpoint began to
    /// throttle report it together, and count once.
    pub fn throttled(&mut self, retry_after: Option<Duration>, now: Instant) {
        if let Some(d) = retry_after {
            let until = now + d.min(MAX_PAUSE);
            self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
        }
        let rtt = self.base.unwrap_or(Duration::from_millis(100));
        if self.last_cut.is_some_and(|t| now.duration_since(t) < rtt) {
            return;
        }
        self.last_cut = Some(now);
        self.limit = (self.limit / 2).max(1);
        self.starting = false;
        // What the old round measured was before the throttle: start counting afresh.
        self.last_rate = 0.0;
        self.new_round(now);
    }

    fn new_round(&mut self, now: Instant) {
        self.round_start = Some(now);
        self.answered = 0;
        self.latency_sum = Duration::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `rounds` rounds against a link whose latency, with `n` requests in flight, is
    /// `latency(n)`: every request of a round in flight at once, answered together.
    fn drive(w: &mut Window, rounds: usize, latency: impl Fn(usize) -> Duration) -> Vec<usize> {
        drive_from(Instant::now(), w, rounds, latency)
    }

    fn drive_from(
        mut now: Instant,
        w: &mut Window,
        rounds: usize,
        latency: impl Fn(usize) -> Duration,
    ) -> Vec<usize> {
        let mut seen = Vec::new();
        for _ in 0..rounds {
            let n = w.limit();
            let lat = latency(n);
            now += lat;
            for _ in 0..n {
                w.answered(lat, now);
            }
            seen.push(w.limit());
        }
        seen
    }

    #[test]
    fn on_a_wan_it_climbs_to_the_configured_concurrency_and_never_above() {
        // 80 ms RTT: a request takes 160 ms (connection + request) however many are out.
        let mut w = Window::new(32);
        let seen = drive(&mut w, 40, |_| Duration::from_millis(160));
        assert_eq!(w.limit(), 32, "{seen:?}");
        assert!(seen.iter().all(|&l| l <= 32), "{seen:?}");
        // Doubling first: 4, 8, 16, 32 within a handful of rounds.
        assert!(seen.iter().position(|&l| l == 32).unwrap() <= 4, "{seen:?}");
    }

    #[test]
    fn against_a_server_bound_endpoint_it_stays_where_throughput_stops_growing() {
        // 300 answers a second at most; below that a request takes 5 ms.
        let mut w = Window::new(64);
        let seen = drive(&mut w, 60, |n| {
            Duration::from_secs_f64((n as f64 / 300.0).max(0.005))
        });
        let tail = &seen[20..];
        assert!(tail.iter().all(|&l| l <= 8), "{seen:?}");
        assert!(tail.iter().all(|&l| l >= 1), "{seen:?}");
    }

    #[test]
    fn a_bandwidth_capped_link_stops_growing_when_the_pipe_is_full() {
        // 80 ms RTT; beyond 12 requests in flight the line is full and they queue.
        let mut w = Window::new(64);
        let seen = drive(&mut w, 60, |n| {
            Duration::from_secs_f64(0.16 * (n as f64 / 12.0).max(1.0))
        });
        let tail = &seen[30..];
        assert!(tail.iter().all(|&l| (6..=24).contains(&l)), "{seen:?}");
    }

    #[test]
    fn a_throttle_halves_and_retry_after_pauses() {
        let mut w = Window::new(32);
        drive(&mut w, 10, |_| Duration::from_millis(100));
        assert_eq!(w.limit(), 32);
        let now = Instant::now();
        w.throttled(Some(Duration::from_secs(2)), now);
        assert_eq!(w.limit(), 16);
        assert_eq!(w.pause(now), Some(Duration::from_secs(2)));
        assert_eq!(w.pause(now + Duration::from_secs(3)), None);
        // The other requests of the same round trip report the same throttle: once.
        for _ in 0..15 {
            w.throttled(None, now + Duration::from_millis(50));
        }
        assert_eq!(w.limit(), 16);
        let later = now + Duration::from_secs(1);
        w.throttled(None, later);
        assert_eq!(w.limit(), 8);
        for k in 1..=10 {
            w.throttled(
                Some(Duration::from_secs(3600)),
                later + Duration::from_secs(k),
            );
        }
        assert_eq!(w.limit(), 1, "never below one");
        assert_eq!(
            w.pause(later + Duration::from_secs(10)),
            Some(MAX_PAUSE),
            "a Retry-After is capped"
        );
        // After the storm it grows again, one at a time.
        let after = later + Duration::from_secs(11);
        let seen = drive_from(after, &mut w, 5, |_| Duration::from_millis(100));
        assert_eq!(seen, [2, 3, 4, 5, 6]);
    }

    #[test]
    fn after_a_throttle_a_wan_grows_back_to_the_maximum_one_at_a_time() {
        // Each step adds under 15 % throughput at these sizes: latency alone decides.
        let mut w = Window::new(64);
        let t0 = Instant::now();
        drive_from(t0, &mut w, 10, |_| Duration::from_millis(160));
        assert_eq!(w.limit(), 64);
        w.throttled(None, t0 + Duration::from_secs(10));
        assert_eq!(w.limit(), 32);
        let seen = drive_from(t0 + Duration::from_secs(11), &mut w, 40, |_| {
            Duration::from_millis(160)
        });
        assert_eq!(&seen[..3], [33, 34, 35]);
        assert_eq!(w.limit(), 64, "{seen:?}");
    }

    #[test]
    fn a_concurrency_of_one_stays_one() {
        let mut w = Window::new(1);
        let seen = drive(&mut w, 10, |_| Duration::from_millis(100));
        assert!(seen.iter().all(|&l| l == 1));
        assert_eq!(Window::new(0).limit(), 1);
    }
}
