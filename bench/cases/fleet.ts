// fleet efficiency (SIMULATED): a heterogeneous fleet — 2 × 80 GB, 4 × 24 GB, 2 × 16 GB, eight
// real worker processes with declared VRAM — runs a mixed workload of items of models needing 6,
// 12 and 30 GB with durations drawn from a seeded distribution. Makespan is compared with the
// ideal lower bound (see lib/ideal.ts), for Shoal and for what users would do instead:
//   (a) a VRAM-blind queue: a NATS queue group of simulated GPU processes with the same VRAM
//       (procs/rr-gpu-consumer.ts); an item that lands where it does not fit fails with
//       OUT_OF_MEMORY and is queued again;
//   (b) concurrent single calls: every item as its own 1-item RunBatch through Shoal, all at once
//       (Promise.all, as the user guide's quick example does).

import { connect } from "@nats-io/transport-node";
import { ItemStatus, type Batch, type ItemResult } from "../../proto/gen/shoal/v1/shoal.js";
import { Stack } from "../../test/harness/processes.js";
import { SIMULATED_MODELS } from "../../worker/simulated-backend.js";
import { etaAccuracyMetrics, trackEta } from "../lib/eta-accuracy.js";
import { capacity, capacityBound, type SimGpu, type SimModelNeed } from "../lib/ideal.js";
import { spawnBenchScript, stopProc, stopStack, trackStack, type BenchProc } from "../lib/procs.js";
import { check, type CaseOutcome, type Metric } from "../lib/report.js";
import { describeUnfinishedBatches, runBatch, simWorker, startShoal, WORKER_HEARTBEAT, type ShoalStack } from "../lib/shoal.js";
import { mean, normal, percentile, seededRandom, sum } from "../lib/stats.js";
import type { BenchCase, CaseContext } from "./case.js";

const GB = 1e9;
/** Issue 9's targets: ≥ 0.90 of the ideal, and ≥ 1.15 × both baselines' efficiency. */
const TARGET_EFFICIENCY = 0.9;
const TARGET_VS_BASELINES = 1.15;

const FLEET: SimGpu[] = [
  ...[1, 2].map((i) => ({ id: `g80-${i}`, vramBytes: 80 * GB })),
  ...[1, 2, 3, 4].map((i) => ({ id: `g24-${i}`, vramBytes: 24 * GB })),
  ...[1, 2].map((i) => ({ id: `g16-${i}`, vramBytes: 16 * GB })),
];

const MIX: { model: string; share: number }[] = [
  { model: "sim-6g", share: 0.5 },
  { model: "sim-12g", share: 0.3 },
  { model: "sim-30g", share: 0.2 },
];

const MODELS: SimModelNeed[] = MIX.map(({ model }) => {
  const m = SIMULATED_MODELS.find((x) => x.name === model)!;
  return { name: m.name, weightsBytes: m.vram.weights_bytes, activationBytes: m.vram.activation_bytes };
});

export interface FleetItem {
  model: string;
  workMs: number;
}

/** Items a GPU may hold at once: as many as its VRAM could ever take (of the smallest model). */
export function slotsOf(g: SimGpu): number {
  return Math.max(...MODELS.map((m) => Math.floor(capacity(g, m))));
}

/** The workload: seeded model mix and log-normal durations, scaled so the capacity bound is `targetS`. */
export function workload(n: number, seed: number, targetS: number): { items: FleetItem[]; capacityBoundS: number; longestS: number; idealS: number } {
  const rand = seededRandom(seed);
  const raw = Array.from({ length: n }, () => {
    const u = rand();
    let acc = 0;
    const model = MIX.find((x) => (acc += x.share) > u)?.model ?? MIX[MIX.length - 1]!.model;
    // Log-normal, median 1, clipped to [0.2, 5]: many short items and a long tail.
    const d = Math.min(5, Math.max(0.2, Math.exp(0.6 * normal(rand))));
    return { model, d };
  });
  const byModel = (items: { model: string; d: number }[]) => {
    const w = new Map<string, number>();
    for (const it of items) w.set(it.model, (w.get(it.model) ?? 0) + it.d);
    return w;
  };
  const scale = targetS / capacityBound(FLEET, MODELS, byModel(raw));
  const items = raw.map((it) => ({ model: it.model, workMs: Math.max(1, Math.round(it.d * scale * 1000)) }));
  const capacityBoundS = capacityBound(FLEET, MODELS, byModel(items.map((it) => ({ model: it.model, d: it.workMs / 1000 }))));
  const longestS = Math.max(...items.map((it) => it.workMs)) / 1000;
  return { items, capacityBoundS, longestS, idealS: Math.max(capacityBoundS, longestS) };
}

/**
 * Rebuilds, from the results, how much VRAM each worker had in use over time (weights once per
 * model with items running, plus activations) and returns the highest use / VRAM: above 1 would
 * mean the scheduler overbooked a GPU.
 */
function peakVramUse(results: { result: ItemResult; createdMs: number; model: string }[]): number {
  const vramOf = new Map(FLEET.map((g) => [g.id, g.vramBytes]));
  const need = new Map(MODELS.map((m) => [m.name, m]));
  const events = new Map<string, { t: number; delta: number; model: string }[]>();
  for (const { result, createdMs, model } of results) {
    const start = createdMs + Number(result.queueMs);
    const list = events.get(result.workerId) ?? [];
    list.push({ t: start, delta: 1, model }, { t: start + Number(result.runMs), delta: -1, model });
    events.set(result.workerId, list);
  }
  let worst = 0;
  for (const [worker, list] of events) {
    list.sort((a, b) => a.t - b.t || a.delta - b.delta);
    const counts = new Map<string, number>();
    for (const e of list) {
      counts.set(e.model, (counts.get(e.model) ?? 0) + e.delta);
      let used = 0;
      for (const [m, c] of counts) if (c > 0) used += need.get(m)!.weightsBytes + c * need.get(m)!.activationBytes;
      worst = Math.max(worst, used / (vramOf.get(worker) ?? Infinity));
    }
  }
  return worst;
}

function shoalWorkers() {
  return FLEET.map((g) => simWorker(g.id, `${g.vramBytes / GB}GB`, slotsOf(g), slotsOf(g)));
}

function toRequest(items: FleetItem[]) {
  return items.map((it, i) => ({ model: it.model, params: { work_ms: it.workMs, tag: `item-${i}` } }));
}

async function runShoalBatch(shoal: ShoalStack, items: FleetItem[], deadlineMs: number) {
  const t0 = performance.now();
  const batch = await runBatch(shoal.client, { items: toRequest(items) }, deadlineMs);
  if (!batch) throw new Error(`the batch did not finish within ${deadlineMs / 1000} s\n${await describeUnfinishedBatches(shoal.client)}`);
  const makespanS = (performance.now() - t0) / 1000;
  const ok = batch.results.filter((r) => r.status === ItemStatus.ITEM_STATUS_SUCCEEDED).length;
  if (ok !== items.length) throw new Error(`Shoal batch: ${ok} of ${items.length} items succeeded`);
  const createdMs = batch.createdAt!.getTime();
  return {
    makespanS,
    attempts: sum(batch.results.map((r) => r.attempts)),
    peakVramUse: peakVramUse(batch.results.map((r) => ({ result: r, createdMs, model: items[r.index]!.model }))),
    queueMs: { p50: percentile(batch.results.map((r) => Number(r.queueMs)), 50), max: Math.max(...batch.results.map((r) => Number(r.queueMs))) },
  };
}

/** Calls whose batch never became terminal before the deadline are counted as lost, not waited for. */
async function runSingleCalls(shoal: ShoalStack, items: FleetItem[], deadlineMs: number) {
  const t0 = performance.now();
  let end = t0;
  const req = toRequest(items);
  const batches: (Batch | undefined)[] = await Promise.all(
    req.map((item) =>
      runBatch(shoal.client, { items: [item] }, deadlineMs).then((b) => {
        if (b) end = performance.now();
        return b;
      }),
    ),
  );
  const makespanS = (end - t0) / 1000;
  const done = batches.flatMap((b, i) => (b ? [{ b, i }] : []));
  const ok = done.filter(({ b }) => b.results[0]?.status === ItemStatus.ITEM_STATUS_SUCCEEDED).length;
  if (ok !== done.length) throw new Error(`single calls: ${ok} of ${done.length} finished items succeeded`);
  return {
    makespanS,
    lostItems: items.length - done.length,
    attempts: sum(done.map(({ b }) => b.results[0]!.attempts)),
    peakVramUse: peakVramUse(done.map(({ b, i }) => ({ result: b.results[0]!, createdMs: b.createdAt!.getTime(), model: items[i]!.model }))),
  };
}

/** Baseline (a): the VRAM-blind queue group. The dispatcher is this process; the GPUs are processes. */
const RR_SUBJECT = "bench.rr.items";

function startRoundRobinGpus(natsUrl: string, oomMs: number): BenchProc[] {
  return FLEET.map((g) => spawnBenchScript(`rr ${g.id}`, "procs/rr-gpu-consumer.js", [natsUrl, RR_SUBJECT, "gpus", g.id, String(g.vramBytes), String(oomMs)]));
}

async function runRoundRobin(natsUrl: string, items: FleetItem[], oomMs: number, procs: BenchProc[]) {
  const subject = RR_SUBJECT;
  try {
    await Promise.all(procs.map((p) => p.waitForLine((l) => l === "READY", 30_000)));
    const nc = await connect({ servers: natsUrl, name: "bench-rr-dispatcher" });
    try {
      // As many items out at once as the GPUs have slots in total (what a user would configure as
      // the queue's concurrency); NATS hands each to one GPU of the group.
      const window = sum(FLEET.map(slotsOf));
      const queue = items.map((_, i) => i);
      let outstanding = 0;
      let done = 0;
      let attempts = 0;
      let ooms = 0;
      const encoder = new TextEncoder();
      const decoder = new TextDecoder();
      const t0 = performance.now();
      await new Promise<void>((resolve, reject) => {
        const pump = () => {
          while (outstanding < window && queue.length > 0) {
            const i = queue.shift()!;
            const it = items[i]!;
            outstanding++;
            attempts++;
            nc.request(subject, encoder.encode(JSON.stringify({ i, model: it.model, work_ms: it.workMs })), { timeout: it.workMs + 60_000 }).then(
              (msg) => {
                outstanding--;
                const reply = JSON.parse(decoder.decode(msg.data)) as { ok: boolean; error?: string };
                if (reply.ok) done++;
                else if (reply.error === "OUT_OF_MEMORY") {
                  ooms++;
                  queue.push(i);
                } else return reject(new Error(`round-robin GPU answered ${reply.error}`));
                if (done === items.length) resolve();
                else pump();
              },
              (err: unknown) => reject(err),
            );
          }
        };
        pump();
      });
      const makespanS = (performance.now() - t0) / 1000;
      const perGpu = await Promise.all(
        FLEET.map(async (g) => JSON.parse(decoder.decode((await nc.request(`${subject}.stats.${g.id}`, new Uint8Array(), { timeout: 5000 })).data)) as Record<string, number>),
      );
      return { makespanS, attempts, wastedAttempts: ooms, window, oomMs, perGpu };
    } finally {
      await nc.close();
    }
  } finally {
    for (const p of procs) await stopProc(p);
  }
}

async function run(ctx: CaseContext): Promise<CaseOutcome> {
  const n = ctx.quick ? 100 : 2000;
  const targetS = ctx.quick ? 1.5 : 40;
  const w = workload(n, ctx.seed, targetS);
  const meanWorkMs = mean(w.items.map((it) => it.workMs));
  // A failed attempt in the VRAM-blind queue costs 5% of a mean item: loading and allocating
  // until the runtime gives up (small next to real weight loading, i.e. generous to the baseline).
  const oomMs = Math.round(0.05 * meanWorkMs);
  const idealS = w.idealS;
  ctx.log(`${n} items, ideal ${idealS.toFixed(2)} s (capacity bound ${w.capacityBoundS.toFixed(2)} s, longest item ${w.longestS.toFixed(2)} s)`);

  const stack = trackStack(new Stack());
  let shoal: ShoalStack | undefined;
  try {
    await stack.startNats();
    // Both fleets start together (they only heartbeat while the other one runs).
    const rrGpus = startRoundRobinGpus(stack.natsUrl, oomMs);
    shoal = await startShoal({ stack, coordinatorArgs: ["--max-items", "100000"], workers: shoalWorkers() });
    ctx.log("baseline (a): VRAM-blind NATS queue group");
    const rr = await runRoundRobin(stack.natsUrl, w.items, oomMs, rrGpus);
    ctx.log(`baseline (a): ${rr.makespanS.toFixed(2)} s, ${rr.wastedAttempts} wasted attempts`);

    ctx.log("Shoal: one RunBatch of every item");
    const etaTracking = trackEta(shoal.client); // samples the batch's ETA while it runs (lib/eta-accuracy.ts)
    const one = await runShoalBatch(shoal, w.items, Math.round(idealS * 10_000) + 60_000);
    const eta = await etaTracking.stop();
    ctx.log(`Shoal: ${one.makespanS.toFixed(2)} s`);
    ctx.log("baseline (b): every item as its own RunBatch, all at once");
    const singles = await runSingleCalls(shoal, w.items, Math.max(ctx.quick ? 20_000 : 60_000, Math.round(idealS * 3000)));
    ctx.log(`baseline (b): ${singles.makespanS.toFixed(2)} s${singles.lostItems > 0 ? `, ${singles.lostItems} calls never finished` : ""}`);

    const eff = (s: number) => idealS / s;
    const metrics: Metric[] = [
      check({
        name: "Shoal efficiency (ideal / makespan)",
        value: eff(one.makespanS),
        unit: "",
        reference: { label: "ideal", value: idealS, unit: "s" },
        ratio: eff(one.makespanS),
        target: { of: "value", op: ">=", threshold: TARGET_EFFICIENCY, text: `≥ ${TARGET_EFFICIENCY}` },
      }),
      { name: "Shoal makespan", value: one.makespanS, unit: "s", reference: { label: "ideal", value: idealS, unit: "s" }, ratio: one.makespanS / idealS },
      check({
        name: "Shoal vs VRAM-blind queue (efficiency)",
        value: eff(one.makespanS),
        unit: "",
        reference: { label: "queue-group efficiency", value: eff(rr.makespanS), unit: "" },
        ratio: rr.makespanS / one.makespanS,
        target: { of: "ratio", op: ">=", threshold: TARGET_VS_BASELINES, text: `≥ ${TARGET_VS_BASELINES}` },
      }),
      check({
        name: "Shoal vs concurrent single calls (efficiency)",
        value: eff(one.makespanS),
        unit: "",
        reference: { label: "single-call efficiency", value: eff(singles.makespanS), unit: "" },
        ratio: singles.makespanS / one.makespanS,
        target: { of: "ratio", op: ">=", threshold: TARGET_VS_BASELINES, text: `≥ ${TARGET_VS_BASELINES}` },
      }),
      check({
        // Every item fits its manifest here, so an attempt beyond the first can only come from
        // a placement the worker could not hold (out of memory) or a refusal.
        name: "Shoal: attempts beyond one per item (placement-caused OOM)",
        value: one.attempts - n,
        unit: "attempts",
        target: { of: "value", op: "<=", threshold: 0, text: "0" },
      }),
      check({
        name: "single calls: items never finished (lost)",
        value: singles.lostItems,
        unit: "items",
        target: { of: "value", op: "<=", threshold: 0, text: "0 (guarantee 2)" },
      }),
      { name: "queue group: wasted (OOM) attempts", value: rr.wastedAttempts, unit: "attempts", reference: { label: "items", value: n, unit: "" }, ratio: rr.wastedAttempts / n },
      ...etaAccuracyMetrics(eta.errors, "the Shoal batch"),
      { name: "Shoal peak VRAM in use / VRAM (reconstructed)", value: one.peakVramUse, unit: "", reference: { label: "no overbooking", value: 1, unit: "" }, ratio: one.peakVramUse },
    ];
    return {
      params: {
        fleet: FLEET.map((g) => ({ id: g.id, vramGB: g.vramBytes / GB, slots: slotsOf(g) })),
        models: MODELS.map((m) => ({ name: m.name, weightsGB: m.weightsBytes / GB, activationGBPerItem: m.activationBytes / GB, mix: MIX.find((x) => x.model === m.name)!.share })),
        items: n,
        seed: ctx.seed,
        durations: "log-normal (median 1, σ 0.6) clipped to [0.2, 5], scaled so the capacity bound is the target",
        targetCapacityBoundS: targetS,
        workMs: { mean: meanWorkMs, p50: percentile(w.items.map((it) => it.workMs), 50), max: Math.max(...w.items.map((it) => it.workMs)), total: sum(w.items.map((it) => it.workMs)) },
        workerMaxInFlight: "slots of its GPU (items of the smallest model its VRAM holds)",
        workerHeartbeatInterval: WORKER_HEARTBEAT,
        queueGroup: { window: rr.window, oomMs },
      },
      raw: {
        idealS,
        capacityBoundS: w.capacityBoundS,
        longestItemS: w.longestS,
        shoal: { ...one, efficiency: eff(one.makespanS), etaErrorAt25: eta.errors },
        concurrentSingleCalls: { ...singles, efficiency: eff(singles.makespanS) },
        vramBlindQueue: { ...rr, efficiency: eff(rr.makespanS) },
      },
      metrics,
      notes: [
        "ideal = max(capacity bound, longest item); capacity bound = least time the fleet's VRAM could deliver each model's item-seconds if work were divisible (a linear program, lib/ideal.ts)",
      ],
    };
  } finally {
    if (shoal) await shoal.stop();
    else await stopStack(stack);
  }
}

export const fleetCase: BenchCase = {
  name: "fleet",
  title: "SIMULATED heterogeneous fleet (2×80, 4×24, 2×16 GB), mixed 6/12/30 GB items: makespan vs ideal, vs a VRAM-blind queue and concurrent single calls",
  simulated: true,
  target: "efficiency ≥ 0.90, ≥ 1.15 × both baselines, 0 placement-caused OOM attempts",
  run,
};
