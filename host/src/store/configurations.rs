//! Rows of the `configurations` table.

use std::collections::BTreeMap;

use super::db::{params, Connection, OptionalExtension, Row};
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

fn from_row(row: &Row<'_>) -> Result<ConfigurationRow, StoreError> {
    let id: i64 = row.get(0)?;
    let json_column = |index: usize| -> Result<String, StoreError> { row.get(index) };
    let corrupt = |what: &str| {
        let what = format!("the {what} of configuration {id}");
        move |source| StoreError::Corrupt { what, source }
    };
    let settings: Map<String, Value> =
        serde_json::from_str(&json_column(4)?).map_err(corrupt("settings"))?;
    let secrets: BTreeMap<String, String> =
        serde_json::from_str(&json_column(5)?).map_err(corrupt("secrets"))?;
    Ok(ConfigurationRow {
        id,
        plugin: row.get(1)?,
        name: row.get(2)?,
        disabled: row.get(3)?,
        settings,
        secrets,
        created_at: row.get(6)?,
        updated_at: row.get(7)?,
    })
}

fn unique_violation(e: StoreError, name: &str) -> StoreError {
    if e.is_unique_violation() {
        StoreError::DuplicateName {
            name: name.to_owned(),
        }
    } else {
        e
    }
}

fn json(value: &impl serde::Serialize) -> String {
    // Maps of strings and JSON values always serialize.
    serde_json::to_string(value).unwrap_or_else(|_| "{}".to_owned())
}

pub(crate) fn get(conn: &Connection, id: i64) -> Result<ConfigurationRow, StoreError> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM configurations WHERE id = ?1"),
        params![id],
        from_row,
    )
    .optional()?
    .ok_or(StoreError::NotFound)
}

impl Store {
    pub async fn list_configurations(&self) -> Result<Vec<ConfigurationRow>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {COLUMNS} FROM configurations ORDER BY plugin, lower(name), id"
            ))?;
            let rows = stmt
                .query_map(params![], from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// Every configuration's id and `updated_at`: what changed since a look.
    pub async fn configuration_versions(
        &self,
    ) -> Result<std::collections::HashMap<i64, i64>, StoreError> {
        self.read(|conn| {
            let rows = conn.query(
                "SELECT id, updated_at FROM configurations",
                params![],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            Ok(rows.into_iter().collect())
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
            get(conn, conn.last_insert_rowid()?)
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
