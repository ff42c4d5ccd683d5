//! An `idrelay-hub` process for the hub's own tests (tests/hub_live.rs,
//! tests/hub_hostile_live.rs): agents `a1` and `a2` of group `g` and an operator, their
//! tokens in files only the owner may read, on a free loopback port; killed by its PID and
//! its directory removed when dropped (the log's tail printed if the test panicked).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, write_secret};

/// The operator's and the two agents' tokens.
#[derive(Debug, Clone, Copy)]
pub struct Tokens {
    pub operator: &'static str,
    pub a1: &'static str,
    pub a2: &'static str,
}

/// A running hub.
pub struct HubProcess {
    pub child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

/// A fresh scratch directory named after `tag`.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "idrelay-hub-{tag}-{}-{:x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes the token files into `dir` and returns the config text for a hub on `port`:
/// `extra` top-level lines, agents a1 and a2 in group `g`, its state in `dir/state`.
pub fn two_agent_config(dir: &Path, port: u16, tokens: Tokens, extra: &str) -> String {
    for (name, token) in [
        ("op", tokens.operator),
        ("a1", tokens.a1),
        ("a2", tokens.a2),
    ] {
        write_secret(&dir.join(name), &format!("{token}\n"));
    }
    format!(
        "listen = \"127.0.0.1:{port}\"\noperator_token_file = \"{op}\"\n\
         state_dir = \"{state}\"\n{extra}\n\
         [[agent]]\nid = \"a1\"\ntoken_file = \"{a1}\"\ngroup = \"g\"\n\n\
         [[agent]]\nid = \"a2\"\ntoken_file = \"{a2}\"\ngroup = \"g\"\n",
        op = dir.join("op").display(),
        state = dir.join("state").display(),
        a1 = dir.join("a1").display(),
        a2 = dir.join("a2").display(),
    )
}

impl HubProcess {
    /// Starts a hub with [`two_agent_config`] and waits until it listens.
    pub fn launch(tag: &str, tokens: Tokens, extra: &str) -> HubProcess {
        let dir = scratch_dir(tag);
        let port = free_port();
        std::fs::write(
            dir.join("hub.toml"),
            two_agent_config(&dir, port, tokens, extra),
        )
        .unwrap();
        let mut hub = HubProcess {
            child: spawn(&dir),
            port,
            dir,
        };
        hub.wait_listening();
        hub
    }

    /// Stops the process (SIGTERM and waits for its exit when `gently`, else SIGKILL) and
    /// starts it again on the same config, port and state; waits until it listens.
    pub fn restart(&mut self, gently: bool) {
        if gently {
            let ok = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill -TERM {}", self.child.id());
            let until = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    assert_eq!(status.code(), Some(0), "SIGTERM:\n{}", self.log());
                    break;
                }
                assert!(
                    Instant::now() < until,
                    "no exit on SIGTERM:\n{}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        } else {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.child = spawn(&self.dir);
        self.wait_listening();
    }

    fn wait_listening(&mut self) {
        let port = self.port;
        let until = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("idrelay-hub exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < until,
                "hub did not listen:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The hub's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("hub.log")).unwrap_or_default()
    }
}

/// Starts `idrelay-hub` on `dir/hub.toml`, its stderr appended to `dir/hub.log`.
fn spawn(dir: &Path) -> Child {
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(dir.join("hub.log"))
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_idrelay-hub"))
        .arg("--config")
        .arg(dir.join("hub.toml"))
        .arg("--log-level=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start idrelay-hub")
}

impl HubProcess {
    /// The hub's state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(200).collect();
            eprintln!(
                "--- hub log (last lines) ---\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
