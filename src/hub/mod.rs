//! `idrelay-hub`: the reference cloud side of the relay protocol (docs/protocol.md), small
//! and real. Operator's guide: docs/hub.md.
//!
//! Owns: the hub's config, its state (queues of requests per agent, leases per group,
//! command answers), kept in a store that outlives the process, and its HTTP(S) server. It serves
//! * the agent endpoints: long-poll, responses, heartbeat (agent token);
//! * the operator API: the agents and their heartbeats (all at once, or in pages with a
//!   summary per group), commands, command answers (operator tokens: role `admin` for
//!   everything, `read` for looking only);
//! * each agent's directory as an ordinary SCIM endpoint at `/agents/{agent}/scim/v2/`,
//!   forwarded through that agent's long-poll;
//! * the operator dashboard at `/` ([`dashboard`]: a static page that calls the operator
//!   API with the token the operator types in).
//!
//! Layout: [`config`] (file → validated [`config::HubConfig`]), [`lease`] (the
//! active/standby rule, pure), [`state`] (queues and views, pure, takes `now`), [`route`]
//! (method + path → route, pure), [`listing`] (the agents and groups in pages by cursor,
//! with health, pure), [`replies`] (the agent's `responses` body as a stream,
//! pure), [`dashboard`] (the page and its Content-Security-Policy), [`store`] (the
//! storage seam: what outlives the process, `storage = "memory"`), [`sqlite`]
//! (`storage = "sqlite"`, the default), [`postgres`] (`storage = "postgres"`, replicas on
//! one database; [`pg_config`] judges its URL, [`shared`] names what replicas decide in
//! the database), `conn` (per-connection guards, connection caps),
//! `http1` (the HTTP/1.1 keep-alive loop, lean while a poll is held), `server` (sockets,
//! TLS, handlers).
//!
//! Invariants:
//! * Commands queued and not answered, command answers, heartbeats and leases are kept in
//!   the store (`storage`, docs/hub.md) and written before the request that changed them
//!   is answered: a restarted hub goes on where it stopped. SCIM forwards are not kept
//!   (beside other replicas a forward is a database row only while its caller waits, so
//!   the replica holding its agent's poll can deliver it: [`shared`]).
//!   Request ids carry a random per-start prefix (never one a kept id has), so none is
//!   ever reused.
//! * Listens on loopback unless the config says `allow_public = true`.
//! * Tokens are compared in constant time and appear in no log line or error.
//! * Every wait is bounded (poll hold, SCIM forward, body reads, stalled writes, TLS
//!   handshakes) and every queue is bounded (per agent; results); see `server` for limits.
//! * The dashboard page carries no data and no secret; what it shows comes from the
//!   operator API under the same tokens and roles, and is never inserted as HTML.
//! * The hub never interprets SCIM: it forwards only the five SCIM endpoints, to the named
//!   agent, and returns the agent's status and body.

pub mod config;
mod conn;
pub mod dashboard;
mod http1;
pub mod introspect;
pub mod lease;
pub mod listing;
pub mod pg_config;
pub mod postgres;
pub mod replies;
pub mod route;
mod server;
pub mod shared;
pub mod sqlite;
pub mod state;
pub mod store;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

pub use server::{constant_time_eq, Hub};

use crate::signals::Control;

/// Exit codes of `idrelay-hub`.
pub mod exit {
    /// Stopped on request.
    pub const OK: i32 = 0;
    /// Could not run (listen failed, or the store could not be opened).
    pub const FAILURE: i32 = 1;
    /// Bad command line or config.
    pub const USAGE: i32 = 2;
}

/// Why the hub stopped with an error.
#[derive(Debug)]
pub enum HubError {
    /// The listen address could not be bound.
    Bind {
        /// The address from `listen`.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    Signals(std::io::Error),
    /// The store could not be opened or read.
    Store(store::StoreError),
}

impl fmt::Display for HubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HubError::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            HubError::Signals(e) => write!(f, "cannot install signal handlers: {e}"),
            HubError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for HubError {}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    /// Run with this config.
    Run {
        /// `--config FILE`.
        config: PathBuf,
        /// `--log-level`, when given.
        log_level: Option<String>,
        /// `--check`: validate the config and exit.
        check_only: bool,
    },
    /// `--help`.
    Help,
    /// `--version`.
    Version,
}

/// Usage text.
pub const USAGE: &str = "\
idrelay-hub: the reference cloud side of the idrelay relay protocol

usage: idrelay-hub --config FILE [--log-level LEVEL] [--check]
       idrelay-hub --help | --version

  --config FILE      the hub config (TOML; see docs/hub.md)
  --log-level LEVEL  error, warn, info (default), debug, trace or off
  --check            validate the config (and read its token and TLS files), then exit

Stops on SIGTERM or SIGINT.
";

/// Parses the command line (without the program name).
pub fn parse_args(args: &[String]) -> Result<Invocation, String> {
    let mut config = None;
    let mut log_level = None;
    let mut check_only = false;
    let mut lexer = crate::args::Lexer::new(args);
    while let Some(token) = lexer.next() {
        let (flag, inline) = match token {
            crate::args::Token::Option { name, inline } => (name, inline),
            crate::args::Token::Word(w) => {
                return Err(format!("unexpected argument `{w}` (see --help)"))
            }
        };
        let mut value = |name: &str| {
            lexer
                .value(inline)
                .map(str::to_string)
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag {
            "-h" | "--help" => return Ok(Invocation::Help),
            "-V" | "--version" => return Ok(Invocation::Version),
            "-c" | "--config" => config = Some(PathBuf::from(value("--config")?)),
            "--log-level" => log_level = Some(value("--log-level")?),
            "--check" => check_only = true,
            other => return Err(format!("unknown argument `{other}` (see --help)")),
        }
    }
    let config = config.ok_or("--config FILE is required (see --help)")?;
    Ok(Invocation::Run {
        config,
        log_level,
        check_only,
    })
}

/// The whole program: parse, load, serve until SIGTERM. Returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let inv = match parse_args(args) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let (config, log_level, check_only) = match inv {
        Invocation::Help => {
            print!("{USAGE}");
            return exit::OK;
        }
        Invocation::Version => {
            println!("idrelay-hub {}", env!("CARGO_PKG_VERSION"));
            return exit::OK;
        }
        Invocation::Run {
            config,
            log_level,
            check_only,
        } => (config, log_level, check_only),
    };
    let level = match log_level.as_deref().map(crate::logging::parse_level) {
        None => log::LevelFilter::Info,
        Some(Some(l)) => l,
        Some(None) => {
            eprintln!("error: --log-level: use error, warn, info, debug, trace or off");
            return exit::USAGE;
        }
    };
    crate::logging::init(level);
    let cfg = match config::HubConfig::load(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    if check_only {
        for w in cfg.warnings() {
            println!("WARN {w}");
        }
        println!(
            "hub config {} is valid: {} agent(s), listen {}",
            config.display(),
            cfg.agents.len(),
            cfg.listen
        );
        return exit::OK;
    }
    match run(cfg) {
        Ok(()) => exit::OK,
        Err(e) => {
            log::error!("{e}");
            exit::FAILURE
        }
    }
}

/// Serves `cfg` until SIGTERM or SIGINT.
pub fn run(cfg: config::HubConfig) -> Result<(), HubError> {
    let control = Control::new();
    control.install().map_err(HubError::Signals)?;
    let store = store::open(&cfg.storage).map_err(HubError::Store)?;
    Hub::new(cfg, store.into())
        .map_err(HubError::Store)?
        .serve(&control)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn command_line() {
        assert_eq!(
            parse_args(&args(&["--config", "h.toml", "--log-level=debug"])),
            Ok(Invocation::Run {
                config: "h.toml".into(),
                log_level: Some("debug".into()),
                check_only: false
            })
        );
        assert_eq!(
            parse_args(&args(&["--config=h.toml", "--check"])),
            Ok(Invocation::Run {
                config: "h.toml".into(),
                log_level: None,
                check_only: true
            })
        );
        assert_eq!(parse_args(&args(&["--help"])), Ok(Invocation::Help));
        assert!(parse_args(&args(&[])).unwrap_err().contains("--config"));
        assert!(parse_args(&args(&["--config"])).is_err());
        assert!(parse_args(&args(&["--bogus"]))
            .unwrap_err()
            .contains("--bogus"));
    }
}
