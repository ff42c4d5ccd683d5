//! Secrets never leak: the real binary runs through its main paths with distinctive test
//! secrets (LDAP password, a wrong LDAP password, SCIM token, relay token, proxy password),
//! at log level `trace`, and every byte it printed (stdout, stderr) or left in its state
//! directory (status, provisioning log, relay-status.json, queue, index) is searched for
//! each secret, and for the proxy's Basic credentials in base64. None may appear.
//!
//! Paths: `check`, `sync --once --dry-run`, `sync --once`, `run` for a few seconds then
//! SIGTERM, `status`, `approve-deletes --list`, and then the same with a wrong LDAP
//! password (failed bind). The relay points at a hub that is not there, through a proxy
//! (a tiny fake on loopback) that asks for credentials and refuses them: every relay
//! exchange fails, and its errors are logged and recorded.
//!
//! Needs slapd and scim2-server (`scripts/test.sh`); the bind account is created with its
//! own password under a test OU, which is removed afterwards.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{
    base64, free_port, terminate, unique, write_secret, Agent, Dir, Run, ScimServer, TestOu,
};

const LDAP_PASSWORD: &str = "ldap-pw-Q7x2vLeakcheck";
const WRONG_LDAP_PASSWORD: &str = "wrong-pw-M4k9zLeakcheck";
const RELAY_TOKEN: &str = "relay-tok-H3j8wLeakcheck";
const PROXY_USER: &str = "proxyuser";
const PROXY_PASSWORD: &str = "proxy-pw-B6n1qLeakcheck";

/// A fake HTTP proxy on loopback: reads each request head, counts those that carried
/// `Proxy-Authorization`, answers `407` and closes. Runs until the test process ends.
fn refusing_proxy() -> (u16, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(AtomicUsize::new(0));
    let with_auth = Arc::new(AtomicUsize::new(0));
    let (s, a) = (seen.clone(), with_auth.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut auth = false;
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                if line
                    .to_ascii_lowercase()
                    .starts_with("proxy-authorization:")
                {
                    auth = true;
                }
                if line == "\r\n" || line == "\n" {
                    break;
                }
            }
            s.fetch_add(1, Ordering::SeqCst);
            if auth {
                a.fetch_add(1, Ordering::SeqCst);
            }
            let _ = conn.write_all(
                b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    (port, seen, with_auth)
}

/// Every file under `dir`, recursively, with its bytes.
fn files(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((p.display().to_string(), b));
        }
    }
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn no_secret_appears_in_any_output_or_state_file() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "leak");
    let bind_dn = format!("cn=leak-bind,{}", ou.dn);
    let people = format!("ou=people,{}", ou.dn);
    let mut ldif = format!(
        "dn: {bind_dn}\nobjectClass: person\ncn: leak-bind\nsn: bind\nuserPassword: {LDAP_PASSWORD}\n\n\
         dn: {people}\nobjectClass: organizationalUnit\nou: people\n\n"
    );
    for n in ["ana", "ben", "cy"] {
        ldif.push_str(&format!(
            "dn: uid={n},{people}\nobjectClass: inetOrgPerson\nuid: {n}\ncn: User {n}\nsn: S\nmail: {n}@example.test\n\n"
        ));
    }
    ldif.push_str(&format!(
        "dn: cn=team,{people}\nobjectClass: groupOfNames\ncn: team\nmember: uid=ana,{people}\n\n"
    ));
    dir.modify(&ldif);

    let mut bind = dir.clone();
    bind.bind_dn = bind_dn;
    bind.bind_pw = LDAP_PASSWORD.into();
    let scim = ScimServer::start();
    let agent = Agent::new(&bind, &[&people], &scim.base_url(), &scim.token, "");
    let (proxy_port, proxy_seen, proxy_auth) = refusing_proxy();
    let tmp = agent.tmp.path();
    write_secret(&tmp.join("relay.token"), RELAY_TOKEN);
    write_secret(&tmp.join("proxy.secret"), PROXY_PASSWORD);
    agent.append_config(&format!(
        "\n[relay]\nurl = \"https://127.0.0.1:{hub}\"\ntoken_file = \"{tok}\"\nheartbeat_secs = 5\npoll_wait_secs = 5\n\
         proxy = \"http://127.0.0.1:{proxy_port}\"\nproxy_user = \"{PROXY_USER}\"\nproxy_password_file = \"{pw}\"\n",
        hub = free_port(),
        tok = tmp.join("relay.token").display(),
        pw = tmp.join("proxy.secret").display(),
    ));

    let trace = ["--log-level", "trace"];
    let mut runs: Vec<(String, Run)> = Vec::new();
    let mut run = |name: &str, args: &[&str]| {
        let r = agent.run(&[&trace[..], args].concat());
        runs.push((name.to_string(), r));
    };
    run("check", &["check"]);
    run("sync --once --dry-run", &["sync", "--once", "--dry-run"]);
    run("sync --once", &["sync", "--once"]);

    let mut child = agent.spawn(&["--log-level", "trace", "run"]);
    std::thread::sleep(Duration::from_secs(8));
    terminate(&mut child);

    run("status", &["status"]);
    run("approve-deletes --list", &["approve-deletes", "--list"]);

    // The happy paths worked (otherwise the test would prove little).
    assert_eq!(runs[0].1.code, 0, "check: {}", runs[0].1.stderr);
    assert_eq!(runs[2].1.code, 0, "sync: {}", runs[2].1.stderr);
    assert_eq!(scim.all("Users").len(), 3, "the pass provisioned the users");
    assert!(
        proxy_seen.load(Ordering::SeqCst) > 0,
        "the relay never reached the proxy: {}",
        agent.log()
    );
    assert!(
        proxy_auth.load(Ordering::SeqCst) > 0,
        "the relay never sent its proxy credentials"
    );

    // A failed bind: the wrong password is a secret too.
    write_secret(&tmp.join("ldap.secret"), WRONG_LDAP_PASSWORD);
    let mut run = |name: &str, args: &[&str]| {
        let r = agent.run(&[&trace[..], args].concat());
        runs.push((name.to_string(), r));
    };
    run("check (wrong password)", &["check"]);
    run("sync --once (wrong password)", &["sync", "--once"]);
    let mut child = agent.spawn(&["--log-level", "trace", "run"]);
    std::thread::sleep(Duration::from_secs(3));
    terminate(&mut child);
    let failed = &runs[runs.len() - 2].1;
    assert_ne!(failed.code, 0, "a wrong password must fail the check");
    assert!(
        failed.stderr.to_lowercase().contains("bind")
            || failed.stdout.to_lowercase().contains("bind")
            || failed.stderr.contains("49"),
        "the failed bind is named: {}{}",
        failed.stdout,
        failed.stderr
    );

    let mut outputs: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, r) in &runs {
        outputs.push((format!("{name}: stdout"), r.stdout.clone().into_bytes()));
        outputs.push((format!("{name}: stderr"), r.stderr.clone().into_bytes()));
    }
    outputs.push(("run: log".into(), agent.log().into_bytes()));
    files(&tmp.join("state"), &mut outputs);
    let state_files: Vec<&str> = outputs[2 * runs.len() + 1..]
        .iter()
        .map(|(p, _)| p.rsplit('/').next().unwrap_or(p))
        .collect();
    eprintln!("state files searched: {state_files:?}");
    for needed in ["relay-status.json", "provisioning.jsonl", "ledger"] {
        assert!(
            state_files.contains(&needed),
            "the state directory holds {needed} to search: {state_files:?}"
        );
    }

    let secrets = [
        LDAP_PASSWORD.to_string(),
        WRONG_LDAP_PASSWORD.to_string(),
        RELAY_TOKEN.to_string(),
        PROXY_PASSWORD.to_string(),
        scim.token.clone(),
        base64(format!("{PROXY_USER}:{PROXY_PASSWORD}").as_bytes()),
    ];
    let mut leaks = Vec::new();
    for (what, bytes) in &outputs {
        for s in &secrets {
            if contains(bytes, s) {
                leaks.push(format!("{what} contains secret `{s}`"));
            }
        }
    }
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
    let searched: usize = outputs.iter().map(|(_, b)| b.len()).sum();
    eprintln!(
        "searched {} outputs and state files ({searched} bytes) for {} secrets: none found ({})",
        outputs.len(),
        secrets.len(),
        unique("done")
    );
}
