// SIMULATION ONLY. A backend that computes nothing: each item "runs" for the time its
// `work_ms` param declares (a timer, or a busy loop with `busy: true`) and returns a small JSON
// artifact. It exists so load tests and benchmarks can drive the real coordinator, NATS,
// JetStream and worker code at fleet scale on a machine without GPUs. Never used unless the
// worker is started with --simulate.

import type { ModelManifest } from "../shared/manifest.js";
import { InferenceError, type CancelSignal, type InferenceBackend, type InferenceJob, type InferenceOutput } from "./inference/backend.js";

const GB = 1e9;

function simModel(name: string, weightsGb: number, activationGb: number): ModelManifest {
  return {
    name,
    version: "sim-1",
    description: `SIMULATED model: needs ${weightsGb + activationGb} GB of VRAM, runs for work_ms`,
    params: {
      work_ms: { type: "integer", minimum: 0, maximum: 3_600_000, default: 0 },
      busy: { type: "boolean", default: false },
      fail: { type: "boolean", default: false },
      // What the item "really" uses; more than the reservation fails with OUT_OF_MEMORY, as a
      // model whose manifest underestimates its need would on a real GPU, reporting this need.
      use_bytes: { type: "integer", minimum: 0 },
      tag: { type: "string", maxLength: 200 },
    },
    vram: { weights_bytes: Math.round(weightsGb * GB), activation_bytes: Math.round(activationGb * GB) },
  };
}

export const SIMULATED_MODELS: readonly ModelManifest[] = [
  simModel("sim-6g", 4, 2),
  simModel("sim-12g", 8, 4),
  simModel("sim-30g", 20, 10),
  simModel("sim-zero", 0, 0),
];

/** The costs a simulated GPU charges, so real-process runs pay what the simulator (bench/sim) does. */
export interface SimulatedCosts {
  /** Items take work_ms / speed (a GPU `speed` times as fast as nominal). Default 1. */
  speed?: number;
  /** Weights load at this many bytes per second the first time a model runs (0 = instantly). */
  loadBytesPerS?: number;
  /** VRAM of the simulated GPU: loaded models with no item running are evicted (least recently used) to make room. */
  vramBytes?: number;
  /**
   * Loaded models keep their weights in the VRAM budget after their last item, as cached
   * sessions hold a real GPU's memory, until the coordinator evicts them (defragmentation).
   */
  keepWeights?: boolean;
}

export class SimulatedBackend implements InferenceBackend {
  /** Loaded models: when the load ends (shared by every item of the model arriving meanwhile), last use. */
  private readonly loaded = new Map<string, { ready: Promise<void>; lastUsed: number; running: number; loading: number }>();
  private readonly all: ModelManifest[];
  private readonly names: Set<string>;
  private readonly speed: number;
  private readonly loadBytesPerS: number;
  /** Loads done (each paid its time). */
  loads = 0;
  constructor(
    extraModels: ModelManifest[] = [],
    private readonly costs: SimulatedCosts = {},
  ) {
    this.all = [...SIMULATED_MODELS, ...extraModels];
    this.names = new Set(this.all.map((m) => m.name));
    this.speed = costs.speed && costs.speed > 0 ? costs.speed : 1;
    this.loadBytesPerS = costs.loadBytesPerS ?? 0;
  }

  /** Loads the model's weights unless loaded, paying weights / bandwidth; evicts idle models for room. */
  private load(name: string, signal: CancelSignal): Promise<void> {
    const have = this.loaded.get(name);
    if (have) return have.ready;
    const manifest = this.all.find((m) => m.name === name)!;
    const weights = manifest.vram.weights_bytes;
    if (this.costs.vramBytes !== undefined) {
      let resident = [...this.loaded.keys()].reduce((s, m) => s + (this.all.find((x) => x.name === m)?.vram.weights_bytes ?? 0), 0);
      const idle = [...this.loaded.entries()].filter(([, l]) => l.running === 0 && l.loading === 0).sort((a, b) => a[1].lastUsed - b[1].lastUsed);
      while (resident + weights > this.costs.vramBytes && idle.length > 0) {
        const [evict] = idle.shift()!;
        this.loaded.delete(evict);
        resident -= this.all.find((x) => x.name === evict)?.vram.weights_bytes ?? 0;
      }
    }
    const ms = this.loadBytesPerS > 0 ? (weights / this.loadBytesPerS) * 1000 : 0;
    if (ms > 0) this.loads++;
    const ready = ms > 0 ? sleep(ms, signal) : Promise.resolve();
    this.loaded.set(name, { ready, lastUsed: performance.now(), running: 0, loading: 0 });
    return ready;
  }

  async evict(model: string): Promise<"evicted" | "not-loaded" | { refused: string }> {
    const entry = this.loaded.get(model);
    if (!entry) return "not-loaded";
    if (entry.running > 0 || entry.loading > 0) return { refused: `${entry.running + entry.loading} item(s) of ${model} loading or running` };
    this.loaded.delete(model);
    return "evicted";
  }

  keptWeights(): string[] {
    return this.costs.keepWeights ? [...this.loaded.keys()] : [];
  }

  async start(): Promise<void> {}

  models(): ModelManifest[] {
    return this.all;
  }

  residentModels(): string[] {
    return [...this.loaded.keys()];
  }

  async run(job: InferenceJob, signal: CancelSignal): Promise<InferenceOutput> {
    if (!this.names.has(job.model)) {
      throw new InferenceError("MODEL_NOT_FOUND", `model ${job.model} is not served here`, false);
    }
    const ready = this.load(job.model, signal);
    const pending = this.loaded.get(job.model);
    // While it waits for the load, the model counts as in use: an eviction must not drop it.
    if (pending) pending.loading++;
    try {
      await ready;
    } finally {
      if (pending) pending.loading--;
    }
    // More than the reservation fails at once, after the load, as an allocation at the start of a
    // real run does (the simulator charges the same: bench/sim/simulator.ts, oomMs), and says what
    // the item needed, as the simulator's workers do, so the coordinator places it again with that.
    const use = typeof job.params.use_bytes === "number" ? job.params.use_bytes : 0;
    if (use > 0 && job.vramBytes !== undefined && job.vramBytes > 0 && use > job.vramBytes) {
      throw new InferenceError("OUT_OF_MEMORY", `simulated: needed ${use} bytes, ${job.vramBytes} were reserved`, true, { neededBytes: use });
    }
    const entry = this.loaded.get(job.model);
    if (entry) entry.running++;
    try {
      const workMs = Number(job.params.work_ms ?? 0) / this.speed;
      if (job.params.busy === true) {
        const end = performance.now() + workMs;
        while (performance.now() < end) if (signal.aborted) break;
      } else if (workMs > 0) {
        await sleep(workMs, signal);
      }
    } finally {
      if (entry) {
        entry.running--;
        entry.lastUsed = performance.now();
      }
    }
    if (signal.aborted) throw new InferenceError("CANCELLED", "cancelled", false);
    if (job.params.fail === true) throw new InferenceError("INFERENCE_FAILED", "simulated failure", false);
    return { artifacts: [], peakBytes: use };
  }

  async close(): Promise<void> {}
}

function sleep(ms: number, signal: CancelSignal): Promise<void> {
  return new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => (clearTimeout(t), resolve()));
  });
}
