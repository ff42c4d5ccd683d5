//! Debian's `tinyproxy` on loopback for the tests that go through a real HTTP proxy: each
//! test starts its own (a private config in a temp dir, `Listen 127.0.0.1`, with or without
//! `BasicAuth`) and it is stopped by its PID when dropped. Needs the `tinyproxy` binary
//! (package `tinyproxy-bin`; `TINYPROXY` may name another path): a missing one fails the
//! test with a message.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use idrelay::net::proxy::{ProxyAuth, ProxyConfig};
use idrelay::secret::Secret;

/// The proxy user of a tinyproxy started with auth.
pub const USER: &str = "agent";
/// tinyproxy accepts only `[-a-z0-9._]` in BasicAuth.
pub const PASSWORD: &str = "proxy-pass_7.x";

/// A fresh directory under the system temp dir, named for this process and `tag`.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "idrelay-{tag}-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A tinyproxy process of this test, stopped (by its PID) and cleaned up on drop.
pub struct Tinyproxy {
    child: Child,
    /// Its loopback port.
    pub port: u16,
    dir: PathBuf,
}

impl Tinyproxy {
    /// Starts tinyproxy on 127.0.0.1, with `BasicAuth USER PASSWORD` when `auth`.
    pub fn start(auth: bool) -> Tinyproxy {
        let binary = std::env::var("TINYPROXY").unwrap_or_else(|_| "tinyproxy".into());
        let dir = temp_dir("tinyproxy");
        // The port is picked by the OS and handed over; on a lost race, try again.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let conf = dir.join("tinyproxy.conf");
            let mut text = format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 32\nLogLevel Connect\n\
                 LogFile \"{}\"\nAllow 127.0.0.1\nDisableViaHeader Yes\n",
                dir.join("tinyproxy.log").display()
            );
            if auth {
                text.push_str(&format!("BasicAuth {USER} {PASSWORD}\n"));
            }
            std::fs::write(&conf, text).unwrap();
            let mut child = Command::new(&binary)
                .arg("-d")
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot run {binary}: {e} (install the Debian package tinyproxy-bin)")
                });
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Tinyproxy { child, port, dir };
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("tinyproxy did not start; see {}", dir.display());
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A client-side proxy setting for it, with the password when `auth`.
    pub fn config(&self, auth: Option<&str>) -> ProxyConfig {
        let p = ProxyConfig::parse(&self.url(), "proxy").unwrap();
        match auth {
            Some(pw) => p.with_auth(ProxyAuth::new(USER, Secret::new(pw)).unwrap()),
            None => p,
        }
    }

    /// Its log so far (`LogLevel Connect`: one line per request or tunnel).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("tinyproxy.log")).unwrap_or_default()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
