//! The testbed's second SCIM server, Canaille 0.3.6 (`scripts/testbed/canaille.sh`): its seed
//! accounts are there and come back after a reset, and the quirks that make it a hard target
//! for the agent (docs/testing.md, "Canaille") still hold with the pinned versions. Plain
//! HTTP only; the agent's own tests against it use `common::canaille::canaille`.

mod common;

use common::canaille::{canaille, SEED_GROUP, SEED_USERS};
use serde_json::{json, Value};

const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";

fn names(list: &[Value], attr: &str) -> Vec<String> {
    let mut v: Vec<String> = list
        .iter()
        .map(|r| r[attr].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn the_seed_accounts_are_there_and_a_reset_brings_them_back() {
    let Some(c) = canaille("the_seed_accounts_are_there_and_a_reset_brings_them_back") else {
        return;
    };
    assert_eq!(names(&c.all("Users"), "userName"), SEED_USERS);
    let groups = c.all("Groups");
    assert_eq!(names(&groups, "displayName"), [SEED_GROUP]);
    assert_eq!(groups[0]["members"][0]["value"], "staff.owner");
    let owner = c.user("staff.owner");

    let (status, made) = c.request(
        "POST",
        "/Users",
        Some(
            &json!({"schemas": [USER], "userName": "canaille-live-temp", "active": true,
                     "name": {"formatted": "Temp User", "familyName": "User"}}),
        ),
    );
    assert_eq!(status, 201, "{made}");
    let (status, _) = c.request("DELETE", &format!("/Groups/{SEED_GROUP}"), None);
    assert_eq!(status, 204);
    c.reset();
    assert_eq!(names(&c.all("Users"), "userName"), SEED_USERS);
    assert_eq!(names(&c.all("Groups"), "displayName"), [SEED_GROUP]);
    assert_eq!(
        c.user("staff.owner"),
        owner,
        "staff.owner is back as it was"
    );
}

#[test]
fn the_quirks_an_agent_meets_there_still_hold() {
    let Some(c) = canaille("the_quirks_an_agent_meets_there_still_hold") else {
        return;
    };
    // filter is ignored: every user comes back.
    let (status, v) = c.request("GET", "/Users?filter=userName%20eq%20%22nobody%22", None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["totalResults"], 2, "{v}");
    // externalId is accepted and dropped.
    let body = json!({"schemas": [USER], "userName": "canaille-live-ext", "externalId": "ext-1",
                      "active": true, "name": {"formatted": "Ext User", "familyName": "User"}});
    let (status, v) = c.request("POST", "/Users", Some(&body));
    assert_eq!(status, 201, "{v}");
    assert!(v.get("externalId").is_none(), "{v}");
    assert!(c.user("canaille-live-ext").get("externalId").is_none());
    // name.formatted, and primary/type on emails, are refused.
    let mut no_formatted = body.clone();
    no_formatted["userName"] = json!("canaille-live-2");
    no_formatted["name"] = json!({"familyName": "User"});
    assert_eq!(c.request("POST", "/Users", Some(&no_formatted)).0, 400);
    let mut typed = body.clone();
    typed["userName"] = json!("canaille-live-3");
    typed["emails"] = json!([{"value": "x@branch.test", "type": "work", "primary": true}]);
    assert_eq!(c.request("POST", "/Users", Some(&typed)).0, 400);
    // A group needs "members", and shows members by userName.
    let g = json!({"schemas": [GROUP], "displayName": "canaille-live-g"});
    assert_eq!(c.request("POST", "/Groups", Some(&g)).0, 400);
    let (status, _) = c.request("GET", "/Users?count=10", None);
    assert_eq!(status, 500, "count= makes Canaille 0.3.6 fail");
    c.reset();
}

/// The writes (PUT, PATCH, DELETE) that reached a resource named by one of `ids` (Canaille
/// also takes a userName or group name in the path).
fn writes_to(events: &[common::faultproxy::Event], ids: &[String]) -> Vec<String> {
    events
        .iter()
        .filter(|e| matches!(e.method.as_str(), "PUT" | "PATCH" | "DELETE"))
        .filter(|e| {
            let path = e.path.split('?').next().unwrap_or("");
            let last = path.rsplit('/').next().unwrap_or("");
            ids.iter().any(|id| id == last)
        })
        .map(|e| format!("{} {}", e.method, e.path))
        .collect()
}

/// Regression (Canaille ignores `filter` and keeps no externalId): the agent took the one
/// user a lookup by `externalId eq` returned, the server's own admin account, as the match
/// and sent `PUT /Users/<admin id>` with a directory user's body, once per directory user.
/// Now a resource is ours only when it shows the object's own externalId: the directory's
/// users are created beside the admin, nothing of the server's own is ever written, and a
/// lost state directory makes the agent refuse, never adopt.
#[test]
fn the_agent_never_writes_to_a_resource_it_did_not_create() {
    let Some(c) = canaille("the_agent_never_writes_to_a_resource_it_did_not_create") else {
        return;
    };
    // The case that was overwritten: the admin is the only user at the endpoint.
    let owner_id = c.user("staff.owner")["id"].as_str().unwrap().to_string();
    assert_eq!(
        c.request("DELETE", &format!("/Users/{owner_id}"), None).0,
        204
    );
    let admin = c.user("admin");
    let (status, staff) = c.request("GET", &format!("/Groups/{SEED_GROUP}"), None);
    assert_eq!(status, 200, "{staff}");
    let foreign: Vec<String> = [
        admin["id"].as_str().unwrap(),
        "admin",
        staff["id"].as_str().unwrap(),
        SEED_GROUP,
    ]
    .map(str::to_string)
    .to_vec();

    let dir = common::Dir::openldap();
    let ou = common::TestOu::create(&dir, "cana");
    let o = &ou.dn;
    let mut ldif = String::new();
    for (uid, given, sn) in [
        ("cana1", "Ada", "One"),
        ("cana2", "Ben", "Two"),
        ("cana3", "Cy", "Three"),
    ] {
        ldif.push_str(&format!(
            "dn: uid={uid},{o}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {given} {sn}\ngivenName: {given}\nsn: {sn}\n\n"
        ));
    }
    ldif.push_str(&format!(
        "dn: cn=cana-team,{o}\nobjectClass: groupOfNames\ncn: cana-team\nmember: uid=cana1,{o}\nmember: uid=cana2,{o}\n\n"
    ));
    dir.modify(&ldif);

    let proxy = common::faultproxy::FaultProxy::http(c.port());
    let url = proxy.http_url(c.base_path());
    let agent = common::Agent::new(&dir, &[o], &url, &c.token, "");
    // What this server needs of a user body: name.formatted; no primary/type on e-mails.
    let profile = agent.tmp.path().join("profile.toml");
    std::fs::write(
        &profile,
        "[user.attributes]\n\"name.formatted\" = \"cn\"\n\"emails[type eq \\\"work\\\"].value\" = \"\"\n",
    )
    .unwrap();
    agent.edit_config(
        "max_attempts = 2",
        &format!("max_attempts = 2\nprofile_file = \"{}\"", profile.display()),
    );
    agent.edit_config("concurrency = 4", "concurrency = 1");

    let ours = ["cana1", "cana2", "cana3"];
    let count_of = |name: &str| {
        c.all("Users")
            .iter()
            .filter(|u| u["userName"] == name)
            .count()
    };
    let check = |what: &str, run: &common::Run| {
        let writes = writes_to(&proxy.events(), &foreign);
        assert!(
            writes.is_empty(),
            "{what}: wrote to the endpoint's own resources: {writes:?}\n{}",
            run.stderr
        );
        assert_eq!(c.user("admin"), admin, "{what}: the admin account changed");
        for name in ours {
            assert_eq!(count_of(name), 1, "{what}: {name} once\n{}", run.stderr);
        }
    };

    // The group fails (this server refuses a group created without members): exit 3.
    let first = agent.run(&["sync", "--once"]);
    check("first pass", &first);
    assert_eq!(first.code, 3, "{}\n{}", first.stdout, first.stderr);
    assert!(
        first.stderr.contains("ignores filters"),
        "the ignored filter is said: {}",
        first.stderr
    );

    let second = agent.run(&["sync", "--once"]);
    check("second pass", &second);

    // State lost: nothing at the endpoint shows our externalId, so nothing is adopted.
    std::fs::remove_dir_all(agent.tmp.path().join("state")).unwrap();
    let lost = agent.run(&["sync", "--once"]);
    assert_ne!(lost.code, 0, "{}", lost.stderr);
    check("pass after the state directory was lost", &lost);

    let checked = agent.run(&["check"]);
    assert!(
        checked
            .stdout
            .contains("scim lookup WARN  the endpoint ignores filters"),
        "{}",
        checked.stdout
    );
}
