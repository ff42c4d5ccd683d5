//! What a user's representation is computed from, hashed: so that a full pass can tell an
//! unchanged user without mapping it and serialising the result (a second pass over an
//! unchanged directory spent most of its time there).
//!
//! A user's SCIM representation ([`crate::scim::mapping::map_entry_split`]) is a pure
//! function of its entry (DN and the attributes read), the profile's rules for users, and
//! what its `manager` DN resolves to. [`SourceHasher::hash`] hashes exactly those inputs:
//! every attribute name and value of the entry as read, the DN, a digest of the rules
//! (their `Debug` text, with [`VERSION`]), and each manager reference as it resolves now.
//! Equal source hashes therefore mean equal representations, the representation hash
//! recorded beside the source hash included (the anchor index keeps the pair,
//! [`crate::sync::anchors::AnchorIndex::set_source`], and forgets the source hash whenever
//! the representation hash changes).
//!
//! No hash (`None`), and so the whole mapping, where the shortcut could not be exact: a
//! group (members read in pieces, flattened or probed elsewhere), a profile that maps
//! members for users, a manager still pending (the object must be held back) or a value
//! the mapping would refuse (its error is reported by the mapping).

use std::io::Write;

use crate::fnv::Fnv64;
use crate::ldap::Entry;
use crate::scim::mapping::{first_text, Reference, Resolver};
use crate::scim::profile::{Source, SyncProfile, Target};
use crate::scim::ResourceKind;

/// Changes whenever what the mapping reads or how it writes changes in a way the rules'
/// `Debug` text does not show: every source hash recorded before is then unequal.
pub const VERSION: &str = "idrelay source hash 1";

/// Hashes users' mapping inputs under one profile (built once per pass).
#[derive(Debug, Clone)]
pub struct SourceHasher {
    salt: u64,
    managers: Vec<Vec<String>>,
}

impl SourceHasher {
    /// For `profile`'s users; `None` when its user rules map members (never by default).
    pub fn for_users(profile: &SyncProfile) -> Option<SourceHasher> {
        let rules = profile.resource(ResourceKind::User);
        let mut managers = Vec::new();
        for m in rules.mappings() {
            match (m.target, &m.source) {
                (Target::Members, _) => return None,
                (Target::Manager, Source::Attributes(names)) => managers.push(names.clone()),
                (Target::Manager, _) => return None,
                _ => {}
            }
        }
        let mut h = Fnv64::default();
        let _ = write!(h, "{VERSION}\n{rules:?}");
        Some(SourceHasher {
            salt: h.0,
            managers,
        })
    }

    /// The hash of `entry`'s mapping inputs as a user, its manager resolved by `resolver`;
    /// `None` when the shortcut does not apply (see the module doc). Never 0.
    pub fn hash(&self, entry: &Entry, resolver: &dyn Resolver) -> Option<u64> {
        self.source(entry, resolver)?.whole()
    }

    /// [`SourceHasher::hash`], or for a user whose manager is being created in the same
    /// Bulk request (it resolves `Pending` by `resolver` now) everything of its hash but
    /// that manager's id ([`SourceHash::ManagerPending`]), in one walk of the entry. `None`
    /// when the shortcut does not apply, or when the pending manager is not the last
    /// manager rule (the id must be the last input hashed).
    pub fn source(&self, entry: &Entry, resolver: &dyn Resolver) -> Option<SourceHash> {
        let mut h = Fnv64::default();
        let _ = h.write_all(&self.salt.to_le_bytes());
        field(&mut h, entry.dn.as_bytes());
        for (name, values) in entry.attributes() {
            field(&mut h, name.as_bytes());
            let _ = h.write_all(&(values.len() as u64).to_le_bytes());
            for v in values {
                field(&mut h, v);
            }
        }
        let last = self.managers.len().checked_sub(1);
        for (i, names) in self.managers.iter().enumerate() {
            let dn = first_text(entry, names).ok()?;
            match dn.map(|dn| resolver.resolve(&dn)) {
                None => tag(&mut h, 0, b""),
                Some(Reference::Id(id)) => tag(&mut h, 1, id.as_bytes()),
                Some(Reference::Group(id)) => tag(&mut h, 2, id.as_bytes()),
                Some(Reference::OutOfScope) => tag(&mut h, 3, b""),
                Some(Reference::Pending) if Some(i) == last => {
                    return Some(SourceHash::ManagerPending(PendingSource(h)))
                }
                Some(Reference::Pending) => return None,
            }
        }
        Some(SourceHash::Whole(finish(h)))
    }
}

/// What [`SourceHasher::source`] hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceHash {
    /// Every input: the source hash (never 0).
    Whole(u64),
    /// Every input but the last manager's id, which is pending.
    ManagerPending(PendingSource),
}

impl SourceHash {
    /// The source hash, when every input was known.
    pub fn whole(self) -> Option<u64> {
        match self {
            SourceHash::Whole(h) => Some(h),
            SourceHash::ManagerPending(_) => None,
        }
    }

    /// The hash but for the pending manager's id.
    pub fn pending(self) -> Option<PendingSource> {
        match self {
            SourceHash::ManagerPending(p) => Some(p),
            SourceHash::Whole(_) => None,
        }
    }
}

fn finish(h: Fnv64) -> u64 {
    h.0.max(1)
}

/// A user's source hash but for its manager's id ([`SourceHash::ManagerPending`]).
///
/// Valid only for the mapping it was computed for: if the user is mapped again (handed
/// back by its Bulk operation, or seen again in the pass), this must be dropped with the
/// operation, never applied to what the user is mapped to next. Kept on the operation
/// that carries that mapping for that reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingSource(Fnv64);

impl PendingSource {
    /// The source hash once the manager resolves to `id`: what [`SourceHasher::hash`]
    /// gives for the same entry when the manager resolves to `Reference::Id(id)`.
    pub fn with_manager(self, id: &str) -> u64 {
        let mut h = self.0;
        tag(&mut h, 1, id.as_bytes());
        finish(h)
    }
}

/// Length-prefixed, so that no two different sequences of fields hash the same bytes.
fn field(h: &mut Fnv64, bytes: &[u8]) {
    let _ = h.write_all(&(bytes.len() as u64).to_le_bytes());
    let _ = h.write_all(bytes);
}

fn tag(h: &mut Fnv64, t: u8, bytes: &[u8]) {
    let _ = h.write_all(&[t]);
    field(h, bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::profile::ProfileKind;
    use std::collections::HashMap;

    struct Fixed(HashMap<String, Reference>);

    impl Resolver for Fixed {
        fn resolve(&self, dn: &str) -> Reference {
            self.0.get(dn).cloned().unwrap_or(Reference::OutOfScope)
        }
    }

    fn boss(r: Reference) -> Fixed {
        Fixed(HashMap::from([("uid=boss,dc=x".to_string(), r)]))
    }

    fn user() -> Entry {
        Entry::new("uid=ann,dc=x")
            .with("objectClass", "inetOrgPerson")
            .with("uid", "ann")
            .with("cn", "Ann A")
            .with("mail", "ann@x")
            .with("manager", "uid=boss,dc=x")
            .with("entryUUID", "0b567afa-7d6a-1041-8677-678923bb8630")
    }

    fn hasher() -> SourceHasher {
        SourceHasher::for_users(&SyncProfile::default_for(ProfileKind::OpenLdap)).unwrap()
    }

    #[test]
    fn the_same_inputs_hash_the_same_and_every_input_counts() {
        let h = hasher();
        let id = |s: &str| boss(Reference::Id(s.into()));
        let base = h.hash(&user(), &id("7")).unwrap();
        assert_eq!(h.hash(&user(), &id("7")), Some(base));
        let mut changed = vec![
            // Another value, another attribute, a value moved between attributes.
            h.hash(&user().with("mail", "ann2@x"), &id("7")),
            h.hash(&user().with("title", "x"), &id("7")),
            // The manager resolves to another id, out of scope, or to a group.
            h.hash(&user(), &id("8")),
            h.hash(&user(), &boss(Reference::OutOfScope)),
            h.hash(&user(), &boss(Reference::Group("7".into()))),
        ];
        let mut moved = user();
        moved.dn = "uid=ann,ou=new,dc=x".into();
        changed.push(h.hash(&moved, &id("7")));
        for (i, c) in changed.iter().enumerate() {
            assert!(c.is_some_and(|c| c != base), "input {i} did not count");
        }
        // Values split differently between fields never hash the same.
        let a = Entry::new("d").with("cn", "ab").with("cn", "c");
        let b = Entry::new("d").with("cn", "a").with("cn", "bc");
        assert_ne!(h.hash(&a, &id("7")), h.hash(&b, &id("7")));
    }

    #[test]
    fn a_pending_manager_completed_with_its_id_hashes_as_the_resolved_manager_would() {
        let h = hasher();
        let pending = h
            .source(&user(), &boss(Reference::Pending))
            .and_then(SourceHash::pending)
            .unwrap();
        let resolved = |id: &str| h.hash(&user(), &boss(Reference::Id(id.into())));
        assert_eq!(Some(pending.with_manager("7")), resolved("7"));
        assert_ne!(Some(pending.with_manager("8")), resolved("7"));
        // Another entry, another pending hash.
        let other = h
            .source(&user().with("mail", "x@x"), &boss(Reference::Pending))
            .and_then(SourceHash::pending);
        assert_ne!(other.map(|p| p.with_manager("7")), resolved("7"));
        // Nothing pending: no partial hash (the whole one applies).
        let whole = |r| {
            h.source(&user(), &boss(r))
                .map(|s| (s.pending(), s.whole()))
        };
        assert_eq!(
            whole(Reference::Id("7".into())),
            Some((None, resolved("7")))
        );
        assert!(whole(Reference::OutOfScope).is_some_and(|(p, w)| p.is_none() && w.is_some()));
    }

    #[test]
    fn no_shortcut_for_a_pending_manager_a_bad_value_or_other_rules() {
        let h = hasher();
        assert_eq!(h.hash(&user(), &boss(Reference::Pending)), None);
        let bad = user().with("manager", vec![0xff, 0xfe]);
        let mut bad_first = Entry::new("uid=ann,dc=x");
        for (name, values) in bad.attributes() {
            let mut values = values.to_vec();
            if name == "manager" {
                values.reverse();
            }
            bad_first.add_all(name, values);
        }
        assert_eq!(h.hash(&bad_first, &boss(Reference::Id("7".into()))), None);
        // Other rules, other hashes: a profile change never reuses a recorded hash.
        let ad = SourceHasher::for_users(&SyncProfile::default_for(ProfileKind::ActiveDirectory))
            .unwrap();
        assert_ne!(
            ad.hash(&user(), &boss(Reference::OutOfScope)),
            h.hash(&user(), &boss(Reference::OutOfScope))
        );
    }
}
