// Messages between the backend (main thread) and its inference threads. Everything crosses
// by structured clone; artifact bytes are transferred, not copied.

import type { ModelManifest } from "../../shared/manifest.js";
import type { ArtifactData, InferenceErrorCode } from "./backend.js";
import type { ImagegenGraphs } from "./imagegen/graphs.js";

export interface ThreadInit {
  /** The imagegen-tiny graphs, built once by the backend and shared with every thread. */
  imagegen: ImagegenGraphs;
  /** Models from the model directory: manifest and absolute .onnx path. */
  localModels: { manifest: ModelManifest; modelPath: string }[];
  executionProviders: string[];
  intraOpThreads: number;
  /** Models kept loaded per thread; the least recently used one is released beyond this. */
  maxResidentModels: number;
}

export interface RunItem {
  jobId: string;
  params: Record<string, unknown>;
}

/**
 * One unit of work: a single item, or a group of queued items of one model and one shape that
 * the thread runs as one batch (dynamic batching).
 */
export interface RunRequest {
  type: "run";
  groupId: number;
  model: string;
  items: RunItem[];
  /** Int32Array view over it, one entry per item: 0 = carry on, 1 = drop that item at the next check. */
  cancel: SharedArrayBuffer;
}

/** Release a model's sessions (defragmentation); answered with "evicted" after any group running before it. */
export interface EvictRequest {
  type: "evict";
  requestId: number;
  model: string;
}

export type ToThread = RunRequest | EvictRequest | { type: "close" };

export interface RunStats {
  /** imagegen-tiny: denoiser session runs the group took (one per step, whatever its size). */
  denoiserCalls?: number;
}

export type ItemResult =
  | { jobId: string; ok: true; artifacts: ArtifactData[] }
  | { jobId: string; ok: false; code: InferenceErrorCode; message: string; retryable: boolean };

export type FromThread =
  | { type: "ready" }
  /** A group is over: one result per item, in the request's order. */
  | { type: "done"; groupId: number; items: ItemResult[]; stats: RunStats; resident: string[]; loads: { model: string; seconds: number }[] }
  | { type: "log"; level: "info" | "warn" | "error"; msg: string; fields?: Record<string, unknown> }
  /** An EvictRequest is done: whether the thread held the model, and what it holds now. */
  | { type: "evicted"; requestId: number; had: boolean; resident: string[] }
  | { type: "closed" };
