// A coordinator that loses its lease and wins it back (what a stalled event loop on a loaded
// machine does: the renewal comes too late) starts a new term, which recovers from JetStream.
// Calls waiting on a batch across that change must neither hang nor fail: RunBatch answers the
// terminal batch, WatchBatch goes on with each item once. The lease is taken away for real here:
// the test deletes the lease key in the KV bucket, so the coordinator's next renewal (a
// compare-and-set on the revision it holds) fails and it is deposed.

import { afterEach, beforeEach, describe, test } from "node:test";
import assert from "node:assert/strict";
import { Kvm } from "@nats-io/kv";
import { connect } from "@nats-io/transport-node";
import { BatchState, ItemStatus, type BatchEvent } from "../../proto/gen/shoal/v1/shoal.js";
import { Stack } from "../harness/processes.js";
import { TestClient } from "../harness/client.js";
import { assertWholeBatch, waitFor } from "../harness/batch-checks.js";

const SIM = ["--simulate", "--vram", "40GB", "--threads", "2", "--max-in-flight", "2"];
const items = (n: number, workMs: number, tag: string) => Array.from({ length: n }, (_, i) => ({ model: "sim-6g", params: { work_ms: workMs, tag: `${tag} ${i}` } }));

describe("a term change under waiting calls", () => {
  let stack: Stack;
  let client: TestClient | undefined;

  beforeEach(async () => {
    stack = new Stack();
    await stack.startNats();
  });

  afterEach(async () => {
    client?.close();
    await stack.stop();
  });

  test("term-follow - the lease lost and won back mid-batch: RunBatch answers the terminal batch and WatchBatch sends each item once", async () => {
    const coordinator = await stack.startCoordinator(["--max-items", "1000", "--lease-ttl", "2s", "--hedging", "off"]);
    client = new TestClient(stack.grpcAddr);
    await stack.startWorker("w1", SIM);
    await client.waitForWorkers(1);

    // Two batches of 6 × 700 ms on 2 slots: about 4 s of work, so both are mid-way when the lease goes.
    const running = client.run({ items: items(6, 700, "run") }, 120_000);
    const { batchId: watchedId } = await client.submit({ items: items(6, 700, "watch") });
    const watched = client.watch(watchedId, 120_000);
    const terms = () => coordinator.logs.filter((l) => l.msg === "active coordinator serving").length;
    const firstTerms = terms();
    assert.equal(firstTerms, 1, "one term before the lease is taken away");

    await new Promise((r) => setTimeout(r, 1000));
    const nc = await connect({ servers: stack.natsUrl, timeout: 10_000 });
    try {
      const kv = await new Kvm(nc).open("shoal-leader");
      await kv.delete("active");
    } finally {
      await nc.close();
    }
    await waitFor("the coordinator to close its term", () => coordinator.logs.some((l) => l.msg === "closing this term's coordinator; back to standby"), 30_000);
    await waitFor("a second term", () => terms() === 2, 60_000);

    const batch = await running;
    assertWholeBatch(batch, 6);
    assert.equal(batch.state, BatchState.BATCH_STATE_COMPLETED);

    const events: BatchEvent[] = await watched;
    const itemIndexes = events.flatMap((e) => (e.event?.$case === "item" ? [e.event.item.index] : []));
    assert.deepEqual([...itemIndexes].sort((a, b) => a - b), [0, 1, 2, 3, 4, 5], "each item once across the two terms");
    assert.ok(events.every((e) => e.event?.$case !== "item" || e.event.item.status === ItemStatus.ITEM_STATUS_SUCCEEDED));
    const last = events.at(-1)!;
    assert.ok(last.event?.$case === "batch" && last.event.batch.state === BatchState.BATCH_STATE_COMPLETED, "the stream ends with the terminal batch");
  });
});
