//! The stand-in for the cargo-fuzz targets in `fuzz/` that runs in a normal `cargo test`:
//! the same checks (`fuzz/harness.rs`) over arbitrary bytes, arbitrary strings and
//! input shaped like each format, plus every seed committed under `fuzz/seeds/` (inputs
//! that once found a bug). Cases per property: `PROPTEST_CASES` (default 256).

use proptest::prelude::*;

#[path = "../fuzz/harness.rs"]
mod harness;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Text that looks like a SCIM filter: names, operators, strings, parens, brackets.
fn filterish() -> impl Strategy<Value = String> {
    let word = prop_oneof![
        Just("userName".to_string()),
        Just("emails[type eq \"work\"]".to_string()),
        Just("name.familyName".to_string()),
        Just(
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber".to_string()
        ),
        Just("id".to_string()),
        Just("active".to_string()),
        Just("members".to_string()),
        Just("externalId".to_string()),
        "[a-zA-Z$][a-zA-Z0-9_.-]{0,8}",
        Just(" eq ".to_string()),
        Just(" ne ".to_string()),
        Just(" co ".to_string()),
        Just(" sw ".to_string()),
        Just(" gt ".to_string()),
        Just(" pr".to_string()),
        Just(" and ".to_string()),
        Just(" or ".to_string()),
        Just("not (".to_string()),
        Just("(".to_string()),
        Just(")".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just("true".to_string()),
        Just("null".to_string()),
        Just("42".to_string()),
        Just("1e5".to_string()),
        Just("\"AAAAAAAAAAAAAAAAAAAAAA==\"".to_string()),
        "\"[^\"\\\\]{0,8}\"",
        "\"(\\\\[\"\\\\/bfnrtu]|[ -~]){0,6}\"",
    ];
    prop::collection::vec(word, 0..24).prop_map(|v| v.concat())
}

/// Text that looks like TOML with the agent's and the profile's keys.
fn tomlish() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        Just("[agent]".to_string()),
        Just("[directory]".to_string()),
        Just("[scope]".to_string()),
        Just("[scim]".to_string()),
        Just("[sync]".to_string()),
        Just("[relay]".to_string()),
        Just("[user]".to_string()),
        Just("[group]".to_string()),
        Just("[user.attributes]".to_string()),
        Just("id = \"a1\"".to_string()),
        Just("state_dir = \"s\"".to_string()),
        Just("url = \"ldap://127.0.0.1:3389\"".to_string()),
        Just("url = \"https://h/v2\"".to_string()),
        Just("bind_dn = \"cn=x\"".to_string()),
        Just("password_file = \"p\"".to_string()),
        Just("password_env = \"P\"".to_string()),
        Just("token_file = \"t\"".to_string()),
        Just("base_dn = \"dc=x\"".to_string()),
        Just("include = [\"dc=x\"]".to_string()),
        Just("filter = \"(objectClass=person)\"".to_string()),
        Just("userName = \"uid\"".to_string()),
        Just("anchor = \"entryUUID\"".to_string()),
        Just("\"name.givenName\" = \"givenName\"".to_string()),
        Just("concurrency = 0".to_string()),
        Just("concurrency = 99999999999".to_string()),
        "[a-z_.]{1,12} = (\"[ -~]{0,10}\"|-?[0-9]{1,12}|true|\\[\\])",
    ];
    prop::collection::vec(line, 0..16).prop_map(|v| v.join("\n"))
}

/// A BER-ish DirSync value: SEQUENCE of INTEGER/BOOLEAN/OCTET STRING with fuzzed lengths.
fn berish() -> impl Strategy<Value = Vec<u8>> {
    let element = (
        prop::sample::select(vec![0x01u8, 0x02, 0x04, 0x30, 0x05]),
        prop::collection::vec(any::<u8>(), 0..12),
        any::<Option<u8>>(),
    )
        .prop_map(|(tag, content, len)| {
            let mut v = vec![tag, len.unwrap_or(content.len() as u8)];
            v.extend(content);
            v
        });
    (prop::collection::vec(element, 0..4), any::<Option<u8>>()).prop_map(|(els, len)| {
        let inner: Vec<u8> = els.concat();
        let mut v = vec![0x30];
        match len {
            Some(l) if l & 1 == 1 => v.push(l),
            _ if inner.len() < 128 => v.push(inner.len() as u8),
            _ => v.extend([0x81, inner.len() as u8]),
        }
        v.extend(inner);
        v
    })
}

/// A poll answer with fuzzed envelopes.
fn envelopeish() -> impl Strategy<Value = String> {
    let env = (
        "[ -~]{0,12}",
        prop::sample::select(vec!["scim", "command", "x"]),
        prop::sample::select(vec!["GET", "POST", "DELETE", "\u{0}"]),
        prop::sample::select(vec![
            "/Users",
            "/Users/../../etc/passwd",
            "/%2e%2e/%2e%2e",
            "http://evil.example/Users",
            "/Groups/x",
        ]),
        "[ -~]{0,30}",
    )
        .prop_map(|(id, kind, method, path, query)| {
            serde_json::json!({"id": id, "kind": kind, "method": method, "path": path,
                "query": query, "body": null})
            .to_string()
        });
    prop::collection::vec(env, 0..4).prop_map(|v| format!("{{\"requests\":[{}]}}", v.join(",")))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn scim_filter_arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..256)) {
        harness::scim_filter(&data);
    }

    #[test]
    fn scim_filter_arbitrary_text(s in any::<String>()) {
        harness::scim_filter(s.as_bytes());
    }

    #[test]
    fn scim_filter_filterish_text(s in filterish()) {
        harness::scim_filter(s.as_bytes());
    }

    #[test]
    fn relay_envelope_arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..256)) {
        harness::relay_envelope(&data);
    }

    #[test]
    fn relay_envelope_shaped(s in envelopeish()) {
        harness::relay_envelope(s.as_bytes());
    }

    #[test]
    fn config_arbitrary_text(s in any::<String>()) {
        harness::config(s.as_bytes());
    }

    #[test]
    fn config_tomlish(s in tomlish()) {
        harness::config(s.as_bytes());
    }

    #[test]
    fn profile_arbitrary_text(s in any::<String>()) {
        harness::profile(s.as_bytes());
    }

    #[test]
    fn profile_tomlish(s in tomlish()) {
        harness::profile(s.as_bytes());
    }

    #[test]
    fn dirsync_arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..64)) {
        harness::dirsync_control(&data);
    }

    #[test]
    fn dirsync_berish(data in berish()) {
        harness::dirsync_control(&data);
    }

    #[test]
    fn queue_arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..512)) {
        harness::queue(&data);
    }
}

/// A complete config that validates, so the fuzzed variants reach past the first key.
const VALID_CONFIG: &str = r#"[agent]
id = "a1"
state_dir = "state"

[directory]
url = "ldap://127.0.0.1:3389"
bind_dn = "cn=syncer,dc=branch,dc=test"
password_file = "ldap.secret"
base_dn = "dc=branch,dc=test"

[scope]
include = ["ou=people,dc=branch,dc=test"]

[scim]
url = "http://127.0.0.1:8080/v2"
token_file = "scim.token"
"#;

#[test]
fn the_valid_config_validates() {
    harness::config_accepts(VALID_CONFIG).unwrap();
}

proptest! {
    #![proptest_config(config())]

    /// One line of the valid config replaced or duplicated: every key's validation runs.
    #[test]
    fn config_mutated_lines(at in 0usize..20, line in "[a-z_]{1,12} = (\"[ -~]{0,16}\"|-?[0-9]{1,20}|true|\\[\"[ -~]{0,8}\"\\])", dup: bool) {
        let mut lines: Vec<String> = VALID_CONFIG.lines().map(String::from).collect();
        let at = at % lines.len();
        if dup {
            lines.insert(at, line);
        } else {
            lines[at] = line;
        }
        harness::config(lines.join("\n").as_bytes());
    }
}

/// Every committed seed (`fuzz/seeds/<target>/*`) runs through its target's checks.
#[test]
fn committed_seeds_pass() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    type Check = fn(&[u8]);
    let targets: [(&str, Check); 6] = [
        ("scim_filter", harness::scim_filter),
        ("relay_envelope", harness::relay_envelope),
        ("config", harness::config),
        ("profile", harness::profile),
        ("dirsync_control", harness::dirsync_control),
        ("queue", harness::queue),
    ];
    let mut n = 0;
    for (name, check) in targets {
        let Ok(dir) = std::fs::read_dir(root.join(name)) else {
            continue;
        };
        for f in dir {
            let p = f.unwrap().path();
            check(&std::fs::read(&p).unwrap());
            n += 1;
        }
    }
    eprintln!("{n} seeds replayed");
}
