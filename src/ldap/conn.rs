//! One bound connection to the directory: the TLS mode (one rule for reads and writes:
//! [`tls_mode`]), connect, simple bind, and how ldap3's errors become [`LdapError`]s that
//! name the URL, the operation and the cause. Used by the read worker, the feeds and the
//! write thread alike.

use std::sync::Arc;
use std::time::Duration;

use futures_rustls::rustls;
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings};
use smol::channel::Receiver;

use super::gate::Gate;
use super::{DirectoryConfig, LdapError, ResultCode};

/// Maps an ldap3 error of an operation on an open connection.
pub(super) fn op_error(
    cfg: &DirectoryConfig,
    e: ldap3::LdapError,
    what: impl Fn() -> String,
) -> LdapError {
    use ldap3::LdapError as E;
    match e {
        E::Timeout { .. } => LdapError::Timeout {
            operation: what(),
            after: cfg.timeout,
        },
        E::Io { source } => LdapError::ConnectionLost {
            url: cfg.url.clone(),
            detail: format!("{}: {source}", what()),
        },
        E::OpSend { .. }
        | E::ResultRecv { .. }
        | E::IdScrubSend { .. }
        | E::MiscSend { .. }
        | E::EndOfStream => LdapError::ConnectionLost {
            url: cfg.url.clone(),
            detail: format!("{}: the connection is closed", what()),
        },
        other => LdapError::Protocol {
            detail: format!("{}: {other}", what()),
        },
    }
}

/// Opens one connection (TLS / StartTLS per `tls`), starts its driver task, and binds.
/// [`connect_bound`], unless `cancel` closes first (the consumer dropped its stream):
/// `None` then, and no connection is left behind.
pub(super) async fn connect_unless_cancelled(
    cfg: &DirectoryConfig,
    tls: Option<&(&'static str, Arc<rustls::ClientConfig>)>,
    cancel: &Receiver<()>,
    gate: Gate,
) -> Option<Result<Ldap, LdapError>> {
    smol::future::or(async { Some(connect_gated(cfg, tls, gate).await) }, async {
        let _ = cancel.recv().await;
        None
    })
    .await
}

pub(super) async fn connect_bound(
    cfg: &DirectoryConfig,
    tls: Option<&(&'static str, Arc<rustls::ClientConfig>)>,
) -> Result<Ldap, LdapError> {
    connect_gated(cfg, tls, Gate::default()).await
}

/// As [`connect_bound`], with the connection's ldap3 task run behind `gate` (`gate.rs`).
async fn connect_gated(
    cfg: &DirectoryConfig,
    tls: Option<&(&'static str, Arc<rustls::ClientConfig>)>,
    gate: Gate,
) -> Result<Ldap, LdapError> {
    let mut settings = LdapConnSettings::new().set_conn_timeout(cfg.timeout);
    if let Some((mode, config)) = tls {
        settings = settings
            .set_config(config.clone())
            .set_starttls(*mode == "StartTLS");
    }
    let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &cfg.url)
        .await
        .map_err(|e| connect_error(&cfg.url, tls.is_some(), cfg.timeout, e))?;
    let url = cfg.url.clone();
    tokio::spawn(async move {
        if let Err(e) = gate.run(conn.drive()).await {
            log::warn!("LDAP connection to {url} ended: {e}");
        }
    });
    bind(cfg, &mut ldap).await?;
    Ok(ldap)
}

/// Simple bind; an empty bind DN means anonymous (no bind at all).
async fn bind(cfg: &DirectoryConfig, ldap: &mut Ldap) -> Result<(), LdapError> {
    let dn = cfg.bind_dn.as_str();
    if dn.is_empty() {
        return Ok(());
    }
    if cfg.password.expose().is_empty() {
        return Err(LdapError::EmptyPassword { dn: dn.to_owned() });
    }
    let operation = || format!("bind as {dn:?} to {}", cfg.url);
    let res = ldap
        .with_timeout(cfg.timeout)
        .simple_bind(dn, cfg.password.expose())
        .await
        .map_err(|e| op_error(cfg, e, operation))?;
    if res.rc != 0 {
        return Err(LdapError::Bind {
            url: cfg.url.clone(),
            dn: dn.to_owned(),
            code: ResultCode(res.rc),
            message: res.text,
        });
    }
    Ok(())
}

/// `Some("ldaps")` / `Some("StartTLS")` / `None` for the URL scheme and StartTLS setting.
pub(crate) fn tls_mode(url: &str, starttls: bool) -> Result<Option<&'static str>, LdapError> {
    let invalid = |detail: &str| LdapError::InvalidUrl {
        url: url.to_owned(),
        detail: detail.to_owned(),
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(invalid("expected ldap://host:port or ldaps://host:port"));
    };
    match (scheme.to_ascii_lowercase().as_str(), starttls) {
        _ if rest.is_empty() || rest.starts_with('/') || rest.starts_with(':') => {
            Err(invalid("no host"))
        }
        ("ldaps", false) => Ok(Some("ldaps")),
        ("ldaps", true) => Err(invalid(
            "StartTLS is for ldap:// URLs; ldaps:// is TLS from the start",
        )),
        ("ldap", true) => Ok(Some("StartTLS")),
        ("ldap", false) => Ok(None),
        _ => Err(invalid("the scheme must be ldap or ldaps")),
    }
}

/// Maps an ldap3 error from connection set-up (TCP, TLS, StartTLS).
fn connect_error(url: &str, tls: bool, timeout: Duration, e: ldap3::LdapError) -> LdapError {
    use ldap3::LdapError as E;
    use std::io::ErrorKind as K;
    let url_s = url.to_owned();
    match e {
        E::UrlParsing { source } => LdapError::InvalidUrl {
            url: url_s,
            detail: source.to_string(),
        },
        E::UnknownScheme(s) => LdapError::InvalidUrl {
            url: url_s,
            detail: format!("unknown scheme {s:?}"),
        },
        E::Timeout { .. } => LdapError::Timeout {
            operation: format!("connect to {url}"),
            after: timeout,
        },
        E::Rustls { source } => LdapError::Tls {
            url: url_s,
            detail: source.to_string(),
        },
        E::DNSName { source } => LdapError::Tls {
            url: url_s,
            detail: format!("the host is not a valid TLS server name: {source}"),
        },
        E::LdapResult { result } => LdapError::Tls {
            url: url_s,
            detail: format!(
                "the server refused StartTLS: {}{}",
                ResultCode(result.rc),
                if result.text.is_empty() {
                    String::new()
                } else {
                    format!(": {}", result.text)
                }
            ),
        },
        E::Io { source } => {
            let rustls_error = source
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .map(ToString::to_string);
            let network = matches!(
                source.kind(),
                K::ConnectionRefused
                    | K::NotFound
                    | K::AddrNotAvailable
                    | K::TimedOut
                    | K::HostUnreachable
                    | K::NetworkUnreachable
            );
            match rustls_error {
                Some(detail) => LdapError::Tls { url: url_s, detail },
                None if tls && !network => LdapError::Tls {
                    url: url_s,
                    detail: source.to_string(),
                },
                None => LdapError::Connect {
                    url: url_s,
                    detail: source.to_string(),
                },
            }
        }
        other => LdapError::Connect {
            url: url_s,
            detail: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_mode_follows_scheme_and_starttls() {
        assert_eq!(tls_mode("ldap://127.0.0.1:389", false).unwrap(), None);
        assert_eq!(
            tls_mode("ldap://127.0.0.1:389", true).unwrap(),
            Some("StartTLS")
        );
        assert_eq!(tls_mode("LDAPS://127.0.0.1", false).unwrap(), Some("ldaps"));
        assert!(tls_mode("ldaps://127.0.0.1", true).is_err());
        assert!(tls_mode("http://127.0.0.1", false).is_err());
        assert!(tls_mode("127.0.0.1:389", false).is_err());
        assert!(tls_mode("ldap://", false).is_err());
        assert!(tls_mode("ldap:///dc=x", false).is_err());
    }
}
