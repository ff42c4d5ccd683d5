//! Sorted, de-duplicated lists of strings on disk: an external sort for lists too long to
//! hold in memory (the SCIM ids of a million-member group).
//!
//! [`Runs`] takes strings in sorted chunks ([`Runs::write_run`]: one *run*, written to an
//! unlinked scratch file); [`Runs::merge`] merges the runs into one [`SortedFile`]: every
//! string once, ascending by bytes, stored as records `u32 length (LE) | bytes`, with the
//! offset of every [`STRIDE`]th record kept in memory, so that reading from position `i`
//! seeks there and skips fewer than `STRIDE` records.
//!
//! Memory: one read buffer per run while merging (runs are written by the caller from a
//! bounded buffer), then 8 bytes per `STRIDE` strings. Files are created 0600 in the given
//! directory ([`crate::state_dir::options`]) and unlinked at once, so a crash leaves
//! nothing behind.
//!
//! Failures are never a shorter list: a read error is returned by [`Reader`], and the
//! caller of an iterator that cannot return errors checks [`SortedFile::failed`] before it
//! trusts what it read.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Records between two indexed offsets.
pub const STRIDE: u64 = 512;
/// Bytes a reader fetches at once.
const BLOCK: usize = 32 << 10;

/// One unlinked scratch file.
#[derive(Debug)]
struct Scratch {
    file: File,
    #[cfg(not(unix))]
    path: PathBuf,
}

impl Scratch {
    fn create(dir: &Path) -> io::Result<Scratch> {
        let (file, _path) = crate::state_dir::scratch_file(dir, "sorted")?;
        Ok(Scratch {
            file,
            #[cfg(not(unix))]
            path: _path,
        })
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

/// Writes records to a scratch file.
struct Writer {
    out: BufWriter<File>,
    scratch: Scratch,
    len: u64,
    bytes: u64,
    index: Vec<u64>,
}

impl Writer {
    fn new(dir: &Path) -> io::Result<Writer> {
        let scratch = Scratch::create(dir)?;
        let out = BufWriter::with_capacity(BLOCK, scratch.file.try_clone()?);
        Ok(Writer {
            out,
            scratch,
            len: 0,
            bytes: 0,
            index: Vec::new(),
        })
    }

    fn push(&mut self, s: &str) -> io::Result<()> {
        let n = u32::try_from(s.len()).map_err(|_| io::Error::other("string over 4 GiB"))?;
        if self.len.is_multiple_of(STRIDE) {
            self.index.push(self.bytes);
        }
        self.out.write_all(&n.to_le_bytes())?;
        self.out.write_all(s.as_bytes())?;
        self.len += 1;
        self.bytes += 4 + u64::from(n);
        Ok(())
    }

    fn finish(mut self) -> io::Result<SortedFile> {
        self.out.flush()?;
        Ok(SortedFile {
            scratch: self.scratch,
            len: self.len,
            bytes: self.bytes,
            index: self.index,
            failed: AtomicBool::new(false),
        })
    }
}

/// Sorted runs waiting to be merged.
#[derive(Debug)]
pub struct Runs {
    dir: PathBuf,
    runs: Vec<SortedFile>,
}

impl Runs {
    /// No runs yet; scratch files go to `dir`.
    pub fn new(dir: &Path) -> Runs {
        Runs {
            dir: dir.to_path_buf(),
            runs: Vec::new(),
        }
    }

    /// Runs written so far.
    pub fn len(&self) -> usize {
        self.runs.len()
    }

    /// No run written.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Writes `sorted` (ascending by bytes; duplicates allowed) as one run.
    pub fn write_run<'a>(&mut self, sorted: impl IntoIterator<Item = &'a str>) -> io::Result<()> {
        let mut w = Writer::new(&self.dir)?;
        for s in sorted {
            w.push(s)?;
        }
        self.runs.push(w.finish()?);
        Ok(())
    }

    /// Merges every run into one sorted list, each string once.
    pub fn merge(self) -> io::Result<SortedFile> {
        let mut out = Writer::new(&self.dir)?;
        let mut readers: Vec<Reader<'_>> = self.runs.iter().map(|r| r.reader(0)).collect();
        let mut heap = BinaryHeap::new();
        for (i, r) in readers.iter_mut().enumerate() {
            if let Some(s) = r.next().transpose()? {
                heap.push(Reverse((s, i)));
            }
        }
        let mut last: Option<String> = None;
        while let Some(Reverse((s, i))) = heap.pop() {
            if let Some(next) = readers[i].next().transpose()? {
                heap.push(Reverse((next, i)));
            }
            if last.as_deref() != Some(s.as_str()) {
                out.push(&s)?;
                last = Some(s);
            }
        }
        out.finish()
    }
}

/// A sorted list of unique strings in an unlinked scratch file (see the module doc).
#[derive(Debug)]
pub struct SortedFile {
    scratch: Scratch,
    len: u64,
    bytes: u64,
    index: Vec<u64>,
    failed: AtomicBool,
}

impl SortedFile {
    /// How many strings.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// No strings.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The strings from position `start` on, ascending.
    pub fn reader(&self, start: u64) -> Reader<'_> {
        let start = start.min(self.len);
        let block = start / STRIDE;
        let off = self
            .index
            .get(block as usize)
            .copied()
            .unwrap_or(self.bytes);
        Reader {
            file: self,
            off,
            buf: Vec::new(),
            pos: 0,
            skip: start - block * STRIDE,
            left: self.len - block * STRIDE,
        }
    }

    /// Notes that a read of this file failed (for iterators that cannot return errors).
    pub fn note_failure(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }

    /// Whether some read of this file failed: what was read from it is not to be trusted.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
}

/// Reads a [`SortedFile`] in order; yields exactly the strings from its start position to
/// the end, or an error.
#[derive(Debug)]
pub struct Reader<'a> {
    file: &'a SortedFile,
    /// File offset of `buf[0]`'s successor block.
    off: u64,
    buf: Vec<u8>,
    pos: usize,
    /// Records still to be skipped before the first one yielded.
    skip: u64,
    /// Records left in the file from the current position.
    left: u64,
}

impl Reader<'_> {
    /// Makes at least `n` bytes available at `buf[pos..]`.
    fn fill(&mut self, n: usize) -> io::Result<()> {
        while self.buf.len() - self.pos < n {
            self.buf.drain(..self.pos);
            self.pos = 0;
            let have = self.buf.len();
            let want = BLOCK.max(n - have);
            self.buf.resize(have + want, 0);
            let got = read_at(&self.file.scratch.file, &mut self.buf[have..], self.off)?;
            self.buf.truncate(have + got);
            self.off += got as u64;
            if got == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "sorted scratch file shorter than written",
                ));
            }
        }
        Ok(())
    }

    fn record(&mut self) -> io::Result<String> {
        self.fill(4)?;
        let mut n = [0u8; 4];
        n.copy_from_slice(&self.buf[self.pos..self.pos + 4]);
        let n = u32::from_le_bytes(n) as usize;
        self.pos += 4;
        self.fill(n)?;
        let s = std::str::from_utf8(&self.buf[self.pos..self.pos + n])
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "sorted scratch file damaged"))?
            .to_string();
        self.pos += n;
        self.left -= 1;
        Ok(s)
    }
}

impl Iterator for Reader<'_> {
    type Item = io::Result<String>;

    fn next(&mut self) -> Option<io::Result<String>> {
        while self.skip > 0 {
            self.skip -= 1;
            if let Err(e) = self.record() {
                self.left = 0;
                return Some(Err(e));
            }
        }
        if self.left == 0 {
            return None;
        }
        let r = self.record();
        if r.is_err() {
            self.left = 0;
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(chunks: &[&[&str]]) -> SortedFile {
        let mut r = Runs::new(&std::env::temp_dir());
        for c in chunks {
            let mut v = c.to_vec();
            v.sort_unstable();
            r.write_run(v).unwrap();
        }
        r.merge().unwrap()
    }

    fn all(f: &SortedFile, from: u64) -> Vec<String> {
        f.reader(from).collect::<io::Result<_>>().unwrap()
    }

    #[test]
    fn runs_merge_into_one_sorted_list_without_duplicates() {
        let f = runs(&[&["b", "d", "a"], &["c", "a", "ü"], &[], &["", "d"]]);
        assert_eq!(all(&f, 0), ["", "a", "b", "c", "d", "ü"]);
        assert_eq!(f.len(), 6);
        assert_eq!(all(&f, 4), ["d", "ü"]);
        assert!(all(&f, 6).is_empty() && all(&f, 99).is_empty());
        assert!(!f.failed());
    }

    #[test]
    fn reading_from_any_position_across_strides() {
        let ids: Vec<String> = (0..(3 * STRIDE + 7)).map(|i| format!("id{i:06}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let (a, b) = refs.split_at(1000);
        let f = runs(&[b, a]);
        assert_eq!(f.len(), ids.len() as u64);
        for start in [
            0,
            1,
            STRIDE - 1,
            STRIDE,
            STRIDE + 1,
            2 * STRIDE + 5,
            f.len() - 1,
        ] {
            assert_eq!(all(&f, start), ids[start as usize..], "from {start}");
        }
    }
}
