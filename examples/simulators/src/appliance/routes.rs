//! The appliance's HTTP surface: `/oauth2/token`, `/api/reporting`, `/api/command`,
//! and the control API under `/control`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, State as AxState};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::model::{SessionSpec, SurveyAnswer};
use super::{report, State, MAX_TOKENS_PER_CLIENT};
use crate::common::{broken_response, lock, random_hex, slow, Fault, FaultRule};

pub(crate) fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/oauth2/token", post(token))
        .route("/api/reporting", get(reporting).post(reporting))
        .route("/api/command", get(command).post(command))
        .route("/control/sessions", post(create_session))
        .route("/control/sessions/{lsid}/end", post(end_session))
        .route(
            "/control/sessions/{lsid}/customer-survey",
            post(customer_survey),
        )
        .route("/control/sessions/{lsid}/rep-survey", post(rep_survey))
        .route("/control/recipients", post(add_recipient))
        .route("/control/deliveries", get(deliveries))
        .route("/control/faults", post(arm))
        .route("/control/counts", get(counts))
        .route("/control/counts/reset", post(reset_counts))
        .route("/control/rotate-secret", post(rotate_secret))
        .route("/control/token-lifetime", post(token_lifetime))
        .route("/control/reporting-permission", post(reporting_permission))
        .route("/control/namespace", post(namespace))
        .with_state(state)
}

fn xml(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/xml; charset=UTF-8"),
            (header::CONNECTION, "close"),
        ],
        body,
    )
        .into_response()
}

fn oauth_error(status: StatusCode, error: &str, message: &str) -> Response {
    (status, Json(json!({ "error": error, "message": message }))).into_response()
}

/// Counts a call to `endpoint` and applies an armed fault; `Some` is the answer to
/// give instead.
async fn fault(state: &State, endpoint: &str, xml_errors: bool) -> Option<Response> {
    apply(state, state.monitor.call(endpoint), xml_errors).await
}

async fn apply(state: &State, fault: Option<Fault>, xml_errors: bool) -> Option<Response> {
    match fault? {
        Fault::Status { status } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Some(if xml_errors {
                xml(
                    status,
                    report::error(state.namespace(), "Internal Server Error"),
                )
            } else {
                oauth_error(status, "server_error", "Internal Server Error")
            })
        }
        Fault::Slow { millis } => {
            slow(millis).await;
            None
        }
        Fault::Reset => Some(broken_response()),
        Fault::Error { message } => Some(if xml_errors {
            xml(StatusCode::OK, report::error(state.namespace(), &message))
        } else {
            oauth_error(StatusCode::BAD_REQUEST, "invalid_request", &message)
        }),
    }
}

async fn token(AxState(state): AxState<Arc<State>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(answer) = fault(&state, "token", false).await {
        return answer;
    }
    if !state.options.tls {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "OAuth requires HTTPS.",
        );
    }
    let credentials = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok());
    let Some((client_id, secret)) = credentials.as_deref().and_then(|c| c.split_once(':')) else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed.",
        );
    };
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "The authorization grant type is not supported by the authorization server.",
        );
    }
    let lifetime = *lock(&state.token_lifetime);
    let mut clients = lock(&state.clients);
    let Some(client) = clients.get_mut(client_id).filter(|c| c.secret == secret) else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed.",
        );
    };
    let access_token = random_hex(32);
    client
        .tokens
        .push_back((access_token.clone(), Instant::now() + lifetime));
    // Generating more than 30 silently invalidates the oldest.
    while client.tokens.len() > MAX_TOKENS_PER_CLIENT {
        client.tokens.pop_front();
    }
    Json(json!({ "access_token": access_token, "token_type": "Bearer", "expires_in": lifetime.as_secs() })).into_response()
}

/// The client whose valid token the request carries.
fn authorize(state: &State, headers: &HeaderMap) -> Option<bool> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))?;
    let now = Instant::now();
    lock(&state.clients)
        .values()
        .find(|c| c.tokens.iter().any(|(t, exp)| t == token && *exp > now))
        .map(|c| c.reporting_allowed)
}

fn params(uri: &axum::http::Uri, method: &Method, body: &[u8]) -> HashMap<String, String> {
    let mut params: HashMap<String, String> = uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    if method == Method::POST {
        params.extend(form_urlencoded::parse(body).into_owned());
    }
    params
}

async fn reporting(
    AxState(state): AxState<Arc<State>>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = params(&uri, &method, &body);
    // Counted per report type too (`reporting:SupportSessionListing`), so that tests
    // see how many calls of each kind a feature makes; faults can target one type.
    let typed = format!(
        "reporting:{}",
        params.get("generate_report").map_or("", String::as_str)
    );
    state.monitor.tally(&typed);
    let armed = state
        .monitor
        .call("reporting")
        .or_else(|| state.monitor.take_fault(&typed));
    if let Some(answer) = apply(&state, armed, true).await {
        return answer;
    }
    let ns = state.namespace();
    let Some(allowed) = authorize(&state, &headers) else {
        return xml(
            StatusCode::UNAUTHORIZED,
            report::error(
                ns,
                "Login failed: the access token is missing, invalid or expired.",
            ),
        );
    };
    if !allowed {
        return xml(
            StatusCode::OK,
            report::error(
                ns,
                "You do not have permission to access support session reports.",
            ),
        );
    }
    lock(&state.last_reporting_params).clone_from(&params);
    let Some(report_type) = params.get("generate_report") else {
        return xml(
            StatusCode::OK,
            report::error(ns, "The generate_report parameter is required."),
        );
    };
    let selected = match select(&state, &params) {
        Ok(lsids) => lsids,
        Err(message) => return xml(StatusCode::OK, report::error(ns, &message)),
    };
    let sessions = lock(&state.sessions);
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut found: Vec<_> = selected
        .iter()
        .filter_map(|l| sessions.get(l))
        .filter(|s| s.in_reports(now_ms))
        .collect();
    found.sort_by_key(|s| (s.end_time.unwrap_or(s.start_time), s.lseq));
    if let Some(limit) = params.get("limit").and_then(|l| l.parse::<usize>().ok()) {
        found.truncate(limit);
    }
    let host = lock(&state.host).clone();
    let body = match report_type.as_str() {
        "SupportSession" => report::session_list(ns, &found, &host),
        "SupportSessionListing" => report::session_listing(ns, &found),
        "SupportCustExitSurvey" | "SupportRepExitSurvey" => {
            let rep = report_type == "SupportRepExitSurvey";
            found.retain(|s| {
                if rep {
                    s.rep_survey.is_some()
                } else {
                    s.customer_survey.is_some()
                }
            });
            report::exit_surveys(ns, &found, rep)
        }
        other => {
            return xml(
                StatusCode::OK,
                report::error(ns, &format!("Invalid report type: {other}")),
            )
        }
    };
    if found.is_empty() {
        return xml(StatusCode::OK, report::error(ns, report::NO_DATA));
    }
    xml(StatusCode::OK, body)
}

/// The lsids a report's selector names, or why the selector is wrong.
fn select(state: &State, params: &HashMap<String, String>) -> Result<Vec<String>, String> {
    let sessions = lock(&state.sessions);
    if let Some(lsid) = params.get("lsid") {
        if lsid.trim().is_empty() {
            return Err("The lsid parameter must not be empty.".into());
        }
        return Ok(vec![lsid.clone()]);
    }
    if let Some(lsids) = params.get("lsids") {
        return Ok(lsids
            .split(',')
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect());
    }
    let duration = |unit: i64| -> Result<Option<i64>, String> {
        let d = params
            .get("duration")
            .ok_or("The duration parameter is required with a start or end time.")?
            .parse::<i64>()
            .ok()
            .filter(|d| *d >= 0)
            .ok_or("The duration parameter must be a whole number of seconds (or days), 0 for until now.")?;
        Ok((d > 0).then_some(d * unit))
    };
    let date = |text: &str| -> Result<i64, String> {
        chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| t.and_utc().timestamp())
            .ok_or_else(|| format!("Invalid date: {text} (use YYYY-MM-DD)."))
    };
    let number = |text: &str| {
        text.parse::<i64>()
            .map_err(|_| format!("Invalid timestamp: {text}."))
    };
    let (from, span, by_end) = if let Some(t) = params.get("start_time") {
        (number(t)?, duration(1)?, false)
    } else if let Some(t) = params.get("end_time") {
        (number(t)?, duration(1)?, true)
    } else if let Some(d) = params.get("start_date") {
        (date(d)?, duration(86_400)?, false)
    } else if let Some(d) = params.get("end_date") {
        (date(d)?, duration(86_400)?, true)
    } else {
        return Err("Specify lsid, lsids, start_time, end_time, start_date or end_date.".into());
    };
    let to = span.map(|s| from + s);
    Ok(sessions
        .values()
        .filter(|s| {
            // end_* selects only sessions that have ended; start_* includes running ones.
            let t = if by_end {
                s.end_time
            } else {
                Some(s.start_time)
            };
            t.is_some_and(|t| t >= from && to.is_none_or(|to| t < to))
        })
        .map(|s| s.lsid.clone())
        .collect())
}

async fn command(
    AxState(state): AxState<Arc<State>>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(answer) = fault(&state, "command", true).await {
        return answer;
    }
    let command_ns = "http://www.beyondtrust.com/sra/namespaces/API/command";
    let Some(allowed) = authorize(&state, &headers) else {
        return xml(
            StatusCode::UNAUTHORIZED,
            report::error(
                command_ns,
                "Login failed: the access token is missing, invalid or expired.",
            ),
        );
    };
    let params = params(&uri, &method, &body);
    match params.get("action").map(String::as_str) {
        Some("get_api_info") => xml(StatusCode::OK, report::api_info(allowed)),
        Some(other) => xml(
            StatusCode::OK,
            report::error(command_ns, &format!("Invalid action: {other}")),
        ),
        None => xml(
            StatusCode::OK,
            report::error(command_ns, "The action parameter is required."),
        ),
    }
}

async fn create_session(
    AxState(state): AxState<Arc<State>>,
    Json(spec): Json<SessionSpec>,
) -> Json<Value> {
    Json(json!({ "lsid": state.create_session(spec) }))
}

#[derive(Deserialize, Default)]
struct End {
    end_time: Option<i64>,
}

fn outcome(result: Result<(), String>) -> Response {
    match result {
        Ok(()) => Json(json!({ "ok": true })).into_response(),
        Err(e) => (StatusCode::NOT_FOUND, Json(json!({ "error": e }))).into_response(),
    }
}

async fn end_session(
    AxState(state): AxState<Arc<State>>,
    Path(lsid): Path<String>,
    body: Bytes,
) -> Response {
    let end: End = serde_json::from_slice(&body).unwrap_or_default();
    outcome(state.end_session(&lsid, end.end_time))
}

async fn customer_survey(
    AxState(state): AxState<Arc<State>>,
    Path(lsid): Path<String>,
    Json(answers): Json<Vec<SurveyAnswer>>,
) -> Response {
    outcome(state.submit_survey(&lsid, answers, false))
}

async fn rep_survey(
    AxState(state): AxState<Arc<State>>,
    Path(lsid): Path<String>,
    Json(answers): Json<Vec<SurveyAnswer>>,
) -> Response {
    outcome(state.submit_survey(&lsid, answers, true))
}

#[derive(Deserialize)]
struct Recipient {
    url: String,
}

async fn add_recipient(
    AxState(state): AxState<Arc<State>>,
    Json(r): Json<Recipient>,
) -> Json<Value> {
    state.delivery.add_recipient(&r.url);
    Json(json!({ "ok": true }))
}

async fn deliveries(AxState(state): AxState<Arc<State>>) -> Json<Value> {
    Json(json!(state.delivery.report()))
}

async fn arm(AxState(state): AxState<Arc<State>>, Json(rule): Json<FaultRule>) -> Json<Value> {
    state.monitor.arm(rule);
    Json(json!({ "armed": true }))
}

async fn counts(AxState(state): AxState<Arc<State>>) -> Json<Value> {
    Json(json!(state.monitor.counts()))
}

async fn reset_counts(AxState(state): AxState<Arc<State>>) -> Json<Value> {
    state.monitor.reset_counts();
    Json(json!({ "ok": true }))
}

#[derive(Deserialize)]
struct Secret {
    secret: String,
}

async fn rotate_secret(AxState(state): AxState<Arc<State>>, Json(s): Json<Secret>) -> Json<Value> {
    state.with_client(|c| {
        c.secret = s.secret;
        c.tokens.clear();
    });
    Json(json!({ "ok": true }))
}

#[derive(Deserialize)]
struct Lifetime {
    seconds: u64,
}

async fn token_lifetime(
    AxState(state): AxState<Arc<State>>,
    Json(l): Json<Lifetime>,
) -> Json<Value> {
    *lock(&state.token_lifetime) = std::time::Duration::from_secs(l.seconds);
    Json(json!({ "ok": true }))
}

#[derive(Deserialize)]
struct Allowed {
    allowed: bool,
}

async fn reporting_permission(
    AxState(state): AxState<Arc<State>>,
    Json(a): Json<Allowed>,
) -> Json<Value> {
    state.with_client(|c| c.reporting_allowed = a.allowed);
    Json(json!({ "ok": true }))
}

#[derive(Deserialize)]
struct Namespace {
    old: bool,
}

async fn namespace(AxState(state): AxState<Arc<State>>, Json(n): Json<Namespace>) -> Json<Value> {
    *lock(&state.old_namespace) = n.old;
    Json(json!({ "ok": true }))
}
