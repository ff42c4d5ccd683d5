//! A full pass's objects through SCIM Bulk (RFC 7644 §3.7), when the endpoint offers it.
//!
//! What goes through Bulk: creates of users and groups the pass knows are absent (the
//! endpoint's listing was read completely and shows no resource with their externalId:
//! [`crate::sync::listing`]), and PUTs of users to ids the agent owns (the anchor index's,
//! or a listed resource that shows the user's own externalId). Everything else goes the
//! single-request way ([`crate::sync::provision`]): a group's attributes and members (PATCH
//! against its confirmed members), soft matches, anything the listing cannot tell.
//!
//! Groups: a group without member groups is created with its members in the one operation
//! when that fits a request (`maxPayloadSize`); its `201` confirms them as a PATCH's success
//! confirms what it adds, and the pass records them in the member store. scim2-server's
//! cost of a PATCH grows with the group it changes, so this is what makes a flattened tree
//! cheap to create (measured: 3,000 members in 0.36 s inline, 7.0 s as PATCHes of 100, 1.3 s
//! as PATCHes of 1,000). A group with member groups (checked the single way) or too many
//! members for one operation is created without them; its members, and the member change
//! of a group the agent owns, then go as Bulk PATCH operations where
//! [`crate::sync::bulk_members`] allows (the same operations the single way would send),
//! else the single way.
//!
//! Users: a user whose manager's create is in the same request names the manager by its
//! bulkId (RFC 7644 §3.7.2; [`crate::sync::bulk_refs`]): applied, it is counted with the
//! hash of what the endpoint stored (the manager's id from the same answer); not applied,
//! it is handed back to the pass ([`Verdict::Held`]), never sent again as it is.
//!
//! Rules:
//! * Each object is in at most one operation of one request; the pass counts it once, by
//!   the outcome this module or its single-request retry reports.
//! * A member PATCH operation is not an object of its own: whatever its answer, it reports
//!   only success or not ([`Verdict::Member`]); its group is counted once, by the pass, when
//!   all its operations are answered (see [`crate::sync::bulk_members`] for the rest).
//! * A refused operation (4xx in the answer) is retried on its own, the single way, which
//!   reports it exactly as without Bulk (409 → the conflict is proven or explained; 404 on
//!   a PUT → matched again): it never fails or repeats the batch's other operations.
//! * **No create is sent twice blindly.** A create whose fate the answer does not tell
//!   (not mentioned, no id, 5xx or 429 for it), and every create of a request that failed
//!   ambiguously (timeout, cut link, 5xx, an unreadable answer), is retried only after a
//!   lookup by externalId ([`Hint::recheck`]): the resource found is used, never doubled.
//! * 413 halves the request and tries each half; an operation refused alone with 413 goes
//!   the single way. A request that timed out or was too large also halves every later
//!   request of the pass. An endpoint whose `/Bulk` refuses requests as such (404, 405,
//!   501, or any other 4xx for a whole request) gets no more of them from this process.
//!
//! Memory: a request holds at most `maxOperations` objects (and [`MAX_OPERATIONS`]); the
//! pass keeps at most what [`crate::sync::bulk_window`] allows out at once.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use serde_json::Value;

use crate::scim::bulk::{self, Limits, OpResult, SentOp};
use crate::scim::client::{ScimClient, ServiceProviderConfig};
use crate::scim::ResourceKind;
use crate::sync::bulk_refs::{self, Gathered, Referring};
use crate::sync::provision::{audit_outcome, whole_body, with_id, Hint, Job, Outcome};

/// Most operations in one request, whatever the endpoint allows (memory and timeouts).
pub const MAX_OPERATIONS: usize = 250;

/// The Bulk side of a pass: the endpoint's limits as learnt and shrunk, and whether Bulk
/// is still used. Shared by the coordinator and the workers.
#[derive(Debug)]
pub struct Lane {
    max_operations: AtomicUsize,
    max_payload_size: usize,
    off: AtomicBool,
    next_id: AtomicU64,
}

/// What a planned operation does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verb {
    /// POST: the endpoint holds no resource with the object's externalId.
    Create,
    /// PUT to an id the agent owns; `matched`: found by the listing, not the index.
    Replace {
        /// The resource's id.
        id: String,
        /// Proven by the listing (reported as matched), not known to the index.
        matched: bool,
    },
    /// One PATCH operation of a group's member change (the job is a stand-in naming the
    /// group by its anchor).
    Members,
}

/// One object's operation, encoded and ready for a request.
#[derive(Debug)]
pub struct Planned {
    /// The object.
    job: Job,
    verb: Verb,
    sent: SentOp,
    op: Vec<u8>,
    /// A group's create carries its members.
    with_members: bool,
    /// A user naming its manager by the bulkId of a create of the same request
    /// ([`crate::sync::bulk_refs`]).
    refers: Option<Box<Referring>>,
}

/// What became of one object of a request.
#[derive(Debug)]
pub enum Verdict {
    /// Final: count it.
    Outcome(Outcome),
    /// Send it again the single way, with this hint.
    Again(Hint),
    /// A member PATCH operation was applied (`true`) or may not have been.
    Member(bool),
    /// A user that named its manager by bulkId and was not applied: to be mapped again once
    /// the phase has drained (`true`: its create may have landed, look it up first).
    Held(bool),
}

impl Lane {
    /// The lane for an endpoint whose `/ServiceProviderConfig` says Bulk is supported with
    /// usable limits; `None` otherwise.
    pub fn for_endpoint(spc: &ServiceProviderConfig) -> Option<Lane> {
        let b = spc.bulk?;
        let ops = usize::try_from(b.max_operations).unwrap_or(usize::MAX);
        let bytes = usize::try_from(b.max_payload_size).unwrap_or(usize::MAX);
        // Room for at least two small operations, or Bulk buys nothing.
        if ops < 2 || bytes < 1024 {
            return None;
        }
        Some(Lane {
            max_operations: AtomicUsize::new(ops.min(MAX_OPERATIONS)),
            max_payload_size: bytes,
            off: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
        })
    }

    /// The limits requests are framed to now.
    pub fn limits(&self) -> Limits {
        Limits {
            max_operations: self.max_operations.load(Ordering::Relaxed).max(1),
            max_payload_size: self.max_payload_size,
        }
    }

    /// Whether Bulk is no longer used (the endpoint refused it).
    pub fn is_off(&self) -> bool {
        self.off.load(Ordering::Relaxed)
    }

    fn turn_off(&self, why: &str) {
        if !self.off.swap(true, Ordering::Relaxed) {
            log::warn!("SCIM Bulk: {why}; sending one request per object from now on");
        }
    }

    /// Halves the operations of later requests (not below 2).
    fn shrink(&self, to_at_most: usize) {
        let now = self.max_operations.load(Ordering::Relaxed);
        let next = to_at_most.max(2).min(now);
        if next < now {
            self.max_operations.store(next, Ordering::Relaxed);
            log::info!("SCIM Bulk: at most {next} operations a request from now on");
        }
    }

    /// Encodes `job`'s operation; gives the job back when it fits no request alone. The
    /// planned job keeps its body only in the encoded operation ([`Planned::into_job`]).
    pub async fn plan(&self, scim: &ScimClient, job: Job, verb: Verb) -> Result<Planned, Job> {
        let mut with_members = false;
        let (sent, data) = match &verb {
            Verb::Create => {
                // A group goes with its members when it has no member groups (those are
                // checked the single way) and the operation fits a request; else without
                // (they follow as PATCH operations). The pass sends groups here only with a
                // member store.
                let sent = SentOp::create(
                    job.kind,
                    format!("b{}", self.next_id.fetch_add(1, Ordering::Relaxed)),
                );
                if job.kind == ResourceKind::User || job.nested.is_empty() {
                    let body = scim.fit(job.kind, &whole_body(&job), true).await;
                    let op = sent.encode(Some(&body));
                    if self.limits().fits(1, op.len()) {
                        with_members = job.kind == ResourceKind::Group && !job.members.is_empty();
                        return Ok(self.planned(job, verb, sent, op, with_members));
                    }
                    if job.kind == ResourceKind::User {
                        return Err(job);
                    }
                }
                (sent, scim.fit(job.kind, &job.body, true).await)
            }
            Verb::Members => return Err(job),
            Verb::Replace { id, .. } => {
                let body = scim
                    .fit(job.kind, &with_id(&whole_body(&job), id), false)
                    .await;
                (SentOp::replace(job.kind, id), body)
            }
        };
        let op = sent.encode(Some(&data));
        if !self.limits().fits(1, op.len()) {
            return Err(job);
        }
        Ok(self.planned(job, verb, sent, op, with_members))
    }

    fn planned(
        &self,
        mut job: Job,
        verb: Verb,
        sent: SentOp,
        op: Vec<u8>,
        with_members: bool,
    ) -> Planned {
        job.body = Value::Null;
        Planned {
            job,
            verb,
            sent,
            op,
            with_members,
            refers: None,
        }
    }
}

impl Planned {
    /// One member PATCH operation of the group anchored at `anchor`
    /// ([`crate::sync::bulk_members::plan`]).
    pub fn member(anchor: &str, sent: SentOp, op: Vec<u8>) -> Planned {
        Planned {
            job: Job {
                kind: ResourceKind::Group,
                dn: String::new(),
                external_id: anchor.to_string(),
                body: Value::Null,
                members: Default::default(),
                nested: Vec::new(),
                hash: 0,
                known_id: None,
                source: 0,
            },
            verb: Verb::Members,
            sent,
            op,
            with_members: false,
            refers: None,
        }
    }

    /// Marks this user's operation as naming its manager by bulkId (its body does).
    pub fn refer(&mut self, r: Referring) {
        self.refers = Some(Box::new(r));
    }

    /// The anchor of the object (of the group, for a member operation).
    pub fn anchor(&self) -> &str {
        &self.job.external_id
    }

    /// Whether this is an object of its own (not a member operation of a group).
    pub fn is_object(&self) -> bool {
        self.verb != Verb::Members
    }

    /// The job with its body back (as encoded: fitted to the endpoint's schema, which
    /// fitting again leaves as it is), to be sent the single way.
    pub fn into_job(self) -> Job {
        let mut job = self.job;
        let mut body = serde_json::from_slice::<Value>(&self.op)
            .ok()
            .and_then(|mut op| op.get_mut("data").map(Value::take))
            .unwrap_or(Value::Null);
        if let Value::Object(m) = &mut body {
            // A PUT's body carries the id; the single way adds it where it belongs.
            m.remove("id");
            // So do a group's members: they travel apart, in `job.members`. Kept in the
            // body they were a JSON object per member, for every object of a Bulk request
            // handed back (a timed-out request of flattened groups: 100 MiB and more).
            if !job.members.is_empty() {
                m.remove("members");
            }
        }
        job.body = body;
        job
    }
}

/// The bytes of `batch`'s operations (what [`crate::sync::bulk_window`] counts).
pub fn bytes(batch: &[Planned]) -> usize {
    batch.iter().map(|p| p.op.len()).sum()
}

/// Objects gathered for the next request.
#[derive(Debug, Default)]
pub struct Buffer {
    items: Vec<Planned>,
    sum: usize,
    /// The users created by the gathered operations: what a later user may name by bulkId.
    users: Gathered,
}

impl Buffer {
    /// Adds `p`; returns what was gathered before it when `p` does not fit beside it.
    pub fn push(&mut self, p: Planned, limits: Limits) -> Option<Vec<Planned>> {
        let out = (!self.joins(&p, limits)).then(|| self.take());
        self.sum += p.op.len();
        if let (Verb::Create, ResourceKind::User, Some(b)) = (&p.verb, p.job.kind, &p.sent.bulk_id)
        {
            self.users.add(&p.job.external_id, b);
        }
        self.items.push(p);
        out
    }

    /// Whether `p` would go in the request being gathered (not start the next one).
    pub fn joins(&self, p: &Planned, limits: Limits) -> bool {
        self.items.is_empty() || limits.fits(self.items.len() + 1, self.sum + p.op.len())
    }

    /// The bulkId of the gathered create of the user anchored at `anchor`.
    pub fn bulk_id(&self, anchor: &str) -> Option<&str> {
        self.users.bulk_id(anchor)
    }

    /// Everything gathered.
    pub fn take(&mut self) -> Vec<Planned> {
        self.sum = 0;
        self.users.clear();
        std::mem::take(&mut self.items)
    }

    /// Whether nothing is gathered.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Sends `batch` as one request (halved on 413) and says what became of each object.
pub async fn send(scim: &ScimClient, lane: &Lane, batch: Vec<Planned>) -> Vec<(Job, Verdict)> {
    let sent: Vec<SentOp> = batch.iter().map(|p| p.sent.clone()).collect();
    let body = bulk::body(batch.iter().map(|p| p.op.as_slice()));
    let answer = scim.bulk(&sent, body).await;
    let results = match answer {
        Ok(answer) => match bulk::parse_answer(&sent, &answer) {
            Ok(r) => r,
            Err(e) => {
                log::warn!(
                    "SCIM Bulk: {e}; its {} objects are matched again before anything is created",
                    batch.len()
                );
                return again_all(batch, true);
            }
        },
        Err(e) if e.status() == Some(413) => {
            if batch.len() == 1 {
                return again_all(batch, false);
            }
            let half = batch.len() / 2;
            lane.shrink(half);
            let mut first = batch;
            let second = first.split_off(half);
            let mut out = Box::pin(send(scim, lane, first)).await;
            out.extend(Box::pin(send(scim, lane, second)).await);
            return out;
        }
        Err(e)
            if matches!(e.status(), Some(400..=499)) && !matches!(e.status(), Some(401 | 429)) =>
        {
            // The request as such was refused: nothing of it was applied.
            lane.turn_off(&e.to_string());
            return again_all(batch, false);
        }
        Err(e) => {
            if e.is_ambiguous_write() {
                lane.shrink(batch.len() / 2);
            }
            log::warn!(
                "{e}; the request's {} objects are matched again before anything is created",
                batch.len()
            );
            return again_all(batch, true);
        }
    };
    let refs = batch.iter().any(|p| p.refers.is_some());
    let created: Vec<(String, String)> = match refs {
        true => bulk_refs::created_ids(sent.iter().zip(&results).map(|(s, r)| {
            let id = match r {
                OpResult::Done { id, .. } => id.as_deref(),
                _ => None,
            };
            (s.bulk_id.as_deref(), id)
        }))
        .into_iter()
        .map(|(b, id)| (b.to_string(), id.to_string()))
        .collect(),
        false => Vec::new(),
    };
    batch
        .into_iter()
        .zip(results)
        .map(|(mut p, r)| {
            if let Some(refers) = p.refers.take() {
                let Some(v) = referring_verdict(&mut p, &refers, r, &created) else {
                    return (p.job, Verdict::Held(false));
                };
                return (p.job, v);
            }
            let v = verdict(&p, r);
            if let Verdict::Outcome(o) = &v {
                audit_outcome(&p.job, o);
            }
            match v {
                Verdict::Again(_) => (p.into_job(), v),
                _ => (p.job, v),
            }
        })
        .collect()
}

/// Every object of `batch` again the single way (`recheck`: after a lookup).
fn again_all(batch: Vec<Planned>, recheck: bool) -> Vec<(Job, Verdict)> {
    batch
        .into_iter()
        .map(|p| {
            if !p.is_object() {
                return (p.job, Verdict::Member(false));
            }
            let recheck = recheck && p.verb == Verb::Create;
            if p.refers.is_some() {
                return (p.job, Verdict::Held(recheck));
            }
            (
                p.into_job(),
                Verdict::Again(Hint {
                    recheck,
                    ..Hint::default()
                }),
            )
        })
        .collect()
}

/// The fate of a user that named its manager by bulkId: applied, counted with the hash of
/// what the endpoint stored (the manager's id from `created`, the same answer's creates by
/// bulkId); else `Held` (never sent again as it is), `None` standing for `Held(false)`.
fn referring_verdict(
    p: &mut Planned,
    refers: &Referring,
    r: OpResult,
    created: &[(String, String)],
) -> Option<Verdict> {
    let applied = matches!(r, OpResult::Done { .. });
    let v = verdict(p, r);
    if !applied {
        let recheck = matches!(&v, Verdict::Again(h) if h.recheck);
        return Some(Verdict::Held(recheck));
    }
    let id = created.iter().find(|(b, _)| b == refers.target());
    // Applied without the manager's id: what it stores is unknown (sent again next pass).
    p.job.hash = id.map_or(0, |(_, id)| refers.hash_with(id));
    // And the source hash it maps from (recorded only beside a known hash).
    p.job.source = id.map_or(0, |(_, id)| refers.source_with(id));
    if let Verdict::Outcome(o) = &v {
        audit_outcome(&p.job, o);
    }
    matches!(v, Verdict::Outcome(_)).then_some(v)
}

/// One object's fate from its operation's result.
fn verdict(p: &Planned, r: OpResult) -> Verdict {
    let again = |recheck| {
        Verdict::Again(Hint {
            recheck,
            ..Hint::default()
        })
    };
    match (&p.verb, r) {
        (Verb::Members, r) => Verdict::Member(matches!(r, OpResult::Done { .. })),
        (Verb::Create, OpResult::Done { id: Some(id), .. }) => match p.job.kind {
            ResourceKind::User => Verdict::Outcome(Outcome::Created(id)),
            // Its members follow, as Bulk PATCH operations or the single way, or came with
            // it (the pass records them); it is counted there.
            ResourceKind::Group => Verdict::Again(Hint {
                created: Some(id),
                with_members: p.with_members,
                ..Hint::default()
            }),
        },
        (Verb::Create, OpResult::Refused { status, .. })
            if status >= 500 || status == 429 || status == 408 =>
        {
            again(true)
        }
        (Verb::Create, OpResult::Refused { status, detail, .. }) => {
            log::debug!(
                "{}: Bulk POST refused ({status}{}); sending it on its own",
                p.job.dn,
                detail.map(|d| format!(": {d}")).unwrap_or_default()
            );
            again(false)
        }
        (Verb::Create, _) => again(true),
        (Verb::Replace { id, matched }, OpResult::Done { .. }) => Verdict::Outcome(if *matched {
            Outcome::Matched(id.clone())
        } else {
            Outcome::Replaced(id.clone())
        }),
        (Verb::Replace { .. }, _) => again(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::mapping::MemberIds;

    fn job(kind: ResourceKind, n: u32) -> Job {
        Job {
            kind,
            dn: format!("uid=u{n},o=t"),
            external_id: format!("x{n}"),
            body: serde_json::json!({"userName": format!("u{n}")}),
            members: MemberIds::default(),
            nested: Vec::new(),
            hash: 1,
            known_id: None,
            source: 0,
        }
    }

    fn planned(kind: ResourceKind, n: u32, verb: Verb) -> Planned {
        let sent = match &verb {
            Verb::Create => SentOp::create(kind, format!("b{n}")),
            Verb::Replace { id, .. } => SentOp::replace(kind, id),
            Verb::Members => SentOp::patch(kind, "g1"),
        };
        let op = sent.encode(None);
        Planned {
            job: job(kind, n),
            verb,
            sent,
            op,
            with_members: false,
            refers: None,
        }
    }

    /// User `n` naming its manager by the bulkId `target`.
    fn referring(n: u32, verb: Verb, target: &str) -> (Planned, Referring) {
        let mut p = planned(ResourceKind::User, n, verb);
        let body = serde_json::json!({"userName": format!("u{n}"),
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User":
                {"manager": {"value": bulk_refs::reference(target)}}});
        let r = Referring::new(&body, target).unwrap();
        p.refer(r.clone());
        (p, r)
    }

    fn with_manager(n: u32, id: &str) -> u64 {
        crate::sync::anchors::representation_hash(&serde_json::json!({"userName": format!("u{n}"),
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User":
                {"manager": {"value": id}}}))
    }

    #[test]
    fn a_referring_user_applied_is_counted_with_the_hash_of_the_managers_real_id() {
        let created = vec![("b1".to_string(), "m1".to_string())];
        let (mut p, r) = referring(2, Verb::Create, "b1");
        let v = referring_verdict(&mut p, &r, done("u2"), &created);
        assert!(matches!(v, Some(Verdict::Outcome(Outcome::Created(id))) if id == "u2"));
        assert_eq!(p.job.hash, with_manager(2, "m1"));
        // A PUT to an owned id, the same way.
        let (mut p, r) = referring(
            3,
            Verb::Replace {
                id: "u3".into(),
                matched: false,
            },
            "b1",
        );
        let v = referring_verdict(&mut p, &r, done("u3"), &created);
        assert!(matches!(v, Some(Verdict::Outcome(Outcome::Replaced(_)))));
        assert_eq!(p.job.hash, with_manager(3, "m1"));
        // Applied, but the answer gave the manager no id: recorded as unknown.
        let (mut p, r) = referring(4, Verb::Create, "b9");
        let v = referring_verdict(&mut p, &r, done("u4"), &created);
        assert!(matches!(v, Some(Verdict::Outcome(Outcome::Created(_)))));
        assert_eq!(p.job.hash, 0);
    }

    #[test]
    fn a_referring_user_applied_records_the_source_hash_its_managers_real_id_completes() {
        use crate::ldap::Entry;
        use crate::scim::mapping::{Reference, Resolver};
        use crate::scim::profile::{ProfileKind, SyncProfile};
        use crate::scim::source_hash::{SourceHash, SourceHasher};
        struct Boss(Reference);
        impl Resolver for Boss {
            fn resolve(&self, _dn: &str) -> Reference {
                self.0.clone()
            }
        }
        let hasher =
            SourceHasher::for_users(&SyncProfile::default_for(ProfileKind::OpenLdap)).unwrap();
        let entry = Entry::new("uid=u2,o=t")
            .with("uid", "u2")
            .with("manager", "uid=boss,o=t");
        let pending = hasher
            .source(&entry, &Boss(Reference::Pending))
            .and_then(SourceHash::pending);
        assert!(pending.is_some());
        let resolved = hasher.hash(&entry, &Boss(Reference::Id("m1".into())));
        let created = vec![("b1".to_string(), "m1".to_string())];
        let referring_with_source = |target: &str| {
            let (mut p, mut r) = referring(2, Verb::Create, target);
            r.set_source(pending);
            p.refer(r.clone());
            (p, r)
        };
        let (mut p, r) = referring_with_source("b1");
        referring_verdict(&mut p, &r, done("u2"), &created);
        assert_eq!(Some(p.job.source), resolved);
        // No id for the manager: no hash, so no source either.
        let (mut p, r) = referring_with_source("b9");
        referring_verdict(&mut p, &r, done("u2"), &created);
        assert_eq!((p.job.hash, p.job.source), (0, 0));
        // Handed back: it is mapped again, with a source of its own; this one goes.
        let (mut p, r) = referring_with_source("b1");
        referring_verdict(&mut p, &r, refused(409), &created);
        assert_eq!(p.job.source, 0);
        // Without a pending source (the pass could not compute one): unknown.
        let (mut p, r) = referring(2, Verb::Create, "b1");
        referring_verdict(&mut p, &r, done("u2"), &created);
        assert_eq!(p.job.source, 0);
    }

    #[test]
    fn a_referring_user_not_applied_is_held_never_sent_again_as_it_is() {
        let (mut p, r) = referring(2, Verb::Create, "b1");
        // The reference could not be resolved (the manager's create failed): 409.
        assert!(matches!(
            referring_verdict(&mut p, &r, refused(409), &[]),
            Some(Verdict::Held(false))
        ));
        assert!(matches!(
            referring_verdict(&mut p, &r, refused(400), &[]),
            Some(Verdict::Held(false))
        ));
        // Its create may have landed: looked up first.
        for res in [refused(500), refused(429), OpResult::Unknown("x".into())] {
            assert!(matches!(
                referring_verdict(&mut p, &r, res, &[]),
                Some(Verdict::Held(true))
            ));
        }
        let (mut p, r) = referring(
            3,
            Verb::Replace {
                id: "u3".into(),
                matched: false,
            },
            "b1",
        );
        assert!(matches!(
            referring_verdict(&mut p, &r, OpResult::Unknown("x".into()), &[]),
            Some(Verdict::Held(false))
        ));
    }

    #[test]
    fn a_failed_request_holds_its_referring_users() {
        let batch = vec![
            planned(ResourceKind::User, 1, Verb::Create),
            referring(2, Verb::Create, "b1").0,
        ];
        let v = again_all(batch, true);
        assert!(is_again(&v[0].1, true));
        assert!(matches!(v[1].1, Verdict::Held(true)));
        let v = again_all(vec![referring(2, Verb::Create, "b1").0], false);
        assert!(matches!(v[0].1, Verdict::Held(false)));
    }

    #[test]
    fn the_buffer_names_its_user_creates_until_the_request_goes() {
        let limits = Limits {
            max_operations: 2,
            max_payload_size: 1 << 20,
        };
        let mut b = Buffer::default();
        let m = planned(ResourceKind::User, 1, Verb::Create);
        assert!(b.push(m, limits).is_none());
        assert_eq!(b.bulk_id("x1"), Some("b1"));
        // A PUT and a group create are not named.
        let put = planned(
            ResourceKind::User,
            2,
            Verb::Replace {
                id: "i2".into(),
                matched: false,
            },
        );
        assert!(b.joins(&put, limits));
        assert!(b.push(put, limits).is_none());
        assert_eq!(b.bulk_id("x2"), None);
        // Full: the next object would start the next request.
        let g = planned(ResourceKind::Group, 3, Verb::Create);
        assert!(!b.joins(&g, limits));
        assert_eq!(b.push(g, limits).map(|v| v.len()), Some(2));
        assert_eq!(b.bulk_id("x1"), None, "gone with its request");
        assert_eq!(b.bulk_id("x3"), None);
    }

    fn done(id: &str) -> OpResult {
        OpResult::Done {
            status: 201,
            id: Some(id.into()),
        }
    }

    fn refused(status: u16) -> OpResult {
        OpResult::Refused {
            status,
            scim_type: None,
            detail: None,
        }
    }

    fn is_again(v: &Verdict, recheck: bool) -> bool {
        matches!(v, Verdict::Again(h) if h.recheck == recheck && h.created.is_none())
    }

    #[test]
    fn a_created_user_is_counted_a_created_group_goes_on_to_its_members() {
        let u = planned(ResourceKind::User, 1, Verb::Create);
        assert!(
            matches!(verdict(&u, done("i1")), Verdict::Outcome(Outcome::Created(id)) if id == "i1")
        );
        let g = planned(ResourceKind::Group, 2, Verb::Create);
        assert!(
            matches!(verdict(&g, done("g2")), Verdict::Again(Hint { recheck: false, created: Some(id), .. }) if id == "g2")
        );
    }

    #[test]
    fn a_group_created_with_its_members_says_so() {
        let mut g = planned(ResourceKind::Group, 2, Verb::Create);
        g.with_members = true;
        assert!(
            matches!(verdict(&g, done("g2")), Verdict::Again(Hint { created: Some(id), with_members: true, members_sent: false, .. }) if id == "g2")
        );
        // Refused: the single way creates it without members and PATCHes them.
        assert!(is_again(&verdict(&g, refused(400)), false));
    }

    #[test]
    fn a_create_of_unknown_fate_is_looked_up_before_it_is_sent_again() {
        let u = planned(ResourceKind::User, 1, Verb::Create);
        assert!(is_again(&verdict(&u, OpResult::Unknown("x".into())), true));
        assert!(is_again(&verdict(&u, refused(500)), true));
        assert!(is_again(&verdict(&u, refused(429)), true));
        // Refused for itself: tried alone, where the conflict is explained.
        assert!(is_again(&verdict(&u, refused(409)), false));
        assert!(is_again(&verdict(&u, refused(400)), false));
    }

    #[test]
    fn replaces_are_counted_as_what_proved_them_and_retried_alone_otherwise() {
        let r = planned(
            ResourceKind::User,
            1,
            Verb::Replace {
                id: "i1".into(),
                matched: false,
            },
        );
        assert!(
            matches!(verdict(&r, done("i1")), Verdict::Outcome(Outcome::Replaced(id)) if id == "i1")
        );
        assert!(is_again(&verdict(&r, refused(404)), false));
        assert!(is_again(&verdict(&r, OpResult::Unknown("x".into())), false));
        let m = planned(
            ResourceKind::User,
            1,
            Verb::Replace {
                id: "i1".into(),
                matched: true,
            },
        );
        assert!(matches!(
            verdict(&m, done("i1")),
            Verdict::Outcome(Outcome::Matched(_))
        ));
    }

    #[test]
    fn a_member_operation_reports_only_whether_it_was_applied() {
        let m = Planned::member("gx", SentOp::patch(ResourceKind::Group, "g1"), Vec::new());
        assert!(!m.is_object());
        assert!(matches!(verdict(&m, done("g1")), Verdict::Member(true)));
        // Refused, of unknown fate, a 5xx: its group goes again the single way, alone.
        for r in [
            refused(400),
            refused(404),
            refused(500),
            OpResult::Unknown("x".into()),
        ] {
            assert!(matches!(verdict(&m, r), Verdict::Member(false)));
        }
    }

    #[test]
    fn a_failed_request_fails_its_member_operations_and_rechecks_its_creates() {
        let batch = vec![
            planned(ResourceKind::Group, 1, Verb::Create),
            Planned::member("gx", SentOp::patch(ResourceKind::Group, "g1"), Vec::new()),
        ];
        let v = again_all(batch, true);
        assert!(is_again(&v[0].1, true));
        assert!(matches!(v[1].1, Verdict::Member(false)));
        assert_eq!(v[1].0.external_id, "gx");
    }

    #[test]
    fn an_ambiguous_request_rechecks_only_creates() {
        let batch = vec![
            planned(ResourceKind::User, 1, Verb::Create),
            planned(
                ResourceKind::User,
                2,
                Verb::Replace {
                    id: "i2".into(),
                    matched: false,
                },
            ),
        ];
        let v = again_all(batch, true);
        assert!(is_again(&v[0].1, true));
        assert!(is_again(&v[1].1, false));
    }

    #[test]
    fn the_buffer_hands_out_a_batch_when_the_next_object_does_not_fit() {
        let limits = Limits {
            max_operations: 2,
            max_payload_size: 1 << 20,
        };
        let mut b = Buffer::default();
        assert!(b
            .push(planned(ResourceKind::User, 1, Verb::Create), limits)
            .is_none());
        assert!(b
            .push(planned(ResourceKind::User, 2, Verb::Create), limits)
            .is_none());
        let out = b
            .push(planned(ResourceKind::User, 3, Verb::Create), limits)
            .unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(b.take().len(), 1);
        assert!(b.is_empty());
    }

    #[test]
    fn a_planned_job_gets_its_body_back_without_the_put_id() {
        let mut p = planned(
            ResourceKind::User,
            1,
            Verb::Replace {
                id: "i1".into(),
                matched: false,
            },
        );
        p.op = p
            .sent
            .encode(Some(&serde_json::json!({"id": "i1", "userName": "u1"})));
        p.job.body = Value::Null;
        let job = p.into_job();
        assert_eq!(job.body, serde_json::json!({"userName": "u1"}));
        assert_eq!(job.external_id, "x1");
    }

    #[test]
    fn a_planned_group_gets_its_body_back_without_the_members_it_keeps_apart() {
        let mut p = planned(ResourceKind::Group, 1, Verb::Create);
        p.job.body = serde_json::json!({"displayName": "g"});
        p.job.members = ["m1", "m2"].into_iter().collect();
        let whole = crate::sync::provision::whole_body(&p.job).into_owned();
        assert_eq!(whole["members"][1]["value"], "m2");
        p.op = p.sent.encode(Some(&whole));
        p.job.body = Value::Null;
        let job = p.into_job();
        assert_eq!(job.body, serde_json::json!({"displayName": "g"}));
        assert_eq!(job.members.iter().collect::<Vec<_>>(), vec!["m1", "m2"]);
        assert_eq!(
            crate::sync::provision::whole_body(&job).into_owned(),
            whole,
            "the single way sends what the Bulk operation held"
        );
    }

    #[test]
    fn limits_come_from_the_service_provider_config() {
        let spc = |ops, bytes| ServiceProviderConfig {
            patch: true,
            bulk: Some(crate::scim::client::BulkLimits {
                max_operations: ops,
                max_payload_size: bytes,
            }),
            filter: true,
            filter_max_results: None,
            etag: false,
        };
        let l = Lane::for_endpoint(&spc(5000, 1 << 20)).unwrap();
        assert_eq!(l.limits().max_operations, MAX_OPERATIONS);
        assert!(Lane::for_endpoint(&spc(1, 1 << 20)).is_none());
        assert!(Lane::for_endpoint(&spc(100, 0)).is_none());
        l.shrink(10);
        assert_eq!(l.limits().max_operations, 10);
        l.shrink(0);
        assert_eq!(l.limits().max_operations, 2);
    }
}
