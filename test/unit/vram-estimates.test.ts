import { test } from "node:test";
import assert from "node:assert/strict";
import { VramEstimates, shapeKey } from "../../coordinator/vram-estimates.js";

test("vram estimates - the measured need replaces the manifest's once known, per shape", () => {
  const e = new VramEstimates();
  const k = shapeKey("m", { width: 512, height: 512 });
  assert.equal(e.activation(k, 1000), 1000);
  e.observe(k, 400);
  assert.equal(e.activation(k, 1000), 440);
  e.observe(k, 300); // a smaller run does not lower the peak
  assert.equal(e.activation(k, 1000), 440);
  assert.equal(e.activation(shapeKey("m", { width: 64, height: 64 }), 1000), 1000);
});

test("vram estimates - OUT_OF_MEMORY raises the estimate above what was reserved", () => {
  const e = new VramEstimates();
  const k = shapeKey("m", {});
  assert.equal(e.raiseAfterOom(k, 1000), 1500);
  assert.equal(e.activation(k, 1000), 1500);
  assert.equal(e.raiseAfterOom(k, 1500), 2250);
});
