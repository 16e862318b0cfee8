// A model from the model directory, run as its manifest says: each `inputs` entry turns a param
// into a tensor (dtype, shape with at most one -1 inferred from the param's length), each
// `outputs` entry becomes a JSON artifact {"dims", "type", "data"}. Without `outputs`, every
// output of the graph is written, named after the output. Models whose manifest allows it
// (`max_batch`, see `batchesAlongDim0`) run several queued items as one batch.

import type ort from "onnxruntime-node";
import type { ModelManifest } from "../../shared/manifest.js";
import { InferenceError, type ArtifactData } from "./backend.js";
import { batchesAlongDim0 } from "./batch-key.js";
import { toInferenceError, type Runtime } from "./ort-runtime.js";
import { buildFeeds } from "./tensor-feeds.js";

export const JSON_CONTENT_TYPE = "application/json";

/** What one item of a batch came to: its artifacts, or why it has none. */
export type ItemOutcome = ArtifactData[] | InferenceError;

type Feeds = Record<string, ort.Tensor>;
type FeedData = Float32Array | Int32Array | BigInt64Array;

export class GenericModel {
  /** Cleared once a batched run failed or its outputs did not split per item: from then on, items run alone. */
  private batching = true;

  private constructor(
    private readonly runtime: Runtime,
    private readonly manifest: ModelManifest,
    private readonly session: ort.InferenceSession,
    private readonly log: (msg: string, fields: Record<string, unknown>) => void,
  ) {}

  static async load(
    runtime: Runtime,
    manifest: ModelManifest,
    modelPath: string,
    log: (msg: string, fields: Record<string, unknown>) => void = () => {},
  ): Promise<GenericModel> {
    return new GenericModel(runtime, manifest, await runtime.createSession(modelPath), log);
  }

  async run(params: Record<string, unknown>, shouldStop: () => boolean): Promise<ArtifactData[]> {
    const [outcome] = await this.runBatch([params], () => shouldStop());
    if (outcome instanceof InferenceError) throw outcome;
    return outcome!;
  }

  /**
   * Runs several items: as one batch where the model batches along dim 0 (see
   * `batchesAlongDim0`) and their inputs have the same dims, otherwise one after another.
   * `shouldStop(i)` is polled per item before and after the run; a stopped item is CANCELLED.
   * A param that does not fit fails only its own item.
   */
  async runBatch(paramsList: readonly Record<string, unknown>[], shouldStop: (index: number) => boolean): Promise<ItemOutcome[]> {
    const outcomes: (ItemOutcome | undefined)[] = paramsList.map(() => undefined);
    const feeds = new Map<number, Feeds>();
    paramsList.forEach((params, i) => {
      try {
        feeds.set(i, buildFeeds(this.runtime.ort, this.manifest, params));
      } catch (err) {
        outcomes[i] = toError(err, this.manifest);
      }
    });
    const live = [...feeds.keys()].filter((i) => !this.stopped(i, shouldStop, outcomes));
    const sameDims = live.every((i) => sameFeedDims(feeds.get(i)!, feeds.get(live[0]!)!));
    if (live.length > 1 && sameDims && this.batching && batchesAlongDim0(this.manifest)) {
      const batched = await this.runStacked(live.map((i) => feeds.get(i)!));
      if (batched !== undefined) {
        live.forEach((i, k) => {
          if (!this.stopped(i, shouldStop, outcomes)) outcomes[i] = batched[k]!;
        });
        return outcomes.map((o) => o ?? cancelled(this.manifest));
      }
    }
    for (const i of live) {
      if (this.stopped(i, shouldStop, outcomes)) continue;
      try {
        const artifacts = await this.runOne(feeds.get(i)!);
        if (!this.stopped(i, shouldStop, outcomes)) outcomes[i] = artifacts;
      } catch (err) {
        outcomes[i] = toError(err, this.manifest);
      }
    }
    return outcomes.map((o) => o ?? cancelled(this.manifest));
  }

  async release(): Promise<void> {
    await this.session.release();
  }

  /** Whether item i has been asked to stop; marks it CANCELLED if so. A single run cannot be interrupted; a cancel that arrived meanwhile still wins. */
  private stopped(i: number, shouldStop: (index: number) => boolean, outcomes: (ItemOutcome | undefined)[]): boolean {
    if (!shouldStop(i)) return false;
    outcomes[i] = cancelled(this.manifest);
    return true;
  }

  private async runOne(feeds: Feeds): Promise<ArtifactData[]> {
    const results = await this.session.run(feeds);
    try {
      return this.outputSpecs().map((spec) => ({ name: spec.artifact, contentType: JSON_CONTENT_TYPE, data: tensorJson(this.output(results, spec.name)) }));
    } finally {
      for (const tensor of Object.values(results)) tensor.dispose();
    }
  }

  /**
   * One run for items whose feeds have equal dims, stacked along dim 0. Undefined when the model
   * turns out not to batch (the run fails, or an output does not come back with the batch as its
   * first dim): the caller then runs the items one at a time, as this model will from now on.
   */
  private async runStacked(items: Feeds[]): Promise<ItemOutcome[] | undefined> {
    const b = items.length;
    const stacked: Feeds = {};
    for (const name of Object.keys(items[0]!)) {
      const first = items[0]![name]!;
      const per = first.size;
      const one = first.data as FeedData;
      const data = new (one.constructor as new (n: number) => FeedData)(per * b);
      items.forEach((feeds, k) => (data as Float32Array).set(feeds[name]!.data as Float32Array, k * per));
      // The cast only picks one of the constructor's overloads; type and data match at run time.
      stacked[name] = new this.runtime.ort.Tensor(first.type as "float32", data as Float32Array, [b, ...first.dims.slice(1)]);
    }
    const stopBatching = (why: string, fields: Record<string, unknown>): undefined => {
      this.batching = false;
      this.log(`${why}; this model's items run one at a time from now on`, { model: this.manifest.name, batch: b, ...fields });
      return undefined;
    };
    let results: ort.InferenceSession.ReturnType;
    try {
      results = await this.session.run(stacked);
    } catch (err) {
      return stopBatching("a batched run failed", { err: (err as Error).message });
    }
    try {
      const specs = this.outputSpecs();
      const tensors = specs.map((spec) => this.output(results, spec.name));
      const odd = tensors.find((t) => t.dims[0] !== b);
      if (odd !== undefined) return stopBatching("a batched run's output does not have the batch as its first dim", { dims: [...odd.dims] });
      return items.map((_, k) =>
        specs.map((spec, o) => {
          const t = tensors[o]!;
          const per = t.size / b;
          const data = (t.data as unknown as { slice(start: number, end: number): typeof t.data }).slice(k * per, (k + 1) * per);
          return { name: spec.artifact, contentType: JSON_CONTENT_TYPE, data: tensorJson({ dims: [1, ...t.dims.slice(1)], type: t.type, data }) };
        }),
      );
    } catch (err) {
      const e = toError(err, this.manifest);
      return items.map(() => e);
    } finally {
      for (const tensor of Object.values(results)) tensor.dispose();
    }
  }

  private outputSpecs(): { name: string; artifact: string }[] {
    return this.manifest.outputs ?? this.session.outputNames.map((name) => ({ name, artifact: name }));
  }

  private output(results: ort.InferenceSession.ReturnType, name: string): ort.Tensor {
    const tensor = results[name];
    if (tensor === undefined) throw new InferenceError("INFERENCE_FAILED", `${this.manifest.name}: the model has no output "${name}"`, false);
    return tensor;
  }
}

function sameFeedDims(a: Feeds, b: Feeds): boolean {
  return Object.keys(a).every((name) => a[name]!.dims.join("x") === b[name]?.dims.join("x"));
}

function cancelled(manifest: ModelManifest): InferenceError {
  return new InferenceError("CANCELLED", `${manifest.name}: cancelled`, false);
}

function toError(err: unknown, manifest: ModelManifest): InferenceError {
  return toInferenceError(err, `running ${manifest.name}`);
}

/** A tensor as the JSON artifact {"dims":[...],"type":"float32","data":[...]}. */
export function tensorJson(tensor: Pick<ort.Tensor, "dims" | "type" | "data">): Uint8Array {
  const data = tensor.data;
  let values: unknown[];
  if (data instanceof BigInt64Array || data instanceof BigUint64Array) values = Array.from(data, (v) => Number(v));
  else if (Array.isArray(data)) values = data;
  else values = Array.from(data as ArrayLike<number>, (v) => (Number.isFinite(v) ? v : null));
  return new TextEncoder().encode(JSON.stringify({ dims: [...tensor.dims], type: tensor.type, data: values }));
}
