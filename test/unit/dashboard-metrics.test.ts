// The dashboard and the alert rules may only name metrics (and labels) that a Shoal process
// exports: the set is read from the real registries of CoordinatorMetrics and WorkerMetrics, so
// renaming a metric without updating deploy/ fails here, long before an operator sees an empty
// panel. The same file checks the fixed metric names of the contract and the behaviour of the
// metrics that are computed rather than merely counted (busy time, model loads).

import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import type { Registry } from "prom-client";
import { CoordinatorMetrics } from "../../coordinator/metrics.js";
import { ItemStatus } from "../../proto/gen/shoal/v1/shoal.js";
import { WorkerMetrics } from "../../worker/metrics.js";
import { ROOT } from "../harness/processes.js";

const DASHBOARD = join(ROOT, "deploy/grafana/shoal-dashboard.json");
const ALERTS = join(ROOT, "deploy/prometheus/alerts.yml");

/** Series names a registry exposes, with the label names each may carry. */
type Exported = Map<string, Set<string>>;

/** Labels every scraped series gets from Prometheus, and series Prometheus makes itself. */
const TARGET_LABELS = ["job", "instance"];
const SYNTHETIC: Exported = new Map([["up", new Set(TARGET_LABELS)]]);

async function exportedBy(registry: Registry): Promise<Exported> {
  const out: Exported = new Map();
  for (const m of await registry.getMetricsAsJSON()) {
    const metric = registry.getSingleMetric(m.name) as unknown as { labelNames?: string[] } | undefined;
    const labels = new Set([...(metric?.labelNames ?? []), ...TARGET_LABELS]);
    for (const v of m.values) for (const l of Object.keys(v.labels)) labels.add(l);
    const type = String(m.type);
    if (type === "histogram") {
      out.set(`${m.name}_bucket`, new Set([...labels, "le"]));
      out.set(`${m.name}_sum`, labels);
      out.set(`${m.name}_count`, labels);
    } else if (type === "summary") {
      out.set(m.name, new Set([...labels, "quantile"]));
      out.set(`${m.name}_sum`, labels);
      out.set(`${m.name}_count`, labels);
    } else {
      out.set(m.name, labels);
    }
  }
  return out;
}

function merge(...sets: Exported[]): Exported {
  const out: Exported = new Map();
  for (const s of sets) for (const [name, labels] of s) out.set(name, new Set([...(out.get(name) ?? []), ...labels]));
  return out;
}

async function registries() {
  const coordinator = await exportedBy(new CoordinatorMetrics().registry);
  const worker = await exportedBy(new WorkerMetrics("w-test").registry);
  return { coordinator, worker, all: merge(coordinator, worker, SYNTHETIC) };
}

// --- PromQL, as far as names go ---------------------------------------------------------------

const KEYWORDS = new Set(["by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset", "inf", "nan"]);
const GROUPING = /\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)/g;

/** Grafana's variables become values Prometheus accepts. */
export function substituteGrafanaVariables(expr: string): string {
  return expr
    .replace(/\$__rate_interval|\$__interval|\$__range/g, "1m")
    .replace(/\$\{(\w+)(:\w+)?\}|\$(\w+)/g, ".*");
}

/** Metric names a PromQL expression selects (functions, keywords and label names left out). */
export function metricNames(expr: string): string[] {
  let s = substituteGrafanaVariables(expr);
  s = s.replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""');
  s = s.replace(/\{[^}]*\}/g, " ").replace(/\[[^\]]*\]/g, " ");
  s = s.replace(GROUPING, " ");
  const names = new Set<string>();
  for (const m of s.matchAll(/(?<![\w:.])([a-zA-Z_:][\w:]*)(?![\w:])(\s*\()?/g)) {
    if (m[2] !== undefined) continue; // a function or an aggregation
    if (KEYWORDS.has(m[1]!.toLowerCase())) continue;
    names.add(m[1]!);
  }
  return [...names];
}

/** Label names an expression uses: in matchers (per metric), in grouping clauses, in a legend. */
export function labelUses(expr: string, legend = ""): { matchers: [string, string][]; grouping: string[] } {
  const s = substituteGrafanaVariables(expr);
  const matchers: [string, string][] = [];
  for (const m of s.matchAll(/([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}/g)) {
    for (const l of m[2]!.matchAll(/([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)/g)) matchers.push([m[1]!, l[1]!]);
  }
  const grouping: string[] = [];
  for (const m of s.matchAll(GROUPING)) for (const l of m[2]!.split(",")) if (l.trim()) grouping.push(l.trim());
  for (const m of legend.matchAll(/\{\{\s*(\w+)\s*\}\}/g)) grouping.push(m[1]!);
  return { matchers, grouping };
}

/** What is wrong with one expression against the exported set: unknown metrics and labels. */
export function problems(expr: string, exported: Exported, legend = ""): string[] {
  const out: string[] = [];
  const names = metricNames(expr);
  const known = new Set<string>(["le"]);
  for (const n of names) {
    const labels = exported.get(n);
    if (!labels) out.push(`unknown metric ${n}`);
    else for (const l of labels) known.add(l);
  }
  const { matchers, grouping } = labelUses(expr, legend);
  for (const [metric, label] of matchers) {
    const labels = exported.get(metric);
    if (labels && !labels.has(label)) out.push(`${metric} has no label ${label}`);
  }
  for (const l of grouping) if (!known.has(l)) out.push(`no metric in the expression has label ${l}`);
  return out;
}

// --- deploy/ --------------------------------------------------------------------------------

interface DashboardQuery {
  where: string;
  expr: string;
  legend: string;
}

interface GrafanaPanel {
  id: number;
  type: string;
  title: string;
  gridPos: { x: number; y: number; w: number; h: number };
  targets?: { expr: string; legendFormat?: string; refId: string }[];
}

interface GrafanaDashboard {
  uid: string;
  panels: GrafanaPanel[];
  templating: { list: { name: string; type: string; query: unknown }[] };
}

function dashboard(): GrafanaDashboard {
  return JSON.parse(readFileSync(DASHBOARD, "utf8")) as GrafanaDashboard;
}

function dashboardQueries(d: GrafanaDashboard): DashboardQuery[] {
  const out: DashboardQuery[] = [];
  for (const p of d.panels) for (const t of p.targets ?? []) out.push({ where: `panel "${p.title}" ${t.refId}`, expr: t.expr, legend: t.legendFormat ?? "" });
  return out;
}

/** label_values(metric, label) of the query variables, as a selector and a grouping. */
function variableQueries(d: GrafanaDashboard): DashboardQuery[] {
  const out: DashboardQuery[] = [];
  for (const v of d.templating.list) {
    if (v.type !== "query") continue;
    const q = typeof v.query === "string" ? v.query : (v.query as { query: string }).query;
    const m = /^label_values\(\s*([^,]+?)\s*,\s*(\w+)\s*\)$/.exec(q);
    assert.ok(m, `variable ${v.name}: expected label_values(metric, label), got ${q}`);
    out.push({ where: `variable ${v.name}`, expr: `count by (${m[2]}) (${m[1]})`, legend: "" });
  }
  return out;
}

/** The `expr:` of every rule in alerts.yml (plain or folded block scalars). */
export function alertExprs(yaml: string): { alert: string; expr: string }[] {
  const lines = yaml.split("\n");
  const out: { alert: string; expr: string }[] = [];
  let alert = "";
  for (let i = 0; i < lines.length; i++) {
    const a = /^\s*-\s*alert:\s*(\S+)/.exec(lines[i]!);
    if (a) alert = a[1]!;
    const m = /^(\s*)expr:\s*(.*)$/.exec(lines[i]!);
    if (!m) continue;
    let expr = m[2]!.trim();
    if (/^[>|][-+]?$/.test(expr)) {
      const indent = m[1]!.length;
      const body: string[] = [];
      while (i + 1 < lines.length && (lines[i + 1]!.trim() === "" || lines[i + 1]!.search(/\S/) > indent)) body.push(lines[++i]!.trim());
      expr = body.join(" ").trim();
    } else if (/^(['"]).*\1$/.test(expr)) {
      expr = expr.slice(1, -1);
    }
    out.push({ alert, expr });
  }
  return out;
}

describe("dashboard metrics - deploy/ names only what Shoal exports", () => {
  test("dashboard metrics - every dashboard query and variable names exported metrics and labels", async () => {
    const { all } = await registries();
    const d = dashboard();
    const queries = [...dashboardQueries(d), ...variableQueries(d)];
    assert.ok(queries.length >= 30, `expected the dashboard's queries, found ${queries.length}`);
    const bad = queries.flatMap((q) => problems(q.expr, all, q.legend).map((p) => `${q.where}: ${p} in ${q.expr}`));
    assert.deepEqual(bad, []);
  });

  test("dashboard metrics - every alert expression names exported metrics and labels", async () => {
    const { all } = await registries();
    const yaml = readFileSync(ALERTS, "utf8");
    const rules = alertExprs(yaml);
    assert.equal(rules.length, (yaml.match(/^\s*-\s*alert:/gm) ?? []).length, "every rule's expr was read");
    assert.deepEqual(
      rules.map((r) => r.alert).sort(),
      [
        "ShoalCoordinatorDown",
        "ShoalHighFailureRate",
        "ShoalNoWorkers",
        "ShoalQueueGrowingWhileWorkersIdle",
        "ShoalStorageFull",
        "ShoalTerminalWritesFailing",
        "ShoalUnexpectedError",
        "ShoalVramExhausted",
        "ShoalWorkerLost",
      ],
    );
    const bad = rules.flatMap((r) => problems(r.expr, all).map((p) => `${r.alert}: ${p} in ${r.expr}`));
    assert.deepEqual(bad, []);
  });

  test("dashboard metrics - a misspelt metric or label is caught", async () => {
    const { all } = await registries();
    assert.deepEqual(problems('sum(rate(shoal_itemz_total{status="failed"}[$__rate_interval]))', all), ["unknown metric shoal_itemz_total"]);
    assert.deepEqual(problems('sum(rate(shoal_items_total{stauts="failed"}[5m]))', all), ["shoal_items_total has no label stauts"]);
    assert.deepEqual(problems("sum by (modle) (shoal_queue_items)", all), ["no metric in the expression has label modle"]);
    assert.deepEqual(problems("sum(shoal_queue_items)", all, "{{worker}}"), ["no metric in the expression has label worker"]);
    // A histogram is only its _bucket, _sum and _count series.
    assert.deepEqual(problems("rate(shoal_item_run_seconds[5m])", all), ["unknown metric shoal_item_run_seconds"]);
    assert.deepEqual(problems("histogram_quantile(0.9, sum by (le) (rate(shoal_item_run_seconds_bucket[5m])))", all), []);
    assert.deepEqual(
      metricNames('max by (worker, gpu) (a_bytes - b_bytes) / on () group_left (role) c_info and on () sum(rate(d_total{x=~"$model"}[$__rate_interval] offset 5m)) > 0.05'),
      ["a_bytes", "b_bytes", "c_info", "d_total"],
    );
  });

  test("dashboard metrics - the committed dashboard JSON is what deploy/grafana/dashboard.mjs generates", async () => {
    const gen = (await import(pathToFileURL(join(ROOT, "deploy/grafana/dashboard.mjs")).href)) as { renderDashboard(): string };
    assert.equal(readFileSync(DASHBOARD, "utf8"), gen.renderDashboard(), "run: node deploy/grafana/dashboard.mjs");
  });

  test("dashboard metrics - panels have unique ids, fit the 24-column grid and do not overlap", () => {
    const d = dashboard();
    const ids = d.panels.map((p) => p.id);
    assert.equal(new Set(ids).size, ids.length);
    const cells = new Set<string>();
    for (const p of d.panels) {
      const { x, y, w, h } = p.gridPos;
      assert.ok(x >= 0 && w > 0 && x + w <= 24, `panel "${p.title}" is outside the grid`);
      for (let i = x; i < x + w; i++) {
        for (let j = y; j < y + h; j++) {
          assert.ok(!cells.has(`${i},${j}`), `panel "${p.title}" overlaps another at ${i},${j}`);
          cells.add(`${i},${j}`);
        }
      }
      if (p.type !== "row") assert.ok((p.targets ?? []).length > 0, `panel "${p.title}" has no query`);
    }
  });

  test("dashboard metrics - the issue's panels are there", () => {
    const titles = dashboard().panels.map((p) => p.title);
    for (const wanted of [
      /^Throughput by status and model/,
      /^Queue latency percentiles/,
      /^Run latency percentiles/,
      /^Batch latency percentiles/,
      /^Queue depth/,
      /^VRAM backlog/,
      /^Workers by state/,
      /^VRAM per GPU: total, free, reserved/,
      /^Fleet utilization \(busy seconds \/ GPU seconds\)/,
      /^Failures by code/,
      /^Retries and stale results/,
    ]) {
      assert.ok(titles.some((t) => wanted.test(t)), `no panel titled ${wanted}`);
    }
  });
});

describe("dashboard metrics - the contract's metric names", () => {
  test("dashboard metrics - the coordinator and the workers export the fixed names with bounded labels", async () => {
    const { coordinator, worker } = await registries();
    const has = (where: Exported, name: string, labels: string[]) => {
      const got = where.get(name);
      assert.ok(got, `${name} is not exported`);
      for (const l of labels) assert.ok(got.has(l), `${name} lacks label ${l}`);
    };
    has(coordinator, "shoal_batches_total", ["state"]);
    has(coordinator, "shoal_items_total", ["model", "status", "code"]);
    has(coordinator, "shoal_item_attempts_total", ["outcome"]);
    has(coordinator, "shoal_item_queue_seconds_bucket", ["model", "le"]);
    has(coordinator, "shoal_item_run_seconds_bucket", ["model", "le"]);
    has(coordinator, "shoal_batch_duration_seconds_bucket", ["le"]);
    has(coordinator, "shoal_queue_items", ["model"]);
    has(coordinator, "shoal_items_in_flight", []);
    has(coordinator, "shoal_workers", ["state"]);
    has(coordinator, "shoal_queue_vram_bytes", ["model"]);
    has(coordinator, "shoal_worker_vram_reserved_bytes", ["worker", "gpu"]);
    has(coordinator, "grpc_server_handled_total", ["grpc_method", "grpc_code"]);
    has(coordinator, "grpc_server_handling_seconds_bucket", ["grpc_method"]);
    for (const where of [coordinator, worker]) {
      has(where, "process_cpu_seconds_total", []);
      has(where, "nodejs_eventloop_lag_p99_seconds", []);
      has(where, "shoal_build_info", ["role", "version"]);
      has(where, "shoal_worker_vram_total_bytes", ["worker", "gpu"]);
      has(where, "shoal_worker_vram_free_bytes", ["worker", "gpu"]);
    }
    has(worker, "shoal_worker_busy_seconds_total", ["worker", "gpu"]);
    has(worker, "shoal_worker_model_loads_total", ["worker", "model"]);
    has(worker, "shoal_worker_model_load_seconds_bucket", ["worker", "model"]);
    has(worker, "shoal_worker_resident_models", ["worker", "model"]);

    const unbounded = /^(batch|batch_id|item|index|item_index|prompt|key|api_key|token|lease|idempotency_key)$/;
    for (const [name, labels] of merge(coordinator, worker)) {
      for (const l of labels) assert.ok(!unbounded.test(l), `${name} has an unbounded label ${l}`);
    }
  });

  test("dashboard metrics - attempt outcomes and batch states start at zero", async () => {
    const text = await new CoordinatorMetrics().registry.metrics();
    for (const outcome of ["succeeded", "failed", "retried", "stale_ignored"]) {
      assert.match(text, new RegExp(`^shoal_item_attempts_total\\{outcome="${outcome}"\\} 0$`, "m"));
    }
    for (const state of ["submitted", "completed", "failed", "cancelled"]) assert.match(text, new RegExp(`^shoal_batches_total\\{state="${state}"\\} 0$`, "m"));
    assert.match(text, /^shoal_workers\{state="ready"\} 0$/m);
  });
});

describe("dashboard metrics - worker metrics that are computed", () => {
  const value = async (m: WorkerMetrics, name: string, labels: Record<string, string>) => {
    const metric = (await m.registry.getMetricsAsJSON()).find((x) => x.name === name);
    const v = metric?.values.find((x) => Object.entries(labels).every(([k, val]) => x.labels[k] === val));
    return v?.value;
  };

  test("dashboard metrics - busy seconds count wall-clock time with at least one item, not the sum of overlapping items", async () => {
    let now = 5_000; // an injected clock, in ms
    const m = new WorkerMetrics("w1", () => now);
    // Seconds, to the microsecond (the counter adds float steps).
    const busy = async (gpu = "0") => Math.round(((await value(m, "shoal_worker_busy_seconds_total", { gpu })) ?? 0) * 1e6) / 1e6;
    m.setDevices([{ index: 0, name: "g", totalBytes: 8e9, source: "budget" }]);
    assert.equal(await busy(), 0);
    m.itemStarted(0); // t = 0
    now += 20;
    m.itemStarted(0); // t = 20: two items overlap from here
    now += 100;
    // A scrape while both run already sees the time so far: 120 ms, not 120 + 100.
    assert.equal(await busy(), 0.12);
    now += 30;
    m.itemDone("sim-6g", ItemStatus.ITEM_STATUS_SUCCEEDED, 0.15, 0); // t = 150: one still runs
    now += 50;
    m.itemDone("sim-6g", ItemStatus.ITEM_STATUS_SUCCEEDED, 0.18, 0); // t = 200: idle
    const after = await busy();
    assert.equal(after, 0.2, `two overlapping items of 0.15 s and 0.18 s counted ${after} s`);
    // Idle time is not counted.
    now += 60_000;
    assert.equal(await busy(), after);
    // A new item after the idle gap counts from its own start.
    m.itemStarted(0);
    now += 250;
    m.itemDone("sim-6g", ItemStatus.ITEM_STATUS_SUCCEEDED, 0.25, 0);
    assert.equal(await busy(), 0.45);
    // Without itemStarted (an older caller), the run time is counted.
    m.itemDone("sim-6g", ItemStatus.ITEM_STATUS_SUCCEEDED, 2, 1);
    assert.equal(await busy("1"), 2);
  });

  test("dashboard metrics - model loads are counted once, timed or seen in the resident set", async () => {
    const m = new WorkerMetrics("w1");
    m.resident([]);
    m.resident(["a"]); // appeared: one load, untimed
    m.modelLoaded("b", 1.5); // timed by the backend
    m.resident(["a", "b"]); // b already counted
    m.resident(["b"]); // a released
    m.resident(["a", "b"]); // a loaded again
    assert.equal(await value(m, "shoal_worker_model_loads_total", { model: "a" }), 2);
    assert.equal(await value(m, "shoal_worker_model_loads_total", { model: "b" }), 1);
    assert.equal(await value(m, "shoal_worker_resident_models", { model: "a" }), 1);
    m.resident(["b"]);
    assert.equal(await value(m, "shoal_worker_resident_models", { model: "a" }), 0);
    const text = await m.registry.metrics();
    assert.match(text, /^shoal_worker_model_load_seconds_sum\{worker="w1",model="b"\} 1\.5$/m);
  });
});
