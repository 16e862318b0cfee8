// How an item's params become the tensors a generic model is fed: each manifest `inputs` entry
// turns a param into a tensor (dtype, shape with at most one -1 inferred from the param's
// length). Free of onnxruntime itself (the module is passed in), so the main thread can work out
// an item's shapes without loading the runtime.

import type ort from "onnxruntime-node";
import type { ModelManifest, TensorInputSpec } from "../../shared/manifest.js";
import { InferenceError } from "./backend.js";

/** Builds the feeds of a run; a param that does not fit its tensor is INVALID_PARAMS. */
export function buildFeeds(
  ortModule: typeof ort,
  manifest: ModelManifest,
  params: Record<string, unknown>,
): Record<string, ort.Tensor> {
  const feeds: Record<string, ort.Tensor> = {};
  for (const spec of manifest.inputs ?? []) {
    const values = paramValues(manifest, spec, params[spec.param]);
    const dims = resolveShape(manifest, spec, values.length);
    feeds[spec.name] = new ortModule.Tensor(spec.dtype, typedArray(manifest, spec, values), dims);
  }
  return feeds;
}

/** The param as a flat list of numbers (a scalar is a list of one; booleans are 0 and 1). */
export function paramValues(manifest: ModelManifest, spec: TensorInputSpec, raw: unknown): number[] {
  const fail = (why: string): never => {
    throw new InferenceError("INVALID_PARAMS", `${manifest.name}: params.${spec.param} ${why}`, false);
  };
  if (raw === undefined || raw === null) return fail("is required by input " + spec.name);
  const values = Array.isArray(raw) ? raw : [raw];
  return values.map((v) => {
    if (typeof v === "boolean") return v ? 1 : 0;
    if (typeof v !== "number" || !Number.isFinite(v)) return fail("must be a number or an array of numbers");
    return v;
  });
}

/** The input's shape with its -1 (if any) inferred from the number of values. */
export function resolveShape(manifest: ModelManifest, spec: TensorInputSpec, count: number): number[] {
  const known = spec.shape.filter((d) => d !== -1).reduce((a, b) => a * b, 1);
  const inferred = spec.shape.includes(-1);
  const fits = inferred ? known > 0 && count % known === 0 && count > 0 : count === known;
  if (!fits) {
    throw new InferenceError(
      "INVALID_PARAMS",
      `${manifest.name}: params.${spec.param} has ${count} values, which do not fit shape [${spec.shape.join(", ")}] of input ${spec.name}`,
      false,
    );
  }
  return spec.shape.map((d) => (d === -1 ? count / known : d));
}

function typedArray(manifest: ModelManifest, spec: TensorInputSpec, values: number[]): Float32Array | Int32Array | BigInt64Array {
  if (spec.dtype === "float32") return Float32Array.from(values);
  if (!values.every(Number.isSafeInteger)) {
    throw new InferenceError("INVALID_PARAMS", `${manifest.name}: params.${spec.param} must hold integers for ${spec.dtype} input ${spec.name}`, false);
  }
  if (spec.dtype === "int32") {
    if (values.some((v) => v < -2147483648 || v > 2147483647)) {
      throw new InferenceError("INVALID_PARAMS", `${manifest.name}: params.${spec.param} does not fit int32`, false);
    }
    return Int32Array.from(values);
  }
  return BigInt64Array.from(values, (v) => BigInt(v));
}
