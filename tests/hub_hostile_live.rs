//! The real `idrelay-hub` against hostile or broken clients, on loopback only, bounded in
//! count and time: idle sockets without a token, huge `responses` posts, an oversized
//! answer in a batch, a long-poll whose client has gone, weak settings (docs/hub.md,
//! "Limits" and "Refused settings").

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::hub_process::{scratch_dir, two_agent_config, HubProcess, Tokens};
use common::{free_port, write_secret};

const OPERATOR: &str = "operator-Zr8qLk2Vn5Tx9Wc4Hb7Y";
const A1: &str = "agent-one-Jd3Ms8Qp1Rv6Gf0Ka2N";
const A2: &str = "agent-two-Pw7Ec5Uy9Bt3Lh1Ox6D";

type Hub = HubProcess;

const TOKENS: Tokens = Tokens {
    operator: OPERATOR,
    a1: A1,
    a2: A2,
};

impl Hub {
    fn start(extra: &str) -> Hub {
        Hub::launch("hostile-run", TOKENS, extra)
    }

    /// A line of /proc/PID/status, in KiB (VmRSS, VmHWM).
    fn status_kib(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {s}"))
    }

    fn operator(&self, method: &str, path: &str, body: &str) -> Resp {
        let auth = format!("Bearer {OPERATOR}");
        http(
            self.port,
            method,
            path,
            &[("Authorization", &auth)],
            body.as_bytes(),
        )
    }

    fn agent_headers(agent: &str, token: &str) -> Vec<(String, String)> {
        vec![
            ("Authorization".into(), format!("Bearer {token}")),
            ("Idrelay-Protocol".into(), "1".into()),
            ("Idrelay-Agent".into(), agent.into()),
            ("Idrelay-Instance".into(), "i1".into()),
            ("Content-Type".into(), "application/json".into()),
        ]
    }

    fn agent(&self, what: &str, body: &[u8]) -> Resp {
        let h = Hub::agent_headers("a1", A1);
        let h: Vec<(&str, &str)> = h.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        http(
            self.port,
            "POST",
            &format!("/v1/agents/a1/{what}"),
            &h,
            body,
        )
    }

    fn poll(&self, wait_secs: u64) -> Resp {
        self.agent(
            "poll",
            json!({ "wait_secs": wait_secs }).to_string().as_bytes(),
        )
    }

    /// Waits until the hub counts a1 as connected (or not).
    fn wait_connected(&self, want: bool) {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let v = self.operator("GET", "/v1/agents", "").json();
            if v[0]["connected"] == want {
                return;
            }
            assert!(Instant::now() < until, "a1 connected never became {want}");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: String,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// One request on a fresh connection (`Connection: close`); status 0 when the hub closed
/// the connection without an answer.
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to hub");
    s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let _ = s.write_all(req.as_bytes());
    let _ = s.write_all(body);
    read_response(&mut s)
}

fn read_response(s: &mut impl Read) -> Resp {
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Resp {
            status: 0,
            headers: String::new(),
            body: text,
        };
    };
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Resp {
        status,
        headers: head.to_string(),
        body: body.to_string(),
    }
}

/// A `responses` body of about `bytes`: one answer to `id` whose body is a SCIM list of
/// many small objects (the shape that costs most as a parsed tree).
fn big_responses(id: &str, bytes: usize) -> Vec<u8> {
    let one = r#"{"id":"dXNlcg","userName":"u","emails":[{"value":"u@x","primary":true}]},"#;
    let n = (bytes - 200) / one.len();
    let mut s = format!(
        r#"{{"responses":[{{"id":"{id}","status":200,"body":{{"totalResults":{n},"Resources":["#
    );
    s.reserve(n * one.len() + 16);
    for _ in 0..n {
        s.push_str(one);
    }
    s.pop();
    s.push_str("]}}]}");
    s.into_bytes()
}

// ---------------------------------------------------------------------------------------

#[test]
fn idle_sockets_without_a_token_do_not_lock_out_the_operator() {
    let hub = Hub::start("poll_wait_secs = 5");
    // 1,030 idle sockets from one address (the hub's old cap was 1,024 in all).
    let mut idle = Vec::new();
    for _ in 0..1030 {
        match TcpStream::connect_timeout(
            &format!("127.0.0.1:{}", hub.port).parse().unwrap(),
            Duration::from_secs(2),
        ) {
            Ok(s) => idle.push(s),
            Err(e) => panic!("connect {}: {e}", idle.len()),
        }
    }
    thread::sleep(Duration::from_millis(500));
    // An operator on a fresh connection, and an agent's poll, answer within a few seconds.
    let started = Instant::now();
    let r = hub.operator("GET", "/v1/agents", "");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let started = Instant::now();
    assert_eq!(hub.poll(0).status, 204);
    assert!(started.elapsed() < Duration::from_secs(3));
    // The idle ones are closed within the pending deadline (10 s) at the latest.
    let mut s = idle.pop().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let started = Instant::now();
    let mut b = [0u8; 1];
    assert!(matches!(s.read(&mut b), Ok(0) | Err(_)));
    assert!(started.elapsed() < Duration::from_secs(12));
    drop(idle);
    assert!(hub
        .log()
        .contains("at most 25000 connections, 256 from one address"));
}

#[test]
fn a_16_mib_responses_post_keeps_the_hub_small() {
    let hub = Hub::start("poll_wait_secs = 5");
    let before = hub.status_kib("VmRSS");
    let body = big_responses("r-nobody-000001", 16 << 20);
    assert!(body.len() > (16 << 20) - 300 && body.len() <= 16 << 20);
    // One post of 16 MiB: read and answered 204 (the answer, to no known request, ignored).
    let r = hub.agent("responses", &body);
    assert_eq!(r.status, 204, "{r:?}");
    // Six at once: the body budget lets a few in at a time; each is answered 204 or 503 +
    // Retry-After, none costs the hub its memory.
    let small = big_responses("r-nobody-000002", 15 << 20);
    let statuses: Vec<(u16, String)> = thread::scope(|s| {
        let posts: Vec<_> = (0..6)
            .map(|_| {
                s.spawn(|| {
                    let r = hub.agent("responses", &small);
                    (r.status, r.headers)
                })
            })
            .collect();
        posts.into_iter().map(|p| p.join().unwrap()).collect()
    });
    for (status, headers) in &statuses {
        assert!(
            *status == 204 || (*status == 503 && headers.contains("Retry-After")),
            "{status} {headers}"
        );
    }
    assert!(statuses.iter().any(|(s, _)| *s == 204));
    let peak = hub.status_kib("VmHWM");
    eprintln!(
        "hub RSS before {before} KiB, peak {peak} KiB; statuses {:?}",
        statuses.iter().map(|s| s.0).collect::<Vec<_>>()
    );
    assert!(peak < 120 * 1024, "peak RSS {peak} KiB");
    // Over the stream's total: refused as declared, before it is sent.
    let mut s = TcpStream::connect(("127.0.0.1", hub.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /v1/agents/a1/responses HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {A1}\r\n\
         Idrelay-Protocol: 1\r\nContent-Length: {}\r\n\r\n",
        300 << 20
    )
    .unwrap();
    assert_eq!(read_response(&mut s).status, 413);
}

#[test]
fn one_oversized_answer_fails_alone_not_its_batch() {
    let hub = Hub::start("poll_wait_secs = 5\nforward_timeout_secs = 20");
    thread::scope(|s| {
        let agent = s.spawn(|| {
            // Wait until the three forwards are queued, then take them in one poll.
            let mut got = Vec::new();
            let until = Instant::now() + Duration::from_secs(10);
            while got.len() < 3 && Instant::now() < until {
                let r = hub.poll(1);
                if r.status == 200 {
                    for e in r.json()["requests"].as_array().unwrap() {
                        got.push(e.clone());
                    }
                }
            }
            assert_eq!(got.len(), 3);
            let mut answers = Vec::new();
            for e in &got {
                let path = e["path"].as_str().unwrap().to_string();
                let body = if path == "/Users" {
                    // 17 MiB: over the 16 MiB one answer may have.
                    Value::String("x".repeat(17 << 20))
                } else {
                    json!({"path": path})
                };
                answers.push(json!({"id": e["id"], "status": 200, "body": body}));
            }
            let r = hub.agent(
                "responses",
                json!({ "responses": answers }).to_string().as_bytes(),
            );
            assert_eq!(r.status, 204, "{r:?}");
        });
        let forwards: Vec<_> = ["/Schemas", "/Users", "/ResourceTypes"]
            .into_iter()
            .map(|p| {
                let hub = &hub;
                s.spawn(move || {
                    hub.wait_connected(true);
                    (
                        p,
                        hub.operator("GET", &format!("/agents/a1/scim/v2{p}"), ""),
                    )
                })
            })
            .collect();
        for f in forwards {
            let (p, r) = f.join().unwrap();
            if p == "/Users" {
                assert_eq!(r.status, 502, "{r:?}");
                assert!(r.json()["detail"].as_str().unwrap().contains("more than"));
            } else {
                assert_eq!(r.status, 200, "{p}: {r:?}");
                assert_eq!(r.json()["path"], p);
            }
        }
        agent.join().unwrap();
    });
}

#[test]
fn a_request_queued_for_a_poll_whose_client_left_goes_to_the_next_poll() {
    // Re-delivery only after a minute: a request lost to a dead poll would wait that long.
    let hub = Hub::start("poll_wait_secs = 30\nredeliver_secs = 60\nforward_timeout_secs = 20");
    // A poll is held, then its client goes away without reading the answer.
    let mut s = TcpStream::connect(("127.0.0.1", hub.port)).unwrap();
    let body = json!({"wait_secs": 30}).to_string();
    let mut req = format!(
        "POST /v1/agents/a1/poll HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in Hub::agent_headers("a1", A1) {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    s.write_all(req.as_bytes()).unwrap();
    hub.wait_connected(true);
    let _ = s.shutdown(Shutdown::Both);
    drop(s);
    thread::sleep(Duration::from_millis(300));

    // A command queued now is not lost to the dead poll: the next poll carries it at once.
    let r = hub.operator("POST", "/v1/agents/a1/commands", r#"{"command":"resync"}"#);
    assert_eq!(r.status, 202, "{r:?}");
    let id = r.json()["id"].as_str().unwrap().to_string();
    let started = Instant::now();
    let r = hub.poll(5);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["requests"][0]["id"], id.as_str());
    assert!(started.elapsed() < Duration::from_secs(2));
    let v = hub
        .operator("GET", &format!("/v1/requests/{id}"), "")
        .json();
    assert_eq!(v["deliveries"], 1, "{v}");

    // And a forward for an agent whose held poll's client left is answered 503 at once,
    // not 504 after forward_timeout_secs.
    let mut s = TcpStream::connect(("127.0.0.1", hub.port)).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    hub.wait_connected(true);
    drop(s);
    hub.wait_connected(false);
    let started = Instant::now();
    let r = hub.operator("GET", "/agents/a1/scim/v2/Users", "");
    assert_eq!(r.status, 503, "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(hub.log().contains("the client of its held poll has gone"));
}

#[test]
fn weak_settings_stop_the_hub_naming_the_key() {
    let dir = scratch_dir("hostile-cfg");
    let port = free_port();
    let good = two_agent_config(&dir, port, TOKENS, "");
    let run = |text: &str, check: bool| {
        let p = dir.join("hub.toml");
        std::fs::write(&p, text).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_idrelay-hub"));
        if check {
            cmd.arg("--check");
        }
        let out = dir.join("out");
        let mut child = cmd
            .arg("--config")
            .arg(&p)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(dir.join("err")).unwrap())
            .spawn()
            .unwrap();
        // A hub that accepts the config runs: stopped (by its PID) after 5 s, code None.
        let until = Instant::now() + Duration::from_secs(5);
        let code = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status.code();
            }
            if Instant::now() >= until {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            thread::sleep(Duration::from_millis(20));
        };
        (
            code,
            std::fs::read_to_string(&out).unwrap()
                + &std::fs::read_to_string(dir.join("err")).unwrap(),
        )
    };
    let (code, out) = run(&good, true);
    assert_eq!(code, Some(0), "{out}");

    // Two agents with one token: the run itself stops (not only --check).
    write_secret(&dir.join("a2"), &format!("{A1}\n"));
    let (code, err) = run(&good, false);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("`agent[1].token_file`") && err.contains("agent[0]"),
        "{err}"
    );
    assert!(!err.contains(A1), "the token is never printed: {err}");
    write_secret(&dir.join("a2"), &format!("{A2}\n"));

    // A short operator token.
    write_secret(&dir.join("op"), "op-token\n");
    let (code, err) = run(&good, false);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("`operator_token_file`") && err.contains("128 bits"),
        "{err}"
    );
    assert!(!err.contains("op-token"), "{err}");
    write_secret(&dir.join("op"), &format!("{OPERATOR}\n"));

    // A token file others can read.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("a1"), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let (code, err) = run(&good, false);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("`agent[0].token_file`") && err.contains("chmod 600"),
        "{err}"
    );
    write_secret(&dir.join("a1"), &format!("{A1}\n"));

    // Plain HTTP on a public address: refused, and with allow_plaintext a WARN.
    let public = good.replace(
        &format!("127.0.0.1:{port}"),
        &format!("0.0.0.0:{port}\"\nallow_public = true\n#\""),
    );
    let (code, err) = run(&public, true);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("`listen`") && err.contains("allow_plaintext"),
        "{err}"
    );
    let (code, out) = run(&format!("allow_plaintext = true\n{public}"), true);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("WARN") && out.contains("in clear"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
