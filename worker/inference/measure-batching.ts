// Measures what dynamic batching buys: items/s for a queue of imagegen-tiny items of one shape
// on one inference thread, with batching on (max_batch from the manifest) and off. Not a test:
// timings are printed, never asserted.
//
//   node dist/worker/inference/measure-batching.js [items=16] [size=128] [steps=4] [rounds=3] [pixel caps]
//
// pixel caps: comma-separated max_batch_pixels values to run batching with (0 = no cap, batches
// of max_batch), in place of imagegen-tiny's own; how its 8 × 256 × 256 was chosen.

import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { IMAGEGEN_TINY } from "../../shared/builtin-models.js";
import type { ModelManifest } from "../../shared/manifest.js";
import type { InferenceJob } from "./backend.js";
import { OnnxBackend } from "./onnx-backend.js";

export interface BatchingMeasurement {
  batching: boolean;
  items: number;
  seconds: number;
  itemsPerSecond: number;
  groups: number;
  denoiserCalls: number;
}

export async function measureBatching(options: { items: number; size: number; steps: number; batching: boolean; maxBatchPixels?: number }): Promise<BatchingMeasurement> {
  // Batch keys are computed on this (main) thread from the built-in manifest object, so a
  // measuring override is set on it for the run and put back after.
  const manifest = IMAGEGEN_TINY as ModelManifest;
  const own = manifest.max_batch_pixels;
  if (options.maxBatchPixels !== undefined) manifest.max_batch_pixels = options.maxBatchPixels > 0 ? options.maxBatchPixels : undefined;
  const backend = new OnnxBackend({ threads: 1, batching: options.batching });
  await backend.start();
  try {
    const job = (i: number, tag: string): InferenceJob => ({
      id: `${tag}-${i}`,
      model: "imagegen-tiny",
      params: { prompt: `a measured picture number ${i}`, seed: i, width: options.size, height: options.size, steps: options.steps },
      batchId: "measure",
      index: i,
    });
    // All queued at once; the first starts alone (the thread is idle), the rest queue behind it.
    const queueAll = (tag: string): Promise<unknown> =>
      Promise.all(Array.from({ length: options.items }, (_, i) => backend.run(job(i, tag), new AbortController().signal)));
    // Warm up with the same queue, twice: load the sessions, let onnxruntime size its buffers
    // for every batch size the measured run will use, and let V8 optimise the batch code.
    await queueAll("warm-1");
    await queueAll("warm-2");
    const before = backend.runStats();
    const started = performance.now();
    await queueAll("item");
    const seconds = (performance.now() - started) / 1000;
    const after = backend.runStats();
    return {
      batching: options.batching,
      items: options.items,
      seconds,
      itemsPerSecond: options.items / seconds,
      groups: after.groups - before.groups,
      denoiserCalls: after.denoiserCalls - before.denoiserCalls,
    };
  } finally {
    await backend.close();
    manifest.max_batch_pixels = own;
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  const [items = 16, size = 128, steps = 4, rounds = 3] = process.argv.slice(2, 6).map(Number);
  const caps: (number | undefined)[] = process.argv[6] ? process.argv[6].split(",").map(Number) : [undefined];
  const modes = [{ batching: false, cap: undefined as number | undefined }, ...caps.map((cap) => ({ batching: true, cap }))];
  for (let round = 1; round <= rounds; round++) {
    for (const { batching, cap } of modes) {
      const m = await measureBatching({ items, size, steps, batching, ...(cap !== undefined ? { maxBatchPixels: cap } : {}) });
      process.stdout.write(
        `round ${round} batching ${batching ? `on (max_batch_pixels ${cap === undefined ? "own" : cap || "none"})` : "off"}: ${m.items} items ${size}x${size} steps ${steps} in ${m.seconds.toFixed(3)} s = ` +
          `${m.itemsPerSecond.toFixed(2)} items/s (${m.groups} groups, ${m.denoiserCalls} denoiser runs)\n`,
      );
    }
  }
}
