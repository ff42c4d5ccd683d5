//! The agent's credential at the hub (`[relay]`): a static bearer token, or tokens from an
//! OAuth2 client credentials grant ([`crate::scim::oauth::TokenSource`], the same code the
//! SCIM client uses), replaced before they expire and when the hub answers 401.
//!
//! Never logs a token or the client secret; errors name the token endpoint only.

use std::sync::Arc;
use std::time::Duration;

use crate::net::http::HttpClient;
use crate::scim::oauth::Auth as ScimAuth;
use crate::scim::oauth::{TokenError, TokenSource};
use crate::secret::Secret;

/// What the relay puts in `Authorization: Bearer`.
#[derive(Debug, Clone)]
pub enum HubCredential {
    /// `relay.token_file` / `relay.token_env`.
    Static(Secret),
    /// `relay.token_url` and the client's keys.
    OAuth(Arc<TokenSource>),
}

impl HubCredential {
    /// The credential of `auth`; `token_http` reaches the token endpoint (built only when
    /// OAuth2 is configured).
    pub fn new(
        auth: &ScimAuth,
        token_http: impl FnOnce() -> Result<HttpClient, String>,
    ) -> Result<HubCredential, String> {
        Ok(match auth {
            ScimAuth::Bearer(t) => HubCredential::Static(t.clone()),
            ScimAuth::ClientCredentials(cc) => HubCredential::OAuth(Arc::new(TokenSource::new(
                token_http().map_err(|e| format!("relay.token_url: {e}"))?,
                cc.clone(),
            ))),
        })
    }

    /// The token to send now, and its generation (for [`HubCredential::refused`]).
    pub async fn bearer(&self) -> Result<(Secret, u64), TokenError> {
        match self {
            HubCredential::Static(t) => Ok((t.clone(), 0)),
            HubCredential::OAuth(src) => src.bearer().await,
        }
    }

    /// The hub answered 401 to the token of `generation`: true when a new one will be
    /// fetched (OAuth2), so one more try is worth it.
    pub fn refused(&self, generation: u64) -> bool {
        match self {
            HubCredential::Static(_) => false,
            HubCredential::OAuth(src) => {
                log::info!(
                    "relay: the hub answered 401; fetching a new OAuth2 token from {}",
                    src.token_url()
                );
                src.expire(generation);
                true
            }
        }
    }

    /// For `check`: `None` for a static token, else the token endpoint and the lifetime of
    /// a token fetched now.
    pub async fn grant(&self) -> Option<Result<(String, Option<Duration>), TokenError>> {
        match self {
            HubCredential::Static(_) => None,
            HubCredential::OAuth(src) => Some(src.fetch_now().await.map(|l| (src.token_url(), l))),
        }
    }

    /// Which key to look at when the hub refuses the credential.
    pub fn keys(&self) -> &'static str {
        match self {
            HubCredential::Static(_) => "relay.token_file",
            HubCredential::OAuth(_) => "relay.client_id and the client secret",
        }
    }
}
