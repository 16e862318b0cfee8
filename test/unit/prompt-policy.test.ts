// The prompt-policy classifier hook on its own: prompt-guard-tiny built by our ONNX writer, loaded
// from a model directory by the real OnnxBackend (onnxruntime), and PromptPolicy screening items
// with it. The integration test (content-policy.test.ts) runs the same through real processes.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { IMAGEGEN_TINY } from "../../shared/builtin-models.js";
import { createLogger } from "../../shared/logger.js";
import { checkManifest } from "../../shared/manifest.js";
import { ItemStatus } from "../../proto/gen/shoal/v1/shoal.js";
import { CancelToken } from "../../worker/inference/backend.js";
import { WorkerMetrics } from "../../worker/metrics.js";
import { OnnxBackend } from "../../worker/inference/onnx-backend.js";
import { promptGuardManifest, writePromptGuardModel } from "../../worker/inference/prompt-guard.js";
import { PromptPolicy, windowsOf } from "../../worker/prompt-policy.js";

let dir: string;
let backend: OnnxBackend;
let policy: PromptPolicy;
const log = createLogger({ level: "silent", format: "json", component: "test" });
let n = 0;
const job = (params: Record<string, unknown>, model = IMAGEGEN_TINY) => ({ token: `1.t${++n}`, batchId: "b_test", index: n, model, params });

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "shoal-prompt-guard-"));
  await writePromptGuardModel(dir);
  backend = new OnnxBackend({ modelDir: dir, threads: 1 });
  await backend.start();
  policy = new PromptPolicy(backend.models(), backend, log);
});

after(async () => {
  await backend?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

test("prompt guard - its manifest is a valid model-directory manifest declaring a prompt policy", () => {
  assert.deepEqual(checkManifest(promptGuardManifest()), []);
  const served = backend.models().map((m) => m.name);
  assert.ok(served.includes("prompt-guard-tiny"), served.join(", "));
  assert.equal(policy.screens("imagegen-tiny"), true);
  assert.equal(policy.screens("prompt-guard-tiny"), false, "a classifier does not screen itself");
});

test("prompt guard - a flagged prompt gets a score at the threshold or above and a message without the text", async () => {
  const verdict = await policy.screen(job({ prompt: "a crate of Contraband on a pier" }), new CancelToken());
  assert.ok(verdict, "not flagged");
  assert.equal(verdict.classifier, "prompt-guard-tiny");
  assert.ok(verdict.score > 0.99, String(verdict.score));
  assert.match(verdict.message, /^blocked by the content policy: flagged by the prompt classifier prompt-guard-tiny \(score 0\.99\d+ ≥ threshold 0\.5\)$/);
  assert.doesNotMatch(verdict.message, /contraband|crate|pier/i);
});

test("prompt guard - a harmless prompt passes; the style param is screened too", async () => {
  assert.equal(await policy.screen(job({ prompt: "a lighthouse at dusk", style: "watercolor" }), new CancelToken()), undefined);
  assert.ok(await policy.screen(job({ prompt: "a lighthouse at dusk", style: "forbidden" }), new CancelToken()));
});

test("prompt guard - words past the tokenizer's first window are screened too", async () => {
  const filler = Array.from({ length: 200 }, (_, i) => `word${i}`).join(" ");
  assert.equal(windowsOf([filler]).length, 3);
  assert.equal(await policy.screen(job({ prompt: filler }), new CancelToken()), undefined);
  assert.ok(await policy.screen(job({ prompt: `${filler} forbidden` }), new CancelToken()), "a blocked word after 200 words was missed");
});

test("prompt guard - a cancelled item ends CANCELLED, not let through", async () => {
  const stop = new CancelToken();
  stop.abort();
  await assert.rejects(policy.screen(job({ prompt: "a lighthouse" }), stop), (e: unknown) => (e as { code?: string }).code === "CANCELLED");
});

test("prompt policy manifests - bad prompt_policy declarations are refused with each problem", () => {
  const m = promptGuardManifest();
  const problems = checkManifest({
    ...m,
    prompt_policy: { applies_to: [m.name], threshold: "high", tokenizer: "bpe", input_param: "nope", output: "logits", reason: "" },
  });
  assert.deepEqual(problems, [
    "prompt_policy.applies_to: a classifier cannot screen its own items",
    "prompt_policy.threshold: must be a number",
    "prompt_policy.tokenizer: must be one of shoal-words-4096",
    "prompt_policy.input_param: must name a declared tensor param",
    "prompt_policy.output: must name an artifact of outputs",
    "prompt_policy.reason: must be a string of 1..200 characters",
  ]);
});

test("prompt policy metrics - an item that ended before its model ran leaves the GPU's busy clock alone", async () => {
  let now = 1_000;
  const m = new WorkerMetrics("w1", () => now);
  m.setDevices([{ index: 0, name: "g", totalBytes: 8e9, source: "budget" }]);
  const busy = async () => {
    const text = await m.registry.getSingleMetricAsString("shoal_worker_busy_seconds_total");
    return Math.round(Number(/gpu="0"\} (\S+)/.exec(text)![1]) * 1e6) / 1e6;
  };
  m.itemStarted(0); // one item runs from t = 0
  now += 50;
  // Another item fails its checks (or its classifier) before it starts: not busy time, and it
  // must not stop the running item's clock either.
  m.itemDone("imagegen-tiny", ItemStatus.ITEM_STATUS_FAILED, 5, 0, false);
  now += 50;
  assert.equal(await busy(), 0.1);
  m.itemDone("imagegen-tiny", ItemStatus.ITEM_STATUS_SUCCEEDED, 0.1, 0, true);
  now += 1_000;
  assert.equal(await busy(), 0.1);
  m.promptPolicy("imagegen-tiny", "blocked");
  assert.match(await m.registry.getSingleMetricAsString("shoal_worker_prompt_policy_items_total"), /model="imagegen-tiny",verdict="blocked"\} 1/);
});
