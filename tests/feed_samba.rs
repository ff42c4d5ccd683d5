//! `idrelay run` against the real Samba AD DC: the DirSync feed (chosen by `auto`) and the
//! uSNChanged feed deliver modifies, disables, membership changes, renames, moves out of
//! scope and deletes (tombstones); a cookie the DC refuses leads to a full pass.

mod common;

use std::process::Child;

use common::{unique, wait_until, Agent, Dir, ScimServer, TestOu};
use serde_json::Value;

fn unicode_pwd(pw: &str) -> String {
    let quoted: Vec<u8> = format!("\"{pw}\"")
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect();
    idrelay::base64::encode(&quoted)
}

/// An enabled AD user `CN={cn},{parent}` with UPN `{sam}@branch.test`.
fn ad_user(parent: &str, cn: &str, sam: &str) -> String {
    format!(
        "dn: CN={cn},{parent}\nobjectClass: user\nsAMAccountName: {sam}\nuserPrincipalName: {sam}@branch.test\ndisplayName: {cn}\ntitle: t0\nunicodePwd:: {pw}\nuserAccountControl: 512\n\n",
        pw = unicode_pwd("Test-Pass-2026!")
    )
}

fn by_upn(scim: &ScimServer, sam: &str) -> Option<Value> {
    let upn = format!("{sam}@branch.test");
    scim.all("Users").into_iter().find(|u| u["userName"] == upn)
}

fn active(scim: &ScimServer, sam: &str) -> Option<bool> {
    by_upn(scim, sam).map(|u| u["active"].as_bool().unwrap_or(true))
}

struct Running(Child);
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn members(scim: &ScimServer) -> Vec<String> {
    let mut v: Vec<String> = scim
        .all("Groups")
        .first()
        .and_then(|g| g["members"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|m| m["value"].as_str().map(str::to_string))
        .collect();
    v.sort();
    v
}

#[test]
fn dirsync_feed_delivers_every_kind_of_change() {
    let dir = Dir::samba();
    let ou = TestOu::create(&dir, "dsfeed");
    let o = ou.dn.clone();
    let tag = unique("d").replace('-', "");
    let sam = |n: &str| format!("{n}{}", &tag[tag.len() - 8..]);
    dir.modify(&format!(
        "dn: OU=In,{o}\nobjectClass: organizationalUnit\n\ndn: OU=Out,{o}\nobjectClass: organizationalUnit\n"
    ));
    let inside = format!("OU=In,{o}");
    let outside = format!("OU=Out,{o}");
    let users: String = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|n| ad_user(&inside, &format!("User {}", sam(n)), &sam(n)))
        .collect();
    dir.modify(&users);
    let cn = |n: &str| format!("CN=User {},{inside}", sam(n));
    dir.modify(&format!(
        "dn: CN=Team {t},{inside}\nobjectClass: group\nsAMAccountName: team{t}\nmember: {a}\nmember: {b}\n",
        t = &tag[tag.len() - 8..],
        a = cn("a"),
        b = cn("b")
    ));
    let scim = ScimServer::start();
    let agent = Agent::new(
        &dir,
        &[&inside],
        &scim.base_url(),
        &scim.token,
        "poll_interval_secs = 1",
    );
    let _run = Running(agent.spawn(&["run"]));
    assert!(
        wait_until(90, || scim.all("Users").len() == 5
            && scim.all("Groups").len() == 1),
        "first pass: {}",
        agent.log()
    );
    assert!(
        agent.log().contains("change feed: dirsync"),
        "{}",
        agent.log()
    );
    let id = |n: &str| {
        by_upn(&scim, &sam(n)).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let a_id = id("a");

    // Modify.
    dir.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: title\ntitle: via-dirsync\n",
        cn("a")
    ));
    assert!(
        wait_until(30, || by_upn(&scim, &sam("a")).unwrap()["title"]
            == "via-dirsync"),
        "modify: {}",
        agent.log()
    );
    // Disable.
    dir.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: 514\n",
        cn("b")
    ));
    assert!(
        wait_until(30, || active(&scim, &sam("b")) == Some(false)),
        "disable: {}",
        agent.log()
    );
    // Membership: remove a, add c.
    dir.modify(&format!(
        "dn: CN=Team {t},{inside}\nchangetype: modify\ndelete: member\nmember: {a}\n-\nadd: member\nmember: {c}\n",
        t = &tag[tag.len() - 8..],
        a = cn("a"),
        c = cn("c")
    ));
    let want = {
        let mut v = vec![id("b"), id("c")];
        v.sort();
        v
    };
    assert!(
        wait_until(30, || members(&scim) == want),
        "membership: {}",
        agent.log()
    );
    // Rename: the same resource; a later change reaches it under the new DN.
    dir.modify(&format!(
        "dn: {}\nchangetype: modrdn\nnewrdn: CN=Renamed {}\ndeleteoldrdn: 1\n",
        cn("a"),
        sam("a")
    ));
    let renamed = format!("CN=Renamed {},{inside}", sam("a"));
    dir.modify(&format!(
        "dn: {renamed}\nchangetype: modify\nreplace: title\ntitle: after-rename\n"
    ));
    assert!(
        wait_until(30, || by_upn(&scim, &sam("a")).unwrap()["title"]
            == "after-rename"),
        "rename: {}",
        agent.log()
    );
    assert_eq!(id("a"), a_id);
    // Move out of scope: deactivated.
    dir.modify(&format!(
        "dn: {}\nchangetype: modrdn\nnewrdn: CN=User {}\ndeleteoldrdn: 1\nnewsuperior: {outside}\n",
        cn("d"),
        sam("d")
    ));
    assert!(
        wait_until(30, || active(&scim, &sam("d")) == Some(false)),
        "move out: {}",
        agent.log()
    );
    // Delete: the tombstone deactivates.
    dir.modify(&format!("dn: {}\nchangetype: delete\n", cn("e")));
    assert!(
        wait_until(30, || active(&scim, &sam("e")) == Some(false)),
        "delete: {}",
        agent.log()
    );
    // Create.
    dir.modify(&ad_user(&inside, &format!("User {}", sam("f")), &sam("f")));
    assert!(
        wait_until(30, || by_upn(&scim, &sam("f")).is_some()),
        "create: {}",
        agent.log()
    );
    assert_eq!(scim.all("Users").len(), 6, "nothing created twice");
    assert_eq!(
        agent.log().matches("full pass owed").count(),
        1,
        "{}",
        agent.log()
    );
}

/// Issue 17's target "a delete while the agent is stopped propagates", on Samba AD: the
/// restarted agent resumes DirSync from its cookie (no full pass) and the tombstone
/// deactivates the user.
#[test]
fn a_delete_made_while_the_agent_is_stopped_reaches_scim_from_the_dirsync_cookie() {
    let dir = Dir::samba();
    let ou = TestOu::create(&dir, "dsstop");
    let o = ou.dn.clone();
    let tag = unique("d").replace('-', "");
    let sam = |n: &str| format!("{n}{}", &tag[tag.len() - 8..]);
    let users: String = ["a", "b"]
        .iter()
        .map(|n| ad_user(&o, &format!("User {}", sam(n)), &sam(n)))
        .collect();
    dir.modify(&users);
    let scim = ScimServer::start();
    let agent = Agent::new(
        &dir,
        &[&o],
        &scim.base_url(),
        &scim.token,
        "poll_interval_secs = 1",
    );
    let mut run = Running(agent.spawn(&["run"]));
    assert!(
        wait_until(90, || scim.all("Users").len() == 2
            && agent.log().contains("objects in step")),
        "{}",
        agent.log()
    );
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &run.0.id().to_string()])
        .status();
    assert!(
        wait_until(30, || matches!(run.0.try_wait(), Ok(Some(_)))),
        "run did not stop on SIGTERM"
    );
    dir.modify(&format!(
        "dn: CN=User {},{o}\nchangetype: delete\n",
        sam("b")
    ));
    let _again = Running(agent.spawn(&["run"]));
    assert!(
        wait_until(30, || active(&scim, &sam("b")) == Some(false)),
        "a delete made while the agent was stopped must reach the endpoint: {}",
        agent.log()
    );
    assert_eq!(active(&scim, &sam("a")), Some(true));
    assert_eq!(
        agent.log().matches("full pass owed").count(),
        1,
        "the restart resumed from the DirSync cookie: {}",
        agent.log()
    );
}

#[test]
fn usn_feed_delivers_changes_and_tombstones_and_a_refused_dirsync_cookie_means_a_full_pass() {
    let dir = Dir::samba();
    let ou = TestOu::create(&dir, "usnfeed");
    let o = ou.dn.clone();
    let tag = unique("u").replace('-', "");
    let sam = |n: &str| format!("{n}{}", &tag[tag.len() - 8..]);
    let users: String = ["a", "b", "c"]
        .iter()
        .map(|n| ad_user(&o, &format!("User {}", sam(n)), &sam(n)))
        .collect();
    dir.modify(&users);
    let cn = |n: &str| format!("CN=User {},{o}", sam(n));
    let scim = ScimServer::start();
    let agent = Agent::new(
        &dir,
        &[&o],
        &scim.base_url(),
        &scim.token,
        "feed = \"usn\"\npoll_interval_secs = 1",
    );
    let mut run = Running(agent.spawn(&["run"]));
    assert!(
        wait_until(90, || scim.all("Users").len() == 3),
        "{}",
        agent.log()
    );
    assert!(agent.log().contains("change feed: usn"), "{}", agent.log());
    dir.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: title\ntitle: via-usn\n",
        cn("a")
    ));
    dir.modify(&format!("dn: {}\nchangetype: delete\n", cn("b")));
    assert!(
        wait_until(30, || by_upn(&scim, &sam("a")).unwrap()["title"]
            == "via-usn"
            && active(&scim, &sam("b")) == Some(false)),
        "{}",
        agent.log()
    );
    let _ = run.0.kill();
    let _ = run.0.wait();

    // DirSync now, with a cookie the DC cannot use: the feed says so and a full pass runs.
    agent.edit_config("feed = \"usn\"", "feed = \"dirsync\"");
    let mut second = Running(agent.spawn(&["run"]));
    assert!(
        wait_until(90, || agent.log().matches("objects in step").count() >= 2),
        "switching feeds means a full pass: {}",
        agent.log()
    );
    dir.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: title\ntitle: via-dirsync\n",
        cn("c")
    ));
    assert!(
        wait_until(30, || by_upn(&scim, &sam("c")).unwrap()["title"]
            == "via-dirsync"),
        "{}",
        agent.log()
    );
    let _ = second.0.kill();
    let _ = second.0.wait();

    // A DirSync cookie the DC cannot read (same scope): the feed says so, a full pass runs.
    {
        let cfg = idrelay::queue::QueueConfig::new(agent.tmp.path().join("state/queue"));
        let mut q = idrelay::queue::Queue::open(cfg).unwrap();
        let mut m: Value = serde_json::from_slice(q.watermark().unwrap()).unwrap();
        m["cookie"] = Value::String(idrelay::base64::encode(b"not a dirsync cookie"));
        q.mark_resync_done(m.to_string().as_bytes()).unwrap();
    }
    dir.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: title\ntitle: after-bad-cookie\n",
        cn("c")
    ));
    let _third = Running(agent.spawn(&["run"]));
    assert!(
        wait_until(60, || by_upn(&scim, &sam("c")).unwrap()["title"]
            == "after-bad-cookie"),
        "{}",
        agent.log()
    );
    assert!(
        agent.log().contains("refused the DirSync cookie"),
        "{}",
        agent.log()
    );
    // The full pass sends the change before it logs its summary line: wait for the line.
    assert!(
        wait_until(30, || agent.log().matches("objects in step").count() >= 3),
        "{}",
        agent.log()
    );
}

/// AD change notifications (1.2.840.113556.1.4.528), which Samba offers: with a poll
/// interval of two minutes, a change still arrives within seconds, because the notification
/// makes the DirSync poll come at once. Prints the latencies measured (Samba sends its
/// notifications on a timer of its own, about every 5 s).
#[test]
fn a_change_notification_brings_the_poll_forward() {
    let dir = Dir::samba();
    let ou = TestOu::create(&dir, "notify");
    let o = ou.dn.clone();
    let tag = unique("n").replace('-', "");
    let sam = format!("n{}", &tag[tag.len() - 8..]);
    dir.modify(&ad_user(&o, &format!("User {sam}"), &sam));
    let scim = ScimServer::start();
    let agent = Agent::new(
        &dir,
        &[&o],
        &scim.base_url(),
        &scim.token,
        "poll_interval_secs = 120",
    );
    let _run = Running(agent.spawn(&["run"]));
    assert!(
        wait_until(90, || by_upn(&scim, &sam).is_some()
            && agent.log().contains("objects in step")),
        "first pass: {}",
        agent.log()
    );
    // Said when the feed starts, just after the pass's summary line.
    assert!(
        wait_until(10, || agent.log().contains("change notifications on")),
        "{}",
        agent.log()
    );
    let mut latencies = Vec::new();
    for round in 0..3 {
        // After the first pass's poll has settled into its two-minute wait.
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let title = format!("notified-{round}");
        let t0 = std::time::Instant::now();
        dir.modify(&format!(
            "dn: CN=User {sam},{o}\nchangetype: modify\nreplace: title\ntitle: {title}\n"
        ));
        assert!(
            wait_until(20, || by_upn(&scim, &sam).unwrap()["title"]
                == title.as_str()),
            "change {round} did not arrive within 20 s although notified: {}",
            agent.log()
        );
        latencies.push(t0.elapsed().as_secs_f64());
    }
    eprintln!("change notification latencies on Samba (s): {latencies:.2?}");
}
