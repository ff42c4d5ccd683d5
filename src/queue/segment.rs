//! Segment files: the recovery scan (pure, over a whole file's bytes) and the runtime frame
//! reader (streams records from the durable part of a segment).
//!
//! A segment is `NNNNNNNNNNNNNNNNNNNN.seg` (the segment id, 20 decimal digits, so names sort
//! like ids): a header, then batches, each batch its change records followed by one commit
//! record. Only bytes up to the end of the last commit record are durable.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::io::io_err;
use super::record::{
    self, commit_fields, decode_frame, decode_segment_header, FrameError, Header, Kind,
    SegmentHeaderError, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use super::QueueError;

/// File name of segment `id`.
pub fn segment_name(id: u64) -> String {
    format!("{id:020}.seg")
}

/// The segment id a file name stands for, if it is a segment name.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What follows the last commit record of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// Nothing: the file ends with a commit record (or its header).
    Clean,
    /// Whole records of a batch whose commit record never made it: a crash mid-append.
    Uncommitted,
    /// A record cut short at `offset` (or a zero-filled tail): a crash mid-write.
    Torn {
        /// Where the cut record starts.
        offset: u64,
    },
    /// Damage at `offset`.
    Corrupt {
        /// Where the bad record starts.
        offset: u64,
        /// What is wrong with it.
        what: &'static str,
    },
}

/// The result of scanning one segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    /// The id from the header, or why the header is unusable.
    pub header: Result<u64, SegmentHeaderError>,
    /// End of the last commit record (the header's end when there is none).
    pub committed_end: u64,
    /// First committed change sequence.
    pub first_seq: Option<u64>,
    /// Last committed change sequence.
    pub last_seq: Option<u64>,
    /// The newest commit record: (watermark generation, watermark, sequence it covers).
    pub last_commit: Option<(u64, Vec<u8>, u64)>,
    /// What follows `committed_end`.
    pub tail: Tail,
}

/// Scans a whole segment file. Pure; never panics on any input.
pub fn scan_segment(bytes: &[u8]) -> SegmentScan {
    let mut scan = SegmentScan {
        header: decode_segment_header(bytes),
        committed_end: SEGMENT_HEADER_LEN as u64,
        first_seq: None,
        last_seq: None,
        last_commit: None,
        tail: Tail::Clean,
    };
    if scan.header.is_err() {
        scan.committed_end = 0;
        return scan;
    }
    let mut pos = SEGMENT_HEADER_LEN;
    // Changes of the batch being read, not yet covered by a commit record.
    let mut pending: Option<(u64, u64)> = None;
    let mut last_change: Option<u64> = None;
    let mut last_gen: Option<u64> = None;
    while pos < bytes.len() {
        let (h, body) = match decode_frame(&bytes[pos..]) {
            Ok(x) => x,
            Err(FrameError::Torn) => {
                scan.tail = Tail::Torn { offset: pos as u64 };
                return scan;
            }
            Err(FrameError::Corrupt(what)) => {
                scan.tail = Tail::Corrupt {
                    offset: pos as u64,
                    what,
                };
                return scan;
            }
        };
        let corrupt = |what| Tail::Corrupt {
            offset: pos as u64,
            what,
        };
        match h.kind {
            Kind::Change | Kind::DeflatedChange => {
                if let Some(prev) = last_change {
                    if prev.checked_add(1) != Some(h.seq) {
                        scan.tail = corrupt("change sequence does not follow the previous one");
                        return scan;
                    }
                }
                last_change = Some(h.seq);
                pending = Some((pending.map_or(h.seq, |p| p.0), h.seq));
            }
            Kind::Commit => {
                let (gen, wm) = commit_fields(body);
                if last_change.is_some_and(|c| c != h.seq) {
                    scan.tail = corrupt("commit sequence is not its batch's last change");
                    return scan;
                }
                if last_gen.is_some_and(|g| g >= gen) {
                    scan.tail = corrupt("watermark generation does not increase");
                    return scan;
                }
                last_gen = Some(gen);
                if let Some((first, last)) = pending.take() {
                    scan.first_seq.get_or_insert(first);
                    scan.last_seq = Some(last);
                }
                scan.last_commit = Some((gen, wm.to_vec(), h.seq));
                scan.committed_end = (pos + h.frame_len()) as u64;
            }
        }
        pos += h.frame_len();
    }
    if pending.is_some() {
        scan.tail = Tail::Uncommitted;
    }
    scan
}

/// Why a runtime read stopped.
#[derive(Debug)]
pub(crate) enum ReadFault {
    /// The disk failed to read.
    Io(QueueError),
    /// A record in the durable part failed its checks.
    Corrupt {
        /// Segment file.
        path: PathBuf,
        /// Where the record starts.
        offset: u64,
        /// What is wrong.
        what: &'static str,
    },
}

/// Streams frames from `[offset, end)` of one segment; `end` is the durable length, so a
/// frame that does not fit is damage, not a torn tail.
pub(crate) struct FrameReader {
    r: BufReader<File>,
    path: PathBuf,
    pos: u64,
    end: u64,
}

impl FrameReader {
    /// Opens `path` positioned at `offset`.
    pub(crate) fn open(path: &Path, offset: u64, end: u64) -> Result<FrameReader, ReadFault> {
        let f = crate::state_dir::open(path)
            .map_err(|e| ReadFault::Io(io_err("open segment", path, e)))?;
        let mut r = BufReader::with_capacity(64 << 10, f);
        r.seek(SeekFrom::Start(offset))
            .map_err(|e| ReadFault::Io(io_err("seek segment", path, e)))?;
        Ok(FrameReader {
            r,
            path: path.to_path_buf(),
            pos: offset,
            end,
        })
    }

    /// Offset of the next frame.
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    fn corrupt(&self, what: &'static str) -> ReadFault {
        ReadFault::Corrupt {
            path: self.path.clone(),
            offset: self.pos,
            what,
        }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ReadFault> {
        let path = &self.path;
        self.r
            .read_exact(buf)
            .map_err(|e| ReadFault::Io(io_err("read segment", path, e)))
    }

    /// Reads the next frame's header (None at the end); the reader then stands at the body.
    pub(crate) fn next_header(
        &mut self,
    ) -> Result<Option<(Header, [u8; RECORD_HEADER_LEN])>, ReadFault> {
        if self.pos >= self.end {
            return Ok(None);
        }
        if self.end - self.pos < RECORD_HEADER_LEN as u64 {
            return Err(self.corrupt("durable segment part ends inside a record header"));
        }
        let mut hb = [0u8; RECORD_HEADER_LEN];
        self.read_exact(&mut hb)?;
        let h = match record::decode_header(&hb) {
            Ok(h) => h,
            Err(FrameError::Torn) => {
                return Err(self.corrupt("zeroed record header in the durable part"))
            }
            Err(FrameError::Corrupt(what)) => return Err(self.corrupt(what)),
        };
        if self.pos + h.frame_len() as u64 > self.end {
            return Err(self.corrupt("record runs past the durable end of its segment"));
        }
        Ok(Some((h, hb)))
    }

    /// Reads and checks the body of the frame whose header was just read; advances.
    pub(crate) fn read_body(
        &mut self,
        h: &Header,
        hb: &[u8; RECORD_HEADER_LEN],
    ) -> Result<Vec<u8>, ReadFault> {
        let mut body = vec![0u8; h.len as usize];
        self.read_exact(&mut body)?;
        match record::check_body(h, hb, &body) {
            Ok(()) => {}
            Err(FrameError::Torn) => return Err(self.corrupt("record body cut")),
            Err(FrameError::Corrupt(what)) => return Err(self.corrupt(what)),
        }
        self.pos += h.frame_len() as u64;
        Ok(body)
    }

    /// Skips the body of the frame whose header was just read; advances.
    pub(crate) fn skip_body(&mut self, h: &Header) -> Result<(), ReadFault> {
        let path = &self.path;
        self.r
            .seek_relative(i64::from(h.len))
            .map_err(|e| ReadFault::Io(io_err("seek segment", path, e)))?;
        self.pos += h.frame_len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::record::{encode_change, encode_commit, encode_segment_header};

    fn segment(batches: &[(&[&[u8]], u64)]) -> Vec<u8> {
        let mut out = encode_segment_header(1).to_vec();
        let mut seq = 0;
        for (gen, (payloads, _)) in batches.iter().enumerate() {
            for p in payloads.iter() {
                seq += 1;
                encode_change(&mut out, seq, 100, p, usize::MAX);
            }
            encode_commit(&mut out, seq, 100, gen as u64 + 1, b"wm");
        }
        out
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name("42.seg"), None);
        assert_eq!(parse_segment_name("ledger"), None);
    }

    #[test]
    fn clean_segment_scan() {
        let bytes = segment(&[(&[b"a", b"b"], 0), (&[], 0), (&[b"c"], 0)]);
        let s = scan_segment(&bytes);
        assert_eq!(s.header, Ok(1));
        assert_eq!((s.first_seq, s.last_seq), (Some(1), Some(3)));
        assert_eq!(s.committed_end, bytes.len() as u64);
        assert_eq!(s.tail, Tail::Clean);
        assert_eq!(s.last_commit.map(|c| (c.0, c.2)), Some((3, 3)));
    }

    #[test]
    fn uncommitted_and_torn_tails() {
        let mut bytes = segment(&[(&[b"a"], 0)]);
        let end = bytes.len() as u64;
        encode_change(&mut bytes, 2, 100, b"b", usize::MAX);
        let s = scan_segment(&bytes);
        assert_eq!(
            (s.committed_end, s.tail.clone(), s.last_seq),
            (end, Tail::Uncommitted, Some(1))
        );
        bytes.truncate(bytes.len() - 1);
        assert_eq!(scan_segment(&bytes).tail, Tail::Torn { offset: end });
    }
}
