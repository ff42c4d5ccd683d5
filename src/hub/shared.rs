//! What replicas of the hub on one database decide in it, not in one process's memory
//! (`storage = "postgres"`, [`super::postgres`]): the claim of a poll's batch, a group's
//! lease, and the changes other replicas made, as events; and how a SCIM forward crosses
//! from the replica its caller waits on to the one its agent polls ([`ForwardChange`]).
//!
//! Invariants:
//! * A request is handed to one poll at a time across all replicas: a claim takes a row
//!   only when it was never delivered or its last delivery is `redeliver` old, under the
//!   row's lock; what it did not take, it reports as delivered elsewhere or gone.
//! * A group's lease is decided by [`decide_lease`] (the pure rule of
//!   [`super::lease::on_heartbeat`]) inside a transaction holding the lease row's lock, on
//!   the database's clock: two replicas never both grant it while it is valid.
//! * Events carry rows as the database holds them; applying one twice, or one about a
//!   request this replica already knows, changes nothing.
//! * A SCIM forward is a row only while its caller waits: written when queued (with an
//!   expiry of `forward_timeout_secs` on the database's clock), claimed like a command but
//!   never after its expiry, its answer written by the replica the agent answered through
//!   and taken out (row deleted) by the replica that queued it; answered there or given up,
//!   the row is deleted at once, and an orphan (its replica died) is swept after expiry.
//!   Its envelope and answer may carry personal data: no `Debug` of them, no log line.

use std::time::{Duration, Instant};

use super::lease::{self, Grant, Lease};
use super::state::WallClock;
use super::store::{StoreError, StoredLease, StoredRequest, StoredResult, StoredSeen};

/// What becomes of a SCIM forward in the database (recorded only beside other replicas).
#[derive(Clone, PartialEq, Eq)]
pub enum ForwardChange {
    /// Queued through this replica for `agent`: written, due to expire `timeout_ms` from
    /// now on the database's clock.
    Queued {
        /// Request id.
        id: String,
        /// The agent it is for.
        agent: String,
        /// The envelope, JSON text.
        envelope: String,
        /// How long its caller waits.
        timeout_ms: u64,
    },
    /// Its agent answered through this replica, which did not queue it: the answer is
    /// written for the replica that waits for it (nothing, when it is gone).
    Answered {
        /// Request id.
        id: String,
        /// The agent's status.
        status: u16,
        /// The agent's body, as it sent it.
        body: Option<String>,
    },
    /// Answered to its caller here, or given up: the row goes.
    Done {
        /// Request id.
        id: String,
    },
}

impl std::fmt::Debug for ForwardChange {
    /// Names the request only: envelopes and answers may carry personal data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ForwardChange::Queued { id, agent, .. } => write!(f, "Queued({id} for {agent})"),
            ForwardChange::Answered { id, status, .. } => write!(f, "Answered({id}, {status})"),
            ForwardChange::Done { id } => write!(f, "Done({id})"),
        }
    }
}

/// A change another replica made (or the database's view of every queued request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A command was queued.
    Queued(StoredRequest),
    /// A command was answered.
    Answered(StoredResult),
    /// A request left the queue without an answer.
    Gone(String),
    /// Every queued request (at start of listening, after a reconnect, and on the slow
    /// safety re-check).
    Requests(Vec<StoredRequest>),
    /// Heartbeats recorded (by any replica) since the last re-check, and every lease: what
    /// the agent listing shows.
    Fleet(Vec<StoredSeen>, Vec<StoredLease>),
    /// A SCIM forward queued through another replica, waiting for its agent (`command`
    /// empty).
    Forward(StoredRequest),
    /// The answer to a forward this replica queued, given through another replica (the
    /// row is already deleted).
    ForwardAnswer {
        /// Request id.
        id: String,
        /// The agent that answered.
        agent: String,
        /// Its status.
        status: u16,
        /// Its body.
        body: Option<String>,
    },
}

/// What a claim of a poll's batch got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claim {
    /// Taken for this poll, in the order asked.
    pub claimed: Vec<String>,
    /// Delivered by another poll within `redeliver` (id, when, ms since the epoch).
    pub elsewhere: Vec<(String, u64)>,
    /// No longer queued (answered or withdrawn through another replica).
    pub gone: Vec<String>,
}

/// The shared decisions (see the module doc).
pub trait Shared: Send + Sync {
    /// Claims `ids` for a poll: each unless another poll holds it within `redeliver`.
    fn claim(&self, ids: &[String], redeliver: Duration) -> Result<Claim, StoreError>;
    /// A heartbeat of `agent`/`instance` of `group`, decided with the lease row locked.
    fn lease(
        &self,
        group: &str,
        agent: &str,
        instance: &str,
        ttl: Duration,
    ) -> Result<(StoredLease, Grant), StoreError>;
    /// How long ago any replica recorded a heartbeat of `agent` (`None`: never): the
    /// database's clock now against the recording replica's time of it (replicas' clocks
    /// are near enough for a reach of minutes); whether a forward can reach it elsewhere.
    fn heartbeat_age(&self, agent: &str) -> Result<Option<Duration>, StoreError>;
    /// The changes other replicas make, as they are committed.
    fn events(&self) -> smol::channel::Receiver<Event>;
    /// This replica's name in the database (`claimed_by`).
    fn replica(&self) -> &str;
}

/// The lease rule over a stored row at `now_ms` (the database's clock): the new row and
/// the grant.
pub fn decide_lease(
    row: Option<&StoredLease>,
    group: &str,
    agent: &str,
    instance: &str,
    now_ms: u64,
    ttl: Duration,
) -> (StoredLease, Grant) {
    let clock = WallClock {
        base: Instant::now(),
        base_ms: now_ms,
    };
    let mut current = row.map(|r| Lease {
        agent: r.agent.clone(),
        instance: r.instance.clone(),
        renewed: clock.instant(r.renewed_ms),
        granted: clock.instant(r.granted_ms),
    });
    let grant = lease::on_heartbeat(&mut current, agent, instance, clock.base, ttl);
    let l = current.unwrap_or(Lease {
        agent: agent.into(),
        instance: instance.into(),
        renewed: clock.base,
        granted: clock.base,
    });
    // A time the rule did not change keeps its stored value exactly.
    let keep = |t: Instant, stored: Option<u64>| match stored {
        Some(ms) if clock.instant(ms) == t => ms,
        _ => clock.ms(t),
    };
    let stored = StoredLease {
        group: group.into(),
        renewed_ms: keep(l.renewed, row.map(|r| r.renewed_ms)),
        granted_ms: keep(l.granted, row.map(|r| r.granted_ms)),
        agent: l.agent,
        instance: l.instance,
    };
    (stored, grant)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(180);

    #[test]
    fn the_stored_lease_follows_the_pure_rule() {
        let (row, g) = decide_lease(None, "g", "a1", "i1", 1_000_000, TTL);
        assert!(g.active);
        assert_eq!(g.moved_from, Some(None));
        assert_eq!((row.renewed_ms, row.granted_ms), (1_000_000, 1_000_000));
        // Another agent within the TTL: standby, the row unchanged.
        let (same, g) = decide_lease(Some(&row), "g", "a2", "i2", 1_100_000, TTL);
        assert!(!g.active);
        assert_eq!(same, row);
        // The holder renews.
        let (row, g) = decide_lease(Some(&row), "g", "a1", "i1", 1_150_000, TTL);
        assert!(g.active);
        assert_eq!((row.renewed_ms, row.granted_ms), (1_150_000, 1_000_000));
        // Expired: the other takes it.
        let (row, g) = decide_lease(Some(&row), "g", "a2", "i2", 1_330_000, TTL);
        assert!(g.active);
        assert_eq!(g.moved_from, Some(Some("a1".into())));
        assert_eq!((row.agent.as_str(), row.granted_ms), ("a2", 1_330_000));
    }
}
