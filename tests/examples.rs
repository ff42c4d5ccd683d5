//! The configurations in `examples/` (one per SCIM cloud) load as they are, and the limits
//! they encode hold for what the agent would send: each config is loaded by the agent's own
//! loader (its `/etc/idrelay` paths moved into a scratch directory holding 0600 secret
//! files), its profile applied to the built-in Active Directory and OpenLDAP profiles, real
//! directory entries (two e-mails, three phone numbers, a manager, a 250-member group)
//! mapped, and the bodies and PATCH plans checked against the service's published limits
//! (examples/README.md names them and their sources).

use std::fs;
use std::path::{Path, PathBuf};

use idrelay::app::config::Config;
use idrelay::ldap::Entry;
use idrelay::scim::mapping::{map_entry, Reference};
use idrelay::scim::profile::{ProfileKind, SyncProfile};
use idrelay::scim::ResourceKind;
use idrelay::sync::members::plan_chunks;
use serde_json::Value;

mod common;
use common::{write_secret, TempDir};

const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// The example's config, loaded by the agent's loader from a scratch copy, and the profile
/// it names applied to the built-in profile of `kind`.
fn load(name: &str, tmp: &TempDir, kind: ProfileKind) -> (Config, SyncProfile) {
    let dir = examples().join(name);
    let etc = tmp.path().join("etc");
    fs::create_dir_all(&etc).unwrap();
    for secret in ["ldap-password", "scim-token"] {
        write_secret(&etc.join(secret), "not-a-real-secret-0123456789");
    }
    if dir.join("profile.toml").exists() {
        fs::copy(dir.join("profile.toml"), etc.join("profile.toml")).unwrap();
    }
    let text = fs::read_to_string(dir.join("idrelay.toml"))
        .unwrap()
        .replace("/etc/idrelay", etc.to_str().unwrap())
        .replace(
            "/var/lib/idrelay",
            tmp.path().join("state").to_str().unwrap(),
        );
    let path = tmp.path().join("idrelay.toml");
    fs::write(&path, text).unwrap();
    let c = Config::load(&path).unwrap_or_else(|e| panic!("examples/{name}: {e}"));
    let mut profile = SyncProfile::default_for(kind);
    if let Some(p) = &c.sync.profile_file {
        profile = profile
            .with_overrides_from_file(p)
            .unwrap_or_else(|e| panic!("examples/{name}/profile.toml: {e}"));
    }
    (c, profile)
}

fn ad_user() -> Entry {
    Entry::new("CN=Ann Lee,OU=Staff,DC=branch,DC=example")
        .with("objectClass", "user")
        .with("objectGUID", vec![7u8; 16])
        .with("userPrincipalName", "ann@branch.example")
        .with("givenName", "Ann")
        .with("sn", "Lee")
        .with("displayName", "Ann Lee")
        .with("mail", "ann@branch.example")
        .with("mail", "a.lee@branch.example")
        .with("telephoneNumber", "+1 555 0100")
        .with("telephoneNumber", "+1 555 0101")
        .with("mobile", "+1 555 0199")
        .with("title", "Engineer")
        .with("employeeID", "1042")
        .with("department", "R&D")
        .with("manager", "CN=Boss,OU=Staff,DC=branch,DC=example")
        .with("userAccountControl", "512")
}

fn openldap_user() -> Entry {
    Entry::new("uid=ann,ou=people,dc=branch,dc=example")
        .with("objectClass", "inetOrgPerson")
        .with("entryUUID", "6a0f3a0e-3b7e-103f-8b1a-2b5c1d0e9f11")
        .with("uid", "ann")
        .with("cn", "Ann Lee")
        .with("givenName", "Ann")
        .with("sn", "Lee")
        .with("mail", "ann@branch.example")
        .with("mail", "a.lee@branch.example")
        .with("telephoneNumber", "+1 555 0100")
        .with("mobile", "+1 555 0199")
}

fn resolve(dn: &str) -> Reference {
    if dn.starts_with("CN=Boss") {
        Reference::Id("boss-id".into())
    } else {
        Reference::OutOfScope
    }
}

fn user_bodies(profile_of: &dyn Fn(ProfileKind) -> SyncProfile) -> Vec<Value> {
    [
        (ProfileKind::ActiveDirectory, ad_user()),
        (ProfileKind::OpenLdap, openldap_user()),
    ]
    .into_iter()
    .map(|(kind, entry)| {
        map_entry(&entry, ResourceKind::User, &profile_of(kind), &resolve)
            .unwrap()
            .resource
    })
    .collect()
}

fn entries(body: &Value, attribute: &str) -> usize {
    body.get(attribute)
        .and_then(Value::as_array)
        .map_or(0, Vec::len)
}

/// The most member values one PATCH carries for a membership change of `removes` and `adds`.
fn largest_member_patch(chunk: usize, removes: usize, adds: usize) -> usize {
    plan_chunks(removes, adds, chunk)
        .map(|c| c.removes.len() + c.adds.len())
        .max()
        .unwrap_or(0)
}

/// AWS IAM Identity Center: one e-mail (primary), one phone number; at most 100 membership
/// changes per PatchGroup; users without given name or surname are left out by the filter.
#[test]
fn aws_iam_identity_center() {
    let tmp = TempDir::new("ex-aws");
    let (c, _) = load(
        "aws-iam-identity-center",
        &tmp,
        ProfileKind::ActiveDirectory,
    );
    assert!(c.scim.url.starts_with("https://"), "{}", c.scim.url);
    let filter = c.scope.user_filter.clone().unwrap();
    assert!(
        filter.contains("(givenName=*)") && filter.contains("(sn=*)"),
        "{filter}"
    );
    assert!(c.sync.member_chunk <= 100);
    assert!(largest_member_patch(c.sync.member_chunk, 120, 130) <= 100);
    for body in user_bodies(&|k| load("aws-iam-identity-center", &tmp, k).1) {
        assert_eq!(entries(&body, "emails"), 1, "{body}");
        assert_eq!(body["emails"][0]["primary"], true, "{body}");
        assert_eq!(entries(&body, "phoneNumbers"), 1, "{body}");
        assert!(entries(&body, "addresses") <= 1, "{body}");
        for required in ["userName", "displayName"] {
            assert!(body[required].is_string(), "{required}: {body}");
        }
        for required in ["givenName", "familyName"] {
            assert!(body["name"][required].is_string(), "{required}: {body}");
        }
        for refused in [
            "password",
            "ims",
            "photos",
            "entitlements",
            "x509Certificates",
            "groups",
        ] {
            assert!(body.get(refused).is_none(), "{refused}: {body}");
        }
    }
}

/// GitHub EMU: externalId, userName, displayName, active and one e-mail with value, type and
/// primary; nothing its user schema lacks; few requests in flight; users never deleted.
#[test]
fn github_enterprise_managed_users() {
    let tmp = TempDir::new("ex-gh");
    let (c, _) = load("github-emu", &tmp, ProfileKind::ActiveDirectory);
    assert!(c.sync.concurrency <= 2);
    assert_eq!(
        c.sync.user_delete,
        idrelay::app::config::UserDelete::Deactivate
    );
    for body in user_bodies(&|k| load("github-emu", &tmp, k).1) {
        for required in ["externalId", "userName", "displayName"] {
            assert!(body[required].is_string(), "{required}: {body}");
        }
        assert_eq!(entries(&body, "emails"), 1, "{body}");
        let email = &body["emails"][0];
        assert!(
            email["value"].is_string() && email["type"].is_string(),
            "{body}"
        );
        assert_eq!(email["primary"], true, "{body}");
        assert!(body.get("phoneNumbers").is_none(), "{body}");
        assert!(body.get("title").is_none(), "{body}");
        assert!(body.get(ENTERPRISE).is_none(), "{body}");
        let schemas = body["schemas"].as_array().unwrap();
        assert_eq!(schemas.len(), 1, "core User schema only: {body}");
    }
    // AD accounts carry `active`.
    let ad = user_bodies(&|k| load("github-emu", &tmp, k).1).remove(0);
    assert_eq!(ad["active"], true, "{ad}");
}

/// Google Cloud Identity: one member addition or removal per Group patch request; one
/// e-mail (Google adds the userName's own).
#[test]
fn google_cloud_identity() {
    let tmp = TempDir::new("ex-google");
    let (c, _) = load("google-cloud-identity", &tmp, ProfileKind::ActiveDirectory);
    assert_eq!(c.sync.member_chunk, 1);
    assert_eq!(largest_member_patch(c.sync.member_chunk, 3, 4), 1);
    for body in user_bodies(&|k| load("google-cloud-identity", &tmp, k).1) {
        assert!(entries(&body, "emails") <= 1, "{body}");
    }
}

/// Okta's inbound SCIM: the defaults load; every value goes out (nothing published says
/// otherwise).
#[test]
fn okta_inbound_scim() {
    let tmp = TempDir::new("ex-okta");
    let (c, profile) = load("okta-inbound-scim", &tmp, ProfileKind::OpenLdap);
    assert!(c.sync.profile_file.is_none());
    let body = map_entry(&openldap_user(), ResourceKind::User, &profile, &resolve)
        .unwrap()
        .resource;
    assert_eq!(entries(&body, "emails"), 2, "{body}");
}

/// Every folder in examples/ is one of the services tested here, and has a config.
#[test]
fn every_example_is_tested() {
    let mut names: Vec<String> = fs::read_dir(examples())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "aws-iam-identity-center",
            "github-emu",
            "google-cloud-identity",
            "okta-inbound-scim"
        ]
    );
    for n in &names {
        assert!(examples().join(n).join("idrelay.toml").exists(), "{n}");
    }
}
