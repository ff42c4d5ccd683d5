//! LDAP filter text (RFC 4515), pure: escaping of assertion values and the one validator.
//!
//! Every filter the agent sends is checked by the same parser that encodes it on the wire:
//! ldap3's (`ldap3::parse_filter`), which refuses what it cannot encode. [`check`] runs it
//! on the filters of the config file, of a sync profile (a local file or one the cloud
//! pushes) and on what the SCIM filter translation produced, so a filter the search would
//! refuse fails when it is loaded, naming the key, and not at the first pass.
//!
//! Escaping is ldap3's `ldap_escape` (`*` `(` `)` `\` NUL as `\2a` `\28` `\29` `\5c`
//! `\00`; everything else, UTF-8 included, as it is); binary values (a GUID) are written
//! as `\xx` for every byte.

/// Checks one filter as the directory search will take it: enclosed in parentheses, the
/// parentheses balanced, and parsed whole by ldap3. The error says what is wrong in words.
pub fn check(filter: &str) -> Result<(), String> {
    let t = filter.trim();
    if !t.starts_with('(') || !t.ends_with(')') {
        return Err(format!(
            "`{t}` is not an LDAP filter: it must be enclosed in parentheses, e.g. (objectClass=user)"
        ));
    }
    if !balanced(t) {
        return Err(format!(
            "`{t}` has unbalanced parentheses (write a literal parenthesis in a value as \\28 or \\29)"
        ));
    }
    if ldap3::parse_filter(t).is_err() {
        return Err(format!(
            "`{t}` is not a valid LDAP filter (RFC 4515): one parenthesised filter such as \
             (objectClass=user) or (&(a=b)(c=d)); write a literal `*`, `(`, `)` or `\\` in a \
             value as \\2a, \\28, \\29, \\5c"
        ));
    }
    Ok(())
}

/// Whether the parentheses balance and close only at the end (`(a=b)(c=d)` does not: two
/// filters side by side are not one filter). Escapes are `\xx` in RFC 4515, so a
/// parenthesis is never escaped by a backslash.
fn balanced(t: &str) -> bool {
    let mut depth = 0i64;
    for (i, c) in t.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 || (depth == 0 && i + 1 != t.len()) {
                    return false;
                }
            }
            _ => {}
        }
    }
    depth == 0
}

/// RFC 4515 escaping of a text assertion value.
pub fn escape_value(value: &str) -> String {
    ldap3::ldap_escape(value).into_owned()
}

/// Every byte as `\xx` (binary assertion values such as a GUID).
pub fn escape_octets(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        out.push('\\');
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_filters_pass() {
        for f in [
            "(objectClass=user)",
            " (objectClass=*) ",
            "(&(objectClass=inetOrgPerson)(!(ou=former)))",
            "(|(cn=a\\2a)(cn=b\\28c\\29))",
            "(memberOf:1.2.840.113556.1.4.1941:=cn=x,dc=y)",
            "(cn>=m)",
            // RFC 4526 absolute true.
            "(&)",
        ] {
            assert_eq!(check(f), Ok(()), "{f}");
        }
    }

    #[test]
    fn what_the_search_would_refuse_fails_here_with_the_reason() {
        let cases = [
            ("objectClass=user", "enclosed in parentheses"),
            ("(cn=a", "enclosed in parentheses"),
            ("((cn=a)", "unbalanced"),
            ("(cn=a))(x)", "unbalanced"),
            // Two filters side by side: the old light check let this through.
            ("(a=b)(c=d)", "unbalanced"),
            ("(cn)", "not a valid LDAP filter"),
            ("(=x)", "not a valid LDAP filter"),
            ("(cn=a\\zz)", "not a valid LDAP filter"),
        ];
        for (f, want) in cases {
            let e = check(f).expect_err(f);
            assert!(e.contains(want), "{f}: {e}");
        }
    }

    #[test]
    fn values_are_escaped_as_rfc_4515_says() {
        assert_eq!(escape_value("a*(b)\\c\0"), "a\\2a\\28b\\29\\5cc\\00");
        assert_eq!(escape_value("Zoë"), "Zoë");
        assert_eq!(escape_octets(&[0, 0xab, 0x10]), "\\00\\ab\\10");
    }
}
