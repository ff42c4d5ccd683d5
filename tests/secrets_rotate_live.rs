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
    agent.status_json()
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

/// A token that stops working while `run` follows changes (revoked, expired; here the
/// endpoint's user paths answer 401 through a proxy, while its discovery documents still
/// answer, as many services' do without a token): the changes that arrive meanwhile are
/// the endpoint's failure, not theirs. They are never parked as refused objects; the
/// endpoint shows unhealthy; once the token works again they arrive.
#[test]
fn changes_during_a_refused_token_wait_and_are_not_parked() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "revoked");
    dir.modify(&users_ldif(&ou.dn, 2));
    let scim = ScimServer::start();
    let proxy = common::faultproxy::FaultProxy::http(scim.port);
    let agent = Agent::new(&dir, &[&ou.dn], &proxy.http_url("/v2"), &scim.token, "");
    let _run = Running(agent.spawn(&["run"]));
    assert!(
        wait_until(60, || scim.all("Users").len() == 2
            && agent.log().contains("objects in step")),
        "{}",
        agent.log()
    );
    // The token is revoked at the endpoint.
    proxy.refuse_path("/Users", 401);
    dir.modify(&format!(
        "dn: uid=r0,{}\nchangetype: modify\nreplace: title\ntitle: while-revoked\n",
        ou.dn
    ));
    let mut last = Value::Null;
    let unhealthy = wait_until(20, || {
        let (v, _) = status(&agent);
        let ok = v["endpoint"]["state"] == "unhealthy";
        last = v;
        ok
    });
    assert!(unhealthy, "{last:#}\n{}", agent.log());
    // Long enough for `max_attempts` (2) tries and the park decision.
    std::thread::sleep(std::time::Duration::from_secs(6));
    let (v, _) = status(&agent);
    assert_eq!(v["parked"], serde_json::json!([]), "{v:#}\n{}", agent.log());
    // The token works again: the change arrives.
    proxy.accept_paths();
    let titled = || {
        scim.all("Users")
            .iter()
            .any(|u| u["userName"] == "r0" && u["title"] == "while-revoked")
    };
    assert!(wait_until(60, titled), "{}", agent.log());
}

/// Issue 20 item 1: a refused token is one outage of the endpoint, not a warning per retry.
/// `run` started with a wrong token shows `healthy: false` and `endpoint.state` unhealthy
/// (with the cause naming the key) within 10 s; over 40 s the log says so ONCE while the
/// retries are counted in `status --json`; the right token and a SIGHUP end it within
/// 60 s, said once, with the outage's length and retries.
#[test]
fn a_refused_token_is_one_outage_said_once_and_counted() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "outage");
    dir.modify(&users_ldif(&ou.dn, 2));
    let scim = ScimServer::start();
    let agent = Agent::new(&dir, &[&ou.dn], &scim.base_url(), &scim.token, "");
    let token_file = agent.tmp.path().join("scim.token");
    common::write_secret(&token_file, "a-wrong-token-8086\n");
    let run = Running(agent.spawn(&["run"]));
    let t0 = std::time::Instant::now();
    let mut last = Value::Null;
    let unhealthy = wait_until(10, || {
        let (v, code) = status(&agent);
        let ok = v["healthy"] == false && v["endpoint"]["state"] == "unhealthy" && code == 1;
        last = v;
        ok
    });
    assert!(
        unhealthy,
        "not unhealthy within 10 s: {last:#}\n{}",
        agent.log()
    );
    let cause = last["endpoint"]["outage"]["cause"].as_str().unwrap_or("");
    assert!(
        cause.contains("refuses our token (401): check scim.token_file"),
        "{last:#}"
    );
    std::thread::sleep(std::time::Duration::from_secs(40).saturating_sub(t0.elapsed()));
    let (v, _) = status(&agent);
    let log = agent.log();
    let said = |what: &str| log.lines().filter(|l| l.contains(what)).count();
    assert_eq!(
        said("scim.token_file"),
        1,
        "one line for the outage:\n{log}"
    );
    assert_eq!(said("SCIM endpoint unhealthy"), 1, "{log}");
    // Nothing else is said per retry either.
    let after: Vec<&str> = log
        .lines()
        .skip_while(|l| !l.contains("SCIM endpoint unhealthy"))
        .skip(1)
        .collect();
    assert!(after.len() <= 2, "lines repeated per retry: {after:#?}");
    let outage = &v["endpoint"]["outage"];
    assert!(
        outage["retries"].as_u64().unwrap_or(0) >= 3
            && outage["failures"].as_u64().unwrap_or(0) >= 3,
        "retries are counted: {v:#}"
    );
    assert!(
        v["endpoint"]["unhealthy_secs"].as_u64().unwrap_or(0) >= 30,
        "{v:#}"
    );
    assert!(scim.all("Users").is_empty());

    // The right token, and a SIGHUP.
    let tmp = token_file.with_extension("new");
    common::write_secret(&tmp, &format!("{}\n", scim.token));
    std::fs::rename(&tmp, &token_file).unwrap();
    let t1 = std::time::Instant::now();
    let hup = Command::new("kill")
        .args(["-HUP", &run.0.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let healthy = wait_until(60, || {
        let (v, code) = status(&agent);
        let ok = v["healthy"] == true && v["endpoint"]["state"] == "ok" && code == 0;
        last = v;
        ok
    });
    assert!(healthy, "not healthy again: {last:#}\n{}", agent.log());
    assert!(
        wait_until(10, || scim.all("Users").len() == 2),
        "{}",
        agent.log()
    );
    eprintln!(
        "outage ended {:.1} s after the SIGHUP",
        t1.elapsed().as_secs_f64()
    );
    let log = agent.log();
    let said = |what: &str| log.lines().filter(|l| l.contains(what)).count();
    assert_eq!(said("SCIM endpoint healthy again after"), 1, "{log}");
    assert_eq!(said("SCIM endpoint unhealthy"), 1, "{log}");
    assert_eq!(last["endpoint"]["outage"], Value::Null, "{last:#}");
    assert_eq!(last["endpoint"]["outages"], 1, "{last:#}");
}
