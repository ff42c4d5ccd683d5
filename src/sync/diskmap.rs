//! A map from byte keys to byte values kept in two scratch files, so that the memory it
//! takes does not grow with the number of entries.
//!
//! Owns what would otherwise grow with the directory: the anchor index's working copy and
//! a full pass's scope map. The process holds a few small buffers per call, the tail of
//! each log and a block cache of fixed size shared by every map (see *Memory*); the
//! entries live in the files and so in the kernel's page cache, which is not the process's
//! memory and is given back under pressure (a 150,000-object directory is ~30 MiB of such
//! files).
//!
//! # Files
//! Both are created in a directory the caller names (the state directory: the only place a
//! sandboxed service may write), mode 0600, and on Unix unlinked as soon as they are open:
//! they vanish when the map is dropped or the process dies, even by `kill -9`, and no other
//! process ever reads them, so their layout has no version and no checksum (and what is
//! still in memory is never written out on drop). (Elsewhere they are removed on drop.)
//! * **log**: records appended in the order they were written,
//!   `[u32 key length | DEAD][u32 value length][key][value]` (little endian). Replacing or
//!   removing a key sets DEAD in its old record's header, in place. Iteration walks the log,
//!   so it yields entries in the order they were last written. When dead bytes exceed both
//!   the live ones and [`COMPACT_MIN_DEAD`], the log is rewritten with its live records
//!   only, in the same order.
//! * **slots**: open addressing with linear probing over a power-of-two number of 16-byte
//!   slots `[u64 keyed hash][u64 log offset + 1]` (0: empty; `u64::MAX`: removed). Rebuilt
//!   at twice the size when more than half the slots are in use, and at the same size (to
//!   drop removed marks) when those are most of the use. The hash is SipHash with a random
//!   key per map: a hit is always checked against the record's key, so a collision costs a
//!   read, never a wrong answer, and keys cannot be chosen to collide.
//!
//! # Memory
//! Two things keep the number of system calls down (a positioned read or write costs far
//! more than the bytes it moves), each with a fixed size, whatever the number of entries:
//! * **the log's tail**: appended records are gathered in memory and written together once
//!   they reach [`TAIL_BYTES`] (64 KiB per map). Reads of offsets in the tail are answered
//!   from it, and a DEAD mark or an overwrite of a record still there changes it in
//!   memory. Iteration, compaction and rebuilds read through the same path, so nothing
//!   needs writing out first; on drop nothing is (the files are gone).
//! * **the block cache**: 4 KiB blocks of slot and log files, [`CACHE_BYTES`] (8 MiB) for
//!   all maps of the process together, evicted by the clock (second chance) rule; a read
//!   of less than a block that misses loads its whole block. A write that falls inside a
//!   cached block changes the block only (a slot write after its probe nearly always
//!   does); the block is written to its file when evicted, and before a read of 8 KiB or
//!   more (walks, rebuilds: they go to the file and are not cached). Any other write goes
//!   to the file, then into the cached blocks it touches. So a read never sees anything
//!   but the latest bytes. It pays off where access has locality: the logs are read back
//!   mostly in the order they were written (a pass meets objects in the order its scan
//!   recorded them), small maps fit whole, and the maps a phase of a pass uses at once
//!   mostly do too; slot reads of a map far larger than the cache are random and hit
//!   about in proportion to the share of its table the cache holds.
//!
//! # Errors
//! Every call that touches a file returns `io::Result`, and an error names the map's
//! directory. A failed append changes nothing: when writing the tail fails, the record
//! that filled it is taken out again and the earlier ones stay in memory (answered from
//! there, written with the next append). A write that fails after the record went in (a
//! slot, a DEAD mark, a rebuild) leaves the map in an unknown state: it is then *broken*,
//! and every later call fails with an error that says so. Writing a changed block back
//! can fail during any map's call (whoever's read evicts it): the block then stays in the
//! cache (still answering reads, so none sees older bytes) until its file is dropped, and
//! its map is broken from its next call on. Owners treat a broken map as lost (the anchor
//! index reloads its last saved file; a pass stops).
//!
//! Limits: keys and values under 2 GiB each. Reads take `&self` and use positioned reads,
//! so any number may run at once (the block cache is behind one lock, held while copying
//! and while writing to a file, never while reading one); writes take `&mut self`. Costs:
//! a lookup is one positioned read of the slot file (8 slots; more on a long probe) and
//! one of the log, each saved when its block is cached; an insert writes its slot (kept in
//! the cache when its block is there) and every [`TAIL_BYTES`] of records one write of the
//! log. With `--log-level debug` a map says, when dropped, how many calls it served and
//! how many reads and writes of each file they took.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::hash::BuildHasher;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

const SLOT: u64 = 16;
const EMPTY: u64 = 0;
const REMOVED: u64 = u64::MAX;
const DEAD: u32 = 1 << 31;
const HEADER: usize = 8;
/// Slots read per positioned read while probing.
const PROBE_BATCH: u64 = 8;
/// Dead log bytes tolerated before a compaction is considered at all.
pub const COMPACT_MIN_DEAD: u64 = 1 << 20;
/// Bytes read at once when a record's size is not known yet.
const READ_AHEAD: usize = 256;
/// Bytes read at once when walking the log or the slot table.
const WALK_CHUNK: usize = 64 * 1024;
/// The block cache's budget, for every map of the process together.
pub const CACHE_BYTES: usize = 8 << 20;
/// The block cache's unit (small in tests, so that reads cross blocks and evictions happen).
const BLOCK: usize = if cfg!(test) { 64 } else { 4096 };
/// Reads of this many bytes or more (walks of the log and of the slot table) go to the
/// file, past the cache.
const DIRECT_READ: usize = if cfg!(test) { 512 } else { 8 * 1024 };
/// Appended log bytes gathered in memory before one write (small in tests: flushes happen).
pub const TAIL_BYTES: usize = if cfg!(test) { 300 } else { 64 * 1024 };

static NEXT_FILE: AtomicU64 = AtomicU64::new(0);

/// A byte map in scratch files; see the module doc.
pub struct DiskMap {
    dir: PathBuf,
    name: &'static str,
    slots: Scratch,
    log: Scratch,
    /// Number of slots (a power of two).
    n: u64,
    live: u64,
    /// Slots not empty: live entries and removed marks.
    used: u64,
    log_end: u64,
    live_bytes: u64,
    dead_bytes: u64,
    keys: RandomState,
    broken: bool,
    compact_min_dead: u64,
    /// Every key hashes alike (tests: collisions must cost reads, never wrong answers).
    #[cfg(test)]
    collide: bool,
}

impl fmt::Debug for DiskMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskMap")
            .field("dir", &self.dir)
            .field("name", &self.name)
            .field("entries", &self.live)
            .field("slots", &self.n)
            .field("log_bytes", &self.log_end)
            .field("broken", &self.broken)
            .finish()
    }
}

impl Drop for DiskMap {
    fn drop(&mut self) {
        log::debug!(
            "scratch map {}: {} entries, {}; slot file: {}; log: {}",
            self.name,
            self.live,
            self.stats().calls,
            self.stats().slots,
            self.stats().log
        );
    }
}

/// A map's counters, for the debug line it writes when dropped.
#[derive(Default)]
struct Stats {
    calls: Calls,
    slots: FileIo,
    log: FileIo,
}

/// What a map was asked.
#[derive(Default)]
struct Calls {
    lookups: AtomicU64,
    inserts: AtomicU64,
    overwrites: AtomicU64,
    removes: AtomicU64,
    walks: AtomicU64,
    rebuilds: AtomicU64,
    compactions: AtomicU64,
}

impl Calls {
    fn note(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl fmt::Display for Calls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        write!(
            f,
            "{} lookups, {} inserts, {} overwrites, {} removes, {} walks, {} rebuilds, {} compactions",
            n(&self.lookups),
            n(&self.inserts),
            n(&self.overwrites),
            n(&self.removes),
            n(&self.walks),
            n(&self.rebuilds),
            n(&self.compactions)
        )
    }
}

/// The system calls one of a map's files cost, over the files it had (rebuilds and
/// compactions replace them).
#[derive(Default)]
struct FileIo {
    /// Positioned reads issued.
    reads: AtomicU64,
    /// Reads answered from memory (the block cache or the log's tail).
    hits: AtomicU64,
    /// Positioned writes issued (a cached block written back counts as one).
    writes: AtomicU64,
    /// Writes that went into a cached block instead.
    kept: AtomicU64,
}

impl fmt::Display for FileIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} reads ({} more answered from memory), {} writes ({} more kept in memory)",
            self.reads.load(Ordering::Relaxed),
            self.hits.load(Ordering::Relaxed),
            self.writes.load(Ordering::Relaxed),
            self.kept.load(Ordering::Relaxed)
        )
    }
}

/// Where a key is, or where it would go.
struct Probe {
    /// The key's slot, its record's log offset and the record, if present.
    found: Option<Found>,
    /// The first free slot (removed or empty) met on the way.
    free: u64,
    /// Whether that slot is empty (not a removed mark): filling it uses one more slot.
    free_empty: bool,
}

struct Found {
    slot: u64,
    off: u64,
    rec: Record,
}

/// One log record as read: header, key and value in one buffer.
struct Record {
    bytes: Vec<u8>,
    klen: usize,
}

impl Record {
    fn key(&self) -> &[u8] {
        &self.bytes[HEADER..HEADER + self.klen]
    }

    fn value_len(&self) -> usize {
        self.bytes.len() - HEADER - self.klen
    }

    fn into_value(mut self) -> Vec<u8> {
        self.bytes.drain(..HEADER + self.klen);
        self.bytes
    }
}

impl DiskMap {
    /// An empty map whose files live in `dir`; `name` tells them (and errors) apart.
    /// `capacity` is a hint: the number of entries expected (the table then needs no
    /// rebuild until past it).
    pub fn new(dir: &Path, name: &'static str, capacity: u64) -> io::Result<DiskMap> {
        Self::with_cache(dir, name, capacity, shared_cache())
    }

    fn with_cache(
        dir: &Path,
        name: &'static str,
        capacity: u64,
        cache: Arc<Mutex<BlockCache>>,
    ) -> io::Result<DiskMap> {
        let n = (capacity.saturating_mul(2)).max(64).next_power_of_two();
        let stats = Arc::new(Stats::default());
        let slots = Scratch::create(dir, name, "slots", &cache, &stats, false)?;
        slots.set_len(n * SLOT).map_err(|e| named(dir, name, e))?;
        let log = Scratch::create(dir, name, "log", &cache, &stats, true)?;
        Ok(DiskMap {
            dir: dir.to_path_buf(),
            name,
            slots,
            log,
            n,
            live: 0,
            used: 0,
            log_end: 0,
            live_bytes: 0,
            dead_bytes: 0,
            keys: RandomState::new(),
            broken: false,
            compact_min_dead: COMPACT_MIN_DEAD,
            #[cfg(test)]
            collide: false,
        })
    }

    /// [`DiskMap::new`] in `dir`, else (a missing or read-only state directory, in a
    /// command that only reads) in the system's temporary directory; the error is `dir`'s.
    pub fn scratch(dir: &Path, name: &'static str, capacity: u64) -> io::Result<DiskMap> {
        DiskMap::new(dir, name, capacity)
            .or_else(|e| DiskMap::new(&std::env::temp_dir(), name, capacity).map_err(|_| e))
    }

    /// Number of entries.
    pub fn len(&self) -> u64 {
        self.live
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        self.usable()?;
        Calls::note(&self.stats().calls.lookups);
        let h = self.hash(key);
        let probe = self.probe(h, key).map_err(|e| self.err(e))?;
        Ok(probe.found.map(|f| f.rec.into_value()))
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &[u8]) -> io::Result<bool> {
        self.usable()?;
        Calls::note(&self.stats().calls.lookups);
        let h = self.hash(key);
        Ok(self.probe(h, key).map_err(|e| self.err(e))?.found.is_some())
    }

    /// Sets `key` to `value` (replacing any value); the entry becomes the last in
    /// iteration order.
    pub fn insert(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.usable()?;
        Calls::note(&self.stats().calls.inserts);
        if key.len() >= DEAD as usize || value.len() >= DEAD as usize {
            return Err(self.err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a key or value of 2 GiB or more",
            )));
        }
        if (self.used + 1) * 2 > self.n {
            // Mostly removed marks: the same size, rebuilt, is enough.
            let size = if self.live * 4 < self.n {
                self.n
            } else {
                self.n * 2
            };
            self.guard(|m| m.rebuild(size))?;
        }
        let h = self.hash(key);
        let probe = self.probe(h, key).map_err(|e| self.err(e))?;
        let off = self.log_end;
        let mut rec = Vec::with_capacity(HEADER + key.len() + value.len());
        push_record(&mut rec, key, value);
        // Past the end of the log: a failure here changes nothing the map answers.
        self.log
            .write_all_at(&rec, off)
            .map_err(|e| named(&self.dir, self.name, e))?;
        let slot = probe.found.as_ref().map_or(probe.free, |f| f.slot);
        self.guard(|m| {
            m.slots.write_slot(slot, h, off + 1)?;
            if let Some(f) = &probe.found {
                m.mark_dead(f.off, &f.rec)?;
            }
            Ok(())
        })?;
        self.log_end += rec.len() as u64;
        self.live_bytes += rec.len() as u64;
        if probe.found.is_none() {
            self.live += 1;
            if probe.free_empty {
                self.used += 1;
            }
        }
        self.maybe_compact()
    }

    /// Overwrites the value of `key` in place when the new one has the same length (its
    /// place in the iteration order stays); whether it did. A key that is absent, or a
    /// value of another length, changes nothing (use [`DiskMap::insert`]).
    pub fn overwrite(&mut self, key: &[u8], value: &[u8]) -> io::Result<bool> {
        self.usable()?;
        Calls::note(&self.stats().calls.overwrites);
        let h = self.hash(key);
        let Some(f) = self.probe(h, key).map_err(|e| self.err(e))?.found else {
            return Ok(false);
        };
        if f.rec.value_len() != value.len() {
            return Ok(false);
        }
        let at = f.off + (HEADER + f.rec.klen) as u64;
        self.guard(|m| m.log.write_all_at(value, at))?;
        Ok(true)
    }

    /// Removes `key`; whether it was present.
    pub fn remove(&mut self, key: &[u8]) -> io::Result<bool> {
        self.usable()?;
        Calls::note(&self.stats().calls.removes);
        let h = self.hash(key);
        let Some(f) = self.probe(h, key).map_err(|e| self.err(e))?.found else {
            return Ok(false);
        };
        self.guard(|m| {
            m.slots.write_slot(f.slot, h, REMOVED)?;
            m.mark_dead(f.off, &f.rec)
        })?;
        self.live -= 1;
        self.maybe_compact()?;
        Ok(true)
    }

    /// Every entry, in the order they were last written. An error ends the walk (the
    /// iterator yields it and then nothing).
    pub fn iter(&self) -> Walk<'_> {
        Calls::note(&self.stats().calls.walks);
        Walk {
            map: self,
            pos: 0,
            buf: Vec::new(),
            buf_at: 0,
            failed: false,
            start_error: self.usable().err(),
        }
    }

    fn stats(&self) -> &Stats {
        &self.slots.shared.stats
    }

    fn usable(&self) -> io::Result<()> {
        if self.broken || self.slots.failed() || self.log.failed() {
            return Err(named(
                &self.dir,
                self.name,
                io::Error::other("an earlier write failed; its contents are lost"),
            ));
        }
        Ok(())
    }

    /// Runs a step after which a failure leaves the map in an unknown state.
    fn guard(&mut self, step: impl FnOnce(&mut Self) -> io::Result<()>) -> io::Result<()> {
        step(self).map_err(|e| {
            self.broken = true;
            self.err(e)
        })
    }

    fn err(&self, e: io::Error) -> io::Error {
        named(&self.dir, self.name, e)
    }

    fn hash(&self, key: &[u8]) -> u64 {
        #[cfg(test)]
        if self.collide {
            return 7;
        }
        self.keys.hash_one(key)
    }

    /// Makes every later call fail as after a failed write (tests of owners' recovery).
    #[cfg(test)]
    pub(crate) fn break_for_test(&mut self) {
        self.broken = true;
    }

    fn probe(&self, h: u64, key: &[u8]) -> io::Result<Probe> {
        let mask = self.n - 1;
        let mut i = h & mask;
        let mut free = None;
        let mut buf = [0u8; (SLOT * PROBE_BATCH) as usize];
        let mut seen = 0;
        while seen < self.n {
            let batch = PROBE_BATCH.min(self.n - i);
            let bytes = &mut buf[..(batch * SLOT) as usize];
            self.slots.read_exact_at(bytes, i * SLOT)?;
            for k in 0..batch {
                let s = &bytes[(k * SLOT) as usize..((k + 1) * SLOT) as usize];
                let sh = u64::from_le_bytes(s[..8].try_into().expect("8 bytes"));
                let so = u64::from_le_bytes(s[8..].try_into().expect("8 bytes"));
                let at = i + k;
                match so {
                    EMPTY => {
                        return Ok(Probe {
                            found: None,
                            free: free.unwrap_or(at),
                            free_empty: free.is_none(),
                        })
                    }
                    REMOVED => {
                        free.get_or_insert(at);
                    }
                    _ if sh == h => {
                        let rec = self.read_record(so - 1)?;
                        if rec.key() == key {
                            return Ok(Probe {
                                found: Some(Found {
                                    slot: at,
                                    off: so - 1,
                                    rec,
                                }),
                                free: at,
                                free_empty: false,
                            });
                        }
                    }
                    _ => {}
                }
            }
            seen += batch;
            i = (i + batch) & mask;
        }
        // A full table never happens (it is rebuilt at half), but be exact anyway.
        match free {
            Some(f) => Ok(Probe {
                found: None,
                free: f,
                free_empty: false,
            }),
            None => Err(io::Error::other("slot table full")),
        }
    }

    /// The record at `off`.
    fn read_record(&self, off: u64) -> io::Result<Record> {
        let mut head = [0u8; READ_AHEAD];
        let want = (READ_AHEAD as u64).min(self.log_end.saturating_sub(off)) as usize;
        let got = self.log.read_at_most(&mut head[..want], off)?;
        if got < HEADER {
            return Err(corrupt(off));
        }
        let (klen, vlen, _) = header(&head[..HEADER]);
        let total = HEADER + klen + vlen;
        if off + total as u64 > self.log_end {
            return Err(corrupt(off));
        }
        let mut bytes = Vec::with_capacity(total);
        bytes.extend_from_slice(&head[..got.min(total)]);
        if bytes.len() < total {
            let have = bytes.len();
            bytes.resize(total, 0);
            self.log
                .read_exact_at(&mut bytes[have..], off + have as u64)?;
        }
        Ok(Record { bytes, klen })
    }

    /// Sets DEAD in the header of `rec`, which is at `off`.
    fn mark_dead(&mut self, off: u64, rec: &Record) -> io::Result<()> {
        self.log
            .write_all_at(&((rec.klen as u32) | DEAD).to_le_bytes(), off)?;
        let size = rec.bytes.len() as u64;
        self.live_bytes -= size;
        self.dead_bytes += size;
        Ok(())
    }

    /// A fresh slot table of `size` slots holding the live entries.
    fn rebuild(&mut self, size: u64) -> io::Result<()> {
        Calls::note(&self.stats().calls.rebuilds);
        let mut fresh = Scratch::create(
            &self.dir,
            self.name,
            "slots",
            &self.slots.cache,
            &self.slots.shared.stats,
            false,
        )?;
        fresh.set_len(size * SLOT)?;
        let mut chunk = vec![0u8; WALK_CHUNK];
        let mut at = 0u64;
        let total = self.n * SLOT;
        while at < total {
            let len = (WALK_CHUNK as u64).min(total - at) as usize;
            self.slots.read_exact_at(&mut chunk[..len], at)?;
            for s in chunk[..len].chunks_exact(SLOT as usize) {
                let h = u64::from_le_bytes(s[..8].try_into().expect("8 bytes"));
                let o = u64::from_le_bytes(s[8..].try_into().expect("8 bytes"));
                if o != EMPTY && o != REMOVED {
                    place(&mut fresh, size, h, o)?;
                }
            }
            at += len as u64;
        }
        let old = std::mem::replace(&mut self.slots, fresh);
        self.n = size;
        self.used = self.live;
        if old.failed() {
            return Err(io::Error::other("writing a cached block back failed"));
        }
        Ok(())
    }

    fn maybe_compact(&mut self) -> io::Result<()> {
        if self.dead_bytes > self.compact_min_dead && self.dead_bytes > self.live_bytes {
            self.guard(|m| m.compact())?;
        }
        Ok(())
    }

    /// Rewrites the log with its live records only, in order, with a slot table pointing
    /// at them; both replace the old ones only when complete.
    fn compact(&mut self) -> io::Result<()> {
        Calls::note(&self.stats().calls.compactions);
        let mut log = Scratch::create(
            &self.dir,
            self.name,
            "log",
            &self.slots.cache,
            &self.slots.shared.stats,
            true,
        )?;
        let mut slots = Scratch::create(
            &self.dir,
            self.name,
            "slots",
            &self.slots.cache,
            &self.slots.shared.stats,
            false,
        )?;
        slots.set_len(self.n * SLOT)?;
        let mut out = Vec::with_capacity(WALK_CHUNK);
        let mut end = 0u64;
        for item in self.iter() {
            let (key, value) = item?;
            let off = end + out.len() as u64;
            push_record(&mut out, &key, &value);
            place(&mut slots, self.n, self.hash(&key), off + 1)?;
            if out.len() >= WALK_CHUNK {
                log.write_all_at(&out, end)?;
                end += out.len() as u64;
                out.clear();
            }
        }
        log.write_all_at(&out, end)?;
        end += out.len() as u64;
        let old_log = std::mem::replace(&mut self.log, log);
        let old_slots = std::mem::replace(&mut self.slots, slots);
        self.used = self.live;
        self.log_end = end;
        self.live_bytes = end;
        self.dead_bytes = 0;
        if old_log.failed() || old_slots.failed() {
            return Err(io::Error::other("writing a cached block back failed"));
        }
        Ok(())
    }
}

/// Puts (`h`, `off`) into the first empty slot from its home in a table of `size` slots
/// that does not hold its key yet.
fn place(slots: &mut Scratch, size: u64, h: u64, off: u64) -> io::Result<()> {
    let mask = size - 1;
    let mut i = h & mask;
    loop {
        let mut cur = [0u8; SLOT as usize];
        slots.read_exact_at(&mut cur, i * SLOT)?;
        if u64::from_le_bytes(cur[8..].try_into().expect("8 bytes")) == EMPTY {
            return slots.write_slot(i, h, off);
        }
        i = (i + 1) & mask;
    }
}

/// Walks a map's log; see [`DiskMap::iter`].
pub struct Walk<'a> {
    map: &'a DiskMap,
    pos: u64,
    buf: Vec<u8>,
    buf_at: u64,
    failed: bool,
    start_error: Option<io::Error>,
}

impl Walk<'_> {
    /// The next live record: key and value.
    fn next_record(&mut self) -> Option<io::Result<(Vec<u8>, Vec<u8>)>> {
        if let Some(e) = self.start_error.take() {
            self.failed = true;
            return Some(Err(e));
        }
        while !self.failed && self.pos < self.map.log_end {
            match self.record_here() {
                Ok((key, value, dead, len)) => {
                    self.pos += len;
                    if !dead {
                        return Some(Ok((key, value)));
                    }
                }
                Err(e) => {
                    self.failed = true;
                    return Some(Err(self.map.err(e)));
                }
            }
        }
        None
    }

    /// Ensures `len` bytes from `pos` are in the buffer.
    fn fill(&mut self, len: usize) -> io::Result<()> {
        let have_from = self.pos.saturating_sub(self.buf_at) as usize;
        if self.pos >= self.buf_at && have_from + len <= self.buf.len() {
            return Ok(());
        }
        let want = len
            .max(WALK_CHUNK)
            .min((self.map.log_end - self.pos) as usize);
        if want < len {
            return Err(corrupt(self.pos));
        }
        self.buf.resize(want, 0);
        self.map.log.read_exact_at(&mut self.buf, self.pos)?;
        self.buf_at = self.pos;
        Ok(())
    }

    fn record_here(&mut self) -> io::Result<(Vec<u8>, Vec<u8>, bool, u64)> {
        self.fill(HEADER)?;
        let s = (self.pos - self.buf_at) as usize;
        let (klen, vlen, dead) = header(&self.buf[s..s + HEADER]);
        let total = HEADER + klen + vlen;
        self.fill(total)?;
        let s = (self.pos - self.buf_at) as usize;
        let key = self.buf[s + HEADER..s + HEADER + klen].to_vec();
        let value = self.buf[s + HEADER + klen..s + total].to_vec();
        Ok((key, value, dead, total as u64))
    }
}

impl Iterator for Walk<'_> {
    type Item = io::Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record()
    }
}

/// Appends one live log record (lengths checked by the caller).
fn push_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
}

fn header(b: &[u8]) -> (usize, usize, bool) {
    let k = u32::from_le_bytes(b[..4].try_into().expect("4 bytes"));
    let v = u32::from_le_bytes(b[4..8].try_into().expect("4 bytes"));
    ((k & !DEAD) as usize, v as usize, k & DEAD != 0)
}

fn corrupt(off: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("scratch log damaged at byte {off}"),
    )
}

fn named(dir: &Path, name: &str, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("scratch file for the {name} in {}: {e}", dir.display()),
    )
}

/// One scratch file: unlinked at once on Unix, removed on drop elsewhere. Every read and
/// write of it goes through here: the block cache, and for a log the tail in memory.
struct Scratch {
    /// The file, also held by the cache's changed blocks of it (to write them back).
    shared: Arc<Shared>,
    /// Tells this file's blocks apart in the cache (never reused within the process).
    id: u64,
    cache: Arc<Mutex<BlockCache>>,
    /// A log's appended bytes not written yet (`None`: a slot table).
    tail: Option<Box<Tail>>,
    #[cfg(not(unix))]
    path: PathBuf,
}

/// What a cached block that changed needs to be written back.
struct Shared {
    file: File,
    /// Writing a changed block back failed: the map is broken.
    failed: AtomicBool,
    /// The map's counters (shared by its files, old and new).
    stats: Arc<Stats>,
    log: bool,
}

impl Shared {
    fn io(&self) -> &FileIo {
        if self.log {
            &self.stats.log
        } else {
            &self.stats.slots
        }
    }
}

/// Appended bytes not written yet: they belong at `at`, where the file's written part ends.
struct Tail {
    bytes: Vec<u8>,
    at: u64,
}

impl Scratch {
    fn create(
        dir: &Path,
        name: &str,
        what: &str,
        cache: &Arc<Mutex<BlockCache>>,
        stats: &Arc<Stats>,
        buffered: bool,
    ) -> io::Result<Scratch> {
        // The block cache tells scratch files apart by this id.
        let n = NEXT_FILE.fetch_add(1, Ordering::Relaxed);
        let (file, _path) = crate::state_dir::scratch_file(dir, &format!("{name}.{what}"))
            .map_err(|e| named(dir, name, e))?;
        Ok(Scratch {
            shared: Arc::new(Shared {
                file,
                failed: AtomicBool::new(false),
                stats: stats.clone(),
                log: buffered,
            }),
            id: n,
            cache: cache.clone(),
            tail: buffered.then(|| {
                Box::new(Tail {
                    bytes: Vec::new(),
                    at: 0,
                })
            }),
            #[cfg(not(unix))]
            path: _path,
        })
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        // Only ever on a fresh file, before any block of it is cached.
        self.shared.file.set_len(len)
    }

    fn io(&self) -> &FileIo {
        self.shared.io()
    }

    /// Whether writing a changed block of this file back failed (the map is then broken).
    fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::Relaxed)
    }

    /// Where the file's written part ends (the tail, if any, follows).
    fn written(&self) -> u64 {
        self.tail.as_ref().map_or(u64::MAX, |t| t.at)
    }

    /// Reads until `buf` is full or the data ends (the file's written part, then the
    /// tail); the number of bytes read.
    fn read_at_most(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        let end = off + buf.len() as u64;
        let written = self.written();
        let mut got = 0;
        if off < written {
            let n = (written.min(end) - off) as usize;
            got = self.read_file(&mut buf[..n], off)?;
            if got < n {
                return Ok(got);
            }
        }
        if let Some(t) = self.tail.as_ref().filter(|t| end > t.at) {
            let from = off.max(t.at);
            let i = (from - t.at) as usize;
            if i < t.bytes.len() {
                let n = (t.bytes.len() - i).min((end - from) as usize);
                let at = (from - off) as usize;
                buf[at..at + n].copy_from_slice(&t.bytes[i..i + n]);
                got = at + n;
                self.io().hits.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(got)
    }

    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        if self.read_at_most(buf, off)? < buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("scratch file shorter than expected at byte {off}"),
            ));
        }
        Ok(())
    }

    /// Reads the file itself: through the cache unless [`DIRECT_READ`] bytes or more are
    /// asked for (then the cache's changed blocks there are written back first).
    fn read_file(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        if buf.len() >= DIRECT_READ {
            // No block of this file changes until the read is over: that takes `&mut`.
            lock(&self.cache).write_back(self.id, off, buf.len())?;
            self.io().reads.fetch_add(1, Ordering::Relaxed);
            return read_at_most(&self.shared.file, buf, off);
        }
        let mut got = 0;
        while got < buf.len() {
            let pos = off + got as u64;
            let block = pos / BLOCK as u64;
            let inb = (pos % BLOCK as u64) as usize;
            let want = (buf.len() - got).min(BLOCK - inb);
            let cached = lock(&self.cache).read(self.id, block, inb, &mut buf[got..got + want]);
            let n = match cached {
                Some(n) => {
                    self.io().hits.fetch_add(1, Ordering::Relaxed);
                    n
                }
                None => {
                    // No lock held while reading: the block is not cached, and only a
                    // write (which takes `&mut` of the map) could put a changed one there.
                    let mut data = [0u8; BLOCK];
                    self.io().reads.fetch_add(1, Ordering::Relaxed);
                    let len = read_at_most(&self.shared.file, &mut data, block * BLOCK as u64)?;
                    if len > 0 {
                        lock(&self.cache).insert(self.id, block, &data[..len]);
                    }
                    let n = len.saturating_sub(inb).min(want);
                    buf[got..got + n].copy_from_slice(&data[inb..inb + n]);
                    n
                }
            };
            got += n;
            if n < want {
                break;
            }
        }
        Ok(got)
    }

    /// Writes `data` at `off`: into the tail when it lies there (an append extends it and
    /// writes it out once full), else into the cached block that holds it, else to the
    /// file and any cached block it touches.
    fn write_all_at(&mut self, data: &[u8], off: u64) -> io::Result<()> {
        let end = off + data.len() as u64;
        let written = self.written();
        if end <= written {
            return self.write_file(data, off);
        }
        if off < written {
            // Straddles the written part and the tail (records never do; be exact anyway).
            let split = (written - off) as usize;
            self.write_file(&data[..split], off)?;
            return self.write_all_at(&data[split..], written);
        }
        let Some(t) = self.tail.as_mut() else {
            unreachable!("a file without a tail is written up to u64::MAX");
        };
        let i = (off - t.at) as usize;
        if i + data.len() <= t.bytes.len() {
            t.bytes[i..i + data.len()].copy_from_slice(data);
            return Ok(());
        }
        if i != t.bytes.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a scratch log write that neither overwrites nor appends",
            ));
        }
        let before = t.bytes.len();
        t.bytes.extend_from_slice(data);
        if t.bytes.len() >= TAIL_BYTES {
            if let Err(e) = self.flush() {
                // The earlier records stay in memory; this one was never added.
                if let Some(t) = self.tail.as_mut() {
                    t.bytes.truncate(before);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Writes the tail to the file.
    fn flush(&mut self) -> io::Result<()> {
        let Some(t) = self.tail.as_mut() else {
            return Ok(());
        };
        let (bytes, at) = (std::mem::take(&mut t.bytes), t.at);
        let r = if bytes.is_empty() {
            Ok(())
        } else {
            self.write_file(&bytes, at)
        };
        if let Some(t) = self.tail.as_mut() {
            t.bytes = bytes;
            if r.is_ok() {
                t.at += t.bytes.len() as u64;
                t.bytes.clear();
                if t.bytes.capacity() > 2 * TAIL_BYTES {
                    t.bytes = Vec::new();
                }
            }
        }
        r
    }

    fn write_file(&self, data: &[u8], off: u64) -> io::Result<()> {
        let mut cache = lock(&self.cache);
        if cache.change(self.id, off, data, &self.shared) {
            self.io().kept.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.io().writes.fetch_add(1, Ordering::Relaxed);
        // Under the lock: a changed block written back meanwhile would be overwritten.
        match write_all_at(&self.shared.file, data, off) {
            Ok(()) => {
                cache.update(self.id, off, data);
                Ok(())
            }
            Err(e) => {
                // Part of it may have gone in: what the cache held there is unknown now.
                cache.forget(self.id, off, data.len());
                Err(e)
            }
        }
    }

    fn write_slot(&mut self, slot: u64, h: u64, off: u64) -> io::Result<()> {
        let mut s = [0u8; SLOT as usize];
        s[..8].copy_from_slice(&h.to_le_bytes());
        s[8..].copy_from_slice(&off.to_le_bytes());
        self.write_all_at(&s, slot * SLOT)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Its changed blocks too: nobody reads the file again.
        lock(&self.cache).purge(self.id);
        #[cfg(not(unix))]
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The process's block cache, shared by every map.
fn shared_cache() -> Arc<Mutex<BlockCache>> {
    static CACHE: OnceLock<Arc<Mutex<BlockCache>>> = OnceLock::new();
    CACHE
        .get_or_init(|| Arc::new(Mutex::new(BlockCache::new(CACHE_BYTES / BLOCK))))
        .clone()
}

/// The cache, emptied if a panic left it half-updated (the maps whose changed blocks that
/// drops are broken).
fn lock(cache: &Mutex<BlockCache>) -> MutexGuard<'_, BlockCache> {
    cache.lock().unwrap_or_else(|poisoned| {
        cache.clear_poison();
        let mut c = poisoned.into_inner();
        c.clear();
        c
    })
}

/// Blocks of scratch files, at most `max` of them (frames are allocated as needed, up to
/// that, and reused); clock eviction. Keyed by (file id, block number). A block changed in
/// the cache (a write that fell inside it) is written to its file when evicted, or before
/// a read of that range past the cache; if that write fails the block stays (so no read
/// ever sees the file's older bytes) and its file is marked failed (its map is broken).
struct BlockCache {
    max: usize,
    index: HashMap<(u64, u64), usize>,
    frames: Vec<Frame>,
    /// Frames holding nothing (their `key` is `None`).
    free: Vec<usize>,
    hand: usize,
}

struct Frame {
    key: Option<(u64, u64)>,
    /// Bytes of the block held, from its start (less than a block: the file ended there).
    len: usize,
    /// Read since the clock hand last passed.
    used: bool,
    /// Changed since read: the file to write it back to.
    changed: Option<Arc<Shared>>,
    /// Writing it back failed: kept until its file is dropped.
    stuck: bool,
    data: Box<[u8]>,
}

impl BlockCache {
    fn new(max: usize) -> BlockCache {
        BlockCache {
            max,
            index: HashMap::new(),
            frames: Vec::new(),
            free: Vec::new(),
            hand: 0,
        }
    }

    /// Copies from block `block` of `file`, from `inb` on, into `dst`: how many bytes (fewer
    /// than asked where the file ended), or `None` when the block is not held.
    fn read(&mut self, file: u64, block: u64, inb: usize, dst: &mut [u8]) -> Option<usize> {
        let f = *self.index.get(&(file, block))?;
        let frame = &mut self.frames[f];
        frame.used = true;
        let n = frame.len.saturating_sub(inb).min(dst.len());
        dst[..n].copy_from_slice(&frame.data[inb..inb + n]);
        Some(n)
    }

    /// Holds `data`, the start of block `block` of `file` as the file has it now.
    fn insert(&mut self, file: u64, block: u64, data: &[u8]) {
        if self.index.contains_key(&(file, block)) {
            // Another reader's copy of the same bytes is there already.
            return;
        }
        let Some(f) = self.take_frame() else {
            return;
        };
        self.index.insert((file, block), f);
        let frame = &mut self.frames[f];
        frame.key = Some((file, block));
        frame.data[..data.len()].copy_from_slice(data);
        frame.len = data.len();
        frame.used = true;
    }

    /// A frame to fill: a free one, a new one while under the budget, else the clock's
    /// victim (the first not read since the hand last passed it; a changed one is written
    /// back first). `None`: every frame is stuck (or the budget is 0).
    fn take_frame(&mut self) -> Option<usize> {
        if let Some(f) = self.free.pop() {
            return Some(f);
        }
        if self.frames.len() < self.max {
            self.frames.push(Frame {
                key: None,
                len: 0,
                used: false,
                changed: None,
                stuck: false,
                data: vec![0u8; BLOCK].into_boxed_slice(),
            });
            return Some(self.frames.len() - 1);
        }
        // Two sweeps clear every mark; a third finds a victim unless all are stuck.
        for _ in 0..3 * self.frames.len() {
            let f = self.hand;
            self.hand = (self.hand + 1) % self.frames.len();
            let frame = &mut self.frames[f];
            if frame.stuck {
                continue;
            }
            if frame.used {
                frame.used = false;
                continue;
            }
            if !self.write_frame(f) {
                continue;
            }
            if let Some(k) = self.frames[f].key.take() {
                self.index.remove(&k);
            }
            return Some(f);
        }
        None
    }

    /// Writes frame `f` back if it changed; whether it is clean now (else it is stuck and
    /// its file marked failed).
    fn write_frame(&mut self, f: usize) -> bool {
        let frame = &mut self.frames[f];
        let (Some(owner), Some((_, block))) = (frame.changed.as_ref(), frame.key) else {
            return true;
        };
        owner.io().writes.fetch_add(1, Ordering::Relaxed);
        match write_all_at(&owner.file, &frame.data[..frame.len], block * BLOCK as u64) {
            Ok(()) => {
                frame.changed = None;
                true
            }
            Err(e) => {
                log::debug!("scratch file: writing a cached block back: {e}");
                owner.failed.store(true, Ordering::Relaxed);
                frame.stuck = true;
                false
            }
        }
    }

    /// Puts the write of `data` at `off` of `file` into the cached block that holds all of
    /// it; whether it could (else it is for the file).
    fn change(&mut self, file: u64, off: u64, data: &[u8], owner: &Arc<Shared>) -> bool {
        let block = off / BLOCK as u64;
        let i = (off % BLOCK as u64) as usize;
        let Some(&f) = self.index.get(&(file, block)) else {
            return false;
        };
        let frame = &mut self.frames[f];
        if i + data.len() > frame.len {
            return false;
        }
        frame.data[i..i + data.len()].copy_from_slice(data);
        if frame.changed.is_none() {
            frame.changed = Some(owner.clone());
        }
        true
    }

    /// Writes back the changed blocks of `file` that `len` bytes at `off` touch (before a
    /// read of them past the cache); an error if one could not be.
    fn write_back(&mut self, file: u64, off: u64, len: usize) -> io::Result<()> {
        let end = off + len as u64;
        let mut block = off / BLOCK as u64;
        while block * (BLOCK as u64) < end {
            if let Some(&f) = self.index.get(&(file, block)) {
                if !self.write_frame(f) {
                    return Err(io::Error::other("writing a cached block back failed"));
                }
            }
            block += 1;
        }
        Ok(())
    }

    /// `data` was written at `off` of `file`: held blocks it touches take it. A write that
    /// starts past what a block holds (a gap; not met in practice, as a file only grows by
    /// writes at its end) drops that block instead, written back first if it changed.
    fn update(&mut self, file: u64, off: u64, data: &[u8]) {
        let end = off + data.len() as u64;
        let mut block = off / BLOCK as u64;
        while block * (BLOCK as u64) < end {
            if let Some(&f) = self.index.get(&(file, block)) {
                let start = block * BLOCK as u64;
                let from = off.max(start);
                let to = end.min(start + BLOCK as u64);
                let i = (from - start) as usize;
                let frame = &mut self.frames[f];
                if i <= frame.len {
                    let n = (to - from) as usize;
                    let src = (from - off) as usize;
                    frame.data[i..i + n].copy_from_slice(&data[src..src + n]);
                    frame.len = frame.len.max(i + n);
                } else if self.write_frame(f) {
                    self.drop_frame(f);
                }
            }
            block += 1;
        }
    }

    /// A write of `len` bytes at `off` of `file` failed: drops the unchanged blocks it
    /// touches (the file's bytes there are unknown). A changed one stays: it holds what
    /// those bytes are to be (a slot write's failure breaks the map anyway; a log's
    /// failed tail write is only ever past every byte a read takes from the file).
    fn forget(&mut self, file: u64, off: u64, len: usize) {
        let end = off + len as u64;
        let mut block = off / BLOCK as u64;
        while block * (BLOCK as u64) < end {
            if let Some(&f) = self.index.get(&(file, block)) {
                if self.frames[f].changed.is_none() {
                    self.drop_frame(f);
                }
            }
            block += 1;
        }
    }

    /// Drops every held block of `file` (it is gone), changed ones too.
    fn purge(&mut self, file: u64) {
        for f in 0..self.frames.len() {
            if matches!(self.frames[f].key, Some((id, _)) if id == file) {
                self.drop_frame(f);
            }
        }
    }

    /// Drops every block; the files whose changed blocks go are marked failed.
    fn clear(&mut self) {
        for f in 0..self.frames.len() {
            if let Some(owner) = &self.frames[f].changed {
                owner.failed.store(true, Ordering::Relaxed);
            }
            if self.frames[f].key.is_some() {
                self.drop_frame(f);
            }
        }
    }

    fn drop_frame(&mut self, f: usize) {
        if let Some(k) = self.frames[f].key.take() {
            self.index.remove(&k);
            let frame = &mut self.frames[f];
            frame.used = false;
            frame.changed = None;
            frame.stuck = false;
            self.free.push(f);
        }
    }

    /// Blocks held.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.index.len()
    }
}

#[cfg(unix)]
fn read_at(f: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(f, buf, off)
}

#[cfg(windows)]
fn read_at(f: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(f, buf, off)
}

#[cfg(unix)]
fn write_at(f: &File, buf: &[u8], off: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::write_at(f, buf, off)
}

#[cfg(windows)]
fn write_at(f: &File, buf: &[u8], off: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_write(f, buf, off)
}

/// Reads until `buf` is full or the file ends; the number of bytes read.
fn read_at_most(f: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match read_at(f, &mut buf[got..], off + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn write_all_at(f: &File, mut buf: &[u8], mut off: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match write_at(f, buf, off) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => {
                buf = &buf[n..];
                off += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "idrelay-diskmap-{name}-{}-{}",
            std::process::id(),
            NEXT_FILE.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn all(m: &DiskMap) -> Vec<(Vec<u8>, Vec<u8>)> {
        m.iter().collect::<io::Result<Vec<_>>>().unwrap()
    }

    #[test]
    fn files_are_gone_from_the_directory_while_the_map_works() {
        let d = tempdir("unlinked");
        let mut m = DiskMap::new(&d, "test map", 0).unwrap();
        m.insert(b"a", b"1").unwrap();
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
        assert_eq!(m.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn grows_replaces_removes_and_keeps_write_order() {
        let d = tempdir("grow");
        let mut m = DiskMap::new(&d, "test map", 0).unwrap();
        for i in 0..5000u32 {
            m.insert(format!("k{i}").as_bytes(), &i.to_le_bytes())
                .unwrap();
        }
        assert_eq!(m.len(), 5000);
        assert!(m.n >= 10_000, "table grew: {}", m.n);
        m.insert(b"k7", b"seven").unwrap();
        assert!(m.remove(b"k8").unwrap());
        assert!(!m.remove(b"k8").unwrap());
        assert_eq!(m.get(b"k7").unwrap().as_deref(), Some(&b"seven"[..]));
        assert_eq!(m.get(b"k8").unwrap(), None);
        assert!(m.contains(b"k4999").unwrap());
        assert!(m.overwrite(b"k3", &9u32.to_le_bytes()).unwrap());
        assert!(!m.overwrite(b"k3", b"longer").unwrap(), "another length");
        assert!(!m.overwrite(b"absent", b"1234").unwrap());
        assert_eq!(m.get(b"k3").unwrap(), Some(9u32.to_le_bytes().to_vec()));
        let items = all(&m);
        assert_eq!(items.len(), 4999);
        assert_eq!(items.last().unwrap().0, b"k7");
        assert_eq!(items[0].0, b"k0");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn compaction_keeps_every_entry_and_the_order() {
        let d = tempdir("compact");
        let mut m = DiskMap::new(&d, "test map", 0).unwrap();
        m.compact_min_dead = 4096;
        let big = vec![7u8; 1000];
        for round in 0..20 {
            for i in 0..10u32 {
                m.insert(&i.to_le_bytes(), &big).unwrap();
            }
            m.insert(b"last", &[round]).unwrap();
        }
        assert!(m.log_end < 30_000, "log compacted: {} bytes", m.log_end);
        let items = all(&m);
        assert_eq!(items.len(), 11);
        assert_eq!(items[10], (b"last".to_vec(), vec![19]));
        assert_eq!(m.get(&3u32.to_le_bytes()).unwrap(), Some(big.clone()));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn colliding_hashes_cost_reads_never_wrong_answers() {
        let d = tempdir("collide");
        let mut m = DiskMap::new(&d, "test map", 0).unwrap();
        m.collide = true;
        for i in 0..40u8 {
            m.insert(&[i], &[i, i]).unwrap();
        }
        assert!(m.remove(&[5]).unwrap());
        m.insert(&[6], b"six").unwrap();
        for i in 0..40u8 {
            let want = match i {
                5 => None,
                6 => Some(b"six".to_vec()),
                _ => Some(vec![i, i]),
            };
            assert_eq!(m.get(&[i]).unwrap(), want, "key {i}");
        }
        assert_eq!(m.get(&[200]).unwrap(), None);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_broken_map_refuses_every_call_naming_itself() {
        let d = tempdir("broken");
        let mut m = DiskMap::new(&d, "scope map", 0).unwrap();
        m.insert(b"a", b"1").unwrap();
        m.broken = true;
        let e = m.get(b"a").unwrap_err().to_string();
        assert!(
            e.contains("scope map") && e.contains("earlier write failed"),
            "{e}"
        );
        assert!(m.insert(b"b", b"2").is_err());
        let mut it = m.iter();
        assert!(it.next().unwrap().is_err());
        assert!(it.next().is_none());
        std::fs::remove_dir_all(&d).unwrap();
    }

    fn open_full() -> Option<File> {
        // /dev/full takes no byte: every write fails with ENOSPC.
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/full")
            .ok()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_full_disk_is_an_error_not_a_panic_and_a_failed_append_changes_nothing() {
        let Some(full) = open_full() else {
            return;
        };
        let d = tempdir("full");
        let mut m = DiskMap::new(&d, "test map", 0).unwrap();
        swap_file(&mut m.log, full);
        m.insert(b"a", b"1").unwrap();
        assert_eq!(
            m.stats().log.writes.load(Ordering::Relaxed),
            0,
            "still in the tail"
        );
        // Fills the tail: writing it fails.
        let e = m.insert(b"b", &vec![2u8; TAIL_BYTES]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull, "{e}");
        assert!(!m.broken, "a failed append changes nothing");
        assert_eq!(m.get(b"b").unwrap(), None);
        assert_eq!(m.get(b"a").unwrap(), Some(b"1".to_vec()), "kept in memory");
        assert_eq!(all(&m), vec![(b"a".to_vec(), b"1".to_vec())]);
        assert_eq!(m.len(), 1);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Puts `file` under `s` (its cached blocks stay: they are the old file's).
    fn swap_file(s: &mut Scratch, file: File) {
        s.shared = Arc::new(Shared {
            file,
            failed: AtomicBool::new(false),
            stats: s.shared.stats.clone(),
            log: s.shared.log,
        });
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_failed_write_of_a_slot_breaks_the_map() {
        let Some(full) = open_full() else {
            return;
        };
        let d = tempdir("full-slots");
        // No cache: the slot is written at once.
        let cache = Arc::new(Mutex::new(BlockCache::new(0)));
        let mut m = DiskMap::with_cache(&d, "test map", 0, cache).unwrap();
        m.insert(b"a", b"1").unwrap();
        swap_file(&mut m.slots, full);
        let e = m.insert(b"b", b"2").unwrap_err().to_string();
        assert!(e.contains("test map"), "{e}");
        assert!(m.broken);
        assert!(m.get(b"a").is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_cached_block_that_cannot_be_written_back_breaks_its_map_and_is_kept() {
        let Some(full) = open_full() else {
            return;
        };
        let d = tempdir("full-back");
        // A probe's read spans up to 3 blocks (of 64 bytes in tests).
        let cache = Arc::new(Mutex::new(BlockCache::new(4)));
        let mut m = DiskMap::with_cache(&d, "test map", 0, cache.clone()).unwrap();
        // Reads of /dev/full see zeros: an empty table.
        swap_file(&mut m.slots, full);
        m.insert(b"a", b"1").unwrap();
        assert_eq!(m.stats().slots.writes.load(Ordering::Relaxed), 0);
        assert_eq!(m.stats().slots.kept.load(Ordering::Relaxed), 1);
        // Another map's reads evict the changed block: writing it back fails.
        let mut other = DiskMap::with_cache(&d, "other map", 0, cache.clone()).unwrap();
        for i in 0..50u32 {
            other.insert(&i.to_le_bytes(), b"x").unwrap();
            other.get(&i.to_le_bytes()).unwrap();
        }
        assert!(m.slots.failed());
        let e = m.get(b"a").unwrap_err().to_string();
        assert!(
            e.contains("test map") && e.contains("earlier write failed"),
            "{e}"
        );
        assert!(m.insert(b"c", b"3").is_err());
        let stuck = lock(&cache)
            .frames
            .iter()
            .filter(|f| f.stuck && f.key.is_some_and(|(id, _)| id == m.slots.id))
            .count();
        assert_eq!(stuck, 1, "kept: no read sees the file's older bytes");
        for i in 0..50u32 {
            assert_eq!(other.get(&i.to_le_bytes()).unwrap(), Some(b"x".to_vec()));
        }
        drop(m);
        assert!(lock(&cache).frames.iter().all(|f| !f.stuck));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn changed_blocks_are_written_back_before_a_walk_or_a_rebuild_reads_the_file() {
        let d = tempdir("back");
        let cache = Arc::new(Mutex::new(BlockCache::new(1 << 14)));
        let mut m = DiskMap::with_cache(&d, "test map", 0, cache).unwrap();
        for i in 0..300u32 {
            m.insert(&i.to_le_bytes(), &[1u8; 40]).unwrap();
        }
        for i in 0..300u32 {
            assert!(m.overwrite(&i.to_le_bytes(), &[2u8; 40]).unwrap());
        }
        assert!(m.stats().log.kept.load(Ordering::Relaxed) > 0);
        assert!(m.stats().slots.kept.load(Ordering::Relaxed) > 0);
        let items = all(&m);
        assert_eq!(items.len(), 300);
        assert!(
            items.iter().all(|(_, v)| v == &[2u8; 40]),
            "the walk sees the overwrites"
        );
        // Grows the table: the rebuild reads the old one past the cache.
        for i in 300..800u32 {
            m.insert(&i.to_le_bytes(), &[3u8; 4]).unwrap();
        }
        for i in 0..800u32 {
            let want = if i < 300 { vec![2u8; 40] } else { vec![3u8; 4] };
            assert_eq!(m.get(&i.to_le_bytes()).unwrap(), Some(want));
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    fn io_of(m: &DiskMap) -> (u64, u64, u64) {
        let r = |f: &FileIo| f.reads.load(Ordering::Relaxed);
        let w = |f: &FileIo| f.writes.load(Ordering::Relaxed);
        let h = |f: &FileIo| f.hits.load(Ordering::Relaxed);
        (
            r(&m.stats().slots) + r(&m.stats().log),
            w(&m.stats().slots) + w(&m.stats().log),
            h(&m.stats().slots) + h(&m.stats().log),
        )
    }

    #[test]
    fn a_second_read_of_the_same_keys_is_answered_from_the_cache() {
        let d = tempdir("hits");
        let cache = Arc::new(Mutex::new(BlockCache::new(1024)));
        let mut m = DiskMap::with_cache(&d, "test map", 100, cache).unwrap();
        for i in 0..100u32 {
            m.insert(format!("key{i}").as_bytes(), &[7u8; 20]).unwrap();
        }
        assert!(m.log.written() > 0, "the tail was written out");
        for i in 0..100u32 {
            assert!(m.contains(format!("key{i}").as_bytes()).unwrap());
        }
        let (reads, _, hits) = io_of(&m);
        for i in 0..100u32 {
            let v = m.get(format!("key{i}").as_bytes()).unwrap();
            assert_eq!(v, Some(vec![7u8; 20]));
        }
        let (again, _, more_hits) = io_of(&m);
        assert_eq!(again, reads, "no read of a file the second time");
        assert!(more_hits > hits);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_cache_stays_within_its_budget_and_answers_right_while_evicting() {
        let d = tempdir("evict");
        let cache = Arc::new(Mutex::new(BlockCache::new(4)));
        let mut m = DiskMap::with_cache(&d, "test map", 0, cache.clone()).unwrap();
        for i in 0..2000u32 {
            m.insert(&i.to_le_bytes(), format!("value {i}").as_bytes())
                .unwrap();
            if i % 7 == 0 {
                assert!(
                    m.overwrite(
                        &(i / 2).to_le_bytes(),
                        format!("VALUE {}", i / 2).as_bytes()
                    )
                    .unwrap()
                        || format!("value {}", i / 2).len() != format!("VALUE {}", i / 2).len()
                );
            }
        }
        for i in (0..2000u32).rev() {
            let v = m.get(&i.to_le_bytes()).unwrap().unwrap();
            let lower = String::from_utf8(v).unwrap().to_lowercase();
            assert_eq!(lower, format!("value {i}"));
            assert!(lock(&cache).held() <= 4);
        }
        assert_eq!(
            lock(&cache).frames.len(),
            4,
            "frames are reused, never more"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn writes_reach_the_blocks_the_cache_holds() {
        let d = tempdir("through");
        let cache = Arc::new(Mutex::new(BlockCache::new(1024)));
        let mut m = DiskMap::with_cache(&d, "test map", 100, cache).unwrap();
        for i in 0..50u8 {
            m.insert(&[i], &[i; 30]).unwrap();
        }
        // Every block of both files is cached now.
        assert_eq!(all(&m).len(), 50);
        for i in 0..50u8 {
            m.get(&[i]).unwrap();
        }
        let (reads, _, _) = io_of(&m);
        assert!(m.overwrite(&[3], &[33; 30]).unwrap());
        m.insert(&[4], b"four").unwrap();
        assert!(m.remove(&[5]).unwrap());
        assert_eq!(m.get(&[3]).unwrap(), Some(vec![33; 30]));
        assert_eq!(m.get(&[4]).unwrap(), Some(b"four".to_vec()));
        assert_eq!(m.get(&[5]).unwrap(), None);
        assert_eq!(m.get(&[0]).unwrap(), Some(vec![0; 30]));
        let (after, _, _) = io_of(&m);
        assert_eq!(after, reads, "answered from the cache, and right");
        let items = all(&m);
        assert_eq!(items.len(), 49);
        assert_eq!(items.last().unwrap(), &(vec![4], b"four".to_vec()));
        assert!(items.contains(&(vec![3], vec![33; 30])));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn records_in_the_tail_are_read_overwritten_removed_and_walked() {
        let d = tempdir("tail");
        let mut m = DiskMap::new(&d, "test map", 0).unwrap();
        m.insert(b"a", b"11").unwrap();
        m.insert(b"b", b"22").unwrap();
        m.insert(b"a", b"33").unwrap();
        assert!(m.overwrite(b"b", b"44").unwrap());
        assert!(m.remove(b"a").unwrap());
        m.insert(b"c", b"55").unwrap();
        assert_eq!(
            m.stats().log.writes.load(Ordering::Relaxed),
            0,
            "all in the tail"
        );
        assert_eq!(m.get(b"b").unwrap(), Some(b"44".to_vec()));
        assert_eq!(m.get(b"a").unwrap(), None);
        assert_eq!(
            all(&m),
            vec![
                (b"b".to_vec(), b"44".to_vec()),
                (b"c".to_vec(), b"55".to_vec())
            ]
        );
        // Past the tail's size: written out in one go, and read back from the file.
        m.insert(b"d", &[9u8; TAIL_BYTES]).unwrap();
        assert_eq!(m.stats().log.writes.load(Ordering::Relaxed), 1);
        assert!(m.log.tail.as_ref().unwrap().bytes.is_empty());
        assert!(m.overwrite(b"c", b"66").unwrap());
        assert_eq!(m.get(b"c").unwrap(), Some(b"66".to_vec()));
        assert_eq!(m.get(b"d").unwrap(), Some(vec![9u8; TAIL_BYTES]));
        assert_eq!(all(&m).len(), 3);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn reads_after_rebuilds_and_compaction_see_the_new_files_only() {
        let d = tempdir("replaced");
        let cache = Arc::new(Mutex::new(BlockCache::new(64)));
        let mut m = DiskMap::with_cache(&d, "test map", 0, cache.clone()).unwrap();
        m.compact_min_dead = 1024;
        for round in 0..6u32 {
            for i in 0..200u32 {
                m.insert(&i.to_le_bytes(), &(i + round).to_le_bytes())
                    .unwrap();
                if i % 3 == 0 {
                    m.get(&(i / 2).to_le_bytes()).unwrap();
                }
            }
        }
        let calls = |c: &AtomicU64| c.load(Ordering::Relaxed);
        assert!(calls(&m.stats().calls.rebuilds) > 0 && calls(&m.stats().calls.compactions) > 0);
        for i in 0..200u32 {
            assert_eq!(
                m.get(&i.to_le_bytes()).unwrap(),
                Some((i + 5).to_le_bytes().to_vec())
            );
        }
        let ids = [m.slots.id, m.log.id];
        assert!(
            lock(&cache).index.keys().all(|(id, _)| ids.contains(id)),
            "blocks of replaced files are gone"
        );
        drop(m);
        assert_eq!(
            lock(&cache).held(),
            0,
            "a dropped map leaves nothing cached"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_clock_evicts_what_was_not_read_since_it_last_passed() {
        let mut c = BlockCache::new(3);
        c.insert(1, 0, &[1; 10]);
        c.insert(1, 1, &[2; 10]);
        c.insert(1, 2, &[3; 10]);
        // One sweep clears the marks and takes block 0; block 1 is read again in between.
        c.insert(1, 3, &[4; 10]);
        let mut b = [0u8; 4];
        assert_eq!(c.read(1, 1, 0, &mut b), Some(4));
        c.insert(1, 4, &[5; 10]);
        assert_eq!(c.read(1, 0, 0, &mut b), None);
        assert_eq!(
            c.read(1, 1, 0, &mut b),
            Some(4),
            "read since the hand passed"
        );
        assert_eq!(c.read(1, 2, 0, &mut b), None);
        assert_eq!(c.held(), 3);
        // A short block (the file ended there) grows with a write at its end; a write past
        // its end (a gap) drops it.
        assert_eq!(c.read(1, 4, 8, &mut b), Some(2));
        c.update(1, 4 * BLOCK as u64 + 10, &[6; 2]);
        assert_eq!(c.read(1, 4, 8, &mut b), Some(4));
        assert_eq!(b, [5, 5, 6, 6]);
        c.update(1, 4 * BLOCK as u64 + 20, &[7]);
        assert_eq!(c.read(1, 4, 0, &mut b), None);
        c.forget(1, BLOCK as u64, 1);
        assert_eq!(c.read(1, 1, 0, &mut b), None);
        c.purge(1);
        assert_eq!(c.held(), 0);
        assert_eq!(c.frames.len(), 3);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn behaves_like_an_ordered_map(ops in proptest::collection::vec((0u8..4, 0u8..40, proptest::collection::vec(any::<u8>(), 0..300)), 1..400), frames in 0usize..6) {
            let d = tempdir("prop");
            let cache = Arc::new(Mutex::new(BlockCache::new(frames)));
            let mut m = DiskMap::with_cache(&d, "test map", 0, cache).unwrap();
            m.compact_min_dead = 2048;
            let mut model: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            for (op, k, v) in ops {
                let key = vec![k; (k % 5) as usize + 1];
                let pos = model.iter().position(|(mk, _)| *mk == key);
                match op {
                    0 | 1 => {
                        m.insert(&key, &v).unwrap();
                        if let Some(p) = pos { model.remove(p); }
                        model.push((key.clone(), v));
                    }
                    2 => {
                        let same = pos.filter(|&p| model[p].1.len() == v.len());
                        prop_assert_eq!(m.overwrite(&key, &v).unwrap(), same.is_some());
                        if let Some(p) = same { model[p].1 = v; }
                    }
                    _ => {
                        prop_assert_eq!(m.remove(&key).unwrap(), pos.is_some());
                        if let Some(p) = pos { model.remove(p); }
                    }
                }
                prop_assert_eq!(m.get(&key).unwrap(), model.iter().find(|(mk, _)| *mk == key).map(|(_, v)| v.clone()));
            }
            prop_assert_eq!(m.len() as usize, model.len());
            prop_assert_eq!(all(&m), model);
            std::fs::remove_dir_all(&d).unwrap();
        }
    }
}
