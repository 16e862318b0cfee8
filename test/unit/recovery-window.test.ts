// After a restart nothing is placed until the workers were asked to report (the coordinator's
// hello) and had one heartbeat timeout to do it; the start's other steps before the hello (the
// heartbeat subscription, the results consumer) do not use up that wait. Fakes only.

import { test } from "node:test";
import assert from "node:assert/strict";
import { Recovery, type RecoveryDeps } from "../../coordinator/recovery.js";
import { newBatchId } from "../../shared/ids.js";
import { BatchState, type Batch } from "../../proto/gen/shoal/v1/shoal.js";
import type { BatchRecord } from "../../proto/gen/shoal/v1/wire.js";

const quietLog = { warn: () => {}, info: () => {}, error: () => {}, debug: () => {} };

function recovery(openIds: string[]): Recovery {
  const record = (id: string) => ({ record: { tenant: "", batch: { id, state: BatchState.BATCH_STATE_RUNNING, total: 1, results: [] } as unknown as Batch } as unknown as BatchRecord, revision: 1, writtenAtMs: 0 });
  return new Recovery({
    infra: () => ({ batchIndexCreated: false }),
    store: () => ({ openIds: async () => openIds, get: async (id: string) => record(id), clearOpen: async () => {} }),
    resultLog: () => ({ replay: async () => [] }),
    log: quietLog,
    metrics: undefined,
    active: new Map(),
    heartbeatTimeoutMs: 1500,
    activate: () => ({ isComplete: false }),
    applyEntry: () => {},
    finalizeInBackground: () => {},
    countUsage: async () => {},
  } as unknown as RecoveryDeps);
}

test("recovery window - with running batches resumed, nothing is placed until the workers are asked to report, then for one heartbeat timeout", { timeout: 10_000 }, async () => {
  const r = recovery([newBatchId()]);
  await r.recover();
  assert.equal(r.until, Infinity, "no placing between the recovery and the hello, however long the start takes");
  r.askedToReport(5_000);
  assert.equal(r.until, 5_000 + 1500);
  r.askedToReport(9_000);
  assert.equal(r.until, 6_500, "the wait is opened once");
});

test("recovery window - with nothing resumed there is no wait", { timeout: 10_000 }, async () => {
  const r = recovery([]);
  await r.recover();
  r.askedToReport(5_000);
  assert.equal(r.until, 0);
});
