//! The queue's payload schema: what the change feed appends and the sender reads.
//!
//! A record's change is JSON ([`Change`]); a batch's watermark is JSON ([`Watermark`]) with
//! the feed's cookie inside, bound to the scope it was taken under so that a cookie from
//! another scope is never resumed from. The queue itself ([`crate::queue`]) stores opaque
//! bytes and knows none of this.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::queue::Queue;

/// One change as stored in the queue (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Change {
    /// Added, modified, renamed or moved: re-read by DN and bring in step.
    Upsert {
        /// The DN the feed reported.
        dn: String,
        /// entryUUID.
        uuid: String,
    },
    /// Deleted in the directory.
    Delete {
        /// The uuid the feed names it by: syncrepl's syncUUID in standard UUID text (the
        /// entryUUID on OpenLDAP, the nsUniqueId's bytes on 389-DS), objectGUID in base64
        /// on AD.
        uuid: String,
        /// The DN it had, when the feed knows it (syncrepl persist-phase deletes, AD
        /// tombstones): finds objects whose anchor is not a form of the uuid
        /// (mS-DS-ConsistencyGuid, an entryUUID anchor on 389-DS).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dn: Option<String>,
    },
}

/// The watermark stored with each batch: the cookie, and which scope it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    /// Format version.
    pub v: u8,
    /// Fingerprint of base and filters; a different scope needs a new full pass.
    pub scope: String,
    /// The syncrepl cookie (text as the server sent it; lossy for non-UTF-8 bytes is not
    /// acceptable, so it is kept as bytes in base64).
    pub cookie: String,
}

impl Watermark {
    /// Encodes a cookie for `scope` as stored with a batch.
    pub fn encode(scope: &str, cookie: &[u8]) -> Vec<u8> {
        serde_json::to_vec(&Watermark {
            v: 1,
            scope: scope.to_string(),
            cookie: crate::base64::encode(cookie),
        })
        .unwrap_or_default()
    }

    /// Decodes a stored watermark into the cookie, if it belongs to `scope`.
    pub fn cookie_for(bytes: &[u8], scope: &str) -> Option<Vec<u8>> {
        let w: Watermark = serde_json::from_slice(bytes).ok()?;
        if w.v != 1 || w.scope != scope {
            return None;
        }
        crate::base64::decode(&w.cookie).ok()
    }
}

/// The queue, shared between the feed task and the sender.
pub type SharedQueue = Arc<Mutex<Queue>>;
