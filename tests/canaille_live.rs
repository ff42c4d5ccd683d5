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
