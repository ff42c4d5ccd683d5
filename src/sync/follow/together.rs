//! `run`'s bursts through SCIM Bulk: the batch machine ([`super::batch`]) gathers the
//! user replacements a batch decided (PUTs to ids the anchor index holds) and hands them
//! here, to go out in Bulk requests where the endpoint offers Bulk and `sync.bulk` allows
//! it; one script changing 1,000 users costs 10 requests instead of 1,000.
//!
//! Only replacements go together: they name the id, so a Bulk PUT can never create a
//! duplicate, whatever becomes of the request. Creates and groups (whose members are
//! brought in step by PATCH against the confirmed members) go the single way, as before.
//! Framing, 413 halving, turning Bulk off for an endpoint that refuses it, and each
//! operation's result are [`crate::sync::bulk`]'s: an operation the answer reports refused
//! (or does not report) is sent again on its own, the single way, and reports its own
//! outcome, so one refused change is parked alone while the others of its request land.
//!
//! The lane (the endpoint's limits) is learnt at the first burst from
//! `/ServiceProviderConfig` and kept; a failed ask is asked again at the next burst, and
//! meanwhile the changes go the single way.

use std::cell::RefCell;
use std::rc::Rc;

use crate::scim::client::ScimClient;
use crate::scim::ResourceKind;
use crate::sync::bulk::{self, Buffer, Lane, Verb, Verdict};
use crate::sync::provision::{provision, provision_with, Job, Outcome, ProvisionMode};

/// Whether a decided job may go in a Bulk request of `run`: a user replaced at the id the
/// agent owns.
pub(super) fn goes_together(job: &Job) -> bool {
    job.kind == ResourceKind::User && job.known_id.is_some()
}

/// What the agent knows of the endpoint's Bulk.
enum State {
    Unasked,
    Off,
    On(Rc<Lane>),
}

/// The Bulk side of `run`, for one endpoint (lives as long as the sender).
pub(super) struct Together {
    state: RefCell<State>,
}

impl Together {
    /// `enabled`: `sync.bulk = "auto"` (and not a dry run).
    pub(super) fn new(enabled: bool) -> Together {
        Together {
            state: RefCell::new(if enabled { State::Unasked } else { State::Off }),
        }
    }

    /// The lane, asking the endpoint the first time (no borrow is held across the ask).
    pub(super) async fn lane(&self, scim: &ScimClient) -> Option<Rc<Lane>> {
        if matches!(*self.state.borrow(), State::Unasked) {
            let next = match scim.service_provider_config().await {
                Ok(spc) => match Lane::for_endpoint(&spc) {
                    Some(l) => {
                        let lim = l.limits();
                        log::info!(
                            "SCIM Bulk: changes to many users go out together, up to {} a request",
                            lim.max_operations
                        );
                        State::On(Rc::new(l))
                    }
                    None => State::Off,
                },
                Err(e) if e.is_transient() => return None,
                Err(_) => State::Off,
            };
            *self.state.borrow_mut() = next;
        }
        match &*self.state.borrow() {
            State::On(l) if !l.is_off() => Some(l.clone()),
            _ => None,
        }
    }

    /// Brings `jobs` in step: in Bulk requests framed to the endpoint's limits when the
    /// lane is open, else one by one. Each job with its outcome, in the order given.
    pub(super) async fn provision(
        &self,
        scim: &ScimClient,
        mode: &ProvisionMode,
        jobs: Vec<Job>,
    ) -> Vec<(Job, Outcome)> {
        let n = jobs.len();
        let mut out: Vec<Option<(Job, Outcome)>> = (0..n).map(|_| None).collect();
        let lane = match self.lane(scim).await {
            Some(l) if n > 1 => l,
            _ => {
                for (k, job) in jobs.into_iter().enumerate() {
                    let o = provision(scim, &job, mode).await;
                    out[k] = Some((job, o));
                }
                return out.into_iter().flatten().collect();
            }
        };
        // The position of each job, by its externalId (unique in a batch: two changes of
        // one object are never in flight together).
        let at: std::collections::HashMap<String, usize> = jobs
            .iter()
            .enumerate()
            .map(|(k, j)| (j.external_id.clone(), k))
            .collect();
        let mut requests = Vec::new();
        let mut buffer = Buffer::default();
        for job in jobs {
            let id = job.known_id.clone().expect("goes_together: known id");
            let verb = Verb::Replace { id, matched: false };
            match lane.plan(scim, job, verb).await {
                Ok(p) => {
                    if let Some(full) = buffer.push(p, lane.limits()) {
                        requests.push(full);
                    }
                }
                Err(job) => {
                    let o = provision(scim, &job, mode).await;
                    let k = at[&job.external_id];
                    out[k] = Some((job, o));
                }
            }
        }
        requests.push(buffer.take());
        for request in requests.into_iter().filter(|r| !r.is_empty()) {
            let landed = if request.len() == 1 {
                request
                    .into_iter()
                    .map(|p| (p.into_job(), Verdict::Again(Default::default())))
                    .collect()
            } else {
                bulk::send(scim, &lane, request).await
            };
            for (job, v) in landed {
                let o = match v {
                    Verdict::Outcome(o) => o,
                    Verdict::Again(hint) => provision_with(scim, &job, mode, &hint).await,
                    // Member operations and bulkId references are a full pass's; none is
                    // planned here.
                    Verdict::Member(_) | Verdict::Held(_) => provision(scim, &job, mode).await,
                };
                let k = at[&job.external_id];
                out[k] = Some((job, o));
            }
        }
        out.into_iter().flatten().collect()
    }
}
