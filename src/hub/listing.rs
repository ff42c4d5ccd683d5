//! The operator's view of a large fleet: `GET /v1/agents` in pages with filters, and
//! `GET /v1/groups`, a summary per group (docs/hub.md, "Listing a large fleet").
//!
//! Order and cursors. Agents are listed by group, then agent id; groups by name (byte
//! order; both are names of `[A-Za-z0-9._-]`). A page is `limit` entries (1 to
//! [`MAX_LIMIT`], default [`DEFAULT_LIMIT`]) after or before a cursor. A cursor is the key
//! of the last (first) entry of the page the caller saw, never an offset, so a page does
//! not shift when agents come or go in front of it (a hub restarted with a longer
//! `[[agent]]` list between two pages): nothing seen comes again, nothing behind the cursor
//! is skipped. `next` and `prev` are the cursors of the neighbouring pages, `null` at either
//! end (and `prev` is `null` on an empty page: start again without a cursor). The caller
//! passes a cursor back as it got it (`after:<group>/<agent>`, `before:...`; for groups
//! `after:<group>`).
//!
//! Cost. A page writes `limit` agents. Filters, counts and the fleet's totals walk every
//! agent once per request, but read only what the hub kept when each heartbeat arrived
//! ([`Digest`], one byte), never the heartbeat's JSON; the heartbeats on the page are written
//! out as the checked text they were kept as ([`RawValue`]), not parsed again.
//!
//! Health. An agent is unhealthy when a [`Problem`] holds: no heartbeat yet, none within
//! the lease TTL, no long-poll, `state` `degraded`, its SCIM endpoint unhealthy, its change
//! feed down. A group needs attention when one of its agents is unhealthy or nobody holds
//! its lease.
//!
//! Pure: no clock, no I/O; the hub's state hands in its rows through [`Fleet`].

use std::fmt;
use std::ops::Range;

use serde::ser::SerializeSeq;
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

use super::config::valid_name;
use super::route::percent_decode;

/// Entries per page when the query names no `limit`.
pub const DEFAULT_LIMIT: usize = 50;
/// Most entries per page.
pub const MAX_LIMIT: usize = 500;

/// What a heartbeat says about the agent's health, taken once when it arrives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digest(u8);

impl Digest {
    const DEGRADED: u8 = 1;
    const ENDPOINT: u8 = 2;
    const FEED: u8 = 4;

    /// The digest of heartbeat `hb` (docs/protocol.md, "Heartbeat").
    pub fn of(hb: &Value) -> Digest {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
        let mut d = 0;
        if text(hb.get("state")).as_deref() == Some("degraded") {
            d |= Digest::DEGRADED;
        }
        if let Some(e) = hb.get("endpoint") {
            let outage = e.get("outage").is_some_and(|o| !o.is_null());
            if outage || text(e.get("state")).as_deref() == Some("unhealthy") {
                d |= Digest::ENDPOINT;
            }
        }
        let feed_up = hb.get("feed").and_then(|f| f.get("connected"));
        if feed_up.and_then(Value::as_bool) == Some(false) {
            d |= Digest::FEED;
        }
        Digest(d)
    }
}

/// Why an agent counts as unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// It never sent a heartbeat (to this hub or one before it on the same store).
    NoHeartbeat,
    /// Its last heartbeat is older than the lease TTL.
    NotAlive,
    /// It holds no long-poll and has not polled lately: commands would wait.
    NotPolling,
    /// Its heartbeat's `state` is `degraded`.
    Degraded,
    /// Its SCIM endpoint is unhealthy or in an outage.
    EndpointUnhealthy,
    /// Its change feed's search is down.
    FeedDown,
}

impl Problem {
    const ALL: [Problem; 6] = [
        Problem::NoHeartbeat,
        Problem::NotAlive,
        Problem::NotPolling,
        Problem::Degraded,
        Problem::EndpointUnhealthy,
        Problem::FeedDown,
    ];

    /// The name the API uses (`problems` of an agent).
    pub fn name(self) -> &'static str {
        match self {
            Problem::NoHeartbeat => "no heartbeat",
            Problem::NotAlive => "not alive",
            Problem::NotPolling => "not polling",
            Problem::Degraded => "degraded",
            Problem::EndpointUnhealthy => "endpoint unhealthy",
            Problem::FeedDown => "feed down",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// The problems of one agent (a set; empty: healthy).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Problems(u8);

impl Problems {
    /// The problems of an agent whose last heartbeat has `digest` (`None`: never one), that
    /// is `alive` (heartbeat within the lease TTL) and `connected` (polling).
    pub fn of(digest: Option<Digest>, alive: bool, connected: bool) -> Problems {
        let mut p = 0;
        let mut add = |yes: bool, what: Problem| {
            if yes {
                p |= what.bit();
            }
        };
        add(digest.is_none(), Problem::NoHeartbeat);
        add(digest.is_some() && !alive, Problem::NotAlive);
        add(!connected, Problem::NotPolling);
        let d = digest.unwrap_or_default().0;
        add(d & Digest::DEGRADED != 0, Problem::Degraded);
        add(d & Digest::ENDPOINT != 0, Problem::EndpointUnhealthy);
        add(d & Digest::FEED != 0, Problem::FeedDown);
        Problems(p)
    }

    /// No problem.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The problems, in a fixed order.
    pub fn iter(self) -> impl Iterator<Item = Problem> {
        Problem::ALL
            .into_iter()
            .filter(move |p| self.0 & p.bit() != 0)
    }
}

impl Serialize for Problems {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(None)?;
        for p in self.iter() {
            seq.serialize_element(p.name())?;
        }
        seq.end()
    }
}

/// One agent as the operator API lists it (docs/hub.md, `GET /v1/agents`).
#[derive(Debug, Serialize)]
pub struct AgentRow<'a> {
    /// Agent id.
    pub agent: &'a str,
    /// Its configured group.
    pub group: &'a str,
    /// `Idrelay-Instance` of its last heartbeat.
    pub instance: Option<&'a str>,
    /// `active` or `standby` by the lease; none before the first heartbeat.
    pub role: Option<&'static str>,
    /// A heartbeat within the lease TTL.
    pub alive: bool,
    /// Seconds since the last heartbeat.
    pub last_heartbeat_age_secs: Option<u64>,
    /// The last heartbeat as the agent sent it (checked JSON text, written as is).
    pub heartbeat: Option<&'a RawValue>,
    /// A poll held or recent.
    pub connected: bool,
    /// Seconds since the last poll.
    pub last_poll_age_secs: Option<u64>,
    /// Requests waiting at the hub.
    pub queued: usize,
    /// No problem.
    pub healthy: bool,
    /// What is wrong (names of [`Problem`]).
    pub problems: Problems,
}

/// Who holds a group's lease.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Holder<'a> {
    /// Agent id.
    pub agent: &'a str,
    /// Its instance.
    pub instance: &'a str,
}

/// The hub's agents, as the listing reads them.
pub trait Fleet {
    /// The agents in listing order.
    fn order(&self) -> &Order;
    /// The agent at position `i` of [`Fleet::order`].
    fn row(&self, i: usize) -> Option<AgentRow<'_>>;
    /// Whether the agent at position `i` is healthy ([`AgentRow::healthy`], without the
    /// rest of the row).
    fn healthy(&self, i: usize) -> bool;
    /// The holder of `group`'s lease now.
    fn holder(&self, group: &str) -> Option<Holder<'_>>;
}

/// The agents sorted by (group, agent id), with where each group starts; built once, since
/// the agents are the config's.
#[derive(Debug, Default)]
pub struct Order {
    keys: Vec<(Box<str>, Box<str>)>,
    group_starts: Vec<usize>,
}

impl Order {
    /// The order of `agents` (agent id, group).
    pub fn new<'a>(agents: impl IntoIterator<Item = (&'a str, &'a str)>) -> Order {
        let mut keys: Vec<(Box<str>, Box<str>)> = agents
            .into_iter()
            .map(|(a, g)| (g.into(), a.into()))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let group_starts = (0..keys.len())
            .filter(|&i| i == 0 || keys[i - 1].0 != keys[i].0)
            .collect();
        Order { keys, group_starts }
    }

    /// Agents.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// No agents.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The agent id at position `i`.
    pub fn agent(&self, i: usize) -> &str {
        &self.keys[i].1
    }

    /// The group at position `i`.
    pub fn group(&self, i: usize) -> &str {
        &self.keys[i].0
    }

    /// The positions of `group`'s agents (empty when there are none).
    fn group_range(&self, group: &str) -> Range<usize> {
        let lo = self.keys.partition_point(|k| &*k.0 < group);
        let hi = self.keys.partition_point(|k| &*k.0 <= group);
        lo..hi
    }

    /// Groups.
    fn groups(&self) -> usize {
        self.group_starts.len()
    }

    /// Group number `gi`: its name and its agents' positions.
    fn group_at(&self, gi: usize) -> (&str, Range<usize>) {
        let start = self.group_starts[gi];
        let end = self.group_starts.get(gi + 1).copied().unwrap_or(self.len());
        (&self.keys[start].0, start..end)
    }

    /// The first position after `key` (`after`) or at it (not after).
    fn position(&self, key: &Key, after: bool) -> usize {
        self.keys.partition_point(|(g, a)| {
            let k = (&**g, &**a);
            let c = (key.0.as_str(), key.1.as_str());
            if after {
                k <= c
            } else {
                k < c
            }
        })
    }
}

/// A listing position: (group, agent id); the agent is empty in a group cursor.
pub type Key = (String, String);

/// Where a page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    /// The entries after this key.
    After(Key),
    /// The entries before this key.
    Before(Key),
}

/// What is listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `GET /v1/agents`: parameters `limit`, `cursor`, `group`, `unhealthy`.
    Agents,
    /// `GET /v1/groups`: parameters `limit`, `cursor`, `unhealthy`.
    Groups,
}

impl Kind {
    fn parameters(self) -> &'static str {
        match self {
            Kind::Agents => "limit, cursor, group, unhealthy",
            Kind::Groups => "limit, cursor, unhealthy",
        }
    }
}

/// A listing request, from the query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// Entries per page.
    pub limit: usize,
    /// Where the page starts; `None`: at the beginning.
    pub cursor: Option<Cursor>,
    /// Only this group's agents.
    pub group: Option<String>,
    /// Only unhealthy agents (groups needing attention).
    pub unhealthy: bool,
}

/// Why a listing's query string was refused (the answer is `400` naming the parameter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryError {
    /// A parameter this listing does not take.
    Unknown {
        /// Its name (cut to 64 characters).
        name: String,
        /// The parameters it takes.
        allowed: &'static str,
    },
    /// A parameter given twice.
    Repeated(&'static str),
    /// `limit` is not a whole number from 1 to [`MAX_LIMIT`].
    Limit(String),
    /// `cursor` is not one this listing gives out.
    Cursor(String),
    /// `group` is not a group name.
    Group(String),
    /// `unhealthy` is neither `true` nor `false`.
    Unhealthy(String),
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryError::Unknown { name, allowed } => write!(
                f,
                "unknown query parameter `{name}`: this listing takes {allowed}"
            ),
            QueryError::Repeated(p) => write!(f, "query parameter `{p}` is given twice"),
            QueryError::Limit(v) => write!(
                f,
                "query parameter `limit` must be a whole number from 1 to {MAX_LIMIT}, not `{v}`"
            ),
            QueryError::Cursor(v) => write!(
                f,
                "query parameter `cursor` is not a cursor of this listing (`{v}`): pass back \
                 the `next` or `prev` of an answer as it is"
            ),
            QueryError::Group(v) => write!(
                f,
                "query parameter `group` must be a group name (1-64 of A-Z a-z 0-9 . _ -), \
                 not `{v}`"
            ),
            QueryError::Unhealthy(v) => write!(
                f,
                "query parameter `unhealthy` must be `true` or `false`, not `{v}`"
            ),
        }
    }
}

impl std::error::Error for QueryError {}

/// At most 64 characters of `s`, for an error message.
fn cut(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Reads the query string `query` (still percent-encoded) of a `kind` listing.
pub fn parse_query(kind: Kind, query: &str) -> Result<ListQuery, QueryError> {
    let mut q = ListQuery {
        limit: DEFAULT_LIMIT,
        cursor: None,
        group: None,
        unhealthy: false,
    };
    let mut seen: Vec<&'static str> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = percent_decode(raw_name).unwrap_or_else(|| raw_name.to_string());
        let value = percent_decode(raw_value).unwrap_or_else(|| raw_value.to_string());
        let param: &'static str = match (name.as_str(), kind) {
            ("limit", _) => "limit",
            ("cursor", _) => "cursor",
            ("unhealthy", _) => "unhealthy",
            ("group", Kind::Agents) => "group",
            _ => {
                return Err(QueryError::Unknown {
                    name: cut(&name),
                    allowed: kind.parameters(),
                })
            }
        };
        if seen.contains(&param) {
            return Err(QueryError::Repeated(param));
        }
        seen.push(param);
        match param {
            "limit" => {
                q.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| QueryError::Limit(cut(&value)))?;
            }
            "cursor" => {
                q.cursor = Some(
                    parse_cursor(kind, &value).ok_or_else(|| QueryError::Cursor(cut(&value)))?,
                )
            }
            "group" if valid_name(&value) => q.group = Some(value),
            "group" => return Err(QueryError::Group(cut(&value))),
            _ => {
                q.unhealthy = match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(QueryError::Unhealthy(cut(&value))),
                }
            }
        }
    }
    Ok(q)
}

/// `after:<group>/<agent>` (`after:<group>` for groups), or `before:` the same.
fn parse_cursor(kind: Kind, text: &str) -> Option<Cursor> {
    let (dir, key) = text.split_once(':')?;
    let key = match (kind, key.split_once('/')) {
        (Kind::Agents, Some((g, a))) if valid_name(g) && valid_name(a) => {
            (g.to_string(), a.to_string())
        }
        (Kind::Groups, None) if valid_name(key) => (key.to_string(), String::new()),
        _ => return None,
    };
    match dir {
        "after" => Some(Cursor::After(key)),
        "before" => Some(Cursor::Before(key)),
        _ => None,
    }
}

/// The text of cursor `c` of a `kind` listing (what [`parse_cursor`] reads back).
fn cursor_text(kind: Kind, c: &Cursor) -> String {
    let (dir, (g, a)) = match c {
        Cursor::After(k) => ("after", k),
        Cursor::Before(k) => ("before", k),
    };
    match kind {
        Kind::Agents => format!("{dir}:{g}/{a}"),
        Kind::Groups => format!("{dir}:{g}"),
    }
}

/// Where a selection starts, as a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum From {
    Start,
    /// Forward from this position.
    At(usize),
    /// Backward from just before this position.
    Before(usize),
}

/// The entries of one page: their positions, how many kept entries lie before the first
/// (`offset`) and how many are kept in all (`matched`).
#[derive(Debug, PartialEq, Eq)]
struct Selection {
    items: Vec<usize>,
    offset: usize,
    matched: usize,
}

/// Up to `limit` positions of `range` that `keep` takes, from `from`, in order. A
/// backward page that reaches the start of `range` short of `limit` is the first page.
fn select(
    range: Range<usize>,
    from: From,
    limit: usize,
    keep: impl Fn(usize) -> bool,
) -> Selection {
    let clamp = |p: usize| p.clamp(range.start, range.end);
    let forward = |start: usize| -> Vec<usize> {
        (start..range.end)
            .filter(|&i| keep(i))
            .take(limit)
            .collect()
    };
    let items = match from {
        From::Start => forward(range.start),
        From::At(p) => forward(clamp(p)),
        From::Before(p) => {
            let mut back: Vec<usize> = (range.start..clamp(p))
                .rev()
                .filter(|&i| keep(i))
                .take(limit)
                .collect();
            if back.len() < limit {
                forward(range.start)
            } else {
                back.reverse();
                back
            }
        }
    };
    let first = match (items.first(), from) {
        (Some(&i), _) => i,
        (None, From::At(p) | From::Before(p)) => clamp(p),
        (None, From::Start) => range.start,
    };
    let offset = (range.start..first).filter(|&i| keep(i)).count();
    let matched = offset + (first..range.end).filter(|&i| keep(i)).count();
    Selection {
        items,
        offset,
        matched,
    }
}

/// The neighbouring pages' cursors of `sel`, whose entries have keys `key`.
fn neighbours(sel: &Selection, key: impl Fn(usize) -> Key) -> (Option<Cursor>, Option<Cursor>) {
    let next = sel
        .items
        .last()
        .filter(|_| sel.offset + sel.items.len() < sel.matched)
        .map(|&i| Cursor::After(key(i)));
    let prev = sel
        .items
        .first()
        .filter(|_| sel.offset > 0)
        .map(|&i| Cursor::Before(key(i)));
    (next, prev)
}

/// One group's summary.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct GroupSummary<'a> {
    /// Group name.
    pub group: &'a str,
    /// Its agents.
    pub agents: usize,
    /// Of them healthy.
    pub healthy: usize,
    /// Of them unhealthy.
    pub unhealthy: usize,
    /// The holder of its lease now.
    pub active: Option<Holder<'a>>,
    /// An agent is unhealthy or nobody holds the lease.
    pub attention: bool,
}

/// The whole fleet in numbers.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Totals {
    /// Agents configured.
    pub agents: usize,
    /// Of them healthy.
    pub healthy: usize,
    /// Of them unhealthy.
    pub unhealthy: usize,
    /// Groups.
    pub groups: usize,
    /// Groups whose lease nobody holds.
    pub groups_without_active: usize,
    /// Groups needing attention.
    pub groups_needing_attention: usize,
}

/// Every agent's health (by position) and the group summaries, worked out once a request.
struct Census<'a, F: Fleet> {
    fleet: &'a F,
    health: Vec<bool>,
}

impl<'a, F: Fleet> Census<'a, F> {
    fn of(fleet: &'a F) -> Self {
        let health = (0..fleet.order().len()).map(|i| fleet.healthy(i)).collect();
        Census { fleet, health }
    }

    fn summary(&self, group: &'a str, range: Range<usize>) -> GroupSummary<'a> {
        let agents = range.len();
        let healthy = self.health[range].iter().filter(|h| **h).count();
        let active = self.fleet.holder(group);
        GroupSummary {
            group,
            agents,
            healthy,
            unhealthy: agents - healthy,
            active,
            attention: healthy < agents || active.is_none(),
        }
    }

    fn group_summary(&self, gi: usize) -> GroupSummary<'a> {
        let (g, range) = self.fleet.order().group_at(gi);
        self.summary(g, range)
    }

    fn totals(&self) -> Totals {
        let order = self.fleet.order();
        let healthy = self.health.iter().filter(|h| **h).count();
        let mut t = Totals {
            agents: order.len(),
            healthy,
            unhealthy: order.len() - healthy,
            groups: order.groups(),
            ..Totals::default()
        };
        for gi in 0..order.groups() {
            let s = self.group_summary(gi);
            t.groups_without_active += usize::from(s.active.is_none());
            t.groups_needing_attention += usize::from(s.attention);
        }
        t
    }
}

#[derive(Serialize)]
struct AgentsPage<'a> {
    agents: Vec<AgentRow<'a>>,
    groups: Vec<GroupSummary<'a>>,
    totals: Totals,
    matched: usize,
    offset: usize,
    limit: usize,
    next: Option<String>,
    prev: Option<String>,
}

#[derive(Serialize)]
struct GroupsPage<'a> {
    groups: Vec<GroupSummary<'a>>,
    totals: Totals,
    matched: usize,
    offset: usize,
    limit: usize,
    next: Option<String>,
    prev: Option<String>,
}

fn from_cursor(cursor: Option<&Cursor>, position: impl Fn(&Key, bool) -> usize) -> From {
    match cursor {
        None => From::Start,
        Some(Cursor::After(k)) => From::At(position(k, true)),
        Some(Cursor::Before(k)) => From::Before(position(k, false)),
    }
}

/// `GET /v1/agents?...`: one page of agents as JSON text, with the summaries of the groups
/// on it and the fleet's totals.
pub fn agents_page(fleet: &impl Fleet, q: &ListQuery) -> String {
    let order = fleet.order();
    let census = Census::of(fleet);
    let range = match &q.group {
        Some(g) => order.group_range(g),
        None => 0..order.len(),
    };
    let from = from_cursor(q.cursor.as_ref(), |k, after| order.position(k, after));
    let sel = select(range, from, q.limit, |i| !q.unhealthy || !census.health[i]);
    let key = |i: usize| (order.group(i).to_string(), order.agent(i).to_string());
    let (next, prev) = neighbours(&sel, key);
    let mut groups: Vec<GroupSummary<'_>> = Vec::new();
    for &i in &sel.items {
        let g = order.group(i);
        if groups.last().is_none_or(|s| s.group != g) {
            groups.push(census.summary(g, order.group_range(g)));
        }
    }
    let page = AgentsPage {
        agents: sel.items.iter().filter_map(|&i| fleet.row(i)).collect(),
        groups,
        totals: census.totals(),
        matched: sel.matched,
        offset: sel.offset,
        limit: q.limit,
        next: next.map(|c| cursor_text(Kind::Agents, &c)),
        prev: prev.map(|c| cursor_text(Kind::Agents, &c)),
    };
    serde_json::to_string(&page).unwrap_or_else(|_| "{}".into())
}

/// `GET /v1/groups?...`: one page of group summaries as JSON text, with the fleet's
/// totals.
pub fn groups_page(fleet: &impl Fleet, q: &ListQuery) -> String {
    let order = fleet.order();
    let census = Census::of(fleet);
    let names: Vec<&str> = (0..order.groups()).map(|gi| order.group_at(gi).0).collect();
    let position = |k: &Key, after: bool| {
        names.partition_point(|g| {
            if after {
                *g <= k.0.as_str()
            } else {
                *g < k.0.as_str()
            }
        })
    };
    let from = from_cursor(q.cursor.as_ref(), position);
    let summaries: Vec<GroupSummary<'_>> = if q.unhealthy {
        (0..order.groups())
            .map(|gi| census.group_summary(gi))
            .collect()
    } else {
        Vec::new()
    };
    let sel = select(0..order.groups(), from, q.limit, |gi| {
        !q.unhealthy || summaries[gi].attention
    });
    let key = |gi: usize| (names[gi].to_string(), String::new());
    let (next, prev) = neighbours(&sel, key);
    let page = GroupsPage {
        groups: sel
            .items
            .iter()
            .map(|&gi| census.group_summary(gi))
            .collect(),
        totals: census.totals(),
        matched: sel.matched,
        offset: sel.offset,
        limit: q.limit,
        next: next.map(|c| cursor_text(Kind::Groups, &c)),
        prev: prev.map(|c| cursor_text(Kind::Groups, &c)),
    };
    serde_json::to_string(&page).unwrap_or_else(|_| "{}".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    /// A fleet of agents `(id, group, healthy)`; groups in `holders` have an active agent.
    struct Fake {
        order: Order,
        health: HashMap<String, bool>,
        holders: HashMap<String, String>,
    }

    impl Fake {
        fn new(agents: &[(&str, &str, bool)]) -> Fake {
            let mut holders = HashMap::new();
            for (a, g, _) in agents {
                holders.entry(g.to_string()).or_insert(a.to_string());
            }
            Fake {
                order: Order::new(agents.iter().map(|(a, g, _)| (*a, *g))),
                health: agents.iter().map(|(a, _, h)| (a.to_string(), *h)).collect(),
                holders,
            }
        }

        /// `n` agents `a00`.. in groups of `per` (`g0`, `g1`, ...), every `sick`-th unhealthy.
        fn numbered(n: usize, per: usize, sick: usize) -> Fake {
            let owned: Vec<(String, String, bool)> = (0..n)
                .map(|i| (format!("a{i:02}"), format!("g{}", i / per), i % sick != 0))
                .collect();
            let refs: Vec<(&str, &str, bool)> = owned
                .iter()
                .map(|(a, g, h)| (a.as_str(), g.as_str(), *h))
                .collect();
            Fake::new(&refs)
        }
    }

    impl Fleet for Fake {
        fn order(&self) -> &Order {
            &self.order
        }

        fn row(&self, i: usize) -> Option<AgentRow<'_>> {
            let healthy = self.healthy(i);
            Some(AgentRow {
                agent: self.order.agent(i),
                group: self.order.group(i),
                instance: None,
                role: None,
                alive: healthy,
                last_heartbeat_age_secs: None,
                heartbeat: None,
                connected: true,
                last_poll_age_secs: None,
                queued: 0,
                healthy,
                problems: Problems::of(Some(Digest::default()), healthy, true),
            })
        }

        fn healthy(&self, i: usize) -> bool {
            self.health[self.order.agent(i)]
        }

        fn holder(&self, group: &str) -> Option<Holder<'_>> {
            self.holders.get(group).map(|a| Holder {
                agent: a,
                instance: "i1",
            })
        }
    }

    fn q(text: &str) -> ListQuery {
        parse_query(Kind::Agents, text).unwrap()
    }

    fn page(f: &Fake, query: &str) -> Value {
        serde_json::from_str(&agents_page(f, &q(query))).unwrap()
    }

    fn ids(v: &Value) -> Vec<String> {
        v["agents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["agent"].as_str().unwrap().to_string())
            .collect()
    }

    fn with_cursor(base: &str, cursor: &Value) -> String {
        format!("{base}&cursor={}", cursor.as_str().unwrap())
    }

    #[test]
    fn the_query_is_read_with_defaults_and_bounds() {
        assert_eq!(
            q(""),
            ListQuery {
                limit: DEFAULT_LIMIT,
                cursor: None,
                group: None,
                unhealthy: false
            }
        );
        let got = q("limit=500&group=branch-01&unhealthy=true&cursor=after%3Ag%2Fa1");
        assert_eq!(got.limit, 500);
        assert_eq!(got.group.as_deref(), Some("branch-01"));
        assert!(got.unhealthy);
        assert_eq!(got.cursor, Some(Cursor::After(("g".into(), "a1".into()))));
        assert_eq!(q("limit=1").limit, 1);
        for bad in [
            "limit=0",
            "limit=501",
            "limit=-1",
            "limit=",
            "limit=ten",
            "limit",
        ] {
            let e = parse_query(Kind::Agents, bad).unwrap_err();
            assert!(matches!(e, QueryError::Limit(_)), "{bad}: {e:?}");
            assert!(e.to_string().contains("`limit`"), "{e}");
            assert!(e.to_string().contains("1 to 500"), "{e}");
        }
    }

    #[test]
    fn a_bad_query_names_the_parameter() {
        let err = |kind, text| parse_query(kind, text).unwrap_err().to_string();
        assert!(err(Kind::Agents, "limt=5").contains("unknown query parameter `limt`"));
        assert!(err(Kind::Agents, "limt=5").contains("limit, cursor, group, unhealthy"));
        assert!(err(Kind::Groups, "group=g").contains("unknown query parameter `group`"));
        assert!(err(Kind::Agents, "limit=5&limit=6").contains("`limit` is given twice"));
        assert!(err(Kind::Agents, "group=a%2Fb").contains("`group`"));
        assert!(err(Kind::Agents, "unhealthy=yes").contains("`unhealthy`"));
        for bad in [
            "cursor=g/a",
            "cursor=after:g",
            "cursor=after:g/a/b",
            "cursor=sideways:g/a",
            "cursor=after:g%20x/a",
        ] {
            assert!(err(Kind::Agents, bad).contains("`cursor`"), "{bad}");
        }
        assert!(err(Kind::Groups, "cursor=after:g/a").contains("`cursor`"));
        assert_eq!(
            parse_query(Kind::Groups, "cursor=before:g").unwrap().cursor,
            Some(Cursor::Before(("g".into(), String::new())))
        );
        // A long bad value is cut in the message.
        assert!(err(Kind::Agents, &format!("limit={}", "9".repeat(200))).len() < 200);
    }

    #[test]
    fn the_order_is_by_group_then_agent() {
        let f = Fake::new(&[
            ("b", "g2", true),
            ("z", "g1", true),
            ("a", "g2", true),
            ("m", "g1", true),
            ("c", "g10", true),
        ]);
        let v = page(&f, "");
        assert_eq!(ids(&v), ["m", "z", "c", "a", "b"]);
        assert_eq!(f.order.groups(), 3);
        assert_eq!(f.order.group_at(1), ("g10", 2..3));
        assert_eq!(f.order.group_range("g2"), 3..5);
        assert_eq!(f.order.group_range("g3"), 5..5);
    }

    #[test]
    fn next_walks_every_agent_once_and_prev_walks_back() {
        let f = Fake::numbered(23, 4, 5);
        let mut seen = Vec::new();
        let mut pages = Vec::new();
        let mut v = page(&f, "limit=5");
        assert!(v["prev"].is_null());
        loop {
            assert_eq!(v["offset"], seen.len());
            assert_eq!(v["matched"], 23);
            seen.extend(ids(&v));
            pages.push(ids(&v));
            if v["next"].is_null() {
                break;
            }
            v = page(&f, &with_cursor("limit=5", &v["next"]));
        }
        let all: Vec<String> = (0..23).map(|i| format!("a{i:02}")).collect();
        assert_eq!(seen, all);
        assert_eq!(pages.len(), 5);
        assert_eq!(pages[4].len(), 3);
        // Back from the last page: each page as it was going forward.
        for expected in pages.iter().rev().skip(1) {
            v = page(&f, &with_cursor("limit=5", &v["prev"]));
            assert_eq!(&ids(&v), expected);
        }
        assert!(v["prev"].is_null());
    }

    #[test]
    fn a_page_does_not_shift_when_agents_come_before_its_cursor() {
        let before = Fake::numbered(10, 3, 100);
        let first = page(&before, "limit=4");
        assert_eq!(ids(&first), ["a00", "a01", "a02", "a03"]);
        assert_eq!(first["next"], "after:g1/a03");
        // The hub restarts with agents added in front of the cursor, behind it and between.
        let mut agents: Vec<(String, String)> = (0..10)
            .map(|i| (format!("a{i:02}"), format!("g{}", i / 3)))
            .collect();
        for (a, g) in [("a00x", "g0"), ("a03a", "g1"), ("a000", "g1"), ("zz", "g9")] {
            agents.push((a.into(), g.into()));
        }
        let refs: Vec<(&str, &str, bool)> = agents
            .iter()
            .map(|(a, g)| (a.as_str(), g.as_str(), true))
            .collect();
        let after = Fake::new(&refs);
        let second = page(&after, &with_cursor("limit=4", &first["next"]));
        assert_eq!(ids(&second), ["a03a", "a04", "a05", "a06"]);
        assert_eq!(second["offset"], 6, "two agents came in front of it");
        // The cursor's own agent gone: the page starts at the next one all the same.
        let gone: Vec<(&str, &str, bool)> = refs
            .iter()
            .copied()
            .filter(|(a, _, _)| *a != "a03")
            .collect();
        let v = page(&Fake::new(&gone), &with_cursor("limit=4", &first["next"]));
        assert_eq!(ids(&v), ["a03a", "a04", "a05", "a06"]);
    }

    #[test]
    fn filters_narrow_the_pages_and_their_counts() {
        // a00, a05, a10, a15 unhealthy; groups of 4.
        let f = Fake::numbered(20, 4, 5);
        let v = page(&f, "unhealthy=true&limit=3");
        assert_eq!(ids(&v), ["a00", "a05", "a10"]);
        assert_eq!(v["matched"], 4);
        assert!(v["agents"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["healthy"] == false));
        let v = page(&f, &with_cursor("unhealthy=true&limit=3", &v["next"]));
        assert_eq!(ids(&v), ["a15"]);
        assert_eq!((&v["offset"], &v["next"]), (&json!(3), &Value::Null));
        let v = page(&f, &with_cursor("unhealthy=true&limit=3", &v["prev"]));
        assert_eq!(ids(&v), ["a00", "a05", "a10"]);

        let v = page(&f, "group=g2");
        assert_eq!(ids(&v), ["a08", "a09", "a10", "a11"]);
        assert_eq!((&v["matched"], &v["next"]), (&json!(4), &Value::Null));
        let v = page(&f, "group=g2&unhealthy=true");
        assert_eq!(ids(&v), ["a10"]);
        let v = page(&f, "group=nosuch");
        assert_eq!((ids(&v).len(), &v["matched"]), (0, &json!(0)));
        // A cursor outside the group's range stays inside the group.
        let v = page(&f, "group=g2&cursor=after:g0/a00");
        assert_eq!(ids(&v), ["a08", "a09", "a10", "a11"]);
        let v = page(&f, "group=g2&cursor=after:g3/a12");
        assert!(ids(&v).is_empty());
        assert!(v["prev"].is_null(), "an empty page starts over");
    }

    #[test]
    fn a_page_carries_its_groups_summaries_and_the_totals() {
        let mut f = Fake::numbered(10, 4, 3);
        f.holders.remove("g2");
        let v = page(&f, "limit=3&cursor=after:g0/a02");
        assert_eq!(ids(&v), ["a03", "a04", "a05"]);
        // g0 (a00-a03: a00, a03 unhealthy), g1 (a04-a07: a06 unhealthy), whole groups.
        assert_eq!(
            v["groups"],
            json!([
                {"group": "g0", "agents": 4, "healthy": 2, "unhealthy": 2,
                 "active": {"agent": "a00", "instance": "i1"}, "attention": true},
                {"group": "g1", "agents": 4, "healthy": 3, "unhealthy": 1,
                 "active": {"agent": "a04", "instance": "i1"}, "attention": true},
            ])
        );
        assert_eq!(
            v["totals"],
            json!({"agents": 10, "healthy": 6, "unhealthy": 4, "groups": 3,
                   "groups_without_active": 1, "groups_needing_attention": 3})
        );
    }

    #[test]
    fn groups_page_in_order_with_the_attention_filter() {
        let owned: Vec<(String, String, bool)> = (0..12)
            .map(|i| (format!("a{i:02}"), format!("g{:02}", i / 2), i != 5))
            .collect();
        let refs: Vec<(&str, &str, bool)> = owned
            .iter()
            .map(|(a, g, h)| (a.as_str(), g.as_str(), *h))
            .collect();
        let mut f = Fake::new(&refs);
        f.holders.remove("g04");
        let gp = |text: &str| -> Value {
            serde_json::from_str(&groups_page(&f, &parse_query(Kind::Groups, text).unwrap()))
                .unwrap()
        };
        let names = |v: &Value| -> Vec<String> {
            v["groups"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g["group"].as_str().unwrap().to_string())
                .collect()
        };
        let v = gp("limit=4");
        assert_eq!(names(&v), ["g00", "g01", "g02", "g03"]);
        assert_eq!(
            (&v["matched"], &v["next"]),
            (&json!(6), &json!("after:g03"))
        );
        let v = gp("limit=4&cursor=after:g03");
        assert_eq!(names(&v), ["g04", "g05"]);
        assert_eq!(v["prev"], "before:g04");
        assert_eq!(v["groups"][0]["active"], Value::Null);
        let v = gp("unhealthy=true");
        assert_eq!(
            names(&v),
            ["g02", "g04"],
            "a05 unhealthy; g04 without a holder"
        );
        assert_eq!(v["groups"][0]["unhealthy"], 1);
    }

    /// Agents as `(id, group, healthy)`, owned; and a fleet of them.
    fn fleet_of(agents: &std::collections::BTreeMap<String, (String, bool)>) -> Fake {
        let refs: Vec<(&str, &str, bool)> = agents
            .iter()
            .map(|(a, (g, h))| (a.as_str(), g.as_str(), *h))
            .collect();
        Fake::new(&refs)
    }

    fn agents_strategy(
    ) -> impl proptest::strategy::Strategy<Value = std::collections::BTreeMap<String, (String, bool)>>
    {
        use proptest::prelude::*;
        proptest::collection::btree_map("[a-d]{1,3}", ("[a-c]{1,2}", any::<bool>()), 0..40)
    }

    proptest::proptest! {
        #[test]
        fn next_then_prev_visit_each_matching_agent_once_in_order(
            agents in agents_strategy(),
            limit in 1usize..8,
            unhealthy in proptest::prelude::any::<bool>(),
        ) {
            let f = fleet_of(&agents);
            let mut expected: Vec<(String, String)> = agents
                .iter()
                .filter(|(_, (_, h))| !unhealthy || !h)
                .map(|(a, (g, _))| (g.clone(), a.clone()))
                .collect();
            expected.sort();
            let base = format!("limit={limit}&unhealthy={unhealthy}");
            let mut v = page(&f, &base);
            let mut pages = Vec::new();
            loop {
                proptest::prop_assert!(ids(&v).len() <= limit);
                pages.push(ids(&v));
                if v["next"].is_null() {
                    break;
                }
                v = page(&f, &with_cursor(&base, &v["next"]));
            }
            let seen: Vec<String> = pages.concat();
            let want: Vec<String> = expected.iter().map(|(_, a)| a.clone()).collect();
            proptest::prop_assert_eq!(seen, want);
            for p in pages.iter().rev().skip(1) {
                v = page(&f, &with_cursor(&base, &v["prev"]));
                proptest::prop_assert_eq!(&ids(&v), p);
            }
            proptest::prop_assert!(v["prev"].is_null());
        }

        #[test]
        fn a_cursor_goes_on_after_its_key_whatever_was_added(
            agents in agents_strategy(),
            added in agents_strategy(),
            limit in 1usize..8,
        ) {
            let first = page(&fleet_of(&agents), &format!("limit={limit}"));
            let Some(next) = first["next"].as_str() else {
                return Ok(());
            };
            let mut both = agents.clone();
            for (a, v) in added {
                both.entry(a).or_insert(v);
            }
            let last = first["agents"][limit - 1].clone();
            let key = (last["group"].as_str().unwrap().to_string(),
                       last["agent"].as_str().unwrap().to_string());
            let mut after: Vec<(String, String)> = both
                .iter()
                .map(|(a, (g, _))| (g.clone(), a.clone()))
                .filter(|k| *k > key)
                .collect();
            after.sort();
            let want: Vec<String> = after.into_iter().take(limit).map(|(_, a)| a).collect();
            let v = page(&fleet_of(&both), &format!("limit={limit}&cursor={next}"));
            proptest::prop_assert_eq!(ids(&v), want);
        }
    }

    #[test]
    fn the_digest_takes_what_health_needs_from_a_heartbeat() {
        let problems = |hb: Value| -> Vec<&str> {
            Problems::of(Some(Digest::of(&hb)), true, true)
                .iter()
                .map(Problem::name)
                .collect()
        };
        assert!(
            problems(json!({"state": "following", "endpoint": {"state": "ok",
            "outage": null}, "feed": {"connected": true}}))
            .is_empty()
        );
        assert_eq!(problems(json!({"state": "degraded"})), ["degraded"]);
        assert_eq!(
            problems(json!({"endpoint": {"state": "ok", "outage": {"cause": "x"}}})),
            ["endpoint unhealthy"]
        );
        assert_eq!(
            problems(json!({"endpoint": {"state": "unhealthy"}})),
            ["endpoint unhealthy"]
        );
        assert_eq!(
            problems(json!({"feed": {"connected": false}})),
            ["feed down"]
        );
        assert!(problems(json!("not an object")).is_empty());
        let none: Vec<&str> = Problems::of(None, false, false)
            .iter()
            .map(Problem::name)
            .collect();
        assert_eq!(none, ["no heartbeat", "not polling"]);
        let stale = Problems::of(Some(Digest::default()), false, true);
        assert_eq!(serde_json::to_value(stale).unwrap(), json!(["not alive"]));
    }
}
