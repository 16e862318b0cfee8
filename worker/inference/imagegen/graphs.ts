// The three graphs of imagegen-tiny, built in memory from code and seeded weights: nothing is
// downloaded, and every worker builds byte-identical models.

import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { buildDecoderGraph } from "./decoder-graph.js";
import { buildDenoiserGraph } from "./denoiser-graph.js";
import { buildEncoderGraph } from "./encoder-graph.js";

export interface ImagegenGraphs {
  encoder: Uint8Array;
  denoiser: Uint8Array;
  decoder: Uint8Array;
}

export function buildImagegenGraphs(): ImagegenGraphs {
  return { encoder: buildEncoderGraph(), denoiser: buildDenoiserGraph(), decoder: buildDecoderGraph() };
}

/** Writes the graphs as .onnx files, e.g. to look at them in Netron. */
export async function writeImagegenGraphs(dir: string, graphs: ImagegenGraphs = buildImagegenGraphs()): Promise<string[]> {
  await mkdir(dir, { recursive: true });
  const files: string[] = [];
  for (const [name, bytes] of Object.entries(graphs)) {
    const file = join(dir, `imagegen-tiny-${name}.onnx`);
    await writeFile(file, bytes);
    files.push(file);
  }
  return files;
}
