//! `/readyz`, on both addresses: 200 while the engine takes events (plugins loaded,
//! the store writable), 503 while it drains after SIGTERM or when the store cannot be
//! written. `/healthz` stays "the process is alive".

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::intake::Intake;
use crate::store::Store;

/// How long the store may take to grant a write before the engine says it is not ready.
const WRITE_PROBE: Duration = Duration::from_secs(2);

pub struct Readiness {
    pub intake: Arc<Intake>,
    pub store: Store,
}

impl Readiness {
    /// Why the engine is not ready, if it is not.
    pub async fn check(&self) -> Result<(), String> {
        if !self.intake.is_accepting() {
            return Err("the engine is stopping".into());
        }
        let probe = self.store.call(|conn| {
            // Takes the lock an event's insert takes first and gives it back:
            // SQLite's write lock, PostgreSQL's ROW EXCLUSIVE lock on the events
            // (which waits while another session holds the table locked).
            conn.execute_batch(match conn.dialect() {
                crate::store::db::Dialect::Sqlite => "BEGIN IMMEDIATE; ROLLBACK",
                crate::store::db::Dialect::Postgres => {
                    "BEGIN; LOCK TABLE events IN ROW EXCLUSIVE MODE; ROLLBACK"
                }
            })?;
            Ok(())
        });
        match tokio::time::timeout(WRITE_PROBE, probe).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("the store cannot be written: {e}")),
            Err(_) => Err(format!(
                "the store did not grant a write within {} s",
                WRITE_PROBE.as_secs()
            )),
        }
    }

    pub async fn answer(&self) -> Response {
        match self.check().await {
            Ok(()) => (StatusCode::OK, Json(json!({ "ready": true }))).into_response(),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "ready": false, "reason": why })),
            )
                .into_response(),
        }
    }
}
