//! The `bt_session` table's definition, shipped as data with the plugin
//! (`schema/bt_session.json`): what the plugin writes is checked against it, and
//! provisioning creates it.

use std::sync::OnceLock;

use serde::Deserialize;

pub const DEFINITION: &str = include_str!("../schema/bt_session.json");

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    String,
    Memo,
    Integer,
    Datetime,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Column {
    pub schema_name: String,
    #[serde(rename = "type")]
    pub kind: ColumnType,
    pub max_length: Option<usize>,
    pub behavior: Option<String>,
    pub display_name: String,
    #[serde(default)]
    pub primary_name: bool,
}

impl Column {
    pub fn logical_name(&self) -> String {
        self.schema_name.to_lowercase()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Lookup {
    pub schema_name: String,
    pub display_name: String,
    pub target: String,
    pub target_entity_set: String,
    pub relationship_schema_name: String,
}

impl Lookup {
    pub fn logical_name(&self) -> String {
        self.schema_name.to_lowercase()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AlternateKey {
    pub schema_name: String,
    pub logical_name: String,
    pub display_name: String,
    pub columns: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Table {
    pub schema_name: String,
    pub logical_name: String,
    pub entity_set: String,
    pub display_name: String,
    pub display_collection_name: String,
    pub description: String,
    pub primary_id: String,
    pub primary_name: String,
    pub ownership: String,
    pub has_notes: bool,
    pub alternate_key: AlternateKey,
    pub columns: Vec<Column>,
    pub lookups: Vec<Lookup>,
}

impl Table {
    pub fn column(&self, logical_name: &str) -> Option<&Column> {
        self.columns
            .iter()
            .find(|c| c.logical_name() == logical_name)
    }

    /// The longest text a column takes (in characters).
    pub fn max_length(&self, logical_name: &str) -> Option<usize> {
        self.column(logical_name).and_then(|c| c.max_length)
    }
}

/// The definition, parsed once.
pub fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| match serde_json::from_str(DEFINITION) {
        Ok(table) => table,
        // The file is part of the build; a unit test proves it parses.
        Err(e) => panic!("schema/bt_session.json is invalid: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_definition_matches_the_data_contract() {
        let t = table();
        assert_eq!(
            (
                t.logical_name.as_str(),
                t.entity_set.as_str(),
                t.primary_name.as_str()
            ),
            ("bt_session", "bt_sessions", "bt_name")
        );
        assert_eq!(t.alternate_key.columns, vec!["bt_lsid"]);
        assert_eq!(t.max_length("bt_transcript"), Some(1_048_576));
        assert_eq!(t.max_length("bt_externalkey"), Some(1024));
        assert_eq!(
            t.column("bt_starttime").and_then(|c| c.behavior.as_deref()),
            Some("TimeZoneIndependent")
        );
        assert_eq!(t.lookups[0].schema_name, "bt_CaseId");
        assert_eq!(t.columns.len(), 22);
    }
}
