//! `/readyz` on both addresses: ready while the engine takes events, not while it
//! drains or cannot write its store. `/healthz` only says the process is alive.

use serde_json::{json, Value};

use crate::helpers::{answer, wait_for_lines, PluginsDir, TestHost};

async fn readyz(host: &TestHost, base: &str) -> Option<(u16, Value)> {
    match host.http.get(format!("{base}/readyz")).send().await {
        Ok(response) => Some(answer(Ok(response)).await),
        Err(_) => None, // the servers have closed
    }
}

#[tokio::test]
async fn ready_on_both_addresses_and_not_while_the_store_cannot_be_written() {
    let host = TestHost::start(&PluginsDir::new());
    for base in [&host.admin, &host.events] {
        let (status, body) = readyz(&host, base).await.expect("answers");
        assert_eq!(
            (status, body["ready"].as_bool()),
            (200, Some(true)),
            "{base}"
        );
    }
    // Another process holds the database's write lock.
    let blocker = host.lock_store();
    let (status, body) = readyz(&host, &host.events).await.expect("answers");
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body["reason"].as_str(),
        Some("the store did not grant a write within 2 s")
    );
    let (status, _) = answer(
        host.http
            .get(format!("{}/healthz", host.events))
            .send()
            .await,
    )
    .await;
    assert_eq!(status, 200, "alive all the same");
    drop(blocker);
    let (status, _) = readyz(&host, &host.admin).await.expect("answers");
    assert_eq!(status, 200, "ready again once the store can be written");
}

#[tokio::test]
async fn not_ready_while_draining_after_sigterm() {
    let plugins = PluginsDir::new();
    plugins.add("scripted", "fixture_scripted");
    let mut host = TestHost::start(&plugins);
    let record = host.data.path().join("calls.jsonl");
    let (status, created) = host
        .post(
            "/api/configurations",
            &json!({"plugin": "scripted", "name": "Slow", "settings": {
                "bt_hostname": "bt.example.com", "bt_client_id": "c", "bt_client_secret": "s",
                "record_file": record.to_str().expect("utf-8"),
                "outbound_event_types": ["support_conference_end"],
            }}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let (status, _) = host
        .post_event(
            None,
            &[
                ("event", "support_conference_end"),
                ("version", "3"),
                ("timestamp", "1"),
                ("lsid", "slow"),
                ("script", "sleep:3000"),
            ],
        )
        .await;
    assert_eq!(status, 200);
    wait_for_lines(&record, 1).await; // the call is in flight
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &host.pid().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    // Until the servers close, /readyz says the engine is stopping.
    let mut seen = None;
    while let Some((status, body)) = readyz(&host, &host.events).await {
        if status == 503 {
            seen = Some(body);
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(
        seen.as_ref().and_then(|b| b["reason"].as_str()),
        Some("the engine is stopping")
    );
    assert_eq!(host.wait_exit(), Some(0));
}
