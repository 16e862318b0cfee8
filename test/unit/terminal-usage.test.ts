// A finished batch's usage counted after its terminal record (coordinator/terminal-usage.ts):
// the open marker is removed only after the count is stored, a failed count is retried (the
// marker stays meanwhile), a count repeated after a crash adds nothing, and GetUsage's read
// waits for counts already asked for. Against a fake KV (a map with revisions, the same
// compare-and-set refusals JetStream gives; the real bucket and a real kill -9 between the two
// writes are in test/integration/usage.test.ts).

import { test } from "node:test";
import assert from "node:assert/strict";
import { JetStreamApiError } from "@nats-io/jetstream";
import type { KV } from "@nats-io/kv";
import { BatchState, ItemStatus, type Batch } from "../../proto/gen/shoal/v1/shoal.js";
import { countTerminalUsage, holdUsageCountMs, type TerminalUsageDeps } from "../../coordinator/terminal-usage.js";
import { outcomeKey, UsageStore } from "../../coordinator/usage.js";
import { createLogger } from "../../shared/logger.js";

const DAY = new Date("2026-05-01T10:00:00Z");

function batch(id: string, succeeded: number): Batch {
  return {
    id,
    state: BatchState.BATCH_STATE_COMPLETED,
    total: succeeded,
    succeeded,
    failed: 0,
    cancelled: 0,
    results: Array.from({ length: succeeded }, (_, index) => ({ index, status: ItemStatus.ITEM_STATUS_SUCCEEDED, error: undefined, artifacts: [], workerId: "w", attempts: 1, queueMs: 0, runMs: 250, model: "m" })),
    createdAt: DAY,
    completedAt: DAY,
    labels: {},
    running: 0,
    priority: 0,
    queuePosition: 0,
    estimatedCompletionAt: undefined,
  } as Batch;
}

/** A KV with revisions; `failWrites` refuses that many writes; `gate` holds every write until opened. */
class FakeKv {
  entries = new Map<string, { value: string; revision: number }>();
  seq = 0;
  failWrites = 0;
  gate: Promise<void> | undefined;
  writes = 0;
  async get(k: string) {
    const e = this.entries.get(k);
    return e ? { operation: "PUT", revision: e.revision, json: () => JSON.parse(e.value) } : null;
  }
  private async write(k: string, v: string, rev: number | undefined): Promise<number> {
    if (this.gate) await this.gate;
    if (this.failWrites > 0) {
      this.failWrites--;
      throw new Error("no responders available for request");
    }
    const cur = this.entries.get(k);
    if (rev === undefined ? cur !== undefined : cur?.revision !== rev) throw new JetStreamApiError({ code: 400, err_code: 10071, description: "wrong last sequence" });
    this.writes++;
    this.entries.set(k, { value: v, revision: ++this.seq });
    return this.seq;
  }
  create(k: string, v: string) {
    return this.write(k, v, undefined);
  }
  update(k: string, v: string, rev: number) {
    return this.write(k, v, rev);
  }
  async keys() {
    return (async function* (keys: string[]) {
      yield* keys;
    })([...this.entries.keys()]);
  }
}

interface Harness {
  kv: FakeKv;
  usage: UsageStore;
  markers: Set<string>;
  events: string[];
  metered: number[];
  failClears: number;
  deps: (signal?: AbortSignal) => TerminalUsageDeps;
}

function harness(): Harness {
  const kv = new FakeKv();
  const usage = new UsageStore(kv as unknown as KV, "t-usage");
  const h: Harness = {
    kv,
    usage,
    markers: new Set(),
    events: [],
    metered: [],
    failClears: 0,
    deps: (signal = new AbortController().signal) => ({
      usage: () => usage,
      clearOpen: async (id) => {
        if (h.failClears > 0) {
          h.failClears--;
          throw new Error("timeout");
        }
        // What the count stored when the marker went: the order is the guarantee.
        h.events.push(`clear ${id} (succeeded ${JSON.parse(kv.entries.get(outcomeKey("dave", "2026-05-01"))?.value ?? '{"succeeded":0}').succeeded})`);
        h.markers.delete(id);
      },
      metrics: { tenantUsage: (_t: string, u: { succeeded: number }) => h.metered.push(u.succeeded) } as unknown as TerminalUsageDeps["metrics"],
      tenantLabel: (t) => t,
      log: createLogger({ level: "silent", format: "json", component: "test" }),
      signal,
      retryInitialMs: 1,
      retryMaxMs: 4,
    }),
  };
  return h;
}

test("terminal usage - counted, then the open marker removed, then the id leaves the key's list with its next write", async () => {
  const h = harness();
  const b = batch("b1", 3);
  h.markers.add("b1");
  assert.equal(await countTerminalUsage(h.deps(), "dave", b), "counted");
  assert.deepEqual(h.events, ["clear b1 (succeeded 3)"], "the marker went after the count was stored");
  assert.deepEqual(h.metered, [3]);
  assert.deepEqual((await h.usage.get("dave", "2026-05-01"))!.batches, ["b1"], "listed until the key's next write");
  await h.usage.recordBatch("dave", batch("b2", 1));
  const day = (await h.usage.get("dave", "2026-05-01"))!;
  assert.deepEqual([day.succeeded, day.gpuSeconds, day.batches], [4, 1, ["b2"]]);
});

test("terminal usage - a failed count is retried until stored; the marker stays until then", { timeout: 10_000 }, async () => {
  const h = harness();
  h.kv.failWrites = 3;
  h.markers.add("b1");
  assert.equal(await countTerminalUsage(h.deps(), "dave", batch("b1", 2)), "counted");
  assert.equal((await h.usage.get("dave", "2026-05-01"))!.succeeded, 2, "counted once, after three refused writes");
  assert.deepEqual(h.events, ["clear b1 (succeeded 2)"]);
  assert.deepEqual(h.metered, [2]);
});

test("terminal usage - a crash between the record and the count, or before the marker went: counting again at the next start adds nothing", async () => {
  const h = harness();
  const b = batch("b1", 4);
  // The marker's removal fails: the id must stay listed, else the next start would count it twice.
  h.failClears = 1;
  h.markers.add("b1");
  assert.equal(await countTerminalUsage(h.deps(), "dave", b), "counted");
  assert.ok(h.markers.has("b1"), "the marker is still there");
  await h.usage.recordBatch("dave", batch("b2", 1)); // the key's next write keeps the id
  assert.deepEqual((await h.usage.get("dave", "2026-05-01"))!.batches, ["b1", "b2"]);
  // The next start (a fresh UsageStore, as a new process) finds the marker and the terminal record.
  const restarted = new UsageStore(h.kv as unknown as KV, "t-usage");
  const again = { ...h.deps(), usage: () => restarted };
  assert.equal(await countTerminalUsage(again, "dave", b), "already");
  assert.ok(!h.markers.has("b1"), "removed now");
  assert.equal((await restarted.get("dave", "2026-05-01"))!.succeeded, 5, "counted once (4, and b2's 1)");
  assert.deepEqual(h.metered, [4], "the metric counted it once too");
});

test("terminal usage - a coordinator stopping before the count leaves the marker for the next start", { timeout: 10_000 }, async () => {
  const h = harness();
  h.kv.failWrites = 1_000;
  h.markers.add("b1");
  const stop = new AbortController();
  const counting = countTerminalUsage(h.deps(stop.signal), "dave", batch("b1", 1));
  await new Promise((r) => setTimeout(r, 20));
  stop.abort();
  assert.equal(await counting, "stopped");
  assert.ok(h.markers.has("b1"));
  assert.equal(await h.usage.get("dave", "2026-05-01"), undefined, "nothing counted");
});

test("terminal usage - a read of the usage waits for the counts asked for before it (the batch's answer comes before its count is stored)", { timeout: 10_000 }, async () => {
  const h = harness();
  let open!: () => void;
  h.kv.gate = new Promise((r) => (open = r));
  const counting = countTerminalUsage(h.deps(), "dave", batch("b1", 5));
  // The caller has its answer now; its GetUsage comes while the count's write is in flight.
  let read: number | undefined;
  const reading = h.usage.list("2026-05-01", "dave").then((days) => (read = days[0]?.succeeded ?? 0));
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(read, undefined, "the read waits for the write in flight");
  h.kv.gate = undefined;
  open();
  await Promise.all([counting, reading]);
  assert.equal(read, 5);
});

test("terminal usage - the test hook's hold comes from its env var only", () => {
  assert.equal(holdUsageCountMs({}), undefined);
  assert.equal(holdUsageCountMs({ SHOAL_TEST_HOLD_USAGE_COUNT_MS: "30000" }), 30_000);
  assert.equal(holdUsageCountMs({ SHOAL_TEST_HOLD_USAGE_COUNT_MS: "soon" }), undefined);
});
