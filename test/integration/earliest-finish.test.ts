import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { BatchState } from "../../proto/gen/shoal/v1/shoal.js";
import { Stack, freePort, type Proc } from "../harness/processes.js";
import { metric } from "../harness/metrics.js";
import { TestClient } from "../harness/client.js";
import { assertWholeBatch, executionsPerItem } from "../harness/batch-checks.js";

// Earliest-finish holds (coordinator/scheduler/earliest-finish.ts) with real processes:
// nats-server, a coordinator and two SIMULATED single-slot workers (items sleep for
// work_ms / --sim-speed): "fast" at 4 × and "slow" at 0.25 ×. A first batch teaches the
// coordinator both speeds (from each item's declared run time and its measured one). Then a
// batch of three 1 s items: the fast worker runs each in 250 ms, the slow one would take 4 s.
// With the fast worker busy on the first item, the slow one is free, yet the other two wait for
// the fast worker (freeing 250 ms later) because that finishes them first: the whole batch runs
// on the fast worker. Placement alone would put one item on the idle slow worker. Hedging is off
// so that no second copy on the fast worker hides where the item was placed.

const FAST = "fast";
const SLOW = "slow";

const items = (n: number, workMs: number, tag: string) => Array.from({ length: n }, (_, i) => ({ model: "sim-6g", params: { work_ms: workMs, tag: `${tag}-${i}` } }));

describe("earliest finish - the last items wait for a fast worker that frees soon instead of taking a slow idle one", () => {
  let stack: Stack;
  let client: TestClient;
  const workers = new Map<string, Proc>();
  let metricsPort = 0;

  before(async () => {
    stack = new Stack();
    await stack.startNats();
    metricsPort = await freePort();
    await stack.startCoordinator(["--hedging", "off", "--metrics-port", String(metricsPort)]);
    client = new TestClient(stack.grpcAddr);
    const one = ["--simulate", "--threads", "1", "--max-in-flight", "1", "--log-level", "debug"];
    // Best fit prefers the 16 GB GPU when both are free, so the first item of a pass takes the fast one.
    workers.set(FAST, await stack.startWorker(FAST, [...one, "--vram", "16GB", "--sim-speed", "4"]));
    await client.waitForWorkers(1);
    workers.set(SLOW, await stack.startWorker(SLOW, [...one, "--vram", "24GB", "--sim-speed", "0.25"]));
    await client.waitForWorkers(2);
  });

  after(async () => {
    client?.close();
    await stack?.stop();
  });

  test("earliest finish - a warm-up batch runs on both workers (speeds unknown yet: nothing to wait for)", async () => {
    const { batchId } = await client.submit({ items: items(2, 200, "warmup") });
    const batch = await client.waitTerminal(batchId, 60_000);
    assertWholeBatch(batch, 2);
    assert.equal(batch.succeeded, 2);
    assert.deepEqual(batch.results.map((r) => r.workerId).sort(), [FAST, SLOW]);
    assert.equal(await metric(metricsPort, "shoal_scheduler_holds_total"), 0, "nothing held while speeds are unknown");
  });

  test("earliest finish - with the speeds known, every item of the next batch runs on the fast worker, each once", async () => {
    const { batchId } = await client.submit({ items: items(3, 1000, "tail") });
    const batch = await client.waitTerminal(batchId, 60_000);
    assert.equal(batch.state, BatchState.BATCH_STATE_COMPLETED);
    assertWholeBatch(batch, 3);
    assert.equal(batch.succeeded, 3);
    assert.deepEqual(
      batch.results.map((r) => r.workerId),
      [FAST, FAST, FAST],
      "the idle slow worker (4 s an item) took none: each item waited for the fast one (250 ms an item)",
    );
    for (const r of batch.results) assert.equal(r.attempts, 1);
    // Each ran once, on the fast worker (the workers' own logs).
    const runs = executionsPerItem([...workers.values()].map((w) => w.logs), batchId);
    assert.deepEqual([...runs.entries()].sort((a, b) => a[0] - b[0]), [[0, 1], [1, 1], [2, 1]]);
    assert.equal(executionsPerItem([workers.get(SLOW)!.logs], batchId).size, 0, "nothing of the batch ran on the slow worker");
    assert.ok((await metric(metricsPort, "shoal_scheduler_holds_total")) >= 2, "the two items that waited are counted as holds");
  });

  test("earliest finish - --earliest-finish off: the same batch takes the idle slow worker too", async () => {
    // The learned speeds are kept in JetStream, so the restarted coordinator knows them as well.
    await stack.kill(stack.coordinator!);
    await stack.startCoordinator(["--hedging", "off", "--earliest-finish", "off", "--metrics-port", String(metricsPort)]);
    await client.waitForWorkers(2);
    const { batchId } = await client.submit({ items: items(3, 1000, "off") });
    const batch = await client.waitTerminal(batchId, 60_000);
    assertWholeBatch(batch, 3);
    assert.equal(batch.succeeded, 3);
    assert.ok(batch.results.some((r) => r.workerId === SLOW), `without holds the idle slow worker takes an item: ${batch.results.map((r) => r.workerId).join(", ")}`);
    assert.equal(await metric(metricsPort, "shoal_scheduler_holds_total"), 0);
  });
});
