// Encodes imagegen-tiny's pixels as PNG, JPEG or WebP with sharp (libvips, libpng/zlib-ng,
// mozjpeg, libwebp). Every encoder option that changes the bytes is set here explicitly rather
// than left to a default, and no metadata is written (sharp writes none unless asked: no EXIF,
// no ICC profile, no timestamps), so the same pixels, format and quality always give the same
// file on one build of Shoal (the lockfile pins sharp and its libvips).
//
// PNG used to come from the hand-written encoder in png.ts; `npm run bench -- --only encode`
// compares the two on imagegen-sized images and sharp is the faster (docs/performance.md).

import sharp from "sharp";
import { DEFAULT_QUALITY, IMAGE_FORMATS, type ImageFormat } from "../../shared/builtin-models.js";
import { InferenceError } from "./backend.js";
import type { RgbImage } from "./png.js";

// An encode never repeats, so libvips' operation cache would only hold memory.
sharp.cache(false);

export const CONTENT_TYPES: Record<ImageFormat, string> = {
  png: "image/png",
  jpeg: "image/jpeg",
  webp: "image/webp",
};

export interface EncodeOptions {
  format: ImageFormat;
  /** 1..100; jpeg and webp only (PNG is lossless and ignores it). */
  quality?: number;
}

export interface EncodedImage {
  data: Uint8Array;
  contentType: string;
}

export function isImageFormat(value: unknown): value is ImageFormat {
  return typeof value === "string" && (IMAGE_FORMATS as readonly string[]).includes(value);
}

/** PNG's fixed settings: zlib level 6 with adaptive row filters, as png.ts did; truecolour, no palette. */
const PNG_OPTIONS = { compressionLevel: 6, adaptiveFiltering: true, palette: false, progressive: false, force: true } as const;

/** Encodes 8-bit interleaved RGB. A failure of the encoder is INFERENCE_FAILED, not retryable. */
export async function encodeImage(image: RgbImage, options: EncodeOptions): Promise<EncodedImage> {
  const { width, height, data } = image;
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1 || data.length !== width * height * 3) {
    throw new RangeError(`encode: ${data.length} bytes for ${width}x${height} RGB (want ${width * height * 3})`);
  }
  const quality = options.quality ?? DEFAULT_QUALITY;
  if (!Number.isInteger(quality) || quality < 1 || quality > 100) throw new RangeError(`encode: quality must be an integer 1..100 (got ${quality})`);
  const input = sharp(data, { raw: { width, height, channels: 3 } });
  let out: Buffer;
  try {
    switch (options.format) {
      case "png":
        out = await input.png(PNG_OPTIONS).toBuffer();
        break;
      case "jpeg":
        out = await input
          .jpeg({
            quality,
            progressive: false,
            chromaSubsampling: "4:2:0",
            optimiseCoding: true,
            mozjpeg: false,
            trellisQuantisation: false,
            overshootDeringing: false,
            optimiseScans: false,
            quantisationTable: 0,
            force: true,
          })
          .toBuffer();
        break;
      case "webp":
        out = await input
          .webp({ quality, lossless: false, nearLossless: false, smartSubsample: false, effort: 4, preset: "default", force: true })
          .toBuffer();
        break;
      default:
        throw new InferenceError("INVALID_PARAMS", `encode: unknown output_format ${JSON.stringify(options.format)}`, false);
    }
  } catch (err) {
    if (err instanceof InferenceError) throw err;
    throw new InferenceError("INFERENCE_FAILED", `encoding ${options.format}: ${err instanceof Error ? err.message : String(err)}`, false, { cause: err });
  }
  // A copy the thread owns whole: sharp's Buffer wraps native memory, which is not moved to the
  // worker's main thread as a transfer can move an ordinary ArrayBuffer.
  return { data: Uint8Array.from(out), contentType: CONTENT_TYPES[options.format] };
}
