// SIMULATION. The hedging shape (bench/cases/hedging.ts runs it with real processes): batch50's
// batch — 50 items of 200..1000 ms on five single-slot GPUs — where one GPU is 3 × slower than
// the other four. Without hedging, the last items that land on the slow GPU finish long after
// the rest of the fleet has gone idle.

import { seededRandom } from "../lib/stats.js";
import type { SimWorkload } from "./simulator.js";
import { SIM_MODELS } from "./workloads.js";

const GB = 1e9;

export interface HedgingShapeOptions {
  seed: number;
  items?: number;
  minMs?: number;
  maxMs?: number;
  /** Speed of the slow GPU (the others run at 1). */
  slowSpeed?: number;
  gpus?: number;
  /** Batches one after another, each `spacing` × the ideal time of one after the previous (default 2: the fleet is idle again). */
  batches?: number;
  spacing?: number;
}

/** The item durations of one batch: uniform in [minMs, maxMs], seeded as batch50's are. */
export function hedgingDurations(seed: number, items = 50, minMs = 200, maxMs = 1000): number[] {
  const rand = seededRandom(seed);
  return Array.from({ length: items }, () => Math.round(minMs + rand() * (maxMs - minMs)));
}

export function hedgingShape(o: HedgingShapeOptions): SimWorkload {
  const gpus = o.gpus ?? 5;
  const slow = o.slowSpeed ?? 1 / 3;
  const batches = Array.from({ length: o.batches ?? 1 }, (_, b) => {
    const durations = hedgingDurations(o.seed + b, o.items ?? 50, o.minMs ?? 200, o.maxMs ?? 1000);
    return { id: `hedge-${b}`, arrivalMs: 0, priority: 0, items: durations.map((workMs) => ({ model: "sim-6g", workMs })) };
  });
  // Arrivals one after another, with the fleet idle in between (the first batch teaches speeds).
  let at = 0;
  for (const b of batches) {
    b.arrivalMs = Math.round(at);
    at += ((o.spacing ?? 2) * b.items.reduce((s, it) => s + it.workMs, 0)) / (gpus - 1 + slow);
  }
  return {
    name: "hedging",
    gpus: Array.from({ length: gpus }, (_, i) => ({ id: `h${i + 1}`, vramBytes: 16 * GB, speed: i === gpus - 1 ? slow : 1, slots: 1 })),
    models: SIM_MODELS,
    batches,
    loadBytesPerS: Infinity,
    oomMs: 10,
  };
}
