//! The server beside other replicas on one database (`storage = "postgres"`): what a poll,
//! a heartbeat and the changes of other replicas need from [`super::super::shared`]. With
//! a store of one process (SQLite, memory) every function here does nothing.
//!
//! Invariants:
//! * A command or a SCIM forward leaves in a poll's answer only when the database gave it
//!   to this poll (the claim), whichever replica it was queued through.
//! * A SCIM forward is queued (and written to the database) only for an agent that polls
//!   here or whose heartbeat any replica recorded within [`forward_reach`]; its caller
//!   gets the agent's answer from whichever replica the agent gave it to, once, or `504`
//!   after `forward_timeout_secs`; when the database cannot be asked it gets `503` at
//!   once (within `forward_timeout_secs` however the database fails), never a hang.
//! * A heartbeat's role is the database's lease decision; when the database cannot be
//!   asked, the heartbeat is answered 503 (the agent keeps the role it has and retries),
//!   never "active" from this process's memory.
//! * Other replicas' changes are applied as they arrive; a poll of the agent concerned is
//!   woken at once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use std::time::Duration;

use super::super::shared::Event;
use super::super::state::{Batch, Beat, Reply};
use super::super::store::StoreError;
use super::Hub;

impl Hub {
    /// Applies the changes other replicas make, for the hub's life (a task).
    pub(super) fn follow_replicas(self: &Arc<Self>) {
        let Some(shared) = self.store.shared() else {
            return;
        };
        log::info!(
            "replica {}: listening for the other replicas' changes",
            shared.replica()
        );
        let events = shared.events();
        let hub = self.clone();
        smol::spawn(async move {
            while let Ok(event) = events.recv().await {
                let wake = {
                    let mut s = hub.state();
                    match event {
                        Event::Queued(r) => s.adopt_request(r),
                        Event::Requests(all) => {
                            all.into_iter().flat_map(|r| s.adopt_request(r)).collect()
                        }
                        Event::Fleet(seen, leases) => {
                            s.adopt_fleet(seen, &leases);
                            Vec::new()
                        }
                        Event::Answered(r) => {
                            s.adopt_answer(r);
                            Vec::new()
                        }
                        Event::Gone(id) => {
                            s.adopt_gone(&id);
                            Vec::new()
                        }
                        Event::Forward(r) => s.adopt_forward(r),
                        Event::ForwardAnswer {
                            id,
                            agent,
                            status,
                            body,
                        } => {
                            if !s.forward_answered(&agent, &id, Reply { status, body }) {
                                log::debug!(
                                    "agent {agent}: the answer to {id} came after its caller \
                                     gave up; dropped"
                                );
                            }
                            Vec::new()
                        }
                    }
                };
                for w in wake {
                    let _ = w.try_send(());
                }
            }
        })
        .detach();
    }

    /// Keeps of `batch` what the database gives this poll.
    pub(super) async fn claim_batch(&self, agent: &str, mut batch: Batch) -> Batch {
        if self.store.shared().is_none() {
            return batch;
        }
        let ids: Vec<String> = batch
            .envelopes
            .iter()
            .filter_map(|e| e["id"].as_str().map(str::to_string))
            .collect();
        if ids.is_empty() {
            return batch;
        }
        let store = self.store.clone();
        let redeliver = self.cfg.redeliver;
        let claim = smol::unblock(move || match store.shared() {
            Some(s) => s.claim(&ids, redeliver),
            None => Ok(Default::default()),
        })
        .await;
        match claim {
            Ok(c) => {
                let taken: HashSet<&str> = c.claimed.iter().map(String::as_str).collect();
                batch
                    .envelopes
                    .retain(|e| e["id"].as_str().is_some_and(|id| taken.contains(id)));
                self.state().claim_outcome(agent, &c, Instant::now());
            }
            Err(e) => {
                // Not handed out; tried again when due (`redeliver_secs`).
                log::error!("{e}; agent {agent}'s requests wait for the database");
                batch.envelopes.clear();
            }
        }
        batch
    }

    /// Beside other replicas, for a forward to `agent`, which does not poll here: whether
    /// any replica recorded its heartbeat within [`forward_reach`] (`Ok(None)`: one process
    /// alone, nothing to ask). Bounded by `forward_timeout_secs` however the database fails.
    pub(super) async fn reachable_elsewhere(
        &self,
        agent: &str,
    ) -> Option<Result<bool, StoreError>> {
        self.store.shared()?;
        let store = self.store.clone();
        let a = agent.to_string();
        let ask = smol::unblock(move || match store.shared() {
            Some(s) => s.heartbeat_age(&a),
            None => Ok(None),
        });
        let reach = forward_reach(self.cfg.heartbeat, self.cfg.poll_wait);
        let timeout = self.cfg.forward_timeout;
        let answer = smol::future::or(async { Some(ask.await) }, async {
            smol::Timer::after(timeout).await;
            None
        })
        .await;
        Some(match answer {
            Some(Ok(age)) => Ok(age.is_some_and(|a| a <= reach)),
            Some(Err(e)) => Err(e),
            None => Err(StoreError::Postgres {
                database: self.store.describe(),
                message: format!("no answer within {} s", timeout.as_secs()),
            }),
        })
    }

    /// Replaces `beat`'s lease decision with the database's.
    pub(super) async fn lease_decision(
        &self,
        agent: &str,
        instance: &str,
        beat: &mut Beat,
    ) -> Result<(), StoreError> {
        if self.store.shared().is_none() {
            return Ok(());
        }
        let store = self.store.clone();
        let ttl = self.cfg.lease_ttl();
        let (group, a, i) = (beat.group.clone(), agent.to_string(), instance.to_string());
        let (row, grant) = smol::unblock(move || match store.shared() {
            Some(s) => s.lease(&group, &a, &i, ttl),
            None => Err(StoreError::Postgres {
                database: String::new(),
                message: "not shared".into(),
            }),
        })
        .await?;
        beat.grant = self.state().adopt_lease(&row, &grant, Instant::now());
        Ok(())
    }
}

/// How recent an agent's last heartbeat (through any replica) must be for a forward to be
/// queued for it when it does not poll the replica the forward came to: two heartbeat
/// intervals, and at least twice the longest poll (what "connected" means for a poll).
pub fn forward_reach(heartbeat: Duration, poll_wait: Duration) -> Duration {
    (heartbeat * 2).max(poll_wait * 2)
}
