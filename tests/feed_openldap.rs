//! `idrelay run` against the real slapd (syncrepl) and scim2-server: renames and moves keep
//! the anchor, objects leaving scope are deactivated, a burst of deletes over the threshold
//! waits for `approve-deletes`, signals stop and reload, the LDAP link is cut mid-feed, and
//! a stale cookie leads to a full pass.

mod common;

use std::process::{Child, Command};
use std::time::Duration;

use common::{wait_until, Agent, Dir, Link, ScimServer, TestOu};
use serde_json::Value;

fn users_ldif(parent: &str, names: &[&str]) -> String {
    names
        .iter()
        .map(|n| {
            format!(
                "dn: uid={n},{parent}\nobjectClass: inetOrgPerson\nuid: {n}\ncn: User {n}\nsn: S\ntitle: t0\n\n"
            )
        })
        .collect()
}

fn ou_ldif(parent: &str, name: &str) -> String {
    format!("dn: ou={name},{parent}\nobjectClass: organizationalUnit\nou: {name}\n\n")
}

fn user(scim: &ScimServer, user_name: &str) -> Option<Value> {
    scim.all("Users")
        .into_iter()
        .find(|u| u["userName"] == user_name)
}

fn active(scim: &ScimServer, user_name: &str) -> Option<bool> {
    user(scim, user_name).map(|u| u["active"].as_bool().unwrap_or(true))
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {}", child.id());
}

/// Waits for the child to exit; returns its exit code (kills it after `secs`).
fn wait_exit(child: &mut Child, secs: u64) -> Option<i32> {
    let mut code = None;
    wait_until(secs, || match child.try_wait() {
        Ok(Some(s)) => {
            code = s.code();
            true
        }
        _ => false,
    });
    if code.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    code
}

struct Running(Child);
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn renames_and_moves_keep_the_anchor_and_leaving_scope_deactivates() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "moves");
    let o = ou.dn.clone();
    dir.modify(&(ou_ldif(&o, "in") + &ou_ldif(&o, "out")));
    let inside = format!("ou=in,{o}");
    let outside = format!("ou=out,{o}");
    dir.modify(&users_ldif(&inside, &["m0", "m1", "m2", "m3", "m4"]));
    dir.modify(&format!(
        "dn: cn=team,{inside}\nobjectClass: groupOfNames\ncn: team\nmember: uid=m3,{inside}\nmember: uid=m4,{inside}\n"
    ));
    let scim = ScimServer::start();
    let agent = Agent::new(&dir, &[&inside], &scim.base_url(), &scim.token, "");
    let run = Running(agent.spawn(&["run"]));
    assert!(
        wait_until(60, || scim.all("Users").len() == 5
            && scim.all("Groups").len() == 1),
        "first pass: {}",
        agent.log()
    );
    let id_of = |n: &str| user(&scim, n).unwrap()["id"].as_str().unwrap().to_string();
    let m0 = id_of("m0");
    let m1 = id_of("m1");

    // Rename: same resource, new userName.
    dir.modify(&format!(
        "dn: uid=m0,{inside}\nchangetype: modrdn\nnewrdn: uid=m0-renamed\ndeleteoldrdn: 1\n"
    ));
    assert!(
        wait_until(20, || user(&scim, "m0-renamed").is_some()),
        "rename: {}",
        agent.log()
    );
    assert_eq!(
        id_of("m0-renamed"),
        m0,
        "a rename must update, not recreate"
    );
    assert_eq!(scim.all("Users").len(), 5);

    // Move out of the included subtree: deactivated, not deleted, not duplicated.
    dir.modify(&format!(
        "dn: uid=m1,{inside}\nchangetype: modrdn\nnewrdn: uid=m1\ndeleteoldrdn: 0\nnewsuperior: {outside}\n"
    ));
    assert!(
        wait_until(20, || active(&scim, "m1") == Some(false)),
        "move out of scope: {}",
        agent.log()
    );
    // ... and back in: the same resource is active again.
    dir.modify(&format!(
        "dn: uid=m1,{outside}\nchangetype: modrdn\nnewrdn: uid=m1\ndeleteoldrdn: 0\nnewsuperior: {inside}\n"
    ));
    assert!(
        wait_until(20, || active(&scim, "m1") == Some(true)),
        "move back into scope: {}",
        agent.log()
    );
    assert_eq!(id_of("m1"), m1);

    // Delete: deactivated.
    dir.modify(&format!("dn: uid=m2,{inside}\nchangetype: delete\n"));
    assert!(
        wait_until(20, || active(&scim, "m2") == Some(false)),
        "delete: {}",
        agent.log()
    );

    // Membership: remove m4, add the renamed m0.
    dir.modify(&format!(
        "dn: cn=team,{inside}\nchangetype: modify\ndelete: member\nmember: uid=m4,{inside}\n-\nadd: member\nmember: uid=m0-renamed,{inside}\n"
    ));
    let want = {
        let mut v = vec![m0.clone(), id_of("m3")];
        v.sort();
        v
    };
    assert!(
        wait_until(20, || {
            let g = &scim.all("Groups")[0];
            let mut got: Vec<String> = g["members"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|m| m["value"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            got.sort();
            got == want
        }),
        "membership change: {}",
        agent.log()
    );
    assert_eq!(scim.all("Users").len(), 5, "nothing was created twice");

    // A new user and the group taking it in, in one burst: the sender applies a batch's
    // changes concurrently, but the group waits for its new member to be created, so the
    // member is not left out.
    dir.modify(&format!(
        "{}dn: cn=team,{inside}\nchangetype: modify\nadd: member\nmember: uid=m5,{inside}\n\n",
        users_ldif(&inside, &["m5"])
    ));
    assert!(
        wait_until(20, || {
            let Some(m5) = user(&scim, "m5") else {
                return false;
            };
            let g = &scim.all("Groups")[0];
            g["members"]
                .as_array()
                .is_some_and(|a| a.iter().any(|m| m["value"] == m5["id"]))
        }),
        "new member in the same burst: {}",
        agent.log()
    );
    assert_eq!(scim.all("Users").len(), 6, "nothing was created twice");
    drop(run);
}

#[test]
fn a_delete_burst_over_the_threshold_waits_for_approval() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "burst");
    let o = ou.dn.clone();
    let names: Vec<String> = (0..10).map(|i| format!("b{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    dir.modify(&users_ldif(&o, &refs));
    let scim = ScimServer::start();
    let agent = Agent::new(
        &dir,
        &[&o],
        &scim.base_url(),
        &scim.token,
        "delete_threshold = 3",
    );
    let mut run = Running(agent.spawn(&["run"]));
    assert!(
        wait_until(60, || scim.all("Users").len() == 10),
        "first pass: {}",
        agent.log()
    );
    // Within the threshold: goes out.
    dir.modify(&format!("dn: uid=b0,{o}\nchangetype: delete\n"));
    assert!(wait_until(20, || active(&scim, "b0") == Some(false)));

    // A burst of 5 (over the 2 left in the window): all held.
    let burst: String = (1..6)
        .map(|i| format!("dn: uid=b{i},{o}\nchangetype: delete\n\n"))
        .collect();
    dir.modify(&burst);
    assert!(
        wait_until(20, || agent.log().contains("held for approval")),
        "no hold: {}",
        agent.log()
    );
    std::thread::sleep(Duration::from_secs(2));
    for i in 1..6 {
        assert_eq!(
            active(&scim, &format!("b{i}")),
            Some(true),
            "b{i} must not be deactivated before approval: {}",
            agent.log()
        );
    }
    let status = agent.run(&["status"]);
    // Held deletes make the agent unhealthy until a human looks.
    status.assert_code(1);
    assert!(
        status.stdout.starts_with("healthy: no (") && status.stdout.contains("5 deletes are held"),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains("5 HELD for approval"),
        "{}",
        status.stdout
    );
    let listed = agent.run(&["approve-deletes", "--list"]);
    listed.assert_code(0);
    assert!(
        listed.stdout.contains("5 deletes held"),
        "{}",
        listed.stdout
    );

    // One of them comes back before approval: it is no longer held.
    dir.modify(&users_ldif(&o, &["b5"]));
    // (A new entry, new entryUUID: the old anchor stays held; it is a different object.)

    let approved = agent.run(&["approve-deletes"]);
    approved.assert_code(0);
    assert!(
        approved.stdout.contains("the running agent"),
        "{}",
        approved.stdout
    );
    assert!(
        wait_until(20, || (1..5)
            .all(|i| active(&scim, &format!("b{i}")) == Some(false))),
        "approved deletes not sent: {}",
        agent.log()
    );
    let status = agent.run(&["status"]);
    assert!(status.stdout.contains("none held"), "{}", status.stdout);

    // Stopped agent, deletes found by a full pass: over the threshold, held; nothing
    // failed: exit 4.
    signal(&run.0, "TERM");
    assert_eq!(wait_exit(&mut run.0, 20), Some(0), "{}", agent.log());
    let burst: String = (6..10)
        .map(|i| format!("dn: uid=b{i},{o}\nchangetype: delete\n\n"))
        .collect();
    dir.modify(&burst);
    let once = agent.run(&["sync", "--once"]);
    once.assert_code(4);
    assert!(
        once.stderr.contains("4 deletes are held"),
        "{}",
        once.stderr
    );
    assert_eq!(active(&scim, "b6"), Some(true));
    // No agent running: approve-deletes sends them itself.
    let approved = agent.run(&["approve-deletes"]);
    approved.assert_code(0);
    assert!(approved.stdout.contains("4 sent"), "{}", approved.stdout);
    assert!((6..10).all(|i| active(&scim, &format!("b{i}")) == Some(false)));

    // The provisioning log tells the story, one JSON line per operation, without secrets.
    let plog = std::fs::read_to_string(agent.tmp.path().join("state/provisioning.jsonl")).unwrap();
    let ops: Vec<String> = plog
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["op"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let count = |op: &str| ops.iter().filter(|o| *o == op).count();
    assert_eq!(count("create"), 10, "{plog}");
    assert_eq!(count("hold"), 9, "{plog}");
    assert_eq!(
        count("deactivate"),
        10,
        "b0, the approved 5, the approved 4: {plog}"
    );
    // The new uid=b5 is another object with the userName of the SCIM user idrelay created
    // and deactivated for the old one: re-anchored to it once that one was retired (a
    // rehire), active again.
    assert!(
        plog.lines()
            .any(|l| l.contains("\"op\":\"match\"") && l.contains(&format!("uid=b5,{o}"))),
        "{plog}"
    );
    assert_eq!(active(&scim, "b5"), Some(true));
    assert!(plog.contains(&format!("uid=b6,{o}")), "{plog}");
    assert!(
        !plog.contains(&scim.token),
        "no token in the provisioning log"
    );
}

#[test]
fn sigterm_exits_zero_and_sighup_reloads_or_keeps_the_old_config() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "signals");
    let o = ou.dn.clone();
    dir.modify(&users_ldif(&o, &["s0", "s1"]));
    let scim = ScimServer::start();
    let agent = Agent::new(&dir, &[&o], &scim.base_url(), &scim.token, "");
    let mut run = Running(agent.spawn(&["run"]));
    // The first full pass must be complete: a reload during a pass restarts the pass.
    assert!(
        wait_until(60, || agent.log().contains("objects in step")),
        "{}",
        agent.log()
    );

    // A broken config on SIGHUP: logged, the old one kept, changes still flow.
    agent.edit_config("concurrency = 4", "concurrency = 4\nbogus_key = 1");
    signal(&run.0, "HUP");
    assert!(
        wait_until(20, || agent.log().contains("keeping the old config")),
        "{}",
        agent.log()
    );
    assert!(agent.log().contains("bogus_key"), "the bad key is named");
    dir.modify(&format!(
        "dn: uid=s0,{o}\nchangetype: modify\nreplace: title\ntitle: after-bad-reload\n"
    ));
    assert!(
        wait_until(20, || user(&scim, "s0").unwrap()["title"]
            == "after-bad-reload"),
        "{}",
        agent.log()
    );
    // A good config on SIGHUP: reloaded, changes flow, no full pass needed.
    agent.edit_config("\nbogus_key = 1", "");
    signal(&run.0, "HUP");
    assert!(
        wait_until(20, || agent.log().contains("config reloaded")),
        "{}",
        agent.log()
    );
    dir.modify(&format!(
        "dn: uid=s1,{o}\nchangetype: modify\nreplace: title\ntitle: after-reload\n"
    ));
    assert!(
        wait_until(20, || user(&scim, "s1").unwrap()["title"] == "after-reload"),
        "{}",
        agent.log()
    );
    assert_eq!(
        agent.log().matches("full pass owed").count(),
        1,
        "a reload must not cost a full pass: {}",
        agent.log()
    );
    // SIGTERM: exit 0 promptly, saying so.
    signal(&run.0, "TERM");
    assert_eq!(wait_exit(&mut run.0, 20), Some(0), "{}", agent.log());
    assert!(
        agent.log().contains("stopped on request"),
        "{}",
        agent.log()
    );
}

#[test]
fn a_cut_ldap_link_mid_feed_reconnects_without_a_full_pass() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "ldapcut");
    let o = ou.dn.clone();
    dir.modify(&users_ldif(&o, &["c0", "c1"]));
    let scim = ScimServer::start();
    let port: u16 = dir
        .url
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let link = Link::new(port);
    let mut via = dir.clone();
    via.url = format!("ldap://127.0.0.1:{}", link.port);
    let agent = Agent::new(&via, &[&o], &scim.base_url(), &scim.token, "");
    let run = Running(agent.spawn(&["run"]));
    assert!(
        wait_until(60, || agent.log().contains("objects in step")),
        "{}",
        agent.log()
    );
    link.cut();
    dir.modify(&format!(
        "dn: uid=c0,{o}\nchangetype: modify\nreplace: title\ntitle: during-cut\n"
    ));
    std::thread::sleep(Duration::from_secs(2));
    link.restore();
    dir.modify(&format!(
        "dn: uid=c1,{o}\nchangetype: modify\nreplace: title\ntitle: after-cut\n"
    ));
    assert!(
        wait_until(60, || {
            user(&scim, "c0").unwrap()["title"] == "during-cut"
                && user(&scim, "c1").unwrap()["title"] == "after-cut"
        }),
        "changes made during and after the cut must arrive: {}",
        agent.log()
    );
    let log = agent.log();
    assert!(log.contains("change feed stopped"), "{log}");
    assert_eq!(log.matches("full pass owed").count(), 1, "{log}");
    drop(run);
}

/// Issue 17's target "a delete while the agent is stopped propagates", on slapd: the
/// restarted agent resumes from its cookie (no full pass) and syncprov reports the delete.
#[test]
fn a_delete_made_while_the_agent_is_stopped_reaches_scim_from_the_cookie() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "stopdel");
    let o = ou.dn.clone();
    dir.modify(&users_ldif(&o, &["w0", "w1", "w2"]));
    let scim = ScimServer::start();
    let agent = Agent::new(&dir, &[&o], &scim.base_url(), &scim.token, "");
    let mut run = Running(agent.spawn(&["run"]));
    assert!(
        wait_until(60, || scim.all("Users").len() == 3
            && agent.log().contains("objects in step")),
        "{}",
        agent.log()
    );
    signal(&run.0, "TERM");
    assert_eq!(wait_exit(&mut run.0, 20), Some(0));
    dir.modify(&format!("dn: uid=w1,{o}\nchangetype: delete\n"));
    let _run = Running(agent.spawn(&["run"]));
    assert!(
        wait_until(30, || active(&scim, "w1") == Some(false)),
        "a delete made while the agent was stopped must reach the endpoint: {}",
        agent.log()
    );
    assert_eq!(active(&scim, "w0"), Some(true));
    assert_eq!(
        agent.log().matches("full pass owed").count(),
        1,
        "the restart resumed from the cookie (a full pass would hide a lost delete): {}",
        agent.log()
    );
}

#[test]
fn a_stale_cookie_leads_to_a_full_pass_that_converges() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "cookie");
    let o = ou.dn.clone();
    dir.modify(&users_ldif(&o, &["k0", "k1"]));
    let scim = ScimServer::start();
    let agent = Agent::new(&dir, &[&o], &scim.base_url(), &scim.token, "");
    let once = agent.run(&["sync", "--once"]);
    once.assert_code(0);
    let mut run = Running(agent.spawn(&["run"]));
    assert!(
        wait_until(60, || agent.log().contains("objects in step")),
        "{}",
        agent.log()
    );
    signal(&run.0, "TERM");
    assert_eq!(wait_exit(&mut run.0, 20), Some(0));

    // Replace the stored cookie by one from long ago (a csn the server no longer has in
    // its session log) in the same scope.
    let qdir = agent.tmp.path().join("state/queue");
    {
        let cfg = idrelay::queue::QueueConfig::new(qdir.clone());
        let mut q = idrelay::queue::Queue::open(cfg).unwrap();
        let mark: Value = serde_json::from_slice(q.watermark().unwrap()).unwrap();
        let stale =
            idrelay::base64::encode(b"rid=000,csn=20000101000000.000000Z#000000#000#000000");
        let mut m = mark.clone();
        m["cookie"] = Value::String(stale);
        q.mark_resync_done(m.to_string().as_bytes()).unwrap();
    }
    // Changes while the agent is down, one of them a delete.
    dir.modify(&format!(
        "dn: uid=k0,{o}\nchangetype: modify\nreplace: title\ntitle: while-down\n\ndn: uid=k1,{o}\nchangetype: delete\n"
    ));
    let _run = Running(agent.spawn(&["run"]));
    assert!(
        wait_until(60, || {
            user(&scim, "k0").is_some_and(|u| u["title"] == "while-down")
                && active(&scim, "k1") == Some(false)
        }),
        "{}",
        agent.log()
    );
    eprintln!("{}", agent.log());
    assert_eq!(
        agent.log().matches("full pass owed").count(),
        2,
        "the stale cookie must lead to a second full pass: {}",
        agent.log()
    );
}

#[test]
fn the_modify_timestamp_feed_follows_changes_and_moves_on_any_ldap() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "tsfeed");
    let o = ou.dn.clone();
    dir.modify(&(ou_ldif(&o, "in") + &ou_ldif(&o, "out")));
    let inside = format!("ou=in,{o}");
    let outside = format!("ou=out,{o}");
    dir.modify(&users_ldif(&inside, &["t0", "t1"]));
    let scim = ScimServer::start();
    let agent = Agent::new(
        &dir,
        &[&inside],
        &scim.base_url(),
        &scim.token,
        "feed = \"timestamp\"\npoll_interval_secs = 1",
    );
    let run = Running(agent.spawn(&["run"]));
    assert!(
        wait_until(60, || scim.all("Users").len() == 2),
        "{}",
        agent.log()
    );
    assert!(
        agent.log().contains("change feed: timestamp"),
        "{}",
        agent.log()
    );
    dir.modify(&users_ldif(&inside, &["t2"]));
    dir.modify(&format!(
        "dn: uid=t0,{inside}\nchangetype: modify\nreplace: title\ntitle: polled\n"
    ));
    dir.modify(&format!(
        "dn: uid=t1,{inside}\nchangetype: modrdn\nnewrdn: uid=t1\ndeleteoldrdn: 0\nnewsuperior: {outside}\n"
    ));
    assert!(
        wait_until(30, || {
            user(&scim, "t2").is_some()
                && user(&scim, "t0").is_some_and(|u| u["title"] == "polled")
                && active(&scim, "t1") == Some(false)
        }),
        "{}",
        agent.log()
    );
    drop(run);
}
