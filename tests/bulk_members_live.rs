//! A group's members through SCIM Bulk PATCH operations (issues 15 and 17), with the real
//! binary, the real slapd and a private scim2-server (which offers Bulk) behind our fault
//! proxy, which counts the requests.
//!
//! A nested tree flattened (`nested_groups = "flatten"`): the first pass creates the users
//! and the groups through Bulk, each group with its members (not one PATCH request per
//! group afterwards); the endpoint then holds every transitive member; a
//! second pass sends nothing; a member joining a deep group reaches every group above it,
//! again through Bulk; one leaving it does too (the single way, which verifies removals).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::faultproxy::FaultProxy;
use common::{Agent, Dir, ScimServer, TestOu};

/// Users per leaf group; three leaves.
const PER_LEAF: usize = 45;

/// `top` holds `mid` and leaf `l0`; `mid` holds leaves `l1` and `l2` (3 levels).
fn seed(ou: &TestOu) {
    let o = &ou.dn;
    let mut s = String::new();
    for i in 0..3 * PER_LEAF {
        s.push_str(&format!(
            "dn: uid=m{i:03},{o}\nobjectClass: inetOrgPerson\nuid: m{i:03}\ncn: Member {i}\nsn: S{i}\n\n"
        ));
    }
    for l in 0..3 {
        s.push_str(&format!(
            "dn: cn=l{l},{o}\nobjectClass: groupOfNames\ncn: l{l}\n"
        ));
        for i in l * PER_LEAF..(l + 1) * PER_LEAF {
            s.push_str(&format!("member: uid=m{i:03},{o}\n"));
        }
        s.push('\n');
    }
    s.push_str(&format!(
        "dn: cn=mid,{o}\nobjectClass: groupOfNames\ncn: mid\nmember: cn=l1,{o}\nmember: cn=l2,{o}\n\n"
    ));
    s.push_str(&format!(
        "dn: cn=top,{o}\nobjectClass: groupOfNames\ncn: top\nmember: cn=mid,{o}\nmember: cn=l0,{o}\n\n"
    ));
    ou.dir.modify(&s);
}

/// Each group's members at the endpoint, by userName.
fn members(scim: &ScimServer) -> BTreeMap<String, BTreeSet<String>> {
    let names: BTreeMap<String, String> = scim
        .all("Users")
        .iter()
        .map(|u| {
            (
                u["id"].as_str().unwrap().to_string(),
                u["userName"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    scim.all("Groups")
        .iter()
        .map(|g| {
            let m = g["members"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|m| {
                    let id = m["value"].as_str().unwrap();
                    names.get(id).cloned().unwrap_or_else(|| format!("?{id}"))
                })
                .collect();
            (g["displayName"].as_str().unwrap().to_string(), m)
        })
        .collect()
}

fn users(range: std::ops::Range<usize>) -> BTreeSet<String> {
    range.map(|i| format!("m{i:03}")).collect()
}

/// (Bulk requests, single PATCH requests) the proxy has seen.
fn counts(proxy: &FaultProxy) -> (usize, usize) {
    let ev = proxy.events();
    let bulk = ev.iter().filter(|e| e.path.ends_with("/Bulk")).count();
    let patch = ev
        .iter()
        .filter(|e| e.method == "PATCH" && !e.path.ends_with("/Bulk"))
        .count();
    (bulk, patch)
}

#[test]
fn a_flattened_trees_members_go_through_bulk_and_a_second_pass_sends_nothing() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "bulk-members");
    seed(&ou);
    let scim = ScimServer::start();
    let proxy = FaultProxy::http(scim.port);
    let a = Agent::new(
        &dir,
        &[&ou.dn],
        &proxy.http_url("/v2"),
        &scim.token,
        "nested_groups = \"flatten\"",
    );

    let run = a.run(&["sync", "--once", "--quiet"]);
    run.assert_code(0);
    let s = run.summary();
    assert!(
        s.contains("0 failed") && s.contains("SCIM Bulk requests)"),
        "{s}"
    );
    let (bulk, single) = counts(&proxy);
    eprintln!("first pass: {bulk} Bulk requests, {single} single PATCH requests; {s}");
    assert_eq!(
        single, 0,
        "members went as single PATCH requests beside {bulk} Bulk requests"
    );
    let m = members(&scim);
    assert_eq!(m["l0"], users(0..PER_LEAF));
    assert_eq!(m["mid"], users(PER_LEAF..3 * PER_LEAF));
    assert_eq!(
        m["top"],
        users(0..3 * PER_LEAF),
        "top holds every transitive user"
    );

    // Nothing changed: nothing is sent.
    let run = a.run(&["sync", "--once", "--quiet"]);
    run.assert_wrote_nothing();
    assert_eq!(counts(&proxy), (bulk, 0), "the second pass sent a request");

    // A user joins l2: l2 and mid gain a member (top holds it already), through Bulk.
    let o = &ou.dn;
    dir.modify(&format!(
        "dn: cn=l2,{o}\nchangetype: modify\nadd: member\nmember: uid=m000,{o}\n\n"
    ));
    let run = a.run(&["sync", "--once", "--quiet"]);
    run.assert_code(0);
    let (bulk2, single2) = counts(&proxy);
    eprintln!(
        "a join: {} Bulk requests, {single2} single PATCH requests",
        bulk2 - bulk
    );
    assert!(bulk2 > bulk, "{}", run.summary());
    assert_eq!(single2, 0, "{}", run.summary());
    let m = members(&scim);
    let mut l2 = users(2 * PER_LEAF..3 * PER_LEAF);
    l2.insert("m000".into());
    assert_eq!(m["l2"], l2);
    let mut mid = users(PER_LEAF..3 * PER_LEAF);
    mid.insert("m000".into());
    assert_eq!(m["mid"], mid);
    assert_eq!(m["top"], users(0..3 * PER_LEAF));

    // A user leaves l2: while the endpoint has not shown that it removes by id, a removal
    // goes the single way, which reads it back; every group above loses the user.
    let last = 3 * PER_LEAF - 1;
    dir.modify(&format!(
        "dn: cn=l2,{o}\nchangetype: modify\ndelete: member\nmember: uid=m{last:03},{o}\n\n"
    ));
    a.run(&["sync", "--once", "--quiet"]).assert_code(0);
    let m = members(&scim);
    l2.remove(&format!("m{last:03}"));
    mid.remove(&format!("m{last:03}"));
    assert_eq!(m["l2"], l2);
    assert_eq!(m["mid"], mid);
    assert_eq!(m["top"], users(0..last));
    // And the pass after it is quiet again.
    let run = a.run(&["sync", "--once", "--quiet"]);
    run.assert_wrote_nothing();
}
