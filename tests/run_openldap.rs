//! `idrelay run` with the real binary, slapd (syncrepl) and scim2-server: changes flow in
//! seconds, kill -9 at random moments loses nothing, a long outage overflows the bounded
//! queue and one full pass converges.

mod common;

use std::collections::BTreeMap;
use std::process::Child;
use std::time::{Duration, Instant};

use common::{wait_until, Agent, Dir, Link, ScimServer, TestOu};

fn users_ldif(o: &str, from: usize, to: usize) -> String {
    (from..to)
        .map(|i| {
            format!(
                "dn: uid=u{i:03},{o}\nobjectClass: inetOrgPerson\nuid: u{i:03}\ncn: User {i}\nsn: S{i}\ntitle: t0\n\n"
            )
        })
        .collect()
}

/// userName → title, for every user the endpoint holds.
fn titles(scim: &ScimServer) -> BTreeMap<String, String> {
    scim.all("Users")
        .into_iter()
        .map(|u| {
            (
                u["userName"].as_str().unwrap_or("").to_string(),
                u["title"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn kill9(child: &mut Child) {
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
}

/// A small deterministic generator (the seed is printed so a failure can be replayed).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn changes_flow_and_kill_9_at_random_moments_loses_nothing() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "crash");
    let o = ou.dn.clone();
    dir.modify(&users_ldif(&o, 0, 20));
    let scim = ScimServer::start();
    let agent = Agent::new(&dir, &[&o], &scim.base_url(), &scim.token, "");
    let mut child = agent.spawn(&["run"]);
    assert!(
        wait_until(60, || scim.all("Users").len() == 20),
        "first full pass did not finish: {}",
        agent.log()
    );

    // Latency of one change while the agent is idle.
    let t0 = Instant::now();
    dir.modify(&format!(
        "dn: uid=u000,{o}\nchangetype: modify\nreplace: title\ntitle: fast\n"
    ));
    assert!(wait_until(20, || titles(&scim)
        .get("u000")
        .map(String::as_str)
        == Some("fast")));
    let latency = t0.elapsed();
    eprintln!("change -> SCIM latency: {} ms", latency.as_millis());

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("kill -9 test seed {seed}");
    let mut rng = Lcg(seed);
    let mut expect: BTreeMap<String, String> = (0..20)
        .map(|i| (format!("u{i:03}"), "t0".to_string()))
        .collect();
    expect.insert("u000".into(), "fast".into());
    let writer_dir = dir.clone();
    let writer_o = o.clone();
    let mut writes: Vec<(String, String)> = Vec::new();
    let mut next_user = 20;
    for step in 0..200u64 {
        let user = rng.next(next_user as u64) as usize;
        let title = format!("s{step}");
        writes.push((format!("u{user:03}"), title.clone()));
        expect.insert(format!("u{user:03}"), title);
        if step % 10 == 9 {
            writes.push((format!("u{next_user:03}"), "new".into()));
            expect.insert(format!("u{next_user:03}"), "t0".into());
            next_user += 1;
        }
    }
    let writer = std::thread::spawn(move || {
        for (uid, title) in writes {
            if title == "new" {
                writer_dir.modify(&users_ldif(
                    &writer_o,
                    uid[1..].parse().unwrap(),
                    uid[1..].parse::<usize>().unwrap() + 1,
                ));
            } else {
                writer_dir.modify(&format!("dn: uid={uid},{writer_o}\nchangetype: modify\nreplace: title\ntitle: {title}\n"));
            }
            std::thread::sleep(Duration::from_millis(15));
        }
    });
    let mut kills = 0;
    while !writer.is_finished() || kills < 20 {
        std::thread::sleep(Duration::from_millis(50 + rng.next(400)));
        kill9(&mut child);
        kills += 1;
        child = agent.spawn(&["run"]);
    }
    writer.join().unwrap();
    eprintln!("killed the agent {kills} times");
    let converged = wait_until(90, || titles(&scim) == expect);
    let got = titles(&scim);
    kill9(&mut child);
    assert!(
        converged,
        "after {kills} kills the endpoint differs from the directory\nmissing or wrong: {:?}\nlog tail: {}",
        expect.iter().filter(|(k, v)| got.get(*k) != Some(*v)).collect::<Vec<_>>(),
        agent.log().lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
    // No duplicates: one resource per user.
    assert_eq!(scim.all("Users").len(), expect.len());
}

#[test]
fn outage_overflows_the_bounded_queue_and_one_full_pass_converges() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "overflow");
    let o = ou.dn.clone();
    dir.modify(&users_ldif(&o, 0, 10));
    let scim = ScimServer::start();
    let link = Link::new(scim.port);
    let url = format!("http://127.0.0.1:{}/v2", link.port);
    let agent = Agent::new(
        &dir,
        &[&o],
        &url,
        &scim.token,
        "\n[queue]\nmax_bytes = 65536",
    );
    let mut child = agent.spawn(&["run"]);
    assert!(
        wait_until(60, || scim.all("Users").len() == 10),
        "{}",
        agent.log()
    );

    link.cut();
    // Enough changes to pass 64 KiB of queued records while the endpoint is unreachable.
    let mut ldif = String::new();
    for round in 0..60 {
        for i in 0..10 {
            ldif.push_str(&format!(
                "dn: uid=u{i:03},{o}\nchangetype: modify\nreplace: title\ntitle: r{round}\n\n"
            ));
        }
    }
    let queue_dir = agent.tmp.path().join("state/queue");
    let sampler = std::thread::spawn(move || {
        let mut max = 0u64;
        let end = Instant::now() + Duration::from_secs(8);
        while Instant::now() < end {
            let bytes: u64 = std::fs::read_dir(&queue_dir)
                .map(|d| {
                    d.filter_map(Result::ok)
                        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
                        .filter_map(|e| e.metadata().ok())
                        .map(|m| m.len())
                        .sum()
                })
                .unwrap_or(0);
            max = max.max(bytes);
            std::thread::sleep(Duration::from_millis(5));
        }
        max
    });
    dir.modify(&ldif);
    let max_seen = sampler.join().unwrap();
    eprintln!("largest queue seen on disk: {max_seen} bytes (bound 65536)");
    assert!(max_seen <= 65536, "queue exceeded its bound: {max_seen}");
    assert!(
        wait_until(20, || agent
            .run(&["status"])
            .stdout
            .contains("resync owed:  yes (overflow)")),
        "status: {}\nlog: {}",
        agent.run(&["status"]).stdout,
        agent.log()
    );

    link.restore();
    let want: BTreeMap<String, String> = (0..10)
        .map(|i| (format!("u{i:03}"), "r59".to_string()))
        .collect();
    let converged = wait_until(90, || titles(&scim) == want);
    kill9(&mut child);
    assert!(
        converged,
        "endpoint: {:?}\nlog: {}",
        titles(&scim),
        agent.log()
    );
    let log = agent.log();
    assert!(log.contains("full pass owed (overflow)"), "{log}");
    assert_eq!(scim.all("Users").len(), 10, "no duplicates");
}
