// Reads of a batch's record that find nothing, for a batch created moments ago, are read again
// before they count as "no such batch".
//
// With replicas, Shoal's KV reads go to the stream leader (allow_direct off, see
// shared/jetstream-setup.ts), but nats-server 2.10 does not promise read-after-write across a
// leader change: an old leader can still answer a get for a moment, without the writes the new
// leader took since (NATS ADR-53, "Read-after-Write": guaranteed only from 2.12 on, with a
// minimum sequence in the request). A record missing in that window reads as NOT_FOUND for a
// batch the client had just been told was accepted (the network-namespace test saw such a
// NOT_FOUND once, after a nats-server was killed and restarted; this is the suspected cause,
// not a proven one), and recovery would take the open marker of such
// a batch for one whose submit failed and remove it, so the batch would never run. A batch id
// carries its creation time (shared/ids.ts), and only a recent write can be missing this way:
// an old leader has every write from before its term ended.

import { batchIdCreatedMs } from "../shared/ids.js";
import { sleepUnlessAborted } from "../shared/sleep.js";

/** A batch created less than this long ago may be missing from a stale read. */
export const RECENT_BATCH_MS = 60_000;

/** The waits before each further read of a record that was missing (about 3 s in all). */
export const REREAD_DELAYS_MS: readonly number[] = [250, 500, 1000, 1500];

/** Whether `batchId` was created within RECENT_BATCH_MS of `nowMs` (a little clock skew allowed ahead). */
export function isRecentBatch(batchId: string, nowMs: number, recentMs = RECENT_BATCH_MS): boolean {
  const created = batchIdCreatedMs(batchId);
  return created !== undefined && created > nowMs - recentMs && created < nowMs + recentMs;
}

/**
 * Reads again, after each of `delaysMs`, while `read` finds nothing; returns the first thing it
 * finds, or undefined when every read missed (or `signal` aborted: the coordinator is stopping).
 */
export async function rereadWhileMissing<T>(read: () => Promise<T | undefined>, signal: AbortSignal, delaysMs: readonly number[] = REREAD_DELAYS_MS): Promise<T | undefined> {
  for (const ms of delaysMs) {
    await sleepUnlessAborted(ms, signal);
    if (signal.aborted) return undefined;
    const got = await read();
    if (got !== undefined) return got;
  }
  return undefined;
}
