//! Live tests of `Directory::sync_cookie`, the cookie `idrelay run` takes before each full
//! pass (OpenLDAP's syncprov and 389-DS's Content Synchronization): read with the listing
//! dropped on the LDAP thread, it must still be the server's cookie for "now". A search
//! resumed from it reports exactly what changed after it was read (nothing that existed
//! before it, every add and modify after it), with the same base and filter, so that no
//! change between the cookie and the full pass is lost and none is ahead of it.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use idrelay::ldap::{Directory, DirectoryConfig, SyncEvent, SyncMode};
use idrelay::secret::Secret;

use common::{Dir, TestOu};

/// The feed's kind of filter (389-DS refuses a cookie taken with another filter).
const FILTER: &str = "(objectClass=device)";
/// Entries listed before the cookie: many ldap3 reads and more than one batch.
const BEFORE: usize = 1500;

fn directory(dir: &Dir) -> Directory {
    let mut cfg = DirectoryConfig::new(
        dir.url.clone(),
        dir.bind_dn.clone(),
        Secret::new(dir.bind_pw.clone()),
    );
    cfg.timeout = Duration::from_secs(20);
    smol::block_on(Directory::connect(&cfg)).expect("connect")
}

fn devices(base: &str, names: impl Iterator<Item = String>) -> String {
    names
        .map(|n| format!("dn: cn={n},{base}\nobjectClass: device\ncn: {n}\n\n"))
        .collect()
}

/// The `cn`s a refreshOnly search from `cookie` reports as added or changed.
fn changed_since(d: &Directory, base: &str, cookie: Vec<u8>) -> BTreeSet<String> {
    smol::block_on(async {
        let mut s = d.content_sync(base, FILTER, &["cn"], Some(cookie), SyncMode::RefreshOnly);
        let mut out = BTreeSet::new();
        while let Some(ev) = s.next().await {
            if let SyncEvent::Upsert { entry, .. } = ev.expect("refreshOnly from the cookie") {
                out.extend(entry.first_str("cn").map(str::to_owned));
            }
        }
        assert!(s.is_complete());
        out
    })
}

fn the_cookie_for_now_resumes_at_the_first_change_after_it(dir: Dir, tag: &str) {
    let ou = TestOu::create(&dir, tag);
    dir.modify(&devices(&ou.dn, (0..BEFORE).map(|i| format!("old{i}"))));
    dir.modify(&devices(&ou.dn, ["changed".to_owned()].into_iter()));
    let d = directory(&dir);

    let cookie = smol::block_on(d.sync_cookie(&ou.dn, FILTER)).expect("sync_cookie");
    assert!(!cookie.is_empty());

    dir.modify(&devices(&ou.dn, ["new".to_owned()].into_iter()));
    dir.modify(&format!(
        "dn: cn=changed,{}\nchangetype: modify\nreplace: description\ndescription: after\n",
        ou.dn
    ));
    let got = changed_since(&d, &ou.dn, cookie);
    let want: BTreeSet<String> = ["changed", "new"].map(str::to_owned).into();
    assert_eq!(got, want, "what changed after the cookie, and only that");

    // A base without content sync, or a failed search, is an error, never a cookie.
    let missing = format!("ou=missing-{tag},{}", dir.base);
    assert!(smol::block_on(d.sync_cookie(&missing, FILTER)).is_err());
}

#[test]
fn openldap_sync_cookie_resumes_at_the_first_change_after_it() {
    the_cookie_for_now_resumes_at_the_first_change_after_it(Dir::openldap(), "cookie-ol");
}

#[test]
fn ds389_sync_cookie_resumes_at_the_first_change_after_it() {
    let Some(dir) = Dir::ds389() else { return };
    the_cookie_for_now_resumes_at_the_first_change_after_it(dir, "cookie-389");
}
