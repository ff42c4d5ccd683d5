//! A refreshAndPersist content-sync search that closes 389-DS's gap at the start of the
//! persist phase.
//!
//! # The gap
//! 389 Directory Server's Content Synchronization plugin starts a refreshAndPersist session
//! in two steps: it takes the session's cookie (the retro changelog's last change number),
//! then registers the session for the persist phase. A change committed between the two has
//! a change number past the cookie, so the refresh does not send it, and it reached the
//! plugin's post-operation hook before the session was listening, so the persist phase does
//! not send it either. Nothing later mentions it: a consumer that stores the cookies it is
//! given has lost that change until its next full pass. Measured on the testbed's 389-DS 2.3
//! with `ldapsearch` sessions opened while another client added an entry every few
//! milliseconds: 3 sessions out of 97 missed exactly one add, always one in the middle of
//! what they reported; a refreshOnly search from the refresh's own cookie, run after the
//! session was up, returned every missed add.
//!
//! # What this module owns
//! [`CatchUpStream`] wraps one refreshAndPersist [`SyncStream`]. Once the refresh phase has
//! ended and `delay` has passed, it runs one refreshOnly search from the cookie the session
//! was started with (the refresh's own cookie when it was started without one) on a
//! connection of its own and hands on what it reports, then goes on with the persist phase
//! (whose messages wait meanwhile in the stream's bounded channel).
//!
//! Why from the start and not from the refresh's cookie: the refresh's cookie may already
//! count a change whose operation had not ended when the session started (seen in the
//! access log of a CI failure: a modify from 0.0455 to 0.0495 s, the session from 0.0466 s;
//! neither the refresh, nor the persist phase, nor a catch-up from the refresh's cookie
//! sent it). The changes since the session's start cookie are the ones the consumer has
//! not stored a cookie past, so repeating them costs duplicates only.
//!
//! # Invariants
//! * **A cookie is never ahead of the catch-up.** Until the catch-up search has ended, every
//!   cookie the session sends is handed on as the session's start cookie instead (a
//!   consumer still flushes at it, and a consumer that stops and resumes from it is shown
//!   the gap again); after the catch-up, the last cookie held back follows at once.
//! * **Only changes come from the catch-up**: entries, deletes, deleted-id sets; its cookies
//!   and phase markers are dropped. A present list (the server forgot the cookie) is handed
//!   on as it is: the consumer owes a full pass for it, as for any present phase. A failed
//!   catch-up is the stream's error, and the stream ends.
//! * **Duplicates only.** The catch-up repeats, as entries, what the persist phase already
//!   sent since the cookie; consumers treat an entry as "read it again" and a delete of a gone
//!   entry as nothing, so a repeat changes nothing.

use std::time::{Duration, Instant};

use smol::Timer;

use super::{Directory, LdapError, SyncEvent, SyncMode, SyncStream};

/// Where the catch-up stands.
enum Stage {
    /// The refresh phase has not ended yet.
    Refreshing,
    /// The refresh ended at this cookie; the catch-up starts at `due`.
    Due { cookie: Vec<u8>, due: Instant },
    /// The catch-up search is running.
    Running(SyncStream),
    /// The catch-up is done; events pass through untouched.
    Done,
}

/// A refreshAndPersist search followed, once, by a catch-up refreshOnly search from the
/// session's start cookie (see the module doc).
pub struct CatchUpStream {
    dir: Directory,
    base: String,
    filter: String,
    attrs: Vec<String>,
    persist: SyncStream,
    delay: Duration,
    stage: Stage,
    /// The persist phase reported its refresh done; the next cookie is the session's.
    refresh_ended: bool,
    /// The cookie the session was started with: the catch-up's start, and the cookie the
    /// consumer is shown until the catch-up ran.
    start_cookie: Option<Vec<u8>>,
    /// The newest cookie of the persist phase not yet handed on (held back during the
    /// catch-up).
    held_cookie: Option<Vec<u8>>,
}

impl std::fmt::Debug for CatchUpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatchUpStream")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// What the catch-up search's event becomes for the consumer (pure).
fn catch_up_event(ev: SyncEvent) -> Option<SyncEvent> {
    match ev {
        SyncEvent::Upsert { .. } | SyncEvent::Delete { .. } | SyncEvent::IdSet { .. } => Some(ev),
        SyncEvent::Phase { deletes: false, .. } => Some(ev),
        SyncEvent::Phase { .. } | SyncEvent::RefreshDone { .. } | SyncEvent::Cookie(_) => None,
    }
}

impl CatchUpStream {
    pub(super) fn new(
        dir: Directory,
        base: &str,
        filter: &str,
        attrs: &[&str],
        cookie: Option<Vec<u8>>,
        delay: Option<Duration>,
    ) -> Self {
        let persist = dir.content_sync(
            base,
            filter,
            attrs,
            cookie.clone(),
            SyncMode::RefreshAndPersist,
        );
        CatchUpStream {
            dir,
            base: base.into(),
            filter: filter.into(),
            attrs: attrs.iter().map(|a| a.to_string()).collect(),
            persist,
            delay: delay.unwrap_or_default(),
            stage: match delay {
                Some(_) => Stage::Refreshing,
                None => Stage::Done,
            },
            refresh_ended: false,
            start_cookie: cookie,
            held_cookie: None,
        }
    }

    /// Next event, as [`SyncStream::next`]: `None` only when the server ended the persist
    /// search with success; an error ends the stream.
    pub async fn next(&mut self) -> Option<Result<SyncEvent, LdapError>> {
        loop {
            match &mut self.stage {
                Stage::Running(s) => match s.next().await {
                    Some(Ok(ev)) => {
                        if let Some(ev) = catch_up_event(ev) {
                            return Some(Ok(ev));
                        }
                    }
                    Some(Err(e)) => {
                        self.stage = Stage::Done;
                        return Some(Err(e));
                    }
                    None => {
                        self.stage = Stage::Done;
                        if let Some(c) = self.held_cookie.take() {
                            return Some(Ok(SyncEvent::Cookie(c)));
                        }
                    }
                },
                Stage::Due { due, .. } => {
                    let due = *due;
                    let persist = &mut self.persist;
                    let next = smol::future::or(async { Some(persist.next().await) }, async {
                        Timer::at(due).await;
                        None
                    })
                    .await;
                    if let Some(ev) = next {
                        return self.persisted(ev);
                    }
                    let Stage::Due { cookie, .. } = std::mem::replace(&mut self.stage, Stage::Done)
                    else {
                        unreachable!("matched above")
                    };
                    let attrs: Vec<&str> = self.attrs.iter().map(String::as_str).collect();
                    self.stage = Stage::Running(self.dir.content_sync(
                        &self.base,
                        &self.filter,
                        &attrs,
                        Some(cookie),
                        SyncMode::RefreshOnly,
                    ));
                }
                Stage::Refreshing | Stage::Done => {
                    let ev = self.persist.next().await;
                    return self.persisted(ev);
                }
            }
        }
    }

    /// One event of the persist search, as handed on.
    fn persisted(
        &mut self,
        ev: Option<Result<SyncEvent, LdapError>>,
    ) -> Option<Result<SyncEvent, LdapError>> {
        let ev = match ev {
            Some(Ok(ev)) => ev,
            other => return other,
        };
        if matches!(self.stage, Stage::Done) {
            return Some(Ok(ev));
        }
        match ev {
            SyncEvent::RefreshDone { .. } => {
                self.refresh_ended = true;
                Some(Ok(ev))
            }
            // Held back: the consumer is told the session's start until the catch-up ran.
            SyncEvent::Cookie(c) => {
                let shown = self.start_cookie.clone().unwrap_or_else(|| c.clone());
                if self.refresh_ended && matches!(self.stage, Stage::Refreshing) {
                    self.due(shown.clone());
                }
                self.held_cookie = Some(c);
                Some(Ok(SyncEvent::Cookie(shown)))
            }
            ev => {
                // A persist-phase change before any cookie: the catch-up starts from the
                // session's own start.
                if self.refresh_ended && matches!(self.stage, Stage::Refreshing) {
                    if let Some(c) = self.start_cookie.clone() {
                        self.due(c);
                    }
                }
                Some(Ok(ev))
            }
        }
    }

    /// The catch-up from `cookie`, `delay` from now.
    fn due(&mut self, cookie: Vec<u8>) {
        self.stage = Stage::Due {
            cookie,
            due: Instant::now() + self.delay,
        };
    }
}

impl Directory {
    /// A refreshAndPersist [`Directory::content_sync`] with one catch-up refreshOnly
    /// search from `cookie`, `delay` after the refresh ended (for 389-DS; see
    /// the `catch_up` module doc). `None`: no catch-up, the persist search as it is.
    pub fn content_sync_caught_up(
        &self,
        base: &str,
        filter: &str,
        attrs: &[&str],
        cookie: Option<Vec<u8>>,
        delay: Option<Duration>,
    ) -> CatchUpStream {
        CatchUpStream::new(self.clone(), base, filter, attrs, cookie, delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catch_up_hands_on_changes_and_present_lists_only() {
        let up = SyncEvent::Upsert {
            uuid: "u".into(),
            entry: crate::ldap::Entry::new("cn=a"),
        };
        assert_eq!(catch_up_event(up.clone()), Some(up));
        let del = SyncEvent::Delete {
            uuid: "u".into(),
            dn: None,
        };
        assert_eq!(catch_up_event(del.clone()), Some(del));
        for deletes in [true, false] {
            let set = SyncEvent::IdSet {
                uuids: vec!["u".into()],
                deletes,
            };
            assert_eq!(catch_up_event(set.clone()), Some(set));
        }
        let present = SyncEvent::Phase {
            deletes: false,
            done: true,
        };
        assert_eq!(catch_up_event(present.clone()), Some(present));
        for dropped in [
            SyncEvent::Phase {
                deletes: true,
                done: true,
            },
            SyncEvent::RefreshDone {
                refresh_deletes: false,
            },
            SyncEvent::Cookie(b"c".to_vec()),
        ] {
            assert_eq!(catch_up_event(dropped), None);
        }
    }
}
