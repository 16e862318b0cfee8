// Queue position and estimated completion of every running batch, from the learned durations
// and the queue's order. Pure: the batches (already summarised), the fleet's concurrency and the
// time come in; positions and times go out. The coordinator runs it about once a second, not
// per item: its cost follows the number of batches (sorting them), not of items.
//
// The model is fluid. The fleet runs `concurrency` items at once (the items running now, or
// recently when the queue just refilled); every running item advances its own remaining time
// at 1 ms per ms, so the fleet does `concurrency` ms of predicted work per ms. A batch whose
// items are all placed only waits for them: it ends when its longest running item does, and
// until then it keeps the slots it holds. The other batches share the remaining slots as the
// queue shares them: it hands out items by turns weighted by priority, so each batch's share
// of the work is its weight times its mean item duration (weighted processor sharing). Between
// two batches ending the shares are constant, so the batch that ends first is the one with the
// least work per share, and one sweep over the batches sorted by that gives every end time.
// A batch with items still waiting also pays for its last wave: its last items start spread
// over about one item's duration, so it ends after the fluid finish by about half an item
// (the mean maximum of its slots' end times).
//
// Batches still to come: while a batch runs, batches submitted after it join the sharing and
// take their shares of the fleet from it. Given the recent arrivals (arrivals.ts: how many
// batches arrive per ms, for how long they have been seen arriving, and examples of their work
// and shares), the sweep goes on in small steps: batches arriving during a step join at the level of work per
// share the sharing batches have reached, and each leaves when it has done its own work per
// share, so the mass of shares dividing the free slots grows with arrivals and shrinks as they
// end (the fluid of discriminatory processor sharing with arrivals). The fluid is an expectation,
// so the arrivals come at their expected rate: the rate seen times the chance the stream still
// goes on. A stream seen for h goes on for τ more with chance h / (h + τ) (all that is known of
// its length is that it lasted h), so the rate τ from now is perMs · h / (h + τ). Arrivals at
// the full rate for h and none after (the median length) made a low-priority batch's ETA, which
// lies far out, count a stream that had in fact just stopped at its full rate all the way: its
// ETA came out up to twice its remaining time (bench/sim tenants-priorities). A large batch thus ends
// later by what the arrivals take while it runs, a small one barely. The steps are bounded (each
// 1/STEPS of the stream's age at its start, so about STEPS · ln(1 + ARRIVAL_TAIL) while arrivals
// are followed, and about STEPS over the largest work per share), so a refresh stays cheap. Without
// arrivals the sweep is exactly the one above.
//
// The fleet is not always one pool: a model that fits few GPUs runs at most so many items at
// once, whatever the rest of the fleet is free to do, and the affinity planner keeps each GPU on
// the models it serves, splitting the fleet between the models by their backlog so that they
// drain together (splitConcurrency). A batch's items of one model thus share that model's part of
// the fleet with the other batches' items of it, not the whole fleet. estimateWithPools runs the
// same model on each such pool (the batches' items of that model, its part) and keeps, per
// batch, the latest of the ends.
//
// Queue position: 0 for a batch that has started (an item placed or done) or has nothing
// waiting; otherwise 1 + the batches not started yet ahead of it in the queue's order, so the
// next batch to start is 1.

export interface EtaBatch {
  id: string;
  /** Its turn weight in the queue (BatchQueue's priorityWeight, or what the turns give it in effect: turn-weights.ts). */
  weight: number;
  /** An item of it has been placed (running or done). */
  started: boolean;
  /** Items waiting for a GPU, and their predicted run time in total (ms). */
  waitingItems: number;
  waitingWorkMs: number;
  /** Predicted remaining run time of each of its items running now (ms, ≥ 0). */
  runningRemainingMs: readonly number[];
  /**
   * Some waiting item's duration is a pure guess (nothing learned for its model): this batch
   * gets no ETA, but its guessed work still counts against the others'.
   */
  unknown?: boolean;
}

/** Batches expected to be submitted from now on (arrivals.ts). */
export interface EtaArrivals {
  /** Batches per ms. */
  perMs: number;
  /** For how long they have been seen arriving (ms): they go on τ more with chance horizonMs / (horizonMs + τ). */
  horizonMs: number;
  /** Examples of what arrives: each batch's work in total (ms) and its share (as EtaBatch's: weight × mean item ms). */
  samples: readonly { workMs: number; share: number }[];
}

export interface EtaInput {
  nowMs: number;
  /** The running batches in the queue's turn order. */
  batches: readonly EtaBatch[];
  /** Items the fleet runs at once; 0 when no worker runs anything (then waiting work has no ETA). */
  concurrency: number;
  /** The batches expected to arrive meanwhile; none when absent. */
  arrivals?: EtaArrivals;
}

export interface BatchEta {
  queuePosition: number;
  /** Estimated completion time (ms since the epoch); undefined when unknown. */
  completionMs: number | undefined;
}

/** The smallest mean item duration a share is computed with (a batch of 0 ms items still moves). */
const MIN_ITEM_MS = 1;

function meanItemMs(b: EtaBatch): number {
  return Math.max(MIN_ITEM_MS, b.waitingItems > 0 ? b.waitingWorkMs / b.waitingItems : 0);
}

/** A batch's share of the fleet while it has items waiting: its turn weight times its mean item duration. */
export function shareOf(b: EtaBatch): number {
  return (b.weight > 0 ? b.weight : 1) * meanItemMs(b);
}

export function estimateBatches(input: EtaInput): Map<string, BatchEta> {
  const { nowMs, batches } = input;
  const out = new Map<string, BatchEta>();
  let notStartedAhead = 0;
  for (const b of batches) {
    const queued = !b.started && b.waitingItems > 0;
    out.set(b.id, { queuePosition: queued ? 1 + notStartedAhead : 0, completionMs: undefined });
    if (queued) notStartedAhead++;
  }

  const concurrency = Math.max(0, input.concurrency);
  // Batches with nothing waiting: they hold their running items' slots until each ends.
  const holding: { end: number; slots: number }[] = [];
  // Batches with items waiting: they share the free slots.
  const sharing: { b: EtaBatch; share: number; key: number; meanMs: number; longestRunning: number }[] = [];
  let heldSlots = 0;
  for (const b of batches) {
    const longestRunning = b.runningRemainingMs.reduce((m, x) => Math.max(m, x), 0);
    if (b.waitingItems <= 0) {
      out.get(b.id)!.completionMs = nowMs + longestRunning;
      if (b.runningRemainingMs.length > 0) {
        const sum = b.runningRemainingMs.reduce((s, x) => s + x, 0);
        const slots = b.runningRemainingMs.length;
        // The slots drain at the mean end time (fluid): that is when they go to the others.
        holding.push({ end: nowMs + sum / slots, slots });
        heldSlots += slots;
      }
      continue;
    }
    const work = b.waitingWorkMs + b.runningRemainingMs.reduce((s, x) => s + x, 0);
    const meanMs = meanItemMs(b);
    const share = shareOf(b);
    sharing.push({ b, share, key: work / share, meanMs, longestRunning });
  }
  if (sharing.length === 0 || concurrency <= 0) return out;

  const arriving = input.arrivals && input.arrivals.perMs > 0 && input.arrivals.horizonMs > 0 ? new ArrivalFlow(input.arrivals, nowMs) : undefined;
  holding.sort((a, b) => a.end - b.end);
  sharing.sort((a, b) => a.key - b.key);
  let t = nowMs;
  /** Work per unit of share done so far by every sharing batch (they all advance together). */
  let perShare = 0;
  let shareSum = sharing.reduce((s, x) => s + x.share, 0);
  let held = Math.min(heldSlots, concurrency);
  let h = 0;
  const levelStep = sharing.at(-1)!.key / STEPS;
  for (const s of sharing) {
    for (;;) {
      const free = Math.max(0, concurrency - held);
      const freedAt = h < holding.length ? holding[h]!.end : Infinity;
      if (arriving) {
        // With arrivals the shares change continuously: small steps (ArrivalFlow.step).
        if (perShare >= s.key * (1 - 1e-12)) break;
        const step = arriving.step(t, perShare, Math.min(s.key - perShare, levelStep), free, shareSum, freedAt);
        if (!step) return out; // no capacity: the rest stay unknown
        perShare = step.level;
        t = step.t;
        if (t >= freedAt) {
          held = Math.max(0, held - holding[h]!.slots);
          h++;
        }
        continue;
      }
      const rate = free / shareSum; // perShare per ms
      const endsAt = rate > 0 ? t + (s.key - perShare) / rate : Infinity;
      if (endsAt === Infinity && freedAt === Infinity) return out; // no capacity: the rest stay unknown
      if (endsAt <= freedAt) {
        perShare = s.key;
        t = endsAt;
        break;
      }
      perShare += rate * (freedAt - t);
      t = freedAt;
      held = Math.max(0, held - holding[h]!.slots);
      h++;
    }
    shareSum -= s.share;
    // The last wave: its slots end spread over about one item; their maximum is later than the mean.
    const slots = Math.max(1, Math.min(concurrency, s.b.waitingItems + s.b.runningRemainingMs.length));
    const lastWave = (s.meanMs / 2) * ((slots - 1) / (slots + 1));
    if (!s.b.unknown) out.get(s.b.id)!.completionMs = Math.max(t + lastWave, nowMs + s.longestRunning);
  }
  return out;
}

/**
 * A pool of GPUs of its own: the GPUs a model fits, running at most `concurrency` of its items
 * at once, with the running batches summarised by their items of that model only.
 */
export interface EtaPool {
  batches: readonly EtaBatch[];
  concurrency: number;
  arrivals?: EtaArrivals;
}

/**
 * The fleet-wide estimate, with each batch's end pushed to its end in any pool that ends it later:
 * a batch cannot end before its items of a model that fits few GPUs are done there, whatever
 * the rest of the fleet is free to do. A pool without an end for a batch changes nothing.
 */
export function estimateWithPools(input: EtaInput, pools: readonly EtaPool[]): Map<string, BatchEta> {
  const out = estimateBatches(input);
  for (const pool of pools) {
    const ends = estimateBatches({ nowMs: input.nowMs, batches: pool.batches, concurrency: pool.concurrency, arrivals: pool.arrivals });
    for (const b of pool.batches) {
      const end = ends.get(b.id)?.completionMs;
      const e = out.get(b.id);
      if (end !== undefined && e?.completionMs !== undefined && end > e.completionMs) e.completionMs = end;
    }
  }
  return out;
}

/** Steps of the fluid with arrivals: about this many over the horizon, and over the largest batch's work per share. */
const STEPS = 32;
/**
 * The expected arrivals are followed until this many times the stream's age from now (the chance
 * it still goes on has fallen to 1/(1 + ARRIVAL_TAIL) there): a bound on the sweep's steps.
 */
const ARRIVAL_TAIL = 4;
/** Halvings when a step is bounded in time and its advance is solved for. */
const BISECTIONS = 12;

/**
 * The expected arrivals as a fluid (see the header): cohorts of batches that arrived during a
 * step of the sweep, each joining at the level of work per share the sharing batches had
 * reached then, and leaving, example by example, when it has done its own work per share
 * k = S / s. What the examples do while the level goes from d to d + Δ past their joining level
 * is F(d + Δ) − F(d), F(y) = Σ s·min(k, y) = Σ_{k≤y} S + y · Σ_{k>y} s: prefix sums over the
 * examples sorted by k, O(log n).
 */
class ArrivalFlow {
  private readonly keys: number[];
  /** Σ S of the examples before index i, and Σ s from index i on (sorted by key). */
  private readonly workBefore: number[];
  private readonly shareFrom: number[];
  private readonly perMsPerExample: number;
  private readonly untilMs: number;
  private readonly nowMs: number;
  /** Cohorts by the level they joined at, each with its batches per example (batches / examples). */
  private cohorts: { level: number; perExample: number }[] = [];

  constructor(
    private readonly a: EtaArrivals,
    nowMs: number,
  ) {
    const sorted = a.samples.filter((x) => x.workMs > 0 && x.share > 0).map((x) => ({ k: x.workMs / x.share, S: x.workMs, s: x.share }));
    sorted.sort((x, y) => x.k - y.k);
    this.keys = sorted.map((x) => x.k);
    this.workBefore = [0];
    for (const x of sorted) this.workBefore.push(this.workBefore.at(-1)! + x.S);
    this.shareFrom = new Array<number>(sorted.length + 1).fill(0);
    for (let i = sorted.length - 1; i >= 0; i--) this.shareFrom[i] = this.shareFrom[i + 1]! + sorted[i]!.s;
    this.perMsPerExample = sorted.length > 0 ? a.perMs / sorted.length : 0;
    this.nowMs = nowMs;
    this.untilMs = sorted.length > 0 ? nowMs + ARRIVAL_TAIL * a.horizonMs : nowMs;
  }

  /** F(y): what the examples together do up to y of work per share past their joining level. */
  private done(y: number): number {
    if (y <= 0) return 0;
    let lo = 0;
    let hi = this.keys.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.keys[mid]! <= y) lo = mid + 1;
      else hi = mid;
    }
    return this.workBefore[lo]! + y * this.shareFrom[lo]!;
  }

  /** Work the fleet does while the level goes from `level` to `level + d` over `ms`: the sharing batches', the cohorts' and the newly arriving ones'. */
  private work(level: number, d: number, shareSum: number, t: number, ms: number): number {
    let w = shareSum * d;
    for (const c of this.cohorts) w += c.perExample * (this.done(level - c.level + d) - this.done(level - c.level));
    // Batches arriving during the step do on average half of it.
    const arriveMs = Math.min(t + ms, this.untilMs) - t;
    if (arriveMs > 0) w += this.rateAt(t) * arriveMs * this.done(d / 2);
    return w;
  }

  /**
   * One step from (`t`, `level`): the level advances by `most` unless a holding batch frees its
   * slots first (`freedAt`) or, while batches arrive, 1/STEPS of the horizon passes first (and at
   * the horizon); then the advance in that time is solved for. Undefined when nothing can move.
   */
  step(t: number, level: number, most: number, free: number, shareSum: number, freedAt: number): { t: number; level: number } | undefined {
    const maxKey = this.keys.at(-1) ?? 0;
    let gone = 0;
    while (gone < this.cohorts.length && level - this.cohorts[gone]!.level >= maxKey) gone++;
    if (gone > 0) this.cohorts.splice(0, gone);
    const arriving = t < this.untilMs;
    const until = Math.min(freedAt, arriving ? Math.min(this.untilMs, t + this.stepMs(t)) : Infinity);
    if (free > 0) {
      // The time the whole advance takes: work = free · ms, the arrivals' part growing with ms.
      const fixed = this.work(level, most, shareSum, t, 0);
      const perMs = arriving ? this.rateAt(t) * this.done(most / 2) : 0;
      const ms = free > perMs ? fixed / (free - perMs) : Infinity;
      if (t + ms <= until) return this.commit(t, ms, level, most);
    }
    if (until === Infinity) return undefined;
    const ms = until - t;
    let lo = 0;
    let hi = most;
    for (let i = 0; i < BISECTIONS; i++) {
      const mid = (lo + hi) / 2;
      if (this.work(level, mid, shareSum, t, ms) <= free * ms) lo = mid;
      else hi = mid;
    }
    return this.commit(t, ms, level, lo);
  }

  private commit(t: number, ms: number, level: number, d: number): { t: number; level: number } {
    const arriveMs = Math.min(t + ms, this.untilMs) - t;
    if (arriveMs > 0 && this.keys.length > 0) this.cohorts.push({ level: level + d / 2, perExample: this.rateAt(t) * arriveMs });
    return { t: t + ms, level: level + d };
  }

  /** A step of the sweep from `t`: 1/STEPS of the stream's age then (the rate changes by about that much within it). */
  private stepMs(t: number): number {
    return (this.a.horizonMs + (t - this.nowMs)) / STEPS;
  }

  /** Batches per ms per example expected during the step from `t`: the rate seen, times the chance the stream still goes on (see the header). */
  private rateAt(t: number): number {
    const h = this.a.horizonMs;
    const mid = t - this.nowMs + this.stepMs(t) / 2;
    return (this.perMsPerExample * h) / (h + mid);
  }
}

/** A model's part of the fleet's backlog, for splitConcurrency. */
export interface ModelDemand {
  /** Its predicted work left (ms): items waiting and the rest of those running. */
  workMs: number;
  /** The most of its items the fleet's GPUs could run at once (Infinity when unbounded). */
  most: number;
}

/**
 * How many of the fleet's `concurrency` slots each model is expected to hold while its work
 * lasts. The affinity planner splits the GPUs between the models by their backlog so that they
 * all drain together (affinity.ts: the capacity LP, every model's work done at one rate λ), so a
 * model's part is the concurrency × its share of the work, except that a model the VRAM lets run
 * only `most` items at once holds at most that, the slots it cannot use going to the others in
 * proportion (water-filling). Models without work get 0.
 */
export function splitConcurrency(concurrency: number, models: readonly ModelDemand[]): number[] {
  const out = models.map(() => 0);
  let left = Math.max(0, concurrency);
  const open = new Set(models.map((_, i) => i).filter((i) => models[i]!.workMs > 0));
  for (;;) {
    const work = [...open].reduce((s, i) => s + models[i]!.workMs, 0);
    if (open.size === 0 || !(work > 0)) return out;
    // Models whose proportional part exceeds what they can hold are capped; the rest share what is left.
    const capped = [...open].filter((i) => (left * models[i]!.workMs) / work > models[i]!.most);
    if (capped.length === 0) {
      for (const i of open) out[i] = (left * models[i]!.workMs) / work;
      return out;
    }
    for (const i of capped) {
      out[i] = models[i]!.most;
      left = Math.max(0, left - models[i]!.most);
      open.delete(i);
    }
  }
}
