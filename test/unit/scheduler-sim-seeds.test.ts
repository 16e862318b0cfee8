// The sim bench's targets hold across seeds, not at one (issue 9: "a policy tuned to one shape is
// not the goal"). Each test runs one (shape, seed) pair that missed a target on the default
// policy before its fix, in full (not --quick), through the real engine and the coordinator's
// own ETA path (BatchProgress), as bench/cases/sim.ts does. Deterministic: fixed seeds, virtual clock.

import { test } from "node:test";
import assert from "node:assert/strict";
import { POLICIES, simulate } from "../../bench/sim/simulator.js";
import { misestimateShape, speedsShape, tenantsShape } from "../../bench/sim/workloads.js";
import { DEFAULT_POLICY, simSeeds } from "../../bench/cases/sim.js";
import { ETA_TARGET } from "../../bench/lib/eta-accuracy.js";
import { percentile } from "../../bench/lib/stats.js";

const policy = POLICIES.find((p) => p.name === DEFAULT_POLICY)!;

test("scheduler sim seeds - tenants-priorities at seed 2: the ETA at 25 % is within 20 % of the remaining time (median over batches)", () => {
  // On main the median was 0.201: the expected arrivals went on at their full rate for as long as
  // the stream had been seen, then stopped, so a low-priority batch sampled just before the
  // stream really ended was given up to twice its remaining time (eta.ts: arrivals now fade with
  // the chance the stream still goes on).
  const r = simulate(tenantsShape({ seed: 2 }), policy, { trackEta: true });
  const errors = r.etaErrors ?? [];
  assert.ok(errors.length >= 100, `only ${errors.length} batches were scored`);
  const median = percentile(errors, 50);
  assert.ok(median <= ETA_TARGET, `median ETA error ${median.toFixed(3)} > ${ETA_TARGET}`);
  assert.equal(r.notEnded, 0);
});

test("scheduler sim seeds - tenants-priorities at seed 6: the ETA at 25 % is within 20 % of the remaining time (median over batches)", () => {
  // 0.228 before: the fleet-wide fluid let a batch whose items left were of the small models
  // share the slots of the 80 GB GPUs, which the affinity planner keeps for sim-30g (its backlog
  // holds them), so those batches ended about 30 % later than estimated. Each model is now a part
  // of the fleet in proportion to its backlog (eta.ts, splitConcurrency), as the planner splits it.
  const r = simulate(tenantsShape({ seed: 6 }), policy, { trackEta: true });
  const errors = r.etaErrors ?? [];
  assert.ok(errors.length >= 100, `only ${errors.length} batches were scored`);
  const median = percentile(errors, 50);
  assert.ok(median <= ETA_TARGET, `median ETA error ${median.toFixed(3)} > ${ETA_TARGET}`);
  assert.equal(r.notEnded, 0);
});

test("scheduler sim seeds - mixed-speeds at seed 8: the ETA at 25 % is within 20 % of the remaining time", () => {
  // 0.259 before: items that declare their run time (at speed 1) were predicted at speed 1 while
  // waiting, whatever the speeds of the GPUs that run them (0.5-2x here); they are now predicted at
  // the mean speed of the GPUs running such items (BatchProgress), and the simulator's ETA
  // predictor learns the GPU types' speeds as the coordinator's does (observeSpeed).
  const r = simulate(speedsShape({ seed: 8 }), policy, { trackEta: true });
  const errors = r.etaErrors ?? [];
  assert.equal(errors.length, 1, "one batch, scored once");
  assert.ok(errors[0]! <= ETA_TARGET, `ETA error ${errors[0]!.toFixed(3)} > ${ETA_TARGET}`);
  assert.equal(r.notEnded, 0);
});

// misestimated-vram misses 0.90 at seed 3 (0.894) and five other seeds: a known miss, written up
// in docs/performance.md (sim: across seeds), not a test that cannot fail. What must hold there:
test("scheduler sim seeds - misestimated-vram at seed 3: OOMs are learnt without overbooking, and every item ends", () => {
  const r = simulate(misestimateShape({ seed: 3 }), policy);
  assert.equal(r.overbooked, 0);
  assert.equal(r.notEnded, 0);
  assert.ok(r.efficiency > 0.85, `efficiency ${r.efficiency.toFixed(3)} (0.894 when written)`);
});

test("scheduler sim seeds - the bench's seeds are the run's seed and two more, all distinct", () => {
  const seeds = simSeeds(42);
  assert.equal(seeds[0], 42);
  assert.equal(new Set(seeds).size, seeds.length);
  assert.ok(seeds.length >= 3);
});
