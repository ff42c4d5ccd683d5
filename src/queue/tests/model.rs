//! Model-based property test: random sequences of append / read / ack / crash (drop at any
//! disk step, a dying write half done) / reopen / disk full / resync marks, run against the
//! real queue on disk and an in-memory model. After every step the queue must show exactly
//! the model's state (after a crash: the state before or after the interrupted call), and
//! the segment files must stay within `max_bytes`.
//!
//! Limits are tiny (1200-byte bound, 200-byte segments) so rollover and overflow happen within
//! a few appends. Cases: `PROPTEST_CASES` (default 48). Failures are saved next to this
//! file (`model.regressions`) and replayed first on every run.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

use super::super::record::{encode_change, encode_commit, SEGMENT_HEADER_LEN};
use super::*;
use crate::queue::{AppendOutcome, QueueStats, ResyncReason};

const MAX_BYTES: u64 = 1200;

fn cfg(dir: &Path) -> QueueConfig {
    QueueConfig {
        dir: dir.to_path_buf(),
        max_bytes: MAX_BYTES,
        segment_bytes: 200,
        compress_min: 48,
    }
}

/// Where the process dies: after `ops` more disk changes; a dying write gets `partial`
/// bytes out.
type CrashPoint = Option<(usize, usize)>;

#[derive(Debug, Clone)]
enum After {
    Oldest,
    /// That many below the acknowledged sequence.
    Below(u8),
    /// That many into the queue.
    Into(u8),
}

#[derive(Debug, Clone)]
enum Op {
    Append {
        payloads: Vec<Vec<u8>>,
        wm: u8,
        crash: CrashPoint,
    },
    Read {
        after: After,
        max: usize,
    },
    /// Acknowledge `frac`/255 of the queue.
    Ack {
        frac: u8,
        crash: CrashPoint,
    },
    AckBeyondEnd,
    Reopen,
    DiskFull {
        payloads: Vec<Vec<u8>>,
        wm: u8,
        room: usize,
    },
    MarkOwed {
        crash: CrashPoint,
    },
    MarkDone {
        wm: u8,
        crash: CrashPoint,
    },
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..160),
        (any::<u8>(), 0..400usize).prop_map(|(b, n)| vec![b; n]),
    ]
}

fn batch() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(payload(), 0..5)
}

fn crash_point() -> impl Strategy<Value = CrashPoint> {
    prop::option::weighted(0.25, (0..12usize, 0..200usize))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (batch(), any::<u8>(), crash_point()).prop_map(|(payloads, wm, crash)| Op::Append { payloads, wm, crash }),
        4 => (prop_oneof![Just(After::Oldest), any::<u8>().prop_map(After::Below), any::<u8>().prop_map(After::Into)], 1..8usize)
            .prop_map(|(after, max)| Op::Read { after, max }),
        4 => (any::<u8>(), crash_point()).prop_map(|(frac, crash)| Op::Ack { frac, crash }),
        1 => Just(Op::AckBeyondEnd),
        2 => Just(Op::Reopen),
        1 => (batch(), any::<u8>(), 0..600usize).prop_map(|(payloads, wm, room)| Op::DiskFull { payloads, wm, room }),
        1 => crash_point().prop_map(|crash| Op::MarkOwed { crash }),
        1 => (any::<u8>(), crash_point()).prop_map(|(wm, crash)| Op::MarkDone { wm, crash }),
    ]
}

/// What the queue should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Model {
    /// Unacknowledged changes: (seq, payload, append time).
    queued: VecDeque<(u64, Vec<u8>, u64)>,
    acked: u64,
    last: u64,
    wm: Option<Vec<u8>>,
    resync: Option<ResyncReason>,
}

impl Model {
    fn new() -> Model {
        Model {
            queued: VecDeque::new(),
            acked: 0,
            last: 0,
            wm: None,
            resync: Some(ResyncReason::NeverSynced),
        }
    }

    fn appended(&self, payloads: &[Vec<u8>], wm: &[u8], now: u64) -> Model {
        let mut m = self.clone();
        for p in payloads {
            m.last += 1;
            m.queued.push_back((m.last, p.clone(), now));
        }
        m.wm = Some(wm.to_vec());
        m
    }

    fn overflowed(&self) -> Model {
        let mut m = self.clone();
        m.queued.clear();
        m.acked = m.last;
        m.resync = m.resync.or(Some(ResyncReason::Overflow));
        m
    }

    fn acked_to(&self, upto: u64) -> Model {
        let mut m = self.clone();
        m.acked = m.acked.max(upto);
        m.queued.retain(|r| r.0 > upto);
        m
    }

    fn owed(&self) -> Model {
        let mut m = self.clone();
        m.resync = m.resync.or(Some(ResyncReason::Requested));
        m
    }

    fn done(&self, wm: &[u8]) -> Model {
        let mut m = self.acked_to(self.last);
        m.resync = None;
        m.wm = Some(wm.to_vec());
        m
    }
}

struct Harness {
    dir: TestDir,
    faults: SharedFaults,
    now: Arc<AtomicU64>,
    q: Option<Queue>,
    m: Model,
}

fn clock_of(now: &Arc<AtomicU64>) -> Clock {
    let now = now.clone();
    Box::new(move || now.load(Ordering::Relaxed))
}

fn bytes_of(payloads: &[Vec<u8>], wm: &[u8]) -> u64 {
    let mut b = Vec::new();
    for p in payloads {
        encode_change(&mut b, 1, 0, p, 48);
    }
    encode_commit(&mut b, 1, 0, 1, wm);
    b.len() as u64
}

impl Harness {
    fn new() -> Harness {
        let dir = TestDir::new("model");
        let faults = SharedFaults::default();
        let now = Arc::new(AtomicU64::new(1_000_000));
        let q = open_faulty(cfg(dir.path()), &faults, clock_of(&now)).unwrap();
        Harness {
            dir,
            faults,
            now,
            q: Some(q),
            m: Model::new(),
        }
    }

    fn q(&mut self) -> &mut Queue {
        self.q.as_mut().unwrap()
    }

    fn arm(&self, crash: CrashPoint) {
        if let Some((ops, partial)) = crash {
            let mut f = self.faults.lock().unwrap();
            f.ops_left = Some(ops);
            f.partial = partial;
        }
    }

    /// Drops the queue (a crash: nothing is flushed) and opens the directory again.
    fn reopen(&mut self) {
        self.q = None;
        *self.faults.lock().unwrap() = Faults::default();
        self.q =
            Some(open_faulty(cfg(self.dir.path()), &self.faults, clock_of(&self.now)).unwrap());
    }

    /// The state as the queue shows it.
    fn observe(&mut self) -> Model {
        let q = self.q();
        let queued = q
            .read(None, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|r| (r.seq, r.payload, r.appended_at_ms))
            .collect();
        let s = q.stats();
        Model {
            queued,
            acked: s.acked_seq,
            last: s.last_seq,
            wm: q.watermark().map(<[u8]>::to_vec),
            resync: s.resync_owed,
        }
    }

    /// After a crash-armed call: a crash if it was armed, then the state must be one of
    /// `candidates`.
    fn settle(&mut self, armed: bool, candidates: &[Model]) -> Result<(), TestCaseError> {
        if armed {
            self.reopen();
        }
        let seen = self.observe();
        prop_assert!(
            candidates.contains(&seen),
            "queue shows {seen:?}\nexpected one of {candidates:?}"
        );
        self.m = seen;
        Ok(())
    }

    fn check_stats(&mut self) -> Result<(), TestCaseError> {
        let now = self.now.load(Ordering::Relaxed);
        let m = self.m.clone();
        let dir = self.dir.path().to_path_buf();
        let q = self.q();
        let s: QueueStats = q.stats();
        prop_assert_eq!(s.depth, m.queued.len() as u64);
        prop_assert_eq!(
            (s.acked_seq, s.last_seq, s.resync_owed),
            (m.acked, m.last, m.resync)
        );
        prop_assert_eq!(q.watermark(), m.wm.as_deref());
        prop_assert_eq!(
            s.oldest_age,
            m.queued.front().map(|r| Duration::from_millis(now - r.2))
        );
        let on_disk = segment_bytes_on_disk(&dir);
        prop_assert_eq!(on_disk, s.bytes);
        prop_assert!(on_disk <= MAX_BYTES, "segments hold {} bytes", on_disk);
        Ok(())
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        self.now.fetch_add(1000, Ordering::Relaxed);
        let now = self.now.load(Ordering::Relaxed);
        let before = self.m.clone();
        match op {
            Op::Append {
                payloads,
                wm,
                crash,
            } => {
                let wm = [*wm];
                let bytes_before = self.q().stats().bytes;
                self.arm(*crash);
                let res = self.q().append(payloads, &wm);
                let appended = before.appended(payloads, &wm, now);
                let overflowed = before.overflowed();
                match res {
                    Ok(AppendOutcome::Appended {
                        first_seq,
                        last_seq,
                    }) => {
                        prop_assert_eq!(
                            (first_seq, last_seq),
                            (before.last + 1, before.last + payloads.len() as u64)
                        );
                        self.settle(crash.is_some(), &[appended])?;
                    }
                    Ok(AppendOutcome::Overflowed { dropped }) => {
                        prop_assert_eq!(dropped, before.queued.len() as u64);
                        let need = bytes_of(payloads, &wm) + SEGMENT_HEADER_LEN as u64;
                        prop_assert!(bytes_before + need > MAX_BYTES, "needless overflow");
                        if before.queued.is_empty() {
                            prop_assert!(
                                need > MAX_BYTES,
                                "overflow with only acknowledged bytes on disk"
                            );
                        }
                        self.settle(crash.is_some(), &[overflowed])?;
                    }
                    Err(e) => {
                        prop_assert!(crash.is_some(), "append failed: {}", e);
                        self.settle(true, &[before, appended, overflowed])?;
                    }
                }
            }
            Op::Read { after, max } => {
                let after = match after {
                    After::Oldest => None,
                    After::Below(k) => Some(before.acked.saturating_sub(u64::from(*k))),
                    After::Into(k) => {
                        Some(before.acked + u64::from(*k) % (before.queued.len() as u64 + 2))
                    }
                };
                let got: Vec<_> = self
                    .q()
                    .read(after, *max)
                    .unwrap()
                    .into_iter()
                    .map(|r| (r.seq, r.payload, r.appended_at_ms))
                    .collect();
                let from = after.unwrap_or(0).max(before.acked);
                let want: Vec<_> = before
                    .queued
                    .iter()
                    .filter(|r| r.0 > from)
                    .take(*max)
                    .cloned()
                    .collect();
                prop_assert_eq!(got, want);
            }
            Op::Ack { frac, crash } => {
                let upto = before.acked + before.queued.len() as u64 * u64::from(*frac) / 255;
                self.arm(*crash);
                let res = self.q().ack(upto);
                let after = before.acked_to(upto);
                match res {
                    Ok(()) => self.settle(crash.is_some(), &[after])?,
                    Err(e) => {
                        prop_assert!(crash.is_some(), "ack failed: {}", e);
                        self.settle(true, &[before, after])?;
                    }
                }
            }
            Op::AckBeyondEnd => {
                let e = self.q().ack(before.last + 1).unwrap_err();
                prop_assert!(matches!(e, QueueError::AckBeyondEnd { .. }), "{}", e);
            }
            Op::Reopen => {
                self.reopen();
                let seen = self.observe();
                prop_assert_eq!(seen, before);
            }
            Op::DiskFull { payloads, wm, room } => {
                let wm = [*wm];
                self.faults.lock().unwrap().bytes_left = Some(*room);
                let res = self.q().append(payloads, &wm);
                self.faults.lock().unwrap().bytes_left = None;
                match res {
                    Ok(AppendOutcome::Appended { .. }) => {
                        self.m = before.appended(payloads, &wm, now)
                    }
                    Ok(AppendOutcome::Overflowed { .. }) => self.m = before.overflowed(),
                    Err(e) => {
                        prop_assert!(
                            matches!(e, QueueError::DiskFull { .. }) && e.is_retryable(),
                            "{}",
                            e
                        );
                        let seen = self.observe();
                        prop_assert_eq!(seen, before);
                    }
                }
            }
            Op::MarkOwed { crash } => {
                self.arm(*crash);
                let res = self.q().mark_resync_owed(ResyncReason::Requested);
                let after = before.owed();
                match res {
                    Ok(()) => self.settle(crash.is_some(), &[after])?,
                    Err(_) => self.settle(true, &[before, after])?,
                }
            }
            Op::MarkDone { wm, crash } => {
                self.arm(*crash);
                let res = self.q().mark_resync_done(&[*wm]);
                let after = before.done(&[*wm]);
                match res {
                    Ok(()) => self.settle(crash.is_some(), &[after])?,
                    Err(_) => self.settle(true, &[before, after])?,
                }
            }
        }
        self.check_stats()
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn queue_matches_model(ops in prop::collection::vec(op(), 1..60)) {
        let mut h = Harness::new();
        for op in &ops {
            h.step(op)?;
        }
        h.reopen();
        let seen = h.observe();
        prop_assert_eq!(seen, h.m.clone());
    }
}
