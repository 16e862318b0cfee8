// Queue position and estimated completion of the running batches, as GetBatch and WatchBatch
// show them. About once a second `refresh` walks the running batches once (one prediction per
// shape, not per item), summarises each for the pure model in scheduler/eta.ts, and keeps its
// answer until the next refresh; reads in between cost a map lookup.
//
// Durations come from the learned model (learned-durations.ts): an item waiting is predicted
// for the fleet as it is used (the pooled level), a running one for its GPU's type, less the
// time it has run. The model learns run times as workers measure them; between the assignment
// and the counted outcome an item also spends the assignment's round trip and the outcome's
// group commit, which hold its slot too, so that overhead is measured here (per counted outcome:
// time from assignment to outcome, less the run time) and added to every prediction.

import { priorityWeight } from "./batch-queue.js";
import type { ActiveBatch } from "./batch-state.js";
import type { LearnedDurations } from "./learned-durations.js";
import { estimateBatches, type BatchEta, type EtaBatch } from "./scheduler/eta.js";
import type { DurationPredictor } from "./scheduler/engine.js";
import { declaredMs } from "./scheduler/predictor.js";

export interface BatchProgressView {
  queuePosition: number;
  estimatedCompletionAt: Date | undefined;
}

/** A running item past its predicted time is still expected to need this share of it. */
const OVERDUE_SHARE = 0.1;
/** The fleet's concurrency is the most items running at once over this window. */
const CONCURRENCY_WINDOW_MS = 10_000;
const OVERHEAD_ALPHA = 0.05;

export class BatchProgress {
  private current = new Map<string, BatchEta>();
  /** What watchers were last sent, to send only changes that matter. */
  private readonly sent = new Map<string, BatchEta>();
  private overheadMs = 0;
  private overheadSamples = 0;
  private recentRunning: { atMs: number; running: number }[] = [];

  constructor(
    private readonly durations: LearnedDurations,
    /**
     * The engine's predictor, for items that declare their run time (SIMULATED `work_ms`): the
     * queue runs those longest first by it, so the items done first are the longest and a mean
     * learned from them would overestimate the rest; the ETA predicts them as the queue ranks them.
     */
    private readonly engine?: DurationPredictor,
  ) {}

  /** A counted outcome: its slot was held from assignment until now, `runMs` of it running. */
  observeSlotTime(assignedAtMs: number, nowMs: number, runMs: number): void {
    const overhead = nowMs - assignedAtMs - runMs;
    if (!Number.isFinite(overhead) || overhead < 0) return;
    this.overheadSamples++;
    this.overheadMs += (overhead - this.overheadMs) * Math.max(OVERHEAD_ALPHA, 1 / this.overheadSamples);
  }

  get(batchId: string): BatchProgressView | undefined {
    const e = this.current.get(batchId);
    if (!e) return undefined;
    return { queuePosition: e.queuePosition, estimatedCompletionAt: e.completionMs === undefined ? undefined : new Date(Math.round(e.completionMs)) };
  }

  /**
   * Recomputes every running batch's position and ETA (`batches` in the queue's turn order).
   * Returns the ids whose estimate is new or moved enough to tell watchers: a new position, an
   * ETA that appeared or went, or one that moved by more than 5 % of the time left (at least 2 s).
   */
  refresh(nowMs: number, batches: Iterable<ActiveBatch>): string[] {
    const summaries: EtaBatch[] = [];
    const pooled = new Map<string, { ms: number; guessed: boolean }>();
    const onGpu = new Map<string, number>();
    let running = 0;
    const overhead = this.overheadMs;
    const predictor = this.durations.model;
    for (const batch of batches) {
      let waitingItems = 0;
      let waitingWorkMs = 0;
      let unknown = false;
      const runningRemainingMs: number[] = [];
      // Items of a batch mostly share one shape: the last one's prediction is reused without a lookup.
      let lastShape: string | undefined;
      let p: { ms: number; guessed: boolean } | undefined;
      for (const slot of batch.items) {
        const declared = this.engine && declaredMs(slot) !== undefined;
        if (slot.state === "pending" && declared) {
          const ms = this.engine!.predictMs(slot) + overhead;
          waitingItems++;
          waitingWorkMs += ms;
          // Still no ETA before anything of the shape was learned: the overhead and the fleet's
          // pace are not known either (and --forget-durations means exactly that).
          const shape = slot.shapeKey ?? slot.model;
          let p = pooled.get(shape);
          if (!p) {
            const pred = predictor.predict({ model: slot.model, shape });
            pooled.set(shape, (p = { ms: pred.ms + overhead, guessed: pred.source === "default" }));
          }
          unknown ||= p.guessed;
        } else if (slot.state === "leased" && slot.lease && declared) {
          const ms = this.engine!.predictMs(slot, slot.lease.workerId) + overhead;
          runningRemainingMs.push(Math.max(ms - (nowMs - slot.lease.assignedAtMs), ms * OVERDUE_SHARE));
        } else if (slot.state === "pending") {
          const shape = slot.shapeKey ?? slot.model;
          if (shape !== lastShape) {
            lastShape = shape;
            p = pooled.get(shape);
            if (!p) {
              const pred = predictor.predict({ model: slot.model, shape });
              pooled.set(shape, (p = { ms: pred.ms + overhead, guessed: pred.source === "default" }));
            }
          }
          waitingItems++;
          waitingWorkMs += p!.ms;
          unknown ||= p!.guessed;
        } else if (slot.state === "leased" && slot.lease) {
          const lease = slot.lease;
          const gpu = `${lease.workerId}/${lease.gpuIndex}`;
          const key = `${slot.shapeKey ?? slot.model}\u001f${gpu}`;
          let ms = onGpu.get(key);
          if (ms === undefined) {
            const gpuType = this.durations.gpuType(lease.workerId, lease.gpuIndex);
            ms = predictor.predict({ model: slot.model, shape: slot.shapeKey ?? slot.model, gpuType }).ms + overhead;
            onGpu.set(key, ms);
          }
          runningRemainingMs.push(Math.max(ms - (nowMs - lease.assignedAtMs), ms * OVERDUE_SHARE));
        }
      }
      running += runningRemainingMs.length;
      summaries.push({
        id: batch.id,
        weight: priorityWeight(batch.record.batch!.priority),
        started: batch.started || batch.doneCount > 0,
        waitingItems,
        waitingWorkMs,
        runningRemainingMs,
        unknown,
      });
    }
    this.recentRunning = this.recentRunning.filter((r) => nowMs - r.atMs < CONCURRENCY_WINDOW_MS);
    this.recentRunning.push({ atMs: nowMs, running });
    const concurrency = Math.max(...this.recentRunning.map((r) => r.running));
    this.current = estimateBatches({ nowMs, batches: summaries, concurrency });

    const changed: string[] = [];
    for (const [id, e] of this.current) {
      const before = this.sent.get(id);
      if (before && !movedEnough(before, e, nowMs)) continue;
      this.sent.set(id, e);
      changed.push(id);
    }
    for (const id of this.sent.keys()) if (!this.current.has(id)) this.sent.delete(id);
    return changed;
  }
}

function movedEnough(before: BatchEta, now: BatchEta, nowMs: number): boolean {
  if (before.queuePosition !== now.queuePosition) return true;
  if ((before.completionMs === undefined) !== (now.completionMs === undefined)) return true;
  if (before.completionMs === undefined || now.completionMs === undefined) return false;
  const left = Math.max(0, now.completionMs - nowMs);
  return Math.abs(now.completionMs - before.completionMs) > Math.max(2000, 0.05 * left);
}
