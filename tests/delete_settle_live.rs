//! `idrelay run` weighs a burst of deletes whole (issue 20, item 3): against the real slapd
//! (syncrepl) and scim2-server, 600 users deleted in one ldapmodify run while the agent
//! follows the feed are none of them deactivated before `approve-deletes`; `status --json`
//! shows them held; approval sends them. A lone delete still arrives after its settle
//! window. (The window's rules: the unit tests in `src/sync/follow/tests.rs`.)

mod common;

use std::time::{Duration, Instant};

use common::{wait_until, Agent, Dir, Running, ScimServer, TestOu};
use serde_json::Value;

fn users_ldif(o: &str, names: &[String]) -> String {
    names
        .iter()
        .map(|n| {
            format!(
                "dn: uid={n},{o}\nobjectClass: inetOrgPerson\nuid: {n}\ncn: User {n}\nsn: S\n\n"
            )
        })
        .collect()
}

/// How many of the endpoint's users are deactivated, and how many there are.
fn deactivated(scim: &ScimServer) -> (usize, usize) {
    let all = scim.all("Users");
    let off = all.iter().filter(|u| u["active"] == false).count();
    (off, all.len())
}

fn status(agent: &Agent) -> Value {
    agent.status_json().0
}

#[test]
fn a_mass_delete_during_run_sends_nothing_before_approval_and_a_lone_delete_still_goes() {
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "settle");
    let o = ou.dn.clone();
    let names: Vec<String> = (0..600).map(|i| format!("m{i:03}")).collect();
    dir.modify(&users_ldif(&o, &names));
    dir.modify(&users_ldif(&o, &["solo".to_string()]));
    let scim = ScimServer::start();
    // The count rule alone (500): as on a branch of 6,000, where 600 is within the 10 %
    // share. (Here the share rule would hold the first read of 100 already.)
    let agent = Agent::new(
        &dir,
        &[&o],
        &scim.base_url(),
        &scim.token,
        "delete_threshold_percent = 0",
    );
    agent.edit_config("delete_settle_secs = 1", "delete_settle_secs = 3");
    let _run = Running(agent.spawn(&["run"]));
    assert!(
        wait_until(180, || deactivated(&scim).1 == 601),
        "first pass: {}",
        agent.log()
    );
    assert!(
        wait_until(30, || status(&agent)["phase"] == "following"),
        "{}",
        agent.log()
    );

    // A lone delete goes out once its window (3 s) closed.
    let t0 = Instant::now();
    dir.modify(&format!("dn: uid=solo,{o}\nchangetype: delete\n"));
    assert!(
        wait_until(20, || deactivated(&scim).0 == 1),
        "the lone delete did not arrive: {}",
        agent.log()
    );
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "sent before its window closed: {took:?}"
    );
    eprintln!("lone delete reached the endpoint after {took:?} (settle 3 s)");

    // 600 deletes in one ldapmodify run: weighed whole, none sent.
    let burst: String = names
        .iter()
        .map(|n| format!("dn: uid={n},{o}\nchangetype: delete\n\n"))
        .collect();
    let t1 = Instant::now();
    dir.modify(&burst);
    eprintln!("ldapmodify deleted 600 entries in {:?}", t1.elapsed());
    let held = wait_until(60, || status(&agent)["held_deletes"] == 600);
    let (off, _) = deactivated(&scim);
    assert!(held, "not held: {}\n{}", status(&agent), agent.log());
    assert_eq!(
        off,
        1,
        "deactivated before approval (besides solo): {}",
        agent.log()
    );
    std::thread::sleep(Duration::from_secs(3));
    let v = status(&agent);
    assert_eq!(v["held_deletes"], 600, "{v}");
    assert_eq!(v["settling_deletes"], 0, "{v}");
    assert_eq!(v["healthy"], false, "held deletes want a human: {v}");
    assert_eq!(deactivated(&scim).0, 1);

    // Approved: the running agent sends them.
    let approved = agent.run(&["approve-deletes"]);
    approved.assert_code(0);
    assert!(
        wait_until(180, || deactivated(&scim).0 == 601),
        "approved deletes not sent ({} of 601): {}",
        deactivated(&scim).0,
        agent.log()
    );
    assert!(
        wait_until(20, || status(&agent)["held_deletes"] == 0),
        "{}",
        status(&agent)
    );
}
