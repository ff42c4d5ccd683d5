//! The relay end to end with real binaries on loopback: `idrelay run` with `[relay]` next to
//! slapd and scim2-server, and `idrelay-hub`. The cloud reads the branch directory as a
//! SCIM endpoint through the agent's long-poll, sends commands, cannot write or leave the
//! scope; a restarted hub is reconnected to; two agents of one directory fail over.

mod common;

use std::time::Duration;

use common::{url_encode, wait_until, Agent, Dir, Hub, Running, ScimServer, TestOu, HUB_SETTINGS};
use serde_json::Value;

const OPERATOR: &str = "operator-token-for-tests";

/// A hub for `agents` (id, group, token), heartbeats every 5 s.
fn start_hub(agents: &[(&str, &str, &str)]) -> Hub {
    Hub::start(OPERATOR, HUB_SETTINGS, agents)
}

impl Hub {
    fn scim(&self, agent: &str, path_and_query: &str) -> (u16, Value) {
        self.op(
            "GET",
            &format!("/agents/{agent}/scim/v2{path_and_query}"),
            None,
        )
    }

    /// Sends a command and waits for the agent's answer; (status, body).
    fn command(&self, agent: &str, body: &str) -> (u16, Value) {
        self.command_answer(agent, body, 30)
            .unwrap_or_else(|| panic!("no answer to {body}: {}", self.log()))
    }
}

/// A hub for agent a1, and a1 running on `ou` until the hub counts it active.
fn agent_a1_active(dir: &Dir, ou: &str, scim: &ScimServer) -> (Hub, Agent, Running) {
    let hub = start_hub(&[("a1", "branch", "agent-token-a1")]);
    let agent = Agent::with_relay(dir, &[ou], scim, &hub, ("a1", "agent-token-a1"), "");
    let run = Running(agent.spawn(&["run"]));
    assert!(
        wait_until(60, || hub.role("a1").as_deref() == Some("active")),
        "{}",
        agent.log()
    );
    (hub, agent, run)
}

/// Asserts that the agent's `log` names each relay request it handled once; how many.
fn requests_handled_once(log: &str) -> usize {
    let mut ids: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split("relay: request ").nth(1))
        .filter_map(|r| r.split_whitespace().next())
        .collect();
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "a request was handled twice: {log}");
    n
}

fn users(parent: &str, names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("dn: uid={n},{parent}\nobjectClass: inetOrgPerson\nuid: {n}\ncn: User {n}\nsn: S\ntitle: t-{n}\n\n"))
        .collect()
}

#[test]
fn the_cloud_reads_the_directory_and_sends_commands_through_the_relay() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "relay");
    let o = ou.dn.clone();
    dir.modify(&users(&o, &["r0", "r1", "r2"]));
    dir.modify(&format!(
        "dn: cn=crew,{o}\nobjectClass: groupOfNames\ncn: crew\nmember: uid=r0,{o}\nmember: uid=r1,{o}\n"
    ));
    let scim = ScimServer::start();
    let hub = start_hub(&[("a1", "branch", "agent-token-a1")]);
    let agent = Agent::with_relay(&dir, &[&o], &scim, &hub, ("a1", "agent-token-a1"), "");
    let _run = Running(agent.spawn(&["run"]));
    assert!(
        wait_until(60, || scim.all("Users").len() == 3
            && hub.role("a1").as_deref() == Some("active")),
        "agent: {}\nhub: {}",
        agent.log(),
        hub.log()
    );

    // A filtered list, answered from the directory.
    let filter = url_encode(r#"userName eq "r0""#);
    let (s, v) = hub.scim("a1", &format!("/Users?filter={filter}"));
    assert_eq!(s, 200, "{v}\n{}", agent.log());
    assert_eq!(v["totalResults"], 1, "{v}");
    let r0 = &v["Resources"][0];
    assert_eq!(r0["userName"], "r0");
    assert_eq!(r0["title"], "t-r0");
    let id = r0["id"].as_str().unwrap().to_string();
    assert_eq!(
        r0["externalId"].as_str(),
        Some(id.as_str()),
        "id is the anchor"
    );
    // By id, and the group with its members as anchors.
    let (s, v) = hub.scim("a1", &format!("/Users/{id}"));
    assert_eq!((s, v["userName"].as_str()), (200, Some("r0")));
    let (s, v) = hub.scim("a1", "/Groups");
    assert_eq!(s, 200, "{v}");
    let members: Vec<&str> = v["Resources"][0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["value"].as_str())
        .collect();
    assert!(members.contains(&id.as_str()), "{v}");
    // Paging and discovery.
    let (_, v) = hub.scim("a1", "/Users?startIndex=2&count=1");
    assert_eq!(
        (v["totalResults"].as_u64(), v["itemsPerPage"].as_u64()),
        (Some(3), Some(1)),
        "{v}"
    );
    let (s, _) = hub.scim("a1", "/ServiceProviderConfig");
    assert_eq!(s, 200);
    // What the cloud may not do: filters it cannot express exactly, writes, other paths.
    let bad = url_encode(r#"members.value eq "x""#);
    let (s, v) = hub.scim("a1", &format!("/Groups?filter={bad}"));
    assert_eq!(
        (s, v["scimType"].as_str()),
        (400, Some("invalidFilter")),
        "{v}"
    );
    let (s, _) = hub.op(
        "POST",
        "/agents/a1/scim/v2/Users",
        Some(r#"{"schemas":["urn:ietf:params:scim:schemas:core:2.0:User"],"userName":"evil"}"#),
    );
    assert_eq!(s, 403, "writeback is not allowed");
    let (s, _) = hub.op("DELETE", &format!("/agents/a1/scim/v2/Users/{id}"), None);
    assert_eq!(s, 403);
    assert!(
        dir.attr_ldif(&format!("uid=r0,{o}"), "uid").is_some(),
        "LDAP untouched"
    );
    let (s, _) = hub.scim("a1", "/Bulk");
    assert_eq!(s, 404);
    // An object outside the scope is not readable through the facade.
    let outside = url_encode(r#"userName eq "syncer""#);
    let (_, v) = hub.scim("a1", &format!("/Users?filter={outside}"));
    assert_eq!(v["totalResults"], 0, "{v}");

    // Commands.
    let (s, v) = hub.command("a1", r#"{"command":"approve-deletes"}"#);
    assert_eq!(s, 200, "{v}");
    dir.modify(&format!(
        "dn: uid=r2,{o}\nchangetype: modify\nreplace: title\ntitle: pushed\n"
    ));
    let (s, v) = hub.command(
        "a1",
        &format!(r#"{{"command":"provision","target":"uid=r2,{o}"}}"#),
    );
    assert_eq!(s, 202, "{v}");
    assert!(wait_until(20, || scim
        .all("Users")
        .iter()
        .any(|u| u["userName"] == "r2" && u["title"] == "pushed")));
    let (s, _) = hub.command(
        "a1",
        r#"{"command":"provision","target":"uid=x,dc=elsewhere"}"#,
    );
    assert_eq!(s, 403);
    // Profiles from the cloud are refused unless the branch accepts them (tests/policy_live.rs).
    let (s, v) = hub.command(
        "a1",
        r#"{"command":"set-profile","profile":"[user.bogus]\nx = 1\n"}"#,
    );
    assert_eq!(s, 403, "{v}");
    assert!(
        v["detail"]
            .as_str()
            .unwrap_or("")
            .contains("relay.accept_profiles"),
        "{v}"
    );
    let (s, v) = hub.command("a1", r#"{"command":"resync"}"#);
    assert_eq!(s, 202, "{v}");
    assert!(
        wait_until(30, || agent.log().contains("full pass owed (requested)")),
        "{}",
        agent.log()
    );
    // An operator's resync is routine: INFO, never WARN.
    assert!(
        !agent
            .log()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("full resync owed")),
        "{}",
        agent.log()
    );
    // The heartbeat reached the hub with the agent's facts (its counts include what the
    // full pass wrote: 3 users and a group); status shows the relay.
    assert!(wait_until(15, || hub.op("GET", "/v1/agents", None).1[0]
        ["heartbeat"]["counts"]["provisioned"]
        .as_u64()
        >= Some(4)));
    let (_, agents) = hub.op("GET", "/v1/agents", None);
    let hb = &agents.as_array().unwrap()[0]["heartbeat"];
    assert_eq!(hb["group"], "branch", "{agents}");
    assert!(hb["queue"]["depth"].is_u64(), "{agents}");
    // The endpoint as `status` shows it (issue 20: an outage and its counts reach the hub).
    assert!(
        wait_until(15, || {
            let hb = &hub.op("GET", "/v1/agents", None).1[0]["heartbeat"];
            hb["endpoint"]["state"] == "ok" && hb["endpoint"]["outage"].is_null()
        }),
        "{}",
        hub.op("GET", "/v1/agents", None).1
    );
    let st = agent.run(&["status"]);
    assert!(
        st.stdout.contains("relay:") && st.stdout.contains("ACTIVE"),
        "{}",
        st.stdout
    );
    assert!(!hub.log().contains("agent-token-a1") && !agent.log().contains("agent-token-a1"));
}

/// The `id`s of a facade list answer.
fn ids(v: &Value) -> Vec<String> {
    v["Resources"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn relay_reads_never_return_an_object_outside_scope_groups() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "relay-sg");
    let o = ou.dn.clone();
    dir.modify(&users(&o, &["s0", "s1", "s2"]));
    dir.modify(&format!(
        "dn: cn=crew,{o}\nobjectClass: groupOfNames\ncn: crew\nmember: uid=s0,{o}\nmember: uid=s1,{o}\n\n\
         dn: cn=others,{o}\nobjectClass: groupOfNames\ncn: others\nmember: uid=s2,{o}\nmember: uid=s0,{o}\n"
    ));
    let anchor = |n: &str| dir.attr_ldif(&format!("uid={n},{o}"), "entryUUID").unwrap();
    let (s0, s2) = (anchor("s0"), anchor("s2"));
    let others = dir
        .attr_ldif(&format!("cn=others,{o}"), "entryUUID")
        .unwrap();
    let scim = ScimServer::start();
    let hub = start_hub(&[("a1", "branch", "agent-token-a1")]);
    let agent = Agent::with_relay(&dir, &[&o], &scim, &hub, ("a1", "agent-token-a1"), "");
    agent.edit_config(
        &format!("include = [\"{o}\"]"),
        &format!("include = [\"{o}\"]\ngroups = [\"cn=crew,{o}\"]"),
    );
    let _run = Running(agent.spawn(&["run"]));
    assert!(
        wait_until(60, || scim.all("Users").len() == 2
            && hub.role("a1").as_deref() == Some("active")),
        "agent: {}\nhub: {}",
        agent.log(),
        hub.log()
    );

    // Lists, reads by id and filters see the group's members only.
    let (s, v) = hub.scim("a1", "/Users");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["totalResults"], 2, "{v}");
    assert!(!ids(&v).contains(&s2), "{v}");
    let (s, _) = hub.scim("a1", &format!("/Users/{s2}"));
    assert_eq!(s, 404, "a user outside scope.groups read by its id");
    let f = url_encode(r#"userName eq "s2""#);
    let (_, v) = hub.scim("a1", &format!("/Users?filter={f}"));
    assert_eq!(v["totalResults"], 0, "{v}");
    let (_, v) = hub.scim("a1", "/Groups");
    assert_eq!(ids(&v).len(), 1, "only crew itself: {v}");
    let (s, _) = hub.scim("a1", &format!("/Groups/{others}"));
    assert_eq!(s, 404, "a group outside scope.groups read by its id");
    let (s, v) = hub.scim("a1", &format!("/Users/{s0}"));
    assert_eq!((s, v["userName"].as_str()), (200, Some("s0")), "{v}");

    // s2 joins: readable at once; s1 leaves: gone at once.
    dir.modify(&format!(
        "dn: cn=crew,{o}\nchangetype: modify\nadd: member\nmember: uid=s2,{o}\n-\ndelete: member\nmember: uid=s1,{o}\n"
    ));
    let (s, v) = hub.scim("a1", &format!("/Users/{s2}"));
    assert_eq!((s, v["userName"].as_str()), (200, Some("s2")), "{v}");
    let f = url_encode(r#"userName eq "s1""#);
    let (_, v) = hub.scim("a1", &format!("/Users?filter={f}"));
    assert_eq!(v["totalResults"], 0, "{v}");
}

#[test]
fn a_restarted_hub_is_reconnected_to_and_requests_still_get_answers() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "hubrestart");
    let o = ou.dn.clone();
    dir.modify(&users(&o, &["h0"]));
    let scim = ScimServer::start();
    let (mut hub, agent, _run) = agent_a1_active(&dir, &o, &scim);
    let (s, _) = hub.scim("a1", "/Users");
    assert_eq!(s, 200);
    // Restart mid-long-poll.
    hub.stop();
    std::thread::sleep(Duration::from_secs(1));
    hub.spawn();
    assert!(
        wait_until(60, || hub.scim("a1", "/Users").0 == 200),
        "agent did not reconnect: {}",
        agent.log()
    );
    // The agent kept provisioning through the hub outage (the lease outlived it).
    dir.modify(&format!(
        "dn: uid=h0,{o}\nchangetype: modify\nreplace: title\ntitle: after-hub-restart\n"
    ));
    assert!(wait_until(30, || scim
        .all("Users")
        .iter()
        .any(|u| u["title"] == "after-hub-restart")));
    // Each request was answered once: the agent log names each request id once.
    requests_handled_once(&agent.log());
}

#[test]
fn two_agents_of_one_directory_fail_over_within_three_heartbeats() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "failover");
    let o = ou.dn.clone();
    dir.modify(&users(&o, &["f0", "f1"]));
    let scim = ScimServer::start();
    let hub = start_hub(&[("a1", "branch", "tok-a1"), ("a2", "branch", "tok-a2")]);
    let first = Agent::with_relay(&dir, &[&o], &scim, &hub, ("a1", "tok-a1"), "");
    let second = Agent::with_relay(&dir, &[&o], &scim, &hub, ("a2", "tok-a2"), "");
    let mut run1 = Running(first.spawn(&["run"]));
    assert!(
        wait_until(60, || hub.role("a1").as_deref() == Some("active")),
        "{}",
        first.log()
    );
    let _run2 = Running(second.spawn(&["run"]));
    assert!(
        wait_until(30, || hub.role("a2").as_deref() == Some("standby")),
        "{}",
        second.log()
    );
    assert!(wait_until(60, || scim.all("Users").len() == 2));
    assert!(second.log().contains("standby"), "{}", second.log());
    assert!(
        !second.log().contains("objects in step"),
        "a standby agent provisions nothing: {}",
        second.log()
    );

    // The active one dies; the standby takes over within 3 heartbeat intervals (+ one poll).
    let _ = run1.0.kill();
    let _ = run1.0.wait();
    let t0 = std::time::Instant::now();
    assert!(
        wait_until(30, || hub.role("a2").as_deref() == Some("active")),
        "no failover: {}",
        hub.log()
    );
    let took = t0.elapsed();
    eprintln!("failover took {} ms", took.as_millis());
    assert!(took <= Duration::from_secs(20), "failover took {took:?}");
    dir.modify(&format!(
        "dn: uid=f1,{o}\nchangetype: modify\nreplace: title\ntitle: after-failover\n"
    ));
    dir.modify(&users(&o, &["f2"]));
    assert!(
        wait_until(60, || {
            let all = scim.all("Users");
            all.iter().any(|u| u["title"] == "after-failover") && all.len() == 3
        }),
        "{}",
        second.log()
    );
    // Nothing twice: every externalId is held once.
    let all = scim.all("Users");
    let mut x: Vec<&str> = all
        .iter()
        .filter_map(|u| u["externalId"].as_str())
        .collect();
    let n = x.len();
    x.sort_unstable();
    x.dedup();
    assert_eq!(x.len(), n, "a user was created twice");
}

#[test]
fn parallel_requests_are_each_answered_once_and_correctly() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "relaypar");
    let o = ou.dn.clone();
    let names: Vec<String> = (0..12).map(|i| format!("p{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    dir.modify(&users(&o, &refs));
    let scim = ScimServer::start();
    let (hub, agent, _run) = agent_a1_active(&dir, &o, &scim);
    // 12 clients x 4 requests at once: the hub hands them out in batches, the agent answers
    // them concurrently; every answer must be the one asked for.
    let hub = std::sync::Arc::new(hub);
    let threads: Vec<_> = names
        .iter()
        .cloned()
        .map(|n| {
            let hub = hub.clone();
            std::thread::spawn(move || {
                for _ in 0..4 {
                    let f = url_encode(&format!("userName eq \"{n}\""));
                    let (s, v) = hub.scim("a1", &format!("/Users?filter={f}"));
                    assert_eq!(s, 200, "{v}");
                    assert_eq!(v["Resources"][0]["title"], format!("t-{n}"), "{v}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let log = agent.log();
    let n = requests_handled_once(&log);
    assert!(n >= 48, "{n} requests logged: {log}");
}

/// How often the agent's log says the cloud's `resync` ran (the command's one effect line).
fn resyncs_run(agent: &Agent) -> usize {
    agent
        .log()
        .matches("a full pass was requested by the cloud")
        .count()
}

/// Sends a signal to a child we started, by its PID.
fn signal(run: &Running, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &run.0.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

/// An agent a1 that reaches its hub through a fault proxy (to lose its answers on the way),
/// running until the hub counts it active.
fn agent_behind_a_proxy(
    dir: &Dir,
    ou: &str,
    scim: &ScimServer,
) -> (Hub, common::faultproxy::FaultProxy, Agent, Running) {
    let hub = start_hub(&[("a1", "branch", "agent-token-a1")]);
    let proxy = common::faultproxy::FaultProxy::http(hub.port);
    let agent = Agent::with_relay(dir, &[ou], scim, &hub, ("a1", "agent-token-a1"), "");
    agent.edit_config(&hub.url(), &proxy.http_url(""));
    let run = Running(agent.spawn(&["run"]));
    assert!(
        wait_until(60, || hub.role("a1").as_deref() == Some("active")
            && agent.log().contains("objects in step")),
        "{}",
        agent.log()
    );
    (hub, proxy, agent, run)
}

/// Queues `resync` for a1 while the proxy loses every answer, and waits until the agent has
/// run it (and kept its answer); the request id.
fn resync_with_its_answer_lost(
    hub: &Hub,
    proxy: &common::faultproxy::FaultProxy,
    agent: &Agent,
) -> String {
    proxy.refuse_path("/responses", 503);
    let (s, v) = hub.op(
        "POST",
        "/v1/agents/a1/commands",
        Some(r#"{"command":"resync"}"#),
    );
    assert_eq!(s, 202, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    assert!(
        wait_until(30, || agent.log().contains(&format!(
            "relay: request {id} (command resync) answered 202"
        ))),
        "{}",
        agent.log()
    );
    assert_eq!(resyncs_run(agent), 1);
    id
}

/// The line the agent logs when it answers a re-delivery of `id` with what it kept.
fn redelivered_line(id: &str) -> String {
    format!("relay: re-delivered {id} (command resync) was answered 202 before")
}

/// Waits until the agent logs more than `before` answers to re-deliveries of `id` from
/// what it kept, then lets answers through the proxy.
///
/// Not sooner: a post of the answer that the agent sent just before it was killed or
/// reloaded may still sit unread in the proxy; read after the paths are accepted, it would
/// reach the hub, and no re-delivery would show that the agent kept the answer.
///
/// On failure the message shows every request the proxy saw: which way an answer went.
fn accept_after_a_redelivery(
    proxy: &common::faultproxy::FaultProxy,
    agent: &Agent,
    id: &str,
    before: usize,
) {
    assert!(
        wait_until(60, || agent.log().matches(&redelivered_line(id)).count()
            > before),
        "no re-delivery of {id} answered from what was kept: {}\n--- proxy ---\n{}",
        agent.log(),
        proxy
            .events()
            .iter()
            .map(|e| format!("{:?} {} {} {:?}\n", e.at, e.method, e.path, e.action))
            .collect::<String>()
    );
    proxy.accept_paths();
}

/// The answer the hub finally got for `id` (re-delivered every 5 s until answered).
fn answer_reaches_the_hub(hub: &Hub, id: &str, agent: &Agent) -> (u16, Value) {
    let mut answer = None;
    wait_until(60, || {
        let (s, v) = hub.op("GET", &format!("/v1/requests/{id}"), None);
        if s == 200 {
            answer = Some((v["status"].as_u64().unwrap_or(0) as u16, v["body"].clone()));
        }
        answer.is_some()
    });
    answer.unwrap_or_else(|| panic!("{id} never answered: {}\nhub: {}", agent.log(), hub.log()))
}

#[test]
fn a_command_redelivered_after_a_reload_is_answered_again_not_run_again() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "replyreload");
    let o = ou.dn.clone();
    dir.modify(&users(&o, &["q0"]));
    let scim = ScimServer::start();
    let (hub, proxy, agent, run) = agent_behind_a_proxy(&dir, &o, &scim);
    let id = resync_with_its_answer_lost(&hub, &proxy, &agent);

    // A reload (SIGHUP) while the answer has not reached the hub; the hub re-delivers the
    // request, and the link heals.
    let before = agent.log().matches(&redelivered_line(&id)).count();
    signal(&run, "-HUP");
    assert!(
        wait_until(30, || agent.log().matches("relay: connecting to").count()
            >= 2),
        "no reload: {}",
        agent.log()
    );
    accept_after_a_redelivery(&proxy, &agent, &id, before);
    let (status, body) = answer_reaches_the_hub(&hub, &id, &agent);
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], "resync", "{body}");
    let log = agent.log();
    assert_eq!(resyncs_run(&agent), 1, "the resync ran twice: {log}");
    assert!(log.contains(&redelivered_line(&id)), "{log}");
}

#[test]
fn a_command_answered_just_before_a_restart_is_not_run_again() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "replyrestart");
    let o = ou.dn.clone();
    dir.modify(&users(&o, &["k0"]));
    let scim = ScimServer::start();
    let (hub, proxy, agent, mut run) = agent_behind_a_proxy(&dir, &o, &scim);
    let id = resync_with_its_answer_lost(&hub, &proxy, &agent);

    // Killed (no chance to post or tidy up) right after answering, then started again;
    // the hub re-delivers the request, and the link heals.
    let before = agent.log().matches(&redelivered_line(&id)).count();
    let _ = run.0.kill();
    let _ = run.0.wait();
    let _run = Running(agent.spawn(&["run"]));
    accept_after_a_redelivery(&proxy, &agent, &id, before);
    let (status, body) = answer_reaches_the_hub(&hub, &id, &agent);
    assert_eq!(status, 202, "{body}");
    let log = agent.log();
    assert_eq!(
        resyncs_run(&agent),
        1,
        "the resync ran again after the restart: {log}"
    );
    assert!(log.contains(&redelivered_line(&id)), "{log}");
    // The answer on disk is the owner's alone.
    let stored = agent
        .tmp
        .path()
        .join("state/relay-replies")
        .join(format!("{id}.json"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&stored).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// A SCIM GET through the hub with the operator token: (status, Retry-After header).
fn scim_status(hub: &Hub, agent: &str, token: &str) -> (u16, Option<String>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", hub.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    let req = format!(
        "GET /agents/{agent}/scim/v2/Users HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    let retry = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("retry-after: ")
                .or_else(|| l.strip_prefix("Retry-After: "))
        })
        .map(str::to_string);
    (status, retry)
}

#[test]
fn a_killed_agent_is_answered_503_through_the_hub_within_2_s() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "killed");
    let o = ou.dn.clone();
    dir.modify(&users(&o, &["d0"]));
    let scim = ScimServer::start();
    let (hub, agent, mut run) = agent_a1_active(&dir, &o, &scim);
    let token = common::hub_token(OPERATOR);
    assert_eq!(scim_status(&hub, "a1", &token).0, 200, "{}", agent.log());
    // Give the agent time to hold its next poll, then SIGKILL it.
    std::thread::sleep(Duration::from_millis(500));
    let _ = run.0.kill();
    let _ = run.0.wait();
    let t0 = std::time::Instant::now();
    let mut last = (0, None);
    let answered = wait_until(10, || {
        last = scim_status(&hub, "a1", &token);
        last.0 == 503
    });
    let took = t0.elapsed();
    eprintln!(
        "503 through the hub {} ms after the SIGKILL",
        took.as_millis()
    );
    assert!(answered, "{last:?}: {}", hub.log());
    assert!(took <= Duration::from_secs(2), "503 only after {took:?}");
    assert!(last.1.is_some(), "503 without Retry-After");
}

#[test]
fn an_agent_started_before_its_hub_is_active_and_provisioning_within_5_s_of_it() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "hublate");
    let o = ou.dn.clone();
    dir.modify(&users(&o, &["e0", "e1"]));
    let scim = ScimServer::start();
    // Default settings on both sides (heartbeats every 60 s, polls held 30 s).
    let mut hub = Hub::start(OPERATOR, "", &[("a1", "branch", "agent-token-a1")]);
    hub.stop();
    let agent = Agent::with_relay(&dir, &[&o], &scim, &hub, ("a1", "agent-token-a1"), "");
    agent.edit_config("heartbeat_secs = 5\npoll_wait_secs = 5\n", "");
    let _run = Running(agent.spawn(&["run"]));
    assert!(
        wait_until(30, || agent.log().contains("heartbeat failed")),
        "{}",
        agent.log()
    );
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        !agent
            .log()
            .contains("another agent of this directory group is active"),
        "there is no other agent: {}",
        agent.log()
    );
    hub.spawn();
    let t0 = std::time::Instant::now();
    let active = wait_until(30, || hub.role("a1").as_deref() == Some("active"));
    let to_active = t0.elapsed();
    let provisioned = wait_until(30, || scim.all("Users").len() == 2);
    let to_provisioned = t0.elapsed();
    eprintln!(
        "after the hub came up: active in {} ms, both users provisioned in {} ms",
        to_active.as_millis(),
        to_provisioned.as_millis()
    );
    assert!(active && provisioned, "{}", agent.log());
    assert!(
        to_active <= Duration::from_secs(5),
        "active only after {to_active:?}"
    );
    assert!(
        to_provisioned <= Duration::from_secs(5),
        "provisioning only after {to_provisioned:?}: {}",
        agent.log()
    );
    // The hub shows the role the agent reports at once (a heartbeat follows the lease
    // change), not after the 60 s interval.
    assert!(
        wait_until(3, || {
            let (_, v) = hub.op("GET", "/v1/agents", None);
            v[0]["heartbeat"]["role"] == "active"
        }),
        "{}",
        hub.op("GET", "/v1/agents", None).1
    );
}

/// An agent the hub does not know yet (its `[[agent]]` is added later, as an administrator
/// does) logs the hub's own words for the 401 and what to check, and once the hub knows it,
/// it answers requests within a heartbeat or two: the poll loop does not sit out its 5 min
/// wait.
#[test]
fn an_agent_added_to_the_hub_later_answers_requests_within_two_heartbeats() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "hubadd");
    let o = ou.dn.clone();
    dir.modify(&users(&o, &["k0"]));
    let scim = ScimServer::start();
    let mut hub = start_hub(&[("a2", "branch", "agent-token-a2")]);
    let agent = Agent::with_relay(&dir, &[&o], &scim, &hub, ("a1", "agent-token-a1"), "");
    let _run = Running(agent.spawn(&["run"]));
    // Both loops are told no; each says what the hub said.
    assert!(
        wait_until(30, || {
            let log = agent.log();
            log.contains("relay: heartbeat failed")
                && log.contains("retrying in 5 min, or once a heartbeat is answered")
                && log
                    .matches(
                        "refused agent `a1` (HTTP 401: unknown agent or wrong token); check \
                         relay.token_file, and that the hub's config has an [[agent]] with \
                         id = \"a1\"",
                    )
                    .count()
                    >= 2
        }),
        "{}",
        agent.log()
    );
    hub.stop();
    hub.add_agent("a1", "branch", "agent-token-a1");
    hub.spawn();
    let t0 = std::time::Instant::now();
    // A read through the hub is held until the agent polls; the link says when it is back.
    assert!(
        wait_until(30, || agent
            .log()
            .contains("relay: the hub answers polls again")),
        "{}",
        agent.log()
    );
    let back = t0.elapsed();
    let (status, v) = hub.scim("a1", "/Users?filter=userName%20eq%20%22k0%22");
    let took = t0.elapsed();
    eprintln!(
        "after the hub knew the agent: polls again in {} ms, a read answered in {} ms",
        back.as_millis(),
        took.as_millis()
    );
    assert_eq!(status, 200, "{v}: {}", agent.log());
    assert_eq!(v["totalResults"], 1, "{v}");
    // Heartbeats every 5 s: within two of them, not the poll loop's 5 min.
    assert!(
        back <= Duration::from_secs(15),
        "polls again only after {back:?}"
    );
}

#[test]
fn commands_queued_before_hub_restarts_reach_the_agent_after_them_once() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "hubkeeps");
    let o = ou.dn.clone();
    dir.modify(&users(&o, &["p0"]));
    let scim = ScimServer::start();
    let (mut hub, agent, run) = agent_a1_active(&dir, &o, &scim);
    // The agent goes away: what the operator sends waits in the hub.
    drop(run);
    let mut ids = Vec::new();
    for (round, kill) in [(0, true), (1, false)] {
        for i in 0..50 {
            let body =
                format!(r#"{{"command":"provision","target":"no-such-anchor-{round}-{i}"}}"#);
            let (s, v) = hub.op("POST", "/v1/agents/a1/commands", Some(&body));
            assert_eq!(s, 202, "{v}");
            ids.push(v["id"].as_str().unwrap().to_string());
        }
        // Killed (SIGKILL), then stopped as an operator stops it (SIGTERM), and started.
        if kill {
            hub.stop();
        } else {
            hub.terminate();
        }
        hub.spawn();
    }
    let _run = Running(agent.spawn(&["run"]));
    let answered = |id: &str| {
        let (s, v) = hub.op("GET", &format!("/v1/requests/{id}"), None);
        s == 200 && v["status"] == 404
    };
    assert!(
        wait_until(60, || ids.iter().all(|id| answered(id))),
        "not all answered: {}\nhub: {}",
        agent.log(),
        hub.log()
    );
    let log = agent.log();
    requests_handled_once(&log);
    for id in &ids {
        assert_eq!(
            log.matches(&format!("relay: request {id} ")).count(),
            1,
            "{id}: {log}"
        );
    }
}
