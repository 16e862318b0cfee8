import assert from "node:assert/strict";
import { test } from "node:test";
import { InFlightLimit } from "../../worker/in-flight-limit.js";

test("in-flight limit - before any item the worker reports the default", () => {
  const l = new InFlightLimit(1, 16);
  assert.equal(l.limit(), 16);
  assert.equal(l.largestBatch(), 0);
});

test("in-flight limit - items that run alone hold two per thread; items that batch by 8 hold two batches per thread", () => {
  const l = new InFlightLimit(2, 32);
  assert.equal(l.follow([1, 1, 1]), true);
  assert.equal(l.limit(), 4);
  assert.equal(l.follow([1, 8, 1]), true, "one held item that batches by 8 is enough");
  assert.equal(l.limit(), 32);
  assert.equal(l.follow([4]), true);
  assert.equal(l.limit(), 16);
  assert.equal(l.follow([4, 4]), false, "the same figure again is no change");
});

test("in-flight limit - nothing held keeps the last figure", () => {
  const l = new InFlightLimit(1, 16);
  l.follow([1]);
  assert.equal(l.limit(), 2);
  assert.equal(l.follow([]), false);
  assert.equal(l.limit(), 2);
  assert.equal(l.largestBatch(), 1);
});

test("in-flight limit - never above the default nor below 2 × threads (or the default when that is smaller)", () => {
  const l = new InFlightLimit(3, 20);
  l.follow([100]);
  assert.equal(l.limit(), 20);
  l.follow([1]);
  assert.equal(l.limit(), 6);
  const small = new InFlightLimit(4, 5); // an odd default below 2 × threads stays the ceiling
  small.follow([1]);
  assert.equal(small.limit(), 5);
});
