import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { BatchState, ItemStatus } from "../../proto/gen/shoal/v1/shoal.js";
import { Stack } from "../harness/processes.js";
import { TestClient } from "../harness/client.js";
import { waitFor } from "../harness/batch-checks.js";

// Simulated workers (items sleep for work_ms) make "running" last long enough to cancel; the
// coordinator, NATS, JetStream and worker processes are the real ones.
describe("cancel - CancelBatch leaves no item pending and stops the workers' items", () => {
  const stack = new Stack();
  let client: TestClient;

  before(async () => {
    await stack.startNats();
    await stack.startCoordinator(["--max-items", "1000"]);
    await Promise.all([
      stack.startWorker("w1", ["--simulate", "--vram", "80GB", "--threads", "2", "--max-in-flight", "4"]),
      stack.startWorker("w2", ["--simulate", "--vram", "80GB", "--threads", "2", "--max-in-flight", "4"]),
    ]);
    client = new TestClient(stack.grpcAddr);
    await client.waitForWorkers(2);
  });

  after(async () => {
    client?.close();
    await stack.stop();
  });

  test("cancel - running and queued items end CANCELLED at once and workers drop them", async () => {
    // Items that would run for 10 minutes: only a cancel ends them within the test's deadlines.
    const items = Array.from({ length: 200 }, (_, i) => ({ model: "sim-6g", params: { work_ms: 600_000, tag: `slow ${i}` } }));
    const { batchId } = await client.submit({ items });
    await waitFor("some items to run", async () => (await client.get(batchId)).running >= 4);
    const cancelled = await client.cancel(batchId);
    assert.equal(cancelled.state, BatchState.BATCH_STATE_CANCELLED);
    assert.equal(cancelled.results.length, 200);
    assert.equal(cancelled.cancelled, 200);
    assert.deepEqual(
      cancelled.results.filter((r) => r.status !== ItemStatus.ITEM_STATUS_CANCELLED || r.error?.code !== "CANCELLED").map((r) => r.index),
      [],
      "items not CANCELLED",
    );
    const again = await client.get(batchId);
    assert.equal(again.state, BatchState.BATCH_STATE_CANCELLED);
    assert.deepEqual(again.results, cancelled.results);
    // Workers stop the items instead of running them for 10 minutes.
    let last = "";
    await waitFor(
      "both workers to drop their items",
      async () => {
        const ws = await client.workers();
        last = JSON.stringify(ws.map((w) => [w.id, w.itemsInFlight]));
        assert.deepEqual(ws.map((w) => w.id).sort(), ["w1", "w2"]);
        return ws.every((w) => w.itemsInFlight === 0);
      },
      60_000,
    ).catch((err: Error) => assert.fail(`${err.message}: workers still hold items ${last}`));
    // Cancelling again is harmless and returns the same terminal batch.
    const twice = await client.cancel(batchId);
    assert.equal(twice.state, BatchState.BATCH_STATE_CANCELLED);
    // The fleet keeps working.
    const next = await client.run({ items: [{ model: "sim-zero", params: {} }] });
    assert.equal(next.state, BatchState.BATCH_STATE_COMPLETED);
  });
});
