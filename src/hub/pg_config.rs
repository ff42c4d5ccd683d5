//! `storage = "postgres"`: the database URL read from `database_url_file` and judged
//! before anything connects. Pure but for the file read it is handed.
//!
//! Invariants:
//! * The URL is a secret (it may hold the password): it is read from a file only its
//!   owner may access, kept in a [`Secret`], and never printed; errors name the key and the
//!   file, [`PgTarget::describe`] shows host, port and database without user or password.
//! * TLS to the database is not built in (no OpenSSL in this project): a URL asking for it
//!   (`sslmode=require`) is refused, and a host that is not loopback (nor a Unix socket
//!   directory) is refused unless `database_allow_plaintext = true` says a trusted network
//!   carries it (the hub then warns at every start), as `allow_plaintext` does for the
//!   listener.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::secret::Secret;

/// Where a PostgreSQL store lives: the URL (secret) and the file it came from.
#[derive(Clone)]
pub struct PgTarget {
    /// `database_url_file`.
    pub file: PathBuf,
    /// The URL itself.
    pub url: Secret,
    /// The parsed connection settings (TLS off).
    pub config: postgres::Config,
    /// `database_allow_plaintext` was needed (a host that is not loopback).
    pub plaintext_remote: bool,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget")
            .field("file", &self.file)
            .field("database", &self.describe())
            .finish_non_exhaustive()
    }
}

impl PartialEq for PgTarget {
    fn eq(&self, other: &PgTarget) -> bool {
        self.file == other.file && self.url == other.url
    }
}

impl Eq for PgTarget {}

impl PgTarget {
    /// `database NAME on HOST:PORT` (no user, no password), for logs and errors.
    pub fn describe(&self) -> String {
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let port = self
                    .config
                    .get_ports()
                    .get(i)
                    .or(self.config.get_ports().first())
                    .copied()
                    .unwrap_or(5432);
                match h {
                    postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                    #[cfg(unix)]
                    postgres::config::Host::Unix(dir) => format!("{}:{port}", dir.display()),
                }
            })
            .collect();
        format!(
            "PostgreSQL database `{}` on {}",
            self.config.get_dbname().unwrap_or("(the user's)"),
            if hosts.is_empty() {
                "localhost".to_string()
            } else {
                hosts.join(",")
            }
        )
    }
}

/// Whether `host` stays on this machine: a loopback address, `localhost`, or a Unix
/// socket directory.
fn local(host: &postgres::config::Host) -> bool {
    match host {
        postgres::config::Host::Tcp(name) => {
            name.eq_ignore_ascii_case("localhost")
                || IpAddr::from_str(name.trim_start_matches('[').trim_end_matches(']'))
                    .is_ok_and(|ip| ip.is_loopback())
        }
        #[cfg(unix)]
        postgres::config::Host::Unix(_) => true,
    }
}

/// Reads and judges `database_url_file` (with `read`, which refuses a file its group or
/// others may access). The error is the message for the key `database_url_file`.
pub fn target(
    file: &Path,
    allow_plaintext: bool,
    read: &dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
) -> Result<PgTarget, String> {
    let bytes = read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let text = String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8", file.display()))?;
    let url = text.trim_end_matches(['\n', '\r']).trim();
    if url.is_empty() {
        return Err(format!("{} is empty", file.display()));
    }
    if !(url.starts_with("postgresql://") || url.starts_with("postgres://")) {
        return Err(format!(
            "{} does not hold a URL of the form postgresql://USER:PASSWORD@HOST:PORT/DATABASE",
            file.display()
        ));
    }
    // The crate's message names the option, never its value.
    let mut config = postgres::Config::from_str(url)
        .map_err(|e| format!("{}: not a usable PostgreSQL URL: {e}", file.display()))?;
    if config.get_dbname().is_none() {
        return Err(format!(
            "{}: the URL names no database (…/DATABASE at its end)",
            file.display()
        ));
    }
    if config.get_ssl_mode() == postgres::config::SslMode::Require {
        return Err(format!(
            "{}: the URL asks for TLS (sslmode=require), which this hub does not speak to its \
             database; reach it on loopback or a Unix socket, or through a trusted network \
             with `database_allow_plaintext = true`",
            file.display()
        ));
    }
    let hosts = config.get_hosts();
    let remote = !config.get_hostaddrs().iter().all(|ip| ip.is_loopback())
        || (!hosts.is_empty() && !hosts.iter().all(local));
    if remote && !allow_plaintext {
        return Err(format!(
            "{}: the database host is not loopback, and the hub speaks to its database without \
             TLS (the password and every command would cross the network in clear); use a \
             loopback address or a Unix socket, or set `database_allow_plaintext = true` if a \
             trusted network carries it",
            file.display()
        ));
    }
    config.ssl_mode(postgres::config::SslMode::Disable);
    config.application_name("idrelay-hub");
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(10));
    }
    Ok(PgTarget {
        file: file.to_path_buf(),
        url: Secret::new(url),
        config,
        plaintext_remote: remote,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = "pw-Secret-7731";

    fn judge(url: &str, allow: bool) -> Result<PgTarget, String> {
        let text = format!("{url}\n");
        target(Path::new("/etc/hub/db-url"), allow, &|_| {
            Ok(text.clone().into_bytes())
        })
    }

    #[test]
    fn a_loopback_url_is_taken_and_never_shows_its_password() {
        let t = judge(
            &format!("postgresql://hub:{PASSWORD}@127.0.0.1:5433/fleet"),
            false,
        )
        .unwrap();
        assert_eq!(
            t.describe(),
            "PostgreSQL database `fleet` on 127.0.0.1:5433"
        );
        assert!(!format!("{t:?}").contains(PASSWORD));
        assert!(!t.plaintext_remote);
        for ok in [
            "postgres://hub@localhost/fleet",
            "postgresql://hub@[::1]:5432/fleet",
            "postgresql://hub@%2Frun%2Fpostgresql/fleet",
        ] {
            assert!(judge(ok, false).is_ok(), "{ok}");
        }
    }

    #[test]
    fn a_remote_host_needs_the_explicit_allow_and_tls_is_refused() {
        let url = format!("postgresql://hub:{PASSWORD}@db.example.net/fleet");
        let e = judge(&url, false).unwrap_err();
        assert!(e.contains("database_allow_plaintext") && e.contains("/etc/hub/db-url"));
        assert!(!e.contains(PASSWORD));
        assert!(judge(&url, true).unwrap().plaintext_remote);
        let e = judge(
            &format!("postgresql://hub:{PASSWORD}@127.0.0.1/fleet?sslmode=require"),
            false,
        )
        .unwrap_err();
        assert!(e.contains("sslmode=require"), "{e}");
    }

    #[test]
    fn bad_urls_are_named_without_their_contents() {
        for (bad, says) in [
            ("", "is empty"),
            (
                &format!("mysql://hub:{PASSWORD}@127.0.0.1/x") as &str,
                "postgresql://",
            ),
            (
                &format!("postgresql://hub:{PASSWORD}@127.0.0.1:notaport/x"),
                "PostgreSQL URL",
            ),
            (
                &format!("postgresql://hub:{PASSWORD}@127.0.0.1"),
                "no database",
            ),
        ] {
            let e = judge(bad, false).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(!e.contains(PASSWORD), "{e}");
        }
    }
}
