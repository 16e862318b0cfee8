// A recent batch's record missing from one read (a stale answer after a JetStream leader change,
// coordinator/fresh-read.ts) is read again before it counts as absent: GetBatch does not answer
// NOT_FOUND for it, and recovery resumes it instead of removing its open marker. Fakes only.

import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { status } from "@grpc/grpc-js";
import { isRecentBatch, rereadWhileMissing } from "../../coordinator/fresh-read.js";
import { batchIdCreatedMs, newBatchId } from "../../shared/ids.js";
import { BatchApi, type BatchApiDeps } from "../../coordinator/batch-api.js";
import { ServerError } from "../../coordinator/errors.js";
import { Recovery, type RecoveryDeps } from "../../coordinator/recovery.js";
import type { StoredRecord } from "../../coordinator/batch-store.js";
import { BatchState, type Batch } from "../../proto/gen/shoal/v1/shoal.js";
import type { BatchRecord } from "../../proto/gen/shoal/v1/wire.js";

const quietLog = { warn: () => {}, info: () => {}, error: () => {}, debug: () => {}, isLevelEnabled: () => false };

function stored(id: string, state = BatchState.BATCH_STATE_QUEUED): StoredRecord {
  const batch = { id, state, total: 1, succeeded: 0, failed: 0, cancelled: 0, results: [] } as unknown as Batch;
  return { record: { tenant: "", batch } as unknown as BatchRecord, revision: 1, writtenAtMs: 0 };
}

/** A store whose get misses `misses` times per id before it finds what `records` holds. */
function flakyStore(records: Map<string, StoredRecord>, misses: number) {
  const reads = new Map<string, number>();
  const cleared: string[] = [];
  return {
    reads,
    cleared,
    get: async (id: string) => {
      const n = (reads.get(id) ?? 0) + 1;
      reads.set(id, n);
      return n > misses ? records.get(id) : undefined;
    },
    openIds: async () => [...records.keys(), ...extraMarkers],
    clearOpen: async (id: string) => void cleared.push(id),
  };
}
let extraMarkers: string[] = [];

describe("fresh read - batch ids and re-reads", () => {
  test("fresh read - a batch id carries its creation time; recent means within a minute", () => {
    const now = Date.UTC(2026, 10, 30, 12);
    assert.equal(batchIdCreatedMs(newBatchId(now)), now);
    assert.equal(batchIdCreatedMs("not-a-batch"), undefined);
    assert.ok(isRecentBatch(newBatchId(now - 5_000), now));
    assert.ok(!isRecentBatch(newBatchId(now - 120_000), now));
    assert.ok(!isRecentBatch("b_zzzz", now));
  });

  test("fresh read - reads again while missing, stops at the first find, and gives up when the signal aborts", { timeout: 10_000 }, async () => {
    let n = 0;
    assert.equal(await rereadWhileMissing(async () => (++n >= 3 ? "found" : undefined), new AbortController().signal, [1, 1, 1, 1]), "found");
    assert.equal(n, 3);
    n = 0;
    assert.equal(await rereadWhileMissing(async () => (++n, undefined), new AbortController().signal, [1, 1]), undefined);
    assert.equal(n, 2);
    const stop = new AbortController();
    stop.abort();
    n = 0;
    assert.equal(await rereadWhileMissing(async () => (++n, "x"), stop.signal, [60_000]), undefined);
    assert.equal(n, 0);
  });
});

describe("fresh read - GetBatch", () => {
  function api(store: ReturnType<typeof flakyStore>): BatchApi {
    return new BatchApi({ active: new Map(), ensureStarted: () => {}, stopping: new AbortController().signal, log: quietLog, store: () => store } as unknown as BatchApiDeps);
  }

  test("fresh read - a recent batch missing from the first read is found by a later one, not NOT_FOUND", { timeout: 10_000 }, async () => {
    const id = newBatchId();
    const store = flakyStore(new Map([[id, stored(id)]]), 1);
    const got = await api(store).getBatch(id, "");
    assert.equal(got.id, id);
    assert.equal(store.reads.get(id), 2);
  });

  test("fresh read - an old batch id that is missing is NOT_FOUND at once (one read)", { timeout: 10_000 }, async () => {
    const id = newBatchId(Date.now() - 10 * 60_000);
    const store = flakyStore(new Map(), 0);
    await assert.rejects(api(store).getBatch(id, ""), (e: unknown) => e instanceof ServerError && e.code === status.NOT_FOUND);
    assert.equal(store.reads.get(id), 1);
  });
});

describe("fresh read - recovery", () => {
  function recovery(store: ReturnType<typeof flakyStore>, activated: string[]): Recovery {
    const deps = {
      infra: () => ({ batchIndexCreated: false }),
      store: () => store,
      resultLog: () => ({ replay: async () => [] }),
      log: quietLog,
      metrics: undefined,
      active: new Map(),
      heartbeatTimeoutMs: 1000,
      activate: (record: BatchRecord) => (activated.push(record.batch!.id), { isComplete: false }),
      applyEntry: () => {},
      finalizeInBackground: () => {},
      countUsage: async () => {},
      rereadDelaysMs: [5, 5, 5],
    } as unknown as RecoveryDeps;
    return new Recovery(deps);
  }

  test("fresh read - a recent batch whose record one read missed is resumed, and its marker kept; an old marker without a record is removed", { timeout: 10_000 }, async () => {
    const recent = newBatchId();
    const oldOrphan = newBatchId(Date.now() - 10 * 60_000);
    extraMarkers = [oldOrphan];
    const store = flakyStore(new Map([[recent, stored(recent)]]), 1);
    const activated: string[] = [];
    await recovery(store, activated).recover();
    assert.deepEqual(activated, [recent], "the recent batch is resumed");
    assert.deepEqual(store.cleared, [oldOrphan], "only the old orphan marker is removed");
  });

  test("fresh read - a recent marker whose record no read finds is kept for the next start, not removed", { timeout: 10_000 }, async () => {
    const recent = newBatchId();
    extraMarkers = [recent];
    const store = flakyStore(new Map(), 0);
    const activated: string[] = [];
    await recovery(store, activated).recover();
    assert.deepEqual(activated, []);
    assert.deepEqual(store.cleared, []);
    assert.equal(store.reads.get(recent), 4, "one read and three re-reads");
  });

  test("fresh read - a re-read that fails during recovery counts as missing: the term still starts and the marker is kept", { timeout: 10_000 }, async () => {
    const recent = newBatchId();
    extraMarkers = [recent];
    const store = flakyStore(new Map(), 0);
    let reads = 0;
    const failing = { ...store, get: async () => (++reads === 1 ? undefined : Promise.reject(new Error("TIMEOUT"))) };
    const activated: string[] = [];
    await recovery(failing as unknown as ReturnType<typeof flakyStore>, activated).recover();
    assert.deepEqual(activated, []);
    assert.deepEqual(store.cleared, []);
    assert.equal(reads, 4, "one read and three re-reads, the failed ones included");
  });
});

