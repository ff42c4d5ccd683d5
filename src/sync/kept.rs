//! What the endpoint did not keep, as the last full pass saw it (`not-kept.json` in the
//! state directory): the attributes a POST/PUT answer showed dropped or rewritten
//! ([`crate::scim::readback`]). Written after a full pass that compared at least one
//! answer; read by `status`, `check` and `preview`, so that an operator sees it without
//! reading the log. A pass that wrote nothing learnt nothing and leaves the file as it was.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::scim::client::ScimClient;

/// The file's name in the state directory.
pub const FILE: &str = "not-kept.json";

/// The file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotKept {
    /// When it was written (unix seconds).
    pub at: u64,
    /// `user title (dropped)`, `user displayName (rewritten)`, sorted.
    pub attributes: Vec<String>,
}

/// Records what `scim` learnt (nothing when it compared no answer). A failure is logged,
/// never fatal: the log said it already.
pub fn record(state_dir: &Path, scim: &ScimClient) {
    let Some(attributes) = scim.not_kept() else {
        return;
    };
    let path = state_dir.join(FILE);
    let doc = NotKept {
        at: crate::status::unix(std::time::SystemTime::now()),
        attributes,
    };
    let bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    if let Err(e) = crate::status::write_private(&path, &bytes) {
        log::warn!("cannot write {}: {e}", path.display());
    }
}

/// What the last pass recorded, if anything (a missing or unreadable file: nothing).
pub fn read(state_dir: &Path) -> Option<NotKept> {
    let text = std::fs::read_to_string(state_dir.join(FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// `at the last full pass (TIME) the endpoint accepted and did not keep as sent: A, B`,
/// when the last pass recorded anything (for `check` and `preview`).
pub fn last_pass_sentence(state_dir: &Path) -> Option<String> {
    let k = read(state_dir).filter(|k| !k.attributes.is_empty())?;
    Some(format!(
        "at the last full pass ({}) the endpoint accepted and did not keep as sent: {}",
        crate::logging::format_utc(k.at),
        k.attributes.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_record_reads_back_and_garbage_reads_as_nothing() {
        let dir = std::env::temp_dir().join(format!("idrelay-kept-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(read(&dir), None);
        let doc = NotKept {
            at: 7,
            attributes: vec!["user title (dropped)".into()],
        };
        crate::status::write_private(&dir.join(FILE), &serde_json::to_vec(&doc).unwrap()).unwrap();
        assert_eq!(read(&dir), Some(doc));
        std::fs::write(dir.join(FILE), b"{not json").unwrap();
        assert_eq!(read(&dir), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
