// hedging: batch50's call — one RunBatch of 50 items (200..1000 ms) on 5 SIMULATED single-slot
// workers — where one worker is 3 × slower than the others (--sim-speed 1/3). Measured twice in
// the same run, on two fresh stacks: with straggler hedging (the default) and with
// `--hedging off`, each against the ideal makespan of that fleet.

import { ItemStatus } from "../../proto/gen/shoal/v1/shoal.js";
import { freePort } from "../../test/harness/processes.js";
import { check, type CaseOutcome } from "../lib/report.js";
import { runBatch, simWorker, startShoal, type ShoalStack } from "../lib/shoal.js";
import { percentile, seededRandom, sum } from "../lib/stats.js";
import type { BenchCase, CaseContext } from "./case.js";

const TARGET_RATIO = 1.15;
const SLOW_SPEED = 1 / 3;

/**
 * The least makespan on machines of the given speeds (items take work / speed): no schedule
 * beats the total work over the total speed, nor the longest item on the fastest machine.
 */
export function uniformMachinesBound(durations: number[], speeds: number[]): number {
  return Math.max(sum(durations) / sum(speeds), Math.max(...durations) / Math.max(...speeds));
}

interface Measured {
  latenciesMs: number[];
  hedges: Record<string, number>;
}

async function measure(ctx: CaseContext, hedging: boolean, req: { items: { model: string; params: Record<string, unknown> }[] }, workers: number, repeats: number, ideal: number): Promise<Measured> {
  let shoal: ShoalStack | undefined;
  const label = hedging ? "hedging on" : "hedging off";
  try {
    const metricsPort = await freePort();
    shoal = await startShoal({
      coordinatorArgs: ["--max-items", "1000", "--metrics-port", String(metricsPort), "--hedging", hedging ? "on" : "off"],
      // One item at a time per worker (as batch50); the last worker runs at a third of the speed.
      workers: Array.from({ length: workers }, (_, i) => simWorker(`hedge-${i + 1}`, "16GB", 1, 1, i === workers - 1 ? ["--sim-speed", String(SLOW_SPEED)] : [])),
    });
    // One unmeasured batch of the same shape first: the coordinator learns the GPUs' speeds from
    // it, as a fleet that has been running has (and the first call pays connection setup).
    if (!(await runBatch(shoal.client, req, 120_000))) throw new Error(`${label}: the warm-up batch did not finish`);
    const latenciesMs: number[] = [];
    for (let r = 0; r < repeats; r++) {
      const t0 = performance.now();
      const batch = await runBatch(shoal.client, req, 120_000);
      const ms = performance.now() - t0;
      if (!batch) throw new Error(`${label}: the batch did not finish within 120 s`);
      const ok = batch.results.filter((x) => x.status === ItemStatus.ITEM_STATUS_SUCCEEDED).length;
      if (ok !== req.items.length || batch.results.length !== req.items.length) throw new Error(`${label}: ${ok} of ${req.items.length} items succeeded`);
      latenciesMs.push(ms);
      ctx.log(`${label}, run ${r + 1}: ${ms.toFixed(0)} ms (ideal ${ideal.toFixed(0)} ms)`);
    }
    return { latenciesMs, hedges: await hedgeCounts(metricsPort) };
  } finally {
    await shoal?.stop();
  }
}

/** shoal_item_hedges_total by outcome, from the coordinator's /metrics (warm-up included). */
async function hedgeCounts(port: number): Promise<Record<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(10_000) })).text();
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^shoal_item_hedges_total\{[^}]*outcome="(\w+)"[^}]*\} (\S+)$/gm)) out[m[1]!] = (out[m[1]!] ?? 0) + Number(m[2]);
  return out;
}

async function run(ctx: CaseContext): Promise<CaseOutcome> {
  const workers = 5;
  const items = 50;
  // batch50's durations: full 200..1000 ms per item; quick: a tenth of that.
  const [minMs, maxMs] = ctx.quick ? [20, 100] : [200, 1000];
  const repeats = ctx.quick ? 1 : 3;
  const rand = seededRandom(ctx.seed + 50);
  const durations = Array.from({ length: items }, () => Math.round(minMs + rand() * (maxMs - minMs)));
  const speeds = Array.from({ length: workers }, (_, i) => (i === workers - 1 ? SLOW_SPEED : 1));
  const ideal = uniformMachinesBound(durations, speeds);
  const req = { items: durations.map((work_ms, i) => ({ model: "sim-6g", params: { work_ms, tag: `item-${i}` } })) };

  const on = await measure(ctx, true, req, workers, repeats, ideal);
  const off = await measure(ctx, false, req, workers, repeats, ideal);
  const withHedging = percentile(on.latenciesMs, 50);
  const without = percentile(off.latenciesMs, 50);
  return {
    params: { workers, slowWorkerSpeed: SLOW_SPEED, items, model: "sim-6g (SIMULATED)", workMs: { min: minMs, max: maxMs, total: sum(durations) }, repeats, workerMaxInFlight: 1, hedgeAfterFactor: 2 },
    raw: {
      durationsMs: durations,
      idealMs: ideal,
      hedgingOn: { latenciesMs: on.latenciesMs, hedges: on.hedges },
      hedgingOff: { latenciesMs: off.latenciesMs, hedges: off.hedges },
    },
    metrics: [
      check({
        name: "RunBatch(50), one GPU 3 × slower, with hedging (median of runs)",
        value: withHedging,
        unit: "ms",
        reference: { label: "ideal makespan", value: ideal, unit: "ms" },
        ratio: withHedging / ideal,
        target: { of: "ratio", op: "<=", threshold: TARGET_RATIO, text: `≤ ${TARGET_RATIO} × ideal` },
      }),
      { name: "the same with --hedging off (median of runs)", value: without, unit: "ms", reference: { label: "ideal makespan", value: ideal, unit: "ms" }, ratio: without / ideal },
      { name: "with hedging vs without", value: withHedging, unit: "ms", reference: { label: "--hedging off", value: without, unit: "ms" }, ratio: withHedging / without },
    ],
    notes: [
      "ideal = max(total work / total speed (4 + 1/3), longest item): a lower bound no schedule beats",
      "each configuration runs on a fresh stack: one unmeasured warm-up batch of the same shape (the coordinator learns the GPUs' speeds, as on a running fleet), then the measured runs",
      `hedges (warm-up included) with hedging on: ${JSON.stringify(on.hedges)}`,
    ],
  };
}

export const hedgingCase: BenchCase = {
  name: "hedging",
  title: "RunBatch of 50 SIMULATED items on 5 SIMULATED workers, one 3 × slower: with and without straggler hedging vs the ideal makespan",
  simulated: true,
  target: "≤ 1.15 × ideal makespan with hedging (without hedging reported beside it)",
  run,
};
