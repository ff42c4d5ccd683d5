//! The commands behind the CLI: `check`, `sync --once`, `preview`. Each returns an exit
//! code (see [`crate::cli::exit`]) after printing its own results; errors are printed once
//! here, with their cause, and never carry a secret.

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::Path;

use crate::cli::exit;
use crate::config::{Config, KindSetting, ScimAuth};
use crate::ldap::{self, Directory, DirectoryConfig, DirectoryKind, Scope};
use crate::relay::http::{HttpClient, HttpConfig};
use crate::scim::client::{Credential, LookupProbe, ScimClient, ScimConfig};
use crate::scim::mapping::{self, Reference, Resolver};
use crate::scim::oauth::TokenSource;
use crate::scim::profile::{merge_attributes, ProfileKind, SyncProfile};
use crate::scim::profile_policy::{admit, password_like_in, ProfilePolicy, ProfileRefusal};
use crate::scim::token_file::FileToken;
use crate::scim::ResourceKind;
use crate::signals::{Control, Request};
use crate::sync::anchors::AnchorIndex;
use crate::sync::deletes::{DeleteGate, Policy};
use crate::sync::dn;
use crate::sync::pass::{full_pass, PassSettings};
use crate::sync::provision::ProvisionMode;
use crate::sync::scope_groups::{AllowedSet, GroupScope};

/// The version line: crate version, git commit and target, from build.rs.
pub fn version_line() -> String {
    format!(
        "idrelay {} (commit {}, {})",
        env!("CARGO_PKG_VERSION"),
        env!("IDRELAY_GIT_COMMIT"),
        env!("IDRELAY_TARGET")
    )
}

fn directory_config(c: &Config) -> DirectoryConfig {
    DirectoryConfig {
        url: c.directory.url.clone(),
        starttls: c.directory.starttls,
        ca_file: c.directory.ca_file.clone(),
        bind_dn: c.directory.bind_dn.clone(),
        password: c.directory.password.clone(),
        timeout: c.directory.timeout,
        page_size: c.directory.page_size,
        range_step: None,
    }
}

/// The HTTP client and the SCIM client over it (the HTTP one also answers TLS questions).
/// An HTTP config with the proxy, pins and client certificate of a `[scim]` / `[relay]`
/// table applied.
fn with_transport(mut h: HttpConfig, t: &crate::config::Transport) -> HttpConfig {
    use crate::config::ProxySetting;
    match &t.proxy {
        ProxySetting::Environment => {
            h.proxy_env = Some(crate::relay::proxy::ProxyEnv::from_process())
        }
        ProxySetting::Direct => {}
        ProxySetting::Explicit(p) => h.proxy = Some(p.clone()),
    }
    h.pin_sha256 = t.pins.clone();
    h.client_cert = t.client_cert.clone();
    h
}

fn scim_client(c: &Config) -> Result<(HttpClient, ScimClient), String> {
    let http = HttpClient::new(with_transport(
        HttpConfig {
            ca_file: c.scim.ca_file.clone(),
            connect_timeout: c.scim.timeout.min(std::time::Duration::from_secs(10)),
            request_timeout: c.scim.timeout,
            max_idle_per_host: c.sync.concurrency,
            ..HttpConfig::default()
        },
        &c.scim.transport,
    ))
    .map_err(|e| format!("scim: {e}"))?;
    let base_url = c
        .scim
        .url
        .parse()
        .map_err(|e| format!("config {}: `scim.url`: {e}", c.path.display()))?;
    let credential = match &c.scim.auth {
        ScimAuth::Bearer(t) => {
            // Read again, with the checks of a config load, when the endpoint answers 401:
            // the operator may have rotated the token (docs: packaging/README.md).
            let path = c.path.clone();
            Credential::BearerFile(std::sync::Arc::new(FileToken::new(
                t.clone(),
                Box::new(move || match Config::load(&path) {
                    Ok(Config {
                        scim:
                            crate::config::ScimSettings {
                                auth: ScimAuth::Bearer(t),
                                ..
                            },
                        ..
                    }) => Ok(t),
                    Ok(_) => Err("the config no longer names a static token".into()),
                    Err(e) => Err(e.to_string()),
                }),
            )))
        }
        ScimAuth::ClientCredentials(cc) => {
            // The token endpoint is another service: the [scim] CA and proxy, not its pins.
            let token_http = HttpClient::new(with_transport(
                HttpConfig {
                    ca_file: c.scim.ca_file.clone(),
                    connect_timeout: c.scim.timeout.min(std::time::Duration::from_secs(10)),
                    request_timeout: c.scim.timeout,
                    max_idle_per_host: 1,
                    ..HttpConfig::default()
                },
                &crate::config::Transport {
                    pins: Vec::new(),
                    client_cert: None,
                    ..c.scim.transport.clone()
                },
            ))
            .map_err(|e| format!("scim.token_url: {e}"))?;
            Credential::OAuth(std::sync::Arc::new(TokenSource::new(
                token_http,
                cc.clone(),
            )))
        }
    };
    let mut cfg = ScimConfig::with_credential(base_url, credential);
    cfg.fit_to_schemas = true;
    cfg.max_attempts = c.sync.max_attempts;
    Ok((http.clone(), ScimClient::new(http, cfg)))
}

fn profile_kind(k: DirectoryKind) -> ProfileKind {
    match k {
        DirectoryKind::ActiveDirectory => ProfileKind::ActiveDirectory,
        DirectoryKind::OpenLdap => ProfileKind::OpenLdap,
        // 389-DS: nsUniqueId first (what its syncrepl names entries by), then entryUUID.
        DirectoryKind::Ds389 | DirectoryKind::Generic => ProfileKind::Generic,
    }
}

/// The kind the config names, or the detected one.
fn effective_kind(setting: KindSetting, detected: DirectoryKind) -> DirectoryKind {
    match setting {
        KindSetting::Auto => detected,
        KindSetting::ActiveDirectory => DirectoryKind::ActiveDirectory,
        KindSetting::OpenLdap => DirectoryKind::OpenLdap,
        KindSetting::Ds389 => DirectoryKind::Ds389,
        KindSetting::Generic => DirectoryKind::Generic,
    }
}

/// The branch's policy for profiles the cloud pushes (none accepted without `[relay]`).
fn profile_policy(c: &Config) -> ProfilePolicy {
    c.relay
        .as_ref()
        .map(|r| r.profiles.clone())
        .unwrap_or_default()
}

/// The profile the cloud pushed, as the agent found it in the state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CloudProfile {
    /// None stored.
    None,
    /// Stored and admitted by local policy: in force (on top of the local profile).
    InForce {
        /// Its text.
        text: String,
        /// When it was stored.
        since: std::time::SystemTime,
    },
    /// Stored but not used: the reason (accept_profiles off, or refused by local policy).
    Unused {
        /// Why.
        reason: String,
        /// Whether local policy refused it (rather than `relay.accept_profiles` being off).
        refused: bool,
    },
}

/// The profiles of one life of the agent.
struct Profiles {
    /// Built-in default plus `sync.profile_file`: what writeback resolves names with.
    local: SyncProfile,
    /// The local profile with an admitted cloud profile on top: what is read and exported.
    effective: SyncProfile,
    /// The cloud profile's state.
    cloud: CloudProfile,
}

/// The local profile (built-in default and `sync.profile_file`; never a password-like
/// attribute), and a stored cloud profile checked again against local policy (it is used
/// only while `relay.accept_profiles` is on and policy still admits it).
fn load_profile(c: &Config, kind: DirectoryKind) -> Result<Profiles, String> {
    let p = SyncProfile::default_for(profile_kind(kind));
    let local = match &c.sync.profile_file {
        Some(path) => p
            .with_overrides_from_file(path)
            .map_err(|e| format!("sync.profile_file: {e}"))?,
        None => p,
    };
    if let Some((key, attribute)) = password_like_in(&local) {
        return Err(format!(
            "sync.profile_file: profile key {key}: `{attribute}` is a password-like attribute, which idrelay never reads (built-in deny-list)"
        ));
    }
    let path = c.agent.state_dir.join(crate::remote::CLOUD_PROFILE);
    let Ok(text) = crate::state_dir::read_to_string(&path) else {
        return Ok(Profiles {
            effective: local.clone(),
            local,
            cloud: CloudProfile::None,
        });
    };
    let policy = profile_policy(c);
    let (effective, cloud) = match admit(&policy, &local, &text) {
        Ok(merged) => (
            merged,
            CloudProfile::InForce {
                text,
                since: fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH),
            },
        ),
        Err(why) => (
            local.clone(),
            CloudProfile::Unused {
                refused: !matches!(why, ProfileRefusal::NotAccepted),
                reason: why.to_string(),
            },
        ),
    };
    Ok(Profiles {
        local,
        effective,
        cloud,
    })
}

/// Where the local profile comes from, for `check` and `status`.
fn local_profile_words(c: &Config) -> String {
    match &c.sync.profile_file {
        Some(p) => format!("sync.profile_file {} on the built-in default", p.display()),
        None => "the built-in default".into(),
    }
}

/// What the branch lets the cloud do with profiles, for `check` and `status`.
fn cloud_policy_words(c: &Config) -> &'static str {
    match &c.relay {
        None => "no [relay]: the cloud cannot push profiles",
        Some(r) if r.profiles.accept => {
            "profiles from the cloud are accepted within local policy (relay.accept_profiles)"
        }
        Some(_) => "profiles from the cloud are refused (relay.accept_profiles is off)",
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a file time.
fn utc(t: std::time::SystemTime) -> String {
    crate::logging::format_utc(
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    )
}

/// Logs which profile is in force; with `remove`, removes a stored cloud profile that is
/// not used (kept only while local policy admits it, so it cannot come back when the
/// policy changes again). The text of the one in force.
fn settle_cloud_profile(c: &Config, cloud: &CloudProfile, remove: bool) -> Option<String> {
    match cloud {
        CloudProfile::None => None,
        CloudProfile::InForce { text, since } => {
            log::info!(
                "sync profile: the cloud's profile of {} is in force on top of the local one ({})",
                utc(*since),
                local_profile_words(c)
            );
            Some(text.clone())
        }
        CloudProfile::Unused { reason, .. } if !remove => {
            log::warn!("sync profile: the stored cloud profile is not used ({reason})");
            None
        }
        CloudProfile::Unused { reason, .. } => {
            let path = c.agent.state_dir.join(crate::remote::CLOUD_PROFILE);
            match fs::remove_file(&path) {
                Ok(()) => log::warn!(
                    "sync profile: the stored cloud profile is not used ({reason}); removed {}",
                    path.display()
                ),
                Err(e) => log::warn!(
                    "sync profile: the stored cloud profile is not used ({reason}); cannot remove {}: {e}",
                    path.display()
                ),
            }
            None
        }
    }
}

/// A connected directory with its kind and the profiles for it.
struct Source {
    dir: Directory,
    kind: DirectoryKind,
    /// The profile in force (local, with an admitted cloud profile on top).
    profile: SyncProfile,
    /// The local profile alone.
    local_profile: SyncProfile,
    cloud: CloudProfile,
    dse: ldap::Entry,
}

async fn open_source(c: &Config) -> Result<Source, String> {
    let dir = Directory::connect(&directory_config(c))
        .await
        .map_err(|e| format!("directory: {e}"))?;
    let dse = dir
        .root_dse()
        .await
        .map_err(|e| format!("directory: reading the rootDSE: {e}"))?;
    let kind = effective_kind(c.directory.kind, ldap::detect_kind(&dse));
    let p = load_profile(c, kind)?;
    Ok(Source {
        dir,
        kind,
        profile: p.effective,
        local_profile: p.local,
        cloud: p.cloud,
        dse,
    })
}

fn filters(c: &Config, profile: &SyncProfile) -> (String, String) {
    (
        c.scope
            .user_filter
            .clone()
            .unwrap_or_else(|| profile.default_filter(ResourceKind::User).to_string()),
        c.scope
            .group_filter
            .clone()
            .unwrap_or_else(|| profile.default_filter(ResourceKind::Group).to_string()),
    )
}

/// The anchor index of the state directory, or a message naming it.
fn load_index(c: &Config) -> Result<AnchorIndex, String> {
    AnchorIndex::load(&c.agent.state_dir)
        .map_err(|e| format!("agent.state_dir {}: {e}", c.agent.state_dir.display()))
}

/// Scope, filters and provisioning mode of a full pass, from the config and profile.
fn pass_settings(c: &Config, profile: &SyncProfile, dry_run: bool, quiet: bool) -> PassSettings {
    let (user_filter, group_filter) = filters(c, profile);
    PassSettings {
        include: c.scope.include.clone(),
        user_filter,
        group_filter,
        concurrency: c.sync.concurrency,
        mode: ProvisionMode {
            dry_run,
            soft_match: c.sync.soft_match,
            members: member_store(c),
            member_chunk: c.sync.member_chunk,
            listing: None,
            bulk: c.sync.bulk,
        },
        quiet,
        user_delete: c.sync.user_delete,
        scope_groups: group_scope(c, profile),
        flatten: (c.sync.nested_groups == crate::config::NestedGroups::Flatten).then(|| {
            crate::sync::flatten::Flatten {
                base_dn: c.directory.base_dn.clone(),
                member_attributes: profile.member_attributes(),
            }
        }),
    }
}

/// `scope.groups` as the sync engine reads it (None when not set).
fn group_scope(c: &Config, profile: &SyncProfile) -> Option<GroupScope> {
    (!c.scope.groups.is_empty()).then(|| GroupScope {
        groups: c.scope.groups.clone(),
        nested: c.scope.nested,
        base_dn: c.directory.base_dn.clone(),
        member_attributes: profile.member_attributes(),
    })
}

/// Starts the provisioning log of the state directory (`provisioning.jsonl`).
fn install_audit(c: &Config) {
    crate::sync::audit::install(crate::sync::audit::AuditLog::new(
        &c.agent.state_dir,
        crate::sync::audit::DEFAULT_MAX_BYTES,
    ));
}

/// The member store of the state directory (`state_dir/members`); without one (it cannot
/// be created) groups are sent whole and the log says why.
fn member_store(c: &Config) -> Option<std::sync::Arc<crate::sync::members::MemberStore>> {
    match crate::sync::members::MemberStore::open(c.agent.state_dir.join("members")) {
        Ok(s) => Some(std::sync::Arc::new(s)),
        Err(e) => {
            log::warn!("group members will be sent as whole lists: {e}");
            None
        }
    }
}

/// The delete gate of the state directory, or a message naming its file.
fn open_gate(c: &Config) -> Result<DeleteGate, String> {
    DeleteGate::open(
        &c.agent.state_dir,
        Policy {
            threshold: c.sync.delete_threshold,
            interval: c.sync.delete_interval,
            share_percent: c.sync.delete_threshold_percent,
            floor: c.sync.delete_floor,
        },
    )
    .map_err(|e| format!("held deletes: {e}"))
}

/// Tells the operator about held deletes and how to release them.
fn explain_held(c: &Config, held: usize) {
    if held > 0 {
        eprintln!(
            "{held} deletes are held for approval (sync.delete_threshold = {} per {} s); review them with `idrelay --config {} status`, release them with `idrelay --config {} approve-deletes`",
            c.sync.delete_threshold,
            c.sync.delete_interval.as_secs(),
            c.path.display(),
            c.path.display()
        );
    }
}

/// Creates the state directory (0700) or checks it (owner, mode; `state_dir`), and takes
/// its lock, so two agents never share it.
fn lock_state_dir(dir: &Path) -> Result<File, String> {
    crate::state_dir::prepare(dir).map_err(|e| e.to_string())?;
    let path = dir.join(crate::status::LOCK_FILE);
    let f = crate::state_dir::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("agent.state_dir {}: not writable: {e}", dir.display()))?;
    // `status` probes the lock with a shared lock of a moment: try a few times before
    // taking a probe for another agent.
    let mut result = f.try_lock();
    for _ in 0..5 {
        if !matches!(result, Err(fs::TryLockError::WouldBlock)) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        result = f.try_lock();
    }
    match result {
        Ok(()) => Ok(f),
        Err(fs::TryLockError::WouldBlock) => Err(format!(
            "another idrelay process is using agent.state_dir {} (lock {} is held)",
            dir.display(),
            path.display()
        )),
        Err(fs::TryLockError::Error(e)) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}

// ---------------------------------------------------------------------------------------
// check

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
    for (_, line) in crate::config::plaintext_warnings(c) {
        out.warn("plaintext", line);
    }

    match state_dir_writable(&c.agent.state_dir) {
        Ok(()) => out.ok("state_dir", c.agent.state_dir.display().to_string()),
        Err(e) => out.fail("state_dir", e),
    }

    match open_source(c).await {
        Err(e) => out.fail("ldap", e),
        Ok(src) => {
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
                        c.agent.state_dir.join(crate::remote::CLOUD_PROFILE).display()
                    ),
                    )
                }
                CloudProfile::Unused { reason, refused } => {
                    let line = format!(
                        "local: {local}; the stored cloud profile {} is not used ({reason}); `run` removes it",
                        c.agent.state_dir.join(crate::remote::CLOUD_PROFILE).display()
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
                Ok(Some((url, life))) => out.ok(
                    "scim oauth",
                    format!(
                        "client_credentials grant at {url}: token issued, {}",
                        match life {
                            Some(d) =>
                                format!("valid {} s (replaced before it expires)", d.as_secs()),
                            None => "no lifetime given (replaced when refused)".into(),
                        }
                    ),
                ),
                Err(e) => out.fail("scim oauth", e.to_string()),
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
    use crate::config::FeedKind;
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
    use crate::config::FeedKind;
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

/// `sync --once [--dry-run]`.
pub fn sync_once(c: &Config, dry_run: bool, quiet: bool) -> i32 {
    let _lock = match lock_state_dir(&c.agent.state_dir) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::FAILURE;
        }
    };
    if !dry_run {
        install_audit(c);
    }
    smol::block_on(async {
        let src = match open_source(c).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::FAILURE;
            }
        };
        log::info!("directory {} is {}", c.directory.url, src.kind);
        settle_cloud_profile(c, &src.cloud, !dry_run);
        let scim = match scim_client(c) {
            Ok((_, s)) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::FAILURE;
            }
        };
        // Reaching the endpoint first turns "unreachable" into one clear error instead of
        // one failure per object.
        if let Err(e) = scim.service_provider_config().await {
            if e.status() != Some(404) {
                eprintln!("error: SCIM endpoint {}: {e}", c.scim.url);
                return exit::FAILURE;
            }
            log::warn!(
                "SCIM endpoint has no /ServiceProviderConfig (404); going on with plain SCIM"
            );
        }
        let mut index = match load_index(c) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::FAILURE;
            }
        };
        let mut gate = match open_gate(c) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::FAILURE;
            }
        };
        let settings = pass_settings(c, &src.profile, dry_run, quiet);
        if !dry_run {
            // Deletes a stopped `run` left waiting in its settle window: this pass finds
            // those objects gone again and weighs them itself (sent once, not twice).
            let waiting = gate.forget_waiting();
            if waiting > 0 {
                log::info!("{waiting} deletes waiting to be weighed are left to this pass");
            }
        }
        match full_pass(
            &src.dir,
            &scim,
            &src.profile,
            &mut index,
            &mut gate,
            &settings,
        )
        .await
        {
            Ok(report) => {
                if !report.failures.is_empty() {
                    eprintln!("{} objects failed:", report.failures.len());
                    for f in report.failures.iter().take(50) {
                        eprintln!("  {}: {}", f.dn, f.reason);
                    }
                    if report.failures.len() > 50 {
                        eprintln!(
                            "  ... and {} more (see the log)",
                            report.failures.len() - 50
                        );
                    }
                }
                for (dn, why) in report.deletes.failed.iter().take(50) {
                    eprintln!("  delete of {dn} failed: {why}");
                }
                if let Some(list) = scim.not_kept().filter(|l| !l.is_empty()) {
                    crate::outln!(
                        "the endpoint accepted and did not keep as sent: {} (see the log)",
                        list.join(", ")
                    );
                }
                crate::outln!("{report}");
                explain_held(c, gate.held().len());
                if !dry_run {
                    crate::sync::follow::record_full_pass(&c.agent.state_dir);
                    crate::sync::kept::record(&c.agent.state_dir, &scim);
                }
                if !report.failures.is_empty() || !report.deletes.failed.is_empty() {
                    exit::PARTIAL
                } else if !gate.held().is_empty() {
                    exit::HELD
                } else {
                    exit::OK
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                exit::FAILURE
            }
        }
    })
}

// ---------------------------------------------------------------------------------------
// preview DN

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
fn print_difference(sends: &serde_json::Value, held: &serde_json::Value) {
    use crate::scim::readback::{compare, value_at};
    use serde_json::Value;
    let drift = compare(sends, held, &|_| false);
    if drift.is_empty() {
        crate::outln!("difference: none: the endpoint holds what a sync sends");
        return;
    }
    crate::outln!("difference (endpoint -> a sync sends):");
    let shown = |v: Option<&Value>| match v {
        None | Some(Value::Null) => "(none)".to_string(),
        Some(v) => v.to_string(),
    };
    for (path, _) in drift {
        crate::outln!(
            "  {path}: {} -> {}",
            shown(value_at(held, &path)),
            shown(value_at(sends, &path))
        );
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

fn queue_config(c: &Config) -> crate::queue::QueueConfig {
    let mut q = crate::queue::QueueConfig::new(c.agent.state_dir.join("queue"));
    q.max_bytes = c.queue.max_bytes;
    q.segment_bytes = q.segment_bytes.min(c.queue.max_bytes / 4);
    q
}

/// `run`: full pass when owed, then follow changes until SIGTERM/SIGINT (exit 0). SIGHUP
/// re-reads the config: a valid one replaces the running one (connections are reopened,
/// the queue and the index stay); an invalid one is logged and the old one kept.
pub fn run(c: &Config, quiet: bool) -> i32 {
    let _lock = match lock_state_dir(&c.agent.state_dir) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::FAILURE;
        }
    };
    for (_, line) in crate::config::plaintext_warnings(c) {
        log::warn!("{line}");
    }
    install_audit(c);
    let queue = match crate::queue::Queue::open(queue_config(c)) {
        Ok(q) => q,
        Err(e) => {
            eprintln!(
                "error: change queue in {}: {e}",
                c.agent.state_dir.join("queue").display()
            );
            return exit::FAILURE;
        }
    };
    let queue = std::sync::Arc::new(std::sync::Mutex::new(queue));
    // A runtime file left by an earlier agent says nothing about this one.
    let _ = fs::remove_file(c.agent.state_dir.join(crate::status::RUNTIME_FILE));
    let code = run_until_stopped(c, quiet, &queue);
    // What stays behind for monitoring says "not running".
    let _ = fs::remove_file(c.agent.state_dir.join(crate::status::RUNTIME_FILE));
    let stats = queue.lock().unwrap_or_else(|p| p.into_inner()).stats();
    let doc = status_document(c, false, None, &stats);
    write_prom(c, &doc);
    code
}

fn run_until_stopped(c: &Config, quiet: bool, queue: &crate::sync::follow::SharedQueue) -> i32 {
    let control = Control::new();
    if let Err(e) = control.install() {
        eprintln!("error: cannot install signal handlers: {e}");
        return exit::FAILURE;
    }
    let mut config = c.clone();
    loop {
        let outcome = smol::block_on(run_once(&config, quiet, queue, &control));
        match outcome {
            Err(code) => return code,
            Ok(Request::Stop) => {
                log::info!("stopped on request; queue and index saved");
                return exit::OK;
            }
            Ok(Request::Reload) => {
                control.clear_reload();
                match Config::load(&config.path) {
                    Ok(new) if new.agent.state_dir != config.agent.state_dir => {
                        log::error!(
                            "config reload: agent.state_dir cannot change while running (restart the service instead); keeping the old config"
                        );
                    }
                    Ok(new) => {
                        log::info!(
                            "config reloaded from {} ({})",
                            config.path.display(),
                            secrets_changed(&config, &new)
                        );
                        config = new;
                    }
                    Err(e) => log::error!("config reload failed, keeping the old config: {e}"),
                }
            }
        }
    }
}

/// Which secrets a reload changed, in words for the log (never the values): so an operator
/// who rotated a secret sees whether the agent got the new one (under systemd's
/// `LoadCredential=`, only if the credential was copied again: packaging/README.md).
fn secrets_changed(old: &Config, new: &Config) -> String {
    let mut changed = Vec::new();
    if old.directory.password != new.directory.password {
        changed.push("ldap password changed");
    }
    match (&old.scim.auth, &new.scim.auth) {
        (ScimAuth::Bearer(a), ScimAuth::Bearer(b)) if a == b => {}
        (ScimAuth::ClientCredentials(a), ScimAuth::ClientCredentials(b))
            if a.client_secret == b.client_secret => {}
        (_, ScimAuth::Bearer(_)) => changed.push("scim token changed"),
        (_, ScimAuth::ClientCredentials(_)) => changed.push("oauth client secret changed"),
    }
    if changed.is_empty() {
        "secrets unchanged".into()
    } else {
        changed.join(", ")
    }
}

/// One life of `run` with one config: returns the operator's request, or an exit code.
async fn run_once(
    c: &Config,
    quiet: bool,
    queue: &crate::sync::follow::SharedQueue,
    control: &Control,
) -> Result<Request, i32> {
    let (_, scim) = scim_client(c).map_err(|e| {
        eprintln!("error: {e}");
        exit::FAILURE
    })?;
    let agent = std::sync::Arc::new(crate::relay::agent::AgentState::new(c.relay.is_some()));
    // Beside everything else: the state files `status` and monitoring read.
    smol::future::or(
        async {
            publish_runtime(c, &agent, &scim, queue).await;
            Ok(Request::Stop)
        },
        follow_once(c, quiet, queue, control, &agent, &scim),
    )
    .await
}

/// One life of `run` with one config, once the SCIM client is built.
async fn follow_once(
    c: &Config,
    quiet: bool,
    queue: &crate::sync::follow::SharedQueue,
    control: &Control,
    agent: &std::sync::Arc<crate::relay::agent::AgentState>,
    scim: &ScimClient,
) -> Result<Request, i32> {
    let mut wait = crate::relay::backoff::Backoff::new(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(60),
    );
    // The directory may be down when the service starts: keep trying, say so.
    let src = loop {
        match open_source(c).await {
            Ok(s) => break s,
            Err(e) => {
                let d = wait
                    .next_delay()
                    .unwrap_or(std::time::Duration::from_secs(60));
                log::warn!("{e}; retrying in {:.0} s", d.as_secs_f64());
                agent.set_error(e.to_string());
                if let Some(r) = control.sleep(d).await {
                    return Ok(r);
                }
            }
        }
    };
    log::info!("directory {} is {}", c.directory.url, src.kind);
    let cloud_text = settle_cloud_profile(c, &src.cloud, true);
    let mut index = load_index(c).map_err(|e| {
        eprintln!("error: {e}");
        exit::FAILURE
    })?;
    let mut gate = open_gate(c).map_err(|e| {
        eprintln!("error: {e}");
        exit::FAILURE
    })?;
    if !gate.held().is_empty() {
        log::warn!(
            "{} deletes are held for approval; nothing is deleted until `idrelay approve-deletes`",
            gate.held().len()
        );
    }
    let settings = crate::sync::follow::FollowSettings {
        pass: pass_settings(c, &src.profile, false, quiet),
        base_dn: c.directory.base_dn.clone(),
        state_dir: c.agent.state_dir.clone(),
        full_pass_interval: c.sync.full_pass_interval,
        feed: resolve_feed(c, &src).await,
        park_after: c.sync.max_attempts,
        delete_settle: c.sync.delete_settle,
    };
    log::info!("change feed: {}", settings.feed.name());
    agent.feed.set_kind(
        settings.feed.name(),
        match &settings.feed {
            crate::sync::follow::Feed::Poll(p) => Some(p.interval),
            crate::sync::follow::Feed::Syncrepl => None,
        },
    );
    log::info!(
        "agent {} running: following {}",
        c.agent.id,
        c.scope.include.join("; ")
    );
    let relay = match &c.relay {
        None => None,
        Some(r) => {
            let http = HttpClient::new(with_transport(
                HttpConfig {
                    ca_file: r.ca_file.clone(),
                    connect_timeout: std::time::Duration::from_secs(10),
                    request_timeout: r.poll_wait + std::time::Duration::from_secs(15),
                    max_idle_per_host: 2,
                    ..HttpConfig::default()
                },
                &r.transport,
            ))
            .map_err(|e| {
                eprintln!("error: relay: {e}");
                exit::FAILURE
            })?;
            let relay = crate::relay::agent::Relay::new(
                http,
                r.clone(),
                &c.agent.id,
                Some(&c.agent.state_dir),
            )
            .map_err(|e| {
                eprintln!("error: {e}");
                exit::FAILURE
            })?;
            let (uf, gf) = filters(c, &src.profile);
            let remote = crate::remote::Remote::new(
                src.dir.clone(),
                src.profile.clone(),
                src.local_profile.clone(),
                (c.scope.include.clone(), uf, gf),
                c.agent.state_dir.clone(),
                queue.clone(),
                Policy {
                    threshold: c.sync.delete_threshold,
                    interval: c.sync.delete_interval,
                    share_percent: c.sync.delete_threshold_percent,
                    floor: c.sync.delete_floor,
                },
                control.clone(),
                agent.clone(),
            )
            .with_writeback(c.writeback.clone(), directory_config(c))
            .with_profile_policy(profile_policy(c), cloud_text.clone())
            .with_group_scope(group_scope(c, &src.profile));
            Some((relay, remote))
        }
    };
    let st = crate::sync::follow::State {
        index: &mut index,
        gate: &mut gate,
        queue: queue.clone(),
        agent,
    };
    let follow = crate::sync::follow::run(&src.dir, scim, &src.profile, st, &settings, control);
    let result = match &relay {
        None => follow.await,
        // The relay runs beside the sync loop; when the loop ends (stop, reload), so does it.
        Some((relay, remote)) => {
            let follow = async {
                let r = follow.await;
                // A stop or reload: the relay finishes the requests it is handling and
                // keeps and posts their answers before the process goes on.
                if r.is_ok() {
                    relay.wait_finished().await;
                }
                r
            };
            smol::future::or(follow, async {
                relay.run(remote, agent, control).await;
                // The relay only returns on a stop or reload request: let the loop see it.
                std::future::pending().await
            })
            .await
        }
    };
    result.map_err(|e| {
        eprintln!("error: {e}");
        exit::FAILURE
    })
}

/// The feed `run` follows: the configured one, or for `auto` the best the directory offers
/// (syncrepl where advertised; on AD DirSync if the account may use it, else uSN polling;
/// modifyTimestamp polling elsewhere).
async fn resolve_feed(c: &Config, src: &Source) -> crate::sync::follow::Feed {
    use crate::config::FeedKind;
    use crate::sync::follow::Feed;
    use crate::sync::poll::{PollKind, PollSpec};
    let poll = |kind| {
        Feed::Poll(PollSpec {
            kind,
            base: c.directory.base_dn.clone(),
            interval: c.sync.poll_interval,
            notifications: kind != PollKind::Timestamp
                && ldap::supports_control(&src.dse, ldap::NOTIFICATION_OID),
        })
    };
    match c.sync.feed {
        FeedKind::Syncrepl => Feed::Syncrepl,
        FeedKind::DirSync => poll(PollKind::DirSync),
        FeedKind::Usn => poll(PollKind::Usn),
        FeedKind::Timestamp => poll(PollKind::Timestamp),
        FeedKind::Auto => match src.kind {
            DirectoryKind::ActiveDirectory => match dirsync_refusal(c, src).await {
                Some(e) if e.is_missing_rights() => {
                    log::warn!(
                            "DirSync refused ({e}); following changes by uSNChanged polling instead (grant \"Replicating Directory Changes\" for DirSync)"
                        );
                    poll(PollKind::Usn)
                }
                _ => poll(PollKind::DirSync),
            },
            _ if ldap::supports_control(&src.dse, ldap::SYNC_REQUEST_OID) => Feed::Syncrepl,
            _ => poll(PollKind::Timestamp),
        },
    }
}

/// Why DirSync is refused to the bind account, or `None` when it may use it: a DirSync
/// that matches nothing tells whether the account has "Replicating Directory Changes".
async fn dirsync_refusal(c: &Config, src: &Source) -> Option<ldap::AdFeedError> {
    let mut probe = src.dir.dirsync(
        &c.directory.base_dn,
        "(&(objectClass=user)(cn=idrelay-dirsync-rights-probe))",
        &["objectGUID"],
        None,
        ldap::DirSyncFlags::INCREMENTAL_VALUES,
    );
    while let Some(item) = probe.next().await {
        if let Err(e) = item {
            return Some(e);
        }
    }
    None
}

/// `approve-deletes`: releases the held deletes. With the agent running (it holds the
/// state lock) an approval file is left for it; otherwise they are sent from here.
/// `list_only` prints them and changes nothing.
pub fn approve_deletes(c: &Config, list_only: bool) -> i32 {
    // The lock may be held by the running agent (then an approval file is left for it),
    // but a state directory that fails its check is never written to.
    if let Err(e) = crate::state_dir::prepare(&c.agent.state_dir) {
        eprintln!("error: {e}");
        return exit::FAILURE;
    }
    let gate = match open_gate(c) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::FAILURE;
        }
    };
    let held = gate.held().to_vec();
    if held.is_empty() {
        crate::outln!("no deletes are held");
        return exit::OK;
    }
    for t in held.iter().take(if list_only { usize::MAX } else { 20 }) {
        crate::outln!("{} {}: {}", t.kind.word(), t.dn, t.reason);
    }
    if !list_only && held.len() > 20 {
        crate::outln!(
            "... and {} more (`approve-deletes --list` shows all)",
            held.len() - 20
        );
    }
    if list_only {
        crate::outln!("{} deletes held; nothing changed", held.len());
        return exit::OK;
    }
    let lock = lock_state_dir(&c.agent.state_dir);
    let Ok(_lock) = lock else {
        // The agent runs: it picks the approval up within seconds.
        return match gate.write_approval() {
            Ok(()) => {
                crate::outln!(
                    "approved {} deletes; the running agent sends them within seconds (see its log)",
                    held.len()
                );
                exit::OK
            }
            Err(e) => {
                eprintln!("error: {e}");
                exit::FAILURE
            }
        };
    };
    install_audit(c);
    let mut gate = gate;
    smol::block_on(async {
        let (_, scim) = match scim_client(c) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::FAILURE;
            }
        };
        let mut index = match load_index(c) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::FAILURE;
            }
        };
        let targets = gate.release_all();
        if let Err(e) = gate.save() {
            eprintln!("error: {e}");
            return exit::FAILURE;
        }
        let s = crate::sync::deletes::send_approved(&scim, &mut index, c.sync.user_delete, targets)
            .await;
        if let Err(e) = index.save() {
            eprintln!("error: anchor index: {e}");
            return exit::FAILURE;
        }
        for (dn, why) in &s.failed {
            eprintln!("  delete of {dn} failed: {why}");
        }
        crate::outln!(
            "approved deletes: {} sent, {} failed (failed ones are found again by the next full pass)",
            s.sent,
            s.failed.len()
        );
        if s.failed.is_empty() {
            exit::OK
        } else {
            exit::PARTIAL
        }
    })
}

/// `retry [DN|--all]`: makes parked objects due now. With the agent running (it holds the
/// state lock) a request file is left for it; otherwise the parked list is updated and the
/// next `run` sends them first.
pub fn retry_parked(c: &Config, dn: Option<&str>) -> i32 {
    use crate::sync::follow::parking::{self, Parking};
    let dir = &c.agent.state_dir;
    if let Err(e) = crate::state_dir::prepare(dir) {
        eprintln!("error: {e}");
        return exit::FAILURE;
    }
    let mut parked = match Parking::open(dir) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: parked objects: {e}");
            return exit::FAILURE;
        }
    };
    let wanted = match dn {
        None => parked.len(),
        Some(d) => usize::from(
            parked
                .find("", Some(&crate::sync::dn::normalize(d)))
                .is_some(),
        ),
    };
    if wanted == 0 {
        match dn {
            None => crate::outln!("no objects are parked"),
            Some(d) => {
                eprintln!("error: {d} is not parked (`idrelay status` lists parked objects)")
            }
        }
        return if dn.is_some() {
            exit::FAILURE
        } else {
            exit::OK
        };
    }
    let Ok(_lock) = lock_state_dir(dir) else {
        // The agent runs: it picks the request up within seconds.
        return match parking::request_retry(dir, dn) {
            Ok(()) => {
                crate::outln!(
                    "asked the running agent to retry {wanted} parked {} now (see its log)",
                    if wanted == 1 { "object" } else { "objects" }
                );
                exit::OK
            }
            Err(e) => {
                eprintln!("error: {e}");
                exit::FAILURE
            }
        };
    };
    parked.make_due(dn, parking::unix_now());
    match parked.save() {
        Ok(()) => {
            crate::outln!(
                "{wanted} parked {} due now; the next `idrelay run` sends {} first",
                if wanted == 1 {
                    "object is"
                } else {
                    "objects are"
                },
                if wanted == 1 { "it" } else { "them" }
            );
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::FAILURE
        }
    }
}

/// `status`: read-only view of the queue and the anchor index.
/// How often the running agent looks at its state for [`publish_runtime`].
const PUBLISH_TICK: std::time::Duration = std::time::Duration::from_secs(1);
/// The runtime file is rewritten at least this often (and at once on a change).
const RUNTIME_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// The textfile is rewritten at least this often (and at once on a change).
const PROM_EVERY: std::time::Duration = std::time::Duration::from_secs(15);

/// The status document for `c`: the files of the state directory, the queue's `stats`,
/// and the running agent's runtime state (`rt`, with its age) when one runs.
fn status_document(
    c: &Config,
    running: bool,
    rt: Option<(&crate::status::Runtime, u64)>,
    stats: &crate::queue::QueueStats,
) -> crate::status::Document {
    use crate::status::{unix, Document, LastPass, QueueDoc};
    let now = unix(std::time::SystemTime::now());
    let gate = open_gate(c);
    let (held, settling, unmatched) = match &gate {
        Ok(g) => (
            g.held().len() as u64,
            (g.pending().len() + g.going().len()) as u64,
            g.unmatched().0,
        ),
        Err(_) => (0, 0, 0),
    };
    let last = crate::sync::follow::last_full_pass(&c.agent.state_dir).map(unix);
    let mut d = Document {
        agent: c.agent.id.clone(),
        healthy: false,
        problems: Vec::new(),
        running,
        pid: None,
        phase: None,
        runtime_age_secs: None,
        feed: Default::default(),
        endpoint: Default::default(),
        queue: QueueDoc {
            depth: stats.depth,
            bytes: stats.bytes,
            max_bytes: c.queue.max_bytes,
            oldest_age_secs: stats.oldest_age.map(|a| a.as_secs()),
            resync_owed: stats.resync_owed.is_some(),
            resync_reason: stats.resync_owed.map(|r| r.as_str().to_string()),
            resync_waiting_secs: 0,
        },
        held_deletes: held,
        settling_deletes: settling,
        parked: parked_docs(&c.agent.state_dir, now),
        unmatched_deletes: unmatched,
        last_full_pass: LastPass {
            at: last,
            age_secs: last.map(|t| now.saturating_sub(t)),
        },
        last_error: None,
    };
    d.apply_runtime(rt, now);
    d.endpoint.not_kept = crate::sync::kept::read(&c.agent.state_dir)
        .map(|k| k.attributes)
        .unwrap_or_default();
    let mut d = d.judge();
    if let Err(e) = gate {
        // It may hold deletes nobody has seen.
        d.problems.push(e);
        d.healthy = false;
    }
    d
}

/// The parked objects for the status document (an unreadable list: none, and `status`'s
/// text says why).
fn parked_docs(state_dir: &std::path::Path, now: u64) -> Vec<crate::status::ParkedDoc> {
    let Ok(p) = crate::sync::follow::parking::Parking::open(state_dir) else {
        return Vec::new();
    };
    p.entries()
        .iter()
        .map(|e| crate::status::ParkedDoc {
            kind: e.kind.clone(),
            dn: e.dn.clone(),
            reason: e.reason.clone(),
            attempts: e.attempts,
            first_failed_at: e.first_at,
            next_try_in_secs: e.next_at.saturating_sub(now),
        })
        .collect()
}

/// Writes the node_exporter textfile; a failure is logged, never fatal.
fn write_prom(c: &Config, doc: &crate::status::Document) {
    let path = c.agent.state_dir.join(crate::status::PROM_FILE);
    if let Err(e) = crate::status::write_private(&path, crate::status::render_prom(doc).as_bytes())
    {
        log::debug!("cannot write {}: {e}", path.display());
    }
}

/// The running agent's side of `status`: every [`PUBLISH_TICK`] it looks at its state and
/// writes `runtime.json` when it changed (at least every [`RUNTIME_EVERY`]) and
/// `idrelay.prom` when it changed (at least every [`PROM_EVERY`]). Never returns.
async fn publish_runtime(
    c: &Config,
    agent: &crate::relay::agent::AgentState,
    scim: &ScimClient,
    queue: &crate::sync::follow::SharedQueue,
) {
    use crate::status::{unix, write_private, Runtime, RUNTIME_FILE};
    use std::time::{Instant, SystemTime};
    let started_at = unix(SystemTime::now());
    let mut last_rt: Option<(Runtime, Instant)> = None;
    let mut last_prom: Option<Instant> = None;
    let mut owed_since: Option<u64> = None;
    loop {
        let phase = *agent.phase.lock().unwrap_or_else(|p| p.into_inner());
        let q = queue.clone();
        let stats =
            smol::unblock(move || q.lock().unwrap_or_else(|p| p.into_inner()).stats()).await;
        let now = unix(SystemTime::now());
        owed_since = if stats.resync_owed.is_some() && phase != "full-pass" {
            owed_since.or(Some(now))
        } else {
            None
        };
        let rt = Runtime {
            v: 1,
            pid: std::process::id(),
            started_at,
            updated_at: now,
            phase: phase.to_string(),
            feed: agent.feed.facts(),
            endpoint: scim.endpoint_health(),
            last_error: agent
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            resync_waiting_since: owed_since,
        };
        let changed = last_rt.as_ref().is_none_or(|(prev, _)| !prev.same_as(&rt));
        if changed
            || last_rt
                .as_ref()
                .is_some_and(|(_, at)| at.elapsed() >= RUNTIME_EVERY)
        {
            let path = c.agent.state_dir.join(RUNTIME_FILE);
            let body = serde_json::to_vec_pretty(&rt).unwrap_or_default();
            if let Err(e) = write_private(&path, &body) {
                log::debug!("cannot write {}: {e}", path.display());
            }
            if changed || last_prom.is_none_or(|at| at.elapsed() >= PROM_EVERY) {
                write_prom(c, &status_document(c, true, Some((&rt, 0)), &stats));
                last_prom = Some(Instant::now());
            }
            last_rt = Some((rt, Instant::now()));
        }
        smol::Timer::after(PUBLISH_TICK).await;
    }
}

/// `status`: whether the agent is healthy (first line, and the exit status: 0 healthy, 1
/// not), then what the state directory and the running agent say; `json`: the same as
/// one JSON object (docs/status.md).
pub fn status(c: &Config, json: bool) -> i32 {
    let qc = queue_config(c);
    let view = match crate::queue::Queue::inspect(&qc.dir) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: change queue in {}: {e}", qc.dir.display());
            return exit::FAILURE;
        }
    };
    let now = crate::status::unix(std::time::SystemTime::now());
    let (running, rt) = crate::status::read_runtime(&c.agent.state_dir, now);
    let doc = status_document(c, running, rt.as_ref().map(|(r, a)| (r, *a)), &view.stats);
    let code = if doc.healthy { exit::OK } else { exit::FAILURE };
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return code;
    }
    let ago = |secs: u64| {
        format!(
            "{} ago",
            crate::sync::progress::format_duration(std::time::Duration::from_secs(secs))
        )
    };
    if doc.healthy {
        crate::outln!("healthy: yes");
    } else {
        crate::outln!("healthy: no ({})", doc.problems.join("; "));
    }
    match (&doc.pid, &doc.phase) {
        (Some(pid), Some(phase)) => {
            crate::outln!("agent:        {}: running (pid {pid}), {phase}", c.agent.id)
        }
        _ if doc.running => crate::outln!("agent:        {}: running, starting", c.agent.id),
        _ => crate::outln!("agent:        {}: not running", c.agent.id),
    }
    if doc.running {
        let f = &doc.feed;
        crate::outln!(
            "feed:         {}: {}{}",
            f.kind.as_deref().unwrap_or("not chosen yet"),
            if f.connected {
                "connected"
            } else {
                "NOT connected"
            },
            f.last_event_age_secs
                .map(|a| format!(", last event {}", ago(a)))
                .unwrap_or_default()
        );
        let e = &doc.endpoint;
        crate::outln!(
            "endpoint:     {}{}",
            match e.state {
                crate::status::EndpointState::Ok => "ok",
                crate::status::EndpointState::Unhealthy => "UNHEALTHY",
                crate::status::EndpointState::Unknown => "unknown (no request yet)",
            },
            match (&e.last_error, e.last_error_age_secs) {
                (Some(err), Some(a)) => format!("; last error {}: {err}", ago(a)),
                (Some(err), None) => format!("; last error: {err}"),
                _ => String::new(),
            }
        );
    }
    if !doc.endpoint.not_kept.is_empty() {
        crate::outln!(
            "not kept:     {} (the endpoint accepted these and did not keep them as sent)",
            doc.endpoint.not_kept.join(", ")
        );
    }
    let s = &view.stats;
    crate::outln!(
        "queue:        {} changes pending, {} of {} bytes on disk, {} segments",
        s.depth,
        s.bytes,
        c.queue.max_bytes,
        s.segments
    );
    crate::outln!(
        "oldest:       {}",
        s.oldest_age
            .map(|a| format!("{} ago", crate::sync::progress::format_duration(a)))
            .unwrap_or_else(|| "none pending".into())
    );
    crate::outln!(
        "resync owed:  {}",
        s.resync_owed
            .map(|r| format!("yes ({r})"))
            .unwrap_or_else(|| "no".into())
    );
    crate::outln!(
        "sequences:    acknowledged {} of {}",
        s.acked_seq,
        s.last_seq
    );
    let mark = view
        .watermark
        .as_deref()
        .and_then(|w| serde_json::from_slice::<crate::sync::follow::Watermark>(w).ok())
        .and_then(|w| crate::scim::base64::decode(&w.cookie).ok())
        .map(|c| describe_cookie(&c));
    crate::outln!(
        "watermark:    {}",
        mark.unwrap_or_else(|| "none (no full pass has completed)".into())
    );
    match AnchorIndex::count_saved(&c.agent.state_dir) {
        Ok(n) => crate::outln!("anchors:      {n} objects provisioned"),
        Err(e) => crate::outln!("anchors:      unreadable: {e}"),
    }
    crate::outln!(
        "full pass:    {}",
        match crate::sync::follow::last_full_pass(&c.agent.state_dir)
            .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
        {
            Some(age) => format!(
                "last completed {} ago",
                crate::sync::progress::format_duration(age)
            ),
            None => "none recorded".into(),
        }
    );
    let cloud = c.agent.state_dir.join(crate::remote::CLOUD_PROFILE);
    let local = local_profile_words(c);
    match fs::metadata(&cloud).and_then(|m| m.modified()) {
        Ok(since) if profile_policy(c).accept => println!(
            "profile:      cloud profile in force since {} ({}), on top of the local one: {local}",
            utc(since),
            cloud.display()
        ),
        Ok(_) => println!(
            "profile:      local: {local}; a stored cloud profile ({}) is not used: relay.accept_profiles is off (`run` removes it)",
            cloud.display()
        ),
        Err(_) => println!("profile:      local: {local}; {}", cloud_policy_words(c)),
    }
    match &c.relay {
        None => crate::outln!("relay:        not configured (always active)"),
        Some(r) => {
            let path = c.agent.state_dir.join(crate::relay::agent::STATUS_FILE);
            let st: Option<crate::relay::agent::RelayStatus> = crate::state_dir::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            match st {
                None => crate::outln!(
                    "relay:        {} (group {}): no heartbeat recorded yet",
                    r.url,
                    r.group
                ),
                Some(s) => {
                    let age = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0)
                        .saturating_sub(s.last_heartbeat);
                    crate::outln!(
                        "relay:        {} (group {}): {}; last heartbeat {}{}",
                        s.url,
                        s.group,
                        s.role.to_uppercase(),
                        if s.last_heartbeat == 0 {
                            "never answered".to_string()
                        } else {
                            format!(
                                "{} ago",
                                crate::sync::progress::format_duration(
                                    std::time::Duration::from_secs(age)
                                )
                            )
                        },
                        s.last_error
                            .map(|e| format!("; last error: {e}"))
                            .unwrap_or_default()
                    );
                }
            }
        }
    }
    match open_gate(c) {
        Ok(g) if g.held().is_empty() => crate::outln!(
            "deletes:      none held ({} sent in the current {} s window, threshold {})",
            g.recent(),
            c.sync.delete_interval.as_secs(),
            c.sync.delete_threshold
        ),
        Ok(g) => {
            crate::outln!(
                "deletes:      {} HELD for approval (threshold {} per {} s); release with `idrelay --config {} approve-deletes`",
                g.held().len(),
                c.sync.delete_threshold,
                c.sync.delete_interval.as_secs(),
                c.path.display()
            );
            for t in g.held().iter().take(5) {
                crate::outln!("              {} {}: {}", t.kind.word(), t.dn, t.reason);
            }
        }
        Err(e) => crate::outln!("deletes:      {e}"),
    }
    if let Ok(g) = open_gate(c) {
        let settling = g.pending().len() + g.going().len();
        if settling > 0 {
            crate::outln!(
                "              {settling} deletes wait to be weighed (sync.delete_settle_secs = {})",
                c.sync.delete_settle.as_secs()
            );
        }
        crate::outln!("unmatched:    {}", unmatched_line(g.unmatched()));
    }
    for line in crate::sync::follow::parking::status_lines(&c.agent.state_dir) {
        crate::outln!("{line}");
    }
    code
}

/// The `status` line about feed deletes that matched no provisioned object.
fn unmatched_line((n, last): (u64, Option<&crate::sync::deletes::Unmatched>)) -> String {
    if n == 0 {
        return "none (every delete from the change feed matched what it names)".into();
    }
    let last = last
        .map(|u| {
            let age = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
                .saturating_sub(u.at);
            format!(
                "; last: {}, {} ago",
                u.dn.clone()
                    .unwrap_or_else(|| format!("uuid {} (no DN sent)", u.uuid)),
                crate::sync::progress::format_duration(std::time::Duration::from_secs(age))
            )
        })
        .unwrap_or_default();
    format!(
        "{n} unmatched {} from the change feed (they matched nothing this agent provisioned; \
         see the log){last}; a full pass removes what it no longer finds",
        if n == 1 { "delete" } else { "deletes" }
    )
}

/// A feed position as `status` prints it: the text of a text cookie (syncrepl, uSN JSON,
/// a timestamp), else its size and first bytes in hex (DirSync's cookie is binary).
fn describe_cookie(cookie: &[u8]) -> String {
    match std::str::from_utf8(cookie) {
        Ok(text) if !text.chars().any(char::is_control) => text.to_string(),
        _ => {
            let head: String = cookie.iter().take(12).map(|b| format!("{b:02x}")).collect();
            format!(
                "{} bytes, binary (starts {head}{})",
                cookie.len(),
                if cookie.len() > 12 { "..." } else { "" }
            )
        }
    }
}

#[cfg(test)]
mod cookie_tests {
    use super::describe_cookie;

    #[test]
    fn text_cookies_print_as_text_and_binary_ones_as_size_and_hex() {
        assert_eq!(
            describe_cookie(b"rid=000,csn=20261206120000.000000Z#000000#000#000000"),
            "rid=000,csn=20261206120000.000000Z#000000#000#000000"
        );
        let dirsync = [
            0x4d, 0x53, 0x44, 0x53, 0x03, 0x00, 0x00, 0x00, 0xff, 0x10, 0x00, 0x01, 0x02,
        ];
        assert_eq!(
            describe_cookie(&dirsync),
            "13 bytes, binary (starts 4d53445303000000ff100001...)"
        );
    }
}
