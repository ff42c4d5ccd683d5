//! Outbound transport: the one HTTP client of idrelay, and retry pacing.
//!
//! Owns every outbound HTTP(S) connection the agent makes. Other modules (the SCIM client,
//! later the relay long-poll and the heartbeat) send requests through [`http::HttpClient`]
//! and pace retries with [`backoff::Backoff`]; none opens sockets of its own.
//!
//! Layout (one file per concept):
//! * `h1`: HTTP/1.1 codec, pure over `AsyncBufRead`/bytes: request encoding, response head
//!   parsing, body framing (Content-Length, chunked, until close), size limits.
//! * [`http`]: connections (TCP, rustls), timeouts, the idle-connection pool, TLS trust.
//! * [`backoff`]: exponential backoff with full jitter, `Retry-After` parsing. No I/O.
//! * [`agent`]: the agent's side of the long-poll link (polls, answers, heartbeats, lease);
//!   [`answers`]: the answers it keeps by request id, in memory and on disk, so that a
//!   re-delivered request is never run twice.
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

pub mod agent;
pub mod answers;
pub mod backoff;
mod h1;
pub mod http;
pub mod hub_credential;
pub mod proxy;
