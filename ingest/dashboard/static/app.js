// vitalgate ward dashboard: no framework, no CDN. Data from the ingest service's own API:
//   GET /api/ward, GET /api/ward/{user_code}, PUT /api/patient/{user_code}/context,
//   GET /api/events (server-sent events, read with fetch so the API key stays in a header),
//   GET /api/alerts, GET /api/alerts/{id}, POST /api/alerts/{id}/ack, GET /api/monitoring.
"use strict";

const VITALS = [
  ["respiratory_rate", "RR", "/min"],
  ["spo2", "SpO₂", "%"],
  ["systolic_bp", "SBP", "mmHg"],
  ["heart_rate", "HR", "/min"],
  ["temperature", "Temp", "°C"],
];
// The least y range of each trend chart on the patient page (widened when a value falls
// outside): about the NEWS2 chart's bands, so that a wobble of 1 /min does not fill the chart.
const CHART_RANGE = {
  respiratory_rate: [5, 35], spo2: [80, 100], systolic_bp: [80, 200], diastolic_bp: [40, 120],
  heart_rate: [35, 150], temperature: [34, 41],
};
const RISK_ORDER = { high: 0, medium: 1, "low-medium": 2, low: 3 };
const FRESH_MS = 15 * 60 * 1000;
const $ = (id) => document.getElementById(id);

let apiKey = localStorage.getItem("vitalgate.apikey") || "";
let refreshTimer = null;
let eventsAbort = null;
let currentPatient = null;
// an acknowledgement being typed survives the live re-renders: {id, who, note}
let ackDraft = null;
const SEVERITY_ORDER = { high: 0, medium: 1 };
const UNACKED = new Set(["opened", "updated", "escalated"]);

class Unauthorized extends Error {}
class ApiFailure extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

async function api(path, options = {}) {
  const headers = Object.assign({ "x-api-key": apiKey }, options.headers || {});
  if (options.body) headers["content-type"] = "application/json";
  const res = await fetch(path, Object.assign({}, options, { headers }));
  if (res.status === 401) throw new Unauthorized("API key refused");
  const body = await res.json();
  if (!res.ok) throw new ApiFailure(body.message || res.statusText, res.status);
  return body.data;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c != null) node.append(c);
  return node;
}

function svgEl(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function age(ms, now) {
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 90) return `${s}s`;
  if (s < 5400) return `${Math.round(s / 60)}m`;
  return `${Math.round(s / 3600)}h`;
}

function fmt(vital, v) {
  if (v == null) return "–";
  return vital === "temperature" ? v.toFixed(1) : String(Math.round(v));
}

// A polyline of [ts, value] points; `marks` are x positions to draw as ticks (ECG beats).
function lineChart(points, { width = 300, height = 60, min = null, max = null, color = "#1d2330", marks = [], xRange = null, dot = false } = {}) {
  const svg = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none" });
  if (!points.length) return svg;
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  const x0 = xRange ? xRange[0] : Math.min(...xs);
  const x1 = xRange ? xRange[1] : Math.max(...xs);
  const y0 = min ?? Math.min(...ys);
  const y1 = max ?? Math.max(...ys);
  const sx = (x) => (x1 === x0 ? width / 2 : ((x - x0) / (x1 - x0)) * width);
  const sy = (y) => (y1 === y0 ? height / 2 : height - 2 - ((y - y0) / (y1 - y0)) * (height - 4));
  const d = points.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
  svg.append(svgEl("polyline", { points: d, fill: "none", stroke: color, "stroke-width": 1.5, "vector-effect": "non-scaling-stroke" }));
  if (points.length === 1 || dot) { // mark the newest point (a single point draws no line)
    const [x, y] = points[points.length - 1];
    svg.append(svgEl("line", { x1: sx(x), x2: sx(x), y1: sy(y), y2: sy(y), stroke: color, "stroke-width": 7, "stroke-linecap": "round", "vector-effect": "non-scaling-stroke", class: "dot" }));
  }
  for (const m of marks) {
    svg.append(svgEl("line", { x1: sx(m), x2: sx(m), y1: 0, y2: 8, stroke: "#c62828", "stroke-width": 2, "vector-effect": "non-scaling-stroke", class: "beat" }));
  }
  return svg;
}

// ------------------------------------------------------------------------------ ward

// A read the ward can do without (alerts, monitoring): its failure is shown, not fatal.
async function optional(path) {
  try {
    return await api(path);
  } catch (e) {
    if (e instanceof Unauthorized) throw e;
    return { error: e.message };
  }
}

// Unacknowledged first, then highest severity, then newest.
function alertOrder(a, b) {
  return (UNACKED.has(b.state) - UNACKED.has(a.state))
    || (SEVERITY_ORDER[a.severity] ?? 9) - (SEVERITY_ORDER[b.severity] ?? 9)
    || b.updated_at - a.updated_at || b.id - a.id;
}

function alertLine(x) {
  const bits = [`ALERT ${x.severity}`];
  if (x.escalated) bits.push("escalated");
  if (x.state === "acknowledged") bits.push(`acknowledged by ${x.acked_by}`);
  return el("div", { class: "alert-line", "data-alert-state": x.state, text: bits.join(" · ") });
}

function monitoringLine(m, now) {
  if (!m) return null;
  const line = el("div", { class: "monitoring", "data-frequency": m.frequency, "data-overdue": String(m.overdue) },
    `monitoring ${m.frequency}`);
  if (m.overdue) line.append(" · ", el("span", { class: "overdue", text: `OVERDUE: no vitals for ${age(m.last_reading_at, now)}` }));
  return line;
}

function renderBanner(open, now) {
  const banner = $("alert-banner");
  if (open.error) {
    banner.hidden = false;
    $("alert-banner-title").textContent = `Alerts unavailable: ${open.error}`;
    $("open-alerts").replaceChildren();
    return;
  }
  const waiting = open.alerts.filter((x) => UNACKED.has(x.state)).sort(alertOrder);
  banner.hidden = waiting.length === 0;
  $("alert-banner-title").textContent = `${waiting.length} open alert${waiting.length === 1 ? "" : "s"} · acknowledge to clear`;
  if (ackDraft && !waiting.some((x) => x.id === ackDraft.id)) ackDraft = null;
  // while a nurse types an acknowledgement, the list is left as it is (re-creating it would
  // take the focus away); it catches up when the form is sent or cancelled
  if (ackDraft && $("open-alerts").querySelector(`form.ack-form[data-alert-id="${ackDraft.id}"]`)) return;
  $("open-alerts").replaceChildren(...waiting.map((x) => {
    const li = el("li", { "data-alert-id": String(x.id), "data-user-code": x.user_code, "data-state": x.state, class: x.state });
    li.append(el("span", { class: `alert-chip ${x.severity}`, text: x.severity }));
    if (x.escalated) li.append(el("span", { class: "alert-chip escalated", text: "ESCALATED" }));
    li.append(el("a", { href: `#/patient/${encodeURIComponent(x.user_code)}`, text: x.user_code }));
    const due = x.due_at != null ? (x.due_at > now ? ` · respond within ${age(now, x.due_at)}` : " · response time passed") : "";
    li.append(el("span", { text: `NEWS2 ${x.point} · ${x.result} · ${x.state} ${age(x.updated_at, now)} ago${due}` }));
    li.append(ackDraft && ackDraft.id === x.id ? ackForm(x) : el("button", { type: "button", class: "ack", "data-alert-id": String(x.id), text: "Acknowledge" }));
    return li;
  }));
}

function ackForm(x) {
  const form = el("form", { class: "ack-form", "data-alert-id": String(x.id) });
  const who = el("input", { name: "who", placeholder: "your name or staff id", required: "", maxlength: "64", pattern: "[A-Za-z0-9][A-Za-z0-9 .,'@_\\-]{0,63}", "aria-label": "acknowledged by" });
  const note = el("input", { name: "note", placeholder: "note (optional)", maxlength: "500", "aria-label": "note" });
  who.value = ackDraft.who;
  note.value = ackDraft.note;
  who.addEventListener("input", () => { ackDraft.who = who.value; });
  note.addEventListener("input", () => { ackDraft.note = note.value; });
  form.append(who, note, el("button", { type: "submit", text: "Confirm" }), el("button", { type: "button", class: "ack-cancel", text: "Cancel" }));
  setTimeout(() => { if (document.activeElement === document.body) who.focus(); }, 0);
  return form;
}

async function sendAck(id, who, note) {
  const status = $("ack-status");
  try {
    const body = { who };
    if (note) body.note = note;
    const x = await api(`/api/alerts/${id}/ack`, { method: "POST", body: JSON.stringify(body) });
    ackDraft = null;
    status.textContent = `Alert ${x.id} (${x.user_code}) acknowledged by ${x.acked_by}.`;
  } catch (e) {
    if (e instanceof ApiFailure && e.status === 403) status.textContent = "This key may not acknowledge alerts: sign in with a key that has the clinical scope.";
    else if (e instanceof Unauthorized) throw e;
    else status.textContent = `Not acknowledged: ${e.message}`;
  }
  await route();
}

function tile(p, now, alert = null, mon = null) {
  const ews = p.ews;
  const result = ews ? ews.result : "none";
  const a = el("a", { class: `tile ${result}${alert && UNACKED.has(alert.state) ? " alerted" : ""}`, href: `#/patient/${encodeURIComponent(p.user_code)}`, "data-user-code": p.user_code, "data-result": result });
  const badge = el("span", { class: `badge ${result}`, text: ews ? String(ews.point) : "–", title: ews ? `${ews.result} · ${ews.risk}` : "no score" });
  a.append(el("div", { class: "top" }, el("span", { class: "code", text: p.user_code }), badge));
  const dev = p.device || {};
  a.append(el("div", { class: "meta", text: `${p.gateway_id || "?"} · ${dev.name || dev.mac || "no device"}` }));
  const grid = el("div", { class: "vitals" });
  for (const [key, label, unit] of VITALS) {
    const v = (p.vitals || {})[key];
    const stale = v && now - v.ts > FRESH_MS;
    grid.append(el("span", { text: label }));
    grid.append(el("span", { class: "v", text: v ? `${fmt(key, v.value)} ${unit}` : "–" }));
    const cell = el("span", { class: "spark" });
    if (v) {
      cell.append(el("span", { class: stale ? "age stale" : "age", text: age(v.ts, now) + " " }));
      if (v.spark && v.spark.length > 1) cell.append(lineChart(v.spark, { width: 120, height: 18 }));
    }
    grid.append(cell);
  }
  a.append(grid);
  const flags = el("div", { class: "flags" });
  const bits = [];
  if (ews && ews.partial) bits.push(el("span", { class: "warn", text: `partial (missing: ${(ews.missing || []).join(", ") || "context"})` }));
  bits.push(el("span", { text: `${dev.connected ? "connected" : "disconnected"}${dev.battery != null ? ` · battery ${dev.battery}%` : ""}` }));
  if (p.completeness != null) bits.push(el("span", { text: `data ${Math.round(p.completeness * 100)}%` }));
  bits.forEach((b, i) => { if (i) flags.append(" · "); flags.append(b); });
  a.append(flags);
  const m = monitoringLine(mon, now);
  if (m) a.append(m);
  if (alert) a.insertBefore(alertLine(alert), a.children[1]);
  return a;
}

async function renderWard() {
  const [data, open, mon] = await Promise.all([
    api("/api/ward"), optional("/api/alerts?state=open&limit=500"), optional("/api/monitoring")]);
  const now = data.now;
  renderBanner(open, now);
  const alertOf = new Map();
  for (const x of (open.alerts || []).slice().sort(alertOrder)) if (!alertOf.has(x.user_code)) alertOf.set(x.user_code, x);
  const monOf = new Map((mon.patients || []).map((m) => [m.user_code, m]));
  const patients = data.patients.slice().sort((a, b) => {
    const ra = a.ews ? RISK_ORDER[a.ews.risk] ?? 4 : 5;
    const rb = b.ews ? RISK_ORDER[b.ews.risk] ?? 4 : 5;
    return ra - rb || (b.ews?.point ?? -1) - (a.ews?.point ?? -1) || a.user_code.localeCompare(b.user_code);
  });
  const tiles = $("tiles");
  tiles.replaceChildren(...patients.map((p) => tile(p, now, alertOf.get(p.user_code), monOf.get(p.user_code))));
  const counts = { tinggi: 0, sedang: 0, rendah: 0, normal: 0 };
  for (const p of patients) if (p.ews && p.ews.result in counts) counts[p.ews.result] += 1;
  $("ward-summary").textContent = `${patients.length} patients · tinggi ${counts.tinggi} · sedang ${counts.sedang} · rendah ${counts.rendah} · normal ${counts.normal}`;
  const alerts = $("alerts");
  alerts.replaceChildren(...(data.alerts || []).map((x) => el("li", {},
    el("span", { class: `badge ${x.result}`, text: String(x.point) }), " ",
    el("a", { href: `#/patient/${encodeURIComponent(x.user_code)}`, text: x.user_code }),
    ` ${x.from_risk || "–"} → ${x.risk} · ${age(x.produce_at, now)} ago`)));
}

// ------------------------------------------------------------------------------ patient

// Nothing of the previous patient may stay on screen while (or if) another one loads.
function clearPatient(code, message) {
  $("p-title").textContent = code;
  $("p-score").replaceChildren(el("span", { class: "badge", id: "p-point", "data-point": "", text: message }));
  $("p-cause").textContent = "";
  $("p-charts").replaceChildren();
  $("p-ecg").replaceChildren();
  $("context-form").hidden = true;
  $("ctx-status").textContent = "";
  $("p-monitoring").replaceChildren();
  $("p-alerts").hidden = true;
  $("p-alert-list").replaceChildren();
}

async function renderPatientAlerts(code, now) {
  const [list, mon] = await Promise.all([
    optional(`/api/alerts?user_code=${encodeURIComponent(code)}&limit=5`), optional("/api/monitoring")]);
  const m = (mon.patients || []).find((r) => r.user_code === code);
  const line = monitoringLine(m, now);
  $("p-monitoring").replaceChildren(...(line ? [line] : []));
  const found = list.alerts || [];
  const detailed = await Promise.all(found.map((x) => optional(`/api/alerts/${x.id}`)));
  if (currentPatient !== code) return;
  $("p-alerts").hidden = found.length === 0;
  $("p-alert-list").replaceChildren(...detailed.filter((d) => d.alert).map((d) => {
    const x = d.alert;
    const box = el("div", { class: "p-alert", "data-alert-id": String(x.id), "data-state": x.state });
    box.append(el("h3", { text: `Alert ${x.id} · ${x.severity} · ${x.state}${x.escalated ? " · escalated" : ""}` }));
    box.append(el("ol", { class: "audit" }, ...d.audit.map((e) => el("li", { "data-transition": e.transition,
      text: `${new Date(e.at).toLocaleString()} · ${e.transition}${e.who ? ` by ${e.who}` : ""} · NEWS2 ${e.point}${e.note ? ` · “${e.note}”` : ""}` }))));
    return box;
  }));
}

async function renderPatient(code) {
  let data;
  try {
    data = await api(`/api/ward/${encodeURIComponent(code)}?hours=6`);
  } catch (e) {
    if (e instanceof ApiFailure && e.status === 404) { clearPatient(code, "unknown patient"); return; }
    if (e instanceof ApiFailure && e.status === 422) { clearPatient(code, "not a patient code"); return; }
    throw e;
  }
  if (currentPatient !== code) return; // the page moved on while this one loaded
  $("context-form").hidden = false;
  const now = data.now;
  const p = data.patient;
  $("p-title").textContent = p.user_code;
  const ews = p.ews;
  $("p-score").replaceChildren(ews
    ? el("span", { class: `badge ${ews.result}`, id: "p-point", "data-point": String(ews.point), text: `NEWS2 ${ews.point} · ${ews.result}` })
    : el("span", { class: "badge", id: "p-point", "data-point": "", text: "no score" }));
  $("p-cause").textContent = ews ? [...(ews.cause || []), ews.partial ? `partial: ${(ews.missing || []).join(", ")}` : ""].filter(Boolean).join(" · ") : "";
  const charts = $("p-charts");
  const range = [now - 6 * 3600 * 1000, now];
  const blocks = [];
  // the score is a step function: each point holds until the next one (the last until now)
  const steps = [];
  data.ews_history.forEach((e, i, all) => {
    steps.push([e.produce_at, e.point]);
    const end = i + 1 < all.length ? all[i + 1].produce_at : now;
    if (end > e.produce_at) steps.push([end, e.point]);
  });
  blocks.push(el("div", { class: "chart" }, el("h3", { text: `NEWS2 point ${ews ? ews.point : "–"}` }, el("span", { class: "range", text: "0–20" })), lineChart(steps, { min: 0, max: 20, xRange: range, color: "#c62828", width: 400, height: 120, dot: true })));
  for (const [key, label, unit] of VITALS.concat([["diastolic_bp", "DBP", "mmHg"]])) {
    const series = data.series[key] || [];
    const last = series.length ? series[series.length - 1] : null;
    const ys = series.map((p) => p[1]);
    const [lo, hi] = CHART_RANGE[key];
    const min = Math.min(lo, ...ys);
    const max = Math.max(hi, ...ys);
    blocks.push(el("div", { class: "chart" }, el("h3", { text: `${label} ${last ? fmt(key, last[1]) + " " + unit : "–"}` }, el("span", { class: "range", text: `${min}–${max}` })), lineChart(series, { xRange: range, min, max, width: 400, height: 120 })));
  }
  charts.replaceChildren(...blocks);
  const ecg = $("p-ecg");
  ecg.replaceChildren(...(data.ecg || []).map((r) => {
    const pts = r.samples.map((v, i) => [i, v]);
    const s = r.summary || {};
    const title = `${new Date(r.ts).toLocaleString()} · ${s.mean_hr ? Math.round(s.mean_hr) + " bpm" : "no HR"} · quality ${s.quality || "?"}${s.irregular ? " · irregular rhythm (screening hint)" : ""}`;
    return el("div", { class: "ecg" }, el("h3", { text: title }), lineChart(pts, { width: 1000, height: 140, marks: r.beats || [], xRange: [0, Math.max(1, pts.length - 1)] }));
  }));
  if (!data.ecg || !data.ecg.length) ecg.append(el("p", { class: "cause", text: "No ECG recording yet." }));
  await renderPatientAlerts(code, now);
  if (currentPatient !== code) return;
  const ctx = data.context || {};
  $("ctx-consciousness").value = ctx.consciousness || "A";
  $("ctx-oxygen").checked = !!ctx.on_oxygen;
  $("ctx-scale").value = String(ctx.spo2_scale || 1);
}

async function saveContext(ev) {
  ev.preventDefault();
  const body = {
    consciousness: $("ctx-consciousness").value,
    on_oxygen: $("ctx-oxygen").checked,
    spo2_scale: Number($("ctx-scale").value),
  };
  try {
    await api(`/api/patient/${encodeURIComponent(currentPatient)}/context`, { method: "PUT", body: JSON.stringify(body) });
    $("ctx-status").textContent = "Saved; the score uses it from now on.";
    await renderPatient(currentPatient);
  } catch (e) {
    $("ctx-status").textContent = `Not saved: ${e.message}`;
  }
}

// ------------------------------------------------------------------------------ live updates

function scheduleRefresh(delay = 500) {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => route().catch(handleError), delay);
}

async function listen() {
  if (eventsAbort) eventsAbort.abort();
  eventsAbort = new AbortController();
  const live = $("live");
  try {
    const res = await fetch("/api/events", { headers: { "x-api-key": apiKey, accept: "text/event-stream" }, signal: eventsAbort.signal });
    if (!res.ok || !res.body) throw new Error(`events: ${res.status}`);
    live.className = "live on";
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const frame = buf.slice(0, i);
        buf = buf.slice(i + 2);
        if (frame.split("\n").some((l) => l.startsWith("event:") && !l.includes("ping"))) scheduleRefresh();
      }
    }
  } catch (e) {
    if (e.name === "AbortError") return;
  }
  live.className = "live off";
  setTimeout(listen, 3000);
}

// ------------------------------------------------------------------------------ routing

function show(id) {
  for (const s of ["signin", "ward", "patient"]) $(s).hidden = s !== id;
  $("signout").hidden = id === "signin";
}

async function route() {
  if (!apiKey) { show("signin"); return; }
  const m = location.hash.match(/^#\/patient\/(.+)$/);
  if (m) {
    const code = decodeURIComponent(m[1]);
    if (code !== currentPatient) clearPatient(code, "loading…");
    currentPatient = code;
    show("patient");
    await renderPatient(currentPatient);
  } else {
    currentPatient = null;
    show("ward");
    await renderWard();
  }
}

function handleError(e) {
  if (e instanceof Unauthorized) {
    apiKey = "";
    localStorage.removeItem("vitalgate.apikey");
    show("signin");
    $("signin-error").textContent = "That API key was refused.";
  } else {
    console.error(e);
  }
}

$("signin-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  apiKey = $("apikey").value.trim();
  localStorage.setItem("vitalgate.apikey", apiKey);
  $("signin-error").textContent = "";
  route().then(listen).catch(handleError);
});
$("signout").addEventListener("click", () => {
  apiKey = "";
  localStorage.removeItem("vitalgate.apikey");
  if (eventsAbort) eventsAbort.abort();
  show("signin");
});
$("context-form").addEventListener("submit", saveContext);
$("open-alerts").addEventListener("click", (ev) => {
  const t = ev.target;
  if (t.matches("button.ack")) {
    ackDraft = { id: Number(t.dataset.alertId), who: "", note: "" };
    route().catch(handleError);
  } else if (t.matches("button.ack-cancel")) {
    ackDraft = null;
    route().catch(handleError);
  }
});
$("open-alerts").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const form = ev.target;
  sendAck(Number(form.dataset.alertId), form.elements.who.value.trim(), form.elements.note.value.trim()).catch(handleError);
});
window.addEventListener("hashchange", () => route().catch(handleError));
setInterval(() => scheduleRefresh(0), 15000); // ages and staleness move even without events
route().then(() => { if (apiKey) listen(); }).catch(handleError);
