//! Group-based scoping (`[scope] groups`, `nested`) on the real binary against the real
//! slapd and scim2-server: a scope by one group exports only the group and its members;
//! `nested` follows a two-level tree (with a cycle); in `run`, a user who joins arrives and
//! one who leaves is deactivated; a listed group that does not exist is refused by `check`
//! and stops `sync` before any delete.

mod common;

use std::collections::BTreeSet;

use common::scope_groups::{active, join_and_leave_in_run, Tree};
use common::{wait_until, Agent, Dir, Running, ScimServer, TestOu};

/// ou=people: u0..u5; ou=groups: cloud ∋ u0, u1, inner; inner ∋ u2, deep;
/// deep ∋ u3, cloud (a cycle); other ∋ u4. u5 is in no group.
fn populate(dir: &Dir, o: &str) {
    let mut ldif = format!(
        "dn: ou=people,{o}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: ou=groups,{o}\nobjectClass: organizationalUnit\nou: groups\n\n"
    );
    for i in 0..6 {
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
    // Groups before the ones that name them are fine: slapd does not check member values.
    ldif.push_str(&group("cloud", &[u(0), u(1), g("inner")]));
    ldif.push_str(&group("inner", &[u(2), g("deep")]));
    ldif.push_str(&group("deep", &[u(3), g("cloud")]));
    ldif.push_str(&group("other", &[u(4)]));
    dir.modify(&ldif);
}

fn names(scim: &ScimServer, endpoint: &str, attr: &str) -> BTreeSet<String> {
    scim.all(endpoint)
        .iter()
        .filter_map(|r| r[attr].as_str().map(str::to_string))
        .collect()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// An agent scoped to the test OU and to `groups` (with `nested`).
fn agent(dir: &Dir, o: &str, scim: &ScimServer, groups: &[String], nested: bool) -> Agent {
    let a = Agent::new(dir, &[o], &scim.base_url(), &scim.token, "");
    let list = groups
        .iter()
        .map(|g| format!("\"{g}\""))
        .collect::<Vec<_>>()
        .join(", ");
    a.edit_config(
        &format!("include = [\"{o}\"]"),
        &format!("include = [\"{o}\"]\ngroups = [{list}]\nnested = {nested}"),
    );
    a
}

#[test]
fn a_scope_by_one_group_exports_its_members_and_nested_follows_the_tree() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "sgroups");
    let o = ou.dn.clone();
    populate(&dir, &o);
    let scim = ScimServer::start();
    let cloud = format!("cn=cloud,ou=groups,{o}");
    let a = agent(&dir, &o, &scim, std::slice::from_ref(&cloud), false);

    let r = a.run(&["sync", "--once"]);
    r.assert_code(0);
    assert_eq!(
        names(&scim, "Users", "userName"),
        set(&["u0", "u1"]),
        "{}",
        r.stderr
    );
    // The group itself and its member group; not the member group's members.
    assert_eq!(
        names(&scim, "Groups", "displayName"),
        set(&["cloud", "inner"])
    );

    let check = a.run(&["check"]);
    let line = check
        .stdout
        .lines()
        .find(|l| l.contains("scope.groups"))
        .unwrap_or_else(|| panic!("no scope.groups line:\n{}", check.stdout))
        .to_string();
    assert!(line.contains("OK") && line.contains("1 groups"), "{line}");
    let scope_line = check
        .stdout
        .lines()
        .find(|l| l.contains("users,") && l.contains("in scope"))
        .unwrap_or_else(|| panic!("no scope line:\n{}", check.stdout));
    assert!(
        scope_line.contains("2 users, 2 groups") && scope_line.contains("scope.groups"),
        "{scope_line}"
    );

    let p = a.run(&["preview", &format!("uid=u5,ou=people,{o}")]);
    assert!(
        p.stdout
            .contains("in scope:  no: not a member of scope.groups"),
        "{}\n{}",
        p.stdout,
        p.stderr
    );
    let p = a.run(&["preview", &format!("uid=u1,ou=people,{o}")]);
    assert!(p.stdout.contains("in scope:  yes"), "{}", p.stdout);

    // nested: the whole tree, through the cycle back to cloud; `other` and u5 stay out.
    a.edit_config("nested = false", "nested = true");
    let r = a.run(&["sync", "--once"]);
    r.assert_code(0);
    assert_eq!(
        names(&scim, "Users", "userName"),
        set(&["u0", "u1", "u2", "u3"]),
        "{}",
        r.stderr
    );
    assert_eq!(
        names(&scim, "Groups", "displayName"),
        set(&["cloud", "inner", "deep"])
    );
    let p = a.run(&["preview", &format!("uid=u3,ou=people,{o}")]);
    assert!(p.stdout.contains("in scope:  yes"), "{}", p.stdout);

    // Back to direct members: the nested-only users leave scope (deactivated).
    a.edit_config("nested = true", "nested = false");
    let r = a.run(&["sync", "--once"]);
    r.assert_code(0);
    assert_eq!(active(&scim, "u2"), Some(false), "{}", r.stderr);
    assert_eq!(active(&scim, "u3"), Some(false));
    assert_eq!(active(&scim, "u0"), Some(true));
}

#[test]
fn a_missing_scoping_group_is_refused_by_check_and_stops_sync_without_deletes() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "sgmissing");
    let o = ou.dn.clone();
    populate(&dir, &o);
    let scim = ScimServer::start();
    let cloud = format!("cn=cloud,ou=groups,{o}");
    let a = agent(&dir, &o, &scim, std::slice::from_ref(&cloud), false);
    a.run(&["sync", "--once"]).assert_code(0);
    assert_eq!(names(&scim, "Users", "userName"), set(&["u0", "u1"]));

    // The only listed group is renamed away: its DN names nothing now.
    dir.modify(&format!(
        "dn: {cloud}\nchangetype: modrdn\nnewrdn: cn=cloud-renamed\ndeleteoldrdn: 1\n"
    ));
    let check = a.run(&["check"]);
    assert_ne!(check.code, 0, "check must fail:\n{}", check.stdout);
    let line = check
        .stdout
        .lines()
        .find(|l| l.contains("scope.groups"))
        .unwrap_or_else(|| panic!("no scope.groups line:\n{}", check.stdout));
    assert!(line.contains("FAIL") && line.contains(&cloud), "{line}");

    let r = a.run(&["sync", "--once"]);
    assert_ne!(r.code, 0, "sync must fail:\n{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("scope.groups") && r.stderr.contains(&cloud),
        "{}",
        r.stderr
    );
    // Nothing was taken for "out of scope".
    assert_eq!(active(&scim, "u0"), Some(true));
    assert_eq!(active(&scim, "u1"), Some(true));
    assert_eq!(scim.all("Groups").len(), 2);
}

#[test]
fn joining_and_leaving_a_scoping_group_in_run() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "sgrun");
    let o = ou.dn.clone();
    populate(&dir, &o);
    let scim = ScimServer::start();
    let g = |n: &str| format!("cn={n},ou=groups,{o}");
    let a = agent(&dir, &o, &scim, &[g("cloud")], true);
    a.append_config("delete_threshold = 2\n");
    let _run = Running(a.spawn(&["run"]));
    assert!(
        wait_until(60, || names(&scim, "Users", "userName")
            == set(&["u0", "u1", "u2", "u3"])),
        "first pass: {}",
        a.log()
    );
    let tree = Tree::people_and_groups("OpenLDAP", &o);
    join_and_leave_in_run(&dir, &scim, &a, &tree);
}

/// The userNames of a SCIM group's members (None for a member that is not a user).
fn member_names(scim: &ScimServer, group: &str) -> BTreeSet<String> {
    let users = scim.all("Users");
    let Some(g) = scim
        .all("Groups")
        .into_iter()
        .find(|g| g["displayName"] == group)
    else {
        return BTreeSet::new();
    };
    g["members"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    users
                        .iter()
                        .find(|u| u["id"] == m["value"])
                        .and_then(|u| u["userName"].as_str())
                        .unwrap_or("(not a user)")
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn flatten_lists_every_transitive_user_and_a_deep_change_updates_the_groups_above() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "flatten");
    let o = ou.dn.clone();
    populate(&dir, &o);
    // A tree without the cycle back to cloud, so that levels differ.
    dir.modify(&format!(
        "dn: cn=deep,ou=groups,{o}\nchangetype: modify\ndelete: member\nmember: cn=cloud,ou=groups,{o}\n"
    ));
    let scim = ScimServer::start();
    let a = Agent::new(&dir, &[&o], &scim.base_url(), &scim.token, "");
    a.run(&["sync", "--once"]).assert_code(0);
    // direct: the member group is listed as a member, its users are not.
    assert_eq!(
        member_names(&scim, "cloud"),
        set(&["u0", "u1", "(not a user)"])
    );

    a.append_config("nested_groups = \"flatten\"\n");
    let r = a.run(&["sync", "--once"]);
    r.assert_code(0);
    assert_eq!(
        member_names(&scim, "cloud"),
        set(&["u0", "u1", "u2", "u3"]),
        "{}",
        r.stderr
    );
    assert_eq!(member_names(&scim, "inner"), set(&["u2", "u3"]));
    assert_eq!(member_names(&scim, "deep"), set(&["u3"]));
    assert!(
        r.stderr.contains("deepest nesting 3 levels"),
        "{}",
        r.stderr
    );
    // A second pass over the unchanged tree writes nothing.
    let again = a.run(&["sync", "--once"]);
    again.assert_wrote_nothing();

    // A cycle: deep takes cloud back in; every group holds the whole tree, nothing loops.
    dir.modify(&format!(
        "dn: cn=deep,ou=groups,{o}\nchangetype: modify\nadd: member\nmember: cn=cloud,ou=groups,{o}\n"
    ));
    a.run(&["sync", "--once"]).assert_code(0);
    assert_eq!(member_names(&scim, "deep"), set(&["u0", "u1", "u2", "u3"]));

    // In run, a user joining the deepest group reaches every group above it.
    let _run = Running(a.spawn(&["run"]));
    assert!(
        wait_until(60, || a.log().contains("objects in step")),
        "{}",
        a.log()
    );
    let t = std::time::Instant::now();
    dir.modify(&format!(
        "dn: cn=deep,ou=groups,{o}\nchangetype: modify\nadd: member\nmember: uid=u5,ou=people,{o}\n"
    ));
    assert!(
        wait_until(30, || ["cloud", "inner", "deep"]
            .iter()
            .all(|g| member_names(&scim, g).contains("u5"))),
        "deep change: {}",
        a.log()
    );
    eprintln!(
        "deep change reached every group above in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(member_names(&scim, "other"), set(&["u4"]));
}
