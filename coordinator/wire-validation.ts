// Checks on what workers send. Workers are part of the fleet, but a buggy or mismatched one must
// not be able to corrupt the coordinator's state: a message that breaks these rules is dropped
// (and counted) with a reason that names the field.

import { ItemStatus } from "../proto/gen/shoal/v1/shoal.js";
import type { GpuStatus, Heartbeat, ItemOutcome, ResidentWeights } from "../proto/gen/shoal/v1/wire.js";
import { MAX_LEASE_TOKEN_LENGTH, WORKER_ID } from "../shared/ids.js";
import { ARTIFACT_URI_PREFIX } from "../shared/subjects.js";
import { MAX_REPORTED_VRAM_BYTES } from "../shared/vram-need.js";

export const ITEM_ERROR_CODES = new Set([
  "INVALID_PARAMS",
  "MODEL_NOT_FOUND",
  "OUT_OF_MEMORY",
  "WORKER_LOST",
  "TIMEOUT",
  "INFERENCE_FAILED",
  "CONTENT_POLICY",
  "CANCELLED",
]);

// Bounds on what a heartbeat may claim. A worker is trusted with what it is given, not with
// what it says it has: a claim of 2^53 bytes of VRAM would draw every item (and every tenant's
// params) to it. These sit well above any real machine (the largest GPUs have under 300 GB;
// a node has at most 16 of them) and refuse the absurd.
export const HEARTBEAT_LIMITS = {
  gpus: 64,
  /** 4 TiB per GPU. */
  vramBytesPerGpu: 4 * 2 ** 40,
  /** Items held at once; the worker's own --max-in-flight cannot go past 100,000. */
  held: 100_000,
  /** Model names listed (served, resident). */
  models: 1024,
  modelNameChars: 128,
  gpuNameChars: 256,
};
const MAX_GPUS = HEARTBEAT_LIMITS.gpus;
const MAX_HELD = HEARTBEAT_LIMITS.held;
/** Bounds no real attempt comes near; past them a figure would poison estimates and metrics. */
const MAX_VRAM_USED_BYTES = MAX_REPORTED_VRAM_BYTES; // 1 PiB
const MAX_RUN_MS = 366 * 24 * 3600 * 1000;

/** Returns why the heartbeat is unacceptable, or undefined. */
export function heartbeatProblem(subjectWorkerId: string, hb: Heartbeat): string | undefined {
  if (!WORKER_ID.test(hb.workerId)) return `worker_id: "${hb.workerId.slice(0, 80)}" is not a valid worker id`;
  if (hb.workerId !== subjectWorkerId) return `worker_id: "${hb.workerId}" does not match the subject's "${subjectWorkerId}"`;
  if (!hb.incarnation) return "incarnation: is required";
  if (hb.gpus.length === 0 || hb.gpus.length > MAX_GPUS) return `gpus: must list 1..${MAX_GPUS} GPUs (got ${hb.gpus.length})`;
  const seen = new Set<number>();
  for (const [i, g] of hb.gpus.entries()) {
    if (seen.has(g.index)) return `gpus[${i}].index: ${g.index} appears twice`;
    seen.add(g.index);
    if (!(g.vramTotalBytes > 0)) return `gpus[${i}].vram_total_bytes: must be positive`;
    if (g.vramTotalBytes > HEARTBEAT_LIMITS.vramBytesPerGpu) return `gpus[${i}].vram_total_bytes: ${g.vramTotalBytes} is more than the ${HEARTBEAT_LIMITS.vramBytesPerGpu} bytes (4 TiB) a GPU may claim`;
    if (g.name.length > HEARTBEAT_LIMITS.gpuNameChars) return `gpus[${i}].name: longer than ${HEARTBEAT_LIMITS.gpuNameChars} characters`;
    if (g.vramFreeBytes > g.vramTotalBytes) return `gpus[${i}].vram_free_bytes: ${g.vramFreeBytes} exceeds the total ${g.vramTotalBytes}`;
  }
  if (hb.inFlight.length > MAX_HELD) return `in_flight: more than ${MAX_HELD} entries`;
  if (hb.maxInFlight > MAX_HELD) return `max_in_flight: more than ${MAX_HELD}`;
  for (const [field, list] of [["models", hb.models], ["resident_models", hb.residentModels]] as const) {
    if (list.length > HEARTBEAT_LIMITS.models) return `${field}: more than ${HEARTBEAT_LIMITS.models} entries`;
    const long = list.findIndex((m) => m.length === 0 || m.length > HEARTBEAT_LIMITS.modelNameChars);
    if (long >= 0) return `${field}[${long}]: must be 1..${HEARTBEAT_LIMITS.modelNameChars} characters`;
  }
  return residentWeightsProblem(hb.residentWeights ?? [], hb.gpus);
}

/** Resident weights (heartbeat, evict reply): bounded, on a GPU the report lists, within its size. */
export function residentWeightsProblem(list: readonly ResidentWeights[], gpus: readonly GpuStatus[]): string | undefined {
  if (list.length > HEARTBEAT_LIMITS.models) return `resident_weights: more than ${HEARTBEAT_LIMITS.models} entries`;
  for (const [i, r] of list.entries()) {
    if (r.model.length === 0 || r.model.length > HEARTBEAT_LIMITS.modelNameChars) return `resident_weights[${i}].model: must be 1..${HEARTBEAT_LIMITS.modelNameChars} characters`;
    const g = gpus.find((x) => x.index === r.gpuIndex);
    if (!g) return `resident_weights[${i}].gpu_index: ${r.gpuIndex} is not one of the reported GPUs`;
    if (r.weightsBytes > g.vramTotalBytes) return `resident_weights[${i}].weights_bytes: ${r.weightsBytes} exceeds the GPU's total ${g.vramTotalBytes}`;
  }
  return undefined;
}

/** Returns why the outcome is unacceptable, or undefined. `batchId` comes from the subject. */
export function outcomeProblem(batchId: string, o: ItemOutcome): string | undefined {
  const lease = o.lease;
  if (!lease) return "lease: is required";
  if (lease.batchId !== batchId) return `lease.batch_id: "${lease.batchId}" does not match the subject's batch "${batchId}"`;
  if (!lease.token || lease.token.length > MAX_LEASE_TOKEN_LENGTH) return `lease.token: must be 1..${MAX_LEASE_TOKEN_LENGTH} characters`;
  if (![ItemStatus.ITEM_STATUS_SUCCEEDED, ItemStatus.ITEM_STATUS_FAILED, ItemStatus.ITEM_STATUS_CANCELLED].includes(o.status)) {
    return `status: ${o.status} is not a terminal item status`;
  }
  if (o.status === ItemStatus.ITEM_STATUS_FAILED && !o.error) return "error: a FAILED outcome needs an error";
  if (o.error && !ITEM_ERROR_CODES.has(o.error.code)) return `error.code: "${o.error.code.slice(0, 40)}" is not one of ${[...ITEM_ERROR_CODES].join(", ")}`;
  if (!(o.vramUsedBytes <= MAX_VRAM_USED_BYTES)) return `vram_used_bytes: ${o.vramUsedBytes} is more than ${MAX_VRAM_USED_BYTES}`;
  if (!(o.runMs <= MAX_RUN_MS)) return `run_ms: ${o.runMs} is more than a year`;
  for (const [i, a] of o.artifacts.entries()) {
    // Under the attempt's own name (see worker/artifact-writer.ts): an outcome cannot claim
    // another batch's, another item's or another attempt's artifact as its own.
    if (!a.uri.startsWith(`${ARTIFACT_URI_PREFIX}${batchId}/${lease.index}/${lease.token}/`)) return `artifacts[${i}].uri: must be under this attempt's artifacts (${batchId}/${lease.index}/<token>/)`;
    if (!/^[0-9a-f]{64}$/.test(a.sha256)) return `artifacts[${i}].sha256: must be 64 hex characters`;
  }
  return undefined;
}
