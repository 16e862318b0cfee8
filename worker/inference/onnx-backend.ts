// The real inference backend: the built-in imagegen-tiny plus any model from the model
// directory, run with onnxruntime-node in a pool of worker threads (run() blocks its thread,
// and the worker's main thread must keep heartbeating). Queued items of one model and shape run
// as one batch where the model's manifest allows it (`max_batch`, see batch-key.ts).

import { availableParallelism } from "node:os";
// sharp (the image encoder the inference threads use) is loaded on the main thread too, as its
// docs advise: a native addon held by the main thread is never unloaded when a thread exits, so
// a replaced thread can load it again.
import "sharp";
import { IMAGEGEN_TINY } from "../../shared/builtin-models.js";
import type { ModelManifest } from "../../shared/manifest.js";
import { InferenceError, type InferenceBackend, type InferenceJob, type InferenceOutput, type CancelSignal } from "./backend.js";
import { batchKey, type BatchKey } from "./batch-key.js";
import { buildImagegenGraphs } from "./imagegen/graphs.js";
import { loadModelDir, type LocalModel } from "./model-dir.js";
import { ThreadPool, type BackendLogger, type PoolJob, type PoolStats } from "./thread-pool.js";

export type { BackendLogger } from "./thread-pool.js";

export interface OnnxBackendOptions {
  /** Extra models: `<modelDir>/<name>/manifest.json` + the .onnx file it names. */
  modelDir?: string | undefined;
  /** Inference threads: items computed at once. */
  threads: number;
  /** onnxruntime execution providers in preference order; default ["cpu"]. */
  executionProviders?: string[] | undefined;
  /** onnxruntime intra-op threads per session; default 1, so threads × this ≤ cores. */
  intraOpThreads?: number | undefined;
  /** Models each thread keeps loaded (LRU); default 4. */
  maxResidentModels?: number | undefined;
  /** How long a cancelled item may take to stop before it is answered CANCELLED anyway; default 10 s. */
  cancelGraceMs?: number | undefined;
  /** How long close() waits for running items; default 10 s. */
  closeGraceMs?: number | undefined;
  /** Dynamic batching where a model's manifest sets max_batch > 1; default true. False runs every item alone. */
  batching?: boolean | undefined;
  logger?: BackendLogger | undefined;
  /** Each model load a thread made, timed (for shoal_worker_model_load_seconds). */
  onModelLoad?: ((model: string, seconds: number) => void) | undefined;
}

/** The options with defaults applied. */
interface CompiledOptions {
  modelDir: string | undefined;
  threads: number;
  executionProviders: string[];
  intraOpThreads: number;
  maxResidentModels: number;
  cancelGraceMs: number;
  closeGraceMs: number;
  batching: boolean;
}

const SILENT: BackendLogger = { info() {}, warn() {}, error() {} };

export class OnnxBackend implements InferenceBackend {
  private readonly options: CompiledOptions;
  private readonly logger: BackendLogger;
  private readonly onModelLoad: ((model: string, seconds: number) => void) | undefined;
  private local: LocalModel[] = [];
  private pool: ThreadPool | undefined;
  private starting: Promise<void> | undefined;
  private closing: Promise<void> | undefined;

  constructor(options: OnnxBackendOptions) {
    this.logger = options.logger ?? SILENT;
    this.onModelLoad = options.onModelLoad;
    const intraOpThreads = options.intraOpThreads ?? 1;
    if (!Number.isInteger(options.threads) || options.threads < 1) throw new RangeError(`threads: must be a positive integer (got ${options.threads})`);
    if (!Number.isInteger(intraOpThreads) || intraOpThreads < 1) throw new RangeError(`intraOpThreads: must be a positive integer (got ${intraOpThreads})`);
    this.options = {
      modelDir: options.modelDir,
      threads: options.threads,
      executionProviders: options.executionProviders?.length ? options.executionProviders : ["cpu"],
      intraOpThreads,
      maxResidentModels: options.maxResidentModels ?? 4,
      cancelGraceMs: options.cancelGraceMs ?? 10_000,
      closeGraceMs: options.closeGraceMs ?? 10_000,
      batching: options.batching ?? true,
    };
    const cores = availableParallelism();
    if (options.threads * intraOpThreads > cores) {
      this.logger.warn({ threads: options.threads, intraOpThreads, cores }, "inference threads × intra-op threads exceed the CPU cores");
    }
  }

  /** Builds the imagegen-tiny graphs, loads the model directory and starts the threads. */
  start(): Promise<void> {
    return (this.starting ??= this.doStart());
  }

  models(): ModelManifest[] {
    return [IMAGEGEN_TINY, ...this.local.map((m) => m.manifest)];
  }

  residentModels(): string[] {
    return this.pool?.residentModels() ?? [];
  }

  /** Releases a model's sessions in the inference threads (defragmentation); refused while an item of it is queued or running. */
  async evict(model: string): Promise<"evicted" | "not-loaded" | { refused: string }> {
    if (this.pool === undefined || this.closing !== undefined) return { refused: "the inference backend is not running" };
    return this.pool.evict(model);
  }

  /** imagegen-tiny denoiser session runs so far: one per step per group, so batching shows here. */
  get denoiserCalls(): number {
    return this.pool?.stats().denoiserCalls ?? 0;
  }

  /** Groups and items handed to the threads so far; fewer groups than items means batching. */
  runStats(): PoolStats {
    return this.pool?.stats() ?? { groups: 0, items: 0, denoiserCalls: 0 };
  }

  async run(job: InferenceJob, signal: CancelSignal): Promise<InferenceOutput> {
    if (this.pool === undefined || this.closing !== undefined) {
      throw new InferenceError("INFERENCE_FAILED", "the inference backend is not running", true);
    }
    if (job.model !== IMAGEGEN_TINY.name && !this.local.some((m) => m.manifest.name === job.model)) {
      throw new InferenceError("MODEL_NOT_FOUND", `model ${job.model} is not served by this worker`, false);
    }
    const result = await this.pool.run({ id: job.id, model: job.model, params: job.params, traceparent: job.traceparent }, signal);
    return { artifacts: result.artifacts, peakBytes: 0 };
  }

  close(): Promise<void> {
    return (this.closing ??= (async () => {
      await this.starting?.catch(() => {});
      await this.pool?.close();
    })());
  }

  batchCapacity(model: string, params: Record<string, unknown>): number {
    if (!this.options.batching) return 1;
    return this.batchKeyOf({ id: "", model, params })?.maxBatch ?? 1;
  }

  private batchKeyOf(job: PoolJob): BatchKey | undefined {
    const manifest = this.models().find((m) => m.name === job.model);
    return manifest === undefined ? undefined : batchKey(manifest, job.params);
  }

  private async doStart(): Promise<void> {
    const { modelDir } = this.options;
    if (modelDir !== undefined && modelDir !== "") {
      const scan = await loadModelDir(modelDir, [IMAGEGEN_TINY.name]);
      for (const bad of scan.problems) {
        this.logger.error({ file: bad.file, problems: bad.problems }, `skipping model: ${bad.file}: ${bad.problems.join("; ")}`);
      }
      this.local = scan.models;
      if (scan.models.length > 0) {
        this.logger.info({ modelDir, models: scan.models.map((m) => m.manifest.name) }, "models loaded from the model directory");
      }
    }
    const pool = new ThreadPool({
      size: this.options.threads,
      entry: new URL("./inference-thread.js", import.meta.url),
      init: {
        imagegen: buildImagegenGraphs(),
        localModels: this.local.map((m) => ({ manifest: m.manifest, modelPath: m.modelPath })),
        executionProviders: this.options.executionProviders,
        intraOpThreads: this.options.intraOpThreads,
        maxResidentModels: this.options.maxResidentModels,
      },
      logger: this.logger,
      cancelGraceMs: this.options.cancelGraceMs,
      closeGraceMs: this.options.closeGraceMs,
      onModelLoad: this.onModelLoad,
      ...(this.options.batching ? { batchKey: (job: PoolJob) => this.batchKeyOf(job) } : {}),
    });
    await pool.start();
    this.pool = pool;
    this.logger.info(
      {
        threads: this.options.threads,
        executionProviders: this.options.executionProviders,
        intraOpThreads: this.options.intraOpThreads,
        batching: this.options.batching,
      },
      "inference threads started",
    );
  }
}
