//! The webhook sink: what it records, its scripted answers, HTTPS.

use std::time::Duration;

use serde_json::json;
use simulators::webhook::{WebhookOptions, WebhookReply, WebhookSink};

const WAIT: Duration = Duration::from_secs(10);

async fn plain() -> WebhookSink {
    WebhookSink::start(WebhookOptions::default())
        .await
        .expect("starts")
}

#[tokio::test]
async fn records_a_json_post_and_answers_200() {
    let sink = plain().await;
    assert!(sink.ca_pem().is_none());
    assert_eq!(sink.url("hooks/a"), sink.url("/hooks/a"));
    let body = json!({"alert": "source_down", "source": "appliance-1", "count": 3});
    let response = reqwest::Client::new()
        .post(sink.url("/hooks/alerts?team=ops"))
        .header("X-Signature", "sha256=abc")
        .json(&body)
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status().as_u16(), 200);
    let requests = sink.wait_for(1, WAIT).await;
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/hooks/alerts")
    );
    assert_eq!(r.query.as_deref(), Some("team=ops"));
    assert_eq!(r.header("x-signature"), Some("sha256=abc"));
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_eq!(r.json.as_ref(), Some(&body));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&r.body).expect("raw JSON"),
        body
    );
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn scripted_failures_come_first_then_200() {
    let sink = WebhookSink::start(WebhookOptions {
        replies: vec![(2, WebhookReply::status(500).with_body("boom"))],
        ..Default::default()
    })
    .await
    .expect("starts");
    sink.reply_next(1, WebhookReply::retry_after(429, 7));
    let http = reqwest::Client::new();
    let mut seen = Vec::new();
    for i in 0..4 {
        let response = http
            .post(sink.url("/hook"))
            .body(format!("not json {i}"))
            .send()
            .await
            .expect("answer");
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        seen.push((response.status().as_u16(), retry_after));
    }
    assert_eq!(
        seen,
        [
            (500, None),
            (500, None),
            (429, Some("7".to_owned())),
            (200, None)
        ]
    );
    let requests = sink.wait_for(4, WAIT).await;
    let statuses: Vec<u16> = requests.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [500, 500, 429, 200]);
    assert!(requests.iter().all(|r| r.json.is_none()));
    assert_eq!(requests[3].body, "not json 3");
}

#[tokio::test]
async fn other_methods_are_recorded_and_get_405() {
    let sink = plain().await;
    sink.reply_next(1, WebhookReply::status(503));
    let http = reqwest::Client::new();
    let response = http.get(sink.url("/hook")).send().await.expect("answer");
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(
        response
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok()),
        Some("POST")
    );
    // The scripted reply is still there for the next POST.
    let response = http.post(sink.url("/hook")).send().await.expect("answer");
    assert_eq!(response.status().as_u16(), 503);
    let methods: Vec<String> = sink.requests().into_iter().map(|r| r.method).collect();
    assert_eq!(methods, ["GET", "POST"]);
}

#[tokio::test]
async fn a_delayed_answer_outlasts_a_short_client_timeout() {
    let sink = plain().await;
    sink.reply_next(
        1,
        WebhookReply::status(200).delayed(Duration::from_secs(60)),
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .expect("client");
    let error = http
        .post(sink.url("/slow"))
        .json(&json!({"a": 1}))
        .send()
        .await
        .expect_err("times out");
    assert!(error.is_timeout(), "{error}");
    // The request was recorded on arrival; the next one is answered at once.
    assert_eq!(sink.wait_for(1, WAIT).await[0].path, "/slow");
    let response = reqwest::Client::new()
        .post(sink.url("/fast"))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test]
async fn https_with_the_sinks_certificate() {
    let sink = WebhookSink::start(WebhookOptions {
        tls: true,
        ..Default::default()
    })
    .await
    .expect("starts");
    assert!(sink.url("/x").starts_with("https://127.0.0.1:"));
    let pem = sink.ca_pem().expect("a CA");
    let http = reqwest::Client::builder()
        .tls_certs_merge([reqwest::Certificate::from_pem(pem.as_bytes()).expect("pem")])
        .build()
        .expect("client");
    let response = http
        .post(sink.url("/secure"))
        .json(&json!({"ok": true}))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        sink.wait_for(1, WAIT).await[0].json,
        Some(json!({"ok": true}))
    );
    // A client that does not trust it fails.
    assert!(reqwest::Client::new()
        .post(sink.url("/secure"))
        .send()
        .await
        .is_err());
}

#[tokio::test]
async fn wait_for_sees_concurrent_posts() {
    let sink = plain().await;
    let http = reqwest::Client::new();
    let posts = (0..8).map(|i| {
        let http = http.clone();
        let url = sink.url(&format!("/n/{i}"));
        tokio::spawn(async move { http.post(url).json(&json!({ "i": i })).send().await })
    });
    for post in posts.collect::<Vec<_>>() {
        post.await.expect("joins").expect("answer");
    }
    let mut paths: Vec<String> = sink
        .wait_for(8, WAIT)
        .await
        .into_iter()
        .map(|r| r.path)
        .collect();
    paths.sort();
    assert_eq!(paths.len(), 8);
    assert_eq!(paths[0], "/n/0");
    sink.clear();
    assert!(sink.requests().is_empty());
}
