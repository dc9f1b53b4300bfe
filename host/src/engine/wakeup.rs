//! How the other parts tell the engine to look again: intake after it stored an
//! event, the configurations service after a configuration changed. Made first and
//! handed to each part when it is built, so no part needs another wired in later.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct Wakeup {
    notify: Notify,
    /// Configurations applied or deleted since the engine last looked.
    changed: Mutex<BTreeSet<i64>>,
}

impl Wakeup {
    /// Something may be due now (an event stored, a job finished or retried).
    pub fn work_arrived(&self) {
        self.notify.notify_one();
    }

    /// A configuration was saved, enabled, disabled or deleted.
    pub fn configuration_changed(&self, id: i64) {
        self.changed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id);
        self.notify.notify_one();
    }

    /// Waits for a wake-up, at most `timeout`.
    pub(super) async fn wait(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.notify.notified()).await;
    }

    /// The configurations changed since the last call.
    pub(super) fn take_changed(&self) -> BTreeSet<i64> {
        std::mem::take(
            &mut *self
                .changed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}
