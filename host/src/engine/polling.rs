//! Polling, for appliances whose events cannot reach the engine: every
//! `polling_interval_seconds` the plugin is asked for what happened since the stored
//! cursor; what it finds is queued with the new cursor in one transaction.

use std::sync::Arc;
use std::time::Duration;

use plugin_api::PollRequest;

use super::Engine;
use crate::configurations::Target;
use crate::store::events::{self, NewEvent, Source};
use crate::store::{cluster, now_ms};

/// The lease of a configuration's polling.
fn poll_lease(configuration_id: i64) -> String {
    format!("poll:{configuration_id}")
}

impl Engine {
    pub(super) async fn poll_loop(self: Arc<Self>) {
        loop {
            if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            self.forget_polls_of_changed();
            let now = now_ms();
            let pollers = self.configurations.live().pollers().await;
            // Polling stopped here (disabled, deleted, no longer polling): another
            // engine may take it at once.
            for lease in self.held_of("poll:") {
                if !pollers.iter().any(|t| poll_lease(t.id) == lease) {
                    self.let_go(&lease).await;
                }
            }
            for target in pollers {
                let Some(interval) = target.policy.polls() else {
                    continue;
                };
                let interval_ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
                let due = {
                    let state = self.lock();
                    let last = state.last_poll.get(&target.id).copied();
                    // The first poll of a run happens at once; then one per interval.
                    !state.polling.contains(&target.id)
                        && last.is_none_or(|last| now - last >= interval_ms)
                };
                if !due {
                    continue;
                }
                // One engine polls a configuration at a time: the one holding its lease.
                let lease = poll_lease(target.id);
                let newly = !self.holds(&lease);
                if !self.hold(lease).await {
                    continue;
                }
                if newly && self.identity.shared {
                    // Taken over (or first seen here): the interval runs from the last
                    // poll any engine made.
                    let id = target.id;
                    if let Ok((_, Some(last))) = self
                        .store
                        .read(move |conn| events::poll_cursor(conn, id))
                        .await
                    {
                        if now - last < interval_ms {
                            self.lock().last_poll.insert(target.id, last);
                            continue;
                        }
                    }
                }
                {
                    let mut state = self.lock();
                    state.polling.insert(target.id);
                    state.last_poll.insert(target.id, now);
                }
                tokio::spawn(Arc::clone(&self).poll_once(target));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn poll_once(self: Arc<Self>, target: Target) {
        let id = target.id;
        if let Err(message) = self.poll(&target).await {
            self.metrics.polled(false);
            tracing::warn!(configuration = %target.name, "poll failed (tried again at the next interval): {message}");
            let _ = self
                .store
                .call(move |conn| events::poll_failed(conn, id, &message, now_ms()))
                .await;
        } else {
            self.metrics.polled(true);
        }
        self.lock().polling.remove(&id);
    }

    async fn poll(&self, target: &Target) -> Result<(), String> {
        let runner = target
            .runner
            .clone()
            .ok_or_else(|| format!("the configuration is not running: {:?}", target.status))?;
        let id = target.id;
        let (cursor, _) = self
            .store
            .read(move |conn| events::poll_cursor(conn, id))
            .await
            .map_err(|e| e.to_string())?;
        // A damaged cursor fails the poll, visibly: starting over would hide it.
        let cursor = cursor
            .map(|c| serde_json::from_str(&c))
            .transpose()
            .map_err(|e| {
                format!("the stored polling cursor cannot be read ({e}); nothing was polled")
            })?;
        let request = PollRequest {
            cursor,
            since: target.created_at / 1000,
            event_types: target.policy.polling_event_types.clone(),
        };
        let result = runner.poll(request).await.map_err(|e| e.message)?;
        let events: Vec<NewEvent> = result
            .events
            .into_iter()
            .map(|e| NewEvent {
                source: Source::Polling,
                dedup_key: Some(events::dedup_key(
                    Source::Polling,
                    &id.to_string(),
                    &e.event_type,
                    e.lsid.as_deref(),
                    e.timestamp,
                )),
                appliance_id: target.policy.appliance_id.clone(),
                event_type: e.event_type,
                lsid: e.lsid,
                timestamp: e.timestamp,
                fields: e.fields,
            })
            .collect();
        let found = events.len();
        let cursor = result.cursor.to_string();
        let name = target.name.clone();
        let (owner, lease) = (self.identity.id.clone(), poll_lease(id));
        let new = self
            .store
            .call(move |conn| {
                // Cut off past the lease, another engine polls now: its cursor stands.
                if !cluster::holds_lease(conn, &lease, &owner, now_ms())? {
                    return Ok(None);
                }
                events::insert_polled(conn, (id, &name), &events, &cursor, now_ms()).map(Some)
            })
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the polling lease ended during the poll and another engine polls now; what this poll found is left to it")?;
        tracing::info!(configuration = %target.name, found, new, "polled");
        if new > 0 {
            self.wake();
        }
        Ok(())
    }
}
