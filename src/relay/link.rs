//! The agent side of the relay (docs/protocol.md): one long-poll outstanding to the hub,
//! responses posted back, heartbeats, and the active/standby lease.
//!
//! Invariants:
//! * Outbound only: every exchange is a request from the agent.
//! * A request id is handled at most once: the answers are kept by id
//!   ([`crate::relay::answers`]: in memory for this process, and on disk in the state
//!   directory for requests with an effect, so across reloads and restarts too), and a
//!   re-delivered id gets the kept answer (the hub re-delivers what it did not see
//!   answered); an id re-delivered while it is still being handled is skipped, its reply
//!   follows when ready ([`Work`]). An answer is kept before it is posted.
//! * The envelopes of a poll answer are handled concurrently, at most [`CONCURRENCY`] at a
//!   time, and the next poll goes out as soon as the batch is handed to tasks (waiting only
//!   for a free slot). Each reply is posted as soon as it is ready, together with the others
//!   ready at that moment; order between requests is not kept (the hub matches replies by
//!   id). The hub's redelivery and the reply cache cover a reply that is never posted.
//! * The lease: without a hub grant the agent is standby (it provisions nothing). A grant
//!   lasts `ttl_secs` from the heartbeat that carried it; when heartbeats fail, the agent
//!   stays active only until that time, then turns standby. Two actives therefore never
//!   overlap by more than one TTL, and provisioning is idempotent anyway.
//! * The token (static, or OAuth2 from [`crate::relay::hub_credential`]) is sent only in the
//!   `Authorization` header and never logged; a 401 replaces an OAuth2 token once, at once.
//! * Reconnects use jittered exponential backoff (1 s to 60 s), reset after a poll that
//!   returned work or stayed up half a wait; the first retry after a working link goes out
//!   within [`RECONNECT_FIRST`] (jittered from 0: a fleet whose replica died does not come
//!   back in one burst), so requests queued meanwhile wait a fraction of a second, not a
//!   backoff step ([`poll_backoff`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use url::Url;

use crate::net::backoff::{parse_retry_after, Backoff};
use crate::net::http::{HttpClient, HttpRequest, HttpResponse, Method};
use crate::relay::answers::{ReplyCache, ReplyStore};
use crate::relay::hub_credential::HubCredential;
use crate::signals::Control;
use crate::status::AgentState;

pub use super::protocol::{parse_lease, parse_requests, valid_id, Envelope, Reply, PROTOCOL};

/// How many envelopes are handled at once.
pub const CONCURRENCY: usize = 8;
/// Most replies in one post to the hub.
pub const REPLY_BATCH: usize = 256;
/// After a stop or reload request, how long the requests being handled may take to finish
/// (their answers are kept and posted).
pub const DRAIN: Duration = Duration::from_secs(5);
/// The first wait before a failed heartbeat is tried again.
pub const HEARTBEAT_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between heartbeat tries while they fail: an agent started before its
/// hub is active within seconds of the hub coming up.
pub const HEARTBEAT_RETRY_CAP: Duration = Duration::from_secs(3);

/// The longest wait before the first poll retry after a working link broke (a hub replica
/// killed, a balancer's 502): the hub, or another replica behind the same address, is
/// most likely there at once; the agents of a dead replica spread their return over it.
pub const RECONNECT_FIRST: Duration = Duration::from_millis(250);

/// The poll loop's retry pacing: within [`RECONNECT_FIRST`] first, then 1 s doubling to
/// 60 s, each jittered from 0.
pub fn poll_backoff() -> Backoff {
    Backoff::new(Duration::from_secs(1), Duration::from_secs(60)).quick_first(RECONNECT_FIRST)
}

/// Answers envelopes (the SCIM facade and the commands).
pub trait Handler {
    /// Handles one envelope; never panics, every failure is an error reply.
    fn handle(&self, e: &Envelope) -> impl std::future::Future<Output = Reply>;
    /// The heartbeat body's variable part (queue, counts, ...).
    fn heartbeat_facts(&self) -> Value;
    /// The replies to `ids` were handed to the hub (or given up on after retries): what a
    /// command that must outlive its answer (a reload) waits for.
    fn posted(&self, _ids: &[String]) {}
}

/// What [`Work::admit`] decided about an envelope id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Not seen (or forgotten): handle it.
    New,
    /// Being handled now: its reply will be posted when ready; do nothing.
    Running,
    /// Answered before: post this reply again.
    Answered(Reply),
}

/// The ids being handled and the answers given (in memory, and on disk for requests with
/// an effect, see [`crate::relay::answers`]): what keeps a re-delivered request from being
/// handled twice, while requests run concurrently and across reloads and restarts. Only
/// the poll loop's thread touches it.
#[derive(Debug, Default)]
pub struct Work {
    cache: std::cell::RefCell<ReplyCache>,
    store: Option<std::cell::RefCell<ReplyStore>>,
    running: std::cell::RefCell<std::collections::HashSet<String>>,
}

impl Work {
    /// Work that also keeps the answers to requests with an effect in `store`.
    pub fn with_store(store: ReplyStore) -> Work {
        Work {
            store: Some(std::cell::RefCell::new(store)),
            ..Work::default()
        }
    }

    /// Decides about `id`; a `New` id counts as running from now on.
    pub fn admit(&self, id: &str) -> Admission {
        if let Some(r) = self.cache.borrow().get(id) {
            return Admission::Answered(r.clone());
        }
        if let Some(r) = self.store.as_ref().and_then(|s| s.borrow().get(id)) {
            return Admission::Answered(r);
        }
        if self.running.borrow_mut().insert(id.to_string()) {
            Admission::New
        } else {
            Admission::Running
        }
    }

    /// Records the reply of a running id; `durable`: the request had an effect, so its
    /// answer goes to the store too (before it is posted).
    pub fn done(&self, r: Reply, durable: bool) {
        if durable {
            if let Some(store) = &self.store {
                if let Err(e) = store.borrow_mut().put(&r) {
                    log::warn!(
                        "relay: cannot keep the answer to {} on disk ({e}); a re-delivery after a restart would run it again",
                        r.id
                    );
                }
            }
        }
        self.running.borrow_mut().remove(&r.id);
        self.cache.borrow_mut().put(r);
    }
}

/// Whether the answer to `e` must outlive the process: the request changed something
/// (a command, a SCIM write). A read may simply run again.
pub fn has_effect(e: &Envelope) -> bool {
    match e.kind.as_str() {
        "scim" => !e
            .method
            .as_deref()
            .unwrap_or("GET")
            .eq_ignore_ascii_case("GET"),
        _ => true,
    }
}

/// What the link needs to know of `[relay]` (built by the app from the config file).
#[derive(Debug, Clone)]
pub struct LinkSettings {
    /// Base URL of the hub.
    pub url: String,
    /// The directory group this agent serves (agents of one group are interchangeable).
    pub group: String,
    /// How often a heartbeat is sent.
    pub heartbeat: Duration,
    /// Longest a long-poll is held by the hub.
    pub poll_wait: Duration,
}

/// The relay's connection facts.
pub struct Relay {
    http: HttpClient,
    base: Url,
    cfg: LinkSettings,
    credential: HubCredential,
    agent_id: String,
    instance: String,
    status_file: Option<std::path::PathBuf>,
    /// The answers kept on disk; taken by the poll loop when it starts.
    store: Mutex<Option<ReplyStore>>,
    /// [`Relay::run`] has returned.
    finished: AtomicBool,
}

/// The file (in the state directory) where the relay records its state for `status`.
pub const STATUS_FILE: &str = "relay-status.json";

/// What `status` shows about the relay (written by the running agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayStatus {
    /// The hub.
    pub url: String,
    /// The directory group.
    pub group: String,
    /// `active` or `standby`.
    pub role: String,
    /// Unix time of the last heartbeat the hub answered (0: never).
    pub last_heartbeat: u64,
    /// The last heartbeat's error, if it failed.
    pub last_error: Option<String>,
}

/// Why a hub exchange failed.
#[derive(Debug)]
enum HubError {
    /// Transport or a status worth retrying (5xx, 429): wait this long at least.
    Retry(String, Option<Duration>),
    /// The hub refused us (401/403/426), or the URL is not a hub's (404): retrying soon
    /// will not help.
    Refused(String),
}

impl Relay {
    /// A relay client for `cfg`, speaking for `agent_id`; it records its state in
    /// `state_dir/relay-status.json` for `idrelay status`.
    pub fn new(
        http: HttpClient,
        cfg: LinkSettings,
        credential: HubCredential,
        agent_id: &str,
        state_dir: Option<&std::path::Path>,
    ) -> Result<Relay, String> {
        let base: Url = format!("{}/", cfg.url)
            .parse()
            .map_err(|e| format!("relay.url: {e}"))?;
        let store = match state_dir {
            Some(d) => Some(ReplyStore::open(d).map_err(|e| e.to_string())?),
            None => None,
        };
        Ok(Relay {
            http,
            base,
            cfg,
            credential,
            agent_id: agent_id.to_string(),
            instance: format!("{:016x}", fastrand::u64(..)),
            status_file: state_dir.map(|d| d.join(STATUS_FILE)),
            store: Mutex::new(store),
            finished: AtomicBool::new(false),
        })
    }

    fn url(&self, what: &str) -> Result<Url, String> {
        let mut u = self.base.clone();
        u.path_segments_mut()
            .map_err(|()| "relay.url cannot be a base".to_string())?
            .pop_if_empty()
            .extend(["v1", "agents", &self.agent_id, what]);
        Ok(u)
    }

    async fn post(&self, what: &str, body: &Value) -> Result<HttpResponse, HubError> {
        let url = self.url(what).map_err(HubError::Refused)?;
        let body = body.to_string().into_bytes();
        let mut renewed = false;
        let resp = loop {
            let (token, generation) = self.credential.bearer().await.map_err(|e| {
                if e.is_transient() {
                    HubError::Retry(format!("relay: {e}"), None)
                } else {
                    HubError::Refused(format!("relay: {e}"))
                }
            })?;
            let req = HttpRequest::new(Method::Post, url.clone())
                .header("Authorization", format!("Bearer {}", token.expose()))
                .header("Idrelay-Protocol", PROTOCOL)
                .header("Idrelay-Agent", self.agent_id.clone())
                .header("Idrelay-Instance", self.instance.clone())
                .header("Content-Type", "application/json")
                .body(body.clone());
            let resp = self
                .http
                .send(req)
                .await
                .map_err(|e| HubError::Retry(format!("hub {}: {e}", self.cfg.url), None))?;
            // A refused OAuth2 token is replaced once, at once: it may have expired early.
            if resp.status == 401 && !renewed && self.credential.refused(generation) {
                renewed = true;
                continue;
            }
            break (resp, token);
        };
        let (resp, token) = resp;
        match resp.status {
            200..=299 => Ok(resp),
            401 | 403 | 404 | 426 => Err(HubError::Refused(refusal(
                &self.cfg.url,
                &self.agent_id,
                what,
                resp.status,
                &resp.body,
                self.credential.keys(),
                token.expose(),
            ))),
            s => Err(HubError::Retry(
                format!("hub {} answered HTTP {s} to {what}", self.cfg.url),
                resp.header("Retry-After")
                    .and_then(|v| parse_retry_after(v, std::time::SystemTime::now())),
            )),
        }
    }

    /// Runs the long-poll loop and the heartbeat loop until a stop or reload request; then
    /// stops polling, lets the requests being handled finish (at most [`DRAIN`]), keeps and
    /// posts their answers, and returns ([`Relay::finished`] turns true).
    pub async fn run<H: Handler>(&self, handler: &H, state: &AgentState, control: &Control) {
        log::info!(
            "relay: connecting to {} as agent {} (group {})",
            self.cfg.url,
            self.agent_id,
            self.cfg.group
        );
        // The poll loop tells the heartbeat loop when the link is back.
        let (nudge, nudged) = smol::channel::bounded::<()>(1);
        // The heartbeat loop tells the poll loop when the hub answers it again after a
        // failure: a poll refused (a token or agent the hub did not know yet) is tried again
        // then, not after its 5 min wait.
        let (revive, revived) = smol::channel::bounded::<()>(1);
        smol::future::or(
            self.poll_loop(handler, state, control, &nudge, &revived),
            self.heartbeat_loop(handler, state, control, &nudged, &revive),
        )
        .await;
        self.finished.store(true, Ordering::SeqCst);
    }

    /// Whether [`Relay::run`] has returned.
    pub fn finished(&self) -> bool {
        self.finished.load(Ordering::SeqCst)
    }

    /// Waits until [`Relay::run`] has returned (it does soon after a stop or reload
    /// request), at most [`DRAIN`] and a second.
    pub async fn wait_finished(&self) {
        let until = Instant::now() + DRAIN + Duration::from_secs(1);
        while !self.finished() && Instant::now() < until {
            smol::Timer::after(Duration::from_millis(20)).await;
        }
    }

    /// Polls, hands each new envelope to a task (at most [`CONCURRENCY`] run at once, on a
    /// local executor: the handler is borrowed, nothing needs `Send`), and polls again while
    /// they run; replies go to [`Relay::reply_loop`], which posts them as they are ready.
    /// On a stop or reload request: no new poll; what runs may finish within [`DRAIN`].
    async fn poll_loop<H: Handler>(
        &self,
        handler: &H,
        state: &AgentState,
        control: &Control,
        nudge: &smol::channel::Sender<()>,
        revived: &smol::channel::Receiver<()>,
    ) {
        let store = self.store.lock().unwrap_or_else(|p| p.into_inner()).take();
        let work = match store {
            Some(s) => Work::with_store(s),
            None => Work::default(),
        };
        let permits = smol::lock::Semaphore::new(CONCURRENCY);
        let (replies, ready) = smol::channel::unbounded::<Reply>();
        let ex = smol::LocalExecutor::new();
        let both = smol::future::zip(
            self.dispatch_loop(
                handler, state, control, &ex, &permits, &work, replies, nudge, revived,
            ),
            self.reply_loop(handler, ready, control),
        );
        let drained = smol::future::or(
            async {
                both.await;
                true
            },
            async {
                control.wait().await;
                smol::Timer::after(DRAIN).await;
                false
            },
        );
        if !ex.run(drained).await {
            log::warn!(
                "relay: requests still running {} s after the stop or reload request were \
                 abandoned; the hub re-delivers them",
                DRAIN.as_secs()
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn dispatch_loop<'a, H: Handler>(
        &self,
        handler: &'a H,
        state: &AgentState,
        control: &Control,
        ex: &smol::LocalExecutor<'a>,
        permits: &'a smol::lock::Semaphore,
        work: &'a Work,
        replies: smol::channel::Sender<Reply>,
        nudge: &smol::channel::Sender<()>,
        revived: &smol::channel::Receiver<()>,
    ) {
        let mut backoff = poll_backoff();
        let wait = self.cfg.poll_wait.as_secs();
        // The last poll failed: the next one that gets through means the link is back.
        let mut down = false;
        loop {
            let started = Instant::now();
            let polled = smol::future::or(
                async { Some(self.post("poll", &json!({"wait_secs": wait})).await) },
                async {
                    control.wait().await;
                    None
                },
            )
            .await;
            let Some(polled) = polled else {
                return;
            };
            if polled.is_ok() && down {
                down = false;
                log::info!("relay: the hub answers polls again");
                let _ = nudge.try_send(());
            }
            match polled {
                Ok(resp) if resp.status == 204 => {
                    if started.elapsed() >= self.cfg.poll_wait / 2 {
                        backoff.reset();
                    }
                }
                Ok(resp) => {
                    backoff.reset();
                    let envelopes = match parse_requests(&resp.body) {
                        Ok(e) => e,
                        Err(why) => {
                            log::warn!("relay: unreadable poll answer: {why}");
                            continue;
                        }
                    };
                    for e in envelopes {
                        match work.admit(&e.id) {
                            Admission::Answered(r) => {
                                // Re-delivered after its reply was lost (a reload or restart
                                // included): the same reply again, the work not done again.
                                log::info!(
                                    "relay: re-delivered {} ({}) was answered {} before; that answer again, not run again",
                                    e.id,
                                    describe(&e),
                                    r.status
                                );
                                let _ = replies.send(r).await;
                                continue;
                            }
                            Admission::Running => continue,
                            Admission::New => {}
                        }
                        let permit = permits.acquire().await;
                        let replies = replies.clone();
                        ex.spawn(async move {
                            let mut r = if valid_id(&e.id) {
                                handler.handle(&e).await
                            } else {
                                Reply::error(&e.id, 400, None, "request id is not valid")
                            };
                            // The reply answers this envelope, whatever the handler wrote.
                            r.id.clone_from(&e.id);
                            drop(permit);
                            // Kept (on disk when it had an effect) before it is posted.
                            work.done(r.clone(), has_effect(&e));
                            log::info!(
                                "relay: request {} ({}) answered {}",
                                e.id,
                                describe(&e),
                                r.status
                            );
                            let _ = replies.send(r).await;
                        })
                        .detach();
                    }
                }
                Err(HubError::Refused(why)) => {
                    down = true;
                    log::error!("relay: {why}; retrying in 5 min, or once a heartbeat is answered");
                    state.set_error(why);
                    // A signal left from an earlier recovery costs one early try, no more.
                    let stop = smol::future::or(
                        async { control.sleep(Duration::from_secs(300)).await.is_some() },
                        async {
                            let _ = revived.recv().await;
                            false
                        },
                    )
                    .await;
                    if stop {
                        return;
                    }
                }
                Err(HubError::Retry(why, after)) => {
                    down = true;
                    let d = backoff
                        .next_delay()
                        .unwrap_or(Duration::from_secs(60))
                        .max(after.unwrap_or_default());
                    log::warn!("relay: {why}; reconnecting in {:.1} s", d.as_secs_f64());
                    if control.sleep(d).await.is_some() {
                        return;
                    }
                }
            }
        }
    }

    /// Posts replies as they become ready: one post carries every reply that is ready at
    /// that moment (up to [`REPLY_BATCH`]), so a slow post batches the ones behind it.
    async fn reply_loop<H: Handler>(
        &self,
        handler: &H,
        ready: smol::channel::Receiver<Reply>,
        control: &Control,
    ) {
        while let Ok(first) = ready.recv().await {
            let mut batch = vec![first];
            while batch.len() < REPLY_BATCH {
                match ready.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            let ids: Vec<String> = batch.iter().map(|r| r.id.clone()).collect();
            self.send_replies(batch, control).await;
            handler.posted(&ids);
        }
    }

    /// Posts replies; retried until the hub takes them (it would re-deliver otherwise, and
    /// the cache answers that too).
    async fn send_replies(&self, replies: Vec<Reply>, control: &Control) {
        let body = json!({ "responses": replies });
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        for _ in 0..8 {
            match self.post("responses", &body).await {
                Ok(_) => return,
                Err(HubError::Refused(why)) => {
                    log::warn!("relay: responses refused: {why}");
                    return;
                }
                Err(HubError::Retry(why, _)) => {
                    let d = backoff.next_delay().unwrap_or(Duration::from_secs(30));
                    log::warn!(
                        "relay: cannot post responses ({why}); retrying in {:.1} s",
                        d.as_secs_f64()
                    );
                    if control.sleep(d).await.is_some() {
                        return;
                    }
                }
            }
        }
        log::warn!("relay: responses dropped after 8 attempts; the hub re-delivers the requests and the cached replies answer them");
    }

    fn record(&self, state: &AgentState, last_ok: u64, error: Option<String>) {
        let Some(path) = &self.status_file else {
            return;
        };
        let s = RelayStatus {
            url: self.cfg.url.clone(),
            group: self.cfg.group.clone(),
            role: if state.is_active() {
                "active"
            } else {
                "standby"
            }
            .into(),
            last_heartbeat: last_ok,
            last_error: error,
        };
        let body = serde_json::to_vec(&s).unwrap_or_default();
        if let Err(e) = crate::state_dir::replace(path, &body, crate::state_dir::Durability::Rename)
        {
            log::debug!("relay: cannot record status in {}: {e}", path.display());
        }
    }

    /// Heartbeats every `relay.heartbeat_secs`; after a failure again within seconds
    /// ([`HEARTBEAT_RETRY`] doubling to [`HEARTBEAT_RETRY_CAP`], jittered, a `Retry-After`
    /// honoured), at once after an answer that changed the lease (so the hub shows the role
    /// the agent now has) and when the poll loop sees the link come back. The first answer
    /// after a failure wakes a poll loop that waits out a refusal. Never returns before a
    /// stop or reload request.
    async fn heartbeat_loop<H: Handler>(
        &self,
        handler: &H,
        state: &AgentState,
        control: &Control,
        nudged: &smol::channel::Receiver<()>,
        revive: &smol::channel::Sender<()>,
    ) {
        let mut last_ok = 0u64;
        // The last heartbeat was refused (401, 403, 404, 426).
        let mut refused = false;
        let mut retry = Backoff::new(HEARTBEAT_RETRY, HEARTBEAT_RETRY_CAP);
        let mut failures = 0u32;
        // The last heartbeat went out at once after a lease change: the next one waits.
        let mut quick = false;
        loop {
            // A nudge that came while this heartbeat is being sent is answered by it.
            let _ = nudged.try_recv();
            let reported_active = state.is_active();
            let mut body = handler.heartbeat_facts();
            body["version"] = Value::String(crate::version_line());
            body["group"] = Value::String(self.cfg.group.clone());
            body["instance"] = Value::String(self.instance.clone());
            body["uptime_secs"] = json!(state.uptime().as_secs());
            body["role"] = Value::String(if reported_active { "active" } else { "standby" }.into());
            let next = match self.post("heartbeat", &body).await {
                Ok(resp) => {
                    if failures > 0 {
                        log::info!(
                            "relay: heartbeat answered again after {failures} failed {}",
                            if failures == 1 { "try" } else { "tries" }
                        );
                    }
                    if failures > 0 || refused {
                        let _ = revive.try_send(());
                    }
                    failures = 0;
                    refused = false;
                    retry.reset();
                    *state
                        .last_heartbeat
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                    match parse_lease(&resp.body) {
                        Some((active, ttl)) => state.set_lease(active, ttl),
                        None => log::warn!("relay: heartbeat answer carries no lease"),
                    }
                    last_ok = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    self.record(state, last_ok, None);
                    let changed = state.is_active() != reported_active;
                    quick = changed && !quick;
                    if quick {
                        Duration::ZERO
                    } else {
                        self.cfg.heartbeat
                    }
                }
                Err(HubError::Refused(why)) => {
                    refused = true;
                    log::warn!("relay: heartbeat failed: {why}");
                    self.lease_lapsed(state);
                    self.record(state, last_ok, Some(why));
                    self.cfg.heartbeat
                }
                Err(HubError::Retry(why, after)) => {
                    failures += 1;
                    let d = retry
                        .next_delay()
                        .unwrap_or(HEARTBEAT_RETRY_CAP)
                        .max(after.unwrap_or_default());
                    if failures == 1 {
                        log::warn!(
                            "relay: heartbeat failed: {why}; retrying within {} s until it is answered",
                            HEARTBEAT_RETRY_CAP.as_secs()
                        );
                    } else {
                        log::debug!(
                            "relay: heartbeat failed again ({failures} tries): {why}; next in {:.1} s",
                            d.as_secs_f64()
                        );
                    }
                    self.lease_lapsed(state);
                    self.record(state, last_ok, Some(why));
                    d
                }
            };
            if next.is_zero() {
                continue;
            }
            let stop = smol::future::or(async { control.sleep(next).await.is_some() }, async {
                let _ = nudged.recv().await;
                false
            })
            .await;
            if stop {
                // The poll loop drains and ends the relay; no more heartbeats until then.
                std::future::pending::<()>().await;
            }
        }
    }

    /// After a failed heartbeat: once the lease has run out, the agent is standby.
    fn lease_lapsed(&self, state: &AgentState) {
        if state.lapse_lease() {
            log::warn!("relay: lease expired without a heartbeat; standby until the hub answers");
        }
    }
}

/// What the agent logs when the hub refuses it (`status` is 401, 403, 404 or 426): the
/// status, the hub's own words (the `error` of its JSON body, or the start of any other
/// body; clipped, control characters escaped; the token, should the body echo it,
/// redacted) and what to check. `keys` names the config keys of the credential.
fn refusal(
    url: &str,
    agent: &str,
    what: &str,
    status: u16,
    body: &[u8],
    keys: &str,
    token: &str,
) -> String {
    let said = hub_words(body, token);
    let said = if said.is_empty() {
        String::new()
    } else {
        format!(": {said}")
    };
    match status {
        401 | 403 => format!(
            "hub {url} refused agent `{agent}` (HTTP {status}{said}); check {keys}, and that \
             the hub's config has an [[agent]] with id = \"{agent}\""
        ),
        426 => format!("hub {url} does not speak protocol {PROTOCOL} (HTTP 426{said})"),
        _ => format!(
            "hub {url} answered HTTP {status} to {what}{said}; relay.url must be the hub's \
             address (an idrelay hub answers every agent path, and 401 to an agent it does \
             not know)"
        ),
    }
}

/// The hub's reason in an error body: the `error` string of a JSON object, else the start
/// of the text; `token` replaced by `[redacted]`, white space folded, at most 160
/// characters, made safe for a log line by [`crate::logging::escape`].
fn hub_words(body: &[u8], token: &str) -> String {
    let text = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => match m.get("error") {
            Some(Value::String(e)) => e.clone(),
            _ => Value::Object(m).to_string(),
        },
        Ok(v) => v.to_string(),
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    let text = if token.is_empty() {
        text
    } else {
        text.replace(token, "[redacted]")
    };
    let folded = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let clipped: String = folded.chars().take(160).collect();
    let mut out = crate::logging::escape(&clipped).into_owned();
    if folded.chars().count() > 160 {
        out.push('…');
    }
    out
}

fn describe(e: &Envelope) -> String {
    match e.kind.as_str() {
        "scim" => format!(
            "{} {}",
            e.method.as_deref().unwrap_or("?"),
            e.path.as_deref().unwrap_or("?")
        ),
        "command" => format!("command {}", e.command.as_deref().unwrap_or("?")),
        k => format!("kind {k}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_poll_is_retried_within_a_quarter_second_then_backs_off() {
        for _ in 0..100 {
            let mut b = poll_backoff();
            assert!(b.next_delay().unwrap() <= RECONNECT_FIRST);
            assert!(b.next_delay().unwrap() <= Duration::from_secs(1));
            assert!(b.next_delay().unwrap() <= Duration::from_secs(2));
            b.reset();
            assert!(b.next_delay().unwrap() <= RECONNECT_FIRST);
        }
        let b = poll_backoff();
        assert_eq!(b.ceiling(6), Duration::from_secs(60));
    }

    #[test]
    fn a_refusal_quotes_the_hub_and_says_what_to_check() {
        let m = refusal(
            "https://hub.example",
            "a1",
            "poll",
            401,
            br#"{"error":"unknown agent or wrong token"}"#,
            "relay.token_file",
            "tok-123",
        );
        assert_eq!(
            m,
            "hub https://hub.example refused agent `a1` (HTTP 401: unknown agent or wrong \
             token); check relay.token_file, and that the hub's config has an [[agent]] with \
             id = \"a1\""
        );
        // Not a hub: a web server's 404 page, its text folded and clipped.
        let page = format!("<html>\n  Not Found\t{}</html>", "x".repeat(400));
        let m = refusal(
            "http://h",
            "a1",
            "heartbeat",
            404,
            page.as_bytes(),
            "k",
            "tok-1234567890",
        );
        assert!(
            m.starts_with("hub http://h answered HTTP 404 to heartbeat: <html> Not Found xxx"),
            "{m}"
        );
        assert!(m.contains("…; relay.url must be the hub's address"), "{m}");
        let m = refusal(
            "http://h",
            "a1",
            "poll",
            426,
            br#"{"supported":[1]}"#,
            "k",
            "tok-1234567890",
        );
        assert!(m.contains("(HTTP 426: {\"supported\":[1]})"), "{m}");
        // No body: no colon; an empty token redacts nothing.
        let m = refusal("http://h", "a1", "poll", 403, b"", "k", "");
        assert!(m.contains("(HTTP 403); check k"), "{m}");
    }

    #[test]
    fn the_hub_words_never_carry_the_token_or_control_characters() {
        let body = br#"{"error":"bad Bearer s3cr3t-token\u001b[31m here"}"#;
        let w = hub_words(body, "s3cr3t-token");
        assert_eq!(w, "bad Bearer [redacted]\\x1b[31m here");
        assert!(!w.contains("s3cr3t"));
        // Redacted before it is clipped: a token across the cut cannot show in part.
        let long = format!("{}secret-token-value", "y".repeat(150));
        let w = hub_words(long.as_bytes(), "secret-token-value");
        assert!(!w.contains("secret"), "{w}");
    }

    #[test]
    fn ids_are_checked() {
        assert!(valid_id("r-000123"));
        assert!(!valid_id(""));
        assert!(!valid_id("../etc"));
        assert!(!valid_id(&"a".repeat(65)));
    }

    #[test]
    fn work_admits_an_id_once_until_answered_then_replays_the_reply() {
        let w = Work::default();
        assert_eq!(w.admit("r1"), Admission::New);
        assert_eq!(
            w.admit("r1"),
            Admission::Running,
            "re-delivered while running"
        );
        assert_eq!(w.admit("r2"), Admission::New);
        let r = Reply {
            id: "r1".into(),
            status: 200,
            body: Value::Null,
        };
        w.done(r.clone(), false);
        assert_eq!(w.admit("r1"), Admission::Answered(r));
        assert_eq!(w.admit("r2"), Admission::Running);
    }

    #[test]
    fn an_answer_with_an_effect_outlives_the_work_that_gave_it() {
        let dir = std::env::temp_dir().join(format!(
            "idrelay-work-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let done = |w: &Work, id: &str, durable| {
            assert_eq!(w.admit(id), Admission::New);
            w.done(
                Reply {
                    id: id.into(),
                    status: 202,
                    body: json!({"accepted": id}),
                },
                durable,
            );
        };
        let w = Work::with_store(ReplyStore::open(&dir).unwrap());
        done(&w, "r-cmd", true);
        done(&w, "r-read", false);
        drop(w);
        // A reload or a restart: a new Work over the same state directory.
        let w = Work::with_store(ReplyStore::open(&dir).unwrap());
        match w.admit("r-cmd") {
            Admission::Answered(r) => assert_eq!(r.body["accepted"], "r-cmd"),
            other => panic!("{other:?}"),
        }
        assert_eq!(w.admit("r-read"), Admission::New, "a read runs again");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn commands_and_writes_have_an_effect_reads_do_not() {
        let e = |kind: &str, method: Option<&str>| Envelope {
            id: "r1".into(),
            kind: kind.into(),
            method: method.map(str::to_string),
            path: None,
            query: None,
            body: None,
            command: None,
            target: None,
            profile: None,
        };
        assert!(has_effect(&e("command", None)));
        assert!(has_effect(&e("scim", Some("PATCH"))));
        assert!(has_effect(&e("scim", Some("delete"))));
        assert!(!has_effect(&e("scim", Some("GET"))));
    }

    #[test]
    fn poll_answers_and_leases_parse() {
        let e = parse_requests(
            br#"{"requests":[{"id":"r1","kind":"scim","method":"GET","path":"/Users","query":"count=1","body":null},{"id":"r2","kind":"command","command":"resync","extra":1}]}"#,
        )
        .unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].command.as_deref(), Some("resync"));
        assert!(parse_requests(b"{}").is_err());
        assert!(parse_requests(b"\xff").is_err());
        assert_eq!(
            parse_lease(br#"{"lease":{"role":"active","holder":"a","ttl_secs":180}}"#),
            Some((true, Duration::from_secs(180)))
        );
        assert_eq!(
            parse_lease(br#"{"lease":{"role":"standby","ttl_secs":99999}}"#),
            Some((false, Duration::from_secs(3600)))
        );
        assert_eq!(parse_lease(b"{}"), None);
    }

    #[test]
    fn without_a_relay_the_agent_is_active_and_with_one_it_waits_for_a_grant() {
        assert!(AgentState::new(false).is_active());
        let s = AgentState::new(true);
        assert!(!s.is_active());
        s.set_lease(true, Duration::from_secs(60));
        assert!(s.is_active());
        s.set_lease(true, Duration::ZERO);
        assert!(!s.is_active(), "an expired lease is not active");
    }

    #[test]
    fn error_replies_are_scim_errors() {
        let r = Reply::error("r1", 403, Some("mutability"), "writeback not allowed");
        assert_eq!(r.body["status"], "403");
        assert_eq!(r.body["scimType"], "mutability");
    }
}
