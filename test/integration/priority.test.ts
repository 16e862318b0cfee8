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

/**
 * Two 12 GB workers, a priority-0 batch of 120 sim-6g items, then `urgentItems` sim-12g items at
 * `priority`: the urgent batch must end while at most `maxDone` of the 120 are done.
 */
function acrossModels(title: string, priority: number, maxDone: number, why: string): void {
  describe(title, () => {
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

    test(`priority across models - the priority-${priority} sim-12g batch ends while the priority-0 sim-6g batch has done at most ${maxDone} of its ${BIG} items`, async (t) => {
      const big = await client.submit({ items: Array.from({ length: BIG }, (_, i) => ({ model: "sim-6g", params: { work_ms: 250, tag: `big-${i}` } })), priority: 0 });
      const urgent = await client.submit({ items: Array.from({ length: URGENT }, (_, i) => ({ model: "sim-12g", params: { work_ms: 250, tag: `urgent-${i}` } })), priority });
      const urgentBatch = await client.waitTerminal(urgent.batchId, 60_000);
      const bigAtThatTime = await client.get(big.batchId);
      assert.equal(urgentBatch.state, BatchState.BATCH_STATE_COMPLETED);
      assertWholeBatch(urgentBatch, URGENT);
      assert.equal(urgentBatch.succeeded, URGENT);
      const bigDone = bigAtThatTime.succeeded + bigAtThatTime.failed;
      t.diagnostic(`priority-0 items done when the priority-${priority} batch ended: ${bigDone} of ${BIG}`);
      assert.ok(bigDone <= maxDone, `the priority-0 batch had ${bigDone} of ${BIG} items done when the priority-${priority} batch ended (${why})`);
      const bigBatch = await client.waitTerminal(big.batchId, 90_000);
      assertWholeBatch(bigBatch, BIG);
      assert.equal(bigBatch.succeeded, BIG, "the low-priority batch still completes");
    });
  });
}

// Both workers on sim-6g run 4 items per 250 ms: the 120 take 7.5 s. One worker switched to
// sim-12g (one item at a time there) runs the 6 urgent items in about 1.5 s after the switch,
// while the other does at most a third of the big batch. Priority-blind it ended after them.
acrossModels(
  "priority across models - a priority-4 batch of another model gets a GPU ahead of a priority-0 backlog",
  4,
  60,
  "its weighted share is 0.67 of the two workers: one switches to it at once",
);

// At priority 1 the weighted share is 0.33 of a worker (1.5 s × 2 against 30 s over 2 items per
// worker), which rounds to none; no 12 GB worker can hold both models, so none can lend it time.
// The planner's rounding exception gives the higher-priority model one worker of the two.
// Without it the batch waited until the big one's weighted share fell under 3 : 1 (about 48 of
// the 120 done) and ended with 64 of them done (16 with the exception).
acrossModels(
  "priority across models - a priority-1 batch whose share rounds to no GPU still gets one",
  1,
  30,
  "its weighted share, 0.33 of a worker, rounds to none: the rounding exception must give it one",
);
