// SIMULATION. A shape where defragmentation matters: models whose weights fill most of a GPU
// take turns over time, on a fleet that keeps weights resident after their last item (the
// simulator's `residency`). A GPU left holding one model's idle weights has no room for the
// other's items until those weights are evicted, so without defragmentation the later model
// waits for ever on every GPU the earlier one touched.

import { seededRandom } from "../lib/stats.js";
import type { SimBatch, SimModel, SimWorkload } from "./simulator.js";

const GB = 1e9;

/** Two models of 14 GB weights (+ 2 GB per item): one fits a 24 GB GPU, never both. */
export const DEFRAG_MODELS: SimModel[] = [
  { name: "wide-a", weightsBytes: 14 * GB, activationBytes: 2 * GB },
  { name: "wide-b", weightsBytes: 14 * GB, activationBytes: 2 * GB },
];

/**
 * `gpus` GPUs of 24 GB (5 item slots); batches of 10–40 items of one model each arriving at
 * random (mean gap 4 s), the model alternating in runs, so each model's turn ends with its
 * weights idle on the GPUs it used. Weights load at 5 GB/s (2.8 s a model).
 */
export function defragShape(opts: { seed: number; quick?: boolean; gpus?: number }): SimWorkload {
  const rand = seededRandom(opts.seed);
  const nGpus = opts.gpus ?? 4;
  const nBatches = opts.quick ? 12 : 40;
  const batches: SimBatch[] = [];
  let t = 0;
  let model = "wide-a";
  for (let i = 0; i < nBatches; i++) {
    if (rand() < 0.35) model = model === "wide-a" ? "wide-b" : "wide-a";
    const n = 10 + Math.floor(rand() * 31);
    batches.push({ id: `d${i}`, arrivalMs: Math.round(t), priority: 0, items: Array.from({ length: n }, () => ({ model, workMs: 400 + Math.round(rand() * 1200) })) });
    t += -Math.log(1 - rand()) * 4000;
  }
  return {
    name: "resident-turns",
    gpus: Array.from({ length: nGpus }, (_, i) => ({ id: `r24-${i}`, vramBytes: 24 * GB, speed: 1, slots: 5 })),
    models: DEFRAG_MODELS,
    batches,
    loadBytesPerS: 5 * GB,
    oomMs: 10,
  };
}
