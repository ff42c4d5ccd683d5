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
/// `extra` top-level lines, agents a1 and a2 in group `g`.
pub fn two_agent_config(dir: &Path, port: u16, tokens: Tokens, extra: &str) -> String {
    for (name, token) in [
        ("op", tokens.operator),
        ("a1", tokens.a1),
        ("a2", tokens.a2),
    ] {
        write_secret(&dir.join(name), &format!("{token}\n"));
    }
    format!(
        "listen = \"127.0.0.1:{port}\"\noperator_token_file = \"{op}\"\n{extra}\n\
         [[agent]]\nid = \"a1\"\ntoken_file = \"{a1}\"\ngroup = \"g\"\n\n\
         [[agent]]\nid = \"a2\"\ntoken_file = \"{a2}\"\ngroup = \"g\"\n",
        op = dir.join("op").display(),
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
        let log = std::fs::File::create(dir.join("hub.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_idrelay-hub"))
            .arg("--config")
            .arg(dir.join("hub.toml"))
            .arg("--log-level=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start idrelay-hub");
        let mut hub = HubProcess { child, port, dir };
        let until = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = hub.child.try_wait().unwrap() {
                panic!("idrelay-hub exited with {status}:\n{}", hub.log());
            }
            assert!(Instant::now() < until, "hub did not listen:\n{}", hub.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        hub
    }

    /// The hub's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("hub.log")).unwrap_or_default()
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
