//! The agent's health as one document: what `idrelay status` prints (text, or `--json`) and
//! what a running `idrelay run` publishes in its state directory (docs/status.md).
//!
//! * [`FeedLink`]: the change feed's link, set by the feed tasks, read by the publisher.
//! * [`Runtime`]: what only the running agent knows (feed link, endpoint state, phase),
//!   written to `state_dir/runtime.json`; valid only while a `run` holds the state
//!   directory's lock ([`lock_held`]), so a dead agent's file is never read as live.
//! * [`Document`]: the status document; [`problems`] is the health rule over its fields,
//!   [`render_prom`] its node_exporter textfile form (`state_dir/idrelay.prom`).
//!
//! Pure apart from [`write_private`] and [`lock_held`]; knows nothing of the rest of the
//! crate, so that the layers below the commands can publish into it.

use std::fs::TryLockError;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The running agent's state for `status` (in the state directory).
pub const RUNTIME_FILE: &str = "runtime.json";
/// The node_exporter textfile (in the state directory).
pub const PROM_FILE: &str = "idrelay.prom";
/// The state directory's lock file, held by `run` (and `sync --once`, `approve-deletes`).
pub const LOCK_FILE: &str = "agent.lock";
/// A runtime file older than this while the lock is held: the agent is hung.
pub const RUNTIME_STALE_SECS: u64 = 60;
/// A full pass owed this long with none running makes the agent unhealthy.
pub const RESYNC_GRACE_SECS: u64 = 60;
/// A polling feed is behind when its last answer is older than this many intervals (plus
/// [`POLL_SLACK_SECS`]).
pub const POLL_LATE_INTERVALS: u64 = 3;
/// See [`POLL_LATE_INTERVALS`].
pub const POLL_SLACK_SECS: u64 = 30;

/// Unix seconds of `t` (0 before 1970).
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How the SCIM endpoint answered lately.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointState {
    /// The last request got an answer (2xx, or a 4xx about the object).
    Ok,
    /// The last request failed: transport error, 5xx, 429, or 401 (credentials refused).
    Unhealthy,
    /// No request yet.
    #[default]
    Unknown,
}

impl EndpointState {
    /// `ok`, `unhealthy`, `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointState::Ok => "ok",
            EndpointState::Unhealthy => "unhealthy",
            EndpointState::Unknown => "unknown",
        }
    }
}

/// The endpoint's state with the last failure seen (which may be older than a success).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointHealth {
    /// The state after the latest request.
    pub state: EndpointState,
    /// The latest failure, if any (no secrets: method, path, status or transport error).
    pub last_error: Option<String>,
    /// When it happened (unix seconds).
    pub last_error_at: Option<u64>,
    /// `run`'s outage in progress (docs/status.md), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outage: Option<OutageDoc>,
    /// Outages since the agent started.
    #[serde(default)]
    pub outages: u64,
}

/// `endpoint.outage`: the endpoint fails as a whole (a refused token, TLS, DNS, a wall
/// of 5xx); counted, said once in the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutageDoc {
    /// The cause in words, naming the config key to fix.
    pub cause: String,
    /// Since when (unix seconds).
    pub since: u64,
    /// Failed requests during it.
    pub failures: u64,
    /// Retries during it.
    pub retries: u32,
}

impl EndpointHealth {
    /// Records an answer that shows the endpoint works.
    pub fn ok(&mut self) {
        self.state = EndpointState::Ok;
    }

    /// Takes the state from `run`'s outage watch (`outage`: the one in progress):
    /// unhealthy while there is one (one failed request is not an outage), else ok once
    /// anything was answered.
    pub fn stamp(&mut self, outage: Option<OutageDoc>, outages: u64) {
        self.outages = outages;
        if outage.is_some() {
            self.state = EndpointState::Unhealthy;
        } else if self.state == EndpointState::Unhealthy {
            self.state = EndpointState::Ok;
        }
        self.outage = outage;
    }

    /// Records a failure.
    pub fn failed(&mut self, why: String) {
        self.state = EndpointState::Unhealthy;
        self.last_error = Some(why);
        self.last_error_at = Some(unix(SystemTime::now()));
    }
}

/// The change feed's link: which feed, whether its search (or last poll) is up, and when
/// the directory last sent something. Shared by the feed task and the publisher.
#[derive(Debug, Default)]
pub struct FeedLink {
    kind: Mutex<Option<(&'static str, Option<Duration>)>>,
    connected: AtomicBool,
    last_event: Mutex<Option<SystemTime>>,
}

impl FeedLink {
    /// Names the feed (`syncrepl`, `dirsync`, ...) and, for a polling feed, its interval.
    pub fn set_kind(&self, kind: &'static str, poll_interval: Option<Duration>) {
        *self.kind.lock().unwrap_or_else(|p| p.into_inner()) = Some((kind, poll_interval));
    }

    /// The directory answered the feed: connected, and an event now.
    pub fn up(&self) {
        self.connected.store(true, Ordering::SeqCst);
        *self.last_event.lock().unwrap_or_else(|p| p.into_inner()) = Some(SystemTime::now());
    }

    /// The feed's search ended (or its poll failed).
    pub fn down(&self) {
        self.connected.store(false, Ordering::SeqCst);
    }

    /// A guard that marks the link down when dropped: a feed task holds it, so the link is
    /// down as soon as the task ends or is cancelled.
    pub fn guard(self: &Arc<Self>) -> LinkGuard {
        LinkGuard(self.clone())
    }

    /// What the link looks like now.
    pub fn facts(&self) -> FeedFacts {
        let kind = *self.kind.lock().unwrap_or_else(|p| p.into_inner());
        FeedFacts {
            kind: kind.map(|(k, _)| k.to_string()),
            connected: self.connected.load(Ordering::SeqCst),
            last_event_at: self
                .last_event
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .map(unix),
            poll_interval_secs: kind.and_then(|(_, p)| p).map(|d| d.as_secs()),
        }
    }
}

/// Marks a [`FeedLink`] down on drop.
#[derive(Debug)]
pub struct LinkGuard(Arc<FeedLink>);

impl Drop for LinkGuard {
    fn drop(&mut self) {
        self.0.down();
    }
}

/// A feed link as published.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedFacts {
    /// `syncrepl`, `dirsync`, `usn`, `timestamp`; none before the feed is chosen.
    pub kind: Option<String>,
    /// The search is up (syncrepl) or the last poll was answered (polling feeds).
    pub connected: bool,
    /// When the directory last sent the feed something (unix seconds).
    pub last_event_at: Option<u64>,
    /// A polling feed's interval.
    pub poll_interval_secs: Option<u64>,
}

/// What a running agent publishes in `state_dir/runtime.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runtime {
    /// Format version (1).
    pub v: u8,
    /// The agent's process id.
    pub pid: u32,
    /// When this process started following (unix seconds).
    pub started_at: u64,
    /// When this file was written (unix seconds).
    pub updated_at: u64,
    /// `starting`, `full-pass`, `following`, `standby`, `degraded`.
    pub phase: String,
    /// The change feed.
    pub feed: FeedFacts,
    /// The SCIM endpoint.
    pub endpoint: EndpointHealth,
    /// The last error of the run loop (a failed pass, a stopped feed).
    pub last_error: Option<String>,
    /// Since when a full pass has been owed with none running (unix seconds).
    pub resync_waiting_since: Option<u64>,
}

impl Runtime {
    /// The same state, ignoring the write time (to write on change).
    pub fn same_as(&self, other: &Runtime) -> bool {
        Runtime {
            updated_at: 0,
            ..self.clone()
        } == Runtime {
            updated_at: 0,
            ..other.clone()
        }
    }
}

/// The status document (`idrelay status --json`; docs/status.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Document {
    /// `agent.id`.
    pub agent: String,
    /// No problem found (see [`problems`]).
    pub healthy: bool,
    /// Why it is not healthy, one sentence each (empty when healthy).
    pub problems: Vec<String>,
    /// A `run` holds the state directory's lock.
    pub running: bool,
    /// The running agent's process id.
    pub pid: Option<u32>,
    /// The running agent's phase.
    pub phase: Option<String>,
    /// Age of the running agent's runtime file.
    pub runtime_age_secs: Option<u64>,
    /// The change feed.
    pub feed: FeedDoc,
    /// The SCIM endpoint.
    pub endpoint: EndpointDoc,
    /// The change queue.
    pub queue: QueueDoc,
    /// Deletes held for `approve-deletes`.
    pub held_deletes: u64,
    /// Deletes waiting in `run`'s settle window (or admitted and not yet sent).
    pub settling_deletes: u64,
    /// Objects the endpoint refused, parked with a backoff (`idrelay retry` sends them now).
    pub parked: Vec<ParkedDoc>,
    /// Feed deletes that matched nothing provisioned (since the count was reset).
    pub unmatched_deletes: u64,
    /// The last completed full pass.
    pub last_full_pass: LastPass,
    /// The run loop's last error.
    pub last_error: Option<String>,
}

/// One parked object in the [`Document`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ParkedDoc {
    /// `user` or `group`.
    pub kind: String,
    /// Where the directory holds it.
    pub dn: String,
    /// The endpoint's answer (status and detail).
    pub reason: String,
    /// Tries in all.
    pub attempts: u32,
    /// Unix seconds of the first failed try.
    pub first_failed_at: u64,
    /// Seconds until the next try (0: due now).
    pub next_try_in_secs: u64,
}

/// `feed` in the [`Document`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FeedDoc {
    /// The feed's kind, when an agent runs.
    pub kind: Option<String>,
    /// Its search is up / its last poll was answered.
    pub connected: bool,
    /// Seconds since the directory last sent the feed something.
    pub last_event_age_secs: Option<u64>,
    /// A polling feed's interval.
    pub poll_interval_secs: Option<u64>,
}

/// `endpoint` in the [`Document`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EndpointDoc {
    /// `ok`, `unhealthy`, `unknown` (always `unknown` when no agent runs).
    pub state: EndpointState,
    /// The latest failure.
    pub last_error: Option<String>,
    /// Its age.
    pub last_error_age_secs: Option<u64>,
    /// The outage in progress (the endpoint fails as a whole): its cause naming the key
    /// to fix, since when, failed requests and retries so far.
    pub outage: Option<OutageDoc>,
    /// Seconds the outage in progress has lasted.
    pub unhealthy_secs: Option<u64>,
    /// Outages since the running agent started.
    pub outages: u64,
    /// Attributes the last full pass saw the endpoint accept and not keep as sent
    /// (`user title (dropped)`, `user displayName (rewritten)`).
    pub not_kept: Vec<String>,
}

/// `queue` in the [`Document`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueueDoc {
    /// Changes not yet acknowledged.
    pub depth: u64,
    /// Bytes on disk.
    pub bytes: u64,
    /// The bound on them.
    pub max_bytes: u64,
    /// Age of the oldest pending change.
    pub oldest_age_secs: Option<u64>,
    /// A full pass is owed.
    pub resync_owed: bool,
    /// Why.
    pub resync_reason: Option<String>,
    /// How long it has been owed with no pass running (from the running agent).
    pub resync_waiting_secs: u64,
}

/// `last_full_pass` in the [`Document`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LastPass {
    /// Unix seconds.
    pub at: Option<u64>,
    /// Its age.
    pub age_secs: Option<u64>,
}

impl Document {
    /// The live part of the document from a runtime file `age` seconds old (None: no live
    /// agent, the file is ignored), at unix time `now`.
    pub fn apply_runtime(&mut self, rt: Option<(&Runtime, u64)>, now: u64) {
        let Some((rt, age)) = rt else {
            return;
        };
        self.pid = Some(rt.pid);
        self.phase = Some(rt.phase.clone());
        self.runtime_age_secs = Some(age);
        self.feed = FeedDoc {
            kind: rt.feed.kind.clone(),
            connected: rt.feed.connected,
            last_event_age_secs: rt.feed.last_event_at.map(|t| now.saturating_sub(t)),
            poll_interval_secs: rt.feed.poll_interval_secs,
        };
        self.endpoint = EndpointDoc {
            state: rt.endpoint.state,
            last_error: rt.endpoint.last_error.clone(),
            last_error_age_secs: rt.endpoint.last_error_at.map(|t| now.saturating_sub(t)),
            outage: rt.endpoint.outage.clone(),
            unhealthy_secs: rt
                .endpoint
                .outage
                .as_ref()
                .map(|o| now.saturating_sub(o.since)),
            outages: rt.endpoint.outages,
            not_kept: std::mem::take(&mut self.endpoint.not_kept),
        };
        self.queue.resync_waiting_secs = rt
            .resync_waiting_since
            .map(|t| now.saturating_sub(t))
            .unwrap_or(0);
        self.last_error = rt.last_error.clone();
    }

    /// Fills in `problems` and `healthy` from the other fields.
    pub fn judge(mut self) -> Document {
        self.problems = problems(&self);
        self.healthy = self.problems.is_empty();
        self
    }
}

/// The health rule (docs/status.md): why the document's agent is not healthy; empty when
/// it is.
pub fn problems(d: &Document) -> Vec<String> {
    let mut out = Vec::new();
    if !d.running {
        out.push("agent not running (no `idrelay run` holds the state directory)".to_string());
        return out;
    }
    let why = |e: &Option<String>| e.as_ref().map(|e| format!(": {e}")).unwrap_or_default();
    match (d.runtime_age_secs, d.phase.as_deref()) {
        (None, _) | (_, None) => out.push("agent starting (no runtime state yet)".into()),
        (Some(age), _) if age > RUNTIME_STALE_SECS => out.push(format!(
            "the agent has not updated its runtime state for {age} s (hung?)"
        )),
        (_, Some("starting")) => out.push(format!(
            "agent starting: the directory is not reached yet{}",
            why(&d.last_error)
        )),
        (_, Some("degraded")) => {
            out.push(format!("the last full pass failed{}", why(&d.last_error)))
        }
        (_, Some("following")) => {
            let kind = d.feed.kind.as_deref().unwrap_or("change feed");
            if !d.feed.connected {
                out.push(format!(
                    "the change feed ({kind}) is not connected{}",
                    why(&d.last_error)
                ));
            } else if let Some(every) = d.feed.poll_interval_secs {
                let late = every * POLL_LATE_INTERVALS + POLL_SLACK_SECS;
                match d.feed.last_event_age_secs {
                    Some(age) if age <= late => {}
                    age => out.push(format!(
                        "the {kind} feed has not polled for {} (interval {every} s)",
                        age.map(|a| format!("{a} s")).unwrap_or("ever".into())
                    )),
                }
            }
        }
        // A full pass reads the directory itself; a standby agent follows nothing.
        _ => {}
    }
    if d.endpoint.state == EndpointState::Unhealthy {
        match &d.endpoint.outage {
            Some(o) => out.push(format!(
                "the SCIM endpoint is unhealthy: {} (for {} s, {} retries)",
                o.cause,
                d.endpoint.unhealthy_secs.unwrap_or(0),
                o.retries
            )),
            None => out.push(format!(
                "the SCIM endpoint is unhealthy{}",
                why(&d.endpoint.last_error)
            )),
        }
    }
    if d.queue.resync_owed && d.queue.resync_waiting_secs > RESYNC_GRACE_SECS {
        out.push(format!(
            "a full pass is owed ({}) and has not started for {} s",
            d.queue.resync_reason.as_deref().unwrap_or("unknown reason"),
            d.queue.resync_waiting_secs
        ));
    }
    if d.held_deletes > 0 {
        out.push(format!(
            "{} deletes are held for approval (`idrelay approve-deletes`)",
            d.held_deletes
        ));
    }
    out
}

/// The document in node_exporter's textfile format: one gauge a line, no labels.
pub fn render_prom(d: &Document) -> String {
    let b = |v: bool| u64::from(v);
    let metrics: [(&str, &str, u64); 8] = [
        (
            "idrelay_healthy",
            "1 when idrelay status would say healthy (docs/status.md), else 0.",
            b(d.healthy),
        ),
        (
            "idrelay_feed_connected",
            "1 when the change feed's search is up or its last poll was answered.",
            b(d.feed.connected),
        ),
        (
            "idrelay_endpoint_up",
            "1 when the SCIM endpoint answered the latest request, else 0 (failing or not asked yet).",
            b(d.endpoint.state == EndpointState::Ok),
        ),
        (
            "idrelay_queue_depth",
            "Changes in the queue not yet acknowledged.",
            d.queue.depth,
        ),
        (
            "idrelay_resync_owed",
            "1 when a full pass is owed.",
            b(d.queue.resync_owed),
        ),
        (
            "idrelay_held_deletes",
            "Deletes held for approval (idrelay approve-deletes).",
            d.held_deletes,
        ),
        (
            "idrelay_unmatched_deletes",
            "Feed deletes that matched no provisioned object.",
            d.unmatched_deletes,
        ),
        (
            "idrelay_last_full_pass_timestamp_seconds",
            "Unix time of the last completed full pass (0: none yet).",
            d.last_full_pass.at.unwrap_or(0),
        ),
    ];
    let mut out = String::new();
    for (name, help, value) in metrics {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
        ));
    }
    out
}

/// Replaces `path` atomically with `bytes`, readable by the owner only (0600), never
/// through a symlink ([`crate::state_dir::replace`]).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    crate::state_dir::replace(path, bytes, crate::state_dir::Durability::Rename)
}

/// Whether a process holds the lock file at `path` (a missing file: no). Probes with a
/// shared lock, released at once; the holder's exclusive lock makes it fail.
pub fn lock_held(path: &Path) -> bool {
    let Ok(f) = crate::state_dir::open(path) else {
        return false;
    };
    match f.try_lock_shared() {
        Ok(()) => {
            let _ = f.unlock();
            false
        }
        Err(TryLockError::WouldBlock) => true,
        Err(TryLockError::Error(_)) => false,
    }
}

/// The runtime file of `state_dir` with its age at `now`, if a `run` holds the lock (a
/// file left by a dead agent is ignored).
pub fn read_runtime(state_dir: &Path, now: u64) -> (bool, Option<(Runtime, u64)>) {
    if !lock_held(&state_dir.join(LOCK_FILE)) {
        return (false, None);
    }
    let rt = crate::state_dir::read(&state_dir.join(RUNTIME_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<Runtime>(&b).ok())
        .filter(|r| r.v == 1)
        .map(|r| {
            let age = now.saturating_sub(r.updated_at);
            (r, age)
        });
    (true, rt)
}

/// What the run loop, the relay and the heartbeat share.
#[derive(Debug)]
pub struct AgentState {
    active: AtomicBool,
    lease_until: Mutex<Option<Instant>>,
    relay: bool,
    /// What the agent is doing (`starting`, `full-pass`, `following`, `standby`, `degraded`).
    pub phase: Mutex<&'static str>,
    /// Objects provisioned since start.
    pub provisioned: AtomicU64,
    /// Objects that failed since start.
    pub failed: AtomicU64,
    /// The last error worth telling the cloud about.
    pub last_error: Mutex<Option<String>>,
    /// When the relay last reached the hub.
    pub last_heartbeat: Mutex<Option<Instant>>,
    /// The change feed's link (set by the feed tasks, published for `status`).
    pub feed: std::sync::Arc<FeedLink>,
    started: Instant,
}

impl AgentState {
    /// State of an agent; without a relay it is always active.
    pub fn new(relay: bool) -> AgentState {
        AgentState {
            active: AtomicBool::new(!relay),
            lease_until: Mutex::new(None),
            relay,
            phase: Mutex::new("starting"),
            provisioned: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_error: Mutex::new(None),
            last_heartbeat: Mutex::new(None),
            feed: std::sync::Arc::default(),
            started: Instant::now(),
        }
    }

    /// Whether this agent may provision now (lease held, or no relay).
    pub fn is_active(&self) -> bool {
        if !self.relay {
            return true;
        }
        let until = *self.lease_until.lock().unwrap_or_else(|p| p.into_inner());
        let active = self.active.load(Ordering::SeqCst);
        active && until.is_some_and(|t| Instant::now() < t)
    }

    /// Records the hub's answer about the lease.
    pub fn set_lease(&self, active: bool, ttl: Duration) {
        let was = self.is_active();
        let first = !self.lease_known();
        self.active.store(active, Ordering::SeqCst);
        *self.lease_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + ttl);
        if was != active || first {
            log::info!(
                "relay: this agent is now {}",
                if active {
                    "ACTIVE (provisions changes)"
                } else {
                    "STANDBY (another agent of the group provisions)"
                }
            );
        }
    }

    /// Turns a lease that ran out without a renewal into standby; true when it just did.
    pub fn lapse_lease(&self) -> bool {
        let lapsed = !self.is_active() && self.active.load(Ordering::SeqCst);
        if lapsed {
            self.active.store(false, Ordering::SeqCst);
        }
        lapsed
    }

    /// Whether the hub has answered about the lease yet (always true without a relay).
    pub fn lease_known(&self) -> bool {
        !self.relay
            || self
                .lease_until
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some()
    }

    /// Sets the phase.
    pub fn set_phase(&self, p: &'static str) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = p;
    }

    /// Records an error for the heartbeat.
    pub fn set_error(&self, e: impl Into<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.into());
    }

    /// Seconds since start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Document {
        Document {
            agent: "a".into(),
            healthy: false,
            problems: Vec::new(),
            running: true,
            pid: Some(7),
            phase: Some("following".into()),
            runtime_age_secs: Some(1),
            feed: FeedDoc {
                kind: Some("syncrepl".into()),
                connected: true,
                last_event_age_secs: Some(500),
                poll_interval_secs: None,
            },
            endpoint: EndpointDoc {
                state: EndpointState::Ok,
                ..EndpointDoc::default()
            },
            queue: QueueDoc::default(),
            held_deletes: 0,
            settling_deletes: 0,
            parked: Vec::new(),
            unmatched_deletes: 3,
            last_full_pass: LastPass {
                at: Some(1_700_000_000),
                age_secs: Some(10),
            },
            last_error: None,
        }
    }

    #[test]
    fn an_outage_is_a_problem_naming_its_cause_and_retries_and_ends_with_it() {
        let mut h = EndpointHealth::default();
        h.ok();
        h.failed("SCIM POST /Users answered 401".into());
        let outage = OutageDoc {
            cause: "the SCIM endpoint refuses our token (401): check scim.token_file".into(),
            since: 900,
            failures: 9,
            retries: 4,
        };
        h.stamp(Some(outage), 1);
        assert_eq!(h.state, EndpointState::Unhealthy);
        let rt = Runtime {
            v: 1,
            pid: 42,
            started_at: 800,
            updated_at: 990,
            phase: "degraded".into(),
            feed: FeedFacts::default(),
            endpoint: h.clone(),
            last_error: None,
            resync_waiting_since: None,
        };
        let mut d = doc();
        d.apply_runtime(Some((&rt, 1)), 1000);
        assert_eq!(d.endpoint.unhealthy_secs, Some(100));
        let d = d.judge();
        assert!(
            d.problems
                .iter()
                .any(|p| p.contains("check scim.token_file (for 100 s, 4 retries)")),
            "{:?}",
            d.problems
        );
        // The outage over: ok again, the count kept.
        h.stamp(None, 1);
        assert_eq!(
            (h.state, h.outage.is_none(), h.outages),
            (EndpointState::Ok, true, 1)
        );
    }

    #[test]
    fn a_following_agent_with_its_feed_up_is_healthy() {
        let d = doc().judge();
        assert!(d.healthy, "{:?}", d.problems);
        // An idle syncrepl feed is fine however old its last event; unmatched deletes are
        // reported, not a health problem.
        assert!(d.problems.is_empty());
    }

    type Breaks = fn(&mut Document);

    #[test]
    fn each_broken_field_is_named() {
        let cases: Vec<(Breaks, &str)> = vec![
            (|d| d.running = false, "agent not running"),
            (|d| d.runtime_age_secs = None, "no runtime state"),
            (|d| d.runtime_age_secs = Some(61), "has not updated"),
            (
                |d| d.phase = Some("starting".into()),
                "directory is not reached",
            ),
            (|d| d.phase = Some("degraded".into()), "full pass failed"),
            (|d| d.feed.connected = false, "not connected"),
            (
                |d| {
                    d.endpoint.state = EndpointState::Unhealthy;
                    d.endpoint.last_error = Some("SCIM GET /Users answered 401".into());
                },
                "unhealthy: SCIM GET /Users answered 401",
            ),
            (
                |d| {
                    d.queue.resync_owed = true;
                    d.queue.resync_waiting_secs = 61;
                },
                "full pass is owed",
            ),
            (|d| d.held_deletes = 2, "2 deletes are held"),
        ];
        for (break_it, says) in cases {
            let mut d = doc();
            break_it(&mut d);
            let d = d.judge();
            assert!(!d.healthy, "{says}");
            assert!(
                d.problems.iter().any(|p| p.contains(says)),
                "{says}: {:?}",
                d.problems
            );
        }
    }

    #[test]
    fn what_is_normal_is_not_a_problem() {
        let fine: Vec<fn(&mut Document)> = vec![
            // A full pass runs: the feed is down meanwhile, the pass is owed.
            |d| {
                d.phase = Some("full-pass".into());
                d.feed.connected = false;
                d.queue.resync_owed = true;
            },
            // Owed, but only for a moment.
            |d| {
                d.queue.resync_owed = true;
                d.queue.resync_waiting_secs = 5;
            },
            // Standby: another agent of the group provisions.
            |d| {
                d.phase = Some("standby".into());
                d.feed.connected = false;
            },
            // Not asked yet.
            |d| d.endpoint.state = EndpointState::Unknown,
            // A polling feed that answered within three intervals.
            |d| {
                d.feed.poll_interval_secs = Some(60);
                d.feed.last_event_age_secs = Some(150);
            },
        ];
        for f in fine {
            let mut d = doc();
            f(&mut d);
            let d = d.judge();
            assert!(d.healthy, "{:?}", d.problems);
        }
    }

    #[test]
    fn a_polling_feed_that_stopped_answering_is_late() {
        let mut d = doc();
        d.feed.poll_interval_secs = Some(60);
        d.feed.last_event_age_secs = Some(60 * 3 + 31);
        let d = d.judge();
        assert!(
            d.problems[0].contains("has not polled for 211 s"),
            "{:?}",
            d.problems
        );
    }

    #[test]
    fn the_runtime_file_fills_the_live_fields() {
        let rt = Runtime {
            v: 1,
            pid: 42,
            started_at: 900,
            updated_at: 990,
            phase: "following".into(),
            feed: FeedFacts {
                kind: Some("syncrepl".into()),
                connected: true,
                last_event_at: Some(980),
                poll_interval_secs: None,
            },
            endpoint: EndpointHealth {
                state: EndpointState::Ok,
                last_error: Some("old".into()),
                last_error_at: Some(950),
                ..EndpointHealth::default()
            },
            last_error: None,
            resync_waiting_since: Some(995),
        };
        let mut d = doc();
        d.apply_runtime(Some((&rt, 10)), 1000);
        assert_eq!(d.pid, Some(42));
        assert_eq!(d.feed.last_event_age_secs, Some(20));
        assert_eq!(d.endpoint.last_error_age_secs, Some(50));
        assert_eq!(d.runtime_age_secs, Some(10));
        assert_eq!(d.queue.resync_waiting_secs, 5);
        let mut later = rt.clone();
        later.updated_at = 2000;
        assert!(rt.same_as(&later));
        later.feed.connected = false;
        assert!(!rt.same_as(&later));
    }

    #[test]
    fn the_textfile_has_help_type_and_one_sample_per_metric() {
        let text = render_prom(&doc().judge());
        let mut names = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                names.push(rest.split(' ').next().unwrap().to_string());
                continue;
            }
            if line.starts_with("# TYPE ") {
                assert!(line.ends_with(" gauge"), "{line}");
                continue;
            }
            let (name, value) = line.split_once(' ').expect(line);
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert_eq!(names.last().map(String::as_str), Some(name), "{line}");
        }
        for want in [
            "idrelay_healthy 1",
            "idrelay_feed_connected 1",
            "idrelay_endpoint_up 1",
            "idrelay_queue_depth 0",
            "idrelay_held_deletes 0",
            "idrelay_last_full_pass_timestamp_seconds 1700000000",
        ] {
            assert!(text.lines().any(|l| l == want), "{want} in\n{text}");
        }
    }

    #[test]
    fn the_feed_link_goes_down_with_its_guard() {
        let link = Arc::new(FeedLink::default());
        link.set_kind("usn", Some(Duration::from_secs(30)));
        {
            let _g = link.guard();
            link.up();
            assert!(link.facts().connected);
        }
        let f = link.facts();
        assert!(!f.connected);
        assert!(f.last_event_at.is_some());
        assert_eq!(f.poll_interval_secs, Some(30));
        assert_eq!(f.kind.as_deref(), Some("usn"));
    }

    #[test]
    fn private_files_are_replaced_whole_with_mode_0600() {
        let dir = std::env::temp_dir().join(format!("idrelay-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.prom");
        write_private(&p, b"one\n").unwrap();
        write_private(&p, b"two\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        // No lock file: nobody runs; a held lock is seen.
        assert!(!lock_held(&dir.join(LOCK_FILE)));
        let f = std::fs::File::create(dir.join(LOCK_FILE)).unwrap();
        f.lock().unwrap();
        assert!(lock_held(&dir.join(LOCK_FILE)));
        drop(f);
        assert!(!lock_held(&dir.join(LOCK_FILE)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
