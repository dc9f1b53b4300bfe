//! The history at scale through the real binary: keyset paging over thousands of
//! events, filters by event type, source and time, counts per state, "retry all
//! failed" and the CSV export.

use std::collections::HashSet;

use serde_json::{json, Value};

use crate::helpers::{PluginsDir, TestHost};

const END: &str = "support_conference_end";
const SURVEY: &str = "support_conference_customer_exit_survey_completed";

/// Posts `count` events from eight senders at once; each gets its 200.
pub(crate) async fn post_many(host: &TestHost, prefix: &str, event: &'static str, count: usize) {
    let senders: Vec<_> = (0..8)
        .map(|s| {
            let url = format!("{}/ERSPost", host.events);
            let prefix = prefix.to_owned();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                for i in (s..count).step_by(8) {
                    let lsid = format!("{prefix}-{i}");
                    let form = [
                        ("event", event),
                        ("version", "3"),
                        ("timestamp", "1764231302"),
                        ("lsid", lsid.as_str()),
                    ];
                    let status = client
                        .post(&url)
                        .form(&form)
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0);
                    assert_eq!(status, 200, "{lsid}");
                }
            })
        })
        .collect();
    for s in senders {
        s.await.expect("sender");
    }
}

fn ids(page: &[Value]) -> Vec<i64> {
    page.iter().filter_map(|e| e["id"].as_i64()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_walks_five_thousand_events_with_no_gap_and_no_repeat() {
    let host = TestHost::start(&PluginsDir::new());
    post_many(&host, "p", END, 5_000).await;
    let mut seen: Vec<i64> = Vec::new();
    let mut before: Option<i64> = None;
    let mut pages = 0;
    loop {
        let query = match before {
            Some(id) => format!("limit=700&before={id}"),
            None => "limit=700".to_owned(),
        };
        let page = host.events(&query).await;
        if pages == 1 {
            // New events arriving meanwhile come before the first page, never into
            // the walk.
            post_many(&host, "late", END, 50).await;
        }
        pages += 1;
        let page_ids = ids(&page);
        assert!(
            page_ids.windows(2).all(|w| w[0] > w[1]),
            "newest first within a page"
        );
        if let (Some(last), Some(first)) = (seen.last(), page_ids.first()) {
            assert!(first < last, "each page older than the one before");
        }
        seen.extend(&page_ids);
        match page_ids.last() {
            Some(last) if page_ids.len() == 700 => before = Some(*last),
            _ => break,
        }
    }
    assert_eq!(pages, 8, "5,000 events in pages of 700");
    assert_eq!(seen.len(), 5_000, "every event once");
    let unique: HashSet<i64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), 5_000, "no event twice");
    let lsids: HashSet<String> = {
        let mut all = HashSet::new();
        let mut before = None::<i64>;
        loop {
            let query = match before {
                Some(id) => format!("limit=1000&before={id}"),
                None => "limit=1000".to_owned(),
            };
            let page = host.events(&query).await;
            for e in &page {
                all.insert(e["lsid"].as_str().unwrap_or_default().to_owned());
            }
            match page.last().and_then(|e| e["id"].as_i64()) {
                Some(id) if page.len() == 1000 => before = Some(id),
                _ => break,
            }
        }
        all
    };
    assert_eq!(lsids.len(), 5_050, "the late ones too, from the top");
    let (status, body) = host.get("/api/events?before=abc").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("before=\"abc\" is not an id"))
    );
}

async fn scripted(host: &TestHost) -> i64 {
    let record = host.data.path().join("calls.jsonl");
    let (status, created) = host
        .post(
            "/api/configurations",
            &json!({"plugin": "scripted", "name": "History", "settings": {
                "bt_hostname": "bt.example.com", "bt_client_id": "c", "bt_client_secret": "s",
                "record_file": record.to_str().expect("utf-8"),
                "outbound_event_types": [END, SURVEY],
                "retry_outbound_event_types": [],
            }}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    created["id"].as_i64().expect("id")
}

#[tokio::test]
async fn filters_counts_retry_all_failed_and_the_csv_export() {
    let plugins = PluginsDir::new();
    plugins.add("scripted", "fixture_scripted");
    let host = TestHost::start(&plugins);
    let id = scripted(&host).await;
    for (lsid, event, script) in [
        ("f1", END, "fail"),
        ("f2", END, "fail"),
        ("ok1", END, "ok"),
        ("s1", SURVEY, "ok"),
    ] {
        let (status, _) = host
            .post_event(
                None,
                &[
                    ("event", event),
                    ("version", "3"),
                    ("timestamp", "1"),
                    ("lsid", lsid),
                    ("script", script),
                ],
            )
            .await;
        assert_eq!(status, 200);
    }
    host.wait_for_state("failed", 2).await;
    host.wait_for_state("succeeded", 2).await;
    let surveys = host.events(&format!("event_type={SURVEY}")).await;
    assert_eq!(
        surveys
            .iter()
            .map(|e| e["lsid"].clone())
            .collect::<Vec<_>>(),
        vec![json!("s1")]
    );
    assert_eq!(host.events("source=outbound").await.len(), 4);
    assert!(host.events("source=backfill").await.is_empty());
    assert!(host.events("until=2000-01-01").await.is_empty());
    assert_eq!(
        host.events("since=2000-01-01&until=2999-01-01").await.len(),
        4
    );
    let (status, body) = host.get("/api/events?source=pigeon").await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]
        .as_str()
        .is_some_and(|e| e.starts_with("source=\"pigeon\" is not one of")));

    let (status, counts) = host
        .get(&format!("/api/events/counts?configuration={id}"))
        .await;
    assert_eq!(status, 200, "{counts}");
    assert_eq!(counts["states"]["failed"], 2, "{counts}");
    assert_eq!(counts["states"]["succeeded"], 2, "{counts}");
    assert_eq!(counts["states"]["pending"], 0, "{counts}");

    // CSV of the failed ones: a header and one line each, quoted where needed.
    let response = host
        .http
        .get(host.url("/api/events/export.csv?state=failed"))
        .send()
        .await
        .expect("export");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().ok(),
        Some("text/csv; charset=utf-8")
    );
    assert_eq!(
        response.headers()["x-truncated"].to_str().ok(),
        Some("false")
    );
    let csv = response.text().await.expect("text");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "id,received_at,configuration,event_type,lsid,source,state,attempts,last_error,result"
    );
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(
        lines[1..]
            .iter()
            .all(|l| l.contains(",History,support_conference_end,f")),
        "{csv}"
    );

    // Retry all failed: both go again (and fail again, as scripted).
    let (status, body) = host
        .post_empty(&format!("/api/configurations/{id}/retry-failed"))
        .await;
    assert_eq!((status, body["retried"].as_i64()), (200, Some(2)), "{body}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let failed = host.events("state=failed").await;
        if failed.len() == 2 && failed.iter().all(|e| e["attempts"] == 2) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not retried: {failed:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (status, _) = host
        .post_empty("/api/configurations/999/retry-failed")
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_configurations_health_shows_its_queue_its_last_failure_and_what_needs_attention() {
    let plugins = PluginsDir::new();
    plugins.add("scripted", "fixture_scripted");
    let host = TestHost::start(&plugins);
    let id = scripted(&host).await;
    let (_, fresh) = host.get(&format!("/api/configurations/{id}")).await;
    assert_eq!(fresh["health"]["attention"], json!([]), "{fresh}");
    assert_eq!(fresh["health"]["failed"], 0);
    for (lsid, script) in [("h-ok", "ok"), ("h-bad", "fail")] {
        let (status, _) = host
            .post_event(
                None,
                &[
                    ("event", END),
                    ("version", "3"),
                    ("timestamp", "1"),
                    ("lsid", lsid),
                    ("script", script),
                ],
            )
            .await;
        assert_eq!(status, 200);
    }
    host.wait_for_state("failed", 1).await;
    host.wait_for_state("succeeded", 1).await;
    let (_, config) = host.get(&format!("/api/configurations/{id}")).await;
    let health = &config["health"];
    assert_eq!(health["failed"], 1, "{health}");
    assert_eq!(health["pending"], 0, "{health}");
    assert!(
        health["last_success_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{health}"
    );
    assert_eq!(
        health["last_failure_error"], "told to fail () — not retried: a permanent error",
        "{health}"
    );
    assert_eq!(health["attention"], json!(["1 event failed"]), "{health}");
    let (_, all) = host.get("/api/configurations").await;
    assert_eq!(
        all[0]["health"]["attention"],
        json!(["1 event failed"]),
        "the list has it too"
    );
}
