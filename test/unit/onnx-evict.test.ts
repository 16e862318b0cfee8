// Defragmentation's eviction in the ONNX backend: real onnxruntime sessions in real inference
// threads are released on request, never while an item of the model is queued or running.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { InferenceJob } from "../../worker/inference/backend.js";
import { writeFixtureModel } from "../../worker/inference/fixtures.js";
import { OnnxBackend } from "../../worker/inference/onnx-backend.js";

let dir: string;
let backend: OnnxBackend;
const quiet = { info: () => {}, warn: () => {}, error: () => {} };
let jobs = 0;
const job = (model: string, params: Record<string, unknown>): InferenceJob => ({ id: `evict-${++jobs}`, model, params, batchId: "b-test", index: jobs });

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "shoal-evict-"));
  await writeFixtureModel(dir);
  backend = new OnnxBackend({ modelDir: dir, threads: 2, logger: quiet });
  await backend.start();
});

after(async () => {
  await backend.close();
  await rm(dir, { recursive: true, force: true });
});

test("onnx evict - an idle model's sessions are released; a model not loaded is said to be so", { timeout: 60_000 }, async () => {
  await backend.run(job("scale2", { x: [1, 2] }), new AbortController().signal);
  assert.ok(backend.residentModels().includes("scale2"));
  assert.equal(await backend.evict("scale2"), "evicted");
  assert.ok(!backend.residentModels().includes("scale2"), backend.residentModels().join(","));
  assert.equal(await backend.evict("scale2"), "not-loaded");
  // It loads again for its next item.
  const out = await backend.run(job("scale2", { x: [3] }), new AbortController().signal);
  assert.deepEqual(JSON.parse(new TextDecoder().decode(out.artifacts[0]!.data)).data, [6]);
  assert.ok(backend.residentModels().includes("scale2"));
});

test("onnx evict - a model with an item running is refused, with the reason", { timeout: 60_000 }, async () => {
  const abort = new AbortController();
  const running = backend.run(job("imagegen-tiny", { prompt: "a long one", width: 1024, height: 1024, steps: 50 }), abort.signal).catch((e: unknown) => e);
  await new Promise((r) => setTimeout(r, 200));
  const r = await backend.evict("imagegen-tiny");
  assert.equal(typeof r, "object");
  assert.match((r as { refused: string }).refused, /1 item\(s\) of imagegen-tiny queued or running/);
  abort.abort();
  await running;
});
