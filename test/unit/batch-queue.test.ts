import { test } from "node:test";
import assert from "node:assert/strict";
import { BatchQueue } from "../../coordinator/batch-queue.js";

test("batch queue - a small batch behind a large one is served in the first rounds", () => {
  const q = new BatchQueue();
  for (let i = 0; i < 10_000; i++) q.add("big", i);
  for (let i = 0; i < 5; i++) q.add("small", i);
  const order: string[] = [];
  q.drain((ref) => (order.push(ref.batchId), true), 10);
  assert.deepEqual(order.filter((b) => b === "small").length, 5);
  assert.equal(q.size, 10_005 - 10);
});

test("batch queue - priority weights the share, order within a batch is kept", () => {
  const q = new BatchQueue();
  for (let i = 0; i < 100; i++) q.add("low", i, 0);
  for (let i = 0; i < 100; i++) q.add("high", i, 3);
  const taken: { batchId: string; index: number }[] = [];
  q.drain((ref) => (taken.push(ref), true), 50);
  const high = taken.filter((t) => t.batchId === "high");
  const low = taken.filter((t) => t.batchId === "low");
  assert.ok(high.length >= 3 * low.length - 4, `high ${high.length} vs low ${low.length}`);
  assert.deepEqual(high.map((t) => t.index), [...high.keys()]);
});

test("batch queue - a batch whose head does not fit is blocked for the pass, not reordered", () => {
  const q = new BatchQueue();
  q.add("a", 0);
  q.add("a", 1);
  q.add("b", 0);
  const seen: string[] = [];
  q.drain((ref) => (seen.push(`${ref.batchId}${ref.index}`), ref.batchId === "b"));
  assert.deepEqual(seen, ["a0", "b0"]);
  assert.equal(q.sizeOf("a"), 2);
  assert.deepEqual(q.removeBatch("a"), [0, 1]);
  assert.equal(q.size, 0);
});
