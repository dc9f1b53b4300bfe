//! Configurations exported from one engine and imported into another, through the
//! API and the `config export` / `config import` commands.

use serde_json::{json, Value};

use crate::helpers::{PluginsDir, TestHost};

const END: &str = "support_conference_end";

fn plugins() -> PluginsDir {
    let plugins = PluginsDir::new();
    plugins.add("scripted", "fixture_scripted");
    plugins
}

async fn make(host: &TestHost) -> i64 {
    let (status, created) = host
        .post(
            "/api/configurations",
            &json!({"plugin": "scripted", "name": "Moved", "settings": {
                "bt_hostname": "bt.example.com", "bt_client_id": "the-client", "bt_client_secret": "s3cret-to-move",
                "outbound_event_types": [END],
                "retry_attempt_limit": 7,
            }}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    created["id"].as_i64().expect("id")
}

fn admin_listen(host: &TestHost) -> String {
    host.admin.trim_start_matches("http://").to_owned()
}

fn find<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["configurations"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

#[tokio::test]
async fn an_export_imported_into_an_empty_engine_works_the_same_once_its_secrets_are_given() {
    let plugins = plugins();
    let source = TestHost::start(&plugins);
    make(&source).await;
    let (status, document) = source.get("/api/configurations/export").await;
    assert_eq!(status, 200, "{document}");
    assert_eq!(document["format"], "middleware-engine-configurations");
    let exported = &document["configurations"][0];
    assert_eq!(exported["settings"]["retry_attempt_limit"], 7);
    assert_eq!(exported["secrets_set"], json!(["bt_client_secret"]));
    assert!(
        !document.to_string().contains("s3cret-to-move"),
        "no secret exported"
    );

    // Another engine, with its own key: the configuration comes over without its
    // secret, disabled until it is given.
    let target = TestHost::start(&plugins);
    let (status, report) = target.post("/api/configurations/import", &document).await;
    assert_eq!(status, 200, "{report}");
    let moved = find(&report, "Moved");
    assert_eq!(moved["result"], "created", "{report}");
    assert_eq!(moved["secrets_to_give"], json!(["bt_client_secret"]));
    let id = moved["id"].as_i64().expect("id");
    let (_, config) = target.get(&format!("/api/configurations/{id}")).await;
    assert_eq!(config["status"]["state"], "disabled", "{config}");
    assert_eq!(
        config["settings"]["bt_client_secret"],
        json!({"set": false})
    );
    assert_eq!(config["settings"]["retry_attempt_limit"], 7);
    let (_, again) = target.post("/api/configurations/import", &document).await;
    assert_eq!(find(&again, "Moved")["result"], "unchanged", "{again}");

    // The secret given and the configuration enabled: it runs as on the first engine.
    let mut settings = exported["settings"].clone();
    settings["bt_client_secret"] = json!("s3cret-to-move");
    let (status, body) = target
        .put(
            &format!("/api/configurations/{id}"),
            &json!({"plugin": "scripted", "name": "Moved", "disabled": false, "settings": settings}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"]["state"], "running", "{body}");
    let (status, _) = target
        .post_event(
            None,
            &[
                ("event", END),
                ("version", "3"),
                ("timestamp", "1"),
                ("lsid", "m1"),
            ],
        )
        .await;
    assert_eq!(status, 200);
    target.wait_for_state("succeeded", 1).await;
    let (_, exported_again) = target.get("/api/configurations/export").await;
    assert_eq!(
        exported_again["configurations"][0]["settings"], exported["settings"],
        "the same settings on both engines"
    );

    // A document that is not an export is refused, saying what it is not.
    let (status, body) = target
        .post(
            "/api/configurations/import",
            &json!({"format": "something-else", "version": 1, "configurations": []}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
}

#[tokio::test]
async fn a_sealed_export_brings_its_secrets_to_an_engine_with_the_same_key_and_the_commands_work() {
    let plugins = plugins();
    let source = TestHost::start(&plugins);
    make(&source).await;
    let file = source.data.path().join("configurations.json");
    let out = source.cli(&[
        "config",
        "export",
        "--secrets",
        "sealed",
        "--out",
        file.to_str().expect("utf-8"),
        "--admin-listen",
        &admin_listen(&source),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&file).expect("export file");
    assert!(!text.contains("s3cret-to-move"), "sealed, not in clear");
    assert!(text.contains("secrets_sealed"), "{text}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "an export with sealed secrets is owner-only");
    }

    // An engine holding a copy of the source's key file opens them.
    let key = source.data.path().join("data").join("secret.key");
    let key_copy = source.data.path().join("copy-of-secret.key");
    std::fs::copy(&key, &key_copy).expect("copy the key");
    let target = TestHost::start_with_env(
        &plugins,
        &[("MWE_SECRET_KEY_FILE", key_copy.to_str().expect("utf-8"))],
    );
    let out = target.cli(&[
        "config",
        "import",
        file.to_str().expect("utf-8"),
        "--admin-listen",
        &admin_listen(&target),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("created  scripted / Moved"), "{stdout}");
    assert!(!stdout.contains("secrets to give"), "{stdout}");
    let all = target.get("/api/configurations").await.1;
    let moved = &all[0];
    assert_eq!(moved["status"]["state"], "running", "{moved}");
    let (_, report) = target
        .post_empty(&format!("/api/configurations/{}/test", moved["id"]))
        .await;
    assert_eq!(report["ok"], true, "the secret opened: {report}");
    let again = target.cli(&[
        "config",
        "import",
        file.to_str().expect("utf-8"),
        "--admin-listen",
        &admin_listen(&target),
    ]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("unchanged  scripted / Moved"));
}
