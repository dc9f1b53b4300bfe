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
use crate::store::events::{self, Filter, JobState, JobView, Source};
use crate::store::{now_ms, StoreError};

/// The history's filters as the query string gives them; every one optional.
#[derive(Debug, Deserialize)]
pub struct EventQuery {
    configuration: Option<String>,
    state: Option<String>,
    lsid: Option<String>,
    event_type: Option<String>,
    source: Option<String>,
    since: Option<String>,
    until: Option<String>,
    before: Option<String>,
    limit: Option<String>,
}

impl EventQuery {
    /// The checked filter; `max_limit` bounds `limit` (its default is 100).
    fn filter(self, max_limit: usize) -> Result<Filter, ApiError> {
        fn given(value: &Option<String>) -> Option<&str> {
            value.as_deref().map(str::trim).filter(|v| !v.is_empty())
        }
        let id = |name: &str, value: &Option<String>| -> Result<Option<i64>, ApiError> {
            given(value)
                .map(|v| {
                    v.parse::<i64>()
                        .map_err(|_| ApiError::BadRequest(format!("{name}={v:?} is not an id")))
                })
                .transpose()
        };
        let time = |name: &str, value: &Option<String>| -> Result<Option<i64>, ApiError> {
            given(value).map(|v| parse_time_ms(name, v)).transpose()
        };
        let limit = match given(&self.limit) {
            None => 100.min(max_limit),
            Some(l) => l
                .parse::<usize>()
                .ok()
                .filter(|l| (1..=max_limit).contains(l))
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "limit={l:?} must be a number from 1 to {max_limit}"
                    ))
                })?,
        };
        Ok(Filter {
            configuration_id: id("configuration", &self.configuration)?,
            state: given(&self.state)
                .map(|s| s.parse::<JobState>())
                .transpose()
                .map_err(|e| ApiError::BadRequest(format!("state={e}")))?,
            lsid: given(&self.lsid).map(str::to_owned),
            event_type: given(&self.event_type).map(str::to_owned),
            source: given(&self.source)
                .map(|s| s.parse::<Source>())
                .transpose()
                .map_err(|e| ApiError::BadRequest(format!("source={e}")))?,
            since: time("since", &self.since)?,
            until: time("until", &self.until)?,
            before: id("before", &self.before)?,
            limit,
        })
    }
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

/// A time filter: RFC 3339, a date (midnight UTC) or Unix seconds; in ms.
fn parse_time_ms(name: &str, text: &str) -> Result<i64, ApiError> {
    super::parse_time(text)
        .map(|seconds| seconds.saturating_mul(1000))
        .map_err(|e| ApiError::BadRequest(format!("{name}={e}")))
}

fn store_error(e: StoreError, id: i64) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::NotFound(format!("no event with id {id}")),
        other => ApiError::internal(other),
    }
}

/// `GET /api/events`: the newest `limit` events that match, newest first; with
/// `before=<id>`, those older than that event (keyset paging: pass the last id of a
/// page to get the next).
pub async fn list_events(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let filter = q.filter(1000)?;
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

/// Rows an export holds at most: a larger history is exported in ranges.
const EXPORT_MAX: usize = 100_000;

/// `GET /api/events/export.csv`: the events that match the filters, newest first, as
/// CSV (up to 100,000; `X-Truncated: true` when more matched).
pub async fn export_events(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let mut filter = q.filter(EXPORT_MAX)?;
    let wanted = if filter.limit == 100 {
        EXPORT_MAX
    } else {
        filter.limit
    };
    let _slot = app
        .history_slots
        .acquire()
        .await
        .map_err(ApiError::internal)?;
    let mut csv = String::from(
        "id,received_at,configuration,event_type,lsid,source,state,attempts,last_error,result\n",
    );
    let (mut written, mut truncated) = (0, false);
    loop {
        filter.limit = 1000.min(wanted - written + 1);
        let page_filter = filter.clone();
        let page = app
            .store
            .read(move |conn| events::list(conn, &page_filter))
            .await
            .map_err(ApiError::internal)?;
        for job in &page {
            if written == wanted {
                truncated = true;
                break;
            }
            csv_row(&mut csv, job);
            written += 1;
        }
        match page.last() {
            Some(last) if !truncated && page.len() == filter.limit => filter.before = Some(last.id),
            _ => break,
        }
    }
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"events.csv\"",
            ),
            (
                header::HeaderName::from_static("x-truncated"),
                if truncated { "true" } else { "false" },
            ),
        ],
        csv,
    ))
}

/// One CSV line (RFC 4180: fields with a comma, quote or line break are quoted, and
/// quotes doubled). A field that a spreadsheet would run as a formula starts with a
/// quote mark.
fn csv_row(out: &mut String, job: &JobView) {
    let fields = [
        job.id.to_string(),
        rfc3339(job.received_at),
        job.configuration_name.clone().unwrap_or_default(),
        job.event_type.clone(),
        job.lsid.clone().unwrap_or_default(),
        job.source.to_string(),
        job.state.to_string(),
        job.attempts.to_string(),
        job.last_error.clone().unwrap_or_default(),
        job.result.clone().unwrap_or_default(),
    ];
    let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
    out.push_str(&line.join(","));
    out.push('\n');
}

fn csv_field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_owned()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

#[derive(Debug, Deserialize)]
pub struct CountQuery {
    configuration: Option<String>,
}

/// `GET /api/events/counts`: events per state, of one configuration or of all.
pub async fn count_events(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<CountQuery>,
) -> Result<Json<Value>, ApiError> {
    let configuration_id = q
        .configuration
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.parse::<i64>().map_err(|_| {
                ApiError::BadRequest(format!("configuration={c:?} is not a configuration id"))
            })
        })
        .transpose()?;
    let counts = app
        .store
        .read(move |conn| events::counts_of(conn, configuration_id))
        .await
        .map_err(ApiError::internal)?;
    let mut by_state = serde_json::Map::new();
    for state in JobState::ALL {
        let n = counts
            .iter()
            .find(|(s, _)| s == state)
            .map_or(0, |(_, n)| *n);
        by_state.insert(state.to_string(), json!(n));
    }
    Ok(Json(
        json!({ "configuration": configuration_id, "states": by_state }),
    ))
}

/// `POST /api/configurations/{id}/retry-failed`: every failed event of the
/// configuration queued again, each with a fresh retry budget.
pub async fn retry_failed(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Value>, ApiError> {
    let retried = app
        .store
        .call(move |conn| events::retry_failed(conn, id, now_ms()))
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::NotFound(format!("no configuration with id {id}")),
            other => ApiError::internal(other),
        })?;
    tracing::info!(
        configuration_id = id,
        events = retried,
        "failed events queued again by an admin"
    );
    if retried > 0 {
        app.engine.wake();
    }
    Ok(Json(json!({ "retried": retried })))
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
    use crate::metrics::{Queue, StoreKind, CONTENT_TYPE};
    let (by_state, by_configuration) = app
        .store
        .read(|conn| {
            Ok((
                events::counts_by_state(conn)?,
                crate::store::metrics_queries::counts_per_configuration(conn)?,
            ))
        })
        .await
        .map_err(ApiError::internal)?;
    let queue = Queue {
        by_state: &by_state,
        by_configuration: &by_configuration,
    };
    let text = app
        .metrics
        .render(queue, StoreKind::of(app.store.is_shared()))
        .map_err(|_| ApiError::internal("the metrics could not be encoded"))?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text))
}
