//! The hub's storage seam: what of [`super::state::HubState`] outlives the process, as a
//! journal of changes the state records and a snapshot it is rebuilt from at start.
//!
//! Owns: the [`Store`] trait, its records ([`Change`], [`Snapshot`]), [`MemoryStore`]
//! (`storage = "memory"`, tests only) and [`open`], which picks the store the config names
//! (`storage = "sqlite"`: [`super::sqlite::SqliteStore`]).
//!
//! Invariants:
//! * What is kept: operator commands queued and not yet answered (with their delivery
//!   time and count), command answers (the last `results`), each agent's last heartbeat,
//!   each group's lease. SCIM forwards are not kept: the operator waiting for one is gone
//!   with the process, and a write carried out after its caller saw it fail is worse than
//!   none (a shared store holds one only while its caller waits, [`Change::Forward`]).
//! * Changes are applied in the order the state recorded them, a call's changes in one
//!   transaction; the server writes a change before it answers the request that made it
//!   (a `202` for a command, a poll's batch, the `204` to an agent's answers).
//! * Times are wall-clock milliseconds since the Unix epoch ([`Change`] and [`Snapshot`]);
//!   the state maps them to and from its monotonic clock.
//! * Every call may block (disk): the server runs them on blocking threads
//!   (`smol::unblock`), never on the executor.
//!
//! The seam and PostgreSQL (`storage = "postgres"`, [`super::postgres`]): a shared
//! database adds what must be decided inside it, not in one process's memory
//! ([`Store::shared`], [`super::shared::Shared`]): a group's lease (the pure rule of
//! [`super::lease::on_heartbeat`] run in a transaction holding the lease row's lock), the
//! claim of a poll's batch (`FOR UPDATE SKIP LOCKED`), and the changes other replicas made
//! (`LISTEN/NOTIFY`). The records here are the rows each store holds.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;

/// A request kept for its agent (an operator command).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRequest {
    /// Request id (`r-...`).
    pub id: String,
    /// The agent it is queued for.
    pub agent: String,
    /// The command's wire name.
    pub command: String,
    /// The envelope, JSON text.
    pub envelope: String,
    /// When it was queued (ms since the epoch).
    pub enqueued_ms: u64,
    /// When it was last handed to a poll, `None`: never (or handed back).
    pub delivered_ms: Option<u64>,
    /// How often it was handed to a poll.
    pub deliveries: u32,
}

/// An answer to an operator command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResult {
    /// Request id.
    pub id: String,
    /// The agent that answered.
    pub agent: String,
    /// The command's wire name.
    pub command: String,
    /// The agent's status.
    pub status: u16,
    /// The body as kept (JSON text, `null` when none).
    pub body: String,
}

/// An agent's last heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSeen {
    /// Agent id.
    pub agent: String,
    /// Its instance.
    pub instance: String,
    /// When (ms since the epoch).
    pub at_ms: u64,
    /// The heartbeat body, JSON text.
    pub body: String,
}

/// A group's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLease {
    /// Group name.
    pub group: String,
    /// Holder agent id.
    pub agent: String,
    /// Holder instance.
    pub instance: String,
    /// Last renewal (ms since the epoch).
    pub renewed_ms: u64,
    /// When the holder got it (ms since the epoch).
    pub granted_ms: u64,
}

/// One change of the kept state, in the order the state made them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A command was queued.
    Queued(StoredRequest),
    /// A request was handed to a poll (`Some`), or handed back as never delivered (`None`).
    Delivered {
        /// Request id.
        id: String,
        /// When.
        at_ms: Option<u64>,
        /// Deliveries so far.
        deliveries: u32,
    },
    /// A request left the queue without an answer to keep (withdrawn).
    Gone {
        /// Request id.
        id: String,
    },
    /// A command was answered: out of the queue, its answer kept.
    Answered(StoredResult),
    /// A kept answer was dropped (the oldest, past `results`).
    ResultDropped {
        /// Request id.
        id: String,
    },
    /// A heartbeat.
    Seen(StoredSeen),
    /// A group's lease as it is now.
    Lease(StoredLease),
    /// A SCIM forward beside other replicas: recorded only when the store is shared
    /// ([`Store::shared`]); a store of one process ignores it (forwards are not kept).
    Forward(super::shared::ForwardChange),
}

/// Everything a store holds, to rebuild the state from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Queued requests, oldest first.
    pub requests: Vec<StoredRequest>,
    /// Kept answers, oldest first.
    pub results: Vec<StoredResult>,
    /// Last heartbeats, by agent id.
    pub seen: Vec<StoredSeen>,
    /// Leases, by group.
    pub leases: Vec<StoredLease>,
}

/// Why the store failed; names the file.
#[derive(Debug)]
pub enum StoreError {
    /// The state directory is unusable (`state_dir`).
    StateDir {
        /// The directory.
        dir: PathBuf,
        /// What is wrong and the fix.
        message: String,
    },
    /// The PostgreSQL database cannot be reached, read or written.
    Postgres {
        /// The database as [`super::pg_config::PgTarget::describe`] names it (no password).
        database: String,
        /// What failed.
        message: String,
    },
    /// The database cannot be opened, read or written.
    Database {
        /// The database file.
        file: PathBuf,
        /// What failed.
        message: String,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::StateDir { dir, message } => {
                write!(f, "hub `state_dir` {}: {message}", dir.display())
            }
            StoreError::Postgres { database, message } => {
                write!(f, "hub {database}: {message}")
            }
            StoreError::Database { file, message } => {
                write!(f, "hub database {}: {message}", file.display())
            }
        }
    }
}

impl std::error::Error for StoreError {}

/// Where the hub keeps what outlives the process.
pub trait Store: Send + Sync {
    /// Everything kept, to rebuild the state from at start.
    fn load(&self) -> Result<Snapshot, StoreError>;
    /// Applies `changes` in order, all or none.
    fn apply(&self, changes: &[Change]) -> Result<(), StoreError>;
    /// What it is, for the log (`SQLite /var/lib/idrelay-hub/hub.sqlite`).
    fn describe(&self) -> String {
        "memory (nothing outlives the process)".into()
    }
    /// The operations replicas on one database decide in it (`storage = "postgres"`);
    /// `None`: this process alone decides, in memory.
    fn shared(&self) -> Option<&dyn super::shared::Shared> {
        None
    }
}

/// Which store the config names (`storage`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// `memory`: nothing outlives the process (tests).
    Memory,
    /// `sqlite`: one file in `state_dir`.
    Sqlite {
        /// `state_dir`.
        state_dir: PathBuf,
    },
    /// `postgres`: one database, shared by every replica.
    Postgres(Box<super::pg_config::PgTarget>),
}

/// Opens the store `storage` names (creating the state directory and the database, and
/// migrating it, for SQLite).
pub fn open(storage: &Storage) -> Result<Box<dyn Store>, StoreError> {
    match storage {
        Storage::Memory => Ok(Box::new(MemoryStore::default())),
        Storage::Sqlite { state_dir } => Ok(Box::new(super::sqlite::SqliteStore::open(state_dir)?)),
        Storage::Postgres(target) => Ok(Box::new(super::postgres::PgStore::open(target)?)),
    }
}

/// The rows of a store, in memory.
#[derive(Debug, Default)]
struct Rows {
    /// Queued requests by insertion number, and that number by id.
    requests: BTreeMap<u64, StoredRequest>,
    request_n: HashMap<String, u64>,
    /// Kept answers by insertion number, and that number by id.
    results: BTreeMap<u64, StoredResult>,
    result_n: HashMap<String, u64>,
    seen: BTreeMap<String, StoredSeen>,
    leases: BTreeMap<String, StoredLease>,
    next: u64,
}

impl Rows {
    fn remove_request(&mut self, id: &str) {
        if let Some(n) = self.request_n.remove(id) {
            self.requests.remove(&n);
        }
    }

    fn remove_result(&mut self, id: &str) {
        if let Some(n) = self.result_n.remove(id) {
            self.results.remove(&n);
        }
    }
}

/// `storage = "memory"`: the same rows as the SQLite store, gone with the process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    rows: Mutex<Rows>,
}

impl Store for MemoryStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        Ok(Snapshot {
            requests: rows.requests.values().cloned().collect(),
            results: rows.results.values().cloned().collect(),
            seen: rows.seen.values().cloned().collect(),
            leases: rows.leases.values().cloned().collect(),
        })
    }

    fn apply(&self, changes: &[Change]) -> Result<(), StoreError> {
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        for c in changes {
            rows.next += 1;
            let n = rows.next;
            match c {
                Change::Queued(r) => {
                    rows.remove_request(&r.id);
                    rows.request_n.insert(r.id.clone(), n);
                    rows.requests.insert(n, r.clone());
                }
                Change::Delivered {
                    id,
                    at_ms,
                    deliveries,
                } => {
                    let at = rows.request_n.get(id).copied();
                    if let Some(r) = at.and_then(|n| rows.requests.get_mut(&n)) {
                        r.delivered_ms = *at_ms;
                        r.deliveries = *deliveries;
                    }
                }
                Change::Gone { id } => rows.remove_request(id),
                Change::Answered(a) => {
                    rows.remove_request(&a.id);
                    rows.remove_result(&a.id);
                    rows.result_n.insert(a.id.clone(), n);
                    rows.results.insert(n, a.clone());
                }
                Change::ResultDropped { id } => rows.remove_result(id),
                Change::Seen(s) => {
                    rows.seen.insert(s.agent.clone(), s.clone());
                }
                Change::Lease(l) => {
                    rows.leases.insert(l.group.clone(), l.clone());
                }
                Change::Forward(_) => {}
            }
        }
        Ok(())
    }
}

/// One test body for every store: what is applied comes back from `load`, in order.
#[cfg(test)]
pub(crate) mod contract {
    use super::*;

    pub fn request(id: &str, agent: &str, ms: u64) -> StoredRequest {
        StoredRequest {
            id: id.into(),
            agent: agent.into(),
            command: "resync".into(),
            envelope: format!(r#"{{"id":"{id}","kind":"command","command":"resync"}}"#),
            enqueued_ms: ms,
            delivered_ms: None,
            deliveries: 0,
        }
    }

    /// Runs the contract against `open()`, which must open the same store again each time
    /// (a restart).
    pub fn holds(open: &dyn Fn() -> Box<dyn Store>) {
        let s = open();
        assert_eq!(s.load().unwrap(), Snapshot::default());
        s.apply(&[
            Change::Queued(request("r-1", "a1", 10)),
            Change::Queued(request("r-2", "a1", 11)),
            Change::Queued(request("r-3", "a2", 12)),
        ])
        .unwrap();
        s.apply(&[
            Change::Delivered {
                id: "r-1".into(),
                at_ms: Some(20),
                deliveries: 1,
            },
            Change::Delivered {
                id: "r-2".into(),
                at_ms: Some(20),
                deliveries: 1,
            },
            Change::Delivered {
                id: "r-2".into(),
                at_ms: None,
                deliveries: 0,
            },
            Change::Gone { id: "r-3".into() },
            Change::Answered(StoredResult {
                id: "r-0".into(),
                agent: "a1".into(),
                command: "resync".into(),
                status: 202,
                body: r#"{"accepted":"resync"}"#.into(),
            }),
            Change::Seen(StoredSeen {
                agent: "a1".into(),
                instance: "i1".into(),
                at_ms: 30,
                body: "{}".into(),
            }),
            Change::Seen(StoredSeen {
                agent: "a1".into(),
                instance: "i2".into(),
                at_ms: 31,
                body: r#"{"group":"g"}"#.into(),
            }),
            Change::Lease(StoredLease {
                group: "g".into(),
                agent: "a1".into(),
                instance: "i2".into(),
                renewed_ms: 31,
                granted_ms: 30,
            }),
        ])
        .unwrap();
        drop(s);
        let s = open();
        let snap = s.load().unwrap();
        let mut r1 = request("r-1", "a1", 10);
        r1.delivered_ms = Some(20);
        r1.deliveries = 1;
        assert_eq!(snap.requests, vec![r1, request("r-2", "a1", 11)]);
        assert_eq!(snap.results.len(), 1);
        assert_eq!(snap.results[0].status, 202);
        assert_eq!(snap.seen.len(), 1);
        assert_eq!(
            (snap.seen[0].instance.as_str(), snap.seen[0].at_ms),
            ("i2", 31)
        );
        assert_eq!(snap.leases[0].instance, "i2");

        // Answered: out of the queue, its answer kept after the older one; the oldest
        // dropped.
        s.apply(&[
            Change::Answered(StoredResult {
                id: "r-1".into(),
                agent: "a1".into(),
                command: "resync".into(),
                status: 200,
                body: "null".into(),
            }),
            Change::ResultDropped { id: "r-0".into() },
        ])
        .unwrap();
        let snap = s.load().unwrap();
        assert_eq!(snap.requests.len(), 1);
        assert_eq!(snap.requests[0].id, "r-2");
        let ids: Vec<&str> = snap.results.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["r-1"]);

        // Many in one call, oldest first on load.
        let many: Vec<Change> = (0..500)
            .map(|i| Change::Queued(request(&format!("m-{i:04}"), "a2", 100 + i)))
            .collect();
        s.apply(&many).unwrap();
        drop(s);
        let snap = open().load().unwrap();
        assert_eq!(snap.requests.len(), 501);
        assert_eq!(snap.requests[1].id, "m-0000");
        assert_eq!(snap.requests[500].id, "m-0499");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A store handed out again on every "open", as a restart within one process sees it.
    struct Shared(Arc<MemoryStore>);

    impl Store for Shared {
        fn load(&self) -> Result<Snapshot, StoreError> {
            self.0.load()
        }
        fn apply(&self, changes: &[Change]) -> Result<(), StoreError> {
            self.0.apply(changes)
        }
    }

    #[test]
    fn the_memory_store_keeps_the_contract() {
        let store = Arc::new(MemoryStore::default());
        contract::holds(&|| Box::new(Shared(store.clone())));
    }
}
