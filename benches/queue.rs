//! Change-queue benchmark: appends/s and acknowledged records/s for small (300 B) and large
//! (64 KiB) changes with the production fsync policy (one fdatasync per append batch, one
//! atomic ledger replacement per ack), each printed beside a baseline measured in the same
//! run on the same disk:
//!
//! * append baseline: the same payload bytes written to a plain file, one write + fdatasync
//!   per batch;
//! * ack baseline: the same batches read back from that file, plus the cheapest durable
//!   acknowledgement (a 40-byte file written, fdatasynced, renamed, directory fsynced) per
//!   batch.
//!
//! One scenario repeats 300 B x100 with deflate off (`raw`): it shows what deflating small
//! changes costs in CPU. Then bytes on disk per change with and without deflate.
//!
//! Run: `cargo bench --bench queue`. The directory is `IDRELAY_BENCH_DIR` if set, else the
//! system temp dir (use a real disk: on tmpfs fsync costs nothing).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use idrelay::queue::{AppendOutcome, Queue, QueueConfig};

/// A directory change as JSON, about `size` bytes, shaped like what the feed queues: small
/// ones are attribute updates, large ones group membership deltas.
fn change(size: usize, rng: &mut fastrand::Rng) -> Vec<u8> {
    let n = rng.u32(1..99_999);
    let mut s = format!(
        "{{\"op\":\"modify\",\"anchor\":\"{:016x}{:016x}\",\"dn\":\"cn=User {n},ou=People,dc=branch,dc=test\",\
         \"usn\":{},\"attrs\":{{\"mail\":[\"user{n}@branch.test\"],\"telephoneNumber\":[\"+1 555 {:04}\"],\
         \"title\":[\"Engineer\"],\"member\":[",
        rng.u64(..),
        rng.u64(..),
        rng.u64(1..1 << 40),
        rng.u32(..10_000)
    );
    while s.len() + 60 < size {
        s.push_str(&format!(
            "\"cn=User {:05},ou=People,dc=branch,dc=test\",",
            rng.u32(..100_000)
        ));
    }
    s.push_str("\"\"]}}");
    while s.len() < size {
        s.push(' ');
    }
    s.truncate(size);
    s.into_bytes()
}

struct Scenario {
    name: &'static str,
    size: usize,
    batch: usize,
    records: usize,
    deflate: bool,
}

struct Row {
    what: String,
    records: usize,
    queue: Duration,
    baseline: Duration,
}

fn bench_dir() -> PathBuf {
    let base = std::env::var_os("IDRELAY_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    base.join(format!("idrelay-queue-bench-{}", std::process::id()))
}

fn fresh(dir: &Path) {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).unwrap();
}

fn open(dir: &Path, compress: bool) -> Queue {
    let mut cfg = QueueConfig::new(dir);
    if !compress {
        cfg.compress_min = usize::MAX;
    } else if let Some(m) = std::env::var("QB_MIN").ok().and_then(|v| v.parse().ok()) {
        cfg.compress_min = m;
    }
    let mut q = Queue::open(cfg).unwrap();
    q.mark_resync_done(b"bench-start").unwrap();
    q
}

/// The queue: append all batches, then read + ack batch by batch.
fn run_queue(dir: &Path, batches: &[Vec<Vec<u8>>], deflate: bool) -> (Duration, Duration) {
    fresh(dir);
    let mut q = open(dir, deflate);
    let t = Instant::now();
    for (i, b) in batches.iter().enumerate() {
        let wm = format!("usn={i}");
        match q.append(b, wm.as_bytes()).unwrap() {
            AppendOutcome::Appended { .. } => {}
            AppendOutcome::Overflowed { .. } => panic!("benchmark data overflowed the queue"),
        }
    }
    let append = t.elapsed();
    let t = Instant::now();
    let mut n = 0;
    for b in batches {
        let got = q.read(None, b.len()).unwrap();
        assert_eq!(got.len(), b.len());
        n += got.len();
        q.ack(got.last().unwrap().seq).unwrap();
    }
    let ack = t.elapsed();
    assert_eq!(n, batches.iter().map(Vec::len).sum::<usize>());
    assert_eq!(q.stats().depth, 0);
    (append, ack)
}

/// The baseline: the same bytes, a plain file, same batching.
fn run_baseline(dir: &Path, batches: &[Vec<Vec<u8>>]) -> (Duration, Duration) {
    fresh(dir);
    let data = dir.join("plain");
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&data)
        .unwrap();
    let mut buf = Vec::new();
    let t = Instant::now();
    for b in batches {
        buf.clear();
        for p in b {
            buf.extend_from_slice(p);
        }
        f.write_all(&buf).unwrap();
        f.sync_data().unwrap();
    }
    let append = t.elapsed();
    let t = Instant::now();
    f.seek(SeekFrom::Start(0)).unwrap();
    let (tmp, ledger) = (dir.join("ack.tmp"), dir.join("ack"));
    for (i, b) in batches.iter().enumerate() {
        for p in b {
            let mut back = vec![0u8; p.len()];
            f.read_exact(&mut back).unwrap();
        }
        let mut a = File::create(&tmp).unwrap();
        a.write_all(&[i as u8; 40]).unwrap();
        a.sync_data().unwrap();
        fs::rename(&tmp, &ledger).unwrap();
        File::open(dir).unwrap().sync_all().unwrap();
    }
    (append, t.elapsed())
}

const ROUNDS: usize = 3;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn per_sec(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported and ignored.
    let dir = bench_dir();
    let scenarios = [
        Scenario {
            name: "300 B",
            size: 300,
            batch: 1,
            records: 200,
            deflate: true,
        },
        Scenario {
            name: "300 B",
            size: 300,
            batch: 100,
            records: 10_000,
            deflate: true,
        },
        Scenario {
            name: "300 B",
            size: 300,
            batch: 100,
            records: 10_000,
            deflate: false,
        },
        Scenario {
            name: "64 KiB",
            size: 64 << 10,
            batch: 1,
            records: 60,
            deflate: true,
        },
        Scenario {
            name: "64 KiB",
            size: 64 << 10,
            batch: 10,
            records: 120,
            deflate: true,
        },
    ];
    let mut rng = fastrand::Rng::with_seed(42);
    let started = Instant::now();
    let mut rows = Vec::new();
    for s in &scenarios {
        let batches: Vec<Vec<Vec<u8>>> = (0..s.records / s.batch)
            .map(|_| (0..s.batch).map(|_| change(s.size, &mut rng)).collect())
            .collect();
        let records = batches.len() * s.batch;
        // Queue and baseline alternate, ROUNDS times each; the medians are compared, so a
        // burst of disk load from elsewhere hits both sides alike.
        let (mut qa, mut qk, mut ba, mut bk) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let mut q = || {
                let (a, k) = run_queue(&dir.join("q"), &batches, s.deflate);
                qa.push(a);
                qk.push(k);
            };
            let mut b = || {
                let (a, k) = run_baseline(&dir.join("b"), &batches);
                ba.push(a);
                bk.push(k);
            };
            if round % 2 == 0 {
                q();
                b();
            } else {
                b();
                q();
            }
        }
        let (qa, qk, ba, bk) = (median(qa), median(qk), median(ba), median(bk));
        rows.push(Row {
            what: format!(
                "append  {:>6} x{:<3}{}",
                s.name,
                s.batch,
                if s.deflate { "" } else { " raw" }
            ),
            records,
            queue: qa,
            baseline: ba,
        });
        rows.push(Row {
            what: format!(
                "read+ack {:>6} x{:<3}{}",
                s.name,
                s.batch,
                if s.deflate { "" } else { " raw" }
            ),
            records,
            queue: qk,
            baseline: bk,
        });
    }

    println!(
        "change queue benchmark ({}; fdatasync per append batch, atomic ledger per ack; \
         median of {ROUNDS} alternating rounds)",
        dir.display()
    );
    println!();
    println!(
        "{:<26} {:>8} {:>14} {:>14} {:>7} {:>11} {:>11}",
        "scenario",
        "records",
        "queue rec/s",
        "baseline rec/s",
        "ratio",
        "queue MiB/s",
        "base MiB/s"
    );
    for (r, s) in rows.iter().zip(scenarios.iter().flat_map(|s| [s, s])) {
        let (q, b) = (per_sec(r.records, r.queue), per_sec(r.records, r.baseline));
        let mib = |rps: f64| rps * s.size as f64 / f64::from(1 << 20);
        println!(
            "{:<26} {:>8} {:>14.0} {:>14.0} {:>7.2} {:>11.1} {:>11.1}",
            r.what,
            r.records,
            q,
            b,
            q / b,
            mib(q),
            mib(b)
        );
    }

    println!();
    println!(
        "{:<10} {:>8} {:>16} {:>16} {:>8}",
        "change", "payload", "on disk deflate", "on disk raw", "saved"
    );
    for (name, size, n) in [("300 B", 300usize, 2000usize), ("64 KiB", 64 << 10, 60)] {
        let mut per = Vec::new();
        for compress in [true, false] {
            let d = dir.join("size");
            fresh(&d);
            let mut q = open(&d, compress);
            let mut rng = fastrand::Rng::with_seed(7);
            for chunk in 0..n / 10 {
                let b: Vec<Vec<u8>> = (0..10).map(|_| change(size, &mut rng)).collect();
                q.append(&b, format!("usn={chunk}").as_bytes()).unwrap();
            }
            per.push(q.stats().bytes as f64 / n as f64);
        }
        println!(
            "{:<10} {:>8} {:>14.0} B {:>14.0} B {:>7.0}%",
            name,
            size,
            per[0],
            per[1],
            100.0 * (1.0 - per[0] / per[1])
        );
    }
    println!(
        "(per change, batches of 10; includes record headers, commit records, segment headers)"
    );
    println!();
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    let _ = fs::remove_dir_all(&dir);
}
