// Queue position and ETA with real processes (nats-server, coordinator, a SIMULATED worker
// with one slot): a batch behind another is queued (position ≥ 1) with an ETA, WatchBatch
// carries progress events, `shoal get` shows both, and the terminal batch has neither. Learned
// durations live in the `shoal-scheduler` KV bucket and survive a kill -9 of the coordinator:
// right after the restart a batch gets an ETA before any of its items has finished, which a
// coordinator started with --forget-durations cannot give. With two models queued, a batch's ETA
// follows its model's part of the fleet (as the scheduler splits the GPUs by backlog).

import { afterEach, beforeEach, describe, test } from "node:test";
import assert from "node:assert/strict";
import { Kvm } from "@nats-io/kv";
import { connect } from "@nats-io/transport-node";
import { BatchState, type Batch, type BatchEvent } from "../../proto/gen/shoal/v1/shoal.js";
import { Stack } from "../harness/processes.js";
import { TestClient, isTransient } from "../harness/client.js";
import { assertWholeBatch, pollUntilTerminal, waitFor } from "../harness/batch-checks.js";

/** One item at a time: the second batch has to wait for the first. */
const ONE_SLOT = ["--simulate", "--vram", "24GB", "--threads", "1", "--max-in-flight", "1"];

const items = (n: number, workMs: number, tag: string) => Array.from({ length: n }, (_, i) => ({ model: "sim-6g", params: { work_ms: workMs, tag: `${tag}-${i}` } }));

async function getRetrying(client: TestClient, id: string): Promise<Batch> {
  for (;;) {
    try {
      return await client.get(id);
    } catch (err) {
      if (!isTransient(err)) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

describe("eta - queue position and estimated completion with real processes", () => {
  let stack: Stack;
  let client: TestClient;

  beforeEach(async () => {
    stack = new Stack();
    await stack.startNats();
  });

  afterEach(async () => {
    client?.close();
    await stack.stop();
  });

  test("eta - a batch behind another is queued with a position and an ETA, shown by WatchBatch and shoal get, and cleared at the end", async () => {
    await stack.startCoordinator();
    client = new TestClient(stack.grpcAddr);
    await stack.startWorker("w1", ONE_SLOT);
    await client.waitForWorkers(1);
    // Something learned about sim-6g first, so the queued batch's items are not pure guesses.
    assertWholeBatch(await client.run({ items: items(2, 200, "warm") }), 2);

    const first = await client.submit({ items: [...items(1, 15_000, "long"), ...items(2, 200, "a")] });
    const second = await client.submit({ items: items(3, 200, "b") });
    const events: BatchEvent[] = [];
    const watching = (async () => {
      for await (const ev of client.sdk.watchBatch(second.batchId, { timeoutMs: 120_000, progress: true })) events.push(ev);
    })();
    // A watch that does not ask for progress keeps the contract's exact sequence.
    const plainEvents: BatchEvent[] = [];
    const plainWatching = (async () => {
      for await (const ev of client.sdk.watchBatch(second.batchId, { timeoutMs: 120_000 })) plainEvents.push(ev);
    })();

    let queued: Batch | undefined;
    await waitFor("the second batch queued with a position and an ETA", async () => {
      const b = await client.get(second.batchId);
      if (b.queuePosition >= 1 && b.estimatedCompletionAt) queued = b;
      return queued !== undefined;
    }, 30_000);
    assert.equal(queued!.state, BatchState.BATCH_STATE_QUEUED);
    assert.equal(queued!.queuePosition, 1, "the next batch to start");
    assert.ok(queued!.estimatedCompletionAt!.getTime() > queued!.createdAt!.getTime(), "the ETA is after the batch was created");
    const running = await client.get(first.batchId);
    assert.equal(running.queuePosition, 0, "a started batch has no queue position");

    // The CLI shows them while the first batch's long item holds the only slot.
    const [shown, json] = await Promise.all([stack.cli(["get", second.batchId]), stack.cli(["get", second.batchId, "--json"])]);
    assert.equal(shown.code, 0, shown.stderr);
    assert.match(shown.stdout, /\n  queue +1 \(next to start\)\n/);
    assert.match(shown.stdout, /\n  eta +(in \S+|any moment now) \(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\)\n/);
    const parsed = JSON.parse(json.stdout) as { queue_position: number; estimated_completion_at: string | null };
    assert.equal(parsed.queue_position, 1);
    assert.match(parsed.estimated_completion_at ?? "", /^\d{4}-\d\d-\d\dT/);

    const done = (await pollUntilTerminal(client, second.batchId, { timeoutMs: 60_000 })).batch;
    assertWholeBatch(done, 3);
    assert.equal(done.queuePosition, 0);
    assert.equal(done.estimatedCompletionAt, undefined, "a terminal batch has no ETA");
    assertWholeBatch((await pollUntilTerminal(client, first.batchId, { timeoutMs: 60_000 })).batch, 3);

    await watching;
    await plainWatching;
    assert.deepEqual(plainEvents.map((e) => e.event?.$case), ["item", "item", "item", "batch"], "without progress: one event per item, then the terminal batch");
    const progress = events.flatMap((e) => (e.event?.$case === "batch" && e.event.batch.state !== BatchState.BATCH_STATE_COMPLETED ? [e.event.batch] : []));
    assert.ok(progress.length >= 1, `WatchBatch sent progress events (${events.map((e) => e.event?.$case).join(",")})`);
    assert.ok(progress.some((b) => b.estimatedCompletionAt !== undefined), "a progress event carries the ETA");
    assert.equal(events.filter((e) => e.event?.$case === "item").length, 3, "one event per item");
    const last = events[events.length - 1]!;
    assert.ok(last.event?.$case === "batch" && last.event.batch.state === BatchState.BATCH_STATE_COMPLETED, "the stream ends with the terminal batch");
    assert.equal(last.event.batch.estimatedCompletionAt, undefined);
  });

  test("eta - a high-priority batch of one model is estimated at that model's part of the fleet, not the whole fleet's", async () => {
    await stack.startCoordinator();
    client = new TestClient(stack.grpcAddr);
    await stack.startWorker("w1", ONE_SLOT);
    await stack.startWorker("w2", ONE_SLOT);
    await client.waitForWorkers(2);
    const of = (model: string, n: number, workMs: number, tag: string) => items(n, workMs, tag).map((it) => ({ ...it, model }));
    // Both models learned first, so neither batch's items are pure guesses.
    assertWholeBatch(await client.run({ items: [...of("sim-6g", 2, 200, "warm6"), ...of("sim-12g", 2, 200, "warm12")] }), 4);

    // As much work of each model: the scheduler's split gives each about one of the two slots.
    // By turns alone "hi" (priority 4, weight 5 against 1) would get 5/6 of both: ~7 s for 12 items.
    const lo = await client.submit({ items: of("sim-6g", 12, 1000, "lo"), priority: 0 });
    const hi = await client.submit({ items: of("sim-12g", 12, 1000, "hi"), priority: 4 });
    let seen: { left: number; aheadMs: number } | undefined;
    await waitFor("the high-priority batch running with an ETA and 8 or more items left", async () => {
      const b = await client.get(hi.batchId);
      const atMs = Date.now();
      const left = b.total - b.succeeded - b.failed - b.cancelled;
      if (b.running > 0 && left >= 8 && b.estimatedCompletionAt) seen = { left, aheadMs: b.estimatedCompletionAt.getTime() - atMs };
      return seen !== undefined || left < 8;
    }, 30_000);
    assert.ok(seen, "no sample of the batch with an ETA while 8 or more of its items were left");
    // At one slot's pace its items left take about left × 1 s (the estimate is up to a second old:
    // one item less); at 5/6 of two slots, 0.6 × that.
    assert.ok(seen.aheadMs >= 0.8 * (seen.left - 1) * 1000, `ETA ${seen.aheadMs} ms ahead with ${seen.left} items of 1 s left`);
    assertWholeBatch((await pollUntilTerminal(client, hi.batchId, { timeoutMs: 90_000 })).batch, 12);
    assertWholeBatch((await pollUntilTerminal(client, lo.batchId, { timeoutMs: 90_000 })).batch, 12);
  });

  test("eta - learned durations are kept in KV and survive a kill -9 of the coordinator; --forget-durations drops them", async () => {
    await stack.startCoordinator();
    client = new TestClient(stack.grpcAddr);
    await stack.startWorker("w1", ONE_SLOT);
    await client.waitForWorkers(1);
    assertWholeBatch(await client.run({ items: items(3, 300, "learn") }), 3);

    // Saved within a few seconds, under the scheduler bucket.
    const nc = await connect({ servers: stack.natsUrl, timeout: 10_000 });
    try {
      const kv = await new Kvm(nc).open("shoal-scheduler");
      await waitFor("the learned durations saved in KV", async () => {
        const e = await kv.get("durations");
        return !!e && e.operation === "PUT" && e.string().includes("sim-6g");
      }, 30_000);
    } finally {
      await nc.close();
    }

    await stack.kill(stack.coordinator!, "SIGKILL");
    await stack.startCoordinator();
    await client.waitForWorkers(1);
    // Before any of its items has finished, the restarted coordinator already predicts them.
    const after = await client.submit({ items: items(3, 3000, "after") });
    let withEta: Batch | undefined;
    await waitFor("an ETA from the durations learned before the restart", async () => {
      const b = await getRetrying(client, after.batchId);
      assert.equal(b.succeeded, 0, "the ETA came only after an item had finished: the learned durations were lost");
      if (b.estimatedCompletionAt) withEta = b;
      return withEta !== undefined;
    }, 30_000);
    // Three 3 s items on one slot: about 4.5 s after the first started, learned from 0.3 s items
    // (the ETA uses what was learned: 3 × 0.3 s), so it lies well before the items' true end.
    const ahead = withEta!.estimatedCompletionAt!.getTime() - withEta!.createdAt!.getTime();
    assert.ok(ahead > 0 && ahead < 20_000, `ETA ${ahead} ms after creation`);
    assertWholeBatch((await pollUntilTerminal(client, after.batchId, { timeoutMs: 60_000 })).batch, 3);

    // With --forget-durations nothing is known at start: no ETA until an item has finished.
    await stack.kill(stack.coordinator!, "SIGKILL");
    await stack.startCoordinator(["--forget-durations"]);
    await client.waitForWorkers(1);
    const fresh = await client.submit({ items: items(2, 1500, "fresh") });
    let sawUnknown = false;
    const end = await pollUntilTerminal(client, fresh.batchId, {
      timeoutMs: 60_000,
      onProgress: (b) => {
        if (b.state === BatchState.BATCH_STATE_COMPLETED) return;
        if (b.succeeded === 0) assert.equal(b.estimatedCompletionAt, undefined, "an ETA from durations that were to be forgotten");
        if (b.succeeded === 0 && b.running > 0) sawUnknown = true;
      },
    });
    assertWholeBatch(end.batch, 2);
    assert.ok(sawUnknown, "polled while the first item ran");
  });
});
