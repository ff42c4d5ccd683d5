//! A group's member change as SCIM Bulk PATCH operations (RFC 7644 §3.7 with §3.5.2), for
//! a full pass that sends through Bulk ([`crate::sync::bulk`]).
//!
//! What goes this way: the members of a group the pass just created through Bulk without
//! them (too many for its create operation: its whole member list is additions; a group
//! that fits goes with its members in the create, [`crate::sync::bulk`]), and the change of a group the
//! agent owns whose confirmed members are on disk ([`MemberStore`], no journal left open),
//! with a replace of its other attributes in the first operation, as the single way sends
//! it. Everything else goes the single way ([`crate::sync::members`]), which reads the
//! endpoint or verifies what it must:
//! * a group with member groups (`nested`): the single way checks each added member group
//!   as the endpoint shows it;
//! * removals while the endpoint has not shown that it removes by id (`MemberKey` not
//!   `Id`): the single way reads each removal back (and learns userNames);
//! * unknown stored members; an operation larger than `maxPayloadSize` on its own.
//! * a member list kept on disk (a group too large to hold in memory,
//!   [`MemberIds::on_disk`]): its operations would all be planned at once; the single way
//!   streams them.
//!
//! The operations are exactly the single way's: the same chunking ([`plan_chunks`]: at
//! most `member_chunk` member values an operation, removals first) and the same PatchOp
//! operations ([`patch_operations`]) in the removal form the single way would use now
//! (`[group] member_removal`, else what the endpoint took: [`remove_form_of`]). The bound
//! is the single PATCH's on purpose: an endpoint that bounds the values of a PATCH (AWS
//! IAM Identity Center: 100) applies a Bulk PATCH operation as that same PATCH. What bounds
//! a request is the lane's: `maxOperations`, `maxPayloadSize` and [`crate::sync::bulk::MAX_OPERATIONS`].
//! A group's operations may travel in several requests; their order does not matter (an
//! id is either removed or added, never both, and the attribute replace is independent).
//!
//! Safety (the caller, `sync/pass.rs`, keeps it): the group's stored members are forgotten
//! before its first operation is sent and saved as the wanted list only when every one of
//! its operations was answered with success. Any other answer (refused, unknown, a request
//! that timed out, was cut or refused as a whole) sends the group again the single way,
//! which finds the stored members *unknown*, reads the group from the endpoint and sends
//! only what is still missing: nothing is repeated blindly, no other group is touched. A
//! member PATCH is idempotent where it matters: an `add` of a member already held changes
//! nothing (RFC 7644 §3.5.2.1), and removals go this way only to an endpoint proven to
//! remove by id; a removal that did land is simply absent from the read that follows.

use std::convert::Infallible;

use serde_json::{json, Value};

use crate::scim::bulk::{Limits, SentOp};
use crate::scim::client::{MemberKey, ScimClient};
use crate::scim::mapping::MemberIds;
use crate::scim::resource::PATCH_OP;
use crate::scim::ResourceKind;
use crate::sync::members::{
    diff_members, patch_operations, plan_chunks, remove_form_of, MemberDiff, MemberStore,
    RemoveForm,
};
use crate::sync::provision::Job;

/// The Bulk operations (each encoded, with what was sent) that bring `job`'s members in
/// step at group `id`, `lead` (attribute replaces) in the first; empty when nothing is to
/// be sent. `created`: the group was just created without members. `None`: the group goes
/// the single way (see the module doc).
#[allow(clippy::too_many_arguments)]
pub fn plan(
    scim: &ScimClient,
    store: &MemberStore,
    job: &Job,
    id: &str,
    created: bool,
    lead: Vec<Value>,
    chunk: usize,
    limits: Limits,
) -> Option<Vec<(SentOp, Vec<u8>)>> {
    // A list kept on disk is too long to plan at once: it goes the single way, streamed.
    if !job.nested.is_empty() || job.members.on_disk() {
        return None;
    }
    let diff = if created {
        diff_members(
            std::iter::empty::<Result<String, Infallible>>(),
            &job.members,
        )
        .unwrap_or_else(|never| match never {})
    } else {
        let stored = store.load(&job.external_id, id).ok()??;
        if stored.has_journal() {
            return None;
        }
        diff_members(stored, &job.members).ok()?
    };
    if !diff.removed.is_empty() && scim.facts().member_key != MemberKey::Id {
        return None;
    }
    let sent = SentOp::patch(ResourceKind::Group, id);
    patch_bodies(&diff, &job.members, remove_form_of(scim), chunk, lead)
        .iter()
        .map(|b| {
            let op = sent.encode(Some(b));
            limits.fits(1, op.len()).then(|| (sent.clone(), op))
        })
        .collect()
}

/// The PatchOp messages of a member change: one per chunk of at most `chunk` member values
/// (removals first), `lead` in the first (alone when no member changes). Pure.
pub fn patch_bodies(
    diff: &MemberDiff,
    wanted: &MemberIds,
    form: RemoveForm,
    chunk: usize,
    mut lead: Vec<Value>,
) -> Vec<Value> {
    let mut to_add = diff.added_ids(wanted);
    let mut out = Vec::new();
    for c in plan_chunks(diff.removed.len(), diff.added_len(), chunk) {
        let adds: Vec<_> = to_add.by_ref().take(c.adds.len()).collect();
        let removes: Vec<_> = diff.removed.slice(c.removes).collect();
        let mut ops = std::mem::take(&mut lead);
        ops.extend(patch_operations(
            removes.iter().map(|id| id.as_ref()),
            adds.iter().map(|id| id.as_ref()),
            form,
        ));
        out.push(json!({"schemas": [PATCH_OP], "Operations": ops}));
    }
    if !lead.is_empty() {
        out.push(json!({"schemas": [PATCH_OP], "Operations": lead}));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize, prefix: &str) -> MemberIds {
        (0..n).map(|i| format!("{prefix}{i:04}")).collect()
    }

    fn values(body: &Value) -> usize {
        body["Operations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|op| match op["op"].as_str().unwrap() {
                "add" => op["value"].as_array().unwrap().len(),
                "remove" => op["value"].as_array().map_or(1, Vec::len),
                _ => 0,
            })
            .sum()
    }

    #[test]
    fn a_new_groups_members_go_in_chunks_of_at_most_the_bound() {
        let wanted = ids(250, "u");
        let diff = diff_members(std::iter::empty::<Result<String, Infallible>>(), &wanted)
            .unwrap_or_else(|never| match never {});
        let bodies = patch_bodies(&diff, &wanted, RemoveForm::PathFilter, 100, Vec::new());
        assert_eq!(bodies.len(), 3);
        assert_eq!(
            bodies.iter().map(values).collect::<Vec<_>>(),
            vec![100, 100, 50]
        );
        assert_eq!(bodies[0]["schemas"][0], PATCH_OP);
        assert_eq!(bodies[0]["Operations"][0]["op"], "add");
        assert_eq!(bodies[0]["Operations"][0]["path"], "members");
        assert_eq!(bodies[2]["Operations"][0]["value"][49]["value"], "u0249");
    }

    #[test]
    fn removals_come_first_in_the_form_the_single_way_uses_and_the_lead_rides_the_first() {
        let old = ids(5, "u");
        let wanted: MemberIds = ["u0003", "u0004", "v1", "v2"].into_iter().collect();
        let diff = diff_members(
            old.iter().map(|s| Ok::<_, Infallible>(s.to_string())),
            &wanted,
        )
        .unwrap();
        let lead = vec![json!({"op": "replace", "path": "displayName", "value": "g"})];
        let bodies = patch_bodies(&diff, &wanted, RemoveForm::PathFilter, 2, lead.clone());
        assert_eq!(bodies.iter().map(values).collect::<Vec<_>>(), vec![2, 2, 1]);
        assert_eq!(bodies[0]["Operations"][0], lead[0]);
        assert_eq!(
            bodies[0]["Operations"][1]["path"],
            "members[value eq \"u0000\"]"
        );
        assert_eq!(
            bodies[1]["Operations"][0]["path"],
            "members[value eq \"u0002\"]"
        );
        assert_eq!(bodies[1]["Operations"][1]["op"], "add");
        let vl = patch_bodies(&diff, &wanted, RemoveForm::ValueList, 100, Vec::new());
        assert_eq!(vl.len(), 1);
        assert_eq!(vl[0]["Operations"][0]["path"], "members");
        assert_eq!(vl[0]["Operations"][0]["value"][2]["value"], "u0002");
        // Nothing but the attributes changed: the lead alone.
        let same = diff_members(
            wanted.iter().map(|s| Ok::<_, Infallible>(s.to_string())),
            &wanted,
        )
        .unwrap();
        let only = patch_bodies(&same, &wanted, RemoveForm::PathFilter, 100, lead);
        assert_eq!(only.len(), 1);
        assert_eq!(only[0]["Operations"].as_array().unwrap().len(), 1);
        assert!(patch_bodies(&same, &wanted, RemoveForm::PathFilter, 100, Vec::new()).is_empty());
    }
}
