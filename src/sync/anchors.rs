//! The anchor index: which SCIM resource each directory object became, and a hash of the
//! representation last sent for it.
//!
//! Keyed by externalId (the directory anchor, see DESIGN.md §4). It is a cache, never the
//! truth: when it is missing, stale or corrupt the engine looks resources up by externalId
//! at the endpoint before creating anything, so losing it costs requests, never duplicates.
//! That is why a corrupt file is logged and dropped rather than fatal.
//!
//! On disk: `anchors.jsonl` in the state directory, one JSON object per line
//! (`{"x":externalId,"k":"u"|"g","id":scimId,"h":"hash hex","dn":DN}`), replaced atomically
//! (write to a temporary file, fsync, rename, fsync the directory). Lines are written in the
//! order the objects were last recorded (oldest first), so a reload finds, for a DN two
//! objects were recorded under, the one recorded last, as before the restart. The line format
//! has not changed since the first release (so there is no version marker): every file an
//! older agent wrote loads as it is.
//!
//! In memory the index is laid out for a full pass over hundreds of thousands of objects
//! (about 90 bytes an object instead of the ~570 that string maps took):
//! * one byte arena holds every record: the externalId and the SCIM id packed ([`pack_key`]:
//!   a UUID, hex or base64 text is kept as its bytes, anything else verbatim) and the DN's
//!   first RDN; the rest of the DN (its parent, shared by all objects of an OU) is interned;
//! * a 24-byte slot per record: representation hash, arena offset, parent, kind, put stamp;
//! * externalId → slot is a table of 32-bit keyed hashes (SipHash, random key per process;
//!   8 bytes a bucket). Every hit is checked against the record itself, and a key whose
//!   hash collides with another live key's goes to a small exact side table (a handful of
//!   keys at 150,000 objects), so a collision costs a lookup, never a wrong answer;
//! * normalised DN → slot is the same kind of table, built on the first [`AnchorIndex::by_dn`]
//!   call (a full pass never needs it) and kept up to date from then on.
//!
//! Changing an object's SCIM id or DN appends a new record and leaves the old one dead;
//! dead records are compacted away once they outnumber the live ones, so the arena stays
//! within twice its live size.
//!
//! Limits: the arena is addressed with 32 bits (4 GiB, tens of millions of objects); past
//! that `put` panics with a message naming the limit.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::scim::ResourceKind;

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
    recs: Records,
    keys: RandomState,
    by_ext: KeyTable,
    /// Normalised DN → slot, to resolve `member` / `manager` values between passes.
    by_dn: OnceLock<KeyTable>,
    dead: usize,
    stamp: u32,
    dirty: bool,
}

impl fmt::Debug for AnchorIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnchorIndex")
            .field("path", &self.path)
            .field("objects", &self.recs.live)
            .field("dead_records", &self.dead)
            .field("arena_bytes", &self.recs.arena.len())
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
}

/// The file name inside the state directory.
pub const FILE_NAME: &str = "anchors.jsonl";

/// Dead records tolerated before a compaction is considered at all.
const COMPACT_MIN_DEAD: usize = 1024;

impl AnchorIndex {
    /// An empty index for `state_dir` (nothing read).
    pub fn empty(state_dir: &Path) -> AnchorIndex {
        AnchorIndex {
            path: state_dir.join(FILE_NAME),
            recs: Records::default(),
            keys: RandomState::new(),
            by_ext: KeyTable::default(),
            by_dn: OnceLock::new(),
            dead: 0,
            stamp: 0,
            dirty: false,
        }
    }

    /// Loads the index from `state_dir`; a missing file is an empty index, a corrupt one is
    /// logged and treated as empty (see the module doc for why that is safe).
    pub fn load(state_dir: &Path) -> io::Result<AnchorIndex> {
        let mut index = AnchorIndex::empty(state_dir);
        let file = match File::open(&index.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(index),
            Err(e) => return Err(e),
        };
        for (n, line) in BufReader::new(file).lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            match parse_line(&line) {
                Some((x, a)) => index.put(&x, a),
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
        index.dirty = false;
        Ok(index)
    }

    /// The anchor of `external_id` if it is of `kind`.
    pub fn get(&self, kind: ResourceKind, external_id: &str) -> Option<Anchor> {
        let s = self.find(external_id)?;
        (self.recs.slots[s as usize].kind == kind_byte(kind)).then(|| self.recs.anchor(s))
    }

    /// The SCIM id of `external_id` if it is of `kind` (what a reference resolves to).
    pub fn scim_id(&self, kind: ResourceKind, external_id: &str) -> Option<String> {
        let s = self.find(external_id)?;
        let slot = self.recs.slots[s as usize];
        (slot.kind == kind_byte(kind)).then(|| unpack_key(self.recs.record(slot.off).id))
    }

    /// Records what the endpoint holds for `external_id` now.
    pub fn put(&mut self, external_id: &str, anchor: Anchor) {
        let ext = packed(external_id);
        let id = packed(&anchor.scim_id);
        let kind = kind_byte(anchor.kind);
        if let Some(s) = self.find_packed(&ext) {
            let slot = self.recs.slots[s as usize];
            if self.recs.record(slot.off).id == id.as_slice() && self.recs.dn_is(&slot, &anchor.dn)
            {
                if slot.kind == kind && slot.hash == anchor.hash {
                    return;
                }
                let stamp = self.next_stamp();
                let slot = &mut self.recs.slots[s as usize];
                slot.kind = kind;
                slot.hash = anchor.hash;
                slot.stamp = stamp;
                // Recording an object claims its DN again (as a new record would).
                if let Some(t) = self.by_dn.get_mut() {
                    let key = crate::sync::dn::normalize(&anchor.dn);
                    let recs = &self.recs;
                    t.set(dn_hash(&self.keys, &key), key.as_bytes(), s, |o| {
                        recs.dn_key_is(o, &key)
                    });
                }
                self.dirty = true;
                return;
            }
            self.kill(s, &ext);
        }
        self.append(&ext, &id, kind, &anchor);
        self.dirty = true;
    }

    /// Records that `external_id` now lives at `dn` (renamed or moved, nothing to send).
    pub fn note_dn(&mut self, external_id: &str, dn: &str) {
        let Some(s) = self.find(external_id) else {
            return;
        };
        let slot = self.recs.slots[s as usize];
        if self.recs.dn_is(&slot, dn) {
            return;
        }
        let moved = Anchor {
            dn: dn.to_string(),
            ..self.recs.anchor(s)
        };
        self.put(external_id, moved);
    }

    /// Forgets `external_id` (its resource is gone at the endpoint).
    pub fn remove(&mut self, external_id: &str) {
        let ext = packed(external_id);
        if let Some(s) = self.find_packed(&ext) {
            self.kill(s, &ext);
            self.dirty = true;
        }
    }

    /// The externalId and anchor of the object last recorded under `dn` (any spelling).
    pub fn by_dn(&self, dn: &str) -> Option<(String, Anchor)> {
        let table = self.by_dn.get_or_init(|| self.build_dn_table());
        let key = crate::sync::dn::normalize(dn);
        let s = table.get(dn_hash(&self.keys, &key), key.as_bytes(), |o| {
            self.recs.dn_key_is(o, &key)
        })?;
        let ext = unpack_key(self.recs.record(self.recs.slots[s as usize].off).ext);
        Some((ext, self.recs.anchor(s)))
    }

    /// The anchor of `external_id`, whatever its kind.
    pub fn get_any(&self, external_id: &str) -> Option<Anchor> {
        self.find(external_id).map(|s| self.recs.anchor(s))
    }

    /// Every externalId and anchor, in no particular order (each decoded as it is reached).
    pub fn iter(&self) -> impl Iterator<Item = (String, Anchor)> + '_ {
        self.recs.live_slots().map(move |s| {
            let ext = unpack_key(self.recs.record(self.recs.slots[s as usize].off).ext);
            (ext, self.recs.anchor(s))
        })
    }

    /// Every object whose externalId is not among `seen` (externalIds in [`pack_key`] form):
    /// what a complete scope scan no longer found. Costs one bit per record besides the
    /// answer.
    pub fn unseen<'a>(&self, seen: impl IntoIterator<Item = &'a [u8]>) -> Vec<(String, Anchor)> {
        let mut marked = vec![0u64; self.recs.slots.len().div_ceil(64)];
        for p in seen {
            if let Some(s) = self.find_packed(p) {
                marked[s as usize / 64] |= 1 << (s % 64);
            }
        }
        self.recs
            .live_slots()
            .filter(|s| marked[*s as usize / 64] & (1 << (s % 64)) == 0)
            .map(|s| {
                let ext = unpack_key(self.recs.record(self.recs.slots[s as usize].off).ext);
                (ext, self.recs.anchor(s))
            })
            .collect()
    }

    /// Number of objects known.
    pub fn len(&self) -> usize {
        self.recs.live
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.recs.live == 0
    }

    /// Writes the index if it changed since the last save. An error names the file and
    /// keeps the OS error's kind (a full disk is [`io::ErrorKind::StorageFull`]); the index
    /// stays unsaved, so the next call tries again.
    pub fn save(&mut self) -> io::Result<()> {
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
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir)?;
        let tmp = self.path.with_extension("jsonl.tmp");
        {
            let mut w = BufWriter::new(File::create(&tmp)?);
            for s in self.recs.by_stamp() {
                let slot = self.recs.slots[s as usize];
                let rec = self.recs.record(slot.off);
                let line = Line {
                    x: unpack_key(rec.ext).into(),
                    k: kind_code(slot.kind),
                    id: unpack_key(rec.id).into(),
                    h: format!("{:016x}", slot.hash),
                    dn: self.recs.dn(&slot).into(),
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

    fn find(&self, external_id: &str) -> Option<u32> {
        self.find_packed(&packed(external_id))
    }

    fn find_packed(&self, ext: &[u8]) -> Option<u32> {
        let recs = &self.recs;
        self.by_ext.get(ext_hash(&self.keys, ext), ext, |s| {
            recs.record(recs.slots[s as usize].off).ext == ext
        })
    }

    /// Marks slot `s` (externalId `ext`) dead and drops it from the tables.
    fn kill(&mut self, s: u32, ext: &[u8]) {
        self.by_ext.unset(ext_hash(&self.keys, ext), ext, s);
        let slot = self.recs.slots[s as usize];
        if let Some(t) = self.by_dn.get_mut() {
            let key = crate::sync::dn::normalize(&self.recs.dn(&slot));
            t.unset(dn_hash(&self.keys, &key), key.as_bytes(), s);
        }
        self.recs.slots[s as usize].kind = DEAD;
        self.recs.live -= 1;
        self.dead += 1;
    }

    fn append(&mut self, ext: &[u8], id: &[u8], kind: u8, a: &Anchor) {
        if self.dead > COMPACT_MIN_DEAD && self.dead > self.recs.live {
            self.compact();
        }
        let stamp = self.next_stamp();
        let s = self.recs.push(ext, id, kind, a, stamp);
        let recs = &self.recs;
        self.by_ext.set(ext_hash(&self.keys, ext), ext, s, |o| {
            recs.record(recs.slots[o as usize].off).ext == ext
        });
        if let Some(t) = self.by_dn.get_mut() {
            let key = crate::sync::dn::normalize(&a.dn);
            t.set(dn_hash(&self.keys, &key), key.as_bytes(), s, |o| {
                recs.dn_key_is(o, &key)
            });
        }
    }

    /// Drops dead records; slots are renumbered in order, the tables follow.
    fn compact(&mut self) {
        let new_of = self.recs.compact();
        self.by_ext.remap(&new_of);
        if let Some(t) = self.by_dn.get_mut() {
            t.remap(&new_of);
        }
        self.dead = 0;
    }

    fn next_stamp(&mut self) -> u32 {
        if self.stamp == u32::MAX {
            // Renumber in the same order; stamps only order records.
            let order = self.recs.by_stamp();
            for (n, s) in order.iter().enumerate() {
                self.recs.slots[*s as usize].stamp = n as u32;
            }
            self.stamp = order.len() as u32;
        }
        self.stamp += 1;
        self.stamp
    }

    /// DN → slot over the live records; for a DN several records share, the one recorded
    /// last wins (as when each was recorded in turn).
    fn build_dn_table(&self) -> KeyTable {
        let mut t = KeyTable::default();
        for s in self.recs.by_stamp() {
            let slot = self.recs.slots[s as usize];
            let key = crate::sync::dn::normalize(&self.recs.dn(&slot));
            t.set(dn_hash(&self.keys, &key), key.as_bytes(), s, |o| {
                self.recs.dn_key_is(o, &key)
            });
        }
        t
    }
}

fn dn_hash(keys: &RandomState, normalized: &str) -> u32 {
    keys.hash_one(normalized.as_bytes()) as u32
}

fn ext_hash(keys: &RandomState, packed: &[u8]) -> u32 {
    keys.hash_one(packed) as u32
}

const USER: u8 = 0;
const GROUP: u8 = 1;
const DEAD: u8 = u8::MAX;
const NO_PARENT: u32 = u32::MAX;

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

/// One record's fixed part (24 bytes).
#[derive(Debug, Clone, Copy)]
struct Slot {
    hash: u64,
    off: u32,
    stamp: u32,
    parent: u32,
    kind: u8,
}

/// One record's variable part, borrowed from the arena.
struct Rec<'a> {
    ext: &'a [u8],
    id: &'a [u8],
    rdn: &'a str,
    end: usize,
}

/// The records: slots, the arena they point into, the interned DN parents.
#[derive(Default)]
struct Records {
    slots: Vec<Slot>,
    arena: Vec<u8>,
    parents: Vec<Box<str>>,
    parent_ids: HashMap<Box<str>, u32>,
    live: usize,
}

impl Records {
    /// Arena layout of a record: `len ext | len id | len rdn`, lengths as LEB128.
    fn record(&self, off: u32) -> Rec<'_> {
        let mut p = off as usize;
        let ext = take(&self.arena, &mut p);
        let id = take(&self.arena, &mut p);
        let rdn = std::str::from_utf8(take(&self.arena, &mut p)).unwrap_or_default();
        Rec {
            ext,
            id,
            rdn,
            end: p,
        }
    }

    fn parent(&self, p: u32) -> &str {
        if p == NO_PARENT {
            ""
        } else {
            &self.parents[p as usize]
        }
    }

    fn dn(&self, slot: &Slot) -> String {
        let rdn = self.record(slot.off).rdn;
        let parent = self.parent(slot.parent);
        let mut dn = String::with_capacity(rdn.len() + parent.len());
        dn.push_str(rdn);
        dn.push_str(parent);
        dn
    }

    /// Whether the record's DN is exactly `dn` (no allocation).
    fn dn_is(&self, slot: &Slot, dn: &str) -> bool {
        let (rdn, parent) = split_parent(dn);
        self.record(slot.off).rdn == rdn && self.parent(slot.parent) == parent
    }

    /// Whether live slot `s`'s DN normalises to `key`.
    fn dn_key_is(&self, s: u32, key: &str) -> bool {
        let slot = self.slots[s as usize];
        slot.kind != DEAD && crate::sync::dn::normalize(&self.dn(&slot)) == key
    }

    fn anchor(&self, s: u32) -> Anchor {
        let slot = self.slots[s as usize];
        Anchor {
            kind: if slot.kind == GROUP {
                ResourceKind::Group
            } else {
                ResourceKind::User
            },
            scim_id: unpack_key(self.record(slot.off).id),
            hash: slot.hash,
            dn: self.dn(&slot),
        }
    }

    fn live_slots(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.slots.len() as u32).filter(|s| self.slots[*s as usize].kind != DEAD)
    }

    /// Live slots, oldest put first.
    fn by_stamp(&self) -> Vec<u32> {
        let mut order: Vec<u32> = self.live_slots().collect();
        order.sort_unstable_by_key(|s| self.slots[*s as usize].stamp);
        order
    }

    fn push(&mut self, ext: &[u8], id: &[u8], kind: u8, a: &Anchor, stamp: u32) -> u32 {
        let off = u32::try_from(self.arena.len()).expect("anchor index arena is over 4 GiB");
        let (rdn, parent) = split_parent(&a.dn);
        put_field(&mut self.arena, ext);
        put_field(&mut self.arena, id);
        put_field(&mut self.arena, rdn.as_bytes());
        let parent = if parent.is_empty() {
            NO_PARENT
        } else if let Some(p) = self.parent_ids.get(parent) {
            *p
        } else {
            let p = self.parents.len() as u32;
            self.parents.push(parent.into());
            self.parent_ids.insert(parent.into(), p);
            p
        };
        let s = u32::try_from(self.slots.len()).expect("anchor index has over 4 billion records");
        self.slots.push(Slot {
            hash: a.hash,
            off,
            stamp,
            parent,
            kind,
        });
        self.live += 1;
        s
    }

    /// Rewrites slots and arena without the dead records; returns old slot → new slot
    /// (`u32::MAX` for the dead).
    fn compact(&mut self) -> Vec<u32> {
        let mut new_of = vec![u32::MAX; self.slots.len()];
        let mut slots = Vec::with_capacity(self.live);
        let mut arena = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            if slot.kind == DEAD {
                continue;
            }
            let rec = self.record(slot.off);
            let off = arena.len() as u32;
            arena.extend_from_slice(&self.arena[slot.off as usize..rec.end]);
            new_of[i] = slots.len() as u32;
            slots.push(Slot { off, ..*slot });
        }
        arena.shrink_to_fit();
        self.slots = slots;
        self.arena = arena;
        new_of
    }
}

/// `(first RDN, rest of the DN from its separating comma)`; the two concatenate back to `dn`.
pub(crate) fn split_parent(dn: &str) -> (&str, &str) {
    let mut escaped = false;
    for (i, c) in dn.char_indices() {
        match c {
            '\\' if !escaped => {
                escaped = true;
                continue;
            }
            ',' if !escaped => return dn.split_at(i),
            _ => {}
        }
        escaped = false;
    }
    (dn, "")
}

fn put_field(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut n = bytes.len();
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
    out.extend_from_slice(bytes);
}

fn take<'a>(buf: &'a [u8], p: &mut usize) -> &'a [u8] {
    let mut n = 0usize;
    let mut shift = 0u32;
    while let Some(&b) = buf.get(*p) {
        *p += 1;
        if shift < usize::BITS {
            n |= usize::from(b & 0x7f) << shift;
        }
        shift += 7;
        if b & 0x80 == 0 {
            break;
        }
    }
    let start = (*p).min(buf.len());
    let end = start.saturating_add(n).min(buf.len());
    *p = end;
    &buf[start..end]
}

/// A `Hasher` for keys that already are keyed hashes (SipHash with a random key): passes
/// them through instead of hashing them again.
#[derive(Default)]
pub(crate) struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = self.0.rotate_left(32) ^ n;
    }
    fn write_u32(&mut self, n: u32) {
        // Spread into the high bits too, which the table uses to tag its buckets.
        self.0 = (self.0.rotate_left(32) ^ u64::from(n)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Key → slot through 32-bit hashes, exact: see the module doc.
#[derive(Default)]
struct KeyTable {
    primary: HashMap<u32, u32, BuildHasherDefault<PreHashed>>,
    /// Keys whose hash another live key held when they were set.
    overflow: HashMap<Box<[u8]>, u32>,
}

impl KeyTable {
    /// The slot of `key` (hash `h`); `is(slot)` says whether a slot's key is `key`.
    fn get(&self, h: u32, key: &[u8], is: impl Fn(u32) -> bool) -> Option<u32> {
        if let Some(&s) = self.primary.get(&h) {
            if is(s) {
                return Some(s);
            }
        }
        if self.overflow.is_empty() {
            return None;
        }
        self.overflow.get(key).copied()
    }

    /// Points `key` (hash `h`) at `slot`.
    fn set(&mut self, h: u32, key: &[u8], slot: u32, is: impl Fn(u32) -> bool) {
        match self.primary.get(&h) {
            Some(&s) if s != slot && !is(s) => {
                self.overflow.insert(key.into(), slot);
            }
            _ => {
                self.primary.insert(h, slot);
                if !self.overflow.is_empty() {
                    self.overflow.remove(key);
                }
            }
        }
    }

    /// Drops `key` (hash `h`) if it points at `slot`.
    fn unset(&mut self, h: u32, key: &[u8], slot: u32) {
        if self.primary.get(&h) == Some(&slot) {
            self.primary.remove(&h);
        } else if self.overflow.get(key) == Some(&slot) {
            self.overflow.remove(key);
        }
    }

    fn remap(&mut self, new_of: &[u32]) {
        for v in self.primary.values_mut() {
            *v = new_of[*v as usize];
        }
        for v in self.overflow.values_mut() {
            *v = new_of[*v as usize];
        }
    }
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
        let digits: Vec<u8> = b.iter().copied().filter(|c| *c != b'-').collect();
        if let Some(upper) = hex_case(&digits) {
            out.push(if upper { UUID_UPPER } else { UUID_LOWER });
            push_hex(&digits, out);
            return;
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
    for pair in digits.chunks(2) {
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

fn parse_line(line: &str) -> Option<(String, Anchor)> {
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
    Some((
        l.x.into_owned(),
        Anchor {
            kind,
            scim_id: l.id.into_owned(),
            hash,
            dn: l.dn.into_owned(),
        },
    ))
}

/// FNV-1a 64 of the serialized representation: stable across builds and platforms
/// (serde_json writes object keys in sorted order), so "unchanged" survives upgrades.
/// Streams the serialization into the hash (no copy of the body is made).
pub fn representation_hash(body: &serde_json::Value) -> u64 {
    let mut h = Fnv64::default();
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
    let mut h = Fnv64::default();
    let _ = serde_json::to_writer(&mut h, &WithMembers { map, members });
    h.0.max(1)
}

/// FNV-1a 64 as an `io::Write` sink.
struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Fnv64 {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl std::io::Write for Fnv64 {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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
            .unseen(seen.iter().map(Vec::as_slice))
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
    fn compaction_drops_dead_records_and_keeps_every_lookup() {
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
        assert!(
            ix.recs.slots.len() < 100 + 2 * COMPACT_MIN_DEAD + 200,
            "compacted"
        );
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
    fn a_hash_collision_costs_a_lookup_never_a_wrong_answer() {
        let mut t = KeyTable::default();
        let keys: [&[u8]; 3] = [b"a", b"b", b"c"];
        let is = |s: u32, k: &[u8]| keys[s as usize] == k;
        // All three share hash 7.
        for (s, k) in keys.iter().enumerate() {
            t.set(7, k, s as u32, |o| is(o, k));
        }
        for (s, k) in keys.iter().enumerate() {
            assert_eq!(t.get(7, k, |o| is(o, k)), Some(s as u32));
        }
        assert_eq!(t.get(7, b"d", |o| is(o, b"d")), None);
        t.unset(7, b"a", 0);
        assert_eq!(t.get(7, b"a", |o| is(o, b"a")), None);
        assert_eq!(t.get(7, b"b", |o| is(o, b"b")), Some(1));
        t.unset(7, b"b", 1);
        assert_eq!(t.get(7, b"c", |o| is(o, b"c")), Some(2));
        // Re-pointing a key that lives in the side table moves it to the primary one.
        t.set(7, b"c", 2, |o| is(o, b"c"));
        assert!(t.overflow.is_empty());
        assert_eq!(t.get(7, b"c", |o| is(o, b"c")), Some(2));
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
                                let k = crate::sync::dn::normalize(&old.dn);
                                if owner.get(&k) == Some(&x) { owner.remove(&k); }
                            }
                            owner.insert(crate::sync::dn::normalize(dn), x.clone());
                            model.insert(x.clone(), a.clone());
                        }
                        ix.put(&x, a);
                    }
                    2 => {
                        if let Some(old) = model.get(&x).cloned() {
                            if old.dn != dn {
                                let k = crate::sync::dn::normalize(&old.dn);
                                if owner.get(&k) == Some(&x) { owner.remove(&k); }
                                owner.insert(crate::sync::dn::normalize(dn), x.clone());
                                model.insert(x.clone(), Anchor { dn: dn.to_string(), ..old });
                            }
                        }
                        ix.note_dn(&x, dn);
                    }
                    _ => {
                        if let Some(old) = model.remove(&x) {
                            let k = crate::sync::dn::normalize(&old.dn);
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
                    let k = crate::sync::dn::normalize(dn);
                    match ix.by_dn(dn) {
                        Some((x, a)) => {
                            prop_assert_eq!(model.get(&x), Some(&a));
                            prop_assert_eq!(crate::sync::dn::normalize(&a.dn), k.clone());
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
