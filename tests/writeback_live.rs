//! Writeback end to end with real binaries on loopback: `idrelay run` with `[relay]` and
//! `[writeback]`, `idrelay-hub` exposing the agent as a SCIM endpoint, and a real directory
//! (Samba AD for groups written back; slapd for the default policy and a groupOfNames).
//! The cloud creates a group in the allowed OU, changes its members with PATCH and deletes
//! it; writes to a group in another OU, of an attribute the policy does not list, or with
//! no `[writeback]` at all are 403 and leave the directory as it was (compared with
//! ldapsearch before and after).

mod common;

use std::process::Command;

use common::{url_encode, wait_until, Agent, Dir, Hub, Running, ScimServer, TestOu, HUB_SETTINGS};
use serde_json::{json, Value};

const OPERATOR: &str = "operator-token-for-writeback-tests";
const AGENT_TOKEN: &str = "agent-token-wb";
const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

/// A hub serving the one agent `a1` of these tests.
fn start_hub() -> Hub {
    Hub::start(OPERATOR, HUB_SETTINGS, &[("a1", "branch", AGENT_TOKEN)])
}

impl Hub {
    /// A SCIM request to the agent through the hub.
    fn scim(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let body = body.map(Value::to_string);
        self.op(
            method,
            &format!("/agents/a1/scim/v2{path}"),
            body.as_deref(),
        )
    }

    fn active(&self) -> bool {
        self.role("a1").as_deref() == Some("active")
    }
}

/// The entry at `dn` as the directory's admin sees it with ldapsearch (all user
/// attributes, sorted lines; empty when it does not exist).
fn entry(dir: &Dir, dn: &str) -> Vec<String> {
    let out = Command::new("ldapsearch")
        .args(["-x", "-LLL", "-o", "ldif-wrap=no", "-H", &dir.url])
        .args([
            "-D",
            &dir.admin_dn,
            "-w",
            &dir.admin_pw,
            "-b",
            dn,
            "-s",
            "base",
        ])
        .output()
        .unwrap();
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// The values of `attr` in an [`entry`] listing (lower-cased).
fn values(lines: &[String], attr: &str) -> Vec<String> {
    let prefix = format!("{}: ", attr.to_ascii_lowercase());
    lines
        .iter()
        .filter(|l| l.to_ascii_lowercase().starts_with(&prefix))
        .map(|l| l[prefix.len()..].to_ascii_lowercase())
        .collect()
}

/// The SCIM id of the one resource the filter finds through the hub.
fn id_of(hub: &Hub, endpoint: &str, filter: &str) -> String {
    let (s, v) = hub.scim(
        "GET",
        &format!("/{endpoint}?filter={}", url_encode(filter)),
        None,
    );
    assert_eq!(
        (s, v["totalResults"].as_u64()),
        (200, Some(1)),
        "{filter}: {v}"
    );
    v["Resources"][0]["id"].as_str().unwrap().to_string()
}

fn short_tag() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{:x}", (n ^ std::process::id()) & 0xff_ffff)
}

#[test]
fn samba_ad_groups_are_written_back_only_inside_the_allowed_ou() {
    let dir = Dir::samba();
    let allowed = TestOu::create(&dir, "wb-allowed");
    let denied = TestOu::create(&dir, "wb-denied");
    let (a, d) = (allowed.dn.clone(), denied.dn.clone());
    let t = short_tag();
    for u in ["u1", "u2"] {
        dir.modify(&format!(
            "dn: CN=wb{u}{t},{a}\nobjectClass: user\nsAMAccountName: wb{u}{t}\nuserPrincipalName: wb{u}{t}@branch.test\n"
        ));
    }
    let denied_group = format!("CN=wbden{t},{d}");
    dir.modify(&format!(
        "dn: {denied_group}\nobjectClass: group\nsAMAccountName: wbden{t}\nmember: CN=wbu1{t},{a}\n"
    ));
    let scim = ScimServer::start();
    let hub = start_hub();
    let ag = Agent::with_relay(
        &dir,
        &[&a, &d],
        &scim,
        &hub,
        ("a1", AGENT_TOKEN),
        &format!("\n[writeback]\nresources = [\"groups\"]\nallowed_ous = [\"{a}\"]\n"),
    );
    let _run = Running(ag.spawn(&["run"]));
    assert!(
        wait_until(90, || hub.active() && scim.all("Users").len() == 2),
        "agent: {}\nhub: {}",
        ag.log(),
        hub.log()
    );
    let u1 = id_of(
        &hub,
        "Users",
        &format!("userName eq \"wbu1{t}@branch.test\""),
    );
    let u2 = id_of(
        &hub,
        "Users",
        &format!("userName eq \"wbu2{t}@branch.test\""),
    );

    // Create in the allowed OU, with a member.
    let name = format!("wb-team-{t}");
    let (s, g) = hub.scim(
        "POST",
        "/Groups",
        Some(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": name, "members": [{"value": u1}]})),
    );
    assert_eq!(s, 201, "{g}\n{}", ag.log());
    assert_eq!(g["displayName"], name.as_str(), "{g}");
    let gid = g["id"].as_str().unwrap().to_string();
    let gdn = format!("CN={name},{a}");
    let now = entry(&dir, &gdn);
    assert_eq!(
        values(&now, "member"),
        vec![format!("cn=wbu1{t},{a}").to_ascii_lowercase()],
        "{now:?}"
    );
    assert_eq!(
        values(&now, "sAMAccountName"),
        vec![name.to_ascii_lowercase()]
    );

    // PATCH add u2, then remove u1.
    let (s, v) = hub.scim(
        "PATCH",
        &format!("/Groups/{}", url_encode(&gid)),
        Some(&json!({"schemas": [PATCH_OP], "Operations": [{"op": "add", "path": "members", "value": [{"value": u2}]}]})),
    );
    assert_eq!(s, 200, "{v}\n{}", ag.log());
    assert_eq!(values(&entry(&dir, &gdn), "member").len(), 2);
    let (s, v) = hub.scim(
        "PATCH",
        &format!("/Groups/{}", url_encode(&gid)),
        Some(&json!({"schemas": [PATCH_OP], "Operations": [{"op": "remove", "path": format!("members[value eq \"{u1}\"]")}]})),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        values(&entry(&dir, &gdn), "member"),
        vec![format!("cn=wbu2{t},{a}").to_ascii_lowercase()]
    );
    let members: Vec<&str> = v["members"]
        .as_array()
        .map(|m| m.iter().filter_map(|x| x["value"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(members, vec![u2.as_str()], "{v}");
    // The change feed exports the written group as usual.
    assert!(
        wait_until(60, || scim
            .all("Groups")
            .iter()
            .any(|x| x["displayName"] == name.as_str()
                && x["members"].as_array().is_some_and(|m| m.len() == 1))),
        "{}",
        ag.log()
    );

    // A member that is not in scope is 400.
    let (s, v) = hub.scim(
        "PATCH",
        &format!("/Groups/{}", url_encode(&gid)),
        Some(&json!({"schemas": [PATCH_OP], "Operations": [{"op": "add", "path": "members", "value": [{"value": "AAAAAAAAAAAAAAAAAAAAAA=="}]}]})),
    );
    assert_eq!(s, 400, "{v}");

    // The denied OU: PATCH, PUT and DELETE are 403 and the entry stays as it was.
    let did = id_of(&hub, "Groups", &format!("displayName eq \"wbden{t}\""));
    let before = entry(&dir, &denied_group);
    assert!(!before.is_empty());
    let path = format!("/Groups/{}", url_encode(&did));
    let (s, v) = hub.scim(
        "PATCH",
        &path,
        Some(&json!({"schemas": [PATCH_OP], "Operations": [{"op": "add", "path": "members", "value": [{"value": u2}]}]})),
    );
    assert_eq!(s, 403, "{v}");
    assert!(
        v["detail"].as_str().unwrap_or("").contains("allowed_ous"),
        "{v}"
    );
    assert_eq!(
        hub.scim("PUT", &path, Some(&json!({"displayName": "renamed"})))
            .0,
        403
    );
    assert_eq!(hub.scim("DELETE", &path, None).0, 403);
    assert_eq!(entry(&dir, &denied_group), before, "LDAP changed");
    // An attribute the policy does not list: 403, nothing created.
    let (s, v) = hub.scim(
        "POST",
        "/Groups",
        Some(&json!({"displayName": format!("wb-x-{t}"), "description": "no"})),
    );
    assert_eq!(s, 403, "{v}");
    assert!(entry(&dir, &format!("CN=wb-x-{t},{a}")).is_empty());
    // Users are not listed in writeback.resources.
    assert_eq!(
        hub.scim("DELETE", &format!("/Users/{}", url_encode(&u1)), None)
            .0,
        403
    );

    // DELETE inside the allowed OU.
    let (s, v) = hub.scim("DELETE", &format!("/Groups/{}", url_encode(&gid)), None);
    assert_eq!(s, 204, "{v}");
    assert!(entry(&dir, &gdn).is_empty(), "group still there");
    // Each write is in the provisioning log.
    let audit =
        std::fs::read_to_string(ag.tmp.path().join("state/provisioning.jsonl")).unwrap_or_default();
    for op in ["writeback-create", "writeback-update", "writeback-delete"] {
        assert!(audit.contains(op), "{op} missing: {audit}");
    }
    assert!(!ag.log().contains(AGENT_TOKEN));
}

#[test]
fn slapd_without_writeback_refuses_and_with_it_writes_group_of_names() {
    let mut dir = Dir::openldap();
    let ou = TestOu::create(&dir, "wb");
    let o = ou.dn.clone();
    dir.modify(&format!(
        "dn: uid=w1,{o}\nobjectClass: inetOrgPerson\nuid: w1\ncn: W1\nsn: S\n\ndn: uid=w2,{o}\nobjectClass: inetOrgPerson\nuid: w2\ncn: W2\nsn: S\n\ndn: cn=crew,{o}\nobjectClass: groupOfNames\ncn: crew\nmember: uid=w1,{o}\n"
    ));
    let scim = ScimServer::start();
    let hub = start_hub();

    // The default: no [writeback], every write is 403, LDAP untouched.
    let plain = Agent::with_relay(&dir, &[&o], &scim, &hub, ("a1", AGENT_TOKEN), "");
    let mut run = Running(plain.spawn(&["run"]));
    assert!(
        wait_until(60, || hub.active() && scim.all("Users").len() == 2),
        "{}",
        plain.log()
    );
    let crew = id_of(&hub, "Groups", "displayName eq \"crew\"");
    let before = entry(&dir, &format!("cn=crew,{o}"));
    let (s, v) = hub.scim("POST", "/Groups", Some(&json!({"displayName": "new"})));
    assert_eq!(s, 403, "{v}");
    assert!(
        v["detail"].as_str().unwrap_or("").contains("[writeback]"),
        "{v}"
    );
    let (s, _) = hub.scim(
        "PATCH",
        &format!("/Groups/{crew}"),
        Some(&json!({"schemas": [PATCH_OP], "Operations": [{"op": "remove", "path": "members"}]})),
    );
    assert_eq!(s, 403);
    assert_eq!(hub.scim("DELETE", &format!("/Groups/{crew}"), None).0, 403);
    assert_eq!(entry(&dir, &format!("cn=crew,{o}")), before);
    assert!(entry(&dir, &format!("cn=new,{o}")).is_empty());
    let _ = run.0.kill();
    let _ = run.0.wait();

    // With [writeback] but the read-only syncer account: the directory refuses, the agent
    // answers 403 naming the missing right, nothing is created.
    let wb = format!(
        "\n[writeback]\nresources = [\"groups\"]\nallowed_ous = [\"{o}\"]\ngroup_attributes = [\"displayName\", \"members\", \"description\"]\n"
    );
    let reader = Agent::with_relay(&dir, &[&o], &scim, &hub, ("a1", AGENT_TOKEN), &wb);
    run = Running(reader.spawn(&["run"]));
    let w1 = id_of_when_ready(&hub, "w1 for the reader", "userName eq \"w1\"");
    let (s, v) = hub.scim(
        "POST",
        "/Groups",
        Some(&json!({"displayName": "ro", "members": [{"value": w1}]})),
    );
    assert_eq!(s, 403, "{v}\n{}", reader.log());
    assert!(
        v["detail"].as_str().unwrap_or("").contains("write rights"),
        "{v}"
    );
    assert!(entry(&dir, &format!("cn=ro,{o}")).is_empty());
    let _ = run.0.kill();
    let _ = run.0.wait();

    // With [writeback] and an account that may write (the test's admin).
    dir.bind_dn = dir.admin_dn.clone();
    dir.bind_pw = dir.admin_pw.clone();
    let writer = Agent::with_relay(&dir, &[&o], &scim, &hub, ("a1", AGENT_TOKEN), &wb);
    run = Running(writer.spawn(&["run"]));
    let w1 = id_of_when_ready(&hub, "uid eq w1", "userName eq \"w1\"");
    let w2 = id_of(&hub, "Users", "userName eq \"w2\"");
    let (s, g) = hub.scim(
        "POST",
        "/Groups",
        Some(&json!({"displayName": "ops", "description": "from the cloud", "members": [{"value": w1}]})),
    );
    assert_eq!(s, 201, "{g}\n{}", writer.log());
    let dn = format!("cn=ops,{o}");
    let e = entry(&dir, &dn);
    assert_eq!(
        values(&e, "member"),
        vec![format!("uid=w1,{o}").to_ascii_lowercase()]
    );
    assert_eq!(values(&e, "description"), vec!["from the cloud"]);
    let gid = g["id"].as_str().unwrap().to_string();
    let (s, _) = hub.scim(
        "PATCH",
        &format!("/Groups/{gid}"),
        Some(&json!({"schemas": [PATCH_OP], "Operations": [
            {"op": "add", "path": "members", "value": [{"value": w2}]},
            {"op": "remove", "path": "members", "value": [{"value": w1}]}]})),
    );
    assert_eq!(s, 200);
    assert_eq!(
        values(&entry(&dir, &dn), "member"),
        vec![format!("uid=w2,{o}").to_ascii_lowercase()]
    );
    // groupOfNames cannot lose its last member: 400, unchanged.
    let (s, v) = hub.scim(
        "PATCH",
        &format!("/Groups/{gid}"),
        Some(&json!({"schemas": [PATCH_OP], "Operations": [{"op": "remove", "path": "members"}]})),
    );
    assert_eq!(s, 400, "{v}");
    // A PUT renames (cn is the RDN).
    let (s, v) = hub.scim(
        "PUT",
        &format!("/Groups/{gid}"),
        Some(&json!({"displayName": "ops2"})),
    );
    assert_eq!((s, v["displayName"].as_str()), (200, Some("ops2")), "{v}");
    assert!(entry(&dir, &dn).is_empty() && !entry(&dir, &format!("cn=ops2,{o}")).is_empty());
    assert_eq!(hub.scim("DELETE", &format!("/Groups/{gid}"), None).0, 204);
    assert!(entry(&dir, &format!("cn=ops2,{o}")).is_empty());
    drop(run);
}

/// The id of a user once the agent answers (it has just started).
fn id_of_when_ready(hub: &Hub, what: &str, filter: &str) -> String {
    let mut id = None;
    assert!(
        wait_until(60, || {
            if !hub.active() {
                return false;
            }
            let (s, v) = hub.scim(
                "GET",
                &format!("/Users?filter={}", url_encode(filter)),
                None,
            );
            id = (s == 200 && v["totalResults"] == 1)
                .then(|| v["Resources"][0]["id"].as_str().map(str::to_string))
                .flatten();
            id.is_some()
        }),
        "{what}: no answer"
    );
    id.unwrap()
}
