//! Dataverse `$batch` bodies (OData 4.0 `multipart/mixed`), written and read by hand:
//! requests and change sets (each atomic, with `Content-ID`s that later requests of
//! the same change set reference as `$<id>`), and the answer: one part per request
//! or change set, a change set that failed answered by its failed request alone.

use std::time::Duration;

use serde_json::Value;

/// One request of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    pub method: reqwest::Method,
    /// Relative to the Web API root (`bt_sessions(bt_lsid='x')`), or `$<id>`.
    pub path: String,
    /// The JSON body, already written.
    pub body: Option<String>,
    pub content_id: Option<String>,
}

impl Operation {
    pub fn get(path: impl Into<String>) -> Self {
        Self {
            method: reqwest::Method::GET,
            path: path.into(),
            body: None,
            content_id: None,
        }
    }

    pub fn patch(path: impl Into<String>, body: &Value, content_id: usize) -> Self {
        Self {
            method: reqwest::Method::PATCH,
            path: path.into(),
            body: Some(body.to_string()),
            content_id: Some(content_id.to_string()),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Item {
    Request(Operation),
    ChangeSet(Vec<Operation>),
}

/// What a `$batch` request holds, in order.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct BatchRequest {
    items: Vec<Item>,
}

impl BatchRequest {
    /// A request on its own (e.g. a GET: change sets hold writes only).
    pub fn push(&mut self, operation: Operation) {
        self.items.push(Item::Request(operation));
    }

    /// Requests that succeed or fail together.
    pub fn push_change_set(&mut self, operations: Vec<Operation>) {
        self.items.push(Item::ChangeSet(operations));
    }

    /// Requests and change sets: the answer has one part for each.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn operations(&self) -> impl Iterator<Item = &Operation> {
        self.items.iter().flat_map(|i| match i {
            Item::Request(op) => std::slice::from_ref(op),
            Item::ChangeSet(ops) => ops.as_slice(),
        })
    }

    /// A boundary found in no body: a hash of the bodies, hashed again until no body
    /// contains it (a transcript could quote anything).
    pub fn boundary(&self) -> String {
        let bodies: Vec<&str> = self
            .operations()
            .filter_map(|o| o.body.as_deref())
            .collect();
        let seed = bodies
            .iter()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, body| fnv(h, body.as_bytes()));
        format!("batch_{}", free_token(seed, &bodies))
    }

    /// The body under `boundary` (from [`BatchRequest::boundary`]); request URLs
    /// are `api` (the Web API root, ending in `/`) and the operation's path.
    pub fn body(&self, api: &str, boundary: &str) -> String {
        let token = boundary.strip_prefix("batch_").unwrap_or(boundary);
        let mut out = String::new();
        for (k, item) in self.items.iter().enumerate() {
            out.push_str(&format!("--{boundary}\r\n"));
            match item {
                Item::Request(op) => write_operation(&mut out, api, op),
                Item::ChangeSet(ops) => {
                    let inner = format!("changeset_{token}_{k}");
                    out.push_str(&format!(
                        "Content-Type: multipart/mixed; boundary={inner}\r\n\r\n"
                    ));
                    for op in ops {
                        out.push_str(&format!("--{inner}\r\n"));
                        write_operation(&mut out, api, op);
                        out.push_str("\r\n");
                    }
                    out.push_str(&format!("--{inner}--"));
                }
            }
            out.push_str("\r\n");
        }
        out.push_str(&format!("--{boundary}--\r\n"));
        out
    }
}

/// `token` in hex, or the first of its rehashes, that no body contains.
fn free_token(mut token: u64, bodies: &[&str]) -> String {
    loop {
        let hex = format!("{token:016x}");
        if !bodies.iter().any(|b| b.contains(&hex)) {
            return hex;
        }
        token = fnv(token, hex.as_bytes());
    }
}

fn fnv(seed: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(seed, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn write_operation(out: &mut String, api: &str, op: &Operation) {
    out.push_str("Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n");
    if let Some(id) = &op.content_id {
        out.push_str(&format!("Content-ID: {id}\r\n"));
    }
    let url = if op.path.starts_with('$') {
        op.path.clone()
    } else {
        format!("{api}{}", op.path)
    };
    out.push_str(&format!(
        "\r\n{} {url} HTTP/1.1\r\nAccept: application/json\r\n",
        op.method
    ));
    match &op.body {
        Some(body) => {
            out.push_str("Content-Type: application/json; charset=utf-8\r\n\r\n");
            out.push_str(body);
        }
        None => out.push_str("\r\n"),
    }
}

/// One answered request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub content_id: Option<String>,
    pub status: u16,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn retry_after(&self) -> Option<Duration> {
        self.header("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
    }
}

/// The answer to one item of the batch, in the request's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemAnswer {
    /// A request's answer, or a failed change set's: its failed request's.
    Single(Response),
    /// A change set that went through: every request's answer.
    ChangeSet(Vec<Response>),
}

impl ItemAnswer {
    pub fn responses(&self) -> &[Response] {
        match self {
            Self::Single(r) => std::slice::from_ref(r),
            Self::ChangeSet(rs) => rs,
        }
    }

    /// The first failed request's answer, if any failed.
    pub fn failure(&self) -> Option<&Response> {
        self.responses().iter().find(|r| !r.is_success())
    }
}

/// Reads a `$batch` answer given its content type (which names the boundary).
pub fn parse_answer(content_type: &str, body: &[u8]) -> Result<Vec<ItemAnswer>, String> {
    let boundary = multipart_boundary(content_type)
        .ok_or_else(|| format!("the answer is not multipart/mixed ({content_type:?})"))?;
    let mut answers = Vec::new();
    for part in parts(body, &boundary)? {
        match part.header("content-type").and_then(multipart_boundary) {
            Some(inner) => {
                let responses = parts(part.body, &inner)?
                    .iter()
                    .map(response)
                    .collect::<Result<_, _>>()?;
                answers.push(ItemAnswer::ChangeSet(responses));
            }
            None => answers.push(ItemAnswer::Single(response(&part)?)),
        }
    }
    Ok(answers)
}

/// A MIME part: headers (names in lower case) and body.
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

fn multipart_boundary(content_type: &str) -> Option<String> {
    let mut params = content_type.split(';');
    if !params
        .next()?
        .trim()
        .eq_ignore_ascii_case("multipart/mixed")
    {
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

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > hay.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// Head and body of a part or HTTP message, split at the first empty line.
fn head_and_body(bytes: &[u8]) -> (&[u8], &[u8]) {
    for lead in [&b"\r\n"[..], b"\n"] {
        if let Some(rest) = bytes.strip_prefix(lead) {
            return (b"", rest);
        }
    }
    let crlf = find(bytes, b"\r\n\r\n", 0).map(|i| (i, 4));
    let lf = find(bytes, b"\n\n", 0).map(|i| (i, 2));
    let split = match (crlf, lf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    };
    match split {
        Some((i, n)) => (&bytes[..i], &bytes[i + n..]),
        None => (bytes, b""),
    }
}

fn header_lines(head: &str) -> Result<Vec<(String, String)>, String> {
    head.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (name, value) = l
                .split_once(':')
                .ok_or_else(|| format!("the header line {l:?} has no colon"))?;
            Ok((name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        })
        .collect()
}

/// The parts of a multipart body (RFC 2046): delimiters only at line starts, the
/// line break before one belongs to it, preamble and epilogue dropped.
fn parts<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, String> {
    let delimiter = format!("--{boundary}");
    let d = delimiter.as_bytes();
    let mut starts = Vec::new();
    let mut from = 0;
    while let Some(at) = find(body, d, from) {
        if at == 0 || body[at - 1] == b'\n' {
            starts.push(at);
        }
        from = at + d.len();
    }
    let mut found = Vec::new();
    for (k, &at) in starts.iter().enumerate() {
        let after = at + d.len();
        if body[after..].starts_with(b"--") {
            return Ok(found);
        }
        let start = find(body, b"\n", after)
            .map(|i| i + 1)
            .ok_or("a delimiter line does not end")?;
        let end = *starts
            .get(k + 1)
            .ok_or("the answer ends before its closing delimiter")?;
        if start > end {
            return Err("a part is cut short by the next delimiter".into());
        }
        let mut content = &body[start..end];
        content = content.strip_suffix(b"\n").unwrap_or(content);
        content = content.strip_suffix(b"\r").unwrap_or(content);
        let (head, body) = head_and_body(content);
        let head = std::str::from_utf8(head).map_err(|_| "a part's headers are not UTF-8")?;
        found.push(Part {
            headers: header_lines(head)?,
            body,
        });
    }
    Err(format!(
        "the answer has no closing delimiter --{boundary}--"
    ))
}

/// An `application/http` part: status line, headers, body.
fn response(part: &Part<'_>) -> Result<Response, String> {
    let (head, body) = head_and_body(part.body);
    let head = std::str::from_utf8(head).map_err(|_| "an answer's head is not UTF-8")?;
    let (status_line, rest) = head.split_once('\n').unwrap_or((head, ""));
    let status = status_line
        .trim()
        .strip_prefix("HTTP/")
        .and_then(|s| s.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("{:?} is not an HTTP status line", status_line.trim()))?;
    let headers = header_lines(rest)?;
    let content_id = part.header("content-id").map(str::to_owned).or_else(|| {
        headers
            .iter()
            .find(|(n, _)| n == "content-id")
            .map(|(_, v)| v.clone())
    });
    Ok(Response {
        content_id,
        status,
        headers,
        body: body.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const API: &str = "https://org.example/api/data/v9.2/";

    fn request() -> BatchRequest {
        let mut r = BatchRequest::default();
        r.push(Operation::get(
            "incidents?$select=incidentid&$filter=ticketnumber%20eq%20'A'",
        ));
        r.push_change_set(vec![
            Operation::patch("bt_sessions(bt_lsid='a')", &json!({"bt_name": "A"}), 1),
            Operation::patch(
                "annotations(11111111-2222-5333-4444-555555555555)",
                &json!({"objectid_bt_session@odata.bind": "$1"}),
                2,
            ),
        ]);
        r
    }

    #[test]
    fn a_request_is_written_as_multipart_with_change_sets() {
        let r = request();
        let boundary = r.boundary();
        assert!(boundary.starts_with("batch_"));
        let body = r.body(API, &boundary);
        let token = &boundary["batch_".len()..];
        let expected = format!(
            "--{boundary}\r\n\
             Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n\
             GET {API}incidents?$select=incidentid&$filter=ticketnumber%20eq%20'A' HTTP/1.1\r\nAccept: application/json\r\n\r\n\
             \r\n--{boundary}\r\n\
             Content-Type: multipart/mixed; boundary=changeset_{token}_1\r\n\r\n\
             --changeset_{token}_1\r\n\
             Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: 1\r\n\r\n\
             PATCH {API}bt_sessions(bt_lsid='a') HTTP/1.1\r\nAccept: application/json\r\nContent-Type: application/json; charset=utf-8\r\n\r\n\
             {{\"bt_name\":\"A\"}}\r\n\
             --changeset_{token}_1\r\n\
             Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: 2\r\n\r\n\
             PATCH {API}annotations(11111111-2222-5333-4444-555555555555) HTTP/1.1\r\nAccept: application/json\r\nContent-Type: application/json; charset=utf-8\r\n\r\n\
             {{\"objectid_bt_session@odata.bind\":\"$1\"}}\r\n\
             --changeset_{token}_1--\r\n\
             --{boundary}--\r\n"
        );
        assert_eq!(body, expected);
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn the_boundary_is_in_no_body() {
        let taken = format!("{:016x}", 1);
        let quoting = format!("a transcript quoting --batch_{taken}");
        let free = free_token(1, &[&quoting]);
        assert_ne!(free, taken);
        assert!(!quoting.contains(&free));
        assert_eq!(free_token(1, &["nothing"]), taken);
        assert_eq!(request().boundary(), request().boundary(), "stable");
    }

    /// An answer as Dataverse shapes it: a lookup, a change set that went through, a
    /// change set that failed (its failed request alone, with its Content-ID).
    const ANSWER: &str = "--batchresponse_x\r\n\
        Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n\
        HTTP/1.1 200 OK\r\nContent-Type: application/json; odata.metadata=minimal\r\nOData-Version: 4.0\r\n\r\n\
        {\"value\":[{\"incidentid\":\"c1\"}]}\r\n\
        --batchresponse_x\r\n\
        Content-Type: multipart/mixed; boundary=changesetresponse_y\r\n\r\n\
        --changesetresponse_y\r\n\
        Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: 1\r\n\r\n\
        HTTP/1.1 204 No Content\r\nOData-Version: 4.0\r\nOData-EntityId: https://org.example/api/data/v9.2/bt_sessions(r1)\r\n\r\n\
        \r\n--changesetresponse_y--\r\n\
        --batchresponse_x\r\n\
        Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: 3\r\n\r\n\
        HTTP/1.1 400 Bad Request\r\nContent-Type: application/json; odata.metadata=minimal\r\nRetry-After: 4\r\n\r\n\
        {\"error\":{\"code\":\"0x80040265\",\"message\":\"Refused by a plug-in\"}}\r\n\
        --batchresponse_x--\r\n";

    #[test]
    fn an_answer_is_read_part_by_part_with_a_failed_change_set() {
        let answers = parse_answer(
            "multipart/mixed; boundary=batchresponse_x",
            ANSWER.as_bytes(),
        )
        .expect("parses");
        assert_eq!(answers.len(), 3);
        let ItemAnswer::Single(lookup) = &answers[0] else {
            panic!("{answers:?}")
        };
        assert_eq!(lookup.status, 200);
        assert_eq!(lookup.body, br#"{"value":[{"incidentid":"c1"}]}"#);
        let ItemAnswer::ChangeSet(written) = &answers[1] else {
            panic!("{answers:?}")
        };
        assert_eq!(written.len(), 1);
        assert_eq!(
            (written[0].status, written[0].content_id.as_deref()),
            (204, Some("1"))
        );
        assert_eq!(
            written[0].header("odata-entityid"),
            Some("https://org.example/api/data/v9.2/bt_sessions(r1)")
        );
        assert!(answers[1].failure().is_none());
        let failed = answers[2].failure().expect("failed");
        assert_eq!(
            (
                failed.status,
                failed.content_id.as_deref(),
                failed.retry_after()
            ),
            (400, Some("3"), Some(Duration::from_secs(4)))
        );
        let error = crate::dynamics::DataverseError::from_answer(failed.status, &failed.body, None);
        assert_eq!(
            (error.code.as_deref(), error.message.as_str()),
            (Some("0x80040265"), "Refused by a plug-in")
        );
    }

    #[test]
    fn broken_answers_are_errors() {
        assert!(parse_answer("application/json", b"{}").is_err());
        let cut = &ANSWER[..ANSWER.len() - 30];
        assert!(parse_answer("multipart/mixed; boundary=batchresponse_x", cut.as_bytes()).is_err());
        let bad_status =
            "--b\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 OK\r\n\r\n\r\n--b--";
        assert!(parse_answer("multipart/mixed; boundary=\"b\"", bad_status.as_bytes()).is_err());
        assert_eq!(
            parse_answer("multipart/mixed; boundary=b", b"--b--\r\n"),
            Ok(vec![])
        );
    }
}
