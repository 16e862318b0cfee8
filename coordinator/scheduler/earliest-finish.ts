// Earliest finish: at the end of the work, hold an item for a GPU that frees soon and finishes it
// sooner than the free GPU placement found. Placement fills whatever GPU has room now; in the
// tail that sends the last items to a slow GPU (an item of 300 ms at speed 0.7 ends after one
// at speed 2 that starts 150 ms later) or to a GPU that must first load the model's weights
// (2 s for sim-30g at 10 GB/s), while a faster GPU warm with the model frees a moment later.
// The item's end is then the batch's end.
//
// The rule, for the GPU placement chose (the candidate): its predicted finish is
//   now + load (0 where the weights are resident or counted) + the item's predicted run there;
// an alternative is a slot of a faster GPU where an attempt of the same model runs (the weights
// are paid there and its end gives back room for one more of the model): its finish is
//   that attempt's predicted end + the item's predicted run on that GPU.
// Only faster GPUs: holding an item for a GPU of the same speed only to save the candidate's load
// gained on fleets of equal GPUs with one batch (uniform-24gb 0.925 → 0.942) but lost where
// batches keep arriving (tenants-priorities 0.984 → 0.972..0.981 over seeds): the next batch
// is no tail, and the GPU left idle is capacity lost. Which GPU pays a load stays the plan's call.
// The item is held (left queued this pass) when an alternative finishes it first. Holding
// books that slot: the next item of the pass sees it free only at the held item's predicted end,
// so two items are not held for one slot.
//
// When it applies: only to an item whose finish on the candidate lies past the end of all the
// work as the affinity plan predicts it (the fluid horizon: the LP's makespan for the backlog at
// the last plan). Before that, the fleet has more work than time, a held item only moves work
// between busy GPUs, and an idle GPU must take what it can; the tail is where one item's place
// decides the end. (It also keeps the decision cheap: the running attempts are read only then.)
//
// Not for short items: a held item waits for the freeing attempt's outcome to come back (the
// worker's results write, its delivery, a pass), a few ms even on a quiet fleet, which the
// predicted free time does not count. An item whose whole predicted time on the free GPU (load
// and run) is under HOLD_MIN_GAIN_MS cannot finish elsewhere sooner by more than that, so it is
// placed at once; for such items the scan of the running attempts would cost more than it could
// win (zero-work items at 17,000 a second: a walk of thousands of attempts in every pass).
//
// Never starves: an attempt past its predicted end is expected to run as long again as it has
// overrun (an outcome a moment late still counts as freeing about now; one that overran long
// stops being waited for), and an item is never held past the finish it had on the candidate
// when it was first held (its deadline): every wait is bounded by that item's own predicted time
// on the GPU that was free. `nextCheckAtMs` says when a held item must be decided again if no
// outcome comes first. Pure: no clock, no I/O; the engine builds one per pass.

import type { ItemSlot } from "../batch-state.js";
import type { OpenAttempt } from "../attempts.js";
import type { DurationPredictor } from "./engine.js";

/** A slot that frees when a running attempt ends: where an item of its model could run next. */
interface FreeingSlot {
  workerId: string;
  gpuKey: string;
  /** When it is predicted to be free: the attempt's predicted end, or the end of an item held for it this pass. */
  freeAtMs: number;
  /** Activations it gives back (an item needing more does not fit there). */
  bytes: number;
}

export interface EarliestFinishInputs {
  nowMs: number;
  predictor: DurationPredictor;
  /** When the work is predicted to end (the plan's fluid horizon); nothing is held before it. */
  fluidEndMs: number;
  running: () => Iterable<OpenAttempt>;
  gpuKeyOf: (a: OpenAttempt) => string;
  /** Whether the GPU may take an item of the model when it frees (ready, served, the plan allows it). */
  accepts: (workerId: string, gpuKey: string, model: string) => boolean;
  /**
   * The highest speed (predictor.speedOf) among the workers that serve the model; optional. Where
   * no worker is faster than the candidate nothing can be held for (only faster GPUs are), so
   * the running attempts are not read: on a fleet of one GPU type that is every pass.
   */
  fastestSpeed?: (model: string) => number;
  /** Free VRAM less reserved on the GPU now (what the freed activations add to). */
  available: (gpuKey: string) => number;
  /** Each held item's deadline, kept between passes (see the header). */
  deadlines: WeakMap<ItemSlot, number>;
}

/** Where placement would put the item now. */
export interface Candidate {
  workerId: string;
  /** The model's weights must be loaded there first. */
  loads: boolean;
  /** The item's predicted run there (the attempt's predictedMs when placed). */
  runMs: number;
}

/** Below this, an item's predicted load + run on the free GPU, it is never held (see the header). */
export const HOLD_MIN_GAIN_MS = 5;

/**
 * When a slot is expected to free: its predicted time while that is ahead; once past it, as much
 * later again as the attempt has overrun (an outcome is a moment late on a busy fleet and the
 * slot frees about now; one that overran long is not counted on to end soon).
 */
export function expectedFree(freeAtMs: number, nowMs: number): number {
  return freeAtMs > nowMs ? freeAtMs : nowMs + (nowMs - freeAtMs);
}

export class EarliestFinish {
  private byModel: Map<string, FreeingSlot[]> | undefined;
  /** Items held this pass. */
  held = 0;
  /** The earliest booked slot's predicted free time: a pass then places or re-decides its item. */
  nextCheckAtMs: number | undefined;

  constructor(private readonly inp: EarliestFinishInputs) {}

  /**
   * Whether to hold the item for a GPU that frees soon and finishes it first; when so, books
   * that GPU's slot for it. `activationBytes` is what the item reserves.
   */
  hold(slot: ItemSlot, activationBytes: number, candidate: Candidate): boolean {
    const { predictor, nowMs } = this.inp;
    const load = candidate.loads ? (predictor.loadMs?.(slot.model, slot.need.weightsBytes) ?? 0) : 0;
    // Short: nothing to gain that the outcome's way back would not cost (see the header).
    if (!(load + candidate.runMs >= HOLD_MIN_GAIN_MS)) return false;
    const finish = nowMs + load + candidate.runMs;
    // Not the tail: placement stands, nothing else is read.
    if (!(finish > this.inp.fluidEndMs)) return false;
    // No faster GPU serves the model: the scan below could find nothing.
    const candidateSpeed = predictor.speedOf(candidate.workerId);
    if (this.inp.fastestSpeed && !(this.inp.fastestSpeed(slot.model) > candidateSpeed)) return false;
    // Held before: never past the finish it had then (that bounds its wait).
    const deadline = this.inp.deadlines.get(slot) ?? finish;
    if (nowMs >= deadline) return false;
    let best: FreeingSlot | undefined;
    let bestEnd = finish;
    for (const s of this.slotsOf(slot.model)) {
      const free = expectedFree(s.freeAtMs, nowMs);
      if (free >= bestEnd) continue;
      if (s.bytes + Math.max(0, this.inp.available(s.gpuKey)) < activationBytes) continue;
      if (!this.inp.accepts(s.workerId, s.gpuKey, slot.model)) continue;
      // Only a faster GPU: between GPUs of one speed the plan's load decisions stand (see the header).
      if (!(predictor.speedOf(s.workerId) > candidateSpeed)) continue;
      const end = free + predictor.predictMs(slot, s.workerId);
      if (end < bestEnd) {
        best = s;
        bestEnd = end;
      }
    }
    if (!best) {
      this.inp.deadlines.delete(slot);
      return false;
    }
    // Decide again when the slot is due (its outcome usually comes first), or, past due, when
    // its growing overrun would let the free GPU finish first; at the latest at the deadline.
    const recheck = best.freeAtMs > nowMs ? best.freeAtMs : nowMs + Math.max(1, finish - bestEnd);
    this.nextCheckAtMs = Math.min(this.nextCheckAtMs ?? Infinity, recheck, deadline);
    best.freeAtMs = bestEnd;
    this.inp.deadlines.set(slot, deadline);
    this.held++;
    return true;
  }

  /** The item was placed (this attempt opened): it is not held any more, and its slot frees when the attempt ends. */
  placed(slot: ItemSlot, a: OpenAttempt): void {
    this.inp.deadlines.delete(slot);
    // The running attempts were read earlier in this pass: this one is a slot too.
    if (this.byModel && a.predictedMs > 0) this.add(a);
  }

  /** The running attempts' slots by model, read once per pass and only when an item is in the tail. */
  private slotsOf(model: string): FreeingSlot[] {
    if (!this.byModel) {
      this.byModel = new Map();
      for (const a of this.inp.running()) if (a.predictedMs > 0) this.add(a);
    }
    return this.byModel.get(model) ?? [];
  }

  private add(a: OpenAttempt): void {
    let list = this.byModel!.get(a.model);
    if (!list) this.byModel!.set(a.model, (list = []));
    list.push({ workerId: a.workerId, gpuKey: this.inp.gpuKeyOf(a), freeAtMs: a.startMs + a.predictedMs, bytes: a.activationBytes ?? 0 });
  }
}
