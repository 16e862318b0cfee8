import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { decode } from "fast-png";
import { IMAGEGEN_TINY } from "../../shared/builtin-models.js";
import { checkManifest, type ModelManifest } from "../../shared/manifest.js";
import { InferenceError, type InferenceJob, type InferenceOutput } from "../../worker/inference/backend.js";
import { batchKey, maxBatchForPixels } from "../../worker/inference/batch-key.js";
import { POISON_PROMPT_ENV } from "../../worker/inference/inference-thread.js";
import { loadModelDir } from "../../worker/inference/model-dir.js";
import { GraphBuilder } from "../../worker/inference/onnx-builder.js";
import { OnnxBackend } from "../../worker/inference/onnx-backend.js";

// Crash-recovery hook of the inference thread: items with this prompt kill their thread.
const POISON = `poison-${process.pid}`;
process.env[POISON_PROMPT_ENV] = POISON;

let dir: string;
let backend: OnnxBackend;
let jobs = 0;
const job = (model: string, params: Record<string, unknown>): InferenceJob => ({ id: `job-${++jobs}`, model, params, batchId: "b-batching", index: jobs });
const live = () => new AbortController().signal;
const isCode = (code: string, retryable?: boolean) => (err: unknown) =>
  err instanceof InferenceError && err.code === code && (retryable === undefined || err.retryable === retryable);
const png = (out: InferenceOutput): Buffer => Buffer.from(out.artifacts[0]!.data);
/** Whether a promise has settled yet; lets a test check what finished before what. */
function tracked<T>(p: Promise<T>): { promise: Promise<T>; settled: () => boolean } {
  let done = false;
  const settle = () => {
    done = true;
  };
  p.then(settle, settle);
  return { promise: p, settled: () => done };
}
/** Waits until the backend has handed `groups` more groups to its threads than `before`. */
async function groupsStarted(b: OnnxBackend, before: number, groups: number): Promise<void> {
  for (let i = 0; b.runStats().groups < before + groups; i++) {
    if (i > 2000) throw new Error(`only ${b.runStats().groups - before} of ${groups} groups started`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** 64×64 imagegen-tiny params; prompt, seed, guidance and style differ per i. */
const SMALL = { width: 64, height: 64, steps: 2 };
const item = (i: number, extra: Record<string, unknown> = {}): Record<string, unknown> => ({
  ...SMALL,
  prompt: ["a red kite", "a lighthouse at dusk", "two dogs on a beach", "mountains under a starry sky", "a bowl of fruit"][i % 5]!,
  seed: 100 + i,
  guidance_scale: 1 + i * 1.7,
  ...(i % 3 === 0 ? { style: i % 2 === 0 ? "watercolor" : "photorealistic" } : {}),
  ...extra,
});
/**
 * With one thread, an item submitted to an idle backend starts at once; items submitted in the
 * same tick behind it queue, and group when it is done.
 */
const BLOCKER = { prompt: "the blocker", width: 72, height: 64, steps: 1 };

/** y = 3·x on a float32 [batch, n]: a generic model whose first input dim is the batch (or fixed at 1). */
function rowScaleModel(batch: number | string = "batch"): Uint8Array {
  const g = new GraphBuilder("rowscale");
  const x = g.input("x", "float32", [batch, "n"]);
  const y = g.op("Mul", [x, g.initializer("factor", "float32", [1], [3])], {}, "y");
  g.output(y, "float32", [batch, "n"]);
  return g.serialize();
}

function rowScaleManifest(name: string, maxBatch: number, shape: number[] = [1, -1]): ModelManifest {
  return {
    name,
    version: "1",
    file: "model.onnx",
    params: { x: { type: "tensor", required: true } },
    inputs: [{ name: "x", param: "x", dtype: "float32", shape }],
    outputs: [{ name: "y", artifact: "y" }],
    vram: { weights_bytes: 1024, activation_bytes: 1024 },
    max_batch: maxBatch,
  };
}

async function writeModel(root: string, manifest: ModelManifest, model = rowScaleModel()): Promise<void> {
  await mkdir(join(root, manifest.name), { recursive: true });
  await writeFile(join(root, manifest.name, "model.onnx"), model);
  await writeFile(join(root, manifest.name, "manifest.json"), JSON.stringify(manifest));
}

/** What the backend ran while `body` did: groups, items and denoiser calls. */
async function counted<T>(b: OnnxBackend, body: () => Promise<T>): Promise<{ result: T; groups: number; items: number; denoiserCalls: number }> {
  const before = b.runStats();
  const result = await body();
  const now = b.runStats();
  return { result, groups: now.groups - before.groups, items: now.items - before.items, denoiserCalls: now.denoiserCalls - before.denoiserCalls };
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "shoal-batching-"));
  await writeModel(dir, rowScaleManifest("rowscale", 4));
  await writeModel(dir, rowScaleManifest("rowscale-alone", 1));
  // Claims max_batch 4, but its graph takes a batch of exactly one.
  await writeModel(dir, rowScaleManifest("rowscale-fixed", 4), rowScaleModel(1));
  backend = new OnnxBackend({ modelDir: dir, threads: 1, cancelGraceMs: 5_000 });
  await backend.start();
});

after(async () => {
  await backend.close();
  await rm(dir, { recursive: true, force: true });
});

test("dynamic batching - max_batch is an optional integer ≥ 1; imagegen-tiny sets it", () => {
  const base = rowScaleManifest("m", 2);
  assert.deepEqual(checkManifest(base), []);
  assert.deepEqual(checkManifest({ ...base, max_batch: undefined }), []);
  for (const bad of [0, -1, 2.5, "4"]) {
    assert.ok(checkManifest({ ...base, max_batch: bad }).some((p) => p.startsWith("max_batch:")), `max_batch ${JSON.stringify(bad)} was accepted`);
  }
  assert.ok((IMAGEGEN_TINY.max_batch ?? 1) > 1);
  assert.deepEqual(checkManifest(IMAGEGEN_TINY), []);
});

test("dynamic batching - batch keys: imagegen by width, height and steps; generic by input dims; none without max_batch", () => {
  const key = (params: Record<string, unknown>) => batchKey(IMAGEGEN_TINY, params)?.key;
  assert.equal(key(item(0)), key(item(1)), "prompt, seed, guidance and style do not change the key");
  assert.notEqual(key(item(0)), key(item(0, { width: 72 })));
  assert.notEqual(key(item(0)), key(item(0, { height: 72 })));
  assert.notEqual(key(item(0)), key(item(0, { steps: 3 })));
  assert.equal(batchKey(IMAGEGEN_TINY, item(0))?.maxBatch, IMAGEGEN_TINY.max_batch);
  assert.equal(batchKey(IMAGEGEN_TINY, { prompt: "" }), undefined, "bad params run alone");
  assert.equal(batchKey({ ...IMAGEGEN_TINY, max_batch: 1 }, item(0)), undefined);

  const generic = rowScaleManifest("g", 4);
  assert.equal(batchKey(generic, { x: [1, 2, 3] })?.key, batchKey(generic, { x: [4, 5, 6] })?.key);
  assert.notEqual(batchKey(generic, { x: [1, 2, 3] })?.key, batchKey(generic, { x: [1, 2] })?.key);
  assert.equal(batchKey(rowScaleManifest("g", 1), { x: [1] }), undefined);
  assert.equal(batchKey(rowScaleManifest("g", 4, [-1]), { x: [1] }), undefined, "the first dim is not a batch dim");
});

test("dynamic batching - max_batch_pixels bounds an image batch by its pixels; larger images run alone", () => {
  const capped = { ...IMAGEGEN_TINY, max_batch: 8, max_batch_pixels: 4 * 256 * 256 };
  assert.equal(batchKey(capped, item(0, { width: 128, height: 128 }))?.maxBatch, 8, "16 fit; max_batch bounds");
  assert.equal(batchKey(capped, item(0, { width: 256, height: 256 }))?.maxBatch, 4);
  assert.equal(batchKey(capped, item(0, { width: 384, height: 256 }))?.maxBatch, 2, "floor(4 × 65536 / 98304)");
  assert.equal(batchKey(capped, item(0, { width: 512, height: 512 })), undefined, "over the cap: alone");
  assert.equal(maxBatchForPixels(8, undefined, 1 << 20), 8, "no cap: max_batch");
  assert.equal(maxBatchForPixels(8, 100, 1000), 1);
  for (const bad of [0, -1, 2.5, "4"]) {
    assert.ok(checkManifest({ ...IMAGEGEN_TINY, max_batch_pixels: bad }).some((p) => p.startsWith("max_batch_pixels:")), `max_batch_pixels ${JSON.stringify(bad)} was accepted`);
  }
});

test("dynamic batching - a generic model cannot set max_batch_pixels", async () => {
  const d = await mkdtemp(join(tmpdir(), "shoal-batching-dir-"));
  try {
    await writeModel(d, { ...rowScaleManifest("pixels", 4), max_batch_pixels: 1000 });
    const scan = await loadModelDir(d);
    assert.deepEqual(scan.models.map((m) => m.manifest.name), []);
    assert.match(scan.problems[0]!.problems.join(" | "), /max_batch_pixels: only image models/);
  } finally {
    await rm(d, { recursive: true, force: true });
  }
});

test("dynamic batching - a model whose first input dim is not the batch dim cannot set max_batch", async () => {
  const d = await mkdtemp(join(tmpdir(), "shoal-batching-dir-"));
  try {
    await writeModel(d, rowScaleManifest("vector", 4, [-1]));
    await writeModel(d, rowScaleManifest("rows", 4));
    const scan = await loadModelDir(d);
    assert.deepEqual(scan.models.map((m) => m.manifest.name), ["rows"]);
    assert.match(scan.problems[0]!.problems.join(" | "), /max_batch: 4 needs every input's first dimension to be the batch dimension/);
  } finally {
    await rm(d, { recursive: true, force: true });
  }
});

test("dynamic batching - queued items of one shape run as one group: one denoiser call per step for all", async () => {
  const n = 5;
  const { result, groups, items, denoiserCalls } = await counted(backend, () =>
    Promise.all([backend.run(job("imagegen-tiny", BLOCKER), live()), ...Array.from({ length: n }, (_, i) => backend.run(job("imagegen-tiny", item(i)), live()))]),
  );
  assert.equal(items, 1 + n);
  assert.equal(groups, 2, "the blocker alone, then the five queued items together");
  assert.equal(denoiserCalls, BLOCKER.steps + SMALL.steps, `${denoiserCalls} denoiser calls; ${SMALL.steps * n} without batching`);
  assert.ok(denoiserCalls < BLOCKER.steps + SMALL.steps * n);
  for (const out of result.slice(1)) {
    const img = decode(out.artifacts[0]!.data);
    assert.deepEqual([img.width, img.height], [64, 64]);
  }
  assert.equal(new Set(result.slice(1).map((out) => png(out).toString("hex"))).size, n, "each item drew its own picture");
});

test("dynamic batching - an image is byte-identical alone and in batches of any size", async () => {
  const n = 8;
  const params = Array.from({ length: n }, (_, i) => item(i));
  const alone: Buffer[] = [];
  for (const p of params) alone.push(png(await backend.run(job("imagegen-tiny", p), live())));
  // All eight in one group, then groups of three (3, 3, 2): every batch size gives the same bytes.
  for (const size of [8, 3]) {
    for (let start = 0; start < n; start += size) {
      const slice = params.slice(start, start + size);
      const { result, groups } = await counted(backend, () =>
        Promise.all([backend.run(job("imagegen-tiny", BLOCKER), live()), ...slice.map((p) => backend.run(job("imagegen-tiny", p), live()))]),
      );
      assert.equal(groups, slice.length > 1 ? 2 : 1 + slice.length);
      result.slice(1).forEach((out, k) => assert.ok(png(out).equals(alone[start + k]!), `item ${start + k} differs in a batch of ${slice.length}`));
    }
  }
});

test("dynamic batching - items of different shapes are not grouped; the head of the queue decides", async () => {
  const order: string[] = [];
  const submit = (name: string, params: Record<string, unknown>) =>
    backend.run(job("imagegen-tiny", params), live()).then((out) => {
      order.push(name);
      return out;
    });
  const { groups, items, denoiserCalls } = await counted(backend, () =>
    Promise.all([
      submit("blocker", BLOCKER),
      submit("a", item(0)),
      submit("wide", item(1, { width: 72 })),
      submit("c", item(2)),
      submit("more-steps", item(3, { steps: 3 })),
      submit("e", item(4)),
    ]),
  );
  assert.equal(items, 6);
  assert.equal(groups, 4, "blocker; a + c + e; wide; more-steps");
  assert.equal(denoiserCalls, 1 + 2 + 2 + 3);
  assert.deepEqual(order, ["blocker", "a", "c", "e", "wide", "more-steps"]);
});

test("dynamic batching - a model with max_batch 1 never groups; one with max_batch 4 groups up to 4", async () => {
  const rows = (i: number) => ({ x: [i, i + 0.5, -1 - i] });
  const { result, groups, items } = await counted(backend, () =>
    Promise.all([
      backend.run(job("imagegen-tiny", BLOCKER), live()),
      ...Array.from({ length: 6 }, (_, i) => [backend.run(job("rowscale-alone", rows(i)), live()), backend.run(job("rowscale", rows(i)), live())]).flat(),
    ]),
  );
  assert.equal(items, 13);
  // blocker; rowscale-alone × 6 one by one; rowscale as a group of 4, then 2.
  assert.equal(groups, 1 + 6 + 2);
  result.slice(1).forEach((out, k) => {
    const i = Math.floor(k / 2);
    assert.deepEqual(JSON.parse(new TextDecoder().decode(out.artifacts[0]!.data)), { dims: [1, 3], type: "float32", data: [3 * i, 3 * (i + 0.5), 3 * (-1 - i)] });
  });
});

test("dynamic batching - a generic model whose graph refuses a batch runs the group's items one at a time", async () => {
  for (let round = 0; round < 2; round++) {
    const { result, groups } = await counted(backend, () =>
      Promise.all([backend.run(job("imagegen-tiny", BLOCKER), live()), ...[1, 2, 3].map((i) => backend.run(job("rowscale-fixed", { x: [i, -i] }), live()))]),
    );
    assert.equal(groups, 2);
    result.slice(1).forEach((out, k) => {
      assert.deepEqual(JSON.parse(new TextDecoder().decode(out.artifacts[0]!.data)), { dims: [1, 2], type: "float32", data: [3 * (k + 1), -3 * (k + 1)] });
    });
  }
});

test("dynamic batching - with batching off, nothing groups", async () => {
  const b = new OnnxBackend({ threads: 1, batching: false });
  await b.start();
  try {
    const { groups, denoiserCalls } = await counted(b, () =>
      Promise.all([b.run(job("imagegen-tiny", BLOCKER), live()), ...[0, 1, 2].map((i) => b.run(job("imagegen-tiny", item(i)), live()))]),
    );
    assert.equal(groups, 4);
    assert.equal(denoiserCalls, 1 + 3 * SMALL.steps);
  } finally {
    await b.close();
  }
});

test("dynamic batching - an item cancelled while queued is answered at once and left out of its group", async () => {
  const controllers = [0, 1, 2, 3].map(() => new AbortController());
  const { result, groups, items } = await counted(backend, async () => {
    const blocker = tracked(backend.run(job("imagegen-tiny", BLOCKER), live()));
    const queued = controllers.map((c, i) => backend.run(job("imagegen-tiny", item(i)), c.signal));
    controllers[1]!.abort();
    await assert.rejects(queued[1]!, isCode("CANCELLED", false));
    // Answered without waiting for a thread: the blocker holding the only one is still running.
    assert.equal(blocker.settled(), false, "the cancel was answered only after the blocker finished");
    return Promise.all([blocker.promise, ...queued.filter((_, i) => i !== 1)]);
  });
  assert.equal(result.length, 4);
  assert.equal(items, 1 + 3, "the cancelled item never reached a thread");
  assert.equal(groups, 2);
});

test("dynamic batching - cancelling one item of a running group answers it at once; the rest finish unchanged", async () => {
  const long = (i: number) => item(i, { width: 128, height: 128, steps: 40 });
  const controllers = [0, 1, 2, 3].map(() => new AbortController());
  const before = backend.runStats().groups;
  const blocker = backend.run(job("imagegen-tiny", BLOCKER), live());
  const running = controllers.map((c, i) => tracked(backend.run(job("imagegen-tiny", long(i)), c.signal)));
  await blocker;
  await groupsStarted(backend, before, 2); // the four now run as one group
  controllers[2]!.abort();
  await assert.rejects(running[2]!.promise, isCode("CANCELLED", false));
  // Answered at once, not when the group is done: none of the other three has finished.
  assert.deepEqual(running.map((r) => r.settled()), [false, false, true, false], "the cancel waited for the group");
  const batched = await Promise.all(running.filter((_, i) => i !== 2).map((r) => r.promise));
  // The group went on without the cancelled item, and that changed nothing for the others.
  const alone: Buffer[] = [];
  for (const i of [0, 1, 3]) alone.push(png(await backend.run(job("imagegen-tiny", long(i)), live())));
  batched.forEach((out, k) => assert.ok(png(out).equals(alone[k]!), `item ${[0, 1, 3][k]} changed`));
});

test("dynamic batching - cancelling every item of a running group stops it between steps", async () => {
  const controllers = [0, 1, 2].map(() => new AbortController());
  const params = (i: number) => item(i, { width: 256, height: 256, steps: 50 });
  const { denoiserCalls } = await counted(backend, async () => {
    const before = backend.runStats().groups;
    const blocker = backend.run(job("imagegen-tiny", BLOCKER), live());
    const running = controllers.map((c, i) => backend.run(job("imagegen-tiny", params(i)), c.signal));
    await blocker;
    await groupsStarted(backend, before, 2);
    for (const c of controllers) c.abort();
    await Promise.all(running.map((p) => assert.rejects(p, isCode("CANCELLED", false))));
    // The only thread is free again. It takes this item only once the group has ended, so the
    // group's denoiser calls are counted by now even if its cancel had been answered early.
    const out = await backend.run(job("imagegen-tiny", item(0)), live());
    assert.equal(out.artifacts[0]!.contentType, "image/png");
  });
  // Stopped between steps, not run to the end: fewer than its 50 steps ran.
  const groupSteps = denoiserCalls - BLOCKER.steps - SMALL.steps;
  assert.ok(groupSteps < 50, `the group ran ${groupSteps} of 50 steps`);
});

test("dynamic batching - a thread that dies running a group is replaced; its items run again alone and only the poison one fails", async () => {
  const { result, groups } = await counted(backend, () =>
    Promise.allSettled([
      backend.run(job("imagegen-tiny", BLOCKER), live()),
      backend.run(job("imagegen-tiny", item(0)), live()),
      backend.run(job("imagegen-tiny", item(1, { prompt: POISON })), live()),
      backend.run(job("imagegen-tiny", item(2)), live()),
    ]),
  );
  assert.deepEqual(result.map((r) => r.status), ["fulfilled", "fulfilled", "rejected", "fulfilled"]);
  assert.ok(isCode("INFERENCE_FAILED", true)((result[2] as PromiseRejectedResult).reason));
  assert.equal(groups, 1 + 1 + 3, "blocker; the group that crashed; each of its items alone");
});
