//! The lock file: one agent per queue directory.
//!
//! `lock` in the queue directory is opened and locked exclusively with
//! [`std::fs::File::try_lock`] (flock on Unix, LockFileEx on Windows) for as long as the
//! [`Queue`](super::Queue) lives; the kernel drops the lock when the process dies, so a
//! killed agent never leaves a stale lock behind. The file holds the holder's pid, only so
//! the refusal can name it. Locks are per open file, so a second open in the same process is
//! refused too.

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::io::io_err;
use super::QueueError;

/// File name of the lock file inside the queue directory.
pub const LOCK_FILE: &str = "lock";

/// A held lock; released on drop.
#[derive(Debug)]
pub(crate) struct LockFile {
    _file: File,
    path: PathBuf,
}

impl LockFile {
    /// Takes the lock of `dir`, or says who holds it.
    pub(crate) fn acquire(dir: &Path) -> Result<LockFile, QueueError> {
        let path = dir.join(LOCK_FILE);
        let mut file = crate::state_dir::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_err("open lock file", &path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let holder = file
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| text.trim().parse().ok());
                return Err(QueueError::Locked { path, holder });
            }
            Err(TryLockError::Error(e)) => return Err(io_err("lock", &path, e)),
        }
        // Informational only: a failure to record the pid does not matter.
        let _ = file
            .set_len(0)
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{}", std::process::id()));
        Ok(LockFile { _file: file, path })
    }

    /// Path of the lock file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}
