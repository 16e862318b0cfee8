import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { Metadata, status } from "@grpc/grpc-js";
import { invalidArgument, notFound } from "../../coordinator/errors.js";
import { MAX_ENCODED_DETAILS, toGrpcStatus } from "../../coordinator/grpc/status-encoding.js";
import { decodeStatusDetails, STATUS_DETAILS_TRAILER } from "../../shared/status-details.js";
import { ClientError } from "../../cli/errors.js";

const anyText = fc.oneof(fc.string({ unit: "grapheme" }), fc.string({ unit: "binary" }), fc.string({ unit: fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c)) }));

test("status-encoding - any text gives a status that grpc-js can send, within the size budgets", () => {
  fc.assert(
    fc.property(fc.array(anyText, { maxLength: 60 }), anyText, (violations, message) => {
      for (const err of [invalidArgument(violations.length ? violations : ["x: y"]), notFound(message), new Error(message), message]) {
        const s = toGrpcStatus(err);
        // What grpc-js does with the status when it sends it (and what threw before).
        const encoded = encodeURI(s.details);
        assert.ok(encoded.length <= MAX_ENCODED_DETAILS + 64, `message of ${encoded.length} encoded chars`);
        const headers = s.metadata.toHttp2Headers();
        const bin = headers[STATUS_DETAILS_TRAILER];
        assert.ok(bin !== undefined);
        assert.ok(String(bin).length < 8192);
      }
    }),
    { numRuns: 300, seed: 8 },
  );
});

test("status-encoding - field violations and their count survive the trip to the client", () => {
  const violations = ["items[0].model: unknown model \"modèle\"", "items[1].params[\"a\\nb\"]: unknown param for model m", "labels[\"é\"]: key must be 1-63 of a-z"];
  const s = toGrpcStatus(invalidArgument(violations));
  assert.equal(s.code, status.INVALID_ARGUMENT);
  const client = new ClientError(s.code, s.details, { metadata: s.metadata });
  assert.deepEqual(client.fieldProblems, violations);
  assert.equal(client.problemCount, 3);
  const details = decodeStatusDetails(s.metadata);
  assert.equal(details?.errorInfo?.reason, "INVALID_ARGUMENT");
  assert.equal(details?.badRequest?.fieldViolations[1]?.field, "items[1].params[\"a\\nb\"]");
});

test("status-encoding - a list too long for the message is cut with the count of the rest", () => {
  const violations = Array.from({ length: 500 }, (_, i) => `items[${i}].params.prompt: is required`);
  const s = toGrpcStatus(invalidArgument(violations));
  const shown = s.details.split("; ").length - 1;
  assert.ok(shown < 500);
  assert.match(s.details, new RegExp(`and ${500 - shown} more problems$`));
  const client = new ClientError(s.code, s.details, { metadata: s.metadata });
  assert.equal(client.problemCount, 500);
});

test("status-encoding - without the trailer the client splits the message (older servers)", () => {
  const client = new ClientError(status.INVALID_ARGUMENT, 'the batch was refused: items[0].params["a; b"]: unknown param; items[1].model: is required', { metadata: new Metadata() });
  assert.deepEqual(client.fieldProblems, ['the batch was refused: items[0].params["a; b"]: unknown param', "items[1].model: is required"]);
});
