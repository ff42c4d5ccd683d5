//! `idrelay run` against the real 389 Directory Server (Retro Changelog + Content
//! Synchronization: RFC 4533 syncrepl) and scim2-server: the export anchors on nsUniqueId,
//! and deletes reach the endpoint whether they happen while the agent follows the feed or
//! while it is stopped (it resumes from its cookie, without a full pass). With entryUUID
//! anchors (`kind = "openldap"`) deletes are found by their DN, and only once the directory
//! confirms the object is gone. Regression tests for "every delete is lost on 389-DS".
//!
//! What 389-DS sends (seen on 389-ds-base 2.3): the Sync State control and syncIdSets carry
//! the entry's nsUniqueId as 16 bytes (`b4f55441-f16a11f1-b259f0ea-34f55c5e` arrives as
//! `b4 f5 54 41 f1 6a 11 f1 ...`, which the standard UUID form writes
//! `b4f55441-f16a-11f1-b259-f0ea34f55c5e`), unrelated to the entry's entryUUID. A delete
//! during the persist phase comes with the entry's DN; one made while the consumer was away
//! comes in a syncIdSet, without a DN.
//!
//! The server comes from `scripts/testbed/389ds.sh` (started by `scripts/test.sh`); without
//! `DS389_URL` each test prints a note and returns. Every test works in an OU of its own,
//! removed at its end.

mod common;

use std::process::Command;

use common::faultproxy::FaultProxy;
use common::{wait_until, Agent, Dir, Running, ScimServer, TestOu};
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

fn stop(run: &mut Running) {
    let ok = Command::new("kill")
        .args(["-TERM", &run.0.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM {}", run.0.id());
    let mut code = None;
    wait_until(30, || match run.0.try_wait() {
        Ok(Some(s)) => {
            code = s.code();
            true
        }
        _ => false,
    });
    assert_eq!(code, Some(0), "idrelay run did not stop with 0 on SIGTERM");
}

#[test]
fn export_anchors_on_nsuniqueid_and_deletes_while_running_reach_scim() {
    let Some(dir) = Dir::ds389() else { return };
    let ou = TestOu::create(&dir, "ds-follow");
    let o = ou.dn.clone();
    dir.modify(&users_ldif(&o, &["f0", "f1", "f2"]));
    dir.modify(&format!(
        "dn: cn=crew,{o}\nobjectClass: groupOfNames\ncn: crew\nmember: uid=f0,{o}\nmember: uid=f2,{o}\n"
    ));
    let scim = ScimServer::start();
    let agent = Agent::new(&dir, &[&o], &scim.base_url(), &scim.token, "");
    let run = Running(agent.spawn(&["run"]));
    assert!(
        wait_until(60, || scim.all("Users").len() == 3
            && scim.all("Groups").len() == 1
            && agent.log().contains("objects in step")),
        "export: {}",
        agent.log()
    );
    let ns = dir.attr_ldif(&format!("uid=f0,{o}"), "nsUniqueId").unwrap();
    assert_eq!(
        user(&scim, "f0").unwrap()["externalId"],
        ns.as_str(),
        "389-DS objects are anchored on nsUniqueId"
    );

    // A rename keeps the SCIM resource (nsUniqueId does not change with the DN).
    let f2_id = user(&scim, "f2").unwrap()["id"].clone();
    dir.modify(&format!(
        "dn: uid=f2,{o}\nchangetype: modrdn\nnewrdn: uid=f2-renamed\ndeleteoldrdn: 1\n"
    ));
    assert!(
        wait_until(20, || user(&scim, "f2-renamed").is_some()),
        "rename: {}",
        agent.log()
    );
    assert_eq!(user(&scim, "f2-renamed").unwrap()["id"], f2_id);
    assert_eq!(scim.all("Users").len(), 3, "renamed, not created again");

    // A delete while the agent follows the feed: the user is deactivated (the default).
    dir.modify(&format!("dn: uid=f1,{o}\nchangetype: delete\n"));
    assert!(
        wait_until(20, || active(&scim, "f1") == Some(false)),
        "a delete made while the agent runs must reach the endpoint: {}",
        agent.log()
    );
    // A group delete: the group is deleted.
    dir.modify(&format!("dn: cn=crew,{o}\nchangetype: delete\n"));
    assert!(
        wait_until(20, || scim.all("Groups").is_empty()),
        "a group delete must reach the endpoint: {}",
        agent.log()
    );
    assert_eq!(active(&scim, "f0"), Some(true));
    assert_eq!(active(&scim, "f2-renamed"), Some(true));
    assert_eq!(
        agent.log().matches("full pass owed").count(),
        1,
        "the deletes came through the feed, not a full pass: {}",
        agent.log()
    );
    // Stopped as an operator stops it (SIGTERM: the anchor index is saved on the way out;
    // after a SIGKILL a pass may repeat the last writes, which is harmless but not zero).
    let mut run = run;
    assert!(common::terminate(&mut run.0).success(), "{}", agent.log());
    drop(run);
    // A second pass over what the feed brought in step writes nothing.
    let again = agent.run(&["sync", "--once"]);
    again.assert_wrote_nothing();
}

#[test]
fn a_delete_made_while_the_agent_is_stopped_reaches_scim_after_the_restart() {
    let Some(dir) = Dir::ds389() else { return };
    let ou = TestOu::create(&dir, "ds-restart");
    let o = ou.dn.clone();
    dir.modify(&(ou_ldif(&o, "in") + &ou_ldif(&o, "out")));
    let inside = format!("ou=in,{o}");
    let outside = format!("ou=out,{o}");
    dir.modify(&users_ldif(&inside, &["s0", "s1", "s2"]));
    dir.modify(&users_ldif(&outside, &["x0"]));
    let scim = ScimServer::start();
    let agent = Agent::new(
        &dir,
        &[&inside],
        &scim.base_url(),
        &scim.token,
        "user_delete = \"delete\"",
    );
    let mut run = Running(agent.spawn(&["run"]));
    assert!(
        wait_until(60, || scim.all("Users").len() == 3
            && agent.log().contains("objects in step")),
        "export: {}",
        agent.log()
    );
    stop(&mut run);

    // While it is stopped: a change, a delete in scope, and the delete of an object it never
    // provisioned (outside the included subtree).
    dir.modify(&format!(
        "dn: uid=s0,{inside}\nchangetype: modify\nreplace: title\ntitle: while-down\n\n\
         dn: uid=s1,{inside}\nchangetype: delete\n\n\
         dn: uid=x0,{outside}\nchangetype: delete\n"
    ));
    let _run = Running(agent.spawn(&["run"]));
    assert!(
        wait_until(30, || user(&scim, "s0")
            .is_some_and(|u| u["title"] == "while-down")),
        "the change made while stopped: {}",
        agent.log()
    );
    assert!(
        wait_until(20, || user(&scim, "s1").is_none()),
        "a delete made while the agent was stopped must reach the endpoint after the restart: {}",
        agent.log()
    );
    assert!(user(&scim, "s2").is_some());
    let log = agent.log();
    assert_eq!(
        log.matches("full pass owed").count(),
        1,
        "the restart resumed from the cookie (a full pass would hide a lost delete): {log}"
    );
    // Never silently: the delete it could not match is in the log and in `status`. (Deletes
    // other tests make meanwhile elsewhere in the directory come without a DN too, so the
    // count may be higher.)
    assert!(
        log.contains("WARN") && log.contains("matches nothing this agent provisioned"),
        "{log}"
    );
    let status = agent.run(&["status"]);
    status.assert_code(0);
    let unmatched: u64 = status
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("unmatched:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        unmatched >= 1,
        "status must count the unmatched delete:\n{}",
        status.stdout
    );
}

#[test]
fn with_an_entryuuid_anchor_a_delete_is_found_by_its_dn() {
    // `kind = "openldap"` anchors on entryUUID, which has nothing in common with the uuid
    // 389-DS sends: the delete is matched by the DN that comes with it (after a rename, by
    // the new DN), once the directory confirms that no entry has that entryUUID any more.
    let Some(dir) = Dir::ds389() else { return };
    let ou = TestOu::create(&dir, "ds-dn");
    let o = ou.dn.clone();
    dir.modify(&users_ldif(&o, &["d0", "d1", "d2"]));
    let scim = ScimServer::start();
    let agent = Agent::new(&dir, &[&o], &scim.base_url(), &scim.token, "");
    agent.edit_config(
        &format!("base_dn = \"{}\"", dir.base),
        &format!("base_dn = \"{}\"\nkind = \"openldap\"", dir.base),
    );
    let run = Running(agent.spawn(&["run"]));
    assert!(
        wait_until(60, || scim.all("Users").len() == 3
            && agent.log().contains("objects in step")),
        "export: {}",
        agent.log()
    );
    let euuid = dir.attr_ldif(&format!("uid=d0,{o}"), "entryUUID").unwrap();
    assert_eq!(user(&scim, "d0").unwrap()["externalId"], euuid.as_str());

    dir.modify(&format!("dn: uid=d0,{o}\nchangetype: delete\n"));
    assert!(
        wait_until(20, || active(&scim, "d0") == Some(false)),
        "delete by DN: {}",
        agent.log()
    );
    dir.modify(&format!(
        "dn: uid=d1,{o}\nchangetype: modrdn\nnewrdn: uid=d1-renamed\ndeleteoldrdn: 1\n"
    ));
    assert!(
        wait_until(20, || user(&scim, "d1-renamed").is_some()),
        "rename: {}",
        agent.log()
    );
    dir.modify(&format!("dn: uid=d1-renamed,{o}\nchangetype: delete\n"));
    assert!(
        wait_until(20, || active(&scim, "d1-renamed") == Some(false)),
        "delete by the new DN: {}",
        agent.log()
    );
    assert_eq!(active(&scim, "d2"), Some(true));
    drop(run);
}

#[test]
fn a_delete_at_a_dn_another_object_just_left_does_not_touch_that_object() {
    // Still with entryUUID anchors, so deletes are matched by DN: `a` is renamed away from
    // uid=a, a new entry takes uid=a and is deleted at once. While the endpoint holds the
    // rename's PUT (stalled), the index still has `a` under uid=a, so the delete's DN
    // points at it; the directory, asked for a's entryUUID, shows it alive: not deleted.
    let Some(dir) = Dir::ds389() else { return };
    let ou = TestOu::create(&dir, "ds-reuse");
    let o = ou.dn.clone();
    dir.modify(&users_ldif(&o, &["a", "z"]));
    let scim = ScimServer::start();
    let proxy = FaultProxy::http(scim.port);
    let agent = Agent::new(&dir, &[&o], &proxy.http_url("/v2"), &scim.token, "");
    agent.edit_config(
        &format!("base_dn = \"{}\"", dir.base),
        &format!("base_dn = \"{}\"\nkind = \"openldap\"", dir.base),
    );
    let run = Running(agent.spawn(&["run"]));
    assert!(
        wait_until(60, || scim.all("Users").len() == 2
            && agent.log().contains("objects in step")),
        "export: {}",
        agent.log()
    );
    let a_anchor = dir.attr_ldif(&format!("uid=a,{o}"), "entryUUID").unwrap();
    proxy.stall_next_of("PUT", 1);
    // The delete of z comes first: the sender lingers for the rest of the burst, so all
    // four changes land in one batch.
    dir.modify(&format!(
        "dn: uid=z,{o}\nchangetype: delete\n\n\
         dn: uid=a,{o}\nchangetype: modrdn\nnewrdn: uid=a-moved\ndeleteoldrdn: 1\n\n{}\
         dn: uid=a,{o}\nchangetype: delete\n",
        users_ldif(&o, &["a"])
    ));
    assert!(
        wait_until(60, || active(&scim, "z") == Some(false)
            && user(&scim, "a-moved").is_some()),
        "the burst: {}",
        agent.log()
    );
    let plog = std::fs::read_to_string(agent.tmp.path().join("state/provisioning.jsonl")).unwrap();
    assert!(
        !plog
            .lines()
            .any(|l| l.contains("\"deactivate\"") && l.contains(&a_anchor)),
        "a (renamed, still in the directory) must not be deactivated: {plog}"
    );
    let log = agent.log();
    assert!(
        log.contains(&format!("delete of uid=a,{o}")) && log.contains("is still in the directory"),
        "the delete at the reused DN is reported, a found alive: {log}"
    );
    assert_eq!(active(&scim, "a-moved"), Some(true), "{log}");
    drop(run);
}

/// `check` names the directory and says whether the feed's prerequisites are in place: the
/// Content Synchronization plugin (syncrepl offered) and a Retro Changelog that keeps
/// `targetUniqueId` (verified where the account may read `cn=changelog`, said as a WARN
/// with the fix where it may not).
#[test]
fn check_names_389_ds_and_its_feed_prerequisites() {
    let Some(dir) = Dir::ds389() else { return };
    let ou = TestOu::create(&dir, "ds-check");
    let scim = ScimServer::start();
    let agent = Agent::new(&dir, &[&ou.dn], &scim.base_url(), &scim.token, "");
    let run = agent.run(&["check"]);
    let out = run.stdout.clone();
    assert_eq!(run.code, 0, "{out}\n{}", run.stderr);
    assert!(
        out.contains("389 Directory Server (detected from the rootDSE)"),
        "{out}"
    );
    assert!(
        out.contains("feed       OK    syncrepl (RFC 4533) offered"),
        "{out}"
    );
    // The read-only account cannot read cn=changelog: not verifiable, said with the fix.
    assert!(
        out.contains("feed       WARN  389-DS Retro Changelog (cn=changelog) is not readable by")
            && out.contains("nsuniqueid:targetUniqueId"),
        "{out}"
    );

    // The directory manager can: the testbed's changelog keeps targetUniqueId.
    let root = Dir {
        bind_dn: dir.admin_dn.clone(),
        bind_pw: dir.admin_pw.clone(),
        ..Dir::ds389().unwrap()
    };
    let agent = Agent::new(&root, &[&ou.dn], &scim.base_url(), &scim.token, "");
    let run = agent.run(&["check"]);
    assert!(
        run.stdout
            .contains("feed       OK    389-DS Retro Changelog keeps targetUniqueId"),
        "{}",
        run.stdout
    );

    // `kind = "389ds"` set by hand is taken as set.
    let agent = Agent::new(&dir, &[&ou.dn], &scim.base_url(), &scim.token, "");
    agent.edit_config("[scope]", "kind = \"389ds\"\n\n[scope]");
    let run = agent.run(&["check"]);
    assert!(
        run.stdout
            .contains("389 Directory Server (set by directory.kind)"),
        "{}",
        run.stdout
    );
}
