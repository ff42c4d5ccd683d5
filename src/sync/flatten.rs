//! `sync.nested_groups = "flatten"`: a SCIM group's members are every transitive user
//! member of the directory group; member groups themselves are not listed.
//!
//! This is the walk over member DNs. The full pass flattens through
//! [`crate::sync::closure`], which keeps each group's resolved closure and falls back to
//! this walk for a group that reaches a membership cycle.
//!
//! Rules it keeps:
//! * **cycles end:** every member DN is taken once per group flattened (a group met again,
//!   the group itself included, adds nothing);
//! * **flat in memory:** the DNs already taken are kept in memory up to [`SEEN_IN_MEMORY`]
//!   (a few MiB), beyond that in a [`DiskMap`] scratch file; in memory besides are the
//!   member values of the groups still to be read and the flattened list itself (what the
//!   entry would have held had the directory listed those members directly);
//! * **a failed read is an error, never a smaller group:** the caller stops (the full pass
//!   before deciding any delete).
//!
//! Which members are groups: those `GroupGraph::is_group` says are (the entries under the
//! base that hold a member value, found with one search: [`DirectoryGraph`]). An empty
//! member group adds nobody.

use std::path::Path;

use crate::ldap::dn;
use crate::ldap::Entry;
use crate::sync::diskmap::DiskMap;
use crate::sync::scope_groups::{GroupGraph, ScopeGroupsError};

pub use crate::sync::scope_groups::DirectoryGraph;

/// What `run` and the full pass need to flatten a group.
#[derive(Debug, Clone)]
pub struct Flatten {
    /// Where member groups are looked for (`directory.base_dn`).
    pub base_dn: String,
    /// The profile's member attributes (`member`, `uniqueMember`).
    pub member_attributes: Vec<String>,
}

/// One group flattened.
#[derive(Debug, PartialEq, Eq)]
pub struct Flat {
    /// The transitive members that are not groups, each once, in the order met.
    pub members: Vec<String>,
    /// Member groups read.
    pub groups: u64,
    /// The deepest level read (1: direct members only).
    pub depth: usize,
}

/// DNs a flattening keeps in memory before it moves them to a scratch file: a group of a
/// few thousand members (most) costs no file operations, one of a million stays flat.
pub const SEEN_IN_MEMORY: usize = if cfg!(test) { 2 } else { 65_536 };

/// The normalised DNs one flattening has taken.
enum Seen {
    Memory(std::collections::HashSet<String>),
    Disk(DiskMap),
}

impl Seen {
    /// Takes `key`; false when it was taken before.
    fn take(&mut self, key: String, state_dir: &Path) -> std::io::Result<bool> {
        match self {
            Seen::Memory(set) if set.len() < SEEN_IN_MEMORY => Ok(set.insert(key)),
            Seen::Memory(set) => {
                if set.contains(&key) {
                    return Ok(false);
                }
                let mut map = DiskMap::scratch(state_dir, "flattened members", 0)?;
                for k in set.drain() {
                    map.insert(k.as_bytes(), &[])?;
                }
                map.insert(key.as_bytes(), &[])?;
                *self = Seen::Disk(map);
                Ok(true)
            }
            Seen::Disk(map) => {
                if map.contains(key.as_bytes())? {
                    return Ok(false);
                }
                map.insert(key.as_bytes(), &[])?;
                Ok(true)
            }
        }
    }
}

/// Flattens the group at `group_dn` whose direct members are `direct`.
pub(crate) async fn flatten<G: GroupGraph>(
    graph: &G,
    group_dn: &str,
    direct: Vec<String>,
    state_dir: &Path,
) -> Result<Flat, ScopeGroupsError> {
    let mut seen = Seen::Memory(Default::default());
    seen.take(dn::normalize(group_dn), state_dir)?;
    let mut out = Flat {
        members: Vec::new(),
        groups: 0,
        depth: 1,
    };
    let mut todo: Vec<(Vec<String>, usize)> = vec![(direct, 1)];
    while let Some((members, depth)) = todo.pop() {
        out.depth = out.depth.max(depth);
        for m in members {
            if !seen.take(dn::normalize(&m), state_dir)? {
                continue;
            }
            if graph.is_group(&m)? {
                if let Some(inner) = graph.members(&m).await? {
                    out.groups += 1;
                    todo.push((inner, depth + 1));
                }
                // A member group that vanished since the search adds nobody.
            } else {
                out.members.push(m);
            }
        }
    }
    Ok(out)
}

/// Takes the values of `attributes` (a group's member attributes) out of `entry`.
pub(crate) fn take_members(entry: &mut Entry, attributes: &[String]) -> Vec<String> {
    let mut direct = Vec::new();
    for a in attributes {
        for v in entry.take(a) {
            direct.push(String::from_utf8_lossy(&v).into_owned());
        }
    }
    direct
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::sync::scope_groups::map_graph::{map_graph as fake, MapGraph as Fake};

    fn run(f: &Fake, group: &str) -> Flat {
        let direct = f.0[&dn::normalize(group)].clone();
        smol::block_on(flatten(f, group, direct, &std::env::temp_dir())).unwrap()
    }

    #[test]
    fn every_transitive_user_once_no_groups_and_the_depth() {
        let f = fake(&[
            ("cn=top,dc=t", &["uid=a,dc=t", "cn=mid,dc=t", "uid=b,dc=t"]),
            ("cn=mid,dc=t", &["uid=c,dc=t", "cn=low,dc=t", "UID=A, DC=t"]),
            ("cn=low,dc=t", &["uid=d,dc=t"]),
        ]);
        let flat = run(&f, "cn=top,dc=t");
        assert_eq!(
            flat.members,
            vec!["uid=a,dc=t", "uid=b,dc=t", "uid=c,dc=t", "uid=d,dc=t"]
        );
        assert_eq!((flat.groups, flat.depth), (2, 3));
        // A group in the middle: only what is below it.
        assert_eq!(
            run(&f, "cn=mid,dc=t").members,
            vec!["uid=c,dc=t", "UID=A, DC=t", "uid=d,dc=t"]
        );
    }

    #[test]
    fn a_cycle_ends_and_the_group_itself_is_never_its_own_member() {
        let f = fake(&[
            ("cn=a,dc=t", &["uid=1,dc=t", "cn=b,dc=t"]),
            ("cn=b,dc=t", &["uid=2,dc=t", "cn=a,dc=t", "cn=b,dc=t"]),
        ]);
        let flat = run(&f, "cn=a,dc=t");
        assert_eq!(flat.members, vec!["uid=1,dc=t", "uid=2,dc=t"]);
        assert_eq!(flat.groups, 1);
        assert_eq!(
            run(&f, "cn=b,dc=t").members,
            vec!["uid=2,dc=t", "uid=1,dc=t"]
        );
    }
}
