// Usage counting (coordinator/usage.ts): the UTC day math, what one batch adds (CONTENT_POLICY
// apart from failed), idempotency per batch id, items_per_day reservations, and compare-and-set
// retries against a fake KV (a plain map with revisions, the same refusals JetStream gives; the
// real bucket is exercised by test/integration/usage.test.ts).

import { test } from "node:test";
import assert from "node:assert/strict";
import { JetStreamApiError } from "@nats-io/jetstream";
import type { KV } from "@nats-io/kv";
import { BatchState, ItemStatus, type Batch, type ItemResult } from "../../proto/gen/shoal/v1/shoal.js";
import { DailyLimitExceeded, UsageStore, addBatch, batchUsage, emptyDay, mergeDays, nextUtcMidnight, outcomeKey, parseUsageKey, usageKey, usageSince, utcDay } from "../../coordinator/usage.js";

function result(index: number, status: ItemStatus, runMs: number, code = ""): ItemResult {
  return { index, status, error: code ? { code, message: code, retryable: false } : undefined, artifacts: [], workerId: "w", attempts: 1, queueMs: 0, runMs, model: "m" };
}

function batch(id: string, createdAt: Date, results: ItemResult[]): Batch {
  return {
    id,
    state: BatchState.BATCH_STATE_COMPLETED,
    total: results.length,
    succeeded: 0,
    failed: 0,
    cancelled: 0,
    results,
    createdAt,
    completedAt: undefined,
    labels: {},
    running: 0,
    priority: 0,
    queuePosition: 0,
    estimatedCompletionAt: undefined,
  } as Batch;
}

/** A KV with revisions; `interfere` runs once before a write, as another writer would. */
class FakeKv {
  entries = new Map<string, { value: string; revision: number }>();
  seq = 0;
  interfere: (() => void) | undefined;
  conflicts = 0;
  private wrongSeq(): Error {
    this.conflicts++;
    return new JetStreamApiError({ code: 400, err_code: 10071, description: "wrong last sequence" });
  }
  private race(): void {
    const f = this.interfere;
    this.interfere = undefined;
    f?.();
  }
  async get(k: string) {
    const e = this.entries.get(k);
    return e ? { operation: "PUT", revision: e.revision, json: () => JSON.parse(e.value) } : null;
  }
  async create(k: string, v: string) {
    this.race();
    if (this.entries.has(k)) throw this.wrongSeq();
    this.entries.set(k, { value: v, revision: ++this.seq });
    return this.seq;
  }
  async update(k: string, v: string, rev: number) {
    this.race();
    if (this.entries.get(k)?.revision !== rev) throw this.wrongSeq();
    this.entries.set(k, { value: v, revision: ++this.seq });
    return this.seq;
  }
  async keys() {
    return (async function* (keys: string[]) {
      yield* keys;
    })([...this.entries.keys()]);
  }
}

test("usage - UTC day and the next midnight, whatever the local time zone", () => {
  const at = new Date("2026-03-31T23:59:59.999Z");
  assert.equal(utcDay(at), "2026-03-31");
  assert.equal(nextUtcMidnight(at).toISOString(), "2026-04-01T00:00:00.000Z");
  assert.equal(nextUtcMidnight(new Date("2026-12-31T00:00:00.000Z")).toISOString(), "2027-01-01T00:00:00.000Z");
  assert.equal(nextUtcMidnight(new Date("2028-02-28T12:00:00Z")).toISOString(), "2028-02-29T00:00:00.000Z");
  assert.equal(usageKey("alice", "2026-03-31"), "2026-03-31.alice");
  assert.equal(usageKey("", "2026-03-31"), "2026-03-31._");
  assert.equal(outcomeKey("alice", "2026-03-31"), "2026-03-31._done.alice");
  assert.equal(outcomeKey("", "2026-03-31"), "2026-03-31._done._");
  // Tenant names may hold dots, never start with "_": each key names one tenant.
  for (const [k, t] of [["2026-03-31.a.b", "a.b"], ["2026-03-31._done.a.b", "a.b"], ["2026-03-31._", "_"], ["2026-03-31._done._", "_"], ["2026-03-31.done.x", "done.x"]]) {
    assert.deepEqual(parseUsageKey(k!), { day: "2026-03-31", tenant: t }, k);
  }
});

test("usage - a batch adds each item once by status; CONTENT_POLICY is apart from failed; GPU-seconds sum run_ms", () => {
  const b = batch("b1", new Date(), [
    result(0, ItemStatus.ITEM_STATUS_SUCCEEDED, 1500),
    result(1, ItemStatus.ITEM_STATUS_SUCCEEDED, 250),
    result(2, ItemStatus.ITEM_STATUS_FAILED, 100, "OUT_OF_MEMORY"),
    result(3, ItemStatus.ITEM_STATUS_FAILED, 0, "CONTENT_POLICY"),
    result(4, ItemStatus.ITEM_STATUS_CANCELLED, 0, "CANCELLED"),
  ]);
  assert.deepEqual(batchUsage(b), { succeeded: 2, failed: 1, contentPolicy: 1, cancelled: 1, gpuSeconds: 1.85 });
  const day = addBatch(emptyDay("t", "2026-01-01"), "b1", batchUsage(b))!;
  assert.equal(day.succeeded, 2);
  assert.deepEqual(day.batches, ["b1"]);
  assert.equal(addBatch(day, "b1", batchUsage(b)), undefined, "the same batch is not counted twice");
});

test("usage - recordBatch counts a batch once under its submission day, even if recorded again", async () => {
  const kv = new FakeKv();
  const store = new UsageStore(kv as unknown as KV, "t-usage");
  const b = batch("b1", new Date("2026-05-01T23:59:00Z"), [result(0, ItemStatus.ITEM_STATUS_SUCCEEDED, 2000)]);
  assert.deepEqual(await store.recordBatch("alice", b), { succeeded: 1, failed: 0, contentPolicy: 0, cancelled: 0, gpuSeconds: 2 });
  assert.equal(await store.recordBatch("alice", b), undefined);
  const day = (await store.get("alice", "2026-05-01"))!;
  assert.equal(day.succeeded, 1);
  assert.equal(day.gpuSeconds, 2);
  assert.equal(await store.get("alice", "2026-05-02"), undefined);
});

test("usage - a lost compare-and-set is retried on top of the other writer's value, losing nothing", async () => {
  const kv = new FakeKv();
  const store = new UsageStore(kv as unknown as KV, "t-usage");
  const day = new Date("2026-05-01T10:00:00Z");
  await store.reserve("alice", 1, undefined, day);
  // Another coordinator stores its count between our read and our write (a direct write, as
  // that coordinator's compare-and-set would have landed).
  await store.recordBatch("alice", batch("b-first", day, []));
  kv.interfere = () => {
    const k = outcomeKey("alice", "2026-05-01");
    const cur = JSON.parse(kv.entries.get(k)!.value);
    const other = addBatch(cur, "b-other", { succeeded: 1, failed: 0, contentPolicy: 0, cancelled: 0, gpuSeconds: 1 })!;
    kv.entries.set(k, { value: JSON.stringify(other), revision: ++kv.seq });
  };
  await store.recordBatch("alice", batch("b-ours", day, [result(0, ItemStatus.ITEM_STATUS_FAILED, 500, "TIMEOUT")]));
  const got = (await store.get("alice", "2026-05-01"))!;
  assert.equal(kv.conflicts, 1, "our first write lost its compare-and-set");
  assert.deepEqual([got.accepted, got.succeeded, got.failed, got.gpuSeconds, [...got.batches].sort()], [1, 1, 1, 1.5, ["b-first", "b-other", "b-ours"]]);
});

test("usage - many updates of one key at once from one process all land", async () => {
  const kv = new FakeKv();
  const store = new UsageStore(kv as unknown as KV, "t-usage");
  const now = new Date("2026-05-01T10:00:00Z");
  await Promise.all(Array.from({ length: 200 }, () => store.reserve("carol", 1, 150, now).catch((e: unknown) => e)));
  assert.equal((await store.get("carol", "2026-05-01"))!.accepted, 150, "exactly up to the limit");
  assert.equal(kv.conflicts, 0, "queued in process: no compare-and-set lost to ourselves");
});

/** FakeKv counting its reads and writes. */
class CountingKv extends FakeKv {
  reads = 0;
  writes = 0;
  failNextWrite: Error | undefined;
  override async get(k: string) {
    this.reads++;
    return super.get(k);
  }
  override async create(k: string, v: string) {
    this.writes++;
    this.throwIfFailing();
    return super.create(k, v);
  }
  override async update(k: string, v: string, rev: number) {
    this.writes++;
    this.throwIfFailing();
    return super.update(k, v, rev);
  }
  private throwIfFailing(): void {
    const e = this.failNextWrite;
    this.failNextWrite = undefined;
    if (e) throw e;
  }
}

test("usage - updates asked for while a write is in flight share the next write (group commit), each settled once stored", async () => {
  const kv = new CountingKv();
  const store = new UsageStore(kv as unknown as KV, "t-usage");
  const day = new Date("2026-05-01T10:00:00Z");
  const b = (id: string) => batch(id, day, [result(0, ItemStatus.ITEM_STATUS_SUCCEEDED, 1000)]);
  // Reservations and terminal counts go to the day's two keys. On each, the first update starts a
  // write and the ones asked for meanwhile go into one more.
  const calls = [store.reserve("dave", 1, undefined, day), ...Array.from({ length: 50 }, () => store.reserve("dave", 2, undefined, day)), ...Array.from({ length: 50 }, (_, i) => store.recordBatch("dave", b(`b${i}`)))];
  const settled = await Promise.allSettled(calls);
  assert.ok(settled.every((s) => s.status === "fulfilled"));
  assert.equal(kv.writes, 4, "two writes per key for 101 updates");
  assert.equal(kv.reads, 2, "each key is read once; its second write starts from what its first stored");
  const got = (await store.get("dave", "2026-05-01"))!;
  assert.deepEqual([got.accepted, got.succeeded, got.batches.length, got.gpuSeconds], [101, 50, 50, 50]);
  // recordBatch says what it added, and undefined for a batch already counted, within one group too.
  const again = await Promise.all([store.recordBatch("dave", b("b-new")), store.recordBatch("dave", b("b-new")), store.recordBatch("dave", b("b0"))]);
  assert.ok(again[0] !== undefined);
  assert.deepEqual([again[1], again[2]], [undefined, undefined]);
});

test("usage - a reservation over the limit is refused alone; the others of its group are stored", async () => {
  const kv = new CountingKv();
  const store = new UsageStore(kv as unknown as KV, "t-usage");
  const now = new Date("2026-05-01T10:00:00Z");
  const first = store.reserve("erin", 1, 10, now);
  // One group after the first write, applied in order: 1 + 4 = 5 fits, + 6 = 11 does not (refused,
  // counting nothing), + 5 = 10 fits.
  const group = [store.reserve("erin", 4, 10, now), store.reserve("erin", 6, 10, now), store.reserve("erin", 5, 10, now)];
  await first;
  const [a, refused, c] = await Promise.allSettled(group);
  assert.equal(a.status, "fulfilled");
  assert.equal(refused.status, "rejected");
  assert.ok(refused.status === "rejected" && refused.reason instanceof DailyLimitExceeded && refused.reason.acceptedToday === 5);
  assert.equal(c.status, "fulfilled");
  assert.equal((await store.get("erin", "2026-05-01"))!.accepted, 10);
});

test("usage - a write that fails refuses every update of its group, counts none of them, and the next update reads the key again", async () => {
  const kv = new CountingKv();
  const store = new UsageStore(kv as unknown as KV, "t-usage");
  const now = new Date("2026-05-01T10:00:00Z");
  await store.reserve("fay", 1, undefined, now);
  const readsBefore = kv.reads;
  // The first update's write is in flight when the next two are asked for: they share the next
  // write, which fails.
  const first = store.reserve("fay", 1, undefined, now);
  kv.failNextWrite = new Error("timeout");
  const group = await Promise.allSettled([store.reserve("fay", 2, undefined, now), store.reserve("fay", 3, undefined, now)]);
  await first;
  assert.equal(kv.failNextWrite, undefined, "the group's write was the one that failed");
  assert.deepEqual(group.map((g) => g.status), ["rejected", "rejected"]);
  assert.equal((await store.get("fay", "2026-05-01"))!.accepted, 2);
  await store.reserve("fay", 4, undefined, now);
  assert.equal(kv.reads, readsBefore + 3, "after a failed write the key is read again (plus the get above: its two keys)");
  assert.equal((await store.get("fay", "2026-05-01"))!.accepted, 6);
});

test("usage - what this process stored last is not trusted past another writer: its compare-and-set fails, the group is applied on the other's value", async () => {
  const kv = new CountingKv();
  const store = new UsageStore(kv as unknown as KV, "t-usage");
  const now = new Date("2026-05-01T10:00:00Z");
  await store.reserve("gus", 1, 3, now);
  // Another coordinator counts 2 more meanwhile: our known revision is stale.
  const k = usageKey("gus", "2026-05-01");
  kv.entries.set(k, { value: JSON.stringify({ ...JSON.parse(kv.entries.get(k)!.value), accepted: 3 }), revision: ++kv.seq });
  await assert.rejects(store.reserve("gus", 1, 3, now), DailyLimitExceeded, "the limit is checked against the other writer's count");
  assert.equal(kv.conflicts, 1, "tried once on the stale value, then read again");
  assert.equal((await store.get("gus", "2026-05-01"))!.accepted, 3);
});

test("usage - items_per_day: reservations up to the limit pass, the next is refused with the reset time and counts nothing", async () => {
  const kv = new FakeKv();
  const store = new UsageStore(kv as unknown as KV, "t-usage");
  const now = new Date("2026-05-01T10:00:00Z");
  await store.reserve("bob", 3, 5, now);
  await store.reserve("bob", 2, 5, now);
  await assert.rejects(store.reserve("bob", 1, 5, now), (e: unknown) => {
    assert.ok(e instanceof DailyLimitExceeded);
    assert.equal(e.acceptedToday, 5);
    assert.equal(e.resetsAt.toISOString(), "2026-05-02T00:00:00.000Z");
    return true;
  });
  assert.equal((await store.get("bob", "2026-05-01"))!.accepted, 5);
  // Another tenant and the next day are apart.
  await store.reserve("alice", 5, 5, now);
  await store.reserve("bob", 5, 5, new Date("2026-05-02T00:00:00Z"));
  await store.release("bob", 2, "2026-05-02");
  assert.equal((await store.get("bob", "2026-05-02"))!.accepted, 3);
  assert.deepEqual((await store.list("2026-05-02")).map((d) => `${d.day}.${d.tenant}`), ["2026-05-02.bob"]);
  assert.deepEqual((await store.list("2026-01-01", "alice")).map((d) => d.accepted), [5]);
});

test("usage - GetUsage's since: a real YYYY-MM-DD as given, 30 days back when empty, undefined when malformed", () => {
  const now = new Date("2026-03-10T05:00:00Z");
  assert.equal(usageSince("", now), "2026-02-08");
  assert.equal(usageSince("2026-01-31", now), "2026-01-31");
  for (const bad of ["2026-02-30", "2026-13-01", "yesterday", "2026-1-01", "2026-01-01T00:00:00Z"]) assert.equal(usageSince(bad, now), undefined, bad);
});

test("usage - a batch's id leaves the key's list with the next write once its open marker is removed, so the list holds the batches finishing now, not the whole day", async () => {
  const kv = new FakeKv();
  const store = new UsageStore(kv as unknown as KV, "t-usage");
  const day = new Date("2026-05-01T10:00:00Z");
  const ok = [result(0, ItemStatus.ITEM_STATUS_SUCCEEDED, 100)];
  for (let i = 0; i < 100; i++) {
    const b = batch(`b${i}`, day, ok);
    await store.reserve("dave", 1, undefined, day);
    await store.recordBatch("dave", b);
    store.countSettled("dave", b);
  }
  // One batch counted whose marker is not removed yet (a coordinator killed between the two writes).
  const pending = batch("b-pending", day, ok);
  await store.recordBatch("dave", pending);
  const got = (await store.get("dave", "2026-05-01"))!;
  assert.deepEqual([got.accepted, got.succeeded], [100, 101], "every batch counted once");
  assert.deepEqual(got.batches, ["b-pending"], "only the batch a restart may still count again");
  assert.equal(await store.recordBatch("dave", pending), undefined, "that one is still not counted twice");
  assert.equal((await store.get("dave", "2026-05-01"))!.succeeded, 101);
});

test("usage - submits and terminal counts write different keys (a submit never waits behind a terminal count); a day is the two summed", { timeout: 10_000 }, async () => {
  const kv = new FakeKv();
  const store = new UsageStore(kv as unknown as KV, "t-usage");
  const now = new Date("2026-05-01T10:00:00Z");
  let open!: () => void;
  const gate = new Promise<void>((r) => (open = r));
  // Every write of the outcome key is held: a reservation must still be stored meanwhile.
  const realUpdate = kv.update.bind(kv);
  const realCreate = kv.create.bind(kv);
  const held = (k: string) => k === outcomeKey("hal", "2026-05-01");
  kv.update = async (k: string, v: string, rev: number) => (held(k) && (await gate), realUpdate(k, v, rev));
  kv.create = async (k: string, v: string) => (held(k) && (await gate), realCreate(k, v));
  const counting = store.recordBatch("hal", batch("b1", now, [result(0, ItemStatus.ITEM_STATUS_SUCCEEDED, 1000), result(1, ItemStatus.ITEM_STATUS_FAILED, 0, "TIMEOUT")]));
  await store.reserve("hal", 2, 3, now);
  assert.equal(JSON.parse(kv.entries.get(usageKey("hal", "2026-05-01"))!.value).accepted, 2, "stored while the terminal count's write is held");
  await assert.rejects(store.reserve("hal", 2, 3, now), DailyLimitExceeded, "the limit is still exact");
  open();
  await counting;
  const day = (await store.get("hal", "2026-05-01"))!;
  assert.deepEqual([day.accepted, day.succeeded, day.failed, day.gpuSeconds, day.batches], [2, 1, 1, 1, ["b1"]]);
  // A day stored before the split (one key with both) still reads whole, plus what the outcome key adds.
  kv.entries.set(usageKey("ivy", "2026-05-01"), { value: JSON.stringify({ ...emptyDay("ivy", "2026-05-01"), accepted: 5, succeeded: 4, gpuSeconds: 2 }), revision: ++kv.seq });
  await store.recordBatch("ivy", batch("b2", now, [result(0, ItemStatus.ITEM_STATUS_SUCCEEDED, 500)]));
  const listed = await store.list("2026-05-01");
  assert.deepEqual(listed.map((d) => [d.tenant, d.accepted, d.succeeded, d.gpuSeconds]), [["hal", 2, 1, 1], ["ivy", 5, 5, 2.5]]);
  assert.deepEqual(mergeDays(undefined, undefined), undefined);
});
