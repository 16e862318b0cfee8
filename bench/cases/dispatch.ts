// dispatch: how many items per second the whole path moves when items cost nothing, and what
// latency it adds per item at about half that rate and at 1,000 items/s (a large GPU fleet's real
// rate), next to raw NATS request/reply between two processes on the same machine; with the
// nats-server config `shoal up` writes by default (its durability is stated beside the figures),
// and the CPU each fleet process spends per item.
//
// Whole path: SDK (gRPC) → coordinator (validation, durable KV write, queue, placement) → NATS
// request to the worker → SIMULATED worker process (sim-zero: 0 bytes, work_ms 0) → outcome
// published durably to JetStream → coordinator's durable consumer → terminal batch written in
// one KV compare-and-set → gRPC answer.

import { existsSync, mkdirSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { Stack } from "../../test/harness/processes.js";
import { cpuPerItemMetric, cpuWindow, type ProcessGroups } from "../lib/cpu-accounting.js";
import { summarizeProfile, type ProfileSummary } from "../lib/cpuprofile.js";
import { confirmDurability, useShoalUpDefaultNatsConfig } from "../lib/durability.js";
import { spawnBenchScript, stopProc, stopStack, trackStack, type BenchProc } from "../lib/procs.js";
import { check, type CaseOutcome, type Metric } from "../lib/report.js";
import { runBatch, simWorker, startShoal, type ShoalStack } from "../lib/shoal.js";
import { mean, percentile, sleep, maxOf } from "../lib/stats.js";
import { formatStepBreakdown, stepBreakdown, type StepBreakdown } from "../lib/step-breakdown.js";
import { latencySummary, paced, pacedShape, peak, shoalRunner, zeroItems } from "../lib/zero-work.js";
import type { BenchCase, CaseContext } from "./case.js";

const TARGET_ITEMS_PER_S = 20_000;
/** Added latency p99 targets (issue 13): at half the peak rate, and at a large GPU fleet's real rate. */
const TARGET_P99_HALF_PEAK_MS = 15;
const TARGET_P99_FLEET_RATE_MS = 10;
/** items/s: what a large GPU fleet really moves. */
const FLEET_RATE = 1000;

interface NatsReference {
  sequential: { count: number; p50Ms: number; p99Ms: number; meanMs: number };
  pipelined: { window: number; seconds: number; replies: number; perSecond: number };
  payloadBytes: number;
}

async function natsReference(natsUrl: string, quick: boolean): Promise<NatsReference> {
  const procs: BenchProc[] = [];
  try {
    const responder = spawnBenchScript("echo-responder", "procs/nats-echo-responder.js", [natsUrl, "bench.echo"]);
    procs.push(responder);
    await responder.waitForLine((l) => l === "READY", 20_000);
    const count = quick ? 500 : 5000;
    const seconds = quick ? 1 : 5;
    const requester = spawnBenchScript("echo-requester", "procs/nats-echo-requester.js", [natsUrl, "bench.echo", String(count), "128", String(seconds), "128"]);
    procs.push(requester);
    const line = await requester.waitForLine((l) => l.startsWith("RESULT "), 120_000);
    return JSON.parse(line.slice("RESULT ".length)) as NatsReference;
  } finally {
    for (const p of procs) await stopProc(p);
  }
}

function newestProfile(dir: string): string | undefined {
  if (!existsSync(dir)) return undefined;
  const files = readdirSync(dir).filter((f) => f.endsWith(".cpuprofile")).map((f) => join(dir, f));
  return files.sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs)[0];
}

async function run(ctx: CaseContext): Promise<CaseOutcome> {
  const p = ctx.quick
    ? { workers: 2, maxInFlight: 2000, warmItems: 200, batches: 2, batchSize: 1000, idleCalls: 10, pacedSeconds: 1, batchesPerSecond: 20, fleetRateSeconds: 3 }
    : { workers: 2, maxInFlight: 2000, warmItems: 2000, batches: 10, batchSize: 10_000, idleCalls: 200, pacedSeconds: 10, batchesPerSecond: 50, fleetRateSeconds: 10 };
  // SHOAL_BENCH_STEPS=1: the coordinator logs at debug, one line of step times per batch, and the
  // raw output gets the per-step breakdown of the 1,000 items/s window (bench/lib/step-breakdown.ts).
  const withSteps = process.env.SHOAL_BENCH_STEPS === "1";
  const stack = trackStack(new Stack());
  let shoal: ShoalStack | undefined;
  try {
    // The durability `shoal up` runs with by default, so the latency figures are the ones its users get.
    const durabilitySet = useShoalUpDefaultNatsConfig(stack);
    await stack.startNats();
    const durability = await confirmDurability(stack, durabilitySet);
    ctx.log("raw NATS request/reply reference (2 processes)");
    const nats = await natsReference(stack.natsUrl, ctx.quick);

    let profileDir: string | undefined;
    if (ctx.profileDir) {
      profileDir = ctx.profileDir;
      mkdirSync(profileDir, { recursive: true });
    }
    shoal = await startShoal({
      stack,
      coordinatorArgs: ["--max-items", "100000", "--max-queued-items", "10000000", ...(withSteps ? ["--log-level", "debug"] : [])],
      coordinatorNodeArgs: profileDir ? ["--cpu-prof", "--cpu-prof-dir", profileDir] : [],
      workers: Array.from({ length: p.workers }, (_, i) => simWorker(`dispatch-${i + 1}`, "80GB", p.maxInFlight, 256)),
    });
    const client = shoal.client;
    const fleet: ProcessGroups = {
      coordinator: [stack.coordinator!.pid],
      "nats-server": [stack.nats!.pid],
      workers: stack.procs.filter((x) => x.name.startsWith("worker")).map((x) => x.pid),
    };

    ctx.log(`warm-up: ${p.warmItems} items`);
    if (!(await runBatch(client, { items: zeroItems(p.warmItems) }, 60_000))) throw new Error("warm-up batch did not finish within 60 s");
    // Items of batches that never reached a terminal state before their deadline.
    let lostItems = 0;

    // Peak: large batches, all at once.
    ctx.log(`peak: ${p.batches} batches × ${p.batchSize} sim-zero items at once`);
    const peakCpuWindow = cpuWindow(fleet);
    const bench0 = process.cpuUsage();
    const pk = await peak(shoalRunner(client, ctx.quick ? 60_000 : 300_000), p.batches, p.batchSize);
    const benchCpu = process.cpuUsage(bench0);
    const peakCpu = peakCpuWindow.end(pk.items);
    lostItems += pk.lost;
    if (pk.items === 0) throw new Error("peak: no batch finished before its deadline");
    const peakRate = pk.itemsPerS;

    // Idle floor: one 1-item RunBatch at a time.
    ctx.log(`unloaded latency: ${p.idleCalls} one-item RunBatch calls, one at a time`);
    const idle: number[] = [];
    for (let i = 0; i < p.idleCalls; i++) {
      const s = performance.now();
      const b = await runBatch(client, { items: zeroItems(1) }, 30_000);
      if (!b) {
        lostItems++;
        continue;
      }
      idle.push(performance.now() - s);
      if (b.succeeded !== 1) throw new Error("unloaded call: the item did not succeed");
    }

    // Paced, open loop: about half the peak rate, then the 1,000 items/s of a large GPU fleet.
    // The 1,000 items/s window is always 20-item batches every 20 ms (50 a second), --quick too.
    const pacedAt = async (rate: number, seconds: number, batchesPerSecond: number, clientMsById?: Map<string, number>) => {
      const shape = pacedShape(rate, seconds, batchesPerSecond);
      ctx.log(`paced: ${shape.batches} batches of ${shape.batchSize} items every ${shape.intervalMs.toFixed(1)} ms (~${rate.toFixed(0)} items/s)`);
      const itemQueueRun: number[] = [];
      const window = cpuWindow(fleet);
      const r = await paced(shoalRunner(client, 30_000, itemQueueRun, clientMsById), shape);
      const cpu = window.end(Math.max(1, r.items));
      lostItems += r.lost;
      if (r.items === 0) throw new Error(`paced at ${rate.toFixed(0)} items/s: no batch finished before its deadline`);
      return { r, itemQueueRun, cpu };
    };
    const half = await pacedAt(peakRate / 2, p.pacedSeconds, p.batchesPerSecond);
    const fleetRateClientMs = new Map<string, number>();
    const fleetRate = await pacedAt(FLEET_RATE, p.fleetRateSeconds, 50, fleetRateClientMs);
    let steps: StepBreakdown | undefined;
    if (withSteps) {
      await sleep(200); // the last batches' lines are read from the coordinator's output
      steps = stepBreakdown(stack.coordinator!.logs, fleetRateClientMs);
      ctx.log(formatStepBreakdown(steps));
    }

    let profile: ProfileSummary | undefined;
    if (profileDir) {
      // The profile is written when the process exits normally: SIGTERM, then wait.
      const coord = stack.coordinator!;
      process.kill(coord.pid, "SIGTERM");
      await Promise.race([coord.exited, sleep(30_000)]);
      const file = newestProfile(profileDir);
      if (file) profile = summarizeProfile(file, 25);
    }

    const lat = half.r.batchLatencyMs;
    const p50 = percentile(lat, 50);
    const p99 = percentile(lat, 99);
    const lat1k = fleetRate.r.batchLatencyMs;
    const durable = `(${durability.summary})`;
    const metrics: Metric[] = [
      check({
        name: "peak items/s",
        value: peakRate,
        unit: "items/s",
        reference: { label: "target", value: TARGET_ITEMS_PER_S, unit: "items/s" },
        ratio: peakRate / TARGET_ITEMS_PER_S,
        target: { of: "value", op: ">=", threshold: TARGET_ITEMS_PER_S, text: `≥ ${TARGET_ITEMS_PER_S} items/s` },
      }),
      {
        name: "peak items/s vs raw NATS req/s",
        value: peakRate,
        unit: "items/s",
        reference: { label: "raw NATS req/reply", value: nats.pipelined.perSecond, unit: "req/s" },
        ratio: peakRate / nats.pipelined.perSecond,
      },
      check({
        name: `added latency p99 @ ${half.r.achievedItemsPerS.toFixed(0)} items/s (half peak) ${durable}`,
        value: p99,
        unit: "ms",
        reference: { label: "raw NATS RTT p99", value: nats.sequential.p99Ms, unit: "ms" },
        ratio: p99 / nats.sequential.p99Ms,
        target: { of: "value", op: "<=", threshold: TARGET_P99_HALF_PEAK_MS, text: `≤ ${TARGET_P99_HALF_PEAK_MS} ms` },
      }),
      {
        name: `added latency p50 @ ${half.r.achievedItemsPerS.toFixed(0)} items/s (half peak) ${durable}`,
        value: p50,
        unit: "ms",
        reference: { label: "raw NATS RTT p50", value: nats.sequential.p50Ms, unit: "ms" },
        ratio: p50 / nats.sequential.p50Ms,
      },
      check({
        name: `added latency p99 @ ${FLEET_RATE} items/s ${durable}`,
        value: percentile(lat1k, 99),
        unit: "ms",
        reference: { label: "raw NATS RTT p99", value: nats.sequential.p99Ms, unit: "ms" },
        ratio: percentile(lat1k, 99) / nats.sequential.p99Ms,
        target: { of: "value", op: "<=", threshold: TARGET_P99_FLEET_RATE_MS, text: `≤ ${TARGET_P99_FLEET_RATE_MS} ms` },
      }),
      {
        name: `added latency p50 @ ${FLEET_RATE} items/s ${durable}`,
        value: percentile(lat1k, 50),
        unit: "ms",
        reference: { label: "raw NATS RTT p50", value: nats.sequential.p50Ms, unit: "ms" },
        ratio: percentile(lat1k, 50) / nats.sequential.p50Ms,
      },
      { name: "item queue_ms+run_ms p99 (half peak)", value: percentile(half.itemQueueRun, 99), unit: "ms" },
      check({
        name: "items never finished (lost)",
        value: lostItems,
        unit: "items",
        target: { of: "value", op: "<=", threshold: 0, text: "0 (guarantee 2)" },
      }),
      {
        name: "unloaded 1-item RunBatch p50",
        value: percentile(idle, 50),
        unit: "ms",
        reference: { label: "raw NATS RTT p50", value: nats.sequential.p50Ms, unit: "ms" },
        ratio: percentile(idle, 50) / nats.sequential.p50Ms,
      },
      ...Object.keys(fleet).map((g) => cpuPerItemMetric("fleet CPU per item at peak", peakCpu, g)),
      { name: "fleet CPU per item at peak: all", value: peakCpu.totalMsPerItem, unit: "CPU-ms/item" },
      { name: `fleet CPU per item @ ${FLEET_RATE} items/s: all`, value: fleetRate.cpu.totalMsPerItem, unit: "CPU-ms/item" },
    ];
    const pacedRaw = (x: typeof half) => ({
      shape: x.r.shape,
      items: x.r.items,
      achievedItemsPerS: x.r.achievedItemsPerS,
      batchLatencyMs: latencySummary(x.r.batchLatencyMs),
      itemQueuePlusRunMs: { p50: percentile(x.itemQueueRun, 50), p99: percentile(x.itemQueueRun, 99), max: maxOf(x.itemQueueRun) },
      fleetCpu: x.cpu,
    });
    return {
      params: {
        simulatedWorkers: p.workers,
        workerMaxInFlight: p.maxInFlight,
        model: "sim-zero (SIMULATED, 0 bytes, work_ms 0)",
        durability,
        peak: { batches: p.batches, batchSize: p.batchSize, warmUpItems: p.warmItems },
        paced: { halfPeak: half.r.shape, fleetRate: fleetRate.r.shape },
        unloadedCalls: p.idleCalls,
        natsReference: { payloadBytes: nats.payloadBytes, window: nats.pipelined.window },
        latencyDefinition:
          "per item: client-observed RunBatch time (call start → terminal batch received) of the batch it belongs to; with 0-work items all of it is overhead Shoal adds",
        cpuDefinition: "utime + stime (all threads) from /proc/<pid>/stat over the measured window, divided by the items the window moved; 0-work items, so all of it is overhead",
      },
      raw: {
        peak: { items: pk.items, seconds: pk.seconds, itemsPerS: peakRate, cpuCoresUsed: { ...Object.fromEntries(Object.entries(peakCpu.byProcess).map(([k, v]) => [k, v.cpuMs / 1000 / pk.seconds])), benchClient: (benchCpu.user + benchCpu.system) / 1e6 / pk.seconds }, fleetCpu: peakCpu },
        paced: pacedRaw(half),
        pacedFleetRate: { ...pacedRaw(fleetRate), ...(steps ? { stepBreakdownMs: steps } : {}) },
        lostItems,
        unloaded: { p50Ms: percentile(idle, 50), p99Ms: percentile(idle, 99), meanMs: mean(idle) },
        natsReference: nats,
        ...(profile ? { coordinatorProfile: profile } : {}),
      },
      metrics,
      notes: [
        ...(durability.storeFileSystem === "tmpfs" ? ["the JetStream store is on tmpfs: latencies do not include a disk"] : []),
        ...(profile ? [`coordinator CPU profile: ${profile.file}`] : []),
      ],
    };
  } finally {
    if (shoal) await shoal.stop();
    else await stopStack(stack);
  }
}

export const dispatchCase: BenchCase = {
  name: "dispatch",
  title: "items/s through the whole path (SIMULATED zero-work items), added latency at half the peak rate and at 1,000 items/s, fleet CPU per item, vs raw NATS",
  simulated: true,
  target: "≥ 20,000 items/s on 2 cores; p99 added latency ≤ 15 ms at half the peak rate and ≤ 10 ms at 1,000 items/s, with shoal up's default durability",
  run,
};
