//! AD ranged retrieval of large multi-valued attributes (pure; the I/O loop is in `worker`).
//!
//! Active Directory returns at most `MaxValRange` (1500) values of an attribute such as
//! `member` per read; the attribute then comes back named `member;range=0-1499`, and the
//! client asks for `member;range=1500-*` and so on until a chunk named `member;range=N-*`
//! (the last one). This module parses those names, folds chunks into one attribute under its
//! plain name, and checks that each chunk starts where the previous one ended.
//!
//! Invariant: an attribute is either complete (the `-*` chunk was folded in) or the read
//! fails with a range error. A chunk that is missing, starts at the wrong index, or makes no
//! progress is an error, never a shorter list.
//!
//! Samba does not enforce `MaxValRange` (it returns every value of plain `member`), so a
//! *range step* can ask for chunks explicitly: the first request then names
//! `member;range=0-(step-1)` and follow-ups `member;range=N-(N+step-1)`. Samba only honours
//! the lower-case spelling `range=`; this module always writes it that way.

use super::wire::RawEntry;

/// Attributes that a range step asks for in explicit chunks from the first request on.
/// (Ranged responses for any other attribute are still completed.)
pub(crate) const STEPPED_ATTRS: &[&str] = &["member"];

/// One ranged attribute name, e.g. `member;range=1500-2999` or `member;range=3000-*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RangeName<'a> {
    /// The attribute without the range option (`member`).
    pub base: &'a str,
    /// First value index in this chunk.
    pub low: u64,
    /// Last value index, or `None` for `*` (this chunk is the last one).
    pub high: Option<u64>,
}

/// Parses an attribute description with a `range=low-high` option; `None` when it has none
/// or the option is malformed.
pub(crate) fn parse_range_name(name: &str) -> Option<RangeName<'_>> {
    const OPT: &str = ";range=";
    let at = name.to_ascii_lowercase().find(OPT)?;
    let base = &name[..at];
    let spec = name[at + OPT.len()..].split(';').next()?;
    let (low, high) = spec.split_once('-')?;
    let low: u64 = low.parse().ok()?;
    let high = match high {
        "*" => None,
        h => {
            let h: u64 = h.parse().ok()?;
            if h < low {
                return None;
            }
            Some(h)
        }
    };
    if base.is_empty() {
        return None;
    }
    Some(RangeName { base, low, high })
}

/// The attribute description that asks for values of `attr` from index `start` on.
pub(crate) fn range_request(attr: &str, start: u64, step: Option<u32>) -> String {
    match step {
        Some(step) if step > 0 => {
            format!("{attr};range={start}-{}", start + u64::from(step) - 1)
        }
        _ => format!("{attr};range={start}-*"),
    }
}

/// The attribute list for a search: with a range step, `member` becomes
/// `member;range=0-(step-1)` so that even a server that does not enforce ranges sends chunks.
pub(crate) fn initial_attrs(attrs: &[String], step: Option<u32>) -> Vec<String> {
    attrs
        .iter()
        .map(|a| {
            let stepped = STEPPED_ATTRS.iter().any(|s| s.eq_ignore_ascii_case(a));
            match step {
                Some(n) if n > 0 && stepped => range_request(a, 0, step),
                _ => a.clone(),
            }
        })
        .collect()
}

/// An attribute whose values continue beyond what the entry holds so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pending {
    /// The attribute (lower-case, without options).
    pub attr: String,
    /// The index of the next value to ask for.
    pub next: u64,
}

/// Renames every ranged chunk of a freshly read entry to its plain (lower-case) name and
/// lists the attributes that need follow-up reads. A first chunk must start at 0. On error:
/// the attribute and what is wrong.
pub(crate) fn fold_first_chunks(entry: &mut RawEntry) -> Result<Vec<Pending>, (String, String)> {
    let mut pending = Vec::new();
    for (name, values) in &mut entry.attrs {
        let Some(r) = parse_range_name(name) else {
            continue;
        };
        let base = r.base.to_ascii_lowercase();
        if r.low != 0 {
            return Err((
                base,
                format!("the first chunk is {name:?}, expected it to start at 0"),
            ));
        }
        if let Some(high) = r.high {
            if values.is_empty() {
                return Err((base, format!("chunk {name:?} holds no values")));
            }
            pending.push(Pending {
                attr: base.clone(),
                next: high + 1,
            });
        }
        *name = base;
    }
    Ok(pending)
}

/// Appends the chunk of `attr` found in a follow-up read to `entry`. Returns the next index
/// to ask for, or `None` when that chunk was the last one.
pub(crate) fn fold_next_chunk(
    entry: &mut RawEntry,
    attr: &str,
    expected_low: u64,
    follow_up: RawEntry,
) -> Result<Option<u64>, String> {
    let mut found: Vec<(String, Vec<Vec<u8>>)> = follow_up
        .attrs
        .into_iter()
        .filter(|(n, _)| parse_range_name(n).is_some_and(|r| r.base.eq_ignore_ascii_case(attr)))
        .collect();
    let (name, values) = match found.len() {
        1 => found.remove(0),
        0 => {
            return Err(format!(
                "the server sent no values from index {expected_low} on \
                 (did the entry change during the read?)"
            ))
        }
        _ => {
            let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
            return Err(format!("the server sent several chunks: {names:?}"));
        }
    };
    let Some(r) = parse_range_name(&name) else {
        return Err(format!("unreadable chunk name {name:?}"));
    };
    if r.low != expected_low {
        return Err(format!(
            "chunk {name:?} does not start at the expected index {expected_low}"
        ));
    }
    let next = match r.high {
        None => None,
        Some(_) if values.is_empty() => {
            return Err(format!("chunk {name:?} holds no values"));
        }
        Some(high) => Some(high + 1),
    };
    entry.attrs.push((attr.to_ascii_lowercase(), values));
    Ok(next)
}

/// One chunk of a streamed ranged read of `attr` from index `low` (the values are handed
/// on, not folded): the chunk's values and the index of the next chunk, `None` after the
/// last. From index 0, a plain (unranged) attribute is the whole list and a missing one an
/// empty list. Anything else that is not exactly the asked chunk is an error, never a
/// shorter list: a chunk that starts elsewhere, holds fewer or more values than its name
/// says, is missing after index 0, or comes twice.
pub(crate) fn take_chunk(
    entry: RawEntry,
    attr: &str,
    low: u64,
) -> Result<(Vec<Vec<u8>>, Option<u64>), String> {
    let mut found: Vec<(String, Vec<Vec<u8>>)> = entry
        .attrs
        .into_iter()
        .filter(|(n, _)| {
            n.eq_ignore_ascii_case(attr)
                || parse_range_name(n).is_some_and(|r| r.base.eq_ignore_ascii_case(attr))
        })
        .collect();
    if found.len() > 1 {
        let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
        return Err(format!("the server sent several chunks: {names:?}"));
    }
    let Some((name, values)) = found.pop() else {
        return match low {
            0 => Ok((Vec::new(), None)),
            _ => Err(format!(
                "the server sent no values from index {low} on (the range end was never seen)"
            )),
        };
    };
    let Some(r) = parse_range_name(&name) else {
        return match low {
            0 => Ok((values, None)),
            _ => Err(format!(
                "the server sent {name:?} whole when asked from index {low}"
            )),
        };
    };
    if r.low != low {
        return Err(format!(
            "chunk {name:?} does not start at the expected index {low}"
        ));
    }
    match r.high {
        None => Ok((values, None)),
        Some(high) if values.len() as u64 != high - low + 1 => Err(format!(
            "chunk {name:?} holds {} values, not {}",
            values.len(),
            high - low + 1
        )),
        Some(high) => Ok((values, Some(high + 1))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(dn: &str, attrs: &[(&str, usize)]) -> RawEntry {
        RawEntry {
            dn: dn.into(),
            attrs: attrs
                .iter()
                .map(|(n, k)| {
                    (
                        n.to_string(),
                        (0..*k).map(|i| vec![b'a' + (i % 26) as u8]).collect(),
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn a_streamed_chunk_gives_its_values_and_where_the_next_starts() {
        let c = chunk("cn=g", &[("cn", 1), ("Member;Range=0-2", 3)]);
        assert_eq!(
            take_chunk(c, "member", 0).map(|(v, n)| (v.len(), n)),
            Ok((3, Some(3)))
        );
        let last = chunk("cn=g", &[("member;range=3-*", 2)]);
        assert_eq!(
            take_chunk(last, "member", 3).map(|(v, n)| (v.len(), n)),
            Ok((2, None))
        );
        let empty_last = chunk("cn=g", &[("member;range=3-*", 0)]);
        assert_eq!(
            take_chunk(empty_last, "member", 3).map(|(v, n)| (v.len(), n)),
            Ok((0, None))
        );
        // From 0 only: a server that ignores ranges sends the whole list; none is empty.
        let whole = chunk("cn=g", &[("member", 5)]);
        assert_eq!(
            take_chunk(whole, "member", 0).map(|(v, n)| (v.len(), n)),
            Ok((5, None))
        );
        assert_eq!(
            take_chunk(chunk("cn=g", &[]), "member", 0),
            Ok((vec![], None))
        );
    }

    #[test]
    fn a_streamed_chunk_cut_short_or_out_of_place_is_an_error_not_fewer_members() {
        for (attrs, low) in [
            (vec![], 1500),                                 // the range end never came
            (vec![("member;range=1500-2999", 1499)], 1500), // fewer values than named
            (vec![("member;range=1501-2999", 1499)], 1500), // a gap
            (vec![("member;range=0-1499", 1500)], 1500),    // no progress
            (vec![("member", 10)], 1500),                   // whole list after a range
            (vec![("member;range=0-1", 2), ("member;range=2-*", 1)], 0), // two chunks
        ] {
            let c = chunk("cn=g", &attrs);
            assert!(
                take_chunk(c, "member", low).is_err(),
                "{attrs:?} from {low}"
            );
        }
    }

    #[test]
    fn parses_range_names() {
        assert_eq!(
            parse_range_name("member;range=0-1499"),
            Some(RangeName {
                base: "member",
                low: 0,
                high: Some(1499)
            })
        );
        assert_eq!(
            parse_range_name("Member;Range=1500-*"),
            Some(RangeName {
                base: "Member",
                low: 1500,
                high: None
            })
        );
        assert_eq!(parse_range_name("member"), None);
        assert_eq!(parse_range_name("member;range=5-1"), None);
        assert_eq!(parse_range_name("member;range=x-*"), None);
        assert_eq!(parse_range_name("member;range=1"), None);
        assert_eq!(parse_range_name(";range=0-*"), None);
        assert_eq!(parse_range_name("cn;lang-de"), None);
    }

    #[test]
    fn step_rewrites_member_only() {
        let attrs = vec!["cn".to_string(), "Member".to_string()];
        assert_eq!(
            initial_attrs(&attrs, Some(10)),
            vec!["cn".to_string(), "Member;range=0-9".to_string()]
        );
        assert_eq!(initial_attrs(&attrs, None), attrs);
        assert_eq!(initial_attrs(&attrs, Some(0)), attrs);
        assert_eq!(range_request("member", 1500, None), "member;range=1500-*");
        assert_eq!(range_request("member", 10, Some(10)), "member;range=10-19");
    }

    fn group(chunk: &str, values: std::ops::Range<u32>) -> RawEntry {
        let vals = values
            .map(|i| format!("CN=u{i},DC=x").into_bytes())
            .collect();
        RawEntry {
            dn: "CN=g,DC=x".into(),
            attrs: vec![("cn".into(), vec![b"g".to_vec()]), (chunk.into(), vals)],
        }
    }

    #[test]
    fn three_chunks_fold_into_one_attribute() {
        let mut e = group("member;range=0-9", 0..10);
        let pending = fold_first_chunks(&mut e).unwrap();
        assert_eq!(
            pending,
            vec![Pending {
                attr: "member".into(),
                next: 10
            }]
        );
        let next = fold_next_chunk(&mut e, "member", 10, group("member;range=10-19", 10..20));
        assert_eq!(next, Ok(Some(20)));
        let next = fold_next_chunk(&mut e, "member", 20, group("member;range=20-*", 20..25));
        assert_eq!(next, Ok(None));
        let e = e.into_entry();
        let members: Vec<&str> = e.strs("member").collect();
        assert_eq!(members.len(), 25);
        assert_eq!(members[24], "CN=u24,DC=x");
        assert!(e.attributes().all(|(n, _)| !n.contains(';')));
    }

    #[test]
    fn an_empty_final_chunk_ends_the_loop() {
        let mut e = group("member;range=0-9", 0..10);
        fold_first_chunks(&mut e).unwrap();
        let empty_last = group("member;range=10-*", 0..0);
        assert_eq!(fold_next_chunk(&mut e, "member", 10, empty_last), Ok(None));
        assert_eq!(e.into_entry().bytes("member").len(), 10);
    }

    proptest::proptest! {
        #[test]
        fn range_names_round_trip(base in "[a-zA-Z][a-zA-Z0-9-]{0,20}", low in 0u64..1u64 << 40,
                                  len in proptest::option::of(0u64..100_000)) {
            let name = match len {
                Some(len) => format!("{base};range={low}-{}", low + len),
                None => format!("{base};range={low}-*"),
            };
            let parsed = parse_range_name(&name).unwrap();
            proptest::prop_assert_eq!(parsed.base, base.as_str());
            proptest::prop_assert_eq!(parsed.low, low);
            proptest::prop_assert_eq!(parsed.high, len.map(|l| low + l));
        }

        #[test]
        fn range_name_parsing_never_panics(name in "\\PC{0,40}") {
            let _ = parse_range_name(&name);
        }
    }

    #[test]
    fn a_complete_first_chunk_needs_nothing_more() {
        let mut e = group("member;range=0-*", 0..3);
        assert_eq!(fold_first_chunks(&mut e), Ok(vec![]));
        assert_eq!(e.into_entry().bytes("member").len(), 3);
        let mut plain = group("member", 0..3);
        assert_eq!(fold_first_chunks(&mut plain), Ok(vec![]));
    }

    #[test]
    fn gaps_and_missing_chunks_are_errors_not_short_lists() {
        let mut e = group("member;range=0-9", 0..10);
        fold_first_chunks(&mut e).unwrap();
        let nothing = RawEntry {
            dn: "CN=g,DC=x".into(),
            attrs: vec![],
        };
        assert!(fold_next_chunk(&mut e, "member", 10, nothing).is_err());
        assert!(fold_next_chunk(&mut e, "member", 10, group("member;range=11-*", 11..12)).is_err());
        assert!(fold_next_chunk(&mut e, "member", 10, group("member;range=10-19", 0..0)).is_err());
        let mut late = group("member;range=5-9", 5..10);
        assert!(fold_first_chunks(&mut late).is_err());
    }
}
