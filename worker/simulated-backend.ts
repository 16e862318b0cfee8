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
      // model whose manifest underestimates its need would on a real GPU.
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

export class SimulatedBackend implements InferenceBackend {
  private readonly resident = new Set<string>();
  private readonly all: ModelManifest[];
  private readonly names: Set<string>;
  constructor(extraModels: ModelManifest[] = []) {
    this.all = [...SIMULATED_MODELS, ...extraModels];
    this.names = new Set(this.all.map((m) => m.name));
  }

  async start(): Promise<void> {}

  models(): ModelManifest[] {
    return this.all;
  }

  residentModels(): string[] {
    return [...this.resident];
  }

  async run(job: InferenceJob, signal: CancelSignal): Promise<InferenceOutput> {
    if (!this.names.has(job.model)) {
      throw new InferenceError("MODEL_NOT_FOUND", `model ${job.model} is not served here`, false);
    }
    this.resident.add(job.model);
    const workMs = Number(job.params.work_ms ?? 0);
    if (job.params.busy === true) {
      const end = performance.now() + workMs;
      while (performance.now() < end) if (signal.aborted) break;
    } else if (workMs > 0) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, workMs);
        signal.addEventListener("abort", () => (clearTimeout(t), resolve()));
      });
    }
    if (signal.aborted) throw new InferenceError("CANCELLED", "cancelled", false);
    if (job.params.fail === true) throw new InferenceError("INFERENCE_FAILED", "simulated failure", false);
    const use = typeof job.params.use_bytes === "number" ? job.params.use_bytes : 0;
    if (use > 0 && job.vramBytes !== undefined && job.vramBytes > 0 && use > job.vramBytes) {
      throw new InferenceError("OUT_OF_MEMORY", `simulated: needed ${use} bytes, ${job.vramBytes} were reserved`, true);
    }
    return { artifacts: [], peakBytes: use };
  }

  async close(): Promise<void> {}
}
