//! idrelay: an outbound-only agent that keeps a SCIM 2.0 endpoint in step with an LDAP
//! directory.
//!
//! The binary (`src/main.rs`) is a thin CLI over these modules:
//!
//! * [`config`]: the TOML config file, validated into typed settings.
//! * [`ldap`]: connection, paged and ranged search, the entry model, dialects. tokio lives
//!   only here.
//! * [`queue`]: the bounded on-disk change queue.
//! * [`relay`]: HTTPS transport (the one HTTP client), backoff.
//! * [`scim`]: SCIM resources, profile mapping (pure), the provisioning client.
//! * [`sync`]: the engine: full pass, anchor index, reconcile.
//! * [`state_dir`]: the state directory's checks and the one way to open its files
//!   (0600, no symlinks).
//! * [`stdout`]: what commands print; a closed pipe ends the process quietly.
//! * [`status`]: the health document of `status`, and what `run` publishes for it.
#![forbid(unsafe_code)]

pub mod app;
pub mod base64;
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
