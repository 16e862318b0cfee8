// Straggler hedging at the end of a batch: when a batch has nothing left in the queue and one of
// its last items runs (or is predicted to run) far longer than it would elsewhere, while a GPU
// that could hold it has nothing else to do, a second copy of the item runs there. The first of
// the two copies to end the item wins (the batch rules, batch-state.ts, through the outcome
// fence); the coordinator cancels the other.
//
// Pure, like the engine that calls it: the batches, the fleet, the ledger, the open attempts,
// the duration predictor and the time come in; hedge decisions come out, recorded through
// Attempts.openHedge (the copy's reservation and worker slot), so the caller only sends them.
//
// When an attempt is a straggler (k = --hedge-after-factor, default 2):
//   - it has run for k × its predicted time on its own worker, and at least minOverrunMs past
//     it (a slowdown the predictor did not foresee: a throttled GPU, a noisy neighbour), or
//   - its own worker is predicted to take at least k × as long as an idle GPU would, and a copy
//     started there now is predicted to finish first (a known-slow GPU took one of the last items).
// The rules that keep it safe:
//   - only items of batches with no item left in the queue (the end of a batch);
//   - only onto an idle GPU: a ready worker with a free slot that serves none of the models
//     still waiting in the queue, so a hedge never takes a GPU from queued work;
//   - never on the worker that runs the original, and at most one hedge per item. The copy is
//     the item's next attempt (a second try, shown in its result's `attempts`), and never its
//     last allowed one: a failure of either copy must leave the other running, live and on
//     replay alike (see ActiveBatch.applyOutcome);
//   - the copy's VRAM is reserved through the ledger like any placement (fits or no hedge).

import { WorkerState } from "../../proto/gen/shoal/v1/shoal.js";
import type { ActiveBatch, Attempt, ItemSlot } from "../batch-state.js";
import { placeItem, type PlaceableWorker } from "../placement.js";
import type { DurationPredictor, EngineState, PassInput, Placed } from "./engine.js";

export const DEFAULT_HEDGE_AFTER_FACTOR = 2;
export const DEFAULT_HEDGE_MIN_OVERRUN_MS = 1000;

export interface HedgePolicy {
  /** k: an attempt is a straggler past k × its predicted time (see above). */
  afterFactor: number;
  /**
   * An attempt counts as overrunning only once it is also this much past its prediction: the
   * coordinator's clock includes dispatch and reporting delays, which a busy machine stretches,
   * and those make no straggler. Default DEFAULT_HEDGE_MIN_OVERRUN_MS.
   */
  minOverrunMs?: number;
}

/** Why a copy was placed: the original overran its prediction, or sits on a much slower GPU. */
export type HedgeReason = "overran" | "slower-gpu";

/** What a hedge decision carries beside its placement (for the log and the metrics). */
export interface HedgeInfo {
  reason: HedgeReason;
  /** The worker running the original attempt. */
  originalWorkerId: string;
  originalToken: string;
  elapsedMs: number;
  /** Predicted run time of the original on its worker, and of the copy on its new one. */
  predictedMs: number;
  copyPredictedMs: number;
}

export interface HedgePlan {
  hedges: (Placed & { hedge: HedgeInfo })[];
  /**
   * When an attempt not due yet becomes due (its k × predicted time), while an idle GPU exists:
   * the caller runs a pass then (the coordinator's tick does; the simulator schedules an event).
   */
  nextCheckAtMs: number | undefined;
}

/**
 * Finds and opens the hedges due now. Call after the pass has placed what the queue could place:
 * the workers' free slots are read from `state.attempts`, which already counts those.
 */
export function planHedges(state: EngineState, input: PassInput, policy: HedgePolicy, predictor: DurationPredictor): HedgePlan {
  const plan: HedgePlan = { hedges: [], nextCheckAtMs: undefined };
  if (input.nowMs < input.recoveringUntilMs) return plan;
  const idle = idleWorkers(state);
  if (idle.length === 0) return plan;
  const k = policy.afterFactor;
  const candidates: { batch: ActiveBatch; index: number; slot: ItemSlot; lease: Attempt; elapsedMs: number; ownMs: number }[] = [];
  for (const batch of state.batches.values()) {
    if (batch.cancelRequested || state.queue.sizeOf(batch.id) > 0) continue;
    for (const [index, slot] of batch.items.entries()) {
      const lease = slot.lease;
      if (slot.state !== "leased" || !lease || slot.hedge || slot.hedged || slot.attempts + 1 >= batch.maxAttempts) continue;
      const ownMs = lease.predictedMs ?? predictor.predictMs(slot, lease.workerId);
      // Nothing known of its duration (only the default guess): no basis for calling it late.
      if (!(ownMs > 0) || (predictor.knows && !predictor.knows(slot))) continue;
      candidates.push({ batch, index, slot, lease, elapsedMs: input.nowMs - lease.assignedAtMs, ownMs });
    }
  }
  if (candidates.length === 0) return plan;
  // The most overdue first: they gain the most from the few idle GPUs.
  candidates.sort((a, b) => b.elapsedMs / b.ownMs - a.elapsedMs / a.ownMs);
  for (const c of candidates) {
    const minOverrunMs = policy.minOverrunMs ?? DEFAULT_HEDGE_MIN_OVERRUN_MS;
    const dueAtMs = c.lease.assignedAtMs + Math.max(k * c.ownMs, c.ownMs + minOverrunMs);
    const overran = input.nowMs >= dueAtMs;
    // The idle GPU predicted to finish a copy soonest, among those that can hold it now.
    let best: { w: PlaceableWorker; ms: number } | undefined;
    for (const w of idle) {
      if (w.slotsFree <= 0 || w.id === c.lease.workerId || !w.models.has(c.slot.model)) continue;
      const ms = predictor.predictMs(c.slot, w.id);
      if (!best || ms < best.ms) best = { w, ms };
    }
    if (!best) continue;
    const copyMs = best.ms;
    const slowerGpu = c.ownMs >= k * copyMs && input.nowMs + copyMs < c.lease.assignedAtMs + c.ownMs;
    if (!overran && !slowerGpu) {
      plan.nextCheckAtMs = Math.min(plan.nextCheckAtMs ?? Infinity, dueAtMs);
      continue;
    }
    const activation = state.estimates.activation(c.slot.shapeKey!, c.slot.need.activationBytes);
    const need = { model: c.slot.model, activationBytes: activation, weightsBytes: c.slot.need.weightsBytes };
    // The predicted-fastest GPU first; any other idle one that fits otherwise.
    const placement =
      placeItem(need, [best.w], state.ledger, input.policy) ??
      placeItem(need, idle.filter((w) => w.id !== c.lease.workerId), state.ledger, input.policy);
    if (!placement) continue;
    const lease: Attempt = {
      token: input.newToken(c.slot.attempts + 1, c.batch.id, c.index, placement.workerId),
      workerId: placement.workerId,
      gpuIndex: placement.gpuIndex,
      assignedAtMs: input.nowMs,
      activationBytes: activation,
      predictedMs: predictor.predictMs(c.slot, placement.workerId),
    };
    state.attempts.openHedge(c.batch, c.index, lease, c.slot.attempts + 1, {
      gpuKey: placement.gpuKey,
      bytes: placement.bytes,
      model: c.slot.model,
      activationBytes: activation,
      weightsBytes: c.slot.need.weightsBytes,
    });
    idle.find((w) => w.id === placement.workerId)!.slotsFree--;
    plan.hedges.push({
      batch: c.batch,
      index: c.index,
      lease,
      hedge: {
        reason: overran ? "overran" : "slower-gpu",
        originalWorkerId: c.lease.workerId,
        originalToken: c.lease.token,
        elapsedMs: c.elapsedMs,
        predictedMs: c.ownMs,
        copyPredictedMs: lease.predictedMs!,
      },
    });
  }
  return plan;
}

/**
 * Ready, reachable workers with a free slot that serve none of the models still waiting in the
 * queue: whatever they could run instead of a hedge is not there.
 */
function idleWorkers(state: EngineState): PlaceableWorker[] {
  const waiting = [...state.queue.backlogByGroup().entries()].filter(([, b]) => b.count > 0).map(([m]) => m);
  if (waiting.includes("")) return []; // a queue without model groups: anything may be waiting for anyone
  const out: PlaceableWorker[] = [];
  for (const w of state.workers) {
    if (w.state !== WorkerState.WORKER_STATE_READY || w.unreachable) continue;
    const free = w.maxInFlight - state.attempts.openOn(w.id);
    if (free <= 0 || waiting.some((m) => w.models.has(m))) continue;
    out.push({ id: w.id, slotsFree: free, resident: w.resident, models: w.models });
  }
  return out;
}
