import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { BatchApi, type BatchApiDeps } from "../../coordinator/batch-api.js";
import type { ActiveBatch } from "../../coordinator/batch-state.js";
import { status } from "@grpc/grpc-js";
import { ServerError, TermEndedError } from "../../coordinator/errors.js";
import { BatchState, ItemStatus, type Batch, type BatchEvent } from "../../proto/gen/shoal/v1/shoal.js";

// WatchBatch (and RunBatch, which waits through it) reads the batch, then attaches to the running
// batch. A batch can end between the two; the watch must then answer from the stored terminal
// record, not fail on a running batch that is no longer there.

const BATCH_ID = "b_0123456789abcdefghij";
const TENANT = "";

function batch(state: BatchState, done: number): Batch {
  return {
    id: BATCH_ID,
    state,
    total: 2,
    succeeded: done,
    failed: 0,
    cancelled: 0,
    results: [0, 1].map((index) => ({ index, status: index < done ? ItemStatus.ITEM_STATUS_SUCCEEDED : ItemStatus.ITEM_STATUS_UNSPECIFIED, workerId: "w1", attempts: 1, queueMs: 0, runMs: 0, model: "m", artifacts: [] })),
  } as unknown as Batch;
}

/** The running batch is seen by the first read only: it ends right after. */
class EndsAfterFirstRead extends Map<string, ActiveBatch> {
  private reads = 0;
  override get(key: string): ActiveBatch | undefined {
    return this.reads++ === 0 ? super.get(key) : undefined;
  }
}

function api(stored: Batch | undefined, active: Map<string, ActiveBatch>, stopping = new AbortController().signal): BatchApi {
  const running = { id: BATCH_ID, record: { tenant: TENANT }, snapshot: () => batch(BatchState.BATCH_STATE_RUNNING, 1), items: [] } as unknown as ActiveBatch;
  active.set(BATCH_ID, running);
  const deps = {
    active,
    ensureStarted: () => {},
    stopping,
    store: () => ({ get: async () => (stored ? { record: { tenant: TENANT, batch: stored }, revision: 2, writtenAtMs: 0 } : undefined) }),
  } as unknown as BatchApiDeps;
  return new BatchApi(deps);
}

async function collect(it: AsyncIterable<BatchEvent>): Promise<BatchEvent[]> {
  const out: BatchEvent[] = [];
  for await (const ev of it) out.push(ev);
  return out;
}

describe("batch watch - a batch that ends while the watch starts", () => {
  test("batch watch - answers from the stored terminal record: every item, then the terminal batch", { timeout: 10_000 }, async () => {
    const events = await collect(api(batch(BatchState.BATCH_STATE_COMPLETED, 2), new EndsAfterFirstRead()).watch(BATCH_ID, TENANT, new AbortController().signal));
    assert.deepEqual(
      events.map((e) => e.event?.$case),
      ["item", "item", "batch"],
    );
    const last = events.at(-1)!.event;
    assert.ok(last?.$case === "batch" && last.batch.state === BatchState.BATCH_STATE_COMPLETED, "the last event is the terminal batch");
  });

  test("batch watch - a batch stored as running but not running here, in a serving term, was never accepted: FAILED_PRECONDITION, not a wait", { timeout: 10_000 }, async () => {
    const watch = api(batch(BatchState.BATCH_STATE_RUNNING, 1), new EndsAfterFirstRead()).watch(BATCH_ID, TENANT, new AbortController().signal);
    await assert.rejects(collect(watch), (err: unknown) => err instanceof ServerError && err.code === status.FAILED_PRECONDITION && /was not accepted/.test(err.message));
  });

  test("batch watch - the same in a term that is ending: TermEndedError (the edge follows it into the next term)", { timeout: 10_000 }, async () => {
    const stopping = new AbortController();
    stopping.abort();
    const watch = api(batch(BatchState.BATCH_STATE_RUNNING, 1), new EndsAfterFirstRead(), stopping.signal).watch(BATCH_ID, TENANT, new AbortController().signal);
    await assert.rejects(collect(watch), (err: unknown) => err instanceof TermEndedError);
  });
});

// RunBatch waits for the terminal event alone (BatchApi.waitTerminal): the same start-up checks
// as the watch, then one listener that ignores item and progress events.
describe("batch watch - RunBatch's wait for the terminal batch", () => {
  test("batch watch - waitTerminal answers from the stored terminal record when the batch ended while it started", { timeout: 10_000 }, async () => {
    const got = await api(batch(BatchState.BATCH_STATE_COMPLETED, 2), new EndsAfterFirstRead()).waitTerminal(BATCH_ID, TENANT, new AbortController().signal);
    assert.equal(got.state, BatchState.BATCH_STATE_COMPLETED);
  });

  test("batch watch - waitTerminal: FAILED_PRECONDITION for a batch never accepted, TermEndedError in an ending term", { timeout: 10_000 }, async () => {
    await assert.rejects(
      api(batch(BatchState.BATCH_STATE_RUNNING, 1), new EndsAfterFirstRead()).waitTerminal(BATCH_ID, TENANT, new AbortController().signal),
      (err: unknown) => err instanceof ServerError && err.code === status.FAILED_PRECONDITION,
    );
    const stopping = new AbortController();
    stopping.abort();
    await assert.rejects(api(batch(BatchState.BATCH_STATE_RUNNING, 1), new EndsAfterFirstRead(), stopping.signal).waitTerminal(BATCH_ID, TENANT, new AbortController().signal), (err: unknown) => err instanceof TermEndedError);
  });

  test("batch watch - waitTerminal resolves on the terminal event, not on item or progress events, and stops listening", { timeout: 10_000 }, async () => {
    const a = api(batch(BatchState.BATCH_STATE_RUNNING, 1), new Map());
    let settled = false;
    const wait = a.waitTerminal(BATCH_ID, TENANT, new AbortController().signal).finally(() => (settled = true));
    await new Promise((r) => setImmediate(r));
    a.emit(BATCH_ID, { event: { $case: "item", item: batch(BatchState.BATCH_STATE_RUNNING, 1).results[0]! } });
    a.emit(BATCH_ID, { event: { $case: "batch", batch: batch(BatchState.BATCH_STATE_RUNNING, 1) } });
    await new Promise((r) => setImmediate(r));
    assert.equal(settled, false, "an item event or a running batch does not end the wait");
    a.emit(BATCH_ID, { event: { $case: "batch", batch: batch(BatchState.BATCH_STATE_COMPLETED, 2) } });
    assert.equal((await wait).state, BatchState.BATCH_STATE_COMPLETED);
    assert.equal((a as unknown as { listeners: Map<string, Set<unknown>> }).listeners.get(BATCH_ID)?.size ?? 0, 0, "the listener is removed");
  });

  test("batch watch - waitTerminal ends when the term ends (TermEndedError) or the call does, instead of waiting forever", { timeout: 10_000 }, async () => {
    const stopping = new AbortController();
    const a = api(batch(BatchState.BATCH_STATE_RUNNING, 1), new Map(), stopping.signal);
    const wait = a.waitTerminal(BATCH_ID, TENANT, new AbortController().signal);
    await new Promise((r) => setImmediate(r));
    stopping.abort();
    await assert.rejects(wait, (err: unknown) => err instanceof TermEndedError);
    const call = new AbortController();
    const b = api(batch(BatchState.BATCH_STATE_RUNNING, 1), new Map());
    const waitB = b.waitTerminal(BATCH_ID, TENANT, call.signal);
    await new Promise((r) => setImmediate(r));
    call.abort();
    await assert.rejects(waitB, /ended before the batch was terminal/);
  });

  test("batch watch - a watcher far behind gets every buffered event once, in order, including those emitted while it reads; the terminal batch ends it", { timeout: 10_000 }, async () => {
    const a = api(batch(BatchState.BATCH_STATE_RUNNING, 1), new Map());
    const it = a.watch(BATCH_ID, TENANT, new AbortController().signal)[Symbol.asyncIterator]();
    const first = it.next(); // attaches, then waits for an event
    await new Promise((r) => setImmediate(r));
    const item = (i: number): BatchEvent => ({ event: { $case: "item", item: { ...batch(BatchState.BATCH_STATE_RUNNING, 1).results[0]!, index: i } } });
    // 5,000 events before the watcher reads one (a slow client behind a large batch).
    for (let i = 0; i < 5000; i++) a.emit(BATCH_ID, item(i));
    const seen: number[] = [];
    const take = (r: IteratorResult<BatchEvent>) => {
      assert.equal(r.done, false);
      if (r.value.event?.$case === "item") seen.push(r.value.event.item.index);
    };
    take(await first);
    for (let i = 1; i < 2500; i++) take(await it.next());
    // More arrive while it is halfway through what was buffered, then the end.
    for (let i = 5000; i < 5100; i++) a.emit(BATCH_ID, item(i));
    a.emit(BATCH_ID, { event: { $case: "batch", batch: batch(BatchState.BATCH_STATE_COMPLETED, 2) } });
    a.emit(BATCH_ID, item(9999)); // after the terminal batch: never delivered
    const rest = await collect({ [Symbol.asyncIterator]: () => it });
    for (const ev of rest) if (ev.event?.$case === "item") seen.push(ev.event.item.index);
    assert.deepEqual(seen, Array.from({ length: 5100 }, (_, i) => i));
    assert.equal(rest.at(-1)?.event?.$case, "batch", "the terminal batch is the last event");
  });

  test("batch watch - progress views are made only for watches that asked for progress", { timeout: 10_000 }, async () => {
    const active = new Map<string, ActiveBatch>();
    const a = api(batch(BatchState.BATCH_STATE_RUNNING, 1), active);
    let views = 0;
    const running = active.get(BATCH_ID)! as unknown as { snapshot: () => Batch };
    const snapshot = running.snapshot;
    running.snapshot = () => (views++, snapshot());
    void a.waitTerminal(BATCH_ID, TENANT, new AbortController().signal).catch(() => {});
    const plain = a.watch(BATCH_ID, TENANT, new AbortController().signal)[Symbol.asyncIterator]();
    void plain.next();
    await new Promise((r) => setImmediate(r));
    views = 0; // the reads that started both (getBatch) made theirs
    a.emitProgress(BATCH_ID);
    assert.equal(views, 0, "RunBatch and a watch without progress need no view");
    const withProgress = a.watch(BATCH_ID, TENANT, new AbortController().signal, true)[Symbol.asyncIterator]();
    await withProgress.next(); // the first running view, sent at the start
    const before = views;
    a.emitProgress(BATCH_ID);
    assert.equal(views, before + 1, "a progress watch gets a view");
    a.emit(BATCH_ID, { event: { $case: "batch", batch: batch(BatchState.BATCH_STATE_COMPLETED, 2) } });
  });
});
