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
//!   paths). There is no switch to turn verification off.
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
}

impl HttpError {
    /// Worth retrying later: connection trouble and timeouts, not configuration, TLS trust
    /// or protocol errors.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            HttpError::Connect { .. } | HttpError::Timeout { .. } | HttpError::Io { .. }
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
    /// `host:port`, for errors and logs.
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

/// Builds the rustls client configuration for `ca_file`, or the first system bundle found
/// among `candidates`.
fn build_trust(ca_file: Option<&Path>, candidates: &[PathBuf]) -> Result<Trust, HttpError> {
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
        .with_root_certificates(roots)
        .with_no_client_auth();
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
    pub fn new(cfg: HttpConfig) -> Result<HttpClient, HttpError> {
        let trust = match &cfg.ca_file {
            Some(path) => Ok(build_trust(Some(path), &[])?),
            None => {
                let env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
                build_trust(None, &system_ca_candidates(env))
            }
        };
        if let Err(e) = &trust {
            log::warn!("HTTPS will not work: {e}");
        }
        Ok(HttpClient {
            inner: Arc::new(Inner {
                cfg,
                trust,
                pool: Mutex::new(HashMap::new()),
            }),
        })
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
        let target = Target::from_url(&req.url)?;
        let bytes = h1::encode_request(
            req.method,
            &target.path_and_query,
            &target.host_header,
            &self.inner.cfg.user_agent,
            &req.headers,
            req.body.as_deref(),
        )
        .map_err(|detail| HttpError::InvalidRequest { detail })?;
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
        future::or(work, deadline).await
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
        let tcp = match url.host() {
            Some(Host::Ipv4(ip)) => {
                TcpStream::connect(SocketAddr::new(IpAddr::V4(ip), target.port)).await
            }
            Some(Host::Ipv6(ip)) => {
                TcpStream::connect(SocketAddr::new(IpAddr::V6(ip), target.port)).await
            }
            _ => TcpStream::connect((target.host.as_str(), target.port)).await,
        }
        .map_err(connect_err)?;
        tcp.set_nodelay(true).map_err(connect_err)?;
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
        };
        Ok((Stream::Tls(Box::new(tls)), Some(facts)))
    }

    /// Connects to the server of `url` (within `connect_timeout`) and reports the TLS
    /// session; `Ok(None)` for plain `http`. The connection is closed afterwards.
    pub async fn tls_facts(&self, url: &Url) -> Result<Option<TlsFacts>, HttpError> {
        let target = Target::from_url(url)?;
        if !target.tls {
            return Ok(None);
        }
        let (_stream, facts) = self.open_within_timeout(url, &target).await?;
        Ok(facts)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
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
        let e = build_trust(Some(&missing), &[]).err().unwrap();
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = build_trust(Some(&empty), &[]).err().unwrap();
        assert!(e.to_string().contains("no usable CA certificate"), "{e}");
        let e = build_trust(None, std::slice::from_ref(&missing))
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

    #[test]
    fn client_is_send_sync_clone() {
        fn check<T: Send + Sync + Clone>() {}
        check::<HttpClient>();
        fn send_future<F: std::future::Future + Send>(_: F) {}
        let client = HttpClient::new(HttpConfig::default()).unwrap();
        send_future(client.send(HttpRequest::new(Method::Get, url("http://127.0.0.1:1/"))));
    }
}
