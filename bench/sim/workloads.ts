// SIMULATION. Fleet and workload shapes for the simulator (bench/sim/simulator.ts), each seeded.
// The first is the fleet case's own (bench/cases/fleet.ts: the same fleet, mix and durations);
// the others vary what a policy tuned to one shape would get wrong: arrivals over time, many
// tenants with priorities, model load time, GPU speeds, misestimated VRAM, scale.

import { SIMULATED_MODELS } from "../../worker/simulated-backend.js";
import { normal, seededRandom } from "../lib/stats.js";
import type { SimBatch, SimGpuSpec, SimItem, SimModel, SimWorkload } from "./simulator.js";

const GB = 1e9;

export const SIM_MODELS: SimModel[] = SIMULATED_MODELS.filter((m) => m.vram.weights_bytes > 0).map((m) => ({
  name: m.name,
  weightsBytes: m.vram.weights_bytes,
  activationBytes: m.vram.activation_bytes,
}));

/** Slots as the fleet case gives them: items of the smallest model the VRAM holds. */
export function slotsFor(vramBytes: number, models: SimModel[] = SIM_MODELS): number {
  return Math.max(1, ...models.map((m) => (vramBytes >= m.weightsBytes + m.activationBytes ? Math.floor((vramBytes - m.weightsBytes) / m.activationBytes) : 0)));
}

function gpu(id: string, gb: number, speed = 1): SimGpuSpec {
  return { id, vramBytes: gb * GB, speed, slots: slotsFor(gb * GB) };
}

/** The fleet case's fleet: 2 × 80, 4 × 24, 2 × 16 GB. */
export const FLEET_CASE_GPUS: SimGpuSpec[] = [
  ...[1, 2].map((i) => gpu(`g80-${i}`, 80)),
  ...[1, 2, 3, 4].map((i) => gpu(`g24-${i}`, 24)),
  ...[1, 2].map((i) => gpu(`g16-${i}`, 16)),
];

export const FLEET_MIX = [
  { model: "sim-6g", share: 0.5 },
  { model: "sim-12g", share: 0.3 },
  { model: "sim-30g", share: 0.2 },
];

/** Log-normal durations (median 1, σ 0.6, clipped to [0.2, 5]) × `unitMs`, models from `mix`. */
function items(rand: () => number, n: number, unitMs: number, mix = FLEET_MIX): SimItem[] {
  return Array.from({ length: n }, () => {
    const u = rand();
    let acc = 0;
    const model = mix.find((x) => (acc += x.share) > u)?.model ?? mix[mix.length - 1]!.model;
    const d = Math.min(5, Math.max(0.2, Math.exp(0.6 * normal(rand))));
    return { model, workMs: Math.max(1, Math.round(d * unitMs)) };
  });
}

/** Batch arrivals as a Poisson process of the given mean gap. */
function arrivals(rand: () => number, n: number, meanGapMs: number): number[] {
  let t = 0;
  return Array.from({ length: n }, () => {
    const at = t;
    t += -Math.log(1 - rand()) * meanGapMs;
    return Math.round(at);
  });
}

export interface ShapeOptions {
  seed: number;
  /** Fewer items, for tests and --quick. */
  quick?: boolean;
}

/** 1. The fleet case: 2,000 items in one batch at once (its fleet, mix and duration shape). */
export function fleetShape(o: ShapeOptions): SimWorkload {
  const rand = seededRandom(o.seed);
  const n = o.quick ? 300 : 2000;
  return { name: "fleet-case", gpus: FLEET_CASE_GPUS, models: SIM_MODELS, batches: [{ id: "b0", arrivalMs: 0, priority: 0, items: items(rand, n, 600) }], loadBytesPerS: Infinity, oomMs: 50 };
}

/** Weights load at 10 GB/s (0.4 to 2 s a load of the simulated models). */
const LOAD_BYTES_PER_S = 10 * GB;

/** 2. The same fleet and mix, items 2.5 × as long, paying model loads. */
export function fleetLoadsShape(o: ShapeOptions): SimWorkload {
  const rand = seededRandom(o.seed + 7);
  const n = o.quick ? 300 : 2000;
  return { name: "fleet-with-loads", gpus: FLEET_CASE_GPUS, models: SIM_MODELS, batches: [{ id: "b0", arrivalMs: 0, priority: 0, items: items(rand, n, 1500) }], loadBytesPerS: LOAD_BYTES_PER_S, oomMs: 50 };
}

/** 3. The seed's shape: 50-item batches arriving at random, one model per batch, loads paid. */
export function seedBatchesShape(o: ShapeOptions): SimWorkload {
  const rand = seededRandom(o.seed + 1);
  const n = o.quick ? 20 : 200;
  const at = arrivals(rand, n, 1500);
  const batches: SimBatch[] = at.map((t, i) => {
    const u = rand();
    const model = u < 0.5 ? "sim-6g" : u < 0.8 ? "sim-12g" : "sim-30g";
    return { id: `s${i}`, arrivalMs: t, priority: 0, items: items(rand, 50, 800, [{ model, share: 1 }]) };
  });
  return { name: "seed-50-item-batches", gpus: FLEET_CASE_GPUS, models: SIM_MODELS, batches, loadBytesPerS: LOAD_BYTES_PER_S, oomMs: 50 };
}

/** 4. Many tenants with priorities 0–4 and batch sizes 1–400, arriving over time, on a larger fleet. */
export function tenantsShape(o: ShapeOptions): SimWorkload {
  const rand = seededRandom(o.seed + 2);
  const n = o.quick ? 40 : 120;
  const gpus = [...Array.from({ length: 4 }, (_, i) => gpu(`a80-${i}`, 80)), ...Array.from({ length: 12 }, (_, i) => gpu(`a24-${i}`, 24)), ...Array.from({ length: 8 }, (_, i) => gpu(`a16-${i}`, 16))];
  const at = arrivals(rand, n, 400);
  const batches = at.map((t, i) => ({ id: `t${i}`, arrivalMs: t, priority: Math.floor(rand() * 5), items: items(rand, 1 + Math.floor(rand() ** 2 * 400), 700) }));
  return { name: "tenants-priorities", gpus, models: SIM_MODELS, batches, loadBytesPerS: LOAD_BYTES_PER_S, oomMs: 50 };
}

/** 5. GPUs of different speeds (0.5× to 2×) and sizes, the fleet mix. */
export function speedsShape(o: ShapeOptions): SimWorkload {
  const rand = seededRandom(o.seed + 3);
  const n = o.quick ? 300 : 3000;
  const gpus = [gpu("h80-fast", 80, 2), gpu("h80-slow", 80, 0.7), gpu("h48-a", 48, 1.5), gpu("h48-b", 48, 1), gpu("h24-fast", 24, 2), gpu("h24-slow", 24, 0.5), gpu("h24-c", 24, 1), gpu("h16-a", 16, 1.2), gpu("h16-b", 16, 0.6)];
  return { name: "mixed-speeds", gpus, models: SIM_MODELS, batches: [{ id: "b0", arrivalMs: 0, priority: 0, items: items(rand, n, 600) }], loadBytesPerS: LOAD_BYTES_PER_S, oomMs: 50 };
}

/**
 * 6. Misestimated VRAM: sim-12g items really use 1.6 × their manifest's activations at two image
 * widths; the first attempts of each shape fail OUT_OF_MEMORY until the estimate has learned.
 */
export function misestimateShape(o: ShapeOptions): SimWorkload {
  const rand = seededRandom(o.seed + 4);
  const n = o.quick ? 300 : 2000;
  const base = items(rand, n, 600).map((it) => {
    if (it.model !== "sim-12g") return it;
    const width = rand() < 0.5 ? 512 : 768;
    return { ...it, width, useBytes: Math.round(4 * GB * (width === 512 ? 1.3 : 1.6)) };
  });
  return { name: "misestimated-vram", gpus: FLEET_CASE_GPUS, models: SIM_MODELS, batches: [{ id: "b0", arrivalMs: 0, priority: 0, items: base }], loadBytesPerS: LOAD_BYTES_PER_S, oomMs: 200 };
}

/** 7. Only small GPUs and one model dominant: affinity must not strand work (24 × 24 GB). */
export function uniformShape(o: ShapeOptions): SimWorkload {
  const rand = seededRandom(o.seed + 5);
  const n = o.quick ? 300 : 4000;
  const gpus = Array.from({ length: 24 }, (_, i) => gpu(`u24-${i}`, 24));
  const mix = [
    { model: "sim-6g", share: 0.8 },
    { model: "sim-12g", share: 0.2 },
  ];
  return { name: "uniform-24gb", gpus, models: SIM_MODELS, batches: [{ id: "b0", arrivalMs: 0, priority: 0, items: items(rand, n, 1500, mix) }], loadBytesPerS: LOAD_BYTES_PER_S, oomMs: 50 };
}

/** The scale shape: 1,000 workers (a mix of sizes), 100,000 items in 50-item batches, all queued at once. */
export function scaleShape(o: ShapeOptions & { workers?: number; items?: number }): SimWorkload {
  const rand = seededRandom(o.seed + 6);
  const nw = o.workers ?? 1000;
  const ni = o.items ?? 100_000;
  const sizes = [80, 48, 24, 24, 16];
  const gpus = Array.from({ length: nw }, (_, i) => gpu(`x${i}`, sizes[i % sizes.length]!, [0.8, 1, 1.25][i % 3]!));
  const batches: SimBatch[] = [];
  for (let b = 0; b * 50 < ni; b++) batches.push({ id: `x${b}`, arrivalMs: 0, priority: b % 3, items: items(rand, Math.min(50, ni - b * 50), 2000) });
  return { name: "scale-1000-workers", gpus, models: SIM_MODELS, batches, loadBytesPerS: LOAD_BYTES_PER_S, oomMs: 50 };
}

export const SHAPES = [fleetShape, fleetLoadsShape, seedBatchesShape, tenantsShape, speedsShape, misestimateShape, uniformShape];
