// The console's pieces that need no browser: the VRAM split of GET /v1/workers, the batch list
// entries with and without progress fields, and the console's security headers.

import { test } from "node:test";
import assert from "node:assert/strict";
import { consoleSecurityHeaders } from "../../gateway/console/routes.js";
import { batchSummaryJson, workerJson } from "../../gateway/fleet-json.js";
import { BatchState, WorkerState, type Batch, type Worker } from "../../proto/gen/shoal/v1/shoal.js";

const GB = 1e9;

function worker(gpus: Worker["gpus"]): Worker {
  return { id: "w1", state: WorkerState.WORKER_STATE_READY, gpus, residentModels: ["m"], itemsInFlight: 2, itemsDone: 5, hostname: "h", lastHeartbeatAt: new Date(0), models: ["m"] };
}

test("gateway console - a GPU's VRAM splits into used + reserved + available = total", () => {
  const w = workerJson(worker([{ index: 0, name: "H200", vramTotalBytes: 80 * GB, vramFreeBytes: 60 * GB, vramReservedBytes: 15 * GB, source: "nvidia-smi" }]));
  assert.equal(w.state, "ready");
  const g = w.gpus[0]!;
  assert.deepEqual([g.vram_used_bytes, g.vram_reserved_bytes, g.vram_available_bytes], [20 * GB, 15 * GB, 45 * GB]);
  assert.equal(g.vram_used_bytes + g.vram_reserved_bytes + g.vram_available_bytes, g.vram_total_bytes);
});

test("gateway console - reservations above what is free, or free above total, never make a bar negative", () => {
  const w = workerJson(worker([{ index: 0, name: "g", vramTotalBytes: 10 * GB, vramFreeBytes: 12 * GB, vramReservedBytes: 20 * GB, source: "budget" }]));
  const g = w.gpus[0]!;
  for (const v of [g.vram_used_bytes, g.vram_reserved_bytes, g.vram_available_bytes]) assert.ok(v >= 0, String(v));
  assert.equal(g.vram_used_bytes + g.vram_reserved_bytes + g.vram_available_bytes, 10 * GB);
});

test("gateway console - a batch in the list carries queue position and ETA: 0 and null when the coordinator gives none", () => {
  const b: Batch = { id: "b_1", state: BatchState.BATCH_STATE_QUEUED, total: 3, succeeded: 0, failed: 0, cancelled: 0, results: [], createdAt: new Date(1000), completedAt: undefined, labels: { team: "a" }, running: 0, priority: 0, queuePosition: 0, estimatedCompletionAt: undefined };
  const plain = batchSummaryJson(b);
  assert.equal(plain.queue_position, 0);
  assert.equal(plain.estimated_completion_at, null);
  assert.equal("results" in plain, false);
  const eta = new Date(5000);
  const withProgress = batchSummaryJson({ ...b, queuePosition: 4, estimatedCompletionAt: eta } as Batch);
  assert.equal(withProgress.queue_position, 4);
  assert.equal(withProgress.estimated_completion_at, eta.toISOString());
});

test("gateway console - security headers: no inline script, nosniff, no framing; a --public-url origin may serve images", () => {
  const h = consoleSecurityHeaders("");
  assert.match(h["content-security-policy"]!, /script-src 'self';/);
  assert.doesNotMatch(h["content-security-policy"]!, /unsafe/);
  assert.match(h["content-security-policy"]!, /frame-ancestors 'none'/);
  assert.equal(h["x-content-type-options"], "nosniff");
  assert.match(consoleSecurityHeaders("https://img.example.com/base")["content-security-policy"]!, /img-src 'self' https:\/\/img\.example\.com;/);
});
