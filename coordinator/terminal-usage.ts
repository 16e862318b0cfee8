// A finished batch's usage (its items by final status, its GPU-seconds) is counted AFTER its
// terminal record is stored, off the path of the batch's answer: counted before the record, the
// tenant's usage key (shared by every submit and terminal write of the tenant's day) was a write
// every batch waited for at its end (docs/performance.md, issue 13).
//
// What keeps it counted exactly once is the batch's open marker: it is removed only after the
// count is stored. A coordinator killed between the record and the count leaves a terminal record
// whose marker is still there, and the next start counts it (recovery.ts). The count itself is
// idempotent by batch id (the usage key lists the ids it counted), and an id leaves that list only
// after the marker is removed, so a count repeated after a crash adds nothing.

import type { Batch } from "../proto/gen/shoal/v1/shoal.js";
import { errorMessage } from "../shared/errors.js";
import type { Logger } from "../shared/logger.js";
import type { CoordinatorMetrics } from "./metrics.js";
import type { BatchUsage, UsageStore } from "./usage.js";
import { sleepUnlessAborted } from "../shared/sleep.js";

/**
 * TEST HOOK, for crash-recovery tests only: when SHOAL_TEST_HOLD_USAGE_COUNT_MS is set, the
 * coordinator waits that long after a terminal record is stored before counting its usage, so a
 * test can kill it -9 between the two writes. Nothing else uses this variable.
 */
export const HOLD_USAGE_COUNT_ENV = "SHOAL_TEST_HOLD_USAGE_COUNT_MS";

export interface TerminalUsageDeps {
  usage: () => UsageStore;
  /** Removes the batch's open marker (batch-store.ts). */
  clearOpen: (batchId: string) => Promise<void>;
  metrics: CoordinatorMetrics | undefined;
  tenantLabel: (tenant: string) => string;
  log: Logger;
  /** Aborted when the coordinator stops: the count is left to the next start (the marker stays). */
  signal: AbortSignal;
  retryInitialMs: number;
  retryMaxMs: number;
  /** Test hook only (HOLD_USAGE_COUNT_ENV). */
  holdMs?: number;
}

/** What the count did: "counted" (now), "already" (counted before), or "stopped" (left to the next start). */
export type TerminalUsageOutcome = "counted" | "already" | "stopped";

/**
 * Counts the stored terminal batch under its tenant's day, retried until stored (or the
 * coordinator stops), then removes its open marker, then lets its id leave the usage key's list.
 * The first write is asked for before this returns its promise (no await before it), so a
 * GetUsage that comes after the batch's answer waits for it (UsageStore.list).
 */
export async function countTerminalUsage(d: TerminalUsageDeps, tenant: string, batch: Batch): Promise<TerminalUsageOutcome> {
  if (d.holdMs !== undefined && d.holdMs > 0) await sleepUnlessAborted(d.holdMs, d.signal);
  let delay = d.retryInitialMs;
  let added: BatchUsage | undefined;
  for (let attempt = 1; ; attempt++) {
    if (d.signal.aborted) return "stopped";
    try {
      added = await d.usage().recordBatch(tenant, batch);
      break;
    } catch (err) {
      // Full jitter, as the terminal write's retries: many batches failing together spread out.
      const wait = Math.round(delay / 2 + Math.random() * (delay / 2));
      d.log.warn({ batchId: batch.id, attempt, retryInMs: wait, err: errorMessage(err) }, "usage of a finished batch not counted yet; retrying (its open marker stays until it is)");
      await sleepUnlessAborted(wait, d.signal);
      delay = Math.min(d.retryMaxMs, delay * 2);
    }
  }
  if (added) d.metrics?.tenantUsage(d.tenantLabel(tenant), added);
  try {
    await d.clearOpen(batch.id);
  } catch (err) {
    // The marker stays, and so does the id in the key's list: the next start counts the batch
    // again, which adds nothing, and removes the marker then.
    d.log.warn({ batchId: batch.id, err: errorMessage(err) }, "open marker not removed; the next start removes it");
    return added ? "counted" : "already";
  }
  d.usage().countSettled(tenant, batch);
  return added ? "counted" : "already";
}

/** The hold of the test hook, from the environment (undefined when unset or not a number). */
export function holdUsageCountMs(env: NodeJS.ProcessEnv = process.env): number | undefined {
  return holdMsFromEnv(HOLD_USAGE_COUNT_ENV, env);
}

/** A test hook's hold in ms from the environment variable `name` (undefined when unset or not a number). */
export function holdMsFromEnv(name: string, env: NodeJS.ProcessEnv = process.env): number | undefined {
  const v = env[name];
  if (v === undefined || v === "") return undefined;
  const n = Number(v);
  return Number.isFinite(n) && n >= 0 ? n : undefined;
}
