//! The `idrelay` executable: parse the command line, load the config, run one command, map
//! the result to an exit code. Everything else lives in the library.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use idrelay::app::cli::{self, exit, Command};
use idrelay::app::commands;
use idrelay::app::config::Config;
use idrelay::logging;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    ExitCode::from(run(&args) as u8)
}

fn run(args: &[String]) -> i32 {
    let inv = match cli::parse(args) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let level = match inv.log_level.as_deref().map(logging::parse_level) {
        None => log::LevelFilter::Info,
        Some(Some(l)) => l,
        Some(None) => {
            eprintln!(
                "error: --log-level `{}` is not allowed: use error, warn, info, debug, trace or off",
                inv.log_level.unwrap_or_default()
            );
            return exit::USAGE;
        }
    };
    logging::init(level);

    match &inv.command {
        Command::Help(topic) => {
            return match cli::help(topic.as_deref()) {
                Ok(text) => {
                    idrelay::out!("{text}");
                    exit::OK
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    exit::USAGE
                }
            }
        }
        Command::Version => {
            idrelay::outln!("{}", idrelay::version_line());
            return exit::OK;
        }
        _ => {}
    }
    debug_assert!(cli::needs_config(&inv.command));
    if let Err(e) = idrelay::privilege::refuse_root(inv.allow_root) {
        eprintln!("error: {e}");
        return exit::USAGE;
    }
    // Before any secret is read: no core dump, no ptrace by other processes of the user.
    if let Err(e) = idrelay::privilege::make_non_dumpable() {
        log::warn!("cannot make the process non-dumpable (a core dump could hold secrets): {e}");
    }
    let Some(path) = inv.config.as_deref() else {
        eprintln!("error: this command needs --config FILE (see `idrelay --help`)");
        return exit::USAGE;
    };
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    match inv.command {
        Command::Check => commands::check(&config),
        Command::Sync { dry_run, json } => commands::sync_once(&config, dry_run, json, inv.quiet),
        Command::Preview { dn } => commands::preview(&config, &dn),
        Command::Run => commands::run(&config, inv.quiet),
        Command::Status { json } => commands::status(&config, json),
        Command::ApproveDeletes { list } => commands::approve_deletes(&config, list),
        Command::Retry { dn } => commands::retry_parked(&config, dn.as_deref()),
        Command::Help(_) | Command::Version => unreachable!("handled above"),
    }
}
