//! The pure mapping from an LDAP [`Entry`] to a SCIM resource body, under a [`SyncProfile`].
//!
//! Owns the built-in transforms: the anchor (`externalId`), `active`, and the resolution of
//! DN references (`manager`, `members`) to SCIM ids through a [`Resolver`]. Does no I/O and
//! never logs: the caller resolves references ahead of time and reports errors.
//!
//! Invariants:
//! * Deterministic: the same entry, profile and resolver answers give byte-identical
//!   `serde_json::to_string` output (the engine hashes it to skip unchanged objects). Member
//!   ids are sorted (by bytes) and de-duplicated, so a server returning `member` values in another
//!   order does not count as a change; pending DNs are sorted too.
//! * No nulls and no empty containers: an attribute without a value is left out entirely
//!   (for a PUT, an attribute removed in LDAP then disappears from the body, which clears it).
//! * The body carries `schemas` and `externalId` but never `id` (the caller adds it).
//! * Text values are taken as they are (no trimming); an empty value counts as absent; a
//!   value that is not UTF-8 in a text attribute is a [`MapError::BadValue`], never dropped
//!   silently.
//!
//! Group members: [`map_entry_split`] keeps them out of the JSON body, as a [`MemberIds`]
//! (one string arena, sorted and unique: about the ids' own bytes plus one offset per
//! member, no map or allocation per member), so that a group of a million members costs
//! its ids and nothing more; the engine hashes body and ids together without serializing
//! them ([`crate::sync::anchors::representation_hash_with`]) and sends the members as
//! PATCH chunks. [`map_entry`] gives the whole representation (`members` inside the body),
//! for callers that show or serve it (facade, preview, golden files); both hash the same.
//!
//! Limits: text targets take the first value of a multi-valued attribute; the `member`
//! values are expected complete (ranged retrieval merged by the LDAP layer). A full pass
//! that reads members apart from the entry ([`crate::sync::member_read`]) resolves them with
//! [`resolve_member`], the same rule, into a [`MemberIds`] that spills to a scratch file.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::{Map, Value};

use crate::base64;
use crate::ldap::Entry;
use crate::scim::profile::{is_required, AnchorEncoding, Source, SyncProfile, Target, TextPath};
use crate::scim::resource::{ResourceKind, ENTERPRISE_SCHEMA, GROUP_SCHEMA, USER_SCHEMA};

/// What a DN reference resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// In scope and provisioned under this SCIM id (a user, or a resolver that does not
    /// tell kinds).
    Id(String),
    /// In scope and provisioned under this SCIM id, and a group: a nested member, which
    /// some endpoints misread as a user id ([`Mapped::nested`]).
    Group(String),
    /// In scope but not provisioned yet: left out now, listed in [`Mapped::pending`].
    Pending,
    /// Not in the sync scope (or not found): left out.
    OutOfScope,
}

impl Reference {
    /// A provisioned object of `kind` under `id`.
    pub fn provisioned(kind: ResourceKind, id: String) -> Reference {
        match kind {
            ResourceKind::Group => Reference::Group(id),
            ResourceKind::User => Reference::Id(id),
        }
    }
}

/// Resolves DNs found in `manager` / `member` values. Implementations normalise DNs as
/// they see fit (the mapping passes the value as the directory returned it).
pub trait Resolver {
    /// What `dn` refers to.
    fn resolve(&self, dn: &str) -> Reference;
}

impl<F: Fn(&str) -> Reference> Resolver for F {
    fn resolve(&self, dn: &str) -> Reference {
        self(dn)
    }
}

/// The result of mapping one entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    /// User or group.
    pub kind: ResourceKind,
    /// The anchor, also present in `resource` as `externalId`.
    pub external_id: String,
    /// The SCIM body without `id`, with `schemas`. Holds `members` only when made by
    /// [`map_entry`]; [`map_entry_split`] leaves them out (see [`Mapped::members`]).
    pub resource: Value,
    /// The group's member ids when they are not in `resource` ([`map_entry_split`]);
    /// empty after [`map_entry`] and for users.
    pub members: MemberIds,
    /// DNs that resolved to [`Reference::Pending`], sorted: map again once they exist.
    pub pending: Vec<String>,
    /// The member ids (also in `members`) that are groups, sorted: an endpoint may read
    /// them as user ids, so what it holds afterwards is checked.
    pub nested: Vec<String>,
}

/// Why an entry could not be mapped. Every variant names the entry's DN.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MapError {
    /// None of the anchor attributes has a value (e.g. not readable with the bind's rights,
    /// or an operational attribute that was not requested).
    MissingAnchor {
        /// The entry.
        dn: String,
        /// The anchor candidates that were tried, in order.
        attributes: Vec<String>,
    },
    /// A required SCIM attribute (`userName`, group `displayName`) has no source value.
    MissingAttribute {
        /// The entry.
        dn: String,
        /// The SCIM attribute.
        target: String,
        /// The LDAP attributes that were tried, in order.
        attributes: Vec<String>,
    },
    /// An attribute value cannot be used (wrong length, not a number, not UTF-8, ...).
    BadValue {
        /// The entry.
        dn: String,
        /// The LDAP attribute.
        attribute: String,
        /// What is wrong with it.
        detail: String,
    },
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::MissingAnchor { dn, attributes } => write!(
                f,
                "{dn}: no anchor: none of {} has a value",
                attributes.join(", ")
            ),
            MapError::MissingAttribute {
                dn,
                target,
                attributes,
            } => write!(
                f,
                "{dn}: no value for the required SCIM attribute {target} (looked at {})",
                attributes.join(", ")
            ),
            MapError::BadValue {
                dn,
                attribute,
                detail,
            } => write!(f, "{dn}: attribute {attribute}: {detail}"),
        }
    }
}

impl std::error::Error for MapError {}

/// The LDAP filter that finds the object anchored at `id` (None: `id` cannot be an anchor
/// of this profile, e.g. not base64 for a GUID anchor).
pub fn anchor_filter(profile: &SyncProfile, kind: ResourceKind, id: &str) -> Option<String> {
    let anchor = profile.resource(kind).anchor();
    let value = match anchor.encoding {
        AnchorEncoding::Text => crate::scim::filter::escape_value(id),
        AnchorEncoding::Guid | AnchorEncoding::Base64 => {
            let bytes = base64::decode(id).ok()?;
            if anchor.encoding == AnchorEncoding::Guid && bytes.len() != 16 {
                return None;
            }
            crate::scim::filter::escape_octets(&bytes)
        }
    };
    if anchor.attributes.is_empty() {
        return None;
    }
    let terms: String = anchor
        .attributes
        .iter()
        .map(|a| format!("({a}={value})"))
        .collect();
    Some(if anchor.attributes.len() == 1 {
        terms
    } else {
        format!("(|{terms})")
    })
}

/// The anchor (`externalId`) of `entry` as a `kind`, alone.
pub fn anchor_of(
    entry: &Entry,
    kind: ResourceKind,
    profile: &SyncProfile,
) -> Result<String, MapError> {
    let anchor = profile.resource(kind).anchor();
    let Some((attribute, value)) = anchor.attributes.iter().find_map(|a| {
        entry
            .bytes(a)
            .iter()
            .find(|v| !v.is_empty())
            .map(|v| (a, v.as_slice()))
    }) else {
        return Err(MapError::MissingAnchor {
            dn: entry.dn.clone(),
            attributes: anchor.attributes.clone(),
        });
    };
    let bad = |detail: String| MapError::BadValue {
        dn: entry.dn.clone(),
        attribute: attribute.clone(),
        detail,
    };
    match anchor.encoding {
        AnchorEncoding::Guid if value.len() == 16 => Ok(base64::encode(value)),
        AnchorEncoding::Guid => Err(bad(format!(
            "a GUID anchor must be 16 bytes, found {}",
            value.len()
        ))),
        AnchorEncoding::Base64 => Ok(base64::encode(value)),
        AnchorEncoding::Text => std::str::from_utf8(value)
            .map(str::to_string)
            .map_err(|_| bad("a text anchor must be UTF-8".to_string())),
    }
}

/// Maps `entry` as a `kind` under `profile`, resolving DN references with `resolver`: the
/// whole representation, `members` inside [`Mapped::resource`].
pub fn map_entry(
    entry: &Entry,
    kind: ResourceKind,
    profile: &SyncProfile,
    resolver: &dyn Resolver,
) -> Result<Mapped, MapError> {
    let mut mapped = map_entry_split(entry, kind, profile, resolver)?;
    if !mapped.members.is_empty() {
        let members = std::mem::take(&mut mapped.members);
        if let Value::Object(m) = &mut mapped.resource {
            m.insert("members".to_string(), members.to_json());
        }
    }
    Ok(mapped)
}

/// Like [`map_entry`], but a group's members stay out of the body, in [`Mapped::members`]
/// (compact; see the module documentation).
pub fn map_entry_split(
    entry: &Entry,
    kind: ResourceKind,
    profile: &SyncProfile,
    resolver: &dyn Resolver,
) -> Result<Mapped, MapError> {
    let external_id = anchor_of(entry, kind, profile)?;
    let mut body = Body::default();
    let mut pending = BTreeSet::new();
    let mut nested = BTreeSet::new();
    let mut members = MemberIdsBuilder::default();
    for m in profile.resource(kind).mappings() {
        match (m.target, &m.source) {
            // A one-part entry of a multi-valued attribute (`emails[type eq "work"].value`):
            // every value becomes an entry, never only the first.
            (
                Target::Text(TextPath::Typed {
                    attribute,
                    type_value,
                    sub: "value",
                }),
                Source::Attributes(names),
            ) => {
                for text in all_texts(entry, names)? {
                    body.push_typed(attribute, type_value, text);
                }
            }
            (Target::Text(path), Source::Attributes(names)) => {
                if let Some(text) = first_text(entry, names)? {
                    body.set_text(path, text);
                } else if is_required(kind, Target::Text(path)) {
                    return Err(MapError::MissingAttribute {
                        dn: entry.dn.clone(),
                        target: path.to_string(),
                        attributes: names.clone(),
                    });
                }
            }
            (Target::Active, source) => {
                if let Some(active) = active(entry, source)? {
                    body.core.insert("active".to_string(), Value::Bool(active));
                }
            }
            (Target::Manager, Source::Attributes(names)) => {
                if let Some(dn) = first_text(entry, names)? {
                    match resolver.resolve(&dn) {
                        Reference::Id(id) | Reference::Group(id) if !id.is_empty() => {
                            body.enterprise.insert("manager".to_string(), reference(id));
                        }
                        Reference::Pending => {
                            pending.insert(dn);
                        }
                        _ => {}
                    }
                }
            }
            (Target::Members, Source::Attributes(names)) => {
                for name in names {
                    let unique = name.eq_ignore_ascii_case("uniqueMember");
                    for value in entry.bytes(name) {
                        let text = utf8(entry, name, value)?;
                        let dn = if unique { strip_uid(text) } else { text };
                        if dn.is_empty() {
                            continue;
                        }
                        resolve_member(resolver, dn, &mut members, &mut nested, &mut pending);
                    }
                }
            }
            // Combinations the profile never builds (it pairs special targets with
            // their own sources); ignoring them keeps mapping total.
            _ => {}
        }
    }
    Ok(Mapped {
        kind,
        resource: body.finish(kind, &external_id, profile.resource(kind).single_valued()),
        members: members.finish(),
        external_id,
        pending: pending.into_iter().collect(),
        nested: nested.into_iter().collect(),
    })
}

/// Resolves one member DN into `members` (a provisioned object's id; a group's also into
/// `nested`) or `pending` (in scope, not provisioned yet); anything else is left out.
pub fn resolve_member(
    resolver: &dyn Resolver,
    dn: &str,
    members: &mut MemberIdsBuilder,
    nested: &mut BTreeSet<String>,
    pending: &mut BTreeSet<String>,
) {
    match resolver.resolve(dn) {
        Reference::Id(id) if !id.is_empty() => members.push(&id),
        Reference::Group(id) if !id.is_empty() => {
            members.push(&id);
            nested.insert(id);
        }
        Reference::Pending => {
            pending.insert(dn.to_string());
        }
        _ => {}
    }
}

fn reference(id: String) -> Value {
    let mut m = Map::new();
    m.insert("value".to_string(), Value::String(id));
    Value::Object(m)
}

/// The SCIM ids of a group's members, sorted by bytes and unique, in one string arena:
/// the ids' bytes plus one offset per member, no allocation per id. Serializes (serde) as
/// the SCIM `members` value, `[{"value": id}, ...]`.
///
/// A list built by a spilling builder ([`MemberIdsBuilder::spilling`]) that outgrew its
/// memory budget lives in a sorted scratch file instead ([`crate::sorted_file`]): it is
/// read in order each time it is walked, and its ids come out owned. A read of that file
/// that fails ends the walk early and is remembered: [`MemberIds::read_failed`] says so, and
/// a caller that acts on a walk checks it before it trusts what it saw.
#[derive(Clone, Default)]
pub struct MemberIds {
    /// The ids, back to back.
    text: String,
    /// Where each id ends in `text`.
    ends: Vec<usize>,
    /// The ids on disk (then `text` and `ends` are empty).
    disk: Option<std::sync::Arc<crate::sorted_file::SortedFile>>,
}

impl PartialEq for MemberIds {
    fn eq(&self, other: &MemberIds) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for MemberIds {}

impl MemberIds {
    /// How many ids.
    pub fn len(&self) -> usize {
        match &self.disk {
            Some(f) => f.len() as usize,
            None => self.ends.len(),
        }
    }

    /// No ids.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the ids are kept in a scratch file rather than in memory.
    pub fn on_disk(&self) -> bool {
        self.disk.is_some()
    }

    /// Whether a walk over ids kept on disk failed to read them (it ended early): what
    /// it saw is not the whole list. Never true for ids in memory.
    pub fn read_failed(&self) -> bool {
        self.disk.as_ref().is_some_and(|f| f.failed())
    }

    /// The `i`-th id (ascending), if there is one in memory.
    fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&self.text[start..end])
    }

    /// The ids, ascending.
    pub fn iter(&self) -> MemberIdsIter<'_> {
        self.slice(0..self.len())
    }

    /// The ids at positions `range` (clamped to the list), ascending.
    pub fn slice(&self, range: std::ops::Range<usize>) -> MemberIdsIter<'_> {
        let end = range.end.min(self.len());
        let next = range.start.min(end);
        MemberIdsIter {
            ids: self,
            disk: self.disk.as_ref().map(|f| f.reader(next as u64)),
            next,
            end,
        }
    }

    /// The ids as the SCIM `members` value: `[{"value": id}, ...]`.
    pub fn to_json(&self) -> Value {
        Value::Array(self.iter().map(|id| reference(id.into_owned())).collect())
    }

    /// Bytes held in memory (ids and offsets), for benchmarks and logs.
    pub fn heap_bytes(&self) -> usize {
        self.text.capacity() + self.ends.capacity() * std::mem::size_of::<usize>()
    }

    /// Appends `id`, which must sort after every id already held (the caller checks).
    fn push_sorted(&mut self, id: &str) {
        self.text.push_str(id);
        self.ends.push(self.text.len());
    }
}

impl fmt::Debug for MemberIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<S: AsRef<str>> FromIterator<S> for MemberIds {
    /// Sorts and de-duplicates any ids.
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> MemberIds {
        let mut b = MemberIdsBuilder::default();
        for id in iter {
            b.push(id.as_ref());
        }
        b.finish()
    }
}

impl serde::Serialize for MemberIds {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        struct One<'a>(&'a str);
        impl serde::Serialize for One<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut m = serializer.serialize_map(Some(1))?;
                m.serialize_entry("value", self.0)?;
                m.end()
            }
        }
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        for id in self.iter() {
            seq.serialize_element(&One(&id))?;
        }
        if self.read_failed() {
            return Err(serde::ser::Error::custom(
                "member ids could not be read back",
            ));
        }
        seq.end()
    }
}

/// Iterator over (a range of) a [`MemberIds`]: borrowed ids from memory, owned ones from
/// disk. A failed read of the disk ends it early (see [`MemberIds::read_failed`]).
pub struct MemberIdsIter<'a> {
    ids: &'a MemberIds,
    disk: Option<crate::sorted_file::Reader<'a>>,
    next: usize,
    end: usize,
}

impl<'a> Iterator for MemberIdsIter<'a> {
    type Item = std::borrow::Cow<'a, str>;

    fn next(&mut self) -> Option<std::borrow::Cow<'a, str>> {
        if self.next >= self.end {
            return None;
        }
        self.next += 1;
        match self.disk.as_mut() {
            None => self.ids.get(self.next - 1).map(std::borrow::Cow::Borrowed),
            Some(r) => match r.next() {
                Some(Ok(id)) => Some(std::borrow::Cow::Owned(id)),
                _ => {
                    if let Some(f) = &self.ids.disk {
                        f.note_failure();
                    }
                    self.next = self.end;
                    None
                }
            },
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.end - self.next;
        (0, Some(n))
    }
}

/// Collects ids in any order into a [`MemberIds`] (sorted and de-duplicated by
/// [`MemberIdsBuilder::finish`]); ids already in order cost no sort. A spilling builder
/// ([`MemberIdsBuilder::spilling`]) holds at most its budget of ids in memory and writes
/// each full buffer, sorted, to a scratch file; [`MemberIdsBuilder::try_finish`] merges them.
#[derive(Debug, Default)]
pub struct MemberIdsBuilder {
    ids: MemberIds,
    sorted: bool,
    spill: Option<(crate::sorted_file::Runs, usize)>,
    error: Option<std::io::Error>,
}

impl MemberIdsBuilder {
    /// A builder that keeps at most `budget` bytes of ids in memory; the rest goes to
    /// scratch files in `dir`.
    pub fn spilling(dir: &std::path::Path, budget: usize) -> MemberIdsBuilder {
        MemberIdsBuilder {
            spill: Some((crate::sorted_file::Runs::new(dir), budget.max(1))),
            ..MemberIdsBuilder::default()
        }
    }

    /// Adds one id.
    pub fn push(&mut self, id: &str) {
        let n = self.ids.len();
        self.sorted = match n {
            0 => true,
            _ => self.sorted && self.ids.get(n - 1).is_some_and(|last| last < id),
        };
        self.ids.push_sorted(id);
        if let Some((_, budget)) = &self.spill {
            if self.ids.text.len() >= *budget {
                self.write_run();
            }
        }
    }

    /// Sorts what is in memory and writes it as a run.
    fn write_run(&mut self) {
        let spill = self.spill.take();
        let held = std::mem::take(self).finish();
        self.spill = spill;
        if let (Some((runs, _)), None) = (self.spill.as_mut(), &self.error) {
            if let Err(e) = runs.write_run((0..held.ends.len()).filter_map(|i| held.get(i))) {
                self.error = Some(e);
            }
        }
    }

    /// The ids, sorted and unique; for a spilling builder that wrote runs, merged into one
    /// scratch file. Errors: a scratch file could not be written or read.
    pub fn try_finish(mut self) -> std::io::Result<MemberIds> {
        let written = self.spill.as_ref().is_some_and(|(r, _)| !r.is_empty());
        if !written {
            return match self.error.take() {
                Some(e) => Err(e),
                None => Ok(self.finish()),
            };
        }
        if !self.ids.is_empty() {
            self.write_run();
        }
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let Some((runs, _)) = self.spill.take() else {
            return Ok(self.finish());
        };
        let file = runs.merge()?;
        Ok(MemberIds {
            disk: Some(std::sync::Arc::new(file)),
            ..MemberIds::default()
        })
    }

    /// The ids, sorted by bytes and unique. Needs the ids' bytes once more while sorting.
    /// (A spilling builder finishes with [`MemberIdsBuilder::try_finish`].)
    pub fn finish(self) -> MemberIds {
        let ids = self.ids;
        if self.sorted {
            return ids;
        }
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_unstable_by(|&a, &b| ids.get(a).cmp(&ids.get(b)));
        let mut out = MemberIds {
            text: String::with_capacity(ids.text.len()),
            ends: Vec::with_capacity(ids.len()),
            disk: None,
        };
        let mut last: Option<&str> = None;
        for i in order {
            let id = ids.get(i).unwrap_or_default();
            if last != Some(id) {
                out.push_sorted(id);
                last = Some(id);
            }
        }
        out.text.shrink_to_fit();
        out.ends.shrink_to_fit();
        out
    }
}

fn utf8<'a>(entry: &Entry, attribute: &str, value: &'a [u8]) -> Result<&'a str, MapError> {
    std::str::from_utf8(value).map_err(|e| MapError::BadValue {
        dn: entry.dn.clone(),
        attribute: attribute.to_string(),
        detail: format!(
            "value is not UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        ),
    })
}

/// The first non-empty value of the first attribute in `names` that has one.
pub(crate) fn first_text(entry: &Entry, names: &[String]) -> Result<Option<String>, MapError> {
    for name in names {
        if let Some(v) = entry.bytes(name).iter().find(|v| !v.is_empty()) {
            return utf8(entry, name, v).map(|s| Some(s.to_string()));
        }
    }
    Ok(None)
}

/// Every non-empty value of the first attribute in `names` that has one, in the
/// directory's order, each once.
fn all_texts(entry: &Entry, names: &[String]) -> Result<Vec<String>, MapError> {
    for name in names {
        let values = entry.bytes(name);
        if values.iter().all(|v| v.is_empty()) {
            continue;
        }
        let mut out: Vec<String> = Vec::with_capacity(values.len());
        for v in values.iter().filter(|v| !v.is_empty()) {
            let text = utf8(entry, name, v)?;
            if !out.iter().any(|o| o == text) {
                out.push(text.to_string());
            }
        }
        return Ok(out);
    }
    Ok(Vec::new())
}

/// Drops the optional `#'0101'B` unique identifier of a `uniqueMember` value
/// (nameAndOptionalUID syntax, RFC 4517 §3.3.21).
fn strip_uid(value: &str) -> &str {
    if let Some(hash) = value.rfind("#'") {
        let uid = &value[hash + 2..];
        if let Some(bits) = uid.strip_suffix("'B") {
            if bits.bytes().all(|b| b == b'0' || b == b'1') {
                return &value[..hash];
            }
        }
    }
    value
}

/// Shows a short flag value in an error (flags are not secrets; long values are cut).
fn shown(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(s) if s.len() <= 32 => format!("\"{}\"", s.escape_debug()),
        _ => format!("a {}-byte value", value.len()),
    }
}

fn active(entry: &Entry, source: &Source) -> Result<Option<bool>, MapError> {
    let bad = |attribute: &str, detail: String| MapError::BadValue {
        dn: entry.dn.clone(),
        attribute: attribute.to_string(),
        detail,
    };
    match source {
        Source::Constant(b) => Ok(Some(*b)),
        Source::AccountControl(attribute) => {
            let Some(value) = entry.first_bytes(attribute) else {
                return Ok(None);
            };
            // AD writes the flag word as a signed 32-bit integer.
            let flags = std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .filter(|n| (i64::from(i32::MIN)..=i64::from(u32::MAX)).contains(n))
                .ok_or_else(|| {
                    bad(
                        attribute,
                        format!("{} is not a 32-bit integer", shown(value)),
                    )
                })?;
            Ok(Some(flags & 0x2 == 0))
        }
        Source::Boolean { attribute, negate } => {
            let Some(value) = entry.first_bytes(attribute) else {
                return Ok(None);
            };
            let b = if value.eq_ignore_ascii_case(b"TRUE") {
                true
            } else if value.eq_ignore_ascii_case(b"FALSE") {
                false
            } else {
                return Err(bad(
                    attribute,
                    format!("{} is not an LDAP Boolean (TRUE or FALSE)", shown(value)),
                ));
            };
            Ok(Some(b != *negate))
        }
        Source::Attributes(_) => Ok(None),
    }
}

/// The body under construction; containers are added only when they hold something.
#[derive(Default)]
struct Body {
    core: Map<String, Value>,
    name: Map<String, Value>,
    /// (attribute, type, sub-attributes) in first-mapped order.
    typed: Vec<(&'static str, &'static str, Map<String, Value>)>,
    enterprise: Map<String, Value>,
}

impl Body {
    fn set_text(&mut self, path: TextPath, text: String) {
        let v = Value::String(text);
        match path {
            TextPath::Core(a) => {
                self.core.insert(a.to_string(), v);
            }
            TextPath::Name(s) => {
                self.name.insert(s.to_string(), v);
            }
            TextPath::Enterprise(a) => {
                self.enterprise.insert(a.to_string(), v);
            }
            TextPath::Typed {
                attribute,
                type_value,
                sub,
            } => {
                let i = match self
                    .typed
                    .iter()
                    .position(|(a, t, _)| *a == attribute && *t == type_value)
                {
                    Some(i) => i,
                    None => {
                        self.typed.push((attribute, type_value, Map::new()));
                        self.typed.len() - 1
                    }
                };
                self.typed[i].2.insert(sub.to_string(), v);
            }
        }
    }

    /// One more entry `{value, type}` of a multi-valued attribute (one per LDAP value).
    fn push_typed(&mut self, attribute: &'static str, type_value: &'static str, text: String) {
        let mut entry = Map::new();
        entry.insert("value".to_string(), Value::String(text));
        self.typed.push((attribute, type_value, entry));
    }

    /// The body as JSON; an attribute in `single` keeps only its first entry.
    fn finish(mut self, kind: ResourceKind, external_id: &str, single: &[&str]) -> Value {
        let mut schemas = vec![Value::String(
            match kind {
                ResourceKind::User => USER_SCHEMA,
                ResourceKind::Group => GROUP_SCHEMA,
            }
            .to_string(),
        )];
        let mut out = std::mem::take(&mut self.core);
        out.insert(
            "externalId".to_string(),
            Value::String(external_id.to_string()),
        );
        if !self.name.is_empty() {
            out.insert("name".to_string(), Value::Object(self.name));
        }
        // Group the typed entries per attribute, keeping first-mapped order.
        let mut arrays: Vec<(&'static str, Vec<Value>)> = Vec::new();
        for (attribute, type_value, mut entry) in self.typed {
            entry.insert("type".to_string(), Value::String(type_value.to_string()));
            let i = match arrays.iter().position(|(a, _)| *a == attribute) {
                Some(i) => i,
                None => {
                    arrays.push((attribute, Vec::new()));
                    arrays.len() - 1
                }
            };
            if !arrays[i].1.is_empty() && single.contains(&attribute) {
                continue;
            }
            // The first e-mail mapped is the primary one.
            if attribute == "emails" && arrays[i].1.is_empty() {
                entry.insert("primary".to_string(), Value::Bool(true));
            }
            arrays[i].1.push(Value::Object(entry));
        }
        for (attribute, values) in arrays {
            out.insert(attribute.to_string(), Value::Array(values));
        }
        if !self.enterprise.is_empty() {
            schemas.push(Value::String(ENTERPRISE_SCHEMA.to_string()));
            out.insert(
                ENTERPRISE_SCHEMA.to_string(),
                Value::Object(self.enterprise),
            );
        }
        out.insert("schemas".to_string(), Value::Array(schemas));
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::profile::ProfileKind;
    use proptest::prelude::*;
    use serde_json::json;

    const GUID: [u8; 16] = [
        0xe3, 0x26, 0x85, 0xd6, 0x63, 0x9f, 0xa9, 0x43, 0x8e, 0x2e, 0x49, 0xeb, 0xec, 0xc8, 0xef,
        0x0c,
    ];

    fn ad() -> SyncProfile {
        SyncProfile::default_for(ProfileKind::ActiveDirectory)
    }

    fn none(_: &str) -> Reference {
        Reference::OutOfScope
    }

    fn ad_user() -> Entry {
        Entry::new("CN=Ann Lee,OU=Staff,DC=branch,DC=test")
            .with("objectClass", "user")
            .with("objectGUID", GUID.to_vec())
            .with("sAMAccountName", "ann")
            .with("userAccountControl", "512")
    }

    #[test]
    fn guid_anchor_is_entra_immutable_id() {
        assert_eq!(
            anchor_of(&ad_user(), ResourceKind::User, &ad()).unwrap(),
            "4yaF1mOfqUOOLknr7MjvDA=="
        );
        let consistency = ad_user().with("mS-DS-ConsistencyGuid", vec![0u8; 16]);
        assert_eq!(
            anchor_of(&consistency, ResourceKind::User, &ad()).unwrap(),
            "AAAAAAAAAAAAAAAAAAAAAA=="
        );
    }

    #[test]
    fn bad_guid_is_an_error_not_a_fallback() {
        // A malformed consistency GUID must not silently fall back to objectGUID: that
        // would change the anchor and duplicate the user.
        let e = ad_user().with("mS-DS-ConsistencyGuid", vec![1u8; 15]);
        let err = anchor_of(&e, ResourceKind::User, &ad()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "CN=Ann Lee,OU=Staff,DC=branch,DC=test: attribute mS-DS-ConsistencyGuid: a GUID anchor must be 16 bytes, found 15"
        );
        let mut e = ad_user();
        e.take("objectGUID");
        assert!(matches!(
            anchor_of(&e, ResourceKind::User, &ad()),
            Err(MapError::MissingAnchor { .. })
        ));
    }

    #[test]
    fn minimal_user_falls_back_to_sam_account_name() {
        let m = map_entry(&ad_user(), ResourceKind::User, &ad(), &none).unwrap();
        assert_eq!(
            m.resource,
            json!({
                "schemas": [USER_SCHEMA],
                "externalId": "4yaF1mOfqUOOLknr7MjvDA==",
                "userName": "ann",
                "active": true,
            })
        );
        assert!(m.pending.is_empty());
    }

    #[test]
    fn user_account_control_disable_bit() {
        for (uac, active) in [
            ("512", true),
            ("514", false),
            ("546", false),
            ("66048", true),
            ("-2147483646", false),
        ] {
            let mut e = ad_user();
            e.take("userAccountControl");
            let e = e.with("userAccountControl", uac);
            let m = map_entry(&e, ResourceKind::User, &ad(), &none).unwrap();
            assert_eq!(m.resource["active"], json!(active), "uac {uac}");
        }
        let mut e = ad_user();
        e.take("userAccountControl");
        let m = map_entry(&e, ResourceKind::User, &ad(), &none).unwrap();
        assert!(m.resource.get("active").is_none(), "absent flag: left out");
        let e = e.with("userAccountControl", "lots");
        let err = map_entry(&e, ResourceKind::User, &ad(), &none).unwrap_err();
        assert!(
            err.to_string().contains("\"lots\" is not a 32-bit integer"),
            "{err}"
        );
    }

    #[test]
    fn missing_user_name_is_named() {
        let mut e = ad_user();
        e.take("sAMAccountName");
        let err = map_entry(&e, ResourceKind::User, &ad(), &none).unwrap_err();
        assert_eq!(
            err,
            MapError::MissingAttribute {
                dn: e.dn.clone(),
                target: "userName".into(),
                attributes: vec!["userPrincipalName".into(), "sAMAccountName".into()],
            }
        );
    }

    #[test]
    fn non_utf8_text_is_an_error() {
        let e = ad_user().with("title", vec![0xff, 0xfe]);
        let err = map_entry(&e, ResourceKind::User, &ad(), &none).unwrap_err();
        assert!(matches!(&err, MapError::BadValue { attribute, .. } if attribute == "title"));
    }

    #[test]
    fn manager_resolution() {
        let e = ad_user().with("manager", "CN=Boss,DC=branch,DC=test");
        let id = |_: &str| Reference::Id("42".into());
        let m = map_entry(&e, ResourceKind::User, &ad(), &id).unwrap();
        assert_eq!(
            m.resource[ENTERPRISE_SCHEMA],
            json!({"manager": {"value": "42"}})
        );
        assert_eq!(
            m.resource["schemas"],
            json!([USER_SCHEMA, ENTERPRISE_SCHEMA])
        );
        let pend = |_: &str| Reference::Pending;
        let m = map_entry(&e, ResourceKind::User, &ad(), &pend).unwrap();
        assert!(m.resource.get(ENTERPRISE_SCHEMA).is_none());
        assert_eq!(m.resource["schemas"], json!([USER_SCHEMA]));
        assert_eq!(m.pending, ["CN=Boss,DC=branch,DC=test"]);
    }

    #[test]
    fn members_sorted_deduplicated_and_unique_member_uid_stripped() {
        let p = SyncProfile::default_for(ProfileKind::OpenLdap);
        let g = Entry::new("cn=g,dc=x")
            .with("objectClass", "groupOfUniqueNames")
            .with("entryUUID", "6a0c1d1e-0000-0000-0000-000000000001")
            .with("cn", "g")
            .with("uniqueMember", "uid=b,dc=x#'0101'B")
            .with("uniqueMember", "uid=a,dc=x")
            .with("uniqueMember", "uid=p,dc=x")
            .with("uniqueMember", "")
            .with("member", "uid=b,dc=x");
        let r = |dn: &str| match dn {
            "uid=a,dc=x" => Reference::Id("id-a".into()),
            "uid=b,dc=x" => Reference::Id("id-b".into()),
            "uid=p,dc=x" => Reference::Pending,
            _ => Reference::OutOfScope,
        };
        let m = map_entry(&g, ResourceKind::Group, &p, &r).unwrap();
        assert_eq!(
            m.resource,
            json!({
                "schemas": [GROUP_SCHEMA],
                "externalId": "6a0c1d1e-0000-0000-0000-000000000001",
                "displayName": "g",
                "members": [{"value": "id-a"}, {"value": "id-b"}],
            })
        );
        assert_eq!(m.pending, ["uid=p,dc=x"]);
        assert_eq!(strip_uid("cn=a#'01'B,dc=x"), "cn=a#'01'B,dc=x");
        assert_eq!(strip_uid("cn=a,dc=x#'2'B"), "cn=a,dc=x#'2'B");
        assert_eq!(strip_uid("cn=a,dc=x#''B"), "cn=a,dc=x");
    }

    #[test]
    fn split_mapping_keeps_members_apart_and_joins_to_the_whole() {
        let p = SyncProfile::default_for(ProfileKind::OpenLdap);
        let g = Entry::new("cn=g,dc=x")
            .with("objectClass", "groupOfNames")
            .with("entryUUID", "6a0c1d1e-0000-0000-0000-000000000002")
            .with("cn", "g")
            .with("member", "uid=c,dc=x")
            .with("member", "uid=a,dc=x")
            .with("member", "uid=c,dc=x");
        let r = |dn: &str| Reference::Id(format!("id-{}", &dn[4..5]));
        let split = map_entry_split(&g, ResourceKind::Group, &p, &r).unwrap();
        assert!(split.resource.get("members").is_none());
        assert_eq!(split.members.iter().collect::<Vec<_>>(), ["id-a", "id-c"]);
        let whole = map_entry(&g, ResourceKind::Group, &p, &r).unwrap();
        assert!(whole.members.is_empty());
        let mut joined = split.resource.clone();
        joined["members"] = serde_json::to_value(&split.members).unwrap();
        assert_eq!(joined, whole.resource);
        assert_eq!(joined["members"], split.members.to_json());
    }

    #[test]
    fn member_ids_sort_dedup_and_slice() {
        let ids: MemberIds = ["b", "", "a", "b", "ö", "a"].into_iter().collect();
        assert_eq!(ids.iter().collect::<Vec<_>>(), ["", "a", "b", "ö"]);
        assert_eq!(ids.len(), 4);
        assert_eq!(ids.get(3), Some("ö"));
        assert_eq!(ids.get(4), None);
        assert_eq!(ids.slice(1..3).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(ids.slice(3..9).count(), 1);
        let sorted: MemberIds = ["a", "b"].into_iter().collect();
        assert_eq!(format!("{sorted:?}"), r#"["a", "b"]"#);
        assert!(MemberIds::default().is_empty());
    }

    #[test]
    fn typed_entries_group_by_type_and_first_email_is_primary() {
        let p = ad()
            .with_overrides(
                "[user.attributes]\n\"emails[type eq \\\"home\\\"].value\" = \"otherMailbox\"\n\"addresses[type eq \\\"work\\\"].locality\" = \"l\"\n\"addresses[type eq \\\"work\\\"].postalCode\" = \"postalCode\"\n",
            )
            .unwrap();
        let e = ad_user()
            .with("mail", "ann@branch.test")
            .with("otherMailbox", "ann@home.test")
            .with("l", "Lyon")
            .with("postalCode", "69001")
            .with("mobile", "+33 6");
        let m = map_entry(&e, ResourceKind::User, &p, &none).unwrap();
        assert_eq!(
            m.resource["emails"],
            json!([
                {"value": "ann@branch.test", "type": "work", "primary": true},
                {"value": "ann@home.test", "type": "home"},
            ])
        );
        assert_eq!(
            m.resource["addresses"],
            json!([{"type": "work", "locality": "Lyon", "postalCode": "69001"}])
        );
        assert_eq!(
            m.resource["phoneNumbers"],
            json!([{"type": "mobile", "value": "+33 6"}])
        );
        // Without the work address only the home e-mail: it becomes the primary.
        let mut e = e;
        e.take("mail");
        let m = map_entry(&e, ResourceKind::User, &p, &none).unwrap();
        assert_eq!(
            m.resource["emails"],
            json!([{"value": "ann@home.test", "type": "home", "primary": true}])
        );
    }

    /// Regression: a user with two `mail` values reached SCIM with only the first.
    #[test]
    fn every_value_of_a_multi_valued_attribute_is_mapped_with_one_primary() {
        let p = ad()
            .with_overrides(
                "[user.attributes]\n\"emails[type eq \\\"home\\\"].value\" = \"otherMailbox\"\n",
            )
            .unwrap();
        let e = ad_user()
            .with("mail", "ann@branch.test")
            .with("mail", "a.lee@branch.test")
            .with("mail", "ann@branch.test")
            .with("otherMailbox", "ann@home.test")
            .with("telephoneNumber", "+1 1")
            .with("telephoneNumber", "+1 2")
            .with("mobile", "+1 3");
        let m = map_entry(&e, ResourceKind::User, &p, &none).unwrap();
        assert_eq!(
            m.resource["emails"],
            json!([
                {"value": "ann@branch.test", "type": "work", "primary": true},
                {"value": "a.lee@branch.test", "type": "work"},
                {"value": "ann@home.test", "type": "home"},
            ])
        );
        assert_eq!(
            m.resource["phoneNumbers"],
            json!([
                {"value": "+1 1", "type": "work"},
                {"value": "+1 2", "type": "work"},
                {"value": "+1 3", "type": "mobile"},
            ])
        );
        let primaries = m.resource["emails"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["primary"] == true)
            .count();
        assert_eq!(primaries, 1);
    }

    /// A service that keeps one e-mail and one phone number (AWS IAM Identity Center):
    /// `single_valued` sends only the first entry of each, the e-mail still primary.
    #[test]
    fn single_valued_attributes_keep_only_their_first_entry() {
        let p = ad()
            .with_overrides(
                "[user]\nsingle_valued = [\"Emails\", \"phoneNumbers\", \"emails\"]\n\
                 [user.attributes]\n\"emails[type eq \\\"home\\\"].value\" = \"otherMailbox\"\n",
            )
            .unwrap();
        assert_eq!(
            p.resource(ResourceKind::User).single_valued(),
            ["emails", "phoneNumbers"]
        );
        let e = ad_user()
            .with("mail", "ann@branch.test")
            .with("mail", "a.lee@branch.test")
            .with("otherMailbox", "ann@home.test")
            .with("telephoneNumber", "+1 1")
            .with("mobile", "+1 3");
        let m = map_entry(&e, ResourceKind::User, &p, &none).unwrap();
        assert_eq!(
            m.resource["emails"],
            json!([{"value": "ann@branch.test", "type": "work", "primary": true}])
        );
        assert_eq!(
            m.resource["phoneNumbers"],
            json!([{"value": "+1 1", "type": "work"}])
        );
        // Without a work number the mobile one is the one sent.
        let e = ad_user().with("mobile", "+1 3").with("mobile", "+1 4");
        let m = map_entry(&e, ResourceKind::User, &p, &none).unwrap();
        assert_eq!(
            m.resource["phoneNumbers"],
            json!([{"value": "+1 3", "type": "mobile"}])
        );
    }

    #[test]
    fn boolean_active_sources() {
        let p = ad()
            .with_overrides("[user.attributes]\nactive = \"!nsAccountLock\"")
            .unwrap();
        let locked = ad_user().with("nsAccountLock", "TRUE");
        let m = map_entry(&locked, ResourceKind::User, &p, &none).unwrap();
        assert_eq!(m.resource["active"], json!(false));
        let m = map_entry(&ad_user(), ResourceKind::User, &p, &none).unwrap();
        assert!(m.resource.get("active").is_none());
        let odd = ad_user().with("nsAccountLock", "yes");
        assert!(map_entry(&odd, ResourceKind::User, &p, &none).is_err());
    }

    fn no_nulls(v: &Value) -> bool {
        match v {
            Value::Null => false,
            Value::Array(a) => !a.is_empty() && a.iter().all(no_nulls),
            Value::Object(o) => !o.is_empty() && o.values().all(no_nulls),
            _ => true,
        }
    }

    /// Attributes any default profile reads, plus a few it does not.
    const NAMES: &[&str] = &[
        "objectGUID",
        "mS-DS-ConsistencyGuid",
        "entryUUID",
        "nsUniqueId",
        "userPrincipalName",
        "sAMAccountName",
        "uid",
        "mail",
        "givenName",
        "sn",
        "cn",
        "displayName",
        "telephoneNumber",
        "mobile",
        "title",
        "userAccountControl",
        "employeeNumber",
        "employeeID",
        "department",
        "company",
        "manager",
        "member",
        "uniqueMember",
        "description",
    ];

    fn value() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..20),
            "-?[0-9]{1,12}".prop_map(String::into_bytes),
            ".{0,12}".prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 16..=16),
        ]
    }

    fn entry() -> impl Strategy<Value = Entry> {
        proptest::collection::vec(
            (0..NAMES.len(), proptest::collection::vec(value(), 1..3)),
            0..12,
        )
        .prop_map(|attrs| {
            let mut e = Entry::new("CN=random,DC=branch,DC=test");
            for (i, values) in attrs {
                for v in values {
                    e.add(NAMES[i], v);
                }
            }
            e
        })
    }

    fn resolve_by_length(dn: &str) -> Reference {
        match dn.len() % 3 {
            0 => Reference::Id(format!("id-{}", dn.len())),
            1 => Reference::Pending,
            _ => Reference::OutOfScope,
        }
    }

    proptest! {
        #[test]
        fn map_entry_is_total_and_deterministic(e in entry()) {
            for kind in [ProfileKind::ActiveDirectory, ProfileKind::OpenLdap, ProfileKind::Generic] {
                let p = SyncProfile::default_for(kind);
                for rk in [ResourceKind::User, ResourceKind::Group] {
                    let first = map_entry(&e, rk, &p, &resolve_by_length);
                    let again = map_entry(&e, rk, &p, &resolve_by_length);
                    prop_assert_eq!(&first, &again);
                    match first {
                        Ok(m) => {
                            prop_assert!(no_nulls(&m.resource));
                            prop_assert_eq!(
                                serde_json::to_string(&m.resource).unwrap(),
                                serde_json::to_string(&again.unwrap().resource).unwrap()
                            );
                            prop_assert_eq!(&m.resource["externalId"], &json!(m.external_id));
                            prop_assert!(m.resource.get("id").is_none());
                            if kind == ProfileKind::ActiveDirectory {
                                prop_assert_eq!(base64::decode(&m.external_id).unwrap().len(), 16);
                            }
                        }
                        Err(err) => prop_assert!(err.to_string().starts_with("CN=random,DC=branch,DC=test: ")),
                    }
                }
            }
        }

        #[test]
        fn wrong_length_guid_is_an_error(len in (0usize..40).prop_filter("not 16", |l| *l != 16)) {
            let e = ad_user();
            let mut e = e;
            e.take("objectGUID");
            let e = e.with("objectGUID", vec![7u8; len]);
            let r = map_entry(&e, ResourceKind::User, &ad(), &none);
            if len == 0 {
                let is_missing = matches!(r, Err(MapError::MissingAnchor { .. }));
                prop_assert!(is_missing);
            } else {
                let is_bad = matches!(r, Err(MapError::BadValue { .. }));
                prop_assert!(is_bad);
            }
        }
    }
}
