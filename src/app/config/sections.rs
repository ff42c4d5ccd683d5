//! `Config::parse`, one table at a time: each function takes its table as the file wrote
//! it and returns that section's settings, or the first error naming the table's key.

use std::path::Path;
use std::time::Duration;

use super::*;

/// What every section needs: the file's path (for errors) and where secrets come from.
pub(super) struct Cx<'a> {
    pub(super) path: &'a Path,
    pub(super) secrets: &'a dyn SecretSource,
}

impl Cx<'_> {
    fn invalid(&self, key: &'static str, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            key,
            message,
        }
    }

    /// `[agent]`.
    pub(super) fn agent(&self, a: RawAgent) -> Result<AgentConfig, ConfigError> {
        let invalid = |k, m| self.invalid(k, m);
        let id = a.id.trim().to_string();
        if id.is_empty()
            || id.len() > 64
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(invalid(
                "agent.id",
                "must be 1 to 64 characters of letters, digits, '-', '_' or '.'".into(),
            ));
        }
        if a.state_dir.as_os_str().is_empty() {
            return Err(invalid("agent.state_dir", "must not be empty".into()));
        }

        Ok(AgentConfig {
            id,
            state_dir: a.state_dir,
        })
    }

    /// `[directory]`.
    pub(super) fn directory(&self, d: RawDirectory) -> Result<DirectorySettings, ConfigError> {
        let (path, secrets) = (self.path, self.secrets);
        let invalid = |k, m| self.invalid(k, m);
        let url = d.url.trim().to_string();
        let lower = url.to_ascii_lowercase();
        let is_ldaps = lower.starts_with("ldaps://");
        let host = url.split_once("://").map(|(_, h)| h).unwrap_or("");
        if !(lower.starts_with("ldap://") || is_ldaps) || host.is_empty() {
            return Err(invalid(
                "directory.url",
                format!("`{url}` is not allowed: use ldap://HOST[:PORT] or ldaps://HOST[:PORT]"),
            ));
        }
        if is_ldaps && d.starttls {
            return Err(invalid(
                "directory.starttls",
                "StartTLS cannot be used with an ldaps:// URL (it is TLS already); set it to false or use ldap://".into(),
            ));
        }
        let password = read_secret(
            path,
            secrets,
            ("directory.password_file", d.password_file.as_deref()),
            ("directory.password_env", d.password_env.as_deref()),
        )?;
        if d.bind_dn.trim().is_empty() {
            return Err(invalid("directory.bind_dn", "must not be empty".into()));
        }
        let base_dn = d.base_dn.trim().to_string();
        if !looks_like_dn(&base_dn) {
            return Err(invalid(
                "directory.base_dn",
                format!("`{base_dn}` is not a DN (expected e.g. dc=branch,dc=test)"),
            ));
        }
        let kind = match d.kind.as_str() {
            "auto" => KindSetting::Auto,
            "active-directory" => KindSetting::ActiveDirectory,
            "openldap" => KindSetting::OpenLdap,
            "389ds" => KindSetting::Ds389,
            "generic" => KindSetting::Generic,
            other => {
                return Err(invalid(
                    "directory.kind",
                    format!(
                        "`{other}` is not allowed: use auto, active-directory, openldap, 389ds or generic"
                    ),
                ))
            }
        };
        if d.timeout_secs == 0 || d.timeout_secs > 3600 {
            return Err(invalid(
                "directory.timeout_secs",
                "must be 1 to 3600".into(),
            ));
        }
        if !(1..=10_000).contains(&d.page_size) {
            return Err(invalid("directory.page_size", "must be 1 to 10000".into()));
        }
        use crate::ldap::members::MemberRead;
        let member_reads = match d.member_reads.as_deref() {
            None | Some("auto") => None,
            Some("entry") => Some(MemberRead::Entry),
            Some("ranged") => Some(MemberRead::Ranged),
            Some("member_of") => Some(MemberRead::MemberOf),
            Some(other) => {
                return Err(invalid(
                    "directory.member_reads",
                    format!("`{other}` is not allowed: use auto, entry, ranged or member_of"),
                ))
            }
        };

        Ok(DirectorySettings {
            url,
            starttls: d.starttls,
            ca_file: d.ca_file,
            bind_dn: d.bind_dn.trim().to_string(),
            password,
            base_dn,
            kind,
            timeout: Duration::from_secs(d.timeout_secs),
            page_size: d.page_size,
            allow_plaintext: d.allow_plaintext,
            member_reads,
        })
    }

    /// `[scope]`, under the directory's `base_dn`.
    pub(super) fn scope(&self, sc: RawScope, base_dn: &str) -> Result<ScopeConfig, ConfigError> {
        let invalid = |k, m| self.invalid(k, m);
        let include = match sc.include {
            None => vec![base_dn.to_string()],
            Some(list) if list.is_empty() => {
                return Err(invalid(
                    "scope.include",
                    "must list at least one subtree (leave the key out to sync all of directory.base_dn)".into(),
                ))
            }
            Some(list) => list.into_iter().map(|s| s.trim().to_string()).collect(),
        };
        for dn in &include {
            if !looks_like_dn(dn) || !dn_is_under(dn, base_dn) {
                return Err(invalid(
                    "scope.include",
                    format!("`{dn}` is not a DN under directory.base_dn `{base_dn}`"),
                ));
            }
        }
        let (scope_groups, scope_nested) =
            scope_groups(sc.groups, sc.nested, base_dn).map_err(|(k, m)| invalid(k, m))?;
        for (key, filter) in [
            ("scope.user_filter", &sc.user_filter),
            ("scope.group_filter", &sc.group_filter),
        ] {
            if let Some(f) = filter {
                crate::ldap::filter::check(f).map_err(|m| invalid(key, m))?;
            }
        }

        Ok(ScopeConfig {
            include,
            user_filter: sc.user_filter,
            group_filter: sc.group_filter,
            groups: scope_groups,
            nested: scope_nested,
        })
    }

    /// `[scim]`.
    pub(super) fn scim(&self, s: RawScim) -> Result<ScimSettings, ConfigError> {
        let (path, secrets) = (self.path, self.secrets);
        let invalid = |k, m| self.invalid(k, m);
        let scim_url = s.url.trim().trim_end_matches('/').to_string();
        let scim_lower = scim_url.to_ascii_lowercase();
        if !(scim_lower.starts_with("http://") || scim_lower.starts_with("https://"))
            || scim_url.contains(char::is_whitespace)
        {
            return Err(invalid(
                "scim.url",
                format!("`{scim_url}` is not allowed: use http(s)://HOST[:PORT]/PATH (the SCIM base URL)"),
            ));
        }
        if scim_url.contains('@') {
            return Err(invalid(
                "scim.url",
                "must not carry credentials; put the bearer token in scim.token_file or scim.token_env".into(),
            ));
        }
        let scim_auth = credentials::read(
            path,
            secrets,
            &credentials::SCIM,
            &credentials::RawCredential {
                token_file: s.token_file.as_deref(),
                token_env: s.token_env.as_deref(),
                token_url: s.token_url.as_deref(),
                client_id: s.client_id.as_deref(),
                client_secret_file: s.client_secret_file.as_deref(),
                client_secret_env: s.client_secret_env.as_deref(),
                scope: s.scope.as_deref(),
                client_auth: s.client_auth.as_deref(),
            },
        )?;
        if s.timeout_secs == 0 || s.timeout_secs > 3600 {
            return Err(invalid("scim.timeout_secs", "must be 1 to 3600".into()));
        }

        let scim_transport = transport(
            path,
            secrets,
            RawTransport {
                table: "scim",
                proxy: s.proxy.as_deref(),
                proxy_user: s.proxy_user.as_deref(),
                proxy_password_file: s.proxy_password_file.as_deref(),
                proxy_password_env: s.proxy_password_env.as_deref(),
                no_proxy: &s.no_proxy,
                pin_sha256: &s.pin_sha256,
                client_cert_file: s.client_cert_file.as_deref(),
                client_key_file: s.client_key_file.as_deref(),
            },
        )?;
        Ok(ScimSettings {
            url: scim_url,
            auth: scim_auth,
            ca_file: s.ca_file,
            timeout: Duration::from_secs(s.timeout_secs),
            transport: scim_transport,
            allow_plaintext: s.allow_plaintext,
        })
    }

    /// `[sync]`.
    pub(super) fn sync(&self, y: RawSync) -> Result<SyncSettings, ConfigError> {
        let invalid = |k, m| self.invalid(k, m);
        if !(1..=64).contains(&y.concurrency) {
            return Err(invalid("sync.concurrency", "must be 1 to 64".into()));
        }
        if !(1..=20).contains(&y.max_attempts) {
            return Err(invalid("sync.max_attempts", "must be 1 to 20".into()));
        }
        let user_delete = match y.user_delete.as_str() {
            "deactivate" => UserDelete::Deactivate,
            "delete" => UserDelete::Delete,
            other => {
                return Err(invalid(
                    "sync.user_delete",
                    format!("`{other}` is not one of: deactivate, delete"),
                ))
            }
        };
        if y.delete_threshold_percent > 100 {
            return Err(invalid(
                "sync.delete_threshold_percent",
                format!(
                    "{} is not a percentage: use 0 to 100 (0: no share rule)",
                    y.delete_threshold_percent
                ),
            ));
        }
        if y.delete_threshold > 1_000_000 {
            return Err(invalid(
                "sync.delete_threshold",
                "must be 0 (hold every delete) to 1000000".into(),
            ));
        }
        if !(60..=30 * 86_400).contains(&y.delete_interval_secs) {
            return Err(invalid(
                "sync.delete_interval_secs",
                "must be 60 to 2592000 (30 days)".into(),
            ));
        }
        if y.delete_settle_secs > 3600 {
            return Err(invalid(
                "sync.delete_settle_secs",
                "must be 0 (weigh each queue read alone) to 3600".into(),
            ));
        }
        if y.full_pass_interval_secs != 0
            && !(600..=30 * 86_400).contains(&y.full_pass_interval_secs)
        {
            return Err(invalid(
                "sync.full_pass_interval_secs",
                "must be 0 (never) or 600 to 2592000 (30 days)".into(),
            ));
        }
        if !(1..=3600).contains(&y.poll_interval_secs) {
            return Err(invalid(
                "sync.poll_interval_secs",
                "must be 1 to 3600".into(),
            ));
        }
        let bulk = match y.bulk.as_str() {
            "auto" => true,
            "off" => false,
            other => {
                return Err(invalid(
                    "sync.bulk",
                    format!("`{other}` is not one of: auto, off"),
                ))
            }
        };
        let feed = match y.feed.as_str() {
            "auto" => FeedKind::Auto,
            "syncrepl" => FeedKind::Syncrepl,
            "dirsync" => FeedKind::DirSync,
            "usn" => FeedKind::Usn,
            "timestamp" => FeedKind::Timestamp,
            other => {
                return Err(invalid(
                    "sync.feed",
                    format!("`{other}` is not one of: auto, syncrepl, dirsync, usn, timestamp"),
                ))
            }
        };
        if !(1..=1000).contains(&y.member_chunk) {
            return Err(invalid("sync.member_chunk", "must be 1 to 1000".into()));
        }

        Ok(SyncSettings {
            concurrency: y.concurrency,
            adaptive_concurrency: y.adaptive_concurrency,
            profile_file: y.profile_file,
            soft_match: y.soft_match,
            max_attempts: y.max_attempts,
            user_delete,
            delete_threshold: y.delete_threshold,
            delete_threshold_percent: y.delete_threshold_percent,
            delete_floor: y.delete_floor,
            delete_interval: Duration::from_secs(y.delete_interval_secs),
            delete_settle: Duration::from_secs(y.delete_settle_secs),
            full_pass_interval: Duration::from_secs(y.full_pass_interval_secs),
            poll_interval: Duration::from_secs(y.poll_interval_secs),
            feed,
            member_chunk: y.member_chunk,
            bulk,
            nested_groups: nested_groups(y.nested_groups.as_deref())
                .map_err(|m| invalid("sync.nested_groups", m))?,
        })
    }

    /// `[queue]`.
    pub(super) fn queue(&self, q: RawQueue) -> Result<QueueSettings, ConfigError> {
        let invalid = |k, m| self.invalid(k, m);
        const MIN_QUEUE: u64 = 64 << 10;
        const MAX_QUEUE: u64 = 16 << 30;
        if !(MIN_QUEUE..=MAX_QUEUE).contains(&q.max_bytes) {
            return Err(invalid(
                "queue.max_bytes",
                format!("must be {MIN_QUEUE} (64 KiB) to {MAX_QUEUE} (16 GiB) bytes"),
            ));
        }

        Ok(QueueSettings {
            max_bytes: q.max_bytes,
        })
    }

    /// `[relay]`; the group defaults to the agent's `id`.
    pub(super) fn relay(&self, r: RawRelay, id: &str) -> Result<RelaySettings, ConfigError> {
        let (path, secrets) = (self.path, self.secrets);
        let invalid = |k, m| self.invalid(k, m);
        let url = r.url.trim().trim_end_matches('/').to_string();
        let parsed =
            url::Url::parse(&url).map_err(|e| invalid("relay.url", format!("not a URL: {e}")))?;
        match parsed.scheme() {
            // Plain http to a host that is not loopback: see security::validate.
            "https" | "http" => {}
            other => {
                return Err(invalid(
                    "relay.url",
                    format!("scheme `{other}` is not https"),
                ))
            }
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(invalid(
                "relay.url",
                "must not carry credentials; use relay.token_file".into(),
            ));
        }
        let auth = credentials::read(
            path,
            secrets,
            &credentials::RELAY,
            &credentials::RawCredential {
                token_file: r.token_file.as_deref(),
                token_env: r.token_env.as_deref(),
                token_url: r.token_url.as_deref(),
                client_id: r.client_id.as_deref(),
                client_secret_file: r.client_secret_file.as_deref(),
                client_secret_env: r.client_secret_env.as_deref(),
                scope: r.scope.as_deref(),
                client_auth: r.client_auth.as_deref(),
            },
        )?;
        if !(5..=3600).contains(&r.heartbeat_secs) {
            return Err(invalid("relay.heartbeat_secs", "must be 5 to 3600".into()));
        }
        if !(1..=120).contains(&r.poll_wait_secs) {
            return Err(invalid("relay.poll_wait_secs", "must be 1 to 120".into()));
        }
        let profiles = profile_policy(r.accept_profiles, r.profile_attributes)
            .map_err(|m| invalid("relay.profile_attributes", m))?;
        Ok(RelaySettings {
            url,
            auth,
            ca_file: r.ca_file,
            group: r.group.unwrap_or_else(|| id.to_string()),
            heartbeat: Duration::from_secs(r.heartbeat_secs),
            poll_wait: Duration::from_secs(r.poll_wait_secs),
            transport: transport(
                path,
                secrets,
                RawTransport {
                    table: "relay",
                    proxy: r.proxy.as_deref(),
                    proxy_user: r.proxy_user.as_deref(),
                    proxy_password_file: r.proxy_password_file.as_deref(),
                    proxy_password_env: r.proxy_password_env.as_deref(),
                    no_proxy: &r.no_proxy,
                    pin_sha256: &r.pin_sha256,
                    client_cert_file: r.client_cert_file.as_deref(),
                    client_key_file: r.client_key_file.as_deref(),
                },
            )?,
            profiles,
            allow_plaintext: r.allow_plaintext,
        })
    }
}
