import { test } from "node:test";
import assert from "node:assert/strict";
import { VramEstimates, shapeKey } from "../../coordinator/vram-estimates.js";

test("vram estimates - the measured need replaces the manifest's once known, per shape", () => {
  const e = new VramEstimates();
  const k = shapeKey("m", { width: 512, height: 512 });
  assert.equal(e.activation(k, 1000), 1000);
  e.observe(k, 400);
  assert.equal(e.activation(k, 1000), 400, "no margin until a measurement proved too low");
  e.observe(k, 300); // a smaller run does not lower the peak
  assert.equal(e.activation(k, 1000), 400);
  assert.equal(e.activation(shapeKey("m", { width: 64, height: 64 }), 1000), 1000);
});

test("vram estimates - OUT_OF_MEMORY raises the estimate above what was reserved", () => {
  const e = new VramEstimates();
  const k = shapeKey("m", {});
  assert.equal(e.raiseAfterOom(k, 1000), 1500);
  assert.equal(e.activation(k, 1000), 1500);
  assert.equal(e.raiseAfterOom(k, 1500), 2250);
});

test("vram estimates - an OUT_OF_MEMORY with the need reported raises the estimate to it, and a measurement brings a guess down", () => {
  const e = new VramEstimates();
  const k = shapeKey("m", { width: 768, height: 768 });
  // Reserved 4 GB (the manifest's), the worker says the item needed 6.4 GB: reserve that next, not 6.
  assert.equal(e.raiseAfterOom(k, 4000, 6400), 6400);
  assert.equal(e.activation(k, 4000), 6400);
  // A need below what was reserved says nothing new: the guess by half.
  const g = shapeKey("g", {});
  assert.equal(e.raiseAfterOom(g, 1000, 800), 1500);
  e.observe(g, 1100);
  assert.equal(e.activation(g, 1000), 1100, "the measured peak replaces the raised guess");
});

test("vram estimates - the margin above measured peaks grows when a shape runs out of memory with its peak reserved", () => {
  const e = new VramEstimates();
  const k = shapeKey("m", {});
  e.observe(k, 1000);
  assert.equal(e.marginPercent(k), 0);
  // Ran out with the measured peak reserved: the measurements read low.
  e.raiseAfterOom(k, 1000);
  assert.equal(e.marginPercent(k), 10);
  e.observe(k, 1000);
  assert.equal(e.activation(k, 0), 1100, "the peak with the learned margin");
  // An OOM below the peak (an estimate not learned yet when it was placed) does not grow it.
  e.raiseAfterOom(k, 500);
  assert.equal(e.marginPercent(k), 10);
  for (let i = 0; i < 10; i++) e.raiseAfterOom(k, 5000);
  assert.equal(e.marginPercent(k), 50, "capped");
});
