//! Counts for `/metrics` beyond the queue per state (`events::counts_by_state`).

use super::db::params;
use super::events::JobState;
use super::{Connection, StoreError};

/// Jobs per configuration (the name each job was queued under) and state, sorted.
/// Events that no configuration took (`ignored`, no configuration) are not counted.
pub fn counts_per_configuration(
    conn: &Connection,
) -> Result<Vec<(String, JobState, i64)>, StoreError> {
    let mut rows: Vec<(String, JobState, i64)> = conn.query(
        "SELECT configuration_name, state, COUNT(*) FROM jobs
         WHERE configuration_name IS NOT NULL
         GROUP BY configuration_name, state",
        params![],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    rows.sort();
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::events::{insert_batch, NewEvent, Routing, Source};
    use std::collections::BTreeMap;

    fn event(lsid: &str) -> NewEvent {
        NewEvent {
            source: Source::Outbound,
            appliance_id: "Default".into(),
            event_type: "support_conference_end".into(),
            lsid: Some(lsid.into()),
            timestamp: 1,
            fields: BTreeMap::new(),
            dedup_key: Some(lsid.into()),
        }
    }

    crate::store::on_both_stores! {
        fn counts_jobs_per_configuration_and_state(conn) {
            let both = Routing::To(vec![(1, "c1".into()), (2, "c2".into())]);
            let batch = [
                (event("a"), both.clone()),
                (event("b"), Routing::To(vec![(1, "c1".into())])),
                (event("c"), Routing::Ignored("no configuration takes it".into())),
            ];
            insert_batch(&mut conn, &batch, 5).expect("insert");
            let counts = counts_per_configuration(&conn).expect("counts");
            assert_eq!(
                counts,
                vec![
                    ("c1".to_owned(), JobState::Pending, 2),
                    ("c2".to_owned(), JobState::Pending, 1),
                ]
            );
        }
    }
}
