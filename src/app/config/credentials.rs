//! The credential keys that `[scim]` and `[relay]` share: a static bearer token
//! (`token_file` / `token_env`), or OAuth2 client credentials (`token_url`, `client_id`,
//! `client_secret_file` / `client_secret_env`, `scope`, `client_auth`). One reader for both
//! tables, so the two cannot drift apart; every error names the key of the table at hand.

use std::path::Path;

use super::{read_secret, ConfigError, ScimAuth, SecretSource};
use crate::scim::oauth::{ClientAuth, ClientCredentials};

/// The credential keys as one table spells them (errors name them as written).
pub(super) struct Keys {
    pub token_file: &'static str,
    pub token_env: &'static str,
    pub token_url: &'static str,
    pub client_id: &'static str,
    pub client_secret_file: &'static str,
    pub client_secret_env: &'static str,
    pub scope: &'static str,
    pub client_auth: &'static str,
}

macro_rules! keys {
    ($t:literal) => {
        Keys {
            token_file: concat!($t, ".token_file"),
            token_env: concat!($t, ".token_env"),
            token_url: concat!($t, ".token_url"),
            client_id: concat!($t, ".client_id"),
            client_secret_file: concat!($t, ".client_secret_file"),
            client_secret_env: concat!($t, ".client_secret_env"),
            scope: concat!($t, ".scope"),
            client_auth: concat!($t, ".client_auth"),
        }
    };
}

/// `[scim]`'s credential keys.
pub(super) const SCIM: Keys = keys!("scim");
/// `[relay]`'s credential keys.
pub(super) const RELAY: Keys = keys!("relay");

/// The credential keys of one table, as read (serde's `flatten` does not go with
/// `deny_unknown_fields`, so each raw table carries the fields and lends them here).
pub(super) struct RawCredential<'a> {
    pub token_file: Option<&'a Path>,
    pub token_env: Option<&'a str>,
    pub token_url: Option<&'a str>,
    pub client_id: Option<&'a str>,
    pub client_secret_file: Option<&'a Path>,
    pub client_secret_env: Option<&'a str>,
    pub scope: Option<&'a str>,
    pub client_auth: Option<&'a str>,
}

/// A table's credential: a static token, or OAuth2 client credentials when `token_url` is
/// set (the two exclude each other).
pub(super) fn read(
    path: &Path,
    secrets: &dyn SecretSource,
    k: &Keys,
    s: &RawCredential<'_>,
) -> Result<ScimAuth, ConfigError> {
    let invalid = |key: &'static str, message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        key,
        message,
    };
    let Some(token_url) = s.token_url.map(str::trim) else {
        let stray = [
            (k.client_id, s.client_id.is_some()),
            (k.client_secret_file, s.client_secret_file.is_some()),
            (k.client_secret_env, s.client_secret_env.is_some()),
            (k.scope, s.scope.is_some()),
            (k.client_auth, s.client_auth.is_some()),
        ];
        if let Some((key, _)) = stray.iter().find(|(_, set)| *set) {
            return Err(invalid(
                key,
                format!(
                    "is an OAuth2 setting: it needs {} (the token endpoint)",
                    k.token_url
                ),
            ));
        }
        return Ok(ScimAuth::Bearer(read_secret(
            path,
            secrets,
            (k.token_file, s.token_file),
            (k.token_env, s.token_env),
        )?));
    };
    if s.token_file.is_some() || s.token_env.is_some() {
        let key = if s.token_file.is_some() {
            k.token_file
        } else {
            k.token_env
        };
        return Err(invalid(
            key,
            format!(
                "a static token and OAuth2 ({}) exclude each other: keep one",
                k.token_url
            ),
        ));
    }
    let url: crate::net::http::Url = token_url.parse().map_err(|e| {
        invalid(
            k.token_url,
            format!(
                "`{token_url}` is not a URL ({e}): use https://HOST/PATH of the token endpoint"
            ),
        )
    })?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            k.token_url,
            format!(
                "must not carry credentials; put the client secret in {} or {}",
                k.client_secret_file, k.client_secret_env
            ),
        ));
    }
    match url.scheme() {
        // Plain http to a host that is not loopback: see security::validate.
        "https" | "http" => {}
        other => {
            return Err(invalid(
                k.token_url,
                format!("scheme `{other}` is not allowed: use https://"),
            ))
        }
    }
    let client_id = match s.client_id.map(str::trim) {
        Some(id) if !id.is_empty() && !id.contains(char::is_control) => id.to_string(),
        Some(_) => {
            return Err(invalid(
                k.client_id,
                "must not be empty or hold control characters".into(),
            ))
        }
        None => {
            return Err(invalid(
                k.client_id,
                format!("missing: OAuth2 ({}) needs the client's id", k.token_url),
            ))
        }
    };
    let client_secret = read_secret(
        path,
        secrets,
        (k.client_secret_file, s.client_secret_file),
        (k.client_secret_env, s.client_secret_env),
    )?;
    let auth = match s.client_auth.unwrap_or("client_secret_basic") {
        "client_secret_basic" => ClientAuth::Basic,
        "client_secret_post" => ClientAuth::Post,
        other => {
            return Err(invalid(
                k.client_auth,
                format!("`{other}` is not one of: client_secret_basic, client_secret_post"),
            ))
        }
    };
    Ok(ScimAuth::ClientCredentials(ClientCredentials {
        token_url: url,
        client_id,
        client_secret,
        scope: s.scope.filter(|v| !v.trim().is_empty()).map(str::to_string),
        auth,
    }))
}
