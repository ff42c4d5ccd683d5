//! A static bearer token that can be rotated while the agent runs: kept in memory, read
//! again from where it came from (`scim.token_file`) when the service answers 401, once per
//! request, before the endpoint is called unhealthy. An operator who replaced the file need
//! not signal the agent: the next request that is refused picks the new token up.
//!
//! It never prints the token; how the file is read (and its permissions checked) is the
//! caller's function, so this module knows nothing of the config.

use std::sync::Mutex;

use crate::secret::Secret;

/// Reads the token again; `Err` says why not (never holding the token).
pub type Reread = Box<dyn Fn() -> Result<Secret, String> + Send + Sync>;

/// The current token and the way to read it again.
pub struct FileToken {
    current: Mutex<Secret>,
    reread: Reread,
}

impl std::fmt::Debug for FileToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileToken(<redacted>)")
    }
}

impl FileToken {
    /// A token as first read, and how to read it again.
    pub fn new(first: Secret, reread: Reread) -> FileToken {
        FileToken {
            current: Mutex::new(first),
            reread,
        }
    }

    /// The token to send now.
    pub fn token(&self) -> Secret {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// After `refused` was answered 401: reads the token again and keeps it. Whether it is
    /// another token than the refused one (worth one more try).
    pub fn renew(&self, refused: &Secret) -> bool {
        match (self.reread)() {
            Ok(t) if t != *refused => {
                *self.current.lock().unwrap_or_else(|p| p.into_inner()) = t;
                log::info!(
                    "the SCIM endpoint refused the token (401); scim.token_file holds a new token: using it"
                );
                true
            }
            Ok(_) => false,
            Err(e) => {
                log::warn!("the SCIM endpoint refused the token (401); reading scim.token_file again failed: {e}");
                false
            }
        }
    }
}

impl FileToken {
    /// Reads the token again without a refusal (quietly: during an outage, every second);
    /// keeps it and says so when it is another one.
    pub fn refresh(&self) -> bool {
        let Ok(t) = (self.reread)() else {
            return false;
        };
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if t == *cur {
            return false;
        }
        *cur = t;
        log::info!("scim.token_file holds a new token: trying the SCIM endpoint again at once");
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn source(values: &[&str]) -> (Arc<Mutex<Vec<String>>>, Reread) {
        let v = Arc::new(Mutex::new(
            values
                .iter()
                .rev()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        ));
        let r = v.clone();
        let read: Reread = Box::new(move || {
            let mut g = r.lock().unwrap();
            let next = if g.len() > 1 {
                g.pop()
            } else {
                g.last().cloned()
            };
            next.map(Secret::new).ok_or_else(|| "gone".to_string())
        });
        (v, read)
    }

    #[test]
    fn a_refused_token_is_replaced_only_by_another_one() {
        let (_v, read) = source(&["old", "new"]);
        let t = FileToken::new(Secret::new("old"), read);
        // The file still holds the refused token: nothing to try again.
        assert!(!t.renew(&Secret::new("old")));
        assert_eq!(t.token().expose(), "old");
        // It holds a new one now.
        assert!(t.renew(&Secret::new("old")));
        assert_eq!(t.token().expose(), "new");
        assert_eq!(format!("{t:?}"), "FileToken(<redacted>)");
    }

    #[test]
    fn an_unreadable_file_keeps_the_token() {
        let t = FileToken::new(
            Secret::new("old"),
            Box::new(|| Err("permission denied".into())),
        );
        assert!(!t.renew(&Secret::new("old")));
        assert_eq!(t.token().expose(), "old");
    }
}
