// The dispatch case's per-step breakdown of added latency (SHOAL_BENCH_STEPS=1): the coordinator,
// at debug level, logs one "batch step times" line per batch (coordinator/step-times.ts); this
// joins them with the client-observed RunBatch time of the same batches and gives p50/p99 of each
// step. The rest of the client's time (gRPC both ways, the client's own event loop, the watch
// answer after the terminal record is stored) is the `grpcAndAnswer` step.

import { percentile } from "./stats.js";

export const STEP_LINE = "batch step times";

export interface StepRow {
  step: string;
  p50: number;
  p99: number;
  mean: number;
}

export interface StepBreakdown {
  /** Batches with both a client time and a step line. */
  batches: number;
  rows: StepRow[];
}

/** `logs`: the coordinator's parsed log lines; `clientMsById`: each batch's RunBatch time as the client saw it. */
export function stepBreakdown(logs: Record<string, unknown>[], clientMsById: Map<string, number>): StepBreakdown {
  const byStep = new Map<string, number[]>();
  let batches = 0;
  for (const l of logs) {
    if (l.msg !== STEP_LINE || typeof l.batchId !== "string") continue;
    const client = clientMsById.get(l.batchId);
    const steps = l.steps as Record<string, number> | undefined;
    if (client === undefined || !steps) continue;
    batches++;
    const add = (k: string, v: number) => {
      let list = byStep.get(k);
      if (!list) byStep.set(k, (list = []));
      list.push(v);
    };
    for (const [k, v] of Object.entries(steps)) add(k, v);
    if (typeof steps.total === "number") add("grpcAndAnswer", client - steps.total);
    add("client", client);
  }
  const rows = [...byStep].map(([step, v]) => ({ step, p50: round2(percentile(v, 50)), p99: round2(percentile(v, 99)), mean: round2(v.reduce((a, b) => a + b, 0) / v.length) }));
  return { batches, rows };
}

export function formatStepBreakdown(b: StepBreakdown): string {
  const lines = [`step breakdown over ${b.batches} batches (ms): step p50 p99 mean`];
  for (const r of b.rows) lines.push(`  ${r.step.padEnd(20)} ${r.p50.toFixed(2).padStart(8)} ${r.p99.toFixed(2).padStart(8)} ${r.mean.toFixed(2).padStart(8)}`);
  return lines.join("\n");
}

function round2(x: number): number {
  return Math.round(x * 100) / 100;
}
