//! The audit log: every change made through the admin API (configurations created,
//! edited, copied, enabled, disabled, deleted, actions run, backfills started or
//! cancelled, events retried), with its time, the client's address and its outcome.
//! Kept with the configurations, not pruned with the history.

use serde::Serialize;

use super::db::{params, Connection};
use super::StoreError;

/// One change, as it is recorded.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub at: i64,
    pub client: String,
    pub action: String,
    pub configuration_id: Option<i64>,
    pub configuration_name: Option<String>,
    /// What changed: setting names (a secret only as "changed"), the action's name, ...
    pub detail: serde_json::Value,
    /// `ok`, or why the change was refused.
    pub outcome: String,
}

/// The settings an edit changed, by name, as an entry's detail says them: a plain
/// one with its old and new values, a secret only as "changed".
pub fn setting_changes(
    before: &serde_json::Map<String, serde_json::Value>,
    after: &serde_json::Map<String, serde_json::Value>,
    is_secret: impl Fn(&str) -> bool,
) -> serde_json::Map<String, serde_json::Value> {
    let keys: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    let mut changed = serde_json::Map::new();
    for key in keys {
        let (from, to) = (before.get(key), after.get(key));
        if from != to {
            let detail = if is_secret(key) {
                serde_json::json!("changed")
            } else {
                serde_json::json!({ "from": from, "to": to })
            };
            changed.insert(key.clone(), detail);
        }
    }
    changed
}

pub fn record(conn: &Connection, entry: &NewEntry) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO audit (at, client, action, configuration_id, configuration_name, detail, outcome)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            entry.at,
            entry.client,
            entry.action,
            entry.configuration_id,
            entry.configuration_name,
            entry.detail.to_string(),
            entry.outcome
        ],
    )?;
    Ok(())
}

/// One entry as `GET /api/audit` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub id: i64,
    pub at: i64,
    pub client: String,
    pub action: String,
    pub configuration_id: Option<i64>,
    pub configuration_name: Option<String>,
    pub detail: serde_json::Value,
    pub outcome: String,
}

/// The newest `limit` entries (of one configuration, or all), older than `before`.
pub fn list(
    conn: &Connection,
    configuration_id: Option<i64>,
    before: Option<i64>,
    limit: usize,
) -> Result<Vec<Entry>, StoreError> {
    conn.query(
        "SELECT id, at, client, action, configuration_id, configuration_name, detail, outcome
         FROM audit
         WHERE (CAST(?1 AS BIGINT) IS NULL OR configuration_id = ?1) AND id < ?2
         ORDER BY id DESC LIMIT ?3",
        params![configuration_id, before.unwrap_or(i64::MAX), limit],
        |r| {
            let detail: String = r.get(6)?;
            Ok(Entry {
                id: r.get(0)?,
                at: r.get(1)?,
                client: r.get(2)?,
                action: r.get(3)?,
                configuration_id: r.get(4)?,
                configuration_name: r.get(5)?,
                detail: serde_json::from_str(&detail).map_err(|source| StoreError::Corrupt {
                    what: "an audit entry's detail".into(),
                    source,
                })?,
                outcome: r.get(7)?,
            })
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::store::on_both_stores! {
        fn entries_come_back_newest_first_per_configuration(conn) {
            for (i, configuration) in [(1, Some(1)), (2, Some(2)), (3, Some(1)), (4, None)] {
                record(
                    &conn,
                    &NewEntry {
                        at: i,
                        client: "127.0.0.1:5000".into(),
                        action: format!("a{i}"),
                        configuration_id: configuration,
                        configuration_name: configuration.map(|c| format!("c{c}")),
                        detail: serde_json::json!({"changed": ["x"]}),
                        outcome: "ok".into(),
                    },
                )
                .expect("record");
            }
            let all = list(&conn, None, None, 10).expect("all");
            assert_eq!(all.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(), ["a4", "a3", "a2", "a1"]);
            let first = list(&conn, Some(1), None, 10).expect("one configuration");
            assert_eq!(first.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(), ["a3", "a1"]);
            let older = list(&conn, None, Some(all[1].id), 10).expect("older");
            assert_eq!(older.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(), ["a2", "a1"]);
            assert_eq!(all[0].detail, serde_json::json!({"changed": ["x"]}));
        }
    }
}
