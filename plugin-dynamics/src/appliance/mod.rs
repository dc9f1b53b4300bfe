//! The B Series appliance side: OAuth (a token cached per configuration and renewed
//! before it expires; one new token and one retry on 401) and the reporting API.

pub mod xml;

use std::time::{Duration, Instant};

use plugin_api::PluginError;
use tokio::sync::Mutex;

use crate::http::{self, TlsSettings};
use xml::{ReportError, SessionReport, SurveyLine};

/// Renew the token when less than this is left (the appliance keeps only 30 per account).
const RENEW_BEFORE: Duration = Duration::from_secs(120);

#[derive(Debug, Clone)]
pub struct ApplianceSettings {
    pub host: String,
    pub client_id: String,
    pub client_secret: String,
    pub locale: String,
    pub tls: TlsSettings,
}

struct Token {
    value: String,
    renew_at: Instant,
}

pub struct ApplianceClient {
    settings: ApplianceSettings,
    http: reqwest::Client,
    token: Mutex<Option<Token>>,
}

/// Which exit survey report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SurveyKind {
    Customer,
    Rep,
}

impl ApplianceClient {
    pub fn new(settings: ApplianceSettings, timeout: Duration) -> Result<Self, PluginError> {
        // The API documentation asks clients to close the connection after each call.
        let http = http::client(&settings.tls, timeout, true)?;
        Ok(Self {
            settings,
            http,
            token: Mutex::new(None),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.settings.host)
    }

    /// A valid token: the cached one, or a new one when it is near expiry.
    pub async fn token(&self) -> Result<String, PluginError> {
        let mut cached = self.token.lock().await;
        if let Some(t) = cached.as_ref().filter(|t| t.renew_at > Instant::now()) {
            return Ok(t.value.clone());
        }
        let fresh = self.request_token().await?;
        let value = fresh.value.clone();
        *cached = Some(fresh);
        Ok(value)
    }

    async fn request_token(&self) -> Result<Token, PluginError> {
        let response = self
            .http
            .post(self.url("/oauth2/token"))
            .basic_auth(&self.settings.client_id, Some(&self.settings.client_secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .map_err(|e| {
                http::transport_error("cannot reach the B Series appliance for an OAuth token", &e)
            })?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if status.as_u16() == 401 || status.as_u16() == 400 {
            let detail = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
            return Err(PluginError::configuration(format!(
                "the B Series appliance refused the OAuth client ID and secret ({detail}); check them under /login > Management > API Configuration"
            )));
        }
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(PluginError::retryable(format!(
                "the B Series appliance's token endpoint answered HTTP {}",
                status.as_u16()
            )));
        }
        if !status.is_success() {
            return Err(PluginError::configuration(format!(
                "the B Series appliance's token endpoint answered HTTP {}",
                status.as_u16()
            )));
        }
        let json: serde_json::Value = serde_json::from_str(&body).map_err(|e| {
            PluginError::retryable(format!("the B Series token answer is not JSON: {e}"))
        })?;
        let value = json["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| PluginError::retryable("the B Series token answer has no access_token"))?
            .to_owned();
        let lifetime = Duration::from_secs(json["expires_in"].as_u64().unwrap_or(3600));
        Ok(Token {
            value,
            renew_at: Instant::now() + lifetime.saturating_sub(RENEW_BEFORE.min(lifetime / 2)),
        })
    }

    /// Forgets `token` if it is still the cached one (after a 401).
    async fn drop_token(&self, token: &str) {
        let mut cached = self.token.lock().await;
        if cached.as_ref().is_some_and(|t| t.value == token) {
            *cached = None;
        }
    }

    /// GET `path` with the token; on 401 a new token and one more try.
    async fn call(&self, path: &str, params: &[(&str, &str)]) -> Result<String, PluginError> {
        let mut retried = false;
        loop {
            let token = self.token().await?;
            let response = self
                .http
                .get(self.url(path))
                .bearer_auth(&token)
                .query(params)
                .send()
                .await
                .map_err(|e| http::transport_error("cannot reach the B Series appliance", &e))?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let body = response.text().await.map_err(|e| {
                http::transport_error("the B Series appliance's answer broke off", &e)
            })?;
            match status {
                401 if !retried => {
                    self.drop_token(&token).await;
                    retried = true;
                }
                401 => return Err(PluginError::configuration(
                    "the B Series appliance refused a new OAuth token (401); check the API account",
                )),
                429 => {
                    return Err(PluginError::throttled(
                        "the B Series appliance is limiting requests (429)",
                        Duration::from_secs(retry_after.unwrap_or(10)),
                    ))
                }
                s if s >= 500 => {
                    return Err(PluginError::retryable(format!(
                        "the B Series appliance answered HTTP {s}"
                    )))
                }
                s if !(200..300).contains(&s) => {
                    return Err(PluginError::configuration(format!(
                        "the B Series appliance answered HTTP {s} to {path}"
                    )))
                }
                _ => return Ok(body),
            }
        }
    }

    async fn report(&self, params: &[(&str, &str)]) -> Result<String, PluginError> {
        let mut all = params.to_vec();
        all.push(("locale", &self.settings.locale));
        self.call("/api/reporting", &all).await
    }

    /// One session's report; `None` when the appliance has no report for it (yet).
    pub async fn session(&self, lsid: &str) -> Result<Option<SessionReport>, PluginError> {
        let xml = self
            .report(&[("generate_report", "SupportSession"), ("lsid", lsid)])
            .await?;
        match xml::sessions(&xml) {
            Ok(mut sessions) => Ok(sessions
                .iter()
                .position(|s| s.lsid == lsid)
                .map(|i| sessions.swap_remove(i))),
            Err(ReportError::Appliance(m)) if xml::is_no_data(&m) => Ok(None),
            Err(e) => Err(report_error(e)),
        }
    }

    /// Sessions that ended at or after `end_time` (Unix seconds), in one call.
    pub async fn sessions_ended_since(
        &self,
        end_time: i64,
    ) -> Result<Vec<SessionReport>, PluginError> {
        let from = end_time.to_string();
        let xml = self
            .report(&[
                ("generate_report", "SupportSession"),
                ("end_time", &from),
                ("duration", "0"),
            ])
            .await?;
        match xml::sessions(&xml) {
            Ok(sessions) => Ok(sessions),
            Err(ReportError::Appliance(m)) if xml::is_no_data(&m) => Ok(Vec::new()),
            Err(e) => Err(report_error(e)),
        }
    }

    /// Exit survey lines per lsid, for the given sessions, in one call.
    pub async fn surveys(
        &self,
        kind: SurveyKind,
        lsids: &[&str],
    ) -> Result<Vec<(String, Vec<SurveyLine>)>, PluginError> {
        let report = match kind {
            SurveyKind::Customer => "SupportCustExitSurvey",
            SurveyKind::Rep => "SupportRepExitSurvey",
        };
        let joined = lsids.join(",");
        let selector = if lsids.len() == 1 { "lsid" } else { "lsids" };
        let xml = self
            .report(&[
                ("generate_report", report),
                (selector, &joined),
                ("report_type", "rep"),
                ("id", "all"),
            ])
            .await?;
        match xml::exit_surveys(&xml) {
            Ok(surveys) => Ok(surveys),
            Err(ReportError::Appliance(m)) if xml::is_no_data(&m) => Ok(Vec::new()),
            Err(e) => Err(report_error(e)),
        }
    }

    /// Whether the API account may read support session reports.
    pub async fn reporting_permission(&self) -> Result<bool, PluginError> {
        let xml = self
            .call("/api/command", &[("action", "get_api_info")])
            .await?;
        xml::reporting_permission(&xml).map_err(report_error)
    }

    /// Any HTTP answer from the appliance (reachability and certificate).
    pub async fn reach(&self) -> Result<u16, String> {
        self.http
            .get(self.url("/api/command?action=get_api_info"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| http::describe(&e))
    }
}

fn report_error(e: ReportError) -> PluginError {
    match e {
        ReportError::Appliance(message) => {
            let lower = message.to_lowercase();
            if lower.contains("permission") || lower.contains("login") {
                PluginError::configuration(format!(
                    "the B Series appliance refused the report: {message}"
                ))
            } else {
                PluginError::retryable(format!(
                    "the B Series appliance answered an error: {message}"
                ))
            }
        }
        ReportError::Malformed(m) => {
            PluginError::retryable(format!("the B Series report could not be read: {m}"))
        }
    }
}
