// The albef dashboard: a small hash-routed page over the JSON API of `albef serve`.
// Views: runs (filter language), charts (metrics by step, EMA smoothing, runs overlaid),
// compare (params diff, metric summaries), checkpoints (aliases, promotion history) and
// datasets (ingest statistics, filter score histograms). No framework, no build step.
"use strict";

const COLORS = ["#2f6fde", "#e4572e", "#17a398", "#f3a712", "#8e44ad", "#5d6d7e", "#c0392b", "#27ae60"];
const view = document.getElementById("view");

function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}

async function api(path) {
  const res = await fetch(path);
  const body = await res.json().catch(() => ({error: `HTTP ${res.status}`}));
  if (!res.ok) { const e = new Error(body.error || `HTTP ${res.status}`); e.body = body; throw e; }
  return body;
}

function fmtNum(v) {
  if (typeof v === "string") return v; // "NaN", "Infinity", "-Infinity": metric values JSON cannot hold as numbers
  if (v === null || v === undefined || Number.isNaN(v)) return "—";
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(3);
  return Number.isInteger(v) ? String(v) : String(+v.toPrecision(4));
}
function fmtPct(v) { return v === null || v === undefined || !isFinite(v) ? "—" : (100 * v).toFixed(1) + "%"; }
function fmtTime(ms) { return ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) : "—"; }
function fmtDuration(run) {
  if (!run.end_time) return "—";
  const s = Math.round((run.end_time - run.start_time) / 1000);
  return s < 120 ? `${s}s` : s < 7200 ? `${Math.round(s / 60)}m` : `${(s / 3600).toFixed(1)}h`;
}
function fmtBytes(b) {
  if (!b) return "—";
  const u = ["B", "KB", "MB", "GB", "TB"]; let i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return `${b.toFixed(i ? 1 : 0)} ${u[i]}`;
}
function status(s) { return `<span class="status-${esc(s)}">${esc(s)}</span>`; }
function errorBox(e) {
  const b = e.body || {};
  let caret = "";
  if (b.column && b.input !== undefined) caret = `<pre>${esc(b.input)}\n${" ".repeat(b.column - 1)}^</pre>`;
  return `<div class="error" id="error">${esc(e.message)}${caret}</div>`;
}
function params() {
  const q = location.hash.split("?")[1] || "";
  return new URLSearchParams(q);
}
function go(path, p) {
  const q = p ? new URLSearchParams(p).toString() : "";
  location.hash = q ? `${path}?${q}` : path;
}

// ---------- charts ----------

/** TensorBoard's debiased exponential moving average; weight 0 keeps the raw values. */
function ema(points, weight) {
  let last = 0, n = 0;
  return points.map(p => {
    n += 1; last = last * weight + (1 - weight) * p.value;
    return {step: p.step, value: weight > 0 ? last / (1 - Math.pow(weight, n)) : p.value};
  });
}

function niceTicks(lo, hi, count) {
  if (!(hi > lo)) { hi = lo + 1; lo = lo - 1; }
  const raw = (hi - lo) / count, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map(m => m * mag).find(s => s >= raw);
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(+t.toPrecision(12));
  return ticks;
}

/** An SVG line chart: series = [{name, color, points:[{step,value}], raw?:[...]}]. */
function lineChart(series, {width = 900, height = 360, yLabel = ""} = {}) {
  const all = series.flatMap(s => s.points.concat(s.raw || []));
  if (!all.length) return `<div class="empty">No points to draw.</div>`;
  const m = {l: 64, r: 16, t: 12, b: 36};
  let x0 = Math.min(...all.map(p => p.step)), x1 = Math.max(...all.map(p => p.step));
  let y0 = Math.min(...all.map(p => p.value)), y1 = Math.max(...all.map(p => p.value));
  if (x1 === x0) { x1 = x0 + 1; }
  const pad = (y1 - y0) * 0.05 || Math.abs(y0) * 0.1 || 1; y0 -= pad; y1 += pad;
  const X = s => m.l + (s - x0) / (x1 - x0) * (width - m.l - m.r);
  const Y = v => m.t + (1 - (v - y0) / (y1 - y0)) * (height - m.t - m.b);
  const path = pts => pts.map((p, i) => `${i ? "L" : "M"}${X(p.step).toFixed(1)},${Y(p.value).toFixed(1)}`).join("");
  let svg = `<svg viewBox="0 0 ${width} ${height}" role="img" aria-label="${esc(yLabel)} by step">`;
  for (const t of niceTicks(y0, y1, 6)) {
    if (t < y0 || t > y1) continue;
    svg += `<line x1="${m.l}" x2="${width - m.r}" y1="${Y(t)}" y2="${Y(t)}" stroke="#eceff3"/>`;
    svg += `<text x="${m.l - 8}" y="${Y(t) + 4}" text-anchor="end" font-size="11" fill="#6b7280">${fmtNum(t)}</text>`;
  }
  for (const t of niceTicks(x0, x1, 8)) {
    if (t < x0 || t > x1) continue;
    svg += `<line x1="${X(t)}" x2="${X(t)}" y1="${height - m.b}" y2="${height - m.b + 4}" stroke="#9aa3b5"/>`;
    svg += `<text x="${X(t)}" y="${height - m.b + 17}" text-anchor="middle" font-size="11" fill="#6b7280">${fmtNum(t)}</text>`;
  }
  svg += `<line x1="${m.l}" x2="${width - m.r}" y1="${height - m.b}" y2="${height - m.b}" stroke="#9aa3b5"/>`;
  svg += `<text x="${(m.l + width - m.r) / 2}" y="${height - 4}" text-anchor="middle" font-size="12" fill="#6b7280">step</text>`;
  for (const s of series) {
    if (s.raw) svg += `<path d="${path(s.raw)}" fill="none" stroke="${s.color}" stroke-opacity=".25" stroke-width="1"/>`;
    svg += `<path class="series" data-name="${esc(s.name)}" d="${path(s.points)}" fill="none" stroke="${s.color}" stroke-width="2"/>`;
  }
  return svg + "</svg>";
}

function legend(series) {
  return `<div class="legend">${series.map(s => `<span><i style="background:${s.color}"></i>${esc(s.name)}</span>`).join("")}</div>`;
}

/** Vertical bars for a histogram {name, edges, counts}. */
function histogramChart(h, {width = 420, height = 200} = {}) {
  const m = {l: 44, r: 10, t: 10, b: 30}, n = h.counts.length, top = Math.max(...h.counts, 1);
  const bw = (width - m.l - m.r) / n;
  let svg = `<svg viewBox="0 0 ${width} ${height}" role="img" aria-label="histogram ${esc(h.name)}">`;
  h.counts.forEach((c, i) => {
    const bh = c / top * (height - m.t - m.b);
    svg += `<rect x="${m.l + i * bw + 1}" y="${height - m.b - bh}" width="${Math.max(bw - 2, 1)}" height="${bh}" fill="#2f6fde"><title>[${fmtNum(h.edges[i])}, ${fmtNum(h.edges[i + 1])}): ${c}</title></rect>`;
  });
  svg += `<line x1="${m.l}" x2="${width - m.r}" y1="${height - m.b}" y2="${height - m.b}" stroke="#9aa3b5"/>`;
  for (const i of [0, Math.floor(n / 2), n]) {
    svg += `<text x="${m.l + i * bw}" y="${height - m.b + 16}" text-anchor="middle" font-size="11" fill="#6b7280">${fmtNum(h.edges[i])}</text>`;
  }
  svg += `<text x="${m.l - 6}" y="${m.t + 10}" text-anchor="end" font-size="11" fill="#6b7280">${fmtNum(top)}</text>`;
  return svg + "</svg>";
}

function bars(title, counts, total, bad) {
  const entries = Object.entries(counts || {}).sort((a, b) => b[1] - a[1]);
  if (!entries.length) return `<div class="card"><h2>${esc(title)}</h2><p class="muted">None recorded.</p></div>`;
  const top = Math.max(...entries.map(e => e[1]));
  return `<div class="card bars"><h2>${esc(title)}</h2>${entries.map(([k, v]) => `
    <div class="bar"><span class="mono">${esc(k)}</span>
    <div class="track"><div class="fill${bad ? " bad" : ""}" style="width:${(100 * v / top).toFixed(1)}%"></div></div>
    <span class="num">${v}${total ? ` <span class="muted">(${fmtPct(v / total)})</span>` : ""}</span></div>`).join("")}</div>`;
}

// ---------- views ----------

async function runsView() {
  const p = params(), filter = p.get("filter") || "", orderBy = p.get("order_by") || "";
  view.innerHTML = `<h1>Runs</h1>
    <div class="toolbar">
      <input id="filter" class="filter" type="text" placeholder="metrics.loss < 2 and params.lr = '0.001' and status = 'FINISHED'" value="${esc(filter)}">
      <input id="order" type="text" placeholder="order by, e.g. min(metrics.loss)" value="${esc(orderBy)}">
      <button id="apply">Search</button>
      <button id="chart" class="secondary" disabled>Chart selected</button>
      <button id="compare" class="secondary" disabled>Compare selected</button>
    </div><div id="result"><p class="muted">Loading…</p></div>`;
  const apply = () => go("#/runs", Object.fromEntries([["filter", filterBox.value], ["order_by", orderBox.value]].filter(e => e[1])));
  const filterBox = document.getElementById("filter"), orderBox = document.getElementById("order");
  document.getElementById("apply").onclick = apply;
  for (const box of [filterBox, orderBox]) box.onkeydown = e => { if (e.key === "Enter") apply(); };
  const q = new URLSearchParams(); if (filter) q.set("filter", filter); if (orderBy) q.set("order_by", orderBy);
  let hits;
  try { hits = await api(`/api/runs?${q}`); } catch (e) {
    document.getElementById("result").innerHTML = errorBox(e); return;
  }
  const keys = [...new Set(hits.flatMap(h => h.metrics.map(m => m.key)))].sort().slice(0, 6);
  const rows = hits.map(h => {
    const r = h.run, by = Object.fromEntries(h.metrics.map(m => [m.key, m]));
    return `<tr><td><input type="checkbox" class="pick" value="${r.id}"></td>
      <td class="num">${r.id}</td><td>${esc(r.experiment)}</td><td><a href="#/charts?runs=${r.id}">${esc(r.name)}</a></td>
      <td>${status(r.status)}</td><td>${fmtTime(r.start_time)}</td><td class="num">${fmtDuration(r)}</td>
      <td class="num">${r.dataset_version_id ?? "—"}</td>
      ${keys.map(k => `<td class="num">${by[k] ? fmtNum(by[k].last) : "—"}</td>`).join("")}</tr>`;
  }).join("");
  document.getElementById("result").innerHTML = hits.length ? `<div class="card"><table id="runs-table">
    <thead><tr><th></th><th class="num">id</th><th>experiment</th><th>run</th><th>status</th><th>started</th><th class="num">took</th><th class="num">dataset</th>
    ${keys.map(k => `<th class="num">${esc(k)}</th>`).join("")}</tr></thead><tbody>${rows}</tbody></table>
    <p class="muted">${hits.length} run${hits.length === 1 ? "" : "s"}; metric columns show the last value.</p></div>`
    : `<div class="card empty">No runs match.</div>`;
  const picked = () => [...document.querySelectorAll(".pick:checked")].map(c => c.value);
  const chartBtn = document.getElementById("chart"), cmpBtn = document.getElementById("compare");
  view.onchange = () => { const n = picked().length; chartBtn.disabled = n < 1; cmpBtn.disabled = n < 2; };
  chartBtn.onclick = () => go("#/charts", {runs: picked().join(",")});
  cmpBtn.onclick = () => go("#/compare", {runs: picked().join(",")});
}

async function chartsView() {
  const p = params();
  const [runs, keys] = await Promise.all([api("/api/runs?limit=200"), api("/api/metric-keys")]);
  let selected = (p.get("runs") || "").split(",").filter(Boolean).map(Number);
  if (!selected.length) selected = runs.slice(0, 3).map(h => h.run.id);
  const key = p.get("key") || (keys.includes("loss") ? "loss" : keys[0]);
  const smooth = Number(p.get("smooth") ?? 0.6);
  // A key from the address that no run logged stays the selected one, marked, rather than the
  // select silently showing the first key above a chart of another.
  const options = keys.map(k => `<option${k === key ? " selected" : ""}>${esc(k)}</option>`);
  if (key && !keys.includes(key)) options.unshift(`<option selected value="${esc(key)}">${esc(key)} (not logged)</option>`);
  view.innerHTML = `<h1>Metrics by step</h1>
    <div class="toolbar">
      <label>metric <select id="key">${options.join("")}</select></label>
      <label>smoothing <input id="smooth" type="range" min="0" max="0.99" step="0.01" value="${smooth}"> <span id="smooth-v">${smooth.toFixed(2)}</span></label>
    </div>
    <div class="row"><div class="card chart" style="flex:3 1 700px"><h2 id="chart-title">${esc(key || "no metrics yet")}</h2><div id="chart"></div><div id="legend"></div></div>
    <div class="card runpick" style="flex:1 1 260px"><h2>Runs</h2>${runs.map(h => `<label><input type="checkbox" class="runsel" value="${h.run.id}"${selected.includes(h.run.id) ? " checked" : ""}> ${h.run.id} · ${esc(h.run.experiment)}/${esc(h.run.name)}</label>`).join("")}</div></div>`;
  const names = Object.fromEntries(runs.map(h => [h.run.id, `${h.run.id} ${h.run.name}`]));
  // NaN and the infinities come as "NaN", "Infinity", "-Infinity"; a line chart draws finite points only.
  const finite = points => points.map(p => ({step: p.step, value: Number(p.value)})).filter(p => isFinite(p.value));
  const histories = await Promise.all(selected.map(id => key ? api(`/api/runs/${id}/metrics?key=${encodeURIComponent(key)}`).then(finite).catch(() => []) : []));
  const draw = () => {
    const w = Number(document.getElementById("smooth").value);
    document.getElementById("smooth-v").textContent = w.toFixed(2);
    const series = selected.map((id, i) => ({
      name: names[id] || `run ${id}`, color: COLORS[i % COLORS.length],
      points: ema(histories[i], w), raw: w > 0 ? histories[i] : undefined,
    })).filter(s => s.points.length);
    document.getElementById("chart").innerHTML = lineChart(series, {yLabel: key});
    document.getElementById("legend").innerHTML = legend(series);
  };
  draw();
  document.getElementById("smooth").oninput = draw;
  const update = () => go("#/charts", {
    runs: [...document.querySelectorAll(".runsel:checked")].map(c => c.value).join(","),
    key: document.getElementById("key").value, smooth: document.getElementById("smooth").value,
  });
  document.getElementById("key").onchange = update;
  for (const c of document.querySelectorAll(".runsel")) c.onchange = update;
}

async function compareView() {
  const ids = params().get("runs") || "";
  if (ids.split(",").filter(Boolean).length < 2) {
    view.innerHTML = `<h1>Compare runs</h1><div class="card empty">Pick two or more runs on the <a href="#/runs">Runs</a> page and press “Compare selected”.</div>`;
    return;
  }
  const c = await api(`/api/compare?runs=${encodeURIComponent(ids)}`);
  const head = `<tr><th>key</th>${c.runs.map(r => `<th>${r.id} · ${esc(r.name)}</th>`).join("")}</tr>`;
  const prm = c.params.map(p => `<tr class="${p.differs ? "differs" : ""}"><td class="mono">${esc(p.key)}</td>${p.values.map(v => `<td class="mono">${v === null ? "—" : esc(v)}</td>`).join("")}</tr>`).join("");
  const met = c.metrics.map(m => {
    const lasts = m.summaries.map(s => s ? s.last : null).filter(v => v !== null);
    const best = m.key.match(/loss|err/) ? Math.min(...lasts) : Math.max(...lasts);
    return `<tr><td class="mono">${esc(m.key)}</td>${m.summaries.map(s => s ? `<td class="num${s.last === best && lasts.length > 1 ? " best" : ""}">${s.last === best && lasts.length > 1 ? "<b>" + fmtNum(s.last) + "</b>" : fmtNum(s.last)} <span class="muted">min ${fmtNum(s.min)} · max ${fmtNum(s.max)} · ${s.count} pts</span></td>` : "<td>—</td>").join("")}</tr>`;
  }).join("");
  const differing = c.params.filter(p => p.differs).length;
  view.innerHTML = `<h1>Compare runs</h1>
    <div class="card"><h2>Params <span class="muted">(${differing} of ${c.params.length} differ, highlighted)</span></h2><table id="params-diff"><thead>${head}</thead><tbody>${prm}</tbody></table></div>
    <div class="card"><h2>Metrics <span class="muted">(last value; best in bold)</span></h2><table id="metrics-cmp"><thead>${head}</thead><tbody>${met}</tbody></table>
    <p><a href="#/charts?runs=${esc(ids)}">Chart these runs →</a></p></div>`;
}

async function checkpointsView() {
  const [models, ckpts] = await Promise.all([api("/api/models"), api("/api/checkpoints")]);
  const histories = await Promise.all(models.map(m => api(`/api/models/${encodeURIComponent(m.name)}/history`)));
  const badge = a => `<span class="badge ${esc(a.split("@")[1] || a)}">${esc(a)}</span>`;
  const modelCards = models.map((m, i) => `<div class="card"><h2>Model ${esc(m.name)}</h2>
    <p>${m.aliases.map(a => `${badge(a.alias)} → checkpoint <b>${a.checkpoint_id}</b> <span class="muted">since ${fmtTime(a.updated_at)}</span>`).join("<br>") || '<span class="muted">no aliases</span>'}</p>
    <h2>Promotion history</h2><table class="history"><thead><tr><th>#</th><th>when</th><th>kind</th><th>alias</th><th>checkpoint</th><th>gate</th><th>actor</th><th>reason</th></tr></thead><tbody>
    ${histories[i].slice().reverse().map(e => `<tr><td class="num">${e.id}</td><td>${fmtTime(e.at)}</td><td>${esc(e.kind)}</td><td>${badge(e.alias)}</td>
      <td>${e.previous_checkpoint_id ?? "—"} → <b>${e.new_checkpoint_id ?? "removed"}</b></td>
      <td>${e.gate ? `<code>${esc(e.gate)}</code><br><span class="muted">${esc(e.gate_result || "")}</span>` : "—"}</td><td>${esc(e.actor)}</td><td>${esc(e.reason || "")}</td></tr>`).join("")}
    </tbody></table></div>`).join("");
  const mkeys = [...new Set(ckpts.flatMap(c => Object.keys(c.metrics)))].sort();
  const ckptTable = `<div class="card"><h2>Checkpoints</h2><table id="ckpt-table"><thead><tr><th class="num">id</th><th class="num">run</th><th class="num">step</th><th>aliases</th>
    ${mkeys.map(k => `<th class="num">${esc(k)}</th>`).join("")}<th class="num">size</th><th>sha256</th><th>created</th></tr></thead><tbody>
    ${ckpts.map(c => `<tr><td class="num">${c.id}</td><td class="num"><a href="#/charts?runs=${c.run_id}">${c.run_id}</a></td><td class="num">${c.step}</td>
      <td>${c.aliases.map(badge).join("")}</td>${mkeys.map(k => `<td class="num">${fmtNum(c.metrics[k])}</td>`).join("")}
      <td class="num">${fmtBytes(c.bytes)}</td><td class="mono" title="${esc(c.uri)}">${esc(c.sha256.slice(0, 12))}</td><td>${fmtTime(c.created_at)}</td></tr>`).join("")}
    </tbody></table></div>`;
  view.innerHTML = `<h1>Checkpoints and promotions</h1>${ckpts.length ? ckptTable : '<div class="card empty">No checkpoints registered.</div>'}${modelCards}`;
}

/** A status's share of the rows; unknown (null) when a non-ingest stage did not count it. */
function rate(stats, status, stage) {
  const rows = stats && stats.rows, n = stats && stats.by_status && stats.by_status[status];
  if (!rows || (n === undefined && stage !== "ingest")) return null;
  return (n || 0) / rows;
}

async function datasetsView() {
  const versions = await api("/api/datasets");
  view.innerHTML = `<h1>Dataset versions</h1>${versions.length ? `<div class="card"><table id="datasets-table"><thead><tr>
    <th>dataset</th><th class="num">version</th><th>stage</th><th>status</th><th class="num">parent</th><th class="num">rows</th><th class="num">shards</th>
    <th class="num">success</th><th class="num">duplicates</th><th>created</th></tr></thead><tbody>
    ${versions.map(v => `<tr><td><a href="#/dataset?name=${encodeURIComponent(v.dataset)}&version=${v.version}">${esc(v.dataset)}</a></td><td class="num">${v.version}</td>
      <td>${esc(v.stage)}</td><td>${status(v.status)}</td><td class="num">${v.parent_id ?? "—"}</td><td class="num">${v.rows}</td><td class="num">${v.shards}</td>
      <td class="num">${fmtPct(rate(v.stats, "success", v.stage))}</td><td class="num">${fmtPct(rate(v.stats, "duplicate", v.stage))}</td><td>${fmtTime(v.created_at)}</td></tr>`).join("")}
    </tbody></table></div>` : '<div class="card empty">No dataset versions yet.</div>'}`;
}

/** A filter version's cards: the share of the scored pairs kept, and the rows it did not score
 * (the source's duplicates and failures, carried through with their status). */
function filterStats(st, stat) {
  const by = st.by_status || {}, kept = by.success || 0, dropped = by.filtered_out || 0;
  const carried = (st.rows || 0) - kept - dropped;
  return `${stat("kept of scored", fmtPct(kept + dropped ? kept / (kept + dropped) : null))}${stat("filtered out", dropped)}${stat("not scored (from source)", carried)}`;
}

// The version's rows by host (the 50 largest), read from its shards by `albef serve`.
function hostsCard(hosts) {
  if (hosts.error) return `<div class="card"><h2>Rows by host</h2><p class="muted">Not available: ${esc(hosts.error)}</p></div>`;
  return `<div class="card"><h2>Rows by host</h2><table id="hosts-table"><thead><tr><th>host</th><th class="num">rows</th><th class="num">success</th><th class="num">failed</th></tr></thead><tbody>
    ${hosts.map(h => `<tr><td class="mono">${esc(h.host ?? "—")}</td><td class="num">${h.rows}</td><td class="num">${fmtPct(h.rows ? h.successes / h.rows : null)}</td><td class="num">${h.failures}</td></tr>`).join("")}
    </tbody></table></div>`;
}

async function datasetView() {
  const p = params(), name = p.get("name"), version = p.get("version");
  const path = `/api/datasets/${encodeURIComponent(name)}/versions/${encodeURIComponent(version)}`;
  const [d, hosts] = await Promise.all([api(path), api(`${path}/hosts`).catch(e => ({error: e.message}))]);
  const v = d.version, st = v.stats || {};
  const total = st.rows || v.rows;
  const stat = (k, val) => `<div class="stat"><div class="v">${val}</div><div class="k">${esc(k)}</div></div>`;
  view.innerHTML = `<h1>${esc(v.dataset)}@${v.version} <span class="muted">· ${esc(v.stage)} · ${status(v.status)}</span></h1>
    <div class="stats">${stat("rows", total ?? "—")}${v.stage === "filter" ? filterStats(st, stat) : `${stat("success rate", fmtPct(rate(st, "success", v.stage)))}${stat("dedupe rate", fmtPct(rate(st, "duplicate", v.stage)))}`}
    ${stat("shards", v.shards)}${stat("downloaded", fmtBytes(st.bytes_downloaded))}${stat("parent version id", v.parent_id ?? "—")}</div>
    <div class="row">${bars("Rows by status", st.by_status, total)}${bars("Errors by kind", st.by_error_kind, total, true)}</div>
    <div class="row">${bars("HTTP status", st.by_http_status, total)}${bars("Duplicates by layer", st.dedupe, total)}</div>
    ${d.histograms.length ? `<div class="row">${d.histograms.map(h => `<div class="card histogram"><h2>Score histogram: ${esc(h.name)}</h2>${histogramChart(h)}</div>`).join("")}</div>` : ""}
    ${d.contact_sheet ? `<div class="card"><a id="contact-sheet" href="${esc(d.contact_sheet)}" target="_blank">Open the contact sheet →</a></div>` : ""}
    ${hostsCard(hosts)}
    <div class="card"><h2>Parameters</h2><pre class="mono">${esc(JSON.stringify(v.params, null, 2))}</pre></div>
    <div class="card"><h2>Shards</h2><table id="shards-table"><thead><tr><th class="num">#</th><th class="num">rows</th><th class="num">success</th><th>uri</th><th>written</th></tr></thead><tbody>
    ${d.shards.map(s => `<tr><td class="num">${s.index}</td><td class="num">${s.rows}</td><td class="num">${fmtPct(rate(s.stats, "success", v.stage))}</td><td class="mono">${esc(s.uri)}</td><td>${fmtTime(s.created_at)}</td></tr>`).join("")}
    </tbody></table></div>`;
}

const ROUTES = {runs: runsView, charts: chartsView, compare: compareView, checkpoints: checkpointsView, datasets: datasetsView, dataset: datasetView};

async function route() {
  const name = (location.hash.replace(/^#\//, "").split("?")[0]) || "runs";
  const nav = name === "dataset" ? "datasets" : name;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.view === nav);
  view.onchange = null;
  view.innerHTML = `<p class="muted">Loading…</p>`;
  try { await (ROUTES[name] || runsView)(); } catch (e) { view.innerHTML = errorBox(e); }
  document.body.dataset.ready = name;
}

window.addEventListener("hashchange", route);
route();
