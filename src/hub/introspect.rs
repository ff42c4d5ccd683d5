//! OAuth2 token introspection (RFC 7662): an agent whose `[[agent]]` sets `oauth_client_id`
//! proves itself with a bearer token its identity provider issued (the agent's `[relay]`
//! client credentials grant), and the hub asks the provider's introspection endpoint
//! (`[introspection]`) whether that token is active and whose it is.
//!
//! Rules:
//! * A token is accepted only when the answer says `"active": true`, names the agent's
//!   `oauth_client_id` as `client_id`, and its `exp` (when given) lies ahead.
//! * Answers are kept for at most `cache_secs` (and never past the token's `exp`), keyed by
//!   the token's SHA-256: the token itself is not kept. Refusals are kept as long, so a
//!   stream of bad tokens costs the provider one request per token per period.
//! * A provider that cannot answer (transport, 5xx, a malformed answer) is not a refusal:
//!   the hub answers the agent 503 and the agent tries again; nothing is cached.
//! * The hub's client secret and the tokens appear only in the introspection request:
//!   never in logs or errors (an error body that echoes one is cut to its status).
//!
//! Pure parts ([`parse_answer`], [`Cache`]) are tested without sockets.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::net::http::{HttpClient, HttpError, HttpRequest, Method, Url};
use crate::secret::Secret;

/// Most answers kept; past it, expired ones are dropped, then all.
const CACHE_CAP: usize = 4096;

/// `[introspection]`: where and as whom the hub asks.
#[derive(Debug, Clone)]
pub struct IntrospectionSettings {
    /// The provider's introspection endpoint.
    pub url: Url,
    /// The hub's own client id at the provider (`client_secret_basic`).
    pub client_id: String,
    /// The hub's client secret.
    pub client_secret: Secret,
    /// Longest an answer is kept.
    pub cache: Duration,
    /// PEM file of trusted CAs for the provider; `None`: the system store.
    pub ca_file: Option<std::path::PathBuf>,
}

/// Why the provider gave no usable answer. Never holds a token or the secret.
#[derive(Debug)]
pub enum IntrospectError {
    /// No answer arrived.
    Transport {
        /// The endpoint.
        url: String,
        /// What went wrong on the wire.
        error: HttpError,
    },
    /// The endpoint answered with an error status (a 401 means the hub's own credential).
    Status {
        /// The endpoint.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// A 200 answer that is not an introspection response.
    Malformed {
        /// The endpoint.
        url: String,
        /// What is wrong with it.
        detail: &'static str,
    },
}

impl fmt::Display for IntrospectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntrospectError::Transport { url, error } => {
                write!(f, "token introspection at {url} failed: {error}")
            }
            IntrospectError::Status { url, status } => {
                write!(f, "token introspection at {url} answered {status}")?;
                if matches!(status, 400 | 401 | 403) {
                    write!(
                        f,
                        " (check introspection.client_id and introspection.client_secret_file)"
                    )?;
                }
                Ok(())
            }
            IntrospectError::Malformed { url, detail } => {
                write!(f, "token introspection at {url}: {detail}")
            }
        }
    }
}

impl std::error::Error for IntrospectError {}

/// What an answer says about a token: the client it was issued to, while active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `Some(client_id)` when active; `None` when not.
    pub client_id: Option<String>,
    /// Unix time the token expires, when the answer gives it.
    pub exp: Option<u64>,
}

/// Reads an introspection answer (RFC 7662 §2.2) at Unix time `now`. A token past its
/// `exp` is inactive whatever `active` says.
pub fn parse_answer(body: &[u8], now: u64) -> Result<Verdict, &'static str> {
    let v: Value = serde_json::from_slice(body).map_err(|_| "the answer is not JSON")?;
    let active = v
        .get("active")
        .and_then(Value::as_bool)
        .ok_or("the answer has no boolean `active`")?;
    // Some providers send `exp` as a float.
    let exp = v
        .get("exp")
        .and_then(|e| e.as_u64().or_else(|| e.as_f64().map(|f| f as u64)));
    let live = active && exp.is_none_or(|e| e > now);
    let client_id = match v.get("client_id").and_then(Value::as_str) {
        Some(c) if live => Some(c.to_string()),
        None if live => return Err("an active token without `client_id`"),
        _ => None,
    };
    Ok(Verdict { client_id, exp })
}

struct Kept {
    client_id: Option<String>,
    until: Instant,
}

/// Answers by token digest, each until its deadline.
#[derive(Default)]
pub struct Cache {
    kept: HashMap<[u8; 32], Kept>,
}

impl Cache {
    /// The kept verdict for `digest` at `now`: `Some(client_id or None)`, or `None` when
    /// nothing valid is kept.
    pub fn get(&self, digest: &[u8; 32], now: Instant) -> Option<Option<String>> {
        self.kept
            .get(digest)
            .filter(|k| now < k.until)
            .map(|k| k.client_id.clone())
    }

    /// Keeps `verdict` for at most `ttl` from `now` (never past the token's `exp`, given
    /// as Unix time `now_unix` for comparison).
    pub fn put(
        &mut self,
        digest: [u8; 32],
        verdict: &Verdict,
        ttl: Duration,
        now: Instant,
        now_unix: u64,
    ) {
        let left = verdict.exp.map_or(ttl, |e| {
            ttl.min(Duration::from_secs(e.saturating_sub(now_unix)))
        });
        if self.kept.len() >= CACHE_CAP {
            self.kept.retain(|_, k| now < k.until);
            if self.kept.len() >= CACHE_CAP {
                self.kept.clear();
            }
        }
        self.kept.insert(
            digest,
            Kept {
                client_id: verdict.client_id.clone(),
                until: now + left,
            },
        );
    }
}

/// Asks the provider, with a short cache.
pub struct Introspector {
    http: HttpClient,
    cfg: IntrospectionSettings,
    cache: Mutex<Cache>,
}

impl Introspector {
    /// An introspector for `cfg`.
    pub fn new(cfg: IntrospectionSettings) -> Result<Introspector, HttpError> {
        let http = HttpClient::new(crate::net::http::HttpConfig {
            ca_file: cfg.ca_file.clone(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            max_idle_per_host: 4,
            max_body_bytes: 64 << 10,
            ..crate::net::http::HttpConfig::default()
        })?;
        Ok(Introspector {
            http,
            cfg,
            cache: Mutex::new(Cache::default()),
        })
    }

    /// The client `token` was issued to, while it is active (`None`: not active).
    pub async fn client_of(&self, token: &str) -> Result<Option<String>, IntrospectError> {
        let digest: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .unwrap_or([0; 32]);
        if let Some(c) = self.cache().get(&digest, Instant::now()) {
            return Ok(c);
        }
        let url = crate::net::http::redact_url(&self.cfg.url);
        let form = crate::net::http::form_encode;
        let basic = format!(
            "{}:{}",
            form(&self.cfg.client_id),
            form(self.cfg.client_secret.expose())
        );
        let req = HttpRequest::new(Method::Post, self.cfg.url.clone())
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Accept", "application/json")
            .header(
                "Authorization",
                format!("Basic {}", crate::base64::encode(basic.as_bytes())),
            )
            .body(format!("token={}&token_type_hint=access_token", form(token)).into_bytes());
        let resp = self
            .http
            .send(req)
            .await
            .map_err(|error| IntrospectError::Transport {
                url: url.clone(),
                error,
            })?;
        if resp.status != 200 {
            return Err(IntrospectError::Status {
                url,
                status: resp.status,
            });
        }
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let verdict = parse_answer(&resp.body, now_unix)
            .map_err(|detail| IntrospectError::Malformed { url, detail })?;
        self.cache()
            .put(digest, &verdict, self.cfg.cache, Instant::now(), now_unix);
        Ok(verdict.client_id)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_active_unexpired_token_names_its_client() {
        let ok = br#"{"active":true,"client_id":"branch","exp":1000.5,"aud":["hub"]}"#;
        assert_eq!(
            parse_answer(ok, 999).unwrap(),
            Verdict {
                client_id: Some("branch".into()),
                exp: Some(1000)
            }
        );
        assert_eq!(parse_answer(ok, 1000).unwrap().client_id, None, "expired");
        let off = br#"{"active":false}"#;
        assert_eq!(parse_answer(off, 0).unwrap().client_id, None);
        let no_exp = br#"{"active":true,"client_id":"b"}"#;
        assert_eq!(
            parse_answer(no_exp, 5).unwrap().client_id.as_deref(),
            Some("b")
        );
        for bad in [
            &b"<html>"[..],
            br#"{"client_id":"b"}"#,
            br#"{"active":"true","client_id":"b"}"#,
            br#"{"active":true}"#,
        ] {
            assert!(
                parse_answer(bad, 0).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn answers_are_kept_for_the_cache_time_and_never_past_the_tokens_expiry() {
        let mut c = Cache::default();
        let t0 = Instant::now();
        let v = |exp| Verdict {
            client_id: Some("b".into()),
            exp,
        };
        c.put([1; 32], &v(None), Duration::from_secs(30), t0, 100);
        assert_eq!(
            c.get(&[1; 32], t0 + Duration::from_secs(29)),
            Some(Some("b".into()))
        );
        assert_eq!(c.get(&[1; 32], t0 + Duration::from_secs(30)), None);
        c.put([2; 32], &v(Some(110)), Duration::from_secs(30), t0, 100);
        assert!(c.get(&[2; 32], t0 + Duration::from_secs(9)).is_some());
        assert_eq!(c.get(&[2; 32], t0 + Duration::from_secs(10)), None);
        let refused = Verdict {
            client_id: None,
            exp: None,
        };
        c.put([3; 32], &refused, Duration::from_secs(30), t0, 100);
        assert_eq!(c.get(&[3; 32], t0), Some(None), "a refusal is kept too");
        for i in 0..CACHE_CAP + 10 {
            let mut d = [0u8; 32];
            d[..8].copy_from_slice(&(i as u64).to_le_bytes());
            d[31] = 9;
            c.put(d, &v(None), Duration::from_secs(30), t0, 100);
        }
        assert!(c.kept.len() <= CACHE_CAP);
    }

    #[test]
    fn errors_never_quote_the_answer() {
        let e = IntrospectError::Status {
            url: "https://idp/introspect".into(),
            status: 401,
        };
        assert!(e.to_string().contains("introspection.client_id"), "{e}");
    }
}
