// sim (SIMULATED): the discrete-event simulator (bench/sim/simulator.ts) drives the real
// scheduling engine — schedulePass with the real queue, attempts, ledger and estimates — on a
// virtual clock through seven fleet/workload shapes (bench/sim/workloads.ts), under each policy.
// Efficiency = ideal / makespan, the ideal being the LP capacity bound of bench/lib/ideal.ts
// (per arrival instant for workloads arriving over time). The targets hold across seeds, not at
// one: the default policy runs every shape at the run's seed and at SEED_STRIDE more (the rows
// report the worst seed; raw.seeds has each), the other policies at the run's seed only. Also: the placement decision time
// (what shoal_placement_seconds measures) and the process RSS with 1,000 workers and 100,000
// queued items. Deterministic for a seed: no processes, no wall-clock in the results but the
// decision times and the run's own duration.

import { POLICIES, simulate, type SimResult } from "../sim/simulator.js";
import { SHAPES, scaleShape } from "../sim/workloads.js";
import { check, type CaseOutcome, type Metric } from "../lib/report.js";
import { etaAccuracyMetrics } from "../lib/eta-accuracy.js";
import { percentile } from "../lib/stats.js";
import type { BenchCase, CaseContext } from "./case.js";

const TARGET_EFFICIENCY = 0.9;
/** The policy the coordinator runs by default (--scheduler affinity, --longest-first on, learned + declared durations). */
export const DEFAULT_POLICY = "affinity+declared";
const DECISION_P99_S = 0.001;
const RSS_LIMIT_BYTES = 1e9;
/** The default policy's seeds are ctx.seed + these (a policy tuned to one seed's draw is not the goal). */
export const SEED_STRIDE = [0, 101, 202];

/** The seeds the default policy runs each shape at. */
export function simSeeds(seed: number): number[] {
  return SEED_STRIDE.map((d) => seed + d);
}

async function run(ctx: CaseContext): Promise<CaseOutcome> {
  const metrics: Metric[] = [];
  const table: Record<string, Record<string, number>> = {};
  const details: Record<string, Omit<SimResult, "batchTimes">[]> = {};
  const eta: Record<string, { batches: number; median: number; p90: number; seed: number }> = {};
  const seeds = simSeeds(ctx.seed);
  const perSeed: Record<string, { seed: number; efficiency: number; etaMedian?: number; etaBatches: number }[]> = {};
  // Scale: 1,000 workers, 100,000 queued items (quick: 100 and 5,000); every decision timed.
  const workers = ctx.quick ? 100 : 1000;
  const items = ctx.quick ? 5000 : 100_000;
  const scale = scaleShape({ seed: ctx.seed, workers, items });
  const policy = POLICIES.find((p) => p.name === DEFAULT_POLICY)!;
  // The first 5 s of virtual time: the fleet fills from the full queue and turns over a few
  // times, every decision made with ~100,000 items waiting (simulating all of them to the end is
  // not needed to time the decisions).
  const r = simulate(scale, policy, { measureDecisions: true, maxVirtualMs: 5_000 });
  // Read right after the scale run and before the shapes: their runs (ETA tracking, 17,000-item
  // workloads, every policy) would leave the process's RSS high and be counted as the scale's.
  const rss = process.memoryUsage().rss;
  for (const shape of SHAPES) {
    const w = shape({ seed: ctx.seed, quick: ctx.quick });
    table[w.name] = {};
    details[w.name] = [];
    for (const p of POLICIES) {
      // The default policy also scores the coordinator's ETAs (BatchProgress, scheduler/eta.ts); the
      // refreshes add no pass, so its schedule is the same as without them.
      const r = simulate(w, p, { trackEta: p.name === DEFAULT_POLICY });
      if (r.notEnded > 0 || r.doubleEnded > 0) throw new Error(`${w.name}/${p.name}: ${r.notEnded} items never ended, ${r.doubleEnded} ended twice`);
      table[w.name]![p.name] = r.efficiency;
      const { batchTimes: _ignored, ...rest } = r;
      details[w.name]!.push(rest);
      ctx.log(`${w.name} ${p.name}: efficiency ${r.efficiency.toFixed(3)} (${r.items} items, ${(r.wallMs / 1000).toFixed(1)} s)`);
      if (p.name === DEFAULT_POLICY) {
        // The same shape drawn at the other seeds: the rows report the worst of them.
        const runs = [{ seed: ctx.seed, r }];
        for (const seed of seeds.slice(1)) {
          const rs = simulate(shape({ seed, quick: ctx.quick }), p, { trackEta: true });
          if (rs.notEnded > 0 || rs.doubleEnded > 0) throw new Error(`${w.name}/${p.name} seed ${seed}: ${rs.notEnded} items never ended, ${rs.doubleEnded} ended twice`);
          runs.push({ seed, r: rs });
        }
        perSeed[w.name] = runs.map(({ seed, r }) => {
          const errors = r.etaErrors ?? [];
          return { seed, efficiency: r.efficiency, etaMedian: errors.length > 0 ? percentile(errors, 50) : undefined, etaBatches: errors.length };
        });
        ctx.log(`${w.name} ${p.name} per seed: ${perSeed[w.name]!.map((x) => `${x.seed}: ${x.efficiency.toFixed(3)} eta ${x.etaMedian?.toFixed(3) ?? "-"}`).join(", ")}`);
        const worstEff = runs.reduce((a, b) => (b.r.efficiency < a.r.efficiency ? b : a));
        const withEta = runs.filter((x) => (x.r.etaErrors ?? []).length > 0);
        const worstEta = withEta.length > 0 ? withEta.reduce((a, b) => (percentile(b.r.etaErrors!, 50) > percentile(a.r.etaErrors!, 50) ? b : a)) : undefined;
        const errors = worstEta?.r.etaErrors ?? [];
        if (errors.length > 0) eta[w.name] = { batches: errors.length, median: percentile(errors, 50), p90: percentile(errors, 90), seed: worstEta!.seed };
        const seedText = `worst of seeds ${seeds.join(", ")}`;
        metrics.push(
          ...etaAccuracyMetrics(errors, `${w.name}, SIMULATED, ${seedText}: seed ${worstEta?.seed}`),
          check({
            name: `${w.name}: efficiency (${p.name})`,
            value: worstEff.r.efficiency,
            unit: "",
            reference: { label: `ideal (${seedText}: seed ${worstEff.seed})`, value: worstEff.r.idealMs / 1000, unit: "s" },
            ratio: worstEff.r.efficiency,
            target: { of: "value", op: ">=", threshold: TARGET_EFFICIENCY, text: `≥ ${TARGET_EFFICIENCY}` },
          }),
          check({
            name: `${w.name}: overbooked GPUs (placement-caused)`,
            value: Math.max(...runs.map((x) => x.r.overbooked)),
            unit: "events",
            target: { of: "value", op: "<=", threshold: 0, text: "0" },
          }),
        );
      }
    }
    const greedy = table[w.name]!.greedy!;
    metrics.push({ name: `${w.name}: efficiency (greedy, before)`, value: greedy, unit: "", reference: { label: DEFAULT_POLICY, value: table[w.name]![DEFAULT_POLICY]!, unit: "" }, ratio: table[w.name]![DEFAULT_POLICY]! / greedy });
  }

  // The same run deciding by a scan of the fleet (placement.ts), as before the GPU index: the same
  // decisions (test/unit/gpu-index.test.ts), timed the same way, in the same process.
  const scan = simulate(scale, policy, { measureDecisions: true, maxVirtualMs: 5_000, scan: true });
  ctx.log(`scale, fleet scan: decision p99 ${((scan.decisionP99S ?? 0) * 1e6).toFixed(0)} µs over ${scan.decisions} decisions`);
  ctx.log(`scale: ${workers} workers, ${items} items: decision p99 ${((r.decisionP99S ?? 0) * 1e6).toFixed(0)} µs over ${r.decisions} decisions, ${(r.wallMs / 1000).toFixed(1)} s`);
  metrics.push(
    check({
      name: `placement decision p99 (${workers} workers, ${items} queued)`,
      value: (r.decisionP99S ?? 0) * 1000,
      unit: "ms",
      reference: { label: "p50", value: (r.decisionP50S ?? 0) * 1000, unit: "ms" },
      target: { of: "value", op: "<=", threshold: DECISION_P99_S * 1000, text: "≤ 1 ms" },
    }),
    check({
      name: `RSS with ${workers} workers and ${items} items (engine in process)`,
      value: rss / 1e6,
      unit: "MB",
      target: { of: "value", op: "<=", threshold: RSS_LIMIT_BYTES / 1e6, text: "≤ 1000 MB" },
    }),
    { name: `scale: placement decisions timed`, value: r.decisions ?? 0, unit: "decisions", reference: { label: "wall time", value: r.wallMs / 1000, unit: "s" } },
    {
      name: `placement decision p99 with the GPU index vs a fleet scan`,
      value: (r.decisionP99S ?? 0) * 1000,
      unit: "ms",
      reference: { label: "scan p99", value: (scan.decisionP99S ?? 0) * 1000, unit: "ms" },
      ratio: (r.decisionP99S ?? 0) / Math.max(1e-12, scan.decisionP99S ?? 0),
    },
    {
      name: `placement decision p50 with the GPU index vs a fleet scan`,
      value: (r.decisionP50S ?? 0) * 1000,
      unit: "ms",
      reference: { label: "scan p50", value: (scan.decisionP50S ?? 0) * 1000, unit: "ms" },
      ratio: (r.decisionP50S ?? 0) / Math.max(1e-12, scan.decisionP50S ?? 0),
    },
  );
  const { batchTimes: _bt, ...scaleRest } = r;
  const { batchTimes: _bt2, ...scanRest } = scan;
  return {
    params: { seed: ctx.seed, seeds, shapes: Object.keys(table), policies: POLICIES, defaultPolicy: DEFAULT_POLICY, scale: { workers, items } },
    raw: { efficiency: table, seeds: perSeed, eta, details, scale: scaleRest, scaleScan: scanRest },
    metrics,
    notes: [
      "SIMULATED fleets and a virtual clock; the scheduling engine is the coordinator's own code (schedulePass, BatchQueue, Attempts, VramLedger, VramEstimates, ActiveBatch)",
      `the default policy's rows (efficiency, ETA, overbooking) are the worst over seeds ${seeds.join(", ")} (raw.seeds: each); the other policies' at seed ${ctx.seed}`,
      "ideal = LP capacity bound (bench/lib/ideal.ts, identical GPUs merged) at every arrival instant, and the longest item on the fastest GPU; model load time is not in it",
    ],
  };
}

export const simCase: BenchCase = {
  name: "sim",
  title: "SIMULATED discrete-event runs of the real scheduling engine: seven fleet/workload shapes × policies (the default policy at three seeds, worst reported), vs the LP ideal; decision time at 1,000 workers",
  simulated: true,
  target: "every shape ≥ 0.90 of ideal at each of three seeds; ETA at 25 % within 20 % of the remaining time (median over batches); decision p99 ≤ 1 ms and RSS ≤ 1 GB at 1,000 workers / 100,000 items",
  run,
};
