//! Live tests of the RFC 4533 content-sync stream (`Directory::content_sync`) against the
//! test OpenLDAP (syncprov overlay).
//!
//! Addresses and credentials come from the OPENLDAP_* variables that the project's test
//! script exports; a missing variable fails the test. Each test writes under its own OU
//! `ou=syncfeed-<pid>-<test>` (deleted first, in case an earlier run died, and again at the
//! end, even on failure) through `ldapadd`/`ldapmodify`/`ldapdelete` as the admin; the feed
//! is read as the read-only `syncer` (and once as the admin). The tests take a process-wide
//! lock so that counting this process's sockets is not disturbed by a parallel test.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use idrelay::ldap::{Directory, DirectoryConfig, Entry, LdapError, Scope, SyncEvent, SyncMode};
use idrelay::secret::Secret;

mod common;
use common::{env, ldap_tool};

static SERIAL: Mutex<()> = Mutex::new(());

fn config(as_admin: bool) -> DirectoryConfig {
    let (dn, pw) = if as_admin {
        ("OPENLDAP_ROOT_DN", "OPENLDAP_ROOT_PW")
    } else {
        ("OPENLDAP_SYNC_DN", "OPENLDAP_SYNC_PW")
    };
    let mut cfg = DirectoryConfig::new(env("OPENLDAP_URL"), env(dn), Secret::new(env(pw)));
    cfg.timeout = Duration::from_secs(10);
    cfg
}

/// Runs an ldap-utils tool as the admin with `input` on stdin; panics with its stderr on failure
/// unless `tolerate` lists its exit code.
fn tool(name: &str, extra: &[&str], input: &str, tolerate: &[i32]) {
    let (code, err) = ldap_tool(
        &env("OPENLDAP_URL"),
        &env("OPENLDAP_ROOT_DN"),
        &env("OPENLDAP_ROOT_PW"),
        name,
        extra,
        input,
    );
    if code != 0 && !tolerate.contains(&code) {
        panic!("{name} failed ({code}): {err}\n{input}");
    }
}

fn modify(ldif: &str) {
    tool("ldapmodify", &[], ldif, &[]);
}

/// Test OU under the base; removed on drop.
struct Ou {
    dn: String,
}

impl Ou {
    fn new(test: &str) -> Ou {
        let dn = format!(
            "ou=syncfeed-{}-{test},{}",
            std::process::id(),
            env("OPENLDAP_BASE_DN")
        );
        let ou = Ou { dn };
        ou.remove();
        modify(&format!(
            "dn: {}\nchangetype: add\nobjectClass: organizationalUnit\nou: syncfeed-{}-{test}\n",
            ou.dn,
            std::process::id()
        ));
        ou
    }

    fn user_dn(&self, uid: &str) -> String {
        format!("uid={uid},{}", self.dn)
    }

    fn add_user(&self, uid: &str) {
        modify(&format!(
            "dn: {}\nchangetype: add\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\n",
            self.user_dn(uid)
        ));
    }

    fn set_title(&self, uid: &str, title: &str) {
        modify(&format!(
            "dn: {}\nchangetype: modify\nreplace: title\ntitle: {title}\n",
            self.user_dn(uid)
        ));
    }

    fn rename(&self, uid: &str, new_uid: &str) {
        modify(&format!(
            "dn: {}\nchangetype: modrdn\nnewrdn: uid={new_uid}\ndeleteoldrdn: 1\n",
            self.user_dn(uid)
        ));
    }

    fn delete(&self, uid: &str) {
        modify(&format!("dn: {}\nchangetype: delete\n", self.user_dn(uid)));
    }

    fn remove(&self) {
        // 32 noSuchObject: nothing to remove.
        tool("ldapdelete", &["-r", &self.dn], "", &[32]);
    }
}

impl Drop for Ou {
    fn drop(&mut self) {
        self.remove();
    }
}

fn connect(as_admin: bool) -> Directory {
    smol::block_on(Directory::connect(&config(as_admin))).expect("connect to the test OpenLDAP")
}

fn entry_uuid(dir: &Directory, dn: &str) -> String {
    let e = smol::block_on(dir.read(dn, &["entryUUID"]))
        .unwrap()
        .unwrap_or_else(|| panic!("{dn} not found"));
    e.first_str("entryUUID").unwrap().to_owned()
}

/// Every event of a refreshOnly search, which must end with `None`.
fn refresh_only(dir: &Directory, base: &str, cookie: Option<Vec<u8>>) -> Vec<SyncEvent> {
    smol::block_on(async {
        let mut s = dir.content_sync(
            base,
            "(objectClass=*)",
            &["uid", "title"],
            cookie,
            SyncMode::RefreshOnly,
        );
        let mut all = Vec::new();
        while let Some(ev) = s.next().await {
            all.push(ev.expect("refreshOnly event"));
        }
        assert!(s.is_complete());
        all
    })
}

fn upserts(events: &[SyncEvent]) -> Vec<(String, Entry)> {
    events
        .iter()
        .filter_map(|e| match e {
            SyncEvent::Upsert { uuid, entry } => Some((uuid.clone(), entry.clone())),
            _ => None,
        })
        .collect()
}

fn deleted(events: &[SyncEvent]) -> Vec<String> {
    let mut out = Vec::new();
    for e in events {
        match e {
            SyncEvent::IdSet {
                uuids,
                deletes: true,
            } => out.extend(uuids.iter().cloned()),
            SyncEvent::Delete { uuid, .. } => out.push(uuid.clone()),
            _ => {}
        }
    }
    out
}

fn last_cookie(events: &[SyncEvent]) -> Vec<u8> {
    match events.last() {
        Some(SyncEvent::Cookie(c)) => c.clone(),
        other => panic!("the last event should be a cookie, got {other:?}"),
    }
}

#[test]
fn refresh_only_lists_everything_then_only_the_changes_after_the_cookie() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let ou = Ou::new("ro");
    for u in ["a", "b", "c"] {
        ou.add_user(u);
    }
    let dir = connect(false);
    let t = Instant::now();
    let first = refresh_only(&dir, &ou.dn, None);
    eprintln!("full refresh of 4 entries: {:?}", t.elapsed());
    let ups = upserts(&first);
    let mut dns: Vec<&str> = ups.iter().map(|(_, e)| e.dn.as_str()).collect();
    dns.sort();
    let mut want = vec![
        ou.user_dn("a"),
        ou.user_dn("b"),
        ou.user_dn("c"),
        ou.dn.clone(),
    ];
    want.sort();
    assert_eq!(dns, want);
    for (uuid, entry) in &ups {
        assert_eq!(
            entry.first_str("entryUUID"),
            Some(uuid.as_str()),
            "uuid text form"
        );
        assert_eq!(uuid, &entry_uuid(&dir, &entry.dn));
    }
    assert!(first
        .iter()
        .any(|e| matches!(e, SyncEvent::RefreshDone { .. })));
    let cookie = last_cookie(&first);
    assert!(String::from_utf8_lossy(&cookie).contains("csn="));

    let uuid_b = entry_uuid(&dir, &ou.user_dn("b"));
    let uuid_c = entry_uuid(&dir, &ou.user_dn("c"));
    ou.add_user("d");
    ou.set_title("a", "changed");
    ou.rename("b", "b2");
    ou.delete("c");
    let uuid_a = entry_uuid(&dir, &ou.user_dn("a"));
    let uuid_d = entry_uuid(&dir, &ou.user_dn("d"));

    let second = refresh_only(&dir, &ou.dn, Some(cookie.clone()));
    eprintln!("refresh with cookie: {second:?}");
    let mut got: Vec<String> = upserts(&second).into_iter().map(|(u, _)| u).collect();
    got.sort();
    let mut want = vec![uuid_a.clone(), uuid_b.clone(), uuid_d];
    want.sort();
    assert_eq!(got, want, "only the added, modified and renamed entries");
    let renamed = upserts(&second)
        .into_iter()
        .find(|(u, _)| *u == uuid_b)
        .unwrap()
        .1;
    assert_eq!(renamed.dn, ou.user_dn("b2"), "a rename keeps the uuid");
    let modified = upserts(&second)
        .into_iter()
        .find(|(u, _)| *u == uuid_a)
        .unwrap()
        .1;
    assert_eq!(modified.first_str("title"), Some("changed"));
    assert_eq!(deleted(&second), vec![uuid_c]);
    assert!(second.contains(&SyncEvent::RefreshDone {
        refresh_deletes: true
    }));
    let next_cookie = last_cookie(&second);
    assert_ne!(next_cookie, cookie);

    // Nothing changed since: the same refresh is empty apart from the markers.
    let third = refresh_only(&dir, &ou.dn, Some(next_cookie));
    assert!(
        upserts(&third).is_empty() && deleted(&third).is_empty(),
        "{third:?}"
    );

    // The admin (rootdn) sees the same feed.
    let admin = connect(true);
    assert_eq!(upserts(&refresh_only(&admin, &ou.dn, None)).len(), 4);
}

/// The next event, failing after `within`.
fn next_within(
    s: &mut idrelay::ldap::SyncStream,
    within: Duration,
) -> Result<SyncEvent, LdapError> {
    smol::block_on(async {
        let next = async { Some(s.next().await) };
        let timer = async {
            smol::Timer::after(within).await;
            None
        };
        match smol::future::or(next, timer).await {
            Some(Some(ev)) => ev,
            Some(None) => panic!("the persist stream ended"),
            None => panic!("no event within {within:?}"),
        }
    })
}

/// Waits for the event that `change` causes: returns it, its cookie and the latency.
fn expect_change(
    s: &mut idrelay::ldap::SyncStream,
    change: impl FnOnce(),
) -> (SyncEvent, Vec<u8>, Duration) {
    let t = Instant::now();
    change();
    let ev = next_within(s, Duration::from_secs(5)).unwrap();
    let latency = t.elapsed();
    let cookie = match next_within(s, Duration::from_secs(5)).unwrap() {
        SyncEvent::Cookie(c) => c,
        other => panic!("expected the cookie after {ev:?}, got {other:?}"),
    };
    (ev, cookie, latency)
}

#[test]
fn refresh_and_persist_delivers_each_change_with_a_cookie() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let ou = Ou::new("rp");
    ou.add_user("a");
    let dir = connect(false);
    let mut s = dir.content_sync(
        &ou.dn,
        "(objectClass=*)",
        &["uid", "title"],
        None,
        SyncMode::RefreshAndPersist,
    );
    let mut refresh = Vec::new();
    loop {
        let ev = next_within(&mut s, Duration::from_secs(10)).unwrap();
        let done = matches!(ev, SyncEvent::RefreshDone { .. });
        refresh.push(ev);
        if done {
            break;
        }
    }
    assert_eq!(upserts(&refresh).len(), 2, "{refresh:?}");
    // slapd ends the persist refresh with a syncInfo that carries the cookie of the refresh.
    let ev = next_within(&mut s, Duration::from_secs(10)).unwrap();
    assert!(matches!(ev, SyncEvent::Cookie(_)), "{ev:?}");

    let mut cookies = Vec::new();
    let (ev, c, t_add) = expect_change(&mut s, || ou.add_user("n"));
    let uuid_n = entry_uuid(&dir, &ou.user_dn("n"));
    assert!(
        matches!(&ev, SyncEvent::Upsert { uuid, entry } if *uuid == uuid_n && entry.dn == ou.user_dn("n")),
        "{ev:?}"
    );
    cookies.push(c);

    let (ev, c, t_mod) = expect_change(&mut s, || ou.set_title("n", "boss"));
    assert!(
        matches!(&ev, SyncEvent::Upsert { uuid, entry } if *uuid == uuid_n && entry.first_str("title") == Some("boss")),
        "{ev:?}"
    );
    cookies.push(c);

    let (ev, c, t_ren) = expect_change(&mut s, || ou.rename("n", "n2"));
    assert!(
        matches!(&ev, SyncEvent::Upsert { uuid, entry } if *uuid == uuid_n && entry.dn == ou.user_dn("n2")),
        "{ev:?}"
    );
    cookies.push(c);

    let (ev, c, t_del) = expect_change(&mut s, || ou.delete("n2"));
    assert!(
        matches!(&ev, SyncEvent::Delete { uuid, .. } if *uuid == uuid_n),
        "{ev:?}"
    );
    cookies.push(c);

    eprintln!("latency add {t_add:?} modify {t_mod:?} modrdn {t_ren:?} delete {t_del:?}");
    for t in [t_add, t_mod, t_ren, t_del] {
        // The brief asks for ~1 s; ldapmodify's own start-up is part of the measurement.
        assert!(t < Duration::from_secs(2), "{t:?}");
    }
    cookies.dedup();
    assert_eq!(cookies.len(), 4, "every change has a new cookie");
}

/// Sockets this process has open (from /proc/self/fd).
fn open_sockets() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

/// The most bytes the kernel holds unread on one of this process's TCP connections to
/// `port` (the receive queue, from /proc/self/net/tcp and tcp6, matched by socket inode).
fn unread_bytes_from(port: u16) -> u64 {
    let ours: std::collections::HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|t| {
            let t = t.to_string_lossy().into_owned();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut most = 0;
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let remote_port = f[2].rsplit(':').next().unwrap();
            if u16::from_str_radix(remote_port, 16) != Ok(port) || !ours.contains(f[9]) {
                continue;
            }
            let rx = f[4].split(':').nth(1).unwrap();
            most = most.max(u64::from_str_radix(rx, 16).unwrap());
        }
    }
    most
}

/// A sync search whose consumer stops reading must hold the server back through TCP, not
/// pile the server's replies up in the agent's memory: ldap3 decodes whatever the socket
/// holds into an unbounded channel, so the search's connection is paused while its output
/// channel is full (`src/ldap/gate.rs`). Seen from outside: the replies wait unread in the
/// kernel's receive queue. Before the gate they were read at once (1,000,000 entries listed
/// to a busy consumer: 282-437 MiB resident).
#[test]
fn a_consumer_that_stops_reading_holds_the_server_back_in_tcp() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let ou = Ou::new("slow");
    // About 6 MB of replies: more than the socket buffers and one turn of ldap3's task.
    const N: usize = 3000;
    let filler = "x".repeat(2000);
    let ldif: String = (0..N)
        .map(|i| {
            format!(
                "dn: cn=d{i},{}\nchangetype: add\nobjectClass: device\ncn: d{i}\ndescription: {filler}\n\n",
                ou.dn
            )
        })
        .collect();
    modify(&ldif);
    let url = env("OPENLDAP_URL");
    let port: u16 = url
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let dir = connect(false);
    let mut s = dir.content_sync(
        &ou.dn,
        "(objectClass=device)",
        &["description"],
        None,
        SyncMode::RefreshOnly,
    );
    assert!(matches!(
        next_within(&mut s, Duration::from_secs(10)),
        Ok(SyncEvent::Upsert { .. })
    ));
    // The consumer stops reading. Two seconds are plenty for a client that reads on to take
    // in all 6 MB; what a paused connection has not read stays in the queue.
    std::thread::sleep(Duration::from_secs(2));
    let unread = (0..10)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            unread_bytes_from(port)
        })
        .min()
        .unwrap();
    assert!(
        unread >= 32 * 1024,
        "the LDAP client went on reading while nobody consumed ({unread} bytes left unread)"
    );
    // Nothing is lost: the search goes on when the consumer does.
    let mut upserts = 1;
    let done = smol::block_on(async {
        while let Some(ev) = s.next().await {
            if let SyncEvent::Upsert { .. } = ev.expect("refreshOnly event") {
                upserts += 1;
            }
        }
        s.is_complete()
    });
    assert!(done);
    assert_eq!(upserts, N);
}

#[test]
fn dropping_a_persist_stream_abandons_the_search_and_frees_its_connection() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let ou = Ou::new("drop");
    ou.add_user("a");
    let dir = connect(false);
    let before = open_sockets();
    for round in 0..3 {
        let mut s = dir.content_sync(
            &ou.dn,
            "(objectClass=*)",
            &["uid"],
            None,
            SyncMode::RefreshAndPersist,
        );
        while !matches!(
            next_within(&mut s, Duration::from_secs(10)).unwrap(),
            SyncEvent::RefreshDone { .. }
        ) {}
        assert_eq!(
            open_sockets(),
            before + 1,
            "round {round}: one connection per sync search"
        );
        drop(s);
        let t = Instant::now();
        while open_sockets() > before {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "round {round}: connection leaked"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // The directory still serves, on the same handle.
    let found = smol::block_on(
        dir.search(&ou.dn, Scope::Subtree, "(uid=a)", &["uid"])
            .collect(),
    )
    .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(upserts(&refresh_only(&dir, &ou.dn, None)).len(), 2);
}

#[test]
fn a_bogus_cookie_is_served_like_no_cookie() {
    // Observed against slapd 2.5 syncprov: a cookie whose csn it cannot parse is not an error
    // (no 4096): it answers exactly as to no cookie: every entry (flagged add), then SyncDone
    // with refreshDeletes=TRUE and a fresh cookie. Nothing tells the consumer that its cookie
    // was ignored, and deletions since that cookie are NOT reported: a consumer that loses
    // or corrupts its cookie must run a full pass (and prune by what it saw), not trust this
    // refresh's delete list.
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let ou = Ou::new("bogus");
    ou.add_user("a");
    let dir = connect(false);
    let events = refresh_only(&dir, &ou.dn, Some(b"rid=000,csn=bogus".to_vec()));
    eprintln!("bogus cookie: {events:?}");
    assert_eq!(upserts(&events).len(), 2);
    assert!(deleted(&events).is_empty());
    assert!(events.contains(&SyncEvent::RefreshDone {
        refresh_deletes: true
    }));
    assert!(String::from_utf8_lossy(&last_cookie(&events)).contains("csn=2"));
}

#[test]
fn sync_errors_are_errors_not_an_empty_feed() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = connect(false);
    let base = format!(
        "ou=syncfeed-missing-{},{}",
        std::process::id(),
        env("OPENLDAP_BASE_DN")
    );
    smol::block_on(async {
        let mut s = dir.content_sync(&base, "(objectClass=*)", &[], None, SyncMode::RefreshOnly);
        match s.next().await {
            Some(Err(e)) => {
                assert_eq!(
                    e.code(),
                    Some(idrelay::ldap::ResultCode::NO_SUCH_OBJECT),
                    "{e}"
                );
                assert!(!e.is_sync_refresh_required());
            }
            other => panic!("expected noSuchObject, got {other:?}"),
        }
        assert!(s.next().await.is_none());
        assert!(!s.is_complete());
        let mut s = dir.content_sync(&base, "(objectClass=", &[], None, SyncMode::RefreshOnly);
        assert!(matches!(
            s.next().await,
            Some(Err(LdapError::InvalidFilter { .. }))
        ));
    });
}

#[test]
fn a_persist_search_waits_for_changes_longer_than_the_operation_timeout() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let ou = Ou::new("idle");
    let mut cfg = config(false);
    cfg.timeout = Duration::from_millis(500);
    let dir = smol::block_on(Directory::connect(&cfg)).unwrap();
    let mut s = dir.content_sync(
        &ou.dn,
        "(objectClass=*)",
        &["uid"],
        None,
        SyncMode::RefreshAndPersist,
    );
    while !matches!(
        next_within(&mut s, Duration::from_secs(10)).unwrap(),
        SyncEvent::RefreshDone { .. }
    ) {}
    assert!(matches!(
        next_within(&mut s, Duration::from_secs(5)).unwrap(),
        SyncEvent::Cookie(_)
    ));
    // Idle for three timeouts: the search must still be there.
    std::thread::sleep(Duration::from_millis(1500));
    let (ev, _, _) = expect_change(&mut s, || ou.add_user("late"));
    assert!(
        matches!(&ev, SyncEvent::Upsert { entry, .. } if entry.dn == ou.user_dn("late")),
        "{ev:?}"
    );
}
