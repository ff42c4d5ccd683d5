//! The real `idrelay-hub` binary on a free loopback port, driven by plain HTTP from the
//! test: a fake agent (polls, answers, heartbeats) and an operator (SCIM forwarder, the
//! operator API). The agent itself is tested elsewhere; here the hub is under test.
//!
//! `hub_tls_*` needs `OPENLDAP_CA_CERT` (the testbed CA; `server.pem`/`server.key` beside
//! it), as tests/http_live.rs does.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::hub_process::{HubProcess, Tokens};
use common::write_secret;

const OPERATOR: &str = "operator-secret-token-9fK2";
const A1: &str = "agent-one-token-Hq81x2Zb";
const A2: &str = "agent-two-token-Pw73c0Yn";

// ---------------------------------------------------------------------------------------
// Harness: a hub process, a tiny HTTP/1.1 client.

type Hub = HubProcess;

const TOKENS: Tokens = Tokens {
    operator: OPERATOR,
    a1: A1,
    a2: A2,
};

impl Hub {
    /// Starts the hub with `extra` top-level config lines; agents a1 and a2 in group `g`.
    fn start(extra: &str) -> Hub {
        Hub::launch("it", TOKENS, extra)
    }

    fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
        http(self.port, method, path, headers, body)
    }

    fn operator(&self, method: &str, path: &str, body: &str) -> Resp {
        let auth = format!("Bearer {OPERATOR}");
        self.call(method, path, &[("Authorization", &auth)], body)
    }

    /// An agent endpoint call with the protocol headers.
    fn agent(&self, agent: &str, token: &str, instance: &str, what: &str, body: &Value) -> Resp {
        let auth = format!("Bearer {token}");
        self.call(
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

    fn poll(&self, wait_secs: u64) -> Resp {
        self.agent("a1", A1, "i1", "poll", &json!({ "wait_secs": wait_secs }))
    }

    fn answer(&self, id: &str, status: u16, body: Value) -> Resp {
        self.agent(
            "a1",
            A1,
            "i1",
            "responses",
            &json!({"responses": [{"id": id, "status": status, "body": body}]}),
        )
    }

    fn heartbeat(&self, agent: &str, token: &str, instance: &str) -> Resp {
        let r = self.agent(
            agent,
            token,
            instance,
            "heartbeat",
            &json!({"version": "test", "group": "g", "instance": instance, "uptime_secs": 1,
                    "state": "following", "role": "standby"}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r
    }

    /// Waits until the hub counts a1 as connected (a poll is open).
    fn wait_connected(&self, agent: &str) {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let agents = self.operator("GET", "/v1/agents", "").json();
            let me = agents
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["agent"] == agent)
                .cloned()
                .unwrap();
            if me["connected"] == true {
                return;
            }
            assert!(Instant::now() < until, "{agent} never connected");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// One request on a fresh connection (`Connection: close`), the whole answer read.
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to hub");
    s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    read_response(&mut s)
}

fn read_response(s: &mut impl Read) -> Resp {
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let resp = Resp {
        status,
        headers,
        body: body.to_string(),
    };
    assert!(
        resp.header("Transfer-Encoding").is_none(),
        "hub answers carry a length"
    );
    if let Some(len) = resp.header("Content-Length") {
        assert_eq!(len.parse::<usize>().unwrap(), resp.body.len());
    }
    resp
}

fn is_scim_error(r: &Resp, status: u16) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.header("Content-Type"), Some("application/scim+json"));
    let v = r.json();
    assert_eq!(
        v["schemas"][0],
        "urn:ietf:params:scim:api:messages:2.0:Error"
    );
    assert_eq!(v["status"], status.to_string());
}

// ---------------------------------------------------------------------------------------

#[test]
fn scim_requests_travel_through_the_poll_and_back() {
    let hub = Hub::start("poll_wait_secs = 5");
    thread::scope(|s| {
        let agent = s.spawn(|| {
            // GET with a filter.
            let r = hub.poll(5);
            assert_eq!(r.status, 200, "{}", r.body);
            let e = &r.json()["requests"][0];
            assert_eq!(e["kind"], "scim");
            assert_eq!(e["method"], "GET");
            assert_eq!(e["path"], "/Users");
            assert_eq!(e["query"], "filter=userName%20eq%20%22ann%22&count=5");
            assert_eq!(e["body"], Value::Null);
            let list = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
                              "totalResults": 1, "Resources": [{"id": "YW5u", "userName": "ann"}]});
            assert_eq!(hub.answer(e["id"].as_str().unwrap(), 200, list).status, 204);

            // A write with a body, and an id that keeps its percent-encoding.
            let r = hub.poll(5);
            let e = &r.json()["requests"][0];
            assert_eq!(
                (&e["method"], &e["path"]),
                (&json!("PATCH"), &json!("/Groups/ab%2Fcd%3D%3D"))
            );
            assert_eq!(e["body"]["Operations"][0]["op"], "add");
            let denied = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
                                "status": "403", "detail": "writeback not allowed"});
            hub.answer(e["id"].as_str().unwrap(), 403, denied);

            // A delete answered without a body.
            let r = hub.poll(5);
            let e = &r.json()["requests"][0];
            assert_eq!(e["method"], "DELETE");
            hub.answer(e["id"].as_str().unwrap(), 204, Value::Null);
        });
        hub.wait_connected("a1");

        let r = hub.operator(
            "GET",
            "/agents/a1/scim/v2/Users?filter=userName%20eq%20%22ann%22&count=5",
            "",
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("Content-Type"), Some("application/scim+json"));
        assert_eq!(r.json()["Resources"][0]["userName"], "ann");

        hub.wait_connected("a1");
        let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                           "Operations": [{"op": "add", "path": "members", "value": [{"value": "x"}]}]});
        let r = hub.operator(
            "PATCH",
            "/agents/a1/scim/v2/Groups/ab%2Fcd%3D%3D",
            &patch.to_string(),
        );
        is_scim_error(&r, 403);
        assert_eq!(r.json()["detail"], "writeback not allowed");

        hub.wait_connected("a1");
        let r = hub.operator("DELETE", "/agents/a1/scim/v2/Groups/x", "");
        assert_eq!((r.status, r.body.as_str()), (204, ""));
        agent.join().unwrap();
    });
}

#[test]
fn no_poll_is_503_and_no_answer_is_504() {
    let hub = Hub::start("poll_wait_secs = 5\nforward_timeout_secs = 2\nredeliver_secs = 1");
    let r = hub.operator("GET", "/agents/a1/scim/v2/Users", "");
    is_scim_error(&r, 503);
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .contains("not connected"),
        "{}",
        r.body
    );
    assert!(r.header("Retry-After").is_some());

    thread::scope(|s| {
        let agent = s.spawn(|| {
            let r = hub.poll(5);
            assert_eq!(r.status, 200, "{}", r.body);
            // Never answered.
        });
        hub.wait_connected("a1");
        let started = Instant::now();
        let r = hub.operator("GET", "/agents/a1/scim/v2/Schemas", "");
        is_scim_error(&r, 504);
        assert!(started.elapsed() >= Duration::from_millis(1900));
        agent.join().unwrap();
    });
    // The operator gave up, so the request was withdrawn: no re-delivery.
    thread::sleep(Duration::from_millis(1100));
    assert_eq!(hub.poll(1).status, 204);
}

#[test]
fn unanswered_requests_are_redelivered() {
    let hub = Hub::start("poll_wait_secs = 5\nredeliver_secs = 1");
    let r = hub.operator(
        "POST",
        "/v1/agents/a1/commands",
        r#"{"command":"provision","target":"uid=ann,ou=people,dc=x"}"#,
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(
        hub.operator("GET", &format!("/v1/requests/{id}"), "")
            .json()["state"],
        "queued"
    );

    let first = hub.poll(5);
    let e = &first.json()["requests"][0];
    assert_eq!(e["id"], id.as_str());
    assert_eq!(
        (&e["kind"], &e["command"]),
        (&json!("command"), &json!("provision"))
    );
    assert_eq!(e["target"], "uid=ann,ou=people,dc=x");
    let r = hub.operator("GET", &format!("/v1/requests/{id}"), "");
    assert_eq!((r.status, &r.json()["state"]), (202, &json!("delivered")));

    // Not answered: the next poll is held until the re-delivery interval, then carries it.
    let started = Instant::now();
    let again = hub.poll(5);
    let waited = started.elapsed();
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["requests"][0]["id"], id.as_str());
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(4),
        "{waited:?}"
    );

    assert_eq!(
        hub.answer(&id, 202, json!({"accepted": "provision"}))
            .status,
        204
    );
    // A repeated answer is ignored.
    assert_eq!(hub.answer(&id, 500, json!({})).status, 204);
    let r = hub.operator("GET", &format!("/v1/requests/{id}"), "");
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(
        (&v["status"], &v["body"]["accepted"]),
        (&json!(202), &json!("provision"))
    );
    assert_eq!(
        hub.poll(1).status,
        204,
        "answered requests are not re-delivered"
    );
}

#[test]
fn refusals_name_their_reason() {
    let hub = Hub::start("poll_wait_secs = 1");
    // Agent side: wrong token, unknown agent, another agent's token, protocol versions.
    assert_eq!(
        hub.agent(
            "a1",
            "bogus-token-xyz",
            "i1",
            "poll",
            &json!({"wait_secs": 0})
        )
        .status,
        401
    );
    assert_eq!(
        hub.agent("a1", A2, "i1", "poll", &json!({"wait_secs": 0}))
            .status,
        401
    );
    assert_eq!(
        hub.agent("zz", A1, "i1", "poll", &json!({"wait_secs": 0}))
            .status,
        401
    );
    assert_eq!(
        hub.agent("a1", OPERATOR, "i1", "heartbeat", &json!({}))
            .status,
        401
    );
    let auth = format!("Bearer {A1}");
    for version in [None, Some("2"), Some("one")] {
        let mut headers = vec![("Authorization", auth.as_str())];
        if let Some(v) = version {
            headers.push(("Idrelay-Protocol", v));
        }
        let r = hub.call("POST", "/v1/agents/a1/poll", &headers, "{}");
        assert_eq!(r.status, 426, "{version:?}");
        assert_eq!(r.json(), json!({"supported": [1]}));
    }
    let r = hub.agent("a1", A1, "not valid!", "heartbeat", &json!({}));
    assert_eq!(r.status, 400);

    // Operator side: the agent token is not the operator's.
    let agent_auth = [("Authorization", auth.as_str())];
    assert_eq!(hub.call("GET", "/v1/agents", &agent_auth, "").status, 401);
    is_scim_error(
        &hub.call("GET", "/agents/a1/scim/v2/Users", &agent_auth, ""),
        401,
    );
    is_scim_error(&hub.call("GET", "/agents/a1/scim/v2/Users", &[], ""), 401);

    // Outside the SCIM endpoints: 404, never forwarded (the agent's poll stays empty).
    for path in [
        "/agents/a1/scim/v2/Bulk",
        "/agents/a1/scim/v2/",
        "/agents/a1/scim/v2/Users/../../../../v1/agents",
        "/agents/a1/scim/v2/Me",
    ] {
        let r = hub.operator("GET", path, "");
        assert_eq!(r.status, 404, "{path}: {}", r.body);
    }
    is_scim_error(&hub.operator("GET", "/agents/zz/scim/v2/Users", ""), 404);
    assert_eq!(hub.poll(0).status, 204);

    // Commands: unknown ones and missing arguments are refused; bodies are bounded.
    let r = hub.operator("POST", "/v1/agents/a1/commands", r#"{"command":"reboot"}"#);
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("reboot"));
    assert_eq!(
        hub.operator(
            "POST",
            "/v1/agents/a1/commands",
            r#"{"command":"set-profile"}"#
        )
        .status,
        400
    );
    assert_eq!(
        hub.operator("POST", "/v1/agents/zz/commands", r#"{"command":"resync"}"#)
            .status,
        404
    );
    assert_eq!(
        hub.operator("GET", "/v1/requests/r-nope-000001", "").status,
        404
    );
    assert_eq!(hub.operator("GET", "/nowhere", "").status, 404);
    assert_eq!(hub.operator("DELETE", "/v1/agents", "").status, 405);

    // A declared 2 MiB body is refused before it is sent.
    let mut s = TcpStream::connect(("127.0.0.1", hub.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /v1/agents/a1/commands HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {OPERATOR}\r\n\
         Content-Length: {}\r\n\r\n",
        2 << 20
    )
    .unwrap();
    let r = read_response(&mut s);
    assert_eq!(r.status, 413);
    assert_eq!(r.header("Connection"), Some("close"));

    // An oversized head is refused (the connection closes).
    let mut s = TcpStream::connect(("127.0.0.1", hub.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let big = "x".repeat(9000);
    let _ = write!(
        s,
        "GET /v1/agents HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n"
    );
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(!String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 200"));

    // No token ever reaches the log.
    let log = hub.log();
    for secret in [OPERATOR, A1, A2, "bogus-token-xyz"] {
        assert!(!log.contains(secret), "`{secret}` logged");
    }
}

#[test]
fn the_lease_moves_when_the_active_agent_stops() {
    let hub = Hub::start("heartbeat_secs = 1\nlease_ttl_heartbeats = 2\npoll_wait_secs = 1");
    let lease = |r: Resp| {
        let v = r.json();
        assert_eq!(v["lease"]["ttl_secs"], 2);
        assert_eq!(v["heartbeat_secs"], 1);
        (
            v["lease"]["role"].as_str().unwrap().to_string(),
            v["lease"]["holder"].as_str().unwrap().to_string(),
        )
    };
    assert_eq!(
        lease(hub.heartbeat("a1", A1, "i1")),
        ("active".into(), "a1".into())
    );
    assert_eq!(
        lease(hub.heartbeat("a2", A2, "i2")),
        ("standby".into(), "a1".into())
    );
    // Both heartbeat for a while: nothing moves.
    for _ in 0..3 {
        thread::sleep(Duration::from_millis(400));
        assert_eq!(lease(hub.heartbeat("a1", A1, "i1")).0, "active");
        assert_eq!(lease(hub.heartbeat("a2", A2, "i2")).0, "standby");
    }
    // a1 stops; a2 keeps heartbeating and takes over within the TTL.
    let stopped = Instant::now();
    let took_over = loop {
        thread::sleep(Duration::from_millis(250));
        let (role, holder) = lease(hub.heartbeat("a2", A2, "i2"));
        if role == "active" {
            assert_eq!(holder, "a2");
            break stopped.elapsed();
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(4),
            "a2 never became active"
        );
    };
    assert!(took_over >= Duration::from_millis(1500), "{took_over:?}");
    // a1 comes back: standby now.
    assert_eq!(
        lease(hub.heartbeat("a1", A1, "i1")),
        ("standby".into(), "a2".into())
    );

    thread::sleep(Duration::from_millis(1100));
    let agents = hub.operator("GET", "/v1/agents", "").json();
    let agents = agents.as_array().unwrap();
    assert_eq!(agents.len(), 2);
    let (a1, a2) = (&agents[0], &agents[1]);
    assert_eq!(
        (&a1["agent"], &a1["group"], &a1["role"]),
        (&json!("a1"), &json!("g"), &json!("standby"))
    );
    assert_eq!(
        (&a2["agent"], &a2["role"], &a2["instance"]),
        (&json!("a2"), &json!("active"), &json!("i2"))
    );
    assert!(a2["last_heartbeat_age_secs"].as_u64().unwrap() >= 1);
    assert_eq!(a2["heartbeat"]["state"], "following");
    assert!(a1["last_heartbeat_age_secs"].is_u64());
    assert!(hub
        .log()
        .contains("a2 (instance i2) is now ACTIVE; a1 stopped heartbeating"));
}

#[test]
fn sigterm_ends_held_polls_and_exits() {
    let mut hub = Hub::start("poll_wait_secs = 30");
    thread::scope(|s| {
        let agent = s.spawn(|| {
            let started = Instant::now();
            let r = hub.poll(30);
            (r.status, started.elapsed())
        });
        hub.wait_connected("a1");
        let term = Command::new("kill")
            .args(["-TERM", &hub.child.id().to_string()])
            .status()
            .unwrap();
        assert!(term.success());
        let (status, waited) = agent.join().unwrap();
        assert_eq!(status, 204);
        assert!(waited < Duration::from_secs(5), "{waited:?}");
    });
    let until = Instant::now() + Duration::from_secs(5);
    let code = loop {
        if let Some(s) = hub.child.try_wait().unwrap() {
            break s.code();
        }
        assert!(Instant::now() < until, "hub did not exit on SIGTERM");
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(0));
    assert!(hub.log().contains("idrelay-hub stopping"));
}

#[test]
fn bad_configs_exit_2_and_name_the_key() {
    let dir = std::env::temp_dir().join(format!("idrelay-hub-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |text: &str| {
        let p = dir.join("hub.toml");
        std::fs::write(&p, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_idrelay-hub"))
            .args(["--check", "--config"])
            .arg(&p)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    write_secret(&dir.join("op"), "op-token-0123456789abcdef\n");
    write_secret(&dir.join("a"), "a-token-0123456789abcdefg\n");
    let good = format!(
        "operator_token_file = \"{}\"\n[[agent]]\nid = \"a\"\ntoken_file = \"{}\"\n",
        dir.join("op").display(),
        dir.join("a").display()
    );
    assert_eq!(run(&good).0, Some(0));
    let (code, err) = run(&format!("listen = \"0.0.0.0:8460\"\n{good}"));
    assert_eq!(code, Some(2));
    assert!(
        err.contains("`listen`") && err.contains("allow_public"),
        "{err}"
    );
    let (code, err) = run(&format!("redeliver = 5\n{good}"));
    assert_eq!(code, Some(2));
    assert!(err.contains("redeliver"), "{err}");
    let (code, err) = run(&good
        .replace("a-token-0123456789abcdefg", "x")
        .replace(&dir.join("a").display().to_string(), "/nonexistent/a"));
    assert_eq!(code, Some(2));
    assert!(err.contains("agent[0].token_file"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hub_tls_serves_https_with_the_configured_certificate() {
    use idrelay::net::http::{HttpClient, HttpConfig, HttpRequest, Method, Url};
    // The testbed CA (server.pem and server.key are expected beside it).
    let ca = PathBuf::from(common::env("OPENLDAP_CA_CERT"));
    let dir: &Path = ca.parent().expect("CA dir");
    let hub = Hub::start(&format!(
        "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
        dir.join("server.pem").display(),
        dir.join("server.key").display()
    ));
    let client = HttpClient::new(HttpConfig {
        ca_file: Some(ca.clone()),
        ..HttpConfig::default()
    })
    .unwrap();
    let url = Url::parse(&format!("https://localhost:{}/v1/agents", hub.port)).unwrap();
    let resp = smol::block_on(
        client.send(
            HttpRequest::new(Method::Get, url.clone())
                .header("Authorization", format!("Bearer {OPERATOR}")),
        ),
    )
    .expect("https request");
    assert_eq!(resp.status, 200);
    let v: Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    // Kept alive: a second request on the same connection.
    let resp = smol::block_on(client.send(
        HttpRequest::new(Method::Get, url).header("Authorization", format!("Bearer {OPERATOR}")),
    ))
    .unwrap();
    assert_eq!(resp.status, 200);
    // POSTs with bodies on the kept-alive connection too (the agent's pattern).
    for _ in 0..2 {
        let url = Url::parse(&format!(
            "https://localhost:{}/v1/agents/a1/commands",
            hub.port
        ))
        .unwrap();
        let resp = smol::block_on(
            client.send(
                HttpRequest::new(Method::Post, url)
                    .header("Authorization", format!("Bearer {OPERATOR}"))
                    .header("Content-Type", "application/json")
                    .body(br#"{"command":"approve-deletes"}"#.to_vec()),
            ),
        )
        .unwrap();
        assert_eq!(resp.status, 202, "{}", String::from_utf8_lossy(&resp.body));
    }
    assert_eq!(
        client.idle_connections(),
        1,
        "one connection served everything"
    );

    // Plain HTTP to the TLS port gets no HTTP answer.
    let mut s = TcpStream::connect(("127.0.0.1", hub.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = s.write_all(b"GET /v1/agents HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(!rest.starts_with(b"HTTP/1.1 200"));
}

#[test]
fn a_read_operator_token_sees_the_agents_and_nothing_more() {
    const READER: &str = "reader-secret-token-Zq41m";
    let dir = std::env::temp_dir().join(format!(
        "idrelay-hub-reader-{}-{:x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("reader.token");
    write_secret(&file, &format!("{READER}\n"));
    let hub = Hub::start(&format!(
        "poll_wait_secs = 1\n\n[[operator]]\ntoken_file = \"{}\"\nrole = \"read\"\n",
        file.display()
    ));
    let reader = format!("Bearer {READER}");
    let as_reader = |method: &str, path: &str, body: &str| {
        hub.call(method, path, &[("Authorization", &reader)], body)
    };
    // Looking: allowed.
    let r = as_reader("GET", "/v1/agents", "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()[0]["agent"], "a1");
    let id = hub
        .operator("POST", "/v1/agents/a1/commands", r#"{"command":"resync"}"#)
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = as_reader("GET", &format!("/v1/requests/{id}"), "");
    assert_eq!(r.status, 202, "{}", r.body);
    // Acting: refused 403 naming the role, on the operator API and the SCIM forwarder.
    let r = as_reader("POST", "/v1/agents/a1/commands", r#"{"command":"resync"}"#);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.body.contains("role `read`") && r.body.contains("`admin`"),
        "{}",
        r.body
    );
    let r = as_reader("GET", "/agents/a1/scim/v2/Users", "");
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("role `read`"), "{}", r.body);
    assert!(
        r.body
            .contains("urn:ietf:params:scim:api:messages:2.0:Error"),
        "{}",
        r.body
    );
    // Nothing was queued by the refused command.
    let agents = hub.operator("GET", "/v1/agents", "").json();
    assert_eq!(agents[0]["queued"], 1, "{agents}");
    // A wrong token is still 401.
    let r = hub.call(
        "GET",
        "/v1/agents",
        &[("Authorization", "Bearer nope-nope-nope-nope-nope")],
        "",
    );
    assert_eq!(r.status, 401);
    assert!(!hub.log().contains(READER));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The ids of the envelopes a poll answer carries (none for a 204).
fn envelope_ids(r: &Resp) -> Vec<String> {
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

/// Polls as a1 until a poll of `wait_secs` brings nothing; how often each id came.
fn drain(hub: &Hub, wait_secs: u64) -> std::collections::HashMap<String, usize> {
    let mut seen = std::collections::HashMap::new();
    loop {
        let ids = envelope_ids(&hub.poll(wait_secs));
        if ids.is_empty() {
            return seen;
        }
        for id in ids {
            *seen.entry(id).or_insert(0) += 1;
        }
    }
}

/// Answers every id in one `responses` post, each with `{"n": id}`.
fn answer_all(hub: &Hub, ids: &[String]) {
    let responses: Vec<Value> = ids
        .iter()
        .map(|id| json!({"id": id, "status": 202, "body": {"n": id}}))
        .collect();
    let r = hub.agent(
        "a1",
        A1,
        "i1",
        "responses",
        &json!({ "responses": responses }),
    );
    assert_eq!(r.status, 204, "{}", r.body);
}

/// The answer the hub returns for `id`.
fn answered(hub: &Hub, id: &str) -> Value {
    let r = hub.operator("GET", &format!("/v1/requests/{id}"), "");
    assert_eq!(r.status, 200, "{id}: {}\n{}", r.body, hub.log());
    let v = r.json();
    assert_eq!(
        (v["state"].as_str(), v["status"].as_u64()),
        (Some("answered"), Some(202))
    );
    v
}

#[test]
fn a_thousand_queued_commands_outlive_hub_restarts_and_each_is_delivered_once() {
    const N: usize = 1000;
    let mut hub = Hub::start("redeliver_secs = 15\n");
    let ids: Vec<String> = (0..N)
        .map(|i| {
            let body = json!({"command": "provision", "target": format!("uid=u{i},dc=example")});
            let r = hub.operator("POST", "/v1/agents/a1/commands", &body.to_string());
            assert_eq!(r.status, 202, "{}", r.body);
            r.json()["id"].as_str().unwrap().to_string()
        })
        .collect();
    // One poll takes the first batch (100, oldest first); half of it is answered.
    let delivered_at = Instant::now(); // at the latest
    let first = envelope_ids(&hub.poll(1));
    assert_eq!(first, ids[..100]);
    answer_all(&hub, &first[..50]);
    hub.heartbeat("a1", A1, "i1");

    // Killed: no chance to write anything on the way out.
    hub.restart(false);
    assert!(
        hub.log()
            .contains("950 command(s) waiting for their agent, 50 answer(s) kept"),
        "{}",
        hub.log()
    );
    // Every command never delivered comes, once; the 50 delivered and unanswered wait for
    // redeliver_secs from their delivery, as without a restart.
    let seen = drain(&hub, 1);
    assert!(
        delivered_at.elapsed() < Duration::from_secs(15),
        "too slow to tell"
    );
    assert_eq!(seen.len(), N - 100, "{}", hub.log());
    assert!(seen.values().all(|&n| n == 1), "delivered twice");
    assert!(ids[100..].iter().all(|id| seen.contains_key(id)));
    // The answers from before the restart are still there; the lease too.
    for id in &first[..50] {
        assert_eq!(answered(&hub, id)["body"]["n"], id.as_str());
    }
    let agents = hub.operator("GET", "/v1/agents", "").json();
    assert_eq!(agents[0]["role"], "active", "{agents}");
    assert_eq!(agents[0]["instance"], "i1", "{agents}");
    answer_all(&hub, &ids[100..]);

    // Stopped as an operator stops it.
    hub.restart(true);
    for id in ids[100..].iter().step_by(7) {
        assert_eq!(answered(&hub, id)["body"]["n"], id.as_str());
    }
    // The 50 left unanswered come once more when due, and only then.
    let mut again = Vec::new();
    while again.len() < 50 && delivered_at.elapsed() < Duration::from_secs(45) {
        again.extend(envelope_ids(&hub.poll(5)));
    }
    // (The store keeps milliseconds.)
    assert!(delivered_at.elapsed() >= Duration::from_millis(14_990));
    again.sort();
    let mut want = first[50..].to_vec();
    want.sort();
    assert_eq!(again, want, "{}", hub.log());
    answer_all(&hub, &first[50..]);
    assert!(drain(&hub, 1).is_empty());
    let agents = hub.operator("GET", "/v1/agents", "").json();
    assert_eq!(agents[0]["queued"], 0, "{agents}");
}

#[test]
fn a_second_hub_on_the_same_state_dir_stops_naming_the_file() {
    let hub = Hub::start("");
    let out = Command::new(env!("CARGO_BIN_EXE_idrelay-hub"))
        .arg("--config")
        .arg(hub.dir.join("hub.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("hub.sqlite") && err.contains("another idrelay-hub"),
        "{err}"
    );
}

#[test]
fn a_damaged_database_stops_the_hub_naming_the_file_and_is_left_alone() {
    let dir = common::hub_process::scratch_dir("damaged");
    let config = common::hub_process::two_agent_config(&dir, common::free_port(), TOKENS, "");
    std::fs::write(dir.join("hub.toml"), config).unwrap();
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let file = state.join("hub.sqlite");
    let junk = b"not a database, written by a test ".repeat(200);
    std::fs::write(&file, &junk).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_idrelay-hub"))
        .arg("--config")
        .arg(dir.join("hub.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&file.display().to_string()) && err.contains("move it away"),
        "{err}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), junk);
    std::fs::remove_dir_all(&dir).unwrap();
}
