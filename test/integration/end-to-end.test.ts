import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { status } from "@grpc/grpc-js";
import { decode } from "fast-png";
import { BatchState, ItemStatus } from "../../proto/gen/shoal/v1/shoal.js";
import { connect } from "@nats-io/transport-node";
import { Heartbeat } from "../../proto/gen/shoal/v1/wire.js";
import { decodeMessage } from "../../shared/codec.js";
import { Names } from "../../shared/subjects.js";
import { Stack } from "../harness/processes.js";
import { TestClient, grpcCode } from "../harness/client.js";

const SIZES: [number, number][] = [
  [64, 64],
  [128, 64],
  [64, 128],
  [96, 96],
  [160, 120],
  [256, 128],
];

describe("end to end - 50 imagegen-tiny items through 1 coordinator and 2 workers", () => {
  const stack = new Stack();
  let client: TestClient;

  before(async () => {
    await stack.startNats();
    await stack.startCoordinator();
    await Promise.all([stack.startWorker("w1", ["--vram", "4GiB"]), stack.startWorker("w2", ["--vram", "4GiB"])]);
    client = new TestClient(stack.grpcAddr);
    await client.waitForWorkers(2);
  });

  after(async () => {
    client?.close();
    await stack.stop();
  });

  test("end to end - every item succeeds with a PNG of the requested size, identical params give identical bytes", async () => {
    const items = Array.from({ length: 50 }, (_, i) => {
      const [width, height] = SIZES[i % SIZES.length]!;
      // Items 0 and 25, 1 and 26, ... share params: their PNGs must be byte-identical.
      const k = i % 25;
      return { model: "imagegen-tiny", params: { prompt: `product shot ${k}, studio light`, width, height, steps: 2, seed: 1000 + k, ...(k % 3 === 0 ? { style: "watercolor" } : {}) } };
    });
    // Keep sizes consistent within each identical pair.
    for (let i = 25; i < 50; i++) items[i]!.params = { ...items[i - 25]!.params };

    const { batchId, itemCount } = await client.submit({ items, labels: { suite: "e2e" } });
    assert.equal(itemCount, 50);

    const watched = client.watch(batchId, 240_000);
    let sawPartialTerminal = false;
    const batch = await client.waitTerminal(batchId, 240_000, (b) => {
      if (b.state >= BatchState.BATCH_STATE_COMPLETED && b.results.length !== b.total) sawPartialTerminal = true;
    });
    assert.equal(sawPartialTerminal, false, "a poll saw a terminal batch without all its results");
    assert.equal(batch.state, BatchState.BATCH_STATE_COMPLETED);
    assert.equal(batch.total, 50);
    assert.equal(batch.succeeded, 50);
    assert.equal(batch.results.length, 50);
    assert.deepEqual(batch.labels, { suite: "e2e" });
    assert.deepEqual(batch.results.map((r) => r.index), [...Array(50).keys()]);

    const pngs: Buffer[] = [];
    for (const r of batch.results) {
      assert.equal(r.status, ItemStatus.ITEM_STATUS_SUCCEEDED, `item ${r.index}: ${JSON.stringify(r.error)}`);
      assert.equal(r.artifacts.length, 1);
      const a = r.artifacts[0]!;
      assert.equal(a.contentType, "image/png");
      const bytes = await client.artifact(a.uri);
      assert.equal(bytes.length, a.sizeBytes);
      const png = decode(bytes);
      const p = items[r.index]!.params;
      assert.equal(png.width, p.width, `item ${r.index} width`);
      assert.equal(png.height, p.height, `item ${r.index} height`);
      pngs.push(bytes);
    }
    for (let i = 0; i < 25; i++) assert.ok(pngs[i]!.equals(pngs[i + 25]!), `items ${i} and ${i + 25} have identical params but different bytes`);
    assert.ok(!pngs[0]!.equals(pngs[6]!), "different prompts/seeds gave the same image");
    // Both workers took part.
    assert.equal(new Set(batch.results.map((r) => r.workerId)).size, 2);

    const events = await watched;
    const itemEvents = events.filter((e) => e.event?.$case === "item");
    assert.equal(itemEvents.length, 50, "WatchBatch sends one event per item");
    assert.deepEqual(new Set(itemEvents.map((e) => (e.event as { item: { index: number } }).item.index)).size, 50);
    const last = events[events.length - 1]!;
    assert.equal(last.event?.$case, "batch");
    assert.equal((last.event as { batch: { state: number } }).batch.state, BatchState.BATCH_STATE_COMPLETED);

    // Watching a finished batch replays its items and ends with the batch.
    const again = await client.watch(batchId);
    assert.equal(again.length, 51);

    const listed = await client.list(10);
    assert.ok(listed.batches.some((b) => b.id === batchId));
    assert.ok(listed.batches.every((b) => b.results.length === 0), "ListBatches returns batches without results");
  });

  test("end to end - GetBatch of an unknown id is NOT_FOUND", async () => {
    await assert.rejects(client.get("b_00000000000000000000"), (e) => grpcCode(e) === status.NOT_FOUND);
    await assert.rejects(client.get("no such batch"), (e) => grpcCode(e) === status.NOT_FOUND);
  });

  test("end to end - a worker serving imagegen-tiny (max_batch 8) offers two batches per thread by default", async () => {
    // No --max-in-flight given, 1 thread: 1 × 8 × 2 = 16 items held, so queued items can group
    // (worker/options.ts defaultMaxInFlight); 2 × threads would be 2, never a batch.
    const nc = await connect({ servers: stack.natsUrl, timeout: 10_000 });
    try {
      const sub = nc.subscribe(new Names("shoal").heartbeat("w1"), { max: 1, timeout: 10_000 });
      for await (const msg of sub) {
        const hb = decodeMessage(Heartbeat, msg.subject, msg.data);
        assert.equal(hb.workerId, "w1");
        assert.equal(hb.maxInFlight, 16);
      }
    } finally {
      await nc.close();
    }
  });

  test("end to end - the default max-in-flight follows what the held items can batch (2 for 512 × 512 images, 16 for small ones)", async () => {
    // imagegen-tiny runs 512 × 512 images alone (max_batch_pixels): a worker that held them
    // reports 2 × threads, so it does not hoard items it cannot group; small images batch by 8
    // again and bring back 16 (worker/in-flight-limit.ts). Nothing held keeps the last figure.
    const reported = async (worker: string): Promise<number> => {
      const nc = await connect({ servers: stack.natsUrl, timeout: 10_000 });
      try {
        const sub = nc.subscribe(new Names("shoal").heartbeat(worker), { max: 1, timeout: 10_000 });
        for await (const msg of sub) return decodeMessage(Heartbeat, msg.subject, msg.data).maxInFlight;
        throw new Error(`no heartbeat from ${worker}`);
      } finally {
        await nc.close();
      }
    };
    const large = await client.run({ items: [{ model: "imagegen-tiny", params: { prompt: "a large red kite", width: 512, height: 512, steps: 1 } }] });
    assert.equal(large.state, BatchState.BATCH_STATE_COMPLETED);
    const ranLarge = large.results[0]!.workerId;
    assert.equal(await reported(ranLarge), 2);
    const small = await client.run({ items: Array.from({ length: 6 }, (_, i) => ({ model: "imagegen-tiny", params: { prompt: `a small kite ${i}`, width: 64, height: 64, steps: 1 } })) });
    assert.equal(small.state, BatchState.BATCH_STATE_COMPLETED);
    for (const w of new Set(small.results.map((r) => r.workerId))) assert.equal(await reported(w), 16, `${w} ran small images`);
  });

  test("end to end - RunBatch waits for the terminal batch", async () => {
    const batch = await client.run({ items: [{ model: "imagegen-tiny", params: { prompt: "a red kite over the sea", width: 64, height: 64, steps: 1 } }] });
    assert.equal(batch.state, BatchState.BATCH_STATE_COMPLETED);
    assert.equal(batch.results.length, 1);
  });
});
