// The rest of the public API with real processes: webhooks signed per Standard Webhooks,
// API keys and tenants, RetryBatch, ListBatches pages, idempotency keys.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import { status } from "@grpc/grpc-js";
import { Webhook } from "standardwebhooks";
import { BatchState, ItemStatus } from "../../proto/gen/shoal/v1/shoal.js";
import { Stack } from "../harness/processes.js";
import { TestClient, grpcCode } from "../harness/client.js";
import { pollUntilTerminal, waitFor } from "../harness/batch-checks.js";

const SECRET = "whsec_" + Buffer.from("0123456789abcdef0123456789abcdef").toString("base64");

describe("api - webhooks, tenants, retries, pages", () => {
  const stack = new Stack();
  let alice: TestClient;
  let bob: TestClient;
  let anonymous: TestClient;
  let receiver: Server;
  let receiverUrl = "";
  const received: { headers: IncomingHttpHeaders; body: string }[] = [];
  let failFirst = 1;

  before(async () => {
    receiver = createServer((req, res) => {
      let body = "";
      req.on("data", (d) => (body += d));
      req.on("end", () => {
        // The first delivery fails: the coordinator must retry it.
        if (failFirst-- > 0) return void res.writeHead(503).end();
        received.push({ headers: req.headers, body });
        res.writeHead(204).end();
      });
    });
    await new Promise<void>((r) => receiver.listen(0, "127.0.0.1", () => r()));
    receiverUrl = `http://127.0.0.1:${(receiver.address() as { port: number }).port}/hook`;
    await stack.startNats();
    // A short unplaceable grace: an item that reported a need beyond every GPU fails soon (RetryBatch test).
    await stack.startCoordinator(["--api-keys", "alice:alice-key-123,bob:bob-key-4567", "--webhook-retries", "200ms,200ms,200ms", "--webhook-allow-private", "--unplaceable-grace", "1s"]);
    await stack.startWorker("w1", ["--simulate", "--vram", "40GB"]);
    alice = new TestClient(stack.grpcAddr, "alice-key-123");
    bob = new TestClient(stack.grpcAddr, "bob-key-4567");
    anonymous = new TestClient(stack.grpcAddr);
    await alice.waitForWorkers(1);
  });

  after(async () => {
    for (const c of [alice, bob, anonymous]) c?.close();
    receiver?.close();
    await stack.stop();
  });

  test("api - a finished batch calls its webhook, signed, retried after a failure", async () => {
    const { batchId } = await alice.submit({
      items: [{ model: "sim-zero", params: { tag: "a" } }, { model: "sim-6g", params: { fail: true } }],
      labels: { campaign: "spring" },
      webhook: { url: receiverUrl, events: ["batch.completed"], secret: SECRET },
    });
    await waitFor("the webhook", () => received.length > 0, 20_000);
    const { headers, body } = received[0]!;
    const payload = new Webhook(SECRET).verify(body, headers as Record<string, string>) as { type: string; data: { batch_id: string; results: { status: string; error?: { code: string } }[]; labels: Record<string, string> } };
    assert.equal(payload.type, "batch.completed");
    assert.equal(payload.data.batch_id, batchId);
    assert.deepEqual(payload.data.labels, { campaign: "spring" });
    assert.deepEqual(payload.data.results.map((r) => r.status), ["succeeded", "failed"]);
    assert.equal(headers["webhook-id"], `${batchId}.batch.completed`);
    assert.throws(() => new Webhook("whsec_" + Buffer.from("another secret, not ours!").toString("base64")).verify(body, headers as Record<string, string>));
  });

  test("api - without a key calls are UNAUTHENTICATED; another tenant's batch is NOT_FOUND", async () => {
    await assert.rejects(anonymous.submit({ items: [{ model: "sim-zero", params: {} }] }), (e) => grpcCode(e) === status.UNAUTHENTICATED);
    const wrong = new TestClient(stack.grpcAddr, "not-a-key-at-all");
    await assert.rejects(wrong.list(), (e) => grpcCode(e) === status.UNAUTHENTICATED);
    wrong.close();
    const { batchId } = await alice.submit({ items: [{ model: "sim-zero", params: {} }] });
    await assert.rejects(bob.get(batchId), (e) => grpcCode(e) === status.NOT_FOUND);
    await assert.rejects(bob.cancel(batchId), (e) => grpcCode(e) === status.NOT_FOUND);
    assert.ok(!(await bob.list()).batches.some((b) => b.id === batchId));
    assert.ok((await alice.list()).batches.some((b) => b.id === batchId));
  });

  test("api - RetryBatch resubmits only the retryable failures", async () => {
    // A retryable failure needs an item that fails retryably every time: sim-6g with use_bytes
    // far beyond any GPU runs out of memory, reports that need, and then fits no GPU, so it fails
    // OUT_OF_MEMORY (retryable) after the unplaceable grace; fail:true is a non-retryable
    // INFERENCE_FAILED.
    const { batchId } = await alice.submit({
      items: [
        { model: "sim-zero", params: {} },
        { model: "sim-6g", params: { fail: true } },
        { model: "sim-6g", params: { use_bytes: 100e9 } },
      ],
    });
    const { batch } = await pollUntilTerminal(alice, batchId);
    assert.equal(batch.results[1]!.error?.retryable, false);
    assert.equal(batch.results[2]!.error?.code, "OUT_OF_MEMORY");
    assert.equal(batch.results[2]!.error?.retryable, true);
    // It ran out of memory once, reported its 100 GB need, and then fit no GPU: unplaceable, not another OOM.
    assert.match(batch.results[2]!.error!.message, /needs \d+ bytes of VRAM; the largest GPU serving sim-6g/);
    const retry = await alice.sdk.retryBatch(batchId);
    assert.equal(retry.itemCount, 1);
    const retried = await pollUntilTerminal(alice, retry.batchId);
    assert.equal(retried.batch.total, 1);
    // The retried item is the one that ran out of memory; the non-retryable one was left out.
    assert.equal(retried.batch.results[0]!.status, ItemStatus.ITEM_STATUS_FAILED);
    assert.equal(retried.batch.results[0]!.error?.code, "OUT_OF_MEMORY");
  });

  test("api - ListBatches pages newest first; idempotency keys return the first batch", async () => {
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push((await bob.submit({ items: [{ model: "sim-zero", params: { tag: `${i}` } }] })).batchId);
    const first = await bob.list(2);
    assert.deepEqual(first.batches.map((b) => b.id), [ids[4], ids[3]]);
    const second = await bob.list(2, first.nextPageToken);
    assert.deepEqual(second.batches.map((b) => b.id), [ids[2], ids[1]]);
    const third = await bob.list(2, second.nextPageToken);
    assert.deepEqual(third.batches.map((b) => b.id), [ids[0]]);
    assert.equal(third.nextPageToken, "");
    const a = await bob.submit({ items: [{ model: "sim-zero", params: {} }], idempotencyKey: "order-42" });
    const b = await bob.submit({ items: [{ model: "sim-zero", params: {} }], idempotencyKey: "order-42" });
    assert.equal(a.batchId, b.batchId);
    // Keys are per tenant.
    const c = await alice.submit({ items: [{ model: "sim-zero", params: {} }], idempotencyKey: "order-42" });
    assert.notEqual(c.batchId, a.batchId);
    const done = await pollUntilTerminal(bob, a.batchId);
    assert.equal(done.batch.state, BatchState.BATCH_STATE_COMPLETED);
  });
});
