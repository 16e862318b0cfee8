// The entry point of one inference thread (worker_threads). onnxruntime's run() blocks the
// thread that calls it, so models run here, one item at a time, while the main thread keeps
// heartbeats and NATS flowing. The thread keeps its own sessions (an LRU of models) and reports
// which are loaded with every result.

import { isMainThread, parentPort, workerData } from "node:worker_threads";
import { IMAGEGEN_TINY } from "../../shared/builtin-models.js";
import { InferenceError, type ArtifactData } from "./backend.js";
import { GenericModel } from "./generic-model.js";
import { ImagegenPipeline, imagegenRequest } from "./imagegen/pipeline.js";
import { ModelCache } from "./model-cache.js";
import { Runtime, toInferenceError } from "./ort-runtime.js";
import type { FromThread, RunRequest, RunStats, ThreadInit, ToThread } from "./thread-protocol.js";

/**
 * TEST HOOK, for crash-recovery tests only: when SHOAL_TEST_POISON_PROMPT is set and an
 * imagegen-tiny item's prompt equals it, the thread exits abruptly, as a native crash would
 * end it. Nothing else uses this variable.
 */
export const POISON_PROMPT_ENV = "SHOAL_TEST_POISON_PROMPT";

interface ThreadModel {
  run(params: Record<string, unknown>, shouldStop: () => boolean): Promise<{ artifacts: ArtifactData[]; stats: RunStats }>;
  release(): Promise<void>;
}

if (!isMainThread && parentPort !== null) {
  const port = parentPort;
  const init = workerData as ThreadInit;
  const post = (msg: FromThread, transfer: ArrayBuffer[] = []): void => port.postMessage(msg, transfer);
  const runtime = new Runtime(
    { executionProviders: init.executionProviders, intraOpThreads: init.intraOpThreads },
    (level, msg, fields) => post({ type: "log", level, msg, ...(fields ? { fields } : {}) }),
  );
  const local = new Map(init.localModels.map((m) => [m.manifest.name, m]));

  const cache = new ModelCache<ThreadModel>(init.maxResidentModels, async (name) => {
    if (name === IMAGEGEN_TINY.name) {
      const pipeline = await ImagegenPipeline.create(init.imagegen, (bytes) => runtime.createSession(bytes));
      return {
        async run(params, shouldStop) {
          const result = await pipeline.generate(imagegenRequest(params), shouldStop);
          return {
            artifacts: [{ name: "image", contentType: "image/png", data: result.png }],
            stats: { denoiserCalls: result.denoiserCalls },
          };
        },
        release: () => pipeline.release(),
      };
    }
    const entry = local.get(name);
    if (entry === undefined) throw new InferenceError("MODEL_NOT_FOUND", `model ${name} is not served by this worker`, false);
    const model = await GenericModel.load(runtime, entry.manifest, entry.modelPath);
    return { run: async (params, shouldStop) => ({ artifacts: await model.run(params, shouldStop), stats: {} }), release: () => model.release() };
  });

  const run = async (req: RunRequest): Promise<void> => {
    const flag = new Int32Array(req.cancel);
    const shouldStop = (): boolean => Atomics.load(flag, 0) !== 0;
    const poison = process.env[POISON_PROMPT_ENV];
    if (poison !== undefined && poison !== "" && req.model === IMAGEGEN_TINY.name && req.params.prompt === poison) {
      process.exit(1);
    }
    try {
      if (shouldStop()) throw new InferenceError("CANCELLED", "cancelled before it started", false);
      let model: ThreadModel;
      try {
        model = await cache.get(req.model);
      } catch (err) {
        throw err instanceof InferenceError ? err : toInferenceError(err, `loading model ${req.model}`);
      }
      const { artifacts, stats } = await model.run(req.params, shouldStop);
      // Transfer only buffers an artifact owns whole: a view into a shared pool must be copied.
      const transfer = artifacts
        .filter((a) => a.data.byteOffset === 0 && a.data.byteLength === a.data.buffer.byteLength)
        .map((a) => a.data.buffer)
        .filter((b): b is ArrayBuffer => b instanceof ArrayBuffer);
      post({ type: "done", jobId: req.jobId, artifacts, stats, resident: cache.names() }, [...new Set(transfer)]);
    } catch (err) {
      const e = toInferenceError(err, `running ${req.model}`);
      post({ type: "failed", jobId: req.jobId, code: e.code, message: e.message, retryable: e.retryable, resident: cache.names() });
    }
  };

  // Items arrive one at a time (the pool sends the next only after a result), but chain them
  // anyway so a protocol slip can never run two at once on one thread.
  let chain = Promise.resolve();
  port.on("message", (msg: ToThread) => {
    if (msg.type === "run") chain = chain.then(() => run(msg));
    else if (msg.type === "close") {
      chain = chain.then(async () => {
        await cache.clear();
        post({ type: "closed" });
        port.close();
      });
    }
  });
  post({ type: "ready" });
}
