//! Backfills (start one over a range of session end times, follow it, cancel it) and
//! reconciliation on demand. The engine does the work (`engine::bulk`); this is its
//! admin API, and the one parser of the times it takes (the CLI uses it too).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::api::{ApiJson, ApiPath, AppState};
use super::error::ApiError;
use crate::engine::bulk::ReconcileError;
use crate::store::bulk::BackfillView;
use crate::store::{now_ms, StoreError};

/// The forms [`parse_time`] takes, for error messages.
pub const TIME_FORMS: &str = "RFC 3339 (2026-11-01T00:00:00Z, or with an offset: \
    2026-11-01T00:00:00+01:00), a date (2026-11-01, midnight UTC) or Unix seconds (1793491200)";

/// A time as the admin API and the CLI take it: RFC 3339 with `Z` or an offset, a
/// date (`YYYY-MM-DD`, midnight UTC), or Unix seconds. Returns Unix seconds.
pub fn parse_time(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let invalid = || format!("{text:?} is not a time: give {TIME_FORMS}");
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse::<i64>().map_err(|_| invalid());
    }
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(time.timestamp());
    }
    if let Ok(date) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        if let Some(midnight) = date.and_hms_opt(0, 0, 0) {
            return Ok(midnight.and_utc().timestamp());
        }
    }
    Err(invalid())
}

/// One time field of a request body: a JSON number of Unix seconds, or text for
/// [`parse_time`].
fn time_field(name: &str, value: &Value) -> Result<i64, ApiError> {
    let parsed = match value {
        Value::Number(n) => n
            .as_i64()
            .filter(|s| *s >= 0)
            .ok_or_else(|| format!("{n} is not a time: give {TIME_FORMS}")),
        Value::String(text) => parse_time(text),
        other => Err(format!("{other} is not a time: give {TIME_FORMS}")),
    };
    parsed.map_err(|e| ApiError::Unprocessable(format!("{name}: {e}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillRequest {
    #[serde(default)]
    since: Value,
    #[serde(default)]
    until: Value,
}

/// The range a request asks for, in Unix seconds; `until` defaults to `now_s`.
fn requested_range(body: &BackfillRequest, now_s: i64) -> Result<(i64, i64), ApiError> {
    let since = match &body.since {
        Value::Null => {
            return Err(ApiError::Unprocessable(format!(
                "since is required: the earliest session end to import, as {TIME_FORMS}"
            )))
        }
        value => time_field("since", value)?,
    };
    let until = match &body.until {
        // A `since` in the future is then refused as such, not as an empty range.
        Value::Null => now_s.max(since.saturating_add(1)),
        value => time_field("until", value)?,
    };
    Ok((since, until))
}

fn not_found(e: StoreError, id: i64) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::NotFound(format!("no backfill has the id {id}")),
        other => ApiError::internal(other),
    }
}

fn state_name(view: &BackfillView) -> String {
    serde_json::to_value(view.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// `POST /api/configurations/{id}/backfill`: 202 with the new backfill's id; the
/// engine works through it in the background.
pub async fn start_backfill(
    State(app): State<AppState>,
    ApiPath(configuration_id): ApiPath<i64>,
    ApiJson(body): ApiJson<BackfillRequest>,
) -> Result<Response, ApiError> {
    let (since, until) = requested_range(&body, now_ms() / 1000 + 1)?;
    let id = app
        .engine
        .start_backfill(configuration_id, since, until)
        .await?;
    Ok(super::audit::audited(
        (
            StatusCode::ACCEPTED,
            [(header::LOCATION, format!("/api/backfills/{id}"))],
            Json(json!({ "id": id })),
        ),
        super::audit::Audited {
            configuration_id: Some(configuration_id),
            configuration_name: None,
            detail: json!({ "backfill": id, "since": since, "until": until }),
        },
    ))
}

/// `GET /api/backfills/{id}`.
pub async fn get_backfill(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<BackfillView>, ApiError> {
    let view = app
        .engine
        .backfill(id)
        .await
        .map_err(|e| not_found(e, id))?;
    Ok(Json(view))
}

/// `DELETE /api/backfills/{id}`: cancels a running backfill and answers it as it is
/// now; 409 when it had already ended.
pub async fn cancel_backfill(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Response, ApiError> {
    let cancelled = app
        .engine
        .cancel_backfill(id)
        .await
        .map_err(|e| not_found(e, id))?;
    let view = app
        .engine
        .backfill(id)
        .await
        .map_err(|e| not_found(e, id))?;
    if !cancelled {
        return Err(ApiError::Conflict(format!(
            "the backfill {id} has already ended: it is {}",
            state_name(&view)
        )));
    }
    tracing::info!(backfill = id, configuration = %view.configuration_name, "backfill cancelled by an admin");
    let audit = super::audit::Audited {
        configuration_id: Some(view.configuration_id),
        configuration_name: Some(view.configuration_name.clone()),
        detail: json!({ "backfill": id }),
    };
    Ok(super::audit::audited(Json(view), audit))
}

/// `GET /api/configurations/{id}/backfills`: newest first.
pub async fn list_backfills(
    State(app): State<AppState>,
    ApiPath(configuration_id): ApiPath<i64>,
) -> Result<Json<Vec<BackfillView>>, ApiError> {
    app.configurations.get(configuration_id).await?;
    let views = app
        .engine
        .backfills_of(configuration_id)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(views))
}

/// `POST /api/configurations/{id}/reconcile`: one reconciliation now. As the test
/// and the actions answer, 200 with `ok` false when it ran and failed (the plugin's
/// listing, say); 404/409/422 when it cannot run.
pub async fn reconcile_now(
    State(app): State<AppState>,
    ApiPath(configuration_id): ApiPath<i64>,
) -> Result<Json<Value>, ApiError> {
    match app.engine.reconcile_now(configuration_id).await {
        Ok((found, queued)) => Ok(Json(
            json!({ "ok": true, "found": found, "queued": queued }),
        )),
        Err(ReconcileError::Cannot(e)) => Err(e.into()),
        Err(e @ ReconcileError::Failed(_)) => {
            Ok(Json(json!({ "ok": false, "error": e.to_string() })))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_dates_or_unix_seconds() {
        assert_eq!(parse_time("2026-11-01T00:00:00Z"), Ok(1_793_491_200));
        assert_eq!(parse_time("2026-11-01T01:00:00+01:00"), Ok(1_793_491_200));
        assert_eq!(parse_time("2026-10-31T19:00:00-05:00"), Ok(1_793_491_200));
        assert_eq!(parse_time("2026-11-01T00:00:00.750Z"), Ok(1_793_491_200));
        assert_eq!(parse_time("2026-11-01"), Ok(1_793_491_200));
        assert_eq!(parse_time("1793491200"), Ok(1_793_491_200));
        assert_eq!(parse_time(" 1793491200 "), Ok(1_793_491_200));
        assert_eq!(parse_time("0"), Ok(0));
    }

    #[test]
    fn a_bad_time_names_the_accepted_forms() {
        for bad in [
            "",
            "yesterday",
            "2026-11-01T00:00",
            "2026-11-01T00:00:00",
            "2026-13-01",
            "-5",
            "1.5",
            "99999999999999999999",
        ] {
            let e = parse_time(bad).expect_err(bad);
            assert!(e.contains("is not a time"), "{e}");
            assert!(e.contains("RFC 3339") && e.contains("Unix seconds"), "{e}");
        }
    }

    fn request(body: Value) -> Result<(i64, i64), ApiError> {
        let body: BackfillRequest = serde_json::from_value(body).expect("a request");
        requested_range(&body, 2_000_000_000)
    }

    fn unprocessable(result: Result<(i64, i64), ApiError>) -> String {
        match result {
            Err(e @ ApiError::Unprocessable(_)) => e.to_string(),
            other => panic!("not a 422: {other:?}"),
        }
    }

    #[test]
    fn a_request_takes_numbers_and_text_and_until_defaults_to_now() {
        assert_eq!(
            request(json!({"since": 1_793_491_200})).ok(),
            Some((1_793_491_200, 2_000_000_000))
        );
        assert_eq!(
            request(json!({"since": "1793491200", "until": "2026-11-02T00:00:00Z"})).ok(),
            Some((1_793_491_200, 1_793_577_600))
        );
        assert_eq!(
            request(json!({"since": "2026-11-01", "until": null})).ok(),
            Some((1_793_491_200, 2_000_000_000))
        );
        assert_eq!(
            request(json!({"since": 2_000_000_100})).ok(),
            Some((2_000_000_100, 2_000_000_101))
        );
    }

    #[test]
    fn a_bad_request_names_its_field() {
        let e = unprocessable(request(json!({})));
        assert!(e.starts_with("since is required"), "{e}");
        let e = unprocessable(request(json!({"since": "last week"})));
        assert!(e.starts_with("since: \"last week\" is not a time"), "{e}");
        let e = unprocessable(request(json!({"since": 0, "until": "soon"})));
        assert!(e.starts_with("until: \"soon\" is not a time"), "{e}");
        let e = unprocessable(request(json!({"since": -1})));
        assert!(e.starts_with("since: -1 is not a time"), "{e}");
        let e = unprocessable(request(json!({"since": true})));
        assert!(e.starts_with("since: true is not a time"), "{e}");
        assert!(
            serde_json::from_value::<BackfillRequest>(json!({"since": 0, "untill": 1})).is_err()
        );
    }
}
