//! Group membership sent as chunked SCIM PATCH add/remove, never as whole member lists
//! (docs/architecture.md §4), with the members last confirmed at the endpoint kept on disk.
//!
//! Owns: the per-group member files under one directory ([`MemberStore`]), the pure diff of
//! two member lists ([`diff_members`]), the pure split of a diff into PATCH requests
//! ([`plan_chunks`], [`patch_operations`]) and the loop that sends them ([`sync_members`]).
//! Knows nothing about LDAP or mapping: it is handed SCIM ids.
//!
//! # On disk
//! Per group (keyed by its anchor, the `externalId`), in the store's directory:
//! * `<key>.members`: header line `idrelay-members 1 <epoch> <group id> <anchor>`, then the
//!   member SCIM ids, sorted by bytes, no duplicates, one per line. Written only whole:
//!   temp file, fsync, rename, directory fsync. `<epoch>` is a fresh random number at every
//!   write.
//! * `<key>.journal`: header `idrelay-members-journal 1 <epoch>`, then one block per PATCH
//!   request: `~` (begun), the request's ids as `-id` / `+id`, then `=` (the endpoint
//!   accepted it) or `!` (it certainly refused it). Appended, never rewritten.
//!
//! `<key>` is `x` + the anchor in hex, or `h` + a 128-bit FNV-1a hash of it in hex when the
//! anchor is longer than [`MAX_HEX_ANCHOR`] bytes; the anchor itself never becomes a path.
//! Ids, group id and anchor are written with `%`, space and control characters
//! percent-escaped, so any string round-trips.
//!
//! # Invariants
//! * **The confirmed list** of a group is the `.members` list with every `=` block of a
//!   journal of the same epoch applied in order. It is always a list the endpoint really
//!   held at some point, and after a chunk succeeded it is the previous confirmed list with
//!   that chunk applied: a crash mid-way resumes with only the rest of the diff.
//! * A block is written and fsynced **before** its PATCH is sent. A journal whose last
//!   block is open (`~` without `=` or `!`), or whose last line is torn, means a request of
//!   unknown outcome: the confirmed list is then *unknown*, and the next sync reads the
//!   endpoint. So the store never claims a member the endpoint may lack, nor misses one it
//!   may hold. (`=` and `!` need no fsync of their own: lost, they leave an open block,
//!   which is the safe reading.)
//! * *Unknown* (no `.members`, another group id or anchor in its header, an open block, an
//!   unreadable file) is distinct from *empty* (a header and no ids). Unknown costs one
//!   `GET /Groups/{id}` and a fresh `.members`; it never costs a wrong PATCH.
//! * A journal whose epoch differs from the `.members` file is stale (a crash between the
//!   write of a new `.members` and the removal of the journal) and is ignored.
//! * After all chunks succeeded the wanted list becomes the new `.members`, then the
//!   journal is removed.
//! * **A member group is checked, never assumed.** After a request that added an id the
//!   caller names as a group, the group as the endpoint shows it (the PATCH answer, else one
//!   GET) must not show that member as a user (`type` "User", a `$ref` to `/Users/`) nor
//!   leave it out; otherwise the misread membership is removed again, the stored members
//!   are forgotten and the sync fails with [`MemberSyncError::NestedRefused`]. A member
//!   without `type` and `$ref`, or a group shown without `members`, counts as held.
//! * **A member removal is verified, never assumed from a success answer**, until the
//!   endpoint has shown what it keys members by ([`MemberKey`], learnt once per client):
//!   after a request that removed members, the group is read (the PATCH answer, else one
//!   GET) and each removed member must be gone, by id and by its `userName` (one
//!   `GET /Users/{id}` each). Gone: the endpoint removes by id (proven; later removals are
//!   not read back). Still shown by userName (Canaille keys members by userName and answers
//!   a removal by id with 200): removals go by userName from then on, this one is sent again
//!   and every later one is read back. Still shown otherwise: [`MemberSyncError::RemovalIgnored`],
//!   the stored members forgotten, so the next sync reads the endpoint and tries again. A
//!   group shown without `members` cannot be verified (said nowhere, taken as done).
//!
//! # Limits
//! * One sync per group at a time (the caller serialises work per object); the store takes
//!   no locks.
//! * The store trusts that only the agent changes a group's members. Changes made at the
//!   endpoint by others are seen only after [`MemberStore::forget`] (e.g. on a full pass).
//! * Memory is the member ids themselves and little more: the wanted ids arrive as one
//!   sorted arena ([`MemberIds`]; for a group too large for memory, a sorted scratch file
//!   that the diff, the chunks and [`MemberStore::save`] walk in order, and whose failed
//!   read fails the sync before anything is sent), the diff holds the ids to remove (another arena) and the
//!   ids to add as runs of positions in the wanted list (one run on a first sync), the
//!   journal's ids are read into memory. The stored list is streamed line by line and
//!   compared with the sorted wanted list in one merge walk (no map, no set); no request
//!   carries more than `chunk` member values; no JSON body with all members is built. The
//!   one exception is the *unknown* case, where the endpoint's answer is parsed as a whole.
//! * Reading the endpoint's members relies on `GET /Groups/{id}` returning all of them
//!   (scim2-server does; some services, e.g. AWS IAM Identity Center, return none). It
//!   reads the whole group: [`ScimClient::get`] takes no `attributes=` list yet. On an
//!   endpoint that shows members by userName, the members read this way are userNames, which
//!   the diff takes for ids it does not want: the sync removes them and adds the members by
//!   id again (it converges, with the members briefly out of the group).

use std::collections::{BTreeMap, BTreeSet};

pub use crate::scim::client::MemberKey;
use crate::scim::profile::MemberRemoval;
use std::convert::Infallible;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::scim::client::{ScimClient, ScimError};
use crate::scim::mapping::MemberIds;
use crate::scim::ResourceKind;

/// Default most member values per PATCH request (AWS IAM Identity Center refuses more).
pub const DEFAULT_CHUNK: usize = 100;

/// Longest anchor (in bytes) whose file name is its hex form; longer ones are hashed.
pub const MAX_HEX_ANCHOR: usize = 96;

const MEMBERS_MAGIC: &str = "idrelay-members";
const JOURNAL_MAGIC: &str = "idrelay-members-journal";
const FORMAT_VERSION: &str = "1";

/// Why the member store could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemberStoreError {
    /// A file system operation failed.
    Io {
        /// What was being done (`open`, `write`, `rename`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The kind of the I/O error.
        kind: io::ErrorKind,
        /// The I/O error's text.
        detail: String,
    },
    /// A stored file does not have the expected content.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The 1-based line number.
        line: u64,
        /// What is wrong with it.
        detail: String,
    },
}

impl fmt::Display for MemberStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemberStoreError::Io {
                op, path, detail, ..
            } => write!(f, "cannot {op} {}: {detail}", path.display()),
            MemberStoreError::Corrupt { path, line, detail } => {
                write!(f, "{} line {line}: {detail}", path.display())
            }
        }
    }
}

impl std::error::Error for MemberStoreError {}

fn io_err(op: &'static str, path: &Path, e: io::Error) -> MemberStoreError {
    MemberStoreError::Io {
        op,
        path: path.to_path_buf(),
        kind: e.kind(),
        detail: e.to_string(),
    }
}

fn corrupt(path: &Path, line: u64, detail: impl Into<String>) -> MemberStoreError {
    MemberStoreError::Corrupt {
        path: path.to_path_buf(),
        line,
        detail: detail.into(),
    }
}

/// Why [`sync_members`] stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemberSyncError {
    /// The endpoint answered 404 for the group (on GET or PATCH): it was deleted there. The
    /// stored members were forgotten; the caller should provision the group again.
    GroupGone {
        /// The group's SCIM id.
        group_id: String,
    },
    /// A SCIM request failed (after the client's retries). Chunks sent before it stay
    /// recorded; the next sync sends the rest (or, after an ambiguous failure, re-reads).
    Scim(ScimError),
    /// The member store could not be written.
    Store(MemberStoreError),
    /// The endpoint did not hold nested group members as groups: it read them as user ids
    /// (those memberships were removed again) or dropped them. The stored members were
    /// forgotten; the caller stops sending nested groups to this endpoint.
    NestedRefused {
        /// The group's SCIM id.
        group_id: String,
        /// Member group ids the endpoint showed as users.
        as_user: Vec<String>,
        /// Member group ids the endpoint does not show at all.
        missing: Vec<String>,
        /// Why removing the misread memberships again failed, if it did.
        removal: Option<Box<ScimError>>,
    },
    /// The endpoint answered a member removal with success and still shows the members
    /// (by id or by userName). The stored members were forgotten: the next sync reads the
    /// endpoint and sends the removal again.
    RemovalIgnored {
        /// The group's SCIM id.
        group_id: String,
        /// The member ids still shown.
        members: Vec<String>,
    },
}

impl fmt::Display for MemberSyncError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemberSyncError::GroupGone { group_id } => {
                write!(f, "SCIM group {group_id} no longer exists at the endpoint")
            }
            MemberSyncError::Scim(e) => write!(f, "group members: {e}"),
            MemberSyncError::Store(e) => write!(f, "group member store: {e}"),
            MemberSyncError::NestedRefused {
                group_id,
                as_user,
                missing,
                removal,
            } => {
                write!(
                    f,
                    "the endpoint does not keep groups as members of SCIM group {group_id}:"
                )?;
                if !as_user.is_empty() {
                    write!(
                        f,
                        " it took member group(s) {} for users",
                        as_user.join(", ")
                    )?;
                    match removal {
                        None => write!(f, " (removed again)")?,
                        Some(e) => write!(
                            f,
                            " and removing them again failed ({e}): remove those users from the group at the endpoint by hand"
                        )?,
                    }
                }
                if !missing.is_empty() {
                    let sep = if as_user.is_empty() { "" } else { ";" };
                    write!(f, "{sep} it dropped member group(s) {}", missing.join(", "))?;
                }
                write!(f, "; nested groups are no longer sent to this endpoint")
            }
            MemberSyncError::RemovalIgnored { group_id, members } => write!(
                f,
                "the endpoint answered the removal of {} from SCIM group {group_id} with success \
                 and still shows {}: the removal is sent again at the next sync",
                members.join(", "),
                if members.len() == 1 { "it" } else { "them" }
            ),
        }
    }
}

impl std::error::Error for MemberSyncError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MemberSyncError::Scim(e) => Some(e),
            MemberSyncError::Store(e) => Some(e),
            MemberSyncError::NestedRefused { removal, .. } => removal
                .as_ref()
                .map(|e| e as &(dyn std::error::Error + 'static)),
            MemberSyncError::GroupGone { .. } | MemberSyncError::RemovalIgnored { .. } => None,
        }
    }
}

impl From<ScimError> for MemberSyncError {
    fn from(e: ScimError) -> Self {
        MemberSyncError::Scim(e)
    }
}

impl From<MemberStoreError> for MemberSyncError {
    fn from(e: MemberStoreError) -> Self {
        MemberSyncError::Store(e)
    }
}

// ---------------------------------------------------------------------------------------
// Pure: escaping, file names, diff, chunks, operations.

/// `s` with `%`, space and control characters as `%XX`.
fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    if !s
        .bytes()
        .any(|b| b == b'%' || b == b' ' || b.is_ascii_control())
    {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c == '%' || c == ' ' || c.is_ascii_control() {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Reverses [`escape`]; `None` for a bad escape.
fn unescape(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The file name stem for an anchor: only `[0-9a-fx h]`, at most 193 characters.
fn file_key(anchor: &str) -> String {
    if anchor.len() <= MAX_HEX_ANCHOR {
        let mut s = String::with_capacity(1 + 2 * anchor.len());
        s.push('x');
        for b in anchor.bytes() {
            s.push_str(&format!("{b:02x}"));
        }
        s
    } else {
        format!("h{:032x}", crate::fnv::hash128(anchor.as_bytes()))
    }
}

/// The difference between the confirmed members and the wanted ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberDiff {
    /// The ids to add, as runs of positions in the wanted list: ascending, not empty, not
    /// touching (one run when a group is sent for the first time).
    pub added: Vec<Range<usize>>,
    /// The ids to remove.
    pub removed: MemberIds,
}

impl MemberDiff {
    /// Nothing to send.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }

    /// How many ids to add.
    pub fn added_len(&self) -> usize {
        self.added.iter().map(ExactSizeIterator::len).sum()
    }

    /// The ids to add, ascending, given the wanted list the diff was made against.
    pub fn added_ids<'a>(
        &'a self,
        new: &'a MemberIds,
    ) -> impl Iterator<Item = std::borrow::Cow<'a, str>> + 'a {
        self.added.iter().flat_map(move |r| new.slice(r.clone()))
    }
}

/// Walks `new` (the wanted ids) together with `old` (the confirmed ids, ascending and
/// unique, e.g. streamed from a [`MemberStore`]) and returns what to add and what to
/// remove. Stops at the first error `old` yields.
///
/// `old` must be strictly ascending; out-of-order input gives a wrong diff (the store's
/// reader checks the order of what it yields).
pub fn diff_members<I, E>(old: I, new: &MemberIds) -> Result<MemberDiff, E>
where
    I: IntoIterator<Item = Result<String, E>>,
{
    fn add(runs: &mut Vec<Range<usize>>, r: Range<usize>) {
        if r.is_empty() {
            return;
        }
        match runs.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => runs.push(r),
        }
    }
    let mut added = Vec::new();
    let mut removed = crate::scim::mapping::MemberIdsBuilder::default();
    let mut i = 0;
    let mut wanted = new.iter().peekable();
    for o in old {
        let o = o?;
        let start = i;
        while wanted.next_if(|n| n.as_ref() < o.as_str()).is_some() {
            i += 1;
        }
        add(&mut added, start..i);
        if wanted.next_if(|n| n.as_ref() == o.as_str()).is_some() {
            i += 1;
        } else {
            removed.push(&o);
        }
    }
    add(&mut added, i..new.len());
    Ok(MemberDiff {
        added,
        removed: removed.finish(),
    })
}

/// One PATCH request's share of a diff: a range of the removals and a range of the
/// additions (indices into [`MemberDiff::removed`] and [`MemberDiff::added`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchChunk {
    /// Removals carried by this request.
    pub removes: Range<usize>,
    /// Additions carried by this request.
    pub adds: Range<usize>,
}

impl PatchChunk {
    /// Member values in this request.
    pub fn len(&self) -> usize {
        self.removes.len() + self.adds.len()
    }

    /// Carries nothing (never yielded by [`plan_chunks`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Splits `removes` removals and `adds` additions into requests of at most `chunk` member
/// values each (`chunk` 0 counts as 1): removals first (access is taken away before any is
/// granted), the request at the boundary carrying both. Yields
/// `ceil((removes + adds) / chunk)` chunks.
pub fn plan_chunks(removes: usize, adds: usize, chunk: usize) -> impl Iterator<Item = PatchChunk> {
    let chunk = chunk.max(1);
    let total = removes + adds;
    (0..total.div_ceil(chunk)).map(move |k| {
        let start = k * chunk;
        let end = (start + chunk).min(total);
        PatchChunk {
            removes: start.min(removes)..end.min(removes),
            adds: start.saturating_sub(removes)..end.saturating_sub(removes),
        }
    })
}

/// How a PATCH removes members.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RemoveForm {
    /// RFC 7644 §3.5.2.2: one `{"op":"remove","path":"members[value eq \"id\"]"}` per id.
    #[default]
    PathFilter,
    /// The form Microsoft Entra sends (and AWS accepts):
    /// `{"op":"remove","path":"members","value":[{"value":id},...]}`. Not RFC 7644;
    /// scim2-server refuses it with 400 `invalidValue`.
    ValueList,
}

/// The PATCH path that selects one member: `members[value eq "<id>"]`, the id written as a
/// SCIM string literal (a JSON string: quotes, backslashes, controls escaped).
pub fn member_filter_path(id: &str) -> String {
    format!("members[value eq {}]", Value::String(id.to_owned()))
}

/// The PatchOp `Operations` for one request: the removals (in `form`), then one `add` of
/// all additions to `members`. Empty when both are empty.
pub fn patch_operations<'a>(
    removes: impl IntoIterator<Item = &'a str>,
    adds: impl IntoIterator<Item = &'a str>,
    form: RemoveForm,
) -> Vec<Value> {
    let mut ops = Vec::new();
    match form {
        RemoveForm::PathFilter => {
            for id in removes {
                ops.push(json!({"op": "remove", "path": member_filter_path(id)}));
            }
        }
        RemoveForm::ValueList => {
            let values: Vec<Value> = removes.into_iter().map(|id| json!({"value": id})).collect();
            if !values.is_empty() {
                ops.push(json!({"op": "remove", "path": "members", "value": values}));
            }
        }
    }
    let values: Vec<Value> = adds.into_iter().map(|id| json!({"value": id})).collect();
    if !values.is_empty() {
        ops.push(json!({"op": "add", "path": "members", "value": values}));
    }
    ops
}

// ---------------------------------------------------------------------------------------
// The store.

/// The members last confirmed at the endpoint, per group, in files under one directory.
/// See the module documentation for the format and invariants.
#[derive(Debug, Clone)]
pub struct MemberStore {
    dir: PathBuf,
}

/// What a journal says, once parsed.
struct JournalState {
    /// Last committed op per id: `true` = present.
    overlay: BTreeMap<String, bool>,
}

impl MemberStore {
    /// Opens (creating it if needed) the store in `dir`.
    pub fn open(dir: PathBuf) -> Result<MemberStore, MemberStoreError> {
        crate::state_dir::create_private_dir(&dir).map_err(|e| io_err("create", &dir, e))?;
        Ok(MemberStore { dir })
    }

    /// The directory of this store.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, anchor: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{}.{ext}", file_key(anchor)))
    }

    /// The confirmed members of the group anchored at `anchor` whose SCIM id is
    /// `group_id`, streamed in ascending order; `Ok(None)` when they are unknown (never
    /// stored, stored for another group id, or a request of unknown outcome in the
    /// journal). The journal's ids are read into memory; the `.members` file is streamed.
    pub fn load(
        &self,
        anchor: &str,
        group_id: &str,
    ) -> Result<Option<StoredMembers>, MemberStoreError> {
        let path = self.path(anchor, "members");
        let file = match crate::state_dir::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("open", &path, e)),
        };
        let mut reader = BufReader::new(file);
        let mut line = String::new();
        if !read_whole_line(&mut reader, &mut line, &path, 1)? {
            return Err(corrupt(&path, 1, "no header"));
        }
        let fields: Vec<&str> = line.split(' ').collect();
        let [magic, version, epoch, gid, anc] = fields[..] else {
            return Err(corrupt(&path, 1, "header does not have 5 fields"));
        };
        if magic != MEMBERS_MAGIC || version != FORMAT_VERSION {
            return Err(corrupt(&path, 1, "not a version 1 member file"));
        }
        let epoch =
            u64::from_str_radix(epoch, 16).map_err(|_| corrupt(&path, 1, "bad epoch in header"))?;
        let (Some(gid), Some(anc)) = (unescape(gid), unescape(anc)) else {
            return Err(corrupt(&path, 1, "bad escape in header"));
        };
        if gid != group_id || anc != anchor {
            // Another group (recreated at the endpoint, or a hash collision): unknown.
            return Ok(None);
        }
        let journal = self.path(anchor, "journal");
        let (overlay, has_journal) = match read_journal(&journal, epoch)? {
            JournalRead::Absent | JournalRead::Stale => (BTreeMap::new(), false),
            JournalRead::Uncertain => return Ok(None),
            JournalRead::Valid(state) => (state.overlay, true),
        };
        Ok(Some(StoredMembers {
            reader,
            path,
            line_no: 1,
            buf: String::new(),
            prev: String::new(),
            have_prev: false,
            base_head: None,
            base_done: false,
            failed: false,
            overlay: overlay.into_iter().peekable(),
            epoch,
            has_journal,
        }))
    }

    /// Stores `ids` as the confirmed members of the group, replacing whatever was stored
    /// (journal included). Returns the new epoch.
    pub fn save(
        &self,
        anchor: &str,
        group_id: &str,
        ids: &MemberIds,
    ) -> Result<u64, MemberStoreError> {
        let epoch = fastrand::u64(..);
        let path = self.path(anchor, "members");
        let tmp = self.path(anchor, "tmp");
        let file = self.create(&tmp)?;
        let mut w = BufWriter::with_capacity(64 << 10, file);
        let write = |w: &mut BufWriter<File>| -> io::Result<()> {
            writeln!(
                w,
                "{MEMBERS_MAGIC} {FORMAT_VERSION} {epoch:016x} {} {}",
                escape(group_id),
                escape(anchor)
            )?;
            for id in ids.iter() {
                w.write_all(escape(&id).as_bytes())?;
                w.write_all(b"\n")?;
            }
            if ids.read_failed() {
                return Err(io::Error::other(
                    "the wanted member ids could not be read back",
                ));
            }
            w.flush()?;
            w.get_ref().sync_all()
        };
        write(&mut w).map_err(|e| io_err("write", &tmp, e))?;
        drop(w);
        fs::rename(&tmp, &path).map_err(|e| io_err("rename", &path, e))?;
        self.sync_dir()?;
        // A journal left behind now has the old epoch and is ignored; remove it anyway.
        let journal = self.path(anchor, "journal");
        match fs::remove_file(&journal) {
            Ok(()) => self.sync_dir()?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &journal, e)),
        }
        Ok(epoch)
    }

    /// Forgets the group: its members become unknown.
    pub fn forget(&self, anchor: &str) -> Result<(), MemberStoreError> {
        let mut removed = false;
        for ext in ["members", "journal", "tmp"] {
            let path = self.path(anchor, ext);
            match fs::remove_file(&path) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &path, e)),
            }
        }
        if removed {
            self.sync_dir()?;
        }
        Ok(())
    }

    /// Opens the journal for appending blocks under `epoch`: continues it when `append`
    /// (it is valid and of that epoch), else starts a new one.
    fn journal(
        &self,
        anchor: &str,
        epoch: u64,
        append: bool,
    ) -> Result<MemberJournal, MemberStoreError> {
        let path = self.path(anchor, "journal");
        if append {
            let file = crate::state_dir::options()
                .append(true)
                .open(&path)
                .map_err(|e| io_err("open", &path, e))?;
            return Ok(MemberJournal { file, path });
        }
        let mut file = self.create(&path)?;
        writeln!(file, "{JOURNAL_MAGIC} {FORMAT_VERSION} {epoch:016x}")
            .and_then(|()| file.sync_data())
            .map_err(|e| io_err("write", &path, e))?;
        self.sync_dir()?;
        Ok(MemberJournal { file, path })
    }

    /// Creates (truncates) a file in the store, re-creating the directory if it was lost.
    fn create(&self, path: &Path) -> Result<File, MemberStoreError> {
        let create = || {
            crate::state_dir::options()
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)
        };
        match create() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                crate::state_dir::create_private_dir(&self.dir)
                    .map_err(|e| io_err("create", &self.dir, e))?;
                create()
            }
            other => other,
        }
        .map_err(|e| io_err("create", path, e))
    }

    fn sync_dir(&self) -> Result<(), MemberStoreError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err("fsync", &self.dir, e))
    }
}

/// What [`read_line`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// A whole line, now in the buffer without its `\n`.
    Full,
    /// The end of the file.
    End,
    /// A last line without `\n` (a write cut short).
    Torn,
}

/// Reads one line into `buf`.
fn read_line(
    reader: &mut impl BufRead,
    buf: &mut String,
    path: &Path,
    line_no: u64,
) -> Result<Line, MemberStoreError> {
    buf.clear();
    let n = reader.read_line(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::InvalidData {
            corrupt(path, line_no, "not UTF-8")
        } else {
            io_err("read", path, e)
        }
    })?;
    if n == 0 {
        return Ok(Line::End);
    }
    if buf.pop() != Some('\n') {
        return Ok(Line::Torn);
    }
    Ok(Line::Full)
}

/// Like [`read_line`], for files written whole: a torn line is corruption.
fn read_whole_line(
    reader: &mut impl BufRead,
    buf: &mut String,
    path: &Path,
    line_no: u64,
) -> Result<bool, MemberStoreError> {
    match read_line(reader, buf, path, line_no)? {
        Line::Full => Ok(true),
        Line::End => Ok(false),
        Line::Torn => Err(corrupt(path, line_no, "last line has no end")),
    }
}

enum JournalRead {
    Absent,
    /// Another epoch: left by a crash after a new `.members` was written.
    Stale,
    /// A request of unknown outcome (open block or torn tail).
    Uncertain,
    Valid(JournalState),
}

fn read_journal(path: &Path, epoch: u64) -> Result<JournalRead, MemberStoreError> {
    let file = match crate::state_dir::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(JournalRead::Absent),
        Err(e) => return Err(io_err("open", path, e)),
    };
    let mut reader = BufReader::new(file);
    let mut line = String::new();
    let mut line_no = 1;
    if read_line(&mut reader, &mut line, path, line_no)? != Line::Full {
        // An empty or torn header: the journal was being created, no block was begun.
        return Ok(JournalRead::Stale);
    }
    let expected = format!("{JOURNAL_MAGIC} {FORMAT_VERSION} {epoch:016x}");
    if line != expected {
        return Ok(JournalRead::Stale);
    }
    let mut overlay = BTreeMap::new();
    let mut block: Option<Vec<(String, bool)>> = None;
    loop {
        line_no += 1;
        match read_line(&mut reader, &mut line, path, line_no)? {
            Line::Full => {}
            Line::End => break,
            Line::Torn => return Ok(JournalRead::Uncertain),
        }
        match (line.as_str(), &mut block) {
            ("~", None) => block = Some(Vec::new()),
            ("=", Some(ops)) => {
                for (id, present) in ops.drain(..) {
                    overlay.insert(id, present);
                }
                block = None;
            }
            ("!", Some(_)) => block = None,
            (l, Some(ops)) if l.starts_with('+') || l.starts_with('-') => {
                let id = unescape(&l[1..]).ok_or_else(|| corrupt(path, line_no, "bad escape"))?;
                ops.push((id, l.starts_with('+')));
            }
            _ => return Err(corrupt(path, line_no, "unexpected journal line")),
        }
    }
    if block.is_some() {
        return Ok(JournalRead::Uncertain);
    }
    Ok(JournalRead::Valid(JournalState { overlay }))
}

/// The confirmed members of one group, ascending, read from disk as they are iterated.
/// Yields an error (then stops) on a corrupt or out-of-order line.
pub struct StoredMembers {
    reader: BufReader<File>,
    path: PathBuf,
    line_no: u64,
    buf: String,
    prev: String,
    have_prev: bool,
    base_head: Option<String>,
    base_done: bool,
    failed: bool,
    overlay: std::iter::Peekable<std::collections::btree_map::IntoIter<String, bool>>,
    epoch: u64,
    has_journal: bool,
}

impl fmt::Debug for StoredMembers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredMembers")
            .field("path", &self.path)
            .field("epoch", &self.epoch)
            .field("has_journal", &self.has_journal)
            .finish_non_exhaustive()
    }
}

impl StoredMembers {
    /// The epoch of the `.members` file these come from.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// A valid journal of this epoch exists (its blocks are part of what is yielded).
    pub fn has_journal(&self) -> bool {
        self.has_journal
    }

    fn read_base(&mut self) -> Result<Option<String>, MemberStoreError> {
        self.line_no += 1;
        if !read_whole_line(&mut self.reader, &mut self.buf, &self.path, self.line_no)? {
            return Ok(None);
        }
        let id =
            unescape(&self.buf).ok_or_else(|| corrupt(&self.path, self.line_no, "bad escape"))?;
        if self.have_prev && id <= self.prev {
            return Err(corrupt(
                &self.path,
                self.line_no,
                "ids not sorted and unique",
            ));
        }
        self.prev.clear();
        self.prev.push_str(&id);
        self.have_prev = true;
        Ok(Some(id))
    }
}

impl Iterator for StoredMembers {
    type Item = Result<String, MemberStoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.failed {
                return None;
            }
            if self.base_head.is_none() && !self.base_done {
                match self.read_base() {
                    Ok(Some(id)) => self.base_head = Some(id),
                    Ok(None) => self.base_done = true,
                    Err(e) => {
                        self.failed = true;
                        return Some(Err(e));
                    }
                }
            }
            let overlay_first = match (&self.base_head, self.overlay.peek()) {
                (None, None) => return None,
                (None, Some(_)) => true,
                (Some(_), None) => false,
                (Some(b), Some((o, _))) => o <= b,
            };
            if !overlay_first {
                return self.base_head.take().map(Ok);
            }
            let (id, present) = self.overlay.next()?;
            if self.base_head.as_deref() == Some(id.as_str()) {
                self.base_head = None;
            }
            if present {
                return Some(Ok(id));
            }
        }
    }
}

/// The open journal of one group during a sync.
struct MemberJournal {
    file: File,
    path: PathBuf,
}

impl MemberJournal {
    /// Records, durably, that a request with these removals and additions is about to be
    /// sent.
    fn begin<'a>(
        &mut self,
        removes: impl IntoIterator<Item = &'a str>,
        adds: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), MemberStoreError> {
        let mut block = String::from("~\n");
        for (sign, id) in removes
            .into_iter()
            .map(|id| ('-', id))
            .chain(adds.into_iter().map(|id| ('+', id)))
        {
            block.push(sign);
            block.push_str(&escape(id));
            block.push('\n');
        }
        self.file
            .write_all(block.as_bytes())
            .and_then(|()| self.file.sync_data())
            .map_err(|e| io_err("write", &self.path, e))
    }

    /// Records that the endpoint applied the request (`=`) or certainly did not (`!`). Not
    /// fsynced: if lost, the open block reads as "unknown", which is safe.
    fn close(&mut self, applied: bool) -> Result<(), MemberStoreError> {
        let mark: &[u8] = if applied { b"=\n" } else { b"!\n" };
        self.file
            .write_all(mark)
            .map_err(|e| io_err("write", &self.path, e))
    }
}

// ---------------------------------------------------------------------------------------
// The sync.

/// What [`sync_members`] sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemberWrites {
    /// Members added.
    pub added: usize,
    /// Members removed.
    pub removed: usize,
    /// PATCH requests that succeeded (client retries not counted).
    pub requests: usize,
    /// The stored members were unknown, so the endpoint's were read.
    pub endpoint_read: bool,
}

/// The requests the sync needs from an endpoint (a seam for tests).
trait GroupEndpoint {
    /// The group as the endpoint shows it; `None` when it does not exist.
    async fn group(&self, group_id: &str) -> Result<Option<Value>, ScimError>;
    /// Sends one PatchOp with these operations to the group; the group as the answer
    /// shows it, when the answer holds it (200 with a body; 204 holds nothing).
    async fn patch_members(
        &self,
        group_id: &str,
        ops: Vec<Value>,
    ) -> Result<Option<Value>, ScimError>;

    /// The form member removals are sent in (what the endpoint took last).
    fn remove_form(&self) -> RemoveForm;
    /// The endpoint took removals in `form`: use it from now on.
    fn prefer_remove_form(&self, form: RemoveForm);
    /// The profile pins the form (`[group] member_removal`): a refusal is not retried in
    /// the other one.
    fn remove_form_pinned(&self) -> bool {
        false
    }
    /// What the endpoint shows as a member's `value`, as far as learnt.
    fn member_key(&self) -> MemberKey;
    /// Learnt what the endpoint shows as a member's `value`.
    fn learn_member_key(&self, key: MemberKey);
    /// The `userName` of user `user_id`; `None` when the endpoint does not hold it.
    async fn user_name(&self, user_id: &str) -> Result<Option<String>, ScimError>;

    /// The member ids of the group; `None` when it does not exist.
    async fn current_members(&self, group_id: &str) -> Result<Option<Vec<String>>, ScimError> {
        match self.group(group_id).await? {
            Some(group) => members_of(&group, group_id).map(Some),
            None => Ok(None),
        }
    }
}

impl GroupEndpoint for ScimClient {
    async fn group(&self, group_id: &str) -> Result<Option<Value>, ScimError> {
        self.get(ResourceKind::Group, group_id).await
    }

    async fn patch_members(
        &self,
        group_id: &str,
        ops: Vec<Value>,
    ) -> Result<Option<Value>, ScimError> {
        self.patch(ResourceKind::Group, group_id, ops).await
    }

    fn remove_form(&self) -> RemoveForm {
        remove_form_of(self)
    }

    fn remove_form_pinned(&self) -> bool {
        self.facts().removal_pin != MemberRemoval::Auto
    }

    fn prefer_remove_form(&self, form: RemoveForm) {
        self.note_remove_value_list(form == RemoveForm::ValueList);
    }

    fn member_key(&self) -> MemberKey {
        self.facts().member_key
    }

    fn learn_member_key(&self, key: MemberKey) {
        self.note_member_key(key);
    }

    async fn user_name(&self, user_id: &str) -> Result<Option<String>, ScimError> {
        Ok(self.get(ResourceKind::User, user_id).await?.and_then(|u| {
            u.get("userName")
                .and_then(Value::as_str)
                .map(str::to_string)
        }))
    }
}

/// The form member removals go in to `scim` now: the `[group] member_removal` pin, else
/// what the endpoint took last. The Bulk lane ([`crate::sync::bulk_members`]) uses it too.
pub fn remove_form_of(scim: &ScimClient) -> RemoveForm {
    let facts = scim.facts();
    match facts.removal_pin {
        MemberRemoval::Filter => RemoveForm::PathFilter,
        MemberRemoval::ValueList => RemoveForm::ValueList,
        MemberRemoval::Auto if facts.remove_value_list => RemoveForm::ValueList,
        MemberRemoval::Auto => RemoveForm::PathFilter,
    }
}

/// Which of `removed` (member ids) the group as the endpoint shows it still holds, by id
/// or (unless the endpoint is known to show ids) by userName, with the userName found.
/// `None`: it cannot be told (the group is gone, or the endpoint shows no `members`).
async fn still_shown<E: GroupEndpoint>(
    endpoint: &E,
    group_id: &str,
    removed: &[String],
    answer: Option<Value>,
    names: &mut BTreeMap<String, Option<String>>,
) -> Result<Option<Vec<(String, Option<String>)>>, ScimError> {
    let shown = match answer.filter(|a| a.get("members").is_some()) {
        Some(a) => Some(a),
        None => endpoint.group(group_id).await?,
    };
    let Some(members) = shown
        .as_ref()
        .and_then(|g| g.get("members"))
        .and_then(Value::as_array)
    else {
        return Ok(None);
    };
    let values: BTreeSet<&str> = members
        .iter()
        .filter_map(|m| m.get("value").and_then(Value::as_str))
        .collect();
    let mut left = Vec::new();
    for id in removed {
        if values.contains(id.as_str()) {
            left.push((id.clone(), None));
            continue;
        }
        if endpoint.member_key() == MemberKey::Id || values.is_empty() {
            continue;
        }
        let name = match names.get(id) {
            Some(n) => n.clone(),
            None => {
                let n = endpoint.user_name(id).await?;
                names.insert(id.clone(), n.clone());
                n
            }
        };
        if let Some(n) = name.filter(|n| values.contains(n.as_str())) {
            left.push((id.clone(), Some(n)));
        }
    }
    Ok(Some(left))
}

/// How an endpoint shows the member groups it was sent.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NestedCheck {
    /// Shown as users: `type` "User", or a `$ref` to `/Users/`.
    pub as_user: Vec<String>,
    /// Not shown at all, though the group lists members.
    pub missing: Vec<String>,
}

impl NestedCheck {
    /// Every member group is shown as sent (or nothing can be told).
    pub fn is_empty(&self) -> bool {
        self.as_user.is_empty() && self.missing.is_empty()
    }
}

/// How `group` (as the endpoint shows it) holds the member groups `sent`. Only evidence
/// counts: a member without `type` or `$ref` is taken as held, and a group shown without
/// a `members` attribute at all (some services never list members) tells nothing.
pub fn check_nested(group: &Value, sent: &[&str]) -> NestedCheck {
    let mut out = NestedCheck::default();
    let Some(members) = group.get("members").and_then(Value::as_array) else {
        return out;
    };
    for &id in sent {
        let shown: Vec<&Value> = members
            .iter()
            .filter(|m| m.get("value").and_then(Value::as_str) == Some(id))
            .collect();
        let as_user = |m: &&Value| {
            m.get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.eq_ignore_ascii_case("user"))
                || m.get("$ref")
                    .and_then(Value::as_str)
                    .is_some_and(|r| r.contains("/Users/"))
        };
        if shown.is_empty() {
            out.missing.push(id.to_string());
        } else if shown.iter().any(as_user) {
            out.as_user.push(id.to_string());
        }
    }
    out
}

/// The `value`s of a group's `members`.
fn members_of(group: &Value, group_id: &str) -> Result<Vec<String>, ScimError> {
    let bad = |detail: &str| ScimError::Decode {
        what: format!("SCIM group {group_id}"),
        detail: detail.to_string(),
    };
    match group.get("members") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|m| {
                m.get("value")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| bad("a member has no string \"value\""))
            })
            .collect(),
        Some(_) => Err(bad("\"members\" is not an array")),
    }
}

/// Brings the members of the SCIM group `group_id` (anchored at `anchor`) to `new_ids`
/// (sorted and unique by construction) with PATCH requests of at most `chunk` member values (0 counts as 1; use
/// [`DEFAULT_CHUNK`]), sending only the difference from the confirmed members in `store`
/// and reading the endpoint's members once when those are unknown. Each request is
/// recorded in `store` as it completes (see the module invariants); on success the stored
/// members are `new_ids`.
pub async fn sync_members(
    scim: &ScimClient,
    store: &MemberStore,
    anchor: &str,
    group_id: &str,
    new_ids: &MemberIds,
    chunk: usize,
) -> Result<MemberWrites, MemberSyncError> {
    sync_via(
        scim,
        store,
        anchor,
        group_id,
        new_ids,
        &[],
        chunk,
        Vec::new(),
    )
    .await
}

/// [`sync_members`], with `lead_ops` (e.g. a replace of the group's other attributes) sent
/// in the first PATCH request, or alone when the members are already in step: a group whose
/// name and members both changed costs one request, not two. `nested` (sorted) names the
/// ids of `new_ids` that are groups: after a request that added one, the group as the
/// endpoint then shows it is checked ([`check_nested`]); a member group shown as a user is
/// removed again and the sync ends with [`MemberSyncError::NestedRefused`].
#[allow(clippy::too_many_arguments)]
pub async fn sync_members_with(
    scim: &ScimClient,
    store: &MemberStore,
    anchor: &str,
    group_id: &str,
    new_ids: &MemberIds,
    nested: &[String],
    chunk: usize,
    lead_ops: Vec<Value>,
) -> Result<MemberWrites, MemberSyncError> {
    sync_via(
        scim, store, anchor, group_id, new_ids, nested, chunk, lead_ops,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn sync_via<E: GroupEndpoint>(
    endpoint: &E,
    store: &MemberStore,
    anchor: &str,
    group_id: &str,
    new_ids: &MemberIds,
    nested: &[String],
    chunk: usize,
    mut lead_ops: Vec<Value>,
) -> Result<MemberWrites, MemberSyncError> {
    let mut writes = MemberWrites::default();
    let known = match store.load(anchor, group_id) {
        Ok(Some(stored)) => {
            let (epoch, has_journal) = (stored.epoch(), stored.has_journal());
            match diff_members(stored, new_ids) {
                Ok(diff) => Some((diff, epoch, has_journal)),
                Err(e) => {
                    log::warn!(
                        "stored members of group {anchor:?} unreadable ({e}); reading the endpoint"
                    );
                    None
                }
            }
        }
        Ok(None) => None,
        Err(e) => {
            log::warn!("stored members of group {anchor:?} unreadable ({e}); reading the endpoint");
            None
        }
    };
    let (diff, epoch, has_journal) = match known {
        Some(known) => known,
        None => {
            writes.endpoint_read = true;
            let Some(current) = endpoint.current_members(group_id).await? else {
                return Err(group_gone(store, anchor, group_id));
            };
            let current: MemberIds = current.into_iter().collect();
            let epoch = store.save(anchor, group_id, &current)?;
            let diff = diff_members(
                current.iter().map(|id| Ok::<_, Infallible>(id.to_string())),
                new_ids,
            )
            .unwrap_or_else(|never| match never {});
            (diff, epoch, false)
        }
    };
    // A wanted list kept on disk that could not be read whole gives no diff to act on.
    if new_ids.read_failed() {
        return Err(MemberSyncError::Store(MemberStoreError::Io {
            op: "read",
            path: store.dir().to_path_buf(),
            kind: io::ErrorKind::Other,
            detail: "the wanted member ids could not be read back from their scratch file".into(),
        }));
    }
    if diff.is_empty() {
        if has_journal {
            store.save(anchor, group_id, new_ids)?;
        }
        if !lead_ops.is_empty() {
            match endpoint.patch_members(group_id, lead_ops).await {
                Ok(_) => writes.requests += 1,
                Err(e) if e.status() == Some(404) => {
                    return Err(group_gone(store, anchor, group_id))
                }
                Err(e) => return Err(e.into()),
            }
        }
        return Ok(writes);
    }
    let mut journal = store.journal(anchor, epoch, has_journal)?;
    // The additions are consumed in order, chunk after chunk.
    let mut to_add = diff.added_ids(new_ids);
    let mut form = endpoint.remove_form();
    // userNames of removed members, read once each (endpoints that show members by them).
    let mut names: BTreeMap<String, Option<String>> = BTreeMap::new();
    for c in plan_chunks(diff.removed.len(), diff.added_len(), chunk) {
        let removed_ids: Vec<_> = diff.removed.slice(c.removes.clone()).collect();
        let removes = || removed_ids.iter().map(|id| id.as_ref());
        let added_ids: Vec<_> = to_add.by_ref().take(c.adds.len()).collect();
        let adds: Vec<&str> = added_ids.iter().map(|id| id.as_ref()).collect();
        let lead = std::mem::take(&mut lead_ops);
        // What a removal names: the id, or where the endpoint shows members by userName,
        // the userName (the id when the user is gone there).
        let mut shown_as: Vec<String> = Vec::with_capacity(c.removes.len());
        for id in removes() {
            if endpoint.member_key() == MemberKey::UserName {
                if !names.contains_key(id) {
                    let n = endpoint.user_name(id).await?;
                    names.insert(id.to_string(), n);
                }
                shown_as.push(names[id].clone().unwrap_or_else(|| id.to_string()));
            } else {
                shown_as.push(id.to_string());
            }
        }
        let answer = loop {
            journal.begin(removes(), adds.iter().copied())?;
            let mut ops = lead.clone();
            ops.extend(patch_operations(
                shown_as.iter().map(String::as_str),
                adds.iter().copied(),
                form,
            ));
            match endpoint.patch_members(group_id, ops).await {
                Ok(answer) => {
                    journal.close(true)?;
                    if form != endpoint.remove_form() {
                        endpoint.prefer_remove_form(form);
                    }
                    break answer;
                }
                Err(e) if e.status() == Some(404) => {
                    drop(journal);
                    return Err(group_gone(store, anchor, group_id));
                }
                // Some services take member removals only as a value list (Entra's form):
                // the request was certainly refused, so it is sent again in that form.
                Err(e)
                    if form == RemoveForm::PathFilter
                        && !c.removes.is_empty()
                        && !endpoint.remove_form_pinned()
                        && refuses_the_form(&e) =>
                {
                    journal.close(false)?;
                    log::info!(
                        "SCIM group {group_id}: member removal by filter path refused ({e}); sending it as a value list"
                    );
                    form = RemoveForm::ValueList;
                }
                Err(e) => {
                    if !e.is_ambiguous_write() {
                        journal.close(false)?;
                    }
                    return Err(e.into());
                }
            }
        };
        writes.requests += 1;
        writes.removed += c.removes.len();
        writes.added += adds.len();
        if !c.removes.is_empty() && endpoint.member_key() != MemberKey::Id {
            let removed: Vec<String> = removes().map(str::to_string).collect();
            let answer = answer.clone();
            if let Err(e) =
                verify_removals(endpoint, group_id, &removed, answer, form, &mut names).await
            {
                drop(journal);
                if let Err(f) = store.forget(anchor) {
                    log::warn!("cannot forget the members of group {anchor:?}: {f}");
                }
                return Err(e);
            }
        }
        let nested_added: Vec<&str> = adds
            .iter()
            .copied()
            .filter(|a| nested.binary_search_by(|n| n.as_str().cmp(a)).is_ok())
            .collect();
        if !nested_added.is_empty() {
            let shown = match answer.filter(|a| a.get("members").is_some()) {
                Some(a) => Some(a),
                None => endpoint.group(group_id).await?,
            };
            let check =
                shown.map_or_else(NestedCheck::default, |g| check_nested(&g, &nested_added));
            if !check.is_empty() {
                drop(journal);
                return Err(refuse_nested(endpoint, store, anchor, group_id, check).await);
            }
        }
    }
    drop(journal);
    store.save(anchor, group_id, new_ids)?;
    Ok(writes)
}

/// A member removal is verified, never assumed from a success answer: while the endpoint
/// has not shown that it removes by id, the group is read after each removal. A member
/// still shown by its userName (an endpoint that shows members by userName, where a
/// removal by id removes nothing) teaches [`MemberKey::UserName`] and is removed again by
/// userName; a member still shown after that, or still shown by its id, is an error.
async fn verify_removals<E: GroupEndpoint>(
    endpoint: &E,
    group_id: &str,
    removed: &[String],
    answer: Option<Value>,
    form: RemoveForm,
    names: &mut BTreeMap<String, Option<String>>,
) -> Result<(), MemberSyncError> {
    let Some(left) = still_shown(endpoint, group_id, removed, answer, names).await? else {
        return Ok(());
    };
    if left.is_empty() {
        if endpoint.member_key() == MemberKey::Unproven {
            endpoint.learn_member_key(MemberKey::Id);
        }
        return Ok(());
    }
    let by_id: Vec<String> = left
        .iter()
        .filter(|(_, n)| n.is_none())
        .map(|(id, _)| id.clone())
        .collect();
    let by_name: Vec<&str> = left.iter().filter_map(|(_, n)| n.as_deref()).collect();
    if by_name.is_empty() || endpoint.member_key() == MemberKey::UserName {
        return Err(MemberSyncError::RemovalIgnored {
            group_id: group_id.to_string(),
            members: left.into_iter().map(|(id, _)| id).collect(),
        });
    }
    // Shown by userName though removed by id: the endpoint keys members by userName.
    endpoint.learn_member_key(MemberKey::UserName);
    endpoint
        .patch_members(
            group_id,
            patch_operations(by_name.iter().copied(), std::iter::empty(), form),
        )
        .await?;
    let again: Vec<String> = left.iter().map(|(id, _)| id.clone()).collect();
    let still = still_shown(endpoint, group_id, &again, None, names).await?;
    let mut members = by_id;
    members.extend(still.unwrap_or_default().into_iter().map(|(id, _)| id));
    if members.is_empty() {
        Ok(())
    } else {
        members.sort();
        members.dedup();
        Err(MemberSyncError::RemovalIgnored {
            group_id: group_id.to_string(),
            members,
        })
    }
}

/// Whether a refused PATCH says the endpoint does not take the filter-path form of a
/// removal: 501 (not implemented), or 400 naming the path or filter as the problem. Any
/// other 400 is about the request's content and is reported as it is.
fn refuses_the_form(e: &ScimError) -> bool {
    match e.status() {
        Some(501) => true,
        Some(400) => matches!(
            e.scim_type(),
            Some("invalidPath" | "invalidFilter" | "noTarget" | "invalidSyntax")
        ),
        _ => false,
    }
}

/// The endpoint misread or dropped member groups: removes the memberships it took for users
/// again, forgets the stored members (the next sync reads the endpoint) and says so.
async fn refuse_nested<E: GroupEndpoint>(
    endpoint: &E,
    store: &MemberStore,
    anchor: &str,
    group_id: &str,
    check: NestedCheck,
) -> MemberSyncError {
    let removal = if check.as_user.is_empty() {
        None
    } else {
        let ops = patch_operations(
            check.as_user.iter().map(String::as_str),
            std::iter::empty(),
            RemoveForm::PathFilter,
        );
        endpoint
            .patch_members(group_id, ops)
            .await
            .err()
            .map(Box::new)
    };
    if let Err(e) = store.forget(anchor) {
        log::warn!("cannot forget the members of group {anchor:?}: {e}");
    }
    MemberSyncError::NestedRefused {
        group_id: group_id.to_string(),
        as_user: check.as_user,
        missing: check.missing,
        removal,
    }
}

/// Forgets the group's members and returns [`MemberSyncError::GroupGone`].
fn group_gone(store: &MemberStore, anchor: &str, group_id: &str) -> MemberSyncError {
    if let Err(e) = store.forget(anchor) {
        log::warn!("cannot forget the members of deleted group {anchor:?}: {e}");
    }
    MemberSyncError::GroupGone {
        group_id: group_id.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cell::{Cell, RefCell};
    use std::collections::BTreeSet;

    use crate::net::http::Method;

    /// A directory under the system temp dir, removed on drop.
    struct Tmp(PathBuf);

    impl Tmp {
        fn new() -> Tmp {
            let p = std::env::temp_dir().join(format!(
                "idrelay-members-{}-{:016x}",
                std::process::id(),
                fastrand::u64(..)
            ));
            Tmp(p)
        }
        fn store(&self) -> MemberStore {
            MemberStore::open(self.0.clone()).unwrap()
        }
    }

    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn loaded(store: &MemberStore, anchor: &str, gid: &str) -> Option<Vec<String>> {
        store
            .load(anchor, gid)
            .unwrap()
            .map(|m| m.collect::<Result<Vec<_>, _>>().unwrap())
    }

    fn ok(list: &[&str]) -> impl Iterator<Item = Result<String, Infallible>> {
        ids(list).into_iter().map(Ok)
    }

    fn added(d: &MemberDiff, new: &MemberIds) -> Vec<String> {
        d.added_ids(new).map(|s| s.into_owned()).collect()
    }

    /// Sorted, unique ids.
    fn mids(list: &[&str]) -> MemberIds {
        list.iter().collect()
    }

    fn listed(m: &MemberIds) -> Vec<String> {
        m.iter().map(|s| s.into_owned()).collect()
    }

    // --- pure parts -------------------------------------------------------------------

    #[test]
    fn escaping_round_trips_separators() {
        for s in [
            "plain",
            "",
            "a b",
            "100%",
            "x\ny\rz",
            "%0A",
            "tab\there",
            "Jörg ✓",
        ] {
            let e = escape(s);
            assert!(!e.contains(['\n', '\r', ' ']), "{e:?}");
            assert_eq!(unescape(&e).as_deref(), Some(s));
        }
        assert_eq!(escape("a b%\n"), "a%20b%25%0A");
        assert_eq!(unescape("%zz"), None);
        assert_eq!(unescape("%4"), None);
        assert_eq!(unescape("%C3"), None, "not UTF-8");
    }

    #[test]
    fn file_names_never_come_from_the_anchor_itself() {
        let dir = Path::new("/var/lib/idrelay/members");
        let store = MemberStore {
            dir: dir.to_path_buf(),
        };
        let long = "A".repeat(10_000);
        for anchor in [
            "../../etc/passwd",
            "/etc/shadow",
            "a/b",
            "\0",
            "",
            "..",
            &long,
        ] {
            let p = store.path(anchor, "members");
            assert_eq!(p.parent(), Some(dir), "{anchor:?}");
            let name = p.file_name().unwrap().to_str().unwrap();
            assert!(name.len() <= 255, "{name}");
            let stem = name.strip_suffix(".members").unwrap();
            assert!(
                stem.bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b'x' || b == b'h'),
                "{name}"
            );
        }
        assert_eq!(file_key("AQID"), "x41514944");
        assert_eq!(file_key(&long).len(), 33);
        assert_ne!(file_key(&long), file_key(&"A".repeat(10_001)));
    }

    #[test]
    fn diff_by_merge_walk() {
        let new = mids(&["d", "b", "a", "b", "e"]);
        assert_eq!(
            listed(&new),
            ids(&["a", "b", "d", "e"]),
            "sorted and de-duplicated"
        );
        let d = diff_members(ok(&["a", "c", "d", "f"]), &new).unwrap();
        assert_eq!(added(&d, &new), ids(&["b", "e"]));
        assert_eq!(d.added, vec![1..2, 3..4]);
        assert_eq!(listed(&d.removed), ids(&["c", "f"]));

        let new = mids(&["x", "y"]);
        let d = diff_members(ok(&[]), &new).unwrap();
        assert_eq!((d.added.len(), d.removed.len()), (1, 0), "one run");
        assert_eq!(d.added[0], 0..2);
        let d = diff_members(ok(&["x", "y"]), &new).unwrap();
        assert!(d.is_empty());
        let d = diff_members(ok(&["a", "z"]), &MemberIds::default()).unwrap();
        assert_eq!((d.added_len(), listed(&d.removed)), (0, ids(&["a", "z"])));
    }

    #[test]
    fn diff_stops_at_the_first_read_error() {
        let old = vec![Ok("a".to_string()), Err("disk"), Ok("b".to_string())];
        assert_eq!(diff_members(old, &mids(&["a"])), Err("disk"));
    }

    #[test]
    fn chunks_fill_removals_first_and_share_the_boundary() {
        let c: Vec<_> = plan_chunks(120, 70, 100).collect();
        assert_eq!(
            c,
            vec![
                PatchChunk {
                    removes: 0..100,
                    adds: 0..0
                },
                PatchChunk {
                    removes: 100..120,
                    adds: 0..70
                },
            ]
        );
        assert_eq!(plan_chunks(0, 250, 100).count(), 3);
        assert_eq!(plan_chunks(30, 40, 100).count(), 1);
        assert_eq!(plan_chunks(0, 0, 100).count(), 0);
        assert_eq!(plan_chunks(2, 1, 0).count(), 3, "chunk 0 counts as 1");
    }

    #[test]
    fn operations_are_rfc_7644_patch_ops() {
        let ops = patch_operations(["r1", "q\"uote\\"], ["a1", "a2"], RemoveForm::PathFilter);
        assert_eq!(
            Value::Array(ops),
            json!([
                {"op": "remove", "path": "members[value eq \"r1\"]"},
                {"op": "remove", "path": "members[value eq \"q\\\"uote\\\\\"]"},
                {"op": "add", "path": "members", "value": [{"value": "a1"}, {"value": "a2"}]}
            ])
        );
        let ops = patch_operations(["r1", "r2"], [], RemoveForm::ValueList);
        assert_eq!(
            Value::Array(ops),
            json!([{"op": "remove", "path": "members", "value": [{"value": "r1"}, {"value": "r2"}]}])
        );
        assert!(patch_operations([], [], RemoveForm::PathFilter).is_empty());
        assert_eq!(member_filter_path("a\nb"), "members[value eq \"a\\nb\"]");
    }

    // --- the store --------------------------------------------------------------------

    #[test]
    fn missing_is_unknown_and_empty_is_known() {
        let t = Tmp::new();
        let s = t.store();
        assert_eq!(loaded(&s, "g", "id1"), None);
        s.save("g", "id1", &MemberIds::default()).unwrap();
        assert_eq!(loaded(&s, "g", "id1"), Some(vec![]));
        s.forget("g").unwrap();
        assert_eq!(loaded(&s, "g", "id1"), None);
        assert_eq!(
            fs::read_dir(&t.0).unwrap().count(),
            0,
            "forget removes every file"
        );
        s.forget("g").unwrap();
    }

    #[test]
    fn save_and_load_round_trip_any_id() {
        let t = Tmp::new();
        let s = t.store();
        let list = mids(&["", " ", "%", "a\nb", "id-1", "ö"]);
        s.save("anchor with space/../", "group 1", &list).unwrap();
        assert_eq!(
            loaded(&s, "anchor with space/../", "group 1"),
            Some(listed(&list))
        );
    }

    /// Writes the journal of `anchor` under the epoch of its `.members` file.
    fn write_journal(s: &MemberStore, anchor: &str, gid: &str, body: &str) {
        let epoch = s.load(anchor, gid).unwrap().unwrap().epoch();
        fs::write(
            s.path(anchor, "journal"),
            format!("{JOURNAL_MAGIC} 1 {epoch:016x}\n{body}"),
        )
        .unwrap();
    }

    #[test]
    fn another_group_id_or_anchor_is_unknown() {
        let t = Tmp::new();
        let s = t.store();
        s.save("g", "id1", &mids(&["a"])).unwrap();
        assert_eq!(
            loaded(&s, "g", "id2"),
            None,
            "group recreated at the endpoint"
        );
        // A file whose header names another anchor (as after a hash collision).
        let other = s.path("other", "members");
        fs::copy(s.path("g", "members"), &other).unwrap();
        assert_eq!(loaded(&s, "other", "id1"), None);
    }

    #[test]
    fn committed_blocks_apply_in_order_and_aborted_ones_do_not() {
        let t = Tmp::new();
        let s = t.store();
        s.save("g", "id", &mids(&["b", "d", "f"])).unwrap();
        write_journal(
            &s,
            "g",
            "id",
            "~\n-d\n+a\n+x\n=\n~\n-x\n+e\n=\n~\n-b\n+z\n!\n",
        );
        assert_eq!(loaded(&s, "g", "id"), Some(ids(&["a", "b", "e", "f"])));
        assert!(s.load("g", "id").unwrap().unwrap().has_journal());
    }

    #[test]
    fn open_block_makes_members_unknown() {
        let t = Tmp::new();
        let s = t.store();
        s.save("g", "id", &mids(&["a"])).unwrap();
        write_journal(&s, "g", "id", "~\n+b\n=\n~\n+c\n");
        assert_eq!(loaded(&s, "g", "id"), None);
    }

    #[test]
    fn torn_journal_tail_makes_members_unknown() {
        let t = Tmp::new();
        let s = t.store();
        s.save("g", "id", &mids(&["a"])).unwrap();
        write_journal(&s, "g", "id", "~\n+b\n=");
        assert_eq!(loaded(&s, "g", "id"), None);
    }

    #[test]
    fn journal_of_another_epoch_is_ignored() {
        let t = Tmp::new();
        let s = t.store();
        s.save("g", "id", &mids(&["a"])).unwrap();
        fs::write(
            s.path("g", "journal"),
            format!("{JOURNAL_MAGIC} 1 {:016x}\n~\n+b\n", 12345u64),
        )
        .unwrap();
        assert_eq!(loaded(&s, "g", "id"), Some(ids(&["a"])));
        // A torn header: the journal was being created.
        fs::write(s.path("g", "journal"), "idrelay-mem").unwrap();
        assert_eq!(loaded(&s, "g", "id"), Some(ids(&["a"])));
    }

    #[test]
    fn journal_line_outside_a_block_is_corrupt() {
        let t = Tmp::new();
        let s = t.store();
        s.save("g", "id", &mids(&["a"])).unwrap();
        write_journal(&s, "g", "id", "+b\n");
        let e = s.load("g", "id").unwrap_err();
        assert!(
            matches!(e, MemberStoreError::Corrupt { line: 2, .. }),
            "{e}"
        );
    }

    /// Replaces the id lines of a `.members` file, keeping its header.
    fn rewrite_members(s: &MemberStore, anchor: &str, body: &str) {
        let path = s.path(anchor, "members");
        let text = fs::read_to_string(&path).unwrap();
        let header = text.lines().next().unwrap();
        fs::write(&path, format!("{header}\n{body}")).unwrap();
    }

    #[test]
    fn unsorted_members_file_is_corrupt() {
        let t = Tmp::new();
        let s = t.store();
        s.save("g", "id", &MemberIds::default()).unwrap();
        rewrite_members(&s, "g", "a\nc\nb\n");
        let got: Vec<_> = s.load("g", "id").unwrap().unwrap().collect();
        assert_eq!(got.len(), 3, "two ids, then the error, then nothing");
        assert!(
            matches!(&got[2], Err(MemberStoreError::Corrupt { line: 4, .. })),
            "{got:?}"
        );
        rewrite_members(&s, "g", "a\na\n");
        assert!(s.load("g", "id").unwrap().unwrap().any(|r| r.is_err()));
    }

    #[test]
    fn members_file_without_final_newline_is_corrupt() {
        let t = Tmp::new();
        let s = t.store();
        s.save("g", "id", &MemberIds::default()).unwrap();
        rewrite_members(&s, "g", "a\nb");
        assert!(s.load("g", "id").unwrap().unwrap().any(|r| r.is_err()));
        fs::write(s.path("g", "members"), "").unwrap();
        assert!(s.load("g", "id").is_err(), "no header");
        fs::write(s.path("g", "members"), "something else\n").unwrap();
        assert!(s.load("g", "id").is_err());
    }

    // --- the sync, against an in-memory endpoint ----------------------------------------

    /// How the fake endpoint fails one PATCH.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Fault {
        /// 400: certainly not applied.
        Rejected,
        /// Applied, but the answer was lost (502 after retries).
        AppliedLost,
        /// Not applied, but the client cannot know (timeout).
        LostUnapplied,
    }

    struct FakeGroup {
        id: String,
        exists: Cell<bool>,
        members: RefCell<BTreeSet<String>>,
        gets: Cell<usize>,
        patches: Cell<usize>,
        max_values: Cell<usize>,
        /// Fail the n-th PATCH from now (0 = the next) this way.
        fault: Cell<Option<(usize, Fault)>>,
        /// Ids this endpoint takes for user ids (shown with `type: User`).
        as_users: RefCell<BTreeSet<String>>,
        /// Ids this endpoint accepts and drops.
        drops: RefCell<BTreeSet<String>>,
        /// PATCH answers 200 with the group (else 204, nothing).
        answers_with_group: Cell<bool>,
        /// Removals by filter path are refused with 501 (the value-list form is taken).
        refuses_filter_removal: Cell<bool>,
        /// The removal form the sync asked to keep.
        form: Cell<RemoveForm>,
        /// The form is pinned by the profile.
        pinned: Cell<bool>,
        /// What the sync learnt the member key is (tests start from a proven `Id`).
        key: Cell<MemberKey>,
        /// Shows (and removes) members by their userName (`name-<id>`), like Canaille.
        shows_names: Cell<bool>,
        /// User reads (for userNames).
        user_gets: Cell<usize>,
        /// Answers removals with success and removes nothing.
        ignores_removals: Cell<bool>,
    }

    impl FakeGroup {
        fn new(id: &str) -> FakeGroup {
            FakeGroup {
                id: id.into(),
                exists: Cell::new(true),
                members: RefCell::default(),
                gets: Cell::new(0),
                patches: Cell::new(0),
                max_values: Cell::new(0),
                fault: Cell::new(None),
                as_users: RefCell::default(),
                drops: RefCell::default(),
                answers_with_group: Cell::new(false),
                refuses_filter_removal: Cell::new(false),
                form: Cell::new(RemoveForm::PathFilter),
                pinned: Cell::new(false),
                key: Cell::new(MemberKey::Id),
                shows_names: Cell::new(false),
                user_gets: Cell::new(0),
                ignores_removals: Cell::new(false),
            }
        }
        /// The value a member is shown (and removed) by.
        fn shown_value(&self, id: &str) -> String {
            if self.shows_names.get() {
                format!("name-{id}")
            } else {
                id.to_string()
            }
        }
        /// Removes the member shown as `value`, if any.
        fn remove_shown(&self, m: &mut BTreeSet<String>, value: &str) {
            if self.ignores_removals.get() {
                return;
            }
            let id = if self.shows_names.get() {
                match value.strip_prefix("name-") {
                    Some(id) => id,
                    None => return,
                }
            } else {
                value
            };
            m.remove(id);
        }
        fn shown(&self) -> Value {
            let members: Vec<Value> = self
                .members()
                .into_iter()
                .map(|id| {
                    if self.as_users.borrow().contains(&id) {
                        json!({"value": id, "type": "User", "$ref": format!("https://x/v2/Users/{id}")})
                    } else {
                        json!({"value": self.shown_value(&id)})
                    }
                })
                .collect();
            json!({"id": self.id, "members": members})
        }
        fn members(&self) -> Vec<String> {
            self.members.borrow().iter().cloned().collect()
        }
        fn error(&self, status: u16) -> ScimError {
            ScimError::Http {
                method: Method::Patch,
                path: format!("/v2/Groups/{}", self.id),
                status,
                scim_type: None,
                detail: None,
            }
        }
    }

    impl GroupEndpoint for FakeGroup {
        fn remove_form(&self) -> RemoveForm {
            self.form.get()
        }

        fn prefer_remove_form(&self, form: RemoveForm) {
            self.form.set(form);
        }

        fn remove_form_pinned(&self) -> bool {
            self.pinned.get()
        }

        fn member_key(&self) -> MemberKey {
            self.key.get()
        }

        fn learn_member_key(&self, key: MemberKey) {
            self.key.set(key);
        }

        async fn user_name(&self, user_id: &str) -> Result<Option<String>, ScimError> {
            self.user_gets.set(self.user_gets.get() + 1);
            Ok(Some(format!("name-{user_id}")))
        }

        async fn group(&self, group_id: &str) -> Result<Option<Value>, ScimError> {
            self.gets.set(self.gets.get() + 1);
            if !self.exists.get() || group_id != self.id {
                return Ok(None);
            }
            Ok(Some(self.shown()))
        }

        async fn current_members(&self, group_id: &str) -> Result<Option<Vec<String>>, ScimError> {
            self.gets.set(self.gets.get() + 1);
            if !self.exists.get() || group_id != self.id {
                return Ok(None);
            }
            let mut v = self.members();
            v.reverse(); // the endpoint's order is its own
            Ok(Some(v))
        }

        async fn patch_members(
            &self,
            group_id: &str,
            ops: Vec<Value>,
        ) -> Result<Option<Value>, ScimError> {
            if !self.exists.get() || group_id != self.id {
                return Err(self.error(404));
            }
            let fault = match self.fault.get() {
                Some((0, f)) => {
                    self.fault.set(None);
                    Some(f)
                }
                Some((n, f)) => {
                    self.fault.set(Some((n - 1, f)));
                    None
                }
                None => None,
            };
            if matches!(fault, Some(Fault::Rejected)) {
                return Err(self.error(400));
            }
            if matches!(fault, Some(Fault::LostUnapplied)) {
                return Err(self.error(504));
            }
            let filter_removal = ops
                .iter()
                .any(|op| op["op"] == "remove" && op["path"] != "members");
            if self.refuses_filter_removal.get() && filter_removal {
                return Err(self.error(501));
            }
            self.patches.set(self.patches.get() + 1);
            let mut values = 0;
            let mut m = self.members.borrow_mut();
            for op in ops {
                let path = op["path"].as_str().unwrap();
                match op["op"].as_str().unwrap() {
                    "add" => {
                        assert_eq!(path, "members");
                        for v in op["value"].as_array().unwrap() {
                            let id = v["value"].as_str().unwrap().to_string();
                            if !self.drops.borrow().contains(&id) {
                                m.insert(id);
                            }
                            values += 1;
                        }
                    }
                    "remove" if path == "members" => {
                        for v in op["value"].as_array().unwrap() {
                            self.remove_shown(&mut m, v["value"].as_str().unwrap());
                            values += 1;
                        }
                    }
                    "remove" => {
                        let literal = path
                            .strip_prefix("members[value eq ")
                            .and_then(|p| p.strip_suffix(']'))
                            .unwrap();
                        self.remove_shown(
                            &mut m,
                            &serde_json::from_str::<String>(literal).unwrap(),
                        );
                        values += 1;
                    }
                    other => panic!("op {other}"),
                }
            }
            self.max_values.set(self.max_values.get().max(values));
            drop(m);
            if matches!(fault, Some(Fault::AppliedLost)) {
                return Err(self.error(502));
            }
            Ok(self.answers_with_group.get().then(|| self.shown()))
        }
    }

    fn sync(
        ep: &FakeGroup,
        s: &MemberStore,
        new: &[String],
        chunk: usize,
    ) -> Result<MemberWrites, MemberSyncError> {
        smol::block_on(sync_via(
            ep,
            s,
            "anchor",
            &ep.id.clone(),
            &new.iter().collect(),
            &[],
            chunk,
            Vec::new(),
        ))
    }

    fn sync_nested(
        ep: &FakeGroup,
        s: &MemberStore,
        new: &[&str],
        nested: &[&str],
    ) -> Result<MemberWrites, MemberSyncError> {
        let nested: Vec<String> = nested.iter().map(|x| x.to_string()).collect();
        smol::block_on(sync_via(
            ep,
            s,
            "anchor",
            &ep.id.clone(),
            &new.iter().copied().collect(),
            &nested,
            100,
            Vec::new(),
        ))
    }

    /// `[group] member_removal = "filter"`: a refused filter-form removal is the group's
    /// failure, never retried as a value list; `"value_list"`: the first request is one.
    #[test]
    fn a_pinned_removal_dialect_is_the_only_one_sent() {
        let t = Tmp::new();
        let s = t.store();
        let ep = FakeGroup::new("g");
        sync(&ep, &s, &ids(&["a", "b", "c"]), 100).unwrap();
        ep.refuses_filter_removal.set(true);
        ep.pinned.set(true);
        let e = sync(&ep, &s, &ids(&["a"]), 100).unwrap_err();
        assert!(e.to_string().contains("501"), "{e}");
        assert_eq!(ep.members(), ["a", "b", "c"]);
        assert_eq!(ep.form.get(), RemoveForm::PathFilter, "the pin holds");

        let ep = FakeGroup::new("h");
        let s2 = Tmp::new();
        let s2s = s2.store();
        sync(&ep, &s2s, &ids(&["a", "b"]), 100).unwrap();
        ep.refuses_filter_removal.set(true);
        ep.pinned.set(true);
        ep.form.set(RemoveForm::ValueList);
        let patches = ep.patches.get();
        let w = sync(&ep, &s2s, &ids(&["a"]), 100).unwrap();
        assert_eq!((w.removed, w.requests), (1, 1));
        assert_eq!(ep.patches.get(), patches + 1, "no refused try first");
        assert_eq!(ep.members(), ["a"]);
    }

    /// Regression (a SCIM library in its test configuration): `remove` with the path
    /// `members[value eq "id"]` answered 501 and the removal was lost; the value-list form
    /// works there. A refused removal is sent again in that form, which is then kept.
    #[test]
    fn a_removal_refused_in_the_filter_form_goes_as_a_value_list() {
        let t = Tmp::new();
        let s = t.store();
        let ep = FakeGroup::new("g");
        sync(&ep, &s, &ids(&["a", "b", "c"]), 100).unwrap();
        ep.refuses_filter_removal.set(true);
        let w = sync(&ep, &s, &ids(&["a"]), 100).unwrap();
        assert_eq!((w.removed, w.requests), (2, 1));
        assert_eq!(ep.members(), ["a"]);
        assert_eq!(ep.form.get(), RemoveForm::ValueList, "the form is kept");
        assert_eq!(loaded(&s, "anchor", "g"), Some(ids(&["a"])));
        // Next time the value list goes first: one request, no refusal.
        let patches = ep.patches.get();
        sync(&ep, &s, &ids(&[]), 100).unwrap();
        assert_eq!(ep.patches.get(), patches + 1);
        assert!(ep.members().is_empty());
    }

    /// Regression (Canaille): an endpoint that shows members by userName answered a
    /// removal by id with 200 and removed nothing; the agent reported the group in step.
    /// The removal is verified by reading the group, sent again by userName, and the key
    /// is kept: later removals go by userName at once.
    #[test]
    fn a_removal_ignored_by_id_is_sent_again_by_user_name_and_the_key_is_learnt() {
        let t = Tmp::new();
        let s = t.store();
        let ep = FakeGroup::new("g");
        ep.shows_names.set(true);
        ep.key.set(MemberKey::Unproven);
        sync(&ep, &s, &ids(&["a", "b", "c"]), 100).unwrap();
        let w = sync(&ep, &s, &ids(&["a", "c"]), 100).unwrap();
        assert_eq!(w.removed, 1);
        assert_eq!(ep.members(), ["a", "c"], "the member is really removed");
        assert_eq!(ep.key.get(), MemberKey::UserName);
        assert_eq!(loaded(&s, "anchor", "g"), Some(ids(&["a", "c"])));
        // Next removal: by userName at once (one PATCH), still verified (one GET).
        let (patches, gets) = (ep.patches.get(), ep.gets.get());
        sync(&ep, &s, &ids(&["a"]), 100).unwrap();
        assert_eq!(ep.members(), ["a"]);
        assert_eq!((ep.patches.get(), ep.gets.get()), (patches + 1, gets + 1));
    }

    /// A removal by id that the group then no longer shows proves the key: no more reads.
    #[test]
    fn a_verified_removal_by_id_proves_the_key() {
        let t = Tmp::new();
        let s = t.store();
        let ep = FakeGroup::new("g");
        ep.key.set(MemberKey::Unproven);
        sync(&ep, &s, &ids(&["a", "b", "c"]), 100).unwrap();
        let gets = ep.gets.get();
        sync(&ep, &s, &ids(&["a", "c"]), 100).unwrap();
        assert_eq!(ep.gets.get(), gets + 1, "read once to verify");
        assert_eq!(ep.key.get(), MemberKey::Id);
        assert_eq!(
            ep.user_gets.get(),
            1,
            "its userName was read to rule out the other form"
        );
        sync(&ep, &s, &ids(&["a"]), 100).unwrap();
        assert_eq!(ep.gets.get(), gets + 1, "proven: not read again");
        assert_eq!(ep.members(), ["a"]);
    }

    /// A removal answered with success that removes nothing, by id or by userName, is an
    /// error, and the stored members are forgotten so the next sync reads the endpoint.
    #[test]
    fn a_removal_still_shown_is_an_error_not_in_step() {
        let t = Tmp::new();
        let s = t.store();
        let ep = FakeGroup::new("g");
        ep.key.set(MemberKey::Unproven);
        sync(&ep, &s, &ids(&["a", "b"]), 100).unwrap();
        ep.ignores_removals.set(true);
        let e = sync(&ep, &s, &ids(&["a"]), 100).unwrap_err();
        match &e {
            MemberSyncError::RemovalIgnored { group_id, members } => {
                assert_eq!(
                    (group_id.as_str(), members.as_slice()),
                    ("g", &["b".to_string()][..])
                );
            }
            other => panic!("{other}"),
        }
        assert!(e.to_string().contains("still shows it"), "{e}");
        assert_eq!(loaded(&s, "anchor", "g"), None, "forgotten");
        // By userName too.
        let ep = FakeGroup::new("h");
        ep.shows_names.set(true);
        ep.key.set(MemberKey::Unproven);
        let s2 = t.store();
        sync(&ep, &s2, &ids(&["a", "b"]), 100).unwrap();
        ep.ignores_removals.set(true);
        assert!(matches!(
            sync(&ep, &s2, &ids(&["a"]), 100),
            Err(MemberSyncError::RemovalIgnored { .. })
        ));
    }

    #[test]
    fn nested_members_are_judged_by_what_the_endpoint_shows() {
        let group = json!({"members": [
            {"value": "u1"},
            {"value": "g1", "type": "Group"},
            {"value": "g2", "type": "User"},
            {"value": "g3", "$ref": "https://x/scim/v2/Users/g3"},
            {"value": "g4", "$ref": "https://x/scim/v2/Groups/g4"},
            {"value": "g5"},
        ]});
        let check = check_nested(&group, &["g1", "g2", "g3", "g4", "g5", "g6"]);
        assert_eq!(check.as_user, ["g2", "g3"]);
        assert_eq!(check.missing, ["g6"]);
        // A group shown without members at all tells nothing.
        assert!(check_nested(&json!({"id": "x"}), &["g1"]).is_empty());
    }

    /// Regression (a SCIM library that numbers users and groups apart): a nested group
    /// member was read as the user with the same id, the endpoint's own service account
    /// joined the group, and the agent reported success. The membership is removed again,
    /// the stored members are forgotten and the sync says why.
    #[test]
    fn a_member_group_taken_for_a_user_is_removed_again() {
        for answers_with_group in [true, false] {
            let t = Tmp::new();
            let s = t.store();
            let ep = FakeGroup::new("g");
            ep.as_users.borrow_mut().insert("g-child".into());
            ep.answers_with_group.set(answers_with_group);
            let err = sync_nested(&ep, &s, &["g-child", "u1", "u2"], &["g-child"]).unwrap_err();
            match &err {
                MemberSyncError::NestedRefused {
                    as_user,
                    missing,
                    removal,
                    ..
                } => {
                    assert_eq!(as_user, &["g-child"]);
                    assert!(missing.is_empty() && removal.is_none());
                }
                other => panic!("{other}"),
            }
            assert!(err.to_string().contains("removed again"), "{err}");
            assert_eq!(
                ep.members(),
                ["u1", "u2"],
                "the misread member is gone again"
            );
            assert_eq!(loaded(&s, "anchor", "g"), None, "stored members forgotten");
            // 204: the group was read to check it (besides the first read of the members).
            let reads = if answers_with_group { 1 } else { 2 };
            assert_eq!(
                ep.gets.get(),
                reads,
                "answers_with_group {answers_with_group}"
            );
        }
    }

    #[test]
    fn a_member_group_the_endpoint_drops_is_reported() {
        let t = Tmp::new();
        let s = t.store();
        let ep = FakeGroup::new("g");
        ep.drops.borrow_mut().insert("g-child".into());
        ep.answers_with_group.set(true);
        let err = sync_nested(&ep, &s, &["g-child", "u1"], &["g-child"]).unwrap_err();
        assert!(
            matches!(&err, MemberSyncError::NestedRefused { missing, as_user, .. } if missing == &["g-child"] && as_user.is_empty()),
            "{err}"
        );
        assert_eq!(ep.members(), ["u1"]);
    }

    #[test]
    fn a_member_group_kept_as_a_group_passes() {
        let t = Tmp::new();
        let s = t.store();
        let ep = FakeGroup::new("g");
        ep.answers_with_group.set(true);
        let w = sync_nested(&ep, &s, &["g-child", "u1"], &["g-child"]).unwrap();
        assert_eq!((w.added, w.requests), (2, 1));
        assert_eq!(loaded(&s, "anchor", "g"), Some(ids(&["g-child", "u1"])));
        // Users alone: nothing to check, no extra read.
        let ep = FakeGroup::new("h");
        sync_nested(&ep, &s, &["u1"], &[]).unwrap();
        assert_eq!(ep.gets.get(), 1, "only the first read of the members");
    }

    fn numbered(range: Range<usize>) -> Vec<String> {
        range.map(|i| format!("u{i:04}")).collect()
    }

    #[test]
    fn first_sync_reads_the_endpoint_then_only_diffs_are_sent() {
        let t = Tmp::new();
        let s = t.store();
        let ep = FakeGroup::new("g1");
        let w = sync(&ep, &s, &numbered(0..250), 100).unwrap();
        assert_eq!((w.added, w.removed, w.requests), (250, 0, 3));
        assert!(w.endpoint_read);
        assert_eq!(ep.members(), numbered(0..250));
        assert_eq!(loaded(&s, "anchor", "g1"), Some(numbered(0..250)));

        let mut next = numbered(30..290);
        next.reverse();
        let w = sync(&ep, &s, &next, 100).unwrap();
        assert_eq!((w.added, w.removed, w.requests), (40, 30, 1));
        assert!(!w.endpoint_read);
        assert_eq!((ep.gets.get(), ep.max_values.get()), (1, 100));
        assert_eq!(ep.members(), numbered(30..290));

        let w = sync(&ep, &s, &numbered(30..290), 100).unwrap();
        assert_eq!(w, MemberWrites::default(), "nothing changed, nothing sent");
        assert!(!s.path("anchor", "journal").exists());
    }

    #[test]
    fn rejected_chunk_keeps_the_chunks_before_it() {
        let t = Tmp::new();
        let s = t.store();
        let ep = FakeGroup::new("g1");
        s.save("anchor", "g1", &MemberIds::default()).unwrap();
        ep.fault.set(Some((2, Fault::Rejected)));
        let e = sync(&ep, &s, &numbered(0..500), 100).unwrap_err();
        assert_eq!(
            e.to_string(),
            "group members: SCIM PATCH /v2/Groups/g1 answered 400"
        );
        assert_eq!(loaded(&s, "anchor", "g1"), Some(numbered(0..200)));
        let w = sync(&ep, &s, &numbered(0..500), 100).unwrap();
        assert_eq!((w.added, w.requests, w.endpoint_read), (300, 3, false));
        assert_eq!(ep.members(), numbered(0..500));
    }

    #[test]
    fn ambiguous_failure_makes_the_next_sync_read_the_endpoint() {
        let t = Tmp::new();
        let s = t.store();
        let ep = FakeGroup::new("g1");
        sync(&ep, &s, &numbered(0..10), 4).unwrap();
        ep.fault.set(Some((1, Fault::AppliedLost)));
        assert!(sync(&ep, &s, &numbered(5..20), 4).is_err());
        assert_eq!(
            loaded(&s, "anchor", "g1"),
            None,
            "a request of unknown outcome"
        );
        // The target changes meanwhile: what the lost request added must go again.
        let w = sync(&ep, &s, &numbered(0..5), 4).unwrap();
        assert!(w.endpoint_read);
        assert_eq!(ep.members(), numbered(0..5));
    }

    #[test]
    fn deleted_group_is_group_gone_and_forgotten() {
        let t = Tmp::new();
        let s = t.store();
        let ep = FakeGroup::new("g1");
        sync(&ep, &s, &numbered(0..3), 100).unwrap();
        ep.exists.set(false);
        let e = sync(&ep, &s, &numbered(0..4), 100).unwrap_err();
        assert_eq!(
            e,
            MemberSyncError::GroupGone {
                group_id: "g1".into()
            }
        );
        assert_eq!(fs::read_dir(&t.0).unwrap().count(), 0);
        // Unknown members and a missing group: the GET says so.
        let e = sync(&ep, &s, &numbered(0..4), 100).unwrap_err();
        assert!(matches!(e, MemberSyncError::GroupGone { .. }), "{e}");
    }

    #[test]
    fn corrupt_store_falls_back_to_the_endpoint() {
        let t = Tmp::new();
        let s = t.store();
        let ep = FakeGroup::new("g1");
        sync(&ep, &s, &numbered(0..3), 100).unwrap();
        rewrite_members(&s, "anchor", "zzz\naaa\n");
        let w = sync(&ep, &s, &numbered(1..4), 100).unwrap();
        assert!(w.endpoint_read);
        assert_eq!((w.added, w.removed), (1, 1));
        assert_eq!(ep.members(), numbered(1..4));
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// Sync to this target (indices into a small id space), maybe failing one PATCH.
        Sync(BTreeSet<u8>, usize, Option<(usize, Fault)>),
        /// The state directory is lost.
        LoseStore,
        /// Someone else adds a member at the endpoint, then the agent forgets (full pass).
        DriftAndForget(u8),
    }

    fn step() -> impl Strategy<Value = Step> {
        let fault = prop_oneof![
            Just(Fault::Rejected),
            Just(Fault::AppliedLost),
            Just(Fault::LostUnapplied)
        ];
        prop_oneof![
            6 => (
                proptest::collection::btree_set(0u8..40, 0..30),
                1usize..8,
                proptest::option::of((0usize..5, fault))
            )
                .prop_map(|(t, c, f)| Step::Sync(t, c, f)),
            1 => Just(Step::LoseStore),
            1 => (0u8..60).prop_map(Step::DriftAndForget),
        ]
    }

    fn id_of(i: u8) -> String {
        // Ids that need escaping and sort oddly, too.
        match i % 4 {
            0 => format!("id {i}"),
            1 => format!("id\n{i}"),
            2 => format!("{i}%"),
            _ => format!("ö{i}"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn escape_round_trips(s in ".*") {
            prop_assert_eq!(unescape(&escape(&s)), Some(s));
        }

        #[test]
        fn diff_applied_to_old_gives_new(
            old in proptest::collection::btree_set("[a-e]{0,3}", 0..40),
            new in proptest::collection::vec("[a-e]{0,3}", 0..40),
        ) {
            let wanted: MemberIds = new.iter().collect();
            let d = diff_members(old.iter().cloned().map(Ok::<_, Infallible>), &wanted)
                .unwrap();
            let mut applied = old.clone();
            for r in d.removed.iter() {
                prop_assert!(applied.remove(r.as_ref()), "removed {} was not there", r);
            }
            for a in d.added_ids(&wanted) {
                prop_assert!(applied.insert(a.to_string()), "added {} was there", a);
            }
            let expected: BTreeSet<String> = new.into_iter().collect();
            prop_assert_eq!(applied, expected);
            let removed = listed(&d.removed);
            prop_assert!(removed.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(d.added.iter().all(|r| !r.is_empty()));
            prop_assert!(d.added.windows(2).all(|w| w[0].end < w[1].start));
        }

        #[test]
        fn chunks_cover_everything_once_within_the_limit(
            removes in 0usize..300, adds in 0usize..300, chunk in 0usize..120,
        ) {
            let plan: Vec<_> = plan_chunks(removes, adds, chunk).collect();
            prop_assert_eq!(plan.len(), (removes + adds).div_ceil(chunk.max(1)));
            let (mut r, mut a) = (0, 0);
            for c in &plan {
                prop_assert!(!c.is_empty() && c.len() <= chunk.max(1));
                prop_assert_eq!(c.removes.start, r);
                prop_assert_eq!(c.adds.start, a);
                prop_assert!(c.adds.is_empty() || c.removes.end == removes);
                r = c.removes.end;
                a = c.adds.end;
            }
            prop_assert_eq!((r, a), (removes, adds));
        }

        /// Model test: whatever failed, was lost or drifted before, a sync that succeeds
        /// leaves the endpoint and the store holding exactly the target, and no request
        /// carries more than `chunk` values.
        #[test]
        fn successful_sync_converges_after_any_history(
            steps in proptest::collection::vec(step(), 1..8),
        ) {
            let t = Tmp::new();
            let ep = FakeGroup::new("g1");
            let s = t.store();
            for st in steps {
                match st {
                    Step::Sync(target, chunk, fault) => {
                        let target: Vec<String> = target.into_iter().map(id_of).collect();
                        ep.fault.set(fault);
                        ep.max_values.set(0);
                        let result = sync(&ep, &s, &target, chunk);
                        prop_assert!(ep.max_values.get() <= chunk);
                        let failed = ep.fault.get().is_none() && fault.is_some();
                        ep.fault.set(None);
                        if failed {
                            prop_assert!(matches!(result, Err(MemberSyncError::Scim(_))));
                        } else {
                            prop_assert!(result.is_ok(), "{:?}", result);
                            let mut want = target.clone();
                            want.sort();
                            prop_assert_eq!(ep.members(), want.clone());
                            prop_assert_eq!(loaded(&s, "anchor", "g1"), Some(want));
                        }
                    }
                    Step::LoseStore => {
                        let _ = fs::remove_dir_all(&t.0);
                    }
                    Step::DriftAndForget(i) => {
                        ep.members.borrow_mut().insert(id_of(i));
                        s.forget("anchor").unwrap();
                    }
                }
            }
        }
    }
}
