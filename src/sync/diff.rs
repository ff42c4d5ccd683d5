//! What a dry run shows per object (issue 20, item 4): the operation a real pass would carry
//! out and the attributes it would change, old → new, from what the endpoint holds.
//!
//! Pure: bodies in, text out. Compact: one line per object, then at most
//! [`MAX_ATTR_LINES`] indented attribute lines (`... and N more`); a value longer than
//! [`MAX_VALUE`] characters is shortened; an attribute whose name says it is a secret
//! (`password`, `secret`, `token`) is never shown, only that it changes.
//!
//! The comparison is [`crate::scim::readback::compare`]'s (case, decorations and what the
//! endpoint adds are no difference), so a dry run, `preview` and the read-back of a real
//! pass agree on what "differs" means.

use serde_json::Value;

use crate::scim::readback::{compare, value_at};

/// Attribute lines shown per object at most.
pub const MAX_ATTR_LINES: usize = 8;
/// Characters of one value shown at most.
pub const MAX_VALUE: usize = 60;

/// What a pass does with one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// POST a new resource.
    Create,
    /// PUT the whole resource (a user, or a group without a member store).
    Replace,
    /// PATCH attributes (a group with a member store).
    Patch,
    /// PATCH `active: false` (users, `sync.user_delete = "deactivate"`).
    Deactivate,
    /// DELETE.
    Delete,
    /// A delete held for `idrelay approve-deletes`.
    Hold,
}

impl Op {
    /// The word on the object's line.
    pub fn word(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Replace => "replace",
            Op::Patch => "patch",
            Op::Deactivate => "deactivate",
            Op::Delete => "delete",
            Op::Hold => "hold",
        }
    }
}

/// One attribute that changes: its path and its old and new values as shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrChange {
    /// `title`, `name.givenName`, `urn:...:enterprise:2.0:User:department`.
    pub path: String,
    /// What the endpoint holds (`(none)`).
    pub old: String,
    /// What the pass sends (`(none)`).
    pub new: String,
}

/// The attributes that change when `sends` is written over `held` (`None`: nothing held,
/// a create: every attribute sent is new). `schemas`, `id`, `meta` are not attributes.
/// `whole`: the write replaces the whole resource (a PUT), so what it no longer carries
/// is cleared; a PATCH of the attributes sent leaves the others alone.
pub fn changes(held: Option<&Value>, sends: &Value, whole: bool) -> Vec<AttrChange> {
    let paths: Vec<String> = match held {
        Some(h) => compare(sends, h, &|_| false)
            .into_iter()
            .map(|(p, _)| p)
            .collect(),
        None => match sends {
            Value::Object(m) => m
                .keys()
                .filter(|k| !matches!(k.as_str(), "schemas" | "id" | "meta"))
                .cloned()
                .collect(),
            _ => Vec::new(),
        },
    };
    let mut out: Vec<AttrChange> = paths
        .into_iter()
        .map(|path| AttrChange {
            old: shown(&path, held.and_then(|h| value_at(h, &path))),
            new: shown(&path, value_at(sends, &path)),
            path,
        })
        .collect();
    // What the endpoint holds and the write no longer carries: a PUT clears it (the
    // directory's value was removed). Not what the endpoint keeps of its own.
    if let (true, Some(Value::Object(h)), Value::Object(s)) = (whole, held, sends) {
        for (k, v) in h {
            let own = matches!(
                k.as_str(),
                "id" | "meta" | "schemas" | "externalId" | "groups" | "members"
            );
            let empty = v.is_null() || v.as_array().is_some_and(Vec::is_empty);
            if !own && !empty && !s.keys().any(|sk| sk.eq_ignore_ascii_case(k)) {
                out.push(AttrChange {
                    path: k.clone(),
                    old: shown(k, Some(v)),
                    new: "(none)".into(),
                });
            }
        }
    }
    out
}

/// A group's member change as one line (`members: +2 -1`): members go as PATCH add and
/// remove, not as a value that is replaced. `None` when none changes.
pub fn members_change(added: usize, removed: usize) -> Option<AttrChange> {
    (added + removed > 0).then(|| AttrChange {
        path: "members".into(),
        old: String::new(),
        new: format!("+{added} -{removed}"),
    })
}

/// A value as a dry run shows it: JSON text, shortened; a secret never.
pub fn shown(path: &str, v: Option<&Value>) -> String {
    let v = match v {
        None | Some(Value::Null) => return "(none)".into(),
        Some(v) => v,
    };
    let lower = path.to_ascii_lowercase();
    if ["password", "secret", "token"]
        .iter()
        .any(|s| lower.contains(s))
    {
        return "(secret, not shown)".into();
    }
    let text = v.to_string();
    if text.chars().count() <= MAX_VALUE {
        return text;
    }
    let cut: String = text.chars().take(MAX_VALUE - 3).collect();
    format!("{cut}...")
}

/// The object's block: `create user uid=ann,ou=people,...` (with ` (id X)` when known and
/// `: note` when there is one), then its attribute lines, indented and capped.
pub fn render(
    op: Op,
    kind: &str,
    dn: &str,
    id: Option<&str>,
    note: Option<&str>,
    changes: &[AttrChange],
) -> String {
    let mut out = format!("{} {kind} {dn}", op.word());
    if let Some(id) = id {
        out.push_str(&format!(" (id {id})"));
    }
    if let Some(n) = note {
        out.push_str(": ");
        out.push_str(n);
    }
    out.push('\n');
    for c in changes.iter().take(MAX_ATTR_LINES) {
        if c.old.is_empty() {
            out.push_str(&format!("    {}: {}\n", c.path, c.new));
        } else {
            out.push_str(&format!("    {}: {} -> {}\n", c.path, c.old, c.new));
        }
    }
    if changes.len() > MAX_ATTR_LINES {
        out.push_str(&format!(
            "    ... and {} more\n",
            changes.len() - MAX_ATTR_LINES
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_create_shows_every_attribute_sent_as_new() {
        let sends = json!({"schemas": ["x"], "userName": "ann", "title": "Boss"});
        let c = changes(None, &sends, true);
        assert_eq!(c.len(), 2);
        assert!(c.iter().all(|c| c.old == "(none)" && c.path != "schemas"));
        let text = render(Op::Create, "user", "uid=ann,o=x", None, None, &c);
        assert!(text.starts_with("create user uid=ann,o=x\n"), "{text}");
        assert!(text.contains("    title: (none) -> \"Boss\"\n"), "{text}");
    }

    #[test]
    fn a_replace_shows_only_what_differs_old_to_new() {
        let held = json!({"id": "7", "userName": "ann", "title": "Clerk",
                          "name": {"givenName": "Ann", "familyName": "Lee"},
                          "meta": {"created": "x"}});
        let sends = json!({"userName": "ANN", "title": "Boss",
                           "name": {"givenName": "Ann", "familyName": "Li"}});
        let c = changes(Some(&held), &sends, true);
        let paths: Vec<&str> = c.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["name.familyName", "title"], "case is no difference");
        assert_eq!(
            (c[1].old.as_str(), c[1].new.as_str()),
            ("\"Clerk\"", "\"Boss\"")
        );
        let text = render(Op::Replace, "user", "uid=ann", Some("7"), None, &c);
        assert!(text.starts_with("replace user uid=ann (id 7)\n"), "{text}");
    }

    #[test]
    fn an_attribute_the_write_no_longer_carries_is_shown_cleared() {
        let held = json!({"id": "7", "userName": "ann", "title": "Clerk", "groups": [{"value": "g"}],
                          "meta": {}, "nickName": null});
        let sends = json!({"userName": "ann"});
        let c = changes(Some(&held), &sends, true);
        assert!(
            changes(Some(&held), &sends, false).is_empty(),
            "a PATCH clears nothing"
        );
        assert_eq!(
            c,
            [AttrChange {
                path: "title".into(),
                old: "\"Clerk\"".into(),
                new: "(none)".into()
            }]
        );
    }

    #[test]
    fn long_values_are_shortened_and_secrets_never_shown() {
        let long = "x".repeat(500);
        let s = shown("description", Some(&json!(long)));
        assert_eq!(s.chars().count(), MAX_VALUE);
        assert!(s.ends_with("..."));
        let s = shown("urn:x:password", Some(&json!("hunter2")));
        assert!(!s.contains("hunter2"));
        assert_eq!(shown("title", None), "(none)");
    }

    #[test]
    fn a_member_change_is_one_line_of_counts() {
        assert_eq!(members_change(0, 0), None);
        let c = members_change(2, 1).unwrap();
        let text = render(Op::Patch, "group", "cn=t", Some("5"), None, &[c]);
        assert_eq!(text, "patch group cn=t (id 5)\n    members: +2 -1\n");
    }

    #[test]
    fn attribute_lines_are_capped_with_a_count_of_the_rest() {
        let c: Vec<AttrChange> = (0..12)
            .map(|i| AttrChange {
                path: format!("a{i}"),
                old: "(none)".into(),
                new: "1".into(),
            })
            .collect();
        let text = render(Op::Create, "user", "uid=z", None, None, &c);
        assert_eq!(text.lines().count(), 1 + MAX_ATTR_LINES + 1, "{text}");
        assert!(text.ends_with("    ... and 4 more\n"), "{text}");
    }

    #[test]
    fn a_predicted_failure_and_a_hold_are_named_on_the_object_line() {
        let text = render(
            Op::Create,
            "user",
            "uid=bob",
            None,
            Some("would fail: 409 userName `bob` is held by a resource idrelay does not own"),
            &[],
        );
        assert_eq!(
            text,
            "create user uid=bob: would fail: 409 userName `bob` is held by a resource idrelay does not own\n"
        );
        assert!(
            render(Op::Hold, "user", "uid=c", Some("9"), Some("why"), &[])
                .starts_with("hold user uid=c (id 9): why")
        );
    }
}
