//! Adaptive concurrency: how many single requests a full pass keeps in flight, learnt
//! from the link (issue 15 item 3). Pure: the pass reports each answered object's
//! latency and each throttling answer (429/503, with the end of its Retry-After); this
//! says how many may be out, and whether new ones must wait.
//!
//! The rule is on throughput alone (answers per second), because latency grows with what
//! is in flight on every link: through a WAN the endpoint queues too, so a rule that stops
//! when latency grows stops far too early (measured: 100.5 s against 52.4 s for a fixed
//! 32 on 80 ms). A *round* ends when as many answers as the limit allowed have come; its
//! throughput is those answers over its time.
//! * **Start**: the limit doubles from [`START`] while a round's throughput is at least
//!   [`DOUBLING_PAYS`] times the round's before. The first doubling that did not pay ends
//!   the start and goes back to the limit before it (it bought nothing).
//! * **Hold**: [`HOLD_ROUNDS`] rounds at the limit, measuring its throughput (smoothed);
//!   then a **probe**: a quarter more in flight (at least one) for a round. A probe whose
//!   throughput grew by [`PROBE_SHARE`] of the growth in flight is kept and the next probe
//!   follows; one that did not goes back to the limit before it and holds again.
//! * **Throttled** (429, 503): the limit halves at once, at most once per round trip (the
//!   requests out when the endpoint began to refuse report it together), and no new
//!   request goes before the Retry-After has passed. Then it holds and probes again.
//!
//! The limit stays within 1 ..= the ceiling (`sync.concurrency`) whatever happens: an
//! administrator who sets a number never gets more in flight. [`Window::fixed`] is the
//! window of `sync.adaptive_concurrency = false`: always the ceiling, as before.

use std::time::{Duration, Instant};

/// Requests in flight at the start (or the ceiling when lower).
pub const START: usize = 4;
/// A doubling pays when a round's throughput is at least this factor of the round before.
pub const DOUBLING_PAYS: f64 = 1.25;
/// A probe pays when throughput grew by at least this share of the growth in flight (a
/// quarter more in flight: 10 % more answers a second), well clear of the noise of an
/// endpoint that is the bottleneck, where a link bound by round trips gives all of it.
pub const PROBE_SHARE: f64 = 0.4;
/// Rounds at a limit before the next probe.
pub const HOLD_ROUNDS: u32 = 4;
/// The longest pause a Retry-After imposes.
const MAX_PAUSE: Duration = Duration::from_secs(60);
/// The round trip assumed before any answer came (for one cut per round trip).
const FIRST_RTT: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Doubling; the limit before the last doubling.
    Start { from: usize },
    /// Rounds left before the next probe.
    Hold(u32),
    /// Probing above `from`.
    Probe { from: usize },
    /// `sync.adaptive_concurrency = false`.
    Fixed,
}

/// The controller (one per pass).
#[derive(Debug, Clone)]
pub struct Window {
    max: usize,
    limit: usize,
    phase: Phase,
    /// Throughput of the last round (start) or at the held limit (hold, probe); 0: none yet.
    rate: f64,
    round_start: Option<Instant>,
    answered: usize,
    /// The lowest latency seen: a round trip, for one cut per round trip.
    rtt: Option<Duration>,
    paused_until: Option<Instant>,
    last_cut: Option<Instant>,
}

impl Window {
    /// An adaptive window of at most `max` requests in flight (at least 1).
    pub fn new(max: usize) -> Window {
        let max = max.max(1);
        Window {
            max,
            limit: START.min(max),
            phase: Phase::Start { from: 0 },
            rate: 0.0,
            round_start: None,
            answered: 0,
            rtt: None,
            paused_until: None,
            last_cut: None,
        }
    }

    /// A window that always allows `max` (at least 1) and ignores what it is told.
    pub fn fixed(max: usize) -> Window {
        Window {
            limit: max.max(1),
            phase: Phase::Fixed,
            ..Window::new(max)
        }
    }

    /// How many requests may be in flight now.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The ceiling.
    pub fn max(&self) -> usize {
        self.max
    }

    /// How long new requests must still wait (a Retry-After), if at all.
    pub fn pause(&self, now: Instant) -> Option<Duration> {
        self.paused_until
            .and_then(|t| t.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    /// An object's requests were answered (not throttled) after `latency`.
    pub fn answered(&mut self, latency: Duration, now: Instant) {
        if self.phase == Phase::Fixed {
            return;
        }
        self.rtt = Some(self.rtt.map_or(latency, |r| r.min(latency)));
        let start = *self
            .round_start
            .get_or_insert(now.checked_sub(latency).unwrap_or(now));
        self.answered += 1;
        if self.answered < self.limit {
            return;
        }
        let secs = now.duration_since(start).as_secs_f64().max(1e-6);
        self.round_end(self.answered as f64 / secs);
        self.new_round(now);
    }

    fn round_end(&mut self, rate: f64) {
        let step = (self.limit / 4).max(1);
        match self.phase {
            Phase::Fixed => {}
            Phase::Start { from } => {
                if from == 0 || rate >= self.rate * DOUBLING_PAYS {
                    self.rate = rate;
                    if self.limit < self.max {
                        self.phase = Phase::Start { from: self.limit };
                        self.limit = (self.limit * 2).min(self.max);
                        return;
                    }
                } else {
                    // The doubling bought nothing: back to what gave the same.
                    self.limit = from;
                }
                self.phase = Phase::Hold(HOLD_ROUNDS);
            }
            Phase::Hold(left) => {
                self.rate = if self.rate == 0.0 {
                    rate
                } else {
                    (self.rate + rate) / 2.0
                };
                self.phase = if left > 1 || self.limit >= self.max {
                    Phase::Hold(left.saturating_sub(1).max(1))
                } else {
                    let from = self.limit;
                    self.limit = (self.limit + step).min(self.max);
                    Phase::Probe { from }
                };
            }
            Phase::Probe { from } => {
                let grown = self.limit as f64 / from as f64 - 1.0;
                if rate >= self.rate * (1.0 + PROBE_SHARE * grown) {
                    self.rate = rate;
                    self.phase = if self.limit < self.max {
                        let from = self.limit;
                        self.limit = (self.limit + step).min(self.max);
                        Phase::Probe { from }
                    } else {
                        Phase::Hold(HOLD_ROUNDS)
                    };
                } else {
                    self.limit = from;
                    self.phase = Phase::Hold(HOLD_ROUNDS);
                }
            }
        }
    }

    /// The endpoint throttled a request at `now` (429, 503), asking to wait until `until`
    /// if it said.
    pub fn throttled(&mut self, until: Option<Instant>, now: Instant) {
        if self.phase == Phase::Fixed {
            return;
        }
        if let Some(u) = until.map(|u| u.min(now + MAX_PAUSE)) {
            self.paused_until = Some(self.paused_until.map_or(u, |p| p.max(u)));
        }
        let rtt = self.rtt.unwrap_or(FIRST_RTT);
        if self.last_cut.is_some_and(|t| now.duration_since(t) < rtt) {
            return;
        }
        self.last_cut = Some(now);
        self.limit = (self.limit / 2).max(1);
        self.phase = Phase::Hold(HOLD_ROUNDS);
        // What was measured before the throttle says nothing about the link now.
        self.rate = 0.0;
        self.new_round(now);
    }

    fn new_round(&mut self, now: Instant) {
        self.round_start = Some(now);
        self.answered = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `rounds` rounds against a link whose latency, with `n` requests in flight, is
    /// `latency(n)`: every request of a round in flight at once, answered together.
    fn drive(w: &mut Window, rounds: usize, latency: impl Fn(usize) -> Duration) -> Vec<usize> {
        drive_from(Instant::now(), w, rounds, latency).1
    }

    fn drive_from(
        mut now: Instant,
        w: &mut Window,
        rounds: usize,
        latency: impl Fn(usize) -> Duration,
    ) -> (Instant, Vec<usize>) {
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
        (now, seen)
    }

    /// 80 ms RTT: an object takes 160 ms however many are out.
    fn wan(_: usize) -> Duration {
        Duration::from_millis(160)
    }

    #[test]
    fn on_a_wan_it_grows_to_the_ceiling_and_never_above() {
        let mut w = Window::new(32);
        let seen = drive(&mut w, 40, wan);
        assert_eq!(w.limit(), 32, "{seen:?}");
        assert!(seen.iter().all(|&l| (1..=32).contains(&l)), "{seen:?}");
        // Doubling: 4, 8, 16, 32 within a handful of rounds.
        assert!(seen.iter().position(|&l| l == 32).unwrap() <= 4, "{seen:?}");
        // Under a ceiling that is not a power of two too.
        let mut w = Window::new(20);
        let seen = drive(&mut w, 40, wan);
        assert_eq!(w.limit(), 20, "{seen:?}");
        assert!(seen.iter().all(|&l| l <= 20), "{seen:?}");
    }

    #[test]
    fn against_an_endpoint_that_is_the_bottleneck_it_plateaus_where_throughput_stops_growing() {
        // 300 answers a second at most; below that an object takes 10 ms.
        let mut w = Window::new(64);
        let seen = drive(&mut w, 200, |n| {
            Duration::from_secs_f64((n as f64 / 300.0).max(0.010))
        });
        // 3 in flight fill it: 8 paid nothing over 4, and neither does a probe to 5.
        assert_eq!(seen[0], 8, "{seen:?}");
        assert!(seen[1..].iter().all(|&l| l == 4 || l == 5), "{seen:?}");
        assert_eq!(w.limit(), 4, "{seen:?}");
    }

    #[test]
    fn a_probe_that_pays_is_kept_one_that_does_not_goes_back() {
        // Throughput grows up to 12 in flight (a link of 12 × 160 ms), then is flat.
        let mut w = Window::new(64);
        let seen = drive(&mut w, 120, |n| {
            Duration::from_secs_f64(0.16 * (n as f64 / 12.0).max(1.0))
        });
        // Start: 4, 8, 16, 32 (16 brought half more), back to 16 (32 paid nothing); then
        // probes from 16 do not pay.
        assert_eq!(&seen[..4], [8, 16, 32, 16], "{seen:?}");
        assert!(seen[20..].iter().all(|&l| l == 16 || l == 20), "{seen:?}");
        assert_eq!(w.limit(), 16, "{seen:?}");

        // A link that rewards growth in small steps once started: 6 rounds grow it.
        let mut w = Window::new(64);
        w.phase = Phase::Hold(1);
        w.limit = 8;
        w.rate = 8.0 / 0.16;
        let (_, seen) = drive_from(Instant::now(), &mut w, 6, wan);
        assert_eq!(seen, [10, 12, 15, 18, 22, 27]);
    }

    #[test]
    fn a_throttle_halves_once_per_round_trip_and_never_below_one() {
        let mut w = Window::new(32);
        let (now, _) = drive_from(Instant::now(), &mut w, 10, |_| Duration::from_millis(100));
        assert_eq!(w.limit(), 32);
        w.throttled(None, now);
        assert_eq!(w.limit(), 16);
        // The other requests of the same round trip report the same throttle: once.
        for _ in 0..15 {
            w.throttled(None, now + Duration::from_millis(50));
        }
        assert_eq!(w.limit(), 16);
        w.throttled(None, now + Duration::from_secs(1));
        assert_eq!(w.limit(), 8);
        for k in 2..=20 {
            w.throttled(None, now + Duration::from_secs(k));
        }
        assert_eq!(w.limit(), 1, "never below one");
        assert_eq!(w.pause(now), None, "no Retry-After, no pause");
    }

    #[test]
    fn a_retry_after_pauses_new_requests_until_it_has_passed() {
        let mut w = Window::new(8);
        let now = Instant::now();
        let until = now + Duration::from_secs(3);
        w.throttled(Some(until), now);
        assert_eq!(w.pause(now), Some(Duration::from_secs(3)));
        assert_eq!(
            w.pause(now + Duration::from_secs(2)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(w.pause(until), None);
        // A shorter one later does not shorten it; a longer one lengthens it.
        w.throttled(Some(now + Duration::from_secs(1)), now);
        assert_eq!(w.pause(now), Some(Duration::from_secs(3)));
        w.throttled(Some(now + Duration::from_secs(5)), now);
        assert_eq!(w.pause(now), Some(Duration::from_secs(5)));
        // One that has passed already (the request's own retry waited it out): no pause.
        let later = now + Duration::from_secs(10);
        w.throttled(Some(now + Duration::from_secs(4)), later);
        assert_eq!(w.pause(later), None);
        // Capped.
        w.throttled(Some(later + Duration::from_secs(3600)), later);
        assert_eq!(w.pause(later), Some(MAX_PAUSE));
    }

    #[test]
    fn after_a_throttle_it_holds_then_grows_again_while_it_pays() {
        let mut w = Window::new(32);
        let (now, _) = drive_from(Instant::now(), &mut w, 10, wan);
        assert_eq!(w.limit(), 32);
        w.throttled(None, now);
        assert_eq!(w.limit(), 16);
        let (_, seen) = drive_from(now, &mut w, 30, wan);
        // Four rounds held, then a quarter more each round while it pays.
        assert_eq!(&seen[..7], [16, 16, 16, 20, 25, 31, 32], "{seen:?}");
        assert_eq!(w.limit(), 32, "{seen:?}");
    }

    #[test]
    fn a_ceiling_of_one_stays_one_and_a_fixed_window_never_moves() {
        let mut w = Window::new(1);
        let seen = drive(&mut w, 10, wan);
        assert!(seen.iter().all(|&l| l == 1), "{seen:?}");
        assert_eq!(Window::new(0).limit(), 1);
        let mut w = Window::fixed(8);
        let now = Instant::now();
        w.throttled(Some(now + Duration::from_secs(5)), now);
        let seen = drive(&mut w, 10, |n| Duration::from_millis(10 * n as u64));
        assert!(seen.iter().all(|&l| l == 8), "{seen:?}");
        assert_eq!(w.pause(now), None);
        assert_eq!(Window::fixed(0).limit(), 1);
    }
}
