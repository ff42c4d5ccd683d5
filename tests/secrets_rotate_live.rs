//! Secrets rotate without a restart (issue 20, item 8), with the real binary, slapd and a
//! private scim2-server: `run` started with a wrong SCIM token is unhealthy; once the right
//! token is in `scim.token_file` it recovers by itself within 60 s, after SIGHUP (the
//! config and every secret file are read again) and also without any signal (a 401 makes
//! the agent read the token file once more before it calls the endpoint unhealthy), and
//! the objects that waited arrive.

mod common;

use std::process::Command;

use common::{wait_until, Agent, Dir, Running, ScimServer, TestOu};
use serde_json::Value;

fn users_ldif(o: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            format!("dn: uid=r{i},{o}\nobjectClass: inetOrgPerson\nuid: r{i}\ncn: R {i}\nsn: S\n\n")
        })
        .collect()
}

fn status(agent: &Agent) -> (Value, i32) {
    let r = agent.run(&["status", "--json"]);
    let v: Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}\n{}\n{}", r.stdout, r.stderr));
    (v, r.code)
}

fn rotate(signal: bool) {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, if signal { "rothup" } else { "rot401" });
    dir.modify(&users_ldif(&ou.dn, 3));
    let scim = ScimServer::start();
    let agent = Agent::new(&dir, &[&ou.dn], &scim.base_url(), &scim.token, "");
    let token_file = agent.tmp.path().join("scim.token");
    common::write_secret(&token_file, "an-old-token-4711\n");
    let run = Running(agent.spawn(&["run"]));
    let mut last = Value::Null;
    let unhealthy = wait_until(15, || {
        let (v, code) = status(&agent);
        let ok = v["endpoint"]["state"] == "unhealthy" && code == 1;
        last = v;
        ok
    });
    assert!(unhealthy, "not unhealthy: {last:#}\n{}", agent.log());
    assert!(scim.all("Users").is_empty());

    // The operator puts the right token in place (as an editor would: a new file).
    let tmp = token_file.with_extension("new");
    common::write_secret(&tmp, &format!("{}\n", scim.token));
    std::fs::rename(&tmp, &token_file).unwrap();
    let t0 = std::time::Instant::now();
    if signal {
        let ok = Command::new("kill")
            .args(["-HUP", &run.0.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
    assert!(
        wait_until(60, || scim.all("Users").len() == 3),
        "the waiting users did not arrive within 60 s: {}",
        agent.log()
    );
    let healthy = wait_until(60u64.saturating_sub(t0.elapsed().as_secs()), || {
        let (v, code) = status(&agent);
        let ok = v["healthy"] == true && v["endpoint"]["state"] == "ok" && code == 0;
        last = v;
        ok
    });
    assert!(healthy, "not healthy again: {last:#}\n{}", agent.log());
    eprintln!(
        "recovered {} a signal in {:.1} s",
        if signal { "with" } else { "without" },
        t0.elapsed().as_secs_f64()
    );
    let log = agent.log();
    if signal {
        assert!(log.contains("config reloaded"), "{log}");
        assert!(log.contains("scim token changed"), "{log}");
    } else {
        assert!(log.contains("scim.token_file holds a new token"), "{log}");
    }
    assert!(!log.contains(&scim.token) && !log.contains("an-old-token-4711"));
}

#[test]
fn a_rotated_scim_token_is_taken_on_sighup() {
    rotate(true);
}

#[test]
fn a_rotated_scim_token_is_taken_on_the_next_401_without_a_signal() {
    rotate(false);
}
