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

test("batch queue - a batch whose head does not fit keeps its order for the next pass", () => {
  const q = new BatchQueue();
  q.add("a", 0);
  q.add("a", 1);
  q.add("b", 0);
  const seen: string[] = [];
  q.drain((ref) => (seen.push(`${ref.batchId}${ref.index}`), ref.batchId === "b"));
  assert.deepEqual(seen, ["a0", "a1", "b0"]);
  assert.equal(q.sizeOf("a"), 2);
  assert.deepEqual(q.removeBatch("a"), [0, 1]);
  assert.equal(q.size, 0);
});

test("batch queue - items behind a head that fits nowhere are placed (no head-of-line blocking)", () => {
  const q = new BatchQueue();
  for (let i = 0; i < 10; i++) q.add("a", i);
  // Item 0 is too large for any GPU; the others fit.
  const placed: number[] = [];
  q.drain((ref) => ref.index !== 0 && (placed.push(ref.index), true));
  assert.deepEqual(placed, [1, 2, 3, 4, 5, 6, 7, 8, 9]);
  assert.equal(q.size, 1);
  // The big one keeps its place at the head; the taken ones are not offered again.
  const next: number[] = [];
  q.drain((ref) => (next.push(ref.index), true));
  assert.deepEqual(next, [0]);
  assert.equal(q.size, 0);
});

test("batch queue - groups: a blocked model does not hold back the batch's other model; longest first within a group; backlog per group", () => {
  const model = (i: number) => (i % 2 === 0 ? "a" : "b");
  const q = new BatchQueue({ classify: (_b, i) => ({ group: model(i), rank: i }), longestFirst: true });
  for (let i = 0; i < 8; i++) q.add("x", i);
  assert.deepEqual(Object.fromEntries([...q.backlogByGroup()].map(([g, v]) => [g, { ...v }])), {
    a: { count: 4, rank: 12, weightedCount: 4, weightedRank: 12 },
    b: { count: 4, rank: 16, weightedCount: 4, weightedRank: 16 },
  });
  const order: number[] = [];
  // Model "a" fits nowhere this pass ("block": nothing of it can fit); "b" still goes, longest first.
  q.drain((ref) => (model(ref.index) === "a" ? "block" : (order.push(ref.index), true)));
  assert.deepEqual(order, [7, 5, 3, 1]);
  assert.equal(q.waiting("a"), 4);
  assert.equal(q.waiting("b"), 0);
  const next: number[] = [];
  q.drain((ref) => (next.push(ref.index), true));
  assert.deepEqual(next, [6, 4, 2, 0]);
  assert.equal(q.size, 0);
  assert.equal(q.backlogByGroup().size, 0);
});

test("batch queue - a batch served in a pass goes to the back: one freed slot per pass rotates between batches", () => {
  const q = new BatchQueue();
  for (const b of ["p", "q", "r"]) for (let i = 0; i < 5; i++) q.add(b, i);
  const winners: string[] = [];
  for (let pass = 0; pass < 6; pass++) q.drain((ref) => (winners.push(ref.batchId), true), 1);
  assert.deepEqual(winners, ["p", "q", "r", "p", "q", "r"]);
});

test("batch queue - priority holds on a busy fleet: one freed slot per pass, a turn spans passes until the batch took its weight", () => {
  const q = new BatchQueue();
  for (let i = 0; i < 100; i++) q.add("low", i, 0);
  for (let i = 0; i < 100; i++) q.add("high", i, 3);
  const winners: string[] = [];
  for (let pass = 0; pass < 50; pass++) q.drain((ref) => (winners.push(ref.batchId), true), 1);
  const high = winners.filter((b) => b === "high").length;
  assert.equal(high, 40, `weights 4 : 1 over 50 single-slot passes: ${winners.join(",")}`);
  // Turns, not bursts of whole passes: no batch waits more than one turn of the other.
  assert.ok(!winners.join(",").includes("low,low"), "low never takes two in a row");
});

test("batch queue - the backlog per group also counts each item by its batch's turn weight (1 + priority), through placement and removal", () => {
  const q = new BatchQueue({ classify: (_b, i) => ({ group: "m", rank: 10 + i }) });
  for (let i = 0; i < 3; i++) q.add("lo", i, 0);
  for (let i = 0; i < 2; i++) q.add("hi", i, 4);
  const m = () => ({ ...q.backlogByGroup().get("m")! });
  // lo: ranks 10+11+12 at weight 1; hi: ranks 10+11 at weight 5.
  assert.deepEqual(m(), { count: 5, rank: 54, weightedCount: 3 + 10, weightedRank: 33 + 5 * 21 });
  // Place one item of each batch (one turn item each would be lo's 1 and hi's up to 5: budget 2).
  const placed: string[] = [];
  q.drain((ref) => (placed.push(`${ref.batchId}${ref.index}`), true), 2);
  const rank = (id: string) => 10 + Number(id.slice(-1));
  const weight = (id: string) => (id.startsWith("hi") ? 5 : 1);
  const left = m();
  assert.equal(left.count, 3);
  assert.equal(left.weightedCount, 13 - placed.reduce((s, id) => s + weight(id), 0));
  assert.equal(left.weightedRank, 138 - placed.reduce((s, id) => s + weight(id) * rank(id), 0));
  // Removing a batch takes its weighted share out too.
  q.removeBatch("hi");
  q.removeBatch("lo");
  assert.equal(q.backlogByGroup().size, 0);
});
