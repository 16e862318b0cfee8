import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { BatchState } from "../../proto/gen/shoal/v1/shoal.js";
import { Stack } from "../harness/processes.js";
import { TestClient } from "../harness/client.js";

// Placement only reads VRAM figures, so simulated workers (declared --vram, items sleep) test it
// with the real coordinator, NATS and worker processes. sim-12g needs 8 GB weights + 4 GB.
describe("vram placement - a model whose need lies between two workers' VRAM", () => {
  const stack = new Stack();
  let client: TestClient;

  before(async () => {
    await stack.startNats();
    await stack.startCoordinator();
    await Promise.all([
      stack.startWorker("small", ["--simulate", "--vram", "10GB", "--threads", "4", "--max-in-flight", "8"]),
      stack.startWorker("big", ["--simulate", "--vram", "24GB", "--threads", "4", "--max-in-flight", "8"]),
    ]);
    client = new TestClient(stack.grpcAddr);
    await client.waitForWorkers(2);
  });

  after(async () => {
    client?.close();
    await stack.stop();
  });

  test("vram placement - the smaller worker never receives an item it cannot fit; it still gets the ones it can", async () => {
    const big = Array.from({ length: 20 }, (_, i) => ({ model: "sim-12g", params: { work_ms: 30, tag: `big ${i}` } }));
    const { batchId } = await client.submit({ items: big });
    const batch = await client.waitTerminal(batchId, 60_000);
    assert.equal(batch.state, BatchState.BATCH_STATE_COMPLETED);
    assert.equal(batch.succeeded, 20);
    assert.equal(batch.results.length, 20);
    assert.deepEqual(new Set(batch.results.map((r) => r.workerId)), new Set(["big"]));
    // Each placed on the big worker at the first attempt: none was tried on the small one.
    assert.deepEqual(batch.results.map((r) => r.attempts), Array(20).fill(1));
    // 24 GB holds the 8 GB weights plus at most 4 items of 4 GB at once: the rest waited.
    const small = (await client.workers()).find((w) => w.id === "small")!;
    assert.equal(small.itemsDone, 0, "the 10 GB worker ran an item that needs 12 GB");

    // Items that fit the small worker go there too (6 GB model: 4 GB weights + 2 GB).
    const mixed = Array.from({ length: 40 }, (_, i) => ({ model: "sim-6g", params: { work_ms: 50, tag: `small ${i}` } }));
    const second = await client.waitTerminal((await client.submit({ items: mixed })).batchId, 60_000);
    assert.equal(second.succeeded, 40);
    assert.ok(second.results.some((r) => r.workerId === "small"), "the small worker got none of the items that fit it");
  });

  test("vram placement - ListWorkers shows VRAM per GPU", async () => {
    const ws = await client.workers();
    const big = ws.find((w) => w.id === "big")!;
    assert.equal(big.gpus.length, 1);
    assert.equal(big.gpus[0]!.vramTotalBytes, 24e9);
    assert.ok(big.gpus[0]!.vramFreeBytes <= 24e9);
    assert.equal(big.gpus[0]!.source, "budget");
  });
});
