//! A throwaway client PKI for the TLS tests: a private client CA and a client certificate
//! it issued, made with `openssl` (Debian package `openssl`) in a temp dir removed on drop.

use std::path::{Path, PathBuf};

use idrelay::net::http::ClientCert;

/// Runs `openssl` with `args` in `dir`; panics with its output on failure.
pub fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is needed by this test (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A private client CA and a client certificate it issued, made with openssl in a temp dir.
pub struct ClientPki {
    dir: PathBuf,
}

impl ClientPki {
    /// Makes the CA and the certificate.
    pub fn new() -> ClientPki {
        let dir = std::env::temp_dir().join(format!(
            "idrelay-mtls-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let mut ca = vec![
            "req",
            "-x509",
            "-days",
            "2",
            "-subj",
            "/CN=idrelay test client CA",
        ];
        ca.extend(ec);
        ca.extend(["-keyout", "client-ca.key", "-out", "client-ca.pem"]);
        openssl(&dir, &ca);
        let mut csr = vec!["req", "-subj", "/CN=idrelay-agent"];
        csr.extend(ec);
        csr.extend(["-keyout", "client.key", "-out", "client.csr"]);
        openssl(&dir, &csr);
        std::fs::write(
            dir.join("client.ext"),
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "client.csr",
                "-CA",
                "client-ca.pem",
                "-CAkey",
                "client-ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "client.ext",
                "-out",
                "client.pem",
            ],
        );
        ClientPki { dir }
    }

    /// The client CA's certificate (PEM), for a server that asks for client certificates.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("client-ca.pem")
    }

    /// The client certificate and key, as the agent's config names them.
    pub fn cert(&self) -> ClientCert {
        ClientCert {
            cert_file: self.dir.join("client.pem"),
            key_file: self.dir.join("client.key"),
        }
    }
}

impl Drop for ClientPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
