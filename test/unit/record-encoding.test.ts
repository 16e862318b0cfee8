import { test } from "node:test";
import assert from "node:assert/strict";
import { encodeRecord, encodeRecordItems } from "../../coordinator/record-encoding.js";
import { fitTerminalRecordBytes } from "../../coordinator/record-size.js";
import { BatchState, ItemStatus } from "../../proto/gen/shoal/v1/shoal.js";
import { BatchRecord } from "../../proto/gen/shoal/v1/wire.js";

const open = BatchRecord.fromPartial({
  batch: { id: "b_0000000000aaaaaaaaaa", state: BatchState.BATCH_STATE_QUEUED, total: 3, createdAt: new Date(1_700_000_000_000), labels: { team: "ads" }, priority: 3 },
  items: [
    { model: "imagegen-tiny", params: { prompt: "ünïcode ✓", width: 512, height: 512, nested: { a: [1, 2.5, "x", true, null] } } },
    { model: "sim-zero", params: {} },
    { model: "sim-6g", params: { work_ms: 5, tag: "t" } },
  ],
  idempotencyKey: "k1",
  webhook: { url: "https://example.test/hook", events: ["batch.completed"], secret: "" },
  tenant: "alice",
  retryOf: "b_0000000000bbbbbbbbbb",
  sourceIndices: [4, 7, 9],
  policyBlocked: [{ index: 1, rule: "r", message: "m" }],
});

test("record encoding - items encoded once and appended decode to the same record as a whole encode, open and terminal", () => {
  const itemsBytes = encodeRecordItems(open.items);
  assert.deepEqual(BatchRecord.decode(encodeRecord(open, itemsBytes)), BatchRecord.decode(BatchRecord.encode(open).finish()));
  assert.equal(encodeRecord(open, itemsBytes).length, BatchRecord.encode(open).finish().length, "the same size: nothing written twice");
  const terminal: BatchRecord = {
    ...open,
    batch: {
      ...open.batch!,
      state: BatchState.BATCH_STATE_COMPLETED,
      succeeded: 3,
      completedAt: new Date(1_700_000_100_000),
      results: open.items.map((it, index) => ({ index, status: ItemStatus.ITEM_STATUS_SUCCEEDED, error: undefined, artifacts: [], workerId: "w1", attempts: 1, queueMs: 1, runMs: 2, model: it.model })),
    },
  };
  const decoded = BatchRecord.decode(encodeRecord(terminal, itemsBytes));
  assert.deepEqual(decoded, BatchRecord.decode(BatchRecord.encode(terminal).finish()));
  assert.deepEqual(decoded.items, open.items);
  assert.equal(decoded.batch!.results.length, 3);
});

test("record encoding - the shortening of long error messages works on the split encoding and returns the bytes it measured", () => {
  const itemsBytes = encodeRecordItems(open.items);
  const long = { code: "INFERENCE_FAILED", message: "é".repeat(3000), retryable: true };
  const rec: BatchRecord = {
    ...open,
    batch: { ...open.batch!, results: open.items.map((it, index) => ({ index, status: ItemStatus.ITEM_STATUS_FAILED, error: long, artifacts: [], workerId: "w1", attempts: 1, queueMs: 1, runMs: 2, model: it.model })) },
  };
  const encode = (r: BatchRecord) => encodeRecord(r, itemsBytes);
  const whole = encode(rec).length;
  const same = fitTerminalRecordBytes(rec, whole, encode);
  assert.equal(same.record, rec);
  assert.equal(same.bytes.length, whole);
  const fitted = fitTerminalRecordBytes(rec, whole - 4000, encode);
  assert.ok(fitted.bytes.length <= whole - 4000);
  assert.deepEqual(BatchRecord.decode(fitted.bytes), BatchRecord.decode(BatchRecord.encode(fitted.record).finish()));
  assert.match(fitted.record.batch!.results[0]!.error!.message, /shortened to fit the batch record\)$/);
});
