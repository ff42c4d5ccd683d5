//! Group-based scoping (`[scope] groups`, `nested`) in `run` on the real Samba AD DC (the
//! DirSync feed, chosen by `auto`) and scim2-server. AD keeps membership in the group's
//! `member` (a linked attribute: the DN must exist) and shows it on the user as the
//! `memberOf` back link, which DirSync never reports as a change of the user: a join or a
//! leave arrives as a change of the group. A user who joins a scoping group, directly or
//! through a group two levels down, arrives; one who leaves is deactivated (never
//! deleted); a mass leave over `delete_threshold` is held whole until `approve-deletes`.

mod common;

use common::{unique, wait_until, Agent, Dir, Running, ScimServer, TestOu};
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
        "dn: CN={cn},{parent}\nobjectClass: user\nsAMAccountName: {sam}\nuserPrincipalName: {sam}@branch.test\ndisplayName: {cn}\nunicodePwd:: {pw}\nuserAccountControl: 512\n\n",
        pw = unicode_pwd("Test-Pass-2026!")
    )
}

fn active(scim: &ScimServer, upn: &str) -> Option<bool> {
    scim.all("Users")
        .into_iter()
        .find(|u| u["userName"] == upn)
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

    // u5 joins the listed group directly: provisioned.
    let t = std::time::Instant::now();
    dir.modify(&format!(
        "dn: {}\nchangetype: modify\nadd: member\nmember: {}\n",
        g("cloud"),
        u(5)
    ));
    assert!(
        wait_until(30, || active(&scim, &upn(5)) == Some(true)),
        "joined: {}",
        a.log()
    );
    eprintln!("Samba AD: joined in {:.2} s", t.elapsed().as_secs_f64());

    // u4 joins a group two levels down: provisioned too.
    let t = std::time::Instant::now();
    dir.modify(&format!(
        "dn: {}\nchangetype: modify\nadd: member\nmember: {}\n",
        g("deep"),
        u(4)
    ));
    assert!(
        wait_until(30, || active(&scim, &upn(4)) == Some(true)),
        "joined through nesting: {}",
        a.log()
    );
    eprintln!(
        "Samba AD: joined through nesting in {:.2} s",
        t.elapsed().as_secs_f64()
    );

    // u1 leaves: deactivated (the default user_delete), not deleted.
    let t = std::time::Instant::now();
    dir.modify(&format!(
        "dn: {}\nchangetype: modify\ndelete: member\nmember: {}\n",
        g("cloud"),
        u(1)
    ));
    assert!(
        wait_until(30, || active(&scim, &upn(1)) == Some(false)),
        "left: {}",
        a.log()
    );
    eprintln!("Samba AD: left in {:.2} s", t.elapsed().as_secs_f64());

    // u4 leaves through nesting.
    dir.modify(&format!(
        "dn: {}\nchangetype: modify\ndelete: member\nmember: {}\n",
        g("deep"),
        u(4)
    ));
    assert!(
        wait_until(30, || active(&scim, &upn(4)) == Some(false)),
        "left through nesting: {}",
        a.log()
    );

    // Delete safety: inner leaves cloud, which takes u2, u3, inner and deep out at once,
    // over delete_threshold = 2: held whole, nothing deactivated or deleted.
    dir.modify(&format!(
        "dn: {}\nchangetype: modify\ndelete: member\nmember: {}\n",
        g("cloud"),
        g("inner")
    ));
    assert!(
        wait_until(30, || held(&a).as_u64().unwrap_or(0) >= 3),
        "not held: {}\n{}",
        held(&a),
        a.log()
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(active(&scim, &upn(2)), Some(true), "{}", a.log());
    assert_eq!(active(&scim, &upn(3)), Some(true));
    assert_eq!(scim.all("Groups").len(), 3, "no group deleted");
    a.run(&["approve-deletes"]).assert_code(0);
    assert!(
        wait_until(30, || active(&scim, &upn(2)) == Some(false)
            && active(&scim, &upn(3)) == Some(false)),
        "approved: {}",
        a.log()
    );
    assert_eq!(active(&scim, &upn(0)), Some(true));
}
