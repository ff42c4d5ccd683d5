//! The batch machine: applies one batch of queued changes, up to [`MAX_IN_FLIGHT`] at a
//! time, and reports which leading run of it is done.
//!
//! What it must never do: work on two changes of one object (same uuid or DN) at once or
//! out of queue order; map a change against an object an earlier change of the batch is
//! still creating (it waits for it, then maps again); start a change while one that asked
//! to be retried waits for its retry; infer a delete (an object the directory does not
//! return is left alone, and one matched by DN alone is deleted only once the directory
//! confirms that no entry holds its anchor); report as handled a change that follows one
//! not yet done; retry a change the endpoint keeps refusing for ever while later changes
//! wait (it is parked instead: see below). The anchor index, the delete gate and the parked
//! list change only between awaits, on the sender's task, never in the work in flight,
//! which only reads the directory and writes the endpoint.
//!
//! Bulk ([`super::together`]): where the endpoint offers SCIM Bulk, a decided user PUT to
//! an id the index holds is gathered instead of sent; once no directory read of the batch
//! is in flight, everything gathered goes out together (in queue order) as one in-flight
//! write, and each job lands with its own outcome exactly as if sent alone. A gathered
//! change is not done until its request landed, so a later change of its object waits.
//!
//! Parking ([`super::parking`]): a change the endpoint refuses for good
//! ([`Outcome::Failed`]) is parked at once; one it answers 5xx (or cannot be reached for)
//! is retried as before, and parked once it has failed `sync.max_attempts` times while the
//! endpoint answers its health probe ([`EndpointWrites::reachable`]): an outage parks
//! nothing, the batch waits. A parked change counts as done (its record may be
//! acknowledged); a later change of the same object, done, removes the entry, failed,
//! updates it.
//!
//! It reaches the directory and the endpoint only through [`DirectoryReads`] and
//! [`EndpointWrites`] (the pattern of `members.rs`'s `GroupEndpoint`): `run` hands in the
//! real [`Directory`] and a [`ScimEndpoint`], the tests fakes that record the order of
//! calls. Static dispatch: the seams cost nothing at run time.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use crate::ldap::dn;
use crate::ldap::members::MemberRead;
use crate::ldap::{Directory, Entry, LdapError, Scope};
use crate::net::backoff::Backoff;
use crate::queue::ResyncReason;
use crate::scim::client::{ScimClient, ScimError};
use crate::scim::mapping::{self, Reference, Resolver};
use crate::scim::ResourceKind;
use crate::signals::{Control, Request};
use crate::sync::anchors::{representation_hash_with, Anchor, AnchorIndex};
use crate::sync::deletes::{self, DeleteGate, Found, MatchedBy, Target};
use crate::sync::member_read::{MemberDnList, MemberReadError};
use crate::sync::pass::PassSettings;
use crate::sync::provision::{provision, Job, Outcome};

use super::group_members;
use super::parking::{unix_now, Parking, Refusal};
use super::send::{SendCtx, SendEnd};
use super::together::{goes_together, Together};
use super::{with_queue, Change, SharedQueue};

/// The directory as the sender sees it: three kinds of read, nothing else. A seam: the
/// sender gets a [`Directory`], tests a fake, so the batch machine is tested without a
/// server.
pub(super) trait DirectoryReads {
    /// The entry at `dn` with `attrs`; `Ok(None)` when no entry is there.
    async fn read(&self, dn: &str, attrs: &[&str]) -> Result<Option<Entry>, LdapError>;
    /// Whether the entry at `dn` exists and matches `filter` (the scope check). A failed
    /// search is an error, never "does not match".
    async fn matches(&self, dn: &str, filter: &str) -> Result<bool, LdapError>;
    /// The DN of some entry under `base` (subtree) that matches `filter`, if one does:
    /// whether an anchor is still held by anything.
    async fn find_one(&self, base: &str, filter: &str) -> Result<Option<String>, LdapError>;
    /// The member DNs of the group at `dn`, read in pieces the `how` way (`bases`: where
    /// a member-side read looks), unresolved, in a list that spills to `scratch` (see
    /// [`super::group_members`]). A read that did not end as it must is an error.
    async fn member_dns(
        &self,
        dn: &str,
        how: MemberRead,
        bases: &[String],
        scratch: &Path,
    ) -> Result<MemberDnList, MemberReadError>;
}

impl DirectoryReads for Directory {
    async fn read(&self, dn: &str, attrs: &[&str]) -> Result<Option<Entry>, LdapError> {
        Directory::read(self, dn, attrs).await
    }

    async fn matches(&self, dn: &str, filter: &str) -> Result<bool, LdapError> {
        Directory::matches(self, dn, filter).await
    }

    async fn find_one(&self, base: &str, filter: &str) -> Result<Option<String>, LdapError> {
        // The first answer settles it; dropping the stream abandons the rest of the search.
        let mut s = self.search(base, Scope::Subtree, filter, &["1.1"]);
        match s.next().await {
            None => Ok(None),
            Some(Ok(e)) => Ok(Some(e.dn)),
            Some(Err(e)) => Err(e),
        }
    }

    async fn member_dns(
        &self,
        dn: &str,
        how: MemberRead,
        bases: &[String],
        scratch: &Path,
    ) -> Result<MemberDnList, MemberReadError> {
        crate::sync::member_read::read_member_dns(self, dn, how, bases, scratch).await
    }
}

/// The endpoint as the sender sees it: one object brought in step, one object deleted. A
/// seam: the sender gets a [`ScimEndpoint`], tests a fake that records the order of calls.
pub(super) trait EndpointWrites {
    /// Creates, replaces or matches `job`'s object (see [`provision`]).
    async fn provision(&self, job: &Job) -> Outcome;
    /// Deactivates or deletes `target` (see [`deletes::execute`]): the word for what was
    /// done, or why not.
    async fn delete(&self, target: &Target) -> Result<&'static str, ScimError>;
    /// Whether the endpoint answers at all (its /ServiceProviderConfig, any answer but a
    /// transient failure): a 5xx for one object while this holds is that object's, not an
    /// outage.
    async fn reachable(&self) -> bool;
    /// During an outage of the whole endpoint (see [`crate::scim::outage`]): how long to
    /// wait before the next try (growing to 15 min; said once in the log), instead of the
    /// change's own backoff. `None` while healthy.
    fn outage_wait(&self) -> Option<Duration> {
        None
    }
    /// Sleeps out an outage's wait: `Some` on a stop or reload request.
    async fn outage_sleep(&self, control: &Control, wait: Duration) -> Option<Request> {
        control.sleep(wait).await
    }
    /// Whether decided user replacements are gathered and sent together
    /// ([`EndpointWrites::provision_together`]): the endpoint offers SCIM Bulk and
    /// `sync.bulk` allows it (see [`super::together`]).
    async fn sends_together(&self) -> bool;
    /// Brings several jobs (each [`goes_together`]) in step at once; each job with its
    /// own outcome, in the order given (one refused job fails alone).
    async fn provision_together(&self, jobs: Vec<Job>) -> Vec<(Job, Outcome)>;
}

/// The real endpoint: the SCIM client, with the settings that shape its writes.
pub(super) struct ScimEndpoint<'a> {
    pub(super) scim: &'a ScimClient,
    pub(super) pass: &'a PassSettings,
    /// `run`'s Bulk lane (see [`super::together`]).
    pub(super) together: Together,
}

impl EndpointWrites for ScimEndpoint<'_> {
    async fn provision(&self, job: &Job) -> Outcome {
        provision(self.scim, job, &self.pass.mode).await
    }

    async fn delete(&self, target: &Target) -> Result<&'static str, ScimError> {
        deletes::execute(self.scim, self.pass.user_delete, target).await
    }

    fn outage_wait(&self) -> Option<Duration> {
        self.scim.outage().and_then(|w| w.next_wait())
    }

    async fn outage_sleep(&self, control: &Control, wait: Duration) -> Option<Request> {
        super::outage_sleep(self.scim, control, wait).await
    }

    async fn reachable(&self) -> bool {
        // A refused credential makes every request fail alike: the endpoint is not usable,
        // whatever its unauthenticated discovery documents answer.
        if self.scim.refused_auth().is_some() {
            return false;
        }
        let answers = match self.scim.service_provider_config().await {
            Ok(_) => true,
            Err(e) => !e.is_transient(),
        };
        // The service answers: what keeps failing is the objects', not an outage.
        if let (true, Some(w)) = (answers, self.scim.outage()) {
            w.service_answers();
        }
        answers
    }

    async fn sends_together(&self) -> bool {
        self.together.lane(self.scim).await.is_some()
    }

    async fn provision_together(&self, jobs: Vec<Job>) -> Vec<(Job, Outcome)> {
        self.together
            .provision(self.scim, &self.pass.mode, jobs)
            .await
    }
}

pub(super) enum Applied {
    Done,
    Failed(String),
    Retry(String),
    /// The endpoint refused the object: park it (see [`super::parking`]).
    Park(Refusal),
}

/// Most changes of one batch in step at the same time (directory reads and SCIM writes).
const MAX_IN_FLIGHT: usize = 8;

/// The longest first wait before a change the endpoint or the directory could not take is
/// tried again (jittered, doubling up to 15 s); short in unit tests, which retry on purpose.
pub(super) const RETRY_FIRST_WAIT: Duration = if cfg!(test) {
    Duration::from_millis(2)
} else {
    Duration::from_millis(500)
};

/// What [`apply_batch`] did.
pub(super) struct BatchEnd {
    /// The last sequence number of the batch's leading run of applied changes (every change
    /// up to it is done): what may be acknowledged.
    pub(super) handled: Option<u64>,
    /// How the sender must end, if it must.
    pub(super) end: Option<SendEnd>,
    /// Changes applied, failed for good, and parked.
    pub(super) applied: u64,
    pub(super) failed: u64,
    pub(super) parked: u64,
}

/// Where one change of a batch stands.
enum Step {
    /// Not started (or to be started again after a retry).
    Waiting,
    /// Its directory read is in flight.
    Reading,
    /// Read; waits for its decision (after a [`Decision::Blocked`], for every earlier
    /// change to be done).
    Read(Prepared, bool),
    /// Its SCIM write is in flight.
    Sending,
    /// Applied or failed for good.
    Done,
}

/// What an in-flight future of [`apply_batch`] reports.
enum Landed {
    Read(Result<Prepared, String>),
    Sent(Box<Job>, Outcome),
    /// Jobs sent together, each with its change's position in the batch.
    SentTogether(Vec<(usize, Job, Outcome)>),
}

/// Whether two changes touch the same object (same uuid or same DN): those are applied in
/// queue order, one after the other.
fn same_object(a: &(String, Option<String>), b: &(String, Option<String>)) -> bool {
    a.0 == b.0 || (a.1.is_some() && a.1 == b.1)
}

/// Applies one batch of queued changes, up to [`MAX_IN_FLIGHT`] at a time.
///
/// Order: two changes of the same object (same uuid or DN) never overlap and run in queue
/// order; a change that refers to an object an earlier change is still creating waits for
/// it (see [`IndexResolver`]); deletes and scope exits are put into the delete gate's
/// settle window, in turn (the sender weighs and sends them when it closes), and a later
/// change of the same object withdraws them.
/// The index and the gate are touched only here, between awaits, never by the futures.
/// A change the endpoint or the directory cannot take now (retry) pauses the batch: what
/// is in flight lands, then after a backoff the change is tried again, as before.
/// Acknowledgement: only the leading run of done changes ([`BatchEnd::handled`]); a change
/// done beyond a gap is applied again after a restart (idempotent).
/// Parking: a change the endpoint refuses is parked (done) as the module doc says, after
/// `park_after` tries when the endpoint answered 5xx or was unreachable (1: the retries of
/// parked objects, which are parked again at once, probe or not).
#[allow(clippy::too_many_arguments)]
pub(super) async fn apply_batch<D: DirectoryReads, E: EndpointWrites>(
    ctx: &SendCtx<'_, D, E>,
    index: &mut AnchorIndex,
    gate: &mut DeleteGate,
    parking: &mut Parking,
    park_after: u32,
    queue: &SharedQueue,
    attrs: &[&str],
    records: Vec<crate::queue::Record>,
) -> BatchEnd {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::Poll;

    let mut out = BatchEnd {
        handled: None,
        end: None,
        applied: 0,
        failed: 0,
        parked: 0,
    };
    let mut seqs = Vec::with_capacity(records.len());
    let mut changes = Vec::with_capacity(records.len());
    for r in records {
        match serde_json::from_slice::<Change>(&r.payload) {
            Ok(c) => {
                seqs.push(r.seq);
                changes.push(c);
            }
            Err(e) => {
                log::error!(
                    "queued change {} is not readable ({e}); skipped, a full pass follows",
                    r.seq
                );
                let _ =
                    with_queue(queue, |q| q.mark_resync_owed(ResyncReason::CorruptRecord)).await;
                out.end = Some(SendEnd::ResyncOwed);
                break;
            }
        }
    }
    let n = changes.len();
    // A group's members read in pieces are not read with its entry.
    let members_apart = group_members::way(&ctx.settings.pass, ctx.profile);
    let attrs = group_members::entry_attributes(attrs, members_apart);
    let attrs = attrs.as_slice();
    let keys: Vec<(String, Option<String>)> = changes
        .iter()
        .map(|c| match c {
            Change::Upsert { dn: d, uuid } => (uuid.clone(), Some(dn::normalize(d))),
            Change::Delete { uuid, dn: d } => (uuid.clone(), d.as_deref().map(dn::normalize)),
        })
        .collect();
    if let Some(allowed) = ctx.allowed {
        if touches_scoping_group(allowed, &keys) {
            log::info!(
                "a group that makes scope.groups changed: full pass owed (it brings members that joined in and takes those that left out)"
            );
            let _ = with_queue(queue, |q| q.mark_resync_owed(ResyncReason::GroupsChanged)).await;
        }
    }
    let mut steps: Vec<Step> = (0..n).map(|_| Step::Waiting).collect();
    let mut waits: Vec<Option<Backoff>> = (0..n).map(|_| None).collect();
    // Per change: tries the endpoint answered 5xx or could not be reached for, and the
    // refusal to park once they are `park_after`.
    let mut tries: Vec<u32> = vec![0; n];
    let mut refused: Vec<Option<Refusal>> = (0..n).map(|_| None).collect();
    type InFlight<'f> = Vec<(usize, Pin<Box<dyn Future<Output = Landed> + 'f>>)>;
    let mut flying: InFlight<'_> = Vec::new();
    // Changes that asked to be retried: the batch starts nothing new until they are.
    let mut retry: Vec<(usize, String)> = Vec::new();
    // User replacements decided but not yet sent: they go out together (SCIM Bulk) once
    // no directory read of the batch is in flight (see [`super::together`]).
    let together = ctx.endpoint.sends_together().await;
    let mut gathered: Vec<(usize, Job)> = Vec::new();

    let outcome = |i: usize,
                   a: Applied,
                   steps: &mut Vec<Step>,
                   retry: &mut Vec<(usize, String)>,
                   out: &mut BatchEnd,
                   parking: &mut Parking| match a {
        Applied::Done => {
            steps[i] = Step::Done;
            out.applied += 1;
            ctx.agent
                .provisioned
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Done (sent, in step, deleted, out of scope, gone from its DN): whatever was
            // parked for the object is settled.
            if let Some(p) = parking.clear(&keys[i].0, keys[i].1.as_deref()) {
                log::info!(
                    "{} {}: no longer parked (after {} failed tries)",
                    p.kind,
                    p.dn,
                    p.attempts
                );
            }
        }
        Applied::Park(r) => {
            steps[i] = Step::Done;
            ctx.agent
                .failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (dn, reason) = (r.dn.clone(), r.reason.clone());
            let now = unix_now();
            if parking.park(r, now) {
                out.parked += 1;
                let p = parking.find(&keys[i].0, keys[i].1.as_deref());
                let (tries, wait) = p.map_or((0, 0), |p| (p.attempts, p.next_at - now));
                log::warn!(
                    "{dn}: {reason}; parked after {tries} tries, next try in {} (later changes flow on; `idrelay retry` sends it now)",
                    crate::sync::progress::format_duration(Duration::from_secs(wait))
                );
                ctx.agent.set_error(format!("{dn} parked: {reason}"));
            } else {
                out.failed += 1;
                log::warn!("{dn}: {reason}");
                ctx.agent.set_error(format!("{dn}: {reason}"));
            }
        }
        Applied::Failed(why) => {
            steps[i] = Step::Done;
            out.failed += 1;
            ctx.agent
                .failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            log::warn!("{why}");
            ctx.agent.set_error(why);
        }
        Applied::Retry(why) => {
            steps[i] = Step::Waiting;
            retry.push((i, why));
        }
    };

    while out.end.is_none() {
        if ctx.control.requested().is_some() {
            out.end = Some(SendEnd::Signal);
            break;
        }
        let mut progressed = false;
        // Decide what was read, in queue order.
        for i in 0..n {
            if !matches!(steps[i], Step::Read(..)) {
                continue;
            }
            let earlier_busy = (0..i).any(|j| !matches!(steps[j], Step::Done));
            if let Step::Read(_, true) = steps[i] {
                if earlier_busy {
                    continue; // blocked until everything before it landed
                }
            }
            let Step::Read(prepared, _) = std::mem::replace(&mut steps[i], Step::Sending) else {
                unreachable!("checked above");
            };
            progressed = true;
            let busy: HashSet<String> = (0..i)
                .filter(|&j| !matches!(steps[j], Step::Done))
                .filter_map(|j| keys[j].1.clone())
                .collect();
            let uuid = &keys[i].0;
            match decide(ctx, index, gate, uuid, prepared, &busy) {
                Decision::Done(a) => outcome(i, a, &mut steps, &mut retry, &mut out, parking),
                Decision::Blocked(p) => steps[i] = Step::Read(p, true),
                Decision::Send(job) if together && goes_together(&job) => {
                    gathered.push((i, job));
                }
                Decision::Send(job) => {
                    let job = Box::new(job);
                    flying.push((
                        i,
                        Box::pin(async move {
                            let o = ctx.endpoint.provision(&job).await;
                            Landed::Sent(job, o)
                        }),
                    ));
                }
            }
        }
        // Start what may start: in order, while there is room, never two of one object.
        if retry.is_empty() {
            for i in 0..n {
                if flying.len() >= MAX_IN_FLIGHT {
                    break;
                }
                if !matches!(steps[i], Step::Waiting) {
                    continue;
                }
                if (0..i)
                    .any(|j| !matches!(steps[j], Step::Done) && same_object(&keys[j], &keys[i]))
                {
                    continue;
                }
                progressed = true;
                match &changes[i] {
                    Change::Upsert { dn: target, .. } => {
                        steps[i] = Step::Reading;
                        flying.push((
                            i,
                            Box::pin(async move {
                                let way = members_apart;
                                Landed::Read(prepare(ctx, queue, attrs, way, target).await)
                            }),
                        ));
                    }
                    Change::Delete { uuid, dn } => {
                        // Deletes go into the gate's settle window: here, in turn.
                        let a = apply_delete(ctx, gate, index, uuid, dn.as_deref()).await;
                        outcome(i, a, &mut steps, &mut retry, &mut out, parking);
                    }
                }
            }
        }
        if !gathered.is_empty()
            && !flying
                .iter()
                .any(|(j, _)| matches!(steps[*j], Step::Reading))
        {
            // Every read of the batch landed: what was gathered goes out together.
            // In queue order (reads land in any order).
            gathered.sort_by_key(|(i, _)| *i);
            let (at, jobs): (Vec<usize>, Vec<Job>) =
                std::mem::take(&mut gathered).into_iter().unzip();
            flying.push((
                at[0],
                Box::pin(async move {
                    let landed = ctx.endpoint.provision_together(jobs).await;
                    Landed::SentTogether(
                        at.into_iter()
                            .zip(landed)
                            .map(|(i, (job, o))| (i, job, o))
                            .collect(),
                    )
                }),
            ));
        }
        if flying.is_empty() && !retry.is_empty() {
            // Park what the endpoint refused `park_after` times, unless it is down.
            let over: Vec<usize> = retry
                .iter()
                .map(|&(i, _)| i)
                .filter(|&i| tries[i] >= park_after && refused[i].is_some())
                .collect();
            if !over.is_empty() && (park_after <= 1 || ctx.endpoint.reachable().await) {
                retry.retain(|(i, _)| !over.contains(i));
                for i in over {
                    let r = refused[i].take().expect("checked above");
                    outcome(
                        i,
                        Applied::Park(r),
                        &mut steps,
                        &mut retry,
                        &mut out,
                        parking,
                    );
                }
                continue;
            }
        }
        if flying.is_empty() {
            let outage = if retry.is_empty() {
                None
            } else {
                ctx.endpoint.outage_wait()
            };
            if outage.is_some() {
                // Tries while the whole endpoint is down are the endpoint's, not the
                // change's: they never count toward parking it once the outage ends.
                for &(j, _) in &retry {
                    tries[j] = 0;
                    refused[j] = None;
                }
            }
            if let Some(&(i, ref why)) = retry.first() {
                // Everything in flight landed: wait, then try the retried changes again.
                // During an endpoint outage its watch said so once and paces the tries.
                let (wait, level) = match outage {
                    Some(w) => (w, log::Level::Debug),
                    None => (
                        waits[i]
                            .get_or_insert_with(|| {
                                Backoff::new(RETRY_FIRST_WAIT, Duration::from_secs(15))
                            })
                            .next_delay()
                            .unwrap_or(Duration::from_secs(60)),
                        log::Level::Warn,
                    ),
                };
                log::log!(
                    level,
                    "{why}; retrying in {:.1} s (later changes wait, to keep their order)",
                    wait.as_secs_f64()
                );
                retry.clear();
                if ctx.endpoint.outage_sleep(ctx.control, wait).await.is_some() {
                    out.end = Some(SendEnd::Signal);
                } else if with_queue(queue, |q| q.resync_owed()).await {
                    out.end = Some(SendEnd::ResyncOwed);
                }
                continue;
            }
            if steps.iter().all(|s| matches!(s, Step::Done)) || !progressed {
                break;
            }
            continue;
        }
        // Wait for the first future to land.
        let (i, landed) = std::future::poll_fn(|cx| {
            for k in 0..flying.len() {
                if let Poll::Ready(v) = flying[k].1.as_mut().poll(cx) {
                    let (i, _) = flying.swap_remove(k);
                    return Poll::Ready((i, v));
                }
            }
            Poll::Pending
        })
        .await;
        match landed {
            Landed::Read(Ok(p)) => steps[i] = Step::Read(p, false),
            Landed::Read(Err(why)) => outcome(
                i,
                Applied::Retry(why),
                &mut steps,
                &mut retry,
                &mut out,
                parking,
            ),
            Landed::Sent(job, o) => {
                let a = landed_write(i, *job, o, &keys, index, &mut tries, &mut refused);
                outcome(i, a, &mut steps, &mut retry, &mut out, parking);
            }
            Landed::SentTogether(all) => {
                for (i, job, o) in all {
                    let a = landed_write(i, job, o, &keys, index, &mut tries, &mut refused);
                    outcome(i, a, &mut steps, &mut retry, &mut out, parking);
                }
            }
        }
    }
    drop(flying);
    let done = steps.iter().take_while(|s| matches!(s, Step::Done)).count();
    out.handled = done.checked_sub(1).map(|k| seqs[k]);
    out
}

/// What a landed write means for its change (`i`, of `keys`): refused for good → park;
/// unavailable → retry, noted as a refusal to park once `park_after` tries failed so;
/// else committed to the index.
fn landed_write(
    i: usize,
    job: Job,
    o: Outcome,
    keys: &[(String, Option<String>)],
    index: &mut AnchorIndex,
    tries: &mut [u32],
    refused: &mut [Option<Refusal>],
) -> Applied {
    let refusal = |reason: &str, attempts: u32| Refusal {
        uuid: keys[i].0.clone(),
        anchor: job.external_id.clone(),
        kind: job.kind.word(),
        dn: job.dn.clone(),
        reason: reason.to_string(),
        attempts,
    };
    match &o {
        Outcome::Failed(reason) => Applied::Park(refusal(reason, tries[i] + 1)),
        Outcome::Unavailable(reason) => {
            tries[i] += 1;
            refused[i] = Some(refusal(reason, tries[i]));
            commit(index, job, o)
        }
        _ => commit(index, job, o),
    }
}

/// Resolves references through the anchor index alone (between passes there is no scope
/// scan): what the index does not know is left out until it is provisioned. A reference
/// to an object that an earlier change of the batch is still bringing in step (`busy`,
/// normalised DNs) is noted in `blocked`: the change waits for it and maps again, as it
/// would have seen it had the changes been applied one after the other.
struct IndexResolver<'a> {
    index: &'a AnchorIndex,
    busy: &'a HashSet<String>,
    blocked: std::cell::Cell<bool>,
}

impl<'a> IndexResolver<'a> {
    fn new(index: &'a AnchorIndex, busy: &'a HashSet<String>) -> IndexResolver<'a> {
        IndexResolver {
            index,
            busy,
            blocked: std::cell::Cell::new(false),
        }
    }
}

impl Resolver for IndexResolver<'_> {
    fn resolve(&self, target: &str) -> Reference {
        match self.index.by_dn(target) {
            Some((_, a)) => Reference::provisioned(a.kind, a.scim_id.clone()),
            None => {
                if !self.busy.is_empty() && self.busy.contains(&dn::normalize(target)) {
                    self.blocked.set(true);
                }
                Reference::OutOfScope
            }
        }
    }
}

/// Whether a change of the batch is to a group whose members make the allowed set of
/// `scope.groups` (a listed group, or with `nested` one inside the tree): its members may
/// have joined or left. A failed lookup counts as a change (a full pass settles it).
fn touches_scoping_group(
    allowed: &crate::sync::scope_groups::AllowedSet,
    keys: &[(String, Option<String>)],
) -> bool {
    keys.iter()
        .filter_map(|(_, d)| d.as_deref())
        .any(|d| allowed.is_read_group(d).unwrap_or(true))
}

/// Why an object the feed reported is not (or no longer) in scope, if it is not.
async fn out_of_scope<D: DirectoryReads, E: EndpointWrites>(
    ctx: &SendCtx<'_, D, E>,
    entry: &Entry,
    kind: Option<ResourceKind>,
) -> Result<Option<&'static str>, LdapError> {
    let Some(kind) = kind else {
        return Ok(Some("no longer a user or group the profile maps"));
    };
    if !dn::under_any(&entry.dn, &ctx.settings.pass.include) {
        return Ok(Some("moved out of the included subtrees"));
    }
    let filter = match kind {
        ResourceKind::User => &ctx.settings.pass.user_filter,
        ResourceKind::Group => &ctx.settings.pass.group_filter,
    };
    if ctx.dir.matches(&entry.dn, filter).await? {
        Ok(None)
    } else {
        Ok(Some(match kind {
            ResourceKind::User => "no longer matches scope.user_filter",
            ResourceKind::Group => "no longer matches scope.group_filter",
        }))
    }
}

/// Sends one admitted delete.
pub(super) async fn send_delete<D: DirectoryReads, E: EndpointWrites>(
    ctx: &SendCtx<'_, D, E>,
    index: &mut AnchorIndex,
    target: &Target,
) -> Applied {
    match ctx.endpoint.delete(target).await {
        Ok(word) => {
            deletes::landed(index, target, word);
            Applied::Done
        }
        Err(e) if e.is_transient() => Applied::Retry(format!("{}: {e}", target.dn)),
        Err(e) => Applied::Failed(format!("{}: delete failed: {e}", target.dn)),
    }
}

/// One delete the feed reported: matched to what was provisioned, confirmed gone when
/// matched by DN alone, then put into the gate's settle window (see [`defer`]).
async fn apply_delete<D: DirectoryReads, E: EndpointWrites>(
    ctx: &SendCtx<'_, D, E>,
    gate: &mut DeleteGate,
    index: &AnchorIndex,
    uuid: &str,
    dn: Option<&str>,
) -> Applied {
    let Some(found) = deletes::find_deleted(index, uuid, dn) else {
        unmatched(ctx, gate, uuid, dn, "not in the anchor index");
        return Applied::Done;
    };
    if found.by == MatchedBy::Dn {
        match anchor_gone(ctx, &found).await {
            Ok(None) => {}
            Ok(Some(why)) => {
                unmatched(ctx, gate, uuid, dn, &why);
                return Applied::Done;
            }
            Err(why) => return Applied::Retry(why),
        }
    }
    defer(
        ctx,
        gate,
        Target::of(&found.anchor, &found.object, "deleted in the directory"),
    );
    Applied::Done
}

/// Puts a delete (a directory delete or a scope exit) into the gate's settle window: it
/// is weighed with everything else that arrives in the window when the window closes.
fn defer<D, E>(ctx: &SendCtx<'_, D, E>, gate: &mut DeleteGate, t: Target) {
    let (kind, dn, why) = (t.kind.word(), t.dn.clone(), t.reason.clone());
    if gate.defer(t) {
        log::info!(
            "{kind} {dn} ({why}): delete waits {} s (sync.delete_settle_secs) to be weighed with any others",
            ctx.settings.delete_settle.as_secs()
        );
    }
}

/// What the directory says about an object the feed reported, read without touching any
/// state (so that several can be read at once).
enum Prepared {
    /// Renamed or deleted since: the feed reports that separately.
    Gone,
    /// The entry, its kind, and why it is out of scope if it is.
    Read {
        entry: Entry,
        kind: Option<ResourceKind>,
        out: Option<&'static str>,
        /// A group's member DNs, when read apart from its entry.
        members: Option<MemberDnList>,
    },
}

/// Reads the object at `target` and checks its scope; an in-scope group's members too,
/// when they are read apart (`members`: how, see [`group_members`]). `Err` is a reason to
/// retry.
async fn prepare<D: DirectoryReads, E: EndpointWrites>(
    ctx: &SendCtx<'_, D, E>,
    queue: &SharedQueue,
    attrs: &[&str],
    members: Option<MemberRead>,
    target: &str,
) -> Result<Prepared, String> {
    let entry = match ctx.dir.read(target, attrs).await {
        Ok(Some(e)) => e,
        Ok(None) => return Ok(Prepared::Gone),
        Err(e) => return Err(format!("directory: reading {target}: {e}")),
    };
    let kind = ctx.profile.classify(&entry);
    if kind == Some(ResourceKind::Group) && ctx.settings.pass.flatten.is_some() {
        // Flattened groups are brought in step by a full pass: it flattens this group and
        // every group above it (sending this one now, unflattened, would flap).
        log::info!("group {target} changed and nested groups are flattened: full pass owed");
        with_queue(queue, |q| q.mark_resync_owed(ResyncReason::GroupsChanged))
            .await
            .map_err(|e| format!("queue: {e}"))?;
        return Ok(Prepared::Gone);
    }
    let mut out = out_of_scope(ctx, &entry, kind)
        .await
        .map_err(|e| format!("directory: {e}"))?;
    if let (None, Some(allowed)) = (out, ctx.allowed) {
        // A failed lookup is a retry, never "not a member".
        if !allowed
            .contains(&entry.dn)
            .map_err(|e| format!("scope.groups: {e}"))?
        {
            out = Some("not a member of scope.groups");
        }
    }
    let members = match (kind, out, members) {
        (Some(ResourceKind::Group), None, Some(how)) => {
            let (bases, scratch) = (&ctx.settings.pass.include, &ctx.settings.state_dir);
            let read = ctx.dir.member_dns(&entry.dn, how, bases, scratch).await;
            Some(read.map_err(|e| format!("directory: group {target}: {e}"))?)
        }
        _ => None,
    };
    Ok(Prepared::Read {
        entry,
        kind,
        out,
        members,
    })
}

/// What to do with a read object.
enum Decision {
    /// Nothing (more) to send.
    Done(Applied),
    /// Provision this job, then [`commit`] its outcome.
    Send(Job),
    /// It refers to an object an earlier change is still bringing in step: decide again
    /// once that one landed (the read stays valid).
    Blocked(Prepared),
}

/// The in-memory part of applying an upsert: scope exits, mapping, the unchanged check.
/// `busy` holds the normalised DNs of earlier changes of the batch not yet applied.
fn decide<D, E>(
    ctx: &SendCtx<'_, D, E>,
    index: &mut AnchorIndex,
    gate: &mut DeleteGate,
    uuid: &str,
    prepared: Prepared,
    busy: &HashSet<String>,
) -> Decision {
    let profile = ctx.profile;
    let Prepared::Read {
        entry,
        kind,
        out,
        members,
    } = prepared
    else {
        return Decision::Done(Applied::Done);
    };
    if let Some(why) = out {
        // Leaving scope is a delete of what was provisioned (if anything was).
        let anchor = kind
            .and_then(|k| mapping::anchor_of(&entry, k, profile).ok())
            .unwrap_or_else(|| uuid.to_string());
        let Some(a) = index.get_any(&anchor) else {
            return Decision::Done(Applied::Done);
        };
        let mut t = Target::of(&anchor, &a, why);
        t.dn = entry.dn.clone();
        // Weighed with the rest of its window (an OU moved out of scope is a burst).
        defer(ctx, gate, t);
        return Decision::Done(Applied::Done);
    }
    let kind = kind.expect("in scope means classified");
    let resolver = IndexResolver::new(index, busy);
    let mut mapped = match mapping::map_entry_split(&entry, kind, profile, &resolver) {
        Ok(m) => m,
        Err(e) => return Decision::Done(Applied::Failed(e.to_string())),
    };
    if let Some(list) = &members {
        let scratch = &ctx.settings.state_dir;
        if let Err(why) = group_members::add_to(&mut mapped, &entry.dn, list, &resolver, scratch) {
            return Decision::Done(Applied::Retry(why));
        }
    } else if kind == ResourceKind::Group {
        group_members::note_whole(&entry);
    }
    if resolver.blocked.get() {
        return Decision::Blocked(Prepared::Read {
            entry,
            kind: Some(kind),
            out: None,
            members,
        });
    }
    if mapped.external_id != uuid {
        log::debug!(
            "{}: anchor {} differs from the feed's uuid {uuid}",
            entry.dn,
            mapped.external_id
        );
    }
    if gate.withdraw(&mapped.external_id) {
        log::info!(
            "{} {} is in scope again: its waiting delete is withdrawn",
            kind.word(),
            entry.dn
        );
    }
    if gate.unhold(&mapped.external_id) {
        log::info!(
            "{} {} is back in scope: its held delete is withdrawn",
            kind.word(),
            entry.dn
        );
    }
    let hash = representation_hash_with(&mapped.resource, &mapped.members);
    let known = index.get(kind, &mapped.external_id);
    if known.as_ref().is_some_and(|a| a.hash == hash) {
        index.note_dn(&mapped.external_id, &entry.dn);
        return Decision::Done(Applied::Done);
    }
    Decision::Send(Job {
        kind,
        dn: entry.dn,
        external_id: mapped.external_id,
        body: mapped.resource,
        members: mapped.members,
        nested: mapped.nested,
        hash,
        known_id: known.map(|a| a.scim_id),
        source: 0,
    })
}

/// Records a provisioning outcome in the index.
fn commit(index: &mut AnchorIndex, job: Job, outcome: Outcome) -> Applied {
    match outcome {
        Outcome::Created(id) | Outcome::Replaced(id) | Outcome::Matched(id) => {
            index.put(
                &job.external_id,
                Anchor {
                    kind: job.kind,
                    scim_id: id,
                    hash: job.hash,
                    dn: job.dn,
                },
            );
            Applied::Done
        }
        Outcome::Unavailable(reason) => Applied::Retry(format!("{}: {reason}", job.dn)),
        Outcome::Failed(reason) => Applied::Failed(format!("{}: {reason}", job.dn)),
    }
}

/// Whether the directory confirms that the object a delete matched by DN is gone: `None`
/// when no entry under the base holds its anchor; else why it is not proven gone (an entry
/// still holds the anchor: the DN was another object's; or the directory refused the search
/// or the anchor cannot be searched for). `Err` (retry) when the directory could not be
/// asked.
async fn anchor_gone<D: DirectoryReads, E: EndpointWrites>(
    ctx: &SendCtx<'_, D, E>,
    found: &Found,
) -> Result<Option<String>, String> {
    let Some(filter) = mapping::anchor_filter(ctx.profile, found.object.kind, &found.anchor) else {
        return Ok(Some(format!(
            "{} {}, last sent under this DN, has an anchor the profile cannot search for",
            found.object.kind.word(),
            found.anchor
        )));
    };
    match ctx.dir.find_one(&ctx.settings.base_dn, &filter).await {
        Ok(None) => Ok(None),
        Ok(Some(holder)) => Ok(Some(format!(
            "{} {}, last sent under this DN, is still in the directory at {holder}",
            found.object.kind.word(),
            found.anchor,
        ))),
        Err(e @ (LdapError::Search { .. } | LdapError::InvalidFilter { .. })) => Ok(Some(format!(
            "cannot confirm that {} {}, last sent under this DN, is gone: {e}",
            found.object.kind.word(),
            found.anchor
        ))),
        Err(e) => Err(format!(
            "directory: checking that {} is gone: {e}",
            found.object.dn
        )),
    }
}

/// A feed's delete that matches no provisioned object: acknowledged, since there is nothing
/// the agent can prove gone, but never silently (see the module doc).
fn unmatched<D, E>(
    ctx: &SendCtx<'_, D, E>,
    gate: &mut DeleteGate,
    uuid: &str,
    dn: Option<&str>,
    why: &str,
) {
    if let Some(d) = dn {
        if !dn::under_any(d, &ctx.settings.pass.include) {
            log::debug!("delete of {d} (outside the included subtrees): nothing to undo");
            return;
        }
    }
    let what = match dn {
        Some(d) => format!("delete of {d} (uuid {uuid})"),
        None => format!("delete of the object with uuid {uuid} (the directory sent no DN)"),
    };
    log::warn!(
        "{what} matches nothing this agent provisioned ({why}); nothing was sent for it. \
         Objects it provisioned and no longer finds are removed by the next full pass"
    );
    gate.note_unmatched(uuid, dn);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_of_one_object_are_those_sharing_a_uuid_or_a_dn() {
        let k = |u: &str, d: Option<&str>| (u.to_string(), d.map(str::to_string));
        assert!(
            same_object(&k("u1", Some("a")), &k("u1", Some("b"))),
            "renamed"
        );
        assert!(
            same_object(&k("u1", Some("a")), &k("u2", Some("a"))),
            "DN reused"
        );
        assert!(same_object(&k("u1", None), &k("u1", Some("a"))));
        assert!(!same_object(&k("u1", None), &k("u2", None)));
        assert!(!same_object(&k("u1", Some("a")), &k("u2", Some("b"))));
    }
}
