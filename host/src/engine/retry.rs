//! What becomes of a job after an attempt: done, skipped, retried (when and why not),
//! failed, or paused by throttling. Pure, so every rule is tested on its own.

use std::time::Duration;

use plugin_api::{ErrorKind, EventSource, Outcome, PluginError};

use crate::configurations::EventPolicy;
use crate::store::events::{Finish, FAILED, RETRYING, SKIPPED, SUCCEEDED};

/// Exponential backoff with jitter, between `min` and `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

/// A throttled call that names no delay waits this long.
pub const DEFAULT_THROTTLE: Duration = Duration::from_secs(60);

impl Backoff {
    /// The delay before retry number `failures` (1 for the first), `jitter` in [0, 1).
    pub fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let exponent = failures.saturating_sub(1).min(20);
        let base = self.min.saturating_mul(1u32 << exponent).min(self.max);
        // ±20 %, never below min nor above max.
        let factor = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
        base.mul_f64(factor).clamp(self.min, self.max)
    }
}

/// The decision after one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub finish: Finish,
    /// Pause the configuration's whole queue until then (ms).
    pub pause_until: Option<i64>,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[allow(clippy::too_many_arguments)]
pub fn decide(
    result: &Result<Outcome, PluginError>,
    policy: &EventPolicy,
    source: EventSource,
    event_type: &str,
    failures_before: u32,
    now: i64,
    backoff: &Backoff,
    jitter: f64,
) -> Decision {
    let finish =
        |state, next, result: Option<String>, error: Option<&PluginError>, counts, uncount| {
            Finish {
                state,
                next_attempt_at: next,
                result,
                error: error.map(|e| (e.kind.to_string(), e.message.clone())),
                counts_as_failure: counts,
                uncount_attempt: uncount,
            }
        };
    let error = match result {
        Ok(Outcome::Done { detail }) => {
            return Decision {
                finish: finish(SUCCEEDED, now, Some(detail.clone()), None, false, false),
                pause_until: None,
            }
        }
        Ok(Outcome::Skipped { reason }) => {
            return Decision {
                finish: finish(SKIPPED, now, Some(reason.clone()), None, false, false),
                pause_until: None,
            }
        }
        Err(e) => e,
    };
    if error.kind == ErrorKind::Throttled {
        // The remote asks us to slow down: not the event's failure, never counted.
        let until = now + ms(error.retry_after.unwrap_or(DEFAULT_THROTTLE));
        return Decision {
            finish: finish(RETRYING, until, None, Some(error), false, true),
            pause_until: Some(until),
        };
    }
    let failures = failures_before + 1;
    let worth_retrying = matches!(
        error.kind,
        ErrorKind::Retryable | ErrorKind::TimedOut | ErrorKind::Configuration
    );
    let why_not = if !worth_retrying {
        Some(format!("not retried: a {} error", error.kind))
    } else if !policy.retries(source, event_type) {
        Some(format!(
            "not retried: {event_type} is not among this configuration's retried {} event types",
            match source {
                EventSource::Outbound => "outbound",
                EventSource::Polling => "polling",
            }
        ))
    } else if failures > policy.retry_attempt_limit {
        Some(format!(
            "gave up after {} retries (the Retry Attempt Limit)",
            policy.retry_attempt_limit
        ))
    } else {
        None
    };
    match why_not {
        Some(why) => {
            let failed = PluginError {
                message: format!("{} — {why}", error.message),
                ..error.clone()
            };
            Decision {
                finish: finish(FAILED, now, None, Some(&failed), true, false),
                pause_until: None,
            }
        }
        None => {
            let delay = backoff
                .delay(failures, jitter)
                .max(error.retry_after.unwrap_or_default());
            Decision {
                finish: finish(RETRYING, now + ms(delay), None, Some(error), true, false),
                pause_until: None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Backoff = Backoff {
        min: Duration::from_secs(30),
        max: Duration::from_secs(1800),
    };
    const END: &str = "support_conference_end";

    fn policy(limit: u32) -> EventPolicy {
        EventPolicy {
            appliance_id: "Default".into(),
            outbound_event_types: vec![END.into()],
            polling_event_types: vec![],
            polling_interval: None,
            retry_attempt_limit: limit,
            retry_outbound_event_types: vec![END.into()],
            retry_polling_event_types: vec![],
        }
    }

    fn decide_err(
        e: PluginError,
        policy: &EventPolicy,
        source: EventSource,
        failures: u32,
    ) -> Decision {
        decide(
            &Err(e),
            policy,
            source,
            END,
            failures,
            1_000_000,
            &BACKOFF,
            0.5,
        )
    }

    #[test]
    fn backoff_doubles_from_about_30_s_to_at_most_30_min_with_jitter() {
        assert_eq!(BACKOFF.delay(1, 0.5), Duration::from_secs(30));
        assert_eq!(BACKOFF.delay(2, 0.5), Duration::from_secs(60));
        assert_eq!(BACKOFF.delay(3, 0.5), Duration::from_secs(120));
        assert_eq!(BACKOFF.delay(30, 0.5), Duration::from_secs(1800));
        assert_eq!(BACKOFF.delay(2, 0.0), Duration::from_secs(48));
        assert_eq!(BACKOFF.delay(2, 0.999_999).as_secs(), 71);
        assert_eq!(
            BACKOFF.delay(1, 0.0),
            Duration::from_secs(30),
            "never below the minimum"
        );
    }

    #[test]
    fn retryable_errors_retry_until_the_limit() {
        let d = decide_err(
            PluginError::retryable("503"),
            &policy(2),
            EventSource::Outbound,
            0,
        );
        assert_eq!(
            (d.finish.state, d.finish.next_attempt_at),
            (RETRYING, 1_000_000 + 30_000)
        );
        assert!(d.finish.counts_as_failure);
        let d = decide_err(
            PluginError::retryable("503"),
            &policy(2),
            EventSource::Outbound,
            1,
        );
        assert_eq!(
            (d.finish.state, d.finish.next_attempt_at),
            (RETRYING, 1_000_000 + 60_000)
        );
        let d = decide_err(
            PluginError::retryable("503"),
            &policy(2),
            EventSource::Outbound,
            2,
        );
        assert_eq!(d.finish.state, FAILED);
        assert_eq!(
            d.finish.error.map(|e| e.1).as_deref(),
            Some("503 — gave up after 2 retries (the Retry Attempt Limit)")
        );
    }

    #[test]
    fn only_listed_types_are_retried() {
        let d = decide_err(
            PluginError::retryable("503"),
            &policy(3),
            EventSource::Polling,
            0,
        );
        assert_eq!(d.finish.state, FAILED);
        assert_eq!(
            d.finish.error.map(|e| e.1).as_deref(),
            Some("503 — not retried: support_conference_end is not among this configuration's retried polling event types")
        );
    }

    #[test]
    fn permanent_errors_and_panics_fail_at_once() {
        for e in [
            PluginError::permanent("400 bad column"),
            PluginError::new(ErrorKind::Panicked, "boom"),
        ] {
            let d = decide_err(e, &policy(5), EventSource::Outbound, 0);
            assert_eq!(d.finish.state, FAILED);
        }
    }

    #[test]
    fn a_retry_waits_at_least_what_the_plugin_asks() {
        let e = PluginError::retryable("busy").retry_after(Duration::from_secs(90));
        let d = decide_err(e, &policy(3), EventSource::Outbound, 0);
        assert_eq!(d.finish.next_attempt_at, 1_000_000 + 90_000);
    }

    #[test]
    fn throttling_pauses_the_queue_without_counting_a_failure() {
        let e = PluginError::throttled("429", Duration::from_secs(7));
        let d = decide_err(e, &policy(0), EventSource::Outbound, 0);
        assert_eq!(d.finish.state, RETRYING, "even with no retries allowed");
        assert_eq!(d.pause_until, Some(1_007_000));
        assert!(!d.finish.counts_as_failure);
        assert!(d.finish.uncount_attempt);
    }

    #[test]
    fn outcomes_finish_the_job() {
        let d = decide(
            &Ok(Outcome::Skipped {
                reason: "no case".into(),
            }),
            &policy(1),
            EventSource::Outbound,
            END,
            0,
            5,
            &BACKOFF,
            0.5,
        );
        assert_eq!(
            (d.finish.state, d.finish.result.as_deref()),
            (SKIPPED, Some("no case"))
        );
        let d = decide(
            &Ok(Outcome::Done {
                detail: "row".into(),
            }),
            &policy(1),
            EventSource::Outbound,
            END,
            0,
            5,
            &BACKOFF,
            0.5,
        );
        assert_eq!(d.finish.state, SUCCEEDED);
    }
}
