//! Export end to end: the real binary, Debian's slapd, the PyPI scim2-server.

mod common;

use common::{Agent, Dir, ScimServer, TestOu};
use serde_json::Value;

/// Three users (one manages another), a group with an out-of-scope member and a nested group.
fn seed(ou: &TestOu) {
    let o = &ou.dn;
    let base = &ou.dir.base;
    ou.dir.modify(&format!(
        "dn: uid=mgr,{o}
objectClass: inetOrgPerson
uid: mgr
cn: Mia Manager
givenName: Mia
sn: Manager
displayName: Mia Manager
mail: mia@branch.test
title: Head of Branch
telephoneNumber: +1 555 0100
mobile: +1 555 0199
employeeNumber: E0001
departmentNumber: Management
o: Branch Inc

dn: uid=ann,{o}
objectClass: inetOrgPerson
uid: ann
cn: Ann Lee
givenName: Ann
sn: Lee
mail: ann@branch.test
manager: uid=mgr,{o}

dn: uid=bob,{o}
objectClass: inetOrgPerson
uid: bob
cn: Bob Roe
sn: Roe

dn: cn=team,{o}
objectClass: groupOfNames
cn: team
member: uid=ann,{o}
member: uid=bob,{o}
member: cn=syncer,{base}

dn: cn=all,{o}
objectClass: groupOfNames
cn: all
member: cn=team,{o}
member: uid=mgr,{o}
"
    ));
}

fn setup(tag: &str) -> (TestOu, ScimServer, Agent) {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, tag);
    seed(&ou);
    let scim = ScimServer::start();
    let agent = Agent::new(&dir, &[&ou.dn], &scim.base_url(), &scim.token, "");
    (ou, scim, agent)
}

fn entry_uuid(ou: &TestOu, rdn: &str) -> String {
    ou.dir
        .attr_ldif(&format!("{rdn},{}", ou.dn), "entryUUID")
        .expect("entryUUID")
}

fn ids(members: &Value) -> Vec<String> {
    let mut v: Vec<String> = members
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| m["value"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn first_pass_provisions_everything_and_second_pass_sends_no_writes() {
    let (ou, scim, agent) = setup("first");
    let run = agent.run(&["sync", "--once", "--quiet"]);
    run.assert_code(0);
    assert!(
        run.summary()
            .contains("5 objects in step (3 users, 2 groups)"),
        "{}",
        run.summary()
    );
    assert!(run.summary().contains("0 failed"), "{}", run.summary());
    // scim2-server keeps what it is sent: nothing is reported as not kept.
    assert!(
        !run.stdout.contains("did not keep") && !run.stderr.contains("did not keep"),
        "{}\n{}",
        run.stdout,
        run.stderr
    );

    let users = scim.all("Users");
    assert_eq!(users.len(), 3, "{users:#?}");
    let mgr = scim
        .by_external_id("Users", &entry_uuid(&ou, "uid=mgr"))
        .unwrap();
    assert_eq!(mgr["userName"], "mgr");
    assert_eq!(mgr["name"]["givenName"], "Mia");
    assert_eq!(mgr["name"]["familyName"], "Manager");
    assert_eq!(mgr["displayName"], "Mia Manager");
    assert_eq!(mgr["title"], "Head of Branch");
    assert_eq!(mgr["active"], true);
    assert_eq!(mgr["emails"][0]["value"], "mia@branch.test");
    assert_eq!(mgr["emails"][0]["type"], "work");
    let ent = &mgr["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"];
    assert_eq!(ent["employeeNumber"], "E0001");
    assert_eq!(ent["department"], "Management");
    assert_eq!(ent["organization"], "Branch Inc");
    let phones: Vec<&str> = mgr["phoneNumbers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_str().unwrap())
        .collect();
    assert!(phones.contains(&"+1 555 0100") && phones.contains(&"+1 555 0199"));

    let ann = scim
        .by_external_id("Users", &entry_uuid(&ou, "uid=ann"))
        .unwrap();
    assert_eq!(
        ann["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]["manager"]["value"],
        mgr["id"],
        "manager resolved to the manager's SCIM id"
    );
    let bob = scim
        .by_external_id("Users", &entry_uuid(&ou, "uid=bob"))
        .unwrap();

    let team = scim
        .by_external_id("Groups", &entry_uuid(&ou, "cn=team"))
        .unwrap();
    assert_eq!(team["displayName"], "team");
    let mut want = vec![
        ann["id"].as_str().unwrap().to_string(),
        bob["id"].as_str().unwrap().to_string(),
    ];
    want.sort();
    assert_eq!(
        ids(&team["members"]),
        want,
        "out-of-scope cn=syncer left out"
    );
    let all = scim
        .by_external_id("Groups", &entry_uuid(&ou, "cn=all"))
        .unwrap();
    let mut want = vec![
        team["id"].as_str().unwrap().to_string(),
        mgr["id"].as_str().unwrap().to_string(),
    ];
    want.sort();
    assert_eq!(ids(&all["members"]), want, "nested group resolved");

    let again = agent.run(&["sync", "--once", "--quiet"]);
    again.assert_code(0);
    assert!(
        again.summary().contains(
            "0 created, 0 updated, 5 unchanged, 0 failed; requests: 0 POST, 0 PUT, 0 PATCH"
        ),
        "second pass must send no writes: {}",
        again.summary()
    );
}

#[test]
fn attribute_and_membership_changes_reach_the_endpoint() {
    let (ou, scim, agent) = setup("change");
    agent.run(&["sync", "--once", "--quiet"]).assert_code(0);
    let o = &ou.dn;
    ou.dir.modify(&format!(
        "dn: uid=ann,{o}
changetype: modify
replace: mail
mail: ann.lee@branch.test
-
replace: title
title: Engineer

dn: cn=team,{o}
changetype: modify
delete: member
member: uid=bob,{o}
"
    ));
    let run = agent.run(&["sync", "--once", "--quiet"]);
    run.assert_code(0);
    assert!(
        run.summary()
            // The user is replaced; the group's membership change is one PATCH remove.
            .contains(
                "0 created, 2 updated, 3 unchanged, 0 failed; requests: 0 POST, 1 PUT, 1 PATCH"
            ),
        "{}",
        run.summary()
    );
    let ann = scim
        .by_external_id("Users", &entry_uuid(&ou, "uid=ann"))
        .unwrap();
    assert_eq!(ann["emails"][0]["value"], "ann.lee@branch.test");
    assert_eq!(ann["title"], "Engineer");
    let team = scim
        .by_external_id("Groups", &entry_uuid(&ou, "cn=team"))
        .unwrap();
    assert_eq!(
        ids(&team["members"]),
        vec![ann["id"].as_str().unwrap().to_string()]
    );
}

#[test]
fn an_object_the_endpoint_rejects_is_reported_and_does_not_stop_the_others() {
    let (ou, scim, agent) = setup("reject");
    // Someone else already holds userName "bob" at the endpoint (no externalId of ours).
    scim.post(
        "Users",
        &serde_json::json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": "bob"
        }),
    );
    let run = agent.run(&["sync", "--once", "--quiet"]);
    run.assert_code(3);
    // Honest counters: each object once, by outcome; the refused POST is a failure, not a
    // creation (it was counted as "created" once), and the counts are what the endpoint holds.
    assert!(
        run.summary().contains(
            "4 objects in step (3 users, 2 groups): 4 created, 0 updated, 0 unchanged, 1 failed"
        ),
        "{}",
        run.summary()
    );
    let ours = scim
        .all("Users")
        .iter()
        .chain(scim.all("Groups").iter())
        .filter(|r| r.get("externalId").is_some())
        .count();
    assert_eq!(ours, 4, "created = what the endpoint holds of ours");
    assert!(
        run.stderr.contains(&format!("uid=bob,{}", ou.dn)) && run.stderr.contains("409"),
        "the failure names the object and the HTTP status: {}",
        run.stderr
    );
    // The others went through, and the foreign "bob" was not touched.
    assert_eq!(scim.all("Users").len(), 3);
    assert!(scim
        .by_external_id("Users", &entry_uuid(&ou, "uid=ann"))
        .is_some());
    let foreign: Vec<Value> = scim
        .all("Users")
        .into_iter()
        .filter(|u| u["userName"] == "bob")
        .collect();
    assert_eq!(foreign.len(), 1);
    assert!(foreign[0].get("externalId").is_none(), "{foreign:?}");
}

#[test]
fn soft_match_adopts_an_unanchored_user_when_allowed() {
    let (ou, scim, agent) = setup("soft");
    let theirs = scim.post(
        "Users",
        &serde_json::json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": "bob"
        }),
    );
    agent.edit_config("max_attempts = 2", "max_attempts = 2\nsoft_match = true");
    agent.run(&["sync", "--once", "--quiet"]).assert_code(0);
    let bob = scim
        .by_external_id("Users", &entry_uuid(&ou, "uid=bob"))
        .unwrap();
    assert_eq!(bob["id"], theirs["id"], "adopted, not duplicated");
    assert_eq!(scim.all("Users").len(), 3);
}

#[test]
fn dry_run_prints_writes_and_sends_none() {
    let (ou, scim, agent) = setup("dry");
    // `--json`: each write as one JSON line (the benchmarks take their bodies from it).
    let run = agent.run(&["sync", "--once", "--dry-run", "--json", "--quiet"]);
    run.assert_code(0);
    let ops: Vec<Value> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ops.len(), 5, "{}", run.stdout);
    assert!(ops.iter().all(|o| o["method"] == "POST"));
    let ann = ops
        .iter()
        .find(|o| o["dn"] == format!("uid=ann,{}", ou.dn))
        .unwrap();
    assert_eq!(ann["path"], "/Users");
    assert_eq!(ann["body"]["userName"], "ann");
    assert!(run.summary().contains("dry run"), "{}", run.summary());
    assert!(!run.stdout.contains(&scim.token) && !run.stderr.contains(&scim.token));
    assert!(scim.all("Users").is_empty() && scim.all("Groups").is_empty());
}

#[test]
fn preview_shows_scope_mapping_and_what_the_endpoint_holds() {
    let (ou, _scim, agent) = setup("preview");
    let dn = format!("uid=ann,{}", ou.dn);
    let before = agent.run(&["preview", &dn]);
    before.assert_code(0);
    assert!(
        before.stdout.contains("in scope:  yes, as a user"),
        "{}",
        before.stdout
    );
    assert!(
        before.stdout.contains("\"userName\": \"ann\""),
        "{}",
        before.stdout
    );
    assert!(
        before.stdout.contains("endpoint holds: nothing"),
        "{}",
        before.stdout
    );
    agent.run(&["sync", "--once", "--quiet"]).assert_code(0);
    let after = agent.run(&["preview", &dn]);
    assert!(
        after
            .stdout
            .contains("endpoint holds (the user idrelay created, id "),
        "{}",
        after.stdout
    );
    assert!(
        after
            .stdout
            .contains("difference: none: the endpoint holds what a sync sends"),
        "{}",
        after.stdout
    );
    assert!(after.stdout.contains("\"id\""), "{}", after.stdout);
    // The group `team` has a member outside the scope (the syncer account): listed.
    let team = agent.run(&["preview", &format!("cn=team,{}", ou.dn)]);
    assert!(
        team.stdout.contains(&format!(
            "left out: 1 references out of the sync scope (not in scope.include or scope.groups, not matching the filters, or gone): member cn=syncer,{}",
            ou.dir.base
        )),
        "{}",
        team.stdout
    );
    let outside = agent.run(&["preview", &format!("cn=syncer,{}", ou.dir.base)]);
    outside.assert_code(0);
    assert!(
        outside.stdout.contains("in scope:  no"),
        "{}",
        outside.stdout
    );
}

#[test]
fn check_passes_against_real_servers() {
    let (_ou, _scim, agent) = setup("check");
    let run = agent.run(&["check"]);
    run.assert_code(0);
    for name in [
        "config",
        "state_dir",
        "ldap",
        "directory",
        "scope",
        "scim",
        "scim auth",
    ] {
        assert!(
            run.stdout
                .lines()
                .any(|l| l.starts_with(name) && l.contains(" OK ")),
            "{name}: {}",
            run.stdout
        );
    }
    assert!(run.stdout.contains("OpenLDAP"), "{}", run.stdout);
    assert!(run.stdout.contains("3 users, 2 groups"), "{}", run.stdout);
    let line = |run: &common::Run, name: &str| {
        run.stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no `{name}` line: {}", run.stdout))
            .to_string()
    };
    // An empty endpoint has no group to read members from; after a pass, scim2-server
    // shows them by id (RFC 7643).
    let members = line(&run, "scim members");
    assert!(
        members.contains("no group at the endpoint lists members yet"),
        "{members}"
    );
    assert!(line(&run, "scim removal").contains("member_removal = auto"));
    agent.run(&["sync", "--once"]).assert_code(0);
    let profile = agent.tmp.path().join("pinned.toml");
    std::fs::write(&profile, "[group]\nmember_removal = \"value_list\"\n").unwrap();
    agent.edit_config(
        "max_attempts = 2",
        &format!("max_attempts = 2\nprofile_file = \"{}\"", profile.display()),
    );
    let after = agent.run(&["check"]);
    let members = line(&after, "scim members");
    assert!(
        members.contains(" OK ") && members.contains("members[].value holds ids"),
        "{members}"
    );
    let removal = line(&after, "scim removal");
    assert!(
        removal.contains("member_removal = value_list: always the value list"),
        "{removal}"
    );
    // The feed's prerequisite: the testbed's slapd has the syncprov overlay.
    assert!(
        run.stdout
            .contains("feed       OK    syncrepl (RFC 4533) offered"),
        "{}",
        run.stdout
    );
}

#[test]
fn unreachable_endpoint_is_one_clear_error() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "unreach");
    seed(&ou);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/v2");
    let agent = Agent::new(&dir, &[&ou.dn], &url, "sekrit-token-value", "");
    let run = agent.run(&["sync", "--once", "--quiet"]);
    run.assert_code(1);
    assert!(
        run.stderr.contains(&format!("127.0.0.1:{port}")),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("sekrit-token-value"));
    let check = agent.run(&["check"]);
    check.assert_code(1);
    assert!(
        check
            .stdout
            .lines()
            .any(|l| l.starts_with("scim ") && l.contains("FAIL")),
        "{}",
        check.stdout
    );
}

#[test]
fn wrong_ldap_password_is_named_without_the_password() {
    let dir = Dir::openldap();
    let scim = ScimServer::start();
    let mut wrong = dir.clone();
    wrong.bind_pw = "not-the-password-42".into();
    let agent = Agent::new(&wrong, &[&dir.base], &scim.base_url(), &scim.token, "");
    let run = agent.run(&["sync", "--once", "--quiet"]);
    run.assert_code(1);
    let text = run.stderr.to_lowercase();
    assert!(
        text.contains("invalidcredentials") && text.contains(&dir.bind_dn.to_lowercase()),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("not-the-password-42") && !run.stdout.contains("not-the-password-42")
    );
    let check = agent.run(&["check"]);
    check.assert_code(1);
    assert!(check.stdout.contains("ldap       FAIL"), "{}", check.stdout);
}

#[test]
fn bad_config_key_is_named() {
    let dir = Dir::openldap();
    let agent = Agent::new(
        &dir,
        &[&dir.base],
        "http://127.0.0.1:9/v2",
        "t",
        "colour = \"blue\"",
    );
    let run = agent.run(&["check"]);
    run.assert_code(2);
    assert!(
        run.stderr
            .contains("in [sync]: unknown key `colour`: [sync] takes concurrency, "),
        "{}",
        run.stderr
    );
    let run = agent.run(&["sync", "--once"]);
    run.assert_code(2);
}

/// Regression: a chain of managers (and a manager cycle) created in one pass used to be sent
/// with a reference missing, so the second pass had writes to make.
#[test]
fn manager_chains_and_cycles_settle_in_one_pass() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "chain");
    let o = &ou.dn;
    let mut ldif = String::new();
    for i in 0..8 {
        let manager = if i == 0 {
            String::new()
        } else {
            format!("manager: uid=c{},{o}\n", i - 1)
        };
        ldif.push_str(&format!(
            "dn: uid=c{i},{o}\nobjectClass: inetOrgPerson\nuid: c{i}\ncn: C{i}\nsn: C\n{manager}\n"
        ));
    }
    // x and y manage each other.
    ldif.push_str(&format!(
        "dn: uid=x,{o}\nobjectClass: inetOrgPerson\nuid: x\ncn: X\nsn: X\n\n"
    ));
    ldif.push_str(&format!(
        "dn: uid=y,{o}\nobjectClass: inetOrgPerson\nuid: y\ncn: Y\nsn: Y\nmanager: uid=x,{o}\n\n"
    ));
    ldif.push_str(&format!(
        "dn: uid=x,{o}\nchangetype: modify\nadd: manager\nmanager: uid=y,{o}\n\n"
    ));
    dir.modify(&ldif);
    let scim = ScimServer::start();
    let agent = Agent::new(&dir, &[o], &scim.base_url(), &scim.token, "");
    agent.run(&["sync", "--once", "--quiet"]).assert_code(0);
    for i in 1..8 {
        let me = scim
            .by_external_id("Users", &entry_uuid(&ou, &format!("uid=c{i}")))
            .unwrap();
        let boss = scim
            .by_external_id("Users", &entry_uuid(&ou, &format!("uid=c{}", i - 1)))
            .unwrap();
        assert_eq!(
            me["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]["manager"]["value"],
            boss["id"]
        );
    }
    let x = scim
        .by_external_id("Users", &entry_uuid(&ou, "uid=x"))
        .unwrap();
    let y = scim
        .by_external_id("Users", &entry_uuid(&ou, "uid=y"))
        .unwrap();
    assert_eq!(
        x["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]["manager"]["value"],
        y["id"]
    );
    assert_eq!(
        y["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]["manager"]["value"],
        x["id"]
    );
    let again = agent.run(&["sync", "--once", "--quiet"]);
    assert!(
        again.summary().contains(
            "0 created, 0 updated, 10 unchanged, 0 failed; requests: 0 POST, 0 PUT, 0 PATCH"
        ),
        "{}",
        again.summary()
    );
}

/// Most users of a first pass held back at once (their manager comes last in the directory's
/// order, so none of them can refer to it on first sight): the held round reads them with one
/// more paged search instead of a read each, and every one is sent once, complete.
#[test]
fn hundreds_of_held_back_users_are_read_again_by_one_search_and_sent_once() {
    const N: usize = 400;
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "held");
    let o = &ou.dn;
    let mut ldif = String::new();
    for i in 0..N {
        ldif.push_str(&format!(
            "dn: uid=h{i},{o}\nobjectClass: inetOrgPerson\nuid: h{i}\ncn: H{i}\nsn: H\nmanager: uid=boss,{o}\n\n"
        ));
    }
    ldif.push_str(&format!(
        "dn: uid=boss,{o}\nobjectClass: inetOrgPerson\nuid: boss\ncn: Boss\nsn: B\n\n"
    ));
    dir.modify(&ldif);
    let scim = ScimServer::start();
    let agent = Agent::new(&dir, &[o], &scim.base_url(), &scim.token, "");
    let first = agent.run(&["sync", "--once", "--quiet", "--log-level", "info"]);
    first.assert_code(0);
    assert!(
        first
            .summary()
            .contains(&format!("{} created, 0 updated", N + 1)),
        "each user created once: {}",
        first.summary()
    );
    assert!(
        first
            .stderr
            .contains(&format!("{N} users refer to objects created in this pass")),
        "{}",
        first.stderr
    );
    let boss = scim
        .by_external_id("Users", &entry_uuid(&ou, "uid=boss"))
        .unwrap();
    let users = scim.all("Users");
    let mine: Vec<&Value> = users
        .iter()
        .filter(|u| u["userName"].as_str().is_some_and(|n| n.starts_with('h')))
        .collect();
    assert_eq!(mine.len(), N, "one resource per user, no duplicates");
    for u in mine {
        assert_eq!(
            u["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]["manager"]["value"],
            boss["id"],
            "{}",
            u["userName"]
        );
    }
    let again = agent.run(&["sync", "--once", "--quiet"]);
    assert!(
        again.summary().contains(&format!(
            "0 created, 0 updated, {} unchanged, 0 failed; requests: 0 POST, 0 PUT, 0 PATCH",
            N + 1
        )),
        "{}",
        again.summary()
    );
}

/// Regression: with a wrong (or expired) token every object got 401, the pass was called
/// complete (exit 3, "some objects failed", a warning per object, twice), and `run`
/// counted the full pass as done. A refusal of the credentials is the endpoint's answer to
/// the agent, not to an object: the pass stops with one error that names the setting,
/// exit 1, and `run` keeps the full pass owed.
#[test]
fn a_wrong_token_stops_the_pass_with_one_error_and_the_pass_stays_owed() {
    let (ou, _scim, agent) = setup("badtok");
    common::write_secret(&agent.tmp.path().join("scim.token"), "not-the-token-4711");
    let r = agent.run(&["sync", "--once"]);
    r.assert_code(1);
    assert!(
        r.stderr.contains("refused the credentials") && r.stderr.contains("scim.token_file"),
        "{}",
        r.stderr
    );
    let per_object = r
        .stderr
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(&ou.dn))
        .count();
    assert_eq!(per_object, 0, "no warning per object:\n{}", r.stderr);
    assert!(!r.stderr.contains("not-the-token-4711"), "{}", r.stderr);

    let run = common::Running(agent.spawn(&["run"]));
    assert!(
        // In `run`, an endpoint outage: one line naming the cause and the key.
        common::wait_until(30, || {
            agent
            .log()
            .contains("SCIM endpoint unhealthy: the SCIM endpoint refuses our token (401): check scim.token_file")
        }),
        "{}",
        agent.log()
    );
    drop(run);
    let status = agent.run(&["status"]);
    assert!(
        status.stdout.contains("resync owed:  yes"),
        "the full pass stays owed:\n{}",
        status.stdout
    );
}

/// Regression: a user with two `mail` values reached SCIM with only the first. Every value
/// of a multi-valued attribute is sent (one primary e-mail), and adding or removing one
/// value in the directory reaches the endpoint.
#[test]
fn every_mail_and_phone_value_reaches_scim_and_a_removed_one_goes() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "multi");
    let o = &ou.dn;
    dir.modify(&format!(
        "dn: uid=multi,{o}\nobjectClass: inetOrgPerson\nuid: multi\ncn: Multi Value\nsn: Value\n\
         mail: first@branch.test\nmail: second@branch.test\n\
         telephoneNumber: +1 555 0001\ntelephoneNumber: +1 555 0002\n"
    ));
    let scim = ScimServer::start();
    let agent = Agent::new(&dir, &[o], &scim.base_url(), &scim.token, "");
    agent.run(&["sync", "--once"]).assert_code(0);
    let values = |attr: &str| -> Vec<String> {
        let u = scim
            .by_external_id("Users", &entry_uuid(&ou, "uid=multi"))
            .expect("user at the endpoint");
        u[attr]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| e["value"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        values("emails"),
        ["first@branch.test", "second@branch.test"]
    );
    assert_eq!(values("phoneNumbers"), ["+1 555 0001", "+1 555 0002"]);
    let u = scim
        .by_external_id("Users", &entry_uuid(&ou, "uid=multi"))
        .unwrap();
    let primaries: Vec<&Value> = u["emails"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["primary"] == true)
        .collect();
    assert_eq!(primaries.len(), 1, "{u}");

    dir.modify(&format!(
        "dn: uid=multi,{o}\nchangetype: modify\ndelete: mail\nmail: first@branch.test\n-\n\
         add: telephoneNumber\ntelephoneNumber: +1 555 0003\n"
    ));
    agent.run(&["sync", "--once"]).assert_code(0);
    assert_eq!(values("emails"), ["second@branch.test"]);
    assert_eq!(
        values("phoneNumbers"),
        ["+1 555 0001", "+1 555 0002", "+1 555 0003"]
    );
}

/// Regression (a branch administrator's scope typo: `include` without `ou=people`): with
/// the count threshold alone (500) all 13 users of the branch were deactivated and its
/// groups emptied, exit 0. Now the deletes are more than 10 % of the scope: all held, no
/// user deactivated, the groups keep their members, the hold named, exit 4.
#[test]
fn a_scope_typo_on_a_small_branch_deactivates_nobody_and_keeps_memberships() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "typo");
    let o = &ou.dn;
    let mut ldif = format!(
        "dn: ou=people,{o}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: ou=groups,{o}\nobjectClass: organizationalUnit\nou: groups\n\n"
    );
    let mut members = String::new();
    for i in 0..13 {
        ldif.push_str(&format!(
            "dn: uid=t{i:02},ou=people,{o}\nobjectClass: inetOrgPerson\nuid: t{i:02}\ncn: T {i}\nsn: T\n\n"
        ));
        members.push_str(&format!("member: uid=t{i:02},ou=people,{o}\n"));
    }
    ldif.push_str(&format!(
        "dn: cn=branch,ou=groups,{o}\nobjectClass: groupOfNames\ncn: branch\n{members}\n"
    ));
    dir.modify(&ldif);
    let scim = ScimServer::start();
    let agent = Agent::new(&dir, &[o], &scim.base_url(), &scim.token, "");
    agent.run(&["sync", "--once"]).assert_code(0);
    let group = |scim: &ScimServer| {
        scim.all("Groups")
            .into_iter()
            .find(|g| g["displayName"] == "branch")
            .expect("group")
    };
    assert_eq!(ids(&group(&scim)["members"]).len(), 13);

    // The typo: only the groups' OU is in scope.
    agent.edit_config(
        &format!("include = [\"{o}\"]"),
        &format!("include = [\"ou=groups,{o}\"]"),
    );
    // The dry run shows the hold, one line per object, and counts what the pass does.
    let dry = agent.run(&["sync", "--once", "--dry-run", "--quiet"]);
    let holds = dry
        .stdout
        .lines()
        .filter(|l| l.starts_with("hold user uid=t") && l.contains("held for approval"))
        .count();
    assert_eq!(holds, 13, "{}", dry.stdout);
    assert!(
        !dry.stdout.contains("members: +"),
        "memberships kept: {}",
        dry.stdout
    );
    let r = agent.run(&["sync", "--once"]);
    r.assert_code(4);
    assert_eq!(counts(dry.summary()), counts(r.summary()), "{}", dry.stdout);
    assert!(
        r.summary().contains("13 held for approval"),
        "{}",
        r.summary()
    );
    for said in [
        "scope shrank from 14 to 1",
        "13 deletes held",
        "delete_threshold_percent",
    ] {
        assert!(r.stderr.contains(said), "{said}:\n{}", r.stderr);
    }
    let users = scim.all("Users");
    assert_eq!(users.len(), 13);
    assert!(
        users.iter().all(|u| u["active"] == true),
        "nobody deactivated: {users:?}"
    );
    assert_eq!(
        ids(&group(&scim)["members"]).len(),
        13,
        "the group keeps the members whose deletes are held"
    );
    let listed = agent.run(&["approve-deletes", "--list"]);
    assert!(listed.stdout.contains("13"), "{}", listed.stdout);
}

/// Regression (scim2-server): a user deleted and added again in the directory (a rehire,
/// an LDIF restore) has a new entryUUID; the SCIM user idrelay itself created, deactivated
/// by the delete, still holds the userName, so every pass failed with 409 and a false
/// "not created by idrelay", soft_match or not. The provisioning log proves the resource
/// ours: it is re-anchored, active again, the same SCIM id.
#[test]
fn a_user_deleted_and_added_again_is_re_anchored_to_its_own_scim_user() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "rehire");
    let o = &ou.dn;
    let user = format!(
        "dn: uid=rehire,{o}\nobjectClass: inetOrgPerson\nuid: rehire\ncn: Re Hire\nsn: Hire\n"
    );
    dir.modify(&user);
    let scim = ScimServer::start();
    let agent = Agent::new(&dir, &[o], &scim.base_url(), &scim.token, "");
    agent.run(&["sync", "--once"]).assert_code(0);
    let first = entry_uuid(&ou, "uid=rehire");
    let id = scim.by_external_id("Users", &first).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    dir.delete_tree(&format!("uid=rehire,{o}"));
    agent.run(&["sync", "--once"]).assert_code(0);
    assert_eq!(scim.get(&format!("/Users/{id}"))["active"], false);

    dir.modify(&user);
    let second = entry_uuid(&ou, "uid=rehire");
    assert_ne!(first, second, "a new entry, a new entryUUID");
    let r = agent.run(&["sync", "--once"]);
    r.assert_code(0);
    assert!(r.stderr.contains("re-anchored"), "{}", r.stderr);
    let u = scim.get(&format!("/Users/{id}"));
    assert_eq!(u["externalId"], second.as_str(), "{u}");
    assert_eq!(u["active"], true, "{u}");
    let named = scim
        .all("Users")
        .into_iter()
        .filter(|u| u["userName"] == "rehire")
        .count();
    assert_eq!(named, 1, "no second user");
    agent.run(&["sync", "--once"]).assert_code(0);
}

/// Issue 15 (branch-link speed): a first pass paid a lookup per object before each create
/// (two round trips per object). With many objects unknown to the anchor index the pass
/// reads what the endpoint holds once, page by page, and matches locally; after the state
/// directory is lost every object is matched by that listing: no create, no duplicate.
#[test]
fn a_first_pass_matches_by_one_listing_not_a_lookup_per_object() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "listing");
    let o = &ou.dn;
    let mut ldif = String::new();
    let mut members = String::new();
    for i in 0..120 {
        ldif.push_str(&format!(
            "dn: uid=l{i:03},{o}\nobjectClass: inetOrgPerson\nuid: l{i:03}\ncn: L {i}\nsn: L\n\n"
        ));
        if i < 50 {
            members.push_str(&format!("member: uid=l{i:03},{o}\n"));
        }
    }
    ldif.push_str(&format!(
        "dn: cn=listed,{o}\nobjectClass: groupOfNames\ncn: listed\n{members}\n"
    ));
    dir.modify(&ldif);
    let scim = ScimServer::start();
    let proxy = common::faultproxy::FaultProxy::http(scim.port);
    // One request per object, so that requests can be counted by path (the same pass
    // through SCIM Bulk: tests/bulk_live.rs).
    let agent = Agent::new(
        &dir,
        &[o],
        &proxy.http_url("/v2"),
        &scim.token,
        "bulk = \"off\"",
    );
    let count = |events: &[common::faultproxy::Event], method: &str, part: &str| {
        events
            .iter()
            .filter(|e| e.method == method && e.path.contains(part))
            .count()
    };

    let first = agent.run(&["sync", "--once"]);
    first.assert_code(0);
    assert!(
        first.stderr.contains("matching locally"),
        "{}",
        first.stderr
    );
    let events = proxy.events();
    // The pass's probe of the endpoint's lookups makes up to two filtered reads.
    let lookups = count(&events, "GET", "filter=externalId");
    assert!(lookups <= 2, "{lookups} lookups by externalId");
    assert_eq!(count(&events, "POST", "/Users"), 120);
    assert_eq!(count(&events, "POST", "/Groups"), 1);
    eprintln!("first pass: {} requests for 121 objects", events.len());

    std::fs::remove_dir_all(agent.tmp.path().join("state")).unwrap();
    let before = proxy.events().len();
    let again = agent.run(&["sync", "--once"]);
    again.assert_code(0);
    let events = proxy.events()[before..].to_vec();
    assert_eq!(
        count(&events, "POST", ""),
        0,
        "everything matched, nothing created"
    );
    assert!(count(&events, "GET", "filter=externalId") <= 2);
    assert_eq!(scim.all("Users").len(), 120, "no duplicate");
    eprintln!(
        "after a lost state directory: {} requests for 121 objects",
        events.len()
    );
}

/// An endpoint that accepts an attribute and does not keep it (here scim2-server serving a
/// User schema whose `title` is read-only, which RFC 7643 lets a service ignore on write):
/// the pass says so once, in its output and the log, and `status`, `check` and `preview`
/// name the attribute; the attributes the endpoint keeps are not named.
#[test]
fn an_attribute_the_endpoint_accepts_and_drops_is_named() {
    let plain = ScimServer::start();
    let mut schemas = plain.get("/Schemas");
    drop(plain);
    let list = match schemas.get_mut("Resources") {
        Some(r) => r.as_array_mut().unwrap(),
        None => schemas.as_array_mut().unwrap(),
    };
    for s in list.iter_mut() {
        if s["id"] == "urn:ietf:params:scim:schemas:core:2.0:User" {
            for a in s["attributes"].as_array_mut().unwrap() {
                if a["name"] == "title" {
                    a["mutability"] = "readOnly".into();
                }
            }
        }
    }
    let list = Value::Array(list.clone());
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "dropped");
    seed(&ou);
    let file = std::env::temp_dir().join(format!("idrelay-it-schemas-{}.json", std::process::id()));
    std::fs::write(&file, list.to_string()).unwrap();
    let scim = ScimServer::start_with(&["--schema", file.to_str().unwrap()]);
    let agent = Agent::new(&dir, &[&ou.dn], &scim.base_url(), &scim.token, "");

    let run = agent.run(&["sync", "--once"]);
    run.assert_code(0);
    assert!(
        run.stdout
            .contains("the endpoint accepted and did not keep as sent: user title (dropped)"),
        "{}",
        run.stdout
    );
    assert!(
        run.summary().contains("5 objects in step"),
        "{}",
        run.summary()
    );
    assert_eq!(
        run.stderr
            .matches("accepted and did not keep a user's `title`")
            .count(),
        1,
        "said once: {}",
        run.stderr
    );
    // It is true: the endpoint holds no title.
    let mgr = scim
        .by_external_id("Users", &entry_uuid(&ou, "uid=mgr"))
        .unwrap();
    assert!(mgr.get("title").is_none(), "{mgr}");
    assert_eq!(mgr["displayName"], "Mia Manager");

    let status = agent.run(&["status", "--json"]);
    let doc: Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(
        doc["endpoint"]["not_kept"],
        serde_json::json!(["user title (dropped)"]),
        "{}",
        status.stdout
    );
    let check = agent.run(&["check"]);
    assert!(
        check.stdout.lines().any(|l| l.starts_with("scim kept")
            && l.contains("WARN")
            && l.contains("user title (dropped)")),
        "{}",
        check.stdout
    );
    let preview = agent.run(&["preview", &format!("uid=mgr,{}", ou.dn)]);
    assert!(
        preview
            .stdout
            .contains("title: (none) -> \"Head of Branch\""),
        "{}",
        preview.stdout
    );
    let _ = std::fs::remove_file(&file);
}

/// The object counts of a summary line (`N objects in step (...): N created, N updated, N
/// unchanged, N failed`) and its deletes, without the requests and timings.
fn counts(summary: &str) -> String {
    let objects = summary
        .split_once(": ")
        .and_then(|(_, rest)| rest.split_once("; requests"))
        .map(|(c, _)| c.to_string())
        .unwrap_or_default();
    let deletes = summary
        .split_once("deletes: ")
        .map(|(_, d)| d.to_string())
        .unwrap_or_default();
    format!("{objects} | deletes: {deletes}")
}

/// Issue 20 item 4: `--dry-run` shows per object the operation and the attributes that
/// change, predicts the 409 of a userName held by a resource idrelay does not own, includes
/// the delete, writes nothing, and its counts are those the real pass then reports.
#[test]
fn a_dry_run_shows_the_change_and_counts_what_the_real_pass_does() {
    let (ou, scim, agent) = setup("drydiff");
    agent.run(&["sync", "--once", "--quiet"]).assert_code(0);
    let o = &ou.dn;
    ou.dir.modify(&format!(
        "dn: uid=ann,{o}\nchangetype: modify\nreplace: title\ntitle: Clerk\n\n\
         dn: uid=mgr,{o}\nchangetype: modify\ndelete: title\n\n\
         dn: uid=eve,{o}\nchangetype: add\nobjectClass: inetOrgPerson\nuid: eve\ncn: Eve Ng\nsn: Ng\n\n\
         dn: uid=fay,{o}\nchangetype: add\nobjectClass: inetOrgPerson\nuid: fay\ncn: Fay Wu\nsn: Wu\n"
    ));
    ou.dir.delete_tree(&format!("uid=bob,{o}"));
    // Someone else's user holds fay's userName at the endpoint.
    scim.post(
        "Users",
        &serde_json::json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": "fay",
        }),
    );
    let before = (scim.all("Users"), scim.all("Groups"));

    let dry = agent.run(&["sync", "--once", "--dry-run", "--quiet"]);
    let out = &dry.stdout;
    assert!(out.contains(&format!("create user uid=eve,{o}\n")), "{out}");
    assert!(
        out.contains(&format!("replace user uid=ann,{o} (id "))
            && out.contains("    title: (none) -> \"Clerk\"\n"),
        "{out}"
    );
    assert!(
        out.contains(&format!("replace user uid=mgr,{o} (id "))
            && out.contains("    title: \"Head of Branch\" -> (none)\n"),
        "a cleared attribute: {out}"
    );
    assert!(
        out.contains(&format!(
            "create user uid=fay,{o}: would fail: 409 userName `fay`"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("deactivate user uid=bob,{o} (id "))
            || out.contains(&format!("delete user uid=bob,{o} (id ")),
        "{out}"
    );
    assert!(
        out.contains(&format!("patch group cn=team,{o} (id "))
            && out.contains("    members: +0 -1\n"),
        "bob leaves the team: {out}"
    );
    assert!(!out.contains(&scim.token));
    assert!(
        !out.lines().any(|l| l.starts_with('{')),
        "no JSON without --json: {out}"
    );
    assert_eq!(
        (scim.all("Users"), scim.all("Groups")),
        before,
        "the dry run wrote nothing"
    );

    let real = agent.run(&["sync", "--once", "--quiet"]);
    real.assert_code(3); // fay's userName is taken
    eprintln!(
        "{out}\ndry run: {}\nreal:    {}",
        dry.summary(),
        real.summary()
    );
    assert_eq!(counts(dry.summary()), counts(real.summary()), "{out}");
    assert!(
        counts(real.summary()).starts_with(
            "5 objects in step (4 users, 2 groups): 1 created, 3 updated, 1 unchanged, 1 failed"
        ),
        "{}",
        real.summary()
    );
    assert!(
        counts(real.summary()).contains("deletes: 1 sent"),
        "{}",
        real.summary()
    );
}
