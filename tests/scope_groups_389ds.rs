//! Group-based scoping (`[scope] groups`, `nested`) in `run` on the real 389 Directory
//! Server (syncrepl through the Content Synchronization plugin) and scim2-server: a user who
//! joins a scoping group, directly or through a group two levels down, arrives; one who
//! leaves is deactivated (never deleted); a mass leave over `delete_threshold` is held
//! whole until `approve-deletes` (the scenario is `common::scope_groups`, the same on every
//! directory).
//!
//! Without `DS389_URL` (run through scripts/test.sh) the test prints a note and returns.

mod common;

use common::scope_groups::{join_and_leave_in_run, user_names, Tree};
use common::{wait_until, Agent, Dir, Running, ScimServer, TestOu};

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

#[test]
fn joining_and_leaving_a_scoping_group_in_run_on_389ds() {
    let Some(dir) = Dir::ds389() else { return };
    let ou = TestOu::create(&dir, "ds-sgrun");
    let o = ou.dn.clone();
    populate(&dir, &o);
    let scim = ScimServer::start();
    let g = |n: &str| format!("cn={n},ou=groups,{o}");
    let a = Agent::new(&dir, &[&o], &scim.base_url(), &scim.token, "");
    a.edit_config(
        &format!("include = [\"{o}\"]"),
        &format!(
            "include = [\"{o}\"]\ngroups = [\"{}\"]\nnested = true",
            g("cloud")
        ),
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
    let tree = Tree::people_and_groups("389-DS", &o);
    join_and_leave_in_run(&dir, &scim, &a, &tree);
}
