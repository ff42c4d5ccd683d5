//! Group-based scoping (`[scope] groups`, `nested`) in `run` on the real Samba AD DC (the
//! DirSync feed, chosen by `auto`) and scim2-server. AD keeps membership in the group's
//! `member` (a linked attribute: the DN must exist) and shows it on the user as the
//! `memberOf` back link, which DirSync never reports as a change of the user: a join or a
//! leave arrives as a change of the group. A user who joins a scoping group, directly or
//! through a group two levels down, arrives; one who leaves is deactivated (never
//! deleted); a mass leave over `delete_threshold` is held whole until `approve-deletes`
//! (the scenario is `common::scope_groups`, the same on every directory).

mod common;

use common::scope_groups::{join_and_leave_in_run, user_names, Tree};
use common::{unique, wait_until, Agent, Dir, Running, ScimServer, TestOu};

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
        "dn: CN={cn},{parent}\nobjectClass: user\nsAMAccountName: {sam}\nuserPrincipalName: {sam}@branch.test\ndisplayName: {cn}\nunicodePwd:: {pw}\nuserAccountControl: 512\n\n",
        pw = unicode_pwd("Test-Pass-2026!")
    )
}

#[test]
fn joining_and_leaving_a_scoping_group_in_run_on_samba_ad() {
    let dir = Dir::samba();
    let ou = TestOu::create(&dir, "ad-sgrun");
    let o = ou.dn.clone();
    let tag = unique("s").replace('-', "");
    let tag = tag[tag.len() - 8..].to_string();
    let sam = |i: u32| format!("u{i}{tag}");
    let upn = |i: u32| format!("u{i}{tag}@branch.test");
    let u = |i: u32| format!("CN=User {},{o}", sam(i));
    let g = |n: &str| format!("CN={n} {tag},{o}");
    let users: String = (0..6)
        .map(|i| ad_user(&o, &format!("User {}", sam(i)), &sam(i)))
        .collect();
    dir.modify(&users);
    // AD checks member values: the groups a group names come first.
    let group = |n: &str, members: &[String]| {
        let m: String = members.iter().map(|d| format!("member: {d}\n")).collect();
        format!(
            "dn: {}\nobjectClass: group\nsAMAccountName: {n}{tag}\n{m}\n",
            g(n)
        )
    };
    dir.modify(&group("deep", &[u(3)]));
    dir.modify(&group("inner", &[u(2), g("deep")]));
    dir.modify(&group("cloud", &[u(0), u(1), g("inner")]));
    let scim = ScimServer::start();
    let a = Agent::new(
        &dir,
        &[&o],
        &scim.base_url(),
        &scim.token,
        "poll_interval_secs = 1\ndelete_threshold = 2",
    );
    a.edit_config(
        &format!("include = [\"{o}\"]"),
        &format!(
            "include = [\"{o}\"]\ngroups = [\"{}\"]\nnested = true",
            g("cloud")
        ),
    );
    let _run = Running(a.spawn(&["run"]));
    let first: Vec<String> = (0..4).map(upn).collect();
    assert!(
        wait_until(90, || user_names(&scim) == first),
        "first pass: {:?}\n{}",
        user_names(&scim),
        a.log()
    );
    assert!(a.log().contains("change feed: dirsync"), "{}", a.log());
    assert!(
        dir.attr_ldif(&u(0), "memberOf").is_some(),
        "AD shows the membership on the user"
    );

    let tree = Tree {
        label: "Samba AD",
        user_dn: Box::new(u),
        user_name: Box::new(upn),
        cloud: g("cloud"),
        inner: g("inner"),
        deep: g("deep"),
    };
    join_and_leave_in_run(&dir, &scim, &a, &tree);
}
