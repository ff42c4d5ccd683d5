//! The relay end to end with real binaries on loopback: `idrelay run` with `[relay]` next to
//! slapd and scim2-server, and `idrelay-hub`. The cloud reads the branch directory as a
//! SCIM endpoint through the agent's long-poll, sends commands, cannot write or leave the
//! scope; a restarted hub is reconnected to; two agents of one directory fail over.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{
    free_port, url_encode, wait_until, write_secret, Agent, Dir, ScimServer, TempDir, TestOu,
};
use serde_json::Value;

const OPERATOR: &str = "operator-token-for-tests";

struct Hub {
    child: Option<Child>,
    port: u16,
    config: PathBuf,
    log: PathBuf,
    _tmp: TempDir,
}

impl Hub {
    /// A hub for `agents` (id, group, token), heartbeats every `hb` seconds.
    fn start(agents: &[(&str, &str, &str)], hb: u64) -> Hub {
        let tmp = TempDir::new("hub");
        let p = tmp.path().to_path_buf();
        write_secret(&p.join("operator.token"), OPERATOR);
        let mut text = format!(
            "listen = \"127.0.0.1:{port}\"\noperator_token_file = \"{op}\"\nheartbeat_secs = {hb}\nlease_ttl_heartbeats = 3\npoll_wait_secs = 5\nredeliver_secs = 5\nforward_timeout_secs = 20\n",
            port = free_port(),
            op = p.join("operator.token").display()
        );
        for (id, group, token) in agents {
            let f = p.join(format!("{id}.token"));
            write_secret(&f, token);
            text.push_str(&format!(
                "\n[[agent]]\nid = \"{id}\"\ngroup = \"{group}\"\ntoken_file = \"{}\"\n",
                f.display()
            ));
        }
        let config = p.join("hub.toml");
        std::fs::write(&config, &text).unwrap();
        let port: u16 = text
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        let mut hub = Hub {
            child: None,
            port,
            config,
            log: p.join("hub.log"),
            _tmp: tmp,
        };
        hub.spawn();
        hub
    }

    fn spawn(&mut self) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_idrelay-hub"))
            .args(["--config", self.config.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        assert!(
            wait_until(20, || TcpStream::connect(("127.0.0.1", self.port)).is_ok()),
            "hub did not listen: {}",
            self.log()
        );
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An operator request; (status, JSON body or Null).
    fn op(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {OPERATOR}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw).to_string();
        let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let rest = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(rest)
        } else {
            rest.to_string()
        };
        (status, serde_json::from_str(&rest).unwrap_or(Value::Null))
    }

    fn scim(&self, agent: &str, path_and_query: &str) -> (u16, Value) {
        self.op(
            "GET",
            &format!("/agents/{agent}/scim/v2{path_and_query}"),
            None,
        )
    }

    fn role(&self, agent: &str) -> Option<String> {
        let (_, v) = self.op("GET", "/v1/agents", None);
        v.as_array()?
            .iter()
            .find(|a| a["agent"] == agent)
            .and_then(|a| a["role"].as_str().map(str::to_string))
    }

    /// Sends a command and waits for the agent's answer; (status, body).
    fn command(&self, agent: &str, body: &str) -> (u16, Value) {
        let (s, v) = self.op("POST", &format!("/v1/agents/{agent}/commands"), Some(body));
        assert_eq!(s, 202, "command not queued: {v}");
        let id = v["id"].as_str().unwrap().to_string();
        let mut answer = (0, Value::Null);
        assert!(
            wait_until(30, || {
                let (s, v) = self.op("GET", &format!("/v1/requests/{id}"), None);
                if s == 200 {
                    answer = (v["status"].as_u64().unwrap_or(0) as u16, v["body"].clone());
                    true
                } else {
                    false
                }
            }),
            "no answer to {body}: {}",
            self.log()
        );
        answer
    }
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Running(Child);
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn relay_section(hub: &Hub, agent_id: &str, token: &str, agent: &Agent) -> String {
    let f = agent.tmp.path().join("relay.token");
    write_secret(&f, token);
    format!(
        "\n[relay]\nurl = \"{}\"\ntoken_file = \"{}\"\ngroup = \"branch\"\nheartbeat_secs = 5\npoll_wait_secs = 5\n",
        hub.url(),
        f.display()
    )
    .replace("test-agent", agent_id)
}

fn agent_with_relay(
    dir: &Dir,
    include: &str,
    scim: &ScimServer,
    hub: &Hub,
    id: &str,
    token: &str,
) -> Agent {
    let agent = Agent::new(dir, &[include], &scim.base_url(), &scim.token, "");
    agent.edit_config("id = \"test-agent\"", &format!("id = \"{id}\""));
    let relay = relay_section(hub, id, token, &agent);
    let mut text = std::fs::read_to_string(&agent.config).unwrap();
    text.push_str(&relay);
    std::fs::write(&agent.config, text).unwrap();
    agent
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
    let hub = Hub::start(&[("a1", "branch", "agent-token-a1")], 5);
    let agent = agent_with_relay(&dir, &o, &scim, &hub, "a1", "agent-token-a1");
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
    let (s, v) = hub.command(
        "a1",
        r#"{"command":"set-profile","profile":"[user.bogus]\nx = 1\n"}"#,
    );
    assert_eq!(s, 400, "{v}");
    let (s, v) = hub.command("a1", r#"{"command":"resync"}"#);
    assert_eq!(s, 202, "{v}");
    assert!(
        wait_until(30, || agent.log().contains("full pass owed (requested)")),
        "{}",
        agent.log()
    );
    // The heartbeat reached the hub with the agent's facts; status shows the relay.
    let (_, agents) = hub.op("GET", "/v1/agents", None);
    let hb = &agents.as_array().unwrap()[0]["heartbeat"];
    assert_eq!(hb["group"], "branch", "{agents}");
    assert!(hb["queue"]["depth"].is_u64(), "{agents}");
    let st = agent.run(&["status"]);
    assert!(
        st.stdout.contains("relay:") && st.stdout.contains("ACTIVE"),
        "{}",
        st.stdout
    );
    assert!(!hub.log().contains("agent-token-a1") && !agent.log().contains("agent-token-a1"));
}

#[test]
fn a_restarted_hub_is_reconnected_to_and_requests_still_get_answers() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "hubrestart");
    let o = ou.dn.clone();
    dir.modify(&users(&o, &["h0"]));
    let scim = ScimServer::start();
    let mut hub = Hub::start(&[("a1", "branch", "agent-token-a1")], 5);
    let agent = agent_with_relay(&dir, &o, &scim, &hub, "a1", "agent-token-a1");
    let _run = Running(agent.spawn(&["run"]));
    assert!(
        wait_until(60, || hub.role("a1").as_deref() == Some("active")),
        "{}",
        agent.log()
    );
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
    let log = agent.log();
    let mut ids: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split("relay: request ").nth(1))
        .filter_map(|r| r.split_whitespace().next())
        .collect();
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "a request was handled twice: {log}");
}

#[test]
fn two_agents_of_one_directory_fail_over_within_three_heartbeats() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "failover");
    let o = ou.dn.clone();
    dir.modify(&users(&o, &["f0", "f1"]));
    let scim = ScimServer::start();
    let hub = Hub::start(&[("a1", "branch", "tok-a1"), ("a2", "branch", "tok-a2")], 5);
    let first = agent_with_relay(&dir, &o, &scim, &hub, "a1", "tok-a1");
    let second = agent_with_relay(&dir, &o, &scim, &hub, "a2", "tok-a2");
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
