//! Shared pieces of the integration tests: the real `idrelay` binary, a private scim2-server
//! per test, LDIF loaded into the real directories with ldap-utils.
//!
//! The servers come from `scripts/test.sh` (it starts slapd, Samba AD and 389-DS and exports
//! their coordinates); a test that finds a variable missing fails and says so, it never passes
//! silently (the exceptions, [`Dir::ds389`] and the live AD feed tests, print a note and
//! return). Every server a test starts listens on 127.0.0.1 and is stopped by its PID.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
pub mod canaille;
pub mod faultproxy;
pub mod hub_process;
pub mod pki;
pub mod scope_groups;
pub mod tinyproxy;
pub mod webdriver;

/// A variable of the testbed (`scripts/test.sh` starts the servers and exports them).
///
/// Where the testbed is required (`CI`, or `IDRELAY_TESTBED_REQUIRED` that
/// `scripts/test.sh` sets once the servers are up) a missing one fails the test. Elsewhere
/// (a plain `cargo test` on a machine without the servers) the live tests cannot run: this
/// test binary prints one `SKIPPED` line naming the variable and ends with success, so the
/// offline test binaries still run and pass.
pub fn env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) => v,
        Err(_) if testbed_required() => panic!(
            "{name} is not set, and the test servers are required here (CI or \
             IDRELAY_TESTBED_REQUIRED): scripts/test.sh starts them and exports their coordinates"
        ),
        Err(_) => skip_live_tests(name),
    }
}

/// Whether a missing test server is a failure rather than a skip.
pub fn testbed_required() -> bool {
    std::env::var_os("CI").is_some() || std::env::var_os("IDRELAY_TESTBED_REQUIRED").is_some()
}

/// Ends this test binary with success after one line on stderr (written past libtest's
/// output capture, which would swallow it).
/// This test binary's name without cargo's hash (`relay_live`), for the SKIPPED line.
pub fn test_binary() -> String {
    let binary = std::env::args()
        .next()
        .and_then(|a| {
            Path::new(&a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    match binary.rsplit_once('-') {
        Some((b, _)) => b.to_string(),
        None => binary,
    }
}

pub fn skip_live_tests(name: &str) -> ! {
    use std::io::Write;
    // One line per binary: the first test to get here prints and exits; the others (test
    // threads) wait here until the process is gone.
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _line = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let binary = test_binary();
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {binary}: {name} is not set, so the test servers are not running; its live \
         tests did not run (scripts/test.sh starts the servers and runs every test)"
    );
    std::process::exit(0)
}

/// A unique, short suffix for names in shared directories.
pub fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{tag}-{}-{:x}", std::process::id(), nanos)
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("idrelay-it-{}", unique(tag)));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private scim2-server (the python-scim project's reference server, from PyPI), on a
/// free loopback port, stopped by PID on drop.
pub struct ScimServer {
    child: Child,
    pub port: u16,
    pub token: String,
    log: PathBuf,
}

impl ScimServer {
    pub fn start() -> ScimServer {
        ScimServer::start_with(&[])
    }

    /// A private scim2-server started with extra arguments (e.g. `--schema FILE`).
    ///
    /// The free port can be taken by another test's socket before the server binds it
    /// (tests run side by side): the server then exits, and starts again on another port.
    /// Only its own answer counts (a 200 to `/ServiceProviderConfig` with its token while
    /// it runs), never another server's on that port.
    pub fn start_with(extra: &[&str]) -> ScimServer {
        for _ in 0..3 {
            if let Some(s) = ScimServer::try_start(extra) {
                return s;
            }
        }
        ScimServer::try_start(extra).expect("scim2-server did not start on 4 free ports")
    }

    fn try_start(extra: &[&str]) -> Option<ScimServer> {
        let venv = env("SCIM_VENV");
        let port = free_port();
        let token = format!("tok-{}", unique("scim"));
        let log = std::env::temp_dir().join(format!("idrelay-it-scim-{port}.log"));
        let child = Command::new(Path::new(&venv).join("bin/scim2-server"))
            .args(["--hostname", "127.0.0.1", "--port", &port.to_string()])
            .args(["--bearer-token", &token])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::from(
                std::fs::File::options().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .expect("start scim2-server from $SCIM_VENV");
        let mut s = ScimServer {
            child,
            port,
            token,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = s.child.try_wait() {
                eprintln!(
                    "scim2-server on port {port} ended ({status}), trying another port: {}",
                    std::fs::read_to_string(&s.log).unwrap_or_default()
                );
                return None;
            }
            if matches!(s.try_get("/ServiceProviderConfig"), Ok((200, _))) {
                return Some(s);
            }
            assert!(
                Instant::now() < deadline,
                "scim2-server did not answer on port {port}: {}",
                std::fs::read_to_string(&s.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v2", self.port)
    }

    fn try_get(&self, path: &str) -> Result<(u16, String), String> {
        http_request(self.port, "GET", &format!("/v2{path}"), &self.token, None)
    }

    /// GET a path under the base URL; panics unless 200.
    pub fn get(&self, path: &str) -> Value {
        let (status, body) = self.try_get(path).unwrap();
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// All resources of an endpoint ("Users" / "Groups").
    pub fn all(&self, endpoint: &str) -> Vec<Value> {
        let v = self.get(&format!("/{endpoint}?count=1000"));
        v["Resources"].as_array().cloned().unwrap_or_default()
    }

    /// The one resource with this externalId, if any.
    pub fn by_external_id(&self, endpoint: &str, external_id: &str) -> Option<Value> {
        let filter = format!("externalId eq \"{external_id}\"");
        let v = self.get(&format!("/{endpoint}?filter={}", url_encode(&filter)));
        let list = v["Resources"].as_array().cloned().unwrap_or_default();
        assert!(
            list.len() <= 1,
            "externalId {external_id} is held {} times",
            list.len()
        );
        list.into_iter().next()
    }

    /// POST a resource directly (to set up conflicts).
    pub fn post(&self, endpoint: &str, body: &Value) -> Value {
        let (status, text) = http_request(
            self.port,
            "POST",
            &format!("/v2/{endpoint}"),
            &self.token,
            Some(&body.to_string()),
        )
        .unwrap();
        assert_eq!(status, 201, "POST {endpoint}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// DELETE a resource directly ("Users/ID"); panics unless 204.
    pub fn delete(&self, path: &str) {
        let (status, text) = http_request(
            self.port,
            "DELETE",
            &format!("/v2/{path}"),
            &self.token,
            None,
        )
        .unwrap();
        assert_eq!(status, 204, "DELETE {path}: {text}");
    }
}

impl Drop for ScimServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Percent-encodes a query value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A minimal blocking HTTP/1.0 exchange with the test server (not the code under test).
fn http_request(
    port: u16,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Type: application/scim+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text.split_once("\r\n\r\n").ok_or("no header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    Ok((status, rest.to_string()))
}

/// How long an ldap-utils tool may run before [`ldap_tool`] ends it: a server that stops
/// answering fails the test that asked, instead of hanging the whole run.
const LDAP_TOOL_LIMIT: Duration = Duration::from_secs(180);

/// Runs an ldap-utils tool (`ldapmodify`, `ldapadd`, `ldapdelete`) bound as `dn` with
/// `stdin` as its input; returns its exit code and stderr. A tool still running after
/// [`LDAP_TOOL_LIMIT`] is ended (by its PID) and reported as exit code -1, with a stderr
/// naming the server that did not answer.
pub fn ldap_tool(
    url: &str,
    dn: &str,
    password: &str,
    tool: &str,
    extra: &[&str],
    stdin: &str,
) -> (i32, String) {
    let mut child = Command::new(tool)
        .args(["-x", "-H", url, "-D", dn, "-w", password])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {tool} (install ldap-utils): {e}"));
    // Input and stderr on threads of their own: either may fill its pipe while the
    // server is slow, and the wait below must stay bounded.
    let mut input = child.stdin.take().unwrap();
    let input_text = stdin.to_string();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(input_text.as_bytes());
    });
    let mut err_pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut err = String::new();
        let _ = err_pipe.read_to_string(&mut err);
        err
    });
    let status = exit_within(&mut child, LDAP_TOOL_LIMIT);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = feeder.join();
    let err = reader.join().unwrap_or_default();
    match status {
        Some(status) => (status.code().unwrap_or(-1), err),
        None => (
            -1,
            format!(
                "{tool} got no answer from {url} within {} s and was ended: is the server \
                 wedged? {err}",
                LDAP_TOOL_LIMIT.as_secs()
            ),
        ),
    }
}

/// Coordinates of one of the test directories.
#[derive(Clone)]
pub struct Dir {
    pub url: String,
    pub base: String,
    pub admin_dn: String,
    pub admin_pw: String,
    pub bind_dn: String,
    pub bind_pw: String,
    pub ca: String,
}

impl Dir {
    pub fn openldap() -> Dir {
        Dir {
            url: env("OPENLDAP_URL"),
            base: env("OPENLDAP_BASE_DN"),
            admin_dn: env("OPENLDAP_ROOT_DN"),
            admin_pw: env("OPENLDAP_ROOT_PW"),
            bind_dn: env("OPENLDAP_SYNC_DN"),
            bind_pw: env("OPENLDAP_SYNC_PW"),
            ca: env("OPENLDAP_CA_CERT"),
        }
    }

    pub fn samba() -> Dir {
        Dir {
            url: env("AD_LDAP_URL"),
            base: env("AD_BASE_DN"),
            admin_dn: env("AD_BIND_DN"),
            admin_pw: env("AD_PASSWORD"),
            bind_dn: env("AD_BIND_DN"),
            bind_pw: env("AD_PASSWORD"),
            ca: env("AD_CA_CERT"),
        }
    }

    /// The 389 Directory Server of the testbed (`scripts/testbed/389ds.sh`). Without it: one
    /// `SKIPPED` line and the end of this test binary ([`skip_live_tests`]).
    pub fn ds389() -> Option<Dir> {
        if std::env::var_os("DS389_URL").is_none() {
            assert!(
                !testbed_required(),
                "DS389_URL is not set, and the test servers are required here (CI or \
                 IDRELAY_TESTBED_REQUIRED): scripts/test.sh must start 389-DS"
            );
            skip_live_tests("DS389_URL");
        }
        Some(Dir {
            url: env("DS389_URL"),
            base: env("DS389_BASE_DN"),
            admin_dn: env("DS389_ROOT_DN"),
            admin_pw: env("DS389_ROOT_PW"),
            bind_dn: env("DS389_SYNC_DN"),
            bind_pw: env("DS389_SYNC_PW"),
            ca: String::new(), // no TLS listener
        })
    }

    fn tool(&self, tool: &str, extra: &[&str], stdin: &str) -> (i32, String) {
        ldap_tool(
            &self.url,
            &self.admin_dn,
            &self.admin_pw,
            tool,
            extra,
            stdin,
        )
    }

    /// Applies LDIF (adds, or changetype records) as the admin; panics on failure.
    pub fn modify(&self, ldif: &str) {
        let (code, err) = self.tool("ldapmodify", &["-a"], ldif);
        assert_eq!(code, 0, "ldapmodify failed: {err}\n{ldif}");
    }

    /// Deletes a subtree, ignoring "no such object".
    pub fn delete_tree(&self, dn: &str) {
        let _ = self.tool("ldapdelete", &["-r", dn], "");
    }

    /// One attribute of one entry, as ldapsearch prints it (`attr:: base64` for binary).
    pub fn attr_ldif(&self, dn: &str, attr: &str) -> Option<String> {
        let out = Command::new("ldapsearch")
            .args(["-x", "-LLL", "-o", "ldif-wrap=no", "-H", &self.url])
            .args([
                "-D",
                &self.admin_dn,
                "-w",
                &self.admin_pw,
                "-b",
                dn,
                "-s",
                "base",
                attr,
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| {
                l.to_ascii_lowercase()
                    .starts_with(&format!("{}:", attr.to_ascii_lowercase()))
            })
            .map(|l| {
                l.split_once(':')
                    .unwrap()
                    .1
                    .trim_start_matches(':')
                    .trim()
                    .to_string()
            })
    }
}

/// An OU of its own in a shared directory, removed on drop.
pub struct TestOu {
    pub dir: Dir,
    pub dn: String,
}

impl TestOu {
    pub fn create(dir: &Dir, tag: &str) -> TestOu {
        let name = unique(tag);
        let dn = format!("ou={name},{}", dir.base);
        dir.modify(&format!(
            "dn: {dn}\nobjectClass: organizationalUnit\nou: {name}\n"
        ));
        TestOu {
            dir: dir.clone(),
            dn,
        }
    }

    /// The entryUUID of `rdn` under this OU (the agent's anchor on OpenLDAP).
    pub fn entry_uuid(&self, rdn: &str) -> String {
        self.dir
            .attr_ldif(&format!("{rdn},{}", self.dn), "entryUUID")
            .expect("entryUUID")
    }

    /// The endpoint's user for `rdn` under this OU, found by its externalId.
    pub fn scim_user(&self, scim: &ScimServer, rdn: &str) -> Value {
        scim.by_external_id("Users", &self.entry_uuid(rdn))
            .unwrap_or_else(|| panic!("{rdn} at the endpoint"))
    }
}

impl Drop for TestOu {
    fn drop(&mut self) {
        self.dir.delete_tree(&self.dn);
    }
}

/// An agent set-up: config, secrets and state directory in a temp dir.
pub struct Agent {
    pub tmp: TempDir,
    pub config: PathBuf,
}

impl Agent {
    /// Writes a config for `dir` (scope: `include`) and the SCIM server at `scim_url`.
    pub fn new(dir: &Dir, include: &[&str], scim_url: &str, token: &str, extra: &str) -> Agent {
        let tmp = TempDir::new("agent");
        let p = tmp.path();
        write_secret(&p.join("ldap.secret"), &format!("{}\n", dir.bind_pw));
        write_secret(&p.join("scim.token"), token);
        let include = include
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let text = format!(
            r#"[agent]
id = "test-agent"
state_dir = "{state}"

[directory]
url = "{url}"
bind_dn = "{bind}"
password_file = "{secret}"
base_dn = "{base}"

[scope]
include = [{include}]

[scim]
url = "{scim_url}"
token_file = "{token}"
timeout_secs = 10

[sync]
concurrency = 4
max_attempts = 2
delete_settle_secs = 1
{extra}
"#,
            state = p.join("state").display(),
            url = dir.url,
            bind = dir.bind_dn,
            secret = p.join("ldap.secret").display(),
            base = dir.base,
            token = p.join("scim.token").display(),
        );
        let config = p.join("idrelay.toml");
        std::fs::write(&config, text).unwrap();
        Agent { tmp, config }
    }

    /// `status --json`: the document and the exit code.
    pub fn status_json(&self) -> (Value, i32) {
        let r = self.run(&["status", "--json"]);
        let v: Value = serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("status --json: {e}\n{}\n{}", r.stdout, r.stderr));
        (v, r.code)
    }

    /// Runs `idrelay --config CONFIG ARGS...`.
    pub fn run(&self, args: &[&str]) -> Run {
        run_binary(&[&["--config", self.config.to_str().unwrap()], args].concat())
    }

    /// Rewrites one line of the config (`from` must occur).
    pub fn edit_config(&self, from: &str, to: &str) {
        let t = std::fs::read_to_string(&self.config).unwrap();
        assert!(t.contains(from), "config has no `{from}`");
        std::fs::write(&self.config, t.replace(from, to)).unwrap();
    }

    /// Appends `text` (e.g. a section) to the config.
    pub fn append_config(&self, text: &str) {
        let mut t = std::fs::read_to_string(&self.config).unwrap();
        t.push_str(text);
        std::fs::write(&self.config, t).unwrap();
    }

    /// An agent like [`Agent::new`] with the id `id` and a `[relay]` section that points
    /// at `hub` with the agent token `token` (group `branch`, heartbeats and polls every
    /// 5 s), followed by `extra` config text.
    pub fn with_relay(
        dir: &Dir,
        include: &[&str],
        scim: &ScimServer,
        hub: &Hub,
        (id, token): (&str, &str),
        extra: &str,
    ) -> Agent {
        let agent = Agent::new(dir, include, &scim.base_url(), &scim.token, "");
        agent.edit_config("id = \"test-agent\"", &format!("id = \"{id}\""));
        let token_file = agent.tmp.path().join("relay.token");
        write_secret(&token_file, &hub_token(token));
        agent.append_config(&format!(
            "\n[relay]\nurl = \"{}\"\ntoken_file = \"{}\"\ngroup = \"branch\"\nheartbeat_secs = 5\npoll_wait_secs = 5\n{extra}",
            hub.url(),
            token_file.display()
        ));
        agent
    }
}

/// The result of one run of the binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The last line of stdout (the summary of `sync --once`).
    pub fn summary(&self) -> &str {
        self.stdout.lines().last().unwrap_or("")
    }
    /// A pass that ended well and wrote nothing (its summary counts no POST, PUT or PATCH).
    pub fn assert_wrote_nothing(&self) -> &Run {
        self.assert_code(0);
        assert!(
            self.summary().contains("requests: 0 POST, 0 PUT, 0 PATCH"),
            "{}",
            self.summary()
        );
        self
    }
    pub fn assert_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code, code,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Runs the real binary with a timeout (a hung agent fails the test instead of CI).
pub fn run_binary(args: &[&str]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_idrelay"))
        .args(root_flag())
        .args(args)
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).unwrap();
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).unwrap();
        s
    });
    let Some(status) = exit_within(&mut child, Duration::from_secs(180)) else {
        let _ = child.kill();
        panic!("idrelay {args:?} did not finish in 180 s");
    };
    Run {
        code: status.code().unwrap_or(-1),
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

/// A TCP forwarder on loopback in front of a real server, whose link the test can cut
/// (every open connection is shut and new ones are refused) and restore.
pub struct Link {
    pub port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Link {
    pub fn new(target_port: u16) -> Link {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (u, o) = (up.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !u.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) else {
                    continue;
                };
                {
                    let mut g = o.lock().unwrap();
                    g.push(client.try_clone().unwrap());
                    g.push(server.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Link { port, up, open }
    }

    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Agent {
    /// Starts `idrelay --config CONFIG ARGS...` in the background; its stderr goes to
    /// `agent.log` in the temp dir (appended across restarts).
    pub fn spawn(&self, args: &[&str]) -> Child {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.tmp.path().join("agent.log"))
            .unwrap();
        Command::new(env!("CARGO_BIN_EXE_idrelay"))
            .args(root_flag())
            .args(["--config", self.config.to_str().unwrap(), "--quiet"])
            .args(args)
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("agent.log")).unwrap_or_default()
    }
}

/// Writes a secret file readable by its owner only (the agent refuses others).
/// A relay token the hub accepts (at least 22 characters, docs/hub.md): `t` itself when
/// long enough, else `t` with a fixed filler, so tests may name short tokens.
pub fn hub_token(t: &str) -> String {
    const FILL: &str = "-k7Qm2xR9vT4wZp8LbN3cYh";
    if t.len() >= 22 {
        t.to_string()
    } else {
        format!("{t}{}", &FILL[..22 - t.len()])
    }
}

pub fn write_secret(path: &Path, content: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// `--allow-root` when the tests run as root (CI containers do); nothing otherwise.
pub fn root_flag() -> &'static [&'static str] {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false);
    if root {
        &["--allow-root"]
    } else {
        &[]
    }
}

/// The exit status of a child we started, polled every 20 ms; `None` if it is still
/// running after `limit` (the caller decides whether to end it).
pub fn exit_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `f` every 100 ms until it returns true or `secs` pass.
pub fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM to a child we started (by its PID), then up to 10 s for it to exit (a kill
/// after that); its exit status.
pub fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    for _ in 0..200 {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait().unwrap()
}

/// Standard base64 with padding, written here so the tests do not depend on the code
/// under test.
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            out.push(if i <= c.len() {
                A[(n >> (18 - 6 * i)) as usize & 63] as char
            } else {
                '='
            });
        }
    }
    out
}

/// A child process (an `idrelay run`), killed by its PID on drop.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Hub settings for the relay tests: heartbeats, polls and redeliveries every 5 s, a
/// lease of 3 heartbeats, forwarded requests time out after 20 s.
pub const HUB_SETTINGS: &str = "heartbeat_secs = 5\nlease_ttl_heartbeats = 3\npoll_wait_secs = 5\nredeliver_secs = 5\nforward_timeout_secs = 20\n";

/// The real `idrelay-hub` on a free loopback port, its config, tokens and log in its own
/// temp dir; killed by its PID on drop (and by [`Hub::stop`]).
pub struct Hub {
    child: Option<Child>,
    /// While the process is stopped: a socket bound to its port (never listening), so no
    /// other test's server takes the port before [`Hub::spawn`] starts the hub on it again.
    /// An agent's connection is refused, as by a hub that is down.
    held: Option<PortHold>,
    pub port: u16,
    operator: String,
    config: PathBuf,
    log: PathBuf,
    _tmp: TempDir,
}

impl Hub {
    /// Starts a hub with the operator token `operator`, the top-level config lines
    /// `settings` and one `[[agent]]` per (id, group, token); waits until it listens.
    pub fn start(operator: &str, settings: &str, agents: &[(&str, &str, &str)]) -> Hub {
        let tmp = TempDir::new("hub");
        let p = tmp.path().to_path_buf();
        let operator = &hub_token(operator);
        write_secret(&p.join("operator.token"), operator);
        let port = free_port();
        let mut text = format!(
            "listen = \"127.0.0.1:{port}\"\noperator_token_file = \"{}\"\nstate_dir = \"{}\"\n{settings}",
            p.join("operator.token").display(),
            p.join("state").display()
        );
        for (id, group, token) in agents {
            text.push_str(&agent_section(&p, id, group, token));
        }
        let config = p.join("hub.toml");
        std::fs::write(&config, &text).unwrap();
        let mut hub = Hub {
            child: None,
            held: None,
            port,
            operator: operator.to_string(),
            config,
            log: p.join("hub.log"),
            _tmp: tmp,
        };
        // The free port can be taken by another test's socket before the hub binds it
        // (tests run side by side): the hub then exits, and starts again on another port.
        for _ in 0..3 {
            if hub.try_spawn() {
                return hub;
            }
            let port = free_port();
            let old = format!("listen = \"127.0.0.1:{}\"", hub.port);
            text = text.replacen(&old, &format!("listen = \"127.0.0.1:{port}\""), 1);
            std::fs::write(&hub.config, &text).unwrap();
            hub.port = port;
        }
        hub.spawn();
        hub
    }

    /// Starts the process (again, after [`Hub::stop`]), its stderr appended to the log;
    /// waits until it listens.
    pub fn spawn(&mut self) {
        assert!(self.try_spawn(), "hub did not listen: {}", self.log());
    }

    /// [`Hub::spawn`], false if the process ended before it said it listens (its port
    /// taken) or it did not listen within 20 s. Only the hub's own "listening" line counts,
    /// not a connection alone (another socket may hold the port).
    fn try_spawn(&mut self) -> bool {
        const LISTENING: &str = "idrelay-hub listening on";
        let said = |log: &Path| {
            std::fs::read_to_string(log)
                .unwrap_or_default()
                .matches(LISTENING)
                .count()
        };
        let before = said(&self.log);
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        // Released only now: the hub binds the port milliseconds later.
        self.held = None;
        let child = Command::new(env!("CARGO_BIN_EXE_idrelay-hub"))
            .args(["--config", self.config.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start idrelay-hub");
        self.child = Some(child);
        let port = self.port;
        let mut ended = false;
        let up = wait_until(20, || {
            ended = self
                .child
                .as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_some());
            ended || (said(&self.log) > before && TcpStream::connect(("127.0.0.1", port)).is_ok())
        });
        if ended || !up {
            self.stop();
            return false;
        }
        true
    }

    /// Stops the process as an operator does (SIGTERM, by PID) and waits for its exit 0.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let ok = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill -TERM {}", c.id());
            let status = c.wait().unwrap();
            assert_eq!(status.code(), Some(0), "hub on SIGTERM: {}", self.log());
            self.held = PortHold::new(self.port);
        }
    }

    /// Kills the process (by PID); its port stays held until [`Hub::spawn`].
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            self.held = PortHold::new(self.port);
        }
    }

    /// Adds an `[[agent]]` to the hub's config (it reads it when it starts: after
    /// [`Hub::stop`], before [`Hub::spawn`]).
    pub fn add_agent(&self, id: &str, group: &str, token: &str) {
        let mut t = std::fs::read_to_string(&self.config).unwrap();
        t.push_str(&agent_section(
            self.config.parent().unwrap(),
            id,
            group,
            token,
        ));
        std::fs::write(&self.config, t).unwrap();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One request with the operator token (SCIM content type under `/scim/`, JSON
    /// elsewhere); (status, JSON body or Null).
    pub fn op(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
        let body = body.unwrap_or("");
        let content_type = if path.contains("/scim/") {
            "application/scim+json"
        } else {
            "application/json"
        };
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.operator,
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

    /// Sends the command `body` to `agent` and waits up to `secs` for its answer: (status,
    /// body), or `None` when none came in time.
    pub fn command_answer(&self, agent: &str, body: &str, secs: u64) -> Option<(u16, Value)> {
        let (s, v) = self.op("POST", &format!("/v1/agents/{agent}/commands"), Some(body));
        assert_eq!(s, 202, "command not queued: {v}");
        let id = v["id"].as_str().unwrap().to_string();
        let mut answer = None;
        wait_until(secs, || {
            let (s, v) = self.op("GET", &format!("/v1/requests/{id}"), None);
            if s == 200 {
                answer = Some((v["status"].as_u64().unwrap_or(0) as u16, v["body"].clone()));
            }
            answer.is_some()
        });
        answer
    }

    /// The role (`active`, `standby`) the hub gives `agent`; none before its first
    /// heartbeat.
    pub fn role(&self, agent: &str) -> Option<String> {
        let (_, v) = self.op("GET", "/v1/agents", None);
        v.as_array()?
            .iter()
            .find(|a| a["agent"] == agent)
            .and_then(|a| a["role"].as_str().map(str::to_string))
    }
}

/// A hub's `[[agent]]` section for (id, group, token), its token written to `dir/ID.token`.
fn agent_section(dir: &Path, id: &str, group: &str, token: &str) -> String {
    let f = dir.join(format!("{id}.token"));
    write_secret(&f, &hub_token(token));
    format!(
        "\n[[agent]]\nid = \"{id}\"\ngroup = \"{group}\"\ntoken_file = \"{}\"\n",
        f.display()
    )
}

/// A TCP socket bound to 127.0.0.1:`port` that never listens: a connection to it is
/// refused, as by a hub that is down, and the kernel never hands the port out as a free one.
///
/// It sets SO_REUSEADDR, as the hub does: the killed hub's connections may linger in
/// TIME_WAIT on the port, and only a socket that allows reuse can bind beside them. That
/// does not open the port to others: the kernel's search for a free port (a bind to port
/// 0, as [`free_port`] and the canned servers do) skips every port that has a socket
/// bound, unless the whole range is taken.
///
/// Why: between a hub's stop and its start again (seconds, in the tests that start an
/// agent before its hub), a server of a test running beside it once got the same port from
/// the kernel and answered the agent's heartbeat with its own 404.
pub struct PortHold(std::os::fd::OwnedFd);

impl PortHold {
    /// None when the port cannot be bound (a listening socket has it already; the next
    /// start of the hub says so); a line on stderr says why.
    pub fn new(port: u16) -> Option<PortHold> {
        PortHold::bind(port)
            .inspect_err(|e| eprintln!("cannot hold port {port} while the hub is down: {e}"))
            .ok()
    }

    fn bind(port: u16) -> rustix::io::Result<PortHold> {
        use rustix::net::{bind, socket_with, sockopt, AddressFamily, SocketFlags, SocketType};
        // Close-on-exec: a process the test starts meanwhile (the agent) must not keep it.
        let fd = socket_with(
            AddressFamily::INET,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )?;
        sockopt::set_socket_reuseaddr(&fd, true)?;
        bind(
            &fd,
            &std::net::SocketAddrV4::new([127, 0, 0, 1].into(), port),
        )?;
        Ok(PortHold(fd))
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The payload of a chunked HTTP/1.1 body.
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

/// A fresh scim2-server behind a fault proxy, and an agent for `ou` that talks through it
/// (`extra`: more `[sync]` settings).
pub fn scim_behind_proxy(
    dir: &Dir,
    ou: &TestOu,
    extra: &str,
) -> (ScimServer, faultproxy::FaultProxy, Agent) {
    let scim = ScimServer::start();
    let proxy = faultproxy::FaultProxy::http(scim.port);
    let agent = Agent::new(dir, &[&ou.dn], &proxy.http_url("/v2"), &scim.token, extra);
    (scim, proxy, agent)
}
