//! A real headless Chromium driven over the W3C WebDriver HTTP protocol, for the operator
//! dashboard's test (tests/dashboard_live.rs): Debian's `chromedriver` (package
//! `chromium-driver`) on a free loopback port, and `chromium` started by it with a fresh
//! profile. The client is the few WebDriver calls the test needs, as JSON over one HTTP/1.1
//! request per call (as the other tests speak to the hub), so the test needs no other
//! language or package.
//!
//! Without the two programs the test follows the live tests' rule: one `SKIPPED` line and
//! success, but a failure where the testbed is required (`CI`,
//! `IDRELAY_TESTBED_REQUIRED`). `CHROMIUM` and `CHROMEDRIVER` may name other paths.
//!
//! Everything is stopped by its PID when the [`Browser`] is dropped, also when the test
//! failed: the session is closed (Chromium exits), chromedriver is killed, and any process
//! it started that is still there is killed too.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{free_port, testbed_required, wait_until, TempDir};

/// The WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The flags that make Chromium run here: headless as root in a container (whose /dev/shm
/// may be small), and quiet (its background connections otherwise fail many at a time).
const FLAGS: [&str; 9] = [
    "--headless",
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// The two programs.
pub struct Tools {
    pub chromium: PathBuf,
    pub chromedriver: PathBuf,
}

impl Tools {
    /// Finds `chromium` and `chromedriver` (or `CHROMIUM`, `CHROMEDRIVER`); without them,
    /// `None` after one `SKIPPED` line (the test then returns; the binary's other tests
    /// still run), or a failure where the testbed is required.
    pub fn find() -> Option<Tools> {
        let chromium = which("CHROMIUM", "chromium");
        let chromedriver = which("CHROMEDRIVER", "chromedriver");
        match (chromium, chromedriver) {
            (Some(chromium), Some(chromedriver)) => Some(Tools {
                chromium,
                chromedriver,
            }),
            _ if testbed_required() => panic!(
                "chromium or chromedriver is not installed, and the browser test is required \
                 here (CI or IDRELAY_TESTBED_REQUIRED): apt-get install chromium chromium-driver"
            ),
            _ => skip("chromium or chromedriver is not installed (apt-get install chromium chromium-driver)"),
        }
    }
}

/// `$var`, or `name` on the `PATH`.
fn which(var: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// One `SKIPPED` line on stderr for this test binary (as [`super::skip_live_tests`] prints
/// for a missing test server, written past libtest's capture); `None`.
fn skip(why: &str) -> Option<Tools> {
    static ONE: std::sync::Once = std::sync::Once::new();
    ONE.call_once(|| skip_line(why));
    None
}

fn skip_line(why: &str) {
    let binary = super::test_binary();
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {binary}: {why}; its browser tests did not run"
    );
}

/// A chromedriver with one Chromium session.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    dir: TempDir,
}

impl Browser {
    /// Starts chromedriver on 127.0.0.1 and a headless Chromium session with a fresh
    /// profile.
    pub fn start(tools: &Tools) -> Browser {
        let dir = TempDir::new("browser");
        let port = free_port();
        let driver = Command::new(&tools.chromedriver)
            // Without --allowed-ips it listens on loopback only (with it, on every address).
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                dir.path().join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let mut b = Browser {
            driver,
            port,
            session: String::new(),
            dir,
        };
        assert!(
            wait_until(20, || b
                .call("GET", "/status", None)
                .is_ok_and(|v| v["ready"] == true)),
            "chromedriver did not come up: {}",
            b.driver_log()
        );
        let profile = b.dir.path().join("profile");
        let mut args: Vec<String> = FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        args.push("--window-size=1280,900".into());
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": tools.chromium, "args": args},
        }}});
        let v = b
            .call("POST", "/session", Some(&caps))
            .unwrap_or_else(|e| panic!("no Chromium session: {e}\n{}", b.driver_log()));
        b.session = v["sessionId"].as_str().expect("sessionId").to_string();
        b
    }

    /// chromedriver's log so far.
    pub fn driver_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default()
    }

    /// One WebDriver call: the answer's `value`, or the WebDriver error as text.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let body = body.map(Value::to_string).unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        );
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        // chromedriver keeps the connection open whatever `Connection: close` says: read
        // the head, then Content-Length bytes.
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        let head_end = loop {
            if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let n = s.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed before the answer's head".into());
            }
            raw.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .ok_or("no Content-Length in the answer")?;
        let mut body = raw[head_end + 4..].to_vec();
        while body.len() < len {
            let n = s.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&buf[..n]);
        }
        let rest = String::from_utf8_lossy(&body);
        let v: Value = serde_json::from_str(&rest).map_err(|e| format!("{status}: {e}: {rest}"))?;
        if status == 200 {
            Ok(v["value"].clone())
        } else {
            Err(format!(
                "{status} {}: {}",
                v["value"]["error"].as_str().unwrap_or("?"),
                v["value"]["message"].as_str().unwrap_or("")
            ))
        }
    }

    fn session_call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    /// Opens `url`.
    pub fn open(&self, url: &str) {
        self.session_call("POST", "/url", Some(&json!({"url": url})))
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The element `css` matches first, if any.
    fn find(&self, css: &str) -> Result<String, String> {
        let v = self.session_call(
            "POST",
            "/element",
            Some(&json!({"using": "css selector", "value": css})),
        )?;
        v[ELEMENT]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("no element reference: {v}"))
    }

    /// How many elements `css` matches.
    pub fn count(&self, css: &str) -> usize {
        self.session_call(
            "POST",
            "/elements",
            Some(&json!({"using": "css selector", "value": css})),
        )
        .ok()
        .and_then(|v| v.as_array().map(Vec::len))
        .unwrap_or(0)
    }

    /// The rendered text of the first element `css` matches (`None`: no such element).
    pub fn text(&self, css: &str) -> Option<String> {
        let e = self.find(css).ok()?;
        self.session_call("GET", &format!("/element/{e}/text"), None)
            .ok()?
            .as_str()
            .map(str::to_string)
    }

    /// Waits up to `secs` until the text of `css` satisfies `ok`; the last text seen.
    pub fn wait_text(&self, css: &str, secs: u64, ok: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            let t = self.text(css);
            if t.as_deref().is_some_and(&ok) {
                return t.unwrap_or_default();
            }
            assert!(
                Instant::now() < until,
                "`{css}` never showed what was expected within {secs} s; last: {t:?}\npage: {}",
                self.text("body").unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Clicks the first element `css` matches (waiting up to 10 s for it to be there and
    /// clickable).
    pub fn click(&self, css: &str) {
        self.retry(css, |e| {
            self.session_call("POST", &format!("/element/{e}/click"), Some(&json!({})))
        });
    }

    /// Types `text` into the first element `css` matches.
    pub fn type_into(&self, css: &str, text: &str) {
        self.retry(css, |e| {
            self.session_call(
                "POST",
                &format!("/element/{e}/value"),
                Some(&json!({"text": text})),
            )
        });
    }

    fn retry(&self, css: &str, act: impl Fn(&str) -> Result<Value, String>) {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let r = self.find(css).and_then(|e| act(&e));
            match r {
                Ok(_) => return,
                Err(e) if Instant::now() >= until => panic!(
                    "`{css}`: {e}\npage: {}",
                    self.text("body").unwrap_or_default()
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Runs `script` in the page (WebDriver "execute script"); its result.
    pub fn script(&self, script: &str) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(&json!({"script": script, "args": []})),
        )
        .unwrap_or_else(|e| panic!("script: {e}"))
    }
}

/// `(pid, start time)` of the processes below `root` (children, their children, ...),
/// from /proc; the start time tells a process from a later one with a reused PID.
fn descendants(root: u32) -> Vec<(u32, u64)> {
    let mut procs = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some((ppid, started)) = stat(pid) {
                procs.push((pid, ppid, started));
            }
        }
    }
    let mut out = vec![(root, 0)];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].0;
        out.extend(
            procs
                .iter()
                .filter(|(_, pp, _)| *pp == p)
                .map(|(c, _, t)| (*c, *t)),
        );
        i += 1;
    }
    out.remove(0);
    out
}

/// The parent PID and start time of `pid` (`/proc/PID/stat`: `pid (comm) state ppid ...`,
/// the start time 19 fields after the state; comm may hold spaces, so split after its `)`).
fn stat(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.get(1)?.parse().ok()?, f.get(19)?.parse().ok()?))
}

impl Drop for Browser {
    fn drop(&mut self) {
        let below = descendants(self.driver.id());
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // Whatever chromedriver started and is still there, by PID (and start time: not
        // a later process that got the PID).
        for (pid, started) in below {
            if stat(pid).map(|(_, t)| t) != Some(started) {
                continue;
            }
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        if std::thread::panicking() {
            let log = self.driver_log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "--- chromedriver log (last lines) ---\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}
