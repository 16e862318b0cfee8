// The imagegen-tiny pipeline, driven from JS as diffusers drives its ONNX pipelines: tokenize,
// encode the prompt (and the empty prompt, for guidance), start from seeded Gaussian noise,
// call the denoiser once per step under the DDIM sampler, decode to pixels, encode the image
// (PNG, JPEG or WebP, see image-encode.ts).
// Images of one shape can be drawn together, one session run per step for the whole batch.

import ort from "onnxruntime-node";
import { InferenceError } from "../backend.js";
import { encodeImage } from "../image-encode.js";
import type { ImagegenGraphs } from "./graphs.js";
import { Prng } from "./prng.js";
import { imagegenShapeKey, type ImagegenRequest } from "./request.js";
import { ddimStep, timesteps } from "./ddim-sampler.js";
import { COND_DIM, LATENT_CHANNELS, LATENT_SCALE } from "./shapes.js";
import { tokenize } from "./tokenizer.js";

export { imagegenRequest, imagegenShapeKey, type ImagegenRequest } from "./request.js";

/** How much a style word weighs against the prompt in the conditioning. */
const STYLE_WEIGHT = 0.8;

export interface ImagegenResult {
  /** The encoded file, in the request's output_format. */
  data: Uint8Array;
  /** image/png, image/jpeg or image/webp. */
  contentType: string;
  width: number;
  height: number;
  seed: number;
  /** Denoiser calls this image took: one per step, shared with the rest of its batch. */
  denoiserCalls: number;
}

/** What a batch of images ran: each image, or undefined where it was stopped before the end. */
export interface ImagegenBatchResult {
  images: (ImagegenResult | undefined)[];
  /** Denoiser session runs the whole batch took: one per step, whatever the batch size. */
  denoiserCalls: number;
}

export class ImagegenPipeline {
  /** Denoiser calls over this pipeline's life; tests use it to see cost follow `steps`. */
  denoiserCalls = 0;
  private uncond: Float32Array | undefined;

  private constructor(
    private readonly encoder: ort.InferenceSession,
    private readonly denoiser: ort.InferenceSession,
    private readonly decoder: ort.InferenceSession,
  ) {}

  /** `createSession` lets the caller pick execution providers and threads (see ort-runtime.ts). */
  static async create(
    graphs: ImagegenGraphs,
    createSession: (model: Uint8Array) => Promise<ort.InferenceSession> = (model) => ort.InferenceSession.create(model),
  ): Promise<ImagegenPipeline> {
    // One after another: a provider fallback decided by the first applies to the others.
    const sessions: ort.InferenceSession[] = [];
    try {
      for (const graph of [graphs.encoder, graphs.denoiser, graphs.decoder]) sessions.push(await createSession(graph));
    } catch (err) {
      await Promise.allSettled(sessions.map((s) => s.release()));
      throw err;
    }
    const [encoder, denoiser, decoder] = sessions as [ort.InferenceSession, ort.InferenceSession, ort.InferenceSession];
    return new ImagegenPipeline(encoder, denoiser, decoder);
  }

  /**
   * Draws one image. `shouldStop` is polled before every denoiser call and before decoding;
   * when it answers true the run ends with CANCELLED.
   */
  async generate(req: ImagegenRequest, shouldStop: () => boolean = () => false): Promise<ImagegenResult> {
    const { images } = await this.generateBatch([req], () => shouldStop());
    const image = images[0];
    if (image === undefined) throw new InferenceError("CANCELLED", "imagegen-tiny: cancelled", false);
    return image;
  }

  /**
   * Draws several images of one shape (same `imagegenShapeKey`) with one denoiser call per step
   * for all of them: latents, conditionings and guidance scales are stacked along dim 0 and the
   * outputs split again. Every graph works per sample, so each image is byte-identical to the
   * one `generate` draws alone. `shouldStop(i)` is polled per image before every denoiser call
   * and before decoding; a stopped image leaves the batch (its entry is undefined) and the
   * others carry on; the run ends early once every image has stopped.
   */
  async generateBatch(reqs: readonly ImagegenRequest[], shouldStop: (index: number) => boolean = () => false): Promise<ImagegenBatchResult> {
    const first = reqs[0];
    if (first === undefined) return { images: [], denoiserCalls: 0 };
    const key = imagegenShapeKey(first);
    if (reqs.some((r) => imagegenShapeKey(r) !== key)) {
      throw new InferenceError("INFERENCE_FAILED", "imagegen-tiny: a batch must share width, height and steps", false);
    }
    const images: (ImagegenResult | undefined)[] = reqs.map(() => undefined);
    let active = reqs.map((_, i) => i);
    const keepRunning = (): boolean => {
      active = active.filter((i) => !shouldStop(i));
      return active.length > 0;
    };
    if (!keepRunning()) return { images, denoiserCalls: 0 };

    const conds = await this.conditionings(active.map((i) => reqs[i]!));
    const condOf = new Map(active.map((i, k) => [i, conds[k]!]));
    this.uncond ??= (await this.encodeMany([""]))[0]!;

    const h = first.height / LATENT_SCALE;
    const w = first.width / LATENT_SCALE;
    const size = LATENT_CHANNELS * h * w;
    const latents = new Map(active.map((i) => [i, new Prng(reqs[i]!.seed).normals(size)]));
    const ts = timesteps(first.steps);
    const uncondTensor = new ort.Tensor("float32", this.uncond, [1, COND_DIM]);
    let calls = 0;
    for (let s = 0; s < ts.length; s++) {
      if (!keepRunning()) return { images, denoiserCalls: calls };
      const b = active.length;
      const out = await this.denoiser.run({
        latent: new ort.Tensor("float32", stack(active.map((i) => latents.get(i)!)), [b, LATENT_CHANNELS, h, w]),
        conditioning: new ort.Tensor("float32", stack(active.map((i) => condOf.get(i)!)), [b, COND_DIM]),
        unconditioning: uncondTensor,
        timestep: new ort.Tensor("float32", Float32Array.of(ts[s]!), [1]),
        guidance_scale: new ort.Tensor("float32", Float32Array.from(active, (i) => reqs[i]!.guidanceScale), [b]),
      });
      calls++;
      this.denoiserCalls++;
      const denoised = out.denoised!.data as Float32Array;
      active.forEach((i, k) => ddimStep(latents.get(i)!, denoised.subarray(k * size, (k + 1) * size), ts[s]!, ts[s + 1] ?? 0));
      out.denoised!.dispose();
    }
    if (!keepRunning()) return { images, denoiserCalls: calls };
    const b = active.length;
    const decoded = await this.decoder.run({ latent: new ort.Tensor("float32", stack(active.map((i) => latents.get(i)!)), [b, LATENT_CHANNELS, h, w]) });
    const planar = decoded.pixels!.data as Uint8Array;
    const pixels = first.width * first.height;
    const rgb = active.map((_, k) => interleave(planar.subarray(k * 3 * pixels, (k + 1) * 3 * pixels), pixels));
    decoded.pixels!.dispose();
    const encoded = await Promise.all(
      active.map((i, k) => encodeImage({ width: reqs[i]!.width, height: reqs[i]!.height, data: rgb[k]! }, { format: reqs[i]!.outputFormat, quality: reqs[i]!.quality })),
    );
    active.forEach((i, k) => {
      const req = reqs[i]!;
      const { data, contentType } = encoded[k]!;
      images[i] = { data, contentType, width: req.width, height: req.height, seed: req.seed, denoiserCalls: calls };
    });
    return { images, denoiserCalls: calls };
  }

  async release(): Promise<void> {
    await Promise.allSettled([this.encoder.release(), this.denoiser.release(), this.decoder.release()]);
  }

  /** Each request's conditioning: its prompt's, plus its style word's where it has one. */
  private async conditionings(reqs: readonly ImagegenRequest[]): Promise<Float32Array[]> {
    const styled = reqs.filter((r) => r.style !== undefined);
    const encoded = await this.encodeMany([...reqs.map((r) => r.prompt), ...styled.map((r) => r.style!)]);
    let nextStyle = reqs.length;
    return reqs.map((req, k) => {
      const cond = encoded[k]!;
      if (req.style !== undefined) {
        const style = encoded[nextStyle++]!;
        for (let i = 0; i < COND_DIM; i++) cond[i] = cond[i]! + STYLE_WEIGHT * style[i]!;
      }
      return cond;
    });
  }

  /** Encodes texts, one encoder run per distinct token count (rows of a batch must be equally long). */
  private async encodeMany(texts: readonly string[]): Promise<Float32Array[]> {
    const ids = texts.map(tokenize);
    const byLength = new Map<number, number[]>();
    ids.forEach((t, i) => byLength.set(t.length, [...(byLength.get(t.length) ?? []), i]));
    const conds: Float32Array[] = [];
    for (const [length, rows] of byLength) {
      const tokens = new BigInt64Array(rows.length * length);
      rows.forEach((r, k) => tokens.set(ids[r]!, k * length));
      const out = await this.encoder.run({ tokens: new ort.Tensor("int64", tokens, [rows.length, length]) });
      const data = out.conditioning!.data as Float32Array;
      rows.forEach((r, k) => (conds[r] = Float32Array.from(data.subarray(k * COND_DIM, (k + 1) * COND_DIM))));
      out.conditioning!.dispose();
    }
    return conds;
  }
}

/** Equal-length samples one after another: a batch along dim 0. */
function stack(samples: readonly Float32Array[]): Float32Array {
  if (samples.length === 1) return samples[0]!;
  const size = samples[0]!.length;
  const out = new Float32Array(samples.length * size);
  samples.forEach((s, k) => out.set(s, k * size));
  return out;
}

/** Planar [3, H, W] → interleaved RGB, as PNG rows want. */
function interleave(planar: Uint8Array, pixels: number): Uint8Array {
  const out = new Uint8Array(pixels * 3);
  for (let p = 0; p < pixels; p++) {
    out[p * 3] = planar[p]!;
    out[p * 3 + 1] = planar[pixels + p]!;
    out[p * 3 + 2] = planar[2 * pixels + p]!;
  }
  return out;
}
