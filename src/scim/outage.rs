//! The SCIM endpoint as a whole: healthy, or in an *outage* (issue 20, item 1). A refused
//! token, a failed TLS handshake or DNS lookup, or a wall of 5xx is one failure of the
//! endpoint, not one per object: `run` says so once when it starts and once when it ends,
//! counts the failed requests and the retries in between, and retries with growing waits.
//!
//! States and transitions ([`OutageMachine`], pure: time and jitter are parameters):
//! * healthy → outage: a request fails for a reason that is the endpoint's or the
//!   credential's ([`Cause`]). At once for the credential (401, or 403 before anything
//!   was ever answered), the TLS handshake and the connection (DNS, TCP); after
//!   [`WALL`] failures in a row with no answer between them for a 5xx, a 429 or a
//!   timeout, of at least two different requests (one object's 5xx among answers to
//!   others is that object's, and so are its own retries one after another). When one
//!   request fails [`WALL`] times in a row with nothing else tried, the machine asks for a
//!   probe of the service ([`OutageMachine::wants_probe`]): a probe that fails too makes
//!   the wall; one that is answered says the failures are that object's (the streak
//!   starts again), so a lone refused object is parked, not taken for an outage.
//! * outage → outage: more failures are counted, not reported; the cause kept is the
//!   latest. [`OutageMachine::next_wait`] hands out the waits: [`FIRST_WAIT`] doubling to
//!   [`MAX_WAIT`] (15 min), each drawn from its upper three quarters (jitter, so a fleet
//!   does not come back in step), and counts them as retries.
//! * outage → healthy: any answer about an object (2xx, most 4xx). The line says how long
//!   it lasted and how many retries it took.
//! * An operator's act (SIGHUP, a new token in the file) starts the waits from the first
//!   again ([`OutageMachine::operator_acted`]); the caller retries at once.
//!
//! [`EndpointWatch`] is the machine behind a lock with the clock and the log: the SCIM
//! client feeds it every answer, `run` asks it how long to wait. It never holds a token.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The first wait of an outage.
pub const FIRST_WAIT: Duration = Duration::from_secs(2);
/// The longest wait between two tries during an outage.
pub const MAX_WAIT: Duration = Duration::from_secs(15 * 60);
/// Failures in a row (5xx, 429, timeouts), of at least two different requests, that make
/// an outage.
pub const WALL: u32 = 3;

/// Why the endpoint counts as failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The credential was refused (401 after the token file was read again; 403 before
    /// any request was answered).
    Credentials(u16),
    /// No OAuth2 token could be fetched.
    Token,
    /// The TLS handshake was refused.
    Tls,
    /// DNS or TCP connect failed: nothing was sent.
    Connect,
    /// No answer in time.
    Timeout,
    /// A 5xx or a 429.
    Status(u16),
}

impl Cause {
    /// Whether one such failure is an outage (else it takes [`WALL`] in a row).
    fn at_once(self) -> bool {
        matches!(
            self,
            Cause::Credentials(_) | Cause::Token | Cause::Tls | Cause::Connect
        )
    }

    /// The cause in words, naming the config key to fix (`credential_key`: the keys of
    /// the credential in use).
    pub fn sentence(self, credential_key: &str) -> String {
        match self {
            Cause::Credentials(s) => {
                format!("the SCIM endpoint refuses our token ({s}): check {credential_key}")
            }
            Cause::Token => format!("no OAuth2 token can be fetched: check {credential_key}"),
            Cause::Tls => "the TLS handshake with the SCIM endpoint fails: check scim.ca_file, \
                           scim.pin_sha256 and the host name in scim.url"
                .into(),
            Cause::Connect => "the SCIM endpoint cannot be reached (DNS or connect fails): \
                               check scim.url and scim.proxy"
                .into(),
            Cause::Timeout => "the SCIM endpoint does not answer in time: check scim.url, \
                               or raise scim.timeout_secs"
                .into(),
            Cause::Status(s) => format!(
                "the SCIM endpoint answers {s} to request after request (the service's fault, \
                 not the config's)"
            ),
        }
    }
}

/// An outage in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outage {
    cause: Cause,
    since: Instant,
    failures: u64,
    retries: u32,
    /// Waits handed out since the outage began or an operator acted.
    step: u32,
}

/// A change of state, for the log: one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The endpoint is now in an outage, for this cause.
    Down(Cause),
    /// The outage ended after `lasted`, `retries` retries and `failures` failed requests.
    Up {
        /// How long it lasted.
        lasted: Duration,
        /// Waits handed out (retries) during it.
        retries: u32,
        /// Failed requests during it.
        failures: u64,
    },
}

/// What the machine says now, for `status` and the heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutageFacts {
    /// In an outage.
    pub down: bool,
    /// Its cause in words (none when healthy).
    pub cause: Option<String>,
    /// Its length so far.
    pub for_secs: u64,
    /// Failed requests during it.
    pub failures: u64,
    /// Retries during it.
    pub retries: u32,
    /// Outages since the agent started.
    pub outages: u64,
}

/// The endpoint's health over time (see the module doc). Pure.
#[derive(Debug, Clone, Default)]
pub struct OutageMachine {
    outage: Option<Outage>,
    /// Failures in a row for causes that do not count at once.
    streak: u32,
    /// The request (its [`subject`] key) that began the streak, and whether another one
    /// failed in it since.
    first: Option<u64>,
    varied: bool,
    /// A probe of the service was handed out for this streak.
    probed: bool,
    /// Some request was ever answered.
    answered: bool,
    outages: u64,
}

impl OutageMachine {
    /// A request failed for `cause` at `now`; `subject`: which request it was
    /// ([`subject`]), so that one request's retries count once toward a wall.
    pub fn failed(&mut self, cause: Cause, subject: u64, now: Instant) -> Option<Transition> {
        if let Some(o) = &mut self.outage {
            o.failures += 1;
            o.cause = cause;
            return None;
        }
        let cause = match cause {
            // A 403 on the first requests is the token's (no permission at all); after
            // answers it is about one object.
            Cause::Status(403) if !self.answered => Cause::Credentials(403),
            c => c,
        };
        if !cause.at_once() {
            self.streak += 1;
            match self.first {
                None => self.first = Some(subject),
                Some(f) if f != subject => self.varied = true,
                Some(_) => {}
            }
            if self.streak < WALL || !self.varied {
                return None;
            }
        }
        self.clear_streak();
        self.outages += 1;
        self.outage = Some(Outage {
            cause,
            since: now,
            failures: 1,
            retries: 0,
            step: 0,
        });
        Some(Transition::Down(cause))
    }

    /// A request got an answer about its object at `now`.
    pub fn answered(&mut self, now: Instant) -> Option<Transition> {
        self.answered = true;
        self.clear_streak();
        let o = self.outage.take()?;
        Some(Transition::Up {
            lasted: now.saturating_duration_since(o.since),
            retries: o.retries,
            failures: o.failures,
        })
    }

    fn clear_streak(&mut self) {
        self.streak = 0;
        self.first = None;
        self.varied = false;
        self.probed = false;
    }

    /// The service answered a probe of its own (its /ServiceProviderConfig) at `now`: an
    /// outage of the link or of 5xx is over (what still fails is the objects'); one of the
    /// credential is not (discovery documents are often served without a token). While
    /// healthy, the failures in a row so far were the objects': the streak starts again.
    pub fn service_answers(&mut self, now: Instant) -> Option<Transition> {
        match self.outage.as_ref().map(|o| o.cause) {
            Some(Cause::Credentials(_) | Cause::Token) => None,
            None => {
                self.clear_streak();
                None
            }
            Some(_) => self.answered(now),
        }
    }

    /// Whether the caller should probe the service now, once per streak: healthy, and one
    /// request alone failed [`WALL`] times in a row. Its failure ([`OutageMachine::failed`]
    /// with the probe's own subject) makes the wall; its answer
    /// ([`OutageMachine::service_answers`]) clears the streak.
    pub fn wants_probe(&mut self) -> bool {
        let wants = self.outage.is_none() && self.streak >= WALL && !self.varied && !self.probed;
        if wants {
            self.probed = true;
        }
        wants
    }

    /// In an outage: how long to wait before the next try (counted as a retry), with
    /// `jitter` in 0..=1 choosing within the wait's upper three quarters. `None` while
    /// healthy: the caller's own pacing applies.
    pub fn next_wait(&mut self, jitter: f64) -> Option<Duration> {
        let o = self.outage.as_mut()?;
        let ceiling = FIRST_WAIT
            .saturating_mul(1u32.checked_shl(o.step.min(20)).unwrap_or(u32::MAX))
            .min(MAX_WAIT);
        o.step = o.step.saturating_add(1);
        o.retries = o.retries.saturating_add(1);
        let share = 0.25 + 0.75 * jitter.clamp(0.0, 1.0);
        Some(ceiling.mul_f64(share))
    }

    /// An operator acted (SIGHUP, a new token): the next waits start from the first again.
    pub fn operator_acted(&mut self) {
        if let Some(o) = &mut self.outage {
            o.step = 0;
        }
    }

    /// Whether the endpoint is in an outage.
    pub fn is_down(&self) -> bool {
        self.outage.is_some()
    }

    /// What it says now.
    pub fn facts(&self, now: Instant, credential_key: &str) -> OutageFacts {
        match &self.outage {
            None => OutageFacts {
                outages: self.outages,
                ..OutageFacts::default()
            },
            Some(o) => OutageFacts {
                down: true,
                cause: Some(o.cause.sentence(credential_key)),
                for_secs: now.saturating_duration_since(o.since).as_secs(),
                failures: o.failures,
                retries: o.retries,
                outages: self.outages,
            },
        }
    }
}

/// The key of one request for the wall count: the same method, URL and body (a retry) give
/// the same key; different objects' requests give different ones.
pub fn subject(method: &str, url: &str, body: Option<&[u8]>) -> u64 {
    use std::io::Write;
    let mut h = crate::fnv::Fnv64::default();
    let _ = h.write_all(method.as_bytes());
    let _ = h.write_all(b" ");
    let _ = h.write_all(url.as_bytes());
    let _ = h.write_all(b"\n");
    let _ = h.write_all(body.unwrap_or_default());
    h.0
}

/// The line a transition is logged with.
pub fn line(t: &Transition, credential_key: &str) -> String {
    match t {
        Transition::Down(c) => format!(
            "SCIM endpoint unhealthy: {}; nothing is sent until it answers again, retrying from \
             {} s up to every {} min (at once on SIGHUP or a new token in the file); \
             `idrelay status` counts the retries",
            c.sentence(credential_key),
            FIRST_WAIT.as_secs(),
            MAX_WAIT.as_secs() / 60
        ),
        Transition::Up {
            lasted,
            retries,
            failures,
        } => format!(
            "SCIM endpoint healthy again after {} ({retries} retries, {failures} failed requests); resuming",
            lasted_words(*lasted)
        ),
    }
}

/// `45 s`, `12 min 5 s`, `3 h 20 min` (the scim layer does not reach into `sync`'s).
fn lasted_words(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

/// The machine as the running agent shares it: the SCIM client reports to it, `run` asks
/// it for waits, `status` reads it. Logs each transition once.
#[derive(Debug)]
pub struct EndpointWatch {
    machine: Mutex<OutageMachine>,
    credential_key: &'static str,
    rng: Mutex<fastrand::Rng>,
    /// When the outage in progress began (unix seconds), for `status`.
    since_unix: std::sync::atomic::AtomicU64,
}

impl EndpointWatch {
    /// A healthy watch; `credential_key` names the keys of the credential in use.
    pub fn new(credential_key: &'static str) -> EndpointWatch {
        EndpointWatch {
            machine: Mutex::new(OutageMachine::default()),
            credential_key,
            rng: Mutex::new(fastrand::Rng::new()),
            since_unix: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn machine(&self) -> std::sync::MutexGuard<'_, OutageMachine> {
        self.machine.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn log(&self, t: Option<Transition>) {
        match t {
            Some(t @ Transition::Down(_)) => log::warn!("{}", line(&t, self.credential_key)),
            Some(t) => log::info!("{}", line(&t, self.credential_key)),
            None => {}
        }
    }

    /// A request failed for `cause`; `subject`: which request ([`subject`]).
    pub fn failed(&self, cause: Cause, subject: u64) {
        let t = self.machine().failed(cause, subject, Instant::now());
        if t.is_some() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            self.since_unix
                .store(now, std::sync::atomic::Ordering::Relaxed);
        }
        self.log(t);
    }

    /// When the outage in progress began (unix seconds; 0 before any).
    pub fn since_unix(&self) -> u64 {
        self.since_unix.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A request was answered.
    pub fn answered(&self) {
        let t = self.machine().answered(Instant::now());
        self.log(t);
    }

    /// See [`OutageMachine::service_answers`].
    pub fn service_answers(&self) {
        let t = self.machine().service_answers(Instant::now());
        self.log(t);
    }

    /// See [`OutageMachine::next_wait`].
    pub fn next_wait(&self) -> Option<Duration> {
        let jitter = self.rng.lock().unwrap_or_else(|p| p.into_inner()).f64();
        self.machine().next_wait(jitter)
    }

    /// See [`OutageMachine::wants_probe`].
    pub fn wants_probe(&self) -> bool {
        self.machine().wants_probe()
    }

    /// See [`OutageMachine::operator_acted`].
    pub fn operator_acted(&self) {
        self.machine().operator_acted();
    }

    /// Whether the endpoint is in an outage.
    pub fn is_down(&self) -> bool {
        self.machine().is_down()
    }

    /// What it says now.
    pub fn facts(&self) -> OutageFacts {
        self.machine().facts(Instant::now(), self.credential_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "scim.token_file";

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    #[test]
    fn a_refused_token_is_an_outage_at_once_and_reported_once() {
        let t0 = Instant::now();
        let mut m = OutageMachine::default();
        assert_eq!(
            m.failed(Cause::Credentials(401), 1, t0),
            Some(Transition::Down(Cause::Credentials(401)))
        );
        for s in 1..50 {
            assert_eq!(m.failed(Cause::Credentials(401), 1, at(t0, s)), None);
        }
        let f = m.facts(at(t0, 60), KEY);
        assert!(f.down);
        assert_eq!(f.failures, 50);
        assert_eq!(f.for_secs, 60);
        assert!(f.cause.unwrap().contains("check scim.token_file"));
    }

    #[test]
    fn a_lone_5xx_among_answers_is_the_objects_a_wall_is_the_endpoints() {
        let t0 = Instant::now();
        let mut m = OutageMachine::default();
        for i in 0..10 {
            assert_eq!(m.failed(Cause::Status(500), 2 * i, t0), None);
            assert_eq!(m.failed(Cause::Timeout, 2 * i + 1, t0), None);
            assert_eq!(m.answered(t0), None);
        }
        assert!(!m.is_down());
        assert_eq!(m.failed(Cause::Status(503), 100, t0), None);
        assert_eq!(m.failed(Cause::Status(503), 101, t0), None);
        assert_eq!(
            m.failed(Cause::Status(503), 102, t0),
            Some(Transition::Down(Cause::Status(503)))
        );
    }

    /// Regression (CI of stop 13): one object the endpoint refuses with a 500, retried
    /// while nothing else was pending, made three failures in a row, and the endpoint was
    /// reported unhealthy (`status` exited 1) though it answered everything else.
    #[test]
    fn one_requests_retries_in_a_row_are_not_a_wall() {
        let t0 = Instant::now();
        let mut m = OutageMachine::default();
        m.answered(t0);
        let put = subject("PUT", "https://x/v2/Users/1", Some(b"{}"));
        for s in 0..(WALL - 1) {
            assert_eq!(m.failed(Cause::Status(500), put, at(t0, s.into())), None);
            assert!(!m.wants_probe());
        }
        assert_eq!(m.failed(Cause::Status(500), put, t0), None);
        // One request alone: the service is asked, once.
        assert!(m.wants_probe());
        assert!(!m.wants_probe());
        // It answers: the failures are the object's; its retries stay the object's.
        assert_eq!(m.service_answers(t0), None);
        for s in 0..20 {
            assert_eq!(m.failed(Cause::Status(500), put, at(t0, s)), None);
        }
        assert!(!m.is_down());
    }

    #[test]
    fn one_request_failing_and_the_probe_failing_too_is_a_wall() {
        let t0 = Instant::now();
        let mut m = OutageMachine::default();
        let put = subject("PUT", "https://x/v2/Users/1", Some(b"{}"));
        let probe = subject("GET", "https://x/v2/ServiceProviderConfig", None);
        assert_ne!(put, probe);
        for _ in 0..WALL {
            m.failed(Cause::Status(503), put, t0);
        }
        assert!(m.wants_probe());
        assert_eq!(
            m.failed(Cause::Status(503), probe, t0),
            Some(Transition::Down(Cause::Status(503)))
        );
        assert!(!m.wants_probe(), "no probe during an outage");
    }

    #[test]
    fn the_same_url_with_another_body_is_another_request() {
        let a = subject("PUT", "https://x/v2/Users/2", Some(b"{}"));
        let b = subject("PUT", "https://x/v2/Users/2", Some(b"{\"a\":1}"));
        let c = subject("POST", "https://x/v2/Users/2", Some(b"{}"));
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, subject("PUT", "https://x/v2/Users/2", Some(b"{}")));
    }

    #[test]
    fn tls_and_connect_failures_are_outages_at_once() {
        for c in [Cause::Tls, Cause::Connect, Cause::Token] {
            let mut m = OutageMachine::default();
            assert_eq!(m.failed(c, 1, Instant::now()), Some(Transition::Down(c)));
        }
    }

    #[test]
    fn a_403_is_the_tokens_only_before_anything_was_answered() {
        let t0 = Instant::now();
        let mut m = OutageMachine::default();
        assert_eq!(
            m.failed(Cause::Status(403), 1, t0),
            Some(Transition::Down(Cause::Credentials(403)))
        );
        let mut m = OutageMachine::default();
        m.answered(t0);
        assert_eq!(m.failed(Cause::Status(403), 1, t0), None);
    }

    #[test]
    fn waits_grow_from_seconds_to_fifteen_minutes_and_restart_when_an_operator_acts() {
        let mut m = OutageMachine::default();
        assert_eq!(m.next_wait(1.0), None, "healthy: the caller's own pacing");
        m.failed(Cause::Connect, 1, Instant::now());
        let waits: Vec<u64> = (0..14)
            .map(|_| m.next_wait(1.0).unwrap().as_secs())
            .collect();
        assert_eq!(
            waits,
            [2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900, 900, 900, 900]
        );
        // Jitter stays within the upper three quarters.
        let low = m.next_wait(0.0).unwrap();
        assert_eq!(low, Duration::from_secs(225));
        m.operator_acted();
        assert_eq!(m.next_wait(1.0), Some(Duration::from_secs(2)));
        assert_eq!(m.facts(Instant::now(), KEY).retries, 16);
    }

    #[test]
    fn an_answer_ends_the_outage_with_its_length_and_retries() {
        let t0 = Instant::now();
        let mut m = OutageMachine::default();
        m.failed(Cause::Credentials(401), 1, t0);
        m.next_wait(0.5);
        m.next_wait(0.5);
        m.failed(Cause::Credentials(401), 1, at(t0, 5));
        let t = m.answered(at(t0, 45)).unwrap();
        assert_eq!(
            t,
            Transition::Up {
                lasted: Duration::from_secs(45),
                retries: 2,
                failures: 2
            }
        );
        assert!(line(&t, KEY).contains("healthy again after 45 s (2 retries"));
        assert!(!m.is_down());
        assert_eq!(m.answered(at(t0, 46)), None, "one line per change");
        let f = m.facts(at(t0, 46), KEY);
        assert_eq!((f.down, f.outages, f.retries), (false, 1, 0));
        // A new outage counts from zero.
        m.failed(Cause::Tls, 1, at(t0, 50));
        assert_eq!(m.facts(at(t0, 50), KEY).failures, 1);
        assert_eq!(m.facts(at(t0, 50), KEY).outages, 2);
    }

    #[test]
    fn a_probe_answered_ends_an_outage_of_5xx_but_not_of_the_token() {
        let t0 = Instant::now();
        let mut m = OutageMachine::default();
        m.failed(Cause::Credentials(401), 1, t0);
        assert_eq!(m.service_answers(t0), None);
        assert!(m.is_down());
        let mut m = OutageMachine::default();
        for i in 0..WALL {
            m.failed(Cause::Status(500), i.into(), t0);
        }
        assert!(m.is_down());
        assert!(matches!(m.service_answers(t0), Some(Transition::Up { .. })));
        assert_eq!(OutageMachine::default().service_answers(t0), None);
    }

    #[test]
    fn the_down_line_names_the_cause_and_the_key() {
        let l = line(&Transition::Down(Cause::Credentials(401)), KEY);
        assert!(
            l.contains("refuses our token (401): check scim.token_file"),
            "{l}"
        );
        assert!(line(&Transition::Down(Cause::Tls), KEY).contains("scim.ca_file"));
    }
}
