// An OUT_OF_MEMORY that says what the item needed: the --simulate worker's backend reports it
// (worker/simulated-backend.ts), the coordinator and the simulator learn from it by one rule
// (vram-estimates.ts, learnFromOutcome), and the retry reserves it, so an item runs out of
// memory once, not once per guess by half.

import { test } from "node:test";
import assert from "node:assert/strict";
import { InferenceError } from "../../worker/inference/backend.js";
import { SimulatedBackend } from "../../worker/simulated-backend.js";
import { VramEstimates, learnFromOutcome, shapeKey } from "../../coordinator/vram-estimates.js";
import { POLICIES, simulate } from "../../bench/sim/simulator.js";
import { misestimateShape } from "../../bench/sim/workloads.js";

const GB = 1e9;
const declared = POLICIES.find((p) => p.name === "affinity+declared")!;

test("oom need - the simulated backend fails at once with what the item needed, not after its work", { timeout: 10_000 }, async () => {
  const backend = new SimulatedBackend();
  const signal = new AbortController().signal;
  // An hour of work: the test's deadline fails it if the backend ran the work before failing.
  const job = { id: "t.1", model: "sim-12g", params: { work_ms: 3_600_000, use_bytes: 6.4 * GB }, batchId: "b", index: 0, vramBytes: 4 * GB };
  await assert.rejects(backend.run(job, signal), (err: unknown) => {
    assert.ok(err instanceof InferenceError);
    assert.equal(err.code, "OUT_OF_MEMORY");
    assert.equal(err.retryable, true);
    assert.equal(err.neededBytes, 6.4 * GB, "the need is reported");
    return true;
  });
  // With the need reserved it runs and reports its peak.
  const ok = await backend.run({ ...job, params: { work_ms: 1, use_bytes: 6.4 * GB }, vramBytes: 6.4 * GB }, signal);
  assert.equal(ok.peakBytes, 6.4 * GB);
});

test("oom need - learnFromOutcome: a counted OOM raises to the need, a success's peak is observed, an ignored outcome teaches nothing", () => {
  const e = new VramEstimates();
  const k = shapeKey("sim-12g", { width: 768, height: 768 });
  const base = { counted: true, oom: true, vramUsedBytes: 6.4 * GB, reservedBytes: 4 * GB, manifestBytes: 4 * GB };
  assert.equal(learnFromOutcome(e, k, { ...base, counted: false }), undefined);
  assert.equal(e.activation(k, 4 * GB), 4 * GB, "an ignored outcome's figure is nobody's");
  assert.equal(learnFromOutcome(e, k, base), 6.4 * GB);
  assert.equal(e.activation(k, 4 * GB), 6.4 * GB);
  // Without a reported need (a real ONNX backend): by half of what was reserved (here the manifest's, not the current attempt).
  const k2 = shapeKey("sim-12g", { width: 512, height: 512 });
  assert.equal(learnFromOutcome(e, k2, { ...base, vramUsedBytes: 0, reservedBytes: undefined }), 6 * GB);
  // A success observes its measured peak: the guess comes down to it.
  assert.equal(learnFromOutcome(e, k2, { ...base, oom: false, vramUsedBytes: 5.2 * GB }), undefined);
  assert.equal(e.activation(k2, 4 * GB), 5.2 * GB);
});

test("oom need - in the simulator an item runs out of memory once when the need is reported, again and again when it is not", () => {
  const w = misestimateShape({ seed: 42, quick: true });
  const reported = simulate(w, declared);
  const unknown = simulate(w, declared, { oomNeedUnknown: true });
  for (const r of [reported, unknown]) {
    assert.ok(r.estimateOoms > 0, "the workload must provoke OUT_OF_MEMORY");
    assert.equal(r.notEnded, 0);
    assert.equal(r.failed, 0);
    assert.equal(r.overbooked, 0);
  }
  // Reported: the retry reserves what the item needed (6.4 GB, 5.2 GB) and succeeds.
  assert.equal(reported.repeatOoms, 0, `${reported.repeatOoms} items ran out of memory twice`);
  // Unknown: 4 GB → 6 GB by half is still short of 6.4 GB, so the 768-wide items run out of memory again.
  assert.ok(unknown.repeatOoms > 0, "without the need, a guess by half runs out of memory again");
});
