// The workers the coordinator knows, built only from heartbeats. A worker that misses
// `lostAfterMs` of heartbeats is LOST: its attempts are taken back by the coordinator. Which
// attempts a worker has open is kept by Attempts (attempts.ts), not here.

import { WorkerState } from "../proto/gen/shoal/v1/shoal.js";
import type { Heartbeat } from "../proto/gen/shoal/v1/wire.js";

export interface WorkerRecord {
  id: string;
  incarnation: string;
  state: WorkerState;
  lastSeenMs: number;
  lastSeq: number;
  hostname: string;
  resident: Set<string>;
  models: Set<string>;
  maxInFlight: number;
  itemsDone: number;
  /** An assignment found no subscriber: not placeable until its next heartbeat. */
  unreachable: boolean;
  heldReported: number;
  /** Its heartbeats say it reads AssignedItem.params_json (a worker of this version); otherwise params go as a Struct. */
  readsParamsJson?: boolean;
}

export type FleetChange = "joined" | "restarted" | "updated" | "stale";

export class Fleet {
  private readonly workers = new Map<string, WorkerRecord>();

  constructor(private readonly lostAfterMs: number) {}

  /** Applies a heartbeat; returns what it means. Out-of-order heartbeats are ignored. */
  observe(hb: Heartbeat, nowMs: number): { worker: WorkerRecord; change: FleetChange } {
    const prev = this.workers.get(hb.workerId);
    if (prev && prev.incarnation === hb.incarnation && hb.seq <= prev.lastSeq) return { worker: prev, change: "stale" };
    const change: FleetChange = !prev ? "joined" : prev.incarnation !== hb.incarnation ? "restarted" : "updated";
    const w: WorkerRecord = prev ?? {
      id: hb.workerId,
      incarnation: hb.incarnation,
      state: hb.state,
      lastSeenMs: nowMs,
      lastSeq: hb.seq,
      hostname: hb.hostname,
      resident: new Set(),
      models: new Set(),
      maxInFlight: 1,
      itemsDone: 0,
      heldReported: 0,
      unreachable: false,
    };
    w.unreachable = false;
    w.incarnation = hb.incarnation;
    w.lastSeq = hb.seq;
    w.lastSeenMs = nowMs;
    // A coordinator-side DRAINING stays until the worker itself says so or leaves.
    if (!(w.state === WorkerState.WORKER_STATE_DRAINING && hb.state === WorkerState.WORKER_STATE_READY && change === "updated")) {
      w.state = hb.state;
    }
    w.hostname = hb.hostname;
    w.resident = new Set(hb.residentModels);
    w.models = new Set(hb.models);
    w.maxInFlight = Math.max(1, hb.maxInFlight);
    w.itemsDone = hb.itemsDone;
    w.heldReported = hb.inFlight.length;
    w.readsParamsJson = hb.readsParamsJson;
    this.workers.set(w.id, w);
    return { worker: w, change };
  }

  /** Workers whose last heartbeat is older than the timeout; they are marked LOST. */
  sweep(nowMs: number): WorkerRecord[] {
    const lost: WorkerRecord[] = [];
    for (const w of this.workers.values()) {
      if (w.state !== WorkerState.WORKER_STATE_LOST && nowMs - w.lastSeenMs > this.lostAfterMs) {
        w.state = WorkerState.WORKER_STATE_LOST;
        lost.push(w);
      }
    }
    return lost;
  }

  /**
   * The earliest time sweep() would find a worker lost if no heartbeat came first (the tick is
   * armed for it: coordinator/tick-schedule.ts); undefined when no worker is live.
   */
  nextLostAtMs(): number | undefined {
    let earliest: number | undefined;
    for (const w of this.workers.values()) {
      if (w.state === WorkerState.WORKER_STATE_LOST) continue;
      // sweep() marks a worker silent for more than lostAfterMs: the first millisecond past it.
      const at = w.lastSeenMs + this.lostAfterMs + 1;
      if (earliest === undefined || at < earliest) earliest = at;
    }
    return earliest;
  }

  /** Forgets LOST workers after a while so the list does not grow forever. */
  forget(nowMs: number, afterMs: number): void {
    for (const [id, w] of this.workers) if (w.state === WorkerState.WORKER_STATE_LOST && nowMs - w.lastSeenMs > afterMs) this.workers.delete(id);
  }

  get(id: string): WorkerRecord | undefined {
    return this.workers.get(id);
  }

  all(): WorkerRecord[] {
    return [...this.workers.values()].sort((a, b) => a.id.localeCompare(b.id));
  }

  /** Unsorted: the scheduler visits every ready worker anyway. */
  ready(): WorkerRecord[] {
    const out: WorkerRecord[] = [];
    for (const w of this.workers.values()) if (w.state === WorkerState.WORKER_STATE_READY && !w.unreachable) out.push(w);
    return out;
  }

  markUnreachable(id: string): void {
    const w = this.workers.get(id);
    if (w) w.unreachable = true;
  }
}
