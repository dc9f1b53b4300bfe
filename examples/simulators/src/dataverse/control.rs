//! The control API (`/control/...` on the Dataverse port), for the demo and tests:
//! seed cases, read what was written, count requests, set limits, faults (per
//! endpoint, and per write by matching text) and privileges, revoke tokens. And the metadata JSON both APIs show.

use std::sync::Arc;

use axum::extract::State as AxState;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::model::{ColumnType, TableMeta};
use super::{Limits, State, WriteFault};
use crate::common::{lock, FaultRule};

pub(crate) fn router(state: Arc<State>) -> Router<Arc<State>> {
    Router::new()
        .route("/cases", post(add_case).get(list_cases))
        .route("/rows", get(rows))
        .route("/counts", get(counts))
        .route("/counts/reset", post(reset_counts))
        .route(
            "/write-faults",
            post(fail_writes).delete(clear_write_faults),
        )
        .route("/limits", post(set_limits))
        .route("/faults", post(arm))
        .route("/revoke-tokens", post(revoke))
        .route("/privileges/revoke", post(revoke_privilege))
        .with_state(state)
}

#[derive(Deserialize)]
struct NewCase {
    ticketnumber: String,
    #[serde(default)]
    title: String,
}

async fn add_case(AxState(state): AxState<Arc<State>>, Json(case): Json<NewCase>) -> Json<Value> {
    let id = state.add_case(&case.ticketnumber, &case.title);
    Json(json!({ "incidentid": id }))
}

async fn list_cases(AxState(state): AxState<Arc<State>>) -> Json<Value> {
    Json(json!(lock(&state.incidents).values().collect::<Vec<_>>()))
}

async fn rows(AxState(state): AxState<Arc<State>>) -> Json<Value> {
    Json(json!(state.snapshot()))
}

async fn counts(AxState(state): AxState<Arc<State>>) -> Json<Value> {
    Json(json!({
        "api": state.api.counts(),
        "entra": state.entra.counts(),
        "throttled": state.throttled.load(std::sync::atomic::Ordering::SeqCst),
        "early_after_429": state.early_after_429.load(std::sync::atomic::Ordering::SeqCst),
    }))
}

async fn reset_counts(AxState(state): AxState<Arc<State>>) -> Json<Value> {
    state.api.reset_counts();
    state.entra.reset_counts();
    Json(json!({ "reset": true }))
}

/// Fails the writes whose address or body contains `contains` (e.g. an lsid).
async fn fail_writes(
    AxState(state): AxState<Arc<State>>,
    Json(fault): Json<WriteFault>,
) -> Json<Value> {
    if fault.count != Some(0) {
        lock(&state.write_faults).push(fault.clone());
    }
    Json(json!({ "armed": fault }))
}

async fn clear_write_faults(AxState(state): AxState<Arc<State>>) -> Json<Value> {
    lock(&state.write_faults).clear();
    Json(json!({ "cleared": true }))
}

async fn set_limits(
    AxState(state): AxState<Arc<State>>,
    Json(limits): Json<Limits>,
) -> Json<Value> {
    *lock(&state.limits) = limits;
    lock(&state.window).clear();
    Json(json!(limits))
}

async fn arm(AxState(state): AxState<Arc<State>>, Json(rule): Json<FaultRule>) -> Json<Value> {
    state.api.arm(rule);
    Json(json!({ "armed": true }))
}

async fn revoke(AxState(state): AxState<Arc<State>>) -> Json<Value> {
    lock(&state.tokens).clear();
    Json(json!({ "revoked": true }))
}

#[derive(Deserialize)]
struct Privilege {
    privilege: String,
}

async fn revoke_privilege(
    AxState(state): AxState<Arc<State>>,
    Json(p): Json<Privilege>,
) -> Json<Value> {
    lock(&state.missing_privileges).insert(p.privilege);
    Json(json!({ "revoked": true }))
}

fn label(text: &str) -> Value {
    json!({
        "LocalizedLabels": [{ "Label": text, "LanguageCode": 1033 }],
        "UserLocalizedLabel": { "Label": text, "LanguageCode": 1033 },
    })
}

/// A table's metadata as `EntityDefinitions` shows it (with attributes and keys).
pub(crate) fn entity_json(meta: &TableMeta) -> Value {
    let attributes: Vec<Value> = meta
        .columns
        .iter()
        .map(|c| {
            let (odata_type, attribute_type) = match c.kind {
                ColumnType::String => ("#Microsoft.Dynamics.CRM.StringAttributeMetadata", "String"),
                ColumnType::Memo => ("#Microsoft.Dynamics.CRM.MemoAttributeMetadata", "Memo"),
                ColumnType::Integer => (
                    "#Microsoft.Dynamics.CRM.IntegerAttributeMetadata",
                    "Integer",
                ),
                ColumnType::DateTime => (
                    "#Microsoft.Dynamics.CRM.DateTimeAttributeMetadata",
                    "DateTime",
                ),
                ColumnType::Lookup => ("#Microsoft.Dynamics.CRM.LookupAttributeMetadata", "Lookup"),
                ColumnType::Uniqueidentifier => (
                    "#Microsoft.Dynamics.CRM.AttributeMetadata",
                    "Uniqueidentifier",
                ),
            };
            let mut a = json!({
                "@odata.type": odata_type,
                "LogicalName": c.logical_name,
                "SchemaName": c.schema_name,
                "AttributeType": attribute_type,
                "AttributeTypeName": { "Value": format!("{attribute_type}Type") },
                "IsPrimaryId": c.logical_name == meta.primary_id,
                "IsPrimaryName": c.logical_name == meta.primary_name,
                "DisplayName": label(&c.display_name),
            });
            if let Some(max) = c.max_length {
                a["MaxLength"] = json!(max);
            }
            if let Some(behavior) = &c.behavior {
                a["DateTimeBehavior"] = json!({ "Value": behavior });
            }
            if let Some(target) = &c.target {
                a["Targets"] = json!([target]);
            }
            a
        })
        .collect();
    let keys: Vec<Value> = meta
        .keys
        .iter()
        .map(|k| {
            json!({
                "SchemaName": k.schema_name,
                "LogicalName": k.logical_name,
                "KeyAttributes": k.columns,
                "EntityKeyIndexStatus": k.index_status,
            })
        })
        .collect();
    json!({
        "LogicalName": meta.logical_name,
        "SchemaName": meta.schema_name,
        "EntitySetName": meta.entity_set,
        "PrimaryIdAttribute": meta.primary_id,
        "PrimaryNameAttribute": meta.primary_name,
        "HasNotes": meta.has_notes,
        "OwnershipType": "OrganizationOwned",
        "IsCustomEntity": true,
        "DisplayName": label(&meta.display_name),
        "Attributes": attributes,
        "Keys": keys,
    })
}
