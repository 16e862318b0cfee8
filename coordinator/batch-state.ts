// One batch while it runs: the coordinator's in-memory projection of the durable record plus the
// outcomes in the results log. The rules here decide which outcome counts; they give the same
// answer live and when the log is replayed after a restart (see applyOutcome).

import { BatchState, ItemStatus, type Batch, type ItemError, type ItemResult } from "../proto/gen/shoal/v1/shoal.js";
import type { BatchRecord, ItemOutcome } from "../proto/gen/shoal/v1/wire.js";
import { leaseAttempt } from "../shared/ids.js";
import type { VramNeed } from "../shared/vram-need.js";
import { shapeKey } from "./vram-estimates.js";
import type { StepMarks } from "./step-times.js";

/**
 * One try of one item on one worker (the wire calls its reference a LeaseRef). Opened and ended
 * by Attempts (attempts.ts), which keeps its VRAM reservation and its worker slot with it.
 */
export interface Attempt {
  token: string;
  workerId: string;
  gpuIndex: number;
  assignedAtMs: number;
  /** Activation bytes reserved for this attempt (an OUT_OF_MEMORY raises the next one). */
  activationBytes?: number;
  /** How long the scheduler expected it to run on its worker (for the backlog and hedging). */
  predictedMs?: number;
}

export interface ItemSlot {
  model: string;
  params: Record<string, unknown>;
  /** `params` as AssignedItem.params_json, built at the item's first assignment and kept for its retries. */
  paramsJson?: Buffer;
  /** The manifest's need, fixed when the batch is validated (or resumed); learned estimates may raise the activations. */
  need: VramNeed;
  state: "pending" | "leased" | "done";
  attempts: number;
  /** The attempt running now, if any (set by Attempts; cleared here when the item's attempt ends). */
  lease: Attempt | undefined;
  /**
   * A second copy of the running attempt on another worker (straggler hedging, see
   * scheduler/hedging.ts), open beside `lease`: the first of the two to end the item wins.
   */
  hedge?: Attempt;
  /** A hedge was placed for this item once: never a second one. */
  hedged?: boolean;
  /**
   * Attempts that ended without a result that counts (failed and retried, or taken back).
   * Allocated on the first one: most items never need it, and batches hold many items.
   */
  closed: Set<string> | undefined;
  result: ItemResult | undefined;
  queuedAtMs: number;
  firstQueuedAtMs: number;
  /** model|WxH: the key of learned VRAM estimates. */
  shapeKey?: string;
  /** Since when no registered worker could ever fit this item (unset when one could). */
  unplaceableSinceMs?: number;
}

/** A pending item as it enters the queue: the one place an ItemSlot is made (coordinator and simulator). */
export function newItemSlot(model: string, params: Record<string, unknown>, need: VramNeed, queuedAtMs: number, firstQueuedAtMs: number): ItemSlot {
  return {
    model,
    params,
    need,
    state: "pending",
    attempts: 0,
    lease: undefined,
    closed: undefined,
    result: undefined,
    queuedAtMs,
    firstQueuedAtMs,
    shapeKey: shapeKey(model, params),
  };
}

/**
 * How a hedged item's pair of attempts ended: won (the hedge copy's outcome ended the item),
 * lost (the original's did, while the copy still ran), cancelled (one copy failed or was taken
 * back while the other ran on, which then carries the item alone). `other`: the copy still open
 * when the item ended, which the caller cancels on its worker.
 */
export interface HedgeEnd {
  outcome: "won" | "lost" | "cancelled";
  other?: Attempt;
}

export type OutcomeEffect =
  | { kind: "ignored"; reason: "item-done" | "lease-closed" | "unknown-item" }
  | { kind: "done"; hedge?: HedgeEnd }
  | { kind: "retry" }
  | { kind: "closed"; hedge?: HedgeEnd };

export class ActiveBatch {
  readonly items: ItemSlot[];
  succeeded = 0;
  failed = 0;
  cancelled = 0;
  cancelRequested = false;
  finalizing = false;
  started = false;
  /** The terminal write once begun; resolves with the batch as stored. */
  terminalWrite: Promise<Batch> | undefined;
  /** Set while a refresh of the running record is in flight. */
  refreshing = false;
  /** Why the terminal write last failed, while it is retried. */
  lastWriteError: Error | undefined;
  private writeFailed: { promise: Promise<Error>; resolve: (e: Error) => void } | undefined;
  /**
   * The record's items as stored bytes (record-encoding.ts), so the terminal write encodes only
   * the results: set at submit; a batch resumed after a restart encodes its items once, there.
   */
  itemsBytes: Uint8Array | undefined;
  /** Timestamps of its steps, only while the coordinator logs at debug (step-times.ts). */
  steps: StepMarks | undefined;

  constructor(
    readonly record: BatchRecord,
    public revision: number,
    slots: ItemSlot[],
    readonly maxAttempts: number,
    /** When the record was last written: retention counts from here. */
    public writtenAtMs: number = Date.now(),
  ) {
    this.items = slots;
  }

  /** Resolves with a failure of the terminal write, a past one or the next (it is retried regardless). */
  writeFailure(): Promise<Error> {
    if (this.lastWriteError) return Promise.resolve(this.lastWriteError);
    if (!this.writeFailed) {
      let resolve!: (e: Error) => void;
      const promise = new Promise<Error>((r) => (resolve = r));
      this.writeFailed = { promise, resolve };
    }
    return this.writeFailed.promise;
  }

  reportWriteFailure(err: Error): void {
    this.lastWriteError = err;
    this.writeFailed?.resolve(err);
  }

  get id(): string {
    return this.record.batch!.id;
  }

  get total(): number {
    return this.items.length;
  }

  get doneCount(): number {
    return this.succeeded + this.failed + this.cancelled;
  }

  get isComplete(): boolean {
    return this.doneCount === this.items.length;
  }

  running(): number {
    let n = 0;
    for (const s of this.items) if (s.state === "leased") n++;
    return n;
  }

  /**
   * Applies one outcome from the results log. An outcome counts when its item is not done yet
   * and its attempt was not closed; a closed attempt is one that failed and was retried or one
   * the coordinator took back (and logged, before placing the item again). Because every
   * closing is itself in the log, replaying the log reaches the same decisions.
   */
  applyOutcome(o: ItemOutcome, workerId: string, nowMs: number): OutcomeEffect {
    const lease = o.lease!;
    const slot = this.items[lease.index];
    if (!slot) return { kind: "ignored", reason: "unknown-item" };
    if (slot.state === "done") return { kind: "ignored", reason: "item-done" };
    if (slot.closed?.has(lease.token)) return { kind: "ignored", reason: "lease-closed" };
    const isHedge = slot.hedge !== undefined && slot.hedge.token === lease.token;
    const isCurrent = slot.lease?.token === lease.token || isHedge;
    const running = isHedge ? slot.hedge : isCurrent ? slot.lease : undefined;
    // A hedged item has two open copies of one attempt: the other one, if this is one of them.
    const other = isHedge ? slot.lease : isCurrent ? slot.hedge : undefined;
    const attempt = isCurrent ? slot.attempts : leaseAttempt(lease.token);
    if (attempt > slot.attempts) slot.attempts = attempt;
    const assignedAtMs = running ? running.assignedAtMs : nowMs - o.runMs;
    const queueMs = Math.max(0, assignedAtMs - slot.firstQueuedAtMs);
    if (o.status === ItemStatus.ITEM_STATUS_FAILED && o.error?.retryable) {
      (slot.closed ??= new Set()).add(lease.token);
      if (other) {
        // One copy failed while the other still runs: that one carries the item on alone; no
        // retry, no failure. (A replay, which knows no open attempts, queues the item again
        // here and then counts the other copy's outcome: the same end. A copy is never an
        // item's last allowed attempt, so a replay cannot fail the item here either.)
        slot.lease = other;
        slot.hedge = undefined;
        return { kind: "closed", hedge: { outcome: "cancelled" } };
      }
      if (slot.attempts >= this.maxAttempts) {
        this.finish(slot, result(lease.index, ItemStatus.ITEM_STATUS_FAILED, withAttempts(o.error, slot.attempts), [], workerId, slot, queueMs, o.runMs));
        return { kind: "done" };
      }
      if (slot.lease && !isCurrent) return { kind: "closed" }; // another attempt is running
      slot.lease = undefined;
      slot.state = "pending";
      slot.queuedAtMs = nowMs;
      return { kind: "retry" };
    }
    const status = o.status === ItemStatus.ITEM_STATUS_UNSPECIFIED ? ItemStatus.ITEM_STATUS_FAILED : o.status;
    this.finish(slot, result(lease.index, status, o.error, o.artifacts, workerId, slot, queueMs, o.runMs));
    // The first terminal outcome of a hedged pair wins; the other copy is to be cancelled.
    if (other) return { kind: "done", hedge: { outcome: isHedge ? "won" : "lost", other } };
    return { kind: "done" };
  }

  /** The coordinator took an attempt back (worker lost, not delivered). Same rules as above. */
  applyRevocation(index: number, token: string, error: ItemError, nowMs: number): OutcomeEffect {
    const slot = this.items[index];
    if (!slot) return { kind: "ignored", reason: "unknown-item" };
    if (slot.state === "done") return { kind: "ignored", reason: "item-done" };
    if (slot.closed?.has(token)) return { kind: "ignored", reason: "lease-closed" };
    return this.applyOutcome(
      { lease: { batchId: this.id, index, token }, status: ItemStatus.ITEM_STATUS_FAILED, error: { ...error, retryable: true }, artifacts: [], runMs: 0, vramUsedBytes: 0 },
      (slot.hedge?.token === token ? slot.hedge.workerId : slot.lease?.workerId) ?? "",
      nowMs,
    );
  }

  /** Ends one item without an outcome from a worker (e.g. nothing in the fleet can fit it). */
  failItem(index: number, error: ItemError): boolean {
    const slot = this.items[index];
    if (!slot || slot.state !== "pending") return false;
    this.finish(slot, { index, status: ItemStatus.ITEM_STATUS_FAILED, error, artifacts: [], workerId: "", attempts: slot.attempts, queueMs: 0, runMs: 0, model: slot.model });
    return true;
  }

  /** Marks every item not yet done CANCELLED; returns the leases that were running. */
  cancelAll(): { index: number; lease: Attempt }[] {
    const running: { index: number; lease: Attempt }[] = [];
    this.cancelRequested = true;
    for (const [index, slot] of this.items.entries()) {
      if (slot.state === "done") continue;
      if (slot.lease) running.push({ index, lease: slot.lease });
      if (slot.hedge) running.push({ index, lease: slot.hedge });
      this.finish(slot, {
        index,
        status: ItemStatus.ITEM_STATUS_CANCELLED,
        error: { code: "CANCELLED", message: "the batch was cancelled", retryable: false },
        artifacts: [],
        workerId: slot.lease?.workerId ?? "",
        attempts: slot.attempts,
        queueMs: 0,
        runMs: 0,
        model: slot.model,
      });
    }
    return running;
  }

  private finish(slot: ItemSlot, result: ItemResult): void {
    slot.state = "done";
    slot.result = result;
    slot.lease = undefined;
    slot.hedge = undefined;
    if (result.status === ItemStatus.ITEM_STATUS_SUCCEEDED) this.succeeded++;
    else if (result.status === ItemStatus.ITEM_STATUS_CANCELLED) this.cancelled++;
    else this.failed++;
  }

  terminalState(): BatchState {
    if (this.cancelRequested) return BatchState.BATCH_STATE_CANCELLED;
    if (this.succeeded > 0) return BatchState.BATCH_STATE_COMPLETED;
    if (this.failed === this.total) return BatchState.BATCH_STATE_FAILED;
    return BatchState.BATCH_STATE_CANCELLED;
  }

  /** The batch as clients see it while it runs: counts, no results. */
  snapshot(): Batch {
    return {
      ...this.record.batch!,
      state: this.started || this.doneCount > 0 ? BatchState.BATCH_STATE_RUNNING : BatchState.BATCH_STATE_QUEUED,
      total: this.total,
      succeeded: this.succeeded,
      failed: this.failed,
      cancelled: this.cancelled,
      running: this.running(),
      results: [],
    };
  }

  /** The terminal batch, every result in item order; written in one step. */
  final(completedAt: Date): Batch {
    return {
      ...this.snapshot(),
      state: this.terminalState(),
      running: 0,
      completedAt,
      results: this.items.map((s) => s.result!),
    };
  }
}

function result(
  index: number,
  status: ItemStatus,
  error: ItemError | undefined,
  artifacts: ItemResult["artifacts"],
  workerId: string,
  slot: ItemSlot,
  queueMs: number,
  runMs: number,
): ItemResult {
  return { index, status, error, artifacts, workerId, attempts: slot.attempts, queueMs, runMs, model: slot.model };
}

function withAttempts(error: ItemError, attempts: number): ItemError {
  return { ...error, message: `${error.message} (after ${attempts} attempt${attempts === 1 ? "" : "s"})` };
}
