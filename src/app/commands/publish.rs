//! What a running agent publishes for `status`: the runtime file and the node_exporter textfile.

use super::*;

/// How often the running agent looks at its state for [`publish_runtime`].
const PUBLISH_TICK: std::time::Duration = std::time::Duration::from_secs(1);
/// The runtime file is rewritten at least this often (and at once on a change).
const RUNTIME_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// The textfile is rewritten at least this often (and at once on a change).
const PROM_EVERY: std::time::Duration = std::time::Duration::from_secs(15);

/// The status document for `c`: the files of the state directory, the queue's `stats`,
/// and the running agent's runtime state (`rt`, with its age) when one runs.
pub(super) fn status_document(
    c: &Config,
    running: bool,
    rt: Option<(&crate::status::Runtime, u64)>,
    stats: &crate::queue::QueueStats,
) -> crate::status::Document {
    use crate::status::{unix, Document, LastPass, QueueDoc};
    let now = unix(std::time::SystemTime::now());
    let gate = open_gate(c);
    let (held, settling, unmatched) = match &gate {
        Ok(g) => (
            g.held().len() as u64,
            (g.pending().len() + g.going().len()) as u64,
            g.unmatched().0,
        ),
        Err(_) => (0, 0, 0),
    };
    let last = crate::sync::follow::last_full_pass(&c.agent.state_dir).map(unix);
    let mut d = Document {
        agent: c.agent.id.clone(),
        healthy: false,
        problems: Vec::new(),
        running,
        pid: None,
        phase: None,
        runtime_age_secs: None,
        feed: Default::default(),
        endpoint: Default::default(),
        queue: QueueDoc {
            depth: stats.depth,
            bytes: stats.bytes,
            max_bytes: c.queue.max_bytes,
            oldest_age_secs: stats.oldest_age.map(|a| a.as_secs()),
            resync_owed: stats.resync_owed.is_some(),
            resync_reason: stats.resync_owed.map(|r| r.as_str().to_string()),
            resync_waiting_secs: 0,
        },
        held_deletes: held,
        settling_deletes: settling,
        parked: parked_docs(&c.agent.state_dir, now),
        unmatched_deletes: unmatched,
        last_full_pass: LastPass {
            at: last,
            age_secs: last.map(|t| now.saturating_sub(t)),
        },
        last_error: None,
    };
    d.apply_runtime(rt, now);
    d.endpoint.not_kept = crate::sync::kept::read(&c.agent.state_dir)
        .map(|k| k.attributes)
        .unwrap_or_default();
    let mut d = d.judge();
    if let Err(e) = gate {
        // It may hold deletes nobody has seen.
        d.problems.push(e);
        d.healthy = false;
    }
    d
}

/// The parked objects for the status document (an unreadable list: none, and `status`'s
/// text says why).
fn parked_docs(state_dir: &std::path::Path, now: u64) -> Vec<crate::status::ParkedDoc> {
    let Ok(p) = crate::sync::follow::parking::Parking::open(state_dir) else {
        return Vec::new();
    };
    p.entries()
        .iter()
        .map(|e| crate::status::ParkedDoc {
            kind: e.kind.clone(),
            dn: e.dn.clone(),
            reason: e.reason.clone(),
            attempts: e.attempts,
            first_failed_at: e.first_at,
            next_try_in_secs: e.next_at.saturating_sub(now),
        })
        .collect()
}

/// Writes the node_exporter textfile; a failure is logged, never fatal.
pub(super) fn write_prom(c: &Config, doc: &crate::status::Document) {
    let path = c.agent.state_dir.join(crate::status::PROM_FILE);
    if let Err(e) = crate::status::write_private(&path, crate::status::render_prom(doc).as_bytes())
    {
        log::debug!("cannot write {}: {e}", path.display());
    }
}

/// The running agent's side of `status`: every [`PUBLISH_TICK`] it looks at its state and
/// writes `runtime.json` when it changed (at least every [`RUNTIME_EVERY`]) and
/// `idrelay.prom` when it changed (at least every [`PROM_EVERY`]). Never returns.
pub(super) async fn publish_runtime(
    c: &Config,
    agent: &crate::status::AgentState,
    scim: &ScimClient,
    queue: &crate::sync::change::SharedQueue,
) {
    use crate::status::{unix, write_private, Runtime, RUNTIME_FILE};
    use std::time::{Instant, SystemTime};
    let started_at = unix(SystemTime::now());
    let mut last_rt: Option<(Runtime, Instant)> = None;
    let mut last_prom: Option<Instant> = None;
    let mut owed_since: Option<u64> = None;
    loop {
        let phase = *agent.phase.lock().unwrap_or_else(|p| p.into_inner());
        let q = queue.clone();
        let stats =
            smol::unblock(move || q.lock().unwrap_or_else(|p| p.into_inner()).stats()).await;
        let now = unix(SystemTime::now());
        owed_since = if stats.resync_owed.is_some() && phase != "full-pass" {
            owed_since.or(Some(now))
        } else {
            None
        };
        let rt = Runtime {
            v: 1,
            pid: std::process::id(),
            started_at,
            updated_at: now,
            phase: phase.to_string(),
            feed: agent.feed.facts(),
            endpoint: scim.endpoint_health(),
            last_error: agent
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            resync_waiting_since: owed_since,
        };
        let changed = last_rt.as_ref().is_none_or(|(prev, _)| !prev.same_as(&rt));
        if changed
            || last_rt
                .as_ref()
                .is_some_and(|(_, at)| at.elapsed() >= RUNTIME_EVERY)
        {
            let path = c.agent.state_dir.join(RUNTIME_FILE);
            let body = serde_json::to_vec_pretty(&rt).unwrap_or_default();
            if let Err(e) = write_private(&path, &body) {
                log::debug!("cannot write {}: {e}", path.display());
            }
            if changed || last_prom.is_none_or(|at| at.elapsed() >= PROM_EVERY) {
                write_prom(c, &status_document(c, true, Some((&rt, 0)), &stats));
                last_prom = Some(Instant::now());
            }
            last_rt = Some((rt, Instant::now()));
        }
        smol::Timer::after(PUBLISH_TICK).await;
    }
}
