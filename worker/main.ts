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
    return new SimulatedBackend([], { speed: opts.simSpeed, loadBytesPerS: opts.simLoadBytesPerS, vramBytes: opts.vramBytes });
  }
  const { OnnxBackend } = await import("./inference/onnx-backend.js");
  return new OnnxBackend({ modelDir: opts.modelDir, threads: opts.threads, executionProviders: opts.executionProviders, logger: log, onModelLoad: (model, seconds) => metrics?.modelLoaded(model, seconds) });
}

export async function startWorkerProcess(opts: WorkerOptions, log: Logger): Promise<RunningWorker> {
  const metrics = new WorkerMetrics(opts.id);
  const guard = installCrashGuard(log, (kind) => metrics.unexpectedError(kind));
  const worker = new ShoalWorker(opts, await createBackend(opts, log, metrics), log, metrics);
  await worker.start();
  const http = opts.metricsPort > 0 ? await startMetricsServer(metrics.registry, opts.metricsPort) : undefined;
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
