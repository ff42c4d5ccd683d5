//! Group-based scoping (`[scope] groups`, `nested`): which objects the listed groups allow.
//!
//! In scope are the listed groups themselves and their members, users and groups: direct
//! members only, or with `nested` every transitive member (a member group's members, and
//! theirs, cycles included). This module computes that set, the [`AllowedSet`]; the full
//! pass and `run` intersect it with the subtree and filter scope (AND).
//!
//! Rules it keeps:
//! * **a failed read is never an empty group.** A listed group that does not exist is
//!   [`ScopeGroupsError::Missing`], and any failed read is an error: the caller stops before
//!   it decides a delete (an unreadable scoping group must never make everyone "out of
//!   scope"). A member DN that names nothing is only a dangling value, as the directory
//!   allows; it is kept in the set (harmless: no entry will ever be checked against it).
//! * **flat in memory:** the set lives in a [`DiskMap`] scratch file (normalised DN → one
//!   byte: 1 for a group whose members were read, 0 for any other member), so a scope of
//!   100,000 members costs a few buffers. In memory are only the groups still to be read
//!   (with `nested`) and one group's member values at a time (as the LDAP layer reads them,
//!   `member;range=` included); the member lists of the search below are in a scratch file
//!   too.
//! * **each group read once:** a group already read is skipped, which is also what ends a
//!   membership cycle.
//!
//! Which members are groups (with `nested`): the entries under `directory.base_dn` that
//! hold a value of a member attribute, read with their members by one paged search into a
//! scratch file: no request per group, none per user. An empty nested group is in scope as
//! a member but adds nobody.
//!
//! The expansion runs over the `GroupGraph` seam: the directory in the agent, a map in
//! the unit tests.

use std::fmt;
use std::io;
use std::path::Path;

use crate::ldap::dn;
use crate::ldap::{Directory, LdapError, Scope};
use crate::sync::diskmap::DiskMap;

/// `[scope] groups` and `nested`, with what reading them needs.
#[derive(Debug, Clone)]
pub struct GroupScope {
    /// The listed groups' DNs, as configured.
    pub groups: Vec<String>,
    /// Transitive members too.
    pub nested: bool,
    /// Where member groups are looked for (`directory.base_dn`).
    pub base_dn: String,
    /// The profile's member attributes (`member`, `uniqueMember`).
    pub member_attributes: Vec<String>,
}

/// Why the allowed set could not be computed. Whatever the variant, nothing may be
/// concluded about scope from it.
#[derive(Debug)]
pub enum ScopeGroupsError {
    /// A DN listed in `scope.groups` names no entry.
    Missing(String),
    /// A directory read failed.
    Directory(LdapError),
    /// The scratch file failed.
    State(io::Error),
}

impl fmt::Display for ScopeGroupsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScopeGroupsError::Missing(dn) => write!(
                f,
                "scope.groups: `{dn}` does not exist in the directory (fix or remove it in scope.groups)"
            ),
            ScopeGroupsError::Directory(e) => write!(f, "reading group members failed: {e}"),
            ScopeGroupsError::State(e) => write!(f, "group members: scratch file: {e}"),
        }
    }
}

impl std::error::Error for ScopeGroupsError {}

impl From<LdapError> for ScopeGroupsError {
    fn from(e: LdapError) -> Self {
        ScopeGroupsError::Directory(e)
    }
}

impl From<io::Error> for ScopeGroupsError {
    fn from(e: io::Error) -> Self {
        ScopeGroupsError::State(e)
    }
}

/// The groups as the expansion sees them. A seam: the agent reads the directory
/// ([`DirectoryGraph`]), the unit tests a map.
pub(crate) trait GroupGraph {
    /// The member DNs of the entry at `dn` (empty when it has none); `Ok(None)` when no
    /// entry is there.
    async fn members(&self, dn: &str) -> Result<Option<Vec<String>>, ScopeGroupsError>;
    /// Whether `dn` names a group whose members count too (asked only with `nested`).
    fn is_group(&self, dn: &str) -> Result<bool, ScopeGroupsError>;
}

/// The objects `scope.groups` allows, by normalised DN (see the module doc).
pub struct AllowedSet {
    map: DiskMap,
    groups_read: u64,
    depth: usize,
}

const MEMBER: &[u8] = &[0];
const READ_GROUP: &[u8] = &[1];

impl AllowedSet {
    /// Whether the object at `dn` is allowed.
    pub fn contains(&self, dn: &str) -> io::Result<bool> {
        self.map.contains(dn::normalize(dn).as_bytes())
    }

    /// Whether `dn` is a group whose members made this set (a listed group, or with
    /// `nested` a group inside the tree): a change to it may change the set.
    pub fn is_read_group(&self, dn: &str) -> io::Result<bool> {
        Ok(self.map.get(dn::normalize(dn).as_bytes())?.as_deref() == Some(READ_GROUP))
    }

    /// Objects allowed (groups read included).
    pub fn len(&self) -> u64 {
        self.map.len()
    }

    /// Whether nothing is allowed (never, once computed: the listed groups are in it).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Groups whose members were read.
    pub fn groups_read(&self) -> u64 {
        self.groups_read
    }

    /// The deepest nesting level read (0: only the listed groups).
    pub fn depth(&self) -> usize {
        self.depth
    }
}

#[cfg(test)]
impl AllowedSet {
    /// A set as if `read_groups` had been read and had `members` (for other modules' tests).
    pub(crate) fn of(dir: &Path, read_groups: &[&str], members: &[&str]) -> AllowedSet {
        let mut map = DiskMap::scratch(dir, "scope groups", 0).unwrap();
        for m in members {
            map.insert(dn::normalize(m).as_bytes(), MEMBER).unwrap();
        }
        for g in read_groups {
            map.insert(dn::normalize(g).as_bytes(), READ_GROUP).unwrap();
        }
        AllowedSet {
            map,
            groups_read: read_groups.len() as u64,
            depth: 0,
        }
    }
}

impl fmt::Display for AllowedSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} objects allowed by scope.groups ({} groups read, nesting depth {})",
            self.len(),
            self.groups_read,
            self.depth
        )
    }
}

/// Computes the allowed set of `scope` over `graph`, in a scratch file under `dir`.
pub(crate) async fn expand<G: GroupGraph>(
    graph: &G,
    scope: &GroupScope,
    dir: &Path,
) -> Result<AllowedSet, ScopeGroupsError> {
    let mut set = AllowedSet {
        map: DiskMap::scratch(dir, "scope groups", 0)?,
        groups_read: 0,
        depth: 0,
    };
    // Groups to read, with their depth; the listed ones first, in order.
    let mut todo: Vec<(String, usize)> =
        scope.groups.iter().rev().map(|g| (g.clone(), 0)).collect();
    while let Some((group, depth)) = todo.pop() {
        let key = dn::normalize(&group);
        if set.map.get(key.as_bytes())?.as_deref() == Some(READ_GROUP) {
            continue; // read already: a repeat or a cycle
        }
        let Some(members) = graph.members(&group).await? else {
            if depth == 0 {
                return Err(ScopeGroupsError::Missing(group));
            }
            continue; // a dangling member value (it is in the set as a member)
        };
        set.map.insert(key.as_bytes(), READ_GROUP)?;
        set.groups_read += 1;
        set.depth = set.depth.max(depth);
        for m in members {
            let k = dn::normalize(&m);
            if set.map.contains(k.as_bytes())? {
                continue;
            }
            set.map.insert(k.as_bytes(), MEMBER)?;
            if scope.nested && graph.is_group(&m)? {
                todo.push((m, depth + 1));
            }
        }
    }
    Ok(set)
}

/// The directory as a `GroupGraph`: members read from the profile's member attributes.
/// With `find_groups`, one paged search reads every entry under the base that has members,
/// with its members, into a scratch file (normalised DN → member list): that tells which
/// members are groups, and each group is then read from the file, not with a request of
/// its own. A group not in the file (one without members, a listed group) is read directly.
pub struct DirectoryGraph<'a> {
    dir: &'a Directory,
    attributes: Vec<String>,
    groups: Option<DiskMap>,
    /// The normalised DNs of `groups` while they are few ([`GROUP_DNS_IN_MEMORY`]): asked
    /// for every member of every group flattened, so kept off the file when they fit.
    group_dns: Option<std::collections::HashSet<String>>,
}

/// Groups whose DNs [`DirectoryGraph`] keeps in memory too (a few MiB at most).
const GROUP_DNS_IN_MEMORY: usize = 65_536;

impl<'a> DirectoryGraph<'a> {
    /// Prepares reading the groups under `base_dn` by `member_attributes` (see the type's
    /// doc for `find_groups`; without it no member is taken for a group).
    pub async fn new(
        dir: &'a Directory,
        base_dn: &str,
        member_attributes: &[String],
        find_groups: bool,
        state_dir: &Path,
    ) -> Result<DirectoryGraph<'a>, ScopeGroupsError> {
        let mut groups = None;
        let mut group_dns = None;
        if find_groups {
            let mut dns = Some(std::collections::HashSet::new());
            let mut map = DiskMap::scratch(state_dir, "groups with members", 0)?;
            let filter = has_members_filter(member_attributes);
            let attrs: Vec<&str> = member_attributes.iter().map(String::as_str).collect();
            let mut s = dir.search(base_dn, Scope::Subtree, &filter, &attrs);
            while let Some(e) = s.next().await {
                let e = e?;
                let members: Vec<&str> = member_attributes
                    .iter()
                    .flat_map(|a| e.strs(a).collect::<Vec<_>>())
                    .collect();
                let key = dn::normalize(&e.dn);
                map.insert(key.as_bytes(), &encode_list(&members))?;
                if dns.as_ref().is_some_and(|d| d.len() >= GROUP_DNS_IN_MEMORY) {
                    dns = None;
                }
                if let Some(d) = dns.as_mut() {
                    d.insert(key);
                }
            }
            groups = Some(map);
            group_dns = dns;
        }
        Ok(DirectoryGraph {
            dir,
            attributes: member_attributes.to_vec(),
            groups,
            group_dns,
        })
    }
}

/// A list of strings as `[u32 length][bytes]...` (little endian).
fn encode_list(items: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(items.iter().map(|s| s.len() + 4).sum());
    for s in items {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out
}

/// The inverse of [`encode_list`]; `None` for bytes it did not write.
fn decode_list(mut b: &[u8]) -> Option<Vec<String>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let n = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
        out.push(String::from_utf8_lossy(b.get(4..4 + n)?).into_owned());
        b = &b[4 + n..];
    }
    Some(out)
}

/// `(|(member=*)(uniqueMember=*))`: an entry with at least one member.
pub(crate) fn has_members_filter(attributes: &[String]) -> String {
    let parts: String = attributes.iter().map(|a| format!("({a}=*)")).collect();
    format!("(|{parts})")
}

impl GroupGraph for DirectoryGraph<'_> {
    async fn members(&self, dn: &str) -> Result<Option<Vec<String>>, ScopeGroupsError> {
        if let Some(g) = &self.groups {
            if let Some(v) = g.get(dn::normalize(dn).as_bytes())? {
                return decode_list(&v).map(Some).ok_or_else(|| {
                    ScopeGroupsError::State(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a damaged member list",
                    ))
                });
            }
        }
        let attrs: Vec<&str> = self.attributes.iter().map(String::as_str).collect();
        let Some(entry) = self.dir.read(dn, &attrs).await? else {
            return Ok(None);
        };
        Ok(Some(
            self.attributes
                .iter()
                .flat_map(|a| entry.strs(a).map(str::to_string).collect::<Vec<_>>())
                .collect(),
        ))
    }

    fn is_group(&self, dn: &str) -> Result<bool, ScopeGroupsError> {
        let key = dn::normalize(dn);
        if let Some(d) = &self.group_dns {
            return Ok(d.contains(&key));
        }
        match &self.groups {
            Some(g) => Ok(g.contains(key.as_bytes())?),
            None => Ok(false),
        }
    }
}

/// Computes the allowed set of `scope` from the directory, and logs its size.
pub async fn allowed_set(
    dir: &Directory,
    scope: &GroupScope,
    state_dir: &Path,
) -> Result<AllowedSet, ScopeGroupsError> {
    let set = read_allowed_set(dir, scope, state_dir).await?;
    log::info!("scope.groups: {set}");
    Ok(set)
}

/// [`allowed_set`] without the log line (for reads answered per request).
pub async fn read_allowed_set(
    dir: &Directory,
    scope: &GroupScope,
    state_dir: &Path,
) -> Result<AllowedSet, ScopeGroupsError> {
    let graph = DirectoryGraph::new(
        dir,
        &scope.base_dn,
        &scope.member_attributes,
        scope.nested,
        state_dir,
    )
    .await?;
    expand(&graph, scope, state_dir).await
}

/// A group graph from a table, for the tests of everything built on [`GroupGraph`]
/// (flatten, closures): groups by DN with their member DNs; every other DN is not a group
/// and has no members.
#[cfg(test)]
pub(crate) mod map_graph {
    use std::collections::HashMap;

    use super::{GroupGraph, ScopeGroupsError};
    use crate::ldap::dn;

    /// Normalised group DN → its member DNs as written.
    pub(crate) struct MapGraph(pub(crate) HashMap<String, Vec<String>>);

    impl GroupGraph for MapGraph {
        async fn members(&self, dn: &str) -> Result<Option<Vec<String>>, ScopeGroupsError> {
            Ok(self.0.get(&dn::normalize(dn)).cloned())
        }
        fn is_group(&self, dn: &str) -> Result<bool, ScopeGroupsError> {
            Ok(self.0.contains_key(&dn::normalize(dn)))
        }
    }

    /// The graph of `groups`: (group DN, member DNs).
    pub(crate) fn map_graph(groups: &[(&str, &[&str])]) -> MapGraph {
        MapGraph(
            groups
                .iter()
                .map(|(g, m)| (dn::normalize(g), m.iter().map(|s| s.to_string()).collect()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Groups by DN → member DNs; every other DN is a user (exists, no members).
    struct Fake {
        groups: HashMap<String, Vec<String>>,
        users: Vec<String>,
    }

    impl Fake {
        fn new(groups: &[(&str, &[&str])], users: &[&str]) -> Fake {
            Fake {
                groups: groups
                    .iter()
                    .map(|(g, m)| (dn::normalize(g), m.iter().map(|s| s.to_string()).collect()))
                    .collect(),
                users: users.iter().map(|u| dn::normalize(u)).collect(),
            }
        }
    }

    impl GroupGraph for Fake {
        async fn members(&self, dn: &str) -> Result<Option<Vec<String>>, ScopeGroupsError> {
            let k = dn::normalize(dn);
            if let Some(m) = self.groups.get(&k) {
                return Ok(Some(m.clone()));
            }
            Ok(self.users.contains(&k).then(Vec::new))
        }
        fn is_group(&self, dn: &str) -> Result<bool, ScopeGroupsError> {
            Ok(self.groups.contains_key(&dn::normalize(dn)))
        }
    }

    fn scope(groups: &[&str], nested: bool) -> GroupScope {
        GroupScope {
            groups: groups.iter().map(|s| s.to_string()).collect(),
            nested,
            base_dn: "dc=t".into(),
            member_attributes: vec!["member".into()],
        }
    }

    fn run(fake: &Fake, s: &GroupScope) -> Result<AllowedSet, ScopeGroupsError> {
        let dir = std::env::temp_dir();
        smol::block_on(expand(fake, s, &dir))
    }

    /// cn=top ∋ u1, cn=mid; cn=mid ∋ u2, cn=low; cn=low ∋ u3, cn=top (a cycle).
    fn tree() -> Fake {
        Fake::new(
            &[
                ("cn=top,dc=t", &["uid=u1,dc=t", "CN=Mid, dc=t"]),
                ("cn=mid,dc=t", &["uid=u2,dc=t", "cn=low,dc=t"]),
                ("cn=low,dc=t", &["uid=u3,dc=t", "cn=top,dc=t"]),
                ("cn=other,dc=t", &["uid=u4,dc=t"]),
            ],
            &["uid=u1,dc=t", "uid=u2,dc=t", "uid=u3,dc=t", "uid=u4,dc=t"],
        )
    }

    #[test]
    fn direct_members_and_the_group_itself_only_without_nested() {
        let s = run(&tree(), &scope(&["cn=top,dc=t"], false)).unwrap();
        for dn in ["cn=top,dc=t", "uid=u1,dc=t", "cn=mid,dc=t"] {
            assert!(s.contains(dn).unwrap(), "{dn}");
        }
        for dn in ["uid=u2,dc=t", "cn=low,dc=t", "uid=u3,dc=t", "uid=u4,dc=t"] {
            assert!(!s.contains(dn).unwrap(), "{dn}");
        }
        assert!(s.is_read_group("cn=top,dc=t").unwrap());
        // A member group is in scope but its members did not make the set.
        assert!(!s.is_read_group("cn=mid,dc=t").unwrap());
        assert_eq!((s.len(), s.groups_read(), s.depth()), (3, 1, 0));
    }

    #[test]
    fn nested_takes_every_transitive_member_and_ends_a_cycle() {
        let s = run(&tree(), &scope(&["cn=top,dc=t"], true)).unwrap();
        for dn in [
            "cn=top,dc=t",
            "uid=u1,dc=t",
            "cn=mid,dc=t",
            "uid=u2,dc=t",
            "cn=low,dc=t",
            "UID=u3, DC=t",
        ] {
            assert!(s.contains(dn).unwrap(), "{dn}");
        }
        assert!(!s.contains("uid=u4,dc=t").unwrap());
        assert!(!s.contains("cn=other,dc=t").unwrap());
        assert!(s.is_read_group("cn=low,dc=t").unwrap());
        assert_eq!((s.len(), s.groups_read(), s.depth()), (6, 3, 2));
    }

    #[test]
    fn several_listed_groups_are_a_union_and_each_group_is_read_once() {
        let s = run(&tree(), &scope(&["cn=other,dc=t", "cn=mid,dc=t"], true)).unwrap();
        assert!(s.contains("uid=u4,dc=t").unwrap());
        assert!(s.contains("uid=u1,dc=t").unwrap(), "mid → low → top → u1");
        assert_eq!(s.groups_read(), 4);
    }

    #[test]
    fn a_listed_group_that_does_not_exist_is_an_error_naming_it() {
        let e = run(&tree(), &scope(&["cn=top,dc=t", "cn=gone,dc=t"], false))
            .err()
            .expect("missing group");
        assert!(matches!(&e, ScopeGroupsError::Missing(d) if d == "cn=gone,dc=t"));
        let text = e.to_string();
        assert!(
            text.contains("scope.groups") && text.contains("cn=gone,dc=t"),
            "{text}"
        );
    }

    #[test]
    fn a_dangling_member_value_is_kept_and_nothing_fails() {
        let f = Fake::new(&[("cn=g,dc=t", &["uid=ghost,dc=t"])], &[]);
        let s = run(&f, &scope(&["cn=g,dc=t"], true)).unwrap();
        assert!(s.contains("uid=ghost,dc=t").unwrap());
    }

    #[test]
    fn a_member_group_that_vanished_before_it_was_read_is_only_a_member() {
        struct Vanishing(Fake);
        impl GroupGraph for Vanishing {
            async fn members(&self, dn: &str) -> Result<Option<Vec<String>>, ScopeGroupsError> {
                if dn::normalize(dn) == "cn=mid,dc=t" {
                    return Ok(None);
                }
                self.0.members(dn).await
            }
            fn is_group(&self, dn: &str) -> Result<bool, ScopeGroupsError> {
                self.0.is_group(dn)
            }
        }
        let v = Vanishing(tree());
        let s = smol::block_on(expand(
            &v,
            &scope(&["cn=top,dc=t"], true),
            &std::env::temp_dir(),
        ))
        .unwrap();
        assert!(s.contains("cn=mid,dc=t").unwrap());
        assert!(!s.contains("uid=u2,dc=t").unwrap());
    }

    #[test]
    fn a_failed_read_is_an_error_never_a_smaller_set() {
        struct Failing;
        impl GroupGraph for Failing {
            async fn members(&self, _: &str) -> Result<Option<Vec<String>>, ScopeGroupsError> {
                Err(ScopeGroupsError::State(io::Error::other("read failed")))
            }
            fn is_group(&self, _: &str) -> Result<bool, ScopeGroupsError> {
                Ok(false)
            }
        }
        let r = smol::block_on(expand(
            &Failing,
            &scope(&["cn=top,dc=t"], false),
            &std::env::temp_dir(),
        ));
        assert!(r.is_err());
    }

    #[test]
    fn member_lists_round_trip_through_the_scratch_encoding() {
        let items = ["uid=a,dc=t", "", "cn=Ünïcode\\, x,dc=t"];
        assert_eq!(decode_list(&encode_list(&items)).unwrap(), items);
        assert_eq!(decode_list(&[]).unwrap(), Vec::<String>::new());
        assert!(decode_list(&[9, 0, 0, 0, b'x']).is_none());
    }

    #[test]
    fn the_filter_for_groups_asks_for_any_member_attribute() {
        assert_eq!(
            has_members_filter(&["member".into(), "uniqueMember".into()]),
            "(|(member=*)(uniqueMember=*))"
        );
    }
}
