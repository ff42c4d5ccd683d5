//! Writes into the directory (writeback through the relay, `crate::relay::writeback`).
//!
//! Writes are rare and go over a connection of their own, owned by a thread of their own
//! (`idrelay-ldap-write`, a current-thread tokio runtime like the read worker's), started and
//! bound on the first write, bound again when found closed. Operations of one call run in
//! order and stop at the first failure; nothing is retried behind the caller's back. The
//! bind account is the reading one: it needs write rights only where writeback is allowed.

use std::fmt;
use std::sync::Arc;

use smol::channel::{Receiver, Sender};

use super::{conn, tls, worker, worker_gone, DirectoryConfig, LdapError, ResultCode};

/// One change to one attribute inside a [`WriteOp::Modify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modification {
    /// Add these values (the attribute is created if absent).
    Add(String, Vec<Vec<u8>>),
    /// Delete these values; no values: delete the whole attribute.
    Delete(String, Vec<Vec<u8>>),
    /// Replace the attribute's values with these; no values: delete the attribute.
    Replace(String, Vec<Vec<u8>>),
}

impl Modification {
    /// The attribute this modification touches.
    pub fn attribute(&self) -> &str {
        match self {
            Modification::Add(a, _) | Modification::Delete(a, _) | Modification::Replace(a, _) => a,
        }
    }
}

/// One LDAP write operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Add an entry with these attributes (`objectClass` included).
    Add {
        /// The new entry's DN.
        dn: String,
        /// Attributes and their values.
        attributes: Vec<(String, Vec<Vec<u8>>)>,
    },
    /// Modify an entry (the modifications apply atomically, in order).
    Modify {
        /// The entry.
        dn: String,
        /// What changes.
        changes: Vec<Modification>,
    },
    /// Rename an entry inside its parent (modify DN without a new superior).
    Rename {
        /// The entry.
        dn: String,
        /// The new RDN, e.g. `cn=new name` (value escaped).
        new_rdn: String,
    },
    /// Delete a leaf entry.
    Delete {
        /// The entry.
        dn: String,
    },
}

impl WriteOp {
    /// `add`, `modify`, `rename` or `delete`.
    pub fn verb(&self) -> &'static str {
        match self {
            WriteOp::Add { .. } => "add",
            WriteOp::Modify { .. } => "modify",
            WriteOp::Rename { .. } => "rename",
            WriteOp::Delete { .. } => "delete",
        }
    }

    /// The DN the operation names.
    pub fn dn(&self) -> &str {
        match self {
            WriteOp::Add { dn, .. }
            | WriteOp::Modify { dn, .. }
            | WriteOp::Rename { dn, .. }
            | WriteOp::Delete { dn } => dn,
        }
    }

    /// The attributes the operation writes, once each in order (an add: every attribute of
    /// the new entry; a rename: the RDN's attribute type; a delete: none). Names only,
    /// never values.
    pub fn attributes(&self) -> Vec<String> {
        let names: Vec<&str> = match self {
            WriteOp::Add { attributes, .. } => attributes.iter().map(|(a, _)| a.as_str()).collect(),
            WriteOp::Modify { changes, .. } => {
                changes.iter().map(Modification::attribute).collect()
            }
            WriteOp::Rename { new_rdn, .. } => new_rdn
                .split_once('=')
                .map(|(t, _)| t.trim())
                .into_iter()
                .collect(),
            WriteOp::Delete { .. } => Vec::new(),
        };
        let mut out: Vec<String> = Vec::new();
        for n in names {
            if !out.iter().any(|o| o.eq_ignore_ascii_case(n)) {
                out.push(n.to_string());
            }
        }
        out
    }

    /// One line for logs: `modify <dn>: title, mail`, `add <dn>: objectClass, cn, member`,
    /// `rename <dn>: cn`, `delete <dn>` (attribute names, never values).
    pub fn describe(&self) -> String {
        let attributes = self.attributes();
        if attributes.is_empty() {
            format!("{} {}", self.verb(), self.dn())
        } else {
            format!("{} {}: {}", self.verb(), self.dn(), attributes.join(", "))
        }
    }
}

/// Why a write failed. `applied` operations of the call succeeded before it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteError {
    /// The server refused the operation with a result code.
    Refused {
        /// `add`, `modify`, `rename`, `delete`.
        op: &'static str,
        /// The DN it named.
        dn: String,
        /// The result code.
        code: ResultCode,
        /// The server's diagnostic text.
        message: String,
        /// How many operations of the call were applied before this one.
        applied: usize,
    },
    /// The connection could not be made or broke (nothing is known about the operation in
    /// flight).
    Link {
        /// The underlying error (never holds the password).
        error: LdapError,
        /// How many operations of the call were applied before.
        applied: usize,
    },
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteError::Refused {
                op,
                dn,
                code,
                message,
                applied,
            } => {
                write!(f, "LDAP {op} of {dn:?} refused: {code}")?;
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                applied_note(f, *applied)
            }
            WriteError::Link { error, applied } => {
                write!(f, "{error}")?;
                applied_note(f, *applied)
            }
        }
    }
}

/// How much of a multi-operation write request was applied before it failed.
fn applied_note(f: &mut fmt::Formatter<'_>, applied: usize) -> fmt::Result {
    if applied > 0 {
        write!(
            f,
            " (after {applied} operation(s) of the same request were applied)"
        )?;
    }
    Ok(())
}

impl std::error::Error for WriteError {}

type WriteJob = (
    Vec<WriteOp>,
    smol::channel::Sender<Result<usize, WriteError>>,
);

/// A lazily bound write connection to the directory (see the section comment above).
/// Cloning shares it; its thread ends when the last clone is dropped.
#[derive(Clone)]
pub struct DirectoryWriter {
    cfg: DirectoryConfig,
    jobs: Arc<std::sync::Mutex<Option<Sender<WriteJob>>>>,
}

impl fmt::Debug for DirectoryWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectoryWriter")
            .field("url", &self.cfg.url)
            .field("bind_dn", &self.cfg.bind_dn)
            .finish()
    }
}

impl DirectoryWriter {
    /// A writer for `cfg`; nothing connects before the first [`DirectoryWriter::apply`].
    pub fn new(cfg: DirectoryConfig) -> DirectoryWriter {
        DirectoryWriter {
            cfg,
            jobs: Arc::new(std::sync::Mutex::new(None)),
        }
    }

    /// Applies `ops` in order; stops at the first failure. Returns how many were applied.
    pub async fn apply(&self, ops: Vec<WriteOp>) -> Result<usize, WriteError> {
        let (reply, answer) = smol::channel::bounded(1);
        let mut job = (ops, reply);
        for _ in 0..2 {
            let sender = self.sender()?;
            match sender.send(job).await {
                Ok(()) => {
                    return answer.recv().await.map_err(|_| WriteError::Link {
                        error: worker_gone(),
                        applied: 0,
                    })?
                }
                // The thread is gone (it never outlives a failed start): start another.
                Err(smol::channel::SendError(back)) => {
                    job = back;
                    *self.jobs.lock().unwrap_or_else(|p| p.into_inner()) = None;
                }
            }
        }
        Err(WriteError::Link {
            error: worker_gone(),
            applied: 0,
        })
    }

    fn sender(&self) -> Result<Sender<WriteJob>, WriteError> {
        let mut g = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = g.as_ref() {
            if !s.is_closed() {
                return Ok(s.clone());
            }
        }
        let (tx, rx) = smol::channel::unbounded::<WriteJob>();
        let cfg = self.cfg.clone();
        std::thread::Builder::new()
            .name("idrelay-ldap-write".into())
            .spawn(move || write_thread(cfg, rx))
            .map_err(|e| WriteError::Link {
                error: LdapError::Worker {
                    detail: format!("cannot start the LDAP write thread: {e}"),
                },
                applied: 0,
            })?;
        *g = Some(tx.clone());
        Ok(tx)
    }
}

/// The write thread: one connection, bound on demand, jobs one at a time.
fn write_thread(cfg: DirectoryConfig, jobs: Receiver<WriteJob>) {
    let rt = match worker::current_thread_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("LDAP write thread: cannot start the tokio runtime: {e}");
            return;
        }
    };
    rt.block_on(async move {
        let mut conn: Option<ldap3::Ldap> = None;
        while let Ok((ops, reply)) = jobs.recv().await {
            let r = write_job(&cfg, &mut conn, ops).await;
            let _ = reply.send(r).await;
        }
        if let Some(c) = conn.take() {
            worker::close(c).await;
        }
    });
}

async fn write_job(
    cfg: &DirectoryConfig,
    conn: &mut Option<ldap3::Ldap>,
    ops: Vec<WriteOp>,
) -> Result<usize, WriteError> {
    let mut applied = 0usize;
    for op in ops {
        let link = |error: LdapError| WriteError::Link { error, applied };
        if conn.as_mut().is_none_or(|c| c.is_closed()) {
            let tls = write_tls(cfg).map_err(link)?;
            *conn = Some(conn::connect_bound(cfg, tls.as_ref()).await.map_err(link)?);
        }
        let mut ldap = conn.clone().expect("bound above");
        ldap.with_timeout(cfg.timeout);
        let verb = op.verb();
        let dn = op.dn().to_string();
        let what = || format!("LDAP {verb} of {dn:?}");
        let set =
            |values: Vec<Vec<u8>>| values.into_iter().collect::<std::collections::HashSet<_>>();
        let result = match op {
            WriteOp::Add { dn, attributes } => {
                let attrs = attributes
                    .into_iter()
                    .map(|(a, v)| (a.into_bytes(), set(v)))
                    .collect::<Vec<_>>();
                ldap.add(&dn, attrs).await
            }
            WriteOp::Modify { dn, changes } => {
                let mods = changes
                    .into_iter()
                    .map(|m| match m {
                        Modification::Add(a, v) => ldap3::Mod::Add(a.into_bytes(), set(v)),
                        Modification::Delete(a, v) => ldap3::Mod::Delete(a.into_bytes(), set(v)),
                        Modification::Replace(a, v) => ldap3::Mod::Replace(a.into_bytes(), set(v)),
                    })
                    .collect::<Vec<_>>();
                ldap.modify(&dn, mods).await
            }
            WriteOp::Rename { dn, new_rdn } => ldap.modifydn(&dn, &new_rdn, true, None).await,
            WriteOp::Delete { dn } => ldap.delete(&dn).await,
        };
        match result {
            Ok(res) if res.rc == 0 => applied += 1,
            Ok(res) => {
                return Err(WriteError::Refused {
                    op: verb,
                    dn,
                    code: ResultCode(res.rc),
                    message: res.text,
                    applied,
                })
            }
            Err(e) => {
                let error = conn::op_error(cfg, e, what);
                // A broken link: bind a new connection next time.
                *conn = None;
                return Err(WriteError::Link { error, applied });
            }
        }
    }
    Ok(applied)
}

/// The TLS set-up of the write connection: the read worker's own decision
/// ([`conn::tls_mode`]: scheme and StartTLS checked together, `ldaps://` with StartTLS
/// refused), so both sides connect alike.
fn write_tls(
    cfg: &DirectoryConfig,
) -> Result<Option<(&'static str, Arc<futures_rustls::rustls::ClientConfig>)>, LdapError> {
    let Some(mode) = conn::tls_mode(&cfg.url, cfg.starttls)? else {
        return Ok(None);
    };
    Ok(Some((
        mode,
        tls::client_setup(cfg.ca_file.as_deref())?.config,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    /// Regression: the write connection decided ldaps/StartTLS by itself and took an
    /// `ldaps://` URL with StartTLS, or an unknown scheme, that the read side refuses.
    #[test]
    fn the_write_side_decides_tls_as_the_read_side_does() {
        let cfg = |url: &str, starttls: bool| DirectoryConfig {
            starttls,
            ..DirectoryConfig::new(url, "cn=x", Secret::new("p"))
        };
        assert!(write_tls(&cfg("ldap://127.0.0.1:389", false))
            .unwrap()
            .is_none());
        assert!(write_tls(&cfg("ldaps://127.0.0.1:636", true)).is_err());
        assert!(write_tls(&cfg("ldapx://127.0.0.1:389", false)).is_err());
        assert!(write_tls(&cfg("ldap://", false)).is_err());
    }
}
