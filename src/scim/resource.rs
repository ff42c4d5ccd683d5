//! SCIM resource kinds and the schema URNs the agent uses (RFC 7643).

/// Core User schema.
pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
/// Core Group schema.
pub const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
/// Enterprise User extension.
pub const ENTERPRISE_SCHEMA: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
/// PATCH request message.
pub const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
/// List response message.
pub const LIST_RESPONSE: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
/// Error message.
pub const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

/// The one SCIM error body (RFC 7644 §3.12): `schemas`, `status` as a string, `detail`, and
/// `scimType` when given. The facade, the relay's replies and the hub all answer with it.
pub fn error_body(
    status: u16,
    scim_type: Option<&str>,
    detail: impl Into<String>,
) -> serde_json::Value {
    let mut body = serde_json::json!({
        "schemas": [ERROR_SCHEMA],
        "status": status.to_string(),
        "detail": detail.into(),
    });
    if let Some(t) = scim_type {
        body["scimType"] = serde_json::Value::String(t.to_string());
    }
    body
}

/// The two resource types the agent provisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceKind {
    /// `/Users`
    User,
    /// `/Groups`
    Group,
}

impl ResourceKind {
    /// The endpoint path segment under the SCIM base URL.
    pub fn endpoint(self) -> &'static str {
        match self {
            ResourceKind::User => "Users",
            ResourceKind::Group => "Groups",
        }
    }

    /// A short lower-case word for logs and reports.
    pub fn word(self) -> &'static str {
        match self {
            ResourceKind::User => "user",
            ResourceKind::Group => "group",
        }
    }
}
