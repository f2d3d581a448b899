// codrl view: the lifecycle browser and the comparison view.
// The data arrive gzip-compressed and base64-encoded in #codrl-data; everything the model wrote is
// inserted as text nodes, never as HTML. Only the selected lifecycle and one page of the list are
// rendered at a time.
"use strict";

const PAGE_SIZE = 50;
const S = {
  data: null, matches: [], page: 0, selected: null, task: 0,
  filter: { env: "", variant: "", position: "", outcome: "any", invalidFormat: false, invalidHints: false, search: "" },
};

// ---------------------------------------------------------------- helpers
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function fmt(x, digits = 2) {
  return x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(digits);
}

function rewardClass(ep) {
  if (ep.ok) return "r-ok";
  return ep.r > 0 ? "r-mid" : "r-bad";
}

// Text with every case-insensitive occurrence of the search needle wrapped in <mark>.
function marked(text, needle) {
  if (!needle) return document.createTextNode(text);
  const frag = document.createDocumentFragment();
  const low = text.toLowerCase();
  const n = needle.toLowerCase();
  let i = 0;
  for (let j = low.indexOf(n); j >= 0; j = low.indexOf(n, i)) {
    frag.append(text.slice(i, j), el("mark", {}, text.slice(j, j + n.length)));
    i = j + n.length;
  }
  frag.append(text.slice(i));
  return frag;
}

function pre(cls, text) {
  return el("pre", { class: cls }, marked(text, S.filter.search));
}

async function loadData() {
  const b64 = document.getElementById("codrl-data").textContent.trim();
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
  return JSON.parse(await new Response(stream).text());
}

// ---------------------------------------------------------------- filters (same rules as EpisodeFilter)
function episodeMatches(f, ep) {
  if (f.position !== "" && ep.p !== Number(f.position)) return false;
  if (f.outcome === "success" && !ep.ok) return false;
  if (f.outcome === "failure" && ep.ok) return false;
  if (f.invalidFormat && ep.fv) return false;
  if (f.invalidHints && ep.hv !== false) return false;
  if (f.search) {
    const needle = f.search.toLowerCase();
    const texts = ep.turns.map((t) => t[1]).concat([ep.hin], (ep.diff || []).map((d) => d[1]));
    if (!texts.some((t) => t.toLowerCase().includes(needle))) return false;
  }
  return true;
}

function lifecycleMatches(f, lc) {
  if (f.env && lc.env !== f.env) return false;
  if (f.variant !== "" && lc.v !== Number(f.variant)) return false;
  return lc.eps.some((ep) => episodeMatches(f, ep));
}

function applyFilters() {
  const f = S.filter;
  S.matches = [];
  S.data.lifecycles.forEach((lc, i) => { if (lifecycleMatches(f, lc)) S.matches.push(i); });
  S.page = 0;
  const n = S.data.lifecycles.length;
  document.getElementById("match-count").textContent =
    `${S.matches.length.toLocaleString()} of ${n.toLocaleString()} lifecycles match`;
  renderList();
}

function readFilterForm() {
  const form = document.getElementById("filters");
  const next = {
    env: form.env.value, variant: form.variant.value, position: form.position.value,
    outcome: form.outcome.value, invalidFormat: form.invalidFormat.checked,
    invalidHints: form.invalidHints.checked, search: form.search.value.trim(),
  };
  // The search box also fires "change" when it loses focus: unchanged filters keep the list as it is.
  if (JSON.stringify(next) === JSON.stringify(S.filter)) return;
  S.filter = next;
  applyFilters();
  if (S.selected !== null) renderDetail();
}

function initFilters() {
  const d = S.data;
  const form = document.getElementById("filters");
  const envs = [...new Set(d.lifecycles.map((lc) => lc.env))].sort();
  for (const e of envs) form.env.append(el("option", { value: e }, e));
  d.variants.forEach((v, i) => form.variant.append(el("option", { value: i }, v.label)));
  const k = Math.max(0, ...d.lifecycles.map((lc) => lc.eps.length));
  for (let p = 0; p < k; p++) form.position.append(el("option", { value: p }, `${p} (task ${p + 1})`));
  let timer = null;
  form.addEventListener("change", readFilterForm);
  form.addEventListener("submit", (e) => e.preventDefault());
  form.search.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(readFilterForm, 200); });
}

// ---------------------------------------------------------------- list
function chips(lc, onClick) {
  return el("span", { class: "chips" }, lc.eps.map((ep, i) => {
    const attrs = { class: `chip ${rewardClass(ep)}`, title: `task ${i + 1} (position ${i}): reward ${fmt(ep.r, 3)}` };
    if (!onClick) return el("span", attrs, fmt(ep.r, 1));
    attrs.class += i === S.task ? " current" : "";
    attrs.type = "button";
    attrs["data-task"] = i;
    attrs.onclick = () => onClick(i);
    return el("button", attrs, fmt(ep.r, 1));
  }));
}

function renderList() {
  const box = document.getElementById("lc-list");
  box.replaceChildren();
  const pages = Math.max(1, Math.ceil(S.matches.length / PAGE_SIZE));
  S.page = Math.min(S.page, pages - 1);
  const rows = S.matches.slice(S.page * PAGE_SIZE, (S.page + 1) * PAGE_SIZE).map((i) => {
    const lc = S.data.lifecycles[i];
    const bad = lc.eps.filter((e) => !e.fv).length;
    const badHints = lc.eps.filter((e) => e.hv === false).length;
    return el("tr", { "data-lc": i, class: i === S.selected ? "selected" : null, onclick: () => select(i) },
      el("td", {}, S.data.variants[lc.v].label),
      el("td", {}, lc.pack), el("td", {}, lc.repeat),
      el("td", {}, chips(lc),
        bad ? el("span", { class: "flag", title: "malformed replies" }, `${bad} invalid`) : null,
        badHints ? el("span", { class: "flag", title: "invalid hints updates" }, `${badHints} bad hints`) : null));
  });
  box.append(el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "variant"), el("th", {}, "pack"),
    el("th", {}, "repeat"), el("th", {}, "reward by task"))), el("tbody", {}, rows)));
  if (!rows.length) box.append(el("p", { class: "empty" }, "No lifecycle matches these filters."));
  box.append(el("div", { class: "pager" },
    el("button", { id: "list-prev", type: "button", disabled: S.page === 0, onclick: () => { S.page--; renderList(); } }, "◀"),
    el("span", { id: "list-page" }, `page ${S.page + 1} of ${pages}`),
    el("button", { id: "list-next", type: "button", disabled: S.page >= pages - 1, onclick: () => { S.page++; renderList(); } }, "▶")));
}

function select(i) {
  S.selected = i;
  const lc = S.data.lifecycles[i];
  const first = lc.eps.findIndex((ep) => episodeMatches(S.filter, ep));
  S.task = Math.max(0, first);
  for (const tr of document.querySelectorAll("#lc-list tr[data-lc]")) {
    tr.classList.toggle("selected", Number(tr.dataset.lc) === i);
  }
  renderDetail();
}

// ---------------------------------------------------------------- one task, one hints diff
function diffList(diff) {
  return el("ul", { class: "hints-diff" }, diff.map(([op, line]) =>
    el("li", { class: op === "+" ? "add" : op === "-" ? "del" : "keep" }, marked(line, S.filter.search))));
}

function hintsWritten(ep) {
  if (ep.diff === null) {
    return el("p", { class: "empty" }, "No context update after this task (the last task, or a context that writes none).");
  }
  const n = { "+": 0, "-": 0, " ": 0 };
  for (const [op] of ep.diff) n[op]++;
  const ops = ep.ops ? Object.entries(ep.ops).filter(([, c]) => c).map(([k, c]) => `${k} ${c}`).join(", ") : "";
  return el("div", { class: "hints-written" },
    el("span", { class: "diff-counts" }, `+${n["+"]} added · −${n["-"]} removed · ${n[" "]} kept`),
    el("span", { class: `badge ${ep.hv ? "good" : "bad"}` }, ep.hv ? "valid" : "invalid"),
    ep.hr ? el("span", { class: "badge" }, `hint reward ${fmt(ep.hr, 3)}`) : null,
    ops ? el("span", { class: "badge" }, `curator: ${ops}`) : null,
    ep.diff.length ? diffList(ep.diff) : el("p", { class: "empty" }, "(empty hints)"));
}

function taskBody(ep, compact) {
  const turns = ep.turns.map(([obs, reply, feedback, valid, reward], j) =>
    el("div", { class: `turn${valid ? "" : " invalid"}` },
      el("div", {}, el("strong", {}, `Turn ${j + 1}`),
        el("span", { class: `badge ${valid ? "good" : "bad"}` }, valid ? "parsed" : "malformed"),
        el("span", { class: "badge" }, `reward ${fmt(reward, 3)}`)),
      compact ? null : el("details", {}, el("summary", {}, "observation"), pre("observation", obs)),
      el("div", { class: "label" }, "reply"), pre("reply", reply),
      el("div", { class: "label" }, "feedback"), pre("feedback", feedback)));
  const shownTurns = compact && turns.length > 1 ? [el("p", { class: "empty" }, `${turns.length - 1} earlier turns not shown`), turns.at(-1)] : turns;
  return [
    el("h3", {}, "Hints given"),
    ep.hin ? pre("hints-in", ep.hin) : el("p", { class: "empty" }, "(none)"),
    el("h3", {}, "Episode"),
    el("p", { class: "result" },
      el("span", { class: `chip ${rewardClass(ep)}` }, fmt(ep.r, 2)), ` reward ${fmt(ep.r, 3)} (environment ${fmt(ep.er, 3)})`,
      ep.rh ? el("span", { class: "badge", title: "this environment hides its score from the model: no prompt contains it" }, "not shown to the model") : null,
      el("span", { class: `badge ${ep.ok ? "good" : "bad"}` }, ep.ok ? "success" : "failure"),
      ep.fv ? null : el("span", { class: "badge bad" }, "invalid format")),
    ...shownTurns,
    ep.fb ? el("div", {}, el("div", { class: "label" }, "final feedback"), pre("feedback", ep.fb)) : null,
    el("h3", {}, "Hints written after this task"),
    hintsWritten(ep),
  ];
}

// The open lifecycle and task live in the address (#lc=12&task=3), so a view can be linked to.
function saveLocation() {
  history.replaceState(null, "", `#lc=${S.selected}&task=${S.task + 1}`);
}

function restoreLocation() {
  const m = /^#lc=(\d+)&task=(\d+)$/.exec(location.hash);
  const lc = m ? S.data.lifecycles[Number(m[1])] : undefined;
  if (!lc) return false;
  showTab("lifecycles");
  select(Number(m[1]));
  S.task = Math.min(Math.max(0, Number(m[2]) - 1), lc.eps.length - 1);
  renderDetail();
  return true;
}

function stepTask(delta) {
  if (S.selected === null) return;
  const n = S.data.lifecycles[S.selected].eps.length;
  const t = S.task + delta;
  if (t >= 0 && t < n) { S.task = t; renderDetail(); }
}

function renderDetail() {
  saveLocation();
  const box = document.getElementById("lc-detail");
  const lc = S.data.lifecycles[S.selected];
  const ep = lc.eps[S.task];
  const setTask = (t) => stepTask(t - S.task);
  box.replaceChildren(
    el("h2", { id: "lc-title" }, `${lc.pack} · repeat ${lc.repeat} · ${S.data.variants[lc.v].label}`),
    el("div", {}, "reward by task: ", chips(lc, setTask)),
    el("div", { class: "stepper" },
      el("button", { id: "task-prev", type: "button", disabled: S.task === 0, onclick: () => setTask(S.task - 1) }, "◀ previous task"),
      el("span", { id: "task-title" }, `Task ${S.task + 1} of ${lc.eps.length} (position ${S.task})`),
      el("span", { class: "meta" }, ep.task),
      el("button", { id: "task-next", type: "button", disabled: S.task >= lc.eps.length - 1, onclick: () => setTask(S.task + 1) }, "next task ▶")),
    el("div", { class: "task", id: "task-body" }, taskBody(ep, false)));
}

// ---------------------------------------------------------------- comparison
function initCompare() {
  const d = S.data;
  const packSel = document.getElementById("cmp-pack");
  const pairs = d.pairs.filter((p) => Object.keys(p.lcs).length > 1);
  S.pairs = pairs.length ? pairs : d.pairs;
  S.pairs.forEach((p, i) => packSel.append(el("option", { value: i }, `${p.pack} · repeat ${p.repeat} (${Object.keys(p.lcs).length} variants)`)));
  packSel.addEventListener("change", () => fillSides(true));
  document.getElementById("cmp-left").addEventListener("change", renderCompare);
  document.getElementById("cmp-right").addEventListener("change", renderCompare);
  fillSides(true);
}

function fillSides(reset) {
  const pair = S.pairs[Number(document.getElementById("cmp-pack").value || 0)];
  const vs = pair ? Object.keys(pair.lcs).map(Number) : [];
  for (const [id, pick] of [["cmp-left", 0], ["cmp-right", 1]]) {
    const sel = document.getElementById(id);
    const old = sel.value;
    sel.replaceChildren(...vs.map((v) => el("option", { value: v }, S.data.variants[v].label)));
    if (!reset && vs.includes(Number(old))) sel.value = old;
    else if (vs.length) sel.value = vs[Math.min(pick, vs.length - 1)];
  }
  renderCompare();
}

function renderCompare() {
  const box = document.getElementById("cmp-view");
  const pair = S.pairs[Number(document.getElementById("cmp-pack").value || 0)];
  if (!pair) { box.replaceChildren(el("p", { class: "empty" }, "No lifecycles in this file.")); return; }
  const cols = ["cmp-left", "cmp-right"].map((id) => {
    const v = Number(document.getElementById(id).value);
    const lc = S.data.lifecycles[pair.lcs[v]];
    return el("div", { class: "cmp-col", "data-variant": v },
      el("h2", {}, S.data.variants[v].label),
      el("div", {}, "reward by task: ", chips(lc)),
      lc.eps.map((ep, i) => el("div", { class: "cmp-task" }, el("strong", {}, `Task ${i + 1} · ${ep.task}`), taskBody(ep, true))));
  });
  if (Object.keys(pair.lcs).length < 2) cols.push(el("p", { class: "empty" }, "No pack in this file was played under two variants."));
  box.replaceChildren(...cols);
}

// ---------------------------------------------------------------- tabs and start
function showTab(name) {
  for (const b of document.querySelectorAll(".tab")) b.classList.toggle("active", b.dataset.tab === name);
  for (const p of document.querySelectorAll(".pane")) p.hidden = p.id !== name;
}

function initSummaryLinks() {
  for (const tr of document.querySelectorAll("#summary-table tbody tr")) {
    tr.addEventListener("click", () => {
      const i = S.data.variants.findIndex((v) => v.label === tr.dataset.variant);
      if (i < 0) return;
      document.getElementById("filters").variant.value = String(i);
      readFilterForm();
      showTab("lifecycles");
    });
  }
}

async function main() {
  for (const b of document.querySelectorAll(".tab")) b.addEventListener("click", () => showTab(b.dataset.tab));
  const loading = document.getElementById("loading");
  try {
    S.data = await loadData();
  } catch (err) {
    loading.textContent = `Could not read the embedded data (${err}); this page needs a browser with DecompressionStream.`;
    loading.classList.add("error");
    return;
  }
  initFilters();
  applyFilters();
  initCompare();
  initSummaryLinks();
  if (!restoreLocation() && S.matches.length) select(S.matches[0]);
  document.addEventListener("keydown", (e) => {  // ← and → step through the open lifecycle's tasks
    if (document.getElementById("lifecycles").hidden || e.target.closest("input, select, textarea")) return;
    if (e.key === "ArrowLeft") stepTask(-1);
    if (e.key === "ArrowRight") stepTask(1);
  });
  loading.remove();
  document.body.dataset.readyMs = String(Math.round(performance.now()));
  document.body.dataset.ready = "1";
}

main();
