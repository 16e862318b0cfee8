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
  heartbeatIntervalMs: number;
  itemTimeoutMs: number;
  drainGraceMs: number;
  metricsPort: number;
  /** Listen address of /metrics; default 127.0.0.1. */
  metricsHost?: string;
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
