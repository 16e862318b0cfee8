// How a thread talks to onnxruntime: one place for session options (execution providers,
// intra-op threads) and for turning onnxruntime's errors into the contract's codes.

import ort from "onnxruntime-node";
import { InferenceError } from "./backend.js";
import { cudaDevice } from "./cuda-provider.js";

export interface RuntimeOptions {
  /** In preference order, e.g. ["cuda", "cpu"]. "cpu" is always appended as the last resort. */
  executionProviders: string[];
  /** onnxruntime's own threads per session; threads × this should not exceed the cores. */
  intraOpThreads: number;
}

export type RuntimeLog = (level: "info" | "warn" | "error", msg: string, fields?: Record<string, unknown>) => void;

export class Runtime {
  readonly ort = ort;
  private providers: string[];
  /** Accelerators the operator asked for by name (cuda): never swapped for the CPU behind their back. */
  private readonly required: boolean;

  constructor(
    private readonly options: RuntimeOptions,
    private readonly log: RuntimeLog = () => {},
  ) {
    this.providers = [...new Set([...options.executionProviders.map((p) => p.toLowerCase()), "cpu"])];
    this.required = this.providers.some((p) => cudaDevice(p) !== undefined);
  }

  sessionOptions(): ort.InferenceSession.SessionOptions {
    return {
      executionProviders: this.providers.map(providerConfig),
      intraOpNumThreads: this.options.intraOpThreads,
      // Items run one at a time per thread; parallel branches would only fight for the cores.
      interOpNumThreads: 1,
      executionMode: "sequential",
      graphOptimizationLevel: "all",
    };
  }

  /**
   * Creates a session. When an accelerator provider cannot be used here (no such build of
   * onnxruntime, no driver), falls back to the CPU once and for all, with a warning: a
   * worker that serves slowly beats one that serves nothing.
   */
  async createSession(source: string | Uint8Array): Promise<ort.InferenceSession> {
    try {
      return await create(source, this.sessionOptions());
    } catch (err) {
      // The worker checked at start that CUDA runs (probeCuda); a failure now is this model's
      // or this moment's, and computing on the CPU instead would hide it.
      if (this.providers.length === 1 || this.required) throw err;
      this.log("warn", "execution providers unavailable; falling back to the CPU", {
        providers: this.providers,
        err: (err as Error).message,
      });
      this.providers = ["cpu"];
      return await create(source, this.sessionOptions());
    }
  }
}

/** "cuda:1" → onnxruntime's CUDA provider on device 1; other names pass as they are. */
function providerConfig(name: string): ort.InferenceSession.ExecutionProviderConfig {
  const device = cudaDevice(name);
  return device === undefined ? name : { name: "cuda", deviceId: device };
}

// Two calls because create() is overloaded on path vs bytes and takes no union.
function create(source: string | Uint8Array, options: ort.InferenceSession.SessionOptions): Promise<ort.InferenceSession> {
  return typeof source === "string" ? ort.InferenceSession.create(source, options) : ort.InferenceSession.create(source, options);
}

const OUT_OF_MEMORY = /out of memory|bad_alloc|failed to allocate|cudaErrorMemoryAllocation|CUBLAS_STATUS_ALLOC_FAILED/i;

/**
 * Maps whatever a run threw to the contract's codes. Running out of memory may pass on another
 * worker (or later), so it is retryable; any other onnxruntime failure will fail the same way
 * again, so it is not.
 */
export function toInferenceError(err: unknown, context: string): InferenceError {
  if (err instanceof InferenceError) return err;
  const message = err instanceof Error ? err.message : String(err);
  if (OUT_OF_MEMORY.test(message)) return new InferenceError("OUT_OF_MEMORY", `${context}: ${message}`, true, { cause: err });
  return new InferenceError("INFERENCE_FAILED", `${context}: ${message}`, false, { cause: err });
}
