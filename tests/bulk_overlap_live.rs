//! Users and groups overlap in a full pass through SCIM Bulk, with the real binary, the real
//! slapd and a private scim2-server behind our fault proxy.
//!
//! A second pass creates 590 new users in Bulk requests; the last to arrive hangs at the
//! endpoint (the proxy stalls its answer until the agent's timeout). A new group whose
//! members all have their ids already (users of the first pass, in the anchor index) goes
//! out meanwhile; a group with a member in the hanging request is held until that request
//! is settled, and then goes out with every member. Nothing is created twice.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::faultproxy::{Action, FaultProxy};
use common::{Agent, Dir, ScimServer, TestOu};

/// Users the first pass provisions.
const KNOWN: usize = 10;
/// All users: the second pass creates the others in three Bulk requests (250, 250, 90).
const USERS: usize = 600;
/// The agent's SCIM timeout: how long the stalled request hangs.
const TIMEOUT_SECS: u64 = 8;

/// Users `from..to` of the OU.
fn users(ou: &TestOu, from: usize, to: usize) {
    let o = &ou.dn;
    let mut s = String::new();
    for i in from..to {
        s.push_str(&format!(
            "dn: uid=v{i:03},{o}\nobjectClass: inetOrgPerson\nuid: v{i:03}\ncn: Overlap User {i}\nsn: S{i}\n\n"
        ));
    }
    ou.dir.modify(&s);
}

/// Group "early" of users the first pass provisioned (their ids are in the anchor index),
/// group "late" of users in the second pass's last Bulk request.
fn groups_ldif(ou: &TestOu) {
    let o = &ou.dn;
    let mut s = String::new();
    for (g, range) in [("early", 0..KNOWN), ("late", USERS - 10..USERS)] {
        s.push_str(&format!(
            "dn: cn={g},{o}\nobjectClass: groupOfNames\ncn: {g}\n"
        ));
        for i in range {
            s.push_str(&format!("member: uid=v{i:03},{o}\n"));
        }
        s.push('\n');
    }
    ou.dir.modify(&s);
}

/// Each group's members at the endpoint, as userNames; panics on a user held twice.
fn groups(scim: &ScimServer) -> BTreeMap<String, BTreeSet<String>> {
    let users = scim.all("Users");
    let mut names = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for u in &users {
        let name = u["userName"].as_str().unwrap().to_string();
        assert!(seen.insert(name.clone()), "user {name} created twice");
        names.insert(u["id"].as_str().unwrap().to_string(), name);
    }
    scim.all("Groups")
        .iter()
        .map(|g| {
            let members = g["members"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|m| names[m["value"].as_str().unwrap()].clone())
                .collect();
            (g["displayName"].as_str().unwrap().to_string(), members)
        })
        .collect()
}

#[test]
fn groups_whose_members_exist_go_out_while_the_users_last_request_is_still_out() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "bulk-overlap");
    users(&ou, 0, KNOWN);
    let scim = ScimServer::start();
    let proxy = FaultProxy::http(scim.port);
    let agent = Agent::new(&dir, &[&ou.dn], &proxy.http_url("/v2"), &scim.token, "");
    agent.edit_config(
        "timeout_secs = 10",
        &format!("timeout_secs = {TIMEOUT_SECS}"),
    );
    agent.run(&["sync", "--once", "--quiet"]).assert_code(0);
    users(&ou, KNOWN, USERS);
    groups_ldif(&ou);
    // The third Bulk request of the second pass (the users' last to arrive) is applied,
    // but its answer hangs until the agent gives up on it. (Matched by path: a group may
    // reach the endpoint before it.)
    proxy.forward_next_of("POST /Bulk", 2);
    proxy.stall_next_of("POST /Bulk", 1);
    let run = agent.run(&["sync", "--once", "--quiet"]);
    eprintln!("{}", run.stderr);
    run.assert_code(0);
    assert!(run.summary().contains("0 failed"), "{}", run.summary());

    let events = proxy.events();
    let stalled = events
        .iter()
        .position(|e| e.path.ends_with("/Bulk") && matches!(e.action, Action::Stalled(_)))
        .unwrap_or_else(|| panic!("no Bulk request was stalled: {events:?}"));
    // The first group written: sent while the stalled request was still out (before it
    // arrived, or after; the old order waited for its timeout).
    let group = events
        .iter()
        .find(|e| e.method == "POST" && e.path.ends_with("/Groups"))
        .unwrap_or_else(|| panic!("no group was written: {events:?}"));
    let stalled_at = events[stalled].at;
    assert!(
        group.at < stalled_at + Duration::from_secs(TIMEOUT_SECS / 2),
        "the groups waited {:?} for the users' last request (timeout {TIMEOUT_SECS} s): {:?}",
        group.at.duration_since(stalled_at),
        &events[stalled..events.len().min(stalled + 4)]
    );

    // Both groups complete, every user once (the stalled request's users were matched again,
    // not created twice).
    let g = groups(&scim);
    assert_eq!(scim.all("Users").len(), USERS);
    let want =
        |r: std::ops::Range<usize>| -> BTreeSet<String> { r.map(|i| format!("v{i:03}")).collect() };
    assert_eq!(g.get("early"), Some(&want(0..KNOWN)), "{g:?}");
    assert_eq!(g.get("late"), Some(&want(USERS - 10..USERS)), "{g:?}");
    // And a second pass finds everything in step.
    agent
        .run(&["sync", "--once", "--quiet"])
        .assert_wrote_nothing();
}
