//! The join-and-leave scenario of group-based scoping (`[scope] groups`, `nested = true`)
//! in `run`, the same on every directory: each `scope_groups_*` test builds the tree its
//! directory allows, starts the agent and hands the scenario the names.
//!
//! The tree: `cloud` (the listed group) ∋ u0, u1, `inner`; `inner` ∋ u2, `deep`;
//! `deep` ∋ u3 (and may close a cycle back to `cloud`). u4 and u5 are in no scoping group.
//! The agent runs with `delete_threshold = 2`, the default `user_delete` (deactivate), and
//! has finished its first pass (u0..u3 at the endpoint).

use std::time::{Duration, Instant};

use serde_json::Value;

use super::{wait_until, Agent, Dir, ScimServer};

/// The tree's names on one directory.
pub struct Tree<'a> {
    /// The directory's name in the lines the scenario prints (`389-DS`, ...).
    pub label: &'a str,
    /// User `i`'s DN.
    pub user_dn: Box<dyn Fn(u32) -> String + 'a>,
    /// User `i`'s `userName` at the endpoint.
    pub user_name: Box<dyn Fn(u32) -> String + 'a>,
    /// The DNs of the three groups.
    pub cloud: String,
    /// `inner`.
    pub inner: String,
    /// `deep`.
    pub deep: String,
}

impl Tree<'_> {
    /// The tree as the LDAP directories hold it: `uid=u{i},ou=people,{o}` (userName
    /// `u{i}`) and `cn={name},ou=groups,{o}`.
    pub fn people_and_groups(label: &'static str, o: &str) -> Tree<'static> {
        let (people, groups) = (format!("ou=people,{o}"), format!("ou=groups,{o}"));
        let g = |n: &str| format!("cn={n},{groups}");
        Tree {
            label,
            cloud: g("cloud"),
            inner: g("inner"),
            deep: g("deep"),
            user_dn: Box::new(move |i| format!("uid=u{i},{people}")),
            user_name: Box::new(|i| format!("u{i}")),
        }
    }
}

/// Whether the user named `name` is active at the endpoint (None: not there).
pub fn active(scim: &ScimServer, name: &str) -> Option<bool> {
    scim.all("Users")
        .into_iter()
        .find(|u| u["userName"] == name)
        .map(|u| u["active"].as_bool().unwrap_or(true))
}

/// The endpoint's userNames, sorted.
pub fn user_names(scim: &ScimServer) -> Vec<String> {
    let mut v: Vec<String> = scim
        .all("Users")
        .iter()
        .filter_map(|u| u["userName"].as_str().map(str::to_string))
        .collect();
    v.sort();
    v
}

fn held(agent: &Agent) -> Value {
    agent.status_json().0["held_deletes"].clone()
}

fn member(dir: &Dir, group: &str, op: &str, dn: &str) {
    dir.modify(&format!(
        "dn: {group}\nchangetype: modify\n{op}: member\nmember: {dn}\n"
    ));
}

/// Joins and leaves, directly and through nesting, then a mass leave over the threshold:
/// each reaches the endpoint within 30 s, a leave deactivates (never deletes), the mass
/// leave is held whole until `approve-deletes`.
pub fn join_and_leave_in_run(dir: &Dir, scim: &ScimServer, agent: &Agent, t: &Tree) {
    let name = |i: u32| (t.user_name)(i);
    let is = |i: u32, want: bool| move || active(scim, &name(i)) == Some(want);
    let timed = |what: &str, i: u32, want: bool, started: Instant| {
        assert!(
            wait_until(30, is(i, want)),
            "{}: {what}: {}",
            t.label,
            agent.log()
        );
        eprintln!(
            "{}: {what} in {:.2} s",
            t.label,
            started.elapsed().as_secs_f64()
        );
    };

    // u5 joins the listed group directly: provisioned.
    let t0 = Instant::now();
    member(dir, &t.cloud, "add", &(t.user_dn)(5));
    timed("joined", 5, true, t0);

    // u4 joins a group two levels down: provisioned too.
    let t0 = Instant::now();
    member(dir, &t.deep, "add", &(t.user_dn)(4));
    timed("joined through nesting", 4, true, t0);

    // u1 leaves: deactivated (the default user_delete), not deleted.
    let t0 = Instant::now();
    member(dir, &t.cloud, "delete", &(t.user_dn)(1));
    timed("left", 1, false, t0);

    // u4 leaves through nesting: deep drops it.
    let t0 = Instant::now();
    member(dir, &t.deep, "delete", &(t.user_dn)(4));
    timed("left through nesting", 4, false, t0);

    // A change to a user outside every scoping group changes nothing.
    dir.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: displayName\ndisplayName: Changed\n",
        (t.user_dn)(1)
    ));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(active(scim, &name(1)), Some(false), "{}", agent.log());

    // Delete safety: inner leaves cloud, which takes u2, u3, inner and deep out at once,
    // over delete_threshold = 2: held whole, nothing deactivated or deleted.
    member(dir, &t.cloud, "delete", &t.inner);
    assert!(
        wait_until(30, || held(agent).as_u64().unwrap_or(0) >= 3),
        "{}: not held: {}\n{}",
        t.label,
        held(agent),
        agent.log()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(active(scim, &name(2)), Some(true), "{}", agent.log());
    assert_eq!(active(scim, &name(3)), Some(true));
    assert_eq!(scim.all("Groups").len(), 3, "no group deleted");
    agent.run(&["approve-deletes"]).assert_code(0);
    assert!(
        wait_until(30, || active(scim, &name(2)) == Some(false)
            && active(scim, &name(3)) == Some(false)),
        "{}: approved: {}",
        t.label,
        agent.log()
    );
    assert_eq!(active(scim, &name(0)), Some(true));
}
