//! Provisioning one object: decide create / replace / match at the endpoint and do it.
//!
//! Rules (DESIGN.md §4):
//! * hard match by externalId: a resource the index does not know is looked up by
//!   `externalId eq` before anything is created, so a lost index or a crash after a POST
//!   never duplicates;
//! * soft match by userName only when the config allows it, and only for a resource with no
//!   externalId of its own (never steal a resource another system anchors);
//! * the agent never modifies a resource it did not create or match.

use std::io::Write;

use serde_json::Value;

use crate::scim::client::{ScimClient, ScimError};
use crate::scim::ResourceKind;

/// One object to bring in step.
#[derive(Debug, Clone)]
pub struct Job {
    /// User or group.
    pub kind: ResourceKind,
    /// The directory object (for messages).
    pub dn: String,
    /// The anchor.
    pub external_id: String,
    /// The full SCIM representation (no `id`).
    pub body: Value,
    /// Hash of `body`.
    pub hash: u64,
    /// The SCIM id the index knows, if any.
    pub known_id: Option<String>,
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

/// How the worker behaves.
#[derive(Debug, Clone, Copy)]
pub struct ProvisionMode {
    /// Print the writes instead of sending them (reads still happen).
    pub dry_run: bool,
    /// Allow adopting an existing user by userName.
    pub soft_match: bool,
}

/// Brings one object in step. Never panics on endpoint answers; every failure is an
/// [`Outcome::Failed`] with a reason.
pub async fn provision(scim: &ScimClient, job: &Job, mode: ProvisionMode) -> Outcome {
    match provision_inner(scim, job, mode).await {
        Ok(o) => o,
        Err(e) if e.is_transient() => Outcome::Unavailable(e.to_string()),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

async fn provision_inner(
    scim: &ScimClient,
    job: &Job,
    mode: ProvisionMode,
) -> Result<Outcome, ScimError> {
    if let Some(id) = &job.known_id {
        if mode.dry_run {
            print_op("PUT", job, Some(id));
            return Ok(Outcome::Replaced(id.clone()));
        }
        match scim.replace(job.kind, id, &with_id(&job.body, id)).await {
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

    if let Some(found) = scim.find_by_external_id(job.kind, &job.external_id).await? {
        let id = resource_id(&found)?;
        if mode.dry_run {
            print_op("PUT", job, Some(&id));
        } else {
            scim.replace(job.kind, &id, &with_id(&job.body, &id))
                .await?;
        }
        return Ok(Outcome::Matched(id));
    }

    if mode.dry_run {
        print_op("POST", job, None);
        return Ok(Outcome::Created(format!("dry-run:{}", job.external_id)));
    }
    match scim.create(job.kind, &job.body).await {
        Ok(created) => Ok(Outcome::Created(resource_id(&created)?)),
        Err(e) if e.is_ambiguous_write() => {
            // The POST may have been applied before the link broke: look before retrying.
            if let Some(found) = scim.find_by_external_id(job.kind, &job.external_id).await? {
                return Ok(Outcome::Created(resource_id(&found)?));
            }
            let created = scim.create(job.kind, &job.body).await?;
            Ok(Outcome::Created(resource_id(&created)?))
        }
        Err(e) if e.status() == Some(409) && job.kind == ResourceKind::User => {
            soft_match(scim, job, mode, e).await
        }
        Err(e) => Err(e),
    }
}

/// A 409 on create: adopt the existing user by userName when allowed, else explain.
async fn soft_match(
    scim: &ScimClient,
    job: &Job,
    mode: ProvisionMode,
    conflict: ScimError,
) -> Result<Outcome, ScimError> {
    let user_name = job
        .body
        .get("userName")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !mode.soft_match {
        return Ok(Outcome::Failed(format!(
            "{conflict}; userName `{user_name}` belongs to a resource idrelay did not create (set sync.soft_match = true to adopt it)"
        )));
    }
    let Some(found) = scim.find_by_user_name(user_name).await? else {
        return Err(conflict);
    };
    let theirs = found.get("externalId").and_then(Value::as_str);
    if theirs.is_some_and(|x| x != job.external_id) {
        return Ok(Outcome::Failed(format!(
            "userName `{user_name}` is taken by a resource anchored to another object (externalId {}); not adopting it",
            theirs.unwrap_or_default()
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
fn with_id(body: &Value, id: &str) -> Value {
    let mut b = body.clone();
    if let Value::Object(m) = &mut b {
        m.insert("id".into(), Value::String(id.to_string()));
    }
    b
}

/// One JSON line per write on stdout: `{"method","path","externalId","dn","body"}`.
fn print_op(method: &str, job: &Job, id: Option<&str>) {
    let path = match id {
        Some(id) => format!("/{}/{}", job.kind.endpoint(), id),
        None => format!("/{}", job.kind.endpoint()),
    };
    let line = serde_json::json!({
        "method": method,
        "path": path,
        "externalId": job.external_id,
        "dn": job.dn,
        "body": job.body,
    });
    let mut s = line.to_string();
    s.push('\n');
    let _ = std::io::stdout().lock().write_all(s.as_bytes());
}
