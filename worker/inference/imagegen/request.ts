// What one imagegen-tiny item asks for, read from its params, and which items can share a batch.
// Kept apart from the pipeline (and from onnxruntime) so that the main thread can group queued
// items without loading the runtime.

import { DEFAULT_QUALITY, IMAGE_FORMATS, type ImageFormat } from "../../../shared/builtin-models.js";
import { InferenceError } from "../backend.js";
import { fnv1a32 } from "./prng.js";
import { LATENT_SCALE } from "./shapes.js";

export interface ImagegenRequest {
  prompt: string;
  width: number;
  height: number;
  seed: number;
  steps: number;
  guidanceScale: number;
  style?: string;
  /** How the pixels are encoded; not part of the shape key, so any formats share a batch. */
  outputFormat: ImageFormat;
  /** 1..100, for jpeg and webp; png ignores it. */
  quality: number;
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
  const outputFormat = params.output_format ?? "png";
  if (typeof outputFormat !== "string" || !(IMAGE_FORMATS as readonly string[]).includes(outputFormat)) {
    problems.push(`output_format: must be one of ${IMAGE_FORMATS.join(", ")}`);
  }
  const quality = int("quality", DEFAULT_QUALITY, 1, 100);
  if (problems.length > 0) throw new InferenceError("INVALID_PARAMS", `imagegen-tiny: ${problems.join("; ")}`, false);
  return {
    prompt: prompt as string,
    width,
    height,
    seed,
    steps,
    guidanceScale: guidanceScale as number,
    ...(typeof style === "string" && style.length > 0 ? { style } : {}),
    outputFormat: outputFormat as ImageFormat,
    quality,
  };
}

/**
 * Requests that can share one batch: everything that changes a tensor's shape or the number of
 * denoiser calls. Prompt, seed, guidance scale and style may differ within a batch.
 */
export function imagegenShapeKey(req: ImagegenRequest): string {
  return `${req.width}x${req.height}x${req.steps}`;
}
