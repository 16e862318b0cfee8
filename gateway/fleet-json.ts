// The fleet and the batch list as the HTTP API answers them (GET /v1/workers, GET /v1/batches):
// the gRPC messages in snake_case, with the VRAM of each GPU split into the three parts the
// console draws as bars.

import { WorkerState, type Batch, type Worker } from "../proto/gen/shoal/v1/shoal.js";
import { batchHeadJson, type BatchJson } from "./translate.js";

export function workerStateName(s: WorkerState): "ready" | "draining" | "lost" | "unknown" {
  switch (s) {
    case WorkerState.WORKER_STATE_READY:
      return "ready";
    case WorkerState.WORKER_STATE_DRAINING:
      return "draining";
    case WorkerState.WORKER_STATE_LOST:
      return "lost";
    default:
      return "unknown";
  }
}

export function workerJson(w: Worker) {
  return {
    worker_id: w.id,
    state: workerStateName(w.state),
    hostname: w.hostname,
    models: w.models,
    resident_models: w.residentModels,
    items_in_flight: w.itemsInFlight,
    items_done: w.itemsDone,
    last_heartbeat_at: w.lastHeartbeatAt?.toISOString() ?? null,
    gpus: w.gpus.map((g) => {
      const total = g.vramTotalBytes;
      const free = Math.min(total, g.vramFreeBytes);
      // Reservations are taken out of what the worker reports free (coordinator/vram-ledger.ts),
      // so used + reserved + available adds up to the total.
      const reserved = Math.min(free, g.vramReservedBytes);
      return {
        index: g.index,
        name: g.name,
        source: g.source,
        vram_total_bytes: total,
        vram_used_bytes: total - free,
        vram_reserved_bytes: reserved,
        vram_available_bytes: free - reserved,
      };
    }),
  };
}

/** A batch in a list: its state and counts, no results (GET /v1/batch/{id} has those). */
export function batchSummaryJson(b: Batch): Omit<BatchJson, "results"> & { labels: Record<string, string> } {
  return { ...batchHeadJson(b), labels: b.labels };
}
