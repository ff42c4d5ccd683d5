//! The SCIM facade: RFC 7644 reads answered from the branch directory, for requests that
//! arrive through the relay (docs/protocol.md). The cloud sees the directory as an ordinary
//! SCIM service provider whose resource `id` is the anchor (`externalId`).
//!
//! What it answers:
//! * `GET /ServiceProviderConfig`, `/ResourceTypes[/{id}]`, `/Schemas[/{uri}]` (static,
//!   honest: filter yes, bulk/sort/etag/changePassword no, patch no here; the relay handler
//!   sets it when `[writeback]` allows updates); other methods there are
//!   `405` (discovery is read-only on every provider);
//! * `GET /Users/{id}`, `/Groups/{id}`: the object whose anchor is `id`, if it is in scope;
//! * `GET /Users`, `/Groups` with `filter`, `startIndex`, `count`, `attributes`,
//!   `excludedAttributes`: a paged search of the scope. The SCIM filter is parsed and
//!   translated to an LDAP filter ([`crate::scim::filter`]); one it cannot translate
//!   faithfully is a `400 invalidFilter`, never a broader search.
//! * writes (POST/PUT/PATCH/DELETE) through [`Facade::write`]: `403` unless the branch's
//!   `[writeback]` policy allows the kind, the operation, the attributes and the OU
//!   ([`crate::relay::writeback`] plans them; this module does the reads and hands the plan to the
//!   directory's write connection). Writes are recorded in the provisioning log.
//!
//! Invariants: every search is confined to `scope.include`, the scope filters and, when
//! set, `scope.groups` (the cloud cannot read outside scope); values from requests reach LDAP only escaped; results are
//! capped ([`MAX_RESULTS`] per list, [`MAX_COUNT`] per page).
//!
//! References (`members`, `manager`) are resolved to anchors through a snapshot of the
//! anchor index (refreshed from disk at most every 30 s); references the index does not
//! know are read from the directory, at most [`MAX_REFERENCE_READS`] per request (more are
//! left out, and the log says so).

use serde_json::{json, Map, Value};

use crate::ldap::{Directory, Entry, Scope};
use crate::scim::mapping::{self, anchor_filter, Reference, Resolver};
use std::collections::HashMap;

use crate::ldap::dn;
use crate::ldap::WriteOp;
use crate::relay::writeback::{self, Intent, WriteError, WritePolicy};
use crate::scim::filter;
use crate::scim::profile::{AnchorEncoding, Source, SyncProfile, Target as ProfileTarget};
use crate::scim::resource::{ENTERPRISE_SCHEMA, GROUP_SCHEMA, LIST_RESPONSE, USER_SCHEMA};
use crate::scim::ResourceKind;
use crate::sync::anchors::AnchorIndex;
use crate::sync::scope_groups::AllowedSet;

/// Largest page a list returns.
pub const MAX_COUNT: usize = 200;
/// Most objects a list scans for `totalResults`.
pub const MAX_RESULTS: usize = 10_000;
/// Most references read from the directory per request.
pub const MAX_REFERENCE_READS: usize = 200;

/// What the facade reads from.
pub struct Facade<'a> {
    /// The directory.
    pub dir: &'a Directory,
    /// The mapping.
    pub profile: &'a SyncProfile,
    /// `scope.include`.
    pub include: &'a [String],
    /// Scope filter for users.
    pub user_filter: &'a str,
    /// Scope filter for groups.
    pub group_filter: &'a str,
    /// DN → anchor, from the anchor index.
    pub index: &'a AnchorIndex,
    /// With `scope.groups`: the objects the groups allow, computed for this request (an
    /// object outside it is neither listed, nor found by id, nor named as a member).
    pub allowed: Option<&'a AllowedSet>,
}

/// An answer: status and JSON body.
pub type Answer = (u16, Value);

/// A SCIM error body.
pub fn error(status: u16, scim_type: Option<&str>, detail: impl Into<String>) -> Answer {
    (
        status,
        crate::scim::resource::error_body(status, scim_type, detail),
    )
}

/// The query parameters the facade understands.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// `filter`
    pub filter: Option<String>,
    /// `startIndex` (1-based)
    pub start_index: usize,
    /// `count`
    pub count: usize,
    /// `attributes` (lowercased)
    pub attributes: Vec<String>,
    /// `excludedAttributes` (lowercased)
    pub excluded: Vec<String>,
}

/// Parses a raw query string (pure). Unknown parameters are ignored, as RFC 7644 lets a
/// provider do for ones it does not support; malformed numbers are errors.
pub fn parse_query(raw: &str) -> Result<ListQuery, String> {
    let mut q = ListQuery {
        start_index: 1,
        count: MAX_COUNT,
        ..ListQuery::default()
    };
    for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
        match k.as_ref() {
            "filter" => q.filter = Some(v.into_owned()),
            "startIndex" => {
                let n: i64 = v
                    .parse()
                    .map_err(|_| format!("startIndex `{v}` is not a number"))?;
                q.start_index = n.max(1) as usize;
            }
            "count" => {
                let n: i64 = v
                    .parse()
                    .map_err(|_| format!("count `{v}` is not a number"))?;
                q.count = (n.max(0) as usize).min(MAX_COUNT);
            }
            "attributes" => q.attributes = split_list(&v),
            "excludedAttributes" => q.excluded = split_list(&v),
            _ => {}
        }
    }
    Ok(q)
}

fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

impl Facade<'_> {
    /// Whether `scope.groups` (if set) allows the object at `dn`; a failed read of the
    /// scratch file allows nothing (never a wider scope).
    fn group_allows(&self, dn: &str) -> bool {
        self.allowed.is_none_or(|a| a.contains(dn).unwrap_or(false))
    }

    fn scope_filter(&self, kind: ResourceKind) -> &str {
        match kind {
            ResourceKind::User => self.user_filter,
            ResourceKind::Group => self.group_filter,
        }
    }

    /// Answers one request.
    pub async fn answer(&self, method: &str, path: &str, query: &str) -> Answer {
        let path = path.trim_end_matches('/');
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let head = parts.next().unwrap_or("");
        let rest = parts.next();
        let kind = match head {
            "Users" => Some(ResourceKind::User),
            "Groups" => Some(ResourceKind::Group),
            _ => None,
        };
        if kind.is_none() {
            return discovery(method, head, rest)
                .unwrap_or_else(|| error(404, None, format!("no such endpoint `{path}`")));
        }
        if !method.eq_ignore_ascii_case("GET") {
            return error(
                403,
                None,
                format!(
                    "{method} {path}: writes into the branch directory are not allowed by its local policy"
                ),
            );
        }
        match (head, kind, rest) {
            (_, Some(kind), None) => match parse_query(query) {
                Ok(q) => self.list(kind, &q).await,
                Err(e) => error(400, Some("invalidValue"), e),
            },
            (_, Some(kind), Some(id)) if !id.contains('/') => {
                let id = percent_decode(id);
                match parse_query(query) {
                    Ok(q) => self.get(kind, &id, &q).await,
                    Err(e) => error(400, Some("invalidValue"), e),
                }
            }
            _ => error(404, None, format!("no such endpoint `{path}`")),
        }
    }

    async fn get(&self, kind: ResourceKind, id: &str, q: &ListQuery) -> Answer {
        let Some(anchor) = anchor_filter(self.profile, kind, id) else {
            return error(404, None, format!("{} {id} not found", kind.word()));
        };
        let filter = format!("(&{}{anchor})", self.scope_filter(kind));
        match self.search(kind, &filter, 0, 1, 2).await {
            Ok((_, found)) => match found.into_iter().next() {
                Some(r) => (200, project(r, q)),
                None => error(404, None, format!("{} {id} not found", kind.word())),
            },
            Err(e) => error(503, None, format!("directory: {e}")),
        }
    }

    async fn list(&self, kind: ResourceKind, q: &ListQuery) -> Answer {
        let extra = match &q.filter {
            None => String::new(),
            Some(f) => match translate_filter(self.profile, kind, f) {
                Ok(ldap) => ldap,
                Err(e) => return error(400, Some("invalidFilter"), e),
            },
        };
        let filter = format!("(&{}{extra})", self.scope_filter(kind));
        match self
            .search(kind, &filter, q.start_index - 1, q.count, MAX_RESULTS)
            .await
        {
            Ok((total, page)) => {
                let resources: Vec<Value> = page.into_iter().map(|r| project(r, q)).collect();
                let mut body = list(resources, q.start_index);
                body["totalResults"] = json!(total);
                (200, body)
            }
            Err(e) => error(503, None, format!("directory: {e}")),
        }
    }

    /// Searches the scope; returns (total matches, mapped page). Counting stops at `cap`
    /// (more is a 400 tooMany? No: RFC 7644 lets totalResults be the capped count; the
    /// page is still exact).
    async fn search(
        &self,
        kind: ResourceKind,
        filter: &str,
        skip: usize,
        take: usize,
        cap: usize,
    ) -> Result<(usize, Vec<Value>), String> {
        let attrs = self.profile.ldap_attributes(kind);
        let attrs: Vec<&str> = attrs.iter().map(String::as_str).collect();
        let mut total = 0usize;
        let mut page: Vec<Entry> = Vec::new();
        'bases: for base in self.include {
            let mut s = self.dir.search(base, Scope::Subtree, filter, &attrs);
            while let Some(e) = s.next().await {
                let e = e.map_err(|e| e.to_string())?;
                if self.profile.classify(&e) != Some(kind) || !self.group_allows(&e.dn) {
                    continue;
                }
                total += 1;
                if total > skip && page.len() < take {
                    page.push(e);
                }
                if total >= cap {
                    break 'bases;
                }
            }
        }
        let mut out = Vec::with_capacity(page.len());
        for e in page {
            match self.resource(&e, kind).await {
                Ok(r) => out.push(r),
                Err(err) => log::warn!("facade: {} left out: {err}", e.dn),
            }
        }
        Ok((total, out))
    }

    /// An entry as the SCIM resource the facade serves: the mapped representation with
    /// `id` = the anchor and `meta.resourceType`.
    async fn resource(&self, e: &Entry, kind: ResourceKind) -> Result<Value, mapping::MapError> {
        let resolver = self.resolver_for(e).await;
        let m = mapping::map_entry(e, kind, self.profile, &resolver)?;
        let mut r = m.resource;
        r["id"] = Value::String(m.external_id);
        let resource_type = match kind {
            ResourceKind::User => "User",
            ResourceKind::Group => "Group",
        };
        r["meta"] = json!({ "resourceType": resource_type });
        Ok(r)
    }

    /// Resolves an entry's references: the index first, the directory for the rest.
    async fn resolver_for(&self, e: &Entry) -> TableResolver {
        let mut table = std::collections::HashMap::new();
        let mut reads = 0usize;
        let mut skipped = 0usize;
        let identity = crate::scim::profile::merge_attributes(
            self.profile.identity_attributes(ResourceKind::User),
            self.profile.identity_attributes(ResourceKind::Group),
        );
        let identity: Vec<&str> = identity.iter().map(String::as_str).collect();
        for a in ["manager", "member", "uniqueMember"] {
            for target in e.strs(a) {
                let key = dn::normalize(target);
                if table.contains_key(&key) || !dn::under_any(target, self.include) {
                    continue;
                }
                if !self.group_allows(target) {
                    table.insert(key, Reference::OutOfScope);
                    continue;
                }
                if let Some((x, _)) = self.index.by_dn(target) {
                    table.insert(key, Reference::Id(x.to_string()));
                    continue;
                }
                if reads >= MAX_REFERENCE_READS {
                    skipped += 1;
                    continue;
                }
                reads += 1;
                let r = match self.dir.read(target, &identity).await {
                    Ok(Some(t)) => match self.profile.classify(&t) {
                        Some(k) => match self.dir.matches(&t.dn, self.scope_filter(k)).await {
                            Ok(true) => mapping::anchor_of(&t, k, self.profile)
                                .map(Reference::Id)
                                .unwrap_or(Reference::OutOfScope),
                            _ => Reference::OutOfScope,
                        },
                        None => Reference::OutOfScope,
                    },
                    _ => Reference::OutOfScope,
                };
                table.insert(key, r);
            }
        }
        if skipped > 0 {
            log::warn!(
                "facade: {}: {skipped} references not in the anchor index were left out (limit {MAX_REFERENCE_READS} reads per request)",
                e.dn
            );
        }
        TableResolver(table)
    }
}

/// A write's answer from a [`WriteError`].
fn write_error(e: &WriteError) -> Answer {
    error(e.status(), e.scim_type(), e.detail())
}

/// The SCIM error for an LDAP write failure on `dn`.
fn ldap_write_error(e: &crate::ldap::WriteError) -> WriteError {
    use crate::ldap::WriteError as L;
    match e {
        L::Refused { code, dn, .. } => match code.0 {
            68 => WriteError::Conflict(format!("{dn} exists already: {e}")),
            32 => WriteError::NotFound(e.to_string()),
            50 => WriteError::Forbidden(format!(
                "{e}; the bind account needs write rights on the writeback OUs"
            )),
            16 | 19 | 20 | 21 | 34 | 64 | 65 | 67 => WriteError::BadRequest {
                scim_type: "invalidValue",
                detail: e.to_string(),
            },
            51 | 52 => WriteError::Directory(503, e.to_string()),
            _ => WriteError::Directory(500, e.to_string()),
        },
        _ => WriteError::Directory(503, e.to_string()),
    }
}

impl Facade<'_> {
    /// Answers a write (POST/PUT/PATCH/DELETE on `/Users` or `/Groups`) under `policy`:
    /// parse and authorize (no read), find the target by anchor in scope, check its OU,
    /// resolve member ids in scope, plan, apply through `writer`, log, and answer with the
    /// resource as it is now (`201`/`200`) or `204` for a delete. A refused request touches
    /// nothing.
    pub async fn write(
        &self,
        policy: &WritePolicy,
        writer: Option<&crate::ldap::DirectoryWriter>,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Answer {
        let path = path.trim_end_matches('/');
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let head = parts.next().unwrap_or("");
        let rest = parts.next();
        let kind = match head {
            "Users" => ResourceKind::User,
            "Groups" => ResourceKind::Group,
            _ => {
                return discovery(method, head, rest)
                    .unwrap_or_else(|| error(404, None, format!("no such endpoint `{path}`")))
            }
        };
        if rest.is_some_and(|r| r.contains('/')) {
            return error(404, None, format!("no such endpoint `{path}`"));
        }
        let id = rest.map(percent_decode);
        match self
            .write_inner(policy, writer, kind, method, id.as_deref(), body)
            .await
        {
            Ok(answer) => answer,
            Err(e) => {
                if e.status() == 403 {
                    log::warn!("writeback: {method} {path} refused: {}", e.detail());
                }
                write_error(&e)
            }
        }
    }

    async fn write_inner(
        &self,
        policy: &WritePolicy,
        writer: Option<&crate::ldap::DirectoryWriter>,
        kind: ResourceKind,
        method: &str,
        id: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Answer, WriteError> {
        if !policy.allows_any() {
            // Refused before the body is even read: the default answer to every write.
            writeback::authorize(policy, kind, &Intent::Delete { id: String::new() })?;
        }
        let intent = writeback::parse(method, kind, id, body)?;
        writeback::authorize(policy, kind, &intent)?;
        let writer = writer
            .ok_or_else(|| WriteError::Forbidden("writeback has no write connection".into()))?;
        let current = match intent.id() {
            Some(id) => self
                .find(kind, id)
                .await
                .map_err(|e| WriteError::Directory(503, format!("directory: {e}")))?,
            None => None,
        };
        let ctx = writeback::Context {
            policy,
            profile: self.profile,
            kind,
            include: self.include,
        };
        writeback::preflight(&ctx, &intent, current.as_ref())?;
        let mut members = HashMap::new();
        for m in intent.member_ids() {
            if let Some(dn_) = self
                .member_dn(&m)
                .await
                .map_err(|e| WriteError::Directory(503, format!("directory: {e}")))?
            {
                members.insert(m, dn_);
            }
        }
        let plan = writeback::plan(&ctx, &intent, current.as_ref(), &members)?;
        let anchor = intent.id().unwrap_or("").to_string();
        let verb = intent.verb();
        let written = plan.attributes();
        if !plan.ops.is_empty() {
            let summary: Vec<String> = plan.ops.iter().map(WriteOp::describe).collect();
            if let Err(e) = writer.apply(plan.ops.clone()).await {
                let err = ldap_write_error(&e);
                log::warn!(
                    "writeback: {verb} of {} {} failed ({}): {e}",
                    kind.word(),
                    plan.dn,
                    summary.join("; ")
                );
                crate::sync::audit::record(&crate::sync::audit::Entry {
                    op: "fail",
                    kind: kind.word(),
                    anchor: &anchor,
                    dn: &plan.dn,
                    id: intent.id(),
                    error: Some(&format!("writeback {verb}: {e}")),
                    attributes: Some(&written),
                });
                return Err(err);
            }
            log::info!(
                "writeback: {verb} of {} {}: {}",
                kind.word(),
                plan.dn,
                summary.join("; ")
            );
        } else {
            log::info!(
                "writeback: {verb} of {} {}: nothing to change",
                kind.word(),
                plan.dn
            );
        }
        let done = |anchor: &str| self.audit(verb, kind, anchor, &plan.dn, &written);
        if let Intent::Delete { .. } = intent {
            if !plan.ops.is_empty() {
                done(&anchor);
            }
            return Ok((204, Value::Null));
        }
        let status = if matches!(intent, Intent::Create { .. }) {
            201
        } else {
            200
        };
        match self.resource_at(kind, &plan.dn).await {
            Ok(Some(r)) => {
                if !plan.ops.is_empty() {
                    done(r["id"].as_str().unwrap_or(&anchor));
                }
                Ok((status, r))
            }
            Ok(None) => {
                if !plan.ops.is_empty() {
                    done(&anchor);
                }
                Err(WriteError::Directory(
                    500,
                    format!(
                        "{} was written but is not in the agent's scope to be read back",
                        plan.dn
                    ),
                ))
            }
            Err(e) => Err(WriteError::Directory(503, format!("directory: {e}"))),
        }
    }

    /// A `writeback-*` line in the provisioning log, naming the LDAP attributes written.
    fn audit(&self, verb: &str, kind: ResourceKind, anchor: &str, dn_: &str, written: &[String]) {
        let op = match verb {
            "create" => "writeback-create",
            "delete" => "writeback-delete",
            _ => "writeback-update",
        };
        crate::sync::audit::record(&crate::sync::audit::Entry {
            op,
            kind: kind.word(),
            anchor,
            dn: dn_,
            id: Some(anchor),
            error: None,
            attributes: Some(written),
        });
    }

    /// The in-scope object of `kind` anchored at `id`, with what planning needs.
    async fn find(&self, kind: ResourceKind, id: &str) -> Result<Option<Entry>, String> {
        let Some(anchor) = anchor_filter(self.profile, kind, id) else {
            return Ok(None);
        };
        let filter = format!("(&{}{anchor})", self.scope_filter(kind));
        let mut attrs = self.profile.ldap_attributes(kind);
        attrs.push("description".into());
        let attrs: Vec<&str> = attrs.iter().map(String::as_str).collect();
        for base in self.include {
            let mut s = self.dir.search(base, Scope::Subtree, &filter, &attrs);
            while let Some(e) = s.next().await {
                let e = e.map_err(|e| e.to_string())?;
                if self.profile.classify(&e) == Some(kind) && self.group_allows(&e.dn) {
                    return Ok(Some(e));
                }
            }
        }
        Ok(None)
    }

    /// The DN of the in-scope user or group anchored at `id` (a member value).
    async fn member_dn(&self, id: &str) -> Result<Option<String>, String> {
        let mut terms = String::new();
        for kind in [ResourceKind::User, ResourceKind::Group] {
            if let Some(a) = anchor_filter(self.profile, kind, id) {
                terms.push_str(&format!("(&{}{a})", self.scope_filter(kind)));
            }
        }
        if terms.is_empty() {
            return Ok(None);
        }
        let filter = format!("(|{terms})");
        for base in self.include {
            let mut s = self
                .dir
                .search(base, Scope::Subtree, &filter, &["objectClass"]);
            while let Some(e) = s.next().await {
                let e = e.map_err(|e| e.to_string())?;
                if self.profile.classify(&e).is_some() && self.group_allows(&e.dn) {
                    return Ok(Some(e.dn));
                }
            }
        }
        Ok(None)
    }

    /// The SCIM resource of the in-scope object at `dn`, if it is one of `kind`.
    async fn resource_at(&self, kind: ResourceKind, dn_: &str) -> Result<Option<Value>, String> {
        if !dn::under_any(dn_, self.include) || !self.group_allows(dn_) {
            return Ok(None);
        }
        let attrs = self.profile.ldap_attributes(kind);
        let attrs: Vec<&str> = attrs.iter().map(String::as_str).collect();
        let mut s = self
            .dir
            .search(dn_, Scope::Base, self.scope_filter(kind), &attrs);
        let mut found = None;
        while let Some(e) = s.next().await {
            let e = e.map_err(|e| e.to_string())?;
            if self.profile.classify(&e) == Some(kind) {
                found = Some(e);
            }
        }
        let Some(e) = found else { return Ok(None) };
        self.resource(&e, kind)
            .await
            .map(Some)
            .map_err(|err| err.to_string())
    }
}

struct TableResolver(std::collections::HashMap<String, Reference>);

impl Resolver for TableResolver {
    fn resolve(&self, target: &str) -> Reference {
        self.0
            .get(&dn::normalize(target))
            .cloned()
            .unwrap_or(Reference::OutOfScope)
    }
}

/// A SCIM filter as an LDAP filter over the profile's attributes, or why not (the text
/// becomes a `400 invalidFilter`).
fn translate_filter(profile: &SyncProfile, kind: ResourceKind, f: &str) -> Result<String, String> {
    let ast = filter::parse(f).map_err(|e| e.to_string())?;
    let ldap = filter::to_ldap(&ast, &attribute_map(profile, kind)).map_err(|e| e.to_string())?;
    // The one validator of LDAP filters, as for the config's and the profile's: what the
    // search would refuse is a 400 here, never a failed directory read.
    crate::ldap::filter::check(&ldap)?;
    Ok(ldap)
}

/// The filterable SCIM attributes of `kind` and the LDAP they stand for, from the profile
/// (pure). References (`members`, `manager`) are not filterable: their values are anchors
/// of other objects, which LDAP holds as DNs.
pub fn attribute_map(profile: &SyncProfile, kind: ResourceKind) -> HashMap<String, filter::Target> {
    let r = profile.resource(kind);
    let mut map = HashMap::new();
    let anchor = r.anchor();
    let anchor_target = match anchor.encoding {
        AnchorEncoding::Guid => filter::Target::Binary {
            attrs: anchor.attributes.clone(),
            len: Some(16),
        },
        AnchorEncoding::Base64 => filter::Target::Binary {
            attrs: anchor.attributes.clone(),
            len: None,
        },
        AnchorEncoding::Text => filter::Target::Text {
            attrs: anchor.attributes.clone(),
            substrings: false,
            ordering: false,
        },
    };
    map.insert("id".to_string(), anchor_target.clone());
    map.insert("externalid".to_string(), anchor_target);
    for m in r.mappings() {
        let key = m.target.to_string().to_ascii_lowercase();
        let target = match (&m.target, &m.source) {
            (ProfileTarget::Manager | ProfileTarget::Members, _) => filter::Target::NotFilterable,
            (ProfileTarget::Active, Source::AccountControl(a)) => filter::Target::Flag {
                when_true: format!("(!({a}:1.2.840.113556.1.4.803:=2))"),
                when_false: format!("({a}:1.2.840.113556.1.4.803:=2)"),
                present: "(objectClass=*)".into(),
            },
            (ProfileTarget::Active, Source::Boolean { attribute, negate }) => {
                let on = format!("({attribute}=TRUE)");
                let off = format!("(!({attribute}=TRUE))");
                let (t, f) = if *negate { (off, on) } else { (on, off) };
                filter::Target::Flag {
                    when_true: t,
                    when_false: f,
                    present: "(objectClass=*)".into(),
                }
            }
            (ProfileTarget::Active, Source::Constant(b)) => filter::Target::Flag {
                when_true: if *b {
                    "(objectClass=*)"
                } else {
                    "(!(objectClass=*))"
                }
                .into(),
                when_false: if *b {
                    "(!(objectClass=*))"
                } else {
                    "(objectClass=*)"
                }
                .into(),
                present: "(objectClass=*)".into(),
            },
            (_, source) if source.attributes().len() == 1 => filter::Target::Text {
                attrs: source.attributes().to_vec(),
                substrings: true,
                // Many directory attributes have no ORDERING rule: refuse gt/lt rather
                // than return nothing.
                ordering: false,
            },
            (_, source) if !source.attributes().is_empty() => {
                first_present(source.attributes().to_vec())
            }
            _ => filter::Target::NotFilterable,
        };
        map.insert(key, target);
    }
    map
}

/// A text target read from the first of several attributes that has a value: `p op v`
/// holds when attribute *i* is the first present one and matches, so the LDAP form is
/// `(|(a1 op v)(&(!(a1=*))(a2 op v))...)` — an OR over the attributes alone would match an
/// entry whose SCIM value comes from another attribute. `ne` is the negation of `eq`.
fn first_present(attrs: Vec<String>) -> filter::Target {
    filter::Target::Custom(std::sync::Arc::new(move |test: &filter::Test| {
        use filter::{CompareOp, Filter, Test};
        if matches!(test, Test::Present) {
            let any: String = attrs.iter().map(|a| format!("({a}=*)")).collect();
            return Ok(format!("(|{any})"));
        }
        if let Test::Compare(CompareOp::Ne, v) = test {
            let eq = Test::Compare(CompareOp::Eq, v.clone());
            let positive = first_present(attrs.clone());
            let filter::Target::Custom(f) = positive else {
                unreachable!("first_present builds a custom target")
            };
            return Ok(format!("(!{})", f(&eq)?));
        }
        let mut terms = String::new();
        for (i, a) in attrs.iter().enumerate() {
            let mut single = HashMap::new();
            single.insert(
                "x".to_string(),
                filter::Target::Text {
                    attrs: vec![a.clone()],
                    substrings: true,
                    ordering: false,
                },
            );
            let one = filter::to_ldap(
                &Filter::Attr {
                    path: filter::AttrPath::new("x"),
                    test: test.clone(),
                },
                &single,
            )?;
            let absent: String = attrs[..i].iter().map(|p| format!("(!({p}=*))")).collect();
            if absent.is_empty() {
                terms.push_str(&one);
            } else {
                terms.push_str(&format!("(&{absent}{one})"));
            }
        }
        Ok(format!("(|{terms})"))
    }))
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// The discovery endpoints (pure): `/ServiceProviderConfig`, `/ResourceTypes[/{id}]`,
/// `/Schemas[/{uri}]`. Only GET exists there (RFC 7644 §4), so another method is `405`, not
/// the `403` of a refused write. None: `head` is not a discovery endpoint.
pub fn discovery(method: &str, head: &str, rest: Option<&str>) -> Option<Answer> {
    let all = match head {
        "ServiceProviderConfig" => None,
        "ResourceTypes" => Some(resource_types()),
        "Schemas" => Some(schemas()),
        _ => return None,
    };
    if !method.eq_ignore_ascii_case("GET") {
        return Some(error(
            405,
            None,
            format!("{method} /{head}: discovery endpoints answer GET only"),
        ));
    }
    Some(match (all, rest) {
        (None, None) => (200, service_provider_config()),
        (Some(all), None) => (200, list(all, 1)),
        (Some(all), Some(id)) => {
            let id = percent_decode(id);
            match all.into_iter().find(|r| r["id"] == id.as_str()) {
                Some(r) => (200, r),
                None => error(404, None, format!("/{head}/{id} not found")),
            }
        }
        (None, Some(_)) => error(404, None, format!("no such endpoint `/{head}/...`")),
    })
}

/// `attributes` / `excludedAttributes` applied to one resource (id and schemas always stay).
fn project(mut r: Value, q: &ListQuery) -> Value {
    let Value::Object(m) = &mut r else { return r };
    if !q.attributes.is_empty() {
        let keep: Map<String, Value> = m
            .iter()
            .filter(|(k, _)| {
                let k = k.to_ascii_lowercase();
                k == "id"
                    || k == "schemas"
                    || q.attributes.iter().any(|a| {
                        a == &k
                            || a.starts_with(&format!("{k}."))
                            || (k.starts_with("urn:") && a.starts_with(&k))
                    })
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        *m = keep;
    }
    for ex in &q.excluded {
        if ex != "id" && ex != "schemas" {
            let key = m.keys().find(|k| k.to_ascii_lowercase() == *ex).cloned();
            if let Some(k) = key {
                m.remove(&k);
            }
        }
    }
    r
}

fn list(resources: Vec<Value>, start_index: usize) -> Value {
    json!({
        "schemas": [LIST_RESPONSE],
        "totalResults": resources.len(),
        "startIndex": start_index,
        "itemsPerPage": resources.len(),
        "Resources": resources,
    })
}

fn service_provider_config() -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
        "documentationUri": "https://github.com/idrelay/idrelay/blob/main/docs/protocol.md",
        "patch": {"supported": false},
        "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": true, "maxResults": MAX_COUNT},
        "changePassword": {"supported": false},
        "sort": {"supported": false},
        "etag": {"supported": false},
        "authenticationSchemes": [{
            "type": "oauthbearertoken",
            "name": "Bearer token",
            "description": "the hub's operator token",
        }],
        "meta": {"resourceType": "ServiceProviderConfig", "location": "/ServiceProviderConfig"},
    })
}

fn resource_types() -> Vec<Value> {
    vec![
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
            "id": "User", "name": "User", "endpoint": "/Users",
            "schema": USER_SCHEMA,
            "schemaExtensions": [{"schema": ENTERPRISE_SCHEMA, "required": false}],
            "meta": {"resourceType": "ResourceType", "location": "/ResourceTypes/User"},
        }),
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
            "id": "Group", "name": "Group", "endpoint": "/Groups",
            "schema": GROUP_SCHEMA,
            "meta": {"resourceType": "ResourceType", "location": "/ResourceTypes/Group"},
        }),
    ]
}

fn attr(name: &str, ty: &str, multi: bool) -> Value {
    json!({"name": name, "type": ty, "multiValued": multi, "required": false,
           "caseExact": false, "mutability": "readOnly", "returned": "default", "uniqueness": "none"})
}

fn schemas() -> Vec<Value> {
    let schema = |id: &str, name: &str, attributes: Vec<Value>| {
        json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"], "id": id, "name": name,
               "attributes": attributes, "meta": {"resourceType": "Schema", "location": format!("/Schemas/{id}")}})
    };
    vec![
        schema(
            USER_SCHEMA,
            "User",
            vec![
                attr("userName", "string", false),
                attr("displayName", "string", false),
                attr("title", "string", false),
                attr("active", "boolean", false),
                attr("externalId", "string", false),
                json!({"name": "name", "type": "complex", "multiValued": false, "mutability": "readOnly", "returned": "default",
                       "subAttributes": [attr("givenName", "string", false), attr("familyName", "string", false)]}),
                json!({"name": "emails", "type": "complex", "multiValued": true, "mutability": "readOnly", "returned": "default",
                       "subAttributes": [attr("value", "string", false), attr("type", "string", false), attr("primary", "boolean", false)]}),
                json!({"name": "phoneNumbers", "type": "complex", "multiValued": true, "mutability": "readOnly", "returned": "default",
                       "subAttributes": [attr("value", "string", false), attr("type", "string", false)]}),
            ],
        ),
        schema(
            GROUP_SCHEMA,
            "Group",
            vec![
                attr("displayName", "string", false),
                attr("externalId", "string", false),
                json!({"name": "members", "type": "complex", "multiValued": true, "mutability": "readOnly", "returned": "default",
                       "subAttributes": [attr("value", "string", false), attr("$ref", "reference", false), attr("display", "string", false)]}),
            ],
        ),
        schema(
            ENTERPRISE_SCHEMA,
            "EnterpriseUser",
            vec![
                attr("employeeNumber", "string", false),
                attr("department", "string", false),
                attr("organization", "string", false),
                json!({"name": "manager", "type": "complex", "multiValued": false, "mutability": "readOnly", "returned": "default",
                       "subAttributes": [attr("value", "string", false)]}),
            ],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::profile::ProfileKind;

    #[test]
    fn queries_parse_with_bounds() {
        let q = parse_query("filter=userName%20eq%20%22a%22&startIndex=0&count=5000&attributes=userName,Name.givenName").unwrap();
        assert_eq!(q.filter.as_deref(), Some("userName eq \"a\""));
        assert_eq!(q.start_index, 1);
        assert_eq!(q.count, MAX_COUNT);
        assert_eq!(q.attributes, vec!["username", "name.givenname"]);
        assert!(parse_query("count=abc").unwrap_err().contains("count"));
    }

    #[test]
    fn anchors_become_escaped_ldap_filters() {
        let ad = SyncProfile::default_for(ProfileKind::ActiveDirectory);
        let id =
            crate::base64::encode(&[0x2a, 0x28, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0xff]);
        let f = anchor_filter(&ad, ResourceKind::User, &id).unwrap();
        assert!(f.contains("objectGUID=\\2a\\28\\00\\01"), "{f}");
        assert!(anchor_filter(&ad, ResourceKind::User, "not base64!").is_none());
        assert!(
            anchor_filter(&ad, ResourceKind::User, "AAAA").is_none(),
            "GUIDs are 16 bytes"
        );
        let ol = SyncProfile::default_for(ProfileKind::OpenLdap);
        let f = anchor_filter(&ol, ResourceKind::User, "x*)(uid=*").unwrap();
        assert!(!f.contains("*)("), "{f}");
        assert!(f.contains("x\\2a\\29\\28uid=\\2a"), "{f}");
    }

    #[test]
    fn scim_filters_become_scoped_ldap_filters_from_the_profile() {
        let ol = SyncProfile::default_for(ProfileKind::OpenLdap);
        let f = translate_filter(
            &ol,
            ResourceKind::User,
            r#"userName eq "ann" and title co "eng""#,
        )
        .unwrap();
        // userName is uid, or mail when there is no uid: exactly that, never either.
        assert_eq!(f, "(&(|(uid=ann)(&(!(uid=*))(mail=ann)))(title=*eng*))");
        let f = translate_filter(&ol, ResourceKind::User, r#"userName ne "ann""#).unwrap();
        assert_eq!(f, "(!(|(uid=ann)(&(!(uid=*))(mail=ann))))");
        let e = translate_filter(&ol, ResourceKind::Group, r#"members.value eq "x""#).unwrap_err();
        assert!(e.contains("members"), "{e}");
        assert!(translate_filter(&ol, ResourceKind::User, "userName eq").is_err());
        let ad = SyncProfile::default_for(ProfileKind::ActiveDirectory);
        let f = translate_filter(&ad, ResourceKind::User, "active eq false").unwrap();
        assert_eq!(f, "(userAccountControl:1.2.840.113556.1.4.803:=2)");
        assert!(translate_filter(&ad, ResourceKind::User, r#"id co "ab""#).is_err());
    }

    #[test]
    fn discovery_reads_by_id_and_answers_other_methods_405() {
        let (s, v) = discovery("GET", "ResourceTypes", Some("Group")).unwrap();
        assert_eq!((s, v["endpoint"].as_str()), (200, Some("/Groups")));
        let (s, v) = discovery("GET", "Schemas", Some(USER_SCHEMA)).unwrap();
        assert_eq!((s, v["id"].as_str()), (200, Some(USER_SCHEMA)));
        let encoded = ENTERPRISE_SCHEMA.replace(':', "%3A");
        let (s, v) = discovery("GET", "Schemas", Some(&encoded)).unwrap();
        assert_eq!((s, v["name"].as_str()), (200, Some("EnterpriseUser")));
        assert_eq!(discovery("GET", "Schemas", Some("urn:x")).unwrap().0, 404);
        assert_eq!(
            discovery("GET", "ResourceTypes", Some("user")).unwrap().0,
            404
        );
        assert_eq!(
            discovery("GET", "ServiceProviderConfig", Some("x"))
                .unwrap()
                .0,
            404
        );
        let (s, v) = discovery("GET", "ServiceProviderConfig", None).unwrap();
        assert_eq!((s, v["filter"]["supported"].as_bool()), (200, Some(true)));
        assert_eq!(
            discovery("GET", "ResourceTypes", None).unwrap().1["totalResults"],
            2
        );
        for m in ["POST", "PUT", "PATCH", "DELETE"] {
            for head in ["ServiceProviderConfig", "ResourceTypes", "Schemas"] {
                let (s, v) = discovery(m, head, None).unwrap();
                assert_eq!((s, v["status"].as_str()), (405, Some("405")), "{m} {head}");
            }
        }
        assert!(discovery("GET", "Users", None).is_none());
        assert!(discovery("POST", ".search", None).is_none());
    }

    #[test]
    fn ldap_write_refusals_become_scim_errors_naming_the_dn() {
        use crate::ldap::{ResultCode, WriteError as L};
        let refused = |code: u32| L::Refused {
            op: "add",
            dn: "cn=x,ou=wb,dc=test".into(),
            code: ResultCode(code),
            message: "no".into(),
            applied: 0,
        };
        for (code, status) in [
            (68, 409),
            (50, 403),
            (32, 404),
            (65, 400),
            (53, 500),
            (52, 503),
        ] {
            let e = ldap_write_error(&refused(code));
            assert_eq!(e.status(), status, "{code}: {e}");
            assert!(e.detail().contains("cn=x,ou=wb,dc=test"), "{e}");
        }
        assert!(ldap_write_error(&refused(50))
            .detail()
            .contains("write rights"));
        let link = L::Link {
            error: crate::ldap::LdapError::Worker {
                detail: "gone".into(),
            },
            applied: 1,
        };
        assert_eq!(ldap_write_error(&link).status(), 503);
    }

    #[test]
    fn projection_keeps_id_and_schemas() {
        let r = json!({"id": "1", "schemas": ["s"], "userName": "a", "title": "t", "name": {"givenName": "A"}});
        let q = ListQuery {
            attributes: vec!["name.givenname".into()],
            ..ListQuery::default()
        };
        let p = project(r.clone(), &q);
        assert_eq!(
            p,
            json!({"id": "1", "schemas": ["s"], "name": {"givenName": "A"}})
        );
        let q = ListQuery {
            excluded: vec!["title".into(), "id".into()],
            ..ListQuery::default()
        };
        let p = project(r, &q);
        assert!(p.get("title").is_none() && p.get("id").is_some());
    }
}
