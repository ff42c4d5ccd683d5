//! The provisioning log: one JSON line per object operation at the endpoint, in
//! `state_dir/provisioning.jsonl`, so an operator can see what the agent did to each object.
//!
//! Line format: `{"time":"2026-11-25T22:00:00Z","op":"create","kind":"user","anchor":"...",
//! "dn":"...","id":"...","status":"ok","error":null}`. `op` is one of `create`, `replace`,
//! `match`, `deactivate`, `delete`, `hold` (a delete held by the threshold), `fail`, and for
//! writes from the cloud `writeback-create`, `writeback-update`, `writeback-delete`; those
//! lines (and a failed write's `fail`) also name the LDAP attributes written:
//! `"attributes":["title"]` (names, never values).
//!
//! There is one log per process, installed by the command that provisions ([`install`]),
//! like the `log` facade's logger; [`record`] is a no-op before that (dry runs, tests).
//!
//! Rotation by size: when the file would pass `max_bytes`, it is renamed to
//! `provisioning.jsonl.1` (replacing the previous one) and a new file is started, so the log
//! takes at most twice `max_bytes` on disk. Writing is best effort: a failure is logged once
//! and never stops provisioning. No secret ever reaches it (it holds anchors, DNs, SCIM ids
//! and error texts, which are scrubbed of tokens by the SCIM client).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use serde::Serialize;

/// The file name in the state directory.
pub const FILE_NAME: &str = "provisioning.jsonl";
/// Default size at which the log rotates.
pub const DEFAULT_MAX_BYTES: u64 = 10 << 20;

/// One operation.
#[derive(Debug, Clone, Serialize)]
pub struct Entry<'a> {
    /// What was done.
    pub op: &'a str,
    /// `user` or `group`.
    pub kind: &'a str,
    /// The anchor (externalId).
    pub anchor: &'a str,
    /// The directory object.
    pub dn: &'a str,
    /// The SCIM id, when known.
    pub id: Option<&'a str>,
    /// The error, for `fail`.
    pub error: Option<&'a str>,
    /// The LDAP attributes a writeback wrote (or tried to), by name; left out otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attributes: Option<&'a [String]>,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    #[serde(flatten)]
    entry: &'a Entry<'a>,
    status: &'static str,
}

struct Open {
    file: File,
    size: u64,
}

/// The provisioning log of one state directory.
pub struct AuditLog {
    path: PathBuf,
    max_bytes: u64,
    open: Mutex<Option<Open>>,
    warned: AtomicBool,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .finish()
    }
}

impl AuditLog {
    /// The log in `state_dir`, rotating at `max_bytes` (opened on first use).
    pub fn new(state_dir: &Path, max_bytes: u64) -> AuditLog {
        AuditLog {
            path: state_dir.join(FILE_NAME),
            max_bytes: max_bytes.max(4096),
            open: Mutex::new(None),
            warned: AtomicBool::new(false),
        }
    }

    /// Appends one line (best effort).
    pub fn record(&self, e: &Entry<'_>) {
        let line = Line {
            time: crate::logging::utc_now(),
            entry: e,
            status: if e.op == "fail" { "failed" } else { "ok" },
        };
        let mut text = serde_json::to_string(&line).unwrap_or_default();
        text.push('\n');
        if let Err(err) = self.append(text.as_bytes()) {
            if !self.warned.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "cannot write the provisioning log {}: {err} (provisioning goes on)",
                    self.path.display()
                );
            }
        }
    }

    fn append(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut g = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(o) = g.as_ref() {
            if o.size + bytes.len() as u64 > self.max_bytes {
                *g = None;
                fs::rename(&self.path, self.path.with_extension("jsonl.1"))?;
            }
        }
        if g.is_none() {
            let file = crate::state_dir::options()
                .create(true)
                .append(true)
                .open(&self.path)?;
            let size = file.metadata()?.len();
            *g = Some(Open { file, size });
            if size + bytes.len() as u64 > self.max_bytes && size > 0 {
                *g = None;
                fs::rename(&self.path, self.path.with_extension("jsonl.1"))?;
                let file = crate::state_dir::options()
                    .create(true)
                    .append(true)
                    .open(&self.path)?;
                *g = Some(Open { file, size: 0 });
            }
        }
        let o = g.as_mut().expect("opened above");
        o.file.write_all(bytes)?;
        o.size += bytes.len() as u64;
        Ok(())
    }
}

impl AuditLog {
    /// Whether the last operation this log records on the SCIM resource `id` was this
    /// agent deactivating or deleting it while it was anchored at `anchor`: the proof that
    /// a resource holding a userName is one idrelay itself created and later retired (a
    /// rehire, a restore from backup: the object came back with a new anchor). Reads the
    /// log and its rotated predecessor, oldest first; a log rotated past that record, or
    /// unreadable, proves nothing (`false`).
    pub fn retired_by_us(&self, id: &str, anchor: &str) -> bool {
        let mut last: Option<(String, String)> = None;
        for path in [self.path.with_extension("jsonl.1"), self.path.clone()] {
            let Ok(text) = crate::state_dir::read_to_string(&path) else {
                continue;
            };
            for line in text.lines().filter(|l| l.contains(id)) {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                if v["id"].as_str() != Some(id) || v["status"] != "ok" {
                    continue;
                }
                let op = v["op"].as_str().unwrap_or("").to_string();
                let at = v["anchor"].as_str().unwrap_or("").to_string();
                last = Some((op, at));
            }
        }
        matches!(last, Some((op, at)) if (op == "deactivate" || op == "delete") && at == anchor)
    }
}

/// [`AuditLog::retired_by_us`] on the installed log (`false` without one).
pub fn retired_by_us(id: &str, anchor: &str) -> bool {
    GLOBAL.get().is_some_and(|l| l.retired_by_us(id, anchor))
}

static GLOBAL: OnceLock<AuditLog> = OnceLock::new();

/// Installs the process's provisioning log (the first call wins).
pub fn install(log: AuditLog) {
    let _ = GLOBAL.set(log);
}

/// Records one operation in the installed log, if any.
pub fn record(e: &Entry<'_>) {
    if let Some(l) = GLOBAL.get() {
        l.record(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("idrelay-audit-{}", fastrand::u64(..)));
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn entry<'a>(op: &'a str, dn: &'a str) -> Entry<'a> {
        Entry {
            op,
            kind: "user",
            anchor: "a1",
            dn,
            id: Some("id1"),
            error: None,
            attributes: None,
        }
    }

    #[test]
    fn lines_are_json_with_time_and_status() {
        let d = dir();
        let log = AuditLog::new(&d, DEFAULT_MAX_BYTES);
        log.record(&entry("create", "uid=a,dc=x"));
        log.record(&Entry {
            error: Some("409 conflict"),
            ..entry("fail", "uid=b,dc=x")
        });
        let text = fs::read_to_string(d.join(FILE_NAME)).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["op"], "create");
        assert_eq!(lines[0]["status"], "ok");
        assert!(lines[0]["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(lines[1]["status"], "failed");
        assert_eq!(lines[1]["error"], "409 conflict");
        assert!(
            lines[0].get("attributes").is_none(),
            "only writeback names attributes"
        );
        let written = ["title".to_string()];
        log.record(&Entry {
            attributes: Some(&written),
            ..entry("writeback-update", "uid=c,dc=x")
        });
        let text = fs::read_to_string(d.join(FILE_NAME)).unwrap();
        assert!(
            text.lines()
                .nth(2)
                .unwrap()
                .contains(r#""attributes":["title"]"#),
            "{text}"
        );
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn the_log_rotates_by_size_and_keeps_one_old_file() {
        let d = dir();
        let log = AuditLog::new(&d, 4096);
        for i in 0..200 {
            log.record(&entry("replace", &format!("uid=u{i},dc=x")));
        }
        let now = fs::metadata(d.join(FILE_NAME)).unwrap().len();
        let old = fs::metadata(d.join("provisioning.jsonl.1")).unwrap().len();
        assert!(now <= 4096 && old <= 4096, "{now} {old}");
        let last = fs::read_to_string(d.join(FILE_NAME)).unwrap();
        assert!(last.contains("uid=u199,dc=x"));
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn an_unwritable_log_does_not_panic() {
        let log = AuditLog::new(Path::new("/nonexistent/idrelay"), 4096);
        log.record(&entry("create", "uid=a,dc=x"));
    }
    #[test]
    fn a_resource_retired_by_us_is_known_by_its_last_operation() {
        let d = dir();
        let log = AuditLog::new(&d, 1 << 20);
        let op = |op: &'static str, anchor: &'static str, id: &'static str| Entry {
            op,
            kind: "user",
            anchor,
            dn: "uid=a,dc=x",
            id: Some(id),
            error: None,
            attributes: None,
        };
        log.record(&op("create", "old", "id-1"));
        assert!(!log.retired_by_us("id-1", "old"), "created, not retired");
        log.record(&op("deactivate", "old", "id-1"));
        assert!(log.retired_by_us("id-1", "old"));
        assert!(!log.retired_by_us("id-1", "other"), "another anchor");
        assert!(!log.retired_by_us("id-2", "old"), "another resource");
        // Brought back under its own anchor since: no longer retired.
        log.record(&op("replace", "old", "id-1"));
        assert!(!log.retired_by_us("id-1", "old"));
        // A failed delete proves nothing.
        log.record(&Entry {
            error: Some("500"),
            ..op("fail", "old", "id-1")
        });
        assert!(!log.retired_by_us("id-1", "old"));
        log.record(&op("delete", "old", "id-1"));
        assert!(log.retired_by_us("id-1", "old"));
        fs::remove_dir_all(&d).unwrap();
    }
}
