//! The metadata calls provisioning uses: publishers, solutions, creating a table,
//! its columns, a one-to-many relationship (the lookup), an alternate key (whose
//! index builds in steps), and PublishXml. Schema names must carry the prefix of the
//! publisher of the solution named in `MSCRM.SolutionUniqueName`.

// Handlers return ready error answers as `Err(Response)`; they are built once per
// failed request, so their size does not matter.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::model::{AlternateKey, Column, ColumnType, Table, TableMeta};
use super::webapi::{error, BASE};
use super::State;
use crate::common::{lock, random_guid};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Publisher {
    pub publisherid: String,
    pub uniquename: String,
    pub customizationprefix: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Solution {
    pub solutionid: String,
    pub uniquename: String,
    pub publisherid: String,
}

/// Publishers, solutions, and what was published.
#[derive(Debug, Default)]
pub struct Customizations {
    pub publishers: Vec<Publisher>,
    pub solutions: Vec<Solution>,
    pub publish_calls: u64,
    /// Which solution each created component went into.
    pub components: Vec<(String, String)>,
}

impl Customizations {
    pub fn new() -> Self {
        let default = Publisher {
            publisherid: random_guid(),
            uniquename: "DefaultPublisher".into(),
            customizationprefix: "new".into(),
        };
        let solution = Solution {
            solutionid: random_guid(),
            uniquename: "Default".into(),
            publisherid: default.publisherid.clone(),
        };
        Self {
            publishers: vec![default],
            solutions: vec![solution],
            ..Self::default()
        }
    }
}

/// Dataverse's answer for a table that does not exist.
pub(crate) fn no_entity(logical: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "0x80041102",
        format!("The entity with a name = '{logical}' with namemapping = 'Logical' was not found in the MetadataCache."),
    )
}

fn bad(code: &str, message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, code, message)
}

fn missing_privilege(state: &State, privilege: &str) -> Option<Response> {
    if !lock(&state.missing_privileges).contains(privilege) {
        return None;
    }
    Some(error(
        StatusCode::FORBIDDEN,
        "0x80040220",
        format!(
            "Principal user (Id={}, type=8, roleCount=1, privilegeCount=612, accessMode=4), is missing {privilege} privilege (Id={}). Consider adding the System Customizer security role. context.Caller={}",
            state.user_id,
            random_guid(),
            state.user_id
        ),
    ))
}

fn created(url: &str, path: String) -> Response {
    (
        StatusCode::NO_CONTENT,
        [("OData-EntityId", format!("{url}{BASE}{path}"))],
    )
        .into_response()
}

fn label_text(v: &Value) -> String {
    v["LocalizedLabels"][0]["Label"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// `uniquename eq 'x'` -> x.
fn uniquename_filter(query: &HashMap<String, String>) -> Option<String> {
    let f = query.get("$filter")?;
    let rest = f.trim().strip_prefix("uniquename eq '")?;
    Some(rest.strip_suffix('\'')?.replace("''", "'"))
}

pub(crate) fn list_publishers(state: &State, query: &HashMap<String, String>) -> Response {
    let c = lock(&state.customizations);
    let name = uniquename_filter(query);
    let value: Vec<&Publisher> = c
        .publishers
        .iter()
        .filter(|p| {
            name.as_ref()
                .is_none_or(|n| p.uniquename.eq_ignore_ascii_case(n))
        })
        .collect();
    Json(json!({ "value": value })).into_response()
}

pub(crate) fn list_solutions(state: &State, query: &HashMap<String, String>) -> Response {
    let c = lock(&state.customizations);
    let name = uniquename_filter(query);
    let value: Vec<&Solution> = c
        .solutions
        .iter()
        .filter(|s| {
            name.as_ref()
                .is_none_or(|n| s.uniquename.eq_ignore_ascii_case(n))
        })
        .collect();
    Json(json!({ "value": value })).into_response()
}

pub(crate) fn create_publisher(state: &State, url: &str, body: &Value) -> Response {
    if let Some(r) = missing_privilege(state, "prvCreatePublisher") {
        return r;
    }
    let (Some(name), Some(prefix)) = (
        body["uniquename"].as_str(),
        body["customizationprefix"].as_str(),
    ) else {
        return bad(
            "0x80040203",
            "uniquename and customizationprefix are required.",
        );
    };
    let valid = (2..=8).contains(&prefix.len())
        && prefix
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
        && prefix.chars().all(|c| c.is_ascii_alphanumeric())
        && !prefix.to_lowercase().starts_with("mscrm");
    if !valid {
        return bad("0x80048403", format!("The customization prefix {prefix} is not valid: use 2 to 8 letters or digits, starting with a letter, not mscrm."));
    }
    let mut c = lock(&state.customizations);
    if c.publishers
        .iter()
        .any(|p| p.uniquename.eq_ignore_ascii_case(name))
    {
        return bad(
            "0x80048404",
            format!("A publisher with the unique name {name} already exists."),
        );
    }
    let id = random_guid();
    c.publishers.push(Publisher {
        publisherid: id.clone(),
        uniquename: name.to_owned(),
        customizationprefix: prefix.to_lowercase(),
    });
    created(url, format!("publishers({id})"))
}

pub(crate) fn create_solution(state: &State, url: &str, body: &Value) -> Response {
    if let Some(r) = missing_privilege(state, "prvCreateSolution") {
        return r;
    }
    let Some(name) = body["uniquename"].as_str() else {
        return bad("0x80040203", "uniquename is required.");
    };
    let publisher = body["publisherid@odata.bind"]
        .as_str()
        .and_then(|b| b.split_once("publishers("))
        .and_then(|(_, r)| r.strip_suffix(')'))
        .unwrap_or("");
    let mut c = lock(&state.customizations);
    if !c.publishers.iter().any(|p| p.publisherid == publisher) {
        return error(
            StatusCode::NOT_FOUND,
            "0x80040217",
            format!("publisher With Id = {publisher} Does Not Exist"),
        );
    }
    if c.solutions
        .iter()
        .any(|s| s.uniquename.eq_ignore_ascii_case(name))
    {
        return bad(
            "0x80048034",
            format!("A solution with the unique name {name} already exists."),
        );
    }
    let id = random_guid();
    c.solutions.push(Solution {
        solutionid: id.clone(),
        uniquename: name.to_owned(),
        publisherid: publisher.to_owned(),
    });
    created(url, format!("solutions({id})"))
}

/// What every creating call checks first: the privilege, then the solution named in
/// `MSCRM.SolutionUniqueName`; gives its publisher's prefix and the solution's name.
fn begin(
    state: &State,
    headers: &HeaderMap,
    privilege: &str,
) -> Result<(String, String), Response> {
    if let Some(r) = missing_privilege(state, privilege) {
        return Err(r);
    }
    prefix_for(state, headers)
}

/// The prefix of the publisher of the solution named in the request (or the default's).
fn prefix_for(state: &State, headers: &HeaderMap) -> Result<(String, String), Response> {
    let c = lock(&state.customizations);
    let solution_name = headers
        .get("MSCRM.SolutionUniqueName")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Default");
    let Some(solution) = c
        .solutions
        .iter()
        .find(|s| s.uniquename.eq_ignore_ascii_case(solution_name))
    else {
        return Err(bad(
            "0x8004F510",
            format!("The solution {solution_name} does not exist."),
        ));
    };
    let prefix = c
        .publishers
        .iter()
        .find(|p| p.publisherid == solution.publisherid)
        .map(|p| p.customizationprefix.clone())
        .unwrap_or_else(|| "new".into());
    Ok((prefix, solution.uniquename.clone()))
}

fn check_prefix(schema_name: &str, prefix: &str, kind: &str) -> Result<(), Response> {
    if schema_name
        .to_lowercase()
        .starts_with(&format!("{prefix}_"))
    {
        Ok(())
    } else {
        Err(bad(
            "0x80044372",
            format!("The schema name {schema_name} for type {kind} is not prefixed with the publisher prefix {prefix}_ of the solution."),
        ))
    }
}

fn column_from(attr: &Value) -> Result<Column, Response> {
    let schema = attr["SchemaName"]
        .as_str()
        .ok_or_else(|| bad("0x80040203", "SchemaName is required."))?;
    let kind = match attr["@odata.type"]
        .as_str()
        .unwrap_or("")
        .trim_start_matches('#')
    {
        "Microsoft.Dynamics.CRM.StringAttributeMetadata" => ColumnType::String,
        "Microsoft.Dynamics.CRM.MemoAttributeMetadata" => ColumnType::Memo,
        "Microsoft.Dynamics.CRM.IntegerAttributeMetadata" => ColumnType::Integer,
        "Microsoft.Dynamics.CRM.DateTimeAttributeMetadata" => ColumnType::DateTime,
        other => {
            return Err(bad(
                "0x80048d19",
                format!("The attribute type {other:?} is not supported here."),
            ))
        }
    };
    let max_length = attr["MaxLength"].as_u64().map(|n| n as u32);
    match (&kind, max_length) {
        (ColumnType::String, Some(n)) if !(1..=4000).contains(&n) => {
            return Err(bad(
                "0x80044331",
                "MaxLength of a text column must be 1 to 4000.",
            ))
        }
        (ColumnType::Memo, Some(n)) if !(1..=1_048_576).contains(&n) => {
            return Err(bad(
                "0x80044331",
                "MaxLength of a multiline column must be 1 to 1048576.",
            ))
        }
        (ColumnType::String | ColumnType::Memo, None) => {
            return Err(bad(
                "0x80040203",
                format!("MaxLength is required for {schema}."),
            ))
        }
        _ => {}
    }
    Ok(Column {
        logical_name: schema.to_lowercase(),
        schema_name: schema.to_owned(),
        kind,
        max_length,
        behavior: attr["DateTimeBehavior"]["Value"]
            .as_str()
            .map(str::to_owned),
        target: None,
        display_name: label_text(&attr["DisplayName"]),
    })
}

fn remember(state: &State, solution: &str, component: &str) {
    lock(&state.customizations)
        .components
        .push((solution.to_owned(), component.to_owned()));
}

pub(crate) fn create_table(
    state: &State,
    url: &str,
    headers: &HeaderMap,
    body: &Value,
) -> Response {
    let (prefix, solution) = match begin(state, headers, "prvCreateEntity") {
        Ok(p) => p,
        Err(r) => return r,
    };
    let Some(schema) = body["SchemaName"].as_str() else {
        return bad("0x80040203", "SchemaName is required.");
    };
    if let Err(r) = check_prefix(schema, &prefix, "Entity") {
        return r;
    }
    let primary: Vec<&Value> = body["Attributes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["IsPrimaryName"] == true)
        .collect();
    let [primary] = primary.as_slice() else {
        return bad("0x80044355", "A table needs exactly one primary name attribute (a StringAttributeMetadata with IsPrimaryName true).");
    };
    let mut primary_column = match column_from(primary) {
        Ok(c) if c.kind == ColumnType::String => c,
        Ok(_) => {
            return bad(
                "0x80044355",
                "The primary name attribute must be a StringAttributeMetadata.",
            )
        }
        Err(r) => return r,
    };
    if let Err(r) = check_prefix(&primary_column.schema_name, &prefix, "Attribute") {
        return r;
    }
    primary_column.display_name = label_text(&primary["DisplayName"]);
    let logical = schema.to_lowercase();
    let mut tables = lock(&state.tables);
    if tables.contains_key(&logical) {
        return bad(
            "0x80047013",
            format!("An entity with the specified name {schema} already exists."),
        );
    }
    let primary_id = format!("{logical}id");
    let meta = TableMeta {
        schema_name: schema.to_owned(),
        logical_name: logical.clone(),
        entity_set: format!("{logical}s"),
        display_name: label_text(&body["DisplayName"]),
        primary_id: primary_id.clone(),
        primary_name: primary_column.logical_name.clone(),
        has_notes: body["HasNotes"].as_bool().unwrap_or(false),
        columns: vec![
            Column {
                schema_name: format!("{schema}Id"),
                logical_name: primary_id,
                kind: ColumnType::Uniqueidentifier,
                max_length: None,
                behavior: None,
                target: None,
                display_name: "Id".into(),
            },
            primary_column,
        ],
        keys: Vec::new(),
        solution: Some(solution.clone()),
    };
    tables.insert(
        logical.clone(),
        Table {
            meta,
            rows: BTreeMap::new(),
        },
    );
    drop(tables);
    remember(state, &solution, &format!("entity:{logical}"));
    created(url, format!("EntityDefinitions({})", random_guid()))
}

pub(crate) fn create_column(
    state: &State,
    url: &str,
    headers: &HeaderMap,
    logical: &str,
    body: &Value,
) -> Response {
    let (prefix, solution) = match begin(state, headers, "prvCreateAttribute") {
        Ok(p) => p,
        Err(r) => return r,
    };
    let column = match column_from(body) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Err(r) = check_prefix(&column.schema_name, &prefix, "Attribute") {
        return r;
    }
    let mut tables = lock(&state.tables);
    let Some(table) = tables.get_mut(logical) else {
        return no_entity(logical);
    };
    if table.meta.column(&column.logical_name).is_some() {
        return bad(
            "0x80047013",
            format!(
                "An attribute with the specified name {} already exists.",
                column.schema_name
            ),
        );
    }
    let name = column.logical_name.clone();
    table.meta.columns.push(column);
    drop(tables);
    remember(state, &solution, &format!("attribute:{logical}.{name}"));
    created(
        url,
        format!(
            "EntityDefinitions(LogicalName='{logical}')/Attributes({})",
            random_guid()
        ),
    )
}

pub(crate) fn create_relationship(
    state: &State,
    url: &str,
    headers: &HeaderMap,
    body: &Value,
) -> Response {
    let (prefix, solution) = match begin(state, headers, "prvCreateRelationship") {
        Ok(p) => p,
        Err(r) => return r,
    };
    if body["@odata.type"]
        .as_str()
        .map(|t| t.trim_start_matches('#'))
        != Some("Microsoft.Dynamics.CRM.OneToManyRelationshipMetadata")
    {
        return bad(
            "0x80048d19",
            "Only OneToManyRelationshipMetadata is supported here.",
        );
    }
    let (Some(schema), Some(referenced), Some(referencing)) = (
        body["SchemaName"].as_str(),
        body["ReferencedEntity"].as_str(),
        body["ReferencingEntity"].as_str(),
    ) else {
        return bad(
            "0x80040203",
            "SchemaName, ReferencedEntity and ReferencingEntity are required.",
        );
    };
    let Some(lookup_schema) = body["Lookup"]["SchemaName"].as_str() else {
        return bad("0x80040203", "Lookup.SchemaName is required.");
    };
    for name in [schema, lookup_schema] {
        if let Err(r) = check_prefix(name, &prefix, "Relationship") {
            return r;
        }
    }
    if referenced != "incident" && !lock(&state.tables).contains_key(referenced) {
        return no_entity(referenced);
    }
    let mut tables = lock(&state.tables);
    let Some(table) = tables.get_mut(referencing) else {
        return no_entity(referencing);
    };
    let logical = lookup_schema.to_lowercase();
    if table.meta.column(&logical).is_some() {
        return bad(
            "0x80047013",
            format!("An attribute with the specified name {lookup_schema} already exists."),
        );
    }
    table.meta.columns.push(Column {
        schema_name: lookup_schema.to_owned(),
        logical_name: logical,
        kind: ColumnType::Lookup,
        max_length: None,
        behavior: None,
        target: Some(referenced.to_owned()),
        display_name: label_text(&body["Lookup"]["DisplayName"]),
    });
    drop(tables);
    remember(state, &solution, &format!("relationship:{schema}"));
    created(url, format!("RelationshipDefinitions({})", random_guid()))
}

pub(crate) fn create_key(
    state: &State,
    url: &str,
    headers: &HeaderMap,
    logical: &str,
    body: &Value,
) -> Response {
    let (prefix, solution) = match begin(state, headers, "prvCreateEntityKey") {
        Ok(p) => p,
        Err(r) => return r,
    };
    let Some(schema) = body["SchemaName"].as_str() else {
        return bad("0x80040203", "SchemaName is required.");
    };
    if let Err(r) = check_prefix(schema, &prefix, "EntityKey") {
        return r;
    }
    let columns: Vec<String> = body["KeyAttributes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_str().map(str::to_owned))
        .collect();
    let mut tables = lock(&state.tables);
    let Some(table) = tables.get_mut(logical) else {
        return no_entity(logical);
    };
    if columns.is_empty()
        || columns.iter().any(|c| {
            table
                .meta
                .column(c)
                .is_none_or(|col| !matches!(col.kind, ColumnType::String | ColumnType::Integer))
        })
    {
        return bad(
            "0x80060888",
            "Every key attribute must be an existing text or whole number column.",
        );
    }
    if table
        .meta
        .keys
        .iter()
        .any(|k| k.schema_name.eq_ignore_ascii_case(schema))
    {
        return bad(
            "0x80047013",
            format!("A key with the specified name {schema} already exists."),
        );
    }
    table.meta.keys.push(AlternateKey {
        schema_name: schema.to_owned(),
        logical_name: schema.to_lowercase(),
        columns,
        index_status: "Pending".into(),
    });
    drop(tables);
    remember(
        state,
        &solution,
        &format!("key:{logical}.{}", schema.to_lowercase()),
    );
    created(
        url,
        format!(
            "EntityDefinitions(LogicalName='{logical}')/Keys({})",
            random_guid()
        ),
    )
}

/// A key's metadata; each read moves a building index one step on
/// (Pending -> InProgress -> Active), as the background job would.
pub(crate) fn read_key(state: &State, logical: &str, key: &str) -> Response {
    let mut tables = lock(&state.tables);
    let Some(k) = tables
        .get_mut(logical)
        .and_then(|t| t.meta.keys.iter_mut().find(|k| k.logical_name == key))
    else {
        return error(
            StatusCode::NOT_FOUND,
            "0x80040217",
            format!("The key {key} of entity {logical} does not exist."),
        );
    };
    let status = k.index_status.clone();
    k.index_status = match status.as_str() {
        "Pending" => "InProgress".into(),
        "InProgress" => "Active".into(),
        other => other.to_owned(),
    };
    Json(json!({ "SchemaName": k.schema_name, "LogicalName": k.logical_name, "KeyAttributes": k.columns, "EntityKeyIndexStatus": status })).into_response()
}

pub(crate) fn publish(state: &State, body: &Value) -> Response {
    if let Some(r) = missing_privilege(state, "prvPublishCustomization") {
        return r;
    }
    if !body["ParameterXml"]
        .as_str()
        .is_some_and(|x| x.contains("<importexportxml>"))
    {
        return bad("0x80040203", "ParameterXml is required: <importexportxml><entities><entity>...</entity></entities></importexportxml>.");
    }
    lock(&state.customizations).publish_calls += 1;
    StatusCode::NO_CONTENT.into_response()
}
