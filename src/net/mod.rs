//! Outbound transport: the one HTTP client of idrelay, and retry pacing.
//!
//! Owns every outbound HTTP(S) connection the agent makes. The SCIM client, the OAuth2
//! token client and the relay link send requests through [`http::HttpClient`] and pace
//! retries with [`backoff::Backoff`]; none opens sockets of its own. Nothing here knows
//! SCIM, LDAP or the relay protocol (docs/architecture.md, "What a folder may import").
//!
//! Layout (one file per concept):
//! * `h1`: HTTP/1.1 codec, pure over `AsyncBufRead`/bytes: request encoding, response head
//!   parsing, body framing (Content-Length, chunked, until close), size limits.
//! * [`http`]: connections (TCP, rustls), timeouts, the idle-connection pool, TLS trust.
//! * [`proxy`]: the outbound proxy (`HTTP CONNECT`) and its settings.
//! * [`backoff`]: exponential backoff with full jitter, `Retry-After` parsing. No I/O.
//!
//! Invariants (details in each file):
//! * Outbound only; nothing here listens on a socket.
//! * Every request is bounded in time (connect and whole-request timeouts) and in memory
//!   (response head 64 KiB, body `max_body_bytes`, default 16 MiB).
//! * Certificates are always verified (rustls, ring); trust comes from a configured CA file
//!   or the system bundle.
//! * A connection is reused only after a complete, cleanly framed keep-alive response.
//! * Header values (tokens) never reach logs or error messages.
//!
//! Why not `async_h1::connect`: its client decoder rejects HTTP/1.0 responses ("Unsupported
//! HTTP version"), and scim2-server (like many small SCIM servers behind WSGI) answers
//! HTTP/1.0; it also returns an empty body when a response has no length, and offers no
//! timeouts or pooling. The codec here is small and tested against those cases.

pub mod backoff;
mod h1;
pub mod http;
pub mod proxy;
