//! Group-membership planning benchmark (`idrelay::sync::members`): time and peak memory to
//! turn a wanted member list of 100,000 and 1,000,000 SCIM ids into chunked PATCH bodies,
//! beside a baseline that builds the one whole-list group body the agent would otherwise
//! PUT. No network: the PATCH bodies are serialised to bytes (as the SCIM client does) and
//! dropped.
//!
//! Every scenario runs in a child process of its own, so its peak RSS (`VmHWM` from
//! `/proc/self/status`) is its own:
//!
//! * `input`: only the wanted ids, collected in directory order into the compact sorted
//!   `MemberIds` the mapping hands over (the floor: what a caller hands in);
//! * `plan 1%`: diff against a stored list streamed in order (1% joined, 1% left), then
//!   every PATCH body of 100 values;
//! * `plan first`: the same with nothing stored (every id added: n/100 bodies);
//! * `store 1%`: `MemberStore::load` of a real `.members` file + diff + bodies + `save` of
//!   the new list (fsync included); the file is written by the parent beforehand;
//! * `baseline`: the whole group as one `serde_json::Value` with `members`, serialised.
//!
//! Ids look like scim2-server's (32 hex digits). Run: `cargo bench --bench members`
//! (`IDRELAY_BENCH_DIR` picks the directory for the store file). Without `--bench` (as in
//! `cargo test --all-targets`) it runs a 10,000-id smoke pass.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use idrelay::scim::mapping::{MemberIds, MemberIdsBuilder};
use idrelay::scim::resource::{GROUP_SCHEMA, PATCH_OP};
use idrelay::sync::members::{
    diff_members, patch_operations, plan_chunks, MemberStore, RemoveForm, DEFAULT_CHUNK,
};
use serde_json::{json, Value};

const ANCHOR: &str = "bench-group";
const GROUP_ID: &str = "0123456789abcdef0123456789abcdef";

/// The i-th id: ascending in `i`, random-looking after the first 8 digits.
fn id(i: u64) -> String {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    format!("{i:08x}{:024x}", u128::from(z ^ (z >> 31)))
}

/// The wanted members: ids 0..n, pushed shuffled (as a directory returns them).
fn wanted(n: u64) -> MemberIds {
    let mut order: Vec<u64> = (0..n).collect();
    fastrand::Rng::with_seed(7).shuffle(&mut order);
    let mut b = MemberIdsBuilder::default();
    for i in order {
        b.push(&id(i));
    }
    b.finish()
}

/// The stored members for the 1% scenario, ascending: 0..n without every 100th id, plus
/// n/100 ids that have left since.
fn old_ids(n: u64) -> impl Iterator<Item = String> {
    (0..n)
        .filter(|i| i % 100 != 0)
        .chain(n..n + n / 100)
        .map(id)
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Builds and serialises every PATCH body; returns (requests, body bytes).
fn bodies<'a>(
    removed: &'a MemberIds,
    mut added: impl Iterator<Item = std::borrow::Cow<'a, str>>,
    adds: usize,
) -> (usize, usize) {
    let mut requests = 0;
    let mut bytes = 0;
    for c in plan_chunks(removed.len(), adds, DEFAULT_CHUNK) {
        let removes: Vec<_> = removed.slice(c.removes).collect();
        let chunk: Vec<_> = added.by_ref().take(c.adds.len()).collect();
        let ops = patch_operations(
            removes.iter().map(|s| s.as_ref()),
            chunk.iter().map(|s| s.as_ref()),
            RemoveForm::PathFilter,
        );
        let body = json!({"schemas": [PATCH_OP], "Operations": ops});
        bytes += serde_json::to_vec(&body).unwrap().len();
        requests += 1;
    }
    (requests, bytes)
}

/// Runs one scenario in this process; prints `seconds requests bytes peak_kib`.
fn child(scenario: &str, n: u64, dir: &Path) {
    let start = Instant::now();
    let new = wanted(n);
    let (requests, bytes) = match scenario {
        "input" => (0, 0),
        "plan 1%" | "plan first" => {
            let old: Box<dyn Iterator<Item = String>> = if scenario == "plan 1%" {
                Box::new(old_ids(n))
            } else {
                Box::new(std::iter::empty())
            };
            let d = diff_members(old.map(Ok::<_, Infallible>), &new).unwrap();
            bodies(&d.removed, d.added_ids(&new), d.added_len())
        }
        "store 1%" => {
            let store = MemberStore::open(dir.to_path_buf()).unwrap();
            let old = store.load(ANCHOR, GROUP_ID).unwrap().expect("stored list");
            let d = diff_members(old, &new).unwrap();
            let out = bodies(&d.removed, d.added_ids(&new), d.added_len());
            store.save(ANCHOR, GROUP_ID, &new).unwrap();
            out
        }
        "baseline" => {
            let members: Vec<Value> = new.iter().map(|i| json!({"value": i})).collect();
            drop(new);
            let body = json!({
                "schemas": [GROUP_SCHEMA],
                "externalId": ANCHOR,
                "displayName": "Big group",
                "members": members,
            });
            (1, serde_json::to_vec(&body).unwrap().len())
        }
        other => panic!("unknown scenario {other}"),
    };
    let secs = start.elapsed().as_secs_f64();
    println!("{secs:.3} {requests} {bytes} {}", peak_rss_kib());
}

fn run_child(scenario: &str, n: u64, dir: &Path) -> (f64, usize, usize, u64) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--scenario", scenario, &n.to_string()])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scenario {scenario} {n}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<&str> = text.split_whitespace().collect();
    (
        f[0].parse().unwrap(),
        f[1].parse().unwrap(),
        f[2].parse().unwrap(),
        f[3].parse().unwrap(),
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--scenario") {
        let n = args[pos + 2].parse().unwrap();
        child(&args[pos + 1], n, Path::new(&args[pos + 3]));
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this without it.
    let full = args.iter().any(|a| a == "--bench");
    let sizes: &[u64] = if full {
        &[100_000, 1_000_000]
    } else {
        &[10_000]
    };
    let base = std::env::var_os("IDRELAY_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = base.join(format!("idrelay-members-bench-{}", std::process::id()));
    if !full {
        println!("smoke run (cargo bench --bench members for the real sizes)");
    }
    println!(
        "{:>9}  {:<12} {:>8} {:>9} {:>11} {:>10}",
        "ids", "scenario", "seconds", "requests", "body MiB", "peak MiB"
    );
    for &n in sizes {
        let store = MemberStore::open(dir.clone()).unwrap();
        let old: MemberIds = old_ids(n).collect();
        store.save(ANCHOR, GROUP_ID, &old).unwrap();
        drop(old);
        for scenario in ["input", "plan 1%", "plan first", "store 1%", "baseline"] {
            let (secs, requests, bytes, kib) = run_child(scenario, n, &dir);
            println!(
                "{n:>9}  {scenario:<12} {secs:>8.3} {requests:>9} {:>11.1} {:>10.1}",
                bytes as f64 / (1 << 20) as f64,
                kib as f64 / 1024.0
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
