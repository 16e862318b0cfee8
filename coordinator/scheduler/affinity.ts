// Model affinity: which models each GPU should serve now. Greedy placement in submission order
// mixes models on every GPU (each pays the weights of every model it runs) and fills the large
// GPUs with small items that could have run anywhere, so the items only the large GPUs can hold
// are left for the end. The planner instead splits the fleet between the models by their
// backlog, as the fluid solution of the capacity LP does (the same LP bench/lib/ideal.ts uses as
// the lower bound on makespan):
//
//   maximize λ  s.t.  Σ_c rate(c,m)·u(m,c) ≥ λ·W_m  for each model,  Σ_m u(m,c) ≤ n_c  for each class,
//
// where a class is a set of identical GPUs (VRAM, speed, slots, models served), n_c how many, W_m
// the model's backlog (predicted milliseconds of its waiting and running items, each weighted by
// 1 + its batch's priority as the queue's turns are: see weightedWorkMs), rate(c,m) the
// items of m one GPU of c runs at once ((VRAM − weights) / activations, at most its slots) times
// its speed, and u(m,c) how many GPUs of class c serve m. The fractional u is rounded to whole
// GPUs per class, keeping each GPU on the model it serves now wherever the rounding allows (a
// switch costs the model's load time), and preferring GPUs that already hold the new model.
//
// The plan is a preference, not a wall: a GPU none of whose planned models has items waiting
// takes any item that fits (work conservation), see `spillable`. Pure: the time is passed in.

import { type CapacityPair, capacityRate } from "./lp.js";

export interface PlannerGpu {
  key: string;
  totalBytes: number;
  /** Relative speed (1 = nominal): items take predicted / speed. */
  speed: number;
  /** Items the GPU's worker may hold at once (shared by its GPUs). */
  slots: number;
  models: ReadonlySet<string>;
  /** Models whose weights are on the GPU now (resident, or kept by a running item). */
  loaded: ReadonlySet<string>;
}

export interface ModelBacklog {
  /** Predicted milliseconds (at speed 1) of the model's waiting and running items. */
  workMs: number;
  /**
   * The same work weighted by priority (each item × 1 + its batch's priority, as the queue's
   * turns weigh it): what the fleet is split by. Absent: workMs.
   */
  weightedWorkMs?: number;
  /** Items waiting. */
  waiting: number;
  weightsBytes: number;
  activationBytes: number;
  /** Time to load the model's weights onto a GPU (0 when unknown). */
  loadMs: number;
}

export interface AffinityOptions {
  /** Re-plan at most this often (the backlog changes slowly); also when the models waiting change. */
  replanMs: number;
  /**
   * A GPU changes models only when the backlog left lasts longer than this many times the new
   * model's load time: near the end of the work a switch costs more than it saves.
   */
  switchFactor: number;
}

/** Shares of a GPU below this are rounding noise: not worth a GPU's time-sharing. */
const SHARE_EPS = 0.05;

/**
 * A GPU lends a share of its time to a short model only when that share is at least this many
 * times the share of its room the short model's weights take (see shareShort): both models run
 * on it at once, so the second model's weights shrink the room of the first for as long as they
 * share, and the items of either fit it less well (misestimated-vram: sim-30g lent 0.4 of an
 * 80 GB GPU whose plan is sim-12g took 20 of its 72 GB of room for the whole run).
 */
export const LEND_WEIGHTS_FACTOR = 2;

/**
 * Whether lending `lend` of a GPU of `totalBytes` whose model has `lenderWeightsBytes` of weights
 * to a model with `weightsBytes` of weights gains more GPU time than the weights cost it.
 */
export function lendRepays(totalBytes: number, lenderWeightsBytes: number, weightsBytes: number, lend: number): boolean {
  const room = totalBytes - lenderWeightsBytes;
  if (room <= 0) return false;
  // At the boundary it lends (the LP's shares carry rounding noise of 1e-16).
  return lend >= LEND_WEIGHTS_FACTOR * (weightsBytes / room) - 1e-9;
}

export const AFFINITY_DEFAULTS: AffinityOptions = { replanMs: 1000, switchFactor: 2 };

/** Items of a model one GPU can run at once when it serves only that model (real-valued). */
export function ratePerGpu(g: { totalBytes: number; slots: number; speed: number }, m: { weightsBytes: number; activationBytes: number }): number {
  if (g.totalBytes < m.weightsBytes + m.activationBytes) return 0;
  const byVram = m.activationBytes > 0 ? (g.totalBytes - m.weightsBytes) / m.activationBytes : Infinity;
  return Math.min(byVram, g.slots) * g.speed;
}

/** `allows` for a GPU whose planned models are `mine` (undefined: the plan left it free). */
export function allowsPlanned(mine: ReadonlySet<string> | undefined, model: string, planned: ReadonlySet<string>): boolean {
  if (!planned.has(model)) return true;
  return mine?.has(model) ?? true;
}

/** `spillable` for a GPU whose planned models are `mine`. */
export function spillablePlanned(mine: ReadonlySet<string> | undefined, waiting: (model: string) => number): boolean {
  if (!mine) return true;
  for (const m of mine) if (waiting(m) > 0) return false;
  return true;
}

export class AffinityPlanner {
  /** gpuKey → the models it should serve now. */
  private allowedBy = new Map<string, Set<string>>();
  /** gpuKey → its primary model (what it served in the last plan), kept across plans. */
  private primary = new Map<string, string>();
  private plannedAtMs = -Infinity;
  private plannedModels = "";
  private plannedGpus = 0;
  /** Predicted time the backlog lasts at the last plan (1 / λ), in ms. */
  horizonMs = 0;
  plans = 0;
  /** GPUs moved to another model (each may cost a load). */
  switches = 0;

  constructor(private readonly opts: AffinityOptions = AFFINITY_DEFAULTS) {}

  /** True when a plan exists: without one (nothing known yet) every GPU may take every model. */
  get active(): boolean {
    return this.allowedBy.size > 0;
  }

  /**
   * When the backlog is predicted to end: the last plan's time plus its horizon (the LP's
   * makespan for the work then waiting and running); Infinity without a plan.
   */
  get fluidEndMs(): number {
    return this.active ? this.plannedAtMs + this.horizonMs : Infinity;
  }

  /** The plan: gpuKey → the models it should serve (a new map at every plan; the GPU index follows it). */
  get currentPlan(): ReadonlyMap<string, ReadonlySet<string>> {
    return this.allowedBy;
  }

  /** Whether the plan lets GPU `key` serve `model` (always, for models the plan did not cover). */
  allows(key: string, model: string, planned: ReadonlySet<string>): boolean {
    return allowsPlanned(this.allowedBy.get(key), model, planned);
  }

  /** The GPU's planned models have nothing waiting: it may take other work rather than idle. */
  spillable(key: string, waiting: (model: string) => number): boolean {
    return spillablePlanned(this.allowedBy.get(key), waiting);
  }

  /** The queue is empty: whatever is queued next is planned at once, not on a plan of the last backlog. */
  idle(): void {
    this.plannedModels = "";
  }

  /** Whether a re-plan is due: `replanMs` passed, or the set of models waiting or of GPUs changed. */
  due(nowMs: number, waitingModels: string, gpuCount: number): boolean {
    return nowMs - this.plannedAtMs >= this.opts.replanMs || waitingModels !== this.plannedModels || gpuCount !== this.plannedGpus;
  }

  /** Re-plans when due (see `due`); the fleet and the backlog are only built then. */
  maybePlan(nowMs: number, waitingModels: string, gpuCount: number, inputs: () => { gpus: PlannerGpu[]; backlog: ReadonlyMap<string, ModelBacklog> }): boolean {
    if (!this.due(nowMs, waitingModels, gpuCount)) return false;
    this.plannedAtMs = nowMs;
    this.plannedModels = waitingModels;
    this.plannedGpus = gpuCount;
    const { gpus, backlog } = inputs();
    this.plan(gpus, backlog);
    return true;
  }

  plan(gpus: PlannerGpu[], backlog: ReadonlyMap<string, ModelBacklog>): void {
    this.plans++;
    const names = [...backlog.keys()].filter((m) => backlog.get(m)!.workMs > 0).sort();
    const next = new Map<string, Set<string>>();
    if (names.length === 0 || gpus.length === 0) {
      this.allowedBy = next;
      return;
    }
    // Classes of GPUs alike but for speed keep the LP small with a thousand workers. A class's
    // capacity is the sum of its GPUs' speeds (rates are per unit of speed), and its share of a
    // model is rounded to GPUs by that share of its count: GPUs of one size but many speeds are
    // rounded together, not each alone (a class of one GPU can only be all or nothing).
    const classes = new Map<string, PlannerGpu[]>();
    for (const g of gpus) {
      const key = `${g.totalBytes}|${g.slots}|${[...g.models].sort().join(",")}`;
      let list = classes.get(key);
      if (!list) classes.set(key, (list = []));
      list.push(g);
    }
    const cls = [...classes.values()];
    const pairs: CapacityPair[] = [];
    names.forEach((name, mi) => {
      const b = backlog.get(name)!;
      cls.forEach((list, ci) => {
        const g = list[0]!;
        if (!g.models.has(name)) return;
        const rate = ratePerGpu({ ...g, speed: 1 }, b);
        if (rate > 0 && Number.isFinite(rate)) pairs.push({ model: mi, cls: ci, rate });
      });
    });
    const capacity = cls.map((list) => list.reduce((s, g) => s + g.speed, 0));
    // λ is the rate of the given work per model, share the GPUs per (model, class).
    const solve = (workMs: (name: string) => number) => capacityRate(names.map((n) => workMs(n) / 1000), pairs, capacity);
    const real = (name: string) => backlog.get(name)!.workMs;
    const weighted = (name: string) => backlog.get(name)!.weightedWorkMs ?? backlog.get(name)!.workMs;
    // Priority weights that are the same for every model scale every row alike: the split is the
    // unweighted one, and one LP does.
    const ratios = names.map((n) => weighted(n) / real(n));
    const byPriority = ratios.some((r) => Number.isFinite(r) && r > 0 && Math.abs(r - ratios[0]!) > 1e-9 * Math.max(1, r));
    let sol: ReturnType<typeof capacityRate>;
    let horizonSol: ReturnType<typeof capacityRate>;
    try {
      // The split follows the priority-weighted work (high-priority work gets GPUs ahead of
      // low-priority work of other models); the horizon (when the backlog ends, what a switch
      // must repay, the earliest-finish bound) is the real work's.
      horizonSol = solve(real);
      sol = byPriority ? solve(weighted) : horizonSol;
    } catch {
      this.allowedBy = next;
      return;
    }
    this.horizonMs = horizonSol.lambda > 0 ? 1000 / horizonSol.lambda : Infinity;
    cls.forEach((list, ci) => {
      const targets = new Map<string, number>();
      const perSpeed = list.length / list.reduce((s, g) => s + g.speed, 0);
      pairs.forEach((p, k) => {
        if (p.cls === ci && sol.share[k]! > 1e-9) targets.set(names[p.model]!, sol.share[k]! * perSpeed);
      });
      this.roundClass([...list].sort((a, b) => b.speed - a.speed), targets, backlog, next);
    });
    this.allowedBy = next;
  }

  /**
   * Whole GPUs per model from the fractional targets. A model keeps the GPUs it has while that
   * count is within one of its target (hysteresis: each switch costs a load and a drain of the
   * old model's items), otherwise it gets its target rounded; then the counts are balanced to
   * the class's size. A GPU keeps its current model where it can; a GPU that must switch
   * prefers a model it already holds; a switch the remaining backlog cannot repay (see
   * switchFactor) is skipped. Models left short of their fractional share may also use some GPUs
   * of models given more than theirs (see shareShort).
   */
  private roundClass(list: PlannerGpu[], targets: Map<string, number>, backlog: ReadonlyMap<string, ModelBacklog>, out: Map<string, Set<string>>): void {
    const current = new Map<string, number>();
    for (const g of list) {
      const m = this.primary.get(g.key);
      if (m !== undefined) current.set(m, (current.get(m) ?? 0) + 1);
    }
    const want = new Map<string, number>();
    for (const [m, t] of targets) {
      const cur = current.get(m) ?? 0;
      want.set(m, cur >= Math.floor(t) && cur <= Math.ceil(t) && cur > 0 ? cur : Math.max(1, Math.round(t)));
    }
    const total = () => [...want.values()].reduce((a, b) => a + b, 0);
    while (total() > list.length) {
      let worst: string | undefined;
      for (const [m, n] of want) if (n > 0 && (worst === undefined || n - targets.get(m)! > want.get(worst)! - targets.get(worst)!)) worst = m;
      want.set(worst!, want.get(worst!)! - 1);
    }
    this.outrankRounding(list.length, targets, want, backlog);
    const ceilSum = Math.min(list.length, [...targets.values()].reduce((a, t) => a + Math.ceil(t - 1e-6), 0));
    while (total() < ceilSum) {
      let best: string | undefined;
      for (const [m, n] of want) if (best === undefined || targets.get(m)! - n > targets.get(best)! - want.get(best)!) best = m;
      want.set(best!, want.get(best!)! + 1);
    }
    const planned = new Map(want);
    const free = new Set(list);
    const give = (g: PlannerGpu, m: string) => {
      free.delete(g);
      const was = this.primary.get(g.key);
      if (was !== undefined && was !== m) this.switches++;
      this.primary.set(g.key, m);
      out.set(g.key, new Set([m]));
      want.set(m, want.get(m)! - 1);
    };
    // 1. GPUs stay on their current model while the plan still wants it there.
    for (const g of list) {
      const cur = this.primary.get(g.key);
      if (cur !== undefined && (want.get(cur) ?? 0) > 0) give(g, cur);
    }
    // 2. Then GPUs that already hold a wanted model.
    for (const g of [...free]) {
      for (const m of g.loaded) {
        if ((want.get(m) ?? 0) > 0) {
          give(g, m);
          break;
        }
      }
    }
    // 3. The rest switch, unless the backlog left is too short to repay the load.
    for (const [m, n] of [...want.entries()].sort((a, b) => b[1] - a[1])) {
      for (let i = 0; i < n; i++) {
        const g = free.values().next().value as PlannerGpu | undefined;
        if (!g) break;
        const cur = this.primary.get(g.key);
        const load = backlog.get(m)?.loadMs ?? 0;
        if (cur !== undefined && backlog.has(cur) && this.horizonMs < this.opts.switchFactor * load) {
          free.delete(g);
          out.set(g.key, new Set([cur]));
          continue;
        }
        give(g, m);
      }
    }
    // GPUs the plan did not need (more GPUs than work): they take whatever waits.
    for (const g of free) out.delete(g.key);
    this.shareShort(list, targets, planned, out, backlog);
  }

  /**
   * A model whose weighted share rounded to no GPU of the class, but whose waiting work has a
   * higher priority than a model the rounding gave two or more, takes one of that model's GPUs.
   * Left at none, it would wait for the lower-priority backlog to shrink (its share grows only as
   * that backlog ends) unless a GPU can lend it time, which needs room for both models' weights:
   * on GPUs that hold one model at a time a priority-1 batch of 20 items submitted behind 400
   * priority-0 items of another model ran only at the end. One GPU for its short work is what
   * the fluid share means there (its 0.2 GPU of time, taken at once); the switch-cost rule
   * (roundClass step 3) still keeps a GPU where the backlog cannot repay the load. Equal
   * priorities change nothing: the unweighted split is the LP's as before.
   */
  private outrankRounding(size: number, targets: Map<string, number>, want: Map<string, number>, backlog: ReadonlyMap<string, ModelBacklog>): void {
    if (size < 2) return;
    const weight = (m: string) => {
      const b = backlog.get(m);
      return b && b.workMs > 0 && b.waiting > 0 ? (b.weightedWorkMs ?? b.workMs) / b.workMs : 0;
    };
    const starved = [...targets].filter(([m, t]) => t > SHARE_EPS && (want.get(m) ?? 0) === 0).sort((a, b) => weight(b[0]) - weight(a[0]) || b[1] - a[1]);
    for (const [m] of starved) {
      let donor: string | undefined;
      for (const [d, n] of want) {
        if (n < 2 || weight(d) >= weight(m) - 1e-9) continue;
        // The donor is the one most over its share (ties: the larger count).
        if (donor === undefined || n - targets.get(d)! > want.get(donor)! - targets.get(donor)!) donor = d;
      }
      if (donor === undefined) continue;
      want.set(donor, want.get(donor)! - 1);
      want.set(m, 1);
    }
  }

  /**
   * Rounding leaves some models short of their fractional share and others over theirs; the
   * fluid solution time-shares a GPU between two models there. A short model may use the GPUs of
   * over-planned models, but only as many as its shortfall (a model short by 0.3 GPU gets one
   * GPU shared, not every over-planned one), each GPU lending at most its model's excess, GPUs
   * already holding the short model's weights first. Opening every over-planned GPU to every
   * short model let the short ones fill GPUs the plan kept for models only those GPUs can hold
   * (sim-6g on the 80 GB GPUs sim-30g needs), and made small GPUs switch models for a few items.
   * A GPU lends only a share that repays the room the short model's weights take on it (see
   * lendRepays): otherwise the short model waits for its own GPUs, or for a later plan.
   */
  private shareShort(list: PlannerGpu[], targets: Map<string, number>, planned: Map<string, number>, out: Map<string, Set<string>>, backlog: ReadonlyMap<string, ModelBacklog>): void {
    const excess = new Map<string, number>();
    for (const [m, n] of planned) excess.set(m, n - (targets.get(m) ?? 0));
    const lenders = list.filter((g) => out.has(g.key) && (excess.get(this.primary.get(g.key)!) ?? 0) > SHARE_EPS);
    if (lenders.length === 0) return;
    for (const [s, t] of targets) {
      let short = t - (planned.get(s) ?? 0);
      if (short <= SHARE_EPS) continue;
      // Stable: GPUs holding the weights first, then the class's order (fastest first).
      const order = lenders.filter((g) => g.loaded.has(s)).concat(lenders.filter((g) => !g.loaded.has(s)));
      for (const g of order) {
        if (short <= SHARE_EPS) break;
        const m = this.primary.get(g.key)!;
        const lend = Math.min(short, excess.get(m)!, 1);
        if (lend <= SHARE_EPS) continue;
        // Both models' weights on one GPU: the share lent must repay the room the second takes.
        if (!lendRepays(g.totalBytes, backlog.get(m)?.weightsBytes ?? 0, backlog.get(s)?.weightsBytes ?? 0, lend)) continue;
        // A GPU that must load the short model lends only while the backlog repays the load, as
        // a switch (roundClass): in the tail a load outlasts the work it would take.
        if (!g.loaded.has(s) && this.horizonMs < this.opts.switchFactor * (backlog.get(s)?.loadMs ?? 0)) continue;
        out.get(g.key)!.add(s);
        excess.set(m, excess.get(m)! - lend);
        short -= lend;
      }
    }
  }
}
