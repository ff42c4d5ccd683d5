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

fn offline_agent() -> common::Agent {
    let dir = common::Dir {
        url: "ldap://127.0.0.1:1".into(),
        base: "dc=branch,dc=test".into(),
        admin_dn: String::new(),
        admin_pw: String::new(),
        bind_dn: "cn=syncer,dc=branch,dc=test".into(),
        bind_pw: "pw-not-to-be-printed".into(),
        ca: String::new(),
    };
    common::Agent::new(
        &dir,
        &["dc=branch,dc=test"],
        "http://127.0.0.1:1/v2",
        "tok",
        "",
    )
}

#[test]
fn root_is_refused_without_allow_root() {
    let agent = offline_agent();
    if common::root_flag().is_empty() {
        eprintln!("not running as root: the refusal cannot be exercised here");
        return;
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_idrelay"))
        .args(["--config", agent.config.to_str().unwrap(), "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow-root"), "{err}");
    // With the flag it runs (exit 1: no agent runs, so not healthy; not the refusal's 2).
    agent.run(&["status"]).assert_code(1);
}

/// `status` with no agent running: not healthy, exit 1, in text and JSON; a runtime file
/// left behind by a dead agent (nobody holds the lock) is not taken for a live one.
#[test]
fn status_without_a_running_agent_is_not_healthy() {
    let agent = offline_agent();
    let r = agent.run(&["status", "--json"]);
    r.assert_code(1);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect(&r.stdout);
    assert_eq!(v["running"], false, "{v}");
    assert_eq!(v["healthy"], false, "{v}");
    assert!(v["problems"][0]
        .as_str()
        .unwrap()
        .contains("agent not running"));
    assert_eq!(v["endpoint"]["state"], "unknown", "{v}");
    assert_eq!(v["feed"]["connected"], false, "{v}");
    assert_eq!(v["queue"]["depth"], 0, "{v}");
    assert_eq!(v["queue"]["resync_owed"], true, "{v}");
    assert_eq!(v["held_deletes"], 0, "{v}");
    assert!(v["last_full_pass"]["at"].is_null(), "{v}");

    // A dead agent's runtime file claims a healthy, connected agent.
    let state = agent.tmp.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    std::fs::write(
        state.join("runtime.json"),
        format!(
            r#"{{"v":1,"pid":1,"started_at":{now},"updated_at":{now},"phase":"following",
            "feed":{{"kind":"syncrepl","connected":true,"last_event_at":{now},"poll_interval_secs":null}},
            "endpoint":{{"state":"ok","last_error":null,"last_error_at":null}},
            "last_error":null,"resync_waiting_since":null}}"#
        ),
    )
    .unwrap();
    std::fs::write(state.join("agent.lock"), "").unwrap();
    let r = agent.run(&["status", "--json"]);
    r.assert_code(1);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect(&r.stdout);
    assert_eq!(v["running"], false, "{v}");
    assert_eq!(v["feed"]["connected"], false, "{v}");
    assert!(v["pid"].is_null(), "{v}");

    let r = agent.run(&["status"]);
    r.assert_code(1);
    let first = r.stdout.lines().next().unwrap();
    assert!(
        first.starts_with("healthy: no (agent not running"),
        "{first}"
    );
    assert!(r.stdout.contains("not running"), "{}", r.stdout);
}

#[test]
fn a_secret_file_others_can_read_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let agent = offline_agent();
    let secret = agent.tmp.path().join("ldap.secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = agent.run(&["status"]);
    r.assert_code(2);
    assert!(r.stderr.contains("ldap.secret"), "{}", r.stderr);
    assert!(r.stderr.contains("chmod 600"), "{}", r.stderr);
    assert!(r.stderr.contains("directory.password_file"), "{}", r.stderr);
    assert!(!r.stderr.contains("pw-not-to-be-printed"), "{}", r.stderr);
}

/// Regression: `idrelay status | head -1` panicked ("failed printing to stdout: Broken
/// pipe") once `head` had gone. A reader that goes away ends the command quietly, exit 0.
#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    let agent = offline_agent();
    for args in [
        vec!["--config", agent.config.to_str().unwrap(), "status"],
        vec!["--help"],
        vec!["version"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader); // nobody reads: the first write gets EPIPE
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_idrelay"))
            .args(common::root_flag())
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("Broken pipe"), "{args:?}: {stderr}");
    }
    // `check | head -1` (issue 20's done-when) and `approve-deletes --list | head`: here
    // the directory and the endpoint are unreachable, so `check` fails (exit 1) when its
    // output is read; with nobody reading, it ends quietly all the same, never exit 101
    // or 134 (a panic, an abort).
    let config = agent.config.to_str().unwrap();
    for args in [
        vec!["--config", config, "check"],
        vec!["--config", config, "approve-deletes", "--list"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_idrelay"))
            .args(common::root_flag())
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            matches!(out.status.code(), Some(0) | Some(1)),
            "{args:?}: {:?} {stderr}",
            out.status
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("Broken pipe"), "{args:?}: {stderr}");
    }
}

/// Regression (issue 20): an unknown `[synk]` was reported "in [scim]" and a type error as
/// serde's "expected usize". The table and key as written, with the line, in words; exit 2.
#[test]
fn a_config_error_names_the_table_and_key_as_written() {
    let agent = offline_agent();
    let line_of = |needle: &str| {
        let text = std::fs::read_to_string(&agent.config).unwrap();
        text.lines().position(|l| l.trim() == needle).unwrap() + 1
    };
    agent.edit_config("[sync]", "[synk]");
    let r = agent.run(&["check"]);
    r.assert_code(2);
    let want = format!(
        "config {}, line {}: unknown table [synk]: the tables are [agent], [directory], [scope], [scim], [sync], [queue], [relay], [writeback]",
        agent.config.display(),
        line_of("[synk]")
    );
    assert!(r.stderr.lines().any(|l| l.ends_with(&want)), "{}", r.stderr);

    agent.edit_config("[synk]", "[sync]");
    agent.edit_config("concurrency = 4", "concurrency = \"four\"");
    let r = agent.run(&["check"]);
    r.assert_code(2);
    let want = format!(
        "config {}, line {}, in [sync]: `sync.concurrency` must be a whole number, not text",
        agent.config.display(),
        line_of("concurrency = \"four\"")
    );
    assert!(r.stderr.lines().any(|l| l.ends_with(&want)), "{}", r.stderr);
}
