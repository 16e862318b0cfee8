import { test } from "node:test";
import assert from "node:assert/strict";
import { heartbeatProblem, outcomeProblem } from "../../coordinator/wire-validation.js";
import { ItemStatus, WorkerState } from "../../proto/gen/shoal/v1/shoal.js";
import type { Heartbeat, ItemOutcome } from "../../proto/gen/shoal/v1/wire.js";

const hb = (over: Partial<Heartbeat> = {}): Heartbeat => ({
  workerId: "w1",
  seq: 1,
  incarnation: "abc",
  state: WorkerState.WORKER_STATE_READY,
  gpus: [{ index: 0, name: "g", vramTotalBytes: 100, vramFreeBytes: 50, source: "budget" }],
  residentModels: [],
  inFlight: [],
  itemsDone: 0,
  maxInFlight: 2,
  hostname: "h",
  models: [],
  heartbeatIntervalMs: 1000,
  residentWeights: [],
  readsParamsJson: true,
  ...over,
});

const outcome = (over: Partial<ItemOutcome> = {}): ItemOutcome => ({
  lease: { batchId: "b_1", index: 0, token: "1.x" },
  status: ItemStatus.ITEM_STATUS_SUCCEEDED,
  error: undefined,
  artifacts: [],
  runMs: 1,
  vramUsedBytes: 0,
  ...over,
});

test("wire validation - a sound heartbeat and outcome pass", () => {
  assert.equal(heartbeatProblem("w1", hb()), undefined);
  assert.equal(outcomeProblem("b_1", outcome()), undefined);
});

test("wire validation - heartbeats that would corrupt the ledger are refused with the field named", () => {
  assert.match(heartbeatProblem("w2", hb())!, /^worker_id: .* does not match/);
  assert.match(heartbeatProblem("w1", hb({ gpus: [] }))!, /^gpus:/);
  assert.match(heartbeatProblem("w1", hb({ gpus: [{ index: 0, name: "g", vramTotalBytes: 10, vramFreeBytes: 20, source: "x" }] }))!, /vram_free_bytes: 20 exceeds/);
  assert.match(heartbeatProblem("w1", hb({ gpus: [{ index: 0, name: "g", vramTotalBytes: 0, vramFreeBytes: 0, source: "x" }] }))!, /vram_total_bytes/);
  assert.match(heartbeatProblem("w1", hb({ incarnation: "" }))!, /^incarnation/);
});

test("wire validation - outcomes for another batch, with unknown codes or foreign artifacts are refused", () => {
  assert.match(outcomeProblem("b_2", outcome())!, /^lease.batch_id/);
  assert.match(outcomeProblem("b_1", outcome({ status: ItemStatus.ITEM_STATUS_UNSPECIFIED }))!, /^status/);
  assert.match(outcomeProblem("b_1", outcome({ status: ItemStatus.ITEM_STATUS_FAILED }))!, /^error: a FAILED/);
  assert.match(outcomeProblem("b_1", outcome({ status: ItemStatus.ITEM_STATUS_FAILED, error: { code: "OOPS", message: "", retryable: true } }))!, /^error.code/);
  const artifact = { name: "image", contentType: "image/png", sizeBytes: 1, sha256: "a".repeat(64), uri: "shoal://artifacts/b_9/0/image" };
  assert.match(outcomeProblem("b_1", outcome({ artifacts: [artifact] }))!, /^artifacts\[0\]\.uri/);
  // Only under the attempt's own name: not another item's, not another attempt's.
  assert.match(outcomeProblem("b_1", outcome({ artifacts: [{ ...artifact, uri: "shoal://artifacts/b_1/0/image" }] }))!, /^artifacts\[0\]\.uri/);
  assert.match(outcomeProblem("b_1", outcome({ artifacts: [{ ...artifact, uri: "shoal://artifacts/b_1/1/1.x/image" }] }))!, /^artifacts\[0\]\.uri/);
  assert.match(outcomeProblem("b_1", outcome({ artifacts: [{ ...artifact, uri: "shoal://artifacts/b_1/0/2.y/image" }] }))!, /^artifacts\[0\]\.uri/);
  assert.equal(outcomeProblem("b_1", outcome({ artifacts: [{ ...artifact, uri: "shoal://artifacts/b_1/0/1.x/image" }] })), undefined);
});

test("wire validation - heartbeat claims are bounded: VRAM per GPU, GPU count, list lengths", () => {
  const gpu = { index: 0, name: "g", vramTotalBytes: 2 ** 53, vramFreeBytes: 2 ** 53, source: "budget" };
  assert.match(heartbeatProblem("w1", hb({ gpus: [gpu] }))!, /^gpus\[0\]\.vram_total_bytes: .* \(4 TiB\)/);
  assert.equal(heartbeatProblem("w1", hb({ gpus: [{ ...gpu, vramTotalBytes: 192 * 2 ** 30, vramFreeBytes: 100 }] })), undefined);
  const many = Array.from({ length: 65 }, (_, i) => ({ ...gpu, index: i, vramTotalBytes: 100, vramFreeBytes: 1 }));
  assert.match(heartbeatProblem("w1", hb({ gpus: many }))!, /^gpus: must list 1\.\.64/);
  assert.match(heartbeatProblem("w1", hb({ models: Array.from({ length: 1025 }, (_, i) => `m${i}`) }))!, /^models: more than 1024/);
  assert.match(heartbeatProblem("w1", hb({ residentModels: ["x".repeat(129)] }))!, /^resident_models\[0\]: must be 1\.\.128/);
  assert.match(heartbeatProblem("w1", hb({ maxInFlight: 100_001 }))!, /^max_in_flight/);
  assert.match(heartbeatProblem("w1", hb({ gpus: [{ ...gpu, vramTotalBytes: 100, vramFreeBytes: 1, name: "n".repeat(300) }] }))!, /^gpus\[0\]\.name/);
});

test("wire validation - absurd run times and memory figures are refused before they reach estimates and metrics", () => {
  assert.match(outcomeProblem("b_1", outcome({ vramUsedBytes: 2 ** 64 - 2048 }))!, /^vram_used_bytes/);
  assert.match(outcomeProblem("b_1", outcome({ runMs: 2 ** 60 }))!, /^run_ms/);
  assert.match(outcomeProblem("b_1", outcome({ runMs: NaN }))!, /^run_ms/);
  assert.equal(outcomeProblem("b_1", outcome({ vramUsedBytes: 80 * 2 ** 30, runMs: 3_600_000 })), undefined);
});
