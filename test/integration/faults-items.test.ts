// Poison items, fairness between batches, and graceful drain, with real processes.

import { afterEach, beforeEach, describe, test } from "node:test";
import assert from "node:assert/strict";
import { BatchState, ItemStatus, WorkerState } from "../../proto/gen/shoal/v1/shoal.js";
import { Stack } from "../harness/processes.js";
import { TestClient } from "../harness/client.js";
import { assertWholeBatch, pollUntilTerminal, waitFor } from "../harness/batch-checks.js";

describe("faults - items and drain", () => {
  let stack: Stack;
  let client: TestClient;

  beforeEach(async () => {
    stack = new Stack();
    await stack.startNats();
    await stack.startCoordinator(["--max-items", "5000"]);
    client = new TestClient(stack.grpcAddr);
  });

  afterEach(async () => {
    client?.close();
    await stack.stop();
  });

  test("faults - one poison item among 200 crashes its inference thread 3 times and fails; the other 199 succeed", async () => {
    const poison = "this prompt crashes the inference thread";
    // The workers run the real ONNX backend; the poison prompt makes the inference thread exit
    // (a test hook, see worker/inference/inference-thread.ts), as a native crash would.
    await Promise.all(["w1", "w2"].map((id) => stack.startWorker(id, ["--vram", "8GiB", "--threads", "1"], { SHOAL_TEST_POISON_PROMPT: poison })));
    await client.waitForWorkers(2);
    const items = Array.from({ length: 200 }, (_, i) => ({
      model: "imagegen-tiny",
      params: { prompt: i === 77 ? poison : `tiny picture ${i}`, width: 64, height: 64, steps: 1 },
    }));
    const { batchId } = await client.submit({ items });
    const { batch, partialTerminalPolls } = await pollUntilTerminal(client, batchId, { timeoutMs: 300_000 });
    assert.equal(partialTerminalPolls, 0);
    assertWholeBatch(batch, 200);
    const bad = batch.results[77]!;
    assert.equal(bad.status, ItemStatus.ITEM_STATUS_FAILED);
    assert.equal(bad.error?.code, "INFERENCE_FAILED");
    assert.equal(bad.attempts, 3);
    assert.equal(batch.succeeded, 199);
    assert.equal(batch.state, BatchState.BATCH_STATE_COMPLETED);
    // Both workers are still serving.
    const ws = await client.workers();
    assert.equal(ws.filter((w) => w.state === WorkerState.WORKER_STATE_READY).length, 2);
  });

  test("faults - a 5-item batch submitted behind a 2,000-item batch finishes long before it", async () => {
    await Promise.all(["w1", "w2"].map((id) => stack.startWorker(id, ["--simulate", "--vram", "40GB", "--threads", "4", "--max-in-flight", "4"])));
    await client.waitForWorkers(2);
    const big = await client.submit({ items: Array.from({ length: 2000 }, (_, i) => ({ model: "sim-6g", params: { work_ms: 20, tag: `big ${i}` } })) });
    await waitFor("the big batch to start", async () => (await client.get(big.batchId)).succeeded > 0);
    const small = await client.submit({ items: Array.from({ length: 5 }, (_, i) => ({ model: "sim-6g", params: { work_ms: 20, tag: `small ${i}` } })) });
    const smallDone = await pollUntilTerminal(client, small.batchId);
    const bigAtThatTime = await client.get(big.batchId);
    assertWholeBatch(smallDone.batch, 5);
    assert.equal(smallDone.batch.succeeded, 5);
    // Order, not time: when the small batch had finished, most of the big one had not run yet
    // (first come, first served would have run all 2,000 first).
    assert.equal(bigAtThatTime.state, BatchState.BATCH_STATE_RUNNING);
    assert.ok(bigAtThatTime.succeeded < 1000, `the big batch had ${bigAtThatTime.succeeded} of 2000 done when the small one finished`);
    const bigDone = await pollUntilTerminal(client, big.batchId);
    assertWholeBatch(bigDone.batch, 2000);
    assert.equal(bigDone.batch.succeeded, 2000);
  });

  test("faults - SIGTERM drains a worker: in-flight items finish, no new ones arrive, the batch completes on the others", async () => {
    const sim = ["--simulate", "--vram", "40GB", "--threads", "4", "--max-in-flight", "4", "--drain-grace", "10s"];
    const [w1] = await Promise.all(["w1", "w2"].map((id) => stack.startWorker(id, sim)));
    await client.waitForWorkers(2);
    const { batchId } = await client.submit({ items: Array.from({ length: 200 }, (_, i) => ({ model: "sim-6g", params: { work_ms: 100, tag: `d ${i}` } })) });
    await waitFor("w1 to hold items", async () => ((await client.workers()).find((w) => w.id === "w1")?.itemsInFlight ?? 0) > 0);
    process.kill(w1!.pid, "SIGTERM");
    const code = await w1!.exited;
    assert.equal(code, 0, "a drained worker exits cleanly");
    const { batch } = await pollUntilTerminal(client, batchId);
    assertWholeBatch(batch, 200);
    assert.equal(batch.succeeded, 200);
    // Nothing it held was given back unfinished: with a 10 s grace every held item finished.
    assert.ok(w1!.logs.some((l) => l.msg === "drained"));
    assert.ok(!w1!.logs.some((l) => l.msg === "drain grace over; giving remaining items back"));
  });

  test("faults - DrainWorker through the API stops new assignments and the worker exits", async () => {
    const [w1] = await Promise.all(["w1", "w2"].map((id) => stack.startWorker(id, ["--simulate", "--vram", "40GB"])));
    await client.waitForWorkers(2);
    const drained = await client.sdk.drainWorker("w1");
    assert.equal(drained.state, WorkerState.WORKER_STATE_DRAINING);
    assert.equal(await w1!.exited, 0);
    const { batchId } = await client.submit({ items: Array.from({ length: 200 }, (_, i) => ({ model: "sim-zero", params: { tag: `${i}` } })) });
    const { batch } = await pollUntilTerminal(client, batchId);
    assertWholeBatch(batch, 200);
    assert.equal(batch.succeeded, 200);
    assert.deepEqual(batch.results.filter((r) => r.workerId !== "w2").map((r) => [r.index, r.workerId]), [], "items that ran elsewhere than w2");
  });
});
