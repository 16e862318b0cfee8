import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createHash } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { decode } from "fast-png";
import sharp from "sharp";
import { BatchState, ItemStatus } from "../../proto/gen/shoal/v1/shoal.js";
import { Stack } from "../harness/processes.js";
import { TestClient, grpcCode } from "../harness/client.js";

// imagegen-tiny's output_format through real processes: nats-server, a coordinator and a worker.

const base = { prompt: "a paper boat on a pond", width: 72, height: 64, steps: 2, seed: 5 };
const FORMATS = [
  { params: {}, contentType: "image/png", format: "png", ext: "png" },
  { params: { output_format: "png" }, contentType: "image/png", format: "png", ext: "png" },
  { params: { output_format: "jpeg", quality: 80 }, contentType: "image/jpeg", format: "jpeg", ext: "jpg" },
  { params: { output_format: "webp" }, contentType: "image/webp", format: "webp", ext: "webp" },
  { params: { output_format: "jpeg", quality: 20 }, contentType: "image/jpeg", format: "jpeg", ext: "jpg" },
] as const;

describe("output formats - imagegen-tiny items in png, jpeg and webp through a coordinator and a worker", () => {
  const stack = new Stack();
  let client: TestClient;
  const dir = mkdtempSync(join(tmpdir(), "shoal-formats-"));

  before(async () => {
    await stack.startNats();
    await stack.startCoordinator();
    await stack.startWorker("w1", ["--vram", "4GiB"]);
    client = new TestClient(stack.grpcAddr);
    await client.waitForWorkers(1);
  });

  after(async () => {
    client?.close();
    await stack.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test("output formats - each item's artifact has the content_type of its format and decodes at its size; `shoal results --out` names the files by type", async () => {
    const items = FORMATS.map((f) => ({ model: "imagegen-tiny", params: { ...base, ...f.params } }));
    const batch = await client.run({ items }, 180_000);
    assert.equal(batch.state, BatchState.BATCH_STATE_COMPLETED, JSON.stringify(batch.results.map((r) => r.error)));
    const bytes: Buffer[] = [];
    for (const r of [...batch.results].sort((a, b) => a.index - b.index)) {
      const want = FORMATS[r.index]!;
      assert.equal(r.status, ItemStatus.ITEM_STATUS_SUCCEEDED, `item ${r.index}: ${JSON.stringify(r.error)}`);
      assert.equal(r.artifacts.length, 1);
      const a = r.artifacts[0]!;
      assert.equal(a.contentType, want.contentType, `item ${r.index}`);
      const data = await client.artifact(a.uri, 30_000);
      assert.equal(data.length, a.sizeBytes);
      // The digest the inference thread computed is the one of the bytes stored.
      assert.equal(a.sha256, createHash("sha256").update(data).digest("hex"), `item ${r.index}`);
      const meta = await sharp(data).metadata();
      assert.equal(meta.format, want.format, `item ${r.index}`);
      assert.deepEqual([meta.width, meta.height], [base.width, base.height], `item ${r.index}`);
      bytes.push(data);
    }
    // The default is png, byte for byte; the same pixels at two JPEG qualities differ.
    assert.ok(bytes[0]!.equals(bytes[1]!), "output_format png and no output_format gave different bytes");
    const png = decode(bytes[0]!);
    assert.deepEqual([png.width, png.height], [base.width, base.height]);
    assert.ok(!bytes[2]!.equals(bytes[4]!), "jpeg at quality 80 and 20 gave the same bytes");

    const out = join(dir, "out");
    const saved = await stack.cli(["results", batch.id, "--out", out], {}, 60_000);
    assert.equal(saved.code, 0, saved.stderr);
    const files = readdirSync(out).sort();
    assert.deepEqual(files, ["000-image.png", "001-image.png", "002-image.jpg", "003-image.webp", "004-image.jpg", "results.json"]);
    files
      .filter((f) => f !== "results.json")
      .forEach((f, i) => assert.ok(readFileSync(join(out, f)).equals(bytes[i]!), `${f} is not the artifact's bytes`));
  });

  test("output formats - the same params in a later batch give the same bytes in every format", async () => {
    const items = FORMATS.slice(1, 4).map((f) => ({ model: "imagegen-tiny", params: { ...base, ...f.params } }));
    const first = await client.run({ items }, 180_000);
    const second = await client.run({ items }, 180_000);
    for (const b of [first, second]) assert.equal(b.succeeded, items.length, JSON.stringify(b.results.map((r) => r.error)));
    const fetchAll = (b: typeof first) => Promise.all([...b.results].sort((x, y) => x.index - y.index).map((r) => client.artifact(r.artifacts[0]!.uri, 30_000)));
    const [a, b] = [await fetchAll(first), await fetchAll(second)];
    a.forEach((bytes, i) => assert.ok(bytes.equals(b[i]!), `item ${i} (${FORMATS[i + 1]!.format}) differs between batches`));
  });

  test("output formats - an unknown output_format or a quality outside 1..100 is refused whole with INVALID_ARGUMENT naming the item", async () => {
    const refusal = async (items: unknown[]) => {
      try {
        await client.submit({ items: items as never });
      } catch (e) {
        return { code: grpcCode(e), details: String((e as { details?: string }).details ?? (e as Error).message) };
      }
      assert.fail("the batch was accepted");
    };
    const e = await refusal([
      { model: "imagegen-tiny", params: { ...base, output_format: "gif" } },
      { model: "imagegen-tiny", params: { ...base, output_format: "webp", quality: 0 } },
      { model: "imagegen-tiny", params: { ...base, output_format: "jpeg" } },
    ]);
    assert.equal(e.code, status.INVALID_ARGUMENT);
    assert.ok(e.details.includes("items[0].params.output_format: must be one of png, jpeg, webp"), e.details);
    assert.ok(e.details.includes("items[1].params.quality: must be between 1 and 100 (got 0)"), e.details);
    assert.ok(!e.details.includes("items[2]"), e.details);
  });

  test("output formats - a batch file submitted with the CLI takes output_format too", async () => {
    const file = join(dir, "items.json");
    writeFileSync(file, JSON.stringify([{ model: "imagegen-tiny", params: { ...base, output_format: "webp", quality: 60 } }]));
    const submitted = await stack.cli(["submit", file, "--wait"], {}, 120_000);
    assert.equal(submitted.code, 0, submitted.stderr);
    const batchId = /b_[0-9a-v]{20}/.exec(submitted.stdout + submitted.stderr)?.[0];
    assert.ok(batchId, `no batch id in: ${submitted.stdout} ${submitted.stderr}`);
    const batch = await client.get(batchId);
    assert.equal(batch.results[0]?.artifacts[0]?.contentType, "image/webp");
  });
});
