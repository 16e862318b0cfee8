// The scheduling pass through its pure API: queue, batches, workers, ledger, estimates and an
// injected clock and token source in, placement decisions out. Nothing here starts NATS or
// reads the wall clock; the integration suites (scheduler, vram-placement, faults-*) check the
// same rules through a real coordinator.

import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { WorkerState } from "../../proto/gen/shoal/v1/shoal.js";
import { Attempts } from "../../coordinator/attempts.js";
import { ActiveBatch, type ItemSlot } from "../../coordinator/batch-state.js";
import { BatchQueue, LOOKAHEAD } from "../../coordinator/batch-queue.js";
import type { WorkerRecord } from "../../coordinator/fleet.js";
import { placeItem } from "../../coordinator/placement.js";
import { findUnplaceable, schedulePass, type EngineState, type PassInput } from "../../coordinator/scheduler/engine.js";
import { VramEstimates, shapeKey } from "../../coordinator/vram-estimates.js";
import { VramLedger, gpuKey } from "../../coordinator/vram-ledger.js";

interface ItemSpec {
  model: string;
  weights: number;
  activation: number;
}

function makeBatch(id: string, items: ItemSpec[], priority = 0): ActiveBatch {
  const slots: ItemSlot[] = items.map((it) => ({
    model: it.model,
    params: {},
    need: { weightsBytes: it.weights, activationBytes: it.activation },
    state: "pending",
    attempts: 0,
    lease: undefined,
    closed: undefined,
    result: undefined,
    queuedAtMs: 0,
    firstQueuedAtMs: 0,
    shapeKey: shapeKey(it.model, {}),
  }));
  const record = {
    batch: { id, state: 1, total: items.length, succeeded: 0, failed: 0, cancelled: 0, results: [], createdAt: new Date(0), completedAt: undefined, labels: {}, running: 0, priority, queuePosition: 0, estimatedCompletionAt: undefined },
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

function makeWorker(id: string, models: string[], maxInFlight = 64, state = WorkerState.WORKER_STATE_READY): WorkerRecord {
  return {
    id,
    incarnation: "i",
    state,
    lastSeenMs: 0,
    lastSeq: 1,
    hostname: id,
    resident: new Set(),
    models: new Set(models),
    maxInFlight,
    itemsDone: 0,
    heldReported: 0,
    unreachable: false,
  };
}

/** A fleet of budget GPUs: `gpus[w]` lists the free bytes of worker w's GPUs. */
function makeState(gpus: Record<string, number[]>, workers: WorkerRecord[], batches: ActiveBatch[]): EngineState {
  const ledger = new VramLedger();
  for (const [id, frees] of Object.entries(gpus)) {
    ledger.observe(id, frees.map((free, index) => ({ index, name: `${id}-${index}`, totalBytes: free, freeBytes: free, source: "budget" })), []);
  }
  const queue = new BatchQueue();
  const map = new Map<string, ActiveBatch>();
  for (const b of batches) {
    map.set(b.id, b);
    for (let i = 0; i < b.items.length; i++) queue.add(b.id, i, b.record.batch!.priority);
  }
  return { queue, batches: map, workers, ledger, attempts: new Attempts(ledger), estimates: new VramEstimates() };
}

/** The clock and the token source are injected: the same inputs give the same decisions. */
function input(nowMs = 1_000, recoveringUntilMs = 0): PassInput {
  let n = 0;
  return { nowMs, recoveringUntilMs, policy: "best-fit", newToken: (attempt) => `${attempt}.t${n++}` };
}

test("scheduler engine - places what fits, records the attempt, and leaves the rest queued", () => {
  const b = makeBatch("b1", [
    { model: "m", weights: 10, activation: 4 },
    { model: "m", weights: 10, activation: 4 },
    { model: "m", weights: 10, activation: 4 },
  ]);
  const w = makeWorker("w1", ["m"]);
  const state = makeState({ w1: [20] }, [w], [b]);
  const out = schedulePass(state, input(5_000));
  // 10 weights + 4 + 4 = 18 of 20: the third item (4 more) does not fit.
  const placed = out.get("w1") ?? [];
  assert.deepEqual(placed.map((p) => p.index), [0, 1]);
  for (const p of placed) {
    assert.equal(p.lease.assignedAtMs, 5_000, "the attempt is stamped with the injected clock");
    assert.equal(p.lease.workerId, "w1");
    assert.equal(b.items[p.index]!.state, "leased");
    assert.equal(b.items[p.index]!.lease, p.lease);
    assert.equal(b.items[p.index]!.attempts, 1);
  }
  assert.equal(state.attempts.openOn("w1"), 2, "each attempt counts against its worker");
  assert.equal(b.items[2]!.state, "pending");
  assert.equal(state.queue.size, 1);
  assert.equal(state.ledger.available(gpuKey("w1", 0)), 2);
  assert.equal(b.started, true);
});

test("scheduler engine - nothing is placed while recovering, everything once it is over", () => {
  const b = makeBatch("b1", [{ model: "m", weights: 1, activation: 1 }]);
  const state = makeState({ w1: [10] }, [makeWorker("w1", ["m"])], [b]);
  assert.equal(schedulePass(state, input(999, 1_000)).size, 0);
  assert.equal(b.items[0]!.state, "pending");
  assert.equal(state.queue.size, 1);
  assert.equal(schedulePass(state, input(1_000, 1_000)).get("w1")?.length, 1);
});

test("scheduler engine - only READY, reachable workers with free slots take items", () => {
  const b = makeBatch("b1", Array.from({ length: 4 }, () => ({ model: "m", weights: 1, activation: 1 })));
  const draining = makeWorker("d", ["m"], 64, WorkerState.WORKER_STATE_DRAINING);
  const lost = makeWorker("l", ["m"], 64, WorkerState.WORKER_STATE_LOST);
  const ready = makeWorker("r", ["m"], 2);
  // READY by its last heartbeat, but an assignment found nobody subscribed since.
  const unreachable = { ...makeWorker("u", ["m"]), unreachable: true };
  const state = makeState({ d: [100], l: [100], r: [100], u: [100] }, [draining, lost, ready, unreachable], [b]);
  const out = schedulePass(state, input());
  assert.deepEqual([...out.keys()], ["r"]);
  assert.equal(out.get("r")!.length, 2, "maxInFlight bounds what one worker takes");
  assert.equal(state.queue.size, 2);
});

test("scheduler engine - a batch behind a blocked head is still placed, and so are the items behind a large head", () => {
  // b1's head needs 50 and fits nowhere; its small items behind it and the whole of b2 do.
  const b1 = makeBatch("b1", [
    { model: "m", weights: 0, activation: 50 },
    { model: "m", weights: 0, activation: 2 },
    { model: "m", weights: 0, activation: 2 },
  ]);
  const b2 = makeBatch("b2", [
    { model: "m", weights: 0, activation: 3 },
    { model: "m", weights: 0, activation: 3 },
  ]);
  const state = makeState({ w1: [20] }, [makeWorker("w1", ["m"])], [b1, b2]);
  schedulePass(state, input());
  assert.deepEqual(b1.items.map((s) => s.state), ["pending", "leased", "leased"]);
  assert.deepEqual(b2.items.map((s) => s.state), ["leased", "leased"]);
  assert.equal(state.queue.size, 1);
  assert.equal(state.queue.sizeOf("b1"), 1, "the blocked head keeps its place");
});

test("scheduler engine - items done or adopted while queued are dropped from the queue, not placed", () => {
  const b = makeBatch("b1", [
    { model: "m", weights: 0, activation: 1 },
    { model: "m", weights: 0, activation: 1 },
  ]);
  const state = makeState({ w1: [10] }, [makeWorker("w1", ["m"])], [b]);
  b.items[0]!.state = "leased"; // adopted from a worker's report after a restart
  const out = schedulePass(state, input());
  assert.deepEqual(out.get("w1")!.map((p) => p.index), [1]);
  assert.equal(state.queue.size, 0);
});

test("scheduler engine - a learned estimate replaces the manifest's activations", () => {
  const b = makeBatch("b1", [{ model: "m", weights: 0, activation: 4 }]);
  const state = makeState({ w1: [10] }, [makeWorker("w1", ["m"])], [b]);
  state.estimates.raiseAfterOom(shapeKey("m", {}), 8); // 12 > 10
  assert.equal(schedulePass(state, input()).size, 0);
  assert.equal(b.items[0]!.state, "pending");
});

test("scheduler engine - unplaceable items fail only after the grace, with the reason", () => {
  const b = makeBatch("b1", [
    { model: "m", weights: 10, activation: 10 },
    { model: "nobody", weights: 1, activation: 1 },
    { model: "m", weights: 1, activation: 1 },
  ]);
  const state = makeState({ w1: [15] }, [makeWorker("w1", ["m"])], [b]);
  assert.deepEqual(findUnplaceable(state, 1_000, 500), [], "first seen: the grace starts");
  assert.deepEqual(findUnplaceable(state, 1_499, 500), []);
  const found = findUnplaceable(state, 1_500, 500);
  assert.deepEqual(
    found.map((f) => [f.index, f.error.code]),
    [
      [0, "OUT_OF_MEMORY"],
      [1, "MODEL_NOT_FOUND"],
    ],
  );
  assert.ok(found.every((f) => f.error.retryable));
});

// ------------------------------------------------------------------------------------------
// Properties over random fleets and queues

const arbFleet = fc.array(
  fc.record({
    gpus: fc.array(fc.integer({ min: 0, max: 64 }), { minLength: 1, maxLength: 3 }),
    models: fc.subarray(["a", "b", "c"], { minLength: 1 }),
    maxInFlight: fc.integer({ min: 1, max: 6 }),
  }),
  { minLength: 1, maxLength: 4 },
);
const WEIGHTS: Record<string, number> = { a: 8, b: 16, c: 0 };
const arbItem = fc.record({ model: fc.constantFrom("a", "b", "c", "unserved"), activation: fc.integer({ min: 0, max: 24 }) });
// At most LOOKAHEAD + 1 items per batch: a pass tries every one of them (the head and the
// LOOKAHEAD behind it), so "everything that fits is placed" is exact.
const arbBatches = fc.array(fc.record({ items: fc.array(arbItem, { minLength: 1, maxLength: LOOKAHEAD + 1 }), priority: fc.integer({ min: 0, max: 3 }) }), {
  minLength: 1,
  maxLength: 4,
});

/** The value type an arbitrary generates. */
type Gen<A> = A extends fc.Arbitrary<infer T> ? T : never;

function build(fleet: Gen<typeof arbFleet>, batches: Gen<typeof arbBatches>) {
  const workers = fleet.map((f, i) => makeWorker(`w${i}`, f.models, f.maxInFlight));
  const gpus = Object.fromEntries(fleet.map((f, i) => [`w${i}`, f.gpus]));
  const active = batches.map((b, i) =>
    makeBatch(
      `b${i}`,
      b.items.map((it) => ({ model: it.model, weights: WEIGHTS[it.model] ?? 4, activation: it.activation })),
      b.priority,
    ),
  );
  return { workers, gpus, active, state: makeState(gpus, workers, active) };
}

test("scheduler engine - property: one pass never overbooks a GPU or a worker", () => {
  fc.assert(
    fc.property(arbFleet, arbBatches, (fleet, batches) => {
      const { workers, gpus, active, state } = build(fleet, batches);
      const out = schedulePass(state, input());
      // Recompute each budget GPU's use from the decisions alone: the weights of each model
      // once, plus every item's activations.
      const use = new Map<string, { models: Set<string>; bytes: number }>();
      for (const [workerId, list] of out) {
        const w = workers.find((x) => x.id === workerId)!;
        assert.ok(list.length <= w.maxInFlight, "no more items than the worker's slots");
        for (const p of list) {
          const slot = p.batch.items[p.index]!;
          assert.ok(w.models.has(slot.model), "only a worker that serves the model");
          const key = gpuKey(workerId, p.lease.gpuIndex);
          const u = use.get(key) ?? { models: new Set(), bytes: 0 };
          if (!u.models.has(slot.model)) u.bytes += slot.need.weightsBytes;
          u.models.add(slot.model);
          u.bytes += slot.need.activationBytes;
          use.set(key, u);
        }
      }
      for (const [key, u] of use) {
        const [workerId, index] = [key.slice(0, key.lastIndexOf("/")), Number(key.slice(key.lastIndexOf("/") + 1))];
        assert.ok(u.bytes <= gpus[workerId]![index]!, `${key}: ${u.bytes} placed on ${gpus[workerId]![index]} free`);
        assert.ok(state.ledger.available(key) >= 0);
      }
      // Every decision is recorded once: a leased slot per decision, tokens unique.
      const tokens = [...out.values()].flat().map((p) => p.lease.token);
      assert.equal(new Set(tokens).size, tokens.length);
      const leased = active.flatMap((b) => b.items).filter((s) => s.state === "leased").length;
      assert.equal(leased, tokens.length);
    }),
    { numRuns: 300 },
  );
});

test("scheduler engine - property: after one pass nothing left in the queue fits anywhere", () => {
  fc.assert(
    fc.property(arbFleet, arbBatches, (fleet, batches) => {
      const { workers, active, state } = build(fleet, batches);
      schedulePass(state, input());
      const placeable = workers.map((w) => ({ id: w.id, slotsFree: w.maxInFlight - state.attempts.openOn(w.id), resident: w.resident, models: w.models }));
      let pending = 0;
      for (const b of active) {
        for (const slot of b.items) {
          if (slot.state !== "pending") continue;
          pending++;
          const p = placeItem({ model: slot.model, ...slot.need }, placeable, state.ledger, "best-fit");
          assert.equal(p, undefined, `${b.id}: a ${slot.model} item needing ${JSON.stringify(slot.need)} fits on ${p?.gpuKey} but was left queued`);
        }
      }
      assert.equal(state.queue.size, pending, "every item still pending is still queued");
    }),
    { numRuns: 300 },
  );
});

test("scheduler engine - property: the same inputs give the same decisions", () => {
  fc.assert(
    fc.property(arbFleet, arbBatches, (fleet, batches) => {
      const decide = () => {
        const { state } = build(fleet, batches);
        return [...schedulePass(state, input()).entries()].map(([w, list]) => [w, list.map((p) => [p.batch.id, p.index, p.lease.gpuIndex, p.lease.token])]);
      };
      assert.deepEqual(decide(), decide());
    }),
    { numRuns: 100 },
  );
});

// ------------------------------------------------------------------------------------------
// Attempts: the one owner of an attempt, its reservation and its worker slot

test("attempts - opening and ending an attempt moves the item, the ledger and the worker together", () => {
  const b = makeBatch("b1", [{ model: "m", weights: 6, activation: 2 }]);
  const state = makeState({ w1: [10] }, [makeWorker("w1", ["m"])], [b]);
  const key = gpuKey("w1", 0);
  const attempt = { token: "1.x", workerId: "w1", gpuIndex: 0, assignedAtMs: 0, activationBytes: 2 };
  state.attempts.open(b, 0, attempt, 1, { gpuKey: key, bytes: 8, model: "m", activationBytes: 2, weightsBytes: 6 });
  assert.equal(b.items[0]!.lease, attempt);
  assert.equal(b.items[0]!.attempts, 1);
  assert.equal(state.ledger.available(key), 2);
  assert.equal(state.attempts.openOn("w1"), 1);
  state.attempts.end("1.x");
  assert.equal(state.ledger.available(key), 10);
  assert.equal(state.attempts.openOn("w1"), 0);
  state.attempts.end("1.x"); // a duplicate end (a late result) changes nothing
  state.attempts.end("unknown");
  assert.equal(state.ledger.available(key), 10);
});

test("attempts - a reservation that no longer fits opens nothing", () => {
  const b = makeBatch("b1", [{ model: "m", weights: 0, activation: 20 }]);
  const state = makeState({ w1: [10] }, [makeWorker("w1", ["m"])], [b]);
  const attempt = { token: "1.y", workerId: "w1", gpuIndex: 0, assignedAtMs: 0 };
  assert.throws(() => state.attempts.open(b, 0, attempt, 1, { gpuKey: gpuKey("w1", 0), bytes: 20, model: "m", activationBytes: 20, weightsBytes: 0 }), /exceed/);
  assert.equal(b.items[0]!.state, "pending");
  assert.equal(state.attempts.openOn("w1"), 0);
});

test("attempts - a lost worker's attempts are handed back once; adopted ones reserve nothing", () => {
  const b = makeBatch("b1", [
    { model: "m", weights: 0, activation: 3 },
    { model: "m", weights: 0, activation: 3 },
  ]);
  const state = makeState({ w1: [10] }, [makeWorker("w1", ["m"])], [b]);
  const key = gpuKey("w1", 0);
  state.attempts.open(b, 0, { token: "1.a", workerId: "w1", gpuIndex: 0, assignedAtMs: 0 }, 1, { gpuKey: key, bytes: 3, model: "m", activationBytes: 3, weightsBytes: 0 });
  state.attempts.adopt(b, 1, { token: "2.b", workerId: "w1", gpuIndex: 0, assignedAtMs: 0 }, 2);
  assert.equal(state.ledger.available(key), 7, "the adopted attempt is already in the worker's report");
  assert.equal(b.items[1]!.attempts, 2);
  assert.equal(state.attempts.openOn("w1"), 2);
  assert.deepEqual([...state.attempts.forgetWorker("w1")].sort(), ["1.a", "2.b"]);
  assert.equal(state.attempts.openOn("w1"), 0);
  assert.deepEqual([...state.attempts.forgetWorker("w1")], []);
  // Its reservation stays until the attempt is taken back (ended) by the caller.
  assert.equal(state.ledger.available(key), 7);
  state.attempts.end("1.a");
  assert.equal(state.ledger.available(key), 10);
});

test("attempts - an attempt the worker refused is withdrawn: it does not count, and only the current one goes back", () => {
  const b = makeBatch("b1", [{ model: "m", weights: 0, activation: 3 }]);
  const state = makeState({ w1: [10] }, [makeWorker("w1", ["m"])], [b]);
  const key = gpuKey("w1", 0);
  const attempt = { token: "1.r", workerId: "w1", gpuIndex: 0, assignedAtMs: 0 };
  state.attempts.open(b, 0, attempt, 1, { gpuKey: key, bytes: 3, model: "m", activationBytes: 3, weightsBytes: 0 });
  assert.equal(state.attempts.withdraw(b, 0, attempt), true);
  assert.equal(b.items[0]!.state, "pending");
  assert.equal(b.items[0]!.lease, undefined);
  assert.equal(b.items[0]!.attempts, 0, "a refused assignment is no attempt");
  assert.equal(state.ledger.available(key), 10);
  assert.equal(state.attempts.openOn("w1"), 0);
  assert.equal(state.attempts.withdraw(b, 0, attempt), false, "twice changes nothing");
  assert.equal(b.items[0]!.attempts, 0);
});
