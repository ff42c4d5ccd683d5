//! `bulkId` references (RFC 7644 §3.7.2): a user whose manager is created earlier in the
//! same Bulk request names the manager as `"bulkId:<the manager's bulkId>"`, which the
//! endpoint resolves, instead of waiting for the manager's create to be answered.
//!
//! Rules:
//! * Only a user's `manager`, only in a full pass's first round, only where the manager's
//!   create is in the request being gathered (never one already out: a bulkId names an
//!   operation of its own request), and only when the user fits that request beside it
//!   (the pass checks before it adds the user). Otherwise the user is held back as before.
//! * **What the index records is what was stored.** The user's representation hash is
//!   computed when its operation is answered, from the body as mapped with the manager's
//!   real id (the id the same answer gives the manager's create) in place of the reference
//!   ([`Referring::hash_with`]), so the next pass finds the user unchanged. An answer that
//!   applies the user but gives no id for the manager records hash 0 ("unknown"): the next
//!   pass sends the user again. The user's source hash ([`crate::scim::source_hash`]) is
//!   completed the same way ([`Referring::source_with`]: everything but the manager's id was
//!   hashed when the user was mapped), so the next pass need not even map it; it travels
//!   with this operation only, so a user handed back and mapped again never inherits it.
//! * **A referring operation not applied is never retried as it is** (its body names an
//!   operation that is gone): whatever the reason (the manager's create refused, so the
//!   reference cannot be resolved, 409 per RFC; the request halved on 413; refused or lost
//!   for itself), the user is handed back to the pass, which maps it again once the phase has
//!   drained, with the manager's real id or without it if the manager failed, as any held
//!   user. When its create's fate is unknown it is looked up by externalId first.

use std::collections::HashMap;
use std::io::Write;

use serde_json::Value;

use crate::fnv::Fnv64;
use crate::scim::mapping::{Reference, Resolver};
use crate::scim::source_hash::PendingSource;

/// The text that names the operation created under `bulk_id`.
pub fn reference(bulk_id: &str) -> String {
    format!("bulkId:{bulk_id}")
}

/// A user's operation that names its manager by bulkId: enough to hash the representation
/// the endpoint stores once the manager's id is known.
#[derive(Debug, Clone)]
pub struct Referring {
    /// The bulkId of the manager's create.
    target: String,
    /// The body as mapped (serialized), with the reference in place of the manager's id.
    bytes: Vec<u8>,
    /// Where the reference's JSON string (quotes included) is in `bytes`.
    at: (usize, usize),
    /// The user's source hash but for the manager's id, when the pass could compute it.
    source: Option<PendingSource>,
}

impl Referring {
    /// For `body` (as mapped, naming its manager by a reference to `target`); `None` when the
    /// reference's text is not found exactly once in it (another value equal to it: the
    /// user is then held back instead).
    pub fn new(body: &Value, target: &str) -> Option<Referring> {
        let bytes = serde_json::to_vec(body).ok()?;
        let needle = serde_json::to_vec(&reference(target)).ok()?;
        let mut found = bytes
            .windows(needle.len())
            .enumerate()
            .filter(|(_, w)| *w == needle.as_slice())
            .map(|(i, _)| i);
        let start = found.next()?;
        if found.next().is_some() {
            return None;
        }
        Some(Referring {
            target: target.to_string(),
            at: (start, start + needle.len()),
            bytes,
            source: None,
        })
    }

    /// The user's source hash but for the manager's id
    /// ([`crate::scim::source_hash::SourceHash::ManagerPending`]), for the mapping this operation
    /// carries.
    pub fn set_source(&mut self, source: Option<PendingSource>) {
        self.source = source;
    }

    /// The source hash of what the endpoint stores once the manager's create got `id`
    /// (0: unknown).
    pub fn source_with(&self, id: &str) -> u64 {
        self.source.map_or(0, |s| s.with_manager(id))
    }

    /// The bulkId of the manager's create.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The representation hash ([`crate::sync::anchors::representation_hash`]) of the body
    /// with the manager's `id` in place of the reference.
    pub fn hash_with(&self, id: &str) -> u64 {
        let mut h = Fnv64::default();
        let _ = h.write_all(&self.bytes[..self.at.0]);
        let _ = serde_json::to_writer(&mut h, id);
        let _ = h.write_all(&self.bytes[self.at.1..]);
        h.0.max(1)
    }
}

/// The users whose creates are in the request being gathered, by anchor: the bulkIds a
/// later user of the same request may name.
#[derive(Debug, Default)]
pub struct Gathered {
    by_anchor: HashMap<String, String>,
}

impl Gathered {
    /// Notes a user's create under `bulk_id`.
    pub fn add(&mut self, anchor: &str, bulk_id: &str) {
        self.by_anchor
            .insert(anchor.to_string(), bulk_id.to_string());
    }

    /// The bulkId of the create of the user anchored at `anchor`, when it is gathered.
    pub fn bulk_id(&self, anchor: &str) -> Option<&str> {
        self.by_anchor.get(anchor).map(String::as_str)
    }

    /// The request went out (or was taken apart): nothing can be named any more.
    pub fn clear(&mut self) {
        self.by_anchor.clear();
    }
}

/// A resolver that names one manager DN (exactly as the entry holds it) by a bulkId
/// reference and asks `inner` for everything else.
pub struct Naming<'a> {
    /// The resolver of the pass.
    pub inner: &'a dyn Resolver,
    /// The manager's DN, as in the entry.
    pub dn: &'a str,
    /// The manager's create's bulkId.
    pub bulk_id: &'a str,
}

impl Resolver for Naming<'_> {
    fn resolve(&self, target: &str) -> Reference {
        if target == self.dn {
            return Reference::Id(reference(self.bulk_id));
        }
        self.inner.resolve(target)
    }
}

/// The ids the creates of one answered request were given, by bulkId.
pub fn created_ids<'a>(
    ops: impl Iterator<Item = (Option<&'a str>, Option<&'a str>)>,
) -> HashMap<&'a str, &'a str> {
    ops.filter_map(|(b, id)| Some((b?, id?))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::anchors::representation_hash;
    use serde_json::json;

    fn user(manager: &str) -> Value {
        json!({
            "userName": "u1",
            "displayName": "bulkId:b1 is not a reference here",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {
                "department": "D", "manager": {"value": manager}
            }
        })
    }

    #[test]
    fn the_hash_is_that_of_the_body_with_the_managers_real_id() {
        let r = Referring::new(&user(&reference("b1")), "b1").unwrap();
        assert_eq!(r.target(), "b1");
        assert_eq!(
            r.hash_with("2819c223-7f76"),
            representation_hash(&user("2819c223-7f76"))
        );
        // An id that JSON escapes is hashed as serialized.
        assert_eq!(r.hash_with("a\"b"), representation_hash(&user("a\"b")));
        assert_ne!(r.hash_with("x"), r.hash_with("y"));
    }

    #[test]
    fn a_reference_text_found_twice_or_not_at_all_is_refused() {
        let mut twice = user(&reference("b1"));
        twice["title"] = json!("bulkId:b1");
        assert!(Referring::new(&twice, "b1").is_none());
        assert!(Referring::new(&user("42"), "b1").is_none());
        // "bulkId:b1" inside a longer value is not the reference.
        assert!(Referring::new(&user(&reference("b12")), "b1").is_none());
    }

    #[test]
    fn gathered_creates_are_named_until_the_request_goes() {
        let mut g = Gathered::default();
        g.add("x1", "b1");
        assert_eq!(g.bulk_id("x1"), Some("b1"));
        assert_eq!(g.bulk_id("x2"), None);
        g.clear();
        assert_eq!(g.bulk_id("x1"), None);
    }

    #[test]
    fn created_ids_keep_only_creates_with_an_id() {
        let m = created_ids(
            [
                (Some("b1"), Some("i1")),
                (Some("b2"), None),
                (None, Some("i3")),
            ]
            .into_iter(),
        );
        assert_eq!(m.len(), 1);
        assert_eq!(m["b1"], "i1");
    }
}
