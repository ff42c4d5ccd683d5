//! The entry model: a DN and its attributes, as the rest of the agent sees them.
//!
//! Attribute names are kept lower-cased (LDAP names are case-insensitive) and values as raw
//! bytes, so binary values (objectGUID) and text values share one representation. Accessors
//! that want text skip values that are not UTF-8.

use std::collections::BTreeMap;

/// One directory object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    /// The distinguished name, as the server returned it.
    pub dn: String,
    attrs: BTreeMap<String, Vec<Vec<u8>>>,
}

impl Entry {
    /// An entry with no attributes.
    pub fn new(dn: impl Into<String>) -> Self {
        Entry {
            dn: dn.into(),
            attrs: BTreeMap::new(),
        }
    }

    /// Adds one value to attribute `name` (any case).
    pub fn add(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        self.attrs
            .entry(name.to_ascii_lowercase())
            .or_default()
            .push(value.into());
    }

    /// Adds every value of `values` to attribute `name` (any case): the name is folded
    /// and looked up once, not once a value.
    pub fn add_all(&mut self, name: &str, values: Vec<Vec<u8>>) {
        if values.is_empty() {
            return;
        }
        let slot = self.attrs.entry(name.to_ascii_lowercase()).or_default();
        if slot.is_empty() {
            *slot = values;
        } else {
            slot.extend(values);
        }
    }

    /// Builder form of [`Entry::add`], handy in tests.
    pub fn with(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.add(name, value);
        self
    }

    /// Every value of `name` as bytes (empty when absent).
    pub fn bytes(&self, name: &str) -> &[Vec<u8>] {
        self.attrs
            .get(&name.to_ascii_lowercase())
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The first value of `name` as bytes.
    pub fn first_bytes(&self, name: &str) -> Option<&[u8]> {
        self.bytes(name).first().map(Vec::as_slice)
    }

    /// Every UTF-8 value of `name`.
    pub fn strs<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        self.bytes(name)
            .iter()
            .filter_map(|v| std::str::from_utf8(v).ok())
    }

    /// The first UTF-8 value of `name`.
    pub fn first_str(&self, name: &str) -> Option<&str> {
        self.strs(name).next()
    }

    /// Whether `objectClass` holds `class` (case-insensitive).
    pub fn has_object_class(&self, class: &str) -> bool {
        self.strs("objectclass")
            .any(|c| c.eq_ignore_ascii_case(class))
    }

    /// Whether the attribute is present with at least one value.
    pub fn has(&self, name: &str) -> bool {
        !self.bytes(name).is_empty()
    }

    /// Attribute names (lower-cased) and their values, in name order.
    pub fn attributes(&self) -> impl Iterator<Item = (&str, &[Vec<u8>])> {
        self.attrs.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// Removes attribute `name` and returns its values.
    pub fn take(&mut self, name: &str) -> Vec<Vec<u8>> {
        self.attrs
            .remove(&name.to_ascii_lowercase())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::Entry;

    #[test]
    fn names_are_case_insensitive_and_binary_values_survive() {
        let e = Entry::new("cn=a,dc=x")
            .with("objectClass", "inetOrgPerson")
            .with("objectGUID", vec![0xff, 0x00, 0x10]);
        assert!(e.has_object_class("INETORGPERSON"));
        assert_eq!(e.first_bytes("objectguid"), Some(&[0xff, 0x00, 0x10][..]));
        assert_eq!(
            e.first_str("objectGUID"),
            None,
            "not UTF-8, so no text value"
        );
    }

    #[test]
    fn add_all_merges_repeated_names_in_any_case_like_add() {
        let mut a = Entry::new("cn=a,dc=x");
        a.add_all("Mail", vec![b"1".to_vec(), b"2".to_vec()]);
        a.add_all("MAIL", vec![b"3".to_vec()]);
        a.add_all("cn", Vec::new());
        let b = Entry::new("cn=a,dc=x")
            .with("mail", "1")
            .with("mail", "2")
            .with("mail", "3");
        assert_eq!(a.bytes("mail"), b.bytes("mail"));
        assert_eq!(a.attributes().count(), 1, "no empty attribute left behind");
    }
}
