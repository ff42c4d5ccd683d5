//! One test per recovery rule of the module doc; each writes the bad bytes on disk itself.

use std::fs;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::super::ledger::{LEDGER_FILE, LEDGER_TMP_FILE};
use super::super::record::{encode_change, FORMAT_VERSION, SEGMENT_HEADER_LEN};
use super::*;
use crate::queue::{AppendOutcome, QueueStats, ResyncReason};

fn open(dir: &Path) -> Queue {
    Queue::open(small_cfg(dir)).unwrap()
}

/// A queue with the initial resync done and `batches` batches of two changes each.
fn filled(dir: &Path, batches: u64) -> Queue {
    let mut q = open(dir);
    q.mark_resync_done(b"wm-0").unwrap();
    for b in 0..batches {
        let p = [
            format!("change {}", 2 * b + 1),
            format!("change {}", 2 * b + 2),
        ];
        q.append(&p, format!("wm-{}", b + 1).as_bytes()).unwrap();
    }
    q
}

fn all(q: &mut Queue) -> Vec<(u64, Vec<u8>)> {
    q.read(None, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| (r.seq, r.payload))
        .collect()
}

/// Incompressible bytes.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n).map(|_| rng.u8(..)).collect()
}

fn flip(path: &Path, at: usize) {
    let mut b = fs::read(path).unwrap();
    b[at] ^= 0x5A;
    fs::write(path, b).unwrap();
}

fn append_raw(path: &Path, bytes: &[u8]) {
    let mut b = fs::read(path).unwrap();
    b.extend_from_slice(bytes);
    fs::write(path, b).unwrap();
}

fn assert_dropped_with(q: &Queue, reason: ResyncReason, last_seq: u64) {
    let s = q.stats();
    assert_eq!(s.resync_owed, Some(reason));
    assert_eq!((s.depth, s.segments, s.bytes), (0, 0, 0));
    assert_eq!(s.acked_seq, last_seq);
    assert!(segment_files(q.dir()).is_empty());
}

#[test]
fn new_queue_owes_a_full_resync_until_one_is_done() {
    let d = TestDir::new("new");
    let q = open(d.path());
    assert_eq!(q.resync_reason(), Some(ResyncReason::NeverSynced));
    assert_eq!(q.watermark(), None);
    drop(q);
    let mut q = open(d.path());
    assert_eq!(q.resync_reason(), Some(ResyncReason::NeverSynced));
    q.mark_resync_done(b"cookie-1").unwrap();
    drop(q);
    let q = open(d.path());
    assert!(!q.resync_owed());
    assert_eq!(q.watermark(), Some(&b"cookie-1"[..]));
}

#[test]
fn append_read_ack_survive_reopen_in_order() {
    let d = TestDir::new("roundtrip");
    let mut q = filled(d.path(), 3);
    assert_eq!(q.stats().depth, 6);
    let got = all(&mut q);
    assert_eq!(
        got.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 6]
    );
    assert_eq!(got[4].1, b"change 5");
    // Continue after a sequence, and from below the acknowledged one.
    assert_eq!(q.read(Some(4), 1).unwrap()[0].seq, 5);
    q.ack(3).unwrap();
    assert_eq!(q.read(Some(1), 10).unwrap()[0].seq, 4);
    assert_eq!(q.watermark(), Some(&b"wm-3"[..]));
    drop(q);
    let mut q = open(d.path());
    assert_eq!(q.stats().acked_seq, 3);
    assert_eq!(q.watermark(), Some(&b"wm-3"[..]));
    assert_eq!(
        all(&mut q).iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![4, 5, 6]
    );
    // Watermark-only batch.
    assert_eq!(
        q.append::<Vec<u8>>(&[], b"wm-4").unwrap(),
        AppendOutcome::Appended {
            first_seq: 7,
            last_seq: 6
        }
    );
    drop(q);
    let q = open(d.path());
    assert_eq!(q.watermark(), Some(&b"wm-4"[..]));
    assert!(matches!(
        q.stats(),
        QueueStats {
            depth: 3,
            last_seq: 6,
            ..
        }
    ));
}

#[test]
fn ack_beyond_the_end_is_refused() {
    let d = TestDir::new("ackend");
    let mut q = filled(d.path(), 1);
    let e = q.ack(3).unwrap_err();
    assert!(
        matches!(
            e,
            QueueError::AckBeyondEnd {
                upto: 3,
                last_seq: 2
            }
        ),
        "{e}"
    );
    q.ack(2).unwrap();
    q.ack(1).unwrap(); // already acknowledged: nothing happens
    assert_eq!(q.stats().acked_seq, 2);
}

#[test]
fn torn_tail_is_truncated() {
    let d = TestDir::new("torn");
    drop(filled(d.path(), 2));
    let seg = segment_files(d.path()).pop().unwrap();
    let good_len = fs::metadata(&seg).unwrap().len();
    let mut rec = Vec::new();
    encode_change(
        &mut rec,
        5,
        0,
        b"a change whose write was cut by a crash",
        usize::MAX,
    );
    for cut in [1, 20, 31, 32, rec.len() - 1] {
        append_raw(&seg, &rec[..cut]);
        let mut q = open(d.path());
        assert!(!q.resync_owed(), "cut {cut}");
        assert_eq!(fs::metadata(&seg).unwrap().len(), good_len, "cut {cut}");
        assert_eq!(all(&mut q).len(), 4);
    }
    // A zero-filled tail (size extended, data never written) is torn too.
    append_raw(&seg, &[0u8; 300]);
    let mut q = open(d.path());
    assert!(!q.resync_owed());
    assert_eq!(fs::metadata(&seg).unwrap().len(), good_len);
    assert_eq!(
        q.append(&[b"next"], b"wm-x").unwrap(),
        AppendOutcome::Appended {
            first_seq: 5,
            last_seq: 5
        }
    );
}

#[test]
fn uncommitted_batch_is_truncated() {
    let d = TestDir::new("uncommitted");
    drop(filled(d.path(), 1));
    let seg = segment_files(d.path()).pop().unwrap();
    let good_len = fs::metadata(&seg).unwrap().len();
    // Two whole change records but no commit record: the append never returned.
    let mut recs = Vec::new();
    encode_change(&mut recs, 3, 0, b"three", usize::MAX);
    encode_change(&mut recs, 4, 0, b"four", usize::MAX);
    append_raw(&seg, &recs);
    let mut q = open(d.path());
    assert!(!q.resync_owed());
    assert_eq!(fs::metadata(&seg).unwrap().len(), good_len);
    assert_eq!(q.stats().last_seq, 2);
    assert_eq!(q.watermark(), Some(&b"wm-1"[..]));
    assert_eq!(
        q.append(&[b"three again"], b"wm-2").unwrap(),
        AppendOutcome::Appended {
            first_seq: 3,
            last_seq: 3
        }
    );
    assert_eq!(all(&mut q).last().unwrap().1, b"three again");
}

#[test]
fn torn_segment_header_is_removed() {
    let d = TestDir::new("tornheader");
    drop(filled(d.path(), 1));
    let last = segment_files(d.path()).pop().unwrap();
    let id: u64 = last.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    let next = d.path().join(format!("{:020}.seg", id + 1));
    fs::write(&next, &b"IDRQ\x01"[..]).unwrap();
    let mut q = open(d.path());
    assert!(!q.resync_owed());
    assert!(!next.exists());
    assert_eq!(all(&mut q).len(), 2);
}

#[test]
fn bad_checksum_forces_full_resync() {
    let d = TestDir::new("badcrc");
    drop(filled(d.path(), 3));
    let seg = segment_files(d.path()).remove(0);
    let len = fs::metadata(&seg).unwrap().len() as usize;
    // A byte inside the last batch's last change: the record is complete, its checksum
    // fails. (Commit record: 32 + 8 + "wm-3".len() bytes; the change body ends before it.)
    flip(&seg, len - (32 + 8 + 4) - 3);
    let q = open(d.path());
    assert_dropped_with(&q, ResyncReason::CorruptRecord, 4);
    drop(q);
    // Durable: still owed after another restart; sequences continue after the highest
    // one still readable.
    let mut q = open(d.path());
    assert_eq!(q.resync_reason(), Some(ResyncReason::CorruptRecord));
    assert_eq!(
        q.append(&[b"after"], b"w").unwrap(),
        AppendOutcome::Appended {
            first_seq: 5,
            last_seq: 5
        }
    );
}

#[test]
fn flipped_length_is_damage_not_a_torn_tail() {
    let d = TestDir::new("badlen");
    drop(filled(d.path(), 2));
    let seg = segment_files(d.path()).remove(0);
    // High byte of the first record's length: it now "runs past the end", but its header
    // checksum fails, so this is damage, never a silently truncated tail.
    flip(&seg, SEGMENT_HEADER_LEN + 3);
    let q = open(d.path());
    assert_dropped_with(&q, ResyncReason::CorruptRecord, 0);
}

#[test]
fn corruption_found_by_read_forces_full_resync() {
    let d = TestDir::new("readcrc");
    let mut q = filled(d.path(), 2);
    let seg = segment_files(d.path()).remove(0);
    flip(&seg, SEGMENT_HEADER_LEN + 32 + 1);
    let e = q.read(None, 10).unwrap_err();
    assert!(matches!(e, QueueError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("full resync owed"), "{e}");
    assert_dropped_with(&q, ResyncReason::CorruptRecord, 4);
    drop(q);
    assert_eq!(
        open(d.path()).resync_reason(),
        Some(ResyncReason::CorruptRecord)
    );
}

#[test]
fn missing_segment_forces_full_resync() {
    let d = TestDir::new("missingseg");
    let mut q = filled(d.path(), 12);
    assert!(q.stats().segments >= 3, "{:?}", q.stats());
    q.ack(1).unwrap();
    drop(q);
    let segs = segment_files(d.path());
    fs::remove_file(&segs[1]).unwrap();
    let q = open(d.path());
    assert_dropped_with(&q, ResyncReason::CorruptRecord, 24);
}

#[test]
fn missing_first_unacked_segment_forces_full_resync() {
    let d = TestDir::new("missingfirst");
    drop(filled(d.path(), 12));
    fs::remove_file(&segment_files(d.path())[0]).unwrap();
    let q = open(d.path());
    assert_eq!(q.resync_reason(), Some(ResyncReason::CorruptRecord));
}

#[test]
fn missing_ledger_forces_full_resync() {
    let d = TestDir::new("noledger");
    drop(filled(d.path(), 2));
    fs::remove_file(d.path().join(LEDGER_FILE)).unwrap();
    let q = open(d.path());
    assert_dropped_with(&q, ResyncReason::LedgerLost, 4);
    assert!(d.path().join(LEDGER_FILE).exists());
}

#[test]
fn corrupt_ledger_forces_full_resync() {
    let d = TestDir::new("badledger");
    let mut q = filled(d.path(), 2);
    q.ack(1).unwrap();
    drop(q);
    flip(&d.path().join(LEDGER_FILE), 9);
    let q = open(d.path());
    assert_dropped_with(&q, ResyncReason::LedgerCorrupt, 4);
    // A cut ledger (which an atomic write never leaves) is treated the same.
    drop(q);
    let l = d.path().join(LEDGER_FILE);
    let b = fs::read(&l).unwrap();
    fs::write(&l, &b[..b.len() - 3]).unwrap();
    assert!(open(d.path()).resync_owed());
}

#[test]
fn newer_segment_version_is_refused() {
    let d = TestDir::new("newerseg");
    drop(filled(d.path(), 2));
    let seg = segment_files(d.path()).remove(0);
    let mut b = fs::read(&seg).unwrap();
    b[4] = FORMAT_VERSION + 1;
    fs::write(&seg, &b).unwrap();
    let before_ledger = fs::read(d.path().join(LEDGER_FILE)).unwrap();
    let e = Queue::open(small_cfg(d.path())).unwrap_err();
    assert!(
        matches!(e, QueueError::NewerFormat { found, .. } if found == FORMAT_VERSION + 1),
        "{e}"
    );
    assert!(e.to_string().contains("newer idrelay"), "{e}");
    // Nothing was touched.
    assert_eq!(fs::read(&seg).unwrap(), b);
    assert_eq!(fs::read(d.path().join(LEDGER_FILE)).unwrap(), before_ledger);
}

#[test]
fn newer_ledger_version_is_refused() {
    let d = TestDir::new("newerledger");
    drop(filled(d.path(), 1));
    let l = d.path().join(LEDGER_FILE);
    let mut b = fs::read(&l).unwrap();
    b[4] = FORMAT_VERSION + 1;
    fs::write(&l, &b).unwrap();
    let e = Queue::open(small_cfg(d.path())).unwrap_err();
    assert!(matches!(e, QueueError::NewerFormat { .. }), "{e}");
    assert_eq!(fs::read(&l).unwrap(), b);
}

#[test]
fn stale_ledger_tmp_is_ignored() {
    let d = TestDir::new("staletmp");
    let mut q = filled(d.path(), 2);
    q.ack(2).unwrap();
    drop(q);
    fs::write(d.path().join(LEDGER_TMP_FILE), b"half a ledger").unwrap();
    let mut q = open(d.path());
    assert!(!d.path().join(LEDGER_TMP_FILE).exists());
    assert_eq!(q.stats().acked_seq, 2);
    assert_eq!(
        all(&mut q).iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![3, 4]
    );
}

#[test]
fn second_open_is_refused_by_lock() {
    let d = TestDir::new("lock");
    let q = open(d.path());
    let e = Queue::open(small_cfg(d.path())).unwrap_err();
    match &e {
        QueueError::Locked { holder, .. } => assert_eq!(*holder, Some(std::process::id())),
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("in use by another idrelay"), "{e}");
    drop(q);
    open(d.path());
}

#[test]
fn disk_full_append_pauses_and_loses_nothing() {
    let d = TestDir::new("diskfull");
    let faults = SharedFaults::default();
    let (_, clock) = manual_clock();
    let mut q = open_faulty(small_cfg(d.path()), &faults, clock).unwrap();
    q.mark_resync_done(b"w0").unwrap();
    q.append(&[&b"one"[..], b"two"], b"w1").unwrap();
    let bytes_before = segment_bytes_on_disk(d.path());
    // Room for a few bytes only: the batch is cut mid-write.
    for room in [0, 10, 40, 70] {
        faults.lock().unwrap().bytes_left = Some(room);
        let e = q.append(&[&b"three"[..], b"four"], b"w2").unwrap_err();
        assert!(
            matches!(e, QueueError::DiskFull { .. }) && e.is_retryable(),
            "{e}"
        );
        assert_eq!(
            segment_bytes_on_disk(d.path()),
            bytes_before,
            "partial write left behind (room {room})"
        );
        assert_eq!(q.stats().last_seq, 2);
        assert_eq!(q.watermark(), Some(&b"w1"[..]));
        assert_eq!(all(&mut q).len(), 2);
    }
    // The disk has room again: the retry goes through with the next sequences.
    faults.lock().unwrap().bytes_left = None;
    assert_eq!(
        q.append(&[&b"three"[..], b"four"], b"w2").unwrap(),
        AppendOutcome::Appended {
            first_seq: 3,
            last_seq: 4
        }
    );
    drop(q);
    let mut q = open(d.path());
    let got = all(&mut q);
    assert_eq!(
        got.iter().map(|r| r.1.as_slice()).collect::<Vec<_>>(),
        vec![&b"one"[..], b"two", b"three", b"four"]
    );
    assert_eq!(q.watermark(), Some(&b"w2"[..]));
}

#[test]
fn disk_full_on_ack_keeps_the_previous_ack() {
    let d = TestDir::new("diskfullack");
    let faults = SharedFaults::default();
    let (_, clock) = manual_clock();
    let mut q = open_faulty(small_cfg(d.path()), &faults, clock).unwrap();
    q.mark_resync_done(b"w0").unwrap();
    q.append(&[&b"one"[..], b"two"], b"w1").unwrap();
    faults.lock().unwrap().bytes_left = Some(5);
    let e = q.ack(2).unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert_eq!(q.stats().acked_seq, 0);
    assert!(!d.path().join(LEDGER_TMP_FILE).exists());
    faults.lock().unwrap().bytes_left = None;
    q.ack(2).unwrap();
    drop(q);
    assert_eq!(open(d.path()).stats().acked_seq, 2);
}

#[test]
fn overflow_drops_backlog_and_owes_resync_durably() {
    let d = TestDir::new("overflow");
    let mut q = open(d.path());
    q.mark_resync_done(b"w0").unwrap();
    let payload = [b'x'; 100];
    let mut appended = 0u64;
    let dropped = loop {
        match q.append(&[&payload[..], &payload[..]], b"w").unwrap() {
            AppendOutcome::Appended { last_seq, .. } => appended = last_seq,
            AppendOutcome::Overflowed { dropped } => break dropped,
        }
        assert!(segment_bytes_on_disk(d.path()) <= 4096);
        assert_eq!(segment_bytes_on_disk(d.path()), q.stats().bytes);
    };
    assert_eq!(dropped, appended);
    assert!(
        appended > 10,
        "compression off for 'x' * 100? appended {appended}"
    );
    assert_dropped_with(&q, ResyncReason::Overflow, appended);
    assert_eq!(q.watermark(), Some(&b"w"[..]));
    drop(q);
    let mut q = open(d.path());
    assert_eq!(q.resync_reason(), Some(ResyncReason::Overflow));
    // New changes keep flowing with new sequences; only a full pass clears the flag.
    let next = appended + 1;
    assert_eq!(
        q.append(&[b"new"], b"w2").unwrap(),
        AppendOutcome::Appended {
            first_seq: next,
            last_seq: next
        }
    );
    assert!(q.resync_owed());
    q.mark_resync_done(b"after-full-pass").unwrap();
    assert!(!q.resync_owed());
    assert_eq!(q.stats().depth, 0);
    drop(q);
    let q = open(d.path());
    assert!(!q.resync_owed());
    assert_eq!(q.watermark(), Some(&b"after-full-pass"[..]));
}

#[test]
fn a_batch_larger_than_the_bound_overflows() {
    let d = TestDir::new("hugebatch");
    let mut q = filled(d.path(), 1);
    let big = noise(5000, 1);
    assert_eq!(
        q.append(&[big], b"w").unwrap(),
        AppendOutcome::Overflowed { dropped: 2 }
    );
}

#[test]
fn acknowledged_bytes_are_reclaimed_before_overflowing() {
    let d = TestDir::new("reclaim");
    let cfg = QueueConfig {
        segment_bytes: 4096,
        ..small_cfg(d.path())
    };
    let mut q = Queue::open(cfg).unwrap();
    q.mark_resync_done(b"w0").unwrap();
    let p = noise(900, 4);
    // One segment only (segment_bytes = max_bytes): fill it, acknowledge everything.
    for _ in 0..4 {
        q.append(&[&p], b"w").unwrap();
    }
    q.ack(4).unwrap();
    assert!(q.stats().bytes > 3600);
    assert!(matches!(
        q.append(&[&p], b"w").unwrap(),
        AppendOutcome::Appended { .. }
    ));
    assert!(!q.resync_owed());
    let s = q.stats();
    assert_eq!((s.depth, s.segments), (1, 1));
    assert!(s.bytes < 1100, "{s:?}");
}

#[test]
fn lowered_bound_at_open_overflows() {
    let d = TestDir::new("lowered");
    let cfg = QueueConfig {
        max_bytes: 1 << 20,
        segment_bytes: 1 << 16,
        ..small_cfg(d.path())
    };
    let mut q = Queue::open(cfg).unwrap();
    q.mark_resync_done(b"w0").unwrap();
    for _ in 0..20 {
        q.append(&[noise(400, 3)], b"w").unwrap();
    }
    drop(q);
    let q = open(d.path());
    assert_dropped_with(&q, ResyncReason::Overflow, 20);
}

#[test]
fn acknowledged_segments_are_trimmed() {
    let d = TestDir::new("trim");
    let mut q = filled(d.path(), 12);
    let segs = q.stats().segments;
    assert!(segs >= 3);
    q.ack(24).unwrap();
    assert_eq!(q.stats().segments, 1);
    assert_eq!(segment_files(d.path()).len(), 1);
    assert_eq!(q.stats().oldest_age, None);
    q.append(&[b"more"], b"w").unwrap();
    drop(q);
    let mut q = open(d.path());
    assert_eq!(all(&mut q), vec![(25, b"more".to_vec())]);
}

#[test]
fn compression_saves_bytes_and_round_trips() {
    let d1 = TestDir::new("deflate-on");
    let d2 = TestDir::new("deflate-off");
    let payload =
        b"{\"op\":\"modify\",\"dn\":\"cn=user,ou=people,dc=branch,dc=test\",\"member\":[".repeat(8);
    let mut sizes = Vec::new();
    for (dir, min) in [(&d1, 64), (&d2, usize::MAX)] {
        let cfg = QueueConfig {
            compress_min: min,
            ..small_cfg(dir.path())
        };
        let mut q = Queue::open(cfg).unwrap();
        q.append(&[&payload], b"w").unwrap();
        assert_eq!(q.read(None, 1).unwrap()[0].payload, payload);
        sizes.push(q.stats().bytes);
    }
    assert!(sizes[0] * 2 < sizes[1], "{sizes:?}");
}

#[test]
fn oldest_age_follows_the_oldest_unacknowledged_change() {
    let d = TestDir::new("age");
    let faults = SharedFaults::default();
    let (t, clock) = manual_clock();
    let mut q = open_faulty(small_cfg(d.path()), &faults, clock).unwrap();
    assert_eq!(q.stats().oldest_age, None);
    q.append(&[b"a"], b"w").unwrap();
    t.fetch_add(5_000, Ordering::Relaxed);
    q.append(&[b"b"], b"w").unwrap();
    t.fetch_add(2_000, Ordering::Relaxed);
    assert_eq!(q.stats().oldest_age, Some(Duration::from_secs(7)));
    assert_eq!(
        q.read(None, 1).unwrap()[0].appended_at_ms + 7_000,
        t.load(Ordering::Relaxed)
    );
    q.ack(1).unwrap();
    assert_eq!(q.stats().oldest_age, Some(Duration::from_secs(2)));
    drop(q);
    let (t2, clock2) = manual_clock();
    t2.store(t.load(Ordering::Relaxed) + 1_000, Ordering::Relaxed);
    let q = open_faulty(small_cfg(d.path()), &faults, clock2).unwrap();
    assert_eq!(q.stats().oldest_age, Some(Duration::from_secs(3)));
}

#[test]
fn crash_at_every_step_of_an_append_recovers_to_before_or_after() {
    // The batch rolls a new segment, so the steps cover create, header, directory sync,
    // records, fdatasync; a dying write gets half its bytes out.
    let mut step = 0;
    loop {
        let d = TestDir::new("crashstep");
        let faults = SharedFaults::default();
        let mut q = open_faulty(small_cfg(d.path()), &faults, manual_clock().1).unwrap();
        q.mark_resync_done(b"w0").unwrap();
        q.append(&[noise(600, 9)], b"w1").unwrap();
        {
            let mut f = faults.lock().unwrap();
            f.ops_left = Some(step);
            f.partial = 25;
            f.ops_seen = 0;
        }
        let res = q.append(&[&b"second"[..], b"third"], b"w2");
        let finished = res.is_ok();
        drop(q);
        let mut q = open(d.path());
        assert!(!q.resync_owed(), "step {step}");
        let seqs: Vec<u64> = all(&mut q).iter().map(|r| r.0).collect();
        match q.watermark() {
            Some(b"w1") => assert_eq!(seqs, vec![1], "step {step}"),
            Some(b"w2") => assert_eq!(seqs, vec![1, 2, 3], "step {step}"),
            other => panic!("step {step}: watermark {other:?}"),
        }
        if finished {
            assert_eq!(q.watermark(), Some(&b"w2"[..]));
            break;
        }
        step += 1;
        assert!(step < 50);
    }
    assert!(step >= 5, "the append took only {step} steps");
}

#[test]
fn config_errors_name_the_key() {
    let d = TestDir::new("cfg");
    let e = Queue::open(QueueConfig {
        max_bytes: 1,
        ..small_cfg(d.path())
    })
    .unwrap_err();
    assert!(e.to_string().contains("max_bytes"), "{e}");
    let e = Queue::open(QueueConfig {
        segment_bytes: 1 << 30,
        ..small_cfg(d.path())
    })
    .unwrap_err();
    assert!(e.to_string().contains("segment_bytes"), "{e}");
}

#[test]
fn inspect_reads_without_the_lock_and_changes_nothing() {
    let d = TestDir::new("inspect");
    let missing = Queue::inspect(&d.path().join("not-yet")).unwrap();
    assert_eq!(missing.stats.resync_owed, Some(ResyncReason::NeverSynced));
    let mut q = filled(d.path(), 3);
    q.ack(2).unwrap();
    // While the queue is open (and locked).
    let v = Queue::inspect(d.path()).unwrap();
    let mut want = q.stats();
    want.max_bytes = 0;
    assert_eq!(v.stats.oldest_age.is_some(), want.oldest_age.is_some());
    want.oldest_age = v.stats.oldest_age;
    assert_eq!(v.stats, want);
    assert_eq!(v.watermark.as_deref(), Some(&b"wm-3"[..]));
    assert!(v.notes.is_empty());
    drop(q);
    // A torn tail is reported, not repaired.
    let seg = segment_files(d.path()).pop().unwrap();
    append_raw(&seg, &[1, 2, 3]);
    let len = fs::metadata(&seg).unwrap().len();
    let v = Queue::inspect(d.path()).unwrap();
    assert_eq!((v.stats.depth, v.notes.len()), (4, 1), "{:?}", v.notes);
    assert_eq!(fs::metadata(&seg).unwrap().len(), len);
}

#[test]
fn crash_during_recovery_recovers_on_the_next_open() {
    // Two recoveries that change the disk: damage (ledger write, then deletes) and a torn
    // tail (truncate, fdatasync). Die at every step of each; the next open must still
    // reach the same state.
    for damage in [true, false] {
        let mut step = 0;
        loop {
            let d = TestDir::new("crashrecovery");
            drop(filled(d.path(), 3));
            let seg = segment_files(d.path()).remove(0);
            if damage {
                flip(&seg, SEGMENT_HEADER_LEN + 32 + 2);
            } else {
                let mut rec = Vec::new();
                encode_change(&mut rec, 7, 0, b"cut by a crash", usize::MAX);
                append_raw(&seg, &rec[..40]);
            }
            let faults = SharedFaults::default();
            faults.lock().unwrap().ops_left = Some(step);
            let res = open_faulty(small_cfg(d.path()), &faults, manual_clock().1);
            let finished = res.is_ok();
            drop(res);
            let mut q = open(d.path());
            if damage {
                assert_eq!(
                    q.resync_reason(),
                    Some(ResyncReason::CorruptRecord),
                    "step {step}"
                );
                assert_eq!(q.stats().depth, 0, "step {step}");
            } else {
                assert!(!q.resync_owed(), "step {step}");
                assert_eq!(all(&mut q).len(), 6, "step {step}");
            }
            if finished {
                break;
            }
            step += 1;
            assert!(step < 20);
        }
        assert!(step >= 2, "recovery took only {step} steps");
    }
}

#[test]
fn only_a_lost_backlog_or_damaged_state_is_a_fault_worth_a_warning() {
    use ResyncReason::*;
    for r in [Overflow, CorruptRecord, LedgerLost, LedgerCorrupt] {
        assert!(r.is_fault(), "{r}");
    }
    // Asked for by an operator or the schedule, or a first start: routine, logged INFO.
    for r in [NeverSynced, Requested, Scheduled] {
        assert!(!r.is_fault(), "{r}");
    }
}
