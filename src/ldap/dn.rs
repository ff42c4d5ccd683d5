//! Distinguished-name helpers for comparing DNs the way a directory does, enough for scope
//! checks and for resolving `member` / `manager` values to objects.
//!
//! Normalising lower-cases attribute types and values and drops the spaces around `,`, `=`
//! and `+` that some tools write; escaped characters (`\,`) stay escaped. This is not full
//! RFC 4514 canonicalisation (no hex-escape decoding), and need not be: both sides of every
//! comparison come from the same server, which writes a DN the same way each time.

/// Splits a DN into its RDNs at unescaped commas (values keep their escapes).
pub fn split_rdns(dn: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in dn.char_indices() {
        match c {
            '\\' if !escaped => {
                escaped = true;
                continue;
            }
            ',' | ';' if !escaped => {
                out.push(dn[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
        escaped = false;
    }
    let last = dn[start..].trim();
    if !last.is_empty() || !out.is_empty() {
        out.push(last);
    }
    out
}

/// The normalised form used as a map key: lower-case, no padding spaces.
pub fn normalize(dn: &str) -> String {
    // The common DN (ASCII, no escape, no `;`, no space) is its own normal form but for
    // case: one pass, one allocation (a full pass normalises several DNs an object).
    if dn.bytes().all(plain_byte) {
        return dn.to_ascii_lowercase();
    }
    normalize_parts(dn)
}

/// A byte [`normalize`] leaves as it is but for case: ASCII, not whitespace (that `trim`
/// would drop), not an escape, not `;` (written as `,`).
fn plain_byte(b: u8) -> bool {
    b.is_ascii() && !b.is_ascii_whitespace() && b != 0x0b && b != b'\\' && b != b';'
}

/// [`normalize`] RDN by RDN, value by value.
fn normalize_parts(dn: &str) -> String {
    let mut out = String::with_capacity(dn.len());
    for (i, rdn) in split_rdns(dn).into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, ava) in rdn.split('+').enumerate() {
            if j > 0 {
                out.push('+');
            }
            match ava.split_once('=') {
                Some((a, v)) => {
                    out.push_str(&a.trim().to_lowercase());
                    out.push('=');
                    out.push_str(&v.trim().to_lowercase());
                }
                None => out.push_str(&ava.trim().to_lowercase()),
            }
        }
    }
    out
}

/// Whether normalised `dn` equals normalised `base` or lies below it: its last RDNs are
/// `base`'s RDNs. The text before `base` must end at an RDN boundary, a comma that is not
/// escaped (`uid=svc\,ou=people,dc=x` is one RDN `uid=svc\,ou=people` under `dc=x`,
/// not an entry under `ou=people,dc=x`).
pub fn is_under(dn: &str, base: &str) -> bool {
    if dn == base {
        return true;
    }
    if base.is_empty() || dn.len() <= base.len() || !dn.ends_with(base) {
        return false;
    }
    let Some(before) = dn[..dn.len() - base.len()].strip_suffix(',') else {
        return false;
    };
    // An odd run of backslashes right before the comma escapes it.
    let backslashes = before.bytes().rev().take_while(|&b| b == b'\\').count();
    backslashes % 2 == 0
}

/// Whether `dn` (any spelling) equals or lies below one of `bases` (any spelling).
pub fn under_any<S: AsRef<str>>(dn: &str, bases: &[S]) -> bool {
    let n = normalize(dn);
    bases.iter().any(|b| is_under(&n, &normalize(b.as_ref())))
}

/// Escapes an RDN value (RFC 4514 §2.4) with the character escapes (`\,` `\+` `\"` `\\`
/// `\<` `\>` `\;` `\=`, a leading `#` or space, a trailing space; NUL as `\00`).
/// Not `ldap3::dn_escape`: that one writes `\2c` for the same characters, which every
/// server reads alike but which would change how the DNs writeback creates are spelled
/// (and logged, and compared by the tests and the operator's scripts) for no gain.
pub fn escape_rdn_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 4);
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn the_plain_dn_shortcut_gives_what_the_rdn_walk_gives(
            dn in "[a-zA-Z0-9=,+;\\\\ \t\u{b}\"#<>é-]{0,40}"
        ) {
            proptest::prop_assert_eq!(normalize(&dn), normalize_parts(&dn));
        }
    }

    #[test]
    fn the_plain_dn_shortcut_covers_the_edges() {
        for dn in ["", ",", "a=b,", "CN=A=B+UID=X,DC=Y", "cn=a,,dc=x", "=", "+"] {
            assert_eq!(normalize(dn), normalize_parts(dn), "{dn:?}");
        }
        assert_eq!(normalize("CN=Ann;DC=X"), "cn=ann,dc=x");
    }

    #[test]
    fn normalize_drops_case_and_padding_keeps_escapes() {
        assert_eq!(
            normalize("CN=Ann Lee, OU=Staff,DC=Branch ,dc=test"),
            "cn=ann lee,ou=staff,dc=branch,dc=test"
        );
        assert_eq!(normalize(r"cn=Lee\, Ann,dc=x"), r"cn=lee\, ann,dc=x");
        assert_eq!(split_rdns(r"cn=a\,b,dc=x").len(), 2);
        assert!(split_rdns("").is_empty());
    }

    #[test]
    fn under_means_suffix_at_an_rdn_boundary() {
        let base = normalize("dc=branch,dc=test");
        assert!(is_under(
            &normalize("uid=a,ou=people,dc=branch,dc=test"),
            &base
        ));
        assert!(is_under(&base, &base));
        assert!(!is_under(&normalize("dc=xbranch,dc=test"), &base));
        assert!(!is_under(&normalize("dc=test"), &base));
        assert!(under_any(
            "UID=a, OU=Staff,dc=branch,dc=test",
            &["ou=x,dc=branch,dc=test", "ou=staff,dc=branch,dc=test"]
        ));
        assert!(!under_any(
            "uid=a,ou=other,dc=branch,dc=test",
            &["ou=staff,dc=branch,dc=test"]
        ));
    }

    /// Regression: an escaped comma was taken for an RDN boundary, so an entry whose RDN
    /// value ends in `,ou=people` passed a scope check for `ou=people`.
    #[test]
    fn an_escaped_comma_is_not_an_rdn_boundary() {
        let people = "ou=people,dc=branch,dc=test";
        assert!(!under_any(
            r"uid=svc\,ou=people,dc=branch,dc=test",
            &[people]
        ));
        assert!(!under_any(
            r"uid=a\\\,ou=people,dc=branch,dc=test",
            &[people]
        ));
        // An escaped backslash before a real comma: that comma is a boundary.
        assert!(under_any(r"uid=a\\,ou=people,dc=branch,dc=test", &[people]));
        assert!(under_any(
            r"uid=lee\, ann,ou=people,dc=branch,dc=test",
            &[people]
        ));
        assert!(!is_under("uid=a,dc=x", ""));
    }

    fn rdn() -> impl proptest::strategy::Strategy<Value = String> {
        // Values with commas and backslashes, escaped as RFC 4514 writes them.
        proptest::string::string_regex(r"[a-c]{1,2}=([a-c,\\ ]){1,4}")
            .unwrap()
            .prop_map(|r| {
                let (a, v) = r.split_once('=').unwrap();
                let v = v.replace('\\', r"\\").replace(',', r"\,");
                format!("{a}={}", v.trim())
            })
            .prop_filter("non-empty value", |r| {
                !r.ends_with('=') && !r.ends_with('\\')
            })
    }

    use proptest::prelude::*;

    proptest! {
        /// is_under agrees with the definition on parsed RDNs: the last RDNs of dn are
        /// base's RDNs.
        #[test]
        fn is_under_agrees_with_parsed_rdns(
            dn in proptest::collection::vec(rdn(), 1..5),
            base in proptest::collection::vec(rdn(), 1..4),
            share in 0usize..4,
        ) {
            // Often make base a real suffix of dn.
            let base: Vec<String> = if share > 0 && share <= dn.len() {
                dn[dn.len() - share..].to_vec()
            } else {
                base
            };
            let (d, b) = (normalize(&dn.join(",")), normalize(&base.join(",")));
            let (dr, br) = (split_rdns(&d), split_rdns(&b));
            let expected = dr.len() >= br.len() && dr[dr.len() - br.len()..] == br[..];
            prop_assert_eq!(is_under(&d, &b), expected, "dn {} base {}", d, b);
            // One RDN whose value ends in the escaped text of base is never under base.
            let glued = normalize(&format!("{}\\,{}", dn[0], base.join(",")));
            prop_assert!(!is_under(&glued, &b), "dn {} base {}", glued, b);
        }
    }

    #[test]
    fn rdn_values_are_escaped() {
        assert_eq!(escape_rdn_value("a,b+c"), "a\\,b\\+c");
        assert_eq!(escape_rdn_value(" #x "), "\\ #x\\ ");
        assert_eq!(escape_rdn_value("#x"), "\\#x");
        assert_eq!(escape_rdn_value("a=b\\"), "a\\=b\\\\");
    }
}
