//! What can go wrong talking to the appliance, kept as the appliance said it (HTTP
//! status, the text of its `<error>` answer, Retry-After) until the plugin boundary.

use std::time::Duration;

use plugin_api::PluginError;

use crate::http::mib;

/// How long to pause when the appliance answers 429 without a Retry-After.
const DEFAULT_THROTTLE: Duration = Duration::from_secs(10);

/// An `<error>` answer: the appliance's only way of saying why (it has no codes), often
/// with HTTP 200.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplianceAnswer {
    pub status: u16,
    pub text: String,
}

impl ApplianceAnswer {
    /// The report matches nothing (not an error for the plugin).
    pub fn is_no_data(&self) -> bool {
        super::xml::is_no_data(&self.text)
    }

    /// The account may not do this (e.g. "Login failed", a missing permission): an
    /// admin must act.
    pub fn is_refusal(&self) -> bool {
        let m = self.text.to_lowercase();
        m.contains("permission") || m.contains("login")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplianceError {
    /// No HTTP answer at all (connect, TLS, timeout, reset).
    #[error("cannot reach the B Series appliance{}: {detail}", for_token_text(*.for_token))]
    Unreachable { for_token: bool, detail: String },
    #[error("the B Series appliance's answer broke off: {0}")]
    BrokeOff(String),
    #[error("the appliance's answer to {call} is larger than {} MiB; it was not read (the limit keeps a broken or hostile answer from exhausting the engine's memory)", mib(*.limit))]
    TooLarge { call: String, limit: usize },
    /// The token endpoint refused the client ID and secret (400 or 401), with the
    /// OAuth `error` it named.
    #[error("the B Series appliance refused the OAuth client ID and secret ({}); check them under /login > Management > API Configuration", .error.clone().unwrap_or_else(|| format!("HTTP {}", .status)))]
    CredentialsRefused { status: u16, error: Option<String> },
    #[error("the B Series appliance's token endpoint answered HTTP {status}")]
    TokenEndpoint { status: u16 },
    #[error("the B Series token answer {0}")]
    TokenAnswer(String),
    /// A fresh token was refused too.
    #[error("the B Series appliance refused a new OAuth token (401); check the API account")]
    TokenRejected,
    /// An HTTP error status to an API call.
    #[error("{}", status_text(*.status, .call))]
    Status {
        status: u16,
        call: String,
        retry_after: Option<Duration>,
    },
    /// The appliance answered `<error>`.
    #[error("{}", answer_text(.0))]
    Answered(ApplianceAnswer),
    #[error("the B Series report could not be read: {0}")]
    Malformed(String),
}

fn for_token_text(for_token: bool) -> &'static str {
    if for_token {
        " for an OAuth token"
    } else {
        ""
    }
}

fn answer_text(answer: &ApplianceAnswer) -> String {
    if answer.is_refusal() {
        format!("the B Series appliance refused the report: {}", answer.text)
    } else {
        format!("the B Series appliance answered an error: {}", answer.text)
    }
}

fn status_text(status: u16, call: &str) -> String {
    match status {
        429 => "the B Series appliance is limiting requests (429)".into(),
        s if s >= 500 => format!("the B Series appliance answered HTTP {s}"),
        s => format!("the B Series appliance answered HTTP {s} to {call}"),
    }
}

impl From<ApplianceError> for PluginError {
    fn from(e: ApplianceError) -> Self {
        Self::from(&e)
    }
}

/// By reference too: one failed call can stand for many events of a batch.
impl From<&ApplianceError> for PluginError {
    fn from(e: &ApplianceError) -> Self {
        let message = e.to_string();
        match e {
            ApplianceError::Unreachable { .. }
            | ApplianceError::BrokeOff(_)
            | ApplianceError::TokenAnswer(_)
            | ApplianceError::Malformed(_) => PluginError::retryable(message),
            ApplianceError::TooLarge { .. } => PluginError::permanent(message),
            ApplianceError::CredentialsRefused { .. } | ApplianceError::TokenRejected => {
                PluginError::configuration(message)
            }
            ApplianceError::TokenEndpoint { status } => {
                if *status >= 500 || *status == 429 {
                    PluginError::retryable(message)
                } else {
                    PluginError::configuration(message)
                }
            }
            ApplianceError::Status {
                status,
                retry_after,
                ..
            } => match status {
                429 => PluginError::throttled(message, retry_after.unwrap_or(DEFAULT_THROTTLE)),
                s if *s >= 500 => PluginError::retryable(message),
                _ => PluginError::configuration(message),
            },
            ApplianceError::Answered(answer) => {
                if answer.is_refusal() {
                    PluginError::configuration(message)
                } else {
                    PluginError::retryable(message)
                }
            }
        }
    }
}
