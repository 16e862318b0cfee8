// The one owner of attempt state. An attempt is one try of one item on one worker, named by its
// token (the wire's LeaseRef); while it is open the coordinator keeps three views of it: the
// item's current attempt (ItemSlot.lease, read by the batch rules), the VRAM it reserves on its
// GPU (VramLedger) and the worker it counts against (a worker's free slots). Before, each place
// that opened or closed an attempt updated all three by hand; now only this class does, so the
// views cannot drift apart. Pure: no I/O, no clock (the caller stamps assignedAtMs).
//
// What it does not decide: whether an outcome counts, and what the item does next (retry, done,
// cancelled). Those are the batch's rules (batch-state.ts), which also clear ItemSlot.lease when
// an attempt ends there; ending it here gives its reservation and its worker slot back.

import type { ActiveBatch, Attempt } from "./batch-state.js";
import type { VramLedger } from "./vram-ledger.js";

/** Where the engine put an attempt: the ledger reserves `bytes` on `gpuKey` for it. */
export interface Reservation {
  gpuKey: string;
  /** Activations, plus the weights when this attempt is the one that counts the model there. */
  bytes: number;
  model: string;
  activationBytes: number;
  weightsBytes: number;
}

/** An open attempt as the scheduler's backlog sees it. */
export interface OpenAttempt {
  model: string;
  workerId: string;
  startMs: number;
  predictedMs: number;
  /** Its GPU and the activations it gives back when it ends (defragmentation's wait estimate). */
  gpuIndex?: number;
  activationBytes?: number;
}

export class Attempts {
  /** token → what the scheduler needs to know of each open attempt (model, start, prediction). */
  private readonly openInfo = new Map<string, OpenAttempt>();
  /** workerId → tokens of the attempts this coordinator has open there. */
  private readonly byWorker = new Map<string, Set<string>>();
  private readonly workerOf = new Map<string, string>();

  constructor(private readonly ledger: VramLedger) {}

  /**
   * Opens a placed attempt: reserves its VRAM (throws ReservationError, changing nothing, if it
   * no longer fits), counts it against its worker and makes it the item's current attempt.
   */
  open(batch: ActiveBatch, index: number, attempt: Attempt, attemptNo: number, reservation: Reservation): void {
    const slot = batch.items[index]!;
    this.ledger.reserve(attempt.token, reservation.gpuKey, reservation.bytes, reservation.model, reservation.activationBytes, reservation.weightsBytes);
    this.track(attempt, reservation.model);
    slot.state = "leased";
    slot.lease = attempt;
    slot.attempts = attemptNo;
    batch.started = true;
  }

  /**
   * Opens a hedge: a second copy of the item's running attempt on another worker (see
   * scheduler/hedging.ts). Reserved and counted like any attempt, and it is the item's next
   * attempt (`attemptNo`); the item is never hedged again.
   */
  openHedge(batch: ActiveBatch, index: number, attempt: Attempt, attemptNo: number, reservation: Reservation): void {
    const slot = batch.items[index]!;
    if (slot.state !== "leased" || !slot.lease || slot.hedge) throw new Error(`item ${batch.id}/${index} has no single running attempt to hedge`);
    this.ledger.reserve(attempt.token, reservation.gpuKey, reservation.bytes, reservation.model, reservation.activationBytes, reservation.weightsBytes);
    this.track(attempt, reservation.model);
    slot.hedge = attempt;
    slot.hedged = true;
    slot.attempts = attemptNo;
  }

  /**
   * After a restart, a second worker reports holding a copy of an item another worker already
   * holds (the item was hedged before the restart): it is adopted as the item's hedge, so the
   * outcome of either copy counts.
   */
  adoptHedge(batch: ActiveBatch, index: number, attempt: Attempt, attemptNo: number): void {
    const slot = batch.items[index]!;
    this.track(attempt, slot.model);
    slot.hedge = attempt;
    slot.hedged = true;
    slot.attempts = Math.max(slot.attempts, attemptNo);
  }

  /**
   * After a restart: an attempt a worker reports holding becomes the item's current one again.
   * Nothing is reserved: the worker already counts it in the free VRAM it reports.
   */
  adopt(batch: ActiveBatch, index: number, attempt: Attempt, attemptNo: number): void {
    const slot = batch.items[index]!;
    this.track(attempt, slot.model);
    slot.state = "leased";
    slot.lease = attempt;
    slot.attempts = Math.max(slot.attempts, attemptNo);
    batch.started = true;
  }

  /**
   * The attempt ended (its outcome arrived, it was taken back, or its worker refused it): its
   * reservation and its worker slot are given back. Unknown tokens are ignored, so every path
   * that sees an attempt end may call this.
   */
  end(token: string): void {
    this.ledger.release(token);
    this.openInfo.delete(token);
    const workerId = this.workerOf.get(token);
    if (workerId === undefined) return;
    this.workerOf.delete(token);
    const set = this.byWorker.get(workerId);
    set?.delete(token);
    if (set?.size === 0) this.byWorker.delete(workerId);
  }

  /**
   * The worker refused the attempt (it never held it, e.g. it is draining): the attempt is ended
   * and undone, so it does not count. Returns true when it was still the item's current attempt,
   * which the caller then queues again.
   */
  withdraw(batch: ActiveBatch, index: number, attempt: Attempt): boolean {
    const slot = batch.items[index]!;
    this.end(attempt.token);
    if (slot.hedge?.token === attempt.token) {
      // A refused hedge: the original runs on alone (and the item is not hedged again). The
      // worker never held it: not an attempt.
      slot.hedge = undefined;
      slot.attempts--;
      return false;
    }
    if (slot.state !== "leased" || slot.lease?.token !== attempt.token) return false;
    slot.state = "pending";
    slot.lease = undefined;
    slot.attempts--;
    return true;
  }

  /**
   * The worker is gone or restarted: returns the tokens it held and stops counting them against
   * it. Their reservations stay until each is ended (the caller takes each attempt back).
   */
  forgetWorker(workerId: string): Set<string> {
    const tokens = this.byWorker.get(workerId) ?? new Set<string>();
    this.byWorker.delete(workerId);
    for (const t of tokens) this.workerOf.delete(t);
    return tokens;
  }

  /** How many attempts are open on the worker: what it may still take is its max less this. */
  openOn(workerId: string): number {
    return this.byWorker.get(workerId)?.size ?? 0;
  }

  /** Every open attempt (the scheduler's backlog of running work). */
  running(): IterableIterator<OpenAttempt> {
    return this.openInfo.values();
  }

  private track(attempt: Attempt, model: string): void {
    this.openInfo.set(attempt.token, { model, workerId: attempt.workerId, startMs: attempt.assignedAtMs, predictedMs: attempt.predictedMs ?? 0, gpuIndex: attempt.gpuIndex, activationBytes: attempt.activationBytes });
    let set = this.byWorker.get(attempt.workerId);
    if (!set) this.byWorker.set(attempt.workerId, (set = new Set()));
    set.add(attempt.token);
    this.workerOf.set(attempt.token, attempt.workerId);
  }
}
