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

import { timingSafeEqual } from "node:crypto";
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
  if (live) {
    // The common case, one per item: the outcome of the item's open attempt. Its token is in
    // memory because this process issued it (or adopted it after checking its MAC, recovery.ts),
    // so a token equal to it carries a valid MAC for this item and its holder is the attempt's
    // worker: recomputing the HMAC (most of the fence's cost) would say the same. Compared in
    // constant time, so the comparison tells nothing about how much of a guess was right.
    const slot = batch?.items[index];
    const open = slot === undefined ? undefined : sameToken(slot.lease?.token, token) ? slot.lease : sameToken(slot.hedge?.token, token) ? slot.hedge : undefined;
    if (open) {
      if (sender !== undefined && open.workerId !== sender) return { ok: false, reason: "wrong_worker", holder: open.workerId };
      return { ok: true, holder: open.workerId };
    }
  }
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

/** Equal tokens, compared in constant time (crypto.timingSafeEqual, as lease-tokens.ts checks MACs). */
function sameToken(a: string | undefined, b: string): boolean {
  if (a === undefined || a.length !== b.length) return false;
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}
