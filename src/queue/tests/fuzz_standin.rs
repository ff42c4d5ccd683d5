//! The stand-in for the cargo-fuzz targets in `fuzz/` that runs in a normal `cargo test`:
//! the same entry points ([`crate::queue::fuzzing`]) over arbitrary bytes and over damaged
//! valid segments and ledgers. Also: every cut of a valid segment reads as torn (never as
//! damage), and every flipped bit of one reads as damage (never silently as fewer records).

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

use super::super::ledger;
use super::super::record::{
    encode_change, encode_commit, encode_segment_header, SegmentHeaderError,
};
use super::super::segment::{scan_segment, Tail};
use crate::queue::{fuzzing, ResyncReason};

/// A valid segment: batches of changes, each closed by a commit record.
fn segment(batches: &[Vec<Vec<u8>>]) -> Vec<u8> {
    let mut out = encode_segment_header(3).to_vec();
    let mut seq = 10;
    for (i, b) in batches.iter().enumerate() {
        for p in b {
            seq += 1;
            encode_change(&mut out, seq, 77, p, 16);
        }
        encode_commit(&mut out, seq, 77, i as u64 + 1, b"watermark");
    }
    out
}

fn batches() -> impl Strategy<Value = Vec<Vec<Vec<u8>>>> {
    let payload = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        (any::<u8>(), 0..200usize).prop_map(|(b, n)| vec![b; n]),
    ];
    prop::collection::vec(prop::collection::vec(payload, 0..4), 1..5)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
        fuzzing::segment_and_record(&data);
        fuzzing::ledger(&data);
        // The same bytes behind a valid segment header reach the record decoder.
        let mut seg = encode_segment_header(1).to_vec();
        seg.extend_from_slice(&data);
        fuzzing::segment_and_record(&seg);
    }

    #[test]
    fn cut_segment_is_torn_never_damage(b in batches(), cut in any::<prop::sample::Index>()) {
        let seg = segment(&b);
        let cut = cut.index(seg.len() + 1);
        let s = scan_segment(&seg[..cut]);
        fuzzing::segment_and_record(&seg[..cut]);
        match s.header {
            Err(SegmentHeaderError::Torn) => prop_assert!(cut < 20),
            Err(e) => prop_assert!(false, "cut header read as {:?}", e),
            Ok(_) => prop_assert!(!matches!(s.tail, Tail::Corrupt { .. }), "cut at {} read as {:?}", cut, s.tail),
        }
        prop_assert!(s.committed_end <= cut as u64);
    }

    #[test]
    fn flipped_bit_is_damage_never_silent(b in batches(), at in any::<prop::sample::Index>(), bit in 0..8u8) {
        let mut seg = segment(&b);
        let at = at.index(seg.len());
        seg[at] ^= 1 << bit;
        let s = scan_segment(&seg);
        fuzzing::segment_and_record(&seg);
        let flagged = matches!(s.header, Err(SegmentHeaderError::Corrupt(_)) | Err(SegmentHeaderError::Newer(_)))
            || matches!(s.tail, Tail::Corrupt { .. });
        prop_assert!(flagged, "flip at {} bit {} read as {:?}", at, bit, s);
    }

    #[test]
    fn damaged_ledger_is_refused(acked in any::<u64>(), gen in any::<u64>(),
                                 wm in prop::option::of(prop::collection::vec(any::<u8>(), 0..40)),
                                 at in any::<prop::sample::Index>(), bit in 0..8u8) {
        let good = ledger::encode(acked, Some(ResyncReason::Overflow), wm.as_deref(), gen);
        fuzzing::ledger(&good);
        let mut bad = good.clone();
        let at = at.index(bad.len());
        bad[at] ^= 1 << bit;
        fuzzing::ledger(&bad);
        prop_assert!(ledger::decode(&bad).is_err());
        for cut in [0, good.len() / 2, good.len() - 1] {
            prop_assert!(ledger::decode(&good[..cut]).is_err());
        }
    }
}
