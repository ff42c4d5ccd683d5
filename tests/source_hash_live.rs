//! A full pass skips mapping a user whose mapping inputs hash as recorded (the source hash,
//! `scim/source_hash.rs`): never at the price of a change. The real binary, Debian's slapd,
//! the PyPI scim2-server.

mod common;

use common::{Agent, Dir, ScimServer, TestOu};
use serde_json::Value;

const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

fn manager_id(u: &Value) -> Option<String> {
    u[ENTERPRISE]["manager"]["value"]
        .as_str()
        .map(str::to_string)
}

/// Source hashes are recorded by a pass whose create of a user lands (its manager known) and
/// by a pass that finds users unchanged; a later change of an
/// attribute, of the manager attribute, and of what an unchanged manager DN resolves to
/// (its entry created since) all reach the endpoint, and the pass after that writes nothing.
#[test]
fn recorded_source_hashes_never_hide_a_change_of_an_attribute_or_of_what_a_manager_resolves_to() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "srchash");
    let o = &ou.dn;
    let person = |uid: &str, manager: &str| {
        let m = if manager.is_empty() {
            String::new()
        } else {
            format!("manager: uid={manager},{o}\n")
        };
        format!("dn: uid={uid},{o}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid} X\nsn: X\nmail: {uid}@branch.test\n{m}\n")
    };
    // carl's manager does not exist yet: out of scope, no manager sent.
    ou.dir.modify(&format!(
        "{}{}{}{}{}",
        person("mgr", ""),
        person("mgr2", ""),
        person("ann", "mgr"),
        person("bob", "mgr"),
        person("carl", "late")
    ));
    let scim = ScimServer::start();
    let agent = Agent::new(&dir, &[o], &scim.base_url(), &scim.token, "");
    agent.run(&["sync", "--once", "--quiet"]).assert_code(0);
    assert_eq!(manager_id(&ou.scim_user(&scim, "uid=carl")), None);
    // The creates that landed recorded theirs already, so the very next pass maps none of
    // them: ann and bob too, whether they were sent once their manager's id was known or
    // named it by bulkId in its own Bulk request (their source hash completed with the id
    // the answer gave the manager).
    let saved = std::fs::read_to_string(agent.tmp.path().join("state/anchors.jsonl")).unwrap();
    for uid in ["mgr", "mgr2", "carl", "ann", "bob"] {
        let rdn = format!("\"dn\":\"uid={uid},");
        assert!(
            saved
                .lines()
                .any(|l| l.contains(&rdn) && l.contains("\"s\":")),
            "no source hash for {uid} after its create: {saved}"
        );
    }
    // The second pass finds everything unchanged and records the source hashes.
    let second = agent.run(&["sync", "--once", "--quiet"]);
    second.assert_code(0).assert_wrote_nothing();
    let saved = std::fs::read_to_string(agent.tmp.path().join("state/anchors.jsonl")).unwrap();
    assert_eq!(
        saved.lines().filter(|l| l.contains("\"s\":")).count(),
        5,
        "a source hash for each user: {saved}"
    );

    ou.dir.modify(&format!(
        "dn: uid=ann,{o}
changetype: modify
replace: mail
mail: ann.new@branch.test

dn: uid=bob,{o}
changetype: modify
replace: manager
manager: uid=mgr2,{o}

{}",
        person("late", "")
    ));
    let third = agent.run(&["sync", "--once", "--quiet"]);
    third.assert_code(0);
    assert!(
        third.summary().contains(
            "1 created, 3 updated, 2 unchanged, 0 failed; requests: 1 POST, 3 PUT, 0 PATCH"
        ),
        "{}",
        third.summary()
    );
    let ann = ou.scim_user(&scim, "uid=ann");
    assert_eq!(ann["emails"][0]["value"], "ann.new@branch.test");
    let id = |rdn: &str| ou.scim_user(&scim, rdn)["id"].as_str().unwrap().to_string();
    assert_eq!(
        manager_id(&ou.scim_user(&scim, "uid=bob")),
        Some(id("uid=mgr2"))
    );
    // carl's entry did not change; what its manager DN resolves to did.
    assert_eq!(
        manager_id(&ou.scim_user(&scim, "uid=carl")),
        Some(id("uid=late"))
    );

    agent
        .run(&["sync", "--once", "--quiet"])
        .assert_code(0)
        .assert_wrote_nothing();
}
