//! The disk seam: every change the queue makes to its directory goes through [`Disk`], so a
//! test can fail any one of them (a disk that fills up, a process that dies between two
//! steps) without a real full disk. Reads go straight to `std::fs`.
//!
//! Files are opened with [`crate::state_dir::options`] (created 0600, never through a
//! symlink): the one import of the crate the queue makes, so that every file of the state
//! directory follows one rule.
//!
//! Also the clock seam: record times come from a [`Clock`] so tests can set them.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use super::QueueError;

/// A kind of disk change, as shown to a [`FaultHook`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IoOp {
    /// Create (or truncate) a file.
    Create,
    /// Write bytes.
    Write,
    /// fdatasync a file.
    Sync,
    /// Truncate a file.
    SetLen,
    /// Rename a file.
    Rename,
    /// Remove a file.
    Remove,
    /// fsync the directory.
    SyncDir,
}

/// Test seam: asked before every disk change. `Err((n, e))` fails the change with `e`; for a
/// write, the first `n` bytes are written first (a short write, as a filling disk does).
pub(crate) trait FaultHook: Send {
    /// Decides whether `op` on `path` (of `len` bytes, for writes) goes through.
    fn admit(&mut self, op: IoOp, path: &Path, len: usize) -> Result<(), (usize, io::Error)>;
}

/// Returns unix milliseconds; the queue stamps records with it.
pub(crate) type Clock = Box<dyn Fn() -> u64 + Send>;

/// The system clock as unix milliseconds (0 before 1970).
pub(crate) fn system_clock() -> Clock {
    Box::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    })
}

/// Wraps an I/O error with the operation and file; disk-full becomes [`QueueError::DiskFull`].
pub(crate) fn io_err(op: &'static str, path: &Path, e: io::Error) -> QueueError {
    if crate::state_dir::is_disk_full(&e) {
        QueueError::DiskFull {
            path: path.to_path_buf(),
        }
    } else {
        QueueError::Io {
            op,
            path: path.to_path_buf(),
            source: e,
        }
    }
}

/// The queue's only way to change files.
pub(crate) struct Disk {
    hook: Option<Box<dyn FaultHook>>,
}

impl Disk {
    /// The real disk.
    pub(crate) fn real() -> Disk {
        Disk { hook: None }
    }

    /// A disk whose changes are first shown to `hook`.
    #[cfg(test)]
    pub(crate) fn with_hook(hook: Box<dyn FaultHook>) -> Disk {
        Disk { hook: Some(hook) }
    }

    fn admit(&mut self, op: IoOp, path: &Path, len: usize) -> Result<(), (usize, io::Error)> {
        match &mut self.hook {
            Some(h) => h.admit(op, path, len),
            None => Ok(()),
        }
    }

    fn gate(&mut self, op: IoOp, name: &'static str, path: &Path) -> Result<(), QueueError> {
        self.admit(op, path, 0)
            .map_err(|(_, e)| io_err(name, path, e))
    }

    /// Creates `path` (truncating any old file) for reading and writing.
    pub(crate) fn create(&mut self, path: &Path) -> Result<File, QueueError> {
        self.gate(IoOp::Create, "create", path)?;
        crate::state_dir::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| io_err("create", path, e))
    }

    /// Writes all of `buf` at `offset`.
    pub(crate) fn write_at(
        &mut self,
        f: &mut File,
        path: &Path,
        offset: u64,
        buf: &[u8],
    ) -> Result<(), QueueError> {
        let (n, fault) = match self.admit(IoOp::Write, path, buf.len()) {
            Ok(()) => (buf.len(), None),
            Err((n, e)) => (n.min(buf.len()), Some(e)),
        };
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| io_err("seek", path, e))?;
        f.write_all(&buf[..n])
            .map_err(|e| io_err("write", path, e))?;
        match fault {
            Some(e) => Err(io_err("write", path, e)),
            None => Ok(()),
        }
    }

    /// fdatasync.
    pub(crate) fn sync_data(&mut self, f: &File, path: &Path) -> Result<(), QueueError> {
        self.gate(IoOp::Sync, "fdatasync", path)?;
        f.sync_data().map_err(|e| io_err("fdatasync", path, e))
    }

    /// Truncates to `len` bytes.
    pub(crate) fn set_len(&mut self, f: &File, path: &Path, len: u64) -> Result<(), QueueError> {
        self.gate(IoOp::SetLen, "truncate", path)?;
        f.set_len(len).map_err(|e| io_err("truncate", path, e))
    }

    /// Renames `from` over `to`.
    pub(crate) fn rename(&mut self, from: &Path, to: &Path) -> Result<(), QueueError> {
        self.gate(IoOp::Rename, "rename", to)?;
        std::fs::rename(from, to).map_err(|e| io_err("rename", to, e))
    }

    /// Removes a file.
    pub(crate) fn remove(&mut self, path: &Path) -> Result<(), QueueError> {
        self.gate(IoOp::Remove, "remove", path)?;
        std::fs::remove_file(path).map_err(|e| io_err("remove", path, e))
    }

    /// fsyncs the directory so creations, renames and removals in it are durable. A no-op
    /// where directories cannot be opened as files (Windows).
    pub(crate) fn sync_dir(&mut self, dir: &Path) -> Result<(), QueueError> {
        self.gate(IoOp::SyncDir, "fsync directory", dir)?;
        #[cfg(unix)]
        {
            let d = File::open(dir).map_err(|e| io_err("open directory", dir, e))?;
            d.sync_all()
                .map_err(|e| io_err("fsync directory", dir, e))?;
        }
        Ok(())
    }
}

/// Opens an existing file for reading and writing (used for the active segment at open).
pub(crate) fn open_rw(path: &Path) -> Result<File, QueueError> {
    crate::state_dir::options()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| io_err("open", path, e))
}
