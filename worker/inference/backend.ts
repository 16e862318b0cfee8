// The seam between the worker's NATS side and whatever computes items. The worker runtime only
// knows this interface; `OnnxBackend` runs real ONNX models in worker_threads, and a simulated
// backend (load tests and benchmarks only) sleeps for a declared time instead.

import type { ModelManifest } from "../../shared/manifest.js";

export interface InferenceJob {
  /** Unique per attempt (the lease token); used to cancel. */
  id: string;
  model: string;
  /** Already validated against the manifest, defaults applied. */
  params: Record<string, unknown>;
  /** For logs only. */
  batchId: string;
  index: number;
  /** VRAM the coordinator reserved for this item's activations (0 when unknown). */
  vramBytes?: number;
  /** The item's `shoal.run` span (shared/tracing.ts), for the span of the inference it runs in; absent when not traced. */
  traceparent?: string;
}

export interface ArtifactData {
  name: string;
  contentType: string;
  data: Uint8Array;
  /**
   * SHA-256 of `data` (32 bytes) where the backend computed it off the worker's main thread (the
   * inference threads hash what they produce); the worker hashes the rest itself.
   */
  sha256?: Uint8Array;
}

export interface InferenceOutput {
  artifacts: ArtifactData[];
  /** Measured peak memory of the run where the backend can tell; 0 when unknown. */
  peakBytes: number;
}

/** Stable failure codes, the ItemError codes of the contract. */
export type InferenceErrorCode =
  | "INVALID_PARAMS"
  | "MODEL_NOT_FOUND"
  | "OUT_OF_MEMORY"
  | "TIMEOUT"
  | "INFERENCE_FAILED"
  | "CONTENT_POLICY"
  | "CANCELLED";

export class InferenceError extends Error {
  override readonly name = "InferenceError";
  /**
   * OUT_OF_MEMORY only: the activation bytes the item needed, where the backend can tell (0 when
   * it cannot). The worker reports it (vram_used_bytes of the failed outcome) and the coordinator
   * places the item again with that much reserved, instead of guessing by half.
   */
  readonly neededBytes: number;
  constructor(
    readonly code: InferenceErrorCode,
    message: string,
    readonly retryable: boolean,
    options?: { cause?: unknown; neededBytes?: number },
  ) {
    super(message, options);
    this.neededBytes = options?.neededBytes ?? 0;
  }
}

/**
 * What run() needs of a cancellation signal. An AbortSignal fits; the worker passes a
 * CancelToken, because creating an AbortController per item was its largest per-item cost.
 */
export interface CancelSignal {
  readonly aborted: boolean;
  addEventListener(type: "abort", listener: () => void, options?: { once?: boolean }): void;
  removeEventListener(type: "abort", listener: () => void): void;
}

/** A cheap one-shot cancellation signal. */
export class CancelToken implements CancelSignal {
  private listeners: (() => void)[] | undefined;
  aborted = false;

  abort(): void {
    if (this.aborted) return;
    this.aborted = true;
    const ls = this.listeners;
    this.listeners = undefined;
    for (const l of ls ?? []) l();
  }

  addEventListener(_type: "abort", listener: () => void): void {
    if (this.aborted) return;
    (this.listeners ??= []).push(listener);
  }

  removeEventListener(_type: "abort", listener: () => void): void {
    const i = this.listeners?.indexOf(listener) ?? -1;
    if (i >= 0) this.listeners!.splice(i, 1);
  }
}

export interface InferenceBackend {
  /** Loads manifests (built-in and from the model directory) and starts the threads. */
  start(): Promise<void>;
  /** Every model this backend can run. Valid after start(). */
  models(): ModelManifest[];
  /** Models whose sessions are loaded now. */
  residentModels(): string[];
  /**
   * Runs one item. Rejects with InferenceError; a thread that crashes fails its item with
   * INFERENCE_FAILED (retryable) and is replaced. Aborting the signal stops the item as soon as
   * the backend can (between denoising steps for imagegen-tiny) with CANCELLED.
   */
  run(job: InferenceJob, signal: CancelSignal): Promise<InferenceOutput>;
  /** Idempotent: terminates the threads and releases sessions. */
  close(): Promise<void>;
  /**
   * Drops a loaded model's weights (defragmentation). "evicted" when it held them and let go,
   * "not-loaded" when it did not hold them; a string saying why when it will not now (an item
   * of the model is loading or running). Absent: the backend cannot evict.
   */
  evict?(model: string): Promise<"evicted" | "not-loaded" | { refused: string }>;
  /**
   * Models whose weights stay in a VRAM budget device's memory while idle, so the worker counts
   * them as used there (SIMULATED --sim-keep-weights). Absent or empty: on a budget device only
   * models with an item held are counted (the default accounting).
   */
  keptWeights?(): string[];
  /**
   * How many items like this one (model and params) one run could hold: its batch's max size
   * under dynamic batching, 1 when it runs alone. Absent: the backend does not batch. The worker
   * sizes its default --max-in-flight by it (in-flight-limit.ts).
   */
  batchCapacity?(model: string, params: Record<string, unknown>): number;
}
