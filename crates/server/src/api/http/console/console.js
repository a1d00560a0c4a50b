// The Baton console. Reads the HTTP/JSON API under /v1 with the user's bearer token and builds
// every page with DOM nodes and textContent: text from the coordinator (labels, errors, outputs)
// is never parsed as HTML. No library, no build step.
"use strict";

const TOKEN_KEY = "baton.console.token";
const SVG = "http://www.w3.org/2000/svg";
const FINAL = ["committed", "compensated", "aborted"];
const OUTCOMES = ["committed", "compensated", "failed", "aborted"];
const IN_FLIGHT = ["running", "compensating", "preparing", "committing", "aborting"];
const COLORS = {
  committed: "#3a9d5d", compensated: "#e0a800", failed: "#c62828", aborted: "#8a8f98",
  execute: "#4a7bd0", compensate: "#e08a00", prepare: "#8e5bd0", commit: "#3a9d5d", abort: "#8a8f98",
};
// Refresh periods: live, but a page left open costs the coordinator little.
const LIST_REFRESH_MS = 3000;
const OVERVIEW_REFRESH_MS = 5000;
// The overview reads at most this many list pages of 1000 per refresh.
const OVERVIEW_MAX_PAGES = 5;

// ---- small helpers ----

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function $(id) { return document.getElementById(id); }

function when(ms) { return ms ? new Date(ms).toLocaleString() : ""; }

function ago(ms) {
  if (!ms) return "";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  return s < 120 ? `${s.toFixed(1)} s` : `${Math.round(s / 60)} min`;
}

function stateBadge(state) { return el("span", { class: `state s-${state}` }, state); }

function labelsText(labels) {
  return Object.entries(labels || {}).map(([k, v]) => `${k}=${v}`).join(", ");
}

function showError(message) {
  const box = $("error");
  if (!message) { box.hidden = true; box.textContent = ""; return; }
  box.textContent = message;
  box.hidden = false;
}

// ---- the API ----

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.code;
  }
}

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

function headers(extra) {
  const h = Object.assign({ Accept: "application/json" }, extra || {});
  if (token()) h.Authorization = `Bearer ${token()}`;
  return h;
}

async function api(path, options) {
  const opts = Object.assign({ credentials: "omit", cache: "no-store" }, options || {});
  opts.headers = headers(opts.headers);
  const response = await fetch(path, opts);
  let body = null;
  const text = await response.text();
  if (text) {
    try { body = JSON.parse(text); } catch (_) { body = { message: text }; }
  }
  if (!response.ok) {
    if (response.status === 401) askToken();
    throw new ApiError(response.status, body);
  }
  return body;
}

function explain(e) {
  if (e instanceof ApiError && e.status === 403) {
    return `${e.message} (this token lacks the role the page needs)`;
  }
  return e.message || String(e);
}

function askToken() {
  $("login").hidden = false;
  $("token").focus();
}

// ---- overview ----

async function overview() {
  const now = Date.now();
  const since = now - 30 * 60 * 1000;
  const started = new Array(30).fill(0);
  const finished = Object.fromEntries(OUTCOMES.map((o) => [o, new Array(30).fill(0)]));
  let pageToken = "";
  let pages = 0;
  let partial = false;
  for (;;) {
    const q = new URLSearchParams({ created_after: String(since), page_size: "1000" });
    if (pageToken) q.set("page_token", pageToken);
    const page = await api(`/v1/transactions?${q}`);
    for (const tx of page.transactions) {
      const s = Math.floor((tx.created_at_ms - since) / 60000);
      if (s >= 0 && s < 30) started[s] += 1;
      if (OUTCOMES.includes(tx.state)) {
        const f = Math.floor((tx.updated_at_ms - since) / 60000);
        if (f >= 0 && f < 30) finished[tx.state][f] += 1;
      }
    }
    pages += 1;
    pageToken = page.next_page_token;
    if (!pageToken) break;
    if (pages >= OVERVIEW_MAX_PAGES) { partial = true; break; }
  }
  const inFlight = await count(IN_FLIGHT);
  const failed = await count(["failed"]);
  const figures = $("figures");
  figures.replaceChildren(
    figure("In flight", inFlight.text, "fig-inflight"),
    figure("Failed (waiting for an operator)", failed.text, "fig-failed"),
    figure("In doubt", inFlight.inDoubt, "fig-indoubt"),
    figure("Started, last 30 min", started.reduce((a, b) => a + b, 0) + (partial ? "+" : ""), "fig-started"),
  );
  $("chart-started").replaceChildren(bars({ started }, ["started"], { started: "#4a7bd0" }));
  $("chart-finished").replaceChildren(bars(finished, OUTCOMES, COLORS), legend(OUTCOMES));
  $("overview-note").textContent =
    `Counted from the transaction list at ${new Date(now).toLocaleTimeString()}` +
    (partial ? `; only the first ${OVERVIEW_MAX_PAGES * 1000} transactions of the window.` : ".") +
    " A transaction finished in a minute is counted at its last update.";
}

async function count(states) {
  const q = new URLSearchParams({ state: states.join(","), page_size: "1000" });
  const page = await api(`/v1/transactions?${q}`);
  const inDoubt = page.transactions.filter((t) => t.in_doubt).length;
  const more = page.next_page_token ? "+" : "";
  return { text: `${page.transactions.length}${more}`, inDoubt: `${inDoubt}${more}` };
}

function figure(title, value, id) {
  return el("div", { class: "figure", id }, el("b", {}, value), title);
}

function legend(keys) {
  return el("div", { class: "legend" },
    ...keys.map((k) => {
      // Through the style object, not a style attribute: the page's CSP forbids inline styles.
      const swatch = el("i", {});
      swatch.style.background = COLORS[k];
      return el("span", {}, swatch, k);
    }));
}

// A stacked bar chart of per-minute counts: series[key][minute].
function bars(series, keys, colors) {
  const W = 420, H = 120, pad = 18, n = 30, bw = (W - pad) / n;
  const totals = new Array(n).fill(0);
  for (const k of keys) series[k].forEach((v, i) => { totals[i] += v; });
  const max = Math.max(1, ...totals);
  const root = svg("svg", { width: W, height: H + 14, viewBox: `0 0 ${W} ${H + 14}`, class: "chart" });
  root.append(svg("text", { x: 0, y: 10 }, String(max)));
  root.append(svg("line", { x1: pad, y1: H, x2: W, y2: H, stroke: "#ccc" }));
  for (let i = 0; i < n; i++) {
    let y = H;
    for (const k of keys) {
      const v = series[k][i];
      if (!v) continue;
      const h = (v / max) * (H - 14);
      y -= h;
      const r = svg("rect", { x: pad + i * bw + 1, y, width: bw - 2, height: h, fill: colors[k] });
      r.append(svg("title", {}, `${k}: ${v}`));
      root.append(r);
    }
  }
  root.append(svg("text", { x: pad, y: H + 12 }, "-30 min"));
  root.append(svg("text", { x: W - 24, y: H + 12 }, "now"));
  return root;
}

// ---- transaction list ----

const list = { tokens: [""], index: 0 };

function filters() {
  const q = new URLSearchParams(location.search);
  const form = $("filters");
  for (const name of ["state", "kind", "label", "from", "to", "id", "size"]) {
    if (q.has(name)) form.elements[name].value = q.get(name);
  }
}

async function transactions() {
  const form = $("filters");
  const f = Object.fromEntries(new FormData(form).entries());
  const q = new URLSearchParams({ page_size: f.size || "20" });
  if (f.state) q.set("state", f.state);
  if (f.label) q.set("label", f.label);
  if (f.from) q.set("created_after", String(new Date(f.from).getTime()));
  if (f.to) q.set("created_before", String(new Date(f.to).getTime()));
  const pageToken = list.tokens[list.index];
  if (pageToken) q.set("page_token", pageToken);
  const page = await api(`/v1/transactions?${q}`);
  const rows = page.transactions.filter(
    (t) => (!f.kind || t.kind === f.kind) && (!f.id || t.tx_id.startsWith(f.id.trim())));
  $("txs").tBodies[0].replaceChildren(...rows.map((t) => el("tr", { "data-id": t.tx_id },
    el("td", { class: "mono" }, el("a", { href: `/ui/transactions/${encodeURIComponent(t.tx_id)}` }, t.tx_id)),
    el("td", {}, t.kind),
    el("td", {}, stateBadge(t.state), t.in_doubt ? " in doubt" : ""),
    el("td", { class: "labels" }, labelsText(t.labels)),
    el("td", {}, when(t.created_at_ms)),
    el("td", {}, when(t.updated_at_ms)),
    el("td", { class: "err" }, t.last_error || ""))));
  list.tokens[list.index + 1] = page.next_page_token || null;
  $("next").disabled = !page.next_page_token;
  $("prev").disabled = list.index === 0;
  $("first").disabled = list.index === 0;
  $("pageno").textContent = `page ${list.index + 1}`;
}

function setupTransactions(refresh) {
  filters();
  $("filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = new FormData($("filters"));
    const q = new URLSearchParams();
    for (const [k, v] of f.entries()) if (v) q.set(k, v);
    history.replaceState(null, "", `${location.pathname}?${q}`);
    list.tokens = [""];
    list.index = 0;
    refresh();
  });
  $("next").addEventListener("click", () => {
    if (list.tokens[list.index + 1]) { list.index += 1; refresh(); }
  });
  $("prev").addEventListener("click", () => {
    if (list.index > 0) { list.index -= 1; refresh(); }
  });
  $("first").addEventListener("click", () => { list.index = 0; refresh(); });
}

// ---- one transaction ----

function txId() {
  return decodeURIComponent(location.pathname.split("/").pop());
}

async function transaction() {
  const id = txId();
  const tx = await api(`/v1/transactions/${encodeURIComponent(id)}`);
  let events = null;
  let eventsError = null;
  try {
    events = await allEvents(id);
  } catch (e) {
    eventsError = explain(e);
  }
  document.title = `${tx.tx_id} · Baton`;
  $("summary").replaceChildren(el("dl", {},
    ...[["Id", el("span", { class: "mono" }, tx.tx_id)], ["Kind", tx.kind],
      ["State", el("span", { id: "tx-state" }, stateBadge(tx.state))],
      ["In doubt", tx.in_doubt ? "yes" : "no"], ["Labels", labelsText(tx.labels)],
      ["Idempotency key", tx.idempotency_key || ""], ["Created", when(tx.created_at_ms)],
      ["Updated", when(tx.updated_at_ms)], ["Deadline", when(tx.deadline_at_ms)],
      ["Owner", `${tx.owner || "none"} (epoch ${tx.epoch})`], ["Last error", tx.last_error || ""],
    ].flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])));
  $("retry").disabled = tx.state !== "failed";
  $("cancel").disabled = FINAL.includes(tx.state) || tx.state === "failed";
  $("branches").tBodies[0].replaceChildren(...tx.branches.map((b) => el("tr", {},
    el("td", {}, b.index), el("td", {}, b.name), el("td", { class: "mono" }, b.target),
    el("td", {}, b.action), el("td", {}, b.kind || ""), el("td", {}, b.state),
    el("td", {}, b.attempts), el("td", { class: "mono" }, preview(b)),
    el("td", { class: "err" }, b.last_error || ""))));
  if (events) {
    $("events").tBodies[0].replaceChildren(...events.map((e) => el("tr", {},
      el("td", {}, e.seq), el("td", {}, when(e.at_ms)), el("td", {}, e.kind),
      el("td", {}, e.branch === null ? "" : e.branch), el("td", { class: "mono" }, e.detail))));
    $("timeline").replaceChildren(timeline(tx, events));
  } else {
    $("events").tBodies[0].replaceChildren(el("tr", {}, el("td", { colspan: 5 }, eventsError)));
    $("timeline").replaceChildren(el("p", { class: "note" }, `No timeline: ${eventsError}`));
  }
  return tx;
}

function preview(b) {
  if (b.output === null || b.output === undefined) return "";
  const text = typeof b.output === "string" ? b.output : JSON.stringify(b.output);
  return text.length > 120 ? `${text.slice(0, 120)}…` : text;
}

// Every event, a page of 1000 at a time, at most 20 pages (a bounded read).
async function allEvents(id) {
  const out = [];
  let after = 0;
  for (let i = 0; i < 20; i++) {
    const page = await api(`/v1/transactions/${encodeURIComponent(id)}/events?after_seq=${after}&limit=1000`);
    out.push(...page.events);
    if (page.events.length < 1000) break;
    after = page.events[page.events.length - 1].seq;
  }
  return out;
}

// One lane per branch; one bar per call attempt (from its *_sent event to the event that ended
// it), coloured by phase and outlined red when the call failed; a line at a 2PC decision.
function timeline(tx, events) {
  const lanes = Math.max(tx.branches.length, 1);
  const W = 900, left = 150, laneH = 28, top = 22, H = top + lanes * laneH + 20;
  const t0 = events.length ? events[0].at_ms : tx.created_at_ms;
  const live = !FINAL.includes(tx.state) && tx.state !== "failed";
  const last = events.length ? events[events.length - 1].at_ms : tx.updated_at_ms;
  const t1 = Math.max(t0 + 1, live ? Date.now() : last);
  const x = (t) => left + ((t - t0) / (t1 - t0)) * (W - left - 20);
  const root = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, id: "timeline-svg" });
  root.append(svg("text", { x: left, y: 12 }, "0 ms"));
  root.append(svg("text", { x: W - 80, y: 12 }, `${t1 - t0} ms`));
  tx.branches.forEach((b, i) => {
    const y = top + i * laneH;
    const lane = svg("g", { class: "lane", "data-branch": i });
    lane.append(svg("rect", { x: 0, y, width: W, height: laneH - 2, fill: i % 2 ? "#fff" : "#f4f6fa" }));
    lane.append(svg("text", { x: 4, y: y + 17 }, `${b.index} ${b.name}`));
    root.append(lane);
  });
  // A call's `*_sent` event is left out of the log when the reply came before it was written:
  // then the bar starts at the branch's previous event, or the transaction's, whichever is later.
  const open = new Map();
  const lastOnBranch = new Map();
  let lastTxEvent = t0;
  for (const e of events) {
    const m = /^([a-z]+)_(sent|ok|error|failed)$/.exec(e.kind);
    if (m && e.branch !== null) {
      const key = `${e.branch}/${m[1]}`;
      if (m[2] === "sent") {
        open.set(key, e);
      } else {
        const since = Math.max(lastTxEvent, lastOnBranch.get(e.branch) || t0);
        const start = open.get(key) || { at_ms: since, branch: e.branch, estimated: true };
        open.delete(key);
        attempt(root, x, top, laneH, start, e, m[1], m[2]);
      }
    } else if (e.branch === null) {
      lastTxEvent = e.at_ms;
    }
    if (e.branch !== null) lastOnBranch.set(e.branch, e.at_ms);
    if (e.kind === "commit_decided" || e.kind === "abort_decided") {
      const dx = x(e.at_ms);
      const g = svg("g", { class: "decision" });
      g.append(svg("line", { x1: dx, y1: top - 4, x2: dx, y2: H - 16, stroke: "#1d2330", "stroke-dasharray": "4 3" }));
      g.append(svg("text", { x: dx + 3, y: H - 4 }, e.kind.replace("_", " ")));
      root.append(g);
    }
  }
  // A call still out: a bar up to now.
  for (const [key, start] of open) {
    attempt(root, x, top, laneH, start, null, key.split("/")[1], "open");
  }
  return root;
}

function attempt(root, x, top, laneH, start, end, phase, outcome) {
  const x1 = x(start.at_ms);
  const x2 = end ? x(end.at_ms) : x(Math.max(start.at_ms, Date.now()));
  const y = top + start.branch * laneH + 5;
  const bad = outcome === "error" || outcome === "failed";
  const r = svg("rect", {
    class: `attempt phase-${phase} outcome-${outcome}`, x: x1, y, width: Math.max(3, x2 - x1),
    height: laneH - 12, fill: COLORS[phase] || "#4a7bd0", stroke: bad ? "#c62828" : "none",
    "stroke-width": bad ? 2 : 0,
  });
  if (start.estimated) r.setAttribute("stroke-dasharray", "3 2");
  const took = end ? `${start.estimated ? "≤ " : ""}${end.at_ms - start.at_ms} ms` : "still out";
  r.append(svg("title", {}, `${phase} ${outcome}: ${took}${end && end.detail ? ` — ${end.detail}` : ""}`));
  root.append(r);
}

// Follows the transaction's Server-Sent Events with the bearer header (EventSource cannot send
// one): each event re-reads the page. Ends after the outcome or when the page goes away.
let following = false;

async function follow(id, refresh) {
  // One stream per page: a retry while the page already follows needs no second one.
  if (following) return;
  following = true;
  try {
    await followStream(id, refresh);
  } finally {
    following = false;
  }
}

async function followStream(id, refresh) {
  let after = 0;
  for (let tries = 0; tries < 100; tries++) {
    try {
      const response = await fetch(`/v1/transactions/${encodeURIComponent(id)}/watch?after_seq=${after}`,
        { headers: headers({ Accept: "text/event-stream" }), credentials: "omit", cache: "no-store" });
      if (!response.ok || !response.body) return;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const idLine = block.split("\n").find((l) => l.startsWith("id:"));
          if (idLine) after = Math.max(after, Number(idLine.slice(3).trim()) || 0);
          if (block.split("\n").some((l) => l.startsWith("event:"))) refresh();
        }
      }
      const tx = await refresh();
      if (tx && (FINAL.includes(tx.state) || tx.state === "failed")) return;
    } catch (_) {
      // A dropped stream: try again shortly, from the last seq seen.
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

function setupOperate(refresh) {
  const result = $("operate-result");
  const run = async (what, body) => {
    if (!window.confirm(`${what} transaction ${txId()}?`)) return;
    result.textContent = "";
    try {
      await api(`/v1/transactions/${encodeURIComponent(txId())}/${what.toLowerCase()}`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
      result.textContent = `${what}: accepted`;
      result.className = "ok";
      refresh();
      follow(txId(), refresh);
    } catch (e) {
      result.textContent = `${what} refused: ${explain(e)}`;
      result.className = "error";
    }
  };
  $("retry").addEventListener("click", () => run("Retry", {}));
  $("cancel").addEventListener("click", () => run("Cancel", { reason: "cancelled from the console" }));
}

// ---- participants and coordinators ----

// Policy, outstanding calls and ejection are as the coordinator serving this console sees them:
// every coordinator balances and ejects on its own.
function secondsLeft(ms) { return `${((ms - Date.now()) / 1000).toFixed(1)} s`; }

async function participants() {
  const found = (await api("/v1/participants")).participants;
  const table = $("participants");
  table.tBodies[0].replaceChildren(...found.map((p) => el("tr", {},
    el("td", {}, p.service), el("td", { class: "mono" }, p.endpoint), el("td", {}, p.weight),
    el("td", {}, p.zone || ""), el("td", {}, p.policy || ""), el("td", {}, p.outstanding),
    el("td", {}, p.ejected_until_ms ? `${when(p.ejected_until_ms)} (${secondsLeft(p.ejected_until_ms)})` : "no"),
    el("td", {}, when(p.expires_at_ms)),
    el("td", {}, p.expires_at_ms ? secondsLeft(p.expires_at_ms) : "never"))));
}

async function coordinators() {
  const found = (await api("/v1/coordinators")).coordinators;
  $("coordinators").tBodies[0].replaceChildren(...found.map((c) => el("tr", {},
    el("td", { class: "mono" }, c.id), el("td", { class: "mono" }, c.address),
    el("td", {}, when(c.started_at_ms)), el("td", {}, ago(c.heartbeat_at_ms)),
    el("td", {}, c.owned), el("td", {}, c.version))));
}

// ---- start ----

function every(ms, load) {
  let timer = null;
  let busy = false;
  let again = false;
  const tick = async () => {
    clearTimeout(timer);
    if (busy) {
      // Asked while a load runs: load once more after it, so the last change is shown.
      again = true;
    } else {
      busy = true;
      try {
        const value = await load();
        showError("");
        return value;
      } catch (e) {
        showError(explain(e));
      } finally {
        busy = false;
        const live = $("live");
        if (again) {
          again = false;
          timer = setTimeout(tick, 0);
        } else if (ms && (!live || live.checked)) {
          timer = setTimeout(tick, ms);
        }
      }
    }
    return undefined;
  };
  return tick;
}

function start() {
  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    location.reload();
  });
  $("signout").hidden = !token();
  $("signout").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); location.reload(); });
  $("who").textContent = token() ? "token set" : "";
  const page = document.body.dataset.page;
  if (page === "overview") every(OVERVIEW_REFRESH_MS, overview)();
  if (page === "transactions") {
    const refresh = every(LIST_REFRESH_MS, transactions);
    setupTransactions(refresh);
    $("live").addEventListener("change", () => refresh());
    refresh();
  }
  if (page === "transaction") {
    const refresh = every(0, transaction);
    setupOperate(refresh);
    // A transaction at rest changes only by an operation, which starts following it then.
    refresh().then((tx) => {
      if (tx && !FINAL.includes(tx.state) && tx.state !== "failed") follow(tx.tx_id, refresh);
    });
  }
  if (page === "participants") every(LIST_REFRESH_MS, participants)();
  if (page === "coordinators") every(LIST_REFRESH_MS, coordinators)();
}

document.addEventListener("DOMContentLoaded", start);
