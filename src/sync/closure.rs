//! `sync.nested_groups = "flatten"` in a full pass: every group's transitive user members,
//! resolved to SCIM ids, computed once per pass and kept per group.
//!
//! Why: flattened groups hold every user once per group above it (a 5-level tree of 200
//! groups over 10,000 users lists 114,000 member values where direct lists 10,400), and
//! resolving each value (normalise, scope map, anchor index) cost a flatten pass 2 to 4
//! times a direct one. Here each group's *direct* user members are resolved once per pass
//! (10,400 look-ups, as with `direct`), and a group's closure is its own ids merged with
//! its member groups' closures, read whole from a scratch file: a member group costs one
//! read, not one look-up per user below it.
//!
//! Rules it keeps:
//! * **the same answer as the walk** ([`crate::sync::flatten`]): every transitive member
//!   that is not a member group, each once; the group itself never; the same references
//!   left out (out of scope) or waiting (pending);
//! * **a closure is kept only when it is whole:** one with a pending member (an object not
//!   created yet) is not kept, and a cycle (a member group met again while it is being
//!   flattened) ends this way of computing: that group is flattened by the walk instead
//!   (what was kept before the cycle was met stays right: it was whole);
//! * **flat in memory:** the closures live in a [`DiskMap`] scratch file (normalised DN →
//!   depth and ids); in memory are the groups on the current path with the ids gathered
//!   for each (about the one group's list being built);
//! * **a failed read is an error, never a smaller group** (as the walk).

use std::collections::HashMap;
use std::path::Path;

use crate::ldap::dn;
use crate::scim::mapping::{MemberIds, MemberIdsBuilder, Reference};
use crate::sync::diskmap::DiskMap;
use crate::sync::flatten;
use crate::sync::scope_groups::{GroupGraph, ScopeGroupsError};

/// One group flattened to ids.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FlatIds {
    /// The transitive members' SCIM ids, sorted and unique.
    pub ids: MemberIds,
    /// The ids among them that are groups (a member that resolved to a provisioned group
    /// but holds no members, so is no member group), sorted.
    pub nested: Vec<String>,
    /// Members in scope and not provisioned yet (their DNs).
    pub pending: Vec<String>,
    /// The deepest level read (1: direct members only).
    pub depth: usize,
}

/// The closures of one pass.
pub struct Closures {
    kept: DiskMap,
}

/// A group on the current path.
struct Frame {
    key: String,
    members: std::vec::IntoIter<String>,
    ids: MemberIdsBuilder,
    nested: Vec<String>,
    pending: Vec<String>,
    depth: usize,
}

impl Frame {
    fn new(key: String, members: Vec<String>) -> Frame {
        Frame {
            key,
            members: members.into_iter(),
            ids: MemberIdsBuilder::default(),
            nested: Vec::new(),
            pending: Vec::new(),
            depth: 1,
        }
    }

    /// A member that is no member group: its reference, as the mapping takes it.
    fn take_user(&mut self, m: &str, resolve: &dyn Fn(&str) -> Reference) {
        match resolve(m) {
            Reference::Id(id) if !id.is_empty() => self.ids.push(&id),
            Reference::Group(id) if !id.is_empty() => {
                self.ids.push(&id);
                self.nested.push(id);
            }
            Reference::Pending => self.pending.push(m.to_string()),
            _ => {}
        }
    }

    /// Takes a member group's closure into this one.
    fn merge(&mut self, child: &FlatIds) {
        for id in child.ids.iter() {
            self.ids.push(&id);
        }
        self.nested.extend(child.nested.iter().cloned());
        self.pending.extend(child.pending.iter().cloned());
        self.depth = self.depth.max(child.depth + 1);
    }

    fn finish(self) -> (String, FlatIds) {
        let mut nested = self.nested;
        nested.sort_unstable();
        nested.dedup();
        let mut pending = self.pending;
        pending.sort_unstable();
        pending.dedup();
        let flat = FlatIds {
            ids: self.ids.finish(),
            nested,
            pending,
            depth: self.depth,
        };
        (self.key, flat)
    }
}

/// What the computation met.
enum Outcome {
    Done(FlatIds),
    /// A member group was met again on its own path.
    Cycle,
}

impl Closures {
    /// Empty, with its scratch file in `state_dir`.
    pub fn new(state_dir: &Path) -> std::io::Result<Closures> {
        Ok(Closures {
            kept: DiskMap::scratch(state_dir, "flattened groups", 0)?,
        })
    }

    /// The flattened members of the group at `group_dn`, whose direct member values are
    /// `direct`, each resolved with `resolve`.
    pub(crate) async fn flatten<G: GroupGraph>(
        &mut self,
        graph: &G,
        group_dn: &str,
        direct: Vec<String>,
        resolve: &dyn Fn(&str) -> Reference,
        state_dir: &Path,
    ) -> Result<FlatIds, ScopeGroupsError> {
        let key = dn::normalize(group_dn);
        if let Some(kept) = self.read(&key)? {
            return Ok(kept);
        }
        match self.closure(graph, key, direct.clone(), resolve).await? {
            Outcome::Done(flat) => Ok(flat),
            Outcome::Cycle => {
                // The walk ends cycles; its members are then resolved one by one.
                let walked = flatten::flatten(graph, group_dn, direct, state_dir).await?;
                let mut top = Frame::new(String::new(), Vec::new());
                top.depth = walked.depth;
                for m in &walked.members {
                    top.take_user(m, resolve);
                }
                Ok(top.finish().1)
            }
        }
    }

    async fn closure<G: GroupGraph>(
        &mut self,
        graph: &G,
        key: String,
        direct: Vec<String>,
        resolve: &dyn Fn(&str) -> Reference,
    ) -> Result<Outcome, ScopeGroupsError> {
        let mut on_path: HashMap<String, ()> = HashMap::new();
        on_path.insert(key.clone(), ());
        let mut path = vec![Frame::new(key, direct)];
        loop {
            let Some(top) = path.last_mut() else {
                unreachable!("the root frame is popped only when it is returned")
            };
            let Some(m) = top.members.next() else {
                let (key, flat) = path.pop().expect("a frame").finish();
                on_path.remove(&key);
                if flat.pending.is_empty() {
                    self.keep(&key, &flat)?;
                }
                match path.last_mut() {
                    Some(parent) => parent.merge(&flat),
                    None => return Ok(Outcome::Done(flat)),
                }
                continue;
            };
            if !graph.is_group(&m)? {
                top.take_user(&m, resolve);
                continue;
            }
            let k = dn::normalize(&m);
            if on_path.contains_key(&k) {
                return Ok(Outcome::Cycle);
            }
            if let Some(kept) = self.read(&k)? {
                top.merge(&kept);
                continue;
            }
            // A member group that vanished since the search adds nobody.
            if let Some(inner) = graph.members(&m).await? {
                on_path.insert(k.clone(), ());
                path.push(Frame::new(k, inner));
            }
        }
    }

    fn keep(&mut self, key: &str, flat: &FlatIds) -> std::io::Result<()> {
        let ids: Vec<_> = flat.ids.iter().collect();
        let mut items: Vec<&str> = Vec::with_capacity(flat.ids.len() + flat.nested.len());
        items.extend(ids.iter().map(|id| id.as_ref()));
        items.extend(flat.nested.iter().map(String::as_str));
        let mut value = Vec::new();
        value.extend_from_slice(&(flat.depth as u32).to_le_bytes());
        value.extend_from_slice(&(flat.ids.len() as u32).to_le_bytes());
        value.extend_from_slice(&encode_list(&items));
        self.kept.insert(key.as_bytes(), &value)
    }

    fn read(&self, key: &str) -> Result<Option<FlatIds>, ScopeGroupsError> {
        let Some(v) = self.kept.get(key.as_bytes())? else {
            return Ok(None);
        };
        decode(&v).map(Some).ok_or_else(|| {
            ScopeGroupsError::State(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a damaged flattened group",
            ))
        })
    }
}

/// `[u32 length][bytes]...` (little endian).
fn encode_list(items: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(items.iter().map(|s| s.len() + 4).sum());
    for s in items {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out
}

fn decode(v: &[u8]) -> Option<FlatIds> {
    let depth = u32::from_le_bytes(v.get(..4)?.try_into().ok()?) as usize;
    let n_ids = u32::from_le_bytes(v.get(4..8)?.try_into().ok()?) as usize;
    let mut rest = &v[8..];
    let mut items = Vec::new();
    while !rest.is_empty() {
        let n = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        items.push(std::str::from_utf8(rest.get(4..4 + n)?).ok()?);
        rest = &rest[4 + n..];
    }
    let nested = items.split_off(n_ids.min(items.len()));
    Some(FlatIds {
        ids: items.into_iter().collect(),
        nested: nested.into_iter().map(str::to_string).collect(),
        pending: Vec::new(),
        depth,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    use crate::sync::scope_groups::map_graph::{map_graph as fake, MapGraph as Fake};

    /// `uid=x,...` resolves to id `x`; `uid=p...` is pending; `uid=out...` out of scope;
    /// `cn=empty...` a provisioned group without members.
    fn resolve(dn: &str) -> Reference {
        let rdn = dn.split(',').next().unwrap_or("");
        let v = rdn.split('=').nth(1).unwrap_or("").to_ascii_lowercase();
        if rdn.to_ascii_lowercase().starts_with("cn=empty") {
            return Reference::Group(v);
        }
        if v.starts_with('p') {
            Reference::Pending
        } else if v.starts_with("out") {
            Reference::OutOfScope
        } else {
            Reference::Id(v)
        }
    }

    fn run(c: &mut Closures, f: &Fake, group: &str, count: &Cell<usize>) -> FlatIds {
        let direct = f.0[&dn::normalize(group)].clone();
        let counting = |dn: &str| {
            count.set(count.get() + 1);
            resolve(dn)
        };
        smol::block_on(c.flatten(f, group, direct, &counting, &std::env::temp_dir())).unwrap()
    }

    fn ids(f: &FlatIds) -> Vec<String> {
        f.ids.iter().map(|s| s.into_owned()).collect()
    }

    /// top ∋ a, mid, low2; mid ∋ b, low, out1; low ∋ c, A (again), empty; low2 ∋ d, low.
    fn tree() -> Fake {
        fake(&[
            (
                "cn=top,dc=t",
                &["uid=a,dc=t", "cn=mid,dc=t", "cn=low2,dc=t"],
            ),
            (
                "cn=mid,dc=t",
                &["uid=b,dc=t", "CN=Low, DC=t", "uid=out1,dc=t"],
            ),
            (
                "cn=low,dc=t",
                &["uid=c,dc=t", "UID=A,dc=t", "cn=empty,dc=t"],
            ),
            ("cn=low2,dc=t", &["uid=d,dc=t", "cn=low,dc=t"]),
        ])
    }

    #[test]
    fn the_same_members_as_the_walk_each_user_resolved_once_per_pass() {
        let f = tree();
        let mut c = Closures::new(&std::env::temp_dir()).unwrap();
        let n = Cell::new(0);
        let top = run(&mut c, &f, "cn=top,dc=t", &n);
        assert_eq!(ids(&top), vec!["a", "b", "c", "d", "empty"]);
        assert_eq!(top.nested, vec!["empty"]);
        assert_eq!(top.depth, 3);
        assert!(top.pending.is_empty());
        // low was met twice (through mid and low2) and read once: a; b, out1; c, A, empty; d.
        assert_eq!(n.get(), 7);
        // Every group below was kept: flattening them costs no look-up.
        for (g, want) in [
            ("cn=mid,dc=t", vec!["a", "b", "c", "empty"]),
            ("cn=low,dc=t", vec!["a", "c", "empty"]),
            ("cn=low2,dc=t", vec!["a", "c", "d", "empty"]),
        ] {
            assert_eq!(ids(&run(&mut c, &f, g, &n)), want, "{g}");
        }
        assert_eq!(n.get(), 7);
        // The walk agrees.
        let walked = smol::block_on(flatten::flatten(
            &f,
            "cn=top,dc=t",
            f.0["cn=top,dc=t"].clone(),
            &std::env::temp_dir(),
        ))
        .unwrap();
        let mut by_walk: Vec<String> = walked
            .members
            .iter()
            .filter_map(|m| match resolve(m) {
                Reference::Id(i) | Reference::Group(i) => Some(i),
                _ => None,
            })
            .collect();
        by_walk.sort();
        by_walk.dedup();
        assert_eq!(ids(&top), by_walk);
        assert_eq!(walked.depth, top.depth);
    }

    #[test]
    fn a_pending_member_is_reported_and_nothing_above_it_is_kept() {
        let f = fake(&[
            ("cn=top,dc=t", &["uid=a,dc=t", "cn=mid,dc=t"]),
            ("cn=mid,dc=t", &["uid=p1,dc=t", "uid=b,dc=t"]),
        ]);
        let mut c = Closures::new(&std::env::temp_dir()).unwrap();
        let n = Cell::new(0);
        let top = run(&mut c, &f, "cn=top,dc=t", &n);
        assert_eq!(ids(&top), vec!["a", "b"]);
        assert_eq!(top.pending, vec!["uid=p1,dc=t"]);
        assert!(c.read("cn=mid,dc=t").unwrap().is_none());
        assert!(c.read("cn=top,dc=t").unwrap().is_none());
        assert_eq!(run(&mut c, &f, "cn=mid,dc=t", &n).pending.len(), 1);
    }

    #[test]
    fn a_cycle_is_flattened_by_the_walk_and_the_group_is_never_its_own_member() {
        let f = fake(&[
            ("cn=a,dc=t", &["uid=1,dc=t", "cn=b,dc=t"]),
            ("cn=b,dc=t", &["uid=2,dc=t", "cn=c,dc=t", "cn=a,dc=t"]),
            ("cn=c,dc=t", &["uid=3,dc=t"]),
        ]);
        let mut c = Closures::new(&std::env::temp_dir()).unwrap();
        let n = Cell::new(0);
        let a = run(&mut c, &f, "cn=a,dc=t", &n);
        assert_eq!(ids(&a), vec!["1", "2", "3"]);
        assert_eq!(a.depth, 3);
        let b = run(&mut c, &f, "cn=b,dc=t", &n);
        assert_eq!(ids(&b), vec!["1", "2", "3"]);
        // c, below the cycle, was whole and kept; a and b were not.
        assert_eq!(ids(&c.read("cn=c,dc=t").unwrap().unwrap()), vec!["3"]);
        assert!(c.read("cn=a,dc=t").unwrap().is_none());
    }

    #[test]
    fn a_kept_closure_reads_back_as_it_was_written() {
        let mut c = Closures::new(&std::env::temp_dir()).unwrap();
        let flat = FlatIds {
            ids: ["x", "é", "a"].into_iter().collect(),
            nested: vec!["g".into()],
            pending: Vec::new(),
            depth: 4,
        };
        c.keep("cn=k,dc=t", &flat).unwrap();
        assert_eq!(c.read("cn=k,dc=t").unwrap().unwrap(), flat);
        assert!(decode(&[1, 0]).is_none());
    }
}
