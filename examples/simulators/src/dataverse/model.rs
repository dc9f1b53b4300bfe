//! The simulated environment's data: tables (metadata and rows), cases, notes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A column's type, as Dataverse's attribute metadata names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    String,
    Memo,
    Integer,
    DateTime,
    Lookup,
    Uniqueidentifier,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub schema_name: String,
    pub logical_name: String,
    pub kind: ColumnType,
    pub max_length: Option<u32>,
    /// For date and time columns: `TimeZoneIndependent`, `UserLocal` or `DateOnly`.
    pub behavior: Option<String>,
    /// For lookups: the target table's logical name.
    pub target: Option<String>,
    pub display_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlternateKey {
    pub schema_name: String,
    pub logical_name: String,
    pub columns: Vec<String>,
    /// `Pending`, `InProgress`, `Active`, `Failed`.
    pub index_status: String,
}

/// A custom table's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableMeta {
    pub schema_name: String,
    pub logical_name: String,
    pub entity_set: String,
    pub display_name: String,
    pub primary_id: String,
    pub primary_name: String,
    pub has_notes: bool,
    pub columns: Vec<Column>,
    pub keys: Vec<AlternateKey>,
    pub solution: Option<String>,
}

impl TableMeta {
    pub fn column(&self, logical: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.logical_name == logical)
    }

    /// The lookup whose navigation property (its schema name) is `nav`.
    pub fn lookup_by_nav(&self, nav: &str) -> Option<&Column> {
        self.columns
            .iter()
            .find(|c| c.kind == ColumnType::Lookup && c.schema_name == nav)
    }

    /// Reads the project's table definition file (the data contract) into metadata.
    pub fn from_definition(json: &str) -> Result<Self, String> {
        let def: Value =
            serde_json::from_str(json).map_err(|e| format!("bad table definition: {e}"))?;
        let text = |v: &Value, k: &str| {
            v[k].as_str()
                .map(str::to_owned)
                .ok_or(format!("the definition lacks {k}"))
        };
        let logical = text(&def, "logical_name")?;
        let mut columns = vec![Column {
            schema_name: format!("{}Id", text(&def, "schema_name")?),
            logical_name: text(&def, "primary_id")?,
            kind: ColumnType::Uniqueidentifier,
            max_length: None,
            behavior: None,
            target: None,
            display_name: "Id".into(),
        }];
        for c in def["columns"].as_array().into_iter().flatten() {
            let schema = text(c, "schema_name")?;
            let kind = match c["type"].as_str() {
                Some("string") => ColumnType::String,
                Some("memo") => ColumnType::Memo,
                Some("integer") => ColumnType::Integer,
                Some("datetime") => ColumnType::DateTime,
                other => return Err(format!("unknown column type {other:?}")),
            };
            columns.push(Column {
                logical_name: schema.to_lowercase(),
                schema_name: schema,
                kind,
                max_length: c["max_length"].as_u64().map(|n| n as u32),
                behavior: c["behavior"].as_str().map(str::to_owned),
                target: None,
                display_name: text(c, "display_name")?,
            });
        }
        for l in def["lookups"].as_array().into_iter().flatten() {
            let schema = text(l, "schema_name")?;
            columns.push(Column {
                logical_name: schema.to_lowercase(),
                schema_name: schema,
                kind: ColumnType::Lookup,
                max_length: None,
                behavior: None,
                target: Some(text(l, "target")?),
                display_name: text(l, "display_name")?,
            });
        }
        let key = &def["alternate_key"];
        Ok(Self {
            schema_name: text(&def, "schema_name")?,
            entity_set: text(&def, "entity_set")?,
            display_name: text(&def, "display_name")?,
            primary_id: text(&def, "primary_id")?,
            primary_name: text(&def, "primary_name")?,
            has_notes: def["has_notes"].as_bool().unwrap_or(false),
            columns,
            keys: vec![AlternateKey {
                schema_name: text(key, "schema_name")?,
                logical_name: text(key, "logical_name")?,
                columns: key["columns"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c.as_str().map(str::to_owned))
                    .collect(),
                index_status: "Active".into(),
            }],
            logical_name: logical,
            solution: None,
        })
    }
}

/// A table with its rows (row id -> columns).
#[derive(Debug, Clone)]
pub struct Table {
    pub meta: TableMeta,
    pub rows: BTreeMap<String, Map<String, Value>>,
}

/// A case (`incident`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    pub incidentid: String,
    pub ticketnumber: String,
    pub title: String,
}

/// A note (`annotation`) attached to a row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Annotation {
    pub annotationid: String,
    pub object_table: String,
    pub object_id: String,
    pub subject: Option<String>,
    pub notetext: Option<String>,
    pub filename: Option<String>,
    pub mimetype: Option<String>,
    /// Decoded attachment.
    pub document: Option<String>,
}

/// The project's table definition, shipped with the Dynamics plugin as data.
pub const BT_SESSION_DEFINITION: &str =
    include_str!("../../../../plugin-dynamics/schema/bt_session.json");
