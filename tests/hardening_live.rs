//! Weak settings refused, the state directory kept private, remote text kept on its line:
//! the real binary, with the test slapd and scim2-server where a sync must run, and a small
//! loopback HTTP server of our own where an endpoint must misbehave on cue.
//!
//! * secret files (`*_file`, the TLS client key too) that group or others may read, or
//!   that another user owns, are refused naming the key and the fix;
//! * `http://` / `ldap://` without TLS to a host that is not loopback is refused naming the
//!   key, accepted with `allow_plaintext = true` in its table, and `check` then warns;
//! * a state directory others may write to (or another user owns) is refused;
//! * a symlink planted at a state file's name is never followed;
//! * an endpoint's error text with a newline and a `<0>` priority stays one escaped line.
//!
//! Non-loopback addresses are TEST-NET-1 (192.0.2.0/24, RFC 5737): refused at load, so
//! nothing is sent to them.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::{
    root_flag, wait_until, write_secret, Agent, Dir, Hub, Running, ScimServer, TestOu, HUB_SETTINGS,
};

/// An agent whose LDAP and SCIM endpoints are closed loopback ports (fails fast, sends
/// nothing), with made-up secrets.
fn offline_agent() -> Agent {
    let dir = Dir {
        url: "ldap://127.0.0.1:1".into(),
        base: "dc=branch,dc=test".into(),
        admin_dn: String::new(),
        admin_pw: String::new(),
        bind_dn: "cn=syncer,dc=branch,dc=test".into(),
        bind_pw: "pw-not-to-be-printed".into(),
        ca: String::new(),
    };
    let agent = Agent::new(
        &dir,
        &["dc=branch,dc=test"],
        "http://127.0.0.1:1/v2",
        "tok-not-to-be-printed",
        "",
    );
    agent.edit_config("timeout_secs = 10", "timeout_secs = 1");
    agent
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn running_as_root() -> bool {
    !root_flag().is_empty()
}

/// Asserts that `cmd` is refused at load (exit 2) with an error naming `key` and saying
/// `fix`, and that no secret is printed.
fn refused_at_load(agent: &Agent, cmd: &[&str], key: &str, fix: &str) {
    let r = agent.run(cmd);
    r.assert_code(2);
    assert!(
        r.stderr.contains(&format!("`{key}`")),
        "{cmd:?}: {}",
        r.stderr
    );
    assert!(r.stderr.contains(fix), "{cmd:?}: {}", r.stderr);
    for secret in [
        "pw-not-to-be-printed",
        "tok-not-to-be-printed",
        "relay-secret",
    ] {
        assert!(!r.stderr.contains(secret), "{cmd:?}: {}", r.stderr);
        assert!(!r.stdout.contains(secret), "{cmd:?}: {}", r.stdout);
    }
}

#[test]
fn secret_files_others_can_read_or_another_user_owns_are_refused_naming_the_key() {
    let agent = offline_agent();
    let token = agent.tmp.path().join("scim.token");
    chmod(&token, 0o644);
    for cmd in [&["check"][..], &["sync", "--once"]] {
        refused_at_load(&agent, cmd, "scim.token_file", "chmod 600");
    }
    chmod(&token, 0o600);

    // The relay's token, the same way.
    let relay_token = agent.tmp.path().join("relay.token");
    write_secret(&relay_token, "relay-secret");
    chmod(&relay_token, 0o640);
    agent.append_config(&format!(
        "\n[relay]\nurl = \"http://127.0.0.1:1\"\ntoken_file = \"{}\"\n",
        relay_token.display()
    ));
    refused_at_load(&agent, &["check"], "relay.token_file", "chmod 600");
    chmod(&relay_token, 0o600);
    agent.run(&["status"]).assert_code(1);

    // A TLS client key is a secret file too (it was never checked).
    let cert = agent.tmp.path().join("client.crt");
    let key = agent.tmp.path().join("client.key");
    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    chmod(&key, 0o644);
    agent.edit_config(
        "timeout_secs = 1",
        &format!(
            "timeout_secs = 1\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"",
            cert.display(),
            key.display()
        ),
    );
    for cmd in [&["check"][..], &["sync", "--once"]] {
        refused_at_load(&agent, cmd, "scim.client_key_file", "chmod 600");
    }

    // Owned by another user (not root): that user could swap it. Needs root to arrange.
    if !running_as_root() {
        eprintln!("not running as root: a secret of another user cannot be arranged here");
        return;
    }
    chmod(&key, 0o600);
    let chown = Command::new("chown")
        .args(["65534", token.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(chown.success());
    refused_at_load(&agent, &["check"], "scim.token_file", "owned by uid 65534");
    refused_at_load(&agent, &["check"], "scim.token_file", "chown 0");
}

#[test]
fn plain_connections_to_remote_hosts_are_refused_unless_allowed_and_then_warned() {
    let agent = offline_agent();
    // SCIM over http to a host that is not loopback: the bearer token in clear.
    agent.edit_config(
        "url = \"http://127.0.0.1:1/v2\"",
        "url = \"http://192.0.2.1:1/v2\"",
    );
    for cmd in [&["check"][..], &["sync", "--once"], &["status"]] {
        refused_at_load(&agent, cmd, "scim.url", "allow_plaintext = true in [scim]");
    }
    agent.edit_config(
        "timeout_secs = 1",
        "timeout_secs = 1\nallow_plaintext = true",
    );
    agent.run(&["status"]).assert_code(1);
    let r = agent.run(&["check"]);
    let warn: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("plaintext") && l.contains(" WARN "))
        .collect();
    assert_eq!(warn.len(), 1, "{}", r.stdout);
    assert!(
        warn[0].contains("scim.url") && warn[0].contains("http://192.0.2.1:1/v2"),
        "{}",
        warn[0]
    );
    assert!(!r.stdout.contains("tok-not-to-be-printed"), "{}", r.stdout);

    // LDAP without TLS to a host that is not loopback: the bind password in clear. StartTLS
    // or allow_plaintext in [directory] accepts it (status loads the config and reads only
    // the state directory).
    agent.edit_config(
        "url = \"ldap://127.0.0.1:1\"",
        "url = \"ldap://192.0.2.1:389\"",
    );
    refused_at_load(
        &agent,
        &["status"],
        "directory.url",
        "allow_plaintext = true in [directory]",
    );
    agent.edit_config(
        "url = \"ldap://192.0.2.1:389\"",
        "url = \"ldap://192.0.2.1:389\"\nstarttls = true",
    );
    agent.run(&["status"]).assert_code(1);
    agent.edit_config("starttls = true", "allow_plaintext = true");
    agent.run(&["status"]).assert_code(1);

    // The relay to a hub that is not loopback, the same way.
    let relay_token = agent.tmp.path().join("relay.token");
    write_secret(&relay_token, "relay-secret");
    agent.append_config(&format!(
        "\n[relay]\nurl = \"http://192.0.2.1:8443\"\ntoken_file = \"{}\"\n",
        relay_token.display()
    ));
    refused_at_load(
        &agent,
        &["status"],
        "relay.url",
        "allow_plaintext = true in [relay]",
    );
    agent.append_config("allow_plaintext = true\n");
    agent.run(&["status"]).assert_code(1);
}

#[test]
fn a_state_dir_others_can_write_to_is_refused_and_left_alone() {
    let agent = offline_agent();
    let state = agent.tmp.path().join("state");
    std::fs::create_dir(&state).unwrap();
    chmod(&state, 0o777);
    for cmd in [
        &["sync", "--once"][..],
        &["approve-deletes"],
        &["retry", "--all"],
    ] {
        let r = agent.run(cmd);
        assert_ne!(r.code, 0, "{cmd:?}: {}", r.stderr);
        assert!(
            r.stderr.contains("agent.state_dir") && r.stderr.contains("chmod 700"),
            "{cmd:?}: {}",
            r.stderr
        );
    }
    let r = agent.run(&["check"]);
    assert_ne!(r.code, 0);
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("state_dir"))
        .unwrap_or_default();
    assert!(
        line.contains("FAIL") && line.contains("0777") && line.contains("chmod 700"),
        "{}",
        r.stdout
    );
    assert_eq!(mode(&state), 0o777, "a refused directory is not changed");
    assert!(
        std::fs::read_dir(&state).unwrap().next().is_none(),
        "nothing was written into it"
    );

    // Readable by others only: taken back to 0700, as before.
    chmod(&state, 0o755);
    let r = agent.run(&["check"]);
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("state_dir") && l.contains(" OK ")),
        "{}",
        r.stdout
    );
    assert_eq!(mode(&state), 0o700);

    if !running_as_root() {
        eprintln!("not running as root: a state directory of another user cannot be arranged");
        return;
    }
    let chown = Command::new("chown")
        .args(["65534", state.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(chown.success());
    let r = agent.run(&["sync", "--once"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("agent.state_dir")
            && r.stderr.contains("owned by uid 65534")
            && r.stderr.contains("chown"),
        "{}",
        r.stderr
    );
}

fn user_ldif(parent: &str, uid: &str) -> String {
    format!(
        "dn: uid={uid},{parent}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: User {uid}\nsn: S\n\n"
    )
}

/// Symlinks at state files' names, each pointing at a file outside: after the commands the
/// targets are as they were. On the old code `check` wrote "ok" through `.idrelay-check`,
/// `sync --once` appended its audit lines through `provisioning.jsonl` and truncated the
/// target of `anchors.jsonl.tmp`.
#[test]
fn symlinks_planted_in_the_state_dir_are_not_followed() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "hlink");
    dir.modify(&user_ldif(&ou.dn, "link1"));
    let scim = ScimServer::start();
    let agent = Agent::new(&dir, &[&ou.dn], &scim.base_url(), &scim.token, "");
    let state = agent.tmp.path().join("state");
    std::fs::create_dir(&state).unwrap();
    chmod(&state, 0o700);
    let outside = agent.tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let plant = |name: &str| {
        let victim = outside.join(name.trim_start_matches('.'));
        std::fs::write(&victim, "untouched\n").unwrap();
        std::os::unix::fs::symlink(&victim, state.join(name)).unwrap();
        victim
    };
    let untouched = |victim: &Path| {
        assert_eq!(
            std::fs::read_to_string(victim).unwrap(),
            "untouched\n",
            "{} was written through a symlink",
            victim.display()
        );
    };

    let probe = plant(".idrelay-check");
    agent.run(&["check"]);
    untouched(&probe);

    // The provisioning log: the sync goes on (the log is not essential), the target stays.
    let audit = plant("provisioning.jsonl");
    let r = agent.run(&["sync", "--once"]);
    r.assert_code(0);
    untouched(&audit);
    assert!(
        r.stderr.contains("provisioning log"),
        "the failed log is said: {}",
        r.stderr
    );
    assert!(
        scim.all("Users")
            .iter()
            .any(|u| u["userName"].as_str() == Some("link1")),
        "provisioning went on"
    );

    // The anchor index's temporary file: the pass cannot record its work and says so.
    let anchors_tmp = plant("anchors.jsonl.tmp");
    dir.modify(&user_ldif(&ou.dn, "link2"));
    let r = agent.run(&["sync", "--once"]);
    assert_ne!(r.code, 0, "{}", r.stderr);
    untouched(&anchors_tmp);
    untouched(&audit);
    untouched(&probe);
}

/// A SCIM endpoint on loopback that answers every request 400 with `detail`.
fn scim_that_fails_with(detail: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        line.clear();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let l = line.to_ascii_lowercase();
                        if let Some(v) = l.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; length];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    let answer = serde_json::json!({
                        "schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
                        "status": "400",
                        "scimType": "invalidValue",
                        "detail": detail,
                    })
                    .to_string();
                    let reply = format!(
                        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/scim+json\r\nContent-Length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                    if s.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// A guard: the SCIM client already flattened control characters in an endpoint's
/// `detail` and `scimType` (to spaces) before this escaping existed; it must stay so.
#[test]
fn an_endpoints_error_text_cannot_forge_a_log_line() {
    const FORGED: &str = "idrelay: FORGED all deletes approved";
    let detail: &'static str = "bad value\n<0>idrelay: FORGED all deletes approved\r\n";
    let port = scim_that_fails_with(detail);
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "hlog");
    dir.modify(&user_ldif(&ou.dn, "log1"));
    let agent = Agent::new(
        &dir,
        &[&ou.dn],
        &format!("http://127.0.0.1:{port}/v2"),
        "tok-not-to-be-printed",
        "",
    );
    agent.edit_config("timeout_secs = 10", "timeout_secs = 10\nproxy = \"none\"");
    // As a terminal sees it, and as journald does (JOURNAL_STREAM: `<N>` line prefixes).
    for journal in [false, true] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_idrelay"));
        cmd.args(root_flag())
            .args(["--config", agent.config.to_str().unwrap(), "sync", "--once"]);
        if journal {
            cmd.env("JOURNAL_STREAM", "8:12345");
        } else {
            cmd.env_remove("JOURNAL_STREAM");
        }
        let out = cmd.output().unwrap();
        assert_ne!(out.status.code(), Some(0));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let all = format!("{stdout}{stderr}");
        assert!(
            all.contains("bad value") && all.contains(FORGED),
            "journal {journal}: the detail is shown:\n{all}"
        );
        for line in all.lines() {
            assert!(
                !line.starts_with("<0>") && !line.starts_with(FORGED),
                "journal {journal}: a forged line: {line:?}\n{all}"
            );
        }
        assert!(!all.contains('\r'), "journal {journal}: {all:?}");
    }
}

/// A request field from the hub (the DN of a `provision` command, which only has to lie
/// under scope.include) with a newline and a `<0>` priority: on the old code the agent's
/// log got a line of the cloud's choosing (`<0>idrelay: FORGED ...`); now it is one
/// escaped line.
#[test]
fn a_hub_requests_text_cannot_forge_a_log_line() {
    const FORGED: &str = "idrelay: FORGED all deletes approved";
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "hrelay");
    dir.modify(&user_ldif(&ou.dn, "relay1"));
    let scim = ScimServer::start();
    let token = "agent-token-hardening";
    let hub = Hub::start(
        "operator-token-for-hardening",
        HUB_SETTINGS,
        &[("a1", "branch", token)],
    );
    let agent = Agent::with_relay(&dir, &[&ou.dn], &scim, &hub, ("a1", token), "");
    let _run = Running(agent.spawn(&["run"]));
    assert!(
        wait_until(90, || hub.role("a1").as_deref() == Some("active")
            && agent.log().contains("objects in step")),
        "agent: {}\nhub: {}",
        agent.log(),
        hub.log()
    );
    let target = format!("uid=x\n<0>{FORGED},{}", ou.dn);
    let body = serde_json::json!({"command": "provision", "target": target}).to_string();
    let answer = hub.command_answer("a1", &body, 60);
    assert!(answer.is_some(), "no answer: {}", agent.log());
    assert!(
        wait_until(30, || agent.log().contains(FORGED)),
        "the request is logged: {}",
        agent.log()
    );
    let log = agent.log();
    assert!(
        log.contains(&format!("uid=x\\n\\x3c0>{FORGED}"))
            || log.contains(&format!("uid=x\\n<0>{FORGED}")),
        "shown escaped on its line: {log}"
    );
    for line in log.lines() {
        assert!(
            !line.starts_with("<0>") && !line.starts_with(FORGED),
            "a forged line: {line:?}\n{log}"
        );
    }
}
