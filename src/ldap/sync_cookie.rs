//! The directory's content-sync cookie for "now" ([`Directory::sync_cookie`]), read without
//! holding the listing that comes with it.
//!
//! # Why it needs a module
//! RFC 4533 gives a cookie only at the end of a sync search. Without a cookie to resume
//! from, a refreshOnly search lists every entry in scope (attributes `1.1`: a DN and a Sync
//! State control each) and then ends with the Sync Done control that carries the cookie.
//! `idrelay run` takes that cookie before every full pass, on OpenLDAP (syncprov) and on
//! 389-DS (Content Synchronization) alike, so at 1,000,000 entries a million messages go by
//! just to learn one cookie.
//!
//! Before this module they went by as events: decoded entries, 32 to a batch, across to the
//! caller's thread, which dropped them. Measured with `idrelay run` on a slapd holding
//! 1,000,000 users (two runs each, resident memory when the read ended):
//!
//! | the cookie read | peak RSS | read took |
//! |---|---|---|
//! | before: events to the other thread, reader within tokio's budget | 185-214 MiB | 13.6-18.1 s |
//! | listing dropped on the LDAP thread, reader within the budget | 167-519 MiB | 7.3-7.5 s |
//! | events to the other thread, reader outside the budget | 282-437 MiB | 10.7-12.4 s |
//! | events, reader outside the budget, connection paused while the consumer is behind | 17-21 MiB | 15.2-15.3 s |
//! | now: listing dropped on the LDAP thread, reader outside the budget, gate | 15-20 MiB | 7.3-9.0 s |
//!
//! Where it went: ldap3's connection task decodes every message it reads into an unbounded
//! channel per search, and reads the socket for as long as data is there and tokio's
//! cooperative budget lasts (128 socket reads a turn, dozens of messages each); the reader
//! took at most 128 messages a turn from that channel (each receive spends a unit of the
//! budget), and when it handed events to another thread it also waited for that thread.
//! So the channel held a growing share of the listing while the server sent faster than
//! the reader took, and glibc kept the freed memory for the rest of the run.
//!
//! # What this module does
//! * **The same search as before**: same base, filter, subtree scope, attributes `1.1`, no
//!   cookie. The server computes the cookie exactly as it did (389-DS's cookie names the
//!   search's base and filter, so a narrower search would give one the feed cannot use).
//! * **The listing stays on the LDAP thread**: [`drain`] looks at each message only for a
//!   cookie (a Sync State or Sync Info cookie; OpenLDAP and 389-DS send none before the
//!   end) and drops it there. Nothing is decoded into an entry, nothing crosses threads;
//!   the caller gets the last cookie, in one message, after the search ended with success.
//! * **The reader keeps pace**: it reads outside tokio's budget
//!   (`content_sync::next_item`), so each of its turns empties ldap3's channel: what waits
//!   there is at most what the connection task decoded in one turn. (Every content-sync
//!   search also pauses its connection while its consumer is behind, `gate.rs`; this read
//!   has no consumer to wait for.) ldap3 has no bounded channel and no flow control of its
//!   own.
//!
//! # The guarantee (no change is lost between the cookie and the pass)
//! The cookie is never ahead of what the first full pass reads: `sync::follow` awaits this
//! call to its end before the pass reads anything, and the cookie is the server's own answer
//! to the search it always was (same request, same connection handling, ended with success
//! before it is returned). A change the cookie does not count is sent again by the feed,
//! which resumes from this cookie once the pass is done; a change it counts happened before
//! the search ended, so before the pass began reading. Only how the listing is thrown away
//! changed, never which search is sent or when it ends, so the order holds as it did. An
//! error, a search that ends without success, or a success without a cookie is an error,
//! never a cookie.

use ldap3::ResultEntry;

use super::content_sync::{
    find_control, finish, next_item, parse_sync_info, parse_sync_state, send, sync_info_value,
    Stream, SyncInfoValue, SyncJob, SYNC_STATE_OID,
};
use super::gate::Gate;
use super::worker::{Request, Stop};
use super::{Directory, DirectoryConfig, LdapError, SyncEvent, SyncMode, SyncStream};

impl Directory {
    /// The content-sync cookie for now, for a later search of `base` with `filter`: a
    /// refreshOnly search without a cookie (subtree, attributes `1.1`, on a connection of
    /// its own) whose listing is dropped as it arrives (see the module doc). Fails when the
    /// search fails or the server ends it without a cookie (no syncprov / Content
    /// Synchronization for `base`).
    pub async fn sync_cookie(&self, base: &str, filter: &str) -> Result<Vec<u8>, LdapError> {
        let (mut stream, mut job) = SyncStream::new(
            self.clone(),
            base,
            filter,
            &["1.1"],
            None,
            SyncMode::RefreshOnly,
        );
        job.cookie_only = true;
        // If the worker is gone the job (and its sender) is dropped here, and the stream
        // reports a broken search on its first `next()`.
        let _ = self.inner.requests.try_send(Request::ContentSync(job));
        let mut cookie = None;
        while let Some(ev) = stream.next().await {
            if let SyncEvent::Cookie(c) = ev? {
                cookie = Some(c);
            }
        }
        cookie.ok_or_else(|| LdapError::Protocol {
            detail: format!(
                "the server sent no sync cookie for {base}; is the syncprov overlay (OpenLDAP) \
                 or Content Synchronization (389-DS) enabled for it?"
            ),
        })
    }
}

/// The worker's side of [`Directory::sync_cookie`]: reads the search to its end, keeps the
/// last cookie it carried, and hands on only that.
pub(super) async fn drain(
    cfg: &DirectoryConfig,
    stream: &mut Stream,
    job: &SyncJob,
    gate: &Gate,
    what: &impl Fn() -> String,
) -> Result<(), Stop> {
    let mut cookie = None;
    while let Some(item) = next_item(cfg, stream, &job.cancel, Some(cfg.timeout), what).await? {
        if let Some(c) = cookie_of(item)? {
            cookie = Some(c);
        }
    }
    if let Some(c) = finish(stream, job).await?.and_then(|done| done.cookie) {
        cookie = Some(c);
    }
    log::debug!("{} ended (cookie read, listing dropped)", what());
    if let Some(c) = cookie {
        send(&job.out, vec![SyncEvent::Cookie(c)], gate).await?;
    }
    Ok(())
}

/// The cookie one message of the search carries, if any; its content is not decoded.
fn cookie_of(item: ResultEntry) -> Result<Option<Vec<u8>>, LdapError> {
    if item.is_ref() {
        return Ok(None);
    }
    if item.is_intermediate() {
        let Some(val) = sync_info_value(item.0)? else {
            return Ok(None);
        };
        return Ok(info_cookie(parse_sync_info(&val)?));
    }
    match find_control(&item.1, SYNC_STATE_OID) {
        Some(val) => Ok(parse_sync_state(val)?.cookie),
        None => Err(LdapError::Protocol {
            detail: "content sync: an entry came without a Sync State control".into(),
        }),
    }
}

/// The cookie of a Sync Info message, whichever kind.
fn info_cookie(info: SyncInfoValue) -> Option<Vec<u8>> {
    match info {
        SyncInfoValue::NewCookie(c) => Some(c),
        SyncInfoValue::Refresh { cookie, .. } | SyncInfoValue::IdSet { cookie, .. } => cookie,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ldap3::asn1::{StructureTag, TagClass, PL};
    use ldap3::controls::{Control, RawControl};

    fn octets(id: u64, class: TagClass, b: &[u8]) -> StructureTag {
        StructureTag {
            class,
            id,
            payload: PL::P(b.to_vec()),
        }
    }

    fn constructed(id: u64, class: TagClass, inner: Vec<StructureTag>) -> StructureTag {
        StructureTag {
            class,
            id,
            payload: PL::C(inner),
        }
    }

    /// A searchResultEntry with no attributes and the given controls.
    fn entry(ctrls: Vec<Control>) -> ResultEntry {
        let tag = constructed(
            4,
            TagClass::Application,
            vec![
                octets(4, TagClass::Universal, b"uid=a,dc=x"),
                constructed(16, TagClass::Universal, vec![]),
            ],
        );
        let mut e = ResultEntry::new(tag);
        e.1 = ctrls;
        e
    }

    fn sync_state(cookie: Option<&[u8]>) -> Control {
        let mut inner = vec![0x0a, 0x01, 0x00, 0x04, 0x10];
        inner.extend([7u8; 16]);
        if let Some(c) = cookie {
            inner.extend([0x04, c.len() as u8]);
            inner.extend(c);
        }
        let mut val = vec![0x30, inner.len() as u8];
        val.extend(inner);
        Control(
            None,
            RawControl {
                ctype: SYNC_STATE_OID.into(),
                crit: false,
                val: Some(val),
            },
        )
    }

    #[test]
    fn an_entry_gives_its_sync_state_cookie_and_nothing_else() {
        assert_eq!(cookie_of(entry(vec![sync_state(None)])).unwrap(), None);
        assert_eq!(
            cookie_of(entry(vec![sync_state(Some(b"rid=000,csn=1"))])).unwrap(),
            Some(b"rid=000,csn=1".to_vec())
        );
        // As the event stream does: an entry without its Sync State is a broken search.
        assert!(cookie_of(entry(vec![])).is_err());
    }

    #[test]
    fn every_sync_info_kind_gives_its_cookie() {
        assert_eq!(
            info_cookie(SyncInfoValue::NewCookie(b"a".to_vec())),
            Some(b"a".to_vec())
        );
        assert_eq!(
            info_cookie(SyncInfoValue::Refresh {
                deletes: false,
                cookie: Some(b"b".to_vec()),
                done: true
            }),
            Some(b"b".to_vec())
        );
        assert_eq!(
            info_cookie(SyncInfoValue::IdSet {
                cookie: None,
                deletes: true,
                uuids: vec![]
            }),
            None
        );
    }
}
