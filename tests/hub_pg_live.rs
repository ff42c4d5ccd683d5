//! `idrelay-hub` with `storage = "postgres"` against the testbed's PostgreSQL
//! (`scripts/testbed/postgres.sh`, `IDRELAY_TEST_PG_URL`): a restart with 1,000 queued
//! commands, and two replicas on one database (a command queued through one reaches a
//! poll held on the other; one lease holder; a replica killed loses nothing). Each test
//! has a database of its own, so they run side by side.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::hub_process::{HubProcess, Tokens};

const OPERATOR: &str = "operator-secret-token-9fK2";
const A1: &str = "agent-one-token-Hq81x2Zb";
const A2: &str = "agent-two-token-Pw73c0Yn";
const TOKENS: Tokens = Tokens {
    operator: OPERATOR,
    a1: A1,
    a2: A2,
};

// ---------------------------------------------------------------------------------------
// Harness: a database per test, hubs on it, a tiny HTTP/1.1 client.

/// A database of its own on the testbed's server, dropped (forcefully) at the end.
struct Db {
    admin: String,
    name: String,
    url_file: PathBuf,
    password: String,
}

impl Db {
    fn create(tag: &str) -> Db {
        let admin = common::env("IDRELAY_TEST_PG_URL");
        let name = format!("hub_{tag}_{}_{:x}", std::process::id(), fastrand::u32(..));
        psql(&admin, &format!("CREATE DATABASE {name}"));
        let (base, _) = admin.rsplit_once('/').expect("a URL with a database");
        let url = format!("{base}/{name}");
        let password = url
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .and_then(|(cred, _)| cred.split_once(':'))
            .map(|(_, p)| p.to_string())
            .unwrap_or_default();
        let dir = common::hub_process::scratch_dir(&format!("pgurl-{tag}"));
        let url_file = dir.join("database-url");
        common::write_secret(&url_file, &format!("{url}\n"));
        Db {
            admin,
            name,
            url_file,
            password,
        }
    }

    /// The config lines of a hub on this database.
    fn config(&self, extra: &str) -> String {
        format!(
            "storage = \"postgres\"\ndatabase_url_file = \"{}\"\n{extra}",
            self.url_file.display()
        )
    }

    fn query(&self, sql: &str) -> String {
        let (base, _) = self.admin.rsplit_once('/').unwrap();
        psql(&format!("{base}/{}", self.name), sql)
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                self.admin.as_str(),
                "-qAtc",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
        if let Some(dir) = self.url_file.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-qAtc", sql])
        .output()
        .expect("psql (Debian's postgresql-client)");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn hub(db: &Db, tag: &str, extra: &str) -> HubProcess {
    HubProcess::launch(tag, TOKENS, &db.config(extra))
}

#[derive(Debug)]
struct Resp {
    status: u16,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to hub");
    s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Resp {
        status,
        body: body.to_string(),
    }
}

fn operator(hub: &HubProcess, method: &str, path: &str, body: &str) -> Resp {
    let auth = format!("Bearer {OPERATOR}");
    http(hub.port, method, path, &[("Authorization", &auth)], body)
}

fn agent_call(hub: &HubProcess, agent: &str, instance: &str, what: &str, body: &Value) -> Resp {
    let token = if agent == "a1" { A1 } else { A2 };
    let auth = format!("Bearer {token}");
    http(
        hub.port,
        "POST",
        &format!("/v1/agents/{agent}/{what}"),
        &[
            ("Authorization", &auth),
            ("Idrelay-Protocol", "1"),
            ("Idrelay-Agent", agent),
            ("Idrelay-Instance", instance),
            ("Content-Type", "application/json"),
        ],
        &body.to_string(),
    )
}

fn poll(hub: &HubProcess, wait_secs: u64) -> Vec<String> {
    let r = agent_call(hub, "a1", "i1", "poll", &json!({ "wait_secs": wait_secs }));
    if r.status == 204 {
        return Vec::new();
    }
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

fn queue(hub: &HubProcess, i: usize) -> String {
    let body = json!({"command": "provision", "target": format!("uid=u{i},dc=example")});
    let r = operator(hub, "POST", "/v1/agents/a1/commands", &body.to_string());
    assert_eq!(r.status, 202, "{}\n{}", r.body, hub.log());
    r.json()["id"].as_str().unwrap().to_string()
}

fn answer_all(hub: &HubProcess, ids: &[String]) {
    let responses: Vec<Value> = ids
        .iter()
        .map(|id| json!({"id": id, "status": 202, "body": {"n": id}}))
        .collect();
    let r = agent_call(
        hub,
        "a1",
        "i1",
        "responses",
        &json!({ "responses": responses }),
    );
    assert_eq!(r.status, 204, "{}", r.body);
}

/// Polls until a poll of `wait_secs` brings nothing; how often each id came.
fn drain(hub: &HubProcess, wait_secs: u64, seen: &mut HashMap<String, usize>) {
    loop {
        let ids = poll(hub, wait_secs);
        if ids.is_empty() {
            return;
        }
        for id in ids {
            *seen.entry(id).or_insert(0) += 1;
        }
    }
}

fn answered(hub: &HubProcess, id: &str) -> Value {
    let r = operator(hub, "GET", &format!("/v1/requests/{id}"), "");
    assert_eq!(r.status, 200, "{id}: {}\n{}", r.body, hub.log());
    r.json()
}

fn heartbeat(hub: &HubProcess, agent: &str, instance: &str) -> String {
    let r = agent_call(
        hub,
        agent,
        instance,
        "heartbeat",
        &json!({"version": "test", "group": "g", "instance": instance, "uptime_secs": 1,
                "state": "following", "role": "standby"}),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body, hub.log());
    r.json()["lease"]["role"].as_str().unwrap().to_string()
}

// ---------------------------------------------------------------------------------------

#[test]
fn a_thousand_queued_commands_outlive_a_restart_on_postgres_and_each_is_delivered_once() {
    const N: usize = 1000;
    let db = Db::create("restart");
    let mut hub = hub(&db, "pg-restart", "redeliver_secs = 8\n");
    assert_eq!(db.query("SELECT max(version) FROM schema_version"), "2");
    let ids: Vec<String> = (0..N).map(|i| queue(&hub, i)).collect();
    let delivered_at = Instant::now();
    let first = poll(&hub, 1);
    assert_eq!(first, ids[..100]);
    answer_all(&hub, &first[..50]);
    assert_eq!(heartbeat(&hub, "a1", "i1"), "active");

    hub.restart(false);
    assert!(
        hub.log()
            .contains("950 command(s) waiting for their agent, 50 answer(s) kept"),
        "{}",
        hub.log()
    );
    let mut seen = HashMap::new();
    drain(&hub, 1, &mut seen);
    assert!(
        delivered_at.elapsed() < Duration::from_secs(8),
        "too slow to tell"
    );
    assert_eq!(seen.len(), N - 100, "{}", hub.log());
    assert!(seen.values().all(|&n| n == 1), "delivered twice");
    assert!(ids[100..].iter().all(|id| seen.contains_key(id)));
    for id in &first[..50] {
        assert_eq!(answered(&hub, id)["body"]["n"], id.as_str());
    }
    answer_all(&hub, &ids[100..]);
    // The lease is the database's: the holder keeps it, the other agent waits.
    assert_eq!(heartbeat(&hub, "a2", "i2"), "standby");
    assert_eq!(heartbeat(&hub, "a1", "i1"), "active");

    hub.restart(true);
    // The 50 delivered and unanswered come once more when due, and only then.
    let mut again = Vec::new();
    while again.len() < 50 && delivered_at.elapsed() < Duration::from_secs(30) {
        again.extend(poll(&hub, 2));
    }
    assert!(delivered_at.elapsed() >= Duration::from_millis(7_990));
    again.sort();
    let mut want = first[50..].to_vec();
    want.sort();
    assert_eq!(again, want, "{}", hub.log());
    answer_all(&hub, &first[50..]);
    assert!(poll(&hub, 1).is_empty());
    assert_eq!(db.query("SELECT count(*) FROM requests"), "0");
    assert_eq!(db.query("SELECT count(*) FROM results"), "1000");
    // The URL's password is in no log line.
    assert!(!db.password.is_empty());
    assert!(!hub.log().contains(&db.password), "{}", hub.log());
    assert!(hub
        .log()
        .contains(&format!("PostgreSQL database `{}`", db.name)));
}

#[test]
fn a_command_queued_through_one_replica_reaches_a_poll_held_on_the_other() {
    let db = Db::create("across");
    let a = hub(&db, "pg-across-a", "");
    let b = hub(&db, "pg-across-b", "");
    let a = Arc::new(a);
    let held = {
        let a = a.clone();
        thread::spawn(move || {
            let t = Instant::now();
            (poll(&a, 20), t.elapsed())
        })
    };
    thread::sleep(Duration::from_millis(500));
    let id = queue(&b, 1);
    let (got, took) = held.join().unwrap();
    assert_eq!(got, std::slice::from_ref(&id), "{}", a.log());
    assert!(
        took < Duration::from_secs(5),
        "woken, not found by a timer: {took:?}"
    );
    // Answered through A: B, which queued it, has the answer.
    answer_all(&a, std::slice::from_ref(&id));
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let r = operator(&b, "GET", &format!("/v1/requests/{id}"), "");
        let v = r.json();
        if r.status == 200 && v["state"] == "answered" {
            assert_eq!(v["body"]["n"], id.as_str());
            break;
        }
        assert!(Instant::now() < until, "{v}\n{}", b.log());
        thread::sleep(Duration::from_millis(50));
    }
    // Nothing comes back on either replica.
    assert!(poll(&a, 1).is_empty());
    assert!(poll(&b, 1).is_empty());
}

#[test]
fn polls_on_two_replicas_never_get_the_same_command() {
    let db = Db::create("race");
    let a = Arc::new(hub(&db, "pg-race-a", "redeliver_secs = 120\n"));
    let b = Arc::new(hub(&db, "pg-race-b", "redeliver_secs = 120\n"));
    const N: usize = 300;
    let seen = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pollers: Vec<_> = [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .map(|h| {
            let seen = seen.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    for id in poll(&h, 1) {
                        *seen.lock().unwrap().entry(id).or_insert(0) += 1;
                    }
                }
            })
        })
        .collect();
    let ids: Vec<String> = (0..N)
        .map(|i| queue(if i % 2 == 0 { &a } else { &b }, i))
        .collect();
    let until = Instant::now() + Duration::from_secs(20);
    while seen.lock().unwrap().len() < N && Instant::now() < until {
        thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for p in pollers {
        p.join().unwrap();
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), N, "{}\n{}", a.log(), b.log());
    assert!(
        ids.iter().all(|id| seen.get(id) == Some(&1)),
        "a command went twice"
    );
}

#[test]
fn two_agents_of_one_group_on_two_replicas_never_both_hold_the_lease() {
    let db = Db::create("lease");
    let a = Arc::new(hub(&db, "pg-lease-a", ""));
    let b = Arc::new(hub(&db, "pg-lease-b", ""));
    let beats = |h: Arc<HubProcess>, agent: &'static str| {
        thread::spawn(move || {
            (0..25)
                .map(|_| heartbeat(&h, agent, &format!("{agent}-i")))
                .collect::<Vec<String>>()
        })
    };
    let one = beats(a.clone(), "a1");
    let two = beats(b.clone(), "a2");
    let (one, two) = (one.join().unwrap(), two.join().unwrap());
    let active1 = one.iter().filter(|r| *r == "active").count();
    let active2 = two.iter().filter(|r| *r == "active").count();
    // One of them got it first and kept it (the TTL is minutes): the other never did.
    assert!(
        (active1 == 25 && active2 == 0) || (active1 == 0 && active2 == 25),
        "a1 {one:?}\na2 {two:?}"
    );
    // Both replicas show the same holder.
    let holder = if active1 == 25 { "a1" } else { "a2" };
    for h in [&a, &b] {
        let agents = operator(h, "GET", "/v1/agents", "").json();
        let active: Vec<&Value> = agents
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["role"] == "active")
            .collect();
        assert!(
            active.len() <= 1 && active.iter().all(|x| x["agent"] == holder),
            "{agents}"
        );
    }
}

#[test]
fn a_replica_killed_mid_run_loses_nothing() {
    let db = Db::create("kill");
    let a = hub(&db, "pg-kill-a", "redeliver_secs = 4\n");
    let mut b = hub(&db, "pg-kill-b", "redeliver_secs = 4\n");
    const N: usize = 200;
    let ids: Vec<String> = (0..N)
        .map(|i| queue(if i % 2 == 0 { &a } else { &b }, i))
        .collect();
    // The agent is on B: one batch delivered, half of it answered; then B is killed.
    let first = poll(&b, 1);
    assert_eq!(first.len(), 100);
    answer_all(&b, &first[..50]);
    let killed_at = Instant::now();
    b.child.kill().unwrap();
    b.child.wait().unwrap();

    // The agent reconnects to A: the 100 never delivered at once; the 50 B handed out but
    // never saw answered as soon as B's database connections are gone (a claim in the
    // moment before sees them held and asks again within 2 s); each once.
    let mut seen = HashMap::new();
    drain(&a, 1, &mut seen);
    assert!(
        killed_at.elapsed() < Duration::from_secs(3),
        "too slow to tell"
    );
    assert!(seen.len() >= N - 100, "{}", a.log());
    while seen.len() < N - 50 && killed_at.elapsed() < Duration::from_secs(20) {
        for id in poll(&a, 2) {
            *seen.entry(id).or_insert(0) += 1;
        }
    }
    assert_eq!(seen.len(), N - 50, "{}", a.log());
    assert!(seen.values().all(|&n| n == 1), "delivered twice");
    let mut got: Vec<&String> = seen.keys().collect();
    got.sort();
    let mut want: Vec<&String> = ids.iter().filter(|id| !first[..50].contains(id)).collect();
    want.sort();
    assert_eq!(got, want, "{}", a.log());
    answer_all(&a, &want.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    for id in &ids {
        assert_eq!(answered(&a, id)["state"], "answered", "{id}");
    }
    assert_eq!(db.query("SELECT count(*) FROM requests"), "0");
}

#[test]
fn a_command_a_killed_replica_handed_out_unanswered_goes_out_again_within_seconds() {
    let db = Db::create("orphan");
    // Far longer than the test: only B's death can free the command.
    let a = hub(&db, "pg-orphan-a", "redeliver_secs = 300\n");
    let mut b = hub(&db, "pg-orphan-b", "redeliver_secs = 300\n");
    let id = queue(&a, 1);
    // B hands it to the agent's poll; the answer never reaches the hub (B dies first).
    let mut got = Vec::new();
    let until = Instant::now() + Duration::from_secs(10);
    while got.is_empty() && Instant::now() < until {
        got = poll(&b, 2);
    }
    assert_eq!(got, vec![id.clone()], "{}", b.log());
    // While B lives, its poll holds it: A does not hand it out (the agent polled A too,
    // so A learned who holds it).
    assert!(poll(&a, 2).is_empty(), "handed out twice while B lives");
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    let killed = Instant::now();
    let mut again = Vec::new();
    while again.is_empty() && killed.elapsed() < Duration::from_secs(15) {
        again = poll(&a, 1);
    }
    assert_eq!(
        again,
        vec![id.clone()],
        "not handed out again within 15 s of B's death (redeliver_secs = 300)\n{}",
        a.log()
    );
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "{:?} after B's death",
        killed.elapsed()
    );
    answer_all(&a, &again);
    assert_eq!(answered(&a, &id)["state"], "answered");
    assert_eq!(db.query("SELECT count(*) FROM requests"), "0");
}

// ---------------------------------------------------------------------------------------
// SCIM forwards across replicas.

/// A poll of `a1` on `hub`: the envelopes it carried.
fn poll_envelopes(hub: &HubProcess, wait_secs: u64) -> Vec<Value> {
    let r = agent_call(hub, "a1", "i1", "poll", &json!({ "wait_secs": wait_secs }));
    if r.status == 204 {
        return Vec::new();
    }
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["requests"].as_array().unwrap().clone()
}

/// `a1` answers request `id` on `hub` with `status` and `body`.
fn answer_one(hub: &HubProcess, id: &str, status: u16, body: &Value) {
    let r = agent_call(
        hub,
        "a1",
        "i1",
        "responses",
        &json!({"responses": [{"id": id, "status": status, "body": body}]}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
}

/// Rows of the forwards table.
fn forward_rows(db: &Db) -> String {
    db.query("SELECT count(*) FROM forwards")
}

#[test]
fn a_scim_forward_through_one_replica_reaches_the_poll_held_on_the_other_and_its_answer_comes_back()
{
    let db = Db::create("fwd");
    let a = Arc::new(hub(&db, "pg-fwd-a", "forward_timeout_secs = 20\n"));
    let b = Arc::new(hub(&db, "pg-fwd-b", "forward_timeout_secs = 20\n"));
    // The agent heartbeats and polls on A only.
    assert_eq!(heartbeat(&a, "a1", "i1"), "active");
    const SECRET_NAME: &str = "Zelda-Quill-Personal-7731";
    let agent = {
        let a = a.clone();
        thread::spawn(move || {
            let mut got = Vec::new();
            let until = Instant::now() + Duration::from_secs(30);
            while got.len() < 2 && Instant::now() < until {
                for e in poll_envelopes(&a, 5) {
                    let id = e["id"].as_str().unwrap().to_string();
                    let (status, body) = match e["method"].as_str().unwrap() {
                        "GET" => (
                            200,
                            json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
                                   "totalResults": 1,
                                   "Resources": [{"id": "YW5u", "userName": SECRET_NAME}]}),
                        ),
                        _ => (
                            201,
                            json!({"id": "bmV3", "userName": e["body"]["userName"].clone()}),
                        ),
                    };
                    answer_one(&a, &id, status, &body);
                    got.push(e);
                }
            }
            got
        })
    };
    thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let r = operator(&b, "GET", "/agents/a1/scim/v2/Users?count=5", "");
    assert_eq!(r.status, 200, "{}\nA: {}\nB: {}", r.body, a.log(), b.log());
    assert_eq!(r.json()["Resources"][0]["userName"], SECRET_NAME);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "woken, not found by a timer: {:?}",
        t.elapsed()
    );
    let user = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                      "userName": "Pat-Written-Through-B"});
    let r = operator(&b, "POST", "/agents/a1/scim/v2/Users", &user.to_string());
    assert_eq!(r.status, 201, "{}\nA: {}\nB: {}", r.body, a.log(), b.log());
    assert_eq!(r.json()["userName"], "Pat-Written-Through-B");
    let got = agent.join().unwrap();
    assert_eq!(got.len(), 2, "each forward delivered once: {got:?}");
    assert_eq!(
        (&got[0]["kind"], &got[0]["path"], &got[0]["query"]),
        (&json!("scim"), &json!("/Users"), &json!("count=5"))
    );
    assert_eq!(got[1]["body"]["userName"], "Pat-Written-Through-B");
    // Nothing is left in the database, nothing comes again on either replica, and the
    // bodies are in no log line.
    assert_eq!(forward_rows(&db), "0");
    assert!(poll_envelopes(&a, 1).is_empty());
    assert!(poll_envelopes(&b, 1).is_empty());
    for h in [&a, &b] {
        assert!(!h.log().contains(SECRET_NAME), "{}", h.log());
        assert!(!h.log().contains("Pat-Written-Through-B"), "{}", h.log());
    }
}

#[test]
fn a_forward_its_agent_never_answers_is_504_withdrawn_and_gone_from_the_database() {
    let db = Db::create("fwdlate");
    let a = Arc::new(hub(
        &db,
        "pg-fwdlate-a",
        "forward_timeout_secs = 2\nredeliver_secs = 1\n",
    ));
    let b = hub(
        &db,
        "pg-fwdlate-b",
        "forward_timeout_secs = 2\nredeliver_secs = 1\n",
    );
    // An agent seen by no replica is not connected: 503 at once.
    let t = Instant::now();
    let r = operator(&b, "GET", "/agents/a2/scim/v2/Users", "");
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("not connected"), "{}", r.body);
    assert!(t.elapsed() < Duration::from_secs(2));

    assert_eq!(heartbeat(&a, "a1", "i1"), "active");
    let agent = {
        let a = a.clone();
        thread::spawn(move || poll_envelopes(&a, 10))
    };
    thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let r = operator(&b, "GET", "/agents/a1/scim/v2/Schemas", "");
    assert_eq!(r.status, 504, "{}\nA: {}\nB: {}", r.body, a.log(), b.log());
    assert!(
        t.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        t.elapsed()
    );
    let got = agent.join().unwrap();
    assert_eq!(got.len(), 1, "delivered to A's poll: {}", a.log());
    assert_eq!(forward_rows(&db), "0", "withdrawn from the database");
    // The agent's late answer is dropped quietly; the forward never comes again.
    answer_one(
        &a,
        got[0]["id"].as_str().unwrap(),
        200,
        &json!({"late": true}),
    );
    thread::sleep(Duration::from_millis(1100));
    assert!(poll_envelopes(&a, 1).is_empty());
    assert!(poll_envelopes(&b, 1).is_empty());
    assert_eq!(forward_rows(&db), "0");
    assert!(!a.log().contains("ERROR"), "{}", a.log());
}

#[test]
fn a_real_agent_polling_one_replica_reads_and_writes_its_directory_for_the_other() {
    use common::{url_encode, wait_until, Agent, Dir, Running, ScimServer, TestOu};
    let db = Db::create("fwdagent");
    let mut dir = Dir::openldap();
    let ou = TestOu::create(&dir, "pgfwd");
    let o = ou.dn.clone();
    dir.modify(&format!(
        "dn: uid=pf1,{o}\nobjectClass: inetOrgPerson\nuid: pf1\ncn: PF1\nsn: S\n\n\
         dn: uid=pf2,{o}\nobjectClass: inetOrgPerson\nuid: pf2\ncn: PF2\nsn: S\n"
    ));
    // Writeback of groups in the test's OU, with an account that may write.
    dir.bind_dn = dir.admin_dn.clone();
    dir.bind_pw = dir.admin_pw.clone();
    let scim = ScimServer::start();
    let settings = format!("{}{}", common::HUB_SETTINGS, db.config(""));
    let agents = [("a1", "branch", "agent-token-pgfwd")];
    let a = common::Hub::start("operator-token-pgfwd", &settings, &agents);
    let b = common::Hub::start("operator-token-pgfwd", &settings, &agents);
    let agent = Agent::with_relay(
        &dir,
        &[&o],
        &scim,
        &a,
        ("a1", "agent-token-pgfwd"),
        &format!(
            "\n[writeback]\nresources = [\"groups\"]\nallowed_ous = [\"{o}\"]\n\
             group_attributes = [\"displayName\", \"members\"]\n"
        ),
    );
    let _run = Running(agent.spawn(&["run"]));
    assert!(
        wait_until(60, || a.role("a1").as_deref() == Some("active")
            && scim.all("Users").len() == 2),
        "agent: {}\nA: {}",
        agent.log(),
        a.log()
    );
    // A read through B, answered from the directory by the agent polling A.
    let filter = url_encode(r#"userName eq "pf1""#);
    let (s, v) = b.op(
        "GET",
        &format!("/agents/a1/scim/v2/Users?filter={filter}"),
        None,
    );
    assert_eq!(
        s,
        200,
        "{v}\nagent: {}\nA: {}\nB: {}",
        agent.log(),
        a.log(),
        b.log()
    );
    assert_eq!(v["totalResults"], 1, "{v}");
    let pf1 = v["Resources"][0]["id"].as_str().unwrap().to_string();
    // A write through B, carried out by the agent in the directory.
    let group = json!({"displayName": "pgfwd-ops", "members": [{"value": pf1}]});
    let (s, v) = b.op(
        "POST",
        "/agents/a1/scim/v2/Groups",
        Some(&group.to_string()),
    );
    assert_eq!(s, 201, "{v}\nagent: {}\nB: {}", agent.log(), b.log());
    assert!(
        dir.attr_ldif(&format!("cn=pgfwd-ops,{o}"), "member")
            .is_some_and(|m| m.contains("uid=pf1")),
        "the group is in the directory"
    );
    assert_eq!(forward_rows(&db), "0");
}

#[test]
fn a_forward_is_503_at_once_when_the_database_cannot_be_reached() {
    let db = Db::create("fwddown");
    let a = hub(&db, "pg-fwddown-a", "forward_timeout_secs = 20\n");
    let b = Arc::new(hub(&db, "pg-fwddown-b", "forward_timeout_secs = 20\n"));
    assert_eq!(heartbeat(&a, "a1", "i1"), "active");
    // The agent polls B too (a poll held there while the database goes away).
    let held = {
        let b = b.clone();
        thread::spawn(move || agent_call(&b, "a1", "i1", "poll", &json!({"wait_secs": 8})))
    };
    thread::sleep(Duration::from_millis(300));
    let (base, _) = db.admin.rsplit_once('/').unwrap();
    psql(
        &format!("{base}/postgres"),
        &format!("DROP DATABASE {} WITH (FORCE)", db.name),
    );
    // Polled here: queued, but it cannot be written for the other replicas.
    let t = Instant::now();
    let r = operator(&b, "GET", "/agents/a1/scim/v2/Users", "");
    assert_eq!(r.status, 503, "{}\n{}", r.body, b.log());
    assert!(r.body.contains("cannot reach its database"), "{}", r.body);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let _ = held.join();
    // Polled elsewhere: the database cannot say whether it is connected.
    let t = Instant::now();
    let r = operator(&a, "GET", "/agents/a2/scim/v2/Users", "");
    assert_eq!(r.status, 503, "{}\n{}", r.body, a.log());
    assert!(r.body.contains("cannot reach its database"), "{}", r.body);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[test]
fn a_forward_handed_out_by_a_replica_that_dies_is_answered_after_its_agent_moves() {
    let db = Db::create("fwdkill");
    let settings = "forward_timeout_secs = 15\nredeliver_secs = 2\n";
    let mut a = hub(&db, "pg-fwdkill-a", settings);
    let b = Arc::new(hub(&db, "pg-fwdkill-b", settings));
    assert_eq!(heartbeat(&a, "a1", "i1"), "active");
    let caller = {
        let b = b.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(300));
            operator(&b, "GET", "/agents/a1/scim/v2/Users?count=1", "")
        })
    };
    // A hands the forward to the agent's poll, then dies before the agent answers.
    let first = poll_envelopes(&a, 10);
    assert_eq!(first.len(), 1, "{}", a.log());
    let id = first[0]["id"].as_str().unwrap().to_string();
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    // The agent polls B now: the forward comes again once `redeliver_secs` passed, once.
    let mut again = Vec::new();
    let until = Instant::now() + Duration::from_secs(10);
    while again.is_empty() && Instant::now() < until {
        again = poll_envelopes(&b, 1);
    }
    assert_eq!(again.len(), 1, "{}", b.log());
    assert_eq!(again[0]["id"], id.as_str());
    answer_one(&b, &id, 200, &json!({"totalResults": 0, "Resources": []}));
    let r = caller.join().unwrap();
    assert_eq!(r.status, 200, "{}\n{}", r.body, b.log());
    assert_eq!(r.json()["totalResults"], 0);
    assert_eq!(forward_rows(&db), "0");
    assert!(poll_envelopes(&b, 1).is_empty());
}
