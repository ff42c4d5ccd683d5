//! The hub's config file (TOML), read in two stages: a raw serde shape with
//! `deny_unknown_fields`, then a validated [`HubConfig`] whose errors name the key.
//!
//! Invariants:
//! * The hub listens on a loopback address unless `allow_public = true` says otherwise.
//! * Every token is unique: no two agents share one, no agent token equals an operator
//!   token, and no two operator tokens are the same, whatever their roles (an agent must
//!   never be able to act as an operator or as another agent, and a token has one role).
//! * Operator tokens have a role ([`Role`]): `operator_token_file` is `admin`, each
//!   `[[operator]]` names its own.
//! * Every token carries at least 128 bits by its length: 32 characters when it is all hex
//!   digits, 22 otherwise (base64); see [`check_strength`].
//! * Secrets are read from files only, a trailing newline trimmed, and never printed
//!   ([`Secret`] redacts itself; errors name the key and the file, never the contents).
//!   A token file that its group or others may access is refused (chmod 600).
//! * A plain-HTTP listener on a non-loopback address needs `allow_plaintext = true`
//!   (tokens would cross the network in clear); the hub then warns at every start.
//! * `tls_cert_file` and `tls_key_file` come together; the pair is loaded and checked (key
//!   matches certificate) here, so a bad pair stops the start, not the first handshake.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_rustls::rustls;
use serde::Deserialize;

use crate::secret::Secret;

/// Default `listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8460";
/// Default `max_connections`: 10,000 agents with a held poll and a second connection
/// (responses, heartbeat) each, plus room for operators and for connections not yet
/// authenticated.
pub const DEFAULT_MAX_CONNECTIONS: usize = 25_000;
/// Default `max_connections_per_address`.
pub const DEFAULT_MAX_PER_ADDRESS: usize = 256;
/// Default `state_dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/idrelay-hub";
/// Fewest characters of a token made of hex digits only (4 bits each: 128 bits).
pub const MIN_HEX_TOKEN: usize = 32;
/// Fewest characters of any other token (base64, 6 bits each: 132 bits).
pub const MIN_TOKEN: usize = 22;

/// What an operator token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything: the agents' status, commands, command answers, the SCIM forwarder.
    Admin,
    /// Looking only: `GET /v1/agents` and `GET /v1/requests/{id}`.
    Read,
}

impl Role {
    /// The role's name in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Read => "read",
        }
    }
}

/// One operator token and its role.
#[derive(Debug, Clone)]
pub struct OperatorEntry {
    /// The bearer token.
    pub token: Secret,
    /// What it may do.
    pub role: Role,
}

/// One configured agent.
#[derive(Debug, Clone)]
pub struct AgentEntry {
    /// The agent id (`agent.id` in the agent's config).
    pub id: String,
    /// How the agent proves itself.
    pub auth: AgentAuth,
    /// The directory group it serves (default: its id).
    pub group: String,
}

/// How an agent proves itself to the hub.
#[derive(Debug, Clone)]
pub enum AgentAuth {
    /// `token_file`: a static bearer token.
    Token(Secret),
    /// `oauth_client_id`: a token of the identity provider, issued to this client, checked
    /// by `[introspection]`.
    OAuthClient(String),
}

/// The validated hub configuration.
#[derive(Clone)]
pub struct HubConfig {
    /// The config file it came from.
    pub path: PathBuf,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Server TLS (certificate chain and key), `None`: plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Bearer token of the operator API and the SCIM forwarder (role `admin`).
    pub operator_token: Secret,
    /// Every operator token with its role, `operator_token` first.
    pub operators: Vec<OperatorEntry>,
    /// The agents, in file order.
    pub agents: Vec<AgentEntry>,
    /// An unanswered request is handed out again after this long.
    pub redeliver: Duration,
    /// Lease length, in heartbeat intervals.
    pub lease_ttl_heartbeats: u32,
    /// The heartbeat interval agents are expected to use (and are told).
    pub heartbeat: Duration,
    /// Longest the hub holds a long-poll.
    pub poll_wait: Duration,
    /// Longest a forwarded SCIM request waits for the agent's answer.
    pub forward_timeout: Duration,
    /// Most requests queued (unanswered) per agent.
    pub queue_limit: usize,
    /// Most open connections.
    pub max_connections: usize,
    /// Most open connections from one IP address.
    pub max_per_address: usize,
    /// `[introspection]`: checks the tokens of agents with `oauth_client_id`.
    pub introspection: Option<Arc<super::introspect::Introspector>>,
    /// `storage` (and `state_dir`): where what outlives the process is kept.
    pub storage: super::store::Storage,
}

impl fmt::Debug for HubConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubConfig")
            .field("path", &self.path)
            .field("listen", &self.listen)
            .field("tls", &self.tls.is_some())
            .field("agents", &self.agents)
            .field("redeliver", &self.redeliver)
            .field("lease_ttl_heartbeats", &self.lease_ttl_heartbeats)
            .field("heartbeat", &self.heartbeat)
            .field("poll_wait", &self.poll_wait)
            .field("forward_timeout", &self.forward_timeout)
            .field("queue_limit", &self.queue_limit)
            .field("max_connections", &self.max_connections)
            .field("max_per_address", &self.max_per_address)
            .field("storage", &self.storage)
            .finish_non_exhaustive()
    }
}

impl HubConfig {
    /// The lease length: `lease_ttl_heartbeats` heartbeat intervals.
    pub fn lease_ttl(&self) -> Duration {
        self.heartbeat * self.lease_ttl_heartbeats
    }

    /// What is allowed but weak in this config, one line each (printed by `--check` and
    /// logged as WARN at every start).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.tls.is_none() && !self.listen.ip().is_loopback() {
            w.push(format!(
                "`allow_plaintext`: listening on {} with plain HTTP; tokens and directory data \
                 cross the network in clear",
                self.listen
            ));
        }
        if let super::store::Storage::Postgres(t) = &self.storage {
            if t.plaintext_remote {
                w.push(format!(
                    "`database_allow_plaintext`: {} is reached without TLS; the database \
                     password and every command cross the network in clear",
                    t.describe()
                ));
            }
        }
        w
    }

    /// Reads and validates the config file at `path` (token and TLS files from disk).
    pub fn load(path: &Path) -> Result<HubConfig, HubConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| HubConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        HubConfig::parse_with(path, &text, &|p| std::fs::read(p), &read_private)
    }

    /// Validates config `text`; `read` reads the token and TLS files (a seam for tests).
    pub fn parse(
        path: &Path,
        text: &str,
        read: &dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
    ) -> Result<HubConfig, HubConfigError> {
        HubConfig::parse_with(path, text, read, read)
    }

    /// [`HubConfig::parse`] with `read_secret` for token files ([`HubConfig::load`] passes
    /// one that refuses a file its group or others may access).
    fn parse_with(
        path: &Path,
        text: &str,
        read: &dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
        read_secret: &dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
    ) -> Result<HubConfig, HubConfigError> {
        let raw: RawHub = toml::from_str(text).map_err(|e| parse_error(path, text, &e))?;
        let invalid = |key: String, message: String| HubConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };

        let listen_text = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            invalid(
                "listen".into(),
                format!(
                    "`{listen_text}` is not an IP address with a port, e.g. \"{DEFAULT_LISTEN}\""
                ),
            )
        })?;
        if !listen.ip().is_loopback() && !raw.allow_public {
            return Err(invalid(
                "listen".into(),
                format!(
                    "{listen} is not a loopback address; set `allow_public = true` to listen on it"
                ),
            ));
        }
        let plaintext = raw.tls_cert_file.is_none() && raw.tls_key_file.is_none();
        if plaintext && !listen.ip().is_loopback() && !raw.allow_plaintext {
            return Err(invalid(
                "listen".into(),
                format!(
                    "{listen} is not a loopback address and no TLS is configured: set \
                     `tls_cert_file` and `tls_key_file`, or `allow_plaintext = true` if a TLS \
                     proxy in front of the hub protects the tokens"
                ),
            ));
        }

        let tls = match (&raw.tls_cert_file, &raw.tls_key_file) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    "tls_key_file".into(),
                    "missing: `tls_cert_file` is set, so the key is needed too".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "tls_cert_file".into(),
                    "missing: `tls_key_file` is set, so the certificate is needed too".into(),
                ))
            }
            (Some(cert), Some(key)) => {
                Some(load_tls(cert, key, read).map_err(|(k, m)| invalid(k.into(), m))?)
            }
        };

        let Some(op_file) = raw.operator_token_file.as_deref() else {
            return Err(invalid(
                "operator_token_file".into(),
                "missing: a file holding the operator's bearer token".into(),
            ));
        };
        let operator_token = read_token(op_file, read_secret)
            .map_err(|m| invalid("operator_token_file".into(), m))?;
        // Each token with the key that holds it, to name both in a duplicate.
        let mut tokens: Vec<(String, Secret)> =
            vec![("operator_token_file".into(), operator_token.clone())];
        let mut operators = vec![OperatorEntry {
            token: operator_token.clone(),
            role: Role::Admin,
        }];
        for (i, o) in raw.operators.into_iter().enumerate() {
            let key = |k: &str| format!("operator[{i}].{k}");
            let role = match o.role.as_str() {
                "admin" => Role::Admin,
                "read" => Role::Read,
                other => {
                    return Err(invalid(
                        key("role"),
                        format!(
                            "`{}` is not a role: use \"admin\" or \"read\"",
                            other.chars().take(32).collect::<String>()
                        ),
                    ))
                }
            };
            let token = read_token(&o.token_file, read_secret)
                .map_err(|m| invalid(key("token_file"), m))?;
            if let Some((other, _)) = tokens.iter().find(|(_, t)| t.expose() == token.expose()) {
                return Err(invalid(
                    key("token_file"),
                    format!(
                        "holds the same token as `{other}`; every operator token must be its \
                         own (one token, one role)"
                    ),
                ));
            }
            tokens.push((key("token_file"), token.clone()));
            operators.push(OperatorEntry { token, role });
        }

        if raw.agents.is_empty() {
            return Err(invalid(
                "agent".into(),
                "no [[agent]] configured: add one with `id` and `token_file`".into(),
            ));
        }
        let mut seen = HashSet::new();
        let mut agents = Vec::with_capacity(raw.agents.len());
        for (i, a) in raw.agents.into_iter().enumerate() {
            let key = |k: &str| format!("agent[{i}].{k}");
            if !valid_name(&a.id) {
                return Err(invalid(
                    key("id"),
                    "must be 1 to 64 characters of letters, digits, '-', '_' or '.'".into(),
                ));
            }
            if !seen.insert(a.id.clone()) {
                return Err(invalid(
                    key("id"),
                    format!("agent `{}` is configured twice", a.id),
                ));
            }
            let group = a.group.unwrap_or_else(|| a.id.clone());
            if !valid_name(&group) {
                return Err(invalid(
                    key("group"),
                    "must be 1 to 64 characters of letters, digits, '-', '_' or '.'".into(),
                ));
            }
            let token_file =
                match (a.token_file, a.oauth_client_id) {
                    (Some(_), Some(_)) => {
                        return Err(invalid(
                            key("oauth_client_id"),
                            "set either `token_file` or `oauth_client_id`, not both".into(),
                        ))
                    }
                    (None, None) => return Err(invalid(
                        key("token_file"),
                        "missing: set `token_file` (a static token) or `oauth_client_id` (tokens \
                         checked by [introspection])"
                            .into(),
                    )),
                    (None, Some(client)) => {
                        let client = client.trim().to_string();
                        if client.is_empty() || client.contains(char::is_control) {
                            return Err(invalid(
                                key("oauth_client_id"),
                                "must not be empty or hold control characters".into(),
                            ));
                        }
                        if raw.introspection.is_none() {
                            return Err(invalid(
                                key("oauth_client_id"),
                                "needs an [introspection] table (the provider's RFC 7662 endpoint)"
                                    .into(),
                            ));
                        }
                        agents.push(AgentEntry {
                            id: a.id,
                            auth: AgentAuth::OAuthClient(client),
                            group,
                        });
                        continue;
                    }
                    (Some(f), None) => f,
                };
            let token =
                read_token(&token_file, read_secret).map_err(|m| invalid(key("token_file"), m))?;
            if let Some((other, _)) = tokens
                .iter()
                .find(|(k, t)| k.starts_with("operator") && t.expose() == token.expose())
            {
                return Err(invalid(
                    key("token_file"),
                    format!(
                        "holds the operator token of `{other}`; every agent needs a token of its own"
                    ),
                ));
            }
            if let Some((other, _)) = tokens.iter().find(|(_, t)| t.expose() == token.expose()) {
                return Err(invalid(
                    key("token_file"),
                    format!(
                        "holds the same token as `{other}`; every agent needs a token of its own \
                         (with a shared token one agent could take the other's requests)"
                    ),
                ));
            }
            tokens.push((key("token_file"), token.clone()));
            agents.push(AgentEntry {
                id: a.id,
                auth: AgentAuth::Token(token),
                group,
            });
        }

        let secs = |key: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(Duration::from_secs(v))
            } else {
                Err(invalid(
                    key.into(),
                    format!("{v} is out of range: allowed {lo} to {hi}"),
                ))
            }
        };
        let redeliver = secs("redeliver_secs", raw.redeliver_secs, 1, 86_400)?;
        let heartbeat = secs("heartbeat_secs", raw.heartbeat_secs, 1, 3600)?;
        let poll_wait = secs("poll_wait_secs", raw.poll_wait_secs, 1, 300)?;
        let forward_timeout = secs("forward_timeout_secs", raw.forward_timeout_secs, 1, 600)?;
        if !(2..=100).contains(&raw.lease_ttl_heartbeats) {
            return Err(invalid(
                "lease_ttl_heartbeats".into(),
                format!(
                    "{} is out of range: allowed 2 to 100",
                    raw.lease_ttl_heartbeats
                ),
            ));
        }
        if !(1..=100_000).contains(&raw.queue_limit) {
            return Err(invalid(
                "queue_limit".into(),
                format!("{} is out of range: allowed 1 to 100000", raw.queue_limit),
            ));
        }
        if !(16..=1_000_000).contains(&raw.max_connections) {
            return Err(invalid(
                "max_connections".into(),
                format!(
                    "{} is out of range: allowed 16 to 1000000",
                    raw.max_connections
                ),
            ));
        }
        if !(1..=raw.max_connections).contains(&raw.max_connections_per_address) {
            return Err(invalid(
                "max_connections_per_address".into(),
                format!(
                    "{} is out of range: allowed 1 to max_connections ({})",
                    raw.max_connections_per_address, raw.max_connections
                ),
            ));
        }

        let storage = storage(
            raw.storage.as_deref(),
            raw.state_dir,
            raw.database_url_file.as_deref(),
            raw.database_allow_plaintext,
            read_secret,
        )
        .map_err(|(k, m)| invalid(k.into(), m))?;

        let introspection = match raw.introspection {
            None => None,
            Some(i) => Some(Arc::new(
                introspection(i, raw.allow_plaintext, read_secret)
                    .map_err(|(k, m)| invalid(format!("introspection.{k}"), m))?,
            )),
        };

        Ok(HubConfig {
            introspection,
            path: path.to_path_buf(),
            listen,
            tls,
            operator_token,
            operators,
            agents,
            redeliver,
            lease_ttl_heartbeats: raw.lease_ttl_heartbeats,
            heartbeat,
            poll_wait,
            forward_timeout,
            queue_limit: raw.queue_limit,
            max_connections: raw.max_connections,
            max_per_address: raw.max_connections_per_address,
            storage,
        })
    }
}

/// `storage` and `state_dir`: the store, or the key that is wrong and why.
fn storage(
    kind: Option<&str>,
    state_dir: Option<PathBuf>,
    database_url_file: Option<&Path>,
    database_allow_plaintext: bool,
    read_secret: &dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
) -> Result<super::store::Storage, (&'static str, String)> {
    use super::store::Storage;
    let state_dir = state_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    if !state_dir.is_absolute() {
        return Err((
            "state_dir",
            format!("`{}` is not an absolute path", state_dir.display()),
        ));
    }
    let kind = kind.unwrap_or("sqlite");
    if kind != "postgres" && database_url_file.is_some() {
        return Err((
            "database_url_file",
            format!("is for `storage = \"postgres\"`, and storage is `{kind}`"),
        ));
    }
    match kind {
        "sqlite" => Ok(Storage::Sqlite { state_dir }),
        "memory" => Ok(Storage::Memory),
        "postgres" => {
            let Some(file) = database_url_file else {
                return Err((
                    "database_url_file",
                    "missing: `storage = \"postgres\"` needs a file holding the database URL \
                     (postgresql://USER:PASSWORD@HOST:PORT/DATABASE), readable by its owner only"
                        .into(),
                ));
            };
            super::pg_config::target(file, database_allow_plaintext, read_secret)
                .map(|t| Storage::Postgres(Box::new(t)))
                .map_err(|m| ("database_url_file", m))
        }
        other => Err((
            "storage",
            format!(
                "`{}` is not a store: use `sqlite` (the default), `postgres` or `memory`",
                other.chars().take(32).collect::<String>()
            ),
        )),
    }
}

/// Agent ids and group names: 1-64 characters of `[A-Za-z0-9._-]` (as `agent.id`).
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Why the hub config is unusable.
#[derive(Debug)]
pub enum HubConfigError {
    /// The file could not be read.
    Read {
        /// The config file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// TOML syntax or shape (unknown key, wrong type).
    Parse {
        /// The config file.
        path: PathBuf,
        /// 1-based line, when known.
        line: Option<usize>,
        /// What is wrong (never the text of the line, which may hold a secret).
        message: String,
    },
    /// A key has a value that is not allowed.
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The key, e.g. `listen` or `agent[1].token_file`.
        key: String,
        /// What is wrong and what is allowed.
        message: String,
    },
}

impl fmt::Display for HubConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HubConfigError::Read { path, source } => {
                write!(f, "cannot read hub config {}: {source}", path.display())
            }
            HubConfigError::Parse {
                path,
                line,
                message,
            } => {
                write!(f, "hub config {}", path.display())?;
                if let Some(line) = line {
                    write!(f, ", line {line}")?;
                }
                write!(f, ": {message}")
            }
            HubConfigError::Invalid { path, key, message } => {
                write!(f, "hub config {}: `{key}`: {message}", path.display())
            }
        }
    }
}

impl std::error::Error for HubConfigError {}

fn default_redeliver() -> u64 {
    60
}
fn default_ttl_heartbeats() -> u32 {
    3
}
fn default_heartbeat() -> u64 {
    60
}
fn default_poll_wait() -> u64 {
    30
}
fn default_forward_timeout() -> u64 {
    30
}
fn default_queue_limit() -> usize {
    1000
}
fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}
fn default_max_per_address() -> usize {
    DEFAULT_MAX_PER_ADDRESS
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHub {
    listen: Option<String>,
    #[serde(default)]
    allow_public: bool,
    #[serde(default)]
    allow_plaintext: bool,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    operator_token_file: Option<PathBuf>,
    #[serde(default = "default_redeliver")]
    redeliver_secs: u64,
    #[serde(default = "default_ttl_heartbeats")]
    lease_ttl_heartbeats: u32,
    #[serde(default = "default_heartbeat")]
    heartbeat_secs: u64,
    #[serde(default = "default_poll_wait")]
    poll_wait_secs: u64,
    #[serde(default = "default_forward_timeout")]
    forward_timeout_secs: u64,
    #[serde(default = "default_queue_limit")]
    queue_limit: usize,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default = "default_max_per_address")]
    max_connections_per_address: usize,
    #[serde(default, rename = "agent")]
    agents: Vec<RawAgent>,
    #[serde(default, rename = "operator")]
    operators: Vec<RawOperator>,
    introspection: Option<RawIntrospection>,
    storage: Option<String>,
    state_dir: Option<PathBuf>,
    database_url_file: Option<PathBuf>,
    #[serde(default)]
    database_allow_plaintext: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntrospection {
    url: String,
    client_id: String,
    client_secret_file: PathBuf,
    #[serde(default = "default_introspection_cache")]
    cache_secs: u64,
    ca_file: Option<PathBuf>,
}

fn default_introspection_cache() -> u64 {
    60
}

/// `[introspection]`, checked; an error names the key (without the table) and why.
fn introspection(
    i: RawIntrospection,
    allow_plaintext: bool,
    read_secret: &dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
) -> Result<super::introspect::Introspector, (&'static str, String)> {
    let url: crate::net::http::Url = i
        .url
        .trim()
        .parse()
        .map_err(|e| ("url", format!("not a URL ({e}): use https://HOST/PATH")))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback || allow_plaintext => {}
        "http" => {
            return Err((
                "url",
                "plain http:// to a host that is not loopback would send the hub's client secret \
                 and agent tokens in clear: use https:// (or allow_plaintext = true)"
                    .into(),
            ))
        }
        other => {
            return Err((
                "url",
                format!("scheme `{other}` is not allowed: use https://"),
            ))
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err((
            "url",
            "must not carry credentials; use introspection.client_secret_file".into(),
        ));
    }
    let client_id = i.client_id.trim().to_string();
    if client_id.is_empty() || client_id.contains(char::is_control) {
        return Err((
            "client_id",
            "must not be empty or hold control characters".into(),
        ));
    }
    let client_secret =
        read_token(&i.client_secret_file, read_secret).map_err(|m| ("client_secret_file", m))?;
    if !(1..=600).contains(&i.cache_secs) {
        return Err((
            "cache_secs",
            format!("{} is out of range: allowed 1 to 600", i.cache_secs),
        ));
    }
    super::introspect::Introspector::new(super::introspect::IntrospectionSettings {
        url,
        client_id,
        client_secret,
        cache: Duration::from_secs(i.cache_secs),
        ca_file: i.ca_file,
    })
    .map_err(|e| ("ca_file", e.to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOperator {
    token_file: PathBuf,
    role: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    id: String,
    token_file: Option<PathBuf>,
    oauth_client_id: Option<String>,
    group: Option<String>,
}

fn read_token(
    file: &Path,
    read: &dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
) -> Result<Secret, String> {
    let bytes = read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let text = String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8", file.display()))?;
    // A trailing newline is an artefact of `echo token > file`, never part of the token.
    let token = text.trim_end_matches(['\n', '\r']);
    if token.is_empty() {
        return Err(format!("{} is empty", file.display()));
    }
    if token.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(format!(
            "{} holds spaces or control characters; a bearer token cannot",
            file.display()
        ));
    }
    check_strength(token).map_err(|m| format!("{}: {m}", file.display()))?;
    Ok(Secret::new(token))
}

/// Whether `token` is long enough for 128 bits: at least [`MIN_HEX_TOKEN`] characters when
/// it is all hex digits, [`MIN_TOKEN`] otherwise (assumed base64: 6 bits a character). The
/// length is all a config check can see; the rule assumes the token came from a random
/// generator (`openssl rand -base64 32`). The error never quotes the token.
pub fn check_strength(token: &str) -> Result<(), String> {
    let hex = token.bytes().all(|b| b.is_ascii_hexdigit());
    let need = if hex { MIN_HEX_TOKEN } else { MIN_TOKEN };
    if token.chars().count() < need {
        return Err(format!(
            "the token is too short for 128 bits: it needs at least {MIN_TOKEN} characters \
             ({MIN_HEX_TOKEN} when it is hex digits only); make one with \
             `openssl rand -base64 32`"
        ));
    }
    Ok(())
}

/// Reads a secret file that only its owner may access (mode 0600 or stricter); anything
/// its group or others may read or write is refused, as ssh refuses a private key.
fn read_private(p: &Path) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(p)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "its mode is {:03o}: group and others may access it; run `chmod 600` on it",
                mode & 0o777
            ),
        ));
    }
    std::fs::read(p)
}

fn load_tls(
    cert: &Path,
    key: &Path,
    read: &dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
) -> Result<Arc<rustls::ServerConfig>, (&'static str, String)> {
    let cert_pem = read(cert).map_err(|e| {
        (
            "tls_cert_file",
            format!("cannot read {}: {e}", cert.display()),
        )
    })?;
    let chain: Vec<_> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| ("tls_cert_file", format!("{}: bad PEM: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err((
            "tls_cert_file",
            format!("{} holds no certificate", cert.display()),
        ));
    }
    let key_pem = read(key).map_err(|e| {
        (
            "tls_key_file",
            format!("cannot read {}: {e}", key.display()),
        )
    })?;
    let key_der = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| ("tls_key_file", format!("{}: bad PEM: {e}", key.display())))?
        .ok_or_else(|| {
            (
                "tls_key_file",
                format!("{} holds no private key", key.display()),
            )
        })?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ("tls_cert_file", format!("TLS setup: {e}")))?
    .with_no_client_auth()
    .with_single_cert(chain, key_der)
    .map_err(|e| {
        (
            "tls_key_file",
            format!("{} does not fit {}: {e}", key.display(), cert.display()),
        )
    })?;
    Ok(Arc::new(config))
}

fn parse_error(path: &Path, text: &str, e: &toml::de::Error) -> HubConfigError {
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    HubConfigError::Parse {
        path: path.to_path_buf(),
        line,
        message: e.message().trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
operator_token_file = "/s/op"
redeliver_secs = 5

[[agent]]
id = "a1"
token_file = "/s/a1"

[[agent]]
id = "a2"
token_file = "/s/a2"
group = "g"
"#;

    fn files(p: &Path) -> std::io::Result<Vec<u8>> {
        match p.to_str().unwrap() {
            "/s/op" => Ok(b"operator-token-0123456789\n".to_vec()),
            "/s/a1" => Ok(b"agent-one-0123456789abcd".to_vec()),
            "/s/a2" => Ok(b"agent-two-0123456789abcd\r\n".to_vec()),
            "/s/a2same" => Ok(b"agent-one-0123456789abcd\n".to_vec()),
            "/s/same" => Ok(b"operator-token-0123456789".to_vec()),
            "/s/short" => Ok(b"op-token".to_vec()),
            "/s/hex31" => Ok(b"0123456789abcdef0123456789abcde".to_vec()),
            "/s/empty" => Ok(b"\n".to_vec()),
            "/s/db" => Ok(b"postgresql://hub:db-pw-0123@127.0.0.1:5433/fleet\n".to_vec()),
            "/s/remote-db" => Ok(b"postgresql://hub:db-pw-0123@db.example.net/fleet".to_vec()),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "not found",
            )),
        }
    }

    fn parse(text: &str) -> Result<HubConfig, HubConfigError> {
        HubConfig::parse(Path::new("hub.toml"), text, &files)
    }

    fn err_key(text: &str) -> String {
        match parse(text) {
            Err(HubConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn postgres_storage_reads_its_url_file_and_never_shows_the_password() {
        use crate::hub::store::Storage;
        let c = parse(&format!(
            "storage = \"postgres\"\ndatabase_url_file = \"/s/db\"\n{GOOD}"
        ))
        .unwrap();
        let Storage::Postgres(t) = &c.storage else {
            panic!("{:?}", c.storage)
        };
        assert_eq!(
            t.describe(),
            "PostgreSQL database `fleet` on 127.0.0.1:5433"
        );
        assert!(!format!("{c:?}").contains("db-pw-0123"));
        assert!(c.warnings().is_empty());
        // Not loopback: refused, or accepted with the explicit allow and a warning.
        let remote = "storage = \"postgres\"\ndatabase_url_file = \"/s/remote-db\"\n";
        let e = parse(&format!("{remote}{GOOD}")).unwrap_err().to_string();
        assert!(
            e.contains("database_allow_plaintext") && !e.contains("db-pw-0123"),
            "{e}"
        );
        let c = parse(&format!("{remote}database_allow_plaintext = true\n{GOOD}")).unwrap();
        assert!(c.warnings()[0].contains("database_allow_plaintext"));
        assert!(!c.warnings()[0].contains("db-pw-0123"));
        assert_eq!(
            err_key(&format!(
                "storage = \"postgres\"\ndatabase_url_file = \"/s/none\"\n{GOOD}"
            )),
            "database_url_file"
        );
    }

    #[test]
    fn storage_and_state_dir() {
        use crate::hub::store::Storage;
        assert_eq!(
            parse(GOOD).unwrap().storage,
            Storage::Sqlite {
                state_dir: DEFAULT_STATE_DIR.into()
            }
        );
        let c = parse(&format!(
            "storage = \"sqlite\"\nstate_dir = \"/srv/hub\"\n{GOOD}"
        ))
        .unwrap();
        assert_eq!(
            c.storage,
            Storage::Sqlite {
                state_dir: "/srv/hub".into()
            }
        );
        let c = parse(&format!("storage = \"memory\"\n{GOOD}")).unwrap();
        assert_eq!(c.storage, Storage::Memory);
        assert_eq!(
            err_key(&format!("storage = \"postgres\"\n{GOOD}")),
            "database_url_file"
        );
        assert_eq!(
            err_key(&format!("database_url_file = \"/etc/db\"\n{GOOD}")),
            "database_url_file"
        );
        assert_eq!(err_key(&format!("storage = \"redis\"\n{GOOD}")), "storage");
        assert_eq!(
            err_key(&format!("state_dir = \"rel/dir\"\n{GOOD}")),
            "state_dir"
        );
        assert!(parse(&format!("storage = \"postgres\"\n{GOOD}"))
            .unwrap_err()
            .to_string()
            .contains("postgresql://USER:PASSWORD@HOST"));
    }

    #[test]
    fn defaults_and_values() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.redeliver, Duration::from_secs(5));
        assert_eq!(c.heartbeat, Duration::from_secs(60));
        assert_eq!(c.lease_ttl(), Duration::from_secs(180));
        assert_eq!(c.poll_wait, Duration::from_secs(30));
        assert_eq!(c.queue_limit, 1000);
        assert_eq!(c.operator_token.expose(), "operator-token-0123456789");
        assert_eq!(c.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(c.max_per_address, DEFAULT_MAX_PER_ADDRESS);
        assert!(c.warnings().is_empty());
        assert_eq!(c.agents[0].group, "a1");
        assert_eq!(c.agents[1].group, "g");
        assert!(
            matches!(&c.agents[1].auth, AgentAuth::Token(t) if t.expose() == "agent-two-0123456789abcd")
        );
        assert!(c.tls.is_none());
        assert!(
            !format!("{c:?}").contains("agent-one"),
            "tokens never print"
        );
    }

    #[test]
    fn an_agent_may_prove_itself_by_introspection_instead_of_a_token() {
        let intro = "[introspection]\nurl = \"https://idp.example/oauth/introspect\"\nclient_id = \"idrelay-hub\"\nclient_secret_file = \"/s/same\"\n";
        let agent = "[[agent]]\nid = \"oa\"\noauth_client_id = \"branch-client\"\n";
        let c = parse(&format!("{GOOD}{agent}{intro}")).unwrap();
        assert!(matches!(&c.agents[2].auth, AgentAuth::OAuthClient(id) if id == "branch-client"));
        assert!(c.introspection.is_some());
        // Without [introspection] there is nothing to check the token with.
        assert_eq!(
            err_key(&format!("{GOOD}{agent}")),
            "agent[2].oauth_client_id"
        );
        let both = "[[agent]]\nid = \"oa\"\noauth_client_id = \"c\"\ntoken_file = \"/s/a1\"\n";
        assert_eq!(
            err_key(&format!("{GOOD}{both}{intro}")),
            "agent[2].oauth_client_id"
        );
        let neither = "[[agent]]\nid = \"oa\"\n";
        assert_eq!(err_key(&format!("{GOOD}{neither}")), "agent[2].token_file");
        let clear = intro.replace("https://idp.example", "http://idp.example");
        assert_eq!(
            err_key(&format!("{GOOD}{agent}{clear}")),
            "introspection.url"
        );
        let local = intro.replace("https://idp.example", "http://127.0.0.1:8088");
        assert!(parse(&format!("{GOOD}{agent}{local}")).is_ok());
        let cache = format!("{intro}cache_secs = 0\n");
        assert_eq!(
            err_key(&format!("{GOOD}{agent}{cache}")),
            "introspection.cache_secs"
        );
        let missing = intro.replace("/s/same", "/s/nothing");
        assert_eq!(
            err_key(&format!("{GOOD}{agent}{missing}")),
            "introspection.client_secret_file"
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_a_line() {
        let e = parse(&format!("{GOOD}bogus = 1\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus") && e.contains("line"), "{e}");
        let e = parse(&GOOD.replace("group = \"g\"", "grup = \"g\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("grup"), "{e}");
    }

    #[test]
    fn public_listen_needs_allow_public() {
        let public = format!("listen = \"0.0.0.0:8460\"\n{GOOD}");
        assert_eq!(err_key(&public), "listen");
        // Public and plain HTTP: refused unless allow_plaintext, then a warning.
        let allowed = format!("listen = \"0.0.0.0:8460\"\nallow_public = true\n{GOOD}");
        let e = parse(&allowed).unwrap_err().to_string();
        assert!(
            e.contains("`listen`") && e.contains("allow_plaintext"),
            "{e}"
        );
        let plain = format!("allow_plaintext = true\n{allowed}");
        let c = parse(&plain).unwrap();
        assert_eq!(c.warnings().len(), 1);
        assert!(c.warnings()[0].contains("allow_plaintext"));
        assert_eq!(
            err_key(&format!("listen = \"localhost\"\n{GOOD}")),
            "listen"
        );
        assert!(parse(&format!("listen = \"[::1]:9\"\n{GOOD}")).is_ok());
    }

    #[test]
    fn operator_tokens_have_roles_and_are_each_their_own() {
        let files = |p: &Path| match p.to_str().unwrap() {
            "/s/ro" => Ok(b"read-only-token-0123456789".to_vec()),
            "/s/adm2" => Ok(b"second-admin-token-0123456789".to_vec()),
            _ => files(p),
        };
        let parse = |t: &str| HubConfig::parse(Path::new("hub.toml"), t, &files);
        let key = |t: &str| match parse(t) {
            Err(HubConfigError::Invalid { key, message, .. }) => format!("{key}: {message}"),
            other => panic!("expected an invalid key, got {other:?}"),
        };
        let with = |extra: &str| format!("{GOOD}\n{extra}");
        let c = parse(&with(
            "[[operator]]\ntoken_file = \"/s/ro\"\nrole = \"read\"\n\n[[operator]]\ntoken_file = \"/s/adm2\"\nrole = \"admin\"\n",
        ))
        .unwrap();
        let roles: Vec<Role> = c.operators.iter().map(|o| o.role).collect();
        assert_eq!(roles, [Role::Admin, Role::Read, Role::Admin]);
        assert!(!format!("{c:?}").contains("read-only-token"));
        let e = key(&with(
            "[[operator]]\ntoken_file = \"/s/ro\"\nrole = \"viewer\"\n",
        ));
        assert!(
            e.starts_with("operator[0].role") && e.contains("\"read\""),
            "{e}"
        );
        // The admin token again with another role: refused, naming both keys.
        let e = key(&with(
            "[[operator]]\ntoken_file = \"/s/same\"\nrole = \"read\"\n",
        ));
        assert!(
            e.starts_with("operator[0].token_file") && e.contains("operator_token_file"),
            "{e}"
        );
        // An agent holding a read token.
        let e = key(&with(
            "[[operator]]\ntoken_file = \"/s/a1\"\nrole = \"read\"\n",
        ));
        assert!(e.starts_with("agent[0].token_file"), "{e}");
        assert!(parse(&with("[[operator]]\ntoken_file = \"/s/ro\"\n")).is_err());
    }

    #[test]
    fn bad_values_name_their_key() {
        assert_eq!(
            err_key(&GOOD.replace("operator_token_file = \"/s/op\"", "")),
            "operator_token_file"
        );
        assert_eq!(
            err_key(&GOOD.replace("/s/a1", "/s/nope")),
            "agent[0].token_file"
        );
        assert_eq!(
            err_key(&GOOD.replace("/s/a2", "/s/same")),
            "agent[1].token_file"
        );
        assert_eq!(
            err_key(&GOOD.replace("/s/a2", "/s/empty")),
            "agent[1].token_file"
        );
        assert_eq!(err_key(&GOOD.replace("\"a2\"", "\"a1\"")), "agent[1].id");
        assert_eq!(err_key(&GOOD.replace("\"a2\"", "\"a 2\"")), "agent[1].id");
        assert_eq!(err_key(&GOOD.replace("\"g\"", "\"\"")), "agent[1].group");
        assert_eq!(
            err_key(&GOOD.replace("redeliver_secs = 5", "redeliver_secs = 0")),
            "redeliver_secs"
        );
        assert_eq!(
            err_key(&format!("lease_ttl_heartbeats = 1\n{GOOD}")),
            "lease_ttl_heartbeats"
        );
        assert_eq!(
            err_key(&format!("tls_cert_file = \"/s/c\"\n{GOOD}")),
            "tls_key_file"
        );
        assert_eq!(
            err_key(&format!("tls_key_file = \"/s/k\"\n{GOOD}")),
            "tls_cert_file"
        );
        assert_eq!(
            err_key(&format!(
                "tls_cert_file = \"/s/c\"\ntls_key_file = \"/s/k\"\n{GOOD}"
            )),
            "tls_cert_file"
        );
        assert_eq!(err_key("operator_token_file = \"/s/op\"\n"), "agent");
    }

    #[test]
    fn weak_tokens_are_refused() {
        // Shared by two agents: refused naming the second and the first.
        let e = parse(&GOOD.replace("/s/a2", "/s/a2same"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`agent[1].token_file`") && e.contains("`agent[0].token_file`"),
            "{e}"
        );
        assert!(!e.contains("agent-one-0123"), "{e}");
        assert_eq!(
            err_key(&GOOD.replace("/s/op", "/s/short")),
            "operator_token_file"
        );
        assert_eq!(
            err_key(&GOOD.replace("/s/a1", "/s/hex31")),
            "agent[0].token_file"
        );
        assert!(check_strength(&"0a".repeat(16)).is_ok());
        assert!(check_strength("abcdefghijklmnopqrstuv").is_ok());
        assert!(check_strength("abcdefghijklmnopqrstu").is_err());
        let e = check_strength("op-token").unwrap_err();
        assert!(e.contains("128 bits") && !e.contains("op-token"), "{e}");
    }

    #[test]
    fn token_files_others_can_read_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let f = std::env::temp_dir().join(format!("idrelay-hub-perm-{}", std::process::id()));
        std::fs::write(&f, "operator-token-0123456789\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_private(&f).unwrap_err().to_string();
        assert!(e.contains("644") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read_private(&f).is_ok());
        let _ = std::fs::remove_file(&f);
    }

    #[test]
    fn connection_caps() {
        let c = parse(&format!(
            "max_connections = 100\nmax_connections_per_address = 10\n{GOOD}"
        ))
        .unwrap();
        assert_eq!((c.max_connections, c.max_per_address), (100, 10));
        assert_eq!(
            err_key(&format!(
                "max_connections = 100\nmax_connections_per_address = 101\n{GOOD}"
            )),
            "max_connections_per_address"
        );
        assert_eq!(
            err_key(&format!("max_connections = 1\n{GOOD}")),
            "max_connections"
        );
    }

    #[test]
    fn errors_never_quote_secrets() {
        let e = parse(&GOOD.replace("/s/a2", "/s/same"))
            .unwrap_err()
            .to_string();
        assert!(!e.contains("operator-token-0123"), "{e}");
    }

    #[test]
    fn names() {
        assert!(valid_name("branch-01.a_b"));
        assert!(!valid_name(""));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(&"x".repeat(65)));
    }
}
