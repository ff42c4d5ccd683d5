//! A small `log` backend: one line per record on stderr.
//!
//! On a terminal or in a file: `2026-11-25T18:40:00Z INFO  message`. Under systemd
//! (`JOURNAL_STREAM` set) the line starts with a `<N>` syslog priority instead, which journald
//! turns into the entry's priority, and the timestamp is left to the journal.
//!
//! Text from the other side (a SCIM error's `detail`, a hub request's fields, an LDAP
//! diagnostic, a DN from the directory) must not forge log lines: [`escape`] makes it one
//! harmless line, and the logger applies it to every record, so a message can never break
//! out of its line or open with a `<N>` priority of its own. Errors that carry such text
//! escape it in their `Display` too, for what is printed without the logger.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Log, Metadata, Record};

struct StderrLogger {
    journal: bool,
}

impl Log for StderrLogger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        // The hub's PostgreSQL driver logs every statement with its parameters at debug.
        if m.target().starts_with("tokio_postgres") && m.level() > Level::Info {
            return false;
        }
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let message = r.args().to_string();
        let message = escape(&message);
        let line = if self.journal {
            let prio = match r.level() {
                Level::Error => 3,
                Level::Warn => 4,
                Level::Info => 6,
                Level::Debug | Level::Trace => 7,
            };
            format!("<{prio}>{message}\n")
        } else {
            format!("{} {:<5} {message}\n", utc_now(), r.level())
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

/// Makes text from the other side safe for one log line: control characters (newlines,
/// carriage returns, escape sequences, C1 controls), Unicode line and paragraph separators
/// and bidirectional overrides are written as `\n`, `\r`, `\t`, `\xHH` or `\u{HHHH}`, and
/// a leading `<N>` (a journald/syslog priority) gets its `<` written as `\x3c`. Everything
/// else, backslashes included (DNs escape with them), stays as it is. Escaping twice
/// changes nothing more.
pub fn escape(text: &str) -> Cow<'_, str> {
    let needs = |c: char| {
        c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}')
            || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)
    };
    let priority = priority_prefix(text);
    if !priority && !text.chars().any(needs) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    let mut chars = text.chars();
    if priority {
        out.push_str("\\x3c");
        chars.next();
    }
    for c in chars {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs(c) && (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs(c) => {
                let _ = write!(out, "\\u{{{:04x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Whether `text` opens with `<digits>`, which journald and syslog read as a priority.
fn priority_prefix(text: &str) -> bool {
    text.strip_prefix('<')
        .and_then(|rest| rest.split_once('>'))
        .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
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
    fn remote_text_cannot_forge_a_line_or_a_priority() {
        assert_eq!(
            escape("plain text, é, uid=a\\,b"),
            "plain text, é, uid=a\\,b"
        );
        assert!(matches!(escape("no change"), Cow::Borrowed(_)));
        assert_eq!(
            escape("bad value\n<0>idrelay: forged emergency"),
            "bad value\\n<0>idrelay: forged emergency"
        );
        assert_eq!(escape("<0>forged"), "\\x3c0>forged");
        assert_eq!(escape("<12>x"), "\\x3c12>x");
        assert_eq!(escape("<b>bold</b>"), "<b>bold</b>");
        assert_eq!(escape("<>x"), "<>x");
        assert_eq!(escape("a\r\nb\tc"), "a\\r\\nb\\tc");
        assert_eq!(escape("\u{1b}[31mred\u{7f}"), "\\x1b[31mred\\x7f");
        assert_eq!(escape("x\u{85}y\u{2028}z"), "x\\x85y\\u{2028}z");
        assert_eq!(escape("\u{202e}txt.exe"), "\\u{202e}txt.exe");
        assert_eq!(escape("nul\0"), "nul\\x00");
        for s in ["<0>a\nb", "\u{1b}\u{2029}", "plain"] {
            let once = escape(s).into_owned();
            assert_eq!(escape(&once), once, "escaping twice changes nothing: {s:?}");
            assert!(!once.contains('\n') && !once.starts_with("<0>"));
        }
    }

    #[test]
    fn levels_parse() {
        assert_eq!(parse_level("DEBUG"), Some(LevelFilter::Debug));
        assert_eq!(parse_level("loud"), None);
    }
}
