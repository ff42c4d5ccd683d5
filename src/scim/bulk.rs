//! SCIM Bulk framing (RFC 7644 §3.7): operations in, request bodies out; a BulkResponse in,
//! one verdict per operation sent out. Pure: no I/O, no agent state.
//!
//! Invariants:
//! * A request body never holds more than `max_operations` operations nor more than
//!   `max_payload_size` bytes, measured on the bytes that go on the wire ([`body`] writes
//!   exactly the length [`Limits::body_len`] computes). An operation too large for any body
//!   is left to the caller ([`Split::Alone`]).
//! * `failOnErrors` is never sent: the service goes on after a refused operation, so one
//!   refusal never takes the batch's other operations with it.
//! * **The answer's order is never trusted.** A POST's answer is matched by its `bulkId`;
//!   any other operation's by method and path (its `path`, or the path its `location`
//!   ends with), the first not yet answered of that method and path; only an answer that
//!   names neither is matched by position, and only when the operation sent at that
//!   position has the same method. An operation the answer does not mention, or mentions
//!   twice, is [`OpResult::Unknown`]: it may or may not have been applied, never "done".
//! * A created resource's id comes from the answer's `response.id`, else from the last
//!   segment of its `location` (which must end with the path posted to); without either
//!   the create is [`OpResult::Unknown`].

use std::ops::Range;

use serde_json::Value;

use crate::net::http::Method;
use crate::scim::ResourceKind;

/// The BulkRequest message schema.
pub const BULK_REQUEST: &str = "urn:ietf:params:scim:api:messages:2.0:BulkRequest";

/// The bytes of a request body before its first operation.
const HEAD: &str =
    "{\"schemas\":[\"urn:ietf:params:scim:api:messages:2.0:BulkRequest\"],\"Operations\":[";
/// The bytes after its last operation.
const TAIL: &str = "]}";

/// One operation of a BulkRequest, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentOp {
    /// POST, PUT, PATCH or DELETE.
    pub method: Method,
    /// The resource path under the base URL: `/Users`, `/Groups/<id>`.
    pub path: String,
    /// Set for every POST (how its answer is found).
    pub bulk_id: Option<String>,
}

impl SentOp {
    /// A create (`POST /Users`, `/Groups`) under `bulk_id`.
    pub fn create(kind: ResourceKind, bulk_id: String) -> SentOp {
        SentOp {
            method: Method::Post,
            path: format!("/{}", kind.endpoint()),
            bulk_id: Some(bulk_id),
        }
    }

    /// A replace (`PUT /Users/<id>`), the id percent-encoded as one path segment.
    pub fn replace(kind: ResourceKind, id: &str) -> SentOp {
        SentOp {
            method: Method::Put,
            path: format!("/{}/{}", kind.endpoint(), path_segment(id)),
            bulk_id: None,
        }
    }

    /// A member change (`PATCH /Groups/<id>`), the id percent-encoded as one path segment.
    pub fn patch(kind: ResourceKind, id: &str) -> SentOp {
        SentOp {
            method: Method::Patch,
            ..SentOp::replace(kind, id)
        }
    }

    /// The operation as JSON bytes (one element of `Operations`), with `data` when given.
    pub fn encode(&self, data: Option<&Value>) -> Vec<u8> {
        let mut m = serde_json::Map::new();
        m.insert("method".into(), Value::String(self.method.as_str().into()));
        m.insert("path".into(), Value::String(self.path.clone()));
        if let Some(b) = &self.bulk_id {
            m.insert("bulkId".into(), Value::String(b.clone()));
        }
        if let Some(d) = data {
            m.insert("data".into(), d.clone());
        }
        serde_json::to_vec(&Value::Object(m)).unwrap_or_default()
    }
}

/// A resource id as one path segment (RFC 3986 unreserved characters kept).
fn path_segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What the service's `/ServiceProviderConfig` allows per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most operations in one request (at least 1).
    pub max_operations: usize,
    /// Largest request body in bytes.
    pub max_payload_size: usize,
}

impl Limits {
    /// The length of a body holding `count` operations of `sum` bytes together.
    pub fn body_len(count: usize, sum: usize) -> usize {
        HEAD.len() + sum + count.saturating_sub(1) + TAIL.len()
    }

    /// Whether `count` operations of `sum` bytes together fit one request.
    pub fn fits(&self, count: usize, sum: usize) -> bool {
        count <= self.max_operations && Limits::body_len(count, sum) <= self.max_payload_size
    }
}

/// A request body for the given encoded operations (see [`SentOp::encode`]).
pub fn body<'a>(ops: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::from(HEAD.as_bytes());
    for (i, op) in ops.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(op);
    }
    out.extend_from_slice(TAIL.as_bytes());
    out
}

/// A piece of a list of operations, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Split {
    /// These operations go in one request.
    Batch(Range<usize>),
    /// This operation fits no request on its own: send it without Bulk.
    Alone(usize),
}

/// Splits operations of the given encoded sizes into requests within `limits`, in order.
pub fn split(sizes: &[usize], limits: Limits) -> Vec<Split> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut sum = 0;
    for (i, &len) in sizes.iter().enumerate() {
        if !limits.fits(1, len) {
            if start < i {
                out.push(Split::Batch(start..i));
            }
            out.push(Split::Alone(i));
            start = i + 1;
            sum = 0;
            continue;
        }
        if !limits.fits(i - start + 1, sum + len) {
            out.push(Split::Batch(start..i));
            start = i;
            sum = 0;
        }
        sum += len;
    }
    if start < sizes.len() {
        out.push(Split::Batch(start..sizes.len()));
    }
    out
}

/// What the answer says about one operation sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    /// Applied (2xx). `id`: the resource's id (always set for a POST).
    Done {
        /// The operation's status.
        status: u16,
        /// The resource's id, from `response.id` or `location`.
        id: Option<String>,
    },
    /// Refused with this status and SCIM error.
    Refused {
        /// The operation's status (4xx, 5xx).
        status: u16,
        /// `scimType` of the error.
        scim_type: Option<String>,
        /// `detail` of the error.
        detail: Option<String>,
    },
    /// The answer does not tell (not mentioned, mentioned twice, unreadable, or a create
    /// without the created id): it may or may not have been applied.
    Unknown(String),
}

/// Why a whole answer could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerError(pub String);

impl std::fmt::Display for AnswerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unreadable BulkResponse: {}", self.0)
    }
}

/// A status as the answer writes it: `"201"`, `201`, or `{"code": 201}` (older drafts).
fn status_of(v: &Value) -> Option<u16> {
    let n = match v {
        Value::String(s) => s.trim().parse::<u64>().ok()?,
        Value::Number(n) => n.as_u64()?,
        Value::Object(o) => return o.get("code").and_then(status_of),
        _ => return None,
    };
    u16::try_from(n).ok().filter(|s| (100..600).contains(s))
}

fn method_of(v: &Value) -> Option<Method> {
    match v.as_str()?.to_ascii_uppercase().as_str() {
        "POST" => Some(Method::Post),
        "PUT" => Some(Method::Put),
        "PATCH" => Some(Method::Patch),
        "DELETE" => Some(Method::Delete),
        _ => None,
    }
}

/// Percent-decodes one path segment (malformed escapes stay as they are).
fn decode_segment(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The path part of a `location` (an absolute URL or a path), without query or fragment.
fn location_path(loc: &str) -> &str {
    let rest = match loc.find("://") {
        Some(i) => {
            let after = &loc[i + 3..];
            after.find('/').map_or("", |j| &after[j..])
        }
        None => loc,
    };
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    rest[..end].trim_end_matches('/')
}

/// Whether `loc`'s path ends with `path` at a segment boundary.
fn ends_with_path(loc: &str, path: &str) -> bool {
    let p = location_path(loc);
    let path = path.trim_end_matches('/');
    p == path || (p.ends_with(path) && path.starts_with('/'))
}

/// The id a created resource's `location` shows: its last segment, when the path before
/// it is the one posted to.
fn created_id(loc: &str, posted_to: &str) -> Option<String> {
    let p = location_path(loc);
    let (parent, last) = p.rsplit_once('/')?;
    if last.is_empty() || !(parent.ends_with(posted_to.trim_end_matches('/'))) {
        return None;
    }
    Some(decode_segment(last))
}

/// What one answer entry says.
fn verdict(entry: &Value, sent: &SentOp) -> OpResult {
    let Some(status) = entry.get("status").and_then(status_of) else {
        return OpResult::Unknown("its answer has no readable status".into());
    };
    let response = entry.get("response");
    if (200..300).contains(&status) {
        let id = response
            .and_then(|r| r.get("id"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .or_else(|| {
                let loc = entry.get("location").and_then(Value::as_str)?;
                if sent.method == Method::Post {
                    created_id(loc, &sent.path)
                } else {
                    None
                }
            });
        if sent.method == Method::Post && id.is_none() {
            return OpResult::Unknown(format!(
                "answered {status} without the created resource's id"
            ));
        }
        return OpResult::Done { status, id };
    }
    let text = |k: &str| {
        response
            .and_then(|r| r.get(k))
            .and_then(Value::as_str)
            .map(crate::scim::client::clip)
    };
    OpResult::Refused {
        status,
        scim_type: text("scimType"),
        detail: text("detail"),
    }
}

/// A BulkResponse as far as it is read: each entry's routing fields and, of its
/// `response`, only what [`verdict`] needs. The created resources an endpoint echoes back
/// (a flattened group with thousands of members, `$ref`s and `display`s) are skipped while
/// parsing, never built as JSON values: a 1 MiB request's answer costs about its bytes.
#[derive(serde::Deserialize)]
struct SlimAnswer {
    #[serde(rename = "Operations")]
    operations: Option<Vec<Lenient<SlimEntry>>>,
}

/// An object read as `T`, or anything else skipped (`None`) rather than failing the whole
/// answer: an entry that is not an object only goes unmatched.
struct Lenient<T>(Option<T>);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Lenient<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Lenient<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Lenient<T>, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|t| Lenient(Some(t)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Lenient<T>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Lenient(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Lenient<T>, E> {
                Ok(Lenient(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Lenient<T>, E> {
                Ok(Lenient(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Lenient<T>, E> {
                Ok(Lenient(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Lenient<T>, E> {
                Ok(Lenient(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Lenient<T>, E> {
                Ok(Lenient(None))
            }
            fn visit_unit<E>(self) -> Result<Lenient<T>, E> {
                Ok(Lenient(None))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[derive(serde::Deserialize)]
struct SlimEntry {
    method: Option<Value>,
    #[serde(rename = "bulkId")]
    bulk_id: Option<Value>,
    path: Option<Value>,
    location: Option<Value>,
    status: Option<Value>,
    response: Option<Lenient<SlimResponse>>,
}

#[derive(serde::Deserialize)]
struct SlimResponse {
    id: Option<Value>,
    #[serde(rename = "scimType")]
    scim_type: Option<Value>,
    detail: Option<Value>,
}

impl SlimEntry {
    /// The entries as the small JSON objects the matching reads.
    fn into_values(entries: Vec<Lenient<SlimEntry>>) -> Vec<Value> {
        let object = |pairs: Vec<(&str, Option<Value>)>| {
            Value::Object(
                pairs
                    .into_iter()
                    .filter_map(|(k, v)| Some((k.to_string(), v?)))
                    .collect(),
            )
        };
        entries
            .into_iter()
            .map(|e| {
                let Some(e) = e.0 else {
                    return Value::Null;
                };
                let response = e.response.and_then(|r| r.0).map(|r| {
                    object(vec![
                        ("id", r.id),
                        ("scimType", r.scim_type),
                        ("detail", r.detail),
                    ])
                });
                object(vec![
                    ("method", e.method),
                    ("bulkId", e.bulk_id),
                    ("path", e.path),
                    ("location", e.location),
                    ("status", e.status),
                    ("response", response),
                ])
            })
            .collect()
    }
}

/// Reads a BulkResponse body: one [`OpResult`] per operation in `sent`, in `sent`'s order.
/// A body that is not a BulkResponse at all is an error (every operation is unknown).
pub fn parse_answer(sent: &[SentOp], body: &[u8]) -> Result<Vec<OpResult>, AnswerError> {
    let v: SlimAnswer =
        serde_json::from_slice(body).map_err(|e| AnswerError(format!("not JSON: {e}")))?;
    let Some(entries) = v.operations.map(SlimEntry::into_values) else {
        return Err(AnswerError("no \"Operations\" list".into()));
    };
    let entries = &entries;
    let mut results: Vec<Option<OpResult>> = vec![None; sent.len()];
    let mut twice = vec![false; sent.len()];
    let mut claim = |i: usize, r: OpResult, results: &mut Vec<Option<OpResult>>| {
        if results[i].is_some() {
            twice[i] = true;
        } else {
            results[i] = Some(r);
        }
    };
    for (pos, entry) in entries.iter().enumerate() {
        let method = entry.get("method").and_then(method_of);
        let bulk_id = entry.get("bulkId").and_then(Value::as_str);
        let target = if let Some(b) = bulk_id {
            // A bulkId names one operation; its method must agree when given.
            sent.iter().position(|s| {
                s.bulk_id.as_deref() == Some(b) && method.is_none_or(|m| m == s.method)
            })
        } else {
            let path = entry
                .get("path")
                .and_then(Value::as_str)
                .map(str::to_string)
                .or_else(|| {
                    entry
                        .get("location")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                });
            match (method, path) {
                (Some(m), Some(p)) => {
                    let same = |s: &SentOp| {
                        s.method == m && s.method != Method::Post && ends_with_path(&p, &s.path)
                    };
                    sent.iter()
                        .enumerate()
                        .position(|(i, s)| same(s) && results[i].is_none())
                        .or_else(|| sent.iter().position(same))
                }
                (Some(m), None) => sent
                    .get(pos)
                    .filter(|s| s.method == m && s.method != Method::Post)
                    .map(|_| pos),
                _ => None,
            }
        };
        if let Some(i) = target {
            let r = verdict(entry, &sent[i]);
            claim(i, r, &mut results);
        }
    }
    Ok(results
        .into_iter()
        .zip(twice)
        .map(|(r, twice)| match (r, twice) {
            (_, true) => OpResult::Unknown("the answer names it more than once".into()),
            (Some(r), false) => r,
            (None, false) => OpResult::Unknown("the answer does not mention it".into()),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn post(b: &str) -> SentOp {
        SentOp {
            method: Method::Post,
            path: "/Users".into(),
            bulk_id: Some(b.into()),
        }
    }

    fn put(id: &str) -> SentOp {
        SentOp {
            method: Method::Put,
            path: format!("/Users/{id}"),
            bulk_id: None,
        }
    }

    fn answer(ops: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkResponse"],
            "Operations": ops
        }))
        .unwrap()
    }

    fn limits(ops: usize, bytes: usize) -> Limits {
        Limits {
            max_operations: ops,
            max_payload_size: bytes,
        }
    }

    #[test]
    fn the_body_is_as_long_as_computed_and_is_a_bulk_request() {
        let a = post("b1").encode(Some(&json!({"userName": "a"})));
        let b = put("x").encode(Some(&json!({"userName": "b"})));
        let bytes = body([a.as_slice(), b.as_slice()]);
        assert_eq!(bytes.len(), Limits::body_len(2, a.len() + b.len()));
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["schemas"][0], BULK_REQUEST);
        assert_eq!(v["Operations"][0]["bulkId"], "b1");
        assert_eq!(v["Operations"][0]["method"], "POST");
        assert_eq!(v["Operations"][1]["path"], "/Users/x");
        assert!(v.get("failOnErrors").is_none());
        assert_eq!(body(std::iter::empty()).len(), Limits::body_len(0, 0));
    }

    #[test]
    fn splits_by_operation_count() {
        let s = split(&[10; 7], limits(3, 1 << 20));
        assert_eq!(
            s,
            vec![Split::Batch(0..3), Split::Batch(3..6), Split::Batch(6..7)]
        );
    }

    #[test]
    fn splits_by_payload_size_measured_on_the_body() {
        // Room for exactly two 100-byte operations.
        let max = Limits::body_len(2, 200);
        let s = split(&[100, 100, 100, 100, 100], limits(1000, max));
        assert_eq!(
            s,
            vec![Split::Batch(0..2), Split::Batch(2..4), Split::Batch(4..5)]
        );
        // One byte less: one each.
        let s = split(&[100, 100], limits(1000, max - 1));
        assert_eq!(s, vec![Split::Batch(0..1), Split::Batch(1..2)]);
    }

    #[test]
    fn an_operation_too_large_for_any_request_goes_alone() {
        let max = Limits::body_len(1, 100);
        let s = split(&[50, 101, 50, 50], limits(1000, max));
        assert_eq!(
            s,
            vec![
                Split::Batch(0..1),
                Split::Alone(1),
                Split::Batch(2..3),
                Split::Batch(3..4)
            ]
        );
        assert_eq!(split(&[], limits(10, 100)), vec![]);
    }

    #[test]
    fn posts_are_matched_by_bulk_id_whatever_the_order() {
        let sent = [post("b1"), post("b2"), put("u9")];
        let a = answer(json!([
            {"method": "PUT", "location": "https://h/v2/Users/u9", "status": "200"},
            {"method": "POST", "bulkId": "b2", "status": "409",
             "response": {"status": "409", "scimType": "uniqueness", "detail": "taken"}},
            {"method": "POST", "bulkId": "b1", "status": 201,
             "location": "https://h/v2/Users/new%2F1"},
        ]));
        let r = parse_answer(&sent, &a).unwrap();
        assert_eq!(
            r[0],
            OpResult::Done {
                status: 201,
                id: Some("new/1".into())
            }
        );
        assert_eq!(
            r[1],
            OpResult::Refused {
                status: 409,
                scim_type: Some("uniqueness".into()),
                detail: Some("taken".into())
            }
        );
        assert_eq!(
            r[2],
            OpResult::Done {
                status: 200,
                id: None
            }
        );
    }

    #[test]
    fn an_echoed_resource_is_skipped_and_only_its_id_and_error_are_read() {
        let sent = [post("b1"), put("x")];
        let members: Vec<Value> = (0..3)
            .map(
                |i| json!({"value": i.to_string(), "$ref": "https://h/v2/Users/1", "display": "d"}),
            )
            .collect();
        let a = answer(json!([
            {"method": "POST", "bulkId": "b1", "status": "201",
             "response": {"id": "g1", "displayName": "big", "members": members,
                          "meta": {"location": "https://h/v2/Groups/g1"}}},
            {"method": "PUT", "path": "/Users/x", "status": "400",
             "response": {"scimType": "invalidValue", "detail": "no", "schemas": ["e"]}}
        ]));
        let r = parse_answer(&sent, &a).unwrap();
        assert_eq!(
            r[0],
            OpResult::Done {
                status: 201,
                id: Some("g1".into())
            }
        );
        assert_eq!(
            r[1],
            OpResult::Refused {
                status: 400,
                scim_type: Some("invalidValue".into()),
                detail: Some("no".into())
            }
        );
    }

    #[test]
    fn a_created_id_comes_from_the_response_before_the_location() {
        let sent = [post("b1")];
        let a = answer(
            json!([{"method": "POST", "bulkId": "b1", "status": {"code": 201},
            "location": "https://h/v2/Users/wrong", "response": {"id": "right"}}]),
        );
        assert_eq!(
            parse_answer(&sent, &a).unwrap()[0],
            OpResult::Done {
                status: 201,
                id: Some("right".into())
            }
        );
    }

    #[test]
    fn unmentioned_operations_are_unknown_never_done() {
        let sent = [post("b1"), post("b2"), put("u1")];
        let a = answer(json!([{"method": "POST", "bulkId": "b1", "status": "201",
            "location": "/v2/Users/i1"}]));
        let r = parse_answer(&sent, &a).unwrap();
        assert!(matches!(r[0], OpResult::Done { .. }));
        assert!(matches!(r[1], OpResult::Unknown(_)));
        assert!(matches!(r[2], OpResult::Unknown(_)));
    }

    #[test]
    fn malformed_answers() {
        let sent = [post("b1"), put("u1")];
        assert!(parse_answer(&sent, b"<html>busy</html>").is_err());
        assert!(parse_answer(&sent, b"{\"schemas\":[]}").is_err());
        assert!(parse_answer(&sent, b"{\"Operations\": {}}").is_err());
        // Entries that name nothing sent, have no status, or claim an operation twice.
        let a = answer(json!([
            "not an object",
            {"method": "POST", "bulkId": "nobody", "status": "201", "location": "/Users/x"},
            {"method": "POST", "bulkId": "b1", "location": "/Users/x"},
            {"method": "PUT", "path": "/Users/u1", "status": "200"},
            {"method": "PUT", "path": "/Users/u1", "status": "500"},
        ]));
        let r = parse_answer(&sent, &a).unwrap();
        assert!(
            matches!(&r[0], OpResult::Unknown(w) if w.contains("status")),
            "{r:?}"
        );
        assert!(
            matches!(&r[1], OpResult::Unknown(w) if w.contains("more than once")),
            "{r:?}"
        );
    }

    #[test]
    fn a_create_without_its_id_is_unknown() {
        let sent = [post("b1"), post("b2")];
        let a = answer(json!([
            {"method": "POST", "bulkId": "b1", "status": "201"},
            // A location under another endpoint is not the id of what was posted.
            {"method": "POST", "bulkId": "b2", "status": "201", "location": "https://h/v2/Groups/g1"},
        ]));
        let r = parse_answer(&sent, &a).unwrap();
        assert!(matches!(r[0], OpResult::Unknown(_)));
        assert!(matches!(r[1], OpResult::Unknown(_)));
    }

    #[test]
    fn a_bulk_id_with_another_method_matches_nothing() {
        let sent = [post("b1")];
        let a = answer(json!([{"method": "DELETE", "bulkId": "b1", "status": "204"}]));
        assert!(matches!(
            parse_answer(&sent, &a).unwrap()[0],
            OpResult::Unknown(_)
        ));
    }

    #[test]
    fn answers_without_a_path_are_matched_by_position_only_when_the_method_agrees() {
        let sent = [put("a"), put("b")];
        let a = answer(json!([
            {"method": "PUT", "status": "200"},
            {"method": "PATCH", "status": "200"},
        ]));
        let r = parse_answer(&sent, &a).unwrap();
        assert!(matches!(r[0], OpResult::Done { .. }));
        assert!(matches!(r[1], OpResult::Unknown(_)));
        // Paths, not order, decide.
        let a = answer(json!([
            {"method": "PUT", "location": "http://h/v2/Users/b", "status": "404"},
            {"method": "PUT", "location": "http://h/v2/Users/a", "status": "200"},
        ]));
        let r = parse_answer(&sent, &a).unwrap();
        assert!(matches!(r[0], OpResult::Done { .. }));
        assert!(matches!(r[1], OpResult::Refused { status: 404, .. }));
    }

    #[test]
    fn a_location_must_end_at_a_segment_boundary() {
        assert!(ends_with_path("http://h/v2/Users/ab", "/Users/ab"));
        assert!(!ends_with_path("http://h/v2/Users/xab", "/ab"));
        assert!(ends_with_path("/Users/ab/", "/Users/ab"));
        assert_eq!(location_path("https://h:1/v2/Users/x?y=1"), "/v2/Users/x");
        assert_eq!(
            created_id("https://h/v2/Users/a%20b", "/Users"),
            Some("a b".into())
        );
        assert_eq!(created_id("https://h/v2/Users/", "/Users"), None);
        assert_eq!(decode_segment("100%"), "100%");
        assert_eq!(decode_segment("%zz%41"), "%zzA");
        assert_eq!(path_segment("a b/c"), "a%20b%2Fc");
        assert_eq!(
            SentOp::replace(ResourceKind::User, "a/b").path,
            "/Users/a%2Fb"
        );
    }
}
