//! The checks behind every fuzz target in `fuzz/fuzz_targets/` and their proptest stand-in
//! (`tests/fuzz_standin.rs`, which includes this file with `#[path]`): one function per
//! parser the agent owns, taking arbitrary bytes. Each function panics only when an
//! invariant breaks; a parser refusing the input is fine.
//!
//! Invariants checked, besides "no panic, no hang":
//! * SCIM filter: what parses prints to text that parses to the same filter (a fixed
//!   point); a translation against the real AD and OpenLDAP attribute maps is one
//!   parenthesised LDAP filter within the documented size limit.
//! * relay envelopes and leases: at most 1000 envelopes; a lease TTL of at most an hour;
//!   the facade's query parser caps `count`.
//! * config: an error never repeats the secret the secret source handed out.
//! * mapping profile: overrides either apply or name an error; pushed by the cloud, they
//!   are admitted (never reading a password-like attribute) or refused with a reason.
//! * DirSync control codec: what decodes re-encodes to a value that decodes the same.
//! * queue segments, records and ledger: the queue's own entry points
//!   (`idrelay::queue::fuzzing`).
#![allow(dead_code)]

use std::path::Path;

use idrelay::app::config::{Config, SecretSource};
use idrelay::ldap::{decode_request, decode_response, encode_request, encode_response};
use idrelay::relay::facade::{attribute_map, parse_query, MAX_COUNT};
use idrelay::relay::link::{parse_lease, parse_requests, valid_id};
use idrelay::scim::filter::{self, MAX_LDAP_LEN};
use idrelay::scim::profile::{ProfileKind, SyncProfile};
use idrelay::scim::profile_policy::{admit, password_like_in, ProfilePolicy};
use idrelay::scim::ResourceKind;

/// The secret every fuzzed config is handed (files and environment alike).
pub const FUZZ_SECRET: &str = "fuzz-secret-3f9c1e7d";

/// SCIM filter text: parse, print, re-parse, translate.
pub fn scim_filter(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(f) = filter::parse(text) else {
        return;
    };
    let printed = f.to_string();
    let again = filter::parse(&printed)
        .unwrap_or_else(|e| panic!("`{text}` printed as `{printed}`, which does not parse: {e}"));
    assert_eq!(again.to_string(), printed, "printing is not a fixed point");
    for kind in [ProfileKind::ActiveDirectory, ProfileKind::OpenLdap] {
        let profile = SyncProfile::default_for(kind);
        for rk in [ResourceKind::User, ResourceKind::Group] {
            if let Ok(ldap) = filter::to_ldap(&f, &attribute_map(&profile, rk)) {
                assert!(
                    ldap.len() <= MAX_LDAP_LEN,
                    "LDAP filter of {} bytes",
                    ldap.len()
                );
                assert!(
                    balanced(&ldap),
                    "`{text}` translated to unbalanced `{ldap}`"
                );
            }
        }
    }
}

/// One parenthesised filter whose parentheses balance (escaped ones are `\28`/`\29`).
fn balanced(f: &str) -> bool {
    let b = f.as_bytes();
    if b.first() != Some(&b'(') || b.last() != Some(&b')') {
        return false;
    }
    let mut depth = 0i64;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth < 0 || (depth == 0 && i + 1 != b.len()) {
                    return false;
                }
            }
            _ => {}
        }
    }
    depth == 0
}

/// A relay poll answer, a heartbeat answer, and the query of every SCIM envelope.
pub fn relay_envelope(data: &[u8]) {
    if let Ok(envelopes) = parse_requests(data) {
        assert!(envelopes.len() <= 1000);
        for e in &envelopes {
            let _ = valid_id(&e.id);
            if let Some(q) = &e.query {
                if let Ok(q) = parse_query(q) {
                    assert!(q.count <= MAX_COUNT);
                    assert!(q.start_index >= 1);
                }
            }
        }
    }
    if let Some((_, ttl)) = parse_lease(data) {
        assert!(ttl.as_secs() <= 3600);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(q) = parse_query(text) {
            assert!(q.count <= MAX_COUNT);
        }
    }
}

/// Secrets for fuzzed configs: every file and variable holds [`FUZZ_SECRET`].
struct FixedSecrets;

impl SecretSource for FixedSecrets {
    fn read_file(&self, _path: &Path) -> std::io::Result<String> {
        Ok(FUZZ_SECRET.to_string())
    }
    fn var(&self, _name: &str) -> Option<String> {
        Some(FUZZ_SECRET.to_string())
    }
}

/// Config TOML: validated or refused, and a refusal never quotes the secret.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Config::parse(Path::new("fuzz.toml"), text, &FixedSecrets) {
        let msg = e.to_string();
        assert!(!msg.is_empty());
        if !text.contains(FUZZ_SECRET) {
            assert!(
                !msg.contains(FUZZ_SECRET),
                "config error leaks the secret: {msg}"
            );
        }
    }
}

/// Whether `text` validates as a config (with every secret [`FUZZ_SECRET`]).
pub fn config_accepts(text: &str) -> Result<(), String> {
    Config::parse(Path::new("fuzz.toml"), text, &FixedSecrets)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Mapping-profile overrides on each default profile.
pub fn profile(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for kind in [
        ProfileKind::ActiveDirectory,
        ProfileKind::OpenLdap,
        ProfileKind::Generic,
    ] {
        match SyncProfile::default_for(kind).with_overrides(text) {
            Ok(p) => {
                for rk in [ResourceKind::User, ResourceKind::Group] {
                    let _ = p.ldap_attributes(rk);
                    let _ = attribute_map(&p, rk);
                }
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
        // The same text pushed by the cloud: admitted profiles never read a password.
        let policy = ProfilePolicy {
            accept: true,
            extra_attributes: vec!["description".into()],
        };
        match admit(&policy, &SyncProfile::default_for(kind), text) {
            Ok(p) => assert_eq!(password_like_in(&p), None, "admitted: {text:?}"),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}

/// DirSync request and response control values.
pub fn dirsync_control(data: &[u8]) {
    if let Ok(r) = decode_request(data) {
        let again = decode_request(&encode_request(r.flags, r.max_bytes, &r.cookie))
            .expect("a re-encoded request decodes");
        assert_eq!(again, r);
    }
    if let Ok(r) = decode_response(data) {
        let again = decode_response(&encode_response(r.more, &r.cookie))
            .expect("a re-encoded response decodes");
        assert_eq!(again, r);
    }
}

/// Queue segment files, single records and ledgers.
pub fn queue(data: &[u8]) {
    idrelay::queue::fuzzing::segment_and_record(data);
    idrelay::queue::fuzzing::ledger(data);
}
