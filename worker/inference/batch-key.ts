// Dynamic batching: which queued items may run together as one inference call with a batch
// dimension. Items share a batch when they are for the same model and have the same "shape
// key": everything that changes a tensor's shape or the number of session runs. For
// imagegen-tiny that is width, height and steps (prompt, seed, guidance scale and style may
// differ within a batch); for a generic model, the dims its inputs resolve to from the params'
// lengths. A model batches only where its manifest sets `max_batch` > 1.
//
// Pure and free of onnxruntime: the thread pool calls it on the main thread.

import { IMAGEGEN_TINY } from "../../shared/builtin-models.js";
import type { ModelManifest } from "../../shared/manifest.js";
import { imagegenRequest, imagegenShapeKey } from "./imagegen/request.js";
import { paramValues, resolveShape } from "./tensor-feeds.js";

export interface BatchKey {
  /** Equal for items that may share a batch; includes the model. */
  key: string;
  /** The most items one batch may hold. */
  maxBatch: number;
}

/** The item's batch key, or undefined when it must run alone (no batching, or bad params). */
export function batchKey(manifest: ModelManifest, params: Record<string, unknown>): BatchKey | undefined {
  const maxBatch = manifest.max_batch ?? 1;
  if (maxBatch <= 1) return undefined;
  try {
    if (manifest.builtin === true && manifest.name === IMAGEGEN_TINY.name) {
      const req = imagegenRequest(params);
      const bounded = maxBatchForPixels(maxBatch, manifest.max_batch_pixels, req.width * req.height);
      if (bounded <= 1) return undefined;
      return { key: `${manifest.name}|${imagegenShapeKey(req)}`, maxBatch: bounded };
    }
    if (!batchesAlongDim0(manifest)) return undefined;
    return { key: `${manifest.name}|${genericShapeKey(manifest, params)}`, maxBatch };
  } catch {
    return undefined; // params that do not fit: the item runs alone and fails alone
  }
}

/**
 * max_batch bounded by max_batch_pixels: how many items of `pixels` each fit one batch (at least
 * 1: an image larger than the cap runs alone).
 */
export function maxBatchForPixels(maxBatch: number, maxBatchPixels: number | undefined, pixels: number): number {
  if (maxBatchPixels === undefined || pixels <= 0) return maxBatch;
  return Math.max(1, Math.min(maxBatch, Math.floor(maxBatchPixels / pixels)));
}

/**
 * The dynamic batching rule for generic models: a model batches only when its manifest sets
 * `max_batch` > 1 and the first dimension of every input is the batch dimension, declared as 1
 * in the manifest's shape (each item is a batch of one). B items whose inputs resolve to the
 * same dims are then stacked along dim 0 into one run, and every output's first dimension must
 * come back as B: item k gets slice k, with dims [1, ...rest]. A model whose outputs do not
 * split that way runs its items one at a time.
 */
export function batchesAlongDim0(manifest: ModelManifest): boolean {
  const inputs = manifest.inputs ?? [];
  return (manifest.max_batch ?? 1) > 1 && inputs.length > 0 && inputs.every((spec) => spec.shape[0] === 1);
}

/** The dims every input of a generic model resolves to for these params. Throws INVALID_PARAMS. */
export function genericShapeKey(manifest: ModelManifest, params: Record<string, unknown>): string {
  return (manifest.inputs ?? [])
    .map((spec) => resolveShape(manifest, spec, paramValues(manifest, spec, params[spec.param]).length).join("x"))
    .join(",");
}
