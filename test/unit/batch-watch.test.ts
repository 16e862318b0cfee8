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
