//! SCIM filters (RFC 7644 §3.4.2.2): the parser, the AST, and the translation to LDAP
//! filters (RFC 4515) that the SCIM facade runs against the directory.
//!
//! Owns: [`parse`] (text → [`Filter`]), the canonical printer (`Display` for [`Filter`]),
//! and [`to_ldap`] ([`Filter`] + an [`AttributeMap`] the caller supplies → LDAP filter
//! text). Pure code, no I/O. It must never emit an LDAP filter broader than the SCIM filter
//! it was given (see "Refused, and why").
//!
//! # Grammar accepted
//!
//! ```text
//! FILTER    = orExp
//! orExp     = andExp *( "or" andExp )            ; precedence: not > and > or,
//! andExp    = unary  *( "and" unary )            ; left-associative
//! unary     = "not" *WS "(" FILTER ")" / "(" FILTER ")" / attrExp / valuePath
//! attrExp   = attrPath WS ( "pr" / compareOp WS compValue )
//! valuePath = attrPath "[" valFilter "]" [ "." ATTRNAME WS ( "pr" / compareOp WS compValue ) ]
//! valFilter = FILTER whose attribute paths are plain ATTRNAMEs (no URN, no ".sub",
//!             no nested "[...]")
//! attrPath  = [ URN ":" ] ATTRNAME [ "." ATTRNAME ]
//! ATTRNAME  = ( ALPHA / "$" ) *( ALPHA / DIGIT / "-" / "_" )     ; "$" for "$ref"
//! compareOp = eq / ne / co / sw / ew / gt / ge / lt / le
//! compValue = JSON string (all JSON escapes, surrogate pairs) / JSON number /
//!             true / false / null
//! ```
//!
//! Keywords (`and or not pr`, operators, `true false null`) and attribute names are
//! case-insensitive; the AST keeps names as written and [`AttrPath::key`] lowercases them.
//! Whitespace (space, tab, CR, LF) may be repeated; it is required only where two words
//! would otherwise run together. The extension `emails[type eq "work"].value co "x"` is
//! read as `emails[type eq "work" and value co "x"]` (same meaning, one AST form).
//!
//! # Limits (hostile input)
//!
//! * [`MAX_FILTER_LEN`] bytes of filter text (4 KiB);
//! * [`MAX_DEPTH`] levels of nesting, counting `(`, `not (` and `[` (32): the parser
//!   recurses only per nesting level, so it cannot overflow the stack;
//! * [`MAX_TERMS`] attribute expressions (64).
//!
//! Every limit is a [`FilterError`] with the byte offset where it was crossed. Parsing is one
//! left-to-right pass, linear in the input. The translation bounds its own work: a value
//! path distributed into disjunctive normal form may hold at most [`MAX_TERMS`] conditions,
//! and the LDAP text at most [`MAX_LDAP_LEN`] bytes.
//!
//! # Translation table
//!
//! `a` is the LDAP attribute the map names for the SCIM path, `v` the value escaped per
//! RFC 4515 (`*` `(` `)` `\` NUL as `\2a \28 \29 \5c \00`; other bytes, UTF-8 included,
//! as they are). A target with several LDAP attributes (an anchor read from either of two
//! attributes) ORs the per-attribute form, and `ne` negates the whole OR.
//!
//! | SCIM | LDAP |
//! |---|---|
//! | `p eq v` | `(a=v)` |
//! | `p ne v` | `(!(a=v))` |
//! | `p co v` / `sw` / `ew` | `(a=*v*)` / `(a=v*)` / `(a=*v)` |
//! | `p co ""` / `sw ""` / `ew ""` | `(a=*)`: every string contains "", so this *is* `pr` (see below) |
//! | `p pr` | `(a=*)` |
//! | `p ge v` / `p le v` | `(a>=v)` / `(a<=v)` |
//! | `p gt v` / `p lt v` | `(&(a>=v)(!(a=v)))` / `(&(a<=v)(!(a=v)))` |
//! | `p eq null` / `p ne null` | `(!(a=*))` / `(a=*)` (RFC 7643 §2.5: null = unassigned) |
//! | `x and y` / `x or y` / `not (x)` | `(&X Y)` / `(\|X Y)` / `(!X)`, chains flattened |
//! | number `42` | `42` (integers only: LDAP INTEGER has no fraction or exponent) |
//! | binary anchor `id eq "<base64>"` | `(a=\xx\xx…)`: the decoded octets, each escaped |
//! | boolean target `active eq true` | the map's `when_true` filter (e.g. AD's `(!(userAccountControl:1.2.840.113556.1.4.803:=2))`); `eq false` its `when_false`; `ne` the negation |
//! | `emails[type eq "work" and value co "x"]` | key `emails[type eq "work"].value` with `co "x"` |
//! | `emails[type eq "work"]` | key `emails[type eq "work"].value` with `pr` |
//! | `members[value eq "x"]` | key `members.value` with `eq "x"` |
//! | `A[f or g]` | `(\|A[f] A[g])` (value filters are distributed into DNF) |
//!
//! Map keys ([`AttrPath::key`]): lowercased; the core User and Group schema URNs are
//! dropped (`urn:…:core:2.0:User:userName` → `username`), other URNs kept
//! (`urn:…:enterprise:2.0:user:employeenumber`); a type selector is written
//! `emails[type eq "work"].value` with the type value lowercased and JSON-quoted.
//!
//! # Refused, and why
//!
//! The invariant: a translated filter never matches an entry the SCIM filter would not
//! match. No term is ever dropped, widened or replaced by a catch-all; what cannot be said
//! exactly is a [`TranslateError`] (SCIM `400 invalidFilter`), which names the attribute and
//! the operator.
//!
//! * an attribute the map does not know, or marks [`Target::NotFilterable`];
//! * `co`/`sw`/`ew` on a target without substring matching (e.g. DN-valued) and
//!   `gt`/`ge`/`lt`/`le` on one without an ordering rule (LDAP would say Undefined);
//! * booleans on a text target, anything but `eq`/`ne`/`pr` on a boolean or binary target,
//!   a value that is not base64 (or not the anchor's length) for a binary anchor, `null`
//!   with anything but `eq`/`ne`, numbers with a fraction or exponent;
//! * value paths LDAP cannot tie to one element: two or more conditions on one element
//!   besides its `type` (LDAP would match them on different values of a multi-valued
//!   attribute), negation (`not`, `ne`, `null`) inside `[...]`, two different `type`s;
//! * expansions past the limits above.
//!
//! `co ""` (and `sw ""`, `ew ""`) is translated as `pr`, not refused: it means exactly
//! "has a value", which is no broader than a filter the caller could send anyway (`pr`),
//! and the facade confines every search to the sync scope and caps its results.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// Longest filter text accepted, in bytes.
pub const MAX_FILTER_LEN: usize = 4096;
/// Deepest nesting accepted: each `(`, `not (` and `[` is one level.
pub const MAX_DEPTH: usize = 32;
/// Most attribute expressions (`p op v`, `p pr`) in one filter.
pub const MAX_TERMS: usize = 64;
/// Longest LDAP filter [`to_ldap`] emits, in bytes.
pub const MAX_LDAP_LEN: usize = 64 * 1024;

/// Deepest AST [`to_ldap`] walks; parsed filters stay far below it (and-chains of
/// [`MAX_TERMS`] plus [`MAX_DEPTH`] nestings). It guards hand-built ASTs.
const MAX_AST_DEPTH: usize = 4 * (MAX_TERMS + MAX_DEPTH);

/// Schema URNs dropped from map keys: attributes of the core schemas are named bare.
const CORE_URNS: [&str; 2] = [
    "urn:ietf:params:scim:schemas:core:2.0:user",
    "urn:ietf:params:scim:schemas:core:2.0:group",
];

// ---------------------------------------------------------------------------------------
// AST
// ---------------------------------------------------------------------------------------

/// An attribute path: `[urn:]name[.sub]`, names as written in the filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrPath {
    /// Schema URN prefix, without the final `:`.
    pub urn: Option<String>,
    /// Attribute name.
    pub name: String,
    /// Sub-attribute name.
    pub sub: Option<String>,
}

impl AttrPath {
    /// A bare attribute name (no URN, no sub-attribute).
    pub fn new(name: &str) -> AttrPath {
        AttrPath {
            urn: None,
            name: name.to_string(),
            sub: None,
        }
    }

    /// The key an [`AttributeMap`] is asked for: lowercased, core schema URNs dropped,
    /// other URNs kept with their `:` (`name.familyname`, `urn:…:user:employeenumber`).
    pub fn key(&self) -> String {
        let mut key = String::new();
        if let Some(urn) = &self.urn {
            let urn = urn.to_ascii_lowercase();
            if !CORE_URNS.contains(&urn.as_str()) {
                key.push_str(&urn);
                key.push(':');
            }
        }
        key.push_str(&self.name.to_ascii_lowercase());
        if let Some(sub) = &self.sub {
            key.push('.');
            key.push_str(&sub.to_ascii_lowercase());
        }
        key
    }
}

impl fmt::Display for AttrPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(urn) = &self.urn {
            write!(f, "{urn}:")?;
        }
        f.write_str(&self.name)?;
        if let Some(sub) = &self.sub {
            write!(f, ".{sub}")?;
        }
        Ok(())
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `eq`: equal.
    Eq,
    /// `ne`: not equal.
    Ne,
    /// `co`: contains.
    Co,
    /// `sw`: starts with.
    Sw,
    /// `ew`: ends with.
    Ew,
    /// `gt`: greater than.
    Gt,
    /// `ge`: greater than or equal.
    Ge,
    /// `lt`: less than.
    Lt,
    /// `le`: less than or equal.
    Le,
}

impl CompareOp {
    /// Every operator, in RFC order.
    pub const ALL: [CompareOp; 9] = [
        CompareOp::Eq,
        CompareOp::Ne,
        CompareOp::Co,
        CompareOp::Sw,
        CompareOp::Ew,
        CompareOp::Gt,
        CompareOp::Ge,
        CompareOp::Lt,
        CompareOp::Le,
    ];

    /// The operator as SCIM writes it (lowercase).
    pub fn as_str(self) -> &'static str {
        match self {
            CompareOp::Eq => "eq",
            CompareOp::Ne => "ne",
            CompareOp::Co => "co",
            CompareOp::Sw => "sw",
            CompareOp::Ew => "ew",
            CompareOp::Gt => "gt",
            CompareOp::Ge => "ge",
            CompareOp::Lt => "lt",
            CompareOp::Le => "le",
        }
    }

    fn from_word(word: &str) -> Option<CompareOp> {
        CompareOp::ALL
            .into_iter()
            .find(|op| word.eq_ignore_ascii_case(op.as_str()))
    }
}

/// A comparison value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompValue {
    /// A JSON string, escapes resolved.
    String(String),
    /// A JSON number, kept as written (RFC 8259 number grammar, checked).
    Number(String),
    /// `true` or `false`.
    Bool(bool),
    /// `null`.
    Null,
}

impl fmt::Display for CompValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompValue::String(s) => f.write_str(&json_quote(s)),
            CompValue::Number(n) => f.write_str(n),
            CompValue::Bool(b) => write!(f, "{b}"),
            CompValue::Null => f.write_str("null"),
        }
    }
}

/// What an attribute expression tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Test {
    /// `pr`: the attribute has a value.
    Present,
    /// `op value`.
    Compare(CompareOp, CompValue),
}

impl Test {
    /// The operator's SCIM name (`pr` for [`Test::Present`]).
    pub fn op_name(&self) -> &'static str {
        match self {
            Test::Present => "pr",
            Test::Compare(op, _) => op.as_str(),
        }
    }
}

impl fmt::Display for Test {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Test::Present => f.write_str("pr"),
            Test::Compare(op, value) => write!(f, "{} {value}", op.as_str()),
        }
    }
}

/// A parsed SCIM filter.
///
/// `Display` prints canonical SCIM text that [`parse`] reads back to the same AST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// `path pr` or `path op value`.
    Attr {
        /// The attribute tested.
        path: AttrPath,
        /// The test.
        test: Test,
    },
    /// `path[filter]`: some element of a multi-valued complex attribute matches `filter`,
    /// whose paths are plain sub-attribute names.
    ValuePath {
        /// The multi-valued attribute (no sub-attribute).
        path: AttrPath,
        /// The condition on one element.
        filter: Box<Filter>,
    },
    /// `not (filter)`.
    Not(Box<Filter>),
    /// `left and right`.
    And(Box<Filter>, Box<Filter>),
    /// `left or right`.
    Or(Box<Filter>, Box<Filter>),
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn operand(f: &mut fmt::Formatter<'_>, x: &Filter, paren: bool) -> fmt::Result {
            if paren {
                write!(f, "({x})")
            } else {
                write!(f, "{x}")
            }
        }
        match self {
            Filter::Attr { path, test } => write!(f, "{path} {test}"),
            Filter::ValuePath { path, filter } => write!(f, "{path}[{filter}]"),
            Filter::Not(inner) => write!(f, "not ({inner})"),
            // Left-associative chains print bare; a right operand of the same or a lower
            // precedence keeps its parentheses so the re-parse builds the same tree.
            Filter::And(l, r) => {
                operand(f, l, matches!(**l, Filter::Or(..)))?;
                f.write_str(" and ")?;
                operand(f, r, matches!(**r, Filter::Or(..) | Filter::And(..)))
            }
            Filter::Or(l, r) => {
                operand(f, l, false)?;
                f.write_str(" or ")?;
                operand(f, r, matches!(**r, Filter::Or(..)))
            }
        }
    }
}

/// A string as a JSON string literal (quotes, `\"`, `\\`, control characters escaped).
fn json_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------------------------------
// Parse errors
// ---------------------------------------------------------------------------------------

/// Why a filter text was refused, and where (SCIM `400 invalidFilter`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    /// Byte offset in the filter text where the problem was found.
    pub offset: usize,
    /// What is wrong.
    pub kind: FilterErrorKind,
}

impl FilterError {
    /// The SCIM `scimType` for this error.
    pub fn scim_type(&self) -> &'static str {
        "invalidFilter"
    }
}

/// What is wrong with a filter text.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FilterErrorKind {
    /// The filter is empty or only whitespace.
    Empty,
    /// The filter is longer than [`MAX_FILTER_LEN`].
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Nesting deeper than [`MAX_DEPTH`].
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// More attribute expressions than [`MAX_TERMS`].
    TooManyTerms {
        /// The limit.
        max: usize,
    },
    /// Something else stands where the grammar needs `expected`.
    Expected {
        /// What the grammar allows here.
        expected: &'static str,
        /// The start of what was found (at most 16 characters), or `end of filter`.
        found: String,
    },
    /// A word where an operator belongs that is no SCIM operator.
    UnknownOperator {
        /// The word.
        op: String,
    },
    /// A malformed string literal.
    BadString {
        /// What is malformed.
        why: &'static str,
    },
    /// A malformed number literal.
    BadNumber,
    /// A malformed or misplaced attribute path.
    BadAttribute {
        /// The path as written.
        path: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid filter at byte {}: ", self.offset)?;
        match &self.kind {
            FilterErrorKind::Empty => f.write_str("the filter is empty"),
            FilterErrorKind::TooLong { len, max } => {
                write!(
                    f,
                    "the filter is {len} bytes long, at most {max} are allowed"
                )
            }
            FilterErrorKind::TooDeep { max } => {
                write!(f, "nesting deeper than {max} levels")
            }
            FilterErrorKind::TooManyTerms { max } => {
                write!(f, "more than {max} attribute expressions")
            }
            FilterErrorKind::Expected { expected, found } => {
                write!(f, "expected {expected}, found {found}")
            }
            FilterErrorKind::UnknownOperator { op } => write!(
                f,
                "unknown operator {op:?} (allowed: eq ne co sw ew gt ge lt le pr)"
            ),
            FilterErrorKind::BadString { why } => write!(f, "bad string: {why}"),
            FilterErrorKind::BadNumber => f.write_str("bad number"),
            FilterErrorKind::BadAttribute { path, why } => {
                write!(f, "bad attribute path {path:?}: {why}")
            }
        }
    }
}

impl std::error::Error for FilterError {}

// ---------------------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------------------

/// Parses a SCIM filter (see the module doc for the grammar and limits).
pub fn parse(input: &str) -> Result<Filter, FilterError> {
    if input.len() > MAX_FILTER_LEN {
        return Err(FilterError {
            offset: MAX_FILTER_LEN,
            kind: FilterErrorKind::TooLong {
                len: input.len(),
                max: MAX_FILTER_LEN,
            },
        });
    }
    let mut p = Parser {
        src: input,
        bytes: input.as_bytes(),
        pos: 0,
        depth: 0,
        terms: 0,
    };
    p.skip_ws();
    if p.pos == p.bytes.len() {
        return Err(p.error(FilterErrorKind::Empty));
    }
    let filter = p.or_expr(false)?;
    p.skip_ws();
    if p.pos != p.bytes.len() {
        return Err(p.expected("and, or, or the end of the filter"));
    }
    Ok(filter)
}

struct Parser<'a> {
    src: &'a str,
    bytes: &'a [u8],
    /// Always on a char boundary: it only moves over ASCII bytes or whole string runs.
    pos: usize,
    depth: usize,
    terms: usize,
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'$')
}

/// `ATTRNAME = ( ALPHA / "$" ) *( ALPHA / DIGIT / "-" / "_" )`, and `$` alone is no name.
fn is_attr_name(name: &str) -> bool {
    let b = name.as_bytes();
    let first_ok = match b.first() {
        Some(c) if c.is_ascii_alphabetic() => true,
        Some(b'$') => b.get(1).is_some_and(|c| c.is_ascii_alphabetic()),
        _ => false,
    };
    first_ok
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_'))
}

fn is_urn(urn: &str) -> bool {
    urn.len() > 4 && urn[..4].eq_ignore_ascii_case("urn:") && urn.split(':').all(|s| !s.is_empty())
}

impl<'a> Parser<'a> {
    fn error(&self, kind: FilterErrorKind) -> FilterError {
        self.error_at(self.pos, kind)
    }

    fn error_at(&self, offset: usize, kind: FilterErrorKind) -> FilterError {
        FilterError { offset, kind }
    }

    fn expected(&self, expected: &'static str) -> FilterError {
        let found = match self.src.get(self.pos..) {
            Some("") | None => "end of filter".to_string(),
            Some(rest) => format!("{:?}", rest.chars().take(16).collect::<String>()),
        };
        self.error(FilterErrorKind::Expected { expected, found })
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(is_ws) {
            self.pos += 1;
        }
    }

    /// The word at the cursor (maybe empty), not consumed.
    fn word(&self) -> &'a str {
        let end = self.bytes[self.pos..]
            .iter()
            .position(|&b| !is_word(b))
            .map_or(self.bytes.len(), |n| self.pos + n);
        &self.src[self.pos..end]
    }

    fn take_word(&mut self) -> &'a str {
        let w = self.word();
        self.pos += w.len();
        w
    }

    /// Consumes `kw` (case-insensitive, a whole word) after optional whitespace.
    fn keyword(&mut self, kw: &str) -> bool {
        self.skip_ws();
        if self.word().eq_ignore_ascii_case(kw) {
            self.pos += kw.len();
            true
        } else {
            false
        }
    }

    fn expect_byte(&mut self, b: u8, expected: &'static str) -> Result<(), FilterError> {
        self.skip_ws();
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.expected(expected))
        }
    }

    fn enter(&mut self, offset: usize) -> Result<(), FilterError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error_at(offset, FilterErrorKind::TooDeep { max: MAX_DEPTH }));
        }
        Ok(())
    }

    fn or_expr(&mut self, inner: bool) -> Result<Filter, FilterError> {
        let mut left = self.and_expr(inner)?;
        while self.keyword("or") {
            let right = self.and_expr(inner)?;
            left = Filter::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and_expr(&mut self, inner: bool) -> Result<Filter, FilterError> {
        let mut left = self.unary(inner)?;
        while self.keyword("and") {
            let right = self.unary(inner)?;
            left = Filter::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    /// `( FILTER )` with the cursor on `(`.
    fn group(&mut self, start: usize, inner: bool) -> Result<Filter, FilterError> {
        self.enter(start)?;
        self.pos += 1;
        let filter = self.or_expr(inner)?;
        self.expect_byte(b')', "and, or, or ')'")?;
        self.depth -= 1;
        Ok(filter)
    }

    fn unary(&mut self, inner: bool) -> Result<Filter, FilterError> {
        self.skip_ws();
        let start = self.pos;
        match self.peek() {
            None => Err(self.expected("an attribute, '(' or not")),
            Some(b'(') => self.group(start, inner),
            Some(_) => {
                // `not` is negation only before `(`; otherwise it is an attribute name.
                if self.word().eq_ignore_ascii_case("not") {
                    self.pos += 3;
                    self.skip_ws();
                    if self.peek() == Some(b'(') {
                        let inside = self.group(start, inner)?;
                        return Ok(Filter::Not(Box::new(inside)));
                    }
                    self.pos = start;
                }
                self.attr_expr(inner)
            }
        }
    }

    fn attr_path(&mut self, inner: bool) -> Result<AttrPath, FilterError> {
        let start = self.pos;
        let word = self.take_word();
        if word.is_empty() {
            self.pos = start;
            return Err(self.expected("an attribute, '(' or not"));
        }
        let bad = |why| FilterError {
            offset: start,
            kind: FilterErrorKind::BadAttribute {
                path: word.to_string(),
                why,
            },
        };
        let (urn, rest) = match word.rfind(':') {
            Some(i) => (Some(&word[..i]), &word[i + 1..]),
            None => (None, word),
        };
        if let Some(urn) = urn {
            if inner {
                return Err(bad("a URN prefix is not allowed inside [...]"));
            }
            if !is_urn(urn) {
                return Err(bad("the prefix before the last ':' is not a schema URN"));
            }
        }
        let (name, sub) = match rest.split_once('.') {
            Some((n, s)) => (n, Some(s)),
            None => (rest, None),
        };
        if !is_attr_name(name) || sub.is_some_and(|s| !is_attr_name(s)) {
            return Err(bad(
                "names are a letter then letters, digits, '-', '_'; one '.sub' at most",
            ));
        }
        if inner && sub.is_some() {
            return Err(bad("inside [...] name a sub-attribute without its parent"));
        }
        Ok(AttrPath {
            urn: urn.map(str::to_string),
            name: name.to_string(),
            sub: sub.map(str::to_string),
        })
    }

    fn attr_expr(&mut self, inner: bool) -> Result<Filter, FilterError> {
        let start = self.pos;
        let path = self.attr_path(inner)?;
        if self.peek() != Some(b'[') {
            let test = self.test(start)?;
            return Ok(Filter::Attr { path, test });
        }
        let bracket = self.pos;
        let bad = |why| FilterError {
            offset: start,
            kind: FilterErrorKind::BadAttribute {
                path: path.to_string(),
                why,
            },
        };
        if inner {
            return Err(bad("value paths do not nest"));
        }
        if path.sub.is_some() {
            return Err(bad("[...] applies to an attribute, not to a sub-attribute"));
        }
        self.enter(bracket)?;
        self.pos += 1;
        let mut filter = self.or_expr(true)?;
        self.expect_byte(b']', "and, or, or ']'")?;
        self.depth -= 1;
        if self.peek() == Some(b'.') {
            // `emails[type eq "work"].value op v` means `emails[type eq "work" and value op v]`.
            self.pos += 1;
            let sub_start = self.pos;
            let name = self.take_word();
            if !is_attr_name(name) {
                return Err(self.error_at(
                    sub_start,
                    FilterErrorKind::BadAttribute {
                        path: name.to_string(),
                        why: "after ']' comes '.' and one sub-attribute name",
                    },
                ));
            }
            let test = self.test(sub_start)?;
            let atom = Filter::Attr {
                path: AttrPath::new(name),
                test,
            };
            filter = Filter::And(Box::new(filter), Box::new(atom));
        }
        Ok(Filter::ValuePath {
            path,
            filter: Box::new(filter),
        })
    }

    /// `pr` or `op value`, after an attribute path that started at `start`.
    fn test(&mut self, start: usize) -> Result<Test, FilterError> {
        self.terms += 1;
        if self.terms > MAX_TERMS {
            return Err(self.error_at(start, FilterErrorKind::TooManyTerms { max: MAX_TERMS }));
        }
        self.skip_ws();
        let op_start = self.pos;
        let word = self.take_word();
        if word.is_empty() {
            return Err(self.expected("an operator (eq ne co sw ew gt ge lt le pr)"));
        }
        if word.eq_ignore_ascii_case("pr") {
            return Ok(Test::Present);
        }
        let Some(op) = CompareOp::from_word(word) else {
            return Err(self.error_at(
                op_start,
                FilterErrorKind::UnknownOperator {
                    op: word.chars().take(16).collect(),
                },
            ));
        };
        self.skip_ws();
        let value = self.value()?;
        if !matches!(self.peek(), None | Some(b')' | b']')) && !self.peek().is_some_and(is_ws) {
            return Err(self.expected("whitespace, ')' or ']' after the value"));
        }
        Ok(Test::Compare(op, value))
    }

    fn value(&mut self) -> Result<CompValue, FilterError> {
        const EXPECTED: &str = "a value (a string, a number, true, false or null)";
        match self.peek() {
            Some(b'"') => self.string().map(CompValue::String),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(c) if c.is_ascii_alphabetic() => {
                let start = self.pos;
                let word = self.take_word();
                if word.eq_ignore_ascii_case("true") {
                    Ok(CompValue::Bool(true))
                } else if word.eq_ignore_ascii_case("false") {
                    Ok(CompValue::Bool(false))
                } else if word.eq_ignore_ascii_case("null") {
                    Ok(CompValue::Null)
                } else {
                    self.pos = start;
                    Err(self.expected(EXPECTED))
                }
            }
            _ => Err(self.expected(EXPECTED)),
        }
    }

    /// A JSON number, RFC 8259 §6, kept as written.
    fn number(&mut self) -> Result<CompValue, FilterError> {
        let start = self.pos;
        let digits = |p: &mut Parser<'_>| {
            let from = p.pos;
            while p.peek().is_some_and(|b| b.is_ascii_digit()) {
                p.pos += 1;
            }
            p.pos > from
        };
        let bad = |p: &Parser<'_>| p.error_at(start, FilterErrorKind::BadNumber);
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                digits(self);
            }
            _ => return Err(bad(self)),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !digits(self) {
                return Err(bad(self));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if !digits(self) {
                return Err(bad(self));
            }
        }
        if self.peek().is_some_and(is_word) {
            return Err(bad(self));
        }
        Ok(CompValue::Number(self.src[start..self.pos].to_string()))
    }

    /// A JSON string (RFC 8259 §7) with the cursor on its opening quote.
    fn string(&mut self) -> Result<String, FilterError> {
        let open = self.pos;
        self.pos += 1;
        let mut out = String::new();
        let mut run = self.pos;
        loop {
            let Some(b) = self.peek() else {
                return Err(self.error_at(
                    open,
                    FilterErrorKind::BadString {
                        why: "no closing quote",
                    },
                ));
            };
            match b {
                b'"' => {
                    out.push_str(&self.src[run..self.pos]);
                    self.pos += 1;
                    return Ok(out);
                }
                b'\\' => {
                    out.push_str(&self.src[run..self.pos]);
                    let c = self.escape()?;
                    out.push(c);
                    run = self.pos;
                }
                b if b < 0x20 => {
                    return Err(self.error(FilterErrorKind::BadString {
                        why: "a control character must be escaped",
                    }))
                }
                _ => self.pos += 1,
            }
        }
    }

    /// One escape sequence, cursor on its `\`.
    fn escape(&mut self) -> Result<char, FilterError> {
        let at = self.pos;
        let bad = |why| FilterError {
            offset: at,
            kind: FilterErrorKind::BadString { why },
        };
        let c = match self.bytes.get(at + 1) {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                let hi = self.hex4(at + 2).ok_or(bad("\\u needs four hex digits"))?;
                self.pos = at + 6;
                let code = match hi {
                    0xD800..=0xDBFF => {
                        let lo = if self.bytes.get(at + 6..at + 8) == Some(b"\\u") {
                            self.hex4(at + 8)
                        } else {
                            None
                        };
                        let lo = lo
                            .filter(|lo| (0xDC00..=0xDFFF).contains(lo))
                            .ok_or(bad("a high surrogate needs a low surrogate after it"))?;
                        self.pos = at + 12;
                        0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                    }
                    0xDC00..=0xDFFF => return Err(bad("a low surrogate without a high one")),
                    c => c,
                };
                return char::from_u32(code).ok_or(bad("not a Unicode scalar value"));
            }
            _ => {
                return Err(bad(
                    "unknown escape (allowed: \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX)",
                ))
            }
        };
        self.pos = at + 2;
        Ok(c)
    }

    fn hex4(&self, at: usize) -> Option<u32> {
        let digits = self.bytes.get(at..at + 4)?;
        digits
            .iter()
            .try_fold(0u32, |acc, &d| Some(acc * 16 + char::from(d).to_digit(16)?))
    }
}

// ---------------------------------------------------------------------------------------
// Translation to LDAP
// ---------------------------------------------------------------------------------------

/// A caller-supplied translation for one attribute: gets the test, returns a complete,
/// parenthesised LDAP filter. It must escape values itself ([`escape_value`]).
pub type CustomFilter = Arc<dyn Fn(&Test) -> Result<String, TranslateError> + Send + Sync>;

/// What a SCIM attribute is in the directory.
#[derive(Clone)]
pub enum Target {
    /// Text-valued LDAP attribute(s); several are ORed.
    Text {
        /// LDAP attribute names (descriptors or OIDs, options allowed).
        attrs: Vec<String>,
        /// Whether the attribute has substring matching (`co`, `sw`, `ew`).
        substrings: bool,
        /// Whether the attribute has an ordering rule (`gt`, `ge`, `lt`, `le`).
        ordering: bool,
    },
    /// A binary anchor (e.g. AD `objectGUID`): the SCIM value is base64 of the bytes;
    /// `eq`, `ne`, `pr` only.
    Binary {
        /// LDAP attribute names; several are ORed.
        attrs: Vec<String>,
        /// Required length of the decoded value (16 for a GUID), if any.
        len: Option<usize>,
    },
    /// A SCIM boolean held as LDAP filters (e.g. AD's `active`, a bit of
    /// `userAccountControl`); `eq`, `ne`, `pr` only.
    Flag {
        /// Filter for `eq true`.
        when_true: String,
        /// Filter for `eq false`.
        when_false: String,
        /// Filter for `pr`.
        present: String,
    },
    /// Known to the profile but refused in filters.
    NotFilterable,
    /// The caller translates this attribute itself.
    Custom(CustomFilter),
}

impl Target {
    /// One text attribute with substring and ordering matching.
    pub fn text(attr: &str) -> Target {
        Target::Text {
            attrs: vec![attr.to_string()],
            substrings: true,
            ordering: true,
        }
    }

    /// One binary attribute, decoded values of length `len` if given.
    pub fn binary(attr: &str, len: Option<usize>) -> Target {
        Target::Binary {
            attrs: vec![attr.to_string()],
            len,
        }
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Text {
                attrs,
                substrings,
                ordering,
            } => f
                .debug_struct("Text")
                .field("attrs", attrs)
                .field("substrings", substrings)
                .field("ordering", ordering)
                .finish(),
            Target::Binary { attrs, len } => f
                .debug_struct("Binary")
                .field("attrs", attrs)
                .field("len", len)
                .finish(),
            Target::Flag {
                when_true,
                when_false,
                present,
            } => f
                .debug_struct("Flag")
                .field("when_true", when_true)
                .field("when_false", when_false)
                .field("present", present)
                .finish(),
            Target::NotFilterable => f.write_str("NotFilterable"),
            Target::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// Maps SCIM attribute keys ([`AttrPath::key`], e.g. `username`, `name.familyname`,
/// `emails[type eq "work"].value`) to directory targets.
pub trait AttributeMap {
    /// The target for `key`; `None` when the attribute is unknown.
    fn target(&self, key: &str) -> Option<Target>;
}

impl AttributeMap for HashMap<String, Target> {
    fn target(&self, key: &str) -> Option<Target> {
        self.get(key).cloned()
    }
}

/// Why a parsed filter cannot be run against the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TranslateError {
    /// The map does not know the attribute.
    UnknownAttribute {
        /// The attribute key.
        path: String,
    },
    /// The map marks the attribute as not filterable.
    NotFilterable {
        /// The attribute key.
        path: String,
    },
    /// The operator (or the value's type) cannot be used on this attribute.
    Unsupported {
        /// The attribute key.
        path: String,
        /// The SCIM operator.
        op: &'static str,
        /// Why not.
        why: &'static str,
    },
    /// The value cannot be compared with this attribute.
    BadValue {
        /// The attribute key.
        path: String,
        /// Why not.
        why: String,
    },
    /// A value path LDAP cannot express exactly.
    ValuePath {
        /// The multi-valued attribute key.
        path: String,
        /// Why not.
        why: &'static str,
    },
    /// Past the translation's limits.
    TooComplex {
        /// Which limit.
        why: &'static str,
    },
    /// The attribute map's own target is malformed (a bug in the profile, not the request).
    BadTarget {
        /// The attribute key.
        path: String,
        /// What is malformed.
        why: &'static str,
    },
}

impl TranslateError {
    /// HTTP status for this error: 500 for [`TranslateError::BadTarget`], else 400.
    pub fn status(&self) -> u16 {
        match self {
            TranslateError::BadTarget { .. } => 500,
            _ => 400,
        }
    }

    /// The SCIM `scimType` for this error (`None` for a server-side fault).
    pub fn scim_type(&self) -> Option<&'static str> {
        match self {
            TranslateError::BadTarget { .. } => None,
            _ => Some("invalidFilter"),
        }
    }
}

impl fmt::Display for TranslateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TranslateError::UnknownAttribute { path } => {
                write!(f, "attribute {path} is not known to this directory")
            }
            TranslateError::NotFilterable { path } => {
                write!(f, "attribute {path} cannot be used in a filter")
            }
            TranslateError::Unsupported { path, op, why } => {
                write!(f, "operator {op} on {path} is not supported: {why}")
            }
            TranslateError::BadValue { path, why } => {
                write!(f, "bad value for {path}: {why}")
            }
            TranslateError::ValuePath { path, why } => {
                write!(f, "value path {path}[...] cannot be translated: {why}")
            }
            TranslateError::TooComplex { why } => {
                write!(f, "filter too complex to translate: {why}")
            }
            TranslateError::BadTarget { path, why } => {
                write!(
                    f,
                    "the attribute map's target for {path} is malformed: {why}"
                )
            }
        }
    }
}

impl std::error::Error for TranslateError {}

pub use crate::ldap::filter::{escape_octets, escape_value};

/// Translates a parsed filter into an LDAP filter (see the module doc for the table and
/// for what is refused). The result is one parenthesised RFC 4515 filter.
pub fn to_ldap<M: AttributeMap + ?Sized>(
    filter: &Filter,
    map: &M,
) -> Result<String, TranslateError> {
    let mut out = String::new();
    Translator { map }.filter(filter, 0, &mut out)?;
    if out.len() > MAX_LDAP_LEN {
        return Err(TranslateError::TooComplex {
            why: "the LDAP filter would exceed 64 KiB",
        });
    }
    Ok(out)
}

/// A descriptor (`cn`, `objectGUID;binary`) or a numeric OID.
fn is_ldap_attr(name: &str) -> bool {
    let mut parts = name.split(';');
    let base = parts.next().unwrap_or("");
    let descr = base.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
        && base.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let oid = !base.is_empty()
        && base
            .split('.')
            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    (descr || oid)
        && parts.all(|o| !o.is_empty() && o.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// A caller-supplied filter must be one parenthesised filter with balanced, unescaped
/// parentheses (escapes are `\xx`, so a literal paren never follows a `\`).
fn is_one_filter(f: &str) -> bool {
    let b = f.as_bytes();
    if b.first() != Some(&b'(') || b.last() != Some(&b')') {
        return false;
    }
    let mut depth = 0usize;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 && i + 1 != b.len() {
                    return false;
                }
            }
            b'\\' => {
                let hex = b.get(i + 1..i + 3);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
            }
            0 => return false,
            _ => {}
        }
    }
    depth == 0
}

/// One condition inside a value path: a plain sub-attribute name and its test.
type Atom<'f> = (&'f AttrPath, &'f Test);

struct Translator<'m, M: ?Sized> {
    map: &'m M,
}

impl<M: AttributeMap + ?Sized> Translator<'_, M> {
    fn filter(&self, f: &Filter, depth: usize, out: &mut String) -> Result<(), TranslateError> {
        if depth > MAX_AST_DEPTH {
            return Err(TranslateError::TooComplex {
                why: "the filter nests too deeply",
            });
        }
        match f {
            Filter::Attr { path, test } => out.push_str(&self.attr(&path.key(), test)?),
            Filter::ValuePath { path, filter } => self.value_path(path, filter, depth, out)?,
            Filter::Not(inner) => {
                out.push_str("(!");
                self.filter(inner, depth + 1, out)?;
                out.push(')');
            }
            Filter::And(..) | Filter::Or(..) => {
                let and = matches!(f, Filter::And(..));
                out.push_str(if and { "(&" } else { "(|" });
                // Flatten the chain: `a and b and c` is one `(&...)`.
                let mut stack = vec![f];
                while let Some(node) = stack.pop() {
                    match node {
                        Filter::And(l, r) if and => stack.extend([&**r, &**l]),
                        Filter::Or(l, r) if !and => stack.extend([&**r, &**l]),
                        other => self.filter(other, depth + 1, out)?,
                    }
                }
                out.push(')');
            }
        }
        Ok(())
    }

    fn attr(&self, key: &str, test: &Test) -> Result<String, TranslateError> {
        let target = self
            .map
            .target(key)
            .ok_or_else(|| TranslateError::UnknownAttribute {
                path: key.to_string(),
            })?;
        let bad_target = |why| TranslateError::BadTarget {
            path: key.to_string(),
            why,
        };
        match target {
            Target::NotFilterable => Err(TranslateError::NotFilterable {
                path: key.to_string(),
            }),
            Target::Text {
                attrs,
                substrings,
                ordering,
            } => {
                check_attrs(&attrs).map_err(bad_target)?;
                text(key, &attrs, substrings, ordering, test)
            }
            Target::Binary { attrs, len } => {
                check_attrs(&attrs).map_err(bad_target)?;
                binary(key, &attrs, len, test)
            }
            Target::Flag {
                when_true,
                when_false,
                present,
            } => {
                if ![&when_true, &when_false, &present]
                    .iter()
                    .all(|f| is_one_filter(f))
                {
                    return Err(bad_target("a flag filter is not one parenthesised filter"));
                }
                flag(key, &when_true, &when_false, &present, test)
            }
            Target::Custom(custom) => {
                let f = custom(test)?;
                if !is_one_filter(&f) {
                    return Err(bad_target(
                        "the custom filter is not one parenthesised filter",
                    ));
                }
                Ok(f)
            }
        }
    }

    fn value_path(
        &self,
        path: &AttrPath,
        inner: &Filter,
        depth: usize,
        out: &mut String,
    ) -> Result<(), TranslateError> {
        let base = path.key();
        let err = |why| TranslateError::ValuePath {
            path: base.clone(),
            why,
        };
        if path.sub.is_some() {
            return Err(err("[...] applies to an attribute, not to a sub-attribute"));
        }
        let dnf = dnf(inner, depth, &err)?;
        let mut parts = Vec::with_capacity(dnf.len());
        for conj in &dnf {
            parts.push(self.element(&base, conj, &err)?);
        }
        if parts.len() == 1 {
            out.push_str(&parts[0]);
        } else {
            out.push_str("(|");
            parts.iter().for_each(|p| out.push_str(p));
            out.push(')');
        }
        Ok(())
    }

    /// One conjunction of conditions on one element of `base`.
    fn element(
        &self,
        base: &str,
        conj: &[Atom<'_>],
        err: &dyn Fn(&'static str) -> TranslateError,
    ) -> Result<String, TranslateError> {
        let mut selector: Option<&str> = None;
        let mut rest: Vec<Atom<'_>> = Vec::new();
        for &(path, test) in conj {
            if path.urn.is_some() || path.sub.is_some() {
                return Err(err("inside [...] name plain sub-attributes"));
            }
            match test {
                Test::Compare(CompareOp::Eq, CompValue::String(t))
                    if path.name.eq_ignore_ascii_case("type") =>
                {
                    match selector {
                        Some(prev) if !prev.eq_ignore_ascii_case(t) => {
                            return Err(err("two different types for one element"))
                        }
                        _ => selector = Some(t),
                    }
                }
                Test::Compare(CompareOp::Ne, _) | Test::Compare(_, CompValue::Null) => {
                    return Err(err(
                        "ne and null inside [...] would be tested on every value, not on one element",
                    ))
                }
                _ => rest.push((path, test)),
            }
        }
        let prefix = match selector {
            Some(t) => format!("{base}[type eq {}]", json_quote(&t.to_lowercase())),
            None => base.to_string(),
        };
        match rest.as_slice() {
            [] => self.attr(&format!("{prefix}.value"), &Test::Present),
            [(path, test)] => self.attr(
                &format!("{prefix}.{}", path.name.to_ascii_lowercase()),
                test,
            ),
            _ => Err(err(
                "more than one condition on one element: LDAP could match them on different values",
            )),
        }
    }
}

fn check_attrs(attrs: &[String]) -> Result<(), &'static str> {
    if attrs.is_empty() {
        return Err("no LDAP attribute");
    }
    if !attrs.iter().all(|a| is_ldap_attr(a)) {
        return Err("not an LDAP attribute description");
    }
    Ok(())
}

/// The conditions of a value filter in disjunctive normal form (`or` of `and`s), at most
/// [`MAX_TERMS`] conditions in all; `not` cannot be pushed into one element, so it is refused.
fn dnf<'f>(
    f: &'f Filter,
    depth: usize,
    err: &dyn Fn(&'static str) -> TranslateError,
) -> Result<Vec<Vec<Atom<'f>>>, TranslateError> {
    let too_big = || TranslateError::TooComplex {
        why: "the value path expands to more than 64 conditions",
    };
    if depth > MAX_AST_DEPTH {
        return Err(TranslateError::TooComplex {
            why: "the filter nests too deeply",
        });
    }
    match f {
        Filter::Attr { path, test } => Ok(vec![vec![(path, test)]]),
        Filter::Or(l, r) => {
            let mut out = dnf(l, depth + 1, err)?;
            out.extend(dnf(r, depth + 1, err)?);
            if out.iter().map(Vec::len).sum::<usize>() > MAX_TERMS {
                return Err(too_big());
            }
            Ok(out)
        }
        Filter::And(l, r) => {
            let a = dnf(l, depth + 1, err)?;
            let b = dnf(r, depth + 1, err)?;
            let atoms_a: usize = a.iter().map(Vec::len).sum();
            let atoms_b: usize = b.iter().map(Vec::len).sum();
            if atoms_a * b.len() + atoms_b * a.len() > MAX_TERMS {
                return Err(too_big());
            }
            let mut out = Vec::with_capacity(a.len() * b.len());
            for x in &a {
                for y in &b {
                    out.push(x.iter().chain(y).copied().collect());
                }
            }
            Ok(out)
        }
        Filter::Not(_) => Err(err(
            "not inside [...] would be tested on every value, not on one element",
        )),
        Filter::ValuePath { .. } => Err(err("value paths do not nest")),
    }
}

/// `(a1=*)` for each attribute, ORed when there are several.
fn any_of(attrs: &[String], item: impl Fn(&str) -> String) -> String {
    if attrs.len() == 1 {
        return item(&attrs[0]);
    }
    let mut out = String::from("(|");
    attrs.iter().for_each(|a| out.push_str(&item(a)));
    out.push(')');
    out
}

fn negate(f: String) -> String {
    format!("(!{f})")
}

fn present(attrs: &[String]) -> String {
    any_of(attrs, |a| format!("({a}=*)"))
}

fn text(
    key: &str,
    attrs: &[String],
    substrings: bool,
    ordering: bool,
    test: &Test,
) -> Result<String, TranslateError> {
    let unsupported = |why| TranslateError::Unsupported {
        path: key.to_string(),
        op: test.op_name(),
        why,
    };
    let (op, value) = match test {
        Test::Present => return Ok(present(attrs)),
        Test::Compare(op, value) => (*op, value),
    };
    let (v, is_string) = match value {
        CompValue::Null => {
            return match op {
                CompareOp::Eq => Ok(negate(present(attrs))),
                CompareOp::Ne => Ok(present(attrs)),
                _ => Err(unsupported("null compares only with eq and ne")),
            }
        }
        CompValue::Bool(_) => {
            return Err(unsupported(
                "a boolean compares only with an attribute the directory holds as a boolean",
            ))
        }
        CompValue::Number(n) => {
            let digits = n.strip_prefix('-').unwrap_or(n);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(TranslateError::BadValue {
                    path: key.to_string(),
                    why: format!("{n} is not an integer; LDAP compares integers only"),
                });
            }
            (n.clone(), false)
        }
        CompValue::String(s) => (escape_value(s), true),
    };
    match op {
        CompareOp::Eq => Ok(any_of(attrs, |a| format!("({a}={v})"))),
        CompareOp::Ne => Ok(negate(any_of(attrs, |a| format!("({a}={v})")))),
        CompareOp::Co | CompareOp::Sw | CompareOp::Ew => {
            if !substrings {
                return Err(unsupported("the attribute has no substring matching"));
            }
            if !is_string {
                return Err(unsupported("co, sw and ew need a string value"));
            }
            if v.is_empty() {
                // Every string contains, starts and ends with "": exactly `pr`.
                return Ok(present(attrs));
            }
            Ok(any_of(attrs, |a| match op {
                CompareOp::Co => format!("({a}=*{v}*)"),
                CompareOp::Sw => format!("({a}={v}*)"),
                _ => format!("({a}=*{v})"),
            }))
        }
        CompareOp::Gt | CompareOp::Ge | CompareOp::Lt | CompareOp::Le => {
            if !ordering {
                return Err(unsupported("the attribute has no ordering rule"));
            }
            Ok(any_of(attrs, |a| match op {
                CompareOp::Ge => format!("({a}>={v})"),
                CompareOp::Le => format!("({a}<={v})"),
                CompareOp::Gt => format!("(&({a}>={v})(!({a}={v})))"),
                _ => format!("(&({a}<={v})(!({a}={v})))"),
            }))
        }
    }
}

fn binary(
    key: &str,
    attrs: &[String],
    len: Option<usize>,
    test: &Test,
) -> Result<String, TranslateError> {
    let (op, value) = match test {
        Test::Present => return Ok(present(attrs)),
        Test::Compare(op, value) => (*op, value),
    };
    let bad_value = |why: String| TranslateError::BadValue {
        path: key.to_string(),
        why,
    };
    if !matches!(op, CompareOp::Eq | CompareOp::Ne) {
        return Err(TranslateError::Unsupported {
            path: key.to_string(),
            op: op.as_str(),
            why: "a binary anchor compares only with eq and ne",
        });
    }
    let eq = match value {
        CompValue::Null => negate(present(attrs)),
        CompValue::String(s) => {
            let bytes = crate::base64::decode(s)
                .map_err(|e| bad_value(format!("not a base64 anchor: {e}")))?;
            if let Some(n) = len.filter(|&n| n != bytes.len()) {
                return Err(bad_value(format!(
                    "the anchor is {} bytes, {n} expected",
                    bytes.len()
                )));
            }
            let v = escape_octets(&bytes);
            any_of(attrs, |a| format!("({a}={v})"))
        }
        _ => return Err(bad_value("the anchor is a base64 string".to_string())),
    };
    Ok(if op == CompareOp::Eq { eq } else { negate(eq) })
}

fn flag(
    key: &str,
    when_true: &str,
    when_false: &str,
    present: &str,
    test: &Test,
) -> Result<String, TranslateError> {
    let (op, value) = match test {
        Test::Present => return Ok(present.to_string()),
        Test::Compare(op, value) => (*op, value),
    };
    if !matches!(op, CompareOp::Eq | CompareOp::Ne) {
        return Err(TranslateError::Unsupported {
            path: key.to_string(),
            op: op.as_str(),
            why: "a boolean compares only with eq and ne",
        });
    }
    let eq = match value {
        CompValue::Bool(true) => when_true.to_string(),
        CompValue::Bool(false) => when_false.to_string(),
        CompValue::Null => negate(present.to_string()),
        _ => {
            return Err(TranslateError::BadValue {
                path: key.to_string(),
                why: "the attribute is boolean: compare it with true or false".to_string(),
            })
        }
    };
    Ok(if op == CompareOp::Eq { eq } else { negate(eq) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::{Duration, Instant};

    const AD_TRUE: &str = "(!(userAccountControl:1.2.840.113556.1.4.803:=2))";
    const AD_FALSE: &str = "(userAccountControl:1.2.840.113556.1.4.803:=2)";

    fn p(s: &str) -> Filter {
        parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn perr(s: &str) -> FilterError {
        match parse(s) {
            Ok(f) => panic!("{s} parsed as {f:?}"),
            Err(e) => e,
        }
    }

    fn attr(name: &str, test: Test) -> Filter {
        Filter::Attr {
            path: AttrPath::new(name),
            test,
        }
    }

    fn eq(name: &str, v: &str) -> Filter {
        attr(
            name,
            Test::Compare(CompareOp::Eq, CompValue::String(v.into())),
        )
    }

    fn pr(name: &str) -> Filter {
        attr(name, Test::Present)
    }

    fn and(l: Filter, r: Filter) -> Filter {
        Filter::And(Box::new(l), Box::new(r))
    }

    fn or(l: Filter, r: Filter) -> Filter {
        Filter::Or(Box::new(l), Box::new(r))
    }

    fn not(f: Filter) -> Filter {
        Filter::Not(Box::new(f))
    }

    /// An Active Directory-like attribute map.
    fn ad_map() -> HashMap<String, Target> {
        let mut m = HashMap::new();
        m.insert("username".into(), Target::text("userPrincipalName"));
        m.insert("displayname".into(), Target::text("displayName"));
        m.insert("name.familyname".into(), Target::text("sn"));
        m.insert("name.givenname".into(), Target::text("givenName"));
        m.insert(
            "emails[type eq \"work\"].value".into(),
            Target::text("mail"),
        );
        m.insert("emails.value".into(), Target::text("mail"));
        m.insert(
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:user:employeenumber".into(),
            Target::text("employeeNumber"),
        );
        m.insert(
            "members.value".into(),
            Target::Text {
                attrs: vec!["member".into()],
                substrings: false,
                ordering: false,
            },
        );
        m.insert("id".into(), Target::binary("objectGUID", Some(16)));
        m.insert(
            "externalid".into(),
            Target::Binary {
                attrs: vec!["mS-DS-ConsistencyGuid".into(), "objectGUID".into()],
                len: Some(16),
            },
        );
        m.insert(
            "active".into(),
            Target::Flag {
                when_true: AD_TRUE.into(),
                when_false: AD_FALSE.into(),
                present: "(userAccountControl=*)".into(),
            },
        );
        m.insert("password".into(), Target::NotFilterable);
        m
    }

    fn ldap(s: &str) -> String {
        to_ldap(&p(s), &ad_map()).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn terr(s: &str) -> TranslateError {
        match to_ldap(&p(s), &ad_map()) {
            Ok(l) => panic!("{s} translated to {l}"),
            Err(e) => e,
        }
    }

    // ---- parser: accepted forms ----------------------------------------------------

    #[test]
    fn every_operator_parses() {
        for op in CompareOp::ALL {
            let f = p(&format!("userName {} \"x\"", op.as_str()));
            assert_eq!(
                f,
                attr("userName", Test::Compare(op, CompValue::String("x".into())))
            );
            let upper = p(&format!("userName {} \"x\"", op.as_str().to_uppercase()));
            assert_eq!(upper, f);
        }
        assert_eq!(p("title pr"), pr("title"));
        assert_eq!(p("title PR"), pr("title"));
    }

    #[test]
    fn literal_values() {
        let v = |s: &str| match p(&format!("a eq {s}")) {
            Filter::Attr {
                test: Test::Compare(_, v),
                ..
            } => v,
            other => panic!("{other:?}"),
        };
        assert_eq!(v("true"), CompValue::Bool(true));
        assert_eq!(v("FALSE"), CompValue::Bool(false));
        assert_eq!(v("Null"), CompValue::Null);
        for n in ["0", "-0", "42", "-17", "3.25", "1e5", "-2.5E-3", "6e+2"] {
            assert_eq!(v(n), CompValue::Number(n.into()));
        }
        assert_eq!(v(r#""""#), CompValue::String(String::new()));
        assert_eq!(
            v(r#""a\"b\\c\/d\b\f\n\r\t\u00e9\u20AC\ud83d\ude00""#),
            CompValue::String("a\"b\\c/d\u{8}\u{c}\n\r\té€😀".into())
        );
        assert_eq!(v("\"Grüße (*)\""), CompValue::String("Grüße (*)".into()));
    }

    #[test]
    fn precedence_not_over_and_over_or() {
        assert_eq!(
            p("a pr or b pr and c pr"),
            or(pr("a"), and(pr("b"), pr("c")))
        );
        assert_eq!(
            p("a pr and b pr or c pr"),
            or(and(pr("a"), pr("b")), pr("c"))
        );
        assert_eq!(
            p("not (a pr) and b pr or c pr"),
            or(and(not(pr("a")), pr("b")), pr("c"))
        );
        assert_eq!(
            p("a pr and (b pr or c pr)"),
            and(pr("a"), or(pr("b"), pr("c")))
        );
        assert_eq!(
            p("a pr and b pr and c pr"),
            and(and(pr("a"), pr("b")), pr("c"))
        );
        assert_eq!(p("a pr or b pr or c pr"), or(or(pr("a"), pr("b")), pr("c")));
        assert_eq!(p("NOT(a pr)"), not(pr("a")));
        assert_eq!(p("  ((a pr))\t\n"), pr("a"));
        assert_eq!(p("a pr AND b pr Or c pr"), p("a pr and b pr or c pr"));
    }

    #[test]
    fn not_is_an_attribute_unless_before_a_parenthesis() {
        assert_eq!(p("not pr"), pr("not"));
        assert_eq!(p("not eq \"x\" and and pr"), and(eq("not", "x"), pr("and")));
        assert_eq!(p("a pr or or pr"), or(pr("a"), pr("or")));
    }

    #[test]
    fn attribute_paths() {
        let f = p("urn:ietf:params:scim:schemas:core:2.0:User:name.familyName eq \"Doe\"");
        let Filter::Attr { path, .. } = &f else {
            panic!("{f:?}")
        };
        assert_eq!(
            path.urn.as_deref(),
            Some("urn:ietf:params:scim:schemas:core:2.0:User")
        );
        assert_eq!(path.name, "name");
        assert_eq!(path.sub.as_deref(), Some("familyName"));
        assert_eq!(path.key(), "name.familyname");
        let ext = p("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber pr");
        let Filter::Attr { path, .. } = &ext else {
            panic!()
        };
        assert_eq!(
            path.key(),
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:user:employeenumber"
        );
        assert_eq!(p("members.$ref pr"), {
            let mut path = AttrPath::new("members");
            path.sub = Some("$ref".into());
            Filter::Attr {
                path,
                test: Test::Present,
            }
        });
        assert_eq!(p("USERNAME eq \"x\"").to_string(), "USERNAME eq \"x\"");
    }

    #[test]
    fn value_paths() {
        let f = p("emails[type eq \"work\" and value co \"@example.com\"]");
        assert_eq!(
            f,
            Filter::ValuePath {
                path: AttrPath::new("emails"),
                filter: Box::new(and(
                    eq("type", "work"),
                    attr(
                        "value",
                        Test::Compare(CompareOp::Co, CompValue::String("@example.com".into()))
                    )
                )),
            }
        );
        // `.value` after the brackets is the same condition inside them.
        assert_eq!(p("emails[type eq \"work\"].value co \"@example.com\""), f);
        assert_eq!(
            p("emails[type eq \"work\"]"),
            Filter::ValuePath {
                path: AttrPath::new("emails"),
                filter: Box::new(eq("type", "work")),
            }
        );
        assert_eq!(
            p("emails[type eq \"work\"].value pr and a pr"),
            and(
                Filter::ValuePath {
                    path: AttrPath::new("emails"),
                    filter: Box::new(and(eq("type", "work"), pr("value"))),
                },
                pr("a")
            )
        );
        assert!(parse("emails[not (type eq \"work\") or (value pr)]").is_ok());
    }

    #[test]
    fn display_is_canonical_and_reparses() {
        for s in [
            "a pr or b pr and c pr",
            "(a pr or b pr) and c pr",
            "a pr and (b pr and c pr)",
            "a pr or (b pr or c pr)",
            "not (a eq \"x\\\"y\") and emails[type eq \"work\" or value sw \"\\n\"]",
            "urn:ietf:params:scim:schemas:core:2.0:User:name.givenName ge -1.5e3",
        ] {
            let f = p(s);
            assert_eq!(p(&f.to_string()), f, "{s} printed as {f}");
        }
        assert_eq!(
            p("(a pr or b pr) and (c pr and d pr)").to_string(),
            "(a pr or b pr) and (c pr and d pr)"
        );
    }

    // ---- parser: every error -------------------------------------------------------

    fn kind(s: &str) -> (usize, FilterErrorKind) {
        let e = perr(s);
        (e.offset, e.kind)
    }

    #[test]
    fn error_empty() {
        assert_eq!(kind(""), (0, FilterErrorKind::Empty));
        assert_eq!(kind(" \t "), (3, FilterErrorKind::Empty));
    }

    #[test]
    fn error_too_long() {
        let s = format!("a eq \"{}\"", "x".repeat(MAX_FILTER_LEN));
        let (at, k) = kind(&s);
        assert_eq!(at, MAX_FILTER_LEN);
        assert_eq!(
            k,
            FilterErrorKind::TooLong {
                len: s.len(),
                max: MAX_FILTER_LEN
            }
        );
        let fits = format!("a eq \"{}\"", "x".repeat(MAX_FILTER_LEN - 7));
        assert_eq!(fits.len(), MAX_FILTER_LEN);
        assert!(parse(&fits).is_ok());
    }

    #[test]
    fn error_too_deep() {
        let nest = |n: usize| format!("{}a pr{}", "(".repeat(n), ")".repeat(n));
        assert!(parse(&nest(MAX_DEPTH)).is_ok());
        assert_eq!(
            kind(&nest(MAX_DEPTH + 1)),
            (MAX_DEPTH, FilterErrorKind::TooDeep { max: MAX_DEPTH })
        );
        let nots = |n: usize| format!("{}a pr{}", "not (".repeat(n), ")".repeat(n));
        assert!(parse(&nots(MAX_DEPTH)).is_ok());
        assert_eq!(
            kind(&nots(MAX_DEPTH + 1)),
            (5 * MAX_DEPTH, FilterErrorKind::TooDeep { max: MAX_DEPTH })
        );
        // `[` is a level too.
        let vp = |n: usize| format!("{}e[a pr]{}", "(".repeat(n), ")".repeat(n));
        assert!(parse(&vp(MAX_DEPTH - 1)).is_ok());
        assert_eq!(
            kind(&vp(MAX_DEPTH)),
            (MAX_DEPTH + 1, FilterErrorKind::TooDeep { max: MAX_DEPTH })
        );
    }

    #[test]
    fn error_too_many_terms() {
        let chain = |n: usize| vec!["a pr"; n].join(" and ");
        assert!(parse(&chain(MAX_TERMS)).is_ok());
        assert_eq!(
            kind(&chain(MAX_TERMS + 1)),
            (
                MAX_TERMS * "a pr and ".len(),
                FilterErrorKind::TooManyTerms { max: MAX_TERMS }
            )
        );
        // Terms inside value paths count.
        let vp = format!("e[{}]", chain(MAX_TERMS + 1));
        assert!(matches!(kind(&vp).1, FilterErrorKind::TooManyTerms { .. }));
    }

    #[test]
    fn error_operator() {
        assert_eq!(
            kind("userName eqq \"x\""),
            (9, FilterErrorKind::UnknownOperator { op: "eqq".into() })
        );
        let (at, k) = kind("userName ~= \"x\"");
        assert_eq!(at, 9);
        assert!(matches!(k, FilterErrorKind::Expected { .. }), "{k:?}");
        let (at, k) = kind("userName");
        assert_eq!(at, 8);
        assert!(
            matches!(k, FilterErrorKind::Expected { ref found, .. } if found == "end of filter")
        );
        assert!(perr("userName eqq \"x\"")
            .to_string()
            .contains("unknown operator \"eqq\""));
    }

    #[test]
    fn error_value() {
        for (s, at) in [
            ("userName eq", 11),
            ("userName eq ", 12),
            ("userName eq yes", 12),
            ("userName eq true1", 12),
            ("userName eq (", 12),
        ] {
            let (got, k) = kind(s);
            assert_eq!(got, at, "{s}");
            assert!(matches!(k, FilterErrorKind::Expected { .. }), "{s}: {k:?}");
        }
        // Junk glued to a value.
        let (at, k) = kind("userName eq \"x\"y");
        assert_eq!(at, 15);
        assert!(matches!(k, FilterErrorKind::Expected { .. }));
    }

    #[test]
    fn error_strings() {
        let bad = |s: &str, at: usize| {
            let (got, k) = kind(s);
            assert_eq!(got, at, "{s}");
            assert!(matches!(k, FilterErrorKind::BadString { .. }), "{s}: {k:?}");
        };
        bad("a eq \"abc", 5);
        bad("a eq \"a\\qb\"", 7);
        bad("a eq \"a\\", 7);
        bad("a eq \"a\nb\"", 7);
        bad("a eq \"a\u{0}b\"", 7);
        bad("a eq \"\\u12\"", 6);
        bad("a eq \"\\u12G4\"", 6);
        bad("a eq \"\\ud800\"", 6);
        bad("a eq \"\\ud800\\u0041\"", 6);
        bad("a eq \"\\udc00\"", 6);
    }

    #[test]
    fn error_numbers() {
        for s in ["01", "1.", "-", "1e", "1e+", "12abc", "-a", ".5", "1.5.5"] {
            let f = format!("a eq {s}");
            let (at, k) = kind(&f);
            // `.5` is no value at all; the rest are malformed numbers.
            if s == ".5" {
                assert!(matches!(k, FilterErrorKind::Expected { .. }), "{s}: {k:?}");
            } else {
                assert_eq!((at, k), (5, FilterErrorKind::BadNumber), "{s}");
            }
        }
    }

    #[test]
    fn error_structure() {
        let expected_at = |s: &str, at: usize| {
            let (got, k) = kind(s);
            assert_eq!(got, at, "{s}");
            assert!(matches!(k, FilterErrorKind::Expected { .. }), "{s}: {k:?}");
        };
        expected_at("(a pr", 5);
        expected_at("a pr)", 4);
        expected_at("a pr b pr", 5);
        expected_at("a pr and", 8);
        expected_at("a pr and ()", 10);
        expected_at("not (a pr", 9);
        expected_at("emails[type eq \"work\"", 21);
        expected_at("a eq \"x\"]", 8);
        expected_at("()", 1);
        expected_at("a pr andb pr", 5);
    }

    #[test]
    fn error_attributes() {
        let bad = |s: &str, at: usize| {
            let (got, k) = kind(s);
            assert_eq!(got, at, "{s}");
            assert!(
                matches!(k, FilterErrorKind::BadAttribute { .. }),
                "{s}: {k:?}"
            );
        };
        bad("1abc pr", 0);
        bad("$ pr", 0);
        bad("a-$ pr", 0);
        bad("name.given.x pr", 0);
        bad("name. pr", 0);
        bad("x:name pr", 0);
        bad("urn:a::b:name pr", 0);
        bad("urn:x:y: pr", 0);
        bad("emails[type[value pr] pr]", 7);
        bad("emails[name.x pr]", 7);
        bad("emails[urn:a:b:value pr]", 7);
        bad("name.givenName[value pr]", 0);
        bad("emails[type eq \"work\"]. eq \"x\"", 23);
        bad("emails[type eq \"work\"].a.b eq \"x\"", 23);
    }

    #[test]
    fn errors_say_where_and_what() {
        let e = perr("userName eq \"abc");
        assert_eq!(e.scim_type(), "invalidFilter");
        assert_eq!(
            e.to_string(),
            "invalid filter at byte 12: bad string: no closing quote"
        );
        let e = perr("a pr b pr");
        assert_eq!(
            e.to_string(),
            "invalid filter at byte 5: expected and, or, or the end of the filter, found \"b pr\""
        );
    }

    #[test]
    fn hostile_inputs_are_refused_quickly() {
        let inputs = [
            "(".repeat(100_000),
            "not (".repeat(10_000),
            "e[".repeat(10_000),
            format!("{}a pr", "(".repeat(MAX_DEPTH)),
            vec!["a pr"; 10_000].join(" or "),
            vec!["a pr"; 800].join(" and "),
            format!("a eq \"{}\"", "\\u00e9".repeat(680)),
            format!("a eq \"{}", "\\\\".repeat(2000)),
            "a ".repeat(2000),
            "\"".repeat(4096),
        ];
        for input in &inputs {
            let start = Instant::now();
            let _ = parse(input);
            // Generous: the parse is linear, a few microseconds here.
            assert!(start.elapsed() < Duration::from_millis(250));
        }
    }

    // ---- translation ---------------------------------------------------------------

    #[test]
    fn translation_table() {
        for (scim, want) in [
            ("userName eq \"jdoe\"", "(userPrincipalName=jdoe)"),
            ("userName ne \"jdoe\"", "(!(userPrincipalName=jdoe))"),
            ("userName co \"do\"", "(userPrincipalName=*do*)"),
            ("userName sw \"jd\"", "(userPrincipalName=jd*)"),
            ("userName ew \"oe\"", "(userPrincipalName=*oe)"),
            ("userName pr", "(userPrincipalName=*)"),
            ("userName ge \"m\"", "(userPrincipalName>=m)"),
            ("userName le \"m\"", "(userPrincipalName<=m)"),
            (
                "userName gt \"m\"",
                "(&(userPrincipalName>=m)(!(userPrincipalName=m)))",
            ),
            (
                "userName lt \"m\"",
                "(&(userPrincipalName<=m)(!(userPrincipalName=m)))",
            ),
            ("userName eq null", "(!(userPrincipalName=*))"),
            ("userName ne null", "(userPrincipalName=*)"),
            (
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber eq 42",
                "(employeeNumber=42)",
            ),
            (
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber ge -7",
                "(employeeNumber>=-7)",
            ),
            ("displayName eq \"Grüße\"", "(displayName=Grüße)"),
            (
                "urn:ietf:params:scim:schemas:core:2.0:User:name.familyName eq \"Doe\"",
                "(sn=Doe)",
            ),
            ("USERNAME EQ \"x\"", "(userPrincipalName=x)"),
        ] {
            assert_eq!(ldap(scim), want, "{scim}");
        }
    }

    #[test]
    fn logic_flattens() {
        assert_eq!(
            ldap("userName eq \"a\" and displayName pr and name.familyName sw \"D\""),
            "(&(userPrincipalName=a)(displayName=*)(sn=D*))"
        );
        assert_eq!(
            ldap("userName eq \"a\" or userName eq \"b\" or userName eq \"c\""),
            "(|(userPrincipalName=a)(userPrincipalName=b)(userPrincipalName=c))"
        );
        assert_eq!(
            ldap("userName eq \"a\" or displayName pr and not (name.familyName pr)"),
            "(|(userPrincipalName=a)(&(displayName=*)(!(sn=*))))"
        );
        assert_eq!(
            ldap("(userName pr or displayName pr) and (name.familyName pr or userName eq \"x\")"),
            "(&(|(userPrincipalName=*)(displayName=*))(|(sn=*)(userPrincipalName=x)))"
        );
        assert_eq!(
            ldap("userName pr and (displayName pr and name.familyName pr)"),
            "(&(userPrincipalName=*)(displayName=*)(sn=*))"
        );
    }

    #[test]
    fn values_are_escaped() {
        assert_eq!(
            ldap(r#"displayName eq "a*b(c)d\\e\u0000f""#),
            r"(displayName=a\2ab\28c\29d\5ce\00f)"
        );
        assert_eq!(ldap(r#"displayName co "*""#), r"(displayName=*\2a*)");
        assert_eq!(
            ldap(r#"displayName sw ")(objectClass=*""#),
            r"(displayName=\29\28objectClass=\2a*)"
        );
        assert_eq!(escape_value("plain é"), "plain é");
        assert_eq!(escape_octets(&[0, 0xab, 0xff]), r"\00\ab\ff");
    }

    #[test]
    fn empty_substrings_are_presence() {
        assert_eq!(ldap("displayName co \"\""), "(displayName=*)");
        assert_eq!(ldap("displayName sw \"\""), "(displayName=*)");
        assert_eq!(ldap("displayName ew \"\""), "(displayName=*)");
        // `eq ""` stays an equality (matches nothing in most directories, never more).
        assert_eq!(ldap("displayName eq \"\""), "(displayName=)");
    }

    #[test]
    fn binary_anchor() {
        // Bytes 00 01 .. 0f.
        let id = "AAECAwQFBgcICQoLDA0ODw==";
        let octets = r"\00\01\02\03\04\05\06\07\08\09\0a\0b\0c\0d\0e\0f";
        assert_eq!(
            ldap(&format!("id eq \"{id}\"")),
            format!("(objectGUID={octets})")
        );
        assert_eq!(
            ldap(&format!("id ne \"{id}\"")),
            format!("(!(objectGUID={octets}))")
        );
        assert_eq!(ldap("id pr"), "(objectGUID=*)");
        assert_eq!(
            ldap(&format!("externalId eq \"{id}\"")),
            format!("(|(mS-DS-ConsistencyGuid={octets})(objectGUID={octets}))")
        );
        assert_eq!(
            ldap(&format!("externalId ne \"{id}\"")),
            format!("(!(|(mS-DS-ConsistencyGuid={octets})(objectGUID={octets})))")
        );
        for op in ["co", "sw", "ew", "gt", "ge", "lt", "le"] {
            assert_eq!(
                terr(&format!("id {op} \"{id}\"")),
                TranslateError::Unsupported {
                    path: "id".into(),
                    op: CompareOp::from_word(op).unwrap().as_str(),
                    why: "a binary anchor compares only with eq and ne",
                }
            );
        }
        assert!(matches!(
            terr("id eq \"not base64!\""),
            TranslateError::BadValue { .. }
        ));
        assert!(matches!(
            terr("id eq \"AAEC\""),
            TranslateError::BadValue { .. }
        ));
        assert!(matches!(terr("id eq 5"), TranslateError::BadValue { .. }));
        assert!(terr("id eq \"AAEC\"")
            .to_string()
            .contains("the anchor is 3 bytes, 16 expected"));
    }

    #[test]
    fn text_anchor_escapes() {
        let mut m = HashMap::new();
        m.insert("id".to_string(), Target::text("entryUUID"));
        assert_eq!(
            to_ldap(&p("id eq \"x)(uid=*\""), &m).unwrap(),
            r"(entryUUID=x\29\28uid=\2a)"
        );
    }

    #[test]
    fn ad_active_flag() {
        assert_eq!(ldap("active eq true"), AD_TRUE);
        assert_eq!(ldap("active eq false"), AD_FALSE);
        assert_eq!(ldap("active ne true"), format!("(!{AD_TRUE})"));
        assert_eq!(ldap("active ne false"), format!("(!{AD_FALSE})"));
        assert_eq!(ldap("active pr"), "(userAccountControl=*)");
        assert_eq!(ldap("active eq null"), "(!(userAccountControl=*))");
        assert_eq!(
            ldap("active eq true and userName sw \"a\""),
            format!("(&{AD_TRUE}(userPrincipalName=a*))")
        );
        for op in ["co", "sw", "ew", "gt", "ge", "lt", "le"] {
            assert!(
                matches!(
                    terr(&format!("active {op} true")),
                    TranslateError::Unsupported { ref path, .. } if path == "active"
                ),
                "{op}"
            );
        }
        assert!(matches!(
            terr("active eq \"true\""),
            TranslateError::BadValue { .. }
        ));
        assert!(matches!(
            terr("active eq 1"),
            TranslateError::BadValue { .. }
        ));
    }

    #[test]
    fn value_path_translation() {
        assert_eq!(ldap("emails[type eq \"work\"]"), "(mail=*)");
        assert_eq!(ldap("emails[type eq \"Work\"]"), "(mail=*)");
        assert_eq!(
            ldap("emails[type eq \"work\" and value co \"@example.com\"]"),
            "(mail=*@example.com*)"
        );
        assert_eq!(
            ldap("emails[type eq \"work\"].value eq \"a@b\""),
            "(mail=a@b)"
        );
        assert_eq!(
            ldap("emails[value eq \"x\" and type eq \"work\"]"),
            "(mail=x)"
        );
        assert_eq!(ldap("emails[value sw \"a\"]"), "(mail=a*)");
        assert_eq!(
            ldap("emails[type eq \"work\" and (value sw \"a\" or value sw \"b\")]"),
            "(|(mail=a*)(mail=b*))"
        );
        assert_eq!(
            ldap("emails[type eq \"work\" and value sw \"a\"] and userName pr"),
            "(&(mail=a*)(userPrincipalName=*))"
        );
        assert_eq!(
            ldap("members[value eq \"CN=x,DC=y\"]"),
            "(member=CN=x,DC=y)"
        );
    }

    #[test]
    fn value_path_refusals() {
        let vp = |s: &str| match terr(s) {
            TranslateError::ValuePath { path, why } => (path, why),
            other => panic!("{s}: {other:?}"),
        };
        let (path, why) = vp("emails[type eq \"work\" and value sw \"a\" and value ew \"z\"]");
        assert_eq!(path, "emails");
        assert!(why.contains("more than one condition"), "{why}");
        assert!(vp("emails[type eq \"work\" and not (value pr)]")
            .1
            .contains("not inside"));
        assert!(vp("emails[type eq \"work\" and value ne \"x\"]")
            .1
            .contains("ne and null"));
        assert!(vp("emails[value eq null]").1.contains("ne and null"));
        assert!(vp("emails[type eq \"work\" and type eq \"home\"]")
            .1
            .contains("two different types"));
        // The same type twice is one selector.
        assert_eq!(
            ldap("emails[type eq \"work\" and type eq \"WORK\"]"),
            "(mail=*)"
        );
        // A type the map does not know is an unknown attribute, never a broader `mail`.
        assert_eq!(
            terr("emails[type eq \"home\" and value eq \"x\"]"),
            TranslateError::UnknownAttribute {
                path: "emails[type eq \"home\"].value".into()
            }
        );
        // Hand-built ASTs the parser never makes.
        let nested = Filter::ValuePath {
            path: AttrPath::new("emails"),
            filter: Box::new(Filter::ValuePath {
                path: AttrPath::new("x"),
                filter: Box::new(pr("y")),
            }),
        };
        assert!(matches!(
            to_ldap(&nested, &ad_map()),
            Err(TranslateError::ValuePath { .. })
        ));
        let mut sub = AttrPath::new("emails");
        sub.sub = Some("value".into());
        let on_sub = Filter::ValuePath {
            path: sub,
            filter: Box::new(pr("type")),
        };
        assert!(matches!(
            to_ldap(&on_sub, &ad_map()),
            Err(TranslateError::ValuePath { .. })
        ));
        let dotted = Filter::ValuePath {
            path: AttrPath::new("emails"),
            filter: Box::new(Filter::Attr {
                path: AttrPath {
                    urn: None,
                    name: "a".into(),
                    sub: Some("b".into()),
                },
                test: Test::Present,
            }),
        };
        assert!(matches!(
            to_ldap(&dotted, &ad_map()),
            Err(TranslateError::ValuePath { .. })
        ));
    }

    #[test]
    fn value_path_expansion_is_bounded() {
        // (a or b) and (c or d) and ... : 2^6 conjunctions of 6 conditions each.
        let factor = "(value sw \"a\" or value sw \"b\")";
        let s = format!("emails[{}]", [factor; 6].join(" and "));
        assert_eq!(
            terr(&s),
            TranslateError::TooComplex {
                why: "the value path expands to more than 64 conditions"
            }
        );
    }

    #[test]
    fn refusals_name_attribute_and_operator() {
        assert_eq!(
            terr("nickName eq \"x\""),
            TranslateError::UnknownAttribute {
                path: "nickname".into()
            }
        );
        assert_eq!(
            terr("password eq \"x\""),
            TranslateError::NotFilterable {
                path: "password".into()
            }
        );
        assert_eq!(
            terr("members.value co \"x\""),
            TranslateError::Unsupported {
                path: "members.value".into(),
                op: "co",
                why: "the attribute has no substring matching"
            }
        );
        assert_eq!(
            terr("members.value gt \"x\""),
            TranslateError::Unsupported {
                path: "members.value".into(),
                op: "gt",
                why: "the attribute has no ordering rule"
            }
        );
        assert!(matches!(
            terr("userName eq true"),
            TranslateError::Unsupported { op: "eq", .. }
        ));
        assert!(matches!(
            terr("userName gt null"),
            TranslateError::Unsupported { op: "gt", .. }
        ));
        assert!(matches!(
            terr("userName co 5"),
            TranslateError::Unsupported { op: "co", .. }
        ));
        assert!(matches!(
            terr("userName eq 1.5"),
            TranslateError::BadValue { .. }
        ));
        assert!(matches!(
            terr("userName eq 1e3"),
            TranslateError::BadValue { .. }
        ));
        // One bad term refuses the whole filter: nothing is dropped.
        assert!(matches!(
            terr("userName eq \"a\" or nickName eq \"b\""),
            TranslateError::UnknownAttribute { .. }
        ));
        assert!(matches!(
            terr("not (password pr)"),
            TranslateError::NotFilterable { .. }
        ));
        let e = terr("members.value co \"x\"");
        assert_eq!(e.status(), 400);
        assert_eq!(e.scim_type(), Some("invalidFilter"));
        assert_eq!(
            e.to_string(),
            "operator co on members.value is not supported: the attribute has no substring matching"
        );
    }

    #[test]
    fn bad_targets_are_server_faults() {
        let mut m: HashMap<String, Target> = HashMap::new();
        m.insert("a".into(), Target::text("bad)(attr"));
        m.insert(
            "b".into(),
            Target::Text {
                attrs: vec![],
                substrings: true,
                ordering: true,
            },
        );
        m.insert(
            "c".into(),
            Target::Flag {
                when_true: "(x=1))(".into(),
                when_false: "(x=0)".into(),
                present: "(x=*)".into(),
            },
        );
        m.insert(
            "d".into(),
            Target::Custom(Arc::new(|_| Ok("x=1".to_string()))),
        );
        m.insert("e".into(), Target::binary("objectGUID;binary", None));
        m.insert("f".into(), Target::text("1.2.840.113556.1.4.2"));
        for key in ["a", "b", "c", "d"] {
            let e = to_ldap(&p(&format!("{key} eq true")), &m);
            let e = match e {
                Err(e) => e,
                Ok(l) => panic!("{key}: {l}"),
            };
            if key != "b" && key != "a" {
                assert!(
                    matches!(e, TranslateError::BadTarget { .. }),
                    "{key}: {e:?}"
                );
            }
            let e = to_ldap(&p(&format!("{key} pr")), &m).unwrap_err();
            assert!(
                matches!(e, TranslateError::BadTarget { .. }),
                "{key}: {e:?}"
            );
            assert_eq!(e.status(), 500);
            assert_eq!(e.scim_type(), None);
        }
        assert_eq!(
            to_ldap(&p("e eq \"AA==\""), &m).unwrap(),
            r"(objectGUID;binary=\00)"
        );
        assert_eq!(to_ldap(&p("f pr"), &m).unwrap(), "(1.2.840.113556.1.4.2=*)");
    }

    #[test]
    fn custom_target() {
        let mut m: HashMap<String, Target> = HashMap::new();
        m.insert(
            "members.value".into(),
            Target::Custom(Arc::new(|test: &Test| match test {
                Test::Compare(CompareOp::Eq, CompValue::String(id)) => {
                    Ok(format!("(memberAnchor={})", escape_value(id)))
                }
                other => Err(TranslateError::Unsupported {
                    path: "members.value".into(),
                    op: other.op_name(),
                    why: "members are found by id only",
                }),
            })),
        );
        assert_eq!(
            to_ldap(&p("members[value eq \"a*\"]"), &m).unwrap(),
            r"(memberAnchor=a\2a)"
        );
        assert!(matches!(
            to_ldap(&p("members.value co \"a\""), &m),
            Err(TranslateError::Unsupported { op: "co", .. })
        ));
    }

    #[test]
    fn hand_built_deep_ast_is_refused_not_overflowed() {
        let mut f = pr("a");
        for _ in 0..10_000 {
            f = not(f);
        }
        let mut m = HashMap::new();
        m.insert("a".to_string(), Target::text("a"));
        assert!(matches!(
            to_ldap(&f, &m),
            Err(TranslateError::TooComplex { .. })
        ));
        // Drop iteratively-built chains without recursion trouble in the test itself.
        let mut f = Some(f);
        while let Some(Filter::Not(inner)) = f.take() {
            f = Some(*inner);
        }
    }

    #[test]
    fn output_limit() {
        let mut m = HashMap::new();
        m.insert(
            "a".to_string(),
            Target::Text {
                attrs: (0..200).map(|i| format!("attr{i}")).collect(),
                substrings: true,
                ordering: true,
            },
        );
        let s = vec![format!("a gt \"{}\"", "*".repeat(40)); 20].join(" or ");
        assert_eq!(
            to_ldap(&p(&s), &m),
            Err(TranslateError::TooComplex {
                why: "the LDAP filter would exceed 64 KiB"
            })
        );
    }

    // ---- a small RFC 4515 reader and evaluator for the properties ----------------------

    #[derive(Debug)]
    enum L {
        And(Vec<L>),
        Or(Vec<L>),
        Not(Box<L>),
        Present(String),
        Eq(String, Vec<u8>),
        Ge(String, Vec<u8>),
        Le(String, Vec<u8>),
        Sub(String, Vec<u8>, Vec<Vec<u8>>, Vec<u8>),
        Ext(Vec<u8>),
    }

    fn ldap_parse(s: &str) -> Result<L, String> {
        let b = s.as_bytes();
        let mut pos = 0;
        let f = ldap_filter(b, &mut pos)?;
        if pos != b.len() {
            return Err(format!("trailing bytes at {pos}"));
        }
        Ok(f)
    }

    fn ldap_filter(b: &[u8], pos: &mut usize) -> Result<L, String> {
        if b.get(*pos) != Some(&b'(') {
            return Err(format!("expected ( at {pos}"));
        }
        *pos += 1;
        let f = match b.get(*pos) {
            Some(&c @ (b'&' | b'|')) => {
                *pos += 1;
                let mut list = vec![ldap_filter(b, pos)?];
                while b.get(*pos) == Some(&b'(') {
                    list.push(ldap_filter(b, pos)?);
                }
                if c == b'&' {
                    L::And(list)
                } else {
                    L::Or(list)
                }
            }
            Some(b'!') => {
                *pos += 1;
                L::Not(Box::new(ldap_filter(b, pos)?))
            }
            _ => ldap_item(b, pos)?,
        };
        if b.get(*pos) != Some(&b')') {
            return Err(format!("expected ) at {pos}"));
        }
        *pos += 1;
        Ok(f)
    }

    fn ldap_item(b: &[u8], pos: &mut usize) -> Result<L, String> {
        let start = *pos;
        while b
            .get(*pos)
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b';' | b'-' | b'.'))
        {
            *pos += 1;
        }
        let attr = String::from_utf8(b[start..*pos].to_vec()).unwrap();
        if attr.is_empty() {
            return Err(format!("no attribute at {start}"));
        }
        let op = if b[*pos..].starts_with(b">=") {
            *pos += 2;
            ">="
        } else if b[*pos..].starts_with(b"<=") {
            *pos += 2;
            "<="
        } else if b.get(*pos) == Some(&b'=') {
            *pos += 1;
            "="
        } else if b.get(*pos) == Some(&b':') {
            let rule_start = *pos;
            while b.get(*pos).is_some_and(|c| *c != b'=') {
                *pos += 1;
            }
            if b.get(*pos - 1) != Some(&b':') {
                return Err(format!("bad extensible match at {rule_start}"));
            }
            *pos += 1;
            ":="
        } else {
            return Err(format!("no operator at {pos}"));
        };
        // Value: split at unescaped `*`, unescape `\xx`, refuse raw ( \ NUL.
        let mut parts: Vec<Vec<u8>> = vec![Vec::new()];
        loop {
            match b.get(*pos) {
                None => return Err("unterminated value".into()),
                Some(b')') => break,
                Some(b'(') => return Err(format!("raw ( in value at {pos}")),
                Some(0) => return Err(format!("raw NUL in value at {pos}")),
                Some(b'*') => {
                    parts.push(Vec::new());
                    *pos += 1;
                }
                Some(b'\\') => {
                    let hex = b
                        .get(*pos + 1..*pos + 3)
                        .and_then(|h| std::str::from_utf8(h).ok())
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                        .ok_or(format!("bad escape at {pos}"))?;
                    parts.last_mut().unwrap().push(hex);
                    *pos += 3;
                }
                Some(&c) => {
                    parts.last_mut().unwrap().push(c);
                    *pos += 1;
                }
            }
        }
        if parts.len() > 1 && op != "=" {
            return Err(format!("* in a {op} value"));
        }
        Ok(match op {
            ">=" => L::Ge(attr, parts.remove(0)),
            "<=" => L::Le(attr, parts.remove(0)),
            ":=" => L::Ext(parts.remove(0)),
            _ if parts.len() == 1 => L::Eq(attr, parts.remove(0)),
            _ if parts.len() == 2 && parts.iter().all(Vec::is_empty) => L::Present(attr),
            _ => {
                let last = parts.pop().unwrap();
                let first = parts.remove(0);
                if parts.iter().any(Vec::is_empty) {
                    return Err("empty any-substring (**)".into());
                }
                L::Sub(attr, first, parts, last)
            }
        })
    }

    fn ldap_values(f: &L, out: &mut Vec<Vec<u8>>) {
        match f {
            L::And(l) | L::Or(l) => l.iter().for_each(|x| ldap_values(x, out)),
            L::Not(x) => ldap_values(x, out),
            L::Present(_) => {}
            L::Eq(_, v) | L::Ge(_, v) | L::Le(_, v) | L::Ext(v) => out.push(v.clone()),
            L::Sub(_, i, any, fin) => {
                out.extend(
                    [i.clone(), fin.clone()]
                        .into_iter()
                        .filter(|v| !v.is_empty()),
                );
                out.extend(any.iter().cloned());
            }
        }
    }

    type Entry = HashMap<String, String>;

    fn ldap_eval(f: &L, e: &Entry) -> bool {
        let get = |a: &str| e.get(a).map(|v| v.as_bytes());
        match f {
            L::And(l) => l.iter().all(|x| ldap_eval(x, e)),
            L::Or(l) => l.iter().any(|x| ldap_eval(x, e)),
            L::Not(x) => !ldap_eval(x, e),
            L::Present(a) => get(a).is_some(),
            L::Eq(a, v) => get(a) == Some(v.as_slice()),
            L::Ge(a, v) => get(a).is_some_and(|x| x >= v.as_slice()),
            L::Le(a, v) => get(a).is_some_and(|x| x <= v.as_slice()),
            L::Sub(a, init, any, fin) => get(a).is_some_and(|x| {
                if !x.starts_with(init) || x.len() < init.len() + fin.len() || !x.ends_with(fin) {
                    return false;
                }
                let mut rest = &x[init.len()..x.len() - fin.len()];
                for piece in any {
                    match rest
                        .windows(piece.len())
                        .position(|w| w == piece.as_slice())
                    {
                        Some(i) => rest = &rest[i + piece.len()..],
                        None => return false,
                    }
                }
                true
            }),
            L::Ext(..) => panic!("no extensible matches in this model"),
        }
    }

    /// SCIM semantics over single-valued string attributes (RFC 7644 §3.4.2.2).
    fn scim_eval(f: &Filter, e: &Entry) -> bool {
        match f {
            Filter::Attr { path, test } => {
                let v = e.get(&path.key());
                match test {
                    Test::Present => v.is_some(),
                    Test::Compare(op, CompValue::Null) => match op {
                        CompareOp::Eq => v.is_none(),
                        _ => v.is_some(),
                    },
                    Test::Compare(op, CompValue::String(s)) => match op {
                        CompareOp::Eq => v == Some(s),
                        CompareOp::Ne => v != Some(s),
                        CompareOp::Co => v.is_some_and(|v| v.contains(s.as_str())),
                        CompareOp::Sw => v.is_some_and(|v| v.starts_with(s.as_str())),
                        CompareOp::Ew => v.is_some_and(|v| v.ends_with(s.as_str())),
                        CompareOp::Gt => v.is_some_and(|v| v > s),
                        CompareOp::Ge => v.is_some_and(|v| v >= s),
                        CompareOp::Lt => v.is_some_and(|v| v < s),
                        CompareOp::Le => v.is_some_and(|v| v <= s),
                    },
                    _ => unreachable!("the model has strings and null only"),
                }
            }
            Filter::Not(x) => !scim_eval(x, e),
            Filter::And(l, r) => scim_eval(l, e) && scim_eval(r, e),
            Filter::Or(l, r) => scim_eval(l, e) || scim_eval(r, e),
            Filter::ValuePath { .. } => unreachable!("no value paths in this model"),
        }
    }

    // ---- strategies --------------------------------------------------------------------

    fn arb_name() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => "[a-zA-Z][a-zA-Z0-9_-]{0,6}",
            1 => Just("$ref".to_string()),
            1 => prop::sample::select(vec!["and", "or", "not", "pr", "eq", "true", "NOT"])
                .prop_map(str::to_string),
        ]
    }

    fn arb_value() -> impl Strategy<Value = CompValue> {
        prop_oneof![
            4 => any::<String>().prop_map(CompValue::String),
            2 => "-?(0|[1-9][0-9]{0,5})(\\.[0-9]{1,3})?([eE][+-]?[0-9]{1,2})?"
                .prop_map(CompValue::Number),
            1 => any::<bool>().prop_map(CompValue::Bool),
            1 => Just(CompValue::Null),
        ]
    }

    fn arb_test() -> impl Strategy<Value = Test> {
        prop_oneof![
            1 => Just(Test::Present),
            6 => (prop::sample::select(CompareOp::ALL.to_vec()), arb_value())
                .prop_map(|(op, v)| Test::Compare(op, v)),
        ]
    }

    fn arb_path() -> impl Strategy<Value = AttrPath> {
        let urn = prop::option::weighted(
            0.2,
            prop::sample::select(vec![
                "urn:ietf:params:scim:schemas:core:2.0:User",
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User",
            ]),
        );
        (urn, arb_name(), prop::option::of(arb_name())).prop_map(|(urn, name, sub)| AttrPath {
            urn: urn.map(str::to_string),
            name,
            sub,
        })
    }

    fn logic(inner: BoxedStrategy<Filter>) -> impl Strategy<Value = Filter> {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(l, r)| and(l, r)),
            (inner.clone(), inner.clone()).prop_map(|(l, r)| or(l, r)),
            inner.prop_map(not),
        ]
    }

    fn arb_value_filter() -> impl Strategy<Value = Filter> {
        let leaf = (arb_name(), arb_test()).prop_map(|(n, t)| attr(&n, t));
        leaf.prop_recursive(2, 6, 2, |inner| logic(inner.boxed()))
    }

    fn arb_filter() -> impl Strategy<Value = Filter> {
        let leaf = prop_oneof![
            4 => (arb_path(), arb_test()).prop_map(|(path, test)| Filter::Attr { path, test }),
            1 => (arb_path(), arb_value_filter()).prop_map(|(mut path, f)| {
                path.sub = None;
                Filter::ValuePath { path, filter: Box::new(f) }
            }),
        ];
        leaf.prop_recursive(4, 20, 2, |inner| logic(inner.boxed()))
    }

    fn terms(f: &Filter) -> usize {
        match f {
            Filter::Attr { .. } => 1,
            Filter::ValuePath { filter, .. } | Filter::Not(filter) => terms(filter),
            Filter::And(l, r) | Filter::Or(l, r) => terms(l) + terms(r),
        }
    }

    /// Nesting levels in the printed text (parentheses the printer adds included).
    fn printed_depth(f: &Filter) -> usize {
        match f {
            Filter::Attr { .. } => 0,
            Filter::ValuePath { filter, .. } | Filter::Not(filter) => 1 + printed_depth(filter),
            Filter::And(l, r) | Filter::Or(l, r) => 1 + printed_depth(l).max(printed_depth(r)),
        }
    }

    /// Every key gets a text attribute with substring and ordering matching.
    struct AnyText;

    impl AttributeMap for AnyText {
        fn target(&self, key: &str) -> Option<Target> {
            Some(Target::text(&format!("a{}", key.len())))
        }
    }

    fn literals(f: &Filter, out: &mut Vec<Vec<u8>>) {
        match f {
            Filter::Attr {
                test: Test::Compare(_, v),
                ..
            } => match v {
                CompValue::String(s) => out.push(s.as_bytes().to_vec()),
                CompValue::Number(n) => out.push(n.as_bytes().to_vec()),
                _ => {}
            },
            Filter::Attr { .. } => {}
            Filter::ValuePath { filter, .. } | Filter::Not(filter) => literals(filter, out),
            Filter::And(l, r) | Filter::Or(l, r) => {
                literals(l, out);
                literals(r, out);
            }
        }
    }

    /// Strings that matter to LDAP (specials, an escape look-alike, UTF-8), from a small
    /// pool so that filter values and entry values often meet (equal, prefix, inside).
    const POOL: [&str; 14] = [
        "x", "*", "x*", "*x", "(", ")", "\\", "\0", "x(y)", "é", "xé*", "\\2a", "xx", "y",
    ];

    fn model_string(empty: bool) -> impl Strategy<Value = String> {
        let mut pool: Vec<&'static str> = POOL.to_vec();
        if empty {
            pool.push("");
        }
        prop::sample::select(pool).prop_map(str::to_string)
    }

    fn arb_model_filter() -> impl Strategy<Value = Filter> {
        let name = prop::sample::select(vec!["a", "b", "c"]);
        let test = prop_oneof![
            1 => Just(Test::Present),
            1 => prop::sample::select(vec![CompareOp::Eq, CompareOp::Ne])
                .prop_map(|op| Test::Compare(op, CompValue::Null)),
            6 => (prop::sample::select(CompareOp::ALL.to_vec()), model_string(true))
                .prop_map(|(op, s)| Test::Compare(op, CompValue::String(s))),
        ];
        let leaf = (name, test).prop_map(|(n, t)| attr(n, t));
        leaf.prop_recursive(4, 16, 2, |inner| logic(inner.boxed()))
    }

    fn arb_entries() -> impl Strategy<Value = Vec<Entry>> {
        let entry = (
            prop::option::of(model_string(false)),
            prop::option::of(model_string(false)),
            prop::option::of(model_string(false)),
        )
            .prop_map(|(a, b, c)| {
                [("a", a), ("b", b), ("c", c)]
                    .into_iter()
                    .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
                    .collect::<Entry>()
            });
        prop::collection::vec(entry, 1..12)
    }

    fn filterish() -> impl Strategy<Value = String> {
        let token = prop::sample::select(vec![
            "(", ")", "[", "]", " ", "not", "and", "or", "pr", "eq", "co", "gt", "a", "b.c",
            "emails", ".value", "\"x\"", "\"\\u", "\\", "\"", "1", "-", "1.5e3", "true", "null",
            "urn:x:y:", ":", "$ref", "é", "\0", "\t",
        ]);
        prop::collection::vec(token, 0..200).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// (a) Random ASTs print to SCIM text that parses back to the same AST.
        #[test]
        fn printed_ast_reparses(f in arb_filter()) {
            prop_assume!(terms(&f) <= MAX_TERMS && printed_depth(&f) <= MAX_DEPTH);
            let text = f.to_string();
            prop_assume!(text.len() <= MAX_FILTER_LEN);
            prop_assert_eq!(parse(&text), Ok(f), "{}", text);
        }

        /// (b) Arbitrary text never panics; what parses prints to a fixed point.
        #[test]
        fn arbitrary_text_never_panics(s in any::<String>()) {
            if let Ok(f) = parse(&s) {
                prop_assert_eq!(parse(&f.to_string()), Ok(f));
            }
        }

        /// (b) Filter-shaped noise reaches deep into the parser; same guarantees.
        #[test]
        fn filterish_text_never_panics(s in filterish()) {
            let start = Instant::now();
            let parsed = parse(&s);
            prop_assert!(start.elapsed() < Duration::from_millis(250));
            if let Ok(f) = parsed {
                prop_assert_eq!(parse(&f.to_string()), Ok(f));
                let _ = to_ldap(&p(&s), &AnyText);
            }
        }

        /// (c) Every emitted LDAP filter is well-formed RFC 4515 (balanced parentheses, no
        /// raw `(` `)` `\` NUL in values, `*` only as a wildcard) and every assertion value
        /// is one of the filter's own literals, unescaped back exactly.
        #[test]
        fn ldap_output_is_well_formed_and_escaped(f in arb_filter()) {
            if let Ok(out) = to_ldap(&f, &AnyText) {
                prop_assert_eq!(crate::ldap::filter::check(&out), Ok(()), "{}", out);
                let tree = ldap_parse(&out).map_err(|e| TestCaseError::fail(format!("{out}: {e}")))?;
                let mut depth = 0i64;
                for c in out.bytes() {
                    depth += match c { b'(' => 1, b')' => -1, _ => 0 };
                    prop_assert!(depth >= 0, "{}", out);
                }
                prop_assert_eq!(depth, 0);
                let mut allowed = Vec::new();
                literals(&f, &mut allowed);
                let mut used = Vec::new();
                ldap_values(&tree, &mut used);
                for v in used {
                    prop_assert!(allowed.contains(&v), "{:?} not a literal of {}", v, f);
                }
            }
        }

        /// (c) On single-valued string attributes the LDAP filter selects exactly the
        /// entries the SCIM filter selects (so escaping never turns a value into syntax).
        #[test]
        fn ldap_matches_the_same_entries(f in arb_model_filter(), entries in arb_entries()) {
            let mut m = HashMap::new();
            for a in ["a", "b", "c"] {
                m.insert(a.to_string(), Target::text(a));
            }
            let out = to_ldap(&f, &m).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let tree = ldap_parse(&out).map_err(|e| TestCaseError::fail(format!("{out}: {e}")))?;
            for e in &entries {
                prop_assert_eq!(ldap_eval(&tree, e), scim_eval(&f, e), "{} -> {} on {:?}", f, out, e);
            }
        }
    }
}
