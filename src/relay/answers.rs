//! The agent's answers to hub requests, kept so that a re-delivered request is answered
//! again and never run a second time (docs/protocol.md, "Envelope").
//!
//! Two layers, both keyed by request id and bounded by count and bytes, oldest dropped
//! first:
//! * [`ReplyCache`], in memory: every answer of this process (reads included), up to
//!   [`CACHE_COUNT`] answers and [`CACHE_BYTES`] of bodies;
//! * [`ReplyStore`], on disk in `state_dir/relay-replies/`: the answers to requests with an
//!   effect (commands and SCIM writes), up to [`STORE_COUNT`] files and [`STORE_BYTES`].
//!   It outlives a reload (SIGHUP, or the one `set-profile` asks for) and a restart, which
//!   is when the hub re-delivers what it did not see answered. A read is not stored: running
//!   it again does nothing, and list answers may be megabytes.
//!
//! Disk rules: one file per answer, `<id>.json` (ids are `[A-Za-z0-9._-]{1,64}`, checked
//! before anything touches the disk); written to `.<id>.tmp` created new (never through an
//! existing file or symlink), mode 0600, synced, then renamed over the final name; the
//! directory is 0700. At open the directory is listed (no file is read) and the order of
//! age comes from the files' modification times. A file that cannot be read or parsed is an
//! answer never given: the request runs again (at-least-once is the floor, never less).
//! Nothing here logs a body.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use super::link::{valid_id, Reply};

/// Answers kept in memory.
pub const CACHE_COUNT: usize = 1000;
/// Bytes of answer bodies kept in memory.
pub const CACHE_BYTES: usize = 64 << 20;
/// Answers kept on disk.
pub const STORE_COUNT: usize = 1000;
/// Bytes of answers kept on disk.
pub const STORE_BYTES: usize = 16 << 20;
/// The store's directory inside the state directory.
pub const STORE_DIR: &str = "relay-replies";

/// The size of `r` as JSON, counted without building the text.
pub fn reply_bytes(r: &Reply) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, r);
    c.0
}

/// Remembers answers by id in memory (bounded by count and bytes, oldest evicted).
#[derive(Debug)]
pub struct ReplyCache {
    map: HashMap<String, (Reply, usize)>,
    order: VecDeque<String>,
    bytes: usize,
    max_count: usize,
    max_bytes: usize,
}

impl Default for ReplyCache {
    fn default() -> Self {
        ReplyCache::with_bounds(CACHE_COUNT, CACHE_BYTES)
    }
}

impl ReplyCache {
    /// An empty cache holding at most `max_count` answers and `max_bytes` of them.
    pub fn with_bounds(max_count: usize, max_bytes: usize) -> ReplyCache {
        ReplyCache {
            map: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            max_count,
            max_bytes,
        }
    }

    /// The cached answer for `id`.
    pub fn get(&self, id: &str) -> Option<&Reply> {
        self.map.get(id).map(|(r, _)| r)
    }

    /// Remembers an answer (one larger than the whole byte bound is not kept).
    pub fn put(&mut self, r: Reply) {
        if self.map.contains_key(&r.id) {
            return;
        }
        let size = reply_bytes(&r);
        if size > self.max_bytes {
            return;
        }
        self.bytes += size;
        self.order.push_back(r.id.clone());
        self.map.insert(r.id.clone(), (r, size));
        while self.order.len() > self.max_count || self.bytes > self.max_bytes {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some((_, n)) = self.map.remove(&old) {
                self.bytes -= n;
            }
        }
    }

    /// Answers held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Why the store could not be opened.
#[derive(Debug)]
pub struct StoreError {
    /// The directory.
    pub dir: PathBuf,
    /// The OS error.
    pub source: std::io::Error,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "relay answers directory {}: {}",
            self.dir.display(),
            self.source
        )
    }
}

impl std::error::Error for StoreError {}

/// The answers to requests with an effect, on disk (see the module doc).
#[derive(Debug)]
pub struct ReplyStore {
    dir: PathBuf,
    /// (id, bytes on disk), oldest first.
    order: VecDeque<(String, usize)>,
    bytes: usize,
    max_count: usize,
    max_bytes: usize,
}

impl ReplyStore {
    /// Opens (creating) `state_dir/relay-replies/` with the default bounds.
    pub fn open(state_dir: &Path) -> Result<ReplyStore, StoreError> {
        ReplyStore::open_with(&state_dir.join(STORE_DIR), STORE_COUNT, STORE_BYTES)
    }

    /// Opens (creating) the store in `dir` holding at most `max_count` answers and
    /// `max_bytes`; drops what is over the bounds and leftover temporary files.
    pub fn open_with(
        dir: &Path,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<ReplyStore, StoreError> {
        let err = |source| StoreError {
            dir: dir.to_path_buf(),
            source,
        };
        create_private_dir(dir).map_err(err)?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(err)? {
            let entry = entry.map_err(err)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = entry.metadata() else { continue };
            if name.starts_with('.') && name.ends_with(".tmp") {
                // A write cut short: never an answer.
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            if !meta.file_type().is_file() || !valid_id(id) {
                continue;
            }
            let at = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
            found.push((at, id.to_string(), meta.len() as usize));
        }
        found.sort();
        let mut store = ReplyStore {
            dir: dir.to_path_buf(),
            order: VecDeque::new(),
            bytes: 0,
            max_count,
            max_bytes,
        };
        for (_, id, n) in found {
            store.bytes += n;
            store.order.push_back((id, n));
        }
        store.evict();
        Ok(store)
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Answers held.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The stored answer to `id`; `None` when there is none or it cannot be read.
    pub fn get(&self, id: &str) -> Option<Reply> {
        if !valid_id(id) || !self.order.iter().any(|(i, _)| i == id) {
            return None;
        }
        let path = self.path(id);
        let meta = std::fs::symlink_metadata(&path).ok()?;
        if !meta.file_type().is_file() {
            return None;
        }
        let bytes = std::fs::read(&path).ok()?;
        let r: Reply = serde_json::from_slice(&bytes).ok()?;
        (r.id == id).then_some(r)
    }

    /// Stores the answer `r` (atomically, 0600), dropping the oldest beyond the bounds. An
    /// invalid id or an answer larger than the whole byte bound is not stored.
    pub fn put(&mut self, r: &Reply) -> std::io::Result<()> {
        if !valid_id(&r.id) || self.order.iter().any(|(i, _)| *i == r.id) {
            return Ok(());
        }
        let text = serde_json::to_vec(r).map_err(std::io::Error::other)?;
        if text.len() > self.max_bytes {
            return Ok(());
        }
        let tmp = self.dir.join(format!(".{}.tmp", r.id));
        write_new_private(&tmp, &text)?;
        if let Err(e) = std::fs::rename(&tmp, self.path(&r.id)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        self.bytes += text.len();
        self.order.push_back((r.id.clone(), text.len()));
        self.evict();
        Ok(())
    }

    fn evict(&mut self) {
        while self.order.len() > self.max_count || self.bytes > self.max_bytes {
            let Some((id, n)) = self.order.pop_front() else {
                break;
            };
            self.bytes -= n;
            let _ = std::fs::remove_file(self.path(&id));
        }
    }
}

/// Creates `dir` (0700) unless it exists; an existing one gets 0700 too.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    match b.create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = std::fs::symlink_metadata(dir)?;
            if !meta.file_type().is_dir() {
                return Err(std::io::Error::other("not a directory"));
            }
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Writes `bytes` to a new file at `path` (0600, synced); a leftover file or symlink under
/// that name is removed first, never written through.
fn write_new_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let _ = std::fs::remove_file(path);
    let mut o = std::fs::File::options();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o.open(path)?;
    f.write_all(bytes)?;
    f.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn reply(id: &str, body: Value) -> Reply {
        Reply {
            id: id.into(),
            status: 200,
            body,
        }
    }

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "idrelay-answers-{tag}-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_cache_is_bounded_by_count() {
        let mut c = ReplyCache::with_bounds(10, 1 << 20);
        for i in 0..15 {
            c.put(reply(&format!("r{i}"), Value::Null));
        }
        assert!(c.get("r0").is_none());
        assert!(c.get("r14").is_some());
        assert_eq!(c.len(), 10);
    }

    #[test]
    fn the_cache_is_bounded_by_bytes_and_skips_an_answer_over_the_bound() {
        let mut c = ReplyCache::with_bounds(1000, 1000);
        let big = json!({"x": "a".repeat(300)});
        for i in 0..5 {
            c.put(reply(&format!("r{i}"), big.clone()));
        }
        assert!(c.bytes() <= 1000, "{}", c.bytes());
        assert_eq!(
            c.len(),
            2,
            "three answers of ~330 bytes fit in 1000, minus one"
        );
        assert!(c.get("r4").is_some() && c.get("r0").is_none());
        c.put(reply("huge", json!({"x": "a".repeat(2000)})));
        assert!(c.get("huge").is_none());
        assert!(c.get("r4").is_some(), "an oversized answer evicts nothing");
    }

    #[test]
    fn the_store_survives_a_reopen_and_stays_bounded() {
        let d = temp("reopen");
        let mut s = ReplyStore::open_with(&d, 3, 1 << 20).unwrap();
        for i in 0..5 {
            s.put(&reply(&format!("r-{i}"), json!({"accepted": i})))
                .unwrap();
            // Distinct modification times keep the age order on coarse clocks.
            std::thread::sleep(std::time::Duration::from_millis(15));
        }
        assert_eq!(s.len(), 3);
        let s = ReplyStore::open_with(&d, 3, 1 << 20).unwrap();
        assert!(s.get("r-0").is_none() && s.get("r-1").is_none());
        assert_eq!(s.get("r-4").unwrap().body["accepted"], 4);
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 3);
        // Reopened with a smaller bound: the oldest go.
        let s = ReplyStore::open_with(&d, 1, 1 << 20).unwrap();
        assert_eq!((s.len(), s.get("r-4").is_some()), (1, true));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_store_is_bounded_by_bytes() {
        let d = temp("bytes");
        let mut s = ReplyStore::open_with(&d, 100, 1000).unwrap();
        for i in 0..6 {
            s.put(&reply(&format!("b{i}"), json!({"x": "a".repeat(300)})))
                .unwrap();
        }
        assert!(
            s.bytes() <= 1000 && s.len() == 2,
            "{} {}",
            s.bytes(),
            s.len()
        );
        s.put(&reply("huge", json!({"x": "a".repeat(5000)})))
            .unwrap();
        assert!(s.get("huge").is_none());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[cfg(unix)]
    #[test]
    fn store_files_are_private_and_a_symlink_is_not_written_through() {
        use std::os::unix::fs::PermissionsExt;
        let d = temp("private");
        let mut s = ReplyStore::open_with(&d, 10, 1 << 20).unwrap();
        let outside = d.join("outside");
        std::fs::write(&outside, "keep").unwrap();
        std::os::unix::fs::symlink(&outside, d.join(".r1.tmp")).unwrap();
        s.put(&reply("r1", json!({"ok": true}))).unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep");
        let mode = std::fs::metadata(d.join("r1.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = std::fs::metadata(&d).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_damaged_or_foreign_file_is_no_answer() {
        let d = temp("damaged");
        let mut s = ReplyStore::open_with(&d, 10, 1 << 20).unwrap();
        s.put(&reply("r1", json!({"ok": true}))).unwrap();
        std::fs::write(d.join("r1.json"), b"{\"id\":\"r1\",\"sta").unwrap();
        std::fs::write(
            d.join("r2.json"),
            br#"{"id":"other","status":200,"body":null}"#,
        )
        .unwrap();
        std::fs::write(d.join(".r3.tmp"), b"half").unwrap();
        let s = ReplyStore::open_with(&d, 10, 1 << 20).unwrap();
        assert!(s.get("r1").is_none(), "cut short: run again");
        assert!(s.get("r2").is_none(), "a file naming another id");
        assert!(!d.join(".r3.tmp").exists(), "leftover temporary files go");
        let _ = std::fs::remove_dir_all(&d);
    }
}
