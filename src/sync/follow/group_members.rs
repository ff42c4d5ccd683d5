//! A changed group's members in `run`, read in pieces as a full pass reads them
//! ([`crate::sync::member_read`]: ranged reads on AD and Samba, the member side where
//! `directory.member_reads = "member_of"`), not with the group's entry, so that a change to
//! a group of a million members costs about what the full pass costs for it.
//!
//! Split in two by the batch machine's rule that the work in flight only reads the
//! directory and the endpoint: the change's read (`batch.rs`'s `prepare`) reads the entry
//! without `member` ([`entry_attributes`]), then the member DNs, unresolved, into a list
//! that spills to disk; its decision, on the sender's task between awaits, resolves them
//! through the anchor index ([`add_to`]). The group then goes the way every group goes:
//! its hash against the index, then PATCH chunks against the members last confirmed at the
//! endpoint ([`crate::sync::members`]).
//!
//! Invariant: a member read cut short, or a scratch file that cannot be written or read
//! back, fails the change for this turn (retried as any failed directory read, later
//! changes of the batch wait): nothing is sent for the group, no member is removed.

use std::path::Path;

use crate::ldap::members::MemberRead;
use crate::scim::mapping::{Mapped, Resolver};
use crate::scim::profile::SyncProfile;
use crate::scim::ResourceKind;
use crate::sync::member_read::{self, MemberDnList, STREAMED};
use crate::sync::pass::PassSettings;

/// How a changed group's members are read apart from its entry; `None`: with the entry
/// (`member_reads` is `entry`; flattened groups, which owe a full pass; or a user mapping
/// that reads `member` itself, since the kind is known only after the read).
pub(super) fn way(pass: &PassSettings, profile: &SyncProfile) -> Option<MemberRead> {
    let users_read_it = profile
        .ldap_attributes(ResourceKind::User)
        .iter()
        .any(|a| a.eq_ignore_ascii_case(STREAMED));
    (pass.member_read != MemberRead::Entry && pass.flatten.is_none() && !users_read_it)
        .then_some(pass.member_read)
}

/// `attrs` without the member attribute read in pieces, when members are read so.
pub(super) fn entry_attributes<'a>(attrs: &[&'a str], way: Option<MemberRead>) -> Vec<&'a str> {
    attrs
        .iter()
        .filter(|a| way.is_none() || !a.eq_ignore_ascii_case(STREAMED))
        .copied()
        .collect()
}

/// Says once per process that a large group was read with its entry (as a full pass does).
pub(super) fn note_whole(entry: &crate::ldap::Entry) {
    member_read::note_whole_read(&entry.dn, entry.bytes(STREAMED).len());
}

/// Resolves the group's member DNs (`list`) and adds them to `mapped`, beside the members
/// of any other member attribute read with the entry. `Err`: why the change is retried.
pub(super) fn add_to(
    mapped: &mut Mapped,
    dn: &str,
    list: &MemberDnList,
    resolver: &dyn Resolver,
    scratch: &Path,
) -> Result<(), String> {
    let why = |e: member_read::MemberReadError| format!("group {dn}: {e}");
    let r = member_read::resolve_dns(dn, list, resolver, scratch).map_err(why)?;
    let with_entry = std::mem::take(&mut mapped.members);
    mapped.members = member_read::union(r.ids, &with_entry, scratch).map_err(why)?;
    mapped.nested.extend(r.nested);
    mapped.nested.sort_unstable();
    mapped.nested.dedup();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_members_read_apart_leave_the_entry_read() {
        let attrs = ["objectClass", "cn", "Member", "uniqueMember"];
        let apart = entry_attributes(&attrs, Some(MemberRead::Ranged));
        assert_eq!(apart, ["objectClass", "cn", "uniqueMember"]);
        assert_eq!(entry_attributes(&attrs, None), attrs);
    }
}
