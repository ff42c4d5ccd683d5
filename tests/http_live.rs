//! The HTTP transport and the SCIM client against real servers.
//!
//! * `scim_*`: the testbed's scim2-server (`SCIM_BASE_URL`, `SCIM_TOKEN`).
//! * `loopback_*`: canned HTTP bytes from a std `TcpListener` on 127.0.0.1:0 started by the
//!   test itself (connection close, HTTP/1.0 without length, silence, 503 + Retry-After,
//!   keep-alive reuse, limits).
//! * `https_*`: a rustls server on 127.0.0.1:0 started by the test with the testbed's server
//!   certificate; the CA comes from `OPENLDAP_CA_CERT` (`server.pem`/`server.key` beside it).
//!
//! Users created on the SCIM server get a random prefix, so parallel runs do not collide,
//! and are deleted at the end.

mod common;

use std::io::{BufRead, BufReader as StdBufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use idrelay::net::http::{
    HttpClient, HttpConfig, HttpError, HttpRequest, Method, TimeoutKind, Url,
};
use idrelay::scim::client::{ScimClient, ScimConfig, ScimError, WriteCounts};
use idrelay::scim::resource::{GROUP_SCHEMA, USER_SCHEMA};
use idrelay::scim::ResourceKind;
use idrelay::secret::Secret;
use serde_json::json;

fn scim_env() -> (Url, String) {
    let base = common::env("SCIM_BASE_URL");
    let token = common::env("SCIM_TOKEN");
    (Url::parse(&base).expect("SCIM_BASE_URL is a URL"), token)
}

fn http() -> HttpClient {
    HttpClient::new(HttpConfig {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(20),
        ..HttpConfig::default()
    })
    .expect("client")
}

fn scim(token: &str) -> ScimClient {
    let (base, _) = scim_env();
    let mut cfg = ScimConfig::new(base, Secret::new(token));
    cfg.backoff_base = Duration::from_millis(50);
    ScimClient::new(http(), cfg)
}

fn unique(what: &str) -> String {
    format!("httplive-{:08x}-{what}", fastrand::u32(..))
}

fn user(user_name: &str, external_id: &str) -> serde_json::Value {
    json!({
        "schemas": [USER_SCHEMA],
        "userName": user_name,
        "externalId": external_id,
        "name": {"givenName": "Ada", "familyName": "Lovelace"},
        "displayName": "Ada Lovelace",
        "active": true
    })
}

fn id_of(resource: &serde_json::Value) -> String {
    resource["id"].as_str().expect("id").to_string()
}

#[test]
fn scim_service_provider_config() {
    let (_, token) = scim_env();
    let spc = smol::block_on(scim(&token).service_provider_config()).expect("spc");
    assert!(spc.patch && spc.filter && spc.etag, "{spc:?}");
    let bulk = spc.bulk.expect("bulk supported");
    assert_eq!(
        (bulk.max_operations, bulk.max_payload_size),
        (1000, 1_048_576)
    );
    assert_eq!(spc.filter_max_results, Some(1000));
}

#[test]
fn scim_user_round_trip() {
    let (_, token) = scim_env();
    let client = scim(&token);
    smol::block_on(async {
        let name = unique("ada@example.test");
        // Quotes, a backslash and URL-special characters must survive filter escaping.
        let external_id = format!("{name} \"q\" \\ +/=&");
        let created = client
            .create(ResourceKind::User, &user(&name, &external_id))
            .await
            .expect("create");
        let id = id_of(&created);

        let got = client.get(ResourceKind::User, &id).await.expect("get");
        assert_eq!(got.expect("exists")["userName"], name.as_str());

        let found = client
            .find_by_external_id(ResourceKind::User, &external_id)
            .await
            .expect("find by externalId")
            .expect("found");
        assert_eq!(id_of(&found), id);
        let missing = client
            .find_by_external_id(ResourceKind::User, &format!("{external_id}-nope"))
            .await
            .expect("find");
        assert!(missing.is_none());
        let soft = client
            .find_by_user_name(&name.to_uppercase())
            .await
            .expect("find by userName")
            .expect("found case-insensitively");
        assert_eq!(id_of(&soft), id);

        let mut changed = user(&name, &external_id);
        changed["displayName"] = json!("Countess of Lovelace");
        let replaced = client
            .replace(ResourceKind::User, &id, &changed)
            .await
            .expect("replace");
        assert_eq!(replaced["displayName"], "Countess of Lovelace");

        let op = json!({"op": "replace", "path": "title", "value": "Analyst"});
        client
            .patch(ResourceKind::User, &id, vec![op])
            .await
            .expect("patch");
        let patched = client.get(ResourceKind::User, &id).await.unwrap().unwrap();
        assert_eq!(patched["title"], "Analyst");

        client
            .delete(ResourceKind::User, &id)
            .await
            .expect("delete");
        assert!(client.get(ResourceKind::User, &id).await.unwrap().is_none());
        // Deleting again is a 404, which counts as done.
        client
            .delete(ResourceKind::User, &id)
            .await
            .expect("delete twice");

        assert_eq!(
            client.write_counts(),
            WriteCounts {
                creates: 1,
                replaces: 1,
                patches: 1,
                deletes: 2,
                bulk: 0
            }
        );
    });
}

#[test]
fn scim_group_round_trip() {
    let (_, token) = scim_env();
    let client = scim(&token);
    smol::block_on(async {
        let name = unique("member@example.test");
        let member = client
            .create(ResourceKind::User, &user(&name, &unique("member-ext")))
            .await
            .expect("create user");
        let member_id = id_of(&member);
        let external_id = unique("group-ext");
        let group = json!({
            "schemas": [GROUP_SCHEMA],
            "displayName": unique("Staff"),
            "externalId": external_id,
        });
        let group_id = id_of(
            &client
                .create(ResourceKind::Group, &group)
                .await
                .expect("create group"),
        );
        let add = json!({"op": "add", "path": "members", "value": [{"value": member_id}]});
        client
            .patch(ResourceKind::Group, &group_id, vec![add])
            .await
            .expect("add member");
        let found = client
            .find_by_external_id(ResourceKind::Group, &external_id)
            .await
            .expect("find group")
            .expect("found");
        assert_eq!(id_of(&found), group_id);
        let got = client
            .get(ResourceKind::Group, &group_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got["members"][0]["value"], member_id.as_str());
        client
            .delete(ResourceKind::Group, &group_id)
            .await
            .expect("delete group");
        client
            .delete(ResourceKind::User, &member_id)
            .await
            .expect("delete user");
    });
}

#[test]
fn scim_wrong_token_is_401_without_the_token() {
    let secret = "wrong-token-7c1d9e";
    let err = smol::block_on(scim(secret).get(ResourceKind::User, "anything"))
        .expect_err("must be refused");
    assert_eq!(err.status(), Some(401), "{err}");
    assert!(!err.is_transient() && !err.is_ambiguous_write());
    let text = format!("{err} {err:?}");
    assert!(!text.contains(secret), "token leaked: {text}");
    assert!(
        text.contains("GET") && text.contains("/Users/anything") && text.contains("401"),
        "{text}"
    );
}

#[test]
fn scim_duplicate_user_name_is_409() {
    let (_, token) = scim_env();
    let client = scim(&token);
    smol::block_on(async {
        let name = unique("dup@example.test");
        let first = client
            .create(ResourceKind::User, &user(&name, &unique("dup-1")))
            .await
            .expect("create");
        let err = client
            .create(ResourceKind::User, &user(&name, &unique("dup-2")))
            .await
            .expect_err("duplicate userName");
        assert_eq!(err.status(), Some(409), "{err}");
        assert_eq!(err.scim_type(), Some("uniqueness"), "{err}");
        assert!(!err.is_transient() && !err.is_ambiguous_write());
        assert!(err.to_string().contains("POST"), "{err}");
        // A 409 is not retried: two POSTs in all.
        assert_eq!(client.write_counts().creates, 2);
        client
            .delete(ResourceKind::User, &id_of(&first))
            .await
            .expect("cleanup");
    });
}

// ---------------------------------------------------------------------------------------
// Loopback servers with canned bytes.

/// What the canned server does after reading one request.
#[derive(Clone)]
enum Reply {
    /// Write these bytes.
    Bytes(Vec<u8>),
    /// Never answer (hold the connection open for a while).
    Silence,
    /// Close the connection without answering.
    Hangup,
}

fn bytes(s: &str) -> Reply {
    Reply::Bytes(s.as_bytes().to_vec())
}

struct Canned {
    port: u16,
    accepted: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Canned {
    fn url(&self, path: &str) -> Url {
        Url::parse(&format!("http://127.0.0.1:{}{path}", self.port)).unwrap()
    }
}

/// Reads one request (head and Content-Length body) as text; `None` at EOF.
fn read_request<R: BufRead>(r: &mut R) -> Option<String> {
    let mut text = String::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        }
        text.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body).ok()?;
    text.push_str(&String::from_utf8_lossy(&body));
    Some(text)
}

/// Serves one accepted connection per element of `connections`, answering its requests
/// with the replies in order, then closing it.
fn canned(connections: Vec<Vec<Reply>>) -> Canned {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let (acc, reqs) = (accepted.clone(), requests.clone());
    thread::spawn(move || {
        for replies in connections {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            acc.fetch_add(1, Ordering::SeqCst);
            let mut reader = StdBufReader::new(stream.try_clone().unwrap());
            let mut writer = stream;
            for reply in replies {
                let Some(request) = read_request(&mut reader) else {
                    break;
                };
                reqs.lock().unwrap().push(request);
                match reply {
                    Reply::Bytes(b) => {
                        if writer.write_all(&b).is_err() {
                            break;
                        }
                    }
                    Reply::Silence => thread::sleep(Duration::from_secs(5)),
                    Reply::Hangup => break,
                }
            }
        }
    });
    Canned {
        port,
        accepted,
        requests,
    }
}

fn get(client: &HttpClient, url: Url) -> Result<idrelay::net::http::HttpResponse, HttpError> {
    smol::block_on(client.send(HttpRequest::new(Method::Get, url)))
}

#[test]
fn loopback_connection_close_is_honoured() {
    let reply = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
    let server = canned(vec![vec![bytes(reply)], vec![bytes(reply)]]);
    let client = http();
    for _ in 0..2 {
        let resp = get(&client, server.url("/a")).expect("response");
        assert_eq!((resp.status, resp.body.as_slice()), (200, &b"ok"[..]));
        assert_eq!(client.idle_connections(), 0);
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn loopback_http10_without_length_is_read_to_eof() {
    let reply =
        "HTTP/1.0 200 OK\r\nContent-Type: application/scim+json\r\n\r\n{\"totalResults\":0}";
    let server = canned(vec![vec![bytes(reply)]]);
    let client = http();
    let resp = get(&client, server.url("/v2/Users")).expect("response");
    assert_eq!(resp.body, b"{\"totalResults\":0}");
    assert_eq!(resp.header("content-type"), Some("application/scim+json"));
    assert_eq!(client.idle_connections(), 0);
}

#[test]
fn loopback_silent_server_times_out() {
    let server = canned(vec![vec![Reply::Silence]]);
    let timeout = Duration::from_millis(400);
    let client = HttpClient::new(HttpConfig {
        request_timeout: timeout,
        ..HttpConfig::default()
    })
    .unwrap();
    let start = Instant::now();
    let err = get(&client, server.url("/")).expect_err("no answer");
    let elapsed = start.elapsed();
    assert!(
        matches!(
            err,
            HttpError::Timeout {
                what: TimeoutKind::Response,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_transient() && !err.certainly_not_sent());
    eprintln!("request timeout of {timeout:?} fired after {elapsed:?}");
    assert!(
        elapsed >= timeout && elapsed < timeout * 2,
        "took {elapsed:?}"
    );
    assert_eq!(client.idle_connections(), 0);
}

#[test]
fn loopback_503_retry_after_then_201() {
    let created =
        r#"{"schemas":["urn:ietf:params:scim:schemas:core:2.0:User"],"id":"u-1","userName":"a"}"#;
    let busy = "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let ok = format!(
        "HTTP/1.1 201 Created\r\nContent-Type: application/scim+json\r\nContent-Length: {}\r\n\r\n{created}",
        created.len()
    );
    let server = canned(vec![vec![bytes(busy)], vec![bytes(&ok)]]);
    let mut cfg = ScimConfig::new(server.url("/v2"), Secret::new("loopback-token"));
    cfg.backoff_base = Duration::from_secs(10); // must not be used: Retry-After wins
    let client = ScimClient::new(http(), cfg);
    let start = Instant::now();
    let resource = smol::block_on(client.create(ResourceKind::User, &user("a", "x")))
        .expect("created after one retry");
    let elapsed = start.elapsed();
    assert_eq!(resource["id"], "u-1");
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    let requests = server.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 2);
    for r in &requests {
        assert!(r.starts_with("POST /v2/Users HTTP/1.1\r\n"), "{r}");
        assert!(
            r.contains("Authorization: Bearer loopback-token\r\n"),
            "{r}"
        );
        assert!(r.contains("Content-Type: application/scim+json\r\n"), "{r}");
        assert!(r.contains("Accept: application/scim+json\r\n"), "{r}");
    }
    assert_eq!(client.write_counts().creates, 2);
}

#[test]
fn loopback_keep_alive_reuses_one_connection() {
    let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\none\r\n0\r\n\r\n";
    let plain = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo";
    let server = canned(vec![vec![bytes(chunked), bytes(plain)]]);
    let client = http();
    let first = get(&client, server.url("/1")).expect("first");
    assert_eq!(first.body, b"one");
    assert_eq!(client.idle_connections(), 1);
    let second = get(&client, server.url("/2")).expect("second");
    assert_eq!(second.body, b"two");
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    let requests = server.requests.lock().unwrap().clone();
    assert!(requests[0].starts_with("GET /1 ") && requests[1].starts_with("GET /2 "));
}

#[test]
fn loopback_closed_idle_connection_is_not_reused() {
    // The server allows keep-alive but closes right after answering.
    let reply = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let server = canned(vec![vec![bytes(reply)], vec![bytes(reply)]]);
    let client = http();
    get(&client, server.url("/1")).expect("first");
    thread::sleep(Duration::from_millis(100));
    let second = get(&client, server.url("/2")).expect("second on a new connection");
    assert_eq!(second.body, b"ok");
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn loopback_stale_connection_resends_get_but_not_post() {
    // Keep-alive is offered, but the server hangs up on the next request without a word:
    // what a server does when its idle timeout races the client's next request.
    let ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let server = canned(vec![
        vec![bytes(ok), Reply::Hangup],
        vec![bytes(ok)],
        vec![bytes(ok), Reply::Hangup],
    ]);
    let client = http();
    get(&client, server.url("/1")).expect("first");
    let resent = get(&client, server.url("/2")).expect("GET resent on a new connection");
    assert_eq!(resent.body, b"ok");
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);

    // Connection 2 is closed by the server after its reply; let the FIN arrive so the
    // pool's liveness check drops it and "/3" opens connection 3.
    thread::sleep(Duration::from_millis(100));
    get(&client, server.url("/3")).expect("third");
    let post = HttpRequest::new(Method::Post, server.url("/4")).body(b"{}".to_vec());
    let err = smol::block_on(client.send(post)).expect_err("POST is not resent");
    assert!(matches!(err, HttpError::Io { .. }), "{err}");
    assert!(err.is_transient() && !err.certainly_not_sent());
    assert_eq!(server.accepted.load(Ordering::SeqCst), 3);
}

#[test]
fn loopback_body_limit() {
    let reply = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n";
    let server = canned(vec![vec![bytes(reply)]]);
    let client = HttpClient::new(HttpConfig {
        max_body_bytes: 10,
        ..HttpConfig::default()
    })
    .unwrap();
    let err = get(&client, server.url("/")).expect_err("too large");
    assert!(
        matches!(err, HttpError::BodyTooLarge { limit: 10, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("10 bytes"), "{err}");
}

#[test]
fn loopback_refused_connection_is_transient_and_unsent() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
    let err = get(&http(), url).expect_err("refused");
    assert!(matches!(err, HttpError::Connect { .. }), "{err}");
    assert!(err.is_transient() && err.certainly_not_sent());
}

#[test]
fn loopback_scim_error_detail_is_scrubbed_of_the_token() {
    let token = "echoed-token-55aa";
    let body = format!(
        r#"{{"schemas":["urn:ietf:params:scim:api:messages:2.0:Error"],"status":"400","scimType":"invalidValue","detail":"bad header Bearer {token}"}}"#
    );
    let reply = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let server = canned(vec![vec![bytes(&reply)]]);
    let client = ScimClient::new(
        http(),
        ScimConfig::new(server.url("/v2"), Secret::new(token)),
    );
    let err = smol::block_on(client.get(ResourceKind::User, "x")).expect_err("400");
    let text = format!("{err} {err:?}");
    assert!(!text.contains(token), "{text}");
    assert!(
        text.contains("invalidValue") && text.contains("<redacted>"),
        "{text}"
    );
    assert!(matches!(err, ScimError::Http { status: 400, .. }));
}

// ---------------------------------------------------------------------------------------
// HTTPS with the testbed CA.

fn testbed_ca() -> PathBuf {
    // The testbed CA (server.pem and server.key are expected beside it).
    PathBuf::from(common::env("OPENLDAP_CA_CERT"))
}

/// A TLS server on 127.0.0.1:0 answering `replies` on each of `connections` connections.
fn tls_server(connections: usize, replies: Vec<String>) -> (u16, Arc<AtomicUsize>) {
    tls_server_with(connections, replies, None)
}

/// [`tls_server`] that, with `client_ca`, requires a client certificate issued by that CA.
fn tls_server_with(
    connections: usize,
    replies: Vec<String>,
    client_ca: Option<PathBuf>,
) -> (u16, Arc<AtomicUsize>) {
    let dir = testbed_ca().parent().expect("CA dir").to_path_buf();
    tls_server_cert(
        connections,
        replies,
        client_ca,
        (&dir.join("server.pem"), &dir.join("server.key")),
    )
}

/// [`tls_server_with`] presenting the certificate chain and key of `identity`.
fn tls_server_cert(
    connections: usize,
    replies: Vec<String>,
    client_ca: Option<PathBuf>,
    identity: (&std::path::Path, &std::path::Path),
) -> (u16, Arc<AtomicUsize>) {
    use futures_rustls::rustls;
    use smol::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

    let certs: Vec<_> = rustls_pemfile::certs(&mut &std::fs::read(identity.0).unwrap()[..])
        .collect::<Result<_, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut &std::fs::read(identity.1).unwrap()[..])
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
    let config = builder.with_single_cert(certs, key).unwrap();
    let acceptor = futures_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let done = handshakes.clone();
    thread::spawn(move || {
        smol::block_on(async {
            let listener = smol::net::TcpListener::try_from(listener).unwrap();
            for _ in 0..connections {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let Ok(tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                done.fetch_add(1, Ordering::SeqCst);
                let mut io = smol::io::BufReader::new(tls);
                'replies: for reply in &replies {
                    let mut length = 0usize;
                    loop {
                        let mut line = String::new();
                        if io.read_line(&mut line).await.unwrap_or(0) == 0 {
                            break 'replies;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; length];
                    let _ = io.read_exact(&mut body).await;
                    let _ = io.get_mut().write_all(reply.as_bytes()).await;
                    let _ = io.get_mut().flush().await;
                }
                let _ = io.get_mut().close().await;
            }
        });
    });
    (port, handshakes)
}

#[test]
fn https_with_testbed_ca_verifies_and_reuses() {
    let reply = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecure".to_string();
    let (port, handshakes) = tls_server(2, vec![reply.clone(), reply]);
    let ca = testbed_ca();
    let client = HttpClient::new(HttpConfig {
        ca_file: Some(ca.clone()),
        ..HttpConfig::default()
    })
    .expect("client with CA file");
    let url = Url::parse(&format!("https://127.0.0.1:{port}/v2/Users")).unwrap();
    let facts = smol::block_on(client.tls_facts(&url))
        .expect("handshake")
        .expect("https");
    assert!(facts.verified);
    assert!(facts.protocol.starts_with("TLS 1."), "{facts:?}");
    assert!(
        facts.trust_anchors.contains(&ca.display().to_string()),
        "{facts:?}"
    );
    assert!(facts.peer_certificates >= 1);
    for _ in 0..2 {
        let resp = get(&client, url.clone()).expect("https response");
        assert_eq!((resp.status, resp.body.as_slice()), (200, &b"secure"[..]));
    }
    // One handshake for tls_facts, one for both requests (kept alive).
    assert_eq!(handshakes.load(Ordering::SeqCst), 2);
    let plain = Url::parse("http://127.0.0.1:1/").unwrap();
    assert_eq!(smol::block_on(client.tls_facts(&plain)).unwrap(), None);
}

#[test]
fn https_untrusted_certificate_is_a_tls_error() {
    let (port, _) = tls_server(1, vec![]);
    // The system store does not know the testbed CA.
    let client = http();
    let url = Url::parse(&format!("https://127.0.0.1:{port}/")).unwrap();
    let err = get(&client, url).expect_err("untrusted");
    assert!(matches!(err, HttpError::Tls { .. }), "{err}");
    assert!(!err.is_transient() && err.certainly_not_sent());
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

/// A server certificate signed by the testbed CA with `san` and validity `dates`
/// (`openssl ca` can backdate; `openssl x509` on Debian 12 cannot). Returns (cert, key).
fn testbed_signed(tag: &str, san: &str, dates: Option<(&str, &str)>) -> (PathBuf, PathBuf) {
    let ca = testbed_ca();
    let ca_dir = ca.parent().unwrap().to_path_buf();
    let dir = std::env::temp_dir().join(format!("idrelay-tls-{tag}-{}", unique("d")));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("ca.cnf"),
        "[ca]\ndefault_ca = t\n[t]\ndir = .\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\ndefault_md = sha256\npolicy = any\ncopy_extensions = copy\nunique_subject = no\ndefault_days = 30\n[any]\ncommonName = supplied\n",
    )
    .unwrap();
    std::fs::write(dir.join("index.txt"), "").unwrap();
    std::fs::write(dir.join("serial"), "01\n").unwrap();
    openssl(
        &dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-subj",
            &format!("/CN={tag}"),
            "-addext",
            &format!("subjectAltName={san}"),
            "-out",
            "req.csr",
        ],
    );
    let ca_pem = ca.display().to_string();
    let ca_key = ca_dir.join("ca.key").display().to_string();
    let mut args = vec![
        "ca", "-batch", "-config", "ca.cnf", "-cert", &ca_pem, "-keyfile", &ca_key, "-in",
        "req.csr", "-out", "cert.pem", "-notext",
    ];
    if let Some((from, to)) = dates {
        args.extend(["-startdate", from, "-enddate", to]);
    }
    openssl(&dir, &args);
    (dir.join("cert.pem"), dir.join("key.pem"))
}

fn trusting_client() -> HttpClient {
    HttpClient::new(HttpConfig {
        ca_file: Some(testbed_ca()),
        ..HttpConfig::default()
    })
    .unwrap()
}

#[test]
fn https_certificate_for_another_name_is_refused_clearly() {
    let (cert, key) = testbed_signed("wrongname", "DNS:other.example", None);
    let (port, handshakes) = tls_server_cert(1, vec![], None, (&cert, &key));
    let _ = std::fs::remove_dir_all(cert.parent().unwrap()); // loaded already
    let url = Url::parse(&format!("https://127.0.0.1:{port}/")).unwrap();
    let err = get(&trusting_client(), url).expect_err("name mismatch");
    assert!(matches!(err, HttpError::Tls { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("name") || text.contains("NotValidForName"),
        "the error says the certificate is for another name: {text}"
    );
    assert_eq!(handshakes.load(Ordering::SeqCst), 0);
}

#[test]
fn https_expired_certificate_is_refused_clearly() {
    let (cert, key) = testbed_signed(
        "expired",
        "IP:127.0.0.1",
        Some(("20200101000000Z", "20200201000000Z")),
    );
    let (port, _) = tls_server_cert(1, vec![], None, (&cert, &key));
    let _ = std::fs::remove_dir_all(cert.parent().unwrap()); // loaded already
    let url = Url::parse(&format!("https://127.0.0.1:{port}/")).unwrap();
    let err = get(&trusting_client(), url).expect_err("expired");
    assert!(matches!(err, HttpError::Tls { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.to_ascii_lowercase().contains("expired"),
        "the error says the certificate expired: {text}"
    );
}

// ---------------------------------------------------------------------------------------
// SPKI pins and client certificates.

/// The pin of a PEM certificate as openssl computes it (the reference for our DER walk).
fn openssl_pin(cert: &std::path::Path) -> String {
    let dir = std::env::temp_dir();
    let pubkey = openssl(
        &dir,
        &["x509", "-in", cert.to_str().unwrap(), "-pubkey", "-noout"],
    );
    let tmp = dir.join(format!(
        "idrelay-pin-{}-{:08x}.pem",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::write(&tmp, pubkey).unwrap();
    let der = openssl(
        &dir,
        &[
            "pkey",
            "-pubin",
            "-in",
            tmp.to_str().unwrap(),
            "-outform",
            "DER",
        ],
    );
    std::fs::remove_file(&tmp).unwrap();
    let tmp_der = tmp.with_extension("der");
    std::fs::write(&tmp_der, der).unwrap();
    let digest = openssl(
        &dir,
        &["dgst", "-sha256", "-binary", tmp_der.to_str().unwrap()],
    );
    std::fs::remove_file(&tmp_der).unwrap();
    http::pin_string(&digest.try_into().expect("32 bytes"))
}

use common::pki::{openssl, ClientPki};
use idrelay::net::http;

#[test]
fn https_pin_is_computed_like_openssl() {
    let server_pem = testbed_ca().parent().unwrap().join("server.pem");
    let der = rustls_pemfile::certs(&mut &std::fs::read(&server_pem).unwrap()[..])
        .next()
        .unwrap()
        .unwrap();
    let ours = http::pin_string(&http::spki_sha256(der.as_ref()).unwrap());
    assert_eq!(ours, openssl_pin(&server_pem));
    let ca = testbed_ca();
    let der = rustls_pemfile::certs(&mut &std::fs::read(&ca).unwrap()[..])
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(
        http::pin_string(&http::spki_sha256(der.as_ref()).unwrap()),
        openssl_pin(&ca)
    );
}

fn pinned_client(pins: Vec<[u8; 32]>, ca: Option<PathBuf>) -> HttpClient {
    HttpClient::new(HttpConfig {
        ca_file: ca,
        pin_sha256: pins,
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        ..HttpConfig::default()
    })
    .expect("client")
}

#[test]
fn https_pin_match_and_mismatch() {
    let reply = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\npinned".to_string();
    let (port, _) = tls_server(4, vec![reply]);
    let url = Url::parse(&format!("https://127.0.0.1:{port}/v2")).unwrap();
    let server_pin = openssl_pin(&testbed_ca().parent().unwrap().join("server.pem"));
    let good = http::parse_pin(&server_pin).unwrap();
    let other = http::parse_pin("sha256/DqGC/gbv5Xgpqp2/6W/dT+VbkCc8a3HQeCJLBK87V+k=").unwrap();

    // One matching pin among several is enough.
    let client = pinned_client(vec![other, good], Some(testbed_ca()));
    let resp = get(&client, url.clone()).expect("pin matches");
    assert_eq!(resp.body, b"pinned");
    let facts = smol::block_on(client.tls_facts(&url)).unwrap().unwrap();
    assert!(facts.pinned && facts.verified);
    assert_eq!(facts.spki_sha256.as_deref(), Some(server_pin.as_str()));

    let client = pinned_client(vec![other], Some(testbed_ca()));
    let err = get(&client, url.clone()).expect_err("pin mismatch");
    assert!(matches!(err, HttpError::PinMismatch { .. }), "{err}");
    let text = err.to_string();
    eprintln!("pin mismatch: {text}");
    assert!(
        text.contains(&server_pin) && text.contains(&format!("127.0.0.1:{port}")),
        "{text}"
    );
    assert!(!err.is_transient() && err.certainly_not_sent());

    // A matching pin does not make an untrusted certificate acceptable.
    let system = pinned_client(vec![good], None);
    let err = get(&system, url).expect_err("untrusted despite pin");
    assert!(matches!(err, HttpError::Tls { .. }), "{err}");
}

#[test]
fn https_client_certificate_required_by_the_server() {
    let pki = ClientPki::new();
    let reply = "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nmtls".to_string();
    let (port, handshakes) = tls_server_with(3, vec![reply], Some(pki.ca()));
    let url = Url::parse(&format!("https://127.0.0.1:{port}/v2")).unwrap();

    let with_cert = HttpClient::new(HttpConfig {
        ca_file: Some(testbed_ca()),
        client_cert: Some(pki.cert()),
        ..HttpConfig::default()
    })
    .expect("client with certificate");
    let resp = get(&with_cert, url.clone()).expect("mutual TLS works");
    assert_eq!(resp.body, b"mtls");
    assert_eq!(handshakes.load(Ordering::SeqCst), 1);

    let without = HttpClient::new(HttpConfig {
        ca_file: Some(testbed_ca()),
        ..HttpConfig::default()
    })
    .unwrap();
    let err = get(&without, url).expect_err("the server wants a certificate");
    let text = err.to_string();
    eprintln!("without a client certificate: {text}");
    assert!(matches!(err, HttpError::Tls { .. }), "{err:?}");
    assert!(
        text.contains("CertificateRequired") || text.contains("HandshakeFailure"),
        "{text}"
    );
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");

    // A certificate from a CA the server does not trust is refused as well.
    let stranger = ClientPki::new();
    let untrusted = HttpClient::new(HttpConfig {
        ca_file: Some(testbed_ca()),
        client_cert: Some(stranger.cert()),
        ..HttpConfig::default()
    })
    .unwrap();
    let err = get(
        &untrusted,
        Url::parse(&format!("https://127.0.0.1:{port}/")).unwrap(),
    )
    .expect_err("unknown client CA");
    eprintln!("client certificate of an unknown CA: {err}");
    assert!(matches!(err, HttpError::Tls { .. }), "{err:?}");
    assert_eq!(handshakes.load(Ordering::SeqCst), 1);
}

#[test]
fn client_certificate_with_the_wrong_key_is_refused_at_start() {
    let pki = ClientPki::new();
    let other = ClientPki::new();
    let mut cert = pki.cert();
    cert.key_file = other.cert().key_file;
    let err = HttpClient::new(HttpConfig {
        ca_file: Some(testbed_ca()),
        client_cert: Some(cert),
        ..HttpConfig::default()
    })
    .expect_err("mismatched key");
    eprintln!("mismatched key: {err}");
    assert!(matches!(err, HttpError::ClientCert { .. }), "{err}");
    let key_pem = std::fs::read_to_string(other.cert().key_file).unwrap();
    let key_body = key_pem.lines().nth(1).unwrap();
    assert!(!err.to_string().contains(key_body));
}
