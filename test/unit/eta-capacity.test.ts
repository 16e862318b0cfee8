// The capacity bound of a batch's ETA (coordinator/scheduler/eta-capacity.ts): the fluid horizon
// of the work left per model on the fleet's VRAM, both models' claims on the same GPUs at once.
import { test } from "node:test";
import assert from "node:assert/strict";
import { capacityHorizonMs } from "../../coordinator/scheduler/eta-capacity.js";

const GB = 1e9;
const g80 = (key: string, speed = 1) => ({ key, totalBytes: 80 * GB, speed });
const big = { model: "big", weightsBytes: 20 * GB, activationBytes: 10 * GB }; // 6 at once on 80 GB
const small = { model: "small", weightsBytes: 8 * GB, activationBytes: 4 * GB }; // 18 at once on 80 GB

const near = (a: number | undefined, b: number) => assert.ok(a !== undefined && Math.abs(a - b) < 1e-6 * b, `${a} != ${b}`);

test("eta capacity - one model: its work over the items the GPUs hold at once", () => {
  near(capacityHorizonMs([g80("a"), g80("b")], [{ ...big, workMs: 60_000 }]), 5_000);
});

test("eta capacity - two models that need the same GPUs: their GPU time adds up", () => {
  // big needs 60,000 / 6 = 10,000 GPU-ms, small 180,000 / 18 = 10,000: two GPUs take 10 s. Each
  // model alone on both GPUs would end in 5 s: the bound the per-model pools gave.
  near(capacityHorizonMs([g80("a"), g80("b")], [{ ...big, workMs: 60_000 }, { ...small, workMs: 180_000 }]), 10_000);
});

test("eta capacity - a GPU twice as fast counts twice; a GPU too small for a model is not given it", () => {
  near(capacityHorizonMs([g80("a", 2)], [{ ...big, workMs: 60_000 }]), 5_000);
  // The 16 GB GPU holds 2 small items (8 GB room / 4 GB) and no big one: big stays on the 80 GB GPU.
  near(capacityHorizonMs([g80("a"), { key: "s", totalBytes: 16 * GB, speed: 1 }], [{ ...big, workMs: 60_000 }]), 10_000);
});

test("eta capacity - no work, no GPU, or a model no GPU holds: no bound", () => {
  assert.equal(capacityHorizonMs([g80("a")], [{ ...big, workMs: 0 }]), undefined);
  assert.equal(capacityHorizonMs([], [{ ...big, workMs: 1000 }]), undefined);
  assert.equal(capacityHorizonMs([{ key: "s", totalBytes: 16 * GB, speed: 1 }], [{ ...big, workMs: 1000 }]), undefined);
});

test("eta capacity - a model without activations binds nothing; GPUs of one size are one class whatever their speeds", () => {
  const free = { model: "free", weightsBytes: 0, activationBytes: 0 };
  assert.equal(capacityHorizonMs([g80("a")], [{ ...free, workMs: 1000 }]), undefined);
  near(capacityHorizonMs([g80("a")], [{ ...free, workMs: 1000 }, { ...big, workMs: 60_000 }]), 10_000);
  // A thousand GPUs of three sizes: the same bound as their sizes' totals (speeds 1 and 3 add up to 2 per pair).
  const fleet = Array.from({ length: 1000 }, (_, i) => ({ key: `g${i}`, totalBytes: [16, 24, 80][i % 3]! * GB, speed: i % 2 === 0 ? 1 : 3 }));
  const h = capacityHorizonMs(fleet, [{ ...big, workMs: 3_000_000 }]);
  // big fits the 80 GB GPUs only (333 of them, 6 items each): their speeds, summed, are the class's.
  const speeds = fleet.filter((g) => g.totalBytes === 80 * GB).reduce((s, g) => s + g.speed, 0);
  assert.equal(speeds, 167 + 3 * 166);
  near(h, 3_000_000 / (6 * speeds));
});
