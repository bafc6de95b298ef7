// The dashboard: rows pushed by the server (Server-Sent Events), durations ticking locally.

const body = document.getElementById("calls");
const feedState = document.getElementById("feed-state");
const rows = new Map();
const counters = { updates: 0, snapshots: 0 };
window.dashboardStats = counters;

function fmtMs(ms) {
  if (ms === null || ms === undefined) return "–";
  return ms >= 1000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`;
}

function duration(row) {
  if (!row.started_at) return "–";
  const end = row.ended_at || Date.now() / 1000;
  return `${Math.max(0, end - row.started_at).toFixed(0)} s`;
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === undefined || text === null || text === "" ? "–" : String(text);
  if (cls) td.className = cls;
  tr.append(td);
}

function render(row) {
  const tr = document.createElement("tr");
  tr.dataset.testid = "call-row";
  tr.setAttribute("data-testid", "call-row");
  tr.setAttribute("data-call-sid", row.sid);
  tr.setAttribute("data-state", row.state);
  const live = row.state !== "ended" && row.state !== "lost";  // connecting, talking, agent-speaking, paused
  if (live) tr.className = "live";
  cell(tr, row.sid);
  cell(tr, row.agent);
  cell(tr, row.direction);
  cell(tr, row.state, `state-${row.state}`);
  cell(tr, duration(row), "duration");
  const known = (v, fmt) => (v === undefined ? "…" : fmt(v));
  cell(tr, known(row.barge_ins, String));
  cell(tr, known(row.played_ms, fmtMs));
  cell(tr, known(row.cleared_ms, fmtMs));
  cell(tr, known(row.ready_ms, fmtMs));
  cell(tr, known(row.delay_ms, fmtMs));
  cell(tr, row.reason);
  cell(tr, row.worker);
  return tr;
}

function redraw() {
  const ordered = [...rows.values()].sort((a, b) => (b.started_at || 0) - (a.started_at || 0));
  body.replaceChildren(...ordered.map(render));
}

function apply(update) {
  counters.updates++;
  if (update.type === "snapshot") {
    counters.snapshots++;
    rows.clear();
  }
  for (const row of update.rows || []) rows.set(row.sid, row);
  for (const sid of update.gone || []) rows.delete(sid);
  redraw();
}

const source = new EventSource("/dashboard/events");
source.onopen = () => { feedState.textContent = "live"; };
source.onerror = () => { feedState.textContent = "reconnecting…"; };
source.onmessage = (e) => {
  try { apply(JSON.parse(e.data)); } catch { /* a malformed update: keep the table */ }
};
// Durations of live calls tick locally, once a second, without asking the server.
setInterval(() => {
  for (const tr of body.querySelectorAll("tr.live")) {
    const row = rows.get(tr.getAttribute("data-call-sid"));
    if (row) tr.querySelector("td.duration").textContent = duration(row);
  }
}, 1000);
