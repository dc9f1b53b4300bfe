//! The Entra ID and Dataverse simulator against the documented behaviour, error
//! paths included.

use std::time::Duration;

use reqwest::{Method, RequestBuilder};
use serde_json::{json, Value};
use simulators::common::{Fault, FaultRule};
use simulators::dataverse::{Dataverse, DataverseOptions, Limits};

struct Sim {
    dv: Dataverse,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn start(options: DataverseOptions) -> Sim {
    let dir = tempfile::tempdir().expect("tempdir");
    let dv = Dataverse::start(options, dir.path()).await.expect("starts");
    let pem = std::fs::read(&dv.cert_path).expect("cert");
    let http = reqwest::Client::builder()
        .tls_certs_merge([reqwest::Certificate::from_pem(&pem).expect("pem")])
        .build()
        .expect("client");
    Sim {
        dv,
        http,
        _dir: dir,
    }
}

impl Sim {
    async fn token_form(&self, tenant: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/{tenant}/oauth2/v2.0/token", self.dv.authority))
            .form(form)
            .send()
            .await
            .expect("answer");
        (r.status().as_u16(), r.json().await.unwrap_or_default())
    }

    async fn token(&self) -> String {
        let scope = format!("{}/.default", self.dv.url);
        let secret = self.dv.client_secret();
        let (status, body) = self
            .token_form(
                &self.dv.tenant_id,
                &[
                    ("client_id", &self.dv.client_id),
                    ("client_secret", &secret),
                    ("grant_type", "client_credentials"),
                    ("scope", &scope),
                ],
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().expect("token").to_owned()
    }

    fn api(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}/api/data/v9.2/{path}", self.dv.url))
            .bearer_auth(token)
            .header("OData-MaxVersion", "4.0")
            .header("OData-Version", "4.0")
            .header("Accept", "application/json")
    }
}

async fn send(r: RequestBuilder) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = r.send().await.expect("answer");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.json().await.unwrap_or(Value::Null))
}

fn code(body: &Value) -> (&str, &str) {
    (
        body["error"]["code"].as_str().unwrap_or(""),
        body["error"]["message"].as_str().unwrap_or(""),
    )
}

#[tokio::test]
async fn entra_issues_tokens_and_answers_errors_as_entra_does() {
    let sim = start(DataverseOptions::default()).await;
    let token = sim.token().await;
    assert!(!token.is_empty());
    let scope = format!("{}/.default", sim.dv.url);
    let id = sim.dv.client_id.clone();
    let secret = sim.dv.client_secret();
    let good = |k: &str| -> String {
        match k {
            "client_id" => id.clone(),
            "client_secret" => secret.clone(),
            "scope" => scope.clone(),
            _ => "client_credentials".into(),
        }
    };
    let form = |overrides: &[(&'static str, &'static str)]| -> Vec<(&'static str, String)> {
        ["client_id", "client_secret", "grant_type", "scope"]
            .iter()
            .map(|k| {
                (
                    *k,
                    overrides
                        .iter()
                        .find(|(o, _)| o == k)
                        .map(|(_, v)| (*v).to_owned())
                        .unwrap_or_else(|| good(k)),
                )
            })
            .collect()
    };
    let post = |tenant: String, form: Vec<(&'static str, String)>| {
        let r = sim
            .http
            .post(format!("{}/{tenant}/oauth2/v2.0/token", sim.dv.authority))
            .form(&form);
        async move {
            let r = r.send().await.expect("answer");
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or_default(),
            )
        }
    };
    let (status, body) = post(
        sim.dv.tenant_id.clone(),
        form(&[("client_secret", "wrong")]),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let description = body["error_description"].as_str().unwrap_or_default();
    assert!(
        description.starts_with("AADSTS7000215: Invalid client secret provided."),
        "{description}"
    );
    assert!(
        description.contains("\r\nTrace ID: "),
        "Entra separates the parts with CR LF"
    );
    assert_eq!(body["error_codes"], json!([7000215]));

    let (status, body) = post("00000000-0000-0000-0000-000000000000".into(), form(&[])).await;
    assert_eq!(
        (status, body["error_codes"][0].as_u64()),
        (400, Some(90002))
    );
    let (status, body) = post(
        sim.dv.tenant_id.clone(),
        form(&[("scope", "https://elsewhere.example.com")]),
    )
    .await;
    assert_eq!(
        (
            status,
            body["error"].as_str(),
            body["error_codes"][0].as_u64()
        ),
        (400, Some("invalid_scope"), Some(1002012))
    );
    let (status, body) = post(
        sim.dv.tenant_id.clone(),
        form(&[("scope", "https://elsewhere.example.com/.default")]),
    )
    .await;
    assert_eq!(
        (
            status,
            body["error"].as_str(),
            body["error_codes"][0].as_u64()
        ),
        (400, Some("invalid_resource"), Some(500011))
    );
    let (status, body) = post(
        sim.dv.tenant_id.clone(),
        form(&[("client_id", "11111111-1111-1111-1111-111111111111")]),
    )
    .await;
    assert_eq!(
        (status, body["error_codes"][0].as_u64()),
        (400, Some(700016))
    );
    let (status, body) = post(
        sim.dv.tenant_id.clone(),
        form(&[("grant_type", "password")]),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
    sim.dv.expire_secret(true);
    let (status, body) = post(sim.dv.tenant_id.clone(), form(&[])).await;
    assert_eq!(
        (status, body["error_codes"][0].as_u64()),
        (401, Some(7000222))
    );
    assert_eq!(sim.dv.token_requests(), 8);
}

#[tokio::test]
async fn the_web_api_wants_a_valid_token_and_the_odata_headers() {
    let sim = start(DataverseOptions::default()).await;
    let (status, headers, _) =
        send(sim.http.get(format!("{}/api/data/v9.2/WhoAmI", sim.dv.url))).await;
    assert_eq!(status, 401);
    assert!(headers
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer authorization_uri=")));
    let token = sim.token().await;
    let (status, _, body) = send(sim.api(Method::GET, "WhoAmI", &token)).await;
    assert_eq!(status, 200);
    assert!(body["@odata.context"].as_str().is_some_and(
        |c| c.ends_with("/api/data/v9.2/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse")
    ));
    assert!(
        body["UserId"].is_string()
            && body["BusinessUnitId"].is_string()
            && body["OrganizationId"].is_string()
    );
    let (status, _, body) = send(
        sim.http
            .get(format!("{}/api/data/v9.2/WhoAmI", sim.dv.url))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        code(&body).1.contains("OData-MaxVersion") || code(&body).1.contains("odata-maxversion"),
        "{body}"
    );
    sim.dv.revoke_tokens();
    assert_eq!(send(sim.api(Method::GET, "WhoAmI", &token)).await.0, 401);
    sim.dv.set_token_lifetime(Duration::ZERO);
    let expired = sim.token().await;
    assert_eq!(send(sim.api(Method::GET, "WhoAmI", &expired)).await.0, 401);
}

#[tokio::test]
async fn cases_are_found_by_ticket_number_with_odata_quote_escaping() {
    let sim = start(DataverseOptions::default()).await;
    let token = sim.token().await;
    let id = sim.dv.add_case("CAS-O'Brien-01", "Printer");
    sim.dv.add_case("CAS-02", "Other");
    let query = |filter: &str| {
        let url = format!(
            "incidents?$select=incidentid,title&$filter={}",
            urlencode(filter)
        );
        sim.api(Method::GET, &url, &token)
    };
    let (status, _, body) = send(query("ticketnumber eq 'CAS-O''Brien-01'")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["value"].as_array().map(Vec::len), Some(1));
    assert_eq!(body["value"][0]["incidentid"], id);
    assert!(body["@odata.context"]
        .as_str()
        .is_some_and(|c| c.contains("$metadata#incidents(incidentid,title)")));
    let (status, _, body) = send(query("ticketnumber eq 'CAS-O'Brien-01'")).await;
    assert_eq!(status, 400, "an unescaped quote is a syntax error: {body}");
    let (status, _, body) = send(query("ticketnumber eq 'NOPE'")).await;
    assert_eq!(
        (status, body["value"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    let (status, _, body) = send(query("casenumber eq 'x'")).await;
    assert_eq!((status, code(&body).1), (400, "Could not find a property named 'casenumber' on type 'Microsoft.Dynamics.CRM.incident'."));
    sim.dv.revoke_privilege("prvReadIncident");
    let (status, _, body) = send(query("ticketnumber eq 'CAS-02'")).await;
    assert_eq!(status, 403);
    assert_eq!(code(&body).0, "0x80040220");
    assert!(code(&body)
        .1
        .contains("is missing prvReadIncident privilege"));
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn sessions_upsert_by_alternate_key_with_dataverses_rules() {
    let sim = start(DataverseOptions::default()).await;
    let token = sim.token().await;
    let case = sim.dv.add_case("CAS-1", "Case");
    let patch = |lsid: &str, body: Value| {
        sim.api(
            Method::PATCH,
            &format!("bt_sessions(bt_lsid='{lsid}')"),
            &token,
        )
        .json(&body)
    };

    let (status, headers, _) = send(patch("abc", json!({"bt_name": "CAS-1 2025-11-27", "bt_lseq": 42, "bt_starttime": "2025-11-27T08:00:00Z", "bt_CaseId@odata.bind": format!("/incidents({case})")}))).await;
    assert_eq!(status, 204);
    let entity = headers
        .get("odata-entityid")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(entity.contains("/api/data/v9.2/bt_sessions("), "{entity}");
    let (status, headers, _) = send(patch("abc", json!({"bt_transcript": "line"}))).await;
    assert_eq!(status, 204);
    assert_eq!(
        headers.get("odata-entityid").and_then(|v| v.to_str().ok()),
        Some(entity.as_str()),
        "the same row"
    );
    let row = sim.dv.row("abc").expect("row");
    assert_eq!(
        (row["bt_lseq"].as_i64(), row["bt_transcript"].as_str()),
        (Some(42), Some("line"))
    );
    assert_eq!(row["_bt_caseid_value"], case);
    assert_eq!(sim.dv.snapshot().rows.len(), 1);

    // body, extra header, expected status, expected Dataverse error code
    type Case<'a> = (Value, Option<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (json!({"bt_lsid": "abc"}), None, 400, "0x80060888"),
        (json!({"bt_colour": "red"}), None, 400, "0x0"),
        (json!({"bt_name": "x".repeat(201)}), None, 400, "0x80044331"),
        (json!({"bt_lseq": "forty-two"}), None, 400, "0x80060888"),
        (
            json!({"bt_CaseId@odata.bind": "/incidents(00000000-0000-0000-0000-000000000000)"}),
            None,
            404,
            "0x80040217",
        ),
        (
            json!({"bt_Case@odata.bind": format!("/incidents({case})")}),
            None,
            400,
            "0x80048d19",
        ),
        (
            json!({"bt_name": "x"}),
            Some(("If-None-Match", "*")),
            412,
            "0x80040237",
        ),
    ];
    for (body, header, status, error_code) in cases {
        let mut request = patch("abc", body.clone());
        if let Some((h, v)) = header {
            request = request.header(h, v);
        }
        let (got, _, answer) = send(request).await;
        assert_eq!(
            (got, code(&answer).0),
            (status, error_code),
            "{body}: {answer}"
        );
    }
    let (status, _, body) =
        send(patch("new-one", json!({"bt_name": "x"})).header("If-Match", "*")).await;
    assert_eq!(
        (status, code(&body)),
        (
            404,
            (
                "0x80048d02",
                "A record with the specified key values does not exist in bt_session entity"
            )
        )
    );
    let (status, _, _) = send(
        sim.api(Method::PATCH, "bt_sessions(bt_lsid='a/b')", &token)
            .json(&json!({})),
    )
    .await;
    assert_eq!(status, 400, "a key with a / cannot address a row");
    let (status, _, _) = send(
        sim.api(Method::PATCH, "bt_sessions(bt_name='x')", &token)
            .json(&json!({})),
    )
    .await;
    assert_eq!(status, 400, "bt_name is not a key");
    let (status, _, body) = send(sim.api(Method::GET, "bt_sessions(bt_lsid='abc')", &token)).await;
    assert_eq!((status, body["bt_lseq"].as_i64()), (200, Some(42)));
    sim.dv.revoke_privilege("prvWritebt_session");
    let (status, _, body) = send(patch("abc", json!({"bt_name": "y"}))).await;
    assert_eq!((status, code(&body).0), (403, "0x80040220"));
}

#[tokio::test]
async fn notes_attach_to_a_session_row() {
    let sim = start(DataverseOptions::default()).await;
    let token = sim.token().await;
    let (_, headers, _) = send(
        sim.api(Method::PATCH, "bt_sessions(bt_lsid='n1')", &token)
            .json(&json!({"bt_name": "n"})),
    )
    .await;
    let entity = headers
        .get("odata-entityid")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let row_id = entity
        .rsplit('(')
        .next()
        .unwrap_or("")
        .trim_end_matches(')')
        .to_owned();
    let note = json!({
        "subject": "Transcript (continued)", "filename": "transcript.txt", "mimetype": "text/plain",
        "documentbody": "SGVsbG8gw7w=", "objectid_bt_session@odata.bind": format!("/bt_sessions({row_id})"),
    });
    let (status, _, body) = send(sim.api(Method::POST, "annotations", &token).json(&note)).await;
    assert_eq!(status, 204, "{body}");
    let notes = sim.dv.snapshot().annotations;
    assert_eq!(
        (
            notes.len(),
            notes[0].document.as_deref(),
            notes[0].object_id.as_str()
        ),
        (1, Some("Hello ü"), row_id.as_str())
    );
    let mut orphan = note.clone();
    orphan["objectid_bt_session@odata.bind"] =
        json!("/bt_sessions(00000000-0000-0000-0000-000000000000)");
    assert_eq!(
        send(sim.api(Method::POST, "annotations", &token).json(&orphan))
            .await
            .0,
        404
    );
    let mut bad = note.clone();
    bad["colour"] = json!("red");
    assert_eq!(
        send(sim.api(Method::POST, "annotations", &token).json(&bad))
            .await
            .0,
        400
    );
}

#[tokio::test]
async fn table_metadata_is_there_or_not() {
    let sim = start(DataverseOptions::default()).await;
    let token = sim.token().await;
    let (status, _, body) = send(sim.api(
        Method::GET,
        "EntityDefinitions(LogicalName='bt_session')?$select=LogicalName&$expand=Attributes,Keys",
        &token,
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            body["EntitySetName"].as_str(),
            body["Keys"][0]["KeyAttributes"][0].as_str()
        ),
        (Some("bt_sessions"), Some("bt_lsid"))
    );
    let transcript = body["Attributes"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["LogicalName"] == "bt_transcript"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (
            transcript["AttributeType"].as_str(),
            transcript["MaxLength"].as_u64()
        ),
        (Some("Memo"), Some(1_048_576))
    );

    let bare = start(DataverseOptions {
        provisioned: false,
        ..Default::default()
    })
    .await;
    let token = bare.token().await;
    let (status, _, body) = send(bare.api(
        Method::GET,
        "EntityDefinitions(LogicalName='bt_session')",
        &token,
    ))
    .await;
    assert_eq!((status, code(&body).0), (404, "0x80041102"));
    let (status, _, _) = send(
        bare.api(Method::PATCH, "bt_sessions(bt_lsid='x')", &token)
            .json(&json!({})),
    )
    .await;
    assert_eq!(status, 404, "no table, no entity set");
}

#[tokio::test]
async fn service_protection_answers_429_with_retry_after_and_counts_early_comers() {
    let sim = start(DataverseOptions {
        limits: Limits {
            requests: Some(3),
            window_seconds: 60,
            concurrent: None,
        },
        ..Default::default()
    })
    .await;
    let token = sim.token().await;
    for _ in 0..3 {
        assert_eq!(send(sim.api(Method::GET, "WhoAmI", &token)).await.0, 200);
    }
    let (status, headers, body) = send(sim.api(Method::GET, "WhoAmI", &token)).await;
    assert_eq!(status, 429);
    let retry_after: u64 = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(
        code(&body),
        (
            "0x80072322",
            "Number of requests exceeded the limit of 3 over time window of 60 seconds."
        )
    );
    send(sim.api(Method::GET, "WhoAmI", &token)).await;
    assert_eq!(
        sim.dv.throttle_report(),
        (1, 2),
        "one request came before Retry-After ended"
    );
}

#[tokio::test]
async fn concurrent_requests_over_the_limit_are_throttled() {
    let sim = start(DataverseOptions {
        limits: Limits {
            requests: None,
            window_seconds: 300,
            concurrent: Some(1),
        },
        ..Default::default()
    })
    .await;
    let token = sim.token().await;
    sim.dv.arm(FaultRule {
        fault: Fault::Slow { millis: 2000 },
        count: 1,
        endpoint: Some("WhoAmI".into()),
    });
    let slow = sim.api(Method::GET, "WhoAmI", &token).send();
    let fast = async {
        // Once the slow request is in progress, a second one exceeds the limit of 1.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while sim.dv.in_flight() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the slow request never started"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        send(sim.api(Method::GET, "incidents", &token)).await
    };
    let (slow, (status, _, body)) = tokio::join!(slow, fast);
    assert_eq!(slow.expect("slow answer").status().as_u16(), 200);
    assert_eq!((status, code(&body).0), (429, "0x80072326"));
}

#[tokio::test]
async fn faults_are_injected_and_calls_counted() {
    let sim = start(DataverseOptions::default()).await;
    let token = sim.token().await;
    sim.dv.arm(FaultRule {
        fault: Fault::Status { status: 503 },
        count: 2,
        endpoint: None,
    });
    assert_eq!(send(sim.api(Method::GET, "WhoAmI", &token)).await.0, 503);
    assert_eq!(send(sim.api(Method::GET, "incidents", &token)).await.0, 503);
    assert_eq!(send(sim.api(Method::GET, "WhoAmI", &token)).await.0, 200);
    sim.dv.arm(FaultRule {
        fault: Fault::Reset,
        count: 1,
        endpoint: None,
    });
    let broken = match sim.api(Method::GET, "WhoAmI", &token).send().await {
        Err(_) => true,
        Ok(r) => r.text().await.is_err(),
    };
    assert!(broken);
    let counts = sim.dv.api_counts();
    assert_eq!(
        (counts.get("WhoAmI"), counts.get("incidents")),
        (Some(&3), Some(&1))
    );
}

#[tokio::test]
async fn the_control_api_seeds_cases_and_reads_rows() {
    let sim = start(DataverseOptions::default()).await;
    let control = |path: &str| format!("{}/control/{path}", sim.dv.url);
    let r: Value = sim
        .http
        .post(control("cases"))
        .json(&json!({"ticketnumber": "CAS-9", "title": "Nine"}))
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    assert!(r["incidentid"].is_string());
    let cases: Value = sim
        .http
        .get(control("cases"))
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    assert_eq!(cases[0]["ticketnumber"], "CAS-9");
    let rows: Value = sim
        .http
        .get(control("rows"))
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    assert_eq!(rows, json!({"rows": [], "annotations": []}));
    sim.http
        .post(control("limits"))
        .json(&json!({"requests": 1, "window_seconds": 300, "concurrent": null}))
        .send()
        .await
        .expect("answer");
    let token = sim.token().await;
    assert_eq!(send(sim.api(Method::GET, "WhoAmI", &token)).await.0, 200);
    assert_eq!(send(sim.api(Method::GET, "WhoAmI", &token)).await.0, 429);
}

/// One `application/http` part of a `$batch`.
fn op(method: &str, url: &str, content_id: Option<u32>, body: Option<Value>) -> String {
    let mut part =
        String::from("Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n");
    if let Some(id) = content_id {
        part.push_str(&format!("Content-ID: {id}\r\n"));
    }
    part.push_str(&format!("\r\n{method} {url} HTTP/1.1\r\n"));
    match body {
        Some(b) => part.push_str(&format!("Content-Type: application/json\r\n\r\n{b}")),
        None => part.push_str("\r\n"),
    }
    part
}

fn change_set(name: &str, ops: &[String]) -> String {
    let mut out = format!("Content-Type: multipart/mixed; boundary={name}\r\n\r\n");
    for o in ops {
        out.push_str(&format!("--{name}\r\n{o}\r\n"));
    }
    out.push_str(&format!("--{name}--"));
    out
}

fn batch(items: &[String]) -> String {
    let mut out = String::new();
    for i in items {
        out.push_str(&format!("--batch_t\r\n{i}\r\n"));
    }
    out.push_str("--batch_t--\r\n");
    out
}

impl Sim {
    async fn batch(
        &self,
        token: &str,
        body: String,
        continue_on_error: bool,
    ) -> (u16, Vec<String>, String) {
        let mut r = self
            .api(Method::POST, "$batch", token)
            .header("Content-Type", "multipart/mixed; boundary=batch_t")
            .body(body);
        if continue_on_error {
            r = r.header("Prefer", "odata.continue-on-error");
        }
        let r = r.send().await.expect("answer");
        let status = r.status().as_u16();
        let kind = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let text = r.text().await.expect("text");
        let Some((_, boundary)) = kind.split_once("boundary=") else {
            return (status, Vec::new(), text);
        };
        let parts = text
            .split(&format!("--{boundary}"))
            .skip(1)
            .filter(|p| !p.starts_with("--"))
            .map(str::to_owned)
            .collect();
        (status, parts, text)
    }
}

#[tokio::test]
async fn a_batch_runs_requests_and_atomic_change_sets_as_one_request() {
    let sim = start(DataverseOptions::default()).await;
    let token = sim.token().await;
    sim.dv.add_case("CAS-1", "One");
    sim.dv.set_limits(Limits {
        requests: Some(2),
        window_seconds: 300,
        concurrent: None,
    });
    let api = format!("{}/api/data/v9.2/", sim.dv.url);
    let note = "11111111-2222-5333-4444-555555555555";
    let items = |last_get: bool| {
        let mut items = vec![
            op("GET", &format!("{api}WhoAmI"), None, None),
            change_set(
                "cs_1",
                &[
                    op(
                        "PATCH",
                        &format!("{api}bt_sessions(bt_lsid='a')"),
                        Some(1),
                        Some(json!({"bt_name": "A"})),
                    ),
                    op(
                        "PATCH",
                        &format!("/api/data/v9.2/annotations({note})"),
                        Some(2),
                        Some(json!({"subject": "S", "objectid_bt_session@odata.bind": "$1"})),
                    ),
                ],
            ),
            change_set(
                "cs_2",
                &[
                    op(
                        "PATCH",
                        "bt_sessions(bt_lsid='b')",
                        Some(3),
                        Some(json!({"bt_name": "B"})),
                    ),
                    op(
                        "PATCH",
                        "bt_sessions(bt_lsid='c')",
                        Some(4),
                        Some(json!({"bt_nosuchcolumn": 1})),
                    ),
                ],
            ),
        ];
        if last_get {
            items.push(op(
                "GET",
                "incidents?$select=incidentid&$filter=ticketnumber%20eq%20'CAS-1'",
                None,
                None,
            ));
        }
        batch(&items)
    };
    let (status, parts, text) = sim.batch(&token, items(true), true).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(parts.len(), 4, "{text}");
    assert!(
        parts[0].contains("HTTP/1.1 200 OK") && parts[0].contains("\"UserId\""),
        "{}",
        parts[0]
    );
    assert!(
        parts[1].contains("multipart/mixed; boundary=changesetresponse_"),
        "{}",
        parts[1]
    );
    assert_eq!(
        parts[1].matches("HTTP/1.1 204 No Content").count(),
        2,
        "{}",
        parts[1]
    );
    assert!(parts[1].contains("Content-ID: 1") && parts[1].contains("odata-entityid: https://"));
    assert!(
        parts[2].contains("Content-ID: 4") && parts[2].contains("HTTP/1.1 400 Bad Request"),
        "{}",
        parts[2]
    );
    assert!(
        parts[2].contains("Invalid property 'bt_nosuchcolumn'"),
        "{}",
        parts[2]
    );
    assert!(
        parts[3].contains("HTTP/1.1 200 OK") && parts[3].contains("\"incidentid\""),
        "{}",
        parts[3]
    );
    let snapshot = sim.dv.snapshot();
    let a = sim.dv.row("a").expect("a written");
    assert!(sim.dv.row("b").is_none(), "rolled back with c");
    assert_eq!(snapshot.annotations.len(), 1);
    assert_eq!(
        snapshot.annotations[0].object_id,
        a["bt_sessionid"].as_str().unwrap_or(""),
        "$1 is a's row"
    );
    let counts = sim.dv.api_counts();
    assert_eq!(counts.get("$batch"), Some(&1));
    assert_eq!(counts.get("$batch/bt_sessions"), Some(&3));
    assert_eq!(counts.get("$batch/annotations"), Some(&1));
    assert_eq!(counts.get("bt_sessions"), None);
    // The whole batch was one request against the limit of two.
    assert_eq!(send(sim.api(Method::GET, "WhoAmI", &token)).await.0, 200);
    let (status, headers, body) = send(sim.api(Method::GET, "WhoAmI", &token)).await;
    assert_eq!((status, code(&body).0), (429, "0x80072322"));
    assert!(headers.contains_key("retry-after"));
    // Over the limit, a batch is refused whole, 429 with Retry-After.
    let (status, parts, text) = sim.batch(&token, items(true), true).await;
    assert_eq!((status, parts.len()), (429, 0), "{text}");

    // Without continue-on-error the batch stops at the first failure.
    sim.dv.set_limits(Limits::default());
    sim.dv.reset_counts();
    let (status, parts, _) = sim.batch(&token, items(true), false).await;
    assert_eq!((status, parts.len()), (200, 3));
    assert_eq!(sim.dv.api_count("$batch/incidents"), 0, "not run");
}

#[tokio::test]
async fn batches_refuse_what_dataverse_refuses_and_writes_fail_on_demand() {
    let sim = start(DataverseOptions::default()).await;
    let token = sim.token().await;
    let control = |path: &str| format!("{}/control/{path}", sim.dv.url);
    let (status, _, text) = sim.batch(&token, "not multipart".into(), true).await;
    assert_eq!(status, 400, "{text}");
    let r = sim
        .api(Method::POST, "$batch", &token)
        .header("Content-Type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status().as_u16(), 400);
    let many: Vec<String> = (0..1001).map(|_| op("GET", "WhoAmI", None, None)).collect();
    let (status, _, text) = sim.batch(&token, batch(&many), true).await;
    assert_eq!(status, 400);
    assert!(text.contains("exceeds the limit of 1000"), "{text}");
    let nested = batch(&[op("POST", "$batch", None, None)]);
    let (_, parts, _) = sim.batch(&token, nested, true).await;
    assert!(
        parts[0].contains("Batches cannot be nested"),
        "{}",
        parts[0]
    );
    let get_in_change_set = batch(&[change_set("cs", &[op("GET", "WhoAmI", Some(1), None)])]);
    let (_, parts, _) = sim.batch(&token, get_in_change_set, true).await;
    assert!(parts[0].contains("must not contain GET"), "{}", parts[0]);

    // A write fault fails the matching writes only, directly or in a batch.
    let armed = sim
        .http
        .post(control("write-faults"))
        .json(&json!({"contains": "bt_lsid='zzz'", "message": "No."}))
        .send()
        .await
        .expect("answer");
    assert_eq!(armed.status().as_u16(), 200);
    let writes = batch(&[
        change_set(
            "cs_1",
            &[op(
                "PATCH",
                "bt_sessions(bt_lsid='zzz')",
                Some(1),
                Some(json!({"bt_name": "Z"})),
            )],
        ),
        change_set(
            "cs_2",
            &[op(
                "PATCH",
                "bt_sessions(bt_lsid='yyy')",
                Some(2),
                Some(json!({"bt_name": "Y"})),
            )],
        ),
    ]);
    let (_, parts, _) = sim.batch(&token, writes.clone(), true).await;
    assert!(
        parts[0].contains("HTTP/1.1 400")
            && parts[0].contains("0x80040265")
            && parts[0].contains("No."),
        "{}",
        parts[0]
    );
    assert!(parts[1].contains("HTTP/1.1 204"), "{}", parts[1]);
    let (status, _, body) = send(
        sim.api(Method::PATCH, "bt_sessions(bt_lsid='zzz')", &token)
            .json(&json!({"bt_name": "Z"})),
    )
    .await;
    assert_eq!((status, code(&body)), (400, ("0x80040265", "No.")));
    sim.http
        .delete(control("write-faults"))
        .send()
        .await
        .expect("answer");
    let (_, parts, _) = sim.batch(&token, writes, true).await;
    assert!(parts[0].contains("HTTP/1.1 204"), "{}", parts[0]);
    assert!(sim.dv.row("zzz").is_some());
}
