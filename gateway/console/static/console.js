// Shoal's web console: plain browser JavaScript, no framework and no build step. Every piece of
// text from the API (prompts, labels, error messages, model names) goes into the page through
// textContent or attributes, never innerHTML; the gateway's Content-Security-Policy allows only
// this file as script.

const KEY_STORAGE = "shoal.apiKey";
const PROMPTS_STORAGE = "shoal.prompts";
/** How often the fleet, queue and batch list are fetched again while shown. */
const REFRESH_MS = 2000;

// ---------------------------------------------------------------------------------------------
// DOM helpers

const $ = (id) => document.getElementById(id);

/** An element with attributes and children; strings become text nodes (never markup). */
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = String(v);
    else e.setAttribute(k, String(v));
  }
  for (const c of children) {
    if (c === undefined || c === null) continue;
    e.append(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
  }
  return e;
}

function bytes(n) {
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(1)} GiB`;
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(1)} MiB`;
  if (n >= 2 ** 10) return `${(n / 2 ** 10).toFixed(1)} KiB`;
  return `${n} B`;
}

function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? "" : d.toLocaleString();
}

/** Only http(s) URLs become image sources or links. */
function safeUrl(u) {
  try {
    const url = new URL(u, location.href);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------------
// The API

class ApiFailure extends Error {
  constructor(status, body) {
    const e = body && body.error ? body.error : { code: `http_${status}`, message: `HTTP ${status}` };
    super(e.message);
    this.status = status;
    this.code = e.code;
    this.fields = Array.isArray(e.fields) ? e.fields : [];
  }
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

function authHeaders() {
  const k = apiKey();
  return k ? { authorization: `Bearer ${k}` } : {};
}

async function api(method, path, body, signal) {
  const headers = authHeaders();
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal });
  const type = res.headers.get("content-type") || "";
  const json = type.startsWith("application/json") ? await res.json() : undefined;
  if (!res.ok) {
    const err = new ApiFailure(res.status, json);
    if (res.status === 401) showLogin(err.message);
    throw err;
  }
  return json;
}

/** GET /v1/batch/{id}/events read with fetch (EventSource cannot send the key). */
async function streamEvents(batchId, signal, onEvent) {
  const res = await fetch(`/v1/batch/${encodeURIComponent(batchId)}/events`, { headers: authHeaders(), signal });
  if (!res.ok) {
    const type = res.headers.get("content-type") || "";
    throw new ApiFailure(res.status, type.startsWith("application/json") ? await res.json() : undefined);
  }
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    let end;
    while ((end = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length > 0) onEvent(event, JSON.parse(data.join("\n")));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Views: one is shown at a time; leaving it aborts its timers and streams.

let current = null;

function showError(msg) {
  $("error").textContent = msg || "";
}

function showLogin(message) {
  if (current) current.abort();
  current = null;
  for (const v of document.querySelectorAll(".view")) v.hidden = true;
  $("nav").hidden = true;
  $("sign-out").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("api-key").focus();
}

function route() {
  const hash = location.hash || "#/fleet";
  const m = /^#\/batch\/(.+)$/.exec(hash);
  const name = m ? "batch" : hash.slice(2) || "fleet";
  const views = { fleet: fleetView, queue: queueView, batches: batchesView, usage: usageView, new: newView, batch: batchView };
  const view = views[name] || fleetView;
  if (current) current.abort();
  current = new AbortController();
  showError("");
  $("login").hidden = true;
  $("nav").hidden = false;
  $("sign-out").hidden = apiKey() === "";
  for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== `view-${name}`;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.view === name);
  view(current.signal, m ? decodeURIComponent(m[1]) : undefined);
}

/** Calls `load` now and every REFRESH_MS until the view is left. */
function refreshing(signal, load) {
  let timer;
  const tick = async () => {
    try {
      await load();
      if (!signal.aborted) showError("");
    } catch (err) {
      if (!signal.aborted && err.status !== 401) showError(`${err.code ?? "error"}: ${err.message}`);
      if (err.status === 401) return;
    }
    if (!signal.aborted) timer = setTimeout(tick, REFRESH_MS);
  };
  signal.addEventListener("abort", () => clearTimeout(timer));
  tick();
}

// --- fleet

function vramBar(g) {
  const total = g.vram_total_bytes || 1;
  const pct = (n) => `${((100 * n) / total).toFixed(2)}%`;
  const seg = (cls, n) => {
    const s = el("span", { class: `seg ${cls}`, title: `${cls}: ${bytes(n)}` });
    s.style.width = pct(n);
    return s;
  };
  return el("div", { class: "bar", role: "img", "aria-label": `VRAM used ${bytes(g.vram_used_bytes)}, reserved ${bytes(g.vram_reserved_bytes)}, free ${bytes(g.vram_available_bytes)}` },
    seg("used", g.vram_used_bytes), seg("reserved", g.vram_reserved_bytes), seg("free", g.vram_available_bytes));
}

function workerCard(w) {
  const gpus = w.gpus.map((g) =>
    el("div", { class: "gpu", "data-gpu-index": g.index, "data-vram-total": g.vram_total_bytes },
      el("div", { class: "gpu-name" }, `GPU ${g.index}: ${g.name || "(unnamed)"}`, el("span", { class: "source", text: ` (${g.source})` })),
      vramBar(g),
      el("div", { class: "gpu-numbers" },
        `used ${bytes(g.vram_used_bytes)} · reserved ${bytes(g.vram_reserved_bytes)} · free ${bytes(g.vram_available_bytes)} of ${bytes(g.vram_total_bytes)}`)),
  );
  return el("article", { class: `worker state-${w.state}`, "data-worker-id": w.worker_id },
    el("h3", {}, el("span", { class: "worker-id", text: w.worker_id }), " ", el("span", { class: `badge ${w.state}`, text: w.state })),
    el("dl", {},
      el("dt", { text: "Host" }), el("dd", { text: w.hostname }),
      el("dt", { text: "In flight" }), el("dd", { class: "in-flight", text: w.items_in_flight }),
      el("dt", { text: "Done" }), el("dd", { text: w.items_done }),
      el("dt", { text: "Resident" }), el("dd", { class: "resident", text: w.resident_models.join(", ") || "none" }),
      el("dt", { text: "Serves" }), el("dd", { text: w.models.join(", ") })),
    ...gpus);
}

function fleetView(signal) {
  refreshing(signal, async () => {
    const { workers } = await api("GET", "/v1/workers", undefined, signal);
    if (signal.aborted) return;
    const gpus = workers.flatMap((w) => w.gpus);
    const total = gpus.reduce((s, g) => s + g.vram_total_bytes, 0);
    const free = gpus.reduce((s, g) => s + g.vram_available_bytes, 0);
    const summary = $("fleet-summary");
    summary.textContent = `${workers.length} workers · ${gpus.length} GPUs · ${bytes(free)} free of ${bytes(total)}`;
    summary.dataset.workers = String(workers.length);
    summary.dataset.gpus = String(gpus.length);
    summary.dataset.vramTotal = String(total);
    $("fleet").replaceChildren(...workers.map(workerCard));
  });
}

// --- queue

function queueView(signal) {
  refreshing(signal, async () => {
    const { models } = await api("GET", "/v1/models", undefined, signal);
    if (signal.aborted) return;
    const rows = models
      .filter((m) => m.served_by.length > 0 || (m.queued_items ?? 0) > 0)
      .map((m) =>
        el("tr", { "data-model": m.name, "data-queued-items": m.queued_items, "data-queued-vram": m.queued_vram_bytes },
          el("td", { text: m.name }),
          el("td", { class: "num", text: m.queued_items ?? "?" }),
          el("td", { class: "num", text: m.queued_vram_bytes === undefined ? "?" : bytes(m.queued_vram_bytes) }),
          el("td", { text: m.served_by.join(", ") }),
          el("td", { text: m.resident_on.join(", ") || "none" })),
      );
    $("queue").tBodies[0].replaceChildren(...rows);
  });
}

// --- usage

/** A limit, or "none" where the tenant has none of its own. */
function limitText(n) {
  return n === null || n === undefined ? "none" : String(n);
}

function usageView(signal) {
  const form = $("usage-form");
  const load = async () => {
    const since = $("usage-since").value;
    const { days, limits } = await api("GET", `/v1/usage${since ? `?since=${encodeURIComponent(since)}` : ""}`, undefined, signal);
    if (signal.aborted) return;
    const today = new Date().toISOString().slice(0, 10);
    const acceptedToday = (tenant) => days.filter((d) => d.tenant === tenant && d.day === today).reduce((s, d) => s + d.accepted, 0);
    $("usage-limits").tBodies[0].replaceChildren(
      ...limits.map((l) =>
        el("tr", { "data-tenant": l.tenant },
          el("td", { text: l.tenant }),
          el("td", { class: "num max-items-per-batch", text: limitText(l.max_items_per_batch) }),
          el("td", { class: "num items-per-day", text: limitText(l.items_per_day) }),
          el("td", { class: "num accepted-today", text: l.items_per_day ? `${acceptedToday(l.tenant)} of ${l.items_per_day}` : String(acceptedToday(l.tenant)) }),
          el("td", { class: "num max-queued-items", text: limitText(l.max_queued_items) }))),
    );
    $("usage-limits").hidden = limits.length === 0;
    $("usage-no-limits").hidden = limits.length > 0;
    // Newest day first on the page (the API answers oldest first).
    const rows = [...days].reverse().map((d) =>
      el("tr", { "data-day": d.day, "data-tenant": d.tenant },
        el("td", { text: d.day }),
        el("td", { text: d.tenant || "(no keys)" }),
        el("td", { class: "num succeeded", text: d.succeeded }),
        el("td", { class: "num failed", text: d.failed }),
        el("td", { class: "num cancelled", text: d.cancelled }),
        el("td", { class: "num content-policy", text: d.content_policy }),
        el("td", { class: "num accepted", text: d.accepted }),
        el("td", { class: "num gpu-seconds", title: String(d.gpu_seconds), text: d.gpu_seconds.toFixed(3) })),
    );
    const sum = (k) => days.reduce((s, d) => s + d[k], 0);
    $("usage").tBodies[0].replaceChildren(...rows);
    $("usage").tFoot.replaceChildren(
      el("tr", { class: "total" },
        el("th", { text: "Total" }), el("th", {}),
        el("td", { class: "num succeeded", text: sum("succeeded") }),
        el("td", { class: "num failed", text: sum("failed") }),
        el("td", { class: "num cancelled", text: sum("cancelled") }),
        el("td", { class: "num content-policy", text: sum("content_policy") }),
        el("td", { class: "num accepted", text: sum("accepted") }),
        el("td", { class: "num gpu-seconds", text: sum("gpu_seconds").toFixed(3) })),
    );
  };
  const onSubmit = (e) => {
    e.preventDefault();
    load().catch((err) => err.status !== 401 && showError(`${err.code ?? "error"}: ${err.message}`));
  };
  form.addEventListener("submit", onSubmit);
  signal.addEventListener("abort", () => form.removeEventListener("submit", onSubmit));
  refreshing(signal, load);
}

// --- batches

function progress(b) {
  const done = b.succeeded + b.failed + b.cancelled;
  return el("progress", { max: Math.max(1, b.total), value: done, title: `${done} of ${b.total}` });
}

function batchesView(signal) {
  refreshing(signal, async () => {
    const { batches } = await api("GET", "/v1/batches?page_size=100", undefined, signal);
    if (signal.aborted) return;
    const rows = batches.map((b) =>
      el("tr", { "data-batch-id": b.batch_id },
        el("td", {}, el("a", { href: `#/batch/${encodeURIComponent(b.batch_id)}`, text: b.batch_id })),
        el("td", {}, el("span", { class: `badge ${b.status}`, text: b.status })),
        el("td", {}, progress(b), ` ${b.succeeded + b.failed + b.cancelled}/${b.total}`),
        el("td", { class: "num", text: b.succeeded }),
        el("td", { class: "num", text: b.failed }),
        el("td", { class: "num", text: b.cancelled }),
        el("td", { class: "num", text: b.running }),
        el("td", { class: "num", text: b.queue_position || "" }),
        el("td", { text: when(b.estimated_completion_at) }),
        el("td", { text: when(b.created_at) })),
    );
    $("batches").tBodies[0].replaceChildren(...rows);
  });
}

// --- new batch

/** The requests of the form; a line that is a JSON object is taken whole. */
function requestsFromForm() {
  const common = { width: Number($("width").value), height: Number($("height").value), output_format: $("format").value };
  if ($("quality").value !== "") common.quality = Number($("quality").value);
  const out = [];
  for (const [i, raw] of $("prompts").value.split("\n").entries()) {
    const line = raw.trim();
    if (line === "") continue;
    if (line.startsWith("{")) {
      let obj;
      try {
        obj = JSON.parse(line);
      } catch (err) {
        throw new ApiFailure(400, { error: { code: "invalid_request", message: `line ${i + 1} is not valid JSON: ${err.message}` } });
      }
      out.push(obj);
    } else out.push({ prompt: line, ...common });
  }
  return out;
}

function rememberPrompts(batchId, requests) {
  let all = {};
  try {
    all = JSON.parse(sessionStorage.getItem(PROMPTS_STORAGE) || "{}");
  } catch {}
  all[batchId] = requests.map((r) => (typeof r.prompt === "string" ? r.prompt : JSON.stringify(r)));
  const ids = Object.keys(all);
  for (const id of ids.slice(0, Math.max(0, ids.length - 20))) delete all[id];
  sessionStorage.setItem(PROMPTS_STORAGE, JSON.stringify(all));
}

function promptsOf(batchId) {
  try {
    return JSON.parse(sessionStorage.getItem(PROMPTS_STORAGE) || "{}")[batchId] || [];
  } catch {
    return [];
  }
}

function showProblem(target, err) {
  target.replaceChildren(el("p", { text: `${err.code ?? "error"}: ${err.message}` }), ...(err.fields || []).map((f) => el("p", { class: "field", text: f })));
}

function newView() {}

async function submitBatch(ev) {
  ev.preventDefault();
  const target = $("submit-error");
  target.replaceChildren();
  const button = $("submit-batch");
  button.disabled = true;
  try {
    const requests = requestsFromForm();
    if (requests.length === 0) throw new ApiFailure(400, { error: { code: "invalid_request", message: "write at least one prompt" } });
    const { batch_id } = await api("POST", "/v1/batch?wait=false", { requests });
    rememberPrompts(batch_id, requests);
    location.hash = `#/batch/${encodeURIComponent(batch_id)}`;
  } catch (err) {
    showProblem(target, err);
  } finally {
    button.disabled = false;
  }
}

// --- one batch: its grid fills in as items finish

function cellFor(grid, index) {
  return grid.querySelector(`[data-index="${Number(index)}"]`);
}

function fillCell(cell, r) {
  if (!cell || cell.dataset.status === r.status) return;
  cell.dataset.status = r.status;
  cell.classList.remove("waiting");
  cell.classList.add(r.status);
  const caption = cell.querySelector("figcaption");
  const body = [];
  const src = r.image_url ? safeUrl(r.image_url) : null;
  if (r.status === "success" && src) body.push(el("img", { src, alt: caption.textContent, loading: "lazy" }));
  else if (r.status === "success") body.push(el("div", { class: "no-image", text: "succeeded (no image)" }));
  else body.push(el("div", { class: "failure" }, el("code", { class: "error-code", text: r.error_code || "failed" }), el("p", { class: "error-message", text: r.error || "" })));
  cell.replaceChildren(...body, caption);
}

function showBatch(b) {
  const done = b.succeeded + b.failed + b.cancelled;
  const parts = [`${b.status}`, `${done}/${b.total} done`, `${b.succeeded} succeeded`, `${b.failed} failed`];
  if (b.cancelled) parts.push(`${b.cancelled} cancelled`);
  if (b.running) parts.push(`${b.running} running`);
  if (b.queue_position) parts.push(`queue position ${b.queue_position}`);
  if (b.estimated_completion_at) parts.push(`ETA ${when(b.estimated_completion_at)}`);
  const status = $("batch-status");
  status.textContent = parts.join(" · ");
  status.dataset.status = b.status;
  $("batch-progress").max = Math.max(1, b.total);
  $("batch-progress").value = done;
  const finished = ["completed", "failed", "cancelled"].includes(b.status);
  $("retry").hidden = !(finished && b.failed > 0);
  $("cancel").hidden = finished;
}

function batchView(signal, id) {
  $("batch-id").textContent = id;
  $("batch-status").textContent = "loading…";
  $("batch-message").textContent = "";
  $("retry").hidden = true;
  $("cancel").hidden = true;
  const grid = $("grid");
  grid.replaceChildren();
  grid.dataset.batchId = id;
  const prompts = promptsOf(id);
  let built = false;
  const build = (total) => {
    if (built) return;
    built = true;
    const cells = [];
    for (let i = 0; i < total; i++) {
      cells.push(el("figure", { class: "cell waiting", "data-index": i }, el("div", { class: "placeholder", text: "waiting" }), el("figcaption", { text: prompts[i] ?? `#${i}` })));
    }
    grid.replaceChildren(...cells);
  };
  const apply = (b) => {
    build(b.total);
    showBatch(b);
    for (const r of b.results) fillCell(cellFor(grid, r.index), r);
  };
  const finished = () => ["completed", "failed", "cancelled"].includes($("batch-status").dataset.status);
  // The counts (running, queue position, ETA) are not in item events: fetched again after an
  // item finishes, at most once per REFRESH_MS / 4 however fast items finish.
  let countsDue = false;
  const refreshCounts = () => {
    if (countsDue) return;
    countsDue = true;
    setTimeout(() => {
      countsDue = false;
      if (!signal.aborted && !finished()) api("GET", `/v1/batch/${encodeURIComponent(id)}`, undefined, signal).then(apply, () => {});
    }, REFRESH_MS / 4);
  };
  (async () => {
    // Until the batch is finished or the page is left; a stream cut short (the coordinator
    // restarting) is opened again, and replays the items already finished.
    while (!signal.aborted) {
      try {
        apply(await api("GET", `/v1/batch/${encodeURIComponent(id)}`, undefined, signal));
        if (finished()) return;
        await streamEvents(id, signal, (event, data) => {
          if (event === "item") {
            fillCell(cellFor(grid, data.index), data);
            refreshCounts();
          } else if (event === "batch") apply(data);
          else if (event === "error") showError(`${data.error?.code}: ${data.error?.message}`);
        });
        if (finished()) return;
      } catch (err) {
        if (signal.aborted || err.status === 401 || err.status === 404) {
          if (!signal.aborted && err.status === 404) showError(`${err.code}: ${err.message}`);
          return;
        }
        showError(`${err.code ?? "error"}: ${err.message}`);
      }
      await new Promise((r) => setTimeout(r, REFRESH_MS));
    }
  })();
}

async function batchAction(action) {
  const id = $("grid").dataset.batchId;
  const msg = $("batch-message");
  msg.textContent = "";
  try {
    const r = await api("POST", `/v1/batch/${encodeURIComponent(id)}/${action}`);
    if (action === "retry") location.hash = `#/batch/${encodeURIComponent(r.batch_id)}`;
    else showBatch(r);
  } catch (err) {
    msg.textContent = `${err.code ?? "error"}: ${err.message}`;
  }
}

// ---------------------------------------------------------------------------------------------

async function start() {
  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const key = $("api-key").value.trim();
    sessionStorage.setItem(KEY_STORAGE, key);
    $("api-key").value = "";
    try {
      await api("GET", "/v1/workers");
      route();
    } catch (err) {
      if (err.status !== 401) {
        route();
        showError(`${err.code ?? "error"}: ${err.message}`);
      } else showLogin(`${err.message} (check the key)`);
    }
  });
  $("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    showLogin("");
  });
  $("new-batch").addEventListener("submit", submitBatch);
  $("retry").addEventListener("click", () => batchAction("retry"));
  $("cancel").addEventListener("click", () => batchAction("cancel"));
  window.addEventListener("hashchange", () => {
    if ($("login").hidden) route();
  });
  // Open without a key when the gateway's coordinator has none; otherwise ask for one.
  try {
    await api("GET", "/v1/workers");
    route();
  } catch (err) {
    if (err.status !== 401) {
      route();
      showError(`${err.code ?? "error"}: ${err.message}`);
    }
  }
}

start();
