//! SCIM 2.0 provisioning client (RFC 7644): the export side's only way to a SCIM service.
//!
//! Owns: URLs under the configured base, the bearer token on the wire, SCIM status and error
//! handling, and retries. Sends through [`HttpClient`]; knows nothing about LDAP or mapping.
//!
//! Behaviour and invariants:
//! * Every request carries `Authorization: Bearer <token>` and
//!   `Accept: application/scim+json`; bodies are `application/scim+json`. The token appears
//!   nowhere else: not in logs, not in errors (server-sent error text is scrubbed of it).
//! * Endpoint URLs keep the base path (`https://h/scim/v2` + `Users/<id>`); ids are
//!   percent-encoded as one path segment; filters are percent-encoded in the query.
//! * Filter values are JSON strings (RFC 7644 §3.4.2.2): quotes and backslashes escaped.
//! * Retries, up to `max_attempts` tries in all: 429 and 503 wait for `Retry-After` (capped
//!   at 5 min) or else back off; 408, 500, 502, 504 and transient transport failures
//!   (connect, reset, timeout) back off with full jitter. Other 4xx are never retried.
//! * **POST is retried only when the server certainly did not process it**: connect/TLS
//!   failures, 408, 429, 503. After any other failure the create may or may not exist:
//!   [`ScimError::is_ambiguous_write`] is true and the caller must look the resource up by
//!   `externalId` before creating again.
//! * PUT, PATCH and DELETE are retried after ambiguous failures too. For PATCH this assumes
//!   the operations are idempotent in effect (replace; add/remove of member values, which
//!   RFC 7644 §3.5.2 makes no-ops when already applied): callers must send only such.
//! * Lookups (`find_by_*`) fail with [`ScimError::Ambiguous`] when more than one resource
//!   matches; results whose attribute differs from the value asked for (servers that match
//!   loosely) are ignored.
//! * [`ScimClient::write_counts`] counts every write request handed to the transport,
//!   retries included, so "0 writes" is a checkable claim.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use crate::relay::backoff::{parse_retry_after, Backoff};
use crate::relay::http::{HttpClient, HttpError, HttpRequest, HttpResponse, Method, Url};
use crate::scim::resource::{ResourceKind, LIST_RESPONSE, PATCH_OP};
use crate::secret::Secret;

/// The SCIM media type, sent as `Accept` and `Content-Type`.
pub const SCIM_JSON: &str = "application/scim+json";

/// Longest server-sent error text kept in a [`ScimError`].
const MAX_DETAIL_CHARS: usize = 300;

/// Settings of a [`ScimClient`].
#[derive(Debug, Clone)]
pub struct ScimConfig {
    /// Base URL of the SCIM service, e.g. `https://scim.example.com/v2`.
    pub base_url: Url,
    /// Bearer token.
    pub token: Secret,
    /// Tries per request, the first included (1 = no retry).
    pub max_attempts: u32,
    /// First backoff ceiling; doubles per retry.
    pub backoff_base: Duration,
    /// Largest backoff delay.
    pub backoff_cap: Duration,
}

impl ScimConfig {
    /// Defaults: 4 tries, backoff 500 ms doubling up to 30 s.
    pub fn new(base_url: Url, token: Secret) -> ScimConfig {
        ScimConfig {
            base_url,
            token,
            max_attempts: 4,
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(30),
        }
    }
}

/// Limits of the service's `/Bulk` endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkLimits {
    /// Most operations in one bulk request.
    pub max_operations: u32,
    /// Largest bulk request body, in bytes.
    pub max_payload_size: u64,
}

/// What the service says it supports (`/ServiceProviderConfig`, RFC 7643 §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceProviderConfig {
    /// PATCH is supported.
    pub patch: bool,
    /// Bulk is supported, with these limits.
    pub bulk: Option<BulkLimits>,
    /// Filtering is supported.
    pub filter: bool,
    /// Most resources one filtered query returns.
    pub filter_max_results: Option<u32>,
    /// ETags are supported.
    pub etag: bool,
}

/// How many write requests the client has sent (each try counts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteCounts {
    /// POST requests.
    pub creates: u64,
    /// PUT requests.
    pub replaces: u64,
    /// PATCH requests.
    pub patches: u64,
    /// DELETE requests.
    pub deletes: u64,
}

impl WriteCounts {
    /// All write requests together.
    pub fn total(&self) -> u64 {
        self.creates + self.replaces + self.patches + self.deletes
    }
}

#[derive(Debug, Default)]
struct Counters {
    creates: AtomicU64,
    replaces: AtomicU64,
    patches: AtomicU64,
    deletes: AtomicU64,
}

/// Why a SCIM operation failed. Never contains the token.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScimError {
    /// The service answered with an error status (after retries, if any applied).
    Http {
        /// The request method.
        method: Method,
        /// Path and (decoded) query of the request.
        path: String,
        /// The status code.
        status: u16,
        /// `scimType` from the SCIM error body, e.g. `uniqueness`.
        scim_type: Option<String>,
        /// `detail` from the SCIM error body, or the start of a non-SCIM body.
        detail: Option<String>,
    },
    /// No usable response arrived (connect, TLS, timeout, protocol), after retries.
    Transport {
        /// The request method.
        method: Method,
        /// Path and (decoded) query of the request.
        path: String,
        /// What went wrong on the wire.
        error: HttpError,
    },
    /// A success response did not have the expected content.
    Decode {
        /// Which response, e.g. `response to POST /v2/Users`.
        what: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A lookup that must find at most one resource found several.
    Ambiguous {
        /// Users or groups.
        kind: ResourceKind,
        /// The attribute looked up (`externalId`, `userName`).
        attribute: &'static str,
        /// The value looked up.
        value: String,
        /// How many resources the service reports.
        count: u64,
    },
    /// The base URL cannot carry endpoint paths (e.g. `mailto:`).
    InvalidBaseUrl {
        /// The base URL, without user info and query.
        url: String,
    },
}

impl ScimError {
    /// Worth retrying later (the client already retried what it could).
    pub fn is_transient(&self) -> bool {
        match self {
            ScimError::Http { status, .. } => is_transient_status(*status),
            ScimError::Transport { error, .. } => error.is_transient(),
            _ => false,
        }
    }

    /// A write failed in a way that leaves open whether the service applied it (timeout
    /// after sending, connection lost, 500/502/504). After such a POST, look the resource
    /// up by `externalId` before creating it again.
    pub fn is_ambiguous_write(&self) -> bool {
        match self {
            ScimError::Http { method, status, .. } => {
                is_write(*method) && *status >= 500 && !matches!(status, 501 | 503)
            }
            ScimError::Transport { method, error, .. } => {
                is_write(*method) && !error.certainly_not_sent()
            }
            _ => false,
        }
    }

    /// The HTTP status, when the service answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ScimError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The SCIM `scimType` of the error, when the service sent one.
    pub fn scim_type(&self) -> Option<&str> {
        match self {
            ScimError::Http { scim_type, .. } => scim_type.as_deref(),
            _ => None,
        }
    }
}

impl fmt::Display for ScimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScimError::Http {
                method,
                path,
                status,
                scim_type,
                detail,
            } => {
                write!(f, "SCIM {method} {path} answered {status}")?;
                if let Some(t) = scim_type {
                    write!(f, " ({t})")?;
                }
                if let Some(d) = detail {
                    write!(f, ": {d}")?;
                }
                Ok(())
            }
            ScimError::Transport {
                method,
                path,
                error,
            } => write!(f, "SCIM {method} {path} failed: {error}"),
            ScimError::Decode { what, detail } => write!(f, "unexpected {what}: {detail}"),
            ScimError::Ambiguous {
                kind,
                attribute,
                value,
                count,
            } => write!(
                f,
                "{count} SCIM {}s have {attribute} {value:?}; expected at most one",
                kind.word()
            ),
            ScimError::InvalidBaseUrl { url } => {
                write!(f, "SCIM base URL {url} cannot have endpoint paths")
            }
        }
    }
}

impl std::error::Error for ScimError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ScimError::Transport { error, .. } => Some(error),
            _ => None,
        }
    }
}

fn is_write(method: Method) -> bool {
    matches!(
        method,
        Method::Post | Method::Put | Method::Patch | Method::Delete
    )
}

fn is_transient_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

/// What to do after one try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Hand the outcome to the caller.
    Done,
    /// Try again, after the server's delay if it gave one, else after backoff.
    Retry(Option<Duration>),
}

/// Retry decision for a response status.
fn after_status(method: Method, status: u16, retry_after: Option<&str>, now: SystemTime) -> Next {
    match status {
        // The server says it did not process the request.
        429 | 503 => Next::Retry(retry_after.and_then(|v| parse_retry_after(v, now))),
        408 => Next::Retry(None),
        // The request may have been processed: a POST must not be repeated blindly.
        500 | 502 | 504 if method != Method::Post => Next::Retry(None),
        _ => Next::Done,
    }
}

/// Retry decision for a transport failure.
fn after_transport(method: Method, error: &HttpError) -> Next {
    if error.is_transient() && (method != Method::Post || error.certainly_not_sent()) {
        Next::Retry(None)
    } else {
        Next::Done
    }
}

/// The URL of an endpoint below `base`: base path kept, each segment percent-encoded.
fn endpoint_url(base: &Url, segments: &[&str]) -> Result<Url, ScimError> {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.path_segments_mut()
        .map_err(|()| ScimError::InvalidBaseUrl {
            url: crate::relay::http::redact_url(base),
        })?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

/// Percent-encodes everything but RFC 3986 unreserved characters (so a space is `%20`,
/// never `+`).
fn encode_query_component(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reverses percent-encoding for display (invalid escapes are kept as they are).
fn decode_for_display(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `attribute eq "value"`, the value as a JSON string (RFC 7644 §3.4.2.2).
fn eq_filter(attribute: &str, value: &str) -> String {
    let quoted = serde_json::to_string(value).unwrap_or_else(|_| "\"\"".to_string());
    format!("{attribute} eq {quoted}")
}

/// Path and decoded query of a URL, for error messages.
fn shown_path(url: &Url) -> String {
    match url.query() {
        Some(q) => format!("{}?{}", url.path(), decode_for_display(q)),
        None => url.path().to_string(),
    }
}

/// `scimType` and `detail` of a SCIM error body; for other bodies, the start of the text.
fn parse_error_body(body: &[u8]) -> (Option<String>, Option<String>) {
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) {
        let text = |key: &str| {
            map.get(key)
                .and_then(Value::as_str)
                .map(|s| clip(s.trim()))
                .filter(|s| !s.is_empty())
        };
        return (text("scimType"), text("detail"));
    }
    let text = String::from_utf8_lossy(body);
    let text = clip(text.trim());
    (None, Some(text).filter(|t| !t.is_empty()))
}

/// At most [`MAX_DETAIL_CHARS`] characters, control characters replaced by spaces.
fn clip(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(MAX_DETAIL_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().count() > MAX_DETAIL_CHARS {
        out.push('…');
    }
    out
}

/// The resources of a list response that carry `attribute` equal to `value` (or do not
/// show the attribute at all: then the server's filter is trusted). Fails when more than
/// one may match.
fn single_match(
    list: &Value,
    kind: ResourceKind,
    attribute: &'static str,
    value: &str,
    case_exact: bool,
) -> Result<Option<Value>, ScimError> {
    let resources = match list.get("Resources") {
        Some(Value::Array(items)) => items.as_slice(),
        Some(Value::Null) | None => &[],
        Some(_) => {
            return Err(ScimError::Decode {
                what: format!("list response for {attribute} {value:?}"),
                detail: "\"Resources\" is not an array".into(),
            })
        }
    };
    let total = list
        .get("totalResults")
        .and_then(Value::as_u64)
        .unwrap_or(resources.len() as u64);
    let unseen = total.saturating_sub(resources.len() as u64);
    let matching: Vec<&Value> = resources
        .iter()
        .filter(|r| match r.get(attribute).and_then(Value::as_str) {
            Some(v) if case_exact => v == value,
            Some(v) => v.to_lowercase() == value.to_lowercase(),
            None => true,
        })
        .collect();
    if matching.len() as u64 + unseen > 1 {
        return Err(ScimError::Ambiguous {
            kind,
            attribute,
            value: value.to_string(),
            count: total.max(matching.len() as u64),
        });
    }
    Ok(matching.first().map(|v| (*v).clone()))
}

/// SCIM provisioning client. Cheap to clone; clones share the write counters.
#[derive(Clone)]
pub struct ScimClient {
    http: HttpClient,
    cfg: Arc<ScimConfig>,
    counters: Arc<Counters>,
}

impl fmt::Debug for ScimClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScimClient")
            .field(
                "base_url",
                &crate::relay::http::redact_url(&self.cfg.base_url),
            )
            .finish_non_exhaustive()
    }
}

impl ScimClient {
    /// A client for the service at `cfg.base_url`, sending through `http`.
    pub fn new(http: HttpClient, cfg: ScimConfig) -> ScimClient {
        ScimClient {
            http,
            cfg: Arc::new(cfg),
            counters: Arc::default(),
        }
    }

    /// Write requests sent so far (all clones together).
    pub fn write_counts(&self) -> WriteCounts {
        let c = &self.counters;
        WriteCounts {
            creates: c.creates.load(Ordering::Relaxed),
            replaces: c.replaces.load(Ordering::Relaxed),
            patches: c.patches.load(Ordering::Relaxed),
            deletes: c.deletes.load(Ordering::Relaxed),
        }
    }

    /// Reads `/ServiceProviderConfig`.
    pub async fn service_provider_config(&self) -> Result<ServiceProviderConfig, ScimError> {
        let url = endpoint_url(&self.cfg.base_url, &["ServiceProviderConfig"])?;
        let resp = self.execute(Method::Get, &url, None).await?;
        if resp.status != 200 {
            return Err(self.http_error(Method::Get, &url, &resp));
        }
        let v = self.json(Method::Get, &url, &resp)?;
        let supported = |key: &str| v[key]["supported"].as_bool().unwrap_or(false);
        let as_u32 = |v: &Value| v.as_u64().map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        let bulk = supported("bulk").then(|| BulkLimits {
            max_operations: as_u32(&v["bulk"]["maxOperations"]).unwrap_or(0),
            max_payload_size: v["bulk"]["maxPayloadSize"].as_u64().unwrap_or(0),
        });
        Ok(ServiceProviderConfig {
            patch: supported("patch"),
            bulk,
            filter: supported("filter"),
            filter_max_results: as_u32(&v["filter"]["maxResults"]),
            etag: supported("etag"),
        })
    }

    /// Reads one resource by id; `None` when the service answers 404.
    pub async fn get(&self, kind: ResourceKind, id: &str) -> Result<Option<Value>, ScimError> {
        let url = endpoint_url(&self.cfg.base_url, &[kind.endpoint(), id])?;
        let resp = self.execute(Method::Get, &url, None).await?;
        match resp.status {
            200 => Ok(Some(self.json(Method::Get, &url, &resp)?)),
            404 => Ok(None),
            _ => Err(self.http_error(Method::Get, &url, &resp)),
        }
    }

    /// Finds the one resource whose `externalId` is exactly `external_id` (hard match).
    pub async fn find_by_external_id(
        &self,
        kind: ResourceKind,
        external_id: &str,
    ) -> Result<Option<Value>, ScimError> {
        self.find(kind, "externalId", external_id, true).await
    }

    /// Finds the one user whose `userName` is `user_name`, compared case-insensitively as
    /// RFC 7643 defines it (soft match).
    pub async fn find_by_user_name(&self, user_name: &str) -> Result<Option<Value>, ScimError> {
        self.find(ResourceKind::User, "userName", user_name, false)
            .await
    }

    async fn find(
        &self,
        kind: ResourceKind,
        attribute: &'static str,
        value: &str,
        case_exact: bool,
    ) -> Result<Option<Value>, ScimError> {
        let mut url = endpoint_url(&self.cfg.base_url, &[kind.endpoint()])?;
        let filter = eq_filter(attribute, value);
        url.set_query(Some(&format!("filter={}", encode_query_component(&filter))));
        let resp = self.execute(Method::Get, &url, None).await?;
        if resp.status != 200 {
            return Err(self.http_error(Method::Get, &url, &resp));
        }
        let list = self.json(Method::Get, &url, &resp)?;
        let schemas_ok = list["schemas"]
            .as_array()
            .is_none_or(|s| s.iter().any(|x| x == LIST_RESPONSE));
        if !schemas_ok {
            return Err(ScimError::Decode {
                what: format!("response to GET {}", shown_path(&url)),
                detail: "not a ListResponse".into(),
            });
        }
        single_match(&list, kind, attribute, value, case_exact)
    }

    /// Creates a resource (POST); returns it as the service stored it, with its `id`.
    ///
    /// Not retried after failures that may have created it: see
    /// [`ScimError::is_ambiguous_write`].
    pub async fn create(&self, kind: ResourceKind, body: &Value) -> Result<Value, ScimError> {
        let url = endpoint_url(&self.cfg.base_url, &[kind.endpoint()])?;
        let resp = self.execute(Method::Post, &url, Some(body)).await?;
        if !resp.is_success() {
            return Err(self.http_error(Method::Post, &url, &resp));
        }
        let created = self.json(Method::Post, &url, &resp)?;
        if created.get("id").and_then(Value::as_str).is_none() {
            return Err(ScimError::Decode {
                what: format!("response to POST {}", shown_path(&url)),
                detail: format!("the created {} has no \"id\"", kind.word()),
            });
        }
        Ok(created)
    }

    /// Replaces a resource (PUT); returns it as the service stored it.
    pub async fn replace(
        &self,
        kind: ResourceKind,
        id: &str,
        body: &Value,
    ) -> Result<Value, ScimError> {
        let url = endpoint_url(&self.cfg.base_url, &[kind.endpoint(), id])?;
        let resp = self.execute(Method::Put, &url, Some(body)).await?;
        if !resp.is_success() {
            return Err(self.http_error(Method::Put, &url, &resp));
        }
        self.json(Method::Put, &url, &resp)
    }

    /// Sends a PatchOp message with `operations`; 200 and 204 both count as done. The
    /// operations must be idempotent in effect (they may be sent twice on retry).
    pub async fn patch(
        &self,
        kind: ResourceKind,
        id: &str,
        operations: Vec<Value>,
    ) -> Result<(), ScimError> {
        let url = endpoint_url(&self.cfg.base_url, &[kind.endpoint(), id])?;
        let body = json!({ "schemas": [PATCH_OP], "Operations": operations });
        let resp = self.execute(Method::Patch, &url, Some(&body)).await?;
        if !resp.is_success() {
            return Err(self.http_error(Method::Patch, &url, &resp));
        }
        Ok(())
    }

    /// Deletes a resource; a 404 counts as done.
    pub async fn delete(&self, kind: ResourceKind, id: &str) -> Result<(), ScimError> {
        let url = endpoint_url(&self.cfg.base_url, &[kind.endpoint(), id])?;
        let resp = self.execute(Method::Delete, &url, None).await?;
        if resp.is_success() || resp.status == 404 {
            return Ok(());
        }
        Err(self.http_error(Method::Delete, &url, &resp))
    }

    /// Sends one request with retries; returns the last response, whatever its status.
    async fn execute(
        &self,
        method: Method,
        url: &Url,
        body: Option<&Value>,
    ) -> Result<HttpResponse, ScimError> {
        let body = body.map(|b| serde_json::to_vec(b).unwrap_or_default());
        let mut backoff = Backoff::new(self.cfg.backoff_base, self.cfg.backoff_cap)
            .with_max_attempts(self.cfg.max_attempts);
        loop {
            let mut req = HttpRequest::new(method, url.clone())
                .header(
                    "Authorization",
                    format!("Bearer {}", self.cfg.token.expose()),
                )
                .header("Accept", SCIM_JSON);
            if let Some(b) = &body {
                req = req.header("Content-Type", SCIM_JSON).body(b.clone());
            }
            self.count(method);
            let (next, outcome) = match self.http.send(req).await {
                Ok(resp) => {
                    let retry_after = resp.header("retry-after");
                    let next = after_status(method, resp.status, retry_after, SystemTime::now());
                    (next, Ok(resp))
                }
                Err(error) => (
                    after_transport(method, &error),
                    Err(ScimError::Transport {
                        method,
                        path: shown_path(url),
                        error,
                    }),
                ),
            };
            let delay = match next {
                Next::Retry(server_delay) => backoff.next_delay_or(server_delay),
                Next::Done => None,
            };
            let Some(delay) = delay else {
                return outcome;
            };
            match &outcome {
                Ok(resp) => log::warn!(
                    "SCIM {method} {} answered {}; retrying in {delay:?}",
                    shown_path(url),
                    resp.status
                ),
                Err(e) => log::warn!("{e}; retrying in {delay:?}"),
            }
            smol::Timer::after(delay).await;
        }
    }

    fn count(&self, method: Method) {
        let c = &self.counters;
        let counter = match method {
            Method::Post => &c.creates,
            Method::Put => &c.replaces,
            Method::Patch => &c.patches,
            Method::Delete => &c.deletes,
            Method::Get | Method::Head => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The error for an unexpected status, with the SCIM error body parsed and the token
    /// scrubbed from anything the server echoed.
    fn http_error(&self, method: Method, url: &Url, resp: &HttpResponse) -> ScimError {
        let (scim_type, detail) = parse_error_body(&resp.body);
        let token = self.cfg.token.expose();
        let scrub = |s: String| {
            if token.is_empty() {
                s
            } else {
                s.replace(token, "<redacted>")
            }
        };
        ScimError::Http {
            method,
            path: shown_path(url),
            status: resp.status,
            scim_type: scim_type.map(scrub),
            detail: detail.map(scrub),
        }
    }

    /// The body of a success response as a JSON value.
    fn json(&self, method: Method, url: &Url, resp: &HttpResponse) -> Result<Value, ScimError> {
        serde_json::from_slice(&resp.body).map_err(|e| ScimError::Decode {
            what: format!("response to {method} {}", shown_path(url)),
            detail: if resp.body.is_empty() {
                format!("empty body with status {}", resp.status)
            } else {
                format!("not JSON: {e}")
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn endpoint_urls_keep_the_base_path() {
        for base in [
            "http://h:8080/v2",
            "http://h:8080/v2/",
            "http://h:8080/v2?x=1",
        ] {
            let u = endpoint_url(&url(base), &["Users", "abc"]).unwrap();
            assert_eq!(u.as_str(), "http://h:8080/v2/Users/abc", "{base}");
        }
        let u = endpoint_url(&url("https://h/scim/tenant/v2"), &["ServiceProviderConfig"]).unwrap();
        assert_eq!(u.as_str(), "https://h/scim/tenant/v2/ServiceProviderConfig");
        let u = endpoint_url(&url("https://h"), &["Groups"]).unwrap();
        assert_eq!(u.as_str(), "https://h/Groups");
        let u = endpoint_url(&url("https://h/v2"), &["Users", "a/b?c#d e%"]).unwrap();
        assert_eq!(u.path(), "/v2/Users/a%2Fb%3Fc%23d%20e%25");
        assert!(endpoint_url(&url("mailto:x@y.test"), &["Users"]).is_err());
    }

    #[test]
    fn filters_escape_quotes_and_backslashes() {
        assert_eq!(eq_filter("externalId", "abc"), r#"externalId eq "abc""#);
        assert_eq!(
            eq_filter("externalId", r#"a"b\c"#),
            r#"externalId eq "a\"b\\c""#
        );
        assert_eq!(eq_filter("userName", "a\nb"), r#"userName eq "a\nb""#);
        assert_eq!(eq_filter("userName", "Jörg"), r#"userName eq "Jörg""#);
    }

    #[test]
    fn query_components_are_percent_encoded() {
        assert_eq!(
            encode_query_component(r#"externalId eq "a+b/c==""#),
            "externalId%20eq%20%22a%2Bb%2Fc%3D%3D%22"
        );
        assert_eq!(encode_query_component("ö"), "%C3%B6");
        assert_eq!(encode_query_component("a-b.c_d~e"), "a-b.c_d~e");
        let mut u = url("http://h/v2/Users");
        let f = eq_filter("externalId", "x&y=z");
        u.set_query(Some(&format!("filter={}", encode_query_component(&f))));
        assert_eq!(shown_path(&u), r#"/v2/Users?filter=externalId eq "x&y=z""#);
    }

    #[test]
    fn display_decoding_tolerates_bad_escapes() {
        assert_eq!(decode_for_display("a%20b%2"), "a b%2");
        assert_eq!(decode_for_display("%zz%"), "%zz%");
        assert_eq!(decode_for_display("%C3%B6"), "ö");
    }

    #[test]
    fn error_bodies() {
        let body = br#"{"schemas":["urn:ietf:params:scim:api:messages:2.0:Error"],
            "status":"409","scimType":"uniqueness","detail":"One or more of the attribute values are already in use"}"#;
        let (t, d) = parse_error_body(body);
        assert_eq!(t.as_deref(), Some("uniqueness"));
        assert_eq!(
            d.as_deref(),
            Some("One or more of the attribute values are already in use")
        );
        let (t, d) = parse_error_body(br#"{"status": 401}"#);
        assert_eq!((t, d), (None, None));
        let (t, d) = parse_error_body(b"<html>Bad\r\nGateway</html>");
        assert_eq!(
            (t.as_deref(), d.as_deref()),
            (None, Some("<html>Bad  Gateway</html>"))
        );
        let (_, d) = parse_error_body("x".repeat(1000).as_bytes());
        assert_eq!(d.unwrap().chars().count(), MAX_DETAIL_CHARS + 1);
        assert_eq!(parse_error_body(b""), (None, None));
    }

    #[test]
    fn errors_name_method_path_status_and_detail() {
        let e = ScimError::Http {
            method: Method::Post,
            path: "/v2/Users".into(),
            status: 409,
            scim_type: Some("uniqueness".into()),
            detail: Some("userName taken".into()),
        };
        assert_eq!(
            e.to_string(),
            "SCIM POST /v2/Users answered 409 (uniqueness): userName taken"
        );
        assert!(!e.is_transient() && !e.is_ambiguous_write());
        assert_eq!((e.status(), e.scim_type()), (Some(409), Some("uniqueness")));
        let e = ScimError::Ambiguous {
            kind: ResourceKind::User,
            attribute: "externalId",
            value: "AQID".into(),
            count: 2,
        };
        assert!(e.to_string().contains("\"AQID\""), "{e}");
    }

    #[test]
    fn ambiguity_of_failed_writes() {
        let http = |method, status| ScimError::Http {
            method,
            path: "/v2/Users".into(),
            status,
            scim_type: None,
            detail: None,
        };
        assert!(http(Method::Post, 500).is_ambiguous_write());
        assert!(http(Method::Post, 504).is_ambiguous_write());
        assert!(!http(Method::Post, 503).is_ambiguous_write());
        assert!(!http(Method::Post, 429).is_ambiguous_write());
        assert!(!http(Method::Get, 500).is_ambiguous_write());
        assert!(http(Method::Get, 503).is_transient());
        let transport = |method, error| ScimError::Transport {
            method,
            path: "/v2/Users".into(),
            error,
        };
        let refused = HttpError::Connect {
            host: "h:1".into(),
            detail: "refused".into(),
        };
        let timed_out = HttpError::Timeout {
            what: crate::relay::http::TimeoutKind::Response,
            host: "h:1".into(),
            after: Duration::from_secs(1),
        };
        assert!(!transport(Method::Post, refused).is_ambiguous_write());
        assert!(transport(Method::Post, timed_out.clone()).is_ambiguous_write());
        assert!(transport(Method::Post, timed_out).is_transient());
    }

    #[test]
    fn retry_decisions() {
        let now = SystemTime::UNIX_EPOCH;
        assert_eq!(after_status(Method::Post, 201, None, now), Next::Done);
        assert_eq!(after_status(Method::Get, 404, None, now), Next::Done);
        assert_eq!(after_status(Method::Post, 409, None, now), Next::Done);
        assert_eq!(after_status(Method::Get, 401, None, now), Next::Done);
        assert_eq!(
            after_status(Method::Post, 429, Some("7"), now),
            Next::Retry(Some(Duration::from_secs(7)))
        );
        assert_eq!(
            after_status(Method::Post, 503, Some("36000"), now),
            Next::Retry(Some(Duration::from_secs(300)))
        );
        assert_eq!(
            after_status(Method::Put, 503, Some("junk"), now),
            Next::Retry(None)
        );
        assert_eq!(after_status(Method::Put, 500, None, now), Next::Retry(None));
        assert_eq!(
            after_status(Method::Patch, 502, None, now),
            Next::Retry(None)
        );
        assert_eq!(after_status(Method::Post, 500, None, now), Next::Done);
        assert_eq!(
            after_status(Method::Post, 408, None, now),
            Next::Retry(None)
        );
        let refused = HttpError::Connect {
            host: "h:1".into(),
            detail: "refused".into(),
        };
        let reset = HttpError::Io {
            host: "h:1".into(),
            detail: "reset".into(),
        };
        let untrusted = HttpError::Tls {
            host: "h:1".into(),
            detail: "UnknownIssuer".into(),
        };
        assert_eq!(after_transport(Method::Post, &refused), Next::Retry(None));
        assert_eq!(after_transport(Method::Post, &reset), Next::Done);
        assert_eq!(after_transport(Method::Put, &reset), Next::Retry(None));
        assert_eq!(after_transport(Method::Get, &untrusted), Next::Done);
    }

    #[test]
    fn retry_after_dates_survive_clock_jumps() {
        // The wall clock only turns a Retry-After date into a wait: a clock far ahead
        // retries at once (still a retry, never a skip), one far behind waits the cap.
        let date = Some("Sun, 06 Nov 1994 08:49:37 GMT");
        let ahead = SystemTime::UNIX_EPOCH + Duration::from_secs(4_000_000_000);
        let behind = SystemTime::UNIX_EPOCH;
        assert_eq!(
            after_status(Method::Put, 503, date, ahead),
            Next::Retry(Some(Duration::ZERO))
        );
        assert_eq!(
            after_status(Method::Post, 429, date, behind),
            Next::Retry(Some(crate::relay::backoff::MAX_RETRY_AFTER))
        );
    }

    fn list(total: u64, resources: Value) -> Value {
        json!({"schemas": [LIST_RESPONSE], "totalResults": total, "Resources": resources})
    }

    #[test]
    fn single_match_rules() {
        let u = ResourceKind::User;
        let none = single_match(&list(0, json!([])), u, "externalId", "x", true).unwrap();
        assert_eq!(none, None);
        let no_resources = json!({"schemas": [LIST_RESPONSE], "totalResults": 0});
        assert_eq!(
            single_match(&no_resources, u, "externalId", "x", true).unwrap(),
            None
        );
        let one = list(1, json!([{"id": "1", "externalId": "x"}]));
        assert_eq!(
            single_match(&one, u, "externalId", "x", true)
                .unwrap()
                .unwrap()["id"],
            "1"
        );
        let two = list(
            2,
            json!([{"id": "1", "externalId": "x"}, {"id": "2", "externalId": "x"}]),
        );
        let err = single_match(&two, u, "externalId", "x", true).unwrap_err();
        assert!(
            matches!(err, ScimError::Ambiguous { count: 2, .. }),
            "{err}"
        );
        // A loose server returns a case variant: ignored for case-exact attributes.
        let loose = list(
            2,
            json!([{"id": "1", "externalId": "X"}, {"id": "2", "externalId": "x"}]),
        );
        assert_eq!(
            single_match(&loose, u, "externalId", "x", true)
                .unwrap()
                .unwrap()["id"],
            "2"
        );
        // userName compares case-insensitively.
        let named = list(1, json!([{"id": "7", "userName": "Ann@Example.test"}]));
        assert!(
            single_match(&named, u, "userName", "ann@example.test", false)
                .unwrap()
                .is_some()
        );
        // More matches than shown on the page.
        let paged = list(3, json!([{"id": "1", "externalId": "x"}]));
        assert!(single_match(&paged, u, "externalId", "x", true).is_err());
        // Attribute not shown: trust the filter.
        let bare = list(1, json!([{"id": "9"}]));
        assert!(single_match(&bare, u, "externalId", "x", true)
            .unwrap()
            .is_some());
        let bad = json!({"Resources": {"id": "1"}});
        assert!(matches!(
            single_match(&bad, u, "externalId", "x", true),
            Err(ScimError::Decode { .. })
        ));
    }
}
