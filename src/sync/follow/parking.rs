//! Parked objects: changes the endpoint refuses are set aside, durably, so that the changes
//! after them flow on (no head-of-line blocking), and are tried again later.
//!
//! When a change is parked: the endpoint refused its object for good (a 4xx other than
//! 408/429, or any other [`Outcome::Failed`](crate::sync::provision::Outcome::Failed)), or
//! kept answering 5xx / failing in transport for it past `sync.max_attempts` tries of the
//! batch machine while the endpoint answered its health probe (an outage is not parked: the
//! sender waits, as before). The queue record is then acknowledged.
//!
//! Invariants:
//! * An entry is durable before the queue record that parked it is acknowledged (the
//!   sender saves this file before each ack, as it does the held deletes).
//! * Per object, order holds: an entry is keyed by the feed's uuid (and its DN); a later
//!   change of the same object (same uuid or DN) re-reads the directory and sends the
//!   current state; when that is done (sent, found in step, deleted, out of scope) the
//!   entry goes; when it fails too, the entry is updated (one entry per object). A delete of
//!   a parked object removes the entry once the delete is handled.
//! * A retry never sends the stale payload: the entry holds no representation, only where
//!   to read the object again (its DN); an object no longer at that DN is dropped (the feed
//!   reports its rename or delete).
//! * Retries come by themselves at `next_at`: 2 min after the first parking, doubling to
//!   6 h, jittered (±20 %); `idrelay retry [DN|--all]` makes entries due now (through
//!   [`RETRY_FILE`] when the agent runs). A full pass clears every entry except those of
//!   objects it failed again, and parks the objects the endpoint refused (keyed by their
//!   anchor and DN until a change of the feed names their uuid).
//! * Bounded: at most [`MAX_PARKED`] entries; past it a refused change is not parked (it is
//!   acknowledged with a warning, as before parking existed, and goes out when it changes
//!   or at the next full pass), and the log says so once.
//!
//! On disk: `parked.json` in the state directory, `{"v":1,"parked":[{...}]}`, replaced
//! atomically (write, fsync, rename), mode 0600. Each entry: `uuid`, `anchor` (the
//! externalId, when the object was mapped), `kind` (`user`/`group`), `dn`, `reason` (the
//! endpoint's status and detail, never a token), `first_at` / `last_at` (unix seconds of
//! the first and the last failed try), `attempts` (tries in all), `rounds` (times parked)
//! and `next_at` (unix seconds of the next try).

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::ldap::dn;

/// The parked objects, in the state directory.
pub const PARKED_FILE: &str = "parked.json";
/// The request `idrelay retry` leaves for a running agent.
pub const RETRY_FILE: &str = "retry-parked.json";
/// Most objects parked at once.
pub const MAX_PARKED: usize = 1000;
/// The wait before the first retry of a parked object; it doubles with each round.
pub const FIRST_WAIT: Duration = Duration::from_secs(120);
/// The longest wait between two retries of a parked object.
pub const LONGEST_WAIT: Duration = Duration::from_secs(6 * 3600);

/// One parked object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parked {
    /// The uuid the feed names the object by.
    pub uuid: String,
    /// Its anchor (externalId), when it was mapped.
    #[serde(default)]
    pub anchor: String,
    /// `user` or `group`.
    pub kind: String,
    /// Where the directory holds it (where a retry reads it).
    pub dn: String,
    /// Why the endpoint did not take it (status and detail).
    pub reason: String,
    /// Unix seconds of the first failed try.
    pub first_at: u64,
    /// Unix seconds of the last failed try.
    pub last_at: u64,
    /// Tries in all.
    pub attempts: u32,
    /// Times parked (the backoff's exponent).
    pub rounds: u32,
    /// Unix seconds of the next try.
    pub next_at: u64,
}

/// What is known about a change being parked.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The feed's uuid.
    pub uuid: String,
    /// The externalId, if mapped.
    pub anchor: String,
    /// `user` or `group`.
    pub kind: &'static str,
    /// The object's DN.
    pub dn: String,
    /// The endpoint's answer.
    pub reason: String,
    /// Tries it took this time.
    pub attempts: u32,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    v: u8,
    parked: Vec<Parked>,
}

/// A retry request left by `idrelay retry` for the running agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RetryRequest {
    /// The DN to retry; none: every parked object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dn: Option<String>,
}

/// Why the parked objects cannot be read or written.
#[derive(Debug)]
pub enum ParkingError {
    /// Reading or writing a file failed.
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a parked list this version reads.
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

impl std::fmt::Display for ParkingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParkingError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            ParkingError::Format { path, detail } => write!(f, "{}: {detail}", path.display()),
        }
    }
}

impl std::error::Error for ParkingError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ParkingError::Io { source, .. } => Some(source),
            ParkingError::Format { .. } => None,
        }
    }
}

impl ParkingError {
    /// The I/O error behind it, if any (a full disk is worth waiting for).
    pub fn io(&self) -> Option<&std::io::Error> {
        match self {
            ParkingError::Io { source, .. } => Some(source),
            ParkingError::Format { .. } => None,
        }
    }
}

/// The parked objects of one state directory, in memory; [`Parking::save`] writes them.
#[derive(Debug)]
pub struct Parking {
    dir: PathBuf,
    entries: Vec<Parked>,
    dirty: bool,
    full_told: bool,
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The wait after the `round`-th parking (1 = the first): [`FIRST_WAIT`] doubling to
/// [`LONGEST_WAIT`], jittered by up to ±20 %.
pub fn backoff(round: u32) -> Duration {
    let doublings = round.saturating_sub(1).min(16);
    let base = FIRST_WAIT
        .saturating_mul(1u32 << doublings)
        .min(LONGEST_WAIT);
    let jitter = 0.8 + fastrand::f64() * 0.4;
    base.mul_f64(jitter)
}

fn same(p: &Parked, uuid: &str, dn_norm: Option<&str>) -> bool {
    p.uuid == uuid || dn_norm.is_some_and(|d| dn::normalize(&p.dn) == d)
}

impl Parking {
    /// No parked objects (nothing read from disk).
    pub fn empty(dir: &Path) -> Parking {
        Parking {
            dir: dir.to_path_buf(),
            entries: Vec::new(),
            dirty: false,
            full_told: false,
        }
    }

    /// The parked objects of the state directory `dir` (none when the file is missing).
    pub fn open(dir: &Path) -> Result<Parking, ParkingError> {
        let path = dir.join(PARKED_FILE);
        let mut p = Parking::empty(dir);
        let bytes = match crate::state_dir::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(p),
            Err(source) => return Err(ParkingError::Io { path, source }),
        };
        let disk: OnDisk = serde_json::from_slice(&bytes).map_err(|e| ParkingError::Format {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        if disk.v != 1 {
            return Err(ParkingError::Format {
                path,
                detail: format!("format version {} (this idrelay reads 1)", disk.v),
            });
        }
        p.entries = disk.parked;
        Ok(p)
    }

    /// Every parked object, oldest first.
    pub fn entries(&self) -> &[Parked] {
        &self.entries
    }

    /// How many objects are parked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is parked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry of the object with this uuid or (normalised) DN, if it is parked.
    pub fn find(&self, uuid: &str, dn_norm: Option<&str>) -> Option<&Parked> {
        self.entries.iter().find(|p| same(p, uuid, dn_norm))
    }

    /// Parks (or parks again) the object `r` names: one entry per object. False when the
    /// list is full and the object was not parked (logged once per run).
    pub fn park(&mut self, r: Refusal, now: u64) -> bool {
        let dn_norm = dn::normalize(&r.dn);
        let at = self
            .entries
            .iter()
            .position(|p| same(p, &r.uuid, Some(&dn_norm)));
        let (uuid, first_at, attempts, rounds) = match at.map(|i| self.entries.remove(i)) {
            // The feed's uuid, once known, stays the key (a full pass knows only the
            // anchor, which it passes as the uuid).
            Some(old) => {
                let uuid = if r.uuid == r.anchor { old.uuid } else { r.uuid };
                (uuid, old.first_at, old.attempts, old.rounds)
            }
            None if self.entries.len() >= MAX_PARKED => {
                if !self.full_told {
                    self.full_told = true;
                    log::warn!(
                        "parking is full ({MAX_PARKED} objects): {} is not parked; it and further refused objects go out when they change or at the next full pass (see `idrelay status`)",
                        r.dn
                    );
                }
                return false;
            }
            None => (r.uuid, now, 0, 0),
        };
        let rounds = rounds.saturating_add(1);
        let wait = backoff(rounds);
        self.entries.push(Parked {
            uuid,
            anchor: r.anchor,
            kind: r.kind.to_string(),
            dn: r.dn,
            reason: r.reason,
            first_at,
            last_at: now,
            attempts: attempts.saturating_add(r.attempts.max(1)),
            rounds,
            next_at: now.saturating_add(wait.as_secs()),
        });
        self.dirty = true;
        true
    }

    /// Removes the entry of the object with this uuid or DN, if any.
    pub fn clear(&mut self, uuid: &str, dn_norm: Option<&str>) -> Option<Parked> {
        let i = self.entries.iter().position(|p| same(p, uuid, dn_norm))?;
        self.dirty = true;
        self.full_told = false;
        Some(self.entries.remove(i))
    }

    /// The entries whose next try has come.
    pub fn due(&self, now: u64) -> Vec<Parked> {
        self.entries
            .iter()
            .filter(|p| p.next_at <= now)
            .cloned()
            .collect()
    }

    /// Makes the entries of `dn` (all when `None`) due now; how many.
    pub fn make_due(&mut self, dn: Option<&str>, now: u64) -> usize {
        let want = dn.map(dn::normalize);
        let mut n = 0;
        for p in &mut self.entries {
            if want.as_ref().is_none_or(|w| dn::normalize(&p.dn) == *w) {
                p.next_at = p.next_at.min(now);
                n += 1;
            }
        }
        if n > 0 {
            self.dirty = true;
        }
        n
    }

    /// Picks up a request `idrelay retry` left: makes what it names due now.
    pub fn take_request(&mut self) {
        let path = self.dir.join(RETRY_FILE);
        let Ok(bytes) = crate::state_dir::read(&path) else {
            return;
        };
        let _ = fs::remove_file(&path);
        match serde_json::from_slice::<RetryRequest>(&bytes) {
            Ok(r) => {
                let n = self.make_due(r.dn.as_deref(), unix_now());
                log::info!(
                    "retry requested for {}: {n} parked {} due now",
                    r.dn.as_deref().unwrap_or("every parked object"),
                    if n == 1 { "object is" } else { "objects are" }
                );
            }
            Err(e) => log::warn!("ignoring {}: {e}", path.display()),
        }
    }

    /// After a complete full pass (which provisioned every object in scope): keeps only
    /// the entries of objects it failed (`failed`: normalised DNs); how many went.
    pub fn keep_failed(&mut self, failed: &HashSet<String>) -> usize {
        let before = self.entries.len();
        self.entries
            .retain(|p| failed.contains(&dn::normalize(&p.dn)));
        let gone = before - self.entries.len();
        if gone > 0 {
            self.dirty = true;
            self.full_told = false;
        }
        gone
    }

    /// Writes the list if it changed (atomically, mode 0600).
    pub fn save(&mut self) -> Result<(), ParkingError> {
        if !self.dirty {
            return Ok(());
        }
        let disk = OnDisk {
            v: 1,
            parked: self.entries.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&disk).unwrap_or_default();
        write_private(&self.dir.join(PARKED_FILE), &bytes)?;
        self.dirty = false;
        Ok(())
    }
}

/// Leaves a retry request for the running agent: `dn`, or every parked object.
pub fn request_retry(dir: &Path, dn: Option<&str>) -> Result<(), ParkingError> {
    let r = RetryRequest {
        dn: dn.map(str::to_string),
    };
    let bytes = serde_json::to_vec(&r).unwrap_or_default();
    write_private(&dir.join(RETRY_FILE), &bytes)
}

/// Lines for `idrelay status`: the count, then the first few with their reasons.
pub fn status_lines(dir: &Path) -> Vec<String> {
    let p = match Parking::open(dir) {
        Ok(p) => p,
        Err(e) => return vec![format!("parked:       unreadable: {e}")],
    };
    if p.is_empty() {
        return vec!["parked:       none".into()];
    }
    let now = unix_now();
    let mut out = vec![format!(
        "parked:       {} {} the endpoint refused; retried with a backoff, now with `idrelay retry --all`",
        p.len(),
        if p.len() == 1 { "object" } else { "objects" }
    )];
    for e in p.entries().iter().take(5) {
        let next = if e.next_at <= now {
            "due now".to_string()
        } else {
            format!(
                "next try in {}",
                crate::sync::progress::format_duration(Duration::from_secs(e.next_at - now))
            )
        };
        out.push(format!(
            "              {} {}: {} ({} tries since {} ago; {next})",
            e.kind,
            e.dn,
            e.reason,
            e.attempts,
            crate::sync::progress::format_duration(Duration::from_secs(
                now.saturating_sub(e.first_at)
            ))
        ));
    }
    if p.len() > 5 {
        out.push(format!("              ... and {} more", p.len() - 5));
    }
    out
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ParkingError> {
    crate::state_dir::replace(path, bytes, crate::state_dir::Durability::Sync).map_err(|source| {
        ParkingError::Io {
            path: path.to_path_buf(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(uuid: &str, anchor: &str, dn: &str, reason: &str) -> Refusal {
        Refusal {
            uuid: uuid.into(),
            anchor: anchor.into(),
            kind: "user",
            dn: dn.into(),
            reason: reason.into(),
            attempts: 1,
        }
    }

    #[test]
    fn one_entry_per_object_and_a_full_pass_keeps_only_what_it_failed() {
        let dir = std::env::temp_dir();
        let mut p = Parking::empty(&dir);
        // Parked by the feed (uuid), then failed by a full pass (anchor, same DN).
        assert!(p.park(refusal("u-1", "u-1", "uid=a,dc=x", "400"), 100));
        assert!(p.park(refusal("xid-1", "xid-1", "UID=A,dc=x", "500"), 200));
        assert!(p.park(refusal("u-2", "u-2", "uid=b,dc=x", "400"), 200));
        assert_eq!(p.len(), 2);
        let a = p.find("u-1", None).expect("keyed by the feed's uuid still");
        assert_eq!(
            (a.first_at, a.last_at, a.attempts, a.rounds),
            (100, 200, 2, 2)
        );
        assert_eq!(a.reason, "500");
        assert!(p.due(200).is_empty());
        assert_eq!(p.make_due(Some("uid=b,DC=x"), 300), 1);
        assert_eq!(p.due(300).len(), 1);
        let failed: HashSet<String> = [dn::normalize("uid=b,dc=x")].into();
        assert_eq!(p.keep_failed(&failed), 1);
        assert!(p.find("u-2", None).is_some());
        assert!(p
            .clear("nope", Some(&dn::normalize("uid=b,dc=x")))
            .is_some());
        assert!(p.is_empty());
    }

    #[test]
    fn the_list_is_bounded() {
        let mut p = Parking::empty(&std::env::temp_dir());
        for i in 0..MAX_PARKED {
            assert!(p.park(refusal(&format!("u{i}"), "", &format!("uid={i}"), "400"), 1));
        }
        assert!(!p.park(refusal("one-more", "", "uid=more", "400"), 1));
        assert_eq!(p.len(), MAX_PARKED);
        // Parking again what is already parked is no new entry: still allowed.
        assert!(p.park(refusal("u7", "", "uid=7", "400"), 2));
    }

    #[test]
    fn the_backoff_grows_from_minutes_to_hours() {
        let b1 = backoff(1);
        assert!(b1 >= Duration::from_secs(96) && b1 <= Duration::from_secs(144));
        let b3 = backoff(3);
        assert!(b3 >= Duration::from_secs(384) && b3 <= Duration::from_secs(576));
        for r in [9, 12, 40, u32::MAX] {
            let b = backoff(r);
            assert!(b <= LONGEST_WAIT.mul_f64(1.2) && b >= LONGEST_WAIT.mul_f64(0.8));
        }
    }
}
