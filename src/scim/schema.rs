//! What an endpoint's `/Schemas` (RFC 7643 §7) says it accepts, and a body fitted to it.
//!
//! Owns: reading the User and Group schemas (core attributes and their sub-attributes,
//! which are required) and [`EndpointSchema::fit`], a pure function from the mapped body
//! to the body that is sent. Knows nothing about HTTP.
//!
//! Rules:
//! * **Sub-attributes the endpoint does not declare are left out** of a complex attribute
//!   (e.g. `primary` and `type` of `emails` for a service that declares only `value`): some
//!   services refuse a body with them as a whole. Only sub-attributes go; a top-level
//!   attribute is never dropped here (the endpoint's answer to it is its own to give).
//! * **A required multi-valued attribute that the body lacks is sent empty** (`"members":
//!   []` for a service that requires members at group creation: the members follow by
//!   PATCH).
//! * Nothing is fitted where the endpoint says nothing: an attribute it does not list, one
//!   it lists without sub-attributes, or no `/Schemas` at all leaves the body as mapped.
//! * What was left out or added is reported ([`Fitted`]) so that `check` and the log can
//!   say it once; the fit never changes a value.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::scim::resource::{ResourceKind, GROUP_SCHEMA, USER_SCHEMA};

/// One top-level attribute as a schema declares it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Declared {
    /// `required`.
    pub required: bool,
    /// `multiValued`.
    pub multi_valued: bool,
    /// The declared sub-attributes, lowercased; empty: none declared (nothing is fitted).
    pub sub_attributes: BTreeSet<String>,
    /// `returned` is `never` or `request`: not in an answer unless asked for.
    pub withheld: bool,
}

/// The core attributes of one resource type, keyed by lowercased name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceSchema {
    /// Attribute name (lowercase) → declaration.
    pub attributes: BTreeMap<String, Declared>,
}

/// What the endpoint's `/Schemas` declares for users and groups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointSchema {
    /// The core User schema, when listed.
    pub user: Option<ResourceSchema>,
    /// The core Group schema, when listed.
    pub group: Option<ResourceSchema>,
}

/// What [`EndpointSchema::fit`] changed in one body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fitted {
    /// `attribute.sub` left out (as written in the body).
    pub dropped: BTreeSet<String>,
    /// Required multi-valued attributes added as `[]`.
    pub added_empty: BTreeSet<String>,
}

impl Fitted {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.dropped.is_empty() && self.added_empty.is_empty()
    }
}

impl EndpointSchema {
    /// Reads a `/Schemas` answer: a ListResponse of schemas, or a bare array of them.
    /// Anything it cannot read is left out (an endpoint that says nothing gets nothing
    /// fitted).
    pub fn parse(answer: &Value) -> EndpointSchema {
        let list = match answer {
            Value::Array(items) => items.as_slice(),
            other => other
                .get("Resources")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or(&[]),
        };
        let mut out = EndpointSchema::default();
        for schema in list {
            let id = schema.get("id").and_then(Value::as_str).unwrap_or("");
            let slot = if id.eq_ignore_ascii_case(USER_SCHEMA) {
                &mut out.user
            } else if id.eq_ignore_ascii_case(GROUP_SCHEMA) {
                &mut out.group
            } else {
                continue;
            };
            *slot = Some(resource_schema(schema));
        }
        out
    }

    fn of(&self, kind: ResourceKind) -> Option<&ResourceSchema> {
        match kind {
            ResourceKind::User => self.user.as_ref(),
            ResourceKind::Group => self.group.as_ref(),
        }
    }

    /// Fits `body` (a mapped User or Group) to what the endpoint declares, in place; see
    /// the module rules. `creating`: a POST (required attributes are added only then).
    pub fn fit(&self, kind: ResourceKind, body: &mut Value, creating: bool) -> Fitted {
        let mut report = Fitted::default();
        let (Some(schema), Value::Object(map)) = (self.of(kind), body) else {
            return report;
        };
        for (name, value) in map.iter_mut() {
            let Some(d) = schema.attributes.get(&name.to_ascii_lowercase()) else {
                continue;
            };
            if d.sub_attributes.is_empty() {
                continue;
            }
            let mut prune = |obj: &mut serde_json::Map<String, Value>| {
                obj.retain(|sub, _| {
                    let keep = d.sub_attributes.contains(&sub.to_ascii_lowercase());
                    if !keep {
                        report.dropped.insert(format!("{name}.{sub}"));
                    }
                    keep
                });
            };
            match value {
                Value::Object(obj) => prune(obj),
                Value::Array(items) => {
                    for item in items.iter_mut() {
                        if let Value::Object(obj) = item {
                            prune(obj);
                        }
                    }
                }
                _ => {}
            }
        }
        if creating {
            for (name, d) in &schema.attributes {
                let present = map.keys().any(|k| k.eq_ignore_ascii_case(name));
                if d.required && d.multi_valued && !present {
                    map.insert(name_as_rfc(name), Value::Array(Vec::new()));
                    report.added_empty.insert(name_as_rfc(name));
                }
            }
        }
        report
    }

    /// The sub-attributes of `attribute` (of `kind`) that the endpoint does not declare,
    /// out of `candidates`: what [`EndpointSchema::fit`] will leave out (for `check`).
    pub fn undeclared<'a>(
        &self,
        kind: ResourceKind,
        attribute: &str,
        candidates: &[&'a str],
    ) -> Vec<&'a str> {
        let Some(d) = self
            .of(kind)
            .and_then(|s| s.attributes.get(&attribute.to_ascii_lowercase()))
        else {
            return Vec::new();
        };
        if d.sub_attributes.is_empty() {
            return Vec::new();
        }
        candidates
            .iter()
            .copied()
            .filter(|c| !d.sub_attributes.contains(&c.to_ascii_lowercase()))
            .collect()
    }

    /// Whether the endpoint declares `attribute` of `kind` as not returned by default
    /// (`returned: "never"` or `"request"`).
    pub fn withheld(&self, kind: ResourceKind, attribute: &str) -> bool {
        self.of(kind)
            .and_then(|s| s.attributes.get(&attribute.to_ascii_lowercase()))
            .is_some_and(|d| d.withheld)
    }

    /// Required multi-valued attributes of `kind`, which a create sends empty.
    pub fn required_lists(&self, kind: ResourceKind) -> Vec<String> {
        self.of(kind)
            .map(|s| {
                s.attributes
                    .iter()
                    .filter(|(_, d)| d.required && d.multi_valued)
                    .map(|(n, _)| name_as_rfc(n))
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn resource_schema(schema: &Value) -> ResourceSchema {
    let mut out = ResourceSchema::default();
    for a in schema
        .get("attributes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(name) = a.get("name").and_then(Value::as_str) else {
            continue;
        };
        let flag = |k: &str| a.get(k).and_then(Value::as_bool).unwrap_or(false);
        let sub_attributes = a
            .get("subAttributes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|s| s.get("name").and_then(Value::as_str))
            .map(str::to_ascii_lowercase)
            .collect();
        out.attributes.insert(
            name.to_ascii_lowercase(),
            Declared {
                required: flag("required"),
                multi_valued: flag("multiValued"),
                sub_attributes,
                withheld: a.get("returned").and_then(Value::as_str).is_some_and(|r| {
                    r.eq_ignore_ascii_case("never") || r.eq_ignore_ascii_case("request")
                }),
            },
        );
    }
    out
}

/// The RFC 7643 spelling of a lowercased attribute name idrelay sends.
fn name_as_rfc(lower: &str) -> String {
    const NAMES: [&str; 9] = [
        "members",
        "emails",
        "phoneNumbers",
        "addresses",
        "groups",
        "entitlements",
        "roles",
        "x509Certificates",
        "ims",
    ];
    NAMES
        .iter()
        .find(|n| n.eq_ignore_ascii_case(lower))
        .map_or_else(|| lower.to_string(), |n| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The shape of Canaille 0.3.6's `/Schemas` (trimmed).
    fn canaille_like() -> EndpointSchema {
        EndpointSchema::parse(&json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
            "Resources": [
                {"id": USER_SCHEMA, "attributes": [
                    {"name": "userName", "required": true, "multiValued": false},
                    {"name": "name", "required": true, "multiValued": false, "subAttributes": [
                        {"name": "formatted"}, {"name": "familyName"}, {"name": "givenName"}]},
                    {"name": "emails", "multiValued": true, "subAttributes": [{"name": "value"}]},
                    {"name": "phoneNumbers", "multiValued": true, "subAttributes": [{"name": "value"}]},
                    {"name": "title"}
                ]},
                {"id": GROUP_SCHEMA, "attributes": [
                    {"name": "displayName", "required": true},
                    {"name": "members", "required": true, "multiValued": true, "subAttributes": [
                        {"name": "value"}, {"name": "$ref"}, {"name": "display"}]}
                ]},
                {"id": "urn:example:other", "attributes": []}
            ]
        }))
    }

    #[test]
    fn undeclared_sub_attributes_are_left_out_and_values_kept() {
        let s = canaille_like();
        let mut user = json!({
            "schemas": [USER_SCHEMA],
            "userName": "ann",
            "name": {"formatted": "Ann Lee", "familyName": "Lee", "honorificPrefix": "Dr"},
            "emails": [{"value": "ann@x.test", "type": "work", "primary": true}],
            "phoneNumbers": [{"value": "+1", "type": "work"}, {"value": "+2", "type": "mobile"}],
            "title": "Boss"
        });
        let report = s.fit(ResourceKind::User, &mut user, true);
        assert_eq!(
            user,
            json!({
                "schemas": [USER_SCHEMA],
                "userName": "ann",
                "name": {"formatted": "Ann Lee", "familyName": "Lee"},
                "emails": [{"value": "ann@x.test"}],
                "phoneNumbers": [{"value": "+1"}, {"value": "+2"}],
                "title": "Boss"
            })
        );
        let dropped: Vec<&str> = report.dropped.iter().map(String::as_str).collect();
        assert_eq!(
            dropped,
            [
                "emails.primary",
                "emails.type",
                "name.honorificPrefix",
                "phoneNumbers.type"
            ]
        );
        assert!(
            report.added_empty.is_empty(),
            "users have no required list here"
        );
    }

    #[test]
    fn a_required_list_is_sent_empty_on_create_only() {
        let s = canaille_like();
        let mut group = json!({"schemas": [GROUP_SCHEMA], "displayName": "team"});
        let r = s.fit(ResourceKind::Group, &mut group, true);
        assert_eq!(group["members"], json!([]));
        assert_eq!(r.added_empty.iter().collect::<Vec<_>>(), ["members"]);
        let mut replaced = json!({"displayName": "team"});
        assert!(s.fit(ResourceKind::Group, &mut replaced, false).is_empty());
        assert!(replaced.get("members").is_none());
        assert_eq!(s.required_lists(ResourceKind::Group), ["members"]);
    }

    #[test]
    fn an_endpoint_that_says_nothing_gets_the_body_as_mapped() {
        let body = json!({"userName": "a", "emails": [{"value": "a@x", "primary": true}]});
        for schema in [
            EndpointSchema::default(),
            EndpointSchema::parse(&json!({"Resources": "garbage"})),
            // Listed without sub-attributes: nothing to go by.
            EndpointSchema::parse(&json!([{"id": USER_SCHEMA, "attributes": [
                {"name": "emails", "multiValued": true}]}])),
        ] {
            let mut b = body.clone();
            assert!(schema.fit(ResourceKind::User, &mut b, true).is_empty());
            assert_eq!(b, body);
        }
    }

    #[test]
    fn check_lists_what_will_be_left_out() {
        let s = canaille_like();
        assert_eq!(
            s.undeclared(ResourceKind::User, "emails", &["value", "type", "primary"]),
            ["type", "primary"]
        );
        assert!(s
            .undeclared(ResourceKind::User, "title", &["value"])
            .is_empty());
        assert!(EndpointSchema::default()
            .undeclared(ResourceKind::User, "emails", &["type"])
            .is_empty());
    }
}
