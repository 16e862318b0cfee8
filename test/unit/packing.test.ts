// The packing rule (coordinator/scheduler/packing.ts): an item whose chosen GPU it would strand
// (its size leaves more than a tenth of the model's room that items of that size cannot use) is
// passed over for the items behind it, and placed in the same pass when nothing else takes the
// room. Driven through the real engine pass (schedulePass) on a one-GPU fleet.

import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { WorkerState } from "../../proto/gen/shoal/v1/shoal.js";
import { Attempts } from "../../coordinator/attempts.js";
import { ActiveBatch, type ItemSlot } from "../../coordinator/batch-state.js";
import { BatchQueue } from "../../coordinator/batch-queue.js";
import type { WorkerRecord } from "../../coordinator/fleet.js";
import { newEnginePolicy, noteNeed, schedulePass, type EngineState } from "../../coordinator/scheduler/engine.js";
import { placeItem } from "../../coordinator/placement.js";
import { STRAND_SHARE, strandedShare, strands } from "../../coordinator/scheduler/packing.js";
import { VramEstimates, shapeKey } from "../../coordinator/vram-estimates.js";
import { VramLedger } from "../../coordinator/vram-ledger.js";

const GB = 1e9;

test("packing - the stranded share is the room's remainder over items of one size", () => {
  // 24 GB less 8 GB of weights: 16 GB of room. Two 6.4 GB items leave 3.2 GB (a fifth).
  assert.ok(Math.abs(strandedShare(24 * GB, 8 * GB, 6.4 * GB) - 0.2) < 1e-9);
  // Three 5.2 GB items leave 0.4 GB (2.5 %); eleven 6.4 GB items on 72 GB leave 1.6 GB (2.2 %).
  assert.ok(Math.abs(strandedShare(24 * GB, 8 * GB, 5.2 * GB) - 0.025) < 1e-9);
  assert.ok(Math.abs(strandedShare(80 * GB, 8 * GB, 6.4 * GB) - 1.6 / 72) < 1e-9);
  // A need that divides the room, no activations, no room: nothing stranded.
  assert.equal(strandedShare(24 * GB, 4 * GB, 2 * GB), 0);
  assert.equal(strandedShare(24 * GB, 4 * GB, 0), 0);
  assert.equal(strandedShare(4 * GB, 8 * GB, 2 * GB), 0);
  assert.equal(strands(24 * GB, 8 * GB, 6.4 * GB), true);
  assert.equal(strands(24 * GB, 8 * GB, 5.2 * GB), false);
  assert.equal(strands(80 * GB, 8 * GB, 6.4 * GB), false);
  assert.ok(STRAND_SHARE > 0.025 && STRAND_SHARE < 0.2);
});

function batch(id: string, activations: number[]): ActiveBatch {
  const slots: ItemSlot[] = activations.map((a) => ({
    model: "m",
    params: {},
    need: { weightsBytes: 8 * GB, activationBytes: a },
    state: "pending",
    attempts: 0,
    lease: undefined,
    closed: undefined,
    result: undefined,
    queuedAtMs: 0,
    firstQueuedAtMs: 0,
    shapeKey: shapeKey("m", {}),
  }));
  const record = {
    batch: { id, state: 1, total: slots.length, succeeded: 0, failed: 0, cancelled: 0, results: [], createdAt: new Date(0), completedAt: undefined, labels: {}, running: 0, priority: 0, queuePosition: 0, estimatedCompletionAt: undefined },
    items: [],
    idempotencyKey: "",
    webhook: undefined,
    tenant: "",
    retryOf: "",
    sourceIndices: [],
    policyBlocked: [],
  };
  return new ActiveBatch(record, 1, slots, 3, 0);
}

/** Workers of one GPU each (`sizes` in GB, worker "w" first, then "w1", ...) serving model m (8 GB of weights), the engine policy on. */
function fleet(activations: number[], packing?: boolean, sizes = [24]): EngineState {
  const ledger = new VramLedger();
  const workers: WorkerRecord[] = sizes.map((gb, i) => {
    const id = i === 0 ? "w" : `w${i}`;
    ledger.observe(id, [{ index: 0, name: "g", totalBytes: gb * GB, freeBytes: gb * GB, source: "budget" }], []);
    return { id, incarnation: "i", state: WorkerState.WORKER_STATE_READY, lastSeenMs: 0, lastSeq: 1, hostname: id, resident: new Set<string>(), models: new Set(["m"]), maxInFlight: 64, itemsDone: 0, heldReported: 0, unreachable: false };
  });
  const b = batch("b", activations);
  const queue = new BatchQueue();
  for (let i = 0; i < activations.length; i++) queue.add("b", i, 0);
  return { queue, batches: new Map([["b", b]]), workers, ledger, attempts: new Attempts(ledger), estimates: new VramEstimates(), engine: newEnginePolicy({ packing }) };
}
const oneGpu = (activations: number[], packing?: boolean) => fleet(activations, packing);

/** One pass; the indices placed on worker `on`. */
const pass = (state: EngineState, on = "w") => {
  let n = 0;
  return (schedulePass(state, { nowMs: 1_000, recoveringUntilMs: 0, policy: "best-fit", newToken: (a) => `${a}.t${n++}` }).get(on) ?? []).map((p) => p.index).sort();
};

test("packing - an item that would strand its GPU waits for the smaller items behind it", () => {
  // 6.4 GB first: in order it takes the GPU with one 5.2 GB item (11.6 of 16 GB, 4.4 idle); passed
  // over, the three 5.2 GB items fill it to 15.6 GB and the 6.4 GB item stays queued.
  const packed = oneGpu([6.4 * GB, 5.2 * GB, 5.2 * GB, 5.2 * GB]);
  assert.deepEqual(pass(packed), [1, 2, 3]);
  assert.equal(packed.queue.size, 1);
  assert.equal(packed.engine!.deferrals, 1);
  assert.ok(packed.ledger.available("w/0") < 0.5 * GB);
  const inOrder = oneGpu([6.4 * GB, 5.2 * GB, 5.2 * GB, 5.2 * GB], false);
  assert.deepEqual(pass(inOrder), [0, 1]);
  assert.equal(inOrder.engine!.deferrals, undefined);
});

test("packing - an item passed over is still placed in the same pass when nothing else takes the room", () => {
  // Only 6.4 GB items: passing them over must not leave the GPU idle.
  const state = oneGpu([6.4 * GB, 6.4 * GB, 6.4 * GB]);
  assert.deepEqual(pass(state), [0, 1]);
  assert.equal(state.queue.size, 1);
  // And the ledger never holds more than the GPU: 8 + 2 × 6.4 GB.
  assert.ok(Math.abs(state.ledger.available("w/0") - 3.2 * GB) < 1);
});

test("packing - an item that would strand the tightest GPU goes where it packs when that GPU has room", () => {
  // A 24 GB and an 80 GB GPU, both cold: best fit alone takes the 24 GB one (3.2 GB of its room
  // stranded by 6.4 GB items); the 80 GB one holds them with 2 % left.
  const packed = fleet([6.4 * GB], undefined, [24, 80]);
  assert.deepEqual(pass(packed, "w1"), [0]);
  const inOrder = fleet([6.4 * GB], false, [24, 80]);
  assert.deepEqual(pass(inOrder, "w"), [0]);
  // A 5.2 GB item packs on the 24 GB GPU: best fit as before.
  const small = fleet([5.2 * GB], undefined, [24, 80]);
  assert.deepEqual(pass(small, "w"), [0]);
});

test("packing - property: a pass never overbooks a GPU, and leaves queued no item that fits somewhere (fast-check)", () => {
  // Random fleets of one-GPU workers and random item sizes, the rule on: whatever it passes over
  // in the first walk, the second places wherever it fits then.
  const sizes = fc.array(fc.constantFrom(16, 24, 48, 80), { minLength: 1, maxLength: 4 });
  const items = fc.array(fc.constantFrom(2, 4, 5.2, 6.4, 10, 12), { minLength: 1, maxLength: 40 });
  fc.assert(
    fc.property(sizes, items, (gb, acts) => {
      const state = fleet(acts.map((a) => a * GB), undefined, gb);
      // As the coordinator does when items are queued: the engine knows each model's smallest need.
      for (const a of acts) noteNeed(state.engine!, "m", 8 * GB, a * GB);
      pass(state);
      const workers = [...state.workers];
      for (const w of workers) {
        const g = state.ledger.gpusOf(w.id)[0]!;
        assert.ok(g.reservedBytes <= g.freeBytes, `${w.id}: ${g.reservedBytes} reserved of ${g.freeBytes} free`);
      }
      const placeable = workers.map((w) => ({ id: w.id, slotsFree: w.maxInFlight - state.attempts.openOn(w.id), resident: w.resident, models: w.models }));
      const b = state.batches.get("b")!;
      let pending = 0;
      for (const slot of b.items) {
        if (slot.state !== "pending") continue;
        pending++;
        const p = placeItem({ model: slot.model, ...slot.need }, placeable, state.ledger, "best-fit");
        assert.equal(p, undefined, `an item of ${slot.need.activationBytes / GB} GB fits on ${p?.gpuKey} but was left queued`);
      }
      assert.equal(state.queue.size, pending);
    }),
    { numRuns: 200 },
  );
});
