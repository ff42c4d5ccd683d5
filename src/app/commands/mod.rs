//! The commands behind the CLI: `check`, `sync --once`, `preview`. Each returns an exit
//! code (see [`crate::app::cli::exit`]) after printing its own results; errors are printed once
//! here, with their cause, and never carry a secret.

mod approve;
mod check;
mod preview;
mod publish;
mod run;
mod status;
mod sync_once;

pub use approve::{approve_deletes, retry_parked};
pub use check::check;
pub use preview::preview;
pub use run::run;
pub use status::status;
pub use sync_once::sync_once;

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::Path;

use crate::app::cli::exit;
use crate::app::config::{Config, KindSetting, ScimAuth};
use crate::ldap::dn;
use crate::ldap::{self, Directory, DirectoryConfig, DirectoryKind, Scope};
use crate::net::http::{HttpClient, HttpConfig};
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
use crate::sync::pass::{full_pass, PassSettings};
use crate::sync::provision::ProvisionMode;
use crate::sync::scope_groups::{AllowedSet, GroupScope};

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
fn with_transport(mut h: HttpConfig, t: &crate::app::config::Transport) -> HttpConfig {
    use crate::app::config::ProxySetting;
    match &t.proxy {
        ProxySetting::Environment => {
            h.proxy_env = Some(crate::net::proxy::ProxyEnv::from_process())
        }
        ProxySetting::Direct => {}
        ProxySetting::Explicit(p) => h.proxy = Some(p.clone()),
    }
    h.pin_sha256 = t.pins.clone();
    h.client_cert = t.client_cert.clone();
    h
}

/// The client for an OAuth2 token endpoint: another service than the one it grants
/// access to, so that table's CA and proxy, not its pins or client certificate.
fn oauth_http(
    ca_file: &Option<std::path::PathBuf>,
    timeout: std::time::Duration,
    t: &crate::app::config::Transport,
) -> Result<HttpClient, crate::net::http::HttpError> {
    HttpClient::new(with_transport(
        HttpConfig {
            ca_file: ca_file.clone(),
            connect_timeout: timeout.min(std::time::Duration::from_secs(10)),
            request_timeout: timeout,
            max_idle_per_host: 1,
            ..HttpConfig::default()
        },
        &crate::app::config::Transport {
            pins: Vec::new(),
            client_cert: None,
            ..t.clone()
        },
    ))
}

/// `check`'s line for the member-removal dialect in force (`[group] member_removal`).
fn removal_line(m: crate::scim::profile::MemberRemoval) -> String {
    use crate::scim::profile::MemberRemoval;
    let how = match m {
        MemberRemoval::Auto => {
            "the filter path members[value eq \"id\"], then the value list after a 400 or 501 (kept from then on)"
        }
        MemberRemoval::Filter => "always the filter path members[value eq \"id\"]; a refusal fails the group",
        MemberRemoval::ValueList => {
            "always the value list {\"op\":\"remove\",\"path\":\"members\",\"value\":[...]}"
        }
    };
    format!("member_removal = {}: {how}", m.word())
}

/// `check`'s line for a working OAuth2 grant.
fn grant_line(url: &str, life: Option<std::time::Duration>) -> String {
    format!(
        "client_credentials grant at {url}: token issued, {}",
        match life {
            Some(d) => format!("valid {} s (replaced before it expires)", d.as_secs()),
            None => "no lifetime given (replaced when refused)".into(),
        }
    )
}

/// The agent's credential at the hub.
fn hub_credential(
    r: &crate::app::config::RelaySettings,
) -> Result<crate::relay::hub_credential::HubCredential, String> {
    crate::relay::hub_credential::HubCredential::new(&r.auth, || {
        oauth_http(&r.ca_file, std::time::Duration::from_secs(30), &r.transport)
            .map_err(|e| e.to_string())
    })
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
                            crate::app::config::ScimSettings {
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
            let token_http = oauth_http(&c.scim.ca_file, c.scim.timeout, &c.scim.transport)
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
    let path = c.agent.state_dir.join(crate::relay::remote::CLOUD_PROFILE);
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
            let path = c.agent.state_dir.join(crate::relay::remote::CLOUD_PROFILE);
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
        adaptive: c.sync.adaptive_concurrency,
        mode: ProvisionMode {
            dry_run,
            dry_run_json: false,
            soft_match: c.sync.soft_match,
            members: member_store(c),
            member_chunk: c.sync.member_chunk,
            listing: None,
            bulk: c.sync.bulk,
        },
        quiet,
        user_delete: c.sync.user_delete,
        scope_groups: group_scope(c, profile),
        flatten: (c.sync.nested_groups == crate::app::config::NestedGroups::Flatten).then(|| {
            crate::sync::flatten::Flatten {
                base_dn: c.directory.base_dn.clone(),
                member_attributes: profile.member_attributes(),
            }
        }),
        member_read: crate::sync::member_read::choose(
            c.directory.member_reads,
            profile.kind() == ProfileKind::ActiveDirectory,
            &profile.member_attributes(),
        ),
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
