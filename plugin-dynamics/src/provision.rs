//! The table in Dynamics, made from the definition (`schema/bt_session.json`):
//! "check schema" compares, "provision" creates what is missing in an unmanaged
//! solution of the plugin's own publisher (prefix `bt`), waits for the key's index,
//! and publishes. Nothing existing is ever altered or dropped: drift is reported.

use std::time::{Duration, Instant};

use plugin_api::{Logger, PluginError, TestReport};
use serde_json::{json, Value};

use crate::dynamics::{encode, odata_string, DynamicsClient};
use crate::schema::{self, Column, ColumnType, Table};

pub const PUBLISHER: &str = "beyondtrustmiddleware";
pub const PUBLISHER_PREFIX: &str = "bt";
pub const SOLUTION: &str = "BeyondTrustMiddlewareEngine";
const SOLUTION_HEADER: &str = "MSCRM.SolutionUniqueName";
/// How long provisioning waits for the key's index.
const KEY_WAIT: Duration = Duration::from_secs(600);

/// One piece of the definition and how Dynamics has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub item: String,
    pub state: State,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Present,
    Missing,
    /// Present but not as defined (what differs).
    Drift(String),
    /// The key exists but its index is not active yet (its status).
    Building(String),
}

/// Reads the table's metadata; `None` when the table does not exist.
pub async fn read_table(
    client: &DynamicsClient,
    table: &Table,
) -> Result<Option<Value>, PluginError> {
    let path = format!(
        "EntityDefinitions(LogicalName='{}')?$expand=Attributes,Keys",
        table.logical_name
    );
    match client.get_json(&path, "reading the table definition").await {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.message.contains("HTTP 404") => Ok(None),
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

/// Compares Dynamics' metadata with the definition, item by item.
pub fn compare(table: &Table, meta: Option<&Value>) -> Vec<Finding> {
    let mut findings = Vec::new();
    let Some(meta) = meta else {
        findings.push(Finding {
            item: format!("table {}", table.logical_name),
            state: State::Missing,
        });
        return findings;
    };
    findings.push(Finding {
        item: format!("table {}", table.logical_name),
        state: State::Present,
    });
    let attributes: Vec<&Value> = meta["Attributes"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let attribute = |logical: &str| {
        attributes
            .iter()
            .find(|a| a["LogicalName"].as_str() == Some(logical))
            .copied()
    };
    for column in &table.columns {
        let logical = column.logical_name();
        let state = match attribute(&logical) {
            None => State::Missing,
            Some(a) => {
                let found_type = a["AttributeType"].as_str().unwrap_or("?");
                let found_length = a["MaxLength"].as_u64();
                let behavior = a["DateTimeBehavior"]["Value"].as_str();
                if found_type != expected_type(column) {
                    State::Drift(format!(
                        "is {found_type}, the definition says {}",
                        expected_type(column)
                    ))
                } else if column
                    .max_length
                    .is_some_and(|m| found_length != Some(m as u64))
                {
                    State::Drift(format!(
                        "has length {}, the definition says {}",
                        found_length.map_or("none".into(), |l| l.to_string()),
                        column.max_length.unwrap_or_default()
                    ))
                } else if column
                    .behavior
                    .as_deref()
                    .is_some_and(|b| behavior.is_some_and(|f| f != b))
                {
                    State::Drift(format!(
                        "behaves {}, the definition says {}",
                        behavior.unwrap_or("?"),
                        column.behavior.as_deref().unwrap_or("")
                    ))
                } else {
                    State::Present
                }
            }
        };
        findings.push(Finding {
            item: format!("column {logical}"),
            state,
        });
    }
    for lookup in &table.lookups {
        let logical = lookup.schema_name.to_lowercase();
        let state = match attribute(&logical) {
            None => State::Missing,
            Some(a) if a["AttributeType"].as_str() != Some("Lookup") => State::Drift(format!(
                "is {}, the definition says a lookup",
                a["AttributeType"].as_str().unwrap_or("?")
            )),
            Some(a)
                if !a["Targets"].as_array().is_some_and(|t| {
                    t.iter().any(|x| x.as_str() == Some(lookup.target.as_str()))
                }) =>
            {
                State::Drift(format!("does not look up {}", lookup.target))
            }
            Some(_) => State::Present,
        };
        findings.push(Finding {
            item: format!("lookup {logical} to {}", lookup.target),
            state,
        });
    }
    let key = &table.alternate_key;
    let found = meta["Keys"].as_array().into_iter().flatten().find(|k| {
        let columns: Vec<&str> = k["KeyAttributes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        columns == key.columns.iter().map(String::as_str).collect::<Vec<_>>()
    });
    let state = match found {
        None => State::Missing,
        Some(k) => match k["EntityKeyIndexStatus"].as_str().unwrap_or("Active") {
            "Active" => State::Present,
            other => State::Building(other.to_owned()),
        },
    };
    findings.push(Finding {
        item: format!("alternate key on {}", key.columns.join(", ")),
        state,
    });
    findings
}

/// The "check schema" report: one check per item.
pub fn report(findings: &[Finding]) -> TestReport {
    let mut report = TestReport::default();
    for f in findings {
        report.push(
            &f.item,
            match &f.state {
                State::Present => Ok("as defined".into()),
                State::Missing => Err("missing: run the \"provision\" action".into()),
                State::Drift(what) => Err(format!(
                    "{what}; not changed by provisioning: fix it in Dynamics"
                )),
                State::Building(status) => {
                    Err(format!("its index is {status}; wait until it is Active"))
                }
            },
        );
    }
    report
}

/// One line for the configuration test: fine, or what is wrong.
pub fn summary(findings: &[Finding]) -> Result<String, String> {
    let problems: Vec<String> = findings
        .iter()
        .filter_map(|f| match &f.state {
            State::Present => None,
            State::Missing => Some(format!("{} is missing", f.item)),
            State::Drift(what) => Some(format!("{} {what}", f.item)),
            State::Building(status) => Some(format!("{} is not active yet ({status})", f.item)),
        })
        .collect();
    let table = schema::table();
    if problems.is_empty() {
        Ok(format!(
            "{} matches the definition ({} columns, lookup, alternate key)",
            table.logical_name,
            table.columns.len()
        ))
    } else if findings.first().is_some_and(|f| f.state == State::Missing) {
        Err(format!(
            "the table {} does not exist in this environment: run the \"provision\" action",
            table.logical_name
        ))
    } else {
        Err(format!(
            "{}; run the \"check schema\" action for details",
            problems.join("; ")
        ))
    }
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
    async fn post(&mut self, path: &str, body: Value, item: &str) -> Result<(), PluginError> {
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

    async fn lookup_id(
        &self,
        set: &str,
        id_column: &str,
        name: &str,
    ) -> Result<Option<String>, PluginError> {
        let filter = format!("uniquename eq {}", odata_string(name));
        let path = format!(
            "{set}?$select={id_column},uniquename&$filter={}",
            encode(&filter)
        );
        let answer = self
            .client
            .get_json(&path, &format!("looking up the {set}"))
            .await?;
        Ok(answer["value"][0][id_column].as_str().map(str::to_owned))
    }

    /// The publisher (prefix `bt`) and the unmanaged solution the components go into.
    async fn solution(&mut self) -> Result<(), PluginError> {
        let publisher = match self
            .lookup_id("publishers", "publisherid", PUBLISHER)
            .await?
        {
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
                self.lookup_id("publishers", "publisherid", PUBLISHER)
                    .await?
                    .ok_or_else(|| {
                        PluginError::retryable("the new publisher cannot be read back")
                    })?
            }
        };
        if self
            .lookup_id("solutions", "solutionid", SOLUTION)
            .await?
            .is_none()
        {
            let body = json!({
                "uniquename": SOLUTION, "friendlyname": "BeyondTrust Middleware Engine", "version": "1.0.0.0",
                "publisherid@odata.bind": format!("/publishers({publisher})"),
            });
            self.post("solutions", body, &format!("solution {SOLUTION}"))
                .await?;
        }
        Ok(())
    }

    async fn create_table(&mut self) -> Result<(), PluginError> {
        let t = self.table;
        let primary =
            t.columns.iter().find(|c| c.primary_name).ok_or_else(|| {
                PluginError::permanent("the definition names no primary name column")
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
        .await
    }

    async fn wait_for_key(&mut self, key_item: &str) -> Result<(), PluginError> {
        let t = self.table;
        let path = format!(
            "EntityDefinitions(LogicalName='{}')/Keys(LogicalName='{}')?$select=EntityKeyIndexStatus",
            t.logical_name, t.alternate_key.logical_name
        );
        let started = Instant::now();
        let mut pause = Duration::from_millis(200);
        let mut last = String::new();
        loop {
            let key = self
                .client
                .get_json(&path, "reading the key's index status")
                .await?;
            let status = key["EntityKeyIndexStatus"]
                .as_str()
                .unwrap_or("Active")
                .to_owned();
            if status != last {
                self.progress
                    .info(&format!("alternate key index: {status}"));
                last = status.clone();
            }
            match status.as_str() {
                "Active" => {
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
pub async fn provision(
    client: &DynamicsClient,
    progress: &Logger,
) -> Result<TestReport, PluginError> {
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
    let findings = compare(table, meta.as_ref());
    if findings.iter().all(|f| f.state == State::Present) {
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
    let findings = compare(table, meta.as_ref());
    let base = format!("EntityDefinitions(LogicalName='{}')", table.logical_name);
    for (finding, column) in findings.iter().skip(1).zip(&table.columns) {
        match &finding.state {
            State::Missing => {
                p.post(
                    &format!("{base}/Attributes"),
                    attribute_body(column),
                    &finding.item,
                )
                .await?
            }
            State::Drift(what) => p.report.push(
                &finding.item,
                Err(format!("{what}; not changed: fix it in Dynamics")),
            ),
            _ => {}
        }
    }
    for (finding, lookup) in findings
        .iter()
        .skip(1 + table.columns.len())
        .zip(&table.lookups)
    {
        match &finding.state {
            State::Missing => {
                let body = json!({
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
                });
                p.post("RelationshipDefinitions", body, &finding.item)
                    .await?;
            }
            State::Drift(what) => p.report.push(
                &finding.item,
                Err(format!("{what}; not changed: fix it in Dynamics")),
            ),
            _ => {}
        }
    }
    if let Some(key) = findings.last() {
        match &key.state {
            State::Missing => {
                let k = &table.alternate_key;
                let body = json!({ "SchemaName": k.schema_name, "DisplayName": label(&k.display_name), "KeyAttributes": k.columns });
                p.post(&format!("{base}/Keys"), body, &key.item).await?;
                p.wait_for_key(&key.item.clone()).await?;
            }
            State::Building(_) => p.wait_for_key(&key.item.clone()).await?,
            _ => {}
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
