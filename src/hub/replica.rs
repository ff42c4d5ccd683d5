//! The server beside other replicas on one database (`storage = "postgres"`): what a poll,
//! a heartbeat and the changes of other replicas need from [`super::super::shared`]. With
//! a store of one process (SQLite, memory) every function here does nothing.
//!
//! Invariants:
//! * A command leaves in a poll's answer only when the database gave it to this poll
//!   (the claim); SCIM forwards are this replica's own and are never claimed.
//! * A heartbeat's role is the database's lease decision; when the database cannot be
//!   asked, the heartbeat is answered 503 (the agent keeps the role it has and retries),
//!   never "active" from this process's memory.
//! * Other replicas' changes are applied as they arrive; a poll of the agent concerned is
//!   woken at once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use super::super::shared::Event;
use super::super::state::{Batch, Beat};
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
                    }
                };
                for w in wake {
                    let _ = w.try_send(());
                }
            }
        })
        .detach();
    }

    /// Keeps of `batch` the commands the database gives this poll, and the forwards.
    pub(super) async fn claim_batch(&self, agent: &str, mut batch: Batch) -> Batch {
        if self.store.shared().is_none() {
            return batch;
        }
        let is_command = |e: &serde_json::Value| e["kind"] == "command";
        let ids: Vec<String> = batch
            .envelopes
            .iter()
            .filter(|e| is_command(e))
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
                batch.envelopes.retain(|e| {
                    !is_command(e) || e["id"].as_str().is_some_and(|id| taken.contains(id))
                });
                self.state().claim_outcome(agent, &c);
            }
            Err(e) => {
                // Not handed out; tried again when due (`redeliver_secs`).
                log::error!("{e}; agent {agent}'s commands wait for the database");
                batch.envelopes.retain(|e| !is_command(e));
            }
        }
        batch
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
