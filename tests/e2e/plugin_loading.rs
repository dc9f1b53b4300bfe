//! Loading plugins from a Plugins folder, with the verdicts an admin sees, and calling
//! them safely.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use host::plugins::runner::{CallLimits, PluginRunner};
use plugin_api::loader::{self, LoadError};
use plugin_api::{ErrorKind, Event, EventSource, LogLevel, Outcome, Settings};

use crate::helpers::{library, run_host, PluginsDir, TestHost};

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

/// Lays out `file-sink` (the real plugin) and two truncated copies of it: `cut-4096`
/// (`head -c 4096`) and `cut-half`; returns the two truncated lengths.
fn plugins_with_truncated_copies(plugins: &PluginsDir) -> [usize; 2] {
    plugins.add("file-sink", "file_sink_plugin");
    let bytes = std::fs::read(library("file_sink_plugin")).expect("read the plugin");
    let cuts = [4096, bytes.len() / 2];
    for (folder, cut) in ["cut-4096", "cut-half"].into_iter().zip(cuts) {
        let target = plugins.path().join(folder);
        std::fs::create_dir_all(&target).expect("mkdir");
        std::fs::write(
            target.join(format!("libfile_sink_plugin.{SO}")),
            &bytes[..cut],
        )
        .expect("write the truncated copy");
    }
    cuts
}

/// `4096` as `4,096`, the way the verdicts write byte counts.
fn grouped(n: usize) -> String {
    plugin_api::loader::grouped(n as u64)
}

fn assert_truncated_verdict(reason: &str, cut: usize) {
    assert!(
        reason.starts_with("the library file is truncated or damaged: its ")
            && reason.ends_with(&format!(
                " but the file has {} bytes; copy the plugin again",
                grouped(cut)
            )),
        "{reason}"
    );
}

#[test]
fn plugins_command_reports_truncated_libraries_and_lists_the_good_one() {
    use std::os::unix::process::ExitStatusExt;
    let plugins = PluginsDir::new();
    let cuts = plugins_with_truncated_copies(&plugins);
    let dir = plugins.path().to_str().expect("utf-8 path");

    let output = run_host(&["plugins", "--plugins-dir", dir]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // A truncated library used to end the process with SIGBUS in the dynamic loader.
    assert_eq!(output.status.signal(), None, "killed; stderr: {stderr}");
    assert_eq!(
        output.status.code(),
        Some(1),
        "a failure makes the command fail"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    assert_eq!(lines[0], format!("Plugins folder: {dir}"));
    for (line, (folder, cut)) in lines[1..3]
        .iter()
        .zip(["cut-4096", "cut-half"].iter().zip(cuts))
    {
        let prefix = format!("FAILED  {folder}/libfile_sink_plugin.{SO}: ");
        let reason = line
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("{line}"));
        assert_truncated_verdict(reason, cut);
    }
    assert_eq!(
        lines[3],
        format!(
            "ok      file-sink/libfile_sink_plugin.{SO}: file-sink \"File Sink (example)\" 0.1.0"
        )
    );
    assert_eq!(lines[4], "1 loaded, 2 failed");
}

#[tokio::test]
async fn serve_starts_past_truncated_libraries_and_shows_their_reasons() {
    let plugins = PluginsDir::new();
    let cuts = plugins_with_truncated_copies(&plugins);
    // Before the check, the host died with SIGBUS here and never printed its addresses.
    let host = TestHost::start(&plugins);
    let (status, list) = host.get("/api/plugins").await;
    assert_eq!(status, 200, "{list}");
    let by_folder = |folder: &str| {
        list.as_array()
            .and_then(|l| l.iter().find(|p| p["folder"] == folder))
            .cloned()
            .unwrap_or_else(|| panic!("no plugin in folder {folder}: {list}"))
    };
    let sink = by_folder("file-sink");
    assert_eq!(
        (&sink["id"], &sink["status"]),
        (&"file-sink".into(), &"loaded".into())
    );
    for (folder, cut) in ["cut-4096", "cut-half"].into_iter().zip(cuts) {
        let entry = by_folder(folder);
        assert_eq!(entry["status"], "failed", "{entry}");
        assert_truncated_verdict(entry["error"].as_str().expect("a reason"), cut);
    }
    // The good plugin is usable: the plugin checks a configuration of it, which then opens.
    let output = host.data.path().join("sink.jsonl");
    let (status, body) = host
        .post(
            "/api/configurations",
            &serde_json::json!({"plugin": "file-sink", "name": "Sink", "settings": {
                "bt_hostname": "bt.example.com", "bt_client_id": "c", "bt_client_secret": "s",
                "outbound_event_types": ["support_conference_end"],
                "output_file": output.to_str().expect("utf-8"),
            }}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

#[test]
fn symbolic_link_loops_and_dangling_links_are_reported() {
    use std::os::unix::fs::symlink;
    let plugins = PluginsDir::new();
    let dir = plugins.path();
    // A plugin reached through a link to its folder keeps working.
    let outside = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        library("file_sink_plugin"),
        outside.path().join(format!("libfile_sink_plugin.{SO}")),
    )
    .expect("copy plugin");
    symlink(outside.path(), dir.join("file-sink")).expect("symlink");
    symlink("loop", dir.join("loop")).expect("symlink");
    symlink("missing-folder", dir.join("dangling")).expect("symlink");
    std::fs::create_dir(dir.join("inner")).expect("mkdir");
    symlink(
        format!("libself.{SO}"),
        dir.join("inner").join(format!("libself.{SO}")),
    )
    .expect("symlink");
    let d = dir.to_str().expect("utf-8 path");

    let output = run_host(&["plugins", "--plugins-dir", d]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let expected = vec![
        format!("Plugins folder: {d}"),
        format!("FAILED  dangling: symbolic link to a missing file: {d}/dangling -> missing-folder does not exist; restore it or remove the link"),
        format!("ok      file-sink/libfile_sink_plugin.{SO}: file-sink \"File Sink (example)\" 0.1.0"),
        format!("FAILED  inner/libself.{SO}: symbolic link loop: {d}/inner/libself.{SO} -> libself.{SO} leads back to itself and never reaches a file; point the link at the plugin's folder or library"),
        format!("FAILED  loop: symbolic link loop: {d}/loop -> loop leads back to itself and never reaches a file; point the link at the plugin's folder or library"),
        "1 loaded, 3 failed".to_owned(),
    ];
    assert_eq!(
        lines,
        expected,
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(1));
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
