//! `storage = "sqlite"`: the hub's [`Store`] in one SQLite file, `state_dir/hub.sqlite`
//! (SQLite itself, compiled into the hub by rusqlite's `bundled` feature).
//!
//! Invariants:
//! * `state_dir` is created 0700 and refused when another user owns it or its group or
//!   others may write to it (the agent's rule, [`crate::state_dir::judge`]); the database
//!   is created 0600, never through a symlink, and SQLite gives its `-wal` file the same
//!   mode.
//! * One hub process per file: the connection takes SQLite's exclusive lock at open
//!   (`locking_mode = EXCLUSIVE`), so a second hub on the same `state_dir` stops at start
//!   with an error naming the file.
//! * The schema is versioned (`schema_version`); [`MIGRATIONS`] runs at open, each step in
//!   its own transaction; a file written by a newer hub is refused, not changed.
//! * Write-ahead log with `synchronous = NORMAL`: a committed change survives the process
//!   being killed (SIGKILL); after a power loss the last commits before it may be lost
//!   (the agents' redelivery and answer cache absorb that).
//! * A file that is not a database or fails `PRAGMA quick_check` stops the start with an
//!   error naming the file; nothing is repaired or replaced.
//! * Every call blocks: the server runs them on blocking threads.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use super::store::{
    Change, Snapshot, Store, StoreError, StoredLease, StoredRequest, StoredResult, StoredSeen,
};

/// The database file's name in `state_dir`.
pub const FILE_NAME: &str = "hub.sqlite";

/// The schema, one step per version (version = index + 1). Never edit a step that has
/// shipped: add one.
pub const MIGRATIONS: [&str; 1] = [
    // 1: requests (commands) waiting for their answer, kept answers, last heartbeats,
    // leases. `n` orders requests and answers oldest first.
    "CREATE TABLE requests (
        n INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        agent TEXT NOT NULL,
        command TEXT NOT NULL,
        envelope TEXT NOT NULL,
        enqueued_ms INTEGER NOT NULL,
        delivered_ms INTEGER,
        deliveries INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE results (
        n INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        agent TEXT NOT NULL,
        command TEXT NOT NULL,
        status INTEGER NOT NULL,
        body TEXT NOT NULL
    );
    CREATE TABLE agents (
        agent TEXT PRIMARY KEY,
        instance TEXT NOT NULL,
        seen_ms INTEGER NOT NULL,
        heartbeat TEXT NOT NULL
    );
    CREATE TABLE leases (
        grp TEXT PRIMARY KEY,
        agent TEXT NOT NULL,
        instance TEXT NOT NULL,
        renewed_ms INTEGER NOT NULL,
        granted_ms INTEGER NOT NULL
    );",
];

/// The hub's state in `state_dir/hub.sqlite`.
pub struct SqliteStore {
    file: PathBuf,
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Prepares `state_dir`, opens (or creates) the database, checks and migrates it.
    pub fn open(state_dir: &Path) -> Result<SqliteStore, StoreError> {
        prepare_dir(state_dir)?;
        let file = state_dir.join(FILE_NAME);
        let db = |e: &dyn std::fmt::Display| StoreError::Database {
            file: file.clone(),
            message: e.to_string(),
        };
        // Created here, 0600 and without following a symlink, before SQLite opens it.
        crate::state_dir::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&file)
            .map_err(|e| db(&format_args!("cannot create or open it: {e}")))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| db(&format_args!("cannot set its mode to 0600: {e}")))?;
        }
        let mut conn = Connection::open_with_flags(
            &file,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| db(&e))?;
        conn.busy_timeout(std::time::Duration::from_secs(2))
            .map_err(|e| db(&e))?;
        conn.execute_batch("PRAGMA locking_mode = EXCLUSIVE; PRAGMA journal_mode = WAL;")
            .map_err(|e| db(&unusable(&e)))?;
        conn.execute_batch("PRAGMA synchronous = NORMAL; BEGIN IMMEDIATE; COMMIT;")
            .map_err(|e| db(&unusable(&e)))?;
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| db(&unusable(&e)))?;
        if check != "ok" {
            return Err(db(&format_args!(
                "the database is damaged ({check}); move it away to start empty"
            )));
        }
        migrate(&mut conn).map_err(|e| db(&e))?;
        Ok(SqliteStore {
            file,
            conn: Mutex::new(conn),
        })
    }

    /// The database file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    fn error(&self, e: rusqlite::Error) -> StoreError {
        StoreError::Database {
            file: self.file.clone(),
            message: e.to_string(),
        }
    }
}

/// Says what a failure at open most likely means.
fn unusable(e: &rusqlite::Error) -> String {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked) => {
            format!("{e}: another idrelay-hub uses this state_dir")
        }
        Some(rusqlite::ErrorCode::NotADatabase) | Some(rusqlite::ErrorCode::DatabaseCorrupt) => {
            format!("{e}: the file is not a usable hub database; move it away to start empty")
        }
        _ => e.to_string(),
    }
}

/// Creates `dir` 0700, or checks an existing one (owner, no group/other write): the
/// agent's rule and mechanism ([`crate::state_dir::prepare`]), told in the hub's words.
fn prepare_dir(dir: &Path) -> Result<(), StoreError> {
    use crate::state_dir::StateDirError;
    let message = match crate::state_dir::prepare(dir) {
        Ok(()) => return Ok(()),
        Err(_) if dir.exists() && !dir.is_dir() => "is not a directory".to_string(),
        Err(StateDirError::Io { what, source, .. }) => format!("cannot {what}: {source}"),
        Err(StateDirError::Owner { owner, euid, .. }) => format!(
            "is owned by uid {owner}, but the hub runs as uid {euid}; chown it to the hub's user"
        ),
        Err(StateDirError::Mode { mode, .. }) => {
            format!("has mode {mode:04o}: its group or others may write to it; chmod 700 it")
        }
    };
    Err(StoreError::StateDir {
        dir: dir.to_path_buf(),
        message,
    })
}

/// Brings the schema to the last version of [`MIGRATIONS`].
fn migrate(conn: &mut Connection) -> Result<(), String> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .map_err(|e| e.to_string())?;
    let current: i64 = conn
        .query_row("SELECT max(version) FROM schema_version", [], |r| {
            r.get::<_, Option<i64>>(0)
        })
        .map_err(|e| e.to_string())?
        .unwrap_or(0);
    let known = MIGRATIONS.len() as i64;
    if current > known {
        return Err(format!(
            "schema version {current} was written by a newer idrelay-hub (this one knows up \
             to {known}); run that version or move the file away"
        ));
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| e.to_string())?;
        tx.execute_batch(step)
            .map_err(|e| format!("migration to schema version {}: {e}", i + 1))?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            [i as i64 + 1],
        )
        .map_err(|e| e.to_string())?;
        tx.commit().map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn unms(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Store for SqliteStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let run = || -> rusqlite::Result<Snapshot> {
            let mut snap = Snapshot::default();
            let mut q = conn.prepare(
                "SELECT id, agent, command, envelope, enqueued_ms, delivered_ms, deliveries \
                 FROM requests ORDER BY n",
            )?;
            let rows = q.query_map([], |r| {
                Ok(StoredRequest {
                    id: r.get(0)?,
                    agent: r.get(1)?,
                    command: r.get(2)?,
                    envelope: r.get(3)?,
                    enqueued_ms: unms(r.get(4)?),
                    delivered_ms: r.get::<_, Option<i64>>(5)?.map(unms),
                    deliveries: r.get(6)?,
                })
            })?;
            snap.requests = rows.collect::<Result<_, _>>()?;
            let mut q =
                conn.prepare("SELECT id, agent, command, status, body FROM results ORDER BY n")?;
            let rows = q.query_map([], |r| {
                Ok(StoredResult {
                    id: r.get(0)?,
                    agent: r.get(1)?,
                    command: r.get(2)?,
                    status: r.get(3)?,
                    body: r.get(4)?,
                })
            })?;
            snap.results = rows.collect::<Result<_, _>>()?;
            let mut q = conn
                .prepare("SELECT agent, instance, seen_ms, heartbeat FROM agents ORDER BY agent")?;
            let rows = q.query_map([], |r| {
                Ok(StoredSeen {
                    agent: r.get(0)?,
                    instance: r.get(1)?,
                    at_ms: unms(r.get(2)?),
                    body: r.get(3)?,
                })
            })?;
            snap.seen = rows.collect::<Result<_, _>>()?;
            let mut q = conn.prepare(
                "SELECT grp, agent, instance, renewed_ms, granted_ms FROM leases ORDER BY grp",
            )?;
            let rows = q.query_map([], |r| {
                Ok(StoredLease {
                    group: r.get(0)?,
                    agent: r.get(1)?,
                    instance: r.get(2)?,
                    renewed_ms: unms(r.get(3)?),
                    granted_ms: unms(r.get(4)?),
                })
            })?;
            snap.leases = rows.collect::<Result<_, _>>()?;
            Ok(snap)
        };
        run().map_err(|e| self.error(e))
    }

    fn apply(&self, changes: &[Change]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let run =
            |conn: &mut Connection| -> rusqlite::Result<()> {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                for c in changes {
                    match c {
                        Change::Queued(r) => {
                            tx.prepare(
                                "INSERT OR REPLACE INTO requests (id, agent, command, envelope, \
                             enqueued_ms, delivered_ms, deliveries) \
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                            )?
                            .execute(params![
                                r.id,
                                r.agent,
                                r.command,
                                r.envelope,
                                ms(r.enqueued_ms),
                                r.delivered_ms.map(ms),
                                r.deliveries
                            ])?;
                        }
                        Change::Delivered {
                            id,
                            at_ms,
                            deliveries,
                        } => {
                            tx.prepare(
                            "UPDATE requests SET delivered_ms = ?2, deliveries = ?3 WHERE id = ?1",
                        )?
                        .execute(params![id, at_ms.map(ms), deliveries])?;
                        }
                        Change::Gone { id } => {
                            tx.prepare("DELETE FROM requests WHERE id = ?1")?
                                .execute([id])?;
                        }
                        Change::Answered(a) => {
                            tx.prepare("DELETE FROM requests WHERE id = ?1")?
                                .execute([&a.id])?;
                            tx.prepare("DELETE FROM results WHERE id = ?1")?
                                .execute([&a.id])?;
                            tx.prepare(
                                "INSERT INTO results (id, agent, command, status, body) \
                             VALUES (?1, ?2, ?3, ?4, ?5)",
                            )?
                            .execute(params![a.id, a.agent, a.command, a.status, a.body])?;
                        }
                        Change::ResultDropped { id } => {
                            tx.prepare("DELETE FROM results WHERE id = ?1")?
                                .execute([id])?;
                        }
                        Change::Seen(s) => {
                            tx.prepare(
                            "INSERT OR REPLACE INTO agents (agent, instance, seen_ms, heartbeat) \
                             VALUES (?1, ?2, ?3, ?4)",
                        )?
                        .execute(params![s.agent, s.instance, ms(s.at_ms), s.body])?;
                        }
                        Change::Lease(l) => {
                            tx.prepare(
                                "INSERT OR REPLACE INTO leases \
                             (grp, agent, instance, renewed_ms, granted_ms) \
                             VALUES (?1, ?2, ?3, ?4, ?5)",
                            )?
                            .execute(params![
                                l.group,
                                l.agent,
                                l.instance,
                                ms(l.renewed_ms),
                                ms(l.granted_ms)
                            ])?;
                        }
                        Change::Forward(_) => {}
                    }
                }
                tx.commit()
            };
        run(&mut conn).map_err(|e| self.error(e))
    }

    fn describe(&self) -> String {
        format!("SQLite {}", self.file.display())
    }
}

/// The schema version of the database at `file` (for tests and diagnostics).
pub fn schema_version(file: &Path) -> Result<Option<i64>, String> {
    let conn = Connection::open_with_flags(file, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| e.to_string())?;
    conn.query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0))
        .optional()
        .map(Option::flatten)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::store::contract;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "idrelay-hubstore-{tag}-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn the_sqlite_store_keeps_the_contract_across_reopens() {
        let dir = scratch("contract");
        let d = dir.clone();
        contract::holds(&move || Box::new(SqliteStore::open(&d).unwrap()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&dir), 0o700);
            assert_eq!(mode(&dir.join(FILE_NAME)), 0o600);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn migrations_are_versioned_and_a_newer_schema_is_refused() {
        let dir = scratch("migrate");
        drop(SqliteStore::open(&dir).unwrap());
        let file = dir.join(FILE_NAME);
        assert_eq!(schema_version(&file), Ok(Some(MIGRATIONS.len() as i64)));
        // Opening again runs nothing twice.
        drop(SqliteStore::open(&dir).unwrap());
        assert_eq!(schema_version(&file), Ok(Some(MIGRATIONS.len() as i64)));
        {
            let c = Connection::open(&file).unwrap();
            c.execute("INSERT INTO schema_version (version) VALUES (99)", [])
                .unwrap();
        }
        let e = SqliteStore::open(&dir).err().unwrap().to_string();
        assert!(e.contains(FILE_NAME) && e.contains("newer"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_that_is_not_a_database_is_named_and_left_alone() {
        let dir = scratch("corrupt");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(FILE_NAME);
        let junk = vec![0x5au8; 8192];
        std::fs::write(&file, &junk).unwrap();
        let e = SqliteStore::open(&dir).err().unwrap().to_string();
        assert!(
            e.contains(&file.display().to_string()) && e.contains("not a usable hub database"),
            "{e}"
        );
        assert_eq!(std::fs::read(&file).unwrap(), junk, "left as it was");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn one_hub_per_file() {
        let dir = scratch("lock");
        let first = SqliteStore::open(&dir).unwrap();
        let e = SqliteStore::open(&dir).err().unwrap().to_string();
        assert!(e.contains("another idrelay-hub"), "{e}");
        drop(first);
        SqliteStore::open(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_state_dir_others_may_write_is_refused_naming_the_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("mode");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = SqliteStore::open(&dir).err().unwrap().to_string();
        assert!(e.contains("`state_dir`") && e.contains("0777"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
