//! A configuration's health as the page and the API show it: the stored facts
//! (`store::health`), the engine's throttle pause, and what needs attention.

use serde::Serialize;

use super::Engine;
use crate::configurations::Status;
use crate::store::health::{self, StoredHealth};
use crate::store::{now_ms, StoreError};

#[derive(Debug, Clone, Serialize)]
pub struct Health {
    #[serde(flatten)]
    pub stored: StoredHealth,
    /// Its queue is paused until then (ms): the remote asked to slow down.
    pub throttled_until: Option<i64>,
    /// Why an admin should look, in words; empty when all is well.
    pub attention: Vec<String>,
}

impl Engine {
    /// `waiting_limit_ms`: how long an event may wait before it needs attention
    /// (the alerts' `alert_after_minutes`).
    pub async fn health(
        &self,
        configuration_id: i64,
        status: &Status,
        waiting_limit_ms: i64,
    ) -> Result<Health, StoreError> {
        let stored = self
            .store
            .read(move |conn| health::of(conn, configuration_id))
            .await?;
        let now = now_ms();
        let throttled_until = self
            .lock()
            .paused_until
            .get(&configuration_id)
            .copied()
            .filter(|until| *until > now);
        let reconcile_error = self
            .reconcile_state(configuration_id)
            .await?
            .and_then(|s| s.last_error);
        let attention = attention(
            &stored,
            status,
            reconcile_error.as_deref(),
            now,
            waiting_limit_ms,
        );
        Ok(Health {
            stored,
            throttled_until,
            attention,
        })
    }
}

/// The reasons to look, from the facts (a pure function, tested as a table).
pub fn attention(
    health: &StoredHealth,
    status: &Status,
    reconcile_error: Option<&str>,
    now: i64,
    waiting_limit_ms: i64,
) -> Vec<String> {
    let mut why = Vec::new();
    match status {
        Status::Failed(reason) | Status::PluginNotLoaded(reason) => why.push(not_running(reason)),
        Status::Running | Status::Disabled => {}
    }
    if health.failed > 0 {
        why.push(failed_events(health.failed));
    }
    if let Some(oldest) = health.oldest_waiting_at {
        let waited = now - oldest;
        if waited > waiting_limit_ms {
            why.push(format!("an event has waited {}", self::waited(waited)));
        }
    }
    if let Some(error) = &health.last_poll_error {
        why.push(format!("the last poll failed: {error}"));
    }
    if let Some(error) = reconcile_error {
        why.push(format!("the last reconciliation failed: {error}"));
    }
    why
}

// The reasons the page and the alerts both give, in the same words.

pub fn not_running(why: &str) -> String {
    format!("not running: {why}")
}

pub fn failed_events(count: i64) -> String {
    match count {
        1 => "1 event failed".to_owned(),
        n => format!("{n} events failed"),
    }
}

/// A wait in words, to the minute past the first one.
pub fn waited(ms: i64) -> String {
    match ms / 60_000 {
        0 => format!("{} seconds", ms / 1000),
        1 => "1 minute".to_owned(),
        m => format!("{m} minutes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_needs_attention() {
        let now = 100 * 60_000;
        let calm = StoredHealth {
            pending: 3,
            oldest_waiting_at: Some(now - 60_000),
            ..StoredHealth::default()
        };
        let cases: Vec<(StoredHealth, Status, Option<&str>, Vec<&str>)> = vec![
            (calm.clone(), Status::Running, None, vec![]),
            (calm.clone(), Status::Disabled, None, vec![]),
            (
                calm.clone(),
                Status::Failed("the token was refused".into()),
                None,
                vec!["not running: the token was refused"],
            ),
            (
                StoredHealth {
                    failed: 2,
                    ..calm.clone()
                },
                Status::Running,
                None,
                vec!["2 events failed"],
            ),
            (
                StoredHealth {
                    oldest_waiting_at: Some(now - 16 * 60_000),
                    ..calm.clone()
                },
                Status::Running,
                None,
                vec!["an event has waited 16 minutes"],
            ),
            (
                StoredHealth {
                    last_poll_error: Some("timed out".into()),
                    ..calm.clone()
                },
                Status::Running,
                Some("listing refused"),
                vec![
                    "the last poll failed: timed out",
                    "the last reconciliation failed: listing refused",
                ],
            ),
        ];
        for (health, status, reconcile, expected) in cases {
            assert_eq!(
                attention(&health, &status, reconcile, now, 15 * 60_000),
                expected,
                "{health:?} {status:?}"
            );
        }
    }
}
