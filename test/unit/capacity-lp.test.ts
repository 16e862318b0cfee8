import { describe, test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { capacityRate, maximize, type CapacityPair } from "../../coordinator/scheduler/lp.js";
import { capacityBound } from "../../bench/lib/ideal.js";

// The capacity LP (coordinator/scheduler/lp.ts) is what the affinity planner splits GPUs by, what
// the ETA bounds a lone batch's end by, and the bench's lower bound on makespan: checked here on
// problems whose answer is known by hand, and on random fleets against its own constraints.

const GiB = 2 ** 30;

describe("capacity LP - the shared builder", () => {
  test("capacity LP - one model on one class: λ is capacity × rate / work", { timeout: 10_000 }, () => {
    const { lambda, share } = capacityRate([10], [{ model: 0, cls: 0, rate: 4 }], [2]);
    assert.ok(Math.abs(lambda - (2 * 4) / 10) < 1e-9, `λ ${lambda}`);
    assert.ok(Math.abs(share[0]! - 2) < 1e-9, "the whole class serves the model");
  });

  test("capacity LP - two models that only one class can each hold get their own class; one both can hold is split to end together", { timeout: 10_000 }, () => {
    // Model 0 runs only on class 0, model 1 on both; one GPU per class, rate 1 everywhere; work 1
    // and 3. Each model alone on its own class would give λ = 1/3; model 1 borrowing half of class
    // 0 gives u00 = λ, u10 = 1 − λ, u11 = 1 with 2 − λ ≥ 3λ: λ = 0.5.
    const pairs: CapacityPair[] = [
      { model: 0, cls: 0, rate: 1 },
      { model: 1, cls: 0, rate: 1 },
      { model: 1, cls: 1, rate: 1 },
    ];
    const { lambda, share } = capacityRate([1, 3], pairs, [1, 1]);
    assert.ok(Math.abs(lambda - 0.5) < 1e-9, `λ ${lambda}`);
    assert.ok(Math.abs(share[0]! - 0.5) < 1e-9 && Math.abs(share[1]! - 0.5) < 1e-9 && Math.abs(share[2]! - 1) < 1e-9, `shares ${share}`);
  });

  test("capacity LP - a model with work but no pair is left out; no work at all is unbounded", { timeout: 10_000 }, () => {
    const { lambda } = capacityRate([5, 7], [{ model: 0, cls: 0, rate: 1 }], [1]);
    assert.ok(Math.abs(lambda - 0.2) < 1e-9, "only model 0 binds");
    assert.throws(() => capacityRate([0], [], [1]), /unbounded/);
  });

  test("capacity LP - on random fleets the shares keep every constraint and λ matches the hand-built program", { timeout: 30_000 }, () => {
    fc.assert(
      fc.property(
        fc.array(fc.double({ min: 0.1, max: 100, noNaN: true }), { minLength: 1, maxLength: 4 }),
        fc.array(fc.integer({ min: 1, max: 8 }), { minLength: 1, maxLength: 4 }),
        fc.array(fc.tuple(fc.nat(3), fc.nat(3), fc.double({ min: 0.5, max: 20, noNaN: true })), { minLength: 1, maxLength: 10 }),
        (work, capacity, raw) => {
          const pairs = raw.filter(([m, c]) => m < work.length && c < capacity.length).map(([model, cls, rate]) => ({ model, cls, rate }));
          if (pairs.length === 0) return;
          const { lambda, share } = capacityRate(work, pairs, capacity);
          assert.ok(lambda > 0);
          capacity.forEach((cap, c) => assert.ok(pairs.reduce((s, p, k) => s + (p.cls === c ? share[k]! : 0), 0) <= cap + 1e-6, "a class gives at most its capacity"));
          work.forEach((w, m) => {
            if (!pairs.some((p) => p.model === m)) return;
            assert.ok(pairs.reduce((s, p, k) => s + (p.model === m ? p.rate * share[k]! : 0), 0) >= lambda * w - 1e-6, "every served model's work is done at rate λ");
          });
          // The same program written out by hand.
          const n = 1 + pairs.length;
          const A: number[][] = [];
          const b: number[] = [];
          work.forEach((w, m) => {
            if (!pairs.some((p) => p.model === m)) return;
            A.push([w, ...pairs.map((p) => (p.model === m ? -p.rate : 0))]);
            b.push(0);
          });
          capacity.forEach((cap, c) => {
            A.push([0, ...pairs.map((p) => (p.cls === c ? 1 : 0))]);
            b.push(cap);
          });
          const direct = maximize([1, ...new Array<number>(n - 1).fill(0)], A, b).value;
          assert.ok(Math.abs(direct - lambda) <= 1e-9 * Math.max(1, direct));
        },
      ),
      { numRuns: 300, seed: 42 },
    );
  });

  test("capacity LP - the bench's makespan bound: two identical GPUs halve one model's work; a GPU too small for a model takes none of it", { timeout: 10_000 }, () => {
    const gpus = [
      { id: "a", vramBytes: 24 * GiB },
      { id: "b", vramBytes: 24 * GiB },
    ];
    const model = { name: "m", weightsBytes: 4 * GiB, activationBytes: 5 * GiB }; // 4 items per GPU
    // 80 item-seconds on 2 × 4 slots: 10 s.
    assert.ok(Math.abs(capacityBound(gpus, [model], new Map([["m", 80]])) - 10) < 1e-9);
    const big = { name: "big", weightsBytes: 20 * GiB, activationBytes: 10 * GiB }; // fits only an 80 GB GPU
    assert.throws(() => capacityBound(gpus, [big], new Map([["big", 1]])), /no GPU can hold model big/);
    // With an 80 GB GPU (6 items of big), big runs there alone: 60 item-seconds → 10 s.
    assert.ok(Math.abs(capacityBound([...gpus, { id: "c", vramBytes: 80 * GiB }], [model, big], new Map([["big", 60], ["m", 0]])) - 10) < 1e-9);
  });
});
