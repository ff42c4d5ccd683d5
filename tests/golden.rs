//! Golden tests for the pure LDAP → SCIM mapping: real directory entries in, SCIM JSON out.
//!
//! Layout (see `tests/golden/README.md`): `tests/golden/<family>/` holds
//! `<case>.entry.json` (the LDAP entry), `<case>.scim.json` (the expected result), an
//! optional `<case>.profile.toml` (overrides applied to the family's default profile) and
//! one `resolver.json` per family (DN → SCIM id, or `"pending"`; a DN not listed is out of
//! scope). Families: `ad`, `openldap`, `generic`.
//!
//! The default run compares; `IDRELAY_BLESS=1 cargo test --test golden` rewrites every
//! `<case>.scim.json` from the current mapping (review the diff before committing it).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use idrelay::base64;
use idrelay::ldap::Entry;
use idrelay::scim::mapping::{anchor_of, map_entry, Reference, Resolver};
use idrelay::scim::profile::{ProfileKind, SyncProfile};
use serde::Deserialize;
use serde_json::{json, Value};

/// The input fixture: text values as strings, binary values as base64.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryFixture {
    /// Why the fixture differs from what the server returned, if it does.
    #[serde(default)]
    #[allow(dead_code)]
    comment: Option<String>,
    dn: String,
    #[serde(default)]
    attributes: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    binary: BTreeMap<String, Vec<String>>,
}

/// DN (compared case-insensitively) → SCIM id or `"pending"`.
struct TableResolver(BTreeMap<String, String>);

impl Resolver for TableResolver {
    fn resolve(&self, dn: &str) -> Reference {
        match self.0.get(&dn.to_lowercase()).map(String::as_str) {
            Some("pending") => Reference::Pending,
            Some(id) => Reference::Id(id.to_string()),
            None => Reference::OutOfScope,
        }
    }
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("golden")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn load_entry(path: &Path) -> Entry {
    let f: EntryFixture = serde_json::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{}: bad fixture: {e}", path.display()));
    let mut entry = Entry::new(f.dn);
    for (name, values) in f.attributes {
        for v in values {
            entry.add(&name, v);
        }
    }
    for (name, values) in f.binary {
        for v in values {
            let raw = base64::decode(&v)
                .unwrap_or_else(|e| panic!("{}: binary {name}: {e}", path.display()));
            entry.add(&name, raw);
        }
    }
    entry
}

fn load_resolver(dir: &Path) -> TableResolver {
    let path = dir.join("resolver.json");
    let table: BTreeMap<String, String> =
        serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    TableResolver(
        table
            .into_iter()
            .map(|(dn, id)| (dn.to_lowercase(), id))
            .collect(),
    )
}

/// Maps one case into the shape of `<case>.scim.json`, checking the invariants on the way.
fn run_case(entry: &Entry, profile: &SyncProfile, resolver: &TableResolver) -> Value {
    let Some(kind) = profile.classify(entry) else {
        return json!({ "error": "neither a user nor a group under this profile" });
    };
    match map_entry(entry, kind, profile, resolver) {
        Ok(mapped) => {
            let again = map_entry(entry, kind, profile, resolver).expect("second mapping");
            assert_eq!(
                serde_json::to_string(&mapped.resource).unwrap(),
                serde_json::to_string(&again.resource).unwrap(),
                "{}: mapping is not deterministic",
                entry.dn
            );
            assert_eq!(mapped.resource["externalId"], json!(mapped.external_id));
            assert_eq!(
                anchor_of(entry, kind, profile).unwrap(),
                mapped.external_id,
                "{}: anchor_of disagrees with map_entry",
                entry.dn
            );
            assert!(
                !has_null(&mapped.resource),
                "{}: body holds a null",
                entry.dn
            );
            json!({
                "kind": kind.word(),
                "pending": mapped.pending,
                "resource": mapped.resource,
            })
        }
        Err(e) => json!({ "kind": kind.word(), "error": e.to_string() }),
    }
}

fn has_null(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.iter().any(has_null),
        Value::Object(o) => o.values().any(has_null),
        _ => false,
    }
}

#[test]
fn golden_files() {
    let bless = std::env::var("IDRELAY_BLESS").is_ok_and(|v| v == "1");
    let mut failures = Vec::new();
    let mut cases = 0;
    for (family, kind) in [
        ("ad", ProfileKind::ActiveDirectory),
        ("openldap", ProfileKind::OpenLdap),
        ("generic", ProfileKind::Generic),
    ] {
        let dir = golden_dir().join(family);
        let resolver = load_resolver(&dir);
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in &names {
            // Every file belongs to a case that has an input.
            let case = [".entry.json", ".scim.json", ".profile.toml"]
                .iter()
                .find_map(|s| name.strip_suffix(s));
            match case {
                Some(c) if names.contains(&format!("{c}.entry.json")) => {}
                _ if name == "resolver.json" => {}
                _ => failures.push(format!(
                    "{family}/{name}: stray file (no matching .entry.json)"
                )),
            }
        }
        for name in &names {
            let Some(case) = name.strip_suffix(".entry.json") else {
                continue;
            };
            cases += 1;
            let entry = load_entry(&dir.join(name));
            let mut profile = SyncProfile::default_for(kind);
            let overrides = dir.join(format!("{case}.profile.toml"));
            if overrides.exists() {
                profile = profile
                    .with_overrides_from_file(&overrides)
                    .unwrap_or_else(|e| panic!("{family}/{case}: {e}"));
            }
            let actual = run_case(&entry, &profile, &resolver);
            let expected_path = dir.join(format!("{case}.scim.json"));
            let pretty = serde_json::to_string_pretty(&actual).unwrap() + "\n";
            if bless {
                fs::write(&expected_path, pretty)
                    .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
                continue;
            }
            if !expected_path.exists() {
                failures.push(format!(
                    "{family}/{case}: no {case}.scim.json (run with IDRELAY_BLESS=1 to create it); got:\n{pretty}"
                ));
                continue;
            }
            let expected: Value = serde_json::from_str(&read(&expected_path))
                .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
            if expected != actual {
                failures.push(format!(
                    "{family}/{case}: mapping differs from {case}.scim.json\n--- expected\n{}\n--- actual\n{pretty}",
                    serde_json::to_string_pretty(&expected).unwrap()
                ));
            }
        }
    }
    assert!(cases >= 15, "only {cases} golden cases found");
    assert!(
        failures.is_empty(),
        "{} golden failure(s) (IDRELAY_BLESS=1 rewrites the expected files):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
