// Deterministic weights for the imagegen-tiny graphs. Each tensor draws from its own generator
// seeded by its name, so adding or resizing one tensor never changes the others (and so never
// changes pictures that did not involve it).

import type { GraphBuilder } from "../onnx-builder.js";
import { fnv1a32, Prng } from "./prng.js";

/** Bumped when the weights change on purpose; part of every seed. */
export const WEIGHTS_VERSION = "imagegen-tiny/1";

export function normalWeights(name: string, count: number, std: number): Float32Array {
  return new Prng(fnv1a32(`${WEIGHTS_VERSION}/${name}`)).normals(count, std);
}

/** Adds a float32 initializer of N(0, std²) values named `name`. */
export function randomInitializer(g: GraphBuilder, name: string, dims: number[], std: number): string {
  return g.initializer(name, "float32", dims, normalWeights(name, dims.reduce((a, b) => a * b, 1), std));
}
