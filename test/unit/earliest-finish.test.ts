// Earliest-finish holds (coordinator/scheduler/earliest-finish.ts): in the tail, an item waits
// for a GPU that frees soon and finishes it first instead of taking a slow (or cold) GPU that is
// free now, and never waits when no such GPU frees in time, nor for an attempt past its
// predicted end. Through the pure engine with an injected clock, then through the simulator
// (bench/sim/simulator.ts: the real engine on a virtual clock, fixed seeds).

import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { WorkerState } from "../../proto/gen/shoal/v1/shoal.js";
import { Attempts } from "../../coordinator/attempts.js";
import { ActiveBatch, newItemSlot, type ItemSlot } from "../../coordinator/batch-state.js";
import { BatchQueue } from "../../coordinator/batch-queue.js";
import type { WorkerRecord } from "../../coordinator/fleet.js";
import { placeItem } from "../../coordinator/placement.js";
import { AffinityPlanner } from "../../coordinator/scheduler/affinity.js";
import { EarliestFinish, HOLD_MIN_GAIN_MS } from "../../coordinator/scheduler/earliest-finish.js";
import { newEnginePolicy, noteNeed, schedulePass, type DurationPredictor, type EngineState, type PassInput, type Placed } from "../../coordinator/scheduler/engine.js";
import { VramEstimates } from "../../coordinator/vram-estimates.js";
import { VramLedger } from "../../coordinator/vram-ledger.js";
import { POLICIES, simulate } from "../../bench/sim/simulator.js";
import { hedgingShape } from "../../bench/sim/hedging-workload.js";
import { SHAPES, speedsShape } from "../../bench/sim/workloads.js";

const GB = 1e9;
const declared = POLICIES.find((p) => p.name === "affinity+declared")!;

/** Items of model m, each declaring its run time at nominal speed. */
function makeBatch(id: string, workMs: number[]): ActiveBatch {
  const slots: ItemSlot[] = workMs.map((w) => newItemSlot("m", { work_ms: w }, { weightsBytes: 1 * GB, activationBytes: 1 * GB }, 0, 0));
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

function makeWorker(id: string, resident: string[] = []): WorkerRecord {
  return { id, incarnation: "i", state: WorkerState.WORKER_STATE_READY, lastSeenMs: 0, lastSeq: 1, hostname: id, resident: new Set(resident), models: new Set(["m"]), maxInFlight: 1, itemsDone: 0, heldReported: 0, unreachable: false };
}

/** An item runs its declared time / the worker's speed; loading m's weights takes `loadMs`. */
function predictor(speeds: Record<string, number>, loadMs = 0): DurationPredictor {
  const work = (slot: ItemSlot) => slot.params.work_ms as number;
  return { predictMs: (slot, w) => work(slot) / (w ? (speeds[w] ?? 1) : 1), speedOf: (w) => speeds[w] ?? 1, loadMs: () => loadMs, knows: () => true };
}

/** Single-slot workers with one 16 GB GPU each, in the given order; the affinity planner and a predictor. */
function makeState(workers: WorkerRecord[], pred: DurationPredictor, opts: { earliestFinish?: boolean } = {}): EngineState {
  const ledger = new VramLedger();
  for (const w of workers) ledger.observe(w.id, [{ index: 0, name: "g", totalBytes: 16 * GB, freeBytes: 16 * GB, source: "budget" }], []);
  const batches = new Map<string, ActiveBatch>();
  const estimates = new VramEstimates();
  const engine = newEnginePolicy({ affinity: new AffinityPlanner(), predictor: pred, ...opts });
  const queue = new BatchQueue({
    // As the coordinator's classify: the planner knows each waiting model's need.
    classify: (b, i) => {
      const slot = batches.get(b)!.items[i]!;
      noteNeed(engine, slot.model, slot.need.weightsBytes, slot.need.activationBytes);
      return { group: slot.model, rank: pred.predictMs(slot) };
    },
    longestFirst: true,
  });
  return { queue, batches, workers, ledger, attempts: new Attempts(ledger), estimates, engine };
}

function submit(state: EngineState, b: ActiveBatch): void {
  (state.batches as Map<string, ActiveBatch>).set(b.id, b);
  for (let i = 0; i < b.items.length; i++) state.queue.add(b.id, i, 0);
}

const pass = (nowMs: number): PassInput => ({ nowMs, recoveringUntilMs: 0, policy: "best-fit", newToken: (a, b, i, w) => `${a}.${b}-${i}-${w}-${nowMs}` });
const placed = (out: Map<string, Placed[]>) => [...out.values()].flat().map((p) => ({ item: `${p.batch.id}/${p.index}`, on: p.lease.workerId }));

/** The worker reports the attempt ended (its outcome came): its slot and room come back. */
function finish(state: EngineState, b: ActiveBatch, index: number): void {
  state.attempts.end(b.items[index]!.lease!.token);
  b.items[index]!.state = "done";
  b.items[index]!.lease = undefined;
}

test("earliest finish - the last item waits for a fast GPU that frees soon rather than take a slow idle one", () => {
  // fast: speed 2; slow: speed 0.5. Two items of 1 s: the first takes fast (500 ms there); the
  // second would take 2 s on slow but 500 ms on fast once it frees at 500: done at 1 s.
  const state = makeState([makeWorker("fast"), makeWorker("slow")], predictor({ fast: 2, slow: 0.5 }));
  const b = makeBatch("b", [1000, 1000]);
  submit(state, b);
  assert.deepEqual(placed(schedulePass(state, pass(0))), [{ item: "b/0", on: "fast" }]);
  assert.equal(b.items[1]!.state, "pending", "held, not placed on the slow GPU");
  assert.equal(state.queue.size, 1, "still queued");
  assert.equal(state.engine!.holdCheckAtMs, 500, "a pass is due when the fast GPU's item is predicted to end");
  assert.equal(state.engine!.holds, 1);
  // Still held while the fast GPU's item runs as predicted.
  assert.deepEqual(placed(schedulePass(state, pass(300))), []);
  finish(state, b, 0);
  assert.deepEqual(placed(schedulePass(state, pass(500))), [{ item: "b/1", on: "fast" }]);
});

test("earliest finish - without the holds the same item goes to the slow GPU at once (what the rule changes)", () => {
  const state = makeState([makeWorker("fast"), makeWorker("slow")], predictor({ fast: 2, slow: 0.5 }), { earliestFinish: false });
  submit(state, makeBatch("b", [1000, 1000]));
  assert.deepEqual(placed(schedulePass(state, pass(0))), [
    { item: "b/0", on: "fast" },
    { item: "b/1", on: "slow" },
  ]);
});

test("earliest finish - never waits when the faster GPU frees too late to finish first", () => {
  // The fast GPU's item (6 s of work: 3 s there) ends after the slow GPU would have finished (2 s).
  const state = makeState([makeWorker("fast"), makeWorker("slow")], predictor({ fast: 2, slow: 0.5 }));
  submit(state, makeBatch("b", [6000, 1000]));
  assert.deepEqual(placed(schedulePass(state, pass(0))), [
    { item: "b/0", on: "fast" },
    { item: "b/1", on: "slow" },
  ]);
  assert.equal(state.engine!.holds ?? 0, 0);
});

test("earliest finish - an attempt past its predicted end is waited for only while it could still finish first: then the slow GPU takes the item", () => {
  const state = makeState([makeWorker("fast"), makeWorker("slow")], predictor({ fast: 2, slow: 0.5 }));
  const b = makeBatch("b", [1000, 1000]);
  submit(state, b);
  schedulePass(state, pass(0));
  assert.equal(b.items[1]!.state, "pending");
  // Its outcome is a little late (a busy fleet reports a moment after the end): still held.
  assert.deepEqual(placed(schedulePass(state, pass(520))), []);
  // 500 ms overdue at 1,000: expected to run 500 ms more, then 500 ms of the held item: done at
  // 2,000, before the slow GPU's 3,000. A pass is due when that stops being true.
  assert.deepEqual(placed(schedulePass(state, pass(1000))), []);
  assert.equal(state.engine!.holdCheckAtMs, 2000);
  // Never past the item's deadline (2,000: its finish on the slow GPU when it was first held).
  assert.deepEqual(placed(schedulePass(state, pass(2000))), [{ item: "b/1", on: "slow" }]);
  assert.equal(state.queue.size, 0);
});

test("earliest finish - the free GPU's load time counts: a slightly faster warm GPU that frees soon is waited for", () => {
  // warm: speed 1.25, m's weights resident, its item runs until 800 ms; cold: speed 1, must load
  // m (2 s) first. The second item ends on warm at 800 + 800 = 1,600, on cold at 2,000 + 1,000.
  const load = 2000;
  const speeds = { warm: 1.25, cold: 1 };
  const state = makeState([makeWorker("warm", ["m"]), makeWorker("cold")], predictor(speeds, load));
  const b = makeBatch("b", [1000, 1000]);
  submit(state, b);
  assert.deepEqual(placed(schedulePass(state, pass(0))), [{ item: "b/0", on: "warm" }]);
  assert.equal(b.items[1]!.state, "pending");
  finish(state, b, 0);
  assert.deepEqual(placed(schedulePass(state, pass(800))), [{ item: "b/1", on: "warm" }]);
  // Where the model's weights are resident nothing is loaded: cold ends it at 1,000, first.
  const resident = makeState([makeWorker("warm", ["m"]), makeWorker("cold", ["m"])], predictor(speeds, load));
  submit(resident, makeBatch("b", [1000, 1000]));
  assert.deepEqual(placed(schedulePass(resident, pass(0))), [
    { item: "b/0", on: "warm" },
    { item: "b/1", on: "cold" },
  ]);
  // A GPU of the same speed is not waited for only to save a load: the plan decides loads.
  const same = makeState([makeWorker("warm", ["m"]), makeWorker("cold")], predictor({}, load));
  submit(same, makeBatch("b", [1000, 1000]));
  assert.deepEqual(placed(schedulePass(same, pass(0))), [
    { item: "b/0", on: "warm" },
    { item: "b/1", on: "cold" },
  ]);
});

test("earliest finish - one slot is booked by one held item: the next item takes the free slow GPU when that ends first", () => {
  // fast frees at 500 ms; the first held item books it until 1,000 ms; the third item would end
  // there at 1,500 ms (and its 600 ms of work at 2 ×), on slow at 1,200 ms: it takes slow.
  const state = makeState([makeWorker("fast"), makeWorker("slow")], predictor({ fast: 2, slow: 0.5 }));
  submit(state, makeBatch("b", [1000, 1000, 600]));
  const out = placed(schedulePass(state, pass(0)));
  assert.deepEqual(out, [
    { item: "b/0", on: "fast" },
    { item: "b/2", on: "slow" },
  ]);
  assert.equal(state.engine!.holds, 1);
});

test("earliest finish - a short item is placed at once, however much faster a GPU that frees soon is; the running attempts are not read", () => {
  // As in the first test, at 1/400 the size: fast (speed 2) frees at 1.25 ms and would end the
  // second item at 2.5 ms, slow (0.5) at 5 ms. A gain under HOLD_MIN_GAIN_MS is not waited for:
  // the freeing attempt's outcome takes about that long to come back.
  const state = makeState([makeWorker("fast"), makeWorker("slow")], predictor({ fast: 2, slow: 0.5 }));
  const short = (HOLD_MIN_GAIN_MS * 0.5) / 2; // 1.25 ms on slow: under the bound, load none
  const b = makeBatch("b", [2.5, short]);
  submit(state, b);
  assert.deepEqual(placed(schedulePass(state, pass(0))), [
    { item: "b/0", on: "fast" },
    { item: "b/1", on: "slow" },
  ]);
  assert.equal(state.engine!.holds ?? 0, 0);
  // The bound is on load + run: a short item that must first load its model may still wait.
  const slot = newItemSlot("m", { work_ms: 1 }, { weightsBytes: GB, activationBytes: GB }, 0, 0);
  let reads = 0;
  const rule = (loadMs: number) =>
    new EarliestFinish({
      nowMs: 0,
      predictor: predictor({ fast: 2, slow: 1 }, loadMs),
      fluidEndMs: 0,
      running: () => {
        reads++;
        return [{ model: "m", workerId: "fast", startMs: 0, predictedMs: 0.5, activationBytes: GB, token: "t", gpuIndex: 0 } as never];
      },
      gpuKeyOf: () => "fast/0",
      accepts: () => true,
      available: () => 0,
      deadlines: new WeakMap(),
    });
  assert.equal(rule(0).hold(slot, GB, { workerId: "slow", loads: false, runMs: 1 }), false);
  assert.equal(reads, 0, "no scan of the running attempts for an item that cannot gain");
  assert.equal(rule(2000).hold(slot, GB, { workerId: "slow", loads: true, runMs: 1 }), true, "2 s of load on the free GPU: worth waiting 0.5 ms for the warm one");
  assert.equal(reads, 1);
});

test("earliest finish - where no worker serving the model is faster than the free GPU, nothing is held and the running attempts are not read", () => {
  const slot = newItemSlot("m", { work_ms: 1000 }, { weightsBytes: GB, activationBytes: GB }, 0, 0);
  let reads = 0;
  const rule = (speeds: Record<string, number>) => {
    const pred = predictor(speeds);
    return new EarliestFinish({
      nowMs: 0,
      predictor: pred,
      fluidEndMs: 0,
      running: () => {
        reads++;
        return [{ model: "m", workerId: "b", startMs: 0, predictedMs: 10, activationBytes: GB, token: "t", gpuIndex: 0 } as never];
      },
      gpuKeyOf: (a) => `${a.workerId}/0`,
      accepts: () => true,
      available: () => 0,
      fastestSpeed: () => Math.max(...Object.keys(speeds).map((w) => pred.speedOf(w))),
      deadlines: new WeakMap(),
    });
  };
  // One GPU type: b frees in 10 ms, but at a's speed; waiting for it cannot end the item sooner.
  assert.equal(rule({ a: 1, b: 1 }).hold(slot, GB, { workerId: "a", loads: false, runMs: 1000 }), false);
  assert.equal(reads, 0, "no scan of the running attempts on a fleet of one speed");
  // b twice as fast: it frees at 10 ms and ends the item at 510 ms, before a's 1,000.
  assert.equal(rule({ a: 1, b: 2 }).hold(slot, GB, { workerId: "a", loads: false, runMs: 1000 }), true);
  assert.equal(reads, 1);
});

test("earliest finish - property: an item left queued that fits somewhere is held, and none is held past its deadline", () => {
  fc.assert(
    fc.property(
      fc.array(fc.constantFrom(0.25, 0.5, 1, 1.5, 2, 4), { minLength: 1, maxLength: 4 }),
      fc.array(fc.integer({ min: 50, max: 3000 }), { minLength: 1, maxLength: 8 }),
      fc.integer({ min: 1, max: 5000 }),
      (speedList, work, later) => {
        const speeds = Object.fromEntries(speedList.map((v, i) => [`w${i}`, v]));
        const workers = speedList.map((_, i) => makeWorker(`w${i}`, ["m"]));
        const state = makeState(workers, predictor(speeds));
        const b = makeBatch("b", work);
        submit(state, b);
        // No attempt ever ends (every one overruns): passes at 0, at a random time, and far later.
        for (const now of [0, later, 1e9]) {
          schedulePass(state, pass(now));
          const placeable = workers.map((w) => ({ id: w.id, slotsFree: w.maxInFlight - state.attempts.openOn(w.id), resident: w.resident, models: w.models }));
          for (const slot of b.items) {
            if (slot.state !== "pending") continue;
            const fitsNow = placeItem({ model: slot.model, ...slot.need }, placeable, state.ledger, "best-fit") !== undefined;
            const deadline = state.engine!.holdDeadlines?.get(slot);
            if (fitsNow) {
              assert.ok(deadline !== undefined, `at ${now}: an item that fits is queued without being held`);
              assert.ok(now < deadline, `at ${now}: held past its deadline ${deadline}`);
            }
          }
        }
        // Far past every deadline: every item that fits anywhere has been placed.
        const pending = b.items.filter((x) => x.state === "pending").length;
        assert.equal(pending, Math.max(0, work.length - workers.length), "only items with no free worker are left");
      },
    ),
    { numRuns: 200 },
  );
});

test("earliest finish sim - the known-slow GPU does not take the last items: every batch ends sooner (fixed seeds)", () => {
  // One GPU 3 × slower among five single-slot GPUs (the hedging shape), three batches one after
  // another: speeds are measured from the first outcomes, and each batch's end is its last item.
  for (const seed of [1, 2, 3, 42]) {
    const w = hedgingShape({ seed, batches: 3 });
    const on = simulate(w, declared);
    const off = simulate(w, declared, { earliestFinish: false });
    for (const [i, t] of on.batchTimes.entries()) {
      const o = off.batchTimes[i]!;
      assert.ok(t.doneMs - t.arrivalMs < o.doneMs - o.arrivalMs, `seed ${seed}, ${t.id}: ${t.doneMs - t.arrivalMs} ms with the holds, ${o.doneMs - o.arrivalMs} ms without`);
    }
    assert.equal(on.notEnded, 0);
    assert.equal(on.overbooked, 0);
  }
});

test("earliest finish sim - mixed speeds: closer to the ideal than without the holds, and no item waits for ever (fixed seeds)", () => {
  for (const seed of [1, 2, 3, 42]) {
    const w = speedsShape({ seed, quick: true });
    const on = simulate(w, declared);
    const off = simulate(w, declared, { earliestFinish: false });
    assert.ok(on.efficiency > off.efficiency, `seed ${seed}: ${on.efficiency} with the holds, ${off.efficiency} without`);
    assert.equal(on.notEnded, 0);
    assert.equal(on.doubleEnded, 0);
    assert.equal(on.overbooked, 0);
  }
  // Every shape: every item ends (a hold never starves one), once, with no GPU overbooked.
  for (const shape of SHAPES) {
    const w = shape({ seed: 5, quick: true });
    const r = simulate(w, declared);
    assert.equal(r.notEnded, 0, `${w.name}: items never ended`);
    assert.equal(r.doubleEnded, 0, `${w.name}: items ended twice`);
    assert.equal(r.overbooked, 0, `${w.name}: overbooked`);
  }
});
