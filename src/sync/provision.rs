//! Provisioning one object: decide create / replace / match at the endpoint and do it.
//!
//! Rules (docs/architecture.md §4):
//! * hard match by externalId: a resource the index does not know is looked up by
//!   `externalId eq` before anything is created, so a lost index or a crash after a POST
//!   never duplicates;
//! * a match is proven on the resource itself: a resource the endpoint lists is ours only
//!   when it shows the object's own externalId (a service may ignore the filter and list
//!   everything, or keep no externalId); a create that conflicts (409) reads every page
//!   of the endpoint for that proof before it gives up;
//! * soft match by userName only when the config allows it, and only for a resource with no
//!   externalId of its own (never steal a resource another system anchors);
//! * the agent never modifies a resource it did not create or match;
//! * group membership is never sent as a whole list: a group is created or updated without
//!   `members` (POST, or PATCH replace of its other attributes), then its members are
//!   brought in step by PATCH add/remove in chunks of `member_chunk` values against the
//!   members last confirmed at the endpoint ([`crate::sync::members`]). Without a member
//!   store (unit tests) the whole representation is sent as before.
//!
//! A full pass may have sent the object through SCIM Bulk first ([`crate::sync::bulk`]);
//! what comes back here from it carries a [`Hint`]: look it up before creating (its create
//! may have landed), or the group was created and only its members are left.
//!
//! A [`Job`] carries a group's members apart from its JSON body, as a compact sorted
//! [`MemberIds`]: the body never holds them, is never cloned with them, and the whole
//! representation is built only on the path without a member store.

use serde_json::Value;

use std::sync::Arc;

use crate::scim::client::{ScimClient, ScimError};
use crate::scim::mapping::MemberIds;
use crate::scim::ResourceKind;
use crate::sync::diff::{self, Op};
use crate::sync::listing::{Listed, Listing};
use crate::sync::members::{MemberStore, MemberSyncError};
use std::sync::OnceLock;

/// One object to bring in step.
#[derive(Debug, Clone)]
pub struct Job {
    /// User or group.
    pub kind: ResourceKind,
    /// The directory object (for messages).
    pub dn: String,
    /// The anchor.
    pub external_id: String,
    /// The SCIM representation (no `id`) without `members`.
    pub body: Value,
    /// A group's member ids (empty for users): the `members` of the representation.
    pub members: MemberIds,
    /// The member ids that are groups (sorted; a subset of `members`).
    pub nested: Vec<String>,
    /// Hash of the whole representation, `body` with `members`
    /// ([`crate::sync::anchors::representation_hash_with`]).
    pub hash: u64,
    /// The SCIM id the index knows, if any.
    pub known_id: Option<String>,
    /// The source hash of the user's mapping inputs `body` was mapped from
    /// ([`crate::scim::source_hash`]; 0: unknown, and always for groups): recorded beside
    /// `hash` when the write lands, so that the next pass need not map the user again.
    /// Belongs to this mapping: a job for the object mapped again carries its own.
    pub source: u64,
}

/// What happened to a [`Job`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// POSTed; the endpoint gave it this id.
    Created(String),
    /// PUT over the resource the index knew.
    Replaced(String),
    /// Found by externalId (or adopted by userName) and replaced.
    Matched(String),
    /// Could not be provisioned; the reason names the HTTP status or the cause.
    Failed(String),
    /// The endpoint could not be reached or was overloaded even after the client's retries
    /// (transport error, 429, 5xx): worth trying again later, not the object's fault.
    Unavailable(String),
}

/// What a full pass already knows about a [`Job`] it hands over again after Bulk
/// ([`crate::sync::bulk`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hint {
    /// A create of this object may have landed: look it up by externalId, never trusting
    /// the pass's listing, before anything is created.
    pub recheck: bool,
    /// The group was created (without members) under this id: bring its members in step
    /// and report it created.
    pub created: Option<String>,
    /// Member PATCH operations of this group went through Bulk and not all were answered
    /// with success: its stored members are unknown (forgotten), never taken as empty.
    pub members_sent: bool,
    /// The group was created through Bulk with its members: they are confirmed as a
    /// PATCH's success confirms what it adds (the pass records them).
    pub with_members: bool,
}

/// How the worker behaves.
#[derive(Debug, Clone)]
pub struct ProvisionMode {
    /// Print the writes instead of sending them (reads still happen).
    pub dry_run: bool,
    /// With `dry_run`: each write as one JSON line (`--json`), not the per-object diff.
    pub dry_run_json: bool,
    /// Allow adopting an existing user by userName.
    pub soft_match: bool,
    /// Where confirmed group members are kept; `None`: groups are sent whole.
    pub members: Option<Arc<MemberStore>>,
    /// Member values per PATCH request.
    pub member_chunk: usize,
    /// What the endpoint holds, when a full pass read it ([`crate::sync::listing`]): set
    /// once while the workers run; unset, every unknown object is looked up.
    pub listing: Option<Arc<OnceLock<Listing>>>,
    /// A full pass may send through SCIM Bulk where the endpoint offers it
    /// ([`crate::sync::bulk`]; `sync.bulk`).
    pub bulk: bool,
}

impl ProvisionMode {
    /// The listing's word on an object, [`Listed::Unknown`] without a listing.
    fn listed(&self, job: &Job) -> Listed {
        match self.listing.as_ref().and_then(|l| l.get()) {
            Some(l) => l.lookup(job.kind, &job.external_id),
            None => Listed::Unknown,
        }
    }
}

/// The id of the resource that shows the object's externalId: from the pass's listing
/// when it can tell, else by a lookup (proven on the resource either way).
async fn matched_id(
    scim: &ScimClient,
    job: &Job,
    mode: &ProvisionMode,
) -> Result<Option<String>, ScimError> {
    match mode.listed(job) {
        Listed::Found(id) => Ok(Some(id)),
        Listed::Absent => Ok(None),
        Listed::Unknown => scim
            .find_by_external_id(job.kind, &job.external_id)
            .await?
            .map(|found| resource_id(&found))
            .transpose(),
    }
}

impl ProvisionMode {
    /// Plain mode: whole representations, no member store.
    pub fn plain(dry_run: bool, soft_match: bool) -> ProvisionMode {
        ProvisionMode {
            dry_run,
            dry_run_json: false,
            soft_match,
            members: None,
            member_chunk: crate::sync::members::DEFAULT_CHUNK,
            listing: None,
            bulk: false,
        }
    }
}

/// Brings one object in step. Never panics on endpoint answers; every failure is an
/// [`Outcome::Failed`] with a reason.
pub async fn provision(scim: &ScimClient, job: &Job, mode: &ProvisionMode) -> Outcome {
    provision_with(scim, job, mode, &Hint::default()).await
}

/// [`provision`] with what the pass learnt from a Bulk request about the object.
pub async fn provision_with(
    scim: &ScimClient,
    job: &Job,
    mode: &ProvisionMode,
    hint: &Hint,
) -> Outcome {
    let unlisted;
    let mode = if hint.recheck && mode.listing.is_some() {
        unlisted = ProvisionMode {
            listing: None,
            ..mode.clone()
        };
        &unlisted
    } else {
        mode
    };
    let group_store = match job.kind {
        ResourceKind::Group => mode.members.as_ref(),
        ResourceKind::User => None,
    };
    let outcome = if let Some(store) = group_store {
        provision_group(scim, job, mode, store, hint).await
    } else {
        match provision_inner(scim, job, mode).await {
            Ok(o) => o,
            Err(e) if endpoint_wide(&e) => Outcome::Unavailable(e.to_string()),
            Err(e) => Outcome::Failed(e.to_string()),
        }
    };
    if !mode.dry_run {
        audit_outcome(job, &outcome);
    }
    outcome
}

/// A failure of the endpoint as a whole, not of the object: transient (unreachable, 429,
/// 5xx after the client's retries) or a refused credential (401: every request would be
/// refused alike). Such an object is retried when the endpoint answers again, never parked
/// or counted as refused.
fn endpoint_wide(e: &ScimError) -> bool {
    e.is_transient() || e.status() == Some(401)
}

/// One line in the provisioning log (transient failures are retried, so not logged).
pub(crate) fn audit_outcome(job: &Job, outcome: &Outcome) {
    let (op, id, error) = match outcome {
        Outcome::Created(id) => ("create", Some(id.as_str()), None),
        Outcome::Replaced(id) => ("replace", Some(id.as_str()), None),
        Outcome::Matched(id) => ("match", Some(id.as_str()), None),
        Outcome::Failed(why) => ("fail", job.known_id.as_deref(), Some(why.as_str())),
        Outcome::Unavailable(_) => return,
    };
    crate::sync::audit::record(&crate::sync::audit::Entry {
        op,
        kind: job.kind.word(),
        anchor: &job.external_id,
        dn: &job.dn,
        id,
        error,
        attributes: None,
    });
}

/// A group: its attributes without members, then the members in chunks.
async fn provision_group(
    scim: &ScimClient,
    job: &Job,
    mode: &ProvisionMode,
    store: &MemberStore,
    hint: &Hint,
) -> Outcome {
    let attrs = &job.body;
    let created = hint.created.as_deref();
    let mut fresh = created.is_some() && !hint.members_sent && !hint.with_members;
    let placed = async {
        if let Some(id) = created {
            return Ok(Some(Outcome::Created(id.to_string())));
        }
        if let Some(id) = &job.known_id {
            if mode.dry_run {
                dry_write(scim, mode, Op::Patch, job, Some(id), attrs, None).await;
            }
            // The attributes go with the first member PATCH (one request when both change).
            return Ok(Some(Outcome::Replaced(id.clone())));
        }
        if let Some(id) = matched_id(scim, job, mode).await? {
            if mode.dry_run {
                dry_write(scim, mode, Op::Patch, job, Some(&id), attrs, None).await;
            } else {
                scim.patch(job.kind, &id, replace_attributes(attrs)).await?;
            }
            return Ok(Some(Outcome::Matched(id)));
        }
        if mode.dry_run {
            dry_write(scim, mode, Op::Create, job, None, attrs, None).await;
            return Ok(Some(Outcome::Created(format!(
                "dry-run:{}",
                job.external_id
            ))));
        }
        let created = match scim.create(job.kind, attrs).await {
            Ok(c) => c,
            Err(e) if e.is_ambiguous_write() => create_again(scim, job, attrs).await?,
            Err(e) if e.status() == Some(409) => {
                let Some(found) = locate_after_conflict(scim, job).await? else {
                    return Err(e);
                };
                let id = resource_id(&found)?;
                scim.patch(job.kind, &id, replace_attributes(attrs)).await?;
                return Ok(Some(Outcome::Matched(id)));
            }
            Err(e) => return Err(e),
        };
        fresh = true;
        Ok(Some(Outcome::Created(resource_id(&created)?)))
    }
    .await;
    let outcome = match placed {
        Ok(Some(o)) => o,
        Ok(None) => unreachable!("every branch returns an outcome"),
        Err(e) if endpoint_wide(&e) => return Outcome::Unavailable(e.to_string()),
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    if mode.dry_run {
        return outcome;
    }
    let id = match &outcome {
        Outcome::Created(id) | Outcome::Replaced(id) | Outcome::Matched(id) => id.clone(),
        other => return other.clone(),
    };
    if fresh {
        // Created without members: the endpoint holds none, nothing to read back.
        if let Err(e) = store.save(&job.external_id, &id, &MemberIds::default()) {
            return Outcome::Failed(format!("member store: {e}"));
        }
    }
    let lead = match &outcome {
        Outcome::Replaced(_) => replace_attributes(attrs),
        _ => Vec::new(),
    };
    // An endpoint that misread a member group once gets no member groups any more.
    let without_nested;
    let (members, nested) = if job.nested.is_empty() || !scim.facts().nested_refused {
        (&job.members, job.nested.as_slice())
    } else {
        without_nested = job
            .members
            .iter()
            .filter(|id| job.nested.binary_search_by(|n| n.as_str().cmp(id)).is_err())
            .collect::<MemberIds>();
        (&without_nested, &[][..])
    };
    match crate::sync::members::sync_members_with(
        scim,
        store,
        &job.external_id,
        &id,
        members,
        nested,
        mode.member_chunk,
        lead,
    )
    .await
    {
        Ok(w) => {
            if w.added + w.removed > 0 {
                log::debug!(
                    "group {}: {} members added, {} removed in {} requests",
                    job.dn,
                    w.added,
                    w.removed,
                    w.requests
                );
            }
            outcome
        }
        Err(MemberSyncError::GroupGone { group_id }) if job.known_id.is_some() => {
            // Deleted at the endpoint behind our back: match or create it again now (once).
            log::info!(
                "group {} ({group_id}) is gone at the endpoint; provisioning it again",
                job.dn
            );
            let again = Job {
                known_id: None,
                ..job.clone()
            };
            Box::pin(provision_group(scim, &again, mode, store, &Hint::default())).await
        }
        Err(MemberSyncError::GroupGone { group_id }) => Outcome::Unavailable(format!(
            "group {group_id} disappeared at the endpoint while its members were sent"
        )),
        Err(e @ MemberSyncError::NestedRefused { .. }) => {
            let text = format!("group {}: {e}", job.dn);
            scim.note_nested_refused(&text);
            Outcome::Failed(format!("members: {e}"))
        }
        Err(MemberSyncError::Scim(e)) if endpoint_wide(&e) => Outcome::Unavailable(e.to_string()),
        Err(e) => Outcome::Failed(format!("members: {e}")),
    }
}

/// The whole representation: `body` with `members` (only the path without a member store
/// builds it).
pub(crate) fn whole_body(job: &Job) -> std::borrow::Cow<'_, Value> {
    if job.members.is_empty() {
        return std::borrow::Cow::Borrowed(&job.body);
    }
    let mut b = job.body.clone();
    if let Value::Object(m) = &mut b {
        m.insert("members".into(), job.members.to_json());
    }
    std::borrow::Cow::Owned(b)
}

/// PATCH operations replacing the group's attributes, one `replace` with a path each (a
/// replace without a path is refused by some services, and its failure took the member
/// change in the same request with it). Never `schemas`, `id`, `members` (sent apart) or
/// `externalId` (the resource already shows it: that is how it was matched).
pub(crate) fn replace_attributes(attrs: &Value) -> Vec<Value> {
    let Value::Object(m) = attrs else {
        return Vec::new();
    };
    m.iter()
        .filter(|(k, _)| !matches!(k.as_str(), "schemas" | "id" | "members" | "externalId"))
        .map(|(k, v)| serde_json::json!({"op": "replace", "path": k, "value": v}))
        .collect()
}

async fn provision_inner(
    scim: &ScimClient,
    job: &Job,
    mode: &ProvisionMode,
) -> Result<Outcome, ScimError> {
    let body = whole_body(job);
    let body = body.as_ref();
    if let Some(id) = &job.known_id {
        if mode.dry_run {
            dry_write(scim, mode, Op::Replace, job, Some(id), body, None).await;
            return Ok(Outcome::Replaced(id.clone()));
        }
        match scim.replace(job.kind, id, &with_id(body, id)).await {
            Ok(_) => return Ok(Outcome::Replaced(id.clone())),
            // Deleted at the endpoint behind our back: fall through to match / create.
            Err(e) if e.status() == Some(404) => {
                log::info!(
                    "{} {} ({}) is gone at the endpoint; matching it again",
                    job.kind.word(),
                    job.dn,
                    id
                );
            }
            Err(e) => return Err(e),
        }
    }

    if let Some(id) = matched_id(scim, job, mode).await? {
        if mode.dry_run {
            dry_write(scim, mode, Op::Replace, job, Some(&id), body, None).await;
        } else {
            scim.replace(job.kind, &id, &with_id(body, &id)).await?;
        }
        return Ok(Outcome::Matched(id));
    }

    if mode.dry_run {
        if job.kind == ResourceKind::User {
            if let Some(o) = dry_conflict(scim, job, mode, body).await? {
                return Ok(o);
            }
        }
        dry_write(scim, mode, Op::Create, job, None, body, None).await;
        return Ok(Outcome::Created(format!("dry-run:{}", job.external_id)));
    }
    match scim.create(job.kind, body).await {
        Ok(created) => Ok(Outcome::Created(resource_id(&created)?)),
        Err(e) if e.is_ambiguous_write() => {
            let created = create_again(scim, job, body).await?;
            Ok(Outcome::Created(resource_id(&created)?))
        }
        Err(e) if e.status() == Some(409) => {
            if let Some(found) = locate_after_conflict(scim, job).await? {
                let id = resource_id(&found)?;
                scim.replace(job.kind, &id, &with_id(body, &id)).await?;
                return Ok(Outcome::Matched(id));
            }
            if job.kind == ResourceKind::User {
                soft_match(scim, job, mode, e).await
            } else {
                Err(e)
            }
        }
        Err(e) => Err(e),
    }
}

/// After a create answered 409: the resource that shows the object's own externalId,
/// found by reading every page of the endpoint (its filter may ignore or miss
/// externalId: a conflict proves something is there, a lookup's empty answer does not).
/// Only a resource that shows the externalId is returned: anything else is not proven ours.
async fn locate_after_conflict(scim: &ScimClient, job: &Job) -> Result<Option<Value>, ScimError> {
    if let Some(found) = scim.find_by_external_id(job.kind, &job.external_id).await? {
        return Ok(Some(found));
    }
    let found = scim
        .scan(job.kind, "externalId", &job.external_id, true)
        .await?;
    if found.is_some() {
        log::info!(
            "{} {}: found by listing the endpoint (its externalId filter did not find it); using it",
            job.kind.word(),
            job.dn
        );
    }
    Ok(found)
}

/// After a POST whose outcome is unknown (the link broke before its answer): the resource
/// the endpoint holds under the object's externalId, else the result of creating it again.
/// The first POST may still be in the endpoint's hands when it is looked up, and land
/// before the second one: a 409 on the second POST means exactly that when the endpoint
/// now holds our externalId, so it is looked up once more before anything is reported.
async fn create_again(scim: &ScimClient, job: &Job, body: &Value) -> Result<Value, ScimError> {
    if let Some(found) = scim.find_by_external_id(job.kind, &job.external_id).await? {
        return Ok(found);
    }
    match scim.create(job.kind, body).await {
        Err(e) if e.status() == Some(409) => match locate_after_conflict(scim, job).await? {
            Some(found) => {
                log::info!(
                    "{} {}: the create whose answer was lost landed late; using it",
                    job.kind.word(),
                    job.dn
                );
                Ok(found)
            }
            None => Err(e),
        },
        other => other,
    }
}

/// A 409 on create: adopt the existing user by userName when allowed, else explain.
async fn soft_match(
    scim: &ScimClient,
    job: &Job,
    mode: &ProvisionMode,
    conflict: ScimError,
) -> Result<Outcome, ScimError> {
    let user_name = job
        .body
        .get("userName")
        .and_then(Value::as_str)
        .unwrap_or("");
    let found = scim.find_by_user_name(user_name).await?;
    let theirs: Option<String> = found
        .as_ref()
        .and_then(|f| f.get("externalId"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let theirs = theirs.as_deref();
    // A user idrelay itself created and then retired (deactivated or deleted) under another
    // anchor is proven ours by the provisioning log: the object came back with a new anchor
    // (a rehire, a restore from backup). Re-anchored, with or without soft_match.
    if let (Some(f), Some(old)) = (&found, theirs.filter(|x| *x != job.external_id)) {
        let id = resource_id(f)?;
        if crate::sync::audit::retired_by_us(&id, old) {
            scim.replace(job.kind, &id, &with_id(&job.body, &id))
                .await?;
            log::info!(
                "user {}: userName `{user_name}` belongs to SCIM user {id}, which idrelay created and retired \
                 under anchor {old}; re-anchored to this object (a rehire or a restore)",
                job.dn
            );
            return Ok(Outcome::Matched(id));
        }
    }
    if !mode.soft_match {
        let dropped = if scim.facts().external_id_dropped {
            " (this endpoint does not keep externalId, so a user idrelay created before its state directory was lost looks the same)"
        } else {
            ""
        };
        return Ok(Outcome::Failed(format!(
            "{conflict}; userName `{user_name}` is held by a resource that does not show this object's externalId \
             (every page of the endpoint read), so idrelay cannot prove it is its own{dropped}; \
             set sync.soft_match = true to adopt it by userName"
        )));
    }
    let Some(found) = found else {
        return Err(conflict);
    };
    if let Some(other) = theirs.filter(|x| *x != job.external_id) {
        return Ok(Outcome::Failed(format!(
            "userName `{user_name}` is taken by a resource anchored to another object (externalId {other}); not adopting it"
        )));
    }
    let id = resource_id(&found)?;
    scim.replace(job.kind, &id, &with_id(&job.body, &id))
        .await?;
    Ok(Outcome::Matched(id))
}

fn resource_id(v: &Value) -> Result<String, ScimError> {
    v.get("id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| ScimError::Decode {
            what: "resource".into(),
            detail: "the endpoint returned a resource without an \"id\"".into(),
        })
}

/// The body with `"id"` set, as RFC 7644 §3.5.1 lets a PUT carry it.
pub(crate) fn with_id(body: &Value, id: &str) -> Value {
    let mut b = body.clone();
    if let Value::Object(m) = &mut b {
        m.insert("id".into(), Value::String(id.to_string()));
    }
    b
}

/// One JSON line per write on stdout: `{"method","path","externalId","dn","body"}`.
/// A dry run's create of a user whose userName the endpoint already holds: what the real
/// pass would do after its POST answered 409 (see [`soft_match`]), without writing. `None`:
/// the userName is free, the create would go through.
async fn dry_conflict(
    scim: &ScimClient,
    job: &Job,
    mode: &ProvisionMode,
    body: &Value,
) -> Result<Option<Outcome>, ScimError> {
    let user_name = body.get("userName").and_then(Value::as_str).unwrap_or("");
    let Some(found) = scim.find_by_user_name(user_name).await? else {
        return Ok(None);
    };
    let id = resource_id(&found)?;
    let theirs = found.get("externalId").and_then(Value::as_str);
    let retired = theirs
        .filter(|x| *x != job.external_id)
        .is_some_and(|old| crate::sync::audit::retired_by_us(&id, old));
    if retired || (mode.soft_match && theirs.is_none_or(|x| x == job.external_id)) {
        let note = if retired {
            "re-anchored: idrelay created and retired it under another anchor"
        } else {
            "adopted by userName (sync.soft_match)"
        };
        dry_write(
            scim,
            mode,
            Op::Replace,
            job,
            Some(&id),
            body,
            Some((note, &found)),
        )
        .await;
        return Ok(Some(Outcome::Matched(id)));
    }
    let why = match theirs {
        Some(other) if mode.soft_match => format!(
            "would fail: 409 userName `{user_name}` is taken by a resource anchored to another object (externalId {other}, id {id})"
        ),
        _ => format!(
            "would fail: 409 userName `{user_name}` is held by a resource idrelay does not own (id {id}); \
             set sync.soft_match = true to adopt it by userName"
        ),
    };
    if mode.dry_run_json {
        print_op("POST", job, None, body);
    } else {
        crate::stdout::write(format_args!(
            "{}",
            diff::render(Op::Create, job.kind.word(), &job.dn, None, Some(&why), &[])
        ));
    }
    Ok(Some(Outcome::Failed(why)))
}

/// A dry run's account of one write: the operation and the attributes it changes, from
/// what the endpoint holds (`held`: already read, with a note for the object's line; else
/// read by `id`). With `--json`, the write itself as one JSON line.
async fn dry_write(
    scim: &ScimClient,
    mode: &ProvisionMode,
    op: Op,
    job: &Job,
    id: Option<&str>,
    body: &Value,
    held: Option<(&str, &Value)>,
) {
    if mode.dry_run_json {
        let method = match op {
            Op::Create => "POST",
            Op::Replace => "PUT",
            _ => "PATCH",
        };
        print_op(method, job, id, body);
        return;
    }
    let read;
    let (note, held) = match (held, id) {
        (Some((note, h)), _) => (Some(note), Some(h)),
        (None, Some(id)) => {
            read = scim.get(job.kind, id).await;
            match &read {
                Ok(Some(h)) => (None, Some(h)),
                Ok(None) => (
                    Some("gone at the endpoint: it would be looked up and created again"),
                    None,
                ),
                Err(_) => (Some("the endpoint's copy could not be read"), None),
            }
        }
        (None, None) => (None, None),
    };
    let mut changes = diff::changes(held, body, op != Op::Patch);
    if let (ResourceKind::Group, Some(store), Some(id)) = (job.kind, &mode.members, id) {
        changes.extend(dry_members(store, job, id));
    }
    let note = match (note, held.is_some() && changes.is_empty()) {
        (None, true) => Some("no attribute differs at the endpoint (sent again: the directory entry changed since the last pass)"),
        (n, _) => n,
    };
    crate::stdout::write(format_args!(
        "{}",
        diff::render(op, job.kind.word(), &job.dn, id, note, &changes)
    ));
}

/// A dry run's member change of a group the store knows (`None`: unknown there, the real
/// pass reads the endpoint's members first; or nothing changes).
fn dry_members(store: &MemberStore, job: &Job, id: &str) -> Option<diff::AttrChange> {
    let stored = store.load(&job.external_id, id).ok()??;
    let d = crate::sync::members::diff_members(stored, &job.members).ok()?;
    diff::members_change(d.added_len(), d.removed.len())
}

fn print_op(method: &str, job: &Job, id: Option<&str>, body: &Value) {
    let path = match id {
        Some(id) => format!("/{}/{}", job.kind.endpoint(), id),
        None => format!("/{}", job.kind.endpoint()),
    };
    let line = serde_json::json!({
        "method": method,
        "path": path,
        "externalId": job.external_id,
        "dn": job.dn,
        "body": body,
    });
    let mut s = line.to_string();
    s.push('\n');
    crate::stdout::write_bytes(s.as_bytes());
}
