//! `POST $batch` as the Web API takes it (OData 4.0, `multipart/mixed`): requests and
//! change sets (a nested `multipart/mixed`, atomic: all or nothing), `Content-ID` and
//! `$<id>` references inside a change set, `Prefer: odata.continue-on-error` (without
//! it the batch stops at the first failure), at most 1000 operations. Each operation
//! runs through the same handlers as a direct request; the whole batch was counted
//! as one request against the service protection limits before it got here.

// Handlers return ready error answers as `Err(Response)`, as in `webapi`.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;

use axum::body::to_bytes;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::webapi::{bad_request, dispatch, endpoint_of, error, percent_decode, BASE};
use super::State;
use crate::common::{broken_response, lock, random_hex, slow, Fault};

/// The most operations one `$batch` may hold.
pub const MAX_OPERATIONS: usize = 1000;

/// One MIME part: its headers (names in lower case) and body.
struct Part<'a> {
    headers: Vec<(String, String)>,
    body: &'a [u8],
}

impl Part<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One request inside the batch.
struct Operation<'a> {
    content_id: Option<String>,
    method: Method,
    target: String,
    headers: HeaderMap,
    body: &'a [u8],
}

enum Item<'a> {
    Single(Operation<'a>),
    ChangeSet(Vec<Operation<'a>>),
}

/// An operation's answer, read back from the handler's response.
struct Answered {
    status: StatusCode,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answered {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > hay.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// The boundary of a `multipart/mixed` content type, quoted or not.
fn boundary(content_type: &str) -> Option<String> {
    let mut params = content_type.split(';');
    let kind = params.next()?.trim();
    if !kind.eq_ignore_ascii_case("multipart/mixed") {
        return None;
    }
    params.find_map(|p| {
        let (name, value) = p.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"').to_owned())
            .filter(|b| !b.is_empty())
    })
}

/// A part's (or an HTTP message's) head and body, split at the first empty line.
fn head_and_body(bytes: &[u8]) -> (&[u8], &[u8]) {
    for lead in [&b"\r\n"[..], b"\n"] {
        if let Some(rest) = bytes.strip_prefix(lead) {
            return (b"", rest);
        }
    }
    let crlf = find(bytes, b"\r\n\r\n", 0).map(|i| (i, 4));
    let lf = find(bytes, b"\n\n", 0).map(|i| (i, 2));
    match (crlf, lf) {
        (Some(a), Some(b)) => {
            let (i, n) = if a.0 <= b.0 { a } else { b };
            (&bytes[..i], &bytes[i + n..])
        }
        (Some((i, n)), None) | (None, Some((i, n))) => (&bytes[..i], &bytes[i + n..]),
        (None, None) => (bytes, b""),
    }
}

fn header_lines(head: &[u8]) -> Result<Vec<(String, String)>, String> {
    let text = std::str::from_utf8(head).map_err(|_| "a part's headers are not UTF-8")?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (name, value) = l
                .split_once(':')
                .ok_or_else(|| format!("the header line {l:?} has no colon"))?;
            Ok((name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        })
        .collect()
}

/// Splits a multipart body at its boundary (RFC 2046): preamble and epilogue
/// dropped; the line break before a delimiter belongs to the delimiter.
fn parts<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, String> {
    let delimiter = format!("--{boundary}");
    let d = delimiter.as_bytes();
    let mut at_line_start = Vec::new();
    let mut from = 0;
    while let Some(at) = find(body, d, from) {
        if at == 0 || body[at - 1] == b'\n' {
            at_line_start.push(at);
        }
        from = at + d.len();
    }
    let mut found = Vec::new();
    for (k, &at) in at_line_start.iter().enumerate() {
        let after = at + d.len();
        if body[after..].starts_with(b"--") {
            return Ok(found);
        }
        let start = find(body, b"\n", after)
            .map(|i| i + 1)
            .ok_or("a delimiter line does not end")?;
        let end = *at_line_start
            .get(k + 1)
            .ok_or("the body ends before its closing delimiter")?;
        if start > end {
            return Err("a part is cut short by the next delimiter".into());
        }
        let mut content = &body[start..end];
        content = content.strip_suffix(b"\n").unwrap_or(content);
        content = content.strip_suffix(b"\r").unwrap_or(content);
        let (head, body) = head_and_body(content);
        found.push(Part {
            headers: header_lines(head)?,
            body,
        });
    }
    Err(format!("the body has no closing delimiter --{boundary}--"))
}

fn operation<'a>(part: &Part<'a>) -> Result<Operation<'a>, String> {
    let kind = part.header("content-type").unwrap_or("");
    if !kind.to_ascii_lowercase().starts_with("application/http") {
        return Err(format!(
            "A batch part must be application/http or a multipart/mixed change set, not {kind:?}."
        ));
    }
    let (head, body) = head_and_body(part.body);
    let head = std::str::from_utf8(head).map_err(|_| "a request's head is not UTF-8")?;
    let mut lines = head.lines().filter(|l| !l.trim().is_empty());
    let request_line = lines.next().ok_or("a batch part holds no request line")?;
    let mut words = request_line.split_whitespace();
    let (Some(method), Some(target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err(format!(
            "The request line {request_line:?} is not \"METHOD URL HTTP/1.1\"."
        ));
    };
    if !version.starts_with("HTTP/") {
        return Err(format!(
            "The request line {request_line:?} names no HTTP version."
        ));
    }
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| format!("{method:?} is not an HTTP method"))?;
    let mut headers = HeaderMap::new();
    let mut content_id = part.header("content-id").map(str::to_owned);
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("the header line {line:?} has no colon"))?;
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-id") && content_id.is_none() {
            content_id = Some(value.to_owned());
        }
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{name:?} is not a header name"))?;
        let value =
            HeaderValue::from_str(value).map_err(|_| format!("bad value of the header {name}"))?;
        headers.append(name, value);
    }
    Ok(Operation {
        content_id,
        method,
        target: target.to_owned(),
        headers,
        body,
    })
}

fn items<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Item<'a>>, String> {
    let mut items = Vec::new();
    for part in parts(body, boundary)? {
        let kind = part.header("content-type").unwrap_or("");
        match self::boundary(kind) {
            Some(inner) => {
                let mut ops = Vec::new();
                for p in parts(part.body, &inner)? {
                    if p.header("content-type").and_then(self::boundary).is_some() {
                        return Err("Change sets cannot be nested.".into());
                    }
                    ops.push(operation(&p)?);
                }
                items.push(Item::ChangeSet(ops));
            }
            None => items.push(Item::Single(operation(&part)?)),
        }
    }
    Ok(items)
}

/// The path (decoded, relative to the service root) and query of an operation's URL:
/// absolute, from the host's root, or relative to the service root.
fn locate(url: &str, target: &str) -> Result<(String, HashMap<String, String>), String> {
    let rest = match target.strip_prefix(url) {
        Some(rest) => rest,
        None if target.starts_with("http://") || target.starts_with("https://") => {
            return Err(format!("The URL {target} is not of this environment."))
        }
        None => target,
    };
    let rest = match rest.strip_prefix(BASE) {
        Some(rest) => rest,
        None if rest.starts_with('/') => {
            return Err(format!("Resource not found for the segment '{rest}'."))
        }
        None => rest,
    };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    Ok((
        percent_decode(path),
        form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect(),
    ))
}

/// `$<id>` at the start of a URL: the entity URL the change set's request `<id>` wrote.
fn resolve(target: &str, refs: &HashMap<String, String>) -> String {
    let Some(rest) = target.strip_prefix('$') else {
        return target.to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (id, tail) = rest.split_at(end);
    match refs.get(id) {
        Some(url) => format!("{url}{tail}"),
        None => target.to_owned(),
    }
}

/// `"x@odata.bind": "$<id>"` in a JSON body: the entity URL of request `<id>`.
fn bind_references(body: &[u8], refs: &HashMap<String, String>) -> Vec<u8> {
    if refs.is_empty() {
        return body.to_vec();
    }
    let Ok(Value::Object(mut fields)) = serde_json::from_slice::<Value>(body) else {
        return body.to_vec();
    };
    for (name, value) in fields.iter_mut() {
        if let Some(text) = value.as_str().filter(|_| name.ends_with("@odata.bind")) {
            let resolved = resolve(text, refs);
            if resolved != text {
                *value = Value::String(resolved);
            }
        }
    }
    serde_json::to_vec(&fields).unwrap_or_else(|_| body.to_vec())
}

async fn answered(response: Response) -> Answered {
    let status = response.status();
    let headers = response
        .headers()
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let body = to_bytes(response.into_body(), usize::MAX)
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    Answered {
        status,
        headers,
        body,
    }
}

/// Runs one operation through the Web API's handlers; faults armed for
/// `$batch/<endpoint>` apply to it.
async fn run(
    state: &State,
    url: &str,
    op: &Operation<'_>,
    refs: &HashMap<String, String>,
) -> Answered {
    let target = resolve(&op.target, refs);
    let (path, query) = match locate(url, &target) {
        Ok(located) => located,
        Err(m) => return answered(bad_request(m)).await,
    };
    let endpoint = endpoint_of(&path);
    if endpoint == "$batch" {
        return answered(bad_request("Batches cannot be nested.")).await;
    }
    match state.api.call(&format!("$batch/{endpoint}")) {
        Some(Fault::Status { status }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return answered(error(status, "0x80040216", "An unexpected error occurred.")).await;
        }
        Some(Fault::Slow { millis }) => slow(millis).await,
        // One operation's connection cannot break alone: its part answers 500.
        Some(Fault::Reset) => {
            let e = error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "0x80040216",
                "Generic SQL error.",
            );
            return answered(e).await;
        }
        Some(Fault::Error { message }) => return answered(bad_request(message)).await,
        None => {}
    }
    let body = bind_references(op.body, refs);
    answered(dispatch(
        state,
        url,
        &op.method,
        &path,
        &query,
        &op.headers,
        &body,
    ))
    .await
}

/// An `application/http` part holding one answer.
fn answer_part(answer: &Answered, content_id: Option<&str>) -> String {
    let mut out =
        String::from("Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n");
    if let Some(id) = content_id {
        out.push_str(&format!("Content-ID: {id}\r\n"));
    }
    out.push_str(&format!(
        "\r\nHTTP/1.1 {} {}\r\n",
        answer.status.as_u16(),
        answer.status.canonical_reason().unwrap_or("")
    ));
    for (name, value) in &answer.headers {
        if !name.eq_ignore_ascii_case("content-length") {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    out.push_str("\r\n");
    out.push_str(&String::from_utf8_lossy(&answer.body));
    out
}

/// Runs a change set alone (no other write in between): all its operations, or on
/// the first failure none (the others rolled back) and that failure as its answer.
async fn change_set(state: &State, url: &str, ops: &[Operation<'_>]) -> (String, bool) {
    let _exclusive = state.transactions.write().await;
    let tables = lock(&state.tables).clone();
    let notes = lock(&state.annotations).clone();
    let mut refs = HashMap::new();
    let mut done = Vec::new();
    for op in ops {
        let answer = if op.method == Method::GET {
            answered(bad_request("A change set must not contain GET requests.")).await
        } else {
            run(state, url, op, &refs).await
        };
        if !answer.status.is_success() {
            *lock(&state.tables) = tables;
            *lock(&state.annotations) = notes;
            return (answer_part(&answer, op.content_id.as_deref()), true);
        }
        if let (Some(id), Some(entity)) = (&op.content_id, answer.header("odata-entityid")) {
            refs.insert(id.clone(), entity.to_owned());
        }
        done.push((op.content_id.as_deref(), answer));
    }
    let boundary = format!("changesetresponse_{}", random_hex(16));
    let mut out = format!("Content-Type: multipart/mixed; boundary={boundary}\r\n\r\n");
    for (id, answer) in &done {
        out.push_str(&format!("--{boundary}\r\n{}\r\n", answer_part(answer, *id)));
    }
    out.push_str(&format!("--{boundary}--"));
    (out, false)
}

pub(crate) async fn execute(
    state: &State,
    url: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let Some(boundary) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(boundary)
    else {
        return bad_request("A $batch request must be multipart/mixed with a boundary.");
    };
    let items = match items(body, &boundary) {
        Ok(items) => items,
        Err(m) => return bad_request(format!("The batch request is malformed: {m}")),
    };
    let operations: usize = items
        .iter()
        .map(|i| match i {
            Item::Single(_) => 1,
            Item::ChangeSet(ops) => ops.len(),
        })
        .sum();
    if operations > MAX_OPERATIONS {
        return bad_request(format!(
            "The number of requests in the batch ({operations}) exceeds the limit of {MAX_OPERATIONS}."
        ));
    }
    let continue_on_error = headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|p| p.contains("odata.continue-on-error"));
    let mut answers = Vec::new();
    for item in &items {
        let (part, failed) = match item {
            Item::Single(op) => {
                let answer = {
                    let _shared = state.transactions.read().await;
                    run(state, url, op, &HashMap::new()).await
                };
                let failed = !answer.status.is_success();
                (answer_part(&answer, op.content_id.as_deref()), failed)
            }
            Item::ChangeSet(ops) => change_set(state, url, ops).await,
        };
        answers.push(part);
        if failed && !continue_on_error {
            break;
        }
    }
    let boundary = format!("batchresponse_{}", random_hex(16));
    let mut out = String::new();
    for part in &answers {
        out.push_str(&format!("--{boundary}\r\n{part}\r\n"));
    }
    out.push_str(&format!("--{boundary}--\r\n"));
    match HeaderValue::from_str(&format!("multipart/mixed; boundary={boundary}")) {
        Ok(kind) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, kind)],
            [("OData-Version", "4.0")],
            out,
        )
            .into_response(),
        Err(_) => broken_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_split_at_line_start_delimiters_only() {
        let body = b"preamble\r\n--b\r\nContent-Type: application/http\r\n\r\nGET x HTTP/1.1\r\n\r\n\r\n--b\r\nContent-Type: application/http\r\nContent-ID: 7\r\n\r\nPATCH y HTTP/1.1\r\nContent-Type: application/json\r\n\r\n{\"t\":\"not --b here\"}\r\n--b--\r\nepilogue";
        let found = parts(body, "b").expect("parts");
        assert_eq!(found.len(), 2);
        assert_eq!(found[1].header("content-id"), Some("7"));
        let op = operation(&found[1]).expect("operation");
        assert_eq!((op.method, op.target.as_str()), (Method::PATCH, "y"));
        assert_eq!(op.body, b"{\"t\":\"not --b here\"}");
        assert_eq!(operation(&found[0]).expect("get").body, b"");
        assert!(
            parts(b"--b\r\nContent-Type: x\r\n\r\nbody", "b").is_err(),
            "no close"
        );
    }

    #[test]
    fn urls_and_references_resolve() {
        let url = "https://127.0.0.1:1";
        let (path, query) =
            locate(url, "https://127.0.0.1:1/api/data/v9.2/incidents?$top=2").expect("abs");
        assert_eq!(
            (path.as_str(), query.get("$top").map(String::as_str)),
            ("incidents", Some("2"))
        );
        assert_eq!(
            locate(url, "/api/data/v9.2/bt_sessions(x)")
                .expect("root")
                .0,
            "bt_sessions(x)"
        );
        assert_eq!(
            locate(url, "bt_sessions(bt_lsid='a%20b')").expect("rel").0,
            "bt_sessions(bt_lsid='a b')"
        );
        assert!(locate(url, "https://elsewhere/api/data/v9.2/x").is_err());
        let refs = HashMap::from([(
            "1".to_owned(),
            "https://e/api/data/v9.2/bt_sessions(id)".to_owned(),
        )]);
        assert_eq!(
            resolve("$1/bt_CaseId", &refs),
            "https://e/api/data/v9.2/bt_sessions(id)/bt_CaseId"
        );
        assert_eq!(resolve("$metadata", &refs), "$metadata");
        let body = bind_references(
            br#"{"objectid_bt_session@odata.bind":"$1","subject":"$1"}"#,
            &refs,
        );
        let body: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            body["objectid_bt_session@odata.bind"],
            "https://e/api/data/v9.2/bt_sessions(id)"
        );
        assert_eq!(body["subject"], "$1", "only bindings are references");
        assert_eq!(
            boundary("multipart/mixed; boundary=\"batch_1\"").as_deref(),
            Some("batch_1")
        );
        assert_eq!(boundary("application/json"), None);
    }
}
