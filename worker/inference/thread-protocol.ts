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

export interface RunRequest {
  type: "run";
  jobId: string;
  model: string;
  params: Record<string, unknown>;
  /** Int32Array view over it: 0 = carry on, 1 = cancel at the next check. */
  cancel: SharedArrayBuffer;
}

export type ToThread = RunRequest | { type: "close" };

export interface RunStats {
  /** imagegen-tiny: denoiser calls this item took. */
  denoiserCalls?: number;
}

export type FromThread =
  | { type: "ready" }
  | { type: "done"; jobId: string; artifacts: ArtifactData[]; stats: RunStats; resident: string[] }
  | { type: "failed"; jobId: string; code: InferenceErrorCode; message: string; retryable: boolean; resident: string[] }
  | { type: "log"; level: "info" | "warn" | "error"; msg: string; fields?: Record<string, unknown> }
  | { type: "closed" };
