//! What the cloud may ask the agent through the relay (docs/protocol.md): SCIM reads of the
//! branch directory (answered by [`crate::relay::facade`]) and four commands.
//!
//! | command | effect | answer |
//! |---|---|---|
//! | `resync` | the queue records that a full pass is owed; `run` starts it within seconds | 202 |
//! | `provision` (`target`: DN or anchor) | one change for that object is queued (with the current watermark), so it is brought in step in order with the feed | 202, 404 unknown anchor, 409 while a full pass is owed anyway |
//! | `approve-deletes` | the held set is approved exactly as it is now | 202 with the count, 200 if none held |
//! | `set-profile` (`profile`: TOML) | judged by local policy ([`crate::scim::profile_policy::admit`]); stored as `state_dir/cloud-profile.toml`, applied on top of the local profile; `run` reloads once the answer is posted | 200; 403 naming the local setting (`relay.accept_profiles` off, a key only the branch sets, an attribute off the allow-list or password-like); 400 naming a bad key. The profile in use stays on any error. |
//!
//! The cloud gets no more power than this: paths outside `/Users`, `/Groups` and the three
//! discovery endpoints are 404; reads stay in scope; writes are 403 unless `[writeback]`
//! allows them ([`crate::relay::writeback`]), and then only the active agent of a group answers
//! them (a standby one says 503), one write at a time (reads run beside them). Writes go
//! through the local profile only (built-in default and `sync.profile_file`), never a
//! profile the cloud pushed. Every pushed profile is logged (escaped, on one line) when it
//! arrives.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::ldap::{Directory, DirectoryConfig, DirectoryWriter};
use crate::queue::ResyncReason;
use crate::relay::facade::Facade;
use crate::relay::link::{Envelope, Handler, Reply};
use crate::relay::writeback::WritePolicy;
use crate::scim::profile::SyncProfile;
use crate::scim::profile_policy::{admit, escape_for_log, ProfilePolicy};
use crate::status::AgentState;
use crate::sync::anchors::AnchorIndex;
use crate::sync::change::{Change, SharedQueue};
use crate::sync::deletes::{DeleteGate, Policy};

/// The file a cloud-pushed profile is kept in (inside the state directory).
pub const CLOUD_PROFILE: &str = "cloud-profile.toml";

/// How old the anchor-index snapshot the facade resolves references with may get before
/// the file is looked at again (it is reloaded only when the file changed).
const INDEX_SNAPSHOT_AGE: Duration = Duration::from_secs(30);

/// An anchor-index snapshot: when it was last checked, the file's (mtime, length) it was
/// loaded from, and the index.
type Snapshot = (
    Instant,
    Option<(std::time::SystemTime, u64)>,
    Arc<AnchorIndex>,
);

/// Answers relay envelopes for one running agent.
pub struct Remote {
    /// The directory.
    pub dir: Directory,
    /// The profile in use (the local one, with an admitted cloud profile on top).
    pub profile: SyncProfile,
    /// The local profile (built-in default and `sync.profile_file`): what a pushed profile
    /// is applied on top of.
    pub local_profile: SyncProfile,
    /// What a pushed profile may change (default: nothing).
    pub profile_policy: ProfilePolicy,
    /// The text of the cloud profile in force, if any.
    cloud_text: Option<String>,
    /// The request whose posted answer starts a reload (an accepted `set-profile`).
    reload_after: Mutex<Option<String>>,
    /// `scope.include`.
    pub include: Vec<String>,
    /// Scope filter for users.
    pub user_filter: String,
    /// Scope filter for groups.
    pub group_filter: String,
    /// `agent.state_dir`.
    pub state_dir: PathBuf,
    /// The change queue of `run`.
    pub queue: SharedQueue,
    /// The delete threshold (for `approve-deletes`).
    pub delete_policy: Policy,
    /// Operator requests (set-profile asks for a reload).
    pub control: crate::signals::Control,
    /// Shared counters and lease.
    pub state: Arc<AgentState>,
    /// What the cloud may write (default: nothing).
    pub writeback: WritePolicy,
    writer: Option<DirectoryWriter>,
    write_turn: smol::lock::Mutex<()>,
    snapshot: Mutex<Option<Snapshot>>,
    /// `scope.groups`: bounds what the facade answers (None when not set).
    group_scope: Option<crate::sync::scope_groups::GroupScope>,
}

impl Remote {
    /// A handler; `snapshot` starts empty.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dir: Directory,
        profile: SyncProfile,
        local_profile: SyncProfile,
        scope: (Vec<String>, String, String),
        state_dir: PathBuf,
        queue: SharedQueue,
        delete_policy: Policy,
        control: crate::signals::Control,
        state: Arc<AgentState>,
    ) -> Remote {
        Remote {
            dir,
            profile,
            local_profile,
            profile_policy: ProfilePolicy::default(),
            cloud_text: None,
            reload_after: Mutex::new(None),
            include: scope.0,
            user_filter: scope.1,
            group_filter: scope.2,
            state_dir,
            queue,
            delete_policy,
            control,
            state,
            writeback: WritePolicy::default(),
            writer: None,
            write_turn: smol::lock::Mutex::new(()),
            snapshot: Mutex::new(None),
            group_scope: None,
        }
    }

    /// Bounds the facade's answers by `scope.groups` too (the set is read per request, so a
    /// join or a leave counts at once).
    pub fn with_group_scope(
        mut self,
        scope: Option<crate::sync::scope_groups::GroupScope>,
    ) -> Remote {
        self.group_scope = scope;
        self
    }

    /// Allows the writes `policy` grants, made over a write connection of `directory`
    /// (bound on the first write). An empty policy changes nothing.
    pub fn with_writeback(mut self, policy: WritePolicy, directory: DirectoryConfig) -> Remote {
        if policy.allows_any() {
            log::info!(
                "writeback: the cloud may write {} inside {}",
                match (policy.groups, policy.users) {
                    (true, true) => "groups and users",
                    (true, false) => "groups",
                    _ => "users",
                },
                policy.allowed_ous.join("; ")
            );
            self.writer = Some(DirectoryWriter::new(directory));
        }
        self.writeback = policy;
        self
    }

    /// Lets the cloud push profiles as `policy` allows; `cloud_text` is the cloud profile
    /// in force now (a push of the same text changes nothing).
    pub fn with_profile_policy(
        mut self,
        policy: ProfilePolicy,
        cloud_text: Option<String>,
    ) -> Remote {
        self.profile_policy = policy;
        self.cloud_text = cloud_text;
        self
    }

    /// `set-profile`: logs the pushed text, judges it by local policy, stores an admitted
    /// one and asks for a reload once the answer is posted.
    fn set_profile(&self, id: &str, text: &str) -> Reply {
        log::info!(
            "relay: the cloud pushed a sync profile ({} bytes): {}",
            text.len(),
            escape_for_log(text, 4096)
        );
        if let Err(why) = admit(&self.profile_policy, &self.local_profile, text) {
            log::warn!("relay: set-profile refused: {why}; the profile in use stays");
            return Reply::error(
                id,
                why.status(),
                why.scim_type(),
                format!("{why}; the profile in use stays"),
            );
        }
        if self.cloud_text.as_deref() == Some(text) {
            // A re-delivery after the reload, or the same push again: nothing to do.
            return ok(
                id,
                200,
                json!({"accepted": "set-profile", "detail": "this profile is in force already"}),
            );
        }
        let path = self.state_dir.join(CLOUD_PROFILE);
        let written =
            crate::state_dir::replace(&path, text.as_bytes(), crate::state_dir::Durability::Sync);
        match written {
            Ok(()) => {
                log::info!(
                    "relay: the cloud's sync profile is admitted by local policy and stored in {}; it applies on top of the local profile after a reload",
                    path.display()
                );
                *self.reload_after.lock().unwrap_or_else(|p| p.into_inner()) = Some(id.to_string());
                ok(id, 200, json!({"accepted": "set-profile"}))
            }
            Err(err) => Reply::error(id, 500, None, format!("{}: {err}", path.display())),
        }
    }

    fn index(&self) -> Arc<AnchorIndex> {
        let mut g = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        let stamp = std::fs::metadata(self.state_dir.join(crate::sync::anchors::FILE_NAME))
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        if let Some((at, seen, ix)) = g.as_mut() {
            if at.elapsed() < INDEX_SNAPSHOT_AGE {
                return ix.clone();
            }
            // Loading writes a working copy of the whole index: only when the file changed.
            if stamp.is_some() && *seen == stamp {
                *at = Instant::now();
                return ix.clone();
            }
        }
        let ix = Arc::new(AnchorIndex::load(&self.state_dir).unwrap_or_else(|e| {
            log::warn!(
                "relay: cannot read the anchor index ({e}); references resolve by directory reads"
            );
            AnchorIndex::empty(&self.state_dir)
        }));
        *g = Some((Instant::now(), stamp, ix.clone()));
        ix
    }

    async fn command(&self, e: &Envelope) -> Reply {
        let id = e.id.as_str();
        match e.command.as_deref() {
            Some("resync") => {
                let q = self.queue.clone();
                let r = smol::unblock(move || {
                    q.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .mark_resync_owed(ResyncReason::Requested)
                })
                .await;
                match r {
                    Ok(()) => {
                        log::info!("relay: a full pass was requested by the cloud");
                        ok(id, 202, json!({"accepted": "resync"}))
                    }
                    Err(err) => Reply::error(id, 500, None, format!("queue: {err}")),
                }
            }
            Some("provision") => self.provision(id, e.target.as_deref().unwrap_or("")).await,
            Some("approve-deletes") => {
                match DeleteGate::open(&self.state_dir, self.delete_policy) {
                    Err(err) => Reply::error(id, 500, None, err.to_string()),
                    Ok(g) if g.held().is_empty() => ok(
                        id,
                        200,
                        json!({"approved": 0, "detail": "no deletes are held"}),
                    ),
                    Ok(g) => match g.write_approval() {
                        Ok(()) => {
                            log::info!("relay: the cloud approved {} held deletes", g.held().len());
                            ok(id, 202, json!({"approved": g.held().len()}))
                        }
                        Err(err) => Reply::error(id, 500, None, err.to_string()),
                    },
                }
            }
            Some("set-profile") => self.set_profile(id, e.profile.as_deref().unwrap_or("")),
            Some(other) => Reply::error(
                id,
                400,
                Some("invalidValue"),
                format!("unknown command `{other}`"),
            ),
            None => Reply::error(
                id,
                400,
                Some("invalidValue"),
                "the envelope names no command",
            ),
        }
    }

    async fn provision(&self, id: &str, target: &str) -> Reply {
        let target = target.trim();
        if target.is_empty() {
            return Reply::error(
                id,
                400,
                Some("invalidValue"),
                "provision needs a `target` (DN or anchor)",
            );
        }
        let (dn, uuid) = if target.contains('=') {
            if !crate::ldap::dn::under_any(target, &self.include) {
                return Reply::error(
                    id,
                    403,
                    None,
                    format!("{target} is not under scope.include"),
                );
            }
            (target.to_string(), String::new())
        } else {
            match self.index().get_any(target) {
                Some(a) => (a.dn.clone(), target.to_string()),
                None => {
                    return Reply::error(
                        id,
                        404,
                        None,
                        format!(
                            "no object with anchor {target} is known to this agent; give its DN"
                        ),
                    )
                }
            }
        };
        let change = serde_json::to_vec(&Change::Upsert {
            dn: dn.clone(),
            uuid,
        })
        .unwrap_or_default();
        let q = self.queue.clone();
        let r = smol::unblock(move || {
            let mut q = q.lock().unwrap_or_else(|p| p.into_inner());
            if q.resync_owed() {
                return Ok(None);
            }
            let Some(mark) = q.watermark().map(<[u8]>::to_vec) else {
                return Ok(None);
            };
            q.append(&[change], &mark).map(Some)
        })
        .await;
        match r {
            Ok(Some(_)) => {
                log::info!("relay: the cloud asked to provision {dn} now");
                ok(id, 202, json!({"accepted": "provision", "dn": dn}))
            }
            Ok(None) => Reply::error(
                id,
                409,
                None,
                "a full pass is owed; it provisions every object, this one included",
            ),
            Err(err) => Reply::error(id, 500, None, format!("queue: {err}")),
        }
    }
}

fn ok(id: &str, status: u16, body: Value) -> Reply {
    Reply {
        id: id.to_string(),
        status,
        body,
    }
}

/// The paths a SCIM envelope may name.
fn allowed_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let head = rest.split(['/', '?']).next().unwrap_or("");
    !path.contains("..")
        && matches!(
            head,
            "Users" | "Groups" | "ServiceProviderConfig" | "ResourceTypes" | "Schemas"
        )
}

/// Whether a SCIM path names `/Users` or `/Groups` (not discovery).
fn is_resource_path(path: &str) -> bool {
    let head = path
        .trim_start_matches('/')
        .split(['/', '?'])
        .next()
        .unwrap_or("");
    matches!(head, "Users" | "Groups")
}

impl Handler for Remote {
    async fn handle(&self, e: &Envelope) -> Reply {
        match e.kind.as_str() {
            "scim" => {
                let path = e.path.as_deref().unwrap_or("");
                if !allowed_path(path) {
                    return Reply::error(&e.id, 404, None, format!("no such endpoint `{path}`"));
                }
                let method = e.method.as_deref().unwrap_or("GET");
                let read = method.eq_ignore_ascii_case("GET");
                let index = self.index();
                let allowed = match &self.group_scope {
                    Some(g) if is_resource_path(path) => {
                        match crate::sync::scope_groups::read_allowed_set(
                            &self.dir,
                            g,
                            &self.state_dir,
                        )
                        .await
                        {
                            Ok(set) => Some(set),
                            // Never a wider scope: no answer without the set.
                            Err(err) => return Reply::error(&e.id, 503, None, err.to_string()),
                        }
                    }
                    _ => None,
                };
                let facade = Facade {
                    dir: &self.dir,
                    // Writes resolve SCIM names to LDAP attributes, classify objects and
                    // pick member attributes and object classes from local configuration
                    // only: a cloud profile changes what is read, never what is written.
                    profile: if read {
                        &self.profile
                    } else {
                        &self.local_profile
                    },
                    include: &self.include,
                    user_filter: &self.user_filter,
                    group_filter: &self.group_filter,
                    index: &index,
                    allowed: allowed.as_ref(),
                };
                let (status, body) = if read {
                    let (status, mut body) = facade
                        .answer(method, path, e.query.as_deref().unwrap_or(""))
                        .await;
                    // PATCH exists exactly when the write policy allows updates.
                    if status == 200
                        && path.starts_with("/ServiceProviderConfig")
                        && self.writeback.allows_any()
                        && self.writeback.update
                    {
                        body["patch"]["supported"] = Value::Bool(true);
                    }
                    (status, body)
                } else if self.writeback.allows_any()
                    && !self.state.is_active()
                    && is_resource_path(path)
                {
                    crate::relay::facade::error(
                        503,
                        None,
                        "this agent is standby: writes are answered by the active agent of the group",
                    )
                } else {
                    let _turn = self.write_turn.lock().await;
                    facade
                        .write(
                            &self.writeback,
                            self.writer.as_ref(),
                            method,
                            path,
                            e.body.as_ref(),
                        )
                        .await
                };
                ok(&e.id, status, body)
            }
            "command" => self.command(e).await,
            other => Reply::error(
                &e.id,
                400,
                Some("invalidValue"),
                format!("unknown envelope kind `{other}`"),
            ),
        }
    }

    fn posted(&self, ids: &[String]) {
        let mut pending = self.reload_after.lock().unwrap_or_else(|p| p.into_inner());
        if pending.as_ref().is_some_and(|id| ids.contains(id)) {
            *pending = None;
            log::info!("relay: reloading to apply the cloud's sync profile");
            self.control.raise(crate::signals::Request::Reload);
        }
    }

    fn heartbeat_facts(&self) -> Value {
        self.heartbeat_body()
    }
}

impl Remote {
    /// The SCIM endpoint's state as `run` publishes it for `status` (`runtime.json`): the
    /// state, and an outage with its cause and counts (docs/status.md).
    fn endpoint_facts(&self) -> Value {
        let path = self.state_dir.join(crate::status::RUNTIME_FILE);
        let rt = crate::state_dir::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str::<crate::status::Runtime>(&t).ok());
        match rt {
            None => Value::Null,
            Some(rt) => json!({
                "state": rt.endpoint.state.as_str(),
                "last_error": rt.endpoint.last_error,
                "outage": rt.endpoint.outage.map(|o| json!({
                    "cause": o.cause,
                    "since": o.since,
                    "failures": o.failures,
                    "retries": o.retries,
                })),
                "outages": rt.endpoint.outages,
            }),
        }
    }

    fn heartbeat_body(&self) -> Value {
        let q = crate::queue::Queue::inspect(&self.state_dir.join("queue")).ok();
        let held = DeleteGate::open(&self.state_dir, self.delete_policy)
            .map(|g| g.held().len())
            .unwrap_or(0);
        let (watermark_age, feed) = feed_facts(
            &self.state.feed.facts(),
            crate::status::unix(std::time::SystemTime::now()),
        );
        let phase = *self.state.phase.lock().unwrap_or_else(|p| p.into_inner());
        let last_error = self
            .state
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        json!({
            "state": if self.state.is_active() { phase } else { "standby" },
            "queue": q.as_ref().map(|v| json!({
                "depth": v.stats.depth,
                "bytes": v.stats.bytes,
                "oldest_age_secs": v.stats.oldest_age.map(|d| d.as_secs()),
                "resync_owed": v.stats.resync_owed.map(|r| r.as_str()),
            })),
            "watermark_age_secs": watermark_age,
            "feed": feed,
            "last_full_pass_age_secs": crate::sync::follow::last_full_pass(&self.state_dir)
                .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
                .map(|d| d.as_secs()),
            "counts": {
                "provisioned": self.state.provisioned.load(std::sync::atomic::Ordering::Relaxed),
                "failed": self.state.failed.load(std::sync::atomic::Ordering::Relaxed),
                "held_deletes": held,
                "parked": crate::sync::follow::parking::Parking::open(&self.state_dir)
                    .map_or(0, |p| p.len()),
            },
            "last_error": last_error,
            "endpoint": self.endpoint_facts(),
        })
    }
}

/// The heartbeat's view of the change feed: `watermark_age_secs` (seconds since the
/// directory last sent the feed something: an event, or a poll answered) and the `feed`
/// object. From the feed itself, not from the sender: a hung syncrepl search, or a poll
/// that no longer answers, shows as an age that grows and `connected: false`, while the
/// queue is drained as fast as ever.
fn feed_facts(f: &crate::status::FeedFacts, now: u64) -> (Option<u64>, Value) {
    let age = f.last_event_at.map(|t| now.saturating_sub(t));
    (
        age,
        json!({
            "kind": f.kind,
            "connected": f.connected,
            "last_event_age_secs": age,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: the heartbeat's `watermark_age_secs` measured the sender loop, so a
    /// hung feed looked healthy. It is the feed's last event now.
    #[test]
    fn the_watermark_age_is_the_feeds_and_a_quiet_feed_grows_old() {
        let facts = crate::status::FeedFacts {
            kind: Some("syncrepl".into()),
            connected: false,
            last_event_at: Some(1_000),
            poll_interval_secs: None,
        };
        let (age, feed) = feed_facts(&facts, 1_090);
        assert_eq!(age, Some(90));
        assert_eq!(
            feed,
            json!({"kind": "syncrepl", "connected": false, "last_event_age_secs": 90})
        );
        let (age, feed) = feed_facts(&crate::status::FeedFacts::default(), 1_090);
        assert_eq!(age, None, "no event yet: unknown, never 0");
        assert_eq!(feed["connected"], json!(false));
    }

    #[test]
    fn only_scim_paths_pass() {
        for ok in [
            "/Users",
            "/Users/abc",
            "/Groups?x",
            "/ServiceProviderConfig",
            "/Schemas",
        ] {
            assert!(allowed_path(ok), "{ok}");
        }
        for bad in [
            "",
            "Users",
            "/Bulk",
            "/Users/../../etc",
            "/admin",
            "//Users",
            "/Me",
        ] {
            assert!(!allowed_path(bad), "{bad}");
        }
    }
}
