//! The anchor index: which SCIM resource each directory object became, and a hash of the
//! representation last sent for it.
//!
//! Keyed by externalId (the directory anchor, see DESIGN.md §4). It is a cache, never the
//! truth: when it is missing, stale or corrupt the engine looks resources up by externalId
//! at the endpoint before creating anything, so losing it costs requests, never duplicates.
//! That is why a corrupt file is logged and dropped rather than fatal.
//!
//! On disk: `anchors.jsonl` in the state directory, one JSON object per line
//! (`{"x":externalId,"k":"u"|"g","id":scimId,"h":"hash hex","dn":DN}`), replaced atomically
//! (write to a temporary file, fsync, rename, fsync the directory).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::scim::ResourceKind;

/// What the index knows about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    /// User or group.
    pub kind: ResourceKind,
    /// The SCIM `id` the endpoint gave the resource.
    pub scim_id: String,
    /// Hash of the representation last sent ([`representation_hash`]); 0 when unknown.
    pub hash: u64,
    /// The object's DN when it was last sent (renames keep the anchor and update this).
    pub dn: String,
}

/// externalId → [`Anchor`], persisted in the state directory.
#[derive(Debug)]
pub struct AnchorIndex {
    path: PathBuf,
    map: HashMap<String, Anchor>,
    /// Normalised DN → externalId, to resolve `member` / `manager` values between passes.
    by_dn: HashMap<String, String>,
    dirty: bool,
}

#[derive(Serialize, Deserialize)]
struct Line<'a> {
    x: std::borrow::Cow<'a, str>,
    k: &'a str,
    id: std::borrow::Cow<'a, str>,
    h: String,
    #[serde(default)]
    dn: std::borrow::Cow<'a, str>,
}

/// The file name inside the state directory.
pub const FILE_NAME: &str = "anchors.jsonl";

impl AnchorIndex {
    /// Loads the index from `state_dir`; a missing file is an empty index, a corrupt one is
    /// logged and treated as empty (see the module doc for why that is safe).
    pub fn load(state_dir: &Path) -> io::Result<AnchorIndex> {
        let path = state_dir.join(FILE_NAME);
        let mut index = AnchorIndex {
            path: path.clone(),
            map: HashMap::new(),
            by_dn: HashMap::new(),
            dirty: false,
        };
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(index),
            Err(e) => return Err(e),
        };
        for (n, line) in BufReader::new(file).lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            match parse_line(&line) {
                Some((x, a)) => {
                    index
                        .by_dn
                        .insert(crate::sync::dn::normalize(&a.dn), x.clone());
                    index.map.insert(x, a);
                }
                None => {
                    log::warn!(
                        "anchor index {} is damaged at line {}; starting from an empty index (objects are matched again by externalId, nothing is duplicated)",
                        path.display(),
                        n + 1
                    );
                    index.map.clear();
                    index.by_dn.clear();
                    index.dirty = true;
                    break;
                }
            }
        }
        Ok(index)
    }

    /// The anchor of `external_id` if it is of `kind`.
    pub fn get(&self, kind: ResourceKind, external_id: &str) -> Option<&Anchor> {
        self.map.get(external_id).filter(|a| a.kind == kind)
    }

    /// Records what the endpoint holds for `external_id` now.
    pub fn put(&mut self, external_id: &str, anchor: Anchor) {
        if self.map.get(external_id) == Some(&anchor) {
            return;
        }
        if let Some(old) = self.map.get(external_id) {
            let old_key = crate::sync::dn::normalize(&old.dn);
            if self.by_dn.get(&old_key).map(String::as_str) == Some(external_id) {
                self.by_dn.remove(&old_key);
            }
        }
        self.by_dn.insert(
            crate::sync::dn::normalize(&anchor.dn),
            external_id.to_string(),
        );
        self.map.insert(external_id.to_string(), anchor);
        self.dirty = true;
    }

    /// Records that `external_id` now lives at `dn` (renamed or moved, nothing to send).
    pub fn note_dn(&mut self, external_id: &str, dn: &str) {
        if let Some(a) = self.map.get(external_id).filter(|a| a.dn != dn) {
            let moved = Anchor {
                dn: dn.to_string(),
                ..a.clone()
            };
            self.put(external_id, moved);
        }
    }

    /// Forgets `external_id` (its resource is gone at the endpoint).
    pub fn remove(&mut self, external_id: &str) {
        if let Some(old) = self.map.remove(external_id) {
            let key = crate::sync::dn::normalize(&old.dn);
            if self.by_dn.get(&key).map(String::as_str) == Some(external_id) {
                self.by_dn.remove(&key);
            }
            self.dirty = true;
        }
    }

    /// The externalId and anchor of the object last sent under `dn` (any spelling).
    pub fn by_dn(&self, dn: &str) -> Option<(&str, &Anchor)> {
        let x = self.by_dn.get(&crate::sync::dn::normalize(dn))?;
        self.map.get(x).map(|a| (x.as_str(), a))
    }

    /// The anchor of `external_id`, whatever its kind.
    pub fn get_any(&self, external_id: &str) -> Option<&Anchor> {
        self.map.get(external_id)
    }

    /// Every externalId and anchor, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Anchor)> {
        self.map.iter().map(|(x, a)| (x.as_str(), a))
    }

    /// Number of objects known.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Writes the index if it changed since the last save.
    pub fn save(&mut self) -> io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir)?;
        let tmp = self.path.with_extension("jsonl.tmp");
        {
            let mut w = BufWriter::new(File::create(&tmp)?);
            let mut keys: Vec<&String> = self.map.keys().collect();
            keys.sort();
            for x in keys {
                let a = &self.map[x];
                let line = Line {
                    x: x.as_str().into(),
                    k: kind_code(a.kind),
                    id: a.scim_id.as_str().into(),
                    h: format!("{:016x}", a.hash),
                    dn: a.dn.as_str().into(),
                };
                serde_json::to_writer(&mut w, &line).map_err(io::Error::other)?;
                w.write_all(b"\n")?;
            }
            let f = w.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        self.dirty = false;
        Ok(())
    }
}

fn kind_code(k: ResourceKind) -> &'static str {
    match k {
        ResourceKind::User => "u",
        ResourceKind::Group => "g",
    }
}

fn parse_line(line: &str) -> Option<(String, Anchor)> {
    let l: Line<'_> = serde_json::from_str(line).ok()?;
    let kind = match l.k {
        "u" => ResourceKind::User,
        "g" => ResourceKind::Group,
        _ => return None,
    };
    let hash = u64::from_str_radix(&l.h, 16).ok()?;
    if l.x.is_empty() || l.id.is_empty() {
        return None;
    }
    Some((
        l.x.into_owned(),
        Anchor {
            kind,
            scim_id: l.id.into_owned(),
            hash,
            dn: l.dn.into_owned(),
        },
    ))
}

/// FNV-1a 64 of the serialized representation: stable across builds and platforms
/// (serde_json writes object keys in sorted order), so "unchanged" survives upgrades.
pub fn representation_hash(body: &serde_json::Value) -> u64 {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // 0 means "unknown" in the index; never produce it.
    h.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("idrelay-anchors-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trips_through_disk() {
        let d = tempdir("rt");
        let mut ix = AnchorIndex::load(&d).unwrap();
        assert!(ix.is_empty());
        ix.put(
            "abc==",
            Anchor {
                kind: ResourceKind::User,
                scim_id: "id1".into(),
                hash: 42,
                dn: "uid=a,dc=x".into(),
            },
        );
        ix.save().unwrap();
        let ix2 = AnchorIndex::load(&d).unwrap();
        assert_eq!(ix2.get(ResourceKind::User, "abc==").unwrap().hash, 42);
        assert_eq!(ix2.by_dn("UID=a, dc=X").unwrap().0, "abc==");
        assert!(
            ix2.get(ResourceKind::Group, "abc==").is_none(),
            "kind must match"
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn damaged_file_means_empty_index_not_an_error() {
        let d = tempdir("bad");
        fs::write(
            d.join(FILE_NAME),
            "{\"x\":\"a\",\"k\":\"u\",\"id\":\"1\",\"h\":\"2a\"}\n{garbage\n",
        )
        .unwrap();
        let ix = AnchorIndex::load(&d).unwrap();
        assert!(ix.is_empty());
        fs::remove_dir_all(&d).unwrap();
    }

    fn fnv_reference(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf29ce484222325, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
        })
    }

    #[test]
    fn hash_is_stable_and_key_order_independent() {
        let a: serde_json::Value = serde_json::from_str(r#"{"b":1,"a":[1,2]}"#).unwrap();
        let b: serde_json::Value = serde_json::from_str(r#"{"a":[1,2],"b":1}"#).unwrap();
        assert_eq!(representation_hash(&a), representation_hash(&b));
        // FNV-1a 64 known answer: the empty object serializes as `{}`.
        assert_eq!(
            representation_hash(&serde_json::json!({})),
            fnv_reference(b"{}")
        );
        assert_ne!(
            representation_hash(&a),
            representation_hash(&serde_json::json!({"a":[2,1],"b":1}))
        );
    }
}
