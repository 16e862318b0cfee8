// The scheduling pass as a pure engine: the queue, the batches, the ready workers, the VRAM
// ledger, the learned estimates and the time come in; placement decisions come out. No I/O, no
// clock and no randomness of its own (the time and the attempt tokens are injected), so a unit
// test can drive it through any fleet and any queue and check every decision.
//
// The pass records each decision in the in-memory state it was given, through Attempts (the item
// is leased, its reservation is in the ledger, the worker counts it), so the next decision of
// the same pass sees it: the caller only sends the assignments it returns, and ends an attempt
// (requeue or take back) when the worker does not take it.

import type { ItemError } from "../../proto/gen/shoal/v1/shoal.js";
import { WorkerState } from "../../proto/gen/shoal/v1/shoal.js";
import type { Attempts } from "../attempts.js";
import type { VramNeed } from "../../shared/vram-need.js";
import type { ActiveBatch, Attempt, ItemSlot } from "../batch-state.js";
import type { BatchQueue } from "../batch-queue.js";
import type { WorkerRecord } from "../fleet.js";
import { placeItem, type PlaceableWorker, type Placement, type PlacementPolicy } from "../placement.js";
import type { VramEstimates } from "../vram-estimates.js";
import type { VramLedger } from "../vram-ledger.js";
import { allowsPlanned, spillablePlanned, type AffinityPlanner, type ModelBacklog, type PlannerGpu } from "./affinity.js";
import { GpuIndex, type PlanSet } from "./gpu-index.js";
import { strands } from "./packing.js";
import { planHedges, type HedgeInfo, type HedgePolicy } from "./hedging.js";
import { planEvictions, type BlockedModel, type DefragGpu, type Eviction } from "./defrag.js";
import { EarliestFinish } from "./earliest-finish.js";
import { gpuKey } from "../vram-ledger.js";

/** One placement decision: this attempt of this item goes to `lease.workerId`, GPU `lease.gpuIndex`. */
export interface Placed {
  batch: ActiveBatch;
  index: number;
  lease: Attempt;
  /** Set when this attempt is a hedge: a second copy of a straggler (hedging.ts). */
  hedge?: HedgeInfo;
}

/**
 * What the scheduler knows of durations: how long an item is predicted to run (at nominal speed,
 * or on a given worker), and how fast each worker is relative to nominal. Injected: the
 * coordinator learns it from outcomes (see durations), the simulator may know it exactly.
 */
export interface DurationPredictor {
  predictMs(slot: ItemSlot, workerId?: string): number;
  /** Relative speed of a worker (1 = nominal). */
  speedOf(workerId: string): number;
  /** Time to load a model's weights (0 when unknown). */
  loadMs?(model: string, weightsBytes: number): number;
  /** Whether the prediction rests on something (a declared time, learned samples), not a default guess. */
  knows?(slot: ItemSlot): boolean;
}

/** Policy knobs of the engine (see docs/scheduling.md). */
export interface EnginePolicy {
  /** Split GPUs between models by backlog (model affinity); undefined = greedy. */
  affinity?: AffinityPlanner;
  predictor?: DurationPredictor;
  /** The need of each model as last seen (weights, activations): the planner's input. */
  modelNeeds: Map<string, VramNeed>;
  /** The smallest activations seen per model: below a failed need nothing of the model can fit. */
  minActivation: Map<string, number>;
  /** Measures each placement decision (shoal_placement_seconds); gets seconds. */
  observeDecision?: (seconds: number) => void;
  /** A monotonic clock in ms for observeDecision (performance.now in production). */
  timer?: () => number;
  /** Straggler hedging at the end of batches (hedging.ts); undefined = off. Needs a predictor. */
  hedging?: HedgePolicy;
  /** Set by each pass: when a running attempt becomes due for a hedge (a pass should run then). */
  hedgeCheckAtMs?: number;
  /** When the last hedging scan ran. */
  hedgeScannedAtMs?: number;
  /** Defragmentation (defrag.ts, `--defrag`); absent = off. */
  defrag?: DefragState;
  /** The GPU index placement decisions read (made at the first pass, kept in step with the ledger). */
  gpuIndex?: GpuIndex;
  /** Decide by scanning the whole fleet instead of the index (the same decisions, slower: for comparison). */
  scan?: boolean;
  /**
   * Hold an item in the tail for a GPU that frees soon and finishes it first (earliest-finish.ts;
   * on unless false). Off only where a simulation isolates another mechanism (hedging's tests).
   */
  earliestFinish?: boolean;
  /** Each held item's deadline, kept between passes (earliest-finish.ts). */
  holdDeadlines?: WeakMap<ItemSlot, number>;
  /** Set by each pass: when the first slot an item is held for falls due (a pass should run then). */
  holdCheckAtMs?: number;
  /** Times an item was held for a GPU that finishes it first (one per item per pass). */
  holds?: number;
  /**
   * Pass over an item whose chosen GPU it would strand, placing the items behind it first
   * (packing.ts; on unless false). Off only to measure what it does.
   */
  packing?: boolean;
  /** Times an item was passed over for stranding its GPU (one per item per pass). */
  deferrals?: number;
}

/** What defragmentation keeps between passes: the caller sends `evictions` after each pass. */
export interface DefragState {
  /** GPU keys with an eviction on its way (the caller adds and removes them). */
  busy: Set<string>;
  /** The last pass's decisions: idle weights to evict so a blocked item fits. */
  evictions: Eviction[];
}

export function newEnginePolicy(
  opts: { affinity?: AffinityPlanner; predictor?: DurationPredictor; observeDecision?: (s: number) => void; timer?: () => number; hedging?: HedgePolicy; scan?: boolean; earliestFinish?: boolean; packing?: boolean } = {},
): EnginePolicy {
  return { ...opts, modelNeeds: new Map(), minActivation: new Map() };
}

/** What a pass reads (and records its decisions in). */
export interface EngineState {
  queue: BatchQueue;
  /** The batches still running, by id; an id that is not here any more is dropped from the queue. */
  batches: ReadonlyMap<string, ActiveBatch>;
  /** Every worker this coordinator knows; only READY ones that are reachable take items. */
  workers: Iterable<WorkerRecord>;
  /** Read for free VRAM; written only through `attempts`, which owns the reservations. */
  ledger: VramLedger;
  /** Where each decision is recorded: the attempt, its reservation and its worker together. */
  attempts: Attempts;
  estimates: VramEstimates;
  /** Affinity, durations, timing; absent = greedy in queue order, as before. */
  engine?: EnginePolicy;
}

export interface PassInput {
  nowMs: number;
  /** Until then nothing is placed: after a restart, workers first report what they hold. */
  recoveringUntilMs: number;
  policy: PlacementPolicy;
  /** A fresh attempt token for the given attempt number (random in production, fixed in tests). */
  /** A lease token for one attempt of one item on one worker (see lease-tokens.ts). */
  newToken: (attempt: number, batchId: string, index: number, workerId: string) => string;
}

/**
 * One scheduling pass: places every waiting item that fits somewhere now, batches taking turns
 * (see BatchQueue.drain). Returns the decisions grouped by worker, in placement order, so each
 * worker gets one assignment message per pass.
 *
 * With affinity, an item goes first to a GPU the plan gives its model, else to a GPU whose
 * planned models have nothing waiting (so no GPU idles while something it can run waits).
 */
export function schedulePass(state: EngineState, input: PassInput): Map<string, Placed[]> {
  const outgoing = placeQueued(state, input);
  const eng = state.engine;
  if (eng?.hedging && eng.predictor && hedgeScanDue(eng, input.nowMs)) {
    // After the queue had its turn: hedges only take GPUs that nothing queued can use.
    eng.hedgeScannedAtMs = input.nowMs;
    const plan = planHedges(state, input, eng.hedging, eng.predictor);
    eng.hedgeCheckAtMs = plan.nextCheckAtMs;
    for (const h of plan.hedges) {
      let list = outgoing.get(h.lease.workerId);
      if (!list) outgoing.set(h.lease.workerId, (list = []));
      list.push(h);
    }
  }
  return outgoing;
}

/**
 * The hedging scan walks the running items of batches with nothing queued: at most once per
 * HEDGE_SCAN_INTERVAL_MS (passes run after every outcome), and whenever an attempt falls due.
 */
export const HEDGE_SCAN_INTERVAL_MS = 100;

function hedgeScanDue(eng: EnginePolicy, nowMs: number): boolean {
  if (eng.hedgeScannedAtMs === undefined || nowMs - eng.hedgeScannedAtMs >= HEDGE_SCAN_INTERVAL_MS) return true;
  if (eng.hedgeCheckAtMs !== undefined && nowMs >= eng.hedgeCheckAtMs) return true;
  // Skipped: the next pass at or after this time scans (a caller that waits for due times sees it).
  eng.hedgeCheckAtMs = Math.min(eng.hedgeCheckAtMs ?? Infinity, eng.hedgeScannedAtMs + HEDGE_SCAN_INTERVAL_MS);
  return false;
}

/** The highest speed among the pass's workers that serve a model, worked out once per model per pass. */
function fastestSpeedOf(workers: ReadonlyMap<string, PlaceableWorker>, predictor: DurationPredictor): (model: string) => number {
  const byModel = new Map<string, number>();
  return (model) => {
    let fastest = byModel.get(model);
    if (fastest === undefined) {
      fastest = -Infinity;
      for (const w of workers.values()) if (w.models.has(model)) fastest = Math.max(fastest, predictor.speedOf(w.id));
      byModel.set(model, fastest);
    }
    return fastest;
  };
}

/** The queue's part of a pass: every waiting item that fits somewhere now. */
function placeQueued(state: EngineState, input: PassInput): Map<string, Placed[]> {
  const outgoing = new Map<string, Placed[]>();
  if (state.engine?.defrag) state.engine.defrag.evictions = [];
  if (state.engine) state.engine.holdCheckAtMs = undefined;
  if (input.nowMs < input.recoveringUntilMs) return outgoing;
  if (state.queue.size === 0) {
    // Nothing waits: the next items that come make a new backlog, planned afresh (its horizon too).
    state.engine?.affinity?.idle();
    return outgoing;
  }
  const workers = new Map<string, PlaceableWorker>();
  const eng = state.engine;
  // With an engine policy decisions read the GPU index; the walk below keeps its workers in step.
  const gpus = eng && !eng.scan ? gpuIndexOf(eng, state.ledger) : undefined;
  const walked: WorkerRecord[] = [];
  let slots = 0;
  for (const w of state.workers) {
    walked.push(w);
    if (w.state !== WorkerState.WORKER_STATE_READY || w.unreachable) continue;
    const free = w.maxInFlight - state.attempts.openOn(w.id);
    workers.set(w.id, { id: w.id, slotsFree: free, resident: w.resident, models: w.models });
    slots += Math.max(0, free);
  }
  if (workers.size === 0 || slots === 0) return outgoing;
  // Only a pass that can place brings the index's workers up to date (a full fleet with a long
  // queue runs a pass per heartbeat that places nothing): every deciding pass syncs first.
  if (gpus) {
    gpus.beginSync();
    for (const w of walked) gpus.syncWorker(w.id, workers.get(w.id)?.slotsFree ?? 0, w.models, w.resident);
    gpus.endSync();
  }
  const planner = eng?.affinity;
  const planned = new Set<string>();
  if (planner && eng) {
    const waiting = [...state.queue.backlogByGroup().keys()].sort().join(",");
    planner.maybePlan(input.nowMs, waiting, workers.size, () => plannerInputs(state, eng, workers, input.nowMs));
    for (const m of eng.modelNeeds.keys()) planned.add(m);
    gpus?.usePlan(planner.currentPlan);
  }
  const waitingOf = (m: string) => state.queue.waiting(m);
  // In the tail, an item may wait for a GPU that frees soon and finishes it first: needs the
  // plan's horizon (when the work ends) and predicted durations.
  const finishes =
    planner?.active && eng?.predictor && eng.earliestFinish !== false
      ? new EarliestFinish({
          nowMs: input.nowMs,
          predictor: eng.predictor,
          fluidEndMs: planner.fluidEndMs,
          running: () => state.attempts.running(),
          gpuKeyOf: (a) => gpuKey(a.workerId, a.gpuIndex ?? 0),
          accepts: (workerId, key, model) => workers.get(workerId)?.models.has(model) === true && (planner.allows(key, model, planned) || planner.spillable(key, waitingOf)),
          available: (key) => state.ledger.available(key),
          fastestSpeed: fastestSpeedOf(workers, eng.predictor),
          deadlines: (eng.holdDeadlines ??= new WeakMap()),
        })
      : undefined;
  const timer = eng?.observeDecision ? eng.timer : undefined;
  // Within a pass free VRAM only shrinks: once an item of a model fits nowhere, larger ones of
  // that model cannot fit either, so they are refused without another scan of the fleet.
  const failedNeed = new Map<string, number>();
  const waitingModels = state.queue.backlogByGroup().size;
  // Every waiting model has failed at (or below) its smallest item: nothing more fits this pass.
  const allBlocked = () => {
    for (const m of state.queue.backlogByGroup().keys()) {
      const f = failedNeed.get(m);
      if (f === undefined || f > (eng!.minActivation.get(m) ?? 0)) return false;
    }
    return true;
  };
  // Packing (packing.ts): the first walk passes over items that would strand their GPU's VRAM;
  // a second walk places them wherever they fit once the items behind them have had the room.
  const packing = eng !== undefined && eng.packing !== false;
  let deferring = packing;
  let deferred = 0;
  const noPackingGpu = new Set<string>();
  const deferredNeed = new Set<string>();
  const strandsOn = (key: string, weightsBytes: number, activationBytes: number): boolean => {
    const total = state.ledger.totalBytes(key);
    return total !== undefined && strands(total, weightsBytes, activationBytes);
  };
  const tryPlace = ({ batchId, index }: { batchId: string; index: number }): "drop" | "block" | "stop" | boolean => {
    const batch = state.batches.get(batchId);
    const slot = batch?.items[index];
    if (!batch || !slot || slot.state !== "pending") return "drop"; // done or adopted meanwhile
    const t0 = timer?.();
    const activation = state.estimates.activation(slot.shapeKey!, slot.need.activationBytes);
    if (eng) noteNeed(eng, slot.model, slot.need.weightsBytes, activation);
    // A need passed over in this pass is passed over again without a decision (at 100,000
    // items a try each would walk every batch's lookahead per pass); the items behind it are
    // still tried: a smaller one may take the room.
    if (deferring && deferredNeed.has(`${slot.model}|${activation}`)) return false;
    const failed = failedNeed.get(slot.model);
    if (failed !== undefined && activation >= failed) {
      // No item of the model smaller than the one that failed was ever seen: none behind can fit.
      if (eng && failed <= (eng.minActivation.get(slot.model) ?? 0)) return failedNeed.size >= waitingModels && allBlocked() ? "stop" : "block";
      return false;
    }
    const need = { model: slot.model, activationBytes: activation, weightsBytes: slot.need.weightsBytes };
    // The index and the scan decide the same (test/unit/gpu-index.test.ts); the scan reads each GPU, the index a few lists.
    const place = (accept?: (plan: PlanSet) => boolean, filter?: (gpuKey: string) => boolean): Placement | undefined =>
      gpus ? gpus.place(need, input.policy, accept) : placeItem(need, workers.values(), state.ledger, input.policy, filter);
    let placement: Placement | undefined;
    if (planner?.active) {
      placement =
        place((plan) => allowsPlanned(plan, slot.model, planned), (key) => planner.allows(key, slot.model, planned)) ??
        place((plan) => spillablePlanned(plan, waitingOf), (key) => planner.spillable(key, waitingOf));
    } else {
      placement = place();
    }
    if (packing && placement && activation > 0 && strandsOn(placement.gpuKey, slot.need.weightsBytes, activation)) {
      // A GPU the plan accepts where the item packs, as warm as the one chosen (no extra load),
      // rather than the tightest; found by the GPU index with a per-GPU filter (a fleet scan with
      // --scan), only for items that would strand.
      // Within a pass free VRAM only shrinks: a need that found no such GPU finds none later.
      const needKey = `${slot.model}|${activation}|${placement.loads === undefined ? "warm" : "any"}`;
      let alt: Placement | undefined;
      if (!noPackingGpu.has(needKey)) {
        const packs = (key: string) => !strandsOn(key, slot.need.weightsBytes, activation);
        alt = gpus
          ? gpus.place(need, input.policy, planner?.active ? (plan) => allowsPlanned(plan, slot.model, planned) || spillablePlanned(plan, waitingOf) : undefined, (g) => packs(g.key))
          : placeItem(need, workers.values(), state.ledger, input.policy, (key) => packs(key) && (!planner?.active || planner.allows(key, slot.model, planned) || planner.spillable(key, waitingOf)));
        if (alt && alt.loads !== undefined && placement.loads === undefined) alt = undefined;
        if (!alt) noPackingGpu.add(needKey);
      }
      if (alt) placement = alt;
      else if (deferring) {
        if (t0 !== undefined) eng!.observeDecision!((timer!() - t0) / 1000);
        deferred++;
        deferredNeed.add(`${slot.model}|${activation}`);
        return false;
      }
    }
    // Placement found a GPU with room now; in the tail one that frees soon may finish the item first.
    const predictedMs = placement ? eng?.predictor?.predictMs(slot, placement.workerId) : undefined;
    const held = placement !== undefined && finishes !== undefined && finishes.hold(slot, activation, { workerId: placement.workerId, loads: placement.loads !== undefined && !workers.get(placement.workerId)!.resident.has(slot.model), runMs: predictedMs! });
    if (t0 !== undefined) eng!.observeDecision!((timer!() - t0) / 1000);
    // Held: stays queued (not a failure to fit: nothing is learned about the model's room).
    if (held) return false;
    if (!placement) {
      failedNeed.set(slot.model, Math.min(activation, failedNeed.get(slot.model) ?? Infinity));
      return false;
    }
    const attempt = slot.attempts + 1;
    const lease: Attempt = {
      token: input.newToken(attempt, batch.id, index, placement.workerId),
      workerId: placement.workerId,
      gpuIndex: placement.gpuIndex,
      assignedAtMs: input.nowMs,
      activationBytes: activation,
      predictedMs,
    };
    state.attempts.open(batch, index, lease, attempt, {
      gpuKey: placement.gpuKey,
      bytes: placement.bytes,
      model: slot.model,
      activationBytes: activation,
      weightsBytes: slot.need.weightsBytes,
    });
    finishes?.placed(slot, { model: slot.model, workerId: lease.workerId, gpuIndex: lease.gpuIndex, startMs: input.nowMs, predictedMs: lease.predictedMs ?? 0, activationBytes: activation });
    const pw = workers.get(placement.workerId)!;
    pw.slotsFree--;
    gpus?.setSlots(pw.id, pw.slotsFree);
    let list = outgoing.get(placement.workerId);
    if (!list) outgoing.set(placement.workerId, (list = []));
    list.push({ batch, index, lease });
    return true;
  };
  let placedNow = state.queue.drain(tryPlace, slots);
  if (deferred > 0) {
    if (eng) eng.deferrals = (eng.deferrals ?? 0) + deferred;
    deferring = false;
    placedNow += state.queue.drain(tryPlace, slots - placedNow);
  }
  if (finishes && eng) {
    eng.holdCheckAtMs = finishes.nextCheckAtMs;
    eng.holds = (eng.holds ?? 0) + finishes.held;
  }
  if (eng?.defrag && failedNeed.size > 0) eng.defrag.evictions = planDefrag(state, eng, eng.defrag, workers, failedNeed, input.nowMs);
  return outgoing;
}

/** The blocked models and the fleet as defrag.ts reads them; nothing when no GPU holds idle weights. */
function planDefrag(state: EngineState, eng: EnginePolicy, defrag: DefragState, workers: Map<string, PlaceableWorker>, failedNeed: Map<string, number>, nowMs: number): Eviction[] {
  // Worth it only when some GPU holds idle weights (a cheap scan, no allocation).
  let anyIdle = false;
  for (const w of workers.values()) {
    for (const g of state.ledger.gpusOf(w.id)) {
      for (const m of state.ledger.residentWeights(g.key).keys()) if (!state.ledger.warm(g.key, m)) anyIdle = true;
    }
  }
  if (!anyIdle) return [];
  const gpus: DefragGpu[] = [];
  // Every ready GPU, for the wait estimate.
  for (const w of workers.values()) {
    for (const g of state.ledger.gpusOf(w.id)) {
      const resident = state.ledger.residentWeights(g.key);
      const counted = new Set<string>(resident.keys());
      for (const m of state.ledger.warmModels(g.key)) counted.add(m);
      const idle = new Map<string, number>();
      // A worker whose last report still counts items that have ended is not asked to evict:
      // its figure understates the room, which its next report shows.
      if (state.ledger.settled(w.id)) for (const [m, bytes] of resident) if (!state.ledger.warm(g.key, m)) idle.set(m, bytes);
      gpus.push({ key: g.key, workerId: w.id, gpuIndex: g.index, availableBytes: state.ledger.available(g.key), slotsFree: w.slotsFree, serves: w.models, counted, idle, running: [] });
    }
  }
  const blocked: BlockedModel[] = [];
  for (const [model, activationBytes] of failedNeed) {
    const need = eng.modelNeeds.get(model);
    if (need && state.queue.waiting(model) > 0) blocked.push({ model, weightsBytes: need.weightsBytes, activationBytes });
  }
  if (blocked.length === 0) return [];
  // When each running attempt on those GPUs is predicted to end, and the activations it gives
  // back then (unknown without a predictor: it is not counted on to free room).
  const byKey = new Map(gpus.map((g) => [g.key, g.running as { endsInMs: number; bytes: number }[]]));
  for (const a of state.attempts.running()) {
    const list = byKey.get(gpuKey(a.workerId, a.gpuIndex ?? 0));
    if (!list) continue;
    const endsInMs = eng.predictor && a.predictedMs > 0 ? Math.max(0, a.predictedMs - (nowMs - a.startMs)) : Infinity;
    list.push({ endsInMs, bytes: a.activationBytes ?? 0 });
  }
  return planEvictions(
    gpus,
    blocked,
    { loadMs: (m, bytes) => eng.predictor?.loadMs?.(m, bytes) ?? 0, waiting: (m) => state.queue.waiting(m) },
    defrag.busy,
  );
}

/** The engine's GPU index over this ledger (a new one if the ledger is not the one it follows). */
function gpuIndexOf(eng: EnginePolicy, ledger: VramLedger): GpuIndex {
  if (eng.gpuIndex?.ledger !== ledger) eng.gpuIndex = new GpuIndex(ledger);
  return eng.gpuIndex;
}

/** Records a model's need as the planner reads it; called for each item tried, and when items are queued. */
export function noteNeed(eng: EnginePolicy, model: string, weightsBytes: number, activationBytes: number): void {
  const min = eng.minActivation.get(model);
  if (min === undefined || activationBytes < min) eng.minActivation.set(model, activationBytes);
  // The latest estimate (learned estimates move both ways): what the model's items reserve now.
  const cur = eng.modelNeeds.get(model);
  if (!cur || cur.activationBytes !== activationBytes || cur.weightsBytes !== weightsBytes) eng.modelNeeds.set(model, { weightsBytes, activationBytes });
}

/** The fleet and the backlog as the affinity planner reads them (built only when it re-plans). */
function plannerInputs(state: EngineState, eng: EnginePolicy, workers: Map<string, PlaceableWorker>, nowMs: number): { gpus: PlannerGpu[]; backlog: Map<string, ModelBacklog> } {
  const gpus: PlannerGpu[] = [];
  const maxInFlight = new Map<string, number>();
  for (const w of state.workers) maxInFlight.set(w.id, w.maxInFlight);
  for (const w of workers.values()) {
    const speed = eng.predictor?.speedOf(w.id) ?? 1;
    for (const g of state.ledger.gpusOf(w.id)) {
      const loaded = new Set<string>(w.resident);
      for (const m of state.ledger.warmModels(g.key)) loaded.add(m);
      gpus.push({ key: g.key, totalBytes: g.totalBytes, speed, slots: maxInFlight.get(w.id) ?? 1, models: w.models, loaded });
    }
  }
  const backlog = new Map<string, ModelBacklog>();
  const entry = (m: string): ModelBacklog | undefined => {
    let b = backlog.get(m);
    if (!b) {
      const need = eng.modelNeeds.get(m);
      if (!need) return undefined;
      const loadMs = eng.predictor?.loadMs?.(m, need.weightsBytes) ?? 0;
      backlog.set(m, (b = { workMs: 0, waiting: 0, weightsBytes: need.weightsBytes, activationBytes: need.activationBytes, loadMs }));
    }
    return b;
  };
  // Each model's mean priority weight over its waiting work (1 + priority, as the queue's turns).
  const meanWeight = new Map<string, number>();
  for (const [m, q] of state.queue.backlogByGroup()) {
    const b = entry(m);
    if (!b) continue;
    b.waiting += q.count;
    // Without a predictor every item counts as one unit of work.
    b.workMs += eng.predictor ? q.rank : q.count * 1000;
    const mean = eng.predictor && q.rank > 0 ? q.weightedRank / q.rank : q.count > 0 ? q.weightedCount / q.count : 1;
    if (Number.isFinite(mean) && mean > 0) meanWeight.set(m, mean);
  }
  for (const a of state.attempts.running()) {
    const b = entry(a.model);
    if (!b) continue;
    const speed = eng.predictor?.speedOf(a.workerId) ?? 1;
    const predicted = eng.predictor ? a.predictedMs : 1000;
    // What is left of it, in nominal-speed ms.
    b.workMs += Math.max(0, predicted - (nowMs - a.startMs)) * speed;
  }
  // The split follows priority: a model's work counts its mean weight times (its running items
  // too, at the mean of its waiting ones, so one priority class everywhere scales every model
  // alike and changes nothing). The durations stay real in workMs (horizon, switch costs).
  for (const [m, b] of backlog) b.weightedWorkMs = b.workMs * (meanWeight.get(m) ?? 1);
  return { gpus, backlog };
}

/** An item no registered worker could ever fit, past the grace period: it fails with `error`. */
export interface Unplaceable {
  batch: ActiveBatch;
  index: number;
  error: ItemError;
}

/**
 * Items that no registered worker could ever fit (no worker serves the model, or none has
 * enough VRAM in total) fail after the grace period instead of waiting forever; the grace
 * gives a worker that is being added time to register. Marks when each item was first seen
 * unplaceable (and clears it when one could fit it again); returns those whose grace is over.
 */
export function findUnplaceable(state: Omit<EngineState, "queue" | "attempts">, nowMs: number, graceMs: number): Unplaceable[] {
  const capacity = new Map<string, number>();
  for (const w of state.workers) {
    if (w.state === WorkerState.WORKER_STATE_LOST) continue;
    const biggest = Math.max(0, ...state.ledger.gpusOf(w.id).map((g) => g.totalBytes));
    for (const m of w.models) capacity.set(m, Math.max(capacity.get(m) ?? 0, biggest));
  }
  const out: Unplaceable[] = [];
  for (const batch of state.batches.values()) {
    for (const [index, slot] of batch.items.entries()) {
      if (slot.state !== "pending") continue;
      const need = slot.need.weightsBytes + state.estimates.activation(slot.shapeKey!, slot.need.activationBytes);
      const cap = capacity.get(slot.model);
      if (cap !== undefined && cap >= need) {
        slot.unplaceableSinceMs = undefined;
        continue;
      }
      slot.unplaceableSinceMs ??= nowMs;
      if (nowMs - slot.unplaceableSinceMs < graceMs) continue;
      const error =
        cap === undefined
          ? { code: "MODEL_NOT_FOUND", message: `no registered worker serves model ${slot.model}`, retryable: true }
          : { code: "OUT_OF_MEMORY", message: `needs ${need} bytes of VRAM; the largest GPU serving ${slot.model} has ${cap}`, retryable: true };
      out.push({ batch, index, error });
    }
  }
  return out;
}
