// Which outcomes and revocations may touch an item at all, before the batch rules
// (batch-state.ts) decide what they mean. An outcome counts only when its token was issued by
// this fleet's coordinator for that item to the worker that sends it (checked against the
// token's MAC, see lease-tokens.ts) and, live, when it is the item's current attempt. Anything
// else is refused here: nothing of it reaches the item, the ledger, the attempt slots or the
// learned estimates.
//
// Live and replay differ in one rule only: a replay has no current attempts (assignments are not
// stored), so there an issued, unclosed token of the sender counts. The live run is stricter;
// what a replay may count beyond it is still an attempt that this very worker was given.

import type { ActiveBatch } from "./batch-state.js";
import type { LeaseTokens } from "./lease-tokens.js";

export type FenceReason = "forged_token" | "wrong_worker" | "not_current";
export const FENCE_REASONS: readonly FenceReason[] = ["forged_token", "wrong_worker", "not_current"];

export type Fence = { ok: true; holder: string } | { ok: false; reason: FenceReason; holder?: string };

/**
 * `sender` is the worker id an outcome message names (undefined for a revocation, which the
 * coordinator writes for whoever holds the attempt). `batch` is the running batch, if any.
 */
export function fence(tokens: LeaseTokens, batchId: string, index: number, token: string, sender: string | undefined, batch: ActiveBatch | undefined, live: boolean): Fence {
  const holder = tokens.holder(token, batchId, index);
  if (holder === undefined) return { ok: false, reason: "forged_token" };
  if (sender !== undefined && holder !== sender) return { ok: false, reason: "wrong_worker", holder };
  if (live) {
    const slot = batch?.items[index];
    const current = slot?.lease;
    // A hedged item has two current attempts (its copy on another worker): either may report.
    const isOpen = (a: typeof current) => a !== undefined && a.token === token && a.workerId === holder;
    if (current && !isOpen(current) && !isOpen(slot.hedge)) return { ok: false, reason: "not_current", holder };
  }
  return { ok: true, holder };
}
