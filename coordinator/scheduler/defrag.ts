// Defragmentation: which idle resident weights to evict, and where, so that a waiting item that
// fits on no GPU as things stand gets room. Pure: the fleet as the engine sees it and the
// blocked models come in, eviction decisions come out; no I/O, no clock.
//
// Why it is needed: a worker that keeps a model's weights loaded after its last item (cached
// ONNX sessions on a measured GPU; a SIMULATED worker with --sim-keep-weights) counts them as
// used VRAM, and nothing but an eviction gives them back. An item of another model that needs
// that room would otherwise wait for ever (or until the worker restarts).
//
// The rule (docs/scheduling.md, "Defragmentation"): for each blocked model, the wait an
// eviction would save its next item (how long until running items free enough room on some GPU
// by themselves; unbounded when none would) is weighed against what the eviction costs (the
// load time of each evicted model that still has items waiting: they will have to load it
// again). Evict only when the saving beats the cost, on the GPU where the cost is least.

/** One GPU as defragmentation sees it. */
export interface DefragGpu {
  key: string;
  workerId: string;
  gpuIndex: number;
  /** Free VRAM less reservations not yet counted by the worker (the ledger's `available`). */
  availableBytes: number;
  /** More items the worker may take now. */
  slotsFree: number;
  /** Models the worker serves. */
  serves: ReadonlySet<string>;
  /** Models whose weights are counted here already (a live attempt, or kept resident): an item of one needs only its activations. */
  counted: ReadonlySet<string>;
  /** Resident weights no live attempt uses: what an eviction may drop, with their bytes. */
  idle: ReadonlyMap<string, number>;
  /** Running attempts here: in how many ms each is predicted to end (Infinity when unknown) and the bytes it gives back then. */
  running: readonly { endsInMs: number; bytes: number }[];
}

/** A model whose waiting items fit nowhere this pass, with the need of the smallest that failed. */
export interface BlockedModel {
  model: string;
  weightsBytes: number;
  activationBytes: number;
}

export interface DefragCosts {
  /** Time to load a model's weights again (0 when unknown). */
  loadMs(model: string, weightsBytes: number): number;
  /** Items of the model waiting in the queue: an evicted model with none costs no reload soon. */
  waiting(model: string): number;
}

/** One decision: drop `models` from GPU `gpuIndex` of `workerId` so an item of `forModel` fits. */
export interface Eviction {
  workerId: string;
  gpuIndex: number;
  gpuKey: string;
  models: string[];
  /** Bytes the eviction frees. */
  bytes: number;
  forModel: string;
  /** The wait saved (ms; Infinity when the item would otherwise wait for an eviction anyway). */
  gainMs: number;
  /** The reloads it causes (ms). */
  costMs: number;
}

/**
 * Plans at most one eviction per blocked model, at most one per GPU, skipping GPUs in `busy`
 * (an eviction already on its way there). Blocked models are served in the order given (the
 * queue's order of the pass).
 */
export function planEvictions(gpus: readonly DefragGpu[], blocked: readonly BlockedModel[], costs: DefragCosts, busy: ReadonlySet<string> = new Set()): Eviction[] {
  const out: Eviction[] = [];
  const taken = new Set(busy);
  for (const b of blocked) {
    const serving = gpus.filter((g) => g.serves.has(b.model));
    if (serving.length === 0) continue;
    const needOn = (g: DefragGpu) => b.activationBytes + (g.counted.has(b.model) ? 0 : b.weightsBytes);
    const gainMs = waitWithoutEviction(serving, needOn);
    if (gainMs <= 0) continue;
    let best: Eviction | undefined;
    for (const g of serving) {
      if (taken.has(g.key) || g.slotsFree <= 0) continue;
      const deficit = needOn(g) - g.availableBytes;
      if (deficit <= 0) continue; // it fits here: held back by something else than VRAM
      const pick = chooseVictims(g, deficit, b.model, costs);
      if (!pick) continue;
      const cand: Eviction = { workerId: g.workerId, gpuIndex: g.gpuIndex, gpuKey: g.key, models: pick.models, bytes: pick.bytes, forModel: b.model, gainMs, costMs: pick.costMs };
      if (!best || better(cand, best)) best = cand;
    }
    if (best && best.gainMs > best.costMs) {
      out.push(best);
      taken.add(best.gpuKey);
    }
  }
  return out;
}

/** Least reload cost, then fewest bytes dropped, then the GPU key (deterministic). */
function better(a: Eviction, b: Eviction): boolean {
  if (a.costMs !== b.costMs) return a.costMs < b.costMs;
  if (a.bytes !== b.bytes) return a.bytes < b.bytes;
  return a.gpuKey < b.gpuKey;
}

/**
 * How long the item would wait for room without any eviction: on each GPU that serves it, the
 * time until enough of its running attempts have ended (their activations come back; resident
 * weights stay), the least over those GPUs; 0 when one has room and a free slot now (the item
 * waits by the plan's choice, not for VRAM). Infinity when no GPU would ever have room so.
 */
export function waitWithoutEviction(gpus: readonly DefragGpu[], needOn: (g: DefragGpu) => number): number {
  let best = Infinity;
  for (const g of gpus) {
    let room = g.availableBytes;
    const need = needOn(g);
    const ends = [...g.running].sort((x, y) => x.endsInMs - y.endsInMs);
    // A GPU with room but no free slot takes the item when its first running item ends.
    if (room >= need) {
      if (g.slotsFree > 0) return 0;
      if (ends.length > 0) best = Math.min(best, Math.max(0, ends[0]!.endsInMs));
      continue;
    }
    for (const r of ends) {
      if (!Number.isFinite(r.endsInMs)) break;
      room += r.bytes;
      if (room >= need) {
        best = Math.min(best, Math.max(0, r.endsInMs));
        break;
      }
    }
  }
  return best;
}

/**
 * The idle models to drop on one GPU to free `deficit` bytes: those with no waiting items first
 * (no reload cost), then the cheapest to reload; within the same cost the largest first, so
 * fewer models go. Then any model not needed after all is kept. Undefined when the idle weights
 * there cannot free enough.
 */
function chooseVictims(g: DefragGpu, deficit: number, forModel: string, costs: DefragCosts): { models: string[]; bytes: number; costMs: number } | undefined {
  const cands = [...g.idle]
    .filter(([m]) => m !== forModel)
    .map(([model, bytes]) => ({ model, bytes, cost: costs.waiting(model) > 0 ? costs.loadMs(model, bytes) : 0 }))
    .sort((a, b) => a.cost - b.cost || b.bytes - a.bytes || (a.model < b.model ? -1 : 1));
  const chosen: typeof cands = [];
  let freed = 0;
  for (const c of cands) {
    if (freed >= deficit) break;
    chosen.push(c);
    freed += c.bytes;
  }
  if (freed < deficit) return undefined;
  // Keep what is not needed after all (the last, largest-cost pick may cover for earlier ones).
  for (let i = chosen.length - 1; i >= 0; i--) {
    if (freed - chosen[i]!.bytes >= deficit) {
      freed -= chosen[i]!.bytes;
      chosen.splice(i, 1);
    }
  }
  return { models: chosen.map((c) => c.model).sort(), bytes: freed, costMs: chosen.reduce((s, c) => s + c.cost, 0) };
}
