// peer: Shoal next to BullMQ on redis-server, the queue a team would otherwise reach for, with
// the same zero-work workload measured back to back in the same run: a peak (batches of jobs
// added at once) and an open-loop load of 1,000 items/s, whose latency (call start → every result
// of the batch available to the caller) is all overhead on either side.
//
// Shoal: the dispatch case's fleet (nats-server with `shoal up`'s default config, a coordinator,
// 2 SIMULATED worker processes, sim-zero items, RunBatch). BullMQ: redis-server (Debian's
// package, its own port and temp dir, append-only file fsynced every second), 2 worker processes
// × concurrency 50 doing nothing per job, jobs added with Queue.addBulk, completions read from
// QueueEvents. Both stay up for the whole case; they take turns (the order alternates between
// rounds), so neither measures while the other works.

import { readFileSync } from "node:fs";
import { Stack } from "../../test/harness/processes.js";
import { BullmqPeer } from "../lib/bullmq-peer.js";
import { cpuWindow, type CpuPerItem, type ProcessGroups } from "../lib/cpu-accounting.js";
import { confirmDurability, useShoalUpDefaultNatsConfig } from "../lib/durability.js";
import { trackStack } from "../lib/procs.js";
import { startRedis, type RedisServer } from "../lib/redis.js";
import { check, type CaseOutcome, type Metric } from "../lib/report.js";
import { runBatch, simWorker, startShoal, type ShoalStack } from "../lib/shoal.js";
import { percentile } from "../lib/stats.js";
import { latencySummary, paced, pacedShape, peak, shoalRunner, zeroItems, type BatchRunner } from "../lib/zero-work.js";
import type { BenchCase, CaseContext } from "./case.js";

const BULLMQ_WORKER_PROCESSES = 2;
const BULLMQ_CONCURRENCY = 50;
/** items/s: a large GPU fleet's real rate, the load the latency is compared at. */
const RATE = 1000;

type Side = "shoal" | "bullmq";

interface SideSamples {
  peakItems: number;
  peakSeconds: number;
  peakCpu: CpuPerItem[];
  latencyMs: number[];
  pacedItems: number;
  pacedSeconds: number;
  /** Items/jobs of batches that did not end before their deadline. */
  lost: number;
}

const empty = (): SideSamples => ({ peakItems: 0, peakSeconds: 0, peakCpu: [], latencyMs: [], pacedItems: 0, pacedSeconds: 0, lost: 0 });

/** CPU-ms per item over all peak rounds together. */
function pooledCpu(samples: CpuPerItem[]): { msPerItem: number; byProcess: Record<string, number> } {
  const items = samples.reduce((s, c) => s + c.items, 0);
  const byProcess: Record<string, number> = {};
  for (const c of samples) for (const [k, v] of Object.entries(c.byProcess)) byProcess[k] = (byProcess[k] ?? 0) + v.cpuMs / items;
  return { msPerItem: Object.values(byProcess).reduce((s, v) => s + v, 0), byProcess };
}

async function run(ctx: CaseContext): Promise<CaseOutcome> {
  const p = ctx.quick
    ? { rounds: 1, warmItems: 200, batches: 2, batchSize: 500, pacedSeconds: 1, batchesPerSecond: 20, maxInFlight: 2000 }
    : { rounds: 2, warmItems: 2000, batches: 5, batchSize: 10_000, pacedSeconds: 10, batchesPerSecond: 50, maxInFlight: 2000 };
  let shoal: ShoalStack | undefined;
  let redis: RedisServer | undefined;
  let bull: BullmqPeer | undefined;
  try {
    // Fails the case with the way to install it when redis-server is missing.
    redis = await startRedis();
    ctx.log(`redis-server ${redis.version} on port ${redis.port} (pid ${redis.proc.pid})`);
    bull = new BullmqPeer(redis.port, BULLMQ_WORKER_PROCESSES, BULLMQ_CONCURRENCY);
    await bull.start();

    const stack = trackStack(new Stack());
    const durabilitySet = useShoalUpDefaultNatsConfig(stack);
    await stack.startNats();
    const durability = await confirmDurability(stack, durabilitySet);
    shoal = await startShoal({
      stack,
      coordinatorArgs: ["--max-items", "100000", "--max-queued-items", "10000000"],
      workers: Array.from({ length: 2 }, (_, i) => simWorker(`peer-${i + 1}`, "80GB", p.maxInFlight, 256)),
    });

    const deadlineMs = ctx.quick ? 60_000 : 300_000;
    const sides: Record<Side, { runner: BatchRunner; fleet: ProcessGroups }> = {
      shoal: {
        runner: shoalRunner(shoal.client, deadlineMs),
        fleet: { coordinator: [stack.coordinator!.pid], "nats-server": [stack.nats!.pid], workers: stack.procs.filter((x) => x.name.startsWith("worker")).map((x) => x.pid) },
      },
      bullmq: { runner: bull.runner(deadlineMs), fleet: { "redis-server": [redis.proc.pid], workers: bull.workerPids } },
    };

    ctx.log(`warm-up: ${p.warmItems} items each`);
    if (!(await runBatch(shoal.client, { items: zeroItems(p.warmItems) }, 60_000))) throw new Error("Shoal warm-up batch did not finish within 60 s");
    if (!(await sides.bullmq.runner(p.warmItems))) throw new Error("BullMQ warm-up jobs did not finish within the deadline");

    const samples: Record<Side, SideSamples> = { shoal: empty(), bullmq: empty() };
    const shape = pacedShape(RATE, p.pacedSeconds, p.batchesPerSecond);
    for (let round = 0; round < p.rounds; round++) {
      const order: Side[] = round % 2 === 0 ? ["shoal", "bullmq"] : ["bullmq", "shoal"];
      for (const side of order) {
        const s = samples[side];
        const { runner, fleet } = sides[side];
        ctx.log(`round ${round + 1}/${p.rounds}, ${side}: peak ${p.batches} × ${p.batchSize}, then ${shape.batches} batches of ${shape.batchSize} every ${shape.intervalMs.toFixed(0)} ms`);
        const window = cpuWindow(fleet);
        const pk = await peak(runner, p.batches, p.batchSize);
        s.peakCpu.push(window.end(Math.max(1, pk.items)));
        s.peakItems += pk.items;
        s.peakSeconds += pk.seconds;
        s.lost += pk.lost;
        const r = await paced(runner, shape);
        s.latencyMs.push(...r.batchLatencyMs);
        s.pacedItems += r.items;
        s.pacedSeconds += r.items / r.achievedItemsPerS;
        s.lost += r.lost;
      }
    }
    for (const side of ["shoal", "bullmq"] as Side[]) {
      if (samples[side].peakItems === 0 || samples[side].latencyMs.length === 0) throw new Error(`${side}: no batch finished before its deadline`);
    }

    const rate = (s: SideSamples) => s.peakItems / s.peakSeconds;
    const cpu = { shoal: pooledCpu(samples.shoal.peakCpu), bullmq: pooledCpu(samples.bullmq.peakCpu) };
    const at = `@ ${RATE} items/s`;
    const latencyRow = (pct: number): Metric => {
      const v = percentile(samples.shoal.latencyMs, pct);
      const ref = percentile(samples.bullmq.latencyMs, pct);
      return { name: `added latency p${pct} ${at} (${durability.summary}) vs BullMQ`, value: v, unit: "ms", reference: { label: `BullMQ p${pct}`, value: ref, unit: "ms" }, ratio: v / ref };
    };
    const metrics: Metric[] = [
      check({
        name: "peak items/s vs BullMQ",
        value: rate(samples.shoal),
        unit: "items/s",
        reference: { label: "BullMQ jobs/s", value: rate(samples.bullmq), unit: "jobs/s" },
        ratio: rate(samples.shoal) / rate(samples.bullmq),
        target: { of: "ratio", op: ">=", threshold: 1, text: "≥ 1 × BullMQ" },
      }),
      latencyRow(50),
      latencyRow(99),
      {
        name: "fleet CPU per item at peak vs BullMQ (redis-server + workers)",
        value: cpu.shoal.msPerItem,
        unit: "CPU-ms/item",
        reference: { label: "BullMQ", value: cpu.bullmq.msPerItem, unit: "CPU-ms/job" },
        ratio: cpu.shoal.msPerItem / cpu.bullmq.msPerItem,
      },
      check({
        name: "items never finished (lost), Shoal",
        value: samples.shoal.lost,
        unit: "items",
        target: { of: "value", op: "<=", threshold: 0, text: "0 (guarantee 2)" },
      }),
      { name: "jobs never finished, BullMQ", value: samples.bullmq.lost, unit: "jobs" },
    ];
    const rawSide = (side: Side) => {
      const s = samples[side];
      return {
        peak: { items: s.peakItems, seconds: s.peakSeconds, itemsPerS: rate(s), cpuMsPerItem: cpu[side] },
        paced: { items: s.pacedItems, achievedItemsPerS: s.pacedItems / s.pacedSeconds, batchLatencyMs: latencySummary(s.latencyMs) },
        lost: s.lost,
      };
    };
    return {
      params: {
        rounds: p.rounds,
        order: "Shoal then BullMQ in odd rounds, BullMQ then Shoal in even ones; both fleets up throughout, one measured at a time",
        peak: { batches: p.batches, batchSize: p.batchSize, warmUpItems: p.warmItems },
        paced: shape,
        shoal: { workers: 2, workerMaxInFlight: p.maxInFlight, model: "sim-zero (SIMULATED, 0 bytes, work_ms 0)", durability },
        bullmq: {
          version: bullmqVersion(),
          redisServer: redis.version,
          redisPersistence: redis.persistence,
          workerProcesses: BULLMQ_WORKER_PROCESSES,
          concurrency: BULLMQ_CONCURRENCY,
          job: "processor returns null at once; added with Queue.addBulk (one call per batch); completed jobs kept (BullMQ's default), as Shoal keeps results",
        },
        latencyDefinition:
          "per item: call start (RunBatch / addBulk) → every item of its batch done as the caller sees it (terminal batch received / every job's completed event received through QueueEvents)",
        cpuDefinition: "utime + stime from /proc/<pid>/stat of the fleet's processes (not the bench process, which is the client of both) over the peak, per item",
      },
      raw: { shoal: rawSide("shoal"), bullmq: rawSide("bullmq") },
      metrics,
      notes: durability.storeFileSystem === "tmpfs" ? ["the JetStream store is on tmpfs: latencies do not include a disk"] : [],
    };
  } finally {
    // Each stop is by pid; BullMQ's clients go before the redis-server they talk to.
    if (shoal) await shoal.stop();
    if (bull) await bull.stop();
    if (redis) await redis.stop();
  }
}

function bullmqVersion(): string {
  try {
    return (JSON.parse(readFileSync(new URL("../../../node_modules/bullmq/package.json", import.meta.url), "utf8")) as { version: string }).version;
  } catch {
    return "unknown";
  }
}

export const peerCase: BenchCase = {
  name: "peer",
  title: "Shoal vs BullMQ on redis-server, the same zero-work workload back to back: peak items/s, added latency at 1,000 items/s, fleet CPU per item",
  simulated: true,
  target: "peak items/s ≥ 1 × BullMQ's in the same run; latency and CPU per item reported as ratios to BullMQ's",
  run,
};
