//! OAuth 2.0 client credentials (RFC 6749 §4.4): where a SCIM service hands out short-lived
//! bearer tokens instead of a static one.
//!
//! Owns: the token request (form body, client authentication), the token response, and
//! when a token is fetched again. The SCIM client asks [`TokenSource::bearer`] before each
//! request and calls [`TokenSource::expire`] when the service answers 401 with that token.
//!
//! Invariants:
//! * The client secret and the tokens appear only in the token request and in
//!   `Authorization` headers: never in logs or errors (an error body that echoes either is
//!   scrubbed). Both are [`Secret`]s.
//! * A token is replaced before it expires: at `expires_in` minus a fifth of it, at most a
//!   minute early ([`refresh_deadline`]); a token without `expires_in` is kept until the
//!   service refuses it. A 401 expires exactly the token it was sent with, so concurrent
//!   requests that saw the same 401 fetch one new token, not one each.
//! * One fetch at a time: requests that find the token stale wait for the fetch in progress.
//! * Client authentication is `client_secret_basic` (RFC 6749 §2.3.1: id and secret
//!   form-encoded, then base64 in `Authorization: Basic`) or `client_secret_post` (both in
//!   the form body).

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::net::http::{HttpClient, HttpError, HttpRequest, Method, Url};
use crate::secret::Secret;

/// Longest refresh margin before a token's expiry.
const MAX_MARGIN: Duration = Duration::from_secs(60);

/// How the client proves its identity at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `Authorization: Basic base64(id:secret)` (the RFC's default).
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Post,
}

/// Settings of the client credentials grant.
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    /// The token endpoint.
    pub token_url: Url,
    /// The client's id.
    pub client_id: String,
    /// The client's secret.
    pub client_secret: Secret,
    /// The `scope` parameter, if the service wants one.
    pub scope: Option<String>,
    /// How the client authenticates.
    pub auth: ClientAuth,
}

/// Why no token could be had. Never holds the secret or a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// The token endpoint answered with an error status.
    Refused {
        /// The token endpoint (without user info and query).
        url: String,
        /// The HTTP status.
        status: u16,
        /// `error` and `error_description` (RFC 6749 §5.2), or the start of the body.
        detail: Option<String>,
    },
    /// No usable answer arrived.
    Transport {
        /// The token endpoint.
        url: String,
        /// What went wrong on the wire.
        error: HttpError,
    },
    /// A 200 answer that is not a bearer token response.
    Malformed {
        /// The token endpoint.
        url: String,
        /// What is wrong with it.
        detail: String,
    },
}

impl TokenError {
    /// Worth trying again later (the endpoint was busy or out of reach).
    pub fn is_transient(&self) -> bool {
        match self {
            TokenError::Refused { status, .. } => matches!(status, 408 | 429 | 500..=599),
            TokenError::Transport { error, .. } => error.is_transient(),
            TokenError::Malformed { .. } => false,
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Refused {
                url,
                status,
                detail,
            } => {
                write!(f, "OAuth2 token endpoint {url} answered {status}")?;
                if let Some(d) = detail {
                    write!(f, ": {d}")?;
                }
                if matches!(status, 400 | 401) {
                    write!(f, " (check client_id, the client secret and client_auth)")?;
                }
                Ok(())
            }
            TokenError::Transport { url, error } => {
                write!(f, "OAuth2 token endpoint {url} failed: {error}")
            }
            TokenError::Malformed { url, detail } => {
                write!(
                    f,
                    "unexpected answer from OAuth2 token endpoint {url}: {detail}"
                )
            }
        }
    }
}

impl std::error::Error for TokenError {}

/// A token as the endpoint issued it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The access token.
    pub token: Secret,
    /// Its lifetime, when the endpoint said.
    pub expires_in: Option<Duration>,
}

pub use crate::net::http::form_encode;

/// The form body and `Authorization` header (if any) of a token request.
pub fn token_request(cc: &ClientCredentials) -> (String, Option<Secret>) {
    let mut body = String::from("grant_type=client_credentials");
    if let Some(scope) = &cc.scope {
        body.push_str("&scope=");
        body.push_str(&form_encode(scope));
    }
    match cc.auth {
        ClientAuth::Basic => {
            let pair = format!(
                "{}:{}",
                form_encode(&cc.client_id),
                form_encode(cc.client_secret.expose())
            );
            let header = format!("Basic {}", crate::base64::encode(pair.as_bytes()));
            (body, Some(Secret::new(header)))
        }
        ClientAuth::Post => {
            body.push_str("&client_id=");
            body.push_str(&form_encode(&cc.client_id));
            body.push_str("&client_secret=");
            body.push_str(&form_encode(cc.client_secret.expose()));
            (body, None)
        }
    }
}

/// Reads a token endpoint's answer. `scrub` holds values that must not appear in an error
/// (the client secret).
pub fn parse_token_response(
    url: &str,
    status: u16,
    body: &[u8],
    scrub: &[&str],
) -> Result<Issued, TokenError> {
    let json = serde_json::from_slice::<Value>(body).ok();
    if status != 200 {
        let detail = match &json {
            Some(v) if v.get("error").is_some() => {
                let code = v["error"].as_str().unwrap_or("");
                match v["error_description"].as_str() {
                    Some(d) => Some(format!("{code}: {d}")),
                    None => Some(code.to_string()),
                }
            }
            _ => Some(String::from_utf8_lossy(body).into_owned()),
        };
        let detail = detail.map(|d| clean(&d, scrub)).filter(|d| !d.is_empty());
        return Err(TokenError::Refused {
            url: url.to_string(),
            status,
            detail,
        });
    }
    let malformed = |detail: &str| TokenError::Malformed {
        url: url.to_string(),
        detail: detail.to_string(),
    };
    let v = json.ok_or_else(|| malformed("not JSON"))?;
    let token = v["access_token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| malformed("no access_token"))?;
    match v["token_type"].as_str() {
        Some(t) if t.eq_ignore_ascii_case("bearer") => {}
        Some(t) => {
            return Err(malformed(&format!(
                "token_type `{}` is not Bearer",
                clean(t, scrub)
            )))
        }
        None => return Err(malformed("no token_type")),
    }
    if token.contains(|c: char| c.is_control() || c == ' ') {
        return Err(malformed(
            "the access token holds spaces or control characters",
        ));
    }
    let expires_in = match &v["expires_in"] {
        Value::Null => None,
        // Some servers send the number as a string.
        Value::String(s) => s.trim().parse::<u64>().ok().map(Duration::from_secs),
        n => n.as_u64().map(Duration::from_secs),
    };
    Ok(Issued {
        token: Secret::new(token),
        expires_in,
    })
}

/// When a token issued at `issued` with lifetime `expires_in` is fetched again: a fifth of
/// its lifetime early, at most a minute early. `None`: only when the service refuses it.
pub fn refresh_deadline(issued: Instant, expires_in: Option<Duration>) -> Option<Instant> {
    let life = expires_in?;
    let margin = (life / 5).min(MAX_MARGIN);
    Some(issued + life.saturating_sub(margin))
}

fn clean(text: &str, scrub: &[&str]) -> String {
    let mut s = text.to_string();
    for secret in scrub.iter().filter(|s| !s.is_empty()) {
        s = s.replace(secret, "<redacted>");
    }
    crate::scim::client::clip(s.trim())
}

struct Held {
    token: Secret,
    refresh_at: Option<Instant>,
    generation: u64,
}

/// Hands out a valid bearer token, fetching one when none is held or it is due.
pub struct TokenSource {
    http: HttpClient,
    cc: ClientCredentials,
    held: Mutex<Option<Held>>,
    fetching: smol::lock::Mutex<()>,
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSource")
            .field(
                "token_url",
                &crate::net::http::redact_url(&self.cc.token_url),
            )
            .field("client_id", &self.cc.client_id)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// A source that fetches from `cc.token_url` through `http`.
    pub fn new(http: HttpClient, cc: ClientCredentials) -> TokenSource {
        TokenSource {
            http,
            cc,
            held: Mutex::new(None),
            fetching: smol::lock::Mutex::new(()),
        }
    }

    /// The token endpoint, for messages.
    pub fn token_url(&self) -> String {
        crate::net::http::redact_url(&self.cc.token_url)
    }

    /// A token to send now, and its generation (for [`TokenSource::expire`]).
    pub async fn bearer(&self) -> Result<(Secret, u64), TokenError> {
        if let Some(t) = self.current(Instant::now()) {
            return Ok(t);
        }
        let _one = self.fetching.lock().await;
        // Another request may have fetched while this one waited.
        if let Some(t) = self.current(Instant::now()) {
            return Ok(t);
        }
        let issued = self.fetch().await?;
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let generation = held.as_ref().map_or(1, |h| h.generation + 1);
        let refresh_at = refresh_deadline(Instant::now(), issued.expires_in);
        log::debug!(
            "OAuth2: new token from {} ({})",
            self.token_url(),
            match issued.expires_in {
                Some(d) => format!("expires in {} s", d.as_secs()),
                None => "no expiry given".into(),
            }
        );
        *held = Some(Held {
            token: issued.token.clone(),
            refresh_at,
            generation,
        });
        Ok((issued.token, generation))
    }

    /// The service refused the token of `generation`: the next [`TokenSource::bearer`]
    /// fetches a new one (unless another request already did).
    pub fn expire(&self, generation: u64) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held.as_ref().is_some_and(|h| h.generation == generation) {
            if let Some(h) = held.as_mut() {
                h.refresh_at = Some(Instant::now() - Duration::from_millis(1));
            }
        }
    }

    /// Fetches a token now, whatever is held, and returns its lifetime (`check`).
    pub async fn fetch_now(&self) -> Result<Option<Duration>, TokenError> {
        let _one = self.fetching.lock().await;
        let issued = self.fetch().await?;
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let generation = held.as_ref().map_or(1, |h| h.generation + 1);
        *held = Some(Held {
            token: issued.token,
            refresh_at: refresh_deadline(Instant::now(), issued.expires_in),
            generation,
        });
        Ok(issued.expires_in)
    }

    /// The token held now, if any (to scrub it from error text).
    pub fn held_token(&self) -> Option<Secret> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.as_ref().map(|h| h.token.clone())
    }

    fn current(&self, now: Instant) -> Option<(Secret, u64)> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let h = held.as_ref()?;
        if h.refresh_at.is_some_and(|at| now >= at) {
            return None;
        }
        Some((h.token.clone(), h.generation))
    }

    async fn fetch(&self) -> Result<Issued, TokenError> {
        let url = self.token_url();
        let (body, basic) = token_request(&self.cc);
        let mut req = HttpRequest::new(Method::Post, self.cc.token_url.clone())
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Accept", "application/json")
            .body(body.into_bytes());
        if let Some(b) = &basic {
            req = req.header("Authorization", b.expose());
        }
        let resp = self
            .http
            .send(req)
            .await
            .map_err(|error| TokenError::Transport {
                url: url.clone(),
                error,
            })?;
        parse_token_response(
            &url,
            resp.status,
            &resp.body,
            &[self.cc.client_secret.expose()],
        )
    }
}

/// How a client proves itself to a service (`[scim]` and `[relay]` alike): a static bearer
/// token, or OAuth2 client credentials.
#[derive(Debug, Clone)]
pub enum Auth {
    /// `token_file` / `token_env`.
    Bearer(Secret),
    /// `token_url`, `client_id`, `client_secret_file` / `client_secret_env`, `scope`,
    /// `client_auth`.
    ClientCredentials(ClientCredentials),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(auth: ClientAuth, scope: Option<&str>) -> ClientCredentials {
        ClientCredentials {
            token_url: "https://idp.example/oauth/token".parse().unwrap(),
            client_id: "agent one".into(),
            client_secret: Secret::new("s3:cr&t"),
            scope: scope.map(str::to_string),
            auth,
        }
    }

    #[test]
    fn basic_auth_form_encodes_id_and_secret_before_base64() {
        let (body, header) = token_request(&cc(ClientAuth::Basic, Some("scim.write users")));
        assert_eq!(
            body,
            "grant_type=client_credentials&scope=scim.write%20users"
        );
        let header = header.unwrap();
        let b64 = header.expose().strip_prefix("Basic ").unwrap();
        let pair = crate::base64::decode(b64).unwrap();
        assert_eq!(String::from_utf8(pair).unwrap(), "agent%20one:s3%3Acr%26t");
        assert!(!body.contains("s3"), "the secret stays out of the body");
    }

    #[test]
    fn post_auth_puts_id_and_secret_in_the_body() {
        let (body, header) = token_request(&cc(ClientAuth::Post, None));
        assert!(header.is_none());
        assert_eq!(
            body,
            "grant_type=client_credentials&client_id=agent%20one&client_secret=s3%3Acr%26t"
        );
    }

    #[test]
    fn token_responses() {
        let ok = br#"{"access_token":"abc.def","token_type":"Bearer","expires_in":60}"#;
        let t = parse_token_response("u", 200, ok, &[]).unwrap();
        assert_eq!(t.token.expose(), "abc.def");
        assert_eq!(t.expires_in, Some(Duration::from_secs(60)));
        let lower = br#"{"access_token":"x","token_type":"bearer","expires_in":"3600"}"#;
        let t = parse_token_response("u", 200, lower, &[]).unwrap();
        assert_eq!(t.expires_in, Some(Duration::from_secs(3600)));
        let no_expiry = br#"{"access_token":"x","token_type":"Bearer"}"#;
        assert_eq!(
            parse_token_response("u", 200, no_expiry, &[])
                .unwrap()
                .expires_in,
            None
        );
        for bad in [
            &br#"{"token_type":"Bearer"}"#[..],
            br#"{"access_token":"","token_type":"Bearer"}"#,
            br#"{"access_token":"x","token_type":"mac"}"#,
            br#"{"access_token":"x"}"#,
            br#"{"access_token":"a b","token_type":"Bearer"}"#,
            b"<html>ok</html>",
        ] {
            let e = parse_token_response("u", 200, bad, &[]).unwrap_err();
            assert!(matches!(e, TokenError::Malformed { .. }), "{e}");
        }
    }

    #[test]
    fn refusals_name_the_error_and_never_the_secret() {
        let body = br#"{"error":"invalid_client","error_description":"bad secret s3:cr&t"}"#;
        let e = parse_token_response("https://idp/token", 401, body, &["s3:cr&t"]).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("401"), "{text}");
        assert!(
            text.contains("invalid_client: bad secret <redacted>"),
            "{text}"
        );
        assert!(text.contains("check client_id"), "{text}");
        assert!(!text.contains("s3:cr&t"), "{text}");
        assert!(!e.is_transient());
        let busy = parse_token_response("u", 503, b"busy\nnow", &[]).unwrap_err();
        assert!(busy.is_transient());
        assert!(busy.to_string().ends_with("busy now"), "{busy}");
    }

    #[test]
    fn tokens_are_replaced_before_they_expire() {
        let t0 = Instant::now();
        // A fifth of the lifetime early...
        assert_eq!(
            refresh_deadline(t0, Some(Duration::from_secs(60))),
            Some(t0 + Duration::from_secs(48))
        );
        // ...at most a minute early.
        assert_eq!(
            refresh_deadline(t0, Some(Duration::from_secs(864_000))),
            Some(t0 + Duration::from_secs(864_000 - 60))
        );
        assert_eq!(refresh_deadline(t0, Some(Duration::ZERO)), Some(t0));
        assert_eq!(refresh_deadline(t0, None), None);
    }

    #[test]
    fn a_refused_token_is_expired_once_for_all_who_saw_it() {
        let http = HttpClient::new(crate::net::http::HttpConfig::default()).unwrap();
        let src = TokenSource::new(http, cc(ClientAuth::Basic, None));
        *src.held.lock().unwrap() = Some(Held {
            token: Secret::new("t2"),
            refresh_at: None,
            generation: 2,
        });
        assert_eq!(src.current(Instant::now()).unwrap().1, 2);
        // A 401 for an older token changes nothing: a newer one is already held.
        src.expire(1);
        assert!(src.current(Instant::now()).is_some());
        src.expire(2);
        assert!(src.current(Instant::now()).is_none());
    }
}
