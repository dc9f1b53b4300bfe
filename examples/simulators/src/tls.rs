//! Test certificates made at start for `127.0.0.1` and `localhost`: written out as PEM
//! so that a configuration can trust it (`ca_certificate_file`), or kept in memory
//! for a sink a test starts and trusts by its PEM.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum_server::tls_rustls::RustlsConfig;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub struct TestCertificate {
    pub cert_pem: String,
    key_pem: String,
    /// Where the certificate was written.
    pub cert_path: PathBuf,
}

impl TestCertificate {
    /// Makes a self-signed certificate and writes it to `dir/<name>.pem`.
    pub fn generate(dir: &Path, name: &str) -> Result<Self, String> {
        let Identity { cert_pem, key_pem } = Identity::generate()?;
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let cert_path = dir.join(format!("{name}.pem"));
        std::fs::write(&cert_path, &cert_pem)
            .map_err(|e| format!("cannot write {}: {e}", cert_path.display()))?;
        Ok(Self {
            cert_pem,
            key_pem,
            cert_path,
        })
    }

    pub async fn rustls_config(&self) -> Result<RustlsConfig, String> {
        axum_config(&self.cert_pem, &self.key_pem).await
    }
}

/// A self-signed certificate and its key, in memory only. The certificate is its own
/// CA: a client trusts it by adding `cert_pem` as a root.
pub struct Identity {
    pub cert_pem: String,
    key_pem: String,
}

impl Identity {
    pub fn generate() -> Result<Self, String> {
        let names = vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
            "::1".to_owned(),
        ];
        let certified = rcgen::generate_simple_self_signed(names)
            .map_err(|e| format!("cannot make a test certificate: {e}"))?;
        Ok(Self {
            cert_pem: certified.cert.pem(),
            key_pem: certified.signing_key.serialize_pem(),
        })
    }

    /// For an axum server (HTTPS).
    pub async fn rustls_config(&self) -> Result<RustlsConfig, String> {
        axum_config(&self.cert_pem, &self.key_pem).await
    }

    /// For a server that upgrades its own connections (SMTP's STARTTLS, SMTPS). The
    /// provider is named, not the process default: the workspace may build two.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        let cert = CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|e| format!("cannot read the test certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| format!("cannot read the test key: {e}"))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot configure TLS: {e}"))?
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .map_err(|e| format!("cannot load the test certificate: {e}"))?;
        Ok(Arc::new(config))
    }
}

async fn axum_config(cert_pem: &str, key_pem: &str) -> Result<RustlsConfig, String> {
    RustlsConfig::from_pem(
        cert_pem.to_owned().into_bytes(),
        key_pem.to_owned().into_bytes(),
    )
    .await
    .map_err(|e| format!("cannot load the test certificate: {e}"))
}
