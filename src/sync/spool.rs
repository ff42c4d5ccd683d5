//! Directory entries spooled to a scratch file, to be read back in the same order: the
//! full pass's scope scan reads each in-scope user once, with every mapped attribute, and
//! writes it here; the users' phase maps them from here instead of reading the directory a
//! second time ([`crate::sync::pass`]).
//!
//! Records: `u32 length (LE) | bytes` for the DN, `u32` attribute count, then per attribute
//! its name and `u32` value count, then each value, all length-prefixed the same way. An
//! entry read back equals the one written ([`Entry`]'s names are lower-cased already, its
//! values raw bytes).
//!
//! Memory: a write buffer and the record being written, then a read buffer and the entry
//! being read. The file is created
//! 0600 in the given directory ([`crate::state_dir::options`]) and unlinked at once, so a
//! crash leaves nothing behind. A write or read error is returned, never a shorter list.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::ldap::Entry;

/// Bytes buffered by the writer and the reader.
const BUFFER: usize = 64 << 10;

/// A spool being written.
pub struct Spool {
    out: BufWriter<File>,
    /// The record being encoded (kept: its capacity is reused).
    record: Vec<u8>,
    entries: u64,
    #[cfg(not(unix))]
    path: std::path::PathBuf,
}

/// A spool being read back, from its first entry.
pub struct Replay {
    input: BufReader<File>,
    left: u64,
    #[cfg(not(unix))]
    path: std::path::PathBuf,
}

fn open(dir: &Path) -> io::Result<(File, std::path::PathBuf)> {
    crate::state_dir::scratch_file(dir, "entry spool").map_err(|e| named(dir, e))
}

fn named(dir: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("entry spool in {}: {e}", dir.display()))
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) -> io::Result<()> {
    let n = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a value of 4 GiB or more"))?;
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

fn count(input: &mut impl Read) -> io::Result<u32> {
    let mut n = [0u8; 4];
    input.read_exact(&mut n)?;
    Ok(u32::from_le_bytes(n))
}

fn take(input: &mut impl Read) -> io::Result<Vec<u8>> {
    let n = count(input)? as usize;
    let mut v = vec![0u8; n];
    input.read_exact(&mut v)?;
    Ok(v)
}

fn text(v: Vec<u8>) -> io::Result<String> {
    String::from_utf8(v)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "entry spool: a damaged record"))
}

impl Spool {
    /// A new, empty spool in `dir`, else (a missing or read-only state directory, in a
    /// command that only reads) in the system's temporary directory; the error is `dir`'s.
    pub fn new(dir: &Path) -> io::Result<Spool> {
        let (file, _path) = open(dir).or_else(|e| open(&std::env::temp_dir()).map_err(|_| e))?;
        Ok(Spool {
            out: BufWriter::with_capacity(BUFFER, file),
            record: Vec::new(),
            entries: 0,
            #[cfg(not(unix))]
            path: _path,
        })
    }

    /// Appends `entry` (encoded whole first: one write a record, not one a field).
    pub fn push(&mut self, entry: &Entry) -> io::Result<()> {
        let rec = &mut self.record;
        rec.clear();
        put(rec, entry.dn.as_bytes())?;
        let attrs = entry.attributes().count() as u32;
        rec.extend_from_slice(&attrs.to_le_bytes());
        for (name, values) in entry.attributes() {
            put(rec, name.as_bytes())?;
            rec.extend_from_slice(&(values.len() as u32).to_le_bytes());
            for v in values {
                put(rec, v)?;
            }
        }
        self.out.write_all(rec)?;
        self.entries += 1;
        Ok(())
    }

    /// Entries written.
    pub fn len(&self) -> u64 {
        self.entries
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Ends writing; the entries are read back from the first.
    pub fn replay(self) -> io::Result<Replay> {
        let left = self.entries;
        #[cfg(not(unix))]
        let path = self.path.clone();
        let mut file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        Ok(Replay {
            input: BufReader::with_capacity(BUFFER, file),
            left,
            #[cfg(not(unix))]
            path,
        })
    }
}

impl Replay {
    /// The next entry, `None` after the last one written.
    pub fn next_entry(&mut self) -> io::Result<Option<Entry>> {
        if self.left == 0 {
            return Ok(None);
        }
        let input = &mut self.input;
        let mut entry = Entry::new(text(take(input)?)?);
        for _ in 0..count(input)? {
            let name = text(take(input)?)?;
            let n = count(input)? as usize;
            let mut values = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                values.push(take(input)?);
            }
            entry.add_all(&name, values);
        }
        self.left -= 1;
        Ok(Some(entry))
    }
}

#[cfg(not(unix))]
impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(not(unix))]
impl Drop for Replay {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_back_equal_and_in_order() {
        let dir = std::env::temp_dir().join(format!("idrelay-spool-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let written = vec![
            Entry::new("uid=ann,ou=p,dc=x")
                .with("objectClass", "inetOrgPerson")
                .with("objectClass", "person")
                .with("entryUUID", "1")
                .with("manager", "uid=zed,ou=p,dc=x"),
            Entry::new("cn=Ünïcode,ou=p,dc=x")
                .with("objectGUID", vec![0u8, 255, 10, 13])
                .with("description", ""),
            Entry::new("uid=bare,ou=p,dc=x"),
        ];
        let mut s = Spool::new(&dir).unwrap();
        for e in &written {
            s.push(e).unwrap();
        }
        assert_eq!(s.len(), 3);
        // Unlinked at once: nothing left in the directory.
        #[cfg(unix)]
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        let mut r = s.replay().unwrap();
        let mut read = Vec::new();
        while let Some(e) = r.next_entry().unwrap() {
            read.push(e);
        }
        assert_eq!(read, written);
        assert!(r.next_entry().unwrap().is_none());
        let _ = std::fs::remove_dir(&dir);
    }

    #[test]
    fn an_empty_spool_replays_nothing() {
        let s = Spool::new(&std::env::temp_dir()).unwrap();
        assert!(s.is_empty());
        assert!(s.replay().unwrap().next_entry().unwrap().is_none());
    }
}
