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
//! * **A lookup proves a match on the resource itself, never from the filter's answer.**
//!   `find_by_*` return only a resource that shows the attribute equal to the value asked
//!   for (externalId exactly, userName case-insensitively). Services differ: some ignore
//!   `filter` and list everything, some keep no `externalId`, some filter loosely. A list
//!   answer that holds non-matching resources marks the filter as ignored (logged once,
//!   [`ScimClient::facts`]); when such an answer does not show every resource, every page
//!   is read ([`ScimClient::scan`], `startIndex` alone) before anything is decided. More
//!   than one proven match is [`ScimError::Ambiguous`].
//! * [`ScimClient::probe_lookups`] tells `check` and the start of every pass whether
//!   lookups by externalId work: a made-up value must match nothing and a listed
//!   resource's value must find it.
//! * [`ScimClient::write_counts`] counts every write request handed to the transport,
//!   retries included, so "0 writes" is a checkable claim.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use crate::net::backoff::{parse_retry_after, Backoff};
use crate::net::http::{HttpClient, HttpError, HttpRequest, HttpResponse, Method, Url};
use crate::scim::bulk::SentOp;
use crate::scim::oauth::{TokenError, TokenSource};
use crate::scim::profile::MemberRemoval;
use crate::scim::resource::{ResourceKind, LIST_RESPONSE, PATCH_OP};
use crate::scim::schema::EndpointSchema;
use crate::scim::token_file::FileToken;
use crate::secret::Secret;

/// The SCIM media type, sent as `Accept` and `Content-Type`.
pub const SCIM_JSON: &str = "application/scim+json";

/// Longest server-sent error text kept in a [`ScimError`].
const MAX_DETAIL_CHARS: usize = 200;

/// How the client authenticates to the SCIM service.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A static bearer token.
    Bearer(Secret),
    /// A static bearer token from a file, read again once when the service answers 401
    /// (rotated without a restart; see [`FileToken`]).
    BearerFile(Arc<FileToken>),
    /// Bearer tokens from an OAuth2 client credentials grant, replaced before they expire
    /// and when the service answers 401.
    OAuth(Arc<TokenSource>),
}

/// Settings of a [`ScimClient`].
#[derive(Debug, Clone)]
pub struct ScimConfig {
    /// Base URL of the SCIM service, e.g. `https://scim.example.com/v2`.
    pub base_url: Url,
    /// How requests are authenticated.
    pub credential: Credential,
    /// Read `/Schemas` before the first write and fit bodies to it
    /// ([`ScimClient::learn_schema`]); off, bodies go as given unless `learn_schema` is
    /// called.
    pub fit_to_schemas: bool,
    /// Tries per request, the first included (1 = no retry).
    pub max_attempts: u32,
    /// First backoff ceiling; doubles per retry.
    pub backoff_base: Duration,
    /// Largest backoff delay.
    pub backoff_cap: Duration,
}

impl ScimConfig {
    /// A static bearer token. Defaults: 4 tries, backoff 500 ms doubling up to 30 s.
    pub fn new(base_url: Url, token: Secret) -> ScimConfig {
        ScimConfig::with_credential(base_url, Credential::Bearer(token))
    }

    /// Any credential, with the defaults of [`ScimConfig::new`].
    pub fn with_credential(base_url: Url, credential: Credential) -> ScimConfig {
        ScimConfig {
            base_url,
            credential,
            fit_to_schemas: false,
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
    /// `POST /Bulk` requests (their operations are counted above, by method).
    pub bulk: u64,
}

impl WriteCounts {
    /// All write requests together (a Bulk request counts its operations).
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
    bulk: AtomicU64,
    /// 429 and 503 answers (throttling), for the pass's concurrency control.
    throttled: AtomicU64,
    /// When the latest Retry-After of such an answer ends.
    retry_until: std::sync::Mutex<Option<std::time::Instant>>,
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
    /// No OAuth2 token could be had for the request.
    Token(TokenError),
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
            ScimError::Token(e) => e.is_transient(),
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
                // scimType and detail are the endpoint's text: one line, no forged priority.
                write!(f, "SCIM {method} {path} answered {status}")?;
                if let Some(t) = scim_type {
                    write!(f, " ({})", crate::logging::escape(t))?;
                }
                if let Some(d) = detail {
                    write!(f, ": {}", crate::logging::escape(d))?;
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
            ScimError::Token(e) => e.fmt(f),
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
            url: crate::net::http::redact_url(base),
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
/// Why a request that got no answer counts against the endpoint (its outage cause).
fn transport_cause(e: &HttpError) -> crate::scim::outage::Cause {
    use crate::scim::outage::Cause;
    match e {
        HttpError::Tls { .. } | HttpError::CaFile { .. } => Cause::Tls,
        HttpError::Timeout { .. } => Cause::Timeout,
        _ => Cause::Connect,
    }
}

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
    let text = if looks_like_html(&text) {
        html_text(&text)
    } else {
        text.into_owned()
    };
    let text = clip(text.trim());
    (None, Some(text).filter(|t| !t.is_empty()))
}

/// An error page rather than text: it starts with a tag or a doctype.
fn looks_like_html(text: &str) -> bool {
    let head: String = text.trim_start().chars().take(64).collect();
    let head = head.to_ascii_lowercase();
    head.starts_with("<!doctype")
        || head.starts_with("<html")
        || head.starts_with("<head")
        || head.starts_with("<body")
        || head.starts_with("<title")
        || head.starts_with("<h1")
        || head.starts_with("<?xml")
}

/// The readable text of an HTML error page: tags, scripts, styles and comments dropped,
/// the common entities decoded, white space folded. Good enough for a message, not a parser.
fn html_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len().min(4096));
    let mut rest = html;
    while let Some(open) = rest.find('<') {
        out.push_str(&rest[..open]);
        out.push(' ');
        let tag = &rest[open..];
        let lower: String = tag.chars().take(8).collect::<String>().to_ascii_lowercase();
        let skip_to = if lower.starts_with("<!--") {
            tag.find("-->").map(|i| i + 3)
        } else if lower.starts_with("<script") || lower.starts_with("<style") {
            let close = if lower.starts_with("<script") {
                "</script"
            } else {
                "</style"
            };
            tag.to_ascii_lowercase()
                .find(close)
                .and_then(|i| tag[i..].find('>').map(|j| i + j + 1))
        } else {
            tag.find('>').map(|i| i + 1)
        };
        match skip_to {
            Some(n) => rest = &tag[n..],
            None => {
                rest = "";
                break;
            }
        }
    }
    out.push_str(rest);
    let decoded = out
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&");
    decoded.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// At most [`MAX_DETAIL_CHARS`] characters, control characters replaced by spaces.
pub(crate) fn clip(s: &str) -> String {
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

/// One list page sifted for one attribute value: what it proves, checked on each resource.
#[derive(Debug, Default)]
struct Sifted {
    /// Resources that show `attribute` equal to the value (the only ones that can match).
    matching: Vec<Value>,
    /// Resources that show a different value or none: the service did not apply the
    /// filter (or does not return the attribute), so its answer proves nothing about absence.
    foreign: u64,
    /// Resources on this page.
    shown: u64,
    /// `totalResults` (the page's length when absent).
    total: u64,
}

/// Sifts one list response. A resource counts as a match only when the resource itself
/// shows `attribute` equal to `value` (exactly, or case-insensitively when `case_exact` is
/// false): a filter's answer is never taken as proof. A case variant of a case-exact value
/// is neither a match nor foreign (a service that filters loosely).
fn sift(
    list: &Value,
    attribute: &'static str,
    value: &str,
    case_exact: bool,
) -> Result<Sifted, ScimError> {
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
    let mut out = Sifted {
        shown: resources.len() as u64,
        total: list
            .get("totalResults")
            .and_then(Value::as_u64)
            .unwrap_or(resources.len() as u64),
        ..Sifted::default()
    };
    let wanted = value.to_lowercase();
    for r in resources {
        match r.get(attribute).and_then(Value::as_str) {
            Some(v) if v == value || (!case_exact && v.to_lowercase() == wanted) => {
                out.matching.push(r.clone())
            }
            Some(v) if v.to_lowercase() == wanted => {}
            _ => out.foreign += 1,
        }
    }
    Ok(out)
}

/// What the first answer to a filtered lookup decides.
#[derive(Debug, PartialEq)]
enum Decided {
    /// Exactly this resource, proven on the resource itself.
    Found(Value),
    /// Nothing matches, and the answer was complete and honoured the filter.
    Absent,
    /// The service ignored the filter and did not show everything: read every page.
    Scan,
}

fn decide(
    sifted: Sifted,
    kind: ResourceKind,
    attribute: &'static str,
    value: &str,
) -> Result<Decided, ScimError> {
    let unseen = sifted.total.saturating_sub(sifted.shown);
    let ambiguous = |count: u64| ScimError::Ambiguous {
        kind,
        attribute,
        value: value.to_string(),
        count,
    };
    if sifted.matching.len() > 1 {
        return Err(ambiguous(sifted.matching.len() as u64));
    }
    if sifted.foreign > 0 && unseen > 0 {
        // totalResults counts everything, not matches: the rest must be read to know.
        return Ok(Decided::Scan);
    }
    if sifted.foreign == 0 && sifted.matching.len() as u64 + unseen > 1 {
        // The filter was honoured and more resources match than this page shows.
        return Err(ambiguous(sifted.total));
    }
    Ok(match sifted.matching.into_iter().next() {
        Some(found) => Decided::Found(found),
        None => Decided::Absent,
    })
}

/// Pages a full listing reads at most before it gives up (a service that ignores
/// `startIndex` would otherwise be read forever).
const MAX_SCAN_PAGES: u64 = 10_000;

/// What the client has learnt about the service from its answers (shared by clones).
#[derive(Debug, Default)]
struct Learnt {
    /// A filtered lookup answered with resources that do not match the filter.
    filter_ignored: std::sync::atomic::AtomicBool,
    /// A created resource came back without the `externalId` it was sent with.
    external_id_dropped: std::sync::atomic::AtomicBool,
    /// A group member that was a group came back as a user, or not at all.
    nested_refused: std::sync::atomic::AtomicBool,
    /// Member removals go as a value list (the filter-path form was refused).
    remove_value_list: std::sync::atomic::AtomicBool,
    /// The profile's `member_removal`: 0 auto, 1 filter, 2 value list.
    removal_pin: std::sync::atomic::AtomicU8,
    /// What the service shows as a member's value: 0 unproven, 1 id, 2 userName.
    member_key: std::sync::atomic::AtomicU8,
    /// `/Schemas` was asked for at least once.
    schema_tried: std::sync::atomic::AtomicBool,
    /// What `/Schemas` said, when it answered.
    schema: std::sync::Mutex<Option<Arc<EndpointSchema>>>,
    /// The last request's refusal of the credentials (401), until a request succeeds.
    refused_auth: std::sync::Mutex<Option<String>>,
    /// How the latest request fared, for `status`.
    health: std::sync::Mutex<crate::status::EndpointHealth>,
    /// `run`'s outage watch, fed with every answer (none in one-shot commands).
    watch: std::sync::Mutex<Option<Arc<crate::scim::outage::EndpointWatch>>>,
    /// Fits already logged (`emails.primary`, `+members`), once each.
    fits_logged: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Attributes a POST/PUT answer showed not kept as sent (`user title (dropped)`).
    not_kept: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// POST/PUT answers compared with what was sent.
    readbacks: std::sync::atomic::AtomicU64,
}

/// What an endpoint shows as a group member's `value` (RFC 7643: the member's `id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MemberKey {
    /// Not known yet: member removals are verified by reading the group.
    #[default]
    Unproven,
    /// The id the member was added with (a removal by id was seen to work).
    Id,
    /// The member's `userName` (a removal by id was answered with success and removed
    /// nothing; one by userName worked): removals go by userName and are verified.
    UserName,
}

/// What the client has seen of the service's behaviour so far, for messages and `check`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointFacts {
    /// The service ignores `filter` (list answers hold non-matching resources).
    pub filter_ignored: bool,
    /// The service does not keep `externalId` on what it creates.
    pub external_id_dropped: bool,
    /// The service does not keep groups as group members: nested groups are not sent.
    pub nested_refused: bool,
    /// The service takes member removals only as a value list.
    pub remove_value_list: bool,
    /// The dialect the profile pins (`Auto`: learnt from the service's answers).
    pub removal_pin: MemberRemoval,
    /// What the service shows as a group member's value.
    pub member_key: MemberKey,
}

/// What a probe of the service's lookups found ([`ScimClient::probe_lookups`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupProbe {
    /// A resource that shows an externalId was found again by filtering on it, and a
    /// made-up externalId matched nothing.
    Verified {
        /// The externalId the lookup was verified with.
        external_id: String,
    },
    /// A made-up externalId matched nothing, but no resource at the service shows an
    /// externalId to prove that lookups find anything.
    Unverified,
    /// The service answered a filter with resources that do not match it.
    FilterIgnored {
        /// How many non-matching resources came back.
        returned: u64,
    },
    /// The service holds a resource with this externalId but filtering on it found none.
    MissesKnown {
        /// The externalId the service failed to find.
        external_id: String,
    },
}

impl LookupProbe {
    /// Whether lookups by externalId are proven to work.
    pub fn is_verified(&self) -> bool {
        matches!(self, LookupProbe::Verified { .. })
    }
}

impl fmt::Display for LookupProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LookupProbe::Verified { external_id } => write!(
                f,
                "externalId lookups work (a resource with externalId {external_id:?} was found by filter; a made-up one matched nothing)"
            ),
            LookupProbe::Unverified => write!(
                f,
                "externalId lookups unverified: a made-up externalId matched nothing, and no resource at the endpoint shows an externalId to test with yet"
            ),
            LookupProbe::FilterIgnored { returned } => write!(
                f,
                "the endpoint ignores filters (a lookup by a made-up externalId returned {returned} resource(s)): \
                 idrelay writes only to resources it created or that show the object's own externalId, reading every page to find them; \
                 if the endpoint also drops externalId, set sync.soft_match = true to adopt existing users by userName"
            ),
            LookupProbe::MissesKnown { external_id } => write!(
                f,
                "the endpoint's externalId filter does not work: it holds a resource with externalId {external_id:?} but filtering on it found nothing; \
                 idrelay falls back to reading every page when a create conflicts"
            ),
        }
    }
}

/// The verdict of a probe from its two answers: the lookup of a made-up externalId,
/// and (when that answer was clean) the externalId of a listed resource with whether
/// filtering on it found that resource.
fn probe_verdict(made_up: &Sifted, known: Option<(String, bool)>) -> LookupProbe {
    if made_up.foreign > 0 {
        return LookupProbe::FilterIgnored {
            returned: made_up.foreign,
        };
    }
    match known {
        None => LookupProbe::Unverified,
        Some((external_id, true)) => LookupProbe::Verified { external_id },
        Some((external_id, false)) => LookupProbe::MissesKnown { external_id },
    }
}

/// SCIM provisioning client. Cheap to clone; clones share the write counters.
#[derive(Clone)]
pub struct ScimClient {
    http: HttpClient,
    cfg: Arc<ScimConfig>,
    counters: Arc<Counters>,
    learnt: Arc<Learnt>,
}

impl fmt::Debug for ScimClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScimClient")
            .field(
                "base_url",
                &crate::net::http::redact_url(&self.cfg.base_url),
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
            learnt: Arc::default(),
        }
    }

    /// What the service's answers have shown so far (all clones together).
    pub fn facts(&self) -> EndpointFacts {
        EndpointFacts {
            filter_ignored: self.learnt.filter_ignored.load(Ordering::Relaxed),
            external_id_dropped: self.learnt.external_id_dropped.load(Ordering::Relaxed),
            nested_refused: self.learnt.nested_refused.load(Ordering::Relaxed),
            remove_value_list: self.learnt.remove_value_list.load(Ordering::Relaxed),
            removal_pin: match self.learnt.removal_pin.load(Ordering::Relaxed) {
                1 => MemberRemoval::Filter,
                2 => MemberRemoval::ValueList,
                _ => MemberRemoval::Auto,
            },
            member_key: match self.learnt.member_key.load(Ordering::Relaxed) {
                1 => MemberKey::Id,
                2 => MemberKey::UserName,
                _ => MemberKey::Unproven,
            },
        }
    }

    /// Records what the service shows as a member's value (logged when learnt otherwise
    /// than by the RFC).
    pub fn note_member_key(&self, key: MemberKey) {
        let code = match key {
            MemberKey::Unproven => 0,
            MemberKey::Id => 1,
            MemberKey::UserName => 2,
        };
        if self.learnt.member_key.swap(code, Ordering::Relaxed) != code
            && key == MemberKey::UserName
        {
            log::warn!(
                "the SCIM endpoint shows group members by userName, not by the id they were added with \
                 (seen in a group it showed, or a removal by id that removed nothing); removals are sent \
                 by userName from now on, and each is verified by reading the group"
            );
        }
    }

    /// Pins the member-removal dialect to the profile's `[group] member_removal`.
    pub fn pin_member_removal(&self, m: MemberRemoval) {
        let code = match m {
            MemberRemoval::Auto => 0,
            MemberRemoval::Filter => 1,
            MemberRemoval::ValueList => 2,
        };
        self.learnt.removal_pin.store(code, Ordering::Relaxed);
    }

    /// Records which form of member removal the service took (logged when it changes).
    pub fn note_remove_value_list(&self, value_list: bool) {
        if self
            .learnt
            .remove_value_list
            .swap(value_list, Ordering::Relaxed)
            != value_list
        {
            log::info!(
                "SCIM endpoint: member removals are sent {} from now on",
                if value_list {
                    "as a value list ({\"op\":\"remove\",\"path\":\"members\",\"value\":[...]})"
                } else {
                    "by filter path (members[value eq \"id\"])"
                }
            );
        }
    }

    /// Records, and logs once, that the service does not keep groups as group members:
    /// from now on no group is sent as a member to it (this process; the next start finds
    /// out again, at the cost of one more misread that is removed again).
    pub fn note_nested_refused(&self, detail: &str) {
        if !self.learnt.nested_refused.swap(true, Ordering::Relaxed) {
            log::warn!(
                "{detail}; groups keep their user members at this endpoint, their member groups are left out"
            );
        }
    }

    /// How many answers so far were 429 or 503 (all clones together).
    pub fn throttled(&self) -> u64 {
        self.counters.throttled.load(Ordering::Relaxed)
    }

    /// When the latest Retry-After the service sent with a 429 or 503 ends, if it sent any.
    pub fn retry_until(&self) -> Option<std::time::Instant> {
        *self
            .counters
            .retry_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn note_throttle(&self, retry_after: Option<&str>) {
        if let Some(d) = retry_after.and_then(|v| parse_retry_after(v, SystemTime::now())) {
            let until = std::time::Instant::now() + d;
            let mut u = self
                .counters
                .retry_until
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            *u = Some(u.map_or(until, |t| t.max(until)));
        }
        self.counters.throttled.fetch_add(1, Ordering::Relaxed);
    }

    /// Write requests sent so far (all clones together).
    pub fn write_counts(&self) -> WriteCounts {
        let c = &self.counters;
        WriteCounts {
            creates: c.creates.load(Ordering::Relaxed),
            replaces: c.replaces.load(Ordering::Relaxed),
            patches: c.patches.load(Ordering::Relaxed),
            deletes: c.deletes.load(Ordering::Relaxed),
            bulk: c.bulk.load(Ordering::Relaxed),
        }
    }

    /// For an OAuth2 credential: fetches a token now and returns the token endpoint and
    /// the token's lifetime (`check`). `None` for a static token.
    pub async fn authenticate(&self) -> Result<Option<(String, Option<Duration>)>, ScimError> {
        match &self.cfg.credential {
            Credential::Bearer(_) | Credential::BearerFile(_) => Ok(None),
            Credential::OAuth(src) => {
                let life = src.fetch_now().await.map_err(ScimError::Token)?;
                Ok(Some((src.token_url(), life)))
            }
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

    /// The one resource that shows `attribute` equal to `value`, proven on the resource
    /// itself; `None` when none does. A service that ignores the filter and answers with
    /// more resources than one page shows is read page by page ([`Self::scan`]).
    async fn find(
        &self,
        kind: ResourceKind,
        attribute: &'static str,
        value: &str,
        case_exact: bool,
    ) -> Result<Option<Value>, ScimError> {
        let url = self.filter_url(kind, attribute, value)?;
        let sifted = sift(&self.list_page(&url).await?, attribute, value, case_exact)?;
        if sifted.foreign > 0 {
            self.note_filter_ignored(&url, sifted.foreign);
        }
        match decide(sifted, kind, attribute, value)? {
            Decided::Found(found) => Ok(Some(found)),
            Decided::Absent => Ok(None),
            Decided::Scan => self.scan(kind, attribute, value, case_exact).await,
        }
    }

    /// Probes how the service answers lookups by externalId: a made-up value must match
    /// nothing, and a value a listed user shows must find that user. Three GETs at most.
    pub async fn probe_lookups(&self) -> Result<LookupProbe, ScimError> {
        let kind = ResourceKind::User;
        let made_up = format!("idrelay-probe-{:016x}", fastrand::u64(..));
        let url = self.filter_url(kind, "externalId", &made_up)?;
        let first = sift(&self.list_page(&url).await?, "externalId", &made_up, true)?;
        if first.foreign > 0 {
            self.note_filter_ignored(&url, first.foreign);
            return Ok(probe_verdict(&first, None));
        }
        let page = self.first_page(kind).await?;
        let known = page["Resources"].as_array().and_then(|rs| {
            rs.iter()
                .find_map(|r| r.get("externalId").and_then(Value::as_str))
                .map(str::to_string)
        });
        let known = match known {
            None => None,
            Some(ext) => {
                let url = self.filter_url(kind, "externalId", &ext)?;
                let hit = !sift(&self.list_page(&url).await?, "externalId", &ext, true)?
                    .matching
                    .is_empty();
                Some((ext, hit))
            }
        };
        Ok(probe_verdict(&first, known))
    }

    /// The first page of `kind`'s listing (`startIndex=1`, no `count`: some services
    /// answer `count` with 500).
    pub async fn first_page(&self, kind: ResourceKind) -> Result<Value, ScimError> {
        self.page(kind, "startIndex=1").await
    }

    /// One page of `kind`'s listing with this query (already encoded).
    pub async fn page(&self, kind: ResourceKind, query: &str) -> Result<Value, ScimError> {
        let mut listing = endpoint_url(&self.cfg.base_url, &[kind.endpoint()])?;
        listing.set_query(Some(query));
        self.list_page(&listing).await
    }

    /// Reads `/Schemas` and keeps what it declares for users and groups: bodies sent from
    /// then on are fitted to it ([`EndpointSchema::fit`]). `None` when the service has no
    /// readable `/Schemas` (then bodies go as mapped); an answer that cannot be had keeps
    /// what was learnt before.
    pub async fn learn_schema(&self) -> Result<Option<Arc<EndpointSchema>>, ScimError> {
        self.learnt.schema_tried.store(true, Ordering::Relaxed);
        let url = endpoint_url(&self.cfg.base_url, &["Schemas"])?;
        let resp = self.execute(Method::Get, &url, None).await?;
        let schema = match resp.status {
            200 => {
                let v = self.json(Method::Get, &url, &resp)?;
                let s = EndpointSchema::parse(&v);
                (s != EndpointSchema::default()).then(|| Arc::new(s))
            }
            404 | 501 => None,
            _ => return Err(self.http_error(Method::Get, &url, &resp)),
        };
        *self.learnt.schema.lock().unwrap_or_else(|p| p.into_inner()) = schema.clone();
        Ok(schema)
    }

    /// `body` fitted to the service's `/Schemas` (asked for once before the first write);
    /// each change of a kind is logged once.
    async fn fitted<'b>(
        &self,
        kind: ResourceKind,
        body: &'b Value,
        creating: bool,
    ) -> std::borrow::Cow<'b, Value> {
        if self.cfg.fit_to_schemas && !self.learnt.schema_tried.load(Ordering::Relaxed) {
            if let Err(e) = self.learn_schema().await {
                log::debug!("SCIM /Schemas: {e}; bodies go as mapped");
            }
        }
        let schema = self
            .learnt
            .schema
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(schema) = schema else {
            return std::borrow::Cow::Borrowed(body);
        };
        let mut out = body.clone();
        let report = schema.fit(kind, &mut out, creating);
        if report.is_empty() {
            return std::borrow::Cow::Borrowed(body);
        }
        let mut logged = self
            .learnt
            .fits_logged
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for d in &report.dropped {
            if logged.insert(format!("{}:{d}", kind.word())) {
                log::info!(
                    "SCIM endpoint's /Schemas does not declare {d} for {}s: left out of what is sent",
                    kind.word()
                );
            }
        }
        for a in &report.added_empty {
            if logged.insert(format!("{}:+{a}", kind.word())) {
                log::info!(
                    "SCIM endpoint's /Schemas requires {a} for {}s: created with an empty list",
                    kind.word()
                );
            }
        }
        std::borrow::Cow::Owned(out)
    }

    /// Reads every resource of `kind` page by page (`startIndex` alone: some services
    /// refuse `count`) and returns the one that shows `attribute` equal to `value`.
    /// Stops at `totalResults`, at an empty page, or when a page repeats the previous
    /// one (a service that ignores `startIndex`): then the answer is an error, never a
    /// guess.
    pub async fn scan(
        &self,
        kind: ResourceKind,
        attribute: &'static str,
        value: &str,
        case_exact: bool,
    ) -> Result<Option<Value>, ScimError> {
        let mut found: Option<Value> = None;
        let mut twice = false;
        self.walk(kind, None, |page| {
            let sifted = sift(page, attribute, value, case_exact)?;
            for m in sifted.matching {
                twice |= found.is_some();
                found = Some(m);
            }
            Ok(!twice)
        })
        .await?;
        if twice {
            return Err(ScimError::Ambiguous {
                kind,
                attribute,
                value: value.to_string(),
                count: 2,
            });
        }
        Ok(found)
    }

    /// Reads every resource of `kind`, a page at a time, handing each page (a
    /// ListResponse) to `each`, which returns `false` to stop early. With `ask`
    /// (`count` and `attributes` to request), the first page is asked for with them and,
    /// if the service refuses that, again with `startIndex` alone (some refuse `count`).
    /// Returns the resources seen. Ends at `totalResults` or an empty page; a service that
    /// repeats a page (it ignores `startIndex`) or needs more than 10,000 pages is an
    /// error: a listing is complete or it is nothing.
    pub async fn walk(
        &self,
        kind: ResourceKind,
        ask: Option<(u32, &str)>,
        mut each: impl FnMut(&Value) -> Result<bool, ScimError>,
    ) -> Result<u64, ScimError> {
        let base = endpoint_url(&self.cfg.base_url, &[kind.endpoint()])?;
        let mut extra = ask.map(|(count, attributes)| {
            format!(
                "&count={count}&attributes={}",
                encode_query_component(attributes)
            )
        });
        let mut seen: u64 = 0;
        let mut previous_first: Option<Value> = None;
        for _ in 0..MAX_SCAN_PAGES {
            let mut url = base.clone();
            url.set_query(Some(&format!(
                "startIndex={}{}",
                seen + 1,
                extra.as_deref().unwrap_or("")
            )));
            let page = match self.list_page(&url).await {
                Ok(p) => p,
                // Asked for more than the service takes: the plain form.
                // (Canaille answers 500 to `count`.)
                Err(e)
                    if seen == 0
                        && extra.is_some()
                        && (!e.is_transient() || e.status() == Some(500)) =>
                {
                    log::debug!("{e}; listing with startIndex alone");
                    extra = None;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let first = page["Resources"].get(0).map(|r| r["id"].clone());
            if first.is_some() && first == previous_first {
                return Err(ScimError::Decode {
                    what: format!("response to GET {}", shown_path(&url)),
                    detail: "the service ignores startIndex (the same page came back): its resources cannot all be read".into(),
                });
            }
            previous_first = first;
            let shown = page["Resources"].as_array().map_or(0, |a| a.len()) as u64;
            let total = page["totalResults"].as_u64().unwrap_or(seen + shown);
            seen += shown;
            if !each(&page)? || shown == 0 || seen >= total {
                return Ok(seen);
            }
        }
        Err(ScimError::Decode {
            what: format!("listing of {}", shown_path(&base)),
            detail: format!("more than {MAX_SCAN_PAGES} pages"),
        })
    }

    /// `<base>/<Users|Groups>?filter=<attribute> eq "<value>"`.
    fn filter_url(
        &self,
        kind: ResourceKind,
        attribute: &str,
        value: &str,
    ) -> Result<Url, ScimError> {
        let mut url = endpoint_url(&self.cfg.base_url, &[kind.endpoint()])?;
        let filter = eq_filter(attribute, value);
        url.set_query(Some(&format!("filter={}", encode_query_component(&filter))));
        Ok(url)
    }

    /// GETs one list response and checks that it is one.
    async fn list_page(&self, url: &Url) -> Result<Value, ScimError> {
        let resp = self.execute(Method::Get, url, None).await?;
        if resp.status != 200 {
            return Err(self.http_error(Method::Get, url, &resp));
        }
        let list = self.json(Method::Get, url, &resp)?;
        let schemas_ok = list["schemas"]
            .as_array()
            .is_none_or(|s| s.iter().any(|x| x == LIST_RESPONSE));
        if !schemas_ok {
            return Err(ScimError::Decode {
                what: format!("response to GET {}", shown_path(url)),
                detail: "not a ListResponse".into(),
            });
        }
        Ok(list)
    }

    /// Logs, once per client, that the service answered a filter with resources that do
    /// not match it.
    fn note_filter_ignored(&self, url: &Url, foreign: u64) {
        if !self.learnt.filter_ignored.swap(true, Ordering::Relaxed) {
            log::warn!(
                "the SCIM endpoint ignores filters: GET {} answered with {foreign} resource(s) that do not match; \
                 idrelay takes as its own only resources that show the object's own externalId (reading every page when needed)",
                shown_path(url)
            );
        }
    }

    /// Logs, once per client, that the service dropped the `externalId` of a created
    /// resource: after the state directory is lost, nothing at the endpoint can prove
    /// which resources idrelay created.
    fn note_created(&self, kind: ResourceKind, sent: &Value, created: &Value) {
        let Some(sent_id) = sent.get("externalId").and_then(Value::as_str) else {
            return;
        };
        if created.get("externalId").and_then(Value::as_str) == Some(sent_id) {
            return;
        }
        if !self
            .learnt
            .external_id_dropped
            .swap(true, Ordering::Relaxed)
        {
            log::warn!(
                "the SCIM endpoint did not keep externalId on a created {}: idrelay knows what it created only from \
                 anchors.jsonl in its state directory (keep it); without it, existing resources are refused as not proven ours",
                kind.word()
            );
        }
    }

    /// Creates a resource (POST); returns it as the service stored it, with its `id`.
    ///
    /// Not retried after failures that may have created it: see
    /// [`ScimError::is_ambiguous_write`].
    pub async fn create(&self, kind: ResourceKind, body: &Value) -> Result<Value, ScimError> {
        let url = endpoint_url(&self.cfg.base_url, &[kind.endpoint()])?;
        let fitted = self.fitted(kind, body, true).await;
        let resp = self.execute(Method::Post, &url, Some(&fitted)).await?;
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
        self.note_created(kind, body, &created);
        self.note_kept(kind, &fitted, &created, "POST");
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
        let fitted = self.fitted(kind, body, false).await;
        let resp = self.execute(Method::Put, &url, Some(&fitted)).await?;
        if !resp.is_success() {
            return Err(self.http_error(Method::Put, &url, &resp));
        }
        let stored = self.json(Method::Put, &url, &resp)?;
        self.note_kept(kind, &fitted, &stored, "PUT");
        Ok(stored)
    }

    /// Compares a POST/PUT answer with what was sent ([`crate::scim::readback`]) and says
    /// once per attribute what the endpoint accepted and did not keep.
    fn note_kept(&self, kind: ResourceKind, sent: &Value, stored: &Value, method: &str) {
        let schema = self
            .learnt
            .schema
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let withheld = |name: &str| schema.as_ref().is_some_and(|s| s.withheld(kind, name));
        let drift = crate::scim::readback::compare(sent, stored, &withheld);
        self.learnt.readbacks.fetch_add(1, Ordering::Relaxed);
        if drift.is_empty() {
            return;
        }
        let mut seen = self
            .learnt
            .not_kept
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (path, how) in drift {
            if !seen.insert(format!("{} {path} ({})", kind.word(), how.word())) {
                continue;
            }
            let what = match how {
                crate::scim::readback::Drift::Dropped => "accepted and did not keep",
                crate::scim::readback::Drift::Rewritten => "stored, with another value than sent,",
            };
            log::warn!(
                "the SCIM endpoint {what} a {}'s `{path}` (first seen in the answer to a {method}): \
                 the directory's value does not reach it; if that is expected, unmap it in the \
                 profile ({}.attributes.\"{path}\" = \"\"); `idrelay status` lists such attributes",
                kind.word(),
                kind.word()
            );
        }
    }

    /// What POST/PUT answers showed the endpoint did not keep as sent (`user title
    /// (dropped)`, `user displayName (rewritten)`), sorted; `None` when no answer was
    /// compared yet (nothing is known).
    pub fn not_kept(&self) -> Option<Vec<String>> {
        if self.learnt.readbacks.load(Ordering::Relaxed) == 0 {
            return None;
        }
        Some(
            self.learnt
                .not_kept
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned()
                .collect(),
        )
    }

    /// Sends a PatchOp message with `operations`; 200 and 204 both count as done. Returns
    /// the resource when the answer holds it (200 with a body). The operations must be
    /// idempotent in effect (they may be sent twice on retry).
    pub async fn patch(
        &self,
        kind: ResourceKind,
        id: &str,
        operations: Vec<Value>,
    ) -> Result<Option<Value>, ScimError> {
        let url = endpoint_url(&self.cfg.base_url, &[kind.endpoint(), id])?;
        let mut operations = operations;
        for op in &mut operations {
            // A replace without a path carries attributes as a resource would.
            if op.get("path").is_none() {
                if let Some(value) = op.get("value") {
                    if let std::borrow::Cow::Owned(v) = self.fitted(kind, value, false).await {
                        op["value"] = v;
                    }
                }
            }
        }
        let body = json!({ "schemas": [PATCH_OP], "Operations": operations });
        let resp = self.execute(Method::Patch, &url, Some(&body)).await?;
        if !resp.is_success() {
            return Err(self.http_error(Method::Patch, &url, &resp));
        }
        // 204, or a body that is not a resource: the answer shows nothing.
        Ok(serde_json::from_slice::<Value>(&resp.body)
            .ok()
            .filter(Value::is_object))
    }

    /// Sends one BulkRequest (`POST /Bulk`, RFC 7644 §3.7): `body` as framed by
    /// [`crate::scim::bulk::body`] from the operations `ops`. Returns the answer's body on
    /// 200; any other status is a [`ScimError::Http`] (413: the body was too large).
    /// Like a POST, never retried after a failure that may have applied it: the caller
    /// must find out what landed before it sends any create again.
    pub async fn bulk(&self, ops: &[SentOp], body: Vec<u8>) -> Result<Vec<u8>, ScimError> {
        let url = endpoint_url(&self.cfg.base_url, &["Bulk"])?;
        let resp = self
            .execute_bytes(Method::Post, &url, Some(body), Some(ops))
            .await?;
        if resp.status != 200 {
            return Err(self.http_error(Method::Post, &url, &resp));
        }
        Ok(resp.body)
    }

    /// A body fitted to the endpoint's `/Schemas` as [`ScimClient::create`] (`creating`)
    /// or [`ScimClient::replace`] would send it.
    pub async fn fit(&self, kind: ResourceKind, body: &Value, creating: bool) -> Value {
        self.fitted(kind, body, creating).await.into_owned()
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
        self.execute_bytes(method, url, body, None).await
    }

    /// [`ScimClient::execute`] with the body as bytes; `bulk`: the operations of a Bulk
    /// request, counted by method on each try (the request itself counts as one bulk).
    async fn execute_bytes(
        &self,
        method: Method,
        url: &Url,
        body: Option<Vec<u8>>,
        bulk: Option<&[SentOp]>,
    ) -> Result<HttpResponse, ScimError> {
        let mut backoff = Backoff::new(self.cfg.backoff_base, self.cfg.backoff_cap)
            .with_max_attempts(self.cfg.max_attempts);
        let mut renewed = false;
        loop {
            let (token, generation) = match &self.cfg.credential {
                Credential::Bearer(t) => (t.clone(), None),
                Credential::BearerFile(f) => (f.token(), None),
                Credential::OAuth(src) => {
                    let (t, g) = src.bearer().await.map_err(|e| {
                        let e = ScimError::Token(e);
                        self.health().failed(e.to_string());
                        if let Some(w) = self.outage() {
                            w.failed(crate::scim::outage::Cause::Token, 0);
                        }
                        e
                    })?;
                    (t, Some(g))
                }
            };
            let mut req = HttpRequest::new(method, url.clone())
                .header("Authorization", format!("Bearer {}", token.expose()))
                .header("Accept", SCIM_JSON);
            if let Some(b) = &body {
                req = req.header("Content-Type", SCIM_JSON).body(b.clone());
            }
            match bulk {
                Some(ops) => {
                    self.counters.bulk.fetch_add(1, Ordering::Relaxed);
                    ops.iter().for_each(|op| self.count(op.method));
                }
                None => self.count(method),
            }
            let sent = self.http.send(req).await;
            // A token file rotated since it was read: read it again once, try once more,
            // before the 401 counts against the endpoint.
            if let (Ok(resp), Credential::BearerFile(f)) = (&sent, &self.cfg.credential) {
                if resp.status == 401 && !renewed {
                    renewed = true;
                    if f.renew(&token) {
                        continue;
                    }
                }
            }
            self.note_health(method, url, body.as_deref(), &sent);
            self.probe_if_asked().await;
            let (next, outcome) = match sent {
                // A refused OAuth2 token is replaced once, at once: it may have expired early.
                Ok(resp) if resp.status == 401 && !renewed && generation.is_some() => {
                    if let (Credential::OAuth(src), Some(g)) = (&self.cfg.credential, generation) {
                        log::info!(
                            "SCIM {method} {} answered 401; fetching a new OAuth2 token from {}",
                            shown_path(url),
                            src.token_url()
                        );
                        src.expire(g);
                    }
                    renewed = true;
                    continue;
                }
                Ok(resp) => {
                    let retry_after = resp.header("retry-after");
                    if matches!(resp.status, 429 | 503) {
                        self.note_throttle(retry_after);
                    }
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
                if let Ok(resp) = &outcome {
                    self.note_auth(method, url, resp.status);
                }
                return outcome;
            };
            // During an outage the watch said it once; the tries are counted there.
            let level = match self.outage() {
                Some(w) if w.is_down() => log::Level::Debug,
                _ => log::Level::Warn,
            };
            match &outcome {
                Ok(resp) => log::log!(
                    level,
                    "SCIM {method} {} answered {}; retrying in {delay:?}",
                    shown_path(url),
                    resp.status
                ),
                Err(e) => log::log!(level, "{e}; retrying in {delay:?}"),
            }
            smol::Timer::after(delay).await;
        }
    }

    /// Keeps whether the service refused the credentials: a 401 is about the token, not
    /// the object, and the caller stops instead of failing every object alike.
    fn note_auth(&self, method: Method, url: &Url, status: u16) {
        let mut refused = self
            .learnt
            .refused_auth
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if status == 401 {
            *refused = Some(format!("SCIM {method} {} answered 401", shown_path(url)));
        } else if (200..300).contains(&status) {
            *refused = None;
        }
    }

    /// Records for `status` how a request fared: an answer that is about the object (2xx,
    /// most 4xx) shows the endpoint works; a transport error, a 5xx, a 429 or a 401 shows it
    /// does not (the text names method, path and status, never a header).
    /// `body`: the request's, which with method and URL tells one request's retries from
    /// other requests (hashed only when the request failed).
    fn note_health(
        &self,
        method: Method,
        url: &Url,
        body: Option<&[u8]>,
        sent: &Result<HttpResponse, HttpError>,
    ) {
        if let Some(w) = self.outage() {
            use crate::scim::outage::Cause;
            let cause = match sent {
                Ok(r) if r.status == 401 => Some(Cause::Credentials(401)),
                Ok(r) if r.status >= 500 || r.status == 429 || r.status == 403 => {
                    Some(Cause::Status(r.status))
                }
                Ok(_) => None,
                Err(e) => Some(transport_cause(e)),
            };
            // Many services answer their discovery documents without a token: only an
            // answer about /Users or /Groups shows that the endpoint takes our requests.
            let discovery = ["/ServiceProviderConfig", "/Schemas", "/ResourceTypes"]
                .iter()
                .any(|d| url.path().contains(d));
            match cause {
                Some(c) => w.failed(
                    c,
                    crate::scim::outage::subject(method.as_str(), url.as_str(), body),
                ),
                None if discovery => {}
                None => w.answered(),
            }
        }
        let mut h = self.health();
        match sent {
            Ok(r) if r.status == 401 => h.failed(format!(
                "SCIM {method} {} answered 401: the credentials were refused",
                shown_path(url)
            )),
            Ok(r) if r.status >= 500 || r.status == 429 => h.failed(format!(
                "SCIM {method} {} answered {}",
                shown_path(url),
                r.status
            )),
            Ok(_) => h.ok(),
            Err(error) => h.failed(format!("SCIM {method} {}: {error}", shown_path(url))),
        }
    }

    /// One request alone failed again and again: asks the service itself (one GET of
    /// `/ServiceProviderConfig`, no retries) whether it is the object or the endpoint; see
    /// [`crate::scim::outage`].
    async fn probe_if_asked(&self) {
        let Some(w) = self.outage() else { return };
        if !w.wants_probe() {
            return;
        }
        let Ok(url) = endpoint_url(&self.cfg.base_url, &["ServiceProviderConfig"]) else {
            return;
        };
        let req = HttpRequest::new(Method::Get, url.clone()).header("Accept", SCIM_JSON);
        let sent = self.http.send(req).await;
        let subject = crate::scim::outage::subject(Method::Get.as_str(), url.as_str(), None);
        match sent {
            Ok(r) if r.status >= 500 || r.status == 429 => {
                w.failed(crate::scim::outage::Cause::Status(r.status), subject)
            }
            Ok(_) => w.service_answers(),
            Err(e) => w.failed(transport_cause(&e), subject),
        }
    }

    fn health(&self) -> std::sync::MutexGuard<'_, crate::status::EndpointHealth> {
        self.learnt.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How the endpoint answered lately (all clones together), for `status`: with an
    /// outage watch, its state is the watch's (one failure is not an outage).
    pub fn endpoint_health(&self) -> crate::status::EndpointHealth {
        let mut h = self.health().clone();
        if let Some(w) = self.outage() {
            let f = w.facts();
            let doc = f.down.then(|| crate::status::OutageDoc {
                cause: f.cause.clone().unwrap_or_default(),
                since: w.since_unix(),
                failures: f.failures,
                retries: f.retries,
            });
            h.stamp(doc, f.outages);
        }
        h
    }

    /// Lets `run`'s outage watch see every answer (shared by clones; kept across reloads
    /// by the caller, so an outage's start and end are each said once).
    pub fn set_watch(&self, watch: Arc<crate::scim::outage::EndpointWatch>) {
        *self.learnt.watch.lock().unwrap_or_else(|p| p.into_inner()) = Some(watch);
    }

    /// `run`'s outage watch, if any.
    pub fn outage(&self) -> Option<Arc<crate::scim::outage::EndpointWatch>> {
        self.learnt
            .watch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether `scim.token_file` now holds another token than the one in use (then it is
    /// used from now on): during an outage `run` looks every second, so a fixed token is
    /// tried at once. Always false for other credentials.
    pub fn credential_renewed(&self) -> bool {
        match &self.cfg.credential {
            Credential::BearerFile(f) => f.refresh(),
            _ => false,
        }
    }

    /// The refusal of the credentials (401) by the latest request that got an answer, if
    /// no request succeeded since.
    pub fn refused_auth(&self) -> Option<String> {
        self.learnt
            .refused_auth
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
        let token = match &self.cfg.credential {
            Credential::Bearer(t) => Some(t.clone()),
            Credential::BearerFile(f) => Some(f.token()),
            Credential::OAuth(src) => src.held_token(),
        };
        let scrub = |s: String| match &token {
            Some(t) if !t.expose().is_empty() => s.replace(t.expose(), "<redacted>"),
            _ => s,
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
        assert_eq!((t.as_deref(), d.as_deref()), (None, Some("Bad Gateway")));
        // A framework's error page: the text a person can act on, no markup.
        let page = b"<!doctype html>\n<html lang=en>\n<title>500 Internal Server Error</title>\n\
            <style>body{color:red}</style><script>var x = '<p>';</script><!-- debug -->\n\
            <h1>Internal Server Error</h1>\n<p>The server encountered an internal error &amp; \
            could not complete your request.</p>";
        let (_, d) = parse_error_body(page);
        assert_eq!(
            d.as_deref(),
            Some("500 Internal Server Error Internal Server Error The server encountered an internal error & could not complete your request.")
        );
        let (_, d) = parse_error_body(b"plain <b>text</b> stays as sent");
        assert_eq!(d.as_deref(), Some("plain <b>text</b> stays as sent"));
        let (_, d) = parse_error_body(b"<html><p>unclosed <b");
        assert_eq!(d.as_deref(), Some("unclosed"));
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
        // The endpoint's text is escaped: it cannot forge a line or a journald priority.
        let e = ScimError::Http {
            method: Method::Post,
            path: "/v2/Users".into(),
            status: 400,
            scim_type: Some("<3>x\ny".into()),
            detail: Some("bad\n<0>forged".into()),
        };
        assert_eq!(
            e.to_string(),
            "SCIM POST /v2/Users answered 400 (\\x3c3>x\\ny): bad\\n<0>forged"
        );
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
            what: crate::net::http::TimeoutKind::Response,
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
            Next::Retry(Some(crate::net::backoff::MAX_RETRY_AFTER))
        );
    }

    fn list(total: u64, resources: Value) -> Value {
        json!({"schemas": [LIST_RESPONSE], "totalResults": total, "Resources": resources})
    }

    fn decided(list: &Value, attribute: &'static str, value: &str, exact: bool) -> Decided {
        let sifted = sift(list, attribute, value, exact).unwrap();
        decide(sifted, ResourceKind::User, attribute, value).unwrap()
    }

    fn found_id(d: Decided) -> String {
        match d {
            Decided::Found(v) => v["id"].as_str().unwrap().to_string(),
            other => panic!("expected a match, got {other:?}"),
        }
    }

    #[test]
    fn lookups_match_only_what_the_resource_itself_shows() {
        let ext = "externalId";
        assert_eq!(
            decided(&list(0, json!([])), ext, "x", true),
            Decided::Absent
        );
        let no_resources = json!({"schemas": [LIST_RESPONSE], "totalResults": 0});
        assert_eq!(decided(&no_resources, ext, "x", true), Decided::Absent);
        let one = list(1, json!([{"id": "1", "externalId": "x"}]));
        assert_eq!(found_id(decided(&one, ext, "x", true)), "1");
        // A loose service returns a case variant: ignored for case-exact attributes.
        let loose = list(
            2,
            json!([{"id": "1", "externalId": "X"}, {"id": "2", "externalId": "x"}]),
        );
        assert_eq!(found_id(decided(&loose, ext, "x", true)), "2");
        // userName compares case-insensitively.
        let named = list(1, json!([{"id": "7", "userName": "Ann@Example.test"}]));
        assert_eq!(
            found_id(decided(&named, "userName", "ann@example.test", false)),
            "7"
        );
        let bad = json!({"Resources": {"id": "1"}});
        assert!(matches!(
            sift(&bad, ext, "x", true),
            Err(ScimError::Decode { .. })
        ));
    }

    /// Regression: a service that ignores `filter` and keeps no externalId answered the
    /// lookup with its own admin account; idrelay took it as the match and PUT a
    /// directory user's body over it. A resource that does not show the object's own
    /// externalId is never a match.
    #[test]
    fn a_listed_resource_without_the_external_id_is_never_a_match() {
        let admin_only = list(1, json!([{"id": "admin-id", "userName": "admin"}]));
        assert_eq!(
            decided(&admin_only, "externalId", "anchor-1", true),
            Decided::Absent
        );
        let sifted = sift(&admin_only, "externalId", "anchor-1", true).unwrap();
        assert_eq!(sifted.foreign, 1, "the unfiltered answer is noticed");
        // Another system's anchor is no match either.
        let theirs = list(1, json!([{"id": "t", "externalId": "someone-else"}]));
        assert_eq!(
            decided(&theirs, "externalId", "anchor-1", true),
            Decided::Absent
        );
        // A soft-match lookup by userName proves the userName on the resource too.
        let other_user = list(1, json!([{"id": "o", "userName": "other"}]));
        assert_eq!(
            decided(&other_user, "userName", "ann", false),
            Decided::Absent
        );
    }

    #[test]
    fn probe_verdicts() {
        let clean = sift(&list(0, json!([])), "externalId", "p", true).unwrap();
        let unfiltered = sift(
            &list(2, json!([{"id": "a", "userName": "admin"}, {"id": "b"}])),
            "externalId",
            "p",
            true,
        )
        .unwrap();
        assert_eq!(
            probe_verdict(&unfiltered, Some(("k".into(), true))),
            LookupProbe::FilterIgnored { returned: 2 }
        );
        assert_eq!(probe_verdict(&clean, None), LookupProbe::Unverified);
        assert!(probe_verdict(&clean, Some(("k".into(), true))).is_verified());
        let missed = probe_verdict(&clean, Some(("k".into(), false)));
        assert_eq!(
            missed,
            LookupProbe::MissesKnown {
                external_id: "k".into()
            }
        );
        assert!(missed.to_string().contains("does not work"), "{missed}");
    }

    #[test]
    fn an_ignored_filter_with_unseen_pages_reads_every_page() {
        // 120 resources at the service, 50 on this page, none of them ours.
        let page: Vec<Value> = (0..50)
            .map(|i| json!({"id": i.to_string(), "userName": format!("u{i}")}))
            .collect();
        assert_eq!(
            decided(&list(120, json!(page)), "externalId", "x", true),
            Decided::Scan
        );
        // Even when this page holds the match, another page may hold a second one.
        let mut with_match = page.clone();
        with_match.push(json!({"id": "m", "externalId": "x"}));
        assert_eq!(
            decided(&list(120, json!(with_match)), "externalId", "x", true),
            Decided::Scan
        );
    }

    #[test]
    fn an_honoured_filter_with_more_matches_than_shown_is_ambiguous() {
        let u = ResourceKind::User;
        let paged = list(3, json!([{"id": "1", "externalId": "x"}]));
        let err = decide(
            sift(&paged, "externalId", "x", true).unwrap(),
            u,
            "externalId",
            "x",
        );
        assert!(matches!(err, Err(ScimError::Ambiguous { count: 3, .. })));
        let two = list(
            2,
            json!([{"id": "1", "externalId": "x"}, {"id": "2", "externalId": "x"}]),
        );
        let err = decide(
            sift(&two, "externalId", "x", true).unwrap(),
            u,
            "externalId",
            "x",
        );
        assert!(matches!(err, Err(ScimError::Ambiguous { count: 2, .. })));
    }
}
