// The capacity bound on a batch's end: the least time in which the fleet's VRAM could run the
// work it has left, per model, when every GPU is split between the models as the affinity
// planner's LP splits it (affinity.ts: each model's work done at one rate λ, 1 / λ the horizon).
//
// Why the ETA needs it: the fluid model (eta.ts) converts predicted work into time by the items
// the fleet runs at once, a count taken while the mix of models was another. Items of a small
// model run many to a GPU and items of a large one few, so when the mix moves to the models that
// fill a GPU with fewer items, the count over-states what the fleet can do, and the per-model
// pools (each at what its VRAM would allow on every GPU at once) do not see that two models want
// the same large GPUs. With one batch running, every one-batch shape of the `sim` case came out
// optimistic at every seed (misestimated-vram −0.13 to −0.22 of the remaining time at 25 %:
// 80 GB GPUs that `sim-30g` and `sim-12g` both need). The LP counts VRAM, not items, and both
// models' claims on the same GPUs at once; it is a lower bound on the remaining time (the fleet
// cannot do better than its fluid split), so the ETA takes the later of the two. Pure.

import { AffinityPlanner, type ModelBacklog, type PlannerGpu } from "./affinity.js";

export interface CapacityGpu {
  key: string;
  totalBytes: number;
  /** Relative speed, in the units the work is predicted in (1 = the work's own pace). */
  speed: number;
}

export interface CapacityModel {
  model: string;
  /** Predicted work left (ms at the work's pace): waiting items and what running ones have left. */
  workMs: number;
  weightsBytes: number;
  activationBytes: number;
}

/**
 * The fluid horizon (ms from now) of the given work on the given GPUs, by VRAM only (no slot
 * limit, every GPU serving every model that fits it); undefined when there is no work or no GPU
 * can hold some model's item.
 */
export function capacityHorizonMs(gpus: readonly CapacityGpu[], models: readonly CapacityModel[]): number | undefined {
  const work = models.filter((m) => m.workMs > 0);
  if (work.length === 0 || gpus.length === 0) return undefined;
  const names = new Set(work.map((m) => m.model));
  const plannerGpus: PlannerGpu[] = gpus.map((g) => ({ key: g.key, totalBytes: g.totalBytes, speed: g.speed, slots: Infinity, models: names, loaded: new Set() }));
  for (const m of work) if (!gpus.some((g) => g.totalBytes >= m.weightsBytes + m.activationBytes)) return undefined;
  const backlog = new Map<string, ModelBacklog>(work.map((m) => [m.model, { workMs: m.workMs, waiting: 1, weightsBytes: m.weightsBytes, activationBytes: m.activationBytes, loadMs: 0 }]));
  const planner = new AffinityPlanner();
  planner.plan(plannerGpus, backlog);
  const h = planner.horizonMs;
  return planner.active && Number.isFinite(h) && h > 0 ? h : undefined;
}
