//! What an endpoint shows as a group member's `value`, learnt from a real group read
//! (RFC 7643 says the member's `id`; Canaille shows the member's `userName`).
//!
//! Read-only: one group that has members (`filter=members pr&count=1`, asked only where
//! `/ServiceProviderConfig` says the service filters; where it does not, refuses that or
//! finds none, the first page of `/Groups`), then at most three lookups of
//! the first member value found. (The whole first page of a flattened tree, 200 groups of
//! up to 10,000 members, cost 30 s and 97 MiB of the agent's memory in every full pass.) A `value` proven to be a userName makes member removals go by userName from the
//! start ([`ScimClient::note_member_key`]); an id is not taken as proof that removals by id
//! work, so the first one is still verified by reading the group
//! (`crate::sync::members`).

use std::fmt;

use serde_json::Value;

use crate::scim::client::{ScimClient, ScimError};
use crate::scim::resource::ResourceKind;

/// What one member value of one group turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberKeyProbe {
    /// No group at the endpoint lists a member yet.
    NoMembers,
    /// `value` is a user's or group's `id`.
    Id {
        /// The group read.
        group: String,
        /// The member value.
        value: String,
    },
    /// `value` is a user's `userName`; the user's id is another.
    UserName {
        /// The group read.
        group: String,
        /// The member value.
        value: String,
        /// The user's id.
        id: String,
    },
    /// `value` is neither an id nor a userName the endpoint shows.
    Unknown {
        /// The group read.
        group: String,
        /// The member value.
        value: String,
    },
}

impl fmt::Display for MemberKeyProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemberKeyProbe::NoMembers => write!(
                f,
                "no group at the endpoint lists members yet: what members[].value holds is learnt at the first removal, which is verified by reading the group"
            ),
            MemberKeyProbe::Id { group, value } => write!(
                f,
                "members[].value holds ids (group {group:?}: {value:?} is a member's id): removals go by id, the first verified by reading the group"
            ),
            MemberKeyProbe::UserName { group, value, id } => write!(
                f,
                "members[].value holds userNames, not ids (group {group:?}: {value:?} is the userName of user {id}): removals go by userName, each verified by reading the group"
            ),
            MemberKeyProbe::Unknown { group, value } => write!(
                f,
                "members[].value {value:?} of group {group:?} is neither an id nor a userName the endpoint shows: each removal is verified by reading the group, and one that stays shown fails the group"
            ),
        }
    }
}

/// The first group in `page` (a `/Groups` ListResponse) that lists a member with a
/// string `value`: its display name (else id) and that value.
pub fn first_member(page: &Value) -> Option<(String, String)> {
    page["Resources"].as_array()?.iter().find_map(|g| {
        let value = g["members"]
            .as_array()?
            .iter()
            .find_map(|m| m["value"].as_str())?;
        let name = g["displayName"].as_str().or(g["id"].as_str())?;
        Some((name.to_string(), value.to_string()))
    })
}

/// What a resource read by `value` says: `Some(true)` its id is `value`, `Some(false)` it
/// is a user whose userName (not id) is `value`, `None` neither.
fn read_as(resource: &Value, value: &str) -> Option<bool> {
    if resource["id"].as_str() == Some(value) {
        Some(true)
    } else if resource["userName"].as_str() == Some(value) {
        Some(false)
    } else {
        None
    }
}

impl ScimClient {
    /// Reads one page of groups and finds out what the first member value names; a
    /// userName is recorded ([`ScimClient::note_member_key`]).
    pub async fn probe_member_key(&self) -> Result<MemberKeyProbe, ScimError> {
        // One group that has members, where the service can say so: a first page of
        // groups each holding thousands of (flattened) members is 100 MB of JSON. Only
        // asked of a service whose /ServiceProviderConfig says it filters: Canaille,
        // which says it does not, answers any filter on /Groups with a 500.
        let filters = self.service_provider_config().await.is_ok_and(|c| c.filter);
        let one = if filters {
            self.page(
                ResourceKind::Group,
                "filter=members%20pr&startIndex=1&count=1",
            )
            .await
            .ok()
            .and_then(|p| first_member(&p))
        } else {
            None
        };
        let found = match one {
            Some(f) => Some(f),
            None => first_member(&self.first_page(ResourceKind::Group).await?),
        };
        let Some((group, value)) = found else {
            return Ok(MemberKeyProbe::NoMembers);
        };
        let mut found = None;
        for kind in [ResourceKind::User, ResourceKind::Group] {
            if let Some(r) = self.get(kind, &value).await? {
                found = read_as(&r, &value).map(|is_id| (is_id, r));
                if found.is_some() {
                    break;
                }
            }
        }
        if found.is_none() {
            found = self
                .find_by_user_name(&value)
                .await?
                .and_then(|u| read_as(&u, &value).map(|is_id| (is_id, u)));
        }
        Ok(match found {
            Some((true, _)) => MemberKeyProbe::Id { group, value },
            Some((false, user)) => {
                self.note_member_key(crate::scim::client::MemberKey::UserName);
                MemberKeyProbe::UserName {
                    group,
                    value,
                    id: user["id"].as_str().unwrap_or("?").to_string(),
                }
            }
            None => MemberKeyProbe::Unknown { group, value },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_first_listed_member_value_is_probed() {
        let page = json!({"Resources": [
            {"id": "g0", "displayName": "empty", "members": []},
            {"id": "g1", "members": [{"display": "x"}, {"value": "staff.owner"}]},
        ]});
        assert_eq!(
            first_member(&page),
            Some(("g1".into(), "staff.owner".into()))
        );
        assert_eq!(first_member(&json!({"Resources": []})), None);
        assert_eq!(first_member(&json!({})), None);
    }

    #[test]
    fn a_read_tells_an_id_from_a_user_name() {
        let canaille = json!({"id": "afb5", "userName": "staff.owner"});
        assert_eq!(read_as(&canaille, "staff.owner"), Some(false));
        assert_eq!(read_as(&canaille, "afb5"), Some(true));
        assert_eq!(read_as(&canaille, "other"), None);
        assert_eq!(read_as(&json!({"id": "g1"}), "g1"), Some(true));
    }
}
