//! Retry pacing: exponential backoff with full jitter, and `Retry-After` parsing.
//!
//! Owns: the arithmetic of "how long to wait before the next try". Does no I/O and never
//! sleeps; callers sleep (`smol::Timer`) for the durations handed out here.
//!
//! Invariants and limits:
//! * The n-th delay (n counted from 0) is drawn uniformly from `[0, min(cap, base * 2^n)]`
//!   ("full jitter"); the exponent saturates, so no overflow however many tries.
//! * With [`Backoff::quick_first`], the first delay (after a reset) is drawn from
//!   `[0, first]` instead, and the n-th after it (n >= 1) as the (n-1)-th above: one prompt,
//!   jittered retry, then the same growing waits as without it.
//! * With a limit of `max_attempts` tries, [`Backoff::next_delay`] hands out exactly
//!   `max_attempts - 1` delays (the first try needs none) and then `None`.
//! * `Retry-After` values are capped at [`MAX_RETRY_AFTER`]: a server cannot park the agent
//!   for hours with one header. A date in the past means "now" (zero).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Upper bound for any delay taken from a `Retry-After` header (5 minutes).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Exponential backoff with full jitter.
///
/// Cheap to create; make one per operation (or per reconnect loop) and call
/// [`Backoff::reset`] after a success or a stable period.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    max_attempts: Option<u32>,
    first: Option<Duration>,
    failures: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    /// Unlimited backoff starting at `base`, never waiting longer than `cap`.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            max_attempts: None,
            first: None,
            failures: 0,
            rng: fastrand::Rng::new(),
        }
    }

    /// Limits the number of tries (the first try included); `0` and `1` both mean "no retry".
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Backoff {
        self.max_attempts = Some(max_attempts);
        self
    }

    /// The first retry (after a reset) waits at most `first` (jittered from 0), the ones
    /// after it as without this: for a link that just broke, where the other side is
    /// likely back at once (a replica behind a balancer), one prompt try before backing off.
    pub fn quick_first(mut self, first: Duration) -> Backoff {
        self.first = Some(first);
        self
    }

    /// Uses a seeded random source, for reproducible tests.
    pub fn with_seed(mut self, seed: u64) -> Backoff {
        self.rng = fastrand::Rng::with_seed(seed);
        self
    }

    /// The largest delay the `n`-th retry (counted from 0) can get: `min(cap, base * 2^n)`.
    pub fn ceiling(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// Records one failed try and returns how long to wait before the next one, or `None`
    /// when the tries are used up.
    pub fn next_delay(&mut self) -> Option<Duration> {
        let n = self.failures;
        if let Some(max) = self.max_attempts {
            if n.saturating_add(1) >= max {
                return None;
            }
        }
        self.failures = self.failures.saturating_add(1);
        let ceiling = match self.first {
            Some(first) if n == 0 => first,
            Some(_) => self.ceiling(n - 1),
            None => self.ceiling(n),
        };
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Some(Duration::from_nanos(self.rng.u64(0..=nanos)))
    }

    /// Like [`Backoff::next_delay`], but a server-sent wait (e.g. `Retry-After`) replaces the
    /// jittered delay. Still counts as one try and still returns `None` when tries are used up.
    pub fn next_delay_or(&mut self, server_says: Option<Duration>) -> Option<Duration> {
        let jittered = self.next_delay()?;
        Some(server_says.unwrap_or(jittered))
    }

    /// Failed tries recorded since creation or the last [`Backoff::reset`].
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Starts over from `base` (after a success or a stable period).
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Parses a `Retry-After` value (RFC 9110 §10.2.3): delta-seconds (`"120"`) or an
/// IMF-fixdate (`"Sun, 06 Nov 1994 08:49:37 GMT"`), relative to `now`.
///
/// The result is capped at [`MAX_RETRY_AFTER`]; a date in the past gives zero. The obsolete
/// RFC 850 and asctime date forms, and anything else unparsable, give `None` (callers then
/// fall back to their own backoff).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for u64 is still "a very long time": cap it.
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let when = parse_imf_fixdate(value)?;
    let wait = when.duration_since(now).unwrap_or(Duration::ZERO);
    Some(wait.min(MAX_RETRY_AFTER))
}

/// Parses `Sun, 06 Nov 1994 08:49:37 GMT` (exactly that shape) into a point in time.
fn parse_imf_fixdate(value: &str) -> Option<SystemTime> {
    let mut parts = value.split(' ');
    let day_name = parts.next()?;
    let day = parts.next()?;
    let month = parts.next()?;
    let year = parts.next()?;
    let time = parts.next()?;
    let zone = parts.next()?;
    if parts.next().is_some() || zone != "GMT" {
        return None;
    }
    const DAYS: [&str; 7] = ["Mon,", "Tue,", "Wed,", "Thu,", "Fri,", "Sat,", "Sun,"];
    if !DAYS.contains(&day_name) {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month)? as u32 + 1;
    let day = fixed_digits(day, 2)?;
    let year = fixed_digits(year, 4)?;
    let mut hms = time.split(':');
    let hour = fixed_digits(hms.next()?, 2)?;
    let minute = fixed_digits(hms.next()?, 2)?;
    let second = fixed_digits(hms.next()?, 2)?;
    if hms.next().is_some() || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    if day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
    let secs = u64::try_from(secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// `s` as a number if it is exactly `len` ASCII digits.
fn fixed_digits(s: &str, len: usize) -> Option<u32> {
    if s.len() != len || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn days_in_month(year: u32, month: u32) -> u32 {
    let leap = (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400);
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_stay_within_the_exponential_ceiling() {
        for seed in 0..200 {
            let mut b = Backoff::new(100 * MS, 5_000 * MS).with_seed(seed);
            for n in 0..12 {
                let d = b.next_delay().expect("unlimited");
                let ceiling = (100 * MS * 2u32.pow(n)).min(5_000 * MS);
                assert!(d <= ceiling, "seed {seed} try {n}: {d:?} > {ceiling:?}");
            }
        }
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut b = Backoff::new(1_000 * MS, 1_000 * MS).with_seed(7);
        let delays: Vec<Duration> = (0..50).map(|_| b.next_delay().unwrap()).collect();
        let min = delays.iter().min().unwrap();
        let max = delays.iter().max().unwrap();
        assert!(*max - *min > 500 * MS, "no spread: {min:?}..{max:?}");
    }

    #[test]
    fn ceiling_saturates_without_overflow() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(b.ceiling(0), Duration::from_secs(1));
        assert_eq!(b.ceiling(3), Duration::from_secs(8));
        assert_eq!(b.ceiling(40), Duration::from_secs(60));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(60));
        let huge = Backoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(huge.ceiling(5), Duration::MAX);
    }

    #[test]
    fn max_attempts_counts_the_first_try() {
        let mut b = Backoff::new(MS, MS).with_max_attempts(3);
        assert!(b.next_delay().is_some());
        assert!(b.next_delay().is_some());
        assert!(b.next_delay().is_none());
        assert!(b.next_delay().is_none());
        assert_eq!(b.failures(), 2);
        b.reset();
        assert_eq!(b.failures(), 0);
        assert!(b.next_delay().is_some());
        let mut once = Backoff::new(MS, MS).with_max_attempts(1);
        assert!(once.next_delay().is_none());
        let mut zero = Backoff::new(MS, MS).with_max_attempts(0);
        assert!(zero.next_delay().is_none());
    }

    #[test]
    fn a_quick_first_retry_then_the_same_growing_waits() {
        let quick = 100 * MS;
        for seed in 0..50 {
            let mut b = Backoff::new(1_000 * MS, 60_000 * MS)
                .quick_first(quick)
                .with_seed(seed);
            assert!(
                b.next_delay().unwrap() <= quick,
                "seed {seed}: the first retry"
            );
            // Then as without it: within 1 s, 2 s, 4 s ... capped at 60 s.
            for n in 0..10 {
                let d = b.next_delay().unwrap();
                assert!(d <= b.ceiling(n), "seed {seed}, retry {}: {d:?}", n + 2);
            }
            // A reset gives the quick one again.
            b.reset();
            assert!(
                b.next_delay().unwrap() <= quick,
                "seed {seed}: after a reset"
            );
        }
        // The waits after the first do grow: over many draws the 6th retry (ceiling 16 s)
        // waits longer on average than the 2nd (ceiling 1 s).
        let (mut second, mut sixth) = (Duration::ZERO, Duration::ZERO);
        for seed in 0..200 {
            let mut b = Backoff::new(1_000 * MS, 60_000 * MS)
                .quick_first(quick)
                .with_seed(seed);
            let d: Vec<Duration> = (0..6).map(|_| b.next_delay().unwrap()).collect();
            second += d[1];
            sixth += d[5];
        }
        assert!(second / 200 <= 600 * MS, "{:?}", second / 200);
        assert!(sixth / 200 >= 4_000 * MS, "{:?}", sixth / 200);
    }

    #[test]
    fn reset_starts_from_base_again() {
        let mut b = Backoff::new(10 * MS, 10_000 * MS).with_seed(1);
        for _ in 0..8 {
            b.next_delay();
        }
        b.reset();
        assert!(b.next_delay().unwrap() <= 10 * MS);
    }

    #[test]
    fn server_delay_replaces_jitter_but_counts() {
        let mut b = Backoff::new(MS, MS).with_max_attempts(2);
        assert_eq!(
            b.next_delay_or(Some(Duration::from_secs(3))),
            Some(Duration::from_secs(3))
        );
        assert_eq!(b.next_delay_or(Some(Duration::from_secs(3))), None);
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn retry_after_delta_seconds() {
        let now = at(1_000);
        assert_eq!(parse_retry_after("1", now), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("86400", now), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn retry_after_imf_fixdate() {
        // 1994-11-06T08:49:37Z is 784111777 seconds after the epoch.
        let date = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert_eq!(
            parse_retry_after(date, at(784_111_777 - 30)),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after(date, at(784_111_777 + 5)),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after(date, at(0)), Some(MAX_RETRY_AFTER));
        // Leap day and the end of a year.
        assert_eq!(
            parse_imf_fixdate("Thu, 29 Feb 2024 00:00:00 GMT"),
            Some(at(1_709_164_800))
        );
        assert_eq!(
            parse_imf_fixdate("Fri, 31 Dec 1999 23:59:59 GMT"),
            Some(at(946_684_799))
        );
    }

    #[test]
    fn retry_after_rejects_other_forms() {
        let now = at(0);
        for bad in [
            "",
            "-1",
            "1.5",
            "soon",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 31 Feb 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT extra",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }
}
