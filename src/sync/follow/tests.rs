//! Named tests of the sender and the batch machine against a fake directory and a fake
//! endpoint that record, in one log, the order in which they were asked (no sockets: the
//! queue, anchor index and delete gate are the real ones, in a temporary directory). Each
//! scenario asserts what reached the endpoint, in which order, and what was acknowledged.
//!
//! The fakes take one scheduler turn per round trip (more where a test makes an object
//! slow), so several changes of a batch are in flight at once, as against a real server.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::batch::{apply_batch, BatchEnd, DirectoryReads, EndpointWrites};
use super::parking::{unix_now, Parking, PARKED_FILE};
use super::send::{send_loop, SendCtx, SendEnd};
use super::*;
use crate::ldap::{Entry, LdapError};
use crate::queue::QueueConfig;
use crate::scim::client::ScimError;
use crate::scim::mapping::MemberIdsBuilder;
use crate::scim::profile::ProfileKind;
use crate::scim::ResourceKind;
use crate::sync::anchors::Anchor;
use crate::sync::deletes::UserDelete;
use crate::sync::deletes::{Policy, Target};
use crate::sync::member_read::{MemberDnList, MemberReadError};
use crate::sync::provision::{Job, Outcome, ProvisionMode};

// ---------------------------------------------------------------------------------------
// Pure helpers of the run loop.

#[test]
fn an_incomplete_pass_is_accepted_only_after_a_repeat_without_progress() {
    // The first incomplete pass is always repeated.
    assert!(!accept_stalled_pass(None, 1));
    assert!(!accept_stalled_pass(None, 500));
    // Progress: repeat again.
    assert!(!accept_stalled_pass(Some(500), 20));
    assert!(!accept_stalled_pass(Some(2), 1));
    // No progress: the same (or more) objects failed again.
    assert!(accept_stalled_pass(Some(2), 2));
    assert!(accept_stalled_pass(Some(1), 3));
}

#[test]
fn the_periodic_pass_is_due_only_after_its_interval() {
    let day = Duration::from_secs(86_400);
    let now = SystemTime::now();
    assert!(!full_pass_due(None, day, now));
    assert!(!full_pass_due(
        Some(now - Duration::from_secs(10)),
        day,
        now
    ));
    assert!(full_pass_due(Some(now - day), day, now));
    assert!(!full_pass_due(Some(now - day), Duration::ZERO, now));
    // A clock that jumped back: the last pass is "in the future"; not due, no panic.
    assert!(!full_pass_due(Some(now + day), day, now));
}

#[test]
fn watermarks_belong_to_their_scope() {
    let w = Watermark::encode("scope-a", b"rid=001,csn=x");
    assert_eq!(
        Watermark::cookie_for(&w, "scope-a").as_deref(),
        Some(&b"rid=001,csn=x"[..])
    );
    assert_eq!(Watermark::cookie_for(&w, "scope-b"), None);
    assert_eq!(Watermark::cookie_for(b"garbage", "scope-a"), None);
}

// ---------------------------------------------------------------------------------------
// The batch machine.

#[test]
fn same_object_changes_are_applied_in_order() {
    let mut b = Bench::new(100);
    b.user("alice", &["v1", "v2"]);
    b.user("bob", &["v1"]);
    let (end, seqs) = b.apply(&[upsert("alice"), upsert("bob"), upsert("alice")]);
    let log = b.calls();
    assert_eq!(sends_of(&log, "alice"), ["v1", "v2"], "{log:#?}");
    // Alice's second change was not even read before her first one landed...
    let first_landed = at(&log, &landed("alice", "created"));
    assert!(first_landed < nth(&log, &read("alice"), 1), "{log:#?}");
    // ...while another object's change was in flight beside it.
    assert!(at(&log, &send("bob", "v1")) < first_landed, "{log:#?}");
    assert_eq!(at(&log, &landed("alice", "replaced")), log.len() - 1);
    assert_eq!(b.endpoint.holds("alice").as_deref(), Some("v2"));
    assert_eq!(end.handled, seqs.last().copied());
    assert!(end.end.is_none());
}

#[test]
fn with_scope_groups_a_non_member_is_not_sent_and_a_scoping_group_change_owes_a_full_pass() {
    let mut b = Bench::new(100);
    b.user("alice", &["v1"]);
    b.user("bob", &["v1"]);
    b.group("team", &["alice"]);
    b.allowed = Some(crate::sync::scope_groups::AllowedSet::of(
        &b.state_dir(),
        &[&group_dn("team")],
        &[&user_dn("alice")],
    ));
    b.apply(&[upsert("alice"), upsert("bob")]);
    let log = b.calls();
    assert_eq!(sends_of(&log, "alice"), ["v1"], "{log:#?}");
    assert!(
        sends_of(&log, "bob").is_empty(),
        "bob is no member: {log:#?}"
    );
    assert!(!b.queue.lock().unwrap().resync_owed());
    // The group that makes the set changed: who is in may have changed too.
    b.apply(&[upsert_group("team")]);
    // Regression (issue 14 item 7): owed as "requested", which told the operator that
    // someone had asked for it.
    assert_eq!(
        b.queue.lock().unwrap().resync_reason(),
        Some(crate::queue::ResyncReason::GroupsChanged)
    );
}

#[test]
fn a_reference_to_an_object_not_yet_provisioned_waits_for_it() {
    let mut b = Bench::new(100);
    b.user("carol", &["v1"]);
    b.endpoint.slow("carol", 5);
    b.group("staff", &["carol"]);
    let (end, seqs) = b.apply(&[upsert("carol"), upsert_group("staff")]);
    let log = b.calls();
    // The group was read while carol was still being created, and waited for her: sent
    // earlier it would have left her out (the index did not know her yet).
    assert!(at(&log, &read("staff")) < at(&log, &landed("carol", "created")));
    assert!(at(&log, &landed("carol", "created")) < at(&log, &send("staff", "id-carol")));
    assert_eq!(sends_of(&log, "staff"), ["id-carol"], "{log:#?}");
    // Its read stayed valid: it was mapped again, not read again.
    assert_eq!(count(&log, &read("staff")), 1);
    assert_eq!(end.handled, seqs.last().copied());
}

#[test]
fn a_changed_group_reads_its_members_apart_and_a_cut_read_sends_nothing_until_read_whole() {
    let mut b = Bench::new(100);
    b.settings.pass.member_read = crate::ldap::members::MemberRead::Ranged;
    let names = ["m1", "m2", "m3", "m4", "m5"];
    for n in names {
        b.user(n, &["v1"]);
    }
    b.apply(&names.map(upsert));
    b.group("crew", &names);
    // The member read is cut after its first piece once: the change is retried, whole.
    b.dir.member_faults.borrow_mut().insert(group_dn("crew"), 1);
    b.user("late", &["v1"]);
    let (end, seqs) = b.apply(&[upsert_group("crew"), upsert("late")]);
    let log = b.calls();
    assert_eq!(count(&log, &Call::Members("crew".into())), 2, "{log:#?}");
    assert!(!b.dir.asked_member.get(), "members were read with an entry");
    // Sent once, after the whole read, with every member (5 DNs spill past 64 bytes).
    let all = "id-m1 id-m2 id-m3 id-m4 id-m5";
    assert_eq!(sends_of(&log, "crew"), [all], "{log:#?}");
    assert!(nth(&log, &Call::Members("crew".into()), 1) < at(&log, &send("crew", all)));
    assert_eq!(sends_of(&log, "late"), ["v1"], "{log:#?}");
    assert_eq!(end.handled, seqs.last().copied());

    // With `member_reads = "entry"` the members come with the entry, as before.
    b.settings.pass.member_read = crate::ldap::members::MemberRead::Entry;
    b.group("crew", &["m1", "m2"]);
    b.apply(&[upsert_group("crew")]);
    let log = b.calls();
    assert_eq!(count(&log, &Call::Members("crew".into())), 0, "{log:#?}");
    assert!(b.dir.asked_member.get());
    assert_eq!(sends_of(&log, "crew"), ["id-m1 id-m2"], "{log:#?}");
}

#[test]
fn a_retry_pauses_the_batch_without_reordering() {
    let mut b = Bench::new(100);
    let names: Vec<String> = (0..10).map(|i| format!("x{i}")).collect();
    for n in &names {
        b.user(n, &["v1"]);
        b.endpoint.slow(n, 3);
    }
    // x1 is refused at once (503 after the client's retries), and changes again later.
    b.user("x1", &["v1", "v1", "v2"]);
    b.endpoint.slow("x1", 0);
    b.endpoint
        .refuse("x1", Outcome::Unavailable("503 Service Unavailable".into()));
    let mut changes: Vec<Change> = names.iter().map(|n| upsert(n)).collect();
    changes.push(upsert("x1"));
    let (end, seqs) = b.apply(&changes);
    let log = b.calls();

    let refused = at(&log, &landed("x1", "unavailable"));
    let retried = nth(&log, &read("x1"), 1);
    // What was in flight when x1 was refused landed before x1 was tried again...
    for n in ["x0", "x2", "x3", "x4", "x5", "x6", "x7"] {
        assert!(at(&log, &read(n)) < refused, "{n} was in flight: {log:#?}");
        assert!(at(&log, &landed(n, "created")) < retried, "{n}: {log:#?}");
    }
    // ...and nothing new started in between: the window's last two waited for the retry.
    for n in ["x8", "x9"] {
        assert!(at(&log, &read(n)) > retried, "{n} started early: {log:#?}");
    }
    // x1's changes kept their order: the refused version again, then the newer one.
    assert_eq!(sends_of(&log, "x1"), ["v1", "v1", "v2"], "{log:#?}");
    assert_eq!(b.endpoint.holds("x1").as_deref(), Some("v2"));
    assert_eq!(end.handled, seqs.last().copied());
}

#[test]
fn a_re_add_in_the_settle_window_withdraws_the_delete_in_order() {
    let mut b = Bench::new(100);
    for n in ["dan", "eve", "fay"] {
        b.user(n, &["v1"]);
    }
    b.endpoint.slow("dan", 3);
    // dan is created, deleted, and created again (the directory has him back).
    let (end, seqs) = b.apply(&[
        upsert("dan"),
        upsert("eve"),
        delete("dan"),
        upsert("fay"),
        upsert("dan"),
    ]);
    let log = b.calls();
    let of_dan: Vec<&Call> = log.iter().filter(|c| c.object() == "dan").collect();
    // The delete waited for dan's create, then in the settle window; the re-add (read
    // after both, in queue order) withdrew it: dan was never deleted at the endpoint, and
    // is in step as he was.
    assert_eq!(
        of_dan,
        [
            &read("dan"),
            &send("dan", "v1"),
            &landed("dan", "created"),
            &read("dan")
        ],
        "{log:#?}"
    );
    assert!(b.gate.pending().is_empty());
    b.settle();
    assert!(b.calls().is_empty());
    assert!(b.index.get_any(&uuid_of("dan")).is_some());
    assert_eq!(b.endpoint.holds("dan").as_deref(), Some("v1"));
    assert_eq!(end.handled, seqs.last().copied());
}

#[test]
fn a_delete_matched_by_dn_alone_waits_for_the_directory_to_confirm_it_is_gone() {
    let mut b = Bench::new(100);
    // Sent under an anchor that is no form of the feed's uuid (another anchor attribute).
    b.index.put(
        "legacy-anchor",
        Anchor {
            kind: ResourceKind::User,
            scim_id: "id-gil".into(),
            hash: 1,
            dn: user_dn("gil"),
        },
    );
    let del = Change::Delete {
        uuid: uuid_of("gil"),
        dn: Some(user_dn("gil")),
    };
    // Another entry still holds the anchor: the DN was reused, the object lives on.
    b.dir
        .holders
        .borrow_mut()
        .push(("legacy-anchor".into(), user_dn("gil2")));
    let (end, seqs) = b.apply(std::slice::from_ref(&del));
    assert!(b.calls().is_empty(), "{:#?}", b.calls());
    assert!(b.index.get_any("legacy-anchor").is_some());
    assert_eq!(b.gate.unmatched().0, 1, "counted, not dropped silently");
    assert_eq!(end.handled, seqs.last().copied());

    // Nothing holds it any more: now the delete goes out (once its window closes).
    b.dir.holders.borrow_mut().clear();
    b.apply(&[del]);
    assert_eq!(b.gate.pending().len(), 1);
    b.settle();
    assert_eq!(b.calls(), [Call::Delete("gil".into())]);
    assert!(b.index.get_any("legacy-anchor").is_none());
}

#[test]
fn a_delete_that_matches_nothing_is_acknowledged_and_counted() {
    let mut b = Bench::new(100);
    let (end, seqs) = b.apply(&[
        Change::Delete {
            uuid: uuid_of("hal"),
            dn: Some(user_dn("hal")),
        },
        // Never in scope: nothing to undo, nothing to count.
        Change::Delete {
            uuid: uuid_of("ida"),
            dn: Some("uid=ida,ou=people,dc=elsewhere,dc=net".into()),
        },
    ]);
    assert!(b.calls().is_empty());
    assert_eq!(b.gate.unmatched().0, 1);
    assert_eq!(end.handled, seqs.last().copied());
}

#[test]
fn a_delete_is_never_inferred_from_a_read() {
    let mut b = Bench::new(100);
    b.user("jim", &["v1"]);
    b.user("kay", &["v1"]);
    b.apply(&[upsert("jim")]);
    // jim is no longer where the feed said (renamed or deleted: the feed reports that);
    // kay's reads fail twice (a dropped connection).
    b.dir.entries.borrow_mut().remove(&user_dn("jim"));
    b.dir.read_faults.borrow_mut().insert(user_dn("kay"), 2);
    let (end, seqs) = b.apply(&[upsert("jim"), upsert("kay")]);
    let log = b.calls();
    assert!(
        !log.iter().any(|c| matches!(c, Call::Delete(_))),
        "{log:#?}"
    );
    assert!(b.index.get_any(&uuid_of("jim")).is_some());
    assert_eq!(count(&log, &read("kay")), 3, "retried, not taken for gone");
    assert_eq!(sends_of(&log, "kay"), ["v1"]);
    assert_eq!(end.handled, seqs.last().copied());
}

#[test]
fn an_unchanged_object_costs_no_write() {
    let mut b = Bench::new(100);
    b.user("lou", &["v1"]);
    b.apply(&[upsert("lou")]);
    assert_eq!(sends_of(&b.calls(), "lou"), ["v1"]);
    let (end, seqs) = b.apply(&[upsert("lou")]);
    // Read again and found in step: nothing sent.
    assert_eq!(b.calls(), [read("lou")]);
    assert_eq!(end.handled, seqs.last().copied());
}

#[test]
fn an_unreadable_record_owes_a_full_pass_and_is_not_acknowledged() {
    let mut b = Bench::new(100);
    b.user("max", &["v1"]);
    let (end, _) = b.apply_payloads(vec![encode(&upsert("max")), b"{not json".to_vec()]);
    assert!(matches!(end.end, Some(SendEnd::ResyncOwed)));
    assert_eq!(end.handled, None);
    assert!(b.calls().is_empty(), "the full pass brings max in step");
    assert!(b.queue.lock().unwrap().resync_owed());
}

// ---------------------------------------------------------------------------------------
// The sender around it: queue reads, delete bursts, scope exits, acknowledgement.

#[test]
fn only_the_leading_run_of_completed_records_is_acknowledged() {
    let mut b = Bench::new(100);
    for (n, slow) in [("ann", 1), ("ben", 2), ("cat", 3)] {
        b.user(n, &["v1"]);
        b.endpoint.slow(n, slow);
    }
    b.endpoint
        .refuse("ben", Outcome::Unavailable("502 Bad Gateway".into()));
    // The agent is asked to stop once cat landed, while ben waits for his retry.
    b.endpoint.stop_after("cat", b.control.clone());
    b.enqueue(&[upsert("ann"), upsert("ben"), upsert("cat")]);
    let end = b.send(|_, _| false);
    assert!(matches!(end, SendEnd::Signal));
    let log = b.calls();
    assert!(log.contains(&landed("ann", "created")), "{log:#?}");
    assert!(log.contains(&landed("cat", "created")), "{log:#?}");
    // Only ann is acknowledged: ben and cat (done beyond the gap) stay queued.
    assert_eq!(b.unacknowledged(), [upsert("ben"), upsert("cat")]);

    // After the restart both are applied again: ben is sent, cat is found in step.
    b.control = Control::new();
    b.endpoint.stop_after = None;
    let end = b.send(|_, depth| depth == 0);
    assert!(matches!(end, SendEnd::Signal));
    let log = b.calls();
    assert_eq!(sends_of(&log, "ben"), ["v1"], "{log:#?}");
    assert_eq!(sends_of(&log, "cat"), Vec::<String>::new(), "{log:#?}");
    assert_eq!(count(&log, &read("cat")), 1);
    assert!(b.unacknowledged().is_empty());
}

#[test]
fn an_object_that_left_scope_is_deleted_after_its_batch() {
    let mut b = Bench::new(100);
    b.user("kim", &["v1"]);
    b.user("lee", &["v1", "v2"]);
    b.apply(&[upsert("kim"), upsert("lee")]);
    b.dir.outside_filter.borrow_mut().insert(user_dn("kim"));
    b.enqueue(&[upsert("kim"), upsert("lee")]);
    let end = b.send(|log, depth| depth == 0 && log.contains(&Call::Delete("kim".into())));
    assert!(matches!(end, SendEnd::Signal));
    let log = b.calls();
    // Weighed as one burst with the rest of its window, sent after the batch.
    assert!(at(&log, &landed("lee", "replaced")) < at(&log, &Call::Delete("kim".into())));
    assert!(b.index.get_any(&uuid_of("kim")).is_none());
    assert!(b.unacknowledged().is_empty());
}

#[test]
fn a_burst_of_deletes_over_the_threshold_is_held_whole_and_acknowledged() {
    let mut b = Bench::new(2);
    for n in ["mia", "ned", "oli"] {
        b.user(n, &["v1"]);
    }
    b.apply(&[upsert("mia"), upsert("ned"), upsert("oli")]);
    b.enqueue(&[delete("mia"), delete("ned"), delete("oli")]);
    // The window (no settle time here) closes at the sender's next turn.
    let t0 = Instant::now();
    let end = b.send(|_, depth| depth == 0 && t0.elapsed() > Duration::from_millis(200));
    assert!(matches!(end, SendEnd::Signal));
    let log = b.calls();
    assert!(
        !log.iter().any(|c| matches!(c, Call::Delete(_))),
        "{log:#?}"
    );
    assert_eq!(
        b.gate.held().len(),
        3,
        "all of the burst, not the first two"
    );
    for n in ["mia", "ned", "oli"] {
        assert!(
            b.index.get_any(&uuid_of(n)).is_some(),
            "{n} kept until approved"
        );
    }
    assert!(
        b.unacknowledged().is_empty(),
        "held deletes are durable, so acknowledged"
    );
}

/// Regression (issue 20): a 600-user mass delete during `run` sent 500 deactivations
/// before holding the rest, because the feed's burst was weighed one queue read (100
/// records) at a time. In the settle window it is weighed whole: nothing goes out.
#[test]
fn a_burst_spread_over_many_queue_reads_is_weighed_whole() {
    let mut b = Bench::new(500);
    let names: Vec<String> = (0..600).map(|i| format!("m{i:03}")).collect();
    for n in &names {
        b.user(n, &["v1"]);
    }
    let ups: Vec<Change> = names.iter().map(|n| upsert(n)).collect();
    b.apply(&ups);
    assert_eq!(b.index.len(), 600);
    b.settings.delete_settle = Duration::from_secs(1);
    // The feed appends a burst as it comes: here in six appends of 100.
    for chunk in names.chunks(100) {
        let dels: Vec<Change> = chunk.iter().map(|n| delete(n)).collect();
        b.enqueue(&dels);
    }
    let t0 = Instant::now();
    let end = b.send(|_, depth| depth == 0 && t0.elapsed() > Duration::from_millis(2500));
    assert!(matches!(end, SendEnd::Signal));
    let log = b.calls();
    let sent = log.iter().filter(|c| matches!(c, Call::Delete(_))).count();
    assert_eq!(sent, 0, "deletes sent before approval");
    assert_eq!(b.gate.held().len(), 600, "the whole burst is held");
    assert!(b.gate.pending().is_empty() && b.gate.going().is_empty());
    assert_eq!(b.index.len(), 600, "kept until approved");
    assert!(b.unacknowledged().is_empty());
}

#[test]
fn a_lone_delete_goes_after_its_window_and_later_changes_do_not_wait_for_it() {
    let mut b = Bench::new(100);
    for n in ["pia", "quin"] {
        b.user(n, &["v1"]);
    }
    b.apply(&[upsert("pia")]);
    b.settings.delete_settle = Duration::from_secs(1);
    b.enqueue(&[delete("pia"), upsert("quin")]);
    let t0 = Instant::now();
    let quin_at = Cell::new(None);
    let end = b.send(|log, _| {
        if quin_at.get().is_none() && log.contains(&landed("quin", "created")) {
            quin_at.set(Some(t0.elapsed()));
        }
        log.contains(&Call::Delete("pia".into()))
    });
    let took = t0.elapsed();
    assert!(matches!(end, SendEnd::Signal));
    let log = b.calls();
    assert!(at(&log, &landed("quin", "created")) < at(&log, &Call::Delete("pia".into())));
    let quin_at = quin_at.get().expect("quin landed");
    assert!(
        quin_at < Duration::from_millis(500),
        "quin waited: {quin_at:?}"
    );
    assert!(took >= Duration::from_secs(1), "the window: {took:?}");
    assert!(
        took < Duration::from_secs(4),
        "the lone delete waited too long: {took:?}"
    );
    assert!(b.index.get_any(&uuid_of("pia")).is_none());
    assert!(b.unacknowledged().is_empty());
}

#[test]
fn a_delete_waiting_in_its_window_survives_a_kill_and_goes_once() {
    let mut b = Bench::new(100);
    for n in ["rue", "sam", "tom"] {
        b.user(n, &["v1"]);
    }
    b.apply(&[upsert("rue"), upsert("sam"), upsert("tom")]);
    b.settings.delete_settle = Duration::from_secs(3600);
    b.enqueue(&[delete("rue"), delete("sam"), delete("tom")]);
    b.send(|_, depth| depth == 0);
    assert!(
        b.unacknowledged().is_empty(),
        "acknowledged: the window is durable"
    );
    assert!(b.calls().iter().all(|c| !matches!(c, Call::Delete(_))));
    // kill -9: only what is on disk is left.
    let policy = Policy {
        threshold: 100,
        interval: Duration::from_secs(3600),
        share_percent: 0,
        floor: 0,
    };
    b.gate = DeleteGate::open(&b.state_dir(), policy).unwrap();
    assert_eq!(b.gate.pending().len(), 3);
    // After the restart the window closes; the agent is killed after the first delete.
    b.settings.delete_settle = Duration::ZERO;
    b.control = Control::new();
    b.endpoint.stop_after("rue", b.control.clone());
    b.send(|_, _| false);
    assert_eq!(b.calls(), [Call::Delete("rue".into())]);
    b.gate = DeleteGate::open(&b.state_dir(), policy).unwrap();
    assert_eq!(b.gate.going().len(), 2, "admitted, not weighed again");
    assert_eq!(b.gate.recent(), 3);
    b.control = Control::new();
    b.endpoint.stop_after = None;
    b.settle();
    assert_eq!(
        b.calls(),
        [Call::Delete("sam".into()), Call::Delete("tom".into())],
        "each once"
    );
    let after = DeleteGate::open(&b.state_dir(), policy).unwrap();
    assert!(after.pending().is_empty() && after.going().is_empty());
    assert_eq!(after.recent(), 3);
}

// ---------------------------------------------------------------------------------------
// Bursts through SCIM Bulk (`sync.bulk = "auto"` and an endpoint that offers it).

/// The object names of each [`Call::Together`] in `log`, in order.
fn togethers(log: &[Call]) -> Vec<Vec<String>> {
    log.iter()
        .filter_map(|c| match c {
            Call::Together(names) => Some(names.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_burst_of_user_changes_goes_out_together_in_order_per_object() {
    let mut b = Bench::new(100);
    b.endpoint.together = true;
    let names: Vec<String> = (0..30).map(|i| format!("u{i:02}")).collect();
    for n in &names {
        b.user(n, &["v1", "v2"]);
    }
    b.user("alice", &["v1", "v2", "v3"]);
    let mut first: Vec<Change> = names.iter().map(|n| upsert(n)).collect();
    first.push(upsert("alice"));
    b.apply(&first);
    // Creates never go together (only a PUT to an owned id cannot make a duplicate).
    assert!(togethers(&b.calls()).is_empty());

    // One script changes every user, and alice twice.
    let mut burst: Vec<Change> = names.iter().map(|n| upsert(n)).collect();
    burst.push(upsert("alice"));
    burst.push(upsert("alice"));
    let (end, seqs) = b.apply(&burst);
    let log = b.calls();
    let sent = togethers(&log);
    assert_eq!(sent.len(), 2, "{log:#?}");
    let mut want = names.clone();
    want.push("alice".into());
    assert_eq!(
        sent[0], want,
        "the whole burst in one request, in queue order"
    );
    assert_eq!(
        sent[1],
        ["alice"],
        "her second change after her first landed"
    );
    // Gathered until every read of the batch had landed.
    let last_read = log.iter().rposition(|c| *c == read("u29")).unwrap();
    assert!(last_read < at(&log, &Call::Together(want)), "{log:#?}");
    assert_eq!(sends_of(&log, "alice"), ["v2", "v3"], "{log:#?}");
    assert!(at(&log, &landed("alice", "replaced")) < nth(&log, &read("alice"), 1));
    for n in &names {
        assert_eq!(b.endpoint.holds(n).as_deref(), Some("v2"), "{n}");
    }
    assert_eq!(b.endpoint.holds("alice").as_deref(), Some("v3"));
    assert_eq!(end.handled, seqs.last().copied());
    assert_eq!(end.applied, 32);
}

#[test]
fn one_refused_change_of_a_burst_parks_alone() {
    let mut b = Bench::new(100);
    b.endpoint.together = true;
    let names: Vec<String> = (0..10).map(|i| format!("a{i}")).collect();
    for n in &names {
        b.user(n, &["v1", "v2"]);
    }
    b.apply(&names.iter().map(|n| upsert(n)).collect::<Vec<_>>());
    b.endpoint.refuse(
        "a3",
        Outcome::Failed("SCIM PUT answered 400: invalid".into()),
    );
    let (end, seqs) = b.apply(&names.iter().map(|n| upsert(n)).collect::<Vec<_>>());
    let log = b.calls();
    assert_eq!(togethers(&log), std::slice::from_ref(&names), "{log:#?}");
    assert_eq!(end.parked, 1);
    assert_eq!(end.applied, 9);
    assert_eq!(
        end.handled,
        seqs.last().copied(),
        "the refused one is parked: done"
    );
    assert_eq!(
        sends_of(&log, "a3"),
        ["v2"],
        "tried once, never repeated with the batch"
    );
    let p = b.parking.find(&uuid_of("a3"), None).expect("a3 parked");
    assert!(p.reason.contains("400"), "{p:?}");
    for n in names.iter().filter(|n| *n != "a3") {
        assert_eq!(b.endpoint.holds(n).as_deref(), Some("v2"), "{n}");
        assert!(b.parking.find(&uuid_of(n), None).is_none());
    }
    assert_eq!(b.endpoint.holds("a3").as_deref(), Some("v1"));
}

#[test]
fn without_bulk_a_burst_goes_one_change_at_a_time() {
    let mut b = Bench::new(100);
    let names: Vec<String> = (0..10).map(|i| format!("o{i}")).collect();
    for n in &names {
        b.user(n, &["v1", "v2"]);
    }
    b.apply(&names.iter().map(|n| upsert(n)).collect::<Vec<_>>());
    b.apply(&names.iter().map(|n| upsert(n)).collect::<Vec<_>>());
    let log = b.calls();
    assert!(togethers(&log).is_empty(), "{log:#?}");
    assert_eq!(count(&log, &landed("o0", "replaced")), 1);
}

// ---------------------------------------------------------------------------------------
// Parking: no head-of-line blocking.

#[test]
fn a_refused_change_parks_and_later_changes_flow() {
    let mut b = Bench::new(100);
    // x0 is answered 500 however often it is tried; bad is refused for good (400).
    b.user("x0", &["v1"]);
    for _ in 0..100 {
        b.endpoint
            .refuse("x0", Outcome::Unavailable("SCIM PUT answered 500".into()));
    }
    b.user("bad", &["v1"]);
    b.endpoint.refuse(
        "bad",
        Outcome::Failed("SCIM POST answered 400: invalid".into()),
    );
    let later: Vec<String> = (1..=20).map(|i| format!("y{i}")).collect();
    for n in &later {
        b.user(n, &["v1"]);
    }
    let mut changes = vec![upsert("x0"), upsert("bad")];
    changes.extend(later.iter().map(|n| upsert(n)));
    b.enqueue(&changes);
    let end = b.send(|_, depth| depth == 0);
    assert!(matches!(end, SendEnd::Signal));
    let log = b.calls();
    // x0 was tried `park_after` (3) times, then parked; bad once.
    assert_eq!(sends_of(&log, "x0"), ["v1"; 3], "{log:#?}");
    assert_eq!(sends_of(&log, "bad"), ["v1"], "{log:#?}");
    for n in &later {
        assert_eq!(b.endpoint.holds(n).as_deref(), Some("v1"), "{n}: {log:#?}");
    }
    // Everything is acknowledged; both refused objects are parked, durably.
    assert!(b.unacknowledged().is_empty());
    let x0 = b.parking.find(&uuid_of("x0"), None).expect("x0 parked");
    assert_eq!(x0.attempts, 3);
    assert_eq!(x0.kind, "user");
    assert_eq!(x0.dn, user_dn("x0"));
    assert!(x0.reason.contains("500"), "{x0:?}");
    let bad = b.parking.find(&uuid_of("bad"), None).expect("bad parked");
    assert_eq!(bad.attempts, 1);
    assert!(bad.reason.contains("400"), "{bad:?}");
    let wait = x0.next_at - x0.last_at;
    assert!(
        (96..=144).contains(&wait),
        "first retry in about 2 min: {wait}"
    );
    let on_disk = Parking::open(&b.state_dir()).unwrap();
    assert_eq!(on_disk.len(), 2);
}

#[test]
fn an_endpoint_outage_parks_nothing() {
    let mut b = Bench::new(100);
    b.user("x0", &["v1"]);
    b.user("y1", &["v1"]);
    for _ in 0..5 {
        b.endpoint
            .refuse("x0", Outcome::Unavailable("connection refused".into()));
    }
    b.endpoint.down.set(true);
    let (end, seqs) = b.apply(&[upsert("x0"), upsert("y1")]);
    let log = b.calls();
    // Past park_after, but the endpoint was down: waited and retried, never parked.
    assert_eq!(sends_of(&log, "x0"), ["v1"; 6], "{log:#?}");
    assert_eq!(b.endpoint.holds("x0").as_deref(), Some("v1"));
    assert_eq!(b.endpoint.holds("y1").as_deref(), Some("v1"));
    assert!(b.parking.is_empty());
    assert_eq!(end.handled, seqs.last().copied());
}

/// Regression: the tries a change made while the whole endpoint was in an outage counted
/// toward parking it, so the first failure after the outage ended parked it for minutes
/// (the wall-of-5xx test saw its change arrive 102 s after the endpoint came back).
#[test]
fn tries_during_an_endpoint_outage_never_park_the_change() {
    let mut b = Bench::new(100);
    b.user("x0", &["v1"]);
    for _ in 0..6 {
        b.endpoint
            .refuse("x0", Outcome::Unavailable("SCIM PUT answered 503".into()));
    }
    // Five retry rounds inside the outage, then one more failure once it has ended.
    b.endpoint.outage_rounds.set(5);
    let (end, seqs) = b.apply(&[upsert("x0")]);
    let log = b.calls();
    assert_eq!(sends_of(&log, "x0"), ["v1"; 7], "{log:#?}");
    assert_eq!(b.endpoint.holds("x0").as_deref(), Some("v1"));
    assert!(b.parking.is_empty(), "{:?}", b.parking.entries());
    assert_eq!(end.handled, seqs.last().copied());
}

#[test]
fn a_later_change_to_a_parked_object_supersedes_it() {
    let mut b = Bench::new(100);
    b.user("amy", &["v1", "v2", "v3"]);
    b.user("bo", &["v1"]);
    b.endpoint
        .refuse("amy", Outcome::Failed("SCIM PUT answered 400".into()));
    // amy is refused and parked; bo flows; amy's next change (same batch) sends her
    // current state and settles the entry.
    let (end, seqs) = b.apply(&[upsert("amy"), upsert("bo"), upsert("amy")]);
    let log = b.calls();
    assert_eq!(sends_of(&log, "amy"), ["v1", "v2"], "{log:#?}");
    assert!(at(&log, &landed("amy", "refused")) < nth(&log, &read("amy"), 1));
    assert_eq!(b.endpoint.holds("amy").as_deref(), Some("v2"));
    assert!(b.parking.is_empty(), "{:?}", b.parking.entries());
    assert_eq!(end.handled, seqs.last().copied());

    // Parked again; then a later batch changes her: the new state goes, the entry goes.
    b.endpoint
        .refuse("amy", Outcome::Failed("SCIM PUT answered 400".into()));
    b.user("amy", &["v3", "v4"]);
    b.apply(&[upsert("amy")]);
    assert_eq!(b.parking.len(), 1);
    b.apply(&[upsert("amy")]);
    assert_eq!(sends_of(&b.calls(), "amy"), ["v4"]);
    assert!(b.parking.is_empty());

    // A delete of a parked object removes the entry once the delete is handled.
    b.endpoint
        .refuse("amy", Outcome::Failed("SCIM PUT answered 400".into()));
    b.user("amy", &["v5"]);
    b.apply(&[upsert("amy")]);
    assert_eq!(b.parking.len(), 1);
    b.apply(&[delete("amy")]);
    assert!(b.parking.is_empty());
    b.settle();
    assert_eq!(b.calls(), [Call::Delete("amy".into())]);
}

#[test]
fn a_parked_object_is_retried_after_its_backoff() {
    let mut b = Bench::new(100);
    // Refused twice; the directory changes meanwhile (the retry reads it again).
    b.user("kit", &["v1", "v2"]);
    b.endpoint
        .refuse("kit", Outcome::Failed("SCIM POST answered 400".into()));
    b.endpoint
        .refuse("kit", Outcome::Failed("SCIM POST answered 409".into()));
    b.apply(&[upsert("kit")]);
    let first = b.parking.find(&uuid_of("kit"), None).unwrap().clone();
    assert!(b.parking.due(unix_now()).is_empty(), "not before its time");

    // Its time comes: re-read (v2, never the stale v1), refused again, parked longer.
    b.wait_parked(150);
    let end = b.send(|log, _| log.contains(&landed("kit", "refused")));
    assert!(matches!(end, SendEnd::Signal));
    assert_eq!(sends_of(&b.calls(), "kit"), ["v2"]);
    let second = b.parking.find(&uuid_of("kit"), None).unwrap().clone();
    assert_eq!((second.rounds, second.attempts), (2, 2));
    assert_eq!(second.first_at, first.first_at);
    assert!(second.reason.contains("409"), "{second:?}");
    let wait = second.next_at - second.last_at;
    assert!((192..=288).contains(&wait), "doubled: {wait}");

    // Next time it goes through: the entry is gone, on disk too.
    b.wait_parked(300);
    b.control = Control::new();
    let end = b.send(|log, _| log.contains(&landed("kit", "created")));
    assert!(matches!(end, SendEnd::Signal));
    assert_eq!(sends_of(&b.calls(), "kit"), ["v2"]);
    assert_eq!(b.endpoint.holds("kit").as_deref(), Some("v2"));
    assert!(b.parking.is_empty());
    assert!(Parking::open(&b.state_dir()).unwrap().is_empty());
}

#[test]
fn parking_survives_a_restart() {
    let mut b = Bench::new(100);
    b.user("ray", &["v1"]);
    b.user("sol", &["v1"]);
    b.endpoint.refuse(
        "ray",
        Outcome::Failed("SCIM PUT answered 422: bad title".into()),
    );
    b.enqueue(&[upsert("ray"), upsert("sol")]);
    b.send(|_, depth| depth == 0);
    assert!(b.unacknowledged().is_empty());
    let path = b.state_dir().join(PARKED_FILE);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // A restart: the agent reads what was parked, with its reason and times.
    b.parking = Parking::open(&b.state_dir()).unwrap();
    let ray = b.parking.find(&uuid_of("ray"), None).expect("still parked");
    assert!(ray.reason.contains("422: bad title"));
    assert_eq!(ray.attempts, 1);
    // `idrelay retry --all` with the agent running: the request file makes it due.
    super::parking::request_retry(&b.state_dir(), None).unwrap();
    b.control = Control::new();
    let end = b.send(|log, _| log.contains(&landed("ray", "created")));
    assert!(matches!(end, SendEnd::Signal));
    assert!(b.parking.is_empty());
    assert!(Parking::open(&b.state_dir()).unwrap().is_empty());
    assert!(!b.state_dir().join(super::parking::RETRY_FILE).exists());
}

// ---------------------------------------------------------------------------------------
// The bench: fakes, and the real queue, index and gate in a temporary directory.

const BASE: &str = "dc=example,dc=org";

fn user_dn(name: &str) -> String {
    format!("uid={name},ou=people,{BASE}")
}

fn group_dn(name: &str) -> String {
    format!("cn={name},ou=groups,{BASE}")
}

/// A stable entryUUID per name (names of up to 6 bytes).
fn uuid_of(name: &str) -> String {
    assert!(name.len() <= 6);
    let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
    format!("00000000-0000-4000-8000-{hex:0>12}")
}

/// The name an object's DN starts with (`uid=alice,...` → `alice`).
fn name_of(dn: &str) -> String {
    let rdn = dn.split(',').next().unwrap_or_default();
    rdn.split_once('=')
        .map(|(_, v)| v)
        .unwrap_or(rdn)
        .to_string()
}

fn upsert(name: &str) -> Change {
    Change::Upsert {
        dn: user_dn(name),
        uuid: uuid_of(name),
    }
}

fn upsert_group(name: &str) -> Change {
    Change::Upsert {
        dn: group_dn(name),
        uuid: uuid_of(name),
    }
}

fn delete(name: &str) -> Change {
    Change::Delete {
        uuid: uuid_of(name),
        dn: None,
    }
}

fn encode(c: &Change) -> Vec<u8> {
    serde_json::to_vec(c).unwrap()
}

/// One thing a fake was asked, by object name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    /// The directory was asked for the object.
    Read(String),
    /// The endpoint was asked to provision it: a user's displayName, a group's member ids.
    Send(String, String),
    /// That provisioning landed, with this outcome.
    Landed(String, &'static str),
    /// The endpoint was asked to delete it.
    Delete(String),
    /// The endpoint was asked to provision these together (one SCIM Bulk request).
    Together(Vec<String>),
    /// The directory was asked for a group's members, in pieces.
    Members(String),
}

impl Call {
    fn object(&self) -> &str {
        match self {
            Call::Read(n)
            | Call::Send(n, _)
            | Call::Landed(n, _)
            | Call::Delete(n)
            | Call::Members(n) => n,
            Call::Together(_) => "",
        }
    }
}

fn read(n: &str) -> Call {
    Call::Read(n.into())
}

fn send(n: &str, what: &str) -> Call {
    Call::Send(n.into(), what.into())
}

fn landed(n: &str, how: &'static str) -> Call {
    Call::Landed(n.into(), how)
}

/// Where `call` first appears in `log`.
fn at(log: &[Call], call: &Call) -> usize {
    nth(log, call, 0)
}

/// Where `call` appears for the `k`-th time (from 0) in `log`.
fn nth(log: &[Call], call: &Call, k: usize) -> usize {
    log.iter()
        .enumerate()
        .filter(|(_, c)| *c == call)
        .nth(k)
        .map(|(i, _)| i)
        .unwrap_or_else(|| panic!("{call:?} #{k} not in {log:#?}"))
}

fn count(log: &[Call], call: &Call) -> usize {
    log.iter().filter(|c| *c == call).count()
}

/// What the endpoint was asked to provision for `name`, in order.
fn sends_of(log: &[Call], name: &str) -> Vec<String> {
    log.iter()
        .filter_map(|c| match c {
            Call::Send(n, what) if n == name => Some(what.clone()),
            _ => None,
        })
        .collect()
}

type Log = Rc<RefCell<Vec<Call>>>;

/// A directory whose entries change from one read to the next as a test says.
#[derive(Default)]
struct FakeDirectory {
    log: Log,
    /// By DN, the versions successive reads return (the last one stays).
    entries: RefCell<HashMap<String, VecDeque<Entry>>>,
    /// By DN, how many reads fail before one succeeds.
    read_faults: RefCell<HashMap<String, u32>>,
    /// DNs that no longer match their scope filter.
    outside_filter: RefCell<HashSet<String>>,
    /// Anchors an entry still holds, with that entry's DN.
    holders: RefCell<Vec<(String, String)>>,
    /// By DN, how many member reads (in pieces) fail before one succeeds.
    member_faults: RefCell<HashMap<String, u32>>,
    /// Whether a read asked for `member` with the entry.
    asked_member: Cell<bool>,
}

impl DirectoryReads for FakeDirectory {
    async fn read(&self, dn: &str, attrs: &[&str]) -> Result<Option<Entry>, LdapError> {
        self.log.borrow_mut().push(Call::Read(name_of(dn)));
        let with_members = attrs.iter().any(|a| a.eq_ignore_ascii_case("member"));
        self.asked_member
            .set(self.asked_member.get() || with_members);
        smol::future::yield_now().await;
        if let Some(n) = self
            .read_faults
            .borrow_mut()
            .get_mut(dn)
            .filter(|n| **n > 0)
        {
            *n -= 1;
            return Err(LdapError::Protocol {
                detail: "connection reset".into(),
            });
        }
        let mut entries = self.entries.borrow_mut();
        let Some(versions) = entries.get_mut(dn) else {
            return Ok(None);
        };
        let mut entry = if versions.len() > 1 {
            versions.pop_front()
        } else {
            versions.front().cloned()
        };
        if let (Some(e), false) = (entry.as_mut(), with_members) {
            e.take("member");
        }
        Ok(entry)
    }

    async fn member_dns(
        &self,
        dn: &str,
        how: crate::ldap::members::MemberRead,
        _bases: &[String],
        scratch: &std::path::Path,
    ) -> Result<MemberDnList, MemberReadError> {
        self.log.borrow_mut().push(Call::Members(name_of(dn)));
        let values: Vec<Vec<u8>> = self.entries.borrow()[dn][0].bytes("member").to_vec();
        let mut b = MemberIdsBuilder::spilling(scratch, crate::sync::member_read::MEMORY_BUDGET);
        let mut pieces = 0;
        // Pieces of two, one scheduler turn each; a fault cuts the read after the first.
        for piece in values.chunks(2) {
            smol::future::yield_now().await;
            if pieces == 1 {
                if let Some(n) = self
                    .member_faults
                    .borrow_mut()
                    .get_mut(dn)
                    .filter(|n| **n > 0)
                {
                    *n -= 1;
                    return Err(MemberReadError::Ldap(LdapError::Protocol {
                        detail: "connection reset".into(),
                    }));
                }
            }
            pieces += 1;
            for v in piece {
                b.push(std::str::from_utf8(v).unwrap());
            }
        }
        Ok(MemberDnList {
            dns: b.try_finish().map_err(MemberReadError::Scratch)?,
            read: values.len() as u64,
            pieces,
            how,
        })
    }

    async fn matches(&self, dn: &str, _filter: &str) -> Result<bool, LdapError> {
        Ok(self.entries.borrow().contains_key(dn) && !self.outside_filter.borrow().contains(dn))
    }

    async fn find_one(&self, _base: &str, filter: &str) -> Result<Option<String>, LdapError> {
        let holders = self.holders.borrow();
        let held = holders
            .iter()
            .find(|(anchor, _)| filter.contains(anchor.as_str()));
        Ok(held.map(|(_, dn)| dn.clone()))
    }
}

/// An endpoint that holds what it was sent and answers as a test says.
#[derive(Default)]
struct FakeEndpoint {
    log: Log,
    /// By object name, scheduler turns a provisioning takes (1 when not set).
    slow: HashMap<String, usize>,
    /// By object name, answers given before a provisioning succeeds.
    refusals: RefCell<HashMap<String, VecDeque<Outcome>>>,
    /// A stop request raised once this object's provisioning or delete landed.
    stop_after: Option<(String, Control)>,
    /// What the endpoint holds, by object name (as in [`Call::Send`]).
    held: RefCell<HashMap<String, String>>,
    /// Down: its health probe fails too (an outage, not one object's trouble).
    down: Cell<bool>,
    /// Offers SCIM Bulk: user replacements are handed over together.
    together: bool,
    /// Retry rounds the whole endpoint is in an outage for (its watch says so, with a
    /// wait; its health probe fails meanwhile).
    outage_rounds: Cell<u32>,
}

impl FakeEndpoint {
    fn slow(&mut self, name: &str, turns: usize) {
        self.slow.insert(name.into(), turns);
    }

    fn refuse(&mut self, name: &str, answer: Outcome) {
        let mut r = self.refusals.borrow_mut();
        r.entry(name.into()).or_default().push_back(answer);
    }

    fn stop_after(&mut self, name: &str, control: Control) {
        self.stop_after = Some((name.into(), control));
    }

    fn holds(&self, name: &str) -> Option<String> {
        self.held.borrow().get(name).cloned()
    }

    fn landed(&self, name: &str) {
        if let Some((n, control)) = &self.stop_after {
            if n == name {
                control.raise(Request::Stop);
            }
        }
    }
}

impl EndpointWrites for FakeEndpoint {
    async fn provision(&self, job: &Job) -> Outcome {
        let name = name_of(&job.dn);
        let what = match job.kind {
            ResourceKind::User => job.body["displayName"].as_str().unwrap_or("").to_string(),
            ResourceKind::Group => job.members.iter().collect::<Vec<_>>().join(" "),
        };
        self.log
            .borrow_mut()
            .push(Call::Send(name.clone(), what.clone()));
        for _ in 0..self.slow.get(&name).copied().unwrap_or(1) {
            smol::future::yield_now().await;
        }
        let refused = self
            .refusals
            .borrow_mut()
            .get_mut(&name)
            .and_then(VecDeque::pop_front);
        let (outcome, how) = match refused {
            Some(o @ Outcome::Failed(_)) => (o, "refused"),
            Some(o) => (o, "unavailable"),
            None => {
                self.held.borrow_mut().insert(name.clone(), what);
                match &job.known_id {
                    Some(id) => (Outcome::Replaced(id.clone()), "replaced"),
                    None => (Outcome::Created(format!("id-{name}")), "created"),
                }
            }
        };
        self.log.borrow_mut().push(Call::Landed(name.clone(), how));
        self.landed(&name);
        outcome
    }

    async fn delete(&self, target: &Target) -> Result<&'static str, ScimError> {
        let name = name_of(&target.dn);
        self.log.borrow_mut().push(Call::Delete(name.clone()));
        smol::future::yield_now().await;
        self.held.borrow_mut().remove(&name);
        self.landed(&name);
        Ok("deleted")
    }

    async fn reachable(&self) -> bool {
        smol::future::yield_now().await;
        !self.down.get() && self.outage_rounds.get() == 0
    }

    fn outage_wait(&self) -> Option<Duration> {
        let n = self.outage_rounds.get();
        self.outage_rounds.set(n.checked_sub(1)?);
        Some(Duration::ZERO)
    }

    async fn sends_together(&self) -> bool {
        self.together
    }

    /// One request's worth: logged as one call, then each job answered as it would be on
    /// its own (refusals included), as a Bulk answer reports each operation.
    async fn provision_together(&self, jobs: Vec<Job>) -> Vec<(Job, Outcome)> {
        let names = jobs.iter().map(|j| name_of(&j.dn)).collect();
        self.log.borrow_mut().push(Call::Together(names));
        let mut out = Vec::new();
        for job in jobs {
            let o = self.provision(&job).await;
            out.push((job, o));
        }
        out
    }
}

struct Bench {
    /// `scope.groups`' allowed set, when a test scopes by group.
    allowed: Option<crate::sync::scope_groups::AllowedSet>,
    log: Log,
    dir: FakeDirectory,
    endpoint: FakeEndpoint,
    profile: SyncProfile,
    settings: FollowSettings,
    control: Control,
    agent: AgentState,
    index: AnchorIndex,
    gate: DeleteGate,
    parking: Parking,
    queue: SharedQueue,
    // Last: removed after everything that has files in it.
    _state: TempDir,
}

impl Bench {
    /// A bench whose delete gate lets `threshold` deletes through per hour.
    fn new(threshold: u32) -> Bench {
        let state = TempDir::new();
        let log = Log::default();
        let mut queue = Queue::open(QueueConfig::new(state.0.join("queue"))).unwrap();
        queue
            .mark_resync_done(b"after the first full pass")
            .unwrap();
        let policy = Policy {
            threshold,
            interval: Duration::from_secs(3600),
            // The count rule alone: these tests weigh bursts against `threshold`.
            share_percent: 0,
            floor: 0,
        };
        Bench {
            allowed: None,
            dir: FakeDirectory {
                log: log.clone(),
                ..FakeDirectory::default()
            },
            endpoint: FakeEndpoint {
                log: log.clone(),
                ..FakeEndpoint::default()
            },
            log,
            profile: SyncProfile::default_for(ProfileKind::OpenLdap),
            settings: FollowSettings {
                pass: PassSettings {
                    include: vec![BASE.into()],
                    user_filter: "(objectClass=inetOrgPerson)".into(),
                    group_filter: "(objectClass=groupOfNames)".into(),
                    concurrency: 4,
                    adaptive: true,
                    mode: ProvisionMode::plain(false, false),
                    quiet: true,
                    user_delete: UserDelete::Delete,
                    scope_groups: None,
                    flatten: None,
                    member_read: crate::ldap::members::MemberRead::Entry,
                },
                base_dn: BASE.into(),
                state_dir: state.0.clone(),
                full_pass_interval: Duration::ZERO,
                feed: Feed::Syncrepl,
                park_after: 3,
                // Deletes are weighed at the sender's next turn (tests that need a window
                // set one).
                delete_settle: Duration::ZERO,
                persist_catch_up: None,
            },
            control: Control::new(),
            agent: AgentState::new(false),
            index: AnchorIndex::empty(&state.0),
            gate: DeleteGate::open(&state.0, policy).unwrap(),
            parking: Parking::empty(&state.0),
            queue: Arc::new(Mutex::new(queue)),
            _state: state,
        }
    }

    /// Time passes: every parked object's next try comes `secs` earlier.
    fn wait_parked(&mut self, secs: u64) {
        let now = unix_now();
        let due = self.parking.due(now + secs).len();
        self.parking.make_due(None, now);
        assert_eq!(due, self.parking.due(now).len(), "only what was due then");
    }

    /// The state directory.
    fn state_dir(&self) -> std::path::PathBuf {
        self._state.0.clone()
    }

    /// A user whose successive reads return these displayNames.
    fn user(&self, name: &str, versions: &[&str]) {
        let entries = versions.iter().map(|v| {
            Entry::new(user_dn(name))
                .with("objectClass", "inetOrgPerson")
                .with("entryUUID", uuid_of(name))
                .with("uid", name)
                .with("cn", name)
                .with("sn", name)
                .with("displayName", *v)
        });
        let mut all = self.dir.entries.borrow_mut();
        all.insert(user_dn(name), entries.collect());
    }

    /// A group of these users.
    fn group(&self, name: &str, members: &[&str]) {
        let mut e = Entry::new(group_dn(name))
            .with("objectClass", "groupOfNames")
            .with("entryUUID", uuid_of(name))
            .with("cn", name);
        for m in members {
            e.add("member", user_dn(m));
        }
        let mut all = self.dir.entries.borrow_mut();
        all.insert(group_dn(name), VecDeque::from([e]));
    }

    /// The calls so far; the log starts again empty.
    fn calls(&self) -> Vec<Call> {
        std::mem::take(&mut *self.log.borrow_mut())
    }

    /// Appends `changes` to the queue as one batch.
    fn enqueue(&self, changes: &[Change]) {
        let payloads: Vec<Vec<u8>> = changes.iter().map(encode).collect();
        let mut q = self.queue.lock().unwrap();
        q.append(&payloads, b"after these changes").unwrap();
    }

    /// The changes the queue still holds unacknowledged.
    fn unacknowledged(&self) -> Vec<Change> {
        let mut q = self.queue.lock().unwrap();
        let records = q.read(None, 1000).unwrap();
        let decoded = records.iter().map(|r| serde_json::from_slice(&r.payload));
        decoded.collect::<Result<_, _>>().unwrap()
    }

    /// Queues `changes` and hands them to the batch machine as the sender would (deletes
    /// stay in the gate's settle window: [`Bench::settle`] sends them); then acknowledges
    /// all of them so the next call starts afresh. The calls they made start the log.
    fn apply(&mut self, changes: &[Change]) -> (BatchEnd, Vec<u64>) {
        self.apply_payloads(changes.iter().map(encode).collect())
    }

    fn apply_payloads(&mut self, payloads: Vec<Vec<u8>>) -> (BatchEnd, Vec<u64>) {
        self.calls();
        let records = {
            let mut q = self.queue.lock().unwrap();
            q.append(&payloads, b"after these changes").unwrap();
            q.read(None, 1000).unwrap()
        };
        let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
        let attrs = self.profile.object_attributes();
        let attrs: Vec<&str> = attrs.iter().map(String::as_str).collect();
        let ctx = SendCtx {
            dir: &self.dir,
            endpoint: &self.endpoint,
            profile: &self.profile,
            settings: &self.settings,
            control: &self.control,
            agent: &self.agent,
            allowed: self.allowed.as_ref(),
        };
        let end = smol::block_on(apply_batch(
            &ctx,
            &mut self.index,
            &mut self.gate,
            &mut self.parking,
            self.settings.park_after,
            &self.queue,
            &attrs,
            records,
        ));
        if let Some(&last) = seqs.last() {
            self.queue.lock().unwrap().ack(last).unwrap();
        }
        (end, seqs)
    }

    /// Runs the sender until the deletes in the gate's settle window are carried out (the
    /// window is closed at its first turn: no settle time in the bench).
    fn settle(&mut self) {
        let want = self.gate.pending().len() + self.gate.going().len();
        let deletes = |log: &[Call]| log.iter().filter(|c| matches!(c, Call::Delete(_))).count();
        let end = self.send(|log, _| deletes(log) >= want);
        assert!(matches!(end, SendEnd::Signal));
        assert!(self.gate.pending().is_empty() && self.gate.going().is_empty());
    }

    /// Runs the sender over what is queued until it ends: by a stop request the fakes
    /// raise, or the one raised once `done(calls, unacknowledged changes)` holds.
    fn send(&mut self, done: impl Fn(&[Call], u64) -> bool) -> SendEnd {
        self.calls();
        let ctx = SendCtx {
            dir: &self.dir,
            endpoint: &self.endpoint,
            profile: &self.profile,
            settings: &self.settings,
            control: &self.control,
            agent: &self.agent,
            allowed: self.allowed.as_ref(),
        };
        let feed = smol::spawn(std::future::pending::<String>());
        let (_notify, notify_rx) = smol::channel::bounded::<()>(1);
        let (log, queue, control) = (&self.log, &self.queue, &self.control);
        let watch = async {
            let started = Instant::now();
            loop {
                let depth = queue.lock().unwrap().depth();
                if done(&log.borrow(), depth) {
                    control.raise(Request::Stop);
                }
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "the sender did not finish: {:#?}",
                    log.borrow()
                );
                smol::Timer::after(Duration::from_millis(1)).await;
            }
        };
        let sender = send_loop(
            &ctx,
            &mut self.index,
            &mut self.gate,
            &mut self.parking,
            &self.queue,
            &feed,
            &notify_rx,
        );
        smol::block_on(smol::future::or(sender, watch))
    }
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "idrelay-follow-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
