//! The config file: a raw serde shape (`deny_unknown_fields`, defaults) turned into a
//! validated [`Config`].
//!
//! Rules this module keeps:
//! * every error names the file, the key and what is allowed; a TOML or shape error names
//!   the table and key as written, with the line, says what the key holds in words, and
//!   names an unknown table as such (`config/parse_error.rs`);
//! * an error never quotes a line of the file (a password pasted into the wrong key must not
//!   reach a log), only its line number and key;
//! * secrets are read from `*_file` or `*_env` keys, never inline, and live in [`Secret`];
//! * settings that would work but leak (a plain connection to a host that is not loopback
//!   without `allow_plaintext`, a TLS client key others may read) are refused by one pass
//!   after parsing, in `config/security.rs`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::secret::Secret;
pub use crate::sync::deletes::UserDelete;

mod credentials;
mod parse_error;
mod sections;
mod security;
pub use security::plaintext_warnings;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the config was read from (for messages).
    pub path: PathBuf,
    /// `[agent]`
    pub agent: AgentConfig,
    /// `[directory]`
    pub directory: DirectorySettings,
    /// `[scope]`
    pub scope: ScopeConfig,
    /// `[scim]`
    pub scim: ScimSettings,
    /// `[sync]`
    pub sync: SyncSettings,
    /// `[queue]`
    pub queue: QueueSettings,
    /// `[relay]`: the outbound channel to the cloud (absent: no relay, always active).
    pub relay: Option<RelaySettings>,
    /// `[writeback]`: what the cloud may write through the relay (absent: nothing).
    pub writeback: crate::relay::writeback::WritePolicy,
}

/// `[relay]`: long-poll and heartbeats to the cloud side (docs/protocol.md).
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Base URL of the hub (`https://...`; `http://` to a host that is not loopback only
    /// with `allow_plaintext`).
    pub url: String,
    /// The agent's credential at the hub: a static bearer token, or OAuth2 client
    /// credentials (the same keys as `[scim]`).
    pub auth: ScimAuth,
    /// PEM file of trusted CAs; `None`: the system store.
    pub ca_file: Option<PathBuf>,
    /// The directory group this agent serves (agents of one group are interchangeable).
    pub group: String,
    /// How often a heartbeat is sent.
    pub heartbeat: Duration,
    /// Longest a long-poll is held by the hub.
    pub poll_wait: Duration,
    /// Proxy, pins, client certificate.
    pub transport: Transport,
    /// What the cloud's `set-profile` may change (`accept_profiles`, `profile_attributes`;
    /// default: nothing).
    pub profiles: crate::scim::profile_policy::ProfilePolicy,
    /// `allow_plaintext`: plain `http://` to a host that is not loopback is accepted.
    pub allow_plaintext: bool,
}

/// `[queue]`: the on-disk change queue of `run`.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// Bound on the queue's segment files, in bytes.
    pub max_bytes: u64,
}

/// `[agent]`: who this agent is and where it keeps state.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// A name for this agent (reported to the cloud).
    pub id: String,
    /// Directory for the anchor index, the queue and the lock.
    pub state_dir: PathBuf,
}

/// `[directory]`: how to reach and read the LDAP directory.
#[derive(Debug, Clone)]
pub struct DirectorySettings {
    /// `ldap://` or `ldaps://` URL.
    pub url: String,
    /// Upgrade a plain connection with StartTLS.
    pub starttls: bool,
    /// PEM file of trusted CAs; `None`: the system store.
    pub ca_file: Option<PathBuf>,
    /// DN to bind as.
    pub bind_dn: String,
    /// Bind password (from `password_file` or `password_env`).
    pub password: Secret,
    /// Naming context the agent reads.
    pub base_dn: String,
    /// Directory kind, or `Auto` to detect it from the rootDSE.
    pub kind: KindSetting,
    /// Timeout of one LDAP operation.
    pub timeout: Duration,
    /// Paged-search page size.
    pub page_size: u32,
    /// `allow_plaintext`: `ldap://` without StartTLS to a host that is not loopback is
    /// accepted.
    pub allow_plaintext: bool,
    /// `member_reads`: how group members are read; `None` (`"auto"`): ranged on Active
    /// Directory, with the entry elsewhere.
    pub member_reads: Option<crate::ldap::members::MemberRead>,
}

/// `directory.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindSetting {
    /// Detect from the rootDSE.
    Auto,
    /// Active Directory or Samba AD.
    ActiveDirectory,
    /// OpenLDAP: anchor entryUUID.
    OpenLdap,
    /// 389 Directory Server: anchor nsUniqueId (what its syncrepl names entries by).
    Ds389,
    /// Any other LDAP server.
    Generic,
}

/// `[scope]`: which objects are synced.
#[derive(Debug, Clone)]
pub struct ScopeConfig {
    /// Subtrees searched; every one lies under `directory.base_dn`.
    pub include: Vec<String>,
    /// User filter; `None`: the profile's default for the directory kind.
    pub user_filter: Option<String>,
    /// Group filter; `None`: the profile's default.
    pub group_filter: Option<String>,
    /// `scope.groups`: only these groups and their members are in scope (empty: no
    /// group-based scoping). DNs under `directory.base_dn`, each once.
    pub groups: Vec<String>,
    /// `scope.nested`: members of member groups too, transitively.
    pub nested: bool,
}

/// `[scim]`: the SCIM 2.0 endpoint.
#[derive(Debug, Clone)]
pub struct ScimSettings {
    /// Base URL (the one that holds /Users and /Groups).
    pub url: String,
    /// How requests are authenticated.
    pub auth: ScimAuth,
    /// PEM file of trusted CAs; `None`: the system store.
    pub ca_file: Option<PathBuf>,
    /// Timeout of one HTTP request.
    pub timeout: Duration,
    /// Proxy, pins, client certificate.
    pub transport: Transport,
    /// `allow_plaintext`: plain `http://` (`url`, `token_url`) to a host that is not
    /// loopback is accepted.
    pub allow_plaintext: bool,
}

/// `[scim]` and `[relay]` authentication (the SCIM layer's own type).
pub use crate::scim::oauth::Auth as ScimAuth;

/// How an HTTPS connection is made: proxy, SPKI pins, client certificate (the same keys in
/// `[scim]` and `[relay]`).
#[derive(Debug, Clone, Default)]
pub struct Transport {
    /// The proxy to use.
    pub proxy: ProxySetting,
    /// SHA-256 pins of the server's public key (`sha256/BASE64`); checked after normal
    /// verification, never instead of it.
    pub pins: Vec<[u8; 32]>,
    /// A client certificate for mutual TLS.
    pub client_cert: Option<crate::net::http::ClientCert>,
}

/// Where the proxy comes from.
#[derive(Debug, Clone, Default)]
pub enum ProxySetting {
    /// `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY` of the environment (the default).
    #[default]
    Environment,
    /// Never a proxy (`proxy = "none"`).
    Direct,
    /// The configured proxy.
    Explicit(crate::net::proxy::ProxyConfig),
}

/// `[sync]`: how the engine provisions.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    /// Requests in flight at once, at most.
    pub concurrency: usize,
    /// Whether a full pass's requests in flight adapt to the link (up to `concurrency`).
    pub adaptive_concurrency: bool,
    /// Optional profile file that overrides or adds attribute mappings.
    pub profile_file: Option<PathBuf>,
    /// Adopt an existing SCIM user with the same userName (off by default).
    pub soft_match: bool,
    /// Attempts per request before an object counts as failed.
    pub max_attempts: u32,
    /// What a user's deletion (or leaving scope) does at the endpoint.
    pub user_delete: UserDelete,
    /// Deletes allowed per `delete_interval` (and per full pass) before the rest are held
    /// for `approve-deletes`.
    pub delete_threshold: u32,
    /// The same as a share of the objects in scope, in percent (0: no share rule).
    pub delete_threshold_percent: u32,
    /// The share rule holds nothing up to this many deletes.
    pub delete_floor: u32,
    /// The window the delete threshold counts in.
    pub delete_interval: Duration,
    /// How long `run` lets a delete wait to be weighed with the rest of its burst.
    pub delete_settle: Duration,
    /// How often `run` does a full pass even when the feed seems healthy.
    pub full_pass_interval: Duration,
    /// How often polling feeds (DirSync, uSN, modifyTimestamp) ask for changes.
    pub poll_interval: Duration,
    /// Which change feed `run` follows.
    pub feed: FeedKind,
    /// Member values per PATCH request for group membership.
    pub member_chunk: usize,
    /// `bulk = "auto"`: a full pass, and `run`'s bursts of user changes, send through SCIM
    /// Bulk where the endpoint offers it; `"off"`: one request per object.
    pub bulk: bool,
    /// `sync.nested_groups`: what a group's SCIM members are.
    pub nested_groups: NestedGroups,
}

/// `sync.nested_groups`: a SCIM group's members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NestedGroups {
    /// The directory's direct members, users and groups (in scope).
    Direct,
    /// Every transitive user member; member groups are not listed.
    Flatten,
}

/// The change feed `run` follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedKind {
    /// Chosen from the directory kind and its controls.
    Auto,
    /// RFC 4533 syncrepl refreshAndPersist (OpenLDAP, 389-DS).
    Syncrepl,
    /// Active Directory DirSync (needs Replicating Directory Changes).
    DirSync,
    /// Active Directory uSNChanged polling against one DC.
    Usn,
    /// modifyTimestamp polling (any LDAP).
    Timestamp,
}

impl FeedKind {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FeedKind::Auto => "auto",
            FeedKind::Syncrepl => "syncrepl",
            FeedKind::DirSync => "dirsync",
            FeedKind::Usn => "usn",
            FeedKind::Timestamp => "timestamp",
        }
    }
}

/// Why a config could not be used.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Read {
        /// The config file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// TOML syntax or shape error (unknown key, wrong type, missing key).
    Parse {
        /// The config file.
        path: PathBuf,
        /// Line number (1-based) when known.
        line: Option<usize>,
        /// The `[table]` the error is in, when known.
        table: Option<String>,
        /// What is wrong (never the text of the line).
        message: String,
    },
    /// A key has a value that is not allowed.
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Dotted key, e.g. `directory.url`.
        key: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => {
                write!(f, "cannot read config {}: {source}", path.display())
            }
            ConfigError::Parse {
                path,
                line,
                table,
                message,
            } => {
                write!(f, "config {}", path.display())?;
                if let Some(line) = line {
                    write!(f, ", line {line}")?;
                }
                if let Some(table) = table {
                    write!(f, ", in [{table}]")?;
                }
                write!(f, ": {message}")
            }
            ConfigError::Invalid { path, key, message } => {
                write!(f, "config {}: `{key}`: {message}", path.display())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    agent: RawAgent,
    directory: RawDirectory,
    #[serde(default)]
    scope: RawScope,
    scim: RawScim,
    #[serde(default)]
    sync: RawSync,
    #[serde(default)]
    queue: RawQueue,
    relay: Option<RawRelay>,
    #[serde(default)]
    writeback: RawWriteback,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWriteback {
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    allowed_ous: Vec<String>,
    create_in: Option<String>,
    operations: Option<Vec<String>>,
    group_attributes: Option<Vec<String>>,
    #[serde(default)]
    user_attributes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelay {
    url: String,
    token_file: Option<PathBuf>,
    token_env: Option<String>,
    token_url: Option<String>,
    client_id: Option<String>,
    client_secret_file: Option<PathBuf>,
    client_secret_env: Option<String>,
    scope: Option<String>,
    client_auth: Option<String>,
    ca_file: Option<PathBuf>,
    proxy: Option<String>,
    proxy_user: Option<String>,
    proxy_password_file: Option<PathBuf>,
    proxy_password_env: Option<String>,
    #[serde(default)]
    no_proxy: Vec<String>,
    #[serde(default)]
    pin_sha256: Vec<String>,
    client_cert_file: Option<PathBuf>,
    client_key_file: Option<PathBuf>,
    group: Option<String>,
    #[serde(default = "default_heartbeat")]
    heartbeat_secs: u64,
    #[serde(default = "default_poll_wait")]
    poll_wait_secs: u64,
    #[serde(default)]
    accept_profiles: bool,
    #[serde(default)]
    profile_attributes: Vec<String>,
    #[serde(default)]
    allow_plaintext: bool,
}

fn default_heartbeat() -> u64 {
    60
}
fn default_poll_wait() -> u64 {
    30
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    #[serde(default = "default_queue_bytes")]
    max_bytes: u64,
}

impl Default for RawQueue {
    fn default() -> Self {
        RawQueue {
            max_bytes: default_queue_bytes(),
        }
    }
}

fn default_queue_bytes() -> u64 {
    crate::queue::DEFAULT_MAX_BYTES
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    id: String,
    state_dir: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDirectory {
    url: String,
    #[serde(default)]
    starttls: bool,
    ca_file: Option<PathBuf>,
    bind_dn: String,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
    base_dn: String,
    #[serde(default = "default_kind")]
    kind: String,
    #[serde(default = "default_ldap_timeout")]
    timeout_secs: u64,
    #[serde(default = "default_page_size")]
    page_size: u32,
    #[serde(default)]
    allow_plaintext: bool,
    member_reads: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawScope {
    include: Option<Vec<String>>,
    user_filter: Option<String>,
    group_filter: Option<String>,
    groups: Option<Vec<String>>,
    nested: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScim {
    url: String,
    token_file: Option<PathBuf>,
    token_env: Option<String>,
    token_url: Option<String>,
    client_id: Option<String>,
    client_secret_file: Option<PathBuf>,
    client_secret_env: Option<String>,
    scope: Option<String>,
    client_auth: Option<String>,
    ca_file: Option<PathBuf>,
    proxy: Option<String>,
    proxy_user: Option<String>,
    proxy_password_file: Option<PathBuf>,
    proxy_password_env: Option<String>,
    #[serde(default)]
    no_proxy: Vec<String>,
    #[serde(default)]
    pin_sha256: Vec<String>,
    client_cert_file: Option<PathBuf>,
    client_key_file: Option<PathBuf>,
    #[serde(default = "default_http_timeout")]
    timeout_secs: u64,
    #[serde(default)]
    allow_plaintext: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSync {
    #[serde(default = "default_concurrency")]
    concurrency: usize,
    #[serde(default = "yes")]
    adaptive_concurrency: bool,
    profile_file: Option<PathBuf>,
    #[serde(default)]
    soft_match: bool,
    #[serde(default = "default_max_attempts")]
    max_attempts: u32,
    #[serde(default = "default_user_delete")]
    user_delete: String,
    #[serde(default = "default_delete_threshold")]
    delete_threshold: u32,
    #[serde(default = "default_delete_threshold_percent")]
    delete_threshold_percent: u32,
    #[serde(default = "default_delete_floor")]
    delete_floor: u32,
    #[serde(default = "default_delete_interval")]
    delete_interval_secs: u64,
    #[serde(default = "default_delete_settle")]
    delete_settle_secs: u64,
    #[serde(default = "default_full_pass_interval")]
    full_pass_interval_secs: u64,
    #[serde(default = "default_poll_interval")]
    poll_interval_secs: u64,
    #[serde(default = "default_kind")]
    feed: String,
    #[serde(default = "default_member_chunk")]
    member_chunk: usize,
    #[serde(default = "default_kind")]
    bulk: String,
    nested_groups: Option<String>,
}

impl Default for RawSync {
    fn default() -> Self {
        RawSync {
            concurrency: default_concurrency(),
            adaptive_concurrency: true,
            profile_file: None,
            soft_match: false,
            max_attempts: default_max_attempts(),
            user_delete: default_user_delete(),
            delete_threshold: default_delete_threshold(),
            delete_threshold_percent: default_delete_threshold_percent(),
            delete_floor: default_delete_floor(),
            delete_interval_secs: default_delete_interval(),
            delete_settle_secs: default_delete_settle(),
            full_pass_interval_secs: default_full_pass_interval(),
            poll_interval_secs: default_poll_interval(),
            feed: default_kind(),
            member_chunk: default_member_chunk(),
            bulk: default_kind(),
            nested_groups: None,
        }
    }
}

fn default_user_delete() -> String {
    "deactivate".into()
}
fn default_delete_threshold() -> u32 {
    500
}
fn default_delete_threshold_percent() -> u32 {
    10
}
fn default_delete_floor() -> u32 {
    5
}
fn default_delete_interval() -> u64 {
    3600
}
fn default_delete_settle() -> u64 {
    30
}
fn default_full_pass_interval() -> u64 {
    86_400
}
fn default_poll_interval() -> u64 {
    5
}
fn default_member_chunk() -> usize {
    100
}
fn yes() -> bool {
    true
}

fn default_kind() -> String {
    "auto".into()
}
fn default_ldap_timeout() -> u64 {
    60
}
fn default_page_size() -> u32 {
    500
}
fn default_http_timeout() -> u64 {
    30
}
fn default_concurrency() -> usize {
    32
}
fn default_max_attempts() -> u32 {
    5
}

/// Where secrets come from; a seam so tests need no real environment.
pub trait SecretSource {
    /// Reads a secret file (whole content).
    fn read_file(&self, path: &Path) -> std::io::Result<String>;
    /// Reads an environment variable.
    fn var(&self, name: &str) -> Option<String>;
}

/// The real files and environment.
pub struct System;

impl SecretSource for System {
    fn read_file(&self, path: &Path) -> std::io::Result<String> {
        // A secret others can read is refused before it is read (the error names the
        // file, its mode and the chmod that fixes it).
        crate::privilege::check_secret_file(path).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::PermissionDenied, e.to_string())
        })?;
        std::fs::read_to_string(path)
    }
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let c = Config::parse(path, &text, &System)?;
        security::check_key_files(&c)?;
        if let Some(profile) = &c.sync.profile_file {
            check_profile_file(profile).map_err(|message| ConfigError::Invalid {
                path: path.to_path_buf(),
                key: "sync.profile_file",
                message,
            })?;
        }
        Ok(c)
    }

    /// Validates config text; `path` is only used in messages and to resolve nothing else.
    pub fn parse(
        path: &Path,
        text: &str,
        secrets: &dyn SecretSource,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| parse_error(path, text, &e))?;
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };

        let cx = sections::Cx { path, secrets };
        let agent = cx.agent(raw.agent)?;
        let directory = cx.directory(raw.directory)?;
        let scope = cx.scope(raw.scope, &directory.base_dn)?;
        let scim = cx.scim(raw.scim)?;
        let sync = cx.sync(raw.sync)?;
        let queue = cx.queue(raw.queue)?;
        let relay = match raw.relay {
            None => None,
            Some(r) => Some(cx.relay(r, &agent.id)?),
        };
        let writeback = writeback_policy(raw.writeback, &scope.include)
            .map_err(|(key, message)| invalid(key, message))?;
        let config = Config {
            path: path.to_path_buf(),
            agent,
            directory,
            scope,
            scim,
            sync,
            queue,
            relay,
            writeback,
        };
        security::validate(path, &config)?;
        Ok(config)
    }
}

/// `sync.nested_groups` (pure): `direct` (the default) or `flatten`.
fn nested_groups(v: Option<&str>) -> Result<NestedGroups, String> {
    match v.map(str::trim) {
        None | Some("direct") => Ok(NestedGroups::Direct),
        Some("flatten") => Ok(NestedGroups::Flatten),
        Some(other) => Err(format!("`{other}` is not one of: direct, flatten")),
    }
}

/// Validates `scope.groups` and `scope.nested` (pure): DNs under `base_dn`, each once
/// (compared normalised), at least one when the key is given, and `nested` only with
/// groups. An error is (key, message).
fn scope_groups(
    groups: Option<Vec<String>>,
    nested: Option<bool>,
    base_dn: &str,
) -> Result<(Vec<String>, bool), (&'static str, String)> {
    let Some(list) = groups else {
        if nested.is_some() {
            return Err((
                "scope.nested",
                "has no effect without scope.groups (list the groups whose members are in scope)"
                    .into(),
            ));
        }
        return Ok((Vec::new(), false));
    };
    if list.is_empty() {
        return Err((
            "scope.groups",
            "must list at least one group DN (leave the key out to scope by subtree and filters only)"
                .into(),
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for g in list {
        let g = g.trim().to_string();
        if !looks_like_dn(&g) || !dn_is_under(&g, base_dn) {
            return Err((
                "scope.groups",
                format!("`{g}` is not a DN under directory.base_dn `{base_dn}`"),
            ));
        }
        let n = crate::ldap::dn::normalize(&g);
        if !out.iter().any(|x| crate::ldap::dn::normalize(x) == n) {
            out.push(g);
        }
    }
    Ok((out, nested.unwrap_or(false)))
}

/// `relay.accept_profiles` and `relay.profile_attributes` (pure): attribute names, none
/// password-like, and only with `accept_profiles`.
fn profile_policy(
    accept: bool,
    attributes: Vec<String>,
) -> Result<crate::scim::profile_policy::ProfilePolicy, String> {
    use crate::scim::profile_policy::{is_password_like, ProfilePolicy};
    let mut extra: Vec<String> = Vec::new();
    for a in attributes {
        let a = a.trim().to_string();
        if !crate::scim::profile::is_attribute_name(&a) {
            return Err(format!(
                "`{a}` is not an LDAP attribute name (letters, digits and '-' starting with a letter, or a numeric OID)"
            ));
        }
        if is_password_like(&a) {
            return Err(format!(
                "`{a}` is a password-like attribute; no profile may read it (built-in deny-list)"
            ));
        }
        if !extra.iter().any(|x| x.eq_ignore_ascii_case(&a)) {
            extra.push(a);
        }
    }
    if !accept && !extra.is_empty() {
        return Err(
            "has no effect unless relay.accept_profiles = true (only profiles the cloud pushes are bounded by it)"
                .into(),
        );
    }
    Ok(ProfilePolicy {
        accept,
        extra_attributes: extra,
    })
}

/// Reads `sync.profile_file` and checks it: valid, and reading no password-like attribute.
fn check_profile_file(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    match crate::scim::profile_policy::password_like_in_overrides(&text) {
        Err(e) => Err(format!("{}: {e}", path.display())),
        Ok(Some((key, attribute))) => Err(format!(
            "{}: profile key {key}: `{attribute}` is a password-like attribute, which idrelay never reads (built-in deny-list)",
            path.display()
        )),
        Ok(None) => Ok(()),
    }
}

/// Validates `[writeback]` (pure); an error is (key, message).
fn writeback_policy(
    w: RawWriteback,
    include: &[String],
) -> Result<crate::relay::writeback::WritePolicy, (&'static str, String)> {
    use crate::relay::writeback::{canonical_attribute, WritePolicy, DEFAULT_GROUP_ATTRIBUTES};
    use crate::scim::ResourceKind;
    let mut p = WritePolicy::default();
    for r in &w.resources {
        match r.trim() {
            "groups" => p.groups = true,
            "users" => p.users = true,
            other => {
                return Err((
                    "writeback.resources",
                    format!("`{other}` is not one of: groups, users"),
                ))
            }
        }
    }
    for ou in &w.allowed_ous {
        let ou = ou.trim().to_string();
        if !looks_like_dn(&ou) || !include.iter().any(|i| dn_is_under(&ou, i)) {
            return Err((
                "writeback.allowed_ous",
                format!(
                    "`{ou}` is not a DN inside scope.include ({})",
                    include.join("; ")
                ),
            ));
        }
        p.allowed_ous.push(ou);
    }
    if p.allows_any() && p.allowed_ous.is_empty() {
        return Err((
            "writeback.allowed_ous",
            "must list at least one subtree when writeback.resources is set: writes happen only inside these".into(),
        ));
    }
    p.create_in = match w.create_in.map(|c| c.trim().to_string()) {
        Some(c) => {
            if !looks_like_dn(&c) || !p.allowed_ous.iter().any(|ou| dn_is_under(&c, ou)) {
                return Err((
                    "writeback.create_in",
                    format!("`{c}` is not a DN inside writeback.allowed_ous"),
                ));
            }
            Some(c)
        }
        None => p.allowed_ous.first().cloned(),
    };
    let ops = w
        .operations
        .unwrap_or_else(|| vec!["create".into(), "update".into(), "delete".into()]);
    for o in &ops {
        match o.trim() {
            "create" => p.create = true,
            "update" => p.update = true,
            "delete" => p.delete = true,
            other => {
                return Err((
                    "writeback.operations",
                    format!("`{other}` is not one of: create, update, delete"),
                ))
            }
        }
    }
    let group_attributes = w.group_attributes.unwrap_or_else(|| {
        DEFAULT_GROUP_ATTRIBUTES
            .iter()
            .map(|a| a.to_string())
            .collect()
    });
    for (key, kind, list, out) in [
        (
            "writeback.group_attributes",
            ResourceKind::Group,
            &group_attributes,
            &mut p.group_attributes,
        ),
        (
            "writeback.user_attributes",
            ResourceKind::User,
            &w.user_attributes,
            &mut p.user_attributes,
        ),
    ] {
        for a in list {
            let allowed = match kind {
                ResourceKind::Group => crate::relay::writeback::GROUP_ATTRIBUTES,
                ResourceKind::User => crate::relay::writeback::USER_ATTRIBUTES,
            };
            match canonical_attribute(kind, a.trim()) {
                Some(c) => {
                    if !out.iter().any(|x| x == c) {
                        out.push(c.to_string());
                    }
                }
                None => {
                    return Err((
                        key,
                        format!(
                            "`{a}` cannot be written back; allowed: {}",
                            allowed.join(", ")
                        ),
                    ))
                }
            }
        }
    }
    if !p.users && !p.user_attributes.is_empty() {
        return Err((
            "writeback.user_attributes",
            "needs `users` in writeback.resources (users are never written unless listed there)"
                .into(),
        ));
    }
    Ok(p)
}

/// The transport keys of one table (`[scim]` or `[relay]`).
struct RawTransport<'a> {
    table: &'static str,
    proxy: Option<&'a str>,
    proxy_user: Option<&'a str>,
    proxy_password_file: Option<&'a Path>,
    proxy_password_env: Option<&'a str>,
    no_proxy: &'a [String],
    pin_sha256: &'a [String],
    client_cert_file: Option<&'a Path>,
    client_key_file: Option<&'a Path>,
}

fn transport(
    path: &Path,
    src: &dyn SecretSource,
    t: RawTransport<'_>,
) -> Result<Transport, ConfigError> {
    let key = |k: &str| -> &'static str {
        // The keys are static per table; leak-free mapping through a match.
        match (t.table, k) {
            ("scim", "proxy") => "scim.proxy",
            ("scim", "pin") => "scim.pin_sha256",
            ("scim", "cert") => "scim.client_cert_file",
            ("relay", "proxy") => "relay.proxy",
            ("relay", "pin") => "relay.pin_sha256",
            _ => "relay.client_cert_file",
        }
    };
    let invalid = |k: &'static str, message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        key: k,
        message,
    };
    let proxy = match t.proxy.map(str::trim) {
        None | Some("") => {
            if t.proxy_user.is_some()
                || t.proxy_password_file.is_some()
                || t.proxy_password_env.is_some()
            {
                return Err(invalid(
                    key("proxy"),
                    "proxy_user / proxy_password_* need `proxy`".into(),
                ));
            }
            ProxySetting::Environment
        }
        Some("none") => ProxySetting::Direct,
        Some(url) => {
            let mut p = crate::net::proxy::ProxyConfig::parse(url, key("proxy"))
                .map_err(|e| invalid(key("proxy"), e.to_string()))?;
            if let Some(user) = t.proxy_user {
                let (fk, ek) = if t.table == "scim" {
                    ("scim.proxy_password_file", "scim.proxy_password_env")
                } else {
                    ("relay.proxy_password_file", "relay.proxy_password_env")
                };
                let pw = read_secret(
                    path,
                    src,
                    (fk, t.proxy_password_file),
                    (ek, t.proxy_password_env),
                )?;
                let auth = crate::net::proxy::ProxyAuth::new(user, pw)
                    .map_err(|e| invalid(key("proxy"), e.to_string()))?;
                p = p.with_auth(auth);
            }
            if !t.no_proxy.is_empty() {
                p = p.with_no_proxy(crate::net::proxy::NoProxy::parse(&t.no_proxy.join(",")));
            }
            ProxySetting::Explicit(p)
        }
    };
    let pins = t
        .pin_sha256
        .iter()
        .map(|p| crate::net::http::parse_pin(p).map_err(|e| invalid(key("pin"), e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let client_cert = match (t.client_cert_file, t.client_key_file) {
        (None, None) => None,
        (Some(c), Some(k)) => Some(crate::net::http::ClientCert {
            cert_file: c.to_path_buf(),
            key_file: k.to_path_buf(),
        }),
        _ => {
            return Err(invalid(
                key("cert"),
                "set both client_cert_file and client_key_file, or neither".into(),
            ))
        }
    };
    Ok(Transport {
        proxy,
        pins,
        client_cert,
    })
}

/// Reads a secret from exactly one of a file key and an env key.
fn read_secret(
    path: &Path,
    src: &dyn SecretSource,
    file: (&'static str, Option<&Path>),
    env: (&'static str, Option<&str>),
) -> Result<Secret, ConfigError> {
    let invalid = |key: &'static str, message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        key,
        message,
    };
    let value = match (file.1, env.1) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                file.0,
                format!("set either `{}` or `{}`, not both", file.0, env.0),
            ))
        }
        (None, None) => {
            return Err(invalid(
                file.0,
                format!(
                "missing: set `{}` (a file holding the secret) or `{}` (an environment variable)",
                file.0, env.0
            ),
            ))
        }
        (Some(p), None) => src
            .read_file(p)
            .map_err(|e| invalid(file.0, format!("cannot read {}: {e}", p.display())))?,
        (None, Some(name)) => src
            .var(name)
            .ok_or_else(|| invalid(env.0, format!("environment variable {name} is not set")))?,
    };
    // A trailing newline is an artefact of `echo secret > file`, never part of the secret.
    let value = value.trim_end_matches(['\n', '\r']).to_string();
    if value.is_empty() {
        let key = if file.1.is_some() { file.0 } else { env.0 };
        return Err(invalid(key, "the secret is empty".into()));
    }
    Ok(Secret::new(value))
}

/// A cheap shape check: `attr=value` components separated by commas.
fn looks_like_dn(dn: &str) -> bool {
    !dn.is_empty()
        && crate::ldap::dn::split_rdns(dn).iter().all(|rdn| {
            rdn.split_once('=')
                .is_some_and(|(a, v)| !a.trim().is_empty() && !v.trim().is_empty())
        })
}

/// Whether `dn` equals `base` or lies below it (case-insensitive, spacing-insensitive).
fn dn_is_under(dn: &str, base: &str) -> bool {
    crate::ldap::dn::is_under(
        &crate::ldap::dn::normalize(dn),
        &crate::ldap::dn::normalize(base),
    )
}

/// Turns a toml error into a message with a line number, the table and key as written, and
/// what is allowed in words (`parse_error::explain`), without quoting the line.
fn parse_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let x = parse_error::explain(text, e.span(), e.message());
    ConfigError::Parse {
        path: path.to_path_buf(),
        line: x.line,
        table: x.table,
        message: x.message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::oauth::ClientAuth;
    use std::collections::HashMap;

    pub(super) struct Fake(HashMap<String, String>);
    impl SecretSource for Fake {
        fn read_file(&self, path: &Path) -> std::io::Result<String> {
            self.0
                .get(path.to_str().unwrap())
                .cloned()
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "not found"))
        }
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).cloned()
        }
    }

    pub(super) fn secrets() -> Fake {
        Fake(HashMap::from([
            ("/s/ldap".to_string(), "pw-ldap\n".to_string()),
            ("/s/scim".to_string(), "tok-scim".to_string()),
            ("TOKEN".to_string(), "tok-env".to_string()),
        ]))
    }

    pub(super) const GOOD: &str = r#"
[agent]
id = "branch-01"
state_dir = "/var/lib/idrelay"
[directory]
url = "ldap://127.0.0.1:3389"
bind_dn = "cn=syncer,dc=branch,dc=test"
password_file = "/s/ldap"
base_dn = "dc=branch,dc=test"
[scope]
include = ["ou=Staff, DC=Branch,dc=test"]
[scim]
url = "http://127.0.0.1:8080/v2/"
token_file = "/s/scim"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("idrelay.toml"), text, &secrets())
    }

    #[test]
    fn nested_groups_is_direct_or_flatten() {
        assert_eq!(nested_groups(None).unwrap(), NestedGroups::Direct);
        assert_eq!(
            nested_groups(Some("flatten")).unwrap(),
            NestedGroups::Flatten
        );
        let e = nested_groups(Some("deep")).unwrap_err();
        assert!(e.contains("deep") && e.contains("flatten"), "{e}");
    }

    #[test]
    fn scope_groups_are_dns_under_the_base_each_once_and_nested_needs_them() {
        let base = "dc=branch,dc=test";
        let g = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(scope_groups(None, None, base).unwrap(), (vec![], false));
        let (list, nested) = scope_groups(
            g(&[
                "cn=A,ou=g,dc=branch,dc=test",
                " CN=a, ou=G,DC=branch,dc=test ",
            ]),
            Some(true),
            base,
        )
        .unwrap();
        assert_eq!((list.len(), nested), (1, true));
        for (groups, nested, key, needle) in [
            (g(&[]), None, "scope.groups", "at least one"),
            (g(&["cn=x,dc=other"]), None, "scope.groups", "cn=x,dc=other"),
            (g(&["not a dn"]), None, "scope.groups", "not a dn"),
            (None, Some(false), "scope.nested", "scope.groups"),
        ] {
            let (k, m) = scope_groups(groups, nested, base).unwrap_err();
            assert_eq!(k, key);
            assert!(m.contains(needle), "{m}");
        }
    }

    #[test]
    fn good_config_gets_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.directory.password.expose(), "pw-ldap");
        assert!(matches!(&c.scim.auth, ScimAuth::Bearer(t) if t.expose() == "tok-scim"));
        assert_eq!(c.scim.url, "http://127.0.0.1:8080/v2");
        assert_eq!(c.directory.kind, KindSetting::Auto);
        assert_eq!(c.directory.member_reads, None);
        assert_eq!(c.sync.concurrency, 32);
        assert!(c.sync.adaptive_concurrency);
        let fixed = parse(&format!("{GOOD}[sync]\nadaptive_concurrency = false\n")).unwrap();
        assert!(!fixed.sync.adaptive_concurrency);
        assert_eq!(c.scope.include, vec!["ou=Staff, DC=Branch,dc=test"]);
    }

    #[test]
    fn sync_keys_for_feeds_and_deletes_have_defaults_and_bounds() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.sync.feed, FeedKind::Auto);
        assert_eq!(c.sync.user_delete, UserDelete::Deactivate);
        assert_eq!(c.sync.delete_threshold, 500);
        assert_eq!(c.sync.delete_interval, Duration::from_secs(3600));
        assert_eq!(c.sync.delete_settle, Duration::from_secs(30));
        assert_eq!(c.sync.full_pass_interval, Duration::from_secs(86_400));
        assert_eq!(c.sync.poll_interval, Duration::from_secs(5));
        assert_eq!(c.sync.member_chunk, 100);
        assert!(c.sync.bulk);
        let with = |extra: &str| parse(&format!("{GOOD}[sync]\n{extra}\n"));
        assert!(!with("bulk = \"off\"").unwrap().sync.bulk);
        let c = with("feed = \"dirsync\"\nuser_delete = \"delete\"\ndelete_threshold = 0").unwrap();
        assert_eq!(c.sync.feed, FeedKind::DirSync);
        assert_eq!(c.sync.user_delete, UserDelete::Delete);
        assert_eq!(c.sync.delete_threshold, 0);
        for (bad, key) in [
            ("feed = \"inotify\"", "sync.feed"),
            ("user_delete = \"purge\"", "sync.user_delete"),
            ("delete_interval_secs = 5", "sync.delete_interval_secs"),
            ("delete_settle_secs = 3601", "sync.delete_settle_secs"),
            (
                "full_pass_interval_secs = 60",
                "sync.full_pass_interval_secs",
            ),
            ("poll_interval_secs = 0", "sync.poll_interval_secs"),
            ("member_chunk = 0", "sync.member_chunk"),
            ("bulk = \"on\"", "sync.bulk"),
        ] {
            let e = with(bad).unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
        assert_eq!(
            with("full_pass_interval_secs = 0")
                .unwrap()
                .sync
                .full_pass_interval,
            Duration::ZERO
        );
    }

    #[test]
    fn unknown_key_is_named_with_line_and_table_but_not_quoted() {
        let text = GOOD.replace(
            "base_dn = \"dc=branch,dc=test\"",
            "base_dn = \"dc=branch,dc=test\"\npassword = \"hunter2\"",
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.contains("unknown key `password`: [directory] takes url, "),
            "{e}"
        );
        assert!(e.contains("line 10"), "{e}");
        assert!(e.contains("[directory]"), "{e}");
        assert!(
            !e.contains("hunter2"),
            "the line's text must not be quoted: {e}"
        );
    }

    #[test]
    fn include_outside_base_is_refused() {
        let text = GOOD.replace("ou=Staff, DC=Branch,dc=test", "ou=Staff,dc=other,dc=test");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("scope.include") && e.contains("dc=other"), "{e}");
    }

    #[test]
    fn oauth2_client_credentials_are_checked_and_exclude_a_static_token() {
        let oauth = |keys: &str| {
            let text = GOOD.replace("token_file = \"/s/scim\"", keys);
            parse(&text)
        };
        let c = oauth(
            "token_url = \"https://idp.example/oauth/token\"\nclient_id = \"agent\"\nclient_secret_env = \"TOKEN\"\nscope = \"scim\"",
        )
        .unwrap();
        match &c.scim.auth {
            ScimAuth::ClientCredentials(cc) => {
                assert_eq!(cc.token_url.as_str(), "https://idp.example/oauth/token");
                assert_eq!(cc.client_id, "agent");
                assert_eq!(cc.client_secret.expose(), "tok-env");
                assert_eq!(cc.scope.as_deref(), Some("scim"));
                assert_eq!(cc.auth, ClientAuth::Basic);
            }
            other => panic!("{other:?}"),
        }
        let post = oauth(
            "token_url = \"http://127.0.0.1:9/token\"\nclient_id = \"a\"\nclient_secret_file = \"/s/scim\"\nclient_auth = \"client_secret_post\"",
        )
        .unwrap();
        assert!(
            matches!(&post.scim.auth, ScimAuth::ClientCredentials(cc) if cc.auth == ClientAuth::Post)
        );
        let refused = |keys: &str, key: &str, says: &str| {
            let e = oauth(keys).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(says), "{keys}: {e}");
            assert!(!e.contains("tok-env") && !e.contains("tok-scim"), "{e}");
        };
        let good =
            "token_url = \"https://idp/t\"\nclient_id = \"a\"\nclient_secret_env = \"TOKEN\"";
        refused(
            &format!("{good}\ntoken_file = \"/s/scim\""),
            "scim.token_file",
            "exclude each other",
        );
        refused(
            &good.replace("https://idp/t", "http://idp.example/t"),
            "scim.token_url",
            "in clear",
        );
        refused(
            &good.replace("https://idp/t", "https://u:p@idp/t"),
            "scim.token_url",
            "credentials",
        );
        refused(
            &good.replace("client_id = \"a\"\n", ""),
            "scim.client_id",
            "missing",
        );
        refused(
            &good.replace("client_secret_env = \"TOKEN\"", ""),
            "scim.client_secret_file",
            "missing",
        );
        refused(
            &format!("{good}\nclient_auth = \"private_key_jwt\""),
            "scim.client_auth",
            "client_secret_basic",
        );
        refused(
            "token_file = \"/s/scim\"\nclient_id = \"a\"",
            "scim.client_id",
            "needs scim.token_url",
        );
    }

    #[test]
    fn relay_takes_oauth2_client_credentials_with_its_own_key_names() {
        let relay = |keys: &str| {
            parse(&format!(
                "{GOOD}\n[relay]\nurl = \"https://hub.example\"\n{keys}\n"
            ))
        };
        let c = relay(
            "token_url = \"https://idp.example/token\"\nclient_id = \"agent\"\nclient_secret_env = \"TOKEN\"\nclient_auth = \"client_secret_post\"\nscope = \"relay\"",
        )
        .unwrap();
        match &c.relay.as_ref().unwrap().auth {
            ScimAuth::ClientCredentials(cc) => {
                assert_eq!(cc.client_id, "agent");
                assert_eq!(cc.client_secret.expose(), "tok-env");
                assert_eq!(cc.auth, ClientAuth::Post);
                assert_eq!(cc.scope.as_deref(), Some("relay"));
            }
            other => panic!("{other:?}"),
        }
        let static_token = relay("token_file = \"/s/scim\"").unwrap();
        assert!(matches!(
            &static_token.relay.unwrap().auth,
            ScimAuth::Bearer(_)
        ));
        for (keys, key, says) in [
            (
                "token_url = \"https://idp/t\"\nclient_secret_env = \"TOKEN\"",
                "relay.client_id",
                "needs the client's id",
            ),
            (
                "token_file = \"/s/scim\"\nscope = \"x\"",
                "relay.scope",
                "needs relay.token_url",
            ),
            (
                "token_url = \"https://idp/t\"\nclient_id = \"a\"\nclient_secret_env = \"TOKEN\"\ntoken_file = \"/s/scim\"",
                "relay.token_file",
                "exclude each other",
            ),
            (
                "token_url = \"http://idp.example/t\"\nclient_id = \"a\"\nclient_secret_env = \"TOKEN\"",
                "relay.token_url",
                "in clear",
            ),
        ] {
            let e = relay(keys).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(says), "{keys}: {e}");
            assert!(!e.contains("tok-env"), "{e}");
        }
    }

    #[test]
    fn both_or_neither_secret_source_is_refused() {
        let both = GOOD.replace(
            "token_file = \"/s/scim\"",
            "token_file = \"/s/scim\"\ntoken_env = \"TOKEN\"",
        );
        assert!(parse(&both).unwrap_err().to_string().contains("not both"));
        let neither = GOOD.replace("token_file = \"/s/scim\"", "");
        assert!(parse(&neither)
            .unwrap_err()
            .to_string()
            .contains("scim.token_file"));
        let env = GOOD.replace("token_file = \"/s/scim\"", "token_env = \"TOKEN\"");
        assert!(
            matches!(&parse(&env).unwrap().scim.auth, ScimAuth::Bearer(t) if t.expose() == "tok-env")
        );
        let unset = GOOD.replace("token_file = \"/s/scim\"", "token_env = \"NOPE\"");
        assert!(parse(&unset)
            .unwrap_err()
            .to_string()
            .contains("NOPE is not set"));
    }

    #[test]
    fn bad_values_name_key_and_allowed_values() {
        let cases = [
            (
                "url = \"ldap://127.0.0.1:3389\"",
                "url = \"http://x\"",
                "directory.url",
            ),
            (
                "base_dn = \"dc=branch,dc=test\"",
                "base_dn = \"dc=branch,dc=test\"\nkind = \"novell\"",
                "active-directory",
            ),
            (
                "url = \"ldap://127.0.0.1:3389\"",
                "url = \"ldaps://h\"\nstarttls = true",
                "directory.starttls",
            ),
            (
                "[scope]",
                "[scope]\nuser_filter = \"objectClass=user\"",
                "scope.user_filter",
            ),
            (
                "[scope]",
                "[scope]\ngroup_filter = \"(|(a=b)\"",
                "unbalanced",
            ),
            ("id = \"branch-01\"", "id = \"bad id!\"", "agent.id"),
            (
                "base_dn = \"dc=branch,dc=test\"",
                "base_dn = \"dc=branch,dc=test\"\nmember_reads = \"memberof\"",
                "directory.member_reads",
            ),
        ];
        for (from, to, want) in cases {
            let e = parse(&GOOD.replace(from, to)).unwrap_err().to_string();
            assert!(e.contains(want), "{to}: {e}");
        }
    }

    #[test]
    fn member_reads_takes_each_way() {
        use crate::ldap::members::MemberRead;
        for (v, want) in [
            ("auto", None),
            ("entry", Some(MemberRead::Entry)),
            ("ranged", Some(MemberRead::Ranged)),
            ("member_of", Some(MemberRead::MemberOf)),
        ] {
            let text = GOOD.replace(
                "base_dn = \"dc=branch,dc=test\"",
                &format!("base_dn = \"dc=branch,dc=test\"\nmember_reads = \"{v}\""),
            );
            assert_eq!(parse(&text).unwrap().directory.member_reads, want, "{v}");
        }
    }

    #[test]
    fn writeback_is_off_by_default_and_validated_key_by_key() {
        let c = parse(GOOD).unwrap();
        assert!(!c.writeback.allows_any());
        let ou = "ou=wb,ou=Staff,dc=branch,dc=test";
        let with = |extra: &str| parse(&format!("{GOOD}[writeback]\n{extra}\n"));
        let c = with(&format!(
            "resources = [\"groups\"]\nallowed_ous = [\"{ou}\"]"
        ))
        .unwrap();
        let w = &c.writeback;
        assert!(w.groups && !w.users && w.create && w.update && w.delete);
        assert_eq!(w.create_in.as_deref(), Some(ou));
        assert_eq!(w.group_attributes, vec!["displayName", "members"]);
        let c = with(&format!(
            "resources = [\"groups\", \"users\"]\nallowed_ous = [\"{ou}\"]\ncreate_in = \"ou=new,{ou}\"\noperations = [\"update\"]\ngroup_attributes = [\"MEMBERS\", \"description\"]\nuser_attributes = [\"title\", \"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department\"]"
        ))
        .unwrap();
        let w = &c.writeback;
        assert!(w.users && !w.create && w.update && !w.delete);
        assert_eq!(w.group_attributes, vec!["members", "description"]);
        assert_eq!(w.user_attributes, vec!["title", "department"]);
        for (bad, key) in [
            ("resources = [\"computers\"]".to_string(), "writeback.resources"),
            ("resources = [\"groups\"]".to_string(), "writeback.allowed_ous"),
            (
                "resources = [\"groups\"]\nallowed_ous = [\"ou=x,dc=elsewhere\"]".to_string(),
                "writeback.allowed_ous",
            ),
            (
                format!("resources = [\"groups\"]\nallowed_ous = [\"{ou}\"]\ncreate_in = \"ou=Staff,dc=branch,dc=test\""),
                "writeback.create_in",
            ),
            (
                format!("resources = [\"groups\"]\nallowed_ous = [\"{ou}\"]\noperations = [\"move\"]"),
                "writeback.operations",
            ),
            (
                format!("resources = [\"groups\"]\nallowed_ous = [\"{ou}\"]\ngroup_attributes = [\"owner\"]"),
                "writeback.group_attributes",
            ),
            (
                format!("resources = [\"groups\"]\nallowed_ous = [\"{ou}\"]\nuser_attributes = [\"title\"]"),
                "writeback.user_attributes",
            ),
            ("bogus = 1".to_string(), "unknown key `bogus`: [writeback] takes"),
        ] {
            let e = with(&bad).unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn cloud_profiles_are_refused_by_default_and_their_keys_validated() {
        let relay = "[relay]\nurl = \"http://127.0.0.1:9\"\ntoken_env = \"TOKEN\"\n";
        let c = parse(&format!("{GOOD}{relay}")).unwrap();
        let p = &c.relay.unwrap().profiles;
        assert!(!p.accept && p.extra_attributes.is_empty());
        let c = parse(&format!(
            "{GOOD}{relay}accept_profiles = true\nprofile_attributes = [\"description\", \"Description\", \"l\"]\n"
        ))
        .unwrap();
        let p = &c.relay.unwrap().profiles;
        assert!(p.accept);
        assert_eq!(p.extra_attributes, vec!["description", "l"]);
        for (extra, want) in [
            (
                "accept_profiles = true\nprofile_attributes = [\"userPassword\"]",
                "password-like",
            ),
            (
                "accept_profiles = true\nprofile_attributes = [\"msLAPS-Password\"]",
                "password-like",
            ),
            (
                "accept_profiles = true\nprofile_attributes = [\"a b\"]",
                "not an LDAP attribute",
            ),
            ("profile_attributes = [\"description\"]", "accept_profiles"),
        ] {
            let e = parse(&format!("{GOOD}{relay}{extra}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("relay.profile_attributes") && e.contains(want),
                "{extra}: {e}"
            );
        }
    }

    #[test]
    fn a_local_profile_that_reads_a_password_is_refused_naming_the_key() {
        let dir = std::env::temp_dir().join(format!("idrelay-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("profile.toml");
        std::fs::write(&f, "[user.attributes]\nnickName = \"userPassword\"\n").unwrap();
        let e = check_profile_file(&f).unwrap_err();
        assert!(
            e.contains("user.attributes.\"nickName\"")
                && e.contains("userPassword")
                && e.contains("password-like"),
            "{e}"
        );
        std::fs::write(&f, "[user.attributes]\nnickName = \"cn\"\n").unwrap();
        check_profile_file(&f).unwrap();
        std::fs::write(&f, "[user").unwrap();
        assert!(check_profile_file(&f).unwrap_err().contains("profile.toml"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_table_is_reported() {
        let e = parse("[agent]\nid=\"a\"\nstate_dir=\"/x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("the table [directory] is missing"), "{e}");
    }
}
