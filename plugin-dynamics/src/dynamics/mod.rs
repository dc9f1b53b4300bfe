//! The Dynamics 365 side: an Entra ID token through azure_identity's
//! ClientSecretCredential (one per configuration, on the configured cloud), and the
//! Dataverse Web API with its required headers and error handling.

pub mod batch;
pub mod error;

use std::sync::Arc;
use std::time::Duration;

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::{Secret, TokenCredential};
use azure_core::http::{
    AsyncRawResponse, ClientOptions, HttpClient, Request, RetryOptions, Transport,
};
use azure_identity::{ClientSecretCredential, ClientSecretCredentialOptions};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::http::{self, BodyError, SetupError, TlsSettings};
pub use error::{DataverseError, DynamicsError, EntraError};

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

/// The environment and the app registration. Debug shows no secret (`SecretString`
/// prints as redacted).
#[derive(Debug, Clone)]
pub struct DynamicsSettings {
    /// The environment URL, without a trailing slash.
    pub url: String,
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: SecretString,
    pub cloud: Cloud,
    pub tls: TlsSettings,
}

/// The credential's HTTP transport: the configuration's client, with Entra's answers
/// read under a size cap and its error answers kept typed. (azure_identity reads the
/// body itself, without a cap, and reports Entra's errors as text only, or not at all
/// when its own parse of a description with line breaks fails.)
#[derive(Debug)]
struct EntraTransport {
    http: reqwest::Client,
}

#[async_trait::async_trait]
impl HttpClient for EntraTransport {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        let response = HttpClient::execute_request(&self.http, request).await?;
        let (status, headers, body) = response.deconstruct();
        let declared = headers
            .get_optional_str(&azure_core::http::headers::CONTENT_LENGTH)
            .and_then(|n| n.parse().ok());
        let bytes = match http::read_capped(body, declared, http::SMALL_ANSWER_LIMIT).await {
            Ok(bytes) => bytes,
            Err(BodyError::Stream(e)) => return Err(e),
            Err(BodyError::TooLarge { limit }) => {
                return Err(entra_failure(EntraError::TooLarge { limit }))
            }
        };
        let code = u16::from(status);
        if !(200..300).contains(&code) {
            // Carried to `DynamicsClient::token` inside azure_identity's error.
            return Err(entra_failure(EntraError::from_answer(code, &bytes)));
        }
        Ok(AsyncRawResponse::from_bytes(status, headers, bytes))
    }
}

fn entra_failure(error: EntraError) -> azure_core::Error {
    let message = error.to_string();
    azure_core::Error::with_error(azure_core::error::ErrorKind::Credential, error, message)
}

/// The Entra error our transport put into azure_identity's error, if any.
fn entra_error(e: &azure_core::Error) -> Option<EntraError> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(found) = s.downcast_ref::<EntraError>() {
            return Some(found.clone());
        }
        source = s.source();
    }
    None
}

/// A response as read: status, the row id from `OData-EntityId`, its content type
/// (a `$batch` answer's names its boundary), body.
pub struct Answer {
    pub status: u16,
    pub entity_id: Option<String>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// A request's body: JSON, or already written text with its content type.
enum Payload<'a> {
    Json(&'a Value),
    Text {
        content_type: &'a str,
        body: &'a str,
    },
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
    pub fn new(settings: DynamicsSettings, timeout: Duration) -> Result<Self, SetupError> {
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
    ) -> Result<Arc<ClientSecretCredential>, SetupError> {
        let transport = EntraTransport { http: http.clone() };
        let options = ClientSecretCredentialOptions {
            client_options: ClientOptions {
                // The same trust as every other call; retries are the host's job.
                transport: Some(Transport::new(Arc::new(transport))),
                retry: RetryOptions::none(),
                cloud: Some(Arc::new(settings.cloud.configuration())),
                ..ClientOptions::default()
            },
        };
        ClientSecretCredential::new(
            &settings.tenant_id,
            settings.client_id.clone(),
            // azure_identity keeps its own copy, in its own (not zeroized) type.
            Secret::new(settings.client_secret.expose_secret().to_owned()),
            Some(options),
        )
        .map_err(|e| SetupError::Credential(e.to_string()))
    }

    pub fn url(&self) -> &str {
        &self.settings.url
    }

    /// A token for the environment (cached by the credential until near expiry).
    pub async fn token(&self) -> Result<SecretString, DynamicsError> {
        let credential = Arc::clone(&*self.credential.lock().await);
        let scope = format!("{}/.default", self.settings.url);
        match credential.get_token(&[scope.as_str()], None).await {
            Ok(token) => Ok(SecretString::from(token.token.secret())),
            Err(e) => Err(match entra_error(&e) {
                Some(entra) => DynamicsError::Entra(entra),
                None => {
                    DynamicsError::NoToken(e.to_string().lines().next().unwrap_or("").to_owned())
                }
            }),
        }
    }

    async fn renew_credential(&self) -> Result<(), DynamicsError> {
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
    ) -> Result<Answer, DynamicsError> {
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
    ) -> Result<Answer, DynamicsError> {
        self.execute(method, path, body.map(Payload::Json), headers, what)
            .await
    }

    /// Sends a `$batch` (one request against the service protection limits, however
    /// many operations it holds) and reads its answer, one entry per item answered.
    /// A 429 inside it blocks the next requests as a 429 to the batch would.
    pub async fn batch(
        &self,
        request: &batch::BatchRequest,
        what: &str,
    ) -> Result<Vec<batch::ItemAnswer>, DynamicsError> {
        let boundary = request.boundary();
        let body = request.body(&self.api, &boundary);
        let content_type = format!("multipart/mixed; boundary={boundary}");
        let answer = self
            .execute(
                reqwest::Method::POST,
                "$batch",
                Some(Payload::Text {
                    content_type: &content_type,
                    body: &body,
                }),
                &[("Prefer", "odata.continue-on-error")],
                what,
            )
            .await?;
        let answers =
            batch::parse_answer(answer.content_type.as_deref().unwrap_or(""), &answer.body)
                .map_err(|detail| DynamicsError::Unexpected {
                    what: what.to_owned(),
                    detail,
                })?;
        let throttle = answers
            .iter()
            .flat_map(batch::ItemAnswer::responses)
            .filter(|r| r.status == 429)
            .map(|r| DataverseError::from_answer(429, &r.body, r.retry_after()).throttle_delay())
            .max();
        if let Some(delay) = throttle {
            self.block_for(delay);
        }
        Ok(answers)
    }

    /// No request goes out for `delay` (Dataverse asked to wait).
    fn block_for(&self, delay: Duration) {
        if let Ok(mut b) = self.blocked_until.lock() {
            let until = std::time::Instant::now() + delay;
            *b = Some(b.map_or(until, |earlier| earlier.max(until)));
        }
    }

    async fn execute(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Payload<'_>>,
        headers: &[(&str, &str)],
        what: &str,
    ) -> Result<Answer, DynamicsError> {
        let mut renewed = false;
        loop {
            let blocked = self
                .blocked_until
                .lock()
                .ok()
                .and_then(|b| *b)
                .and_then(|until| until.checked_duration_since(std::time::Instant::now()));
            if let Some(wait) = blocked {
                return Err(DynamicsError::Waiting {
                    what: what.to_owned(),
                    wait,
                });
            }
            let token = self.token().await?;
            let mut request = self
                .http
                .request(method.clone(), format!("{}{path}", self.api))
                .bearer_auth(token.expose_secret())
                .header("Accept", "application/json")
                .header("OData-MaxVersion", "4.0")
                .header("OData-Version", "4.0");
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            match &body {
                Some(Payload::Json(body)) => {
                    request = request
                        .header("Content-Type", "application/json; charset=utf-8")
                        .body(body.to_string());
                }
                Some(Payload::Text { content_type, body }) => {
                    request = request
                        .header("Content-Type", *content_type)
                        .body((*body).to_owned());
                }
                None => {}
            }
            let response = request
                .send()
                .await
                .map_err(|e| DynamicsError::Unreachable {
                    what: what.to_owned(),
                    detail: http::describe(&e),
                })?;
            let status = response.status().as_u16();
            let retry_after = http::retry_after(response.headers());
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let entity_id = header("odata-entityid");
            let content_type = header("content-type");
            let body = http::read_body(response, http::JSON_ANSWER_LIMIT)
                .await
                .map_err(|e| match e {
                    BodyError::TooLarge { limit } => DynamicsError::TooLarge {
                        what: what.to_owned(),
                        limit,
                    },
                    BodyError::Stream(e) => DynamicsError::BrokeOff {
                        what: what.to_owned(),
                        detail: http::describe(&e),
                    },
                })?;
            if status == 401 && !renewed {
                renewed = true;
                self.renew_credential().await?;
                continue;
            }
            if status == 401 {
                return Err(DynamicsError::TokenRejected {
                    what: what.to_owned(),
                });
            }
            if !(200..300).contains(&status) {
                let error = DataverseError::from_answer(status, &body, retry_after);
                if error.is_throttled() {
                    self.block_for(error.throttle_delay());
                }
                return Err(DynamicsError::Answered {
                    what: what.to_owned(),
                    error,
                });
            }
            return Ok(Answer {
                status,
                entity_id,
                content_type,
                body,
            });
        }
    }

    /// GETs `path` and reads the answer into `T`.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        what: &str,
    ) -> Result<T, DynamicsError> {
        let answer = self.send(reqwest::Method::GET, path, None, what).await?;
        serde_json::from_slice(&answer.body).map_err(|e| DynamicsError::Unexpected {
            what: what.to_owned(),
            detail: e.to_string(),
        })
    }
}

/// An OData collection: `{"value": [...]}`.
#[derive(Debug, serde::Deserialize)]
pub struct Collection<T> {
    pub value: Vec<T>,
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
        assert_eq!(
            id_from_entity_url("https://x/api/data/v9.2/bt_sessions(1234-ab)").as_deref(),
            Some("1234-ab")
        );
    }

    #[test]
    fn entra_errors_are_found_inside_azure_identitys_error() {
        let refused = EntraError::Refused {
            status: 401,
            error: Some("invalid_client".into()),
            description: "AADSTS7000215: Invalid client secret provided.".into(),
        };
        // What azure_identity makes of a transport error: wrapped, with its own text.
        let wrapped = azure_core::Error::with_error(
            azure_core::error::ErrorKind::Credential,
            entra_failure(refused.clone()),
            "ClientSecretCredential authentication failed.",
        );
        assert_eq!(entra_error(&wrapped), Some(refused));
        let plain =
            azure_core::Error::with_message(azure_core::error::ErrorKind::Io, "connection refused");
        assert_eq!(entra_error(&plain), None);
    }
}
