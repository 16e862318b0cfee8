import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { decode } from "fast-png";
import sharp from "sharp";
import { IMAGEGEN_TINY } from "../../shared/builtin-models.js";
import { checkManifest, validateParams, type ModelManifest } from "../../shared/manifest.js";
import { InferenceError } from "../../worker/inference/backend.js";
import { encodeImage } from "../../worker/inference/image-encode.js";
import { buildImagegenGraphs } from "../../worker/inference/imagegen/graphs.js";
import { ImagegenPipeline, imagegenRequest, imagegenShapeKey } from "../../worker/inference/imagegen/pipeline.js";

const SMALL = { width: 72, height: 64, steps: 2 };
let pipeline: ImagegenPipeline;

before(async () => {
  pipeline = await ImagegenPipeline.create(buildImagegenGraphs());
});
after(async () => {
  await pipeline.release();
});

async function draw(params: Record<string, unknown>) {
  return pipeline.generate(imagegenRequest({ prompt: "a blue teapot on a windowsill", seed: 7, ...SMALL, ...params }));
}

/** A smooth RGB gradient with some texture: w × h × 3 bytes. */
function gradient(width: number, height: number): Uint8Array {
  const data = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = (y * width + x) * 3;
      data[i] = (x * 255) / (width - 1);
      data[i + 1] = (y * 255) / (height - 1);
      data[i + 2] = (x * y * 7 + ((x ^ y) & 15)) & 0xff;
    }
  }
  return data;
}

const isJpeg = (b: Uint8Array) => b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff && b[b.length - 2] === 0xff && b[b.length - 1] === 0xd9;
const isWebp = (b: Uint8Array) => Buffer.from(b.subarray(0, 4)).toString("latin1") === "RIFF" && Buffer.from(b.subarray(8, 12)).toString("latin1") === "WEBP";
const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

test("image formats - each output_format gives a file of that type at the requested size, content_type to match", async () => {
  for (const [format, contentType] of [
    ["png", "image/png"],
    ["jpeg", "image/jpeg"],
    ["webp", "image/webp"],
  ] as const) {
    const img = await draw({ output_format: format });
    assert.equal(img.contentType, contentType, format);
    if (format === "png") assert.deepEqual([...img.data.subarray(0, 8)], PNG_SIGNATURE);
    if (format === "jpeg") assert.ok(isJpeg(img.data), "JPEG SOI/EOI markers");
    if (format === "webp") assert.ok(isWebp(img.data), "RIFF....WEBP header");
    const meta = await sharp(img.data).metadata();
    assert.equal(meta.format, format);
    assert.deepEqual([meta.width, meta.height, meta.channels], [SMALL.width, SMALL.height, 3], format);
    // No metadata of any kind: nothing that could differ between two encodes of one image.
    assert.equal(meta.exif, undefined, `${format}: EXIF`);
    assert.equal(meta.icc, undefined, `${format}: ICC profile`);
    assert.equal(meta.xmp, undefined, `${format}: XMP`);
  }
});

test("image formats - png is the default and is lossless: it decodes to exactly the pixels the other formats approximate", async () => {
  const byDefault = await draw({});
  const png = await draw({ output_format: "png" });
  assert.equal(byDefault.contentType, "image/png");
  assert.deepEqual(byDefault.data, png.data);
  const decoded = decode(png.data);
  assert.deepEqual([decoded.width, decoded.height, decoded.channels, decoded.depth], [SMALL.width, SMALL.height, 3, 8]);
  // sharp decodes the same pixels as fast-png; the lossy formats stay close to them.
  const raw = await sharp(png.data).raw().toBuffer();
  assert.deepEqual(new Uint8Array(raw), decoded.data);
  for (const format of ["jpeg", "webp"] as const) {
    const lossy = await sharp((await draw({ output_format: format, quality: 95 })).data).removeAlpha().raw().toBuffer();
    assert.equal(lossy.length, raw.length, format);
    let diff = 0;
    for (let i = 0; i < raw.length; i++) diff += Math.abs(lossy[i]! - raw[i]!);
    assert.ok(diff / raw.length < 8, `${format} at quality 95 is far from the pixels: mean abs diff ${diff / raw.length}`);
  }
});

test("image formats - the same params give the same bytes in every format, even from a fresh pipeline", async () => {
  const other = await ImagegenPipeline.create(buildImagegenGraphs());
  try {
    for (const output_format of ["png", "jpeg", "webp"]) {
      const params = { prompt: "a lighthouse at dusk", seed: 42, style: "watercolor", output_format, quality: 70, ...SMALL };
      const first = (await pipeline.generate(imagegenRequest(params))).data;
      assert.deepEqual((await pipeline.generate(imagegenRequest(params))).data, first, output_format);
      assert.deepEqual((await other.generate(imagegenRequest(params))).data, first, `${output_format}, fresh pipeline`);
    }
  } finally {
    await other.release();
  }
});

test("image formats - encoding does not depend on how many threads libvips uses", async () => {
  const image = { width: 96, height: 80, data: gradient(96, 80) };
  const before = sharp.concurrency();
  try {
    for (const format of ["png", "jpeg", "webp"] as const) {
      sharp.concurrency(1);
      const one = await encodeImage(image, { format, quality: 80 });
      sharp.concurrency(4);
      const four = await encodeImage(image, { format, quality: 80 });
      assert.deepEqual(four.data, one.data, format);
    }
  } finally {
    sharp.concurrency(before);
  }
});

test("image formats - quality changes jpeg and webp bytes (lower: smaller) and is ignored for png", async () => {
  for (const format of ["jpeg", "webp"] as const) {
    const low = (await draw({ output_format: format, quality: 10 })).data;
    const high = (await draw({ output_format: format, quality: 100 })).data;
    assert.notDeepEqual(low, high, format);
    assert.ok(low.length < high.length, `${format}: quality 10 gave ${low.length} bytes, quality 100 ${high.length}`);
  }
  assert.deepEqual((await draw({ output_format: "png", quality: 10 })).data, (await draw({ output_format: "png", quality: 100 })).data);
});

test("image formats - items of different formats share a batch and each gets the image it would get alone", async () => {
  const reqs = ["png", "jpeg", "webp", "jpeg"].map((output_format, i) =>
    imagegenRequest({ prompt: `batched ${i}`, seed: i, output_format, quality: 50 + i * 10, ...SMALL }),
  );
  assert.equal(new Set(reqs.map(imagegenShapeKey)).size, 1, "the output format is not part of the shape key");
  const batch = await pipeline.generateBatch(reqs);
  assert.equal(batch.denoiserCalls, SMALL.steps, "one denoiser call per step for all four");
  for (const [k, req] of reqs.entries()) {
    const alone = await pipeline.generate(req);
    assert.equal(batch.images[k]?.contentType, alone.contentType, `image ${k}`);
    assert.deepEqual(batch.images[k]?.data, alone.data, `image ${k}`);
  }
});

test("image formats - the manifest refuses an unknown output_format or a quality outside 1..100, naming the choices", () => {
  const ok = validateParams(IMAGEGEN_TINY, { prompt: "a cat" });
  assert.deepEqual(ok.problems, []);
  // The defaults (png, quality 90) are the worker's: not written into every stored item.
  assert.equal(ok.params.output_format, undefined);
  assert.equal(ok.params.quality, undefined);
  assert.deepEqual(validateParams(IMAGEGEN_TINY, { prompt: "a cat", output_format: "webp", quality: 1 }).problems, []);
  assert.deepEqual(validateParams(IMAGEGEN_TINY, { prompt: "a cat", output_format: "jpeg", quality: 100 }).problems, []);

  const problems = (params: Record<string, unknown>) => validateParams(IMAGEGEN_TINY, { prompt: "a cat", ...params }).problems.map((p) => `${p.path}: ${p.message}`);
  assert.deepEqual(problems({ output_format: "gif" }), ['params.output_format: must be one of png, jpeg, webp (got "gif")']);
  // Exact spelling: no case folding, no "jpg".
  assert.deepEqual(problems({ output_format: "PNG" }), ['params.output_format: must be one of png, jpeg, webp (got "PNG")']);
  assert.deepEqual(problems({ output_format: "jpg" }), ['params.output_format: must be one of png, jpeg, webp (got "jpg")']);
  assert.deepEqual(problems({ output_format: 1 }), ["params.output_format: must be a string"]);
  assert.deepEqual(problems({ quality: 0 }), ["params.quality: must be between 1 and 100 (got 0)"]);
  assert.deepEqual(problems({ quality: 101 }), ["params.quality: must be between 1 and 100 (got 101)"]);
  assert.deepEqual(problems({ quality: 50.5 }), ["params.quality: must be an integer"]);
  assert.deepEqual(problems({ quality: "high" }), ["params.quality: must be an integer"]);
});

test("image formats - checkManifest checks enum lists and their defaults", () => {
  const base = (spec: Record<string, unknown>): ModelManifest =>
    ({ name: "m", version: "1", params: { f: spec }, vram: { weights_bytes: 0, activation_bytes: 0 } }) as unknown as ModelManifest;
  assert.deepEqual(checkManifest(base({ type: "string", enum: ["a", "b"], default: "a" })), []);
  assert.deepEqual(checkManifest(base({ type: "string", enum: [] })), ["params.f.enum: must be a non-empty array of strings"]);
  assert.deepEqual(checkManifest(base({ type: "string", enum: ["a", 2] })), ["params.f.enum: must be a non-empty array of strings"]);
  assert.deepEqual(checkManifest(base({ type: "string", enum: ["a"], default: "c" })), ["params.f.default: must be one of a"]);
  assert.deepEqual(checkManifest(base({ type: "integer", enum: ["a"] })), ["params.f.enum: only string params take a list of values"]);
  // A valid enum param refuses other values; a string the list holds passes.
  const m = base({ type: "string", enum: ["a", "b"] });
  assert.deepEqual(validateParams(m, { f: "b" }).problems, []);
  assert.deepEqual(validateParams(m, { f: "c" }).problems, [{ path: "params.f", message: 'must be one of a, b (got "c")' }]);
});

test("image formats - the worker checks output_format and quality again: bad values are INVALID_PARAMS", () => {
  for (const params of [{ output_format: "tiff" }, { output_format: 3 }, { quality: 0 }, { quality: 101 }, { quality: 1.5 }]) {
    assert.throws(
      () => imagegenRequest({ prompt: "x", ...params }),
      (e) => e instanceof InferenceError && e.code === "INVALID_PARAMS" && /output_format|quality/.test(e.message),
      JSON.stringify(params),
    );
  }
  const req = imagegenRequest({ prompt: "x" });
  assert.equal(req.outputFormat, "png");
  assert.equal(req.quality, 90);
});

test("image formats - the encoder refuses pixels that do not match the size, and an out-of-range quality", async () => {
  await assert.rejects(encodeImage({ width: 4, height: 4, data: new Uint8Array(47) }, { format: "png" }), /48/);
  await assert.rejects(encodeImage({ width: 4, height: 4, data: new Uint8Array(48) }, { format: "jpeg", quality: 0 }), /quality/);
});
