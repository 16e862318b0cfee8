// The engine's DurationPredictor over the learned DurationModel (durations.ts): an item's
// predicted run time from its model, shape and the GPU type it would run on; a worker's speed
// relative to the fleet, from the model's pairwise GPU-type ratios; a model's load time from
// its weights and a configured load bandwidth. Pure: the GPU type of a worker is looked up
// through an injected function (the coordinator reads it from the ledger).

import type { ItemSlot } from "../batch-state.js";
import type { DurationModel } from "./durations.js";
import type { DurationPredictor } from "./engine.js";

export interface LearnedPredictorOptions {
  /** The GPU type of a worker's GPU (see gpuTypeOf), or undefined when unknown. */
  gpuTypeOf: (workerId: string) => string | undefined;
  /** Bytes per second weights load at; 0 = load time unknown (not counted). */
  loadBytesPerS?: number;
  /** How often (in model versions) relative speeds are worked out again. */
  speedRefreshEvery?: number;
  /**
   * Use an item's declared run time where it has one (default on). Only SIMULATED items declare
   * one: their `work_ms` param is exactly how long they run at speed 1, the counterpart of a
   * real model's cost parameters (steps, resolution) that a per-shape learned model predicts.
   */
  useDeclared?: boolean;
}

/** The run time an item declares (SIMULATED models: `work_ms`), if any. */
export function declaredMs(slot: ItemSlot): number | undefined {
  const w = slot.params.work_ms;
  return typeof w === "number" && w > 0 && slot.model.startsWith("sim-") ? w : undefined;
}

export class LearnedPredictor implements DurationPredictor {
  private speeds = new Map<string, number>();
  private speedsAt = -Infinity;
  private readonly types = new Set<string>();
  /**
   * GPU type → Σ log(declared / measured) and the count, over items that declare their run time:
   * each such outcome measures its GPU's speed directly, so speeds are known from the first
   * outcome on each type instead of after enough pairs of types have run the same shapes.
   */
  private readonly declaredSpeed = new Map<string, { logSum: number; n: number }>();

  constructor(
    readonly model: DurationModel,
    private readonly opts: LearnedPredictorOptions,
  ) {}

  predictMs(slot: ItemSlot, workerId?: string): number {
    const declared = this.opts.useDeclared === false ? undefined : declaredMs(slot);
    if (declared !== undefined) return workerId !== undefined ? declared / this.speedOf(workerId) : declared;
    const gpuType = workerId !== undefined ? this.opts.gpuTypeOf(workerId) : undefined;
    return this.model.predict({ model: slot.model, shape: slot.shapeKey ?? slot.model, gpuType }).ms;
  }

  /** The item declares its run time, or its model has learned samples (not the default guess). */
  knows(slot: ItemSlot): boolean {
    if (this.opts.useDeclared !== false && declaredMs(slot) !== undefined) return true;
    return this.model.predict({ model: slot.model, shape: slot.shapeKey ?? slot.model }).samples > 0;
  }

  /** A counted outcome: `ms` of `slot` on `workerId`'s GPU. */
  observe(slot: ItemSlot, workerId: string, ms: number): void {
    this.observeSpeed(slot, workerId, ms);
    this.model.observe({ model: slot.model, shape: slot.shapeKey ?? slot.model, gpuType: this.opts.gpuTypeOf(workerId) }, ms);
  }

  /**
   * What a counted outcome says of its GPU type's speed, without teaching the duration model: for
   * a second predictor over the same model (the simulator's ETA path keeps its own, so that its
   * speed refreshes do not move the engine's), which must not count each outcome twice.
   */
  observeSpeed(slot: ItemSlot, workerId: string, ms: number): void {
    const gpuType = this.opts.gpuTypeOf(workerId);
    if (gpuType !== undefined) this.types.add(gpuType);
    const declared = this.opts.useDeclared === false ? undefined : declaredMs(slot);
    if (gpuType !== undefined && declared !== undefined && ms > 0) {
      const s = this.declaredSpeed.get(gpuType) ?? { logSum: 0, n: 0 };
      s.logSum += Math.log(declared / ms);
      s.n++;
      this.declaredSpeed.set(gpuType, s);
    }
  }

  /**
   * Speed of the worker's GPU type relative to the fleet's: the geometric mean over the other
   * known types u of ratio(u, t) (how many times as long u takes as t); 1 until learned.
   */
  speedOf(workerId: string): number {
    const t = this.opts.gpuTypeOf(workerId);
    if (t === undefined) return 1;
    const direct = this.declaredSpeed.get(t);
    if (direct) return Math.exp(direct.logSum / direct.n);
    if (this.model.version - this.speedsAt >= (this.opts.speedRefreshEvery ?? 50)) this.refreshSpeeds();
    return this.speeds.get(t) ?? 1;
  }

  loadMs(_model: string, weightsBytes: number): number {
    const bw = this.opts.loadBytesPerS ?? 0;
    return bw > 0 ? (weightsBytes / bw) * 1000 : 0;
  }

  private refreshSpeeds(): void {
    this.speedsAt = this.model.version;
    const next = new Map<string, number>();
    for (const t of this.types) {
      let logSum = 0;
      let n = 0;
      for (const u of this.types) {
        if (u === t) continue;
        const r = this.model.ratio(u, t);
        if (r !== undefined && r > 0) {
          logSum += Math.log(r);
          n++;
        }
      }
      next.set(t, n > 0 ? Math.exp(logSum / n) : 1);
    }
    this.speeds = next;
  }
}
