// SIMULATION. A discrete-event simulator that drives the REAL scheduling engine — schedulePass
// (coordinator/scheduler/engine.ts) with the real BatchQueue, Attempts, VramLedger,
// VramEstimates and ActiveBatch rules, the same modules the coordinator runs — on a virtual
// clock, against a simulated fleet. Only the workers and the clock are simulated:
//   - each GPU is one worker with declared VRAM, a speed factor (items take work / speed) and a
//     slot limit; it accounts VRAM as a --simulate worker does (weights once per model with items
//     held, plus each item's activations), checks each assignment with the shared fit rule,
//     and reports its free VRAM in its answer, which the ledger observes;
//   - a model not loaded on the GPU is loaded first (weights / load bandwidth), evicting models
//     with no item running (least recently used) when the VRAM is needed;
//   - an item whose real activations exceed what was reserved fails with OUT_OF_MEMORY (a
//     misestimated manifest), and the engine's estimates learn from it, as in the coordinator.
// Outcomes go through ActiveBatch.applyOutcome; retries are queued again, as the coordinator does.
// With hedging (SimOptions.hedging) the engine's straggler hedges run as second copies; the first
// outcome of a pair ends the item and the other copy is cancelled on its GPU (freed at once, as a
// worker that gets the cancel does), as the coordinator does.
// Every pass is a real schedulePass; with `measureDecisions` each placement decision is timed.

import { performance } from "node:perf_hooks";
import { ItemStatus } from "../../proto/gen/shoal/v1/shoal.js";
import type { BatchRecord } from "../../proto/gen/shoal/v1/wire.js";
import { Attempts } from "../../coordinator/attempts.js";
import { BatchQueue } from "../../coordinator/batch-queue.js";
import { ActiveBatch, newItemSlot, type ItemSlot } from "../../coordinator/batch-state.js";
import type { WorkerRecord } from "../../coordinator/fleet.js";
import { AffinityPlanner } from "../../coordinator/scheduler/affinity.js";
import { newEnginePolicy, noteNeed, schedulePass, type DurationPredictor, type EngineState, type Placed } from "../../coordinator/scheduler/engine.js";
import { DurationModel, gpuTypeOf } from "../../coordinator/scheduler/durations.js";
import { type CapacityPair, capacityRate } from "../../coordinator/scheduler/lp.js";
import { LearnedPredictor } from "../../coordinator/scheduler/predictor.js";
import { VramEstimates, learnFromOutcome, shapeKey } from "../../coordinator/vram-estimates.js";
import { VramLedger, gpuKey } from "../../coordinator/vram-ledger.js";
import { WorkerState } from "../../proto/gen/shoal/v1/shoal.js";
import { fits } from "../../shared/vram-need.js";
import { EventHeap } from "./heap.js";
import { BatchProgress } from "../../coordinator/batch-progress.js";
import { LearnedDurations } from "../../coordinator/learned-durations.js";
import { pino } from "pino";
import { etaErrorAt, type EtaSample } from "../lib/eta-accuracy.js";

export interface SimGpuSpec {
  id: string;
  vramBytes: number;
  /** Items take work / speed (1 = nominal). */
  speed: number;
  /** Items the worker may hold at once. */
  slots: number;
  /** Models served (default: all). */
  models?: string[];
}

export interface SimModel {
  name: string;
  weightsBytes: number;
  /** What the manifest says (and the coordinator reserves until it learns better). */
  activationBytes: number;
}

export interface SimItem {
  model: string;
  /** Work at speed 1. */
  workMs: number;
  /** Real activations, when they differ from the manifest's (a misestimate: OOM until learned). */
  useBytes?: number;
  /** A shape, for the learned estimates' key (e.g. the image width). */
  width?: number;
}

export interface SimBatch {
  id: string;
  arrivalMs: number;
  priority: number;
  items: SimItem[];
}

export interface SimWorkload {
  name: string;
  gpus: SimGpuSpec[];
  models: SimModel[];
  batches: SimBatch[];
  /** Bytes per second a GPU loads weights at; Infinity = loading is free. */
  loadBytesPerS: number;
  /** Time an OUT_OF_MEMORY attempt costs before it fails. */
  oomMs: number;
}

/**
 * none: the engine knows no durations (every item counts the same); learned: the duration model
 * learned from outcomes (per model, shape, GPU type); declared: that, plus the run time the
 * SIMULATED items declare (work_ms), as the coordinator uses it (see predictor.ts).
 */
export type DurationKnowledge = "none" | "learned" | "declared";

export interface SimPolicy {
  name: string;
  affinity: boolean;
  longestFirst: boolean;
  durations: DurationKnowledge;
}

export const POLICIES: SimPolicy[] = [
  { name: "greedy", affinity: false, longestFirst: false, durations: "none" },
  { name: "affinity", affinity: true, longestFirst: false, durations: "none" },
  { name: "affinity+learned", affinity: true, longestFirst: true, durations: "learned" },
  { name: "affinity+declared", affinity: true, longestFirst: true, durations: "declared" },
  { name: "greedy+declared", affinity: false, longestFirst: true, durations: "declared" },
];

export interface SimResult {
  workload: string;
  policy: string;
  items: number;
  makespanMs: number;
  idealMs: number;
  efficiency: number;
  /** Attempts that failed OUT_OF_MEMORY because the manifest underestimated (not placement). */
  estimateOoms: number;
  /** OUT_OF_MEMORY attempts of items that had run out of memory before (0 when the retry reserves the reported need). */
  repeatOoms: number;
  /** Times a GPU's VRAM in use (weights + reserved activations) exceeded its size: placement bugs. */
  overbooked: number;
  peakVramUse: number;
  refusedByWorker: number;
  loads: number;
  passes: number;
  wallMs: number;
  /** Placement decision times (s), when measured. */
  decisionP50S?: number;
  decisionP99S?: number;
  decisions?: number;
  /** Per batch: arrival, first start, completion (ms). */
  batchTimes: { id: string; priority: number; items: number; arrivalMs: number; firstStartMs: number; doneMs: number }[];
  /** Items that ended more than once, or never (must both be 0). */
  doubleEnded: number;
  notEnded: number;
  failed: number;
  /** Per GPU: the share of the makespan its VRAM was used as the LP counts it (Σ run / capacity). */
  gpuUse: Record<string, number>;
  plans: number;
  switches: number;
  /** Times an item was held in the tail for a faster GPU (scheduler/earliest-finish.ts; once per item per pass). */
  holds: number;
  /** Times an item was passed over for a pass because it would strand its GPU's VRAM (scheduler/packing.ts). */
  deferrals: number;
  /** Hedges placed, and how each pair ended (won: the copy ended the item; lost: the original did). */
  hedges: { placed: number; won: number; lost: number; cancelled: number };
  /** Models evicted by defragmentation, and evictions the simulated worker refused (an item of the model held: must be 0). */
  evictions: number;
  evictionsRefused: number;
  /**
   * With `trackEta`: per batch that reached 25 % with an ETA, |ETA − end| / remaining time, as
   * the coordinator's BatchProgress (scheduler/eta.ts) estimated it once a virtual second.
   */
  etaErrors?: number[];
}

interface Held {
  token: string;
  assignedAtMs?: number;
  batch: ActiveBatch;
  index: number;
  model: string;
  activation: number;
  item: SimItem;
}

interface GpuSim {
  spec: SimGpuSpec;
  worker: WorkerRecord;
  key: string;
  held: Map<string, Held>;
  /** Models with weights on the GPU: when each is ready, and when last used (for LRU). */
  loaded: Map<string, { readyAt: number; lastUsed: number }>;
  heldByModel: Map<string, number>;
  activations: number;
}

type Ev =
  | { t: number; seq: number; kind: "arrive"; batch: SimBatch }
  | { t: number; seq: number; kind: "finish"; gpu: GpuSim; token: string; oom: boolean }
  | { t: number; seq: number; kind: "tick" };

export interface SimOptions {
  measureDecisions?: boolean;
  /** Stop after this much virtual time (a guard; the run then reports what did not end). */
  maxVirtualMs?: number;
  /** Straggler hedging in the engine (coordinator/scheduler/hedging.ts); off when absent. */
  hedging?: { afterFactor: number };
  /**
   * Model residency: a model's weights stay on its GPU after its last item and count as used
   * VRAM (reported to the ledger as resident weights, as a worker with --sim-keep-weights does)
   * until an eviction drops them. Without it, idle weights are free VRAM (the default worker).
   */
  residency?: boolean;
  /** Defragmentation (coordinator/scheduler/defrag.ts): the engine's evictions are carried out. */
  defrag?: boolean;
  /** Decide by scanning the fleet instead of the engine's GPU index (same decisions; for comparison). */
  scan?: boolean;
  /** Estimate every running batch's completion once a virtual second, as the coordinator does, and score it (etaErrors). */
  trackEta?: boolean;
  /**
   * Workers whose OUT_OF_MEMORY does not say what the item needed (vram_used_bytes 0), as a real
   * ONNX backend's cannot: the estimate is then raised by half per OUT_OF_MEMORY. Default: the
   * need is reported, as the --simulate worker's backend does.
   */
  oomNeedUnknown?: boolean;
  /**
   * For analysis: the estimates start at every misestimated item's real need, as if learned
   * before the run, so nothing runs out of memory (what OUT_OF_MEMORY handling could at best reach).
   */
  knownVram?: boolean;
  /** Earliest-finish holds in the tail (engine default: on); false isolates another mechanism, e.g. hedging. */
  earliestFinish?: boolean;
  /** Passing over items that would strand their GPU's VRAM (scheduler/packing.ts; engine default: on); false measures what it does. */
  packing?: boolean;
  /** Called for each attempt a GPU starts (for diagnostics: where the tail ran). */
  onStart?: (e: { gpu: string; speed: number; model: string; workMs: number; useBytes: number; assignedAtMs: number; startAtMs: number; endAtMs: number; oom: boolean }) => void;
}

export function simulate(w: SimWorkload, policy: SimPolicy, opts: SimOptions = {}): SimResult {
  const wall0 = performance.now();
  const models = new Map(w.models.map((m) => [m.name, m]));
  const ledger = new VramLedger();
  const attempts = new Attempts(ledger);
  const estimates = new VramEstimates();
  if (opts.knownVram) {
    for (const b of w.batches) for (const it of b.items) if (it.useBytes !== undefined) estimates.observe(shapeKey(it.model, it.width ? { width: it.width, height: it.width } : {}), it.useBytes);
  }
  const batches = new Map<string, ActiveBatch>();
  const simItems = new Map<string, SimItem[]>();
  // The GPU name carries the speed, as a real GPU's model name does: GPU types differ by it.
  const gpuName = (g: SimGpuSpec) => `SIMULATED x${g.speed}`;
  const typeOf = new Map(w.gpus.map((g) => [g.id, gpuTypeOf(gpuName(g), g.vramBytes)]));
  const predictorOpts = {
    gpuTypeOf: (id: string) => typeOf.get(id),
    loadBytesPerS: Number.isFinite(w.loadBytesPerS) ? w.loadBytesPerS : 0,
    useDeclared: policy.durations === "declared",
  };
  const learned = new LearnedPredictor(new DurationModel(), predictorOpts);
  const predictor: DurationPredictor | undefined = policy.durations === "none" ? undefined : learned;
  // The coordinator's own ETA path: BatchProgress over LearnedDurations (never started: no KV here),
  // with a predictor of its own over the same learned model, so its speed refreshes do not move the engine's.
  // It learns the GPU types' speeds from the same outcomes (observeSpeed), as the coordinator's one
  // shared predictor does: without them, items on fast or slow GPUs were predicted at speed 1.
  const etaPredictor = opts.trackEta && predictor ? new LearnedPredictor(learned.model, predictorOpts) : undefined;
  const progress = opts.trackEta ? new BatchProgress(new LearnedDurations(ledger, pino({ level: "silent" }), learned.model), etaPredictor) : undefined;
  const etaSamples = new Map<string, EtaSample[]>();
  const etaErrors: number[] = [];
  let nextEtaAt = 0;
  const refreshEta = (at: number) => {
    progress!.refresh(at, batches.values());
    for (const b of batches.values()) {
      let list = etaSamples.get(b.id);
      if (!list) etaSamples.set(b.id, (list = []));
      list.push({ atMs: at, done: b.doneCount, total: b.items.length, etaMs: progress!.get(b.id)?.estimatedCompletionAt?.getTime() });
    }
  };
  const classify = (batchId: string, index: number) => {
    const slot = batches.get(batchId)!.items[index]!;
    noteNeed(engine, slot.model, slot.need.weightsBytes, estimates.activation(slot.shapeKey!, slot.need.activationBytes));
    return { group: slot.model, rank: predictor ? predictor.predictMs(slot) : 0 };
  };
  const queue = new BatchQueue({ classify, longestFirst: policy.longestFirst });
  const decisionTimes: number[] = [];
  const engine = newEnginePolicy({
    affinity: policy.affinity ? new AffinityPlanner() : undefined,
    predictor,
    observeDecision: opts.measureDecisions ? (s) => decisionTimes.push(s) : undefined,
    timer: opts.measureDecisions ? () => performance.now() : undefined,
    hedging: opts.hedging,
    scan: opts.scan,
    earliestFinish: opts.earliestFinish,
    packing: opts.packing,
  });
  if (opts.defrag) engine.defrag = { busy: new Set(), evictions: [] };

  const gpus: GpuSim[] = w.gpus.map((spec) => {
    const worker: WorkerRecord = {
      id: spec.id,
      incarnation: "sim",
      state: WorkerState.WORKER_STATE_READY,
      lastSeenMs: 0,
      lastSeq: 0,
      hostname: "sim",
      resident: new Set(),
      models: new Set(spec.models ?? w.models.map((m) => m.name)),
      maxInFlight: spec.slots,
      itemsDone: 0,
      unreachable: false,
      heldReported: 0,
    };
    return { spec, worker, key: gpuKey(spec.id, 0), held: new Map(), loaded: new Map(), heldByModel: new Map(), activations: 0 };
  });
  const gpuById = new Map(gpus.map((g) => [g.spec.id, g]));
  const workers = gpus.map((g) => g.worker);
  const state: EngineState = { queue, batches, workers, ledger, attempts, estimates, engine };

  const freeOf = (g: GpuSim): number => {
    let weights = 0;
    for (const m of g.heldByModel.keys()) weights += models.get(m)!.weightsBytes;
    // With residency, idle loaded models hold their weights too.
    if (opts.residency) for (const m of g.loaded.keys()) if (!g.heldByModel.has(m)) weights += models.get(m)!.weightsBytes;
    return g.spec.vramBytes - weights - g.activations;
  };
  const report = (g: GpuSim) => {
    ledger.observe(g.spec.id, [{ index: 0, name: gpuName(g.spec), totalBytes: g.spec.vramBytes, freeBytes: Math.max(0, freeOf(g)), source: "budget" }], new Set(g.held.keys()));
    if (opts.residency) ledger.observeResident(g.spec.id, [...g.loaded.keys()].map((m) => ({ gpuIndex: 0, model: m, weightsBytes: models.get(m)!.weightsBytes })));
  };
  for (const g of gpus) report(g);

  const heap = new EventHeap<Ev>();
  let seq = 0;
  let now = 0;
  type Unsequenced<T> = T extends unknown ? Omit<T, "seq"> : never;
  const push = (e: Unsequenced<Ev>) => heap.push({ ...(e as Ev), seq: seq++ });
  for (const b of w.batches) push({ t: b.arrivalMs, kind: "arrive", batch: b });

  const res: SimResult = {
    workload: w.name,
    policy: policy.name,
    items: w.batches.reduce((s, b) => s + b.items.length, 0),
    makespanMs: 0,
    idealMs: 0,
    efficiency: 0,
    estimateOoms: 0,
    repeatOoms: 0,
    overbooked: 0,
    peakVramUse: 0,
    refusedByWorker: 0,
    loads: 0,
    passes: 0,
    wallMs: 0,
    batchTimes: [],
    doubleEnded: 0,
    notEnded: 0,
    failed: 0,
    gpuUse: {},
    plans: 0,
    switches: 0,
    holds: 0,
    deferrals: 0,
    hedges: { placed: 0, won: 0, lost: 0, cancelled: 0 },
    evictions: 0,
    evictionsRefused: 0,
  };
  const lpTime = new Map<string, number>();
  const times = new Map<string, SimResult["batchTimes"][number]>();
  const ended = new Map<string, Uint8Array>();
  /** Items that have run out of memory at least once ("batch/index"). */
  const oomed = new Set<string>();
  let remaining = res.items;
  let tickPending = false;
  let lastDone = 0;

  const arrive = (b: SimBatch) => {
    const record = { batch: { id: b.id, priority: b.priority }, items: [] } as unknown as BatchRecord;
    const slots: ItemSlot[] = b.items.map((it) => {
      const m = models.get(it.model)!;
      const params: Record<string, unknown> = { work_ms: it.workMs, ...(it.width ? { width: it.width, height: it.width } : {}) };
      return newItemSlot(it.model, params, { weightsBytes: m.weightsBytes, activationBytes: m.activationBytes }, now, now);
    });
    const batch = new ActiveBatch(record, 0, slots, 5, now);
    batches.set(b.id, batch);
    simItems.set(b.id, b.items);
    ended.set(b.id, new Uint8Array(b.items.length));
    times.set(b.id, { id: b.id, priority: b.priority, items: b.items.length, arrivalMs: now, firstStartMs: -1, doneMs: -1 });
    for (let i = 0; i < slots.length; i++) queue.add(b.id, i, b.priority);
  };

  /** The worker takes an assignment: its own fit check, then loads the model if needed and runs. */
  const assign = (g: GpuSim, list: Placed[]) => {
    for (const p of list) {
      const slot = p.batch.items[p.index]!;
      const m = models.get(slot.model)!;
      const activation = p.lease.activationBytes ?? m.activationBytes;
      const weightsCounted = (g.heldByModel.get(slot.model) ?? 0) > 0 || (opts.residency === true && g.loaded.has(slot.model));
      if (fits(freeOf(g), 0, { weightsBytes: m.weightsBytes, activationBytes: activation }, weightsCounted) === undefined) {
        res.refusedByWorker++;
        if (attempts.withdraw(p.batch, p.index, p.lease)) queue.add(p.batch.id, p.index, p.batch.record.batch!.priority);
        continue;
      }
      const item = simItems.get(p.batch.id)![p.index]!;
      g.held.set(p.lease.token, { token: p.lease.token, assignedAtMs: p.lease.assignedAtMs, batch: p.batch, index: p.index, model: slot.model, activation, item });
      g.heldByModel.set(slot.model, (g.heldByModel.get(slot.model) ?? 0) + 1);
      g.activations += activation;
      checkVram(g);
      const startAt = ensureLoaded(g, slot.model);
      const t = times.get(p.batch.id)!;
      if (t.firstStartMs < 0) t.firstStartMs = now;
      const use = item.useBytes ?? m.activationBytes;
      const oom = use > activation;
      const runMs = oom ? w.oomMs : item.workMs / g.spec.speed;
      push({ t: startAt + runMs, kind: "finish", gpu: g, token: p.lease.token, oom });
      opts.onStart?.({ gpu: g.spec.id, speed: g.spec.speed, model: slot.model, workMs: item.workMs, useBytes: use, assignedAtMs: now, startAtMs: startAt, endAtMs: startAt + runMs, oom });
    }
    report(g);
  };

  const checkVram = (g: GpuSim) => {
    const used = g.spec.vramBytes - freeOf(g);
    res.peakVramUse = Math.max(res.peakVramUse, used / g.spec.vramBytes);
    if (used > g.spec.vramBytes) res.overbooked++;
  };

  /** When the model's weights are ready on the GPU (now, or after a load that evicts idle models). */
  const ensureLoaded = (g: GpuSim, model: string): number => {
    const have = g.loaded.get(model);
    if (have) {
      have.lastUsed = now;
      return Math.max(now, have.readyAt);
    }
    const m = models.get(model)!;
    let resident = 0;
    for (const name of g.loaded.keys()) resident += models.get(name)!.weightsBytes;
    const idle = [...g.loaded.entries()].filter(([name]) => (g.heldByModel.get(name) ?? 0) === 0).sort((a, b) => a[1].lastUsed - b[1].lastUsed);
    while (resident + m.weightsBytes + g.activations > g.spec.vramBytes && idle.length > 0) {
      const [name] = idle.shift()!;
      g.loaded.delete(name);
      resident -= models.get(name)!.weightsBytes;
    }
    const loadMs = Number.isFinite(w.loadBytesPerS) ? (m.weightsBytes / w.loadBytesPerS) * 1000 : 0;
    if (loadMs > 0) res.loads++;
    g.loaded.set(model, { readyAt: now + loadMs, lastUsed: now });
    g.worker.resident = new Set(g.loaded.keys());
    return now + loadMs;
  };

  /** The GPU lets go of an item (it ended, or was cancelled): its VRAM and its slot come back. */
  const letGo = (g: GpuSim, token: string): Held | undefined => {
    const h = g.held.get(token);
    if (!h) return undefined;
    g.held.delete(token);
    const n = (g.heldByModel.get(h.model) ?? 1) - 1;
    if (n > 0) g.heldByModel.set(h.model, n);
    else g.heldByModel.delete(h.model);
    g.activations -= h.activation;
    const l = g.loaded.get(h.model);
    if (l) l.lastUsed = now;
    attempts.end(token);
    return h;
  };

  const finish = (g: GpuSim, token: string, oom: boolean) => {
    const h = letGo(g, token);
    if (!h) return; // cancelled meanwhile (the losing copy of a hedged item)
    const slot = h.batch.items[h.index]!;
    const runMs = oom ? w.oomMs : h.item.workMs / g.spec.speed;
    // Either copy of a hedged item is current, as in the coordinator's intake.
    const current = slot.lease?.token === token ? slot.lease : slot.hedge?.token === token ? slot.hedge : undefined;
    const reserved = current?.activationBytes;
    // As the simulated backend does: a success's peak, or what an OUT_OF_MEMORY item needed.
    const usedBytes = oom && opts.oomNeedUnknown ? 0 : (h.item.useBytes ?? 0);
    if (!oom) {
      const m = models.get(h.model)!;
      const cap = (g.spec.vramBytes - m.weightsBytes) / m.activationBytes;
      lpTime.set(g.spec.id, (lpTime.get(g.spec.id) ?? 0) + runMs / cap);
    }
    const effect = h.batch.applyOutcome(
      {
        lease: { batchId: h.batch.id, index: h.index, token },
        status: oom ? ItemStatus.ITEM_STATUS_FAILED : ItemStatus.ITEM_STATUS_SUCCEEDED,
        error: oom ? { code: "OUT_OF_MEMORY", message: "simulated", retryable: true } : undefined,
        artifacts: [],
        runMs,
        vramUsedBytes: usedBytes,
      },
      g.spec.id,
      now,
    );
    // The coordinator's own rule (vram-estimates.ts): a counted success's peak is observed, a
    // counted OUT_OF_MEMORY raises the estimate to the need the worker reported.
    learnFromOutcome(estimates, slot.shapeKey!, { counted: effect.kind !== "ignored", oom, vramUsedBytes: usedBytes, reservedBytes: reserved, manifestBytes: slot.need.activationBytes });
    if (oom) {
      res.estimateOoms++;
      const id = `${h.batch.id}/${h.index}`;
      if (oomed.has(id)) res.repeatOoms++;
      oomed.add(id);
    }
    else if (predictor && effect.kind === "done") {
      learned.observe(slot, g.spec.id, runMs);
      etaPredictor?.observeSpeed(slot, g.spec.id, runMs);
    }
    if ((effect.kind === "done" || effect.kind === "closed") && effect.hedge) {
      res.hedges[effect.hedge.outcome]++;
      const other = effect.hedge.other;
      if (other) {
        // The coordinator cancels the other copy; the worker stops it and reports it ended.
        const og = gpuById.get(other.workerId)!;
        letGo(og, other.token);
        report(og);
      }
    }
    // As the coordinator does for a counted outcome: the slot was held from assignment (a load included) until now.
    if (!oom && effect.kind === "done" && h.assignedAtMs !== undefined) progress?.observeSlotTime(h.assignedAtMs, now, runMs);
    if (effect.kind === "retry") queue.add(h.batch.id, h.index, h.batch.record.batch!.priority);
    else if (effect.kind === "done") {
      const e = ended.get(h.batch.id)!;
      if (e[h.index]! > 0) res.doubleEnded++;
      e[h.index] = 1;
      remaining--;
      if (slot.result?.status !== ItemStatus.ITEM_STATUS_SUCCEEDED) res.failed++;
      lastDone = now;
      if (h.batch.isComplete) {
        times.get(h.batch.id)!.doneMs = now;
        if (progress) {
          const e = etaErrorAt(etaSamples.get(h.batch.id) ?? [], now);
          if (e !== undefined) etaErrors.push(e);
          etaSamples.delete(h.batch.id);
        }
        queue.removeBatch(h.batch.id);
        batches.delete(h.batch.id);
      }
    }
  };

  /** The simulated worker carries out an eviction: refused while an item of the model is held. */
  const evict = (g: GpuSim, model: string): boolean => {
    if ((g.heldByModel.get(model) ?? 0) > 0) {
      res.evictionsRefused++;
      return false;
    }
    if (!g.loaded.delete(model)) return false;
    res.evictions++;
    g.worker.resident = new Set(g.loaded.keys());
    return true;
  };

  const pass = () => {
    // Evictions answer at once here, so the room they free is used by another pass at the same
    // instant (bounded: each one drops at least one idle model).
    for (let round = 0; round < 64; round++) {
      res.passes++;
      const out = schedulePass(state, { nowMs: now, recoveringUntilMs: 0, policy: "best-fit", newToken: (a) => `${a}.${seq++}` });
      for (const [workerId, list] of out) {
        for (const p of list) if (p.hedge) res.hedges.placed++;
        assign(gpuById.get(workerId)!, list);
      }
      let freed = false;
      for (const e of engine.defrag?.evictions ?? []) {
        const g = gpuById.get(e.workerId)!;
        for (const m of e.models) freed = evict(g, m) || freed;
        report(g);
      }
      if (!freed) break;
    }
    // A running attempt falls due for a hedge later, or a slot an item is held for: a pass runs then.
    for (const due of [engine.hedgeCheckAtMs, engine.holdCheckAtMs]) {
      if (due !== undefined && due > now && !hedgeTicks.has(due)) {
        hedgeTicks.add(due);
        push({ t: due, kind: "tick" });
      }
    }
  };
  const hedgeTicks = new Set<number>();

  const maxT = opts.maxVirtualMs ?? Infinity;
  while (heap.size > 0) {
    now = heap.peek()!.t;
    if (now > maxT) break;
    // ETA refreshes between events see the state of their instant (nothing changes between events);
    // they add no pass, so the schedule is the same with or without them.
    if (progress) {
      if (batches.size === 0) nextEtaAt = Math.max(nextEtaAt, now);
      for (; nextEtaAt < now; nextEtaAt += 1000) if (batches.size > 0) refreshEta(nextEtaAt);
    }
    // Every event at this instant, then one pass (as the coordinator coalesces passes).
    while (heap.size > 0 && heap.peek()!.t === now) {
      const e = heap.pop()!;
      if (e.kind === "arrive") arrive(e.batch);
      else if (e.kind === "finish") finish(e.gpu, e.token, e.oom);
      else tickPending = false;
    }
    pass();
    // A periodic tick while work waits (re-plans fire on time, not only on outcomes).
    if (!tickPending && queue.size > 0) {
      tickPending = true;
      push({ t: now + 500, kind: "tick" });
    }
    if (remaining === 0 && heap.size === 0) break;
  }

  res.notEnded = remaining;
  if (progress) res.etaErrors = etaErrors;
  res.plans = engine.affinity?.plans ?? 0;
  res.switches = engine.affinity?.switches ?? 0;
  res.holds = engine.holds ?? 0;
  res.deferrals = engine.deferrals ?? 0;
  const first = Math.min(...w.batches.map((b) => b.arrivalMs));
  res.makespanMs = lastDone - first;
  res.idealMs = idealMs(w) - first;
  res.efficiency = res.idealMs / Math.max(1, res.makespanMs);
  res.batchTimes = [...times.values()];
  for (const g of gpus) res.gpuUse[g.spec.id] = Math.round((1000 * (lpTime.get(g.spec.id) ?? 0)) / Math.max(1, res.makespanMs)) / 1000;
  res.wallMs = performance.now() - wall0;
  if (decisionTimes.length > 0) {
    decisionTimes.sort((a, b) => a - b);
    res.decisions = decisionTimes.length;
    res.decisionP50S = decisionTimes[Math.floor(0.5 * (decisionTimes.length - 1))];
    res.decisionP99S = decisionTimes[Math.floor(0.99 * (decisionTimes.length - 1))];
  }
  return res;
}

/**
 * The LP lower bound of bench/lib/ideal.ts (capacityBound), with identical GPUs merged into
 * classes (the same optimum, a much smaller LP at a thousand GPUs) and each GPU's rate scaled
 * by its speed. Returns the least time (ms) in which the fleet could deliver `workMs` per model.
 */
export function classCapacityBoundMs(gpus: SimGpuSpec[], models: SimModel[], workMs: Map<string, number>): number {
  const classes = new Map<string, { g: SimGpuSpec; n: number }>();
  for (const g of gpus) {
    const key = `${g.vramBytes}|${g.speed}|${(g.models ?? []).join(",")}`;
    const c = classes.get(key);
    if (c) c.n++;
    else classes.set(key, { g, n: 1 });
  }
  const cls = [...classes.values()];
  const ms = models.filter((m) => (workMs.get(m.name) ?? 0) > 0);
  if (ms.length === 0) return 0;
  const pairs: CapacityPair[] = [];
  ms.forEach((m, mi) =>
    cls.forEach(({ g }, ci) => {
      if (g.models && !g.models.includes(m.name.split("|")[0]!)) return;
      if (g.vramBytes < m.weightsBytes + m.activationBytes) return;
      // As ideal.ts's capacity(): VRAM only (real-valued), no slot limit.
      const cap = m.activationBytes > 0 ? (g.vramBytes - m.weightsBytes) / m.activationBytes : g.slots;
      pairs.push({ model: mi, cls: ci, rate: cap * g.speed });
    }),
  );
  ms.forEach((m, mi) => {
    if (!pairs.some((p) => p.model === mi)) throw new Error(`no GPU can hold model ${m.name}`);
  });
  const { lambda } = capacityRate(
    ms.map((m) => workMs.get(m.name)! / 1000),
    pairs,
    cls.map(({ n }) => n),
  );
  return 1000 / lambda;
}

/**
 * The ideal completion time of the whole workload: for batches arriving over time, the latest of
 * (an arrival + the capacity bound of all work arriving from then on) and (an arrival + its
 * longest item on the fastest GPU). With every batch at 0 it is the fleet case's ideal:
 * max(capacity bound, longest item).
 */
export function idealMs(w: SimWorkload): number {
  const sorted = [...w.batches].sort((a, b) => a.arrivalMs - b.arrivalMs);
  const fastest = Math.max(...w.gpus.map((g) => g.speed));
  // Items that really use more than their manifest says count with what they use: the bound is
  // of the real work, not of the estimate.
  const byName = new Map(w.models.map((m) => [m.name, m]));
  const realModels = new Map<string, SimModel>();
  const keyOf = (it: SimItem): string => {
    const m = byName.get(it.model)!;
    if (it.useBytes === undefined || it.useBytes <= m.activationBytes) return m.name;
    const key = `${m.name}|${it.useBytes}`;
    if (!realModels.has(key)) realModels.set(key, { name: key, weightsBytes: m.weightsBytes, activationBytes: it.useBytes });
    return key;
  };
  let best = 0;
  for (const b of sorted) for (const it of b.items) best = Math.max(best, b.arrivalMs + it.workMs / fastest);
  for (const b of sorted) for (const it of b.items) keyOf(it);
  const models = [...w.models, ...realModels.values()];
  // Suffix sums of work per model; the bound is checked at up to 40 arrival instants.
  const step = Math.max(1, Math.floor(sorted.length / 40));
  for (let i = 0; i < sorted.length; i += step) {
    const work = new Map<string, number>();
    for (let j = i; j < sorted.length; j++) for (const it of sorted[j]!.items) work.set(keyOf(it), (work.get(keyOf(it)) ?? 0) + it.workMs);
    best = Math.max(best, sorted[i]!.arrivalMs + classCapacityBoundMs(w.gpus, models, work));
  }
  return best;
}
