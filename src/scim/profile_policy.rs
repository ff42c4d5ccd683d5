//! What local policy lets a sync profile do: the built-in deny-list of password-like
//! attributes that no profile may read, and the check of a profile the cloud pushes with
//! `set-profile` (docs/protocol.md, "What the cloud can and cannot do").
//!
//! The model, kept by [`admit`] (a pure function: local policy and pushed text in, the
//! merged profile or a named refusal out):
//! * **Off unless the branch says so.** Without `relay.accept_profiles` every pushed
//!   profile is refused.
//! * **On top of the local profile, never instead.** The pushed overrides are applied to
//!   the local profile (built-in default plus `sync.profile_file`).
//! * **Mappings only.** What selects objects and anchors them (`filter`, `object_classes`,
//!   `exclude_object_classes`, `anchor`), the account state (`active`) and the references
//!   (`manager`, `members`, which resolve DNs inside the scope) come from local
//!   configuration only; a pushed profile that sets any of them is refused naming the key.
//! * **Only allowed attributes.** A pushed mapping may read only attributes on the local
//!   allow-list: what the local profile reads, plus `relay.profile_attributes`. The sources
//!   of `manager` and `members` may not feed a text attribute (as text they would show
//!   DNs outside the scope).
//! * **Never a password.** No profile, local ones included, reads an attribute on the
//!   deny-list ([`is_password_like`]); names compare case-insensitively, attribute options
//!   (`userPassword;binary`) are ignored, and the well-known OIDs count too.

use std::fmt;

use crate::scim::profile::{Overrides, ProfileError, Source, SyncProfile, Target};
use crate::scim::ResourceKind;

/// Password-like attributes by name (compared case-insensitively, options stripped).
const PASSWORD_LIKE: &[&str] = &[
    // RFC 2256 / RFC 3112 / ppolicy / 389-DS
    "userPassword",
    "authPassword",
    "pwdHistory",
    "passwordHistory",
    "userPKCS12",
    "olcRootPW",
    "nsds5ReplicaCredentials",
    // Active Directory / Samba AD
    "unicodePwd",
    "dBCSPwd",
    "ntPwdHistory",
    "lmPwdHistory",
    "supplementalCredentials",
    "unixUserPassword",
    "msSFU30Password",
    "trustAuthIncoming",
    "trustAuthOutgoing",
    "initialAuthIncoming",
    "initialAuthOutgoing",
    "currentValue",
    "priorValue",
    "msDS-ExecuteScriptPassword",
    "msPKIAccountCredentials",
    "msPKIDPAPIMasterKeys",
    "msFVE-RecoveryPassword",
    "msFVE-KeyPackage",
    "msTPM-OwnerInformation",
    "msDS-KeyCredentialLink",
    // Samba 3 / FreeIPA / Kerberos / IBM i / FreeRADIUS
    "sambaNTPassword",
    "sambaLMPassword",
    "sambaPasswordHistory",
    "ipaNTHash",
    "krbPrincipalKey",
    "krbMKey",
    "krb5Key",
    "os400Password",
    "radiusTunnelPassword",
];

/// Password-like attribute families by name prefix: LAPS (legacy and Windows LAPS) and
/// group managed service account passwords.
const PASSWORD_LIKE_PREFIXES: &[&str] = &["ms-Mcs-AdmPwd", "msLAPS-", "msDS-ManagedPassword"];

/// The numeric OIDs of password-like attributes (checked against the schemas they come from).
const PASSWORD_LIKE_OIDS: &[&str] = &[
    "2.5.4.35",                   // userPassword
    "1.3.6.1.4.1.4203.1.3.4",     // authPassword
    "1.3.6.1.4.1.42.2.27.8.1.20", // pwdHistory
    "2.16.840.1.113730.3.1.216",  // userPKCS12
    "1.2.840.113556.1.4.90",      // unicodePwd
    "1.2.840.113556.1.4.55",      // dBCSPwd
    "1.2.840.113556.1.4.94",      // ntPwdHistory
    "1.2.840.113556.1.4.160",     // lmPwdHistory
    "1.2.840.113556.1.4.125",     // supplementalCredentials
    "1.2.840.113556.1.4.1910",    // unixUserPassword
    "1.2.840.113556.1.4.129",     // trustAuthIncoming
    "1.2.840.113556.1.4.135",     // trustAuthOutgoing
    "1.2.840.113556.1.4.539",     // initialAuthIncoming
    "1.2.840.113556.1.4.540",     // initialAuthOutgoing
    "1.2.840.113556.1.4.27",      // currentValue
    "1.2.840.113556.1.4.100",     // priorValue
    "1.2.840.113556.1.4.1783",    // msDS-ExecuteScriptPassword
    "1.2.840.113556.1.4.1894",    // msPKIAccountCredentials
    "1.2.840.113556.1.4.1893",    // msPKIDPAPIMasterKeys
    "1.2.840.113556.1.4.1964",    // msFVE-RecoveryPassword
    "1.2.840.113556.1.4.1999",    // msFVE-KeyPackage
    "1.2.840.113556.1.4.1966",    // msTPM-OwnerInformation
    "1.3.6.1.4.1.7165.2.1.24",    // sambaLMPassword
    "1.3.6.1.4.1.7165.2.1.25",    // sambaNTPassword
    "1.3.6.1.4.1.7165.2.1.54",    // sambaPasswordHistory
];

/// Whether `attribute` is on the built-in deny-list of password-like attributes: by name
/// (any case), by name prefix (`msLAPS-*`, `ms-Mcs-AdmPwd*`, `msDS-ManagedPassword*`) or by
/// numeric OID; attribute options (`;binary`) and an `OID.` prefix are ignored.
pub fn is_password_like(attribute: &str) -> bool {
    let base = attribute.split(';').next().unwrap_or("").trim();
    let base = strip_prefix_ci(base, "oid.").unwrap_or(base);
    PASSWORD_LIKE.iter().any(|d| d.eq_ignore_ascii_case(base))
        || PASSWORD_LIKE_PREFIXES
            .iter()
            .any(|p| strip_prefix_ci(base, p).is_some())
        || PASSWORD_LIKE_OIDS.contains(&base)
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// The first password-like attribute `profile` reads, with the profile key that makes it
/// read it (`user.attributes."nickName"`, `group.anchor.attributes`).
pub fn password_like_in(profile: &SyncProfile) -> Option<(String, String)> {
    for kind in [ResourceKind::User, ResourceKind::Group] {
        let r = profile.resource(kind);
        if let Some(a) = r.anchor().attributes.iter().find(|a| is_password_like(a)) {
            return Some((format!("{}.anchor.attributes", kind.word()), a.clone()));
        }
        for m in r.mappings() {
            if let Some(a) = m.source.attributes().iter().find(|a| is_password_like(a)) {
                return Some((
                    format!("{}.attributes.\"{}\"", kind.word(), m.target),
                    a.clone(),
                ));
            }
        }
    }
    None
}

/// The first password-like attribute an override text maps, with its key; the text's own
/// errors are returned as they are.
pub fn password_like_in_overrides(text: &str) -> Result<Option<(String, String)>, ProfileError> {
    let o = Overrides::parse(text)?;
    for (_, m) in o.mappings() {
        if let Some(a) = m
            .source
            .iter()
            .flat_map(|s| s.attributes())
            .find(|a| is_password_like(a))
        {
            return Ok(Some((m.key.clone(), a.clone())));
        }
    }
    Ok(None)
}

/// The branch's local policy for profiles pushed by the cloud (`[relay]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfilePolicy {
    /// `relay.accept_profiles`: whether `set-profile` is accepted at all (default no).
    pub accept: bool,
    /// `relay.profile_attributes`: attributes a pushed mapping may read beyond those the
    /// local profile reads.
    pub extra_attributes: Vec<String>,
}

impl ProfilePolicy {
    /// The allow-list for pushed mappings over `local`: every attribute the local profile
    /// reads, then `extra_attributes`, once each (case-insensitively), password-like ones
    /// left out.
    pub fn allowed_attributes(&self, local: &SyncProfile) -> Vec<String> {
        crate::scim::profile::merge_attributes(
            local.object_attributes(),
            self.extra_attributes.clone(),
        )
        .into_iter()
        .filter(|a| !is_password_like(a))
        .collect()
    }
}

/// Why a pushed profile was refused; each names the key and the local setting.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProfileRefusal {
    /// `relay.accept_profiles` is off (403).
    NotAccepted,
    /// The text is not a valid profile (400).
    Invalid(ProfileError),
    /// The key chooses objects, anchors, the account state or references: set locally only
    /// (403).
    LocalOnly {
        /// The key, e.g. `user.filter` or `user.attributes."active"`.
        key: String,
        /// Where the branch sets it.
        setting: &'static str,
    },
    /// The key maps a password-like attribute (403).
    PasswordLike {
        /// The key.
        key: String,
        /// The attribute.
        attribute: String,
    },
    /// The key maps an attribute that is not on the allow-list (403).
    NotAllowed {
        /// The key.
        key: String,
        /// The attribute.
        attribute: String,
        /// The allow-list.
        allowed: Vec<String>,
    },
    /// The key feeds a text attribute from the source of a reference (403).
    Reference {
        /// The key.
        key: String,
        /// The attribute.
        attribute: String,
    },
}

impl ProfileRefusal {
    /// The HTTP status of the answer.
    pub fn status(&self) -> u16 {
        match self {
            ProfileRefusal::Invalid(_) => 400,
            _ => 403,
        }
    }

    /// The RFC 7644 `scimType`, if any.
    pub fn scim_type(&self) -> Option<&'static str> {
        match self {
            ProfileRefusal::Invalid(_) => Some("invalidValue"),
            _ => None,
        }
    }
}

impl fmt::Display for ProfileRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProfileRefusal::NotAccepted => f.write_str(
                "this branch does not accept sync profiles from the cloud (relay.accept_profiles is off in its local config)",
            ),
            ProfileRefusal::Invalid(e) => e.fmt(f),
            ProfileRefusal::LocalOnly { key, setting } => write!(
                f,
                "profile key {key} is set by the branch only ({setting}): a cloud profile may change attribute mappings, never which objects are synced, how they are anchored, the account state or references"
            ),
            ProfileRefusal::PasswordLike { key, attribute } => write!(
                f,
                "profile key {key}: `{attribute}` is a password-like attribute, which idrelay never reads (built-in deny-list)"
            ),
            ProfileRefusal::NotAllowed {
                key,
                attribute,
                allowed,
            } => write!(
                f,
                "profile key {key}: `{attribute}` is not on the branch's allow-list (what its local profile reads, and relay.profile_attributes): {}",
                allowed.join(", ")
            ),
            ProfileRefusal::Reference { key, attribute } => write!(
                f,
                "profile key {key}: `{attribute}` holds references (manager or members) in the branch's local profile; as text it would show DNs outside the scope"
            ),
        }
    }
}

impl std::error::Error for ProfileRefusal {}

/// Where the branch sets what a pushed profile may not.
fn local_setting(key: &str) -> &'static str {
    match key {
        "user.filter" => "scope.user_filter or sync.profile_file",
        "group.filter" => "scope.group_filter or sync.profile_file",
        _ => "sync.profile_file",
    }
}

/// Judges a profile the cloud pushed (`text`, the override format of docs/profile.md)
/// against the branch's `policy` and its `local` profile: the local profile with the
/// pushed mappings on top, or the first reason to refuse it. Pure.
pub fn admit(
    policy: &ProfilePolicy,
    local: &SyncProfile,
    text: &str,
) -> Result<SyncProfile, ProfileRefusal> {
    if !policy.accept {
        return Err(ProfileRefusal::NotAccepted);
    }
    let o = Overrides::parse(text).map_err(ProfileRefusal::Invalid)?;
    if let Some(key) = o.selection_keys().into_iter().next() {
        let setting = local_setting(&key);
        return Err(ProfileRefusal::LocalOnly { key, setting });
    }
    let references = reference_sources(local);
    let allowed: Vec<String> = policy
        .allowed_attributes(local)
        .into_iter()
        .filter(|a| !references.iter().any(|r| r.eq_ignore_ascii_case(a)))
        .collect();
    for (_, m) in o.mappings() {
        if matches!(m.target, Target::Active | Target::Manager | Target::Members) {
            return Err(ProfileRefusal::LocalOnly {
                key: m.key.clone(),
                setting: "sync.profile_file",
            });
        }
        for a in m.source.iter().flat_map(Source::attributes) {
            if is_password_like(a) {
                return Err(ProfileRefusal::PasswordLike {
                    key: m.key.clone(),
                    attribute: a.clone(),
                });
            }
            if references.iter().any(|x| x.eq_ignore_ascii_case(a)) {
                return Err(ProfileRefusal::Reference {
                    key: m.key.clone(),
                    attribute: a.clone(),
                });
            }
            if !allowed.iter().any(|x| x.eq_ignore_ascii_case(a)) {
                return Err(ProfileRefusal::NotAllowed {
                    key: m.key.clone(),
                    attribute: a.clone(),
                    allowed,
                });
            }
        }
    }
    Ok(local.clone().with(&o))
}

/// The attributes that feed `manager` and `members` in `profile`.
fn reference_sources(profile: &SyncProfile) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for kind in [ResourceKind::User, ResourceKind::Group] {
        for m in profile.resource(kind).mappings() {
            if matches!(m.target, Target::Manager | Target::Members) {
                out.extend(m.source.attributes().iter().cloned());
            }
        }
    }
    out
}

/// `text` for one log line: control characters, quotes and backslashes escaped, at most
/// `max` characters (the rest counted).
pub fn escape_for_log(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .flat_map(char::escape_debug)
        .collect();
    let rest = text.chars().count().saturating_sub(max);
    if rest > 0 {
        out.push_str(&format!("... ({rest} more characters)"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::profile::ProfileKind;

    fn openldap() -> SyncProfile {
        SyncProfile::default_for(ProfileKind::OpenLdap)
    }

    fn on() -> ProfilePolicy {
        ProfilePolicy {
            accept: true,
            extra_attributes: vec!["description".into()],
        }
    }

    fn refusal(policy: &ProfilePolicy, text: &str) -> ProfileRefusal {
        admit(policy, &openldap(), text).unwrap_err()
    }

    #[test]
    fn password_like_attributes_in_any_case_form_or_oid() {
        for a in [
            "userPassword",
            "USERPASSWORD",
            "userPassword;binary",
            " userpassword ",
            "unicodePwd",
            "supplementalCredentials",
            "sambaNTPassword",
            "sambaLMPassword",
            "pwdHistory",
            "krbPrincipalKey",
            "unixUserPassword",
            "msSFU30Password",
            "os400Password",
            "ms-Mcs-AdmPwd",
            "ms-mcs-admpwd",
            "msLAPS-Password",
            "mslaps-encryptedpassword",
            "msDS-ManagedPassword",
            "2.5.4.35",
            "OID.2.5.4.35",
            "1.2.840.113556.1.4.90",
            "authPassword;x-scheme",
        ] {
            assert!(is_password_like(a), "{a}");
        }
        for a in [
            "title",
            "cn",
            "mail",
            "passwordless",
            "userPasswordHint",
            "2.5.4.3",
            "",
        ] {
            assert!(!is_password_like(a), "{a}");
        }
    }

    #[test]
    fn nothing_is_accepted_unless_the_branch_says_so() {
        for text in ["", "[user.attributes]\nnickName = \"cn\"\n", "[user"] {
            assert_eq!(
                refusal(&ProfilePolicy::default(), text),
                ProfileRefusal::NotAccepted
            );
        }
        let e = ProfileRefusal::NotAccepted;
        assert_eq!(e.status(), 403);
        assert!(e.to_string().contains("relay.accept_profiles"), "{e}");
    }

    #[test]
    fn a_mapping_inside_the_allow_list_goes_on_top_of_the_local_profile() {
        let local = openldap()
            .with_overrides("[user.attributes]\ntitle = \"description\"\n")
            .unwrap();
        let merged = admit(&on(), &local, "[user.attributes]\nnickName = \"cn\"\n").unwrap();
        assert_eq!(
            merged,
            local
                .clone()
                .with_overrides("[user.attributes]\nnickName = \"cn\"\n")
                .unwrap(),
            "the local mapping stays, the pushed one is added"
        );
        // relay.profile_attributes extends the allow-list.
        admit(
            &on(),
            &openldap(),
            "[group.attributes]\ndescription = \"description\"\n",
        )
        .unwrap();
        // Dropping a text mapping is a mapping change too; an empty profile is the local one.
        admit(&on(), &openldap(), "[user.attributes]\ntitle = \"\"\n").unwrap();
        assert_eq!(admit(&on(), &local, "").unwrap(), local);
    }

    #[test]
    fn password_like_attributes_are_refused_even_when_allowed_locally() {
        let lax = ProfilePolicy {
            accept: true,
            extra_attributes: vec!["userPassword".into(), "2.5.4.35".into()],
        };
        for (text, key, attribute) in [
            (
                "[user.attributes]\nnickName = \"userPassword\"",
                "user.attributes.\"nickName\"",
                "userPassword",
            ),
            (
                "[user.attributes]\nnickName = \"USERPASSWORD\"",
                "user.attributes.\"nickName\"",
                "USERPASSWORD",
            ),
            (
                "[user.attributes]\ntitle = [\"cn\", \"2.5.4.35\"]",
                "user.attributes.\"title\"",
                "2.5.4.35",
            ),
            (
                "[group.attributes]\ndescription = \"sambaNTPassword\"",
                "group.attributes.\"description\"",
                "sambaNTPassword",
            ),
        ] {
            let e = refusal(&lax, text);
            assert_eq!(
                e,
                ProfileRefusal::PasswordLike {
                    key: key.into(),
                    attribute: attribute.into()
                },
                "{text}"
            );
            assert_eq!(e.status(), 403);
            assert!(e.to_string().contains("password-like"), "{e}");
        }
        // Attribute options are not attribute names: the text is invalid (400).
        let e = refusal(
            &lax,
            "[user.attributes]\nnickName = \"userPassword;binary\"",
        );
        assert!(matches!(e, ProfileRefusal::Invalid(_)), "{e:?}");
        assert_eq!(e.status(), 400);
    }

    #[test]
    fn attributes_off_the_allow_list_are_refused_naming_the_setting() {
        let e = refusal(&on(), "[user.attributes]\nnickName = \"homeDirectory\"");
        match &e {
            ProfileRefusal::NotAllowed {
                key,
                attribute,
                allowed,
            } => {
                assert_eq!(key, "user.attributes.\"nickName\"");
                assert_eq!(attribute, "homeDirectory");
                assert!(allowed.iter().any(|a| a == "description"), "{allowed:?}");
                assert!(allowed.iter().any(|a| a == "uid"), "{allowed:?}");
                assert!(
                    !allowed.iter().any(|a| a == "member"),
                    "references: {allowed:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("relay.profile_attributes"), "{e}");
        // Without the extension, description is not on it.
        let strict = ProfilePolicy {
            accept: true,
            extra_attributes: Vec::new(),
        };
        assert!(matches!(
            refusal(&strict, "[user.attributes]\ntitle = \"description\""),
            ProfileRefusal::NotAllowed { .. }
        ));
    }

    #[test]
    fn selection_account_state_and_references_are_local_only() {
        for (text, key) in [
            ("[user]\nfilter = \"(objectClass=*)\"", "user.filter"),
            ("[group]\nfilter = \"(objectClass=*)\"", "group.filter"),
            ("[group]\nobject_classes = [\"inetOrgPerson\"]", "group.object_classes"),
            ("[user]\nexclude_object_classes = [\"person\"]", "user.exclude_object_classes"),
            ("[user.anchor]\nattributes = [\"uid\"]\nencoding = \"text\"", "user.anchor"),
            ("[user.attributes]\nactive = true", "user.attributes.\"active\""),
            ("[user.attributes]\n\"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager\" = \"cn\"", "user.attributes.\"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager\""),
            ("[group.attributes]\nmembers = \"member\"", "group.attributes.\"members\""),
            ("[group.attributes]\nmembers = \"\"", "group.attributes.\"members\""),
        ] {
            match refusal(&on(), text) {
                ProfileRefusal::LocalOnly { key: k, setting } => {
                    assert_eq!(k, key, "{text}");
                    assert!(setting.contains("sync.profile_file"), "{setting}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        let e = refusal(&on(), "[user]\nfilter = \"(objectClass=*)\"");
        assert!(e.to_string().contains("scope.user_filter"), "{e}");
        // A reference source as text would show DNs outside the scope.
        for text in [
            "[group.attributes]\ndisplayName = \"member\"",
            "[user.attributes]\nnickName = \"manager\"",
        ] {
            assert!(
                matches!(refusal(&on(), text), ProfileRefusal::Reference { .. }),
                "{text}"
            );
        }
    }

    #[test]
    fn invalid_text_is_400_naming_the_key() {
        let e = refusal(&on(), "[user.attributes]\nfoo = \"cn\"");
        assert_eq!(e.status(), 400);
        assert!(e.to_string().contains("user.attributes.\"foo\""), "{e}");
        assert_eq!(refusal(&on(), "[user").status(), 400);
    }

    #[test]
    fn password_like_attributes_in_local_profiles_are_found_with_their_key() {
        assert_eq!(password_like_in(&openldap()), None);
        for kind in [ProfileKind::ActiveDirectory, ProfileKind::Generic] {
            assert_eq!(password_like_in(&SyncProfile::default_for(kind)), None);
        }
        let p = openldap()
            .with_overrides("[user.attributes]\nnickName = \"userPassword\"")
            .unwrap();
        assert_eq!(
            password_like_in(&p),
            Some(("user.attributes.\"nickName\"".into(), "userPassword".into()))
        );
        let p = openldap()
            .with_overrides(
                "[group.anchor]\nattributes = [\"entryUUID\", \"unicodePwd\"]\nencoding = \"text\"",
            )
            .unwrap();
        assert_eq!(
            password_like_in(&p).map(|x| x.0),
            Some("group.anchor.attributes".into())
        );
        assert_eq!(
            password_like_in_overrides(
                "[user.attributes]\ntitle = [\"title\", \"msLAPS-Password\"]"
            )
            .unwrap(),
            Some(("user.attributes.\"title\"".into(), "msLAPS-Password".into()))
        );
        assert_eq!(password_like_in_overrides("").unwrap(), None);
        assert!(password_like_in_overrides("[user").is_err());
    }

    #[test]
    fn log_text_is_one_line_and_bounded() {
        assert_eq!(
            escape_for_log("[user.attributes]\nnickName = \"cn\"\n", 100),
            r#"[user.attributes]\nnickName = \"cn\"\n"#
        );
        assert_eq!(escape_for_log("a\u{1b}[2Jb\r", 100), "a\\u{1b}[2Jb\\r");
        assert_eq!(escape_for_log("abcdef", 3), "abc... (3 more characters)");
    }
}
