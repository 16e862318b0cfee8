// Items waiting for a GPU, kept per batch so that batches share the fleet fairly: each pass
// visits active batches in turn and takes up to `weight` items from each (weight grows with
// priority), so a 10,000-item batch cannot starve a 5-item one behind it.

export interface QueuedRef {
  batchId: string;
  index: number;
}

class Lane {
  private items: number[] = [];
  private head = 0;
  constructor(
    readonly batchId: string,
    readonly weight: number,
  ) {}
  push(index: number): void {
    this.items.push(index);
  }
  peek(): number | undefined {
    return this.head < this.items.length ? this.items[this.head] : undefined;
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
    return this.items.length - this.head;
  }
  remove(pred: (i: number) => boolean): number[] {
    const kept: number[] = [];
    const removed: number[] = [];
    for (let i = this.head; i < this.items.length; i++) (pred(this.items[i]!) ? removed : kept).push(this.items[i]!);
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
}
