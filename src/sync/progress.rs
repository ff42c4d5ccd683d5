//! Progress of long work, so an operator never wonders whether the agent is stuck.
//!
//! On a terminal: one live line on stderr, redrawn at most five times a second
//! (`users 4200/10200 41% 830/s ETA 7 s`). Elsewhere (systemd, a pipe): an `info` log line
//! every [`LOG_EVERY`]. The arithmetic (rate, ETA) is a pure function, tested without a clock.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How often a progress line is logged when stderr is not a terminal.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
const REDRAW_EVERY: Duration = Duration::from_millis(200);

/// Reports progress of one piece of work with a known (or estimated) total, in phases,
/// and of the whole when its size is known ([`Progress::overall`]).
pub struct Progress {
    live: bool,
    started: Instant,
    last_shown: Option<Instant>,
    phase: String,
    drawn: bool,
    /// When the whole began, its size, and what of it was done before this phase.
    whole: Option<Whole>,
}

/// The whole of the work across phases.
#[derive(Debug, Clone, Copy)]
struct Whole {
    started: Instant,
    total: u64,
    done_before: u64,
}

impl Progress {
    /// Chooses live-line or log-line mode from whether stderr is a terminal; `quiet`
    /// suppresses the live line (log lines still follow the log level).
    pub fn new(quiet: bool) -> Progress {
        Progress {
            live: !quiet && std::io::stderr().is_terminal(),
            started: Instant::now(),
            last_shown: None,
            phase: String::new(),
            drawn: false,
            whole: None,
        }
    }

    /// The whole work is `total` objects across the phases that follow, `done` of them
    /// already: the line then also shows the whole's share and an ETA over the whole.
    pub fn overall(&mut self, done: u64, total: u64) {
        let started = self.whole.map_or_else(Instant::now, |w| w.started);
        self.whole = Some(Whole {
            started,
            total,
            done_before: done,
        });
    }

    /// Starts a named phase; the rate is measured from here.
    pub fn phase(&mut self, name: &str) {
        self.finish_line();
        self.phase = name.to_string();
        self.started = Instant::now();
        self.last_shown = None;
    }

    /// Reports `done` of `total` (total 0: unknown).
    pub fn tick(&mut self, done: u64, total: u64) {
        let now = Instant::now();
        let every = if self.live { REDRAW_EVERY } else { LOG_EVERY };
        match self.last_shown {
            Some(t) if now.duration_since(t) < every => return,
            None if !self.live && now.duration_since(self.started) < every => return,
            _ => {}
        }
        self.last_shown = Some(now);
        let mut line = render(&self.phase, done, total, now.duration_since(self.started));
        if let Some(w) = self.whole.filter(|w| w.total > 0) {
            line.push_str("; ");
            line.push_str(&render_whole(
                w.done_before + done,
                w.total,
                now.duration_since(w.started),
            ));
        }
        if self.live {
            crate::logging::live_line(Some(&line));
            self.drawn = true;
        } else {
            log::info!("{line}");
        }
    }

    /// Clears the live line so the next output starts on a clean line.
    pub fn finish_line(&mut self) {
        if self.drawn {
            crate::logging::live_line(None);
            self.drawn = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish_line();
    }
}

/// `phase done/total pct rate ETA` for the given elapsed time.
pub fn render(phase: &str, done: u64, total: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    if total == 0 {
        return format!("{phase}: {done} done, {rate:.0}/s");
    }
    let pct = (done.min(total) * 100) / total;
    let eta = if rate > 0.0 && done < total {
        format_duration(Duration::from_secs_f64((total - done) as f64 / rate))
    } else if done >= total {
        "0 s".to_string()
    } else {
        "unknown".to_string()
    };
    format!("{phase}: {done}/{total} ({pct}%), {rate:.0}/s, ETA {eta}")
}

/// `whole 41%, ETA 7 s`: the share of the whole work done and the time left at the rate
/// of the whole so far (phases differ in speed: the whole's rate is the honest one).
pub fn render_whole(done: u64, total: u64, elapsed: Duration) -> String {
    let done = done.min(total);
    let pct = (done * 100).checked_div(total).unwrap_or(100);
    let secs = elapsed.as_secs_f64();
    let eta = if done >= total {
        "0 s".to_string()
    } else if done > 0 && secs > 0.0 {
        format_duration(Duration::from_secs_f64(
            (total - done) as f64 * secs / done as f64,
        ))
    } else {
        "unknown".to_string()
    };
    format!("whole pass {pct}%, ETA {eta}")
}

/// `42 s`, `3 min 5 s`, `2 h 10 min`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s} s")
    } else if s < 3600 {
        format!("{} min {} s", s / 60, s % 60)
    } else {
        format!("{} h {} min", s / 3600, s % 3600 / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rate_and_eta() {
        let l = render("users", 500, 2000, Duration::from_secs(5));
        assert_eq!(l, "users: 500/2000 (25%), 100/s, ETA 15 s");
        assert_eq!(
            render("scan", 10, 0, Duration::from_secs(2)),
            "scan: 10 done, 5/s"
        );
        assert!(render("x", 0, 10, Duration::ZERO).ends_with("ETA unknown"));
        assert_eq!(format_duration(Duration::from_secs(3725)), "1 h 2 min");
    }

    #[test]
    fn the_whole_has_its_own_share_and_eta() {
        // 1,000 of 10,000 done in 10 s: 90 s to go, whatever the current phase's rate.
        assert_eq!(
            render_whole(1000, 10_000, Duration::from_secs(10)),
            "whole pass 10%, ETA 1 min 30 s"
        );
        assert_eq!(
            render_whole(0, 10, Duration::from_secs(1)),
            "whole pass 0%, ETA unknown"
        );
        assert_eq!(
            render_whole(12, 10, Duration::from_secs(1)),
            "whole pass 100%, ETA 0 s"
        );
    }
}
