// Lower bounds on makespan: what no scheduler, however clever, could beat. The fleet case is
// measured against these, so "efficiency" = ideal / makespan is at most 1.

import { type CapacityPair, capacityRate } from "../../coordinator/scheduler/lp.js";
import { sum } from "./stats.js";

export interface SimGpu {
  id: string;
  vramBytes: number;
}

export interface SimModelNeed {
  name: string;
  weightsBytes: number;
  activationBytes: number;
}

/**
 * How many items of `m` GPU `g` can hold at once when it runs only `m`: its weights once, then
 * one activation per item, as the simulated workers account VRAM. Real-valued, not floored: it is
 * used for a lower bound. 0 when not even one item fits.
 */
export function capacity(g: SimGpu, m: SimModelNeed): number {
  if (g.vramBytes < m.weightsBytes + m.activationBytes) return 0;
  return m.activationBytes > 0 ? (g.vramBytes - m.weightsBytes) / m.activationBytes : Infinity;
}

/**
 * The capacity bound T* for a heterogeneous fleet: the least time in which the fleet could
 * deliver each model's total work (item-seconds) if work were divisible.
 *
 * Running c_m items of each model m at once on GPU g needs Σ_m (w_m + c_m·a_m) ≤ V_g over the
 * models present, which implies Σ_m c_m / cap(g, m) ≤ 1 with cap(g, m) = (V_g − w_m) / a_m
 * (each term is at most c_m·a_m / (V_g − Σ w), and those sum to at most 1). So over a schedule of
 * length T, GPU g spends "GPU-time" Σ_m W_{m,g} / cap(g, m) ≤ T, where W_{m,g} is the
 * item-seconds of model m it ran. T* is the least T for which such a split of every W_m exists:
 * a linear program (maximize λ = 1/T with u_{m,g} = W_{m,g} / (cap·T) the share of g given to m):
 *
 *   maximize λ  s.t.  Σ_g cap(g,m)·u_{m,g} ≥ λ·W_m  for each model,  Σ_m u_{m,g} ≤ 1  for each GPU,  u ≥ 0.
 */
export function capacityBound(gpus: SimGpu[], models: SimModelNeed[], workByModel: Map<string, number>): number {
  // The shared capacity LP (coordinator/scheduler/lp.ts) with every GPU its own class of capacity 1.
  const pairs: CapacityPair[] = [];
  models.forEach((m, mi) =>
    gpus.forEach((g, gi) => {
      const cap = capacity(g, m);
      if (cap > 0) pairs.push({ model: mi, cls: gi, rate: cap });
    }),
  );
  const work = models.map((m) => Math.max(0, workByModel.get(m.name) ?? 0));
  models.forEach((m, mi) => {
    if (work[mi]! > 0 && !pairs.some((p) => p.model === mi)) throw new Error(`no GPU can hold model ${m.name}`);
  });
  // A model without work binds nothing: its pairs, and with them its row, are left out.
  const { lambda } = capacityRate(work, pairs.filter((p) => work[p.model]! > 0), gpus.map(() => 1));
  return 1 / lambda;
}

/** Identical machines, one item at a time each: max(total / machines, longest item). */
export function identicalMachinesBound(durations: number[], machines: number): number {
  return Math.max(sum(durations) / machines, Math.max(...durations));
}

/** Makespan of list scheduling in the given order: each item to the machine free first. */
export function listScheduleMakespan(durations: number[], machines: number): number {
  const free = new Array<number>(machines).fill(0);
  for (const d of durations) {
    let k = 0;
    for (let i = 1; i < machines; i++) if (free[i]! < free[k]!) k = i;
    free[k] = free[k]! + d;
  }
  return Math.max(...free);
}

/** LPT: list scheduling, longest item first (within 4/3 of optimal). */
export function lptMakespan(durations: number[], machines: number): number {
  return listScheduleMakespan([...durations].sort((a, b) => b - a), machines);
}
