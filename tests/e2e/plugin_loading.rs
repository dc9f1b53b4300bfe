//! Loading plugins from a Plugins folder, with the verdicts an admin sees, and calling
//! them safely.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use host::plugins::runner::{CallLimits, PluginRunner};
use plugin_api::loader::{self, LoadError};
use plugin_api::{ErrorKind, Event, EventSource, LogLevel, Outcome, Settings};

use crate::helpers::{library, run_host, PluginsDir};

const SO: &str = std::env::consts::DLL_EXTENSION;

#[test]
fn plugins_command_gives_each_plugin_its_verdict() {
    let plugins = PluginsDir::new();
    plugins
        .add("file-sink", "file_sink_plugin")
        .add("file-sink-copy", "file_sink_plugin")
        .add("dynamics", "plugin_dynamics")
        .add("not-a-plugin", "fixture_not_a_plugin")
        .add("old-api", "fixture_old_api")
        .add("ctor-panics", "fixture_ctor_panics")
        .add("ctor-fails", "fixture_ctor_fails")
        .write("text", &format!("notes.{SO}"), "this is not a library")
        .write("docs-only", "README.txt", "no library here");
    let dir = plugins.path().to_str().expect("utf-8 path");

    let output = run_host(&["plugins", "--plugins-dir", dir]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();

    let expected = vec![
        format!("Plugins folder: {dir}"),
        format!("FAILED  ctor-fails/libfixture_ctor_fails.{SO}: its constructor failed: its manifest is invalid: setting \"target\" is declared twice"),
        format!("FAILED  ctor-panics/libfixture_ctor_panics.{SO}: its constructor panicked: manifest exploded on purpose (at tests/fixtures/ctor-panics/src/lib.rs:9)"),
        format!("FAILED  docs-only: no plugin library (*.{SO}) in this folder"),
        format!("ok      dynamics/libplugin_dynamics.{SO}: dynamics365 \"Microsoft Dynamics 365\" 0.1.0"),
        format!("ok      file-sink/libfile_sink_plugin.{SO}: file-sink \"File Sink (example)\" 0.1.0"),
        format!("FAILED  file-sink-copy/libfile_sink_plugin.{SO}: another plugin with the id \"file-sink\" is already loaded from {dir}/file-sink/libfile_sink_plugin.{SO}; remove one of them"),
        format!("FAILED  not-a-plugin/libfixture_not_a_plugin.{SO}: not a middleware engine plugin: the library exports no plugin entry point"),
        format!("FAILED  old-api/libfixture_old_api.{SO}: built against plugin-api 0.0.1, but this host uses plugin-api {v}; rebuild the plugin against plugin-api {v}", v = plugin_api::PLUGIN_API_VERSION),
        format!("FAILED  text/notes.{SO}: not a loadable library: {dir}/text/notes.{SO}: file too short"),
        "2 loaded, 7 failed".to_owned(),
    ];
    assert_eq!(
        lines,
        expected,
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        output.status.code(),
        Some(1),
        "any failure makes the command fail"
    );
}

#[test]
fn plugins_command_succeeds_when_every_plugin_loads() {
    let plugins = PluginsDir::new();
    plugins
        .add("dynamics", "plugin_dynamics")
        .add("file-sink", "file_sink_plugin");
    let output = run_host(&[
        "plugins",
        "--plugins-dir",
        plugins.path().to_str().expect("utf-8"),
    ]);
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.ends_with("2 loaded, 0 failed\n"), "{stdout}");
}

#[test]
fn a_missing_plugins_folder_is_an_error_the_admin_can_read() {
    let output = run_host(&["plugins", "--plugins-dir", "/nonexistent/Plugins"]);
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(
            "error: cannot read the Plugins folder /nonexistent/Plugins: No such file or directory"
        ),
        "{stdout}"
    );
}

#[test]
fn the_loader_names_both_versions_for_an_incompatible_plugin() {
    let err = loader::load(&library("fixture_old_api")).expect_err("old plugin-api");
    assert_eq!(
        err,
        LoadError::IncompatibleVersion {
            plugin: "0.0.1".into(),
            host: plugin_api::PLUGIN_API_VERSION.into()
        }
    );
}

fn event(id: i64, lsid: &str, script: &str) -> Event {
    Event {
        id,
        source: EventSource::Outbound,
        event_type: "support_conference_end".into(),
        appliance_id: "Default".into(),
        timestamp: 1_764_230_400,
        lsid: Some(lsid.into()),
        fields: [("script".to_owned(), script.to_owned())].into(),
        attempt: 1,
    }
}

async fn scripted_runner(limits: CallLimits) -> PluginRunner {
    let plugin = loader::load(&library("fixture_scripted")).expect("scripted loads");
    PluginRunner::open(&plugin, "scripted test", &Settings::default(), limits)
        .await
        .expect("opens")
}

const LIMITS: CallLimits = CallLimits {
    timeout: Duration::from_secs(30),
    concurrency: 4,
};

#[tokio::test]
async fn a_panicking_handler_returns_an_error_and_the_instance_goes_on() {
    let runner = scripted_runner(LIMITS).await;
    let err = runner
        .handle_event(event(1, "a", "panic"))
        .await
        .expect_err("panic becomes an error");
    assert_eq!(err.kind, ErrorKind::Panicked);
    assert!(
        err.message.starts_with("the plugin panicked in handle_event: handler panicked on purpose (at tests/fixtures/scripted/src/lib.rs:"),
        "{}",
        err.message
    );
    let outcome = runner
        .handle_event(event(2, "a", "ok"))
        .await
        .expect("next call works");
    assert_eq!(
        outcome,
        Outcome::Done {
            detail: "in_flight=1".into()
        }
    );
}

#[tokio::test]
async fn typed_errors_cross_the_boundary_with_their_delay() {
    let runner = scripted_runner(LIMITS).await;
    let err = runner
        .handle_event(event(1, "a", "throttle:1500"))
        .await
        .expect_err("throttled");
    assert_eq!(err.kind, ErrorKind::Throttled);
    assert_eq!(err.retry_after, Some(Duration::from_millis(1500)));
    let err = runner
        .handle_event(event(2, "a", "fail:configuration"))
        .await
        .expect_err("config");
    assert_eq!(
        (err.kind, err.message.as_str()),
        (ErrorKind::Configuration, "told to fail (configuration)")
    );
    let outcome = runner
        .handle_event(event(3, "a", "skip"))
        .await
        .expect("skip");
    assert_eq!(
        outcome,
        Outcome::Skipped {
            reason: "told to skip".into()
        }
    );
}

#[tokio::test]
async fn a_call_over_the_time_limit_times_out() {
    let runner = scripted_runner(CallLimits {
        timeout: Duration::from_millis(300),
        concurrency: 1,
    })
    .await;
    let err = runner
        .handle_event(event(1, "a", "sleep:3000"))
        .await
        .expect_err("too slow");
    assert_eq!(err.kind, ErrorKind::TimedOut);
    assert_eq!(err.message, "the plugin did not answer within 0.3 s");
}

#[tokio::test]
async fn calls_in_flight_are_bounded_per_configuration() {
    let runner = scripted_runner(CallLimits {
        timeout: Duration::from_secs(30),
        concurrency: 2,
    })
    .await;
    let calls: Vec<_> = (0..6)
        .map(|i| {
            let runner = runner.clone();
            tokio::spawn(async move { runner.handle_event(event(i, "a", "sleep:150")).await })
        })
        .collect();
    for call in calls {
        let outcome = call.await.expect("task").expect("call");
        let Outcome::Done { detail } = outcome else {
            panic!("unexpected {outcome:?}")
        };
        let in_flight: usize = detail
            .trim_start_matches("in_flight=")
            .parse()
            .expect("number");
        assert!(in_flight <= 2, "{in_flight} calls were in flight at once");
    }
}

#[test]
fn plugin_log_records_reach_the_host_with_their_level() {
    let plugin = loader::load(&library("fixture_scripted")).expect("scripted loads");
    let records = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&records);
    let _instance = plugin
        .open(
            "logging test",
            &Settings::default(),
            Arc::new(move |level, message| {
                sink.lock().expect("lock").push((level, message.to_owned()))
            }),
        )
        .expect("opens");
    assert_eq!(
        *records.lock().expect("lock"),
        vec![(LogLevel::Info, "scripted instance opened".to_owned())]
    );
}

#[test]
fn an_instance_that_refuses_to_open_says_why() {
    let plugin = loader::load(&library("fixture_scripted")).expect("scripted loads");
    let mut settings = Settings::default();
    settings.set("fail_open", true);
    let err = plugin
        .open("refuses", &settings, Arc::new(|_, _| {}))
        .err()
        .expect("open fails");
    assert_eq!(
        (err.kind, err.message.as_str()),
        (ErrorKind::Configuration, "told to fail opening")
    );
}

#[test]
fn a_plugin_built_before_actions_existed_still_loads_and_runs() {
    let plugin = loader::load(&library("fixture_pre_actions")).expect("an older plugin loads");
    assert_eq!(plugin.manifest.plugin_api_version, "0.1.0");
    assert!(plugin.manifest.actions.is_empty());
    let instance = plugin
        .open("old", &Settings::default(), Arc::new(|_, _| {}))
        .expect("opens");
    assert_eq!(
        instance
            .handle_event(&event(1, "a", "ok"))
            .expect("handles"),
        Outcome::Done {
            detail: "handled support_conference_end".into()
        }
    );
    assert!(instance.test().expect("test").ok());
    let err = plugin
        .run_action(
            "old",
            &Settings::default(),
            "provision",
            Arc::new(|_, _| {}),
        )
        .expect_err("no actions");
    assert_eq!(
        err.message,
        "the plugin pre-actions has no action \"provision\" (it offers: none)"
    );
}
