// Lower bounds on makespan: what no scheduler, however clever, could beat. The fleet case is
// measured against these, so "efficiency" = ideal / makespan is at most 1.

import { maximize } from "../../coordinator/scheduler/lp.js";
import { sum } from "./stats.js";

export { maximize };

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
  const pairs: { m: number; g: number; cap: number }[] = [];
  models.forEach((m, mi) => gpus.forEach((g, gi) => {
    const cap = capacity(g, m);
    if (cap > 0) pairs.push({ m: mi, g: gi, cap });
  }));
  // Variables: x0 = λ, x1.. = u for each pair. Constraints A x ≤ b.
  const nVars = 1 + pairs.length;
  const A: number[][] = [];
  const b: number[] = [];
  models.forEach((m, mi) => {
    const W = workByModel.get(m.name) ?? 0;
    if (W <= 0) return;
    if (!pairs.some((p) => p.m === mi)) throw new Error(`no GPU can hold model ${m.name}`);
    const row = new Array<number>(nVars).fill(0);
    row[0] = W;
    pairs.forEach((p, k) => {
      if (p.m === mi) row[1 + k] = -p.cap;
    });
    A.push(row);
    b.push(0);
  });
  gpus.forEach((_, gi) => {
    const row = new Array<number>(nVars).fill(0);
    pairs.forEach((p, k) => {
      if (p.g === gi) row[1 + k] = 1;
    });
    A.push(row);
    b.push(1);
  });
  const c = new Array<number>(nVars).fill(0);
  c[0] = 1;
  const lambda = maximize(c, A, b).value;
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
