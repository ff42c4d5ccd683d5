//! The agent's side of the relay: the long-poll link to the cloud (docs/protocol.md).
//!
//! Everything the cloud asks of the agent comes through here, and only through here:
//! * [`link`]: one long-poll outstanding to the hub, replies posted back, heartbeats and the
//!   active/standby lease.
//! * [`hub_credential`]: the agent's credential at the hub: a static token, or OAuth2
//!   client credentials refreshed before expiry and on a 401.
//! * [`protocol`]: the wire format, typed; the hub uses the same structs.
//! * [`answers`]: the answers kept by request id, in memory and on disk, so that a
//!   re-delivered request is never run twice.
//! * [`remote`]: the handler: commands (resync, provision one object, approve deletes) and
//!   the routing of SCIM envelopes.
//! * [`facade`]: SCIM reads answered from the directory, bounded by the local scope.
//! * [`writeback`]: what the cloud may write into the directory (policy, pure) and the LDAP
//!   plan it becomes.
//!
//! The HTTP transport under the link is [`crate::net`]; the relay owns no socket code.

pub mod answers;
pub mod facade;
pub mod hub_credential;
pub mod link;
pub mod protocol;
pub mod remote;
pub mod writeback;
