//! What becomes of a job after an attempt: done, skipped, retried (when and why not),
//! failed, or paused by throttling. Pure, so every rule is tested on its own.

use std::time::Duration;

use plugin_api::{ErrorKind, EventSource, Outcome, PluginError};

use crate::configurations::EventPolicy;
use crate::store::events::{JobError, Verdict};

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

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The attempt being decided on.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub source: EventSource,
    pub event_type: &'a str,
    /// Failures counted against the retry limit before this attempt.
    pub failures_before: u32,
    /// When the attempt ended (ms).
    pub now: i64,
}

fn job_error(error: &PluginError, message: String) -> JobError {
    JobError {
        kind: error.kind.to_string(),
        message,
    }
}

/// What becomes of the job after `result`; `jitter` in [0, 1).
pub fn decide(
    result: &Result<Outcome, PluginError>,
    policy: &EventPolicy,
    attempt: &Attempt<'_>,
    backoff: &Backoff,
    jitter: f64,
) -> Verdict {
    let now = attempt.now;
    let error = match result {
        Ok(Outcome::Done { detail }) => {
            return Verdict::Succeeded {
                detail: detail.clone(),
            }
        }
        Ok(Outcome::Skipped { reason }) => {
            return Verdict::Skipped {
                reason: reason.clone(),
            }
        }
        Err(e) => e,
    };
    if error.kind == ErrorKind::Throttled {
        // The remote asks us to slow down: not the event's failure, never counted.
        return Verdict::Throttled {
            until: now + ms(error.retry_after.unwrap_or(DEFAULT_THROTTLE)),
            error: job_error(error, error.message.clone()),
        };
    }
    let failures = attempt.failures_before + 1;
    let worth_retrying = matches!(
        error.kind,
        ErrorKind::Retryable | ErrorKind::TimedOut | ErrorKind::Configuration
    );
    let why_not = if !worth_retrying {
        Some(format!("not retried: a {} error", error.kind))
    } else if !policy.retries(attempt.source, attempt.event_type) {
        Some(format!(
            "not retried: {} is not among this configuration's retried {} event types",
            attempt.event_type,
            crate::configurations::policy::RetryGroup::of(attempt.source).name()
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
        Some(why) => Verdict::Failed {
            error: job_error(error, format!("{} — {why}", error.message)),
        },
        None => {
            let delay = backoff
                .delay(failures, jitter)
                .max(error.retry_after.unwrap_or_default());
            Verdict::Retry {
                at: now + ms(delay),
                error: job_error(error, error.message.clone()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::events::JobState;

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
            reconcile_interval: None,
        }
    }

    fn decide_err(
        e: PluginError,
        policy: &EventPolicy,
        source: EventSource,
        failures: u32,
    ) -> Verdict {
        decide(
            &Err(e),
            policy,
            &attempt(source, failures, 1_000_000),
            &BACKOFF,
            0.5,
        )
    }

    fn attempt(source: EventSource, failures_before: u32, now: i64) -> Attempt<'static> {
        Attempt {
            source,
            event_type: END,
            failures_before,
            now,
        }
    }

    /// The state and the time of the next attempt, when there is one.
    fn next(v: &Verdict) -> (JobState, Option<i64>) {
        let at = match v {
            Verdict::Retry { at, .. } => Some(*at),
            Verdict::Throttled { until, .. } => Some(*until),
            _ => None,
        };
        (v.state(), at)
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
        assert_eq!(next(&d), (JobState::Retrying, Some(1_000_000 + 30_000)));
        assert!(
            matches!(d, Verdict::Retry { .. }),
            "counts as a failure: {d:?}"
        );
        let d = decide_err(
            PluginError::retryable("503"),
            &policy(2),
            EventSource::Outbound,
            1,
        );
        assert_eq!(next(&d), (JobState::Retrying, Some(1_000_000 + 60_000)));
        let d = decide_err(
            PluginError::retryable("503"),
            &policy(2),
            EventSource::Outbound,
            2,
        );
        assert_eq!(d.state(), JobState::Failed);
        assert_eq!(
            d.error().map(|e| e.message.as_str()),
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
        assert_eq!(d.state(), JobState::Failed);
        assert_eq!(
            d.error().map(|e| e.message.as_str()),
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
            assert_eq!(d.state(), JobState::Failed);
        }
    }

    #[test]
    fn a_retry_waits_at_least_what_the_plugin_asks() {
        let e = PluginError::retryable("busy").retry_after(Duration::from_secs(90));
        let d = decide_err(e, &policy(3), EventSource::Outbound, 0);
        assert_eq!(next(&d).1, Some(1_000_000 + 90_000));
    }

    #[test]
    fn throttling_pauses_the_queue_without_counting_a_failure() {
        let e = PluginError::throttled("429", Duration::from_secs(7));
        let d = decide_err(e, &policy(0), EventSource::Outbound, 0);
        assert_eq!(
            d.state(),
            JobState::Retrying,
            "even with no retries allowed"
        );
        assert!(
            matches!(
                d,
                Verdict::Throttled {
                    until: 1_007_000,
                    ..
                }
            ),
            "the queue pauses; neither a failure nor a run is counted: {d:?}"
        );
    }

    #[test]
    fn outcomes_finish_the_job() {
        let d = decide(
            &Ok(Outcome::Skipped {
                reason: "no case".into(),
            }),
            &policy(1),
            &attempt(EventSource::Outbound, 0, 5),
            &BACKOFF,
            0.5,
        );
        assert_eq!(
            d,
            Verdict::Skipped {
                reason: "no case".into()
            }
        );
        let d = decide(
            &Ok(Outcome::Done {
                detail: "row".into(),
            }),
            &policy(1),
            &attempt(EventSource::Outbound, 0, 5),
            &BACKOFF,
            0.5,
        );
        assert_eq!(d.state(), JobState::Succeeded);
    }
}
