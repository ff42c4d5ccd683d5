//! Sync profiles: which directory objects are users and groups, what the agent reads from
//! them, and which SCIM attribute each LDAP attribute feeds.
//!
//! Owns the built-in defaults per directory family ([`ProfileKind`]), the TOML override
//! format (documented in `docs/profile.md`) and its validation. Mapping itself lives in
//! [`crate::scim::mapping`]; this module only says *what* to map, never touches I/O except
//! [`SyncProfile::with_overrides_from_file`] reading one file.
//!
//! Invariants of a [`SyncProfile`] (kept by construction, so mapping can rely on them):
//! * every SCIM target appears at most once per resource kind, and only targets from the
//!   explicit lists in this module are accepted (unknown paths are a [`ProfileError`]);
//! * users always map `userName` and groups always map `displayName` (they are required by
//!   RFC 7643), and each resource kind has a non-empty anchor attribute list;
//! * every LDAP attribute name is a valid descriptor or numeric OID;
//! * the order of mappings is deterministic (defaults first, then new override keys in key
//!   order), so the mapped JSON is deterministic too.
//!
//! The special transforms stay built in and are attached to fixed targets: the anchor
//! (`externalId`, see [`AnchorEncoding`]), `active` (see [`Source`]), the enterprise
//! `manager` and the group `members` (DN → SCIM id through a resolver). An override may
//! change which LDAP attributes feed them, never the transform.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;

use crate::ldap::Entry;
use crate::scim::resource::{ResourceKind, ENTERPRISE_SCHEMA, GROUP_SCHEMA, USER_SCHEMA};

/// The directory family whose default profile is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProfileKind {
    /// Active Directory or Samba AD.
    ActiveDirectory,
    /// OpenLDAP with inetOrgPerson / groupOfNames / groupOfUniqueNames.
    OpenLdap,
    /// Any other LDAP server (389-DS and friends): the OpenLDAP mapping with `nsUniqueId`
    /// preferred over `entryUUID` as the anchor.
    Generic,
}

impl ProfileKind {
    /// A short lower-case word for logs and reports.
    pub fn word(self) -> &'static str {
        match self {
            ProfileKind::ActiveDirectory => "active-directory",
            ProfileKind::OpenLdap => "openldap",
            ProfileKind::Generic => "generic",
        }
    }
}

/// How the anchor attribute's bytes become the SCIM `externalId`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnchorEncoding {
    /// Exactly 16 raw bytes (a GUID as AD stores it), written as standard base64: Entra's
    /// `immutableId` convention. Any other length is an error.
    Guid,
    /// Any non-empty byte string, written as standard base64.
    Base64,
    /// A non-empty UTF-8 value, used as is (e.g. `entryUUID`).
    Text,
}

impl AnchorEncoding {
    /// The name used in profile files.
    pub fn word(self) -> &'static str {
        match self {
            AnchorEncoding::Guid => "guid",
            AnchorEncoding::Base64 => "base64",
            AnchorEncoding::Text => "text",
        }
    }
}

/// Where a resource's anchor (`externalId`) comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorSource {
    /// Candidate attributes in order: the first one present on the entry is the anchor.
    pub attributes: Vec<String>,
    /// How its value is written.
    pub encoding: AnchorEncoding,
}

/// A SCIM attribute that takes one string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TextPath {
    /// A top-level core attribute, e.g. `title`.
    Core(&'static str),
    /// A sub-attribute of the User `name`, e.g. `name.givenName`.
    Name(&'static str),
    /// One sub-attribute of the entry of a multi-valued attribute that has a given `type`,
    /// e.g. `emails[type eq "work"].value`.
    Typed {
        /// The multi-valued attribute (`emails`, `phoneNumbers`, ...).
        attribute: &'static str,
        /// The canonical `type` value (`work`, `mobile`, ...).
        type_value: &'static str,
        /// The sub-attribute (`value`, or an address part such as `locality`).
        sub: &'static str,
    },
    /// An attribute of the enterprise User extension, e.g. `department`.
    Enterprise(&'static str),
}

impl fmt::Display for TextPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TextPath::Core(a) => f.write_str(a),
            TextPath::Name(s) => write!(f, "name.{s}"),
            TextPath::Typed {
                attribute,
                type_value,
                sub,
            } => write!(f, "{attribute}[type eq \"{type_value}\"].{sub}"),
            TextPath::Enterprise(a) => write!(f, "{ENTERPRISE_SCHEMA}:{a}"),
        }
    }
}

/// A SCIM target of a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// A string attribute, copied from the first LDAP attribute that has a value.
    Text(TextPath),
    /// The User `active` flag (boolean; see [`Source`] for its forms).
    Active,
    /// The enterprise `manager`: a DN resolved to `{"value": <SCIM id>}`.
    Manager,
    /// The Group `members`: DNs resolved to `[{"value": <SCIM id>}]`.
    Members,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Text(p) => p.fmt(f),
            Target::Active => f.write_str("active"),
            Target::Manager => write!(f, "{ENTERPRISE_SCHEMA}:manager"),
            Target::Members => f.write_str("members"),
        }
    }
}

/// Where a target's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// LDAP attributes in order. Text targets and `manager` take the first value of the
    /// first attribute that has one; `members` takes every value of every attribute.
    Attributes(Vec<String>),
    /// `active` from an AD `userAccountControl` integer: active unless bit 0x2
    /// (ACCOUNTDISABLE) is set.
    AccountControl(String),
    /// `active` from an LDAP Boolean (`TRUE` / `FALSE`), inverted when `negate` is set (e.g.
    /// `nsAccountLock`, which is `TRUE` for a locked account).
    Boolean {
        /// The attribute holding the Boolean.
        attribute: String,
        /// Whether `TRUE` means inactive.
        negate: bool,
    },
    /// `active` fixed to this value (directories without a standard account flag).
    Constant(bool),
}

impl Source {
    /// The LDAP attributes this source reads.
    pub fn attributes(&self) -> &[String] {
        match self {
            Source::Attributes(a) => a,
            Source::AccountControl(a) | Source::Boolean { attribute: a, .. } => {
                std::slice::from_ref(a)
            }
            Source::Constant(_) => &[],
        }
    }
}

/// One mapping rule: a SCIM target and its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// What is written.
    pub target: Target,
    /// Where it comes from.
    pub source: Source,
}

/// The rules for one resource kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceProfile {
    filter: String,
    object_classes: Vec<String>,
    exclude_object_classes: Vec<String>,
    anchor: AnchorSource,
    mappings: Vec<Mapping>,
    /// Multi-valued SCIM attributes (`emails`, `phoneNumbers`, ...) sent with at most one
    /// entry: the first mapped (for `emails`, the primary one).
    single_valued: Vec<&'static str>,
    /// How member removals are sent (`[group] member_removal`; always `Auto` for users).
    member_removal: MemberRemoval,
}

/// How a group PATCH removes members (`[group] member_removal`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MemberRemoval {
    /// RFC 7644's filter path (`members[value eq "id"]`); after a 400 or 501 to it, the
    /// value list, kept from then on.
    #[default]
    Auto,
    /// Always the filter path; a refusal is the group's failure.
    Filter,
    /// Always the value list (`{"op":"remove","path":"members","value":[...]}`).
    ValueList,
}

impl MemberRemoval {
    /// The word in the profile.
    pub fn word(self) -> &'static str {
        match self {
            MemberRemoval::Auto => "auto",
            MemberRemoval::Filter => "filter",
            MemberRemoval::ValueList => "value_list",
        }
    }
}

impl ResourceProfile {
    /// The LDAP filter that selects this kind in a search.
    pub fn filter(&self) -> &str {
        &self.filter
    }

    /// An entry is of this kind when it has any of these object classes...
    pub fn object_classes(&self) -> &[String] {
        &self.object_classes
    }

    /// ...and none of these.
    pub fn exclude_object_classes(&self) -> &[String] {
        &self.exclude_object_classes
    }

    /// Where the anchor comes from.
    pub fn anchor(&self) -> &AnchorSource {
        &self.anchor
    }

    /// The mapping rules, in output order.
    pub fn mappings(&self) -> &[Mapping] {
        &self.mappings
    }

    /// The multi-valued attributes sent with one entry at most (`single_valued`).
    pub fn single_valued(&self) -> &[&'static str] {
        &self.single_valued
    }

    /// How member removals are sent (`member_removal`, groups only).
    pub fn member_removal(&self) -> MemberRemoval {
        self.member_removal
    }

    fn matches(&self, entry: &Entry) -> bool {
        self.object_classes
            .iter()
            .any(|c| entry.has_object_class(c))
            && !self
                .exclude_object_classes
                .iter()
                .any(|c| entry.has_object_class(c))
    }
}

/// What to sync and how: the default for a directory family plus any overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncProfile {
    kind: ProfileKind,
    user: ResourceProfile,
    group: ResourceProfile,
}

/// Why a profile override was refused. Every variant names the key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProfileError {
    /// The override file could not be read.
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        detail: String,
    },
    /// The text is not valid TOML, or a key or value has the wrong name or type (the
    /// detail, from the TOML parser, gives line, column and the allowed keys).
    Syntax {
        /// The parser's message.
        detail: String,
    },
    /// A key under `attributes` is not a SCIM attribute this agent can write.
    UnsupportedTarget {
        /// The key, as `user.attributes."<path>"`.
        key: String,
        /// Why, and what is supported.
        allowed: String,
    },
    /// A value is not allowed for its key.
    Invalid {
        /// The key, e.g. `group.filter` or `user.attributes."title"`.
        key: String,
        /// What is wrong and what is allowed.
        detail: String,
    },
}

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProfileError::Read { path, detail } => {
                write!(f, "cannot read profile file {path}: {detail}")
            }
            ProfileError::Syntax { detail } => write!(f, "profile: {detail}"),
            ProfileError::UnsupportedTarget { key, allowed } => {
                write!(f, "profile key {key}: {allowed}")
            }
            ProfileError::Invalid { key, detail } => write!(f, "profile key {key}: {detail}"),
        }
    }
}

impl std::error::Error for ProfileError {}

// --- the supported SCIM targets -------------------------------------------------------

const USER_CORE: &[&str] = &[
    "userName",
    "displayName",
    "nickName",
    "profileUrl",
    "title",
    "userType",
    "preferredLanguage",
    "locale",
    "timezone",
];
/// `description` is not in RFC 7643's core Group schema; many services accept it anyway.
const GROUP_CORE: &[&str] = &["displayName", "description"];
const NAME_SUBS: &[&str] = &[
    "formatted",
    "familyName",
    "givenName",
    "middleName",
    "honorificPrefix",
    "honorificSuffix",
];
const ENTERPRISE: &[&str] = &[
    "employeeNumber",
    "costCenter",
    "organization",
    "division",
    "department",
];
const VALUE_ONLY: &[&str] = &["value"];
const ADDRESS_SUBS: &[&str] = &[
    "formatted",
    "streetAddress",
    "locality",
    "region",
    "postalCode",
    "country",
];
/// Multi-valued User attributes: name, canonical `type` values (RFC 7643 §4.1.2), subs.
const TYPED: &[(&str, &[&str], &[&str])] = &[
    ("emails", &["work", "home", "other"], VALUE_ONLY),
    (
        "phoneNumbers",
        &["work", "home", "mobile", "fax", "pager", "other"],
        VALUE_ONLY,
    ),
    (
        "ims",
        &["aim", "gtalk", "icq", "xmpp", "msn", "skype", "qq", "yahoo"],
        VALUE_ONLY,
    ),
    ("photos", &["photo", "thumbnail"], VALUE_ONLY),
    ("addresses", &["work", "home", "other"], ADDRESS_SUBS),
];

fn canon(list: &[&'static str], name: &str) -> Option<&'static str> {
    list.iter().copied().find(|c| c.eq_ignore_ascii_case(name))
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// The list of supported targets for error messages.
fn supported(kind: ResourceKind) -> String {
    match kind {
        ResourceKind::User => {
            let mut s = format!(
                "{}, active, name.{{{}}}",
                USER_CORE.join(", "),
                NAME_SUBS.join("|")
            );
            for (attr, types, subs) in TYPED {
                s.push_str(&format!(
                    ", {attr}[type eq \"{}\"].{}",
                    types.join("|"),
                    if subs.len() == 1 {
                        subs[0].to_string()
                    } else {
                        format!("{{{}}}", subs.join("|"))
                    }
                ));
            }
            s.push_str(&format!(
                ", {ENTERPRISE_SCHEMA}:{{{}|manager}}",
                ENTERPRISE.join("|")
            ));
            s
        }
        ResourceKind::Group => format!("{}, members", GROUP_CORE.join(", ")),
    }
}

/// Parses a SCIM attribute path from a profile key into a target, or says why not.
fn parse_target(kind: ResourceKind, key: &str) -> Result<Target, String> {
    let unsupported = || {
        format!(
            "not a SCIM {} attribute this agent writes; supported: {}",
            kind.word(),
            supported(kind)
        )
    };
    let core_urn = match kind {
        ResourceKind::User => USER_SCHEMA,
        ResourceKind::Group => GROUP_SCHEMA,
    };
    let path = strip_prefix_ci(key, core_urn)
        .and_then(|rest| rest.strip_prefix(':'))
        .unwrap_or(key);
    if path.eq_ignore_ascii_case("externalId") {
        return Err(format!(
            "externalId is the anchor; set [{}.anchor] instead",
            kind.word()
        ));
    }
    match kind {
        ResourceKind::Group => {
            if path.eq_ignore_ascii_case("members") {
                return Ok(Target::Members);
            }
            canon(GROUP_CORE, path)
                .map(|a| Target::Text(TextPath::Core(a)))
                .ok_or_else(unsupported)
        }
        ResourceKind::User => {
            if let Some(rest) =
                strip_prefix_ci(path, ENTERPRISE_SCHEMA).and_then(|r| r.strip_prefix(':'))
            {
                if rest.eq_ignore_ascii_case("manager") {
                    return Ok(Target::Manager);
                }
                return canon(ENTERPRISE, rest)
                    .map(|a| Target::Text(TextPath::Enterprise(a)))
                    .ok_or_else(unsupported);
            }
            if path.eq_ignore_ascii_case("active") {
                return Ok(Target::Active);
            }
            if let Some(open) = path.find('[') {
                return parse_typed(&path[..open], &path[open..])
                    .map(Target::Text)
                    .ok_or_else(unsupported);
            }
            if let Some((attr, sub)) = path.split_once('.') {
                if attr.eq_ignore_ascii_case("name") {
                    if let Some(s) = canon(NAME_SUBS, sub) {
                        return Ok(Target::Text(TextPath::Name(s)));
                    }
                }
                return Err(unsupported());
            }
            canon(USER_CORE, path)
                .map(|a| Target::Text(TextPath::Core(a)))
                .ok_or_else(unsupported)
        }
    }
}

/// Parses `[type eq "T"].sub` after a multi-valued attribute name.
fn parse_typed(attr: &str, rest: &str) -> Option<TextPath> {
    let (attribute, types, subs) = TYPED
        .iter()
        .find(|(a, _, _)| a.eq_ignore_ascii_case(attr))?;
    let inner_end = rest.find(']')?;
    let inner = &rest[1..inner_end];
    let sub = rest[inner_end + 1..].strip_prefix('.')?;
    let mut words = inner.split_whitespace();
    let (t, op, quoted) = (words.next()?, words.next()?, words.next()?);
    if words.next().is_some() || !t.eq_ignore_ascii_case("type") || !op.eq_ignore_ascii_case("eq") {
        return None;
    }
    let value = quoted.strip_prefix('"')?.strip_suffix('"')?;
    Some(TextPath::Typed {
        attribute,
        type_value: canon(types, value)?,
        sub: canon(subs, sub)?,
    })
}

/// Whether `name` is an LDAP attribute descriptor (RFC 4512 `descr`) or numeric OID.
pub fn is_attribute_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    match bytes.first() {
        Some(b) if b.is_ascii_alphabetic() => bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-'),
        Some(b) if b.is_ascii_digit() => name
            .split('.')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit())),
        _ => false,
    }
}

const ATTRIBUTE_NAME_RULE: &str =
    "an LDAP attribute name is letters, digits and '-' starting with a letter, or a numeric OID";

// --- defaults -------------------------------------------------------------------------

fn attrs(names: &[&str]) -> Source {
    Source::Attributes(names.iter().map(|n| n.to_string()).collect())
}

fn text(path: TextPath, names: &[&str]) -> Mapping {
    Mapping {
        target: Target::Text(path),
        source: attrs(names),
    }
}

fn typed(attribute: &'static str, type_value: &'static str, names: &[&str]) -> Mapping {
    text(
        TextPath::Typed {
            attribute,
            type_value,
            sub: "value",
        },
        names,
    )
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

impl SyncProfile {
    /// The built-in profile for a directory family (see `docs/profile.md` for the tables).
    pub fn default_for(kind: ProfileKind) -> SyncProfile {
        match kind {
            ProfileKind::ActiveDirectory => Self::active_directory(),
            ProfileKind::OpenLdap => Self::openldap(kind, &["entryUUID"]),
            // 389-DS always has nsUniqueId but gets entryUUID only once its plugin is on:
            // preferring nsUniqueId keeps the anchor stable if the plugin is enabled later.
            ProfileKind::Generic => Self::openldap(kind, &["nsUniqueId", "entryUUID"]),
        }
    }

    fn active_directory() -> SyncProfile {
        use TextPath::*;
        let user = ResourceProfile {
            filter: "(&(objectCategory=person)(objectClass=user)(!(isCriticalSystemObject=TRUE)))"
                .to_string(),
            object_classes: strings(&["user"]),
            // Computers (and managed service accounts) are users too in AD's schema.
            exclude_object_classes: strings(&["computer"]),
            anchor: AnchorSource {
                attributes: strings(&["mS-DS-ConsistencyGuid", "objectGUID"]),
                encoding: AnchorEncoding::Guid,
            },
            mappings: vec![
                text(Core("userName"), &["userPrincipalName", "sAMAccountName"]),
                text(Name("givenName"), &["givenName"]),
                text(Name("familyName"), &["sn"]),
                text(Core("displayName"), &["displayName"]),
                typed("emails", "work", &["mail"]),
                typed("phoneNumbers", "work", &["telephoneNumber"]),
                typed("phoneNumbers", "mobile", &["mobile"]),
                text(Core("title"), &["title"]),
                Mapping {
                    target: Target::Active,
                    source: Source::AccountControl("userAccountControl".to_string()),
                },
                text(
                    Enterprise("employeeNumber"),
                    &["employeeNumber", "employeeID"],
                ),
                text(Enterprise("department"), &["department"]),
                text(Enterprise("organization"), &["company"]),
                Mapping {
                    target: Target::Manager,
                    source: attrs(&["manager"]),
                },
            ],
            single_valued: Vec::new(),
            member_removal: MemberRemoval::Auto,
        };
        let group = ResourceProfile {
            filter: "(&(objectClass=group)(!(isCriticalSystemObject=TRUE)))".to_string(),
            object_classes: strings(&["group"]),
            exclude_object_classes: Vec::new(),
            anchor: user.anchor.clone(),
            mappings: vec![
                text(Core("displayName"), &["cn"]),
                Mapping {
                    target: Target::Members,
                    source: attrs(&["member"]),
                },
            ],
            single_valued: Vec::new(),
            member_removal: MemberRemoval::Auto,
        };
        SyncProfile {
            kind: ProfileKind::ActiveDirectory,
            user,
            group,
        }
    }

    fn openldap(kind: ProfileKind, anchor: &[&str]) -> SyncProfile {
        use TextPath::*;
        let anchor = AnchorSource {
            attributes: strings(anchor),
            encoding: AnchorEncoding::Text,
        };
        let user = ResourceProfile {
            filter: "(objectClass=inetOrgPerson)".to_string(),
            object_classes: strings(&["inetOrgPerson"]),
            exclude_object_classes: Vec::new(),
            anchor: anchor.clone(),
            mappings: vec![
                text(Core("userName"), &["uid", "mail"]),
                text(Name("givenName"), &["givenName"]),
                text(Name("familyName"), &["sn"]),
                text(Core("displayName"), &["displayName", "cn"]),
                typed("emails", "work", &["mail"]),
                typed("phoneNumbers", "work", &["telephoneNumber"]),
                typed("phoneNumbers", "mobile", &["mobile"]),
                text(Core("title"), &["title"]),
                // inetOrgPerson has no account flag: every user in scope is active.
                Mapping {
                    target: Target::Active,
                    source: Source::Constant(true),
                },
                text(Enterprise("employeeNumber"), &["employeeNumber"]),
                text(Enterprise("department"), &["departmentNumber"]),
                text(Enterprise("organization"), &["o"]),
                Mapping {
                    target: Target::Manager,
                    source: attrs(&["manager"]),
                },
            ],
            single_valued: Vec::new(),
            member_removal: MemberRemoval::Auto,
        };
        let group = ResourceProfile {
            filter: "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames))".to_string(),
            object_classes: strings(&["groupOfNames", "groupOfUniqueNames"]),
            exclude_object_classes: Vec::new(),
            anchor,
            mappings: vec![
                text(Core("displayName"), &["cn"]),
                Mapping {
                    target: Target::Members,
                    source: attrs(&["member", "uniqueMember"]),
                },
            ],
            single_valued: Vec::new(),
            member_removal: MemberRemoval::Auto,
        };
        SyncProfile { kind, user, group }
    }

    /// The directory family this profile started from.
    pub fn kind(&self) -> ProfileKind {
        self.kind
    }

    /// The rules for one resource kind.
    pub fn resource(&self, kind: ResourceKind) -> &ResourceProfile {
        match kind {
            ResourceKind::User => &self.user,
            ResourceKind::Group => &self.group,
        }
    }

    fn resource_mut(&mut self, kind: ResourceKind) -> &mut ResourceProfile {
        match kind {
            ResourceKind::User => &mut self.user,
            ResourceKind::Group => &mut self.group,
        }
    }

    /// The LDAP filter that selects `kind` (the config may still override it).
    pub fn default_filter(&self, kind: ResourceKind) -> &str {
        &self.resource(kind).filter
    }

    /// Every LDAP attribute mapping needs for `kind`: `objectClass`, the anchor candidates
    /// and every mapped source, once each (case-insensitively), in a fixed order.
    pub fn ldap_attributes(&self, kind: ResourceKind) -> Vec<String> {
        let r = self.resource(kind);
        let mut out: Vec<String> = Vec::new();
        let names = std::iter::once("objectClass")
            .chain(r.anchor.attributes.iter().map(String::as_str))
            .chain(
                r.mappings
                    .iter()
                    .flat_map(|m| m.source.attributes().iter().map(String::as_str)),
            );
        for name in names {
            if !out.iter().any(|o| o.eq_ignore_ascii_case(name)) {
                out.push(name.to_string());
            }
        }
        out
    }

    /// [`SyncProfile::ldap_attributes`] of users and groups together, once each: what a
    /// read of an object of either kind asks for.
    pub fn object_attributes(&self) -> Vec<String> {
        merge_attributes(
            self.ldap_attributes(ResourceKind::User),
            self.ldap_attributes(ResourceKind::Group),
        )
    }

    /// The attributes a group's `members` are read from (`member`, `uniqueMember`), once
    /// each: what group-based scoping reads.
    pub fn member_attributes(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for a in self
            .resource(ResourceKind::Group)
            .mappings
            .iter()
            .filter(|m| m.target == Target::Members)
            .flat_map(|m| m.source.attributes().iter())
        {
            if !out.iter().any(|x| x.eq_ignore_ascii_case(a)) {
                out.push(a.clone());
            }
        }
        out
    }

    /// The attributes [`crate::scim::mapping::anchor_of`] reads, and nothing else: what a
    /// full pass's scope scan asks for of groups (it needs each group's DN and anchor only;
    /// users it reads whole, once, for their phase).
    pub fn anchor_attributes(&self, kind: ResourceKind) -> Vec<String> {
        self.resource(kind).anchor.attributes.clone()
    }

    /// [`SyncProfile::ldap_attributes`] of `kind` without the sources of `members`: enough
    /// to classify an object and compute its anchor, without the member lists that can
    /// hold a million values.
    pub fn identity_attributes(&self, kind: ResourceKind) -> Vec<String> {
        let members: Vec<&String> = self
            .resource(kind)
            .mappings
            .iter()
            .filter(|m| m.target == Target::Members)
            .flat_map(|m| m.source.attributes().iter())
            .collect();
        self.ldap_attributes(kind)
            .into_iter()
            .filter(|a| !members.iter().any(|m| m.eq_ignore_ascii_case(a)))
            .collect()
    }

    /// Whether `entry` is a user or a group under this profile (by object class), or
    /// neither.
    pub fn classify(&self, entry: &Entry) -> Option<ResourceKind> {
        [ResourceKind::User, ResourceKind::Group]
            .into_iter()
            .find(|k| self.resource(*k).matches(entry))
    }

    /// Reads a TOML override file and applies it (see [`SyncProfile::with_overrides`]).
    pub fn with_overrides_from_file(self, path: &Path) -> Result<SyncProfile, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|e| ProfileError::Read {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        self.with_overrides(&text)
    }

    /// Applies TOML overrides (format in `docs/profile.md`). All or nothing: on error the
    /// profile is dropped and the error names the first bad key.
    pub fn with_overrides(self, toml_text: &str) -> Result<SyncProfile, ProfileError> {
        Overrides::parse(toml_text).map(|o| self.with(&o))
    }

    /// Applies overrides that [`Overrides::parse`] checked (nothing can fail any more).
    pub fn with(mut self, o: &Overrides) -> SyncProfile {
        for (kind, r) in [
            (ResourceKind::User, &o.user),
            (ResourceKind::Group, &o.group),
        ] {
            if let Some(r) = r {
                self.resource_mut(kind).apply(r);
            }
        }
        self
    }
}

/// An override text, parsed and checked key by key but not applied: what a caller that
/// must judge an override (the cloud's, see [`crate::scim::profile_policy`]) looks at.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Overrides {
    user: Option<ResourceOverrides>,
    group: Option<ResourceOverrides>,
}

/// The overrides of one resource kind.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct ResourceOverrides {
    filter: Option<String>,
    object_classes: Option<Vec<String>>,
    exclude_object_classes: Option<Vec<String>>,
    anchor: Option<AnchorSource>,
    mappings: Vec<MappingOverride>,
    single_valued: Option<Vec<&'static str>>,
    member_removal: Option<MemberRemoval>,
}

/// One key under `[user.attributes]` or `[group.attributes]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingOverride {
    /// The key as written, e.g. `user.attributes."nickName"`.
    pub key: String,
    /// The SCIM attribute it names.
    pub target: Target,
    /// Its new source; `None` drops the mapping.
    pub source: Option<Source>,
}

impl Overrides {
    /// Parses and checks override text (format in `docs/profile.md`); the error names the
    /// first bad key.
    pub fn parse(toml_text: &str) -> Result<Overrides, ProfileError> {
        let raw: RawOverrides = toml::from_str(toml_text).map_err(|e| ProfileError::Syntax {
            detail: e.to_string().trim_end().to_string(),
        })?;
        Ok(Overrides {
            user: raw
                .user
                .map(|r| ResourceOverrides::parse(ResourceKind::User, r))
                .transpose()?,
            group: raw
                .group
                .map(|r| ResourceOverrides::parse(ResourceKind::Group, r))
                .transpose()?,
        })
    }

    /// The keys that choose which objects are synced, what they are and how they are
    /// anchored (`user.filter`, `group.object_classes`, `user.exclude_object_classes`,
    /// `group.anchor`), users first.
    pub fn selection_keys(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (kind, r) in [
            (ResourceKind::User, &self.user),
            (ResourceKind::Group, &self.group),
        ] {
            let Some(r) = r else { continue };
            let section = kind.word();
            for (set, field) in [
                (r.filter.is_some(), "filter"),
                (r.object_classes.is_some(), "object_classes"),
                (r.exclude_object_classes.is_some(), "exclude_object_classes"),
                (r.anchor.is_some(), "anchor"),
            ] {
                if set {
                    out.push(format!("{section}.{field}"));
                }
            }
        }
        out
    }

    /// The attribute keys with their resource kind, users first, each in key order.
    pub fn mappings(&self) -> impl Iterator<Item = (ResourceKind, &MappingOverride)> {
        [
            (ResourceKind::User, &self.user),
            (ResourceKind::Group, &self.group),
        ]
        .into_iter()
        .flat_map(|(kind, r)| {
            r.iter()
                .flat_map(move |r| r.mappings.iter().map(move |m| (kind, m)))
        })
    }
}

impl ResourceOverrides {
    fn parse(kind: ResourceKind, raw: RawResource) -> Result<ResourceOverrides, ProfileError> {
        let section = kind.word();
        let invalid = |field: &str, detail: String| ProfileError::Invalid {
            key: format!("{section}.{field}"),
            detail,
        };
        let mut out = ResourceOverrides::default();
        if let Some(filter) = raw.filter {
            crate::ldap::filter::check(&filter).map_err(|d| invalid("filter", d))?;
            out.filter = Some(filter.trim().to_string());
        }
        if let Some(classes) = raw.object_classes {
            if classes.is_empty() {
                return Err(invalid(
                    "object_classes",
                    "needs at least one object class".to_string(),
                ));
            }
            out.object_classes =
                Some(attribute_list(&classes).map_err(|d| invalid("object_classes", d))?);
        }
        if let Some(classes) = raw.exclude_object_classes {
            out.exclude_object_classes =
                Some(attribute_list(&classes).map_err(|d| invalid("exclude_object_classes", d))?);
        }
        if let Some(anchor) = raw.anchor {
            if anchor.attributes.is_empty() {
                return Err(invalid(
                    "anchor.attributes",
                    "needs at least one attribute".to_string(),
                ));
            }
            out.anchor = Some(AnchorSource {
                attributes: attribute_list(&anchor.attributes)
                    .map_err(|d| invalid("anchor.attributes", d))?,
                encoding: match anchor.encoding {
                    RawEncoding::Guid => AnchorEncoding::Guid,
                    RawEncoding::Base64 => AnchorEncoding::Base64,
                    RawEncoding::Text => AnchorEncoding::Text,
                },
            });
        }
        if let Some(names) = raw.single_valued {
            out.single_valued =
                Some(single_valued_list(kind, &names).map_err(|d| invalid("single_valued", d))?);
        }
        if let Some(word) = raw.member_removal {
            if kind != ResourceKind::Group {
                return Err(invalid(
                    "member_removal",
                    "only groups have members: set it under [group]".into(),
                ));
            }
            out.member_removal = Some(match word.as_str() {
                "auto" => MemberRemoval::Auto,
                "filter" => MemberRemoval::Filter,
                "value_list" => MemberRemoval::ValueList,
                other => {
                    return Err(invalid(
                        "member_removal",
                        format!("`{other}` is not one of: auto, filter, value_list"),
                    ))
                }
            });
        }
        for (key, value) in raw.attributes.unwrap_or_default() {
            let full_key = format!("{section}.attributes.\"{key}\"");
            let target =
                parse_target(kind, &key).map_err(|allowed| ProfileError::UnsupportedTarget {
                    key: full_key.clone(),
                    allowed,
                })?;
            if let Some(other) = out.mappings.iter().find(|m| m.target == target) {
                return Err(ProfileError::Invalid {
                    key: full_key,
                    detail: format!(
                        "names the same SCIM attribute ({target}) as key {}",
                        other
                            .key
                            .strip_prefix(&format!("{section}.attributes."))
                            .unwrap_or(&other.key)
                    ),
                });
            }
            let source = parse_source(target, &value).map_err(|detail| ProfileError::Invalid {
                key: full_key.clone(),
                detail,
            })?;
            if source.is_none() && is_required(kind, target) {
                return Err(ProfileError::Invalid {
                    key: full_key,
                    detail: format!("{target} is required by SCIM and cannot be dropped"),
                });
            }
            out.mappings.push(MappingOverride {
                key: full_key,
                target,
                source,
            });
        }
        Ok(out)
    }
}

impl ResourceProfile {
    fn apply(&mut self, o: &ResourceOverrides) {
        if let Some(f) = &o.filter {
            self.filter.clone_from(f);
        }
        if let Some(c) = &o.object_classes {
            self.object_classes.clone_from(c);
        }
        if let Some(c) = &o.exclude_object_classes {
            self.exclude_object_classes.clone_from(c);
        }
        if let Some(a) = &o.anchor {
            self.anchor = a.clone();
        }
        if let Some(names) = &o.single_valued {
            self.single_valued.clone_from(names);
        }
        if let Some(m) = o.member_removal {
            self.member_removal = m;
        }
        for m in &o.mappings {
            match &m.source {
                None => self.mappings.retain(|x| x.target != m.target),
                Some(source) => match self.mappings.iter_mut().find(|x| x.target == m.target) {
                    Some(x) => x.source = source.clone(),
                    None => self.mappings.push(Mapping {
                        target: m.target,
                        source: source.clone(),
                    }),
                },
            }
        }
    }
}

/// Whether RFC 7643 requires `target` for `kind` (so it cannot be dropped).
pub(crate) fn is_required(kind: ResourceKind, target: Target) -> bool {
    matches!(
        (kind, target),
        (ResourceKind::User, Target::Text(TextPath::Core("userName")))
            | (
                ResourceKind::Group,
                Target::Text(TextPath::Core("displayName"))
            )
    )
}

/// The `single_valued` list: multi-valued SCIM attributes of `kind`, in their canonical
/// spelling, each once.
fn single_valued_list(kind: ResourceKind, names: &[String]) -> Result<Vec<&'static str>, String> {
    let allowed: &[(&'static str, &[&str], &[&str])] = match kind {
        ResourceKind::User => TYPED,
        // A group's only multi-valued attribute is `members`, which is never cut short.
        ResourceKind::Group => &[],
    };
    let mut out: Vec<&'static str> = Vec::new();
    for n in names {
        let Some((name, _, _)) = allowed.iter().find(|(a, _, _)| a.eq_ignore_ascii_case(n)) else {
            let list: Vec<&str> = allowed.iter().map(|(a, _, _)| *a).collect();
            return Err(if list.is_empty() {
                format!(
                    "\"{n}\": a group has no multi-valued attribute that can be cut to one value"
                )
            } else {
                format!(
                    "\"{n}\" is not a multi-valued attribute this agent writes; allowed: {}",
                    list.join(", ")
                )
            });
        };
        if !out.contains(name) {
            out.push(name);
        }
    }
    Ok(out)
}

fn attribute_list(names: &[String]) -> Result<Vec<String>, String> {
    for n in names {
        if !is_attribute_name(n) {
            return Err(format!("\"{n}\" is not valid: {ATTRIBUTE_NAME_RULE}"));
        }
    }
    Ok(names.to_vec())
}

/// Turns an override value into a source for `target`; `Ok(None)` means "drop".
fn parse_source(target: Target, value: &toml::Value) -> Result<Option<Source>, String> {
    let list = match value {
        toml::Value::String(s) if s.is_empty() => return Ok(None),
        toml::Value::String(s) => vec![s.clone()],
        toml::Value::Array(items) if target != Target::Active => {
            let mut names = Vec::with_capacity(items.len());
            for item in items {
                match item.as_str() {
                    Some(s) if !s.is_empty() => names.push(s.to_string()),
                    _ => {
                        return Err(
                            "a list must hold non-empty attribute names (use \"\" alone to drop the mapping)"
                                .to_string(),
                        )
                    }
                }
            }
            if names.is_empty() {
                return Err("an empty list maps nothing; use \"\" to drop the mapping".to_string());
            }
            names
        }
        toml::Value::Boolean(b) if target == Target::Active => {
            return Ok(Some(Source::Constant(*b)))
        }
        _ if target == Target::Active => {
            return Err("active takes one attribute name (\"userAccountControl\" for the AD flag, \"attr\" or \"!attr\" for an LDAP Boolean), true or false, or \"\" to drop".to_string())
        }
        _ => {
            return Err("takes an LDAP attribute name, a list of them (first present wins; all for members), or \"\" to drop".to_string())
        }
    };
    if target == Target::Active {
        let name = &list[0];
        let (negate, attribute) = match name.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, name.as_str()),
        };
        if !is_attribute_name(attribute) {
            return Err(format!(
                "\"{attribute}\" is not valid: {ATTRIBUTE_NAME_RULE}"
            ));
        }
        if attribute.eq_ignore_ascii_case("userAccountControl") {
            if negate {
                return Err(
                    "userAccountControl is read as a flag word; \"!\" is not allowed on it"
                        .to_string(),
                );
            }
            return Ok(Some(Source::AccountControl(attribute.to_string())));
        }
        return Ok(Some(Source::Boolean {
            attribute: attribute.to_string(),
            negate,
        }));
    }
    attribute_list(&list).map(|l| Some(Source::Attributes(l)))
}

// --- the raw override file --------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverrides {
    user: Option<RawResource>,
    group: Option<RawResource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResource {
    filter: Option<String>,
    object_classes: Option<Vec<String>>,
    exclude_object_classes: Option<Vec<String>>,
    anchor: Option<RawAnchor>,
    single_valued: Option<Vec<String>>,
    member_removal: Option<String>,
    attributes: Option<BTreeMap<String, toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnchor {
    attributes: Vec<String>,
    encoding: RawEncoding,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawEncoding {
    Guid,
    Base64,
    Text,
}

/// `a` followed by the names of `b` that `a` lacks (LDAP names compare case-insensitively).
pub fn merge_attributes(mut a: Vec<String>, b: Vec<String>) -> Vec<String> {
    for name in b {
        if !a.iter().any(|x| x.eq_ignore_ascii_case(&name)) {
            a.push(name);
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ad() -> SyncProfile {
        SyncProfile::default_for(ProfileKind::ActiveDirectory)
    }

    fn target_of(p: &SyncProfile, kind: ResourceKind, path: &str) -> Option<Source> {
        p.resource(kind)
            .mappings()
            .iter()
            .find(|m| m.target.to_string() == path)
            .map(|m| m.source.clone())
    }

    #[test]
    fn the_anchor_attributes_are_what_anchor_of_reads_and_no_mapped_attribute() {
        use crate::ldap::Entry;
        for p in [ad(), SyncProfile::default_for(ProfileKind::OpenLdap)] {
            for kind in [ResourceKind::User, ResourceKind::Group] {
                let attrs = p.anchor_attributes(kind);
                assert!(!attrs.is_empty());
                assert!(!attrs.iter().any(|a| a.eq_ignore_ascii_case("mail")
                    || a.eq_ignore_ascii_case("member")
                    || a.eq_ignore_ascii_case("objectClass")));
                // An entry holding only these attributes has its anchor.
                let mut e = Entry::new("cn=x,dc=example");
                for a in &attrs {
                    e.add(a, vec![7u8; 16]);
                }
                assert!(
                    crate::scim::mapping::anchor_of(&e, kind, &p).is_ok(),
                    "{attrs:?}"
                );
            }
        }
    }

    #[test]
    fn identity_attributes_leave_out_member_lists_and_object_attributes_cover_both_kinds() {
        let has = |v: &[String], a: &str| v.iter().any(|x| x.eq_ignore_ascii_case(a));
        for p in [ad(), SyncProfile::default_for(ProfileKind::OpenLdap)] {
            let g = p.identity_attributes(ResourceKind::Group);
            assert!(!has(&g, "member") && !has(&g, "uniqueMember"), "{g:?}");
            assert!(has(&g, "objectClass"));
            let all = p.object_attributes();
            for kind in [ResourceKind::User, ResourceKind::Group] {
                assert!(p.ldap_attributes(kind).iter().all(|a| has(&all, a)));
            }
            let mut lower: Vec<String> = all.iter().map(|a| a.to_ascii_lowercase()).collect();
            lower.sort();
            lower.dedup();
            assert_eq!(lower.len(), all.len(), "once each");
        }
        assert!(has(
            &ad().identity_attributes(ResourceKind::Group),
            "objectGUID"
        ));
    }

    #[test]
    fn default_filters() {
        let p = ad();
        assert_eq!(
            p.default_filter(ResourceKind::User),
            "(&(objectCategory=person)(objectClass=user)(!(isCriticalSystemObject=TRUE)))"
        );
        assert_eq!(
            p.default_filter(ResourceKind::Group),
            "(&(objectClass=group)(!(isCriticalSystemObject=TRUE)))"
        );
        let o = SyncProfile::default_for(ProfileKind::OpenLdap);
        assert_eq!(
            o.default_filter(ResourceKind::User),
            "(objectClass=inetOrgPerson)"
        );
        assert_eq!(
            o.default_filter(ResourceKind::Group),
            "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames))"
        );
        for f in [
            p.default_filter(ResourceKind::User),
            o.default_filter(ResourceKind::Group),
        ] {
            crate::ldap::filter::check(f).unwrap();
        }
    }

    #[test]
    fn ldap_attributes_cover_anchor_references_and_classes() {
        let p = ad();
        let u = p.ldap_attributes(ResourceKind::User);
        for want in [
            "objectClass",
            "mS-DS-ConsistencyGuid",
            "objectGUID",
            "userPrincipalName",
            "sAMAccountName",
            "userAccountControl",
            "manager",
            "employeeID",
        ] {
            assert!(u.iter().any(|a| a == want), "{want} missing from {u:?}");
        }
        let g = p.ldap_attributes(ResourceKind::Group);
        assert_eq!(
            g,
            [
                "objectClass",
                "mS-DS-ConsistencyGuid",
                "objectGUID",
                "cn",
                "member"
            ]
        );
        let o = SyncProfile::default_for(ProfileKind::OpenLdap).ldap_attributes(ResourceKind::User);
        // mail feeds both userName (fallback) and emails: listed once.
        assert_eq!(
            o.iter().filter(|a| a.eq_ignore_ascii_case("mail")).count(),
            1
        );
        assert!(o.iter().any(|a| a == "entryUUID"));
        let g = SyncProfile::default_for(ProfileKind::Generic).ldap_attributes(ResourceKind::Group);
        assert_eq!(
            g,
            [
                "objectClass",
                "nsUniqueId",
                "entryUUID",
                "cn",
                "member",
                "uniqueMember"
            ]
        );
    }

    #[test]
    fn classify_by_object_class() {
        let p = ad();
        let user = Entry::new("CN=a,DC=x")
            .with("objectClass", "top")
            .with("objectClass", "person")
            .with("objectClass", "organizationalPerson")
            .with("objectClass", "user");
        let computer = user.clone().with("objectClass", "computer");
        let group = Entry::new("CN=g,DC=x").with("objectClass", "group");
        let contact = Entry::new("CN=c,DC=x").with("objectClass", "contact");
        assert_eq!(p.classify(&user), Some(ResourceKind::User));
        assert_eq!(p.classify(&computer), None);
        assert_eq!(p.classify(&group), Some(ResourceKind::Group));
        assert_eq!(p.classify(&contact), None);
        let o = SyncProfile::default_for(ProfileKind::OpenLdap);
        let unique = Entry::new("cn=g,dc=x").with("objectclass", "GROUPOFUNIQUENAMES");
        assert_eq!(o.classify(&unique), Some(ResourceKind::Group));
        assert_eq!(o.classify(&user), None);
    }

    #[test]
    fn override_example_from_the_brief() {
        let p = ad()
            .with_overrides(
                r#"
[user.attributes]
title = "title"
"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:costCenter" = "extensionAttribute1"
nickName = "displayNamePrintable"
"phoneNumbers[type eq \"mobile\"].value" = ""
[group.attributes]
description = "description"
"#,
            )
            .unwrap();
        assert_eq!(
            target_of(
                &p,
                ResourceKind::User,
                &format!("{ENTERPRISE_SCHEMA}:costCenter")
            ),
            Some(Source::Attributes(vec!["extensionAttribute1".into()]))
        );
        assert!(target_of(&p, ResourceKind::User, "nickName").is_some());
        assert_eq!(
            target_of(
                &p,
                ResourceKind::User,
                "phoneNumbers[type eq \"mobile\"].value"
            ),
            None
        );
        assert!(target_of(
            &p,
            ResourceKind::User,
            "phoneNumbers[type eq \"work\"].value"
        )
        .is_some());
        assert_eq!(
            target_of(&p, ResourceKind::Group, "description"),
            Some(Source::Attributes(vec!["description".into()]))
        );
        // Untouched defaults keep their place; new targets are appended.
        let ms = p.resource(ResourceKind::User).mappings();
        assert_eq!(ms[0].target.to_string(), "userName");
        assert!(
            ms.iter()
                .position(|m| m.target.to_string() == "nickName")
                .unwrap()
                > 8
        );
        assert!(!p
            .ldap_attributes(ResourceKind::User)
            .contains(&"mobile".to_string()));
    }

    #[test]
    fn paths_are_case_insensitive_and_canonicalised() {
        let p = ad()
            .with_overrides(
                "[user.attributes]\n\"EMAILS[Type EQ \\\"Home\\\"].Value\" = \"otherMailbox\"\n\"Name.MiddleName\" = \"middleName\"\n\"urn:ietf:params:scim:schemas:core:2.0:User:nickName\" = \"cn\"\n\"addresses[type eq \\\"work\\\"].locality\" = \"l\"\n",
            )
            .unwrap();
        for path in [
            "emails[type eq \"home\"].value",
            "name.middleName",
            "nickName",
            "addresses[type eq \"work\"].locality",
        ] {
            assert!(target_of(&p, ResourceKind::User, path).is_some(), "{path}");
        }
    }

    fn err(toml: &str) -> ProfileError {
        ad().with_overrides(toml).unwrap_err()
    }

    #[test]
    fn unsupported_targets_are_named() {
        for (toml, key) in [
            ("[user.attributes]\nfoo = \"bar\"", "user.attributes.\"foo\""),
            ("[user.attributes]\npassword = \"unicodePwd\"", "user.attributes.\"password\""),
            (
                "[user.attributes]\n\"emails[type eq \\\"personal\\\"].value\" = \"mail\"",
                "user.attributes.\"emails[type eq \\\"personal\\\"].value\"",
            ),
            (
                "[user.attributes]\n\"emails[type eq work].value\" = \"mail\"",
                "user.attributes.\"emails[type eq work].value\"",
            ),
            ("[user.attributes]\n\"name.nick\" = \"cn\"", "user.attributes.\"name.nick\""),
            ("[group.attributes]\ntitle = \"title\"", "group.attributes.\"title\""),
            (
                "[user.attributes]\n\"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:boss\" = \"x\"",
                "user.attributes.\"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:boss\"",
            ),
        ] {
            match err(toml) {
                ProfileError::UnsupportedTarget { key: k, allowed } => {
                    assert_eq!(k, key.replace("\\\"", "\""));
                    assert!(allowed.contains("supported: "), "{allowed}");
                }
                other => panic!("{toml}: {other:?}"),
            }
        }
        let e = err("[user.attributes]\nexternalId = \"objectGUID\"");
        assert!(e.to_string().contains("[user.anchor]"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = err("[user.attributes]\nuserName = \"\"");
        assert!(
            matches!(&e, ProfileError::Invalid { key, .. } if key == "user.attributes.\"userName\"")
        );
        assert!(e.to_string().contains("required"), "{e}");
        let e = err("[group.attributes]\ndisplayName = \"\"");
        assert!(
            matches!(&e, ProfileError::Invalid { key, .. } if key == "group.attributes.\"displayName\"")
        );
        let e = err("[user.attributes]\ntitle = \"ti tle\"");
        assert!(e.to_string().contains("not valid"), "{e}");
        let e = err("[user.attributes]\ntitle = 3");
        assert!(e.to_string().contains("user.attributes.\"title\""), "{e}");
        let e = err("[user.attributes]\ntitle = []");
        assert!(e.to_string().contains("empty list"), "{e}");
        let e = err("[user.attributes]\nTitle = \"a\"\ntitle = \"b\"");
        assert!(e.to_string().contains("same SCIM attribute"), "{e}");
        let e = err("[user.attributes]\nactive = [\"a\"]");
        assert!(e.to_string().contains("active takes one attribute"), "{e}");
        let e = err("[user.attributes]\nactive = \"!userAccountControl\"");
        assert!(e.to_string().contains("flag word"), "{e}");
        let e = err("[user]\nfilter = \"objectClass=user\"");
        assert!(
            matches!(&e, ProfileError::Invalid { key, .. } if key == "user.filter"),
            "{e}"
        );
        let e = err("[user]\nfilter = \"(a=b))(c=d)\"");
        assert!(e.to_string().contains("unbalanced"), "{e}");
        let e = err("[group]\nobject_classes = []");
        assert!(matches!(&e, ProfileError::Invalid { key, .. } if key == "group.object_classes"));
    }

    #[test]
    fn the_member_removal_dialect_can_be_pinned_for_groups_only() {
        assert_eq!(
            ad().resource(ResourceKind::Group).member_removal(),
            MemberRemoval::Auto
        );
        for (word, want) in [
            ("auto", MemberRemoval::Auto),
            ("filter", MemberRemoval::Filter),
            ("value_list", MemberRemoval::ValueList),
        ] {
            let p = ad()
                .with_overrides(&format!("[group]\nmember_removal = \"{word}\""))
                .unwrap();
            assert_eq!(p.resource(ResourceKind::Group).member_removal(), want);
            assert_eq!(want.word(), word);
        }
        let e = ad()
            .with_overrides("[group]\nmember_removal = \"entra\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("group.member_removal") && e.contains("value_list"),
            "{e}"
        );
        let e = ad()
            .with_overrides("[user]\nmember_removal = \"filter\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("user.member_removal") && e.contains("[group]"),
            "{e}"
        );
    }

    #[test]
    fn single_valued_names_a_multi_valued_attribute() {
        let e = ad()
            .with_overrides("[user]\nsingle_valued = [\"title\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("user.single_valued"), "{e}");
        assert!(
            e.contains("\"title\" is not a multi-valued attribute"),
            "{e}"
        );
        assert!(
            e.contains("emails, phoneNumbers, ims, photos, addresses"),
            "{e}"
        );
        let e = ad()
            .with_overrides("[group]\nsingle_valued = [\"members\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("group.single_valued"), "{e}");
        // The default sends every value.
        assert!(ad().resource(ResourceKind::User).single_valued().is_empty());
    }

    #[test]
    fn unknown_keys_and_syntax_errors_name_the_key() {
        let e = err("[user]\nfliter = \"(a=b)\"");
        let s = e.to_string();
        assert!(s.contains("fliter") && s.contains("filter"), "{s}");
        let e = err("[users.attributes]\ntitle = \"title\"");
        assert!(e.to_string().contains("users"), "{e}");
        let e = err("[user.anchor]\nattributes = [\"x\"]\nencoding = \"hex\"");
        let s = e.to_string();
        assert!(s.contains("hex") && s.contains("guid"), "{s}");
        let e = err("[user.anchor]\nattributes = [\"x\"]");
        assert!(e.to_string().contains("encoding"), "{e}");
        assert!(matches!(err("[user"), ProfileError::Syntax { .. }));
    }

    #[test]
    fn active_forms() {
        let p = ad()
            .with_overrides("[user.attributes]\nactive = \"!nsAccountLock\"")
            .unwrap();
        assert_eq!(
            target_of(&p, ResourceKind::User, "active"),
            Some(Source::Boolean {
                attribute: "nsAccountLock".into(),
                negate: true
            })
        );
        let p = p
            .with_overrides("[user.attributes]\nactive = true")
            .unwrap();
        assert_eq!(
            target_of(&p, ResourceKind::User, "active"),
            Some(Source::Constant(true))
        );
        let p = p
            .with_overrides("[user.attributes]\nactive = \"\"")
            .unwrap();
        assert_eq!(target_of(&p, ResourceKind::User, "active"), None);
        let e = err("[user.attributes]\ntitle = true");
        assert!(e.to_string().contains("user.attributes.\"title\""), "{e}");
    }

    #[test]
    fn anchor_and_classes_override() {
        let p = SyncProfile::default_for(ProfileKind::OpenLdap)
            .with_overrides(
                "[user]\nfilter = \" (objectClass=person) \"\nobject_classes = [\"person\"]\n[user.anchor]\nattributes = [\"employeeNumber\"]\nencoding = \"text\"\n",
            )
            .unwrap();
        let u = p.resource(ResourceKind::User);
        assert_eq!(u.filter(), "(objectClass=person)");
        assert_eq!(u.anchor().attributes, ["employeeNumber"]);
        assert_eq!(u.anchor().encoding, AnchorEncoding::Text);
        assert_eq!(u.object_classes(), ["person"]);
        // Group untouched.
        assert_eq!(
            p.resource(ResourceKind::Group),
            SyncProfile::default_for(ProfileKind::OpenLdap).resource(ResourceKind::Group)
        );
    }

    #[test]
    fn empty_override_is_identity_and_file_errors_name_the_path() {
        assert_eq!(ad().with_overrides("").unwrap(), ad());
        let e = ad()
            .with_overrides_from_file(Path::new("does-not-exist.toml"))
            .unwrap_err();
        assert!(e.to_string().contains("does-not-exist.toml"), "{e}");
    }

    #[test]
    fn attribute_names() {
        for ok in [
            "cn",
            "mS-DS-ConsistencyGuid",
            "extensionAttribute1",
            "2.5.4.3",
        ] {
            assert!(is_attribute_name(ok), "{ok}");
        }
        for bad in ["", "-cn", "cn;binary", "2.5..4", "1a", "c n", "é"] {
            assert!(!is_attribute_name(bad), "{bad}");
        }
    }
}
