//! The ledger: the acknowledged sequence, the "full resync owed" flag and the watermark
//! (with its generation), in one small file replaced atomically.
//!
//! Layout (little-endian):
//!
//! ```text
//!  0 "IDRL"
//!  4 version u8                (newer than FORMAT_VERSION: refused)
//!  5 flags u8                  bit 0: a watermark is present; other bits zero
//!  6 resync reason u8          0: no resync owed, else ResyncReason code
//!  7 reserved u8 (0)
//!  8 acked_seq u64             every change with seq <= this is acknowledged (or dropped)
//! 16 watermark generation u64
//! 24 watermark length u32      at most MAX_WATERMARK
//! 28 watermark bytes
//! .. crc32c u32 of every byte before it
//! ```
//!
//! [`encode`] and [`decode`] are pure. [`write_atomic`] is the only writer: temp file,
//! fdatasync, rename over the ledger, fsync of the directory; a crash at any point leaves
//! either the old or the new ledger (plus maybe a stale temp file, which open removes).

use std::path::Path;

use super::crc32c::crc32c;
use super::io::Disk;
use super::record::{FORMAT_VERSION, MAX_WATERMARK};
use super::{QueueError, ResyncReason};

/// File name of the ledger inside the queue directory.
pub const LEDGER_FILE: &str = "ledger";
/// File name the next ledger is written to before it is renamed over [`LEDGER_FILE`].
pub const LEDGER_TMP_FILE: &str = "ledger.tmp";
/// Bytes of a ledger without its watermark.
pub const LEDGER_FIXED_LEN: usize = 32;

const MAGIC: [u8; 4] = *b"IDRL";

/// The decoded ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerState {
    /// Every change with a sequence at or below this is acknowledged or dropped.
    pub acked_seq: u64,
    /// Why a full resync is owed, if one is.
    pub resync: Option<ResyncReason>,
    /// The watermark, if any was ever stored.
    pub watermark: Option<Vec<u8>>,
    /// Generation of the watermark: the higher of this and the newest commit record wins.
    pub wm_gen: u64,
}

/// Why ledger bytes do not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerError {
    /// Written by a newer format version.
    Newer(u8),
    /// Damage (or a cut file, which an atomic write never leaves).
    Corrupt(&'static str),
}

/// Encodes a ledger.
pub fn encode(
    acked_seq: u64,
    resync: Option<ResyncReason>,
    watermark: Option<&[u8]>,
    wm_gen: u64,
) -> Vec<u8> {
    let wm = watermark.unwrap_or(&[]);
    debug_assert!(wm.len() <= MAX_WATERMARK);
    let mut out = Vec::with_capacity(LEDGER_FIXED_LEN + wm.len());
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_VERSION);
    out.push(u8::from(watermark.is_some()));
    out.push(resync.map_or(0, ResyncReason::code));
    out.push(0);
    out.extend_from_slice(&acked_seq.to_le_bytes());
    out.extend_from_slice(&wm_gen.to_le_bytes());
    out.extend_from_slice(&(wm.len() as u32).to_le_bytes());
    out.extend_from_slice(wm);
    let crc = crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes ledger bytes. The version is looked at before the checksum, so a newer layout is
/// refused, not mistaken for damage.
pub fn decode(b: &[u8]) -> Result<LedgerState, LedgerError> {
    if b.len() < 5 || b[0..4] != MAGIC {
        return Err(LedgerError::Corrupt("ledger magic is not IDRL"));
    }
    if b[4] > FORMAT_VERSION {
        return Err(LedgerError::Newer(b[4]));
    }
    if b.len() < LEDGER_FIXED_LEN {
        return Err(LedgerError::Corrupt("ledger shorter than its fixed part"));
    }
    let wm_len = u32::from_le_bytes([b[24], b[25], b[26], b[27]]) as usize;
    if wm_len > MAX_WATERMARK {
        return Err(LedgerError::Corrupt(
            "ledger watermark longer than the limit",
        ));
    }
    if b.len() != LEDGER_FIXED_LEN + wm_len {
        return Err(LedgerError::Corrupt(
            "ledger length does not match its watermark length",
        ));
    }
    let body_end = b.len() - 4;
    let stored = u32::from_le_bytes([
        b[body_end],
        b[body_end + 1],
        b[body_end + 2],
        b[body_end + 3],
    ]);
    if crc32c(&b[..body_end]) != stored {
        return Err(LedgerError::Corrupt("ledger checksum mismatch"));
    }
    if b[4] == 0 || b[5] > 1 || b[7] != 0 {
        return Err(LedgerError::Corrupt(
            "ledger version, flags or reserved byte invalid",
        ));
    }
    let resync = match b[6] {
        0 => None,
        code => Some(
            ResyncReason::from_code(code)
                .ok_or(LedgerError::Corrupt("unknown resync reason code"))?,
        ),
    };
    let has_wm = b[5] == 1;
    if !has_wm && wm_len != 0 {
        return Err(LedgerError::Corrupt(
            "ledger has watermark bytes but no watermark flag",
        ));
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[8..16]);
    let acked_seq = u64::from_le_bytes(a);
    a.copy_from_slice(&b[16..24]);
    let wm_gen = u64::from_le_bytes(a);
    let watermark = has_wm.then(|| b[28..28 + wm_len].to_vec());
    Ok(LedgerState {
        acked_seq,
        resync,
        watermark,
        wm_gen,
    })
}

/// Replaces the ledger in `dir` with `bytes`, durably: write the temp file, fdatasync it,
/// rename it over the ledger, fsync the directory. On error the old ledger is still in place
/// (the temp file is removed when possible).
pub fn write_atomic(disk: &mut Disk, dir: &Path, bytes: &[u8]) -> Result<(), QueueError> {
    let tmp = dir.join(LEDGER_TMP_FILE);
    let dst = dir.join(LEDGER_FILE);
    let res = (|| {
        let mut f = disk.create(&tmp)?;
        disk.write_at(&mut f, &tmp, 0, bytes)?;
        disk.sync_data(&f, &tmp)?;
        drop(f);
        disk.rename(&tmp, &dst)?;
        disk.sync_dir(dir)
    })();
    if res.is_err() && tmp.exists() {
        let _ = disk.remove(&tmp);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for (acked, resync, wm, gen) in [
            (0, Some(ResyncReason::NeverSynced), None, 0),
            (42, None, Some(&b"cookie"[..]), 7),
            (u64::MAX, Some(ResyncReason::Overflow), Some(&b""[..]), 1),
        ] {
            let bytes = encode(acked, resync, wm, gen);
            let got = decode(&bytes).unwrap();
            assert_eq!(
                got,
                LedgerState {
                    acked_seq: acked,
                    resync,
                    watermark: wm.map(<[u8]>::to_vec),
                    wm_gen: gen
                }
            );
        }
    }

    #[test]
    fn every_resync_reason_survives_the_ledger() {
        let mut seen = 0;
        for code in 1..=u8::MAX {
            let Some(reason) = ResyncReason::from_code(code) else {
                continue;
            };
            assert_eq!(reason.code(), code);
            let got = decode(&encode(1, Some(reason), None, 0)).unwrap();
            assert_eq!(got.resync, Some(reason));
            seen += 1;
        }
        assert_eq!(
            seen, 10,
            "a reason added without a ledger code, or one lost"
        );
    }

    #[test]
    fn every_cut_and_every_flip_is_refused() {
        let bytes = encode(5, None, Some(b"usn=1234"), 3);
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut {cut}");
        }
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                assert!(decode(&bad).is_err(), "flip byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn newer_version_is_reported_as_newer() {
        let mut bytes = encode(1, None, None, 0);
        bytes[4] = FORMAT_VERSION + 1;
        assert_eq!(decode(&bytes), Err(LedgerError::Newer(FORMAT_VERSION + 1)));
    }
}
