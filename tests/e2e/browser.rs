//! The admin page in a real browser (Debian's Chromium, driven through chromedriver):
//! what an admin does, step by step, with a screenshot of each main screen written to
//! `target/screenshots/`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use simulators::appliance::model::SessionSpec;
use simulators::appliance::ApplianceOptions;
use simulators::dataverse::DataverseOptions;

use crate::dynamics::Env;

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn browser(profile: &std::path::Path) -> (Driver, Client) {
    let port = free_port();
    let driver = Driver(
        Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver; tests/run.sh installs it)"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--window-size=1280,1000", format!("--user-data-dir={}", profile.display())],
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a browser session");
    (driver, client)
}

async fn screenshot(client: &Client, name: &str) {
    let dir = crate::helpers::workspace_root()
        .join("target")
        .join("screenshots");
    std::fs::create_dir_all(&dir).expect("screenshots folder");
    let png = client.screenshot().await.expect("screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
}

async fn find(client: &Client, css: &str) -> Element {
    client
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
}

/// Waits until `css` has `text` in it.
async fn text_of(client: &Client, css: &str, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(el) = client.find(Locator::Css(css)).await {
            if let Ok(t) = el.text().await {
                if t.contains(text) {
                    return t;
                }
            }
        }
        assert!(Instant::now() < deadline, "{css} never showed {text:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn gone(client: &Client, css: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.find(Locator::Css(css)).await.is_ok() {
        assert!(Instant::now() < deadline, "{css} is still on the page");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long the page may take to reach a state: generous, so that only a broken run
/// fails, never a slow one.
const PATIENCE: Duration = Duration::from_secs(30);

/// Brings `arguments[0]` to the middle of its scrolling box and tells whether it can take
/// a click or keys now: `{at}` (its box) when it is on the page, shown, enabled and the
/// topmost element at its centre, `{blocked}` (why not) otherwise. A dialog still open
/// over it, a re-render under way or a scroll that moved it all show here.
const INTERACTABLE: &str = r#"
const el = arguments[0];
if (!el.isConnected) return { blocked: "it was replaced by a re-render" };
el.scrollIntoView({ block: "center", inline: "center" });
const r = el.getBoundingClientRect();
if (r.width === 0 || r.height === 0) return { blocked: "it is not displayed" };
if (el.matches(":disabled")) return { blocked: "it is disabled" };
const top = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
if (top !== el && !el.contains(top)) {
  return { blocked: "the click would go to " + (top ? top.outerHTML.slice(0, 160) : "nothing") };
}
return { at: [r.left, r.top, r.width, r.height].join(",") };
"#;

/// Waits until `css` is interactable (see `INTERACTABLE`) and has stayed where it was at
/// the previous look, so that no scroll or layout is moving it, and returns it.
async fn interactable(client: &Client, css: &str, deadline: Instant) -> Element {
    let mut previous: Option<String> = None;
    loop {
        let (at, why) = match client.find(Locator::Css(css)).await {
            Err(e) => (None, format!("it is not on the page ({e})")),
            Ok(el) => {
                let arg = serde_json::to_value(&el).expect("element");
                match client.execute(INTERACTABLE, vec![arg]).await {
                    Ok(state) => match state["at"].as_str() {
                        Some(at) if previous.as_deref() == Some(at) => return el,
                        Some(at) => (Some(at.to_owned()), "it was still moving".to_owned()),
                        None => (None, state["blocked"].as_str().unwrap_or("?").to_owned()),
                    },
                    Err(e) => (None, e.to_string()),
                }
            }
        };
        previous = at;
        assert!(
            Instant::now() < deadline,
            "{css} did not become interactable in {PATIENCE:?}: {why}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A refusal that only means "not yet": the page changed between the look and the act.
fn not_yet(e: &fantoccini::error::CmdError) -> bool {
    e.is_stale_element_reference()
        || e.is_element_not_interactable()
        || matches!(e, fantoccini::error::CmdError::Standard(w)
            if w.error == fantoccini::error::ErrorStatus::ElementClickIntercepted)
}

/// Clicks `css` once it can take the click; a click the browser still refuses (another
/// element would receive it, or a re-render replaced it) did not happen and is tried again.
async fn click(client: &Client, css: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match interactable(client, css, deadline).await.click().await {
            Ok(()) => return,
            Err(e) if not_yet(&e) && Instant::now() < deadline => {}
            Err(e) => panic!("cannot click {css}: {e}"),
        }
    }
}

/// Replaces the text of the field `css` once it can take keys, and checks it holds `text`.
async fn type_into(client: &Client, css: &str, text: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let el = interactable(client, css, deadline).await;
        let typed = match el.clear().await {
            Ok(()) => el.send_keys(text).await,
            Err(e) => Err(e),
        };
        match typed {
            Ok(()) if el.prop("value").await.ok().flatten().as_deref() == Some(text) => return,
            Ok(()) => {}
            Err(e) if not_yet(&e) => {}
            Err(e) => panic!("cannot type into {css}: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "{css} did not take {text:?} in {PATIENCE:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_manages_a_dynamics_configuration_in_the_page() {
    let env = Env::start(ApplianceOptions::default(), DataverseOptions::default()).await;
    let profile = tempfile::tempdir().expect("profile");
    let (_driver, client) = browser(profile.path()).await;
    client
        .goto(&format!("{}/", env.host.admin))
        .await
        .expect("page");
    find(&client, "[data-action=add][data-plugin=dynamics365]").await;
    screenshot(&client, "1-home").await;
    assert_contrast(&client, "the home page").await;

    // Add, with a mistake first: the error shows next to its field.
    click(&client, "[data-action=add][data-plugin=dynamics365]").await;
    find(&client, "#form-dialog[open]").await;
    let settings = env.settings(json!({}));
    type_into(&client, "#f-name", "Browser").await;
    for key in [
        "bt_client_id",
        "bt_client_secret",
        "ca_certificate_file",
        "dynamics_url",
        "azure_tenant_id",
        "azure_client_id",
        "azure_client_secret",
        "azure_cloud",
    ] {
        type_into(
            &client,
            &format!("#f-{key}"),
            settings[key].as_str().expect("text"),
        )
        .await;
    }
    type_into(&client, "#f-bt_hostname", "https://appliance.example.com").await;
    click(
        &client,
        "input[name=outbound_event_types][value=support_conference_end]",
    )
    .await;
    click(&client, "input[name=update_all_sessions]").await;
    click(&client, "#form-save").await;
    let error = text_of(&client, "#err-bt_hostname", "remove the scheme").await;
    assert_eq!(error, "remove the scheme (https://); enter only the host name, e.g. support.example.com or support.example.com:8443");
    screenshot(&client, "2-form-errors").await;
    let tied = js(&client, "const i = document.getElementById('f-bt_hostname'); return [i.getAttribute('aria-invalid'), i.getAttribute('aria-describedby').split(' ')[0], document.activeElement === i];", vec![]).await;
    assert_eq!(
        tied,
        json!(["true", "err-bt_hostname", true]),
        "the error is tied to its input, which has the focus"
    );
    assert_contrast(&client, "the configuration form with an error").await;
    type_into(
        &client,
        "#f-bt_hostname",
        settings["bt_hostname"].as_str().expect("text"),
    )
    .await;
    click(&client, "#form-save").await;
    text_of(
        &client,
        "tr[data-config-name='Browser'] [data-status]",
        "Running",
    )
    .await;
    screenshot(&client, "3-saved").await;

    // Test: each check shows.
    click(&client, "tr[data-config-name='Browser'] [data-action=test]").await;
    let report = text_of(&client, ".test-result", "Test passed").await;
    assert!(
        report.contains("Entra ID token") && report.contains("Case read permission"),
        "{report}"
    );
    screenshot(&client, "4-test").await;

    // Copy (disabled), rename it, enable and disable it, delete it after confirming.
    click(&client, "tr[data-config-name='Browser'] [data-action=copy]").await;
    text_of(
        &client,
        "tr[data-config-name='Browser (copy)'] [data-status]",
        "Disabled",
    )
    .await;
    click(
        &client,
        "tr[data-config-name='Browser (copy)'] [data-action=edit]",
    )
    .await;
    type_into(&client, "#f-name", "Browser staging").await;
    click(&client, "#form-save").await;
    text_of(
        &client,
        "tr[data-config-name='Browser staging'] [data-status]",
        "Disabled",
    )
    .await;
    click(
        &client,
        "tr[data-config-name='Browser staging'] [data-action=enable]",
    )
    .await;
    text_of(
        &client,
        "tr[data-config-name='Browser staging'] [data-status]",
        "Running",
    )
    .await;
    click(
        &client,
        "tr[data-config-name='Browser staging'] [data-action=disable]",
    )
    .await;
    text_of(
        &client,
        "tr[data-config-name='Browser staging'] [data-status]",
        "Disabled",
    )
    .await;
    click(
        &client,
        "tr[data-config-name='Browser staging'] [data-action=delete]",
    )
    .await;
    let question = text_of(&client, "#confirm-text", "cannot be recovered").await;
    assert_eq!(
        question,
        "Delete the configuration \"Browser staging\"? It cannot be recovered after deletion."
    );
    screenshot(&client, "5-confirm-delete").await;
    click(&client, "#confirm-yes").await;
    gone(&client, "tr[data-config-name='Browser staging']").await;
    let (_, all) = env.host.get("/api/configurations").await;
    assert_eq!(all.as_array().map(Vec::len), Some(1));

    // An event fails (no privilege), shows in the history, and is retried from there.
    env.dataverse.revoke_privilege("prvCreatebt_session");
    let lsid = env.end_session(SessionSpec::default());
    env.host.wait_for_state("failed", 1).await;
    env.dataverse.restore_privilege("prvCreatebt_session");
    click(&client, "#open-history").await;
    find(&client, "tr[data-event-id] [data-state=failed]").await;
    click(&client, "[data-action=attempts]").await;
    text_of(
        &client,
        ".attempts",
        "is missing prvCreatebt_session privilege",
    )
    .await;
    screenshot(&client, "6-history").await;
    click(&client, "[data-action=retry]").await;
    // The page shows the event queued again; once the engine has done it, a reload of
    // the history shows it succeeded.
    gone(&client, "[data-state=failed]").await;
    env.host.wait_for_state("succeeded", 1).await;
    click(&client, "#history-filters button[type=submit]").await;
    find(&client, "tr[data-event-id] [data-state=succeeded]").await;
    screenshot(&client, "7-retried").await;
    assert!(env.dataverse.row(&lsid).is_some());
    client.close().await.expect("close");
}

/// Sets a `datetime-local` picker to Unix seconds `at`, in the browser's local time, as
/// picking it does (the picker's segments take no typed ISO text).
async fn pick_time(client: &Client, css: &str, at: i64) {
    let script = r#"
const input = document.querySelector(arguments[0]);
const d = new Date(arguments[1] * 1000);
const p = (n) => String(n).padStart(2, "0");
input.value = `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
input.dispatchEvent(new Event("input", { bubbles: true }));
input.dispatchEvent(new Event("change", { bubbles: true }));
return input.value;
"#;
    let value = client
        .execute(script, vec![json!(css), json!(at)])
        .await
        .expect("set the picker");
    assert!(
        value.as_str().is_some_and(|v| v.len() == 16),
        "{css}: {value}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_backfills_a_range_and_watches_it_finish() {
    let bulk = crate::bulk::start("sleep:100").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let sessions: Vec<(String, i64)> = (0..8)
        .map(|i| (format!("page{i}"), now - 7_200 + i * 60))
        .collect();
    let refs: Vec<(&str, i64)> = sessions.iter().map(|(l, t)| (l.as_str(), *t)).collect();
    crate::bulk::write_sessions(&bulk.sessions, &refs);
    let profile = tempfile::tempdir().expect("profile");
    let (_driver, client) = browser(profile.path()).await;
    client
        .goto(&format!("{}/", bulk.host.admin))
        .await
        .expect("page");
    click(
        &client,
        "tr[data-config-name='Bulk'] [data-action=backfill]",
    )
    .await;
    find(&client, "#backfill-dialog[open]").await;
    text_of(&client, "#backfill-title", "Bulk").await;
    text_of(&client, "#reconcile-text", "Every 60 min").await;
    text_of(&client, "label[for=backfill-since]", "Sessions ended from").await;
    text_of(&client, "label[for=backfill-until]", "until (empty: now)").await;

    // A range the wrong way round: the engine's reason shows in the page.
    pick_time(&client, "#backfill-since", now - 3_600).await;
    pick_time(&client, "#backfill-until", now - 10_800).await;
    click(&client, "#backfill-start").await;
    text_of(
        &client,
        "#backfill-error",
        "the range is empty: since must be before until",
    )
    .await;

    // The two hours of sessions (the pickers are to the minute).
    pick_time(&client, "#backfill-since", now - 10_800).await;
    pick_time(&client, "#backfill-until", now + 60).await;
    click(&client, "#backfill-start").await;
    let item = "#backfill-list[role=status][aria-live=polite] article[data-backfill-id]";
    find(&client, &format!("{item} progress")).await;
    screenshot(&client, "8-backfill-running").await;
    let done = text_of(&client, item, "Done").await;
    assert!(
        done.contains("Found\n8") || done.contains("Found 8"),
        "{done}"
    );
    text_of(&client, &format!("{item} [data-count=imported] dd"), "8").await;
    text_of(
        &client,
        &format!("{item} [data-count=already_imported] dd"),
        "0",
    )
    .await;
    gone(&client, &format!("{item} [data-action=cancel-backfill]")).await;
    let bar = find(&client, &format!("{item} progress")).await;
    let full = (
        bar.attr("value").await.expect("value"),
        bar.attr("max").await.expect("max"),
    );
    assert_eq!(full, (Some("8".to_owned()), Some("8".to_owned())));
    assert!(
        find(&client, "#backfill-error")
            .await
            .is_displayed()
            .await
            .ok()
            == Some(false)
    );
    screenshot(&client, "9-backfill-done").await;

    // A long one, cancelled from its Cancel button after confirming.
    let more: Vec<(String, i64)> = (0..1000)
        .map(|i| (format!("long{i}"), now - 7_000 + i))
        .collect();
    let refs: Vec<(&str, i64)> = more.iter().map(|(l, t)| (l.as_str(), *t)).collect();
    crate::bulk::write_sessions(&bulk.sessions, &refs);
    click(&client, "#backfill-start").await;
    let running = "#backfill-list article[data-state=running]";
    text_of(&client, &format!("{running} [data-count=found] dd"), "1000").await;
    click(&client, &format!("{running} [data-action=cancel-backfill]")).await;
    text_of(&client, "#confirm-no", "Keep it running").await;
    click(&client, "#confirm-yes").await;
    let cancelled = text_of(
        &client,
        "#backfill-list article[data-state=cancelled]",
        "Cancelled",
    )
    .await;
    assert!(!cancelled.contains("left"), "{cancelled}");
    let (_, list) = bulk
        .host
        .get(&format!(
            "/api/configurations/{}/backfills",
            bulk.configuration
        ))
        .await;
    assert_eq!(list[0]["state"], "cancelled", "{list}");
    assert_eq!(list[1]["state"], "done", "{list}");
    client.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_lists_the_engines_on_the_database_and_one_that_died() {
    let plugins = crate::helpers::PluginsDir::new();
    plugins.add("file-sink", "file_sink_plugin");
    let env = [("MWE_LEASE_SECONDS", "3"), ("MWE_ENGINE_NAME", "engine-a")];
    let first = crate::helpers::TestHost::start_postgres(&plugins, &env);
    let mut second = first.join(
        &plugins,
        &[("MWE_LEASE_SECONDS", "3"), ("MWE_ENGINE_NAME", "engine-b")],
    );
    let profile = tempfile::tempdir().expect("profile");
    let (_driver, client) = browser(profile.path()).await;
    client
        .goto(&format!("{}/", first.admin))
        .await
        .expect("page");
    text_of(&client, "#engines-heading", "Engines on this database").await;
    text_of(&client, "tr[data-engine='engine-a']", "(this engine)").await;
    text_of(&client, "tr[data-engine='engine-b']", "Up").await;
    text_of(&client, "tr[data-engine='engine-b']", "Same as this engine").await;
    screenshot(&client, "engines").await;
    // The second engine dies; once its heartbeat is older than the lease, a reload
    // shows it not answering.
    second.kill();
    let deadline = Instant::now() + PATIENCE;
    loop {
        client.refresh().await.expect("reload");
        let row = find(&client, "tr[data-engine='engine-b']").await;
        if row
            .text()
            .await
            .unwrap_or_default()
            .contains("Not answering")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dead engine still shows as up"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    text_of(&client, "tr[data-engine='engine-a']", "Up").await;
}

/// Every text on the screen (the open modal dialog, or the whole page) measured against
/// the background it is drawn on, blended through translucent layers: WCAG AA asks
/// 4.5:1, 3:1 for large text (24 px, or 18.66 px bold). Disabled controls are exempt.
/// Placeholders count: the page uses them to say a secret is saved. Answers the texts
/// below their ratio, each with its colours.
const LOW_CONTRAST: &str = r#"
const parse = (c) => {
  const m = /rgba?\(([^)]+)\)/.exec(c);
  if (!m) return null;
  const p = m[1].split(/[\s,\/]+/).filter(Boolean).map(Number);
  return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
};
const over = (top, under) => [0, 1, 2].map((i) => top[i] * top[3] + under[i] * (1 - top[3])).concat(1);
const lum = (c) => {
  const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
  return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]);
};
const background = (el) => {
  const layers = [];
  for (let n = el; n; n = n.parentElement) {
    const bg = parse(getComputedStyle(n).backgroundColor);
    if (bg && bg[3] > 0) { layers.push(bg); if (bg[3] >= 1) break; }
  }
  return layers.reverse().reduce((under, layer) => over(layer, under), [255, 255, 255, 1]);
};
const low = [];
const check = (el, style, color, what) => {
  const bg = background(el);
  const fg = over(parse(color), bg);
  const [a, b] = [lum(fg), lum(bg)];
  const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  const size = parseFloat(style.fontSize);
  const need = size >= 24 || (Number(style.fontWeight) >= 700 && size >= 18.66) ? 3 : 4.5;
  if (ratio < need - 0.005) {
    low.push(`${ratio.toFixed(2)} < ${need} for ${JSON.stringify(what.slice(0, 50))}: ${color} on rgb(${bg.slice(0, 3).map(Math.round)})`);
  }
};
const shown = (el) => {
  const r = el.getBoundingClientRect();
  return r.width > 0 && r.height > 0 && getComputedStyle(el).visibility === "visible" && !el.closest(":disabled");
};
const root = [...document.querySelectorAll("dialog[open]")].pop() || document.body;
const done = new Set();
const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
while (walker.nextNode()) {
  const el = walker.currentNode.parentElement;
  const text = walker.currentNode.textContent.trim();
  if (!text || done.has(el) || el.closest("option, script, style") || !shown(el)) continue;
  done.add(el);
  const style = getComputedStyle(el);
  check(el, style, style.color, text);
}
for (const input of root.querySelectorAll("input[placeholder]:placeholder-shown")) {
  if (!input.placeholder || !shown(input)) continue;
  check(input, getComputedStyle(input), getComputedStyle(input, "::placeholder").color, input.placeholder);
}
return low;
"#;

async fn assert_contrast(client: &Client, screen: &str) {
    let low = js(client, LOW_CONTRAST, vec![]).await;
    assert_eq!(
        low,
        json!([]),
        "text below WCAG AA contrast on {screen}: {low:#}"
    );
}

/// Runs `script` in the page with `args` (`arguments[0]`, ...) and answers its result.
async fn js(client: &Client, script: &str, args: Vec<serde_json::Value>) -> serde_json::Value {
    client
        .execute(script, args)
        .await
        .unwrap_or_else(|e| panic!("the page's script failed: {e}"))
}

/// Runs `script` until it answers true.
async fn until(client: &Client, script: &str, what: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if client.execute(script, vec![]).await.ok() == Some(json!(true)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not happen in {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_sees_what_needs_attention_and_sets_where_alerts_go() {
    use simulators::webhook::{WebhookOptions, WebhookSink};
    let plugins = crate::helpers::PluginsDir::new();
    plugins.add("scripted", "fixture_scripted");
    let host = crate::helpers::TestHost::start(&plugins);
    let id = host
        .scripted_configuration("Desk prod", json!({"retry_outbound_event_types": []}))
        .await;
    let webhook = WebhookSink::start(WebhookOptions::default())
        .await
        .expect("webhook sink");
    let profile = tempfile::tempdir().expect("profile");
    let (_driver, client) = browser(profile.path()).await;
    client
        .goto(&format!("{}/", host.admin))
        .await
        .expect("page");
    let row = format!("tr[data-config-id='{id}']");
    text_of(&client, &format!("{row} [data-status]"), "Running").await;
    assert_contrast(&client, "the home page").await;

    // A keyboard user sits on the row's History button while an event fails: the page
    // refreshes on its own, shows what needs attention, and the focus stays put.
    let history_button = format!("{row} [data-action=history]");
    js(&client, "const b = document.querySelector(arguments[0]); b.focus(); b.dataset.before = 'refresh'; return document.activeElement === b;", vec![json!(history_button)]).await;
    host.post_script("browser-alert-1", "fail:permanent").await;
    host.wait_for_state("failed", 1).await;
    let glance = text_of(&client, "#attention[role=status]", "needs attention").await;
    assert_eq!(glance, "1 configuration needs attention: Desk prod");
    text_of(
        &client,
        &format!("[data-attention='{id}']"),
        "1 event failed",
    )
    .await;
    text_of(&client, &format!("[data-health='{id}']"), "1 failed").await;
    let focus = js(&client, "const a = document.activeElement; return [a.matches(arguments[0]), a.dataset.before === undefined];", vec![json!(history_button)]).await;
    assert_eq!(
        focus,
        json!([true, true]),
        "the focus stays on the re-rendered History button"
    );
    screenshot(&client, "health").await;
    assert_contrast(
        &client,
        "the home page with a configuration that needs attention",
    )
    .await;

    // The alert settings: a mistake shows under its field, tied to it, focused.
    click(&client, "#open-alerts").await;
    find(&client, "#alerts-dialog[open]").await;
    text_of(&client, "#alerts-open", "No alert is open").await;
    type_into(&client, "#a-alert_after_minutes", "0").await;
    click(&client, "#alerts-save").await;
    let error = text_of(&client, "#aerr-alert_after_minutes", "more than 0").await;
    let tied = js(&client, "const i = document.getElementById('a-alert_after_minutes'); return [i.getAttribute('aria-invalid'), i.getAttribute('aria-describedby'), document.activeElement === i];", vec![]).await;
    assert_eq!(
        tied,
        json!([
            "true",
            "aerr-alert_after_minutes a-alert_after_minutes-help",
            true
        ]),
        "{error}"
    );
    screenshot(&client, "alerts-error").await;
    assert_contrast(&client, "the alert settings with an error").await;

    // Fixed, with a webhook: saved, the URL shown only as saved.
    let url = webhook.url("/hooks/page-token-never-shown");
    type_into(&client, "#a-alert_after_minutes", "0.02").await;
    type_into(&client, "#a-webhook_url", &url).await;
    click(&client, "#alerts-save").await;
    text_of(&client, "#notice", "Alert settings saved.").await;
    find(&client, "#a-webhook_url[data-secret-set=true]").await;
    find(&client, "#a-webhook_url-clear").await;
    let invalid = js(&client, "return [document.getElementById('a-webhook_url').value, document.querySelectorAll('#alerts-form [aria-invalid]').length];", vec![]).await;
    assert_eq!(invalid, json!(["", 0]));
    assert_contrast(&client, "the saved alert settings").await;

    // The test alert, each channel's result shown.
    click(&client, "#alerts-test").await;
    let delivered = text_of(&client, "[data-delivery=webhook]", "delivered").await;
    assert_eq!(delivered, "✓Webhook: delivered");
    // The failing configuration's alert goes out too: it failed longer ago than the
    // 1.2 s delay, so as soon as the settings are saved (either may arrive first).
    let calls = webhook.wait_for(2, PATIENCE).await;
    let mut kinds: Vec<String> = calls
        .iter()
        .filter_map(|c| Some(c.json.as_ref()?["kind"].as_str()?.to_owned()))
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["alert", "test"]);
    // It is listed as open (a reopened dialog reads the list again).
    let subject = format!("[data-alert-subject='configuration:{id}']");
    let deadline = Instant::now() + PATIENCE;
    loop {
        click(&client, "#alerts-close").await;
        click(&client, "#open-alerts").await;
        find(&client, "#alerts-dialog[open]").await;
        if let Ok(item) = client.find(Locator::Css(&subject)).await {
            let text = item.text().await.unwrap_or_default();
            if text.contains("webhook: sent") {
                assert!(
                    text.contains("Desk prod") && text.contains("1 event failed"),
                    "{text}"
                );
                break;
            }
        }
        assert!(Instant::now() < deadline, "the open alert is not listed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    screenshot(&client, "alerts-open").await;
    let source = client.source().await.expect("source");
    assert!(
        !source.contains("page-token-never-shown"),
        "the webhook URL is on the page"
    );

    // From the configuration's history: retry all its failed events, after one
    // confirmation.
    click(&client, "#alerts-close").await;
    click(&client, &history_button).await;
    find(&client, "#history-dialog[open]").await;
    click(&client, "#retry-all").await;
    let question = text_of(&client, "#confirm-text", "again?").await;
    assert_eq!(question, "Queue every failed event of \"Desk prod\" again?");
    click(&client, "#confirm-yes").await;
    text_of(&client, "#notice", "1 failed event queued again.").await;
    client.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_pages_through_the_history_and_back() {
    let plugins = crate::helpers::PluginsDir::new();
    plugins.add("scripted", "fixture_scripted");
    let host = crate::helpers::TestHost::start(&plugins);
    host.scripted_configuration("Paged", json!({})).await;
    crate::history::post_many(&host, "page", "support_conference_end", 450).await;
    host.wait_for_state("succeeded", 450).await;
    let profile = tempfile::tempdir().expect("profile");
    let (_driver, client) = browser(profile.path()).await;
    client
        .goto(&format!("{}/", host.admin))
        .await
        .expect("page");
    click(&client, "#open-history").await;
    find(&client, "#history-dialog[open]").await;
    text_of(&client, "#history-counts", "450 succeeded").await;

    const PAGE: &str = "return [...document.querySelectorAll('#history-body tr[data-event-id]')].map((r) => Number(r.dataset.eventId));";
    let page_ids = |v: serde_json::Value| -> Vec<i64> {
        v.as_array()
            .expect("ids")
            .iter()
            .filter_map(|i| i.as_i64())
            .collect()
    };
    let mut seen: Vec<i64> = Vec::new();
    let mut first_page = None;
    for expected in [200, 200, 50] {
        let deadline = Instant::now() + PATIENCE;
        let ids = loop {
            let ids = page_ids(js(&client, PAGE, vec![]).await);
            // A new page: its first row is older than the last one seen.
            if ids.len() == expected && seen.last().is_none_or(|last| ids[0] < *last) {
                break ids;
            }
            assert!(
                Instant::now() < deadline,
                "the page of {expected} did not show: {ids:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first");
        first_page.get_or_insert(ids.clone());
        seen.extend(ids);
        if expected == 200 {
            click(&client, "#history-older").await;
        }
    }
    let unique: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!((seen.len(), unique.len()), (450, 450), "no gap, no repeat");
    until(
        &client,
        "return document.getElementById('history-older').disabled && !document.getElementById('history-newest').disabled;",
        "Older disabled on the last page",
    )
    .await;
    screenshot(&client, "history-last-page").await;
    assert_contrast(&client, "the last page of the history").await;

    click(&client, "#history-newest").await;
    let first_page = first_page.expect("first page");
    let deadline = Instant::now() + PATIENCE;
    while page_ids(js(&client, PAGE, vec![]).await) != first_page {
        assert!(
            Instant::now() < deadline,
            "Newest did not go back to the first page"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A filter that matches nothing says so.
    js(
        &client,
        "document.getElementById('filter-state').value = 'failed';",
        vec![],
    )
    .await;
    click(&client, "#history-filters button[type=submit]").await;
    text_of(&client, "#history-body", "No events match.").await;
    client.close().await.expect("close");
}
