// The affinity planner's time-sharing of rounded shares (coordinator/scheduler/affinity.ts,
// shareShort): a model left short of its fractional share by the rounding to whole GPUs may use
// only as many GPUs of over-planned models as its shortfall, not every one of them. Planner-level
// (a pure class) and through the simulator with fixed seeds (virtual time: deterministic).

import { test } from "node:test";
import assert from "node:assert/strict";
import { AffinityPlanner, LEND_WEIGHTS_FACTOR, lendRepays, type ModelBacklog, type PlannerGpu } from "../../coordinator/scheduler/affinity.js";
import { POLICIES, simulate } from "../../bench/sim/simulator.js";
import { fleetLoadsShape, fleetShape, speedsShape } from "../../bench/sim/workloads.js";

const GB = 1e9;

function gpus(n: number, loaded: (i: number) => string[] = () => []): PlannerGpu[] {
  return Array.from({ length: n }, (_, i) => ({ key: `w${i}/0`, totalBytes: 24 * GB, speed: 1, slots: 10, models: new Set(["a", "b"]), loaded: new Set(loaded(i)) }));
}

function backlog(workA: number, workB: number): Map<string, ModelBacklog> {
  const need = { waiting: 10, weightsBytes: 4 * GB, activationBytes: 2 * GB, loadMs: 0 };
  return new Map([
    ["a", { ...need, workMs: workA }],
    ["b", { ...need, workMs: workB }],
  ]);
}

const serving = (plan: ReadonlyMap<string, ReadonlySet<string>>, model: string) => [...plan.values()].filter((s) => s.has(model)).length;

test("affinity share - a model short by 0.4 GPU shares one GPU of the over-planned model, not all of them", () => {
  // Five alike GPUs, backlogs 3.4 : 1.6 → fluid shares a = 3.4, b = 1.6 GPUs, rounded to 3 and 2.
  const planner = new AffinityPlanner();
  planner.plan(gpus(5), backlog(3400, 1600));
  const plan = planner.currentPlan;
  assert.equal(plan.size, 5);
  const primaryA = [...plan.values()].filter((s) => s.has("a") && !s.has("b")).length;
  const onlyB = [...plan.values()].filter((s) => s.has("b") && !s.has("a")).length;
  const both = [...plan.values()].filter((s) => s.has("a") && s.has("b")).length;
  assert.equal(primaryA, 3, "a keeps its three whole GPUs");
  assert.equal(both, 1, "one of b's two GPUs is shared with a (a is short by 0.4, b over by 0.4)");
  assert.equal(onlyB, 1, "the other stays b's alone");
  assert.equal(serving(plan, "a"), 4);
});

test("affinity share - a GPU already holding the short model's weights is the one shared", () => {
  const planner = new AffinityPlanner();
  planner.plan(gpus(5), backlog(3400, 1600));
  const first = planner.currentPlan;
  const bOnly = [...first.entries()].filter(([, s]) => s.has("b") && !s.has("a")).map(([k]) => k);
  assert.equal(bOnly.length, 1);
  // Re-planned with the same backlog: every GPU keeps its model, and the b GPU that was not shared
  // now holds a's weights (an a item ran there), so it is the one shared.
  const holder = Number(bOnly[0]!.slice(1, bOnly[0]!.indexOf("/")));
  planner.plan(gpus(5, (i) => (i === holder ? ["a", "b"] : [])), backlog(3400, 1600));
  const shared = [...planner.currentPlan.entries()].filter(([, s]) => s.has("a") && s.has("b")).map(([k]) => k);
  assert.deepEqual(shared, [bOnly[0]]);
});

test("affinity share - shares that round exactly leave every GPU to one model", () => {
  const planner = new AffinityPlanner();
  planner.plan(gpus(4), backlog(3000, 1000));
  for (const s of planner.currentPlan.values()) assert.equal(s.size, 1);
});

test("affinity share - through the simulator: fleet shapes and mixed speeds gain (fixed seeds, default policy)", () => {
  // Before the bounded sharing (every over-planned GPU opened to every short model) these were
  // fleet-case 0.942 / 0.944, fleet-with-loads 0.911 / 0.922, mixed-speeds 0.898 / 0.895
  // (seeds 1 / 2, and 2 / 3 for mixed-speeds): the short models filled GPUs kept for models only
  // those GPUs hold, and small GPUs switched models for a few items.
  const policy = POLICIES.find((p) => p.name === "affinity+declared")!;
  const eff = (shape: typeof fleetShape, seed: number) => simulate(shape({ seed }), policy).efficiency;
  for (const seed of [1, 2]) {
    const f = eff(fleetShape, seed);
    assert.ok(f >= 0.955, `fleet-case seed ${seed}: ${f}`);
    // 0.963 / 0.954 before a GPU lent only a share that repays the short model's weights
    // (lendRepays); 0.942 / 0.951 since: seed 1 lost 0.02 where sim-30g no longer shares an
    // 80 GB GPU of sim-12g (docs/performance.md, sim across seeds: lending).
    const l = eff(fleetLoadsShape, seed);
    assert.ok(l >= 0.935, `fleet-with-loads seed ${seed}: ${l}`);
  }
  for (const seed of [2, 3]) {
    const m = eff(speedsShape, seed);
    assert.ok(m >= 0.91, `mixed-speeds seed ${seed}: ${m}`);
  }
});

test("affinity share - a GPU lends only a share that repays the room the short model's weights take", () => {
  assert.equal(LEND_WEIGHTS_FACTOR, 2);
  // 80 GB GPU planned for an 8 GB model (72 GB of room): a 20 GB model's weights take 0.28 of it.
  assert.equal(lendRepays(80 * GB, 8 * GB, 20 * GB, 0.46), false);
  assert.equal(lendRepays(80 * GB, 8 * GB, 20 * GB, 0.6), true);
  // A 4 GB model's weights take 0.05 of it: a 0.2 share repays them.
  assert.equal(lendRepays(80 * GB, 8 * GB, 4 * GB, 0.2), true);
  assert.equal(lendRepays(80 * GB, 8 * GB, 4 * GB, 0.1), false);
  // No room left after the lender's weights: never.
  assert.equal(lendRepays(8 * GB, 8 * GB, 1, 1), false);
});

test("affinity share - a short model whose weights cost more than its share is not lent a GPU; a light one is", () => {
  // Three 80 GB GPUs, backlogs 2.4 : 0.6 → a gets 2, b 1 (b over by 0.4, a short by 0.4).
  const big = (weightsGb: number) => {
    const planner = new AffinityPlanner();
    const fleet = Array.from({ length: 3 }, (_, i) => ({ key: `w${i}/0`, totalBytes: 80 * GB, speed: 1, slots: 100, models: new Set(["a", "b"]), loaded: new Set<string>() }));
    const need = (w: number) => ({ waiting: 10, weightsBytes: w * GB, activationBytes: 10 * GB, loadMs: 0 });
    planner.plan(fleet, new Map([["a", { ...need(weightsGb), workMs: 2400 }], ["b", { ...need(weightsGb), workMs: 600 }]]));
    return planner.currentPlan;
  };
  // 20 GB weights: 2 × 20 / 60 = 0.67 of b's GPU for a 0.4 share: not lent, every GPU one model.
  const heavy = big(20);
  assert.equal(serving(heavy, "a"), 2);
  assert.equal(serving(heavy, "b"), 1);
  for (const s of heavy.values()) assert.equal(s.size, 1);
  // 4 GB weights: 2 × 4 / 76 = 0.11 for a 0.4 share: b's GPU is shared with a.
  const light = big(4);
  assert.equal(serving(light, "a"), 3);
  assert.equal(serving(light, "b"), 1);
});
