//! SCIM Bulk in a full pass, with the real binary, the real slapd and private scim2-servers
//! (which offer Bulk), through our fault proxy where a test needs to see or break requests.
//!
//! Each test seeds its own OU with enough users that the first pass reads the endpoint's
//! listing and sends its creates through `POST /Bulk`. Checks: the endpoint ends with the
//! same users, groups and members as with `bulk = "off"`; a second pass writes nothing; one
//! operation refused inside a batch fails only its object; a Bulk request cut after it was
//! sent (and applied late) creates no duplicate; a 413 halves the request; `bulk = "off"`
//! sends no `/Bulk`. In `run`, a burst of 1,000 user changes goes out in a handful of Bulk
//! requests.

mod common;

use std::collections::BTreeMap;

use common::faultproxy::{Action, FaultProxy};
use common::{scim_behind_proxy, wait_until, Dir, Running, ScimServer, TestOu};
use serde_json::{json, Value};

const USERS: usize = 60;

fn seed(ou: &TestOu) {
    let o = &ou.dn;
    let mut s = String::new();
    for i in 0..USERS {
        s.push_str(&format!(
            "dn: uid=b{i:03},{o}\nobjectClass: inetOrgPerson\nuid: b{i:03}\ncn: Bulk User {i}\nsn: S{i}\ntitle: T{i}\nmail: b{i:03}@branch.test\n\n"
        ));
    }
    for (g, range) in [("evens", 0..USERS), ("firsts", 0..10), ("empty", 0..0)] {
        s.push_str(&format!(
            "dn: cn={g},{o}\nobjectClass: groupOfNames\ncn: {g}\n"
        ));
        let mut any = false;
        for i in range.clone().step_by(if g == "evens" { 2 } else { 1 }) {
            s.push_str(&format!("member: uid=b{i:03},{o}\n"));
            any = true;
        }
        if !any {
            // groupOfNames needs a member: one outside the scope (left out at the endpoint).
            s.push_str(&format!("member: cn=nobody,{}\n", ou.dir.base));
        }
        s.push('\n');
    }
    ou.dir.modify(&s);
}

/// What the endpoint holds, comparable across servers: users by externalId (userName,
/// title, family name) and groups by externalId (displayName, members' externalIds).
fn contents(scim: &ScimServer) -> BTreeMap<String, Value> {
    let users = scim.all("Users");
    let ext_of: BTreeMap<String, String> = users
        .iter()
        .map(|u| {
            (
                u["id"].as_str().unwrap().to_string(),
                u["externalId"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let mut out = BTreeMap::new();
    for u in &users {
        let x = u["externalId"].as_str().unwrap_or("").to_string();
        let v =
            json!({"userName": u["userName"], "title": u["title"], "sn": u["name"]["familyName"]});
        assert!(
            out.insert(x.clone(), v).is_none(),
            "externalId {x} held twice"
        );
    }
    for g in scim.all("Groups") {
        let x = g["externalId"].as_str().unwrap_or("").to_string();
        let mut members: Vec<String> = g["members"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|m| ext_of[m["value"].as_str().unwrap()].clone())
            .collect();
        members.sort();
        let v = json!({"displayName": g["displayName"], "members": members});
        assert!(
            out.insert(x.clone(), v).is_none(),
            "externalId {x} held twice"
        );
    }
    out
}

fn bulk_requests(proxy: &FaultProxy) -> usize {
    proxy
        .events()
        .iter()
        .filter(|e| e.path.ends_with("/Bulk"))
        .count()
}

#[test]
fn bulk_export_equals_the_export_without_it_and_the_second_pass_writes_nothing() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "bulk-same");
    seed(&ou);
    let (with, with_proxy, a) = scim_behind_proxy(&dir, &ou, "");
    let (without, without_proxy, b) = scim_behind_proxy(&dir, &ou, "bulk = \"off\"");

    let run = a.run(&["sync", "--once", "--quiet"]);
    run.assert_code(0);
    let s = run.summary();
    assert!(s.contains(&format!("{} objects in step", USERS + 3)), "{s}");
    assert!(
        s.contains("0 failed") && s.contains("SCIM Bulk requests)"),
        "{s}"
    );
    assert!(bulk_requests(&with_proxy) >= 1);
    // Users' creates went in Bulk requests, not one POST each.
    let posts = with_proxy
        .events()
        .iter()
        .filter(|e| e.method == "POST" && !e.path.ends_with("/Bulk"))
        .count();
    assert!(posts < 5, "{posts} single POSTs beside Bulk");

    let run = b.run(&["sync", "--once", "--quiet"]);
    run.assert_code(0);
    assert!(!run.summary().contains("Bulk"), "{}", run.summary());
    assert_eq!(
        bulk_requests(&without_proxy),
        0,
        "bulk = \"off\" sent /Bulk"
    );

    let (cw, cwo) = (contents(&with), contents(&without));
    assert_eq!(cw.len(), USERS + 3);
    assert_eq!(
        cw, cwo,
        "the endpoint's contents differ with and without Bulk"
    );

    // Second pass: nothing to write, no Bulk request either.
    let before = bulk_requests(&with_proxy);
    let run = a.run(&["sync", "--once", "--quiet"]);
    run.assert_wrote_nothing();
    assert_eq!(bulk_requests(&with_proxy), before);

    // A change to many users goes out as Bulk PUTs to the ids the agent owns.
    let mut ldif = String::new();
    for i in 0..USERS {
        ldif.push_str(&format!(
            "dn: uid=b{i:03},{}\nchangetype: modify\nreplace: title\ntitle: New {i}\n\n",
            ou.dn
        ));
    }
    dir.modify(&ldif);
    let run = a.run(&["sync", "--once", "--quiet"]);
    run.assert_code(0);
    assert!(
        run.summary().contains("SCIM Bulk requests"),
        "{}",
        run.summary()
    );
    let cw = contents(&with);
    assert_eq!(cw.len(), USERS + 3);
    assert!(
        cw.values()
            .filter(|v| v["title"].as_str().is_some_and(|t| t.starts_with("New ")))
            .count()
            == USERS
    );
}

#[test]
fn a_refused_operation_inside_a_batch_fails_only_its_object() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "bulk-refuse");
    seed(&ou);
    let (scim, proxy, agent) = scim_behind_proxy(&dir, &ou, "");
    // Someone else holds userName b007 (no externalId of ours).
    scim.post(
        "Users",
        &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "b007", "title": "foreign"}),
    );
    let run = agent.run(&["sync", "--once", "--quiet"]);
    run.assert_code(3);
    assert!(run.summary().contains("1 failed"), "{}", run.summary());
    assert!(
        run.stderr.contains(&format!("uid=b007,{}", ou.dn)) && run.stderr.contains("409"),
        "{}",
        run.stderr
    );
    assert!(bulk_requests(&proxy) >= 1);
    let users = scim.all("Users");
    assert_eq!(users.len(), USERS, "the others all went through");
    let foreign: Vec<&Value> = users.iter().filter(|u| u["userName"] == "b007").collect();
    assert_eq!(foreign.len(), 1);
    assert_eq!(
        foreign[0]["title"], "foreign",
        "the foreign user was not touched"
    );
    assert!(foreign[0].get("externalId").is_none());
}

#[test]
fn a_bulk_request_cut_after_it_was_sent_creates_no_duplicate() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "bulk-cut");
    seed(&ou);
    let (scim, proxy, agent) = scim_behind_proxy(&dir, &ou, "");
    // The first Bulk request is cut unanswered and reaches the server
    // late, after the agent's next request: the agent cannot know what landed.
    proxy.late_next_of("POST /Bulk", 1);
    let run = agent.run(&["sync", "--once", "--quiet"]);
    eprintln!("{}", run.stderr);
    run.assert_code(0);
    assert!(run.summary().contains("0 failed"), "{}", run.summary());
    assert!(
        proxy
            .events()
            .iter()
            .any(|e| e.path.ends_with("/Bulk") && matches!(e.action, Action::Late(_))),
        "the Bulk request was not the one cut: {:?}",
        proxy.events().iter().take(20).collect::<Vec<_>>()
    );
    // Every object exactly once (contents() asserts no externalId twice).
    let c = contents(&scim);
    assert_eq!(c.len(), USERS + 3);
    assert_eq!(scim.all("Users").len(), USERS);
    assert_eq!(scim.all("Groups").len(), 3);
    // And a second pass finds everything in step.
    let run = agent.run(&["sync", "--once", "--quiet"]);
    run.assert_wrote_nothing();
}

#[test]
fn a_413_halves_the_bulk_request() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "bulk-413");
    seed(&ou);
    let (scim, proxy, agent) = scim_behind_proxy(&dir, &ou, "");
    proxy.answer_next_of("POST /Bulk", 1, 413, None);
    let run = agent.run(&["sync", "--once", "--quiet"]);
    run.assert_code(0);
    assert!(run.summary().contains("0 failed"), "{}", run.summary());
    assert_eq!(proxy.answered(413), 1);
    assert!(
        bulk_requests(&proxy) >= 3,
        "the refused request, then its halves"
    );
    assert_eq!(contents(&scim).len(), USERS + 3);
}

/// Users whose title is `{prefix}{i}`, at the endpoint.
fn titled(scim: &ScimServer, prefix: &str) -> usize {
    scim.all("Users")
        .iter()
        .filter(|u| u["title"].as_str().is_some_and(|t| t.starts_with(prefix)))
        .count()
}

#[test]
fn a_burst_of_changes_in_run_goes_out_in_bulk_requests() {
    const N: usize = 1000;
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "bulk-burst");
    let o = &ou.dn;
    let mut s = String::new();
    for i in 0..N {
        s.push_str(&format!(
            "dn: uid=r{i:04},{o}\nobjectClass: inetOrgPerson\nuid: r{i:04}\ncn: Run User {i}\nsn: S{i}\ntitle: Old {i}\n\n"
        ));
    }
    dir.modify(&s);
    let (scim, proxy, agent) = scim_behind_proxy(&dir, &ou, "");
    let _run = Running(agent.spawn(&["run"]));
    assert!(
        wait_until(300, || agent.status_json().0["phase"] == "following"),
        "{}",
        agent.log()
    );
    assert_eq!(titled(&scim, "Old "), N, "{}", agent.log());
    let events = proxy.events().len();

    // One script changes every user.
    let mut ldif = String::new();
    for i in 0..N {
        ldif.push_str(&format!(
            "dn: uid=r{i:04},{o}\nchangetype: modify\nreplace: title\ntitle: Burst {i}\n\n"
        ));
    }
    dir.modify(&ldif);
    assert!(
        wait_until(300, || titled(&scim, "Burst ") == N),
        "{} of {N} changed: {}",
        titled(&scim, "Burst "),
        agent.log()
    );
    let after = proxy.events();
    let burst = &after[events..];
    let bulk = burst.iter().filter(|e| e.path.ends_with("/Bulk")).count();
    let single = burst
        .iter()
        .filter(|e| {
            matches!(e.method.as_str(), "PUT" | "POST" | "PATCH") && !e.path.ends_with("/Bulk")
        })
        .count();
    eprintln!("a burst of {N} user changes: {bulk} Bulk requests, {single} single writes");
    // The sender takes 100 changes at a time: about ten requests, however the feed cuts it.
    assert!(
        (1..=30).contains(&bulk),
        "{bulk} Bulk requests for {N} changes"
    );
    assert!(single <= 10, "{single} single writes beside Bulk");
}
