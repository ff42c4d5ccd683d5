//! `run`: a full pass when owed, then follow the change feed until stopped.

use super::publish::{publish_runtime, status_document, write_prom};
use super::*;

pub(super) fn queue_config(c: &Config) -> crate::queue::QueueConfig {
    let mut q = crate::queue::QueueConfig::new(c.agent.state_dir.join("queue"));
    q.max_bytes = c.queue.max_bytes;
    q.segment_bytes = q.segment_bytes.min(c.queue.max_bytes / 4);
    q
}

/// `run`: full pass when owed, then follow changes until SIGTERM/SIGINT (exit 0). SIGHUP
/// re-reads the config: a valid one replaces the running one (connections are reopened,
/// the queue and the index stay); an invalid one is logged and the old one kept.
pub fn run(c: &Config, quiet: bool) -> i32 {
    let _lock = match lock_state_dir(&c.agent.state_dir) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::FAILURE;
        }
    };
    for (_, line) in crate::app::config::plaintext_warnings(c) {
        log::warn!("{line}");
    }
    install_audit(c);
    let queue = match crate::queue::Queue::open(queue_config(c)) {
        Ok(q) => q,
        Err(e) => {
            eprintln!(
                "error: change queue in {}: {e}",
                c.agent.state_dir.join("queue").display()
            );
            return exit::FAILURE;
        }
    };
    let queue = std::sync::Arc::new(std::sync::Mutex::new(queue));
    // A runtime file left by an earlier agent says nothing about this one.
    let _ = fs::remove_file(c.agent.state_dir.join(crate::status::RUNTIME_FILE));
    let code = run_until_stopped(c, quiet, &queue);
    // What stays behind for monitoring says "not running".
    let _ = fs::remove_file(c.agent.state_dir.join(crate::status::RUNTIME_FILE));
    let stats = queue.lock().unwrap_or_else(|p| p.into_inner()).stats();
    let doc = status_document(c, false, None, &stats);
    write_prom(c, &doc);
    code
}

fn run_until_stopped(c: &Config, quiet: bool, queue: &crate::sync::change::SharedQueue) -> i32 {
    let control = Control::new();
    if let Err(e) = control.install() {
        eprintln!("error: cannot install signal handlers: {e}");
        return exit::FAILURE;
    }
    let mut config = c.clone();
    // One watch over the whole life of `run`: an outage is said once when it starts and
    // once when it ends, across reloads.
    let watch = std::sync::Arc::new(crate::scim::outage::EndpointWatch::new(
        match &c.scim.auth {
            ScimAuth::Bearer(_) => "scim.token_file (or scim.token_env)",
            ScimAuth::ClientCredentials(_) => {
                "the OAuth2 client (scim.token_url, scim.client_id, its secret)"
            }
        },
    ));
    loop {
        let outcome = smol::block_on(run_once(&config, quiet, queue, &control, &watch));
        match outcome {
            Err(code) => return code,
            Ok(Request::Stop) => {
                log::info!("stopped on request; queue and index saved");
                return exit::OK;
            }
            Ok(Request::Reload) => {
                control.clear_reload();
                // An operator acted: an outage's waits start short again.
                watch.operator_acted();
                match Config::load(&config.path) {
                    Ok(new) if new.agent.state_dir != config.agent.state_dir => {
                        log::error!(
                            "config reload: agent.state_dir cannot change while running (restart the service instead); keeping the old config"
                        );
                    }
                    Ok(new) => {
                        log::info!(
                            "config reloaded from {} ({})",
                            config.path.display(),
                            secrets_changed(&config, &new)
                        );
                        config = new;
                    }
                    Err(e) => log::error!("config reload failed, keeping the old config: {e}"),
                }
            }
        }
    }
}

/// Which secrets a reload changed, in words for the log (never the values): so an operator
/// who rotated a secret sees whether the agent got the new one (under systemd's
/// `LoadCredential=`, only if the credential was copied again: packaging/README.md).
fn secrets_changed(old: &Config, new: &Config) -> String {
    let mut changed = Vec::new();
    if old.directory.password != new.directory.password {
        changed.push("ldap password changed");
    }
    match (&old.scim.auth, &new.scim.auth) {
        (ScimAuth::Bearer(a), ScimAuth::Bearer(b)) if a == b => {}
        (ScimAuth::ClientCredentials(a), ScimAuth::ClientCredentials(b))
            if a.client_secret == b.client_secret => {}
        (_, ScimAuth::Bearer(_)) => changed.push("scim token changed"),
        (_, ScimAuth::ClientCredentials(_)) => changed.push("oauth client secret changed"),
    }
    if let (Some(a), Some(b)) = (&old.relay, &new.relay) {
        let same = match (&a.auth, &b.auth) {
            (ScimAuth::Bearer(x), ScimAuth::Bearer(y)) => x == y,
            (ScimAuth::ClientCredentials(x), ScimAuth::ClientCredentials(y)) => {
                x.client_secret == y.client_secret
            }
            _ => false,
        };
        if !same {
            changed.push("relay credential changed");
        }
    }
    if changed.is_empty() {
        "secrets unchanged".into()
    } else {
        changed.join(", ")
    }
}

/// One life of `run` with one config: returns the operator's request, or an exit code.
async fn run_once(
    c: &Config,
    quiet: bool,
    queue: &crate::sync::change::SharedQueue,
    control: &Control,
    watch: &std::sync::Arc<crate::scim::outage::EndpointWatch>,
) -> Result<Request, i32> {
    let (_, scim) = scim_client(c).map_err(|e| {
        eprintln!("error: {e}");
        exit::FAILURE
    })?;
    scim.set_watch(watch.clone());
    let agent = std::sync::Arc::new(crate::status::AgentState::new(c.relay.is_some()));
    // Beside everything else: the state files `status` and monitoring read.
    smol::future::or(
        async {
            publish_runtime(c, &agent, &scim, queue).await;
            Ok(Request::Stop)
        },
        follow_once(c, quiet, queue, control, &agent, &scim),
    )
    .await
}

/// One life of `run` with one config, once the SCIM client is built.
async fn follow_once(
    c: &Config,
    quiet: bool,
    queue: &crate::sync::change::SharedQueue,
    control: &Control,
    agent: &std::sync::Arc<crate::status::AgentState>,
    scim: &ScimClient,
) -> Result<Request, i32> {
    let mut wait = crate::net::backoff::Backoff::new(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(60),
    );
    // The directory may be down when the service starts: keep trying, say so.
    let src = loop {
        match open_source(c).await {
            Ok(s) => break s,
            Err(e) => {
                let d = wait
                    .next_delay()
                    .unwrap_or(std::time::Duration::from_secs(60));
                log::warn!("{e}; retrying in {:.0} s", d.as_secs_f64());
                agent.set_error(e.to_string());
                if let Some(r) = control.sleep(d).await {
                    return Ok(r);
                }
            }
        }
    };
    log::info!("directory {} is {}", c.directory.url, src.kind);
    let cloud_text = settle_cloud_profile(c, &src.cloud, true);
    let mut index = load_index(c).map_err(|e| {
        eprintln!("error: {e}");
        exit::FAILURE
    })?;
    let mut gate = open_gate(c).map_err(|e| {
        eprintln!("error: {e}");
        exit::FAILURE
    })?;
    if !gate.held().is_empty() {
        log::warn!(
            "{} deletes are held for approval; nothing is deleted until `idrelay approve-deletes`",
            gate.held().len()
        );
    }
    let settings = crate::sync::follow::FollowSettings {
        pass: pass_settings(c, &src.profile, false, quiet),
        base_dn: c.directory.base_dn.clone(),
        state_dir: c.agent.state_dir.clone(),
        full_pass_interval: c.sync.full_pass_interval,
        feed: resolve_feed(c, &src).await,
        park_after: c.sync.max_attempts,
        delete_settle: c.sync.delete_settle,
        persist_catch_up: (src.kind == DirectoryKind::Ds389)
            .then_some(crate::sync::follow::PERSIST_CATCH_UP_DELAY),
    };
    log::info!("change feed: {}", settings.feed.name());
    agent.feed.set_kind(
        settings.feed.name(),
        match &settings.feed {
            crate::sync::follow::Feed::Poll(p) => Some(p.interval),
            crate::sync::follow::Feed::Syncrepl => None,
        },
    );
    log::info!(
        "agent {} running: following {}",
        c.agent.id,
        c.scope.include.join("; ")
    );
    let relay = match &c.relay {
        None => None,
        Some(r) => {
            let http = HttpClient::new(with_transport(
                HttpConfig {
                    ca_file: r.ca_file.clone(),
                    connect_timeout: std::time::Duration::from_secs(10),
                    request_timeout: r.poll_wait + std::time::Duration::from_secs(15),
                    max_idle_per_host: 2,
                    ..HttpConfig::default()
                },
                &r.transport,
            ))
            .map_err(|e| {
                eprintln!("error: relay: {e}");
                exit::FAILURE
            })?;
            let credential = hub_credential(r).map_err(|e| {
                eprintln!("error: {e}");
                exit::FAILURE
            })?;
            let relay = crate::relay::link::Relay::new(
                http,
                crate::relay::link::LinkSettings {
                    url: r.url.clone(),
                    group: r.group.clone(),
                    heartbeat: r.heartbeat,
                    poll_wait: r.poll_wait,
                },
                credential,
                &c.agent.id,
                Some(&c.agent.state_dir),
            )
            .map_err(|e| {
                eprintln!("error: {e}");
                exit::FAILURE
            })?;
            let (uf, gf) = filters(c, &src.profile);
            let remote = crate::relay::remote::Remote::new(
                src.dir.clone(),
                src.profile.clone(),
                src.local_profile.clone(),
                (c.scope.include.clone(), uf, gf),
                c.agent.state_dir.clone(),
                queue.clone(),
                Policy {
                    threshold: c.sync.delete_threshold,
                    interval: c.sync.delete_interval,
                    share_percent: c.sync.delete_threshold_percent,
                    floor: c.sync.delete_floor,
                },
                control.clone(),
                agent.clone(),
            )
            .with_writeback(c.writeback.clone(), directory_config(c))
            .with_profile_policy(profile_policy(c), cloud_text.clone())
            .with_group_scope(group_scope(c, &src.profile));
            Some((relay, remote))
        }
    };
    let st = crate::sync::follow::State {
        index: &mut index,
        gate: &mut gate,
        queue: queue.clone(),
        agent,
    };
    let follow = crate::sync::follow::run(&src.dir, scim, &src.profile, st, &settings, control);
    let result = match &relay {
        None => follow.await,
        // The relay runs beside the sync loop; when the loop ends (stop, reload), so does it.
        Some((relay, remote)) => {
            let follow = async {
                let r = follow.await;
                // A stop or reload: the relay finishes the requests it is handling and
                // keeps and posts their answers before the process goes on.
                if r.is_ok() {
                    relay.wait_finished().await;
                }
                r
            };
            smol::future::or(follow, async {
                relay.run(remote, agent, control).await;
                // The relay only returns on a stop or reload request: let the loop see it.
                std::future::pending().await
            })
            .await
        }
    };
    result.map_err(|e| {
        eprintln!("error: {e}");
        exit::FAILURE
    })
}

/// The feed `run` follows: the configured one, or for `auto` the best the directory offers
/// (syncrepl where advertised; on AD DirSync if the account may use it, else uSN polling;
/// modifyTimestamp polling elsewhere).
async fn resolve_feed(c: &Config, src: &Source) -> crate::sync::follow::Feed {
    use crate::app::config::FeedKind;
    use crate::sync::follow::Feed;
    use crate::sync::poll::{PollKind, PollSpec};
    let poll = |kind| {
        Feed::Poll(PollSpec {
            kind,
            base: c.directory.base_dn.clone(),
            interval: c.sync.poll_interval,
            notifications: kind != PollKind::Timestamp
                && ldap::supports_control(&src.dse, ldap::NOTIFICATION_OID),
        })
    };
    match c.sync.feed {
        FeedKind::Syncrepl => Feed::Syncrepl,
        FeedKind::DirSync => poll(PollKind::DirSync),
        FeedKind::Usn => poll(PollKind::Usn),
        FeedKind::Timestamp => poll(PollKind::Timestamp),
        FeedKind::Auto => match src.kind {
            DirectoryKind::ActiveDirectory => match dirsync_refusal(c, src).await {
                Some(e) if e.is_missing_rights() => {
                    log::warn!(
                            "DirSync refused ({e}); following changes by uSNChanged polling instead (grant \"Replicating Directory Changes\" for DirSync)"
                        );
                    poll(PollKind::Usn)
                }
                _ => poll(PollKind::DirSync),
            },
            _ if ldap::supports_control(&src.dse, ldap::SYNC_REQUEST_OID) => Feed::Syncrepl,
            _ => poll(PollKind::Timestamp),
        },
    }
}

/// Why DirSync is refused to the bind account, or `None` when it may use it: a DirSync
/// that matches nothing tells whether the account has "Replicating Directory Changes".
pub(super) async fn dirsync_refusal(c: &Config, src: &Source) -> Option<ldap::AdFeedError> {
    let mut probe = src.dir.dirsync(
        &c.directory.base_dn,
        "(&(objectClass=user)(cn=idrelay-dirsync-rights-probe))",
        &["objectGUID"],
        None,
        ldap::DirSyncFlags::INCREMENTAL_VALUES,
    );
    while let Some(item) = probe.next().await {
        if let Err(e) = item {
            return Some(e);
        }
    }
    None
}
