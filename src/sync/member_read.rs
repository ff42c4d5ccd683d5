//! A group's members read from the directory in pieces ([`crate::ldap::members`]) and
//! resolved to SCIM ids into a list that spills to disk, so that what a full pass holds for
//! a group stays bounded however many members it has (docs/architecture.md §4).
//!
//! The pass reads a group's entry without its `member` attribute and asks this module for
//! the members ([`read_members`]): each piece of DNs is resolved as the mapping resolves
//! them ([`mapping::resolve_member`]: provisioned → id, a group's id also noted as nested,
//! not yet provisioned → pending, the rest left out) into a [`MemberIdsBuilder`] that holds
//! at most [`MEMORY_BUDGET`] bytes of ids and writes each full buffer sorted to a scratch
//! file; a list that outgrew it is one sorted scratch file ([`MemberIds::on_disk`]), which
//! the hash, the diff against the stored members and the PATCH chunks walk in order.
//!
//! `run` reads a group the feed reported changed the same way, in two steps (its reads run
//! while other changes are in flight, and only its sender's task may read the anchor
//! index): [`read_member_dns`] gathers the DNs, unresolved, into the same spilling list,
//! and [`resolve_dns`] resolves them afterwards (`sync/follow/group_members.rs`).
//!
//! Invariant: a read cut short (a failed page, a size limit, a missing range end, the
//! group gone mid-way) or a scratch file that cannot be written is an error for this
//! group: the caller fails the group for this pass, and nothing is sent for it, so no
//! member is ever removed on a partial read.
//!
//! Which way is chosen ([`choose`]): ranged reads on Active Directory and Samba AD; the
//! member side (`memberOf`) only where the operator says the directory keeps it
//! (`directory.member_reads = "member_of"`); elsewhere the whole entry, as before, and a
//! group of more than [`LARGE`] members read that way is said once in the log.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::ldap::members::MemberRead;
use crate::ldap::{Directory, LdapError};
use crate::scim::mapping::{self, MemberIds, MemberIdsBuilder, Resolver};

/// Bytes of member ids a group holds in memory before they spill to a scratch file.
#[cfg(not(test))]
pub const MEMORY_BUDGET: usize = 2 << 20;
/// Small in tests, so that spilling is reached with a few ids.
#[cfg(test)]
pub const MEMORY_BUDGET: usize = 64;

/// The member attribute read in pieces.
pub const STREAMED: &str = "member";

/// Members from which a group read whole is worth a line in the log.
pub const LARGE: usize = 10_000;

static SAID_WHOLE: AtomicBool = AtomicBool::new(false);

/// A group's members, resolved.
#[derive(Debug)]
pub struct ReadMembers {
    /// Ids of the provisioned members, sorted and unique (on disk when many).
    pub ids: MemberIds,
    /// Ids among them that are groups.
    pub nested: Vec<String>,
    /// Member DNs in scope but not provisioned yet.
    pub pending: Vec<String>,
}

/// Why a group's members could not be read.
#[derive(Debug)]
#[non_exhaustive]
pub enum MemberReadError {
    /// The directory read failed or ended as it must not.
    Ldap(LdapError),
    /// A scratch file for the ids could not be written or read.
    Scratch(std::io::Error),
}

impl std::fmt::Display for MemberReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemberReadError::Ldap(e) => write!(f, "reading the members: {e}"),
            MemberReadError::Scratch(e) => write!(f, "member id scratch file: {e}"),
        }
    }
}

/// The way a pass reads group members: `setting` (`None`: automatic) on a directory whose
/// profile reads members from `member_attributes`. Ranged and member-side reads follow
/// `member` only (a profile without it reads with the entry); any other member attribute
/// (`uniqueMember`) is still read with the entry.
pub fn choose(
    setting: Option<MemberRead>,
    active_directory: bool,
    member_attributes: &[String],
) -> MemberRead {
    let has_member = member_attributes
        .iter()
        .any(|a| a.eq_ignore_ascii_case(STREAMED));
    match setting {
        _ if !has_member => MemberRead::Entry,
        Some(how) => how,
        None if active_directory => MemberRead::Ranged,
        None => MemberRead::Entry,
    }
}

/// Says once per process that a group of `count` members was read whole.
pub fn note_whole_read(dn: &str, count: usize) {
    if count > LARGE && !SAID_WHOLE.swap(true, Ordering::Relaxed) {
        log::info!(
            "group {dn} has {count} members, read with its entry at once (this directory offers \
             no ranged reads; where it keeps memberOf, directory.member_reads = \"member_of\" \
             reads them in pages)"
        );
    }
}

/// `streamed` and `from_entry` (ids of other member attributes, read with the entry) as one
/// list; `streamed` itself when `from_entry` is empty.
pub fn union(
    streamed: MemberIds,
    from_entry: &MemberIds,
    scratch: &Path,
) -> Result<MemberIds, MemberReadError> {
    if from_entry.is_empty() {
        return Ok(streamed);
    }
    let mut b = MemberIdsBuilder::spilling(scratch, MEMORY_BUDGET);
    for id in streamed.iter().chain(from_entry.iter()) {
        b.push(&id);
    }
    if streamed.read_failed() {
        return Err(MemberReadError::Scratch(std::io::Error::other(
            "member ids could not be read back",
        )));
    }
    b.try_finish().map_err(MemberReadError::Scratch)
}

/// Reads and resolves the members of `group_dn` the `how` way (`bases`: the scope's
/// subtrees, for a member-side read); scratch files go to `scratch`.
pub async fn read_members(
    dir: &Directory,
    group_dn: &str,
    how: MemberRead,
    bases: &[String],
    resolver: &dyn Resolver,
    scratch: &Path,
) -> Result<ReadMembers, MemberReadError> {
    let mut stream = dir.member_dns(group_dn, how, bases);
    let mut b = MemberIdsBuilder::spilling(scratch, MEMORY_BUDGET);
    let (mut nested, mut pending) = (BTreeSet::new(), BTreeSet::new());
    let (mut pieces, mut read) = (0u64, 0u64);
    while let Some(piece) = stream.next_batch().await {
        let piece = piece.map_err(MemberReadError::Ldap)?;
        pieces += 1;
        read += piece.len() as u64;
        for dn in piece {
            if !dn.is_empty() {
                mapping::resolve_member(resolver, &dn, &mut b, &mut nested, &mut pending);
            }
        }
    }
    let ids = b.try_finish().map_err(MemberReadError::Scratch)?;
    note_read(group_dn, how, read, pieces, &ids);
    Ok(ReadMembers {
        ids,
        nested: nested.into_iter().collect(),
        pending: pending.into_iter().collect(),
    })
}

/// The debug line that names how a group's members were read.
fn note_read(group_dn: &str, how: MemberRead, read: u64, pieces: u64, ids: &MemberIds) {
    log::debug!(
        "group {group_dn}: {read} member DNs read {} in {pieces} pieces, {} provisioned{}",
        match how {
            MemberRead::MemberOf => "by memberOf",
            _ => "by range",
        },
        ids.len(),
        if ids.on_disk() { " (ids on disk)" } else { "" }
    );
}

/// A group's member DNs as read in pieces, not yet resolved: `run`'s sender reads them
/// while other changes are in flight and resolves them between awaits ([`resolve_dns`]),
/// where it may read the anchor index.
#[derive(Debug, Clone)]
pub struct MemberDnList {
    /// The DNs, sorted and unique (in a scratch file when many: the same spilling list as
    /// the ids).
    pub dns: MemberIds,
    /// DNs read and pieces they came in (for the log).
    pub read: u64,
    pub pieces: u64,
    /// How they were read.
    pub how: MemberRead,
}

/// Reads the member DNs of `group_dn` the `how` way into a list that spills to `scratch`,
/// unresolved (see [`MemberDnList`]). The same errors as [`read_members`].
pub async fn read_member_dns(
    dir: &Directory,
    group_dn: &str,
    how: MemberRead,
    bases: &[String],
    scratch: &Path,
) -> Result<MemberDnList, MemberReadError> {
    let mut stream = dir.member_dns(group_dn, how, bases);
    let mut b = MemberIdsBuilder::spilling(scratch, MEMORY_BUDGET);
    let (mut pieces, mut read) = (0u64, 0u64);
    while let Some(piece) = stream.next_batch().await {
        let piece = piece.map_err(MemberReadError::Ldap)?;
        pieces += 1;
        read += piece.len() as u64;
        for dn in piece.iter().filter(|d| !d.is_empty()) {
            b.push(dn);
        }
    }
    let dns = b.try_finish().map_err(MemberReadError::Scratch)?;
    Ok(MemberDnList {
        dns,
        read,
        pieces,
        how,
    })
}

/// Resolves a group's member DNs read by [`read_member_dns`] as [`read_members`] does. A
/// list on disk that cannot be read back whole is an error, never fewer members.
pub fn resolve_dns(
    group_dn: &str,
    list: &MemberDnList,
    resolver: &dyn Resolver,
    scratch: &Path,
) -> Result<ReadMembers, MemberReadError> {
    let mut b = MemberIdsBuilder::spilling(scratch, MEMORY_BUDGET);
    let (mut nested, mut pending) = (BTreeSet::new(), BTreeSet::new());
    for dn in list.dns.iter() {
        mapping::resolve_member(resolver, &dn, &mut b, &mut nested, &mut pending);
    }
    if list.dns.read_failed() {
        return Err(MemberReadError::Scratch(std::io::Error::other(
            "member DNs could not be read back",
        )));
    }
    let ids = b.try_finish().map_err(MemberReadError::Scratch)?;
    note_read(group_dn, list.how, list.read, list.pieces, &ids);
    Ok(ReadMembers {
        ids,
        nested: nested.into_iter().collect(),
        pending: pending.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(m: &MemberIds) -> Vec<String> {
        m.iter().map(|s| s.into_owned()).collect()
    }

    #[test]
    fn ranged_on_ad_member_side_only_when_asked_and_only_for_member() {
        let member = ["member".to_string()];
        assert_eq!(choose(None, true, &member), MemberRead::Ranged);
        assert_eq!(choose(None, false, &member), MemberRead::Entry);
        let mo = Some(MemberRead::MemberOf);
        assert_eq!(choose(mo, false, &member), MemberRead::MemberOf);
        let unique = ["member".to_string(), "uniqueMember".to_string()];
        assert_eq!(choose(mo, false, &unique), MemberRead::MemberOf);
        let only_unique = ["uniqueMember".to_string()];
        assert_eq!(choose(mo, false, &only_unique), MemberRead::Entry);
        assert_eq!(choose(None, true, &only_unique), MemberRead::Entry);
    }

    #[test]
    fn a_spilled_list_is_sorted_unique_and_diffs_like_one_in_memory() {
        let dir = std::env::temp_dir();
        let wanted: Vec<String> = (0..300)
            .rev()
            .map(|i| format!("id{:04}", i % 250))
            .collect();
        let mut b = MemberIdsBuilder::spilling(&dir, MEMORY_BUDGET);
        for w in &wanted {
            b.push(w);
        }
        let disk = b.try_finish().unwrap();
        let memory: MemberIds = wanted.iter().collect();
        assert!(disk.on_disk() && !memory.on_disk());
        assert_eq!(disk.len(), 250);
        assert_eq!(ids(&disk), ids(&memory));
        assert_eq!(disk, memory);
        assert_eq!(
            disk.slice(100..103).collect::<Vec<_>>(),
            ["id0100", "id0101", "id0102"]
        );
        // The streaming diff against a stored list: the same runs and removals.
        let stored: Vec<String> = ["a", "id0000", "id0007", "id0249", "zz"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let walk = || {
            stored
                .iter()
                .map(|s| Ok::<_, std::convert::Infallible>(s.clone()))
        };
        let d1 = crate::sync::members::diff_members(walk(), &disk).unwrap();
        let d2 = crate::sync::members::diff_members(walk(), &memory).unwrap();
        assert_eq!(d1, d2);
        assert_eq!(ids(&d1.removed), ["a", "zz"]);
        assert_eq!(d1.added, vec![1..7, 8..249]);
        assert_eq!(d1.added_ids(&disk).count(), 247);
        assert!(!disk.read_failed());
        // Hashes see the same list.
        let body = serde_json::json!({"displayName": "g"});
        assert_eq!(
            crate::sync::anchors::representation_hash_with(&body, &disk),
            crate::sync::anchors::representation_hash_with(&body, &memory)
        );
    }

    #[test]
    fn a_small_list_stays_in_memory() {
        let mut b = MemberIdsBuilder::spilling(&std::env::temp_dir(), MEMORY_BUDGET);
        b.push("b");
        b.push("a");
        let m = b.try_finish().unwrap();
        assert!(!m.on_disk());
        assert_eq!(ids(&m), ["a", "b"]);
    }

    #[test]
    fn a_scratch_directory_that_cannot_be_written_is_an_error_not_a_shorter_list() {
        let missing = std::env::temp_dir().join("idrelay-no-such-dir-for-spill");
        let mut b = MemberIdsBuilder::spilling(&missing, MEMORY_BUDGET);
        for i in 0..100 {
            b.push(&format!("id{i:04}"));
        }
        assert!(b.try_finish().is_err());
    }
}
