//! [`HubState`] beside other replicas (`storage = "postgres"`): applies what the database
//! says they did ([`super::super::shared::Event`]) and what a claim or a lease decision
//! found. Nothing here is journaled: each change is already in the database.
//!
//! Invariants: applying a row this state already has (its own change coming back, a
//! re-check) changes nothing; a request answered here is never queued again by an event
//! that was read before the answer was written (its answer is kept, and the claim is the
//! final word: a row gone is dropped). A SCIM forward of another replica is queued here
//! without a caller: its agent's answer is journaled for that replica
//! ([`super::Answered::Relayed`]); the answer to a forward of this replica, given through
//! another, reaches its caller once ([`HubState::forward_answered`]).

use std::time::{Duration, Instant};

use serde_json::Value;
use smol::channel::Sender;

use super::super::lease::{Grant, Lease};
use super::super::shared::Claim;
use super::super::store::{StoredLease, StoredRequest, StoredResult, StoredSeen};
use super::{command_name, CommandResult, HubState, Queued, Reply, Seen};

/// How soon a poll here asks again for a request another replica's poll holds: that
/// replica may have died (the claim then frees it at once), well before `redeliver`.
pub const ASK_AGAIN: Duration = Duration::from_secs(2);

impl HubState {
    /// Queues `r` (a command queued through another replica) unless it is known here;
    /// returns the polls of its agent to wake.
    pub fn adopt_request(&mut self, r: StoredRequest) -> Vec<Sender<()>> {
        let command = command_name(&r.command);
        self.adopt(r, Some(command))
    }

    /// Queues `r` (a SCIM forward queued through another replica, its caller waiting
    /// there) unless it is known here; returns the polls of its agent to wake.
    pub fn adopt_forward(&mut self, r: StoredRequest) -> Vec<Sender<()>> {
        self.adopt(r, None)
    }

    /// Hands `reply` (given through another replica) to the caller of forward `id` of
    /// `agent`, if it still waits here; true if it did.
    pub fn forward_answered(&mut self, agent: &str, id: &str, reply: Reply) -> bool {
        let Some(slot) = self.agents.get_mut(agent) else {
            return false;
        };
        let Some(pos) = slot
            .queue
            .iter()
            .position(|q| q.id == id && q.reply_to.is_some())
        else {
            return false;
        };
        let Some(q) = slot.queue.remove(pos) else {
            return false;
        };
        slot.queued_bytes -= q.bytes;
        q.reply_to.is_some_and(|tx| tx.try_send(reply).is_ok())
    }

    fn adopt(&mut self, r: StoredRequest, command: Option<&'static str>) -> Vec<Sender<()>> {
        if self.results.contains_key(&r.id) {
            return Vec::new();
        }
        let clock = self.clock;
        let Some(slot) = self.agents.get_mut(&r.agent) else {
            return Vec::new();
        };
        if slot.queue.iter().any(|q| q.id == r.id) {
            return Vec::new();
        }
        let envelope: Value = match serde_json::from_str(&r.envelope) {
            Ok(v @ Value::Object(_)) => v,
            _ => return Vec::new(),
        };
        slot.queued_bytes += r.envelope.len();
        slot.queue.push_back(Queued {
            bytes: r.envelope.len(),
            id: r.id,
            envelope,
            command,
            enqueued: clock.instant(r.enqueued_ms),
            delivered: r.delivered_ms.map(|ms| clock.instant(ms)),
            deliveries: r.deliveries,
            reply_to: None,
        });
        std::mem::take(&mut slot.waiters)
    }

    /// Removes request `id` from its agent's queue, if queued here; true if it was. A
    /// forward whose caller still waits here stays: its answer or its timeout ends it.
    pub fn adopt_gone(&mut self, id: &str) -> bool {
        for slot in self.agents.values_mut() {
            if let Some(pos) = slot.queue.iter().position(|q| q.id == id) {
                if slot.queue[pos]
                    .reply_to
                    .as_ref()
                    .is_some_and(|tx| !tx.is_closed())
                {
                    return false;
                }
                if let Some(q) = slot.queue.remove(pos) {
                    slot.queued_bytes -= q.bytes;
                }
                return true;
            }
        }
        false
    }

    /// Keeps `r` (an answer recorded through another replica): out of the queue, kept for
    /// `GET /v1/requests/{id}`, the oldest kept answer dropped past `results`.
    pub fn adopt_answer(&mut self, r: StoredResult) {
        self.adopt_gone(&r.id);
        if !self.agents.contains_key(&r.agent) || self.results.contains_key(&r.id) {
            return;
        }
        self.results
            .insert(r.id.clone(), CommandResult::from_stored(&r));
        self.results_order.push_back(r.id);
        while self.results_order.len() > self.limits.results {
            if let Some(old) = self.results_order.pop_front() {
                self.results.remove(&old);
            }
        }
    }

    /// What a claim of a poll's batch found about the requests it did not take: delivered
    /// through another replica (asked for again within `ASK_AGAIN`, the database decides
    /// whether that replica still holds it), or gone.
    pub fn claim_outcome(&mut self, agent: &str, claim: &Claim, now: Instant) {
        for id in &claim.gone {
            self.adopt_gone(id);
        }
        let clock = self.clock;
        // Due again (`delivered + redeliver`) at most ASK_AGAIN from now.
        let soon = (now + ASK_AGAIN).checked_sub(self.timing.redeliver);
        let Some(slot) = self.agents.get_mut(agent) else {
            return;
        };
        // A forward of this replica the claim did not find: answered through another
        // replica (its answer on the way here) or past its expiry; not offered again
        // before `redeliver`.
        for q in slot.queue.iter_mut() {
            if claim.gone.contains(&q.id) {
                q.delivered = Some(now);
            }
        }
        for (id, at_ms) in &claim.elsewhere {
            if let Some(q) = slot.queue.iter_mut().find(|q| &q.id == id) {
                let at = clock.instant(*at_ms);
                q.delivered = Some(soon.map_or(at, |s| at.min(s)));
            }
        }
    }

    /// Takes heartbeats other replicas recorded (each only when newer than the one known
    /// here) and the leases as the database holds them, for the agent listing.
    pub fn adopt_fleet(&mut self, seen: Vec<StoredSeen>, leases: &[StoredLease]) {
        let clock = self.clock;
        for s in seen {
            let at = clock.instant(s.at_ms);
            if let Some(slot) = self.agents.get_mut(&s.agent) {
                if slot.seen.as_ref().is_none_or(|k| k.at < at) {
                    slot.seen = Some(Seen::from_text(s.instance, at, s.body));
                }
            }
        }
        for l in leases {
            if !self.agents.values().any(|s| s.group == l.group) {
                continue;
            }
            let renewed = clock.instant(l.renewed_ms);
            let newer = match self.leases.get(&l.group) {
                Some(Some(k)) => !k.held_by(&l.agent, &l.instance) || k.renewed < renewed,
                _ => true,
            };
            if newer {
                self.leases.insert(
                    l.group.clone(),
                    Some(Lease {
                        agent: l.agent.clone(),
                        instance: l.instance.clone(),
                        renewed,
                        granted: clock.instant(l.granted_ms),
                    }),
                );
            }
        }
    }

    /// Takes the lease of `row.group` as the database decided it, `grant` as the answer.
    pub fn adopt_lease(&mut self, row: &StoredLease, grant: &Grant, now: Instant) -> Grant {
        let clock = self.clock;
        let lease = Lease {
            agent: row.agent.clone(),
            instance: row.instance.clone(),
            renewed: clock.instant(row.renewed_ms),
            granted: clock.instant(row.granted_ms),
        };
        // A lease just decided is renewed "now" on this process's clock too.
        let lease = if grant.active {
            Lease {
                renewed: now,
                ..lease
            }
        } else {
            lease
        };
        self.leases.insert(row.group.clone(), Some(lease));
        grant.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::ASK_AGAIN;
    use crate::hub::shared::Claim;
    use crate::hub::store::StoredRequest;
    use std::time::Duration;

    fn hub() -> HubState {
        HubState::new(
            [("a1".to_string(), "g".to_string())],
            Timing {
                redeliver: Duration::from_secs(60),
                poll_wait: Duration::from_secs(30),
                lease_ttl: Duration::from_secs(180),
            },
            Limits::default(),
            "boot",
        )
    }

    fn row(id: &str) -> StoredRequest {
        StoredRequest {
            id: id.into(),
            agent: "a1".into(),
            command: "resync".into(),
            envelope: format!(r#"{{"id":"{id}","kind":"command","command":"resync"}}"#),
            enqueued_ms: 1,
            delivered_ms: None,
            deliveries: 0,
        }
    }

    #[test]
    fn a_request_of_another_replica_is_queued_once_and_wakes_the_poll() {
        let mut h = hub();
        let (tx, rx) = smol::channel::bounded(1);
        h.add_waiter("a1", tx);
        let wake = h.adopt_request(row("r-x-1"));
        assert_eq!(wake.len(), 1);
        drop(rx);
        assert!(h.adopt_request(row("r-x-1")).is_empty());
        let now = Instant::now();
        assert_eq!(h.take_batch("a1", now).envelopes.len(), 1);
        assert!(!h.journal_pending() || h.take_journal().len() == 1);
        // Answered through the other replica: gone here, its answer readable here.
        h.adopt_answer(crate::hub::store::StoredResult {
            id: "r-x-1".into(),
            agent: "a1".into(),
            command: "resync".into(),
            status: 202,
            body: "{}".into(),
        });
        assert_eq!(h.request_view("r-x-1", now).unwrap().1["status"], 202);
        assert!(
            h.adopt_request(row("r-x-1")).is_empty(),
            "answered: never again"
        );
        assert!(h
            .take_batch("a1", now + Duration::from_secs(600))
            .envelopes
            .is_empty());
        assert!(!h.journal_pending());
    }

    #[test]
    fn a_request_another_replica_holds_is_asked_for_again_within_seconds_not_redeliver() {
        let mut h = hub();
        let t0 = Instant::now();
        h.set_clock(WallClock {
            base: t0,
            base_ms: 1_000_000,
        });
        h.adopt_request(row("r-x-1"));
        let first = h.take_batch("a1", Instant::now());
        assert_eq!(first.envelopes.len(), 1);
        // The database says another replica's poll took it just now.
        let claim = crate::hub::shared::Claim {
            elsewhere: vec![("r-x-1".into(), 1_000_000)],
            ..Default::default()
        };
        h.claim_outcome("a1", &claim, Instant::now());
        let b = h.take_batch("a1", Instant::now());
        assert!(b.envelopes.is_empty(), "not offered again at once");
        let due = b.next_due.expect("due again");
        assert!(
            due <= Instant::now() + ASK_AGAIN,
            "due {:?} from now, redeliver is 60 s",
            due.saturating_duration_since(Instant::now())
        );
        assert_eq!(
            h.take_batch("a1", Instant::now() + ASK_AGAIN)
                .envelopes
                .len(),
            1,
            "offered to the claim again"
        );
    }

    #[test]
    fn heartbeats_and_leases_of_other_replicas_show_in_the_listing_newest_kept() {
        let mut h = hub();
        let t0 = Instant::now();
        h.set_clock(WallClock {
            base: t0,
            base_ms: 1_000_000,
        });
        let seen = |at_ms, instance: &str| crate::hub::store::StoredSeen {
            agent: "a1".into(),
            instance: instance.into(),
            at_ms,
            body: r#"{"group":"g"}"#.into(),
        };
        let lease = crate::hub::store::StoredLease {
            group: "g".into(),
            agent: "a1".into(),
            instance: "i2".into(),
            renewed_ms: 1_000_000,
            granted_ms: 990_000,
        };
        h.adopt_fleet(vec![seen(1_000_000, "i2")], std::slice::from_ref(&lease));
        let v: Value = serde_json::from_str(&h.agents_view(t0 + Duration::from_secs(5))).unwrap();
        assert_eq!(
            (
                &v[0]["instance"],
                &v[0]["role"],
                &v[0]["last_heartbeat_age_secs"]
            ),
            (&json!("i2"), &json!("active"), &json!(5))
        );
        // An older heartbeat from the database does not replace a newer one known here.
        h.adopt_fleet(vec![seen(999_000, "i1")], &[]);
        let v: Value = serde_json::from_str(&h.agents_view(t0)).unwrap();
        assert_eq!(v[0]["instance"], "i2");
        assert!(!h.journal_pending());
    }

    fn scim(id_path: &str) -> Work {
        Work::Scim {
            method: "GET".into(),
            path: id_path.into(),
            query: String::new(),
            body: Value::Null,
        }
    }

    fn forward_row(id: &str) -> StoredRequest {
        StoredRequest {
            command: String::new(),
            envelope: format!(r#"{{"id":"{id}","kind":"scim","method":"GET","path":"/Users"}}"#),
            ..row(id)
        }
    }

    #[test]
    fn forwards_beside_replicas_are_journaled_while_their_caller_waits_and_no_longer() {
        let mut h = hub();
        h.share_forwards(Duration::from_secs(30));
        let now = Instant::now();
        // Queued here: written (with the caller's timeout), then answered here: deleted.
        let (tx, rx) = smol::channel::bounded(1);
        let id = h.enqueue("a1", &scim("/Users"), Some(tx), now).unwrap();
        let j = h.take_journal();
        assert!(
            matches!(&j[..], [Change::Forward(ForwardChange::Queued { id: i, timeout_ms: 30_000, .. })] if *i == id),
            "{j:?}"
        );
        assert_eq!(
            h.answer("a1", &id, Reply::json(200, &json!({}))),
            Answered::Forwarded
        );
        assert_eq!(rx.try_recv().unwrap().status, 200);
        assert_eq!(
            h.take_journal(),
            vec![Change::Forward(ForwardChange::Done { id: id.clone() })]
        );
        // Given up: deleted.
        let (tx, _rx) = smol::channel::bounded(1);
        let id = h.enqueue("a1", &scim("/Users"), Some(tx), now).unwrap();
        h.take_journal();
        assert!(h.withdraw("a1", &id));
        assert_eq!(
            h.take_journal(),
            vec![Change::Forward(ForwardChange::Done { id })]
        );
        // Without replicas nothing about forwards is journaled.
        let mut alone = hub();
        let (tx, _rx) = smol::channel::bounded(1);
        let id = alone.enqueue("a1", &scim("/Users"), Some(tx), now).unwrap();
        alone.withdraw("a1", &id);
        assert!(!alone.journal_pending());
    }

    #[test]
    fn a_forward_of_another_replica_is_delivered_here_and_its_answer_journaled_for_it() {
        let mut h = hub();
        h.share_forwards(Duration::from_secs(30));
        let (wake, _w) = smol::channel::bounded(1);
        h.add_waiter("a1", wake);
        assert_eq!(h.adopt_forward(forward_row("r-x-9")).len(), 1);
        assert!(h.adopt_forward(forward_row("r-x-9")).is_empty(), "once");
        let now = Instant::now();
        let b = h.take_batch("a1", now);
        assert_eq!(b.envelopes[0]["kind"], "scim");
        assert!(!h.journal_pending(), "the claim writes the delivery");
        let reply = Reply {
            status: 200,
            body: Some(r#"{"totalResults":0}"#.into()),
        };
        assert_eq!(h.answer("a1", "r-x-9", reply.clone()), Answered::Relayed);
        assert_eq!(
            h.take_journal(),
            vec![Change::Forward(ForwardChange::Answered {
                id: "r-x-9".into(),
                status: 200,
                body: reply.body.clone(),
            })]
        );
        assert_eq!(h.answer("a1", "r-x-9", reply), Answered::Ignored, "once");
        assert!(
            h.request_view("r-x-9", now).is_none(),
            "not a command result"
        );
    }

    #[test]
    fn the_answer_given_through_another_replica_reaches_the_caller_once_and_gone_does_not_drop_it()
    {
        let mut h = hub();
        h.share_forwards(Duration::from_secs(30));
        let now = Instant::now();
        let (tx, rx) = smol::channel::bounded(1);
        let id = h.enqueue("a1", &scim("/Users"), Some(tx), now).unwrap();
        h.take_journal();
        // A claim that did not find it (answered elsewhere, the answer on its way) or a
        // stray notification leaves the caller waiting, and it is not offered again soon.
        assert!(!h.adopt_gone(&id));
        h.take_batch("a1", now);
        h.claim_outcome(
            "a1",
            &Claim {
                gone: vec![id.clone()],
                ..Claim::default()
            },
            now,
        );
        assert!(h
            .take_batch("a1", now + Duration::from_secs(1))
            .envelopes
            .is_empty());
        let reply = Reply::json(201, &json!({"id": "x"}));
        assert!(h.forward_answered("a1", &id, reply.clone()));
        assert_eq!(rx.try_recv().unwrap().status, 201);
        assert!(!h.forward_answered("a1", &id, reply), "once");
        assert!(
            !h.journal_pending(),
            "the row was taken out by the listener"
        );
        // A caller that went away (its handler dropped) does not keep its forward here.
        let (tx, rx) = smol::channel::bounded(1);
        let id = h.enqueue("a1", &scim("/Users"), Some(tx), now).unwrap();
        drop(rx);
        assert!(h.adopt_gone(&id));
    }
}
