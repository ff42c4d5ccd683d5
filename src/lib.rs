//! idrelay: an outbound-only agent that keeps a SCIM 2.0 endpoint in step with an LDAP
//! directory, and `idrelay-hub`, the reference cloud side of its relay.
//!
//! The crate map (docs/architecture.md draws the flows and what each folder may import;
//! `tests/layout.rs` holds the code to it):
//!
//! * [`app`]: the command line, the config file and one file per command; the only module
//!   that knows the config file.
//! * [`ldap`]: connection, paged and ranged search, syncrepl, DirSync, notifications, the
//!   entry model, dialects, DN text. tokio lives only here.
//! * [`queue`]: the bounded on-disk change queue (opaque bytes).
//! * [`net`]: the one outbound HTTP client (HTTP/1.1 over rustls, pool, timeouts, pins,
//!   proxy) and backoff.
//! * [`scim`]: SCIM resources, profile mapping (pure), schema fitting, read-back, Bulk,
//!   OAuth2, the provisioning client.
//! * [`sync`]: the engine: full pass, anchor index, provisioning, members, deletes, and
//!   `run`'s follow loop (`sync::follow`).
//! * [`relay`]: the agent's side of the relay protocol: the link, the handler, the SCIM
//!   facade over the directory, writeback.
//! * [`hub`]: the reference hub, `idrelay-hub`.
//! * Leaves: [`status`] (the agent's shared state and the health document), [`state_dir`]
//!   (the state directory and the one way to open its files), [`stdout`] (what commands
//!   print; a closed pipe ends the process quietly), [`logging`], [`secret`], [`signals`],
//!   [`privilege`], [`base64`], [`fnv`] (the one stable hash), [`args`] (the command-line lexer of both executables).
#![forbid(unsafe_code)]

pub mod app;
pub mod args;
pub mod base64;
pub mod fnv;
pub mod hub;
pub mod ldap;
pub mod logging;
pub mod net;
pub mod privilege;
pub mod queue;
pub mod relay;
pub mod scim;
pub mod secret;
pub mod signals;
pub mod sorted_file;
pub mod state_dir;
pub mod status;
pub mod stdout;
pub mod sync;

/// The version line: crate version, git commit and target, from build.rs.
pub fn version_line() -> String {
    format!(
        "idrelay {} (commit {}, {})",
        env!("CARGO_PKG_VERSION"),
        env!("IDRELAY_GIT_COMMIT"),
        env!("IDRELAY_TARGET")
    )
}
