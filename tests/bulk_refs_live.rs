//! `bulkId` references (RFC 7644 §3.7.2) in a full pass, with the real binary, the real
//! slapd and a private scim2-server (which resolves them) behind our fault proxy (which
//! counts the references the Bulk requests carried).
//!
//! A user whose manager is created in the same Bulk request names the manager as
//! `"bulkId:<its bulkId>"` instead of waiting for the manager's create to be answered. The
//! endpoint must end with every user's manager set to the manager's real id, and the anchor
//! index must record what was stored, so a second pass writes nothing. A manager whose
//! create is refused (a foreign user holds its userName) or whose request is cut after it
//! was sent leaves its reports correct: sent again on their own, with the real id, or
//! without a manager while the manager is missing, never with a reference left in them.

mod common;

use std::collections::BTreeMap;

use common::{scim_behind_proxy, Dir, ScimServer, TestOu};
use serde_json::json;

/// Users r000..r059: every tenth manages the next nine; r000 is managed by "boss" (a chain
/// of two created in the same request). Group "team1": r010..r019 (a group whose members'
/// requests may still be out, or handed back, when the groups begin).
const USERS: usize = 60;

fn seed(ou: &TestOu) {
    let o = &ou.dn;
    let mut s =
        format!("dn: uid=boss,{o}\nobjectClass: inetOrgPerson\nuid: boss\ncn: Boss\nsn: B\n\n");
    for i in 0..USERS {
        let manager = match i % 10 {
            0 if i == 0 => format!("manager: uid=boss,{o}\n"),
            0 => String::new(),
            _ => format!("manager: uid=r{:03},{o}\n", i - i % 10),
        };
        s.push_str(&format!(
            "dn: uid=r{i:03},{o}\nobjectClass: inetOrgPerson\nuid: r{i:03}\ncn: Ref User {i}\nsn: S{i}\n{manager}\n"
        ));
    }
    s.push_str(&format!(
        "dn: cn=team1,{o}\nobjectClass: groupOfNames\ncn: team1\n"
    ));
    for i in 10..20 {
        s.push_str(&format!("member: uid=r{i:03},{o}\n"));
    }
    s.push('\n');
    ou.dir.modify(&s);
}

/// Group team1's members at the endpoint, as userNames, sorted.
fn team(scim: &ScimServer) -> Vec<String> {
    let users = scim.all("Users");
    let name_of: BTreeMap<&str, &str> = users
        .iter()
        .map(|u| (u["id"].as_str().unwrap(), u["userName"].as_str().unwrap()))
        .collect();
    let groups = scim.all("Groups");
    assert_eq!(groups.len(), 1, "{groups:?}");
    let mut m: Vec<String> = groups[0]["members"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|m| name_of[m["value"].as_str().unwrap()].to_string())
        .collect();
    m.sort();
    m
}

/// r{from}..r{to} (inclusive) as userNames.
fn names(from: usize, to: usize) -> Vec<String> {
    (from..=to).map(|i| format!("r{i:03}")).collect()
}

/// userName → its manager's userName ("" for none) at the endpoint; panics on a user held
/// twice or a manager value that is no user's id (a reference left unresolved).
fn managers(scim: &ScimServer) -> BTreeMap<String, String> {
    let users = scim.all("Users");
    let name_of: BTreeMap<&str, &str> = users
        .iter()
        .map(|u| (u["id"].as_str().unwrap(), u["userName"].as_str().unwrap()))
        .collect();
    let mut out = BTreeMap::new();
    for u in &users {
        let ext = &u["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"];
        let m = match ext["manager"]["value"].as_str() {
            None => String::new(),
            Some(id) => name_of
                .get(id)
                .unwrap_or_else(|| panic!("{}: manager {id} is no user's id", u["userName"]))
                .to_string(),
        };
        let name = u["userName"].as_str().unwrap().to_string();
        assert!(out.insert(name.clone(), m).is_none(), "{name} held twice");
    }
    out
}

/// What the directory says: each of our users' manager.
fn expected(without: Option<&str>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::from([("boss".to_string(), String::new())]);
    for i in 0..USERS {
        let m = match i % 10 {
            0 if i == 0 => "boss".to_string(),
            0 => String::new(),
            _ => format!("r{:03}", i - i % 10),
        };
        let m = if Some(m.as_str()) == without {
            String::new()
        } else {
            m
        };
        out.insert(format!("r{i:03}"), m);
    }
    out
}

/// Users go out with their managers in the same request, named by bulkId: none is held
/// back for a second wave, every manager ends as the real id, a second pass writes nothing.
#[test]
fn users_name_managers_created_in_the_same_bulk_request_by_bulk_id() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "bulk-refs");
    seed(&ou);
    let (scim, proxy, agent) = scim_behind_proxy(&dir, &ou, "");
    let run = agent.run(&["sync", "--once"]);
    run.assert_code(0);
    assert!(run.summary().contains("0 failed"), "{}", run.summary());
    // 54 reports and r000 (managed by boss) named their manager by reference.
    assert_eq!(
        proxy.bulk_id_references(),
        55,
        "Bulk requests carried no (or not every) bulkId reference"
    );
    assert!(
        !run.stderr
            .contains("users refer to objects created in this pass"),
        "users were held back for a second wave: {}",
        run.stderr
    );
    assert_eq!(managers(&scim), expected(None));
    assert_eq!(team(&scim), names(10, 19));
    // Each user's source hash is recorded too (the referring ones' completed with the id
    // the answer gave their manager), so the next pass maps no user again.
    let saved = std::fs::read_to_string(agent.tmp.path().join("state/anchors.jsonl")).unwrap();
    let without: Vec<&str> = saved
        .lines()
        .filter(|l| l.contains("\"k\":\"u\"") && !l.contains("\"s\":"))
        .collect();
    assert!(
        without.is_empty() && saved.lines().count() == USERS + 2,
        "users without a source hash after the pass that created them: {without:?}"
    );
    agent
        .run(&["sync", "--once", "--quiet"])
        .assert_wrote_nothing();
}

/// The manager's create is refused (userName held by a foreign user): its reports'
/// references cannot be resolved (409), so they are sent again on their own, without a
/// manager while it is missing; once the conflict is gone the next pass sets the real id.
#[test]
fn reports_of_a_manager_whose_create_is_refused_are_sent_again_on_their_own() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "bulk-refs-409");
    seed(&ou);
    let (scim, proxy, agent) = scim_behind_proxy(&dir, &ou, "");
    let foreign = scim.post(
        "Users",
        &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "r010"}),
    );
    let run = agent.run(&["sync", "--once"]);
    run.assert_code(3);
    assert!(run.summary().contains("1 failed"), "{}", run.summary());
    assert!(proxy.bulk_id_references() > 0, "no bulkId reference sent");
    let mut want = expected(Some("r010"));
    // The foreign r010 stands in for ours, untouched and without a manager.
    want.insert("r010".into(), String::new());
    assert_eq!(managers(&scim), want);
    // Its reports are in the group (sent again before it); the foreign r010 is not.
    assert_eq!(team(&scim), names(11, 19));
    // The conflict goes: the manager is created, its reports get its id.
    scim.delete(&format!("Users/{}", foreign["id"].as_str().unwrap()));
    let run = agent.run(&["sync", "--once", "--quiet"]);
    run.assert_code(0);
    assert_eq!(managers(&scim), expected(None));
    assert_eq!(team(&scim), names(10, 19));
    agent
        .run(&["sync", "--once", "--quiet"])
        .assert_wrote_nothing();
}

/// The Bulk request with the managers and their reports is cut unanswered and reaches the
/// endpoint late: nothing is created twice, every report ends with its manager's real id,
/// and what the index recorded matches (a second pass writes nothing).
#[test]
fn a_referring_request_cut_after_it_was_sent_leaves_every_manager_right() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "bulk-refs-cut");
    seed(&ou);
    let (scim, proxy, agent) = scim_behind_proxy(&dir, &ou, "");
    proxy.late_next_of("POST /Bulk", 1);
    let run = agent.run(&["sync", "--once"]);
    run.assert_code(0);
    assert!(run.summary().contains("0 failed"), "{}", run.summary());
    assert!(proxy.bulk_id_references() > 0, "no bulkId reference sent");
    assert_eq!(managers(&scim), expected(None));
    assert_eq!(team(&scim), names(10, 19));
    agent
        .run(&["sync", "--once", "--quiet"])
        .assert_wrote_nothing();
}

/// Without Bulk nothing changes: no references, the same result.
#[test]
fn without_bulk_users_wait_for_their_managers_as_before() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "bulk-refs-off");
    seed(&ou);
    let (scim, proxy, agent) = scim_behind_proxy(&dir, &ou, "bulk = \"off\"");
    agent.run(&["sync", "--once", "--quiet"]).assert_code(0);
    assert_eq!(proxy.bulk_id_references(), 0);
    assert_eq!(managers(&scim), expected(None));
    agent
        .run(&["sync", "--once", "--quiet"])
        .assert_wrote_nothing();
}
