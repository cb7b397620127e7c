// The Sluice console: plain JavaScript over the HTTP API (/api/v1), live through one
// server-sent event stream. Every page has its own URL: /, /pipelines/NAME, /executions/ID,
// /plugins.
"use strict";

const main = document.getElementById("main");
const ICON = { Succeeded: "✓", Failed: "✗", InProgress: "●", NotStarted: "○", Stopping: "◼", Stopped: "◼",
  Abandoned: "✗", Skipped: "–", Superseded: "↷" };

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function status(s) {
  // The word is always shown: status is never told by colour alone.
  return h("span", { class: `status s-${s}`, "data-status": s }, h("span", { "aria-hidden": "true" }, ICON[s] || "?"), s);
}

function alertBox(message) {
  const box = document.getElementById("alert");
  box.textContent = message || "";
  box.hidden = !message;
}

// With `sluice serve --auth`, every call carries the visitor's token, kept for this tab only;
// event streams and download links carry it as `access_token` (they cannot send headers).
function token() { return sessionStorage.getItem("sluice-token") || ""; }
function authorized(headers) { const t = token(); if (t) headers.authorization = `Bearer ${t}`; return headers; }
function withToken(url) {
  const t = token();
  return t ? `${url}${url.includes("?") ? "&" : "?"}access_token=${encodeURIComponent(t)}` : url;
}
function askToken() {
  const t = prompt("This Sluice service needs a token (`sluice token create …`):");
  if (t && t.trim()) { sessionStorage.setItem("sluice-token", t.trim()); location.reload(); }
}

async function api(method, path, body) {
  const init = { method, headers: authorized({}) };
  if (body !== undefined) { init.body = JSON.stringify(body); init.headers["content-type"] = "application/json"; }
  const r = await fetch(`/api/v1${path}`, init);
  if (r.status === 401) askToken();
  const text = await r.text();
  let value = null;
  try { value = text ? JSON.parse(text) : null; } catch { value = text; }
  if (!r.ok) {
    const e = value && value.error ? value.error : { message: `${r.status} ${text}` };
    const problems = (e.problems || []).map(p => `\n${p.file}:${p.line}:${p.column}: ${p.message}`).join("");
    throw new Error(`${e.message}${problems}`);
  }
  return value;
}

async function act(what) {
  try { alertBox(""); await what(); await refresh(); } catch (e) { alertBox(e.message); }
}

function duration(a) {
  if (!a.started_at) return "";
  const end = a.finished_at ? Date.parse(a.finished_at) : Date.now();
  const ms = Math.max(0, end - Date.parse(a.started_at));
  return ms < 1000 ? `${ms} ms` : ms < 60000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.floor(ms / 60000)} min ${Math.round(ms / 1000) % 60} s`;
}

const when = t => (t ? new Date(t).toLocaleString() : "");
const enc = encodeURIComponent;

function parseVars(text) {
  const vars = {};
  for (const line of text.split("\n").map(l => l.trim()).filter(Boolean)) {
    const i = line.indexOf("=");
    if (i < 1) throw new Error(`variables are KEY=VALUE, one per line: ${line}`);
    vars[line.slice(0, i).trim()] = line.slice(i + 1);
  }
  return vars;
}

function startForm(name) {
  const vars = h("textarea", { rows: 2, cols: 30, "aria-label": `Variables for ${name} (KEY=VALUE per line)`, placeholder: "KEY=VALUE per line", name: "variables" });
  return h("form", { class: "inline", "data-start": name, onsubmit: e => {
    e.preventDefault();
    act(async () => {
      const r = await api("POST", `/pipelines/${enc(name)}/executions`, { variables: parseVars(vars.value), started_by: "console" });
      location.href = `/executions/${enc(r.execution_id)}`;
    });
  } }, vars, h("button", { class: "primary", type: "submit" }, "Start"));
}

// ---- Registering a pipeline with its folder ----

const utf8 = new TextEncoder();

function octal(buf, offset, length, n) {
  buf.set(utf8.encode(n.toString(8).padStart(length - 1, "0")), offset);
  buf[offset + length - 1] = 0;
}

// A ustar archive of `files` ([{path, bytes}]): what `POST /api/v1/bundles` takes.
function tarOf(files) {
  const parts = [];
  for (const f of files) {
    const header = new Uint8Array(512);
    let name = utf8.encode(f.path), prefix = new Uint8Array(0);
    if (name.length > 100) {
      const cut = f.path.lastIndexOf("/", 155);
      if (cut < 1 || utf8.encode(f.path.slice(cut + 1)).length > 100) throw new Error(`path too long for the archive: ${f.path}`);
      prefix = utf8.encode(f.path.slice(0, cut));
      name = utf8.encode(f.path.slice(cut + 1));
    }
    header.set(name, 0);
    octal(header, 100, 8, 0o644);
    octal(header, 108, 8, 0);
    octal(header, 116, 8, 0);
    octal(header, 124, 12, f.bytes.length);
    octal(header, 136, 12, Math.floor(Date.now() / 1000));
    header.fill(32, 148, 156);
    header[156] = 48; // a regular file
    header.set(utf8.encode("ustar\u000000"), 257);
    header.set(prefix, 345);
    octal(header, 148, 7, header.reduce((a, b) => a + b, 0));
    parts.push(header, f.bytes, new Uint8Array((512 - (f.bytes.length % 512)) % 512));
  }
  parts.push(new Uint8Array(1024));
  return new Blob(parts, { type: "application/x-tar" });
}

async function send(method, path, body, type) {
  const r = await fetch(`/api/v1${path}`, { method, body, headers: authorized({ "content-type": type }) });
  if (r.status === 401) askToken();
  const text = await r.text();
  let value = null;
  try { value = JSON.parse(text); } catch { value = text; }
  if (!r.ok) {
    const e = value && value.error ? value.error : { message: `${r.status} ${text}` };
    const problems = (e.problems || []).map(p => `\n${p.file}:${p.line}:${p.column}: ${p.message}`).join("");
    throw new Error(`${e.message}${problems}`);
  }
  return value;
}

// The folder picker: the whole folder is uploaded (the engine's own `.sluice/` in it left
// out), then the chosen pipeline file registered with it, so its relative paths resolve there.
function registerForm() {
  let files = [];
  const file = h("select", { name: "file", "aria-label": "Pipeline file" });
  const folder = h("input", { type: "file", name: "folder", webkitdirectory: true, multiple: true, "aria-label": "Pipeline folder", onchange: () => {
    // Paths are relative to the chosen folder (the browser puts its name first).
    files = [...folder.files].map(f => ({ file: f, path: f.webkitRelativePath.split("/").slice(1).join("/") || f.name }))
      .filter(f => f.path && !f.path.startsWith(".sluice/"));
    const yamls = files.map(f => f.path).filter(p => /\.ya?ml$/.test(p) && !p.includes("/"));
    file.replaceChildren(...yamls.map(p => h("option", { value: p, selected: p === "pipeline.yaml" }, p)));
  } });
  return h("form", { "data-register": "", onsubmit: e => {
    e.preventDefault();
    act(async () => {
      if (!files.length) throw new Error("choose the pipeline's folder first");
      const chosen = files.find(f => f.path === file.value);
      if (!chosen) throw new Error("the folder has no pipeline file (a .yaml at its top)");
      const yaml = await chosen.file.text();
      const named = /^name:\s*["']?([A-Za-z0-9._-]+)/m.exec(yaml);
      if (!named) throw new Error(`${chosen.path} has no \`name:\``);
      const entries = await Promise.all(files.map(async f => ({ path: f.path, bytes: new Uint8Array(await f.file.arrayBuffer()) })));
      const bundle = await send("POST", "/bundles", tarOf(entries), "application/x-tar");
      await send("PUT", `/pipelines/${enc(named[1])}?bundle=${enc(bundle.digest)}`, yaml, "application/yaml");
      location.href = `/pipelines/${enc(named[1])}`;
    });
  } }, h("label", {}, "Folder ", folder), " ", h("label", {}, "Pipeline file ", file), " ",
    h("button", { class: "primary", type: "submit" }, "Register"));
}

// ---- Pages ----

async function pipelinesPage() {
  document.title = "Pipelines · Sluice";
  const list = await api("GET", "/pipelines");
  const rows = await Promise.all(list.map(async p => {
    const page = await api("GET", `/executions?pipeline=${enc(p.name)}&limit=1`);
    const last = page.items[0];
    let stages = "no executions yet";
    if (last) {
      const exec = await api("GET", `/executions/${enc(last.execution_id)}`);
      stages = h("span", {}, exec.stages.map(s => h("span", { style: "margin-right:.8rem" }, `${s.name} `, status(s.status))));
    }
    return h("tr", {},
      h("td", {}, h("a", { href: `/pipelines/${enc(p.name)}` }, p.name), h("div", { class: "muted" }, `v${p.version}`)),
      h("td", {}, last ? h("a", { href: `/executions/${enc(last.execution_id)}` }, status(last.status)) : ""),
      h("td", {}, stages),
      h("td", {}, startForm(p.name)));
  }));
  return [h("h1", {}, "Pipelines"),
    list.length ? h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Pipeline"), h("th", {}, "Last execution"), h("th", {}, "Stages"), h("th", {}, ""))), h("tbody", {}, rows))
      : h("p", {}, "No pipeline is registered yet."),
    h("h2", {}, "Register a pipeline"),
    h("p", { class: "muted" }, "Choose the folder that holds the pipeline file and what it refers to (its sources, plugins): the whole folder is uploaded, and the pipeline's relative paths resolve inside it."),
    registerForm()];
}

function transitionRow(pipeline, stage, lane) {
  const disabled = lane && lane.disabled;
  const waiting = (lane && lane.waiting) || [];
  const reason = h("input", { "aria-label": `Reason to disable the transition into ${stage}`, placeholder: "reason", name: "reason" });
  return h("div", { class: `transition${disabled ? " disabled" : ""}`, "data-transition": stage },
    h("span", {}, disabled ? `⛔ transition into ${stage} disabled by ${disabled.by}: ${disabled.reason}` : `↓ transition into ${stage} enabled`),
    waiting.length ? h("span", { class: "muted" }, `waiting: ${waiting.join(", ")}`) : "",
    disabled
      ? h("button", { onclick: () => act(() => api("POST", `/pipelines/${enc(pipeline)}/transitions/${enc(stage)}/enable`, {})) }, "Enable")
      : h("form", { class: "inline", onsubmit: e => { e.preventDefault(); act(() => api("POST", `/pipelines/${enc(pipeline)}/transitions/${enc(stage)}/disable`, { reason: reason.value, by: "console" })); } },
          reason, h("button", { type: "submit" }, "Disable")));
}

function groups(actions) {
  const byOrder = new Map();
  for (const a of actions) { if (!byOrder.has(a.run_order)) byOrder.set(a.run_order, []); byOrder.get(a.run_order).push(a); }
  return [...byOrder.keys()].sort((x, y) => x - y).map(k => byOrder.get(k));
}

function stageColumn(exec, lanes, renderAction, pipeline) {
  const out = [];
  exec.stages.forEach((s, i) => {
    if (i > 0 && pipeline) out.push(transitionRow(pipeline, s.name, lanes && lanes.stages[s.name]));
    out.push(h("section", { class: "stage", "data-stage": s.name, "aria-label": `Stage ${s.name}` },
      h("header", {}, h("h3", {}, s.name), status(s.status), h("span", { class: "muted" }, duration(s)), ...(renderAction.stageTools ? renderAction.stageTools(s) : [])),
      groups(s.actions).map(g => h("div", { class: "group" }, g.map(a => renderAction(s, a))))));
  });
  return h("div", { class: "stages" }, out);
}

async function pipelinePage(name) {
  document.title = `${name} · Sluice`;
  const [p, lanes] = await Promise.all([api("GET", `/pipelines/${enc(name)}`), api("GET", `/pipelines/${enc(name)}/state`)]);
  const filter = new URLSearchParams(location.search).get("status") || "";
  const history = await api("GET", `/executions?pipeline=${enc(name)}&limit=50${filter ? `&status=${enc(filter)}` : ""}`);
  const latest = (await api("GET", `/executions?pipeline=${enc(name)}&limit=1`)).items[0];
  const exec = latest ? await api("GET", `/executions/${enc(latest.execution_id)}`) : null;
  const actionBox = (s, a) => h("div", { class: "action", "data-action": `${s.name}/${a.name}` },
    h("div", { class: "name" }, a.name), status(a.status), " ", h("span", { class: "muted" }, duration(a)),
    a.summary ? h("div", { class: "muted" }, a.summary) : "");
  const select = h("select", { "aria-label": "Filter executions by status", onchange: e => { location.search = e.target.value ? `?status=${e.target.value}` : ""; } },
    ["", "InProgress", "Succeeded", "Failed", "Stopped", "Superseded"].map(v => h("option", { value: v, selected: v === filter }, v || "all statuses")));
  return [
    h("h1", {}, name, " ", h("span", { class: "muted" }, `v${p.version} · ${lanes.mode || ""}`)),
    startForm(name),
    h("h2", {}, exec ? h("span", {}, "Latest execution ", h("a", { href: `/executions/${enc(exec.execution_id)}` }, exec.execution_id)) : "No execution yet"),
    exec ? stageColumn(exec, lanes, actionBox, name) : h("pre", { class: "yaml" }, p.yaml),
    h("h2", {}, "History"), select,
    h("table", {}, h("thead", {}, h("tr", {}, ["Execution", "Status", "Started", "Trigger", "Waiting"].map(t => h("th", {}, t)))),
      h("tbody", {}, history.items.map(e => h("tr", {},
        h("td", {}, h("a", { href: `/executions/${enc(e.execution_id)}` }, e.execution_id)), h("td", {}, status(e.status)),
        h("td", {}, when(e.started_at)), h("td", {}, e.trigger || ""), h("td", {}, (e.waiting || []).join(", "))))))];
}

let openLog = null; // {stage, action}

function approvalBox(exec, s, a) {
  const by = h("input", { "aria-label": "Your name", placeholder: "your name", name: "by", required: true });
  const summary = h("input", { "aria-label": "Summary", placeholder: "summary", name: "summary", size: 30 });
  const decide = approved => act(() => api("POST", `/executions/${enc(exec.execution_id)}/actions/${enc(s.name)}/${enc(a.name)}/${approved ? "approve" : "reject"}`,
    { by: by.value, summary: summary.value || undefined }));
  const kept = a.kept || {};
  return h("div", { class: "approval", "data-approval": `${s.name}/${a.name}` },
    h("strong", {}, "Waiting for approval"), kept.approvers ? h("span", { class: "muted" }, ` by ${kept.approvers}`) : "",
    kept.custom_data ? h("div", {}, kept.custom_data) : "",
    kept.external_link ? h("div", {}, h("a", { href: kept.external_link, rel: "noopener noreferrer" }, kept.external_link)) : "",
    h("form", { onsubmit: e => { e.preventDefault(); decide(true); } }, by, summary,
      h("button", { class: "primary", type: "submit" }, "Approve"), h("button", { type: "button", class: "danger", onclick: () => decide(false) }, "Reject")));
}

function artifactsOf(a) {
  const entries = Object.entries(a.artifacts || {});
  if (!entries.length) return "";
  return h("div", { class: "kv" }, entries.map(([name, digest]) => {
    const files = h("ul", { class: "files" });
    return h("div", { "data-artifact": name }, h("span", { class: "muted" }, "artifact "), h("strong", {}, name), " ",
      h("a", { href: withToken(`/api/v1/artifacts/${enc(digest)}`), download: `${name}.tar` }, "download .tar"), " ",
      h("button", { onclick: async () => {
        // Shown in place (no repaint, which would fold the list again).
        try {
          const list = await api("GET", `/artifacts/${enc(digest)}/files`);
          files.replaceChildren(...list.filter(e => e.kind === "file").map(e =>
            h("li", {}, h("a", { href: withToken(`/api/v1/artifacts/${enc(digest)}/files/${e.path.split("/").map(enc).join("/")}`) }, e.path), h("span", { class: "muted" }, ` ${e.size} bytes`))));
        } catch (e) { alertBox(e.message); }
      } }, "Files"), files);
  }));
}

// A result the action cache gave: where it was made (`<execution>/<stage>/<action>`), linked.
function cachedFrom(from) {
  const [id, ...rest] = from.split("/");
  return h("div", { class: "muted", "data-cached-from": from }, "cached from ",
    h("a", { href: `/executions/${enc(id)}` }, id), rest.length ? `/${rest.join("/")}` : "");
}

function kv(map) {
  const entries = Object.entries(map || {});
  return entries.length ? h("dl", { class: "kv" }, entries.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])) : "";
}

async function executionPage(id) {
  document.title = `${id} · Sluice`;
  const exec = await api("GET", `/executions/${enc(id)}`);
  const terminal = !["InProgress", "Stopping"].includes(exec.status);
  const actionBox = (s, a) => h("div", { class: "action", "data-action": `${s.name}/${a.name}`, "data-status": a.status },
    h("div", { class: "name" }, a.name, " ", h("span", { class: "muted" }, a.plugin && a.plugin.ref)),
    status(a.status), " ", h("span", { class: "muted" }, `${a.attempt ? `attempt ${a.attempt} · ` : ""}${duration(a)}`),
    a.cached_from ? cachedFrom(a.cached_from) : "",
    a.summary ? h("div", {}, a.summary) : "", a.error ? h("div", { class: "s-Failed" }, a.error) : "",
    kv(a.variables), artifactsOf(a),
    (a.decisions || []).map(d => h("div", { class: "muted" }, `${d.approved ? "approved" : "rejected"} by ${d.by}${d.summary ? `: ${d.summary}` : ""}`)),
    a.status === "InProgress" && a.waiting && a.waiting.wake === "approval" ? approvalBox(exec, s, a) : "",
    a.attempt ? h("button", { onclick: () => { openLog = { stage: s.name, action: a.name }; showLog(exec); }, "aria-controls": "logpanel" }, "Log") : "");
  actionBox.stageTools = s => [
    ["Failed", "Stopped"].includes(s.status) && terminal ? h("button", { onclick: () => act(() => api("POST", `/executions/${enc(id)}/stages/${enc(s.name)}/retry`, {})) }, "Retry stage") : "",
    s.status === "Succeeded" && terminal && exec.stages[0].name !== s.name ? h("button", { onclick: () => act(async () => {
      const r = await api("POST", `/pipelines/${enc(exec.pipeline)}/stages/${enc(s.name)}/rollback`, { to: id, by: "console" });
      location.href = `/executions/${enc(r.execution_id)}`;
    }) }, "Roll back to this") : ""];
  const abandon = h("input", { type: "checkbox", id: "abandon" });
  return [
    h("h1", {}, h("a", { href: `/pipelines/${enc(exec.pipeline)}` }, exec.pipeline), " · ", exec.execution_id, " ", status(exec.status)),
    h("p", { class: "muted" }, `v${exec.pipeline_version} · started ${when(exec.started_at)}${exec.finished_at ? ` · ended ${when(exec.finished_at)}` : ""}${exec.trigger ? ` · ${exec.trigger.kind} ${exec.trigger.event_id}` : ""}${exec.stop_reason ? ` · ${exec.stop_reason}` : ""}`),
    terminal ? "" : h("div", { class: "inline" }, h("button", { class: "danger", onclick: () => act(() => api("POST", `/executions/${enc(id)}/stop`, { abandon: abandon.checked, reason: "stopped from the console" })) }, "Stop"),
      abandon, h("label", { for: "abandon" }, "abandon running actions")),
    kv(exec.variables),
    stageColumn(exec, null, actionBox, null),
    h("section", { id: "logpanel", "aria-live": "off" })];
}

// A log view that renders only the rows in sight, so 100,000 lines stay responsive.
const ROW = 18;
let logSource = null;

function ansi(text) {
  const out = []; let cls = "";
  const parts = text.split(/\x1b\[([0-9;]*)m/);
  parts.forEach((p, i) => {
    if (i % 2 === 1) { const c = p.split(";").map(Number); cls = c.includes(31) || c.includes(91) ? "error" : c.includes(33) || c.includes(93) ? "warn" : c.includes(0) || p === "" ? "" : cls; return; }
    if (p) out.push(cls ? h("span", { class: cls }, p) : p);
  });
  return out;
}

function showLog(exec) {
  if (logSource) { logSource.close(); logSource = null; }
  const panel = document.getElementById("logpanel");
  if (!panel || !openLog) return;
  const { stage, action } = openLog;
  const lines = [];
  const box = h("div", { class: "log", tabindex: 0, role: "log", "aria-label": `Log of ${stage}/${action}` });
  const rows = h("div", { class: "rows" });
  const spacer = h("div", {});
  box.append(spacer, rows);
  const paint = () => {
    spacer.style.height = `${lines.length * ROW}px`;
    const first = Math.floor(box.scrollTop / ROW), count = Math.ceil(box.clientHeight / ROW) + 2;
    rows.style.top = `${first * ROW}px`;
    rows.replaceChildren(...lines.slice(first, first + count).map(l => h("div", { class: `row ${l.level}`, "data-line": l.message },
      `${l.at.slice(11, 19)} ${l.level.toUpperCase().padEnd(5)} `, ...ansi(l.message))));
  };
  box.addEventListener("scroll", paint);
  const note = h("p", { class: "muted" }, "");
  panel.replaceChildren(h("h2", {}, `Log of ${stage}/${action}`), note, box);
  const follow = box.scrollTop + box.clientHeight >= box.scrollHeight - ROW;
  const add = l => { lines.push(l); };
  const path = `/api/v1/executions/${enc(exec.execution_id)}/actions/${enc(stage)}/${enc(action)}/logs`;
  // Followed live while the attempt runs; read once when it has ended.
  logSource = new EventSource(withToken(path));
  logSource.addEventListener("line", e => { add(JSON.parse(e.data)); paint(); if (follow) box.scrollTop = box.scrollHeight; note.textContent = `${lines.length} lines`; });
  logSource.addEventListener("end", () => { logSource.close(); logSource = null; note.textContent = `${lines.length} lines (complete)`; paint(); });
  logSource.addEventListener("error", () => { if (logSource) { logSource.close(); logSource = null; } });
  paint();
}

async function pluginsPage() {
  document.title = "Plugins · Sluice";
  const list = await api("GET", "/plugins");
  return [h("h1", {}, "Plugins"), h("table", {},
    h("thead", {}, h("tr", {}, ["Plugin", "Category", "Summary", "Configuration", "Capabilities"].map(t => h("th", {}, t)))),
    h("tbody", {}, list.map(p => h("tr", { "data-plugin": p.name },
      h("td", {}, h("code", {}, `${p.name}@${p.version.split(".")[0]}`), h("div", { class: "muted" }, p.version)),
      h("td", {}, p.category), h("td", {}, p.summary, p.side_effects ? h("div", { class: "muted" }, "has side effects") : ""),
      h("td", {}, h("ul", {}, p.config.map(k => h("li", {}, h("code", {}, k.name), k.required ? " (required) " : " ", h("span", { class: "muted" }, k.description))))),
      h("td", {}, (p.capabilities || []).map(c => h("div", {}, typeof c === "string" ? c : JSON.stringify(c))))))))];
}

// ---- Routing and live updates ----

function route() {
  const parts = location.pathname.split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "pipelines" && parts[1]) return { page: () => pipelinePage(parts[1]), pipeline: parts[1] };
  if (parts[0] === "executions" && parts[1]) return { page: () => executionPage(parts[1]), execution: parts[1] };
  if (parts[0] === "plugins") return { page: pluginsPage };
  return { page: pipelinesPage };
}

const current = route();
let painting = false, again = false;

async function refresh() {
  if (painting) { again = true; return; }
  painting = true;
  try {
    const focused = document.activeElement && document.activeElement.name;
    const typing = document.activeElement && ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName);
    // Never repaint under someone typing into a form.
    if (!(typing && focused)) {
      const content = await current.page();
      const keepLog = document.getElementById("logpanel");
      main.replaceChildren(...[content].flat());
      const panel = document.getElementById("logpanel");
      if (keepLog && panel && keepLog.childElementCount) panel.replaceWith(keepLog);
    } else {
      again = true;
    }
  } catch (e) {
    alertBox(e.message);
  } finally {
    painting = false;
    if (again) { again = false; setTimeout(refresh, 300); }
  }
}

let pending = null;
function soon() { if (!pending) pending = setTimeout(() => { pending = null; refresh(); }, 150); }

const events = new EventSource(withToken(`/api/v1/events${current.pipeline ? `?pipeline=${enc(current.pipeline)}` : ""}`));
events.onopen = () => { document.getElementById("live").textContent = "live"; };
events.onerror = () => { document.getElementById("live").textContent = "reconnecting…"; };
for (const kind of ["pipeline", "stage", "action"]) {
  events.addEventListener(kind, e => {
    const ev = JSON.parse(e.data);
    if (current.execution && ev.execution_id !== current.execution) return;
    soon();
  });
}

// Leaving a page closes its streams: a browser keeps at most six connections to one host, and
// streams left open by pages it keeps for "back" would take them all, so that the next page
// waits for a free one. A page shown again from that cache loads afresh.
addEventListener("pagehide", () => { events.close(); if (logSource) logSource.close(); });
addEventListener("pageshow", e => { if (e.persisted) location.reload(); });

refresh();
