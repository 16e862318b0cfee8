import { test } from "node:test";
import assert from "node:assert/strict";
import { decodeParamsJson, encodeParamsJson } from "../../shared/params-wire.js";
import { AssignedItem } from "../../proto/gen/shoal/v1/wire.js";
import { Struct } from "../../proto/gen/google/protobuf/struct.js";

test("params wire - validated params round-trip exactly through params_json, as through a Struct", () => {
  const cases: Record<string, unknown>[] = [
    {},
    { prompt: "ünïcode ✓ \"q\" \\ \n\u2028 😀", width: 512, height: 768, steps: 4, seed: 2 ** 53 - 1, guidance_scale: 7.5, tiny: 1e-300, neg: -0.125 },
    { flag: true, off: false, tensor: [0, -1.5, 3e10, 1e-7] },
  ];
  for (const params of cases) {
    const bytes = encodeParamsJson(params);
    assert.deepEqual(decodeParamsJson(bytes), { params });
    // Through the wire message too, as the worker gets it.
    const item = AssignedItem.decode(AssignedItem.encode(AssignedItem.fromPartial({ paramsJson: bytes })).finish());
    assert.deepEqual(decodeParamsJson(item.paramsJson), { params });
    assert.deepEqual(Struct.unwrap(Struct.wrap(params)), params, "the Struct form says the same");
  }
});

test("params wire - unreadable params_json is a problem that names the field, never an exception", () => {
  const problem = (b: Uint8Array) => {
    const d = decodeParamsJson(b);
    assert.ok("problem" in d, `expected a problem for ${Buffer.from(b).toString("hex")}`);
    return d.problem;
  };
  assert.match(problem(Uint8Array.of(0xff, 0xfe)), /^params_json: 2 bytes are not UTF-8 JSON/);
  assert.match(problem(Buffer.from("{\"a\": ")), /^params_json: 6 bytes are not UTF-8 JSON/);
  assert.match(problem(Buffer.from("")), /^params_json: 0 bytes are not UTF-8 JSON/);
  assert.equal(problem(Buffer.from("[1]")), "params_json: must be a JSON object (got an array)");
  assert.equal(problem(Buffer.from("null")), "params_json: must be a JSON object (got null)");
  assert.equal(problem(Buffer.from("\"s\"")), "params_json: must be a JSON object (got string)");
  assert.equal(problem(Buffer.from("12")), "params_json: must be a JSON object (got number)");
  // A "__proto__" key is an own property, not the object's prototype.
  const d = decodeParamsJson(Buffer.from("{\"__proto__\": {\"polluted\": 1}}"));
  assert.ok("params" in d && Object.hasOwn(d.params, "__proto__") && (d.params as { polluted?: number }).polluted === undefined);
});
