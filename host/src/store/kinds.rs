//! The store's enumerations: a job's state, an event's source, an attempt's outcome,
//! an alert's channel.
//! Each is written to and read from the database through `Param`/`FromValue`, so the engine
//! never compares or parses state names itself; an unknown name in the database is
//! an error, not a silent default.

use super::db::{FromValue, Param, Value};
use serde::Serialize;

macro_rules! stored_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];

            /// The name stored in the database and shown by the API.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(text: &str) -> Result<Self, String> {
                match text {
                    $($text => Ok(Self::$variant),)+
                    other => Err(format!(
                        "{other:?} is not one of: {}",
                        Self::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
                    )),
                }
            }
        }

        impl Param for $name {
            fn value(&self) -> Value {
                Value::Text(self.as_str().to_owned())
            }
        }

        impl FromValue for $name {
            fn from_value(value: Value) -> Result<Self, String> {
                String::from_value(value)?.parse()
            }
        }
    };
}

stored_enum! {
    /// What has become of one event in one configuration.
    JobState {
        /// Waiting for its first attempt.
        Pending => "pending",
        /// An attempt is in flight.
        Running => "running",
        Succeeded => "succeeded",
        /// The plugin decided it has nothing to do (e.g. an import rule).
        Skipped => "skipped",
        /// Waiting for a retry at `next_attempt_at`.
        Retrying => "retrying",
        Failed => "failed",
        /// No configuration took the event.
        Ignored => "ignored",
    }
}

impl JobState {
    /// No attempt will run again by itself.
    pub const fn is_finished(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Skipped | Self::Failed | Self::Ignored
        )
    }

    /// Waiting for an attempt (the dispatcher looks at these).
    pub const fn is_waiting(self) -> bool {
        matches!(self, Self::Pending | Self::Retrying)
    }
}

/// The finished states as an SQL list, for queries that must match the partial index
/// `jobs_prunable` literally (SQLite uses a partial index only when the query's terms
/// imply its WHERE clause). A test checks it against [`JobState::is_finished`].
pub const FINISHED_SQL: &str = "('succeeded', 'skipped', 'failed', 'ignored')";
/// The waiting states as an SQL list (see [`FINISHED_SQL`]).
pub const WAITING_SQL: &str = "('pending', 'retrying')";
/// The states of a job that holds back its session's later jobs.
pub const UNFINISHED_SQL: &str = "('pending', 'running', 'retrying')";

stored_enum! {
    /// How an event reached the engine.
    Source {
        /// Posted by the appliance to the event address.
        Outbound => "outbound",
        /// Found by polling the appliance.
        Polling => "polling",
        /// Queued by reconciliation: the session ended but its event never came.
        Reconcile => "reconcile",
        /// Imported by a backfill of a date range.
        Backfill => "backfill",
    }
}

impl Source {
    /// The source as plugins see it.
    pub const fn to_plugin(self) -> plugin_api::EventSource {
        match self {
            Self::Outbound => plugin_api::EventSource::Outbound,
            Self::Polling => plugin_api::EventSource::Polling,
            Self::Reconcile => plugin_api::EventSource::Reconcile,
            Self::Backfill => plugin_api::EventSource::Backfill,
        }
    }
}

stored_enum! {
    /// How one attempt ended.
    AttemptOutcome {
        Running => "running",
        Succeeded => "succeeded",
        Skipped => "skipped",
        Error => "error",
        /// The engine stopped during the attempt; the job ran again.
        Interrupted => "interrupted",
    }
}

stored_enum! {
    /// Where an alert goes.
    Channel {
        Email => "email",
        Webhook => "webhook",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql_list(states: impl Iterator<Item = JobState>) -> String {
        let names: Vec<String> = states.map(|s| format!("'{s}'")).collect();
        format!("({})", names.join(", "))
    }

    #[test]
    fn the_sql_lists_match_the_states_they_name() {
        let all = JobState::ALL.iter().copied();
        assert_eq!(
            FINISHED_SQL,
            sql_list(all.clone().filter(|s| s.is_finished()))
        );
        assert_eq!(
            WAITING_SQL,
            sql_list(all.clone().filter(|s| s.is_waiting()))
        );
        assert_eq!(UNFINISHED_SQL, sql_list(all.filter(|s| !s.is_finished())));
    }

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused() {
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>(), Ok(*state));
        }
        assert_eq!(
            "done".parse::<JobState>(),
            Err("\"done\" is not one of: pending, running, succeeded, skipped, retrying, failed, ignored".into())
        );
        let conn = super::super::db::Connection::sqlite(
            rusqlite::Connection::open_in_memory().expect("db"),
        );
        let back: Source = conn
            .query_row(
                "SELECT ?1",
                crate::store::db::params![Source::Polling],
                |r| r.get(0),
            )
            .expect("round trip");
        assert_eq!(back, Source::Polling);
        let bad = conn.query_row(
            "SELECT 'carrier pigeon'",
            crate::store::db::params![],
            |r| r.get::<_, Source>(0),
        );
        assert!(bad.is_err());
    }
}
