//! A small `log` backend: one line per record on stderr.
//!
//! On a terminal or in a file: `2026-11-25T18:40:00Z INFO  message`. Under systemd
//! (`JOURNAL_STREAM` set) the line starts with a `<N>` syslog priority instead, which journald
//! turns into the entry's priority, and the timestamp is left to the journal.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Log, Metadata, Record};

struct StderrLogger {
    journal: bool,
}

impl Log for StderrLogger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let line = if self.journal {
            let prio = match r.level() {
                Level::Error => 3,
                Level::Warn => 4,
                Level::Info => 6,
                Level::Debug | Level::Trace => 7,
            };
            format!("<{prio}>{}\n", r.args())
        } else {
            format!("{} {:<5} {}\n", utc_now(), r.level(), r.args())
        };
        // One write call per line so concurrent lines do not interleave; a live progress
        // line is cleared first and drawn again below the log line.
        let live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = around_live(&line, live.as_deref());
        let _ = std::io::stderr().lock().write_all(&bytes);
    }

    fn flush(&self) {}
}

/// The live progress line on the terminal, if one is drawn ([`live_line`]).
static LIVE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Clears the terminal's current line.
const CLEAR_LINE: &[u8] = b"\r\x1b[2K";

/// Draws `Some(line)` as the live progress line on stderr (a terminal), replacing the one
/// drawn before, or clears it (`None`). Log lines written while one is drawn go above it:
/// the live line is cleared, the log line written, the live line drawn again.
pub fn live_line(line: Option<&str>) {
    let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
    let mut bytes = CLEAR_LINE.to_vec();
    if let Some(l) = line {
        bytes.extend_from_slice(l.as_bytes());
    }
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(&bytes);
    let _ = err.flush();
    *live = line.map(str::to_string);
}

/// The bytes that write log `line` (ending in a newline) while `live` is drawn.
fn around_live(line: &str, live: Option<&str>) -> Vec<u8> {
    match live {
        None => line.as_bytes().to_vec(),
        Some(l) => {
            let mut b = CLEAR_LINE.to_vec();
            b.extend_from_slice(line.as_bytes());
            b.extend_from_slice(l.as_bytes());
            b
        }
    }
}

/// Installs the logger at `level`; a second call is ignored.
pub fn init(level: LevelFilter) {
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let logger = Box::leak(Box::new(StderrLogger { journal }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

/// Parses `--log-level`: error, warn, info, debug, trace, off.
pub fn parse_level(s: &str) -> Option<LevelFilter> {
    match s.to_ascii_lowercase().as_str() {
        "off" => Some(LevelFilter::Off),
        "error" => Some(LevelFilter::Error),
        "warn" | "warning" => Some(LevelFilter::Warn),
        "info" => Some(LevelFilter::Info),
        "debug" => Some(LevelFilter::Debug),
        "trace" => Some(LevelFilter::Trace),
        _ => None,
    }
}

/// Current UTC time as RFC 3339 with seconds.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_utc(secs)
}

/// Formats unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian, UTC).
pub fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm, written out from its description).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: log lines were printed onto the live progress line.
    #[test]
    fn a_log_line_goes_above_the_live_line() {
        assert_eq!(around_live("x\n", None), b"x\n");
        assert_eq!(
            around_live("2026 INFO  x\n", Some("users: 1/2")),
            b"\r\x1b[2K2026 INFO  x\nusers: 1/2"
        );
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_795_624_800), "2026-11-25T16:40:00Z");
    }

    #[test]
    fn levels_parse() {
        assert_eq!(parse_level("DEBUG"), Some(LevelFilter::Debug));
        assert_eq!(parse_level("loud"), None);
    }
}
