// The scheduling engine through the discrete-event simulator (bench/sim/simulator.ts), which
// drives the real schedulePass, BatchQueue, Attempts, VramLedger, VramEstimates and ActiveBatch
// on a virtual clock. Fixed seeds: every run is deterministic.

import { test } from "node:test";
import assert from "node:assert/strict";
import { POLICIES, simulate, type SimPolicy, type SimWorkload } from "../../bench/sim/simulator.js";
import { FLEET_CASE_GPUS, SHAPES, SIM_MODELS, fleetShape, misestimateShape, tenantsShape } from "../../bench/sim/workloads.js";

const byName = (name: string): SimPolicy => POLICIES.find((p) => p.name === name)!;

test("scheduler sim - never overbooks a GPU, and every item ends exactly once (every shape, every policy)", () => {
  for (const shape of SHAPES) {
    const w = shape({ seed: 7, quick: true });
    for (const p of POLICIES) {
      const r = simulate(w, p);
      const where = `${w.name}/${p.name}`;
      assert.equal(r.overbooked, 0, `${where}: a GPU was overbooked`);
      assert.ok(r.peakVramUse <= 1, `${where}: peak VRAM use ${r.peakVramUse}`);
      assert.equal(r.notEnded, 0, `${where}: ${r.notEnded} items never ended`);
      assert.equal(r.doubleEnded, 0, `${where}: ${r.doubleEnded} items ended twice`);
      assert.equal(r.failed, 0, `${where}: ${r.failed} items failed`);
      assert.ok(r.efficiency > 0 && r.efficiency <= 1.0001, `${where}: efficiency ${r.efficiency} must be within (0, 1]`);
    }
  }
});

test("scheduler sim - an item that fits only on the largest GPU is placed even while small items flood the fleet", () => {
  const items = [
    ...Array.from({ length: 400 }, () => ({ model: "sim-6g", workMs: 500 })),
    { model: "sim-30g", workMs: 500 },
    ...Array.from({ length: 400 }, () => ({ model: "sim-6g", workMs: 500 })),
  ];
  const w: SimWorkload = { name: "one-large", gpus: FLEET_CASE_GPUS, models: SIM_MODELS, batches: [{ id: "b", arrivalMs: 0, priority: 0, items }], loadBytesPerS: Infinity, oomMs: 10 };
  for (const p of POLICIES) {
    const r = simulate(w, p);
    assert.equal(r.notEnded, 0, `${p.name}: ${r.notEnded} items never ended`);
    assert.equal(r.failed, 0, p.name);
  }
});

test("scheduler sim - batches share the fleet: equal batches finish together, a late small batch is not starved", () => {
  const mk = (id: string, n: number, at: number, priority = 0) => ({ id, arrivalMs: at, priority, items: Array.from({ length: n }, (_, i) => ({ model: "sim-6g", workMs: 400 + (i % 7) * 50 })) });
  const w: SimWorkload = {
    name: "fairness",
    gpus: FLEET_CASE_GPUS,
    models: SIM_MODELS,
    batches: [mk("a", 600, 0), mk("b", 600, 0), mk("late-small", 10, 1000), mk("urgent", 100, 1000, 4)],
    loadBytesPerS: Infinity,
    oomMs: 10,
  };
  for (const p of POLICIES) {
    const r = simulate(w, p);
    const t = new Map(r.batchTimes.map((b) => [b.id, b]));
    const a = t.get("a")!.doneMs;
    const b = t.get("b")!.doneMs;
    // Two equal batches submitted together end within 10% of each other.
    assert.ok(Math.abs(a - b) <= 0.1 * Math.max(a, b), `${p.name}: a ended at ${a}, b at ${b}`);
    // A 10-item batch arriving behind 1,200 items starts within one item's time of a free slot,
    // and ends long before the big ones.
    const small = t.get("late-small")!;
    assert.ok(small.firstStartMs - small.arrivalMs <= 1000, `${p.name}: the small batch waited ${small.firstStartMs - small.arrivalMs} ms to start`);
    assert.ok(small.doneMs < Math.min(a, b) / 2, `${p.name}: the small batch ended at ${small.doneMs}`);
    // A higher priority gets a larger share: the urgent batch ends before the two big ones.
    assert.ok(t.get("urgent")!.doneMs < Math.min(a, b), `${p.name}: urgent ended at ${t.get("urgent")!.doneMs}`);
  }
});

test("scheduler sim - priority is a larger share on a busy fleet: of two equal batches submitted together, priority 3 ends well before priority 0", () => {
  // Run times spread over 500 distinct values, so slots free one at a time (a busy fleet's passes).
  const mk = (id: string, priority: number) => ({ id, arrivalMs: 0, priority, items: Array.from({ length: 600 }, (_, i) => ({ model: "sim-6g", workMs: 400 + ((i * 7919 + priority * 131) % 500) })) });
  const w: SimWorkload = { name: "priority-share", gpus: FLEET_CASE_GPUS, models: SIM_MODELS, batches: [mk("low", 0), mk("high", 3)], loadBytesPerS: Infinity, oomMs: 10 };
  for (const p of POLICIES) {
    const r = simulate(w, p);
    const t = new Map(r.batchTimes.map((b) => [b.id, b.doneMs]));
    // Weights 4 : 1 give the high batch about 80 % of the slots while both wait: it ends near
    // 0.6 of the low one's end. Equal turns (one item each per freed slot) would end them together.
    assert.ok(t.get("high")! <= 0.75 * t.get("low")!, `${p.name}: high ended at ${t.get("high")} ms, low at ${t.get("low")} ms`);
  }
});

test("scheduler sim - many tenants with priorities: bounded wait for every batch's first item", () => {
  const w = tenantsShape({ seed: 11, quick: true });
  const r = simulate(w, byName("affinity+declared"));
  assert.equal(r.notEnded, 0);
  // No batch waits for its first item longer than a fifth of the whole run.
  const worst = Math.max(...r.batchTimes.map((b) => b.firstStartMs - b.arrivalMs));
  assert.ok(worst <= 0.2 * r.makespanMs, `a batch waited ${worst} ms of ${r.makespanMs} for its first item`);
});

test("scheduler sim - misestimated VRAM: out-of-memory attempts are retried with a learned estimate, never placement overbooking", () => {
  const w = misestimateShape({ seed: 3, quick: true });
  const r = simulate(w, byName("affinity+declared"));
  assert.ok(r.estimateOoms > 0, "the workload must provoke OUT_OF_MEMORY");
  // Only the first wave of each misestimated shape runs out of memory: the estimate learns.
  const misestimated = w.batches[0]!.items.filter((it) => it.useBytes !== undefined).length;
  assert.ok(r.estimateOoms <= misestimated / 3, `the estimate learns: ${r.estimateOoms} OOM attempts for ${misestimated} misestimated items`);
  assert.equal(r.overbooked, 0);
  assert.equal(r.notEnded, 0);
  assert.equal(r.failed, 0);
});

test("scheduler sim - model affinity beats greedy placement on the fleet case's shape, and runs are deterministic", () => {
  const w = fleetShape({ seed: 42 });
  const greedy = simulate(w, byName("greedy"));
  const affinity = simulate(w, byName("affinity"));
  const declared = simulate(w, byName("affinity+declared"));
  assert.ok(affinity.efficiency > greedy.efficiency + 0.05, `affinity ${affinity.efficiency} vs greedy ${greedy.efficiency}`);
  assert.ok(declared.efficiency >= 0.9, `affinity with durations reaches ${declared.efficiency} of the ideal`);
  const again = simulate(w, byName("affinity+declared"));
  assert.equal(again.makespanMs, declared.makespanMs);
  assert.equal(again.passes, declared.passes);
});

test("scheduler options - flags parse, bad values are refused with the option named", async () => {
  const { Command } = await import("commander");
  const { commonOptions, coordinatorFlags, coordinatorOptionsFrom, workerFlags, workerOptionsFrom } = await import("../../cli/server-commands.js");
  const coordinator = (args: string[]) => {
    const cmd = commonOptions(coordinatorFlags(new Command("coordinator"))).exitOverride();
    cmd.parse(args, { from: "user" });
    return coordinatorOptionsFrom(cmd.opts());
  };
  const worker = (args: string[]) => {
    const cmd = commonOptions(workerFlags(new Command("worker"))).exitOverride();
    cmd.parse(args, { from: "user" });
    return workerOptionsFrom(cmd.opts());
  };
  const d = coordinator([]);
  assert.equal(d.scheduler, "affinity");
  assert.equal(d.longestFirst, true);
  assert.equal(d.loadBytesPerS, 0);
  assert.equal(d.earliestFinish, true);
  const g = coordinator(["--scheduler", "greedy", "--longest-first", "off", "--load-bandwidth", "10GB", "--earliest-finish", "off"]);
  assert.equal(g.scheduler, "greedy");
  assert.equal(g.longestFirst, false);
  assert.equal(g.earliestFinish, false);
  assert.throws(() => coordinator(["--earliest-finish", "maybe"]), /--earliest-finish/);
  assert.equal(g.loadBytesPerS, 10e9);
  const w = worker(["--simulate", "--vram", "8GB", "--sim-speed", "2.5", "--sim-load-bandwidth", "4GB"]);
  assert.equal(w.simSpeed, 2.5);
  assert.equal(w.simLoadBytesPerS, 4e9);
  assert.throws(() => worker(["--simulate", "--vram", "8GB", "--sim-speed", "0"]), /--sim-speed/);
  assert.throws(() => worker(["--simulate", "--vram", "8GB", "--sim-speed", "fast"]), /--sim-speed/);
});

test("scheduler sim - ETA tracking scores every batch that reaches 25 % and leaves the schedule unchanged", () => {
  const w = tenantsShape({ seed: 5, quick: true });
  const p = byName("affinity+declared");
  const plain = simulate(w, p);
  const tracked = simulate(w, p, { trackEta: true });
  assert.deepEqual(tracked.batchTimes, plain.batchTimes);
  assert.equal(plain.etaErrors, undefined);
  const errors = tracked.etaErrors ?? [];
  // Batches of one item never have a sample at 25 % with something left; the others mostly do.
  assert.ok(errors.length > 0 && errors.length <= w.batches.length, `${errors.length} of ${w.batches.length} batches scored`);
  for (const e of errors) assert.ok(Number.isFinite(e) && e >= 0, `error ${e}`);
});
