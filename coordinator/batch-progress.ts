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
//
// Three things the fleet-wide fluid model needs besides the batches present, all learned here
// with the caller's clock: the batches submitted lately (scheduler/arrivals.ts), whose like will
// take their shares while a batch runs; the turn weights the queue gives each priority in effect
// (scheduler/turn-weights.ts); and, per model, how many of its items the fleet's GPUs could run
// at once at most (its VRAM need against each GPU's total): a model that fits few GPUs is a pool
// of its own, and a batch cannot end before its items of that model do there, whatever the rest
// of the fleet is free to do (eta.ts, estimateWithPools).

import { priorityWeight } from "./batch-queue.js";
import type { ActiveBatch, ItemSlot } from "./batch-state.js";
import type { LearnedDurations } from "./learned-durations.js";
import { RecentArrivals } from "./scheduler/arrivals.js";
import { LearnedTurnWeights } from "./scheduler/turn-weights.js";
import { capacityHorizonMs } from "./scheduler/eta-capacity.js";
import { estimateWithPools, splitConcurrency, type BatchEta, type EtaBatch, type EtaPool } from "./scheduler/eta.js";
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
  /** Batches submitted lately (their work and shares), for the share later ones take (scheduler/arrivals.ts): over the fleet, and per model for the models that are pools of their own. */
  private readonly arrivals = new RecentArrivals();
  private readonly arrivalsByModel = new Map<string, RecentArrivals>();
  /** Batches already counted as arrivals. */
  private seen = new Set<string>();
  private lastRefreshMs: number | undefined;
  /** What the queue's turns give each priority in effect, and each batch's waiting items at the last refresh. */
  private readonly turns = new LearnedTurnWeights();
  private waitingBefore = new Map<string, number>();
  /**
   * The mean speed of the GPUs running items that declare their run time, at the last refresh:
   * a declared run time is at speed 1, and the fleet's slots do `declaredPace` of it per ms, so a
   * waiting item is predicted at declared / pace (where it runs is not known yet; the running ones
   * say where items run). 1 until any runs.
   */
  private declaredPace = 1;

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

  /**
   * A batch (or its items of one model) seen for the first time: it arrived when its first item
   * was queued, or, for the batches present at the first refresh (a restart recovers them all at
   * once), then: one burst, which alone makes no stream. Its work counts what it has done already
   * at the mean of the rest.
   */
  private noteArrival(into: RecentArrivals, batch: ActiveBatch, nominal: number, b: EtaBatch, doneItems: number, nowMs: number): void {
    if (b.unknown) return;
    const submittedMs = batch.items[0]?.firstQueuedAtMs ?? nowMs;
    const atMs = Math.min(nowMs, Math.max(submittedMs, this.lastRefreshMs ?? nowMs));
    const left = b.waitingWorkMs + b.runningRemainingMs.reduce((s, x) => s + x, 0);
    const leftItems = b.waitingItems + b.runningRemainingMs.length;
    if (leftItems === 0) return;
    // Its share (eta.ts, shareOf) with the mean over all its items left: a batch placed whole at
    // once also took its part of the fleet.
    const meanItemMs = left / leftItems;
    into.observe({ atMs, workMs: left + doneItems * meanItemMs, weight: nominal, meanItemMs });
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
    /** Per model: its batches' summaries (their items of the model only), and the least VRAM one of its items needs. */
    const models = new Map<string, { batches: EtaBatch[]; weightsBytes: number; activationBytes: number }>();
    const waitingNow = new Map<string, number>();
    const sharedTurns: { weight: number; starts: number }[] = [];
    const pooled = new Map<string, { ms: number; guessed: boolean }>();
    const onGpu = new Map<string, number>();
    let running = 0;
    let paceSum = 0;
    let paceItems = 0;
    const overhead = this.overheadMs;
    const predictor = this.durations.model;
    for (const batch of batches) {
      const nominal = priorityWeight(batch.record.batch!.priority);
      const weight = this.turns.weightOf(nominal);
      const started = batch.started || batch.doneCount > 0;
      const byModel = new Map<string, EtaBatch>();
      // Its items mostly share one model: the last one's summary is reused without a lookup.
      let lastModel: string | undefined;
      let lastOf: EtaBatch | undefined;
      const of = (slot: ItemSlot): EtaBatch => {
        if (slot.model === lastModel) return lastOf!;
        let b = byModel.get(slot.model);
        if (!b) {
          byModel.set(slot.model, (b = { id: batch.id, weight, started, waitingItems: 0, waitingWorkMs: 0, runningRemainingMs: [], unknown: false }));
          const m = models.get(slot.model);
          // (A slot without a need counts none: no pool of its own.)
          const need = slot.need ?? { weightsBytes: 0, activationBytes: 0 };
          if (!m) models.set(slot.model, { batches: [b], weightsBytes: need.weightsBytes, activationBytes: need.activationBytes });
          else {
            m.batches.push(b);
            m.activationBytes = Math.min(m.activationBytes, need.activationBytes);
          }
        }
        lastModel = slot.model;
        return (lastOf = b);
      };
      // Items of a batch mostly share one shape: the last one's prediction is reused without a lookup.
      let lastShape: string | undefined;
      let p: { ms: number; guessed: boolean } | undefined;
      for (const slot of batch.items) {
        if (slot.state === "done") continue;
        const declared = this.engine && declaredMs(slot) !== undefined;
        if (slot.state === "pending" && declared) {
          const b = of(slot);
          const ms = this.engine!.predictMs(slot) / this.declaredPace + overhead;
          b.waitingItems++;
          b.waitingWorkMs += ms;
          // Still no ETA before anything of the shape was learned: the overhead and the fleet's
          // pace are not known either (and --forget-durations means exactly that).
          const shape = slot.shapeKey ?? slot.model;
          let p = pooled.get(shape);
          if (!p) {
            const pred = predictor.predict({ model: slot.model, shape });
            pooled.set(shape, (p = { ms: pred.ms + overhead, guessed: pred.source === "default" }));
          }
          b.unknown ||= p.guessed;
        } else if (slot.state === "leased" && slot.lease && declared) {
          const onItsGpu = this.engine!.predictMs(slot, slot.lease.workerId);
          if (onItsGpu > 0) {
            paceSum += this.engine!.predictMs(slot) / onItsGpu;
            paceItems++;
          }
          const ms = onItsGpu + overhead;
          (of(slot).runningRemainingMs as number[]).push(Math.max(ms - (nowMs - slot.lease.assignedAtMs), ms * OVERDUE_SHARE));
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
          const b = of(slot);
          b.waitingItems++;
          b.waitingWorkMs += p!.ms;
          b.unknown ||= p!.guessed;
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
          (of(slot).runningRemainingMs as number[]).push(Math.max(ms - (nowMs - lease.assignedAtMs), ms * OVERDUE_SHARE));
        }
      }
      // The whole batch: its models' summaries together.
      const whole: EtaBatch = { id: batch.id, weight, started, waitingItems: 0, waitingWorkMs: 0, runningRemainingMs: [], unknown: false };
      for (const b of byModel.values()) {
        whole.waitingItems += b.waitingItems;
        whole.waitingWorkMs += b.waitingWorkMs;
        (whole.runningRemainingMs as number[]).push(...b.runningRemainingMs);
        whole.unknown ||= b.unknown;
      }
      running += whole.runningRemainingMs.length;
      summaries.push(whole);
      if (!this.seen.has(batch.id)) {
        this.seen.add(batch.id);
        this.noteArrival(this.arrivals, batch, nominal, whole, batch.doneCount, nowMs);
        const left = Math.max(1, whole.waitingItems + whole.runningRemainingMs.length);
        for (const [model, b] of byModel) {
          let into = this.arrivalsByModel.get(model);
          if (!into) this.arrivalsByModel.set(model, (into = new RecentArrivals()));
          this.noteArrival(into, batch, nominal, b, (batch.doneCount * (b.waitingItems + b.runningRemainingMs.length)) / left, nowMs);
        }
      }
      // Items it started since the last refresh, when it had items waiting all along (turn-weights.ts).
      const before = this.waitingBefore.get(batch.id);
      if (before !== undefined && before > 0 && whole.waitingItems > 0) sharedTurns.push({ weight: nominal, starts: Math.max(0, before - whole.waitingItems) });
      waitingNow.set(batch.id, whole.waitingItems);
    }
    if (paceItems > 0) this.declaredPace = paceSum / paceItems;
    this.waitingBefore = waitingNow;
    this.turns.observe(nowMs, sharedTurns);
    if (this.seen.size > summaries.length) this.seen = new Set(summaries.map((b) => b.id));
    this.lastRefreshMs = nowMs;
    this.recentRunning = this.recentRunning.filter((r) => nowMs - r.atMs < CONCURRENCY_WINDOW_MS);
    this.recentRunning.push({ atMs: nowMs, running });
    const concurrency = Math.max(...this.recentRunning.map((r) => r.running));

    const weightOf = (w: number) => this.turns.weightOf(w);
    // The fleet as the affinity planner splits it between the models: each holds a part of the
    // slots in proportion to its backlog, at most what the VRAM lets it run (eta.ts,
    // splitConcurrency), and its batches' items there end no earlier than that part allows. The
    // fleet-wide estimate alone let a batch whose items left are of one model share slots the
    // planner keeps for another model's backlog (bench/sim tenants-priorities: such batches ended
    // ~30 % later than estimated). With one batch the parts are its own work's, so they end with
    // the fleet: only the VRAM's caps are kept then.
    const gpus = models.size > 0 ? this.durations.gpus() : [];
    const demands: { model: string; batches: EtaBatch[]; workMs: number; most: number }[] = [];
    for (const [model, m] of models) {
      let most = Infinity;
      if (m.activationBytes > 0) {
        most = 0;
        for (const g of gpus) if (g.totalBytes >= m.weightsBytes + m.activationBytes) most += Math.floor((g.totalBytes - m.weightsBytes) / m.activationBytes);
      }
      let workMs = 0;
      for (const b of m.batches) workMs += b.waitingWorkMs + b.runningRemainingMs.reduce((s, x) => s + x, 0);
      demands.push({ model, batches: m.batches, workMs, most });
    }
    const parts = summaries.length > 1 ? splitConcurrency(concurrency, demands) : demands.map((d) => (d.workMs > 0 ? d.most : 0));
    const pools: EtaPool[] = [];
    demands.forEach((d, i) => {
      const part = parts[i]!;
      if (part > 0 && part < concurrency) pools.push({ batches: d.batches, concurrency: part, arrivals: this.arrivalsByModel.get(d.model)?.stream(nowMs, weightOf) });
    });
    for (const [model, a] of this.arrivalsByModel) if (!models.has(model) && a.stream(nowMs) === undefined) this.arrivalsByModel.delete(model);
    this.current = estimateWithPools({ nowMs, batches: summaries, concurrency, arrivals: this.arrivals.stream(nowMs, weightOf) }, pools);
    // One batch with items waiting: it cannot end before the fleet's VRAM could run its work left,
    // split between its models as the planner splits the GPUs (eta-capacity.ts). The items-at-once
    // count above was taken on another mix of models; with more batches their shares decide.
    if (summaries.length === 1 && summaries[0]!.waitingItems > 0) {
      const e = this.current.get(summaries[0]!.id);
      if (e?.completionMs !== undefined) {
        const pace = this.declaredPace > 0 ? this.declaredPace : 1;
        const horizon = capacityHorizonMs(
          gpus.map((g) => ({ key: g.key, totalBytes: g.totalBytes, speed: (this.engine?.speedOf(g.workerId) ?? 1) / pace })),
          demands.map((d) => ({ model: d.model, workMs: d.workMs, weightsBytes: models.get(d.model)!.weightsBytes, activationBytes: models.get(d.model)!.activationBytes })),
        );
        if (horizon !== undefined) e.completionMs = Math.max(e.completionMs, nowMs + horizon);
      }
    }

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
