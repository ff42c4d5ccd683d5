//! The hub's config file (TOML), read in two stages: a raw serde shape with
//! `deny_unknown_fields`, then a validated [`HubConfig`] whose errors name the key.
//!
//! Invariants:
//! * The hub listens on a loopback address unless `allow_public = true` says otherwise.
//! * Every agent has its own token; no agent token equals the operator token (an agent must
//!   never be able to act as the operator).
//! * Secrets are read from files only, a trailing newline trimmed, and never printed
//!   ([`Secret`] redacts itself; errors name the key and the file, never the contents).
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

/// One configured agent.
#[derive(Debug, Clone)]
pub struct AgentEntry {
    /// The agent id (`agent.id` in the agent's config).
    pub id: String,
    /// The agent's bearer token.
    pub token: Secret,
    /// The directory group it serves (default: its id).
    pub group: String,
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
    /// Bearer token of the operator API and the SCIM forwarder.
    pub operator_token: Secret,
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
            .finish_non_exhaustive()
    }
}

impl HubConfig {
    /// The lease length: `lease_ttl_heartbeats` heartbeat intervals.
    pub fn lease_ttl(&self) -> Duration {
        self.heartbeat * self.lease_ttl_heartbeats
    }

    /// Reads and validates the config file at `path` (token and TLS files from disk).
    pub fn load(path: &Path) -> Result<HubConfig, HubConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| HubConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        HubConfig::parse(path, &text, &|p| std::fs::read(p))
    }

    /// Validates config `text`; `read` reads the token and TLS files (a seam for tests).
    pub fn parse(
        path: &Path,
        text: &str,
        read: &dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
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
        let operator_token =
            read_token(op_file, read).map_err(|m| invalid("operator_token_file".into(), m))?;

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
            let token =
                read_token(&a.token_file, read).map_err(|m| invalid(key("token_file"), m))?;
            if token.expose() == operator_token.expose() {
                return Err(invalid(
                    key("token_file"),
                    "holds the operator token; every agent needs a token of its own".into(),
                ));
            }
            agents.push(AgentEntry {
                id: a.id,
                token,
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

        Ok(HubConfig {
            path: path.to_path_buf(),
            listen,
            tls,
            operator_token,
            agents,
            redeliver,
            lease_ttl_heartbeats: raw.lease_ttl_heartbeats,
            heartbeat,
            poll_wait,
            forward_timeout,
            queue_limit: raw.queue_limit,
        })
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHub {
    listen: Option<String>,
    #[serde(default)]
    allow_public: bool,
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
    #[serde(default, rename = "agent")]
    agents: Vec<RawAgent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    id: String,
    token_file: PathBuf,
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
    Ok(Secret::new(token))
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
            "/s/op" => Ok(b"operator-token\n".to_vec()),
            "/s/a1" => Ok(b"agent-one".to_vec()),
            "/s/a2" => Ok(b"agent-two\r\n".to_vec()),
            "/s/same" => Ok(b"operator-token".to_vec()),
            "/s/empty" => Ok(b"\n".to_vec()),
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
    fn defaults_and_values() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.redeliver, Duration::from_secs(5));
        assert_eq!(c.heartbeat, Duration::from_secs(60));
        assert_eq!(c.lease_ttl(), Duration::from_secs(180));
        assert_eq!(c.poll_wait, Duration::from_secs(30));
        assert_eq!(c.queue_limit, 1000);
        assert_eq!(c.operator_token.expose(), "operator-token");
        assert_eq!(c.agents[0].group, "a1");
        assert_eq!(c.agents[1].group, "g");
        assert_eq!(c.agents[1].token.expose(), "agent-two");
        assert!(c.tls.is_none());
        assert!(
            !format!("{c:?}").contains("agent-one"),
            "tokens never print"
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
        let allowed = format!("listen = \"0.0.0.0:8460\"\nallow_public = true\n{GOOD}");
        assert!(parse(&allowed).is_ok());
        assert_eq!(
            err_key(&format!("listen = \"localhost\"\n{GOOD}")),
            "listen"
        );
        assert!(parse(&format!("listen = \"[::1]:9\"\n{GOOD}")).is_ok());
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
    fn errors_never_quote_secrets() {
        let e = parse(&GOOD.replace("/s/a2", "/s/same"))
            .unwrap_err()
            .to_string();
        assert!(!e.contains("operator-token"), "{e}");
    }

    #[test]
    fn names() {
        assert!(valid_name("branch-01.a_b"));
        assert!(!valid_name(""));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(&"x".repeat(65)));
    }
}
