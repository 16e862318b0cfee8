// The scale case's percentile from two reads of a Prometheus histogram (bench/cases/scale.ts).
import { test } from "node:test";
import assert from "node:assert/strict";
import { bucketPercentile } from "../../bench/cases/scale.js";

const hist = (pairs: [number, number][]) => new Map(pairs);

test("bucket percentile - the bucket edge of the percentile over the observations between two reads", () => {
  const before = hist([[0.001, 10], [0.01, 10], [Infinity, 10]]);
  const after = hist([[0.001, 48], [0.01, 50], [Infinity, 50]]);
  assert.deepEqual(bucketPercentile(before, after, 50), { le: 0.001, count: 40, above: false });
  assert.deepEqual(bucketPercentile(before, after, 99), { le: 0.01, count: 40, above: false });
  assert.equal(bucketPercentile(after, after, 99), undefined, "no observation in between");
});

test("bucket percentile - a percentile in the +Inf bucket is the largest finite edge, marked above (a results file cannot hold Infinity)", () => {
  const before = hist([[0.001, 0], [0.05, 0], [Infinity, 0]]);
  const after = hist([[0.001, 38], [0.05, 39], [Infinity, 40]]);
  const p99 = bucketPercentile(before, after, 99)!;
  assert.deepEqual(p99, { le: 0.05, count: 40, above: true });
  assert.ok(Number.isFinite(p99.le));
});
