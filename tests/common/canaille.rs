//! The testbed's Canaille (`scripts/testbed/canaille.sh`, started by `scripts/test.sh`): a
//! second SCIM server, written independently of scim2-server, that ignores `filter`, never
//! stores `externalId` and holds accounts of its own (users `admin` and `staff.owner`, group
//! `staff`). One instance is shared by every test, so [`canaille`] hands it to one test at a
//! time (in this process by a mutex, across processes, such as two checkouts' test runs
//! against one testbed, by a lock on a file in its directory) and resets its data to that
//! seed first. Quirks: docs/testing.md, "Canaille".

use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use serde_json::Value;

/// The pre-existing accounts that Canaille holds after every reset.
pub const SEED_USERS: [&str; 2] = ["admin", "staff.owner"];
/// The pre-existing group (its one member is `staff.owner`).
pub const SEED_GROUP: &str = "staff";

static LOCK: Mutex<()> = Mutex::new(());

/// The shared Canaille, reset to its seed, held by one test until dropped.
pub struct Canaille {
    /// Base URL, `http://127.0.0.1:8088/scim/v2` by default.
    pub url: String,
    /// A bearer token of Canaille's own database.
    pub token: String,
    port: u16,
    dir: String,
    _turn: MutexGuard<'static, ()>,
    /// Held locked (`File::lock`) until dropped.
    _file_turn: std::fs::File,
}

/// The testbed's Canaille for `test`, its data reset to the seed. Without the test servers:
/// one `SKIPPED` line and the end of this test binary ([`super::skip_live_tests`]).
pub fn canaille(test: &str) -> Option<Canaille> {
    let vars = ["CANAILLE_SCIM_URL", "CANAILLE_TOKEN", "CANAILLE_DIR"].map(std::env::var);
    let [Ok(url), Ok(token), Ok(dir)] = vars else {
        // CI starts every test server: a skip there would hide a missing server.
        assert!(
            !super::testbed_required(),
            "{test}: CANAILLE_SCIM_URL/CANAILLE_TOKEN/CANAILLE_DIR are not set under CI: scripts/test.sh must start Canaille"
        );
        let _ = test;
        super::skip_live_tests("CANAILLE_SCIM_URL");
    };
    let port = url
        .strip_prefix("http://127.0.0.1:")
        .and_then(|rest| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("CANAILLE_SCIM_URL {url} is not http://127.0.0.1:PORT/..."));
    let turn = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let lock_path = std::path::Path::new(&dir).join("tests.lock");
    let file_turn = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("{}: {e}", lock_path.display()));
    file_turn
        .lock()
        .unwrap_or_else(|e| panic!("locking {}: {e}", lock_path.display()));
    let c = Canaille {
        url,
        token,
        port,
        dir,
        _turn: turn,
        _file_turn: file_turn,
    };
    c.reset();
    Some(c)
}

impl Canaille {
    /// The loopback port it listens on (for a proxy in front of it).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The base URL's path, `/scim/v2`.
    pub fn base_path(&self) -> &str {
        self.url.split_once(&format!(":{}", self.port)).unwrap().1
    }

    /// Puts the data back to the seed (same ids; the token stays valid).
    pub fn reset(&self) {
        let out = Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/testbed/canaille.sh"
            ))
            .arg("reset-data")
            .env("IDRELAY_CANAILLE_DIR", &self.dir)
            .env("IDRELAY_CANAILLE_PORT", self.port.to_string())
            .output()
            .expect("run scripts/testbed/canaille.sh reset-data");
        assert!(
            out.status.success(),
            "canaille.sh reset-data failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// One request under the base URL (`path` like `/Users/staff.owner`): status and body
    /// (JSON, or the text as a JSON string: some of Canaille's errors are HTML pages).
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let prefix = self.url.split_once(&format!(":{}", self.port)).unwrap().1;
        let body = body.map(Value::to_string);
        let (status, text) = super::http_request(
            self.port,
            method,
            &format!("{prefix}{path}"),
            &self.token,
            body.as_deref(),
        )
        .unwrap_or_else(|e| panic!("{method} {path} to Canaille: {e}"));
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// A user by userName (Canaille also resolves `/Users/<userName>`); panics unless 200.
    pub fn user(&self, user_name: &str) -> Value {
        let (status, v) = self.request("GET", &format!("/Users/{user_name}"), None);
        assert_eq!(status, 200, "GET /Users/{user_name}: {v}");
        v
    }

    /// Every resource of "Users" or "Groups" (Canaille ignores `filter` anyway).
    pub fn all(&self, endpoint: &str) -> Vec<Value> {
        let (status, v) = self.request("GET", &format!("/{endpoint}"), None);
        assert_eq!(status, 200, "GET /{endpoint}: {v}");
        v["Resources"].as_array().cloned().unwrap_or_default()
    }
}
