// The entry point of one inference thread (worker_threads). onnxruntime's run() blocks the
// thread that calls it, so models run here, one group at a time, while the main thread keeps
// heartbeats and NATS flowing. A group is one item, or several queued items of one model and
// shape that run as one batch (dynamic batching). The thread keeps its own sessions (an LRU of
// models) and reports which are loaded with every result.

import { createHash } from "node:crypto";
import { isMainThread, parentPort, workerData } from "node:worker_threads";
import { IMAGEGEN_TINY } from "../../shared/builtin-models.js";
import { InferenceError, type ArtifactData } from "./backend.js";
import { GenericModel, type ItemOutcome } from "./generic-model.js";
import { ImagegenPipeline, imagegenRequest, imagegenShapeKey, type ImagegenRequest } from "./imagegen/pipeline.js";
import { ModelCache } from "./model-cache.js";
import { Runtime, toInferenceError } from "./ort-runtime.js";
import type { FromThread, ItemResult, RunRequest, RunStats, ThreadInit, ToThread } from "./thread-protocol.js";

/**
 * TEST HOOK, for crash-recovery tests only: when SHOAL_TEST_POISON_PROMPT is set and an
 * imagegen-tiny item's prompt equals it, the thread exits abruptly, as a native crash would
 * end it. Nothing else uses this variable.
 */
export const POISON_PROMPT_ENV = "SHOAL_TEST_POISON_PROMPT";

interface ThreadModel {
  /** Runs a group; one outcome per item, in order. `shouldStop(i)` tells whether item i was cancelled. */
  run(items: Record<string, unknown>[], shouldStop: (index: number) => boolean): Promise<{ outcomes: ItemOutcome[]; stats: RunStats }>;
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

  // Loads finished since the last reply, timed here where the sessions are created.
  let loads: { model: string; seconds: number }[] = [];
  const cache = new ModelCache<ThreadModel>(init.maxResidentModels, async (name) => {
    const started = performance.now();
    const model = await loadModel(name);
    loads.push({ model: name, seconds: (performance.now() - started) / 1000 });
    return model;
  });

  async function loadModel(name: string): Promise<ThreadModel> {
    if (name === IMAGEGEN_TINY.name) {
      const pipeline = await ImagegenPipeline.create(init.imagegen, (bytes) => runtime.createSession(bytes));
      return { run: (items, shouldStop) => runImagegen(pipeline, items, shouldStop), release: () => pipeline.release() };
    }
    const entry = local.get(name);
    if (entry === undefined) throw new InferenceError("MODEL_NOT_FOUND", `model ${name} is not served by this worker`, false);
    const model = await GenericModel.load(runtime, entry.manifest, entry.modelPath, (msg, fields) => post({ type: "log", level: "warn", msg, fields }));
    return { run: async (items, shouldStop) => ({ outcomes: await model.runBatch(items, shouldStop), stats: {} }), release: () => model.release() };
  }

  const run = async (req: RunRequest): Promise<void> => {
    const flags = new Int32Array(req.cancel);
    const shouldStop = (index: number): boolean => Atomics.load(flags, index) !== 0;
    const poison = process.env[POISON_PROMPT_ENV];
    if (poison !== undefined && poison !== "" && req.model === IMAGEGEN_TINY.name && req.items.some((item) => item.params.prompt === poison)) {
      process.exit(1);
    }
    let outcomes: ItemOutcome[];
    let stats: RunStats = {};
    try {
      if (req.items.every((_, i) => shouldStop(i))) throw new InferenceError("CANCELLED", "cancelled before it started", false);
      let model: ThreadModel;
      try {
        model = await cache.get(req.model);
      } catch (err) {
        throw err instanceof InferenceError ? err : toInferenceError(err, `loading model ${req.model}`);
      }
      ({ outcomes, stats } = await model.run(
        req.items.map((item) => item.params),
        shouldStop,
      ));
    } catch (err) {
      const e = toInferenceError(err, `running ${req.model}`);
      outcomes = req.items.map(() => e);
    }
    const items = req.items.map((item, i): ItemResult => {
      const outcome = outcomes[i] ?? new InferenceError("INFERENCE_FAILED", `running ${req.model}: no result for item ${item.jobId}`, false);
      if (outcome instanceof InferenceError) {
        return { jobId: item.jobId, ok: false, code: outcome.code, message: outcome.message, retryable: outcome.retryable };
      }
      // Hashed here, beside the encoder, so the worker's main thread (which carries every item's
      // NATS traffic) does not: the digest goes into the object's info and the outcome.
      return { jobId: item.jobId, ok: true, artifacts: outcome.map((a) => ({ ...a, sha256: createHash("sha256").update(a.data).digest() })) };
    });
    // Transfer only buffers an artifact owns whole: a view into a shared pool must be copied.
    const transfer = items
      .flatMap((r) => (r.ok ? r.artifacts : []))
      .filter((a) => a.data.byteOffset === 0 && a.data.byteLength === a.data.buffer.byteLength)
      .map((a) => a.data.buffer)
      .filter((b): b is ArrayBuffer => b instanceof ArrayBuffer);
    post({ type: "done", groupId: req.groupId, items, stats, resident: cache.names(), loads }, [...new Set(transfer)]);
    loads = [];
  };

  // Groups arrive one at a time (the pool sends the next only after a result), but chain them
  // anyway so a protocol slip can never run two at once on one thread.
  let chain = Promise.resolve();
  port.on("message", (msg: ToThread) => {
    if (msg.type === "run") chain = chain.then(() => run(msg));
    else if (msg.type === "evict") {
      chain = chain.then(async () => {
        const had = await cache.remove(msg.model);
        post({ type: "evicted", requestId: msg.requestId, had, resident: cache.names() });
      });
    } else if (msg.type === "close") {
      chain = chain.then(async () => {
        await cache.clear();
        post({ type: "closed" });
        port.close();
      });
    }
  });
  post({ type: "ready" });
}

/**
 * Runs a group of imagegen-tiny items: bad params fail their own item; the rest run as one
 * batch per shape (the pool groups by shape already; the thread does not count on it).
 */
async function runImagegen(
  pipeline: ImagegenPipeline,
  items: Record<string, unknown>[],
  shouldStop: (index: number) => boolean,
): Promise<{ outcomes: ItemOutcome[]; stats: RunStats }> {
  const outcomes: ItemOutcome[] = [];
  const byShape = new Map<string, { index: number; req: ImagegenRequest }[]>();
  items.forEach((params, index) => {
    try {
      const req = imagegenRequest(params);
      const key = imagegenShapeKey(req);
      byShape.set(key, [...(byShape.get(key) ?? []), { index, req }]);
    } catch (err) {
      outcomes[index] = toInferenceError(err, "imagegen-tiny");
    }
  });
  let denoiserCalls = 0;
  for (const members of byShape.values()) {
    const batch = await pipeline.generateBatch(
      members.map((m) => m.req),
      (k) => shouldStop(members[k]!.index),
    );
    denoiserCalls += batch.denoiserCalls;
    members.forEach((m, k) => {
      const image = batch.images[k];
      outcomes[m.index] =
        image === undefined
          ? new InferenceError("CANCELLED", "imagegen-tiny: cancelled", false)
          : ([{ name: "image", contentType: image.contentType, data: image.data }] satisfies ArtifactData[]);
    });
  }
  return { outcomes, stats: { denoiserCalls } };
}
