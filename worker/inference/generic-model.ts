// A model from the model directory, run as its manifest says: each `inputs` entry turns a param
// into a tensor (dtype, shape with at most one -1 inferred from the param's length), each
// `outputs` entry becomes a JSON artifact {"dims", "type", "data"}. Without `outputs`, every
// output of the graph is written, named after the output.

import type ort from "onnxruntime-node";
import type { ModelManifest, TensorInputSpec } from "../../shared/manifest.js";
import { InferenceError, type ArtifactData } from "./backend.js";
import type { Runtime } from "./ort-runtime.js";

export const JSON_CONTENT_TYPE = "application/json";

export class GenericModel {
  private constructor(
    private readonly runtime: Runtime,
    private readonly manifest: ModelManifest,
    private readonly session: ort.InferenceSession,
  ) {}

  static async load(runtime: Runtime, manifest: ModelManifest, modelPath: string): Promise<GenericModel> {
    return new GenericModel(runtime, manifest, await runtime.createSession(modelPath));
  }

  async run(params: Record<string, unknown>, shouldStop: () => boolean): Promise<ArtifactData[]> {
    const feeds = buildFeeds(this.runtime.ort, this.manifest, params);
    if (shouldStop()) throw new InferenceError("CANCELLED", `${this.manifest.name}: cancelled`, false);
    const results = await this.session.run(feeds);
    // A single run cannot be interrupted; a cancel that arrived meanwhile still wins.
    if (shouldStop()) throw new InferenceError("CANCELLED", `${this.manifest.name}: cancelled`, false);
    const specs = this.manifest.outputs ?? this.session.outputNames.map((name) => ({ name, artifact: name }));
    const artifacts = specs.map((spec) => {
      const tensor = results[spec.name];
      if (tensor === undefined) {
        throw new InferenceError("INFERENCE_FAILED", `${this.manifest.name}: the model has no output "${spec.name}"`, false);
      }
      return { name: spec.artifact, contentType: JSON_CONTENT_TYPE, data: tensorJson(tensor) };
    });
    for (const tensor of Object.values(results)) tensor.dispose();
    return artifacts;
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}

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

function paramValues(manifest: ModelManifest, spec: TensorInputSpec, raw: unknown): number[] {
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

/** A tensor as the JSON artifact {"dims":[...],"type":"float32","data":[...]}. */
export function tensorJson(tensor: ort.Tensor): Uint8Array {
  const data = tensor.data;
  let values: unknown[];
  if (data instanceof BigInt64Array || data instanceof BigUint64Array) values = Array.from(data, (v) => Number(v));
  else if (Array.isArray(data)) values = data;
  else values = Array.from(data as ArrayLike<number>, (v) => (Number.isFinite(v) ? v : null));
  return new TextEncoder().encode(JSON.stringify({ dims: [...tensor.dims], type: tensor.type, data: values }));
}
