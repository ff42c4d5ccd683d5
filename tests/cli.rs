//! The command-line contract: help, version, usage errors and their exit codes.

mod common;

use common::run_binary;

#[test]
fn version_and_help() {
    let v = run_binary(&["version"]);
    v.assert_code(0);
    assert!(v.stdout.starts_with("idrelay "), "{}", v.stdout);
    assert_eq!(run_binary(&["--version"]).stdout, v.stdout);
    let h = run_binary(&["--help"]);
    h.assert_code(0);
    for c in ["check", "sync --once", "preview DN", "version"] {
        assert!(h.stdout.contains(c), "{c}: {}", h.stdout);
    }
    for c in ["check", "sync", "preview", "version"] {
        let r = run_binary(&[c, "--help"]);
        r.assert_code(0);
        assert!(r.stdout.starts_with("Usage: idrelay"), "{}", r.stdout);
    }
}

#[test]
fn usage_errors_exit_2_and_say_what_is_wrong() {
    let r = run_binary(&["sync"]);
    r.assert_code(2);
    assert!(r.stderr.contains("--once"), "{}", r.stderr);
    let r = run_binary(&["check"]);
    r.assert_code(2);
    assert!(r.stderr.contains("--config"), "{}", r.stderr);
    let r = run_binary(&["--config", "/nonexistent/idrelay.toml", "check"]);
    r.assert_code(2);
    assert!(
        r.stderr.contains("/nonexistent/idrelay.toml"),
        "{}",
        r.stderr
    );
    let r = run_binary(&["--log-level", "loud", "version"]);
    r.assert_code(2);
    assert!(r.stderr.contains("loud"), "{}", r.stderr);
}
