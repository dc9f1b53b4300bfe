//! The B Series appliance side: OAuth (a token cached per configuration and renewed
//! before it expires; one new token and one retry on 401) and the reporting API.

pub mod error;
pub mod xml;

use std::time::{Duration, Instant};

use secrecy::zeroize::Zeroize;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::http::{self, BodyError, SetupError, TlsSettings};
pub use error::{ApplianceAnswer, ApplianceError};
use xml::{ReportError, SessionReport, SessionSummary, SurveyLine};

/// Renew the token when less than this is left (the appliance keeps only 30 per account).
const RENEW_BEFORE: Duration = Duration::from_secs(120);
/// A token's lifetime when the answer does not say.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// The API account and where the appliance is. Debug shows no secret (`SecretString`
/// prints as redacted).
#[derive(Debug, Clone)]
pub struct ApplianceSettings {
    pub host: String,
    pub client_id: String,
    pub client_secret: SecretString,
    pub locale: String,
    pub tls: TlsSettings,
}

/// A cached token; Debug shows it redacted.
#[derive(Debug)]
struct Token {
    value: SecretString,
    renew_at: Instant,
}

/// The token endpoint's answer (`expires_in` in seconds).
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<SecretString>,
    expires_in: Option<u64>,
}

/// The token endpoint's error answer (`{"error": "invalid_client"}`).
#[derive(Deserialize)]
struct OAuthError {
    error: Option<String>,
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

impl SurveyKind {
    fn report(self) -> &'static str {
        match self {
            Self::Customer => "SupportCustExitSurvey",
            Self::Rep => "SupportRepExitSurvey",
        }
    }
}

/// A body read under its limit, or the appliance error for why not.
async fn read(
    response: reqwest::Response,
    limit: usize,
    call: &str,
) -> Result<Vec<u8>, ApplianceError> {
    http::read_body(response, limit).await.map_err(|e| match e {
        BodyError::TooLarge { limit } => ApplianceError::TooLarge {
            call: call.to_owned(),
            limit,
        },
        BodyError::Stream(e) => ApplianceError::BrokeOff(http::describe(&e)),
    })
}

impl ApplianceClient {
    pub fn new(settings: ApplianceSettings, timeout: Duration) -> Result<Self, SetupError> {
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
    pub async fn token(&self) -> Result<SecretString, ApplianceError> {
        let mut cached = self.token.lock().await;
        if let Some(t) = cached.as_ref().filter(|t| t.renew_at > Instant::now()) {
            return Ok(t.value.clone());
        }
        let fresh = self.request_token().await?;
        let value = fresh.value.clone();
        *cached = Some(fresh);
        Ok(value)
    }

    async fn request_token(&self) -> Result<Token, ApplianceError> {
        let response = self
            .http
            .post(self.url("/oauth2/token"))
            .basic_auth(
                &self.settings.client_id,
                Some(self.settings.client_secret.expose_secret()),
            )
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .map_err(|e| ApplianceError::Unreachable {
                for_token: true,
                detail: http::describe(&e),
            })?;
        let status = response.status().as_u16();
        let mut body = read(
            response,
            http::SMALL_ANSWER_LIMIT,
            "the OAuth token request",
        )
        .await?;
        let answer = token_answer(status, &body);
        // The buffer held the token in clear.
        body.zeroize();
        answer
    }

    /// Forgets `token` if it is still the cached one (after a 401).
    async fn drop_token(&self, token: &SecretString) {
        let mut cached = self.token.lock().await;
        if cached
            .as_ref()
            .is_some_and(|t| t.value.expose_secret() == token.expose_secret())
        {
            *cached = None;
        }
    }

    /// GET `path` with the token; on 401 a new token and one more try. `call` names
    /// the call in errors; answers are read up to `limit` bytes.
    async fn call(
        &self,
        path: &str,
        params: &[(&str, &str)],
        call: &str,
        limit: usize,
    ) -> Result<(u16, String), ApplianceError> {
        let mut retried = false;
        loop {
            let token = self.token().await?;
            let response = self
                .http
                .get(self.url(path))
                .bearer_auth(token.expose_secret())
                .query(params)
                .send()
                .await
                .map_err(|e| ApplianceError::Unreachable {
                    for_token: false,
                    detail: http::describe(&e),
                })?;
            let status = response.status().as_u16();
            let retry_after = http::retry_after(response.headers());
            let body = read(response, limit, call).await?;
            match status {
                401 if !retried => {
                    self.drop_token(&token).await;
                    retried = true;
                }
                401 => return Err(ApplianceError::TokenRejected),
                200..=299 => {
                    // Reports are UTF-8; a stray invalid byte must not lose the session.
                    let text = String::from_utf8(body)
                        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
                    return Ok((status, text));
                }
                _ => {
                    return Err(ApplianceError::Status {
                        status,
                        call: path.to_owned(),
                        retry_after,
                    })
                }
            }
        }
    }

    async fn report(
        &self,
        name: &str,
        params: &[(&str, &str)],
    ) -> Result<(u16, String), ApplianceError> {
        let mut all = vec![("generate_report", name)];
        all.extend_from_slice(params);
        all.push(("locale", &self.settings.locale));
        self.call(
            "/api/reporting",
            &all,
            &format!("the {name} report"),
            http::REPORT_ANSWER_LIMIT,
        )
        .await
    }

    /// One session's report; `None` when the appliance has no report for it (yet).
    pub async fn session(&self, lsid: &str) -> Result<Option<SessionReport>, ApplianceError> {
        let (status, xml) = self.report("SupportSession", &[("lsid", lsid)]).await?;
        match read_answer(status, xml::sessions(&xml)) {
            Ok(mut sessions) => Ok(sessions
                .iter()
                .position(|s| s.lsid == lsid)
                .map(|i| sessions.swap_remove(i))),
            Err(ApplianceError::Answered(a)) if a.is_no_data() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The reports of the given sessions, in one call (`lsids=a,b,c`); sessions the
    /// appliance has no report for (yet) are missing from the answer.
    pub async fn sessions(&self, lsids: &[&str]) -> Result<Vec<SessionReport>, ApplianceError> {
        if lsids.is_empty() {
            return Ok(Vec::new());
        }
        let joined = lsids.join(",");
        let selector = if lsids.len() == 1 { "lsid" } else { "lsids" };
        let (status, xml) = self
            .report("SupportSession", &[(selector, &joined)])
            .await?;
        match read_answer(status, xml::sessions(&xml)) {
            Err(ApplianceError::Answered(a)) if a.is_no_data() => Ok(Vec::new()),
            other => other,
        }
    }

    /// The sessions that ended from `since` for `until - since` seconds, in one
    /// `SupportSessionListing` call (`end_time` + `duration`: ended sessions only).
    ///
    /// Whether a session ending exactly at `until` is in it is the appliance's to say
    /// (its documents do not), and a listing has no end times to tell. The appliance documents no
    /// truncation or paging of listings (and the plugin sends no `limit`, which filters
    /// by category, not by count): a summary is ~100 bytes, so the answer cap (64 MiB)
    /// leaves room for hundreds of thousands of sessions; past it the call fails as
    /// too large rather than returning part of the window.
    pub async fn ended_sessions(
        &self,
        since: i64,
        until: i64,
    ) -> Result<Vec<SessionSummary>, ApplianceError> {
        // `duration=0` would mean "until now": an empty window asks nothing.
        let Some(duration) = until.checked_sub(since).filter(|d| *d > 0) else {
            return Ok(Vec::new());
        };
        let (from, duration) = (since.to_string(), duration.to_string());
        let (status, xml) = self
            .report(
                "SupportSessionListing",
                &[("end_time", &from), ("duration", &duration)],
            )
            .await?;
        match read_answer(status, xml::session_listing(&xml)) {
            Err(ApplianceError::Answered(a)) if a.is_no_data() => Ok(Vec::new()),
            other => other,
        }
    }

    /// Sessions that ended at or after `end_time` (Unix seconds), in one call.
    pub async fn sessions_ended_since(
        &self,
        end_time: i64,
    ) -> Result<Vec<SessionReport>, ApplianceError> {
        let from = end_time.to_string();
        let (status, xml) = self
            .report("SupportSession", &[("end_time", &from), ("duration", "0")])
            .await?;
        match read_answer(status, xml::sessions(&xml)) {
            Err(ApplianceError::Answered(a)) if a.is_no_data() => Ok(Vec::new()),
            other => other,
        }
    }

    /// Exit survey lines per lsid, for the given sessions, in one call.
    pub async fn surveys(
        &self,
        kind: SurveyKind,
        lsids: &[&str],
    ) -> Result<Vec<(String, Vec<SurveyLine>)>, ApplianceError> {
        let joined = lsids.join(",");
        let selector = if lsids.len() == 1 { "lsid" } else { "lsids" };
        let (status, xml) = self
            .report(
                kind.report(),
                &[(selector, &joined), ("report_type", "rep"), ("id", "all")],
            )
            .await?;
        match read_answer(status, xml::exit_surveys(&xml)) {
            Err(ApplianceError::Answered(a)) if a.is_no_data() => Ok(Vec::new()),
            other => other,
        }
    }

    /// Whether the API account may read support session reports.
    pub async fn reporting_permission(&self) -> Result<bool, ApplianceError> {
        let (status, xml) = self
            .call(
                "/api/command",
                &[("action", "get_api_info")],
                "get_api_info",
                http::SMALL_ANSWER_LIMIT,
            )
            .await?;
        read_answer(status, xml::reporting_permission(&xml))
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

/// The token endpoint's answer, typed.
fn token_answer(status: u16, body: &[u8]) -> Result<Token, ApplianceError> {
    match status {
        400 | 401 => {
            let error = serde_json::from_slice::<OAuthError>(body)
                .ok()
                .and_then(|e| e.error);
            return Err(ApplianceError::CredentialsRefused { status, error });
        }
        200..=299 => {}
        _ => return Err(ApplianceError::TokenEndpoint { status }),
    }
    let answer: TokenAnswer = serde_json::from_slice(body)
        .map_err(|e| ApplianceError::TokenAnswer(format!("is not JSON: {e}")))?;
    let value = answer
        .access_token
        .filter(|t| !t.expose_secret().is_empty())
        .ok_or_else(|| ApplianceError::TokenAnswer("has no access_token".into()))?;
    let lifetime = answer
        .expires_in
        .map_or(DEFAULT_LIFETIME, Duration::from_secs);
    Ok(Token {
        value,
        renew_at: Instant::now() + lifetime.saturating_sub(RENEW_BEFORE.min(lifetime / 2)),
    })
}

/// A parsed reporting answer, with an `<error>` answer kept as the appliance said it.
fn read_answer<T>(status: u16, parsed: Result<T, ReportError>) -> Result<T, ApplianceError> {
    parsed.map_err(|e| match e {
        ReportError::Appliance(text) => ApplianceError::Answered(ApplianceAnswer { status, text }),
        ReportError::Malformed(m) => ApplianceError::Malformed(m),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::{ErrorKind, PluginError};

    #[test]
    fn token_answers_are_typed() {
        let token = token_answer(
            200,
            br#"{"access_token":"tok-9f8e7d","token_type":"Bearer","expires_in":3600}"#,
        )
        .expect("token");
        assert_eq!(token.value.expose_secret(), "tok-9f8e7d");
        assert!(!format!("{token:?}").contains("tok-9f8e7d"));
        assert!(token.renew_at > Instant::now() + Duration::from_secs(3400));
        let refused = token_answer(401, br#"{"error":"invalid_client"}"#).expect_err("refused");
        assert!(
            matches!(&refused, ApplianceError::CredentialsRefused { status: 401, error: Some(e) } if e == "invalid_client")
        );
        let refused = PluginError::from(refused);
        assert_eq!(refused.kind, ErrorKind::Configuration);
        assert!(refused
            .message
            .contains("refused the OAuth client ID and secret (invalid_client)"));
        let no_detail = PluginError::from(token_answer(400, b"<html>").expect_err("refused"));
        assert!(
            no_detail.message.contains("(HTTP 400)"),
            "{}",
            no_detail.message
        );
        assert_eq!(
            PluginError::from(token_answer(503, b"").expect_err("down")).kind,
            ErrorKind::Retryable
        );
        assert_eq!(
            PluginError::from(token_answer(404, b"").expect_err("wrong")).kind,
            ErrorKind::Configuration
        );
        assert!(matches!(
            token_answer(200, br#"{"access_token":""}"#),
            Err(ApplianceError::TokenAnswer(m)) if m == "has no access_token"
        ));
    }

    #[test]
    fn statuses_and_error_answers_keep_their_kind() {
        let throttled = PluginError::from(ApplianceError::Status {
            status: 429,
            call: "/api/reporting".into(),
            retry_after: Some(Duration::from_secs(3)),
        });
        assert_eq!(
            (throttled.kind, throttled.retry_after),
            (ErrorKind::Throttled, Some(Duration::from_secs(3)))
        );
        let missing = PluginError::from(ApplianceError::Status {
            status: 404,
            call: "/api/reporting".into(),
            retry_after: None,
        });
        assert_eq!(
            (missing.kind, missing.message.as_str()),
            (
                ErrorKind::Configuration,
                "the B Series appliance answered HTTP 404 to /api/reporting"
            )
        );
        let login = read_answer::<()>(200, Err(ReportError::Appliance("Login failed".into())))
            .expect_err("error answer");
        assert!(matches!(&login, ApplianceError::Answered(a) if a.status == 200 && a.is_refusal()));
        let login = PluginError::from(login);
        assert_eq!(
            (login.kind, login.message.as_str()),
            (
                ErrorKind::Configuration,
                "the B Series appliance refused the report: Login failed"
            )
        );
        let busy = PluginError::from(ApplianceError::Answered(ApplianceAnswer {
            status: 200,
            text: "Internal error".into(),
        }));
        assert_eq!(
            (busy.kind, busy.message.as_str()),
            (
                ErrorKind::Retryable,
                "the B Series appliance answered an error: Internal error"
            )
        );
        let large = PluginError::from(ApplianceError::TooLarge {
            call: "the SupportSession report".into(),
            limit: http::REPORT_ANSWER_LIMIT,
        });
        assert_eq!(large.kind, ErrorKind::Permanent);
        assert!(large.message.starts_with(
            "the appliance's answer to the SupportSession report is larger than 64 MiB;"
        ));
    }
}
