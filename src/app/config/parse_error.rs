//! A TOML or shape error of the config file, said in the operator's words: which table and
//! key (as written in the file, with the line), and what is allowed, instead of serde's
//! "expected usize" or "expected a sequence" and of the table *before* the one at fault.
//!
//! Pure: the file's text, where the parser pointed, and its message in; the line, the
//! table and the message out. It never quotes a value the file holds as text (a value in
//! the wrong key may be a secret pasted in the wrong place); numbers and the key names are
//! shown.

/// Where an error is, and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Explained {
    /// 1-based line, when the parser pointed somewhere.
    pub line: Option<usize>,
    /// The `[table]` the error is in, as written (`None`: at the top, or the table itself
    /// is the error).
    pub table: Option<String>,
    /// What is wrong, and what is allowed.
    pub message: String,
}

/// Keys whose value is a list of DNs.
const DN_LISTS: &[&str] = &["scope.include", "writeback.allowed_ous"];
/// Keys whose value is one DN.
const DNS: &[&str] = &[
    "directory.bind_dn",
    "directory.base_dn",
    "writeback.create_in",
];

/// Explains the parser's `message` about `text` at the bytes `span` (`0..0`: the document
/// itself, e.g. a whole table missing).
pub(super) fn explain(
    text: &str,
    span: Option<std::ops::Range<usize>>,
    message: &str,
) -> Explained {
    let at = span.filter(|s| s.end > 0).map(|s| s.start);
    // toml puts a syntax error's detail on a second line.
    let message = message.trim().replace('\n', "; ");
    let message = message.as_str();
    let Some(at) = at else {
        return Explained {
            line: None,
            table: None,
            message: top_level(message).unwrap_or_else(|| message.to_string()),
        };
    };
    let at = at.min(text.len());
    let line_no = text[..at].matches('\n').count() + 1;
    let lines: Vec<&str> = text.lines().collect();
    let here = lines.get(line_no - 1).map_or("", |l| l.trim());
    let header_of = |l: &str| {
        let l = strip_comment(l).trim();
        (l.starts_with('[') && l.ends_with(']') && !l.starts_with("[["))
            .then(|| l.trim_matches(['[', ']']).trim().to_string())
    };
    // The table the line belongs to: the nearest header above it.
    let enclosing = lines[..line_no - 1].iter().rev().find_map(|l| header_of(l));
    let located = |table: Option<String>, message: String| Explained {
        line: Some(line_no),
        table,
        message,
    };
    if let Some(header) = header_of(here) {
        // The parser points at a table header: the table itself is at fault.
        if let Some(field) = quoted_after(message, "unknown field ") {
            let allowed = allowed_fields(message);
            // The unknown name may be any part of a dotted header (`[user.attributes]` with
            // no table `user` at all): the table named is the header up to that part.
            let parts: Vec<&str> = header.split('.').map(str::trim).collect();
            let at = parts
                .iter()
                .position(|p| p.trim_matches('"') == field)
                .unwrap_or(parts.len().saturating_sub(1));
            let unknown = parts[..=at].join(".");
            let text = if at == 0 {
                format!(
                    "unknown table [{unknown}]: the tables are {}",
                    allowed
                        .iter()
                        .map(|t| format!("[{t}]"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                format!(
                    "unknown table [{unknown}]: [{}] takes the keys {}",
                    parts[..at].join("."),
                    allowed.join(", ")
                )
            };
            return located(None, text);
        }
        if let Some(field) = quoted_after(message, "missing field ") {
            return located(
                Some(header.clone()),
                format!("`{header}.{field}` is required but missing"),
            );
        }
        return located(Some(header), message.to_string());
    }
    if here.starts_with('[') {
        // A broken header (`[sync`): not in the table above it.
        return located(None, message.to_string());
    }
    // A key line (or a line inside a value that spans lines: its key is above).
    let key_line = lines[..line_no]
        .iter()
        .rev()
        .take_while(|l| !l.trim_start().starts_with('['))
        .find_map(|l| written_key(l));
    let Some(key) = key_line else {
        if enclosing.is_none() {
            if let Some(m) = top_level(message) {
                // A whole table is missing: it has no line.
                return Explained {
                    line: None,
                    table: None,
                    message: m,
                };
            }
        }
        return located(enclosing, message.to_string());
    };
    let dotted = match &enclosing {
        Some(t) => format!("{t}.{key}"),
        None => key.clone(),
    };
    if quoted_after(message, "unknown field ").is_some() {
        let allowed = allowed_fields(message);
        let text = match &enclosing {
            Some(t) => format!("unknown key `{key}`: [{t}] takes {}", allowed.join(", ")),
            None => format!(
                "unknown key `{key}` above the first table: keys belong in one of {}",
                allowed
                    .iter()
                    .map(|t| format!("[{t}]"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        return located(enclosing, text);
    }
    if let Some(rest) = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
    {
        if let Some((found, expected)) = rest.rsplit_once(", expected ") {
            let want = wanted(&dotted, expected, found);
            return located(
                enclosing,
                format!("`{dotted}` must be {want}, not {}", found_words(found)),
            );
        }
    }
    if let Some(field) = quoted_after(message, "missing field ") {
        return located(
            enclosing,
            format!("`{dotted}` is missing its key `{field}`"),
        );
    }
    if message.contains("too large") {
        return located(enclosing, format!("`{dotted}` is too large ({message})"));
    }
    if message.starts_with("duplicate key") {
        return located(enclosing, format!("`{dotted}` is set twice"));
    }
    located(enclosing, format!("`{dotted}`: {message}"))
}

/// An error without a place: a whole table missing at the top.
fn top_level(message: &str) -> Option<String> {
    quoted_after(message, "missing field ").map(|t| format!("the table [{t}] is missing"))
}

/// What the key is meant to hold, in words.
fn wanted(key: &str, expected: &str, found: &str) -> String {
    let e = expected.trim();
    if DN_LISTS.contains(&key) {
        return "a list of DNs, each in quotes (`[\"ou=people,dc=example,dc=org\"]`)".into();
    }
    if DNS.contains(&key) {
        return "a DN in quotes".into();
    }
    let unsigned_max = match e {
        "u8" => Some(u8::MAX as u64),
        "u16" => Some(u16::MAX as u64),
        "u32" => Some(u32::MAX as u64),
        "u64" | "usize" => Some(u64::MAX),
        _ => None,
    };
    if let Some(max) = unsigned_max {
        let negative = found.contains("`-");
        return if negative {
            "a whole number, 0 or more".into()
        } else if found.starts_with("integer") && max < u64::MAX {
            format!("a whole number from 0 to {max}")
        } else {
            "a whole number".into()
        };
    }
    match e {
        "i8" | "i16" | "i32" | "i64" | "isize" | "an integer" => "a whole number".into(),
        "f32" | "f64" | "a float" => "a number".into(),
        "a boolean" => "true or false".into(),
        "a string" | "a borrowed string" => {
            if found.starts_with("sequence") {
                "one value in quotes, not a list".into()
            } else {
                "text in quotes".into()
            }
        }
        "a sequence" => "a list (`[\"...\", \"...\"]`)".into(),
        _ if e.starts_with("struct ") || e == "a map" => "a table".into(),
        _ => e.to_string(),
    }
}

/// What the file holds instead, in words (text is never quoted: see the module doc).
fn found_words(found: &str) -> String {
    let value = |f: &str| {
        f.split_once('`')
            .and_then(|(_, rest)| rest.rsplit_once('`'))
            .map(|(v, _)| v.to_string())
    };
    if found.starts_with("string") {
        "text".into()
    } else if found.starts_with("integer") {
        value(found).unwrap_or_else(|| "a whole number".into())
    } else if found.starts_with("floating point") {
        value(found).unwrap_or_else(|| "a decimal number".into())
    } else if found.starts_with("boolean") {
        value(found).unwrap_or_else(|| "true or false".into())
    } else if found.starts_with("sequence") {
        "a list".into()
    } else if found.starts_with("map") {
        "a table".into()
    } else {
        found.to_string()
    }
}

/// The names in `` `a`, `b` `` after "expected" in serde's unknown-field message.
fn allowed_fields(message: &str) -> Vec<String> {
    let Some((_, list)) = message.split_once("expected ") else {
        return Vec::new();
    };
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The first `` `name` `` after `prefix` at the start of `message`.
fn quoted_after(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?;
    let rest = rest.strip_prefix('`')?;
    rest.split_once('`').map(|(n, _)| n.to_string())
}

/// The key a `key = value` line writes (dotted keys as written, quotes kept off).
fn written_key(line: &str) -> Option<String> {
    let l = strip_comment(line).trim();
    if l.starts_with('[') {
        return None;
    }
    let (key, _) = l.split_once('=')?;
    let key = key.trim();
    (!key.is_empty() && !key.contains(['"', '\'', '{', ' '])).then(|| key.to_string())
}

/// The line without a trailing `# comment` (a `#` inside quotes is kept).
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    for (i, c) in line.char_indices() {
        match (c, quote) {
            ('"' | '\'', None) => quote = Some(c),
            (c, Some(q)) if c == q => quote = None,
            ('#', None) => return &line[..i],
            _ => {}
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::super::tests::{secrets, GOOD};
    use super::*;
    use std::path::Path;

    /// The whole message `idrelay` prints for a config file, for `text`.
    fn error_of(text: &str) -> String {
        crate::app::config::Config::parse(Path::new("idrelay.toml"), text, &secrets())
            .map(|_| ())
            .unwrap_err()
            .to_string()
    }

    const TABLES: &str =
        "[agent], [directory], [scope], [scim], [sync], [queue], [relay], [writeback]";

    /// Regression (issue 20): a missing `url` in [scim] was reported "in [scope]", an
    /// unknown `[synk]` "in [scim]", type errors as "expected usize" / "expected a
    /// sequence". Each bad config, the exact message.
    #[test]
    fn each_bad_config_names_its_table_key_and_line_in_words() {
        let g = GOOD;
        let cases: Vec<(String, String)> = vec![
            (
                g.replace("[scim]\nurl = \"http://127.0.0.1:8080/v2/\"\n", "[scim]\n"),
                "line 12, in [scim]: `scim.url` is required but missing".into(),
            ),
            (
                format!("{g}[synk]\nconcurrency = 2\n"),
                format!("line 15: unknown table [synk]: the tables are {TABLES}"),
            ),
            (
                g.replace("[directory]", "[directroy]"),
                format!("line 5: unknown table [directroy]: the tables are {TABLES}"),
            ),
            (
                format!("{g}[scope.x]\na = 1\n"),
                "line 15: unknown table [scope.x]: [scope] takes the keys include, user_filter, group_filter, groups, nested".into(),
            ),
            (
                format!("{g}[sync]\nconcurrency = \"four\"\n"),
                "line 16, in [sync]: `sync.concurrency` must be a whole number, not text".into(),
            ),
            (
                format!("{g}[sync]\nconcurrency = -1\n"),
                "line 16, in [sync]: `sync.concurrency` must be a whole number, 0 or more, not -1".into(),
            ),
            (
                format!("{g}[sync]\ndelete_threshold = 1.5 # per hour\n"),
                "line 16, in [sync]: `sync.delete_threshold` must be a whole number, not 1.5".into(),
            ),
            (
                format!("{g}[sync]\nsoft_match = \"yes\"\n"),
                "line 16, in [sync]: `sync.soft_match` must be true or false, not text".into(),
            ),
            (
                g.replace(
                    "include = [\"ou=Staff, DC=Branch,dc=test\"]",
                    "include = \"ou=Staff,dc=Branch,dc=test\"",
                ),
                "line 11, in [scope]: `scope.include` must be a list of DNs, each in quotes (`[\"ou=people,dc=example,dc=org\"]`), not text".into(),
            ),
            (
                format!("{g}[writeback]\nresources = [\"groups\"]\nallowed_ous = [\n  1,\n]\n"),
                "line 18, in [writeback]: `writeback.allowed_ous` must be a list of DNs, each in quotes (`[\"ou=people,dc=example,dc=org\"]`), not 1".into(),
            ),
            (
                format!("{g}[writeback]\nresources = \"groups\"\n"),
                "line 16, in [writeback]: `writeback.resources` must be a list (`[\"...\", \"...\"]`), not text".into(),
            ),
            (
                g.replace("[agent]\n", "[agent]\nfoo = 1\n"),
                "line 3, in [agent]: unknown key `foo`: [agent] takes id, state_dir".into(),
            ),
            (
                format!("{g}sync.concurrency = 2\n"),
                "line 15, in [scim]: unknown key `sync.concurrency`: [scim] takes url, token_file, token_env, token_url, client_id, client_secret_file, client_secret_env, scope, client_auth, ca_file, proxy, proxy_user, proxy_password_file, proxy_password_env, no_proxy, pin_sha256, client_cert_file, client_key_file, timeout_secs, allow_plaintext".into(),
            ),
            (
                format!("top = 1\n{g}"),
                format!("line 1: unknown key `top` above the first table: keys belong in one of {TABLES}"),
            ),
            (
                format!("{g}[sync]\nconcurrency = 2\nconcurrency = 3\n"),
                "line 17, in [sync]: `sync.concurrency` is set twice".into(),
            ),
            (
                format!("{g}[sync\n"),
                "line 15: invalid table header; expected `.`, `]`".into(),
            ),
            (
                g.replace("[agent]\nid = \"branch-01\"\nstate_dir = \"/var/lib/idrelay\"\n", ""),
                "the table [agent] is missing".into(),
            ),
        ];
        for (text, want) in cases {
            let got = error_of(&text);
            let got = got.strip_prefix("config idrelay.toml").unwrap_or(&got);
            let got = got
                .strip_prefix(", ")
                .or_else(|| got.strip_prefix(": "))
                .unwrap_or(got);
            assert_eq!(got, want, "for:\n{text}");
        }
    }

    /// Found by the fuzz stand-in: a dotted header whose first part is the unknown table
    /// (`[user.attributes]`, which belongs in the profile file) tripped an assertion.
    #[test]
    fn an_unknown_table_in_a_dotted_header_is_named_by_its_unknown_part() {
        let e = error_of(&format!("{GOOD}[user.attributes]\ntitle = \"title\"\n"));
        assert!(
            e.contains("unknown table [user]: the tables are [agent]"),
            "{e}"
        );
        let e = error_of(&format!("{GOOD}[sync.extra]\nx = 1\n"));
        assert!(
            e.contains("unknown table [sync.extra]: [sync] takes the keys"),
            "{e}"
        );
    }

    #[test]
    fn a_value_given_as_text_is_never_quoted() {
        let e = error_of(&format!("{GOOD}[sync]\nconcurrency = \"hunter2\"\n"));
        assert!(!e.contains("hunter2"), "{e}");
        let e = error_of(&format!("{GOOD}[sync]\ntoken = \"hunter2\"\n"));
        assert!(
            !e.contains("hunter2") && e.contains("unknown key `token`"),
            "{e}"
        );
    }

    #[test]
    fn the_words_for_what_a_key_holds() {
        assert_eq!(
            wanted("x.n", "u8", "integer `300`"),
            "a whole number from 0 to 255"
        );
        assert_eq!(
            wanted("x.n", "u64", "integer `-3`"),
            "a whole number, 0 or more"
        );
        assert_eq!(wanted("x.b", "a boolean", "string \"y\""), "true or false");
        assert_eq!(
            wanted("directory.base_dn", "a string", "integer `1`"),
            "a DN in quotes"
        );
        assert_eq!(
            wanted("x.s", "a string", "sequence"),
            "one value in quotes, not a list"
        );
        assert_eq!(wanted("x.t", "struct RawQueue", "integer `1`"), "a table");
        assert_eq!(found_words("boolean `true`"), "true");
        assert_eq!(found_words("map"), "a table");
        assert_eq!(strip_comment("a = \"x # y\" # z"), "a = \"x # y\" ");
        assert_eq!(
            written_key("  scope.include = [ # DNs"),
            Some("scope.include".into())
        );
        assert_eq!(written_key("[sync]"), None);
    }

    #[test]
    fn an_error_without_a_place_is_passed_on() {
        let x = explain("a = 1", Some(0..0), "some other problem");
        assert_eq!(
            x,
            Explained {
                line: None,
                table: None,
                message: "some other problem".into()
            }
        );
    }
}
