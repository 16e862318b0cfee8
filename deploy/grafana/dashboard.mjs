#!/usr/bin/env node
// Generates deploy/grafana/shoal-dashboard.json, the Grafana dashboard for a Shoal fleet.
//
//   node deploy/grafana/dashboard.mjs           writes the JSON next to this file
//   node deploy/grafana/dashboard.mjs --check   exits 1 when the committed JSON is out of date
//
// Edit the panels here, not in the JSON: a unit test fails when the two differ, another when a
// query names a metric that no Shoal process exports, and an integration test runs every query
// against a real Prometheus scraping a running fleet.

import { readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

export const DASHBOARD_PATH = fileURLToPath(new URL("./shoal-dashboard.json", import.meta.url));

const DS = { type: "prometheus", uid: "${datasource}" };

/** Grafana's per-query rate window; `$__rate_interval` stays correct for any scrape interval. */
const W = "$__rate_interval";

/**
 * Every Shoal process exports `shoal_build_info{role}` = 1; joining on it keeps the process
 * panels to Shoal's own targets in a Prometheus that scrapes other jobs too.
 */
const shoalOnly = (expr) => `${expr} * on (job, instance) group_left (role) shoal_build_info`;

/** One target; `legend` is a Grafana legend format such as "{{model}}". */
const q = (expr, legend = "") => ({ expr, legend });

const percentiles = (metric, by, matchers = "", quantiles = [0.5, 0.95, 0.99]) =>
  quantiles.map((p) =>
    q(
      `histogram_quantile(${p}, sum by (le${by.map((l) => `, ${l}`).join("")}) (rate(${metric}_bucket${matchers}[${W}])))`,
      `p${Math.round(p * 100)}${by.map((l) => ` {{${l}}}`).join("")}`,
    ),
  );

/** The dashboard as rows of panels; sizes are in Grafana grid units (24 wide). */
const ROWS = [
  {
    title: "Overview",
    panels: [
      { type: "stat", title: "Throughput", unit: "suffix: items/s", w: 4, h: 4, description: "Items that succeeded per second, fleet-wide.", targets: [q(`sum(rate(shoal_items_total{status="succeeded"}[${W}]))`)] },
      { type: "stat", title: "Items waiting", unit: "short", w: 4, h: 4, description: "Items queued for a GPU (shoal_queue_items).", targets: [q("sum(shoal_queue_items)")] },
      { type: "stat", title: "Items running", unit: "short", w: 4, h: 4, description: "Items assigned to workers and not finished.", targets: [q("sum(shoal_items_in_flight)")] },
      { type: "stat", title: "Workers ready", unit: "short", w: 4, h: 4, description: "Workers taking items.", thresholds: [["red", null], ["green", 1]], targets: [q('sum(shoal_workers{state="ready"})')] },
      {
        type: "stat",
        title: "Fleet utilization",
        unit: "percentunit",
        w: 4,
        h: 4,
        description: "Busy GPU seconds per GPU second: the share of time GPUs held at least one item.",
        targets: [q(`sum(rate(shoal_worker_busy_seconds_total[${W}])) / count(shoal_worker_busy_seconds_total)`)],
      },
      {
        type: "stat",
        title: "Failed items (5m)",
        unit: "percentunit",
        w: 4,
        h: 4,
        description: "Failed items among finished ones over the last 5 minutes.",
        thresholds: [["green", null], ["orange", 0.05], ["red", 0.1]],
        targets: [q('sum(rate(shoal_items_total{status="failed"}[5m])) / sum(rate(shoal_items_total{status=~"succeeded|failed"}[5m]))')],
      },
    ],
  },
  {
    title: "Throughput",
    panels: [
      {
        title: "Throughput by status and model",
        unit: "suffix: items/s",
        w: 16,
        description: "Items reaching a terminal state per second (shoal_items_total), by status and model.",
        targets: [q(`sum by (status, model) (rate(shoal_items_total{model=~"$model"}[${W}]))`, "{{status}} {{model}}")],
      },
      {
        title: "Batches by state",
        unit: "suffix: batches/s",
        w: 8,
        description: "Batches submitted and batches finished, by terminal state.",
        targets: [q(`sum by (state) (rate(shoal_batches_total[${W}]))`, "{{state}}")],
      },
    ],
  },
  {
    title: "Latency",
    panels: [
      {
        title: "Queue latency percentiles",
        unit: "s",
        w: 8,
        description: "Time from submission to the start of the attempt that finished the item.",
        targets: percentiles("shoal_item_queue_seconds", ["model"], '{model=~"$model"}'),
      },
      {
        title: "Run latency percentiles",
        unit: "s",
        w: 8,
        description: "Time a worker spent on the item's last attempt, as the coordinator records it.",
        targets: percentiles("shoal_item_run_seconds", ["model"], '{model=~"$model"}'),
      },
      {
        title: "Batch latency percentiles",
        unit: "s",
        w: 8,
        description: "Time from submission to the terminal batch.",
        targets: percentiles("shoal_batch_duration_seconds", []),
      },
    ],
  },
  {
    title: "Queue and capacity",
    panels: [
      {
        title: "Queue depth",
        unit: "short",
        w: 8,
        description: "Items waiting for a GPU, by model, and items running.",
        targets: [q('sum by (model) (shoal_queue_items{model=~"$model"})', "waiting {{model}}"), q("sum(shoal_items_in_flight)", "running")],
      },
      {
        title: "VRAM backlog and placeable VRAM",
        unit: "bytes",
        w: 8,
        description:
          "VRAM the waiting items need, by model (scale up when it stays above the placeable VRAM), and the VRAM the scheduler can still place: free minus reserved, summed over GPUs.",
        targets: [
          q('sum by (model) (shoal_queue_vram_bytes{model=~"$model"})', "backlog {{model}}"),
          q("sum(clamp_min(shoal_worker_vram_free_bytes - shoal_worker_vram_reserved_bytes, 0))", "placeable"),
        ],
      },
      {
        title: "Workers by state",
        unit: "short",
        w: 8,
        description: "Workers the coordinator knows from heartbeats: ready, draining, lost (kept 10 minutes).",
        stack: true,
        targets: [q("sum by (state) (shoal_workers)", "{{state}}")],
      },
    ],
  },
  {
    title: "GPUs",
    panels: [
      {
        title: "VRAM per GPU: total, free, reserved",
        unit: "bytes",
        w: 12,
        description:
          "Per GPU: total and free VRAM as its worker reports it, and VRAM the coordinator reserved for items the worker has not counted yet. Free minus reserved is what placement may still use.",
        targets: [
          q('max by (worker, gpu) (shoal_worker_vram_total_bytes{worker=~"$worker"})', "{{worker}} gpu{{gpu}} total"),
          q('max by (worker, gpu) (shoal_worker_vram_free_bytes{worker=~"$worker"})', "{{worker}} gpu{{gpu}} free"),
          q('max by (worker, gpu) (shoal_worker_vram_reserved_bytes{worker=~"$worker"})', "{{worker}} gpu{{gpu}} reserved"),
        ],
      },
      {
        title: "Fleet utilization (busy seconds / GPU seconds)",
        unit: "percentunit",
        w: 12,
        max: 1,
        description: "Share of wall-clock time each GPU held at least one item, and the fleet's average.",
        targets: [
          q(`sum(rate(shoal_worker_busy_seconds_total[${W}])) / count(shoal_worker_busy_seconds_total)`, "fleet"),
          q(`max by (worker, gpu) (rate(shoal_worker_busy_seconds_total{worker=~"$worker"}[${W}]))`, "{{worker}} gpu{{gpu}}"),
        ],
      },
      {
        title: "Resident models per worker",
        unit: "short",
        w: 8,
        description: "Models whose sessions are loaded on each worker.",
        targets: [q('sum by (worker) (shoal_worker_resident_models{worker=~"$worker"})', "{{worker}}")],
      },
      {
        title: "Model loads",
        unit: "short",
        w: 8,
        description: "Model loads per interval, by worker and model. Many loads mean models are evicted and reloaded: add VRAM or pin models to workers.",
        targets: [q(`sum by (worker, model) (increase(shoal_worker_model_loads_total{worker=~"$worker"}[${W}]))`, "{{worker}} {{model}}")],
      },
      {
        title: "Model load time (p95)",
        unit: "s",
        w: 8,
        description: "95th percentile of model load time where the inference backend times its loads.",
        targets: [q(`histogram_quantile(0.95, sum by (le, model) (rate(shoal_worker_model_load_seconds_bucket{worker=~"$worker"}[${W}])))`, "{{model}}")],
      },
    ],
  },
  {
    title: "Failures and retries",
    panels: [
      {
        title: "Failures by code",
        unit: "suffix: items/s",
        w: 8,
        description: "Failed items per second by error code (OUT_OF_MEMORY, WORKER_LOST, TIMEOUT, ...).",
        stack: true,
        targets: [q(`sum by (code) (rate(shoal_items_total{status="failed", model=~"$model"}[${W}]))`, "{{code}}")],
      },
      {
        title: "Retries and stale results",
        unit: "suffix: attempts/s",
        w: 8,
        description: "Attempts placed again (retried) and late or duplicate results that were ignored (stale_ignored).",
        targets: [q(`sum by (outcome) (rate(shoal_item_attempts_total{outcome=~"retried|stale_ignored"}[${W}]))`, "{{outcome}}")],
      },
      {
        title: "Workers lost",
        unit: "short",
        w: 8,
        description: "Workers that stopped heartbeating, per interval. Their items are placed again.",
        targets: [q(`sum(increase(shoal_workers_lost_total[${W}]))`, "lost")],
      },
    ],
  },
  {
    title: "API and processes",
    panels: [
      {
        title: "gRPC requests by method and code",
        unit: "reqps",
        w: 12,
        description: "RPCs completed per second (grpc_server_handled_total).",
        targets: [q(`sum by (grpc_method, grpc_code) (rate(grpc_server_handled_total[${W}]))`, "{{grpc_method}} {{grpc_code}}")],
      },
      {
        title: "gRPC handling time (p95)",
        unit: "s",
        w: 12,
        description: "95th percentile of RPC handling time by method. RunBatch and WatchBatch last as long as their batch.",
        targets: [q(`histogram_quantile(0.95, sum by (le, grpc_method) (rate(grpc_server_handling_seconds_bucket[${W}])))`, "{{grpc_method}}")],
      },
      {
        title: "Process CPU",
        unit: "percentunit",
        w: 8,
        description: "CPU seconds per second of each Shoal process.",
        targets: [q(shoalOnly(`rate(process_cpu_seconds_total[${W}])`), "{{role}} {{instance}}")],
      },
      {
        title: "Process resident memory",
        unit: "bytes",
        w: 8,
        description: "Resident memory of each Shoal process.",
        targets: [q(shoalOnly("process_resident_memory_bytes"), "{{role}} {{instance}}")],
      },
      {
        title: "Event loop lag (p99)",
        unit: "s",
        w: 8,
        description: "Node.js event loop lag. High values on a worker delay heartbeats.",
        targets: [q(shoalOnly("nodejs_eventloop_lag_p99_seconds"), "{{role}} {{instance}}")],
      },
    ],
  },
];

const REF_IDS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";

function thresholds(steps) {
  return { mode: "absolute", steps: steps.map(([color, value]) => ({ color, value })) };
}

function panel(p, id, gridPos) {
  const targets = p.targets.map((t, i) => ({ datasource: DS, expr: t.expr, legendFormat: t.legend, range: true, refId: REF_IDS[i] }));
  const defaults = { unit: p.unit, min: 0, ...(p.max !== undefined ? { max: p.max } : {}) };
  if (p.type === "stat") {
    return {
      id,
      type: "stat",
      title: p.title,
      description: p.description,
      datasource: DS,
      gridPos,
      fieldConfig: { defaults: { ...defaults, color: { mode: "thresholds" }, thresholds: thresholds(p.thresholds ?? [["green", null]]) }, overrides: [] },
      options: { colorMode: "value", graphMode: "area", justifyMode: "auto", orientation: "auto", textMode: "auto", reduceOptions: { calcs: ["lastNotNull"], fields: "", values: false } },
      targets,
    };
  }
  return {
    id,
    type: "timeseries",
    title: p.title,
    description: p.description,
    datasource: DS,
    gridPos,
    fieldConfig: {
      defaults: {
        ...defaults,
        color: { mode: "palette-classic" },
        custom: { drawStyle: "line", lineWidth: 1, fillOpacity: p.stack ? 40 : 10, showPoints: "never", spanNulls: false, stacking: { mode: p.stack ? "normal" : "none", group: "A" } },
        thresholds: thresholds([["green", null]]),
      },
      overrides: [],
    },
    options: {
      legend: { displayMode: "table", placement: "bottom", showLegend: true, calcs: ["lastNotNull", "max"] },
      tooltip: { mode: "multi", sort: "desc" },
    },
    targets,
  };
}

function queryVariable(name, label, query) {
  return {
    name,
    label,
    type: "query",
    datasource: DS,
    definition: query,
    query: { query, refId: "PrometheusVariableQueryEditor-VariableQuery" },
    includeAll: true,
    multi: true,
    allValue: ".*",
    current: { selected: true, text: ["All"], value: ["$__all"] },
    refresh: 2,
    sort: 1,
    regex: "",
    hide: 0,
    options: [],
  };
}

/** The dashboard object, the same every time. */
export function buildDashboard() {
  const panels = [];
  let id = 1;
  let y = 0;
  for (const row of ROWS) {
    panels.push({ id: id++, type: "row", title: row.title, collapsed: false, gridPos: { h: 1, w: 24, x: 0, y }, panels: [] });
    y += 1;
    let x = 0;
    let rowHeight = 0;
    for (const p of row.panels) {
      const h = p.h ?? 8;
      if (x + p.w > 24) {
        x = 0;
        y += rowHeight;
        rowHeight = 0;
      }
      panels.push(panel(p, id++, { h, w: p.w, x, y }));
      x += p.w;
      rowHeight = Math.max(rowHeight, h);
    }
    y += rowHeight;
  }
  return {
    id: null,
    uid: "shoal-fleet",
    title: "Shoal fleet",
    description: "Throughput, latency, queue, VRAM and health of a Shoal GPU worker fleet.",
    tags: ["shoal"],
    timezone: "browser",
    editable: true,
    graphTooltip: 1,
    fiscalYearStartMonth: 0,
    liveNow: false,
    refresh: "10s",
    schemaVersion: 39,
    version: 1,
    time: { from: "now-1h", to: "now" },
    timepicker: {},
    links: [],
    annotations: {
      list: [
        {
          builtIn: 1,
          datasource: { type: "grafana", uid: "-- Grafana --" },
          enable: true,
          hide: true,
          iconColor: "rgba(0, 211, 255, 1)",
          name: "Annotations & Alerts",
          type: "dashboard",
        },
      ],
    },
    templating: {
      list: [
        { name: "datasource", label: "Data source", type: "datasource", query: "prometheus", current: {}, hide: 0, includeAll: false, multi: false, options: [], refresh: 1, regex: "" },
        queryVariable("model", "Model", "label_values(shoal_items_total, model)"),
        queryVariable("worker", "Worker", "label_values(shoal_worker_vram_total_bytes, worker)"),
      ],
    },
    panels,
  };
}

export function renderDashboard() {
  return JSON.stringify(buildDashboard(), null, 2) + "\n";
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const text = renderDashboard();
  if (process.argv.includes("--check")) {
    let current = "";
    try {
      current = readFileSync(DASHBOARD_PATH, "utf8");
    } catch {
      /* missing: out of date */
    }
    if (current !== text) {
      process.stderr.write(`${DASHBOARD_PATH} is out of date: run node deploy/grafana/dashboard.mjs\n`);
      process.exit(1);
    }
  } else {
    writeFileSync(DASHBOARD_PATH, text);
    process.stderr.write(`wrote ${DASHBOARD_PATH}\n`);
  }
}
