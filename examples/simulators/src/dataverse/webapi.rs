//! The Dataverse Web API (`/api/data/v9.2/`): bearer tokens, OData headers, service
//! protection limits, WhoAmI, cases, the `bt_session` table (upsert by alternate key),
//! notes and table metadata, with Dataverse's error bodies; `$batch` (see `batch`)
//! runs its operations through the same `dispatch`.

// Handlers return ready error answers as `Err(Response)`; they are built once per
// failed request, so their size does not matter.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{OriginalUri, State as AxState};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::model::{Annotation, Column, ColumnType, TableMeta};
use super::State;
use crate::common::{broken_response, lock, random_guid, slow, Fault};

pub(crate) const BASE: &str = "/api/data/v9.2/";

pub(crate) fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/api/data/v9.2/{*path}", any(handle))
        .nest("/control", super::control::router(Arc::clone(&state)))
        // Dataverse takes large bodies (long transcripts, notes with attachments).
        .layer(axum::extract::DefaultBodyLimit::max(128 * 1024 * 1024))
        .with_state(state)
}

/// A Dataverse error answer.
pub(crate) fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({ "error": { "code": code, "message": message.into() } });
    (
        status,
        [(
            header::CONTENT_TYPE,
            "application/json; odata.metadata=minimal",
        )],
        Json(body),
    )
        .into_response()
}

pub(crate) fn bad_request(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "0x80060888", message)
}

/// The endpoint name used for call counts and fault rules.
pub(crate) fn endpoint_of(path: &str) -> String {
    let first = path.split('/').next().unwrap_or("");
    first.split('(').next().unwrap_or("").to_owned()
}

struct InFlight<'a>(&'a State);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(
    AxState(state): AxState<Arc<State>>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let raw_path = uri.path().strip_prefix(BASE).unwrap_or("");
    let path = percent_decode(raw_path);
    let endpoint = endpoint_of(&path);
    let mut delay = None;
    match state.api.call(&endpoint) {
        Some(Fault::Status { status }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return error(status, "0x80040216", "An unexpected error occurred.");
        }
        // A slow answer is slow while it counts as in progress.
        Some(Fault::Slow { millis }) => delay = Some(millis),
        Some(Fault::Reset) => return broken_response(),
        Some(Fault::Error { message }) => return bad_request(message),
        None => {}
    }
    if let Err(response) = authenticate(&state, &headers) {
        return response;
    }
    for (name, value) in [("odata-maxversion", "4.0"), ("odata-version", "4.0")] {
        let given = headers.get(name).and_then(|v| v.to_str().ok());
        if given != Some(value) {
            return bad_request(format!(
                "The request must carry the header {name}: {value} (got {}).",
                given.unwrap_or("none")
            ));
        }
    }
    state.in_flight.fetch_add(1, Ordering::SeqCst);
    let _in_flight = InFlight(&state);
    if let Some(response) = protect(&state) {
        return response;
    }
    if let Some(millis) = delay {
        slow(millis).await;
    }
    let query: HashMap<String, String> = uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let url = lock(&state.url).clone();
    if endpoint == "$batch" {
        if method != Method::POST {
            return bad_request("A $batch request must be a POST.");
        }
        return super::batch::execute(&state, &url, &headers, &body).await;
    }
    let _shared = state.transactions.read().await;
    dispatch(&state, &url, &method, &path, &query, &headers, &body)
}

/// One Web API request after authentication and service protection: what a direct
/// request and each operation inside a `$batch` run through.
pub(crate) fn dispatch(
    state: &State,
    url: &str,
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let endpoint = endpoint_of(path);
    if matches!(
        *method,
        Method::PATCH | Method::POST | Method::PUT | Method::DELETE
    ) {
        if let Some(f) = state.write_fault(path, body) {
            let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::BAD_REQUEST);
            return error(status, &f.code, f.message);
        }
    }
    let prefer_representation = headers
        .get("prefer")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.contains("return=representation"));
    match (method.clone(), endpoint.as_str()) {
        (Method::GET, "WhoAmI") => Json(json!({
            "@odata.context": format!("{url}{BASE}$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse"),
            "BusinessUnitId": state.business_unit_id,
            "UserId": state.user_id,
            "OrganizationId": state.organization_id,
        }))
        .into_response(),
        (Method::GET, "incidents") => query_incidents(state, url, query),
        (Method::POST, "annotations") => write_annotation(state, url, None, body),
        // Upsert by primary key: PATCH annotations(<id>) creates or updates that note.
        (Method::PATCH, "annotations") => match parse_key(path) {
            Ok(key) if key.len() == 1 && key[0].0.is_empty() => {
                write_annotation(state, url, Some(key[0].1.clone()), body)
            }
            Ok(_) => bad_request("Address a note by its id: annotations(<guid>)."),
            Err(r) => r,
        },
        (Method::GET, "EntityDefinitions") => match path.split_once("/Keys(LogicalName=") {
            Some((table, key)) => {
                let table = table
                    .split_once("LogicalName='")
                    .map(|(_, r)| r.trim_end_matches("')"))
                    .unwrap_or("");
                let key = key.trim_end_matches(')').trim_matches('\'');
                super::metadata::read_key(state, table, key)
            }
            None => entity_definition(state, url, path, query),
        },
        (Method::GET, "publishers") => super::metadata::list_publishers(state, query),
        (Method::GET, "solutions") => super::metadata::list_solutions(state, query),
        (
            Method::POST,
            "publishers"
            | "solutions"
            | "EntityDefinitions"
            | "RelationshipDefinitions"
            | "PublishXml",
        ) => {
            let Ok(json_body) = serde_json::from_slice::<Value>(body) else {
                return bad_request("The request body is not JSON.");
            };
            let table = path
                .split_once("LogicalName='")
                .and_then(|(_, r)| r.split_once("')"))
                .map(|(t, _)| t.to_owned());
            match (endpoint.as_str(), table, path.rsplit('/').next()) {
                ("publishers", _, _) => super::metadata::create_publisher(state, url, &json_body),
                ("solutions", _, _) => super::metadata::create_solution(state, url, &json_body),
                ("RelationshipDefinitions", _, _) => {
                    super::metadata::create_relationship(state, url, headers, &json_body)
                }
                ("PublishXml", _, _) => super::metadata::publish(state, &json_body),
                (_, Some(t), Some("Attributes")) => {
                    super::metadata::create_column(state, url, headers, &t, &json_body)
                }
                (_, Some(t), Some("Keys")) => {
                    super::metadata::create_key(state, url, headers, &t, &json_body)
                }
                (_, None, _) => super::metadata::create_table(state, url, headers, &json_body),
                _ => bad_request(format!("Resource not found for the segment '{path}'.")),
            }
        }
        (m, set) => {
            let table = lock(&state.tables)
                .values()
                .find(|t| t.meta.entity_set == set)
                .map(|t| t.meta.clone());
            match table {
                Some(meta) if m == Method::PATCH => upsert(
                    state,
                    url,
                    &meta,
                    path,
                    headers,
                    body,
                    prefer_representation,
                ),
                Some(meta) if m == Method::GET => retrieve(state, url, &meta, path),
                _ => error(
                    StatusCode::NOT_FOUND,
                    "0x8006088a",
                    format!("Resource not found for the segment '{set}'."),
                ),
            }
        }
    }
}

pub(crate) fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn authenticate(state: &State, headers: &HeaderMap) -> Result<(), Response> {
    let url = lock(&state.url).clone();
    let unauthorized = || {
        (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                format!(
                    "Bearer authorization_uri=https://login.microsoftonline.com/{}/oauth2/authorize, resource_id={url}/",
                    state.options.tenant_id
                ),
            )],
        )
            .into_response()
    };
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return Err(unauthorized());
    };
    let tokens = lock(&state.tokens);
    match tokens.get(token) {
        Some(t)
            if t.expires_at > Instant::now()
                && t.audience == url
                && t.client_id == state.options.client_id =>
        {
            Ok(())
        }
        _ => Err(unauthorized()),
    }
}

/// Service protection: concurrency, then requests per sliding window.
fn protect(state: &State) -> Option<Response> {
    let limits = *lock(&state.limits);
    let now = Instant::now();
    if lock(&state.blocked_until).is_some_and(|until| now < until) {
        state.early_after_429.fetch_add(1, Ordering::SeqCst);
    }
    let throttle = |retry_after: u64, code: &str, message: String| {
        state.throttled.fetch_add(1, Ordering::SeqCst);
        *lock(&state.blocked_until) = Some(now + Duration::from_secs(retry_after));
        let mut response = error(StatusCode::TOO_MANY_REQUESTS, code, message);
        if let Ok(value) = header::HeaderValue::from_str(&retry_after.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        Some(response)
    };
    if let Some(max) = limits.concurrent {
        let running = state.in_flight.load(Ordering::SeqCst);
        if running > max {
            return throttle(
                1,
                "0x80072326",
                format!("Number of concurrent requests exceeded the limit of {max}."),
            );
        }
    }
    if let Some(max) = limits.requests {
        let window = Duration::from_secs(limits.window_seconds);
        let mut seen = lock(&state.window);
        while seen
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            seen.pop_front();
        }
        if seen.len() >= max as usize {
            let oldest = seen.front().copied().unwrap_or(now);
            let wait = (oldest + window).saturating_duration_since(now);
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return throttle(
                seconds.max(1),
                "0x80072322",
                format!(
                    "Number of requests exceeded the limit of {max} over time window of {} seconds.",
                    limits.window_seconds
                ),
            );
        }
        seen.push_back(now);
    }
    None
}

fn missing_privilege(state: &State, privilege: &str, entity: &str, otc: u32) -> Option<Response> {
    if !lock(&state.missing_privileges).contains(privilege) {
        return None;
    }
    Some(error(
        StatusCode::FORBIDDEN,
        "0x80040220",
        format!(
            "Principal user (Id={}, type=8, roleCount=1, privilegeCount=612, accessMode=4), is missing {privilege} privilege (Id={}) on OTC={otc} for entity '{entity}' (LocalizedName='{entity}'). context.Caller={}",
            state.user_id,
            random_guid(),
            state.user_id
        ),
    ))
}

/// Reads an OData string literal (`'it''s'`) at the start of `s`; returns it and the rest.
fn odata_string(s: &str) -> Option<(String, &str)> {
    let mut chars = s.strip_prefix('\'')?.char_indices().peekable();
    let body = s.strip_prefix('\'')?;
    let mut value = String::new();
    while let Some((i, c)) = chars.next() {
        if c == '\'' {
            if chars.peek().is_some_and(|(_, n)| *n == '\'') {
                chars.next();
                value.push('\'');
            } else {
                return Some((value, &body[i + 1..]));
            }
        } else {
            value.push(c);
        }
    }
    None
}

const INCIDENT_COLUMNS: [&str; 3] = ["incidentid", "ticketnumber", "title"];

fn query_incidents(state: &State, url: &str, query: &HashMap<String, String>) -> Response {
    if let Some(r) = missing_privilege(state, "prvReadIncident", "incident", 112) {
        return r;
    }
    let select: Vec<String> = match query.get("$select") {
        Some(s) => s.split(',').map(|c| c.trim().to_owned()).collect(),
        None => INCIDENT_COLUMNS.iter().map(|c| (*c).to_owned()).collect(),
    };
    if let Some(bad) = select
        .iter()
        .find(|c| !INCIDENT_COLUMNS.contains(&c.as_str()))
    {
        return bad_request(format!(
            "Could not find a property named '{bad}' on type 'Microsoft.Dynamics.CRM.incident'."
        ));
    }
    let filter = match query.get("$filter") {
        None => None,
        Some(f) => {
            let f = f.trim();
            let Some((column, rest)) = f.split_once(' ') else {
                return bad_request(format!("Syntax error at position {} in '{f}'.", f.len()));
            };
            if !INCIDENT_COLUMNS.contains(&column) {
                return bad_request(format!("Could not find a property named '{column}' on type 'Microsoft.Dynamics.CRM.incident'."));
            }
            let Some(literal) = rest.trim_start().strip_prefix("eq ") else {
                return bad_request(format!("Syntax error: the simulator supports only \"<column> eq '<text>'\" filters, got '{f}'."));
            };
            match odata_string(literal.trim_start()) {
                Some((value, tail)) if tail.trim().is_empty() => Some((column.to_owned(), value)),
                _ => return bad_request(format!("Syntax error at position {} in '{f}'.", f.len())),
            }
        }
    };
    let top = query
        .get("$top")
        .and_then(|t| t.parse::<usize>().ok())
        .unwrap_or(5000);
    let incidents = lock(&state.incidents);
    let value: Vec<Value> = incidents
        .values()
        .filter(|i| match &filter {
            None => true,
            Some((column, value)) => {
                let field = match column.as_str() {
                    "ticketnumber" => &i.ticketnumber,
                    "title" => &i.title,
                    _ => &i.incidentid,
                };
                // Dataverse compares text case-insensitively.
                field.to_lowercase() == value.to_lowercase()
            }
        })
        .take(top)
        .map(|i| {
            let mut row = Map::new();
            row.insert("@odata.etag".into(), json!("W/\"1000001\""));
            for c in &select {
                let v = match c.as_str() {
                    "incidentid" => &i.incidentid,
                    "ticketnumber" => &i.ticketnumber,
                    _ => &i.title,
                };
                row.insert(c.clone(), json!(v));
            }
            row.insert("incidentid".into(), json!(i.incidentid));
            Value::Object(row)
        })
        .collect();
    Json(json!({
        "@odata.context": format!("{url}{BASE}$metadata#incidents({})", select.join(",")),
        "value": value,
    }))
    .into_response()
}

/// Characters that break addressing a row by its key.
const KEY_BREAKERS: [char; 9] = ['/', '<', '>', '*', '%', '&', ':', '\\', '?'];

/// `bt_sessions(bt_lsid='x')` -> [("bt_lsid", "x")]; `bt_sessions(<guid>)` -> [("", guid)].
fn parse_key(path: &str) -> Result<Vec<(String, String)>, Response> {
    let inner = path
        .split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .ok_or_else(|| bad_request(format!("Bad Request - Error in query syntax: '{path}'.")))?;
    if !inner.contains('=') {
        return Ok(vec![(String::new(), inner.to_owned())]);
    }
    let mut pairs = Vec::new();
    let mut rest = inner;
    loop {
        let (name, after) = rest.split_once('=').ok_or_else(|| {
            bad_request(format!("Bad Request - Error in query syntax: '{path}'."))
        })?;
        let (value, tail) = odata_string(after.trim()).ok_or_else(|| {
            bad_request(format!("Bad Request - Error in query syntax: '{path}'."))
        })?;
        pairs.push((name.trim().to_owned(), value));
        match tail.trim().strip_prefix(',') {
            Some(more) => rest = more,
            None if tail.trim().is_empty() => break,
            None => {
                return Err(bad_request(format!(
                    "Bad Request - Error in query syntax: '{path}'."
                )))
            }
        }
    }
    if pairs
        .iter()
        .any(|(_, v)| v.contains(KEY_BREAKERS) || v.contains('+'))
    {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "0x80060888",
            "A potentially dangerous Request.Path value was detected from the client.",
        ));
    }
    Ok(pairs)
}

fn find_row(
    state: &State,
    meta: &TableMeta,
    key: &[(String, String)],
) -> Result<Option<String>, Response> {
    let tables = lock(&state.tables);
    let Some(table) = tables.get(&meta.logical_name) else {
        return Ok(None);
    };
    if let [(name, id)] = key {
        if name.is_empty() {
            return Ok(table.rows.contains_key(id).then(|| id.clone()));
        }
    }
    let names: Vec<&str> = key.iter().map(|(n, _)| n.as_str()).collect();
    let known = meta.keys.iter().any(|k| {
        k.index_status == "Active" && {
            let mut cols: Vec<&str> = k.columns.iter().map(String::as_str).collect();
            let mut given = names.clone();
            cols.sort_unstable();
            given.sort_unstable();
            cols == given
        }
    });
    if !known {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "0x8006088a",
            "Bad Request - Error in query syntax.",
        ));
    }
    Ok(table
        .rows
        .iter()
        .find(|(_, row)| {
            key.iter()
                .all(|(n, v)| row.get(n).and_then(Value::as_str) == Some(v.as_str()))
        })
        .map(|(id, _)| id.clone()))
}

fn check_value(meta: &TableMeta, column: &Column, value: &Value) -> Result<Value, Response> {
    if value.is_null() {
        return Ok(Value::Null);
    }
    let invalid = || {
        bad_request(format!(
            "Cannot convert the literal '{value}' to the expected type of the property '{}'.",
            column.logical_name
        ))
    };
    match column.kind {
        ColumnType::String | ColumnType::Memo => {
            let text = value.as_str().ok_or_else(invalid)?;
            if let Some(max) = column.max_length {
                if text.chars().count() > max as usize {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        "0x80044331",
                        format!(
                            "A validation error occurred. The length of the '{}' attribute of the '{}' entity exceeded the maximum allowed length of '{max}'.",
                            column.logical_name, meta.logical_name
                        ),
                    ));
                }
            }
            Ok(value.clone())
        }
        ColumnType::Integer => {
            let n = value.as_i64().ok_or_else(invalid)?;
            if i32::try_from(n).is_err() {
                return Err(invalid());
            }
            Ok(value.clone())
        }
        ColumnType::DateTime => {
            let text = value.as_str().ok_or_else(invalid)?;
            let ok = chrono::DateTime::parse_from_rfc3339(text).is_ok()
                || chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S").is_ok();
            if ok {
                Ok(value.clone())
            } else {
                Err(invalid())
            }
        }
        ColumnType::Uniqueidentifier | ColumnType::Lookup => Err(invalid()),
    }
}

/// `/incidents(<guid>)` (or a full URL) -> guid.
fn bound_id<'a>(value: &'a str, entity_set: &str) -> Option<&'a str> {
    let start = value.find(&format!("{entity_set}("))? + entity_set.len() + 1;
    value[start..].strip_suffix(')')
}

fn upsert(
    state: &State,
    url: &str,
    meta: &TableMeta,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
    representation: bool,
) -> Response {
    let key = match parse_key(path) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        return bad_request("The request body is not a JSON object.");
    };
    let existing = match find_row(state, meta, &key) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let privilege = if existing.is_some() {
        "prvWrite"
    } else {
        "prvCreate"
    };
    if let Some(r) = missing_privilege(
        state,
        &format!("{privilege}{}", meta.logical_name),
        &meta.logical_name,
        10_001,
    ) {
        return r;
    }
    let header_is = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()) == Some("*");
    if header_is("if-match") && existing.is_none() {
        return error(
            StatusCode::NOT_FOUND,
            "0x80048d02",
            format!(
                "A record with the specified key values does not exist in {} entity",
                meta.logical_name
            ),
        );
    }
    if header_is("if-none-match") && existing.is_some() {
        return error(
            StatusCode::PRECONDITION_FAILED,
            "0x80040237",
            "A record with matching key values already exists.",
        );
    }
    let mut row = Map::new();
    for (name, value) in &fields {
        if let Some(nav) = name.strip_suffix("@odata.bind") {
            let Some(lookup) = meta.lookup_by_nav(nav) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "0x80048d19",
                    format!(
                        "Error identified in Payload provided by the user for Entity :'{}', For more information on this error please follow this help link https://go.microsoft.com/fwlink/?linkid=2195293  ---->  InnerException : Microsoft.OData.ODataException: An undeclared property '{nav}' which only has property annotations in the payload but no property value was found in the payload.",
                        meta.entity_set
                    ),
                );
            };
            let target = lookup.target.clone().unwrap_or_default();
            let target_set = if target == "incident" {
                "incidents".to_owned()
            } else {
                format!("{target}s")
            };
            let Some(id) = value.as_str().and_then(|v| bound_id(v, &target_set)) else {
                return bad_request(format!("Invalid value '{value}' for the navigation property '{nav}': expected /{target_set}(<id>)."));
            };
            if target == "incident" && !lock(&state.incidents).contains_key(id) {
                return error(
                    StatusCode::NOT_FOUND,
                    "0x80040217",
                    format!("{target} With Id = {id} Does Not Exist"),
                );
            }
            row.insert(format!("_{}_value", lookup.logical_name), json!(id));
            continue;
        }
        if key.iter().any(|(n, _)| n == name) {
            return bad_request(format!(
                "The key attribute '{name}' is part of the URL and must not be repeated in the request body."
            ));
        }
        let Some(column) = meta
            .column(name)
            .filter(|c| c.kind != ColumnType::Lookup && c.kind != ColumnType::Uniqueidentifier)
        else {
            return error(
                StatusCode::BAD_REQUEST,
                "0x0",
                format!(
                    "An error occurred while validating input parameters: Microsoft.Crm.CrmException: Invalid property '{name}' was found in entity 'Microsoft.Dynamics.CRM.{}'.",
                    meta.logical_name
                ),
            );
        };
        match check_value(meta, column, value) {
            Ok(v) => {
                row.insert(name.clone(), v);
            }
            Err(r) => return r,
        }
    }
    let mut tables = lock(&state.tables);
    let Some(table) = tables.get_mut(&meta.logical_name) else {
        return error(
            StatusCode::NOT_FOUND,
            "0x80060888",
            format!("Resource not found for the segment '{}'.", meta.entity_set),
        );
    };
    let (id, status) = match existing {
        Some(id) => {
            if let Some(stored) = table.rows.get_mut(&id) {
                stored.extend(row);
            }
            (id, StatusCode::OK)
        }
        None => {
            let id = random_guid();
            for (n, v) in &key {
                if !n.is_empty() {
                    row.insert(n.clone(), json!(v));
                }
            }
            row.insert(meta.primary_id.clone(), json!(id));
            table.rows.insert(id.clone(), row);
            (id, StatusCode::CREATED)
        }
    };
    let entity_id = format!("{url}{BASE}{}({id})", meta.entity_set);
    if representation {
        let row = table.rows.get(&id).cloned().unwrap_or_default();
        return (
            status,
            [("OData-EntityId", entity_id)],
            Json(Value::Object(row)),
        )
            .into_response();
    }
    (StatusCode::NO_CONTENT, [("OData-EntityId", entity_id)]).into_response()
}

fn retrieve(state: &State, url: &str, meta: &TableMeta, path: &str) -> Response {
    if let Some(r) = missing_privilege(
        state,
        &format!("prvRead{}", meta.logical_name),
        &meta.logical_name,
        10_001,
    ) {
        return r;
    }
    let key = match parse_key(path) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let id = match find_row(state, meta, &key) {
        Ok(Some(id)) => id,
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                "0x80048d02",
                format!(
                    "A record with the specified key values does not exist in {} entity",
                    meta.logical_name
                ),
            );
        }
        Err(r) => return r,
    };
    let row = lock(&state.tables)
        .get(&meta.logical_name)
        .and_then(|t| t.rows.get(&id).cloned())
        .unwrap_or_default();
    let mut body = row;
    body.insert(
        "@odata.context".into(),
        json!(format!("{url}{BASE}$metadata#{}/$entity", meta.entity_set)),
    );
    Json(Value::Object(body)).into_response()
}

fn write_annotation(state: &State, url: &str, id: Option<String>, body: &[u8]) -> Response {
    if let Some(r) = missing_privilege(state, "prvCreateNote", "annotation", 5) {
        return r;
    }
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        return bad_request("The request body is not a JSON object.");
    };
    let mut note = Annotation {
        annotationid: id.unwrap_or_else(random_guid),
        object_table: String::new(),
        object_id: String::new(),
        subject: None,
        notetext: None,
        filename: None,
        mimetype: None,
        document: None,
    };
    for (name, value) in &fields {
        let text = || value.as_str().map(str::to_owned);
        match name.as_str() {
            "subject" => note.subject = text(),
            "notetext" => {
                if text().is_some_and(|t| t.chars().count() > 100_000) {
                    return error(StatusCode::BAD_REQUEST, "0x80044331", "A validation error occurred. The length of the 'notetext' attribute of the 'annotation' entity exceeded the maximum allowed length of '100000'.");
                }
                note.notetext = text();
            }
            "filename" => note.filename = text(),
            "mimetype" => note.mimetype = text(),
            "documentbody" => {
                let Some(decoded) =
                    text().and_then(|t| base64::engine::general_purpose::STANDARD.decode(t).ok())
                else {
                    return bad_request("The documentbody is not valid base64.");
                };
                note.document = Some(String::from_utf8_lossy(&decoded).into_owned());
            }
            other => {
                let Some(table) = other
                    .strip_prefix("objectid_")
                    .and_then(|t| t.strip_suffix("@odata.bind"))
                else {
                    return bad_request(format!("Invalid property '{other}' was found in entity 'Microsoft.Dynamics.CRM.annotation'."));
                };
                let tables = lock(&state.tables);
                let Some(t) = tables.get(table).filter(|t| t.meta.has_notes) else {
                    return bad_request(format!("An undeclared property 'objectid_{table}' which only has property annotations in the payload but no property value was found in the payload."));
                };
                let Some(id) = value.as_str().and_then(|v| bound_id(v, &t.meta.entity_set)) else {
                    return bad_request(format!(
                        "Invalid value '{value}' for the navigation property 'objectid_{table}'."
                    ));
                };
                if !t.rows.contains_key(id) {
                    return error(
                        StatusCode::NOT_FOUND,
                        "0x80040217",
                        format!("{table} With Id = {id} Does Not Exist"),
                    );
                }
                note.object_table = table.to_owned();
                note.object_id = id.to_owned();
            }
        }
    }
    let id = note.annotationid.clone();
    let mut notes = lock(&state.annotations);
    match notes.iter_mut().find(|n| n.annotationid == id) {
        Some(existing) => *existing = note,
        None => notes.push(note),
    }
    (
        StatusCode::NO_CONTENT,
        [("OData-EntityId", format!("{url}{BASE}annotations({id})"))],
    )
        .into_response()
}

/// `EntityDefinitions(LogicalName='x')` with optional `$expand=Attributes,Keys`.
fn entity_definition(
    state: &State,
    url: &str,
    path: &str,
    query: &HashMap<String, String>,
) -> Response {
    let key = match parse_key(path.split('/').next().unwrap_or("")) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let Some((_, logical)) = key.iter().find(|(n, _)| n == "LogicalName") else {
        return bad_request(
            "Address a table by LogicalName, e.g. EntityDefinitions(LogicalName='bt_session').",
        );
    };
    let tables = lock(&state.tables);
    let Some(table) = tables.get(logical) else {
        return super::metadata::no_entity(logical);
    };
    let expand = query.get("$expand").map(String::as_str).unwrap_or("");
    let mut body = super::control::entity_json(&table.meta);
    body["@odata.context"] = json!(format!("{url}{BASE}$metadata#EntityDefinitions/$entity"));
    if let Some(obj) = body.as_object_mut() {
        if !expand.contains("Attributes") {
            obj.remove("Attributes");
        }
        if !expand.contains("Keys") {
            obj.remove("Keys");
        }
    }
    Json(body).into_response()
}
