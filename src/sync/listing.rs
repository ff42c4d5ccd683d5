//! What the endpoint holds, read once per full pass instead of one lookup per object.
//!
//! Why: a first pass (or one after the state directory was lost, or against a new
//! endpoint) used to ask `GET /Users?filter=externalId eq "…"` before creating each object:
//! two round trips per object, and against a service that ignores `filter` a read of every
//! page per object. When many objects in scope are unknown to the anchor index, the pass
//! reads the endpoint's users and groups once, a page at a time, into a scratch map, and
//! the workers match locally.
//!
//! Rules:
//! * **Only what a resource shows proves anything.** A resource is listed under the
//!   externalId it shows; one without is not listed (it is nobody's proven match). Two
//!   resources showing the same externalId make that value *unknown* (the per-object lookup
//!   then reports the ambiguity).
//! * **Absent only when complete.** [`Listed::Absent`] is answered only for a listing that
//!   read every page of that kind (a walk that ends early, errs, or meets a service that
//!   ignores `startIndex` leaves the kind *unknown*): the worker then creates without a
//!   lookup. A create that still conflicts (a resource that holds the externalId without
//!   showing it) is handled as any 409.
//! * Not read when it would cost more than it saves: when the endpoint holds more resources
//!   per unknown object than a page carries, the pass looks objects up one by one.
//! * Memory stays flat: the map is a scratch file ([`DiskMap`]), unlinked at once.

use std::io;
use std::path::Path;
use std::sync::Mutex;

use serde_json::Value;

use crate::scim::client::{ScimClient, ScimError};
use crate::scim::ResourceKind;
use crate::sync::diskmap::DiskMap;

/// Resources asked for per page.
pub const PAGE: u32 = 1000;

/// What the listing says of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listed {
    /// The one resource that shows the object's externalId.
    Found(String),
    /// No resource of a completely read kind shows it: create it.
    Absent,
    /// The listing cannot tell: look it up.
    Unknown,
}

/// Why no listing was made.
#[derive(Debug)]
pub enum ListingError {
    /// The endpoint could not be read completely.
    Scim(ScimError),
    /// The scratch file failed.
    Io(io::Error),
    /// Reading it would cost more requests than looking the unknown objects up.
    NotWorth {
        /// Resources the endpoint holds (its first page's `totalResults`).
        held: u64,
    },
}

impl std::fmt::Display for ListingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListingError::Scim(e) => write!(f, "{e}"),
            ListingError::Io(e) => write!(f, "scratch file: {e}"),
            ListingError::NotWorth { held } => write!(
                f,
                "the endpoint holds {held} resources: looking the unknown objects up one by one costs fewer requests"
            ),
        }
    }
}

/// The endpoint's resources by the externalId they show.
pub struct Listing {
    map: Mutex<DiskMap>,
    /// Kinds read completely: users, groups.
    complete: [bool; 2],
}

impl std::fmt::Debug for Listing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listing")
            .field("complete", &self.complete)
            .finish_non_exhaustive()
    }
}

/// A resource's id with no externalId clash; an empty value marks a clash.
const CLASH: &[u8] = b"";

fn key(kind: ResourceKind, external_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(external_id.len() + 1);
    k.push(u8::from(kind == ResourceKind::Group));
    k.extend_from_slice(external_id.as_bytes());
    k
}

fn slot(kind: ResourceKind) -> usize {
    usize::from(kind == ResourceKind::Group)
}

impl Listing {
    /// Reads the endpoint's users and groups into a scratch file in `dir`, for `unknown`
    /// objects the index cannot place. Fails without a listing when a kind cannot be
    /// read at all; a kind read only in part stays unknown.
    pub async fn read(
        scim: &ScimClient,
        dir: &Path,
        unknown: u64,
    ) -> Result<Listing, ListingError> {
        let map = DiskMap::scratch(dir, "endpoint listing", 0).map_err(ListingError::Io)?;
        let mut listing = Listing {
            map: Mutex::new(map),
            complete: [false; 2],
        };
        for (kind, attributes) in [
            (ResourceKind::User, "externalId,userName"),
            (ResourceKind::Group, "externalId,displayName"),
        ] {
            let mut io_error = None;
            let mut too_big = None;
            let walked = scim
                .walk(kind, Some((PAGE, attributes)), |page| {
                    if let Some(held) = page["totalResults"].as_u64() {
                        let per_page = page["Resources"].as_array().map_or(0, Vec::len).max(1);
                        // Pages to read against lookups to make (first page only).
                        if kind == ResourceKind::User
                            && too_big.is_none()
                            && held / per_page as u64 > unknown
                        {
                            too_big = Some(held);
                            return Ok(false);
                        }
                        too_big.get_or_insert(0);
                    }
                    if let Err(e) = listing.add_page(kind, page) {
                        io_error = Some(e);
                        return Ok(false);
                    }
                    Ok(true)
                })
                .await;
            if let Some(e) = io_error {
                return Err(ListingError::Io(e));
            }
            if let Some(held) = too_big.filter(|&h| h > 0) {
                return Err(ListingError::NotWorth { held });
            }
            match walked {
                Ok(_) => listing.complete[slot(kind)] = true,
                Err(e) if kind == ResourceKind::User => return Err(ListingError::Scim(e)),
                Err(e) => log::info!("endpoint listing: groups not read completely ({e}); groups are looked up one by one"),
            }
        }
        Ok(listing)
    }

    /// Records the resources of one ListResponse page.
    fn add_page(&mut self, kind: ResourceKind, page: &Value) -> io::Result<()> {
        let map = self.map.get_mut().unwrap_or_else(|p| p.into_inner());
        for r in page["Resources"].as_array().into_iter().flatten() {
            let (Some(ext), Some(id)) = (
                r.get("externalId").and_then(Value::as_str),
                r.get("id").and_then(Value::as_str),
            ) else {
                continue;
            };
            if ext.is_empty() || id.is_empty() {
                continue;
            }
            let k = key(kind, ext);
            match map.get(&k)? {
                Some(v) if v.as_slice() != id.as_bytes() => map.insert(&k, CLASH)?,
                Some(_) => {}
                None => map.insert(&k, id.as_bytes())?,
            }
        }
        Ok(())
    }

    /// What the listing says of the object of `kind` anchored at `external_id`.
    pub fn lookup(&self, kind: ResourceKind, external_id: &str) -> Listed {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&key(kind, external_id)) {
            Ok(Some(v)) if v.as_slice() == CLASH => Listed::Unknown,
            Ok(Some(v)) => match String::from_utf8(v) {
                Ok(id) => Listed::Found(id),
                Err(_) => Listed::Unknown,
            },
            Ok(None) if self.complete[slot(kind)] => Listed::Absent,
            Ok(None) => Listed::Unknown,
            Err(e) => {
                log::debug!("endpoint listing: {e}; looking {external_id:?} up");
                Listed::Unknown
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn listing(complete: [bool; 2]) -> Listing {
        Listing {
            map: Mutex::new(DiskMap::scratch(&std::env::temp_dir(), "test listing", 0).unwrap()),
            complete,
        }
    }

    #[test]
    fn only_what_a_resource_shows_is_listed() {
        let mut l = listing([true, false]);
        l.add_page(
            ResourceKind::User,
            &json!({"Resources": [
                {"id": "1", "externalId": "a"},
                {"id": "2"},
                {"id": "3", "externalId": "c"},
                {"id": "4", "externalId": "c"},
                {"id": "5", "externalId": ""},
            ]}),
        )
        .unwrap();
        let u = ResourceKind::User;
        assert_eq!(l.lookup(u, "a"), Listed::Found("1".into()));
        assert_eq!(l.lookup(u, "c"), Listed::Unknown, "two resources show it");
        assert_eq!(
            l.lookup(u, "b"),
            Listed::Absent,
            "users were read completely"
        );
        // The same externalId under groups is another key; groups were not read through.
        assert_eq!(l.lookup(ResourceKind::Group, "a"), Listed::Unknown);
    }

    #[test]
    fn an_incomplete_kind_never_answers_absent() {
        let l = listing([false, false]);
        assert_eq!(l.lookup(ResourceKind::User, "x"), Listed::Unknown);
    }
}
