//! The wall clock only stamps records (`appended_at_ms`, the age in stats): a clock that
//! jumps back or forward between appends must not reorder, lose or duplicate a change.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;

#[test]
fn a_clock_that_jumps_loses_reorders_and_duplicates_nothing() {
    let d = TestDir::new("clockjump");
    let faults = SharedFaults::default();
    let (t, clock) = manual_clock();
    let start = t.load(Ordering::Relaxed);
    let mut q = open_faulty(small_cfg(d.path()), &faults, clock).unwrap();
    q.mark_resync_done(b"wm-0").unwrap();
    // Back an hour, forward a day, back ten years, to zero, forward again.
    let hour = 3_600_000u64;
    let times = [
        start,
        start - hour,
        start + 24 * hour,
        start - 87_600 * hour,
        0,
        start + hour,
    ];
    let mut want = Vec::new();
    for (i, &at) in times.iter().enumerate() {
        t.store(at, Ordering::Relaxed);
        let p = [format!("change {i}a"), format!("change {i}b")];
        q.append(&p, format!("wm-{}", i + 1).as_bytes()).unwrap();
        want.extend(p.map(String::into_bytes));
        // The age of the oldest change is never negative (the clock may be behind it).
        let age = q.stats().oldest_age.unwrap();
        assert!(age <= Duration::from_millis(start + 24 * hour), "{age:?}");
    }
    t.store(start - 87_600 * hour, Ordering::Relaxed);
    assert_eq!(q.stats().oldest_age, Some(Duration::ZERO));
    drop(q);

    let (t, clock) = manual_clock();
    t.store(1, Ordering::Relaxed);
    let mut q = open_faulty(small_cfg(d.path()), &faults, clock).unwrap();
    let got = q.read(None, usize::MAX).unwrap();
    assert_eq!(
        got.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=want.len() as u64).collect::<Vec<_>>()
    );
    assert_eq!(
        got.iter().map(|r| r.payload.clone()).collect::<Vec<_>>(),
        want
    );
    // Each batch keeps the stamp it got, however the clock moved.
    assert_eq!(got[2].appended_at_ms, start - hour);
    assert_eq!(got[8].appended_at_ms, 0);
    assert_eq!(q.watermark(), Some(&b"wm-6"[..]));

    // Acknowledge half while the clock is far behind, append, reopen: the rest, once.
    q.ack(6).unwrap();
    q.append(&["change 6a"], b"wm-7").unwrap();
    drop(q);
    let (_, clock) = manual_clock();
    let mut q = open_faulty(small_cfg(d.path()), &faults, clock).unwrap();
    let rest: Vec<u64> = q
        .read(None, usize::MAX)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(rest, (7..=13).collect::<Vec<_>>());
    assert_eq!(q.watermark(), Some(&b"wm-7"[..]));
}
