import { randomBytes } from "node:crypto";

/**
 * Batch ids sort by creation time (ListBatches pages newest first by id) and are safe as NATS
 * subject tokens and KV keys: `b_` + 10 base32 chars of milliseconds + 10 random chars.
 */
export function newBatchId(now = Date.now()): string {
  return `b_${now.toString(32).padStart(10, "0")}${randomToken(10)}`;
}

const ALPHABET = "0123456789abcdefghijklmnopqrstuv";

export function randomToken(length: number): string {
  const bytes = randomBytes(length);
  let out = "";
  for (const b of bytes) out += ALPHABET[b & 31];
  return out;
}

export const BATCH_ID = /^b_[0-9a-v]{20}$/;

/** When a batch id was made (ms since the epoch), from its first 10 characters; undefined if it is no batch id. */
export function batchIdCreatedMs(batchId: string): number | undefined {
  if (!BATCH_ID.test(batchId)) return undefined;
  return parseInt(batchId.slice(2, 12), 32);
}
/** Worker ids become NATS subject tokens and metric labels. */
export const WORKER_ID = /^[A-Za-z0-9_-]{1,64}$/;

/** Lease tokens (`<attempt>.<worker id>.<nonce><mac>`) are short; a longer one is not from a coordinator and is refused on both sides. */
export const MAX_LEASE_TOKEN_LENGTH = 128;

export function leaseAttempt(token: string): number {
  const n = Number.parseInt(token.split(".", 1)[0] ?? "", 10);
  return Number.isSafeInteger(n) && n > 0 ? n : 0;
}
