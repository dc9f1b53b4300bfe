//! The audit log's one writer: a layer over the API routes that change something.
//! Each such request is recorded once it is answered: when, from which address,
//! what (the route's action, and what the handler says changed), and the outcome
//! (`ok`, or the status and the error it was refused with). Handlers add what only
//! they know (the settings an edit changed, the configuration's name) as an
//! [`Audited`] response extension.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::api::{ApiQuery, AppState};
use super::error::ApiError;
use super::{rfc3339, AdminState};
use crate::store::{audit, now_ms};

/// What a handler tells the audit log about the change it made.
#[derive(Debug, Clone, Default)]
pub struct Audited {
    pub configuration_id: Option<i64>,
    pub configuration_name: Option<String>,
    pub detail: Value,
}

/// `response` with what the audit log should say about it.
pub fn audited(response: impl IntoResponse, audited: Audited) -> Response {
    let mut response = response.into_response();
    response.extensions_mut().insert(audited);
    response
}

/// The action a route records, or none (reads, tests).
fn action_of(method: &Method, route: &str) -> Option<&'static str> {
    let route = route.strip_prefix("/api").unwrap_or(route);
    Some(match (method.as_str(), route) {
        ("POST", "/configurations") => "create",
        ("POST", "/configurations/import") => "import",
        ("PUT", "/configurations/{id}") => "edit",
        ("DELETE", "/configurations/{id}") => "delete",
        ("POST", "/configurations/{id}/copy") => "copy",
        ("POST", "/configurations/{id}/enable") => "enable",
        ("POST", "/configurations/{id}/disable") => "disable",
        ("POST", "/configurations/{id}/actions/{action}") => "action",
        ("POST", "/configurations/{id}/backfill") => "backfill started",
        ("DELETE", "/backfills/{id}") => "backfill cancelled",
        ("POST", "/configurations/{id}/reconcile") => "reconcile now",
        ("POST", "/configurations/{id}/retry-failed") => "retry all failed",
        ("POST", "/events/{id}/retry") => "retry",
        ("PUT", "/alerts") => "alert settings changed",
        ("POST", "/alerts/test") => "test alert",
        _ => return None,
    })
}

/// The configuration a `/configurations/{id}/...` path names (with or without the
/// `/api` a nested router strips).
fn configuration_in(path: &str) -> Option<i64> {
    let path = path.strip_prefix("/api").unwrap_or(path);
    let rest = path.strip_prefix("/configurations/")?;
    rest.split('/').next()?.parse().ok()
}

/// Bodies of refusals are small JSON; one larger than this is not read for its text.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

pub async fn record(State(app): State<Arc<AdminState>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let Some(action) = route
        .as_deref()
        .and_then(|route| action_of(request.method(), route))
    else {
        return next.run(request).await;
    };
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |c| c.0.to_string());
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    let mut audited = response
        .extensions()
        .get::<Audited>()
        .cloned()
        .unwrap_or_default();
    let (response, outcome) = if status.is_success() {
        (response, "ok".to_owned())
    } else {
        // The refusal's own words, from its `{error}` body (put back for the client).
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, ERROR_BODY_LIMIT)
            .await
            .unwrap_or_default();
        let error = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_default();
        (
            Response::from_parts(parts, Body::from(bytes)),
            format!("refused ({}): {error}", status.as_u16()),
        )
    };
    if audited.configuration_id.is_none() {
        audited.configuration_id = configuration_in(&path);
    }
    if audited.configuration_name.is_none() {
        if let Some(id) = audited.configuration_id {
            audited.configuration_name = app.configurations.get(id).await.ok().map(|c| c.name);
        }
    }
    let entry = audit::NewEntry {
        at: now_ms(),
        client,
        action: action.to_owned(),
        configuration_id: audited.configuration_id,
        configuration_name: audited.configuration_name,
        detail: if audited.detail.is_null() {
            json!({})
        } else {
            audited.detail
        },
        outcome,
    };
    if let Err(e) = app
        .store
        .call(move |conn| audit::record(conn, &entry))
        .await
    {
        tracing::error!("cannot write the audit log: {e}");
    }
    response
}

#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    configuration: Option<String>,
    before: Option<String>,
    limit: Option<String>,
}

/// `GET /api/audit?configuration=&before=&limit=`: newest first, keyset paging as the
/// history's.
pub async fn list(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let number = |name: &str, value: &Option<String>| -> Result<Option<i64>, ApiError> {
        value
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| ApiError::BadRequest(format!("{name}={v:?} is not a number")))
            })
            .transpose()
    };
    let configuration = number("configuration", &q.configuration)?;
    let before = number("before", &q.before)?;
    let limit = match number("limit", &q.limit)? {
        None => 100,
        Some(l) if (1..=1000).contains(&l) => l as usize,
        Some(l) => {
            return Err(ApiError::BadRequest(format!(
                "limit={l} must be a number from 1 to 1000"
            )))
        }
    };
    let entries = app
        .store
        .read(move |conn| audit::list(conn, configuration, before, limit))
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(
        entries
            .into_iter()
            .map(|e| {
                json!({
                    "id": e.id,
                    "at": rfc3339(e.at),
                    "client": e.client,
                    "action": e.action,
                    "configuration_id": e.configuration_id,
                    "configuration_name": e.configuration_name,
                    "detail": e.detail,
                    "outcome": e.outcome,
                })
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_changing_route_has_its_action_and_reads_have_none() {
        let post = Method::POST;
        assert_eq!(action_of(&post, "/api/configurations"), Some("create"));
        assert_eq!(
            action_of(&Method::PUT, "/api/configurations/{id}"),
            Some("edit")
        );
        assert_eq!(
            action_of(&post, "/api/configurations/{id}/actions/{action}"),
            Some("action")
        );
        assert_eq!(action_of(&post, "/api/configurations/{id}/test"), None);
        assert_eq!(action_of(&Method::GET, "/api/configurations"), None);
        assert_eq!(configuration_in("/api/configurations/12/copy"), Some(12));
        assert_eq!(configuration_in("/configurations/12"), Some(12));
        assert_eq!(configuration_in("/api/backfills/3"), None);
    }
}
