// The scheduling pass as a pure engine: the queue, the batches, the ready workers, the VRAM
// ledger, the learned estimates and the time come in; placement decisions come out. No I/O, no
// clock and no randomness of its own (the time and the attempt tokens are injected), so a unit
// test can drive it through any fleet and any queue and check every decision.
//
// The pass records each decision in the in-memory state it was given, through Attempts (the item
// is leased, its reservation is in the ledger, the worker counts it), so the next decision of
// the same pass sees it: the caller only sends the assignments it returns, and ends an attempt
// (requeue or take back) when the worker does not take it.

import type { ItemError } from "../../proto/gen/shoal/v1/shoal.js";
import { WorkerState } from "../../proto/gen/shoal/v1/shoal.js";
import type { Attempts } from "../attempts.js";
import type { ActiveBatch, Attempt } from "../batch-state.js";
import type { BatchQueue } from "../batch-queue.js";
import type { WorkerRecord } from "../fleet.js";
import { placeItem, type PlaceableWorker, type PlacementPolicy } from "../placement.js";
import type { VramEstimates } from "../vram-estimates.js";
import type { VramLedger } from "../vram-ledger.js";

/** One placement decision: this attempt of this item goes to `lease.workerId`, GPU `lease.gpuIndex`. */
export interface Placed {
  batch: ActiveBatch;
  index: number;
  lease: Attempt;
}

/** What a pass reads (and records its decisions in). */
export interface EngineState {
  queue: BatchQueue;
  /** The batches still running, by id; an id that is not here any more is dropped from the queue. */
  batches: ReadonlyMap<string, ActiveBatch>;
  /** Every worker this coordinator knows; only READY ones that are reachable take items. */
  workers: Iterable<WorkerRecord>;
  /** Read for free VRAM; written only through `attempts`, which owns the reservations. */
  ledger: VramLedger;
  /** Where each decision is recorded: the attempt, its reservation and its worker together. */
  attempts: Attempts;
  estimates: VramEstimates;
}

export interface PassInput {
  nowMs: number;
  /** Until then nothing is placed: after a restart, workers first report what they hold. */
  recoveringUntilMs: number;
  policy: PlacementPolicy;
  /** A fresh attempt token for the given attempt number (random in production, fixed in tests). */
  /** A lease token for one attempt of one item on one worker (see lease-tokens.ts). */
  newToken: (attempt: number, batchId: string, index: number, workerId: string) => string;
}

/**
 * One scheduling pass: places every waiting item that fits somewhere now, batches taking turns
 * (see BatchQueue.drain). Returns the decisions grouped by worker, in placement order, so each
 * worker gets one assignment message per pass.
 */
export function schedulePass(state: EngineState, input: PassInput): Map<string, Placed[]> {
  const outgoing = new Map<string, Placed[]>();
  if (input.nowMs < input.recoveringUntilMs || state.queue.size === 0) return outgoing;
  const workers = new Map<string, PlaceableWorker>();
  for (const w of state.workers) {
    if (w.state !== WorkerState.WORKER_STATE_READY || w.unreachable) continue;
    workers.set(w.id, { id: w.id, slotsFree: w.maxInFlight - state.attempts.openOn(w.id), resident: w.resident, models: w.models });
  }
  if (workers.size === 0) return outgoing;
  // Within a pass free VRAM only shrinks: once an item of a model fits nowhere, larger ones of
  // that model cannot fit either, so they are refused without another scan of the fleet.
  const failedNeed = new Map<string, number>();
  state.queue.drain(({ batchId, index }) => {
    const batch = state.batches.get(batchId);
    const slot = batch?.items[index];
    if (!batch || !slot || slot.state !== "pending") return true; // done or adopted meanwhile: drop
    const activation = state.estimates.activation(slot.shapeKey!, slot.need.activationBytes);
    if (activation >= (failedNeed.get(slot.model) ?? Infinity)) return false;
    const placement = placeItem(
      { model: slot.model, activationBytes: activation, weightsBytes: slot.need.weightsBytes },
      workers.values(),
      state.ledger,
      input.policy,
    );
    if (!placement) {
      failedNeed.set(slot.model, Math.min(activation, failedNeed.get(slot.model) ?? Infinity));
      return false;
    }
    const attempt = slot.attempts + 1;
    const lease: Attempt = { token: input.newToken(attempt, batch.id, index, placement.workerId), workerId: placement.workerId, gpuIndex: placement.gpuIndex, assignedAtMs: input.nowMs, activationBytes: activation };
    state.attempts.open(batch, index, lease, attempt, {
      gpuKey: placement.gpuKey,
      bytes: placement.bytes,
      model: slot.model,
      activationBytes: activation,
      weightsBytes: slot.need.weightsBytes,
    });
    workers.get(placement.workerId)!.slotsFree--;
    let list = outgoing.get(placement.workerId);
    if (!list) outgoing.set(placement.workerId, (list = []));
    list.push({ batch, index, lease });
    return true;
  });
  return outgoing;
}

/** An item no registered worker could ever fit, past the grace period: it fails with `error`. */
export interface Unplaceable {
  batch: ActiveBatch;
  index: number;
  error: ItemError;
}

/**
 * Items that no registered worker could ever fit (no worker serves the model, or none has
 * enough VRAM in total) fail after the grace period instead of waiting forever; the grace
 * gives a worker that is being added time to register. Marks when each item was first seen
 * unplaceable (and clears it when one could fit it again); returns those whose grace is over.
 */
export function findUnplaceable(state: Omit<EngineState, "queue" | "attempts">, nowMs: number, graceMs: number): Unplaceable[] {
  const capacity = new Map<string, number>();
  for (const w of state.workers) {
    if (w.state === WorkerState.WORKER_STATE_LOST) continue;
    const biggest = Math.max(0, ...state.ledger.gpusOf(w.id).map((g) => g.totalBytes));
    for (const m of w.models) capacity.set(m, Math.max(capacity.get(m) ?? 0, biggest));
  }
  const out: Unplaceable[] = [];
  for (const batch of state.batches.values()) {
    for (const [index, slot] of batch.items.entries()) {
      if (slot.state !== "pending") continue;
      const need = slot.need.weightsBytes + state.estimates.activation(slot.shapeKey!, slot.need.activationBytes);
      const cap = capacity.get(slot.model);
      if (cap !== undefined && cap >= need) {
        slot.unplaceableSinceMs = undefined;
        continue;
      }
      slot.unplaceableSinceMs ??= nowMs;
      if (nowMs - slot.unplaceableSinceMs < graceMs) continue;
      const error =
        cap === undefined
          ? { code: "MODEL_NOT_FOUND", message: `no registered worker serves model ${slot.model}`, retryable: true }
          : { code: "OUT_OF_MEMORY", message: `needs ${need} bytes of VRAM; the largest GPU serving ${slot.model} has ${cap}`, retryable: true };
      out.push({ batch, index, error });
    }
  }
  return out;
}
