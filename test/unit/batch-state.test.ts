// The rules of one batch. That replaying the results log after a restart gives what applying it
// live gave is checked end to end, through a real coordinator's recovery, in
// test/integration/replay.test.ts.

import { test } from "node:test";
import assert from "node:assert/strict";
import { ActiveBatch, type ItemSlot } from "../../coordinator/batch-state.js";
import { BatchState, ItemStatus } from "../../proto/gen/shoal/v1/shoal.js";
import type { ItemOutcome } from "../../proto/gen/shoal/v1/wire.js";

function batch(n: number, maxAttempts = 3): ActiveBatch {
  const slots: ItemSlot[] = Array.from({ length: n }, () => ({
    model: "m",
    params: {},
    need: { activationBytes: 0, weightsBytes: 0 },
    state: "pending",
    attempts: 0,
    lease: undefined,
    closed: undefined,
    result: undefined,
    queuedAtMs: 0,
    firstQueuedAtMs: 0,
  }));
  return new ActiveBatch({ batch: { id: "b", state: 1, total: n, succeeded: 0, failed: 0, cancelled: 0, results: [], createdAt: new Date(0), completedAt: undefined, labels: {}, running: 0, priority: 0, queuePosition: 0, estimatedCompletionAt: undefined }, items: [], idempotencyKey: "", webhook: undefined, tenant: "", retryOf: "", sourceIndices: [], policyBlocked: [] }, 1, slots, maxAttempts);
}

const ok = (index: number, token: string): ItemOutcome => ({ lease: { batchId: "b", index, token }, status: ItemStatus.ITEM_STATUS_SUCCEEDED, error: undefined, artifacts: [], runMs: 1, vramUsedBytes: 0 });
const retryable = (index: number, token: string): ItemOutcome => ({ lease: { batchId: "b", index, token }, status: ItemStatus.ITEM_STATUS_FAILED, error: { code: "TIMEOUT", message: "slow", retryable: true }, artifacts: [], runMs: 1, vramUsedBytes: 0 });

test("batch state - the first result counts, a duplicate changes nothing", () => {
  const b = batch(1);
  assert.equal(b.applyOutcome(ok(0, "1.a"), "w1", 0).kind, "done");
  assert.deepEqual(b.applyOutcome(ok(0, "1.a"), "w2", 0), { kind: "ignored", reason: "item-done" });
  assert.equal(b.items[0]!.result!.workerId, "w1");
  assert.equal(b.final(new Date()).state, BatchState.BATCH_STATE_COMPLETED);
});

test("batch state - retryable failures retry until max attempts, then fail", () => {
  const b = batch(1, 3);
  assert.equal(b.applyOutcome(retryable(0, "1.a"), "w", 0).kind, "retry");
  assert.deepEqual(b.applyOutcome(ok(0, "1.a"), "w", 0), { kind: "ignored", reason: "lease-closed" });
  assert.equal(b.applyOutcome(retryable(0, "2.b"), "w", 0).kind, "retry");
  assert.equal(b.applyOutcome(retryable(0, "3.c"), "w", 0).kind, "done");
  const r = b.items[0]!.result!;
  assert.equal(r.status, ItemStatus.ITEM_STATUS_FAILED);
  assert.equal(r.attempts, 3);
  assert.equal(b.final(new Date()).state, BatchState.BATCH_STATE_FAILED);
});

test("batch state - a revoked attempt's late result is ignored", () => {
  const b = batch(1);
  assert.equal(b.applyRevocation(0, "1.a", { code: "WORKER_LOST", message: "gone", retryable: true }, 0).kind, "retry");
  assert.deepEqual(b.applyOutcome(ok(0, "1.a"), "w", 0), { kind: "ignored", reason: "lease-closed" });
  assert.equal(b.applyOutcome(ok(0, "2.b"), "w", 0).kind, "done");
});

test("batch state - cancel ends every open item CANCELLED and reports the running ones", () => {
  const b = batch(3);
  b.applyOutcome(ok(0, "1.a"), "w", 0);
  b.items[1]!.state = "leased";
  b.items[1]!.lease = { token: "1.b", workerId: "w2", gpuIndex: 0, assignedAtMs: 0 };
  const running = b.cancelAll();
  assert.deepEqual(running.map((r) => [r.index, r.lease.workerId]), [[1, "w2"]]);
  const final = b.final(new Date());
  assert.equal(final.state, BatchState.BATCH_STATE_CANCELLED);
  assert.deepEqual(final.results.map((r) => r.status), [ItemStatus.ITEM_STATUS_SUCCEEDED, ItemStatus.ITEM_STATUS_CANCELLED, ItemStatus.ITEM_STATUS_CANCELLED]);
});
