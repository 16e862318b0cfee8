import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { BatchState, ItemStatus } from "../../proto/gen/shoal/v1/shoal.js";
import { Stack } from "../harness/processes.js";
import { TestClient } from "../harness/client.js";

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
    const items = Array.from({ length: 200 }, (_, i) => ({ model: "sim-6g", params: { work_ms: 20_000, tag: `slow ${i}` } }));
    const { batchId } = await client.submit({ items });
    // Wait until some items run.
    for (;;) {
      const b = await client.get(batchId);
      if (b.running >= 4) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    const cancelled = await client.cancel(batchId);
    assert.equal(cancelled.state, BatchState.BATCH_STATE_CANCELLED);
    assert.equal(cancelled.results.length, 200);
    assert.equal(cancelled.cancelled, 200);
    assert.ok(cancelled.results.every((r) => r.status === ItemStatus.ITEM_STATUS_CANCELLED && r.error?.code === "CANCELLED"));
    const again = await client.get(batchId);
    assert.equal(again.state, BatchState.BATCH_STATE_CANCELLED);
    // Workers stop the items instead of running them for 20 s.
    const deadline = Date.now() + 10_000;
    for (;;) {
      const ws = await client.workers();
      if (ws.every((w) => w.itemsInFlight === 0)) break;
      assert.ok(Date.now() < deadline, `workers still hold items: ${JSON.stringify(ws.map((w) => [w.id, w.itemsInFlight]))}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    // Cancelling again is harmless and returns the same terminal batch.
    const twice = await client.cancel(batchId);
    assert.equal(twice.state, BatchState.BATCH_STATE_CANCELLED);
    // The fleet keeps working.
    const next = await client.run({ items: [{ model: "sim-zero", params: {} }] });
    assert.equal(next.state, BatchState.BATCH_STATE_COMPLETED);
  });
});
