//! The operator dashboard (`GET /` on `idrelay-hub`, docs/hub.md) in a real headless
//! Chromium, driven over WebDriver (tests/common/webdriver.rs), against the real hub and a
//! real agent on slapd and scim2-server: the operator signs in with a token, sees the live
//! agent, sends a resync that reaches the agent; a `read` token sees the page and its
//! command is refused `403`, shown on the page; hostile heartbeat text stays text. At
//! fleet scale (250 light agents over the hub's real protocol, no directory needed) the page
//! shows the fleet's and each group's summary, pages and filters, and a command sent from
//! page 2 reaches its agent.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::webdriver::{Browser, Tools};
use common::{
    hub_token, wait_until, write_secret, Agent, Dir, Hub, Running, ScimServer, TempDir, TestOu,
    HUB_SETTINGS,
};
use serde_json::Value;

const OPERATOR: &str = "operator-token-for-the-dashboard";
const READER: &str = "read-only-token-for-the-dashboard";

/// A hub with agents a1, a2 of group `branch`, the admin token [`OPERATOR`] and a `read`
/// token [`READER`] (its file in `tmp`).
fn hub_with_reader(tmp: &TempDir) -> Hub {
    let read = tmp.path().join("read.token");
    write_secret(&read, READER);
    let settings = format!(
        "{HUB_SETTINGS}\n[[operator]]\ntoken_file = \"{}\"\nrole = \"read\"\n",
        read.display()
    );
    Hub::start(
        OPERATOR,
        &settings,
        &[
            ("a1", "branch", "agent-token-a1"),
            ("a2", "branch", "agent-token-a2"),
        ],
    )
}

/// One request to the hub: (status, head, body).
fn raw(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), rest.to_string())
}

/// The value of header `name` in `head` (case-insensitive name).
fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// No browser and no test servers needed: the page is static, carries its policy, and the
/// API behind it keeps its tokens and roles.
#[test]
fn the_page_is_served_without_data_under_a_strict_policy_and_the_api_keeps_its_roles() {
    let tmp = TempDir::new("dash-roles");
    let hub = hub_with_reader(&tmp);
    let (s, head, body) = raw(hub.port, "GET", "/", &[], "");
    assert_eq!(s, 200, "{head}");
    assert_eq!(
        header(&head, "Content-Type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    let csp = header(&head, "Content-Security-Policy").expect("a CSP header");
    assert!(
        csp.starts_with("default-src 'none'; script-src 'sha256-"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(
        header(&head, "X-Content-Type-Options").as_deref(),
        Some("nosniff")
    );
    assert!(body.contains("<title>idrelay hub</title>"));
    assert!(
        !body.contains("a1") && !body.contains("branch"),
        "the page holds no data"
    );
    let (s, _, _) = raw(hub.port, "POST", "/", &[], "");
    assert_eq!(s, 405);

    let bearer = |t: &str| format!("Bearer {}", hub_token(t));
    let (s, _, _) = raw(hub.port, "GET", "/v1/agents", &[], "");
    assert_eq!(s, 401, "the data needs a token");
    let read = bearer(READER);
    let (s, _, body) = raw(
        hub.port,
        "GET",
        "/v1/agents",
        &[("Authorization", &read)],
        "",
    );
    assert_eq!(s, 200, "{body}");
    let (s, _, body) = raw(
        hub.port,
        "POST",
        "/v1/agents/a1/commands",
        &[
            ("Authorization", &read),
            ("Content-Type", "application/json"),
        ],
        r#"{"command":"resync"}"#,
    );
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("role `read`"), "{body}");
    // The paged listing and the group summary: read may look; a bad parameter is named,
    // and only to a caller with a token.
    let (s, _, body) = raw(
        hub.port,
        "GET",
        "/v1/groups?limit=5",
        &[("Authorization", &read)],
        "",
    );
    assert_eq!(s, 200, "{body}");
    assert!(body.contains(r#""totals":{"agents":2,"#), "{body}");
    for (query, names) in [
        ("limit=0", "`limit`"),
        ("bogus=1", "`bogus`"),
        ("cursor=x", "`cursor`"),
    ] {
        let path = format!("/v1/agents?{query}");
        let (s, _, body) = raw(hub.port, "GET", &path, &[("Authorization", &read)], "");
        assert_eq!(s, 400, "{path}: {body}");
        assert!(body.contains(names), "{path}: {body}");
        let (s, _, _) = raw(hub.port, "GET", &path, &[], "");
        assert_eq!(s, 401, "{path} without a token");
    }
    // No CORS: a page of another site cannot read the API with a token it holds.
    let (_, head, _) = raw(
        hub.port,
        "GET",
        "/v1/agents",
        &[("Authorization", &read), ("Origin", "https://evil.example")],
        "",
    );
    assert_eq!(header(&head, "Access-Control-Allow-Origin"), None);
}

/// How often the agent's log says the cloud's `resync` ran.
fn resyncs_run(agent: &Agent) -> usize {
    agent
        .log()
        .matches("a full pass was requested by the cloud")
        .count()
}

/// Signs in on the open page with `token` and waits until agent a1's row is there.
fn sign_in(b: &Browser, token: &str) {
    b.type_into("#token", &hub_token(token));
    b.click("#signin");
    b.wait_text(r#"tr[data-agent="a1"] td.agent"#, 20, |t| t == "a1");
}

/// Presses `command` on agent a1's row, checks the confirmation names it, confirms; the
/// outcome line once it satisfies `done`.
fn command_a1(b: &Browser, command: &str, done: impl Fn(&str) -> bool) -> String {
    command_a1_on(b, command, None, done)
}

/// [`command_a1`], typing `target` into the confirmation's DN/anchor field first.
fn command_a1_on(
    b: &Browser,
    command: &str,
    target: Option<&str>,
    done: impl Fn(&str) -> bool,
) -> String {
    b.click(&format!(
        r#"tr[data-agent="a1"] button[data-command="{command}"]"#
    ));
    b.wait_text("#confirm-text", 10, |t| {
        t.contains(command) && t.contains("a1")
    });
    if let Some(t) = target {
        b.type_into("#target", t);
    }
    // The outcome of an earlier command must not pass for this one's (each names its
    // request id).
    let earlier = b.text("#outcome").unwrap_or_default();
    b.click("#confirm-yes");
    b.wait_text("#outcome", 60, |t| t != earlier && done(t))
}

#[test]
fn an_operator_sees_the_live_agent_and_sends_it_a_resync_from_a_real_browser() {
    let dir = Dir::openldap();
    let Some(tools) = Tools::find() else {
        return;
    };
    let ou = TestOu::create(&dir, "dash");
    let o = ou.dn.clone();
    dir.modify(&format!(
        "dn: uid=d1,{o}\nobjectClass: inetOrgPerson\nuid: d1\ncn: D One\nsn: One\n"
    ));
    let scim = ScimServer::start();
    let tmp = TempDir::new("dash");
    let hub = hub_with_reader(&tmp);
    let agent = Agent::with_relay(&dir, &[&o], &scim, &hub, ("a1", "agent-token-a1"), "");
    let _run = Running(agent.spawn(&["run"]));
    assert!(
        wait_until(60, || hub.role("a1").as_deref() == Some("active")
            && hub
                .op("GET", "/v1/agents", None)
                .1
                .as_array()
                .into_iter()
                .flatten()
                .any(
                    |a| a["agent"] == "a1" && !a["heartbeat"]["last_full_pass_age_secs"].is_null()
                )),
        "agent: {}\nhub: {}",
        agent.log(),
        hub.log()
    );
    // a2 is not running; a heartbeat in its name carries markup where text belongs.
    let hostile = r#"<img src=x onerror="document.title='pwned'">"#;
    let beat = serde_json::json!({
        "group": "branch", "state": "<b>following</b>", "last_error": hostile,
        "queue": {"depth": "<script>alert(1)</script>"}, "counts": {"parked": "<i>7</i>"},
    });
    let (s, _, body) = raw(
        hub.port,
        "POST",
        "/v1/agents/a2/heartbeat",
        &[
            (
                "Authorization",
                &format!("Bearer {}", hub_token("agent-token-a2")),
            ),
            ("Idrelay-Protocol", "1"),
            ("Idrelay-Instance", "hostile-1"),
            ("Content-Type", "application/json"),
        ],
        &beat.to_string(),
    );
    assert_eq!(s, 200, "{body}");

    let b = Browser::start(&tools);
    b.open(&format!("{}/", hub.url()));
    sign_in(&b, OPERATOR);

    // The live agent: its id, its lease, a heartbeat age, its last full pass, parked 0.
    b.wait_text(r#"tr[data-agent="a1"] td.role"#, 20, |t| t == "active");
    b.wait_text(r#"tr[data-agent="a1"] td.hb"#, 20, |t| {
        t.ends_with(" s") && t[..t.len() - 2].parse::<u64>().is_ok_and(|n| n < 60)
    });
    b.wait_text(r#"tr[data-agent="a1"] td.pass"#, 20, |t| t.ends_with(" s"));
    b.wait_text(r#"tr[data-agent="a1"] td.parked"#, 20, |t| t == "0");
    b.wait_text(r#"tr[data-agent="a1"] td.held"#, 20, |t| t == "0");
    b.wait_text(r#"tr[data-agent="a1"] td.watermark"#, 20, |t| {
        t.contains("syncrepl")
    });
    let group = b.text("tr.group th").unwrap_or_default();
    assert_eq!(group, "group branch");
    // The hostile heartbeat is shown as the text it is; nothing of it became markup.
    b.wait_text(r#"tr[data-agent="a2"] td.errors"#, 20, |t| {
        t.contains(hostile)
    });
    b.wait_text(r#"tr[data-agent="a2"] td.state"#, 20, |t| {
        t.contains("<b>following</b>")
    });
    assert_eq!(b.count("img"), 0);
    assert_eq!(b.count("tbody script, tbody b, tbody i"), 0);
    assert_eq!(
        b.script("return document.title;"),
        Value::from("idrelay hub")
    );
    // The policy is in force: a script element put into the page does not run.
    let blocked = b.script(
        "const s = document.createElement('script'); s.textContent = 'window.injected = 1;'; \
         document.body.appendChild(s); return window.injected === undefined;",
    );
    assert_eq!(blocked, Value::Bool(true), "an injected inline script ran");

    // Provision one object by its DN, typed into the confirmation; and one outside the
    // agent's scope, refused by the agent and shown so.
    let out = command_a1_on(&b, "provision", Some(&format!("uid=d1,{o}")), |t| {
        t.contains("answered")
    });
    assert!(out.contains("answered 202"), "{out}");
    assert!(
        wait_until(20, || agent
            .log()
            .contains("relay: the cloud asked to provision")),
        "{}",
        agent.log()
    );
    let out = command_a1_on(&b, "provision", Some("uid=elsewhere,dc=example"), |t| {
        t.contains("answered")
    });
    assert!(
        out.contains("answered 403") && out.contains("not under scope.include"),
        "{out}"
    );

    // Resync, confirmed on the page, answered by the agent, and run there.
    let before = resyncs_run(&agent);
    let out = command_a1(&b, "resync", |t| t.contains("answered"));
    assert!(out.contains("answered 202"), "{out}");
    assert!(
        wait_until(30, || resyncs_run(&agent) > before),
        "the resync did not reach the agent: {}",
        agent.log()
    );
    // Cancel sends nothing.
    b.click(r#"tr[data-agent="a1"] button[data-command="approve-deletes"]"#);
    b.wait_text("#confirm-text", 10, |t| t.contains("approve-deletes"));
    b.click("#confirm-no");
    std::thread::sleep(Duration::from_millis(500));
    let log = hub.log();
    assert!(
        log.contains("command resync queued") && !log.contains("command approve-deletes queued"),
        "{log}"
    );
    // Approve held deletes, confirmed: the agent holds none and says so.
    let out = command_a1(&b, "approve-deletes", |t| t.contains("answered"));
    assert!(
        out.contains("answered 200") && out.contains("no deletes are held"),
        "{out}"
    );

    // A read token: the page works, a command is refused by the API and the page says so.
    b.click("#signout");
    b.wait_text("#login label", 10, |t| t.contains("Operator token"));
    sign_in(&b, READER);
    let runs = resyncs_run(&agent);
    let out = command_a1(&b, "resync", |t| t.contains("refused"));
    assert!(
        out.contains("refused (403)") && out.contains("role `read`"),
        "{out}"
    );
    // A wrong token: back to the sign-in form with the refusal.
    b.click("#signout");
    b.type_into("#token", "not-a-token-of-this-hub-at-all");
    b.click("#signin");
    b.wait_text("#login-message", 20, |t| t.contains("401"));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(resyncs_run(&agent), runs, "a refused command ran");
}

/// Light agents over the hub's real protocol (not `idrelay run`): each a thread that
/// heartbeats every 4 s, long-polls, and answers each command `202 {"accepted": ...}`,
/// recording `(agent, command)`. Stopped (and joined) on drop.
struct LightFleet {
    stop: Arc<AtomicBool>,
    got: Arc<Mutex<Vec<(String, String)>>>,
    threads: Vec<JoinHandle<()>>,
}

impl LightFleet {
    /// `(id, group, token, heartbeat state)` per agent.
    fn start(port: u16, agents: Vec<(String, String, String, &'static str)>) -> LightFleet {
        let stop = Arc::new(AtomicBool::new(false));
        let got = Arc::new(Mutex::new(Vec::new()));
        let threads = agents
            .into_iter()
            .map(|(id, group, token, state)| {
                let (stop, got) = (stop.clone(), got.clone());
                std::thread::spawn(move || {
                    light_agent(port, &id, &group, &token, state, &stop, &got)
                })
            })
            .collect();
        LightFleet { stop, got, threads }
    }

    fn commands(&self) -> Vec<(String, String)> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for LightFleet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn light_agent(
    port: u16,
    id: &str,
    group: &str,
    token: &str,
    state: &str,
    stop: &AtomicBool,
    got: &Mutex<Vec<(String, String)>>,
) {
    let auth = format!("Bearer {}", hub_token(token));
    let call = |what: &str, body: &str| {
        raw(
            port,
            "POST",
            &format!("/v1/agents/{id}/{what}"),
            &[
                ("Authorization", &auth),
                ("Idrelay-Protocol", "1"),
                ("Idrelay-Instance", &format!("{id}-i1")),
                ("Content-Type", "application/json"),
            ],
            body,
        )
    };
    let beat = serde_json::json!({
        "group": group, "state": state, "uptime_secs": 1,
        "queue": {"depth": 0, "resync_owed": null}, "counts": {"parked": 0, "held_deletes": 0},
        "feed": {"kind": "syncrepl", "connected": true}, "last_error": null,
    })
    .to_string();
    let mut last_beat: Option<Instant> = None;
    while !stop.load(Ordering::SeqCst) {
        if last_beat.is_none_or(|t| t.elapsed() >= Duration::from_secs(4)) {
            call("heartbeat", &beat);
            last_beat = Some(Instant::now());
        }
        let (status, _, body) = call("poll", r#"{"wait_secs": 2}"#);
        if status != 200 {
            if status != 204 {
                std::thread::sleep(Duration::from_millis(200));
            }
            continue;
        }
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let mut answers = Vec::new();
        for e in v["requests"].as_array().into_iter().flatten() {
            let command = e["command"].as_str().unwrap_or("?").to_string();
            got.lock().unwrap().push((id.to_string(), command.clone()));
            answers.push(serde_json::json!({"id": e["id"], "status": 202,
                "body": {"accepted": command}}));
        }
        call(
            "responses",
            &serde_json::json!({ "responses": answers }).to_string(),
        );
    }
}

#[test]
fn with_250_agents_the_page_shows_summaries_pages_filters_and_a_command_reaches_page_two() {
    let Some(tools) = Tools::find() else {
        return;
    };
    // n000..n249 in groups grp-00..grp-24 (ten each); every 37th from n005 is degraded.
    let agents: Vec<(String, String, String, &str)> = (0..250)
        .map(|i| {
            let state = if i % 37 == 5 { "degraded" } else { "following" };
            (
                format!("n{i:03}"),
                format!("grp-{:02}", i / 10),
                format!("tok-{i:03}"),
                state,
            )
        })
        .collect();
    let table: Vec<(&str, &str, &str)> = agents
        .iter()
        .map(|(a, g, t, _)| (a.as_str(), g.as_str(), t.as_str()))
        .collect();
    let settings = format!("{HUB_SETTINGS}max_connections_per_address = 2000\n");
    let hub = Hub::start(OPERATOR, &settings, &table);
    let fleet = LightFleet::start(hub.port, agents.clone());
    let totals = || hub.op("GET", "/v1/groups?limit=1", None).1["totals"].clone();
    assert!(
        wait_until(60, || totals()["healthy"] == 243
            && totals()["unhealthy"] == 7),
        "{}\n{}",
        totals(),
        hub.log()
    );
    // The API behind the page: bounds named, the unpaged form kept for existing callers.
    let (s, v) = hub.op("GET", "/v1/agents?limit=501", None);
    assert_eq!(s, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("`limit`"), "{v}");
    let (s, v) = hub.op("GET", "/v1/agents", None);
    assert_eq!((s, v.as_array().map(Vec::len)), (200, Some(250)));

    let b = Browser::start(&tools);
    b.open(&format!("{}/", hub.url()));
    b.type_into("#token", &hub_token(OPERATOR));
    b.click("#signin");
    b.wait_text("#position", 30, |t| t == "agents 1–50 of 250");
    assert_eq!(b.count("tbody tr[data-agent]"), 50);
    b.wait_text("#totals", 20, |t| {
        t == "fleet: 250 agents · 243 healthy · 7 unhealthy · 25 groups · 0 without an active agent"
    });
    // n005 (degraded) is in grp-00; one of its agents holds the lease.
    b.wait_text(r#"tr[data-group="grp-00"] td.summary"#, 20, |t| {
        t.starts_with("10 agents · 9 healthy · 1 unhealthy · active: n00")
    });
    b.wait_text(r#"tr[data-agent="n005"] td.errors"#, 20, |t| {
        t.contains("degraded")
    });

    // Page 2, by the page's own button: n050..n099, nothing of page 1.
    b.click("#page-next");
    b.wait_text("#position", 30, |t| t == "agents 51–100 of 250");
    b.wait_text(r#"tr[data-agent="n050"] td.agent"#, 20, |t| t == "n050");
    assert_eq!(b.count(r#"tr[data-agent="n000"]"#), 0);
    assert_eq!(b.count("tbody tr[data-agent]"), 50);

    // A command from page 2, confirmed, reaches the agent and its answer is shown.
    b.click(r#"tr[data-agent="n057"] button[data-command="resync"]"#);
    b.wait_text("#confirm-text", 10, |t| {
        t.contains("resync") && t.contains("n057")
    });
    b.click("#confirm-yes");
    let out = b.wait_text("#outcome", 60, |t| t.contains("answered"));
    assert!(out.contains("answered 202"), "{out}");
    assert!(
        fleet
            .commands()
            .contains(&("n057".to_string(), "resync".to_string())),
        "{:?}",
        fleet.commands()
    );
    assert_eq!(fleet.commands().len(), 1, "only n057 got a command");

    b.click("#page-prev");
    b.wait_text("#position", 30, |t| t == "agents 1–50 of 250");

    // Unhealthy only: the seven degraded agents, on one page.
    b.click("#filter-unhealthy");
    b.wait_text("#position", 30, |t| t == "agents 1–7 of 7 matching");
    assert_eq!(b.count("tbody tr[data-agent]"), 7);
    for i in (5..250).step_by(37) {
        assert_eq!(
            b.count(&format!(r#"tr[data-agent="n{i:03}"]"#)),
            1,
            "n{i:03}"
        );
    }
    // One group: its ten agents, under one group row.
    b.click("#filter-unhealthy");
    b.type_into("#filter-group", "grp-03");
    b.click("#filter-apply");
    b.wait_text("#position", 30, |t| t == "agents 1–10 of 10 matching");
    assert_eq!(b.count("tbody tr[data-agent]"), 10);
    assert_eq!(b.count("tbody tr.group"), 1);
    b.wait_text(r#"tr[data-group="grp-03"] td.summary"#, 20, |t| {
        t.starts_with("10 agents · 10 healthy · 0 unhealthy · active: n03")
    });
    assert!(b.count(r#"button#page-next:disabled"#) == 1);
    drop(fleet);
}
