import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { parseBatchFile, readBatchFile } from "../../cli/batch-file.js";
import { BatchFileError } from "../../cli/errors.js";

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), "shoal-batch-file-"));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function fileWith(name: string, text: string): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, text);
  return path;
}

/** The problems a file is refused with; fails the test when it is accepted. */
async function problemsOf(name: string, text: string, defaultModel?: string): Promise<string[]> {
  const path = await fileWith(name, text);
  try {
    await readBatchFile(path, { defaultModel });
  } catch (err) {
    assert.ok(err instanceof BatchFileError, `expected BatchFileError, got ${String(err)}`);
    return err.problems.map((p) => p.replace(dir + "/", ""));
  }
  assert.fail(`${name} was accepted`);
}

describe("batch-file", () => {
  test("batch-file - reads a JSON array of {model, params} items", async () => {
    const path = await fileWith(
      "items.json",
      JSON.stringify([
        { model: "imagegen-tiny", params: { prompt: "a red mug", width: 256 } },
        { model: "other-model", params: { x: [1, 2, 3] } },
      ]),
    );
    const batch = await readBatchFile(path);
    assert.equal(batch.shape, "array");
    assert.deepEqual(batch.items, [
      { model: "imagegen-tiny", params: { prompt: "a red mug", width: 256 } },
      { model: "other-model", params: { x: [1, 2, 3] } },
    ]);
    assert.equal(batch.priority, undefined);
  });

  test("batch-file - reads an {items} object with priority, labels, idempotency key and webhook", async () => {
    const path = await fileWith(
      "batch.json",
      JSON.stringify({
        items: [{ params: { prompt: "x" } }],
        priority: 5,
        labels: { team: "ads" },
        idempotency_key: "k-1",
        webhook: { url: "https://example.com/hook", events: ["batch.failed"], secret: "whsec_abc" },
      }),
    );
    const batch = await readBatchFile(path);
    assert.equal(batch.shape, "items");
    assert.deepEqual(batch.items, [{ model: "imagegen-tiny", params: { prompt: "x" } }]);
    assert.equal(batch.priority, 5);
    assert.deepEqual(batch.labels, { team: "ads" });
    assert.equal(batch.idempotencyKey, "k-1");
    assert.deepEqual(batch.webhook, { url: "https://example.com/hook", events: ["batch.failed"], secret: "whsec_abc" });
  });

  test("batch-file - reads the batch image API {requests} body; fields become params", async () => {
    const path = await fileWith(
      "api.json",
      JSON.stringify({
        requests: [
          { prompt: "Modern living room", width: 1024, height: 768, style: "photorealistic" },
          { prompt: "Tiny tensor", model: "tensor-net" },
        ],
        webhook_url: "https://your-server.com/api/batch-complete",
        webhook_events: ["batch.complete", "batch.failed"],
      }),
    );
    const batch = await readBatchFile(path);
    assert.equal(batch.shape, "requests");
    assert.deepEqual(batch.items, [
      { model: "imagegen-tiny", params: { prompt: "Modern living room", width: 1024, height: 768, style: "photorealistic" } },
      { model: "tensor-net", params: { prompt: "Tiny tensor" } },
    ]);
    // The batch image API's "batch.complete" is Shoal's "batch.completed".
    assert.deepEqual(batch.webhook, {
      url: "https://your-server.com/api/batch-complete",
      events: ["batch.completed", "batch.failed"],
      secret: "",
    });
    assert.deepEqual(batch.sources, [`${path}: requests[0]`, `${path}: requests[1]`]);
  });

  test("batch-file - reads JSONL with both item forms, skipping blank lines and # comments", async () => {
    const path = await fileWith(
      "ads.jsonl",
      [
        "# spring campaign",
        '{"prompt": "running shoes, red", "style": "stylized"}',
        "",
        '   # indented comment',
        '{"model": "imagegen-tiny", "params": {"prompt": "running shoes, blue"}}',
        "",
      ].join("\n"),
    );
    const batch = await readBatchFile(path);
    assert.equal(batch.shape, "jsonl");
    assert.deepEqual(batch.items, [
      { model: "imagegen-tiny", params: { prompt: "running shoes, red", style: "stylized" } },
      { model: "imagegen-tiny", params: { prompt: "running shoes, blue" } },
    ]);
    assert.deepEqual(batch.sources, [`${path}:2`, `${path}:5`]);
  });

  test("batch-file - JSONL under a .json or .txt name is still read as JSONL", async () => {
    const text = '{"prompt": "a"}\n{"prompt": "b"}\n';
    for (const name of ["lines.json", "lines.txt"]) {
      const batch = await readBatchFile(await fileWith(name, text));
      assert.equal(batch.shape, "jsonl");
      assert.equal(batch.items.length, 2);
    }
  });

  test("batch-file - --model replaces the default model but not a model an item names", async () => {
    const path = await fileWith(
      "mixed.jsonl",
      '{"prompt": "no model"}\n{"model": "pinned", "prompt": "named"}\n{"params": {"prompt": "item form"}}\n',
    );
    const byDefault = await readBatchFile(path);
    assert.deepEqual(
      byDefault.items.map((i) => i.model),
      ["imagegen-tiny", "pinned", "imagegen-tiny"],
    );
    const overridden = await readBatchFile(path, { defaultModel: "imagegen-large" });
    assert.deepEqual(
      overridden.items.map((i) => i.model),
      ["imagegen-large", "pinned", "imagegen-large"],
    );
  });

  test("batch-file - a bad JSONL line is named by file and line number", async () => {
    const problems = await problemsOf("batch.jsonl", '{"prompt": "ok"}\n\n{"prompt": "broken",\n[1, 2]\n');
    assert.equal(problems.length, 2);
    assert.match(problems[0]!, /^batch\.jsonl:3: not valid JSON: /);
    assert.match(problems[1]!, /^batch\.jsonl:4: must be an object/);
  });

  test("batch-file - item problems are named by JSON path", async () => {
    const problems = await problemsOf(
      "items.json",
      JSON.stringify({
        items: [
          { model: "imagegen-tiny", params: { prompt: "fine" } },
          { model: "", params: {} },
          { model: "imagegen-tiny", params: "prompt=cat" },
          { params: {}, prompt: "misplaced" },
        ],
      }),
    );
    assert.deepEqual(problems, [
      "items.json: items[1].model: must be a non-empty string",
      "items.json: items[2].params: must be an object",
      'items.json: items[3].prompt: unknown field; an item with "params" has only "model" and "params" (put model params inside "params")',
    ]);
  });

  test("batch-file - top-level problems name the field", async () => {
    const problems = await problemsOf(
      "opts.json",
      JSON.stringify({ items: [{ prompt: "x" }], priority: 1.5, labels: { week: 3 }, priorty: 2, webhook: { url: 7 } }),
    );
    assert.deepEqual(problems, [
      "opts.json: priorty: unknown field (expected items, priority, labels, idempotency_key, webhook, webhook_url, webhook_events, webhook_secret)",
      "opts.json: priority: must be an integer",
      "opts.json: labels.week: must be a string",
      "opts.json: webhook.url: must be a non-empty string",
    ]);
  });

  test("batch-file - a broken JSON file is reported with line and column", async () => {
    const problems = await problemsOf("broken.json", '{\n  "requests": [\n    {"prompt": "a"}\n    {"prompt": "b"}\n  ]\n}\n');
    assert.equal(problems.length, 1);
    assert.match(problems[0]!, /^broken\.json:4:5: not valid JSON: /);
    assert.doesNotMatch(problems[0]!, /position/);
  });

  test("batch-file - a JSON array in a .jsonl file is refused per line", async () => {
    const problems = await problemsOf("wrong.jsonl", '[{"prompt": "a"}]\n');
    assert.deepEqual(problems, [
      'wrong.jsonl:1: must be an object, {"model": ..., "params": {...}} or a flat request {"prompt": ...}',
    ]);
  });

  test("batch-file - empty files, empty lists and wrong shapes are refused", async () => {
    assert.deepEqual(await problemsOf("empty.json", "  \n"), ["empty.json: the file is empty"]);
    assert.deepEqual(await problemsOf("none.json", '{"requests": []}'), ["none.json: no items"]);
    assert.deepEqual(await problemsOf("comments.jsonl", "# nothing here\n"), ["comments.jsonl: no items"]);
    assert.deepEqual(await problemsOf("list.json", '{"requests": {"prompt": "a"}}'), ["list.json: requests: must be an array"]);
    assert.match((await problemsOf("what.json", '{"prompt": "a"}'))[0]!, /^what\.json: expected a JSON array of items/);
    assert.match((await problemsOf("num.json", "42"))[0]!, /^num\.json: expected a JSON array of items/);
  });

  test("batch-file - a missing file is one clear problem", async () => {
    await assert.rejects(readBatchFile(join(dir, "nope.json")), (err: unknown) => {
      assert.ok(err instanceof BatchFileError);
      assert.deepEqual(err.problems, [`${join(dir, "nope.json")}: cannot read: no such file`]);
      return true;
    });
  });

  test("batch-file - webhook given twice is refused", async () => {
    const problems = await problemsOf(
      "twice.json",
      JSON.stringify({ requests: [{ prompt: "a" }], webhook: { url: "https://a" }, webhook_url: "https://b" }),
    );
    assert.deepEqual(problems, ['twice.json: webhook: give either "webhook" or "webhook_url"/"webhook_events", not both']);
  });

  test("batch-file - at most 20 problems are listed", () => {
    const lines = Array.from({ length: 30 }, () => "not json").join("\n");
    assert.throws(
      () => parseBatchFile(lines, "many.jsonl"),
      (err: unknown) => {
        assert.ok(err instanceof BatchFileError);
        assert.equal(err.problems.length, 21);
        assert.equal(err.problems[20], "… and 10 more problems");
        return true;
      },
    );
  });

  test("batch-file - params are passed through unchecked, for the server to validate", () => {
    const batch = parseBatchFile('[{"params": {"prompt": "", "width": 13, "nested": {"a": [null, true]}}}]', "raw.json");
    assert.deepEqual(batch.items[0]!.params, { prompt: "", width: 13, nested: { a: [null, true] } });
  });
});
