//! The Dynamics 365 side: an Entra ID token through azure_identity's
//! ClientSecretCredential (one per configuration, on the configured cloud), and the
//! Dataverse Web API with its required headers and error handling.

use std::sync::Arc;
use std::time::Duration;

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::{Secret, TokenCredential};
use azure_core::http::{ClientOptions, RetryOptions, Transport};
use azure_identity::{ClientSecretCredential, ClientSecretCredentialOptions};
use plugin_api::PluginError;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::http::{self, TlsSettings};

/// Which Entra ID authority to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cloud {
    Public,
    UsGovernment,
    China,
    Custom(String),
}

impl Cloud {
    pub fn parse(text: Option<&str>) -> Self {
        match text.unwrap_or("public") {
            "public" => Self::Public,
            "usgovernment" => Self::UsGovernment,
            "china" => Self::China,
            url => Self::Custom(url.trim_end_matches('/').to_owned()),
        }
    }

    fn configuration(&self) -> CloudConfiguration {
        match self {
            Self::Public => CloudConfiguration::AzurePublic,
            Self::UsGovernment => CloudConfiguration::AzureGovernment,
            Self::China => CloudConfiguration::AzureChina,
            Self::Custom(url) => {
                let mut custom = CustomConfiguration::default();
                custom.authority_host = url.clone();
                CloudConfiguration::from(custom)
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct DynamicsSettings {
    /// The environment URL, without a trailing slash.
    pub url: String,
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
    pub cloud: Cloud,
    pub tls: TlsSettings,
}

/// A Dataverse error answer, or a transport failure, typed for the host.
fn dataverse_error(status: u16, body: &str, retry_after: Option<u64>, what: &str) -> PluginError {
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.chars().take(300).collect());
    let text = format!("Dataverse answered HTTP {status} to {what}: {message}");
    match status {
        429 => PluginError::throttled(text, Duration::from_secs(retry_after.unwrap_or(60))),
        408 | 500..=599 => PluginError::retryable(text),
        _ => PluginError::permanent(text),
    }
}

/// Entra ID's own description (e.g. `AADSTS7000215: Invalid client secret ...`),
/// found in whatever shape azure_identity reports it.
pub fn entra_description(error: &str) -> Option<String> {
    let start = error.find("AADSTS")?;
    let rest = &error[start..];
    let end = rest
        .find("\\r\\n")
        .into_iter()
        .chain(rest.find("\r\n"))
        .chain(rest.find(" Trace ID"))
        .chain(rest.find('"'))
        .min()
        .unwrap_or(rest.len());
    Some(rest[..end].trim().to_owned())
}

/// A response as read: status, the row id from `OData-EntityId`, body.
pub struct Answer {
    pub status: u16,
    pub entity_id: Option<String>,
    pub body: String,
}

pub struct DynamicsClient {
    settings: DynamicsSettings,
    http: reqwest::Client,
    /// Replaced (dropping its token cache) when Dataverse refuses a token.
    credential: Mutex<Arc<ClientSecretCredential>>,
    api: String,
    /// After a 429 no request goes out until its Retry-After has passed (Dataverse
    /// lengthens the wait for clients that keep sending).
    blocked_until: std::sync::Mutex<Option<std::time::Instant>>,
}

impl DynamicsClient {
    pub fn new(settings: DynamicsSettings, timeout: Duration) -> Result<Self, PluginError> {
        let http = http::client(&settings.tls, timeout, false)?;
        let credential = Self::credential(&settings, &http)?;
        Ok(Self {
            api: format!("{}/api/data/v9.2/", settings.url),
            settings,
            http,
            credential: Mutex::new(credential),
            blocked_until: std::sync::Mutex::new(None),
        })
    }

    fn credential(
        settings: &DynamicsSettings,
        http: &reqwest::Client,
    ) -> Result<Arc<ClientSecretCredential>, PluginError> {
        let options = ClientSecretCredentialOptions {
            client_options: ClientOptions {
                // The same trust as every other call; retries are the host's job.
                transport: Some(Transport::new(Arc::new(http.clone()))),
                retry: RetryOptions::none(),
                cloud: Some(Arc::new(settings.cloud.configuration())),
                ..ClientOptions::default()
            },
        };
        ClientSecretCredential::new(
            &settings.tenant_id,
            settings.client_id.clone(),
            Secret::new(settings.client_secret.clone()),
            Some(options),
        )
        .map_err(|e| {
            PluginError::configuration(format!("cannot set up the Entra ID credential: {e}"))
        })
    }

    pub fn url(&self) -> &str {
        &self.settings.url
    }

    /// A token for the environment (cached by the credential until near expiry).
    pub async fn token(&self) -> Result<String, PluginError> {
        let credential = Arc::clone(&*self.credential.lock().await);
        let scope = format!("{}/.default", self.settings.url);
        match credential.get_token(&[scope.as_str()], None).await {
            Ok(token) => Ok(token.token.secret().to_owned()),
            Err(e) => {
                let text = e.to_string();
                Err(match entra_description(&text) {
                    Some(description) => PluginError::configuration(format!(
                        "Entra ID refused the credentials: {description}"
                    )),
                    None => PluginError::retryable(format!(
                        "cannot get an Entra ID token: {}",
                        text.lines().next().unwrap_or("")
                    )),
                })
            }
        }
    }

    async fn renew_credential(&self) -> Result<(), PluginError> {
        let fresh = Self::credential(&self.settings, &self.http)?;
        *self.credential.lock().await = fresh;
        Ok(())
    }

    /// Sends one Web API request; on 401 a new token and one more try.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        what: &str,
    ) -> Result<Answer, PluginError> {
        self.send_with(method, path, body, &[], what).await
    }

    /// [`DynamicsClient::send`] with extra headers (e.g. `MSCRM.SolutionUniqueName`).
    pub async fn send_with(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
        what: &str,
    ) -> Result<Answer, PluginError> {
        let mut renewed = false;
        loop {
            let blocked = self
                .blocked_until
                .lock()
                .ok()
                .and_then(|b| *b)
                .and_then(|until| until.checked_duration_since(std::time::Instant::now()));
            if let Some(wait) = blocked {
                return Err(PluginError::throttled(
                    format!("Dataverse asked to wait before {what} (429 earlier)"),
                    wait + Duration::from_millis(50),
                ));
            }
            let token = self.token().await?;
            let mut request = self
                .http
                .request(method.clone(), format!("{}{path}", self.api))
                .bearer_auth(&token)
                .header("Accept", "application/json")
                .header("OData-MaxVersion", "4.0")
                .header("OData-Version", "4.0");
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            if let Some(body) = body {
                request = request
                    .header("Content-Type", "application/json; charset=utf-8")
                    .body(body.to_string());
            }
            let response = request.send().await.map_err(|e| {
                http::transport_error(&format!("cannot reach Dataverse for {what}"), &e)
            })?;
            let status = response.status().as_u16();
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let retry_after = header("retry-after").and_then(|v| v.trim().parse::<u64>().ok());
            let entity_id = header("odata-entityid");
            let text = response.text().await.map_err(|e| {
                http::transport_error(&format!("Dataverse's answer to {what} broke off"), &e)
            })?;
            if status == 401 && !renewed {
                renewed = true;
                self.renew_credential().await?;
                continue;
            }
            if status == 401 {
                return Err(PluginError::configuration(format!(
                    "Dataverse refused a fresh token for {what} (401): is the app registration an application user of this environment?"
                )));
            }
            if !(200..300).contains(&status) {
                let error = dataverse_error(status, &text, retry_after, what);
                if let (429, Some(wait)) = (status, error.retry_after) {
                    if let Ok(mut b) = self.blocked_until.lock() {
                        *b = Some(std::time::Instant::now() + wait);
                    }
                }
                return Err(error);
            }
            return Ok(Answer {
                status,
                entity_id,
                body: text,
            });
        }
    }

    pub async fn get_json(&self, path: &str, what: &str) -> Result<Value, PluginError> {
        let answer = self.send(reqwest::Method::GET, path, None, what).await?;
        serde_json::from_str(&answer.body).map_err(|e| {
            PluginError::retryable(format!("Dataverse's answer to {what} is not JSON: {e}"))
        })
    }
}

/// An OData string literal: single quotes doubled.
pub fn odata_string(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Percent-encodes a query or key component (RFC 3986 unreserved characters stay).
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'_' | b'~' | b'\'' | b'(' | b')' | b',' | b'$' | b'='
            )
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The row id in an `OData-EntityId` header (`.../bt_sessions(<id>)`).
pub fn id_from_entity_url(url: &str) -> Option<String> {
    let inner = url.rsplit_once('(')?.1.strip_suffix(')')?;
    (!inner.is_empty() && !inner.contains('=')).then(|| inner.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odata_literals_double_quotes_and_encoding_keeps_them_readable() {
        assert_eq!(odata_string("CAS-O'Brien"), "'CAS-O''Brien'");
        assert_eq!(
            encode("ticketnumber eq 'A&B'"),
            "ticketnumber%20eq%20'A%26B'"
        );
        assert_eq!(encode("ü"), "%C3%BC");
    }

    #[test]
    fn entra_descriptions_are_found_in_either_shape() {
        let escaped = r#"ClientSecretCredential authentication failed. invalid type: string "AADSTS7000215: Invalid client secret provided.\r\nTrace ID: 1", expected a borrowed string"#;
        assert_eq!(
            entra_description(escaped).as_deref(),
            Some("AADSTS7000215: Invalid client secret provided.")
        );
        let plain = "ClientSecretCredential authentication failed. AADSTS90002: Tenant 'x' not found.\r\nTrace ID: 2";
        assert_eq!(
            entra_description(plain).as_deref(),
            Some("AADSTS90002: Tenant 'x' not found.")
        );
        assert_eq!(entra_description("connection refused"), None);
    }

    #[test]
    fn dataverse_errors_are_typed_by_status() {
        let body =
            r#"{"error":{"code":"0x80072322","message":"Number of requests exceeded the limit"}}"#;
        let e = dataverse_error(429, body, Some(7), "the upsert");
        assert_eq!(
            (e.kind, e.retry_after),
            (
                plugin_api::ErrorKind::Throttled,
                Some(Duration::from_secs(7))
            )
        );
        assert_eq!(
            e.message,
            "Dataverse answered HTTP 429 to the upsert: Number of requests exceeded the limit"
        );
        assert_eq!(
            dataverse_error(503, "", None, "x").kind,
            plugin_api::ErrorKind::Retryable
        );
        for status in [400, 403, 404] {
            assert_eq!(
                dataverse_error(status, body, None, "x").kind,
                plugin_api::ErrorKind::Permanent
            );
        }
        assert_eq!(
            id_from_entity_url("https://x/api/data/v9.2/bt_sessions(1234-ab)").as_deref(),
            Some("1234-ab")
        );
    }
}
