//! Active Directory change-feed primitives: DirSync (1.2.840.113556.1.4.841) and the
//! `uSNChanged` fallback.
//!
//! # What this module owns
//! * The DirSync control codec (pure, never panics): [`encode_request`] / [`decode_request`]
//!   for `SEQUENCE { flags INTEGER, maxBytes INTEGER, cookie OCTET STRING }` and
//!   [`encode_response`] / [`decode_response`] for `SEQUENCE { moreResults INTEGER,
//!   unused INTEGER, cookie OCTET STRING }`, with [`DirSyncControlError`].
//! * [`AdChange`]: one changed object as the feed sees it (DN, objectGUID, tombstone flag,
//!   `lastKnownParent`, ordinary attributes, incremental value deltas), built from an
//!   [`Entry`] by [`AdChange::from_entry`] (pure) for both DirSync and uSN results.
//! * [`DirSyncStream`] (started by [`super::Directory::dirsync`]) and the worker task that
//!   runs one DirSync search ([`serve`]).
//! * [`UsnState`] (from [`super::Directory::usn_state`]) and the uSN filter ([`usn_filter`]);
//!   the uSN search itself is [`super::Directory::usn_changes`], an ordinary paged search
//!   with the show-deleted control.
//! * [`AdFeedError`]: typed failures of both feeds, notably
//!   [`AdFeedError::MissingReplicationRights`].
//!
//! # Invariants
//! * **The cookie comes last.** A DirSync stream yields every [`DirSyncItem::Change`] of the
//!   response, then exactly one [`DirSyncItem::End`] with the new cookie and the `more` flag,
//!   then `None`. A consumer that persists the cookie when it sees `End` has handled every
//!   change it covers.
//! * **A broken DirSync never looks finished.** A result code other than success, a missing
//!   or malformed DirSync response control, an empty cookie, a change without a 16-byte
//!   objectGUID, a ranged attribute other than the incremental `range=1-1` / `range=0-0`
//!   forms, a lost connection or a dead worker all end the stream with one `Some(Err(_))`;
//!   there is no `End` then, so no cookie can be persisted past a partial result.
//! * **Continuation references are skipped, never chased.**
//! * **No paging with DirSync**: AD refuses the combination; the server bounds each response
//!   itself (`maxBytes`, [`DIRSYNC_MAX_BYTES`]) and sets `more`; the caller repeats with the
//!   new cookie while `more` is true.
//!
//! # Facts the feed loop must know (checked against Samba 4.17, see `tests/ad_feed_live.rs`)
//! * The base must be a naming-context root (Samba: `50 insufficientAccessRights`, "dN is
//!   not one of the naming context" -> [`AdFeedError::NotNamingContext`]); scope is always
//!   subtree. Filter by DN / GUID on the client side.
//! * Without "Replicating Directory Changes" the search fails with 50 (AD may say 53):
//!   [`AdFeedError::MissingReplicationRights`]. [`DirSyncFlags::OBJECT_SECURITY`] lets such
//!   an account read what its ACLs allow instead.
//! * A cookie the server cannot parse: Samba answers `12 unavailableCriticalExtension`
//!   ("Unable to unmarshall cookie") -> [`AdFeedError::InvalidCookie`]; start over without one.
//! * Tombstones come natively (no show-deleted control): DN `CN=<rdn>\0ADEL:<guid>,CN=Deleted
//!   Objects,...`, `isDeleted: TRUE`, and a `lastKnownParent` in extended form
//!   (`<GUID=...>;OU=x,DC=y`; [`AdChange::last_known_parent`] holds the plain DN). An
//!   *initial* DirSync also returns old tombstones: deletes of unknown GUIDs are no-ops.
//! * A rename/move arrives as a change with the same objectGUID, the new DN, and `name` /
//!   `parentGUID`.
//! * With [`DirSyncFlags::INCREMENTAL_VALUES`], linked values arrive as `member;range=1-1`
//!   (added) and `member;range=0-0` (removed); removed values name the DN the target had
//!   when it was linked.
//! * Samba returns everything in one response (`more` false).
//! * Samba returns an object only if one of the requested attributes (other than the RDN
//!   attribute) qualifies: a list of only `cn`, `ou`, `objectGUID` or `1.1` returns next to
//!   nothing, and it never returns `cn` itself (the RDN value comes as `name`). So
//!   [`super::Directory::dirsync`] always adds `name`, `isDeleted` and `lastKnownParent` to
//!   a non-empty attribute list; an empty list means all attributes.
//! * With incremental values, an *initial* DirSync reports a group's current members as
//!   added values (`range=1-1`), not as a plain `member` list.
//! * Deleting a user that is a group member reports only the user's tombstone, no
//!   `range=0-0` change on the group: the consumer drops the tombstone's GUID from groups.
//!
//! # Limits
//! * The filter is evaluated against what a tombstone keeps (objectClass, objectGUID, a few
//!   more): `(&(objectClass=user)(mail=*))` will not see deletes. Use class-only filters and
//!   narrow on the client.
//! * uSN polling is per DC: a [`UsnState`] from another DC ([`UsnState::same_dc`] false)
//!   makes the stored USN meaningless; start over with a full pass.

use std::collections::BTreeMap;
use std::fmt;

use ldap3::controls::RawControl;
use ldap3::{Ldap, Scope as Ldap3Scope};
use smol::channel::{Receiver, Sender};

use super::conn::op_error;
use super::dialect::{DIRSYNC_OID, SHOW_DELETED_OID};
use super::wire::RawEntry;
use super::worker::{abandon, BATCH};
use super::{DirectoryConfig, Entry, LdapError, ResultCode};

/// `maxBytes` sent with every DirSync request: the most a server should put in one response
/// before it sets `more` (AD honours it loosely; Samba ignores it).
pub const DIRSYNC_MAX_BYTES: i32 = 1 << 20;

/// Flags of a DirSync request (MS-ADTS 3.1.1.3.4.1.3). Combine with `|`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DirSyncFlags(pub u32);

impl DirSyncFlags {
    /// No flags: the account needs "Replicating Directory Changes" on the naming context.
    pub const NONE: DirSyncFlags = DirSyncFlags(0);
    /// LDAP_DIRSYNC_OBJECT_SECURITY: return only what the account may read (no special
    /// right needed).
    pub const OBJECT_SECURITY: DirSyncFlags = DirSyncFlags(0x0000_0001);
    /// LDAP_DIRSYNC_ANCESTORS_FIRST_ORDER: parents before children.
    pub const ANCESTORS_FIRST_ORDER: DirSyncFlags = DirSyncFlags(0x0000_0800);
    /// LDAP_DIRSYNC_PUBLIC_DATA_ONLY: accepted, no effect on AD.
    pub const PUBLIC_DATA_ONLY: DirSyncFlags = DirSyncFlags(0x0000_2000);
    /// LDAP_DIRSYNC_INCREMENTAL_VALUES: multi-valued linked attributes as added / removed
    /// values (`member;range=1-1` / `member;range=0-0`) instead of the whole list. Sent as the
    /// negative 32-bit INTEGER -2147483648, as AD expects.
    pub const INCREMENTAL_VALUES: DirSyncFlags = DirSyncFlags(0x8000_0000);

    /// The raw bits.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: DirSyncFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for DirSyncFlags {
    type Output = DirSyncFlags;
    fn bitor(self, rhs: DirSyncFlags) -> DirSyncFlags {
        DirSyncFlags(self.0 | rhs.0)
    }
}

impl fmt::Display for DirSyncFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:08x}", self.0)
    }
}

// ---------------------------------------------------------------------------------------
// The codec (pure).

/// Why a DirSync control value could not be decoded. `field` names the element.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DirSyncControlError {
    /// The value ends inside `field`.
    Truncated {
        /// The element being read.
        field: &'static str,
    },
    /// `field` has the wrong BER tag.
    UnexpectedTag {
        /// The element being read.
        field: &'static str,
        /// The tag expected (e.g. 0x02 INTEGER).
        expected: u8,
        /// The tag found.
        found: u8,
    },
    /// `field` uses the indefinite length form or a length longer than 4 bytes.
    BadLength {
        /// The element being read.
        field: &'static str,
    },
    /// The INTEGER `field` is empty or does not fit its range.
    IntegerOutOfRange {
        /// The element being read.
        field: &'static str,
    },
    /// Bytes follow the last element of `field`.
    TrailingBytes {
        /// The element that should have ended.
        field: &'static str,
        /// How many bytes are left over.
        count: usize,
    },
    /// The search result carried no DirSync response control, or one without a value.
    Missing,
    /// The server returned an empty cookie (nothing to resume from).
    EmptyCookie,
}

impl fmt::Display for DirSyncControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirSyncControlError::Truncated { field } => {
                write!(f, "DirSync control value ends inside {field}")
            }
            DirSyncControlError::UnexpectedTag {
                field,
                expected,
                found,
            } => write!(
                f,
                "DirSync control {field} has tag 0x{found:02x}, expected 0x{expected:02x}"
            ),
            DirSyncControlError::BadLength { field } => {
                write!(f, "DirSync control {field} has an unsupported length form")
            }
            DirSyncControlError::IntegerOutOfRange { field } => {
                write!(f, "DirSync control {field} is not an INTEGER in range")
            }
            DirSyncControlError::TrailingBytes { field, count } => {
                write!(
                    f,
                    "DirSync control {field} is followed by {count} extra byte(s)"
                )
            }
            DirSyncControlError::Missing => {
                write!(f, "the search result carried no DirSync response control")
            }
            DirSyncControlError::EmptyCookie => {
                write!(f, "the DirSync response control holds an empty cookie")
            }
        }
    }
}

impl std::error::Error for DirSyncControlError {}

const TAG_BOOLEAN: u8 = 0x01;
const TAG_INTEGER: u8 = 0x02;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_SEQUENCE: u8 = 0x30;

fn put_tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = (len as u64).to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
}

/// Minimal two's-complement content octets of an INTEGER.
fn int_content(v: i64) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let mut start = 0;
    while start < bytes.len() - 1 {
        let (b, next) = (bytes[start], bytes[start + 1]);
        if (b == 0x00 && next & 0x80 == 0) || (b == 0xff && next & 0x80 != 0) {
            start += 1;
        } else {
            break;
        }
    }
    bytes[start..].to_vec()
}

/// The DirSync request control value: `SEQUENCE { flags, maxBytes, cookie }`. `flags` is
/// sent as a signed 32-bit INTEGER (0x80000000 becomes `02 04 80 00 00 00`).
pub fn encode_request(flags: DirSyncFlags, max_bytes: i32, cookie: &[u8]) -> Vec<u8> {
    let mut inner = Vec::with_capacity(16 + cookie.len());
    put_tlv(
        &mut inner,
        TAG_INTEGER,
        &int_content(i64::from(flags.0 as i32)),
    );
    put_tlv(&mut inner, TAG_INTEGER, &int_content(i64::from(max_bytes)));
    put_tlv(&mut inner, TAG_OCTET_STRING, cookie);
    let mut out = Vec::with_capacity(inner.len() + 6);
    put_tlv(&mut out, TAG_SEQUENCE, &inner);
    out
}

/// The DirSync request control (critical, as AD requires).
pub(crate) fn request_control(flags: DirSyncFlags, cookie: &[u8]) -> RawControl {
    RawControl {
        ctype: DIRSYNC_OID.to_owned(),
        crit: true,
        val: Some(encode_request(flags, DIRSYNC_MAX_BYTES, cookie)),
    }
}

/// The show-deleted control (critical: a server that cannot show tombstones must refuse
/// the search rather than silently hide deletes).
pub(crate) fn show_deleted_control() -> RawControl {
    RawControl {
        ctype: SHOW_DELETED_OID.to_owned(),
        crit: true,
        val: None,
    }
}

/// A decoded DirSync request value (the server's view; used by tests and tools).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirSyncRequestValue {
    /// The flags' bits.
    pub flags: DirSyncFlags,
    /// maxBytes.
    pub max_bytes: i32,
    /// The cookie (empty on a first request).
    pub cookie: Vec<u8>,
}

/// A decoded DirSync response value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirSyncResponseValue {
    /// Whether the server has more changes (moreResults non-zero): ask again at once.
    pub more: bool,
    /// The cookie to send next time.
    pub cookie: Vec<u8>,
}

/// A bounds-checked BER reader over one buffer.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    /// The content of the next element, which must have tag `tag` (or one of `alt`).
    fn element(
        &mut self,
        tags: &[u8],
        field: &'static str,
    ) -> Result<(u8, &'a [u8]), DirSyncControlError> {
        let (&tag, rest) = self
            .data
            .split_first()
            .ok_or(DirSyncControlError::Truncated { field })?;
        if !tags.contains(&tag) {
            return Err(DirSyncControlError::UnexpectedTag {
                field,
                expected: tags[0],
                found: tag,
            });
        }
        let (&first, rest) = rest
            .split_first()
            .ok_or(DirSyncControlError::Truncated { field })?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return Err(DirSyncControlError::BadLength { field });
            }
            if rest.len() < n {
                return Err(DirSyncControlError::Truncated { field });
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, &rest[n..])
        };
        if rest.len() < len {
            return Err(DirSyncControlError::Truncated { field });
        }
        let (content, rest) = rest.split_at(len);
        self.data = rest;
        Ok((tag, content))
    }

    fn end(&self, field: &'static str) -> Result<(), DirSyncControlError> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(DirSyncControlError::TrailingBytes {
                field,
                count: self.data.len(),
            })
        }
    }
}

/// A two's-complement INTEGER of at most 8 content bytes.
fn int_value(content: &[u8], field: &'static str) -> Result<i64, DirSyncControlError> {
    if content.is_empty() || content.len() > 8 {
        return Err(DirSyncControlError::IntegerOutOfRange { field });
    }
    let init: i64 = if content[0] & 0x80 != 0 { -1 } else { 0 };
    Ok(content
        .iter()
        .fold(init, |acc, b| (acc << 8) | i64::from(*b)))
}

/// The three elements inside the outer SEQUENCE.
fn sequence(val: &[u8]) -> Result<Reader<'_>, DirSyncControlError> {
    let mut outer = Reader { data: val };
    let (_, inner) = outer.element(&[TAG_SEQUENCE], "SEQUENCE")?;
    outer.end("SEQUENCE")?;
    Ok(Reader { data: inner })
}

/// Decodes a DirSync request value. Flags are accepted as any INTEGER in
/// `i32::MIN..=u32::MAX` (some encoders send 0x80000000 as a positive 5-byte INTEGER).
pub fn decode_request(val: &[u8]) -> Result<DirSyncRequestValue, DirSyncControlError> {
    let mut r = sequence(val)?;
    let (_, f) = r.element(&[TAG_INTEGER], "flags")?;
    let flags = int_value(f, "flags")?;
    if flags < i64::from(i32::MIN) || flags > i64::from(u32::MAX) {
        return Err(DirSyncControlError::IntegerOutOfRange { field: "flags" });
    }
    let (_, m) = r.element(&[TAG_INTEGER], "maxBytes")?;
    let max_bytes = i32::try_from(int_value(m, "maxBytes")?)
        .map_err(|_| DirSyncControlError::IntegerOutOfRange { field: "maxBytes" })?;
    let (_, cookie) = r.element(&[TAG_OCTET_STRING], "cookie")?;
    r.end("cookie")?;
    Ok(DirSyncRequestValue {
        flags: DirSyncFlags(flags as u32),
        max_bytes,
        cookie: cookie.to_vec(),
    })
}

/// Encodes a DirSync response value (what a server sends; for tests and fakes).
pub fn encode_response(more: bool, cookie: &[u8]) -> Vec<u8> {
    let mut inner = Vec::with_capacity(8 + cookie.len());
    put_tlv(&mut inner, TAG_INTEGER, &int_content(i64::from(more)));
    put_tlv(&mut inner, TAG_INTEGER, &int_content(0));
    put_tlv(&mut inner, TAG_OCTET_STRING, cookie);
    let mut out = Vec::with_capacity(inner.len() + 6);
    put_tlv(&mut out, TAG_SEQUENCE, &inner);
    out
}

/// Decodes a DirSync response value: `SEQUENCE { moreResults INTEGER, unused INTEGER,
/// cookie OCTET STRING }`. A BOOLEAN moreResults is accepted too. An empty cookie is
/// returned as is (the worker refuses it).
pub fn decode_response(val: &[u8]) -> Result<DirSyncResponseValue, DirSyncControlError> {
    let mut r = sequence(val)?;
    let (tag, m) = r.element(&[TAG_INTEGER, TAG_BOOLEAN], "moreResults")?;
    let more = if tag == TAG_BOOLEAN {
        match m {
            [b] => *b != 0,
            _ => {
                return Err(DirSyncControlError::IntegerOutOfRange {
                    field: "moreResults",
                })
            }
        }
    } else {
        int_value(m, "moreResults")? != 0
    };
    let (_, unused) = r.element(&[TAG_INTEGER], "unused")?;
    int_value(unused, "unused")?;
    let (_, cookie) = r.element(&[TAG_OCTET_STRING], "cookie")?;
    r.end("cookie")?;
    Ok(DirSyncResponseValue {
        more,
        cookie: cookie.to_vec(),
    })
}

// ---------------------------------------------------------------------------------------
// Errors.

/// What went wrong in an AD change feed (DirSync or uSN polling).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdFeedError {
    /// DirSync was refused for lack of rights (50 insufficientAccessRights or 53
    /// unwillingToPerform): the bind account lacks "Replicating Directory Changes" on the
    /// naming context. Grant it, use [`DirSyncFlags::OBJECT_SECURITY`], or poll uSNChanged.
    MissingReplicationRights {
        /// The bind DN.
        bind_dn: String,
        /// The DirSync base (naming context).
        base: String,
        /// The server's result code.
        code: ResultCode,
        /// The server's diagnostic text.
        message: String,
    },
    /// The DirSync base is not a naming-context root (DirSync works per naming context).
    NotNamingContext {
        /// The base that was refused.
        base: String,
        /// The server's diagnostic text.
        message: String,
    },
    /// The server could not use the cookie (garbage, or from another domain): start over
    /// without a cookie (an initial DirSync) and reconcile.
    InvalidCookie {
        /// The DirSync base.
        base: String,
        /// The server's result code (Samba: 12 unavailableCriticalExtension).
        code: ResultCode,
        /// The server's diagnostic text.
        message: String,
    },
    /// The server does not support DirSync (12 unavailableCriticalExtension on a request
    /// without a cookie): use uSN polling or a generic feed.
    DirSyncUnsupported {
        /// The DirSync base.
        base: String,
        /// The server's diagnostic text.
        message: String,
    },
    /// The DirSync response control is missing or malformed.
    Control {
        /// The DirSync base.
        base: String,
        /// What was wrong.
        error: DirSyncControlError,
    },
    /// A returned object cannot be turned into a change (no usable objectGUID, or a ranged
    /// attribute DirSync should not send).
    Entry {
        /// The object's DN.
        dn: String,
        /// What was wrong.
        detail: String,
    },
    /// The rootDSE lacks what uSN polling needs (`highestCommittedUSN`, `dsServiceName`).
    RootDse {
        /// The server URL.
        url: String,
        /// What is missing or malformed.
        detail: String,
    },
    /// Any other LDAP failure (connection, timeout, other result codes).
    Ldap(LdapError),
}

impl AdFeedError {
    /// Whether the account lacks "Replicating Directory Changes" (fall back to uSN polling
    /// or [`DirSyncFlags::OBJECT_SECURITY`]).
    pub fn is_missing_rights(&self) -> bool {
        matches!(self, AdFeedError::MissingReplicationRights { .. })
    }

    /// Whether the cookie must be dropped and the feed started over.
    pub fn is_invalid_cookie(&self) -> bool {
        matches!(self, AdFeedError::InvalidCookie { .. })
    }
}

impl From<LdapError> for AdFeedError {
    fn from(e: LdapError) -> Self {
        AdFeedError::Ldap(e)
    }
}

/// `": text"` when the server gave diagnostic text.
fn diag(text: &str) -> String {
    let t = text.trim_end_matches(['\0', '\n', ' ']);
    if t.is_empty() {
        String::new()
    } else {
        format!(": {t}")
    }
}

impl fmt::Display for AdFeedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdFeedError::MissingReplicationRights {
                bind_dn,
                base,
                code,
                message,
            } => write!(
                f,
                "DirSync of {base:?} refused ({code}{}): the account {bind_dn:?} lacks the \
                 \"Replicating Directory Changes\" right on {base:?}; grant it, or use \
                 object-security DirSync or uSNChanged polling",
                diag(message)
            ),
            AdFeedError::NotNamingContext { base, message } => write!(
                f,
                "DirSync base {base:?} is not a naming-context root{}",
                diag(message)
            ),
            AdFeedError::InvalidCookie {
                base,
                code,
                message,
            } => write!(
                f,
                "DirSync of {base:?}: the server rejected the cookie ({code}{}); a full \
                 DirSync without a cookie is needed",
                diag(message)
            ),
            AdFeedError::DirSyncUnsupported { base, message } => write!(
                f,
                "DirSync of {base:?}: the server does not support the DirSync control{}",
                diag(message)
            ),
            AdFeedError::Control { base, error } => write!(f, "DirSync of {base:?}: {error}"),
            AdFeedError::Entry { dn, detail } => {
                write!(f, "change feed object {dn:?}: {detail}")
            }
            AdFeedError::RootDse { url, detail } => {
                write!(f, "rootDSE of {url}: {detail}")
            }
            AdFeedError::Ldap(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for AdFeedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AdFeedError::Control { error, .. } => Some(error),
            AdFeedError::Ldap(e) => Some(e),
            _ => None,
        }
    }
}

/// Turns the LDAP error of a DirSync search into the feed's typed error (pure).
pub(crate) fn classify(e: LdapError, bind_dn: &str, had_cookie: bool) -> AdFeedError {
    let LdapError::Search {
        base,
        code,
        message,
        ..
    } = &e
    else {
        return AdFeedError::Ldap(e);
    };
    let lower = message.to_ascii_lowercase();
    if had_cookie && lower.contains("cookie") {
        return AdFeedError::InvalidCookie {
            base: base.clone(),
            code: *code,
            message: message.clone(),
        };
    }
    match code.0 {
        50 | 53 if lower.contains("naming context") => AdFeedError::NotNamingContext {
            base: base.clone(),
            message: message.clone(),
        },
        50 | 53 => AdFeedError::MissingReplicationRights {
            bind_dn: bind_dn.to_owned(),
            base: base.clone(),
            code: *code,
            message: message.clone(),
        },
        12 if had_cookie => AdFeedError::InvalidCookie {
            base: base.clone(),
            code: *code,
            message: message.clone(),
        },
        12 => AdFeedError::DirSyncUnsupported {
            base: base.clone(),
            message: message.clone(),
        },
        _ => AdFeedError::Ldap(e),
    }
}

// ---------------------------------------------------------------------------------------
// Changes (pure).

/// Values added to and removed from one multi-valued attribute (DirSync incremental values).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ValueDelta {
    /// Values added (`attr;range=1-1`).
    pub added: Vec<Vec<u8>>,
    /// Values removed (`attr;range=0-0`).
    pub removed: Vec<Vec<u8>>,
}

/// One changed (or, in an initial DirSync, present) object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdChange {
    /// The DN now (a tombstone's is under `CN=Deleted Objects`).
    pub dn: String,
    /// objectGUID, the anchor (16 bytes as stored; base64 of these is the externalId).
    pub object_guid: [u8; 16],
    /// Whether the object is a tombstone (deleted).
    pub deleted: bool,
    /// For a tombstone: the DN of the container it was deleted from, plain (extended-DN
    /// components such as `<GUID=...>;` removed), when the server sent it.
    pub last_known_parent: Option<String>,
    /// The ordinary attributes returned (names lower-cased; on DirSync only the changed
    /// ones plus objectGUID and instanceType). Incremental values are not in here.
    pub entry: Entry,
    /// Incremental value changes by lower-cased attribute name (DirSync with
    /// [`DirSyncFlags::INCREMENTAL_VALUES`]).
    pub deltas: BTreeMap<String, ValueDelta>,
}

/// Which incremental form an attribute description has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Incremental {
    Added,
    Removed,
}

/// Splits an attribute description into its base name and incremental form: `None` when
/// it carries no range option, an error for a range option other than `1-1` / `0-0`.
fn incremental_form(name: &str) -> Result<Option<(&str, Incremental)>, String> {
    let mut parts = name.split(';');
    let base = parts.next().unwrap_or("");
    let mut form = None;
    for opt in parts {
        let lower = opt.to_ascii_lowercase();
        let Some(range) = lower.strip_prefix("range=") else {
            continue;
        };
        form = Some(match range {
            "1-1" => Incremental::Added,
            "0-0" => Incremental::Removed,
            other => {
                return Err(format!(
                    "attribute {name:?} has range {other:?}, which is neither the incremental \
                     1-1 (added) nor 0-0 (removed) form"
                ))
            }
        });
    }
    match form {
        Some(_) if base.is_empty() => Err(format!("attribute {name:?} has no name")),
        Some(f) => Ok(Some((base, f))),
        None => Ok(None),
    }
}

/// Whether an entry is a tombstone: `isDeleted: TRUE`, or a DN with the `\0ADEL:` mangling.
pub fn is_tombstone(entry: &Entry) -> bool {
    entry
        .strs("isDeleted")
        .any(|v| v.trim().eq_ignore_ascii_case("TRUE"))
        || dn_is_tombstone(&entry.dn)
}

fn dn_is_tombstone(dn: &str) -> bool {
    dn.to_ascii_uppercase().contains("\\0ADEL:") || dn.contains("\nDEL:")
}

/// A DN without leading extended-DN components (`<GUID=...>;<SID=...>;OU=x` -> `OU=x`).
pub fn plain_dn(dn: &str) -> &str {
    let mut rest = dn;
    while rest.starts_with('<') {
        match rest.find('>') {
            Some(end) => {
                rest = &rest[end + 1..];
                rest = rest.strip_prefix(';').unwrap_or(rest);
            }
            None => break,
        }
    }
    rest
}

impl AdChange {
    /// Builds a change from a DirSync or uSN result entry. Fails (never guesses) when the
    /// entry has no 16-byte objectGUID or a ranged attribute that is not an incremental
    /// `range=1-1` / `range=0-0` one.
    pub fn from_entry(entry: Entry) -> Result<AdChange, AdFeedError> {
        let bad = |detail: String| AdFeedError::Entry {
            dn: entry.dn.clone(),
            detail,
        };
        let object_guid: [u8; 16] = match entry.bytes("objectGUID") {
            [one] => one
                .as_slice()
                .try_into()
                .map_err(|_| bad(format!("objectGUID has {} bytes, expected 16", one.len())))?,
            [] => return Err(bad("no objectGUID".into())),
            many => return Err(bad(format!("{} objectGUID values", many.len()))),
        };
        let mut plain = Entry::new(entry.dn.clone());
        let mut deltas: BTreeMap<String, ValueDelta> = BTreeMap::new();
        for (name, values) in entry.attributes() {
            match incremental_form(name).map_err(bad)? {
                Some((base, form)) => {
                    let delta = deltas.entry(base.to_ascii_lowercase()).or_default();
                    let list = match form {
                        Incremental::Added => &mut delta.added,
                        Incremental::Removed => &mut delta.removed,
                    };
                    list.extend(values.iter().cloned());
                }
                None => {
                    for v in values {
                        plain.add(name, v.clone());
                    }
                }
            }
        }
        let deleted = is_tombstone(&plain);
        let last_known_parent = plain
            .first_str("lastKnownParent")
            .map(plain_dn)
            .filter(|p| !p.is_empty())
            .map(str::to_owned);
        Ok(AdChange {
            dn: entry.dn.clone(),
            object_guid,
            deleted,
            last_known_parent,
            entry: plain,
            deltas,
        })
    }

    /// Values added to `attr` (any case); empty when none.
    pub fn added(&self, attr: &str) -> &[Vec<u8>] {
        self.deltas
            .get(&attr.to_ascii_lowercase())
            .map(|d| d.added.as_slice())
            .unwrap_or(&[])
    }

    /// Values removed from `attr` (any case); empty when none.
    pub fn removed(&self, attr: &str) -> &[Vec<u8>] {
        self.deltas
            .get(&attr.to_ascii_lowercase())
            .map(|d| d.removed.as_slice())
            .unwrap_or(&[])
    }
}

// ---------------------------------------------------------------------------------------
// uSN polling (pure parts).

/// Where a DC stands: its highest committed USN and who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsnState {
    /// rootDSE `highestCommittedUSN`.
    pub highest_committed_usn: u64,
    /// rootDSE `dsServiceName`: the DN of the DC's NTDS Settings object.
    pub ds_service_name: String,
    /// `invocationId` of that object, when readable: changes when the DC's database is
    /// restored, which makes old USNs from it meaningless too.
    pub invocation_id: Option<Vec<u8>>,
}

impl UsnState {
    /// Whether `other` was read from the same DC database (same `dsServiceName`, and the
    /// same `invocationId` when both are known). If not, a stored USN must not be reused.
    pub fn same_dc(&self, other: &UsnState) -> bool {
        self.ds_service_name
            .eq_ignore_ascii_case(&other.ds_service_name)
            && match (&self.invocation_id, &other.invocation_id) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

/// Reads `highestCommittedUSN` and `dsServiceName` from a rootDSE (pure).
pub(crate) fn usn_state_from(
    url: &str,
    root_dse: &Entry,
    invocation_id: Option<Vec<u8>>,
) -> Result<UsnState, AdFeedError> {
    let missing = |detail: String| AdFeedError::RootDse {
        url: url.to_owned(),
        detail,
    };
    let usn = root_dse
        .first_str("highestCommittedUSN")
        .ok_or_else(|| missing("no highestCommittedUSN (not an Active Directory DC?)".into()))?;
    let highest_committed_usn = usn
        .trim()
        .parse::<u64>()
        .map_err(|_| missing(format!("highestCommittedUSN {usn:?} is not a number")))?;
    let ds_service_name = root_dse
        .first_str("dsServiceName")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| missing("no dsServiceName".into()))?
        .to_owned();
    Ok(UsnState {
        highest_committed_usn,
        ds_service_name,
        invocation_id,
    })
}

/// `(&(uSNChanged>=since)<filter>)`; a filter without parentheses is wrapped, an empty one
/// dropped.
pub fn usn_filter(since: u64, filter: &str) -> String {
    let f = filter.trim();
    if f.is_empty() {
        format!("(uSNChanged>={since})")
    } else if f.starts_with('(') {
        format!("(&(uSNChanged>={since}){f})")
    } else {
        format!("(&(uSNChanged>={since})({f}))")
    }
}

/// The attributes a DirSync asks for: the caller's plus `name` (renames; and Samba returns
/// no object at all for a list of only RDN attributes such as `cn` or `ou`), `isDeleted`
/// and `lastKnownParent` (tombstones). An empty list (all attributes) stays empty.
pub(crate) fn dirsync_attrs(attrs: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = attrs.iter().map(|a| (*a).to_owned()).collect();
    if out.is_empty() {
        return out;
    }
    for needed in ["name", "isDeleted", "lastKnownParent"] {
        if !out.iter().any(|a| a.eq_ignore_ascii_case(needed)) {
            out.push(needed.into());
        }
    }
    out
}

/// The attributes a uSN search asks for: the caller's (all user attributes when empty)
/// plus what [`AdChange::from_entry`] needs.
pub(crate) fn usn_attrs(attrs: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = attrs.iter().map(|a| (*a).to_owned()).collect();
    if out.is_empty() {
        out.push("*".into());
    }
    for needed in ["objectGUID", "isDeleted", "lastKnownParent", "uSNChanged"] {
        if !out.iter().any(|a| a.eq_ignore_ascii_case(needed)) {
            out.push(needed.into());
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The consumer's side.

/// One item of a DirSync stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirSyncItem {
    /// A changed object (on an initial DirSync: every object, and old tombstones).
    Change(AdChange),
    /// The end of this response: the cookie that covers every change before it, and
    /// whether the server has more (then call [`super::Directory::dirsync`] again at once).
    End {
        /// The new cookie (never empty).
        cookie: Vec<u8>,
        /// moreResults.
        more: bool,
    },
}

/// One whole DirSync response, from [`DirSyncStream::collect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirSyncBatch {
    /// The changes, in server order.
    pub changes: Vec<AdChange>,
    /// The new cookie.
    pub cookie: Vec<u8>,
    /// Whether the server has more.
    pub more: bool,
}

/// One item on a DirSync search's channel.
pub(crate) enum DirSyncMsg {
    /// Changes in server order.
    Changes(Vec<AdChange>),
    /// The search ended with success and this response control; nothing follows.
    End { cookie: Vec<u8>, more: bool },
    /// The search failed; nothing follows.
    Failed(AdFeedError),
}

/// A DirSync search for the LDAP thread.
pub(crate) struct DirSyncJob {
    pub base: String,
    pub filter: String,
    pub attrs: Vec<String>,
    pub cookie: Option<Vec<u8>>,
    pub flags: DirSyncFlags,
    pub out: Sender<DirSyncMsg>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    Complete,
    Failed,
}

/// The result of one DirSync request, in server order.
///
/// `next()` yields `Some(Ok(DirSyncItem::Change(_)))` per object, then
/// `Some(Ok(DirSyncItem::End { .. }))`, then `None`; or, if anything went wrong, one
/// `Some(Err(_))` (no `End`) and then `None`. Dropping the stream early abandons the search.
pub struct DirSyncStream {
    items: Receiver<DirSyncMsg>,
    batch: std::vec::IntoIter<AdChange>,
    end: Option<DirSyncItem>,
    state: State,
    _directory: super::Directory,
}

impl fmt::Debug for DirSyncStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirSyncStream")
            .field("state", &self.state)
            .finish()
    }
}

impl DirSyncStream {
    /// Creates the stream and the job the worker runs for it.
    pub(crate) fn new(
        directory: super::Directory,
        base: &str,
        filter: &str,
        attrs: &[&str],
        cookie: Option<Vec<u8>>,
        flags: DirSyncFlags,
    ) -> (DirSyncStream, DirSyncJob) {
        let (out, items) = smol::channel::bounded(super::STREAM_CAPACITY);
        let job = DirSyncJob {
            base: base.to_owned(),
            filter: filter.to_owned(),
            attrs: dirsync_attrs(attrs),
            cookie,
            flags,
            out,
        };
        let stream = DirSyncStream {
            items,
            batch: Vec::new().into_iter(),
            end: None,
            state: State::Open,
            _directory: directory,
        };
        (stream, job)
    }

    /// The next change, then the `End` item; `None` after `End` or after an error.
    pub async fn next(&mut self) -> Option<Result<DirSyncItem, AdFeedError>> {
        loop {
            if let Some(change) = self.batch.next() {
                return Some(Ok(DirSyncItem::Change(change)));
            }
            if let Some(end) = self.end.take() {
                return Some(Ok(end));
            }
            if self.state != State::Open {
                return None;
            }
            match self.items.recv().await {
                Ok(DirSyncMsg::Changes(batch)) => self.batch = batch.into_iter(),
                Ok(DirSyncMsg::End { cookie, more }) => {
                    self.state = State::Complete;
                    self.end = Some(DirSyncItem::End { cookie, more });
                }
                Ok(DirSyncMsg::Failed(e)) => {
                    self.state = State::Failed;
                    return Some(Err(e));
                }
                Err(_) => {
                    self.state = State::Failed;
                    return Some(Err(AdFeedError::Ldap(LdapError::Worker {
                        detail: "the DirSync search ended without a final result (the LDAP \
                                 client task stopped)"
                            .into(),
                    })));
                }
            }
        }
    }

    /// Whether the server ended the search with success (the `End` item has arrived).
    pub fn is_complete(&self) -> bool {
        self.state == State::Complete
    }

    /// Every change and the final cookie, or the error that ended the search. Holds the
    /// whole response in memory: for small deltas; initial DirSyncs of big domains should
    /// consume [`DirSyncStream::next`].
    pub async fn collect(mut self) -> Result<DirSyncBatch, AdFeedError> {
        let mut changes = Vec::new();
        while let Some(item) = self.next().await {
            match item? {
                DirSyncItem::Change(c) => changes.push(c),
                DirSyncItem::End { cookie, more } => {
                    return Ok(DirSyncBatch {
                        changes,
                        cookie,
                        more,
                    })
                }
            }
        }
        Err(AdFeedError::Ldap(LdapError::Worker {
            detail: "the DirSync stream ended without a cookie".into(),
        }))
    }
}

// ---------------------------------------------------------------------------------------
// The worker's side (runs on the LDAP thread, on a leased connection).

type Stream = ldap3::SearchStream<'static, String, Vec<String>>;

/// Why the DirSync loop stopped early.
enum Stop {
    Consumer,
    Failed(AdFeedError),
}

impl From<AdFeedError> for Stop {
    fn from(e: AdFeedError) -> Self {
        Stop::Failed(e)
    }
}

/// Runs one DirSync search on `conn` and reports on the job's channel. Returns whether the
/// search completed (so the connection may be reused).
pub(crate) async fn serve(cfg: &DirectoryConfig, conn: &Ldap, job: DirSyncJob) -> bool {
    let last = match run(cfg, conn.clone(), &job).await {
        Ok((cookie, more)) => DirSyncMsg::End { cookie, more },
        Err(Stop::Failed(e)) => DirSyncMsg::Failed(e),
        Err(Stop::Consumer) => return false,
    };
    let ok = matches!(last, DirSyncMsg::End { .. });
    let _ = job.out.send(last).await;
    ok
}

async fn run(
    cfg: &DirectoryConfig,
    mut ldap: Ldap,
    job: &DirSyncJob,
) -> Result<(Vec<u8>, bool), Stop> {
    let what = || {
        format!(
            "DirSync of {:?} with filter {} (flags {})",
            job.base, job.filter, job.flags
        )
    };
    let cookie = job.cookie.as_deref().unwrap_or(&[]);
    ldap.with_timeout(cfg.timeout);
    ldap.with_controls(request_control(job.flags, cookie));
    let mut stream: Stream = ldap
        .streaming_search(
            &job.base,
            Ldap3Scope::Subtree,
            &job.filter,
            job.attrs.clone(),
        )
        .await
        .map_err(|e| match e {
            ldap3::LdapError::FilterParsing => AdFeedError::Ldap(LdapError::InvalidFilter {
                filter: job.filter.clone(),
            }),
            e => AdFeedError::Ldap(op_error(cfg, e, what)),
        })?;
    let outcome = pump(cfg, &mut stream, job, &what).await;
    if outcome.is_err() {
        abandon(&mut stream).await;
    }
    outcome
}

async fn pump(
    cfg: &DirectoryConfig,
    stream: &mut Stream,
    job: &DirSyncJob,
    what: &impl Fn() -> String,
) -> Result<(Vec<u8>, bool), Stop> {
    let mut batch = Vec::with_capacity(BATCH);
    let mut count = 0u64;
    loop {
        let item = match stream.next().await {
            Ok(Some(item)) => item,
            Ok(None) => break,
            Err(e) => return Err(AdFeedError::Ldap(op_error(cfg, e, what)).into()),
        };
        if item.is_ref() || item.is_intermediate() {
            continue;
        }
        let entry = RawEntry::from_tag(item.0)
            .map_err(AdFeedError::Ldap)?
            .into_entry();
        batch.push(AdChange::from_entry(entry)?);
        count += 1;
        if batch.len() == BATCH {
            send(&job.out, std::mem::take(&mut batch)).await?;
        }
    }
    let res = stream.finish().await;
    if res.rc != 0 {
        let e = LdapError::Search {
            base: job.base.clone(),
            filter: job.filter.clone(),
            code: ResultCode(res.rc),
            message: res.text,
        };
        return Err(classify(e, &cfg.bind_dn, job.cookie.is_some()).into());
    }
    let control_error = |error| AdFeedError::Control {
        base: job.base.clone(),
        error,
    };
    let value = res
        .ctrls
        .iter()
        .map(|c| &c.1)
        .find(|raw| raw.ctype == DIRSYNC_OID)
        .and_then(|raw| raw.val.as_deref())
        .ok_or_else(|| control_error(DirSyncControlError::Missing))?;
    let response = decode_response(value).map_err(control_error)?;
    if response.cookie.is_empty() {
        return Err(control_error(DirSyncControlError::EmptyCookie).into());
    }
    if !batch.is_empty() {
        send(&job.out, batch).await?;
    }
    log::debug!(
        "{} returned {count} object(s), more={}",
        what(),
        response.more
    );
    Ok((response.cookie, response.more))
}

async fn send(out: &Sender<DirSyncMsg>, batch: Vec<AdChange>) -> Result<(), Stop> {
    out.send(DirSyncMsg::Changes(batch))
        .await
        .map_err(|_| Stop::Consumer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn incremental_values_flag_is_the_negative_four_byte_integer() {
        let v = encode_request(DirSyncFlags::INCREMENTAL_VALUES, 0, b"");
        assert_eq!(
            v,
            [0x30, 0x0b, 0x02, 0x04, 0x80, 0x00, 0x00, 0x00, 0x02, 0x01, 0x00, 0x04, 0x00]
        );
        let v = encode_request(DirSyncFlags::NONE, DIRSYNC_MAX_BYTES, b"ck");
        assert_eq!(
            v,
            [0x30, 0x0c, 0x02, 0x01, 0x00, 0x02, 0x03, 0x10, 0x00, 0x00, 0x04, 0x02, b'c', b'k']
        );
        // 0x800 needs a leading 0x08; 0x8000 a leading zero byte to stay positive.
        assert_eq!(int_content(0x800), [0x08, 0x00]);
        assert_eq!(int_content(0x8000), [0x00, 0x80, 0x00]);
        assert_eq!(int_content(-1), [0xff]);
        assert_eq!(int_content(-129), [0xff, 0x7f]);
        let both = DirSyncFlags::INCREMENTAL_VALUES | DirSyncFlags::OBJECT_SECURITY;
        assert_eq!(both.bits(), 0x8000_0001);
        assert!(both.contains(DirSyncFlags::OBJECT_SECURITY));
        assert_eq!(
            decode_request(&encode_request(both, 7, b"x"))
                .unwrap()
                .flags,
            both
        );
    }

    #[test]
    fn request_control_is_critical() {
        let c = request_control(DirSyncFlags::NONE, b"");
        assert!(c.crit);
        assert_eq!(c.ctype, DIRSYNC_OID);
        assert!(show_deleted_control().crit);
        assert_eq!(show_deleted_control().val, None);
    }

    #[test]
    fn long_cookies_use_the_long_length_form() {
        let cookie = vec![0xab; 300];
        let v = encode_request(DirSyncFlags::NONE, 0, &cookie);
        assert_eq!(&v[..4], &[0x30, 0x82, 0x01, 0x36]);
        assert_eq!(decode_request(&v).unwrap().cookie, cookie);
    }

    #[test]
    fn a_five_byte_positive_flag_is_accepted_as_the_same_bits() {
        let v = [
            0x30, 0x0c, 0x02, 0x05, 0x00, 0x80, 0x00, 0x00, 0x00, 0x02, 0x01, 0x00, 0x04, 0x00,
        ];
        assert_eq!(
            decode_request(&v).unwrap().flags,
            DirSyncFlags::INCREMENTAL_VALUES
        );
    }

    #[test]
    fn response_decoding_reports_what_is_wrong() {
        let ok = encode_response(true, b"cookie");
        assert_eq!(
            decode_response(&ok).unwrap(),
            DirSyncResponseValue {
                more: true,
                cookie: b"cookie".to_vec()
            }
        );
        // What Samba sent in the testbed (continueFlag=0, unused 0, 4-byte cookie).
        let samba = [
            0x30, 0x0c, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00, 0x04, 0x04, b'M', b'S', b'D', b'S',
        ];
        assert!(!decode_response(&samba).unwrap().more);
        let boolean = [0x30, 0x08, 0x01, 0x01, 0xff, 0x02, 0x01, 0x00, 0x04, 0x00];
        assert!(decode_response(&boolean).unwrap().more);
        assert_eq!(
            decode_response(&[]),
            Err(DirSyncControlError::Truncated { field: "SEQUENCE" })
        );
        assert_eq!(
            decode_response(&[0x31, 0x00]),
            Err(DirSyncControlError::UnexpectedTag {
                field: "SEQUENCE",
                expected: 0x30,
                found: 0x31
            })
        );
        assert_eq!(
            decode_response(&[0x30, 0x80, 0x00, 0x00]),
            Err(DirSyncControlError::BadLength { field: "SEQUENCE" })
        );
        assert_eq!(
            decode_response(&[0x30, 0x05, 0x02, 0x00, 0x02, 0x01, 0x00]),
            Err(DirSyncControlError::IntegerOutOfRange {
                field: "moreResults"
            })
        );
        assert_eq!(
            decode_response(&[0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00]),
            Err(DirSyncControlError::Truncated { field: "cookie" })
        );
        assert_eq!(
            decode_response(&[0x30, 0x09, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00]),
            Err(DirSyncControlError::Truncated { field: "SEQUENCE" })
        );
        let mut trailing = encode_response(false, b"c");
        trailing[1] += 2;
        trailing.extend([0x05, 0x00]);
        assert_eq!(
            decode_response(&trailing),
            Err(DirSyncControlError::TrailingBytes {
                field: "cookie",
                count: 2
            })
        );
        let mut after = encode_response(false, b"c");
        after.push(0);
        assert_eq!(
            decode_response(&after),
            Err(DirSyncControlError::TrailingBytes {
                field: "SEQUENCE",
                count: 1
            })
        );
    }

    proptest! {
        #[test]
        fn request_round_trips(flags: u32, max_bytes: i32, cookie in proptest::collection::vec(any::<u8>(), 0..700)) {
            let v = encode_request(DirSyncFlags(flags), max_bytes, &cookie);
            let d = decode_request(&v).unwrap();
            prop_assert_eq!(d, DirSyncRequestValue { flags: DirSyncFlags(flags), max_bytes, cookie });
        }

        #[test]
        fn response_round_trips(more: bool, cookie in proptest::collection::vec(any::<u8>(), 0..70_000)) {
            let v = encode_response(more, &cookie);
            let d = decode_response(&v).unwrap();
            prop_assert_eq!(d, DirSyncResponseValue { more, cookie });
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_request(&bytes);
            let _ = decode_response(&bytes);
        }

        #[test]
        fn mutated_values_never_panic(more: bool, cookie in proptest::collection::vec(any::<u8>(), 0..40), at: usize, byte: u8, cut: usize) {
            let mut v = encode_response(more, &cookie);
            let i = at % v.len();
            v[i] = byte;
            v.truncate(v.len() - cut % v.len());
            let _ = decode_response(&v);
            let _ = decode_request(&v);
        }
    }

    const GUID: [u8; 16] = [
        0x06, 0x70, 0xdd, 0x6e, 0x5c, 0x57, 0x61, 0x47, 0xbe, 0xbe, 0x9f, 0x4f, 0xc4, 0x9e, 0x6f,
        0x22,
    ];

    #[test]
    fn incremental_member_values_are_split_into_added_and_removed() {
        let e = Entry::new("CN=g1,OU=x,DC=b")
            .with("objectGUID", GUID.to_vec())
            .with("instanceType", "4")
            .with("member;range=1-1", "CN=a,OU=x,DC=b")
            .with("member;range=1-1", "CN=b,OU=x,DC=b")
            .with("Member;RANGE=0-0", "CN=c,OU=x,DC=b")
            .with("msDS-Foo;range=0-0", "v");
        let c = AdChange::from_entry(e).unwrap();
        assert_eq!(c.object_guid, GUID);
        assert!(!c.deleted);
        assert_eq!(
            c.added("MEMBER"),
            [b"CN=a,OU=x,DC=b".to_vec(), b"CN=b,OU=x,DC=b".to_vec()]
        );
        assert_eq!(c.removed("member"), [b"CN=c,OU=x,DC=b".to_vec()]);
        assert_eq!(c.removed("msds-foo"), [b"v".to_vec()]);
        assert!(c.added("msds-foo").is_empty());
        assert!(!c.entry.has("member"));
        assert!(c.entry.attributes().all(|(n, _)| !n.contains(';')));
        assert_eq!(c.entry.first_str("instancetype"), Some("4"));
    }

    #[test]
    fn real_ranges_and_missing_guids_are_errors_not_short_results() {
        let e = Entry::new("CN=g")
            .with("objectGUID", GUID.to_vec())
            .with("member;range=0-1499", "CN=a");
        let err = AdChange::from_entry(e).unwrap_err();
        assert!(matches!(&err, AdFeedError::Entry { dn, .. } if dn == "CN=g"));
        assert!(err.to_string().contains("member;range=0-1499"), "{err}");
        assert!(AdChange::from_entry(Entry::new("CN=g").with("cn", "g")).is_err());
        let short = Entry::new("CN=g").with("objectGUID", vec![1, 2, 3]);
        assert!(AdChange::from_entry(short)
            .unwrap_err()
            .to_string()
            .contains("3 bytes"));
        assert!(incremental_form(";range=1-1").is_err());
        assert_eq!(incremental_form("member;binary").unwrap(), None);
    }

    #[test]
    fn tombstones_are_recognised_with_their_last_known_parent() {
        let e = Entry::new(
            "CN=probe renamed\\0ADEL:6edd7006-575c-4761-bebe-9f4fc49e6f22,CN=Deleted Objects,DC=b",
        )
        .with("isDeleted", "TRUE")
        .with(
            "lastKnownParent",
            "<GUID=c3acf067-9951-482d-9c3c-abfd1a6a6bf3>;OU=dsx,DC=b",
        )
        .with("objectGUID", GUID.to_vec());
        let c = AdChange::from_entry(e).unwrap();
        assert!(c.deleted);
        assert_eq!(c.last_known_parent.as_deref(), Some("OU=dsx,DC=b"));
        // The DN alone is enough (e.g. isDeleted not requested), in any hex case.
        assert!(dn_is_tombstone("CN=x\\0aDEL:1234,CN=Deleted Objects,DC=b"));
        assert!(dn_is_tombstone("CN=x\nDEL:1234,CN=Deleted Objects,DC=b"));
        assert!(!dn_is_tombstone("CN=DEL:x,DC=b"));
        assert!(!is_tombstone(
            &Entry::new("CN=x").with("isDeleted", "FALSE")
        ));
        assert_eq!(plain_dn("<GUID=1>;<SID=S-1>;OU=x,DC=b"), "OU=x,DC=b");
        assert_eq!(plain_dn("OU=x,DC=b"), "OU=x,DC=b");
        assert_eq!(plain_dn("<GUID=1>"), "");
        assert_eq!(plain_dn("<broken"), "<broken");
    }

    fn search_error(code: u32, message: &str) -> LdapError {
        LdapError::Search {
            base: "DC=b".into(),
            filter: "(objectClass=user)".into(),
            code: ResultCode(code),
            message: message.into(),
        }
    }

    #[test]
    fn result_codes_become_typed_feed_errors() {
        let dn = "CN=reader,DC=b";
        let e = classify(
            search_error(
                50,
                "error in module dirsync: insufficient access rights during LDB_SEARCH (50)",
            ),
            dn,
            false,
        );
        assert!(e.is_missing_rights());
        let text = e.to_string();
        assert!(text.contains("Replicating Directory Changes"), "{text}");
        assert!(text.contains("CN=reader,DC=b"), "{text}");
        assert!(classify(search_error(53, ""), dn, true).is_missing_rights());
        assert!(matches!(
            classify(
                search_error(50, "dN is not one of the naming context at dirsync.c:1012"),
                dn,
                false
            ),
            AdFeedError::NotNamingContext { .. }
        ));
        let bad_cookie = "0000202C: Unable to unmarshall cookie as a ldapControlDirSyncCookie";
        assert!(classify(search_error(12, bad_cookie), dn, true).is_invalid_cookie());
        assert!(classify(search_error(2, bad_cookie), dn, true).is_invalid_cookie());
        assert!(matches!(
            classify(search_error(12, ""), dn, false),
            AdFeedError::DirSyncUnsupported { .. }
        ));
        assert!(matches!(
            classify(search_error(32, ""), dn, false),
            AdFeedError::Ldap(LdapError::Search { .. })
        ));
        let lost = LdapError::ConnectionLost {
            url: "ldap://x".into(),
            detail: "gone".into(),
        };
        assert_eq!(classify(lost.clone(), dn, true), AdFeedError::Ldap(lost));
    }

    #[test]
    fn usn_state_comes_from_the_root_dse() {
        let dse = Entry::new("")
            .with("highestCommittedUSN", "4726")
            .with("dsServiceName", "CN=NTDS Settings,CN=DC1,CN=Servers,DC=b");
        let s = usn_state_from("ldap://x", &dse, Some(vec![1; 16])).unwrap();
        assert_eq!(s.highest_committed_usn, 4726);
        let mut other = s.clone();
        other.ds_service_name = other.ds_service_name.to_ascii_uppercase();
        assert!(s.same_dc(&other));
        other.invocation_id = Some(vec![2; 16]);
        assert!(!s.same_dc(&other), "a restored DC has a new invocationId");
        other.invocation_id = None;
        other.ds_service_name = "CN=NTDS Settings,CN=DC2,CN=Servers,DC=b".into();
        assert!(!s.same_dc(&other));
        let no_usn = Entry::new("").with("dsServiceName", "x");
        assert!(matches!(
            usn_state_from("ldap://x", &no_usn, None),
            Err(AdFeedError::RootDse { .. })
        ));
        let bad = Entry::new("")
            .with("highestCommittedUSN", "12x")
            .with("dsServiceName", "x");
        assert!(usn_state_from("ldap://x", &bad, None)
            .unwrap_err()
            .to_string()
            .contains("12x"));
    }

    #[test]
    fn usn_filters_and_attributes() {
        assert_eq!(
            usn_filter(5, "(objectClass=user)"),
            "(&(uSNChanged>=5)(objectClass=user))"
        );
        assert_eq!(
            usn_filter(5, "objectClass=user"),
            "(&(uSNChanged>=5)(objectClass=user))"
        );
        assert_eq!(usn_filter(5, " "), "(uSNChanged>=5)");
        assert!(dirsync_attrs(&[]).is_empty());
        assert_eq!(
            dirsync_attrs(&["ou", "NAME"]),
            vec!["ou", "NAME", "isDeleted", "lastKnownParent"]
        );
        assert_eq!(
            usn_attrs(&[]),
            vec![
                "*",
                "objectGUID",
                "isDeleted",
                "lastKnownParent",
                "uSNChanged"
            ]
        );
        assert_eq!(
            usn_attrs(&["cn", "objectguid", "USNCHANGED"]),
            vec![
                "cn",
                "objectguid",
                "USNCHANGED",
                "isDeleted",
                "lastKnownParent"
            ]
        );
    }

    fn stream() -> (Sender<DirSyncMsg>, DirSyncStream) {
        let (requests, _inbox) = smol::channel::unbounded();
        let directory = super::super::Directory {
            inner: std::sync::Arc::new(super::super::Handle {
                requests,
                url: "ldap://127.0.0.1:1".into(),
                tls: None,
            }),
        };
        let (stream, job) = DirSyncStream::new(
            directory,
            "DC=b",
            "(objectClass=*)",
            &[],
            None,
            DirSyncFlags::NONE,
        );
        (job.out, stream)
    }

    fn change(dn: &str) -> AdChange {
        AdChange::from_entry(Entry::new(dn).with("objectGUID", GUID.to_vec())).unwrap()
    }

    #[test]
    fn the_cookie_comes_after_the_changes_and_only_on_success() {
        smol::block_on(async {
            let (out, mut s) = stream();
            out.send(DirSyncMsg::Changes(vec![change("CN=a"), change("CN=b")]))
                .await
                .unwrap();
            out.send(DirSyncMsg::End {
                cookie: b"ck".to_vec(),
                more: true,
            })
            .await
            .unwrap();
            let mut seen = Vec::new();
            while let Some(item) = s.next().await {
                seen.push(item.unwrap());
            }
            assert!(s.is_complete());
            assert!(matches!(&seen[0], DirSyncItem::Change(c) if c.dn == "CN=a"));
            assert!(matches!(&seen[1], DirSyncItem::Change(c) if c.dn == "CN=b"));
            assert_eq!(
                seen[2],
                DirSyncItem::End {
                    cookie: b"ck".to_vec(),
                    more: true
                }
            );
            assert_eq!(seen.len(), 3);
        });
    }

    #[test]
    fn a_broken_dirsync_is_an_error_never_a_short_batch() {
        smol::block_on(async {
            let (out, s) = stream();
            out.send(DirSyncMsg::Changes(vec![change("CN=a")]))
                .await
                .unwrap();
            drop(out);
            let err = s.collect().await.unwrap_err();
            assert!(matches!(err, AdFeedError::Ldap(LdapError::Worker { .. })));

            let (out, mut s) = stream();
            let e = AdFeedError::Control {
                base: "DC=b".into(),
                error: DirSyncControlError::Missing,
            };
            out.send(DirSyncMsg::Failed(e.clone())).await.unwrap();
            assert_eq!(s.next().await, Some(Err(e)));
            assert!(s.next().await.is_none());
            assert!(!s.is_complete());
        });
    }
}
