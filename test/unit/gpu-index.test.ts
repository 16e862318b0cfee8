// The GPU index (coordinator/scheduler/gpu-index.ts) must decide exactly as the fleet scan of
// placeItem (coordinator/placement.ts) does: the same GPU, the same bytes, or nothing, on any
// fleet, after any sequence of reports, reservations, releases, slot and plan changes. The
// property drives both from one random history and compares every decision; the simulator test
// compares whole runs of the engine with the index and with the scan.

import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { placeItem, type PlaceableWorker } from "../../coordinator/placement.js";
import { allowsPlanned, spillablePlanned } from "../../coordinator/scheduler/affinity.js";
import { GpuIndex } from "../../coordinator/scheduler/gpu-index.js";
import { VramLedger, gpuKey } from "../../coordinator/vram-ledger.js";
import { POLICIES, simulate } from "../../bench/sim/simulator.js";
import { SHAPES } from "../../bench/sim/workloads.js";

const GB = 1e9;
const MODELS = ["a", "b", "c"];

interface FleetWorker {
  id: string;
  gpus: { total: number; freeShare: number }[];
  models: Set<string>;
  resident: Set<string>;
  slots: number;
  ready: boolean;
}

// Mostly a few sizes and fill levels, so that GPUs tie often (the tie-break is where an index goes wrong).
const share = fc.oneof({ weight: 3, arbitrary: fc.constantFrom(0, 50, 100) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 100 }) });
const workerArb = fc.record({
  gpus: fc.array(fc.record({ total: fc.oneof({ weight: 3, arbitrary: fc.constantFrom(24, 80) }, { weight: 1, arbitrary: fc.constantFrom(8, 16, 48) }), freeShare: share }), { minLength: 1, maxLength: 3 }),
  models: fc.subarray(MODELS, { minLength: 1 }),
  resident: fc.subarray(MODELS),
  slots: fc.integer({ min: 0, max: 4 }),
  ready: fc.boolean(),
});

const modelArb = fc.constantFrom(...MODELS);
const opArb = fc.oneof(
  { weight: 6, arbitrary: fc.record({ kind: fc.constant("place" as const), model: modelArb, act: fc.integer({ min: 1, max: 8 }), weights: fc.constantFrom(0, 4, 8, 20), odd: fc.oneof({ weight: 3, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 999 }) }), spread: fc.boolean(), filter: fc.constantFrom("none", "allowed", "spill"), planned: fc.subarray(MODELS), waiting: fc.subarray(MODELS) }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant("release" as const), pick: fc.nat() }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant("report" as const), worker: fc.nat(), shares: fc.array(share, { minLength: 3, maxLength: 3 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant("pass" as const) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant("plan" as const), entries: fc.array(fc.tuple(fc.nat(), fc.nat(), fc.subarray(MODELS, { minLength: 1 })), { maxLength: 8 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("resident" as const), worker: fc.nat(), set: fc.subarray(MODELS) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("ready" as const), worker: fc.nat(), ready: fc.boolean() }) },
  // Resident weights a worker keeps counted (defragmentation's Heartbeat.resident_weights), told to the ledger between passes.
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("weights" as const), worker: fc.nat(), list: fc.array(fc.record({ gpu: fc.nat(), model: modelArb }), { maxLength: 3 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("remove" as const), worker: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("rejoin" as const), worker: workerArb, at: fc.nat() }) },
);

test("gpu index - decides exactly as the fleet scan on random fleets and histories (fast-check)", () => {
  let counter = 0;
  fc.assert(
    fc.property(fc.array(workerArb, { minLength: 1, maxLength: 10 }), fc.array(opArb, { minLength: 1, maxLength: 80 }), (specs, ops) => {
      const ledger = new VramLedger();
      const index = new GpuIndex(ledger);
      const fleet: FleetWorker[] = [];
      const leases: { token: string; workerId: string }[] = [];
      let plan = new Map<string, Set<string>>();
      const report = (w: FleetWorker, shares?: number[]) => {
        const reports = w.gpus.map((g, i) => ({ index: i, name: "t", totalBytes: g.total * GB, freeBytes: Math.round((g.total * GB * (shares?.[i] ?? g.freeShare)) / 100), source: "budget" }));
        ledger.observe(w.id, reports, leases.filter((l) => l.workerId === w.id).map((l) => l.token));
      };
      const add = (spec: (typeof specs)[number], at = fleet.length) => {
        const w: FleetWorker = { id: `w${counter++}`, gpus: spec.gpus, models: new Set(spec.models), resident: new Set(spec.resident), slots: spec.slots, ready: spec.ready };
        fleet.splice(at, 0, w);
        report(w);
      };
      for (const s of specs) add(s);
      const open = (id: string) => leases.filter((l) => l.workerId === id).length;
      // What the engine's pass sees: every worker in the fleet's order, the ready ones with their free slots.
      let placeable: PlaceableWorker[] = [];
      const pass = () => {
        index.beginSync();
        placeable = [];
        for (const w of fleet) {
          const free = w.ready ? w.slots - open(w.id) : 0;
          index.syncWorker(w.id, free, w.models, w.resident);
          if (w.ready) placeable.push({ id: w.id, slotsFree: free, models: w.models, resident: w.resident });
        }
        index.endSync();
        index.usePlan(plan);
      };
      pass();
      for (const op of ops) {
        const pick = <T>(list: T[], n: number): T | undefined => (list.length ? list[n % list.length] : undefined);
        switch (op.kind) {
          case "place": {
            const need = { model: op.model, activationBytes: op.act * GB + op.odd, weightsBytes: op.weights * GB };
            const policy = op.spread ? "spread" : "best-fit";
            const planned = new Set(op.planned);
            const waiting = (m: string) => (op.waiting.includes(m) ? 1 : 0);
            const accept = op.filter === "allowed" ? (p: ReadonlySet<string> | undefined) => allowsPlanned(p, op.model, planned) : op.filter === "spill" ? (p: ReadonlySet<string> | undefined) => spillablePlanned(p, waiting) : undefined;
            const filter = accept ? (key: string) => accept(plan.get(key)) : undefined;
            const scanned = placeItem(need, placeable, ledger, policy, filter);
            const indexed = index.place(need, policy, accept);
            assert.deepEqual(indexed, scanned);
            // With a per-GPU filter as packing's (by GPU size), the
            // index walks its lists past the refused GPUs and still decides as the scan (24 and 48 GB refused).
            const sized = (key: string) => Math.round((ledger.totalBytes(key) ?? 0) / GB) % 3 !== 0;
            assert.deepEqual(
              index.place(need, policy, accept, (g) => sized(g.key)),
              placeItem(need, placeable, ledger, policy, (key) => sized(key) && (filter?.(key) ?? true)),
            );
            if (scanned) {
              const token = `t${counter++}`;
              ledger.reserve(token, scanned.gpuKey, scanned.bytes, op.model, need.activationBytes, need.weightsBytes);
              leases.push({ token, workerId: scanned.workerId });
              const pw = placeable.find((p) => p.id === scanned.workerId)!;
              pw.slotsFree--;
              index.setSlots(pw.id, pw.slotsFree);
            }
            break;
          }
          case "release": {
            const l = pick(leases, op.pick);
            if (l) {
              leases.splice(leases.indexOf(l), 1);
              ledger.release(l.token);
            }
            break;
          }
          case "report": {
            const w = pick(fleet, op.worker);
            if (w) report(w, op.shares);
            break;
          }
          case "pass":
            pass();
            break;
          case "plan": {
            plan = new Map();
            for (const [wi, gi, models] of op.entries) {
              const w = pick(fleet, wi);
              if (w) plan.set(gpuKey(w.id, gi % w.gpus.length), new Set(models));
            }
            pass();
            break;
          }
          case "resident": {
            const w = pick(fleet, op.worker);
            if (w) w.resident = new Set(op.set);
            pass();
            break;
          }
          case "weights": {
            const w = pick(fleet, op.worker);
            if (w) ledger.observeResident(w.id, op.list.map((r) => ({ gpuIndex: r.gpu % w.gpus.length, model: r.model, weightsBytes: 4 * GB })));
            break;
          }
          case "ready": {
            const w = pick(fleet, op.worker);
            if (w) w.ready = op.ready;
            pass();
            break;
          }
          case "remove": {
            const w = pick(fleet, op.worker);
            if (w) {
              fleet.splice(fleet.indexOf(w), 1);
              for (const l of leases.filter((x) => x.workerId === w.id)) leases.splice(leases.indexOf(l), 1);
              ledger.removeWorker(w.id);
            }
            pass();
            break;
          }
          case "rejoin": {
            add(op.worker, op.at % (fleet.length + 1));
            pass();
            break;
          }
        }
      }
    }),
    { numRuns: 1000, seed: 20261130 },
  );
});

test("gpu index - equal GPUs in different plan groups go to the worker met first in the fleet", () => {
  const ledger = new VramLedger();
  const index = new GpuIndex(ledger);
  const models = new Set(["a"]);
  for (const id of ["w1", "w2"]) ledger.observe(id, [{ index: 0, name: "t", totalBytes: 24 * GB, freeBytes: 24 * GB, source: "budget" }], []);
  const pass = (plan: Map<string, Set<string>>) => {
    index.beginSync();
    for (const id of ["w1", "w2"]) index.syncWorker(id, 1, models, new Set());
    index.endSync();
    index.usePlan(plan);
  };
  const need = { model: "a", activationBytes: 2 * GB, weightsBytes: 4 * GB };
  // The first plan makes w1's group the older one; the second swaps them, so w2's group is met first.
  pass(new Map([["w1/0", new Set(["a"])]]));
  assert.equal(index.place(need, "best-fit")?.workerId, "w1");
  pass(new Map([["w2/0", new Set(["a"])]]));
  assert.equal(index.place(need, "best-fit")?.workerId, "w1");
  assert.equal(index.place(need, "spread")?.workerId, "w1");
  assert.equal(index.place(need, "best-fit", (p) => p !== undefined)?.workerId, "w2");
});

test("gpu index - the simulator's runs are identical with the index and with the scan (every shape, every policy)", () => {
  for (const shape of SHAPES) {
    const w = shape({ seed: 11, quick: true });
    for (const p of POLICIES) {
      const a = simulate(w, p);
      const b = simulate(w, p, { scan: true });
      const where = `${w.name}/${p.name}`;
      assert.equal(a.makespanMs, b.makespanMs, where);
      assert.equal(a.passes, b.passes, where);
      assert.equal(a.loads, b.loads, where);
      assert.equal(a.estimateOoms, b.estimateOoms, where);
      assert.equal(a.refusedByWorker, b.refusedByWorker, where);
      assert.deepEqual(a.batchTimes, b.batchTimes, where);
      assert.deepEqual(a.gpuUse, b.gpuUse, where);
    }
  }
});
