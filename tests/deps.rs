//! Dependency hygiene without extra tools: the dependency tree (`cargo tree`) holds no
//! OpenSSL and no native-tls, in normal, build and dev dependencies alike. TLS is rustls
//! with ring only. (`deny.toml` states the same rule, and more, for `cargo deny`.)

use std::process::Command;

/// Crates that would bring OpenSSL (or the platform TLS stack) into the build.
const BANNED: [&str; 6] = [
    "openssl",
    "openssl-sys",
    "openssl-src",
    "native-tls",
    "tokio-native-tls",
    "hyper-tls",
];

/// `cargo tree` with `args`, one crate a line (`name vX.Y.Z ...`).
fn tree(args: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["tree", "--prefix", "none", "--offline"])
        .args(args)
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The crate names in a `cargo tree --prefix none` listing.
fn names(listing: &str) -> Vec<&str> {
    listing
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect()
}

#[test]
fn no_openssl_or_native_tls_in_the_tree() {
    for edges in ["normal", "build", "dev"] {
        let listing = tree(&["-e", edges, "--target", "all"]);
        let names = names(&listing);
        assert!(
            names.contains(&"idrelay"),
            "unexpected cargo tree output:\n{listing}"
        );
        for banned in BANNED {
            assert!(
                !names.contains(&banned),
                "`{banned}` is in the {edges} dependency tree; TLS must stay rustls (ring)"
            );
        }
    }
}

#[test]
fn tls_is_rustls_with_ring() {
    let listing = tree(&["-e", "normal"]);
    let names = names(&listing);
    for needed in ["rustls", "ring"] {
        assert!(
            names.contains(&needed),
            "`{needed}` is missing from the tree"
        );
    }
    assert!(
        !names.contains(&"aws-lc-rs") && !names.contains(&"aws-lc-sys"),
        "aws-lc (a C crypto library) crept in beside ring"
    );
}
