//! Decoding what ldap3 hands over into the agent's types (pure; no I/O).
//!
//! ldap3's own `SearchEntry::construct` panics on a non-UTF-8 DN or attribute name and splits
//! values into text and binary maps; this module reads the raw SearchResultEntry instead,
//! keeps every value as bytes, and turns malformed input into [`LdapError::Protocol`].
//! Attribute names keep their options (`member;range=0-1499`) until [`super::range`] has
//! folded the chunks; [`RawEntry::into_entry`] then builds the [`Entry`].

use ldap3::asn1::{parse_tag, StructureTag, PL};
use ldap3::controls::Control;

use super::dialect::PAGED_RESULTS_OID;
use super::{Entry, LdapError};

/// LDAP protocolOp tag of a SearchResultEntry (RFC 4511: `[APPLICATION 4]`).
const SEARCH_RESULT_ENTRY: u64 = 4;

/// A search result entry as the server sent it: attribute names with their options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawEntry {
    /// The entry's DN.
    pub dn: String,
    /// Attribute descriptions and their values, in server order.
    pub attrs: Vec<(String, Vec<Vec<u8>>)>,
}

impl RawEntry {
    /// Decodes a SearchResultEntry protocol op.
    pub fn from_tag(tag: StructureTag) -> Result<RawEntry, LdapError> {
        if tag.id != SEARCH_RESULT_ENTRY {
            return Err(protocol(format!(
                "expected a search result entry (tag 4), got tag {}",
                tag.id
            )));
        }
        let mut parts = constructed(tag, "search result entry")?.into_iter();
        let dn = text(next(&mut parts, "entry DN")?, "entry DN")?;
        let attr_list = constructed(next(&mut parts, "attribute list")?, "attribute list")?;
        let mut attrs = Vec::with_capacity(attr_list.len());
        for attr in attr_list {
            let mut pair = constructed(attr, "attribute")?.into_iter();
            let name = text(next(&mut pair, "attribute name")?, "attribute name")?;
            let values = constructed(next(&mut pair, "attribute values")?, "attribute values")?
                .into_iter()
                .map(|v| primitive(v, "attribute value"))
                .collect::<Result<Vec<_>, _>>()?;
            attrs.push((name, values));
        }
        Ok(RawEntry { dn, attrs })
    }

    /// The entry model: names lower-cased, values of repeated names merged.
    pub fn into_entry(self) -> Entry {
        let mut entry = Entry::new(self.dn);
        for (name, values) in self.attrs {
            entry.add_all(&name, values);
        }
        entry
    }
}

/// The paging cookie from a search's response controls: `None` when the server sent no
/// paged-results control (it did not page), `Some(empty)` after the last page.
pub(crate) fn paged_cookie(ctrls: &[Control]) -> Result<Option<Vec<u8>>, LdapError> {
    let Some(raw) = ctrls
        .iter()
        .map(|c| &c.1)
        .find(|r| r.ctype == PAGED_RESULTS_OID)
    else {
        return Ok(None);
    };
    let Some(val) = raw.val.as_deref() else {
        return Err(protocol("paged results control without a value".into()));
    };
    let (_, tag) =
        parse_tag(val).map_err(|_| protocol("paged results control value is not BER".into()))?;
    let mut parts = constructed(tag, "paged results control")?.into_iter();
    let _size_estimate = next(&mut parts, "paged results size")?;
    let cookie = primitive(next(&mut parts, "paged results cookie")?, "cookie")?;
    Ok(Some(cookie))
}

fn protocol(detail: String) -> LdapError {
    LdapError::Protocol { detail }
}

fn next(
    it: &mut impl Iterator<Item = StructureTag>,
    what: &str,
) -> Result<StructureTag, LdapError> {
    it.next().ok_or_else(|| protocol(format!("{what} missing")))
}

fn constructed(tag: StructureTag, what: &str) -> Result<Vec<StructureTag>, LdapError> {
    match tag.payload {
        PL::C(inner) => Ok(inner),
        PL::P(_) => Err(protocol(format!("{what} is not a constructed value"))),
    }
}

fn primitive(tag: StructureTag, what: &str) -> Result<Vec<u8>, LdapError> {
    match tag.payload {
        PL::P(bytes) => Ok(bytes),
        PL::C(_) => Err(protocol(format!("{what} is not a primitive value"))),
    }
}

fn text(tag: StructureTag, what: &str) -> Result<String, LdapError> {
    String::from_utf8(primitive(tag, what)?).map_err(|_| protocol(format!("{what} is not UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ldap3::asn1::TagClass;
    use ldap3::controls::RawControl;

    fn prim(bytes: &[u8]) -> StructureTag {
        StructureTag {
            class: TagClass::Universal,
            id: 4,
            payload: PL::P(bytes.to_vec()),
        }
    }

    fn cons(id: u64, class: TagClass, inner: Vec<StructureTag>) -> StructureTag {
        StructureTag {
            class,
            id,
            payload: PL::C(inner),
        }
    }

    fn attr(name: &str, values: &[&[u8]]) -> StructureTag {
        cons(
            16,
            TagClass::Universal,
            vec![
                prim(name.as_bytes()),
                cons(
                    17,
                    TagClass::Universal,
                    values.iter().map(|v| prim(v)).collect(),
                ),
            ],
        )
    }

    fn entry_tag(dn: &[u8], attrs: Vec<StructureTag>) -> StructureTag {
        cons(
            4,
            TagClass::Application,
            vec![prim(dn), cons(16, TagClass::Universal, attrs)],
        )
    }

    #[test]
    fn binary_and_text_values_arrive_as_bytes() {
        let guid: &[u8] = &[0x8f, 0, 0xff, 0x10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        let tag = entry_tag(
            b"CN=a,DC=x",
            vec![
                attr("objectGUID", &[guid]),
                attr("cn", &[b"a"]),
                attr("member;range=0-1", &[b"CN=u1", b"CN=u2"]),
            ],
        );
        let raw = RawEntry::from_tag(tag).unwrap();
        assert_eq!(raw.attrs[2].0, "member;range=0-1");
        let e = raw.into_entry();
        assert_eq!(e.dn, "CN=a,DC=x");
        assert_eq!(e.first_bytes("objectguid"), Some(guid));
        assert_eq!(e.first_str("CN"), Some("a"));
    }

    #[test]
    fn malformed_entries_are_errors_not_panics() {
        assert!(RawEntry::from_tag(entry_tag(&[0xff, 0xfe], vec![])).is_err());
        let no_values = cons(
            4,
            TagClass::Application,
            vec![
                prim(b"CN=a"),
                cons(16, TagClass::Universal, vec![prim(b"cn")]),
            ],
        );
        assert!(RawEntry::from_tag(no_values).is_err());
        let wrong_op = cons(5, TagClass::Application, vec![]);
        assert!(RawEntry::from_tag(wrong_op).is_err());
    }

    #[test]
    fn paged_cookie_is_read_from_the_response_control() {
        let with = |cookie: Vec<u8>| {
            let raw: RawControl = ldap3::controls::PagedResults { size: 0, cookie }.into();
            vec![Control(None, raw)]
        };
        assert_eq!(
            paged_cookie(&with(b"abc".to_vec())).unwrap(),
            Some(b"abc".to_vec())
        );
        assert_eq!(paged_cookie(&with(vec![])).unwrap(), Some(vec![]));
        assert_eq!(paged_cookie(&[]).unwrap(), None);
        let broken = RawControl {
            ctype: PAGED_RESULTS_OID.into(),
            crit: false,
            val: Some(vec![0x30, 0x05, 0x02]),
        };
        assert!(paged_cookie(&[Control(None, broken)]).is_err());
    }
}
