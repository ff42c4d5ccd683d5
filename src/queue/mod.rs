//! The bounded on-disk change queue: changes from the directory feed wait here, durably and in
//! order, until the sender has provisioned them.
//!
//! Owns one directory and nothing else. Payloads and watermarks are opaque bytes: this module
//! knows no LDAP and no HTTP. All calls block on disk I/O; async callers run them on a
//! blocking thread (`smol::unblock`).
//!
//! # API in one breath
//!
//! [`Queue::open`] takes the lock and recovers. [`Queue::append`] stores a batch of changes
//! together with the watermark that covers them, durably before it returns.
//! [`Queue::read`] returns changes after a sequence (default: the oldest unacknowledged);
//! [`Queue::ack`] acknowledges everything up to a sequence, durably, and trims.
//! [`Queue::stats`] feeds heartbeats; [`Queue::inspect`] gives `status` the same numbers
//! read-only, without the lock, while an agent runs. [`Queue::resync_owed`],
//! [`Queue::mark_resync_owed`] and [`Queue::mark_resync_done`] keep the durable
//! "full resync owed" flag.
//!
//! # Files
//!
//! ```text
//! <dir>/lock                      lock file (holder's pid), locked with File::try_lock
//! <dir>/ledger                    acked sequence, resync flag, watermark (replaced atomically)
//! <dir>/ledger.tmp                the next ledger while it is written; removed at open
//! <dir>/00000000000000000001.seg  segments, named by id (20 digits); ids only grow
//! ```
//!
//! # Format (version 1; every integer little-endian)
//!
//! A segment starts with a 20-byte header `"IDRQ" | version u8 | 0 0 0 | id u64 |
//! crc32c(bytes 0..16) u32`, followed by records, each a 32-byte header and a body:
//!
//! ```text
//! len u32 | crc u32 | seq u64 | kind u8 | 0 0 0 | time_ms u64 | hcrc u32 | body[len]
//!   crc  = CRC32C of everything after it (seq .. end of body)
//!   hcrc = CRC32C of the header without crc (len, seq, kind, reserved, time_ms)
//!   kind 1: change, body = payload
//!   kind 2: change, body = uncompressed length u32 | raw deflate (miniz_oxide)
//!   kind 3: commit, body = watermark generation u64 | watermark
//! ```
//!
//! Changes carry dense sequence numbers (1, 2, 3, ... over the life of the queue, never
//! reused while the queue holds them). An append writes its changes followed by one commit
//! record (seq = the batch's last change) carrying the batch's watermark, then one
//! fdatasync: a batch is durable exactly when its commit record is. A payload of at least
//! `compress_min` bytes (default 128) is deflated (level 1, compressor state reused across
//! payloads) when that makes it smaller; reading inflates with a size
//! limit of the announced length, which may not exceed [`MAX_PAYLOAD`]. `time_ms` is the
//! append time (unix ms, from the clock seam) and gives [`Record::appended_at_ms`] and the
//! age in [`QueueStats`].
//!
//! The ledger is `"IDRL" | version | flags | resync reason | 0 | acked_seq u64 | watermark
//! generation u64 | watermark len u32 | watermark | crc32c u32` (see `ledger.rs`).
//! The current watermark is whichever of the ledger's and the newest commit record's has
//! the higher generation; every new watermark gets the next generation.
//!
//! The version byte of segments and ledger is checked before any checksum: a newer version
//! is refused with [`QueueError::NewerFormat`] and nothing in the directory is touched.
//!
//! # Invariants
//!
//! 1. The summed size of the segment files never exceeds `max_bytes`: every append checks
//!    before it writes. The whole directory stays within `max_bytes + 2 × (32 + watermark
//!    length) + 11`: ledger and its temp copy are at most
//!    [`MAX_WATERMARK`] + 32 bytes each; the lock file holds a pid (at most 11 bytes).
//! 2. Records on disk are in sequence order: segment ids grow, sequences within and across
//!    segments follow each other without gaps.
//! 3. A watermark is durable only together with the changes it covers (same commit record),
//!    so after a crash the feed resumes from a watermark whose changes are all in the queue
//!    or acknowledged.
//! 4. The ledger's `acked_seq` only grows. Segments are deleted only once the ledger says
//!    all their changes are acknowledged and holds a watermark at least as new as theirs.
//! 5. A change leaves the queue only by `ack`, by overflow, by `mark_resync_done`, or by
//!    damage found at open or read; the last three set or clear the resync flag durably in
//!    the same ledger write that drops the changes. Nothing is skipped silently.
//!
//! # Size bound and overflow
//!
//! `max_bytes` (default 10 MiB) bounds the segment files. Segments roll over at
//! `segment_bytes` (default 1 MiB), at batch boundaries. Acknowledged records stay on disk
//! until their segment is deleted, so an active segment that is partly acknowledged counts
//! too: a queue overflows after at least `max_bytes − segment_bytes − one batch` of
//! unacknowledged data (if it holds no unacknowledged change at all, the append first
//! deletes the old segments and retries). When an append would cross the bound, the queue
//! writes the ledger with `acked_seq = last sequence` and the resync flag (reason
//! [`ResyncReason::Overflow`]), deletes every segment, drops the batch, keeps the previous
//! watermark and returns [`AppendOutcome::Overflowed`]. A queue directory larger than
//! `max_bytes` at open (the bound was lowered) overflows the same way.
//!
//! # Resync flag
//!
//! A new queue starts with a resync owed ([`ResyncReason::NeverSynced`]): there is no
//! watermark yet. The flag is set by overflow, damage, a lost or corrupt ledger, or
//! [`Queue::mark_resync_owed`]; it keeps its first reason until cleared. Only
//! [`Queue::mark_resync_done`] clears it: a full pass has provisioned the whole scope as of
//! the watermark it passes, so the changes still queued are covered and dropped, and the
//! feed resumes from that watermark. Appends are accepted while a resync is owed.
//!
//! # fsync policy
//!
//! * append: one write and one fdatasync per batch (group commit); a new segment also gets
//!   an fdatasync of its header and an fsync of the directory before it receives records.
//! * ack, mark_resync_*, overflow: the ledger is replaced atomically: write `ledger.tmp`,
//!   fdatasync, rename over `ledger`, fsync the directory. Callers may coalesce acks (one
//!   `ack(n)` covers everything up to `n`); after a crash, unacknowledged changes are
//!   read again: delivery is at-least-once.
//! * deletions of segments are not fsynced: a segment that comes back after a crash holds
//!   only acknowledged changes and is deleted again.
//!
//! # Recovery rules (at open, in this order; each has a named test in `tests`)
//!
//! 1. The lock is taken first; a second opener gets [`QueueError::Locked`]
//!    (`second_open_is_refused_by_lock`).
//! 2. A segment or ledger from a newer format version: refuse, touch nothing
//!    (`newer_segment_version_is_refused`, `newer_ledger_version_is_refused`).
//! 3. Torn tail: a record whose header checks but whose body runs past the end of the file,
//!    a partial header, a zero-filled tail, and whole records after the last commit record
//!    (a batch whose append never returned) are truncated away; so is a newest segment with
//!    a cut header (`torn_tail_is_truncated`, `uncommitted_batch_is_truncated`,
//!    `torn_segment_header_is_removed`).
//! 4. Damage: a complete record or header whose checksum fails, a sequence that does not
//!    follow, a segment missing from the middle or start: a full resync is owed
//!    ([`ResyncReason::CorruptRecord`]), the ledger is written first, then every segment is
//!    deleted (`bad_checksum_forces_full_resync`, `missing_segment_forces_full_resync`).
//!    The same damage met by [`Queue::read`] at run time does the same and returns
//!    [`QueueError::Corrupt`] (`corruption_found_by_read_forces_full_resync`).
//! 5. Ledger missing while segments exist, or ledger corrupt: its acknowledged position is
//!    unknown, so a full resync is owed ([`ResyncReason::LedgerLost`] /
//!    [`ResyncReason::LedgerCorrupt`]) and the segments are dropped
//!    (`missing_ledger_forces_full_resync`, `corrupt_ledger_forces_full_resync`). No ledger
//!    and no segments is a new queue.
//! 6. A stale `ledger.tmp` is removed (`stale_ledger_tmp_is_ignored`).
//!
//! The ledger is always written before any segment is deleted or truncated, so a crash in
//! the middle of recovery leaves work that the next open finishes the same way
//! (`crash_during_recovery_recovers_on_the_next_open`).
//!
//! Disk full on append: the partial write is truncated away, [`QueueError::DiskFull`] is
//! returned (`is_retryable()`), the queue is unchanged and usable; the caller pauses the
//! feed and retries (`disk_full_append_pauses_and_loses_nothing`).
//!
//! # Seams for tests
//!
//! All file changes go through `io::Disk`, which a test can fail at any step (disk full,
//! or "the process dies here": every later step fails too); the clock is injectable.
//! Limits shrink under `cfg(test)` ([`MIN_MAX_BYTES`], [`MIN_SEGMENT_BYTES`]) so rollover and
//! overflow happen within a few appends.

mod crc32c;
mod error;
mod io;
mod ledger;
mod lock;
#[allow(clippy::module_inception)] // the Queue type lives in queue.rs, one file per concept
mod queue;
mod record;
mod segment;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use error::QueueError;
pub use queue::Queue;
pub use record::{MAX_PAYLOAD, MAX_WATERMARK};

/// Default bound on the segment files: 10 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 10 << 20;
/// Default segment size at which a new segment is started: 1 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 1 << 20;
/// Default threshold from which payloads are deflated.
/// (300-byte JSON changes shrink by about a quarter; see `benches/queue.rs`).
pub const DEFAULT_COMPRESS_MIN: usize = 128;
/// Smallest accepted `max_bytes` (shrunk under `cfg(test)`).
pub const MIN_MAX_BYTES: u64 = if cfg!(test) { 256 } else { 64 << 10 };
/// Smallest accepted `segment_bytes` (shrunk under `cfg(test)`).
pub const MIN_SEGMENT_BYTES: u64 = if cfg!(test) { 64 } else { 4 << 10 };

/// Where the queue lives and how big it may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// The queue directory (created if missing); the queue owns everything in it.
    pub dir: PathBuf,
    /// Bound on the summed size of the segment files, in bytes.
    pub max_bytes: u64,
    /// Size from which the next batch starts a new segment.
    pub segment_bytes: u64,
    /// Payloads of at least this many bytes are deflated (when that makes them smaller);
    /// `usize::MAX` turns compression off.
    pub compress_min: usize,
}

impl QueueConfig {
    /// A config for `dir` with the default limits.
    pub fn new(dir: impl Into<PathBuf>) -> QueueConfig {
        QueueConfig {
            dir: dir.into(),
            max_bytes: DEFAULT_MAX_BYTES,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            compress_min: DEFAULT_COMPRESS_MIN,
        }
    }

    /// Checks the limits.
    pub fn validate(&self) -> Result<(), QueueError> {
        if self.max_bytes < MIN_MAX_BYTES {
            return Err(QueueError::InvalidConfig {
                key: "max_bytes",
                reason: format!(
                    "{} is below the minimum of {MIN_MAX_BYTES} bytes",
                    self.max_bytes
                ),
            });
        }
        if self.segment_bytes < MIN_SEGMENT_BYTES || self.segment_bytes > self.max_bytes {
            return Err(QueueError::InvalidConfig {
                key: "segment_bytes",
                reason: format!(
                    "{} must be between {MIN_SEGMENT_BYTES} and max_bytes ({})",
                    self.segment_bytes, self.max_bytes
                ),
            });
        }
        Ok(())
    }
}

/// What [`Queue::append`] did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored durably with these sequences; for an empty batch (watermark only)
    /// `first_seq == last_seq + 1`.
    Appended {
        /// Sequence of the batch's first change.
        first_seq: u64,
        /// Sequence of the batch's last change.
        last_seq: u64,
    },
    /// The batch would have crossed `max_bytes`: the queue dropped its contents and this
    /// batch, and a full resync is owed (durably).
    Overflowed {
        /// Unacknowledged changes dropped from the queue (not counting the batch).
        dropped: u64,
    },
}

/// One change read from the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its sequence number; pass it to [`Queue::ack`] once provisioned.
    pub seq: u64,
    /// The payload as appended.
    pub payload: Vec<u8>,
    /// When its batch was appended, unix milliseconds.
    pub appended_at_ms: u64,
}

/// Why a full resync is owed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResyncReason {
    /// A new queue: no full pass has completed yet.
    NeverSynced,
    /// The queue hit `max_bytes` and dropped its backlog.
    Overflow,
    /// A record or segment failed its checks.
    CorruptRecord,
    /// The ledger was missing while segments existed.
    LedgerLost,
    /// The ledger failed its checks.
    LedgerCorrupt,
    /// Asked for through [`Queue::mark_resync_owed`] (e.g. a control command).
    Requested,
    /// The periodic full pass (`sync.full_pass_interval_secs`) is due.
    Scheduled,
    /// The sync scope (base, include, filters, profile) differs from the one the stored
    /// watermark was taken for.
    ScopeChanged,
    /// The directory cannot resume the feed from the stored position (syncrepl asked for a
    /// refresh or sent a present phase; DirSync/uSN position invalid).
    FeedPosition,
    /// A group that others depend on changed: one of `scope.groups` (who is in scope may
    /// have changed) or, with `nested_groups = "flatten"`, a group whose flattened members
    /// (and those of every group above it) must be worked out again. (An agent older than
    /// this code reads it as a damaged ledger, which owes the same full pass.)
    GroupsChanged,
}

impl ResyncReason {
    /// Code stored in the ledger.
    pub(crate) fn code(self) -> u8 {
        match self {
            ResyncReason::NeverSynced => 1,
            ResyncReason::Overflow => 2,
            ResyncReason::CorruptRecord => 3,
            ResyncReason::LedgerLost => 4,
            ResyncReason::LedgerCorrupt => 5,
            ResyncReason::Requested => 6,
            ResyncReason::Scheduled => 7,
            ResyncReason::ScopeChanged => 8,
            ResyncReason::FeedPosition => 9,
            ResyncReason::GroupsChanged => 10,
        }
    }

    /// The reason for a ledger code.
    pub(crate) fn from_code(code: u8) -> Option<ResyncReason> {
        Some(match code {
            1 => ResyncReason::NeverSynced,
            2 => ResyncReason::Overflow,
            3 => ResyncReason::CorruptRecord,
            4 => ResyncReason::LedgerLost,
            5 => ResyncReason::LedgerCorrupt,
            6 => ResyncReason::Requested,
            7 => ResyncReason::Scheduled,
            8 => ResyncReason::ScopeChanged,
            9 => ResyncReason::FeedPosition,
            10 => ResyncReason::GroupsChanged,
            _ => return None,
        })
    }

    /// Whether the pass is owed because something went wrong (a lost backlog or damaged
    /// state), not because someone or something asked for it: worth a WARN.
    pub fn is_fault(self) -> bool {
        matches!(
            self,
            ResyncReason::Overflow
                | ResyncReason::CorruptRecord
                | ResyncReason::LedgerLost
                | ResyncReason::LedgerCorrupt
        )
    }

    /// A short machine-friendly name (`overflow`, `corrupt-record`, ...), for status output.
    pub fn as_str(self) -> &'static str {
        match self {
            ResyncReason::NeverSynced => "never-synced",
            ResyncReason::Overflow => "overflow",
            ResyncReason::CorruptRecord => "corrupt-record",
            ResyncReason::LedgerLost => "ledger-lost",
            ResyncReason::LedgerCorrupt => "ledger-corrupt",
            ResyncReason::Requested => "requested",
            ResyncReason::Scheduled => "scheduled full pass",
            ResyncReason::ScopeChanged => "scope changed",
            ResyncReason::FeedPosition => "the directory lost the feed's position",
            ResyncReason::GroupsChanged => "a scoping or flattened group changed",
        }
    }
}

impl fmt::Display for ResyncReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Numbers for `status` and heartbeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStats {
    /// Unacknowledged changes.
    pub depth: u64,
    /// Bytes of segment files on disk (acknowledged records not yet trimmed included).
    pub bytes: u64,
    /// The bound on `bytes`.
    pub max_bytes: u64,
    /// Age of the oldest unacknowledged change (None when there is none).
    pub oldest_age: Option<Duration>,
    /// Why a full resync is owed, if one is.
    pub resync_owed: Option<ResyncReason>,
    /// Highest acknowledged (or dropped) sequence.
    pub acked_seq: u64,
    /// Highest sequence appended.
    pub last_seq: u64,
    /// Number of segment files.
    pub segments: usize,
}

/// What [`Queue::inspect`] sees in a queue directory without opening it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueView {
    /// The numbers, as [`Queue::stats`] would give them after an open.
    pub stats: QueueStats,
    /// The watermark the feed would resume from.
    pub watermark: Option<Vec<u8>>,
    /// What an open would repair or report (torn tails, damage), one line each.
    pub notes: Vec<String>,
}

/// Entry points for the fuzz targets (`fuzz/`) and their proptest stand-ins: decode
/// arbitrary bytes as a segment or a ledger and check what decodes. Not for other use.
#[doc(hidden)]
pub mod fuzzing {
    use super::{ledger, record, segment};

    /// Decodes `data` as a segment file and as a lone record; panics only on a broken
    /// invariant (a decoded record that does not re-frame to the same bytes, a ledger that
    /// does not re-encode to the same bytes).
    pub fn segment_and_record(data: &[u8]) {
        let _ = segment::scan_segment(data);
        checked_records(data);
        framed(data);
    }

    /// Every record that decodes at the start of `data` re-frames to the same bytes and
    /// yields a payload within the limit (or a refusal).
    fn checked_records(data: &[u8]) {
        if let Ok((h, body)) = record::decode_frame(data) {
            assert_eq!(record::reframe(&h, body), &data[..h.frame_len()]);
            match h.kind {
                record::Kind::Commit => {
                    let (_, wm) = record::commit_fields(body);
                    assert!(wm.len() <= record::MAX_WATERMARK);
                }
                kind => {
                    if let Ok(p) =
                        record::change_payload(kind, body.to_vec(), &mut Default::default())
                    {
                        assert!(p.len() <= record::MAX_PAYLOAD);
                    }
                }
            }
        }
    }

    /// Frames `data` into records with valid checksums (chunks of `kind | seq | len u16 |
    /// body`) behind a valid segment header, so that what lies past the checksums (kinds,
    /// sequence and commit rules, inflate limits) sees fuzzed content, not just a checksum
    /// mismatch.
    fn framed(data: &[u8]) {
        let mut seg = record::encode_segment_header(1).to_vec();
        let mut rest = data;
        while rest.len() >= 4 {
            let kind = [
                record::Kind::Change,
                record::Kind::DeflatedChange,
                record::Kind::Commit,
            ][usize::from(rest[0] % 3)];
            let len = usize::from(u16::from_le_bytes([rest[2], rest[3]])).min(rest.len() - 4);
            let body = &rest[4..4 + len];
            let h = record::Header {
                len: 0,
                crc: 0,
                seq: u64::from(rest[1]),
                kind,
                time_ms: 0,
            };
            let start = seg.len();
            seg.extend_from_slice(&record::reframe(&h, body));
            checked_records(&seg[start..]);
            rest = &rest[4 + len..];
        }
        let scan = segment::scan_segment(&seg);
        assert!(scan.committed_end <= seg.len() as u64);
    }

    /// Decodes `data` as a ledger; what decodes must re-encode to the same bytes.
    pub fn ledger(data: &[u8]) {
        if let Ok(l) = ledger::decode(data) {
            let again = ledger::encode(l.acked_seq, l.resync, l.watermark.as_deref(), l.wm_gen);
            assert_eq!(again, data);
        }
    }
}
