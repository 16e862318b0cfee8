import { hostname } from "node:os";
import { ConfigError } from "../shared/errors.js";
import { WORKER_ID } from "../shared/ids.js";
import type { NatsSecurity } from "../shared/nats-security.js";
import type { GpuSelection } from "./gpu/vram-source.js";

/** Every field present, durations in ms, sizes in bytes: what the worker runs with. */
export interface WorkerOptions {
  natsUrl: string;
  /** NATS identity and TLS; absent: anonymous. */
  natsSecurity?: NatsSecurity;
  id: string;
  prefix: string;
  gpu: GpuSelection;
  /** VRAM budget when no GPU is measured (CPU machines). */
  vramBytes: number | undefined;
  modelDir: string | undefined;
  /** Inference threads (items computed at once). */
  threads: number;
  /** Items the coordinator may keep assigned here at once (running + queued). */
  maxInFlight: number;
  /**
   * True when --max-in-flight was not given: the worker replaces maxInFlight once its models are
   * known (defaultMaxInFlight), so batching models get whole batches to group.
   */
  maxInFlightAuto?: boolean;
  heartbeatIntervalMs: number;
  itemTimeoutMs: number;
  drainGraceMs: number;
  metricsPort: number;
  /** Listen address of /metrics; default 127.0.0.1. */
  metricsHost?: string;
  /** How often the event-loop delay metrics sample (shared/process-metrics.ts); default 250 ms. */
  eventLoopResolutionMs?: number;
  executionProviders: string[];
  /** Use the simulated backend (load tests, benchmarks): items sleep instead of computing. */
  simulate: boolean;
  /** SIMULATION: items take work_ms / this (default 1). */
  simSpeed?: number;
  /** SIMULATION: bytes per second model weights load at (0 = instantly, the default). */
  simLoadBytesPerS?: number;
  /** SIMULATION: idle loaded models keep their weights in the VRAM budget until evicted (--sim-keep-weights). */
  simKeepWeights?: boolean;
  nvidiaSmi: string;
  /** Copies of each stream and bucket a worker creates when it starts first (--replicas); 1 when absent. */
  replicas?: number;
}

/** The most items a worker holds by default, whatever its models batch (bounds queue memory and what one worker takes from a batch). */
export const DEFAULT_MAX_IN_FLIGHT_CAP = 256;

/**
 * The default --max-in-flight once the served models are known. 2 × threads lets every thread
 * have its next item waiting; where a model batches (manifest max_batch > 1) that would give the
 * worker at most 2 items per thread, so groups never form and every item pays its own assignment,
 * artifact writes and outcome message (docs/performance.md). Then the worker holds two full
 * batches per thread, threads × max(max_batch) × 2, capped at DEFAULT_MAX_IN_FLIGHT_CAP (and
 * never below 2 × threads). Simulated workers keep 2 × threads: the scheduler tests and the
 * simulated benches were written for it. The coordinator still places by VRAM, so a worker only
 * holds what its memory admits, whatever this says.
 */
export function defaultMaxInFlight(threads: number, maxBatches: readonly (number | undefined)[], simulate: boolean): number {
  const base = threads * 2;
  if (simulate) return base;
  const batch = Math.max(1, ...maxBatches.map((b) => b ?? 1));
  if (batch <= 1) return base;
  return Math.max(base, Math.min(DEFAULT_MAX_IN_FLIGHT_CAP, threads * batch * 2));
}

export function defaultWorkerId(): string {
  return `${hostname().replace(/[^A-Za-z0-9_-]/g, "-").slice(0, 40)}-${process.pid}`;
}

export function parseGpuSelection(text: string): GpuSelection {
  if (text === "auto") return { kind: "auto" };
  if (text === "none") return { kind: "none" };
  const index = Number(text);
  if (!Number.isInteger(index) || index < 0) throw new ConfigError("--gpu", `"${text}" must be auto, none or a GPU index`);
  return { kind: "index", index };
}

export function checkWorkerOptions(o: WorkerOptions): WorkerOptions {
  if (!WORKER_ID.test(o.id)) throw new ConfigError("--id", `"${o.id}" must be 1-64 of A-Z a-z 0-9 _ -`);
  if (o.heartbeatIntervalMs < 50) throw new ConfigError("--heartbeat-interval", "must be at least 50ms");
  if (o.maxInFlight < o.threads) throw new ConfigError("--max-in-flight", `must be at least --threads (${o.threads})`);
  return o;
}
