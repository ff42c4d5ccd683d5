//! Command-line parsing: a pure function from arguments to a [`Command`], with the help
//! texts. No I/O here; `main` prints and exits.
//!
//! Global options (`--config`, `--log-level`, `--quiet`) may stand before or after the
//! command name.

use std::fmt;
use std::path::PathBuf;

/// Process exit codes (also documented in the README).
pub mod exit {
    /// Everything worked; every in-scope object is in step.
    pub const OK: i32 = 0;
    /// A failure that stopped the work (directory or endpoint unreachable, a check failed).
    pub const FAILURE: i32 = 1;
    /// Bad command line or bad config file.
    pub const USAGE: i32 = 2;
    /// The pass completed but some objects failed.
    pub const PARTIAL: i32 = 3;
    /// The pass completed, nothing failed, but deletes wait for `approve-deletes`.
    pub const HELD: i32 = 4;
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `check`
    Check,
    /// `sync --once [--dry-run [--json]]`
    Sync {
        /// Print writes instead of sending them.
        dry_run: bool,
        /// With `dry_run`: each write as one JSON line instead of the per-object diff.
        json: bool,
    },
    /// `run`: full pass when owed, then follow changes until stopped.
    Run,
    /// `status [--json]`: healthy or not and why; queue, feed, endpoint, held deletes.
    Status {
        /// One JSON object instead of text.
        json: bool,
    },
    /// `approve-deletes [--list]`: release the deletes held by the threshold.
    ApproveDeletes {
        /// Only list them.
        list: bool,
    },
    /// `retry DN` / `retry --all`: send parked objects now.
    Retry {
        /// The parked object to retry; `None`: all of them.
        dn: Option<String>,
    },
    /// `preview DN`
    Preview {
        /// The object to show.
        dn: String,
    },
    /// `version`
    Version,
    /// `help [COMMAND]` or `--help`
    Help(Option<String>),
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// The command.
    pub command: Command,
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// `--log-level LEVEL` (validated by the caller).
    pub log_level: Option<String>,
    /// `--quiet`: no live progress line.
    pub quiet: bool,
    /// `--allow-root`: run even as root (refused otherwise).
    pub allow_root: bool,
}

/// A command line that cannot be run; the message says what to type instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (see `idrelay --help`)", self.0)
    }
}

impl std::error::Error for UsageError {}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Invocation, UsageError> {
    let mut config = None;
    let mut log_level = None;
    let mut quiet = false;
    let mut allow_root = false;
    let mut help = false;
    let mut words: Vec<&str> = Vec::new();
    let mut flags: Vec<&str> = Vec::new();
    let mut lexer = crate::args::Lexer::new(args);
    while let Some(token) = lexer.next() {
        let (name, inline) = match token {
            crate::args::Token::Word(w) => {
                words.push(w);
                continue;
            }
            crate::args::Token::Option { name, inline } => (name, inline),
        };
        let mut value = |what: &str| -> Result<String, UsageError> {
            lexer
                .value(inline)
                .map(str::to_string)
                .ok_or_else(|| UsageError(format!("{name} needs a {what}")))
        };
        match name {
            "-c" | "--config" => config = Some(PathBuf::from(value("file name")?)),
            "--log-level" => log_level = Some(value("level (error, warn, info, debug, trace)")?),
            "-q" | "--quiet" => quiet = true,
            "--allow-root" => allow_root = true,
            "-h" | "--help" => help = true,
            "-V" | "--version" => words.insert(0, "version"),
            "--once" | "--dry-run" | "--list" | "--json" | "--all" => flags.push(name),
            s => return Err(UsageError(format!("unknown option `{s}`"))),
        }
    }
    let command = match (words.first().copied(), help) {
        (None, _) => Command::Help(None),
        (Some("help"), _) => Command::Help(words.get(1).map(|s| s.to_string())),
        (Some(c), true) => Command::Help(Some(c.to_string())),
        (Some("version"), false) => Command::Version,
        (Some("check"), false) => Command::Check,
        (Some("run"), false) => Command::Run,
        (Some("status"), false) => Command::Status {
            json: flags.contains(&"--json"),
        },
        (Some("approve-deletes"), false) => Command::ApproveDeletes {
            list: flags.contains(&"--list"),
        },
        (Some("sync"), false) => {
            if !flags.contains(&"--once") {
                return Err(UsageError(
                    "`sync` needs `--once` (one full pass, then exit); for continuous sync use `run`".into(),
                ));
            }
            if flags.contains(&"--json") && !flags.contains(&"--dry-run") {
                return Err(UsageError(
                    "`sync --json` goes with `--dry-run` (it prints the writes a dry run would send)".into(),
                ));
            }
            Command::Sync {
                dry_run: flags.contains(&"--dry-run"),
                json: flags.contains(&"--json"),
            }
        }
        (Some("retry"), false) => match (words.get(1), flags.contains(&"--all")) {
            (Some(dn), false) => Command::Retry {
                dn: Some(dn.to_string()),
            },
            (None, true) => Command::Retry { dn: None },
            (Some(_), true) => {
                return Err(UsageError("`retry` takes a DN or `--all`, not both".into()))
            }
            (None, false) => return Err(UsageError("`retry` needs a DN or `--all`".into())),
        },
        (Some("preview"), false) => match words.get(1) {
            Some(dn) => Command::Preview { dn: dn.to_string() },
            None => return Err(UsageError("`preview` needs a DN".into())),
        },
        (Some(other), false) => return Err(UsageError(format!("unknown command `{other}`"))),
    };
    let extra = match &command {
        Command::Preview { .. } | Command::Retry { dn: Some(_) } | Command::Help(Some(_)) => 2,
        _ => 1,
    };
    if words.len() > extra && !matches!(command, Command::Help(_)) {
        return Err(UsageError(format!(
            "unexpected argument `{}`",
            words[extra]
        )));
    }
    let allowed: &[&str] = match command {
        Command::Sync { .. } => &["--once", "--dry-run", "--json"],
        Command::ApproveDeletes { .. } => &["--list"],
        Command::Status { .. } => &["--json"],
        Command::Retry { .. } => &["--all"],
        _ => &[],
    };
    if let Some(f) = flags.iter().find(|f| !allowed.contains(f)) {
        let with = match *f {
            "--list" => "approve-deletes",
            "--json" => "status",
            "--all" => "retry",
            _ => "sync",
        };
        return Err(UsageError(format!("`{f}` only goes with `{with}`")));
    }
    Ok(Invocation {
        command,
        config,
        log_level,
        quiet,
        allow_root,
    })
}

/// Whether the command reads the config file.
pub fn needs_config(c: &Command) -> bool {
    matches!(
        c,
        Command::Check
            | Command::Sync { .. }
            | Command::Preview { .. }
            | Command::Run
            | Command::Status { .. }
            | Command::ApproveDeletes { .. }
            | Command::Retry { .. }
    )
}

/// The help text for `command` (None: the overview).
pub fn help(command: Option<&str>) -> Result<&'static str, UsageError> {
    Ok(match command {
        None => HELP,
        Some("check") => HELP_CHECK,
        Some("sync") => HELP_SYNC,
        Some("preview") => HELP_PREVIEW,
        Some("run") => HELP_RUN,
        Some("status") => HELP_STATUS,
        Some("approve-deletes") => HELP_APPROVE,
        Some("retry") => HELP_RETRY,
        Some("version") => HELP_VERSION,
        Some("help") => HELP,
        Some(other) => return Err(UsageError(format!("unknown command `{other}`"))),
    })
}

const HELP: &str = "\
idrelay: keeps a SCIM 2.0 endpoint in step with an LDAP directory (outbound only)

Usage: idrelay [OPTIONS] COMMAND

Commands:
  check              validate the config, reach the directory and the SCIM endpoint
  sync --once        one full pass: provision every in-scope user and group, then exit
  run                stay up: a full pass when one is owed, then follow every change
  status [--json]    healthy or not (exit 0/1) and why: agent, feed, endpoint, queue, deletes
  approve-deletes    release the deletes held by sync.delete_threshold (--list: only show)
  retry DN|--all     send parked objects (changes the endpoint refused) again now
  preview DN         show how one directory object maps to SCIM and what the endpoint holds
  version            print the version
  help [COMMAND]     this text, or a command's

Options:
  -c, --config FILE      the config file (TOML; see docs/config.md)
      --log-level LEVEL  error, warn, info (default), debug, trace
  -q, --quiet            no live progress line on the terminal
      --allow-root       run as root anyway (refused otherwise: use an unprivileged account)
  -h, --help             help (also after a command: idrelay sync --help)
  -V, --version          the version

Exit codes: 0 ok, 1 failed (unreachable, check failed), 2 bad command line or config,
3 the pass finished but some objects failed, 4 the pass finished but deletes are held
for approve-deletes.
";

const HELP_RETRY: &str = "\
Usage: idrelay --config FILE retry DN
       idrelay --config FILE retry --all

A change the endpoint refuses (a 4xx other than 408/429, or 5xx for that object past
sync.max_attempts) is parked so that later changes flow on, and retried by itself after a
backoff (2 min doubling to 6 h) or by a full pass; `idrelay status` lists parked objects.
This command makes the parked object DN (or every parked object) due now: a running agent
reads it again from the directory and sends it within seconds (see its log); otherwise the
next `idrelay run` sends it first.
";

const HELP_CHECK: &str = "\
Usage: idrelay --config FILE check

Checks, one line each, OK or the precise failure:
  config      the file parses and every key is valid
  state_dir   the state directory exists (or can be created) and is writable
  ldap        connect (TLS facts), bind as directory.bind_dn, read the rootDSE and report
              the directory kind, read each scope.include subtree
  scim        fetch /ServiceProviderConfig (TLS facts, features), then an authenticated
              read of /Users to prove the token
Exit 0 only if every check passes, else 1 (2 when the config itself is bad).
";

const HELP_SYNC: &str = "\
Usage: idrelay --config FILE sync --once [--dry-run [--json]]

One full pass over the scope: every in-scope user, then every group, is created, replaced
or left alone (unchanged since the last pass: nothing is sent) at the SCIM endpoint, then
the command exits. Objects are matched by externalId, never duplicated.

  --once      required: one pass, then exit
  --dry-run   send no writes; print per object what the pass would do (create, replace,
              patch, deactivate, delete, hold) and the attributes that change, old -> new,
              from what the endpoint holds (reads still happen); a create whose userName
              the endpoint holds for another resource shows `would fail: 409 ...`. The
              summary's counts are those the real pass would report.
  --json      with --dry-run: each write as one JSON line instead
              ({\"method\",\"path\",\"externalId\",\"dn\",\"body\"})

The last line on stdout is the summary. Exit 0: every object in step; 3: some objects
failed (listed on stderr, with the reason); 4: nothing failed but deletes are held for
approve-deletes; 1: the pass could not run or was cut short.
";

const HELP_RUN: &str = "\
Usage: idrelay --config FILE run

Stays up. When the change queue owes a full pass (first start, queue overflow, damage, the
directory lost track of our position) it runs one; then it follows the directory's changes
(sync.feed: RFC 4533 syncrepl on OpenLDAP / 389-DS; DirSync on Active Directory, or
uSNChanged polling without \"Replicating Directory Changes\"; modifyTimestamp polling
elsewhere) and delivers each to the SCIM endpoint within seconds. Changes wait in a bounded on-disk queue
(queue.max_bytes) until provisioned, so a cut link or a crash loses nothing; when the bound
is hit the backlog is dropped and a full pass runs once the endpoint is back. A full pass
also runs every sync.full_pass_interval_secs (default daily) to catch what a feed missed.
Deletes, and objects leaving scope (moved out of an included subtree, no longer matching the
filter), deactivate users (active: false; sync.user_delete = \"delete\" deletes them) and
delete groups; more than sync.delete_threshold of them are held for `approve-deletes`.
Renames and moves inside scope keep the anchor: they are updates.
Signals: SIGTERM or SIGINT finish the request in flight, save and exit 0; SIGHUP re-reads
the config (an invalid one is logged and the old one kept). SIGKILL is safe too:
unacknowledged changes are re-sent.
";

const HELP_STATUS: &str = "\
Usage: idrelay --config FILE status [--json]

First line: `healthy: yes`, or `healthy: no (why)`. Then whether `run` is running (it holds
the state directory's lock), its phase, the change feed's link and last event, the SCIM
endpoint's state and last error, the change queue's depth, bytes on disk and bound, the age
of the oldest pending change, whether a full resync is owed (and why), the watermark, the
number of objects in the anchor index, when the last full pass completed, the deletes
held for approval, and the objects parked because the endpoint refused them (count, the
first few with reasons; `retry` sends them again). Works while `run` is running (reads without taking the lock).

--json  the same as one JSON object (docs/status.md)

Exit status: 0 when healthy, 1 when not (docs/status.md says what healthy means), so a
monitoring check can call it as is.
";

const HELP_APPROVE: &str = "\
Usage: idrelay --config FILE approve-deletes [--list]

More deletes than sync.delete_threshold within sync.delete_interval_secs (or in one full
pass) are held: nothing is deleted or deactivated at the endpoint until a human looks.
This command prints the held deletes and releases them. With `run` going, the running agent
sends them within seconds; otherwise they are sent from here. An object that came back into
scope before approval is no longer held. With --list it only prints them.
";

const HELP_PREVIEW: &str = "\
Usage: idrelay --config FILE preview DN

Reads one directory object and prints: whether it is in scope (and why not), the SCIM
JSON it maps to, and what the SCIM endpoint holds for its externalId now. Sends no writes.
";

const HELP_VERSION: &str = "\
Usage: idrelay version

Prints the version, the git commit and the target it was built for.
";

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Invocation, UsageError> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn global_options_anywhere() {
        let a = p(&["sync", "--once", "--config", "x.toml", "--dry-run"]).unwrap();
        assert_eq!(
            a.command,
            Command::Sync {
                dry_run: true,
                json: false
            }
        );
        assert_eq!(a.config, Some(PathBuf::from("x.toml")));
        let b = p(&["--config=y.toml", "--log-level", "debug", "check"]).unwrap();
        assert_eq!(b.command, Command::Check);
        assert_eq!(b.log_level.as_deref(), Some("debug"));
    }

    #[test]
    fn help_everywhere() {
        assert_eq!(p(&[]).unwrap().command, Command::Help(None));
        assert_eq!(
            p(&["sync", "--help"]).unwrap().command,
            Command::Help(Some("sync".into()))
        );
        assert_eq!(
            p(&["help", "check"]).unwrap().command,
            Command::Help(Some("check".into()))
        );
        for c in [
            "check",
            "sync",
            "preview",
            "version",
            "run",
            "status",
            "approve-deletes",
            "retry",
        ] {
            assert!(help(Some(c)).unwrap().contains("Usage: idrelay"));
        }
    }

    #[test]
    fn mistakes_are_named() {
        assert!(p(&["sync"]).unwrap_err().0.contains("--once"));
        assert!(p(&["preview"]).unwrap_err().0.contains("DN"));
        assert!(p(&["frobnicate"]).unwrap_err().0.contains("`frobnicate`"));
        assert!(p(&["check", "--bogus"])
            .unwrap_err()
            .0
            .contains("`--bogus`"));
        assert!(p(&["check", "--dry-run"])
            .unwrap_err()
            .0
            .contains("only goes with `sync`"));
        assert!(p(&["check", "extra"]).unwrap_err().0.contains("`extra`"));
        assert!(p(&["status", "--list"])
            .unwrap_err()
            .0
            .contains("only goes with `approve-deletes`"));
        assert_eq!(
            p(&["approve-deletes", "--list"]).unwrap().command,
            Command::ApproveDeletes { list: true }
        );
        assert_eq!(
            p(&["status", "--json"]).unwrap().command,
            Command::Status { json: true }
        );
        assert!(p(&["check", "--json"])
            .unwrap_err()
            .0
            .contains("only goes with `status`"));
        assert!(p(&["--config"]).unwrap_err().0.contains("needs a file"));
        assert!(p(&["retry"]).unwrap_err().0.contains("--all"));
        assert!(p(&["retry", "uid=a,dc=x", "--all"])
            .unwrap_err()
            .0
            .contains("not both"));
        assert!(p(&["status", "--all"])
            .unwrap_err()
            .0
            .contains("only goes with `retry`"));
        assert_eq!(
            p(&["retry", "--all"]).unwrap().command,
            Command::Retry { dn: None }
        );
        assert_eq!(
            p(&["retry", "uid=a,dc=x"]).unwrap().command,
            Command::Retry {
                dn: Some("uid=a,dc=x".into())
            }
        );
        let pv = p(&["preview", "uid=a,dc=x"]).unwrap();
        assert_eq!(
            pv.command,
            Command::Preview {
                dn: "uid=a,dc=x".into()
            }
        );
    }
}
