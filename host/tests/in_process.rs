//! The engine built and run in this test process (`App::build` on port 0, then
//! `run_until`), as the end-to-end suites run the real binary: for tests of the API and
//! its protections that need no plugin process of their own.

use std::net::SocketAddr;

use host::app::App;
use host::settings::{HostSettings, SettingsArgs};
use serde_json::Value;

struct Running {
    admin: SocketAddr,
    events: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn start() -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = SettingsArgs {
        plugins_dir: Some(dir.path().join("Plugins")),
        data_dir: Some(dir.path().join("data")),
        admin_listen: Some("127.0.0.1:0".parse().expect("addr")),
        event_listen: Some("127.0.0.1:0".parse().expect("addr")),
        ..SettingsArgs::default()
    };
    let settings = HostSettings::resolve(&args).expect("settings");
    let app = App::build(&settings).await.expect("built");
    let (admin, events) = (app.admin_addr(), app.events_addr());
    assert_ne!(admin.port(), 0, "the real port is known once built");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    Running {
        admin,
        events,
        stop: Some(stop),
        served,
        _dir: dir,
    }
}

async fn json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test]
async fn an_event_taken_in_process_is_in_the_history_and_the_engine_stops_when_told() {
    let mut engine = start().await;
    let http = reqwest::Client::new();
    let (status, body) = json(
        http.post(format!("http://{}/ERSPost", engine.events))
            .form(&[
                ("event", "support_conference_end"),
                ("version", "3"),
                ("timestamp", "1764231302"),
                ("lsid", "in-process"),
            ])
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ignored")));
    // Read through the history's own connection right after the commit.
    let (status, history) = json(
        http.get(format!(
            "http://{}/api/events?lsid=in-process",
            engine.admin
        ))
        .send()
        .await
        .expect("answer"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(history[0]["state"], "ignored", "{history}");
    if let Some(stop) = engine.stop.take() {
        let _ = stop.send(());
    }
    (&mut engine.served).await.expect("ran to the end");
}

#[tokio::test]
async fn a_page_on_another_port_cannot_change_state_in_process_either() {
    let engine = start().await;
    let http = reqwest::Client::new();
    let (status, body) = json(
        http.post(format!("http://{}/api/configurations", engine.admin))
            .header("origin", "http://localhost:9999")
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = json(
        http.post(format!("http://{}/api/configurations", engine.admin))
            .header(
                "origin",
                format!("http://localhost:{}", engine.admin.port()),
            )
            .header("content-type", "application/json")
            .body(r#"{"plugin": "none", "name": "x"}"#)
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(status, 422, "the page's own origin gets through: {body}");
}
