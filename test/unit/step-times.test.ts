// Step times of a batch (coordinator/step-times.ts) and the bench's breakdown of them
// (bench/lib/step-breakdown.ts): durations between consecutive marks, missing marks left out,
// and the client's time beyond the coordinator's as its own step.

import { test } from "node:test";
import assert from "node:assert/strict";
import { stepDurations, wallNowMs } from "../../coordinator/step-times.js";
import { stepBreakdown, STEP_LINE } from "../../bench/lib/step-breakdown.js";

test("step times - durations between consecutive marks; the assign reply apart; a missing mark leaves its steps out", () => {
  const d = stepDurations({
    received: 1000,
    validated: 1000.5,
    markedIndexed: 1003,
    accepted: 1005,
    lastAssignSent: 1006,
    lastAssignTaken: 1009,
    lastOutcomeStored: 1008,
    complete: 1010,
    prepared: 1012.25,
    stored: 1014,
    usageCounted: 1015.5,
  });
  assert.deepEqual(d, {
    validate: 0.5,
    usageMarkerIndex: 2.5,
    recordCreate: 2,
    passAndSend: 1,
    "(assignReply)": 3,
    assignToResultStored: 2,
    resultConsumed: 2,
    terminalPrepare: 2.25,
    terminalRecord: 1.75,
    total: 14,
    "(usageAfterRecord)": 1.5,
  });
  const partial = stepDurations({ received: 5, validated: 6 });
  assert.deepEqual(partial, { validate: 1 });
  const t = wallNowMs();
  assert.ok(Math.abs(t - Date.now()) < 50, "a wall-clock time in ms");
});

test("step breakdown - joins the coordinator's lines with the client's times by batch id; other lines and batches are ignored", () => {
  const logs = [
    { msg: STEP_LINE, batchId: "a", steps: { validate: 1, total: 10 } },
    { msg: STEP_LINE, batchId: "b", steps: { validate: 3, total: 20 } },
    { msg: STEP_LINE, batchId: "not-timed", steps: { validate: 100, total: 100 } },
    { msg: "batch finished", batchId: "a" },
  ];
  const b = stepBreakdown(logs, new Map([["a", 12], ["b", 25], ["no-line", 1]]));
  assert.equal(b.batches, 2);
  const row = (s: string) => b.rows.find((r) => r.step === s)!;
  assert.deepEqual([row("validate").p50, row("validate").mean], [2, 2]);
  assert.deepEqual([row("grpcAndAnswer").p50, row("client").p50], [3.5, 18.5]);
});
