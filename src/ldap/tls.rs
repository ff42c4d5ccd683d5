//! The rustls client configuration for `ldaps://` and StartTLS (ring provider).
//!
//! Trust comes from exactly one place: the configured CA file (PEM), or, when none is
//! configured, the system trust store (the PEM bundle named by `SSL_CERT_FILE`, else the
//! first bundle found among the usual distribution paths). Certificate verification is never
//! switched off. The same rustls (0.23) serves ldap3 and futures-rustls, so one crate version
//! is linked.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_rustls::rustls;
use rustls::RootCertStore;

use super::LdapError;

/// System CA bundles, in the order they are tried (Debian/Ubuntu, RHEL/Fedora, Alpine/BSD).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// A client configuration and a sentence saying what it trusts.
pub(crate) struct TlsSetup {
    /// Handed to ldap3's `LdapConnSettings::set_config`.
    pub config: Arc<rustls::ClientConfig>,
    /// "the CA file /etc/idrelay/ca.pem (1 certificate)".
    pub trust: String,
}

/// Builds the client configuration: trust `ca_file` if given, else the system store.
pub(crate) fn client_setup(ca_file: Option<&Path>) -> Result<TlsSetup, LdapError> {
    let (roots, trust) = match ca_file {
        Some(path) => {
            let roots = load_ca_file(path)?;
            let n = roots.len();
            let s = if n == 1 { "" } else { "s" };
            (
                roots,
                format!("the CA file {} ({n} certificate{s})", path.display()),
            )
        }
        None => load_system_store()?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| LdapError::Worker {
            detail: format!("rustls refused its default protocol versions: {e}"),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsSetup {
        config: Arc::new(config),
        trust,
    })
}

/// Every certificate in a PEM file; any unreadable or unusable certificate is an error.
fn load_ca_file(path: &Path) -> Result<RootCertStore, LdapError> {
    let err = |detail: String| LdapError::CaFile {
        path: path.to_owned(),
        detail,
    };
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut store = RootCertStore::empty();
    for (i, cert) in rustls_pemfile::certs(&mut BufReader::new(file)).enumerate() {
        let cert = cert.map_err(|e| err(format!("PEM certificate {}: {e}", i + 1)))?;
        store
            .add(cert)
            .map_err(|e| err(format!("certificate {}: {e}", i + 1)))?;
    }
    if store.is_empty() {
        return Err(err("holds no PEM certificate".into()));
    }
    Ok(store)
}

/// The system bundle: `SSL_CERT_FILE`, else the first of [`SYSTEM_BUNDLES`] that holds at
/// least one usable certificate. Unusable certificates inside a bundle are skipped.
fn load_system_store() -> Result<(RootCertStore, String), LdapError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("SSL_CERT_FILE") {
        candidates.push(PathBuf::from(p));
    }
    candidates.extend(SYSTEM_BUNDLES.iter().map(PathBuf::from));
    let mut tried = Vec::new();
    for path in candidates {
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                tried.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        let mut reader = BufReader::new(file);
        let certs = rustls_pemfile::certs(&mut reader).filter_map(Result::ok);
        let mut store = RootCertStore::empty();
        let (added, _skipped) = store.add_parsable_certificates(certs);
        if added > 0 {
            return Ok((
                store,
                format!(
                    "the system trust store {} ({added} certificates)",
                    path.display()
                ),
            ));
        }
        tried.push(format!("{}: no usable certificate", path.display()));
    }
    Err(LdapError::TrustStore {
        detail: tried.join("; "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_ca_file_is_named_in_the_error() {
        let path = Path::new("/nonexistent/idrelay-test/ca.pem");
        let Err(e) = client_setup(Some(path)) else {
            panic!("a missing CA file must fail");
        };
        let text = e.to_string();
        assert!(text.contains("/nonexistent/idrelay-test/ca.pem"), "{text}");
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("idrelay-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("empty.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err = client_setup(Some(&path)).err().map(|e| e.to_string());
        std::fs::remove_dir_all(&dir).ok();
        assert!(
            err.as_deref()
                .unwrap_or("")
                .contains("holds no PEM certificate"),
            "{err:?}"
        );
    }
}
