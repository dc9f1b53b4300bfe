//! The event history: list with filters, one event with every attempt, retry now;
//! and `/metrics`.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::api::{ApiPath, ApiQuery, AppState};
use super::error::ApiError;
use super::rfc3339;
use crate::store::events::{self, Filter, JobState, JobView};
use crate::store::{now_ms, StoreError};

#[derive(Debug, Deserialize)]
pub struct EventQuery {
    configuration: Option<String>,
    state: Option<String>,
    lsid: Option<String>,
    since: Option<String>,
    limit: Option<String>,
}

fn job_json(job: &JobView) -> Value {
    json!({
        "id": job.id,
        "event_id": job.event_id,
        "configuration_id": job.configuration_id,
        "configuration_name": job.configuration_name,
        "source": job.source,
        "appliance_id": job.appliance_id,
        "event_type": job.event_type,
        "lsid": job.lsid,
        "state": job.state,
        "attempts": job.attempts,
        "last_error": job.last_error,
        "result": job.result,
        "next_attempt_at": job.next_attempt_at.map(rfc3339),
        "received_at": rfc3339(job.received_at),
        "updated_at": rfc3339(job.updated_at),
    })
}

/// `since`: RFC 3339, or Unix seconds.
fn parse_since(text: &str) -> Result<i64, ApiError> {
    if let Ok(seconds) = text.parse::<i64>() {
        return Ok(seconds.saturating_mul(1000));
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|_| ApiError::BadRequest(format!("since={text:?} is neither an RFC 3339 time (2026-11-27T09:00:00Z) nor Unix seconds")))
}

fn store_error(e: StoreError, id: i64) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::NotFound(format!("no event with id {id}")),
        other => ApiError::internal(other),
    }
}

pub async fn list_events(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let configuration_id = match q.configuration.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(c.parse::<i64>().map_err(|_| {
            ApiError::BadRequest(format!("configuration={c:?} is not a configuration id"))
        })?),
    };
    let state = match q.state.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(
            s.parse::<JobState>()
                .map_err(|e| ApiError::BadRequest(format!("state={e}")))?,
        ),
    };
    let limit = match q.limit.as_deref().filter(|l| !l.is_empty()) {
        None => 100,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| {
                ApiError::BadRequest(format!("limit={l:?} must be a number from 1 to 1000"))
            })?,
    };
    let filter = Filter {
        configuration_id,
        state,
        lsid: q.lsid.filter(|l| !l.is_empty()),
        since: q
            .since
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(parse_since)
            .transpose()?,
        limit,
    };
    let _slot = app
        .history_slots
        .acquire()
        .await
        .map_err(ApiError::internal)?;
    let jobs = app
        .store
        .read(move |conn| events::list(conn, &filter))
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(jobs.iter().map(job_json).collect()))
}

pub async fn get_event(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Value>, ApiError> {
    let (job, attempts, fields) = app
        .store
        .read(move |conn| {
            let (job, attempts) = events::get(conn, id)?;
            let fields = events::event_fields(conn, job.event_id);
            Ok((job, attempts, fields))
        })
        .await
        .map_err(|e| store_error(e, id))?;
    let mut body = job_json(&job);
    match fields {
        Ok(fields) => body["fields"] = json!(fields),
        // A damaged row is shown as such, never as an empty form.
        Err(e @ StoreError::Corrupt { .. }) => {
            tracing::error!(event = job.event_id, "{e}");
            body["fields"] = Value::Null;
            body["fields_error"] = json!(e.to_string());
        }
        Err(e) => return Err(store_error(e, id)),
    }
    body["attempt_log"] = attempts
        .iter()
        .map(|a| {
            json!({
                "number": a.number,
                "started_at": rfc3339(a.started_at),
                "finished_at": a.finished_at.map(rfc3339),
                "outcome": a.outcome,
                "error_kind": a.error_kind,
                "message": a.message,
            })
        })
        .collect();
    Ok(Json(body))
}

pub async fn retry_event(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Value>, ApiError> {
    let retried = app
        .store
        .call(move |conn| events::retry(conn, id, now_ms()))
        .await
        .map_err(|e| store_error(e, id))?;
    match retried {
        Ok(()) => {}
        Err(events::NotRetried::NotFailed(state)) => {
            return Err(ApiError::Conflict(format!(
                "only a failed event can be retried; this one is {state}"
            )))
        }
        Err(events::NotRetried::NoConfiguration) => {
            return Err(ApiError::Conflict(
                "this event's configuration was deleted; it cannot run again".into(),
            ))
        }
    }
    tracing::info!(job = id, "event queued again by an admin");
    app.engine.wake();
    get_event(State(app), ApiPath(id)).await
}

pub async fn metrics(State(app): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let queue = app
        .store
        .read(events::counts_by_state)
        .await
        .map_err(ApiError::internal)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(&queue),
    ))
}
