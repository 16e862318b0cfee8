import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { decode } from "fast-png";
import ort from "onnxruntime-node";
import { InferenceError } from "../../worker/inference/backend.js";
import { buildImagegenGraphs } from "../../worker/inference/imagegen/graphs.js";
import { ImagegenPipeline, imagegenRequest } from "../../worker/inference/imagegen/pipeline.js";
import { fnv1a32, Prng } from "../../worker/inference/imagegen/prng.js";
import { alphaBar, timesteps } from "../../worker/inference/imagegen/ddim-sampler.js";
import { COND_DIM, LATENT_CHANNELS } from "../../worker/inference/imagegen/shapes.js";
import { MAX_TOKENS, tokenize } from "../../worker/inference/imagegen/tokenizer.js";

const SMALL = { width: 64, height: 64, steps: 2 };
let pipeline: ImagegenPipeline;

before(async () => {
  pipeline = await ImagegenPipeline.create(buildImagegenGraphs());
});
after(async () => {
  await pipeline.release();
});

async function png(params: Record<string, unknown>): Promise<Uint8Array> {
  return (await pipeline.generate(imagegenRequest({ ...SMALL, ...params }))).data;
}

/** Mean absolute difference between neighbouring samples, and the overall standard deviation. */
function smoothness(data: Uint8Array, width: number, height: number): { neighbour: number; std: number } {
  let sum = 0;
  let sq = 0;
  let diff = 0;
  let pairs = 0;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      for (let c = 0; c < 3; c++) {
        const i = (y * width + x) * 3 + c;
        const v = data[i]!;
        sum += v;
        sq += v * v;
        if (x + 1 < width) (diff += Math.abs(v - data[i + 3]!)), pairs++;
        if (y + 1 < height) (diff += Math.abs(v - data[i + width * 3]!)), pairs++;
      }
    }
  }
  const n = width * height * 3;
  const mean = sum / n;
  return { neighbour: diff / pairs, std: Math.sqrt(sq / n - mean * mean) };
}

test("imagegen - the graphs are built byte-identical every time", () => {
  const a = buildImagegenGraphs();
  const b = buildImagegenGraphs();
  assert.deepEqual(a.encoder, b.encoder);
  assert.deepEqual(a.denoiser, b.denoiser);
  assert.deepEqual(a.decoder, b.decoder);
});

test("imagegen - PNGs decode at exactly the requested size", async () => {
  for (const [width, height] of [
    [64, 64],
    [128, 72],
    [72, 136],
  ] as const) {
    const img = decode(await png({ prompt: "a size test", width, height }));
    assert.equal(img.width, width);
    assert.equal(img.height, height);
    assert.equal(img.channels, 3);
    assert.equal(img.depth, 8);
  }
});

test("imagegen - the same params give the same bytes, even from a fresh pipeline", async () => {
  const params = { prompt: "a lighthouse at dusk", seed: 42, style: "watercolor" };
  const first = await png(params);
  assert.deepEqual(await png(params), first);
  const other = await ImagegenPipeline.create(buildImagegenGraphs());
  try {
    assert.deepEqual((await other.generate(imagegenRequest({ ...SMALL, ...params }))).data, first);
  } finally {
    await other.release();
  }
});

test("imagegen - the default seed is derived from the prompt", async () => {
  const prompt = "an orchard in spring";
  assert.equal(imagegenRequest({ prompt }).seed, fnv1a32(prompt));
  assert.deepEqual(await png({ prompt }), await png({ prompt, seed: fnv1a32(prompt) }));
});

test("imagegen - seed, prompt, style and guidance each change the picture", async () => {
  const base = { prompt: "a red kite over green hills", seed: 7 };
  const reference = Buffer.from(await png(base));
  const variants = [
    { ...base, seed: 8 },
    { ...base, prompt: "a blue boat on a calm lake" },
    { ...base, style: "photorealistic" },
    { ...base, style: "watercolor" },
    { ...base, guidance_scale: 2 },
  ];
  const seen = new Set([reference.toString("hex")]);
  for (const v of variants) {
    const bytes = Buffer.from(await png(v)).toString("hex");
    assert.ok(!seen.has(bytes), `${JSON.stringify(v)} gave a picture already seen`);
    seen.add(bytes);
  }
});

test("imagegen - pictures are smooth shapes, not noise and not flat", async () => {
  for (const prompt of ["a cat on a sofa", "mountains under a starry sky", "a bowl of fruit"]) {
    const img = decode(await png({ prompt, width: 128, height: 96, steps: 4 }));
    const { neighbour, std } = smoothness(img.data as Uint8Array, img.width, img.height);
    assert.ok(std > 15, `${prompt}: too flat (std ${std.toFixed(1)})`);
    // White noise scores about 1.1 here; smooth shapes and gradients a few hundredths.
    assert.ok(neighbour / std < 0.15, `${prompt}: neighbours differ by ${neighbour.toFixed(2)} for std ${std.toFixed(1)}`);
  }
});

test("imagegen - the denoiser runs once per step", async () => {
  for (const steps of [1, 3, 7]) {
    const before = pipeline.denoiserCalls;
    const result = await pipeline.generate(imagegenRequest({ prompt: "steps", width: 64, height: 64, steps }));
    assert.equal(result.denoiserCalls, steps);
    assert.equal(pipeline.denoiserCalls - before, steps);
  }
});

test("imagegen - a stop request between steps ends the run with CANCELLED", async () => {
  const before = pipeline.denoiserCalls;
  await assert.rejects(
    pipeline.generate(imagegenRequest({ prompt: "cancel me", width: 64, height: 64, steps: 10 }), () => pipeline.denoiserCalls - before >= 3),
    (err: unknown) => err instanceof InferenceError && err.code === "CANCELLED" && !err.retryable,
  );
  assert.equal(pipeline.denoiserCalls - before, 3);
});

/** Runs one graph on `samples` stacked along dim 0 and returns each sample's output. */
async function perSample(
  session: ort.InferenceSession,
  feeds: (b: number) => Record<string, ort.Tensor>,
  output: string,
  b: number,
): Promise<Uint8Array[]> {
  const out = await session.run(feeds(b));
  const data = out[output]!.data as Float32Array | Uint8Array;
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const size = bytes.length / b;
  return Array.from({ length: b }, (_, k) => bytes.slice(k * size, (k + 1) * size));
}

test("imagegen - every graph computes a sample bit for bit the same alone and in a batch", async () => {
  const graphs = buildImagegenGraphs();
  const [encoder, denoiser, decoder] = await Promise.all([graphs.encoder, graphs.denoiser, graphs.decoder].map((g) => ort.InferenceSession.create(g)));
  try {
    const rng = new Prng(11);
    for (const tokens of [3, 7, 77]) {
      const ids = BigInt64Array.from({ length: 5 * tokens }, () => BigInt(rng.uint32() % 4096));
      const feeds = (b: number) => ({ tokens: new ort.Tensor("int64", ids.slice(0, b * tokens), [b, tokens]) });
      const batched = await perSample(encoder, feeds, "conditioning", 5);
      const alone = await Promise.all([0, 1, 2, 3, 4].map(async (k) => (await perSample(encoder, () => ({ tokens: new ort.Tensor("int64", ids.slice(k * tokens, (k + 1) * tokens), [1, tokens]) }), "conditioning", 1))[0]!));
      batched.forEach((s, k) => assert.deepEqual(s, alone[k], `encoder: prompt ${k} of ${tokens} tokens`));
    }
    for (const [h, w] of [[8, 8], [9, 17]] as const) {
      const n = LATENT_CHANNELS * h * w;
      const latents = new Prng(h * w).normals(4 * n);
      const conds = new Prng(7).normals(4 * COND_DIM, 0.5);
      const uncond = new Prng(8).normals(COND_DIM, 0.5);
      const denoiserFeeds = (from: number, b: number) => ({
        latent: new ort.Tensor("float32", latents.slice(from * n, (from + b) * n), [b, LATENT_CHANNELS, h, w]),
        conditioning: new ort.Tensor("float32", conds.slice(from * COND_DIM, (from + b) * COND_DIM), [b, COND_DIM]),
        unconditioning: new ort.Tensor("float32", uncond, [1, COND_DIM]),
        timestep: new ort.Tensor("float32", Float32Array.of(0.75), [1]),
        guidance_scale: new ort.Tensor("float32", Float32Array.from({ length: b }, (_, k) => 2 + 1.5 * (from + k)), [b]),
      });
      const decoderFeeds = (from: number, b: number) => ({ latent: new ort.Tensor("float32", latents.slice(from * n, (from + b) * n), [b, LATENT_CHANNELS, h, w]) });
      for (const [session, feeds, output] of [
        [denoiser, denoiserFeeds, "denoised"],
        [decoder, decoderFeeds, "pixels"],
      ] as const) {
        const batched = await perSample(session, (b) => feeds(0, b), output, 4);
        for (let k = 0; k < 4; k++) {
          const [alone] = await perSample(session, () => feeds(k, 1), output, 1);
          assert.deepEqual(batched[k], alone, `${output}: sample ${k} of a ${h}×${w} latent`);
        }
      }
    }
  } finally {
    await Promise.all([encoder, denoiser, decoder].map((s) => s.release()));
  }
});

test("imagegen - a batch draws each image byte-identical to drawing it alone, with one denoiser call per step", async () => {
  const reqs = [
    { prompt: "two dogs on a beach", seed: 1 },
    { prompt: "mountains under a starry sky", seed: 2, guidance_scale: 3 },
    { prompt: "a red kite", style: "watercolor" },
    { prompt: "a bowl of fruit", seed: 4, guidance_scale: 12, style: "photorealistic" },
  ].map((p) => imagegenRequest({ ...SMALL, steps: 3, ...p }));
  const alone: Uint8Array[] = [];
  for (const req of reqs) alone.push((await pipeline.generate(req)).data);
  const before = pipeline.denoiserCalls;
  const batch = await pipeline.generateBatch(reqs);
  assert.equal(batch.denoiserCalls, 3);
  assert.equal(pipeline.denoiserCalls - before, 3);
  batch.images.forEach((img, k) => assert.deepEqual(img?.data, alone[k], `image ${k}`));
  await assert.rejects(
    pipeline.generateBatch([reqs[0]!, { ...reqs[1]!, width: 72 }]),
    (err: unknown) => err instanceof InferenceError && /share width, height and steps/.test(err.message),
  );
});

test("imagegen - a stopped image leaves its batch; the others are unchanged", async () => {
  const reqs = [0, 1, 2].map((i) => imagegenRequest({ ...SMALL, steps: 6, prompt: `a batch member ${i}`, seed: i }));
  const alone: Uint8Array[] = [];
  for (const req of reqs) alone.push((await pipeline.generate(req)).data);
  const before = pipeline.denoiserCalls;
  const batch = await pipeline.generateBatch(reqs, (i) => i === 1 && pipeline.denoiserCalls - before >= 2);
  assert.equal(batch.images[1], undefined);
  assert.deepEqual(batch.images[0]?.data, alone[0]);
  assert.deepEqual(batch.images[2]?.data, alone[2]);
  const none = await pipeline.generateBatch(reqs, () => pipeline.denoiserCalls - before >= 8);
  assert.deepEqual(none.images, [undefined, undefined, undefined]);
  assert.equal(none.denoiserCalls, 2, "the run ends once every image has stopped");
});

test("imagegen - bad params are INVALID_PARAMS naming each one", () => {
  assert.throws(
    () => imagegenRequest({ prompt: "", width: 100, steps: 0, guidance_scale: 99 }),
    (err: unknown) =>
      err instanceof InferenceError &&
      err.code === "INVALID_PARAMS" &&
      ["prompt", "width", "steps", "guidance_scale"].every((p) => err.message.includes(p)),
  );
});

test("imagegen - tokens: start and end markers, words hashed, long prompts cut", () => {
  const ids = tokenize("A cat, a CAT!");
  assert.equal(ids.length, 6);
  assert.equal(ids[0], 0n);
  assert.equal(ids[5], 1n);
  assert.equal(ids[1], ids[3]);
  assert.equal(ids[2], ids[4]);
  assert.equal(tokenize("word ".repeat(500)).length, MAX_TOKENS);
  assert.deepEqual([...tokenize("")], [0n, 1n]);
});

test("imagegen - the schedule runs from noise to a clean latent", () => {
  assert.deepEqual(timesteps(4), [1, 0.75, 0.5, 0.25]);
  assert.ok(alphaBar(1) < 1e-9);
  assert.equal(alphaBar(0), 1);
  assert.ok(alphaBar(0.25) > alphaBar(0.75));
});
