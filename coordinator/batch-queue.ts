// Items waiting for a GPU, kept per batch so that batches share the fleet fairly: each pass
// visits active batches in turn and takes up to `weight` items from each (weight grows with
// priority), so a 10,000-item batch cannot starve a 5-item one behind it. Within a batch items
// go in order, except that when the head fits nowhere the next few are tried, so one large item
// does not hold back the small ones behind it (head-of-line blocking).

/** How far behind a blocked head a pass looks for items that fit. */
export const LOOKAHEAD = 16;

export interface QueuedRef {
  batchId: string;
  index: number;
}

class Lane {
  private items: number[] = [];
  private head = 0;
  /** Entries placed ahead of the head; skipped (once each) when the head reaches them. */
  private readonly taken = new Set<number>();
  constructor(
    readonly batchId: string,
    readonly weight: number,
  ) {}
  push(index: number): void {
    this.items.push(index);
  }
  peek(): number | undefined {
    while (this.head < this.items.length && this.taken.delete(this.items[this.head]!)) this.head++;
    return this.head < this.items.length ? this.items[this.head] : undefined;
  }
  /** The k-th waiting entry behind the head (k ≥ 1), skipping taken ones. */
  behind(k: number): { index: number; pos: number } | undefined {
    let seen = 0;
    for (let pos = this.head + 1; pos < this.items.length; pos++) {
      const index = this.items[pos]!;
      if (this.taken.has(index)) continue;
      if (++seen === k) return { index, pos };
    }
    return undefined;
  }
  take(index: number): void {
    this.taken.add(index);
  }
  shift(): number | undefined {
    const v = this.peek();
    if (v !== undefined) this.head++;
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return v;
  }
  get size(): number {
    return this.items.length - this.head - this.taken.size;
  }
  remove(pred: (i: number) => boolean): number[] {
    const kept: number[] = [];
    const removed: number[] = [];
    for (let i = this.head; i < this.items.length; i++) {
      const index = this.items[i]!;
      if (this.taken.delete(index)) continue;
      (pred(index) ? removed : kept).push(index);
    }
    this.items = kept;
    this.head = 0;
    return removed;
  }
}

export function priorityWeight(priority: number): number {
  return Math.max(1, Math.min(16, 1 + priority));
}

export class BatchQueue {
  private readonly lanes = new Map<string, Lane>();
  private total = 0;

  add(batchId: string, index: number, priority = 0): void {
    let lane = this.lanes.get(batchId);
    if (!lane) this.lanes.set(batchId, (lane = new Lane(batchId, priorityWeight(priority))));
    lane.push(index);
    this.total++;
  }

  /** Drops a batch's waiting items (cancel, finalize) and returns them. */
  removeBatch(batchId: string): number[] {
    const lane = this.lanes.get(batchId);
    if (!lane) return [];
    this.lanes.delete(batchId);
    const left = lane.remove(() => true);
    this.total -= left.length;
    return left;
  }

  get size(): number {
    return this.total;
  }

  sizeOf(batchId: string): number {
    return this.lanes.get(batchId)?.size ?? 0;
  }

  /**
   * One scheduling pass. `tryPlace` returns true when it placed the item; on false the batch is
   * blocked for the rest of this pass (its head does not fit anywhere now) and keeps its order.
   * Stops when every lane is blocked or empty, or when `budget` items were placed.
   */
  drain(tryPlace: (ref: QueuedRef) => boolean, budget = Infinity): number {
    let placed = 0;
    const blocked = new Set<string>();
    while (placed < budget) {
      let progressed = false;
      for (const lane of [...this.lanes.values()]) {
        if (blocked.has(lane.batchId)) continue;
        for (let k = 0; k < lane.weight && placed < budget; k++) {
          const index = lane.peek();
          if (index === undefined) {
            this.lanes.delete(lane.batchId);
            break;
          }
          if (!tryPlace({ batchId: lane.batchId, index })) {
            blocked.add(lane.batchId);
            placed += this.placeBehind(lane, tryPlace, budget - placed);
            break;
          }
          lane.shift();
          this.total--;
          placed++;
          progressed = true;
        }
        if (lane.size === 0) this.lanes.delete(lane.batchId);
      }
      if (!progressed) break;
    }
    return placed;
  }

  /** The head of the lane fits nowhere: try the next few items behind it. */
  private placeBehind(lane: Lane, tryPlace: (ref: QueuedRef) => boolean, budget: number): number {
    let placed = 0;
    for (let k = 1, tried = 0; tried < LOOKAHEAD && placed < budget; tried++) {
      const next = lane.behind(k);
      if (!next) break;
      if (tryPlace({ batchId: lane.batchId, index: next.index })) {
        lane.take(next.index);
        this.total--;
        placed++;
      } else {
        k++;
      }
    }
    return placed;
  }
}
