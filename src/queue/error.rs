//! The queue's error type.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Everything that can go wrong with the change queue. Each variant names the file, key or
/// number at fault; none carries payload or watermark bytes.
#[derive(Debug)]
#[non_exhaustive]
pub enum QueueError {
    /// A [`QueueConfig`](super::QueueConfig) field is out of range.
    InvalidConfig {
        /// The field.
        key: &'static str,
        /// What is allowed.
        reason: String,
    },
    /// Another process (or another `Queue` in this one) holds the directory's lock file.
    Locked {
        /// The lock file.
        path: PathBuf,
        /// The holder's pid, when the lock file names it.
        holder: Option<u32>,
    },
    /// A segment or the ledger was written by a newer format version; nothing was touched.
    NewerFormat {
        /// The file.
        path: PathBuf,
        /// The version byte found.
        found: u8,
        /// The newest version this build reads.
        supported: u8,
    },
    /// No space left (or quota exceeded) while writing: the call changed nothing durable;
    /// pause and retry.
    DiskFull {
        /// The file being written.
        path: PathBuf,
    },
    /// Any other I/O failure; the call changed nothing durable.
    Io {
        /// What the queue was doing.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// One payload of an append is larger than [`MAX_PAYLOAD`](super::MAX_PAYLOAD).
    PayloadTooLarge {
        /// Position of the payload in the batch.
        index: usize,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The watermark is larger than [`MAX_WATERMARK`](super::MAX_WATERMARK).
    WatermarkTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// `ack` named a sequence the queue never handed out.
    AckBeyondEnd {
        /// The sequence asked for.
        upto: u64,
        /// The last sequence appended.
        last_seq: u64,
    },
    /// A record failed its checks while being read: the queue dropped its contents and
    /// recorded durably that a full resync is owed.
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Where the bad record starts.
        offset: u64,
        /// What is wrong with it.
        what: &'static str,
    },
}

impl QueueError {
    /// True when the same call may succeed later without anything else being done: the
    /// queue is consistent after the failure (disk full, other I/O errors).
    pub fn is_retryable(&self) -> bool {
        matches!(self, QueueError::DiskFull { .. } | QueueError::Io { .. })
    }
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueError::InvalidConfig { key, reason } => write!(f, "queue setting {key}: {reason}"),
            QueueError::Locked { path, holder: Some(pid) } => {
                write!(f, "change queue is in use by another idrelay (pid {pid}, lock file {})", path.display())
            }
            QueueError::Locked { path, holder: None } => {
                write!(f, "change queue is in use by another idrelay (lock file {})", path.display())
            }
            QueueError::NewerFormat { path, found, supported } => write!(
                f,
                "{} was written by a newer idrelay (format version {found}, this build reads up to {supported}); \
                 refusing to touch it: upgrade idrelay or move the queue directory away",
                path.display()
            ),
            QueueError::DiskFull { path } => write!(f, "disk full while writing {}", path.display()),
            QueueError::Io { op, path, source } => write!(f, "{op} {}: {source}", path.display()),
            QueueError::PayloadTooLarge { index, len, max } => {
                write!(f, "change {index} of the batch is {len} bytes, more than the limit of {max}")
            }
            QueueError::WatermarkTooLarge { len, max } => {
                write!(f, "watermark is {len} bytes, more than the limit of {max}")
            }
            QueueError::AckBeyondEnd { upto, last_seq } => {
                write!(f, "acknowledgement of sequence {upto}, but the last appended sequence is {last_seq}")
            }
            QueueError::Corrupt { path, offset, what } => write!(
                f,
                "corrupt record in {} at offset {offset}: {what}; queue dropped, full resync owed",
                path.display()
            ),
        }
    }
}

impl std::error::Error for QueueError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            QueueError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
