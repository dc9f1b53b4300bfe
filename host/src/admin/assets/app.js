// The admin page. Renders from the JSON API; builds every node with textContent,
// never innerHTML, so names and messages cannot inject markup.
"use strict";

const state = { plugins: [], configurations: [], editing: null, tests: {} };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function token() { return sessionStorage.getItem("adminToken"); }

async function askToken() {
  const dialog = document.getElementById("token-dialog");
  const input = document.getElementById("token-input");
  input.value = "";
  dialog.showModal();
  await new Promise((resolve) => dialog.addEventListener("close", resolve, { once: true }));
  sessionStorage.setItem("adminToken", input.value);
}

async function api(method, path, body) {
  for (let attempt = 0; attempt < 3; attempt++) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (token()) headers.Authorization = "Bearer " + token();
    const response = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401) { await askToken(); continue; }
    const data = response.status === 204 ? null : await response.json().catch(() => null);
    return { status: response.status, ok: response.ok, data };
  }
  return { status: 401, ok: false, data: { error: "an admin token is required" } };
}

function notify(message, kind = "info") {
  const notice = document.getElementById("notice");
  notice.textContent = message;
  notice.className = "notice " + kind;
  notice.hidden = false;
  clearTimeout(notify.timer);
  notify.timer = setTimeout(() => { notice.hidden = true; }, 6000);
}

async function load() {
  const [plugins, configurations, engines] = await Promise.all([
    api("GET", "/api/plugins"), api("GET", "/api/configurations"), api("GET", "/api/engines"),
  ]).catch(() => [{ ok: false, data: { error: "the engine did not answer" } }, {}, {}]);
  if (!plugins.ok || !configurations.ok) {
    const error = (plugins.data || configurations.data || {}).error || "the engine did not answer";
    render(el("p", { class: "error-banner", role: "alert", text: "Cannot load: " + error }));
    return;
  }
  // Loaded plugins first, by name; those that failed to load after them.
  state.plugins = plugins.data.sort((a, b) =>
    (a.status === "loaded" ? 0 : 1) - (b.status === "loaded" ? 0 : 1) || a.name.localeCompare(b.name));
  state.configurations = configurations.data;
  state.engines = engines.ok ? engines.data : null;
  renderAll();
  openFromHash();
}

// Deep links: #add/<plugin id> and #edit/<configuration id> open the form;
// #history or #history/<configuration id> the event history; #backfill/<configuration
// id> the configuration's reconciliation and backfills.
function openFromHash() {
  const [verb, arg] = decodeURIComponent(location.hash.slice(1)).split("/");
  if (document.querySelector("dialog[open]")) return;
  if (["form-dialog", "history-dialog", "backfill-dialog"].some((id) => document.getElementById(id).open)) return;
  if (verb === "history") { openHistory({ configuration: arg || "" }); return; }
  if (verb === "alerts") { openAlerts(); return; }
  if (verb === "backfill") {
    const config = state.configurations.find((c) => String(c.id) === arg);
    if (config) openBackfill(config);
    return;
  }
  if (verb === "add") {
    const plugin = state.plugins.find((p) => p.id === arg && p.status === "loaded");
    if (plugin) openForm(plugin, null);
  } else if (verb === "edit") {
    const config = state.configurations.find((c) => String(c.id) === arg);
    const plugin = config && state.plugins.find((p) => p.id === config.plugin && p.status === "loaded");
    if (plugin) openForm(plugin, config);
  }
}

// Selectors, best first, that find `node` again in a re-rendered tree: its id, or
// its action inside the row it belongs to.
function focusKey(node) {
  if (!node || node === document.body) return [];
  if (node.id) return ["#" + CSS.escape(node.id)];
  const action = node.dataset && node.dataset.action;
  if (!action) return [];
  let key = `[data-action="${CSS.escape(action)}"]`;
  if (node.dataset.pluginAction) key += `[data-plugin-action="${CSS.escape(node.dataset.pluginAction)}"]`;
  if (node.dataset.plugin) key += `[data-plugin="${CSS.escape(node.dataset.plugin)}"]`;
  const row = node.closest("[data-config-id], [data-event-id], [data-audit-id]");
  if (!row) return [key];
  const [attr] = ["data-config-id", "data-event-id", "data-audit-id"].filter((a) => row.hasAttribute(a));
  const rowKey = `[${attr}="${CSS.escape(row.getAttribute(attr))}"]`;
  // When the action is gone (a retried event has no "Retry now"), the row's first one.
  return [`${rowKey} ${key}`, `${rowKey} button`];
}

// Replaces `container`'s children, keeping the keyboard focus on the same control
// when the new tree has it (a refresh must not throw a keyboard user back to the top).
function replaceKeepingFocus(container, nodes) {
  const focused = container.contains(document.activeElement) ? focusKey(document.activeElement) : [];
  container.replaceChildren(...nodes);
  for (const selector of focused) {
    const again = container.querySelector(selector);
    if (again) { again.focus({ preventScroll: true }); return; }
  }
}

function render(...nodes) {
  replaceKeepingFocus(document.getElementById("main"), nodes.filter(Boolean));
}

function statusBadge(config) {
  const s = config.status || {};
  const labels = { running: "Running", disabled: "Disabled", plugin_not_loaded: "Plugin not loaded", failed: "Error" };
  return el("div", {},
    el("span", { class: "badge status-" + (s.state || "unknown"), "data-status": s.state }, labels[s.state] || s.state || "?"),
    s.detail ? el("p", { class: "status-detail", text: s.detail }) : null,
    healthLine(config));
}

// The configuration's health in one line, and what needs attention.
function healthLine(config) {
  const h = config.health;
  if (!h) return null;
  const facts = [];
  const waiting = h.pending + h.running + h.retrying;
  if (waiting) facts.push(`${waiting} waiting` + (h.oldest_waiting_at ? ` (oldest since ${fmtTime(h.oldest_waiting_at)})` : ""));
  if (h.failed) facts.push(`${h.failed} failed`);
  if (h.last_success_at) facts.push(`last success ${fmtTime(h.last_success_at)}`);
  if (h.last_failure_at) facts.push(`last failure ${fmtTime(h.last_failure_at)}: ${h.last_failure_error || ""}`);
  if (h.throttled_until) facts.push(`throttled until ${fmtTime(h.throttled_until)}`);
  if (h.last_poll_at) facts.push(`last poll ${fmtTime(h.last_poll_at)}` + (h.last_poll_error ? ` failed: ${h.last_poll_error}` : ""));
  const r = config.reconciliation;
  if (r && r.runs) {
    facts.push(r.last_error
      ? `last reconciliation ${fmtTime(r.last_run_at)} failed: ${r.last_error}`
      : `last reconciliation ${fmtTime(r.last_run_at)}: found ${r.last_found} ended sessions, queued ${r.last_queued}`);
  }
  return el("div", { class: "health", "data-health": config.id },
    facts.length ? el("p", { class: "muted", text: facts.join(" · ") }) : null,
    h.attention && h.attention.length
      ? el("p", { class: "attention", "data-attention": config.id },
          el("span", { class: "badge status-failed", text: "Needs attention" }), " " + h.attention.join("; "))
      : null);
}

function renderAll() {
  if (state.plugins.length === 0) {
    render(el("section", { class: "card" },
      el("h2", { text: "No plugins" }),
      el("p", { text: "Put each plugin in its own subfolder of the Plugins folder and restart the engine." })));
    return;
  }
  const known = new Set(state.plugins.map((p) => p.id));
  const orphans = state.configurations.filter((c) => !known.has(c.plugin));
  const cards = state.plugins.map((plugin) => pluginCard(plugin,
    state.configurations.filter((c) => c.plugin === plugin.id)));
  if (orphans.length) {
    cards.push(pluginCard({ id: "", name: "Configurations of missing plugins", status: "failed",
      error: "Their plugin is not in the Plugins folder.", settings: [] }, orphans));
  }
  const engines = enginesCard(state.engines);
  if (engines) cards.push(engines);
  render(...cards);
  showAttention();
}

// What needs attention, at a glance above the cards. A live region that stays on the
// page and changes only when its text does, so a refresh announces nothing new.
function showAttention() {
  const glance = document.getElementById("attention");
  const attention = state.configurations.filter((c) => c.health && c.health.attention && c.health.attention.length);
  const failedPlugins = state.plugins.filter((p) => p.status !== "loaded");
  const parts = [];
  if (attention.length) {
    parts.push(`${attention.length === 1 ? "1 configuration needs" : attention.length + " configurations need"} attention: ` +
      attention.map((c) => c.name).join(", "));
  }
  if (failedPlugins.length) {
    parts.push(`${failedPlugins.length === 1 ? "1 plugin" : failedPlugins.length + " plugins"} not loaded: ` +
      failedPlugins.map((p) => p.name).join(", "));
  }
  const text = parts.join(". ");
  if (glance.textContent !== text) glance.textContent = text;
  glance.hidden = !text;
  glance.dataset.needsAttention = String(attention.length);
}

// The engines on this engine's database: one on the embedded store, several sharing
// a PostgreSQL database.
function enginesCard(listing) {
  if (!listing || !Array.isArray(listing.engines)) return null;
  const shared = listing.store === "postgres";
  const up = (e) => e.alive ? "Up" : (e.stopped_at ? "Stopped" : "Not answering");
  const rows = listing.engines.map((e) => el("tr", { "data-engine": e.name, "data-engine-alive": String(e.alive) },
    el("td", { class: "name" }, e.name, e.this_engine ? el("span", { class: "muted", text: " (this engine)" }) : null),
    el("td", {}, el("span", { class: "badge status-" + (e.alive ? "running" : "failed") }, up(e))),
    el("td", { text: e.version }),
    el("td", { text: e.events_url }),
    el("td", { text: new Date(e.last_heartbeat_at).toLocaleString() }),
    el("td", { "data-jobs-running": e.name, text: String(e.jobs_running) }),
    el("td", { class: e.plugins_differ.length ? "error-text" : "",
      text: e.plugins_differ.length ? e.plugins_differ.join("; ") : "Same as this engine" })));
  return el("section", { class: "card", "data-engines-card": "", "aria-labelledby": "engines-heading" },
    el("div", { class: "card-head" }, el("div", {},
      el("h2", { id: "engines-heading", text: shared ? "Engines on this database" : "Engine" }),
      el("p", { class: "muted", text: shared
        ? `They share the configurations, the queue and the history; one that stops answering loses its jobs to the others after ${listing.lease_seconds} s.`
        : "The embedded store: one engine. Several engines share a PostgreSQL database (database_url)." }))),
    el("table", { class: "configs" },
      el("thead", {}, el("tr", {}, ["Engine", "State", "Version", "Event address", "Last heartbeat", "Jobs running", "Plugins"].map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, rows)));
}

function pluginCard(plugin, configs) {
  const loaded = plugin.status === "loaded";
  const header = el("div", { class: "card-head" },
    el("div", {},
      el("h2", {}, plugin.name, plugin.version ? el("span", { class: "version", text: " " + plugin.version }) : null),
      plugin.description ? el("p", { class: "muted", text: plugin.description }) : null),
    loaded ? el("button", {
      class: "primary", "data-action": "add", "data-plugin": plugin.id,
      onclick: () => openForm(plugin, null),
    }, "Add configuration") : null);
  const error = plugin.error ? el("p", { class: "error-banner", "data-plugin-error": plugin.id, text: "Not loaded: " + plugin.error }) : null;
  const body = configs.length
    ? el("table", { class: "configs" },
        el("thead", {}, el("tr", {}, el("th", { text: "Configuration" }), el("th", { text: "Status" }), el("th", { text: "Actions" }))),
        el("tbody", {}, configs.flatMap((c) => configRows(plugin, c))))
    : (loaded ? el("p", { class: "muted", text: "No configurations yet." }) : null);
  return el("section", { class: "card", "data-plugin-card": plugin.id || "missing" }, header, error, body);
}

function configRows(plugin, config) {
  const loaded = plugin.status === "loaded";
  const action = (name, label, handler, cls = "secondary") =>
    el("button", { class: cls, "data-action": name, onclick: handler }, label);
  const row = el("tr", { "data-config-id": config.id, "data-config-name": config.name },
    el("td", { class: "name", text: config.name }),
    el("td", {}, statusBadge(config)),
    el("td", {}, el("div", { class: "row-actions" },
      loaded ? action("edit", "Edit", () => openForm(plugin, config)) : null,
      action("test", "Test", () => runTest(config)),
      action("history", "History", () => openHistory({ configuration: String(config.id) })),
      loaded ? action("backfill", "Backfill", () => openBackfill(config)) : null,
      ...(plugin.actions || []).map((a) => el("button", {
        class: "secondary", "data-action": "plugin-action", "data-plugin-action": a.name, title: a.description,
        onclick: () => runPluginAction(config, a),
      }, a.label)),
      action("copy", "Copy", () => copyConfig(config)),
      config.disabled
        ? action("enable", "Enable", () => setDisabled(config, false))
        : action("disable", "Disable", () => setDisabled(config, true)),
      action("delete", "Delete", () => deleteConfig(config), "danger"))));
  const rows = [row];
  const test = state.tests[config.id];
  if (test) {
    rows.push(el("tr", { class: "test-row", "data-test-for": config.id },
      el("td", { colspan: 3 },
        el("div", { class: "test-result " + (test.ok ? "ok" : "failed") },
          el("strong", { text: (test.title || "Test") + (test.ok ? " passed" : " failed") }),
          test.progress && test.progress.length
            ? el("details", { class: "progress" }, el("summary", { text: "Progress" }), el("pre", { text: test.progress.join("\n") }))
            : null,
          el("ul", {}, (test.checks || []).map((c) =>
            el("li", { class: c.ok ? "ok" : "failed", "data-check": c.name },
              el("span", { class: "mark", text: c.ok ? "✓" : "✗" }),
              el("span", { class: "check-name", text: c.name + ": " }),
              el("span", { class: "check-detail", text: c.detail }))))))));
  }
  return rows;
}

async function runTest(config) {
  state.tests[config.id] = { ok: false, checks: [{ name: "Test", ok: false, detail: "running…" }] };
  renderAll();
  const r = await api("POST", `/api/configurations/${config.id}/test`);
  state.tests[config.id] = r.ok ? r.data : { ok: false, checks: [{ name: "Test", ok: false, detail: (r.data || {}).error || "failed" }] };
  renderAll();
}

async function confirmDialog(title, text, button, back = "Cancel") {
  const dialog = document.getElementById("confirm-dialog");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-yes").textContent = button;
  document.getElementById("confirm-no").textContent = back;
  dialog.returnValue = "";
  dialog.showModal();
  await new Promise((resolve) => dialog.addEventListener("close", resolve, { once: true }));
  return dialog.returnValue === "confirm";
}

async function runPluginAction(config, action) {
  if (action.changes_things && !(await confirmDialog(action.label, `${action.description}\n\nRun it for "${config.name}"?`, action.label))) return;
  state.tests[config.id] = { title: action.label, ok: false, checks: [{ name: action.label, ok: false, detail: "running… (this can take a few minutes)" }] };
  renderAll();
  const r = await api("POST", `/api/configurations/${config.id}/actions/${encodeURIComponent(action.name)}`);
  state.tests[config.id] = r.ok
    ? Object.assign({ title: action.label }, r.data)
    : { title: action.label, ok: false, checks: [{ name: action.label, ok: false, detail: (r.data || {}).error || "failed" }] };
  renderAll();
}

async function copyConfig(config) {
  const r = await api("POST", `/api/configurations/${config.id}/copy`);
  if (r.ok) notify(`Copied as "${r.data.name}" (disabled until you enable it).`);
  else notify((r.data || {}).error || "Copy failed", "error");
  await load();
}

async function setDisabled(config, disabled) {
  const r = await api("POST", `/api/configurations/${config.id}/${disabled ? "disable" : "enable"}`);
  if (!r.ok) notify((r.data || {}).error || "Failed", "error");
  await load();
}

async function deleteConfig(config) {
  const yes = await confirmDialog("Delete configuration",
    `Delete the configuration "${config.name}"? It cannot be recovered after deletion.`, "Delete");
  if (!yes) return;
  const r = await api("DELETE", `/api/configurations/${config.id}`);
  if (r.ok) notify(`Deleted "${config.name}".`);
  else notify((r.data || {}).error || "Delete failed", "error");
  delete state.tests[config.id];
  await load();
}

// ---- the event history ----

const HISTORY_FILTERS = { configuration: "", state: "", lsid: "", event_type: "", source: "", since: "", until: "" };
// `before`: the id the page shown starts below (keyset paging); `pages`: the ones
// before it, so that "Newest" goes back to the top.
const eventHistory = { filters: { ...HISTORY_FILTERS }, open: new Set(), before: null };
const HISTORY_PAGE = 200;

function fmtTime(t) { return t ? new Date(t).toLocaleString() : ""; }

async function openHistory(filters) {
  eventHistory.filters = { ...HISTORY_FILTERS, ...(filters || {}) };
  eventHistory.before = null;
  const select = document.getElementById("filter-configuration");
  select.replaceChildren(el("option", { value: "", text: "all" }),
    ...state.configurations.map((c) => el("option", { value: String(c.id), text: c.name })));
  select.value = eventHistory.filters.configuration;
  document.getElementById("filter-state").value = eventHistory.filters.state;
  document.getElementById("filter-lsid").value = eventHistory.filters.lsid;
  document.getElementById("filter-event-type").value = eventHistory.filters.event_type;
  document.getElementById("filter-source").value = eventHistory.filters.source;
  document.getElementById("filter-since").value = eventHistory.filters.since;
  document.getElementById("filter-until").value = eventHistory.filters.until;
  const dialog = document.getElementById("history-dialog");
  if (!dialog.open) dialog.showModal();
  await loadHistory();
}

function historyParams() {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(eventHistory.filters)) if (v) params.set(k, v);
  return params;
}

async function loadHistory() {
  const params = historyParams();
  document.getElementById("history-export").href = "/api/events/export.csv?" + params;
  params.set("limit", String(HISTORY_PAGE));
  if (eventHistory.before) params.set("before", String(eventHistory.before));
  const [r, counts] = await Promise.all([api("GET", "/api/events?" + params),
    api("GET", "/api/events/counts?" + new URLSearchParams({ configuration: eventHistory.filters.configuration }))]);
  const body = document.getElementById("history-body");
  const older = document.getElementById("history-older");
  const newest = document.getElementById("history-newest");
  newest.disabled = !eventHistory.before;
  older.disabled = true;
  if (counts.ok) {
    const states = counts.data.states || {};
    const shown = Object.entries(states).filter(([, n]) => n > 0).map(([k, n]) => `${n} ${k}`);
    document.getElementById("history-counts").textContent = shown.length ? shown.join(", ") : "No events yet.";
    document.getElementById("history-retry-all").hidden = !(eventHistory.filters.configuration && states.failed > 0);
  }
  if (!r.ok) { body.replaceChildren(el("p", { class: "error-banner", role: "alert", text: (r.data || {}).error || "Cannot load the history" })); return; }
  if (r.data.length === 0) { body.replaceChildren(el("p", { class: "muted", text: "No events match." })); return; }
  if (r.data.length === HISTORY_PAGE) {
    older.disabled = false;
    older.dataset.before = String(r.data[r.data.length - 1].id);
  }
  const rows = [];
  for (const e of r.data) {
    rows.push(el("tr", { "data-event-id": e.id },
      el("td", { text: fmtTime(e.received_at) }),
      el("td", { text: e.configuration_name || "—" }),
      el("td", {}, el("code", { text: e.event_type }), e.source === "polling" ? el("span", { class: "muted", text: " (polled)" }) : null),
      el("td", {}, el("code", { text: e.lsid || "" })),
      el("td", {}, el("span", { class: "badge " + e.state, "data-state": e.state, text: e.state })),
      el("td", { class: "num", text: String(e.attempts) }),
      el("td", { class: "detail" }, e.last_error || e.result || "",
        e.state === "retrying" && e.next_attempt_at ? el("div", { class: "muted", text: "next attempt " + fmtTime(e.next_attempt_at) }) : null),
      el("td", {}, el("div", { class: "row-actions" },
        el("button", { class: "secondary", "data-action": "attempts", onclick: () => toggleAttempts(e.id) }, "Attempts"),
        e.state === "failed" ? el("button", { class: "primary", "data-action": "retry", onclick: () => retryEvent(e.id) }, "Retry now") : null))));
    if (eventHistory.open.has(e.id)) rows.push(el("tr", { class: "attempts-row", "data-attempts-for": e.id }, el("td", { colspan: 8, id: "attempts-" + e.id })));
  }
  replaceKeepingFocus(body, [el("table", { class: "history" },
    el("thead", {}, el("tr", {}, ["Received", "Configuration", "Event", "Session", "State", "Attempts", "Detail", ""].map((h) => el("th", { text: h })))),
    el("tbody", {}, rows))]);
  for (const id of eventHistory.open) await showAttempts(id);
}

async function toggleAttempts(id) {
  if (eventHistory.open.has(id)) eventHistory.open.delete(id); else eventHistory.open.add(id);
  await loadHistory();
}

async function showAttempts(id) {
  const cell = document.getElementById("attempts-" + id);
  if (!cell) return;
  const r = await api("GET", `/api/events/${id}`);
  if (!r.ok) { cell.textContent = (r.data || {}).error || "Cannot load"; return; }
  const log = r.data.attempt_log || [];
  cell.replaceChildren(log.length
    ? el("ol", { class: "attempts" }, log.map((a) => el("li", { "data-outcome": a.outcome },
        el("strong", { text: a.outcome }), " ", el("span", { class: "muted", text: fmtTime(a.started_at) }),
        a.error_kind ? el("span", { text: ` [${a.error_kind}]` }) : null,
        a.message ? el("div", { text: a.message }) : null)))
    : el("p", { class: "muted", text: "No attempt yet." }));
}

async function retryEvent(id) {
  const r = await api("POST", `/api/events/${id}/retry`);
  if (r.ok) notify("Queued again.");
  else notify((r.data || {}).error || "Retry failed", "error");
  await loadHistory();
}

// ---- the audit log ----

const auditLog = { before: null };
const AUDIT_PAGE = 100;

async function openAudit() {
  auditLog.before = null;
  const dialog = document.getElementById("audit-dialog");
  if (!dialog.open) dialog.showModal();
  await loadAudit();
}

function auditDetail(detail) {
  const changed = detail && detail.changed;
  if (changed && typeof changed === "object") {
    const parts = Object.entries(changed).map(([key, v]) =>
      v === "changed" ? `${key}: changed` : `${key}: ${JSON.stringify(v.from)} → ${JSON.stringify(v.to)}`);
    return parts.length ? parts.join("; ") : "nothing changed";
  }
  return Object.entries(detail || {}).map(([k, v]) => `${k}: ${typeof v === "string" ? v : JSON.stringify(v)}`).join("; ");
}

async function loadAudit() {
  const params = new URLSearchParams({ limit: String(AUDIT_PAGE) });
  if (auditLog.before) params.set("before", String(auditLog.before));
  const r = await api("GET", "/api/audit?" + params);
  const body = document.getElementById("audit-body");
  const older = document.getElementById("audit-older");
  document.getElementById("audit-newest").disabled = !auditLog.before;
  older.disabled = true;
  if (!r.ok) { body.replaceChildren(el("p", { class: "error-banner", role: "alert", text: (r.data || {}).error || "Cannot load the audit log" })); return; }
  if (r.data.length === 0) { body.replaceChildren(el("p", { class: "muted", text: "No changes recorded yet." })); return; }
  if (r.data.length === AUDIT_PAGE) { older.disabled = false; older.dataset.before = String(r.data[r.data.length - 1].id); }
  body.replaceChildren(el("table", { class: "history" },
    el("thead", {}, el("tr", {}, ["When", "Client", "Change", "Configuration", "What", "Outcome"].map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", {}, r.data.map((e) => el("tr", { "data-audit-id": e.id, "data-audit-action": e.action },
      el("td", { text: fmtTime(e.at) }),
      el("td", {}, el("code", { text: e.client })),
      el("td", { text: e.action }),
      el("td", { text: e.configuration_name || (e.configuration_id ? "#" + e.configuration_id : "—") }),
      el("td", { class: "detail", text: auditDetail(e.detail) }),
      el("td", { class: e.outcome === "ok" ? "" : "error-text", text: e.outcome }))))));
}

// ---- reconciliation and backfill of one configuration ----

const bulk = { config: null, timer: null, shown: "" };

const pad2 = (n) => String(n).padStart(2, "0");

// A Date as a datetime-local input's value (local time, to the minute).
function localInputValue(d) {
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())}T${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
}

// A datetime-local value (the browser's local time) as RFC 3339 with its offset; null
// when it is not a time.
function rfc3339Local(value) {
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) return null;
  const offset = -d.getTimezoneOffset();
  const abs = Math.abs(offset);
  return `${localInputValue(d)}:${pad2(d.getSeconds())}${offset < 0 ? "-" : "+"}${pad2(Math.floor(abs / 60))}:${pad2(abs % 60)}`;
}

// Coarse on purpose: the list is a live region, read out when its text changes.
function timeLeft(seconds) {
  if (seconds === null || seconds === undefined) return "estimating the time left…";
  if (seconds < 60) return "less than a minute left";
  const minutes = Math.round(seconds / 60);
  if (minutes < 60) return `about ${minutes} min left`;
  return `about ${Math.floor(minutes / 60)} h ${minutes % 60} min left`;
}

function reconcileText(config, plugin) {
  if (!plugin || !plugin.lists_ended_sessions) return "Off: this plugin cannot list ended sessions.";
  const decl = (plugin.settings || []).find((d) => d.key === "reconcile_interval_minutes");
  const minutes = Number(config.settings.reconcile_interval_minutes ?? (decl ? decl.default : 0));
  if (!minutes) return "Off (the Reconciliation Interval is 0).";
  if ((config.status || {}).state !== "running") return `Every ${minutes} min; paused while the configuration is not running.`;
  const r = config.reconciliation;
  if (!r) return `Every ${minutes} min; it has not run yet.`;
  const last = !r.runs
    ? "It has not run yet"
    : r.last_error
    ? `Last ran ${fmtTime(r.last_run_at)} and failed: ${r.last_error}`
    : `Last ran ${fmtTime(r.last_run_at)}, found ${r.last_found} ended sessions, queued ${r.last_queued}`;
  const left = r.last_run_at + minutes * 60000 - Date.now();
  return `Every ${minutes} min. ${last}; next in about ${left > 60000 ? Math.round(left / 60000) + " min" : "a minute"}.`;
}

async function openBackfill(config) {
  bulk.config = config;
  bulk.shown = "";
  const plugin = state.plugins.find((p) => p.id === config.plugin);
  document.getElementById("backfill-title").textContent = `Reconciliation and backfill — ${config.name}`;
  document.getElementById("backfill-unsupported").hidden = Boolean(plugin && plugin.lists_ended_sessions);
  document.getElementById("reconcile-now").hidden = !(plugin && plugin.lists_ended_sessions);
  document.getElementById("backfill-error").hidden = true;
  document.getElementById("backfill-list").replaceChildren();
  const since = document.getElementById("backfill-since");
  if (!since.value) since.value = localInputValue(new Date(Date.now() - 86400000));
  history.replaceState(null, "", `#backfill/${config.id}`);
  const dialog = document.getElementById("backfill-dialog");
  if (!dialog.open) dialog.showModal();
  await refreshBulk();
}

function bulkError(message) {
  const banner = document.getElementById("backfill-error");
  banner.textContent = message;
  banner.hidden = !message;
}

// Reloads the configuration's reconciliation and backfills; again every second while
// one of them runs (the page has no push channel).
async function refreshBulk() {
  clearTimeout(bulk.timer);
  const config = bulk.config;
  const dialog = document.getElementById("backfill-dialog");
  if (!config || !dialog.open) return;
  const [list, current] = await Promise.all([
    api("GET", `/api/configurations/${config.id}/backfills`), api("GET", `/api/configurations/${config.id}`),
  ]);
  if (bulk.config !== config || !dialog.open) return;
  if (current.ok) {
    const plugin = state.plugins.find((p) => p.id === current.data.plugin);
    document.getElementById("reconcile-text").textContent = reconcileText(current.data, plugin);
  }
  if (!list.ok) { bulkError((list.data || {}).error || "Cannot load the backfills"); return; }
  renderBackfills(list.data);
  if (list.data.some((b) => b.state === "running")) bulk.timer = setTimeout(refreshBulk, 1000);
}

function meter(id, label, value, max, text) {
  return el("div", { class: "meter" },
    el("label", { for: id, text: label }),
    el("progress", { id, max, value }),
    el("span", { class: "meter-text", text }));
}

function backfillItem(b) {
  const running = b.state === "running";
  const processed = b.imported + b.skipped + b.failed + b.already_imported;
  const labels = { running: "Running", done: "Done", failed: "Failed", cancelled: "Cancelled" };
  const counts = [["found", "Found", b.found], ["imported", "Imported", b.imported], ["skipped", "Skipped", b.skipped],
    ["failed", "Failed", b.failed], ["already_imported", "Already imported", b.already_imported], ["queued", "Queued", b.queued]];
  return el("article", { class: "backfill", "data-backfill-id": b.id, "data-state": b.state },
    el("div", { class: "backfill-head" },
      el("span", { class: "badge " + b.state, "data-backfill-state": b.state, text: labels[b.state] || b.state }),
      el("span", { class: "range", text: `Sessions ended from ${fmtTime(b.since * 1000)} until ${fmtTime(b.until * 1000)}` }),
      running ? el("button", { class: "danger", "data-action": "cancel-backfill", onclick: () => cancelBackfill(b) }, "Cancel") : null),
    running && b.listed < 1
      ? meter(`backfill-${b.id}-listed`, "Listing sessions", b.listed, 1, `${Math.floor(b.listed * 100)}%`) : null,
    meter(`backfill-${b.id}-processed`, "Processed", processed, Math.max(b.found, 1), `${processed} of ${b.found}`),
    el("dl", { class: "counts" }, counts.map(([key, label, n]) =>
      el("div", { "data-count": key }, el("dt", { text: label }), el("dd", { text: String(n) })))),
    running ? el("p", { class: "muted", "data-eta": "", text: timeLeft(b.eta_seconds) }) : null,
    b.error ? el("p", { class: "status-detail", "data-backfill-error": "", text: b.error }) : null);
}

function renderBackfills(list) {
  const nodes = list.length
    ? list.map(backfillItem)
    : [el("p", { class: "muted", text: "No backfill yet." })];
  // Replaced only when what it says changes: a live region is read out each time.
  const text = nodes.map((n) => n.textContent).join("|");
  if (text === bulk.shown) return;
  bulk.shown = text;
  document.getElementById("backfill-list").replaceChildren(...nodes);
}

async function startBackfill(event) {
  event.preventDefault();
  const config = bulk.config;
  const sinceInput = document.getElementById("backfill-since");
  const untilInput = document.getElementById("backfill-until");
  if (!sinceInput.value) { bulkError("Choose when the sessions to import ended from."); sinceInput.focus(); return; }
  const body = { since: rfc3339Local(sinceInput.value) };
  if (untilInput.value) body.until = rfc3339Local(untilInput.value);
  if (body.since === null || body.until === null) { bulkError("The dates are not valid."); return; }
  const button = document.getElementById("backfill-start");
  button.disabled = true;
  const r = await api("POST", `/api/configurations/${config.id}/backfill`, body);
  button.disabled = false;
  if (!r.ok) { bulkError((r.data || {}).error || "Starting the backfill failed"); return; }
  bulkError("");
  notify("Backfill started.");
  await refreshBulk();
}

async function cancelBackfill(b) {
  const yes = await confirmDialog("Cancel backfill",
    "Cancel this backfill? Nothing more is listed, and the sessions it queued that are not processed yet are marked failed (each can be retried from the event history).",
    "Cancel backfill", "Keep it running");
  if (!yes) return;
  const r = await api("DELETE", `/api/backfills/${b.id}`);
  if (r.ok) notify("Backfill cancelled.");
  else notify((r.data || {}).error || "Cancel failed", "error");
  await refreshBulk();
}

async function reconcileNow() {
  const config = bulk.config;
  const button = document.getElementById("reconcile-now");
  button.disabled = true;
  const r = await api("POST", `/api/configurations/${config.id}/reconcile`);
  button.disabled = false;
  if (!r.ok) notify((r.data || {}).error || "Reconciliation failed", "error");
  else if (!r.data.ok) notify(r.data.error, "error");
  else notify(`Reconciled: found ${r.data.found} ended sessions, queued ${r.data.queued}.`);
  await refreshBulk();
}

// ---- where alerts go and when ----

const REFRESH_MS = 10000;
const ALERT_IDS = { field: "a-", error: "aerr-" };
const alerts = { fields: [], dirty: false };

async function openAlerts() {
  const r = await api("GET", "/api/alerts");
  if (!r.ok) { notify((r.data || {}).error || "Cannot load the alert settings", "error"); return; }
  showAlertSettings(r.data);
  document.getElementById("alerts-test-result").replaceChildren();
  history.replaceState(null, "", "#alerts");
  const dialog = document.getElementById("alerts-dialog");
  if (!dialog.open) dialog.showModal();
}

function alertDecl(f) {
  const type = { number: "decimal", text: "text", choice: "choice", secret: "secret" }[f.kind] || "text";
  return { key: f.key, section: f.section, label: f.label, help: f.help, default: f.default, type, clearable: true,
    allowed: (f.choices || []).map((c) => ({ value: c, label: c })) };
}

function showAlertSettings(data) {
  alerts.fields = data.fields;
  alerts.dirty = false;
  const values = data.settings || {};
  const sets = sections(data.fields.map(alertDecl), (decl) => {
    const v = values[decl.key];
    return typeof v === "number" ? String(v) : v;
  }, ALERT_IDS);
  document.getElementById("alerts-fields").replaceChildren(...sets);
  document.getElementById("alerts-error").hidden = true;
  showOpenAlerts(data.open || []);
}

// The alerts open now, one entry per problem with what each channel did.
function showOpenAlerts(open) {
  const target = document.getElementById("alerts-open");
  if (!open.length) {
    target.replaceChildren(el("p", { class: "muted", "data-open-alerts": "0", text: "No alert is open: nothing needs attention." }));
    return;
  }
  const bySubject = new Map();
  for (const a of open) {
    if (!bySubject.has(a.subject)) bySubject.set(a.subject, []);
    bySubject.get(a.subject).push(a);
  }
  target.replaceChildren(el("ul", { class: "open-alerts", "data-open-alerts": String(bySubject.size) },
    [...bySubject].map(([subject, list]) => el("li", { "data-alert-subject": subject },
      el("strong", { text: list[0].title }),
      el("span", { class: "muted", text: ` since ${fmtTime(list[0].since)}` }),
      el("div", { text: list[0].reasons.join("; ") }),
      el("div", { class: "muted" }, list.map((a) => a.last_error
        ? el("span", { class: "error-text", "data-alert-channel": a.channel, text: `${a.channel}: not delivered (${a.last_error}) ` })
        : el("span", { "data-alert-channel": a.channel, text: a.sent_at ? `${a.channel}: sent ${fmtTime(a.sent_at)} ` : `${a.channel}: not sent yet ` })))))));
}

function collectAlerts() {
  const form = document.getElementById("alerts-form");
  const settings = {};
  for (const f of alerts.fields) {
    const input = form.querySelector(`[name="${CSS.escape(f.key)}"]`);
    if (!input) continue;
    if (f.kind === "secret") {
      const clear = form.querySelector(`[name="${CSS.escape(f.key + "--clear")}"]`);
      if (clear && clear.checked) settings[f.key] = "";
      else if (input.value !== "") settings[f.key] = input.value; // empty keeps the saved one
    } else settings[f.key] = input.value.trim();
  }
  return settings;
}

async function saveAlerts(event) {
  event.preventDefault();
  const form = document.getElementById("alerts-form");
  const banner = document.getElementById("alerts-error");
  const r = await api("PUT", "/api/alerts", { settings: collectAlerts() });
  if (r.status === 422) { showErrors(r.data.errors, form, banner, ALERT_IDS); return; }
  if (!r.ok) {
    banner.textContent = (r.data || {}).error || "Saving failed";
    banner.hidden = false;
    return;
  }
  showAlertSettings(r.data);
  notify("Alert settings saved.");
  document.getElementById("alerts-save").focus();
}

async function testAlert() {
  const result = document.getElementById("alerts-test-result");
  if (alerts.dirty) {
    result.replaceChildren(el("p", { class: "error-text", text: "Save the changes first: the test alert uses the saved settings." }));
    return;
  }
  const button = document.getElementById("alerts-test");
  button.disabled = true;
  result.replaceChildren(el("p", { class: "muted", text: "Sending…" }));
  const r = await api("POST", "/api/alerts/test");
  button.disabled = false;
  button.focus();
  const deliveries = (r.data || {}).deliveries;
  if (!Array.isArray(deliveries)) {
    result.replaceChildren(el("p", { class: "error-text", "data-test-alert": "failed", text: (r.data || {}).error || "The test alert failed" }));
    return;
  }
  result.replaceChildren(el("ul", { class: "test-result " + (r.ok ? "ok" : "failed"), "data-test-alert": r.ok ? "ok" : "failed" },
    deliveries.map((d) => el("li", { class: d.ok ? "ok" : "failed", "data-delivery": d.channel },
      el("span", { class: "mark", "aria-hidden": "true", text: d.ok ? "✓" : "✗" }),
      el("span", { class: "check-name", text: (d.channel === "email" ? "E-mail" : "Webhook") + ": " }),
      el("span", { text: d.ok ? "delivered" : "not delivered: " + d.error })))));
}

// ---- the configuration form, built from the plugin's declarations ----

// `ids.field` and `ids.error` prefix the input's and its error's ids: "f-"/"err-" on
// the configuration form, "a-"/"aerr-" on the alert settings.
const CONFIG_IDS = { field: "f-", error: "err-" };

function field(decl, value, ids = CONFIG_IDS) {
  const id = ids.field + decl.key;
  const help = decl.help ? el("p", { class: "help", id: id + "-help", text: decl.help }) : null;
  const error = el("p", { class: "field-error", id: ids.error + decl.key, hidden: true });
  const label = el("label", { for: id }, decl.label, decl.required ? el("span", { class: "req", text: " *" }) : null);
  const input = fieldInput(decl, value, id);
  // The help is the input's description; showErrors puts the error before it.
  if (help) input.setAttribute("aria-describedby", help.id);
  if (decl.type === "bool") {
    return el("div", { class: "field check", "data-field": decl.key },
      el("div", { class: "check-line" }, input, label), help, error);
  }
  if (decl.type === "multi_choice") {
    label.id = id + "-label";
    input.setAttribute("aria-labelledby", label.id);
  }
  const clear = decl.type === "secret" && value && value.set && decl.clearable
    ? el("label", { class: "option clear-secret" },
        el("input", { type: "checkbox", name: decl.key + "--clear", id: id + "-clear" }), "Remove the saved value")
    : null;
  return el("div", { class: "field", "data-field": decl.key }, label, input, clear, help, error);
}

function fieldInput(decl, value, id) {
  switch (decl.type) {
    case "bool":
      return el("input", { type: "checkbox", id, name: decl.key, checked: value === true });
    case "integer":
      return el("input", { type: "number", id, name: decl.key, step: 1, min: decl.min ?? undefined, max: decl.max ?? undefined,
        value: value ?? "" });
    case "decimal":
      return el("input", { type: "text", inputmode: "decimal", id, name: decl.key, value: value ?? "",
        placeholder: decl.default || undefined });
    case "secret": {
      const set = Boolean(value && value.set);
      return el("input", { type: "password", id, name: decl.key, autocomplete: "new-password",
        placeholder: set ? "•••••••• (saved; leave empty to keep)" : "", "data-secret-set": String(set) });
    }
    case "choice":
      return el("select", { id, name: decl.key },
        decl.required ? null : el("option", { value: "", text: decl.default ? `default (${decl.default})` : "" }),
        decl.allowed.map((c) => el("option", { value: c.value, selected: c.value === value, text: c.label })));
    case "multi_choice": {
      const chosen = new Set(Array.isArray(value) ? value : []);
      return el("div", { class: "multi", id, role: "group" },
        decl.allowed.length ? decl.allowed.map((c) => el("label", { class: "option" },
          el("input", { type: "checkbox", name: decl.key, value: c.value, checked: chosen.has(c.value) }), c.label))
          : el("span", { class: "muted", text: "(none offered by this plugin)" }));
    }
    default:
      return el("input", { type: "text", id, name: decl.key, value: value ?? "", spellcheck: "false",
        placeholder: decl.default || undefined });
  }
}

// The fields of `decls`, one fieldset per section in the order they first appear.
function sections(decls, valueOf, ids = CONFIG_IDS) {
  const bySection = new Map();
  for (const decl of decls) {
    const name = decl.section || "Settings";
    if (!bySection.has(name)) bySection.set(name, []);
    bySection.get(name).push(field(decl, valueOf(decl), ids));
  }
  return [...bySection].map(([name, fields]) =>
    el("fieldset", { class: "section" }, el("legend", { text: name }), fields));
}

function openForm(plugin, config) {
  state.editing = { plugin, config };
  const values = config ? config.settings : {};
  document.getElementById("form-title").textContent =
    (config ? "Edit configuration" : "Add configuration") + " — " + plugin.name;
  const top = el("fieldset", { class: "section" }, el("legend", { text: "Configuration" }),
    field({ key: "name", label: "Plugin Configuration Name", type: "text", required: true,
      help: "A descriptive name: one plugin can have many configurations, e.g. one per environment." }, config ? config.name : ""),
    field({ key: "disabled", label: "Disabled", type: "bool", help: "A disabled configuration processes no events." },
      config ? config.disabled : false));
  const fieldsets = sections(plugin.settings, (decl) => (config ? values[decl.key] : decl.default));
  document.getElementById("form-fields").replaceChildren(top, ...fieldsets);
  document.getElementById("form-error").hidden = true;
  history.replaceState(null, "", config ? `#edit/${config.id}` : `#add/${encodeURIComponent(plugin.id)}`);
  document.getElementById("form-dialog").showModal();
}

function collect(plugin) {
  const form = document.getElementById("config-form");
  const settings = {};
  for (const decl of plugin.settings) {
    const inputs = form.querySelectorAll(`[name="${CSS.escape(decl.key)}"]`);
    switch (decl.type) {
      case "bool": settings[decl.key] = inputs[0].checked; break;
      case "integer": {
        const text = inputs[0].value.trim();
        settings[decl.key] = text === "" ? null : (Number.isInteger(Number(text)) ? Number(text) : text);
        break;
      }
      case "secret":
        if (inputs[0].value !== "") settings[decl.key] = inputs[0].value; // empty keeps the saved one
        break;
      case "multi_choice":
        settings[decl.key] = [...inputs].filter((i) => i.checked).map((i) => i.value);
        break;
      default: settings[decl.key] = inputs[0].value;
    }
  }
  return {
    plugin: plugin.id,
    name: form.querySelector('[name="name"]').value,
    disabled: form.querySelector('[name="disabled"]').checked,
    settings,
  };
}

// Shows each error under its input, ties it to the input (aria-invalid, and first in
// aria-describedby so a screen reader reads it before the help), puts the rest in
// the banner and moves the focus to the first field to fix.
function showErrors(errors, form = document.getElementById("config-form"),
  banner = document.getElementById("form-error"), ids = CONFIG_IDS) {
  form.querySelectorAll(".field-error").forEach((e) => { e.hidden = true; e.textContent = ""; });
  form.querySelectorAll(".field.invalid").forEach((e) => e.classList.remove("invalid"));
  form.querySelectorAll("[aria-invalid]").forEach((input) => {
    input.removeAttribute("aria-invalid");
    const rest = (input.getAttribute("aria-describedby") || "").split(" ").filter((id) => id && !id.startsWith(ids.error));
    if (rest.length) input.setAttribute("aria-describedby", rest.join(" "));
    else input.removeAttribute("aria-describedby");
  });
  const unplaced = [];
  for (const [key, message] of Object.entries(errors || {})) {
    const target = document.getElementById(ids.error + key);
    if (target && form.contains(target)) {
      target.textContent = message;
      target.hidden = false;
      target.closest(".field").classList.add("invalid");
      const input = document.getElementById(ids.field + key);
      if (input) {
        input.setAttribute("aria-invalid", "true");
        const rest = (input.getAttribute("aria-describedby") || "").split(" ").filter(Boolean);
        input.setAttribute("aria-describedby", [target.id, ...rest].join(" "));
      }
    } else unplaced.push(`${key}: ${message}`);
  }
  banner.textContent = "Please correct the marked fields." + (unplaced.length ? " " + unplaced.join("; ") : "");
  banner.hidden = false;
  const first = form.querySelector("[aria-invalid=true]");
  if (first) first.focus();
}

async function save(event) {
  event.preventDefault();
  const { plugin, config } = state.editing;
  const body = collect(plugin);
  const r = config
    ? await api("PUT", `/api/configurations/${config.id}`, body)
    : await api("POST", "/api/configurations", body);
  if (r.status === 422) { showErrors(r.data.errors); return; }
  if (r.status === 409) { showErrors({ name: r.data.error }); return; }
  if (!r.ok) {
    const banner = document.getElementById("form-error");
    banner.textContent = (r.data || {}).error || "Saving failed";
    banner.hidden = false;
    return;
  }
  document.getElementById("form-dialog").close();
  delete state.tests[r.data.id];
  notify(`Saved "${r.data.name}".`);
  await load();
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("form-dialog").addEventListener("close", () => history.replaceState(null, "", location.pathname));
  document.getElementById("config-form").addEventListener("submit", save);
  document.getElementById("open-history").addEventListener("click", () => openHistory({}));
  document.getElementById("history-close").addEventListener("click", () => document.getElementById("history-dialog").close());
  document.getElementById("history-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    eventHistory.filters = {
      configuration: document.getElementById("filter-configuration").value,
      state: document.getElementById("filter-state").value,
      lsid: document.getElementById("filter-lsid").value.trim(),
      event_type: document.getElementById("filter-event-type").value.trim(),
      source: document.getElementById("filter-source").value,
      since: document.getElementById("filter-since").value,
      until: document.getElementById("filter-until").value,
    };
    eventHistory.before = null;
    loadHistory();
  });
  document.getElementById("history-older").addEventListener("click", (event) => {
    eventHistory.before = Number(event.currentTarget.dataset.before);
    loadHistory().then(() => document.getElementById("history-dialog").querySelector("h2").focus());
  });
  document.getElementById("history-newest").addEventListener("click", () => {
    eventHistory.before = null;
    loadHistory();
  });
  document.getElementById("retry-all").addEventListener("click", async () => {
    const id = eventHistory.filters.configuration;
    const config = state.configurations.find((c) => String(c.id) === id);
    if (!config || !(await confirmDialog("Retry all failed",
      `Queue every failed event of "${config.name}" again?`, "Retry all"))) return;
    const r = await api("POST", `/api/configurations/${id}/retry-failed`);
    if (r.ok) notify(`${r.data.retried} failed event${r.data.retried === 1 ? "" : "s"} queued again.`);
    else notify((r.data || {}).error || "Retry failed", "error");
    await loadHistory();
  });
  document.getElementById("open-audit").addEventListener("click", () => openAudit());
  document.getElementById("audit-close").addEventListener("click", () => document.getElementById("audit-dialog").close());
  document.getElementById("audit-older").addEventListener("click", (event) => {
    auditLog.before = Number(event.currentTarget.dataset.before);
    loadAudit();
  });
  document.getElementById("audit-newest").addEventListener("click", () => { auditLog.before = null; loadAudit(); });
  document.getElementById("form-cancel").addEventListener("click", () => document.getElementById("form-dialog").close());
  document.getElementById("open-alerts").addEventListener("click", () => openAlerts());
  document.getElementById("alerts-form").addEventListener("submit", saveAlerts);
  document.getElementById("alerts-form").addEventListener("input", () => { alerts.dirty = true; });
  document.getElementById("alerts-test").addEventListener("click", testAlert);
  document.getElementById("alerts-close").addEventListener("click", () => document.getElementById("alerts-dialog").close());
  document.getElementById("alerts-dialog").addEventListener("close", () => history.replaceState(null, "", location.pathname));
  document.getElementById("backfill-form").addEventListener("submit", startBackfill);
  document.getElementById("reconcile-now").addEventListener("click", reconcileNow);
  document.getElementById("backfill-close").addEventListener("click", () => document.getElementById("backfill-dialog").close());
  document.getElementById("backfill-dialog").addEventListener("close", () => {
    clearTimeout(bulk.timer);
    bulk.config = null;
    history.replaceState(null, "", location.pathname);
  });
  load();
  // The home page follows the engine's state while nothing is open over it.
  setInterval(() => {
    if (document.hidden || document.querySelector("dialog[open]") || load.running) return;
    load.running = true;
    load().finally(() => { load.running = false; });
  }, REFRESH_MS);
});
