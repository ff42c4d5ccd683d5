//! Live tests of the AD change-feed primitives (`idrelay::ldap` DirSync and uSN polling)
//! against the real Samba AD DC of the test bed.
//!
//! The DC's coordinates come from the AD_* variables that `scripts/test.sh` exports. When
//! `AD_LDAP_URL` is absent each test prints a note and returns (the only case that skips).
//! Every test writes under an OU of its own (`OU=dirsync-<pid>-<nanos>`, via
//! `common::TestOu`), which is deleted when the test ends, even on failure. DirSync always
//! covers the whole naming context, and other tests (and other people) write to the same
//! domain at the same time, so every assertion looks only at objects of the test's own OU
//! (by DN suffix or objectGUID).
//!
//! `initial_dirsync_and_paged_search_of_the_whole_domain` prints timings; set
//! `IDRELAY_AD_FEED_BENCH_USERS=N` to add N users in its OU first.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Dir, TestOu};
use idrelay::ldap::{
    AdChange, AdFeedError, DirSyncBatch, DirSyncFlags, DirSyncItem, Directory, DirectoryConfig,
    Scope,
};
use idrelay::secret::Secret;

/// The Samba test DC, or `None` (with a note) when its variables are not set.
fn samba() -> Option<Dir> {
    if std::env::var_os("AD_LDAP_URL").is_none() {
        eprintln!(
            "note: AD_LDAP_URL is not set; skipping the live AD feed test (run it through \
             scripts/test.sh)"
        );
        return None;
    }
    Some(Dir::samba())
}

fn connect_as(dir: &Dir, dn: &str, pw: &str) -> Directory {
    let mut cfg = DirectoryConfig::new(dir.url.clone(), dn, Secret::new(pw));
    cfg.timeout = Duration::from_secs(60);
    smol::block_on(Directory::connect(&cfg))
        .unwrap_or_else(|e| panic!("connect to {} as {dn} failed: {e}", dir.url))
}

fn admin(dir: &Dir) -> Directory {
    connect_as(dir, &dir.admin_dn, &dir.admin_pw)
}

/// `unicodePwd` value: base64 of the quoted password in UTF-16LE.
fn unicode_pwd(pw: &str) -> String {
    let quoted: Vec<u8> = format!("\"{pw}\"")
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect();
    idrelay::base64::encode(&quoted)
}

/// A domain-unique sAMAccountName (at most 20 characters) for user `n` of an OU.
fn sam(ou: &TestOu, n: &str) -> String {
    let tail: String = ou
        .dn
        .split(',')
        .next()
        .unwrap()
        .chars()
        .rev()
        .take(6)
        .collect();
    format!("df{tail}{n}")
}

/// DirSync until `more` is false; all changes, the last cookie.
fn dirsync_all(
    d: &Directory,
    base: &str,
    filter: &str,
    attrs: &[&str],
    cookie: Option<Vec<u8>>,
    flags: DirSyncFlags,
) -> Result<DirSyncBatch, AdFeedError> {
    let mut cookie = cookie;
    let mut changes = Vec::new();
    loop {
        let batch = smol::block_on(
            d.dirsync(base, filter, attrs, cookie.take(), flags)
                .collect(),
        )?;
        changes.extend(batch.changes);
        if !batch.more {
            return Ok(DirSyncBatch {
                changes,
                cookie: batch.cookie,
                more: false,
            });
        }
        cookie = Some(batch.cookie);
    }
}

fn lower(s: &str) -> String {
    s.to_ascii_lowercase()
}

fn text(v: &[Vec<u8>]) -> Vec<String> {
    v.iter()
        .map(|b| lower(&String::from_utf8_lossy(b)))
        .collect()
}

/// The changes of objects in `ou` (by DN) or with one of `guids`.
fn mine<'a>(batch: &'a DirSyncBatch, ou: &str, guids: &[[u8; 16]]) -> Vec<&'a AdChange> {
    let suffix = format!(",{}", lower(ou));
    batch
        .changes
        .iter()
        .filter(|c| lower(&c.dn).ends_with(&suffix) || guids.contains(&c.object_guid))
        .collect()
}

const FEED_FILTER: &str = "(|(objectClass=user)(objectClass=group))";
const FEED_ATTRS: &[&str] = &[
    "cn",
    "name",
    "description",
    "member",
    "sAMAccountName",
    "isDeleted",
    "lastKnownParent",
];

#[test]
fn dirsync_reports_modify_members_move_and_delete() {
    let Some(dir) = samba() else { return };
    let ou = TestOu::create(&dir, "dirsync");
    let o = &ou.dn;
    dir.modify(&format!(
        "dn: OU=moved,{o}
objectClass: organizationalUnit

dn: CN=u1,{o}
objectClass: user
sAMAccountName: {s1}

dn: CN=u2,{o}
objectClass: user
sAMAccountName: {s2}

dn: CN=u3,{o}
objectClass: user
sAMAccountName: {s3}

dn: CN=g,{o}
objectClass: group
sAMAccountName: {sg}
member: CN=u2,{o}
",
        s1 = sam(&ou, "1"),
        s2 = sam(&ou, "2"),
        s3 = sam(&ou, "3"),
        sg = sam(&ou, "g"),
    ));
    let d = admin(&dir);
    let flags = DirSyncFlags::INCREMENTAL_VALUES;

    // Initial DirSync: every object of the OU, with its objectGUID.
    let initial = dirsync_all(&d, &dir.base, FEED_FILTER, FEED_ATTRS, None, flags).unwrap();
    let seen = mine(&initial, o, &[]);
    let guid_of: BTreeMap<String, [u8; 16]> =
        seen.iter().map(|c| (lower(&c.dn), c.object_guid)).collect();
    for cn in ["u1", "u2", "u3", "g"] {
        assert!(
            guid_of.contains_key(&lower(&format!("CN={cn},{o}"))),
            "initial DirSync lacks CN={cn}: {:?}",
            guid_of.keys()
        );
    }
    assert!(seen.iter().all(|c| !c.deleted));
    let tombstones = initial.changes.iter().filter(|c| c.deleted).count();
    println!(
        "initial DirSync: {} objects ({} old tombstones), cookie {} bytes",
        initial.changes.len(),
        tombstones,
        initial.cookie.len(),
    );
    // With incremental values even the initial DirSync gives members as added values.
    let g0 = seen
        .iter()
        .find(|c| lower(&c.dn).starts_with("cn=g,"))
        .unwrap();
    assert_eq!(text(g0.added("member")), vec![lower(&format!("CN=u2,{o}"))]);
    assert_eq!(g0.entry.first_str("name"), Some("g"));
    let guid = |cn: &str| guid_of[&lower(&format!("CN={cn},{o}"))];
    let all_guids = [guid("u1"), guid("u2"), guid("u3"), guid("g")];

    // Nothing changed: nothing of ours comes back.
    let idle = dirsync_all(
        &d,
        &dir.base,
        FEED_FILTER,
        FEED_ATTRS,
        Some(initial.cookie),
        flags,
    )
    .unwrap();
    assert!(mine(&idle, o, &all_guids).is_empty(), "{:?}", idle.changes);

    // One attribute of one user: only that user, only that attribute (+ objectGUID,
    // instanceType).
    dir.modify(&format!(
        "dn: CN=u1,{o}\nchangetype: modify\nreplace: description\ndescription: changed\n"
    ));
    let modified = dirsync_all(
        &d,
        &dir.base,
        FEED_FILTER,
        FEED_ATTRS,
        Some(idle.cookie),
        flags,
    )
    .unwrap();
    let ours = mine(&modified, o, &all_guids);
    assert_eq!(ours.len(), 1, "{ours:?}");
    let c = ours[0];
    assert_eq!(c.object_guid, guid("u1"));
    assert_eq!(c.entry.first_str("description"), Some("changed"));
    let names: Vec<&str> = c.entry.attributes().map(|(n, _)| n).collect();
    assert!(
        names
            .iter()
            .all(|n| ["description", "objectguid", "instancetype"].contains(n)),
        "only the changed attribute: {names:?}"
    );
    assert!(c.deltas.is_empty());

    // Add one member and remove another in one modify: separate added / removed values.
    dir.modify(&format!(
        "dn: CN=g,{o}\nchangetype: modify\nadd: member\nmember: CN=u1,{o}\n-\n\
         delete: member\nmember: CN=u2,{o}\n-\n"
    ));
    let members = dirsync_all(
        &d,
        &dir.base,
        FEED_FILTER,
        FEED_ATTRS,
        Some(modified.cookie),
        flags,
    )
    .unwrap();
    let ours = mine(&members, o, &all_guids);
    assert_eq!(ours.len(), 1, "{ours:?}");
    let g = ours[0];
    assert_eq!(g.object_guid, guid("g"));
    assert_eq!(text(g.added("member")), vec![lower(&format!("CN=u1,{o}"))]);
    assert_eq!(
        text(g.removed("member")),
        vec![lower(&format!("CN=u2,{o}"))]
    );
    assert!(
        !g.entry.has("member"),
        "no whole member list with incremental values"
    );

    // Rename + move: same objectGUID, new DN.
    dir.modify(&format!(
        "dn: CN=u3,{o}\nchangetype: modrdn\nnewrdn: CN=u3 moved\ndeleteoldrdn: 1\n\
         newsuperior: OU=moved,{o}\n"
    ));
    let moved = dirsync_all(
        &d,
        &dir.base,
        FEED_FILTER,
        FEED_ATTRS,
        Some(members.cookie),
        flags,
    )
    .unwrap();
    let ours = mine(&moved, o, &all_guids);
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert_eq!(ours[0].object_guid, guid("u3"));
    assert_eq!(
        lower(&ours[0].dn),
        lower(&format!("CN=u3 moved,OU=moved,{o}"))
    );
    assert!(!ours[0].deleted);
    println!(
        "rename/move arrives with attributes {:?}",
        ours[0]
            .entry
            .attributes()
            .map(|(n, _)| n)
            .collect::<Vec<_>>()
    );

    // Delete: a tombstone with the same objectGUID.
    let (code, err) = common::ldap_tool(
        &dir.url,
        &dir.admin_dn,
        &dir.admin_pw,
        "ldapdelete",
        &[&format!("CN=u1,{o}")],
        "",
    );
    assert_eq!(code, 0, "ldapdelete: {err}");
    let deleted = dirsync_all(
        &d,
        &dir.base,
        FEED_FILTER,
        FEED_ATTRS,
        Some(moved.cookie),
        flags,
    )
    .unwrap();
    let ours = mine(&deleted, o, &all_guids);
    let t = ours
        .iter()
        .find(|c| c.object_guid == guid("u1"))
        .unwrap_or_else(|| panic!("no tombstone of u1 in {ours:?}"));
    assert!(t.deleted);
    assert!(t.dn.contains("\\0ADEL:"), "{}", t.dn);
    assert_eq!(t.entry.first_str("isDeleted"), Some("TRUE"));
    assert_eq!(t.last_known_parent.as_deref().map(lower), Some(lower(o)));
    // Samba: the group that held u1 does not report a removed value.
    let others: Vec<_> = ours
        .iter()
        .filter(|c| c.object_guid != guid("u1"))
        .map(|c| (&c.dn, &c.deltas))
        .collect();
    println!("delete of a group member also reports: {others:?}");
}

#[test]
fn stream_yields_changes_then_one_end_item() {
    let Some(dir) = samba() else { return };
    let d = admin(&dir);
    let mut s = d.dirsync(
        &dir.base,
        "(objectClass=organizationalUnit)",
        // `ou` alone would return no object from Samba; dirsync() adds `name`.
        &["ou"],
        None,
        DirSyncFlags::NONE,
    );
    let (mut changes, mut ends) = (0, 0);
    while let Some(item) = smol::block_on(s.next()) {
        match item.unwrap() {
            DirSyncItem::Change(c) => {
                assert_eq!(ends, 0, "a change after the cookie");
                assert_eq!(c.object_guid.len(), 16);
                changes += 1;
            }
            DirSyncItem::End { cookie, more } => {
                assert!(!cookie.is_empty());
                assert!(!more, "Samba answers in one response");
                ends += 1;
            }
        }
    }
    assert!(s.is_complete());
    assert_eq!(ends, 1);
    assert!(changes >= 1, "at least OU=Domain Controllers");
}

#[test]
fn bad_cookie_and_bad_base_are_typed_errors() {
    let Some(dir) = samba() else { return };
    let d = admin(&dir);
    let garbage = Some(b"not a DirSync cookie".to_vec());
    let err = smol::block_on(
        d.dirsync(&dir.base, FEED_FILTER, &["cn"], garbage, DirSyncFlags::NONE)
            .collect(),
    )
    .unwrap_err();
    println!("garbage cookie: {err}");
    assert!(err.is_invalid_cookie(), "{err:?}");

    let users = format!("CN=Users,{}", dir.base);
    let err = smol::block_on(
        d.dirsync(&users, FEED_FILTER, &["cn"], None, DirSyncFlags::NONE)
            .collect(),
    )
    .unwrap_err();
    println!("base below the naming context: {err}");
    assert!(
        matches!(err, AdFeedError::NotNamingContext { ref base, .. } if *base == users),
        "{err:?}"
    );
}

#[test]
fn account_without_replication_rights_gets_a_typed_error() {
    let Some(dir) = samba() else { return };
    let ou = TestOu::create(&dir, "dirsync");
    let reader = format!("CN=feed reader,{}", ou.dn);
    let pw = "Feed-Reader-Pass-1";
    dir.modify(&format!(
        "dn: {reader}\nobjectClass: user\nsAMAccountName: {}\nunicodePwd:: {}\n\
         userAccountControl: 512\n",
        sam(&ou, "r"),
        unicode_pwd(pw)
    ));
    let d = connect_as(&dir, &reader, pw);
    let err = smol::block_on(
        d.dirsync(&dir.base, FEED_FILTER, &["cn"], None, DirSyncFlags::NONE)
            .collect(),
    )
    .unwrap_err();
    println!("without the right: {err}");
    assert!(err.is_missing_rights(), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("Replicating Directory Changes"), "{msg}");
    assert!(msg.contains(&reader), "{msg}");
    assert!(!msg.contains(pw));

    // What such an account can still do: object-security DirSync, and uSN polling.
    let batch = dirsync_all(
        &d,
        &dir.base,
        FEED_FILTER,
        FEED_ATTRS,
        None,
        DirSyncFlags::OBJECT_SECURITY | DirSyncFlags::INCREMENTAL_VALUES,
    )
    .unwrap();
    assert!(mine(&batch, &ou.dn, &[])
        .iter()
        .any(|c| lower(&c.dn) == lower(&reader)));
    let state = smol::block_on(d.usn_state()).unwrap();
    assert!(state.highest_committed_usn > 0);
}

#[test]
fn usn_polling_finds_changes_and_tombstones() {
    let Some(dir) = samba() else { return };
    let ou = TestOu::create(&dir, "dirsync");
    let o = &ou.dn;
    dir.modify(&format!(
        "dn: CN=a,{o}\nobjectClass: user\nsAMAccountName: {}\n\n\
         dn: CN=b,{o}\nobjectClass: user\nsAMAccountName: {}\n",
        sam(&ou, "a"),
        sam(&ou, "b")
    ));
    let d = admin(&dir);
    let before = smol::block_on(d.usn_state()).unwrap();
    println!(
        "uSN state: {} on {} (invocationId {} bytes)",
        before.highest_committed_usn,
        before.ds_service_name,
        before.invocation_id.as_ref().map_or(0, Vec::len)
    );
    assert!(before.ds_service_name.starts_with("CN=NTDS Settings,"));
    assert_eq!(before.invocation_id.as_ref().map(Vec::len), Some(16));

    dir.modify(&format!(
        "dn: CN=a,{o}\nchangetype: modify\nreplace: description\ndescription: usn\n"
    ));
    let after = smol::block_on(d.usn_state()).unwrap();
    assert!(after.highest_committed_usn > before.highest_committed_usn);
    assert!(after.same_dc(&before));

    let since = before.highest_committed_usn + 1;
    let changed: Vec<AdChange> = smol::block_on(
        d.usn_changes(
            &dir.base,
            "(objectClass=user)",
            &["cn", "description"],
            since,
        )
        .collect(),
    )
    .unwrap()
    .into_iter()
    .map(|e| AdChange::from_entry(e).unwrap())
    .collect();
    let ours: Vec<&AdChange> = changed
        .iter()
        .filter(|c| lower(&c.dn).ends_with(&lower(o)))
        .collect();
    assert_eq!(ours.len(), 1, "only a changed: {ours:?}");
    assert_eq!(lower(&ours[0].dn), lower(&format!("CN=a,{o}")));
    assert_eq!(ours[0].entry.first_str("description"), Some("usn"));
    let b_guid = smol::block_on(d.read(&format!("CN=b,{o}"), &["objectGUID"]))
        .unwrap()
        .unwrap()
        .first_bytes("objectGUID")
        .unwrap()
        .to_vec();

    let (code, err) = common::ldap_tool(
        &dir.url,
        &dir.admin_dn,
        &dir.admin_pw,
        "ldapdelete",
        &[&format!("CN=b,{o}")],
        "",
    );
    assert_eq!(code, 0, "ldapdelete: {err}");
    let since = after.highest_committed_usn + 1;
    let changed: Vec<AdChange> = smol::block_on(
        d.usn_changes(&dir.base, "(objectClass=user)", &["cn"], since)
            .collect(),
    )
    .unwrap()
    .into_iter()
    .map(|e| AdChange::from_entry(e).unwrap())
    .collect();
    let t = changed
        .iter()
        .find(|c| c.object_guid[..] == b_guid[..])
        .unwrap_or_else(|| panic!("no tombstone of b among {} changes", changed.len()));
    assert!(t.deleted);
    assert_eq!(t.last_known_parent.as_deref().map(lower), Some(lower(o)));
    assert!(t
        .entry
        .first_str("uSNChanged")
        .and_then(|u| u.parse::<u64>().ok())
        .is_some_and(|u| u >= since));

    // Without show-deleted the same search would not see it: the control matters.
    let plain = smol::block_on(
        d.search(
            &dir.base,
            Scope::Subtree,
            &idrelay::ldap::usn_filter(since, "(objectClass=user)"),
            &["objectGUID"],
        )
        .collect(),
    )
    .unwrap();
    assert!(plain
        .iter()
        .all(|e| e.first_bytes("objectGUID") != Some(&b_guid[..])));
}

#[test]
fn initial_dirsync_and_paged_search_of_the_whole_domain() {
    let Some(dir) = samba() else { return };
    let ou = TestOu::create(&dir, "dirsync");
    let extra: usize = std::env::var("IDRELAY_AD_FEED_BENCH_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if extra > 0 {
        let mut ldif = String::new();
        for i in 0..extra {
            ldif.push_str(&format!(
                "dn: CN=bench{i},{o}\nobjectClass: user\nsAMAccountName: {s}\n\
                 givenName: Bench\nsn: User{i}\nmail: bench{i}@branch.test\n\n",
                o = ou.dn,
                s = sam(&ou, &i.to_string()),
            ));
        }
        let t = Instant::now();
        dir.modify(&ldif);
        println!("seeded {extra} users in {:.1} s", t.elapsed().as_secs_f64());
    }
    let d = admin(&dir);
    for round in 1..=2 {
        let t = Instant::now();
        let ds = dirsync_all(
            &d,
            &dir.base,
            "(objectClass=*)",
            &[],
            None,
            DirSyncFlags::NONE,
        )
        .unwrap();
        let ds_time = t.elapsed();
        // Time to the first object: Samba builds the whole answer before sending any of it,
        // and the per-message timeout covers that wait.
        let t = Instant::now();
        let mut s = d.dirsync(&dir.base, "(objectClass=*)", &[], None, DirSyncFlags::NONE);
        let first = smol::block_on(s.next()).unwrap().unwrap();
        assert!(matches!(first, DirSyncItem::Change(_)));
        let first_time = t.elapsed();
        drop(s);
        let t = Instant::now();
        let paged = smol::block_on(
            d.search(&dir.base, Scope::Subtree, "(objectClass=*)", &[])
                .collect(),
        )
        .unwrap();
        let paged_time = t.elapsed();
        let tomb = ds.changes.iter().filter(|c| c.deleted).count();
        println!(
            "round {round}: initial DirSync {} objects ({} tombstones) in {} ms (first after \
             {} ms); paged search {} entries in {} ms",
            ds.changes.len(),
            tomb,
            ds_time.as_millis(),
            first_time.as_millis(),
            paged.len(),
            paged_time.as_millis()
        );
        let own = lower(&ou.dn);
        assert!(ds.changes.iter().any(|c| lower(&c.dn) == own));
        assert!(paged.iter().any(|e| lower(&e.dn) == own));
        let in_ou = |dn: &str| lower(dn).ends_with(&format!(",{own}"));
        assert_eq!(ds.changes.iter().filter(|c| in_ou(&c.dn)).count(), extra);
        assert_eq!(paged.iter().filter(|e| in_ou(&e.dn)).count(), extra);
    }
}
