//! The Active Directory default profile against a real Samba AD DC: anchors, the
//! userAccountControl flag, manager and group members.

mod common;

use common::{Agent, Dir, ScimServer, TestOu};

const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

/// `unicodePwd` value: base64 of the quoted password in UTF-16LE.
fn unicode_pwd(pw: &str) -> String {
    let quoted: Vec<u8> = format!("\"{pw}\"")
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect();
    idrelay::base64::encode(&quoted)
}

#[test]
fn ad_default_profile_maps_real_samba_users_and_groups() {
    let dir = Dir::samba();
    let ou = TestOu::create(&dir, "adexp");
    let o = &ou.dn;
    dir.modify(&format!(
        "dn: CN=Mia Boss,{o}
objectClass: user
sAMAccountName: tb-mia
userPrincipalName: mia.boss@branch.test
givenName: Mia
sn: Boss
displayName: Mia Boss
mail: mia.boss@branch.test
title: Branch Manager
department: Management
company: Branch Inc
employeeID: E100
telephoneNumber: +1 555 0100
mobile: +1 555 0199
unicodePwd:: {pw}
userAccountControl: 512

dn: CN=Ann Lee,{o}
objectClass: user
sAMAccountName: tb-ann
userPrincipalName: ann.lee@branch.test
givenName: Ann
sn: Lee
displayName: Ann Lee
mail: ann.lee@branch.test
manager: CN=Mia Boss,{o}
unicodePwd:: {pw}
userAccountControl: 512

dn: CN=Old Account,{o}
objectClass: user
sAMAccountName: tb-old
userPrincipalName: old@branch.test
displayName: Old Account

dn: CN=Branch Staff,{o}
objectClass: group
sAMAccountName: tb-staff
member: CN=Ann Lee,{o}
member: CN=Old Account,{o}
member: CN=Administrator,CN=Users,{base}
",
        pw = unicode_pwd("Test-Pass-2026!"),
        base = dir.base,
    ));
    let guid = |cn: &str| {
        dir.attr_ldif(&format!("CN={cn},{o}"), "objectGUID")
            .expect("objectGUID")
    };
    let scim = ScimServer::start();
    let agent = Agent::new(&dir, &[o], &scim.base_url(), &scim.token, "");

    let check = agent.run(&["check"]);
    check.assert_code(0);
    assert!(
        check.stdout.contains("Active Directory"),
        "{}",
        check.stdout
    );

    let run = agent.run(&["sync", "--once", "--quiet"]);
    run.assert_code(0);
    assert!(
        run.summary().contains("(3 users, 1 groups)"),
        "{}",
        run.summary()
    );

    // externalId is the base64 of objectGUID, exactly as ldapsearch prints it.
    let mia = scim
        .by_external_id("Users", &guid("Mia Boss"))
        .expect("Mia by objectGUID");
    assert_eq!(mia["userName"], "mia.boss@branch.test");
    assert_eq!(mia["name"]["givenName"], "Mia");
    assert_eq!(mia["name"]["familyName"], "Boss");
    assert_eq!(mia["title"], "Branch Manager");
    assert_eq!(mia["active"], true);
    assert_eq!(mia["emails"][0]["value"], "mia.boss@branch.test");
    assert_eq!(mia[ENTERPRISE]["department"], "Management");
    assert_eq!(mia[ENTERPRISE]["organization"], "Branch Inc");
    assert_eq!(mia[ENTERPRISE]["employeeNumber"], "E100");

    let ann = scim.by_external_id("Users", &guid("Ann Lee")).unwrap();
    assert_eq!(ann[ENTERPRISE]["manager"]["value"], mia["id"]);
    assert_eq!(ann["active"], true);

    // Created without a password: Samba disables it (userAccountControl 546).
    let old = scim.by_external_id("Users", &guid("Old Account")).unwrap();
    assert_eq!(old["active"], false);

    let staff = scim
        .by_external_id("Groups", &guid("Branch Staff"))
        .unwrap();
    assert_eq!(staff["displayName"], "Branch Staff");
    let mut members: Vec<&str> = staff["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["value"].as_str().unwrap())
        .collect();
    members.sort();
    let mut want = vec![ann["id"].as_str().unwrap(), old["id"].as_str().unwrap()];
    want.sort();
    assert_eq!(members, want, "Administrator is out of scope and left out");

    let again = agent.run(&["sync", "--once", "--quiet"]);
    again.assert_wrote_nothing();
}
