// Scheduling behaviour with real processes and simulated GPUs: learned VRAM after
// OUT_OF_MEMORY, items nothing can fit, per-item timeouts, backpressure, a worker restarting
// under the same id.

import { afterEach, beforeEach, describe, test } from "node:test";
import assert from "node:assert/strict";
import { status } from "@grpc/grpc-js";
import { ItemStatus } from "../../proto/gen/shoal/v1/shoal.js";
import { Stack } from "../harness/processes.js";
import { TestClient, grpcCode } from "../harness/client.js";
import { assertWholeBatch, pollUntilTerminal, waitFor } from "../harness/batch-checks.js";

const GB = 1e9;

describe("scheduler - with real processes", () => {
  let stack: Stack;
  let client: TestClient;

  beforeEach(async () => {
    stack = new Stack();
    await stack.startNats();
  });

  afterEach(async () => {
    client?.close();
    await stack.stop();
  });

  test("scheduler - an item that runs out of memory reports its need and is placed again with it reserved, on a GPU with room", async () => {
    await stack.startCoordinator(["--max-attempts", "6"]);
    client = new TestClient(stack.grpcAddr);
    await Promise.all([
      stack.startWorker("small", ["--simulate", "--vram", "10GB"]),
      stack.startWorker("big", ["--simulate", "--vram", "40GB"]),
    ]);
    await client.waitForWorkers(2);
    // sim-6g's manifest says 4 GB weights + 2 GB per item; this item really takes 7 GB. Its first
    // attempt reserves 2 GB (the small worker is the best fit) and runs out of memory; the
    // --simulate worker reports the 7 GB it needed, the coordinator raises the estimate to that
    // (not by half: 2 → 3 → 4.5 → 6.75 → 10.1 GB, five attempts before workers said), and 4 + 7 GB
    // only fit the 40 GB worker.
    const first = await client.run({ items: [{ model: "sim-6g", params: { use_bytes: 7 * GB } }] });
    const r = first.results[0]!;
    assert.equal(r.status, ItemStatus.ITEM_STATUS_SUCCEEDED, JSON.stringify(r.error));
    assert.equal(r.attempts, 2, "one OUT_OF_MEMORY, then the retry with the reported need reserved");
    assert.equal(r.workerId, "big", "7 GB of activations and 4 GB of weights only fit the 40 GB worker");
    // The estimate is learned: the same shape now goes to a worker with room at the first try.
    const second = await client.run({ items: [{ model: "sim-6g", params: { use_bytes: 7 * GB, tag: "again" } }] });
    assert.equal(second.results[0]!.attempts, 1);
    assert.equal(second.results[0]!.workerId, "big");
  });

  test("scheduler - items no registered worker could ever fit fail after the grace period", async () => {
    await stack.startCoordinator(["--unplaceable-grace", "1s"]);
    client = new TestClient(stack.grpcAddr);
    await stack.startWorker("w1", ["--simulate", "--vram", "24GB"]);
    await client.waitForWorkers(1);
    const batch = await client.run({ items: [{ model: "sim-30g", params: {} }, { model: "sim-6g", params: {} }] });
    assertWholeBatch(batch, 2);
    assert.equal(batch.results[0]!.status, ItemStatus.ITEM_STATUS_FAILED);
    assert.equal(batch.results[0]!.error?.code, "OUT_OF_MEMORY");
    assert.match(batch.results[0]!.error!.message, /largest GPU serving sim-30g/);
    assert.equal(batch.results[1]!.status, ItemStatus.ITEM_STATUS_SUCCEEDED);
  });

  test("scheduler - an attempt running past the item timeout fails TIMEOUT and is retried up to max attempts", async () => {
    await stack.startCoordinator(["--item-timeout", "300ms", "--max-attempts", "2"]);
    client = new TestClient(stack.grpcAddr);
    await stack.startWorker("w1", ["--simulate", "--vram", "24GB"]);
    await client.waitForWorkers(1);
    const batch = await client.run({ items: [{ model: "sim-6g", params: { work_ms: 60_000 } }, { model: "sim-6g", params: { work_ms: 10 } }] });
    assert.equal(batch.results[0]!.error?.code, "TIMEOUT");
    assert.equal(batch.results[0]!.error?.retryable, true);
    assert.equal(batch.results[0]!.attempts, 2);
    assert.equal(batch.results[1]!.status, ItemStatus.ITEM_STATUS_SUCCEEDED);
  });

  test("scheduler - a full queue refuses SubmitBatch with RESOURCE_EXHAUSTED and loses nothing accepted", async () => {
    await stack.startCoordinator(["--max-queued-items", "60"]);
    client = new TestClient(stack.grpcAddr);
    // A worker registers the sim models, then drains away: what is accepted now waits.
    const first = await stack.startWorker("w0", ["--simulate", "--vram", "24GB"]);
    await client.waitForWorkers(1);
    await client.sdk.drainWorker("w0");
    await first.exited;
    const items = Array.from({ length: 50 }, (_, i) => ({ model: "sim-zero", params: { tag: `${i}` } }));
    const accepted = await client.submit({ items });
    await assert.rejects(client.submit({ items: items.slice(0, 20) }), (e) => grpcCode(e) === status.RESOURCE_EXHAUSTED);
    await stack.startWorker("w1", ["--simulate", "--vram", "24GB"]);
    const { batch } = await pollUntilTerminal(client, accepted.batchId);
    assert.equal(batch.succeeded, 50);
    const later = await client.run({ items: items.slice(0, 20) });
    assert.equal(later.succeeded, 20);
  });

  test("scheduler - a worker restarting under the same id leaves nothing orphaned", async () => {
    // A heartbeat timeout far beyond the test's deadlines: only the restart can free the items.
    // Hedging off: copies on w2 of the crashed incarnation's overrunning items would otherwise end
    // them before a slow restart is seen, leaving nothing to take back.
    await stack.startCoordinator(["--max-items", "500", "--heartbeat-timeout", "10m", "--hedging", "off"]);
    client = new TestClient(stack.grpcAddr);
    const sim = ["--simulate", "--vram", "40GB", "--threads", "4", "--max-in-flight", "4"];
    const [w1] = await Promise.all([stack.startWorker("w1", sim), stack.startWorker("w2", sim)]);
    await client.waitForWorkers(2);
    // Items of 1 s, more than the slots: w1 holds some whenever it is killed. (With items of
    // 100 ms it could be killed between two, holding nothing, and then only an assignment that
    // timed out was taken back: a restart with nothing to take.)
    const { batchId } = await client.submit({ items: Array.from({ length: 40 }, (_, i) => ({ model: "sim-6g", params: { work_ms: 1000, tag: `${i}` } })) });
    await waitFor("w1 to hold items", async () => ((await client.workers()).find((w) => w.id === "w1")?.itemsInFlight ?? 0) > 0);
    await stack.kill(w1!, "SIGKILL");
    // Back at once, long before the heartbeat timeout would notice the crash.
    await stack.startWorker("w1", sim);
    const { batch } = await pollUntilTerminal(client, batchId);
    assertWholeBatch(batch, 40);
    const failures = batch.results.filter((r) => r.error).map((r) => `#${r.index} ${r.error!.code} after ${r.attempts}: ${r.error!.message}`);
    assert.equal(batch.succeeded, 40, `failed: ${failures.slice(0, 5).join("; ")}`);
    assert.ok(batch.results.some((r) => r.attempts >= 2), "items of the crashed incarnation were not placed again");
    // Freed because the coordinator saw a new incarnation of w1, not because w1 fell silent.
    const logs = stack.coordinator!.logs;
    assert.ok(
      logs.some((l) => l.msg === "taking items back from a worker" && l.workerId === "w1" && l.reason === "the worker restarted"),
      "the coordinator did not take the crashed incarnation's items back on its restart",
    );
    assert.ok(!logs.some((l) => l.msg === "worker lost (no heartbeat)"), "a worker was declared lost");
  });

  test("scheduler - a worker whose process is gone gets no more items and costs none an attempt", async () => {
    // A heartbeat timeout far beyond the test: only NATS's "no responders" tells the coordinator
    // that w1 is gone.
    await stack.startCoordinator(["--heartbeat-timeout", "10m"]);
    client = new TestClient(stack.grpcAddr);
    const sim = ["--simulate", "--vram", "40GB", "--max-in-flight", "4"];
    const [w1] = await Promise.all([stack.startWorker("w1", sim), stack.startWorker("w2", sim)]);
    await client.waitForWorkers(2);
    await stack.kill(w1!, "SIGKILL");
    const { batchId } = await client.submit({ items: Array.from({ length: 40 }, (_, i) => ({ model: "sim-6g", params: { work_ms: 20, tag: `${i}` } })) });
    const { batch } = await pollUntilTerminal(client, batchId);
    assertWholeBatch(batch, 40);
    const failures = batch.results.filter((r) => r.error).map((r) => `#${r.index} ${r.error!.code} after ${r.attempts}: ${r.error!.message}`);
    assert.deepEqual(failures, []);
    assert.deepEqual([...new Set(batch.results.map((r) => r.workerId))], ["w2"]);
    assert.deepEqual([...new Set(batch.results.map((r) => r.attempts))], [1], "an assignment nobody received counted as an attempt");
    // The coordinator tried the dead worker (else this test shows nothing), and then stopped.
    const tries = stack.coordinator!.logs.filter((l) => l.msg === "assignment not taken; items go back to the queue" && l.workerId === "w1");
    assert.ok(tries.length >= 1, "the coordinator never tried the dead worker");
    assert.ok(tries.length <= 4, `${tries.length} assignments went to a worker known to be gone`);
  });
});
