//! `preview DN`: what a pass would send for one object, and what it leaves out.

use super::*;

/// References are resolved ahead of mapping (the resolver itself cannot do I/O).
struct TableResolver(HashMap<String, Reference>);

impl Resolver for TableResolver {
    fn resolve(&self, target: &str) -> Reference {
        self.0
            .get(&dn::normalize(target))
            .cloned()
            .unwrap_or(Reference::OutOfScope)
    }
}

/// How many `member` / `manager` values preview resolves before it stops.
const PREVIEW_REFERENCES: usize = 1000;

/// `preview DN`.
pub fn preview(c: &Config, target: &str) -> i32 {
    smol::block_on(async {
        match preview_async(c, target).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e}");
                exit::FAILURE
            }
        }
    })
}

async fn preview_async(c: &Config, target: &str) -> Result<i32, String> {
    let src = open_source(c).await?;
    let attrs = src.profile.object_attributes();
    let attr_refs: Vec<&str> = attrs.iter().map(String::as_str).collect();
    let entry = src
        .dir
        .read(target, &attr_refs)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{target}: no such object in the directory"))?;
    crate::outln!("object:    {}", entry.dn);
    crate::outln!("directory: {}", src.kind);
    let Some(kind) = src.profile.classify(&entry) else {
        crate::outln!(
            "in scope:  no: its objectClass is neither a user nor a group of the {} profile",
            src.kind
        );
        return Ok(exit::OK);
    };
    let (uf, gf) = filters(c, &src.profile);
    let allowed = match group_scope(c, &src.profile) {
        None => None,
        Some(g) => Some(
            crate::sync::scope_groups::allowed_set(&src.dir, &g, &c.agent.state_dir)
                .await
                .map_err(|e| e.to_string())?,
        ),
    };
    let allowed = allowed.as_ref();
    match in_scope(&src.dir, c, &entry.dn, kind, &uf, &gf, allowed).await? {
        Ok(()) => crate::outln!("in scope:  yes, as a {}", kind.word()),
        Err(why) => crate::outln!("in scope:  no: {why}"),
    }

    let index = load_index(c)?;
    let mut table = HashMap::new();
    let mut refs: Vec<String> = Vec::new();
    let mut named_by: HashMap<String, &str> = HashMap::new();
    for a in ["manager", "member", "uniqueMember"] {
        for r in entry.strs(a) {
            named_by.entry(dn::normalize(r)).or_insert(a);
            refs.push(r.to_string());
        }
    }
    if refs.len() > PREVIEW_REFERENCES {
        crate::outln!(
            "note:      {} references; resolving the first {PREVIEW_REFERENCES} only",
            refs.len()
        );
        refs.truncate(PREVIEW_REFERENCES);
    }
    let identity = merge_attributes(
        src.profile.identity_attributes(ResourceKind::User),
        src.profile.identity_attributes(ResourceKind::Group),
    );
    let identity: Vec<&str> = identity.iter().map(String::as_str).collect();
    let mut left_out: Vec<String> = Vec::new();
    for r in refs {
        let reference =
            resolve_for_preview(&src, c, &index, &r, &identity, (&uf, &gf), allowed).await?;
        if matches!(reference, Reference::OutOfScope) {
            let attr = named_by
                .get(&dn::normalize(&r))
                .copied()
                .unwrap_or("member");
            left_out.push(format!("{attr} {r}"));
        }
        table.insert(dn::normalize(&r), reference);
    }
    if !left_out.is_empty() {
        crate::outln!(
            "left out: {} references out of the sync scope (not in scope.include or scope.groups, not matching the filters, or gone): {}",
            left_out.len(),
            left_out.join("; ")
        );
    }
    let mapped = mapping::map_entry(&entry, kind, &src.profile, &TableResolver(table))
        .map_err(|e| e.to_string())?;
    crate::outln!("externalId: {}", mapped.external_id);
    if !mapped.pending.is_empty() {
        crate::outln!(
            "pending:   {} references are in scope but not provisioned yet (left out until they are): {}",
            mapped.pending.len(),
            mapped.pending.join("; ")
        );
    }
    crate::outln!("SCIM representation:");
    crate::outln!("{}", pretty(&mapped.resource));

    let (_, scim) = scim_client(c)?;
    // What idrelay created it knows by id: read that resource itself. A lookup by
    // externalId answers only for the rest (and some endpoints' filters match nothing).
    let known = index.scim_id(kind, &mapped.external_id);
    let held = match &known {
        Some(id) => scim.get(kind, id).await.map(|r| r.map(|v| (v, true))),
        None => scim
            .find_by_external_id(kind, &mapped.external_id)
            .await
            .map(|r| r.map(|v| (v, false))),
    };
    match held {
        Ok(Some((held, by_id))) => {
            if by_id {
                crate::outln!(
                    "endpoint holds (the {} idrelay created, id {}):",
                    kind.word(),
                    known.as_deref().unwrap_or_default()
                );
            } else {
                crate::outln!("endpoint holds:");
            }
            crate::outln!("{}", pretty(&held));
            print_difference(&mapped.resource, &held);
        }
        Ok(None) => match &known {
            Some(id) => crate::outln!(
                "endpoint holds: nothing at id {id}, which idrelay created for this object: it was deleted \
                 there (a sync would look it up again and create it if it is gone)"
            ),
            None => crate::outln!(
                "endpoint holds: nothing with externalId {} (a sync would create it)",
                mapped.external_id
            ),
        },
        Err(e) => crate::outln!("endpoint: cannot look it up: {e}"),
    }
    if let Some(said) = crate::sync::kept::last_pass_sentence(&c.agent.state_dir) {
        crate::outln!("note:      {said}");
    }
    Ok(exit::OK)
}

/// Prints, attribute by attribute, where what a sync sends differs from what the endpoint
/// holds (the comparison of [`crate::scim::readback`]: case, decorations and what the
/// endpoint adds are no difference).
/// What a sync would change at the endpoint, attribute by attribute, as `sync --dry-run`
/// shows it ([`crate::sync::diff`]: values shortened, secrets never shown).
fn print_difference(sends: &serde_json::Value, held: &serde_json::Value) {
    let changes = crate::sync::diff::changes(Some(held), sends, false);
    if changes.is_empty() {
        crate::outln!("difference: none: the endpoint holds what a sync sends");
        return;
    }
    crate::outln!("difference (endpoint -> a sync sends):");
    for c in changes {
        crate::outln!("  {}: {} -> {}", c.path, c.old, c.new);
    }
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// Ok(Ok) in scope; Ok(Err(why)) not; Err: the directory could not say.
async fn in_scope(
    dir: &Directory,
    c: &Config,
    target: &str,
    kind: ResourceKind,
    uf: &str,
    gf: &str,
    allowed: Option<&AllowedSet>,
) -> Result<Result<(), String>, String> {
    if !dn::under_any(target, &c.scope.include) {
        return Ok(Err(format!(
            "not under any scope.include subtree ({})",
            c.scope.include.join("; ")
        )));
    }
    let filter = match kind {
        ResourceKind::User => uf,
        ResourceKind::Group => gf,
    };
    let found = dir
        .matches(target, filter)
        .await
        .map_err(|e| e.to_string())?;
    if !found {
        return Ok(Err(format!(
            "does not match the {} filter {filter}",
            kind.word()
        )));
    }
    if let Some(set) = allowed {
        if !set
            .contains(target)
            .map_err(|e| format!("scope.groups: {e}"))?
        {
            return Ok(Err("not a member of scope.groups".into()));
        }
    }
    Ok(Ok(()))
}

/// `attrs`: the identity attributes of both kinds (no member lists).
async fn resolve_for_preview(
    src: &Source,
    c: &Config,
    index: &AnchorIndex,
    target: &str,
    attrs: &[&str],
    (uf, gf): (&str, &str),
    allowed: Option<&AllowedSet>,
) -> Result<Reference, String> {
    let Some(e) = src
        .dir
        .read(target, attrs)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(Reference::OutOfScope);
    };
    let Some(kind) = src.profile.classify(&e) else {
        return Ok(Reference::OutOfScope);
    };
    if in_scope(&src.dir, c, &e.dn, kind, uf, gf, allowed)
        .await?
        .is_err()
    {
        return Ok(Reference::OutOfScope);
    }
    let Ok(x) = mapping::anchor_of(&e, kind, &src.profile) else {
        return Ok(Reference::OutOfScope);
    };
    Ok(match index.get(kind, &x) {
        Some(a) => Reference::provisioned(kind, a.scim_id.clone()),
        None => Reference::Pending,
    })
}

// ---------------------------------------------------------------------------------------
// run, status
