import assert from "node:assert/strict";
import { BatchState, ItemStatus, type Batch } from "../../proto/gen/shoal/v1/shoal.js";
import { isTransient, type TestClient } from "./client.js";

export const TERMINAL = new Set([BatchState.BATCH_STATE_COMPLETED, BatchState.BATCH_STATE_FAILED, BatchState.BATCH_STATE_CANCELLED]);

/**
 * Polls GetBatch until the batch is terminal, through outages (a restarting coordinator answers
 * UNAVAILABLE for a while), and records every poll that saw a terminal batch without all of
 * its results: guarantee 3 says there must be none.
 */
export async function pollUntilTerminal(
  client: TestClient,
  batchId: string,
  opts: { timeoutMs?: number; onProgress?: (b: Batch) => void } = {},
): Promise<{ batch: Batch; partialTerminalPolls: number; polls: number }> {
  const deadline = Date.now() + (opts.timeoutMs ?? 180_000);
  let partialTerminalPolls = 0;
  let polls = 0;
  let last: Batch | undefined;
  let lastError: unknown;
  for (;;) {
    try {
      const b = await client.get(batchId);
      polls++;
      last = b;
      opts.onProgress?.(b);
      if (TERMINAL.has(b.state)) {
        if (b.results.length !== b.total) partialTerminalPolls++;
        else return { batch: b, partialTerminalPolls, polls };
      }
    } catch (err) {
      // The coordinator or NATS is down for a moment: keep polling. Any other answer
      // (NOT_FOUND above all) is a failure now, not a timeout later.
      if (!isTransient(err)) throw err;
      lastError = err;
    }
    if (Date.now() > deadline) {
      throw new Error(
        `batch ${batchId} not terminal in time; last seen ${JSON.stringify(last && { ...last, results: last.results.length })}${lastError ? `; last error: ${String(lastError)}` : ""}`,
      );
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Exactly n results, one per item in order, each in exactly one terminal state, counts agree. */
export function assertWholeBatch(batch: Batch, n: number): void {
  assert.ok(TERMINAL.has(batch.state), `batch state ${BatchState[batch.state]}`);
  assert.equal(batch.total, n);
  assert.equal(batch.results.length, n, "exactly N results");
  assert.deepEqual(batch.results.map((r) => r.index), [...Array(n).keys()], "one result per item, in order");
  const counts = { ok: 0, failed: 0, cancelled: 0 };
  for (const r of batch.results) {
    if (r.status === ItemStatus.ITEM_STATUS_SUCCEEDED) counts.ok++;
    else if (r.status === ItemStatus.ITEM_STATUS_FAILED) counts.failed++;
    else if (r.status === ItemStatus.ITEM_STATUS_CANCELLED) counts.cancelled++;
    else assert.fail(`item ${r.index} has no terminal status`);
  }
  assert.deepEqual([batch.succeeded, batch.failed, batch.cancelled], [counts.ok, counts.failed, counts.cancelled]);
}

/** How many times each item of a batch ran to success, from the workers' structured logs. */
export function executionsPerItem(logs: Record<string, unknown>[][], batchId: string): Map<number, number> {
  const runs = new Map<number, number>();
  for (const list of logs) {
    for (const l of list) {
      if (l.batchId === batchId && l.msg === "item succeeded") runs.set(Number(l.item), (runs.get(Number(l.item)) ?? 0) + 1);
    }
  }
  return runs;
}

export async function waitFor(what: string, cond: () => Promise<boolean> | boolean, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
