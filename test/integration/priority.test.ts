// Priority with real processes: nats-server, a coordinator and one SIMULATED worker with a single
// slot, so every pass places one item (the busy fleet case). Two batches of equal items, priority
// 0 submitted first and priority 3 right after: batches take turns of 1 + priority items, a turn
// spanning passes, so the priority-3 batch gets four items for each of the other's and ends long
// before it. (With a turn ending at every pass that served the batch, they alternated one item
// each and ended together.)
//
// Across models (issue 9): two SIMULATED workers whose 12 GB hold the weights of one of two models
// at a time. A big priority-0 batch of sim-6g holds both; a priority-4 batch of sim-12g submitted
// after it gets a worker switched to its model while most of the big batch still waits, because
// the affinity planner splits the fleet by priority-weighted backlog. Priority-blind, its backlog
// share (6 of 126 items, 0.1 GPU) rounded to no GPU and it waited for the big batch's end.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { BatchState } from "../../proto/gen/shoal/v1/shoal.js";
import { Stack } from "../harness/processes.js";
import { TestClient } from "../harness/client.js";
import { assertWholeBatch } from "../harness/batch-checks.js";

const N = 12;
const items = (tag: string) => Array.from({ length: N }, (_, i) => ({ model: "sim-6g", params: { work_ms: 60, tag: `${tag}-${i}` } }));

describe("priority - a higher-priority batch gets a larger share of a busy worker", () => {
  let stack: Stack;
  let client: TestClient;

  before(async () => {
    stack = new Stack();
    await stack.startNats();
    await stack.startCoordinator(["--hedging", "off"]);
    client = new TestClient(stack.grpcAddr);
    await stack.startWorker("one-slot", ["--simulate", "--threads", "1", "--max-in-flight", "1", "--vram", "16GB"]);
    await client.waitForWorkers(1);
  });

  after(async () => {
    client?.close();
    await stack?.stop();
  });

  test("priority - of two equal batches on one single-slot worker, priority 3 ends while priority 0 has done at most a third of its items", async () => {
    // A 3 s item holds the only slot while both batches are submitted, so both wait when the slot
    // frees: the share does not depend on how fast the second submit follows the first.
    const blocker = await client.submit({ items: [{ model: "sim-6g", params: { work_ms: 3000, tag: "blocker" } }] });
    const low = await client.submit({ items: items("low"), priority: 0 });
    const high = await client.submit({ items: items("high"), priority: 3 });
    assert.equal((await client.get(blocker.batchId)).succeeded, 0, "both batches were submitted while the blocker ran");
    const highBatch = await client.waitTerminal(high.batchId, 60_000);
    const lowAtThatTime = await client.get(low.batchId);
    assert.equal(highBatch.state, BatchState.BATCH_STATE_COMPLETED);
    assertWholeBatch(highBatch, N);
    // Weights 4 : 1 (the low batch was first in the turn order): 3 of the low batch's items by the
    // time the high one's 12 are done. Alternating would have done 11 or 12.
    const lowDone = lowAtThatTime.succeeded + lowAtThatTime.failed;
    assert.ok(lowDone <= N / 3, `the priority-0 batch had ${lowDone} of ${N} items done when the priority-3 batch ended`);
    const lowBatch = await client.waitTerminal(low.batchId, 60_000);
    assertWholeBatch(lowBatch, N);
    assert.equal(lowBatch.succeeded, N, "the low-priority batch still completes");
  });
});

describe("priority across models - a priority-4 batch of another model gets a GPU ahead of a priority-0 backlog", () => {
  let stack: Stack;
  let client: TestClient;
  const BIG = 120;
  const URGENT = 6;

  before(async () => {
    stack = new Stack();
    await stack.startNats();
    await stack.startCoordinator(["--hedging", "off", "--max-items", "200"]);
    client = new TestClient(stack.grpcAddr);
    // 12 GB: sim-6g (4 GB weights) or sim-12g (8 GB), not both; two items at once.
    for (const id of ["w1", "w2"]) await stack.startWorker(id, ["--simulate", "--threads", "1", "--max-in-flight", "2", "--vram", "12GB"]);
    await client.waitForWorkers(2);
  });

  after(async () => {
    client?.close();
    await stack?.stop();
  });

  test("priority across models - the priority-4 sim-12g batch ends while the priority-0 sim-6g batch has most of its items left", async (t) => {
    const big = await client.submit({ items: Array.from({ length: BIG }, (_, i) => ({ model: "sim-6g", params: { work_ms: 250, tag: `big-${i}` } })), priority: 0 });
    const urgent = await client.submit({ items: Array.from({ length: URGENT }, (_, i) => ({ model: "sim-12g", params: { work_ms: 250, tag: `urgent-${i}` } })), priority: 4 });
    const urgentBatch = await client.waitTerminal(urgent.batchId, 60_000);
    const bigAtThatTime = await client.get(big.batchId);
    assert.equal(urgentBatch.state, BatchState.BATCH_STATE_COMPLETED);
    assertWholeBatch(urgentBatch, URGENT);
    assert.equal(urgentBatch.succeeded, URGENT);
    // Both workers on sim-6g run 4 items per 250 ms: the 120 take 7.5 s. One worker switched to
    // sim-12g (one item at a time there) runs the 6 urgent items in about 1.5 s after the switch,
    // while the other does at most a third of the big batch. Priority-blind it ended after them.
    const bigDone = bigAtThatTime.succeeded + bigAtThatTime.failed;
    t.diagnostic(`priority-0 items done when the priority-4 batch ended: ${bigDone} of ${BIG}`);
    assert.ok(bigDone <= BIG / 2, `the priority-0 batch had ${bigDone} of ${BIG} items done when the priority-4 batch ended`);
    const bigBatch = await client.waitTerminal(big.batchId, 90_000);
    assertWholeBatch(bigBatch, BIG);
    assert.equal(bigBatch.succeeded, BIG, "the low-priority batch still completes");
  });
});
