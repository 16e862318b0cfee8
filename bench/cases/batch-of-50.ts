// batch of 50: the everyday call — one RunBatch of 50 items on 5 SIMULATED workers that run one
// item at a time — against the ideal makespan for those durations on 5 machines.

import { ItemStatus } from "../../proto/gen/shoal/v1/shoal.js";
import { check, type CaseOutcome } from "../lib/report.js";
import { identicalMachinesBound, listScheduleMakespan, lptMakespan } from "../lib/ideal.js";
import { runBatch, simWorker, startShoal, type ShoalStack } from "../lib/shoal.js";
import { percentile, seededRandom, sum } from "../lib/stats.js";
import type { BenchCase, CaseContext } from "./case.js";

const TARGET_RATIO = 1.02;

async function run(ctx: CaseContext): Promise<CaseOutcome> {
  const workers = 5;
  const items = 50;
  // Full: 200..1000 ms per item; quick: a tenth of that.
  const [minMs, maxMs] = ctx.quick ? [20, 100] : [200, 1000];
  const repeats = ctx.quick ? 1 : 3;
  const rand = seededRandom(ctx.seed + 50);
  const durations = Array.from({ length: items }, () => Math.round(minMs + rand() * (maxMs - minMs)));
  const ideal = identicalMachinesBound(durations, workers);
  const lpt = lptMakespan(durations, workers);
  const inOrder = listScheduleMakespan(durations, workers);

  let shoal: ShoalStack | undefined;
  try {
    // One item at a time per worker: the SIMULATED backend runs every item it holds at once, so
    // --max-in-flight 1 is what makes each worker a single-slot GPU.
    shoal = await startShoal({
      coordinatorArgs: ["--max-items", "1000"],
      workers: Array.from({ length: workers }, (_, i) => simWorker(`b50-${i + 1}`, "16GB", 1, 1)),
    });
    const req = { items: durations.map((work_ms, i) => ({ model: "sim-6g", params: { work_ms, tag: `item-${i}` } })) };
    // One warm-up batch so the first measured call does not pay for connection setup.
    if (!(await runBatch(shoal.client, { items: [{ model: "sim-6g", params: { work_ms: 1 } }] }, 30_000))) throw new Error("warm-up batch did not finish");
    const latencies: number[] = [];
    const overheads: number[] = [];
    for (let r = 0; r < repeats; r++) {
      const t0 = performance.now();
      const batch = await runBatch(shoal.client, req, 120_000);
      const ms = performance.now() - t0;
      if (!batch) throw new Error("the batch did not finish within 120 s");
      const ok = batch.results.filter((x) => x.status === ItemStatus.ITEM_STATUS_SUCCEEDED).length;
      if (ok !== items) throw new Error(`${ok} of ${items} items succeeded`);
      latencies.push(ms);
      // Time no worker was running an item of this batch, summed over workers.
      overheads.push(ms * workers - sum(batch.results.map((x) => x.runMs)));
      ctx.log(`run ${r + 1}: ${ms.toFixed(0)} ms (ideal ${ideal} ms)`);
    }
    const latency = percentile(latencies, 50);
    return {
      params: { workers, items, model: "sim-6g (SIMULATED)", workMs: { min: minMs, max: maxMs, total: sum(durations) }, repeats, workerMaxInFlight: 1 },
      raw: {
        durationsMs: durations,
        latenciesMs: latencies,
        idleWorkerMsPerRun: overheads,
        idealMs: ideal,
        lptMakespanMs: lpt,
        inOrderListScheduleMs: inOrder,
      },
      metrics: [
        check({
          name: "RunBatch(50) latency (median of runs)",
          value: latency,
          unit: "ms",
          reference: { label: "ideal makespan", value: ideal, unit: "ms" },
          ratio: latency / ideal,
          target: { of: "ratio", op: "<=", threshold: TARGET_RATIO, text: `≤ ${TARGET_RATIO} × ideal` },
        }),
        { name: "LPT schedule makespan", value: lpt, unit: "ms", reference: { label: "ideal makespan", value: ideal, unit: "ms" }, ratio: lpt / ideal },
        { name: "in-order list schedule makespan", value: inOrder, unit: "ms", reference: { label: "ideal makespan", value: ideal, unit: "ms" }, ratio: inOrder / ideal },
      ],
      notes: ["ideal = max(total work / 5, longest item): a lower bound no schedule beats; the LPT and in-order list schedules are what zero-overhead schedulers would reach"],
    };
  } finally {
    await shoal?.stop();
  }
}

export const batchOf50Case: BenchCase = {
  name: "batch50",
  title: "RunBatch of 50 SIMULATED items (200..1000 ms) on 5 SIMULATED workers vs the ideal makespan",
  simulated: true,
  target: "≤ 1.02 × ideal makespan",
  run,
};
