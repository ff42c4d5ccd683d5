//! A full pass reads the users once: the scope scan reads them whole and the users' phase
//! maps them from its spool (`sync/spool.rs`). What that one read must never change: a
//! read cut short decides nothing and sends nothing, and a manager met after its report
//! in the directory's order is resolved all the same. The real binary, Debian's slapd
//! (through a TCP fault proxy for the cut), the PyPI scim2-server.

mod common;

use common::faultproxy::FaultProxy;
use common::{Agent, ScimServer, TestOu};
use serde_json::Value;

const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

fn person(o: &str, uid: &str, manager: Option<&str>) -> String {
    let m = manager.map_or(String::new(), |m| format!("manager: uid={m},{o}\n"));
    format!(
        "dn: uid={uid},{o}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid} Person\nsn: Person\n\
         mail: {uid}@branch.test\ntitle: Engineer of the branch office number {uid}\n{m}\n"
    )
}

fn ldap_port(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .expect("a port in the LDAP URL")
}

/// The LDAP link cut while the pass reads the users (the one read now: the scope scan's)
/// ends the pass before anything is sent: a user deleted in the directory is not
/// deactivated, a changed one is not sent. The next pass, uncut, does both.
#[test]
fn a_directory_read_cut_mid_pass_sends_nothing_and_decides_no_delete() {
    let dir = common::Dir::openldap();
    let ou = TestOu::create(&dir, "onecut");
    let o = &ou.dn;
    let n = 600;
    let ldif: String = (0..n)
        .map(|i| person(o, &format!("u{i:04}"), None))
        .collect();
    dir.modify(&ldif);
    let proxy = FaultProxy::tcp(ldap_port(&dir.url));
    let mut via = dir.clone();
    via.url = format!("ldap://127.0.0.1:{}", proxy.port);
    let scim = ScimServer::start();
    let agent = Agent::new(&via, &[o], &scim.base_url(), &scim.token, "");
    agent.edit_config("base_dn = ", "page_size = 20\nbase_dn = ");
    agent.run(&["sync", "--once", "--quiet"]).assert_code(0);
    assert_eq!(scim.all("Users").len(), n);

    let gone = "uid=u0599";
    let gone_id = ou.entry_uuid(gone);
    dir.modify(&format!(
        "dn: uid=u0007,{o}\nchangetype: modify\nreplace: mail\nmail: u0007.new@branch.test\n\n\
         dn: {gone},{o}\nchangetype: delete\n"
    ));
    // About a third into the users: each is ~300 bytes on the wire, so 60,000 bytes is
    // some 200 users in, after the bind and the root DSE.
    proxy.cut_after_bytes(60_000);
    let cut = agent.run(&["sync", "--once", "--quiet"]);
    assert_ne!(
        cut.code, 0,
        "a pass over a cut read must fail: {}",
        cut.stdout
    );
    assert!(
        cut.stderr.contains("directory read failed"),
        "{}",
        cut.stderr
    );
    assert!(
        proxy
            .events()
            .iter()
            .any(|e| e.action == common::faultproxy::Action::Cut),
        "the proxy never cut the link"
    );
    let gone_user = scim
        .by_external_id("Users", &gone_id)
        .expect("the deleted user is still at the endpoint");
    assert_eq!(
        gone_user["active"],
        Value::Bool(true),
        "deactivated by a pass whose read was cut: {gone_user}"
    );
    assert_eq!(
        ou.scim_user(&scim, "uid=u0007")["emails"][0]["value"],
        "u0007@branch.test",
        "a change sent by a pass whose read was cut"
    );

    let whole = agent.run(&["sync", "--once", "--quiet"]);
    whole.assert_code(0);
    assert!(
        whole.summary().contains("1 updated") && whole.summary().contains("1 sent"),
        "{}",
        whole.summary()
    );
    assert_eq!(
        scim.by_external_id("Users", &gone_id)
            .expect("deactivated, not deleted")["active"],
        Value::Bool(false)
    );
    assert_eq!(
        ou.scim_user(&scim, "uid=u0007")["emails"][0]["value"],
        "u0007.new@branch.test"
    );
}

/// A report created before its manager comes first in slapd's order: the scan has read
/// both before either is mapped, so the report goes with its manager's id; an unchanged
/// second pass writes nothing, and a changed report is sent still naming its manager.
#[test]
fn a_manager_read_after_its_report_is_resolved_and_kept() {
    let dir = common::Dir::openldap();
    let ou = TestOu::create(&dir, "oneorder");
    let o = &ou.dn;
    dir.modify(&format!(
        "{}{}",
        person(o, "report1", Some("boss")),
        person(o, "report2", Some("boss"))
    ));
    dir.modify(&person(o, "boss", None));
    let scim = ScimServer::start();
    let agent = Agent::new(&dir, &[o], &scim.base_url(), &scim.token, "");
    agent.run(&["sync", "--once", "--quiet"]).assert_code(0);
    let boss = ou.scim_user(&scim, "uid=boss")["id"]
        .as_str()
        .unwrap()
        .to_string();
    for r in ["uid=report1", "uid=report2"] {
        assert_eq!(ou.scim_user(&scim, r)[ENTERPRISE]["manager"]["value"], boss);
    }
    agent
        .run(&["sync", "--once", "--quiet"])
        .assert_wrote_nothing();
    dir.modify(&format!(
        "dn: uid=report2,{o}\nchangetype: modify\nreplace: title\ntitle: Lead\n"
    ));
    let third = agent.run(&["sync", "--once", "--quiet"]);
    third.assert_code(0);
    assert!(
        third.summary().contains("1 updated, 2 unchanged"),
        "{}",
        third.summary()
    );
    let r2 = ou.scim_user(&scim, "uid=report2");
    assert_eq!(r2["title"], "Lead");
    assert_eq!(r2[ENTERPRISE]["manager"]["value"], boss);
}

/// Reports read after their manager are settled by the scan when nothing changed (their
/// manager is in the scope map already); once the manager leaves the directory, the scan
/// cannot settle them (the manager is not met), and their phase sends them without it.
#[test]
fn reports_settled_by_the_scan_still_lose_a_manager_that_left() {
    let dir = common::Dir::openldap();
    let ou = TestOu::create(&dir, "onesettle");
    let o = &ou.dn;
    dir.modify(&person(o, "chief", None));
    dir.modify(&format!(
        "{}{}",
        person(o, "staff1", Some("chief")),
        person(o, "staff2", Some("chief"))
    ));
    let scim = ScimServer::start();
    let agent = Agent::new(&dir, &[o], &scim.base_url(), &scim.token, "");
    agent.run(&["sync", "--once", "--quiet"]).assert_code(0);
    // Records the source hashes.
    agent
        .run(&["sync", "--once", "--quiet"])
        .assert_wrote_nothing();
    let third = agent.run(&["sync", "--once", "--quiet", "--log-level", "debug"]);
    third.assert_wrote_nothing();
    assert!(
        third
            .stderr
            .contains("scope scan: 3 users settled unchanged, 0 spooled"),
        "{}",
        third.stderr
    );
    let chief = ou.entry_uuid("uid=chief");
    dir.modify(&format!("dn: uid=chief,{o}\nchangetype: delete\n"));
    let fourth = agent.run(&["sync", "--once", "--quiet", "--log-level", "debug"]);
    fourth.assert_code(0);
    assert!(
        fourth
            .stderr
            .contains("scope scan: 0 users settled unchanged, 2 spooled"),
        "{}",
        fourth.stderr
    );
    assert!(
        fourth.summary().contains("2 updated") && fourth.summary().contains("1 sent"),
        "{}",
        fourth.summary()
    );
    for r in ["uid=staff1", "uid=staff2"] {
        let u = ou.scim_user(&scim, r);
        assert!(
            u[ENTERPRISE]["manager"]["value"].is_null(),
            "{r} still names the manager that left: {u}"
        );
    }
    assert_eq!(
        scim.by_external_id("Users", &chief).expect("deactivated")["active"],
        Value::Bool(false)
    );
    agent
        .run(&["sync", "--once", "--quiet"])
        .assert_wrote_nothing();
}
