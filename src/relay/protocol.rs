//! The relay protocol's wire format (docs/protocol.md), typed, and the one copy of it: the
//! agent's link reads and writes these, and the hub builds the same structs, so the two
//! cannot drift apart. Pure data and parsing; no I/O.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The one SCIM error body, for the hub's own SCIM answers too.
pub use crate::scim::resource::error_body as scim_error_body;

/// Protocol major version spoken here.
pub const PROTOCOL: &str = "1";

/// One request from the hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Unique per hub.
    pub id: String,
    /// `scim` or `command`.
    pub kind: String,
    /// SCIM: the method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// SCIM: the path (`/Users/...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// SCIM: the raw query string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// SCIM: the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// Command: its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Command `provision`: a DN or an anchor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Command `set-profile`: profile TOML.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}

/// The agent's answer to one [`Envelope`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The envelope's id.
    pub id: String,
    /// HTTP-like status.
    pub status: u16,
    /// JSON body.
    pub body: Value,
}

impl Reply {
    /// A SCIM error reply (RFC 7644 §3.12).
    pub fn error(
        id: &str,
        status: u16,
        scim_type: Option<&str>,
        detail: impl Into<String>,
    ) -> Reply {
        Reply {
            id: id.to_string(),
            status,
            body: scim_error_body(status, scim_type, detail),
        }
    }
}

/// Request ids: 1-64 bytes of `[A-Za-z0-9._-]`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The envelopes of a 200 poll answer.
pub fn parse_requests(body: &[u8]) -> Result<Vec<Envelope>, String> {
    #[derive(Deserialize)]
    struct Answer {
        requests: Vec<Envelope>,
    }
    let a: Answer = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if a.requests.len() > 1000 {
        return Err(format!(
            "{} requests in one answer (limit 1000)",
            a.requests.len()
        ));
    }
    Ok(a.requests)
}

/// `(active, ttl)` from a heartbeat answer.
pub fn parse_lease(body: &[u8]) -> Option<(bool, Duration)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let lease = v.get("lease")?;
    let active = lease.get("role")?.as_str()? == "active";
    let ttl = lease.get("ttl_secs")?.as_u64()?.min(3600);
    Some((active, Duration::from_secs(ttl)))
}
