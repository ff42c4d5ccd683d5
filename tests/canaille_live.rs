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

/// The `value`s of a group's members as the endpoint shows them, sorted.
fn member_values(group: &Value) -> Vec<String> {
    let mut m: Vec<String> = group["members"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| m["value"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default();
    m.sort();
    m
}

/// Gives `agent` the one profile line this server needs: it requires `name.formatted`.
/// (What else it refuses, `primary`/`type` on e-mails, `members` missing at group
/// creation, the agent learns from its `/Schemas`.)
fn use_canaille_profile(agent: &common::Agent) {
    let profile = agent.tmp.path().join("profile.toml");
    std::fs::write(&profile, "[user.attributes]\n\"name.formatted\" = \"cn\"\n").unwrap();
    agent.edit_config(
        "max_attempts = 2",
        &format!("max_attempts = 2\nprofile_file = \"{}\"", profile.display()),
    );
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
    use_canaille_profile(&agent);
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

    let first = agent.run(&["sync", "--once"]);
    check("first pass", &first);
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
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
    // Canaille shows members by userName: check reads a group and says so, and what the
    // agent does about it; and which removal dialect is in force.
    let line = |name: &str| {
        checked
            .stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no `{name}` line: {}", checked.stdout))
            .to_string()
    };
    let members = line("scim members");
    assert!(
        members.contains(" OK ")
            && members.contains("holds userNames, not ids")
            && members.contains("removals go by userName, each verified"),
        "{members}"
    );
    let removal = line("scim removal");
    assert!(
        removal.contains(" OK ") && removal.contains("member_removal = auto"),
        "{removal}"
    );
}

/// OAuth2 client credentials against a real token endpoint whose tokens live 60 s: `check`
/// shows the grant, and `run` keeps working across several token lifetimes, changes
/// arriving all along, with no request refused for an expired token. The soak lasts
/// `IDRELAY_OAUTH_SOAK_SECS` (150 s by default: three tokens at least).
#[test]
fn oauth2_tokens_that_expire_every_minute_are_replaced_without_a_failed_request() {
    let Some(c) = canaille("oauth2_tokens_that_expire_every_minute_are_replaced") else {
        return;
    };
    let soak: u64 = std::env::var("IDRELAY_OAUTH_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let dir = common::Dir::openldap();
    let ou = common::TestOu::create(&dir, "oauth");
    let o = &ou.dn;
    dir.modify(&format!(
        "dn: uid=oa1,{o}\nobjectClass: inetOrgPerson\nuid: oa1\ncn: Olga Auth\ngivenName: G0\nsn: Auth\n\n\
         dn: uid=oa2,{o}\nobjectClass: inetOrgPerson\nuid: oa2\ncn: Otto Auth\ngivenName: Otto\nsn: Auth\n\n"
    ));
    let proxy = common::faultproxy::FaultProxy::http(c.port());
    let agent = common::Agent::new(&dir, &[o], &proxy.http_url(c.base_path()), "unused", "");
    let secret_file = agent.tmp.path().join("client.secret");
    common::write_secret(&secret_file, &common::env("CANAILLE_CLIENT_SECRET"));
    agent.edit_config(
        &format!(
            "token_file = \"{}\"",
            agent.tmp.path().join("scim.token").display()
        ),
        &format!(
            "token_url = \"{}\"\nclient_id = \"{}\"\nclient_secret_file = \"{}\"",
            proxy.http_url("/oauth/token"),
            common::env("CANAILLE_CLIENT_ID"),
            secret_file.display()
        ),
    );
    use_canaille_profile(&agent);

    let checked = agent.run(&["check"]);
    assert!(
        checked
            .stdout
            .contains("scim oauth OK    client_credentials grant at")
            && checked.stdout.contains("token issued, valid 60 s"),
        "{}",
        checked.stdout
    );

    let given = |uid: &str| {
        c.all("Users")
            .into_iter()
            .find(|u| u["userName"] == uid)
            .map(|u| u["name"]["givenName"].as_str().unwrap_or("").to_string())
    };
    let t0 = std::time::Instant::now();
    let run = common::Running(agent.spawn(&["run"]));
    assert!(
        common::wait_until(60, || given("oa1").as_deref() == Some("G0")
            && given("oa2").is_some()),
        "first pass did not arrive: {}",
        agent.log()
    );
    let mut changes = 0;
    while t0.elapsed().as_secs() < soak {
        changes += 1;
        let name = format!("G{changes}");
        dir.modify(&format!(
            "dn: uid=oa1,{o}\nchangetype: modify\nreplace: givenName\ngivenName: {name}\n"
        ));
        assert!(
            common::wait_until(20, || given("oa1").as_deref() == Some(name.as_str())),
            "change {changes} ({:.0} s in) did not arrive: {}",
            t0.elapsed().as_secs_f64(),
            agent.log()
        );
        std::thread::sleep(std::time::Duration::from_secs(10));
    }
    drop(run);

    let events = proxy.events();
    let status = |e: &common::faultproxy::Event| match e.action {
        common::faultproxy::Action::Forwarded(s) => s,
        _ => None,
    };
    let tokens = events
        .iter()
        .filter(|e| e.path.starts_with("/oauth/token"))
        .collect::<Vec<_>>();
    let failed: Vec<String> = events
        .iter()
        .filter(|e| !status(e).is_some_and(|s| (200..300).contains(&s)))
        .map(|e| format!("{} {} {:?}", e.method, e.path, e.action))
        .collect();
    eprintln!(
        "OAuth2 soak: {:.0} s, {changes} changes, {} requests, {} tokens fetched",
        t0.elapsed().as_secs_f64(),
        events.len(),
        tokens.len()
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    // One token per 48 s at least (replaced a fifth of its life early), plus check's own.
    let lifetimes = t0.elapsed().as_secs() / 48;
    assert!(
        tokens.len() as u64 > lifetimes,
        "{} tokens in {} s",
        tokens.len(),
        t0.elapsed().as_secs()
    );
    let log = agent.log();
    assert!(!log.contains("canaille-testbed-client-secret"), "{log}");
}

/// The target for a second, independently written SCIM server: the default
/// profile plus the one line Canaille needs (`name.formatted`) exports every user with
/// its e-mail and phone numbers and every group with its members; a second pass writes
/// nothing. What Canaille refuses (`primary`/`type` on e-mails and phones, a group created
/// without `members`) the agent learns from its `/Schemas`, and `check` says so.
#[test]
fn one_profile_line_exports_users_and_groups_with_their_members() {
    let Some(c) = canaille("one_profile_line_exports_users_and_groups_with_their_members") else {
        return;
    };
    let dir = common::Dir::openldap();
    let ou = common::TestOu::create(&dir, "cexp");
    let o = &ou.dn;
    let uids: Vec<String> = (1..=6).map(|i| format!("cexp{i}")).collect();
    let mut ldif = String::new();
    for (i, uid) in uids.iter().enumerate() {
        ldif.push_str(&format!(
            "dn: uid={uid},{o}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: User {i}\ngivenName: User\nsn: N{i}\n\
             mail: {uid}@branch.test\ntelephoneNumber: +1 555 010{i}\nmobile: +1 555 020{i}\ntitle: Clerk\n\n"
        ));
    }
    ldif.push_str(&format!(
        "dn: cn=cexp-all,{o}\nobjectClass: groupOfNames\ncn: cexp-all\n{}\n\n\
         dn: cn=cexp-two,{o}\nobjectClass: groupOfNames\ncn: cexp-two\nmember: uid=cexp1,{o}\nmember: uid=cexp2,{o}\n\n",
        uids.iter()
            .map(|u| format!("member: uid={u},{o}"))
            .collect::<Vec<_>>()
            .join("\n")
    ));
    dir.modify(&ldif);

    let proxy = common::faultproxy::FaultProxy::http(c.port());
    let agent = common::Agent::new(&dir, &[o], &proxy.http_url(c.base_path()), &c.token, "");
    use_canaille_profile(&agent);

    let checked = agent.run(&["check"]);
    for said in [
        "emails without type, primary",
        "phoneNumbers without type, primary",
        "groups created with an empty members (required)",
    ] {
        assert!(checked.stdout.contains(said), "{said}:\n{}", checked.stdout);
    }

    let first = agent.run(&["sync", "--once"]);
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    let users = c.all("Users");
    for (i, uid) in uids.iter().enumerate() {
        let found: Vec<&Value> = users
            .iter()
            .filter(|u| u["userName"] == uid.as_str())
            .collect();
        assert_eq!(found.len(), 1, "{uid} once: {users:?}");
        let u = found[0];
        assert_eq!(u["emails"][0]["value"], format!("{uid}@branch.test"), "{u}");
        let phones: Vec<&str> = u["phoneNumbers"]
            .as_array()
            .map(|a| a.iter().filter_map(|p| p["value"].as_str()).collect())
            .unwrap_or_default();
        assert!(
            phones.contains(&format!("+1 555 010{i}").as_str())
                && phones.contains(&format!("+1 555 020{i}").as_str()),
            "{uid}: {phones:?}"
        );
        assert_eq!(u["title"], "Clerk", "{u}");
    }
    let groups = c.all("Groups");
    let members_of = |name: &str| -> Vec<String> {
        let g = groups
            .iter()
            .find(|g| g["displayName"] == name)
            .unwrap_or_else(|| panic!("group {name} at the endpoint: {groups:?}"));
        // Canaille shows a member's value as its userName.
        member_values(g)
    };
    assert_eq!(members_of("cexp-all"), uids);
    assert_eq!(members_of("cexp-two"), ["cexp1", "cexp2"]);
    assert_eq!(
        members_of(SEED_GROUP),
        ["staff.owner"],
        "the endpoint's own group is untouched"
    );

    let before = proxy.events().len();
    let second = agent.run(&["sync", "--once"]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    let writes: Vec<String> = proxy.events()[before..]
        .iter()
        .filter(|e| e.method != "GET")
        .map(|e| format!("{} {}", e.method, e.path))
        .collect();
    assert!(writes.is_empty(), "second pass wrote: {writes:?}");
}

/// Canaille shows (and matches) a member by its userName, not by the id idrelay added it
/// with: a removal by id is answered 200 and removes nothing. The agent must notice (a
/// removal is verified, never assumed from a 200) and remove the member for real.
#[test]
fn a_member_removed_in_the_directory_is_removed_at_the_endpoint() {
    let Some(c) = canaille("a_member_removed_in_the_directory_is_removed_at_the_endpoint") else {
        return;
    };
    let dir = common::Dir::openldap();
    let ou = common::TestOu::create(&dir, "crm");
    let o = &ou.dn;
    let mut ldif = String::new();
    for uid in ["crm1", "crm2", "crm3"] {
        ldif.push_str(&format!(
            "dn: uid={uid},{o}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\nmail: {uid}@branch.test\n\n"
        ));
    }
    ldif.push_str(&format!(
        "dn: cn=crm-team,{o}\nobjectClass: groupOfNames\ncn: crm-team\nmember: uid=crm1,{o}\nmember: uid=crm2,{o}\nmember: uid=crm3,{o}\n"
    ));
    dir.modify(&ldif);
    let agent = common::Agent::new(&dir, &[o], &c.url, &c.token, "");
    use_canaille_profile(&agent);
    let first = agent.run(&["sync", "--once"]);
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    let members = || -> Vec<String> {
        let g = c
            .all("Groups")
            .into_iter()
            .find(|g| g["displayName"] == "crm-team")
            .expect("crm-team at the endpoint");
        member_values(&g)
    };
    assert_eq!(members(), ["crm1", "crm2", "crm3"]);
    dir.modify(&format!(
        "dn: cn=crm-team,{o}\nchangetype: modify\ndelete: member\nmember: uid=crm2,{o}\n"
    ));
    let second = agent.run(&["sync", "--once"]);
    assert_eq!(
        members(),
        ["crm1", "crm3"],
        "{}\n{}",
        second.stdout,
        second.stderr
    );
    assert_eq!(second.code, 0, "{}\n{}", second.stdout, second.stderr);
    // Canaille keeps no externalId and ignores filters: preview must still find what
    // idrelay created (by its id), not say "a sync would create it".
    let preview = agent.run(&["preview", &format!("uid=crm1,{o}")]);
    assert!(
        preview
            .stdout
            .contains("endpoint holds (the user idrelay created, id "),
        "{}",
        preview.stdout
    );
    assert!(
        !preview.stdout.contains("a sync would create it"),
        "{}",
        preview.stdout
    );
    assert_eq!(
        second
            .stderr
            .matches("shows group members by userName")
            .count(),
        1,
        "said once: {}",
        second.stderr
    );
    // The same in `run`: a removal followed from the feed arrives too.
    let running = common::Running(agent.spawn(&["run"]));
    dir.modify(&format!(
        "dn: cn=crm-team,{o}\nchangetype: modify\ndelete: member\nmember: uid=crm3,{o}\n"
    ));
    assert!(
        common::wait_until(30, || members() == ["crm1"]),
        "{:?}: {}",
        members(),
        agent.log()
    );
    drop(running);
}

/// `[relay]` with OAuth2 client credentials, checked by the hub through token
/// introspection (RFC 7662) at the same provider: `check` shows the relay grant; the hub
/// takes the agent's Canaille-issued tokens (60 s each) across more than one lifetime, every
/// heartbeat answered, the cloud's SCIM reads answered through the relay; a 401 from the
/// hub makes the agent fetch a new token at once and go on; a token the
/// provider does not vouch for (the seed token, not issued for the hub) is refused 401,
/// and the hub's log and the agent's never show a token or a secret. The run lasts
/// `IDRELAY_RELAY_OAUTH_SECS` (75 s by default: two tokens at least).
#[test]
fn the_hub_takes_an_agent_by_canaille_tokens_checked_by_introspection() {
    let Some(c) = canaille("the_hub_takes_an_agent_by_canaille_tokens") else {
        return;
    };
    let secs: u64 = std::env::var("IDRELAY_RELAY_OAUTH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(75);
    let tmp = common::TempDir::new("relay-oauth");
    let hub_secret_file = tmp.path().join("hub-client.secret");
    common::write_secret(&hub_secret_file, &common::env("CANAILLE_HUB_CLIENT_SECRET"));
    let settings = format!(
        "{}[introspection]\nurl = \"{}\"\nclient_id = \"{}\"\nclient_secret_file = \"{}\"\ncache_secs = 5\n\n\
         [[agent]]\nid = \"oa\"\ngroup = \"branch\"\noauth_client_id = \"{}\"\n",
        common::HUB_SETTINGS,
        common::env("CANAILLE_INTROSPECT_URL"),
        common::env("CANAILLE_HUB_CLIENT_ID"),
        hub_secret_file.display(),
        common::env("CANAILLE_CLIENT_ID"),
    );
    let hub = common::Hub::start("operator-token-for-tests", &settings, &[]);

    let dir = common::Dir::openldap();
    let ou = common::TestOu::create(&dir, "relayoauth");
    let o = &ou.dn;
    dir.modify(&format!(
        "dn: uid=ro1,{o}\nobjectClass: inetOrgPerson\nuid: ro1\ncn: Rosa Oauth\nsn: Oauth\n\n"
    ));
    let scim = common::ScimServer::start();
    let agent = common::Agent::new(&dir, &[o], &scim.base_url(), &scim.token, "");
    agent.edit_config("id = \"test-agent\"", "id = \"oa\"");
    // The token endpoint behind a recording proxy: how many tokens were fetched; the hub
    // behind another, to answer one request 401 as a hub that no longer takes the token.
    let proxy = common::faultproxy::FaultProxy::http(c.port());
    let hub_proxy = common::faultproxy::FaultProxy::http(hub.port);
    let secret_file = agent.tmp.path().join("relay-client.secret");
    common::write_secret(&secret_file, &common::env("CANAILLE_CLIENT_SECRET"));
    agent.append_config(&format!(
        "\n[relay]\nurl = \"{}\"\ntoken_url = \"{}\"\nclient_id = \"{}\"\nclient_secret_file = \"{}\"\n\
         group = \"branch\"\nheartbeat_secs = 5\npoll_wait_secs = 5\n",
        hub_proxy.http_url(""),
        proxy.http_url("/oauth/token"),
        common::env("CANAILLE_CLIENT_ID"),
        secret_file.display()
    ));

    let checked = agent.run(&["check"]);
    assert!(
        checked
            .stdout
            .lines()
            .any(|l| l.starts_with("relay oauth OK")
                && l.contains("client_credentials grant at")
                && l.contains("valid 60 s")),
        "{}",
        checked.stdout
    );

    let t0 = std::time::Instant::now();
    let run = common::Running(agent.spawn(&["run"]));
    assert!(
        common::wait_until(60, || hub.role("oa").as_deref() == Some("active")),
        "agent never active: {}\n--- hub\n{}",
        agent.log(),
        hub.log()
    );
    let mut reads = 0;
    while t0.elapsed().as_secs() < secs {
        let (status, users) = hub.op(
            "GET",
            "/agents/oa/scim/v2/Users?filter=userName%20eq%20%22ro1%22",
            None,
        );
        assert_eq!(status, 200, "{users}\n--- hub\n{}", hub.log());
        assert_eq!(users["totalResults"], 1, "{users}");
        reads += 1;
        std::thread::sleep(std::time::Duration::from_secs(5));
    }
    assert_eq!(hub.role("oa").as_deref(), Some("active"));
    // A 401 from the hub: the agent fetches a new token at once and goes on.
    let fetched = |p: &common::faultproxy::FaultProxy| {
        p.events()
            .iter()
            .filter(|e| e.path.starts_with("/oauth/token"))
            .count()
    };
    let before = fetched(&proxy);
    hub_proxy.answer_next_of("POST", 1, 401, None);
    assert!(
        common::wait_until(20, || fetched(&proxy) > before),
        "no new token after a 401: {}",
        agent.log()
    );
    assert!(
        agent
            .log()
            .contains("relay: the hub answered 401; fetching a new OAuth2 token"),
        "{}",
        agent.log()
    );
    std::thread::sleep(std::time::Duration::from_secs(6));
    assert_eq!(hub.role("oa").as_deref(), Some("active"));
    assert!(!agent.log().contains("refused agent `"), "{}", agent.log());
    let hub_log = hub.log();
    assert!(
        !hub_log.contains("missing or wrong token") && !hub_log.contains("cannot check"),
        "the agent's token was refused at some point:\n{hub_log}"
    );

    // A token the provider issued, but not for the hub: refused, never accepted.
    let seed_token = common::env("CANAILLE_TOKEN");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", hub.port)).unwrap();
    use std::io::{Read, Write};
    let body = "{}";
    write!(
        s,
        "POST /v1/agents/oa/heartbeat HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {seed_token}\r\n\
         Idrelay-Protocol: 1\r\nIdrelay-Instance: intruder\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    drop(run);

    let tokens = proxy
        .events()
        .iter()
        .filter(|e| e.path.starts_with("/oauth/token"))
        .count();
    eprintln!(
        "relay OAuth2: {:.0} s, {reads} reads through the hub, {tokens} tokens fetched",
        t0.elapsed().as_secs_f64()
    );
    // check's token, then one per 48 s at least (replaced a fifth of its life early).
    assert!(
        tokens >= 2 + (secs / 60) as usize,
        "{tokens} tokens in {secs} s"
    );
    let (hub_log, agent_log) = (hub.log(), agent.log());
    for secret in [
        common::env("CANAILLE_CLIENT_SECRET"),
        common::env("CANAILLE_HUB_CLIENT_SECRET"),
        seed_token,
    ] {
        assert!(!hub_log.contains(&secret) && !agent_log.contains(&secret));
    }
}
