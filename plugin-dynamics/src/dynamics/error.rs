//! What can go wrong talking to Entra ID and Dataverse, kept as they said it (status,
//! Dataverse's error code and message, Retry-After; Entra's error and description)
//! until the plugin boundary.

use std::time::Duration;

use plugin_api::PluginError;
use serde::Deserialize;

use crate::http::{mib, SetupError};

/// How long to pause after a 429 without Retry-After.
const DEFAULT_THROTTLE: Duration = Duration::from_secs(60);
/// Dataverse's wait is rounded up a little, so the next request comes after it.
const THROTTLE_MARGIN: Duration = Duration::from_millis(50);
/// How much of an error body that is not Dataverse's JSON goes into a message.
const RAW_BODY_CHARS: usize = 300;

/// An error answer of the Dataverse Web API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataverseError {
    pub status: u16,
    /// Dataverse's error code, e.g. `0x80040265`.
    pub code: Option<String>,
    pub message: String,
    pub retry_after: Option<Duration>,
}

/// `{"error": {"code": "0x80040265", "message": "..."}}`.
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: Option<String>,
    message: Option<String>,
}

impl DataverseError {
    /// Reads an error answer; a body that is not Dataverse's error JSON is quoted.
    pub fn from_answer(status: u16, body: &[u8], retry_after: Option<Duration>) -> Self {
        let parsed = serde_json::from_slice::<ErrorBody>(body)
            .ok()
            .map(|b| b.error);
        let code = parsed.as_ref().and_then(|e| e.code.clone());
        let message = parsed.and_then(|e| e.message).unwrap_or_else(|| {
            String::from_utf8_lossy(body)
                .chars()
                .take(RAW_BODY_CHARS)
                .collect()
        });
        Self {
            status,
            code,
            message,
            retry_after,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status == 404
    }

    /// Dataverse's service protection limit (or another limit) was hit.
    pub fn is_throttled(&self) -> bool {
        self.status == 429
    }

    /// The pause the host should make before this configuration's next call.
    pub fn throttle_delay(&self) -> Duration {
        self.retry_after.unwrap_or(DEFAULT_THROTTLE)
    }
}

/// Entra ID's error answer: `{"error": "invalid_client", "error_description": "AADSTS7000215: ..."}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntraError {
    /// Entra refused the request (4xx): the credentials, the tenant or the app registration.
    #[error("Entra ID refused the credentials: {description}")]
    Refused {
        status: u16,
        error: Option<String>,
        description: String,
    },
    /// Entra failed (5xx) or asked to slow down (429).
    #[error("Entra ID answered HTTP {status}: {description}")]
    Unavailable { status: u16, description: String },
    #[error("Entra ID's token answer is larger than {} MiB; it was not read", mib(*.limit))]
    TooLarge { limit: usize },
}

#[derive(Deserialize)]
struct EntraBody {
    error: Option<String>,
    error_description: Option<String>,
}

impl EntraError {
    /// Reads an error answer of the token endpoint.
    pub fn from_answer(status: u16, body: &[u8]) -> Self {
        let parsed = serde_json::from_slice::<EntraBody>(body).ok();
        let error = parsed.as_ref().and_then(|b| b.error.clone());
        // The description's first line is the AADSTS code and its text; trace and
        // correlation ids follow on their own lines.
        let description = parsed
            .and_then(|b| b.error_description)
            .map(|d| d.lines().next().unwrap_or("").trim().to_owned())
            .filter(|d| !d.is_empty())
            .or_else(|| error.clone())
            .unwrap_or_else(|| format!("HTTP {status}"));
        if status == 429 || status == 408 || status >= 500 {
            Self::Unavailable {
                status,
                description,
            }
        } else {
            Self::Refused {
                status,
                error,
                description,
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DynamicsError {
    /// Dataverse's message, with its error code when it gave one.
    #[error("Dataverse answered HTTP {} to {what}: {}{}", .error.status, .error.message, code_text(.error.code.as_deref()))]
    Answered { what: String, error: DataverseError },
    /// An earlier 429's Retry-After has not passed yet; nothing was sent.
    #[error("Dataverse asked to wait before {what} (429 earlier)")]
    Waiting { what: String, wait: Duration },
    #[error("cannot reach Dataverse for {what}: {detail}")]
    Unreachable { what: String, detail: String },
    #[error("Dataverse's answer to {what} broke off: {detail}")]
    BrokeOff { what: String, detail: String },
    #[error("Dataverse's answer to {what} is larger than {} MiB; it was not read (the limit keeps a broken or hostile answer from exhausting the engine's memory)", mib(*.limit))]
    TooLarge { what: String, limit: usize },
    #[error("Dataverse's answer to {what} is not the expected JSON: {detail}")]
    Unexpected { what: String, detail: String },
    /// A fresh token was refused too.
    #[error("Dataverse refused a fresh token for {what} (401): is the app registration an application user of this environment?")]
    TokenRejected { what: String },
    #[error(transparent)]
    Entra(#[from] EntraError),
    /// No token, and no answer of Entra's to say why (e.g. it cannot be reached).
    #[error("cannot get an Entra ID token: {0}")]
    NoToken(String),
    #[error(transparent)]
    Setup(#[from] SetupError),
}

fn code_text(code: Option<&str>) -> String {
    code.map(|c| format!(" (error {c})")).unwrap_or_default()
}

impl DynamicsError {
    /// Dataverse's own error, when it answered one.
    pub fn dataverse(&self) -> Option<&DataverseError> {
        match self {
            Self::Answered { error, .. } => Some(error),
            _ => None,
        }
    }
}

impl From<DynamicsError> for PluginError {
    fn from(e: DynamicsError) -> Self {
        Self::from(&e)
    }
}

/// By reference too: one failed request can stand for many events of a batch.
impl From<&DynamicsError> for PluginError {
    fn from(e: &DynamicsError) -> Self {
        let message = e.to_string();
        match e {
            DynamicsError::Answered { error, .. } => match error.status {
                429 => PluginError::throttled(message, error.throttle_delay()),
                408 | 500..=599 => PluginError::retryable(message),
                _ => PluginError::permanent(message),
            },
            DynamicsError::Waiting { wait, .. } => {
                PluginError::throttled(message, *wait + THROTTLE_MARGIN)
            }
            DynamicsError::Unreachable { .. }
            | DynamicsError::BrokeOff { .. }
            | DynamicsError::Unexpected { .. }
            | DynamicsError::NoToken(_)
            | DynamicsError::Entra(EntraError::Unavailable { .. }) => {
                PluginError::retryable(message)
            }
            DynamicsError::TooLarge { .. } | DynamicsError::Entra(EntraError::TooLarge { .. }) => {
                PluginError::permanent(message)
            }
            DynamicsError::TokenRejected { .. }
            | DynamicsError::Entra(EntraError::Refused { .. })
            | DynamicsError::Setup(_) => PluginError::configuration(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::ErrorKind;

    fn answered(status: u16, body: &str, retry_after: Option<u64>) -> PluginError {
        PluginError::from(DynamicsError::Answered {
            what: "the upsert".into(),
            error: DataverseError::from_answer(
                status,
                body.as_bytes(),
                retry_after.map(Duration::from_secs),
            ),
        })
    }

    #[test]
    fn dataverse_errors_are_typed_by_status() {
        let body =
            r#"{"error":{"code":"0x80072322","message":"Number of requests exceeded the limit"}}"#;
        let typed = DataverseError::from_answer(429, body.as_bytes(), Some(Duration::from_secs(7)));
        assert_eq!(typed.code.as_deref(), Some("0x80072322"));
        assert!(typed.is_throttled() && !typed.is_not_found());
        let e = answered(429, body, Some(7));
        assert_eq!(
            (e.kind, e.retry_after),
            (ErrorKind::Throttled, Some(Duration::from_secs(7)))
        );
        assert_eq!(
            e.message,
            "Dataverse answered HTTP 429 to the upsert: Number of requests exceeded the limit (error 0x80072322)"
        );
        assert_eq!(
            answered(429, body, None).retry_after,
            Some(DEFAULT_THROTTLE)
        );
        assert_eq!(answered(503, "", None).kind, ErrorKind::Retryable);
        assert_eq!(answered(408, "", None).kind, ErrorKind::Retryable);
        for status in [400, 403, 404] {
            assert_eq!(answered(status, body, None).kind, ErrorKind::Permanent);
        }
        let raw = answered(502, &"x".repeat(1000), None);
        assert_eq!(
            raw.message.len(),
            "Dataverse answered HTTP 502 to the upsert: ".len() + 300
        );
    }

    #[test]
    fn entra_errors_keep_the_first_line_of_the_description() {
        let body = r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: 1\r\nCorrelation ID: 2","error_codes":[7000215]}"#;
        let e = EntraError::from_answer(401, body.as_bytes());
        assert_eq!(
            e,
            EntraError::Refused {
                status: 401,
                error: Some("invalid_client".into()),
                description: "AADSTS7000215: Invalid client secret provided.".into(),
            }
        );
        let e = PluginError::from(DynamicsError::from(e));
        assert_eq!(
            (e.kind, e.message.as_str()),
            (
                ErrorKind::Configuration,
                "Entra ID refused the credentials: AADSTS7000215: Invalid client secret provided."
            )
        );
        let down = EntraError::from_answer(503, b"<html>busy</html>");
        assert_eq!(
            down,
            EntraError::Unavailable {
                status: 503,
                description: "HTTP 503".into()
            }
        );
        assert_eq!(
            PluginError::from(DynamicsError::from(down)).kind,
            ErrorKind::Retryable
        );
    }
}
