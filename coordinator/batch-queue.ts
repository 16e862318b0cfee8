// Items waiting for a GPU, kept per batch so that batches share the fleet fairly: each pass
// visits active batches in turn and takes up to `weight` items from each (weight grows with
// priority), so a 10,000-item batch cannot starve a 5-item one behind it. A turn spans passes:
// on a busy fleet each pass fills one or two freed slots, and the batch keeps the front until it
// has taken its weight.
//
// Within a batch, items are kept per group (the scheduler groups by model): a group whose head
// fits nowhere is blocked for the rest of the pass, and the batch goes on with its other groups,
// so a model whose GPUs are full does not hold back another model's items. Within a group items
// go in order (submission order, or longest first when the queue is `longestFirst`), except that
// when the head fits nowhere the next few are tried, so one large item does not hold back the
// small ones behind it (head-of-line blocking).
//
// The queue also keeps, per group, how many items wait and the sum of their ranks (the
// scheduler's predicted milliseconds): the backlog the affinity planner splits the fleet by,
// without a walk over every waiting item.

/** How far behind a blocked head a pass looks for items that fit. */
export const LOOKAHEAD = 16;

export interface QueuedRef {
  batchId: string;
  index: number;
}

/** An item's group (e.g. its model) and rank (e.g. its predicted duration, larger first when ordered). */
export interface QueueClass {
  group: string;
  rank: number;
}

export type QueueClassifier = (batchId: string, index: number) => QueueClass;

/**
 * What a placement attempt says: placed (true), not placed (false: the group is blocked, the
 * next few behind its head are tried), "block" (nothing of this group can be placed this pass:
 * no look-behind), "stop" (nothing more can be placed at all: the pass ends), "drop" (the item
 * was done or adopted meanwhile: taken out without counting).
 */
export type PlaceResult = boolean | "drop" | "block" | "stop";

export interface GroupBacklog {
  count: number;
  /** Sum of the waiting items' ranks. */
  rank: number;
  /**
   * The same sums with each item counted `priorityWeight` times (its batch's turn weight): the
   * affinity planner splits the fleet by these, so a model carrying high-priority work gets a
   * larger share of the GPUs while that work waits, as its batch gets more turns in the queue.
   */
  weightedCount: number;
  weightedRank: number;
}

interface Entry {
  index: number;
  seq: number;
  rank: number;
}

class Group {
  private entries: Entry[] = [];
  private head = 0;
  /** Entries placed ahead of the head; skipped (once each) when the head reaches them. */
  private readonly taken = new Set<number>();
  /** Entries added since the last sort (longest-first groups only). */
  private dirty = false;
  constructor(
    readonly name: string,
    private readonly ordered: boolean,
  ) {}
  push(e: Entry): void {
    this.entries.push(e);
    if (this.ordered) this.dirty = true;
  }
  private sortIfNeeded(): void {
    if (!this.dirty) return;
    this.dirty = false;
    const rest = this.entries.slice(this.head).filter((e) => !this.taken.has(e.index));
    this.taken.clear();
    rest.sort((a, b) => b.rank - a.rank || a.seq - b.seq);
    this.entries = rest;
    this.head = 0;
  }
  peek(): Entry | undefined {
    this.sortIfNeeded();
    while (this.head < this.entries.length && this.taken.delete(this.entries[this.head]!.index)) this.head++;
    return this.head < this.entries.length ? this.entries[this.head] : undefined;
  }
  /** The k-th waiting entry behind the head (k ≥ 1), skipping taken ones. */
  behind(k: number): Entry | undefined {
    let seen = 0;
    for (let pos = this.head + 1; pos < this.entries.length; pos++) {
      const e = this.entries[pos]!;
      if (this.taken.has(e.index)) continue;
      if (++seen === k) return e;
    }
    return undefined;
  }
  take(index: number): void {
    this.taken.add(index);
  }
  shift(): Entry | undefined {
    const v = this.peek();
    if (v !== undefined) this.head++;
    if (this.head > 1024 && this.head * 2 > this.entries.length) {
      this.entries = this.entries.slice(this.head);
      this.head = 0;
    }
    return v;
  }
  get size(): number {
    return this.entries.length - this.head - this.taken.size;
  }
  removeAll(): Entry[] {
    const left: Entry[] = [];
    for (let i = this.head; i < this.entries.length; i++) {
      const e = this.entries[i]!;
      if (this.taken.delete(e.index)) continue;
      left.push(e);
    }
    this.entries = [];
    this.head = 0;
    return left;
  }
}

class Lane {
  readonly groups = new Map<string, Group>();
  private nextSeq = 0;
  /**
   * Items taken in the lane's current turn, kept across passes: the turn ends (the lane goes to
   * the back) once `weight` items were taken, however many passes that took. Without it a pass
   * that frees one slot ended every turn after one item, and priorities stopped mattering on a
   * busy fleet (deficit round robin, with the weight as the quantum).
   */
  usedInTurn = 0;
  constructor(
    readonly batchId: string,
    readonly weight: number,
    private readonly ordered: boolean,
  ) {}
  push(index: number, cls: QueueClass): void {
    let g = this.groups.get(cls.group);
    if (!g) this.groups.set(cls.group, (g = new Group(cls.group, this.ordered)));
    g.push({ index, seq: this.nextSeq++, rank: cls.rank });
  }
  /** The group whose head goes next: the oldest head, or the longest one when ordered. */
  pick(blocked: ReadonlySet<Group>): { group: Group; entry: Entry } | undefined {
    let best: { group: Group; entry: Entry } | undefined;
    for (const [name, g] of this.groups) {
      if (blocked.has(g)) continue;
      const e = g.peek();
      if (!e) {
        this.groups.delete(name);
        continue;
      }
      if (!best || (this.ordered ? e.rank > best.entry.rank || (e.rank === best.entry.rank && e.seq < best.entry.seq) : e.seq < best.entry.seq)) {
        best = { group: g, entry: e };
      }
    }
    return best;
  }
  get size(): number {
    let n = 0;
    for (const g of this.groups.values()) n += g.size;
    return n;
  }
}

export function priorityWeight(priority: number): number {
  return Math.max(1, Math.min(16, 1 + priority));
}

export interface BatchQueueOptions {
  /** Groups and ranks items; without it every item is in one group with rank 0. */
  classify?: QueueClassifier;
  /** Within a group, larger ranks first (longest first) instead of submission order. */
  longestFirst?: boolean;
}

export class BatchQueue {
  private readonly lanes = new Map<string, Lane>();
  private total = 0;
  private readonly backlog = new Map<string, GroupBacklog>();
  private readonly classify: QueueClassifier | undefined;
  private readonly longestFirst: boolean;

  constructor(opts: BatchQueueOptions = {}) {
    this.classify = opts.classify;
    this.longestFirst = opts.longestFirst ?? false;
  }

  add(batchId: string, index: number, priority = 0): void {
    let lane = this.lanes.get(batchId);
    if (!lane) this.lanes.set(batchId, (lane = new Lane(batchId, priorityWeight(priority), this.longestFirst)));
    const cls = this.classify ? this.classify(batchId, index) : { group: "", rank: 0 };
    lane.push(index, cls);
    this.total++;
    const b = this.backlog.get(cls.group);
    const wt = lane.weight;
    if (b) {
      b.count++;
      b.rank += cls.rank;
      b.weightedCount += wt;
      b.weightedRank += cls.rank * wt;
    } else this.backlog.set(cls.group, { count: 1, rank: cls.rank, weightedCount: wt, weightedRank: cls.rank * wt });
  }

  /** Drops a batch's waiting items (cancel, finalize) and returns them. */
  removeBatch(batchId: string): number[] {
    const lane = this.lanes.get(batchId);
    if (!lane) return [];
    this.lanes.delete(batchId);
    const left: Entry[] = [];
    for (const g of lane.groups.values()) for (const e of g.removeAll()) this.taken(g.name, e.rank, lane.weight, left, e);
    left.sort((a, b) => a.seq - b.seq);
    return left.map((e) => e.index);
  }

  get size(): number {
    return this.total;
  }

  sizeOf(batchId: string): number {
    return this.lanes.get(batchId)?.size ?? 0;
  }

  /** Waiting items per group: how many, and the sum of their ranks. Shared: do not modify. */
  backlogByGroup(): ReadonlyMap<string, GroupBacklog> {
    return this.backlog;
  }

  /** Waiting items of one group. */
  waiting(group: string): number {
    return this.backlog.get(group)?.count ?? 0;
  }

  /**
   * One scheduling pass. `tryPlace` returns true when it placed the item; on false the item's
   * group in that batch is blocked for the rest of this pass (its head does not fit anywhere
   * now) and keeps its order. Stops when every lane is blocked or empty, or when `budget` items
   * were placed. "drop" takes the item out of the queue without counting against the budget
   * (it was done or adopted meanwhile).
   */
  drain(tryPlace: (ref: QueuedRef) => PlaceResult, budget = Infinity): number {
    let placed = 0;
    const blocked = new Set<Group>();
    let stopped = false;
    while (placed < budget && !stopped) {
      let progressed = false;
      for (const lane of [...this.lanes.values()]) {
        let servedNow = 0;
        for (let k = lane.usedInTurn; k < lane.weight && placed < budget; ) {
          const next = lane.pick(blocked);
          if (!next) break;
          const r = tryPlace({ batchId: lane.batchId, index: next.entry.index });
          if (r === "stop") {
            stopped = true;
            break;
          }
          if (r === false || r === "block") {
            blocked.add(next.group);
            if (r === false) placed += this.placeBehind(lane.batchId, next.group, tryPlace, budget - placed);
            continue;
          }
          next.group.shift();
          this.taken(next.group.name, next.entry.rank, lane.weight);
          progressed = true;
          if (r === "drop") continue;
          placed++;
          servedNow++;
          k++;
        }
        lane.usedInTurn += servedNow;
        if (lane.size === 0) this.lanes.delete(lane.batchId);
        else if (lane.usedInTurn >= lane.weight) {
          // Its turn is over: to the back of the turn order, so the next pass (often one freed
          // slot) starts with a batch that has not had its turn; otherwise the oldest batch
          // would win every freed slot of a scarce GPU.
          lane.usedInTurn = 0;
          this.lanes.delete(lane.batchId);
          this.lanes.set(lane.batchId, lane);
        }
        if (stopped) break;
      }
      if (!progressed) break;
    }
    return placed;
  }

  private taken(group: string, rank: number, weight: number, into?: Entry[], e?: Entry): void {
    this.total--;
    const b = this.backlog.get(group);
    if (b) {
      b.count--;
      b.rank -= rank;
      b.weightedCount -= weight;
      b.weightedRank -= rank * weight;
      if (b.count <= 0) this.backlog.delete(group);
    }
    if (into && e) into.push(e);
  }

  /** The head of the group fits nowhere: try the next few items behind it. */
  private placeBehind(batchId: string, group: Group, tryPlace: (ref: QueuedRef) => PlaceResult, budget: number): number {
    let placed = 0;
    const weight = this.lanes.get(batchId)?.weight ?? 1;
    for (let k = 1, tried = 0; tried < LOOKAHEAD && placed < budget; tried++) {
      const next = group.behind(k);
      if (!next) break;
      const r = tryPlace({ batchId, index: next.index });
      if (r === "stop" || r === "block") break;
      if (r) {
        group.take(next.index);
        this.taken(group.name, next.rank, weight);
        if (r !== "drop") placed++;
      } else {
        k++;
      }
    }
    return placed;
  }
}
