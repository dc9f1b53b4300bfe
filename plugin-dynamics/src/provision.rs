//! The table in Dynamics, made from the definition (`schema/bt_session.json`):
//! "check schema" compares, "provision" creates what is missing in an unmanaged
//! solution of the plugin's own publisher (prefix `bt`), waits for the key's index,
//! and publishes. Nothing existing is ever altered or dropped: drift is reported.

use std::fmt;
use std::time::{Duration, Instant};

use plugin_api::{Logger, TestReport};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::dynamics::{
    encode, odata_string, Collection, DataverseError, DynamicsClient, DynamicsError,
};
use crate::error::Error;
use crate::schema::{self, AlternateKey, Column, ColumnType, Lookup, Table};

pub const PUBLISHER: &str = "beyondtrustmiddleware";
pub const PUBLISHER_PREFIX: &str = "bt";
pub const SOLUTION: &str = "BeyondTrustMiddlewareEngine";
const SOLUTION_HEADER: &str = "MSCRM.SolutionUniqueName";
/// How long provisioning waits for the key's index.
const KEY_WAIT: Duration = Duration::from_secs(600);
/// A key's index status when Dataverse does not say (older versions leave it out).
const KEY_ACTIVE: &str = "Active";

/// Dataverse's metadata of a table (`EntityDefinitions` with `Attributes` and `Keys`
/// expanded), as far as the comparison reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EntityMetadata {
    #[serde(default)]
    pub attributes: Vec<AttributeMetadata>,
    #[serde(default)]
    pub keys: Vec<KeyMetadata>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AttributeMetadata {
    pub logical_name: String,
    pub attribute_type: Option<String>,
    /// Text and multiline columns only.
    pub max_length: Option<u64>,
    /// Date-time columns only: `{"Value": "TimeZoneIndependent"}`.
    pub date_time_behavior: Option<ManagedValue>,
    /// Lookups only: the tables looked up.
    pub targets: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ManagedValue {
    pub value: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyMetadata {
    #[serde(default)]
    pub key_attributes: Vec<String>,
    pub entity_key_index_status: Option<String>,
}

impl KeyMetadata {
    fn status(&self) -> &str {
        self.entity_key_index_status
            .as_deref()
            .unwrap_or(KEY_ACTIVE)
    }
}

/// How Dynamics has one piece of the definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    Present,
    Missing,
    /// Present but not as defined.
    Differs(Difference),
    /// The key exists but its index is not active yet (its status).
    Building(String),
}

/// What differs between the definition and Dynamics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// The column's `AttributeType`.
    Type {
        expected: String,
        found: String,
    },
    Length {
        expected: usize,
        found: Option<u64>,
    },
    Behavior {
        expected: String,
        found: String,
    },
    /// The lookup's column is no lookup (its `AttributeType`).
    NotALookup {
        found: String,
    },
    /// The lookup looks up other tables.
    Target {
        expected: String,
        found: Vec<String>,
    },
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Type { expected, found } => {
                write!(f, "is {found}, the definition says {expected}")
            }
            Self::Length { expected, found } => match found {
                Some(found) => write!(f, "has length {found}, the definition says {expected}"),
                None => write!(f, "has length none, the definition says {expected}"),
            },
            Self::Behavior { expected, found } => {
                write!(f, "behaves {found}, the definition says {expected}")
            }
            Self::NotALookup { found } => write!(f, "is {found}, the definition says a lookup"),
            Self::Target { expected, .. } => write!(f, "does not look up {expected}"),
        }
    }
}

/// A piece of the definition, as it shows in reports.
pub trait Item {
    fn item(&self) -> String;
}

impl Item for Column {
    fn item(&self) -> String {
        format!("column {}", self.logical_name())
    }
}

impl Item for Lookup {
    fn item(&self) -> String {
        format!("lookup {} to {}", self.logical_name(), self.target)
    }
}

impl Item for AlternateKey {
    fn item(&self) -> String {
        format!("alternate key on {}", self.columns.join(", "))
    }
}

/// One piece of the definition and what Dynamics has of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compared<'a, T> {
    pub defined: &'a T,
    pub finding: Finding,
}

/// The pieces of an existing table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parts<'a> {
    pub columns: Vec<Compared<'a, Column>>,
    pub lookups: Vec<Compared<'a, Lookup>>,
    pub key: Compared<'a, AlternateKey>,
}

/// The definition compared with Dynamics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comparison<'a> {
    pub table: &'a Table,
    /// `None`: the table does not exist, so nothing in it was compared.
    pub parts: Option<Parts<'a>>,
}

/// Reads the table's metadata; `None` when the table does not exist.
pub async fn read_table(
    client: &DynamicsClient,
    table: &Table,
) -> Result<Option<EntityMetadata>, DynamicsError> {
    let path = format!(
        "EntityDefinitions(LogicalName='{}')?$expand=Attributes,Keys",
        table.logical_name
    );
    match client.get_json(&path, "reading the table definition").await {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.dataverse().is_some_and(DataverseError::is_not_found) => Ok(None),
        Err(e) => Err(e),
    }
}

fn expected_type(column: &Column) -> &'static str {
    match column.kind {
        ColumnType::String => "String",
        ColumnType::Memo => "Memo",
        ColumnType::Integer => "Integer",
        ColumnType::Datetime => "DateTime",
    }
}

fn compare_column(column: &Column, found: Option<&AttributeMetadata>) -> Finding {
    let Some(a) = found else {
        return Finding::Missing;
    };
    let found_type = a.attribute_type.as_deref().unwrap_or("?");
    let behavior = a
        .date_time_behavior
        .as_ref()
        .and_then(|b| b.value.as_deref());
    if found_type != expected_type(column) {
        return Finding::Differs(Difference::Type {
            expected: expected_type(column).to_owned(),
            found: found_type.to_owned(),
        });
    }
    if let Some(expected) = column.max_length {
        if a.max_length != Some(expected as u64) {
            return Finding::Differs(Difference::Length {
                expected,
                found: a.max_length,
            });
        }
    }
    // A behaviour Dataverse does not report is not drift.
    if let (Some(expected), Some(found)) = (column.behavior.as_deref(), behavior) {
        if expected != found {
            return Finding::Differs(Difference::Behavior {
                expected: expected.to_owned(),
                found: found.to_owned(),
            });
        }
    }
    Finding::Present
}

fn compare_lookup(lookup: &Lookup, found: Option<&AttributeMetadata>) -> Finding {
    let Some(a) = found else {
        return Finding::Missing;
    };
    if a.attribute_type.as_deref() != Some("Lookup") {
        return Finding::Differs(Difference::NotALookup {
            found: a.attribute_type.clone().unwrap_or_else(|| "?".into()),
        });
    }
    let targets = a.targets.clone().unwrap_or_default();
    if !targets.contains(&lookup.target) {
        return Finding::Differs(Difference::Target {
            expected: lookup.target.clone(),
            found: targets,
        });
    }
    Finding::Present
}

fn compare_key(key: &AlternateKey, keys: &[KeyMetadata]) -> Finding {
    match keys.iter().find(|k| k.key_attributes == key.columns) {
        None => Finding::Missing,
        Some(k) if k.status() == KEY_ACTIVE => Finding::Present,
        Some(k) => Finding::Building(k.status().to_owned()),
    }
}

/// Compares Dynamics' metadata with the definition, piece by piece.
pub fn compare<'a>(table: &'a Table, meta: Option<&EntityMetadata>) -> Comparison<'a> {
    let parts = meta.map(|meta| {
        let attribute = |logical: &str| meta.attributes.iter().find(|a| a.logical_name == logical);
        Parts {
            columns: table
                .columns
                .iter()
                .map(|column| Compared {
                    defined: column,
                    finding: compare_column(column, attribute(&column.logical_name())),
                })
                .collect(),
            lookups: table
                .lookups
                .iter()
                .map(|lookup| Compared {
                    defined: lookup,
                    finding: compare_lookup(lookup, attribute(&lookup.logical_name())),
                })
                .collect(),
            key: Compared {
                defined: &table.alternate_key,
                finding: compare_key(&table.alternate_key, &meta.keys),
            },
        }
    });
    Comparison { table, parts }
}

impl Comparison<'_> {
    fn table_item(&self) -> String {
        format!("table {}", self.table.logical_name)
    }

    /// Every piece with its finding, the table first.
    pub fn items(&self) -> Vec<(String, Finding)> {
        let Some(parts) = &self.parts else {
            return vec![(self.table_item(), Finding::Missing)];
        };
        let mut items = vec![(self.table_item(), Finding::Present)];
        items.extend(
            parts
                .columns
                .iter()
                .map(|c| (c.defined.item(), c.finding.clone())),
        );
        items.extend(
            parts
                .lookups
                .iter()
                .map(|l| (l.defined.item(), l.finding.clone())),
        );
        items.push((parts.key.defined.item(), parts.key.finding.clone()));
        items
    }

    /// Everything is there as defined.
    pub fn matches(&self) -> bool {
        self.items().iter().all(|(_, f)| *f == Finding::Present)
    }

    /// The "check schema" report: one check per piece.
    pub fn report(&self) -> TestReport {
        let mut report = TestReport::default();
        for (item, finding) in self.items() {
            report.push(
                item,
                match finding {
                    Finding::Present => Ok("as defined".into()),
                    Finding::Missing => Err("missing: run the \"provision\" action".into()),
                    Finding::Differs(what) => Err(format!(
                        "{what}; not changed by provisioning: fix it in Dynamics"
                    )),
                    Finding::Building(status) => {
                        Err(format!("its index is {status}; wait until it is Active"))
                    }
                },
            );
        }
        report
    }

    /// One line for the configuration test: fine, or what is wrong.
    pub fn summary(&self) -> Result<String, String> {
        let table = self.table;
        if self.parts.is_none() {
            return Err(format!(
                "the table {} does not exist in this environment: run the \"provision\" action",
                table.logical_name
            ));
        }
        let problems: Vec<String> = self
            .items()
            .into_iter()
            .filter_map(|(item, finding)| match finding {
                Finding::Present => None,
                Finding::Missing => Some(format!("{item} is missing")),
                Finding::Differs(what) => Some(format!("{item} {what}")),
                Finding::Building(status) => Some(format!("{item} is not active yet ({status})")),
            })
            .collect();
        if problems.is_empty() {
            Ok(format!(
                "{} matches the definition ({} columns, lookup, alternate key)",
                table.logical_name,
                table.columns.len()
            ))
        } else {
            Err(format!(
                "{}; run the \"check schema\" action for details",
                problems.join("; ")
            ))
        }
    }
}

/// The "check schema" action: compares, changes nothing.
pub async fn check(client: &DynamicsClient) -> Result<TestReport, Error> {
    let table = schema::table();
    let meta = read_table(client, table).await?;
    Ok(compare(table, meta.as_ref()).report())
}

/// A publisher looked up by unique name: its id.
#[derive(Deserialize)]
struct PublisherRow {
    publisherid: String,
}

fn label(text: &str) -> Value {
    json!({
        "@odata.type": "Microsoft.Dynamics.CRM.Label",
        "LocalizedLabels": [{ "@odata.type": "Microsoft.Dynamics.CRM.LocalizedLabel", "Label": text, "LanguageCode": 1033 }],
    })
}

fn attribute_body(column: &Column) -> Value {
    let mut body = json!({
        "SchemaName": column.schema_name,
        "DisplayName": label(&column.display_name),
        "RequiredLevel": { "Value": "None", "CanBeChanged": true, "ManagedPropertyLogicalName": "canmodifyrequirementlevelsettings" },
    });
    let extra = match column.kind {
        ColumnType::String => {
            json!({ "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata", "MaxLength": column.max_length, "FormatName": { "Value": "Text" } })
        }
        ColumnType::Memo => {
            json!({ "@odata.type": "Microsoft.Dynamics.CRM.MemoAttributeMetadata", "MaxLength": column.max_length, "Format": "TextArea" })
        }
        ColumnType::Integer => {
            json!({ "@odata.type": "Microsoft.Dynamics.CRM.IntegerAttributeMetadata", "Format": "None", "MinValue": -2_147_483_648i64, "MaxValue": 2_147_483_647i64 })
        }
        ColumnType::Datetime => json!({
            "@odata.type": "Microsoft.Dynamics.CRM.DateTimeAttributeMetadata", "Format": "DateAndTime",
            "DateTimeBehavior": { "Value": column.behavior.as_deref().unwrap_or("TimeZoneIndependent") },
        }),
    };
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    body
}

struct Provisioner<'a> {
    client: &'a DynamicsClient,
    table: &'a Table,
    progress: &'a Logger,
    report: TestReport,
    created: usize,
}

impl Provisioner<'_> {
    async fn post(&mut self, path: &str, body: Value, item: &str) -> Result<(), DynamicsError> {
        self.progress.info(&format!("creating {item}"));
        self.client
            .send_with(
                reqwest::Method::POST,
                path,
                Some(&body),
                &[(SOLUTION_HEADER, SOLUTION)],
                &format!("creating {item}"),
            )
            .await?;
        self.created += 1;
        self.report.push(item, Ok("created".into()));
        Ok(())
    }

    /// Drift is reported, never changed.
    fn drift(&mut self, item: &str, what: &Difference) {
        self.report.push(
            item,
            Err(format!("{what}; not changed: fix it in Dynamics")),
        );
    }

    /// The first row of `set` whose unique name is `name`.
    async fn lookup<T: DeserializeOwned>(
        &self,
        set: &str,
        id_column: &str,
        name: &str,
    ) -> Result<Option<T>, DynamicsError> {
        let filter = format!("uniquename eq {}", odata_string(name));
        let path = format!(
            "{set}?$select={id_column},uniquename&$filter={}",
            encode(&filter)
        );
        let rows: Collection<T> = self
            .client
            .get_json(&path, &format!("looking up the {set}"))
            .await?;
        Ok(rows.value.into_iter().next())
    }

    async fn publisher_id(&self) -> Result<Option<String>, DynamicsError> {
        let row: Option<PublisherRow> = self.lookup("publishers", "publisherid", PUBLISHER).await?;
        Ok(row.map(|p| p.publisherid))
    }

    /// The publisher (prefix `bt`) and the unmanaged solution the components go into.
    async fn solution(&mut self) -> Result<(), Error> {
        let publisher = match self.publisher_id().await? {
            Some(id) => id,
            None => {
                let body = json!({
                    "uniquename": PUBLISHER, "friendlyname": "BeyondTrust Middleware Engine",
                    "customizationprefix": PUBLISHER_PREFIX, "customizationoptionvalueprefix": 72_700,
                    "description": "Publisher of the tables the BeyondTrust middleware engine writes.",
                });
                self.post(
                    "publishers",
                    body,
                    &format!("publisher {PUBLISHER} (prefix {PUBLISHER_PREFIX})"),
                )
                .await?;
                self.publisher_id()
                    .await?
                    .ok_or_else(|| Error::NotYet("the new publisher cannot be read back".into()))?
            }
        };
        // Only whether it exists matters.
        let solution: Option<IgnoredAny> = self.lookup("solutions", "solutionid", SOLUTION).await?;
        if solution.is_none() {
            let body = json!({
                "uniquename": SOLUTION, "friendlyname": "BeyondTrust Middleware Engine", "version": "1.0.0.0",
                "publisherid@odata.bind": format!("/publishers({publisher})"),
            });
            self.post("solutions", body, &format!("solution {SOLUTION}"))
                .await?;
        }
        Ok(())
    }

    async fn create_table(&mut self) -> Result<(), Error> {
        let t = self.table;
        let primary = t.columns.iter().find(|c| c.primary_name).ok_or_else(|| {
            Error::Definition("the definition names no primary name column".into())
        })?;
        let mut primary_body = attribute_body(primary);
        primary_body["IsPrimaryName"] = json!(true);
        let body = json!({
            "@odata.type": "Microsoft.Dynamics.CRM.EntityMetadata",
            "SchemaName": t.schema_name,
            "DisplayName": label(&t.display_name),
            "DisplayCollectionName": label(&t.display_collection_name),
            "Description": label(&t.description),
            "OwnershipType": t.ownership,
            "IsActivity": false,
            "HasActivities": false,
            "HasNotes": t.has_notes,
            "Attributes": [primary_body],
        });
        self.post(
            "EntityDefinitions",
            body,
            &format!("table {}", t.logical_name),
        )
        .await?;
        Ok(())
    }

    async fn wait_for_key(&mut self, key_item: &str) -> Result<(), DynamicsError> {
        let t = self.table;
        let path = format!(
            "EntityDefinitions(LogicalName='{}')/Keys(LogicalName='{}')?$select=EntityKeyIndexStatus",
            t.logical_name, t.alternate_key.logical_name
        );
        let started = Instant::now();
        let mut pause = Duration::from_millis(200);
        let mut last = String::new();
        loop {
            let key: KeyMetadata = self
                .client
                .get_json(&path, "reading the key's index status")
                .await?;
            let status = key.status().to_owned();
            if status != last {
                self.progress
                    .info(&format!("alternate key index: {status}"));
                last = status.clone();
            }
            match status.as_str() {
                KEY_ACTIVE => {
                    self.report.push(
                        format!("{key_item} index"),
                        Ok(format!("active after {} s", started.elapsed().as_secs())),
                    );
                    return Ok(());
                }
                "Failed" => {
                    self.report.push(
                        format!("{key_item} index"),
                        Err("the index failed to build (duplicate lsid values?); reactivate the key in Dynamics".into()),
                    );
                    return Ok(());
                }
                _ if started.elapsed() > KEY_WAIT => {
                    self.report.push(
                        format!("{key_item} index"),
                        Err(format!(
                            "still {status} after {} s; run provision again later",
                            KEY_WAIT.as_secs()
                        )),
                    );
                    return Ok(());
                }
                _ => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// Creates whatever is missing, reports drift, waits for the key, publishes.
pub async fn provision(client: &DynamicsClient, progress: &Logger) -> Result<TestReport, Error> {
    let table = schema::table();
    let mut p = Provisioner {
        client,
        table,
        progress,
        report: TestReport::default(),
        created: 0,
    };
    progress.info("reading the table definition in Dynamics");
    let mut meta = read_table(client, table).await?;
    if compare(table, meta.as_ref()).matches() {
        p.report.push(
            "Provisioning",
            Ok(format!(
                "nothing to do: {} already matches the definition",
                table.logical_name
            )),
        );
        return Ok(p.report);
    }
    p.solution().await?;
    if meta.is_none() {
        p.create_table().await?;
        meta = read_table(client, table).await?;
    }
    let comparison = compare(table, meta.as_ref());
    if let Some(parts) = &comparison.parts {
        let base = format!("EntityDefinitions(LogicalName='{}')", table.logical_name);
        for column in &parts.columns {
            match &column.finding {
                Finding::Missing => {
                    p.post(
                        &format!("{base}/Attributes"),
                        attribute_body(column.defined),
                        &column.defined.item(),
                    )
                    .await?
                }
                Finding::Differs(what) => p.drift(&column.defined.item(), what),
                Finding::Present | Finding::Building(_) => {}
            }
        }
        for lookup in &parts.lookups {
            match &lookup.finding {
                Finding::Missing => {
                    p.post(
                        "RelationshipDefinitions",
                        relationship_body(table, lookup.defined),
                        &lookup.defined.item(),
                    )
                    .await?;
                }
                Finding::Differs(what) => p.drift(&lookup.defined.item(), what),
                Finding::Present | Finding::Building(_) => {}
            }
        }
        let key = &parts.key;
        match &key.finding {
            Finding::Missing => {
                let k = key.defined;
                let body = json!({ "SchemaName": k.schema_name, "DisplayName": label(&k.display_name), "KeyAttributes": k.columns });
                p.post(&format!("{base}/Keys"), body, &k.item()).await?;
                p.wait_for_key(&k.item()).await?;
            }
            Finding::Building(_) => p.wait_for_key(&key.defined.item()).await?,
            Finding::Present | Finding::Differs(_) => {}
        }
    }
    if p.created > 0 {
        progress.info("publishing the customizations");
        let xml = format!(
            "<importexportxml><entities><entity>{}</entity></entities></importexportxml>",
            table.logical_name
        );
        client
            .send_with(
                reqwest::Method::POST,
                "PublishXml",
                Some(&json!({ "ParameterXml": xml })),
                &[],
                "publishing",
            )
            .await?;
        p.report.push(
            "Publish",
            Ok(format!(
                "published {} new component(s) in solution {SOLUTION}",
                p.created
            )),
        );
    }
    Ok(p.report)
}

/// The one-to-many relationship (Case to session) that makes a lookup column.
fn relationship_body(table: &Table, lookup: &Lookup) -> Value {
    json!({
        "@odata.type": "Microsoft.Dynamics.CRM.OneToManyRelationshipMetadata",
        "SchemaName": lookup.relationship_schema_name,
        "ReferencedEntity": lookup.target,
        "ReferencedAttribute": format!("{}id", lookup.target),
        "ReferencingEntity": table.logical_name,
        "CascadeConfiguration": { "Assign": "NoCascade", "Delete": "RemoveLink", "Merge": "NoCascade", "Reparent": "NoCascade", "Share": "NoCascade", "Unshare": "NoCascade" },
        "Lookup": {
            "@odata.type": "Microsoft.Dynamics.CRM.LookupAttributeMetadata",
            "AttributeType": "Lookup", "AttributeTypeName": { "Value": "LookupType" },
            "SchemaName": lookup.schema_name, "DisplayName": label(&lookup.display_name),
            "RequiredLevel": { "Value": "None" },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Metadata exactly as the definition asks, in Dataverse's JSON shape.
    fn defined_json(table: &Table) -> Value {
        let mut attributes: Vec<Value> = table
            .columns
            .iter()
            .map(|c| {
                json!({
                    "@odata.type": "#Microsoft.Dynamics.CRM.AttributeMetadata",
                    "LogicalName": c.logical_name(),
                    "AttributeType": expected_type(c),
                    "MaxLength": c.max_length,
                    "DateTimeBehavior": c.behavior.as_ref().map(|b| json!({ "Value": b })),
                    "Targets": null,
                })
            })
            .collect();
        for l in &table.lookups {
            attributes.push(json!({ "LogicalName": l.logical_name(), "AttributeType": "Lookup", "Targets": [l.target] }));
        }
        attributes.push(json!({ "LogicalName": "createdon", "AttributeType": "DateTime", "DateTimeBehavior": { "Value": "UserLocal" } }));
        json!({
            "LogicalName": table.logical_name,
            "Attributes": attributes,
            "Keys": [{ "KeyAttributes": table.alternate_key.columns, "EntityKeyIndexStatus": "Active" }],
        })
    }

    fn metadata(value: Value) -> EntityMetadata {
        serde_json::from_value(value).expect("metadata")
    }

    #[test]
    fn a_missing_table_is_one_finding() {
        let table = schema::table();
        let c = compare(table, None);
        assert_eq!(c.parts, None);
        assert_eq!(
            c.items(),
            vec![("table bt_session".to_owned(), Finding::Missing)]
        );
        assert!(!c.matches());
        assert_eq!(
            c.summary(),
            Err("the table bt_session does not exist in this environment: run the \"provision\" action".into())
        );
    }

    #[test]
    fn the_definition_matches_itself() {
        let table = schema::table();
        let meta = metadata(defined_json(table));
        let c = compare(table, Some(&meta));
        assert!(c.matches(), "{:?}", c.items());
        assert_eq!(
            c.items().len(),
            1 + table.columns.len() + table.lookups.len() + 1
        );
        assert_eq!(
            c.summary(),
            Ok("bt_session matches the definition (22 columns, lookup, alternate key)".into())
        );
    }

    #[test]
    fn each_difference_is_typed_and_named() {
        let table = schema::table();
        let mut json = defined_json(table);
        for a in json["Attributes"].as_array_mut().expect("attributes") {
            match a["LogicalName"].as_str() {
                Some("bt_name") => a["MaxLength"] = json!(100),
                Some("bt_lseq") => a["AttributeType"] = json!("BigInt"),
                Some("bt_starttime") => a["DateTimeBehavior"] = json!({ "Value": "UserLocal" }),
                Some("bt_caseid") => a["Targets"] = json!(["account"]),
                _ => {}
            }
        }
        json["Keys"][0]["EntityKeyIndexStatus"] = json!("InProgress");
        json["Attributes"]
            .as_array_mut()
            .expect("attributes")
            .retain(|a| a["LogicalName"] != "bt_transcript");
        let meta = metadata(json);
        let c = compare(table, Some(&meta));
        let parts = c.parts.as_ref().expect("table exists");
        let finding = |name: &str| {
            parts
                .columns
                .iter()
                .find(|c| c.defined.logical_name() == name)
                .map(|c| c.finding.clone())
        };
        assert_eq!(
            finding("bt_name"),
            Some(Finding::Differs(Difference::Length {
                expected: 200,
                found: Some(100)
            }))
        );
        assert_eq!(
            finding("bt_lseq"),
            Some(Finding::Differs(Difference::Type {
                expected: "Integer".into(),
                found: "BigInt".into()
            }))
        );
        assert_eq!(
            finding("bt_starttime"),
            Some(Finding::Differs(Difference::Behavior {
                expected: "TimeZoneIndependent".into(),
                found: "UserLocal".into()
            }))
        );
        assert_eq!(finding("bt_transcript"), Some(Finding::Missing));
        assert_eq!(
            parts.lookups[0].finding,
            Finding::Differs(Difference::Target {
                expected: "incident".into(),
                found: vec!["account".into()]
            })
        );
        assert_eq!(parts.key.finding, Finding::Building("InProgress".into()));
        let summary = c.summary().expect_err("drift");
        assert!(summary.starts_with("column bt_name has length 100, the definition says 200; column bt_lseq is BigInt, the definition says Integer;"), "{summary}");
        assert!(
            summary.contains("lookup bt_caseid to incident does not look up incident"),
            "{summary}"
        );
        assert!(
            summary.contains("alternate key on bt_lsid is not active yet (InProgress)"),
            "{summary}"
        );
        let report = c.report();
        assert!(!report.ok());
    }

    #[test]
    fn a_key_without_status_and_a_column_without_behaviour_count_as_defined() {
        let table = schema::table();
        let mut json = defined_json(table);
        json["Keys"] = json!([{ "KeyAttributes": ["bt_lsid"] }]);
        for a in json["Attributes"].as_array_mut().expect("attributes") {
            a["DateTimeBehavior"] = Value::Null;
        }
        assert!(compare(table, Some(&metadata(json))).matches());
    }
}
