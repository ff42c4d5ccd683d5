//! The cloud stays inside local policy, end to end with real binaries on loopback:
//! `idrelay run` with `[relay]` next to slapd and scim2-server, and `idrelay-hub`.
//!
//! Regressions of two holes: a `set-profile` pushed through the hub chose what the agent
//! read and exported (`nickName = "userPassword"` put every password hash on the wire, and
//! a pushed filter turned every object into a user), and replaced the local profile; and a
//! pushed remap redirected writeback (`title = "userPassword"`, then a PATCH of `title`
//! reset the LDAP password). The agent binds as the directory's admin here on purpose:
//! slapd's ACL keeps userPassword from the ordinary sync account, so only the agent's own
//! policy may keep it in.

mod common;

use common::{url_encode, wait_until, Agent, Dir, Hub, Running, ScimServer, TestOu, HUB_SETTINGS};
use serde_json::{json, Value};

const OPERATOR: &str = "operator-token-for-policy-tests";
const AGENT_TOKEN: &str = "agent-token-policy";

/// A hub for agent a1 that re-delivers an unanswered request after 60 s (its default), not
/// 5 s: an agent that reloaded before its `set-profile` answer went out (as idrelay did
/// before the answer was made to go first) would otherwise reload every 5 s, and a test
/// about what a pushed profile does would only see an agent that is away.
fn start_hub() -> Hub {
    let settings = HUB_SETTINGS.replace("redeliver_secs = 5", "redeliver_secs = 60");
    Hub::start(OPERATOR, &settings, &[("a1", "branch", AGENT_TOKEN)])
}

impl Hub {
    /// A SCIM read of agent a1 through the hub.
    fn get(&self, path_and_query: &str) -> (u16, Value) {
        self.op("GET", &format!("/agents/a1/scim/v2{path_and_query}"), None)
    }

    /// Sends a command to a1 and waits up to 60 s for its answer; (status, body).
    fn command(&self, body: &Value) -> (u16, Value) {
        self.command_within(body, 60)
    }

    /// Sends a command to a1 and waits up to `secs` for its answer; (status, body).
    /// No answer in time is status 0: the caller's assertions say what was expected.
    fn command_within(&self, body: &Value, secs: u64) -> (u16, Value) {
        self.command_answer("a1", &body.to_string(), secs)
            .unwrap_or((0, json!({"detail": "no answer"})))
    }

    /// Pushes `profile` with `set-profile`; (status, body), status 0 when no answer came
    /// within 20 s.
    fn push(&self, profile: &str) -> (u16, Value) {
        self.command_within(&json!({"command": "set-profile", "profile": profile}), 20)
    }

    /// A SCIM read that the agent answered (retried while the hub says 5xx: an agent that
    /// reloads is briefly away); the last answer if none came.
    fn get_answered(&self, path_and_query: &str) -> Value {
        let mut last = Value::Null;
        wait_until(90, || {
            let (s, v) = self.get(path_and_query);
            last = v;
            s < 500
        });
        last
    }

    fn active(&self) -> bool {
        self.role("a1").as_deref() == Some("active")
    }

    /// The user `uid` as the cloud reads it through the relay, once the agent answers.
    fn user(&self, uid: &str) -> Option<Value> {
        let f = url_encode(&format!("userName eq \"{uid}\""));
        let (s, v) = self.get(&format!("/Users?filter={f}"));
        (s == 200 && v["totalResults"] == 1).then(|| v["Resources"][0].clone())
    }
}

/// A short unique tag for values in the shared directory.
fn tag() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{:x}", (n ^ std::process::id()) & 0xff_ffff)
}

/// The detail of a SCIM error body.
fn detail(v: &Value) -> String {
    v["detail"].as_str().unwrap_or("").to_string()
}

/// Panics if `text` holds any of `secrets` (as is or base64).
fn assert_no_secret(what: &str, text: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(
            !text.contains(s) && !text.contains(&common::base64(s.as_bytes())),
            "{what} holds the password `{s}`: {text}"
        );
    }
}

/// Starts `agent` and waits until the hub counts it active and it answers reads.
fn start(agent: &Agent, hub: &Hub, first_user: &str) -> Running {
    let run = Running(agent.spawn(&["run"]));
    assert!(
        wait_until(90, || hub.active() && hub.user(first_user).is_some()),
        "agent: {}\nhub: {}",
        agent.log(),
        hub.log()
    );
    run
}

/// Stops a running agent (by its PID) and waits until the hub no longer routes to it.
fn stop(run: Running) {
    drop(run);
    std::thread::sleep(std::time::Duration::from_millis(300));
}

/// How many full passes the agent has logged as done.
fn passes(agent: &Agent) -> usize {
    agent.log().matches("objects in step").count()
}

#[test]
fn set_profile_mapping_user_password_is_refused_and_passwords_never_leave_the_directory() {
    let mut dir = Dir::openldap();
    dir.bind_dn = dir.admin_dn.clone();
    dir.bind_pw = dir.admin_pw.clone();
    let ou = TestOu::create(&dir, "pol-pw");
    let o = ou.dn.clone();
    let t = tag();
    let clear = format!("clear-pw-{t}");
    let hashed = format!("{{SSHA}}fakehash{t}");
    dir.modify(&format!(
        "dn: uid=pa,{o}\nobjectClass: inetOrgPerson\nuid: pa\ncn: PA\nsn: S\nuserPassword: {clear}\n\n\
         dn: uid=pb,{o}\nobjectClass: inetOrgPerson\nuid: pb\ncn: PB\nsn: S\nuserPassword: {hashed}\n"
    ));
    let secrets = [clear.as_str(), hashed.as_str()];
    let scim = ScimServer::start();
    let hub = start_hub();
    let agent = Agent::with_relay(&dir, &[&o], &scim, &hub, ("a1", AGENT_TOKEN), "");
    let run = start(&agent, &hub, "pa");

    // The default (no relay.accept_profiles): the cloud may not push a profile at all.
    let evil = "[user.attributes]\nnickName = \"userPassword\"\n";
    let (status, body) = hub.push(evil);
    if status == 0 || (200..300).contains(&status) {
        // The hole: the agent reloads with the pushed mapping in force.
        wait_until(60, || {
            hub.user("pa").is_some_and(|u| u.get("nickName").is_some())
        });
    }
    let list = hub.get_answered("/Users");
    assert_no_secret("GET /Users through the relay", &list.to_string(), &secrets);
    let before = passes(&agent);
    let (s, v) = hub.command(&json!({"command": "resync"}));
    assert_eq!(s, 202, "{v}");
    assert!(
        wait_until(60, || passes(&agent) > before),
        "{}",
        agent.log()
    );
    assert_no_secret(
        "the SCIM endpoint after a resync",
        &Value::Array(scim.all("Users")).to_string(),
        &secrets,
    );
    assert_eq!(
        status, 403,
        "set-profile must be refused by default: {body}"
    );
    assert!(
        detail(&body).contains("relay.accept_profiles"),
        "the refusal names the local setting: {body}"
    );
    assert!(
        !agent.tmp.path().join("state/cloud-profile.toml").exists(),
        "a refused profile is not stored"
    );
    // The pushed text is logged when it arrives (escaped, on one line).
    assert!(
        agent
            .log()
            .contains(r#"[user.attributes]\nnickName = \"userPassword\"\n"#),
        "{}",
        agent.log()
    );
    stop(run);

    // With relay.accept_profiles on, a password-like attribute is still refused: by name
    // (any case) and by its OID; an attribute the local profile reads is accepted.
    agent.append_config("accept_profiles = true\n");
    let run = start(&agent, &hub, "pa");
    for profile in [
        evil.to_string(),
        "[user.attributes]\nnickName = \"USERPASSWORD\"\n".to_string(),
        "[user.attributes]\nnickName = \"2.5.4.35\"\n".to_string(),
        "[user.attributes]\ntitle = [\"cn\", \"userPassword\"]\n".to_string(),
        "[group.attributes]\ndescription = \"userPassword\"\n".to_string(),
        "[user.attributes]\nnickName = \"sambaNTPassword\"\n".to_string(),
    ] {
        let (s, v) = hub.push(&profile);
        assert_eq!(s, 403, "{profile}: {v}");
        assert!(
            detail(&v).contains("password-like"),
            "{profile}: the refusal says why: {v}"
        );
    }
    // Not on the allow-list (the attributes the local profile reads).
    let (s, v) = hub.push("[user.attributes]\nnickName = \"homeDirectory\"\n");
    assert_eq!(s, 403, "{v}");
    assert!(
        detail(&v).contains("relay.profile_attributes"),
        "names the local setting: {v}"
    );
    let list = hub.get_answered("/Users");
    assert_no_secret("GET /Users through the relay", &list.to_string(), &secrets);
    assert!(!agent.tmp.path().join("state/cloud-profile.toml").exists());

    let (s, v) = hub.push("[user.attributes]\nnickName = \"cn\"\n");
    assert_eq!(s, 200, "{v}\n{}", agent.log());
    assert!(
        wait_until(60, || hub.user("pa").is_some_and(|u| u["nickName"] == "PA")),
        "{}",
        agent.log()
    );
    let list = hub.get_answered("/Users");
    assert_no_secret("GET /Users through the relay", &list.to_string(), &secrets);
    let st = agent.run(&["status"]);
    assert!(
        st.stdout.contains("cloud profile in force since"),
        "{}",
        st.stdout
    );
    assert_no_secret("the agent's log", &agent.log(), &secrets);
    stop(run);
}

#[test]
fn set_profile_cannot_choose_filters_object_classes_anchor_or_replace_the_local_profile() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "pol-scope");
    let o = ou.dn.clone();
    let t = tag();
    dir.modify(&format!(
        "dn: uid=sa,{o}\nobjectClass: inetOrgPerson\nuid: sa\ncn: SA\nsn: S\ndescription: d-{t}\n\n\
         dn: uid=sb,{o}\nobjectClass: inetOrgPerson\nuid: sb\ncn: SB\nsn: S\n\n\
         dn: cn=crew,{o}\nobjectClass: groupOfNames\ncn: crew\nmember: uid=sa,{o}\n\n\
         dn: ou=sub,{o}\nobjectClass: organizationalUnit\nou: sub\n"
    ));
    let scim = ScimServer::start();
    let hub = start_hub();
    let agent = Agent::with_relay(&dir, &[&o], &scim, &hub, ("a1", AGENT_TOKEN), "");
    // A local profile: title comes from description.
    let local = agent.tmp.path().join("profile.toml");
    std::fs::write(&local, "[user.attributes]\ntitle = \"description\"\n").unwrap();
    agent.edit_config(
        "max_attempts = 2",
        &format!("max_attempts = 2\nprofile_file = \"{}\"", local.display()),
    );
    let run = start(&agent, &hub, "sa");
    assert_eq!(hub.user("sa").unwrap()["title"], format!("d-{t}"));

    // The default: a push that would turn every object in scope into a user is refused,
    // and the local profile stays in force.
    let everything = "[user]\nfilter = \"(objectClass=*)\"\nobject_classes = [\"inetOrgPerson\", \"groupOfNames\", \"organizationalUnit\"]\n[user.attributes]\nuserName = [\"uid\", \"cn\", \"ou\"]\n";
    let (status, body) = hub.push(everything);
    if status == 0 || (200..300).contains(&status) {
        // The hole: after the reload the group and the OU are users too.
        wait_until(60, || {
            hub.get("/Users").1["totalResults"].as_u64() > Some(2)
        });
    }
    let list = hub.get_answered("/Users");
    assert_eq!(list["totalResults"], 2, "only the two users: {list}");
    assert_eq!(
        hub.user("sa").unwrap()["title"],
        format!("d-{t}"),
        "the local profile stays in force"
    );
    assert_eq!(status, 403, "{body}");
    assert!(detail(&body).contains("relay.accept_profiles"), "{body}");
    stop(run);

    agent.append_config("accept_profiles = true\n");
    let run = start(&agent, &hub, "sa");
    // What selects and anchors objects, the account state and references are local only.
    for (profile, key) in [
        ("[user]\nfilter = \"(objectClass=*)\"\n", "user.filter"),
        ("[group]\nfilter = \"(objectClass=*)\"\n", "group.filter"),
        (
            "[user]\nobject_classes = [\"top\"]\n",
            "user.object_classes",
        ),
        (
            "[group]\nobject_classes = [\"inetOrgPerson\"]\n",
            "group.object_classes",
        ),
        (
            "[user]\nexclude_object_classes = [\"person\"]\n",
            "user.exclude_object_classes",
        ),
        (
            "[user.anchor]\nattributes = [\"uid\"]\nencoding = \"text\"\n",
            "user.anchor",
        ),
        (
            "[user.attributes]\nactive = false\n",
            "user.attributes.\"active\"",
        ),
        (
            "[group.attributes]\nmembers = \"uniqueMember\"\n",
            "group.attributes.\"members\"",
        ),
        (
            "[group.attributes]\ndisplayName = \"member\"\n",
            "group.attributes.\"displayName\"",
        ),
    ] {
        let (s, v) = hub.push(profile);
        assert_eq!(s, 403, "{profile}: {v}");
        assert!(detail(&v).contains(key), "{profile}: names {key}: {v}");
    }
    // Nothing changed: the same two users, the OU is not one.
    let list = hub.get_answered("/Users");
    assert_eq!(list["totalResults"], 2, "{list}");
    assert!(!agent.tmp.path().join("state/cloud-profile.toml").exists());

    // An accepted mapping is applied on top of the local profile, never instead of it.
    let (s, v) = hub.push("[user.attributes]\nnickName = \"cn\"\n");
    assert_eq!(s, 200, "{v}");
    assert!(
        wait_until(60, || hub.user("sa").is_some_and(|u| u["nickName"] == "SA")),
        "{}",
        agent.log()
    );
    let sa = hub.user("sa").unwrap();
    assert_eq!(
        sa["title"],
        format!("d-{t}"),
        "the local mapping stays: {sa}"
    );
    assert_eq!(hub.get_answered("/Users")["totalResults"], 2);
    let st = agent.run(&["status"]);
    assert!(
        st.stdout.contains("cloud profile in force since"),
        "{}",
        st.stdout
    );
    let ck = agent.run(&["check"]);
    assert!(
        ck.stdout.contains("cloud profile in force since"),
        "{}\n{}",
        ck.stdout,
        ck.stderr
    );
    stop(run);

    // Without relay.accept_profiles the stored cloud profile is not used after a restart.
    agent.edit_config("accept_profiles = true", "accept_profiles = false");
    let run = start(&agent, &hub, "sa");
    assert!(
        hub.user("sa").unwrap().get("nickName").is_none(),
        "{}",
        agent.log()
    );
    assert!(
        !agent.tmp.path().join("state/cloud-profile.toml").exists(),
        "removed, so it cannot come back: {}",
        agent.log()
    );
    let st = agent.run(&["status"]);
    assert!(
        !st.stdout.contains("cloud profile in force"),
        "{}",
        st.stdout
    );
    stop(run);

    // A local profile may not read a password-like attribute either: refused at load.
    std::fs::write(&local, "[user.attributes]\nnickName = \"userPassword\"\n").unwrap();
    let st = agent.run(&["status"]);
    assert_ne!(st.code, 0, "{}", st.stdout);
    assert!(
        st.stderr.contains("sync.profile_file")
            && st.stderr.contains("user.attributes.\"nickName\"")
            && st.stderr.contains("password-like"),
        "{}",
        st.stderr
    );
}

const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

/// Whether a simple bind as `dn` with `password` succeeds (ldapwhoami).
fn binds(dir: &Dir, dn: &str, password: &str) -> bool {
    common::ldap_tool(&dir.url, dn, password, "ldapwhoami", &[], "").0 == 0
}

/// PATCHes the user `id`'s `title` through the relay (again while the hub says 5xx: the
/// PATCH is idempotent); (status, body).
fn patch_title(hub: &Hub, id: &str, value: &str) -> (u16, Value) {
    let body = json!({"schemas": [PATCH_OP], "Operations": [{"op": "replace", "path": "title", "value": value}]});
    let mut answer = (0, Value::Null);
    wait_until(90, || {
        answer = hub.op(
            "PATCH",
            &format!("/agents/a1/scim/v2/Users/{}", url_encode(id)),
            Some(&body.to_string()),
        );
        answer.0 < 500
    });
    answer
}

#[test]
fn set_profile_remap_cannot_redirect_writeback_to_user_password() {
    let mut dir = Dir::openldap();
    // Writeback needs an account that may write; the admin may write userPassword too, so
    // only the agent's own rules keep the cloud from it.
    dir.bind_dn = dir.admin_dn.clone();
    dir.bind_pw = dir.admin_pw.clone();
    let ou = TestOu::create(&dir, "pol-wb");
    let o = ou.dn.clone();
    let t = tag();
    let old_pw = format!("old-pw-{t}");
    let dn = format!("uid=wa,{o}");
    dir.modify(&format!(
        "dn: {dn}\nobjectClass: inetOrgPerson\nuid: wa\ncn: WA\nsn: S\ntitle: t-wa\ndescription: desc-{t}\nuserPassword: {old_pw}\n"
    ));
    assert!(binds(&dir, &dn, &old_pw), "the test user binds");
    let scim = ScimServer::start();
    let hub = start_hub();
    let agent = Agent::with_relay(
        &dir,
        &[&o],
        &scim,
        &hub,
        ("a1", AGENT_TOKEN),
        &format!(
            "\n[writeback]\nresources = [\"users\"]\nallowed_ous = [\"{o}\"]\nuser_attributes = [\"title\"]\n"
        ),
    );
    let run = start(&agent, &hub, "wa");
    let id = hub.user("wa").unwrap()["id"].as_str().unwrap().to_string();

    // The default: the remap is refused; a PATCH of title writes title.
    let (status, body) = hub.push("[user.attributes]\ntitle = \"userPassword\"\n");
    if status == 0 || (200..300).contains(&status) {
        // The hole: after the reload title reads (and writes) userPassword.
        wait_until(60, || {
            hub.user("wa")
                .is_some_and(|u| u["title"] == old_pw.as_str())
        });
    }
    let new_pw = format!("new-pw-{t}");
    let (s, v) = patch_title(&hub, &id, &new_pw);
    assert!(
        binds(&dir, &dn, &old_pw) && !binds(&dir, &dn, &new_pw),
        "the cloud changed the LDAP password through PATCH title ({s} {v})\n{}",
        agent.log()
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        dir.attr_ldif(&dn, "title").as_deref(),
        Some(new_pw.as_str())
    );
    assert_eq!(status, 403, "{body}");
    stop(run);

    // Profiles accepted, description on the allow-list: the cloud remaps title to
    // description for reading, but writeback resolves title from the local profile only.
    agent.edit_config(
        "poll_wait_secs = 5\n",
        "poll_wait_secs = 5\naccept_profiles = true\nprofile_attributes = [\"description\"]\n",
    );
    let run = start(&agent, &hub, "wa");
    let (s, v) = hub.push("[user.attributes]\ntitle = \"userPassword\"\n");
    assert_eq!(s, 403, "{v}");
    assert!(detail(&v).contains("password-like"), "{v}");
    let (s, v) = hub.push("[user.attributes]\ntitle = \"description\"\n");
    assert_eq!(s, 200, "{v}\n{}", agent.log());
    assert!(
        wait_until(60, || hub
            .user("wa")
            .is_some_and(|u| u["title"] == format!("desc-{t}"))),
        "{}",
        agent.log()
    );
    let patched = format!("patched-{t}");
    let (s, v) = patch_title(&hub, &id, &patched);
    assert_eq!(s, 200, "{v}\n{}", agent.log());
    assert_eq!(
        dir.attr_ldif(&dn, "description").as_deref(),
        Some(format!("desc-{t}").as_str()),
        "the cloud's remap must not redirect the write\n{}",
        agent.log()
    );
    assert_eq!(
        dir.attr_ldif(&dn, "title").as_deref(),
        Some(patched.as_str())
    );
    assert!(binds(&dir, &dn, &old_pw), "the password is unchanged");

    // The log and the provisioning log name the LDAP attribute written.
    let log = agent.log();
    assert!(
        log.to_ascii_lowercase()
            .contains(&format!("modify {}: title", dn.to_ascii_lowercase())),
        "{log}"
    );
    let audit = std::fs::read_to_string(agent.tmp.path().join("state/provisioning.jsonl"))
        .unwrap_or_default();
    let updates: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains("writeback-update"))
        .collect();
    assert!(
        !updates.is_empty()
            && updates
                .iter()
                .all(|l| l.contains(r#""attributes":["title"]"#)),
        "{audit}"
    );
    assert_no_secret("the agent's log", &log, &[&old_pw]);
    stop(run);
}
