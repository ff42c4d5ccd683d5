//! The security pass over a parsed [`Config`]: settings that would work but leak, refused
//! with an error naming the key and the fix.
//!
//! Rules:
//! * a connection that would carry a secret or directory data in clear to a host that is
//!   not loopback is refused: `scim.url` and `scim.token_url` with `http://`, `relay.url`
//!   with `http://`, `directory.url` with `ldap://` and no StartTLS. `allow_plaintext =
//!   true` in that connection's table (`[scim]`, `[relay]`, `[directory]`) accepts it, and
//!   `check` then prints a WARN line for it ([`plaintext_warnings`]);
//! * loopback is `127.0.0.0/8`, `::1` (also as `::ffff:127.x`) and `localhost`: traffic
//!   that never leaves the host (a test server, a TLS-terminating sidecar);
//! * secret files are checked where they are read: the `*_file` secrets by
//!   [`super::System`] (through [`crate::privilege::check_secret_file`]), the TLS client
//!   keys (`scim.client_key_file`, `relay.client_key_file`) by [`check_key_files`] at load.
//!
//! Bearer tokens are the cloud's choice (it issues them): their length is not judged here.

use std::net::IpAddr;
use std::path::Path;

use super::{Config, ConfigError, ScimAuth};

/// Whether `host` (as in a URL: `[::1]` with brackets, or a name) is a loopback address.
fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => ip.to_canonical().is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    }
}

/// The host of `url` (`scheme://[user@]host[:port][/...]`), as written.
fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if hostport.starts_with('[') {
        &hostport[..=hostport.find(']')?]
    } else {
        hostport.split(':').next().unwrap_or("")
    };
    (!host.is_empty()).then_some(host)
}

/// One connection that would go in clear to a host that is not loopback.
struct Plaintext {
    /// The key of the URL.
    key: &'static str,
    /// The URL.
    url: String,
    /// The table whose `allow_plaintext` accepts it.
    table: &'static str,
    /// Whether it is accepted.
    allowed: bool,
    /// What would cross the network in clear.
    what: &'static str,
    /// How to avoid it.
    fix: &'static str,
}

/// Every connection of `c` that is plain to a host that is not loopback.
fn plaintext(c: &Config) -> Vec<Plaintext> {
    let remote_http = |url: &str| {
        url.get(..7)
            .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
            && !url_host(url).is_some_and(is_loopback_host)
    };
    let mut out = Vec::new();
    let d = &c.directory;
    let ldap_plain = d
        .url
        .get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("ldap://"));
    if ldap_plain && !d.starttls && !url_host(&d.url).is_some_and(is_loopback_host) {
        out.push(Plaintext {
            key: "directory.url",
            url: d.url.clone(),
            table: "directory",
            allowed: d.allow_plaintext,
            what: "the bind password and the directory's data",
            fix: "use ldaps://, or set starttls = true",
        });
    }
    if remote_http(&c.scim.url) {
        out.push(Plaintext {
            key: "scim.url",
            url: c.scim.url.clone(),
            table: "scim",
            allowed: c.scim.allow_plaintext,
            what: "the bearer token and every provisioned object",
            fix: "use https://",
        });
    }
    if let ScimAuth::ClientCredentials(cc) = &c.scim.auth {
        if remote_http(cc.token_url.as_str()) {
            out.push(Plaintext {
                key: "scim.token_url",
                url: cc.token_url.to_string(),
                table: "scim",
                allowed: c.scim.allow_plaintext,
                what: "the OAuth2 client secret and the tokens it gets",
                fix: "use https://",
            });
        }
    }
    if let Some(r) = &c.relay {
        if remote_http(&r.url) {
            out.push(Plaintext {
                key: "relay.url",
                url: r.url.clone(),
                table: "relay",
                allowed: r.allow_plaintext,
                what: "the agent token and every relayed request and answer",
                fix: "use https://",
            });
        }
        if let ScimAuth::ClientCredentials(cc) = &r.auth {
            if remote_http(cc.token_url.as_str()) {
                out.push(Plaintext {
                    key: "relay.token_url",
                    url: cc.token_url.to_string(),
                    table: "relay",
                    allowed: r.allow_plaintext,
                    what: "the OAuth2 client secret and the tokens it gets",
                    fix: "use https://",
                });
            }
        }
    }
    out
}

/// Refuses a plain connection to a host that is not loopback unless its table sets
/// `allow_plaintext = true` (pure).
pub(super) fn validate(path: &Path, c: &Config) -> Result<(), ConfigError> {
    match plaintext(c).into_iter().find(|p| !p.allowed) {
        None => Ok(()),
        Some(p) => Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            key: p.key,
            message: format!(
                "`{}` would send {} in clear to a host that is not loopback; {} \
                 (or set allow_plaintext = true in [{}] to accept that)",
                p.url, p.what, p.fix, p.table
            ),
        }),
    }
}

/// One line per plain connection that `allow_plaintext` accepted: (key, text), for the
/// WARN lines of `check` and the start of `run`.
pub fn plaintext_warnings(c: &Config) -> Vec<(&'static str, String)> {
    plaintext(c)
        .into_iter()
        .filter(|p| p.allowed)
        .map(|p| {
            (
                p.key,
                format!(
                    "{} `{}` sends {} in clear to a host that is not loopback (accepted by allow_plaintext = true in [{}])",
                    p.key, p.url, p.what, p.table
                ),
            )
        })
        .collect()
}

/// Refuses a TLS client key (`*.client_key_file`) that group or others may access or that
/// another user owns, naming the key (reads only metadata).
pub(super) fn check_key_files(c: &Config) -> Result<(), ConfigError> {
    let mut keys = Vec::new();
    if let Some(cert) = &c.scim.transport.client_cert {
        keys.push(("scim.client_key_file", &cert.key_file));
    }
    if let Some(cert) = c
        .relay
        .as_ref()
        .and_then(|r| r.transport.client_cert.as_ref())
    {
        keys.push(("relay.client_key_file", &cert.key_file));
    }
    for (key, file) in keys {
        crate::privilege::check_secret_file(file).map_err(|e| ConfigError::Invalid {
            path: c.path.clone(),
            key,
            message: e.to_string(),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "127.0.0.1",
            "127.1.2.3",
            "[::1]",
            "::1",
            "localhost",
            "LOCALHOST",
            "[::ffff:127.0.0.1]",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "192.0.2.1",
            "10.0.0.1",
            "[2001:db8::1]",
            "scim.example",
            "localhost.example",
            "127.0.0.1.nip.io",
            "",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn hosts_of_urls() {
        assert_eq!(url_host("http://127.0.0.1:8080/v2"), Some("127.0.0.1"));
        assert_eq!(url_host("ldap://[::1]:389"), Some("[::1]"));
        assert_eq!(url_host("ldap://dc1.branch.test"), Some("dc1.branch.test"));
        assert_eq!(
            url_host("http://u@127.0.0.1.evil.example/x"),
            Some("127.0.0.1.evil.example")
        );
        assert_eq!(url_host("http://localhost@192.0.2.1/v2"), Some("192.0.2.1"));
        assert_eq!(url_host("http:///v2"), None);
        assert_eq!(url_host("nothing"), None);
    }

    /// Secrets for the configs below (no files are read).
    struct Secrets;
    impl super::super::SecretSource for Secrets {
        fn read_file(&self, _: &Path) -> std::io::Result<String> {
            Ok("not-printed-secret".into())
        }
        fn var(&self, _: &str) -> Option<String> {
            None
        }
    }

    fn config(ldap: &str, scim: &str, extra: &str) -> Result<Config, String> {
        let text = format!(
            "[agent]\nid = \"a\"\nstate_dir = \"/var/lib/idrelay\"\n\
             [directory]\nurl = \"{ldap}\"\nbind_dn = \"cn=s,dc=b\"\npassword_file = \"/p\"\nbase_dn = \"dc=b\"\n{extra}\n\
             [scim]\nurl = \"{scim}\"\ntoken_file = \"/t\"\n"
        );
        Config::parse(Path::new("idrelay.toml"), &text, &Secrets).map_err(|e| e.to_string())
    }

    #[test]
    fn plain_connections_to_remote_hosts_are_refused_naming_the_key() {
        const LDAP: &str = "ldap://127.0.0.1:389";
        const SCIM: &str = "http://127.0.0.1:8080/v2";
        // Loopback in clear, and TLS anywhere: accepted without a warning.
        for (ldap, scim) in [
            (LDAP, SCIM),
            ("ldap://[::1]", "http://localhost/v2"),
            ("ldaps://dc1.branch.test", "https://scim.example/v2"),
        ] {
            let c = config(ldap, scim, "").unwrap();
            assert!(plaintext_warnings(&c).is_empty());
        }
        let c = config("ldap://dc1.branch.test", SCIM, "starttls = true").unwrap();
        assert!(plaintext_warnings(&c).is_empty());

        let refused = |ldap: &str, scim: &str, extra: &str, key: &str, table: &str| {
            let e = config(ldap, scim, extra).unwrap_err();
            assert!(e.contains(&format!("`{key}`")), "{e}");
            assert!(e.contains("in clear"), "{e}");
            assert!(
                e.contains(&format!("allow_plaintext = true in [{table}]")),
                "{e}"
            );
            assert!(!e.contains("not-printed-secret"), "{e}");
        };
        refused("ldap://192.0.2.1", SCIM, "", "directory.url", "directory");
        refused(
            "LDAP://dc1.branch.test:389",
            SCIM,
            "",
            "directory.url",
            "directory",
        );
        refused(LDAP, "http://192.0.2.1/v2", "", "scim.url", "scim");
        refused(LDAP, "HTTP://scim.example/v2", "", "scim.url", "scim");
        // allow_plaintext belongs to the table of the connection: the directory's does not
        // accept the SCIM endpoint's.
        refused(
            LDAP,
            "http://192.0.2.1/v2",
            "allow_plaintext = true",
            "scim.url",
            "scim",
        );

        let c = config("ldap://192.0.2.1", SCIM, "allow_plaintext = true").unwrap();
        let w = plaintext_warnings(&c);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].0, "directory.url");
        assert!(w[0].1.contains("ldap://192.0.2.1") && w[0].1.contains("[directory]"));
    }

    #[test]
    fn scim_token_url_and_relay_url_follow_the_same_rule() {
        let oauth = "[scim]\nurl = \"https://scim.example/v2\"\ntoken_url = \"http://idp.example/token\"\nclient_id = \"a\"\nclient_secret_file = \"/c\"\n";
        let base = "[agent]\nid = \"a\"\nstate_dir = \"/s\"\n[directory]\nurl = \"ldap://127.0.0.1\"\nbind_dn = \"cn=s,dc=b\"\npassword_file = \"/p\"\nbase_dn = \"dc=b\"\n";
        let parse =
            |t: &str| Config::parse(Path::new("i.toml"), t, &Secrets).map_err(|e| e.to_string());
        let e = parse(&format!("{base}{oauth}")).unwrap_err();
        assert!(
            e.contains("`scim.token_url`") && e.contains("client secret"),
            "{e}"
        );
        let c = parse(&format!("{base}{oauth}allow_plaintext = true\n")).unwrap();
        assert_eq!(plaintext_warnings(&c)[0].0, "scim.token_url");

        let scim = "[scim]\nurl = \"https://scim.example/v2\"\ntoken_file = \"/t\"\n";
        let relay = "[relay]\nurl = \"http://hub.example:8443\"\ntoken_file = \"/r\"\n";
        let e = parse(&format!("{base}{scim}{relay}")).unwrap_err();
        assert!(e.contains("`relay.url`") && e.contains("[relay]"), "{e}");
        let c = parse(&format!("{base}{scim}{relay}allow_plaintext = true\n")).unwrap();
        let w = plaintext_warnings(&c);
        assert_eq!(w.len(), 1);
        assert!(w[0].1.contains("relay.url") && w[0].1.contains("agent token"));
        let local = relay.replace("hub.example", "127.0.0.1");
        assert!(plaintext_warnings(&parse(&format!("{base}{scim}{local}")).unwrap()).is_empty());
    }
}
