//! Through a real HTTP proxy, Debian's `tinyproxy` on loopback: the HTTP client against
//! small servers, and the real agent reaching the real `idrelay-hub` with and without proxy
//! authentication.
//!
//! Each test starts its own tinyproxy (a private config in a temp dir, `Listen 127.0.0.1`,
//! with or without `BasicAuth`) and stops it by its PID when done. Behind it:
//! * a rustls server on 127.0.0.1:0 with the testbed's server certificate (CA from
//!   `OPENLDAP_CA_CERT`, `server.pem`/`server.key` beside it), reached with CONNECT, and
//!   optionally requiring a client certificate;
//! * a plain HTTP server on 127.0.0.1:0 with canned answers, reached by forwarding.
//!
//! Needs: the `tinyproxy` binary (Debian package `tinyproxy-bin`; `TINYPROXY` may name
//! another path) and `openssl` (to make a throwaway client CA). A missing one fails the test
//! with a message; nothing passes silently.

mod common;

use std::io::{BufRead, BufReader as StdBufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::pki::ClientPki;
use common::tinyproxy::{Tinyproxy, PASSWORD, USER};
use common::{
    wait_until, write_secret, Agent, Dir, Hub, Running, ScimServer, TestOu, HUB_SETTINGS,
};
use idrelay::net::http::{
    self, ClientCert, HttpClient, HttpConfig, HttpError, HttpRequest, HttpResponse, Method,
    TimeoutKind, Url,
};
use idrelay::net::proxy::{NoProxy, ProxyConfig, ProxyEnv};

fn testbed_ca() -> PathBuf {
    // The testbed CA (server.pem and server.key are expected beside it).
    PathBuf::from(common::env("OPENLDAP_CA_CERT"))
}

// ---------------------------------------------------------------------------------------
// Servers behind the proxy.

/// A TLS server on 127.0.0.1:0 answering `reply` to every request of every connection;
/// with `client_ca`, it requires a client certificate issued by that CA. Counts handshakes.
fn tls_server(reply: &'static str, client_ca: Option<PathBuf>) -> (u16, Arc<AtomicUsize>) {
    use futures_rustls::rustls;
    use smol::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

    let dir = testbed_ca().parent().expect("CA dir").to_path_buf();
    let certs: Vec<_> =
        rustls_pemfile::certs(&mut &std::fs::read(dir.join("server.pem")).unwrap()[..])
            .collect::<Result<_, _>>()
            .unwrap();
    let key = rustls_pemfile::private_key(&mut &std::fs::read(dir.join("server.key")).unwrap()[..])
        .unwrap()
        .expect("a key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pemfile::certs(&mut &std::fs::read(ca).unwrap()[..]) {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let acceptor =
        futures_rustls::TlsAcceptor::from(Arc::new(builder.with_single_cert(certs, key).unwrap()));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let done = handshakes.clone();
    thread::spawn(move || {
        smol::block_on(async {
            let listener = smol::net::TcpListener::try_from(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let done = done.clone();
                smol::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    done.fetch_add(1, Ordering::SeqCst);
                    let mut io = smol::io::BufReader::new(tls);
                    loop {
                        let mut length = 0usize;
                        loop {
                            let mut line = String::new();
                            if io.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if let Some(v) =
                                line.to_ascii_lowercase().strip_prefix("content-length:")
                            {
                                length = v.trim().parse().unwrap_or(0);
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let mut body = vec![0; length];
                        let _ = io.read_exact(&mut body).await;
                        if io.get_mut().write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                        let _ = io.get_mut().flush().await;
                    }
                })
                .detach();
            }
        });
    });
    (port, handshakes)
}

/// A plain HTTP server on 127.0.0.1:0 that answers every request with `reply` and closes;
/// it records each request head.
fn http_server(reply: &'static str) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let mut reader = StdBufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            log.lock().unwrap().push(head);
            let mut w = stream;
            let _ = w.write_all(reply.as_bytes());
        }
    });
    (port, seen)
}

/// A listener that accepts connections and never says a word (a hung proxy).
fn silent_listener() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().take(8) {
            let Ok(mut s) = stream else { return };
            let mut buf = [0u8; 512];
            let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
            let _ = s.read(&mut buf);
            held.push(s);
        }
        thread::sleep(Duration::from_secs(10));
    });
    port
}

// ---------------------------------------------------------------------------------------
// Clients.

fn client(proxy: Option<ProxyConfig>) -> HttpClient {
    HttpClient::new(HttpConfig {
        ca_file: Some(testbed_ca()),
        proxy,
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        ..HttpConfig::default()
    })
    .expect("client")
}

fn get(client: &HttpClient, url: &str) -> Result<HttpResponse, HttpError> {
    let url = Url::parse(url).unwrap();
    smol::block_on(client.send(HttpRequest::new(Method::Get, url)))
}

fn assert_no_password(err: &HttpError) {
    let text = format!("{err} {err:?}");
    assert!(!text.contains(PASSWORD), "password leaked: {text}");
    assert!(!text.contains("wrong-pass"), "password leaked: {text}");
}

const TLS_REPLY: &str = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\ntunnel";
const PLAIN_REPLY: &str =
    "HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nforwarded";

// ---------------------------------------------------------------------------------------
// Tests.

#[test]
fn tinyproxy_connect_tunnel_carries_verified_tls_and_keeps_it_alive() {
    let proxy = Tinyproxy::start(false);
    let (port, handshakes) = tls_server(TLS_REPLY, None);
    let client = client(Some(proxy.config(None)));
    let url = format!("https://127.0.0.1:{port}/v2/Users");
    for _ in 0..3 {
        let resp = get(&client, &url).expect("response through the tunnel");
        assert_eq!((resp.status, resp.body.as_slice()), (200, &b"tunnel"[..]));
    }
    // One tunnel, one handshake, reused from the pool.
    assert_eq!(handshakes.load(Ordering::SeqCst), 1);
    assert_eq!(client.idle_connections(), 1);
    let facts = smol::block_on(client.tls_facts(&Url::parse(&url).unwrap()))
        .unwrap()
        .unwrap();
    assert!(facts.verified);
    assert_eq!(facts.proxy.as_deref(), Some(proxy.url().as_str()));
    let log = proxy.log();
    assert!(
        log.contains(&format!("CONNECT 127.0.0.1:{port} HTTP/1.1")),
        "tinyproxy log: {log}"
    );
}

#[test]
fn tinyproxy_idle_timeout_applies_to_tunnels() {
    let proxy = Tinyproxy::start(false);
    let (port, handshakes) = tls_server(TLS_REPLY, None);
    let client = HttpClient::new(HttpConfig {
        ca_file: Some(testbed_ca()),
        proxy: Some(proxy.config(None)),
        idle_timeout: Duration::from_millis(200),
        ..HttpConfig::default()
    })
    .unwrap();
    let url = format!("https://127.0.0.1:{port}/");
    get(&client, &url).expect("first");
    thread::sleep(Duration::from_millis(400));
    get(&client, &url).expect("second, on a new tunnel");
    assert_eq!(handshakes.load(Ordering::SeqCst), 2);
}

#[test]
fn tinyproxy_with_basic_auth_tunnels_and_forwards() {
    let proxy = Tinyproxy::start(true);
    let (tls_port, _) = tls_server(TLS_REPLY, None);
    let (http_port, seen) = http_server(PLAIN_REPLY);
    let client = client(Some(proxy.config(Some(PASSWORD))));

    let resp = get(&client, &format!("https://127.0.0.1:{tls_port}/v2")).expect("CONNECT");
    assert_eq!(resp.body, b"tunnel");

    let resp = get(
        &client,
        &format!("http://127.0.0.1:{http_port}/v2/Users?count=1"),
    )
    .expect("forwarded");
    assert_eq!(resp.body, b"forwarded");
    let heads = seen.lock().unwrap().clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    // tinyproxy turns the absolute form back into origin form and keeps the credentials.
    assert!(
        heads[0].starts_with("GET /v2/Users?count=1 HTTP/1."),
        "{heads:?}"
    );
    assert!(
        !heads[0]
            .to_ascii_lowercase()
            .contains("proxy-authorization"),
        "{heads:?}"
    );
    let log = proxy.log();
    assert!(
        log.contains(&format!("CONNECT 127.0.0.1:{tls_port}")),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "GET http://127.0.0.1:{http_port}/v2/Users?count=1"
        )),
        "{log}"
    );
}

#[test]
fn tinyproxy_refuses_a_wrong_password_clearly() {
    let proxy = Tinyproxy::start(true);
    let (tls_port, handshakes) = tls_server(TLS_REPLY, None);
    let (http_port, seen) = http_server(PLAIN_REPLY);
    let wrong = client(Some(proxy.config(Some("wrong-pass"))));

    let err = get(&wrong, &format!("https://127.0.0.1:{tls_port}/")).expect_err("CONNECT refused");
    eprintln!("CONNECT with a wrong password: {err}");
    let HttpError::ProxyRefused {
        status,
        proxy: ref named,
        ..
    } = err
    else {
        panic!("{err:?}");
    };
    // tinyproxy answers a refused CONNECT with 401, a refused forward with 407.
    assert!(status == 401 || status == 407, "{err}");
    assert_eq!(named, &proxy.url());
    let text = err.to_string();
    assert!(
        text.contains("rejected the credentials of user \"agent\""),
        "{text}"
    );
    assert!(text.contains(&format!("127.0.0.1:{tls_port}")), "{text}");
    assert!(!err.is_transient() && err.certainly_not_sent());
    assert_no_password(&err);

    // For a forwarded request tinyproxy 1.11 answers wrong credentials with 401 (not 407),
    // which a client cannot tell from the target's own 401: it stays a response.
    let resp = get(&wrong, &format!("http://127.0.0.1:{http_port}/")).expect("a response");
    assert_eq!(resp.status, 401);

    let anonymous = client(Some(proxy.config(None)));
    let err = get(&anonymous, &format!("https://127.0.0.1:{tls_port}/")).expect_err("no creds");
    eprintln!("CONNECT without credentials: {err}");
    assert!(
        matches!(err, HttpError::ProxyRefused { status: 407, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("no proxy credentials are configured"),
        "{err}"
    );
    let err = get(&anonymous, &format!("http://127.0.0.1:{http_port}/")).expect_err("no creds");
    eprintln!("forward without credentials: {err}");
    assert!(
        matches!(err, HttpError::ProxyRefused { status: 407, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&proxy.url()), "{err}");
    assert!(!err.is_transient() && err.certainly_not_sent());
    assert_eq!(handshakes.load(Ordering::SeqCst), 0);
    assert!(seen.lock().unwrap().is_empty());
}

#[test]
fn tinyproxy_credentials_from_the_environment_and_no_proxy() {
    let proxy = Tinyproxy::start(true);
    let (port, handshakes) = tls_server(TLS_REPLY, None);
    let url = format!("https://127.0.0.1:{port}/");
    let env_client = |vars: Vec<(&'static str, String)>| {
        let env = ProxyEnv::from_lookup(move |n| {
            vars.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone())
        });
        HttpClient::new(HttpConfig {
            ca_file: Some(testbed_ca()),
            proxy_env: Some(env),
            ..HttpConfig::default()
        })
        .unwrap()
    };
    let with_creds = format!("http://{USER}:{PASSWORD}@127.0.0.1:{}", proxy.port);
    let via = env_client(vec![("HTTPS_PROXY", with_creds.clone())]);
    get(&via, &url).expect("through the proxy named by HTTPS_PROXY");
    assert!(proxy.log().contains(&format!("CONNECT 127.0.0.1:{port}")));

    // NO_PROXY sends it direct: the proxy's log does not grow.
    let before = proxy.log().matches("CONNECT 127.0.0.1").count();
    let direct = env_client(vec![
        ("HTTPS_PROXY", with_creds),
        ("NO_PROXY", "example.test, 127.0.0.1".into()),
    ]);
    get(&direct, &url).expect("direct");
    assert_eq!(proxy.log().matches("CONNECT 127.0.0.1").count(), before);
    assert_eq!(handshakes.load(Ordering::SeqCst), 2);
}

#[test]
fn tinyproxy_carries_pins_and_client_certificates_end_to_end() {
    let pki = ClientPki::new();
    let proxy = Tinyproxy::start(true);
    let (port, _) = tls_server(TLS_REPLY, Some(pki.ca()));
    let url = format!("https://127.0.0.1:{port}/v2");
    let server_pem = testbed_ca().parent().unwrap().join("server.pem");
    let der = rustls_pemfile::certs(&mut &std::fs::read(server_pem).unwrap()[..])
        .next()
        .unwrap()
        .unwrap();
    let pin = http::spki_sha256(der.as_ref()).unwrap();
    let make = |pins: Vec<[u8; 32]>, cert: Option<ClientCert>| {
        HttpClient::new(HttpConfig {
            ca_file: Some(testbed_ca()),
            proxy: Some(proxy.config(Some(PASSWORD))),
            pin_sha256: pins,
            client_cert: cert,
            ..HttpConfig::default()
        })
        .unwrap()
    };

    let ok = make(vec![pin], Some(pki.cert()));
    assert_eq!(
        get(&ok, &url).expect("pinned mutual TLS via proxy").body,
        b"tunnel"
    );

    let mut wrong_pin = pin;
    wrong_pin[0] ^= 1;
    let err = get(&make(vec![wrong_pin], Some(pki.cert())), &url).expect_err("pin mismatch");
    eprintln!("pin mismatch via proxy: {err}");
    assert!(matches!(err, HttpError::PinMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains(&http::pin_string(&pin)), "{err}");
    assert!(err.to_string().contains(&proxy.url()), "{err}");

    let err = get(&make(vec![pin], None), &url).expect_err("no client certificate");
    eprintln!("no client certificate via proxy: {err}");
    assert!(matches!(err, HttpError::Tls { .. }), "{err:?}");
    assert_no_password(&err);
}

/// A one-shot "proxy" that answers the first request with `reply` and records it.
fn canned_proxy(reply: &'static str) -> (u16, Arc<Mutex<Vec<String>>>) {
    http_server(reply)
}

#[test]
fn proxy_407_to_connect_names_the_proxy_without_credentials() {
    let (port, seen) = canned_proxy(
        "HTTP/1.1 407 Proxy Authentication Required\r\n\
         Proxy-Authenticate: Basic realm=\"corp\"\r\nContent-Length: 0\r\n\r\n",
    );
    // Credentials given in the URL, as in HTTPS_PROXY=http://user:pass@host:port.
    let proxy = ProxyConfig::parse(
        &format!("http://{USER}:wrong-pass@127.0.0.1:{port}"),
        "proxy",
    )
    .unwrap();
    let err = get(&client(Some(proxy)), "https://scim.example.test/v2").expect_err("407");
    eprintln!("407 to CONNECT: {err}");
    assert!(
        matches!(err, HttpError::ProxyRefused { status: 407, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&format!("proxy http://127.0.0.1:{port} refused")),
        "{text}"
    );
    assert!(
        text.contains("scim.example.test:443") && text.contains("407"),
        "{text}"
    );
    assert!(!text.contains("agent:"), "{text}");
    assert_no_password(&err);
    let heads = seen.lock().unwrap().clone();
    assert!(
        heads[0].starts_with("CONNECT scim.example.test:443 HTTP/1.1\r\n"),
        "{heads:?}"
    );
    // agent:wrong-pass
    assert!(heads[0].contains("Proxy-Authorization: Basic YWdlbnQ6d3JvbmctcGFzcw==\r\n"));
}

#[test]
fn silent_proxy_hits_the_connect_timeout() {
    let port = silent_listener();
    let proxy = ProxyConfig::parse(&format!("http://127.0.0.1:{port}"), "proxy").unwrap();
    let bound = Duration::from_millis(400);
    let client = HttpClient::new(HttpConfig {
        ca_file: Some(testbed_ca()),
        proxy: Some(proxy),
        connect_timeout: bound,
        ..HttpConfig::default()
    })
    .unwrap();
    let start = Instant::now();
    let err = get(&client, "https://127.0.0.1:9/").expect_err("hung proxy");
    let elapsed = start.elapsed();
    eprintln!("hung proxy: {err} after {elapsed:?}");
    assert!(
        matches!(
            err,
            HttpError::Timeout {
                what: TimeoutKind::Connect,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains(&format!("via proxy http://127.0.0.1:{port}")),
        "{err}"
    );
    assert!(elapsed >= bound && elapsed < bound * 3, "{elapsed:?}");
}

#[test]
fn unreachable_proxy_is_a_connect_error_naming_it_and_no_proxy_bypasses_it() {
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (port, _) = tls_server(TLS_REPLY, None);
    let url = format!("https://127.0.0.1:{port}/");
    let proxy = ProxyConfig::parse(&format!("http://127.0.0.1:{dead}"), "proxy").unwrap();
    let err = get(&client(Some(proxy.clone())), &url).expect_err("proxy down");
    assert!(matches!(err, HttpError::Connect { .. }), "{err:?}");
    assert!(err.is_transient() && err.certainly_not_sent());
    assert!(
        err.to_string()
            .contains(&format!("via proxy http://127.0.0.1:{dead}")),
        "{err}"
    );

    let bypass = proxy.with_no_proxy(NoProxy::parse(&format!("127.0.0.1:{port}")));
    get(&client(Some(bypass)), &url).expect("direct thanks to no_proxy");
}

// ---------------------------------------------------------------------------------------
// The agent and the hub through the proxy.

/// An agent on a fresh OU with one user, relaying to `hub` through `proxy` (`password`:
/// the proxy password it is given, if any); running.
fn agent_through(
    dir: &Dir,
    ou: &str,
    scim: &ScimServer,
    hub: &Hub,
    proxy: &Tinyproxy,
    password: Option<&str>,
) -> (Agent, Running) {
    let mut extra = format!("proxy = \"{}\"\n", proxy.url());
    let agent = Agent::with_relay(dir, &[ou], scim, hub, ("a1", "agent-token-a1"), "");
    if let Some(pw) = password {
        let file = agent.tmp.path().join("proxy.secret");
        write_secret(&file, pw);
        extra.push_str(&format!(
            "proxy_user = \"{USER}\"\nproxy_password_file = \"{}\"\n",
            file.display()
        ));
    }
    agent.append_config(&extra);
    let run = Running(agent.spawn(&["run"]));
    (agent, run)
}

#[test]
fn the_agent_reaches_the_hub_through_tinyproxy_with_and_without_auth() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "relayproxy");
    let o = ou.dn.clone();
    dir.modify(&format!(
        "dn: uid=px0,{o}\nobjectClass: inetOrgPerson\nuid: px0\ncn: P\nsn: X\n\n"
    ));
    let scim = ScimServer::start();
    for auth in [false, true] {
        let proxy = Tinyproxy::start(auth);
        let hub = Hub::start(
            "operator-token",
            HUB_SETTINGS,
            &[("a1", "branch", "agent-token-a1")],
        );
        let password = auth.then_some(PASSWORD);
        let (agent, _run) = agent_through(&dir, &o, &scim, &hub, &proxy, password);
        assert!(
            wait_until(60, || hub.role("a1").as_deref() == Some("active")),
            "auth {auth}: the agent never became active through the proxy\nagent: {}\nhub: {}\nproxy: {}",
            agent.log(),
            hub.log(),
            proxy.log()
        );
        // The cloud reads the directory through hub -> proxy -> agent -> LDAP.
        let (s, v) = hub.op("GET", "/agents/a1/scim/v2/Users", None);
        assert_eq!(s, 200, "{v}\n{}", agent.log());
        assert_eq!(v["Resources"][0]["userName"], "px0", "{v}");
        // Every agent request went through the proxy (absolute form to the plain-HTTP hub).
        let log = proxy.log();
        let via = format!("http://127.0.0.1:{}/", hub.port);
        assert!(
            log.lines().filter(|l| l.contains(&via)).count() >= 2,
            "auth {auth}: tinyproxy saw no agent requests to {via}: {log}"
        );
        assert!(!agent.log().contains(PASSWORD), "the proxy password leaked");
    }
}

#[test]
fn a_wrong_proxy_password_keeps_the_agent_off_the_hub_and_says_why() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "relayproxybad");
    let scim = ScimServer::start();
    let proxy = Tinyproxy::start(true);
    let hub = Hub::start(
        "operator-token",
        HUB_SETTINGS,
        &[("a1", "branch", "agent-token-a1")],
    );
    let wrong = "wrong-pass_1";
    let (agent, _run) = agent_through(&dir, &ou.dn, &scim, &hub, &proxy, Some(wrong));
    // To a plain-HTTP hub the proxy forwards: tinyproxy answers 407 and resets the
    // connection before the agent can read it (the CONNECT case, where the 407 is read and
    // named, is `tinyproxy_refuses_a_wrong_password_clearly`). Either way the error names
    // the proxy, the agent keeps retrying with backoff, and nothing reaches the hub.
    let via = format!("via proxy {}", proxy.url());
    assert!(
        wait_until(30, || agent.log().contains(&via)),
        "no error naming the proxy in the agent's log: {}",
        agent.log()
    );
    thread::sleep(Duration::from_secs(3));
    assert_eq!(
        hub.role("a1"),
        None,
        "the hub must never have seen the agent"
    );
    let log = agent.log();
    assert!(!log.contains(wrong), "the wrong password leaked: {log}");
}
