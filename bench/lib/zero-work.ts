// The zero-work workload the dispatch and peer cases put through a queue: a peak (large batches,
// all at once, as fast as the path goes) and an open-loop paced load (batches started on a
// schedule whether or not earlier ones ended) whose batch latency is the added latency of its
// items. Written against a "submit a batch and wait for all of it" function, so that Shoal
// (RunBatch) and a peer (BullMQ addBulk + completion events) run exactly the same schedule.

import { ItemStatus, type Batch } from "../../proto/gen/shoal/v1/shoal.js";
import type { TestClient } from "../../test/harness/client.js";
import { runBatch } from "./shoal.js";
import { maxOf, mean, percentile, sleep } from "./stats.js";

export function zeroItems(n: number) {
  return Array.from({ length: n }, () => ({ model: "sim-zero", params: {} }));
}

/** Runs one batch of `size` items to its end; false when it did not end before its deadline (lost). */
export type BatchRunner = (size: number) => Promise<boolean>;

export interface PeakResult {
  items: number;
  seconds: number;
  itemsPerS: number;
  /** Items of batches that did not end before their deadline. */
  lost: number;
}

/** `batches` batches of `batchSize` at once; items / (first call → last batch done). */
export async function peak(run: BatchRunner, batches: number, batchSize: number): Promise<PeakResult> {
  const t0 = performance.now();
  let end = t0;
  const done = await Promise.all(
    Array.from({ length: batches }, () =>
      run(batchSize).then((ok) => {
        if (ok) end = performance.now();
        return ok;
      }),
    ),
  );
  const lost = done.filter((ok) => !ok).length * batchSize;
  const items = batches * batchSize - lost;
  const seconds = (end - t0) / 1000;
  return { items, seconds, itemsPerS: seconds > 0 ? items / seconds : 0, lost };
}

export interface PacedShape {
  itemsPerS: number;
  batchSize: number;
  intervalMs: number;
  batches: number;
  seconds: number;
}

/** Batches of about 1/`batchesPerSecond` of the rate, started every 1/`batchesPerSecond` s, for `seconds`. */
export function pacedShape(itemsPerS: number, seconds: number, batchesPerSecond: number): PacedShape {
  const batchSize = Math.max(1, Math.round(itemsPerS / batchesPerSecond));
  const intervalMs = (1000 * batchSize) / itemsPerS;
  const batches = Math.max(1, Math.floor((seconds * 1000) / intervalMs));
  return { itemsPerS, batchSize, intervalMs, batches, seconds };
}

export interface PacedResult {
  shape: PacedShape;
  items: number;
  lost: number;
  /** Items / (first start → last end). */
  achievedItemsPerS: number;
  /** Per batch: call start → every item of it done, as its caller sees it. */
  batchLatencyMs: number[];
}

/** Open loop: batch k starts at k × intervalMs whether or not earlier ones ended. */
export async function paced(run: BatchRunner, shape: PacedShape): Promise<PacedResult> {
  const latencies: number[] = [];
  const calls: Promise<void>[] = [];
  let lost = 0;
  const start = performance.now();
  let lastDone = start;
  for (let k = 0; k < shape.batches; k++) {
    const wait = start + k * shape.intervalMs - performance.now();
    if (wait > 0) await sleep(wait);
    const s = performance.now();
    calls.push(
      run(shape.batchSize).then((ok) => {
        if (!ok) {
          lost += shape.batchSize;
          return;
        }
        const e = performance.now();
        lastDone = Math.max(lastDone, e);
        latencies.push(e - s);
      }),
    );
  }
  await Promise.all(calls);
  const items = shape.batches * shape.batchSize - lost;
  return { shape, items, lost, achievedItemsPerS: items / Math.max(1e-9, (lastDone - start) / 1000), batchLatencyMs: latencies };
}

export function latencySummary(ms: number[]) {
  return { count: ms.length, p50: percentile(ms, 50), p90: percentile(ms, 90), p99: percentile(ms, 99), max: maxOf(ms), mean: mean(ms) };
}

/**
 * A BatchRunner over Shoal's RunBatch with sim-zero items. Every item of a batch that ended must
 * have succeeded (else it throws); each succeeded item's queue_ms + run_ms goes to `itemQueueRun`,
 * and each batch's client-observed time to `clientMsById` (by batch id, for the step breakdown).
 */
export function shoalRunner(client: TestClient, timeoutMs: number, itemQueueRun?: number[], clientMsById?: Map<string, number>): BatchRunner {
  return async (size) => {
    const s = performance.now();
    const b: Batch | undefined = await runBatch(client, { items: zeroItems(size) }, timeoutMs);
    if (!b) return false;
    clientMsById?.set(b.id, performance.now() - s);
    if (b.succeeded !== size) throw new Error(`${b.succeeded} of ${size} sim-zero items succeeded`);
    if (itemQueueRun) for (const r of b.results) if (r.status === ItemStatus.ITEM_STATUS_SUCCEEDED) itemQueueRun.push(r.queueMs + r.runMs);
    return true;
  };
}
