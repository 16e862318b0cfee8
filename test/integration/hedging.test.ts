import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { BatchState, ItemStatus, type Batch } from "../../proto/gen/shoal/v1/shoal.js";
import { Stack, freePort, type Proc } from "../harness/processes.js";
import { TestClient } from "../harness/client.js";
import { metric } from "../harness/metrics.js";
import { assertWholeBatch, executionsPerItem, pollUntilTerminal, waitFor } from "../harness/batch-checks.js";

// Straggler hedging with real processes: nats-server, a coordinator and SIMULATED workers (items
// sleep for work_ms / --sim-speed), one of them slow. A batch of three items fills the three
// single-slot workers; the slow worker's item is still running long after the others are done,
// so the coordinator runs a second copy on an idle fast worker, the copy's outcome ends the item,
// and the slow worker's copy is cancelled. With --hedging off nothing of that happens.

const FAST = ["fast-1", "fast-2"];
const SLOW = "slow";



interface Fleet {
  stack: Stack;
  client: TestClient;
  metricsPort: number;
  workers: Map<string, Proc>;
}

async function startFleet(coordinatorArgs: string[], slowSpeed: string): Promise<Fleet> {
  const stack = new Stack();
  await stack.startNats();
  const metricsPort = await freePort();
  await stack.startCoordinator(["--max-items", "100", "--metrics-port", String(metricsPort), ...coordinatorArgs]);
  const workers = new Map<string, Proc>();
  // Debug logs: each worker's "item succeeded" line is how the test counts runs.
  const one = ["--simulate", "--vram", "16GB", "--threads", "1", "--max-in-flight", "1", "--log-level", "debug"];
  for (const id of FAST) workers.set(id, await stack.startWorker(id, one));
  workers.set(SLOW, await stack.startWorker(SLOW, [...one, "--sim-speed", slowSpeed]));
  const client = new TestClient(stack.grpcAddr);
  await client.waitForWorkers(3);
  return { stack, client, metricsPort, workers };
}

const items = (workMs: number, tag: string) => Array.from({ length: 3 }, (_, i) => ({ model: "sim-6g", params: { work_ms: workMs, tag: `${tag}-${i}` } }));

const HEDGED = "hedging a straggler: a second copy on an idle GPU";

/** The coordinator's hedge decisions for a batch (from its structured log). */
const hedgesOf = (coordinator: Proc, batchId: string) => coordinator.logs.filter((l) => l.msg === HEDGED && l.batchId === batchId);

/** Each item succeeded exactly once in the whole fleet (the workers' own logs). */
function assertRanOnce(f: Fleet, batchId: string, n: number): void {
  const runs = executionsPerItem([...f.workers.values()].map((w) => w.logs), batchId);
  assert.deepEqual([...runs.entries()].sort((a, b) => a[0] - b[0]), [...Array(n).keys()].map((i) => [i, 1]), "every item succeeded exactly once on the workers");
}

describe("hedging - a straggler on a slow worker gets a second copy on an idle one", () => {
  let f: Fleet;
  let batch: Batch;
  let slowIndex: number;

  before(async () => {
    // The slow worker takes 5 s for a 1 s item: overdue at 2 × 1 s, while both fast workers are idle.
    f = await startFleet([], "0.2");
    const { batchId } = await f.client.submit({ items: items(1000, "hedge") });
    batch = await f.client.waitTerminal(batchId, 60_000);
    slowIndex = Number(hedgesOf(f.stack.coordinator!, batchId)[0]?.item);
  });

  after(async () => {
    f?.client.close();
    await f?.stack.stop();
  });

  test("hedging - the batch completes once, every item succeeded exactly once, the straggler's copy won", async () => {
    assert.equal(batch.state, BatchState.BATCH_STATE_COMPLETED);
    assertWholeBatch(batch, 3);
    assert.equal(batch.succeeded, 3);
    assert.ok(Number.isInteger(slowIndex), "an item was hedged");
    const r = batch.results[slowIndex]!;
    assert.equal(r.status, ItemStatus.ITEM_STATUS_SUCCEEDED);
    assert.ok(FAST.includes(r.workerId), `the slow worker's item was ended by ${r.workerId}, not by the copy on a fast worker`);
    assert.equal(r.attempts, 2, "the copy is the item's second attempt");
    assertRanOnce(f, batch.id, 3);
    // Still terminal, still once, when read again.
    const again = await f.client.get(batch.id);
    assert.equal(again.results.length, 3);
    assert.equal(again.succeeded, 3);
  });

  test("hedging - the decision is logged with batch and item ids, the loser is cancelled, the metric counts a won hedge", async () => {
    const coordinator = f.stack.coordinator!;
    const hedged = coordinator.logs.filter((l) => l.msg === HEDGED);
    assert.equal(hedged.length, 1, "one hedge");
    assert.equal(hedged[0]!.batchId, batch.id);
    assert.equal(Number(hedged[0]!.item), slowIndex);
    assert.equal(hedged[0]!.originalWorkerId, SLOW);
    assert.ok(FAST.includes(String(hedged[0]!.workerId)));
    assert.equal(await metric(f.metricsPort, "shoal_item_hedges_total", { model: "sim-6g", outcome: "won" }), 1);
    assert.equal(await metric(f.metricsPort, "shoal_item_hedges_total"), 1);
    // The slow worker's copy is cancelled, and its late outcome changes nothing.
    await waitFor("the slow worker's copy to be cancelled", () => f.workers.get(SLOW)!.logs.some((l) => l.msg === "cancel requested" && Number(l.cancelled) === 1), 30_000);
    await waitFor("the cancelled copy's outcome to be ignored", async () => (await metric(f.metricsPort, "shoal_item_attempts_total", { outcome: "stale_ignored" })) >= 1, 30_000);
    assert.equal(await metric(f.metricsPort, "shoal_items_total"), 3, "three items ended, each once");
    // Both copies' reservations and worker slots are given back.
    await waitFor("no item in flight and nothing reserved on any worker", async () => {
      const ws = await f.client.workers();
      return ws.length === 3 && ws.every((w) => Number(w.itemsInFlight) === 0 && w.gpus.every((g) => Number(g.vramReservedBytes) === 0));
    }, 30_000);
  });
});

describe("hedging - off with --hedging off", () => {
  let f: Fleet;

  before(async () => {
    f = await startFleet(["--hedging", "off"], "0.2");
  });

  after(async () => {
    f?.client.close();
    await f?.stack.stop();
  });

  test("hedging - with --hedging off the straggler runs on alone and no hedge happens", async () => {
    const { batchId } = await f.client.submit({ items: items(1000, "nohedge") });
    const batch = await f.client.waitTerminal(batchId, 60_000);
    assertWholeBatch(batch, 3);
    assert.equal(batch.succeeded, 3);
    assert.equal(batch.results.filter((r) => r.workerId === SLOW).length, 1, "the slow worker finished its own item");
    assert.equal(f.stack.coordinator!.logs.filter((l) => l.msg === HEDGED).length, 0);
    assert.equal(await metric(f.metricsPort, "shoal_item_hedges_total"), 0);
    assertRanOnce(f, batchId, 3);
  });
});

describe("hedging - a coordinator restart while both copies run", () => {
  let f: Fleet;

  before(async () => {
    // 4 s items; the slow worker takes 40 s: hedged at 8 s, the copy ends at about 12 s.
    f = await startFleet([], "0.1");
  });

  after(async () => {
    f?.client.close();
    await f?.stack.stop();
  });

  test("hedging - kill -9 the coordinator after the hedge: the restarted one counts either copy and the batch completes once", async () => {
    const { batchId } = await f.client.submit({ items: items(4000, "restart") });
    const first = f.stack.coordinator!;
    await waitFor("the hedge", () => hedgesOf(first, batchId).length > 0, 60_000);
    const slowIndex = Number(hedgesOf(first, batchId)[0]!.item);
    const copyWorker = String(hedgesOf(first, batchId)[0]!.workerId);
    await waitFor("the copy to reach its worker", () => f.workers.get(copyWorker)!.logs.some((l) => l.msg === "item accepted" && l.batchId === batchId && Number(l.item) === slowIndex), 30_000);
    await f.stack.kill(first, "SIGKILL");
    await f.stack.startCoordinator(["--max-items", "100", "--metrics-port", String(f.metricsPort)]);
    const { batch, partialTerminalPolls } = await pollUntilTerminal(f.client, batchId, { timeoutMs: 120_000 });
    assert.equal(partialTerminalPolls, 0);
    assertWholeBatch(batch, 3);
    assert.equal(batch.succeeded, 3);
    // The copy (about 12 s) ends the item long before the slow original (40 s) could.
    assert.ok(FAST.includes(batch.results[slowIndex]!.workerId), `ended by ${batch.results[slowIndex]!.workerId}`);
    assertRanOnce(f, batchId, 3);
  });
});

describe("hedging - the copy ends the item while the coordinator is down", () => {
  let f: Fleet;

  before(async () => {
    f = await startFleet([], "0.1");
  });

  after(async () => {
    f?.client.close();
    await f?.stack.stop();
  });

  test("hedging - after the restart the copy's outcome counts from the log, and the slow worker's copy is cancelled", async () => {
    const { batchId } = await f.client.submit({ items: items(4000, "down") });
    const first = f.stack.coordinator!;
    await waitFor("the hedge", () => hedgesOf(first, batchId).length > 0, 60_000);
    const hedge = hedgesOf(first, batchId)[0]!;
    const slowIndex = Number(hedge.item);
    const copyWorker = String(hedge.workerId);
    // The decision is logged just before the copy is sent: a kill in between (a loaded machine
    // can deschedule the coordinator there) leaves no copy to end the item while it is down.
    await waitFor("the copy to reach its worker", () => f.workers.get(copyWorker)!.logs.some((l) => l.msg === "item accepted" && l.batchId === batchId && Number(l.item) === slowIndex), 30_000);
    await f.stack.kill(first, "SIGKILL");
    // The copy ends and its outcome goes to the results stream while no coordinator runs.
    await waitFor("the copy to succeed", () => f.workers.get(copyWorker)!.logs.some((l) => l.msg === "item succeeded" && l.batchId === batchId && Number(l.item) === slowIndex), 60_000);
    const second = await f.stack.startCoordinator(["--max-items", "100", "--metrics-port", String(f.metricsPort)]);
    const { batch, partialTerminalPolls } = await pollUntilTerminal(f.client, batchId, { timeoutMs: 120_000 });
    assert.equal(partialTerminalPolls, 0);
    assertWholeBatch(batch, 3);
    assert.equal(batch.succeeded, 3);
    assert.equal(batch.results[slowIndex]!.workerId, copyWorker);
    // The slow worker reported still holding its copy: the recovered coordinator stops it.
    await waitFor("the slow copy to be cancelled", () => f.workers.get(SLOW)!.logs.some((l) => l.msg === "cancel requested" && Number(l.cancelled) === 1), 30_000);
    assert.ok(second.logs.some((l) => l.msg === "cancelling copies of items that ended while the coordinator was away" && l.batchId === batchId && l.workerId === SLOW));
    assertRanOnce(f, batchId, 3);
  });
});
