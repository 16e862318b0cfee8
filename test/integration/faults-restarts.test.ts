// Guarantees 1-3 across restarts of the coordinator and of nats-server (kill -9, then start
// again on the same store): no accepted batch is lost, every item ends once, no item with a
// committed result runs again, idempotency keys survive.

import { afterEach, beforeEach, describe, test } from "node:test";
import assert from "node:assert/strict";
import { Stack, type Proc } from "../harness/processes.js";
import { status } from "@grpc/grpc-js";
import { Kvm } from "@nats-io/kv";
import { connect } from "@nats-io/transport-node";
import { BatchState } from "../../proto/gen/shoal/v1/shoal.js";
import { grpcCode, TestClient } from "../harness/client.js";
import { assertWholeBatch, executionsPerItem, pollUntilTerminal } from "../harness/batch-checks.js";

const N = 200;
const items = (workMs: number, tag: string) => Array.from({ length: N }, (_, i) => ({ model: "sim-6g", params: { work_ms: workMs, tag: `${tag} ${i}` } }));
const SIM = ["--simulate", "--vram", "40GB", "--threads", "4", "--max-in-flight", "4"];

describe("faults - restarts", () => {
  let stack: Stack;
  let client: TestClient;
  let workers: Proc[];

  beforeEach(async () => {
    stack = new Stack();
    await stack.startNats();
    await stack.startCoordinator(["--max-items", "1000"]);
    workers = await Promise.all(["w1", "w2", "w3"].map((id) => stack.startWorker(id, [...SIM, "--log-level", "debug"])));
    client = new TestClient(stack.grpcAddr);
    await client.waitForWorkers(3);
  });

  afterEach(async () => {
    client?.close();
    await stack.stop();
  });

  test("faults - kill -9 the coordinator mid-batch and start it again: the batch completes, nothing runs twice", async () => {
    const key = "restart-test-key";
    const { batchId } = await client.submit({ items: items(120, "c"), idempotencyKey: key });
    let restarted = false;
    const { batch, partialTerminalPolls } = await pollUntilTerminal(client, batchId, {
      onProgress: (b) => {
        if (!restarted && b.succeeded >= N / 2) {
          restarted = true;
          void (async () => {
            await stack.kill(stack.coordinator!, "SIGKILL");
            await stack.startCoordinator(["--max-items", "1000"]);
          })();
        }
      },
    });
    assert.ok(restarted);
    assert.equal(partialTerminalPolls, 0);
    assertWholeBatch(batch, N);
    assert.equal(batch.succeeded, N);
    const runs = executionsPerItem(workers.map((w) => w.logs), batchId);
    const twice = [...runs].filter(([, n]) => n > 1).map(([i]) => i);
    assert.deepEqual(twice, [], `items ran more than once: ${twice.join(", ")}`);
    assert.equal(runs.size, N);
    // The idempotency key still names the same batch after the restart.
    const again = await client.submit({ items: items(1, "c").slice(0, 3), idempotencyKey: key });
    assert.equal(again.batchId, batchId);
  });

  test("faults - a batch stored without being accepted (its submit failed after the record landed) is not what its idempotency key returns", async () => {
    // The state a SubmitBatch leaves when its record write timed out yet landed: the record is
    // stored, the open marker is gone, the caller was told UNAVAILABLE and retries under the same
    // key. Made here for real: a batch is stored, the coordinator is killed, its marker removed.
    const key = "orphan-key";
    const { batchId: orphan } = await client.submit({ items: [{ model: "sim-6g", params: { work_ms: 20_000, tag: "orphan" } }], idempotencyKey: key });
    await stack.kill(stack.coordinator!, "SIGKILL");
    const nc = await connect({ servers: stack.natsUrl, timeout: 10_000 });
    try {
      await (await new Kvm(nc).open("shoal-batches")).purge(`open.${orphan}`);
    } finally {
      await nc.close();
    }
    await stack.startCoordinator(["--max-items", "1000"]);
    // Before, the retry got the orphan's id and RunBatch waited on a batch that never runs.
    const retried = await client.submit({ items: [{ model: "sim-6g", params: { work_ms: 1, tag: "retry" } }], idempotencyKey: key });
    assert.notEqual(retried.batchId, orphan, "the key names a batch that runs, not the one never accepted");
    const { batch } = await pollUntilTerminal(client, retried.batchId);
    assert.equal(batch.state, BatchState.BATCH_STATE_COMPLETED);
    assert.equal((await client.submit({ items: [{ model: "sim-6g", params: { work_ms: 1 } }], idempotencyKey: key })).batchId, retried.batchId, "the key now keeps naming the retried batch");
    // Watching the orphan answers at once that it was never accepted, instead of waiting.
    await assert.rejects(client.watch(orphan, 20_000), (err: unknown) => grpcCode(err) === status.FAILED_PRECONDITION);
  });

  test("faults - kill -9 nats-server mid-batch and start it on the same store: every client reconnects, nothing is lost", async () => {
    const first = await client.submit({ items: items(120, "n") });
    let restarted = false;
    const { batch, partialTerminalPolls } = await pollUntilTerminal(client, first.batchId, {
      onProgress: (b) => {
        if (!restarted && b.succeeded >= N / 2) {
          restarted = true;
          void (async () => {
            await stack.kill(stack.nats!, "SIGKILL");
            await new Promise((r) => setTimeout(r, 500));
            await stack.startNats();
          })();
        }
      },
    });
    assert.ok(restarted);
    assert.equal(partialTerminalPolls, 0);
    assertWholeBatch(batch, N);
    assert.equal(batch.succeeded, N);
    // The fleet keeps serving after the restart: a new batch runs to the end.
    const second = await client.submit({ items: items(1, "after").slice(0, 20) });
    const done = await pollUntilTerminal(client, second.batchId);
    assert.equal(done.batch.succeeded, 20);
  });
});
