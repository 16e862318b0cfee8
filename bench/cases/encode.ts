// encode: which PNG encoder the worker should use. imagegen-tiny images (drawn once by the real
// pipeline, then decoded to raw RGB) are encoded over and over by the hand-written encoder that
// served PNGs before (worker/inference/png.ts) and by sharp with the worker's settings
// (worker/inference/image-encode.ts), alternating round by round so drift hits both alike.
// sharp is measured with libvips limited to one thread (the target: the same CPU as the
// hand-written encoder, which is single-threaded JS plus zlib) and with its default threads (what
// the worker runs with). JPEG and WebP at the default quality are timed too, for context. All in
// this process; no NATS, no GPU.

import sharp from "sharp";
import { DEFAULT_QUALITY, type ImageFormat } from "../../shared/builtin-models.js";
import { encodeImage } from "../../worker/inference/image-encode.js";
import { buildImagegenGraphs } from "../../worker/inference/imagegen/graphs.js";
import { ImagegenPipeline, imagegenRequest } from "../../worker/inference/imagegen/pipeline.js";
import { encodePng, type RgbImage } from "../../worker/inference/png.js";
import { check, type CaseOutcome, type Metric } from "../lib/report.js";
import type { BenchCase, CaseContext } from "./case.js";

const TARGET_RATIO = 1;

type Encoder = (img: RgbImage) => Promise<Uint8Array>;

async function drawImages(sizes: number[], perSize: number): Promise<Map<number, RgbImage[]>> {
  const pipeline = await ImagegenPipeline.create(buildImagegenGraphs());
  try {
    const out = new Map<number, RgbImage[]>();
    for (const size of sizes) {
      const images: RgbImage[] = [];
      for (let i = 0; i < perSize; i++) {
        const req = imagegenRequest({ prompt: `bench encode ${i}: a red ceramic mug on a wooden table`, width: size, height: size, steps: 4, seed: 2000 + i });
        const png = (await pipeline.generate(req)).data;
        const raw = await sharp(png).raw().toBuffer({ resolveWithObject: true });
        if (raw.info.channels !== 3) throw new Error(`encode: decoded ${raw.info.channels} channels`);
        images.push({ width: size, height: size, data: new Uint8Array(raw.data) });
      }
      out.set(size, images);
    }
    return out;
  } finally {
    await pipeline.release();
  }
}

interface Timing {
  /** Wall seconds of every timed encode together. */
  seconds: number;
  /** Process CPU seconds (user + system, every thread) over the same encodes. */
  cpuSeconds: number;
  encodes: number;
  imagesPerS: number;
  cpuMsPerImage: number;
  bytesPerImage: number;
}

/** Times each encoder over `rounds` passes over the images, alternating which goes first. */
async function timeEncoders(images: RgbImage[], encoders: Record<string, Encoder>, rounds: number, warmRounds: number): Promise<Record<string, Timing>> {
  const names = Object.keys(encoders);
  const acc = Object.fromEntries(names.map((n) => [n, { seconds: 0, cpuSeconds: 0, encodes: 0, bytes: 0 }]));
  for (let r = -warmRounds; r < rounds; r++) {
    const order = r % 2 === 0 ? names : [...names].reverse();
    for (const name of order) {
      const cpu0 = process.cpuUsage();
      const t0 = performance.now();
      let bytes = 0;
      for (const img of images) bytes += (await encoders[name]!(img)).length;
      const seconds = (performance.now() - t0) / 1000;
      const cpu = process.cpuUsage(cpu0);
      if (r < 0) continue;
      const a = acc[name]!;
      a.seconds += seconds;
      a.cpuSeconds += (cpu.user + cpu.system) / 1e6;
      a.encodes += images.length;
      a.bytes += bytes;
    }
  }
  return Object.fromEntries(
    names.map((n) => {
      const a = acc[n]!;
      return [n, { seconds: a.seconds, cpuSeconds: a.cpuSeconds, encodes: a.encodes, imagesPerS: a.encodes / a.seconds, cpuMsPerImage: (a.cpuSeconds * 1000) / a.encodes, bytesPerImage: a.bytes / a.encodes }];
    }),
  );
}

async function run(ctx: CaseContext): Promise<CaseOutcome> {
  const p = ctx.quick ? { sizes: [64, 128], perSize: 2, rounds: 2, warmRounds: 1 } : { sizes: [256, 512], perSize: 4, rounds: 12, warmRounds: 2 };
  ctx.log(`drawing ${p.perSize} imagegen-tiny images at each of ${p.sizes.map((s) => `${s}×${s}`).join(", ")}`);
  const bySize = await drawImages(p.sizes, p.perSize);
  const defaultConcurrency = sharp.concurrency();
  const viaSharp = (format: ImageFormat, threads: number): Encoder => async (img) => {
    sharp.concurrency(threads);
    return (await encodeImage(img, { format, quality: DEFAULT_QUALITY })).data;
  };
  const encoders: Record<string, Encoder> = {
    handPng: async (img) => encodePng(img),
    sharpPng1: viaSharp("png", 1),
    sharpPng: viaSharp("png", defaultConcurrency),
    sharpJpeg: viaSharp("jpeg", defaultConcurrency),
    sharpWebp: viaSharp("webp", defaultConcurrency),
  };
  const raw: Record<string, Record<string, Timing>> = {};
  const metrics: Metric[] = [];
  try {
    for (const size of p.sizes) {
      const t = await timeEncoders(bySize.get(size)!, encoders, p.rounds, p.warmRounds);
      raw[`${size}x${size}`] = t;
      const hand = t.handPng!;
      ctx.log(
        `${size}×${size}: ` +
          Object.entries(t)
            .map(([n, v]) => `${n} ${v.imagesPerS.toFixed(1)}/s ${v.cpuMsPerImage.toFixed(2)} CPU ms ${Math.round(v.bytesPerImage)} B`)
            .join("; "),
      );
      const handRef = { label: "hand-written PNG", value: hand.imagesPerS, unit: "images/s" };
      metrics.push(
        check({
          name: `sharp PNG (1 libvips thread) ${size}×${size}`,
          value: t.sharpPng1!.imagesPerS,
          unit: "images/s",
          reference: handRef,
          ratio: t.sharpPng1!.imagesPerS / hand.imagesPerS,
          target: { of: "ratio", op: ">=", threshold: TARGET_RATIO, text: `≥ ${TARGET_RATIO} × hand-written` },
        }),
        {
          name: `sharp PNG (default threads) ${size}×${size}`,
          value: t.sharpPng!.imagesPerS,
          unit: "images/s",
          reference: handRef,
          ratio: t.sharpPng!.imagesPerS / hand.imagesPerS,
        },
        {
          name: `sharp PNG size ${size}×${size}`,
          value: t.sharpPng!.bytesPerImage,
          unit: "bytes",
          reference: { label: "hand-written PNG", value: hand.bytesPerImage, unit: "bytes" },
          ratio: t.sharpPng!.bytesPerImage / hand.bytesPerImage,
        },
        {
          name: `sharp JPEG q${DEFAULT_QUALITY} ${size}×${size}`,
          value: t.sharpJpeg!.imagesPerS,
          unit: "images/s",
          reference: handRef,
          ratio: t.sharpJpeg!.imagesPerS / hand.imagesPerS,
        },
        {
          name: `sharp WebP q${DEFAULT_QUALITY} ${size}×${size}`,
          value: t.sharpWebp!.imagesPerS,
          unit: "images/s",
          reference: handRef,
          ratio: t.sharpWebp!.imagesPerS / hand.imagesPerS,
        },
      );
    }
  } finally {
    sharp.concurrency(defaultConcurrency);
  }
  return {
    params: { sizes: p.sizes, imagesPerSize: p.perSize, rounds: p.rounds, warmUpRounds: p.warmRounds, steps: 4, quality: DEFAULT_QUALITY, sharpDefaultThreads: defaultConcurrency, sharp: sharp.versions.sharp ?? "", libvips: sharp.versions.vips },
    raw,
    metrics,
  };
}

export const encodeCase: BenchCase = {
  name: "encode",
  title: "image encoding: sharp vs the hand-written PNG encoder on imagegen-tiny images (and JPEG/WebP for context)",
  simulated: false,
  target: "sharp PNG ≥ 1 × the hand-written encoder's images/s, libvips on one thread",
  run,
};
