//! [`Queue`]: open and recovery, append, read, ack, the resync flag. The rules it keeps are
//! in the module doc of [`crate::queue`].

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::io::{io_err, open_rw, system_clock, Clock, Disk};
use super::ledger::{self, LedgerError, LedgerState, LEDGER_FILE, LEDGER_TMP_FILE};
use super::lock::LockFile;
use super::record::{
    change_payload, encode_commit, encode_segment_header, Deflater, FrameError, Inflater, Kind,
    SegmentHeaderError, FORMAT_VERSION, MAX_PAYLOAD, MAX_WATERMARK, SEGMENT_HEADER_LEN,
};
use super::segment::{
    parse_segment_name, scan_segment, segment_name, FrameReader, ReadFault, SegmentScan, Tail,
};
use super::{AppendOutcome, QueueConfig, QueueError, QueueStats, QueueView, Record, ResyncReason};

const HDR: u64 = SEGMENT_HEADER_LEN as u64;

/// One segment file as the queue knows it.
#[derive(Debug)]
struct Segment {
    id: u64,
    path: PathBuf,
    /// Durable length: the end of its last commit record.
    len: u64,
    first_seq: Option<u64>,
    last_seq: Option<u64>,
}

/// Where the last read stopped, so the next one continues without a scan.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    seg_id: u64,
    offset: u64,
    next_seq: u64,
}

/// The bounded on-disk change queue. One per directory (a lock file enforces it).
pub struct Queue {
    cfg: QueueConfig,
    disk: Disk,
    clock: Clock,
    lock: LockFile,
    /// Oldest first; the last one is the active segment that appends go to.
    segments: VecDeque<Segment>,
    /// Open handle of the active segment (Some exactly when `segments` is not empty).
    writer: Option<File>,
    /// A failed append may have left bytes past the active segment's durable length.
    dirty: bool,
    next_segment_id: u64,
    acked: u64,
    last_seq: u64,
    resync: Option<ResyncReason>,
    watermark: Option<Vec<u8>>,
    wm_gen: u64,
    /// The watermark generation the ledger file holds.
    ledger_gen: u64,
    /// Append time of the oldest unacknowledged change.
    oldest_ms: Option<u64>,
    cursor: Option<Cursor>,
    /// Encode buffer, reused across appends.
    buf: Vec<u8>,
    /// Created at the first payload worth deflating.
    deflater: Option<Deflater>,
    /// Created at the first deflated payload read.
    inflater: Option<Inflater>,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("dir", &self.cfg.dir)
            .field("lock", &self.lock.path())
            .field("stats", &self.stats())
            .finish()
    }
}

/// What the ledger file said at open.
enum LedgerRead {
    Found(LedgerState),
    Missing,
    Corrupt(&'static str),
}

/// A segment file found at open.
struct FoundSegment {
    id: u64,
    path: PathBuf,
    file_len: u64,
    scan: SegmentScan,
}

impl Queue {
    /// Opens (creating if needed) the queue in `cfg.dir`: takes the lock, then recovers as
    /// the module doc's recovery rules say.
    pub fn open(cfg: QueueConfig) -> Result<Queue, QueueError> {
        Queue::open_with(cfg, Disk::real(), system_clock())
    }

    /// [`Queue::open`] with the disk and clock seams.
    pub(crate) fn open_with(
        cfg: QueueConfig,
        mut disk: Disk,
        clock: Clock,
    ) -> Result<Queue, QueueError> {
        cfg.validate()?;
        let dir = cfg.dir.clone();
        crate::state_dir::create_private_dir(&dir)
            .map_err(|e| io_err("create queue directory", &dir, e))?;
        let lock = LockFile::acquire(&dir)?;

        let (ledger_read, scanned, next_segment_id) = load_dir(&dir)?;

        let plan = plan_recovery(&ledger_read, &scanned, cfg.max_bytes);
        for w in &plan.warnings {
            log::warn!("change queue {}: {w}", dir.display());
        }
        if let Some((reason, why)) = &plan.newly_owed {
            log::error!(
                "change queue {}: {why}; a full resync is owed ({reason})",
                dir.display()
            );
        }
        if plan.write_ledger {
            let bytes = ledger::encode(
                plan.acked,
                plan.resync,
                plan.watermark.as_deref(),
                plan.wm_gen,
            );
            ledger::write_atomic(&mut disk, &dir, &bytes)?;
        }
        let mut segments = VecDeque::new();
        for (f, fate) in scanned.into_iter().zip(plan.fates) {
            match fate {
                Fate::Delete => disk.remove(&f.path)?,
                Fate::Keep { len } => {
                    if len < f.file_len {
                        let file = open_rw(&f.path)?;
                        disk.set_len(&file, &f.path, len)?;
                        disk.sync_data(&file, &f.path)?;
                    }
                    let s = &f.scan;
                    segments.push_back(Segment {
                        id: f.id,
                        path: f.path,
                        len,
                        first_seq: s.first_seq,
                        last_seq: s.last_seq,
                    });
                }
            }
        }
        let tmp = dir.join(LEDGER_TMP_FILE);
        if tmp.exists() {
            disk.remove(&tmp)?;
        }
        let writer = match segments.back() {
            Some(s) => Some(open_rw(&s.path)?),
            None => None,
        };
        let mut q = Queue {
            cfg,
            disk,
            clock,
            lock,
            segments,
            writer,
            dirty: false,
            next_segment_id,
            acked: plan.acked,
            last_seq: plan.last_seq,
            resync: plan.resync,
            watermark: plan.watermark,
            wm_gen: plan.wm_gen,
            ledger_gen: plan.ledger_gen,
            oldest_ms: None,
            cursor: None,
            buf: Vec::new(),
            deflater: None,
            inflater: None,
        };
        q.trim();
        q.refresh_oldest();
        Ok(q)
    }

    /// A read-only look at the queue in `dir`, for `status` while an agent may be running:
    /// takes no lock and changes nothing. Shows what [`Queue::open`] would find (a torn
    /// tail is not counted; damage shows as a resync owed). `stats.max_bytes` is 0 (the
    /// bound is config, not on disk). A missing directory is a new queue.
    pub fn inspect(dir: &Path) -> Result<QueueView, QueueError> {
        let now = (system_clock())();
        if !dir.is_dir() {
            return Ok(QueueView {
                stats: QueueStats {
                    depth: 0,
                    bytes: 0,
                    max_bytes: 0,
                    oldest_age: None,
                    resync_owed: Some(ResyncReason::NeverSynced),
                    acked_seq: 0,
                    last_seq: 0,
                    segments: 0,
                },
                watermark: None,
                notes: Vec::new(),
            });
        }
        // A running agent may ack and trim between our reading the ledger and the
        // segments; read the ledger again afterwards and retry if it moved.
        let mut attempt = 0;
        let (ledger_read, scanned) = loop {
            let before = crate::state_dir::read(&dir.join(LEDGER_FILE)).ok();
            let (ledger_read, scanned, _) = load_dir(dir)?;
            attempt += 1;
            if attempt == 3 || crate::state_dir::read(&dir.join(LEDGER_FILE)).ok() == before {
                break (ledger_read, scanned);
            }
        };
        let plan = plan_recovery(&ledger_read, &scanned, u64::MAX);
        let segments: VecDeque<Segment> = scanned
            .into_iter()
            .zip(&plan.fates)
            .filter_map(|(f, fate)| match fate {
                Fate::Keep { len } => Some(Segment {
                    id: f.id,
                    path: f.path,
                    len: *len,
                    first_seq: f.scan.first_seq,
                    last_seq: f.scan.last_seq,
                }),
                Fate::Delete => None,
            })
            .collect();
        let depth = plan.last_seq.saturating_sub(plan.acked);
        let oldest_ms = if depth == 0 {
            None
        } else {
            seek_change_in(&segments, None, plan.acked + 1)
                .ok()
                .flatten()
                .map(|(_, _, t)| t)
        };
        let mut notes = plan.warnings;
        if let Some((reason, why)) = plan.newly_owed {
            notes.push(format!(
                "{why}; the next open will owe a full resync ({reason})"
            ));
        }
        Ok(QueueView {
            stats: QueueStats {
                depth,
                bytes: segments.iter().map(|s| s.len).sum(),
                max_bytes: 0,
                oldest_age: oldest_ms.map(|t| Duration::from_millis(now.saturating_sub(t))),
                resync_owed: plan.resync,
                acked_seq: plan.acked,
                last_seq: plan.last_seq,
                segments: segments.len(),
            },
            watermark: plan.watermark,
            notes,
        })
    }

    /// The configuration the queue was opened with.
    pub fn config(&self) -> &QueueConfig {
        &self.cfg
    }

    /// Unacknowledged changes.
    pub fn depth(&self) -> u64 {
        self.last_seq.saturating_sub(self.acked)
    }

    /// Bytes of segment files on disk.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// The last durable watermark (None before the first one). While a resync is owed it is
    /// stale: the feed should resume from the watermark of the next full pass.
    pub fn watermark(&self) -> Option<&[u8]> {
        self.watermark.as_deref()
    }

    /// True while a full resync is owed.
    pub fn resync_owed(&self) -> bool {
        self.resync.is_some()
    }

    /// Why a full resync is owed, if one is.
    pub fn resync_reason(&self) -> Option<ResyncReason> {
        self.resync
    }

    /// Numbers for `status` and heartbeats.
    pub fn stats(&self) -> QueueStats {
        let now = (self.clock)();
        QueueStats {
            depth: self.depth(),
            bytes: self.bytes(),
            max_bytes: self.cfg.max_bytes,
            oldest_age: self
                .oldest_ms
                .map(|t| Duration::from_millis(now.saturating_sub(t))),
            resync_owed: self.resync,
            acked_seq: self.acked,
            last_seq: self.last_seq,
            segments: self.segments.len(),
        }
    }

    /// Appends a batch of changes and the watermark that covers them; durable when it
    /// returns `Ok` (one fdatasync for the whole batch). An empty batch stores only the
    /// watermark. When the batch would take the segments past `max_bytes`, the queue
    /// overflows instead (see the module doc). On error nothing changed: disk full gives
    /// [`QueueError::DiskFull`]; pause and retry.
    pub fn append<P: AsRef<[u8]>>(
        &mut self,
        payloads: &[P],
        watermark: &[u8],
    ) -> Result<AppendOutcome, QueueError> {
        for (index, p) in payloads.iter().enumerate() {
            let len = p.as_ref().len();
            if len > MAX_PAYLOAD {
                return Err(QueueError::PayloadTooLarge {
                    index,
                    len,
                    max: MAX_PAYLOAD,
                });
            }
        }
        if watermark.len() > MAX_WATERMARK {
            return Err(QueueError::WatermarkTooLarge {
                len: watermark.len(),
                max: MAX_WATERMARK,
            });
        }
        self.repair()?;
        let now = (self.clock)();
        let n = payloads.len() as u64;
        let first = self.last_seq + 1;
        let last = self.last_seq + n;
        let gen = self.wm_gen + 1;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        for (i, p) in payloads.iter().enumerate() {
            self.deflater
                .get_or_insert_with(Deflater::default)
                .encode_change(
                    &mut buf,
                    first + i as u64,
                    now,
                    p.as_ref(),
                    self.cfg.compress_min,
                );
        }
        encode_commit(&mut buf, last, now, gen, watermark);
        let res = self.append_encoded(&buf, first, last, gen, watermark, now);
        if buf.capacity() <= 1 << 20 {
            self.buf = buf;
        }
        res
    }

    fn append_encoded(
        &mut self,
        buf: &[u8],
        first: u64,
        last: u64,
        gen: u64,
        watermark: &[u8],
        now: u64,
    ) -> Result<AppendOutcome, QueueError> {
        let len = buf.len() as u64;
        let mut roll = self.needs_roll();
        if self.bytes() + len + if roll { HDR } else { 0 } > self.cfg.max_bytes
            && self.depth() == 0
            && !self.segments.is_empty()
        {
            // Only acknowledged bytes stand in the way: reclaim them first.
            self.make_ledger_current()?;
            self.remove_segments(|_, _| true);
            roll = self.needs_roll();
        }
        if self.bytes() + len + if roll { HDR } else { 0 } > self.cfg.max_bytes {
            return self.overflow();
        }
        if roll {
            self.roll()?;
        }
        let (Some(seg), Some(file)) = (self.segments.back_mut(), self.writer.as_mut()) else {
            unreachable!("an active segment exists after roll");
        };
        let res = self
            .disk
            .write_at(file, &seg.path, seg.len, buf)
            .and_then(|()| self.disk.sync_data(file, &seg.path));
        if let Err(e) = res {
            self.dirty = true;
            if let Err(r) = self.repair() {
                log::warn!("change queue: could not undo a failed append yet: {r}");
            }
            return Err(e);
        }
        seg.len += len;
        if last >= first {
            seg.first_seq.get_or_insert(first);
            seg.last_seq = Some(last);
            if self.depth() == 0 {
                self.oldest_ms = Some(now);
            }
        }
        self.last_seq = last;
        self.watermark = Some(watermark.to_vec());
        self.wm_gen = gen;
        Ok(AppendOutcome::Appended {
            first_seq: first,
            last_seq: last,
        })
    }

    /// True when the next batch goes to a new segment.
    fn needs_roll(&self) -> bool {
        self.writer.is_none()
            || self
                .segments
                .back()
                .is_none_or(|s| s.len >= self.cfg.segment_bytes)
    }

    /// Cuts the active segment back to its durable length after a failed append.
    fn repair(&mut self) -> Result<(), QueueError> {
        if !self.dirty {
            return Ok(());
        }
        if let (Some(seg), Some(file)) = (self.segments.back(), self.writer.as_ref()) {
            self.disk.set_len(file, &seg.path, seg.len)?;
            self.disk.sync_data(file, &seg.path)?;
        }
        self.dirty = false;
        Ok(())
    }

    /// Starts a new segment: header written and synced, directory synced.
    fn roll(&mut self) -> Result<(), QueueError> {
        let id = self.next_segment_id;
        let path = self.cfg.dir.join(segment_name(id));
        let header = encode_segment_header(id);
        let disk = &mut self.disk;
        let dir = &self.cfg.dir;
        let res = (|| {
            let mut f = disk.create(&path)?;
            disk.write_at(&mut f, &path, 0, &header)?;
            disk.sync_data(&f, &path)?;
            disk.sync_dir(dir)?;
            Ok(f)
        })();
        match res {
            Ok(f) => {
                self.next_segment_id += 1;
                self.segments.push_back(Segment {
                    id,
                    path,
                    len: HDR,
                    first_seq: None,
                    last_seq: None,
                });
                self.writer = Some(f);
                self.dirty = false;
                Ok(())
            }
            Err(e) => {
                if path.exists() {
                    let _ = self.disk.remove(&path);
                }
                Err(e)
            }
        }
    }

    /// Drops everything: ledger first (resync owed, all acknowledged), then the segments.
    fn overflow(&mut self) -> Result<AppendOutcome, QueueError> {
        let dropped = self.depth();
        let reason = self.resync.unwrap_or(ResyncReason::Overflow);
        self.write_ledger(self.last_seq, Some(reason))?;
        self.remove_segments(|_, _| true);
        log::warn!(
            "change queue {} reached its bound of {} bytes: dropped {dropped} unacknowledged changes; \
             a full resync is owed",
            self.cfg.dir.display(),
            self.cfg.max_bytes
        );
        Ok(AppendOutcome::Overflowed { dropped })
    }

    /// Writes the ledger with the current watermark; updates the in-memory copy on success.
    fn write_ledger(&mut self, acked: u64, resync: Option<ResyncReason>) -> Result<(), QueueError> {
        let bytes = ledger::encode(acked, resync, self.watermark.as_deref(), self.wm_gen);
        ledger::write_atomic(&mut self.disk, &self.cfg.dir, &bytes)?;
        self.acked = acked;
        self.resync = resync;
        self.ledger_gen = self.wm_gen;
        Ok(())
    }

    fn make_ledger_current(&mut self) -> Result<(), QueueError> {
        if self.ledger_gen != self.wm_gen {
            self.write_ledger(self.acked, self.resync)?;
        }
        Ok(())
    }

    /// Deletes the segments `pred(segment, is_last)` picks; a segment that cannot be deleted
    /// stays (its changes are acknowledged; a later trim retries).
    fn remove_segments(&mut self, pred: impl Fn(&Segment, bool) -> bool) {
        let n = self.segments.len();
        let old = std::mem::take(&mut self.segments);
        let last_id = old.back().map(|s| s.id);
        for (i, s) in old.into_iter().enumerate() {
            if pred(&s, i + 1 == n) {
                match self.disk.remove(&s.path) {
                    Ok(()) => continue,
                    Err(e) => {
                        log::warn!("change queue: could not delete an acknowledged segment: {e}")
                    }
                }
            }
            self.segments.push_back(s);
        }
        if self.segments.back().map(|s| s.id) != last_id {
            self.writer = None;
            self.dirty = false;
        }
        if let Some(c) = self.cursor {
            if !self.segments.iter().any(|s| s.id == c.seg_id) {
                self.cursor = None;
            }
        }
        if self.depth() == 0 {
            self.oldest_ms = None;
        }
    }

    /// Deletes older segments whose changes are all acknowledged (never the active one).
    fn trim(&mut self) {
        if self.ledger_gen != self.wm_gen {
            return;
        }
        let acked = self.acked;
        self.remove_segments(|s, is_last| !is_last && s.last_seq.is_none_or(|l| l <= acked));
    }

    /// Acknowledges every change up to `upto`, durably (one atomic ledger write), and
    /// deletes segments that hold only acknowledged changes. Acknowledging an
    /// already-acknowledged sequence does nothing.
    pub fn ack(&mut self, upto: u64) -> Result<(), QueueError> {
        if upto > self.last_seq {
            return Err(QueueError::AckBeyondEnd {
                upto,
                last_seq: self.last_seq,
            });
        }
        if upto <= self.acked {
            return Ok(());
        }
        self.write_ledger(upto, self.resync)?;
        self.trim();
        self.refresh_oldest();
        Ok(())
    }

    /// Records durably that a full resync is owed. If one is owed already, its first reason
    /// stays. The queued changes stay too.
    pub fn mark_resync_owed(&mut self, reason: ResyncReason) -> Result<(), QueueError> {
        if self.resync.is_some() {
            return Ok(());
        }
        // A requested or scheduled pass is routine; a lost backlog or damaged state is not.
        let level = if reason.is_fault() {
            log::Level::Warn
        } else {
            log::Level::Info
        };
        log::log!(
            level,
            "change queue {}: full resync owed ({reason})",
            self.cfg.dir.display()
        );
        self.write_ledger(self.acked, Some(reason))
    }

    /// A full pass has provisioned the whole scope as of `watermark`: clears the resync flag,
    /// stores `watermark` as the one the feed resumes from, and drops the changes still
    /// queued (the pass covered them; the feed replays anything after `watermark`). One
    /// atomic ledger write, then the segments are deleted.
    pub fn mark_resync_done(&mut self, watermark: &[u8]) -> Result<(), QueueError> {
        if watermark.len() > MAX_WATERMARK {
            return Err(QueueError::WatermarkTooLarge {
                len: watermark.len(),
                max: MAX_WATERMARK,
            });
        }
        let gen = self.wm_gen + 1;
        let bytes = ledger::encode(self.last_seq, None, Some(watermark), gen);
        ledger::write_atomic(&mut self.disk, &self.cfg.dir, &bytes)?;
        self.acked = self.last_seq;
        self.resync = None;
        self.watermark = Some(watermark.to_vec());
        self.wm_gen = gen;
        self.ledger_gen = gen;
        self.remove_segments(|_, _| true);
        Ok(())
    }

    /// Up to `max` changes with a sequence above `after` (None: above the acknowledged
    /// sequence; a sequence below it counts as it), oldest first. Reads continue cheaply
    /// where the previous read stopped. A record that fails its checks makes the queue drop
    /// its contents, owe a full resync (durably) and return [`QueueError::Corrupt`].
    pub fn read(&mut self, after: Option<u64>, max: usize) -> Result<Vec<Record>, QueueError> {
        let from = after.unwrap_or(0).max(self.acked) + 1;
        if max == 0 || from > self.last_seq {
            return Ok(Vec::new());
        }
        let mut inflater = self.inflater.take().unwrap_or_default();
        let res = self.read_inner(from, max, &mut inflater);
        self.inflater = Some(inflater);
        match res {
            Ok((out, cursor)) => {
                self.cursor = Some(cursor);
                Ok(out)
            }
            Err(ReadFault::Io(e)) => Err(e),
            Err(ReadFault::Corrupt { path, offset, what }) => {
                Err(self.corrupted(path, offset, what))
            }
        }
    }

    fn read_inner(
        &self,
        from: u64,
        max: usize,
        inflater: &mut Inflater,
    ) -> Result<(Vec<Record>, Cursor), ReadFault> {
        let Some((mut idx, mut off, _)) = self.seek_change(from)? else {
            let path = self
                .segments
                .back()
                .map_or_else(|| self.cfg.dir.clone(), |s| s.path.clone());
            return Err(ReadFault::Corrupt {
                path,
                offset: 0,
                what: "a queued change is missing from the segments",
            });
        };
        let mut out = Vec::new();
        let mut expected = from;
        loop {
            let seg = &self.segments[idx];
            let mut r = FrameReader::open(&seg.path, off, seg.len)?;
            while let Some((h, hb)) = r.next_header()? {
                if h.kind == Kind::Commit || h.seq < expected {
                    r.skip_body(&h)?;
                    continue;
                }
                let at = r.pos();
                let corrupt = |what| ReadFault::Corrupt {
                    path: seg.path.clone(),
                    offset: at,
                    what,
                };
                if h.seq != expected {
                    return Err(corrupt("change sequence does not follow the previous one"));
                }
                let body = r.read_body(&h, &hb)?;
                let payload = change_payload(h.kind, body, inflater).map_err(|e| match e {
                    FrameError::Corrupt(what) => corrupt(what),
                    FrameError::Torn => corrupt("record cut"),
                })?;
                out.push(Record {
                    seq: h.seq,
                    payload,
                    appended_at_ms: h.time_ms,
                });
                expected += 1;
                if out.len() == max {
                    break;
                }
            }
            off = r.pos();
            if out.len() == max || idx + 1 == self.segments.len() {
                break;
            }
            idx += 1;
            off = HDR;
        }
        Ok((
            out,
            Cursor {
                seg_id: self.segments[idx].id,
                offset: off,
                next_seq: expected,
            },
        ))
    }

    /// Finds the first change with a sequence at or above `seq`: (segment index, offset of
    /// its frame, its append time). Starts at the cursor when the cursor stands there.
    fn seek_change(&self, seq: u64) -> Result<Option<(usize, u64, u64)>, ReadFault> {
        let at_cursor = self.cursor.filter(|c| c.next_seq == seq).and_then(|c| {
            self.segments
                .iter()
                .position(|s| s.id == c.seg_id)
                .map(|i| (i, c.offset))
        });
        seek_change_in(&self.segments, at_cursor, seq)
    }

    /// Recomputes the append time of the oldest unacknowledged change.
    fn refresh_oldest(&mut self) {
        if self.depth() == 0 {
            self.oldest_ms = None;
            return;
        }
        match self.seek_change(self.acked + 1) {
            Ok(found) => self.oldest_ms = found.map(|(_, _, t)| t),
            Err(ReadFault::Io(e)) => log::warn!("change queue: could not read the oldest change's time: {e}"),
            Err(ReadFault::Corrupt { path, offset, what }) => log::warn!(
                "change queue: could not read the oldest change's time: {} at offset {offset}: {what}",
                path.display()
            ),
        }
    }

    /// Damage found at run time: resync owed (ledger first), all segments dropped.
    fn corrupted(&mut self, path: PathBuf, offset: u64, what: &'static str) -> QueueError {
        log::error!(
            "change queue: corrupt record in {} at offset {offset}: {what}; dropping the queue, a full resync is owed",
            path.display()
        );
        let reason = self.resync.unwrap_or(ResyncReason::CorruptRecord);
        if let Err(e) = self.write_ledger(self.last_seq, Some(reason)) {
            // The damage stays on disk and will be met again by the next read or open.
            log::error!("change queue: could not record the owed resync: {e}");
            return e;
        }
        self.remove_segments(|_, _| true);
        QueueError::Corrupt { path, offset, what }
    }

    /// The queue directory.
    pub fn dir(&self) -> &Path {
        &self.cfg.dir
    }
}

/// Reads the ledger and scans every segment of `dir` (no changes made). Returns what the
/// ledger says, the segments oldest first, and the next free segment id. A segment that
/// disappears while being listed (trimmed by a running agent) is skipped.
fn load_dir(dir: &Path) -> Result<(LedgerRead, Vec<FoundSegment>, u64), QueueError> {
    let ledger_path = dir.join(LEDGER_FILE);
    let ledger_read = match crate::state_dir::read(&ledger_path) {
        Ok(b) => match ledger::decode(&b) {
            Ok(s) => LedgerRead::Found(s),
            Err(LedgerError::Newer(found)) => {
                return Err(QueueError::NewerFormat {
                    path: ledger_path,
                    found,
                    supported: FORMAT_VERSION,
                })
            }
            Err(LedgerError::Corrupt(what)) => LedgerRead::Corrupt(what),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => LedgerRead::Missing,
        Err(e) => return Err(io_err("read ledger", &ledger_path, e)),
    };

    let mut found = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| io_err("list queue directory", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_err("list queue directory", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = parse_segment_name(name) {
            found.push((id, entry.path()));
        }
    }
    found.sort_by_key(|(id, _)| *id);
    let next_segment_id = found.last().map_or(1, |(id, _)| id + 1);
    let mut scanned = Vec::with_capacity(found.len());
    for (id, path) in found {
        let bytes = match crate::state_dir::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("read segment", &path, e)),
        };
        let scan = scan_segment(&bytes);
        if let Err(SegmentHeaderError::Newer(v)) = scan.header {
            return Err(QueueError::NewerFormat {
                path,
                found: v,
                supported: FORMAT_VERSION,
            });
        }
        scanned.push(FoundSegment {
            id,
            path,
            file_len: bytes.len() as u64,
            scan,
        });
    }
    Ok((ledger_read, scanned, next_segment_id))
}

/// Finds the first change with a sequence at or above `seq` in `segments`, starting at
/// `start` (segment index, offset) or else at the first segment that can hold it.
fn seek_change_in(
    segments: &VecDeque<Segment>,
    start: Option<(usize, u64)>,
    seq: u64,
) -> Result<Option<(usize, u64, u64)>, ReadFault> {
    let (mut idx, mut off) = match start {
        Some(p) => p,
        None => match segments
            .iter()
            .position(|s| s.last_seq.is_some_and(|l| l >= seq))
        {
            Some(i) => (i, HDR),
            None => return Ok(None),
        },
    };
    while idx < segments.len() {
        let seg = &segments[idx];
        let mut r = FrameReader::open(&seg.path, off, seg.len)?;
        while let Some((h, _)) = r.next_header()? {
            if h.kind != Kind::Commit && h.seq >= seq {
                return Ok(Some((idx, r.pos(), h.time_ms)));
            }
            r.skip_body(&h)?;
        }
        idx += 1;
        off = HDR;
    }
    Ok(None)
}

/// What recovery does with one segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Keep its first `len` bytes (truncate the rest).
    Keep { len: u64 },
    /// Delete it.
    Delete,
}

/// The outcome of recovery, decided before anything on disk changes.
struct Plan {
    acked: u64,
    last_seq: u64,
    resync: Option<ResyncReason>,
    watermark: Option<Vec<u8>>,
    wm_gen: u64,
    /// Generation the ledger holds once the plan is carried out.
    ledger_gen: u64,
    write_ledger: bool,
    fates: Vec<Fate>,
    newly_owed: Option<(ResyncReason, String)>,
    warnings: Vec<String>,
}

/// Decides recovery from what the ledger and the segment scans say (pure).
fn plan_recovery(ledger: &LedgerRead, segs: &[FoundSegment], max_bytes: u64) -> Plan {
    let mut warnings = Vec::new();
    let mut fates = Vec::with_capacity(segs.len());
    let mut damage: Option<String> = None;
    let mut prev_last: Option<u64> = None;
    let mut max_seq = 0u64;
    let mut first_seq: Option<u64> = None;
    let mut commit: Option<(u64, Vec<u8>)> = None;
    let mut kept_bytes = 0u64;
    for (i, f) in segs.iter().enumerate() {
        let name = f.path.display();
        let is_last = i + 1 == segs.len();
        match &f.scan.header {
            Err(SegmentHeaderError::Torn) if is_last => {
                warnings.push(format!(
                    "{name}: header cut short by a crash while the segment was created; removed"
                ));
                fates.push(Fate::Delete);
                continue;
            }
            Err(SegmentHeaderError::Torn) => {
                damage = Some(format!("{name}: segment header cut short"))
            }
            Err(SegmentHeaderError::Corrupt(what)) => damage = Some(format!("{name}: {what}")),
            Err(SegmentHeaderError::Newer(v)) => {
                damage = Some(format!("{name}: format version {v}"))
            }
            Ok(id) if *id != f.id => damage = Some(format!("{name}: header names segment {id}")),
            Ok(_) => {}
        }
        if damage.is_some() {
            break;
        }
        let s = &f.scan;
        match &s.tail {
            Tail::Corrupt { offset, what } => {
                damage = Some(format!("{name} at offset {offset}: {what}"));
                break;
            }
            Tail::Torn { offset } => {
                warnings.push(format!("{name}: torn record at offset {offset} (crash mid-write); truncated"))
            }
            Tail::Uncommitted => warnings.push(format!(
                "{name}: batch without its commit record after offset {} (crash mid-append); truncated",
                s.committed_end
            )),
            Tail::Clean => {}
        }
        if let (Some(p), Some(first)) = (prev_last, s.first_seq) {
            if p.checked_add(1) != Some(first) {
                damage = Some(format!(
                    "{name}: starts at sequence {first} but the segment before ends at {p}"
                ));
                break;
            }
        }
        if let Some((gen, wm, _)) = &s.last_commit {
            if commit.as_ref().is_some_and(|(g, _)| g >= gen) {
                damage = Some(format!("{name}: watermark generation goes backwards"));
                break;
            }
            commit = Some((*gen, wm.clone()));
        }
        if let Some(l) = s.last_seq {
            prev_last = Some(l);
            max_seq = max_seq.max(l);
            first_seq.get_or_insert(s.first_seq.unwrap_or(l));
        }
        kept_bytes += s.committed_end;
        fates.push(Fate::Keep {
            len: s.committed_end,
        });
    }

    let (l_acked, l_resync, l_wm, l_gen, ledger_problem) = match ledger {
        LedgerRead::Found(l) => (l.acked_seq, l.resync, l.watermark.clone(), l.wm_gen, None),
        LedgerRead::Missing if segs.is_empty() => {
            (0, Some(ResyncReason::NeverSynced), None, 0, None)
        }
        LedgerRead::Missing => (
            0,
            None,
            None,
            0,
            Some((
                ResyncReason::LedgerLost,
                "the ledger is missing but segments exist".to_string(),
            )),
        ),
        LedgerRead::Corrupt(what) => (
            0,
            None,
            None,
            0,
            Some((
                ResyncReason::LedgerCorrupt,
                format!("the ledger is unreadable: {what}"),
            )),
        ),
    };
    if damage.is_none() && ledger_problem.is_none() {
        if let Some(first) = first_seq {
            if max_seq > l_acked && first > l_acked + 1 {
                damage = Some(format!(
                    "changes {} to {} are missing (the ledger acknowledges up to {l_acked}; a segment was lost)",
                    l_acked + 1,
                    first - 1
                ));
            }
        }
    }
    let (wm_gen, watermark) = match commit {
        Some((g, wm)) if g > l_gen => (g, Some(wm)),
        _ => (l_gen, l_wm),
    };
    let overflow = (kept_bytes > max_bytes).then(|| {
        (
            ResyncReason::Overflow,
            format!("the segments hold {kept_bytes} bytes, more than max_bytes ({max_bytes})"),
        )
    });
    let problem = ledger_problem
        .or_else(|| damage.map(|d| (ResyncReason::CorruptRecord, d)))
        .or(overflow);
    let fresh = matches!(ledger, LedgerRead::Missing) && segs.is_empty();
    match problem {
        Some((reason, why)) => {
            // Continue after the highest sequence any segment still shows, damaged or not.
            let seen = segs
                .iter()
                .filter_map(|f| f.scan.last_seq)
                .max()
                .unwrap_or(0);
            let acked = l_acked.max(max_seq).max(seen);
            Plan {
                acked,
                last_seq: acked,
                resync: l_resync.or(Some(reason)),
                watermark,
                wm_gen,
                ledger_gen: wm_gen,
                write_ledger: true,
                fates: vec![Fate::Delete; segs.len()],
                newly_owed: Some((reason, why)),
                warnings,
            }
        }
        None => Plan {
            acked: l_acked,
            last_seq: l_acked.max(max_seq),
            resync: l_resync,
            watermark,
            wm_gen,
            ledger_gen: wm_gen,
            write_ledger: fresh || wm_gen != l_gen,
            fates,
            newly_owed: None,
            warnings,
        },
    }
}
