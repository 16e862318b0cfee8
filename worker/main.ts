import { ConfigError } from "../shared/errors.js";
import type { Logger } from "../shared/logger.js";
import { startMetricsServer } from "../shared/metrics-server.js";
import type { InferenceBackend } from "./inference/backend.js";
import { installCrashGuard } from "../shared/crash-guard.js";
import { WorkerMetrics } from "./metrics.js";
import type { WorkerOptions } from "./options.js";
import { SimulatedBackend } from "./simulated-backend.js";
import { ShoalWorker } from "./worker.js";

export interface RunningWorker {
  worker: ShoalWorker;
  metricsPort: number | undefined;
  /** Drains (in-flight items finish within the grace period), then stops. */
  stop(): Promise<void>;
  /** Resolves when the worker stopped on its own (drained through FleetService.DrainWorker). */
  done: Promise<void>;
}

/** onnxruntime is loaded only when a real backend is wanted (simulated fleets skip it). */
export async function createBackend(opts: WorkerOptions, log: Logger, metrics?: WorkerMetrics): Promise<InferenceBackend> {
  if (opts.simulate) {
    log.warn("SIMULATED backend: items sleep for work_ms instead of running a model");
    return new SimulatedBackend([], { speed: opts.simSpeed, loadBytesPerS: opts.simLoadBytesPerS, vramBytes: opts.vramBytes, keepWeights: opts.simKeepWeights });
  }
  const { OnnxBackend } = await import("./inference/onnx-backend.js");
  const executionProviders = await checkedProviders(opts, log);
  return new OnnxBackend({ modelDir: opts.modelDir, threads: opts.threads, executionProviders, logger: log, onModelLoad: (model, seconds) => metrics?.modelLoaded(model, seconds) });
}

/**
 * `--execution-provider cuda` must really run on the GPU this worker reports (`--gpu N`, or the
 * first one): checked once here, so a worker without the CUDA provider refuses to start with
 * the way to install it rather than serving slowly from the CPU.
 */
async function checkedProviders(opts: WorkerOptions, log: Logger): Promise<string[]> {
  const { cudaDevice, probeCuda } = await import("./inference/cuda-provider.js");
  if (!opts.executionProviders.some((p) => cudaDevice(p) !== undefined)) return opts.executionProviders;
  if (opts.gpu.kind === "none") throw new ConfigError("--execution-provider", "cuda needs a GPU, but --gpu is none");
  const device = opts.gpu.kind === "index" ? opts.gpu.index : 0;
  await probeCuda(device);
  log.info({ device }, "onnxruntime CUDA execution provider loaded");
  return opts.executionProviders.map((p) => (cudaDevice(p) !== undefined ? `cuda:${device}` : p));
}

export async function startWorkerProcess(opts: WorkerOptions, log: Logger): Promise<RunningWorker> {
  const metrics = new WorkerMetrics(opts.id, undefined, opts.eventLoopResolutionMs);
  const guard = installCrashGuard(log, (kind) => metrics.unexpectedError(kind));
  const worker = new ShoalWorker(opts, await createBackend(opts, log, metrics), log, metrics);
  await worker.start();
  const http = opts.metricsPort > 0 ? await startMetricsServer(metrics.registry, opts.metricsPort, opts.metricsHost ?? "127.0.0.1") : undefined;
  let stopping: Promise<void> | undefined;
  return {
    worker,
    metricsPort: http?.port,
    done: worker.stopped.then(() => http?.close()),
    stop: () =>
      (stopping ??= (async () => {
        await worker.drain();
        await worker.close();
        await http?.close();
        guard.uninstall();
      })()),
  };
}
