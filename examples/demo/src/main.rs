//! The demo: starts the appliance and Dataverse simulators, the engine with the
//! Dynamics 365 plugin in its Plugins folder, configures it through the admin API,
//! ends a few sessions on the appliance and shows what landed in Dynamics. The
//! engine and the simulators stay up until Ctrl-C.
//!
//! Run through `bash examples/demo.sh`, which builds everything and lays out
//! `demo-data/Plugins/dynamics365/` first.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use simulators::appliance::model::{ChatLine, SessionSpec, SurveyAnswer};
use simulators::appliance::{Appliance, ApplianceOptions};
use simulators::dataverse::{Dataverse, DataverseOptions};

const ADMIN: &str = "127.0.0.1:53231";
const EVENTS: &str = "127.0.0.1:8180";

struct Engine(Child);

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn fail(message: String) -> ! {
    eprintln!("demo: {message}");
    std::process::exit(1)
}

fn start_engine(binary: &Path, data: &Path) -> Engine {
    let mut child = Command::new(binary)
        .args([
            "serve",
            "--admin-listen",
            ADMIN,
            "--event-listen",
            EVENTS,
            "--log-level",
            "warn",
        ])
        .arg("--plugins-dir")
        .arg(data.join("Plugins"))
        .arg("--data-dir")
        .arg(data.join("data"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| fail(format!("cannot start {}: {e}", binary.display())));
    let stdout = child
        .stdout
        .take()
        .unwrap_or_else(|| fail("no engine output".into()));
    let mut lines = BufReader::new(stdout).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.starts_with("event address") => break,
            Some(Ok(_)) => {}
            _ => fail(format!(
                "the engine stopped at start (is {ADMIN} or {EVENTS} in use?)"
            )),
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    Engine(child)
}

async fn api(
    http: &reqwest::Client,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = http.request(method, format!("http://{ADMIN}{path}"));
    if let Some(b) = body {
        request = request.json(&b);
    }
    match request.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(e) => fail(format!("the admin API did not answer: {e}")),
    }
}

#[tokio::main]
async fn main() {
    let data = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "demo-data".into()),
    );
    let binary = PathBuf::from(
        std::env::args()
            .nth(2)
            .unwrap_or_else(|| "target/debug/middleware-engine".into()),
    );
    let certs = data.join("simulators");

    let appliance = Appliance::start(ApplianceOptions::default(), &certs)
        .await
        .unwrap_or_else(|e| fail(e));
    // A new environment without the BeyondTrust table: the plugin provisions it.
    let dataverse = Dataverse::start(
        DataverseOptions {
            provisioned: false,
            ..DataverseOptions::default()
        },
        &certs,
    )
    .await
    .unwrap_or_else(|e| fail(e));
    let bundle = certs.join("trusted.pem");
    let pems = [
        Some(dataverse.cert_path.clone()),
        appliance.cert_path.clone(),
    ]
    .into_iter()
    .flatten()
    .map(|p| std::fs::read_to_string(p).unwrap_or_default())
    .collect::<String>();
    std::fs::write(&bundle, pems)
        .unwrap_or_else(|e| fail(format!("cannot write {}: {e}", bundle.display())));
    let bundle = std::fs::canonicalize(&bundle).unwrap_or(bundle);
    println!("{}\n", simulators::summary(&appliance, &dataverse));

    let _engine = start_engine(&binary, &data);
    let http = reqwest::Client::new();

    // Cases in Dynamics, and a configuration pointing at both simulators.
    dataverse.add_case("CAS-01001", "Printer does not print");
    dataverse.add_case("CAS-01002", "VPN drops every hour");
    dataverse.add_case("XYZ-00077", "A case of another department");
    let settings = json!({
        "appliance_id": "Default",
        "bt_hostname": appliance.host,
        "bt_client_id": appliance.client_id,
        "bt_client_secret": appliance.client_secret(),
        "ca_certificate_file": bundle.to_string_lossy(),
        "outbound_event_types": ["support_conference_end", "support_conference_customer_exit_survey_completed", "support_conference_rep_exit_survey_completed"],
        "retry_outbound_event_types": ["support_conference_end", "support_conference_customer_exit_survey_completed"],
        "retry_attempt_limit": 3,
        "dynamics_url": dataverse.url,
        "azure_tenant_id": dataverse.tenant_id,
        "azure_client_id": dataverse.client_id,
        "azure_client_secret": dataverse.client_secret(),
        "azure_cloud": dataverse.authority,
        "update_all_sessions": false,
        "allowed_prefixes": "CAS",
        "import_timestamps_as_utc": true,
    });
    let body = json!({"plugin": "dynamics365", "name": "Demo", "settings": settings});
    let (_, existing) = api(&http, reqwest::Method::GET, "/api/configurations", None).await;
    let old = existing.as_array().and_then(|l| {
        l.iter()
            .find(|c| c["name"] == "Demo")
            .and_then(|c| c["id"].as_i64())
    });
    let (status, answer) = match old {
        Some(id) => {
            api(
                &http,
                reqwest::Method::PUT,
                &format!("/api/configurations/{id}"),
                Some(body),
            )
            .await
        }
        None => {
            api(
                &http,
                reqwest::Method::POST,
                "/api/configurations",
                Some(body),
            )
            .await
        }
    };
    if !(200..300).contains(&status) {
        fail(format!("the configuration was refused: {answer}"));
    }
    let id = answer["id"].as_i64().unwrap_or(0);
    let (_, provision) = api(
        &http,
        reqwest::Method::POST,
        &format!("/api/configurations/{id}/actions/provision"),
        None,
    )
    .await;
    println!("Provisioning the BeyondTrust Session table in Dynamics (the \"provision\" action):");
    for line in provision["progress"].as_array().into_iter().flatten() {
        println!("  .. {}", line.as_str().unwrap_or(""));
    }
    for c in provision["checks"].as_array().into_iter().flatten() {
        println!(
            "  {} {}: {}",
            if c["ok"] == true { "ok " } else { "FAIL" },
            c["name"].as_str().unwrap_or(""),
            c["detail"].as_str().unwrap_or("")
        );
    }
    println!();
    let (_, test) = api(
        &http,
        reqwest::Method::POST,
        &format!("/api/configurations/{id}/test"),
        None,
    )
    .await;
    println!("Configuration \"Demo\" test:");
    for c in test["checks"].as_array().into_iter().flatten() {
        println!(
            "  {} {}: {}",
            if c["ok"] == true { "ok " } else { "FAIL" },
            c["name"].as_str().unwrap_or(""),
            c["detail"].as_str().unwrap_or("")
        );
    }

    // The appliance sends its outbound events to the engine.
    appliance.add_recipient(&format!("http://{EVENTS}/ERSPost?appliance=Default"));
    let chat = |lines: &[(&str, &str)]| {
        lines
            .iter()
            .enumerate()
            .map(|(i, (from, text))| ChatLine {
                from: (*from).into(),
                text: (*text).into(),
                offset_seconds: 30 * i as i64 + 20,
            })
            .collect()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let session = |key: Option<&str>, minutes: i64, lines: Vec<ChatLine>| {
        let lsid = appliance.create_session(SessionSpec {
            external_key: key.map(str::to_owned),
            start_time: Some(now - minutes * 60),
            chat: lines,
            ..SessionSpec::default()
        });
        if let Err(e) = appliance.end_session(&lsid, Some(now)) {
            fail(e);
        }
        lsid
    };
    let sessions = vec![
        (
            "matching case",
            session(
                Some("CAS-01001"),
                14,
                chat(&[
                    ("customer", "Hello, my printer stopped printing."),
                    ("rep", "Let me take a look — one moment."),
                ]),
            ),
        ),
        (
            "prefix not allowed",
            session(Some("XYZ-00077"), 6, chat(&[("customer", "Hi!")])),
        ),
        ("no external key", session(None, 3, Vec::new())),
        (
            "with a customer survey",
            session(
                Some("CAS-01002"),
                22,
                chat(&[
                    ("rep", "Please try reconnecting now."),
                    ("customer", "Works, thanks!"),
                ]),
            ),
        ),
    ];
    if let Err(e) = appliance.submit_customer_survey(
        &sessions[3].1,
        vec![
            SurveyAnswer {
                name: "rating".into(),
                label: "How satisfied are you?".into(),
                answer: "5".into(),
            },
            SurveyAnswer {
                name: "comments".into(),
                label: "Comments".into(),
                answer: "Quick and friendly".into(),
            },
        ],
    ) {
        fail(e);
    }

    // Wait until the engine has finished with all five events.
    let deadline = Instant::now() + Duration::from_secs(60);
    let history = loop {
        let (_, events) = api(
            &http,
            reqwest::Method::GET,
            &format!("/api/events?configuration={id}&limit=50"),
            None,
        )
        .await;
        let list = events.as_array().cloned().unwrap_or_default();
        let ours: Vec<Value> = list
            .into_iter()
            .filter(|e| sessions.iter().any(|(_, l)| e["lsid"] == l.as_str()))
            .collect();
        let finished = ours
            .iter()
            .filter(|e| {
                matches!(
                    e["state"].as_str(),
                    Some("succeeded" | "skipped" | "failed")
                )
            })
            .count();
        if finished >= 5 || Instant::now() > deadline {
            break ours;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    println!("\nWhat happened to each session:");
    for (what, lsid) in &sessions {
        let fates: Vec<String> = history
            .iter()
            .filter(|e| e["lsid"] == lsid.as_str())
            .map(|e| {
                format!(
                    "{} {}: {}",
                    e["event_type"].as_str().unwrap_or(""),
                    e["state"].as_str().unwrap_or(""),
                    e["result"]
                        .as_str()
                        .or(e["last_error"].as_str())
                        .unwrap_or("")
                )
            })
            .collect();
        println!("  {what} ({lsid}):");
        for f in fates.iter().rev() {
            println!("    {f}");
        }
    }
    println!("\nRows in the simulated Dynamics (bt_sessions):");
    for row in dataverse.snapshot().rows {
        let get = |k: &str| row.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        println!("  {}", get("bt_name"));
        println!(
            "    case linked: {}  customer: {}  representative: {}  duration: {} s",
            if row.contains_key("_bt_caseid_value") {
                "yes"
            } else {
                "no"
            },
            get("bt_primarycustomer"),
            get("bt_primaryrep"),
            row.get("bt_durationseconds")
                .cloned()
                .unwrap_or(Value::Null)
        );
        for line in get("bt_transcript").lines() {
            println!("    | {line}");
        }
        if !get("bt_customersurvey").is_empty() {
            println!(
                "    customer survey: {}",
                get("bt_customersurvey").replace('\n', "; ")
            );
        }
    }
    println!("\nThe admin page: http://{ADMIN}/   (Event history at the top right)");
    println!("The event address the appliance posts to: http://{EVENTS}/ERSPost?appliance=Default");
    println!("Press Ctrl-C to stop the engine and the simulators.");
    let _ = tokio::signal::ctrl_c().await;
}
