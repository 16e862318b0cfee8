// A real Prometheus (the Debian package) scrapes a running stack, a coordinator and two workers,
// while a batch runs; then every PromQL expression of the Grafana dashboard and of the alert
// rules is evaluated through Prometheus's HTTP API. Prometheus runs with the shipped
// deploy/prometheus/prometheus.yml (targets and intervals swapped for the test's) and loads the
// shipped alerts.yml, so what is tested is what operators deploy.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { BatchState } from "../../proto/gen/shoal/v1/shoal.js";
import { TestClient } from "../harness/client.js";
import { ROOT, Stack, freePort } from "../harness/processes.js";

const execFileAsync = promisify(execFile);
/** promtool, with a deadline. */
const run = (file: string, args: string[]) => execFileAsync(file, args, { timeout: 60_000 });
/** Every HTTP call of this file gives up after 10 s. */
const get = (url: string, init: RequestInit = {}) => fetch(url, { ...init, signal: AbortSignal.timeout(10_000) });

function findBinary(name: string): string | undefined {
  const dirs = [...(process.env.PATH ?? "").split(":"), "/usr/bin", "/usr/local/bin"];
  for (const d of dirs) if (d && existsSync(join(d, name))) return join(d, name);
  return undefined;
}

const PROMETHEUS = findBinary("prometheus");
const PROMTOOL = findBinary("promtool");
const MISSING = [!PROMETHEUS && "prometheus", !PROMTOOL && "promtool"].filter(Boolean).join(" and ");
const WHY_MISSING = `${MISSING} not found: install the Debian package \`prometheus\` (./scripts/setup.sh does)`;
// setup.sh installs both tools, so a machine without them fails in before() with the
// reason, and a missing tool can never pass unnoticed.

const DEPLOY = join(ROOT, "deploy");
const CONFIG = join(DEPLOY, "prometheus/prometheus.yml");
const ALERTS = join(DEPLOY, "prometheus/alerts.yml");
const ALERT_TESTS = join(DEPLOY, "prometheus/alerts.test.yml");
const DASHBOARD = join(DEPLOY, "grafana/shoal-dashboard.json");

/** Grafana's variables, as Grafana would expand them for a 1 s scrape interval and "All". */
function grafanaToPromQL(expr: string): string {
  return expr
    .replace(/\$__rate_interval/g, "1m")
    .replace(/\$__interval|\$__range/g, "1m")
    .replace(/\$\{(\w+)(:\w+)?\}|\$(\w+)/g, ".*");
}

interface PromSample {
  metric: Record<string, string>;
  value: [number, string];
}

interface Panel {
  type: string;
  title: string;
  targets?: { expr: string; refId: string }[];
}

/** Replaces `from` once in `text`, failing loudly when the shipped file no longer has it. */
function swap(text: string, from: string, to: string): string {
  assert.ok(text.includes(from), `deploy/prometheus/prometheus.yml no longer contains ${JSON.stringify(from)}; update this test with it`);
  return text.replace(from, to);
}

async function waitFor<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>, alive?: ChildProcess): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    if (alive && alive.exitCode !== null) throw new Error(`${what}: the process exited (${alive.exitCode})`);
    try {
      const v = await probe();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms${last ? ` (${String(last)})` : ""}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

describe("observability - a real Prometheus scrapes the fleet, the dashboard and alerts evaluate", () => {
  const stack = new Stack();
  const dir = mkdtempSync(join(tmpdir(), "shoal-prom-"));
  let client: TestClient | undefined;
  let prometheus: ChildProcess | undefined;
  let promExited: Promise<unknown> = Promise.resolve();
  let promLog = "";
  let api = "";
  let batchEndedAt = 0;

  async function query(expr: string): Promise<{ status: string; error?: string; result: PromSample[]; resultType?: string }> {
    const res = await get(`${api}/api/v1/query`, { method: "POST", body: new URLSearchParams({ query: expr }) });
    const body = (await res.json()) as { status: string; error?: string; data?: { resultType: string; result: PromSample[] | [number, string] } };
    const result = body.data?.resultType === "vector" ? (body.data.result as PromSample[]) : [];
    return { status: body.status, error: body.error, result, resultType: body.data?.resultType };
  }

  before(async () => {
    assert.equal(MISSING, "", WHY_MISSING);
    await stack.startNats();
    const coordinatorPort = await freePort();
    const workerPorts = [await freePort(), await freePort()];
    // A later --metrics-port wins over the harness's "--metrics-port 0".
    await stack.startCoordinator(["--metrics-port", String(coordinatorPort)]);
    await Promise.all(
      workerPorts.map((p, i) => stack.startWorker(`w${i + 1}`, ["--simulate", "--vram", "16GiB", "--max-in-flight", "4", "--metrics-port", String(p)])),
    );
    client = new TestClient(stack.grpcAddr);
    await client.waitForWorkers(2);
    for (const p of [coordinatorPort, ...workerPorts]) {
      await waitFor(`/metrics on :${p}`, 15_000, async () => ((await get(`http://127.0.0.1:${p}/metrics`)).ok ? true : undefined));
    }

    // The shipped scrape config, pointed at this stack and sped up.
    let config = readFileSync(CONFIG, "utf8");
    config = swap(config, "scrape_interval: 15s", "scrape_interval: 1s");
    config = swap(config, "evaluation_interval: 15s", "evaluation_interval: 1s");
    config = swap(config, "- alerts.yml", `- ${JSON.stringify(ALERTS)}`);
    config = swap(config, '["127.0.0.1:9464"]', JSON.stringify([`127.0.0.1:${coordinatorPort}`]));
    config = swap(config, '["127.0.0.1:9465", "127.0.0.1:9466"]', JSON.stringify(workerPorts.map((p) => `127.0.0.1:${p}`)));
    writeFileSync(join(dir, "prometheus.yml"), config);

    const port = await freePort();
    api = `http://127.0.0.1:${port}`;
    const child = spawn(
      PROMETHEUS!,
      [`--config.file=${join(dir, "prometheus.yml")}`, `--storage.tsdb.path=${join(dir, "data")}`, `--web.listen-address=127.0.0.1:${port}`, "--log.level=warn"],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    prometheus = child;
    promExited = new Promise((r) => child.once("exit", r));
    child.stdout?.on("data", (d) => (promLog += d));
    child.stderr?.on("data", (d) => (promLog += d));
    await waitFor("prometheus ready", 30_000, async () => ((await get(`${api}/-/ready`)).ok ? true : undefined), child).catch((err: Error) => {
      throw new Error(`${err.message}\n${promLog.slice(-2000)}`);
    });
    // All three targets scraped.
    await waitFor("3 targets up", 20_000, async () => {
      const r = await query('up{job=~"shoal-.*"} == 1');
      return r.result.length === 3 ? true : undefined;
    });
  });

  after(async () => {
    client?.close();
    if (prometheus && prometheus.exitCode === null && prometheus.pid !== undefined) {
      try {
        process.kill(prometheus.pid, "SIGTERM");
      } catch {
        /* gone */
      }
      const killer = setTimeout(() => {
        try {
          process.kill(prometheus!.pid!, "SIGKILL");
        } catch {
          /* gone */
        }
      }, 5_000);
      await promExited;
      clearTimeout(killer);
    }
    await stack.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test("observability - promtool accepts the shipped config and rules, and the rule unit tests pass", async () => {
    const rules = await run(PROMTOOL!, ["check", "rules", ALERTS]);
    assert.match(rules.stdout, /SUCCESS: 9 rules found/);
    const config = await run(PROMTOOL!, ["check", "config", CONFIG]);
    assert.match(config.stdout, /is valid prometheus config file syntax/);
    const unit = await run(PROMTOOL!, ["test", "rules", ALERT_TESTS]);
    assert.match(unit.stdout + unit.stderr, /SUCCESS/);
  });

  test("observability - a batch runs while Prometheus scrapes, and the counters reach it", async () => {
    // About 5 s of work on 2 workers × 4 slots: several scrapes see it run.
    // Failures first: a series that appears at its final value in the last scrape has no rate.
    const items = [
      ...Array.from({ length: 3 }, (_, i) => ({ model: "sim-zero", params: { fail: true, tag: `obs fail ${i}` } })),
      ...Array.from({ length: 36 }, (_, i) => ({ model: "sim-6g", params: { work_ms: 1000, tag: `obs ${i}` } })),
      ...Array.from({ length: 9 }, (_, i) => ({ model: "sim-zero", params: { work_ms: 300, tag: `obs zero ${i}` } })),
    ];
    const { batchId } = await client!.submit({ items, labels: { suite: "observability" } });
    const batch = await client!.waitTerminal(batchId, 60_000);
    batchEndedAt = Date.now();
    assert.equal(batch.state, BatchState.BATCH_STATE_COMPLETED);
    assert.equal(batch.succeeded, 45);
    assert.equal(batch.failed, 3);
    // Prometheus has scraped the end of the batch.
    await waitFor("the finished batch in Prometheus", 15_000, async () => {
      const r = await query('sum(shoal_items_total{status=~"succeeded|failed"})');
      return r.result.length === 1 && Number(r.result[0]!.value[1]) === 48 ? true : undefined;
    });
    await new Promise((r) => setTimeout(r, 2_500)); // two more scrapes of the final values
    const failed = await query('sum by (code) (shoal_items_total{status="failed"})');
    assert.deepEqual(
      failed.result.map((s) => [s.metric.code, s.value[1]]),
      [["INFERENCE_FAILED", "3"]],
    );
    const attempts = await query('shoal_item_attempts_total{outcome="succeeded"}');
    assert.equal(attempts.result[0]?.value[1], "45");
    const busy = await query("sum(shoal_worker_busy_seconds_total)");
    // Busy time is the time a GPU held at least one item: at least the items' run time spread
    // over the 4 items a worker holds at once, and far less than the sum of the run times of
    // items that overlapped (48 items on 2 workers × 4 slots). Both bounds come from this run's
    // own run_ms, not from how fast the machine is.
    const busySeconds = Number(busy.result[0]?.value[1]);
    const runSeconds = batch.results.reduce((s, r) => s + r.runMs, 0) / 1000;
    assert.equal(batch.results.length, 48);
    assert.ok(runSeconds >= 36, `the items ran ${runSeconds} s in all; 36 sleep 1 s each`);
    assert.ok(busySeconds >= runSeconds / 4 - 0.05, `busy ${busySeconds} s < run ${runSeconds} s / 4 slots`);
    assert.ok(busySeconds <= runSeconds * 0.6, `busy ${busySeconds} s counts overlapping items separately (run ${runSeconds} s in all)`);
  });

  test("observability - every dashboard expression parses, and its panels show data", async () => {
    assert.ok(batchEndedAt > 0, "the batch test ran first");
    const dashboard = JSON.parse(readFileSync(DASHBOARD, "utf8")) as { panels: Panel[]; templating: { list: { name: string; type: string; query: unknown }[] } };
    // Panels that may be empty here, and why.
    const mayBeEmpty = new Map([["Model load time (p95)", "the simulated backend does not time model loads"]]);
    const failures: string[] = [];
    let checked = 0;
    for (const p of dashboard.panels) {
      let positive = false;
      for (const t of p.targets ?? []) {
        const expr = grafanaToPromQL(t.expr);
        const r = await query(expr);
        checked++;
        if (r.status !== "success") {
          failures.push(`panel "${p.title}" ${t.refId}: ${r.error} in ${expr}`);
          continue;
        }
        if (r.result.length === 0 && !mayBeEmpty.has(p.title)) failures.push(`panel "${p.title}" ${t.refId}: no data for ${expr}`);
        if (r.result.some((s) => Number.isFinite(Number(s.value[1])) && Number(s.value[1]) > 0)) positive = true;
      }
      // Throughput, latency and VRAM panels show real numbers, not NaN from empty windows.
      if (p.type !== "row" && /throughput|latency|VRAM/i.test(p.title) && !positive) failures.push(`panel "${p.title}": no positive value in any query`);
    }
    for (const v of dashboard.templating.list) {
      if (v.type !== "query") continue;
      const q = typeof v.query === "string" ? v.query : (v.query as { query: string }).query;
      const m = /^label_values\(\s*([^,]+?)\s*,\s*(\w+)\s*\)$/.exec(q)!;
      const r = await query(`count by (${m[2]}) (${m[1]})`);
      checked++;
      if (r.status !== "success" || r.result.length === 0) failures.push(`variable ${v.name}: no values from ${q} (${r.error ?? "empty"})`);
    }
    assert.deepEqual(failures, []);
    assert.ok(checked >= 30, `only ${checked} expressions checked`);

    // A few values that must be right, not merely present.
    const workers = await query(grafanaToPromQL("sum by (state) (shoal_workers)"));
    assert.equal(workers.result.find((s) => s.metric.state === "ready")?.value[1], "2");
    const vram = await query(grafanaToPromQL('max by (worker, gpu) (shoal_worker_vram_total_bytes{worker=~"$worker"})'));
    assert.deepEqual(vram.result.map((s) => `${s.metric.worker}/${s.metric.gpu}=${s.value[1]}`).sort(), [`w1/0=${16 * 2 ** 30}`, `w2/0=${16 * 2 ** 30}`]);
    // While the batch ran, the queue held items and their VRAM need (the autoscaling signal).
    const backlog = await query("max_over_time(sum(shoal_queue_vram_bytes)[2m:1s])");
    assert.ok(Number(backlog.result[0]?.value[1]) >= 2e9, `VRAM backlog never seen: ${JSON.stringify(backlog.result)}`);
    const waiting = await query("max_over_time(sum(shoal_queue_items)[2m:1s])");
    assert.ok(Number(waiting.result[0]?.value[1]) >= 1, `queue depth never seen: ${JSON.stringify(waiting.result)}`);
    const utilization = await query(grafanaToPromQL("sum(rate(shoal_worker_busy_seconds_total[$__rate_interval])) / count(shoal_worker_busy_seconds_total)"));
    const u = Number(utilization.result[0]?.value[1]);
    assert.ok(u > 0 && u <= 1, `fleet utilization ${u} is not a fraction`);
  });

  test("observability - every alert rule is loaded, evaluates and stays quiet on a healthy fleet", async () => {
    type Rule = { name: string; query: string; duration: number; labels: Record<string, string>; annotations: Record<string, string>; health: string; state: string; lastError?: string; lastEvaluation: string };
    const rules = await waitFor("every rule evaluated", 15_000, async () => {
      const res = (await (await get(`${api}/api/v1/rules`)).json()) as { data: { groups: { rules: Rule[] }[] } };
      const all = res.data.groups.flatMap((g) => g.rules);
      return all.length > 0 && all.every((r) => !r.lastEvaluation.startsWith("0001-")) ? all : undefined;
    });
    assert.deepEqual(
      rules.map((r) => r.name).sort(),
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
    for (const r of rules) {
      assert.equal(r.health, "ok", `${r.name}: ${r.lastError}`);
      assert.ok(r.duration > 0, `${r.name} has no for:`);
      assert.match(r.labels.severity ?? "", /^(critical|warning)$/, `${r.name} severity`);
      assert.ok(r.annotations.summary && r.annotations.description, `${r.name} lacks summary or description`);
      const q = await query(r.query);
      assert.equal(q.status, "success", `${r.name}: ${q.error}`);
      assert.equal(r.state, "inactive", `${r.name} is ${r.state} on a healthy fleet`);
    }
  });
});
