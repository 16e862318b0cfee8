// The imagegen-tiny pipeline, driven from JS as diffusers drives its ONNX pipelines: tokenize,
// encode the prompt (and the empty prompt, for guidance), start from seeded Gaussian noise,
// call the denoiser once per step under the DDIM sampler, decode to pixels, encode a PNG.

import ort from "onnxruntime-node";
import { InferenceError } from "../backend.js";
import { encodePng } from "../png.js";
import type { ImagegenGraphs } from "./graphs.js";
import { fnv1a32, Prng } from "./prng.js";
import { ddimStep, timesteps } from "./scheduler.js";
import { COND_DIM, LATENT_CHANNELS, LATENT_SCALE } from "./shapes.js";
import { tokenize } from "./tokenizer.js";

/** How much a style word weighs against the prompt in the conditioning. */
const STYLE_WEIGHT = 0.8;

export interface ImagegenRequest {
  prompt: string;
  width: number;
  height: number;
  seed: number;
  steps: number;
  guidanceScale: number;
  style?: string;
}

export interface ImagegenResult {
  png: Uint8Array;
  width: number;
  height: number;
  seed: number;
  /** Denoiser calls this image took: one per step. */
  denoiserCalls: number;
}

/**
 * Reads an item's params (already validated by the coordinator, defaults applied) into a
 * request. Still checked, because a worker must never trust the wire: bad values are
 * INVALID_PARAMS, not a crash inside onnxruntime.
 */
export function imagegenRequest(params: Record<string, unknown>): ImagegenRequest {
  const problems: string[] = [];
  const prompt = params.prompt;
  if (typeof prompt !== "string" || prompt.length === 0) problems.push("prompt: required string");
  const int = (name: string, fallback: number, min: number, max: number, multipleOf = 1): number => {
    const v = params[name] ?? fallback;
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min || v > max || v % multipleOf !== 0) {
      problems.push(`${name}: must be an integer${multipleOf > 1 ? ` multiple of ${multipleOf}` : ""} between ${min} and ${max}`);
      return fallback;
    }
    return v;
  };
  const width = int("width", 256, 64, 1024, LATENT_SCALE);
  const height = int("height", 256, 64, 1024, LATENT_SCALE);
  const steps = int("steps", 4, 1, 50);
  const seed = params.seed === undefined || params.seed === null ? fnv1a32(String(prompt)) : int("seed", 0, 0, 4294967295);
  const guidanceScale = params.guidance_scale ?? 7.5;
  if (typeof guidanceScale !== "number" || !Number.isFinite(guidanceScale) || guidanceScale < 0 || guidanceScale > 20) {
    problems.push("guidance_scale: must be a number between 0 and 20");
  }
  const style = params.style;
  if (style !== undefined && style !== null && typeof style !== "string") problems.push("style: must be a string");
  if (problems.length > 0) throw new InferenceError("INVALID_PARAMS", `imagegen-tiny: ${problems.join("; ")}`, false);
  return {
    prompt: prompt as string,
    width,
    height,
    seed,
    steps,
    guidanceScale: guidanceScale as number,
    ...(typeof style === "string" && style.length > 0 ? { style } : {}),
  };
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
    const stopIfAsked = (): void => {
      if (shouldStop()) throw new InferenceError("CANCELLED", "imagegen-tiny: cancelled", false);
    };
    stopIfAsked();
    const cond = await this.encode(req.prompt);
    if (req.style !== undefined) {
      const style = await this.encode(req.style);
      for (let i = 0; i < COND_DIM; i++) cond[i] = cond[i]! + STYLE_WEIGHT * style[i]!;
    }
    this.uncond ??= await this.encode("");

    const h = req.height / LATENT_SCALE;
    const w = req.width / LATENT_SCALE;
    const dims = [1, LATENT_CHANNELS, h, w];
    const x = new Prng(req.seed).normals(LATENT_CHANNELS * h * w);
    const ts = timesteps(req.steps);
    const condTensor = new ort.Tensor("float32", cond, [1, COND_DIM]);
    const uncondTensor = new ort.Tensor("float32", this.uncond, [1, COND_DIM]);
    const guidance = new ort.Tensor("float32", Float32Array.of(req.guidanceScale), [1]);
    let calls = 0;
    for (let i = 0; i < ts.length; i++) {
      stopIfAsked();
      const out = await this.denoiser.run({
        latent: new ort.Tensor("float32", x, dims),
        conditioning: condTensor,
        unconditioning: uncondTensor,
        timestep: new ort.Tensor("float32", Float32Array.of(ts[i]!), [1]),
        guidance_scale: guidance,
      });
      calls++;
      this.denoiserCalls++;
      ddimStep(x, out.denoised!.data as Float32Array, ts[i]!, ts[i + 1] ?? 0);
      out.denoised!.dispose();
    }
    stopIfAsked();
    const decoded = await this.decoder.run({ latent: new ort.Tensor("float32", x, dims) });
    const planar = decoded.pixels!.data as Uint8Array;
    const png = encodePng({ width: req.width, height: req.height, data: interleave(planar, req.width * req.height) });
    decoded.pixels!.dispose();
    return { png, width: req.width, height: req.height, seed: req.seed, denoiserCalls: calls };
  }

  async release(): Promise<void> {
    await Promise.allSettled([this.encoder.release(), this.denoiser.release(), this.decoder.release()]);
  }

  private async encode(text: string): Promise<Float32Array> {
    const ids = tokenize(text);
    const out = await this.encoder.run({ tokens: new ort.Tensor("int64", ids, [1, ids.length]) });
    const cond = Float32Array.from(out.conditioning!.data as Float32Array);
    out.conditioning!.dispose();
    return cond;
  }
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
