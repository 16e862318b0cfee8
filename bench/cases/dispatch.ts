// dispatch: how many items per second the whole path moves when items cost nothing, and what
// latency it adds per item at about half that rate, next to raw NATS request/reply between two
// processes on the same machine.
//
// Whole path: SDK (gRPC) → coordinator (validation, durable KV write, queue, placement) → NATS
// request to the worker → SIMULATED worker process (sim-zero: 0 bytes, work_ms 0) → outcome
// published durably to JetStream → coordinator's durable consumer → terminal batch written in
// one KV compare-and-set → gRPC answer.

import { existsSync, mkdirSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { ItemStatus, type Batch } from "../../proto/gen/shoal/v1/shoal.js";
import { Stack } from "../../test/harness/processes.js";
import { summarizeProfile, type ProfileSummary } from "../lib/cpuprofile.js";
import { cpuSeconds, spawnBenchScript, stopProc, stopStack, trackStack, type BenchProc } from "../lib/procs.js";
import { check, type CaseOutcome, type Metric } from "../lib/report.js";
import { runBatch, simWorker, startShoal, type ShoalStack } from "../lib/shoal.js";
import { mean, percentile, sleep, maxOf } from "../lib/stats.js";
import type { BenchCase, CaseContext } from "./case.js";

const TARGET_ITEMS_PER_S = 20_000;
const TARGET_P99_MS = 5;

interface NatsReference {
  sequential: { count: number; p50Ms: number; p99Ms: number; meanMs: number };
  pipelined: { window: number; seconds: number; replies: number; perSecond: number };
  payloadBytes: number;
}

function zeroItems(n: number) {
  return Array.from({ length: n }, () => ({ model: "sim-zero", params: {} }));
}

function succeeded(batches: (Batch | undefined)[]): number {
  return batches.reduce((s, b) => s + (b?.succeeded ?? 0), 0);
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
    ? { workers: 2, maxInFlight: 2000, warmItems: 200, batches: 2, batchSize: 1000, idleCalls: 10, pacedSeconds: 1, batchesPerSecond: 20 }
    : { workers: 2, maxInFlight: 2000, warmItems: 2000, batches: 10, batchSize: 10_000, idleCalls: 200, pacedSeconds: 10, batchesPerSecond: 50 };
  const stack = trackStack(new Stack());
  let shoal: ShoalStack | undefined;
  try {
    await stack.startNats();
    ctx.log("raw NATS request/reply reference (2 processes)");
    const nats = await natsReference(stack.natsUrl, ctx.quick);

    let profileDir: string | undefined;
    if (ctx.profileDir) {
      profileDir = ctx.profileDir;
      mkdirSync(profileDir, { recursive: true });
    }
    shoal = await startShoal({
      stack,
      coordinatorArgs: ["--max-items", "100000", "--max-queued-items", "10000000"],
      coordinatorNodeArgs: profileDir ? ["--cpu-prof", "--cpu-prof-dir", profileDir] : [],
      workers: Array.from({ length: p.workers }, (_, i) => simWorker(`dispatch-${i + 1}`, "80GB", p.maxInFlight, 256)),
    });
    const client = shoal.client;
    const coordPid = stack.coordinator!.pid;

    ctx.log(`warm-up: ${p.warmItems} items`);
    if (!(await runBatch(client, { items: zeroItems(p.warmItems) }, 60_000))) throw new Error("warm-up batch did not finish within 60 s");
    // Items of batches that never reached a terminal state before their deadline.
    let lostItems = 0;

    // Peak: large batches, all at once.
    ctx.log(`peak: ${p.batches} batches × ${p.batchSize} sim-zero items at once`);
    const cpu0 = { coordinator: cpuSeconds(coordPid), nats: cpuSeconds(stack.nats!.pid), workers: stack.procs.filter((x) => x.name.startsWith("worker")).map((x) => cpuSeconds(x.pid)), bench: process.cpuUsage() };
    const t0 = performance.now();
    let peakEnd = t0;
    const peakBatches = await Promise.all(
      Array.from({ length: p.batches }, () =>
        runBatch(client, { items: zeroItems(p.batchSize) }, ctx.quick ? 60_000 : 300_000).then((b) => {
          if (b) peakEnd = performance.now();
          return b;
        }),
      ),
    );
    const peakS = (peakEnd - t0) / 1000;
    const benchCpu = process.cpuUsage(cpu0.bench);
    const peakCpu = {
      coordinator: (cpuSeconds(coordPid) - cpu0.coordinator) / peakS,
      natsServer: (cpuSeconds(stack.nats!.pid) - cpu0.nats) / peakS,
      workers: stack.procs.filter((x) => x.name.startsWith("worker")).map((x, i) => (cpuSeconds(x.pid) - cpu0.workers[i]!) / peakS),
      benchClient: (benchCpu.user + benchCpu.system) / 1e6 / peakS,
    };
    const peakLost = peakBatches.filter((b) => !b).length * p.batchSize;
    lostItems += peakLost;
    const peakItems = p.batches * p.batchSize - peakLost;
    const peakOk = succeeded(peakBatches);
    if (peakItems === 0) throw new Error("peak: no batch finished before its deadline");
    if (peakOk !== peakItems) throw new Error(`peak: ${peakOk} of ${peakItems} items of finished batches succeeded`);
    const peakRate = peakItems / peakS;

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

    // Paced: about half the peak rate, open loop (batches start on schedule whether or not earlier ones ended).
    const targetRate = peakRate / 2;
    const batchSize = Math.max(1, Math.round(targetRate / p.batchesPerSecond));
    const intervalMs = (1000 * batchSize) / targetRate;
    const count = Math.max(1, Math.floor((p.pacedSeconds * 1000) / intervalMs));
    ctx.log(`paced: ${count} batches of ${batchSize} items every ${intervalMs.toFixed(1)} ms (~${targetRate.toFixed(0)} items/s)`);
    const latencies: number[] = [];
    const itemQueueRun: number[] = [];
    const calls: Promise<void>[] = [];
    let pacedLost = 0;
    const pacedStart = performance.now();
    let lastDone = pacedStart;
    for (let k = 0; k < count; k++) {
      const due = pacedStart + k * intervalMs;
      const wait = due - performance.now();
      if (wait > 0) await sleep(wait);
      const s = performance.now();
      calls.push(
        runBatch(client, { items: zeroItems(batchSize) }, 30_000).then((b) => {
          if (!b) {
            pacedLost += batchSize;
            return;
          }
          const e = performance.now();
          lastDone = Math.max(lastDone, e);
          latencies.push(e - s);
          for (const r of b.results) if (r.status === ItemStatus.ITEM_STATUS_SUCCEEDED) itemQueueRun.push(r.queueMs + r.runMs);
        }),
      );
    }
    await Promise.all(calls);
    lostItems += pacedLost;
    const pacedItems = count * batchSize - pacedLost;
    if (pacedItems === 0) throw new Error("paced: no batch finished before its deadline");
    const achievedRate = pacedItems / ((lastDone - pacedStart) / 1000);
    if (itemQueueRun.length !== pacedItems) throw new Error(`paced: ${itemQueueRun.length} of ${pacedItems} items of finished batches succeeded`);

    let profile: ProfileSummary | undefined;
    if (profileDir) {
      // The profile is written when the process exits normally: SIGTERM, then wait.
      const coord = stack.coordinator!;
      process.kill(coord.pid, "SIGTERM");
      await Promise.race([coord.exited, sleep(30_000)]);
      const file = newestProfile(profileDir);
      if (file) profile = summarizeProfile(file, 25);
    }

    const p50 = percentile(latencies, 50);
    const p99 = percentile(latencies, 99);
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
        name: `added latency p99 @ ${achievedRate.toFixed(0)} items/s`,
        value: p99,
        unit: "ms",
        reference: { label: "raw NATS RTT p99", value: nats.sequential.p99Ms, unit: "ms" },
        ratio: p99 / nats.sequential.p99Ms,
        target: { of: "value", op: "<=", threshold: TARGET_P99_MS, text: `≤ ${TARGET_P99_MS} ms` },
      }),
      {
        name: "added latency p50",
        value: p50,
        unit: "ms",
        reference: { label: "raw NATS RTT p50", value: nats.sequential.p50Ms, unit: "ms" },
        ratio: p50 / nats.sequential.p50Ms,
      },
      { name: "item queue_ms+run_ms p99 (paced)", value: percentile(itemQueueRun, 99), unit: "ms" },
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
    ];
    return {
      params: {
        simulatedWorkers: p.workers,
        workerMaxInFlight: p.maxInFlight,
        model: "sim-zero (SIMULATED, 0 bytes, work_ms 0)",
        peak: { batches: p.batches, batchSize: p.batchSize, warmUpItems: p.warmItems },
        paced: { targetItemsPerS: targetRate, batchSize, intervalMs, batches: count, seconds: p.pacedSeconds },
        unloadedCalls: p.idleCalls,
        natsReference: { payloadBytes: nats.payloadBytes, window: nats.pipelined.window },
        latencyDefinition:
          "per item: client-observed RunBatch time (call start → terminal batch received) of the batch it belongs to; with 0-work items all of it is overhead Shoal adds",
      },
      raw: {
        peak: { items: peakItems, seconds: peakS, itemsPerS: peakRate, cpuCoresUsed: peakCpu },
        paced: {
          items: pacedItems,
          achievedItemsPerS: achievedRate,
          batchLatencyMs: { p50, p90: percentile(latencies, 90), p99, max: maxOf(latencies), mean: mean(latencies) },
          itemQueuePlusRunMs: { p50: percentile(itemQueueRun, 50), p99: percentile(itemQueueRun, 99), max: maxOf(itemQueueRun) },
        },
        lostItems,
        unloaded: { p50Ms: percentile(idle, 50), p99Ms: percentile(idle, 99), meanMs: mean(idle) },
        natsReference: nats,
        ...(profile ? { coordinatorProfile: profile } : {}),
      },
      metrics,
      notes: profile ? [`coordinator CPU profile: ${profile.file}`] : [],
    };
  } finally {
    if (shoal) await shoal.stop();
    else await stopStack(stack);
  }
}

export const dispatchCase: BenchCase = {
  name: "dispatch",
  title: "items/s through the whole path (SIMULATED zero-work items) and added latency at half the peak rate, vs raw NATS",
  simulated: true,
  target: "≥ 20,000 items/s on 2 cores; p99 added latency ≤ 5 ms at half the peak rate",
  run,
};
