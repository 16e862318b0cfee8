// Tiny generic models for tests, built with our own ONNX writer: `scale2` computes y = 2·x on
// a float32 vector of any length. `writeFixtureModel` also lets integration tests declare any
// VRAM need, e.g. one that fits one worker's GPU but not another's.
//
// Regenerate the committed copy with: node dist/worker/inference/fixtures.js test/fixtures/models

import { mkdir, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import type { ModelManifest } from "../../shared/manifest.js";
import { GraphBuilder } from "./onnx-builder.js";

export interface FixtureModelOptions {
  /** Model name and directory name; default "scale2". */
  name?: string;
  /** The manifest's vram.weights_bytes; default 1 MiB. */
  weightsBytes?: number;
  /** The manifest's vram.activation_bytes; default 1 MiB. */
  activationBytes?: number;
  /** The factor y = factor · x; default 2. */
  factor?: number;
}

export const FIXTURE_MODEL_FILE = "model.onnx";

/** The .onnx bytes of y = factor · x, x and y float32 [n]. */
export function buildScaleModel(factor = 2): Uint8Array {
  const g = new GraphBuilder("scale");
  const x = g.input("x", "float32", ["n"]);
  const y = g.op("Mul", [x, g.initializer("factor", "float32", [1], [factor])], {}, "y");
  g.output(y, "float32", ["n"]);
  return g.serialize({ docString: `y = ${factor} * x`, producerName: "shoal-fixtures" });
}

export function fixtureManifest(options: FixtureModelOptions = {}): ModelManifest {
  const name = options.name ?? "scale2";
  const factor = options.factor ?? 2;
  return {
    name,
    version: "1",
    description: `Test fixture: multiplies a vector by ${factor}.`,
    file: FIXTURE_MODEL_FILE,
    params: { x: { type: "tensor", required: true, maxElements: 1_000_000, description: "The vector to scale." } },
    inputs: [{ name: "x", param: "x", dtype: "float32", shape: [-1] }],
    outputs: [{ name: "y", artifact: "y" }],
    vram: { weights_bytes: options.weightsBytes ?? 1024 * 1024, activation_bytes: options.activationBytes ?? 1024 * 1024 },
  };
}

/**
 * Writes `<modelDir>/<name>/manifest.json` and `model.onnx`, ready for a backend started with
 * `modelDir`. Returns the model's own directory.
 */
export async function writeFixtureModel(modelDir: string, options: FixtureModelOptions = {}): Promise<string> {
  const manifest = fixtureManifest(options);
  const dir = join(modelDir, manifest.name);
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, FIXTURE_MODEL_FILE), buildScaleModel(options.factor ?? 2));
  await writeFile(join(dir, "manifest.json"), JSON.stringify(manifest, null, 2) + "\n");
  return dir;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  const target = process.argv[2] ?? "test/fixtures/models";
  await writeFixtureModel(target);
  process.stdout.write(`wrote ${join(target, "scale2")}\n`);
}
