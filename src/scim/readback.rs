//! What an endpoint kept of a written resource (pure; no I/O).
//!
//! A 200/201 answer to a POST or PUT carries the resource as the service stored it (RFC 7644
//! §3.3, §3.5.1). Some services accept attributes they do not keep (a 201 without `title`)
//! or rebuild them (a `displayName` made from the name parts): the write "worked" and the
//! endpoint is not what the directory says. [`compare`] lists such attributes so that the
//! agent can say so once per attribute, instead of reporting everything in step.
//!
//! Rules:
//! * Only attributes the agent sent are looked at; what the service adds is its own.
//!   `schemas`, `id`, `meta`, `externalId` (checked by the client itself), `members` (checked
//!   after each membership PATCH) and `password` are never compared.
//! * An attribute the endpoint's `/Schemas` marks `returned: "never"` or `"request"` is not
//!   expected back and is not compared ([`withheld`](crate::scim::schema::Declared::withheld)).
//! * Text compares without regard to ASCII case (SCIM's default `caseExact: false`).
//! * A multi-valued attribute compares its entries by `value` (or, for entries without one,
//!   by all their text sub-attributes): every sent entry must come back; extra entries and
//!   sub-attributes the service adds or leaves out (`primary`, `type`, `display`) are not
//!   differences.
//! * An answer that holds none of the compared attributes at all (a service that answers
//!   with the `id` alone) is no representation: nothing is reported.

use serde_json::{Map, Value};

/// How an attribute differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Drift {
    /// Sent, absent from the answer.
    Dropped,
    /// Sent, present with another value.
    Rewritten,
}

impl Drift {
    /// `dropped` / `rewritten`.
    pub fn word(self) -> &'static str {
        match self {
            Drift::Dropped => "dropped",
            Drift::Rewritten => "rewritten",
        }
    }
}

const NEVER_COMPARED: &[&str] = &["schemas", "id", "meta", "externalid", "members", "password"];

/// The attributes of `sent` that `stored` does not hold as sent, by path (`title`,
/// `name.givenName`, `emails`, `urn:...:User:employeeNumber`), in the body's order.
/// `withheld(name)` says whether the endpoint declares a top-level attribute as not
/// returned by default.
pub fn compare(
    sent: &Value,
    stored: &Value,
    withheld: &dyn Fn(&str) -> bool,
) -> Vec<(String, Drift)> {
    let (Value::Object(sent), Value::Object(stored)) = (sent, stored) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut seen_any = false;
    for (name, value) in sent {
        let lower = name.to_ascii_lowercase();
        if NEVER_COMPARED.contains(&lower.as_str()) || withheld(name) {
            continue;
        }
        let back = get_ci(stored, name);
        seen_any |= back.is_some();
        attribute(name, value, back, &mut out);
    }
    if !seen_any {
        return Vec::new();
    }
    out
}

fn attribute(path: &str, sent: &Value, back: Option<&Value>, out: &mut Vec<(String, Drift)>) {
    let Some(back) = back.filter(|b| !b.is_null()) else {
        out.push((path.to_string(), Drift::Dropped));
        return;
    };
    match sent {
        Value::Object(subs) => {
            // A reference (`manager`) or a complex attribute (`name`, an extension).
            let Value::Object(back) = back else {
                out.push((path.to_string(), Drift::Rewritten));
                return;
            };
            for (sub, value) in subs {
                // `$ref` and `display` are the service's to fill in.
                if sub == "$ref" || sub.eq_ignore_ascii_case("display") {
                    continue;
                }
                let child = if path.starts_with("urn:") {
                    format!("{path}:{sub}")
                } else {
                    format!("{path}.{sub}")
                };
                attribute(&child, value, get_ci(back, sub), out);
            }
        }
        Value::Array(items) => {
            let back_items = back.as_array().map(Vec::as_slice).unwrap_or(&[]);
            if back_items.is_empty() && !items.is_empty() {
                out.push((path.to_string(), Drift::Dropped));
            } else if !items
                .iter()
                .all(|i| back_items.iter().any(|b| same_entry(i, b)))
            {
                out.push((path.to_string(), Drift::Rewritten));
            }
        }
        scalar => {
            if !same_scalar(scalar, back) {
                out.push((path.to_string(), Drift::Rewritten));
            }
        }
    }
}

/// One entry of a multi-valued attribute came back: by `value`, else by its text parts.
fn same_entry(sent: &Value, back: &Value) -> bool {
    match (sent, back) {
        (Value::Object(s), Value::Object(b)) => match s.get("value") {
            Some(v) => b.get("value").is_some_and(|bv| same_scalar(v, bv)),
            None => s
                .iter()
                .filter(|(k, v)| v.is_string() && !is_decoration(k))
                .all(|(k, v)| get_ci(b, k).is_some_and(|bv| same_scalar(v, bv))),
        },
        (s, b) => same_scalar(s, b),
    }
}

fn is_decoration(sub: &str) -> bool {
    ["type", "primary", "display"]
        .iter()
        .any(|d| d.eq_ignore_ascii_case(sub))
}

fn same_scalar(sent: &Value, back: &Value) -> bool {
    match (sent, back) {
        (Value::String(a), Value::String(b)) => a.eq_ignore_ascii_case(b),
        (a, b) => a == b,
    }
}

/// The value at a path [`compare`] reports (`title`, `name.givenName`,
/// `urn:...:User:employeeNumber`), if `body` holds it.
pub fn value_at<'a>(body: &'a Value, path: &str) -> Option<&'a Value> {
    let Value::Object(map) = body else {
        return None;
    };
    let (outer, inner) = if path.starts_with("urn:") {
        match path.rsplit_once(':') {
            Some((ext, attr)) if map.keys().any(|k| k.eq_ignore_ascii_case(ext)) => {
                (ext, Some(attr))
            }
            _ => (path, None),
        }
    } else {
        match path.split_once('.') {
            Some((a, b)) => (a, Some(b)),
            None => (path, None),
        }
    };
    let v = get_ci(map, outer)?;
    match inner {
        None => Some(v),
        Some(sub) => match v {
            Value::Object(m) => get_ci(m, sub),
            _ => None,
        },
    }
}

/// `map[name]`, the name compared without regard to ASCII case (SCIM attribute names are
/// case-insensitive).
fn get_ci<'a>(map: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    map.get(name).or_else(|| {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn none(_: &str) -> bool {
        false
    }

    fn sent() -> Value {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User",
                        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"],
            "externalId": "x-1",
            "userName": "ann",
            "displayName": "Ann Lee",
            "name": {"givenName": "Ann", "familyName": "Lee"},
            "title": "Engineer",
            "active": true,
            "emails": [{"value": "ann@branch.test", "type": "work", "primary": true},
                       {"value": "a.lee@branch.test", "type": "work"}],
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {
                "employeeNumber": "1042",
                "manager": {"value": "boss-id"}
            }
        })
    }

    #[test]
    fn a_faithful_answer_has_no_drift() {
        let mut back = sent();
        back["id"] = json!("u-1");
        back["meta"] = json!({"resourceType": "User"});
        // Case, decorations and the service's own additions are no difference.
        back["userName"] = json!("ANN");
        back["emails"] = json!([{"value": "Ann@Branch.test"}, {"value": "a.lee@branch.test", "display": "x"},
                                {"value": "extra@branch.test"}]);
        back["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]["manager"] =
            json!({"value": "boss-id", "$ref": "https://x/Users/boss-id", "displayName": "Boss"});
        back["nickName"] = json!("added by the service");
        assert_eq!(compare(&sent(), &back, &none), vec![]);
    }

    #[test]
    fn dropped_and_rebuilt_attributes_are_named() {
        let mut back = sent();
        let o = back.as_object_mut().unwrap();
        o.remove("title");
        o.insert("displayName".into(), json!("Lee, Ann"));
        o.insert("emails".into(), json!([{"value": "ann@branch.test"}]));
        o["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]
            .as_object_mut()
            .unwrap()
            .remove("employeeNumber");
        o["name"].as_object_mut().unwrap().remove("familyName");
        assert_eq!(
            compare(&sent(), &back, &none),
            vec![
                ("displayName".to_string(), Drift::Rewritten),
                ("emails".to_string(), Drift::Rewritten),
                ("name.familyName".to_string(), Drift::Dropped),
                ("title".to_string(), Drift::Dropped),
                (
                    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber"
                        .to_string(),
                    Drift::Dropped
                ),
            ]
        );
    }

    #[test]
    fn withheld_attributes_and_bare_answers_are_not_differences() {
        let mut back = sent();
        back.as_object_mut().unwrap().remove("title");
        let title_withheld = |n: &str| n.eq_ignore_ascii_case("title");
        assert_eq!(compare(&sent(), &back, &title_withheld), vec![]);
        // An answer with the id alone is no representation.
        assert_eq!(
            compare(&sent(), &json!({"id": "u-1", "schemas": []}), &none),
            vec![]
        );
        // Nor is an answer that is not an object.
        assert_eq!(compare(&sent(), &json!("ok"), &none), vec![]);
    }

    #[test]
    fn a_multi_valued_attribute_left_out_whole_is_dropped() {
        let mut back = sent();
        back["emails"] = json!([]);
        assert_eq!(
            compare(&sent(), &back, &none),
            vec![("emails".to_string(), Drift::Dropped)]
        );
        // Addresses compare by their text parts.
        let s = json!({"userName": "a", "addresses": [{"type": "work", "locality": "Oslo", "country": "NO"}]});
        let same = json!({"userName": "a", "addresses": [{"locality": "oslo", "country": "NO", "primary": false}]});
        let other =
            json!({"userName": "a", "addresses": [{"locality": "Bergen", "country": "NO"}]});
        assert_eq!(compare(&s, &same, &none), vec![]);
        assert_eq!(
            compare(&s, &other, &none),
            vec![("addresses".to_string(), Drift::Rewritten)]
        );
    }

    #[test]
    fn values_are_found_at_reported_paths() {
        let b = sent();
        assert_eq!(value_at(&b, "title"), Some(&json!("Engineer")));
        assert_eq!(value_at(&b, "name.givenName"), Some(&json!("Ann")));
        assert_eq!(
            value_at(
                &b,
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber"
            ),
            Some(&json!("1042"))
        );
        assert_eq!(value_at(&b, "nickName"), None);
        assert_eq!(value_at(&b, "name.middleName"), None);
    }

    #[test]
    fn a_boolean_that_comes_back_otherwise_is_rewritten() {
        let mut back = sent();
        back["active"] = json!(false);
        assert_eq!(
            compare(&sent(), &back, &none),
            vec![("active".to_string(), Drift::Rewritten)]
        );
    }
}
