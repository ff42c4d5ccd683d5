//! The active/standby lease of one agent group, as a pure state machine over heartbeats.
//!
//! Rules (docs/protocol.md, "Active/standby lease"):
//! * A group has at most one holder: an (agent id, instance) pair.
//! * The holder's lease lasts `ttl` from its last heartbeat; only the holder renews it.
//! * A heartbeat from anyone else while the lease is valid answers standby.
//! * A heartbeat when there is no lease, or the lease has expired, grants the lease to the
//!   sender at once (first come, first served).
//! * A restarted agent is a new instance of the same agent id: it takes its own lease over
//!   at once (a single-agent branch must not sit in standby for a TTL after every restart).
//!   Two live processes with one agent id are a misconfiguration (each agent has its own
//!   token and state directory, which one process locks); they would hand the lease back
//!   and forth, each told standby on its next heartbeat.
//!
//! No clock is read here: every function takes `now`.

use std::time::{Duration, Instant};

/// The current holder of a group's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Agent id of the holder.
    pub agent: String,
    /// Instance id of the holder (`Idrelay-Instance`).
    pub instance: String,
    /// When the holder last heartbeated.
    pub renewed: Instant,
    /// When the holder got the lease.
    pub granted: Instant,
}

impl Lease {
    /// Whether the lease still holds at `now`.
    pub fn valid(&self, now: Instant, ttl: Duration) -> bool {
        now.saturating_duration_since(self.renewed) < ttl
    }

    /// Whether `agent`/`instance` holds this lease.
    pub fn held_by(&self, agent: &str, instance: &str) -> bool {
        self.agent == agent && self.instance == instance
    }
}

/// What a heartbeat gets back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Whether the sender is the active one.
    pub active: bool,
    /// The agent id holding the lease (the sender, when active).
    pub holder: String,
    /// `Some(previous holder)` when this heartbeat moved the lease; `Some(None)` when the
    /// group had no holder before.
    pub moved_from: Option<Option<String>>,
}

/// Applies one heartbeat from `agent`/`instance` at `now` to a group's lease.
pub fn on_heartbeat(
    lease: &mut Option<Lease>,
    agent: &str,
    instance: &str,
    now: Instant,
    ttl: Duration,
) -> Grant {
    if let Some(l) = lease.as_mut() {
        if l.agent == agent && l.instance != instance {
            // The same agent, restarted: the new instance is the holder from now on.
            l.instance = instance.to_string();
            l.renewed = now;
            return Grant {
                active: true,
                holder: l.agent.clone(),
                moved_from: None,
            };
        }
        if l.held_by(agent, instance) {
            l.renewed = now;
            return Grant {
                active: true,
                holder: l.agent.clone(),
                moved_from: None,
            };
        }
        if l.valid(now, ttl) {
            return Grant {
                active: false,
                holder: l.agent.clone(),
                moved_from: None,
            };
        }
    }
    let previous = lease.as_ref().map(|l| l.agent.clone());
    *lease = Some(Lease {
        agent: agent.to_string(),
        instance: instance.to_string(),
        renewed: now,
        granted: now,
    });
    Grant {
        active: true,
        holder: agent.to_string(),
        moved_from: Some(previous),
    }
}

/// The valid holder at `now`, if any.
pub fn holder(lease: &Option<Lease>, now: Instant, ttl: Duration) -> Option<&Lease> {
    lease.as_ref().filter(|l| l.valid(now, ttl))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TTL: Duration = Duration::from_secs(180);

    #[test]
    fn first_comer_is_active_and_keeps_it_while_heartbeating() {
        let t0 = Instant::now();
        let mut l = None;
        let g = on_heartbeat(&mut l, "a", "i1", t0, TTL);
        assert!(g.active);
        assert_eq!(g.moved_from, Some(None));
        let g = on_heartbeat(&mut l, "b", "i2", t0 + Duration::from_secs(1), TTL);
        assert!(!g.active);
        assert_eq!(g.holder, "a");
        // The holder renews long past the first TTL.
        for s in (60..=600).step_by(60) {
            assert!(on_heartbeat(&mut l, "a", "i1", t0 + Duration::from_secs(s), TTL).active);
            assert!(!on_heartbeat(&mut l, "b", "i2", t0 + Duration::from_secs(s + 1), TTL).active);
        }
    }

    #[test]
    fn the_lease_moves_after_the_ttl_without_heartbeats() {
        let t0 = Instant::now();
        let mut l = None;
        on_heartbeat(&mut l, "a", "i1", t0, TTL);
        let g = on_heartbeat(&mut l, "b", "i2", t0 + TTL - Duration::from_millis(1), TTL);
        assert!(!g.active);
        let g = on_heartbeat(&mut l, "b", "i2", t0 + TTL, TTL);
        assert!(g.active);
        assert_eq!(g.moved_from, Some(Some("a".to_string())));
        // The old holder comes back: standby now.
        let g = on_heartbeat(&mut l, "a", "i1", t0 + TTL + Duration::from_secs(1), TTL);
        assert!(!g.active);
        assert_eq!(g.holder, "b");
        assert!(holder(&l, t0 + TTL, TTL).is_some());
        assert!(holder(&l, t0 + TTL * 3, TTL).is_none());
    }

    #[test]
    fn a_restarted_instance_takes_its_own_lease_over_at_once() {
        let t0 = Instant::now();
        let mut l = None;
        on_heartbeat(&mut l, "a", "old", t0, TTL);
        assert!(on_heartbeat(&mut l, "a", "new", t0 + Duration::from_secs(5), TTL).active);
        // Another agent of the group still waits.
        assert!(!on_heartbeat(&mut l, "b", "x", t0 + Duration::from_secs(6), TTL).active);
    }

    proptest! {
        /// Whatever the order of heartbeats, at any instant at most one sender is told
        /// "active", and a holder is only replaced once its lease has run out.
        #[test]
        fn never_two_actives(beats in proptest::collection::vec((0u8..3, 0u64..400), 1..60)) {
            let t0 = Instant::now();
            let mut l: Option<Lease> = None;
            let mut t = 0u64;
            let mut last_active: Option<(u8, u64)> = None;
            for (who, step) in beats {
                t += step;
                let now = t0 + Duration::from_secs(t);
                let before = l.clone();
                let g = on_heartbeat(&mut l, &format!("a{who}"), "i", now, TTL);
                if g.active {
                    if let Some((prev, at)) = last_active {
                        if prev != who {
                            // The previous holder's lease must have expired.
                            prop_assert!(Duration::from_secs(t - at) >= TTL);
                            prop_assert!(before.is_some_and(|b| !b.valid(now, TTL)));
                        }
                    }
                    last_active = Some((who, t));
                }
            }
        }
    }
}
