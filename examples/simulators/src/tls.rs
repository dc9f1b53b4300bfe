//! A test certificate made at start for `127.0.0.1` and `localhost`, written out as
//! PEM so that a configuration can trust it (`ca_certificate_file`).

use std::path::{Path, PathBuf};

use axum_server::tls_rustls::RustlsConfig;

pub struct TestCertificate {
    pub cert_pem: String,
    key_pem: String,
    /// Where the certificate was written.
    pub cert_path: PathBuf,
}

impl TestCertificate {
    /// Makes a self-signed certificate and writes it to `dir/<name>.pem`.
    pub fn generate(dir: &Path, name: &str) -> Result<Self, String> {
        let names = vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
            "::1".to_owned(),
        ];
        let certified = rcgen::generate_simple_self_signed(names)
            .map_err(|e| format!("cannot make a test certificate: {e}"))?;
        let cert_pem = certified.cert.pem();
        let key_pem = certified.signing_key.serialize_pem();
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
        RustlsConfig::from_pem(
            self.cert_pem.clone().into_bytes(),
            self.key_pem.clone().into_bytes(),
        )
        .await
        .map_err(|e| format!("cannot load the test certificate: {e}"))
    }
}
