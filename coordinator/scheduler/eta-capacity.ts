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

import { type CapacityPair, capacityRate } from "./lp.js";

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
 * limit, every GPU serving every model that fits it): maximize λ s.t. Σ_c rate(m,c)·u(m,c) ≥ λ·W_m,
 * Σ_m u(m,c) ≤ n_c, the affinity planner's LP (affinity.ts) over classes of GPUs of one size, each
 * of the sum of its GPUs' speeds; 1 / λ. GPUs are merged by size, so a fleet of a thousand is a
 * few variables (the planner's own plan also rounds to whole GPUs, 60 ms at 1,000 GPUs: too much
 * once a second). Models without activations (unbounded items per GPU) bind nothing and are left
 * out. Undefined when there is no work, or no GPU can hold some model's item.
 */
export function capacityHorizonMs(gpus: readonly CapacityGpu[], models: readonly CapacityModel[]): number | undefined {
  const work = models.filter((m) => m.workMs > 0 && m.activationBytes > 0);
  if (work.length === 0 || gpus.length === 0) return undefined;
  const sizes = new Map<number, number>();
  for (const g of gpus) if (g.speed > 0) sizes.set(g.totalBytes, (sizes.get(g.totalBytes) ?? 0) + g.speed);
  const classes = [...sizes.entries()];
  const pairs: CapacityPair[] = [];
  work.forEach((m, mi) =>
    classes.forEach(([total], ci) => {
      if (total >= m.weightsBytes + m.activationBytes) pairs.push({ model: mi, cls: ci, rate: (total - m.weightsBytes) / m.activationBytes });
    }),
  );
  if (work.some((_, mi) => !pairs.some((p) => p.model === mi))) return undefined;
  let lambda: number;
  try {
    lambda = capacityRate(
      work.map((m) => m.workMs / 1000),
      pairs,
      classes.map(([, speeds]) => speeds),
    ).lambda;
  } catch {
    return undefined;
  }
  return lambda > 0 && Number.isFinite(lambda) ? 1000 / lambda : undefined;
}
