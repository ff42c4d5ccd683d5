//! The one HTTP client of idrelay: HTTP/1.1 over TCP or rustls, with timeouts and a small
//! connection pool.
//!
//! Owns: sockets, TLS sessions and idle connections. Speaks through the codec in `h1.rs`.
//! Does not retry on its own except in one case (below); retry policy belongs to callers
//! such as the SCIM client, which use [`HttpError::is_transient`] and
//! [`HttpError::certainly_not_sent`].
//!
//! Invariants:
//! * **Timeouts.** `connect_timeout` bounds TCP connect plus TLS handshake;
//!   `request_timeout` bounds the whole [`HttpClient::send`] (pool checkout, connect, write,
//!   read of the complete body). When either fires, the connection is dropped, never pooled.
//! * **Pool.** Idle connections are kept per (scheme, host, port), at most
//!   `max_idle_per_host` each, reused most-recent-first, dropped after `idle_timeout`. A
//!   connection goes back to the pool only after a complete, cleanly framed response that
//!   allows keep-alive (HTTP/1.1 without `Connection: close`, or HTTP/1.0 with
//!   `Connection: keep-alive`) and with no unread bytes behind it; never after an error, a
//!   timeout, or a body delimited by connection close. Before reuse, a connection is
//!   polled once: if the server has closed it (or sent stray bytes) it is discarded.
//! * **Stale connections.** If a *reused* connection fails before a single response byte
//!   arrives (the server closed it while idle), an idempotent request (GET, HEAD, PUT,
//!   DELETE) is sent once more on a new connection. POST and PATCH are not: the error is
//!   returned and the caller decides (the request may have been processed).
//! * **Bodies without length.** A response with neither `Content-Length` nor chunked
//!   encoding (on a status that has a body) is read until the server closes the connection
//!   (RFC 9112 §6.3), up to `max_body_bytes`; such a connection is never reused. Over TLS, a
//!   close without `close_notify` is reported as an error (the body may be truncated).
//! * **Limits.** Bodies over `max_body_bytes` (default 16 MiB) fail with
//!   [`HttpError::BodyTooLarge`]; response heads over 64 KiB fail as protocol errors.
//! * **Trust.** TLS is rustls with the ring provider, certificates always verified against
//!   `ca_file` (PEM) or the system bundle (`SSL_CERT_FILE`, then the usual distribution
//!   paths). There is no switch to turn verification off, and none may be added.
//! * **Pins.** With `pin_sha256` set, the SHA-256 of the server's leaf SubjectPublicKeyInfo
//!   (RFC 7469 style, written `sha256/BASE64`) must equal one of the pins. The check runs
//!   after rustls has verified chain, validity and name: a pin narrows trust, it never
//!   replaces verification. A mismatch closes the connection before a request byte is sent.
//! * **Client certificate.** With `client_cert`, the PEM chain and key are loaded when the
//!   client is made (a bad file fails [`HttpClient::new`]) and offered when a server asks.
//! * **Proxy.** `proxy` (explicit) or `proxy_env` (`HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`,
//!   see `proxy.rs`) picks an HTTP proxy per target. `https://` goes through a CONNECT
//!   tunnel (TLS, pin and client certificate are end to end with the target); `http://` is
//!   forwarded in absolute form. `connect_timeout` covers TCP to the proxy, the CONNECT
//!   exchange and the TLS handshake together; `request_timeout` and the pool's
//!   `idle_timeout` apply as without a proxy. A refusal (401/407, 403, 5xx to CONNECT; 407
//!   to a forwarded request) is [`HttpError::ProxyRefused`], naming the proxy without
//!   credentials.
//! * **Secrets.** Header values are never logged nor put in errors; URLs in errors are
//!   shown without user info and query.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_rustls::rustls::{self, ClientConfig, RootCertStore};
use futures_rustls::TlsConnector;
use rustls_pki_types::ServerName;
use smol::future;
use smol::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use smol::net::TcpStream;
use smol::Timer;
use url::Host;
/// Absolute URL type used by requests (re-exported from `http-types`, i.e. the `url` crate).
pub use url::Url;

use super::h1::{self, CodecError};
use super::proxy::{self, ProxyConfig, ProxyEnv, ProxyError, ProxyRules};

/// Default limit for a response body (16 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Where the system CA bundle is looked for, in order, after `SSL_CERT_FILE`.
pub const SYSTEM_CA_BUNDLES: [&str; 6] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/ssl/cert.pem",
];

/// Settings of an [`HttpClient`].
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// PEM file of trusted CA certificates; `None` trusts the system bundle.
    pub ca_file: Option<PathBuf>,
    /// Bound on TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// Bound on one whole [`HttpClient::send`], connect and body included.
    pub request_timeout: Duration,
    /// Idle connections kept per scheme/host/port (0 disables pooling).
    pub max_idle_per_host: usize,
    /// An idle connection older than this is closed instead of reused.
    pub idle_timeout: Duration,
    /// Largest response body accepted, in bytes.
    pub max_body_bytes: usize,
    /// `User-Agent` sent with every request (empty: none).
    pub user_agent: String,
    /// An explicit HTTP proxy for every target outside its `no_proxy`; wins over `proxy_env`.
    pub proxy: Option<ProxyConfig>,
    /// Proxy variables of the environment ([`ProxyEnv::from_process`]), used only when
    /// `proxy` is `None`. `None` (the default) ignores the environment.
    pub proxy_env: Option<ProxyEnv>,
    /// SHA-256 pins of the server's leaf public key (SPKI); when not empty, one must match,
    /// in addition to normal verification. See [`parse_pin`].
    pub pin_sha256: Vec<[u8; 32]>,
    /// Client certificate for mutual TLS.
    pub client_cert: Option<ClientCert>,
}

/// A client certificate for mutual TLS: PEM files, read by [`HttpClient::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the leaf.
    pub key_file: PathBuf,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            ca_file: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            max_idle_per_host: 8,
            idle_timeout: Duration::from_secs(30),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            user_agent: concat!("idrelay/", env!("CARGO_PKG_VERSION")).to_string(),
            proxy: None,
            proxy_env: None,
            pin_sha256: Vec::new(),
            client_cert: None,
        }
    }
}

/// The request methods the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// `GET`
    Get,
    /// `HEAD`
    Head,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `PATCH`
    Patch,
    /// `DELETE`
    Delete,
}

impl Method {
    /// The method as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }

    /// Idempotent per RFC 9110 §9.2.2: sending it twice has the effect of sending it once.
    pub fn is_idempotent(self) -> bool {
        !matches!(self, Method::Post | Method::Patch)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One request. `Host`, `Content-Length` and connection headers are added by the client
/// and may not be set here.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// The method.
    pub method: Method,
    /// Absolute `http` or `https` URL without user info.
    pub url: Url,
    /// Extra header fields (name, value), sent in this order.
    pub headers: Vec<(String, String)>,
    /// The body, if any.
    pub body: Option<Vec<u8>>,
}

impl HttpRequest {
    /// A request without headers or body.
    pub fn new(method: Method, url: Url) -> HttpRequest {
        HttpRequest {
            method,
            url,
            headers: Vec::new(),
            body: None,
        }
    }

    /// Adds a header field.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> HttpRequest {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: Vec<u8>) -> HttpRequest {
        self.body = Some(body);
        self
    }
}

/// A complete response (the body is fully read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header fields as received, in order.
    pub headers: Vec<(String, String)>,
    /// The whole body (empty when there is none).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First value of a header field, name compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Status 200..=299.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// What the TLS session to a server looks like (for `idrelay check` and the heartbeat).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFacts {
    /// Negotiated protocol, e.g. `TLS 1.3`.
    pub protocol: String,
    /// Negotiated cipher suite, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher_suite: String,
    /// Which trust anchors verified the server: `ca_file <path>` or `system store (<path>)`.
    pub trust_anchors: String,
    /// Whether the certificate chain and name were verified. Always true: the handshake
    /// fails otherwise and there is no way to disable verification.
    pub verified: bool,
    /// Number of certificates the server presented.
    pub peer_certificates: usize,
    /// The server's leaf public key as a pin (`sha256/BASE64`), ready for `pin_sha256`.
    pub spki_sha256: Option<String>,
    /// Whether configured pins were checked (and one matched: the handshake fails otherwise).
    pub pinned: bool,
    /// Whether a client certificate is configured (offered when the server asks).
    pub client_certificate: bool,
    /// The proxy the connection went through (`http://host:port`), if any.
    pub proxy: Option<String>,
}

/// Which bound a [`HttpError::Timeout`] hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    /// Still connecting (TCP or TLS handshake): nothing was sent.
    Connect,
    /// The request was (at least partly) sent and the complete response did not arrive.
    Response,
}

/// Why a request failed. Never contains header values or URL user info.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HttpError {
    /// The URL is not an absolute `http`/`https` URL with a host (and without user info).
    InvalidUrl {
        /// The URL, without user info and query.
        url: String,
        /// What is wrong.
        detail: String,
    },
    /// The request cannot be encoded (bad or reserved header name, control characters).
    InvalidRequest {
        /// What is wrong; names the header, never its value.
        detail: String,
    },
    /// The CA file cannot be read or holds no usable certificate, or no system bundle exists.
    CaFile {
        /// The file, or `system store`.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// DNS lookup, TCP connect, or I/O during the TLS handshake failed: nothing was sent.
    Connect {
        /// `host:port`.
        host: String,
        /// The OS or resolver error.
        detail: String,
    },
    /// The TLS handshake was refused (untrusted certificate, name mismatch, alert).
    Tls {
        /// `host:port`.
        host: String,
        /// The rustls error.
        detail: String,
    },
    /// A timeout fired; the connection was dropped.
    Timeout {
        /// Whether connecting or waiting for the response.
        what: TimeoutKind,
        /// `host:port`.
        host: String,
        /// The bound that fired.
        after: Duration,
    },
    /// The connection failed or closed while sending the request or reading the response.
    Io {
        /// `host:port`.
        host: String,
        /// The I/O error, or which part of the response was cut off.
        detail: String,
    },
    /// The server's bytes are not a valid HTTP/1.x response.
    Protocol {
        /// `host:port`.
        host: String,
        /// What is wrong.
        detail: String,
    },
    /// The response body is larger than `max_body_bytes`.
    BodyTooLarge {
        /// `host:port`.
        host: String,
        /// The limit in bytes.
        limit: usize,
    },
    /// A proxy setting (explicit or from the environment) cannot be used.
    InvalidProxy(ProxyError),
    /// The proxy refused: a non-2xx answer to CONNECT, or 407 to a forwarded request.
    ProxyRefused {
        /// The proxy, `http://host:port` (never with credentials).
        proxy: String,
        /// `host:port` of the target.
        target: String,
        /// The proxy's HTTP status.
        status: u16,
        /// What it means (never the password).
        detail: String,
    },
    /// The client certificate or its key cannot be loaded or do not belong together.
    ClientCert {
        /// The file at fault.
        path: String,
        /// What is wrong (never key material).
        detail: String,
    },
    /// The server's certificate was valid, but its public key matches no configured pin.
    PinMismatch {
        /// `host:port` (and the proxy, if any).
        host: String,
        /// The pin the server presented (`sha256/BASE64`), or why none could be computed.
        presented: String,
    },
}

impl HttpError {
    /// Worth retrying later: connection trouble and timeouts, not configuration, TLS trust
    /// or protocol errors.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            HttpError::Connect { .. } | HttpError::Timeout { .. } | HttpError::Io { .. }
        ) || matches!(
            self,
            HttpError::ProxyRefused {
                status: 502..=504,
                ..
            }
        )
    }

    /// The request certainly did not reach the server (failed before a byte was sent), so
    /// even a POST may be repeated without risk of doing it twice.
    pub fn certainly_not_sent(&self) -> bool {
        matches!(
            self,
            HttpError::InvalidUrl { .. }
                | HttpError::InvalidRequest { .. }
                | HttpError::CaFile { .. }
                | HttpError::Connect { .. }
                | HttpError::Tls { .. }
                | HttpError::Timeout {
                    what: TimeoutKind::Connect,
                    ..
                }
                | HttpError::InvalidProxy(_)
                | HttpError::ProxyRefused { .. }
                | HttpError::ClientCert { .. }
                | HttpError::PinMismatch { .. }
        )
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::InvalidUrl { url, detail } => write!(f, "invalid URL {url}: {detail}"),
            HttpError::InvalidRequest { detail } => write!(f, "invalid HTTP request: {detail}"),
            HttpError::CaFile { path, detail } => {
                write!(f, "cannot load CA certificates from {path}: {detail}")
            }
            HttpError::Connect { host, detail } => write!(f, "cannot connect to {host}: {detail}"),
            HttpError::Tls { host, detail } => {
                write!(f, "TLS handshake with {host} failed: {detail}")
            }
            HttpError::Timeout { what, host, after } => match what {
                TimeoutKind::Connect => {
                    write!(f, "connecting to {host} timed out after {after:?}")
                }
                TimeoutKind::Response => {
                    write!(f, "no complete response from {host} within {after:?}")
                }
            },
            HttpError::Io { host, detail } => {
                write!(
                    f,
                    "connection to {host} failed during the request: {detail}"
                )
            }
            HttpError::Protocol { host, detail } => {
                write!(f, "invalid HTTP response from {host}: {detail}")
            }
            HttpError::BodyTooLarge { host, limit } => {
                write!(
                    f,
                    "response body from {host} exceeds the limit of {limit} bytes"
                )
            }
            HttpError::InvalidProxy(e) => e.fmt(f),
            HttpError::ProxyRefused {
                proxy,
                target,
                status,
                detail,
            } => write!(
                f,
                "proxy {proxy} refused the connection to {target} with HTTP {status}: {detail}"
            ),
            HttpError::ClientCert { path, detail } => {
                write!(f, "cannot use the client certificate {path}: {detail}")
            }
            HttpError::PinMismatch { host, presented } => write!(
                f,
                "the certificate of {host} is valid but its public key matches no configured \
                 pin (the server's key is {presented})"
            ),
        }
    }
}

impl std::error::Error for HttpError {}

/// The URL as it may appear in errors and logs: no user info, no query, no fragment.
pub fn redact_url(url: &Url) -> String {
    let mut shown = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(url.path());
    shown
}

/// Everything needed to reach the server of one URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    tls: bool,
    /// Host as in the URL (IPv6 in brackets), for `Host` and the pool key.
    host: String,
    port: u16,
    /// `host:port` (IPv6 in brackets): the CONNECT authority.
    authority: String,
    /// `host:port`, and the proxy when there is one, for errors and logs.
    shown: String,
    /// Origin-form request target: path and query.
    path_and_query: String,
    /// `Host` header value: the port only when not the scheme's default.
    host_header: String,
}

impl Target {
    fn from_url(url: &Url) -> Result<Target, HttpError> {
        let invalid = |detail: &str| HttpError::InvalidUrl {
            url: redact_url(url),
            detail: detail.to_string(),
        };
        let tls = match url.scheme() {
            "https" => true,
            "http" => false,
            _ => return Err(invalid("the scheme must be http or https")),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid("user info in the URL is not supported"));
        }
        let host = url.host_str().filter(|h| !h.is_empty());
        let host = host
            .ok_or_else(|| invalid("the URL has no host"))?
            .to_string();
        let port = url
            .port_or_known_default()
            .ok_or_else(|| invalid("the URL has no port"))?;
        let mut path_and_query = url.path().to_string();
        if let Some(q) = url.query() {
            path_and_query.push('?');
            path_and_query.push_str(q);
        }
        let host_header = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        Ok(Target {
            tls,
            authority: format!("{host}:{port}"),
            shown: format!("{host}:{port}"),
            host,
            port,
            path_and_query,
            host_header,
        })
    }

    fn pool_key(&self) -> PoolKey {
        (self.tls, self.host.clone(), self.port)
    }
}

/// How a connection to a target is made.
#[derive(Debug, Clone, Copy)]
enum Route<'a> {
    /// TCP straight to the target.
    Direct,
    /// CONNECT tunnel through the proxy (https targets).
    Tunnel(&'a ProxyConfig),
    /// Requests in absolute form to the proxy (http targets).
    Forward(&'a ProxyConfig),
}

impl<'a> Route<'a> {
    fn proxy(self) -> Option<&'a ProxyConfig> {
        match self {
            Route::Direct => None,
            Route::Tunnel(p) | Route::Forward(p) => Some(p),
        }
    }
}

/// Turns an encoded origin-form request (`GET /path HTTP/1.1 ...`) into the absolute form
/// a forward proxy expects (`GET http://host:port/path HTTP/1.1 ...`).
fn absolute_form(request: Vec<u8>, method: Method, origin: &str) -> Vec<u8> {
    let at = method.as_str().len() + 1;
    let mut out = Vec::with_capacity(request.len() + origin.len());
    out.extend_from_slice(&request[..at]);
    out.extend_from_slice(origin.as_bytes());
    out.extend_from_slice(&request[at..]);
    out
}

/// The name the certificate must match: a DNS name or an IP address.
fn server_name(url: &Url) -> Result<ServerName<'static>, HttpError> {
    let invalid = |detail: String| HttpError::InvalidUrl {
        url: redact_url(url),
        detail,
    };
    match url.host() {
        Some(Host::Domain(d)) => ServerName::try_from(d.to_string())
            .map_err(|e| invalid(format!("host is not a valid TLS server name: {e}"))),
        Some(Host::Ipv4(ip)) => Ok(ServerName::IpAddress(IpAddr::V4(ip).into())),
        Some(Host::Ipv6(ip)) => Ok(ServerName::IpAddress(IpAddr::V6(ip).into())),
        None => Err(invalid("the URL has no host".into())),
    }
}

/// A TCP stream with or without TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<futures_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

/// An open connection with its read buffer.
struct Conn {
    io: BufReader<Stream>,
    idle_since: Instant,
}

type PoolKey = (bool, String, u16);

/// The TLS setup shared by all connections of a client.
struct Trust {
    config: Arc<ClientConfig>,
    label: String,
}

struct Inner {
    cfg: HttpConfig,
    /// `Err` when no CA could be loaded: plain HTTP still works, HTTPS fails with it.
    trust: Result<Trust, HttpError>,
    /// Which proxy serves which target (empty: all direct).
    proxies: ProxyRules,
    pool: Mutex<HashMap<PoolKey, Vec<Conn>>>,
}

/// The HTTP client. Cheap to clone (shares the pool and TLS setup); `Send + Sync`.
#[derive(Clone)]
pub struct HttpClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("cfg", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

/// Where the system bundle is looked for: `ssl_cert_file` (the `SSL_CERT_FILE` variable)
/// first, then [`SYSTEM_CA_BUNDLES`].
pub fn system_ca_candidates(ssl_cert_file: Option<PathBuf>) -> Vec<PathBuf> {
    ssl_cert_file
        .filter(|p| !p.as_os_str().is_empty())
        .into_iter()
        .chain(SYSTEM_CA_BUNDLES.iter().map(PathBuf::from))
        .collect()
}

/// Reads PEM certificates from `path` into a root store; fails when none is usable.
fn load_pem_roots(path: &Path) -> Result<RootCertStore, HttpError> {
    let err = |detail: String| HttpError::CaFile {
        path: path.display().to_string(),
        detail,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let mut certs = Vec::new();
    for item in rustls_pemfile::certs(&mut &bytes[..]) {
        certs.push(item.map_err(|e| err(format!("bad PEM: {e}")))?);
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(err(format!(
            "no usable CA certificate in the file ({ignored} unparsable)"
        )));
    }
    Ok(roots)
}

/// A loaded client certificate chain and its key.
struct ClientIdentity {
    chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
    /// The certificate file, for errors.
    path: String,
}

impl Clone for ClientIdentity {
    fn clone(&self) -> Self {
        ClientIdentity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            path: self.path.clone(),
        }
    }
}

/// Reads the PEM chain and key of `cert`. Errors name the file, never key bytes.
fn load_client_identity(cert: &ClientCert) -> Result<ClientIdentity, HttpError> {
    let err = |path: &Path, detail: String| HttpError::ClientCert {
        path: path.display().to_string(),
        detail,
    };
    let bytes = std::fs::read(&cert.cert_file).map_err(|e| err(&cert.cert_file, e.to_string()))?;
    let mut chain = Vec::new();
    for item in rustls_pemfile::certs(&mut &bytes[..]) {
        chain.push(item.map_err(|e| err(&cert.cert_file, format!("bad PEM: {e}")))?);
    }
    if chain.is_empty() {
        return Err(err(
            &cert.cert_file,
            "no CERTIFICATE block in the file".into(),
        ));
    }
    let bytes = std::fs::read(&cert.key_file).map_err(|e| err(&cert.key_file, e.to_string()))?;
    let key = rustls_pemfile::private_key(&mut &bytes[..])
        .map_err(|e| err(&cert.key_file, format!("bad PEM: {e}")))?
        .ok_or_else(|| {
            err(
                &cert.key_file,
                "no private key block (PKCS#8, PKCS#1 or SEC1) in the file".into(),
            )
        })?;
    Ok(ClientIdentity {
        chain,
        key,
        path: cert.cert_file.display().to_string(),
    })
}

/// Builds the rustls client configuration for `ca_file`, or the first system bundle found
/// among `candidates`, offering `client` when a server asks for a certificate.
fn build_trust(
    ca_file: Option<&Path>,
    candidates: &[PathBuf],
    client: Option<ClientIdentity>,
) -> Result<Trust, HttpError> {
    let (roots, label) = match ca_file {
        Some(path) => (load_pem_roots(path)?, format!("ca_file {}", path.display())),
        None => {
            let found = candidates.iter().find(|p| p.is_file()).ok_or_else(|| {
                let tried: Vec<String> =
                    candidates.iter().map(|p| p.display().to_string()).collect();
                HttpError::CaFile {
                    path: "system store".into(),
                    detail: format!(
                        "no CA bundle found (tried {}); set ca_file",
                        tried.join(", ")
                    ),
                }
            })?;
            (
                load_pem_roots(found)?,
                format!("system store ({})", found.display()),
            )
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpError::CaFile {
            path: label.clone(),
            detail: format!("TLS setup failed: {e}"),
        })?
        .with_root_certificates(roots);
    let config = match client {
        None => config.with_no_client_auth(),
        Some(id) => config
            .with_client_auth_cert(id.chain, id.key)
            .map_err(|e| HttpError::ClientCert {
                path: id.path,
                detail: format!("certificate and key are not usable together: {e}"),
            })?,
    };
    Ok(Trust {
        config: Arc::new(config),
        label,
    })
}

/// Maps a TLS handshake failure: refusals by rustls are [`HttpError::Tls`], plain I/O
/// trouble is [`HttpError::Connect`] (transient).
fn handshake_error(host: &str, e: io::Error) -> HttpError {
    let refused = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some();
    if refused {
        HttpError::Tls {
            host: host.to_string(),
            detail: e.to_string(),
        }
    } else {
        HttpError::Connect {
            host: host.to_string(),
            detail: format!("during TLS handshake: {e}"),
        }
    }
}

/// A fatal alert about certificates received after the handshake. With TLS 1.3 a server
/// judges the client certificate only after the client has finished its handshake, so a
/// missing or unacceptable client certificate shows up on the first read. The server
/// rejects the session before it reads application data, so this counts as a TLS refusal
/// (nothing processed), not an I/O failure.
fn certificate_refusal(e: &io::Error) -> Option<String> {
    use rustls::AlertDescription as A;
    let rustls::Error::AlertReceived(alert) = e.get_ref()?.downcast_ref::<rustls::Error>()? else {
        return None;
    };
    matches!(
        alert,
        A::CertificateRequired
            | A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::AccessDenied
            // A certificate naming a trusted issuer but not signed by it.
            | A::DecryptError
            | A::HandshakeFailure
    )
    .then(|| {
        format!(
            "the server refused the session after the handshake (received fatal alert: \
             {alert:?}); it does not accept the client certificate, or none is configured \
             (client_cert)"
        )
    })
}

/// How far one exchange got, to tell a stale pooled connection from a real failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Writing,
    ReadingHead,
    ReadingBody,
}

impl HttpClient {
    /// Creates a client. Fails if `ca_file` is set but unusable. A missing system bundle
    /// does not fail here (plain HTTP keeps working); HTTPS requests then fail with
    /// [`HttpError::CaFile`].
    ///
    /// Also fails on an unusable client certificate or proxy setting (explicit or in
    /// `proxy_env`): a misread proxy must not send traffic direct.
    pub fn new(cfg: HttpConfig) -> Result<HttpClient, HttpError> {
        let client = cfg
            .client_cert
            .as_ref()
            .map(load_client_identity)
            .transpose()?;
        let trust = match &cfg.ca_file {
            Some(path) => Ok(build_trust(Some(path), &[], client)?),
            None => {
                let env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
                // A mismatched client key is a configuration error, whatever the CA.
                match build_trust(None, &system_ca_candidates(env), client) {
                    Err(e @ HttpError::ClientCert { .. }) => return Err(e),
                    other => other,
                }
            }
        };
        if let Err(e) = &trust {
            log::warn!("HTTPS will not work: {e}");
        }
        let proxies = match (&cfg.proxy, &cfg.proxy_env) {
            (Some(p), _) => ProxyRules::single(p.clone()),
            (None, Some(env)) => env.resolve().map_err(HttpError::InvalidProxy)?,
            (None, None) => ProxyRules::default(),
        };
        for p in [&proxies.https, &proxies.http].into_iter().flatten() {
            log::info!(
                "HTTP proxy {}{}",
                p.shown(),
                if p.auth.is_some() {
                    " (with basic authentication)"
                } else {
                    ""
                }
            );
        }
        Ok(HttpClient {
            inner: Arc::new(Inner {
                cfg,
                trust,
                proxies,
                pool: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The way to `target`: direct, or through the proxy chosen for it.
    fn route(&self, url: &Url, target: &Target) -> Route<'_> {
        match self.inner.proxies.proxy_for(url) {
            None => Route::Direct,
            Some(p) if target.tls => Route::Tunnel(p),
            Some(p) => Route::Forward(p),
        }
    }

    /// The target of `url`, its route, and its name for errors (`host:port via proxy ...`).
    fn plan(&self, url: &Url) -> Result<(Target, Route<'_>), HttpError> {
        let mut target = Target::from_url(url)?;
        let route = self.route(url, &target);
        if let Some(p) = route.proxy() {
            target.shown = format!("{} via proxy {}", target.authority, p.shown());
        }
        Ok((target, route))
    }

    /// The settings this client was made with.
    pub fn config(&self) -> &HttpConfig {
        &self.inner.cfg
    }

    /// Sends one request and reads the complete response, within `request_timeout`.
    ///
    /// Any status is a response (`Ok`); only transport, protocol and limit failures are
    /// errors. See the module doc for pooling and the one stale-connection retry.
    pub async fn send(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let (target, route) = self.plan(&req.url)?;
        let forward = match route {
            Route::Forward(p) => Some(p),
            _ => None,
        };
        let mut headers = std::borrow::Cow::Borrowed(&req.headers);
        if let Some(auth) = forward.and_then(|p| p.auth.as_ref()) {
            headers
                .to_mut()
                .push(("Proxy-Authorization".into(), auth.header_value()));
        }
        let mut bytes = h1::encode_request(
            req.method,
            &target.path_and_query,
            &target.host_header,
            &self.inner.cfg.user_agent,
            &headers,
            req.body.as_deref(),
        )
        .map_err(|detail| HttpError::InvalidRequest { detail })?;
        drop(headers);
        if forward.is_some() {
            bytes = absolute_form(bytes, req.method, &format!("http://{}", target.host_header));
        }
        log::trace!(
            "{} {}://{}{}",
            req.method,
            if target.tls { "https" } else { "http" },
            target.shown,
            req.url.path()
        );
        let sent = AtomicBool::new(false);
        let after = self.inner.cfg.request_timeout;
        let work = self.send_bytes(&req.url, &target, req.method, &bytes, &sent);
        let deadline = async {
            Timer::after(after).await;
            let what = if sent.load(Ordering::SeqCst) {
                TimeoutKind::Response
            } else {
                TimeoutKind::Connect
            };
            Err(HttpError::Timeout {
                what,
                host: target.shown.clone(),
                after,
            })
        };
        let response = future::or(work, deadline).await?;
        match forward {
            // Only a proxy answers 407; the request never reached the target.
            Some(p) if response.status == 407 => Err(HttpError::ProxyRefused {
                proxy: p.shown(),
                target: target.authority.clone(),
                status: 407,
                detail: proxy::refusal_detail(407, p.auth.as_ref()),
            }),
            _ => Ok(response),
        }
    }

    async fn send_bytes(
        &self,
        url: &Url,
        target: &Target,
        method: Method,
        bytes: &[u8],
        sent: &AtomicBool,
    ) -> Result<HttpResponse, HttpError> {
        let mut stale_retry_left = method.is_idempotent();
        loop {
            let (mut conn, reused) = match self.checkout(target).await {
                Some(conn) => (conn, true),
                None => (self.connect(url, target).await?, false),
            };
            sent.store(true, Ordering::SeqCst);
            let mut stage = Stage::Writing;
            let result = exchange(
                &mut conn,
                bytes,
                method,
                self.inner.cfg.max_body_bytes,
                &mut stage,
            )
            .await;
            match result {
                Ok((response, reusable)) => {
                    if reusable {
                        self.checkin(target, conn);
                    }
                    return Ok(response);
                }
                Err(e) => {
                    let nothing_back = stage == Stage::Writing
                        || matches!(e, CodecError::Closed { mid_message: false })
                        || (stage == Stage::ReadingHead && matches!(&e, CodecError::Io(_)));
                    if reused && nothing_back && stale_retry_left {
                        log::debug!(
                            "pooled connection to {} was stale; reconnecting",
                            target.shown
                        );
                        stale_retry_left = false;
                        continue;
                    }
                    return Err(codec_error(&target.shown, e, stage));
                }
            }
        }
    }

    /// Takes a live idle connection for `target` from the pool, dropping dead ones.
    async fn checkout(&self, target: &Target) -> Option<Conn> {
        let key = target.pool_key();
        loop {
            let candidate = {
                let mut pool = self.inner.pool.lock().unwrap_or_else(|p| p.into_inner());
                let idle = pool.get_mut(&key)?;
                let conn = idle.pop();
                if idle.is_empty() {
                    pool.remove(&key);
                }
                conn
            }?;
            let mut conn = candidate;
            if conn.idle_since.elapsed() > self.inner.cfg.idle_timeout {
                continue;
            }
            // Pending means open and quiet; EOF, stray bytes or an error mean unusable.
            if future::poll_once(conn.io.fill_buf()).await.is_none() {
                log::trace!("reusing a connection to {}", target.shown);
                return Some(conn);
            }
        }
    }

    fn checkin(&self, target: &Target, mut conn: Conn) {
        let max = self.inner.cfg.max_idle_per_host;
        if max == 0 {
            return;
        }
        conn.idle_since = Instant::now();
        let mut pool = self.inner.pool.lock().unwrap_or_else(|p| p.into_inner());
        let idle = pool.entry(target.pool_key()).or_default();
        if idle.len() >= max {
            // Keep the most recent ones: drop the oldest.
            idle.remove(0);
        }
        idle.push(conn);
    }

    /// Number of idle pooled connections (all hosts), for tests and status output.
    pub fn idle_connections(&self) -> usize {
        let pool = self.inner.pool.lock().unwrap_or_else(|p| p.into_inner());
        pool.values().map(Vec::len).sum()
    }

    /// Opens a new connection (TCP, then TLS for https) within `connect_timeout`.
    async fn connect(&self, url: &Url, target: &Target) -> Result<Conn, HttpError> {
        let (stream, _) = self.open_within_timeout(url, target).await?;
        log::debug!("connected to {}", target.shown);
        Ok(Conn {
            io: BufReader::new(stream),
            idle_since: Instant::now(),
        })
    }

    /// [`HttpClient::open_stream`] bounded by `connect_timeout`.
    async fn open_within_timeout(
        &self,
        url: &Url,
        target: &Target,
    ) -> Result<(Stream, Option<TlsFacts>), HttpError> {
        let after = self.inner.cfg.connect_timeout;
        let deadline = async {
            Timer::after(after).await;
            Err(HttpError::Timeout {
                what: TimeoutKind::Connect,
                host: target.shown.clone(),
                after,
            })
        };
        future::or(self.open_stream(url, target), deadline).await
    }

    /// TCP connect plus TLS handshake (no timeout of its own); also returns the facts of
    /// the TLS session.
    async fn open_stream(
        &self,
        url: &Url,
        target: &Target,
    ) -> Result<(Stream, Option<TlsFacts>), HttpError> {
        let connect_err = |e: io::Error| HttpError::Connect {
            host: target.shown.clone(),
            detail: e.to_string(),
        };
        let route = self.route(url, target);
        let tcp = match route.proxy() {
            None => tcp_connect(url.host(), target.port).await,
            Some(p) => tcp_connect(p.parsed_host(), p.port()).await,
        }
        .map_err(connect_err)?;
        tcp.set_nodelay(true).map_err(connect_err)?;
        let tcp = match route {
            Route::Tunnel(p) => self.tunnel(tcp, target, p).await?,
            _ => tcp,
        };
        if !target.tls {
            return Ok((Stream::Plain(tcp), None));
        }
        let trust = self.inner.trust.as_ref().map_err(Clone::clone)?;
        let name = server_name(url)?;
        let tls = TlsConnector::from(trust.config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| handshake_error(&target.shown, e))?;
        let (_, session) = tls.get_ref();
        // Verification has passed; now the pin, if any (it only ever narrows trust).
        let leaf = session.peer_certificates().and_then(<[_]>::first);
        let spki = leaf.map(|c| spki_sha256(c.as_ref()));
        let pins = &self.inner.cfg.pin_sha256;
        if !pins.is_empty() {
            match &spki {
                Some(Ok(hash)) if pins.contains(hash) => {}
                other => {
                    return Err(HttpError::PinMismatch {
                        host: target.shown.clone(),
                        presented: match other {
                            Some(Ok(hash)) => pin_string(hash),
                            Some(Err(e)) => format!("unreadable: {e}"),
                            None => "absent: no certificate".into(),
                        },
                    })
                }
            }
        }
        let facts = TlsFacts {
            protocol: match session.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".to_string(),
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2".to_string(),
                Some(other) => format!("{other:?}"),
                None => "unknown".to_string(),
            },
            cipher_suite: session
                .negotiated_cipher_suite()
                .map_or_else(|| "unknown".to_string(), |s| format!("{:?}", s.suite())),
            trust_anchors: trust.label.clone(),
            verified: true,
            peer_certificates: session.peer_certificates().map_or(0, <[_]>::len),
            spki_sha256: spki.and_then(Result::ok).map(|h| pin_string(&h)),
            pinned: !pins.is_empty(),
            client_certificate: self.inner.cfg.client_cert.is_some(),
            proxy: route.proxy().map(ProxyConfig::shown),
        };
        Ok((Stream::Tls(Box::new(tls)), Some(facts)))
    }

    /// Asks the proxy for a tunnel to `target` over `tcp`; returns the tunnel.
    async fn tunnel(
        &self,
        tcp: TcpStream,
        target: &Target,
        proxy: &ProxyConfig,
    ) -> Result<TcpStream, HttpError> {
        let request = proxy::connect_request(
            &target.authority,
            proxy.auth.as_ref(),
            &self.inner.cfg.user_agent,
        );
        let failed = |detail: String| HttpError::Connect {
            host: target.shown.clone(),
            detail,
        };
        let mut io = BufReader::new(tcp);
        io.get_mut()
            .write_all(&request)
            .await
            .map_err(|e| failed(format!("sending CONNECT to the proxy: {e}")))?;
        let head = h1::read_head(&mut io).await.map_err(|e| match e {
            CodecError::Malformed(detail) => HttpError::Protocol {
                host: target.shown.clone(),
                detail: format!("the proxy's answer to CONNECT: {detail}"),
            },
            CodecError::Closed { .. } => {
                failed("the proxy closed the connection instead of answering CONNECT".into())
            }
            CodecError::Io(e) => failed(format!("reading the proxy's answer to CONNECT: {e}")),
            CodecError::BodyTooLarge(_) => {
                failed("the proxy's answer to CONNECT is too large".into())
            }
        })?;
        if !(200..300).contains(&head.status) {
            return Err(HttpError::ProxyRefused {
                proxy: proxy.shown(),
                target: target.authority.clone(),
                status: head.status,
                detail: proxy::refusal_detail(head.status, proxy.auth.as_ref()),
            });
        }
        // The target speaks only after our TLS hello: anything buffered is the proxy's.
        if !io.buffer().is_empty() {
            return Err(HttpError::Protocol {
                host: target.shown.clone(),
                detail: "the proxy sent data after its answer to CONNECT".into(),
            });
        }
        log::debug!("tunnel to {} open", target.shown);
        Ok(io.into_inner())
    }

    /// Connects to the server of `url` (within `connect_timeout`) and reports the TLS
    /// session; `Ok(None)` for plain `http`. The connection is closed afterwards.
    pub async fn tls_facts(&self, url: &Url) -> Result<Option<TlsFacts>, HttpError> {
        let (target, _) = self.plan(url)?;
        if !target.tls {
            return Ok(None);
        }
        let (_stream, facts) = self.open_within_timeout(url, &target).await?;
        Ok(facts)
    }
}

/// TCP connect to `host` (a literal address needs no resolver) on `port`.
async fn tcp_connect(host: Option<Host<&str>>, port: u16) -> io::Result<TcpStream> {
    match host {
        Some(Host::Ipv4(ip)) => TcpStream::connect(SocketAddr::new(IpAddr::V4(ip), port)).await,
        Some(Host::Ipv6(ip)) => TcpStream::connect(SocketAddr::new(IpAddr::V6(ip), port)).await,
        Some(Host::Domain(name)) => TcpStream::connect((name, port)).await,
        None => Err(io::Error::new(io::ErrorKind::InvalidInput, "no host")),
    }
}

// ---------------------------------------------------------------------------------------
// SPKI pins.

/// Why a pin text is not usable.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PinError {
    /// The text does not start with `sha256/`.
    Prefix {
        /// The text as given (pins are public).
        text: String,
    },
    /// The part after `sha256/` is not standard base64 of 32 bytes.
    Encoding {
        /// The text as given.
        text: String,
        /// What is wrong.
        detail: String,
    },
}

impl fmt::Display for PinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PinError::Prefix { text } => {
                write!(f, "pin {text:?} must have the form sha256/BASE64")
            }
            PinError::Encoding { text, detail } => write!(f, "pin {text:?}: {detail}"),
        }
    }
}

impl std::error::Error for PinError {}

/// Parses `sha256/BASE64` (standard base64 with padding, 44 characters for 32 bytes), the
/// form curl's `--pinnedpubkey` and HPKP use.
pub fn parse_pin(text: &str) -> Result<[u8; 32], PinError> {
    let t = text.trim();
    let b64 = t
        .strip_prefix("sha256/")
        .ok_or_else(|| PinError::Prefix { text: t.into() })?;
    let bytes = crate::base64::decode(b64).map_err(|e| PinError::Encoding {
        text: t.into(),
        detail: format!("not base64 ({e})"),
    })?;
    bytes.as_slice().try_into().map_err(|_| PinError::Encoding {
        text: t.into(),
        detail: format!("{} bytes, a SHA-256 pin has 32", bytes.len()),
    })
}

/// A pin in its written form, `sha256/BASE64`.
pub fn pin_string(hash: &[u8; 32]) -> String {
    format!("sha256/{}", crate::base64::encode(hash))
}

/// SHA-256 (ring, the crypto provider rustls already uses).
fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, data).as_ref());
    out
}

/// The DER of the subjectPublicKeyInfo of an X.509 v3 certificate (RFC 5280 §4.1), as
/// rustls-webpki parses it (v1 and v2 certificates are refused there, as rustls refuses
/// them for a server anyway).
pub fn certificate_spki(cert_der: &[u8]) -> Result<Vec<u8>, String> {
    let der = rustls_pki_types::CertificateDer::from(cert_der);
    let cert = webpki::EndEntityCert::try_from(&der)
        .map_err(|e| format!("not a usable X.509 certificate: {e}"))?;
    Ok(cert.subject_public_key_info().as_ref().to_vec())
}

/// The SHA-256 of a certificate's subjectPublicKeyInfo: the value a pin is compared with.
pub fn spki_sha256(cert_der: &[u8]) -> Result<[u8; 32], String> {
    certificate_spki(cert_der).map(|spki| sha256(&spki))
}

/// Writes the request and reads the complete response; `stage` tells how far it got.
/// Returns the response and whether the connection may be reused.
async fn exchange(
    conn: &mut Conn,
    bytes: &[u8],
    method: Method,
    limit: usize,
    stage: &mut Stage,
) -> Result<(HttpResponse, bool), CodecError> {
    *stage = Stage::Writing;
    conn.io.write_all(bytes).await?;
    conn.io.flush().await?;
    *stage = Stage::ReadingHead;
    let head = h1::read_head(&mut conn.io).await?;
    let framing = h1::framing(method, &head).map_err(CodecError::Malformed)?;
    *stage = Stage::ReadingBody;
    let body = h1::read_body(&mut conn.io, framing, limit).await?;
    let reusable =
        h1::keep_alive(&head) && framing != h1::Framing::UntilClose && conn.io.buffer().is_empty();
    Ok((
        HttpResponse {
            status: head.status,
            headers: head.headers,
            body,
        },
        reusable,
    ))
}

fn codec_error(host: &str, e: CodecError, stage: Stage) -> HttpError {
    let host = host.to_string();
    if let CodecError::Io(io) = &e {
        if let Some(detail) = certificate_refusal(io) {
            return HttpError::Tls { host, detail };
        }
    }
    match e {
        CodecError::Io(e) => HttpError::Io {
            host,
            detail: match stage {
                Stage::Writing => format!("while sending the request: {e}"),
                Stage::ReadingHead => format!("while reading the response head: {e}"),
                Stage::ReadingBody => format!("while reading the response body: {e}"),
            },
        },
        CodecError::Closed { .. } => HttpError::Io {
            host,
            detail: match stage {
                Stage::ReadingBody => "server closed the connection before the body was complete",
                _ => "server closed the connection before a complete response head",
            }
            .to_string(),
        },
        CodecError::Malformed(detail) => HttpError::Protocol { host, detail },
        CodecError::BodyTooLarge(limit) => HttpError::BodyTooLarge { host, limit },
    }
}

/// `application/x-www-form-urlencoded` encoding of one value (RFC 6749 Appendix B):
/// unreserved characters as they are, everything else percent-encoded.
pub fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    /// `url`'s IDNA back end is the stub (Cargo.toml, `idna_adapter`): host names are ASCII,
    /// an internationalised one is written in its xn-- form, which still works.
    #[test]
    fn hosts_are_ascii_and_an_internationalised_name_is_written_in_its_xn_form() {
        assert!(Url::parse("https://b\u{fc}cher.example/v2").is_err());
        let u = url("https://xn--bcher-kva.example/v2");
        assert_eq!(u.host_str(), Some("xn--bcher-kva.example"));
        assert_eq!(Target::from_url(&u).unwrap().port, 443);
        assert!(server_name(&u).is_ok());
        // ASCII names are still lowercased as before.
        assert_eq!(
            url("https://SCIM.Example.TEST/v2").host_str(),
            Some("scim.example.test")
        );
    }

    #[test]
    fn target_from_url() {
        let t = Target::from_url(&url("https://scim.example.test/v2/Users?filter=a%20b")).unwrap();
        assert!(t.tls);
        assert_eq!(t.port, 443);
        assert_eq!(t.shown, "scim.example.test:443");
        assert_eq!(t.host_header, "scim.example.test");
        assert_eq!(t.path_and_query, "/v2/Users?filter=a%20b");
        let t = Target::from_url(&url("http://127.0.0.1:8080")).unwrap();
        assert_eq!(
            (t.tls, t.port, t.path_and_query.as_str()),
            (false, 8080, "/")
        );
        assert_eq!(t.host_header, "127.0.0.1:8080");
        let t = Target::from_url(&url("https://[::1]:8443/x")).unwrap();
        assert_eq!(t.shown, "[::1]:8443");
    }

    #[test]
    fn rejects_unusable_urls_without_leaking_credentials() {
        let e = Target::from_url(&url("https://user:pw-secret@h.test/v2?token=q")).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("user info"), "{text}");
        assert!(
            !text.contains("pw-secret") && !text.contains("token=q"),
            "{text}"
        );
        assert!(Target::from_url(&url("ftp://h.test/")).is_err());
        assert!(Target::from_url(&url("mailto:a@b.test")).is_err());
    }

    #[test]
    fn server_names() {
        assert!(matches!(
            server_name(&url("https://127.0.0.1/")),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name(&url("https://[::1]/")),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name(&url("https://scim.example.test/")),
            Ok(ServerName::DnsName(_))
        ));
    }

    #[test]
    fn system_candidates_put_ssl_cert_file_first() {
        let c = system_ca_candidates(Some(PathBuf::from("/custom/bundle.pem")));
        assert_eq!(c[0], PathBuf::from("/custom/bundle.pem"));
        assert_eq!(c.len(), SYSTEM_CA_BUNDLES.len() + 1);
        assert_eq!(
            system_ca_candidates(Some(PathBuf::new())).len(),
            SYSTEM_CA_BUNDLES.len()
        );
        assert_eq!(
            system_ca_candidates(None)[0],
            PathBuf::from(SYSTEM_CA_BUNDLES[0])
        );
    }

    #[test]
    fn ca_file_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("idrelay-http-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let e = build_trust(Some(&missing), &[], None).err().unwrap();
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = build_trust(Some(&empty), &[], None).err().unwrap();
        assert!(e.to_string().contains("no usable CA certificate"), "{e}");
        let e = build_trust(None, std::slice::from_ref(&missing), None)
            .err()
            .unwrap();
        assert!(e.to_string().contains("no CA bundle found"), "{e}");
        let cfg = HttpConfig {
            ca_file: Some(missing),
            ..HttpConfig::default()
        };
        assert!(matches!(
            HttpClient::new(cfg),
            Err(HttpError::CaFile { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn error_classes() {
        let connect = HttpError::Connect {
            host: "h:1".into(),
            detail: "refused".into(),
        };
        assert!(connect.is_transient() && connect.certainly_not_sent());
        let waiting = HttpError::Timeout {
            what: TimeoutKind::Response,
            host: "h:1".into(),
            after: Duration::from_secs(1),
        };
        assert!(waiting.is_transient() && !waiting.certainly_not_sent());
        let tls = HttpError::Tls {
            host: "h:1".into(),
            detail: "UnknownIssuer".into(),
        };
        assert!(!tls.is_transient() && tls.certainly_not_sent());
        let proto = HttpError::Protocol {
            host: "h:1".into(),
            detail: "x".into(),
        };
        assert!(!proto.is_transient() && !proto.certainly_not_sent());
    }

    /// The testbed CA (v3, RSA 2048); pin computed with
    /// `openssl x509 -pubkey -noout | openssl pkey -pubin -outform DER | openssl dgst -sha256`.
    const RSA_V3_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIDGzCCAgOgAwIBAgIUfPpzRK0C5a9zOuNsDqmPZChkdYMwDQYJKoZIhvcNAQEL
BQAwFTETMBEGA1UEAwwKVGVzdGJlZCBDQTAeFw0yNjExMjUxODQxMDRaFw0zNjEx
MjIxODQxMDRaMBUxEzARBgNVBAMMClRlc3RiZWQgQ0EwggEiMA0GCSqGSIb3DQEB
AQUAA4IBDwAwggEKAoIBAQC+L3e9vt6Tv5FdCnPV6vjvJD+H0mTdn2yuIeQXdjda
Ky3V00X4I4yzyqsHKpTgJqIiq094/Xnhd0TBF1Ph9j2/K8VFA5k8b3sm0vpE5O7b
K9VVa4dX3tGxcNx/RkXjg11LuBexq2k/37+uSP79XjSqQVtBwCiWmvikz+n+2vtv
m9Afjz1htsZ2GFX94A3xowGGLuSUCkdkNZhqDR/Wnr2NhthZiqYhyzUTGhfUamZp
Umvl8EuN9gp3ZAUNajHLuTWrDh2HJvbgmpRKMdCVPDWqlHQtWD5tT6UukGKEscHy
GdC0cmgB0EPZ6LWNw5Fyu59O6c73EqE78Isn+FFFLV6PAgMBAAGjYzBhMB0GA1Ud
DgQWBBSFbnsDAkQb+1nMnFRpNXrMptwOXTAfBgNVHSMEGDAWgBSFbnsDAkQb+1nM
nFRpNXrMptwOXTAPBgNVHRMBAf8EBTADAQH/MA4GA1UdDwEB/wQEAwIBBjANBgkq
hkiG9w0BAQsFAAOCAQEAqOYbCpuNOigX8C90udhkrVRDy2LxkKn/ACNN2d0D7VDO
HC3EEXJxhpeXPzQRnvA3scyclcBUplnYNDEPLPrF/V5B28SUX5W4j1PEsJLRbfD0
tTweeJa7KZE/JCXYQ1EhEV/toD7ynjGnaadHUrFd3YIpfrgE806delEHdd9gH17W
0qZnzjdYLJI8b4CAyFrfjpR0/D2+OIpDyCvT7QdaiaXi+aLJauT7hDygq9EMtPTC
L4rTDDkuQxTXWe7xE/Jfr5OHhVWYbk+kPlWqgoFlz45PUHGY4Txlg9TxZRlpcwhU
06ncp+Js4qa18LZuJwtFXj9TYkG0NP1ivmWMOw2Oeg==
-----END CERTIFICATE-----
";
    const RSA_V3_PIN: &str = "sha256/8zcXRAKV9cbvXHtwpcMJK+AktcOZ88adLTzBtcCQ1LQ=";

    /// A self-signed v1 certificate (no version field, no extensions) with a P-256 key.
    const EC_V1_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBJzCBzQIUftCvt9xvwdRQZWEQXUXXJSrDM6EwCgYIKoZIzj0EAwIwFjEUMBIG
A1UEAwwLcGluLXRlc3QtdjEwHhcNMjYxMTI1MjI0NzQ2WhcNMzYxMTIyMjI0NzQ2
WjAWMRQwEgYDVQQDDAtwaW4tdGVzdC12MTBZMBMGByqGSM49AgEGCCqGSM49AwEH
A0IABMCIaCaCor5v9k1dvxZVke8e4vOyTYHRd9cl3mEQafgwxkC0KeIvvwC3iajU
0eLAs650vG2MgH0UxUTNptPjSsgwCgYIKoZIzj0EAwIDSQAwRgIhAKg+v+yf8ya8
bP3jBYcZzGcgGUBL9m6W/gQyGKWMSXmEAiEA/s7RpcGg8Y9TSQt7whHv3BjDuTGJ
1gJn2g+fOZif+9k=
-----END CERTIFICATE-----
";
    const EC_V1_PIN: &str = "sha256/DqGC/gbv5Xgpqp2/6W/dT+VbkCc8a3HQeCJLBK87V+k=";

    fn der(pem: &str) -> Vec<u8> {
        rustls_pemfile::certs(&mut pem.as_bytes())
            .next()
            .unwrap()
            .unwrap()
            .as_ref()
            .to_vec()
    }

    #[test]
    fn sha256_is_sha256() {
        // FIPS 180-2 appendix B.1.
        let h = sha256(b"abc");
        let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn spki_of_real_certificates() {
        let cert = der(RSA_V3_CERT);
        let spki = certificate_spki(&cert).unwrap();
        assert_eq!(spki[0], 0x30);
        // AlgorithmIdentifier { rsaEncryption OID, ... } opens the SPKI.
        let rsa = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
        assert!(spki.windows(rsa.len()).any(|w| w == rsa));
        assert_eq!(pin_string(&spki_sha256(&cert).unwrap()), RSA_V3_PIN);
        assert_eq!(parse_pin(RSA_V3_PIN).unwrap(), spki_sha256(&cert).unwrap());
        // A v1 certificate is refused by webpki (and so by rustls as a server's leaf).
        assert!(spki_sha256(&der(EC_V1_CERT)).is_err());
    }

    #[test]
    fn spki_of_broken_certificates_is_an_error() {
        let cert = der(RSA_V3_CERT);
        for cut in [0, 1, 2, 4, 10, 200, cert.len() - 300] {
            assert!(certificate_spki(&cert[..cut]).is_err(), "cut at {cut}");
        }
        let mut wrong_tag = cert.clone();
        wrong_tag[0] = 0x31;
        assert!(certificate_spki(&wrong_tag).unwrap_err().contains("X.509"));
    }

    proptest::proptest! {
        #[test]
        fn spki_walk_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = certificate_spki(&bytes);
        }

        #[test]
        fn spki_walk_survives_corruption(at in 0usize..800, byte in proptest::prelude::any::<u8>()) {
            let mut cert = der(RSA_V3_CERT);
            let at = at % cert.len();
            cert[at] = byte;
            let _ = spki_sha256(&cert);
        }
    }

    #[test]
    fn pins_parse_strictly() {
        let pin = parse_pin(&format!("  {EC_V1_PIN}\n")).unwrap();
        assert_eq!(pin_string(&pin), EC_V1_PIN);
        let e = parse_pin("sha1/AAAA").unwrap_err();
        assert!(matches!(e, PinError::Prefix { .. }), "{e}");
        assert!(e.to_string().contains("sha256/BASE64"));
        let e = parse_pin("sha256/not-base64!").unwrap_err();
        assert!(matches!(e, PinError::Encoding { .. }), "{e}");
        let e = parse_pin("sha256/AAAA").unwrap_err();
        assert!(e.to_string().contains("3 bytes"), "{e}");
        assert!(parse_pin(&EC_V1_PIN.replace('=', "")).is_err());
    }

    #[test]
    fn absolute_form_for_forward_proxies() {
        let req =
            h1::encode_request(Method::Get, "/v2/Users?x=1", "h.test:8080", "", &[], None).unwrap();
        let out = absolute_form(req, Method::Get, "http://h.test:8080");
        assert!(
            out.starts_with(
                b"GET http://h.test:8080/v2/Users?x=1 HTTP/1.1\r\nHost: h.test:8080\r\n"
            ),
            "{}",
            String::from_utf8_lossy(&out)
        );
        let req = h1::encode_request(Method::Delete, "/a", "h", "", &[], None).unwrap();
        assert!(absolute_form(req, Method::Delete, "http://h").starts_with(b"DELETE http://h/a "));
    }

    #[test]
    fn proxy_and_pin_errors_read_well() {
        let refused = HttpError::ProxyRefused {
            proxy: "http://p.test:3128".into(),
            target: "h.test:443".into(),
            status: 407,
            detail: proxy::refusal_detail(407, None),
        };
        let text = refused.to_string();
        assert!(
            text.contains("http://p.test:3128") && text.contains("407"),
            "{text}"
        );
        assert!(!refused.is_transient() && refused.certainly_not_sent());
        let bad_gateway = HttpError::ProxyRefused {
            proxy: "http://p.test:3128".into(),
            target: "h.test:443".into(),
            status: 502,
            detail: String::new(),
        };
        assert!(bad_gateway.is_transient());
        let pin = HttpError::PinMismatch {
            host: "h.test:443".into(),
            presented: EC_V1_PIN.into(),
        };
        assert!(pin.to_string().contains(EC_V1_PIN));
        assert!(!pin.is_transient() && pin.certainly_not_sent());
    }

    #[test]
    fn unusable_proxy_or_client_cert_fails_the_client() {
        let env = ProxyEnv::from_lookup(|n| {
            (n == "HTTPS_PROXY").then(|| "socks5://u:hush-hush@proxy.test:1080".to_string())
        });
        let e = HttpClient::new(HttpConfig {
            proxy_env: Some(env),
            ..HttpConfig::default()
        })
        .unwrap_err();
        assert!(matches!(e, HttpError::InvalidProxy(_)), "{e}");
        assert!(e.to_string().contains("HTTPS_PROXY") && !e.to_string().contains("hush-hush"));

        let e = HttpClient::new(HttpConfig {
            client_cert: Some(ClientCert {
                cert_file: PathBuf::from("/nonexistent/idrelay-client.pem"),
                key_file: PathBuf::from("/nonexistent/idrelay-client.key"),
            }),
            ..HttpConfig::default()
        })
        .unwrap_err();
        assert!(matches!(e, HttpError::ClientCert { .. }), "{e}");
        assert!(e.to_string().contains("idrelay-client.pem"), "{e}");
    }

    #[test]
    fn explicit_proxy_routes_by_scheme_and_no_proxy() {
        let p = ProxyConfig::parse("http://proxy.test:3128", "proxy")
            .unwrap()
            .with_no_proxy(proxy::NoProxy::parse("direct.test"));
        let client = HttpClient::new(HttpConfig {
            proxy: Some(p),
            ..HttpConfig::default()
        })
        .unwrap();
        let (t, r) = client.plan(&url("https://scim.test/v2")).unwrap();
        assert!(matches!(r, Route::Tunnel(_)));
        assert_eq!(t.shown, "scim.test:443 via proxy http://proxy.test:3128");
        assert_eq!(t.authority, "scim.test:443");
        let (_, r) = client.plan(&url("http://scim.test/v2")).unwrap();
        assert!(matches!(r, Route::Forward(_)));
        let (t, r) = client.plan(&url("https://direct.test/")).unwrap();
        assert!(matches!(r, Route::Direct));
        assert_eq!(t.shown, "direct.test:443");
    }

    #[test]
    fn client_is_send_sync_clone() {
        fn check<T: Send + Sync + Clone>() {}
        check::<HttpClient>();
        fn send_future<F: std::future::Future + Send>(_: F) {}
        let client = HttpClient::new(HttpConfig::default()).unwrap();
        send_future(client.send(HttpRequest::new(Method::Get, url("http://127.0.0.1:1/"))));
    }
}
