//! Live tests of `idrelay::ldap` against the real test directories (OpenLDAP and Samba AD).
//!
//! The servers' addresses and credentials come from the environment variables that
//! `scripts/test.sh` exports (OPENLDAP_* and AD_*). A missing variable fails the test with a
//! message saying so: these tests never pass silently without a directory.
//!
//! Each test that writes uses its own OU (`ldaplive-<test>`), deletes it first (in case an
//! earlier run died) and deletes it again when it ends, even on failure. Writes go through
//! `ldapadd`/`ldapdelete` (ldap-utils) as the directory admin; reads go through the agent's
//! code as the agent would bind (the read-only `syncer` on OpenLDAP).
//! Everything runs under `smol::block_on`, as the agent does.

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use idrelay::ldap::{
    detect_kind, supports_control, Directory, DirectoryConfig, DirectoryKind, Entry, LdapError,
    ResultCode, Scope, PAGED_RESULTS_OID,
};
use idrelay::secret::Secret;

mod common;
use common::{env, ldap_tool};

/// One test directory: where it is, who reads, who writes.
struct Server {
    url: String,
    ldaps_url: String,
    base: String,
    reader_dn: String,
    reader_pw: String,
    admin_dn: String,
    admin_pw: String,
    ca: PathBuf,
}

fn openldap() -> Server {
    Server {
        url: env("OPENLDAP_URL"),
        ldaps_url: env("OPENLDAP_LDAPS_URL"),
        base: env("OPENLDAP_BASE_DN"),
        reader_dn: env("OPENLDAP_SYNC_DN"),
        reader_pw: env("OPENLDAP_SYNC_PW"),
        admin_dn: env("OPENLDAP_ROOT_DN"),
        admin_pw: env("OPENLDAP_ROOT_PW"),
        ca: PathBuf::from(env("OPENLDAP_CA_CERT")),
    }
}

fn samba() -> Server {
    Server {
        url: env("AD_LDAP_URL"),
        ldaps_url: env("AD_LDAPS_URL"),
        base: env("AD_BASE_DN"),
        reader_dn: env("AD_BIND_DN"),
        reader_pw: env("AD_PASSWORD"),
        admin_dn: env("AD_BIND_DN"),
        admin_pw: env("AD_PASSWORD"),
        ca: PathBuf::from(env("AD_CA_CERT")),
    }
}

impl Server {
    /// A reader configuration: plain LDAP, small pages, short timeout.
    fn config(&self) -> DirectoryConfig {
        let mut cfg = DirectoryConfig::new(
            self.url.clone(),
            self.reader_dn.clone(),
            Secret::new(self.reader_pw.clone()),
        );
        cfg.timeout = Duration::from_secs(20);
        cfg.page_size = 100;
        cfg
    }

    fn connect(&self, cfg: &DirectoryConfig) -> Directory {
        smol::block_on(Directory::connect(cfg))
            .unwrap_or_else(|e| panic!("connect to {} failed: {e}", cfg.url))
    }

    /// Runs an ldap-utils tool as the admin; `stdin` is LDIF for ldapadd.
    fn tool(&self, tool: &str, args: &[&str], stdin: &str) -> (i32, String) {
        ldap_tool(&self.url, &self.admin_dn, &self.admin_pw, tool, args, stdin)
    }

    fn delete_tree(&self, dn: &str) {
        let (code, err) = self.tool("ldapdelete", &["-r", dn], "");
        // 32: noSuchObject, nothing to clean.
        assert!(
            code == 0 || code == 32,
            "ldapdelete -r {dn}: exit {code}: {err}"
        );
    }
}

/// A test's own OU, deleted before it is created and again when the test ends.
struct TestOu<'a> {
    server: &'a Server,
    dn: String,
}

impl<'a> TestOu<'a> {
    fn create(server: &'a Server, name: &str, children_ldif: &str) -> TestOu<'a> {
        let dn = format!("ou={name},{}", server.base);
        server.delete_tree(&dn);
        let ldif =
            format!("dn: {dn}\nobjectClass: organizationalUnit\nou: {name}\n\n{children_ldif}");
        let (code, err) = server.tool("ldapadd", &[], &ldif);
        let ou = TestOu { server, dn };
        assert_eq!(code, 0, "ldapadd under {}: {err}", ou.dn);
        ou
    }
}

impl Drop for TestOu<'_> {
    fn drop(&mut self) {
        let (code, err) = self.server.tool("ldapdelete", &["-r", &self.dn], "");
        if code != 0 && code != 32 {
            eprintln!("cleanup of {} failed: exit {code}: {err}", self.dn);
        }
    }
}

fn all(dir: &Directory, base: &str, scope: Scope, filter: &str, attrs: &[&str]) -> Vec<Entry> {
    smol::block_on(dir.search(base, scope, filter, attrs).collect())
        .unwrap_or_else(|e| panic!("search of {base} {filter} failed: {e}"))
}

#[test]
fn openldap_bind_ok_and_wrong_password_is_named_without_the_password() {
    let s = openldap();
    let dir = s.connect(&s.config());
    assert_eq!(dir.url(), s.url);
    let mut bad = s.config();
    bad.password = Secret::new("Wrong-Pass-7b1f");
    let err = smol::block_on(Directory::connect(&bad)).unwrap_err();
    assert_eq!(err.code(), Some(ResultCode::INVALID_CREDENTIALS), "{err}");
    let text = err.to_string();
    assert!(text.contains(&s.reader_dn), "{text}");
    assert!(text.contains("49 (invalidCredentials)"), "{text}");
    assert!(!text.contains("Wrong-Pass-7b1f") && !format!("{err:?}").contains("Wrong-Pass-7b1f"));
}

#[test]
fn samba_bind_ok_and_wrong_password_is_named_without_the_password() {
    let s = samba();
    let dir = s.connect(&s.config());
    drop(dir);
    let mut bad = s.config();
    bad.password = Secret::new("Wrong-Pass-7b1f");
    let err = smol::block_on(Directory::connect(&bad)).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            LdapError::Bind {
                code: ResultCode(49),
                ..
            }
        ),
        "{text}"
    );
    assert!(
        text.contains("invalidCredentials") && text.contains(&s.reader_dn),
        "{text}"
    );
    assert!(!text.contains("Wrong-Pass-7b1f") && !format!("{err:?}").contains("Wrong-Pass-7b1f"));
}

#[test]
fn an_empty_password_is_refused_before_any_unauthenticated_bind() {
    let s = openldap();
    let mut cfg = s.config();
    cfg.password = Secret::new("");
    let err = smol::block_on(Directory::connect(&cfg)).unwrap_err();
    assert!(matches!(err, LdapError::EmptyPassword { .. }), "{err}");
}

#[test]
fn root_dse_tells_openldap_from_active_directory() {
    let o = openldap();
    let dse = smol::block_on(o.connect(&o.config()).root_dse()).unwrap();
    assert_eq!(detect_kind(&dse), DirectoryKind::OpenLdap);
    assert!(supports_control(&dse, PAGED_RESULTS_OID));
    let a = samba();
    let dse = smol::block_on(a.connect(&a.config()).root_dse()).unwrap();
    assert_eq!(detect_kind(&dse), DirectoryKind::ActiveDirectory);
    assert_eq!(detect_kind(&dse).to_string(), "Active Directory");
    assert!(supports_control(&dse, PAGED_RESULTS_OID));
}

#[test]
fn openldap_paged_search_streams_1200_entries_in_pages_of_100() {
    let s = openldap();
    let mut ldif = String::new();
    for i in 0..1200 {
        ldif.push_str(&format!(
            "dn: cn=p{i:04},ou=ldaplive-paged,{}\nobjectClass: person\ncn: p{i:04}\nsn: n{i}\n\n",
            s.base
        ));
    }
    let ou = TestOu::create(&s, "ldaplive-paged", &ldif);
    let dir = s.connect(&s.config());
    smol::block_on(async {
        let mut stream = dir.search(
            &ou.dn,
            Scope::One,
            "(objectClass=person)",
            &["cn", "entryUUID"],
        );
        let first = stream.next().await.expect("an entry").expect("no error");
        // The search is now paused on backpressure; a read must not wait for it.
        let base = dir
            .read(&ou.dn, &["ou"])
            .await
            .unwrap()
            .expect("the OU exists");
        assert_eq!(base.first_str("ou"), Some("ldaplive-paged"));
        let mut names = std::collections::BTreeSet::new();
        names.insert(first.first_str("cn").unwrap().to_owned());
        assert_eq!(first.first_bytes("entryUUID").map(<[u8]>::len), Some(36));
        while let Some(entry) = stream.next().await {
            let entry = entry.unwrap_or_else(|e| panic!("search broke: {e}"));
            names.insert(entry.first_str("cn").unwrap().to_owned());
        }
        assert!(stream.is_complete());
        assert_eq!(names.len(), 1200, "every entry once");
        assert!(
            stream.next().await.is_none(),
            "a finished stream stays finished"
        );
    });
    // A stream dropped half-way is abandoned; the connection carries on.
    smol::block_on(async {
        let mut stream = dir.search(&ou.dn, Scope::One, "(objectClass=person)", &["cn"]);
        for _ in 0..150 {
            stream.next().await.unwrap().unwrap();
        }
        drop(stream);
        let again = dir
            .search(&ou.dn, Scope::Subtree, "(cn=p0007)", &["cn"])
            .collect();
        assert_eq!(again.await.unwrap().len(), 1);
    });
}

/// Regression: OpenLDAP keeps one paged-results state per connection, so a search started
/// right after an abandoned one (or beside another) got 53 "paged results cookie is invalid
/// or old" while they shared a connection.
#[test]
fn openldap_paged_searches_side_by_side_nested_and_after_an_abandoned_one() {
    let s = openldap();
    let mut ldif = String::new();
    for i in 0..300 {
        ldif.push_str(&format!(
            "dn: cn=q{i:03},ou=ldaplive-concurrent,{}\nobjectClass: person\ncn: q{i:03}\nsn: q\n\n",
            s.base
        ));
    }
    let ou = TestOu::create(&s, "ldaplive-concurrent", &ldif);
    let mut cfg = s.config();
    cfg.page_size = 20;
    let dir = s.connect(&cfg);
    smol::block_on(async {
        for round in 0..5 {
            let mut dropped = dir.search(&ou.dn, Scope::One, "(cn=q*)", &["cn"]);
            for _ in 0..(37 * round + 1) {
                dropped.next().await.unwrap().unwrap();
            }
            drop(dropped);
            let again = dir
                .search(&ou.dn, Scope::One, "(cn=q*)", &["cn"])
                .collect()
                .await;
            assert_eq!(
                again.unwrap_or_else(|e| panic!("round {round}: {e}")).len(),
                300
            );
        }
        // Two searches consumed in turn, one entry each, and a search nested in another.
        let mut a = dir.search(&ou.dn, Scope::One, "(cn=q*)", &["cn"]);
        let mut b = dir.search(&ou.dn, Scope::One, "(cn=q1*)", &["cn"]);
        let (mut na, mut nb) = (0, 0);
        loop {
            let ea = a.next().await.transpose().unwrap();
            let eb = b.next().await.transpose().unwrap();
            na += usize::from(ea.is_some());
            nb += usize::from(eb.is_some());
            if let Some(e) = &ea {
                if na % 50 == 0 {
                    let cn = e.first_str("cn").unwrap();
                    let filter = format!("(cn={cn})");
                    let inner = dir.search(&ou.dn, Scope::One, &filter, &["cn"]).collect();
                    assert_eq!(inner.await.unwrap().len(), 1);
                }
            }
            if ea.is_none() && eb.is_none() {
                break;
            }
        }
        assert_eq!((na, nb), (300, 100));
        assert!(a.is_complete() && b.is_complete());
    });
}

#[test]
fn samba_paged_subtree_search_skips_the_configuration_reference() {
    let s = samba();
    let mut cfg = s.config();
    cfg.page_size = 10;
    let dir = s.connect(&cfg);
    let entries = all(
        &dir,
        &s.base,
        Scope::Subtree,
        "(objectClass=*)",
        &["objectGUID"],
    );
    assert!(
        entries.len() > 100,
        "the domain has more than 10 pages of objects"
    );
    for e in &entries {
        let guid = e.first_bytes("objectGUID");
        assert_eq!(
            guid.map(<[u8]>::len),
            Some(16),
            "objectGUID of {} is 16 bytes",
            e.dn
        );
    }
}

#[test]
fn a_missing_base_is_an_error_not_an_empty_result() {
    for s in [openldap(), samba()] {
        let dir = s.connect(&s.config());
        let base = format!("ou=ldaplive-does-not-exist,{}", s.base);
        let mut stream = dir.search(&base, Scope::Subtree, "(objectClass=*)", &["cn"]);
        let err = match smol::block_on(stream.next()) {
            Some(Err(e)) => e,
            other => panic!("{}: expected an error, got {other:?}", s.url),
        };
        assert_eq!(err.code(), Some(ResultCode::NO_SUCH_OBJECT), "{err}");
        assert!(err.to_string().contains("ldaplive-does-not-exist"), "{err}");
        assert!(!stream.is_complete());
        assert!(smol::block_on(stream.next()).is_none());
        // A base read of a missing entry is simply "not there".
        assert_eq!(smol::block_on(dir.read(&base, &["cn"])).unwrap(), None);
    }
}

#[test]
fn an_invalid_filter_is_named() {
    let s = openldap();
    let dir = s.connect(&s.config());
    let err = smol::block_on(
        dir.search(&s.base, Scope::Base, "(cn=unbalanced", &[])
            .collect(),
    );
    assert!(
        matches!(err, Err(LdapError::InvalidFilter { ref filter }) if filter == "(cn=unbalanced")
    );
}

#[test]
fn ldaps_and_starttls_verify_against_the_ca_file() {
    for s in [openldap(), samba()] {
        let mut ldaps = s.config();
        ldaps.url = s.ldaps_url.clone();
        ldaps.ca_file = Some(s.ca.clone());
        let dir = s.connect(&ldaps);
        let facts = smol::block_on(dir.tls_facts()).expect("TLS facts on ldaps");
        assert!(facts.starts_with("ldaps to "), "{facts}");
        assert!(facts.contains("verified against the CA file"), "{facts}");
        assert!(facts.contains("bytes DER"), "{facts}");
        smol::block_on(dir.root_dse()).unwrap();

        let mut starttls = s.config();
        starttls.starttls = true;
        starttls.ca_file = Some(s.ca.clone());
        let dir = s.connect(&starttls);
        let facts = smol::block_on(dir.tls_facts()).expect("TLS facts on StartTLS");
        assert!(facts.starts_with("StartTLS to "), "{facts}");
        smol::block_on(dir.root_dse()).unwrap();

        let plain = s.connect(&s.config());
        assert_eq!(smol::block_on(plain.tls_facts()), None);
    }
}

#[test]
fn ldaps_without_the_test_ca_fails_certificate_verification() {
    let s = openldap();
    let mut cfg = s.config();
    cfg.url = s.ldaps_url.clone();
    cfg.ca_file = None; // the system store does not know the test CA
    let err = smol::block_on(Directory::connect(&cfg)).unwrap_err();
    assert!(matches!(err, LdapError::Tls { .. }), "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");
}

#[test]
fn connection_refused_and_silent_server_give_clear_errors() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent = listener.local_addr().unwrap();
    drop(listener);
    let mut cfg = DirectoryConfig::new(format!("ldap://{silent}"), "cn=x", Secret::new("pw"));
    let err = smol::block_on(Directory::connect(&cfg)).unwrap_err();
    assert!(matches!(err, LdapError::Connect { .. }), "{err}");
    assert!(err.to_string().contains(&silent.to_string()), "{err}");

    // A server that accepts and never answers: the bind times out.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let holder = std::thread::spawn(move || {
        let conn = listener.accept().map(|(c, _)| c);
        std::thread::sleep(Duration::from_secs(2));
        drop(conn);
    });
    cfg.url = format!("ldap://{addr}");
    cfg.timeout = Duration::from_millis(300);
    let err = smol::block_on(Directory::connect(&cfg)).unwrap_err();
    assert!(matches!(err, LdapError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("bind as \"cn=x\""), "{err}");
    assert!(err.to_string().contains("no answer within 0.3 s"), "{err}");
    holder.join().unwrap();
}

#[test]
fn samba_group_members_arrive_whole_through_ranged_retrieval() {
    let s = samba();
    let ou_dn = format!("OU=ldaplive-range,{}", s.base);
    let mut ldif = String::new();
    for i in 0..25 {
        ldif.push_str(&format!(
            "dn: CN=c{i:02},{ou_dn}\nobjectClass: contact\ncn: c{i:02}\n\n"
        ));
    }
    ldif.push_str(&format!(
        "dn: CN=big,{ou_dn}\nobjectClass: group\nsAMAccountName: ldaplive-range-big\n"
    ));
    for i in 0..25 {
        ldif.push_str(&format!("member: CN=c{i:02},{ou_dn}\n"));
    }
    ldif.push_str(&format!(
        "\ndn: CN=ten,{ou_dn}\nobjectClass: group\nsAMAccountName: ldaplive-range-ten\n"
    ));
    for i in 0..10 {
        ldif.push_str(&format!("member: CN=c{i:02},{ou_dn}\n"));
    }
    let ou = TestOu::create(&s, "ldaplive-range", &ldif);
    let big = format!("CN=big,{}", ou.dn);
    let ten = format!("CN=ten,{}", ou.dn);

    for step in [None, Some(10), Some(7), Some(1)] {
        let mut cfg = s.config();
        cfg.range_step = step;
        let dir = s.connect(&cfg);
        let read = smol::block_on(dir.read(&big, &["member", "objectGUID"]))
            .unwrap()
            .unwrap();
        let mut members: Vec<&str> = read.strs("member").collect();
        members.sort_unstable();
        members.dedup();
        assert_eq!(members.len(), 25, "step {step:?}: every member once");
        assert_eq!(
            read.bytes("member").len(),
            25,
            "step {step:?}: no duplicates"
        );
        assert!(read.attributes().all(|(n, _)| !n.contains(";range=")));
        assert_eq!(read.first_bytes("objectGUID").map(<[u8]>::len), Some(16));
        // Exactly one chunk's worth: the `0-9` chunk is final, or one more empty-ish round.
        let read = smol::block_on(dir.read(&ten, &["member"]))
            .unwrap()
            .unwrap();
        assert_eq!(read.bytes("member").len(), 10, "step {step:?}");

        let groups = all(
            &dir,
            &ou.dn,
            Scope::One,
            "(objectClass=group)",
            &["cn", "member"],
        );
        assert_eq!(groups.len(), 2);
        for g in groups {
            let want = if g.first_str("cn") == Some("big") {
                25
            } else {
                10
            };
            assert_eq!(
                g.bytes("member").len(),
                want,
                "search, step {step:?}, {}",
                g.dn
            );
        }
    }
}
