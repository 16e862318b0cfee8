import { test } from "node:test";
import assert from "node:assert/strict";
import { DEFAULT_MAX_IN_FLIGHT_CAP, defaultMaxInFlight } from "../../worker/options.js";

test("worker options - default max in flight is 2 × threads where no served model batches", () => {
  assert.equal(defaultMaxInFlight(1, [], false), 2);
  assert.equal(defaultMaxInFlight(4, [undefined, 1], false), 8);
});

test("worker options - default max in flight holds two of the largest batch per thread where a model batches", () => {
  assert.equal(defaultMaxInFlight(1, [8], false), 16);
  assert.equal(defaultMaxInFlight(2, [1, 8, 4], false), 32);
  assert.equal(defaultMaxInFlight(64, [8], false), DEFAULT_MAX_IN_FLIGHT_CAP, "capped");
  assert.equal(defaultMaxInFlight(200, [8], false), 400, "never below 2 × threads");
});

test("worker options - simulated workers keep 2 × threads whatever the manifests say", () => {
  assert.equal(defaultMaxInFlight(4, [8], true), 8);
});
