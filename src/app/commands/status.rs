//! `status [--json]`: healthy or not, from the state directory and the running agent's runtime file.

use super::publish::status_document;
use super::run::queue_config;
use super::*;

/// `status`: whether the agent is healthy (first line, and the exit status: 0 healthy, 1
/// not), then what the state directory and the running agent say; `json`: the same as
/// one JSON object (docs/status.md).
pub fn status(c: &Config, json: bool) -> i32 {
    let qc = queue_config(c);
    let view = match crate::queue::Queue::inspect(&qc.dir) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: change queue in {}: {e}", qc.dir.display());
            return exit::FAILURE;
        }
    };
    let now = crate::status::unix(std::time::SystemTime::now());
    let (running, rt) = crate::status::read_runtime(&c.agent.state_dir, now);
    let doc = status_document(c, running, rt.as_ref().map(|(r, a)| (r, *a)), &view.stats);
    let code = if doc.healthy { exit::OK } else { exit::FAILURE };
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return code;
    }
    let ago = |secs: u64| {
        format!(
            "{} ago",
            crate::sync::progress::format_duration(std::time::Duration::from_secs(secs))
        )
    };
    if doc.healthy {
        crate::outln!("healthy: yes");
    } else {
        crate::outln!("healthy: no ({})", doc.problems.join("; "));
    }
    match (&doc.pid, &doc.phase) {
        (Some(pid), Some(phase)) => {
            crate::outln!("agent:        {}: running (pid {pid}), {phase}", c.agent.id)
        }
        _ if doc.running => crate::outln!("agent:        {}: running, starting", c.agent.id),
        _ => crate::outln!("agent:        {}: not running", c.agent.id),
    }
    if doc.running {
        let f = &doc.feed;
        crate::outln!(
            "feed:         {}: {}{}",
            f.kind.as_deref().unwrap_or("not chosen yet"),
            if f.connected {
                "connected"
            } else {
                "NOT connected"
            },
            f.last_event_age_secs
                .map(|a| format!(", last event {}", ago(a)))
                .unwrap_or_default()
        );
        let e = &doc.endpoint;
        crate::outln!(
            "endpoint:     {}{}",
            match e.state {
                crate::status::EndpointState::Ok => "ok",
                crate::status::EndpointState::Unhealthy => "UNHEALTHY",
                crate::status::EndpointState::Unknown => "unknown (no request yet)",
            },
            match (&e.last_error, e.last_error_age_secs) {
                (Some(err), Some(a)) => format!("; last error {}: {err}", ago(a)),
                (Some(err), None) => format!("; last error: {err}"),
                _ => String::new(),
            }
        );
    }
    if !doc.endpoint.not_kept.is_empty() {
        crate::outln!(
            "not kept:     {} (the endpoint accepted these and did not keep them as sent)",
            doc.endpoint.not_kept.join(", ")
        );
    }
    let s = &view.stats;
    crate::outln!(
        "queue:        {} changes pending, {} of {} bytes on disk, {} segments",
        s.depth,
        s.bytes,
        c.queue.max_bytes,
        s.segments
    );
    crate::outln!(
        "oldest:       {}",
        s.oldest_age
            .map(|a| format!("{} ago", crate::sync::progress::format_duration(a)))
            .unwrap_or_else(|| "none pending".into())
    );
    crate::outln!(
        "resync owed:  {}",
        s.resync_owed
            .map(|r| format!("yes ({r})"))
            .unwrap_or_else(|| "no".into())
    );
    crate::outln!(
        "sequences:    acknowledged {} of {}",
        s.acked_seq,
        s.last_seq
    );
    let mark = view
        .watermark
        .as_deref()
        .and_then(|w| serde_json::from_slice::<crate::sync::change::Watermark>(w).ok())
        .and_then(|w| crate::base64::decode(&w.cookie).ok())
        .map(|c| describe_cookie(&c));
    crate::outln!(
        "watermark:    {}",
        mark.unwrap_or_else(|| "none (no full pass has completed)".into())
    );
    match AnchorIndex::count_saved(&c.agent.state_dir) {
        Ok(n) => crate::outln!("anchors:      {n} objects provisioned"),
        Err(e) => crate::outln!("anchors:      unreadable: {e}"),
    }
    crate::outln!(
        "full pass:    {}",
        match crate::sync::follow::last_full_pass(&c.agent.state_dir)
            .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
        {
            Some(age) => format!(
                "last completed {} ago",
                crate::sync::progress::format_duration(age)
            ),
            None => "none recorded".into(),
        }
    );
    let cloud = c.agent.state_dir.join(crate::relay::remote::CLOUD_PROFILE);
    let local = local_profile_words(c);
    match fs::metadata(&cloud).and_then(|m| m.modified()) {
        Ok(since) if profile_policy(c).accept => println!(
            "profile:      cloud profile in force since {} ({}), on top of the local one: {local}",
            utc(since),
            cloud.display()
        ),
        Ok(_) => println!(
            "profile:      local: {local}; a stored cloud profile ({}) is not used: relay.accept_profiles is off (`run` removes it)",
            cloud.display()
        ),
        Err(_) => println!("profile:      local: {local}; {}", cloud_policy_words(c)),
    }
    match &c.relay {
        None => crate::outln!("relay:        not configured (always active)"),
        Some(r) => {
            let path = c.agent.state_dir.join(crate::relay::link::STATUS_FILE);
            let st: Option<crate::relay::link::RelayStatus> = crate::state_dir::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            match st {
                None => crate::outln!(
                    "relay:        {} (group {}): no heartbeat recorded yet",
                    r.url,
                    r.group
                ),
                Some(s) => {
                    let age = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0)
                        .saturating_sub(s.last_heartbeat);
                    crate::outln!(
                        "relay:        {} (group {}): {}; last heartbeat {}{}",
                        s.url,
                        s.group,
                        s.role.to_uppercase(),
                        if s.last_heartbeat == 0 {
                            "never answered".to_string()
                        } else {
                            format!(
                                "{} ago",
                                crate::sync::progress::format_duration(
                                    std::time::Duration::from_secs(age)
                                )
                            )
                        },
                        s.last_error
                            .map(|e| format!("; last error: {e}"))
                            .unwrap_or_default()
                    );
                }
            }
        }
    }
    match open_gate(c) {
        Ok(g) if g.held().is_empty() => crate::outln!(
            "deletes:      none held ({} sent in the current {} s window, threshold {})",
            g.recent(),
            c.sync.delete_interval.as_secs(),
            c.sync.delete_threshold
        ),
        Ok(g) => {
            crate::outln!(
                "deletes:      {} HELD for approval (threshold {} per {} s); release with `idrelay --config {} approve-deletes`",
                g.held().len(),
                c.sync.delete_threshold,
                c.sync.delete_interval.as_secs(),
                c.path.display()
            );
            for t in g.held().iter().take(5) {
                crate::outln!("              {} {}: {}", t.kind.word(), t.dn, t.reason);
            }
        }
        Err(e) => crate::outln!("deletes:      {e}"),
    }
    if let Ok(g) = open_gate(c) {
        let settling = g.pending().len() + g.going().len();
        if settling > 0 {
            crate::outln!(
                "              {settling} deletes wait to be weighed (sync.delete_settle_secs = {})",
                c.sync.delete_settle.as_secs()
            );
        }
        crate::outln!("unmatched:    {}", unmatched_line(g.unmatched()));
    }
    for line in crate::sync::follow::parking::status_lines(&c.agent.state_dir) {
        crate::outln!("{line}");
    }
    code
}

/// The `status` line about feed deletes that matched no provisioned object.
fn unmatched_line((n, last): (u64, Option<&crate::sync::deletes::Unmatched>)) -> String {
    if n == 0 {
        return "none (every delete from the change feed matched what it names)".into();
    }
    let last = last
        .map(|u| {
            let age = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
                .saturating_sub(u.at);
            format!(
                "; last: {}, {} ago",
                u.dn.clone()
                    .unwrap_or_else(|| format!("uuid {} (no DN sent)", u.uuid)),
                crate::sync::progress::format_duration(std::time::Duration::from_secs(age))
            )
        })
        .unwrap_or_default();
    format!(
        "{n} unmatched {} from the change feed (they matched nothing this agent provisioned; \
         see the log){last}; a full pass removes what it no longer finds",
        if n == 1 { "delete" } else { "deletes" }
    )
}

/// A feed position as `status` prints it: the text of a text cookie (syncrepl, uSN JSON,
/// a timestamp), else its size and first bytes in hex (DirSync's cookie is binary).
fn describe_cookie(cookie: &[u8]) -> String {
    match std::str::from_utf8(cookie) {
        Ok(text) if !text.chars().any(char::is_control) => text.to_string(),
        _ => {
            let head: String = cookie.iter().take(12).map(|b| format!("{b:02x}")).collect();
            format!(
                "{} bytes, binary (starts {head}{})",
                cookie.len(),
                if cookie.len() > 12 { "..." } else { "" }
            )
        }
    }
}

#[cfg(test)]
mod cookie_tests {
    use super::describe_cookie;

    #[test]
    fn text_cookies_print_as_text_and_binary_ones_as_size_and_hex() {
        assert_eq!(
            describe_cookie(b"rid=000,csn=20261206120000.000000Z#000000#000#000000"),
            "rid=000,csn=20261206120000.000000Z#000000#000#000000"
        );
        let dirsync = [
            0x4d, 0x53, 0x44, 0x53, 0x03, 0x00, 0x00, 0x00, 0xff, 0x10, 0x00, 0x01, 0x02,
        ];
        assert_eq!(
            describe_cookie(&dirsync),
            "13 bytes, binary (starts 4d53445303000000ff100001...)"
        );
    }
}
