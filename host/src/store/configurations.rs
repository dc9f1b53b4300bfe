//! Rows of the `configurations` table.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde_json::{Map, Value};

use super::{now_ms, Store, StoreError};

/// A configuration as stored: settings without secrets, secrets sealed.
#[derive(Clone)]
pub struct ConfigurationRow {
    pub id: i64,
    pub plugin: String,
    pub name: String,
    pub disabled: bool,
    pub settings: Map<String, Value>,
    pub secrets: BTreeMap<String, String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Deliberately prints no setting values: a row may be logged by accident.
impl std::fmt::Debug for ConfigurationRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigurationRow")
            .field("id", &self.id)
            .field("plugin", &self.plugin)
            .field("name", &self.name)
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

/// What is written on insert or update.
#[derive(Clone)]
pub struct NewConfiguration {
    pub plugin: String,
    pub name: String,
    pub disabled: bool,
    pub settings: Map<String, Value>,
    pub secrets: BTreeMap<String, String>,
}

const COLUMNS: &str = "id, plugin, name, disabled, settings, secrets, created_at, updated_at";

fn from_row(row: &Row<'_>) -> rusqlite::Result<ConfigurationRow> {
    let json_column = |index: usize| -> rusqlite::Result<String> { row.get(index) };
    let settings: Map<String, Value> = serde_json::from_str(&json_column(4)?).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, Box::new(e))
    })?;
    let secrets: BTreeMap<String, String> =
        serde_json::from_str(&json_column(5)?).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(5, rusqlite::types::Type::Text, Box::new(e))
        })?;
    Ok(ConfigurationRow {
        id: row.get(0)?,
        plugin: row.get(1)?,
        name: row.get(2)?,
        disabled: row.get(3)?,
        settings,
        secrets,
        created_at: row.get(6)?,
        updated_at: row.get(7)?,
    })
}

fn unique_violation(e: rusqlite::Error, name: &str) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(code, _)
            if code.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE =>
        {
            StoreError::DuplicateName {
                name: name.to_owned(),
            }
        }
        _ => StoreError::Sqlite(e),
    }
}

fn json(value: &impl serde::Serialize) -> String {
    // Maps of strings and JSON values always serialize.
    serde_json::to_string(value).unwrap_or_else(|_| "{}".to_owned())
}

pub(crate) fn get(conn: &Connection, id: i64) -> Result<ConfigurationRow, StoreError> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM configurations WHERE id = ?1"),
        [id],
        from_row,
    )
    .optional()?
    .ok_or(StoreError::NotFound)
}

impl Store {
    pub async fn list_configurations(&self) -> Result<Vec<ConfigurationRow>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {COLUMNS} FROM configurations ORDER BY plugin, name COLLATE NOCASE, id"
            ))?;
            let rows = stmt
                .query_map([], from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    pub async fn get_configuration(&self, id: i64) -> Result<ConfigurationRow, StoreError> {
        self.read(move |conn| get(conn, id)).await
    }

    pub async fn insert_configuration(
        &self,
        new: NewConfiguration,
    ) -> Result<ConfigurationRow, StoreError> {
        self.call(move |conn| {
            let now = now_ms();
            conn.execute(
                "INSERT INTO configurations (plugin, name, disabled, settings, secrets, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                params![new.plugin, new.name, new.disabled, json(&new.settings), json(&new.secrets), now],
            )
            .map_err(|e| unique_violation(e, &new.name))?;
            get(conn, conn.last_insert_rowid())
        })
        .await
    }

    pub async fn update_configuration(
        &self,
        id: i64,
        new: NewConfiguration,
    ) -> Result<ConfigurationRow, StoreError> {
        self.call(move |conn| {
            let changed = conn
                .execute(
                    "UPDATE configurations SET name = ?2, disabled = ?3, settings = ?4, secrets = ?5, updated_at = ?6
                     WHERE id = ?1",
                    params![id, new.name, new.disabled, json(&new.settings), json(&new.secrets), now_ms()],
                )
                .map_err(|e| unique_violation(e, &new.name))?;
            if changed == 0 {
                return Err(StoreError::NotFound);
            }
            get(conn, id)
        })
        .await
    }
}
