//! `storage = "postgres"`: the hub's [`Store`] in one PostgreSQL database, shared by every
//! replica of the hub ([`Shared`]): the `postgres` crate (its own small tokio runtime per
//! connection, every call blocking; the server calls it on blocking threads), no TLS.
//!
//! Invariants:
//! * The URL never appears in a log line or an error ([`PgTarget::describe`] names host,
//!   port and database only).
//! * The schema is versioned (`schema_version`); [`MIGRATIONS`] run at open in one
//!   transaction under an advisory lock, so replicas starting together migrate once; a
//!   database written by a newer hub is refused, not changed.
//! * Rows as in SQLite, plus `requests.claimed_by` (the replica that holds a delivery).
//!   Every connection of a replica names it (`application_name` = `idrelay-hub
//!   <replica>`); a delivery held by a replica with no connection left (killed, its
//!   sockets closed) is free for the next claim at once, not after `redeliver_secs`.
//!   The journal's deliveries and leases are not written as they come: the claim
//!   ([`Shared::claim`]) and the lease decision ([`Shared::lease`]) write them, in the
//!   database, under row locks, on the database's clock.
//! * Every queued, answered or withdrawn command is announced with `NOTIFY` in the
//!   transaction that writes it (delivered to the listeners at commit); each replica
//!   listens on one connection of its own (`listen`) and also reads every queued request
//!   at start, after a reconnect and every [`RECHECK`], so a missed notification costs at
//!   most that long; the re-check also reads the heartbeats recorded since the last one
//!   and the leases, for each replica's agent listing.
//! * SCIM forwards (`forwards`, schema version 2) are rows only while their caller waits
//!   ([`super::shared`]'s rules): `s` announces one queued, `f` one answered (the replica
//!   that queued it takes the answer out, deleting the row), `g` one answered where it
//!   was queued or given up. Rows past their expiry are never claimed and are deleted by
//!   the re-check, which also reads the waiting forwards and takes out this replica's
//!   answers (a notification lost with a connection).
//! * A lost connection is opened again at the next call; a call that fails reports the
//!   database's message, which never holds the password.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls, Row, Statement};
use smol::channel::{Receiver, Sender};

use super::lease::Grant;
use super::pg_config::PgTarget;
use super::shared::{decide_lease, Claim, Event, ForwardChange, Shared};
use super::store::{
    Change, Snapshot, Store, StoreError, StoredLease, StoredRequest, StoredResult, StoredSeen,
};

/// The schema, one step per version (version = index + 1). Never edit a step that has
/// shipped: add one.
pub const MIGRATIONS: [&str; 2] = [
    // 1: as SQLite's first step, with the claim's `claimed_by`.
    "CREATE TABLE requests (
        n BIGSERIAL PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        agent TEXT NOT NULL,
        command TEXT NOT NULL,
        envelope TEXT NOT NULL,
        enqueued_ms BIGINT NOT NULL,
        delivered_ms BIGINT,
        deliveries INTEGER NOT NULL DEFAULT 0,
        claimed_by TEXT
    );
    CREATE TABLE results (
        n BIGSERIAL PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        agent TEXT NOT NULL,
        command TEXT NOT NULL,
        status INTEGER NOT NULL,
        body TEXT NOT NULL
    );
    CREATE TABLE agents (
        agent TEXT PRIMARY KEY,
        instance TEXT NOT NULL,
        seen_ms BIGINT NOT NULL,
        heartbeat TEXT NOT NULL
    );
    CREATE TABLE leases (
        grp TEXT PRIMARY KEY,
        agent TEXT NOT NULL,
        instance TEXT NOT NULL,
        renewed_ms BIGINT NOT NULL,
        granted_ms BIGINT NOT NULL
    );",
    // 2: SCIM forwards in flight between replicas (a row only while its caller waits).
    "CREATE TABLE forwards (
        n BIGSERIAL PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        agent TEXT NOT NULL,
        envelope TEXT NOT NULL,
        origin TEXT NOT NULL,
        expires_ms BIGINT NOT NULL,
        delivered_ms BIGINT,
        claimed_by TEXT,
        status INTEGER,
        answer TEXT
    );
    CREATE INDEX forwards_expiry ON forwards (expires_ms);",
];

/// The `LISTEN`/`NOTIFY` channel.
pub const CHANNEL: &str = "idrelay_hub";
/// How often the listener reads every queued request, notifications or not.
pub const RECHECK: Duration = Duration::from_secs(30);
/// Connections for calls (the listener has its own).
const POOL: usize = 4;
/// How long past its expiry a forward's row is left before the re-check deletes it
/// (its replica deletes it itself at once; this is for a replica that died).
const FORWARD_SWEEP_MARGIN: Duration = Duration::from_secs(5);
/// Any number, the same in every hub: the advisory lock migrations run under.
const MIGRATION_LOCK: i64 = 0x1d_7e1a_0001;

/// The `application_name` of a replica's connections, before its name.
const APP_NAME: &str = "idrelay-hub";

const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// Statements prepared once per connection.
struct Statements {
    queued: Statement,
    handed_back: Statement,
    delete_request: Statement,
    answered: Statement,
    delete_result: Statement,
    seen: Statement,
    notify: Statement,
    claim: Statement,
    claimed_elsewhere: Statement,
    lease_renew: Statement,
    lease_row: Statement,
    lease_lock: Statement,
    lease_set: Statement,
    forward_queued: Statement,
    forward_answered: Statement,
    forward_done: Statement,
    forward_handed_back: Statement,
    forward_claim: Statement,
    heartbeat_age: Statement,
}

struct Conn {
    client: Client,
    st: Statements,
}

/// The hub's state in PostgreSQL.
pub struct PgStore {
    target: PgTarget,
    replica: String,
    pool: Vec<Mutex<Option<Conn>>>,
    next: AtomicUsize,
    events: Receiver<Event>,
}

fn say(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => match std::error::Error::source(e) {
            Some(s) => format!("{e}: {s}"),
            None => e.to_string(),
        },
    }
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn unms(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A row of `SELECT agent, instance, seen_ms, heartbeat FROM agents`.
fn seen(r: &Row) -> StoredSeen {
    StoredSeen {
        agent: r.get(0),
        instance: r.get(1),
        at_ms: unms(r.get(2)),
        body: r.get(3),
    }
}

/// A row of `SELECT grp, agent, instance, renewed_ms, granted_ms FROM leases`.
fn lease(r: &Row) -> StoredLease {
    StoredLease {
        group: r.get(0),
        agent: r.get(1),
        instance: r.get(2),
        renewed_ms: unms(r.get(3)),
        granted_ms: unms(r.get(4)),
    }
}

fn request(r: &Row) -> StoredRequest {
    StoredRequest {
        id: r.get(0),
        agent: r.get(1),
        command: r.get(2),
        envelope: r.get(3),
        enqueued_ms: unms(r.get(4)),
        delivered_ms: r.get::<_, Option<i64>>(5).map(unms),
        deliveries: u32::try_from(r.get::<_, i32>(6)).unwrap_or(0),
    }
}

fn result(r: &Row) -> StoredResult {
    StoredResult {
        id: r.get(0),
        agent: r.get(1),
        command: r.get(2),
        status: u16::try_from(r.get::<_, i32>(3)).unwrap_or(0),
        body: r.get(4),
    }
}

const REQUEST_COLUMNS: &str = "id, agent, command, envelope, enqueued_ms, delivered_ms, deliveries";

fn connect(target: &PgTarget) -> Result<Client, postgres::Error> {
    target.config.connect(NoTls)
}

fn prepare(mut client: Client) -> Result<Conn, postgres::Error> {
    let st = Statements {
        queued: client.prepare(
            "INSERT INTO requests (id, agent, command, envelope, enqueued_ms, delivered_ms, \
             deliveries) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
        )?,
        handed_back: client.prepare(
            "UPDATE requests SET delivered_ms = NULL, deliveries = $2, claimed_by = NULL \
             WHERE id = $1 AND claimed_by = $3",
        )?,
        delete_request: client.prepare("DELETE FROM requests WHERE id = $1")?,
        answered: client.prepare(
            "INSERT INTO results (id, agent, command, status, body) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, body = EXCLUDED.body",
        )?,
        delete_result: client.prepare("DELETE FROM results WHERE id = $1")?,
        seen: client.prepare(
            "INSERT INTO agents (agent, instance, seen_ms, heartbeat) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (agent) DO UPDATE SET instance = EXCLUDED.instance, \
             seen_ms = EXCLUDED.seen_ms, heartbeat = EXCLUDED.heartbeat",
        )?,
        notify: client.prepare("SELECT pg_notify($1, $2)")?,
        claim: client.prepare(&format!(
            "WITH due AS (
                SELECT id FROM requests
                WHERE id = ANY($1)
                  AND (delivered_ms IS NULL OR delivered_ms <= {NOW_MS} - $2
                    OR (claimed_by <> $3 AND NOT EXISTS (
                        SELECT 1 FROM pg_stat_activity
                        WHERE datname = current_database()
                          AND application_name = '{APP_NAME} ' || claimed_by)))
                FOR UPDATE SKIP LOCKED)
             UPDATE requests r SET delivered_ms = {NOW_MS},
                deliveries = r.deliveries + 1, claimed_by = $3
             FROM due WHERE r.id = due.id
             RETURNING r.id"
        ))?,
        claimed_elsewhere: client.prepare(&format!(
            "SELECT id, delivered_ms FROM requests WHERE id = ANY($1) \
             UNION ALL SELECT id, delivered_ms FROM forwards WHERE id = ANY($1) \
             AND status IS NULL AND expires_ms > {NOW_MS}"
        ))?,
        lease_renew: client.prepare(&format!(
            "UPDATE leases SET renewed_ms = {NOW_MS} \
             WHERE grp = $1 AND agent = $2 AND instance = $3 \
             RETURNING renewed_ms, granted_ms"
        ))?,
        lease_row: client.prepare(
            "INSERT INTO leases (grp, agent, instance, renewed_ms, granted_ms) \
             VALUES ($1, '', '', 0, 0) ON CONFLICT (grp) DO NOTHING",
        )?,
        lease_lock: client.prepare(&format!(
            "SELECT agent, instance, renewed_ms, granted_ms, {NOW_MS} FROM leases \
             WHERE grp = $1 FOR UPDATE"
        ))?,
        lease_set: client.prepare(
            "UPDATE leases SET agent = $2, instance = $3, renewed_ms = $4, granted_ms = $5 \
             WHERE grp = $1",
        )?,
        forward_queued: client.prepare(&format!(
            "INSERT INTO forwards (id, agent, envelope, origin, expires_ms) \
             VALUES ($1, $2, $3, $4, {NOW_MS} + $5) ON CONFLICT (id) DO NOTHING"
        ))?,
        forward_answered: client.prepare(
            "UPDATE forwards SET status = $2, answer = $3 WHERE id = $1 AND status IS NULL \
             RETURNING id",
        )?,
        forward_done: client.prepare("DELETE FROM forwards WHERE id = $1")?,
        forward_handed_back: client.prepare(
            "UPDATE forwards SET delivered_ms = NULL, claimed_by = NULL \
             WHERE id = $1 AND claimed_by = $2",
        )?,
        forward_claim: client.prepare(&format!(
            "WITH due AS (
                SELECT id FROM forwards
                WHERE id = ANY($1) AND status IS NULL AND expires_ms > {NOW_MS}
                  AND (delivered_ms IS NULL OR delivered_ms <= {NOW_MS} - $2)
                FOR UPDATE SKIP LOCKED)
             UPDATE forwards f SET delivered_ms = {NOW_MS}, claimed_by = $3
             FROM due WHERE f.id = due.id
             RETURNING f.id"
        ))?,
        heartbeat_age: client.prepare(&format!(
            "SELECT {NOW_MS} - seen_ms FROM agents WHERE agent = $1"
        ))?,
    };
    Ok(Conn { client, st })
}

/// Brings the schema to the last version of [`MIGRATIONS`], once for all replicas.
fn migrate(client: &mut Client) -> Result<(), String> {
    let mut tx = client.transaction().map_err(|e| say(&e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(|e| say(&e))?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .map_err(|e| say(&e))?;
    let current: i32 = tx
        .query_one("SELECT max(version) FROM schema_version", &[])
        .map_err(|e| say(&e))?
        .get::<_, Option<i32>>(0)
        .unwrap_or(0);
    let known = MIGRATIONS.len() as i32;
    if current > known {
        return Err(format!(
            "schema version {current} was written by a newer idrelay-hub (this one knows up \
             to {known}); run that version"
        ));
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.batch_execute(step)
            .map_err(|e| format!("migration to schema version {}: {}", i + 1, say(&e)))?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&(i as i32 + 1)],
        )
        .map_err(|e| say(&e))?;
    }
    tx.commit().map_err(|e| say(&e))
}

impl PgStore {
    /// Connects, migrates, and starts the listener (before anything is loaded, so no
    /// change of another replica falls between the load and the first notification).
    pub fn open(target: &PgTarget) -> Result<PgStore, StoreError> {
        let fail = |message: String| StoreError::Postgres {
            database: target.describe(),
            message,
        };
        let replica = format!("{:08x}-{}", fastrand::u32(..), std::process::id());
        // Every connection says whose it is: what frees a dead replica's deliveries.
        let mut named = target.clone();
        named
            .config
            .application_name(&format!("{APP_NAME} {replica}"));
        let target = &named;
        let mut first = connect(target).map_err(|e| fail(say(&e)))?;
        migrate(&mut first).map_err(fail)?;
        let first = prepare(first).map_err(|e| fail(say(&e)))?;
        let (tx, events) = smol::channel::unbounded();
        let listener = connect(target).map_err(|e| fail(say(&e)))?;
        {
            let target = target.clone();
            let replica = replica.clone();
            std::thread::Builder::new()
                .name("hub-pg-listen".into())
                .spawn(move || listen(&target, &replica, listener, &tx))
                .map_err(|e| fail(format!("cannot start the listener thread: {e}")))?;
        }
        let mut pool: Vec<Mutex<Option<Conn>>> = (0..POOL).map(|_| Mutex::new(None)).collect();
        pool[0] = Mutex::new(Some(first));
        Ok(PgStore {
            target: target.clone(),
            replica,
            pool,
            next: AtomicUsize::new(0),
            events,
        })
    }

    fn error(&self, message: String) -> StoreError {
        StoreError::Postgres {
            database: self.target.describe(),
            message,
        }
    }

    /// Runs `f` on a connection of the pool (a free one if any), opened again if it was
    /// lost.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let free = self.pool.iter().find_map(|m| m.try_lock().ok());
        let mut guard = match free {
            Some(g) => g,
            None => {
                let i = self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len();
                self.pool[i].lock().unwrap_or_else(|p| p.into_inner())
            }
        };
        if guard.as_ref().is_none_or(|c| c.client.is_closed()) {
            *guard = None;
            let conn = connect(&self.target)
                .and_then(prepare)
                .map_err(|e| self.error(say(&e)))?;
            *guard = Some(conn);
        }
        let conn = guard.as_mut().expect("connected above");
        let r = f(conn);
        if let Err(e) = &r {
            if conn.client.is_closed() || e.is_closed() {
                *guard = None;
            }
        }
        r.map_err(|e| self.error(say(&e)))
    }
}

impl Store for PgStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        self.with(|c| {
            let requests = c
                .client
                .query(
                    &format!("SELECT {REQUEST_COLUMNS} FROM requests ORDER BY n"),
                    &[],
                )?
                .iter()
                .map(request)
                .collect();
            let results = c
                .client
                .query(
                    "SELECT id, agent, command, status, body FROM results ORDER BY n",
                    &[],
                )?
                .iter()
                .map(result)
                .collect();
            let seen = c
                .client
                .query(
                    "SELECT agent, instance, seen_ms, heartbeat FROM agents ORDER BY agent",
                    &[],
                )?
                .iter()
                .map(seen)
                .collect();
            let leases = c
                .client
                .query(
                    "SELECT grp, agent, instance, renewed_ms, granted_ms FROM leases ORDER BY grp",
                    &[],
                )?
                .iter()
                .map(lease)
                .collect();
            Ok(Snapshot {
                requests,
                results,
                seen,
                leases,
            })
        })
    }

    fn apply(&self, changes: &[Change]) -> Result<(), StoreError> {
        // Deliveries and leases are written by the claim and the lease decision.
        let todo = changes.iter().any(|c| {
            !matches!(
                c,
                Change::Lease(_) | Change::Delivered { at_ms: Some(_), .. }
            )
        });
        if !todo {
            return Ok(());
        }
        let replica = self.replica.as_str();
        self.with(|c| {
            let st = &c.st;
            let mut tx = c.client.transaction()?;
            let announce = |tx: &mut postgres::Transaction<'_>, kind: char, id: &str| {
                tx.execute(&st.notify, &[&CHANNEL, &format!("{replica} {kind} {id}")])
                    .map(|_| ())
            };
            for ch in changes {
                match ch {
                    Change::Queued(r) => {
                        tx.execute(
                            &st.queued,
                            &[
                                &r.id,
                                &r.agent,
                                &r.command,
                                &r.envelope,
                                &ms(r.enqueued_ms),
                                &r.delivered_ms.map(ms),
                                &i32::try_from(r.deliveries).unwrap_or(i32::MAX),
                            ],
                        )?;
                        announce(&mut tx, 'q', &r.id)?;
                    }
                    Change::Delivered {
                        id,
                        at_ms: None,
                        deliveries,
                    } => {
                        let d = i32::try_from(*deliveries).unwrap_or(i32::MAX);
                        tx.execute(&st.handed_back, &[id, &d, &replica])?;
                        tx.execute(&st.forward_handed_back, &[id, &replica])?;
                    }
                    Change::Delivered { .. } | Change::Lease(_) => {}
                    Change::Gone { id } => {
                        tx.execute(&st.delete_request, &[id])?;
                        announce(&mut tx, 'g', id)?;
                    }
                    Change::Answered(a) => {
                        tx.execute(&st.delete_request, &[&a.id])?;
                        tx.execute(
                            &st.answered,
                            &[&a.id, &a.agent, &a.command, &i32::from(a.status), &a.body],
                        )?;
                        announce(&mut tx, 'a', &a.id)?;
                    }
                    Change::ResultDropped { id } => {
                        tx.execute(&st.delete_result, &[id])?;
                    }
                    Change::Seen(s) => {
                        tx.execute(&st.seen, &[&s.agent, &s.instance, &ms(s.at_ms), &s.body])?;
                    }
                    Change::Forward(ForwardChange::Queued {
                        id,
                        agent,
                        envelope,
                        timeout_ms,
                    }) => {
                        tx.execute(
                            &st.forward_queued,
                            &[id, agent, envelope, &replica, &ms(*timeout_ms)],
                        )?;
                        announce(&mut tx, 's', id)?;
                    }
                    Change::Forward(ForwardChange::Answered { id, status, body }) => {
                        // Nothing when its caller gave up (the row is gone): dropped.
                        let written =
                            tx.query_opt(&st.forward_answered, &[id, &i32::from(*status), body])?;
                        if written.is_some() {
                            announce(&mut tx, 'f', id)?;
                        }
                    }
                    Change::Forward(ForwardChange::Done { id }) => {
                        if tx.execute(&st.forward_done, &[id])? > 0 {
                            announce(&mut tx, 'g', id)?;
                        }
                    }
                }
            }
            tx.commit()
        })
    }

    fn describe(&self) -> String {
        format!("{} (replica {})", self.target.describe(), self.replica)
    }

    fn shared(&self) -> Option<&dyn Shared> {
        Some(self)
    }
}

impl Shared for PgStore {
    fn claim(&self, ids: &[String], redeliver: Duration) -> Result<Claim, StoreError> {
        if ids.is_empty() {
            return Ok(Claim::default());
        }
        let redeliver_ms = ms(redeliver.as_millis() as u64);
        self.with(|c| {
            let st = &c.st;
            let mut tx = c.client.transaction()?;
            let mut rows = tx.query(&st.claim, &[&ids, &redeliver_ms, &self.replica])?;
            rows.extend(tx.query(&st.forward_claim, &[&ids, &redeliver_ms, &self.replica])?);
            let taken: std::collections::HashSet<String> =
                rows.iter().map(|r| r.get::<_, String>(0)).collect();
            let rest: Vec<&String> = ids.iter().filter(|id| !taken.contains(*id)).collect();
            let mut claim = Claim {
                claimed: ids
                    .iter()
                    .filter(|id| taken.contains(*id))
                    .cloned()
                    .collect(),
                ..Claim::default()
            };
            if !rest.is_empty() {
                let found = tx.query(&st.claimed_elsewhere, &[&rest])?;
                let mut present = std::collections::HashMap::new();
                for r in &found {
                    present.insert(r.get::<_, String>(0), r.get::<_, Option<i64>>(1));
                }
                for id in rest {
                    match present.get(id) {
                        None => claim.gone.push(id.clone()),
                        // Locked by a claim in flight, or delivered within `redeliver`.
                        Some(at) => claim
                            .elsewhere
                            .push((id.clone(), at.map_or(0, unms).max(1))),
                    }
                }
            }
            tx.commit()?;
            Ok(claim)
        })
    }

    fn lease(
        &self,
        group: &str,
        agent: &str,
        instance: &str,
        ttl: Duration,
    ) -> Result<(StoredLease, Grant), StoreError> {
        self.with(|c| {
            let st = &c.st;
            // The holder renewing (nearly every heartbeat): the rule renews a holder's own
            // lease whatever its age, so one conditional statement under the row's lock
            // decides it.
            if let Some(r) = c
                .client
                .query_opt(&st.lease_renew, &[&group, &agent, &instance])?
            {
                let row = StoredLease {
                    group: group.into(),
                    agent: agent.into(),
                    instance: instance.into(),
                    renewed_ms: unms(r.get(0)),
                    granted_ms: unms(r.get(1)),
                };
                let grant = Grant {
                    active: true,
                    holder: agent.into(),
                    moved_from: None,
                };
                return Ok((row, grant));
            }
            let mut tx = c.client.transaction()?;
            tx.execute(&st.lease_row, &[&group])?;
            let r = tx.query_one(&st.lease_lock, &[&group])?;
            let now: i64 = r.get(4);
            let row = StoredLease {
                group: group.into(),
                agent: r.get(0),
                instance: r.get(1),
                renewed_ms: unms(r.get(2)),
                granted_ms: unms(r.get(3)),
            };
            let held = !row.agent.is_empty();
            let (next, mut grant) =
                decide_lease(held.then_some(&row), group, agent, instance, unms(now), ttl);
            if !held {
                grant.moved_from = Some(None);
            }
            if next != row {
                tx.execute(
                    &st.lease_set,
                    &[
                        &group,
                        &next.agent,
                        &next.instance,
                        &ms(next.renewed_ms),
                        &ms(next.granted_ms),
                    ],
                )?;
            }
            tx.commit()?;
            Ok((next, grant))
        })
    }

    fn heartbeat_age(&self, agent: &str) -> Result<Option<Duration>, StoreError> {
        self.with(|c| {
            let row = c.client.query_opt(&c.st.heartbeat_age, &[&agent])?;
            Ok(row.map(|r| Duration::from_millis(unms(r.get(0)))))
        })
    }

    fn events(&self) -> Receiver<Event> {
        self.events.clone()
    }

    fn replica(&self) -> &str {
        &self.replica
    }
}

/// Reads every queued request.
fn all_requests(client: &mut Client) -> Result<Vec<StoredRequest>, postgres::Error> {
    Ok(client
        .query(
            &format!("SELECT {REQUEST_COLUMNS} FROM requests ORDER BY n"),
            &[],
        )?
        .iter()
        .map(request)
        .collect())
}

/// The forwards waiting for their agent (of `ids`, or all), not past their expiry, as
/// requests (`command` empty).
fn live_forwards(
    client: &mut Client,
    ids: Option<&[String]>,
) -> Result<Vec<StoredRequest>, postgres::Error> {
    let sql = format!(
        "SELECT id, agent, envelope, delivered_ms FROM forwards \
         WHERE status IS NULL AND expires_ms > {NOW_MS} AND ($1::text[] IS NULL OR id = ANY($1)) \
         ORDER BY n"
    );
    Ok(client
        .query(&sql, &[&ids])?
        .iter()
        .map(|r| StoredRequest {
            id: r.get(0),
            agent: r.get(1),
            command: String::new(),
            envelope: r.get(2),
            enqueued_ms: 0,
            delivered_ms: r.get::<_, Option<i64>>(3).map(unms),
            deliveries: 0,
        })
        .collect())
}

/// Takes out (deletes) the answered forwards `replica` queued (of `ids`, or all), as
/// [`Event::ForwardAnswer`]s.
fn take_answers(
    client: &mut Client,
    replica: &str,
    ids: Option<&[String]>,
) -> Result<Vec<Event>, postgres::Error> {
    Ok(client
        .query(
            "DELETE FROM forwards WHERE origin = $1 AND status IS NOT NULL \
             AND ($2::text[] IS NULL OR id = ANY($2)) RETURNING id, agent, status, answer",
            &[&replica, &ids],
        )?
        .iter()
        .map(|r| Event::ForwardAnswer {
            id: r.get(0),
            agent: r.get(1),
            status: u16::try_from(r.get::<_, i32>(2)).unwrap_or(0),
            body: r.get(3),
        })
        .collect())
}

/// Heartbeats recorded at or after `since_ms`, and every lease; the newest `seen_ms`.
fn fleet(client: &mut Client, since_ms: i64) -> Result<(Event, i64), postgres::Error> {
    let seen: Vec<StoredSeen> = client
        .query(
            "SELECT agent, instance, seen_ms, heartbeat FROM agents WHERE seen_ms >= $1",
            &[&since_ms],
        )?
        .iter()
        .map(seen)
        .collect();
    let leases = client
        .query(
            "SELECT grp, agent, instance, renewed_ms, granted_ms FROM leases WHERE agent <> ''",
            &[],
        )?
        .iter()
        .map(lease)
        .collect();
    let newest = seen.iter().map(|s| ms(s.at_ms)).max().unwrap_or(since_ms);
    Ok((Event::Fleet(seen, leases), newest))
}

/// The listener: `LISTEN` on its own connection, each notification of another replica
/// turned into an [`Event`] with the row it names; every queued request at start, after a
/// reconnect and every [`RECHECK`]. Ends when the hub dropped the receiver.
fn listen(target: &PgTarget, replica: &str, first: Client, tx: &Sender<Event>) {
    let mut client = Some(first);
    let mut failures = 0u32;
    while !tx.is_closed() {
        let mut c = match client.take() {
            Some(c) => c,
            None => match connect(target) {
                Ok(c) => c,
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(60) {
                        log::warn!(
                            "{}: the listener cannot connect: {}; other replicas' changes reach \
                             this one late until it can",
                            target.describe(),
                            say(&e)
                        );
                    }
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            },
        };
        if let Err(e) = serve_listener(&mut c, replica, tx) {
            if !tx.is_closed() {
                log::warn!(
                    "{}: the listener lost its connection: {}; connecting again",
                    target.describe(),
                    say(&e)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn serve_listener(
    c: &mut Client,
    replica: &str,
    tx: &Sender<Event>,
) -> Result<(), postgres::Error> {
    c.batch_execute(&format!("LISTEN {CHANNEL}"))?;
    let mut checked = Instant::now();
    if tx.try_send(Event::Requests(all_requests(c)?)).is_err() {
        return Ok(());
    }
    for f in live_forwards(c, None)? {
        if tx.try_send(Event::Forward(f)).is_err() {
            return Ok(());
        }
    }
    // Heartbeats before this moment came with the snapshot; a minute of margin for
    // clocks and commits in flight.
    let mut seen_since = ms(super::state::WallClock::now().base_ms).saturating_sub(60_000);
    loop {
        let mut payloads = Vec::new();
        {
            let mut n = c.notifications();
            let wait = RECHECK.saturating_sub(checked.elapsed());
            if let Some(m) = n.timeout_iter(wait).next()? {
                payloads.push(m.payload().to_string());
            }
            let mut more = n.iter();
            while payloads.len() < 500 {
                match more.next()? {
                    Some(m) => payloads.push(m.payload().to_string()),
                    None => break,
                }
            }
        }
        let mut queued = Vec::new();
        let mut answered = Vec::new();
        let mut gone = Vec::new();
        let mut forwards = Vec::new();
        let mut forward_answers = Vec::new();
        for p in &payloads {
            let mut parts = p.splitn(3, ' ');
            let (Some(from), Some(kind), Some(id)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if from == replica {
                continue;
            }
            match kind {
                "q" => queued.push(id.to_string()),
                "a" => answered.push(id.to_string()),
                "g" => gone.push(id.to_string()),
                "s" => forwards.push(id.to_string()),
                "f" => forward_answers.push(id.to_string()),
                _ => {}
            }
        }
        if !forward_answers.is_empty() {
            // Those this replica waits for, taken out; the others are gone for it.
            let answers = take_answers(c, replica, Some(&forward_answers))?;
            gone.extend(forward_answers.into_iter().filter(|id| {
                !answers
                    .iter()
                    .any(|a| matches!(a, Event::ForwardAnswer { id: i, .. } if i == id))
            }));
            for a in answers {
                if tx.try_send(a).is_err() {
                    return Ok(());
                }
            }
        }
        let mut events: Vec<Event> = gone.into_iter().map(Event::Gone).collect();
        if !queued.is_empty() {
            let rows = c.query(
                &format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE id = ANY($1) ORDER BY n"),
                &[&queued],
            )?;
            events.extend(rows.iter().map(|r| Event::Queued(request(r))));
        }
        if !forwards.is_empty() {
            events.extend(
                live_forwards(c, Some(&forwards))?
                    .into_iter()
                    .map(Event::Forward),
            );
        }
        if !answered.is_empty() {
            let rows = c.query(
                "SELECT id, agent, command, status, body FROM results WHERE id = ANY($1) \
                 ORDER BY n",
                &[&answered],
            )?;
            events.extend(rows.iter().map(|r| Event::Answered(result(r))));
        }
        if checked.elapsed() >= RECHECK {
            checked = Instant::now();
            events.push(Event::Requests(all_requests(c)?));
            // Forwards past their expiry (their replica died, or could not delete them).
            c.execute(
                &format!("DELETE FROM forwards WHERE expires_ms < {NOW_MS} - $1"),
                &[&ms(FORWARD_SWEEP_MARGIN.as_millis() as u64)],
            )?;
            events.extend(live_forwards(c, None)?.into_iter().map(Event::Forward));
            // Answers for this replica whose notification was lost with a connection.
            events.extend(take_answers(c, replica, None)?);
            let (event, newest) = fleet(c, seen_since)?;
            events.push(event);
            // Rows committed a little late still come next time.
            seen_since = newest.saturating_sub(5_000).max(seen_since);
        }
        for e in events {
            if tx.try_send(e).is_err() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_create_every_table_the_store_names() {
        for t in ["requests", "results", "agents", "leases"] {
            assert!(
                MIGRATIONS[0].contains(&format!("CREATE TABLE {t} (")),
                "{t}"
            );
        }
        assert!(MIGRATIONS[0].contains("claimed_by"));
        assert!(MIGRATIONS[1].contains("CREATE TABLE forwards ("));
    }
}
