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
