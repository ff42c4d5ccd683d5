//! Everything the hub knows, in memory: per agent a queue of requests (envelopes) waiting
//! for the agent's answer, its polls and last heartbeat; per group the lease; the answers
//! to operator commands. Pure: no sockets, no clock (every call takes `now`).
//!
//! Invariants:
//! * A queued request stays queued until the agent answers it, the operator who asked for
//!   it gives up (a SCIM forward that timed out is withdrawn), or never. It is handed to a
//!   poll when it was never delivered or when its last delivery is `redeliver` old
//!   (at-least-once; the agent answers a repeated id from its cache).
//! * Per agent at most `queue_len` requests and `queue_bytes` of envelopes are queued;
//!   beyond that [`EnqueueError::QueueFull`] (the server answers 503).
//! * A poll answer holds at most `batch_len` envelopes and, past the first, at most
//!   `batch_bytes`, oldest first.
//! * An answer is accepted only from the agent the request was queued for; an unknown or
//!   repeated id is ignored.
//! * Request ids are `r-<boot>-<seq>`: `boot` is random per hub start, so a restarted hub
//!   never reuses an id an agent still has a cached answer for.
//! * At most `results` command answers are kept for `GET /v1/requests/{id}`, oldest
//!   dropped first; each answer body is capped at [`MAX_RESULT_BYTES`].
//! * Every change to what outlives the process (commands queued, delivered, handed back,
//!   answered; answers dropped; heartbeats; leases) is recorded in a journal, in order, for
//!   the server to write to the [`super::store::Store`] ([`HubState::take_journal`]); a
//!   new process is rebuilt from the store's snapshot ([`HubState::restore`]). SCIM
//!   forwards are never kept (their operator is gone with the process); beside other
//!   replicas ([`HubState::share_forwards`]) they are journaled as
//!   [`super::shared::ForwardChange`]s, which a shared store writes only while their
//!   caller waits.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use serde_json::value::RawValue;
use serde_json::{json, Value};
use smol::channel::Sender;

use crate::relay::protocol::Envelope;

use super::lease::{self, Grant, Lease};
use super::listing::{self, AgentRow, Digest, Fleet, Holder, ListQuery, Order, Problems};
use super::shared::ForwardChange;
use super::store::{Change, Snapshot, StoredLease, StoredRequest, StoredResult, StoredSeen};

// Beside other replicas on one database: applying their changes (not journaled).
#[path = "state_shared.rs"]
mod shared;

/// Largest command answer body kept for `GET /v1/requests/{id}`.
pub const MAX_RESULT_BYTES: usize = 256 * 1024;

/// The hub's timing settings.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// An unanswered request is handed out again after this long.
    pub redeliver: Duration,
    /// Longest a poll is held; an agent that has not polled for twice this is "not connected".
    pub poll_wait: Duration,
    /// Lease length.
    pub lease_ttl: Duration,
}

/// Size bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Queued requests per agent.
    pub queue_len: usize,
    /// Queued envelope bytes per agent.
    pub queue_bytes: usize,
    /// Envelopes per poll answer.
    pub batch_len: usize,
    /// Envelope bytes per poll answer (the first envelope always goes).
    pub batch_bytes: usize,
    /// Command answers kept.
    pub results: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            queue_len: 1000,
            queue_bytes: 16 << 20,
            batch_len: 100,
            batch_bytes: 4 << 20,
            results: 1000,
        }
    }
}

/// An operator command (docs/protocol.md, `kind: "command"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A full pass as soon as possible.
    Resync,
    /// Provision one object (a DN or an anchor) now.
    Provision(String),
    /// Release deletions held by the threshold.
    ApproveDeletes,
    /// A new sync profile (TOML text), validated by the agent.
    SetProfile(String),
}

impl Command {
    /// Reads `{"command": ..., "target"/"profile": ...}` from the operator.
    pub fn parse(v: &Value) -> Result<Command, String> {
        let name = v
            .get("command")
            .and_then(Value::as_str)
            .ok_or("`command` is missing or not a string")?;
        let text = |k: &str| -> Result<String, String> {
            match v.get(k).and_then(Value::as_str) {
                Some(s) if !s.trim().is_empty() => Ok(s.to_string()),
                _ => Err(format!("command `{name}` needs `{k}` (a non-empty string)")),
            }
        };
        match name {
            "resync" => Ok(Command::Resync),
            "provision" => Ok(Command::Provision(text("target")?)),
            "approve-deletes" => Ok(Command::ApproveDeletes),
            "set-profile" => Ok(Command::SetProfile(text("profile")?)),
            other => Err(format!(
                "unknown command `{}`: use resync, provision, approve-deletes or set-profile",
                other.chars().take(64).collect::<String>()
            )),
        }
    }

    /// The command's wire name.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Resync => "resync",
            Command::Provision(_) => "provision",
            Command::ApproveDeletes => "approve-deletes",
            Command::SetProfile(_) => "set-profile",
        }
    }
}

/// What a request asks the agent to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// An RFC 7644 request against the branch directory.
    Scim {
        /// HTTP method.
        method: String,
        /// Path below the SCIM base (`/Users/...`), percent-encoding kept.
        path: String,
        /// Raw query string (may be empty).
        query: String,
        /// JSON body, `Null` when none.
        body: Value,
    },
    /// An operator command.
    Command(Command),
}

impl Work {
    /// The envelope for this work under `id`: the agent's own type, so the wire format has
    /// one definition ([`crate::relay::protocol`]).
    pub fn envelope(&self, id: &str) -> Value {
        let mut e = Envelope {
            id: id.to_string(),
            kind: String::new(),
            method: None,
            path: None,
            query: None,
            body: None,
            command: None,
            target: None,
            profile: None,
        };
        match self {
            Work::Scim {
                method,
                path,
                query,
                body,
            } => {
                e.kind = "scim".into();
                e.method = Some(method.clone());
                e.path = Some(path.clone());
                e.query = Some(query.clone());
                e.body = Some(body.clone());
            }
            Work::Command(c) => {
                e.kind = "command".into();
                e.command = Some(c.name().to_string());
                match c {
                    Command::Provision(t) => e.target = Some(t.clone()),
                    Command::SetProfile(p) => e.profile = Some(p.clone()),
                    Command::Resync | Command::ApproveDeletes => {}
                }
            }
        }
        serde_json::to_value(e).unwrap_or(Value::Null)
    }
}

/// The agent's answer to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// HTTP-like status.
    pub status: u16,
    /// The JSON body as the agent sent it (validated, never parsed into a tree, so a large
    /// answer costs its size once); `None`: none (or `null`).
    pub body: Option<String>,
}

impl Reply {
    /// A reply with `body` (`Null`: none).
    pub fn json(status: u16, body: &Value) -> Reply {
        Reply {
            status,
            body: (!body.is_null()).then(|| body.to_string()),
        }
    }
}

/// Why a request could not be queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnqueueError {
    /// No such agent in the config.
    UnknownAgent,
    /// The agent's queue is at its bound.
    QueueFull {
        /// Requests queued.
        len: usize,
        /// Envelope bytes queued.
        bytes: usize,
    },
    /// The hub is shutting down.
    Stopping,
}

/// What became of an answer from an agent.
#[derive(Debug, PartialEq, Eq)]
pub enum Answered {
    /// No such request queued for this agent (unknown, withdrawn, or already answered).
    Ignored,
    /// Passed to the operator waiting on a SCIM forward.
    Forwarded,
    /// The answer to a SCIM forward queued through another replica: journaled for it.
    Relayed,
    /// Kept as a command result.
    Stored,
}

/// One poll's worth of envelopes.
#[derive(Debug, Default)]
pub struct Batch {
    /// Envelopes, oldest first.
    pub envelopes: Vec<Value>,
    /// When the next delivered-but-unanswered request becomes due for re-delivery.
    pub next_due: Option<Instant>,
}

/// A heartbeat's outcome.
#[derive(Debug)]
pub struct Beat {
    /// The lease decision.
    pub grant: Grant,
    /// The agent's configured group.
    pub group: String,
    /// Set once when the agent reports a different group than the config gives it.
    pub group_mismatch: Option<String>,
}

struct Queued {
    id: String,
    envelope: Value,
    bytes: usize,
    command: Option<&'static str>,
    enqueued: Instant,
    delivered: Option<Instant>,
    deliveries: u32,
    reply_to: Option<Sender<Reply>>,
}

struct Seen {
    instance: String,
    at: Instant,
    /// The heartbeat as compact JSON text: a tenth of its `Value` tree's memory, for every
    /// agent; written into `GET /v1/agents` as is, never parsed again.
    body: Box<RawValue>,
    /// What the listing's health needs of it, taken when it arrived.
    digest: Digest,
}

impl Seen {
    /// A heartbeat kept as text (the store's, or another replica's): its digest is taken
    /// again from the text, so its health reads as when it arrived.
    fn from_text(instance: String, at: Instant, text: String) -> Seen {
        let parsed = serde_json::from_str(&text).unwrap_or(Value::Null);
        Seen {
            instance,
            at,
            digest: Digest::of(&parsed),
            body: raw_or_null(text),
        }
    }
}

struct Slot {
    group: String,
    queue: VecDeque<Queued>,
    queued_bytes: usize,
    last_poll: Option<Instant>,
    polls_open: u32,
    /// The last poll ended because its client went away; not connected until it polls.
    poll_gone: bool,
    seen: Option<Seen>,
    waiters: Vec<Sender<()>>,
    group_warned: bool,
}

/// Maps the state's monotonic instants to wall-clock milliseconds and back (what the
/// store keeps): `base` is `base_ms`.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    /// An instant.
    pub base: Instant,
    /// The same moment, ms since the Unix epoch.
    pub base_ms: u64,
}

impl WallClock {
    /// The clocks now.
    pub fn now() -> WallClock {
        let base_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        WallClock {
            base: Instant::now(),
            base_ms,
        }
    }

    /// `t` in ms since the epoch.
    pub fn ms(&self, t: Instant) -> u64 {
        match t.checked_duration_since(self.base) {
            Some(d) => self.base_ms.saturating_add(d.as_millis() as u64),
            None => self
                .base_ms
                .saturating_sub(self.base.duration_since(t).as_millis() as u64),
        }
    }

    /// The instant of `ms`; a moment the monotonic clock cannot express (before the machine
    /// started) is taken as `base`, which keeps a lease or a delivery for its full time
    /// rather than dropping it.
    pub fn instant(&self, ms: u64) -> Instant {
        if ms >= self.base_ms {
            self.base + Duration::from_millis(ms - self.base_ms)
        } else {
            self.base
                .checked_sub(Duration::from_millis(self.base_ms - ms))
                .unwrap_or(self.base)
        }
    }
}

/// The wire name of a command known to this hub (`"?"` for one that is not).
fn command_name(s: &str) -> &'static str {
    ["resync", "provision", "approve-deletes", "set-profile"]
        .into_iter()
        .find(|c| *c == s)
        .unwrap_or("?")
}

/// What [`HubState::restore`] took back.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Commands queued.
    pub requests: usize,
    /// Command answers.
    pub results: usize,
    /// Rows of agents or groups no longer in the config, left out.
    pub dropped: usize,
}

struct CommandResult {
    agent: String,
    command: &'static str,
    status: u16,
    body: Value,
}

impl CommandResult {
    /// An answer kept in the store (restored, or recorded through another replica).
    fn from_stored(r: &StoredResult) -> CommandResult {
        CommandResult {
            agent: r.agent.clone(),
            command: command_name(&r.command),
            status: r.status,
            body: serde_json::from_str(&r.body).unwrap_or(Value::Null),
        }
    }
}

/// The hub's memory.
pub struct HubState {
    timing: Timing,
    limits: Limits,
    agents: BTreeMap<String, Slot>,
    /// The agents by (group, id), for the paged listing.
    order: Order,
    leases: HashMap<String, Option<Lease>>,
    results: HashMap<String, CommandResult>,
    results_order: VecDeque<String>,
    boot: String,
    seq: u64,
    stopping: bool,
    clock: WallClock,
    journal: Vec<Change>,
    /// Beside other replicas: how long a forward's caller waits (forwards are journaled).
    shared_forwards: Option<Duration>,
}

impl HubState {
    /// State for `agents` (id, group), ids `r-<boot>-<n>`.
    pub fn new(
        agents: impl IntoIterator<Item = (String, String)>,
        timing: Timing,
        limits: Limits,
        boot: &str,
    ) -> HubState {
        let agents: BTreeMap<String, Slot> = agents
            .into_iter()
            .map(|(id, group)| {
                (
                    id,
                    Slot {
                        group,
                        queue: VecDeque::new(),
                        queued_bytes: 0,
                        last_poll: None,
                        polls_open: 0,
                        poll_gone: false,
                        seen: None,
                        waiters: Vec::new(),
                        group_warned: false,
                    },
                )
            })
            .collect();
        let order = Order::new(agents.iter().map(|(id, s)| (id.as_str(), s.group.as_str())));
        HubState {
            timing,
            limits,
            agents,
            order,
            leases: HashMap::new(),
            results: HashMap::new(),
            results_order: VecDeque::new(),
            boot: boot.to_string(),
            seq: 0,
            stopping: false,
            clock: WallClock::now(),
            journal: Vec::new(),
            shared_forwards: None,
        }
    }

    /// Uses `clock` to map instants to the store's wall-clock times.
    pub fn set_clock(&mut self, clock: WallClock) {
        self.clock = clock;
    }

    /// Whether a kept request or answer (from an earlier start) has an id of `boot`.
    pub fn boot_in_use(&self, boot: &str) -> bool {
        let prefix = format!("r-{boot}-");
        self.results.keys().any(|id| id.starts_with(&prefix))
            || self
                .agents
                .values()
                .any(|s| s.queue.iter().any(|q| q.id.starts_with(&prefix)))
    }

    /// Request ids from now on are `r-<boot>-<n>`.
    pub fn set_boot(&mut self, boot: &str) {
        self.boot = boot.to_string();
    }

    /// The changes recorded since the last call, oldest first.
    pub fn take_journal(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.journal)
    }

    /// Puts `older` (a journal that could not be written) back ahead of `newer`. Of the
    /// heartbeats and leases only the last per agent and per group is kept, so a store that
    /// stays unwritable does not make the journal grow with every heartbeat.
    pub fn requeue_journal(&mut self, older: Vec<Change>, newer: Vec<Change>) {
        let mut all = older;
        all.extend(newer);
        let mut last_seen = HashMap::new();
        let mut last_lease = HashMap::new();
        for (i, c) in all.iter().enumerate() {
            match c {
                Change::Seen(s) => {
                    last_seen.insert(s.agent.clone(), i);
                }
                Change::Lease(l) => {
                    last_lease.insert(l.group.clone(), i);
                }
                _ => {}
            }
        }
        self.journal = all
            .into_iter()
            .enumerate()
            .filter(|(i, c)| match c {
                Change::Seen(s) => last_seen.get(&s.agent) == Some(i),
                Change::Lease(l) => last_lease.get(&l.group) == Some(i),
                _ => true,
            })
            .map(|(_, c)| c)
            .collect();
    }

    /// Whether changes wait to be written.
    pub fn journal_pending(&self) -> bool {
        !self.journal.is_empty()
    }

    /// Rebuilds the kept state from `snap` (at start, before any request). Rows of agents
    /// or groups the config no longer has are left out (and counted).
    pub fn restore(&mut self, snap: Snapshot) -> Restored {
        let mut done = Restored::default();
        let clock = self.clock;
        for r in snap.requests {
            let Some(slot) = self.agents.get_mut(&r.agent) else {
                done.dropped += 1;
                continue;
            };
            let envelope: Value = serde_json::from_str(&r.envelope).unwrap_or(Value::Null);
            if !envelope.is_object() {
                done.dropped += 1;
                continue;
            }
            slot.queued_bytes += r.envelope.len();
            slot.queue.push_back(Queued {
                bytes: r.envelope.len(),
                id: r.id,
                envelope,
                command: Some(command_name(&r.command)),
                enqueued: clock.instant(r.enqueued_ms),
                delivered: r.delivered_ms.map(|ms| clock.instant(ms)),
                deliveries: r.deliveries,
                reply_to: None,
            });
            done.requests += 1;
        }
        for r in snap.results {
            if !self.agents.contains_key(&r.agent) {
                done.dropped += 1;
                continue;
            }
            self.results
                .insert(r.id.clone(), CommandResult::from_stored(&r));
            self.results_order.push_back(r.id);
            done.results += 1;
        }
        for s in snap.seen {
            match self.agents.get_mut(&s.agent) {
                Some(slot) => {
                    slot.seen = Some(Seen::from_text(s.instance, clock.instant(s.at_ms), s.body))
                }
                None => done.dropped += 1,
            }
        }
        for l in snap.leases {
            if !self.agents.values().any(|s| s.group == l.group) {
                done.dropped += 1;
                continue;
            }
            self.leases.insert(
                l.group,
                Some(Lease {
                    agent: l.agent,
                    instance: l.instance,
                    renewed: clock.instant(l.renewed_ms),
                    granted: clock.instant(l.granted_ms),
                }),
            );
        }
        done
    }

    /// Whether `agent` is configured.
    pub fn knows(&self, agent: &str) -> bool {
        self.agents.contains_key(agent)
    }

    /// Beside other replicas: SCIM forwards are journaled from now on (queued, answered,
    /// given up), their callers waiting up to `timeout`.
    pub fn share_forwards(&mut self, timeout: Duration) {
        self.shared_forwards = Some(timeout);
    }

    /// Queues `work` for `agent` and wakes its polls. `reply_to` receives the answer (SCIM
    /// forwards); without it the answer is kept as a command result.
    pub fn enqueue(
        &mut self,
        agent: &str,
        work: &Work,
        reply_to: Option<Sender<Reply>>,
        now: Instant,
    ) -> Result<String, EnqueueError> {
        if self.stopping {
            return Err(EnqueueError::Stopping);
        }
        let limits = self.limits;
        let slot = self
            .agents
            .get_mut(agent)
            .ok_or(EnqueueError::UnknownAgent)?;
        let id = format!("r-{}-{:06}", self.boot, self.seq + 1);
        let envelope = work.envelope(&id);
        let bytes = envelope.to_string().len();
        if slot.queue.len() >= limits.queue_len || slot.queued_bytes + bytes > limits.queue_bytes {
            return Err(EnqueueError::QueueFull {
                len: slot.queue.len(),
                bytes: slot.queued_bytes,
            });
        }
        self.seq += 1;
        slot.queued_bytes += bytes;
        let command = match work {
            Work::Command(c) => Some(c.name()),
            Work::Scim { .. } => None,
        };
        if let (None, Some(timeout)) = (command, self.shared_forwards) {
            self.journal.push(Change::Forward(ForwardChange::Queued {
                id: id.clone(),
                agent: agent.to_string(),
                envelope: envelope.to_string(),
                timeout_ms: timeout.as_millis() as u64,
            }));
        }
        if let Some(name) = command {
            self.journal.push(Change::Queued(StoredRequest {
                id: id.clone(),
                agent: agent.to_string(),
                command: name.to_string(),
                envelope: envelope.to_string(),
                enqueued_ms: self.clock.ms(now),
                delivered_ms: None,
                deliveries: 0,
            }));
        }
        slot.queue.push_back(Queued {
            id: id.clone(),
            envelope,
            bytes,
            command,
            enqueued: now,
            delivered: None,
            deliveries: 0,
            reply_to,
        });
        for w in slot.waiters.drain(..) {
            let _ = w.try_send(());
        }
        Ok(id)
    }

    /// Takes what a poll from `agent` should carry now (marks it delivered).
    pub fn take_batch(&mut self, agent: &str, now: Instant) -> Batch {
        let redeliver = self.timing.redeliver;
        let limits = self.limits;
        let Some(slot) = self.agents.get_mut(agent) else {
            return Batch::default();
        };
        let mut batch = Batch::default();
        let mut bytes = 0usize;
        for q in slot.queue.iter_mut() {
            let due = q.delivered.is_none_or(|d| now >= d + redeliver);
            let fits = batch.envelopes.is_empty()
                || (batch.envelopes.len() < limits.batch_len
                    && bytes + q.bytes <= limits.batch_bytes);
            if due && fits {
                q.delivered = Some(now);
                q.deliveries += 1;
                bytes += q.bytes;
                if q.command.is_some() {
                    self.journal.push(Change::Delivered {
                        id: q.id.clone(),
                        at_ms: Some(self.clock.ms(now)),
                        deliveries: q.deliveries,
                    });
                }
                batch.envelopes.push(q.envelope.clone());
            } else if let Some(d) = q.delivered {
                let at = if due { now } else { d + redeliver };
                batch.next_due = Some(batch.next_due.map_or(at, |n: Instant| n.min(at)));
            }
        }
        batch
    }

    /// Registers a waiting poll of `agent`; [`HubState::enqueue`] and [`HubState::stop`]
    /// wake it.
    pub fn add_waiter(&mut self, agent: &str, tx: Sender<()>) {
        if let Some(slot) = self.agents.get_mut(agent) {
            slot.waiters.retain(|w| !w.is_closed());
            slot.waiters.push(tx);
        }
    }

    /// A poll from `agent` starts; returns whether the agent counted as connected before.
    pub fn poll_started(&mut self, agent: &str, now: Instant) -> bool {
        let was = self.connected(agent, now);
        if let Some(slot) = self.agents.get_mut(agent) {
            slot.polls_open += 1;
            slot.poll_gone = false;
            slot.last_poll = Some(now);
        }
        was
    }

    /// A held poll of `agent` found its client gone (the socket closed): the agent counts
    /// as not connected until it polls again, so forwards get a prompt 503, not a 504.
    pub fn poll_gone(&mut self, agent: &str) {
        if let Some(slot) = self.agents.get_mut(agent) {
            slot.poll_gone = true;
        }
    }

    /// Hands requests `ids` of `agent` back to the queue as never delivered (the poll that
    /// took them found its client gone before the answer was written), and wakes its polls.
    /// Returns how many were still queued.
    pub fn requeue(&mut self, agent: &str, ids: &[String]) -> usize {
        let Some(slot) = self.agents.get_mut(agent) else {
            return 0;
        };
        let mut n = 0;
        for q in slot.queue.iter_mut().filter(|q| ids.contains(&q.id)) {
            q.delivered = None;
            q.deliveries = q.deliveries.saturating_sub(1);
            n += 1;
            if q.command.is_some() || self.shared_forwards.is_some() {
                self.journal.push(Change::Delivered {
                    id: q.id.clone(),
                    at_ms: None,
                    deliveries: q.deliveries,
                });
            }
        }
        for w in slot.waiters.drain(..) {
            let _ = w.try_send(());
        }
        n
    }

    /// A poll from `agent` ended.
    pub fn poll_ended(&mut self, agent: &str, now: Instant) {
        if let Some(slot) = self.agents.get_mut(agent) {
            slot.polls_open = slot.polls_open.saturating_sub(1);
            slot.last_poll = Some(now);
        }
    }

    /// Whether `agent` has a poll open or polled within twice the longest hold.
    pub fn connected(&self, agent: &str, now: Instant) -> bool {
        self.agents
            .get(agent)
            .is_some_and(|s| self.slot_connected(s, now))
    }

    fn slot_connected(&self, s: &Slot, now: Instant) -> bool {
        s.polls_open > 0
            || (!s.poll_gone
                && s.last_poll
                    .is_some_and(|t| now.saturating_duration_since(t) <= self.timing.poll_wait * 2))
    }

    /// Seconds since `agent` last polled (`None`: never).
    pub fn last_poll_age(&self, agent: &str, now: Instant) -> Option<u64> {
        let t = self.agents.get(agent)?.last_poll?;
        Some(now.saturating_duration_since(t).as_secs())
    }

    /// Takes `agent`'s answer to request `id`.
    pub fn answer(&mut self, agent: &str, id: &str, reply: Reply) -> Answered {
        let Some(slot) = self.agents.get_mut(agent) else {
            return Answered::Ignored;
        };
        let Some(pos) = slot.queue.iter().position(|q| q.id == id) else {
            return Answered::Ignored;
        };
        let Some(q) = slot.queue.remove(pos) else {
            return Answered::Ignored;
        };
        slot.queued_bytes -= q.bytes;
        if let Some(tx) = q.reply_to {
            let _ = tx.try_send(reply);
            if self.shared_forwards.is_some() {
                self.journal
                    .push(Change::Forward(ForwardChange::Done { id: q.id }));
            }
            return Answered::Forwarded;
        }
        if q.command.is_none() && self.shared_forwards.is_some() {
            // A forward another replica queued: its caller waits there.
            self.journal.push(Change::Forward(ForwardChange::Answered {
                id: q.id,
                status: reply.status,
                body: reply.body,
            }));
            return Answered::Relayed;
        }
        let body = match &reply.body {
            None => Value::Null,
            Some(text) if text.len() > MAX_RESULT_BYTES => {
                json!({"truncated": true, "detail": "the answer was larger than the hub keeps"})
            }
            Some(text) => serde_json::from_str(text).unwrap_or(Value::Null),
        };
        let command = q.command.unwrap_or("?");
        self.journal.push(Change::Answered(StoredResult {
            id: q.id.clone(),
            agent: agent.to_string(),
            command: command.to_string(),
            status: reply.status,
            body: body.to_string(),
        }));
        self.results.insert(
            q.id.clone(),
            CommandResult {
                agent: agent.to_string(),
                command,
                status: reply.status,
                body,
            },
        );
        self.results_order.push_back(q.id);
        while self.results_order.len() > self.limits.results {
            if let Some(old) = self.results_order.pop_front() {
                self.results.remove(&old);
                self.journal.push(Change::ResultDropped { id: old });
            }
        }
        Answered::Stored
    }

    /// Withdraws request `id` of `agent` (its operator stopped waiting); true if it was
    /// still queued.
    pub fn withdraw(&mut self, agent: &str, id: &str) -> bool {
        let Some(slot) = self.agents.get_mut(agent) else {
            return false;
        };
        match slot.queue.iter().position(|q| q.id == id) {
            Some(pos) => {
                if let Some(q) = slot.queue.remove(pos) {
                    slot.queued_bytes -= q.bytes;
                    if q.command.is_some() {
                        self.journal.push(Change::Gone { id: q.id });
                    } else if self.shared_forwards.is_some() {
                        self.journal
                            .push(Change::Forward(ForwardChange::Done { id: q.id }));
                    }
                }
                true
            }
            None => false,
        }
    }

    /// Records a heartbeat from `agent`/`instance` and decides its lease.
    pub fn heartbeat(
        &mut self,
        agent: &str,
        instance: &str,
        body: Value,
        now: Instant,
    ) -> Option<Beat> {
        let ttl = self.timing.lease_ttl;
        let slot = self.agents.get_mut(agent)?;
        let mut group_mismatch = None;
        if let Some(reported) = body.get("group").and_then(Value::as_str) {
            if reported != slot.group && !slot.group_warned {
                slot.group_warned = true;
                group_mismatch = Some(reported.chars().take(64).collect());
            }
        }
        let text = body.to_string();
        self.journal.push(Change::Seen(StoredSeen {
            agent: agent.to_string(),
            instance: instance.to_string(),
            at_ms: self.clock.ms(now),
            body: text.clone(),
        }));
        slot.seen = Some(Seen {
            instance: instance.to_string(),
            at: now,
            body: raw_or_null(text),
            digest: Digest::of(&body),
        });
        let group = slot.group.clone();
        let lease = self.leases.entry(group.clone()).or_default();
        let grant = lease::on_heartbeat(lease, agent, instance, now, ttl);
        if let Some(l) = lease.as_ref().filter(|_| grant.active) {
            self.journal.push(Change::Lease(StoredLease {
                group: group.clone(),
                agent: l.agent.clone(),
                instance: l.instance.clone(),
                renewed_ms: self.clock.ms(l.renewed),
                granted_ms: self.clock.ms(l.granted),
            }));
        }
        Some(Beat {
            grant,
            group,
            group_mismatch,
        })
    }

    /// `GET /v1/agents` without a query: every configured agent with its last heartbeat
    /// and role, by agent id, as JSON text.
    pub fn agents_view(&self, now: Instant) -> String {
        let rows: Vec<AgentRow<'_>> = self
            .agents
            .iter()
            .map(|(id, s)| self.row(id, s, now))
            .collect();
        serde_json::to_string(&rows).unwrap_or_else(|_| "[]".into())
    }

    /// `GET /v1/agents?...`: one page of the listing ([`listing::agents_page`]).
    pub fn agents_page(&self, q: &ListQuery, now: Instant) -> String {
        listing::agents_page(&Listing { state: self, now }, q)
    }

    /// `GET /v1/groups?...`: one page of group summaries ([`listing::groups_page`]).
    pub fn groups_page(&self, q: &ListQuery, now: Instant) -> String {
        listing::groups_page(&Listing { state: self, now }, q)
    }

    /// Whether the agent of `s` is alive and connected, and its problems.
    fn health(&self, s: &Slot, now: Instant) -> (bool, bool, Problems) {
        let seen = s.seen.as_ref();
        let alive =
            seen.is_some_and(|x| now.saturating_duration_since(x.at) < self.timing.lease_ttl);
        let connected = self.slot_connected(s, now);
        let problems = Problems::of(seen.map(|x| x.digest), alive, connected);
        (alive, connected, problems)
    }

    /// Agent `id`'s entry in the listing.
    fn row<'a>(&'a self, id: &'a str, s: &'a Slot, now: Instant) -> AgentRow<'a> {
        let ttl = self.timing.lease_ttl;
        let age = |t: Instant| now.saturating_duration_since(t).as_secs();
        let holder = self
            .leases
            .get(&s.group)
            .and_then(|l| lease::holder(l, now, ttl));
        let seen = s.seen.as_ref();
        let (alive, connected, problems) = self.health(s, now);
        AgentRow {
            agent: id,
            group: &s.group,
            instance: seen.map(|x| x.instance.as_str()),
            role: seen.map(|x| match holder {
                Some(l) if l.held_by(id, &x.instance) => "active",
                _ => "standby",
            }),
            alive,
            last_heartbeat_age_secs: seen.map(|x| age(x.at)),
            heartbeat: seen.map(|x| &*x.body),
            connected,
            last_poll_age_secs: s.last_poll.map(age),
            queued: s.queue.len(),
            healthy: problems.is_empty(),
            problems,
        }
    }

    /// `GET /v1/requests/{id}`: `(200, answer)` once answered, `(202, state)` while
    /// queued; `None` when unknown (or forgotten).
    pub fn request_view(&self, id: &str, now: Instant) -> Option<(u16, Value)> {
        if let Some(r) = self.results.get(id) {
            return Some((
                200,
                json!({"id": id, "agent": r.agent, "command": r.command, "state": "answered",
                       "status": r.status, "body": r.body}),
            ));
        }
        for (agent, slot) in &self.agents {
            if let Some(q) = slot
                .queue
                .iter()
                .find(|q| q.id == id && q.command.is_some())
            {
                return Some((
                    202,
                    json!({"id": id, "agent": agent, "command": q.command,
                           "state": if q.delivered.is_some() { "delivered" } else { "queued" },
                           "deliveries": q.deliveries,
                           "queued_age_secs": now.saturating_duration_since(q.enqueued).as_secs()}),
                ));
            }
        }
        None
    }

    /// Whether [`HubState::stop`] was called.
    pub fn stopping(&self) -> bool {
        self.stopping
    }

    /// Refuses new work and returns every waiting poll's waker.
    pub fn stop(&mut self) -> Vec<Sender<()>> {
        self.stopping = true;
        self.agents
            .values_mut()
            .flat_map(|s| s.waiters.drain(..))
            .collect()
    }
}

/// `text` (JSON) as a raw value; `null` if it is not JSON (never from a heartbeat, which
/// arrives parsed).
fn raw_or_null(text: String) -> Box<RawValue> {
    RawValue::from_string(text).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

/// The state as the listing reads it, at `now`.
struct Listing<'a> {
    state: &'a HubState,
    now: Instant,
}

impl Fleet for Listing<'_> {
    fn order(&self) -> &Order {
        &self.state.order
    }

    fn row(&self, i: usize) -> Option<AgentRow<'_>> {
        let (id, s) = self.state.agents.get_key_value(self.state.order.agent(i))?;
        Some(self.state.row(id, s, self.now))
    }

    fn healthy(&self, i: usize) -> bool {
        self.state
            .agents
            .get(self.state.order.agent(i))
            .is_some_and(|s| self.state.health(s, self.now).2.is_empty())
    }

    fn holder(&self, group: &str) -> Option<Holder<'_>> {
        let l = self.state.leases.get(group)?;
        lease::holder(l, self.now, self.state.timing.lease_ttl).map(|l| Holder {
            agent: &l.agent,
            instance: &l.instance,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn hub(limits: Limits) -> HubState {
        HubState::new(
            [
                ("a1".to_string(), "g".to_string()),
                ("a2".to_string(), "g".to_string()),
            ],
            Timing {
                redeliver: S * 60,
                poll_wait: S * 30,
                lease_ttl: S * 180,
            },
            limits,
            "boot",
        )
    }

    /// `GET /v1/agents` as JSON.
    fn view(h: &HubState, now: Instant) -> Value {
        serde_json::from_str(&h.agents_view(now)).unwrap()
    }

    fn get(path: &str) -> Work {
        Work::Scim {
            method: "GET".into(),
            path: path.into(),
            query: "count=1".into(),
            body: Value::Null,
        }
    }

    #[test]
    fn envelopes_follow_the_protocol() {
        let e = get("/Users").envelope("r-1");
        assert_eq!(
            e,
            json!({"id": "r-1", "kind": "scim", "method": "GET", "path": "/Users",
                   "query": "count=1", "body": null})
        );
        let e = Work::Command(Command::Provision("uid=a,dc=x".into())).envelope("r-2");
        assert_eq!(
            e,
            json!({"id": "r-2", "kind": "command", "command": "provision", "target": "uid=a,dc=x"})
        );
        let e = Work::Command(Command::SetProfile("x = 1".into())).envelope("r-3");
        assert_eq!(e["profile"], "x = 1");
    }

    #[test]
    fn commands_parse_and_name_what_is_missing() {
        assert_eq!(
            Command::parse(&json!({"command": "resync"})),
            Ok(Command::Resync)
        );
        assert_eq!(
            Command::parse(&json!({"command": "provision", "target": "cn=x"})),
            Ok(Command::Provision("cn=x".into()))
        );
        assert!(Command::parse(&json!({"command": "provision"}))
            .unwrap_err()
            .contains("target"));
        assert!(
            Command::parse(&json!({"command": "set-profile", "profile": " "}))
                .unwrap_err()
                .contains("profile")
        );
        assert!(Command::parse(&json!({"command": "reboot"}))
            .unwrap_err()
            .contains("reboot"));
        assert!(Command::parse(&json!({})).is_err());
    }

    #[test]
    fn delivery_then_redelivery_after_the_interval() {
        let mut h = hub(Limits::default());
        let t0 = Instant::now();
        let id = h.enqueue("a1", &get("/Users"), None, t0).unwrap();
        assert!(id.starts_with("r-boot-"));
        let b = h.take_batch("a1", t0);
        assert_eq!(b.envelopes.len(), 1);
        assert_eq!(b.envelopes[0]["id"], id.as_str());
        // Not again before the interval, and the batch says when.
        let b = h.take_batch("a1", t0 + S * 59);
        assert!(b.envelopes.is_empty());
        assert_eq!(b.next_due, Some(t0 + S * 60));
        // The other agent never sees it.
        assert!(h.take_batch("a2", t0 + S * 60).envelopes.is_empty());
        let b = h.take_batch("a1", t0 + S * 60);
        assert_eq!(b.envelopes.len(), 1);
        // Answered by the wrong agent: ignored; by the right one: gone.
        let r = Reply::json(202, &json!({}));
        assert_eq!(h.answer("a2", &id, r.clone()), Answered::Ignored);
        assert_eq!(h.answer("a1", &id, r.clone()), Answered::Stored);
        assert_eq!(h.answer("a1", &id, r), Answered::Ignored);
        assert!(h.take_batch("a1", t0 + S * 600).envelopes.is_empty());
    }

    #[test]
    fn forwards_reach_their_waiter_and_can_be_withdrawn() {
        let mut h = hub(Limits::default());
        let t0 = Instant::now();
        let (tx, rx) = smol::channel::bounded(1);
        let id = h.enqueue("a1", &get("/Users"), Some(tx), t0).unwrap();
        let r = Reply::json(200, &json!({"totalResults": 0}));
        assert_eq!(h.answer("a1", &id, r.clone()), Answered::Forwarded);
        assert_eq!(rx.try_recv().unwrap(), r);
        assert!(
            h.request_view(&id, t0).is_none(),
            "forwards are not command results"
        );

        let id = h.enqueue("a1", &get("/Groups"), None, t0).unwrap();
        assert!(h.withdraw("a1", &id));
        assert!(!h.withdraw("a1", &id));
        assert!(h.take_batch("a1", t0).envelopes.is_empty());
    }

    #[test]
    fn queue_and_batch_bounds() {
        let mut h = hub(Limits {
            queue_len: 3,
            batch_len: 2,
            ..Limits::default()
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            h.enqueue("a1", &get("/Users"), None, t0).unwrap();
        }
        assert!(matches!(
            h.enqueue("a1", &get("/Users"), None, t0),
            Err(EnqueueError::QueueFull { len: 3, .. })
        ));
        assert_eq!(
            h.enqueue("zz", &get("/Users"), None, t0),
            Err(EnqueueError::UnknownAgent)
        );
        assert_eq!(h.take_batch("a1", t0).envelopes.len(), 2);
        assert_eq!(h.take_batch("a1", t0).envelopes.len(), 1);

        // Bytes: the first envelope always goes, even when it alone is over the limit.
        let mut h = hub(Limits {
            batch_bytes: 10,
            ..Limits::default()
        });
        h.enqueue("a1", &get("/Users"), None, t0).unwrap();
        h.enqueue("a1", &get("/Users"), None, t0).unwrap();
        assert_eq!(h.take_batch("a1", t0).envelopes.len(), 1);
        assert_eq!(h.take_batch("a1", t0).envelopes.len(), 1);
    }

    #[test]
    fn command_results_are_kept_and_bounded() {
        let mut h = hub(Limits {
            results: 2,
            ..Limits::default()
        });
        let t0 = Instant::now();
        let work = Work::Command(Command::Resync);
        let ids: Vec<String> = (0..3)
            .map(|_| h.enqueue("a1", &work, None, t0).unwrap())
            .collect();
        assert_eq!(h.request_view(&ids[0], t0).unwrap().1["state"], "queued");
        h.take_batch("a1", t0);
        assert_eq!(h.request_view(&ids[0], t0).unwrap().1["state"], "delivered");
        for id in &ids {
            h.answer("a1", id, Reply::json(202, &json!({"accepted": "resync"})));
        }
        assert!(
            h.request_view(&ids[0], t0).is_none(),
            "oldest result dropped"
        );
        let (status, v) = h.request_view(&ids[2], t0).unwrap();
        assert_eq!(
            (status, &v["status"], &v["command"]),
            (200, &json!(202), &json!("resync"))
        );
    }

    #[test]
    fn a_poll_whose_client_left_hands_its_requests_back() {
        let mut h = hub(Limits::default());
        let t0 = Instant::now();
        let id = h
            .enqueue("a1", &Work::Command(Command::Resync), None, t0)
            .unwrap();
        assert!(!h.poll_started("a1", t0));
        assert_eq!(h.take_batch("a1", t0).envelopes.len(), 1);
        assert_eq!(h.requeue("a1", std::slice::from_ref(&id)), 1);
        h.poll_gone("a1");
        h.poll_ended("a1", t0);
        assert!(!h.connected("a1", t0), "gone until it polls again");
        // At once again, not only after the re-delivery interval; never counted delivered.
        assert_eq!(h.request_view(&id, t0).unwrap().1["deliveries"], 0);
        assert!(!h.poll_started("a1", t0 + S));
        assert!(h.connected("a1", t0 + S));
        assert_eq!(h.take_batch("a1", t0 + S).envelopes.len(), 1);
    }

    #[test]
    fn large_command_answers_are_not_kept_whole() {
        let mut h = hub(Limits::default());
        let t0 = Instant::now();
        let id = h
            .enqueue("a1", &Work::Command(Command::Resync), None, t0)
            .unwrap();
        let big = Reply {
            status: 200,
            body: Some(format!("\"{}\"", "x".repeat(MAX_RESULT_BYTES))),
        };
        h.answer("a1", &id, big);
        assert_eq!(
            h.request_view(&id, t0).unwrap().1["body"]["truncated"],
            true
        );
    }

    #[test]
    fn connected_means_a_recent_poll() {
        let mut h = hub(Limits::default());
        let t0 = Instant::now();
        assert!(!h.connected("a1", t0));
        assert!(!h.poll_started("a1", t0));
        assert!(h.connected("a1", t0 + S * 1000), "a poll is open");
        h.poll_ended("a1", t0 + S * 30);
        assert!(h.connected("a1", t0 + S * 90));
        assert!(!h.connected("a1", t0 + S * 91));
        assert_eq!(h.last_poll_age("a1", t0 + S * 91), Some(61));
    }

    #[test]
    fn heartbeats_share_a_lease_per_group_and_show_up() {
        let mut h = hub(Limits::default());
        let t0 = Instant::now();
        let b = h.heartbeat("a1", "i1", json!({"group": "g"}), t0).unwrap();
        assert!(b.grant.active);
        assert!(b.group_mismatch.is_none());
        let b = h
            .heartbeat("a2", "i2", json!({"group": "other"}), t0 + S)
            .unwrap();
        assert!(!b.grant.active);
        assert_eq!(b.group_mismatch.as_deref(), Some("other"));
        let b = h
            .heartbeat("a2", "i2", json!({"group": "other"}), t0 + S * 2)
            .unwrap();
        assert!(b.group_mismatch.is_none(), "warned once");
        let v = view(&h, t0 + S * 10);
        assert_eq!(v[0]["role"], "active");
        assert_eq!(v[0]["last_heartbeat_age_secs"], 10);
        assert_eq!(v[1]["role"], "standby");
        // a1 stops; a2 takes over once the TTL ran out.
        let b = h.heartbeat("a2", "i2", json!({}), t0 + S * 180).unwrap();
        assert!(b.grant.active);
        let v = view(&h, t0 + S * 181);
        assert_eq!(
            (&v[0]["role"], &v[0]["alive"]),
            (&json!("standby"), &json!(false))
        );
        assert_eq!(v[1]["role"], "active");
        assert!(h.heartbeat("nobody", "i", json!({}), t0).is_none());
    }

    #[test]
    fn the_paged_listing_reads_health_kept_at_the_heartbeat_and_survives_a_restart() {
        let mut h = hub(Limits::default());
        let t0 = Instant::now();
        let sick = json!({"group": "g", "state": "degraded", "last_error": "<b>x</b>"});
        h.heartbeat("a1", "i1", json!({"group": "g", "state": "following"}), t0);
        h.heartbeat("a2", "i2", sick.clone(), t0);
        h.poll_started("a1", t0);
        h.poll_started("a2", t0);
        let q = |text: &str| listing::parse_query(listing::Kind::Agents, text).unwrap();
        let page = |h: &HubState, text: &str| -> Value {
            serde_json::from_str(&h.agents_page(&q(text), t0 + S)).unwrap()
        };
        let v = page(&h, "unhealthy=true");
        assert_eq!(v["matched"], 1);
        assert_eq!(v["agents"][0]["agent"], "a2");
        assert_eq!(v["agents"][0]["problems"], json!(["degraded"]));
        assert_eq!(v["agents"][0]["heartbeat"], sick, "written as it was sent");
        assert_eq!(
            v["groups"][0]["active"],
            json!({"agent": "a1", "instance": "i1"})
        );
        let v = page(&h, "limit=1");
        assert_eq!(
            (&v["agents"][0]["agent"], &v["next"]),
            (&json!("a1"), &json!("after:g/a1"))
        );
        // The same health after a restart: the digest is taken again from the kept text.
        let store = crate::hub::store::MemoryStore::default();
        crate::hub::store::Store::apply(&store, &h.take_journal()).unwrap();
        let mut again = hub(Limits::default());
        again.restore(crate::hub::store::Store::load(&store).unwrap());
        again.poll_started("a1", t0);
        again.poll_started("a2", t0);
        let v: Value = serde_json::from_str(&again.agents_page(&q("unhealthy=true"), t0)).unwrap();
        assert_eq!(v["agents"][0]["agent"], "a2");
        assert_eq!(v["totals"]["unhealthy"], 1);
    }

    /// One process's state written to `store` through its journal, and the next process's
    /// rebuilt from it: what was queued is delivered once, what was delivered waits for
    /// `redeliver`, answers and the lease are still there, forwards are gone.
    fn a_restart_through(store: &dyn crate::hub::store::Store) {
        let t0 = Instant::now();
        let clock = WallClock {
            base: t0,
            base_ms: 1_000_000,
        };
        let mut h = hub(Limits::default());
        h.set_clock(clock);
        let ids: Vec<String> = (0..5)
            .map(|_| {
                h.enqueue("a1", &Work::Command(Command::Resync), None, t0)
                    .unwrap()
            })
            .collect();
        let (tx, _rx) = smol::channel::bounded(1);
        h.enqueue("a1", &get("/Users"), Some(tx), t0).unwrap();
        let b = h.take_batch("a1", t0 + S);
        assert_eq!(b.envelopes.len(), 6);
        // Two handed back (their poll's client left), one answered.
        h.requeue("a1", &ids[3..5]);
        h.answer(
            "a1",
            &ids[0],
            Reply::json(202, &json!({"accepted": "resync"})),
        );
        h.heartbeat("a1", "i1", json!({"group": "g"}), t0 + S);
        store.apply(&h.take_journal()).unwrap();
        assert!(!h.journal_pending());

        // The next process starts 10 s later, on another monotonic clock.
        let t1 = Instant::now() + S * 1000;
        let mut h = hub(Limits::default());
        h.set_clock(WallClock {
            base: t1,
            base_ms: 1_010_000,
        });
        let r = h.restore(store.load().unwrap());
        assert_eq!((r.requests, r.results, r.dropped), (4, 1, 0));
        assert!(h.boot_in_use("boot"));
        h.set_boot("boot2");
        assert!(!h.boot_in_use("boot2"));
        // At once: the two never delivered (handed back); not the two delivered 9 s ago.
        let b = h.take_batch("a1", t1);
        let got: Vec<&str> = b
            .envelopes
            .iter()
            .map(|e| e["id"].as_str().unwrap())
            .collect();
        assert_eq!(got, [ids[3].as_str(), ids[4].as_str()]);
        assert_eq!(
            b.next_due,
            Some(t1 + S * 51),
            "due 60 s after their delivery"
        );
        assert!(h.take_batch("a1", t1 + S * 50).envelopes.is_empty());
        let b = h.take_batch("a1", t1 + S * 51);
        assert_eq!(b.envelopes.len(), 2, "ids 1 and 2, redelivered once due");
        assert_eq!(h.request_view(&ids[0], t1).unwrap().0, 200);
        assert_eq!(h.request_view(&ids[1], t1).unwrap().1["deliveries"], 2);
        let v = view(&h, t1);
        assert_eq!(
            (&v[0]["role"], &v[0]["instance"]),
            (&json!("active"), &json!("i1"))
        );
        assert_eq!(v[0]["last_heartbeat_age_secs"], 9);
        // The holder keeps its lease; the other agent of the group waits.
        assert!(!h.heartbeat("a2", "i2", json!({}), t1).unwrap().grant.active);
        assert!(h.heartbeat("a1", "i1", json!({}), t1).unwrap().grant.active);
        let next = h
            .enqueue("a1", &Work::Command(Command::Resync), None, t1)
            .unwrap();
        assert!(next.starts_with("r-boot2-"), "{next}");
    }

    #[test]
    fn a_journal_that_could_not_be_written_keeps_one_heartbeat_per_agent() {
        let mut h = hub(Limits::default());
        let t0 = Instant::now();
        for i in 0..10 {
            h.heartbeat("a1", "i1", json!({}), t0 + S * i);
        }
        let failed = h.take_journal();
        assert_eq!(failed.len(), 20);
        let id = h
            .enqueue("a1", &Work::Command(Command::Resync), None, t0 + S * 10)
            .unwrap();
        h.heartbeat("a1", "i1", json!({}), t0 + S * 11);
        let newer = h.take_journal();
        h.requeue_journal(failed, newer);
        let j = h.take_journal();
        assert_eq!(j.len(), 3, "{j:?}");
        assert!(matches!(&j[0], Change::Queued(r) if r.id == id));
        assert!(matches!(&j[1], Change::Seen(s) if s.at_ms == h.clock.ms(t0 + S * 11)));
        assert!(matches!(&j[2], Change::Lease(_)));
    }

    #[test]
    fn a_restart_keeps_queued_commands_answers_and_leases_in_memory_store() {
        a_restart_through(&crate::hub::store::MemoryStore::default());
    }

    #[test]
    fn a_restart_keeps_queued_commands_answers_and_leases_in_sqlite() {
        let dir = std::env::temp_dir().join(format!(
            "idrelay-hubstate-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        a_restart_through(&crate::hub::sqlite::SqliteStore::open(&dir).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stopping_refuses_work_and_wakes_polls() {
        let mut h = hub(Limits::default());
        let (tx, rx) = smol::channel::bounded(1);
        h.add_waiter("a1", tx);
        let wakers = h.stop();
        assert_eq!(wakers.len(), 1);
        drop(rx);
        assert_eq!(
            h.enqueue("a1", &get("/Users"), None, Instant::now()),
            Err(EnqueueError::Stopping)
        );
        assert!(h.stopping());
    }
}
