//! Deletions: the one place that decides whether a delete reaches the endpoint now or waits
//! for a human, and the one function that carries a delete out.
//!
//! Why: a mass delete is the costliest mistake a sync agent can make (a wrong filter, an OU
//! moved by accident, a restored backup). So deletes are rationed (DESIGN.md §4):
//! * at most `delete_threshold` deletes go out per `delete_interval` (a sliding window of
//!   the times deletes were admitted, kept on disk so a restart does not reset it);
//! * a full pass that would delete more than the threshold holds *all* of its deletes;
//! * once anything is held, every later delete is held too, until `idrelay approve-deletes`
//!   releases them: a burst is never half applied in the order the feed happened to report;
//! * an object that comes back (restored, moved back into scope) before approval leaves the
//!   held list: approval only deletes what is still gone;
//! * a held object keeps its anchor-index entry, so the next full pass finds it missing
//!   again even if this file were lost.
//!
//! On disk (`held-deletes.json` in the state directory, replaced atomically):
//! `{"v":1,"recent":[unix secs...],"held":[{"x":anchor,"k":"user"|"group","id":scimId,
//! "dn":DN,"why":reason,"at":unix secs}...]}`. Approval from another process (the agent
//! holds the state lock while it runs) is a small file `approve-deletes.json`
//! (`{"count":N,"digest":"hex"}`) naming exactly the held set it approves; a set that
//! changed since is not approved.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::UserDelete;
use crate::scim::client::{ScimClient, ScimError};
use crate::scim::ResourceKind;
use crate::sync::anchors::{Anchor, AnchorIndex};

/// The file holding the window and the held deletes.
pub const HELD_FILE: &str = "held-deletes.json";
/// The file `approve-deletes` writes for a running agent.
pub const APPROVAL_FILE: &str = "approve-deletes.json";

/// One delete that waits for approval (or is about to go out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// The anchor (externalId).
    #[serde(rename = "x")]
    pub anchor: String,
    /// `user` or `group`.
    #[serde(rename = "k", with = "kind_word")]
    pub kind: ResourceKind,
    /// The SCIM id at the endpoint.
    #[serde(rename = "id")]
    pub scim_id: String,
    /// The DN it had when last sent.
    pub dn: String,
    /// Why it is being deleted ("deleted in the directory", "moved out of scope", ...).
    #[serde(rename = "why")]
    pub reason: String,
    /// When it was held (unix seconds; 0 while not held).
    #[serde(rename = "at", default)]
    pub held_at: u64,
}

mod kind_word {
    use crate::scim::ResourceKind;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(k: &ResourceKind, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(k.word())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ResourceKind, D::Error> {
        match String::deserialize(d)?.as_str() {
            "user" => Ok(ResourceKind::User),
            "group" => Ok(ResourceKind::Group),
            other => Err(serde::de::Error::custom(format!("unknown kind `{other}`"))),
        }
    }
}

/// What the gate decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the delete(s) now.
    Go,
    /// Held for approval (already recorded in the held list).
    Held,
}

/// The threshold and window.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Deletes allowed per window (0: every delete waits for approval).
    pub threshold: u32,
    /// The window.
    pub interval: Duration,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    v: u8,
    #[serde(default)]
    recent: VecDeque<u64>,
    #[serde(default)]
    held: Vec<Target>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Approval {
    count: usize,
    digest: String,
}

/// Errors reading or writing the gate's files.
#[derive(Debug)]
pub enum GateError {
    /// Reading or writing a file failed.
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file is not what this version writes.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

impl std::fmt::Display for GateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GateError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            GateError::Corrupt { path, detail } => write!(
                f,
                "{}: {detail} (move it away to start over; held deletes are found again by the next full pass)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for GateError {}

/// The delete gate of one state directory.
#[derive(Debug)]
pub struct DeleteGate {
    dir: PathBuf,
    policy: Policy,
    state: File,
    dirty: bool,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl DeleteGate {
    /// Loads the gate of `state_dir` (a missing file is an empty gate; a corrupt one is an
    /// error: it may hold deletes a human has not seen yet).
    pub fn open(state_dir: &Path, policy: Policy) -> Result<DeleteGate, GateError> {
        let path = state_dir.join(HELD_FILE);
        let state = match fs::read(&path) {
            Ok(bytes) => {
                let f: File = serde_json::from_slice(&bytes).map_err(|e| GateError::Corrupt {
                    path: path.clone(),
                    detail: format!("not readable: {e}"),
                })?;
                if f.v != 1 {
                    return Err(GateError::Corrupt {
                        path,
                        detail: format!("format version {} is not 1", f.v),
                    });
                }
                f
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => File {
                v: 1,
                ..File::default()
            },
            Err(source) => return Err(GateError::Io { path, source }),
        };
        Ok(DeleteGate {
            dir: state_dir.to_path_buf(),
            policy,
            state,
            dirty: false,
        })
    }

    /// The deletes waiting for approval.
    pub fn held(&self) -> &[Target] {
        &self.state.held
    }

    /// Whether the delete of `anchor` waits for approval.
    pub fn is_held(&self, anchor: &str) -> bool {
        self.state.held.iter().any(|h| h.anchor == anchor)
    }

    /// Deletes admitted in the current window.
    pub fn recent(&self) -> usize {
        self.state.recent.len()
    }

    fn prune(&mut self, now: u64) {
        let horizon = now.saturating_sub(self.policy.interval.as_secs());
        while self.state.recent.front().is_some_and(|&t| t <= horizon) {
            self.state.recent.pop_front();
            self.dirty = true;
        }
    }

    /// Decides about `targets` as one unit (a full pass's deletes, or one feed delete): all
    /// go, or all are held. Held targets are recorded; call [`DeleteGate::save`] before
    /// acknowledging the changes that produced them.
    pub fn admit(&mut self, targets: Vec<Target>) -> Verdict {
        self.admit_at(targets, now_secs())
    }

    fn admit_at(&mut self, targets: Vec<Target>, now: u64) -> Verdict {
        if targets.is_empty() {
            return Verdict::Go;
        }
        self.prune(now);
        let fits = self.state.recent.len() + targets.len() <= self.policy.threshold as usize;
        if self.state.held.is_empty() && fits {
            self.state
                .recent
                .extend(std::iter::repeat_n(now, targets.len()));
            self.dirty = true;
            return Verdict::Go;
        }
        for mut t in targets {
            if self.state.held.iter().any(|h| h.anchor == t.anchor) {
                continue;
            }
            crate::sync::audit::record(&crate::sync::audit::Entry {
                op: "hold",
                kind: t.kind.word(),
                anchor: &t.anchor,
                dn: &t.dn,
                id: Some(&t.scim_id),
                error: Some(&t.reason),
                attributes: None,
            });
            t.held_at = now;
            self.state.held.push(t);
        }
        self.dirty = true;
        Verdict::Held
    }

    /// Gives back `n` admissions whose deletes did not go out (they will be admitted again).
    pub fn refund(&mut self, n: usize) {
        for _ in 0..n {
            if self.state.recent.pop_back().is_none() {
                break;
            }
            self.dirty = true;
        }
    }

    /// The object came back (seen in scope again): it is no longer to be deleted.
    pub fn unhold(&mut self, anchor: &str) -> bool {
        let before = self.state.held.len();
        self.state.held.retain(|h| h.anchor != anchor);
        let changed = self.state.held.len() != before;
        self.dirty |= changed;
        changed
    }

    /// Takes the whole held list (approved): the caller deletes them and saves.
    pub fn release_all(&mut self) -> Vec<Target> {
        self.dirty = true;
        std::mem::take(&mut self.state.held)
    }

    /// A fingerprint of the held set, so an approval names exactly what it approves.
    pub fn digest(&self) -> String {
        let mut anchors: Vec<&str> = self.state.held.iter().map(|h| h.anchor.as_str()).collect();
        anchors.sort_unstable();
        let text = anchors.join("\n");
        format!(
            "{:016x}",
            crate::sync::anchors::representation_hash(&serde_json::Value::String(text))
        )
    }

    /// Writes an approval of the current held set for the running agent to pick up.
    pub fn write_approval(&self) -> Result<(), GateError> {
        let a = Approval {
            count: self.state.held.len(),
            digest: self.digest(),
        };
        let bytes = serde_json::to_vec(&a).unwrap_or_default();
        write_atomic(&self.dir.join(APPROVAL_FILE), &bytes)
    }

    /// Picks up an approval written by `approve-deletes`: returns the released targets if
    /// it names the current held set. A stale approval is removed with a warning.
    pub fn take_approval(&mut self) -> Option<Vec<Target>> {
        let path = self.dir.join(APPROVAL_FILE);
        let bytes = fs::read(&path).ok()?;
        let _ = fs::remove_file(&path);
        let approval: Approval = match serde_json::from_slice(&bytes) {
            Ok(a) => a,
            Err(e) => {
                log::warn!("ignoring {}: {e}", path.display());
                return None;
            }
        };
        if approval.count != self.state.held.len() || approval.digest != self.digest() {
            log::warn!(
                "an approval for {} held deletes arrived, but the held set changed since ({} now); run approve-deletes again",
                approval.count,
                self.state.held.len()
            );
            return None;
        }
        log::info!("{} held deletes approved; sending them", approval.count);
        Some(self.release_all())
    }

    /// Writes the gate if it changed.
    pub fn save(&mut self) -> Result<(), GateError> {
        if !self.dirty {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&self.state).unwrap_or_default();
        write_atomic(&self.dir.join(HELD_FILE), &bytes)?;
        self.dirty = false;
        Ok(())
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), GateError> {
    let err = |source| GateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    fs::rename(&tmp, path).map_err(err)?;
    if let Some(parent) = path.parent() {
        if let Ok(d) = fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Carries one delete out at the endpoint: users are deactivated or deleted per
/// `user_delete`, groups deleted. A resource already gone (404) counts as done.
pub async fn execute(
    scim: &ScimClient,
    user_delete: UserDelete,
    t: &Target,
) -> Result<&'static str, ScimError> {
    let (result, word) = match (t.kind, user_delete) {
        (ResourceKind::User, UserDelete::Deactivate) => {
            let ops = vec![serde_json::json!({"op": "replace", "path": "active", "value": false})];
            (scim.patch(t.kind, &t.scim_id, ops).await, "deactivated")
        }
        _ => (scim.delete(t.kind, &t.scim_id).await, "deleted"),
    };
    let result = match result {
        Ok(()) => Ok(word),
        Err(e) if e.status() == Some(404) => Ok("already gone"),
        Err(e) => Err(e),
    };
    let error = result.as_ref().err().map(|e| e.to_string());
    if !matches!(&result, Err(e) if e.is_transient()) {
        crate::sync::audit::record(&crate::sync::audit::Entry {
            op: match (&result, word) {
                (Err(_), _) => "fail",
                (Ok(_), "deactivated") => "deactivate",
                _ => "delete",
            },
            kind: t.kind.word(),
            anchor: &t.anchor,
            dn: &t.dn,
            id: Some(&t.scim_id),
            error: error.as_deref(),
            attributes: None,
        });
    }
    result
}

/// What [`settle`] did with a set of deletes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Settled {
    /// Deactivated or deleted at the endpoint (or found gone).
    pub sent: u64,
    /// Held for approval.
    pub held: u64,
    /// Failed: `(dn, reason)`; they stay in the anchor index and come back next pass.
    pub failed: Vec<(String, String)>,
}

/// Puts `targets` through the gate as one unit and sends them if it lets them go; held
/// ones are logged. Sent ones leave the anchor index. A dry run prints one JSON line per
/// delete (`{"method":"DELETE"|"PATCH",...}`) and changes nothing.
pub async fn settle(
    scim: &ScimClient,
    gate: &mut DeleteGate,
    index: &mut AnchorIndex,
    user_delete: UserDelete,
    targets: Vec<Target>,
    dry_run: bool,
) -> Settled {
    let mut out = Settled::default();
    if targets.is_empty() {
        return out;
    }
    if dry_run {
        for t in &targets {
            print_dry_run(t, user_delete);
        }
        return out;
    }
    let n = targets.len();
    if gate.admit(targets.clone()) == Verdict::Held {
        out.held = n as u64;
        log::warn!(
            "{n} deletes held for approval ({} held in all; threshold {} per {} s): nothing is deleted until `idrelay approve-deletes`; first: {} ({})",
            gate.held().len(),
            gate.policy.threshold,
            gate.policy.interval.as_secs(),
            targets[0].dn,
            targets[0].reason
        );
        return out;
    }
    for t in targets {
        send_one(scim, index, user_delete, &t, &mut out).await;
    }
    out
}

/// Sends deletes that were approved (they passed the gate already).
pub async fn send_approved(
    scim: &ScimClient,
    index: &mut AnchorIndex,
    user_delete: UserDelete,
    targets: Vec<Target>,
) -> Settled {
    let mut out = Settled::default();
    for t in targets {
        send_one(scim, index, user_delete, &t, &mut out).await;
    }
    out
}

async fn send_one(
    scim: &ScimClient,
    index: &mut AnchorIndex,
    user_delete: UserDelete,
    t: &Target,
    out: &mut Settled,
) {
    match execute(scim, user_delete, t).await {
        Ok(word) => {
            log::info!(
                "{} {} ({}): {word} at the endpoint",
                t.kind.word(),
                t.dn,
                t.reason
            );
            index.remove(&t.anchor);
            out.sent += 1;
        }
        Err(e) => {
            log::warn!("{} {}: delete failed: {e}", t.kind.word(), t.dn);
            out.failed.push((t.dn.clone(), e.to_string()));
        }
    }
}

fn print_dry_run(t: &Target, user_delete: UserDelete) {
    let method = match (t.kind, user_delete) {
        (ResourceKind::User, UserDelete::Deactivate) => "PATCH",
        _ => "DELETE",
    };
    let line = serde_json::json!({
        "method": method,
        "path": format!("/{}/{}", t.kind.endpoint(), t.scim_id),
        "externalId": t.anchor,
        "dn": t.dn,
        "reason": t.reason,
    });
    let mut s = line.to_string();
    s.push('\n');
    let _ = std::io::stdout().lock().write_all(s.as_bytes());
}

impl Target {
    /// The delete of an indexed object.
    pub fn of(anchor: &str, a: &Anchor, reason: &str) -> Target {
        Target {
            anchor: anchor.to_string(),
            kind: a.kind,
            scim_id: a.scim_id.clone(),
            dn: a.dn.clone(),
            reason: reason.to_string(),
            held_at: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(n: usize) -> Target {
        Target {
            anchor: format!("a{n}"),
            kind: ResourceKind::User,
            scim_id: format!("id{n}"),
            dn: format!("uid=u{n},ou=people,dc=x"),
            reason: "deleted in the directory".into(),
            held_at: 0,
        }
    }

    fn gate(threshold: u32) -> (tempdir::Dir, DeleteGate) {
        let d = tempdir::Dir::new();
        let g = DeleteGate::open(
            d.path(),
            Policy {
                threshold,
                interval: Duration::from_secs(3600),
            },
        )
        .unwrap();
        (d, g)
    }

    mod tempdir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let p = std::env::temp_dir().join(format!(
                    "idrelay-deletes-{}-{}",
                    std::process::id(),
                    fastrand::u64(..)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn deletes_within_the_threshold_go_and_count() {
        let (_d, mut g) = gate(3);
        assert_eq!(g.admit_at(vec![target(1)], 100), Verdict::Go);
        assert_eq!(g.admit_at(vec![target(2), target(3)], 101), Verdict::Go);
        assert_eq!(g.recent(), 3);
        assert!(g.held().is_empty());
    }

    #[test]
    fn the_delete_over_the_threshold_and_every_later_one_is_held() {
        let (_d, mut g) = gate(2);
        assert_eq!(g.admit_at(vec![target(1), target(2)], 100), Verdict::Go);
        assert_eq!(g.admit_at(vec![target(3)], 101), Verdict::Held);
        // The window has passed, but something is held: later deletes wait behind it.
        assert_eq!(g.admit_at(vec![target(4)], 100 + 7200), Verdict::Held);
        assert_eq!(g.held().len(), 2);
    }

    #[test]
    fn a_pass_over_the_threshold_holds_all_its_deletes() {
        let (_d, mut g) = gate(5);
        let batch: Vec<Target> = (0..6).map(target).collect();
        assert_eq!(g.admit_at(batch, 100), Verdict::Held);
        assert_eq!(g.held().len(), 6);
        assert_eq!(g.recent(), 0);
    }

    #[test]
    fn threshold_zero_holds_every_delete() {
        let (_d, mut g) = gate(0);
        assert_eq!(g.admit_at(vec![target(1)], 100), Verdict::Held);
    }

    #[test]
    fn the_window_slides() {
        let (_d, mut g) = gate(1);
        assert_eq!(g.admit_at(vec![target(1)], 100), Verdict::Go);
        assert_eq!(g.admit_at(vec![target(2)], 100 + 3601), Verdict::Go);
    }

    #[test]
    fn holding_the_same_anchor_twice_keeps_one_entry() {
        let (_d, mut g) = gate(0);
        g.admit_at(vec![target(1)], 100);
        g.admit_at(vec![target(1)], 200);
        assert_eq!(g.held().len(), 1);
    }

    #[test]
    fn an_object_that_comes_back_leaves_the_held_list() {
        let (_d, mut g) = gate(0);
        g.admit_at(vec![target(1), target(2)], 100);
        assert!(g.unhold("a1"));
        assert!(!g.unhold("a1"));
        assert_eq!(g.held().len(), 1);
    }

    #[test]
    fn held_deletes_and_the_window_survive_a_restart() {
        let (d, mut g) = gate(1);
        g.admit_at(vec![target(1)], now_secs());
        g.admit_at(vec![target(2)], now_secs());
        g.save().unwrap();
        let g2 = DeleteGate::open(
            d.path(),
            Policy {
                threshold: 1,
                interval: Duration::from_secs(3600),
            },
        )
        .unwrap();
        assert_eq!(g2.held(), g.held());
        assert_eq!(g2.recent(), 1);
    }

    #[test]
    fn an_approval_releases_exactly_the_set_it_names() {
        let (_d, mut g) = gate(0);
        g.admit_at(vec![target(1), target(2)], 100);
        g.write_approval().unwrap();
        let released = g.take_approval().unwrap();
        assert_eq!(released.len(), 2);
        assert!(g.held().is_empty());
        assert!(g.take_approval().is_none(), "the approval is used once");
    }

    #[test]
    fn a_stale_approval_releases_nothing() {
        let (_d, mut g) = gate(0);
        g.admit_at(vec![target(1)], 100);
        g.write_approval().unwrap();
        g.admit_at(vec![target(2)], 101);
        assert!(g.take_approval().is_none());
        assert_eq!(g.held().len(), 2);
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let (d, _g) = gate(1);
        std::fs::write(d.path().join(HELD_FILE), b"{not json").unwrap();
        let e = DeleteGate::open(
            d.path(),
            Policy {
                threshold: 1,
                interval: Duration::from_secs(60),
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains(HELD_FILE), "{e}");
    }
}
