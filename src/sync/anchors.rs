//! The anchor index: which SCIM resource each directory object became, and a hash of the
//! representation last sent for it.
//!
//! Keyed by externalId (the directory anchor, see docs/architecture.md §4). It is a cache, never the
//! truth: when it is missing, stale or corrupt the engine looks resources up by externalId
//! at the endpoint before creating anything, so losing it costs requests, never duplicates.
//! That is why a corrupt file is logged and dropped rather than fatal.
//!
//! On disk: `anchors.jsonl` in the state directory, one JSON object per line
//! (`{"x":externalId,"k":"u"|"g","id":scimId,"h":"hash hex","dn":DN}`, and `"s":"hash hex"`
//! where a source hash is known), replaced atomically
//! (write to a temporary file, fsync, rename, fsync the directory). Lines are written in the
//! order the objects were last recorded (oldest first), so a reload finds, for a DN two
//! objects were recorded under, the one recorded last, as before the restart. The line format
//! has only grown the optional `s` since the first release (so there is no version marker):
//! every file an older agent wrote loads as it is, and an older agent reading a newer file
//! ignores `s` (and writes it back without it, which costs the next pass mapping, never a
//! wrong "unchanged").
//!
//! The source hash ([`crate::scim::source_hash`]) is what a user's representation was
//! computed from when the index last saw that representation's hash: kept with that hash
//! only (any other representation or DN recorded for the object forgets it), it lets a
//! full pass tell an unchanged user without mapping it.
//!
//! While the agent runs, the index's working copy is a [`DiskMap`] in the state directory
//! (unlinked scratch files, see that module): packed externalId → kind, representation
//! hash, source hash, packed SCIM id and DN. So the index costs the process a few buffers whatever the
//! directory's size (the data sits in the page cache), and a record recorded again moves
//! to the end of the order `save` writes. Normalised DN → externalId is a second such map,
//! built on the first [`AnchorIndex::by_dn`] call (a full pass never needs it) and kept up
//! to date from then on; a hit is checked against the record's own DN.
//!
//! A failed read or write of the working copy is logged, reads as "not known" (a lookup
//! at the endpoint, never a duplicate) and makes the next [`AnchorIndex::save`] drop the
//! working copy, load the last saved file again and return the error, so a damaged
//! working copy is never written over the good file.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::scim::ResourceKind;
use crate::sync::diskmap::DiskMap;

/// What the index knows about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    /// User or group.
    pub kind: ResourceKind,
    /// The SCIM `id` the endpoint gave the resource.
    pub scim_id: String,
    /// Hash of the representation last sent ([`representation_hash`]); 0 when unknown.
    pub hash: u64,
    /// The object's DN when it was last sent (renames keep the anchor and update this).
    pub dn: String,
}

/// externalId → [`Anchor`], persisted in the state directory.
pub struct AnchorIndex {
    path: PathBuf,
    /// Packed externalId → encoded record ([`encode`]), in the order recorded.
    map: DiskMap,
    /// Normalised DN → packed externalId, to resolve `member` / `manager` values between
    /// passes; built on the first [`AnchorIndex::by_dn`] call, `None` if that failed.
    by_dn: OnceLock<Option<DiskMap>>,
    /// A working-file call failed: the working copy is not to be trusted (see `save`).
    failed: AtomicBool,
    dirty: bool,
}

impl fmt::Debug for AnchorIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnchorIndex")
            .field("path", &self.path)
            .field("objects", &self.map.len())
            .field("failed", &self.failed.load(Ordering::Relaxed))
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct Line<'a> {
    x: std::borrow::Cow<'a, str>,
    k: &'a str,
    id: std::borrow::Cow<'a, str>,
    h: String,
    #[serde(default)]
    dn: std::borrow::Cow<'a, str>,
    /// The source hash recorded with `h` ([`AnchorIndex::set_source`]); absent when unknown
    /// (older files, objects written since).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    s: Option<String>,
}

/// The file name inside the state directory.
pub const FILE_NAME: &str = "anchors.jsonl";

impl AnchorIndex {
    /// An empty index for `state_dir` (nothing read). Its working files go in `state_dir`,
    /// or where [`DiskMap::scratch`] falls back to.
    pub fn empty(state_dir: &Path) -> AnchorIndex {
        Self::with_capacity(state_dir, 0)
    }

    fn with_capacity(state_dir: &Path, capacity: u64) -> AnchorIndex {
        let map = DiskMap::scratch(state_dir, "anchor index", capacity).unwrap_or_else(|e| {
            // Neither the state directory nor the temporary one takes a file: nothing
            // else the agent does could work either.
            panic!("cannot create the anchor index's working file: {e}")
        });
        AnchorIndex {
            path: state_dir.join(FILE_NAME),
            map,
            by_dn: OnceLock::new(),
            failed: AtomicBool::new(false),
            dirty: false,
        }
    }

    /// How many objects the saved index in `state_dir` holds (its non-empty lines; the file
    /// holds one line per object), read as a stream: for `status`, which must not build
    /// the whole index (nor need a working file) to print a count. A missing file: 0.
    pub fn count_saved(state_dir: &Path) -> io::Result<u64> {
        let file = match File::open(state_dir.join(FILE_NAME)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut n = 0;
        for line in BufReader::new(file).split(b'\n') {
            if !line?.iter().all(u8::is_ascii_whitespace) {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Loads the index from `state_dir`; a missing file is an empty index, a corrupt one is
    /// logged and treated as empty (see the module doc for why that is safe).
    pub fn load(state_dir: &Path) -> io::Result<AnchorIndex> {
        let path = state_dir.join(FILE_NAME);
        let file = match crate::state_dir::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(AnchorIndex::empty(state_dir))
            }
            Err(e) => return Err(e),
        };
        // Sized from the file's line count (one object a line), so that the table needs no
        // rebuild while loading and does not double because lines grew (a source hash).
        let mut file = file;
        let lines = count_lines(&mut file)?;
        let mut index = AnchorIndex::with_capacity(state_dir, lines);
        for (n, line) in BufReader::new(file).lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            match parse_line(&line) {
                Some((x, a, source)) => index.put_sourced(&x, a, source),
                None => {
                    log::warn!(
                        "anchor index {} is damaged at line {}; starting from an empty index (objects are matched again by externalId, nothing is duplicated)",
                        index.path.display(),
                        n + 1
                    );
                    let mut fresh = AnchorIndex::empty(state_dir);
                    fresh.dirty = true;
                    return Ok(fresh);
                }
            }
        }
        if index.failed.load(Ordering::Relaxed) {
            return Err(io::Error::other(format!(
                "loading {}: its working copy could not be written",
                path.display()
            )));
        }
        index.dirty = false;
        Ok(index)
    }

    /// The anchor of `external_id` if it is of `kind`.
    pub fn get(&self, kind: ResourceKind, external_id: &str) -> Option<Anchor> {
        self.get_any(external_id).filter(|a| a.kind == kind)
    }

    /// The SCIM id of `external_id` if it is of `kind` (what a reference resolves to).
    pub fn scim_id(&self, kind: ResourceKind, external_id: &str) -> Option<String> {
        self.get(kind, external_id).map(|a| a.scim_id)
    }

    /// The anchor of `external_id` if it is of `kind`, with the source hash recorded with
    /// its representation hash (0: none, [`AnchorIndex::set_source`]).
    pub fn sourced(&self, kind: ResourceKind, external_id: &str) -> Option<(Anchor, u64)> {
        self.lookup_sourced(&packed(external_id))
            .filter(|(a, _)| a.kind == kind)
    }

    /// Records that `source` ([`crate::scim::source_hash`]) maps to the representation
    /// whose hash the index holds for `external_id` now (checked by the caller, who just
    /// computed both). Nothing else changes; any later [`AnchorIndex::put`] of another
    /// representation forgets it.
    pub fn set_source(&mut self, external_id: &str, source: u64) {
        let ext = packed(external_id);
        let Some((a, old)) = self.lookup_sourced(&ext) else {
            return;
        };
        if old == source {
            return;
        }
        match self.map.insert(&ext, &encode(&a, source)) {
            Ok(()) => self.dirty = true,
            Err(e) => self.fail(&e),
        }
    }

    /// Records what the endpoint holds for `external_id` now.
    pub fn put(&mut self, external_id: &str, anchor: Anchor) {
        self.put_sourced(external_id, anchor, 0)
    }

    /// [`AnchorIndex::put`] with the source hash known to map to it (0: unknown); an equal
    /// anchor keeps the source hash it has.
    fn put_sourced(&mut self, external_id: &str, anchor: Anchor, source: u64) {
        let ext = packed(external_id);
        let old = self.lookup(&ext);
        if old.as_ref() == Some(&anchor) {
            if source != 0 {
                self.set_source(external_id, source);
            }
            return;
        }
        let value = encode(&anchor, source);
        if let Err(e) = self.map.insert(&ext, &value) {
            self.fail(&e);
            return;
        }
        self.dirty = true;
        if let Some(Some(t)) = self.by_dn.get_mut() {
            let key = crate::ldap::dn::normalize(&anchor.dn);
            let mut r = t.insert(key.as_bytes(), &ext);
            if let Some(old) = old.filter(|o| crate::ldap::dn::normalize(&o.dn) != key) {
                r = r.and_then(|_| unset_dn(t, &old.dn, &ext));
            }
            if let Err(e) = r {
                self.fail(&e);
            }
        }
    }

    /// Records that `external_id` now lives at `dn` (renamed or moved, nothing to send).
    pub fn note_dn(&mut self, external_id: &str, dn: &str) {
        let Some(a) = self.get_any(external_id) else {
            return;
        };
        if a.dn == dn {
            return;
        }
        let moved = Anchor {
            dn: dn.to_string(),
            ..a
        };
        self.put(external_id, moved);
    }

    /// Forgets `external_id` (its resource is gone at the endpoint).
    pub fn remove(&mut self, external_id: &str) {
        let ext = packed(external_id);
        let Some(old) = self.lookup(&ext) else {
            return;
        };
        let mut r = self.map.remove(&ext).map(|_| ());
        if let Some(Some(t)) = self.by_dn.get_mut() {
            r = r.and_then(|_| unset_dn(t, &old.dn, &ext));
        }
        match r {
            Ok(()) => self.dirty = true,
            Err(e) => self.fail(&e),
        }
    }

    /// The externalId and anchor of the object last recorded under `dn` (any spelling).
    pub fn by_dn(&self, dn: &str) -> Option<(String, Anchor)> {
        let table = self
            .by_dn
            .get_or_init(|| match self.build_dn_table() {
                Ok(t) => Some(t),
                Err(e) => {
                    self.fail(&e);
                    None
                }
            })
            .as_ref()?;
        let key = crate::ldap::dn::normalize(dn);
        let ext = match table.get(key.as_bytes()) {
            Ok(x) => x?,
            Err(e) => {
                self.fail(&e);
                return None;
            }
        };
        let a = self.lookup(&ext)?;
        (crate::ldap::dn::normalize(&a.dn) == key).then(|| (unpack_key(&ext), a))
    }

    /// The anchor of `external_id`, whatever its kind.
    pub fn get_any(&self, external_id: &str) -> Option<Anchor> {
        self.lookup(&packed(external_id))
    }

    /// Every externalId and anchor, in the order they were recorded (each decoded as it is
    /// reached). A read error ends the walk early and is logged; [`AnchorIndex::save`]
    /// then reports it.
    pub fn iter(&self) -> impl Iterator<Item = (String, Anchor)> + '_ {
        self.map.iter().map_while(move |r| match r {
            Ok((x, v)) => match decode(&v) {
                Some(a) => Some((unpack_key(&x), a)),
                None => {
                    self.fail(&io::Error::new(
                        io::ErrorKind::InvalidData,
                        "undecodable record",
                    ));
                    None
                }
            },
            Err(e) => {
                self.fail(&e);
                None
            }
        })
    }

    /// Every object whose packed externalId ([`pack_key`] form) `seen` does not know: what
    /// a complete scope scan no longer found. Any error (of the index or of `seen`) is
    /// returned rather than a partial answer, since the answer decides deletes.
    pub fn unseen(
        &self,
        mut seen: impl FnMut(&[u8]) -> io::Result<bool>,
    ) -> io::Result<Vec<(String, Anchor)>> {
        let mut out = Vec::new();
        for r in self.map.iter() {
            let (x, v) = r?;
            if seen(&x)? {
                continue;
            }
            let a = decode(&v).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "anchor index working copy: undecodable record for {}",
                        unpack_key(&x)
                    ),
                )
            })?;
            out.push((unpack_key(&x), a));
        }
        Ok(out)
    }

    /// How many known objects `seen` does not see (what [`AnchorIndex::unseen`] would list),
    /// without collecting them.
    pub fn count_unseen(
        &self,
        mut seen: impl FnMut(&[u8]) -> io::Result<bool>,
    ) -> io::Result<usize> {
        let mut n = 0;
        for r in self.map.iter() {
            let (x, _) = r?;
            if !seen(&x)? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// The state directory the index belongs to (where scratch files of a pass go too).
    pub fn state_dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// Number of objects known.
    pub fn len(&self) -> usize {
        self.map.len() as usize
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Writes the index if it changed since the last save. An error names the file and
    /// keeps the OS error's kind (a full disk is [`io::ErrorKind::StorageFull`]); the index
    /// stays unsaved, so the next call tries again.
    ///
    /// When a call on the working copy failed since the last save, the working copy is not
    /// trusted: it is dropped and the last saved file loaded again (what it lacks costs
    /// lookups by externalId, never a duplicate), and the failure is returned.
    pub fn save(&mut self) -> io::Result<()> {
        if self.failed.load(Ordering::Relaxed) {
            let dir = self.state_dir().to_path_buf();
            let again = AnchorIndex::load(&dir)?;
            *self = again;
            return Err(io::Error::other(format!(
                "the working copy of {} failed (see the log); reloaded the last saved index",
                self.path.display()
            )));
        }
        if !self.dirty {
            return Ok(());
        }
        if let Err(e) = self.write() {
            // A partial temporary file would only hold on to the space a full disk lacks.
            let _ = fs::remove_file(self.path.with_extension("jsonl.tmp"));
            return Err(io::Error::new(
                e.kind(),
                format!("writing {}: {e}", self.path.display()),
            ));
        }
        self.dirty = false;
        Ok(())
    }

    /// Writes every record to a temporary file, then renames it over the index.
    fn write(&self) -> io::Result<()> {
        let dir = self.state_dir();
        crate::state_dir::create_private_dir(dir)?;
        let tmp = self.path.with_extension("jsonl.tmp");
        {
            let mut w = BufWriter::new(
                crate::state_dir::options()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&tmp)?,
            );
            for r in self.map.iter() {
                let (x, v) = r?;
                let (a, source) = decode_sourced(&v).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "undecodable working record")
                })?;
                let line = Line {
                    x: unpack_key(&x).into(),
                    k: kind_code(kind_byte(a.kind)),
                    id: a.scim_id.into(),
                    h: format!("{:016x}", a.hash),
                    dn: a.dn.into(),
                    s: (source != 0).then(|| format!("{source:016x}")),
                };
                serde_json::to_writer(&mut w, &line).map_err(io::Error::from)?;
                w.write_all(b"\n")?;
            }
            let f = w.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// The anchor under a packed externalId; a read error is logged, marks the working copy
    /// failed and reads as absent (which costs a lookup at the endpoint, never a duplicate).
    fn lookup(&self, ext: &[u8]) -> Option<Anchor> {
        self.lookup_sourced(ext).map(|(a, _)| a)
    }

    /// [`AnchorIndex::lookup`] with the record's source hash.
    fn lookup_sourced(&self, ext: &[u8]) -> Option<(Anchor, u64)> {
        match self.map.get(ext) {
            Ok(v) => decode_sourced(&v?),
            Err(e) => {
                self.fail(&e);
                None
            }
        }
    }

    fn fail(&self, e: &io::Error) {
        if !self.failed.swap(true, Ordering::Relaxed) {
            log::error!(
                "anchor index {}: {e}; the last saved index will be reloaded at the next save",
                self.path.display()
            );
        }
    }

    /// DN → externalId over the live records; for a DN several records share, the one
    /// recorded last wins (as when each was recorded in turn).
    fn build_dn_table(&self) -> io::Result<DiskMap> {
        let dir = self.state_dir();
        let mut t = DiskMap::scratch(dir, "anchor index by DN", self.map.len())?;
        for r in self.map.iter() {
            let (x, v) = r?;
            if let Some(a) = decode(&v) {
                t.insert(crate::ldap::dn::normalize(&a.dn).as_bytes(), &x)?;
            }
        }
        Ok(t)
    }
}

/// The newlines in `file` (read in large pieces, no line built), then back to its start.
fn count_lines(file: &mut File) -> io::Result<u64> {
    use std::io::{Read, Seek};
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(got) => n += buf[..got].iter().filter(|&&b| b == b'\n').count() as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    file.rewind()?;
    Ok(n)
}

/// Drops `dn` → `ext` from the DN table if `dn` still names that object.
fn unset_dn(t: &mut DiskMap, dn: &str, ext: &[u8]) -> io::Result<()> {
    let key = crate::ldap::dn::normalize(dn);
    if t.get(key.as_bytes())?.as_deref() == Some(ext) {
        t.remove(key.as_bytes())?;
    }
    Ok(())
}

const USER: u8 = 0;
const GROUP: u8 = 1;

fn kind_byte(k: ResourceKind) -> u8 {
    match k {
        ResourceKind::User => USER,
        ResourceKind::Group => GROUP,
    }
}

fn kind_code(k: u8) -> &'static str {
    if k == GROUP {
        "g"
    } else {
        "u"
    }
}

/// A record in the working copy: kind, representation hash, source hash (0: none), packed
/// SCIM id (length prefixed), DN.
fn encode(a: &Anchor, source: u64) -> Vec<u8> {
    let mut id = Vec::with_capacity(a.scim_id.len() + 1);
    pack_key(&a.scim_id, &mut id);
    let mut v = Vec::with_capacity(21 + id.len() + a.dn.len());
    v.push(kind_byte(a.kind));
    v.extend_from_slice(&a.hash.to_le_bytes());
    v.extend_from_slice(&source.to_le_bytes());
    v.extend_from_slice(&(id.len() as u32).to_le_bytes());
    v.extend_from_slice(&id);
    v.extend_from_slice(a.dn.as_bytes());
    v
}

fn decode(v: &[u8]) -> Option<Anchor> {
    decode_sourced(v).map(|(a, _)| a)
}

fn decode_sourced(v: &[u8]) -> Option<(Anchor, u64)> {
    let kind = match *v.first()? {
        USER => ResourceKind::User,
        GROUP => ResourceKind::Group,
        _ => return None,
    };
    let hash = u64::from_le_bytes(v.get(1..9)?.try_into().ok()?);
    let source = u64::from_le_bytes(v.get(9..17)?.try_into().ok()?);
    let n = u32::from_le_bytes(v.get(17..21)?.try_into().ok()?) as usize;
    let id = v.get(21..21usize.checked_add(n)?)?;
    let dn = std::str::from_utf8(v.get(21 + n..)?).ok()?;
    let a = Anchor {
        kind,
        scim_id: unpack_key(id),
        hash,
        dn: dn.to_string(),
    };
    Some((a, source))
}

const RAW: u8 = 0;
const HEX_LOWER: u8 = 1;
const HEX_UPPER: u8 = 2;
const UUID_LOWER: u8 = 3;
const UUID_UPPER: u8 = 4;
const BASE64: u8 = 5;

/// Appends the packed form of an externalId or SCIM id to `out`: a tag byte, then the
/// bytes a UUID (`8-4-4-4-12`, one case), an even-length hex string (one case) or a
/// canonical padded base64 string stands for, else the text itself. Deterministic (equal
/// texts pack equal) and reversed exactly by [`unpack_key`].
pub fn pack_key(s: &str, out: &mut Vec<u8>) {
    let b = s.as_bytes();
    if b.len() == 36 && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-') {
        // The 32 digits without the dashes, on the stack (every key of a pass is packed).
        let mut digits = [0u8; 32];
        let mut n = 0;
        for &c in b.iter().filter(|c| **c != b'-') {
            if n == digits.len() {
                n += 1;
                break;
            }
            digits[n] = c;
            n += 1;
        }
        if n == digits.len() {
            if let Some(upper) = hex_case(&digits) {
                out.push(if upper { UUID_UPPER } else { UUID_LOWER });
                push_hex(&digits, out);
                return;
            }
        }
    }
    if !b.is_empty() && b.len().is_multiple_of(2) {
        if let Some(upper) = hex_case(b) {
            out.push(if upper { HEX_UPPER } else { HEX_LOWER });
            push_hex(b, out);
            return;
        }
    }
    if !b.is_empty() && b.len().is_multiple_of(4) {
        if let Some(bytes) = base64_decode(b) {
            if base64_encode(&bytes).as_bytes() == b {
                out.push(BASE64);
                out.extend_from_slice(&bytes);
                return;
            }
        }
    }
    out.push(RAW);
    out.extend_from_slice(b);
}

/// The text a [`pack_key`] form stands for.
pub fn unpack_key(p: &[u8]) -> String {
    let Some((&tag, body)) = p.split_first() else {
        return String::new();
    };
    match tag {
        HEX_LOWER | HEX_UPPER => hex_text(body, tag == HEX_UPPER),
        UUID_LOWER | UUID_UPPER => {
            let h = hex_text(body, tag == UUID_UPPER);
            let mut s = String::with_capacity(h.len() + 4);
            for (i, c) in h.chars().enumerate() {
                if [8, 12, 16, 20].contains(&i) {
                    s.push('-');
                }
                s.push(c);
            }
            s
        }
        BASE64 => base64_encode(body),
        _ => String::from_utf8_lossy(body).into_owned(),
    }
}

fn packed(s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(s.len() + 1);
    pack_key(s, &mut v);
    v
}

/// `Some(upper)` when `b` is hex digits of one case (digits only count as lower).
fn hex_case(b: &[u8]) -> Option<bool> {
    let (mut lower, mut upper) = (false, false);
    for c in b {
        match c {
            b'0'..=b'9' => {}
            b'a'..=b'f' => lower = true,
            b'A'..=b'F' => upper = true,
            _ => return None,
        }
    }
    if lower && upper {
        None
    } else {
        Some(upper)
    }
}

fn push_hex(digits: &[u8], out: &mut Vec<u8>) {
    fn nib(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => c.wrapping_sub(b'A').wrapping_add(10) & 0xf,
        }
    }
    out.reserve(digits.len() / 2);
    for pair in digits.chunks_exact(2) {
        out.push((nib(pair[0]) << 4) | nib(pair[1]));
    }
}

fn hex_text(bytes: &[u8], upper: bool) -> String {
    let digits: &[u8; 16] = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(digits[usize::from(b >> 4)] as char);
        s.push(digits[usize::from(b & 0xf)] as char);
    }
    s
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(B64[((n >> (18 - 6 * i)) & 0x3f) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// Standard padded base64 → bytes; `None` for anything else (the caller also checks that
/// re-encoding gives the same text, which rules out non-canonical trailing bits).
fn base64_decode(b: &[u8]) -> Option<Vec<u8>> {
    let pad = b.iter().rev().take_while(|c| **c == b'=').count();
    if pad > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(b.len() / 4 * 3);
    for chunk in b.chunks(4) {
        let mut n = 0u32;
        let mut valid = 0;
        for (i, c) in chunk.iter().enumerate() {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                b'=' => break,
                _ => return None,
            };
            n |= u32::from(v) << (18 - 6 * i);
            valid = i + 1;
        }
        if valid < 2 {
            return None;
        }
        for i in 0..valid - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

fn parse_line(line: &str) -> Option<(String, Anchor, u64)> {
    let l: Line<'_> = serde_json::from_str(line).ok()?;
    let kind = match l.k {
        "u" => ResourceKind::User,
        "g" => ResourceKind::Group,
        _ => return None,
    };
    let hash = u64::from_str_radix(&l.h, 16).ok()?;
    if l.x.is_empty() || l.id.is_empty() {
        return None;
    }
    let source = match &l.s {
        Some(s) => u64::from_str_radix(s, 16).ok()?,
        None => 0,
    };
    Some((
        l.x.into_owned(),
        Anchor {
            kind,
            scim_id: l.id.into_owned(),
            hash,
            dn: l.dn.into_owned(),
        },
        source,
    ))
}

/// FNV-1a 64 of the serialized representation: stable across builds and platforms
/// (serde_json writes object keys in sorted order), so "unchanged" survives upgrades.
/// Streams the serialization into the hash (no copy of the body is made).
pub fn representation_hash(body: &serde_json::Value) -> u64 {
    let mut h = crate::fnv::Fnv64::default();
    // Writing into the hasher cannot fail, and a `Value` always serializes.
    let _ = serde_json::to_writer(&mut h, body);
    // 0 means "unknown" in the index; never produce it.
    h.0.max(1)
}

/// [`representation_hash`] of `body` with `members` put in as its `members` attribute
/// (what [`crate::scim::mapping::map_entry`] would give), computed without building it:
/// the bytes hashed are those of the whole representation, member by member, so a hash
/// stored by either function matches the other.
pub fn representation_hash_with(
    body: &serde_json::Value,
    members: &crate::scim::mapping::MemberIds,
) -> u64 {
    let serde_json::Value::Object(map) = body else {
        return representation_hash(body);
    };
    if members.is_empty() {
        return representation_hash(body);
    }
    let mut h = crate::fnv::Fnv64::default();
    let _ = serde_json::to_writer(&mut h, &WithMembers { map, members });
    h.0.max(1)
}

/// An object serialized with `members` in its key-order place (serde_json's `Map` iterates
/// its keys in sorted order, and so does this).
struct WithMembers<'a> {
    map: &'a serde_json::Map<String, serde_json::Value>,
    members: &'a crate::scim::mapping::MemberIds,
}

impl serde::Serialize for WithMembers<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        const KEY: &str = "members";
        let others = self.map.iter().filter(|(k, _)| k.as_str() != KEY);
        let mut m = serializer.serialize_map(Some(others.clone().count() + 1))?;
        let mut placed = false;
        for (k, v) in others {
            if !placed && k.as_str() > KEY {
                m.serialize_entry(KEY, self.members)?;
                placed = true;
            }
            m.serialize_entry(k, v)?;
        }
        if !placed {
            m.serialize_entry(KEY, self.members)?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("idrelay-anchors-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn anchor(kind: ResourceKind, id: &str, hash: u64, dn: &str) -> Anchor {
        Anchor {
            kind,
            scim_id: id.into(),
            hash,
            dn: dn.into(),
        }
    }

    fn user(id: &str, hash: u64, dn: &str) -> Anchor {
        anchor(ResourceKind::User, id, hash, dn)
    }

    #[test]
    fn round_trips_through_disk() {
        let d = tempdir("rt");
        let mut ix = AnchorIndex::load(&d).unwrap();
        assert!(ix.is_empty());
        ix.put("abc==", user("id1", 42, "uid=a,dc=x"));
        ix.save().unwrap();
        let ix2 = AnchorIndex::load(&d).unwrap();
        assert_eq!(ix2.get(ResourceKind::User, "abc==").unwrap().hash, 42);
        assert_eq!(ix2.by_dn("UID=a, dc=X").unwrap().0, "abc==");
        assert!(
            ix2.get(ResourceKind::Group, "abc==").is_none(),
            "kind must match"
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_source_hash_is_kept_with_its_representation_and_forgotten_when_that_changes() {
        let d = tempdir("source");
        let mut ix = AnchorIndex::load(&d).unwrap();
        ix.put("x1", user("id1", 42, "uid=a,dc=x"));
        assert_eq!(
            ix.sourced(ResourceKind::User, "x1").unwrap().1,
            0,
            "none yet"
        );
        ix.set_source("x1", 7);
        ix.set_source("missing", 7); // nothing to attach it to: ignored
        assert!(ix.sourced(ResourceKind::User, "missing").is_none());
        assert!(
            ix.sourced(ResourceKind::Group, "x1").is_none(),
            "kind must match"
        );
        ix.save().unwrap();
        // Saved and loaded with its anchor; an equal put keeps it.
        let mut ix = AnchorIndex::load(&d).unwrap();
        assert_eq!(
            ix.sourced(ResourceKind::User, "x1"),
            Some((user("id1", 42, "uid=a,dc=x"), 7))
        );
        ix.put("x1", user("id1", 42, "uid=a,dc=x"));
        assert_eq!(ix.sourced(ResourceKind::User, "x1").unwrap().1, 7);
        // Another representation (or DN) sent: the source hash no longer tells anything.
        ix.put("x1", user("id1", 43, "uid=a,dc=x"));
        assert_eq!(ix.sourced(ResourceKind::User, "x1").unwrap().1, 0);
        ix.set_source("x1", 9);
        ix.note_dn("x1", "uid=b,dc=x");
        assert_eq!(ix.sourced(ResourceKind::User, "x1").unwrap().1, 0);
        ix.save().unwrap();
        let text = fs::read_to_string(d.join(FILE_NAME)).unwrap();
        assert!(
            !text.contains("\"s\""),
            "no source hash written when none: {text}"
        );
        // A file from before source hashes loads as it did (none known).
        fs::write(
            d.join(FILE_NAME),
            "{\"x\":\"x2\",\"k\":\"u\",\"id\":\"i\",\"h\":\"000000000000002a\",\"dn\":\"uid=c,dc=x\"}\n",
        )
        .unwrap();
        let ix = AnchorIndex::load(&d).unwrap();
        assert_eq!(ix.sourced(ResourceKind::User, "x2").unwrap().1, 0);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_saved_count_is_read_without_building_the_index() {
        let d = tempdir("count");
        assert_eq!(AnchorIndex::count_saved(&d).unwrap(), 0);
        let mut ix = AnchorIndex::load(&d).unwrap();
        for i in 0..3 {
            ix.put(&format!("x{i}=="), user(&format!("id{i}"), i, "uid=a,dc=x"));
        }
        ix.save().unwrap();
        assert_eq!(AnchorIndex::count_saved(&d).unwrap(), 3);
        assert_eq!(AnchorIndex::load(&d).unwrap().len(), 3);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_failed_save_names_the_file_and_is_tried_again() {
        let d = tempdir("savefail");
        let mut ix = AnchorIndex::load(&d).unwrap();
        ix.put("abc==", user("id1", 42, "uid=a,dc=x"));
        // A non-empty directory where the index goes: the rename over it fails.
        let blocker = d.join(FILE_NAME);
        fs::create_dir_all(blocker.join("x")).unwrap();
        let e = ix.save().unwrap_err();
        assert!(
            e.to_string().contains(&blocker.display().to_string()),
            "names the file: {e}"
        );
        assert!(
            !d.join("anchors.jsonl.tmp").exists(),
            "no partial temporary file is left behind"
        );
        fs::remove_dir_all(&blocker).unwrap();
        ix.save().unwrap();
        let ix2 = AnchorIndex::load(&d).unwrap();
        assert_eq!(ix2.get(ResourceKind::User, "abc==").unwrap().hash, 42);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn damaged_file_means_empty_index_not_an_error() {
        let d = tempdir("bad");
        fs::write(
            d.join(FILE_NAME),
            "{\"x\":\"a\",\"k\":\"u\",\"id\":\"1\",\"h\":\"2a\"}\n{garbage\n",
        )
        .unwrap();
        let ix = AnchorIndex::load(&d).unwrap();
        assert!(ix.is_empty());
        fs::remove_dir_all(&d).unwrap();
    }

    /// A file the string-map index wrote (sorted by externalId, AD and OpenLDAP anchors,
    /// a line without `dn`) loads into the packed index unchanged.
    #[test]
    fn a_file_from_the_previous_release_loads_and_saves_back_the_same_lines() {
        let d = tempdir("old");
        let old = concat!(
            "{\"x\":\"0b567afa-7d6a-1041-8677-678923bb8630\",\"k\":\"u\",\"id\":\"80f208e93dc08ad9d630d4d4b8962750\",\"h\":\"debd7c1d403dd219\",\"dn\":\"uid=user000000,ou=people,dc=branch,dc=test\"}\n",
            "{\"x\":\"3q2+7w==\",\"k\":\"g\",\"id\":\"Group-1\",\"h\":\"0000000000000001\",\"dn\":\"CN=Staff\\\\, All,OU=Groups,DC=x\"}\n",
            "{\"x\":\"zz\",\"k\":\"u\",\"id\":\"7\",\"h\":\"2a\"}\n",
        );
        fs::write(d.join(FILE_NAME), old).unwrap();
        let mut ix = AnchorIndex::load(&d).unwrap();
        assert_eq!(ix.len(), 3);
        let g = ix.get(ResourceKind::Group, "3q2+7w==").unwrap();
        assert_eq!(g.dn, "CN=Staff\\, All,OU=Groups,DC=x");
        assert_eq!(g.scim_id, "Group-1");
        assert_eq!(ix.get_any("zz").unwrap().dn, "");
        assert_eq!(
            ix.by_dn("uid=USER000000, ou=people,dc=branch,dc=test")
                .unwrap()
                .1
                .scim_id,
            "80f208e93dc08ad9d630d4d4b8962750"
        );
        ix.dirty = true;
        ix.save().unwrap();
        let again = fs::read_to_string(d.join(FILE_NAME)).unwrap();
        // Same lines (in load order, which was the old sorted order); `h` is normalised.
        let norm = |s: &str| s.replace("\"h\":\"2a\"", "\"h\":\"000000000000002a\"");
        let mut want: Vec<String> = norm(old).lines().map(str::to_string).collect();
        let mut got: Vec<String> = again
            .lines()
            .map(|l| l.replace(",\"dn\":\"\"", ""))
            .collect();
        want.sort();
        got.sort();
        assert_eq!(got, want);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn renames_moves_and_removes_keep_both_lookups_right() {
        let d = tempdir("mv");
        let mut ix = AnchorIndex::empty(&d);
        ix.put("x1", user("i1", 5, "uid=a,ou=p,dc=x"));
        ix.note_dn("x1", "uid=a,ou=p,dc=x");
        assert!(!ix.dirty || ix.len() == 1);
        assert_eq!(ix.by_dn("uid=a,ou=p,dc=x").unwrap().0, "x1");
        ix.note_dn("x1", "uid=b,ou=q,dc=x");
        assert!(ix.by_dn("uid=a,ou=p,dc=x").is_none());
        let (x, a) = ix.by_dn("UID=b,ou=q,dc=x").unwrap();
        assert_eq!((x.as_str(), a.scim_id.as_str(), a.hash), ("x1", "i1", 5));
        // A new SCIM id for the same object.
        ix.put("x1", user("i2", 6, "uid=b,ou=q,dc=x"));
        assert_eq!(ix.get_any("x1").unwrap().scim_id, "i2");
        assert_eq!(ix.len(), 1);
        ix.remove("x1");
        assert!(ix.get_any("x1").is_none() && ix.by_dn("uid=b,ou=q,dc=x").is_none());
        assert!(ix.is_empty() && ix.iter().next().is_none());
    }

    #[test]
    fn by_dn_finds_the_object_recorded_last_under_a_dn_before_and_after_a_reload() {
        let d = tempdir("last");
        let mut ix = AnchorIndex::empty(&d);
        ix.put("old", user("1", 1, "uid=a,dc=x"));
        ix.put("new", user("2", 1, "uid=a,dc=x"));
        ix.put("zzz", user("3", 1, "uid=z,dc=x"));
        // A later put of `old` (changed hash) claims the DN again.
        ix.put("old", user("1", 2, "uid=a,dc=x"));
        assert_eq!(ix.by_dn("uid=a,dc=x").unwrap().0, "old");
        ix.save().unwrap();
        assert_eq!(
            AnchorIndex::load(&d)
                .unwrap()
                .by_dn("uid=a,dc=x")
                .unwrap()
                .0,
            "old"
        );
        ix.put("new", user("2", 3, "uid=a,dc=x"));
        assert_eq!(ix.by_dn("uid=a,dc=x").unwrap().0, "new");
        ix.save().unwrap();
        assert_eq!(
            AnchorIndex::load(&d)
                .unwrap()
                .by_dn("uid=a,dc=x")
                .unwrap()
                .0,
            "new"
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn unseen_is_what_the_scan_did_not_find() {
        let d = tempdir("unseen");
        let mut ix = AnchorIndex::empty(&d);
        for n in 0..10 {
            ix.put(
                &format!("x{n}"),
                user(&format!("i{n}"), 1, &format!("uid={n},dc=x")),
            );
        }
        let seen: Vec<Vec<u8>> = (0..10)
            .filter(|n| n % 3 != 0)
            .chain([42])
            .map(|n| packed(&format!("x{n}")))
            .collect();
        let mut gone: Vec<String> = ix
            .unseen(|p| Ok(seen.iter().any(|s| s == p)))
            .unwrap()
            .into_iter()
            .map(|(x, a)| format!("{x} {}", a.dn))
            .collect();
        gone.sort();
        assert_eq!(
            gone,
            [
                "x0 uid=0,dc=x",
                "x3 uid=3,dc=x",
                "x6 uid=6,dc=x",
                "x9 uid=9,dc=x"
            ]
        );
    }

    #[test]
    fn many_moves_keep_every_lookup() {
        let d = tempdir("compact");
        let mut ix = AnchorIndex::empty(&d);
        let _ = ix.by_dn("uid=nobody"); // build the DN table so that it is remapped too
        for n in 0..100 {
            ix.put(
                &format!("x{n}"),
                user("i", 1, &format!("uid={n},ou=0,dc=x")),
            );
        }
        // Every move appends a record: 30 moves each outnumber the live ones many times.
        for round in 1..=30 {
            for n in 0..100 {
                ix.note_dn(&format!("x{n}"), &format!("uid={n},ou={round},dc=x"));
            }
        }
        assert_eq!(ix.len(), 100);
        for n in 0..100 {
            let x = format!("x{n}");
            let dn = format!("uid={n},ou=30,dc=x");
            assert_eq!(ix.get_any(&x).unwrap().dn, dn);
            assert_eq!(ix.by_dn(&dn).unwrap().0, x);
            assert!(ix.by_dn(&format!("uid={n},ou=29,dc=x")).is_none());
        }
    }

    #[test]
    fn a_failed_working_copy_is_never_saved_over_the_good_file() {
        let d = tempdir("working-copy-fails");
        let mut ix = AnchorIndex::empty(&d);
        ix.put("x1", user("i1", 1, "uid=1,dc=x"));
        ix.save().unwrap();
        ix.map.break_for_test();
        ix.put("x2", user("i2", 2, "uid=2,dc=x"));
        assert_eq!(ix.get_any("x1"), None, "a failed read is 'not known'");
        let e = ix.save().unwrap_err().to_string();
        assert!(e.contains("anchors.jsonl") && e.contains("reloaded"), "{e}");
        // The last saved file came back; the put that failed costs a lookup later.
        assert_eq!(ix.get_any("x1").unwrap().scim_id, "i1");
        assert_eq!(ix.get_any("x2"), None);
        ix.put("x3", user("i3", 3, "uid=3,dc=x"));
        ix.save().unwrap();
        let again = AnchorIndex::load(&d).unwrap();
        assert_eq!(again.len(), 2);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn the_working_copy_leaves_no_file_in_the_state_directory() {
        let d = tempdir("no-scratch-files");
        let mut ix = AnchorIndex::empty(&d);
        for n in 0..50 {
            ix.put(&format!("x{n}"), user("i", 1, &format!("uid={n},dc=x")));
        }
        let _ = ix.by_dn("uid=3,dc=x");
        ix.save().unwrap();
        let names: Vec<String> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [FILE_NAME]);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn keys_pack_to_their_bytes_and_back() {
        for (s, tag, len) in [
            ("0b567afa-7d6a-1041-8677-678923bb8630", UUID_LOWER, 17),
            ("0B567AFA-7D6A-1041-8677-678923BB8630", UUID_UPPER, 17),
            ("80f208e93dc08ad9d630d4d4b8962750", HEX_LOWER, 17),
            ("0123", HEX_LOWER, 3),
            ("AF", HEX_UPPER, 2),
            ("+v7rRnrqvUy1Y6o1AAAAAA==", BASE64, 17),
            ("3q2+7w==", BASE64, 5),
            ("Af", RAW, 3),
            ("abc", RAW, 4),
            ("3q2+7x==", RAW, 9), // not canonical base64
            ("", RAW, 1),
            ("ünï", RAW, 6),
            // A UUID's length and dashes, and two dashes more: text, never a short UUID.
            ("aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaa--", RAW, 37),
        ] {
            let p = packed(s);
            assert_eq!((p[0], p.len()), (tag, len), "{s}");
            assert_eq!(unpack_key(&p), s);
        }
    }

    proptest! {
        #[test]
        fn any_text_packs_and_unpacks_exactly(s in ".{0,40}|[0-9a-f]{0,40}|[0-9A-F]{0,40}|[A-Za-z0-9+/]{0,22}={0,2}") {
            prop_assert_eq!(unpack_key(&packed(&s)), s);
        }

        #[test]
        fn uuids_pack_and_unpack_exactly(s in "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}") {
            prop_assert_eq!(unpack_key(&packed(&s)), s);
        }

        /// The packed index against a model: a map externalId → anchor, plus which object was
        /// recorded last under each normalised DN (what `by_dn` must find while it stays there).
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec((0u8..4, 0usize..12, 0usize..5, 0u64..3, 0usize..4), 1..120)) {
            let d = tempdir("model");
            let mut ix = AnchorIndex::empty(&d);
            let mut model: HashMap<String, Anchor> = HashMap::new();
            let mut owner: HashMap<String, String> = HashMap::new();
            let dns = ["uid=a,ou=p,dc=x", "UID=A, ou=p,dc=x", "uid=b,ou=p,dc=x", "cn=c\\,d,ou=q,dc=x", "dc=x"];
            let ids = ["1", "2", "0b567afa-7d6a-1041-8677-678923bb8630", "ab"];
            for (op, x, dn, hash, id) in ops {
                let x = format!("x{x}");
                let dn = dns[dn];
                match op {
                    0 | 1 => {
                        let kind = if op == 0 { ResourceKind::User } else { ResourceKind::Group };
                        let a = anchor(kind, ids[id], hash, dn);
                        if model.get(&x) != Some(&a) {
                            if let Some(old) = model.get(&x) {
                                let k = crate::ldap::dn::normalize(&old.dn);
                                if owner.get(&k) == Some(&x) { owner.remove(&k); }
                            }
                            owner.insert(crate::ldap::dn::normalize(dn), x.clone());
                            model.insert(x.clone(), a.clone());
                        }
                        ix.put(&x, a);
                    }
                    2 => {
                        if let Some(old) = model.get(&x).cloned() {
                            if old.dn != dn {
                                let k = crate::ldap::dn::normalize(&old.dn);
                                if owner.get(&k) == Some(&x) { owner.remove(&k); }
                                owner.insert(crate::ldap::dn::normalize(dn), x.clone());
                                model.insert(x.clone(), Anchor { dn: dn.to_string(), ..old });
                            }
                        }
                        ix.note_dn(&x, dn);
                    }
                    _ => {
                        if let Some(old) = model.remove(&x) {
                            let k = crate::ldap::dn::normalize(&old.dn);
                            if owner.get(&k) == Some(&x) { owner.remove(&k); }
                        }
                        ix.remove(&x);
                    }
                }
                prop_assert_eq!(ix.len(), model.len());
                for (x, a) in &model {
                    prop_assert_eq!(ix.get_any(x), Some(a.clone()));
                    prop_assert_eq!(ix.get(a.kind, x), Some(a.clone()));
                }
                for dn in dns {
                    let k = crate::ldap::dn::normalize(dn);
                    match ix.by_dn(dn) {
                        Some((x, a)) => {
                            prop_assert_eq!(model.get(&x), Some(&a));
                            prop_assert_eq!(crate::ldap::dn::normalize(&a.dn), k.clone());
                        }
                        None => prop_assert!(!owner.contains_key(&k)),
                    }
                    if let Some(x) = owner.get(&k) {
                        prop_assert_eq!(ix.by_dn(dn).map(|(x, _)| x), Some(x.clone()));
                    }
                }
            }
            let mut listed: Vec<(String, Anchor)> = ix.iter().collect();
            listed.sort_by(|a, b| a.0.cmp(&b.0));
            let mut want: Vec<(String, Anchor)> = model.clone().into_iter().collect();
            want.sort_by(|a, b| a.0.cmp(&b.0));
            prop_assert_eq!(&listed, &want);
            ix.dirty = true;
            ix.save().unwrap();
            let back = AnchorIndex::load(&d).unwrap();
            let mut reloaded: Vec<(String, Anchor)> = back.iter().collect();
            reloaded.sort_by(|a, b| a.0.cmp(&b.0));
            prop_assert_eq!(&reloaded, &want);
            for (k, x) in &owner {
                prop_assert_eq!(back.by_dn(k).map(|(x, _)| x), Some(x.clone()));
            }
            fs::remove_dir_all(&d).unwrap();
        }
    }

    fn fnv_reference(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf29ce484222325, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
        })
    }

    #[test]
    fn hash_is_stable_and_key_order_independent() {
        let a: serde_json::Value = serde_json::from_str(r#"{"b":1,"a":[1,2]}"#).unwrap();
        let b: serde_json::Value = serde_json::from_str(r#"{"a":[1,2],"b":1}"#).unwrap();
        assert_eq!(representation_hash(&a), representation_hash(&b));
        // FNV-1a 64 known answer: the empty object serializes as `{}`.
        assert_eq!(
            representation_hash(&serde_json::json!({})),
            fnv_reference(b"{}")
        );
        assert_ne!(
            representation_hash(&a),
            representation_hash(&serde_json::json!({"a":[2,1],"b":1}))
        );
    }

    #[test]
    fn hash_with_members_equals_hash_of_the_whole_representation() {
        use crate::scim::mapping::MemberIds;
        let ids: MemberIds = ["b\"q", "a", "c", "a"].into_iter().collect();
        for body in [
            serde_json::json!({"displayName": "g", "externalId": "x", "schemas": ["s"]}),
            serde_json::json!({"a": 1}),
            serde_json::json!({"z": 1}),
            serde_json::json!({}),
            serde_json::json!({"members": [{"value": "old"}], "n": "x"}),
        ] {
            let mut whole = body.clone();
            whole["members"] = ids.to_json();
            assert_eq!(
                representation_hash_with(&body, &ids),
                representation_hash(&whole),
                "{body}"
            );
            if body.get("members").is_none() {
                assert_eq!(
                    representation_hash_with(&body, &MemberIds::default()),
                    representation_hash(&body)
                );
            }
        }
        assert_eq!(
            representation_hash(&serde_json::json!({"a": 1})),
            fnv_reference(br#"{"a":1}"#)
        );
    }
}
