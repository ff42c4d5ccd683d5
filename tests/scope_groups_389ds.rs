//! Group-based scoping (`[scope] groups`, `nested`) in `run` on the real 389 Directory
//! Server (syncrepl through the Content Synchronization plugin) and scim2-server: a user who
//! joins a scoping group, directly or through a group two levels down, arrives; one who
//! leaves is deactivated (never deleted); a mass leave over `delete_threshold` is held
//! whole until `approve-deletes`.
//!
//! Without `DS389_URL` (run through scripts/test.sh) the test prints a note and returns.

mod common;

use common::{wait_until, Agent, Dir, Running, ScimServer, TestOu};
use serde_json::Value;

/// ou=people: u0..u7; ou=groups: cloud ∋ u0, u1, inner; inner ∋ u2, deep; deep ∋ u3,
/// cloud (a cycle). u4..u7 are in no group.
fn populate(dir: &Dir, o: &str) {
    let mut ldif = format!(
        "dn: ou=people,{o}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: ou=groups,{o}\nobjectClass: organizationalUnit\nou: groups\n\n"
    );
    for i in 0..8 {
        ldif.push_str(&format!(
            "dn: uid=u{i},ou=people,{o}\nobjectClass: inetOrgPerson\nuid: u{i}\ncn: User {i}\nsn: S\n\n"
        ));
    }
    let group = |name: &str, members: &[String]| {
        let m: String = members.iter().map(|d| format!("member: {d}\n")).collect();
        format!("dn: cn={name},ou=groups,{o}\nobjectClass: groupOfNames\ncn: {name}\n{m}\n")
    };
    let u = |i: u32| format!("uid=u{i},ou=people,{o}");
    let g = |n: &str| format!("cn={n},ou=groups,{o}");
    // The groups a cycle names come first, with a user only; the cycle is closed below.
    ldif.push_str(&group("deep", &[u(3)]));
    ldif.push_str(&group("inner", &[u(2), g("deep")]));
    ldif.push_str(&group("cloud", &[u(0), u(1), g("inner")]));
    dir.modify(&ldif);
    dir.modify(&format!(
        "dn: {}\nchangetype: modify\nadd: member\nmember: {}\n",
        g("deep"),
        g("cloud")
    ));
}

fn active(scim: &ScimServer, name: &str) -> Option<bool> {
    scim.all("Users")
        .into_iter()
        .find(|u| u["userName"] == name)
        .map(|u| u["active"].as_bool().unwrap_or(true))
}

fn user_names(scim: &ScimServer) -> Vec<String> {
    let mut v: Vec<String> = scim
        .all("Users")
        .iter()
        .filter_map(|u| u["userName"].as_str().map(str::to_string))
        .collect();
    v.sort();
    v
}

fn held(agent: &Agent) -> Value {
    agent.status_json().0["held_deletes"].clone()
}

#[test]
fn joining_and_leaving_a_scoping_group_in_run_on_389ds() {
    let Some(dir) = Dir::ds389() else { return };
    let ou = TestOu::create(&dir, "ds-sgrun");
    let o = ou.dn.clone();
    populate(&dir, &o);
    let scim = ScimServer::start();
    let cloud = format!("cn=cloud,ou=groups,{o}");
    let deep = format!("cn=deep,ou=groups,{o}");
    let a = Agent::new(&dir, &[&o], &scim.base_url(), &scim.token, "");
    a.edit_config(
        &format!("include = [\"{o}\"]"),
        &format!("include = [\"{o}\"]\ngroups = [\"{cloud}\"]\nnested = true"),
    );
    a.edit_config(
        "delete_settle_secs = 1",
        "delete_settle_secs = 1\ndelete_threshold = 2",
    );
    let _run = Running(a.spawn(&["run"]));
    assert!(
        wait_until(60, || user_names(&scim) == ["u0", "u1", "u2", "u3"]),
        "first pass: {:?}\n{}",
        user_names(&scim),
        a.log()
    );
    assert!(a.log().contains("syncrepl"), "{}", a.log());

    // u5 joins the listed group directly: provisioned.
    let t = std::time::Instant::now();
    dir.modify(&format!(
        "dn: {cloud}\nchangetype: modify\nadd: member\nmember: uid=u5,ou=people,{o}\n"
    ));
    assert!(
        wait_until(30, || active(&scim, "u5") == Some(true)),
        "joined: {}",
        a.log()
    );
    eprintln!("389-DS: joined in {:.2} s", t.elapsed().as_secs_f64());

    // u4 joins a group two levels down: provisioned too.
    let t = std::time::Instant::now();
    dir.modify(&format!(
        "dn: {deep}\nchangetype: modify\nadd: member\nmember: uid=u4,ou=people,{o}\n"
    ));
    assert!(
        wait_until(30, || active(&scim, "u4") == Some(true)),
        "joined through nesting: {}",
        a.log()
    );
    eprintln!(
        "389-DS: joined through nesting in {:.2} s",
        t.elapsed().as_secs_f64()
    );

    // u1 leaves: deactivated (the default user_delete), not deleted.
    let t = std::time::Instant::now();
    dir.modify(&format!(
        "dn: {cloud}\nchangetype: modify\ndelete: member\nmember: uid=u1,ou=people,{o}\n"
    ));
    assert!(
        wait_until(30, || active(&scim, "u1") == Some(false)),
        "left: {}",
        a.log()
    );
    eprintln!("389-DS: left in {:.2} s", t.elapsed().as_secs_f64());

    // u4 leaves through nesting: deep drops it.
    dir.modify(&format!(
        "dn: {deep}\nchangetype: modify\ndelete: member\nmember: uid=u4,ou=people,{o}\n"
    ));
    assert!(
        wait_until(30, || active(&scim, "u4") == Some(false)),
        "left through nesting: {}",
        a.log()
    );

    // Delete safety: inner leaves cloud, which takes u2 and u3 (and inner, deep) out at
    // once, over delete_threshold = 2: held whole, nothing deactivated or deleted.
    dir.modify(&format!(
        "dn: {cloud}\nchangetype: modify\ndelete: member\nmember: cn=inner,ou=groups,{o}\n"
    ));
    assert!(
        wait_until(30, || held(&a).as_u64().unwrap_or(0) >= 3),
        "not held: {}\n{}",
        held(&a),
        a.log()
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(active(&scim, "u2"), Some(true), "{}", a.log());
    assert_eq!(active(&scim, "u3"), Some(true));
    assert_eq!(scim.all("Groups").len(), 3, "no group deleted");
    a.run(&["approve-deletes"]).assert_code(0);
    assert!(
        wait_until(30, || active(&scim, "u2") == Some(false)
            && active(&scim, "u3") == Some(false)),
        "approved: {}",
        a.log()
    );
    assert_eq!(active(&scim, "u0"), Some(true));
}
