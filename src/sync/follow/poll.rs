//! Polling change feeds for `run`: Active Directory DirSync, AD uSNChanged polling, and
//! modifyTimestamp polling for any other LDAP server.
//!
//! Each poll asks the directory what changed since the stored watermark; the feed task
//! (`feed.rs`) appends the changes to the queue *with the new watermark in the same
//! append*, so a watermark never moves past a change that is not durable (docs/architecture.md §3). A
//! poll that fails appends nothing; the next poll asks again from the same watermark. A poll
//! only reads: it never writes the queue, and never decides scope.
//!
//! | feed | watermark (bytes inside [`super::Watermark`]) | deletes | moves out of scope |
//! |---|---|---|---|
//! | DirSync | the server's cookie | tombstones (`isDeleted`) | the object, with its new DN |
//! | uSN | JSON `{"usn":N,"dc":dsServiceName,"inv":invocationId b64}` | tombstones via show-deleted | the object, with its new DN |
//! | timestamp | the highest `modifyTimestamp` seen (server's clock, text) | only the periodic full pass | the object, with its new DN |
//!
//! The feeds search the whole naming context with a broad filter (users and groups) and
//! leave scope decisions to the sender, which re-reads every object: a change that takes an
//! object *out* of scope (a move, a filter attribute) must reach it to become a delete.
//!
//! uSN polling is only valid against one DC: the stored `dsServiceName` (and invocationId,
//! when readable) must match the DC that answers, else the USNs mean nothing and a full
//! pass is owed. The USN is read *before* the search, so a change that lands during the
//! search is read again next time (at-least-once; applying twice is harmless).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Change;
use crate::ldap::{
    plain_dn, AdChange, AdFeedError, DirSyncFlags, DirSyncItem, Directory, Entry, Scope, UsnState,
};

/// Which polling feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollKind {
    /// AD DirSync with incremental values (needs Replicating Directory Changes).
    DirSync,
    /// AD uSNChanged polling with show-deleted, against one DC.
    Usn,
    /// modifyTimestamp polling (any LDAP).
    Timestamp,
}

impl PollKind {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PollKind::DirSync => "dirsync",
            PollKind::Usn => "usn",
            PollKind::Timestamp => "timestamp",
        }
    }
}

/// What a polling feed reads.
#[derive(Debug, Clone)]
pub struct PollSpec {
    /// The feed.
    pub kind: PollKind,
    /// The naming context (DirSync needs its root).
    pub base: String,
    /// How long between polls.
    pub interval: Duration,
    /// Poll at once when the directory notifies a change (AD change notifications, where
    /// the server offers them): the interval is then only the longest wait.
    pub notifications: bool,
}

/// The filter the feeds search with: every user and group object, tombstones included
/// (tombstones keep `objectClass` but lose `objectCategory`, so no scope filter here).
const AD_FEED_FILTER: &str = "(|(objectClass=user)(objectClass=group))";

/// Why a poll did not produce changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollError {
    /// The watermark cannot be used (invalid cookie, another DC): a full pass is owed.
    Resync(String),
    /// Anything else (connection, rights): retry later from the same watermark.
    Failed(String),
}

impl std::fmt::Display for PollError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PollError::Resync(s) | PollError::Failed(s) => f.write_str(s),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct UsnMark {
    usn: u64,
    dc: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    inv: Option<String>,
}

impl UsnMark {
    fn of(s: &UsnState) -> UsnMark {
        UsnMark {
            usn: s.highest_committed_usn,
            dc: s.ds_service_name.clone(),
            inv: s.invocation_id.as_deref().map(crate::base64::encode),
        }
    }

    fn state(&self) -> UsnState {
        UsnState {
            highest_committed_usn: self.usn,
            ds_service_name: self.dc.clone(),
            invocation_id: self
                .inv
                .as_deref()
                .and_then(|i| crate::base64::decode(i).ok()),
        }
    }
}

fn dirsync_flags() -> DirSyncFlags {
    DirSyncFlags::INCREMENTAL_VALUES
}

fn ad_error(e: AdFeedError, base: &str) -> PollError {
    if e.is_invalid_cookie() {
        return PollError::Resync(format!("the directory refused the DirSync cookie: {e}"));
    }
    if e.is_missing_rights() {
        return PollError::Failed(format!(
            "{e}; grant the bind account \"Replicating Directory Changes\" on {base}, or set sync.feed = \"usn\""
        ));
    }
    PollError::Failed(e.to_string())
}

/// The watermark for "now", taken before a full pass (what changes during the pass is
/// replayed after it).
pub async fn position(dir: &Directory, spec: &PollSpec) -> Result<Vec<u8>, PollError> {
    match spec.kind {
        PollKind::DirSync => {
            // An initial DirSync reads every object once (GUIDs only) to get a cookie.
            let mut cookie: Option<Vec<u8>> = None;
            loop {
                let mut s = dir.dirsync(
                    &spec.base,
                    AD_FEED_FILTER,
                    &["objectGUID"],
                    cookie.clone(),
                    dirsync_flags(),
                );
                let mut more = false;
                while let Some(item) = s.next().await {
                    if let DirSyncItem::End { cookie: c, more: m } =
                        item.map_err(|e| ad_error(e, &spec.base))?
                    {
                        cookie = Some(c);
                        more = m;
                    }
                }
                if !more {
                    break;
                }
            }
            cookie.ok_or_else(|| PollError::Failed("DirSync ended without a cookie".into()))
        }
        PollKind::Usn => {
            let s = dir.usn_state().await.map_err(|e| ad_error(e, &spec.base))?;
            Ok(serde_json::to_vec(&UsnMark::of(&s)).unwrap_or_default())
        }
        PollKind::Timestamp => directory_now(dir, &spec.base).await.map(String::into_bytes),
    }
}

/// The watermark of the timestamp feed, in the *directory's* clock: the newest
/// `modifyTimestamp` under `base`. The agent's own clock is never used: an agent whose clock
/// runs ahead of the server's would otherwise ask for changes "since tomorrow" and never see
/// one. Reading one short attribute of every entry costs a fraction of the full pass this
/// watermark is taken for. An empty base gives the epoch (everything that appears later is
/// newer); entries without a readable `modifyTimestamp` are an error naming the base, since
/// the feed could not see any change.
async fn directory_now(dir: &Directory, base: &str) -> Result<String, PollError> {
    let mut s = dir.search(
        base,
        Scope::Subtree,
        "(objectClass=*)",
        &["modifyTimestamp"],
    );
    let mut entries = 0u64;
    let mut stamps: Vec<String> = Vec::new();
    while let Some(e) = s.next().await {
        let e = e.map_err(|e| PollError::Failed(e.to_string()))?;
        entries += 1;
        if let Some(t) = e.first_str("modifyTimestamp") {
            stamps.push(t.to_string());
        }
        if stamps.len() >= 1024 {
            let newest = newest_timestamp(stamps.drain(..));
            stamps.extend(newest);
        }
    }
    match newest_timestamp(stamps) {
        Some(t) => Ok(t),
        None if entries == 0 => Ok(EPOCH_MARK.to_string()),
        None => Err(PollError::Failed(format!(
            "none of the {entries} entries under {base} shows a modifyTimestamp to the bind account: \
             the timestamp feed cannot see changes; grant read access to modifyTimestamp or choose another sync.feed"
        ))),
    }
}

/// The watermark of an empty directory.
const EPOCH_MARK: &str = "19700101000000Z";

/// The newest of some GeneralizedTime values, compared as times (the fraction and the
/// `Z` may be spelt differently by different servers), not as text.
fn newest_timestamp(values: impl IntoIterator<Item = String>) -> Option<String> {
    values
        .into_iter()
        .filter(|v| v.len() >= 14 && v.as_bytes()[..14].iter().all(u8::is_ascii_digit))
        .max_by(|a, b| time_key(a).cmp(&time_key(b)))
}

/// Whether GeneralizedTime `a` is later than `b`; a value that is not a GeneralizedTime is
/// never newer, and anything valid is newer than one that is not.
fn is_newer(a: &str, b: &str) -> bool {
    let valid = |v: &str| v.len() >= 14 && v.as_bytes()[..14].iter().all(u8::is_ascii_digit);
    match (valid(a), valid(b)) {
        (true, true) => time_key(a) > time_key(b),
        (a_ok, b_ok) => a_ok && !b_ok,
    }
}

/// `YYYYMMDDHHMMSS` plus the fraction's digits, for ordering.
fn time_key(v: &str) -> (&str, String) {
    let (whole, rest) = v.split_at(14);
    let fraction: String = rest
        .strip_prefix(['.', ','])
        .unwrap_or("")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let fraction = fraction.trim_end_matches('0').to_string();
    (whole, fraction)
}

/// The change an AD object (or tombstone) stands for.
fn ad_change(c: &AdChange) -> Change {
    let uuid = crate::base64::encode(&c.object_guid);
    if c.deleted {
        return Change::Delete {
            uuid,
            dn: last_dn(c),
        };
    }
    Change::Upsert {
        dn: plain_dn(&c.dn).to_string(),
        uuid,
    }
}

/// Where a tombstone lived: its RDN without the `\0ADEL:` mangling under
/// `lastKnownParent`.
fn last_dn(c: &AdChange) -> Option<String> {
    let parent = c.last_known_parent.as_deref()?;
    let rdn = crate::ldap::dn::split_rdns(plain_dn(&c.dn))
        .into_iter()
        .next()?;
    let cut = rdn
        .to_ascii_uppercase()
        .find("\\0ADEL:")
        .or_else(|| rdn.find('\n'))
        .unwrap_or(rdn.len());
    Some(format!("{},{}", &rdn[..cut], plain_dn(parent)))
}

fn entry_change(e: &Entry) -> Change {
    Change::Upsert {
        dn: e.dn.clone(),
        uuid: e.first_str("entryUUID").unwrap_or(&e.dn).to_string(),
    }
}

/// One poll: the changes since `mark` and the watermark that covers them.
pub async fn poll_once(
    dir: &Directory,
    spec: &PollSpec,
    feed_filter: &str,
    mark: &[u8],
) -> Result<(Vec<Change>, Vec<u8>), PollError> {
    match spec.kind {
        PollKind::DirSync => {
            let mut cookie = mark.to_vec();
            let mut out = Vec::new();
            loop {
                // No attribute list: DirSync returns an object only when a *requested*
                // attribute changed (Samba returns nothing at all for a GUID-only list).
                let mut s = dir.dirsync(
                    &spec.base,
                    AD_FEED_FILTER,
                    &[],
                    Some(cookie.clone()),
                    dirsync_flags(),
                );
                let mut more = false;
                while let Some(item) = s.next().await {
                    match item.map_err(|e| ad_error(e, &spec.base))? {
                        DirSyncItem::Change(c) => out.push(ad_change(&c)),
                        DirSyncItem::End { cookie: c, more: m } => {
                            cookie = c;
                            more = m;
                        }
                    }
                }
                if !more {
                    return Ok((out, cookie));
                }
            }
        }
        PollKind::Usn => {
            let stored: UsnMark = serde_json::from_slice(mark).map_err(|e| {
                PollError::Resync(format!("the stored uSN watermark is not readable: {e}"))
            })?;
            let now = dir.usn_state().await.map_err(|e| ad_error(e, &spec.base))?;
            if !stored.state().same_dc(&now) {
                return Err(PollError::Resync(format!(
                    "another domain controller answers ({} instead of {}): its USNs do not continue ours",
                    now.ds_service_name, stored.dc
                )));
            }
            if now.highest_committed_usn <= stored.usn {
                return Ok((Vec::new(), mark.to_vec()));
            }
            let mut s = dir.usn_changes(
                &spec.base,
                AD_FEED_FILTER,
                &["objectGUID", "isDeleted", "lastKnownParent"],
                stored.usn + 1,
            );
            let mut out = Vec::new();
            while let Some(e) = s.next().await {
                let e = e.map_err(|e| PollError::Failed(e.to_string()))?;
                match AdChange::from_entry(e) {
                    Ok(c) => out.push(ad_change(&c)),
                    Err(e) => log::warn!("uSN feed: skipping an object: {e}"),
                }
            }
            Ok((
                out,
                serde_json::to_vec(&UsnMark::of(&now)).unwrap_or_default(),
            ))
        }
        PollKind::Timestamp => {
            let since = String::from_utf8_lossy(mark).to_string();
            if since.is_empty()
                || !since
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.')
            {
                return Err(PollError::Resync(format!(
                    "the stored modifyTimestamp watermark {since:?} is not a GeneralizedTime"
                )));
            }
            let filter = format!("(&(modifyTimestamp>={since}){feed_filter})");
            let mut s = dir.search(
                &spec.base,
                Scope::Subtree,
                &filter,
                &["entryUUID", "modifyTimestamp"],
            );
            let mut out = Vec::new();
            let mut newest = since.clone();
            while let Some(e) = s.next().await {
                let e = e.map_err(|e| PollError::Failed(e.to_string()))?;
                if let Some(t) = e.first_str("modifyTimestamp") {
                    if is_newer(t, &newest) {
                        newest = t.to_string();
                    }
                }
                out.push(entry_change(&e));
            }
            Ok((out, newest.into_bytes()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(dn: &str, deleted: bool, parent: Option<&str>) -> AdChange {
        let mut e = Entry::new(dn);
        e.add("objectGUID", vec![7u8; 16]);
        if deleted {
            e.add("isDeleted", "TRUE");
        }
        if let Some(p) = parent {
            e.add("lastKnownParent", p);
        }
        AdChange::from_entry(e).unwrap()
    }

    #[test]
    fn an_ad_object_is_an_upsert_by_its_plain_dn() {
        let c = change("<GUID=abc>;CN=Ann,OU=Staff,DC=x", false, None);
        assert_eq!(
            ad_change(&c),
            Change::Upsert {
                dn: "CN=Ann,OU=Staff,DC=x".into(),
                uuid: crate::base64::encode(&[7u8; 16]),
            }
        );
    }

    #[test]
    fn a_tombstone_is_a_delete_with_its_last_dn() {
        let c = change(
            "CN=Ann\\0ADEL:0f3c-11,CN=Deleted Objects,DC=x",
            true,
            Some("OU=Staff,DC=x"),
        );
        assert_eq!(
            ad_change(&c),
            Change::Delete {
                uuid: crate::base64::encode(&[7u8; 16]),
                dn: Some("CN=Ann,OU=Staff,DC=x".into()),
            }
        );
    }

    #[test]
    fn usn_marks_round_trip_and_name_their_dc() {
        let s = UsnState {
            highest_committed_usn: 4711,
            ds_service_name: "CN=NTDS Settings,CN=DC1".into(),
            invocation_id: Some(vec![1, 2, 3]),
        };
        let m = UsnMark::of(&s);
        let bytes = serde_json::to_vec(&m).unwrap();
        let back: UsnMark = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back.state(), s);
    }

    #[test]
    fn the_newest_timestamp_is_compared_as_a_time_not_as_text() {
        let v = |xs: &[&str]| newest_timestamp(xs.iter().map(|x| x.to_string()));
        assert_eq!(
            v(&["20261126010000Z", "20261126020000Z", "20251231235959Z"]).as_deref(),
            Some("20261126020000Z")
        );
        // "…00.5Z" is later than "…00Z" although '.' sorts before 'Z'.
        assert_eq!(
            v(&["20261126020000Z", "20261126020000.5Z"]).as_deref(),
            Some("20261126020000.5Z")
        );
        assert_eq!(
            v(&["20261126020000.05Z", "20261126020000.5Z"]).as_deref(),
            Some("20261126020000.5Z")
        );
        assert_eq!(v(&["garbage", "2026"]), None);
        assert_eq!(v(&[]), None);
        assert!(is_newer("20261126020001Z", "20261126020000.9Z"));
        assert!(!is_newer("20261126020000Z", "20261126020000.0Z"));
        assert!(!is_newer("junk", "20261126020000Z"));
        assert!(is_newer("20261126020000Z", "junk"));
    }
}
