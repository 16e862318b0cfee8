// Many batches at once: their results interleave in the results stream and they finish at
// about the same time. Every one must end with all its results. (The bench once lost items in
// this situation at 10 × 10,000 items, when finished batches were purged by subject on
// nats-server < 2.9.15; this smaller run did not reproduce that, see docs/performance.md.)

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { Stack } from "../harness/processes.js";
import { TestClient } from "../harness/client.js";
import { assertWholeBatch, pollUntilTerminal } from "../harness/batch-checks.js";

describe("concurrency - many batches finishing together", () => {
  const stack = new Stack();
  let client: TestClient;

  before(async () => {
    await stack.startNats();
    await stack.startCoordinator(["--max-items", "1000"]);
    const sim = ["--simulate", "--vram", "1000GB", "--threads", "64", "--max-in-flight", "500"];
    await Promise.all([stack.startWorker("w1", sim), stack.startWorker("w2", sim)]);
    client = new TestClient(stack.grpcAddr);
    await client.waitForWorkers(2);
  });

  after(async () => {
    client?.close();
    await stack.stop();
  });

  test("concurrency - 40 batches of 200 items submitted at once all end with every result", async () => {
    const ids = await Promise.all(
      Array.from({ length: 40 }, (_, b) => client.submit({ items: Array.from({ length: 200 }, (_, i) => ({ model: "sim-zero", params: { tag: `${b}/${i}` } })) })),
    );
    const done = await Promise.all(ids.map(({ batchId }) => pollUntilTerminal(client, batchId, { timeoutMs: 120_000 })));
    for (const { batch, partialTerminalPolls } of done) {
      assert.equal(partialTerminalPolls, 0);
      assertWholeBatch(batch, 200);
      assert.equal(batch.succeeded, 200);
    }
  });
});
