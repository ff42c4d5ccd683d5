//! Queue tests that touch the disk: the named recovery tests (one per rule in the module
//! doc), the model-based property test, and the proptest stand-in for the fuzz targets.
//! Shared here: unique temp directories, a fault-injecting disk hook and a manual clock.

mod clock;
mod fuzz_standin;
mod model;
mod recovery;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::io::{Clock, Disk, FaultHook, IoOp};
use super::{Queue, QueueConfig, QueueError};

/// A fresh directory under the system temp dir, removed on drop.
pub(super) struct TestDir(PathBuf);

impl TestDir {
    pub(super) fn new(name: &str) -> TestDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("idrelay-queue-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TestDir(p)
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Small limits so rollover and overflow come quickly.
pub(super) fn small_cfg(dir: &Path) -> QueueConfig {
    QueueConfig {
        dir: dir.to_path_buf(),
        max_bytes: 4096,
        segment_bytes: 512,
        compress_min: 64,
    }
}

/// What the fault hook does next.
#[derive(Debug, Default)]
pub(super) struct Faults {
    /// Disk changes that still go through before the simulated process death; the failing
    /// one, if a write, first writes `partial` bytes.
    pub(super) ops_left: Option<usize>,
    /// Bytes of writes the disk still has room for.
    pub(super) bytes_left: Option<usize>,
    /// Bytes the dying write gets out.
    pub(super) partial: usize,
    /// Once dead, every change fails.
    pub(super) dead: bool,
    /// Disk changes seen.
    pub(super) ops_seen: usize,
}

pub(super) type SharedFaults = Arc<Mutex<Faults>>;

struct Hook(SharedFaults);

fn crash() -> io::Error {
    io::Error::other("simulated process death")
}

impl FaultHook for Hook {
    fn admit(&mut self, op: IoOp, _path: &Path, len: usize) -> Result<(), (usize, io::Error)> {
        let mut f = self.0.lock().unwrap();
        f.ops_seen += 1;
        if f.dead {
            return Err((0, crash()));
        }
        if let Some(n) = f.ops_left {
            if n == 0 {
                f.dead = true;
                let partial = if op == IoOp::Write {
                    f.partial.min(len)
                } else {
                    0
                };
                return Err((partial, crash()));
            }
            f.ops_left = Some(n - 1);
        }
        if op == IoOp::Write {
            if let Some(room) = f.bytes_left {
                if len > room {
                    f.bytes_left = Some(0);
                    return Err((room, io::Error::from(io::ErrorKind::StorageFull)));
                }
                f.bytes_left = Some(room - len);
            }
        }
        Ok(())
    }
}

/// A clock the test moves by hand (unix ms).
pub(super) fn manual_clock() -> (Arc<AtomicU64>, Clock) {
    let t = Arc::new(AtomicU64::new(1_700_000_000_000));
    let t2 = t.clone();
    (t, Box::new(move || t2.load(Ordering::Relaxed)))
}

/// Opens with a fault hook and the given clock.
pub(super) fn open_faulty(
    cfg: QueueConfig,
    faults: &SharedFaults,
    clock: Clock,
) -> Result<Queue, QueueError> {
    Queue::open_with(cfg, Disk::with_hook(Box::new(Hook(faults.clone()))), clock)
}

/// Segment files in `dir`, oldest first.
pub(super) fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// Summed size of the segment files in `dir`.
pub(super) fn segment_bytes_on_disk(dir: &Path) -> u64 {
    segment_files(dir)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}
