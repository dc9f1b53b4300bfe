//! The audit log through the real binary: every change made through the API, with
//! its time, client address and outcome, and no secret's value.

use serde_json::{json, Value};

use crate::helpers::{PluginsDir, TestHost};

const SECRET: &str = "a-secret-that-must-not-show";

fn settings(hostname: &str, secret: &str) -> Value {
    json!({
        "bt_hostname": hostname, "bt_client_id": "c", "bt_client_secret": secret,
        "outbound_event_types": ["support_conference_end"],
    })
}

#[tokio::test]
async fn every_change_is_in_the_audit_log_with_its_client_and_outcome_and_no_secret() {
    let plugins = PluginsDir::new();
    plugins.add("scripted", "fixture_scripted");
    let host = TestHost::start(&plugins);
    let (status, created) = host
        .post(
            "/api/configurations",
            &json!({"plugin": "scripted", "name": "Audited", "settings": settings("bt.example.com", "first-secret")}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_i64().expect("id");
    let (status, _) = host
        .put(
            &format!("/api/configurations/{id}"),
            &json!({"plugin": "scripted", "name": "Audited", "settings": settings("bt2.example.com", SECRET)}),
        )
        .await;
    assert_eq!(status, 200);
    // A refused edit is recorded too, with why.
    let (status, _) = host
        .put(
            &format!("/api/configurations/{id}"),
            &json!({"plugin": "scripted", "name": "", "settings": settings("bt2.example.com", SECRET)}),
        )
        .await;
    assert_eq!(status, 422);
    let (status, _) = host
        .post_empty(&format!("/api/configurations/{id}/disable"))
        .await;
    assert_eq!(status, 200);
    let (status, _) = host
        .post_empty(&format!("/api/configurations/{id}/test"))
        .await;
    assert_eq!(status, 200, "a test changes nothing and is not recorded");
    let (status, _) = host.delete(&format!("/api/configurations/{id}")).await;
    assert_eq!(status, 204);

    let (status, log) = host.get("/api/audit").await;
    assert_eq!(status, 200, "{log}");
    let entries = log.as_array().expect("entries");
    let actions = crate::helpers::audit_actions(entries);
    assert_eq!(
        actions,
        ["delete", "disable", "edit", "edit", "create"],
        "{log}"
    );
    for entry in entries {
        assert_eq!(entry["configuration_id"], id, "{entry}");
        assert_eq!(entry["configuration_name"], "Audited", "{entry}");
        assert!(
            entry["client"]
                .as_str()
                .is_some_and(|c| c.starts_with("127.0.0.1:")),
            "{entry}"
        );
        assert!(
            entry["at"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{entry}"
        );
    }
    let edit = &entries[3];
    assert_eq!(edit["outcome"], "ok");
    assert_eq!(
        edit["detail"]["changed"],
        json!({
            "bt_hostname": {"from": "bt.example.com", "to": "bt2.example.com"},
            "bt_client_secret": "changed",
        }),
        "{edit}"
    );
    let refused = &entries[2];
    assert!(
        refused["outcome"]
            .as_str()
            .is_some_and(|o| o.starts_with("refused (422)")),
        "{refused}"
    );
    let text = log.to_string();
    assert!(
        !text.contains(SECRET) && !text.contains("first-secret"),
        "{text}"
    );
    // One configuration's entries, and keyset paging.
    let (_, older) = host
        .get(&format!(
            "/api/audit?configuration={id}&before={}&limit=2",
            entries[1]["id"]
        ))
        .await;
    let older: Vec<&str> = older
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(older, ["edit", "edit"]);
}
