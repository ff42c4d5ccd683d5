//! A group's members read in pieces, apart from its entry (`sync/member_read.rs`): ranged
//! reads on Samba AD for a group bigger than one range, and the member side (`memberOf`)
//! on OpenLDAP when the config says the directory keeps it. Each time the whole member
//! list reaches the endpoint, a change sends only the difference, and the agent's debug
//! log names the pieces (old code read every member with the entry, in one piece). In
//! `run` too: a group changed through the feed is read in pieces, not with its entry.

mod common;

use common::{wait_until, Agent, Dir, ScimServer, TestOu};

fn member_count(scim: &ScimServer) -> usize {
    scim.all("Groups")
        .first()
        .and_then(|g| g["members"].as_array().map(Vec::len))
        .unwrap_or(0)
}

/// Users `CN=r0000..` (sAMAccountName `<tag>0000..`) and `CN=Ranged Staff` holding all
/// `n` of them, in a new OU on Samba; the OU and the tag.
fn samba_big_group(dir: &Dir, ou_tag: &str, n: usize) -> (TestOu, String) {
    let ou = TestOu::create(dir, ou_tag);
    let o = ou.dn.clone();
    // sAMAccountName is unique in the domain and at most 20 characters.
    let name = &o[3..o.find(',').unwrap()];
    let tag = name[name.len() - 7..].to_string();
    let mut ldif = String::new();
    for i in 0..n {
        ldif.push_str(&format!(
            "dn: CN=r{i:04},{o}\nobjectClass: user\nsAMAccountName: {tag}{i:04}\n\n"
        ));
    }
    ldif.push_str(&format!(
        "dn: CN=Ranged Staff,{o}\nobjectClass: group\nsAMAccountName: {tag}grp\n"
    ));
    for i in 0..n {
        ldif.push_str(&format!("member: CN=r{i:04},{o}\n"));
    }
    dir.modify(&ldif);
    (ou, tag)
}

/// An agent on the Samba OU `o` for the big group: 8 requests in flight, a 120 s SCIM
/// timeout, `sync_extra` in `[sync]`.
fn samba_agent(dir: &Dir, o: &str, scim: &ScimServer, sync_extra: &str) -> Agent {
    let agent = Agent::new(dir, &[o], &scim.base_url(), &scim.token, sync_extra);
    agent.edit_config("concurrency = 4", "concurrency = 8");
    agent.edit_config("timeout_secs = 10", "timeout_secs = 120");
    agent
}

#[test]
fn samba_reads_a_group_bigger_than_one_range_in_ranged_pieces() {
    const N: usize = 3_000;
    let dir = Dir::samba();
    let (ou, _) = samba_big_group(&dir, "rangedgrp", N);
    let o = ou.dn.clone();

    let scim = ScimServer::start();
    let agent = samba_agent(&dir, &o, &scim, "member_chunk = 500");
    let first = agent.run(&["sync", "--once", "--quiet", "--log-level", "debug"]);
    first.assert_code(0);
    assert!(
        first.stderr.contains(&format!(
            "{N} member DNs read by range in 2 pieces, {N} provisioned"
        )),
        "{}",
        first.stderr
    );
    assert_eq!(member_count(&scim), N);

    // 20 members leave, across the range boundary: only they go, in one PATCH.
    let mut change = format!("dn: CN=Ranged Staff,{o}\nchangetype: modify\ndelete: member\n");
    for i in 1_490..1_510 {
        change.push_str(&format!("member: CN=r{i:04},{o}\n"));
    }
    dir.modify(&change);
    let second = agent.run(&["sync", "--once", "--quiet", "--log-level", "debug"]);
    second.assert_code(0);
    assert!(
        second
            .summary()
            .contains("requests: 0 POST, 0 PUT, 1 PATCH"),
        "{}",
        second.summary()
    );
    assert!(second
        .stderr
        .contains("2980 member DNs read by range in 2 pieces"));
    assert_eq!(member_count(&scim), N - 20);
}

struct Running(std::process::Child);
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn run_reads_a_group_changed_through_the_feed_in_ranged_pieces_and_patches_the_leavers() {
    const N: usize = 3_000;
    let dir = Dir::samba();
    let (ou, tag) = samba_big_group(&dir, "rungrp", N);
    let o = ou.dn.clone();
    let scim = ScimServer::start();
    let agent = samba_agent(
        &dir,
        &o,
        &scim,
        "member_chunk = 500\npoll_interval_secs = 1",
    );
    let _run = Running(agent.spawn(&["run", "--log-level", "debug"]));
    let pass_line = "objects in step";
    assert!(
        wait_until(300, || agent.log().contains(pass_line)
            && agent.log().contains("change feed:")),
        "first pass: {}",
        agent.log()
    );
    assert_eq!(member_count(&scim), N);

    // 20 members leave, across the range boundary, while the agent follows.
    let mut change = format!("dn: CN=Ranged Staff,{o}\nchangetype: modify\ndelete: member\n");
    for i in 1_490..1_510 {
        change.push_str(&format!("member: CN=r{i:04},{o}\n"));
    }
    dir.modify(&change);
    // The PATCH's line is logged once its removals were verified at the endpoint.
    let patched = "0 members added, 20 removed in 1 requests";
    assert!(
        wait_until(60, || member_count(&scim) == N - 20
            && agent.log().contains(patched)),
        "the change: {}",
        agent.log()
    );
    let log = agent.log();
    // Read in two ranges, apart from the entry (the old code read it whole: no such line),
    // and sent as one PATCH of the 20 leavers, by the feed, not by another full pass.
    assert!(
        log.contains(&format!(
            "{} member DNs read by range in 2 pieces, {} provisioned",
            N - 20,
            N - 20
        )),
        "{log}"
    );
    assert_eq!(log.matches(pass_line).count(), 1, "{log}");
    // Exactly the others are left.
    let gone: Vec<String> = (1_490..1_510).map(|i| format!("{tag}{i:04}")).collect();
    let mut users = Vec::new();
    while users.len() < N {
        let page = scim.get(&format!("/Users?count=1000&startIndex={}", users.len() + 1));
        match page["Resources"].as_array() {
            Some(r) if !r.is_empty() => users.extend(r.iter().cloned()),
            _ => break,
        }
    }
    let mut want: Vec<String> = users
        .iter()
        .filter(|u| !gone.iter().any(|g| u["userName"] == g.as_str()))
        .map(|u| u["id"].as_str().unwrap().to_string())
        .collect();
    want.sort();
    let mut held: Vec<String> = scim.all("Groups")[0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["value"].as_str().unwrap().to_string())
        .collect();
    held.sort();
    assert_eq!(want.len(), N - 20);
    assert_eq!(held, want);
}

#[test]
fn openldap_reads_members_from_the_member_side_when_told_it_keeps_member_of() {
    const N: usize = 450;
    let dir = Dir::openldap();
    let ou = TestOu::create(&dir, "memberof");
    let o = ou.dn.clone();
    let mut ldif = String::new();
    for i in 0..N {
        ldif.push_str(&format!(
            "dn: uid=m{i:04},{o}\nobjectClass: inetOrgPerson\nuid: m{i:04}\ncn: M {i}\nsn: M\n\n"
        ));
    }
    ldif.push_str(&format!(
        "dn: cn=crowd,{o}\nobjectClass: groupOfNames\ncn: crowd\n"
    ));
    for i in 0..N {
        ldif.push_str(&format!("member: uid=m{i:04},{o}\n"));
    }
    // A member outside the scope is found by neither read, and is no member at the endpoint.
    ldif.push_str(&format!("member: cn=syncer,{}\n", dir.base));
    dir.modify(&ldif);

    let scim = ScimServer::start();
    let agent = Agent::new(
        &dir,
        &[&o],
        &scim.base_url(),
        &scim.token,
        "member_chunk = 200",
    );
    agent.edit_config(
        &format!("base_dn = \"{}\"", dir.base),
        &format!(
            "base_dn = \"{}\"\nmember_reads = \"member_of\"\npage_size = 100",
            dir.base
        ),
    );
    let first = agent.run(&["sync", "--once", "--quiet", "--log-level", "debug"]);
    first.assert_code(0);
    // 450 DNs in pages of 100, handed on 1,000 at most at a time: one piece.
    assert!(
        first.stderr.contains(&format!(
            "{N} member DNs read by memberOf in 1 pieces, {N} provisioned"
        )),
        "{}",
        first.stderr
    );
    assert_eq!(member_count(&scim), N);

    let mut change = format!("dn: cn=crowd,{o}\nchangetype: modify\ndelete: member\n");
    for i in 0..150 {
        change.push_str(&format!("member: uid=m{i:04},{o}\n"));
    }
    dir.modify(&change);
    let second = agent.run(&["sync", "--once", "--quiet"]);
    second.assert_code(0);
    assert!(
        second
            .summary()
            .contains("requests: 0 POST, 0 PUT, 1 PATCH"),
        "{}",
        second.summary()
    );
    assert_eq!(member_count(&scim), N - 150);
    agent
        .run(&["sync", "--once", "--quiet"])
        .assert_wrote_nothing();
}
