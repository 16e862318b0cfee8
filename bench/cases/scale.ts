// scale (SIMULATED): 1,000 simulated workers heartbeating at 1 Hz (procs/sim-fleet.ts, many per
// process, each speaking the real worker protocol) and 100,000 items submitted, of which all but
// one per worker stay queued (each worker holds one item and never finishes it by itself).
// Measured on the real coordinator process, from outside:
//   - RSS (VmRSS from /proc/<pid>/status) with the fleet and the queue in place;
//   - CPU share spent on heartbeats: coordinator CPU time over a window (from /proc/<pid>/stat)
//     divided by wall time, with 1,000 workers heartbeating and nothing else happening, minus the
//     same with no workers at all;
//   - placement decision time, measured from outside: a worker frees its slot (publishes its
//     item's outcome to the results stream, as a real worker does), and the time until the
//     coordinator's next Assignment arrives at that worker is recorded. That includes the
//     JetStream round trip of the outcome and the assign request, so it bounds the decision
//     time from above.
//   - the placement decision itself, from the coordinator's own shoal_placement_seconds
//     histogram (its /metrics), read before and after the churn: the p99 of the decisions made
//     meanwhile, as the upper edge of the bucket it falls in.

import { connect, type NatsConnection } from "@nats-io/transport-node";
import { Stack, freePort } from "../../test/harness/processes.js";
import { cpuShare, peakRssBytes, rssBytes, spawnBenchScript, stopProc, stopStack, trackStack, type BenchProc } from "../lib/procs.js";
import { check, type CaseOutcome, type Metric } from "../lib/report.js";
import { startShoal, type ShoalStack } from "../lib/shoal.js";
import { percentile, sleep } from "../lib/stats.js";
import type { BenchCase, CaseContext } from "./case.js";

const GB = 1e9;
const TARGETS = { rssBytes: 1e9, heartbeatShare: 0.25, placementP99Ms: 1 };

/** Cumulative bucket counts of shoal_placement_seconds (le → count) from a /metrics text. */
export function placementBuckets(text: string): Map<number, number> {
  const out = new Map<number, number>();
  for (const line of text.split("\n")) {
    const m = /^shoal_placement_seconds_bucket\{le="([^"]+)"\} (\S+)$/.exec(line);
    if (m) out.set(m[1] === "+Inf" ? Infinity : Number(m[1]), Number(m[2]));
  }
  return out;
}

/**
 * The upper edge of the bucket holding the p-th percentile of the observations between two reads
 * of a histogram (an upper bound); undefined when nothing was observed in between. When it falls
 * in the +Inf bucket (a decision slower than the largest edge: a stall of a loaded machine) the
 * largest finite edge is returned with `above`: the percentile is at least that, and a results
 * file cannot hold Infinity.
 */
export function bucketPercentile(before: Map<number, number>, after: Map<number, number>, p: number): { le: number; count: number; above: boolean } | undefined {
  const edges = [...after.keys()].sort((a, b) => a - b);
  const delta = edges.map((le) => (after.get(le) ?? 0) - (before.get(le) ?? 0));
  const count = delta[delta.length - 1] ?? 0;
  if (!(count > 0)) return undefined;
  const i = delta.findIndex((c) => c >= (p / 100) * count);
  const le = edges[i]!;
  if (Number.isFinite(le)) return { le, count, above: false };
  const finite = edges.filter((e) => Number.isFinite(e));
  return { le: finite[finite.length - 1] ?? 0, count, above: true };
}

async function readPlacement(metricsPort: number): Promise<Map<number, number>> {
  const res = await fetch(`http://127.0.0.1:${metricsPort}/metrics`, { signal: AbortSignal.timeout(10_000) });
  return placementBuckets(await res.text());
}

async function control(nc: NatsConnection, name: string, cmd: Record<string, unknown>, timeoutMs = 10_000): Promise<Record<string, unknown>> {
  const reply = await nc.request(`bench.simfleet.${name}.ctl`, new TextEncoder().encode(JSON.stringify(cmd)), { timeout: timeoutMs });
  return JSON.parse(new TextDecoder().decode(reply.data)) as Record<string, unknown>;
}

async function run(ctx: CaseContext): Promise<CaseOutcome> {
  const p = ctx.quick
    ? { processes: 2, perProcess: 100, items: 10_000, batchSize: 5_000, windowMs: 1_000, settleMs: 500, churn: 40, churnRate: 40 }
    : { processes: 4, perProcess: 250, items: 100_000, batchSize: 10_000, windowMs: 10_000, settleMs: 2_000, churn: 500, churnRate: 50 };
  const workers = p.processes * p.perProcess;
  const stack = trackStack(new Stack());
  let shoal: ShoalStack | undefined;
  const fleets: BenchProc[] = [];
  let nc: NatsConnection | undefined;
  try {
    await stack.startNats();
    const metricsPort = await freePort();
    shoal = await startShoal({
      stack,
      // Heartbeat timeout 5 s: the whole fleet shares this machine's 2 cores with the coordinator.
      coordinatorArgs: ["--max-items", "100000", "--max-queued-items", "1000000", "--heartbeat-timeout", "5s", "--unplaceable-grace", "1h", "--metrics-port", String(metricsPort)],
      workers: [],
    });
    const coordPid = stack.coordinator!.pid;
    await sleep(p.settleMs);
    ctx.log(`idle window (no workers, nothing queued): ${p.windowMs} ms`);
    const idle = await cpuShare(coordPid, p.windowMs);
    const rssIdle = rssBytes(coordPid);

    ctx.log(`starting ${workers} SIMULATED workers in ${p.processes} processes`);
    for (let i = 0; i < p.processes; i++) {
      // 8 GB each and one slot: one sim-6g item fills a worker.
      fleets.push(spawnBenchScript(`sim-fleet ${i}`, "procs/sim-fleet.js", [stack.natsUrl, "shoal", `p${i}`, String(p.perProcess), String(8 * GB), "1", "1000"]));
    }
    await Promise.all(fleets.map((f) => f.waitForLine((l) => l === "READY", 60_000)));
    await shoal.client.waitForWorkers(workers, 120_000);
    await sleep(p.settleMs);
    ctx.log(`heartbeats only (${workers} workers, nothing queued): ${p.windowMs} ms`);
    const hbOnly = await cpuShare(coordPid, p.windowMs);

    ctx.log(`submitting ${p.items} sim-6g items in batches of ${p.batchSize}`);
    const t0 = performance.now();
    for (let i = 0; i < p.items / p.batchSize; i++) {
      await shoal.client.submit({ items: Array.from({ length: p.batchSize }, () => ({ model: "sim-6g", params: { work_ms: 1000 } })) });
    }
    const submitS = (performance.now() - t0) / 1000;
    nc = await connect({ servers: stack.natsUrl, name: "bench-scale-control" });
    // Wait until every worker holds its item (the fleet is full, the rest stays queued).
    const deadline = Date.now() + 120_000;
    let held = 0;
    while (Date.now() < deadline) {
      held = 0;
      for (let i = 0; i < p.processes; i++) held += Number((await control(nc, `p${i}`, { op: "stats" })).held);
      if (held >= workers) break;
      await sleep(500);
    }
    if (held < workers) throw new Error(`only ${held} of ${workers} workers were given an item`);
    await sleep(p.settleMs);
    ctx.log(`heartbeats with ${p.items - workers} items queued: ${p.windowMs} ms`);
    const loaded = await cpuShare(coordPid, p.windowMs);
    const rss = rssBytes(coordPid);

    ctx.log(`churn: ${p.churn} slots freed at ${p.churnRate}/s; time to the next assignment`);
    const histBefore = await readPlacement(metricsPort);
    const perProcess = Math.ceil(p.churn / p.processes);
    const churns = await Promise.all(
      fleets.map((_, i) => control(nc!, `p${i}`, { op: "churn", count: perProcess, ratePerS: p.churnRate / p.processes }, 60_000 + (perProcess * 1000 * p.processes) / p.churnRate)),
    );
    const samples = churns.flatMap((c) => (c.samples as { fromPublishMs: number; fromStoredMs: number }[]) ?? []);
    const missing = churns.reduce((s, c) => s + Number(c.missing ?? 0), 0);
    if (samples.length === 0) throw new Error(`churn: no assignment followed a freed slot (${JSON.stringify(churns.map((c) => c.error ?? c.missing))})`);
    const fromPublish = samples.map((s) => s.fromPublishMs);
    const fromStored = samples.map((s) => s.fromStoredMs);
    const peakRss = peakRssBytes(coordPid);
    const histAfter = await readPlacement(metricsPort);
    const decisionP99 = bucketPercentile(histBefore, histAfter, 99);
    const decisionP50 = bucketPercentile(histBefore, histAfter, 50);

    const hbShare = loaded.share - idle.share;
    const metrics: Metric[] = [
      check({
        name: `coordinator RSS (${workers} workers, ${p.items} items)`,
        value: rss / 2 ** 20,
        unit: "MiB",
        reference: { label: "idle RSS", value: rssIdle / 2 ** 20, unit: "MiB" },
        ratio: rss / rssIdle,
        target: { of: "value", op: "<=", threshold: TARGETS.rssBytes / 2 ** 20, text: "≤ 1 GB" },
      }),
      check({
        name: "heartbeat CPU share (of one core)",
        value: hbShare,
        unit: "",
        reference: { label: "idle coordinator", value: idle.share, unit: "" },
        target: { of: "value", op: "<=", threshold: TARGETS.heartbeatShare, text: `≤ ${TARGETS.heartbeatShare}` },
      }),
      { name: "heartbeat CPU share, nothing queued", value: hbOnly.share - idle.share, unit: "" },
      check({
        name: "slot freed → next assignment p99",
        value: percentile(fromPublish, 99),
        unit: "ms",
        target: { of: "value", op: "<=", threshold: TARGETS.placementP99Ms, text: `≤ ${TARGETS.placementP99Ms} ms` },
      }),
      { name: "slot freed → next assignment p50", value: percentile(fromPublish, 50), unit: "ms" },
    ];
    if (decisionP99) {
      metrics.push(
        check({
          name: `placement decision p99 (shoal_placement_seconds, ${decisionP99.count} decisions during the churn; ${decisionP99.above ? "above the largest bucket: at least this" : "bucket upper edge"})`,
          value: decisionP99.le * 1000,
          unit: "ms",
          reference: { label: "p50 bucket edge", value: (decisionP50?.le ?? NaN) * 1000, unit: "ms" },
          target: { of: "value", op: "<=", threshold: TARGETS.placementP99Ms, text: `≤ ${TARGETS.placementP99Ms} ms` },
        }),
      );
    }
    return {
      params: {
        simulatedWorkers: workers,
        processes: p.processes,
        heartbeatHz: 1,
        workerVramGB: 8,
        workerMaxInFlight: 1,
        itemsSubmitted: p.items,
        itemsQueued: p.items - workers,
        batchSize: p.batchSize,
        cpuWindowMs: p.windowMs,
        churn: { slotsFreed: p.churn, perSecond: p.churnRate },
        placementMeasurement:
          "external: from the moment a simulated worker starts publishing its item's outcome to JetStream (freeing its slot) to the arrival of the coordinator's next Assignment at that worker; includes the outcome's JetStream round trip and the assign request, so it is an upper bound on the placement decision",
      },
      raw: {
        cpu: { idle, heartbeatsOnly: hbOnly, heartbeatsWithQueue: loaded },
        rssBytes: { idle: rssIdle, loaded: rss, peak: peakRss },
        submitSeconds: submitS,
        placement: {
          histogram: { before: Object.fromEntries([...histBefore].map(([k, v]) => [String(k), v])), after: Object.fromEntries([...histAfter].map(([k, v]) => [String(k), v])) },
          samples: samples.length,
          missing,
          fromPublishMs: { p50: percentile(fromPublish, 50), p90: percentile(fromPublish, 90), p99: percentile(fromPublish, 99), max: Math.max(...fromPublish) },
          fromStoredMs: { p50: percentile(fromStored, 50), p90: percentile(fromStored, 90), p99: percentile(fromStored, 99), max: Math.max(...fromStored) },
        },
      },
      metrics,
    };
  } finally {
    await nc?.close().catch(() => undefined);
    for (const f of fleets) await stopProc(f);
    if (shoal) await shoal.stop();
    else await stopStack(stack);
  }
}

export const scaleCase: BenchCase = {
  name: "scale",
  title: "1,000 SIMULATED workers heartbeating at 1 Hz with 100,000 items queued: coordinator RSS, heartbeat CPU, placement time",
  simulated: true,
  target: "RSS ≤ 1 GB, heartbeats ≤ 25% of a core, placement p99 ≤ 1 ms",
  run,
};
