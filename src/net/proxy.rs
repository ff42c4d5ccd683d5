//! Which HTTP proxy a request goes through, and the bytes of the CONNECT handshake.
//!
//! Owns: proxy settings (explicit [`ProxyConfig`] or the conventional environment variables
//! in [`ProxyEnv`]), the `NO_PROXY` rules ([`NoProxy`]) and the pure parts of talking to a
//! proxy (the CONNECT request, the `Proxy-Authorization` value). The sockets are in
//! `http.rs`; nothing here does I/O except [`ProxyEnv::from_process`], which reads the
//! environment once.
//!
//! How a request uses a proxy (chosen once per target by [`ProxyRules::proxy_for`]):
//! * `https://` targets are **tunnelled**: `CONNECT host:port` to the proxy, then TLS with
//!   the target end to end through the tunnel. Certificate verification, the SPKI pin and
//!   the client certificate concern the target, never the proxy.
//! * `http://` targets are **forwarded**: the request goes to the proxy in absolute form
//!   (`GET http://host:port/path HTTP/1.1`) with `Proxy-Authorization`. This is what every
//!   corporate proxy supports; many (squid's default `SSL_ports`) refuse CONNECT to ports
//!   other than 443. Plain HTTP shows the proxy everything anyway.
//!
//! Environment (read only when the caller asks for it; lower case wins, as in curl):
//! * `https_proxy`/`HTTPS_PROXY` for `https://` targets; `http_proxy`/`HTTP_PROXY` for
//!   `http://` targets. No fallback from one to the other, and no `ALL_PROXY`.
//! * `no_proxy`/`NO_PROXY`: comma- (or space-) separated entries, case-insensitive:
//!   `*` (no proxy at all); a domain (`example.com`, `.example.com` and `*.example.com` all
//!   match `example.com` itself and every name under it); an IP address (`10.1.2.3`,
//!   `::1`, `[::1]`) or a CIDR block (`10.0.0.0/8`, `fd00::/8`), matched against IP-literal
//!   targets only (no DNS lookups); any of these with `:port` to match that port only.
//!   Loopback is not exempt by itself: list `localhost,127.0.0.1,::1` if wanted.
//!
//! Invariants:
//! * A proxy URL is `http://host[:port]` (default port 80; a bare `host:port` means
//!   `http://`). `https://` (TLS to the proxy) and `socks*://` proxies are refused, not
//!   ignored: a misread proxy setting must not quietly send traffic direct.
//! * Credentials in a proxy URL (`http://user:pass@host`) are moved into [`ProxyAuth`] at
//!   parse time; the stored URL never has user info, so [`ProxyConfig::shown`] and every
//!   error name the proxy without its credentials. The password is a [`Secret`].
//! * Parse errors name the setting (`HTTPS_PROXY`, `proxy`, ...) and never echo the value
//!   (it may hold a password).

use std::fmt;
use std::net::IpAddr;

use url::{Host, Url};

use crate::secret::Secret;

/// Why a proxy setting cannot be used. Never contains the setting's value.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyError {
    /// The proxy URL cannot be parsed or uses an unsupported scheme.
    InvalidUrl {
        /// Where the URL came from: `proxy`, `HTTPS_PROXY`, `http_proxy`, ...
        setting: String,
        /// What is wrong.
        detail: String,
    },
    /// The proxy credentials cannot be encoded (a user name with `:`, control characters).
    InvalidCredentials {
        /// Where they came from.
        setting: String,
        /// What is wrong (never the password).
        detail: String,
    },
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::InvalidUrl { setting, detail } => {
                write!(f, "invalid proxy URL in {setting}: {detail}")
            }
            ProxyError::InvalidCredentials { setting, detail } => {
                write!(f, "invalid proxy credentials in {setting}: {detail}")
            }
        }
    }
}

impl std::error::Error for ProxyError {}

/// Basic authentication for the proxy (RFC 7617), sent as `Proxy-Authorization`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyAuth {
    /// The user name (may appear in errors and logs).
    pub user: String,
    /// The password (never printed).
    pub password: Secret,
}

impl ProxyAuth {
    /// Checks that the pair can be sent: no `:` in the user name, no control characters.
    pub fn new(user: impl Into<String>, password: Secret) -> Result<ProxyAuth, ProxyError> {
        let user = user.into();
        let bad = |detail: &str| ProxyError::InvalidCredentials {
            setting: "proxy".into(),
            detail: detail.into(),
        };
        if user.contains(':') {
            return Err(bad("the user name contains ':'"));
        }
        if user
            .chars()
            .chain(password.expose().chars())
            .any(char::is_control)
        {
            return Err(bad("the user name or password contains control characters"));
        }
        Ok(ProxyAuth { user, password })
    }

    /// The `Proxy-Authorization` field value: `Basic base64(user:password)` (UTF-8).
    pub(crate) fn header_value(&self) -> String {
        let pair = format!("{}:{}", self.user, self.password.expose());
        format!("Basic {}", crate::base64::encode(pair.as_bytes()))
    }
}

/// One HTTP proxy: where it is, how to log in, which targets bypass it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// `http://host:port/`, without user info.
    url: Url,
    /// Basic credentials, if the proxy wants them.
    pub auth: Option<ProxyAuth>,
    /// Targets reached directly instead of through this proxy.
    pub no_proxy: NoProxy,
}

impl ProxyConfig {
    /// Parses `http://[user:pass@]host[:port][/]` or `host:port`. Credentials in the URL are
    /// percent-decoded into [`ProxyConfig::auth`]. `setting` names the source in errors.
    pub fn parse(text: &str, setting: &str) -> Result<ProxyConfig, ProxyError> {
        let invalid = |detail: &str| ProxyError::InvalidUrl {
            setting: setting.to_string(),
            detail: detail.to_string(),
        };
        let text = text.trim();
        let with_scheme = if text.contains("://") {
            text.to_string()
        } else {
            format!("http://{text}")
        };
        // The url crate's message may quote the input; say only what kind of error it was.
        let mut url = Url::parse(&with_scheme)
            .map_err(|e| invalid(&format!("not a URL ({e:?}); expected http://host:port")))?;
        match url.scheme() {
            "http" => {}
            "https" => {
                return Err(invalid(
                    "https:// proxies (TLS to the proxy) are not supported; use http://host:port \
                     (traffic to https targets is still end-to-end TLS through the tunnel)",
                ))
            }
            other => {
                return Err(invalid(&format!(
                    "scheme {other}:// is not supported; use http://host:port"
                )))
            }
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid("no host"));
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err(invalid("a proxy URL has no path or query"));
        }
        let auth = if url.username().is_empty() && url.password().is_none() {
            None
        } else {
            let decode = |s: &str| {
                percent_decode(s).ok_or_else(|| ProxyError::InvalidCredentials {
                    setting: setting.to_string(),
                    detail: "bad percent-encoding in the user info".into(),
                })
            };
            let user = decode(url.username())?;
            let password = decode(url.password().unwrap_or(""))?;
            let auth = ProxyAuth::new(user, Secret::new(password)).map_err(|e| match e {
                ProxyError::InvalidCredentials { detail, .. } => ProxyError::InvalidCredentials {
                    setting: setting.to_string(),
                    detail,
                },
                other => other,
            })?;
            // Cannot fail for an http URL with a host.
            let _ = url.set_username("");
            let _ = url.set_password(None);
            Some(auth)
        };
        Ok(ProxyConfig {
            url,
            auth,
            no_proxy: NoProxy::default(),
        })
    }

    /// Sets (or replaces) the basic credentials.
    pub fn with_auth(mut self, auth: ProxyAuth) -> ProxyConfig {
        self.auth = Some(auth);
        self
    }

    /// Sets the targets that bypass this proxy.
    pub fn with_no_proxy(mut self, no_proxy: NoProxy) -> ProxyConfig {
        self.no_proxy = no_proxy;
        self
    }

    /// The proxy as it may appear in errors and logs: `http://host:port`, no credentials.
    pub fn shown(&self) -> String {
        format!("http://{}:{}", self.host(), self.port())
    }

    /// The proxy's host (IPv6 in brackets).
    pub fn host(&self) -> &str {
        self.url.host_str().unwrap_or("")
    }

    /// The proxy's host as parsed (domain or IP address).
    pub(crate) fn parsed_host(&self) -> Option<Host<&str>> {
        self.url.host()
    }

    /// The proxy's port (80 when the URL has none).
    pub fn port(&self) -> u16 {
        self.url.port_or_known_default().unwrap_or(80)
    }
}

/// `%XX` decoding of URL user info into UTF-8; `None` when malformed.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// One `NO_PROXY` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    /// A domain and everything under it (lower case, no leading/trailing dot).
    Domain(String, Option<u16>),
    /// One IP address.
    Ip(IpAddr, Option<u16>),
    /// A CIDR block: network address and prefix length.
    Cidr(IpAddr, u8, Option<u16>),
}

/// The targets that bypass a proxy (`NO_PROXY` rules; see the module doc for the syntax).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy {
    all: bool,
    rules: Vec<Rule>,
}

impl NoProxy {
    /// Parses a comma- or whitespace-separated list. Never fails: an entry that is no IP
    /// address or CIDR block is taken as a domain (it then simply matches nothing odd).
    pub fn parse(text: &str) -> NoProxy {
        let mut out = NoProxy::default();
        for entry in text.split([',', ' ', '\t', '\n']).map(str::trim) {
            if entry.is_empty() {
                continue;
            }
            if entry == "*" {
                out.all = true;
                continue;
            }
            out.rules.push(parse_rule(&entry.to_ascii_lowercase()));
        }
        out
    }

    /// True when the list is empty (nothing bypasses the proxy).
    pub fn is_empty(&self) -> bool {
        !self.all && self.rules.is_empty()
    }

    /// Whether a target `host` (as in a URL: a domain, an IPv4 address or `[v6]`) on `port`
    /// bypasses the proxy.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if self.all {
            return true;
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let ip: Option<IpAddr> = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&host)
            .parse()
            .ok();
        let port_ok = |p: &Option<u16>| p.is_none_or(|p| p == port);
        self.rules.iter().any(|rule| match rule {
            Rule::Domain(d, p) => {
                port_ok(p)
                    && (host == *d
                        || (host.len() > d.len()
                            && host.ends_with(d.as_str())
                            && host.as_bytes()[host.len() - d.len() - 1] == b'.'))
            }
            Rule::Ip(a, p) => port_ok(p) && ip == Some(*a),
            Rule::Cidr(net, bits, p) => port_ok(p) && ip.is_some_and(|ip| in_cidr(ip, *net, *bits)),
        })
    }
}

/// One lower-cased, non-empty entry.
fn parse_rule(entry: &str) -> Rule {
    // An IP literal or CIDR block without a port (bare IPv6 contains colons).
    if let Some(rule) = parse_ip_or_cidr(entry, None) {
        return rule;
    }
    // `[v6]:port`, `[v6]`, `host:port`, `1.2.3.4:port`.
    let (name, port) = match entry.rsplit_once(':') {
        Some((name, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            match p.parse::<u16>() {
                Ok(p) => (name, Some(p)),
                Err(_) => (entry, None),
            }
        }
        _ => (entry, None),
    };
    let unbracketed = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    if let Some(rule) = parse_ip_or_cidr(unbracketed, port) {
        return rule;
    }
    let domain = name
        .strip_prefix("*.")
        .unwrap_or(name)
        .trim_start_matches('.')
        .trim_end_matches('.');
    Rule::Domain(domain.to_string(), port)
}

fn parse_ip_or_cidr(text: &str, port: Option<u16>) -> Option<Rule> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(Rule::Ip(ip, port));
    }
    let (net, bits) = text.split_once('/')?;
    let net: IpAddr = net
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(net)
        .parse()
        .ok()?;
    let bits: u8 = bits.parse().ok()?;
    let max = if net.is_ipv4() { 32 } else { 128 };
    (bits <= max).then_some(Rule::Cidr(net, bits, port))
}

fn in_cidr(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    let (a, b, width) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a) as u128, u32::from(b) as u128, 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        _ => return false,
    };
    if bits == 0 {
        return true;
    }
    let shift = width - u32::from(bits);
    (a >> shift) == (b >> shift)
}

/// The proxy variables of an environment, as read (unparsed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyEnv {
    /// `https_proxy`, else `HTTPS_PROXY`, with the name it came from.
    pub https_proxy: Option<(String, String)>,
    /// `http_proxy`, else `HTTP_PROXY`, with the name it came from.
    pub http_proxy: Option<(String, String)>,
    /// `no_proxy`, else `NO_PROXY`.
    pub no_proxy: Option<String>,
}

impl ProxyEnv {
    /// Reads the variables through `lookup` (lower case first; empty values count as unset).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> ProxyEnv {
        let first = |names: [&str; 2]| {
            names.iter().find_map(|n| {
                lookup(n)
                    .filter(|v| !v.trim().is_empty())
                    .map(|v| (n.to_string(), v))
            })
        };
        ProxyEnv {
            https_proxy: first(["https_proxy", "HTTPS_PROXY"]),
            http_proxy: first(["http_proxy", "HTTP_PROXY"]),
            no_proxy: first(["no_proxy", "NO_PROXY"]).map(|(_, v)| v),
        }
    }

    /// Reads the variables of this process.
    pub fn from_process() -> ProxyEnv {
        ProxyEnv::from_lookup(|name| std::env::var(name).ok())
    }

    /// Parses the variables into rules; fails on a proxy URL that cannot be used.
    pub fn resolve(&self) -> Result<ProxyRules, ProxyError> {
        let no_proxy = NoProxy::parse(self.no_proxy.as_deref().unwrap_or(""));
        let parse = |v: &Option<(String, String)>| {
            v.as_ref()
                .map(|(name, value)| {
                    ProxyConfig::parse(value, name).map(|p| p.with_no_proxy(no_proxy.clone()))
                })
                .transpose()
        };
        Ok(ProxyRules {
            https: parse(&self.https_proxy)?,
            http: parse(&self.http_proxy)?,
        })
    }
}

/// Which proxy serves each scheme (each with its own bypass list).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyRules {
    /// For `https://` targets.
    pub https: Option<ProxyConfig>,
    /// For `http://` targets.
    pub http: Option<ProxyConfig>,
}

impl ProxyRules {
    /// One proxy for both schemes (an explicit configuration).
    pub fn single(proxy: ProxyConfig) -> ProxyRules {
        ProxyRules {
            https: Some(proxy.clone()),
            http: Some(proxy),
        }
    }

    /// The proxy for `target`, or `None` to connect directly (no proxy for its scheme, or
    /// the host matches the proxy's bypass list).
    pub fn proxy_for(&self, target: &Url) -> Option<&ProxyConfig> {
        let proxy = match target.scheme() {
            "https" => self.https.as_ref()?,
            "http" => self.http.as_ref()?,
            _ => return None,
        };
        let host = target.host_str()?;
        let port = target.port_or_known_default()?;
        (!proxy.no_proxy.matches(host, port)).then_some(proxy)
    }
}

/// The proxy the environment `env` chooses for `target`: `Ok(None)` means direct.
pub fn proxy_for(target: &Url, env: &ProxyEnv) -> Result<Option<ProxyConfig>, ProxyError> {
    Ok(env.resolve()?.proxy_for(target).cloned())
}

/// The CONNECT request that opens a tunnel to `authority` (`host:port`, IPv6 in brackets).
pub(crate) fn connect_request(
    authority: &str,
    auth: Option<&ProxyAuth>,
    user_agent: &str,
) -> Vec<u8> {
    let mut out = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if !user_agent.is_empty() {
        out.push_str(&format!("User-Agent: {user_agent}\r\n"));
    }
    if let Some(auth) = auth {
        out.push_str(&format!("Proxy-Authorization: {}\r\n", auth.header_value()));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// Why a proxy refused: a sentence for the error, from the status and whether credentials
/// were sent. Proxies answer a failed login with 407, some (tinyproxy, for CONNECT) with 401.
pub(crate) fn refusal_detail(status: u16, auth: Option<&ProxyAuth>) -> String {
    match (status, auth) {
        (401 | 407, None) => {
            "the proxy requires authentication and no proxy credentials are configured".into()
        }
        (401 | 407, Some(a)) => format!(
            "the proxy rejected the credentials of user {:?} (check the proxy password)",
            a.user
        ),
        (403, _) => "the proxy forbids this destination".into(),
        (502 | 504, _) => "the proxy could not reach the destination".into(),
        (503, _) => "the proxy is unavailable".into(),
        _ => "the proxy refused the tunnel".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    fn env(pairs: &[(&str, &str)]) -> ProxyEnv {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ProxyEnv::from_lookup(move |n| pairs.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone()))
    }

    #[test]
    fn parses_proxy_urls_and_moves_credentials_out() {
        let p = ProxyConfig::parse(
            "http://svc%40corp:p%3Ass-word@proxy.corp.test:3128/",
            "HTTPS_PROXY",
        )
        .unwrap();
        assert_eq!(p.shown(), "http://proxy.corp.test:3128");
        assert_eq!((p.host(), p.port()), ("proxy.corp.test", 3128));
        let auth = p.auth.clone().unwrap();
        assert_eq!(auth.user, "svc@corp");
        assert_eq!(auth.password.expose(), "p:ss-word");
        let debug = format!("{p:?}");
        assert!(
            !debug.contains("p:ss-word") && !debug.contains("p%3Ass"),
            "{debug}"
        );

        let bare = ProxyConfig::parse("10.0.0.1:8080", "proxy").unwrap();
        assert_eq!(bare.shown(), "http://10.0.0.1:8080");
        assert!(bare.auth.is_none());
        assert_eq!(
            ProxyConfig::parse("http://proxy", "proxy").unwrap().port(),
            80
        );
        assert_eq!(
            ProxyConfig::parse("http://[::1]:3128", "proxy")
                .unwrap()
                .shown(),
            "http://[::1]:3128"
        );
    }

    #[test]
    fn refuses_unusable_proxy_urls_without_echoing_them() {
        for bad in [
            "https://user:hunter2@proxy:443",
            "socks5://user:hunter2@proxy:1080",
            "http://user:hunter2@proxy:3128/path",
            "http://user:hunter2@:3128",
            "http://us:er:hunter2@proxy:3128 with space",
        ] {
            let e = ProxyConfig::parse(bad, "HTTPS_PROXY").unwrap_err();
            let text = format!("{e} {e:?}");
            assert!(text.contains("HTTPS_PROXY"), "{text}");
            assert!(!text.contains("hunter2"), "{bad}: {text}");
        }
        let e = ProxyConfig::parse("http://u:%zz@proxy:1", "proxy").unwrap_err();
        assert!(matches!(e, ProxyError::InvalidCredentials { .. }), "{e}");
        assert!(ProxyAuth::new("a:b", Secret::new("x")).is_err());
        assert!(ProxyAuth::new("a", Secret::new("x\r\nInjected: 1")).is_err());
    }

    #[test]
    fn basic_auth_header() {
        // RFC 7617 §2 example.
        let a = ProxyAuth::new("Aladdin", Secret::new("open sesame")).unwrap();
        assert_eq!(a.header_value(), "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
    }

    #[test]
    fn no_proxy_domains() {
        let n = NoProxy::parse("example.com, .corp.test ,*.lab.test,Intra.Test.");
        for host in [
            "example.com",
            "a.example.com",
            "EXAMPLE.COM.",
            "corp.test",
            "x.y.corp.test",
        ] {
            assert!(n.matches(host, 443), "{host}");
        }
        assert!(n.matches("lab.test", 443) && n.matches("h.lab.test", 80));
        assert!(n.matches("intra.test", 443));
        for host in [
            "badexample.com",
            "example.com.evil.test",
            "test",
            "corp.test.evil",
            "127.0.0.1",
        ] {
            assert!(!n.matches(host, 443), "{host}");
        }
    }

    #[test]
    fn no_proxy_star_and_empty() {
        assert!(NoProxy::parse("*").matches("anything.test", 1));
        assert!(NoProxy::parse("a.test, *").matches("[::1]", 1));
        let empty = NoProxy::parse(" , ,");
        assert!(empty.is_empty() && !empty.matches("a.test", 443));
        // `*` inside a name is not a wildcard for everything.
        assert!(!NoProxy::parse("*.a.test").matches("b.test", 443));
    }

    #[test]
    fn no_proxy_ports() {
        let n = NoProxy::parse("scim.test:8443,10.1.2.3:80,[::1]:8080,[fe80::1]");
        assert!(n.matches("scim.test", 8443) && n.matches("x.scim.test", 8443));
        assert!(!n.matches("scim.test", 443));
        assert!(n.matches("10.1.2.3", 80) && !n.matches("10.1.2.3", 443));
        assert!(n.matches("[::1]", 8080) && !n.matches("[::1]", 443));
        assert!(n.matches("[fe80::1]", 1));
    }

    #[test]
    fn no_proxy_ips_and_cidr() {
        let n = NoProxy::parse("127.0.0.1 ::1 10.0.0.0/8 fd00::/8 192.168.1.0/24:443 0.0.0.0/0:1");
        assert!(n.matches("127.0.0.1", 443) && n.matches("[::1]", 443));
        assert!(!n.matches("127.0.0.2", 443) && !n.matches("localhost", 443));
        assert!(n.matches("10.200.3.4", 80) && !n.matches("11.0.0.1", 80));
        assert!(n.matches("[fd12::7]", 80) && !n.matches("[fe80::1]", 80));
        assert!(n.matches("192.168.1.77", 443) && !n.matches("192.168.1.77", 80));
        assert!(!n.matches("192.168.2.1", 443));
        assert!(n.matches("8.8.8.8", 1) && !n.matches("8.8.8.8", 2));
        // An IP rule never matches a name, even one that looks alike.
        assert!(!NoProxy::parse("10.0.0.0/8").matches("10.example.test", 80));
    }

    #[test]
    fn proxy_for_follows_scheme_and_no_proxy() {
        let e = env(&[
            ("HTTPS_PROXY", "http://u:pw@proxy.test:3128"),
            ("http_proxy", "proxy2.test:8080"),
            ("NO_PROXY", "internal.test,127.0.0.1"),
        ]);
        let p = proxy_for(&url("https://scim.cloud.test/v2"), &e)
            .unwrap()
            .unwrap();
        assert_eq!(p.shown(), "http://proxy.test:3128");
        assert_eq!(p.auth.as_ref().unwrap().user, "u");
        let p = proxy_for(&url("http://scim.cloud.test/v2"), &e)
            .unwrap()
            .unwrap();
        assert_eq!(p.shown(), "http://proxy2.test:8080");
        assert!(proxy_for(&url("https://a.internal.test/"), &e)
            .unwrap()
            .is_none());
        assert!(proxy_for(&url("http://127.0.0.1:8080/"), &e)
            .unwrap()
            .is_none());
        assert!(proxy_for(&url("https://127.0.0.2/"), &e).unwrap().is_some());
    }

    #[test]
    fn proxy_env_lower_case_wins_and_empty_is_unset() {
        let e = env(&[
            ("https_proxy", "http://lower.test:1"),
            ("HTTPS_PROXY", "http://upper.test:1"),
            ("HTTP_PROXY", "  "),
            ("no_proxy", "a.test"),
            ("NO_PROXY", "b.test"),
        ]);
        assert_eq!(e.https_proxy.as_ref().unwrap().0, "https_proxy");
        assert!(e.http_proxy.is_none());
        assert_eq!(e.no_proxy.as_deref(), Some("a.test"));
        // No fallback from one scheme's variable to the other.
        assert!(proxy_for(&url("http://x.test/"), &e).unwrap().is_none());
        assert!(proxy_for(&url("https://x.test/"), &ProxyEnv::default())
            .unwrap()
            .is_none());
    }

    #[test]
    fn proxy_env_errors_name_the_variable() {
        let e = env(&[("HTTPS_PROXY", "https://u:topsecret@proxy.test")]);
        let err = proxy_for(&url("https://x.test/"), &e).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("HTTPS_PROXY") && !text.contains("topsecret"),
            "{text}"
        );
    }

    #[test]
    fn explicit_rules_apply_to_both_schemes() {
        let p = ProxyConfig::parse("http://proxy.test:3128", "proxy")
            .unwrap()
            .with_no_proxy(NoProxy::parse("skip.test"));
        let rules = ProxyRules::single(p);
        assert!(rules.proxy_for(&url("https://a.test/")).is_some());
        assert!(rules.proxy_for(&url("http://a.test/")).is_some());
        assert!(rules.proxy_for(&url("https://skip.test/")).is_none());
    }

    #[test]
    fn connect_request_bytes() {
        let auth = ProxyAuth::new("agent", Secret::new("pw")).unwrap();
        let req = connect_request("[::1]:443", Some(&auth), "idrelay/0");
        assert_eq!(
            String::from_utf8(req).unwrap(),
            "CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\nUser-Agent: idrelay/0\r\n\
             Proxy-Authorization: Basic YWdlbnQ6cHc=\r\n\r\n"
        );
        let req = connect_request("h.test:8443", None, "");
        assert_eq!(
            req,
            b"CONNECT h.test:8443 HTTP/1.1\r\nHost: h.test:8443\r\n\r\n"
        );
    }

    #[test]
    fn refusal_details_never_hold_the_password() {
        let auth = ProxyAuth::new("agent", Secret::new("pw-77")).unwrap();
        for status in [401, 403, 407, 500, 502, 503] {
            let d = refusal_detail(status, Some(&auth));
            assert!(!d.contains("pw-77"), "{d}");
        }
        assert!(refusal_detail(407, None).contains("no proxy credentials"));
        assert!(refusal_detail(407, Some(&auth)).contains("\"agent\""));
    }
}
