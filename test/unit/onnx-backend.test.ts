import { after, before, test } from "node:test";
import { performance } from "node:perf_hooks";
import assert from "node:assert/strict";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { decode } from "fast-png";
import { ModelProto } from "../../proto/gen/onnx/onnx.js";
import { InferenceError, type InferenceJob } from "../../worker/inference/backend.js";
import { buildScaleModel, fixtureManifest, writeFixtureModel } from "../../worker/inference/fixtures.js";
import { POISON_PROMPT_ENV } from "../../worker/inference/inference-thread.js";
import { loadModelDir } from "../../worker/inference/model-dir.js";
import { GraphBuilder, int, ONNX_IR_VERSION, ONNX_OPSET } from "../../worker/inference/onnx-builder.js";
import { OnnxBackend } from "../../worker/inference/onnx-backend.js";

// Crash-recovery hook of the inference thread: items with this prompt kill their thread.
const POISON = `poison-${process.pid}`;
process.env[POISON_PROMPT_ENV] = POISON;

let dir: string;
let backend: OnnxBackend;
const logged: { level: string; obj: object; msg?: string }[] = [];
const logger = {
  info: (obj: object, msg?: string) => logged.push({ level: "info", obj, msg }),
  warn: (obj: object, msg?: string) => logged.push({ level: "warn", obj, msg }),
  error: (obj: object, msg?: string) => logged.push({ level: "error", obj, msg }),
};
let jobs = 0;
const job = (model: string, params: Record<string, unknown>): InferenceJob => ({ id: `job-${++jobs}`, model, params, batchId: "b-test", index: jobs });
const live = () => new AbortController().signal;
const isCode = (code: string, retryable?: boolean) => (err: unknown) =>
  err instanceof InferenceError && err.code === code && (retryable === undefined || err.retryable === retryable);
/** Long enough to still be running when the test aborts it (a few seconds uninterrupted). */
const LONG = { prompt: "a long one", width: 1024, height: 1024, steps: 50 };
/** Whether a promise has settled yet; lets a test check what finished before what. */
function tracked<T>(p: Promise<T>): { promise: Promise<T>; settled: () => boolean } {
  let done = false;
  const settle = () => {
    done = true;
  };
  p.then(settle, settle);
  return { promise: p, settled: () => done };
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "shoal-models-"));
  await writeFixtureModel(dir);
  await writeFixtureModel(dir, { name: "big-one", weightsBytes: 20e9, activationBytes: 4e9 });
  await mkdir(join(dir, "broken"));
  await writeFile(join(dir, "broken", "manifest.json"), JSON.stringify({ name: "Broken Model", params: {}, vram: { weights_bytes: -5 } }));
  backend = new OnnxBackend({ modelDir: dir, threads: 2, logger, cancelGraceMs: 5_000 });
  await backend.start();
});

after(async () => {
  await backend.close();
  await rm(dir, { recursive: true, force: true });
});

test("onnx builder - writes a model onnxruntime accepts, with IR 8 and opset 17", async () => {
  const bytes = buildScaleModel(3);
  const model = ModelProto.decode(bytes);
  assert.equal(model.irVersion, ONNX_IR_VERSION);
  assert.deepEqual(model.opsetImport, [{ domain: "", version: ONNX_OPSET }]);
  assert.equal(model.graph?.input[0]?.type?.value?.$case, "tensorType");
  const g = new GraphBuilder("dup");
  g.input("x", "float32", [1]);
  assert.throws(() => g.input("x", "float32", [1]), /defined twice/);
  assert.throws(() => g.initializer("w", "float32", [2, 2], [1, 2, 3]), /3 values/);
  assert.throws(() => g.op("Foo", ["x"], { n: int(1.5) }), /not an integer/);
});

test("onnx backend - serves the built-in model and the valid models of the directory", () => {
  const names = backend.models().map((m) => m.name).sort();
  assert.deepEqual(names, ["big-one", "imagegen-tiny", "scale2"]);
  const big = backend.models().find((m) => m.name === "big-one")!;
  assert.equal(big.vram.weights_bytes, 20e9);
  assert.equal(big.vram.activation_bytes, 4e9);
});

test("onnx backend - a bad manifest is skipped and logged with its file and problems", () => {
  const entry = logged.find((l) => l.level === "error" && JSON.stringify(l.obj).includes("broken"));
  assert.ok(entry, JSON.stringify(logged));
  const { file, problems } = entry.obj as { file: string; problems: string[] };
  assert.equal(file, join(dir, "broken", "manifest.json"));
  assert.ok(problems.some((p) => p.startsWith("name:")));
  assert.ok(problems.some((p) => p.startsWith("version:")));
  assert.ok(problems.some((p) => p.startsWith("vram.weights_bytes:")));
  assert.match(entry.msg ?? "", /broken.manifest\.json/);
});

test("model dir - each kind of bad model is reported, the good ones kept", async () => {
  const d = await mkdtemp(join(tmpdir(), "shoal-modeldir-"));
  try {
    await writeFixtureModel(d, { name: "good" });
    const write = async (name: string, manifest: string) => {
      await mkdir(join(d, name), { recursive: true });
      await writeFile(join(d, name, "manifest.json"), manifest);
    };
    await write("not-json", "{ nope");
    await mkdir(join(d, "no-manifest"));
    await write("no-file", JSON.stringify({ ...fixtureManifest({ name: "no-file" }), file: "missing.onnx" }));
    await write("escape", JSON.stringify({ ...fixtureManifest({ name: "escape" }), file: "../good/model.onnx" }));
    await write("builtin", JSON.stringify({ ...fixtureManifest({ name: "imagegen-tiny" }) }));
    await writeFile(join(d, "builtin", "model.onnx"), buildScaleModel());
    await write("two-unknowns", JSON.stringify({ ...fixtureManifest({ name: "two" }), inputs: [{ name: "x", param: "y", dtype: "float32", shape: [-1, -1] }] }));
    await writeFile(join(d, "README.md"), "not a model");

    const scan = await loadModelDir(d, ["imagegen-tiny"]);
    assert.deepEqual(scan.models.map((m) => m.manifest.name), ["good"]);
    assert.equal(scan.models[0]!.modelPath, join(d, "good", "model.onnx"));
    const byDir = Object.fromEntries(scan.problems.map((p) => [p.file.split("/").at(-2), p.problems.join(" | ")]));
    assert.match(byDir["not-json"]!, /not valid JSON/);
    assert.match(byDir["no-manifest"]!, /manifest\.json is missing/);
    assert.match(byDir["no-file"]!, /missing\.onnx does not exist/);
    assert.match(byDir["escape"]!, /inside the model's directory/);
    assert.match(byDir["builtin"]!, /already used by a built-in model/);
    assert.match(byDir["two-unknowns"]!, /"y" is not a declared param/);

    const missing = await loadModelDir(join(d, "nowhere"));
    assert.match(missing.problems[0]!.problems[0]!, /cannot be read/);
  } finally {
    await rm(d, { recursive: true, force: true });
  }
});

test("model dir - the committed scale2 fixture is what writeFixtureModel writes", async () => {
  const committed = new URL("../../../test/fixtures/models/scale2/", import.meta.url);
  assert.deepEqual(await readFile(new URL("model.onnx", committed)), Buffer.from(buildScaleModel()));
  assert.deepEqual(JSON.parse(await readFile(new URL("manifest.json", committed), "utf8")), fixtureManifest());
});

test("onnx backend - the scale2 fixture computes y = 2x as a JSON artifact", async () => {
  const out = await backend.run(job("scale2", { x: [1, -2.5, 3, 0.25] }), live());
  assert.equal(out.artifacts.length, 1);
  const [artifact] = out.artifacts;
  assert.equal(artifact!.name, "y");
  assert.equal(artifact!.contentType, "application/json");
  assert.deepEqual(JSON.parse(new TextDecoder().decode(artifact!.data)), { dims: [4], type: "float32", data: [2, -5, 6, 0.5] });
  assert.ok(backend.residentModels().includes("scale2"));
});

test("onnx backend - a param that does not fit the input is INVALID_PARAMS; an unknown model MODEL_NOT_FOUND", async () => {
  await assert.rejects(backend.run(job("scale2", { x: "three" }), live()), isCode("INVALID_PARAMS", false));
  await assert.rejects(backend.run(job("no-such-model", {}), live()), isCode("MODEL_NOT_FOUND", false));
});

test("onnx backend - imagegen-tiny returns one PNG artifact of the requested size", async () => {
  const before = backend.denoiserCalls;
  const out = await backend.run(job("imagegen-tiny", { prompt: "a harbour at noon", width: 96, height: 64, steps: 3, guidance_scale: 7.5 }), live());
  assert.equal(out.artifacts.length, 1);
  assert.equal(out.artifacts[0]!.name, "image");
  assert.equal(out.artifacts[0]!.contentType, "image/png");
  const img = decode(out.artifacts[0]!.data);
  assert.deepEqual([img.width, img.height], [96, 64]);
  assert.equal(backend.denoiserCalls - before, 3);
  assert.ok(backend.residentModels().includes("imagegen-tiny"));
});

test("onnx backend - the event loop keeps turning while an item computes", async () => {
  // Order, not time: timer callbacks keep running before the item is done, and the main thread
  // spends most of the item's time idle (event loop utilization, a ratio of this run's own
  // busy and idle time), which it could not if the model, the decoder or the PNG ran on it.
  let ticks = 0;
  const timer = setInterval(() => ticks++, 5);
  const utilizationBefore = performance.eventLoopUtilization();
  let ticksBeforeDone = 0;
  try {
    // On the main thread this item would block for over a second (decoder and PNG alone).
    const item = tracked(backend.run(job("imagegen-tiny", { prompt: "heartbeat", width: 1024, height: 1024, steps: 2 }), live()));
    while (!item.settled() && ticks < 5) await new Promise((r) => setTimeout(r, 1));
    ticksBeforeDone = ticks;
    await item.promise;
  } finally {
    clearInterval(timer);
  }
  const utilization = performance.eventLoopUtilization(utilizationBefore).utilization;
  assert.ok(ticksBeforeDone >= 5, `only ${ticksBeforeDone} timer ticks before the item was done`);
  assert.ok(utilization < 0.5, `the main thread was busy ${(utilization * 100).toFixed(0)}% of the item's time`);
});

test("onnx backend - cancelling a queued item rejects it at once; a running one stops between steps", async () => {
  const a = new AbortController();
  const b = new AbortController();
  const c = new AbortController();
  // Both threads busy, so the third item queues.
  const stats = backend.runStats();
  const warnings = logged.filter((l) => l.level === "warn").length;
  const running = [backend.run(job("imagegen-tiny", LONG), a.signal), backend.run(job("imagegen-tiny", { ...LONG, seed: 1 }), b.signal)].map(tracked);
  const queued = backend.run(job("imagegen-tiny", { prompt: "queued" }), c.signal);
  for (let i = 0; backend.runStats().groups < stats.groups + 2; i++) {
    assert.ok(i < 2000, "the two long items never reached the threads");
    await new Promise((r) => setTimeout(r, 5));
  }
  c.abort();
  await assert.rejects(queued, isCode("CANCELLED", false));
  // Without waiting for a thread: both are still busy with the long items.
  assert.deepEqual(running.map((r) => r.settled()), [false, false], "the queued item's cancel waited for a thread");
  assert.equal(backend.runStats().items, stats.items + 2, "the cancelled item reached a thread");
  a.abort();
  b.abort();
  await Promise.all(running.map((r) => assert.rejects(r.promise, isCode("CANCELLED", false))));
  // The threads are free again.
  const after = await backend.run(job("scale2", { x: [1] }), live());
  assert.equal(after.artifacts[0]!.name, "y");
  // Stopped between steps: the threads reported back before the cancel grace ran out (no
  // warning) and ran far fewer than the 2 × 50 denoiser steps of the two long items.
  assert.equal(logged.filter((l) => l.level === "warn").length, warnings, JSON.stringify(logged.slice(warnings)));
  const steps = backend.runStats().denoiserCalls - stats.denoiserCalls;
  assert.ok(steps < 100, `the long items ran ${steps} of their 100 steps`);
});

test("onnx backend - an already aborted signal is CANCELLED without running", async () => {
  const ac = new AbortController();
  ac.abort();
  await assert.rejects(backend.run(job("scale2", { x: [1] }), ac.signal), isCode("CANCELLED"));
});

test("onnx backend - a crashing thread fails only its item (retryable) and is replaced", async () => {
  const results = await Promise.allSettled([
    backend.run(job("imagegen-tiny", { prompt: POISON, width: 64, height: 64 }), live()),
    backend.run(job("imagegen-tiny", { prompt: "a survivor", width: 64, height: 64 }), live()),
  ]);
  assert.equal(results[0].status, "rejected");
  assert.ok(isCode("INFERENCE_FAILED", true)((results[0] as PromiseRejectedResult).reason));
  assert.equal(results[1].status, "fulfilled");
  // Both the replacement and the surviving thread serve the next items.
  const next = await Promise.all(
    [1, 2, 3].map((i) => backend.run(job("imagegen-tiny", { prompt: `after the crash ${i}`, width: 64, height: 64, steps: 1 }), live())),
  );
  assert.equal(next.length, 3);
  assert.ok(logged.some((l) => l.level === "error" && /died/.test(l.msg ?? "")));
});

test("onnx backend - a cancel not noticed within the grace time is answered at once; the thread serves again after", async () => {
  const b = new OnnxBackend({ threads: 1, cancelGraceMs: 1, logger });
  await b.start();
  try {
    const ac = new AbortController();
    const p = b.run(job("imagegen-tiny", LONG), ac.signal);
    await new Promise((r) => setTimeout(r, 100));
    ac.abort();
    await assert.rejects(p, isCode("CANCELLED", false));
    const out = await b.run(job("imagegen-tiny", { prompt: "next", width: 64, height: 64, steps: 1 }), live());
    assert.equal(out.artifacts[0]!.contentType, "image/png");
  } finally {
    await b.close();
  }
});

test("onnx backend - close is idempotent and later items fail retryable", async () => {
  const b = new OnnxBackend({ threads: 1 });
  await b.start();
  const first = b.close();
  assert.equal(b.close(), first);
  await first;
  await assert.rejects(b.run(job("imagegen-tiny", { prompt: "late" }), live()), isCode("INFERENCE_FAILED", true));
});

test("onnx backend - each model load is reported once per thread, with its duration", async () => {
  const loads: { model: string; seconds: number }[] = [];
  const b = new OnnxBackend({ threads: 1, onModelLoad: (model, seconds) => loads.push({ model, seconds }) });
  await b.start();
  try {
    const job = (i: number): InferenceJob => ({ id: `load-${i}`, model: "imagegen-tiny", params: { prompt: `p${i}`, width: 64, height: 64, steps: 1, guidance_scale: 7.5 }, batchId: "b", index: i });
    await b.run(job(0), new AbortController().signal);
    await b.run(job(1), new AbortController().signal);
    assert.equal(loads.length, 1, "a resident model is not loaded again");
    assert.equal(loads[0]!.model, "imagegen-tiny");
    assert.ok(loads[0]!.seconds > 0);
  } finally {
    await b.close();
  }
});
