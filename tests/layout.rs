//! The house rules of `src/` (docs/architecture.md, "What a folder may import"), held by a
//! test: every `crate::` path in the library's code (comments and doc comments aside) is
//! checked against the table below, and a forbidden one fails with the file, the line and
//! the rule it breaks. `main.rs` and `bin/` are separate crates and reach the library as
//! `idrelay::`; they are not checked here.

use std::fs;
use std::path::{Path, PathBuf};

/// Top-level files without a folder: small, and free of the crate's folders.
const LEAVES: [&str; 12] = [
    "args",
    "base64",
    "fnv",
    "logging",
    "privilege",
    "secret",
    "signals",
    "sorted_file",
    "state_dir",
    "status",
    "stdout",
    // `version_line` and the module list.
    "lib",
];

/// Where a file lives: a leaf, or the top-level folder it is in.
fn home(rel: &Path) -> Option<String> {
    let mut parts = rel.iter().map(|p| p.to_string_lossy().into_owned());
    let first = parts.next()?;
    if rel.components().count() == 1 {
        let stem = first.trim_end_matches(".rs").to_string();
        return Some(if LEAVES.contains(&stem.as_str()) {
            "leaf".into()
        } else {
            stem
        });
    }
    Some(first)
}

/// Whether code in `home` may name `path` (the text after `crate::`, e.g. `ldap::dn::split`).
/// On a refusal, the rule broken, in words.
fn allowed(home: &str, path: &str) -> Result<(), String> {
    let mut seg = path.split("::");
    let top = seg.next().unwrap_or_default();
    let second = seg.next().unwrap_or_default();
    let third = seg.next().unwrap_or_default();
    // `version_line` is the one item of `lib.rs` itself.
    let leaf = LEAVES.contains(&top) || top == "version_line";
    if top == home || (home == "leaf" && leaf) {
        return Ok(());
    }
    let ok = match home {
        // The leaves stand alone: only other leaves.
        "leaf" => leaf,
        // The queue stores opaque bytes; it opens its files through `state_dir`.
        "queue" => leaf,
        "ldap" | "net" => leaf,
        // SCIM as data and the provisioning client: the transport, and LDAP values and
        // pure text, never LDAP I/O.
        "scim" => {
            leaf || top == "net"
                || (top == "ldap"
                    && ["Entry", "entry", "dn", "filter", "DirectoryKind"].contains(&second))
        }
        // The engine: no relay, no hub, no app (it takes its own settings structs).
        "sync" => {
            leaf || ["queue", "ldap", "scim"].contains(&top)
                || (top == "net"
                    && (second == "backoff" || (second == "http" && third == "Method")))
        }
        // The agent's side of the link: everything below it.
        "relay" => leaf || ["queue", "ldap", "net", "scim", "sync"].contains(&top),
        // The hub speaks the relay protocol and nothing else of the agent; it may use the
        // outbound HTTP client (token introspection at an OAuth2 provider).
        "hub" => leaf || top == "net" || (top == "relay" && second == "protocol"),
        // The application knows everything.
        "app" => true,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(rule(home))
    }
}

/// The table's row for `home`, in words.
fn rule(home: &str) -> String {
    let may = match home {
        "leaf" => "other leaves only",
        "queue" => "leaves only",
        "ldap" | "net" => "leaves only",
        "scim" => {
            "leaves, net, and ldap's values and text (Entry, entry, dn, filter, DirectoryKind)"
        }
        "sync" => "leaves, queue, ldap, scim, net::backoff (and net::http::Method)",
        "relay" => "leaves, queue, ldap, net, scim, sync",
        "hub" => "leaves, net and relay::protocol",
        _ => "nothing of the crate (unknown folder: add it to docs/architecture.md and this test)",
    };
    format!("`{home}` may import {may}")
}

/// One forbidden import: where, what, and which rule.
#[derive(Debug)]
struct Breach {
    file: String,
    line: usize,
    path: String,
    rule: String,
}

/// The code of a line: what is left after a `//` comment (doc comments included). Strings
/// holding `//` are rare in `use` lines and paths; a false cut only hides a path, it never
/// invents one.
fn code(line: &str) -> &str {
    match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    }
}

/// Every `crate::a::b::c` in `text`, with its line number.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = code(line);
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            // `idrelay_crate::` or `$crate::` are not ours.
            let before = rest[..i].chars().last();
            let tail = &rest[i + "crate::".len()..];
            let len = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            if !matches!(before, Some(c) if c.is_ascii_alphanumeric() || c == '_' || c == '$') {
                let p = tail[..len].trim_end_matches(':');
                if !p.is_empty() {
                    out.push((n + 1, p.to_string()));
                }
            }
            rest = &tail[len..];
        }
    }
    out
}

/// The breaches in one file's text.
fn check_text(rel: &str, text: &str) -> Vec<Breach> {
    let Some(home) = home(Path::new(rel)) else {
        return Vec::new();
    };
    crate_paths(text)
        .into_iter()
        .filter_map(|(line, path)| {
            allowed(&home, &path).err().map(|rule| Breach {
                file: format!("src/{rel}"),
                line,
                path,
                rule,
            })
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_import_in_src_keeps_the_layout() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut breaches = Vec::new();
    let mut checked = 0;
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel.iter().next().unwrap().to_string_lossy();
        if top == "main.rs" || top == "bin" {
            continue;
        }
        checked += 1;
        let text = fs::read_to_string(f).unwrap();
        breaches.extend(check_text(&rel.to_string_lossy(), &text));
    }
    assert!(
        checked > 100,
        "only {checked} files found under {}",
        src.display()
    );
    let report: Vec<String> = breaches
        .iter()
        .map(|b| format!("{}:{}: `crate::{}`: {}", b.file, b.line, b.path, b.rule))
        .collect();
    assert!(
        report.is_empty(),
        "{} import(s) break docs/architecture.md's table:\n{}",
        report.len(),
        report.join("\n")
    );
}

#[test]
fn a_planted_forbidden_import_is_named_with_file_line_and_rule() {
    let text = "//! docs may cite crate::app::config freely\n\
                use crate::ldap::Entry;\n\
                use crate::sync::anchors::AnchorIndex;\n\
                fn f() { crate::app::config::load(); } // crate::relay too\n";
    let b = check_text("scim/planted.rs", text);
    let got: Vec<(usize, &str)> = b.iter().map(|b| (b.line, b.path.as_str())).collect();
    assert_eq!(
        got,
        [(3, "sync::anchors::AnchorIndex"), (4, "app::config::load")]
    );
    assert_eq!(b[0].file, "src/scim/planted.rs");
    assert!(
        b[0].rule.starts_with("`scim` may import leaves, net"),
        "{}",
        b[0].rule
    );
}

#[test]
fn the_rules_as_drawn() {
    let cases = [
        ("queue", "state_dir::open", true),
        ("queue", "sync::change::Change", false),
        ("ldap", "net::http::HttpClient", false),
        ("net", "scim::client::ScimClient", false),
        ("scim", "ldap::Directory", false),
        ("scim", "ldap::dn::split", true),
        ("sync", "relay::link::Relay", false),
        ("sync", "app::config::Config", false),
        ("sync", "net::backoff::Backoff", true),
        ("sync", "net::http::HttpClient", false),
        ("relay", "sync::follow::Feed", true),
        ("relay", "hub::server", false),
        ("hub", "relay::protocol::Envelope", true),
        ("hub", "relay::link::Relay", false),
        ("hub", "net::http::HttpClient", true),
        ("hub", "scim::oauth::Auth", false),
        ("leaf", "status::Document", true),
        ("leaf", "sync::anchors::AnchorIndex", false),
        ("app", "hub::main", true),
    ];
    for (home, path, ok) in cases {
        assert_eq!(allowed(home, path).is_ok(), ok, "{home} -> {path}");
    }
}
