//! Deletions: the one place that decides whether a delete reaches the endpoint now or waits
//! for a human, and the one function that carries a delete out.
//!
//! Why: a mass delete is the costliest mistake a sync agent can make (a wrong filter, an OU
//! moved by accident, a restored backup). So deletes are rationed (docs/architecture.md §4):
//! * at most `delete_threshold` deletes go out per `delete_interval` (a sliding window of
//!   the times deletes were admitted, kept on disk so a restart does not reset it);
//! * a full pass that would delete more than the threshold holds *all* of its deletes;
//! * in `run`, a delete (or a scope exit) first waits a settle window
//!   (`sync.delete_settle_secs`, from the oldest waiting one) in the gate's `pending` list,
//!   durably, so that its change can be acknowledged and later changes flow; when the
//!   window closes, everything that arrived in it is weighed as one burst (with the
//!   window's earlier admissions and what is held already): all of it goes, or all of it is
//!   held. A burst that a change feed reports over many queue reads is judged whole. A
//!   later change of the same object (re-added, modified, back in scope) withdraws its
//!   pending delete. Admitted deletes move to `going` (in the same write as the window's
//!   count), so an agent killed while sending them sends the rest after its restart
//!   without weighing them again; a resend of one that had landed finds it gone (404);
//! * once anything is held, every later delete is held too, until `idrelay approve-deletes`
//!   releases them: a burst is never half applied in the order the feed happened to report;
//! * an object that comes back (restored, moved back into scope) before approval leaves the
//!   held list: approval only deletes what is still gone;
//! * a held object keeps its anchor-index entry, so the next full pass finds it missing
//!   again even if this file were lost.
//!
//! Which object a change feed's delete names ([`find_deleted`]): the feed gives a uuid (and
//! often the DN the object had), the index knows anchors. A delete matches the object whose
//! anchor is any text form of that uuid ([`uuid_forms`]: a directory names its objects by
//! 16 bytes that the anchor attribute may write differently, e.g. 389-DS's nsUniqueId), else
//! the object last sent under its DN, which is deleted only once the directory confirms that
//! no entry holds its anchor any more (the caller's check: a DN can be reused, a uuid
//! cannot). A delete that matches nothing is never dropped silently: the caller logs it and
//! the gate counts it ([`DeleteGate::note_unmatched`], shown by `idrelay status`).
//!
//! On disk (`held-deletes.json` in the state directory, replaced atomically):
//! `{"v":1,"recent":[unix secs...],"held":[{"x":anchor,"k":"user"|"group","id":scimId,
//! "dn":DN,"why":reason,"at":unix secs}...],"pending":[target...],"going":[target...],
//! "unmatched":N,"last_unmatched":{"uuid":uuid,"dn":DN,"at":unix secs}}` (`at` of a pending
//! target: when it arrived; `pending` and `going` only while not empty, the last two only
//! once a delete matched nothing; older versions ignore them). Approval from another process (the agent
//! holds the state lock while it runs) is a small file `approve-deletes.json`
//! (`{"count":N,"digest":"hex"}`) naming exactly the held set it approves; a set that
//! changed since is not approved.

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::scim::client::{ScimClient, ScimError};
use crate::scim::ResourceKind;
use crate::sync::anchors::{Anchor, AnchorIndex};

/// What happens at the endpoint when a user is deleted in the directory or leaves scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserDelete {
    /// PATCH `active: false` (the default: reversible).
    Deactivate,
    /// DELETE the resource.
    Delete,
}

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
    /// Deletes allowed per window as a share of the objects in scope, in percent (0: no
    /// share rule). A count alone does not protect a small branch: 13 users are far below
    /// any count that suits 50,000.
    pub share_percent: u32,
    /// The share rule holds nothing up to this many deletes (a 3-user branch may lose one).
    pub floor: u32,
}

impl Policy {
    /// Whether `n` deletes in a window fit a scope of `scope` objects: within the count,
    /// and within the share of the scope unless at most `floor`.
    pub fn fits(&self, n: usize, scope: usize) -> bool {
        let within_count = n <= self.threshold as usize;
        let within_share = self.share_percent == 0
            || n <= self.floor as usize
            || (n as u128) * 100 <= (self.share_percent as u128) * (scope as u128);
        within_count && within_share
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    v: u8,
    #[serde(default)]
    recent: VecDeque<u64>,
    #[serde(default)]
    held: Vec<Target>,
    /// Deletes waiting for their settle window to close (`at`: when each arrived).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pending: Vec<Target>,
    /// Deletes admitted and not yet carried out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    going: Vec<Target>,
    #[serde(default, skip_serializing_if = "is_zero")]
    unmatched: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_unmatched: Option<Unmatched>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The last feed delete that matched no provisioned object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unmatched {
    /// The uuid the feed gave.
    pub uuid: String,
    /// The DN it gave with it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dn: Option<String>,
    /// When (unix seconds).
    pub at: u64,
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

/// A snapshot of the gate's rule ([`DeleteGate::hold_check`]).
#[derive(Debug, Clone, Copy)]
pub struct HoldCheck {
    policy: Policy,
    recent: usize,
    held: usize,
    scope: usize,
}

impl HoldCheck {
    /// Whether admitting `n` more deletes would hold them: something is held already, or
    /// the window would pass the count or the share of the scope.
    pub fn would_hold(&self, n: usize) -> bool {
        n > 0 && (self.held > 0 || !self.policy.fits(self.recent + n, self.scope))
    }

    /// Why [`HoldCheck::would_hold`] holds `n` deletes, in words for the log.
    pub fn reason(&self, n: usize) -> String {
        let total = self.recent + n;
        if self.held > 0 {
            format!("{} deletes are already held", self.held)
        } else if total > self.policy.threshold as usize {
            format!(
                "{total} deletes within {} s pass sync.delete_threshold = {}",
                self.policy.interval.as_secs(),
                self.policy.threshold
            )
        } else {
            format!(
                "{total} deletes are more than sync.delete_threshold_percent = {} % of the {} objects in scope",
                self.policy.share_percent, self.scope
            )
        }
    }
}

/// The delete gate of one state directory.
#[derive(Debug)]
pub struct DeleteGate {
    dir: PathBuf,
    policy: Policy,
    state: File,
    dirty: bool,
    /// Objects in scope (the anchor index's size) the share rule weighs against.
    scope: usize,
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
        let state = match crate::state_dir::read(&path) {
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
            scope: 0,
        })
    }

    /// How many objects are in scope (provisioned): the share rule's base. Until it is
    /// set, every delete weighs as if the scope were empty, so only the floor admits any.
    pub fn set_scope(&mut self, objects: usize) {
        self.scope = objects;
    }

    /// What the gate would decide now, as a value a pass can carry while the gate itself
    /// stays free for the deletes at its end.
    pub fn hold_check(&self) -> HoldCheck {
        HoldCheck {
            policy: self.policy,
            recent: self.recent(),
            held: self.state.held.len(),
            scope: self.scope,
        }
    }

    /// Why admitting `n` deletes now would hold them, in words for the log.
    pub fn hold_reason(&self, n: usize) -> String {
        self.hold_check().reason(n)
    }

    /// The deletes waiting for approval.
    pub fn held(&self) -> &[Target] {
        &self.state.held
    }

    /// Whether the delete of `anchor` waits for approval.
    pub fn is_held(&self, anchor: &str) -> bool {
        self.state.held.iter().any(|h| h.anchor == anchor)
    }

    /// Records a feed delete that matched no provisioned object (see the module doc); the
    /// caller has logged it. Durable with the next [`DeleteGate::save`], which comes before
    /// the delete is acknowledged.
    pub fn note_unmatched(&mut self, uuid: &str, dn: Option<&str>) {
        self.state.unmatched += 1;
        self.state.last_unmatched = Some(Unmatched {
            uuid: uuid.to_string(),
            dn: dn.map(str::to_string),
            at: now_secs(),
        });
        self.dirty = true;
    }

    /// How many feed deletes matched no provisioned object (since the state directory was
    /// created), and the last one.
    pub fn unmatched(&self) -> (u64, Option<&Unmatched>) {
        (self.state.unmatched, self.state.last_unmatched.as_ref())
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
        let fits = self
            .policy
            .fits(self.state.recent.len() + targets.len(), self.scope);
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

    /// Puts a delete into the settle window (see the module doc): weighed with the rest of
    /// its window by [`DeleteGate::close_window`]. Nothing happens when the object's delete
    /// is already held, waiting or going. Durable with the next [`DeleteGate::save`], which
    /// comes before the change that caused it is acknowledged.
    pub fn defer(&mut self, target: Target) -> bool {
        self.defer_at(target, now_secs())
    }

    fn defer_at(&mut self, mut target: Target, now: u64) -> bool {
        let anchor = target.anchor.as_str();
        let known = |list: &[Target]| list.iter().any(|t| t.anchor == anchor);
        if known(&self.state.held) || known(&self.state.pending) || known(&self.state.going) {
            return false;
        }
        target.held_at = now;
        self.state.pending.push(target);
        self.dirty = true;
        true
    }

    /// A later change of the object came (re-added, modified, back in scope): its waiting
    /// delete is withdrawn. Whether there was one.
    pub fn withdraw(&mut self, anchor: &str) -> bool {
        let before = self.state.pending.len();
        self.state.pending.retain(|t| t.anchor != anchor);
        let changed = self.state.pending.len() != before;
        self.dirty |= changed;
        changed
    }

    /// The deletes waiting for their settle window.
    pub fn pending(&self) -> &[Target] {
        &self.state.pending
    }

    /// When the current settle window closes (unix seconds): at least `settle` after the
    /// oldest waiting delete arrived (times are whole seconds, so one more), at once when
    /// `settle` is zero.
    pub fn window_closes_at(&self, settle: Duration) -> Option<u64> {
        let oldest = self.state.pending.iter().map(|t| t.held_at).min()?;
        let secs = settle.as_secs();
        Some(oldest.saturating_add(if secs == 0 { 0 } else { secs + 1 }))
    }

    /// Weighs the waiting deletes as one burst if their window closed by `now`: admitted,
    /// they move to [`DeleteGate::going`]; else all are held. `None` while the window is
    /// open (or nothing waits).
    pub fn close_window(&mut self, settle: Duration, now: u64) -> Option<(Verdict, usize)> {
        if self.window_closes_at(settle)? > now {
            return None;
        }
        let burst: Vec<Target> = std::mem::take(&mut self.state.pending)
            .into_iter()
            .map(|mut t| {
                t.held_at = 0;
                t
            })
            .collect();
        self.dirty = true;
        let n = burst.len();
        let verdict = self.admit_at(burst.clone(), now);
        if verdict == Verdict::Go {
            self.state.going.extend(burst);
        }
        Some((verdict, n))
    }

    /// Deletes admitted and not yet carried out (oldest first).
    pub fn going(&self) -> &[Target] {
        &self.state.going
    }

    /// An admitted delete was carried out (or failed for good): it leaves the list.
    pub fn gone(&mut self, anchor: &str) {
        let before = self.state.going.len();
        self.state.going.retain(|t| t.anchor != anchor);
        self.dirty |= self.state.going.len() != before;
    }

    /// Drops the deletes waiting in the settle window or going out: a full pass is about to
    /// find every object that is gone again (each stays in the anchor index until its
    /// delete is carried out) and weigh them itself.
    pub fn forget_waiting(&mut self) -> usize {
        let n = self.state.pending.len() + self.state.going.len();
        if n > 0 {
            self.state.pending.clear();
            self.state.going.clear();
            self.dirty = true;
        }
        n
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
        let bytes = crate::state_dir::read(&path).ok()?;
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
    crate::state_dir::replace(path, bytes, crate::state_dir::Durability::Sync).map_err(err)
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
            (
                scim.patch(t.kind, &t.scim_id, ops).await.map(drop),
                "deactivated",
            )
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
/// ones are logged. Sent ones leave the anchor index. A dry run weighs them as the real
/// pass would (without recording anything in the gate), prints one line per object
/// (`deactivate`, `delete` or `hold` with the reason; with `json`, one JSON line per
/// delete it would send, `{"method":"DELETE"|"PATCH",...}`), counts them as the real pass
/// would, and changes nothing.
pub async fn settle(
    scim: &ScimClient,
    gate: &mut DeleteGate,
    index: &mut AnchorIndex,
    user_delete: UserDelete,
    targets: Vec<Target>,
    (dry_run, json): (bool, bool),
) -> Settled {
    let mut out = Settled::default();
    if targets.is_empty() {
        return out;
    }
    if dry_run {
        let n = targets.len();
        let held = gate.hold_check().would_hold(n);
        let why = held.then(|| format!("held for approval: {}", gate.hold_reason(n)));
        for t in &targets {
            if json {
                if !held {
                    print_dry_run(t, user_delete);
                }
                continue;
            }
            let op = match (held, t.kind, user_delete) {
                (true, _, _) => crate::sync::diff::Op::Hold,
                (_, ResourceKind::User, UserDelete::Deactivate) => {
                    crate::sync::diff::Op::Deactivate
                }
                _ => crate::sync::diff::Op::Delete,
            };
            let note = why.clone().unwrap_or_else(|| t.reason.clone());
            crate::stdout::write(format_args!(
                "{}",
                crate::sync::diff::render(
                    op,
                    t.kind.word(),
                    &t.dn,
                    Some(&t.scim_id),
                    Some(&note),
                    &[]
                )
            ));
        }
        if held {
            out.held = n as u64;
        } else {
            out.sent = n as u64;
        }
        return out;
    }
    let n = targets.len();
    let why = gate.hold_reason(n);
    if gate.admit(targets.clone()) == Verdict::Held {
        out.held = n as u64;
        log::warn!(
            "{n} deletes held for approval ({why}; {} held in all): nothing is deleted until `idrelay approve-deletes`; first: {} ({})",
            gate.held().len(),
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

/// A delete the endpoint carried out: logged, and the object leaves the anchor index.
pub fn landed(index: &mut AnchorIndex, t: &Target, word: &str) {
    log::info!(
        "{} {} ({}): {word} at the endpoint",
        t.kind.word(),
        t.dn,
        t.reason
    );
    index.remove(&t.anchor);
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
            landed(index, t, word);
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
    crate::stdout::write_bytes(s.as_bytes());
}

/// How a feed's delete found the object it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchedBy {
    /// The object's anchor is a form of the delete's uuid: the directory named the object.
    Uuid,
    /// The object was last sent under the delete's DN. A DN can be reused (deleted, then
    /// created again; renamed away, then taken by another object): delete the object only
    /// once the directory confirms that no entry holds its anchor.
    Dn,
}

/// The indexed object a feed's delete names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its anchor (externalId).
    pub anchor: String,
    /// What the index holds for it.
    pub object: Anchor,
    /// How it was found.
    pub by: MatchedBy,
}

/// The indexed object a feed's delete of `uuid` (with the DN `dn`, when the feed sent one)
/// names: by any form of the uuid ([`uuid_forms`]), else by the DN.
pub fn find_deleted(index: &AnchorIndex, uuid: &str, dn: Option<&str>) -> Option<Found> {
    for form in uuid_forms(uuid) {
        if let Some(object) = index.get_any(&form) {
            return Some(Found {
                anchor: form,
                object,
                by: MatchedBy::Uuid,
            });
        }
    }
    let (anchor, object) = index.by_dn(dn?)?;
    Some(Found {
        anchor,
        object,
        by: MatchedBy::Dn,
    })
}

/// Every text an anchor may have for the object a feed names by `uuid`: `uuid` itself
/// first, then, when it is one of the forms of 16 bytes ([`uuid_bytes`]), each form of
/// those bytes: standard `8-4-4-4-12` (OpenLDAP's entryUUID), 389-DS's nsUniqueId
/// `8-8-8-8`, 32 hex digits (each of these in lower and upper case), and standard base64
/// (a binary anchor, such as AD's objectGUID). No duplicates, deterministic order.
pub fn uuid_forms(uuid: &str) -> Vec<String> {
    let mut forms = vec![uuid.to_string()];
    if let Some(b) = uuid_bytes(uuid) {
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        let standard = format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        );
        let ns_unique_id = format!(
            "{}-{}-{}-{}",
            &hex[..8],
            &hex[8..16],
            &hex[16..24],
            &hex[24..]
        );
        for text in [standard, ns_unique_id, hex] {
            let upper = text.to_ascii_uppercase();
            forms.push(text);
            forms.push(upper);
        }
        forms.push(crate::base64::encode(&b));
    }
    let mut seen = std::collections::HashSet::new();
    forms.retain(|f| seen.insert(f.clone()));
    forms
}

/// The 16 bytes `s` writes, if it is one of: standard UUID text `8-4-4-4-12`, nsUniqueId
/// text `8-8-8-8`, 32 hex digits (hex in any case), or standard base64 of 16 bytes.
pub fn uuid_bytes(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    let dashes_at = |at: &[usize]| {
        b.iter()
            .enumerate()
            .all(|(i, &c)| (c == b'-') == at.contains(&i))
    };
    let digits: Vec<u8> = match b.len() {
        36 if dashes_at(&[8, 13, 18, 23]) => b.iter().copied().filter(|&c| c != b'-').collect(),
        35 if dashes_at(&[8, 17, 26]) => b.iter().copied().filter(|&c| c != b'-').collect(),
        32 => b.to_vec(),
        24 => {
            let raw = crate::base64::decode(s).ok()?;
            return raw.try_into().ok();
        }
        _ => return None,
    };
    let mut out = [0u8; 16];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
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

    /// The count rule alone (no share of the scope): what these tests weigh against.
    fn count_only(threshold: u32) -> Policy {
        Policy {
            threshold,
            interval: Duration::from_secs(3600),
            share_percent: 0,
            floor: 0,
        }
    }

    fn gate(threshold: u32) -> (tempdir::Dir, DeleteGate) {
        let d = tempdir::Dir::new();
        let g = DeleteGate::open(d.path(), count_only(threshold)).unwrap();
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

    /// Regression: with only a count (500), a scope typo deactivated all 13 users of a
    /// branch. The share of the scope holds that; a floor lets a tiny branch lose one.
    #[test]
    fn a_share_of_the_scope_protects_a_small_branch() {
        let p = Policy {
            threshold: 500,
            interval: Duration::from_secs(3600),
            share_percent: 10,
            floor: 5,
        };
        assert!(!p.fits(13, 15), "a whole small branch");
        assert!(!p.fits(6, 15));
        assert!(p.fits(5, 15), "the floor");
        assert!(p.fits(1, 3));
        assert!(p.fits(100, 1000) && !p.fits(101, 1000));
        assert!(
            p.fits(500, 100_000) && !p.fits(501, 100_000),
            "the count still rules"
        );
        let count_only = Policy {
            share_percent: 0,
            ..p
        };
        assert!(count_only.fits(13, 15));

        let (_d, mut g) = gate(500);
        g.policy = p;
        g.set_scope(15);
        assert!(g.hold_check().would_hold(13));
        assert!(!g.hold_check().would_hold(0));
        assert!(g
            .hold_reason(13)
            .contains("delete_threshold_percent = 10 % of the 15"));
        assert_eq!(g.admit(vec![target(1)]), Verdict::Go);
        // One went out: four more fit the floor, the sixth does not.
        assert!(!g.hold_check().would_hold(4));
        assert!(g.hold_check().would_hold(5));
    }

    #[test]
    fn a_settle_window_weighs_everything_that_arrived_in_it_as_one_burst() {
        let (_d, mut g) = gate(3);
        let settle = Duration::from_secs(30);
        // Two bursts' worth arrive over 20 s: each alone would fit, together they do not.
        for (i, at) in [(1, 100), (2, 105), (3, 110), (4, 120)] {
            assert!(g.defer_at(target(i), at));
        }
        assert!(!g.defer_at(target(1), 121), "once per object");
        assert_eq!(g.window_closes_at(settle), Some(131));
        assert_eq!(g.close_window(settle, 130), None, "still open");
        assert_eq!(g.close_window(settle, 131), Some((Verdict::Held, 4)));
        assert_eq!(g.held().len(), 4);
        assert!(g.pending().is_empty() && g.going().is_empty());
        assert_eq!(g.recent(), 0);
    }

    #[test]
    fn a_window_within_the_threshold_goes_and_a_later_change_withdraws_its_delete() {
        let (_d, mut g) = gate(3);
        let settle = Duration::from_secs(30);
        g.defer_at(target(1), 100);
        g.defer_at(target(2), 101);
        g.defer_at(target(3), 102);
        assert!(g.withdraw("a2"), "re-added in the window");
        assert!(!g.withdraw("a2"));
        assert_eq!(g.close_window(settle, 200), Some((Verdict::Go, 2)));
        let going: Vec<&str> = g.going().iter().map(|t| t.anchor.as_str()).collect();
        assert_eq!(going, ["a1", "a3"]);
        assert_eq!(g.recent(), 2);
        // Something held: a later lone delete waits behind it, after its own window.
        g.admit_at(vec![target(9)], 201);
        g.defer_at(target(4), 202);
        assert_eq!(
            g.close_window(Duration::ZERO, 202),
            Some((Verdict::Held, 1))
        );
        g.gone("a1");
        assert_eq!(g.going().len(), 1);
    }

    #[test]
    fn waiting_and_going_deletes_survive_a_restart_and_a_full_pass_takes_them_over() {
        let (d, mut g) = gate(5);
        g.defer_at(target(1), now_secs());
        g.defer_at(target(2), 0);
        g.close_window(Duration::from_secs(1), now_secs());
        g.defer_at(target(3), now_secs());
        g.save().unwrap();
        let mut again = DeleteGate::open(d.path(), count_only(5)).unwrap();
        assert_eq!(again.going().len(), 2);
        assert_eq!(again.pending().len(), 1);
        assert_eq!(again.recent(), 2);
        assert_eq!(again.forget_waiting(), 3);
        again.save().unwrap();
        let last = DeleteGate::open(d.path(), count_only(5)).unwrap();
        assert!(last.pending().is_empty() && last.going().is_empty());
        // An older file without the lists reads as none waiting.
        let old: File = serde_json::from_slice(br#"{"v":1,"recent":[],"held":[]}"#).unwrap();
        assert!(old.pending.is_empty() && old.going.is_empty());
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
        let g2 = DeleteGate::open(d.path(), count_only(1)).unwrap();
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

    /// What 389-DS sent for one entry (389-ds-base 2.3): nsUniqueId and the syncUUID of its
    /// Sync State control in standard UUID text (the same 16 bytes).
    const NS_UNIQUE_ID: &str = "b4f55441-f16a11f1-b259f0ea-34f55c5e";
    const SYNC_UUID: &str = "b4f55441-f16a-11f1-b259-f0ea34f55c5e";

    #[test]
    fn a_uuid_has_the_same_bytes_in_each_of_its_forms() {
        let b = uuid_bytes(SYNC_UUID).unwrap();
        assert_eq!(b[..4], [0xb4, 0xf5, 0x54, 0x41]);
        assert_eq!(b[15], 0x5e);
        for form in [
            NS_UNIQUE_ID,
            "B4F55441-F16A11F1-B259F0EA-34F55C5E",
            "B4F55441-F16A-11F1-B259-F0EA34F55C5E",
            "b4f55441f16a11f1b259f0ea34f55c5e",
            "tPVUQfFqEfGyWfDqNPVcXg==",
        ] {
            assert_eq!(uuid_bytes(form), Some(b), "{form}");
        }
        for not_a_uuid in [
            "",
            "b4f55441-f16a-11f1-b259-f0ea34f55c5",   // short
            "b4f55441-f16a11f1-b259f0ea-34f55c5g",   // not hex
            "b4f55441f16a-11f1-b259-f0ea-34f55c5e",  // dashes misplaced
            "b4f55441-f16a-11f1-b259f0ea-34f55c5e-", // extra dash
            "AAAAAAAAAAAAAAAAAAAAAAAA",              // base64 of 18 bytes
            "cn=x,dc=y",
        ] {
            assert_eq!(uuid_bytes(not_a_uuid), None, "{not_a_uuid}");
        }
    }

    #[test]
    fn the_forms_of_a_sync_uuid_include_the_nsuniqueid_text() {
        let forms = uuid_forms(SYNC_UUID);
        assert_eq!(forms[0], SYNC_UUID, "the uuid as given comes first");
        for want in [
            NS_UNIQUE_ID,
            "B4F55441-F16A11F1-B259F0EA-34F55C5E",
            "B4F55441-F16A-11F1-B259-F0EA34F55C5E",
            "b4f55441f16a11f1b259f0ea34f55c5e",
            "B4F55441F16A11F1B259F0EA34F55C5E",
            "tPVUQfFqEfGyWfDqNPVcXg==",
        ] {
            assert!(forms.iter().any(|f| f == want), "{want} in {forms:?}");
        }
        assert_eq!(forms.len(), 7, "no duplicates: {forms:?}");
        // Any form leads to the same set (an nsUniqueId given, an upper-case uuid given).
        let mut a = uuid_forms(NS_UNIQUE_ID);
        let mut b = forms.clone();
        a.sort();
        b.sort();
        assert_eq!(a, b);
        // Anything else is only itself.
        assert_eq!(uuid_forms("objectGUID?"), vec!["objectGUID?".to_string()]);
    }

    fn index_with(anchor: &str, dn: &str) -> (tempdir::Dir, AnchorIndex) {
        let d = tempdir::Dir::new();
        let mut ix = AnchorIndex::empty(d.path());
        ix.put(
            anchor,
            Anchor {
                kind: ResourceKind::User,
                scim_id: "scim-1".into(),
                hash: 1,
                dn: dn.into(),
            },
        );
        (d, ix)
    }

    #[test]
    fn a_389_delete_finds_the_object_anchored_on_its_nsuniqueid() {
        let (_d, ix) = index_with(NS_UNIQUE_ID, "uid=a,ou=people,dc=x");
        let f = find_deleted(&ix, SYNC_UUID, None).unwrap();
        assert_eq!(f.anchor, NS_UNIQUE_ID);
        assert_eq!(f.by, MatchedBy::Uuid);
        assert_eq!(f.object.scim_id, "scim-1");
        // Upper-case anchors too.
        let (_d, ix) = index_with(&NS_UNIQUE_ID.to_uppercase(), "uid=a,dc=x");
        assert_eq!(
            find_deleted(&ix, SYNC_UUID, None).unwrap().by,
            MatchedBy::Uuid
        );
    }

    #[test]
    fn a_delete_whose_uuid_is_no_anchor_falls_back_to_its_dn() {
        // An entryUUID anchor (389-DS's entryUUID is unrelated to the syncUUID).
        let (_d, ix) = index_with(
            "dc4b89ff-7d6e-496a-91d6-32e2105bc960",
            "uid=a,ou=people,dc=x",
        );
        let f = find_deleted(&ix, SYNC_UUID, Some("UID=a, ou=People,dc=x")).unwrap();
        assert_eq!(f.by, MatchedBy::Dn);
        assert_eq!(f.anchor, "dc4b89ff-7d6e-496a-91d6-32e2105bc960");
        assert_eq!(find_deleted(&ix, SYNC_UUID, None), None, "no DN, no match");
        assert_eq!(
            find_deleted(&ix, SYNC_UUID, Some("uid=b,ou=people,dc=x")),
            None
        );
    }

    #[test]
    fn unmatched_deletes_are_counted_and_survive_a_restart() {
        let (d, mut g) = gate(1);
        assert_eq!(g.unmatched(), (0, None));
        g.note_unmatched(SYNC_UUID, None);
        g.note_unmatched("u2", Some("uid=b,dc=x"));
        g.save().unwrap();
        let again = DeleteGate::open(d.path(), count_only(1)).unwrap();
        let (n, last) = again.unmatched();
        assert_eq!(n, 2);
        let last = last.unwrap();
        assert_eq!(last.uuid, "u2");
        assert_eq!(last.dn.as_deref(), Some("uid=b,dc=x"));
        // A file without the counter (older agents) reads as zero.
        std::fs::write(
            d.path().join(HELD_FILE),
            br#"{"v":1,"recent":[],"held":[]}"#,
        )
        .unwrap();
        let old = DeleteGate::open(d.path(), count_only(1)).unwrap();
        assert_eq!(old.unmatched(), (0, None));
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
                share_percent: 0,
                floor: 0,
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains(HELD_FILE), "{e}");
    }
}
