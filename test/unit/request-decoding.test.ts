import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { status } from "@grpc/grpc-js";
import { BatchServiceService, FleetServiceService, SubmitBatchRequest } from "../../proto/gen/shoal/v1/shoal.js";
import { decodeFailure, findTooDeepParam, lenientService } from "../../coordinator/grpc/request-decoding.js";
import { paramShapeProblems, paramPath, quoteInput } from "../../shared/param-limits.js";

function nest(depth: number): Record<string, unknown> {
  let v: Record<string, unknown> = { leaf: 1 };
  for (let i = 1; i < depth; i++) v = { a: v };
  return v;
}

const encode = (params: Record<string, unknown>) =>
  Buffer.from(SubmitBatchRequest.encode({ items: [{ model: "m", params: { ok: 1 } }, { model: "m", params }], idempotencyKey: "", priority: 0, labels: {}, webhook: undefined }).finish());

test("request-decoding - no bytes make a deserializer throw", () => {
  const services = [lenientService(BatchServiceService), lenientService(FleetServiceService)];
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 512 }), (bytes) => {
      for (const svc of services) for (const m of Object.values(svc)) m.requestDeserialize(Buffer.from(bytes));
    }),
    { numRuns: 2000, seed: 8 },
  );
});

test("request-decoding - a request nested past the decoder's limit is refused naming the path", () => {
  const svc = lenientService(BatchServiceService);
  const decoded = svc.submitBatch.requestDeserialize(encode({ deep: nest(300) }));
  const err = decodeFailure(decoded);
  assert.equal(err?.code, status.INVALID_ARGUMENT);
  assert.deepEqual(err?.violations, [`items[1].params.deep${".a".repeat(16)}: nested deeper than 16 levels`]);
  // The same request the decoder can read gets the same problem from validation.
  const shallow = svc.submitBatch.requestDeserialize(encode({ deep: nest(20) })) as SubmitBatchRequest;
  assert.equal(decodeFailure(shallow), undefined);
  assert.deepEqual(paramShapeProblems("items[1]", shallow.items[1]!.params), err?.violations);
});

test("request-decoding - lists count as levels and keys of any text print on one line", () => {
  let v: unknown = "leaf";
  for (let i = 0; i < 40; i++) v = [v];
  assert.equal(findTooDeepParam(encode({ "odd\nkey": v as never })), `items[1].params["odd\\nkey"]${"[0]".repeat(16)}: nested deeper than 16 levels`);
  assert.equal(paramPath(["x".repeat(100)]), `params[${JSON.stringify("x".repeat(64) + "…")}]`);
  assert.equal(quoteInput("a\u0000b"), '"a\\u0000b"');
});

test("request-decoding - params within the limits have no shape problems; too many bytes do", () => {
  assert.deepEqual(paramShapeProblems("items[0]", { prompt: "x", deep: nest(15) }), []);
  // deep is level 1, its 15th nested object level 16, and the leaf inside that level 17.
  assert.equal(paramShapeProblems("items[0]", { deep: nest(16) }).length, 1);
  assert.match(paramShapeProblems("items[0]", { big: "x".repeat(1024 * 1024 + 1) })[0]!, /^items\[0\]\.params: \d+ bytes of params exceed the limit of 1048576$/);
});
