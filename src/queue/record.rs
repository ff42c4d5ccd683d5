//! Record and segment-header framing: encode and decode, pure (no I/O).
//!
//! Layout (all integers little-endian; the authoritative description with the reasons is in
//! the module doc of [`crate::queue`]):
//!
//! ```text
//! segment header (20 bytes): "IDRQ" | version u8 | 0 0 0 | segment id u64 | crc32c(bytes 0..16) u32
//! record (32-byte header + body):
//!   0 len u32        body length in bytes
//!   4 crc u32        CRC32C of bytes 8 .. 32+len (rest of the header and the body)
//!   8 seq u64        sequence number (commit: the last change sequence of its batch)
//!  16 kind u8        1 change, 2 deflated change, 3 commit
//!  17 0 0 0          reserved, zero
//!  20 time u64       unix milliseconds when the batch was appended
//!  28 hcrc u32       CRC32C of bytes 0..4 and 8..28 (the header without `crc`)
//!  32 body           change: the payload; deflated change: uncompressed len u32 | raw deflate;
//!                    commit: watermark generation u64 | watermark bytes
//! ```
//!
//! The separate header checksum is what tells a torn tail from corruption: a header that
//! checks but whose body runs past the end of the file was cut by a crash; a header that
//! does not check (and is not all zero bytes) is damage.

use miniz_oxide::deflate::core::{
    compress_to_output, create_comp_flags_from_zip_params, CompressorOxide, TDEFLFlush, TDEFLStatus,
};
use miniz_oxide::inflate::core::inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF;
use miniz_oxide::inflate::core::{decompress, DecompressorOxide};
use miniz_oxide::inflate::TINFLStatus;

use super::crc32c::{crc32c, update};

/// First four bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 4] = *b"IDRQ";
/// Format version written into segment headers and the ledger; newer versions are refused.
pub const FORMAT_VERSION: u8 = 1;
/// Bytes of a segment header.
pub const SEGMENT_HEADER_LEN: usize = 20;
/// Bytes of a record header (before the body).
pub const RECORD_HEADER_LEN: usize = 32;
/// Largest payload (uncompressed) one change may carry.
pub const MAX_PAYLOAD: usize = 16 << 20;
/// Largest watermark (directory cookie / USN vector) the queue stores.
pub const MAX_WATERMARK: usize = 64 << 10;
/// Largest body a record header may announce; anything larger is corruption.
pub const MAX_BODY: usize = MAX_PAYLOAD + 4;
/// Deflate level for payloads at or above the configured threshold (miniz_oxide, 1 = fastest).
pub const DEFLATE_LEVEL: u8 = 1;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A change, payload stored as is.
    Change,
    /// A change, payload deflated.
    DeflatedChange,
    /// End of a batch: the watermark that covers every change before it.
    Commit,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Change => 1,
            Kind::DeflatedChange => 2,
            Kind::Commit => 3,
        }
    }

    fn from_code(code: u8) -> Option<Kind> {
        match code {
            1 => Some(Kind::Change),
            2 => Some(Kind::DeflatedChange),
            3 => Some(Kind::Commit),
            _ => None,
        }
    }
}

/// Why bytes do not decode to a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The bytes end inside the record (or are a zero-filled tail): what a crash mid-write
    /// leaves behind.
    Torn,
    /// The bytes are complete but wrong: damage, never skipped.
    Corrupt(&'static str),
}

/// A decoded, checked record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Body length.
    pub len: u32,
    /// Body checksum as stored.
    pub crc: u32,
    /// Sequence number.
    pub seq: u64,
    /// Record kind.
    pub kind: Kind,
    /// Append time, unix milliseconds.
    pub time_ms: u64,
}

impl Header {
    /// Bytes of the whole record, header included.
    pub fn frame_len(&self) -> usize {
        RECORD_HEADER_LEN + self.len as usize
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn header_crc(h: &[u8]) -> u32 {
    update(crc32c(&h[0..4]), &h[8..28])
}

/// Appends one framed record with the given body parts to `out`.
fn push_frame(out: &mut Vec<u8>, seq: u64, kind: Kind, time_ms: u64, parts: &[&[u8]]) {
    let start = out.len();
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let len = u32::try_from(len).expect("record body fits u32 (callers bound payloads)");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&[kind.code(), 0, 0, 0]);
    out.extend_from_slice(&time_ms.to_le_bytes());
    let hcrc = header_crc(&out[start..start + 28]);
    out.extend_from_slice(&hcrc.to_le_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
    let crc = crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// A raw-deflate compressor kept across payloads: miniz_oxide's compressor state is a few
/// hundred KiB, and setting one up per 300-byte payload would cost more than compressing it.
pub struct Deflater {
    state: Box<CompressorOxide>,
    packed: Vec<u8>,
}

impl Default for Deflater {
    fn default() -> Deflater {
        let flags = create_comp_flags_from_zip_params(i32::from(DEFLATE_LEVEL), 0, 0);
        Deflater {
            state: Box::new(CompressorOxide::new(flags)),
            packed: Vec::new(),
        }
    }
}

impl Deflater {
    /// Appends a change record to `out`; deflates the payload when it is at least
    /// `compress_min` bytes long and deflating makes it smaller. `payload.len()` must not
    /// exceed [`MAX_PAYLOAD`].
    pub fn encode_change(
        &mut self,
        out: &mut Vec<u8>,
        seq: u64,
        time_ms: u64,
        payload: &[u8],
        compress_min: usize,
    ) {
        debug_assert!(payload.len() <= MAX_PAYLOAD);
        if payload.len() >= compress_min {
            self.state.reset();
            self.packed.clear();
            let packed = &mut self.packed;
            let (status, _) =
                compress_to_output(&mut self.state, payload, TDEFLFlush::Finish, |chunk| {
                    packed.extend_from_slice(chunk);
                    true
                });
            if status == TDEFLStatus::Done && self.packed.len() + 4 < payload.len() {
                let ulen = (payload.len() as u32).to_le_bytes();
                push_frame(
                    out,
                    seq,
                    Kind::DeflatedChange,
                    time_ms,
                    &[&ulen, &self.packed],
                );
                if self.packed.capacity() > 1 << 20 {
                    self.packed = Vec::new();
                }
                return;
            }
        }
        push_frame(out, seq, Kind::Change, time_ms, &[payload]);
    }
}

/// [`Deflater::encode_change`] with a one-off deflater (tests).
#[cfg(test)]
pub fn encode_change(
    out: &mut Vec<u8>,
    seq: u64,
    time_ms: u64,
    payload: &[u8],
    compress_min: usize,
) {
    Deflater::default().encode_change(out, seq, time_ms, payload, compress_min);
}

/// Appends a commit record (end of batch) to `out`. `watermark.len()` must not exceed
/// [`MAX_WATERMARK`].
pub fn encode_commit(out: &mut Vec<u8>, seq: u64, time_ms: u64, generation: u64, watermark: &[u8]) {
    debug_assert!(watermark.len() <= MAX_WATERMARK);
    push_frame(
        out,
        seq,
        Kind::Commit,
        time_ms,
        &[&generation.to_le_bytes(), watermark],
    );
}

/// Re-frames a decoded record from its header fields and raw body (used by the fuzz checks:
/// decode then re-frame must give back the same bytes).
pub fn reframe(h: &Header, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + body.len());
    push_frame(&mut out, h.seq, h.kind, h.time_ms, &[body]);
    out
}

/// Decodes and checks a record header. `rest` is everything from the header's first byte to
/// the end of the file: it decides between torn (zero tail, short) and corrupt.
pub fn decode_header(rest: &[u8]) -> Result<Header, FrameError> {
    if rest.len() < RECORD_HEADER_LEN {
        return Err(FrameError::Torn);
    }
    let h = &rest[..RECORD_HEADER_LEN];
    if header_crc(h) != u32_at(h, 28) {
        if rest.iter().all(|&b| b == 0) {
            return Err(FrameError::Torn);
        }
        return Err(FrameError::Corrupt("record header checksum mismatch"));
    }
    let kind = Kind::from_code(h[16]).ok_or(FrameError::Corrupt("unknown record kind"))?;
    if h[17..20] != [0, 0, 0] {
        return Err(FrameError::Corrupt(
            "reserved record header bytes are not zero",
        ));
    }
    let len = u32_at(h, 0);
    if len as usize > MAX_BODY {
        return Err(FrameError::Corrupt("record length beyond the format limit"));
    }
    Ok(Header {
        len,
        crc: u32_at(h, 4),
        seq: u64_at(h, 8),
        kind,
        time_ms: u64_at(h, 20),
    })
}

/// Checks a record body against its header: checksum and the kind's own shape.
/// `header_bytes` are the 32 header bytes as read.
pub fn check_body(h: &Header, header_bytes: &[u8], body: &[u8]) -> Result<(), FrameError> {
    debug_assert_eq!(body.len(), h.len as usize);
    if update(crc32c(&header_bytes[8..RECORD_HEADER_LEN]), body) != h.crc {
        return Err(FrameError::Corrupt("record checksum mismatch"));
    }
    match h.kind {
        Kind::Change => Ok(()),
        Kind::DeflatedChange => {
            if body.len() < 4 {
                return Err(FrameError::Corrupt(
                    "deflated record shorter than its length prefix",
                ));
            }
            if u32_at(body, 0) as usize > MAX_PAYLOAD {
                return Err(FrameError::Corrupt(
                    "deflated record announces a payload beyond the limit",
                ));
            }
            Ok(())
        }
        Kind::Commit => {
            if body.len() < 8 {
                return Err(FrameError::Corrupt(
                    "commit record shorter than its generation",
                ));
            }
            if body.len() - 8 > MAX_WATERMARK {
                return Err(FrameError::Corrupt(
                    "commit record watermark beyond the limit",
                ));
            }
            Ok(())
        }
    }
}

/// Decodes one whole record at the start of `rest` (the rest of the file). Returns the
/// header and the body slice; the frame is `header.frame_len()` bytes long.
pub fn decode_frame(rest: &[u8]) -> Result<(Header, &[u8]), FrameError> {
    let h = decode_header(rest)?;
    let end = h.frame_len();
    if rest.len() < end {
        return Err(FrameError::Torn);
    }
    let body = &rest[RECORD_HEADER_LEN..end];
    check_body(&h, &rest[..RECORD_HEADER_LEN], body)?;
    Ok((h, body))
}

/// The payload of a checked change record: the body itself, or the body inflated with a size
/// limit of the announced length (which must then match exactly).
pub fn change_payload(
    kind: Kind,
    body: Vec<u8>,
    inflater: &mut Inflater,
) -> Result<Vec<u8>, FrameError> {
    match kind {
        Kind::Change => Ok(body),
        Kind::DeflatedChange => inflater.inflate(&body[4..], u32_at(&body, 0) as usize),
        Kind::Commit => Err(FrameError::Corrupt("commit record read as a change")),
    }
}

/// A raw-inflate state kept across payloads (resetting it costs nothing; allocating it per
/// payload would cost more than inflating a small one).
#[derive(Default)]
pub struct Inflater {
    state: Box<DecompressorOxide>,
}

impl Inflater {
    /// Inflates `input` into exactly `want` bytes: a stream that needs more room, ends
    /// early or is malformed is damage. `want` is at most [`MAX_PAYLOAD`] (checked with
    /// the record), so the output never grows past it.
    fn inflate(&mut self, input: &[u8], want: usize) -> Result<Vec<u8>, FrameError> {
        self.state.init();
        let mut out = vec![0u8; want];
        let (status, _, n) = decompress(
            &mut self.state,
            input,
            &mut out,
            0,
            TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF,
        );
        match status {
            TINFLStatus::Done if n == want => Ok(out),
            TINFLStatus::Done => Err(FrameError::Corrupt(
                "deflated payload inflates to fewer bytes than announced",
            )),
            TINFLStatus::HasMoreOutput => Err(FrameError::Corrupt(
                "deflated payload inflates beyond its announced length",
            )),
            _ => Err(FrameError::Corrupt("deflated payload does not inflate")),
        }
    }
}

/// Generation and watermark of a checked commit record body.
pub fn commit_fields(body: &[u8]) -> (u64, &[u8]) {
    (u64_at(body, 0), &body[8..])
}

/// The 20 bytes that start segment `id`.
pub fn encode_segment_header(id: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[0..4].copy_from_slice(&SEGMENT_MAGIC);
    h[4] = FORMAT_VERSION;
    h[8..16].copy_from_slice(&id.to_le_bytes());
    let crc = crc32c(&h[0..16]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Why a segment header does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentHeaderError {
    /// Shorter than a header, or all zero bytes: a segment whose creation was cut short.
    Torn,
    /// Written by a newer format version: refuse, do not touch.
    Newer(u8),
    /// Damage.
    Corrupt(&'static str),
}

/// Decodes a segment header from the start of a segment file's bytes; returns the id.
/// The version is looked at before the checksum, so a newer layout is refused, not
/// mistaken for damage.
pub fn decode_segment_header(file: &[u8]) -> Result<u64, SegmentHeaderError> {
    if file.len() < SEGMENT_HEADER_LEN || file.iter().all(|&b| b == 0) {
        if file.len() >= 5 && file[0..4] == SEGMENT_MAGIC && file[4] > FORMAT_VERSION {
            return Err(SegmentHeaderError::Newer(file[4]));
        }
        return Err(SegmentHeaderError::Torn);
    }
    if file[0..4] != SEGMENT_MAGIC {
        return Err(SegmentHeaderError::Corrupt("segment magic is not IDRQ"));
    }
    if file[4] > FORMAT_VERSION {
        return Err(SegmentHeaderError::Newer(file[4]));
    }
    if crc32c(&file[0..16]) != u32_at(file, 16) {
        return Err(SegmentHeaderError::Corrupt(
            "segment header checksum mismatch",
        ));
    }
    if file[4] == 0 || file[5..8] != [0, 0, 0] {
        return Err(SegmentHeaderError::Corrupt(
            "segment header version or reserved bytes invalid",
        ));
    }
    Ok(u64_at(file, 8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_round_trip_raw_and_deflated() {
        let small = b"cn=alice changed".to_vec();
        let big: Vec<u8> = b"member: cn=user,ou=people,dc=branch,dc=test\n".repeat(200);
        for (payload, kind) in [(&small, Kind::Change), (&big, Kind::DeflatedChange)] {
            let mut out = Vec::new();
            encode_change(&mut out, 7, 1234, payload, 64);
            let (h, body) = decode_frame(&out).unwrap();
            assert_eq!((h.seq, h.kind, h.time_ms), (7, kind, 1234));
            assert_eq!(h.frame_len(), out.len());
            assert_eq!(
                &change_payload(h.kind, body.to_vec(), &mut Inflater::default()).unwrap(),
                payload
            );
            assert_eq!(reframe(&h, body), out);
        }
    }

    #[test]
    fn incompressible_payload_is_stored_raw() {
        let mut rng = fastrand::Rng::with_seed(9);
        let noise: Vec<u8> = (0..4096).map(|_| rng.u8(..)).collect();
        let mut out = Vec::new();
        encode_change(&mut out, 1, 0, &noise, 16);
        assert_eq!(decode_frame(&out).unwrap().0.kind, Kind::Change);
    }

    #[test]
    fn commit_round_trip() {
        let mut out = Vec::new();
        encode_commit(&mut out, 9, 5, 42, b"cookie");
        let (h, body) = decode_frame(&out).unwrap();
        assert_eq!((h.seq, h.kind), (9, Kind::Commit));
        assert_eq!(commit_fields(body), (42, &b"cookie"[..]));
    }

    #[test]
    fn torn_and_corrupt_are_told_apart() {
        let mut out = Vec::new();
        encode_change(&mut out, 1, 0, b"payload bytes", usize::MAX);
        for cut in 0..out.len() {
            assert_eq!(
                decode_frame(&out[..cut]).unwrap_err(),
                FrameError::Torn,
                "cut at {cut}"
            );
        }
        assert_eq!(decode_frame(&[0u8; 100]).unwrap_err(), FrameError::Torn);
        for i in 0..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0x10;
            match decode_frame(&bad) {
                Err(FrameError::Corrupt(_)) => {}
                // A flipped length that now reaches past the end looks torn only if the header
                // checksum still matches, which a single flipped bit never allows.
                other => panic!("flip at byte {i}: {other:?}"),
            }
        }
    }

    #[test]
    fn deflate_bomb_is_refused_by_the_limit() {
        let zeros = vec![0u8; 1 << 20];
        let packed = miniz_oxide::deflate::compress_to_vec(&zeros, 6);
        let mut body = 100u32.to_le_bytes().to_vec();
        body.extend_from_slice(&packed);
        assert!(change_payload(Kind::DeflatedChange, body, &mut Inflater::default()).is_err());
    }

    #[test]
    fn segment_header_rules() {
        let h = encode_segment_header(77);
        assert_eq!(decode_segment_header(&h), Ok(77));
        assert_eq!(
            decode_segment_header(&h[..10]),
            Err(SegmentHeaderError::Torn)
        );
        assert_eq!(
            decode_segment_header(&[0u8; 20]),
            Err(SegmentHeaderError::Torn)
        );
        let mut newer = h;
        newer[4] = FORMAT_VERSION + 1;
        assert_eq!(
            decode_segment_header(&newer),
            Err(SegmentHeaderError::Newer(FORMAT_VERSION + 1))
        );
        let mut bad = h;
        bad[9] ^= 1;
        assert!(matches!(
            decode_segment_header(&bad),
            Err(SegmentHeaderError::Corrupt(_))
        ));
    }
}
