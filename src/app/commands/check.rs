//! `check`: one line per thing checked, OK or the fix; never writes.

use super::run::dirsync_refusal;
use super::*;

struct CheckLines {
    failed: bool,
}

impl CheckLines {
    fn ok(&mut self, name: &str, detail: impl AsRef<str>) {
        crate::outln!("{name:<10} OK    {}", detail.as_ref());
    }
    /// Works, but not as an administrator would assume: said, without failing `check`.
    fn warn(&mut self, name: &str, detail: impl AsRef<str>) {
        crate::outln!("{name:<10} WARN  {}", detail.as_ref());
    }
    fn fail(&mut self, name: &str, detail: impl AsRef<str>) {
        self.failed = true;
        crate::outln!("{name:<10} FAIL  {}", detail.as_ref());
    }
}

/// `check`: one line per check; exit 0 only when all pass.
pub fn check(c: &Config) -> i32 {
    smol::block_on(check_async(c))
}

async fn check_async(c: &Config) -> i32 {
    let mut out = CheckLines { failed: false };
    out.ok(
        "config",
        format!("{} (agent {})", c.path.display(), c.agent.id),
    );
    for (_, line) in crate::app::config::plaintext_warnings(c) {
        out.warn("plaintext", line);
    }

    match state_dir_writable(&c.agent.state_dir) {
        Ok(()) => out.ok("state_dir", c.agent.state_dir.display().to_string()),
        Err(e) => out.fail("state_dir", e),
    }

    // The profile's member-removal dialect, once the profile is known.
    let mut removal = None;
    match open_source(c).await {
        Err(e) => out.fail("ldap", e),
        Ok(src) => {
            removal = Some(src.profile.resource(ResourceKind::Group).member_removal());
            let tls = src.dir.tls_facts().await;
            out.ok(
                "ldap",
                format!(
                    "{} bound as {}; {}",
                    c.directory.url,
                    c.directory.bind_dn,
                    tls.unwrap_or_else(|| "no TLS (plain LDAP)".into())
                ),
            );
            let how = if c.directory.kind == KindSetting::Auto {
                "detected from the rootDSE"
            } else {
                "set by directory.kind"
            };
            out.ok("directory", format!("{} ({how})", src.kind));
            check_feed(c, &src, &mut out).await;
            let local = local_profile_words(c);
            match &src.cloud {
                CloudProfile::None => out.ok(
                    "profile",
                    format!("local: {local}; {}", cloud_policy_words(c)),
                ),
                CloudProfile::InForce { since, .. } => {
                    out.ok(
                        "profile",
                        format!(
                        "cloud profile in force since {} ({}), on top of the local one: {local}",
                        utc(*since),
                        c.agent.state_dir.join(crate::relay::remote::CLOUD_PROFILE).display()
                    ),
                    )
                }
                CloudProfile::Unused { reason, refused } => {
                    let line = format!(
                        "local: {local}; the stored cloud profile {} is not used ({reason}); `run` removes it",
                        c.agent.state_dir.join(crate::relay::remote::CLOUD_PROFILE).display()
                    );
                    if *refused {
                        out.fail("profile", line)
                    } else {
                        out.ok("profile", line)
                    }
                }
            }
            let (uf, gf) = filters(c, &src.profile);
            // With scope.groups, counts are of the objects the groups allow.
            let allowed = match group_scope(c, &src.profile) {
                None => Ok(None),
                Some(g) => crate::sync::scope_groups::allowed_set(&src.dir, &g, &c.agent.state_dir)
                    .await
                    .map(Some),
            };
            let in_groups = match &allowed {
                Ok(Some(set)) => {
                    out.ok(
                        "scope.groups",
                        format!(
                            "{} groups{}: {set}",
                            c.scope.groups.len(),
                            if c.scope.nested { ", nested" } else { "" }
                        ),
                    );
                    format!(" (members of {} scope.groups)", c.scope.groups.len())
                }
                Ok(None) => String::new(),
                Err(e) => {
                    out.fail(
                        "scope.groups",
                        format!("{e}; sync stops before deciding any delete"),
                    );
                    " (scope.groups unreadable: counts ignore it)".to_string()
                }
            };
            let allowed = allowed.ok().flatten();
            for base in &c.scope.include {
                match count_scope(&src.dir, base, &uf, &gf, allowed.as_ref()).await {
                    Ok((u, g)) => out.ok(
                        "scope",
                        format!("{base}: {u} users, {g} groups in scope{in_groups}"),
                    ),
                    Err(e) => out.fail("scope", format!("{base}: {e}")),
                }
            }
            check_rights(c, &src, &mut out).await;
        }
    }

    match scim_client(c) {
        Err(e) => out.fail("scim", e),
        Ok((http, scim)) => {
            let url = c.scim.url.parse().expect("validated by scim_client");
            match http.tls_facts(&url).await {
                Ok(Some(f)) => out.ok(
                    "scim tls",
                    format!(
                        "{}, {}, certificate chain of {} verified against {}",
                        f.protocol, f.cipher_suite, f.peer_certificates, f.trust_anchors
                    ),
                ),
                Ok(None) => out.ok(
                    "scim tls",
                    "plain http: no TLS (use https:// outside a lab)",
                ),
                Err(e) => out.fail("scim tls", e.to_string()),
            }
            match scim.service_provider_config().await {
                Ok(spc) => out.ok(
                    "scim",
                    format!(
                        "{}: ServiceProviderConfig: patch {}, bulk {}, filter {}",
                        c.scim.url,
                        yes_no(spc.patch),
                        spc.bulk
                            .map(|b| format!("up to {} operations", b.max_operations))
                            .unwrap_or_else(|| "no".into()),
                        yes_no(spc.filter)
                    ),
                ),
                Err(e) => out.fail("scim", e.to_string()),
            }
            match scim.authenticate().await {
                Ok(None) => {}
                Ok(Some((url, life))) => out.ok("scim oauth", grant_line(&url, life)),
                Err(e) => out.fail("scim oauth", e.to_string()),
            }
            if let Some(r) = &c.relay {
                match hub_credential(r) {
                    Err(e) => out.fail("relay oauth", e),
                    Ok(cred) => match cred.grant().await {
                        None => {}
                        Some(Ok((url, life))) => out.ok("relay oauth", grant_line(&url, life)),
                        Some(Err(e)) => out.fail("relay oauth", e.to_string()),
                    },
                }
            }
            match scim.learn_schema().await {
                Ok(Some(schema)) => out.ok("scim schema", schema_line(&schema)),
                Ok(None) => out.ok(
                    "scim schema",
                    "no /Schemas to go by: bodies are sent as the profile maps them",
                ),
                Err(e) => out.warn(
                    "scim schema",
                    format!("{e}: bodies are sent as the profile maps them"),
                ),
            }
            // Discovery endpoints often answer without a token; a filtered read does not.
            match scim.probe_lookups().await {
                Ok(probe) => {
                    out.ok("scim auth", "bearer token accepted (GET /Users)");
                    match probe {
                        p @ (LookupProbe::Verified { .. } | LookupProbe::Unverified) => {
                            out.ok("scim lookup", p.to_string())
                        }
                        p => out.warn("scim lookup", p.to_string()),
                    }
                }
                Err(e) => out.fail("scim auth", e.to_string()),
            }
            match scim.probe_member_key().await {
                Ok(p @ crate::scim::member_probe::MemberKeyProbe::Unknown { .. }) => {
                    out.warn("scim members", p.to_string())
                }
                Ok(p) => out.ok("scim members", p.to_string()),
                Err(e) => out.warn("scim members", format!("reading a group: {e}")),
            }
            if let Some(m) = removal {
                out.ok("scim removal", removal_line(m));
            }
            if let Some(said) = crate::sync::kept::last_pass_sentence(&c.agent.state_dir) {
                out.warn(
                    "scim kept",
                    format!(
                        "{said}; unmap what it does not keep in the profile, or ask the service to keep it"
                    ),
                );
            }
        }
    }
    if out.failed {
        exit::FAILURE
    } else {
        exit::OK
    }
}

/// What `check` says of an endpoint's `/Schemas`: which sub-attributes the mapping can
/// produce that it will leave out, and which lists a create sends empty.
fn schema_line(schema: &crate::scim::schema::EndpointSchema) -> String {
    let mut said = Vec::new();
    for (kind, attribute, subs) in [
        (
            ResourceKind::User,
            "emails",
            &["value", "type", "primary"][..],
        ),
        (
            ResourceKind::User,
            "phoneNumbers",
            &["value", "type", "primary"][..],
        ),
        (
            ResourceKind::User,
            "addresses",
            &[
                "formatted",
                "streetAddress",
                "locality",
                "region",
                "postalCode",
                "country",
                "type",
                "primary",
            ][..],
        ),
        (
            ResourceKind::User,
            "name",
            &[
                "formatted",
                "familyName",
                "givenName",
                "middleName",
                "honorificPrefix",
                "honorificSuffix",
            ][..],
        ),
        (ResourceKind::Group, "members", &["value"][..]),
    ] {
        let left = schema.undeclared(kind, attribute, subs);
        if !left.is_empty() {
            said.push(format!("{attribute} without {}", left.join(", ")));
        }
    }
    for list in schema.required_lists(ResourceKind::Group) {
        said.push(format!(
            "groups created with an empty {list} (required), members then added by PATCH"
        ));
    }
    for list in schema.required_lists(ResourceKind::User) {
        said.push(format!("users created with an empty {list} (required)"));
    }
    if said.is_empty() {
        "from /Schemas: bodies go as the profile maps them".into()
    } else {
        format!("from /Schemas: {}", said.join("; "))
    }
}

/// The bind account's LDAP rights and what they rule out (README "Least privilege"):
/// read of the scope and of each object's anchor (export, every feed); on AD,
/// "Replicating Directory Changes" (DirSync) and the write rights the account holds on
/// the scope (allowedAttributesEffective / allowedChildClassesEffective): export needs
/// none, so any is reported as more than needed.
/// The change feed's prerequisites on this directory, one line each: what `run` will use,
/// and what to change where it would miss changes. Active Directory's (DirSync rights) is a
/// `rights` line.
async fn check_feed(c: &Config, src: &Source, out: &mut CheckLines) {
    use crate::app::config::FeedKind;
    if src.kind == DirectoryKind::ActiveDirectory {
        return;
    }
    let syncrepl = ldap::supports_control(&src.dse, ldap::SYNC_REQUEST_OID);
    let every = c.sync.poll_interval.as_secs();
    let polling = format!(
        "`run` polls modifyTimestamp every {every} s and sees deletes only at the full pass"
    );
    match (syncrepl, c.sync.feed) {
        (false, FeedKind::Syncrepl) => out.fail(
            "feed",
            format!(
                "sync.feed = \"syncrepl\" but the server does not offer syncrepl (RFC 4533): {}",
                syncrepl_fix(src.kind)
            ),
        ),
        (false, FeedKind::Auto) => out.warn(
            "feed",
            format!(
                "no syncrepl (RFC 4533) offered: {polling}; {}",
                syncrepl_fix(src.kind)
            ),
        ),
        (true, FeedKind::Auto | FeedKind::Syncrepl) => out.ok(
            "feed",
            "syncrepl (RFC 4533) offered: `run` follows changes as they happen",
        ),
        (_, other) => out.ok("feed", format!("sync.feed = \"{}\"", other.as_str())),
    }
    if src.kind != DirectoryKind::Ds389 || !syncrepl {
        return;
    }
    // 389-DS resumes a feed from its cookie through the Retro Changelog, which must name the
    // entry each change is about (targetUniqueId); without it every restart loses the changes
    // made while the agent was stopped.
    const RETRO_FIX: &str = "add `nsslapd-attribute: nsuniqueid:targetUniqueId` to \
        cn=Retro Changelog Plugin,cn=plugins,cn=config and restart the server";
    let Some(changelog) = src.dse.strs("changeLog").next().map(str::to_owned) else {
        out.fail(
            "feed",
            format!(
                "389-DS Retro Changelog is off: changes made while idrelay is stopped are lost on restart; \
                 enable it (dsconf INSTANCE plugin retro-changelog enable) and {RETRO_FIX}"
            ),
        );
        return;
    };
    let last = src.dse.strs("lastchangenumber").next().map(str::to_owned);
    let read = match &last {
        Some(n) => {
            src.dir
                .read(
                    &format!("changenumber={n},{changelog}"),
                    &["targetUniqueId"],
                )
                .await
        }
        None => Ok(None),
    };
    match read {
        Ok(Some(e)) if e.has("targetUniqueId") => out.ok(
            "feed",
            "389-DS Retro Changelog keeps targetUniqueId: changes made while idrelay is stopped arrive after a restart",
        ),
        Ok(Some(_)) => out.fail(
            "feed",
            format!(
                "389-DS Retro Changelog does not keep targetUniqueId: changes made while idrelay is stopped are lost on restart; {RETRO_FIX}"
            ),
        ),
        Ok(None) | Err(_) => out.warn(
            "feed",
            format!(
                "389-DS Retro Changelog ({changelog}) is not readable by {}: cannot verify that it keeps \
                 targetUniqueId (without it changes made while idrelay is stopped are lost on restart); \
                 if unsure, {RETRO_FIX}",
                c.directory.bind_dn
            ),
        ),
    }
}

/// How to get syncrepl on a directory of this kind.
fn syncrepl_fix(kind: DirectoryKind) -> &'static str {
    match kind {
        DirectoryKind::OpenLdap => {
            "add the syncprov overlay to the database (olcOverlay=syncprov, with syncprov-sessionlog)"
        }
        DirectoryKind::Ds389 => {
            "enable the Content Synchronization and Retro Changelog plugins \
             (dsconf INSTANCE plugin contentsync enable; dsconf INSTANCE plugin retro-changelog enable) and restart the server"
        }
        _ => "the server's documentation names the RFC 4533 provider to enable",
    }
}

async fn check_rights(c: &Config, src: &Source, out: &mut CheckLines) {
    use crate::app::config::FeedKind;
    let (uf, _) = filters(c, &src.profile);
    let anchor = &src.profile.resource(ResourceKind::User).anchor().attributes;
    let attrs = src.profile.identity_attributes(ResourceKind::User);
    let attrs: Vec<&str> = attrs.iter().map(String::as_str).collect();
    for base in &c.scope.include {
        let mut s = src.dir.search(base, Scope::Subtree, &uf, &attrs);
        match s.next().await {
            None => out.ok(
                "rights",
                format!("read: {base}: readable, no user in scope to test attributes on"),
            ),
            Some(Err(e)) => out.fail(
                "rights",
                format!("read: {base}: {e}: export is ruled out (grant read on the scope)"),
            ),
            Some(Ok(e)) => match anchor.iter().find(|a| e.has(a)) {
                Some(a) => {
                    let readable = attrs.iter().filter(|a| e.has(a)).count();
                    out.ok(
                        "rights",
                        format!(
                            "read: {}: anchor {a} and {readable} of {} mapped attributes readable",
                            e.dn,
                            attrs.len()
                        ),
                    )
                }
                None => out.fail(
                    "rights",
                    format!(
                        "read: {}: the anchor ({}) is not readable: export is ruled out (grant read on it)",
                        e.dn,
                        anchor.join(" or ")
                    ),
                ),
            },
        }
    }
    if src.kind != DirectoryKind::ActiveDirectory {
        return;
    }
    match dirsync_refusal(c, src).await {
        None => out.ok(
            "rights",
            "Replicating Directory Changes: yes (DirSync usable; sync.feed = auto uses it)",
        ),
        Some(e) if e.is_missing_rights() && c.sync.feed == FeedKind::DirSync => out.fail(
            "rights",
            format!("Replicating Directory Changes: no ({e}): sync.feed = \"dirsync\" is ruled out"),
        ),
        Some(e) if e.is_missing_rights() => out.ok(
            "rights",
            "Replicating Directory Changes: no: DirSync ruled out; `run` follows changes by uSNChanged polling (read only)",
        ),
        Some(e) => out.fail("rights", format!("DirSync probe failed: {e}")),
    }
    for base in &c.scope.include {
        let read = src
            .dir
            .read(
                base,
                &["allowedAttributesEffective", "allowedChildClassesEffective"],
            )
            .await;
        match read {
            Ok(Some(e)) => {
                let attrs = e.bytes("allowedAttributesEffective").len();
                let classes = e.bytes("allowedChildClassesEffective").len();
                if attrs == 0 && classes == 0 {
                    out.ok(
                        "rights",
                        format!("write: none on {base} (export needs none)"),
                    );
                } else {
                    out.ok(
                        "rights",
                        format!(
                            "write: may change {attrs} attributes of and create {classes} object classes under {base}: more than export needs (read only)"
                        ),
                    );
                }
            }
            Ok(None) => out.fail("rights", format!("write: {base}: no such object")),
            Err(e) => out.ok("rights", format!("write: {base}: not determined ({e})")),
        }
    }
    check_writeback_rights(c, src, out).await;
}

/// With `[writeback]`, whether the bind account may do what the policy allows inside
/// each allowed OU (AD: `allowedChildClassesEffective` on the OU for creating groups,
/// `allowedAttributesEffective` on a group below it for member and description).
/// Other directories publish no effective rights: said, not failed.
async fn check_writeback_rights(c: &Config, src: &Source, out: &mut CheckLines) {
    let w = &c.writeback;
    if !w.allows_any() {
        return;
    }
    if src.kind != DirectoryKind::ActiveDirectory {
        out.ok(
            "rights",
            format!(
                "writeback: {} publishes no effective rights; a refused write is answered with the directory's error",
                src.kind
            ),
        );
        return;
    }
    let has = |e: &ldap::Entry, attr: &str, want: &str| {
        e.strs(attr).any(|v| v.eq_ignore_ascii_case(want))
    };
    for ou in &w.allowed_ous {
        let mut missing: Vec<&str> = Vec::new();
        let mut note = String::new();
        if w.groups && w.create {
            match src.dir.read(ou, &["allowedChildClassesEffective"]).await {
                Ok(Some(e)) if has(&e, "allowedChildClassesEffective", "group") => {}
                Ok(Some(_)) => missing.push("create group objects"),
                Ok(None) => {
                    out.fail("rights", format!("writeback: {ou}: no such object"));
                    continue;
                }
                Err(e) => {
                    missing.push("read the OU");
                    note = format!("; {e}");
                }
            }
        }
        if w.groups && w.update {
            let wanted: Vec<&str> = w
                .group_attributes
                .iter()
                .filter_map(|a| match a.as_str() {
                    "members" => Some("member"),
                    "description" => Some("description"),
                    _ => None,
                })
                .collect();
            let mut s = src.dir.search(
                ou,
                Scope::Subtree,
                "(objectClass=group)",
                &["allowedAttributesEffective"],
            );
            match s.next().await {
                Some(Ok(g)) => {
                    for a in wanted {
                        if !has(&g, "allowedAttributesEffective", a) {
                            missing.push(if a == "member" {
                                "write member of groups"
                            } else {
                                "write description of groups"
                            });
                        }
                    }
                }
                Some(Err(e)) => note = format!("; group attributes not determined ({e})"),
                None => note = "; no group below it yet to test attribute writes on".into(),
            }
        }
        if missing.is_empty() {
            out.ok(
                "rights",
                format!("writeback: {ou}: the allowed writes are permitted{note}"),
            );
        } else {
            out.fail(
                "rights",
                format!(
                    "writeback: {ou}: the account cannot {}: those writebacks are ruled out{note}",
                    missing.join(", ")
                ),
            );
        }
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn state_dir_writable(dir: &Path) -> Result<(), String> {
    crate::state_dir::prepare(dir).map_err(|e| e.to_string())?;
    let probe = dir.join(".idrelay-check");
    crate::state_dir::replace(&probe, b"ok", crate::state_dir::Durability::Rename)
        .map_err(|e| format!("agent.state_dir {}: not writable: {e}", dir.display()))?;
    let _ = fs::remove_file(probe);
    Ok(())
}

async fn count_scope(
    dir: &Directory,
    base: &str,
    uf: &str,
    gf: &str,
    allowed: Option<&AllowedSet>,
) -> Result<(u64, u64), String> {
    let mut counts = [0u64; 2];
    for (i, f) in [uf, gf].into_iter().enumerate() {
        let mut s = dir.search(base, Scope::Subtree, f, &["1.1"]);
        while let Some(e) = s.next().await {
            let e = e.map_err(|e| e.to_string())?;
            if let Some(set) = allowed {
                if !set.contains(&e.dn).map_err(|e| e.to_string())? {
                    continue;
                }
            }
            counts[i] += 1;
        }
    }
    Ok((counts[0], counts[1]))
}

// ---------------------------------------------------------------------------------------
// sync --once
