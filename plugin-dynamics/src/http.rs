//! The HTTP clients' shared setup: TLS trust (extra roots from the configured PEM
//! file, or, when asked, no certificate checks) and time limits.

use std::time::Duration;

use plugin_api::PluginError;

/// What a configuration says about TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub allow_invalid_certificates: bool,
    /// PEM certificates read from `ca_certificate_file` when the configuration opened.
    pub extra_roots_pem: Option<Vec<u8>>,
}

impl TlsSettings {
    /// Reads the CA file named in the settings (checked when the configuration was saved).
    pub fn load(
        allow_invalid_certificates: bool,
        ca_file: Option<&str>,
    ) -> Result<Self, PluginError> {
        let extra_roots_pem = match ca_file {
            None => None,
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                PluginError::configuration(format!(
                    "cannot read the CA certificate file {path}: {e}"
                ))
            })?),
        };
        Ok(Self {
            allow_invalid_certificates,
            extra_roots_pem,
        })
    }
}

/// A client with the configuration's trust and the given time limits.
pub fn client(
    tls: &TlsSettings,
    timeout: Duration,
    close_connections: bool,
) -> Result<reqwest::Client, PluginError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .timeout(timeout)
        .user_agent(concat!(
            "middleware-engine-dynamics365/",
            env!("CARGO_PKG_VERSION")
        ))
        .tls_danger_accept_invalid_certs(tls.allow_invalid_certificates);
    if close_connections {
        builder = builder.pool_max_idle_per_host(0);
    }
    if let Some(pem) = &tls.extra_roots_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
            PluginError::configuration(format!(
                "the CA certificate file holds no usable PEM certificate: {e}"
            ))
        })?;
        builder = builder.tls_certs_merge(certs);
    }
    builder
        .build()
        .map_err(|e| PluginError::configuration(format!("cannot set up HTTPS: {e}")))
}

/// Describes a transport error in an admin's terms, walking the error's causes.
pub fn describe(e: &reqwest::Error) -> String {
    let mut causes = Vec::new();
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !causes.iter().any(|c: &String| c.contains(&text)) {
            causes.push(text);
        }
        source = s.source();
    }
    let all = causes.join(": ");
    let lower = all.to_lowercase();
    if lower.contains("certificate")
        || lower.contains("unknownissuer")
        || lower.contains("invalid peer")
    {
        format!("{all} (the server's certificate is not trusted: set the CA certificate file, or for testing only allow invalid certificates)")
    } else if e.is_timeout() {
        format!("no answer in time ({all})")
    } else if e.is_connect() {
        format!("cannot connect ({all})")
    } else {
        all
    }
}

/// A transport failure is worth a retry: the network or the remote may recover.
pub fn transport_error(what: &str, e: &reqwest::Error) -> PluginError {
    PluginError::retryable(format!("{what}: {}", describe(e)))
}
