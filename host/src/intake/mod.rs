//! The event address: the appliance's outbound events come in here.
//!
//! `POST /ERSPost?appliance=<Appliance Id>` with the appliance's form fields. An event
//! is committed to disk (with one job per configuration that takes it) before the 200
//! goes out. The appliance stops its whole stream until it gets a 200, so an event no
//! configuration takes is still answered 200 (and recorded as ignored), and only an
//! event that could not be stored is answered 503, so that the appliance keeps it.

pub mod form;
mod writer;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::configurations::Configurations;
use crate::engine::Wakeup;
use crate::metrics::{Metrics, Received};
use crate::serve::{read_body, BodyError};
use crate::settings::{HostSettings, IpNet, SecretString};
use crate::store::events::{NewEvent, Routing, Source, Stored};
use crate::store::Store;
pub use writer::Writer;

/// Largest event body taken (custom fields included).
pub const BODY_LIMIT: usize = 1024 * 1024;

/// Everything the event handler needs.
pub struct Intake {
    pub writer: Writer,
    pub configurations: Arc<Configurations>,
    pub metrics: Arc<Metrics>,
    /// Cleared on shutdown: events are then refused with 503.
    pub accepting: AtomicBool,
    pub token: Option<SecretString>,
    pub allowed_sources: Vec<IpNet>,
    /// Told after each stored event, to wake the engine.
    pub wakeup: Arc<Wakeup>,
}

impl Intake {
    pub fn new(
        store: Store,
        configurations: Arc<Configurations>,
        metrics: Arc<Metrics>,
        settings: &HostSettings,
        wakeup: Arc<Wakeup>,
    ) -> Self {
        Self {
            writer: Writer::start(store),
            configurations,
            metrics,
            accepting: AtomicBool::new(true),
            token: settings.event_token.clone(),
            allowed_sources: settings.event_allowed_sources.clone(),
            wakeup,
        }
    }

    /// Whether `peer` may post events (`event_allowed_sources`).
    fn check_source(&self, peer: SocketAddr) -> Result<(), IntakeError> {
        if self.allowed_sources.is_empty()
            || self.allowed_sources.iter().any(|n| n.contains(peer.ip()))
        {
            return Ok(());
        }
        Err(IntakeError::Forbidden(format!(
            "{} is not an allowed event source",
            peer.ip()
        )))
    }

    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    pub fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::SeqCst);
    }
}

/// Why an event was not taken; each maps to the answer the appliance gets.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("{0}")]
    Malformed(String),
    #[error("the event body is larger than {BODY_LIMIT} bytes")]
    TooLarge,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Timeout(String),
    #[error("the event could not be stored ({0}); the appliance keeps it and sends it again")]
    Unavailable(String),
    #[error("the engine is stopping; the appliance keeps the event and sends it again")]
    Stopping,
}

impl IntoResponse for IntakeError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::Malformed(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Unavailable(_) | Self::Stopping => StatusCode::SERVICE_UNAVAILABLE,
        };
        (status, Json(json!({ "error": self.to_string() }))).into_response()
    }
}

impl From<BodyError> for IntakeError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooLarge(_) => Self::TooLarge,
            BodyError::TimedOut(_) => Self::Timeout(e.to_string()),
            BodyError::Broken(_) => Self::Malformed(e.to_string()),
        }
    }
}

#[derive(Deserialize)]
struct EventQuery {
    appliance: Option<String>,
}

pub fn router(
    intake: Arc<Intake>,
    readiness: Arc<crate::readiness::Readiness>,
    body_timeout: Duration,
) -> Router {
    let gate = axum::middleware::from_fn_with_state((Arc::clone(&intake), body_timeout), gate);
    Router::new()
        .route("/ERSPost", post(receive).layer(gate))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move { readiness.answer().await }),
        )
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(intake)
}

/// Before the handler: a source that may not post events is refused before a byte of
/// its body is read, and the body is then read whole, within the size limit and the
/// body timeout, so the handler never waits on a sender.
async fn gate(
    State((intake, body_timeout)): State<(Arc<Intake>, Duration)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let read = match intake.check_source(peer) {
        Ok(()) => read_body(request, BODY_LIMIT, body_timeout)
            .await
            .map_err(IntakeError::from),
        Err(e) => Err(e),
    };
    match read {
        Ok(request) => next.run(request).await,
        Err(e) => {
            intake.metrics.received(Received::Rejected);
            tracing::warn!(%peer, "event rejected: {e}");
            crate::serve::closing(e.into_response())
        }
    }
}

async fn receive(
    State(intake): State<Arc<Intake>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<EventQuery>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<serde_json::Value>, IntakeError> {
    let result = accept(&intake, query, body).await;
    let outcome = match &result {
        Ok((_, Stored::Duplicate { .. })) => Received::Duplicate,
        Ok((_, Stored::New { jobs: 0, .. })) => Received::Ignored,
        Ok(_) => Received::Stored,
        Err(IntakeError::Unavailable(_) | IntakeError::Stopping) => Received::Unavailable,
        Err(_) => Received::Rejected,
    };
    intake.metrics.received(outcome);
    match &result {
        Err(e @ (IntakeError::Unavailable(_) | IntakeError::Stopping)) => {
            tracing::warn!(%peer, "event refused: {e}")
        }
        Err(e) => tracing::warn!(%peer, "event rejected: {e}"),
        Ok(_) => intake.wakeup.work_arrived(),
    }
    let (event, stored) = result?;
    let answer = match stored {
        Stored::Duplicate { event_id } => json!({ "status": "duplicate", "event_id": event_id }),
        Stored::New { event_id, jobs: 0 } => json!({ "status": "ignored", "event_id": event_id }),
        Stored::New { event_id, jobs } => {
            json!({ "status": "stored", "event_id": event_id, "jobs": jobs })
        }
    };
    tracing::debug!(event = %event.event_type, lsid = ?event.lsid, appliance = %event.appliance_id, %answer, "event received");
    Ok(Json(answer))
}

async fn accept(
    intake: &Intake,
    query: EventQuery,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(NewEvent, Stored), IntakeError> {
    if !intake.accepting.load(Ordering::SeqCst) {
        return Err(IntakeError::Stopping);
    }
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => IntakeError::TooLarge,
        _ => IntakeError::Malformed(e.body_text()),
    })?;
    let incoming =
        form::parse(query.appliance.as_deref(), &body).map_err(IntakeError::Malformed)?;
    if let Some(expected) = &intake.token {
        let given = incoming.token.as_ref().map_or("", SecretString::expose);
        if !crate::admin::constant_time_eq(given.as_bytes(), expected.expose().as_bytes()) {
            return Err(IntakeError::Forbidden(format!(
                "the form field {} is missing or wrong",
                form::TOKEN_FIELD
            )));
        }
    }
    let live = intake.configurations.live();
    let targets = live
        .routes(&incoming.appliance_id, &incoming.event_type)
        .await;
    let routing = if targets.is_empty() {
        Routing::Ignored(
            live.why_not_routed(&incoming.appliance_id, &incoming.event_type)
                .await,
        )
    } else {
        Routing::To(targets)
    };
    let event = NewEvent {
        source: Source::Outbound,
        dedup_key: Some(incoming.dedup_key()),
        appliance_id: incoming.appliance_id,
        event_type: incoming.event_type,
        lsid: incoming.lsid,
        timestamp: incoming.timestamp,
        fields: incoming.fields,
    };
    let stored = intake
        .writer
        .store(event.clone(), routing)
        .await
        .map_err(IntakeError::Unavailable)?;
    Ok((event, stored))
}
