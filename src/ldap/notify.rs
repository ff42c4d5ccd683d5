//! Active Directory change notifications (LDAP_SERVER_NOTIFICATION_OID,
//! 1.2.840.113556.1.4.528): a search that never ends, on a connection of its own, to which
//! the server sends an entry whenever an object under the base changes.
//!
//! A notification says only *that* something changed (the entry carries no reliable
//! attribute values and no deletes of their own): the DirSync or uSN poll that follows
//! reads what changed, so the feed stays the single source of changes and its watermark
//! the single position. Notifications only make that poll come sooner than its interval.
//!
//! AD's rules for such a search: filter `(objectClass=*)`, no paging, the control critical,
//! a limit on notification searches per connection (5 by default): one is used. A server
//! that refuses the control answers the search with an error (unavailableCriticalExtension,
//! unwillingToPerform); the stream then ends with it, and the caller keeps polling.
//!
//! Measured on Samba AD 4.17 (the test bed): it sends notifications, on a timer of its own
//! of about 5 s (a change arrives 2-5 s after it was made), so on Samba they cut latency
//! only where `poll_interval_secs` is longer than that.

use ldap3::controls::RawControl;
use ldap3::{Ldap, Scope as Ldap3Scope};
use smol::channel::{Receiver, Sender};

use super::conn::{connect_unless_cancelled, op_error};
use super::dialect::NOTIFICATION_OID;
use super::worker::{abandon, close, Stop};
use super::{DirectoryConfig, LdapError, ResultCode};

/// What the worker sends the stream.
pub(crate) enum NotifyItem {
    /// Something under the base changed (this many entries since the last item).
    Changed(usize),
    /// The search ended or failed; nothing follows.
    Failed(LdapError),
}

/// One notification search for the worker to run.
pub(crate) struct NotifyJob {
    pub base: String,
    pub out: Sender<NotifyItem>,
    /// Never sent on; closes when the [`NotifyStream`] is dropped, which cancels the search.
    pub cancel: Receiver<()>,
}

/// The change notifications of one search. Dropping it abandons the search and unbinds its
/// connection.
pub struct NotifyStream {
    items: Receiver<NotifyItem>,
    ended: bool,
    _cancel: Sender<()>,
    _directory: super::Directory,
}

impl NotifyStream {
    pub(crate) fn new(directory: super::Directory, base: &str) -> (NotifyStream, NotifyJob) {
        let (out, items) = smol::channel::bounded(4);
        let (cancel_tx, cancel) = smol::channel::bounded(1);
        let job = NotifyJob {
            base: base.to_owned(),
            out,
            cancel,
        };
        let stream = NotifyStream {
            items,
            ended: false,
            _cancel: cancel_tx,
            _directory: directory,
        };
        (stream, job)
    }

    /// Waits for the next change under the base: `Ok(n)` (n notifications arrived), or the
    /// error that ended the search (refused, connection lost). After an error it returns
    /// the same kind of error at once.
    pub async fn next(&mut self) -> Result<usize, LdapError> {
        let ended = || LdapError::Worker {
            detail: "the change notification search has ended".into(),
        };
        if self.ended {
            return Err(ended());
        }
        match self.items.recv().await {
            Ok(NotifyItem::Changed(n)) => Ok(n),
            Ok(NotifyItem::Failed(e)) => {
                self.ended = true;
                Err(e)
            }
            Err(_) => {
                self.ended = true;
                Err(ended())
            }
        }
    }
}

/// Runs one notification search on a connection of its own until it fails or the consumer
/// drops the stream; then abandons it and unbinds.
pub(crate) async fn serve(
    cfg: &DirectoryConfig,
    tls: Option<&(
        &'static str,
        std::sync::Arc<futures_rustls::rustls::ClientConfig>,
    )>,
    job: NotifyJob,
) {
    let ldap = match connect_unless_cancelled(cfg, tls, &job.cancel, Default::default()).await {
        None => return,
        Some(Ok(ldap)) => ldap,
        Some(Err(e)) => {
            let _ = job.out.send(NotifyItem::Failed(e)).await;
            return;
        }
    };
    let outcome = run(cfg, ldap.clone(), &job).await;
    close(ldap).await;
    if let Err(Stop::Failed(e)) = outcome {
        let _ = job.out.send(NotifyItem::Failed(e)).await;
    }
}

async fn run(cfg: &DirectoryConfig, mut ldap: Ldap, job: &NotifyJob) -> Result<(), Stop> {
    let what = || format!("change notification search of {:?}", job.base);
    ldap.with_controls(RawControl {
        ctype: NOTIFICATION_OID.to_string(),
        crit: true,
        val: None,
    });
    let start = ldap.streaming_search(
        &job.base,
        Ldap3Scope::Subtree,
        "(objectClass=*)",
        vec!["1.1".to_string()],
    );
    let mut stream = match tokio::time::timeout(cfg.timeout, start).await {
        Err(_) => {
            return Err(Stop::Failed(LdapError::Timeout {
                operation: what(),
                after: cfg.timeout,
            }))
        }
        Ok(Err(e)) => return Err(Stop::Failed(op_error(cfg, e, what))),
        Ok(Ok(s)) => s,
    };
    loop {
        let next = smol::future::or(async { Some(stream.next().await) }, async {
            let _ = job.cancel.recv().await;
            None
        })
        .await;
        match next {
            // The consumer is gone.
            None => {
                abandon(&mut stream).await;
                return Err(Stop::Consumer);
            }
            Some(Err(e)) => return Err(Stop::Failed(op_error(cfg, e, what))),
            Some(Ok(Some(_entry))) => {
                // Coalesce: one wake-up is enough however many arrive before it is read.
                match job.out.try_send(NotifyItem::Changed(1)) {
                    Ok(()) | Err(smol::channel::TrySendError::Full(_)) => {}
                    Err(smol::channel::TrySendError::Closed(_)) => {
                        abandon(&mut stream).await;
                        return Err(Stop::Consumer);
                    }
                }
            }
            Some(Ok(None)) => {
                // The server ended a search that should never end: its result says why.
                let res = stream.finish().await;
                return Err(Stop::Failed(LdapError::Search {
                    base: job.base.clone(),
                    filter: "(objectClass=*) with the change notification control".into(),
                    code: ResultCode(res.rc),
                    message: res.text,
                }));
            }
        }
    }
}
