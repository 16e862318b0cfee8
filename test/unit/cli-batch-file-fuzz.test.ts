// Property tests of the batch-file parser (issue 8): whatever text a user hands `shoal submit`,
// the parser returns items or throws BatchFileError with a short, located message per problem;
// never another exception, never a message the size of the input.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import { parseBatchFile, type BatchFile } from "../../cli/batch-file.js";
import { BatchFileError } from "../../cli/errors.js";
import { longString, nastyString } from "../fuzz/arbitraries.js";

const FILE_NAMES = ["batch.json", "batch.jsonl", "batch.ndjson", "batch.txt", "batch", "<stdin>"];
/**
 * A problem names its place and says what is wrong; it never echoes megabytes of input. Echoed
 * keys are cut to 64 characters, which JSON escaping can make 384 (`\u0000` for each).
 */
const MAX_PROBLEM_CHARS = 600;

/** Returns the parsed file, or the problems; fails on anything else. */
function outcome(text: string, file: string): BatchFile | string[] {
  try {
    const r = parseBatchFile(text, file);
    assert.ok(r.items.length > 0, "a parsed file has items");
    assert.equal(r.sources.length, r.items.length);
    for (const item of r.items) {
      assert.equal(typeof item.model, "string");
      assert.notEqual(item.model.trim(), "");
      assert.ok(typeof item.params === "object" && item.params !== null && !Array.isArray(item.params));
    }
    return r;
  } catch (err) {
    if (err instanceof assert.AssertionError) throw err;
    assert.ok(err instanceof BatchFileError, `expected BatchFileError, got ${(err as Error)?.name}: ${(err as Error)?.message?.slice(0, 200)}`);
    assert.equal(err.code, "BATCH_FILE_INVALID");
    assert.ok(err.problems.length >= 1 && err.problems.length <= 21, `${err.problems.length} problems`);
    for (const p of err.problems) {
      assert.ok(p.startsWith(file) || p.startsWith("…"), `problem does not name the file: ${p.slice(0, 100)}`);
      assert.ok(p.length <= file.length + MAX_PROBLEM_CHARS, `problem of ${p.length} chars: ${p.slice(0, 200)}…`);
    }
    return err.problems;
  }
}

const fileName = fc.constantFrom(...FILE_NAMES);
const key = fc.oneof(fc.constantFrom("model", "params", "prompt", "items", "requests", "priority", "labels", "idempotency_key", "webhook", "webhook_url", "webhook_events", "webhook_secret", "__proto__", "constructor"), nastyString(12), longString(300, 5000));
const value = fc.oneof(fc.jsonValue(), nastyString(30), longString(300, 5000));
const itemLike = fc.oneof(
  fc.record({ model: fc.oneof(fc.constant("imagegen-tiny"), nastyString(20), value), params: fc.oneof(fc.dictionary(key, value, { maxKeys: 4 }), value) }, { requiredKeys: [] }),
  fc.dictionary(key, value, { maxKeys: 5 }),
  value,
);
const batchObject = fc.record(
  {
    items: fc.oneof(fc.array(itemLike, { maxLength: 4 }), value),
    requests: fc.oneof(fc.array(itemLike, { maxLength: 4 }), value),
    priority: value,
    labels: fc.oneof(fc.dictionary(key, fc.oneof(nastyString(10), value), { maxKeys: 3 }), value),
    idempotency_key: value,
    webhook: fc.oneof(fc.record({ url: value, events: value, secret: value }, { requiredKeys: [] }), value),
    webhook_url: value,
    webhook_events: fc.oneof(fc.array(nastyString(20), { maxLength: 3 }), value),
    webhook_secret: value,
  },
  { requiredKeys: [] },
);

/** JSONL lines of four sorts; the test knows which lines are junk. */
const jsonlLine = fc.oneof(
  fc.record({ prompt: nastyString(20, 1) }).map((o) => ({ text: JSON.stringify(o), junk: false })),
  fc.record({ model: fc.constant("imagegen-tiny"), params: fc.record({ prompt: nastyString(20, 1) }) }).map((o) => ({ text: JSON.stringify(o), junk: false })),
  fc.constantFrom("", "   ", "# a comment", "#").map((text) => ({ text, junk: false })),
  fc.oneof(nastyString(30, 1), fc.constantFrom("{", "[1]", "null", '{"a":', "}", "42")).filter((t) => {
    const s = t.trim();
    if (s === "" || s.startsWith("#") || /[\r\n\u2028\u2029]/.test(t)) return false;
    try {
      const v: unknown = JSON.parse(s);
      return typeof v !== "object" || v === null || Array.isArray(v);
    } catch {
      return true;
    }
  }).map((text) => ({ text, junk: true })),
);

function deep(depth: number, open: string, close: string, leaf: string): string {
  return open.repeat(depth) + leaf + close.repeat(depth);
}

describe("batch-file fuzz", () => {
  test("batch-file fuzz - any text is parsed or refused with BatchFileError, never anything else", () => {
    fc.assert(
      fc.property(fc.oneof(nastyString(200), longString(1000, 200_000), fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b).toString("utf8"))), fileName, (text, file) => {
        outcome(text, file);
      }),
      { numRuns: 500 },
    );
  });

  test("batch-file fuzz - any JSON value, and objects shaped like batches with any field values", () => {
    fc.assert(
      fc.property(fc.oneof(fc.jsonValue(), batchObject, fc.array(itemLike, { maxLength: 6 })), fileName, fc.boolean(), (v, file, pretty) => {
        outcome(JSON.stringify(v, null, pretty ? 2 : undefined) ?? "null", file);
      }),
      { numRuns: 1000 },
    );
  });

  test("batch-file fuzz - JSONL with junk lines names exactly the junk lines, the rest parses", () => {
    fc.assert(
      fc.property(fc.array(jsonlLine, { minLength: 1, maxLength: 40 }), fc.constantFrom("\n", "\r\n"), fc.constantFrom("batch.jsonl", "batch.ndjson"), (lines, eol, file) => {
        const r = outcome(lines.map((l) => l.text).join(eol), file);
        const junk = lines.flatMap((l, i) => (l.junk ? [i + 1] : []));
        const good = lines.filter((l) => !l.junk && l.text.trim() !== "" && !l.text.trim().startsWith("#")).length;
        if (junk.length === 0 && good > 0) {
          assert.ok(!Array.isArray(r), `refused: ${JSON.stringify(r)}`);
          assert.equal(r.items.length, good);
        } else if (junk.length > 0) {
          assert.ok(Array.isArray(r), "junk lines were accepted");
          const named = r.filter((p) => !p.startsWith("…")).map((p) => Number(/^[^:]+:(\d+):/.exec(p)?.[1]));
          assert.deepEqual(named, junk.slice(0, 20));
        }
      }),
      { numRuns: 500 },
    );
  });

  test("batch-file fuzz - nesting hundreds of thousands deep neither overflows the stack nor hangs", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1000, max: 200_000 }), fc.constantFrom<[string, string]>(["[", "]"], ['{"a":', "}"]), fileName, fc.boolean(), (depth, [open, close], file, truncate) => {
        const value = deep(depth, open, close, "1");
        for (const text of [value, `[{"prompt": "p", "x": ${value}}]`, `{"items": [{"model": "m", "params": {"x": ${value}}}]}`]) {
          outcome(truncate ? text.slice(0, text.length - 1) : text, file);
        }
      }),
      { numRuns: 30 },
    );
  });
});
