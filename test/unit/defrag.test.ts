// Defragmentation: the pure decision (coordinator/scheduler/defrag.ts), and the engine with it
// through the discrete-event simulator (bench/sim/simulator.ts, which drives the real
// schedulePass, ledger and attempts) with model residency and fixed seeds.

import { test } from "node:test";
import assert from "node:assert/strict";
import { planEvictions, waitWithoutEviction, type DefragGpu, type Eviction } from "../../coordinator/scheduler/defrag.js";
import { POLICIES, simulate, type SimWorkload } from "../../bench/sim/simulator.js";
import { DEFRAG_MODELS, defragShape } from "../../bench/sim/defrag-workload.js";
import { SHAPES } from "../../bench/sim/workloads.js";
import { WorkerState } from "../../proto/gen/shoal/v1/shoal.js";
import { Attempts } from "../../coordinator/attempts.js";
import { ActiveBatch, type ItemSlot } from "../../coordinator/batch-state.js";
import { BatchQueue } from "../../coordinator/batch-queue.js";
import type { WorkerRecord } from "../../coordinator/fleet.js";
import { newEnginePolicy, schedulePass, type EngineState } from "../../coordinator/scheduler/engine.js";
import { VramEstimates, shapeKey } from "../../coordinator/vram-estimates.js";
import { VramLedger, gpuKey } from "../../coordinator/vram-ledger.js";
import { residentWeightsProblem } from "../../coordinator/wire-validation.js";

const GB = 1e9;

function gpu(key: string, over: Partial<DefragGpu> = {}): DefragGpu {
  return {
    key,
    workerId: key.split("/")[0]!,
    gpuIndex: 0,
    availableBytes: 0,
    slotsFree: 2,
    serves: new Set(["a", "b", "c"]),
    counted: new Set(),
    idle: new Map(),
    running: [],
    ...over,
  };
}

const noCost = { loadMs: () => 0, waiting: () => 0 };

test("defrag - evicts the idle model that frees enough room, nothing more", () => {
  const g = gpu("w1/0", { availableBytes: 2 * GB, idle: new Map([["a", 4 * GB], ["c", 1 * GB]]), counted: new Set(["a", "c"]) });
  const out = planEvictions([g], [{ model: "b", weightsBytes: 4 * GB, activationBytes: 1 * GB }], noCost);
  assert.equal(out.length, 1);
  assert.deepEqual(out[0]!.models, ["a"]); // 2 + 4 ≥ 5; c's 1 GB is not needed
  assert.equal(out[0]!.bytes, 4 * GB);
  assert.equal(out[0]!.forModel, "b");
  assert.equal(out[0]!.gainMs, Infinity); // nothing running would ever free the room
});

test("defrag - nothing to evict, not enough idle weights, no slot, or a GPU busy with an eviction: no decision", () => {
  const blocked = [{ model: "b", weightsBytes: 4 * GB, activationBytes: 1 * GB }];
  assert.deepEqual(planEvictions([gpu("w1/0", { availableBytes: 1 * GB })], blocked, noCost), []);
  assert.deepEqual(planEvictions([gpu("w1/0", { availableBytes: 1 * GB, idle: new Map([["a", 3 * GB]]) })], blocked, noCost), []);
  assert.deepEqual(planEvictions([gpu("w1/0", { availableBytes: 1 * GB, slotsFree: 0, idle: new Map([["a", 8 * GB]]) })], blocked, noCost), []);
  const g = gpu("w1/0", { availableBytes: 1 * GB, idle: new Map([["a", 8 * GB]]) });
  assert.deepEqual(planEvictions([g], blocked, noCost, new Set(["w1/0"])), []);
  // A worker that does not serve the model is never asked.
  assert.deepEqual(planEvictions([gpu("w1/0", { availableBytes: 1 * GB, idle: new Map([["a", 8 * GB]]), serves: new Set(["a"]) })], blocked, noCost), []);
});

test("defrag - the waiting model's own idle weights are never evicted for it: they count as paid", () => {
  // b is resident and idle here: its item needs only its activations (1 GB ≤ 2 GB): it fits.
  const g = gpu("w1/0", { availableBytes: 2 * GB, idle: new Map([["b", 4 * GB]]), counted: new Set(["b"]) });
  assert.deepEqual(planEvictions([g], [{ model: "b", weightsBytes: 4 * GB, activationBytes: 1 * GB }], noCost), []);
});

test("defrag - evicts only when the wait saved beats the reload of models that still have items waiting", () => {
  const blocked = [{ model: "b", weightsBytes: 4 * GB, activationBytes: 1 * GB }];
  // On w2, b's item fits once a running item ends in 3 s; evicting a (10 s to reload, items waiting) on w1 is not worth it.
  const w1 = gpu("w1/0", { availableBytes: 0, idle: new Map([["a", 6 * GB]]) });
  const w2 = gpu("w2/0", { availableBytes: 3 * GB, running: [{ endsInMs: 3000, bytes: 2 * GB }] });
  const costs = { loadMs: () => 10_000, waiting: (m: string) => (m === "a" ? 5 : 0) };
  assert.deepEqual(planEvictions([w1, w2], blocked, costs), []);
  // The same when the running item ends in 30 s: now the eviction saves more than it costs.
  const slow = gpu("w2/0", { availableBytes: 3 * GB, running: [{ endsInMs: 30_000, bytes: 2 * GB }] });
  const out = planEvictions([w1, slow], blocked, costs);
  assert.equal(out.length, 1);
  assert.equal(out[0]!.gpuKey, "w1/0");
  assert.equal(out[0]!.gainMs, 30_000);
  assert.equal(out[0]!.costMs, 10_000);
  // A model with nothing waiting costs no reload: evicted even for a short wait.
  assert.equal(planEvictions([w1, w2], blocked, { loadMs: () => 10_000, waiting: () => 0 }).length, 1);
});

test("defrag - prefers the GPU where the eviction costs least, then frees the fewest bytes", () => {
  const blocked = [{ model: "b", weightsBytes: 4 * GB, activationBytes: 1 * GB }];
  const costly = gpu("w1/0", { idle: new Map([["a", 6 * GB]]) });
  const free = gpu("w2/0", { idle: new Map([["c", 8 * GB]]) });
  const tight = gpu("w3/0", { idle: new Map([["c", 5 * GB]]) });
  const costs = { loadMs: () => 1000, waiting: (m: string) => (m === "a" ? 1 : 0) };
  const out = planEvictions([costly, free, tight], blocked, costs);
  assert.equal(out.length, 1);
  assert.equal(out[0]!.gpuKey, "w3/0");
  assert.equal(out[0]!.costMs, 0);
  // One decision per GPU: two blocked models get two different GPUs.
  const two = planEvictions([costly, free, tight], [...blocked, { model: "a", weightsBytes: 4 * GB, activationBytes: 1 * GB }], costs);
  assert.deepEqual(two.map((e) => e.gpuKey), ["w3/0", "w2/0"]);
});

test("defrag - the wait without eviction: 0 with room and a slot now; the first end on a full GPU; Infinity when unknown", () => {
  const need = () => 4 * GB;
  assert.equal(waitWithoutEviction([gpu("a/0", { availableBytes: 5 * GB })], need), 0);
  assert.equal(waitWithoutEviction([gpu("a/0", { availableBytes: 5 * GB, slotsFree: 0, running: [{ endsInMs: 700, bytes: 1 }] })], need), 700);
  assert.equal(waitWithoutEviction([gpu("a/0", { availableBytes: 1 * GB, running: [{ endsInMs: Infinity, bytes: 8 * GB }] })], need), Infinity);
  assert.equal(waitWithoutEviction([gpu("a/0", { availableBytes: 1 * GB, running: [{ endsInMs: 900, bytes: 2 * GB }, { endsInMs: 400, bytes: 1 * GB }] })], need), 900);
});

// --- the engine: the ledger's resident weights in, evictions out ------------------------------

function batchOf(id: string, items: { model: string; weights: number; activation: number }[]): ActiveBatch {
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
  const record = { batch: { id, priority: 0 }, items: [] } as unknown as ConstructorParameters<typeof ActiveBatch>[0];
  return new ActiveBatch(record, 1, slots, 3, 0);
}

/** One 14 GB budget worker that keeps `resident` (model → weights) loaded and counted: free = 14 − their weights. */
function engineState(resident: Record<string, number>, batches: ActiveBatch[], defrag = true): EngineState {
  const ledger = new VramLedger();
  const used = Object.values(resident).reduce((a, b) => a + b, 0);
  ledger.observe("w1", [{ index: 0, name: "g", totalBytes: 14 * GB, freeBytes: 14 * GB - used, source: "budget" }], []);
  ledger.observeResident("w1", Object.entries(resident).map(([model, weightsBytes]) => ({ gpuIndex: 0, model, weightsBytes })));
  const worker: WorkerRecord = { id: "w1", incarnation: "i", state: WorkerState.WORKER_STATE_READY, lastSeenMs: 0, lastSeq: 1, hostname: "h", resident: new Set(Object.keys(resident)), models: new Set(["a", "b"]), maxInFlight: 4, itemsDone: 0, heldReported: 0, unreachable: false };
  const map = new Map<string, ActiveBatch>();
  // Waiting items are kept per model, as the coordinator's queue keeps them.
  const queue = new BatchQueue({ classify: (batchId, index) => ({ group: map.get(batchId)!.items[index]!.model, rank: 0 }) });
  for (const b of batches) {
    map.set(b.id, b);
    for (let i = 0; i < b.items.length; i++) queue.add(b.id, i, 0);
  }
  const engine = newEnginePolicy();
  if (defrag) engine.defrag = { busy: new Set(), evictions: [] };
  return { queue, batches: map, workers: [worker], ledger, attempts: new Attempts(ledger), estimates: new VramEstimates(), engine };
}

let tokens = 0;
const passInput = { nowMs: 1000, recoveringUntilMs: 0, policy: "best-fit" as const, newToken: (a: number) => `${a}.t${tokens++}` };

test("defrag engine - an item of another model that fits only without the idle resident weights gets an eviction", () => {
  const state = engineState({ a: 4 * GB }, [batchOf("b1", [{ model: "b", weights: 8 * GB, activation: 4 * GB }])]);
  const out = schedulePass(state, passInput);
  assert.equal(out.size, 0, "12 GB do not fit the 10 GB left beside a's weights");
  assert.deepEqual(state.engine!.defrag!.evictions.map((e) => [e.workerId, e.gpuIndex, e.models, e.forModel]), [["w1", 0, ["a"], "b"]]);
  // Off: the same pass decides nothing.
  const off = engineState({ a: 4 * GB }, [batchOf("b1", [{ model: "b", weights: 8 * GB, activation: 4 * GB }])], false);
  schedulePass(off, passInput);
  assert.equal(off.engine!.defrag, undefined);
});

test("defrag engine - no eviction on a report that still counts items already ended: it waits for the next report", () => {
  const state = engineState({ a: 4 * GB }, [batchOf("b1", [{ model: "b", weights: 8 * GB, activation: 4 * GB }])]);
  // A heartbeat sent just before an item ended arrives after its outcome: it lists a token the ledger no longer has.
  state.ledger.observe("w1", [{ index: 0, name: "g", totalBytes: 14 * GB, freeBytes: 8 * GB, source: "budget" }], ["1.ended"]);
  assert.equal(state.ledger.settled("w1"), false);
  schedulePass(state, passInput);
  assert.deepEqual(state.engine!.defrag!.evictions, []);
  // The next report shows what is really free: a's idle weights are what keeps b out.
  state.ledger.observe("w1", [{ index: 0, name: "g", totalBytes: 14 * GB, freeBytes: 10 * GB, source: "budget" }], []);
  assert.equal(state.ledger.settled("w1"), true);
  schedulePass(state, passInput);
  const now: Eviction[] = state.engine!.defrag!.evictions;
  assert.deepEqual(now.map((e) => e.models), [["a"]]);
});

test("defrag engine - an item of the resident model needs only its activations, and its weights stay counted after it", () => {
  const b = batchOf("b1", [{ model: "a", weights: 4 * GB, activation: 2 * GB }]);
  const state = engineState({ a: 4 * GB }, [b]);
  const out = schedulePass(state, passInput);
  const placed = out.get("w1") ?? [];
  assert.equal(placed.length, 1);
  assert.equal(state.ledger.available(gpuKey("w1", 0)), 8 * GB, "only the 2 GB of activations are reserved");
  assert.deepEqual(state.engine!.defrag!.evictions, []);
  // The worker counts the item (a report lists it), then it ends: its activations come back, a's weights stay.
  state.ledger.observe("w1", [{ index: 0, name: "g", totalBytes: 14 * GB, freeBytes: 8 * GB, source: "budget" }], [placed[0]!.lease.token]);
  state.attempts.end(placed[0]!.lease.token);
  assert.equal(state.ledger.available(gpuKey("w1", 0)), 10 * GB);
});

test("defrag engine - a model with a live attempt on the GPU is never proposed for eviction", () => {
  // a is resident and an item of it runs (placed by an earlier pass); b's item cannot fit.
  const state = engineState({ a: 4 * GB }, [batchOf("b0", [{ model: "a", weights: 4 * GB, activation: 2 * GB }])]);
  schedulePass(state, passInput);
  const blocked = batchOf("b1", [{ model: "b", weights: 8 * GB, activation: 4 * GB }]);
  (state.batches as Map<string, ActiveBatch>).set("b1", blocked);
  state.queue.add("b1", 0, 0);
  schedulePass(state, passInput);
  assert.equal(blocked.items[0]!.state, "pending", "b's item cannot fit beside a's weights and running item");
  assert.deepEqual(state.engine!.defrag!.evictions, []);
  // Once a's item has ended, a is idle: now it is the one to go.
  const running = [...(state.batches.get("b0")!.items)].map((i) => i.lease!.token);
  for (const token of running) state.attempts.end(token);
  schedulePass(state, passInput);
  const later: Eviction[] = state.engine!.defrag!.evictions;
  assert.deepEqual(later.map((e) => e.models), [["a"]]);
});

test("defrag - resident weights reported by a worker are bounded and must name its own GPUs", () => {
  const gpus = [{ index: 0, name: "g", vramTotalBytes: 10, vramFreeBytes: 5, source: "budget" }];
  assert.equal(residentWeightsProblem([{ model: "a", gpuIndex: 0, weightsBytes: 4 }], gpus), undefined);
  assert.match(residentWeightsProblem([{ model: "a", gpuIndex: 3, weightsBytes: 4 }], gpus)!, /resident_weights\[0\]\.gpu_index: 3 is not one of the reported GPUs/);
  assert.match(residentWeightsProblem([{ model: "a", gpuIndex: 0, weightsBytes: 11 }], gpus)!, /weights_bytes: 11 exceeds the GPU's total 10/);
  assert.match(residentWeightsProblem([{ model: "", gpuIndex: 0, weightsBytes: 1 }], gpus)!, /model: must be 1\.\.128 characters/);
  assert.match(residentWeightsProblem(Array.from({ length: 1025 }, () => ({ model: "a", gpuIndex: 0, weightsBytes: 1 })), gpus)!, /more than 1024 entries/);
});

// --- through the simulator: the real engine, ledger and attempts on a virtual clock ----------

/** One 24 GB GPU: 10 items of wide-a, then (once they are done) 10 of wide-b, which fits only without a's weights. */
const turns: SimWorkload = {
  name: "two-turns",
  gpus: [{ id: "g0", vramBytes: 24 * GB, speed: 1, slots: 5 }],
  models: DEFRAG_MODELS,
  batches: [
    { id: "first", arrivalMs: 0, priority: 0, items: Array.from({ length: 10 }, () => ({ model: "wide-a", workMs: 500 })) },
    { id: "second", arrivalMs: 10_000, priority: 0, items: Array.from({ length: 10 }, () => ({ model: "wide-b", workMs: 500 })) },
  ],
  loadBytesPerS: 5 * GB,
  oomMs: 10,
};

test("defrag sim - with resident weights, defragmentation places the items that would otherwise wait for ever", () => {
  for (const p of POLICIES) {
    const stuck = simulate(turns, p, { residency: true, maxVirtualMs: 600_000 });
    assert.equal(stuck.notEnded, 10, `${p.name}: without defrag wide-b should wait behind wide-a's idle weights`);
    assert.equal(stuck.evictions, 0);
    const r = simulate(turns, p, { residency: true, defrag: true, maxVirtualMs: 600_000 });
    assert.equal(r.notEnded, 0, `${p.name}: ${r.notEnded} items never ended`);
    assert.equal(r.evictions, 1, `${p.name}: one eviction (wide-a) makes room`);
    assert.equal(r.evictionsRefused, 0);
    assert.equal(r.overbooked, 0);
    assert.equal(r.failed, 0);
  }
});

test("defrag sim - never evicts a model with items running, never overbooks, every item ends once (fixed seeds, every policy)", () => {
  const workloads = [1, 2, 3].map((seed) => defragShape({ seed, quick: true }));
  // The other shapes too, in a world where weights stay resident: mixed model sizes share GPUs.
  for (const shape of SHAPES) workloads.push(shape({ seed: 7, quick: true }));
  let evictions = 0;
  for (const w of workloads) {
    for (const p of POLICIES) {
      const r = simulate(w, p, { residency: true, defrag: true, maxVirtualMs: 36_000_000 });
      const where = `${w.name}/${p.name}`;
      assert.equal(r.evictionsRefused, 0, `${where}: asked to evict a model with an item held`);
      assert.equal(r.overbooked, 0, `${where}: a GPU was overbooked`);
      assert.ok(r.peakVramUse <= 1, `${where}: peak VRAM use ${r.peakVramUse}`);
      assert.equal(r.notEnded, 0, `${where}: ${r.notEnded} items never ended`);
      assert.equal(r.doubleEnded, 0, `${where}: ${r.doubleEnded} items ended twice`);
      assert.equal(r.failed, 0, `${where}: ${r.failed} items failed`);
      evictions += r.evictions;
    }
  }
  assert.ok(evictions > 0, "no eviction happened at all: the test exercised nothing");
  // Off by default: the same runs without the options never evict.
  assert.equal(simulate(defragShape({ seed: 1, quick: true }), POLICIES[0]!).evictions, 0);
});
