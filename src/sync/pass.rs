//! One full pass: read the whole scope and bring every object in step at the endpoint.
//!
//! Order and why:
//! 0. **Scoping groups** (`scope.groups`, when set): the set of objects they allow is
//!    computed first ([`crate::sync::scope_groups`]), and the scan and the phases skip
//!    every object outside it (AND with the subtrees and filters). A listed group that is
//!    missing, or any failed read of the groups, stops the pass here: nothing is taken
//!    for "out of scope", no delete is decided.
//! 1. **Scope scan**: every in-scope user with all its mapped attributes and every in-scope
//!    group with its anchor attributes only (a group's entry can carry a million members),
//!    into a map DN → (kind, externalId) (`ScopeMap`). It tells the mapper which `member` /
//!    `manager` DNs are in scope, and gives progress a total. The users' entries are spooled
//!    as read to a scratch file ([`crate::sync::spool`]), so the directory is read once for
//!    users: their phase maps them from the spool, after the whole scope is known (a
//!    manager read after its report is in the map before either is mapped). A user whose
//!    mapping inputs hash as the index recorded them ([`crate::scim::source_hash`]), with
//!    every manager it names in the map already, is settled by the scan as unchanged and
//!    not spooled (what such a manager resolves to cannot change before the scan ends; one
//!    not met yet is unknown, never "out of scope", so that user goes the spool's way).
//!    Nothing is sent before the scan ends. Meanwhile the
//!    endpoint's `/Schemas` and member key are learnt (`learn_endpoint`); its lookups are
//!    probed only when the scan found objects the index does not know.
//! 2. **Users**, from the spool, provisioned by a pool of workers
//!    (`sync.concurrency`; as many single requests out as the adaptive window allows,
//!    [`crate::sync::admission`]).
//!    A user whose manager has no SCIM id yet (still being created in this pass) is held
//!    back and sent once, complete, when the phase has drained; except, through SCIM Bulk,
//!    when the manager's create is in the request being gathered: the user joins that
//!    request naming the manager by its bulkId ([`crate::sync::bulk_refs`]), and only if it
//!    is not applied is it held back like the others (one handed back after the groups
//!    began is sent again once the groups' first round has drained, before the groups held
//!    for it).
//! 3. **Groups**, the same way; members are resolved to SCIM ids through the anchor index,
//!    out-of-scope members are left out, nested groups created in the same pass are held back and sent once they resolve.
//!    Groups begin while the users' last requests are still out (once no user is left to
//!    hold back): a group is sent only when every in-scope member it names has its id in
//!    the index (a create answered, never one still out), else it is held like a nested
//!    group and visited again after the groups' first round has drained, users included;
//!    only a member whose user failed is then left out, as before.
//!    A group's member ids travel apart from its JSON body, as one sorted compact list
//!    ([`crate::scim::mapping::MemberIds`]); the hash covers body and ids without building
//!    the whole representation, so a group costs about its member ids, not a JSON object
//!    per member. Where `member` is read in pieces ([`PassSettings::member_read`]: ranged
//!    on AD, `memberOf` where configured), the group entry is read without it and
//!    [`crate::sync::member_read`] streams the members into a list that spills to disk, so
//!    a group costs a bounded buffer however large it is; a member read cut short fails
//!    the group for the pass (nothing is sent for it).
//!
//! Where the endpoint offers SCIM Bulk (and `sync.bulk` allows it), the coordinator gathers
//! the objects that can go that way (creates the listing proves absent, users' PUTs to owned
//! ids) into Bulk requests that a worker sends ([`crate::sync::bulk`]); what a request hands
//! back (refused, of unknown fate) is sent again on its own. Each phase's last request is sent
//! before the next phase begins, so users' requests go before groups'.
//!
//! Invariants: a failed or partial LDAP read aborts the pass with an error (it is never
//! taken for a smaller directory; the users' one read is the scan's, so a cut read of users
//! stops the pass before anything is sent); a failing object is counted and reported and never
//! stops the others; an object whose representation hash equals the one last sent is not
//! written at all (so a second pass over an unchanged directory sends zero writes). A user
//! whose mapping inputs (entry, rules, resolved manager) hash as the index recorded them
//! with that representation hash is not even mapped ([`crate::scim::source_hash`]): the
//! same inputs map to the same representation.
//! A pass in which some object could not be sent because the endpoint was unavailable
//! ([`PassReport::unavailable`]) decides no deletes: it is to be run again (`run` does), and
//! the pass that brings everything in step decides them, once, against the threshold.
//!
//! Memory: nothing the pass holds per in-scope object stays in the process. The scope map
//! (normalised DN → kind, externalId; and the set of in-scope externalIds) lives in
//! [`DiskMap`] scratch files in the state directory, like the anchor index's working copy,
//! so a pass over 150,000 objects costs about what one over 10,000 does (plus the page
//! cache, which is not the process's). A scratch-file error stops the pass before it
//! decides any delete (a lookup that failed is never taken for "out of scope"). The users'
//! spool is a scratch file too (about the users' entries as read, a few hundred bytes
//! each), read back once and deleted; an error writing or reading it stops the pass. What stays
//! in memory is per object in flight: the workers' jobs and a group's member ids.
//! Objects held back for a second visit are listed in a scratch file too (`HeldList`).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use smol::channel::{self, Receiver, Sender};

use crate::ldap::dn;
use crate::ldap::members::MemberRead;
use crate::ldap::{Directory, Entry, LdapError, Scope};
use crate::scim::client::{LookupProbe, ScimClient, WriteCounts};
use crate::scim::mapping::{self, Reference, Resolver};
use crate::scim::profile::SyncProfile;
use crate::scim::source_hash::{PendingSource, SourceHasher};
use crate::scim::ResourceKind;
use crate::sync::admission::{Admission, Gate};
use crate::sync::anchors::{pack_key, representation_hash_with, unpack_key, Anchor, AnchorIndex};
use crate::sync::bulk::{self, Buffer, Lane, Planned, Verb, Verdict};
use crate::sync::bulk_refs::{self, Referring};
use crate::sync::bulk_window;
use crate::sync::closure::Closures;
use crate::sync::deletes::UserDelete;
use crate::sync::deletes::{self, DeleteGate, HoldCheck, Settled, Target};
use crate::sync::diskmap::DiskMap;
use crate::sync::flatten::{take_members, DirectoryGraph, Flatten};
use crate::sync::listing::{Listed, Listing};
use crate::sync::progress::Progress;
use crate::sync::provision::{provision_with, Hint, Job, Outcome, ProvisionMode};
use crate::sync::scope_groups::{AllowedSet, GroupScope, ScopeGroupsError};
use crate::sync::spool::Spool;

/// What a pass needs besides its connections.
#[derive(Debug, Clone)]
pub struct PassSettings {
    /// Subtrees to read.
    pub include: Vec<String>,
    /// Filter for users.
    pub user_filter: String,
    /// Filter for groups.
    pub group_filter: String,
    /// Requests in flight, at most.
    pub concurrency: usize,
    /// Whether the single requests in flight adapt to the link, up to `concurrency`
    /// ([`crate::sync::adaptive`]); otherwise always `concurrency`.
    pub adaptive: bool,
    /// Dry run / soft match.
    pub mode: ProvisionMode,
    /// No live progress line.
    pub quiet: bool,
    /// What a user's delete does at the endpoint.
    pub user_delete: UserDelete,
    /// `scope.groups` (None: no group-based scoping).
    pub scope_groups: Option<GroupScope>,
    /// `sync.nested_groups = "flatten"` (None: direct members).
    pub flatten: Option<Flatten>,
    /// How a group's members are read ([`crate::sync::member_read::choose`]); not
    /// [`MemberRead::Entry`]: in pieces, apart from the group's entry (not with flatten,
    /// which reads its own).
    pub member_read: MemberRead,
}

/// One object that could not be provisioned.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The directory object.
    pub dn: String,
    /// Why (names the HTTP status, attribute or cause).
    pub reason: String,
    /// The object's kind and anchor when the endpoint refused or failed it (`run` parks
    /// those); `None` for a failure before any write (mapping, internal).
    pub endpoint: Option<(ResourceKind, String)>,
}

/// The outcome of a pass.
#[derive(Debug, Default)]
pub struct PassReport {
    /// In-scope users seen.
    pub users: u64,
    /// In-scope groups seen.
    pub groups: u64,
    /// Resources created.
    pub created: u64,
    /// Resources replaced (known to the index).
    pub replaced: u64,
    /// Resources found by externalId (or adopted by userName) and replaced.
    pub matched: u64,
    /// Objects whose representation was unchanged: nothing sent.
    pub unchanged: u64,
    /// Objects that failed.
    pub failures: Vec<Failure>,
    /// How many of `failures` are the endpoint's (unreachable, 429, 5xx after the client's
    /// retries), not the object's: running the pass again may bring them in step. When
    /// any, the pass decided no deletes (`deletes` is empty).
    pub unavailable: u64,
    /// Writes the SCIM client sent (POST/PUT/PATCH/DELETE requests).
    pub writes: WriteCounts,
    /// Wall time.
    pub elapsed: Duration,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Objects the index knows that the complete scope scan no longer found, and what
    /// became of their deletes.
    pub deletes: Settled,
}

impl PassReport {
    /// Objects in step at the end of the pass.
    pub fn in_step(&self) -> u64 {
        (self.users + self.groups).saturating_sub(self.failures.len() as u64)
    }
}

impl fmt::Display for PassReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        let total = self.users + self.groups;
        let rate = if secs > 0.0 { total as f64 / secs } else { 0.0 };
        let w = &self.writes;
        // Objects are counted once each, by outcome; requests (every try, refused ones
        // too) are counted apart, so a failed POST is never a "created" object.
        write!(
            f,
            "sync{}: {} objects in step ({} users, {} groups): {} created, {} updated, {} unchanged, {} failed; requests: {} POST, {} PUT, {} PATCH",
            if self.dry_run { " (dry run, nothing sent)" } else { "" },
            self.in_step(),
            self.users,
            self.groups,
            self.created,
            self.replaced + self.matched,
            self.unchanged,
            self.failures.len(),
            w.creates,
            w.replaces,
            w.patches,
        )?;
        if w.bulk > 0 {
            write!(f, " (in {} SCIM Bulk requests)", w.bulk)?;
        }
        write!(f, "; {secs:.1} s, {rate:.0} objects/s")?;
        if self.unavailable > 0 {
            write!(
                f,
                "; {} of the failures: endpoint unavailable, so no deletes were decided",
                self.unavailable
            )?;
        }
        let d = &self.deletes;
        if d.sent > 0 || d.held > 0 || !d.failed.is_empty() {
            write!(
                f,
                "; deletes: {} sent, {} held for approval, {} failed",
                d.sent,
                d.held,
                d.failed.len()
            )?;
        }
        Ok(())
    }
}

/// Why a pass stopped before the end.
#[derive(Debug)]
pub enum PassError {
    /// Reading the directory failed; the pass is incomplete and nothing is concluded from it.
    Directory(LdapError),
    /// The anchor index could not be written.
    State(std::io::Error),
    /// The held-deletes file could not be written.
    Deletes(deletes::GateError),
    /// The SCIM endpoint refused the credentials (401): every object would fail alike, so
    /// the pass stopped; nothing is concluded from it.
    Unauthorized(String),
    /// `scope.groups` could not be read (a listed group missing, a failed read): the pass
    /// stopped before the scan; no delete is decided from it.
    ScopeGroups(ScopeGroupsError),
}

impl fmt::Display for PassError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PassError::Directory(e) => write!(f, "directory read failed, pass abandoned: {e}"),
            PassError::State(e) => write!(f, "cannot write the anchor index: {e}"),
            PassError::Deletes(e) => write!(f, "cannot record held deletes: {e}"),
            PassError::Unauthorized(e) => write!(
                f,
                "the SCIM endpoint refused the credentials ({e}): check scim.token_file / scim.token_env, \
                 or the OAuth2 client (scim.token_url, scim.client_id, its secret); pass stopped, nothing concluded from it"
            ),
            PassError::ScopeGroups(e) => {
                write!(f, "{e}; pass stopped before the scope scan, no deletes decided")
            }
        }
    }
}

impl std::error::Error for PassError {}

impl From<LdapError> for PassError {
    fn from(e: LdapError) -> Self {
        PassError::Directory(e)
    }
}

/// Which visit of an object this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    /// Streamed from the search: counted; held back if it refers to pending objects.
    First,
    /// Sent again after the phase drained: held back again if still pending.
    Held,
    /// No more waiting: sent as it is.
    Final,
    /// The final round once more (a reference resolved by the first final round): sent
    /// again only if it changed, and counted nowhere (the first final round counted it).
    FinalAgain,
}

/// Held-back objects above which a round reads them with a paged search of the scope
/// rather than one read each.
const RESCAN_MIN: usize = 256;

/// One in-scope object as the scope map holds it.
struct InScope {
    kind: ResourceKind,
    visited: bool,
    /// Its externalId, packed ([`pack_key`]).
    ext: Vec<u8>,
}

/// The scope map's record of one object: kind, visited, packed externalId.
fn in_scope_value(kind: ResourceKind, visited: bool, ext: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(2 + ext.len());
    v.push(u8::from(kind == ResourceKind::Group));
    v.push(u8::from(visited));
    v.extend_from_slice(ext);
    v
}

/// Normalised DN → (kind, visited, externalId) for everything in scope, and the set of
/// in-scope externalIds, both in scratch files (see the module doc). The first error of a
/// scratch file is kept: the pass checks [`ScopeMap::check`] before it trusts the map for
/// anything that decides a delete, and stops with it.
struct ScopeMap {
    by_dn: DiskMap,
    exts: DiskMap,
    users: usize,
    groups: usize,
    error: std::sync::Mutex<Option<std::io::Error>>,
}

impl ScopeMap {
    /// `expected`: about how many objects the scope holds (what the index knows), so the
    /// tables are sized once rather than rebuilt as they grow.
    fn new(dir: &std::path::Path, expected: u64) -> std::io::Result<ScopeMap> {
        Ok(ScopeMap {
            by_dn: DiskMap::scratch(dir, "scope map", expected)?,
            exts: DiskMap::scratch(dir, "scope map by anchor", expected)?,
            users: 0,
            groups: 0,
            error: std::sync::Mutex::new(None),
        })
    }

    fn key(dn: &str) -> String {
        dn::normalize(dn)
    }

    fn keep(&self, e: std::io::Error) {
        let mut g = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            log::error!("{e}");
            *g = Some(e);
        }
    }

    /// The first scratch-file error met, if any.
    fn check(&self) -> Result<(), PassError> {
        match &*self.error.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(PassError::State(std::io::Error::new(
                e.kind(),
                e.to_string(),
            ))),
            None => Ok(()),
        }
    }

    /// The object at normalised DN `key`; a read error is kept and reads as `Err(())`.
    fn get(&self, key: &str) -> Result<Option<InScope>, ()> {
        match self.by_dn.get(key.as_bytes()) {
            Ok(None) => Ok(None),
            Ok(Some(v)) if v.len() >= 2 => Ok(Some(InScope {
                kind: if v[0] == 1 {
                    ResourceKind::Group
                } else {
                    ResourceKind::User
                },
                visited: v[1] == 1,
                ext: v[2..].to_vec(),
            })),
            Ok(Some(_)) => {
                self.keep(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "scope map: a damaged record",
                ));
                Err(())
            }
            Err(e) => {
                self.keep(e);
                Err(())
            }
        }
    }

    /// Marks the object at `key` visited (in place: its record keeps its size).
    fn mark_visited(&mut self, key: &str, o: &InScope) {
        match self
            .by_dn
            .overwrite(key.as_bytes(), &in_scope_value(o.kind, true, &o.ext))
        {
            Ok(true) => {}
            Ok(false) => self.keep(std::io::Error::other(
                "scope map: a record changed size or vanished",
            )),
            Err(e) => self.keep(e),
        }
    }

    /// Records a new in-scope object at `key`.
    fn insert(&mut self, key: &str, kind: ResourceKind, external_id: &str, visited: bool) {
        let mut ext = Vec::with_capacity(external_id.len() + 1);
        pack_key(external_id, &mut ext);
        let r = self
            .by_dn
            .insert(key.as_bytes(), &in_scope_value(kind, visited, &ext))
            .and_then(|_| self.exts.insert(&ext, &[]));
        match r {
            Ok(()) => match kind {
                ResourceKind::User => self.users += 1,
                ResourceKind::Group => self.groups += 1,
            },
            Err(e) => self.keep(e),
        }
    }

    /// Whether a packed externalId is in scope.
    fn has_ext(&self, packed: &[u8]) -> std::io::Result<bool> {
        self.exts.contains(packed)
    }

    fn count(&self, kind: ResourceKind) -> usize {
        match kind {
            ResourceKind::User => self.users,
            ResourceKind::Group => self.groups,
        }
    }

    fn len(&self) -> usize {
        self.users + self.groups
    }
}

/// DNs to visit again (held back), in the order they were met, each once; in a scratch
/// file like the scope map, since on a first pass most objects may be held (every user
/// whose manager is still being created).
struct HeldList {
    dns: DiskMap,
}

impl HeldList {
    fn new(dir: &std::path::Path) -> Result<HeldList, PassError> {
        DiskMap::scratch(dir, "held-back list", 0)
            .map(|dns| HeldList { dns })
            .map_err(PassError::State)
    }

    fn push(&mut self, dn: &str) -> Result<(), PassError> {
        self.dns
            .insert(dn::normalize(dn).as_bytes(), dn.as_bytes())
            .map_err(PassError::State)
    }

    /// Takes the DN out if it was held (what a rescan visits, it visits once).
    fn take(&mut self, dn: &str) -> Result<bool, PassError> {
        self.dns
            .remove(dn::normalize(dn).as_bytes())
            .map_err(PassError::State)
    }

    fn len(&self) -> usize {
        self.dns.len() as usize
    }

    fn is_empty(&self) -> bool {
        self.dns.is_empty()
    }

    /// A copy (the rounds that send the rest as it is visit the same list twice).
    fn copy(&self, dir: &std::path::Path) -> Result<HeldList, PassError> {
        let mut c = HeldList::new(dir)?;
        for r in self.dns.iter() {
            let (key, dn) = r.map_err(PassError::State)?;
            c.dns.insert(&key, &dn).map_err(PassError::State)?;
        }
        Ok(c)
    }

    /// Every held DN, in order (only for short lists: see [`RESCAN_MIN`]).
    fn all(&self) -> Result<Vec<String>, PassError> {
        self.dns
            .iter()
            .map(|r| {
                r.map(|(_, dn)| String::from_utf8_lossy(&dn).into_owned())
                    .map_err(PassError::State)
            })
            .collect()
    }
}

/// Resolves DNs through the scope map and the anchor index (and, in a dry run, the ids the
/// run pretended to create).
struct ScopeResolver<'a> {
    scope: &'a ScopeMap,
    index: &'a AnchorIndex,
    pretend: &'a HashMap<String, String>,
    /// Out of scope but provisioned, with its delete to be held: still resolved.
    keep_vanishing: bool,
    /// During the scope scan: a DN the map does not hold may still be met, so it is
    /// pending, never out of scope.
    scanning: bool,
}

impl Resolver for ScopeResolver<'_> {
    fn resolve(&self, target: &str) -> Reference {
        let o = match self.scope.get(&ScopeMap::key(target)) {
            Ok(Some(o)) => o,
            Ok(None) if self.scanning => return Reference::Pending,
            Ok(None) if self.keep_vanishing => {
                return match self.index.by_dn(target) {
                    Some((_, a)) => Reference::provisioned(a.kind, a.scim_id),
                    None => Reference::OutOfScope,
                }
            }
            Ok(None) => return Reference::OutOfScope,
            // Never taken for "out of scope" (that would drop a member): held, and the pass
            // stops on the kept error before it decides anything.
            Err(()) => return Reference::Pending,
        };
        let kind = o.kind;
        let external_id = unpack_key(&o.ext);
        if let Some(id) = self.index.scim_id(kind, &external_id) {
            return Reference::provisioned(kind, id);
        }
        match self.pretend.get(&external_id) {
            Some(id) => Reference::provisioned(kind, id.clone()),
            None => Reference::Pending,
        }
    }
}

struct Done {
    kind: ResourceKind,
    dn: String,
    external_id: String,
    hash: u64,
    /// [`Job::source`].
    source: u64,
    outcome: Outcome,
}

impl Done {
    fn of(job: Job, outcome: Outcome) -> Done {
        Done {
            kind: job.kind,
            dn: job.dn,
            external_id: job.external_id,
            hash: job.hash,
            source: job.source,
            outcome,
        }
    }
}

/// What a worker is handed.
enum Task {
    /// One object, the single-request way.
    One(Box<Job>, Hint),
    /// Objects for one SCIM Bulk request ([`crate::sync::bulk`]).
    Batch(Arc<Lane>, Vec<Planned>),
}

/// What a worker hands back.
enum Landed {
    /// One object's outcome (each object lands once).
    Done(Done),
    /// An object of a Bulk request to send again the single way.
    Again(Job, Hint),
    /// A member PATCH operation of a group (by anchor) through Bulk: applied or not.
    Member(String, bool),
    /// A user that named its manager by bulkId, not applied: its DN, anchor, and whether to
    /// look it up before a create ([`crate::sync::bulk_refs`]).
    Held(String, String, bool),
    /// A Bulk request of this many bytes of operations is over.
    BatchEnd(usize),
    /// A single-request object is over, after this long (it landed just before).
    Single(Duration),
}

/// A group whose member change is out as Bulk PATCH operations
/// ([`crate::sync::bulk_members`]); counted once, when the last of them lands.
struct GroupOut {
    job: Job,
    id: String,
    created: bool,
    left: usize,
    ok: bool,
}

/// Whether the pass sends through SCIM Bulk: asked of the endpoint when the first object
/// that could go through it comes up (a pass with nothing to write asks nothing).
enum BulkState {
    Unasked,
    Off,
    On(Arc<Lane>),
}

/// The pass coordinator: owns the index; workers only talk HTTP.
struct Pass<'a> {
    dir: &'a Directory,
    scim: &'a ScimClient,
    /// The delete gate's rule as the pass began.
    hold: HoldCheck,
    /// This pass's deletes will be held: references to the objects about to be deleted
    /// stay resolved (a held delete holds its consequences, e.g. group memberships).
    keep_vanishing_refs: bool,
    /// What the endpoint holds, read once when many objects are unknown.
    listing: Arc<OnceLock<Listing>>,
    profile: &'a SyncProfile,
    /// Tells an unchanged user without mapping it ([`crate::scim::source_hash`]).
    sources: Option<SourceHasher>,
    settings: &'a PassSettings,
    index: &'a mut AnchorIndex,
    scope: ScopeMap,
    /// What `scope.groups` allows (None: no group-based scoping).
    allowed: Option<AllowedSet>,
    /// With `sync.nested_groups = "flatten"`: the groups read for flattening.
    graph: Option<DirectoryGraph<'a>>,
    /// With flatten: each group's flattened members, computed once per pass.
    closures: Option<Closures>,
    /// Deepest nesting a flattened group had.
    flatten_depth: usize,
    pretend: HashMap<String, String>,
    jobs: Sender<Task>,
    results: Receiver<Landed>,
    in_flight: usize,
    /// How many single requests may be out ([`crate::sync::admission`]).
    admission: Admission,
    /// SCIM Bulk: whether used, the objects gathered for the next request, requests out,
    /// and objects handed back to be sent again the single way.
    bulk: BulkState,
    buffer: Buffer,
    batches_out: usize,
    /// Bytes of the operations of the Bulk requests out.
    bytes_out: usize,
    again: Vec<(Job, Hint)>,
    /// Groups whose member operations are out, by anchor.
    members_out: Vec<GroupOut>,
    /// Anchors sent again by [`Round::FinalAgain`]: their outcome was counted already.
    counted: std::collections::HashSet<String>,
    /// Users that named their manager by bulkId and were handed back (DNs; anchors to look
    /// up before a create): see [`crate::sync::bulk_refs`].
    late_held: Vec<String>,
    recheck: std::collections::HashSet<String>,
    report: PassReport,
    progress: Progress,
    done: u64,
    total: u64,
    last_save: Instant,
    /// The users as the scope scan read them, for their phase ([`Spool`]).
    spool: Option<Spool>,
    /// Users the scan settled as unchanged ([`Pass::settled_by_scan`]).
    settled: u64,
    /// When the pass began.
    started: Instant,
}

const SAVE_EVERY: Duration = Duration::from_secs(30);

/// Unknown objects from which a full pass reads the endpoint's listing.
const LISTING_MIN: u64 = 32;

/// In-scope objects the anchor index does not know: of the `in_scope` distinct anchors
/// the scan found, those that are not among the index's `known` minus the `vanishing`
/// ones (known, not found by the scan). Both maps are keyed by the packed anchor, so
/// this is what a lookup of each in-scope anchor would count.
fn unknown_in_scope(in_scope: u64, known: usize, vanishing: usize) -> u64 {
    in_scope.saturating_sub(known.saturating_sub(vanishing) as u64)
}

/// At the start of a pass, while the scope scan reads the directory: reads the endpoint's
/// `/Schemas` again (bodies are fitted to it) and finds out what its `members[].value`
/// names. A failed probe is left to the pass's own requests to report.
async fn learn_endpoint(scim: &ScimClient) {
    if let Err(e) = scim.learn_schema().await {
        log::debug!("SCIM /Schemas: {e}; bodies go as mapped");
    }
    // A userName shown as members[].value is recorded: removals go by it from the start.
    match scim.probe_member_key().await {
        Ok(p) => log::debug!("SCIM members: {p}"),
        Err(e) => log::debug!("SCIM member key probe: {e}"),
    }
}

/// Says whether the endpoint's lookups by externalId can be trusted; asked only by a pass
/// with objects the index does not know (one with none looks nothing up, and on a large
/// endpoint the probe's first page of users is its slowest request). The probe only
/// informs: matching proves ownership on each resource whatever it finds.
async fn probe_lookups(scim: &ScimClient) {
    match scim.probe_lookups().await {
        Ok(p) if p.is_verified() => log::debug!("SCIM lookups: {p}"),
        Ok(p @ LookupProbe::Unverified) => log::info!("SCIM lookups: {p}"),
        Ok(p) => log::warn!("SCIM lookups: {p}"),
        Err(e) => log::debug!("SCIM lookup probe: {e}"),
    }
}

/// Runs one full pass. The anchor index is updated (and saved) as objects are provisioned,
/// except in a dry run, which leaves it untouched.
pub async fn full_pass(
    dir: &Directory,
    scim: &ScimClient,
    profile: &SyncProfile,
    index: &mut AnchorIndex,
    gate: &mut DeleteGate,
    settings: &PassSettings,
) -> Result<PassReport, PassError> {
    let started = Instant::now();
    scim.pin_member_removal(profile.resource(ResourceKind::Group).member_removal());
    gate.set_scope(index.len());
    let scope = ScopeMap::new(index.state_dir(), index.len() as u64).map_err(PassError::State)?;
    let writes_before = scim.write_counts();
    let (jobs_tx, jobs_rx) = channel::bounded::<Task>(settings.concurrency * 2);
    // Filled after the scan when enough objects are unknown ([`crate::sync::listing`]).
    let listing: Arc<OnceLock<Listing>> = Arc::default();
    let (done_tx, done_rx) = channel::unbounded::<Landed>();
    let mut workers = Vec::new();
    for _ in 0..settings.concurrency {
        let jobs = jobs_rx.clone();
        let done = done_tx.clone();
        let scim = scim.clone();
        let mut mode = settings.mode.clone();
        mode.listing = Some(listing.clone());
        workers.push(smol::spawn(async move {
            while let Ok(task) = jobs.recv().await {
                let landed = match task {
                    Task::One(job, hint) => {
                        let t = Instant::now();
                        let outcome = provision_with(&scim, &job, &mode, &hint).await;
                        vec![
                            Landed::Done(Done::of(*job, outcome)),
                            Landed::Single(t.elapsed()),
                        ]
                    }
                    Task::Batch(lane, batch) => {
                        let bytes = bulk::bytes(&batch);
                        let mut out: Vec<Landed> = bulk::send(&scim, &lane, batch)
                            .await
                            .into_iter()
                            .map(|(job, v)| match v {
                                Verdict::Outcome(o) => Landed::Done(Done::of(job, o)),
                                Verdict::Again(h) => Landed::Again(job, h),
                                Verdict::Member(ok) => Landed::Member(job.external_id, ok),
                                Verdict::Held(r) => Landed::Held(job.dn, job.external_id, r),
                            })
                            .collect();
                        out.push(Landed::BatchEnd(bytes));
                        out
                    }
                };
                for l in landed {
                    if done.send(l).await.is_err() {
                        return;
                    }
                }
            }
        }));
    }
    drop(done_tx);

    let mut pass = Pass {
        dir,
        scim,
        hold: gate.hold_check(),
        keep_vanishing_refs: false,
        listing,
        profile,
        sources: SourceHasher::for_users(profile),
        settings,
        index,
        scope,
        allowed: None,
        graph: None,
        closures: None,
        flatten_depth: 0,
        pretend: HashMap::new(),
        jobs: jobs_tx,
        results: done_rx,
        in_flight: 0,
        admission: Admission::new(settings.concurrency, settings.adaptive, scim.throttled()),
        bulk: if settings.mode.bulk && !settings.mode.dry_run {
            BulkState::Unasked
        } else {
            BulkState::Off
        },
        buffer: Buffer::default(),
        batches_out: 0,
        bytes_out: 0,
        again: Vec::new(),
        members_out: Vec::new(),
        counted: std::collections::HashSet::new(),
        late_held: Vec::new(),
        recheck: std::collections::HashSet::new(),
        report: PassReport {
            dry_run: settings.mode.dry_run,
            ..PassReport::default()
        },
        progress: Progress::new(settings.quiet),
        done: 0,
        total: 0,
        last_save: Instant::now(),
        spool: None,
        settled: 0,
        started,
    };
    let result = pass.run().await;
    // Let in-flight work land in the index even when the pass failed.
    pass.drain().await;
    if let Some(s) = pass.admission.summary() {
        // A pass that stopped (an endpoint outage, a failed read) is tried again and says
        // nothing new each time; its window is worth a line only when it ran to its end.
        if result.is_ok() {
            log::info!("{s}");
        } else {
            log::debug!("{s}");
        }
    }
    pass.jobs.close();
    for w in workers {
        w.await;
    }
    pass.progress.finish_line();
    let at = |what: &str| {
        log::debug!(
            "{what}: {:.2} s into the pass",
            started.elapsed().as_secs_f64()
        )
    };
    at("phases drained");
    if !settings.mode.dry_run {
        pass.index.save().map_err(PassError::State)?;
        at("anchor index saved");
    }
    result?;
    // The scan was complete (a failed read ended the pass above), so what the index knows
    // and the scan did not find is gone from scope. Objects seen again are no longer held.
    pass.scope.check()?;
    let mut back = Vec::new();
    for h in gate.held() {
        let mut p = Vec::new();
        pack_key(&h.anchor, &mut p);
        if pass.scope.has_ext(&p).map_err(PassError::State)? {
            back.push(h.anchor.clone());
        }
    }
    for anchor in back {
        gate.unhold(&anchor);
    }
    // Objects the endpoint could not take: this pass is to be run again, and that run
    // decides the deletes (deciding them here too would weigh them twice against the
    // threshold, and an unavailable endpoint would fail them anyway).
    let vanished: Vec<Target> = if pass.report.unavailable > 0 {
        log::warn!(
            "{} objects could not be sent (endpoint unavailable): deletes of vanished objects are left to a complete pass",
            pass.report.unavailable
        );
        Vec::new()
    } else {
        let scope = &pass.scope;
        pass.index
            .unseen(|p| scope.has_ext(p))
            .map_err(PassError::State)?
            .into_iter()
            .map(|(x, a)| {
                Target::of(
                    &x,
                    &a,
                    "not found in scope by the full pass (deleted, moved out of scope or no longer matching the filter)",
                )
            })
            .collect()
    };
    let mut report = std::mem::take(&mut pass.report);
    report.deletes = deletes::settle(
        scim,
        gate,
        pass.index,
        settings.user_delete,
        vanished,
        (settings.mode.dry_run, settings.mode.dry_run_json),
    )
    .await;
    at("deletes settled");
    if !settings.mode.dry_run {
        pass.index.save().map_err(PassError::State)?;
        gate.save().map_err(PassError::Deletes)?;
        at("saved again");
    }
    let now = scim.write_counts();
    report.writes = WriteCounts {
        creates: now.creates - writes_before.creates,
        replaces: now.replaces - writes_before.replaces,
        patches: now.patches - writes_before.patches,
        deletes: now.deletes - writes_before.deletes,
        bulk: now.bulk - writes_before.bulk,
    };
    report.elapsed = started.elapsed();
    Ok(report)
}

impl Pass<'_> {
    async fn run(&mut self) -> Result<(), PassError> {
        if let Some(g) = &self.settings.scope_groups {
            self.progress.phase("scope groups");
            let set = crate::sync::scope_groups::allowed_set(self.dir, g, self.index.state_dir())
                .await
                .map_err(PassError::ScopeGroups)?;
            self.allowed = Some(set);
        }
        if let Some(f) = &self.settings.flatten {
            let graph = DirectoryGraph::new(
                self.dir,
                &f.base_dn,
                &f.member_attributes,
                true,
                self.index.state_dir(),
            )
            .await
            .map_err(PassError::ScopeGroups)?;
            self.graph = Some(graph);
            self.closures = Some(Closures::new(self.index.state_dir()).map_err(PassError::State)?);
        }
        let scim = self.scim;
        let (scanned, ()) = smol::future::zip(self.scan(), learn_endpoint(scim)).await;
        scanned?;
        self.say_scope();
        log::debug!(
            "scope scan: {:.2} s into the pass",
            self.started.elapsed().as_secs_f64()
        );
        let vanishing = self.weigh_vanishing()?;
        self.read_listing(vanishing).await?;
        let whole = self.scope.len() as u64;
        let mut before = 0;
        for kind in [ResourceKind::User, ResourceKind::Group] {
            self.total = self.scope.count(kind) as u64;
            // Users the scan settled are done already.
            self.done = match kind {
                ResourceKind::User => self.settled,
                ResourceKind::Group => 0,
            };
            self.progress.overall(before, whole);
            before += self.total;
            self.progress.phase(&format!("{}s", kind.word()));
            let attrs = match kind {
                // Members read in pieces are not read with the entry.
                ResourceKind::Group if self.streams_members() => {
                    let mut a = self.profile.ldap_attributes(kind);
                    a.retain(|a| !a.eq_ignore_ascii_case(crate::sync::member_read::STREAMED));
                    a
                }
                _ => self.profile.ldap_attributes(kind),
            };
            let attr_refs: Vec<&str> = attrs.iter().map(String::as_str).collect();
            let filter = self.filter(kind).to_string();
            let mut revisit = HeldList::new(self.index.state_dir())?;
            // Users as the scan read them (one read of the directory); groups read now.
            let spooled = match kind {
                ResourceKind::User => self.spool.take(),
                ResourceKind::Group => None,
            };
            if let Some(spool) = spooled {
                let mut replay = spool.replay().map_err(PassError::State)?;
                while let Some(entry) = replay.next_entry().map_err(PassError::State)? {
                    if let Some(dn) = self.handle(entry, kind, Round::First).await {
                        revisit.push(&dn)?;
                    }
                    self.halt()?;
                }
            } else {
                for base in &self.settings.include {
                    let mut stream = self.dir.search(base, Scope::Subtree, &filter, &attr_refs);
                    while let Some(entry) = stream.next().await {
                        let entry = entry?;
                        if let Some(dn) = self.handle(entry, kind, Round::First).await {
                            revisit.push(&dn)?;
                        }
                        self.halt()?;
                    }
                }
            }
            log::debug!(
                "{}s' first round: {:.2} s into the pass",
                kind.word(),
                self.started.elapsed().as_secs_f64()
            );
            // Groups begin while the users' last requests are out (see the module doc): a
            // group goes only once every member it names has its id, else it is held.
            let overlap = kind == ResourceKind::User;
            if overlap && revisit.is_empty() {
                self.flush().await;
            } else {
                self.drain().await;
            }
            self.halt()?;
            // Users that named their manager by bulkId and were handed back (so far, or, in
            // the groups' phase, while the groups began) are held like any other; the
            // groups held for them are visited after them.
            if kind == ResourceKind::Group {
                self.settle_late_users().await?;
            }
            for dn in std::mem::take(&mut self.late_held) {
                revisit.push(&dn)?;
            }
            self.settle(kind, revisit, &filter, &attr_refs, overlap)
                .await?;
        }
        if self.graph.is_some() {
            log::info!(
                "nested groups flattened: deepest nesting {} levels",
                self.flatten_depth
            );
        }
        Ok(())
    }

    /// When at least [`LISTING_MIN`] objects in scope are unknown to the anchor index (a
    /// first pass, a lost state directory, a new endpoint), reads what the endpoint holds
    /// once instead of looking each of them up; a listing that cannot be had is logged and
    /// the objects are looked up one by one. `vanishing`: the known objects the scan did
    /// not find, so the rest of the index is in scope and the unknown are counted without
    /// a lookup per object ([`unknown_in_scope`]).
    async fn read_listing(&mut self, vanishing: usize) -> Result<(), PassError> {
        let unknown = unknown_in_scope(self.scope.exts.len(), self.index.len(), vanishing);
        if unknown > 0 {
            probe_lookups(self.scim).await;
        }
        if unknown < LISTING_MIN {
            return Ok(());
        }
        let started = Instant::now();
        match Listing::read(self.scim, self.index.state_dir(), unknown).await {
            Ok(l) => {
                log::info!(
                    "{unknown} objects unknown to the anchor index: read what the endpoint holds in {:.1} s, matching locally",
                    started.elapsed().as_secs_f64()
                );
                let _ = self.listing.set(l);
            }
            Err(e) => log::info!(
                "{unknown} objects unknown to the anchor index: {e}; looking them up one by one"
            ),
        }
        Ok(())
    }

    /// Counts the provisioned objects the scan did not find (this pass's deletes) and, when
    /// the gate will hold them, keeps references to them: their memberships stay until the
    /// deletes are approved. Says when the scope shrank to under half. Returns how many.
    fn weigh_vanishing(&mut self) -> Result<usize, PassError> {
        let scope = &self.scope;
        let vanishing = self
            .index
            .count_unseen(|p| scope.has_ext(p))
            .map_err(PassError::State)?;
        let known = self.index.len();
        if vanishing > 0 && (known - vanishing) * 2 < known {
            log::warn!(
                "scope shrank from {known} to {} provisioned objects: check scope.include and the filters",
                known - vanishing
            );
        }
        // A dry run too: the memberships it shows are those the real pass keeps.
        if self.hold.would_hold(vanishing) {
            self.keep_vanishing_refs = true;
            log::warn!(
                "{vanishing} objects are gone from scope and their deletes will be held ({}): \
                 group memberships and manager references to them stay until `idrelay approve-deletes`",
                self.hold.reason(vanishing)
            );
        }
        Ok(vanishing)
    }

    /// Ends the pass when the endpoint refused the credentials: every object would fail
    /// alike (one error instead of a warning per object, and no pass taken as done).
    fn halt(&self) -> Result<(), PassError> {
        match self.scim.refused_auth() {
            Some(e) => Err(PassError::Unauthorized(e)),
            None => Ok(()),
        }
    }

    /// Sends the objects held back because they referred to objects still being created.
    /// Rounds repeat while they make progress (a chain of managers resolves one link per
    /// round); when a round makes none (a reference cycle, or the target failed), the rest
    /// is sent as it is, then once more so that references created by that send are
    /// filled in. A round over more than [`RESCAN_MIN`] objects reads them with one more
    /// paged search of the scope instead of one read each (on a first pass most users may
    /// be held, waiting for their manager). `overlap`: the round that leaves nothing held
    /// does not wait for its requests to land (the next phase begins meanwhile; what it
    /// needs from them it holds until its own drain, which waits for them too).
    async fn settle(
        &mut self,
        kind: ResourceKind,
        mut held: HeldList,
        filter: &str,
        attrs: &[&str],
        overlap: bool,
    ) -> Result<(), PassError> {
        if !held.is_empty() {
            log::info!(
                "{} {}s refer to objects created in this pass; sending them now",
                held.len(),
                kind.word()
            );
        }
        while !held.is_empty() {
            let before = held.len();
            let mut next = HeldList::new(self.index.state_dir())?;
            self.visit(kind, &mut held, filter, attrs, Round::Held, Some(&mut next))
                .await?;
            drop(held);
            if overlap && next.is_empty() {
                self.flush().await;
            } else {
                self.drain().await;
            }
            self.halt()?;
            if next.len() == before {
                for round in [Round::Final, Round::FinalAgain] {
                    let mut again = next.copy(self.index.state_dir())?;
                    self.visit(kind, &mut again, filter, attrs, round, None)
                        .await?;
                    self.drain().await;
                }
                break;
            }
            held = next;
        }
        Ok(())
    }

    /// Sends again the users handed back from Bulk requests that were still out when the
    /// groups began ([`crate::sync::bulk_refs`]), before the groups' held ones: the groups'
    /// first round has drained, so none is out any more.
    async fn settle_late_users(&mut self) -> Result<(), PassError> {
        if self.late_held.is_empty() {
            return Ok(());
        }
        let mut held = HeldList::new(self.index.state_dir())?;
        for dn in std::mem::take(&mut self.late_held) {
            held.push(&dn)?;
        }
        let kind = ResourceKind::User;
        let attrs = self.profile.ldap_attributes(kind);
        let attrs: Vec<&str> = attrs.iter().map(String::as_str).collect();
        let filter = self.filter(kind).to_string();
        self.settle(kind, held, &filter, &attrs, false).await
    }

    /// Handles every object of `held` once (in `round`), pushing what is still to be
    /// visited again to `next`. Empties `held` when it rescans.
    async fn visit(
        &mut self,
        kind: ResourceKind,
        held: &mut HeldList,
        filter: &str,
        attrs: &[&str],
        round: Round,
        mut next: Option<&mut HeldList>,
    ) -> Result<(), PassError> {
        if held.len() > RESCAN_MIN {
            let bases = self.settings.include.clone();
            for base in &bases {
                let mut stream = self.dir.search(base, Scope::Subtree, filter, attrs);
                while let Some(entry) = stream.next().await {
                    let entry = entry?;
                    if !held.take(&entry.dn)? {
                        continue;
                    }
                    if let Some(dn) = self.handle(entry, kind, round).await {
                        if let Some(n) = next.as_deref_mut() {
                            n.push(&dn)?;
                        }
                    }
                }
            }
            // Held but not found again: gone since (the next pass sees it).
            if !held.is_empty() {
                log::info!(
                    "{} held {}s disappeared during the pass; the next pass sees them",
                    held.len(),
                    kind.word()
                );
            }
            return Ok(());
        }
        for dn in held.all()? {
            if let Some(entry) = self.reread(&dn, attrs).await? {
                if let Some(dn) = self.handle(entry, kind, round).await {
                    if let Some(n) = next.as_deref_mut() {
                        n.push(&dn)?;
                    }
                }
            }
        }
        Ok(())
    }

    async fn reread(&self, target: &str, attrs: &[&str]) -> Result<Option<Entry>, PassError> {
        let entry = self.dir.read(target, attrs).await?;
        if entry.is_none() {
            log::info!("{target} disappeared during the pass; the next pass sees it");
        }
        Ok(entry)
    }

    fn filter(&self, kind: ResourceKind) -> &str {
        match kind {
            ResourceKind::User => &self.settings.user_filter,
            ResourceKind::Group => &self.settings.group_filter,
        }
    }

    /// Whether `scope.groups` (if set) allows the object at `dn`. A failed lookup is kept
    /// as the scope map's error (the pass stops on it before deciding any delete) and
    /// reads as "not allowed" meanwhile.
    fn allows(&self, dn: &str) -> bool {
        match &self.allowed {
            None => true,
            Some(set) => match set.contains(dn) {
                Ok(yes) => yes,
                Err(e) => {
                    self.scope.keep(e);
                    false
                }
            },
        }
    }

    /// Step 1: DN → anchor for everything in scope.
    async fn scan(&mut self) -> Result<(), PassError> {
        self.progress.phase("scope scan");
        let mut seen = 0u64;
        for kind in [ResourceKind::User, ResourceKind::Group] {
            // Users are read whole, once: spooled for their phase (see the module doc).
            let (attrs, mut spool) = match kind {
                ResourceKind::User => (
                    self.profile.ldap_attributes(kind),
                    Some(Spool::new(self.index.state_dir()).map_err(PassError::State)?),
                ),
                ResourceKind::Group => (self.profile.anchor_attributes(kind), None),
            };
            let attr_refs: Vec<&str> = attrs.iter().map(String::as_str).collect();
            let filter = self.filter(kind).to_string();
            for base in &self.settings.include {
                let mut stream = self.dir.search(base, Scope::Subtree, &filter, &attr_refs);
                while let Some(entry) = stream.next().await {
                    let entry = entry?;
                    seen += 1;
                    self.progress.tick(seen, 0);
                    let key = ScopeMap::key(&entry.dn);
                    if !self.allows(&entry.dn) || !matches!(self.scope.get(&key), Ok(None)) {
                        continue;
                    }
                    match mapping::anchor_of(&entry, kind, self.profile) {
                        Ok(external_id) if spool.is_some() && self.settled_by_scan(&entry) => {
                            self.scope.insert(&key, kind, &external_id, true);
                            continue;
                        }
                        Ok(external_id) => self.scope.insert(&key, kind, &external_id, false),
                        // Reported when the object itself is mapped in its phase.
                        Err(e) => log::debug!("scope scan: {e}"),
                    }
                    if let Some(s) = &mut spool {
                        s.push(&entry).map_err(PassError::State)?;
                    }
                }
            }
            if let Some(s) = spool {
                log::debug!(
                    "scope scan: {} users settled unchanged, {} spooled for their phase",
                    self.settled,
                    s.len()
                );
                self.spool = Some(s);
            }
        }
        self.scope.check()
    }

    /// Logs the scope the scan found; after the endpoint was learnt (its outage known).
    fn say_scope(&self) {
        let users = self.scope.count(ResourceKind::User);
        // A pass tried again during an endpoint outage says nothing new.
        let level = match self.scim.outage() {
            Some(w) if w.is_down() => log::Level::Debug,
            _ => log::Level::Info,
        };
        log::log!(
            level,
            "scope: {} users, {} groups under {}{}",
            users,
            self.scope.len() - users,
            self.settings.include.join("; "),
            match &self.settings.scope_groups {
                Some(g) => format!(" in {} scope.groups", g.groups.len()),
                None => String::new(),
            }
        );
    }

    /// Whether the scan settles user `entry` as unchanged: its mapping inputs hash as the
    /// index recorded them ([`crate::scim::source_hash`]) with each manager it names already
    /// in the scope map (one not met yet, in scope or not, is known only when the scan
    /// ends: such a user goes through the spool and its phase). Counted here, as its phase
    /// would; the index's DN is kept current. Nothing is sent for it, so the scan still
    /// sends nothing.
    fn settled_by_scan(&mut self, entry: &Entry) -> bool {
        let resolver = ScopeResolver {
            scope: &self.scope,
            index: self.index,
            pretend: &self.pretend,
            keep_vanishing: false,
            scanning: true,
        };
        let unchanged = match &self.sources {
            Some(s) => s
                .hash(entry, &resolver)
                .and_then(|src| self.unchanged_source(entry, src)),
            None => None,
        };
        let Some((external_id, moved)) = unchanged else {
            return false;
        };
        if moved && !self.settings.mode.dry_run {
            // Renamed or moved with nothing to send: keep the index's DN current.
            self.index.note_dn(&external_id, &entry.dn);
        }
        self.report.users += 1;
        self.report.unchanged += 1;
        self.settled += 1;
        true
    }

    /// Maps one entry and hands it to a worker unless unchanged. Returns the DN when the
    /// object refers to something not provisioned yet and should be visited again. The
    /// progress counts an object once, when it is settled: a held object when it is sent.
    async fn handle(&mut self, entry: Entry, kind: ResourceKind, round: Round) -> Option<String> {
        let first = round == Round::First;
        let held = self.handle_inner(entry, kind, round).await;
        match (&held, first) {
            // Counted when the first round saw it; it is not settled yet.
            (Some(_), true) => self.done = self.done.saturating_sub(1),
            (None, false) if round != Round::FinalAgain => {
                self.done += 1;
                self.progress.tick(self.done, self.total);
            }
            _ => {}
        }
        held
    }

    async fn handle_inner(
        &mut self,
        mut entry: Entry,
        kind: ResourceKind,
        round: Round,
    ) -> Option<String> {
        let first_round = round == Round::First;
        let key = ScopeMap::key(&entry.dn);
        // Only the first round can meet an object the scan did not see: a held object was
        // recorded when it was first handled.
        let mut unscanned = false;
        if first_round {
            if !self.allows(&entry.dn) {
                return None;
            }
            match self.scope.get(&key) {
                Ok(Some(o)) if o.visited => return None, // overlapping include subtrees
                Ok(Some(o)) => self.scope.mark_visited(&key, &o),
                Ok(None) => unscanned = true,
                Err(()) => {}
            }
            match kind {
                ResourceKind::User => self.report.users += 1,
                ResourceKind::Group => self.report.groups += 1,
            }
            self.done += 1;
            self.progress.tick(self.done, self.total);
        }
        let resolver = ScopeResolver {
            scope: &self.scope,
            index: self.index,
            pretend: &self.pretend,
            keep_vanishing: self.keep_vanishing_refs,
            scanning: false,
        };
        let mut flat = None;
        if kind == ResourceKind::Group {
            if let (Some(graph), Some(f), Some(closures)) =
                (&self.graph, &self.settings.flatten, &mut self.closures)
            {
                let direct = take_members(&mut entry, &f.member_attributes);
                let resolve = |dn: &str| resolver.resolve(dn);
                let state_dir = resolver.index.state_dir();
                match closures
                    .flatten(graph, &entry.dn, direct, &resolve, state_dir)
                    .await
                {
                    Ok(f) => flat = Some(f),
                    Err(e) => {
                        // A failed read is never a smaller group: the pass stops on it
                        // before it decides any delete.
                        self.scope.keep(std::io::Error::other(format!(
                            "flattening {}: {e}",
                            entry.dn
                        )));
                        return None;
                    }
                }
            }
        }
        let mut streamed = None;
        if kind == ResourceKind::Group && self.streams_members() {
            let read = crate::sync::member_read::read_members(
                self.dir,
                &entry.dn,
                self.settings.member_read,
                &self.settings.include,
                &resolver,
                resolver.index.state_dir(),
            );
            match read.await {
                Ok(r) => streamed = Some(r),
                Err(e) => {
                    // Cut short: nothing is sent for the group, no member removed.
                    self.fail(entry.dn, e.to_string(), None);
                    return None;
                }
            }
        } else if kind == ResourceKind::Group {
            let whole = entry.bytes("member").len();
            crate::sync::member_read::note_whole_read(&entry.dn, whole);
        }
        // A user whose mapping inputs hash as recorded with the index's representation
        // hash is unchanged: nothing to map, hash or send. (A user whose manager is still
        // being created gets the hash but for the manager's id, for `refer`.)
        let (source, pending_source) = match (&self.sources, kind) {
            (Some(s), ResourceKind::User) => s
                .source(&entry, &resolver)
                .map_or((None, None), |s| (s.whole(), s.pending())),
            _ => (None, None),
        };
        if let Some((external_id, moved)) =
            source.and_then(|src| self.unchanged_source(&entry, src))
        {
            if moved && !self.settings.mode.dry_run {
                // Renamed or moved with nothing to send: keep the index's DN current.
                self.index.note_dn(&external_id, &entry.dn);
            }
            if unscanned {
                self.scope.insert(&key, kind, &external_id, true);
            }
            if round != Round::FinalAgain {
                self.report.unchanged += 1;
            }
            return None;
        }
        let mut mapped = match mapping::map_entry_split(&entry, kind, self.profile, &resolver) {
            Ok(mut m) => {
                if let Some(r) = streamed {
                    let scratch = self.index.state_dir();
                    match crate::sync::member_read::union(r.ids, &m.members, scratch) {
                        Ok(ids) => m.members = ids,
                        Err(e) => {
                            self.fail(entry.dn, e.to_string(), None);
                            return None;
                        }
                    }
                    m.nested = r.nested;
                    m.pending.extend(r.pending);
                    m.pending.sort_unstable();
                    m.pending.dedup();
                }
                if let Some(flat) = flat {
                    self.flatten_depth = self.flatten_depth.max(flat.depth);
                    m.members = flat.ids;
                    m.nested = flat.nested;
                    m.pending.extend(flat.pending);
                    m.pending.sort_unstable();
                    m.pending.dedup();
                }
                m
            }
            Err(e) => {
                self.fail(entry.dn, e.to_string(), None);
                return None;
            }
        };
        // Created after the scan: in scope all the same.
        if unscanned {
            self.scope.insert(&key, kind, &mapped.external_id, true);
        }
        if matches!(round, Round::First | Round::Held) && !mapped.pending.is_empty() {
            // Its manager's create is in the request being gathered: named by bulkId in it.
            if round == Round::First && kind == ResourceKind::User && mapped.pending.len() == 1 {
                let manager = mapped.pending.pop().unwrap_or_default();
                if self.refer(&entry, &manager, pending_source).await {
                    return None;
                }
            }
            // Refers to something still being created: send it once, complete, after the
            // phase has drained (or without the reference if that object failed).
            return Some(entry.dn);
        }
        let hash = representation_hash_with(&mapped.resource, &mapped.members);
        let known = self.index.get(kind, &mapped.external_id);
        let known_id = known.as_ref().map(|a| a.scim_id.clone()).or_else(|| {
            // A dry run "created" it earlier in this pass: a real run would now PUT.
            self.pretend.get(&mapped.external_id).cloned()
        });
        if let Some(a) = known.as_ref().filter(|a| a.hash == hash) {
            if !self.settings.mode.dry_run && a.dn != entry.dn {
                // Renamed or moved with nothing to send: keep the index's DN current.
                self.index.note_dn(&mapped.external_id, &entry.dn);
            }
            if let Some(src) = source.filter(|_| !self.settings.mode.dry_run) {
                // What this representation was computed from: the next pass needs no mapping.
                self.index.set_source(&mapped.external_id, src);
            }
            // Counted once: in the round that settles it (a held object was not counted
            // when first seen).
            if round != Round::FinalAgain {
                self.report.unchanged += 1;
            }
        } else {
            if round == Round::FinalAgain {
                self.counted.insert(mapped.external_id.clone());
            }
            let job = Job {
                kind,
                dn: entry.dn.clone(),
                external_id: mapped.external_id,
                body: mapped.resource,
                members: mapped.members,
                nested: mapped.nested,
                hash,
                known_id,
                // The representation sent is what these inputs map to: once its write
                // lands, the next pass need not map this user again.
                source: source.unwrap_or(0),
            };
            self.dispatch(job).await;
        }
        None
    }

    /// The anchor of the user `entry`, and whether it moved, when the index records
    /// `source` with its hash (the representation it maps to is the one last sent; see
    /// [`crate::scim::source_hash`]).
    fn unchanged_source(&self, entry: &Entry, source: u64) -> Option<(String, bool)> {
        let external_id = mapping::anchor_of(entry, ResourceKind::User, self.profile).ok()?;
        let (a, recorded) = self.index.sourced(ResourceKind::User, &external_id)?;
        if recorded != source || a.hash == 0 {
            return None;
        }
        let moved = a.dn != entry.dn;
        Some((external_id, moved))
    }

    /// Sends user `entry`, whose only pending reference is its `manager` (DN as in the
    /// entry), in the Bulk request being gathered, naming the manager by the bulkId of its
    /// create there ([`crate::sync::bulk_refs`]). False (nothing sent) when the manager is
    /// not in that request or the user cannot join it: the user is then held back.
    /// `source`: its source hash but for the manager's id, completed when the answer gives
    /// the id.
    async fn refer(&mut self, entry: &Entry, manager: &str, source: Option<PendingSource>) -> bool {
        let lane = match &self.bulk {
            BulkState::On(l) if !l.is_off() => l.clone(),
            _ => return false,
        };
        let anchor = match self.scope.get(&ScopeMap::key(manager)) {
            Ok(Some(o)) if o.kind == ResourceKind::User => unpack_key(&o.ext),
            _ => return false,
        };
        let Some(bulk_id) = self.buffer.bulk_id(&anchor).map(str::to_string) else {
            return false;
        };
        let resolver = ScopeResolver {
            scope: &self.scope,
            index: self.index,
            pretend: &self.pretend,
            keep_vanishing: self.keep_vanishing_refs,
            scanning: false,
        };
        let naming = bulk_refs::Naming {
            inner: &resolver,
            dn: manager,
            bulk_id: &bulk_id,
        };
        let Ok(m) = mapping::map_entry_split(entry, ResourceKind::User, self.profile, &naming)
        else {
            return false;
        };
        let Some(mut refers) =
            Referring::new(&m.resource, &bulk_id).filter(|_| m.pending.is_empty())
        else {
            return false;
        };
        refers.set_source(source);
        let known_id = self.index.scim_id(ResourceKind::User, &m.external_id);
        let job = Job {
            kind: ResourceKind::User,
            dn: entry.dn.clone(),
            external_id: m.external_id,
            body: m.resource,
            members: m.members,
            nested: m.nested,
            hash: 0,
            known_id,
            source: 0,
        };
        let Some(verb) = self.bulk_verb(&job) else {
            return false;
        };
        let Ok(mut p) = lane.plan(self.scim, job, verb).await else {
            return false;
        };
        if !self.buffer.joins(&p, lane.limits()) {
            return false;
        }
        p.refer(refers);
        // It joins the gathered request: nothing handed out.
        let _ = self.buffer.push(p, lane.limits());
        true
    }

    /// Whether groups' members are read in pieces, apart from their entries.
    fn streams_members(&self) -> bool {
        self.settings.member_read != MemberRead::Entry && self.settings.flatten.is_none()
    }

    /// Hands `job` to the workers: into the next Bulk request when it can go that way,
    /// else on its own.
    async fn dispatch(&mut self, job: Job) {
        // Handed back from a Bulk request that may have created it: looked up first.
        if !self.recheck.is_empty() && self.recheck.remove(&job.external_id) {
            let hint = Hint {
                recheck: true,
                ..Hint::default()
            };
            self.send_task(Task::One(Box::new(job), hint), 1).await;
            return self.pump_again().await;
        }
        if let Some(verb) = self.bulk_verb(&job) {
            if let Some(lane) = self.lane().await {
                match lane.plan(self.scim, job, verb).await {
                    Ok(p) => {
                        if let Some(batch) = self.buffer.push(p, lane.limits()) {
                            self.send_batch(lane, batch).await;
                        }
                    }
                    Err(job) => {
                        self.send_task(Task::One(Box::new(job), Hint::default()), 1)
                            .await
                    }
                }
                self.pump_again().await;
                return;
            }
        }
        let job = match &job.known_id {
            Some(id) if job.kind == ResourceKind::Group && !matches!(self.bulk, BulkState::Off) => {
                let (id, lead) = (
                    id.clone(),
                    crate::sync::provision::replace_attributes(&job.body),
                );
                match self.bulk_members(job, id, false, lead).await {
                    Some(job) => job,
                    None => return self.pump_again().await,
                }
            }
            _ => job,
        };
        self.send_task(Task::One(Box::new(job), Hint::default()), 1)
            .await;
        self.pump_again().await;
    }

    /// Sends the member change of group `job` (at `id`; `created` through Bulk just now)
    /// as Bulk PATCH operations ([`crate::sync::bulk_members`]); gives the job back when it
    /// goes the single way.
    async fn bulk_members(
        &mut self,
        job: Job,
        id: String,
        created: bool,
        lead: Vec<serde_json::Value>,
    ) -> Option<Job> {
        let Some(store) = self.settings.mode.members.clone() else {
            return Some(job);
        };
        if self.group_out(&job.external_id).is_some() {
            return Some(job);
        }
        let Some(lane) = self.lane().await else {
            return Some(job);
        };
        let chunk = self.settings.mode.member_chunk;
        let Some(ops) = crate::sync::bulk_members::plan(
            self.scim,
            &store,
            &job,
            &id,
            created,
            lead,
            chunk,
            lane.limits(),
        ) else {
            return Some(job);
        };
        // Unknown until every operation is answered with success (never half-trusted).
        if !created && store.forget(&job.external_id).is_err() {
            return Some(job);
        }
        let anchor = job.external_id.clone();
        self.in_flight += 1;
        self.members_out.push(GroupOut {
            job,
            id,
            created,
            left: ops.len(),
            ok: true,
        });
        if ops.is_empty() {
            self.member_landed(&anchor, true);
        }
        for (sent, op) in ops {
            let p = Planned::member(&anchor, sent, op);
            if let Some(batch) = self.buffer.push(p, lane.limits()) {
                self.send_batch(lane.clone(), batch).await;
            }
        }
        None
    }

    /// Where the group anchored at `anchor` is in `members_out` (at most one group per
    /// operation out or gathered: the requests out and the buffer).
    fn group_out(&self, anchor: &str) -> Option<usize> {
        self.members_out
            .iter()
            .position(|g| g.job.external_id == anchor)
    }

    /// One member operation of the group anchored at `anchor` landed; the last one settles
    /// the group: counted, or sent again the single way (its stored members unknown).
    fn member_landed(&mut self, anchor: &str, ok: bool) {
        let Some(at) = self.group_out(anchor) else {
            return;
        };
        let g = &mut self.members_out[at];
        g.ok &= ok;
        g.left = g.left.saturating_sub(1);
        if g.left > 0 {
            return;
        }
        let g = self.members_out.swap_remove(at);
        let job = match g.ok {
            true => match self.confirmed(g.job, &g.id, g.created) {
                None => return,
                Some(job) => job,
            },
            false => g.job,
        };
        self.in_flight = self.in_flight.saturating_sub(1);
        let hint = Hint {
            created: g.created.then_some(g.id),
            members_sent: true,
            ..Hint::default()
        };
        self.again.push((job, hint));
    }

    /// Group `job`'s members are confirmed at `id`: recorded in the member store and the
    /// group counted (created, or replaced), as one object in flight. The job back when
    /// the store could not record them.
    fn confirmed(&mut self, job: Job, id: &str, created: bool) -> Option<Job> {
        let store = self.settings.mode.members.as_ref();
        if store.is_none_or(|s| s.save(&job.external_id, id, &job.members).is_err()) {
            return Some(job);
        }
        let outcome = match created {
            true => Outcome::Created(id.to_string()),
            false => Outcome::Replaced(id.to_string()),
        };
        crate::sync::provision::audit_outcome(&job, &outcome);
        self.apply_done(Done::of(job, outcome));
        None
    }

    /// What `job` would be in a Bulk request, when it may go in one: a create of what the
    /// listing proves absent, a user's PUT to an id the index knows or the listing proved
    /// (see [`crate::sync::bulk`]).
    fn bulk_verb(&self, job: &Job) -> Option<Verb> {
        if matches!(self.bulk, BulkState::Off) {
            return None;
        }
        // A group without a member store would go with its whole member list.
        if job.kind == ResourceKind::Group && self.settings.mode.members.is_none() {
            return None;
        }
        if let Some(id) = &job.known_id {
            return (job.kind == ResourceKind::User).then(|| Verb::Replace {
                id: id.clone(),
                matched: false,
            });
        }
        match self.listing.get()?.lookup(job.kind, &job.external_id) {
            Listed::Absent => Some(Verb::Create),
            Listed::Found(id) if job.kind == ResourceKind::User => {
                Some(Verb::Replace { id, matched: true })
            }
            _ => None,
        }
    }

    /// The Bulk lane, asking the endpoint's `/ServiceProviderConfig` the first time.
    async fn lane(&mut self) -> Option<Arc<Lane>> {
        if let BulkState::Unasked = self.bulk {
            self.bulk = match self.scim.service_provider_config().await {
                Ok(spc) => match Lane::for_endpoint(&spc) {
                    Some(l) => {
                        let lim = l.limits();
                        log::info!(
                            "SCIM Bulk: the endpoint takes up to {} operations and {} bytes a request; sending through it",
                            lim.max_operations,
                            lim.max_payload_size
                        );
                        BulkState::On(Arc::new(l))
                    }
                    None => {
                        log::debug!("SCIM Bulk: not offered by the endpoint");
                        BulkState::Off
                    }
                },
                Err(e) => {
                    log::info!("SCIM /ServiceProviderConfig: {e}; not using Bulk");
                    BulkState::Off
                }
            };
        }
        match &self.bulk {
            BulkState::On(l) if !l.is_off() => Some(l.clone()),
            _ => None,
        }
    }

    /// Sends a gathered Bulk request (one object goes on its own), keeping at most what
    /// [`bulk_window`] allows out.
    async fn send_batch(&mut self, lane: Arc<Lane>, batch: Vec<Planned>) {
        if batch.len() == 1 && batch[0].is_object() {
            for p in batch {
                self.send_task(Task::One(Box::new(p.into_job()), Hint::default()), 1)
                    .await;
            }
            return;
        }
        let bytes = bulk::bytes(&batch);
        let concurrency = self.settings.concurrency;
        while !bulk_window::may_send(self.batches_out, self.bytes_out, bytes, concurrency) {
            match self.results.recv().await {
                Ok(l) => self.apply(l),
                Err(_) => break,
            }
        }
        let n = batch.iter().filter(|p| p.is_object()).count();
        self.batches_out += 1;
        self.bytes_out += bytes;
        self.send_task(Task::Batch(lane, batch), n).await;
    }

    /// Sends the objects Bulk handed back, each on its own; a group created through Bulk
    /// sends its members as Bulk PATCH operations where it can.
    async fn pump_again(&mut self) {
        while let Some((job, hint)) = self.again.pop() {
            let job = match &hint.created {
                // Created with its members: confirmed (a failed save reads them back).
                Some(id) if hint.with_members => {
                    self.in_flight += 1;
                    match self.confirmed(job, id, true) {
                        None => continue,
                        Some(job) => {
                            self.in_flight -= 1;
                            job
                        }
                    }
                }
                _ => job,
            };
            let job = match &hint.created {
                Some(id)
                    if !hint.members_sent
                        && !hint.with_members
                        && !matches!(self.bulk, BulkState::Off) =>
                {
                    match self.bulk_members(job, id.clone(), true, Vec::new()).await {
                        Some(job) => job,
                        None => continue,
                    }
                }
                _ => job,
            };
            self.send_task(Task::One(Box::new(job), hint), 1).await;
        }
    }

    /// Waits until the adaptive window lets one more single request out.
    async fn admit(&mut self) {
        loop {
            while let Ok(l) = self.results.try_recv() {
                self.apply(l);
            }
            let (n, until) = (self.scim.throttled(), self.scim.retry_until());
            match self.admission.gate(n, until, Instant::now()) {
                Gate::Go => return,
                Gate::Wait(d) => {
                    smol::Timer::after(d).await;
                }
                Gate::Full => match self.results.recv().await {
                    Ok(l) => self.apply(l),
                    Err(_) => return,
                },
            }
        }
    }

    /// Hands a task of `objects` objects to a free worker.
    async fn send_task(&mut self, mut task: Task, objects: usize) {
        let single = matches!(task, Task::One(..));
        if single {
            self.admit().await;
        }
        loop {
            while let Ok(d) = self.results.try_recv() {
                self.apply(d);
            }
            match self.jobs.try_send(task) {
                Ok(()) => {
                    self.in_flight += objects;
                    if single {
                        self.admission.sent();
                    }
                    return;
                }
                Err(channel::TrySendError::Full(t)) => {
                    task = t;
                    // Every worker is busy: wait for one to finish.
                    if let Ok(d) = self.results.recv().await {
                        self.apply(d);
                    }
                }
                Err(channel::TrySendError::Closed(t)) => {
                    let jobs = match t {
                        Task::One(j, _) => vec![*j],
                        Task::Batch(_, b) => {
                            self.batches_out = self.batches_out.saturating_sub(1);
                            self.bytes_out = self.bytes_out.saturating_sub(bulk::bytes(&b));
                            b.into_iter()
                                .filter_map(|p| {
                                    if p.is_object() {
                                        return Some(p.into_job());
                                    }
                                    let at = self.group_out(p.anchor())?;
                                    Some(self.members_out.swap_remove(at).job)
                                })
                                .collect()
                        }
                    };
                    for j in jobs {
                        self.fail(j.dn, "internal: provisioning workers stopped".into(), None);
                    }
                    return;
                }
            }
        }
    }

    /// Sends the gathered Bulk request without waiting for anything to land.
    async fn flush(&mut self) {
        if !self.buffer.is_empty() {
            let batch = self.buffer.take();
            match &self.bulk {
                BulkState::On(l) => {
                    let l = l.clone();
                    self.send_batch(l, batch).await;
                }
                _ => {
                    for p in batch {
                        if p.is_object() {
                            self.send_task(Task::One(Box::new(p.into_job()), Hint::default()), 1)
                                .await;
                        } else {
                            self.member_landed(p.anchor(), false);
                        }
                    }
                }
            }
        }
    }

    /// Waits until every dispatched job has landed (the gathered Bulk request is sent
    /// first).
    async fn drain(&mut self) {
        self.flush().await;
        loop {
            self.pump_again().await;
            // Member operations planned while draining go out together.
            if !self.buffer.is_empty() {
                if let BulkState::On(l) = &self.bulk {
                    let (l, batch) = (l.clone(), self.buffer.take());
                    self.send_batch(l, batch).await;
                    continue;
                }
            }
            if self.in_flight == 0 && self.batches_out == 0 && self.again.is_empty() {
                break;
            }
            match self.results.recv().await {
                Ok(l) => self.apply(l),
                Err(_) => break,
            }
            while let Ok(l) = self.results.try_recv() {
                self.apply(l);
            }
        }
    }

    fn apply(&mut self, l: Landed) {
        match l {
            Landed::Done(d) => self.apply_done(d),
            Landed::Again(job, hint) => {
                self.in_flight = self.in_flight.saturating_sub(1);
                self.again.push((job, hint));
            }
            Landed::Member(anchor, ok) => self.member_landed(&anchor, ok),
            Landed::Held(dn, anchor, recheck) => {
                self.in_flight = self.in_flight.saturating_sub(1);
                // Settled when it is sent again.
                self.done = self.done.saturating_sub(1);
                if recheck {
                    self.recheck.insert(anchor);
                }
                self.late_held.push(dn);
            }
            Landed::BatchEnd(bytes) => {
                self.batches_out = self.batches_out.saturating_sub(1);
                self.bytes_out = self.bytes_out.saturating_sub(bytes);
            }
            Landed::Single(latency) => self.admission.landed(latency, Instant::now()),
        }
    }

    fn apply_done(&mut self, d: Done) {
        self.in_flight = self.in_flight.saturating_sub(1);
        // Sent once more in the last round: the object was counted when first settled.
        let counted = self.counted.remove(&d.external_id);
        let report = if counted {
            &mut PassReport::default()
        } else {
            &mut self.report
        };
        let id = match d.outcome {
            Outcome::Created(id) => {
                report.created += 1;
                id
            }
            Outcome::Replaced(id) => {
                report.replaced += 1;
                id
            }
            Outcome::Matched(id) => {
                report.matched += 1;
                id
            }
            Outcome::Failed(reason) => {
                self.fail(d.dn, reason, Some((d.kind, d.external_id)));
                return;
            }
            Outcome::Unavailable(reason) => {
                self.report.unavailable += 1;
                self.fail(d.dn, reason, Some((d.kind, d.external_id)));
                return;
            }
        };
        if self.settings.mode.dry_run {
            self.pretend.insert(d.external_id, id);
            return;
        }
        self.index.put(
            &d.external_id,
            Anchor {
                kind: d.kind,
                scim_id: id,
                hash: d.hash,
                dn: d.dn,
            },
        );
        if d.source != 0 && d.hash != 0 && d.kind == ResourceKind::User {
            self.index.set_source(&d.external_id, d.source);
        }
        if self.last_save.elapsed() >= SAVE_EVERY {
            self.last_save = Instant::now();
            if let Err(e) = self.index.save() {
                log::warn!("cannot save the anchor index yet (will retry): {e}");
            }
        }
    }

    fn fail(&mut self, dn: String, reason: String, endpoint: Option<(ResourceKind, String)>) {
        if self.scim.refused_auth().is_some() {
            // The pass ends with one error that says it; no warning per object.
            log::debug!("{dn}: {reason}");
        } else {
            log::warn!("{dn}: {reason}");
        }
        self.report.failures.push(Failure {
            dn,
            reason,
            endpoint,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::unknown_in_scope;

    #[test]
    fn unknown_objects_are_the_scope_less_what_the_index_knows_there() {
        // A second pass: everything known, nothing gone.
        assert_eq!(unknown_in_scope(101_000, 101_000, 0), 0);
        // A first pass: nothing known.
        assert_eq!(unknown_in_scope(5_000, 0, 0), 5_000);
        // 40 new objects, 7 known ones gone from scope.
        assert_eq!(unknown_in_scope(1_040, 1_007, 7), 40);
        // Everything known is gone: the whole scope is unknown.
        assert_eq!(unknown_in_scope(10, 3, 3), 10);
    }
}
