import type { ModelManifest } from "./manifest.js";

const MiB = 1024 * 1024;

/** imagegen-tiny's `output_format` values; the first, png, is the default. */
export const IMAGE_FORMATS = ["png", "jpeg", "webp"] as const;
export type ImageFormat = (typeof IMAGE_FORMATS)[number];
/** imagegen-tiny's `quality` for jpeg and webp when an item gives none. */
export const DEFAULT_QUALITY = 90;

/**
 * The built-in image generator. Its VRAM figures are shaped like a real diffusion pipeline's
 * (weights once, activations growing with width × height), scaled down; the scheduler places
 * items by them, and the CPU build here really uses far less.
 */
export const IMAGEGEN_TINY: ModelManifest = {
  name: "imagegen-tiny",
  version: "1",
  description:
    "A tiny text-to-image pipeline built by Shoal itself as ONNX graphs: prompt encoder, a denoiser run `steps` times on a latent, and a decoder to RGB pixels.",
  builtin: true,
  params: {
    prompt: { type: "string", required: true, minLength: 1, maxLength: 2000, description: "What to draw." },
    width: { type: "integer", minimum: 64, maximum: 1024, multipleOf: 8, default: 256, description: "Image width in pixels." },
    height: { type: "integer", minimum: 64, maximum: 1024, multipleOf: 8, default: 256, description: "Image height in pixels." },
    seed: { type: "integer", minimum: 0, maximum: 4294967295, description: "Noise seed; default derived from the prompt." },
    steps: { type: "integer", minimum: 1, maximum: 50, default: 4, description: "Denoising steps." },
    guidance_scale: { type: "number", minimum: 0, maximum: 20, default: 7.5, description: "How strongly the prompt steers the image." },
    style: { type: "string", minLength: 1, maxLength: 100, description: "Optional style word, e.g. photorealistic." },
    // No `default` on these two: the worker applies png and DEFAULT_QUALITY when an item gives
    // none, so an item that leaves them out does not carry them in every stored batch record
    // (about 45 bytes an item: 9 % fewer items in the largest batch that fits).
    output_format: {
      type: "string",
      enum: IMAGE_FORMATS,
      description: "Image file format: png (default, lossless), jpeg or webp (lossy). Sets the artifact's content_type.",
    },
    quality: {
      type: "integer",
      minimum: 1,
      maximum: 100,
      description: `Encoder quality for jpeg and webp, 1..100, default ${DEFAULT_QUALITY} (higher: larger, closer to the pixels). Ignored for png, which is lossless.`,
    },
  },
  // Free text that reaches the model: the content policy screens both (docs/content-policy.md).
  screened_params: ["prompt", "style"],
  // Queued items of the same width, height and steps run as one batch (one denoiser call per
  // step for all of them), whatever their output formats; each image is byte-identical to the
  // one drawn alone.
  max_batch: 8,
  // ...but a batch holds at most one 512 × 512 image's pixels (4 × 256 × 256): on CPU with 2
  // inference threads, batches at 512 × 512 ran slower than one at a time (groups of 8: about
  // half; pairs: 0.7-0.9×), while small images gain from batching (docs/performance.md). So
  // 128 × 128 batches by 8, 256 × 256 by 4, 384 × 384 and up run alone.
  max_batch_pixels: 512 * 512,
  vram: {
    weights_bytes: 256 * MiB,
    activation_bytes: 64 * MiB,
    // 1024 × 1024 → 512 MiB of activations; 256 × 256 → 32 MiB.
    activation_bytes_per_pixel: 512,
  },
};

export const BUILTIN_MODELS: readonly ModelManifest[] = [IMAGEGEN_TINY];
