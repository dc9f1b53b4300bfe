//! The alerts' stored parts: their settings (one JSON document in `meta`, its
//! secrets sealed) and, per open problem and channel, what was sent and when
//! (`alert_state`), so that the engine that takes the alerts over neither sends an
//! alert again nor forgets an all-clear.

use super::db::{params, Connection, OptionalExtension};
pub use super::kinds::Channel;
use super::StoreError;

const SETTINGS_KEY: &str = "alert_settings";

/// The stored settings document (secrets sealed), if the admin ever saved one.
pub fn settings(conn: &Connection) -> Result<Option<String>, StoreError> {
    super::cluster::meta(conn, SETTINGS_KEY)
}

pub fn save_settings(conn: &Connection, document: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![SETTINGS_KEY, document],
    )?;
    Ok(())
}

/// What one channel was told about one problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// `configuration:<id>` or `plugin:<folder>`.
    pub subject: String,
    pub channel: Channel,
    /// The subject in words, for an all-clear sent after the subject is gone.
    pub title: String,
    /// When the problem began (ms).
    pub since: i64,
    pub reasons: Vec<String>,
    /// The last alert this channel delivered (ms); none while the first one fails.
    pub sent_at: Option<i64>,
    /// The last delivery tried (ms), and why it failed.
    pub tried_at: Option<i64>,
    pub last_error: Option<String>,
}

pub fn sent(conn: &Connection) -> Result<Vec<Sent>, StoreError> {
    conn.query(
        "SELECT subject, channel, title, since, reasons, sent_at, tried_at, last_error
         FROM alert_state ORDER BY subject, channel",
        params![],
        |r| {
            let reasons: String = r.get(4)?;
            Ok(Sent {
                subject: r.get(0)?,
                channel: r.get(1)?,
                title: r.get(2)?,
                since: r.get(3)?,
                reasons: serde_json::from_str(&reasons).unwrap_or_default(),
                sent_at: r.get(5)?,
                tried_at: r.get(6)?,
                last_error: r.get(7)?,
            })
        },
    )
}

pub fn put(conn: &Connection, sent: &Sent) -> Result<(), StoreError> {
    let reasons = serde_json::to_string(&sent.reasons).unwrap_or_else(|_| "[]".into());
    conn.execute(
        "INSERT INTO alert_state (subject, channel, title, since, reasons, sent_at, tried_at, last_error)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (subject, channel) DO UPDATE SET
             title = excluded.title, since = excluded.since, reasons = excluded.reasons,
             sent_at = excluded.sent_at, tried_at = excluded.tried_at,
             last_error = excluded.last_error",
        params![
            sent.subject,
            sent.channel,
            sent.title,
            sent.since,
            reasons,
            sent.sent_at,
            sent.tried_at,
            sent.last_error
        ],
    )?;
    Ok(())
}

pub fn forget(conn: &Connection, subject: &str, channel: Channel) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM alert_state WHERE subject = ?1 AND channel = ?2",
        params![subject, channel],
    )?;
    Ok(())
}

/// When the oldest failed event of a configuration arrived (ms): a failing
/// configuration's problem began then.
pub fn oldest_failed_at(
    conn: &Connection,
    configuration_id: i64,
) -> Result<Option<i64>, StoreError> {
    conn.query_row(
        "SELECT received_at FROM jobs WHERE configuration_id = ?1 AND state = 'failed'
         ORDER BY id LIMIT 1",
        params![configuration_id],
        |r| r.get(0),
    )
    .optional()
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::store::on_both_stores! {
        fn settings_and_sent_alerts_are_kept_and_replaced(conn) {
            assert_eq!(settings(&conn).unwrap(), None);
            save_settings(&conn, r#"{"a":1}"#).unwrap();
            save_settings(&conn, r#"{"a":2}"#).unwrap();
            assert_eq!(settings(&conn).unwrap().as_deref(), Some(r#"{"a":2}"#));

            let mut first = Sent {
                subject: "configuration:1".into(),
                channel: Channel::Email,
                title: "configuration \"a\"".into(),
                since: 10,
                reasons: vec!["1 event failed".into()],
                sent_at: None,
                tried_at: Some(11),
                last_error: Some("refused".into()),
            };
            put(&conn, &first).unwrap();
            first.sent_at = Some(12);
            first.last_error = None;
            put(&conn, &first).unwrap();
            let webhook = Sent { channel: Channel::Webhook, ..first.clone() };
            put(&conn, &webhook).unwrap();
            assert_eq!(sent(&conn).unwrap(), vec![first.clone(), webhook]);
            forget(&conn, "configuration:1", Channel::Webhook).unwrap();
            assert_eq!(sent(&conn).unwrap(), vec![first]);
        }
    }
}
