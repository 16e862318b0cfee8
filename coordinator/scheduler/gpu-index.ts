// An index of the fleet's GPUs for placement, so a decision does not scan the fleet. It gives
// exactly the decision `placeItem` (placement.ts) gives by scanning every worker: the same
// candidates (a worker with a free slot that serves the model; a GPU the affinity plan accepts
// and the item fits on) and the same order (a GPU where the model is warm or resident first,
// then the least leftover VRAM, or the most with spread; ties to the worker met first in the
// fleet's order, then the lower GPU index). A property test holds the two together
// (test/unit/gpu-index.test.ts).
//
// Layout: GPUs are grouped by the set of models the affinity plan gives them (a handful of
// groups: one per planned model, a few mixed, and the GPUs without a plan); in each group, for
// each model the GPU's worker serves, the GPU sits in one of three lists by how the model stands
// there: warm (a live lease counts its weights: the item needs only its activations), resident
// (loaded but not counted: the weights are counted again) or cold. Each list is sorted by
// available VRAM (free less reserved) and then by fleet order, so the best GPU of a list is one
// binary search away, and a decision looks at three lists per group.
//
// It follows the fleet incrementally: the ledger tells it which worker's VRAM figures changed
// (reports, reservations, releases) and only that worker's GPUs are re-sorted, at once, so a
// decision pays only its own searches; the engine tells it each worker's free slots, served and
// resident models once per pass (only a worker whose figures changed moves), and a new affinity
// plan moves only the GPUs whose planned models changed. Pure: no I/O, no clock.

import { bytesToReserve } from "../../shared/vram-need.js";
import type { ItemNeed, Placement, PlacementPolicy } from "../placement.js";
import type { GpuView, VramLedger } from "../vram-ledger.js";

/** A GPU's planned models (undefined: no plan for it); the group filter sees the whole group's set. */
export type PlanSet = ReadonlySet<string> | undefined;

interface WorkerEntry {
  id: string;
  /** Fleet order: workers met earlier in the engine's iteration have lower ranks. */
  rank: number;
  /** READY, reachable, a free slot: its GPUs are in the lists. */
  eligible: boolean;
  models: ReadonlySet<string>;
  resident: ReadonlySet<string>;
  gpus: GpuEntry[];
  /** The pass in which the engine last reported it. */
  seenPass: number;
}

interface GpuEntry {
  view: GpuView;
  worker: WorkerEntry;
  /** Position among its worker's GPUs (sorted by index), the tie-break within a worker. */
  pos: number;
  /** The available VRAM the entry is sorted by in every list it is in. */
  keyAvail: number;
  group: Group;
  /** model → the list the GPU is in for it. */
  lists: Map<string, GpuEntry[]>;
}

/** warm, resident, cold: the lists of one model in one group. */
type Lists = [GpuEntry[], GpuEntry[], GpuEntry[]];

interface Group {
  plan: PlanSet;
  byModel: Map<string, Lists>;
  size: number;
}

const WARM = 0;
const RESIDENT = 1;
const COLD = 2;

/** Sort order of every list: available VRAM, then fleet order. */
function before(a: GpuEntry, avail: number, w: number, pos: number): boolean {
  return a.keyAvail < avail || (a.keyAvail === avail && (a.worker.rank < w || (a.worker.rank === w && a.pos < pos)));
}

/** The first position whose entry is not before (avail, rank, pos). */
function lowerBound(list: GpuEntry[], avail: number, w = -Infinity, pos = -Infinity): number {
  let lo = 0;
  let hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (before(list[mid]!, avail, w, pos)) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function insert(list: GpuEntry[], g: GpuEntry): void {
  list.splice(lowerBound(list, g.keyAvail, g.worker.rank, g.pos), 0, g);
}

function remove(list: GpuEntry[], g: GpuEntry): void {
  const i = lowerBound(list, g.keyAvail, g.worker.rank, g.pos);
  if (list[i] !== g) throw new Error(`gpu index out of order at ${g.view.key}`);
  list.splice(i, 1);
}

function planKey(plan: PlanSet): string {
  return plan === undefined ? "" : `=${[...plan].sort().join(",")}`;
}

function sameSet(a: ReadonlySet<string>, b: ReadonlySet<string>): boolean {
  if (a === b) return true;
  if (a.size !== b.size) return false;
  for (const x of a) if (!b.has(x)) return false;
  return true;
}

export class GpuIndex {
  private readonly workers = new Map<string, WorkerEntry>();
  private readonly groups = new Map<string, Group>();
  /** Workers whose VRAM figures changed since they were last sorted. */
  private readonly dirty = new Set<string>();
  private plan: ReadonlyMap<string, ReadonlySet<string>> | undefined;
  private pass = 0;
  private nextRank = 0;
  private lastRank = -1;
  private outOfOrder = false;
  private order: WorkerEntry[] = [];

  constructor(readonly ledger: VramLedger) {
    // Re-sorted as the change happens (a heartbeat, a reservation, a release), so a decision
    // finds the lists in order and pays only its own searches.
    ledger.onChange((workerId) => {
      const w = this.workers.get(workerId);
      if (w) this.refreshWorker(w);
      else this.dirty.add(workerId);
    });
  }

  /** Starts the engine's walk over the fleet (see syncWorker, endSync). */
  beginSync(): void {
    this.pass++;
    this.lastRank = -1;
    this.outOfOrder = false;
    this.order = [];
  }

  /**
   * One worker as the engine sees it this pass, in the fleet's order: `slotsFree` ≤ 0 for one
   * that takes nothing now (full, not READY, unreachable). Only a change moves its GPUs.
   */
  syncWorker(id: string, slotsFree: number, models: ReadonlySet<string>, resident: ReadonlySet<string>): void {
    let w = this.workers.get(id);
    if (!w) {
      w = { id, rank: this.nextRank++, eligible: false, models, resident, gpus: [], seenPass: this.pass };
      this.workers.set(id, w);
      this.dirty.add(id);
    }
    w.seenPass = this.pass;
    if (w.rank <= this.lastRank) this.outOfOrder = true;
    this.lastRank = w.rank;
    this.order.push(w);
    const eligible = slotsFree > 0;
    const changed = eligible !== w.eligible || !sameSet(models, w.models) || !sameSet(resident, w.resident);
    w.models = models;
    w.resident = resident;
    w.eligible = eligible;
    if (changed) this.refreshWorker(w);
  }

  /** Ends the walk: workers not met take nothing; ranks follow the fleet's order again if it changed. */
  endSync(): void {
    for (const w of this.workers.values()) {
      if (w.seenPass === this.pass) continue;
      // Gone from the fleet and from the ledger: forget it (worker ids come and go).
      if (w.gpus.length === 0 && this.ledger.gpusOf(w.id).length === 0) {
        this.workers.delete(w.id);
        continue;
      }
      if (!w.eligible) continue;
      w.eligible = false;
      this.refreshWorker(w);
    }
    if (this.outOfOrder) {
      // A worker came back in the middle of the fleet's order: renumber and re-sort (rare).
      for (const w of this.workers.values()) for (const g of w.gpus) this.unlist(g);
      let rank = 0;
      for (const w of this.order) w.rank = rank++;
      for (const w of this.workers.values()) if (w.seenPass !== this.pass) w.rank = rank++;
      this.outOfOrder = false;
      this.nextRank = rank;
      for (const w of this.workers.values()) this.dirty.add(w.id);
    }
    this.order = [];
    this.flush();
  }

  /** A worker's free slots changed within the pass (the engine placed an item there). */
  setSlots(id: string, slotsFree: number): void {
    const w = this.workers.get(id);
    if (!w || w.eligible === slotsFree > 0) return;
    w.eligible = slotsFree > 0;
    this.refreshWorker(w);
  }

  /** The affinity plan in force (gpuKey → planned models); a new one moves the GPUs whose set changed. */
  usePlan(plan: ReadonlyMap<string, ReadonlySet<string>> | undefined): void {
    if (plan === this.plan) return;
    this.plan = plan;
    for (const w of this.workers.values()) {
      for (const g of w.gpus) {
        const key = planKey(plan?.get(g.view.key));
        if (key === planKeyOf(g.group)) continue;
        this.unlist(g);
        g.group = this.group(plan?.get(g.view.key));
        this.list(g);
      }
    }
  }

  /**
   * The placement `placeItem` would choose among the GPUs of the groups `accept` takes (all
   * without it), or undefined when the item fits on none of them. With `gpuOk`, only the GPUs it
   * accepts count (as placeItem's gpuFilter): each list is walked from its best entry past the
   * ones it refuses, so a filter that refuses many GPUs of a list costs a walk, not a search.
   */
  place(item: ItemNeed, policy: PlacementPolicy, accept?: (plan: PlanSet) => boolean, gpuOk?: (gpu: GpuView) => boolean): Placement | undefined {
    this.flush();
    let best: GpuEntry | undefined;
    let bestCat = Infinity;
    let bestFit = Infinity;
    let bestWarm = false;
    for (const group of this.groups.values()) {
      const lists = group.byModel.get(item.model);
      if (!lists || (accept && !accept(group.plan))) continue;
      for (let kind = WARM; kind <= COLD; kind++) {
        const list = lists[kind]!;
        if (list.length === 0) continue;
        const warm = kind === WARM;
        const bytes = bytesToReserve(item, warm);
        let g: GpuEntry | undefined;
        if (!gpuOk) {
          if (policy === "best-fit") {
            g = list[lowerBound(list, bytes)];
          } else {
            const top = list[list.length - 1]!;
            if (top.keyAvail >= bytes) g = list[lowerBound(list, top.keyAvail)];
          }
        } else if (policy === "best-fit") {
          // Ascending from the least room that fits: the first GPU the filter accepts.
          for (let i = lowerBound(list, bytes); i < list.length && !g; i++) if (gpuOk(list[i]!.view)) g = list[i];
        } else {
          // Descending from the most room; among equal room the first in fleet order wins.
          for (let i = list.length - 1; i >= 0 && list[i]!.keyAvail >= bytes; i--) {
            const e = list[i]!;
            if (g && e.keyAvail < g.keyAvail) break;
            if (gpuOk(e.view)) g = e;
          }
        }
        if (!g) continue;
        // As fits() computes it: the bytes left over after the item.
        const left = g.view.freeBytes - g.view.reservedBytes - bytes;
        if (left < 0) continue;
        const cat = kind === COLD ? 1 : 0;
        const fit = policy === "best-fit" ? left : -left;
        if (cat < bestCat || (cat === bestCat && (fit < bestFit || (fit === bestFit && best !== undefined && isBefore(g, best))))) {
          best = g;
          bestCat = cat;
          bestFit = fit;
          bestWarm = warm;
        }
      }
    }
    if (!best) return undefined;
    return { workerId: best.worker.id, gpuKey: best.view.key, gpuIndex: best.view.index, bytes: bytesToReserve(item, bestWarm), loads: bestWarm ? undefined : item.model };
  }

  /** GPUs currently listed (for tests and metrics). */
  get size(): number {
    let n = 0;
    for (const g of this.groups.values()) n += g.size;
    return n;
  }

  /** Re-sorts the GPUs of every worker whose figures changed. */
  private flush(): void {
    if (this.dirty.size === 0) return;
    for (const id of this.dirty) {
      const w = this.workers.get(id);
      if (w) this.refreshWorker(w);
    }
    this.dirty.clear();
  }

  private refreshWorker(w: WorkerEntry): void {
    const views = this.ledger.gpusOf(w.id);
    const same = views.length === w.gpus.length && views.every((v, i) => w.gpus[i]!.view === v);
    if (!same) {
      for (const g of w.gpus) this.unlist(g);
      w.gpus = views.map((view, pos) => ({ view, worker: w, pos, keyAvail: 0, group: this.group(this.plan?.get(view.key)), lists: new Map() }));
      if (views.length === 0 && w.seenPass !== this.pass) {
        this.workers.delete(w.id);
        return;
      }
    }
    for (const g of w.gpus) this.refreshGpu(g);
  }

  /** Puts the GPU in the list each model it serves belongs in now, at its available VRAM now. */
  private refreshGpu(g: GpuEntry): void {
    const avail = g.view.freeBytes - g.view.reservedBytes;
    const w = g.worker;
    if (avail !== g.keyAvail) {
      this.unlist(g);
      g.keyAvail = avail;
    }
    for (const [m, list] of g.lists) {
      if (w.eligible && w.models.has(m) && list === this.target(g, m)) continue;
      remove(list, g);
      g.lists.delete(m);
      g.group.size--;
    }
    if (!w.eligible) return;
    for (const m of w.models) {
      if (g.lists.has(m)) continue;
      const list = this.target(g, m);
      insert(list, g);
      g.lists.set(m, list);
      g.group.size++;
    }
  }

  private list(g: GpuEntry): void {
    this.refreshGpu(g);
  }

  private unlist(g: GpuEntry): void {
    for (const list of g.lists.values()) {
      remove(list, g);
      g.group.size--;
    }
    g.lists.clear();
  }

  private target(g: GpuEntry, model: string): GpuEntry[] {
    let lists = g.group.byModel.get(model);
    if (!lists) g.group.byModel.set(model, (lists = [[], [], []]));
    // As placeItem: weights a worker keeps resident and counted (defragmentation's resident
    // weights) are paid there, like a live lease's.
    const warm = this.ledger.warm(g.view.key, model) || this.ledger.residentWeights(g.view.key).has(model);
    const kind = warm ? WARM : g.worker.resident.has(model) ? RESIDENT : COLD;
    return lists[kind]!;
  }

  private group(plan: PlanSet): Group {
    const key = planKey(plan);
    let g = this.groups.get(key);
    if (!g) this.groups.set(key, (g = { plan, byModel: new Map(), size: 0 }));
    return g;
  }
}

function planKeyOf(g: Group): string {
  return planKey(g.plan);
}

function isBefore(a: GpuEntry, b: GpuEntry): boolean {
  return a.worker.rank < b.worker.rank || (a.worker.rank === b.worker.rank && a.pos < b.pos);
}
