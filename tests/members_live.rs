//! Group membership as chunked PATCH (`idrelay::sync::members`) against a real scim2-server.
//!
//! Every test starts its own scim2-server on a free loopback port (`common::ScimServer`,
//! from `$SCIM_VENV`), creates users and one group there, and keeps its member store in a
//! temp dir. What the endpoint holds is read back with plain HTTP, not with the code under
//! test; request counts come from `ScimClient::write_counts`.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{ScimServer, TempDir};
use idrelay::net::http::{HttpClient, HttpConfig, Url};
use idrelay::scim::client::{ScimClient, ScimConfig};
use idrelay::scim::mapping::MemberIds;
use idrelay::scim::resource::{GROUP_SCHEMA, USER_SCHEMA};
use idrelay::scim::ResourceKind;
use idrelay::secret::Secret;
use idrelay::sync::members::{
    patch_operations, sync_members, MemberStore, MemberSyncError, MemberWrites, RemoveForm,
    DEFAULT_CHUNK,
};
use serde_json::json;

const ANCHOR: &str = "q83vASNFZ4mrze8BI0VniQ==";

struct Setup {
    server: ScimServer,
    scim: ScimClient,
    tmp: TempDir,
    store: MemberStore,
    group: String,
    users: Vec<String>,
}

impl Setup {
    /// A server with `n` users and one group without members.
    fn new(n: usize) -> Setup {
        let server = ScimServer::start();
        let mut cfg = ScimConfig::new(
            Url::parse(&server.base_url()).unwrap(),
            Secret::new(server.token.clone()),
        );
        cfg.backoff_base = Duration::from_millis(50);
        let http = HttpClient::new(HttpConfig {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            ..HttpConfig::default()
        })
        .unwrap();
        let scim = ScimClient::new(http, cfg);
        let group = server.post(
            "Groups",
            &json!({"schemas": [GROUP_SCHEMA], "displayName": "Big group", "externalId": ANCHOR}),
        )["id"]
            .as_str()
            .unwrap()
            .to_string();
        let users = (0..n)
            .map(|i| {
                let u = server.post(
                    "Users",
                    &json!({"schemas": [USER_SCHEMA], "userName": format!("member{i:04}")}),
                );
                u["id"].as_str().unwrap().to_string()
            })
            .collect();
        let tmp = TempDir::new("members");
        let store = MemberStore::open(tmp.path().join("members")).unwrap();
        Setup {
            server,
            scim,
            tmp,
            store,
            group,
            users,
        }
    }

    fn sync(&self, ids: &[String], chunk: usize) -> Result<MemberWrites, MemberSyncError> {
        smol::block_on(sync_members(
            &self.scim,
            &self.store,
            ANCHOR,
            &self.group,
            &ids.iter().collect::<MemberIds>(),
            chunk,
        ))
    }

    /// The member ids the endpoint holds.
    fn endpoint_members(&self) -> BTreeSet<String> {
        let g = self.server.get(&format!("/Groups/{}", self.group));
        g["members"]
            .as_array()
            .map(|m| {
                m.iter()
                    .map(|v| v["value"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn patches(&self) -> u64 {
        self.scim.write_counts().patches
    }
}

fn set(ids: &[String]) -> BTreeSet<String> {
    ids.iter().cloned().collect()
}

#[test]
fn members_go_in_chunks_of_100_then_only_the_diff() {
    let s = Setup::new(290);
    let first = &s.users[..250];
    let w = s.sync(first, DEFAULT_CHUNK).unwrap();
    assert_eq!((w.added, w.removed, w.requests), (250, 0, 3));
    assert!(
        w.endpoint_read,
        "nothing stored yet: the endpoint is read once"
    );
    assert_eq!(s.patches(), 3);
    assert_eq!(s.endpoint_members(), set(first));

    // 30 leave, 40 join: one request with 70 values.
    let mut second = s.users[30..290].to_vec();
    second.reverse();
    let w = s.sync(&second, DEFAULT_CHUNK).unwrap();
    assert_eq!(
        w,
        MemberWrites {
            added: 40,
            removed: 30,
            requests: 1,
            endpoint_read: false
        }
    );
    assert_eq!(s.patches(), 4);
    assert_eq!(s.endpoint_members(), set(&second));

    // The same diff in chunks of 25: 30 removals, then 40 additions, 3 requests.
    let w = s.sync(first, 25).unwrap();
    assert_eq!((w.added, w.removed, w.requests), (30, 40, 3));
    assert_eq!(s.endpoint_members(), set(first));

    // Nothing changed: nothing sent.
    let w = s.sync(first, DEFAULT_CHUNK).unwrap();
    assert_eq!(w, MemberWrites::default());
    assert_eq!(s.patches(), 7);
}

#[test]
fn lost_store_rereads_the_endpoint_and_converges() {
    let s = Setup::new(290);
    s.sync(&s.users[..250], DEFAULT_CHUNK).unwrap();
    // Someone adds a member at the endpoint, and the agent's state directory is lost.
    let stray = s.server.post(
        "Users",
        &json!({"schemas": [USER_SCHEMA], "userName": "stray"}),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    smol::block_on(s.scim.patch(
        ResourceKind::Group,
        &s.group,
        patch_operations([], [stray.as_str()], RemoveForm::PathFilter),
    ))
    .unwrap();
    std::fs::remove_dir_all(s.tmp.path().join("members")).unwrap();
    let before = s.patches();

    let wanted: Vec<String> = s.users[..200]
        .iter()
        .chain(&s.users[250..])
        .cloned()
        .collect();
    let w = s.sync(&wanted, DEFAULT_CHUNK).unwrap();
    assert!(w.endpoint_read);
    assert_eq!((w.added, w.removed, w.requests), (40, 51, 1));
    assert_eq!(s.patches() - before, 1);
    assert_eq!(s.endpoint_members(), set(&wanted));

    // And the store holds it again: the next change is a diff without a read.
    let w = s.sync(&s.users[..200], DEFAULT_CHUNK).unwrap();
    assert_eq!((w.removed, w.endpoint_read), (40, false));
    assert_eq!(s.endpoint_members(), set(&s.users[..200]));
}

#[test]
fn resumes_from_the_members_confirmed_before_a_crash() {
    let s = Setup::new(250);
    // State after a crash that followed the first chunk: the endpoint and the store hold
    // the first 100.
    smol::block_on(s.scim.patch(
        ResourceKind::Group,
        &s.group,
        patch_operations(
            [],
            s.users[..100].iter().map(String::as_str),
            RemoveForm::PathFilter,
        ),
    ))
    .unwrap();
    let first: MemberIds = s.users[..100].iter().collect();
    s.store.save(ANCHOR, &s.group, &first).unwrap();

    let w = s.sync(&s.users, DEFAULT_CHUNK).unwrap();
    assert_eq!((w.added, w.requests, w.endpoint_read), (150, 2, false));
    assert_eq!(s.endpoint_members(), set(&s.users));
}

#[test]
fn deleted_group_is_reported_as_gone() {
    let s = Setup::new(5);
    s.sync(&s.users[..3], DEFAULT_CHUNK).unwrap();
    smol::block_on(s.scim.delete(ResourceKind::Group, &s.group)).unwrap();

    let e = s.sync(&s.users, DEFAULT_CHUNK).unwrap_err();
    assert_eq!(
        e,
        MemberSyncError::GroupGone {
            group_id: s.group.clone()
        },
        "{e}"
    );
    assert!(s.store.load(ANCHOR, &s.group).unwrap().is_none());
    // With nothing stored the GET finds it gone too.
    let e = s.sync(&s.users, DEFAULT_CHUNK).unwrap_err();
    assert!(matches!(e, MemberSyncError::GroupGone { .. }), "{e}");
}

#[test]
fn rfc_remove_form_is_accepted_and_value_form_refused() {
    let s = Setup::new(3);
    s.sync(&s.users, DEFAULT_CHUNK).unwrap();
    // The Entra/AWS form: scim2-server (default policy) refuses it.
    let e = smol::block_on(s.scim.patch(
        ResourceKind::Group,
        &s.group,
        patch_operations([s.users[0].as_str()], [], RemoveForm::ValueList),
    ))
    .unwrap_err();
    assert_eq!(
        (e.status(), e.scim_type()),
        (Some(400), Some("invalidValue")),
        "{e}"
    );
    // RFC 7644 filter form; removing an absent member is a no-op (idempotent retries).
    let ids = [s.users[0].as_str(), "absent\"id"];
    smol::block_on(s.scim.patch(
        ResourceKind::Group,
        &s.group,
        patch_operations(ids, [], RemoveForm::PathFilter),
    ))
    .unwrap();
    assert_eq!(s.endpoint_members(), set(&s.users[1..]));
    // Adding a member already there is a no-op too.
    smol::block_on(s.scim.patch(
        ResourceKind::Group,
        &s.group,
        patch_operations([], [s.users[1].as_str()], RemoveForm::PathFilter),
    ))
    .unwrap();
    assert_eq!(s.endpoint_members(), set(&s.users[1..]));
}
