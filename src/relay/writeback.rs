//! Writeback: SCIM writes that arrive through the relay (POST/PUT/PATCH/DELETE on
//! `/Groups`, and on `/Users` when allowed), turned into LDAP operations under the branch's
//! local write policy (`[writeback]`, docs/config.md).
//!
//! This module is pure: it parses a SCIM request into an [`Intent`], checks it against the
//! [`WritePolicy`] ([`authorize`], [`preflight`]) and plans the LDAP operations from the
//! current entry and the member DNs the caller resolved ([`plan`]). The I/O (finding the
//! entry by anchor, resolving member ids, applying the operations, the provisioning log) is
//! in [`crate::relay::facade::Facade::write`].
//!
//! Invariants:
//! * **Default: nothing.** An empty policy refuses every write with 403.
//! * **Nothing outside the allowed OUs.** Every DN an operation names (the entry to modify,
//!   rename or delete, the parent of a new entry) lies strictly below one of
//!   `writeback.allowed_ous`; a rename keeps the parent. Otherwise 403, and no operation.
//! * **Only allowed attributes.** A PATCH or POST that names an attribute the policy does
//!   not list is 403 as a whole. A PUT may repeat a disallowed attribute with its current
//!   value (clients PUT what they read); a different value is 403.
//! * **Names from local configuration only.** The LDAP attribute a SCIM attribute is
//!   written to, the member attribute, the object class of a new group and whether an
//!   object is a user or a group come from the [`Context`]'s profile, which the caller
//!   ([`crate::relay::remote`]) makes the *local* one (built-in default and `sync.profile_file`),
//!   never one the cloud pushed. A password-like LDAP attribute
//!   ([`crate::scim::profile_policy::is_password_like`]) is never written, whatever the
//!   profile says (403).
//! * **Members the cloud cannot see are kept.** Member values are SCIM ids (anchors) of
//!   objects in the agent's scope; an id that is not one is 400. A replace or a remove-all
//!   changes only members inside `scope.include`, never the others.
//! * **Idempotent.** Adding a member that is there, or removing one that is not, plans
//!   nothing for it; a request that changes nothing plans no operation.
//!
//! Limits: users may be modified and deleted (when allowed) but not created; at most
//! [`MAX_MEMBER_IDS`] member ids per request; PATCH paths are `members`,
//! `members[value eq "..."]`, a writable attribute, or none (a value object).

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde_json::{Map, Value};

use crate::ldap::dn;
use crate::ldap::{Entry, Modification, WriteOp};
use crate::scim::profile::{ProfileKind, Source, SyncProfile, Target, TextPath};
use crate::scim::resource::ENTERPRISE_SCHEMA;
use crate::scim::ResourceKind;

/// SCIM attributes of a group that writeback can write.
pub const GROUP_ATTRIBUTES: &[&str] = &["displayName", "members", "description"];
/// SCIM attributes of a user that writeback can write (`emails` and `phoneNumbers`: the
/// work value; the last three are enterprise-extension attributes).
pub const USER_ATTRIBUTES: &[&str] = &[
    "displayName",
    "name.givenName",
    "name.familyName",
    "title",
    "emails",
    "phoneNumbers",
    "employeeNumber",
    "department",
    "organization",
];
/// `writeback.group_attributes` when the key is left out.
pub const DEFAULT_GROUP_ATTRIBUTES: &[&str] = &["displayName", "members"];
/// Most member ids one request may name.
pub const MAX_MEMBER_IDS: usize = 1000;

const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

/// What the branch allows the cloud to write (`[writeback]`). `Default` allows nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WritePolicy {
    /// Groups may be written.
    pub groups: bool,
    /// Users may be written (modify and delete only).
    pub users: bool,
    /// Subtrees inside which objects may be created, modified and deleted.
    pub allowed_ous: Vec<String>,
    /// Where POST creates objects (below one of `allowed_ous`).
    pub create_in: Option<String>,
    /// POST is allowed.
    pub create: bool,
    /// PUT and PATCH are allowed.
    pub update: bool,
    /// DELETE is allowed.
    pub delete: bool,
    /// Writable group attributes (canonical names from [`GROUP_ATTRIBUTES`]).
    pub group_attributes: Vec<String>,
    /// Writable user attributes (canonical names from [`USER_ATTRIBUTES`]).
    pub user_attributes: Vec<String>,
}

impl WritePolicy {
    /// Whether any write at all may pass.
    pub fn allows_any(&self) -> bool {
        self.groups || self.users
    }

    fn allows_kind(&self, kind: ResourceKind) -> bool {
        match kind {
            ResourceKind::User => self.users,
            ResourceKind::Group => self.groups,
        }
    }

    fn attributes(&self, kind: ResourceKind) -> &[String] {
        match kind {
            ResourceKind::User => &self.user_attributes,
            ResourceKind::Group => &self.group_attributes,
        }
    }

    fn allows_attribute(&self, kind: ResourceKind, name: &str) -> bool {
        self.attributes(kind)
            .iter()
            .any(|a| a.eq_ignore_ascii_case(name))
    }

    /// Whether `dn` lies strictly below one of the allowed OUs.
    pub fn allows_dn(&self, target: &str) -> bool {
        let n = dn::normalize(target);
        self.allowed_ous.iter().any(|ou| {
            let ou = dn::normalize(ou);
            n != ou && dn::is_under(&n, &ou)
        })
    }
}

/// The canonical spelling of a writable attribute of `kind` (case-insensitive; the
/// enterprise URN prefix is accepted), or `None` if writeback cannot write it.
pub fn canonical_attribute(kind: ResourceKind, name: &str) -> Option<&'static str> {
    let list = match kind {
        ResourceKind::User => USER_ATTRIBUTES,
        ResourceKind::Group => GROUP_ATTRIBUTES,
    };
    let short = strip_enterprise(name);
    list.iter().copied().find(|a| a.eq_ignore_ascii_case(short))
}

fn strip_enterprise(name: &str) -> &str {
    let lower = name.to_ascii_lowercase();
    let prefix = format!("{}:", ENTERPRISE_SCHEMA.to_ascii_lowercase());
    if lower.starts_with(&prefix) {
        &name[prefix.len()..]
    } else {
        name
    }
}

/// Why a write is refused; each variant becomes a SCIM error (RFC 7644 §3.12).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteError {
    /// The local policy does not allow it (403); the text says which key.
    Forbidden(String),
    /// The request is malformed or names something that cannot be (400).
    BadRequest {
        /// The RFC 7644 `scimType` (`invalidValue`, `invalidSyntax`, `invalidPath`,
        /// `noTarget`, `tooMany`).
        scim_type: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The resource does not exist in the agent's scope (404).
    NotFound(String),
    /// The method does not apply to the path (405).
    MethodNotAllowed(String),
    /// The directory already holds such an object (409).
    Conflict(String),
    /// The directory failed or refused for another reason (the status given, 500 or 503).
    Directory(u16, String),
}

impl WriteError {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            WriteError::Forbidden(_) => 403,
            WriteError::BadRequest { .. } => 400,
            WriteError::NotFound(_) => 404,
            WriteError::MethodNotAllowed(_) => 405,
            WriteError::Conflict(_) => 409,
            WriteError::Directory(s, _) => *s,
        }
    }

    /// The SCIM error type, if any.
    pub fn scim_type(&self) -> Option<&'static str> {
        match self {
            WriteError::BadRequest { scim_type, .. } => Some(scim_type),
            WriteError::Conflict(_) => Some("uniqueness"),
            _ => None,
        }
    }

    /// The detail text.
    pub fn detail(&self) -> &str {
        match self {
            WriteError::Forbidden(d)
            | WriteError::NotFound(d)
            | WriteError::MethodNotAllowed(d)
            | WriteError::Conflict(d)
            | WriteError::Directory(_, d)
            | WriteError::BadRequest { detail: d, .. } => d,
        }
    }
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status(), self.detail())
    }
}

impl std::error::Error for WriteError {}

fn bad(scim_type: &'static str, detail: impl Into<String>) -> WriteError {
    WriteError::BadRequest {
        scim_type,
        detail: detail.into(),
    }
}

/// A change to the membership, in SCIM ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberChange {
    /// Add these members.
    Add(Vec<String>),
    /// Remove these members.
    Remove(Vec<String>),
    /// The in-scope members become exactly these.
    Replace(Vec<String>),
    /// Remove every in-scope member.
    RemoveAll,
}

/// One change a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Set (or with `None` clear) a single-valued attribute; `attribute` is canonical when
    /// writeback knows it, else as the request spelled it.
    Set {
        /// The SCIM attribute.
        attribute: String,
        /// Its new value; `None` removes it.
        value: Option<String>,
    },
    /// Change the members.
    Members(MemberChange),
}

impl Change {
    fn attribute(&self) -> &str {
        match self {
            Change::Set { attribute, .. } => attribute,
            Change::Members(_) => "members",
        }
    }
}

/// What a SCIM write asks for, before any policy check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// POST: a new object.
    Create {
        /// Its attributes.
        changes: Vec<Change>,
    },
    /// PUT (`replace`) or PATCH of the object whose anchor is `id`.
    Update {
        /// The SCIM id (anchor).
        id: String,
        /// What changes, in request order.
        changes: Vec<Change>,
        /// PUT: attributes may be repeated unchanged even if not writable.
        replace: bool,
    },
    /// DELETE of the object whose anchor is `id`.
    Delete {
        /// The SCIM id (anchor).
        id: String,
    },
}

impl Intent {
    /// Every member id the request names (to be resolved to DNs), once each.
    pub fn member_ids(&self) -> Vec<String> {
        let changes = match self {
            Intent::Create { changes } | Intent::Update { changes, .. } => changes,
            Intent::Delete { .. } => return Vec::new(),
        };
        let mut out: Vec<String> = Vec::new();
        for c in changes {
            if let Change::Members(
                MemberChange::Add(ids) | MemberChange::Remove(ids) | MemberChange::Replace(ids),
            ) = c
            {
                for id in ids {
                    if !out.contains(id) {
                        out.push(id.clone());
                    }
                }
            }
        }
        out
    }

    /// `create`, `update` or `delete`.
    pub fn verb(&self) -> &'static str {
        match self {
            Intent::Create { .. } => "create",
            Intent::Update { .. } => "update",
            Intent::Delete { .. } => "delete",
        }
    }

    /// The target's SCIM id (none for a create).
    pub fn id(&self) -> Option<&str> {
        match self {
            Intent::Create { .. } => None,
            Intent::Update { id, .. } | Intent::Delete { id } => Some(id),
        }
    }
}

/// Parses a write request on `/Users[/{id}]` or `/Groups[/{id}]` (pure).
pub fn parse(
    method: &str,
    kind: ResourceKind,
    id: Option<&str>,
    body: Option<&Value>,
) -> Result<Intent, WriteError> {
    let method = method.to_ascii_uppercase();
    let endpoint = kind.endpoint();
    let object = |body: Option<&Value>| -> Result<Map<String, Value>, WriteError> {
        match body {
            Some(Value::Object(m)) => Ok(m.clone()),
            _ => Err(bad(
                "invalidSyntax",
                format!("{method} /{endpoint}: the body must be a JSON object"),
            )),
        }
    };
    let intent = match (method.as_str(), id) {
        ("POST", None) => Intent::Create {
            changes: resource_changes(kind, &object(body)?, false)?,
        },
        ("PUT", Some(id)) => Intent::Update {
            id: id.to_string(),
            changes: resource_changes(kind, &object(body)?, false)?,
            replace: true,
        },
        ("PATCH", Some(id)) => Intent::Update {
            id: id.to_string(),
            changes: patch_changes(kind, &object(body)?)?,
            replace: false,
        },
        ("DELETE", Some(id)) => Intent::Delete { id: id.to_string() },
        ("POST", Some(_)) | ("PUT" | "PATCH" | "DELETE", None) => {
            return Err(WriteError::MethodNotAllowed(format!(
                "{method} is not allowed on /{endpoint}{}",
                if id.is_some() { "/{id}" } else { "" }
            )))
        }
        _ => {
            return Err(WriteError::MethodNotAllowed(format!(
                "{method} /{endpoint}: unknown method"
            )))
        }
    };
    let n = intent.member_ids().len();
    if n > MAX_MEMBER_IDS {
        return Err(bad(
            "tooMany",
            format!("{n} member ids in one request (limit {MAX_MEMBER_IDS}); send them in chunks"),
        ));
    }
    Ok(intent)
}

/// The changes a resource body (POST, PUT, PATCH value without path) asks for. With `add`
/// (PATCH add), members are added instead of replaced.
fn resource_changes(
    kind: ResourceKind,
    body: &Map<String, Value>,
    add: bool,
) -> Result<Vec<Change>, WriteError> {
    let mut out = Vec::new();
    for (key, value) in body {
        let lower = key.to_ascii_lowercase();
        match lower.as_str() {
            "schemas" | "id" | "externalid" | "meta" => {}
            "members" => {
                let ids = member_ids(value)?;
                out.push(Change::Members(if add {
                    MemberChange::Add(ids)
                } else {
                    MemberChange::Replace(ids)
                }));
            }
            "name" => match value {
                Value::Object(m) => {
                    for (sub, v) in m {
                        if sub.eq_ignore_ascii_case("formatted") {
                            continue;
                        }
                        out.push(set(kind, &format!("name.{sub}"), v)?);
                    }
                }
                Value::Null => {}
                _ => return Err(bad("invalidValue", "`name` must be an object")),
            },
            _ if lower == ENTERPRISE_SCHEMA.to_ascii_lowercase() => match value {
                Value::Object(m) => {
                    for (sub, v) in m {
                        out.push(set(kind, sub, v)?);
                    }
                }
                _ => {
                    return Err(bad(
                        "invalidValue",
                        "the enterprise extension must be an object",
                    ))
                }
            },
            _ => out.push(set(kind, key, value)?),
        }
    }
    Ok(out)
}

/// A `Set` change from a JSON value: a string, null, a `{"value": ...}` object, or (for
/// `emails` / `phoneNumbers`) a list whose work (or first) entry counts.
fn set(kind: ResourceKind, attribute: &str, value: &Value) -> Result<Change, WriteError> {
    let name = canonical_attribute(kind, attribute)
        .map(str::to_string)
        .unwrap_or_else(|| attribute.to_string());
    let text = match value {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Object(m) => match m.get("value") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Null) | None => None,
            Some(other) => Some(other.to_string()),
        },
        Value::Array(items) => {
            let pick = items
                .iter()
                .find(|i| i["type"].as_str() == Some("work"))
                .or_else(|| items.first());
            match pick.map(|i| &i["value"]) {
                Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                Some(Value::Null) | None => None,
                Some(Value::String(_)) => None,
                Some(other) => Some(other.to_string()),
            }
        }
    };
    Ok(Change::Set {
        attribute: name,
        value: text,
    })
}

/// The ids of a `members` value: `[{"value": id}, ...]` (a single object is accepted).
fn member_ids(value: &Value) -> Result<Vec<String>, WriteError> {
    let items: Vec<&Value> = match value {
        Value::Array(a) => a.iter().collect(),
        Value::Object(_) => vec![value],
        Value::Null => Vec::new(),
        _ => {
            return Err(bad(
                "invalidValue",
                "`members` must be a list of {\"value\": id}",
            ))
        }
    };
    items
        .into_iter()
        .map(|m| match m.get("value") {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
            _ => Err(bad(
                "invalidValue",
                "every member must be {\"value\": \"<SCIM id>\"}",
            )),
        })
        .collect()
}

/// The changes of a PATCH body (RFC 7644 §3.5.2).
fn patch_changes(kind: ResourceKind, body: &Map<String, Value>) -> Result<Vec<Change>, WriteError> {
    let schemas_ok = body
        .get("schemas")
        .and_then(Value::as_array)
        .is_some_and(|s| s.iter().any(|x| x.as_str() == Some(PATCH_OP)));
    if !schemas_ok {
        return Err(bad(
            "invalidSyntax",
            format!("a PATCH body must list the schema {PATCH_OP}"),
        ));
    }
    let ops = body
        .get("Operations")
        .or_else(|| body.get("operations"))
        .and_then(Value::as_array)
        .ok_or_else(|| bad("invalidSyntax", "a PATCH body needs `Operations` (a list)"))?;
    if ops.is_empty() {
        return Err(bad("invalidSyntax", "`Operations` is empty"));
    }
    let mut out = Vec::new();
    for op in ops {
        let verb = op
            .get("op")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase)
            .ok_or_else(|| bad("invalidSyntax", "every operation needs `op`"))?;
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|p| !p.is_empty());
        let value = op.get("value");
        match (verb.as_str(), path) {
            ("add" | "replace", None) => match value {
                Some(Value::Object(m)) => out.extend(resource_changes(kind, m, verb == "add")?),
                _ => {
                    return Err(bad(
                        "invalidValue",
                        format!("`{verb}` without a path needs an object value"),
                    ))
                }
            },
            ("remove", None) => return Err(bad("noTarget", "`remove` needs a path")),
            (verb @ ("add" | "remove" | "replace"), Some(path)) => {
                out.push(path_change(kind, verb, path, value)?)
            }
            (other, _) => {
                return Err(bad(
                    "invalidSyntax",
                    format!("unknown PATCH op `{other}` (add, remove or replace)"),
                ))
            }
        }
    }
    Ok(out)
}

/// One PATCH operation with a path.
fn path_change(
    kind: ResourceKind,
    verb: &str,
    path: &str,
    value: Option<&Value>,
) -> Result<Change, WriteError> {
    let lower = path.to_ascii_lowercase();
    if lower == "members" {
        return Ok(Change::Members(match (verb, value) {
            ("add", Some(v)) => MemberChange::Add(member_ids(v)?),
            ("replace", Some(v)) => MemberChange::Replace(member_ids(v)?),
            ("remove", Some(v)) if !v.is_null() => MemberChange::Remove(member_ids(v)?),
            ("remove", _) => MemberChange::RemoveAll,
            _ => {
                return Err(bad(
                    "invalidValue",
                    format!("`{verb}` of members needs a value"),
                ))
            }
        }));
    }
    if let Some(inner) = lower
        .strip_prefix("members[")
        .and_then(|r| r.strip_suffix(']'))
    {
        if verb != "remove" {
            return Err(bad(
                "invalidPath",
                format!("`{path}`: only `remove` takes a member filter"),
            ));
        }
        // The id keeps its case: take it from the original path at the same offsets.
        let start = "members[".len();
        let original = &path[start..start + inner.len()];
        return Ok(Change::Members(MemberChange::Remove(member_filter_ids(
            original,
        )?)));
    }
    // `emails[type eq "work"].value` (or without `.value`) names the work value of the
    // attribute: the filter is parsed and must be exactly that one comparison.
    let attribute = match path.split_once('[') {
        Some((head, rest)) => {
            let only_work = || {
                bad(
                    "invalidPath",
                    format!(
                        "`{path}`: only members[value eq \"id\"] and ATTRIBUTE[type eq \"work\"].value filters are supported"
                    ),
                )
            };
            let (inner, after) = rest.rsplit_once(']').ok_or_else(only_work)?;
            if !(after.is_empty() || after.eq_ignore_ascii_case(".value")) {
                return Err(only_work());
            }
            if !is_type_eq_work(inner) {
                return Err(only_work());
            }
            head
        }
        None => path,
    };
    match verb {
        "remove" => Ok(Change::Set {
            attribute: canonical_attribute(kind, attribute)
                .map(str::to_string)
                .unwrap_or_else(|| attribute.to_string()),
            value: None,
        }),
        _ => match value {
            Some(v) => set(kind, attribute, v),
            None => Err(bad(
                "invalidValue",
                format!("`{verb}` of `{path}` needs a value"),
            )),
        },
    }
}

/// Whether a value-path filter is exactly `type eq "work"` (names and the value compared
/// without regard to case, as SCIM compares them).
fn is_type_eq_work(filter: &str) -> bool {
    use crate::scim::filter::{CompValue, CompareOp, Filter, Test};
    matches!(
        crate::scim::filter::parse(filter),
        Ok(Filter::Attr {
            path,
            test: Test::Compare(CompareOp::Eq, CompValue::String(v)),
        }) if path.urn.is_none()
            && path.sub.is_none()
            && path.name.eq_ignore_ascii_case("type")
            && v.eq_ignore_ascii_case("work")
    )
}

/// The ids of `value eq "a" or value eq "b"` (the inside of `members[...]`).
fn member_filter_ids(filter: &str) -> Result<Vec<String>, WriteError> {
    let invalid = || {
        bad(
            "invalidPath",
            format!("members[{filter}]: expected value eq \"<id>\" (joined by `or`)"),
        )
    };
    let mut ids = Vec::new();
    for term in split_or(filter) {
        let term = term.trim();
        let rest = term
            .get(..9)
            .filter(|h| h.eq_ignore_ascii_case("value eq "))
            .map(|_| term[9..].trim())
            .ok_or_else(invalid)?;
        let id = rest
            .strip_prefix('"')
            .and_then(|r| r.strip_suffix('"'))
            .ok_or_else(invalid)?;
        if id.is_empty() || id.contains('"') {
            return Err(invalid());
        }
        ids.push(id.to_string());
    }
    Ok(ids)
}

/// Splits at ` or ` outside quotes (case-insensitive).
fn split_or(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => quoted = !quoted,
            b' ' if !quoted
                && bytes.len() >= i + 4
                && bytes[i + 1..i + 3].eq_ignore_ascii_case(b"or")
                && bytes[i + 3] == b' ' =>
            {
                out.push(&s[start..i]);
                start = i + 4;
                i += 4;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(&s[start..]);
    out
}

/// Checks what needs no directory read: the kind, the operation, and (except for a PUT)
/// the attributes.
pub fn authorize(
    policy: &WritePolicy,
    kind: ResourceKind,
    intent: &Intent,
) -> Result<(), WriteError> {
    if !policy.allows_any() {
        return Err(WriteError::Forbidden(
            "writes into the branch directory are not allowed by its local policy (no [writeback] section)".into(),
        ));
    }
    if !policy.allows_kind(kind) {
        return Err(WriteError::Forbidden(format!(
            "writeback of {}s is not allowed: writeback.resources does not list `{}`",
            kind.word(),
            kind.endpoint().to_ascii_lowercase()
        )));
    }
    let (allowed, op) = match intent {
        Intent::Create { .. } => (policy.create, "create"),
        Intent::Update { .. } => (policy.update, "update"),
        Intent::Delete { .. } => (policy.delete, "delete"),
    };
    if !allowed {
        return Err(WriteError::Forbidden(format!(
            "writeback.operations does not allow `{op}`"
        )));
    }
    match intent {
        Intent::Create { .. } if kind == ResourceKind::User => Err(WriteError::Forbidden(
            "creating users through the relay is not supported (writeback modifies and deletes users only)".into(),
        )),
        Intent::Create { .. } if policy.create_in.is_none() => Err(WriteError::Forbidden(
            "writeback.create_in is not set".into(),
        )),
        Intent::Create { changes } | Intent::Update { changes, replace: false, .. } => {
            for c in changes {
                check_attribute(policy, kind, c.attribute())?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn check_attribute(policy: &WritePolicy, kind: ResourceKind, name: &str) -> Result<(), WriteError> {
    if policy.allows_attribute(kind, name) {
        return Ok(());
    }
    Err(refuse_attribute(policy, kind, name))
}

/// The 403 for an attribute the policy does not let the cloud write.
fn refuse_attribute(policy: &WritePolicy, kind: ResourceKind, name: &str) -> WriteError {
    let key = match kind {
        ResourceKind::User => "writeback.user_attributes",
        ResourceKind::Group => "writeback.group_attributes",
    };
    let allowed = policy.attributes(kind).join(", ");
    WriteError::Forbidden(format!(
        "attribute `{name}` of a {} may not be written: {key} allows {}",
        kind.word(),
        if allowed.is_empty() { "none" } else { &allowed }
    ))
}

/// What [`plan`] needs besides the request.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The write policy.
    pub policy: &'a WritePolicy,
    /// The local profile (which LDAP attribute stands for which SCIM attribute): never a
    /// profile the cloud pushed.
    pub profile: &'a SyncProfile,
    /// The resource kind of the endpoint.
    pub kind: ResourceKind,
    /// `scope.include`: members outside it are never removed.
    pub include: &'a [String],
}

/// [`authorize`] plus the checks that need the current entry (not the member DNs): the
/// target lies in an allowed OU. Run it before resolving members, so a refused request
/// costs no more reads.
pub fn preflight(
    ctx: &Context<'_>,
    intent: &Intent,
    current: Option<&Entry>,
) -> Result<(), WriteError> {
    authorize(ctx.policy, ctx.kind, intent)?;
    match (intent, current) {
        (Intent::Create { .. }, _) => {
            let parent = ctx.policy.create_in.as_deref().unwrap_or("");
            let probe = format!("cn=x,{parent}");
            if !ctx.policy.allows_dn(&probe) {
                return Err(WriteError::Forbidden(format!(
                    "writeback.create_in `{parent}` is outside writeback.allowed_ous"
                )));
            }
            Ok(())
        }
        (_, None) => Err(WriteError::NotFound(format!(
            "{} {} not found",
            ctx.kind.word(),
            intent.id().unwrap_or("")
        ))),
        (_, Some(entry)) => check_target(ctx.policy, &entry.dn),
    }
}

fn check_target(policy: &WritePolicy, target: &str) -> Result<(), WriteError> {
    if policy.allows_dn(target) {
        return Ok(());
    }
    Err(WriteError::Forbidden(format!(
        "{target} is outside the OUs writeback may change (writeback.allowed_ous: {})",
        policy.allowed_ous.join("; ")
    )))
}

/// The planned LDAP operations and the DN the object has afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// In order; empty when nothing changes.
    pub ops: Vec<WriteOp>,
    /// The object's DN after the operations (the new one after a create or rename).
    pub dn: String,
}

impl Plan {
    /// The LDAP attributes the operations write, once each (for the log and the
    /// provisioning log).
    pub fn attributes(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for a in self.ops.iter().flat_map(WriteOp::attributes) {
            if !out.iter().any(|o| o.eq_ignore_ascii_case(&a)) {
                out.push(a);
            }
        }
        out
    }
}

/// Plans the LDAP operations of `intent` (pure). `current` is the target entry (update,
/// delete; read with the profile's attributes of the kind and `description`), `members`
/// maps each of [`Intent::member_ids`] that is an object in scope to its DN.
pub fn plan(
    ctx: &Context<'_>,
    intent: &Intent,
    current: Option<&Entry>,
    members: &HashMap<String, String>,
) -> Result<Plan, WriteError> {
    preflight(ctx, intent, current)?;
    for id in intent.member_ids() {
        if !members.contains_key(&id) {
            return Err(bad(
                "invalidValue",
                format!("member `{id}` is not a user or group in the agent's scope"),
            ));
        }
    }
    let planned = match (intent, current) {
        (Intent::Create { changes }, _) => plan_create(ctx, changes, members),
        (Intent::Delete { .. }, Some(entry)) => Ok(Plan {
            ops: vec![WriteOp::Delete {
                dn: entry.dn.clone(),
            }],
            dn: entry.dn.clone(),
        }),
        // A PATCH's attributes were checked by `authorize`; a PUT's are checked against
        // the current values in `plan_update`.
        (Intent::Update { changes, .. }, Some(entry)) => plan_update(ctx, changes, entry, members),
        (_, None) => Err(WriteError::NotFound("no target".into())),
    }?;
    if let Some(a) = planned
        .attributes()
        .into_iter()
        .find(|a| crate::scim::profile_policy::is_password_like(a))
    {
        return Err(WriteError::Forbidden(format!(
            "writeback never writes the password-like attribute `{a}` (built-in deny-list)"
        )));
    }
    Ok(planned)
}

/// The LDAP attribute that holds the SCIM text attribute `name` of `kind`.
fn ldap_attribute(profile: &SyncProfile, kind: ResourceKind, name: &str) -> Option<String> {
    let key = |p: &TextPath| -> Option<String> {
        match p {
            TextPath::Core(a) => Some((*a).to_string()),
            TextPath::Name(s) => Some(format!("name.{s}")),
            TextPath::Typed {
                attribute,
                type_value,
                sub,
            } if *type_value == "work" && *sub == "value" => Some((*attribute).to_string()),
            TextPath::Typed { .. } => None,
            TextPath::Enterprise(a) => Some((*a).to_string()),
        }
    };
    let mapped =
        profile
            .resource(kind)
            .mappings()
            .iter()
            .find_map(|m| match (&m.target, &m.source) {
                (Target::Text(p), Source::Attributes(attrs))
                    if key(p).is_some_and(|k| k.eq_ignore_ascii_case(name)) =>
                {
                    attrs.first().cloned()
                }
                _ => None,
            });
    match mapped {
        Some(a) => Some(a),
        None if name.eq_ignore_ascii_case("description") => Some("description".into()),
        None => None,
    }
}

/// The attribute that holds the members of `entry` (or of a new group).
fn member_attribute(profile: &SyncProfile, entry: Option<&Entry>) -> String {
    let sources: Vec<String> = profile
        .resource(ResourceKind::Group)
        .mappings()
        .iter()
        .filter(|m| m.target == Target::Members)
        .flat_map(|m| m.source.attributes().to_vec())
        .collect();
    if let Some(e) = entry {
        if e.has_object_class("groupOfUniqueNames") {
            if let Some(u) = sources
                .iter()
                .find(|s| s.eq_ignore_ascii_case("uniqueMember"))
            {
                return u.clone();
            }
        }
        if let Some(s) = sources.iter().find(|s| e.has(s)) {
            return s.clone();
        }
    }
    sources
        .into_iter()
        .next()
        .unwrap_or_else(|| "member".into())
}

/// The RDN attribute type of a DN (`cn` of `cn=x,ou=y`).
fn rdn_type(target: &str) -> String {
    dn::split_rdns(target)
        .first()
        .and_then(|r| r.split_once('='))
        .map(|(t, _)| t.trim().to_string())
        .unwrap_or_default()
}

/// The parent of a DN.
fn parent(target: &str) -> String {
    let rdns = dn::split_rdns(target);
    rdns.get(1..).map(|r| r.join(",")).unwrap_or_default()
}

/// Members as a working list of DNs: exact spellings kept (they go back to LDAP), compared
/// by their normalised form (a set, so a million-member group costs O(n), not O(n²)).
#[derive(Clone)]
struct MemberSet {
    values: Vec<String>,
    keys: HashSet<String>,
}

impl MemberSet {
    fn new(values: Vec<String>) -> MemberSet {
        let keys = values.iter().map(|v| dn::normalize(v)).collect();
        MemberSet { values, keys }
    }
    fn contains(&self, dn_: &str) -> bool {
        self.keys.contains(&dn::normalize(dn_))
    }
    fn add(&mut self, dn_: &str) {
        if self.keys.insert(dn::normalize(dn_)) {
            self.values.push(dn_.to_string());
        }
    }
    fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        let keys = &mut self.keys;
        self.values.retain(|v| {
            let k = keep(v);
            if !k {
                keys.remove(&dn::normalize(v));
            }
            k
        });
    }
    fn apply(
        &mut self,
        change: &MemberChange,
        members: &HashMap<String, String>,
        include: &[String],
    ) {
        let dns = |ids: &[String]| -> Vec<String> {
            ids.iter().filter_map(|i| members.get(i).cloned()).collect()
        };
        match change {
            MemberChange::Add(ids) => dns(ids).iter().for_each(|d| self.add(d)),
            MemberChange::Remove(ids) => {
                let gone: HashSet<String> = dns(ids).iter().map(|d| dn::normalize(d)).collect();
                self.retain(|v| !gone.contains(&dn::normalize(v)));
            }
            MemberChange::Replace(ids) => {
                self.retain(|v| !dn::under_any(v, include));
                dns(ids).iter().for_each(|d| self.add(d));
            }
            MemberChange::RemoveAll => self.retain(|v| !dn::under_any(v, include)),
        }
    }
}

fn plan_create(
    ctx: &Context<'_>,
    changes: &[Change],
    members: &HashMap<String, String>,
) -> Result<Plan, WriteError> {
    let parent = ctx.policy.create_in.clone().unwrap_or_default();
    let mut name: Option<String> = None;
    let mut texts: Vec<(String, String)> = Vec::new();
    let mut set = MemberSet::new(Vec::new());
    for c in changes {
        match c {
            Change::Set { attribute, value } if attribute == "displayName" => {
                name = value.clone();
            }
            Change::Set {
                attribute,
                value: Some(v),
            } => {
                let a = ldap_attribute(ctx.profile, ctx.kind, attribute).ok_or_else(|| {
                    WriteError::Forbidden(format!(
                        "attribute `{attribute}` has no LDAP attribute in the sync profile"
                    ))
                })?;
                texts.push((a, v.clone()));
            }
            Change::Set { value: None, .. } => {}
            Change::Members(m) => set.apply(m, members, ctx.include),
        }
    }
    let name = name.ok_or_else(|| bad("invalidValue", "a new group needs `displayName`"))?;
    let new_dn = format!("cn={},{parent}", dn::escape_rdn_value(&name));
    let resource = ctx.profile.resource(ResourceKind::Group);
    let class = resource
        .object_classes()
        .first()
        .cloned()
        .unwrap_or_else(|| "group".into());
    let member_attr = member_attribute(ctx.profile, None);
    if set.values.is_empty()
        && (class.eq_ignore_ascii_case("groupOfNames")
            || class.eq_ignore_ascii_case("groupOfUniqueNames"))
    {
        return Err(bad(
            "invalidValue",
            format!(
                "a new {class} needs at least one member (the schema requires `{member_attr}`)"
            ),
        ));
    }
    let mut attributes: Vec<(String, Vec<Vec<u8>>)> = vec![
        ("objectClass".into(), vec![class.into_bytes()]),
        ("cn".into(), vec![name.clone().into_bytes()]),
    ];
    if ctx.profile.kind() == ProfileKind::ActiveDirectory && sam_account_name_ok(&name) {
        attributes.push(("sAMAccountName".into(), vec![name.clone().into_bytes()]));
    }
    if let Some(src) = ldap_attribute(ctx.profile, ctx.kind, "displayName") {
        if !src.eq_ignore_ascii_case("cn") {
            attributes.push((src, vec![name.into_bytes()]));
        }
    }
    for (a, v) in texts {
        match attributes
            .iter_mut()
            .find(|(x, _)| x.eq_ignore_ascii_case(&a))
        {
            Some(slot) => slot.1 = vec![v.into_bytes()],
            None => attributes.push((a, vec![v.into_bytes()])),
        }
    }
    if !set.values.is_empty() {
        attributes.push((
            member_attr,
            set.values.into_iter().map(String::into_bytes).collect(),
        ));
    }
    Ok(Plan {
        ops: vec![WriteOp::Add {
            dn: new_dn.clone(),
            attributes,
        }],
        dn: new_dn,
    })
}

/// AD's sAMAccountName: at most 64 characters, none of `"/\[]:;|=,+*?<>@`.
fn sam_account_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= 64
        && !name.chars().any(|c| "\"/\\[]:;|=,+*?<>@".contains(c))
}

fn plan_update(
    ctx: &Context<'_>,
    changes: &[Change],
    entry: &Entry,
    members: &HashMap<String, String>,
) -> Result<Plan, WriteError> {
    let rdn_attr = rdn_type(&entry.dn);
    let member_attr = member_attribute(ctx.profile, Some(entry));
    let original = MemberSet::new(entry.strs(&member_attr).map(str::to_string).collect());
    let mut set = original.clone();
    let mut members_touched = false;
    let mut mods: Vec<Modification> = Vec::new();
    let mut rename: Option<String> = None;
    for c in changes {
        let allowed = ctx.policy.allows_attribute(ctx.kind, c.attribute());
        match c {
            Change::Members(m) => {
                if ctx.kind != ResourceKind::Group {
                    return Err(bad("invalidPath", "only groups have `members`"));
                }
                let mut next = set.clone();
                next.apply(m, members, ctx.include);
                let changed = next.keys != set.keys;
                if !allowed && changed {
                    // A PUT that would change members the policy does not let it write.
                    return Err(refuse_attribute(ctx.policy, ctx.kind, "members"));
                }
                if allowed {
                    set = next;
                    members_touched = true;
                }
            }
            Change::Set { attribute, value } => {
                let ldap = match ldap_attribute(ctx.profile, ctx.kind, attribute) {
                    Some(a) => a,
                    None if !allowed => {
                        return Err(refuse_attribute(ctx.policy, ctx.kind, attribute))
                    }
                    None => {
                        return Err(WriteError::Forbidden(format!(
                            "attribute `{attribute}` has no LDAP attribute in the sync profile"
                        )))
                    }
                };
                let now: Vec<&str> = entry.strs(&ldap).collect();
                let same = match value {
                    None => now.is_empty(),
                    Some(v) => now.len() == 1 && now[0] == v,
                };
                if same {
                    continue;
                }
                if !allowed {
                    return Err(refuse_attribute(ctx.policy, ctx.kind, attribute));
                }
                if ldap.eq_ignore_ascii_case(&rdn_attr) {
                    match value {
                        Some(v) => rename = Some(format!("{rdn_attr}={}", dn::escape_rdn_value(v))),
                        None => {
                            return Err(bad(
                                "invalidValue",
                                format!(
                                "`{attribute}` names the object ({rdn_attr}) and cannot be removed"
                            ),
                            ))
                        }
                    }
                    continue;
                }
                mods.retain(|m| !m.attribute().eq_ignore_ascii_case(&ldap));
                mods.push(Modification::Replace(
                    ldap,
                    value.iter().map(|v| v.clone().into_bytes()).collect(),
                ));
            }
        }
    }
    if members_touched {
        let added: Vec<Vec<u8>> = set
            .values
            .iter()
            .filter(|v| !original.contains(v))
            .map(|v| v.clone().into_bytes())
            .collect();
        let removed: Vec<Vec<u8>> = original
            .values
            .iter()
            .filter(|v| !set.contains(v))
            .map(|v| v.clone().into_bytes())
            .collect();
        if set.values.is_empty()
            && !removed.is_empty()
            && (entry.has_object_class("groupOfNames")
                || entry.has_object_class("groupOfUniqueNames"))
        {
            return Err(bad(
                "invalidValue",
                format!(
                    "{} would have no member left; the schema requires `{member_attr}`",
                    entry.dn
                ),
            ));
        }
        if !removed.is_empty() {
            mods.push(Modification::Delete(member_attr.clone(), removed));
        }
        if !added.is_empty() {
            mods.push(Modification::Add(member_attr, added));
        }
    }
    let mut ops = Vec::new();
    if !mods.is_empty() {
        ops.push(WriteOp::Modify {
            dn: entry.dn.clone(),
            changes: mods,
        });
    }
    let mut final_dn = entry.dn.clone();
    if let Some(new_rdn) = rename {
        final_dn = format!("{new_rdn},{}", parent(&entry.dn));
        ops.push(WriteOp::Rename {
            dn: entry.dn.clone(),
            new_rdn,
        });
    }
    Ok(Plan { ops, dn: final_dn })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const OU: &str = "ou=wb-allowed,dc=branch,dc=test";
    const DENIED: &str = "ou=wb-denied,dc=branch,dc=test";
    const SCOPE: &str = "dc=branch,dc=test";

    fn policy() -> WritePolicy {
        WritePolicy {
            groups: true,
            users: false,
            allowed_ous: vec![OU.into()],
            create_in: Some(OU.into()),
            create: true,
            update: true,
            delete: true,
            group_attributes: vec!["displayName".into(), "members".into()],
            user_attributes: vec![],
        }
    }

    fn include() -> Vec<String> {
        vec![SCOPE.into()]
    }

    fn ol() -> SyncProfile {
        SyncProfile::default_for(ProfileKind::OpenLdap)
    }

    fn ad() -> SyncProfile {
        SyncProfile::default_for(ProfileKind::ActiveDirectory)
    }

    fn members() -> HashMap<String, String> {
        HashMap::from([
            ("u1".to_string(), format!("uid=u1,ou=people,{SCOPE}")),
            ("u2".to_string(), format!("uid=u2,ou=people,{SCOPE}")),
            ("u3".to_string(), format!("uid=u3,ou=people,{SCOPE}")),
        ])
    }

    fn group(parent: &str, members: &[&str]) -> Entry {
        let mut e = Entry::new(format!("cn=crew,{parent}"))
            .with("objectClass", "groupOfNames")
            .with("cn", "crew")
            .with("entryUUID", "g-1");
        for m in members {
            e.add("member", format!("uid={m},ou=people,{SCOPE}"));
        }
        e
    }

    fn run(
        p: &WritePolicy,
        profile: &SyncProfile,
        method: &str,
        id: Option<&str>,
        body: Value,
        current: Option<&Entry>,
    ) -> Result<Plan, WriteError> {
        let inc = include();
        let ctx = Context {
            policy: p,
            profile,
            kind: ResourceKind::Group,
            include: &inc,
        };
        let body = (!body.is_null()).then_some(body);
        let intent = parse(method, ResourceKind::Group, id, body.as_ref())?;
        plan(&ctx, &intent, current, &members())
    }

    fn patch(ops: Value) -> Value {
        json!({"schemas": [PATCH_OP], "Operations": ops})
    }

    /// A PATCH of group `g-1` (OpenLDAP profile) with these operations.
    fn patch_group(p: &WritePolicy, ops: Value, current: &Entry) -> Result<Plan, WriteError> {
        run(p, &ol(), "PATCH", Some("g-1"), patch(ops), Some(current))
    }

    /// A POST of a new group with this body.
    fn create_group(
        p: &WritePolicy,
        profile: &SyncProfile,
        body: Value,
    ) -> Result<Plan, WriteError> {
        run(p, profile, "POST", None, body, None)
    }

    /// The plan of one modify of `dn`.
    fn modify(dn: &str, changes: Vec<Modification>) -> Vec<WriteOp> {
        vec![WriteOp::Modify {
            dn: dn.to_string(),
            changes,
        }]
    }

    /// The `member` value of test user `id`, as LDAP bytes.
    fn member_dn(id: &str) -> Vec<Vec<u8>> {
        vec![format!("uid={id},ou=people,{SCOPE}").into_bytes()]
    }

    #[test]
    fn without_a_policy_every_write_is_403_naming_the_section() {
        let e = create_group(
            &WritePolicy::default(),
            &ol(),
            json!({"displayName": "x", "members": [{"value": "u1"}]}),
        )
        .unwrap_err();
        assert_eq!(e.status(), 403);
        assert!(e.detail().contains("[writeback]"), "{e}");
        let e = run(
            &WritePolicy::default(),
            &ol(),
            "DELETE",
            Some("g-1"),
            Value::Null,
            None,
        )
        .unwrap_err();
        assert_eq!(e.status(), 403);
    }

    #[test]
    fn a_group_is_created_in_create_in_with_its_members() {
        let p = create_group(&policy(), &ol(), json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Ops, EU", "members": [{"value": "u1"}, {"value": "u2"}]}))
        .unwrap();
        assert_eq!(p.dn, format!("cn=Ops\\, EU,{OU}"));
        let WriteOp::Add { dn, attributes } = &p.ops[0] else {
            panic!("{p:?}")
        };
        assert_eq!(dn, &p.dn);
        let get = |a: &str| {
            attributes.iter().find(|(x, _)| x == a).map(|(_, v)| {
                v.iter()
                    .map(|b| String::from_utf8_lossy(b).to_string())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(get("objectClass").unwrap(), vec!["groupOfNames"]);
        assert_eq!(get("cn").unwrap(), vec!["Ops, EU"]);
        assert_eq!(get("member").unwrap().len(), 2);
        assert!(get("sAMAccountName").is_none());
    }

    #[test]
    fn an_ad_group_gets_its_sam_account_name_and_may_be_empty() {
        let p = create_group(&policy(), &ad(), json!({"displayName": "wb team"})).unwrap();
        let WriteOp::Add { attributes, .. } = &p.ops[0] else {
            panic!()
        };
        assert!(attributes
            .iter()
            .any(|(a, v)| a == "sAMAccountName" && v[0] == b"wb team"));
        assert!(attributes
            .iter()
            .any(|(a, v)| a == "objectClass" && v[0] == b"group"));
        assert!(!attributes.iter().any(|(a, _)| a == "member"));
        let e = create_group(&policy(), &ol(), json!({"displayName": "x"})).unwrap_err();
        assert_eq!(e.status(), 400, "groupOfNames needs a member: {e}");
        let e = create_group(&policy(), &ad(), json!({"members": []})).unwrap_err();
        assert!(e.detail().contains("displayName"), "{e}");
    }

    #[test]
    fn patch_adds_and_removes_members_idempotently() {
        let g = group(OU, &["u1"]);
        let p = patch_group(
            &policy(),
            json!([
                {"op": "add", "path": "members", "value": [{"value": "u1"}, {"value": "u2"}]},
                {"op": "Remove", "path": "members[value eq \"u3\"]"}
            ]),
            &g,
        )
        .unwrap();
        assert_eq!(
            p.ops,
            modify(
                &g.dn,
                vec![Modification::Add("member".into(), member_dn("u2"))]
            )
        );
        let p = patch_group(
            &policy(),
            json!([{"op": "remove", "path": "members[value eq \"u1\"]"}]),
            &group(OU, &["u1", "u2"]),
        )
        .unwrap();
        assert_eq!(
            p.ops,
            modify(
                &g.dn,
                vec![Modification::Delete("member".into(), member_dn("u1"))]
            )
        );
        // Nothing to do: no operation.
        let p = patch_group(
            &policy(),
            json!([{"op": "add", "path": "members", "value": [{"value": "u1"}]}]),
            &g,
        )
        .unwrap();
        assert!(p.ops.is_empty());
    }

    #[test]
    fn a_member_outside_scope_is_400_and_the_last_member_of_group_of_names_stays() {
        let e = patch_group(
            &policy(),
            json!([{"op": "add", "path": "members", "value": [{"value": "nobody"}]}]),
            &group(OU, &["u1"]),
        )
        .unwrap_err();
        assert_eq!(
            (e.status(), e.scim_type()),
            (400, Some("invalidValue")),
            "{e}"
        );
        assert!(e.detail().contains("nobody"));
        let e = patch_group(
            &policy(),
            json!([{"op": "remove", "path": "members"}]),
            &group(OU, &["u1"]),
        )
        .unwrap_err();
        assert_eq!(e.status(), 400, "{e}");
    }

    #[test]
    fn replace_keeps_members_outside_the_scope() {
        let mut g = group(OU, &["u1"]);
        g.add("member", "uid=x,ou=elsewhere,dc=other");
        let p = patch_group(
            &policy(),
            json!([{"op": "replace", "path": "members", "value": [{"value": "u2"}]}]),
            &g,
        )
        .unwrap();
        let WriteOp::Modify { changes, .. } = &p.ops[0] else {
            panic!()
        };
        assert_eq!(
            changes,
            &vec![
                Modification::Delete("member".into(), member_dn("u1")),
                Modification::Add("member".into(), member_dn("u2")),
            ]
        );
    }

    #[test]
    fn targets_outside_the_allowed_ous_are_403_whatever_the_request() {
        let g = group(DENIED, &["u1"]);
        for (m, body) in [
            (
                "PATCH",
                patch(json!([{"op": "add", "path": "members", "value": [{"value": "u2"}]}])),
            ),
            ("PUT", json!({"displayName": "crew"})),
            ("DELETE", Value::Null),
        ] {
            let e = run(&policy(), &ol(), m, Some("g-1"), body, Some(&g)).unwrap_err();
            assert_eq!(e.status(), 403, "{m}: {e}");
            assert!(
                e.detail().contains(DENIED) && e.detail().contains("allowed_ous"),
                "{e}"
            );
        }
        // The OU itself is not below itself.
        let mut p = policy();
        p.allowed_ous = vec![OU.into()];
        assert!(!p.allows_dn(OU));
        assert!(p.allows_dn(&format!("cn=a,{OU}")));
        assert!(!p.allows_dn("cn=a,ou=wb-allowed-not,dc=branch,dc=test"));
        // A create_in outside the allowed OUs (config validation prevents it) is refused.
        p.create_in = Some(DENIED.into());
        let e = create_group(
            &p,
            &ol(),
            json!({"displayName": "x", "members": [{"value": "u1"}]}),
        )
        .unwrap_err();
        assert_eq!(e.status(), 403);
    }

    #[test]
    fn disallowed_attributes_kinds_and_operations_are_403_naming_the_key() {
        let g = group(OU, &["u1"]);
        let e = patch_group(
            &policy(),
            json!([{"op": "replace", "path": "description", "value": "d"}]),
            &g,
        )
        .unwrap_err();
        assert_eq!(e.status(), 403);
        assert!(e.detail().contains("writeback.group_attributes"), "{e}");
        let mut p = policy();
        p.delete = false;
        let e = run(&p, &ol(), "DELETE", Some("g-1"), Value::Null, Some(&g)).unwrap_err();
        assert!(e.detail().contains("writeback.operations"), "{e}");
        let e = authorize(
            &policy(),
            ResourceKind::User,
            &Intent::Delete { id: "u".into() },
        )
        .unwrap_err();
        assert!(e.detail().contains("writeback.resources"), "{e}");
        let mut p = policy();
        p.users = true;
        let e = authorize(&p, ResourceKind::User, &Intent::Create { changes: vec![] }).unwrap_err();
        assert_eq!(e.status(), 403);
    }

    #[test]
    fn put_may_repeat_disallowed_values_but_not_change_them_and_renames_by_cn() {
        let mut g = group(OU, &["u1"]);
        g.add("description", "old");
        let mut p = policy();
        p.group_attributes = vec!["displayName".into()];
        // Same members, same description: only the rename.
        let plan_ = run(
            &p,
            &ol(),
            "PUT",
            Some("g-1"),
            json!({"id": "g-1", "displayName": "crew 2", "description": "old", "members": [{"value": "u1"}]}),
            Some(&g),
        )
        .unwrap();
        assert_eq!(
            plan_.ops,
            vec![WriteOp::Rename {
                dn: g.dn.clone(),
                new_rdn: "cn=crew 2".into()
            }]
        );
        assert_eq!(plan_.dn, format!("cn=crew 2,{OU}"));
        let e = run(
            &p,
            &ol(),
            "PUT",
            Some("g-1"),
            json!({"displayName": "crew", "members": [{"value": "u2"}]}),
            Some(&g),
        )
        .unwrap_err();
        assert_eq!(e.status(), 403, "{e}");
        let e = run(
            &p,
            &ol(),
            "PUT",
            Some("g-1"),
            json!({"description": "new"}),
            Some(&g),
        )
        .unwrap_err();
        assert_eq!(e.status(), 403, "{e}");
    }

    #[test]
    fn description_is_written_when_allowed() {
        let mut p = policy();
        p.group_attributes.push("description".into());
        let g = group(OU, &["u1"]);
        let plan_ = patch_group(
            &p,
            json!([{"op": "replace", "value": {"description": "the crew"}}]),
            &g,
        )
        .unwrap();
        assert_eq!(
            plan_.ops,
            modify(
                &g.dn,
                vec![Modification::Replace(
                    "description".into(),
                    vec![b"the crew".to_vec()]
                )]
            )
        );
    }

    #[test]
    fn malformed_requests_are_400_or_405() {
        let p = policy();
        let g = group(OU, &["u1"]);
        for body in [
            json!({"Operations": [{"op": "add", "path": "members", "value": []}]}),
            patch(json!([])),
            patch(json!([{"op": "move", "path": "members"}])),
            patch(json!([{"op": "remove"}])),
            patch(json!([{"op": "remove", "path": "members[display eq \"x\"]"}])),
            patch(json!([{"op": "add", "path": "members", "value": [{"display": "x"}]}])),
        ] {
            let e = run(&p, &ol(), "PATCH", Some("g-1"), body.clone(), Some(&g)).unwrap_err();
            assert_eq!(e.status(), 400, "{body}: {e}");
        }
        assert_eq!(
            parse("POST", ResourceKind::Group, Some("x"), Some(&json!({})))
                .unwrap_err()
                .status(),
            405
        );
        assert_eq!(
            parse("DELETE", ResourceKind::Group, None, None)
                .unwrap_err()
                .status(),
            405
        );
        let many: Vec<Value> = (0..=MAX_MEMBER_IDS)
            .map(|i| json!({"value": format!("m{i}")}))
            .collect();
        let e = parse(
            "POST",
            ResourceKind::Group,
            None,
            Some(&json!({"displayName": "x", "members": many})),
        )
        .unwrap_err();
        assert_eq!(e.scim_type(), Some("tooMany"));
    }

    /// Regression: any path whose brackets merely *contained* `type eq "work"` was taken
    /// for the work value (`emails[type eq "work" or type eq "home"]`, `[not (type eq
    /// "work")]`, a `.display` sub-attribute). The filter is parsed and must be exactly one
    /// `type eq "work"`, the sub-attribute `value` or none.
    #[test]
    fn only_exactly_type_eq_work_names_the_work_value() {
        let one = |path: &str| {
            parse(
                "PATCH",
                ResourceKind::User,
                Some("u"),
                Some(&patch(
                    json!([{"op": "replace", "path": path, "value": "a@x"}]),
                )),
            )
        };
        for good in [
            "emails[type eq \"work\"].value",
            "emails[TYPE EQ \"Work\"].value",
            "emails[type eq \"work\"]",
        ] {
            assert!(one(good).is_ok(), "{good}");
        }
        for bad_path in [
            "emails[type eq \"work\" or type eq \"home\"].value",
            "emails[not (type eq \"work\")].value",
            "emails[type eq \"work\" and primary eq true].value",
            "emails[type eq \"home\"].value",
            "emails[type ne \"work\"].value",
            "emails[type eq \"work\"].display",
            "emails[value eq \"x\" or type eq 'work'].value",
            "emails[type eq \"work\"",
        ] {
            let e = one(bad_path).unwrap_err();
            assert_eq!(e.status(), 400, "{bad_path}: {e:?}");
        }
    }

    #[test]
    fn member_filters_and_user_paths_parse() {
        assert_eq!(
            member_filter_ids(r#"value eq "a" or VALUE eq "b or c""#).unwrap(),
            vec!["a", "b or c"]
        );
        assert!(member_filter_ids("value ne \"a\"").is_err());
        let i = parse(
            "PATCH",
            ResourceKind::User,
            Some("u"),
            Some(&patch(json!([
                {"op": "replace", "path": "emails[type eq \"work\"].value", "value": "a@x"},
                {"op": "replace", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:Department", "value": "Ops"},
                {"op": "remove", "path": "title"}
            ]))),
        )
        .unwrap();
        let Intent::Update { changes, .. } = i else {
            panic!()
        };
        assert_eq!(
            changes,
            vec![
                Change::Set {
                    attribute: "emails".into(),
                    value: Some("a@x".into())
                },
                Change::Set {
                    attribute: "department".into(),
                    value: Some("Ops".into())
                },
                Change::Set {
                    attribute: "title".into(),
                    value: None
                },
            ]
        );
    }

    #[test]
    fn user_attributes_map_through_the_profile() {
        let mut p = policy();
        p.users = true;
        p.allowed_ous = vec![OU.into()];
        p.user_attributes = vec!["title".into(), "emails".into()];
        let inc = include();
        let profile = ol();
        let ctx = Context {
            policy: &p,
            profile: &profile,
            kind: ResourceKind::User,
            include: &inc,
        };
        let user = Entry::new(format!("uid=ann,{OU}"))
            .with("objectClass", "inetOrgPerson")
            .with("uid", "ann")
            .with("title", "old");
        let intent = parse(
            "PATCH",
            ResourceKind::User,
            Some("x"),
            Some(&patch(json!([{"op": "replace", "value": {"title": "new", "emails": [{"value": "ann@x", "type": "work"}]}}]))),
        )
        .unwrap();
        // (serde_json keeps object keys sorted: emails comes before title.)
        let plan_ = plan(&ctx, &intent, Some(&user), &HashMap::new()).unwrap();
        assert_eq!(
            plan_.ops,
            modify(
                &user.dn,
                vec![
                    Modification::Replace("mail".into(), vec![b"ann@x".to_vec()]),
                    Modification::Replace("title".into(), vec![b"new".to_vec()]),
                ]
            )
        );
        // The log and the provisioning log name the LDAP attributes, never the values.
        assert_eq!(plan_.attributes(), ["mail", "title"]);
        assert_eq!(
            plan_.ops[0].describe(),
            format!("modify uid=ann,{OU}: mail, title")
        );
    }

    #[test]
    fn a_password_like_attribute_is_never_written_whatever_the_profile_maps() {
        let mut p = policy();
        p.users = true;
        p.allowed_ous = vec![OU.into()];
        p.user_attributes = vec!["title".into()];
        let inc = include();
        // A profile that maps title to userPassword (the caller never hands one: the
        // local profile is checked at load; this is the last line of defence).
        let profile = ol()
            .with_overrides("[user.attributes]\ntitle = \"userPassword\"")
            .unwrap();
        let ctx = Context {
            policy: &p,
            profile: &profile,
            kind: ResourceKind::User,
            include: &inc,
        };
        let user = Entry::new(format!("uid=ann,{OU}"))
            .with("objectClass", "inetOrgPerson")
            .with("uid", "ann");
        let intent = parse(
            "PATCH",
            ResourceKind::User,
            Some("x"),
            Some(&patch(
                json!([{"op": "replace", "path": "title", "value": "hunter2"}]),
            )),
        )
        .unwrap();
        let e = plan(&ctx, &intent, Some(&user), &HashMap::new()).unwrap_err();
        assert_eq!(e.status(), 403);
        assert!(
            e.detail().contains("userPassword") && !e.detail().contains("hunter2"),
            "{e}"
        );
    }

    #[test]
    fn every_write_op_names_its_attributes() {
        let add = WriteOp::Add {
            dn: "cn=g,ou=x".into(),
            attributes: vec![
                ("objectClass".into(), vec![b"groupOfNames".to_vec()]),
                ("cn".into(), vec![b"g".to_vec()]),
                ("member".into(), vec![b"uid=a,ou=x".to_vec()]),
            ],
        };
        assert_eq!(add.describe(), "add cn=g,ou=x: objectClass, cn, member");
        let rename = WriteOp::Rename {
            dn: "cn=g,ou=x".into(),
            new_rdn: "cn=h".into(),
        };
        assert_eq!(rename.describe(), "rename cn=g,ou=x: cn");
        let delete = WriteOp::Delete {
            dn: "cn=g,ou=x".into(),
        };
        assert_eq!(delete.describe(), "delete cn=g,ou=x");
        let plan_ = Plan {
            ops: modify(
                "cn=g,ou=x",
                vec![
                    Modification::Delete("member".into(), vec![b"a".to_vec()]),
                    Modification::Add("member".into(), vec![b"b".to_vec()]),
                ],
            ),
            dn: "cn=g,ou=x".into(),
        };
        assert_eq!(plan_.attributes(), ["member"]);
    }
}
