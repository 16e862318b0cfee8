import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { LeaseTokens } from "../../coordinator/lease-tokens.js";
import { fence } from "../../coordinator/outcome-fence.js";
import { ActiveBatch, type ItemSlot } from "../../coordinator/batch-state.js";
import { BatchState } from "../../proto/gen/shoal/v1/shoal.js";

const key = randomBytes(32);
const tokens = new LeaseTokens(key);

function batchWith(id: string, lease?: { token: string; workerId: string }): ActiveBatch {
  const slot: ItemSlot = {
    model: "m",
    params: {},
    need: { weightsBytes: 0, activationBytes: 1 },
    state: lease ? "leased" : "pending",
    attempts: lease ? 1 : 0,
    lease: lease ? { ...lease, gpuIndex: 0, assignedAtMs: 0 } : undefined,
    closed: undefined,
    result: undefined,
    queuedAtMs: 0,
    firstQueuedAtMs: 0,
  };
  const record = { batch: { id, state: BatchState.BATCH_STATE_QUEUED, total: 1, succeeded: 0, failed: 0, cancelled: 0, results: [], labels: {}, priority: 0, running: 0 } } as never;
  return new ActiveBatch(record, 1, [slot], 3);
}

test("lease tokens - a token names its item and worker, and nothing else verifies", () => {
  const t = tokens.issue("b_1", 0, 1, "w1");
  assert.ok(t.length <= 128);
  assert.equal(tokens.holder(t, "b_1", 0), "w1");
  assert.equal(tokens.holder(t, "b_1", 1), undefined, "another item");
  assert.equal(tokens.holder(t, "b_2", 0), undefined, "another batch");
  assert.equal(tokens.holder(t.replace(".w1.", ".w2."), "b_1", 0), undefined, "another worker named in it");
  assert.equal(tokens.holder(`2${t.slice(1)}`, "b_1", 0), undefined, "another attempt number");
  assert.equal(tokens.holder("1.w1.abcdefghijklmnopqrstuvwxyz", "b_1", 0), undefined, "invented");
  assert.equal(new LeaseTokens(randomBytes(32)).holder(t, "b_1", 0), undefined, "another fleet's key");
  assert.notEqual(tokens.issue("b_1", 0, 1, "w1"), t, "two issues of one attempt differ");
  // Another coordinator with the same key (a restart, a standby) accepts it.
  assert.equal(new LeaseTokens(key).holder(t, "b_1", 0), "w1");
});

test("outcome fence - live, only the current attempt's token from its assignee counts", () => {
  const current = tokens.issue("b_1", 0, 2, "w1");
  const old = tokens.issue("b_1", 0, 1, "w1");
  const batch = batchWith("b_1", { token: current, workerId: "w1" });
  assert.deepEqual(fence(tokens, "b_1", 0, current, "w1", batch, true), { ok: true, holder: "w1" });
  assert.equal(fence(tokens, "b_1", 0, current, "w2", batch, true).ok, false, "another worker sending the assignee's token");
  assert.deepEqual(fence(tokens, "b_1", 0, current, "w2", batch, true), { ok: false, reason: "wrong_worker", holder: "w1" });
  assert.deepEqual(fence(tokens, "b_1", 0, "2.w2.forgedforgedforgedforged", "w2", batch, true), { ok: false, reason: "forged_token" });
  assert.deepEqual(fence(tokens, "b_1", 0, old, "w1", batch, true), { ok: false, reason: "not_current", holder: "w1" });
  // A replay has no current attempts: the sender's own issued token counts (its closing is in the log).
  assert.equal(fence(tokens, "b_1", 0, old, "w1", batchWith("b_1"), false).ok, true);
  assert.equal(fence(tokens, "b_1", 0, "1.w2.forgedforgedforgedforged", "w2", batchWith("b_1"), false).ok, false);
  // A revocation names no sender: any issued token of the item, never an invented one.
  assert.equal(fence(tokens, "b_1", 0, current, undefined, batch, false).ok, true);
  assert.equal(fence(tokens, "b_1", 0, "99.w1.forgedforgedforgedforged", undefined, batch, false).ok, false);
});

test("outcome fence - live, the open attempt's own token is recognised without recomputing its MAC; any other token is still checked", () => {
  let macChecks = 0;
  class CountingTokens extends LeaseTokens {
    override holder(token: string, batchId: string, index: number): string | undefined {
      macChecks++;
      return super.holder(token, batchId, index);
    }
  }
  const counting = new CountingTokens(key);
  const current = counting.issue("b_1", 0, 2, "w1");
  const batch = batchWith("b_1", { token: current, workerId: "w1" });
  assert.deepEqual(fence(counting, "b_1", 0, current, "w1", batch, true), { ok: true, holder: "w1" });
  assert.deepEqual(fence(counting, "b_1", 0, current, "w2", batch, true), { ok: false, reason: "wrong_worker", holder: "w1" });
  assert.equal(macChecks, 0, "the open attempt's token needs no MAC check");
  // One character off (the MAC's last): not the open attempt's token, so the MAC decides.
  const last = current.at(-1) === "A" ? "B" : "A";
  assert.deepEqual(fence(counting, "b_1", 0, current.slice(0, -1) + last, "w1", batch, true), { ok: false, reason: "forged_token" });
  assert.equal(macChecks, 1);
  // A hedge copy is open too.
  const hedge = counting.issue("b_1", 0, 3, "w2");
  batch.items[0]!.hedge = { token: hedge, workerId: "w2", gpuIndex: 0, assignedAtMs: 0 };
  assert.deepEqual(fence(counting, "b_1", 0, hedge, "w2", batch, true), { ok: true, holder: "w2" });
  assert.equal(macChecks, 1);
  // Replay has no open attempts to compare with: always the MAC.
  assert.equal(fence(counting, "b_1", 0, current, "w1", batch, false).ok, true);
  assert.equal(macChecks, 2);
});
