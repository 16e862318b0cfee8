import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { status } from "@grpc/grpc-js";
import { Stack } from "../harness/processes.js";
import { TestClient, grpcCode } from "../harness/client.js";

const good = (i: number) => ({ model: "imagegen-tiny", params: { prompt: `item ${i}`, width: 64, height: 64, steps: 1 } });

describe("validation - a bad batch is refused whole and nothing of it runs", () => {
  const stack = new Stack();
  let client: TestClient;

  before(async () => {
    await stack.startNats();
    await stack.startCoordinator();
    await stack.startWorker("w1", ["--vram", "4GiB"]);
    client = new TestClient(stack.grpcAddr);
    await client.waitForWorkers(1);
  });

  after(async () => {
    client?.close();
    await stack.stop();
  });

  async function refusal(items: unknown[]): Promise<{ code: number; details: string }> {
    try {
      await client.submit({ items: items as never });
    } catch (e) {
      return { code: grpcCode(e)!, details: String((e as { details?: string; message: string }).details ?? (e as Error).message) };
    }
    assert.fail("the batch was accepted");
  }

  test("validation - a bad width is refused with INVALID_ARGUMENT naming the field", async () => {
    const items = [good(0), good(1), { model: "imagegen-tiny", params: { prompt: "x", width: 100 } }, good(3)];
    const e = await refusal(items);
    assert.equal(e.code, status.INVALID_ARGUMENT);
    assert.match(e.details, /items\[2\]\.params\.width: must be a multiple of 8 between 64 and 1024/);
  });

  test("validation - an unknown model and a missing prompt are both named", async () => {
    const e = await refusal([good(0), { model: "no-such-model", params: {} }, { model: "imagegen-tiny", params: { width: 64 } }]);
    assert.equal(e.code, status.INVALID_ARGUMENT);
    assert.match(e.details, /items\[1\]\.model: unknown model "no-such-model"/);
    assert.match(e.details, /items\[2\]\.params\.prompt: is required/);
    assert.doesNotMatch(e.details, /items\[0\]/);
  });

  test("validation - 51 items are refused with RESOURCE_EXHAUSTED", async () => {
    const e = await refusal(Array.from({ length: 51 }, (_, i) => good(i)));
    assert.equal(e.code, status.RESOURCE_EXHAUSTED);
    assert.match(e.details, /51 items exceed the limit of 50/);
  });

  test("validation - an empty batch and wrong types are refused", async () => {
    const e = await refusal([]);
    assert.equal(e.code, status.INVALID_ARGUMENT);
    const t = await refusal([{ model: "imagegen-tiny", params: { prompt: 42, steps: 2.5, unknown_knob: 1 } }]);
    assert.match(t.details, /items\[0\]\.params\.prompt: must be a string/);
    assert.match(t.details, /items\[0\]\.params\.steps: must be an integer/);
    assert.match(t.details, /items\[0\]\.params\.unknown_knob: unknown param/);
  });

  test("validation - nothing of a refused batch was stored or run", async () => {
    const listed = await client.list(100);
    assert.equal(listed.batches.length, 0);
    const [w] = await client.workers();
    assert.equal(w!.itemsDone, 0);
    assert.equal(w!.itemsInFlight, 0);
    // And the fleet still works.
    const ok = await client.run({ items: [good(0)] });
    assert.equal(ok.succeeded, 1);
    await assert.rejects(client.get("b_zzzz"), (err) => grpcCode(err) === status.NOT_FOUND);
  });
});

describe("validation - NATS messages from a misbehaving worker are dropped, nothing breaks", () => {
  const stack = new Stack();
  let client: TestClient;

  before(async () => {
    await stack.startNats();
    await stack.startCoordinator(["--metrics-port", "0"]);
    await stack.startWorker("w1", ["--simulate", "--vram", "40GB"]);
    client = new TestClient(stack.grpcAddr);
    await client.waitForWorkers(1);
  });

  after(async () => {
    client?.close();
    await stack.stop();
  });

  test("validation - garbage heartbeats and results do not change any batch or crash the coordinator", async () => {
    const { connect } = await import("@nats-io/transport-node");
    const { jetstream } = await import("@nats-io/jetstream");
    const { Heartbeat, ResultLogEntry } = await import("../../proto/gen/shoal/v1/wire.js");
    const nc = await connect({ servers: stack.natsUrl, timeout: 10_000 });
    try {
      const { batchId } = await client.submit({ items: Array.from({ length: 20 }, (_, i) => ({ model: "sim-6g", params: { work_ms: 300, tag: `${i}` } })) });
      nc.publish("shoal.hb.evil", new Uint8Array([1, 2, 3, 255, 255]));
      nc.publish("shoal.hb.w9", Heartbeat.encode(Heartbeat.fromPartial({ workerId: "w1", incarnation: "x", gpus: [{ index: 0, vramTotalBytes: 1, vramFreeBytes: 1e12 }] })).finish());
      const js = jetstream(nc);
      await js.publish(`shoal.results.${batchId}`, new Uint8Array([9, 9, 9, 9]));
      const forged = ResultLogEntry.encode(ResultLogEntry.fromPartial({
        entry: { $case: "results", results: { workerId: "evil", outcomes: [
          { lease: { batchId, index: 0, token: "1.forged" }, status: 2, error: { code: "NOPE", message: "x", retryable: false } },
          { lease: { batchId: "b_other", index: 1, token: "1.forged" }, status: 1 },
        ] } },
      })).finish();
      await js.publish(`shoal.results.${batchId}`, forged);
      const batch = await client.waitTerminal(batchId, 60_000);
      assert.equal(batch.succeeded, 20, "a forged outcome changed an item");
      const ws = await client.workers();
      assert.deepEqual(ws.map((w) => w.id), ["w1"], "a heartbeat with a mismatched id registered a worker");
      assert.ok(stack.coordinator!.logs.some((l) => l.msg === "dropping a bad outcome from a worker"));
      assert.ok(stack.coordinator!.logs.some((l) => l.msg === "dropping a bad heartbeat from a worker"));
    } finally {
      await nc.close();
    }
  });
});
