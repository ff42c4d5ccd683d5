//! A map from byte keys to byte values kept in two scratch files, so that the memory it
//! takes does not grow with the number of entries.
//!
//! Owns what would otherwise grow with the directory: the anchor index's working copy and
//! a full pass's scope map. The process holds a few small buffers per call; the entries live
//! in the files and so in the kernel's page cache, which is not the process's memory and is
//! given back under pressure (a 150,000-object directory is ~30 MiB of such files).
//!
//! # Files
//! Both are created in a directory the caller names (the state directory: the only place a
//! sandboxed service may write), mode 0600, and on Unix unlinked as soon as they are open:
//! they vanish when the map is dropped or the process dies, even by `kill -9`, and no other
//! process ever reads them, so their layout has no version and no checksum. (Elsewhere
//! they are removed on drop.)
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
//! # Errors
//! Every call that touches a file returns `io::Result`, and an error names the map's
//! directory. A failed append changes nothing. A write that fails after the record went in
//! (a slot, a DEAD mark, a rebuild) leaves the map in an unknown state: it is then
//! *broken*, and every later call fails with an error that says so. Owners treat a broken
//! map as lost (the anchor index reloads its last saved file; a pass stops).
//!
//! Limits: keys and values under 2 GiB each. Reads take `&self` and use positioned reads,
//! so any number may run at once; writes take `&mut self`. Costs: a lookup is one or two
//! positioned reads of the slot file (8 slots each) and one of the log; an insert adds two
//! writes (three when it replaces a key).

use std::collections::hash_map::RandomState;
use std::fs::File;
use std::hash::BuildHasher;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const SLOT: u64 = 16;
const EMPTY: u64 = 0;
const REMOVED: u64 = u64::MAX;
const DEAD: u32 = 1 << 31;
const HEADER: usize = 8;
/// Slots read per positioned read while probing.
const PROBE_BATCH: u64 = 8;
/// Dead log bytes tolerated before a compaction is considered at all.
pub const COMPACT_MIN_DEAD: u64 = 1 << 20;
/// Bytes read at once when a record's size is not known yet, and when walking the log.
const READ_AHEAD: usize = 256;
const WALK_CHUNK: usize = 64 * 1024;

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

impl std::fmt::Debug for DiskMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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

/// Where a key is, or where it would go.
struct Probe {
    /// The slot holding the key and its record's log offset, if present.
    found: Option<(u64, u64)>,
    /// The first free slot (removed or empty) met on the way.
    free: u64,
    /// Whether that slot is empty (not a removed mark): filling it uses one more slot.
    free_empty: bool,
}

impl DiskMap {
    /// An empty map whose files live in `dir`; `name` tells them (and errors) apart.
    /// `capacity` is a hint: the number of entries expected (the table then needs no
    /// rebuild until past it).
    pub fn new(dir: &Path, name: &'static str, capacity: u64) -> io::Result<DiskMap> {
        let n = (capacity.saturating_mul(2)).max(64).next_power_of_two();
        let slots = Scratch::create(dir, name, "slots")?;
        slots
            .file
            .set_len(n * SLOT)
            .map_err(|e| named(dir, name, e))?;
        let log = Scratch::create(dir, name, "log")?;
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
        let h = self.hash(key);
        match self.probe(h, key).map_err(|e| self.err(e))?.found {
            Some((_, off)) => {
                let (_, value, _) = self.read_record(off).map_err(|e| self.err(e))?;
                Ok(Some(value))
            }
            None => Ok(None),
        }
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &[u8]) -> io::Result<bool> {
        self.usable()?;
        let h = self.hash(key);
        Ok(self.probe(h, key).map_err(|e| self.err(e))?.found.is_some())
    }

    /// Sets `key` to `value` (replacing any value); the entry becomes the last in
    /// iteration order.
    pub fn insert(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.usable()?;
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
        write_all_at(&self.log.file, &rec, off).map_err(|e| self.err(e))?;
        let slot = probe.found.map_or(probe.free, |(s, _)| s);
        self.guard(|m| {
            write_slot(&m.slots.file, slot, h, off + 1)?;
            if let Some((_, old)) = probe.found {
                m.mark_dead(old)?;
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
        let h = self.hash(key);
        let Some((_, off)) = self.probe(h, key).map_err(|e| self.err(e))?.found else {
            return Ok(false);
        };
        let mut head = [0u8; HEADER];
        read_exact_at(&self.log.file, &mut head, off).map_err(|e| self.err(e))?;
        let (klen, vlen, _) = header(&head);
        if vlen != value.len() {
            return Ok(false);
        }
        self.guard(|m| write_all_at(&m.log.file, value, off + (HEADER + klen) as u64))?;
        Ok(true)
    }

    /// Removes `key`; whether it was present.
    pub fn remove(&mut self, key: &[u8]) -> io::Result<bool> {
        self.usable()?;
        let h = self.hash(key);
        let Some((slot, off)) = self.probe(h, key).map_err(|e| self.err(e))?.found else {
            return Ok(false);
        };
        self.guard(|m| {
            write_slot(&m.slots.file, slot, h, REMOVED)?;
            m.mark_dead(off)
        })?;
        self.live -= 1;
        self.maybe_compact()?;
        Ok(true)
    }

    /// Every entry, in the order they were last written. An error ends the walk (the
    /// iterator yields it and then nothing).
    pub fn iter(&self) -> Walk<'_> {
        Walk {
            map: self,
            pos: 0,
            buf: Vec::new(),
            buf_at: 0,
            failed: false,
            start_error: self.usable().err(),
        }
    }

    fn usable(&self) -> io::Result<()> {
        if self.broken {
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
            read_exact_at(&self.slots.file, bytes, i * SLOT)?;
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
                        let (k2, _, _) = self.read_record(so - 1)?;
                        if k2 == key {
                            return Ok(Probe {
                                found: Some((at, so - 1)),
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

    /// The record at `off`: key, value and whether it is dead.
    fn read_record(&self, off: u64) -> io::Result<(Vec<u8>, Vec<u8>, bool)> {
        let mut head = [0u8; READ_AHEAD];
        let got = read_at_most(&self.log.file, &mut head, off)?;
        if got < HEADER {
            return Err(corrupt(off));
        }
        let (klen, vlen, dead) = header(&head[..HEADER]);
        let total = HEADER + klen + vlen;
        if off + total as u64 > self.log_end {
            return Err(corrupt(off));
        }
        let mut rec = Vec::with_capacity(total);
        rec.extend_from_slice(&head[..got.min(total)]);
        if rec.len() < total {
            let have = rec.len();
            rec.resize(total, 0);
            read_exact_at(&self.log.file, &mut rec[have..], off + have as u64)?;
        }
        let value = rec[HEADER + klen..].to_vec();
        rec.truncate(HEADER + klen);
        rec.drain(..HEADER);
        Ok((rec, value, dead))
    }

    fn mark_dead(&mut self, off: u64) -> io::Result<()> {
        let mut head = [0u8; HEADER];
        read_exact_at(&self.log.file, &mut head, off)?;
        let (klen, vlen, _) = header(&head);
        write_all_at(&self.log.file, &((klen as u32) | DEAD).to_le_bytes(), off)?;
        let size = (HEADER + klen + vlen) as u64;
        self.live_bytes -= size;
        self.dead_bytes += size;
        Ok(())
    }

    /// A fresh slot table of `size` slots holding the live entries.
    fn rebuild(&mut self, size: u64) -> io::Result<()> {
        let fresh = Scratch::create(&self.dir, self.name, "slots")?;
        fresh.file.set_len(size * SLOT)?;
        let mut chunk = vec![0u8; WALK_CHUNK];
        let mut at = 0u64;
        let total = self.n * SLOT;
        while at < total {
            let len = (WALK_CHUNK as u64).min(total - at) as usize;
            read_exact_at(&self.slots.file, &mut chunk[..len], at)?;
            for s in chunk[..len].chunks_exact(SLOT as usize) {
                let h = u64::from_le_bytes(s[..8].try_into().expect("8 bytes"));
                let o = u64::from_le_bytes(s[8..].try_into().expect("8 bytes"));
                if o != EMPTY && o != REMOVED {
                    place(&fresh.file, size, h, o)?;
                }
            }
            at += len as u64;
        }
        self.slots = fresh;
        self.n = size;
        self.used = self.live;
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
        let log = Scratch::create(&self.dir, self.name, "log")?;
        let slots = Scratch::create(&self.dir, self.name, "slots")?;
        slots.file.set_len(self.n * SLOT)?;
        let mut out = Vec::with_capacity(WALK_CHUNK);
        let mut end = 0u64;
        for item in self.iter() {
            let (key, value) = item?;
            let off = end + out.len() as u64;
            push_record(&mut out, &key, &value);
            place(&slots.file, self.n, self.hash(&key), off + 1)?;
            if out.len() >= WALK_CHUNK {
                write_all_at(&log.file, &out, end)?;
                end += out.len() as u64;
                out.clear();
            }
        }
        write_all_at(&log.file, &out, end)?;
        end += out.len() as u64;
        self.log = log;
        self.slots = slots;
        self.used = self.live;
        self.log_end = end;
        self.live_bytes = end;
        self.dead_bytes = 0;
        Ok(())
    }
}

/// Puts (`h`, `off`) into the first empty slot from its home in a table of `size` slots
/// that does not hold its key yet.
fn place(file: &File, size: u64, h: u64, off: u64) -> io::Result<()> {
    let mask = size - 1;
    let mut i = h & mask;
    loop {
        let mut cur = [0u8; SLOT as usize];
        read_exact_at(file, &mut cur, i * SLOT)?;
        if u64::from_le_bytes(cur[8..].try_into().expect("8 bytes")) == EMPTY {
            return write_slot(file, i, h, off);
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
        read_exact_at(&self.map.log.file, &mut self.buf, self.pos)?;
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

fn write_slot(file: &File, slot: u64, h: u64, off: u64) -> io::Result<()> {
    let mut s = [0u8; SLOT as usize];
    s[..8].copy_from_slice(&h.to_le_bytes());
    s[8..].copy_from_slice(&off.to_le_bytes());
    write_all_at(file, &s, slot * SLOT)
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

/// One scratch file: unlinked at once on Unix, removed on drop elsewhere.
struct Scratch {
    file: File,
    #[cfg(not(unix))]
    path: PathBuf,
}

impl Scratch {
    fn create(dir: &Path, name: &str, what: &str) -> io::Result<Scratch> {
        let n = NEXT_FILE.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(".{name}.{}.{n}.{what}", std::process::id()));
        let file = crate::state_dir::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| named(dir, name, e))?;
        #[cfg(unix)]
        {
            std::fs::remove_file(&path).map_err(|e| named(dir, name, e))?;
            Ok(Scratch { file })
        }
        #[cfg(not(unix))]
        {
            Ok(Scratch { file, path })
        }
    }
}

#[cfg(not(unix))]
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
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

fn read_exact_at(f: &File, buf: &mut [u8], off: u64) -> io::Result<()> {
    if read_at_most(f, buf, off)? < buf.len() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("scratch file shorter than expected at byte {off}"),
        ));
    }
    Ok(())
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

    #[cfg(target_os = "linux")]
    #[test]
    fn a_full_disk_is_an_error_not_a_panic() {
        // /dev/full takes no byte: every write fails with ENOSPC.
        let Ok(full) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/full")
        else {
            return;
        };
        let d = tempdir("full");
        let mut m = DiskMap::new(&d, "test map", 0).unwrap();
        m.insert(b"a", b"1").unwrap();
        m.log = Scratch { file: full };
        let e = m.insert(b"b", b"2").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull, "{e}");
        assert!(!m.broken, "a failed append changes nothing");
        std::fs::remove_dir_all(&d).unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn behaves_like_an_ordered_map(ops in proptest::collection::vec((0u8..3, 0u8..40, proptest::collection::vec(any::<u8>(), 0..300)), 1..400)) {
            let d = tempdir("prop");
            let mut m = DiskMap::new(&d, "test map", 0).unwrap();
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
