// Lease tokens that carry their own proof of issue. A token names one attempt of one item and
// the worker it was given to, and ends in an HMAC under a key only the coordinator holds (kept in
// its own KV bucket, which no worker identity may read). So an outcome, a revocation or a
// worker's report of what it holds can be checked against the token alone: was this attempt of
// this item issued to this worker? That check needs no memory of assignments, which the
// coordinator does not store durably, so a replay of the results log after a restart reaches the
// same answer as the live run: a forged outcome (a guessed token, another worker's item) is
// ignored both times.
//
// Format: `<attempt>.<worker id>.<nonce><mac>`; the nonce keeps two issues of the same attempt
// number apart (an attempt withdrawn and placed again, another coordinator incarnation).

import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { Kvm } from "@nats-io/kv";
import { StorageType } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { randomToken } from "../shared/ids.js";

const MAC_CHARS = 16; // 96 bits of base64url: not guessable by publishing outcomes
const NONCE_EPOCH_CHARS = 6;
const KEY_NAME = "v1";

export class LeaseTokens {
  private readonly epoch = randomToken(NONCE_EPOCH_CHARS);
  private counter = 0;

  constructor(private readonly key: Uint8Array) {
    if (key.length < 32) throw new Error("a lease key needs at least 32 bytes");
  }

  /**
   * A fresh token for attempt `attempt` of item `index` of `batchId`, given to `workerId`.
   * `nonce` is for tests that need the same token twice; the coordinator never passes one.
   */
  issue(batchId: string, index: number, attempt: number, workerId: string, nonce = `${this.epoch}${(this.counter++).toString(36)}`): string {
    return `${attempt}.${workerId}.${nonce}${this.mac(batchId, index, attempt, workerId, nonce)}`;
  }

  /**
   * The worker the token was issued to, when it was issued by a coordinator holding this key
   * for that attempt of that item; undefined for anything else (forged, another item's, another
   * fleet's, a token of an older Shoal).
   */
  holder(token: string, batchId: string, index: number): string | undefined {
    const parts = token.split(".");
    if (parts.length !== 3) return undefined;
    const [attemptText, workerId, tail] = parts as [string, string, string];
    const attempt = Number(attemptText);
    if (!Number.isSafeInteger(attempt) || attempt < 1 || String(attempt) !== attemptText) return undefined;
    if (tail.length <= MAC_CHARS || workerId === "") return undefined;
    const nonce = tail.slice(0, -MAC_CHARS);
    const given = Buffer.from(tail.slice(-MAC_CHARS));
    const expected = Buffer.from(this.mac(batchId, index, attempt, workerId, nonce));
    return given.length === expected.length && timingSafeEqual(given, expected) ? workerId : undefined;
  }

  private mac(batchId: string, index: number, attempt: number, workerId: string, nonce: string): string {
    return createHmac("sha256", this.key).update(`${batchId}\n${index}\n${attempt}\n${workerId}\n${nonce}`).digest("base64url").slice(0, MAC_CHARS);
  }
}

/**
 * The key every coordinator of a fleet shares (standbys and restarts must accept each other's
 * tokens): made once, with a create that only one coordinator can win, and read by the rest.
 */
export async function loadLeaseKey(nc: NatsConnection, bucket: string, replicas = 1): Promise<Uint8Array> {
  const kvm = new Kvm(nc);
  let kv;
  try {
    kv = await kvm.create(bucket, { storage: StorageType.File, history: 1, replicas });
  } catch (err) {
    // Made earlier with another replica count (a fleet moved to a cluster): the key in it is
    // what matters, so use the bucket as it is; anything else is the create's own error.
    kv = await kvm.open(bucket).catch(() => {
      throw err;
    });
  }
  const existing = await kv.get(KEY_NAME);
  if (existing && existing.operation === "PUT" && existing.value.length >= 32) return existing.value;
  try {
    await kv.create(KEY_NAME, randomBytes(32));
  } catch {
    /* another coordinator made it first: read theirs */
  }
  const made = await kv.get(KEY_NAME);
  if (!made || made.value.length < 32) throw new Error(`lease key missing from KV bucket ${bucket}`);
  return made.value;
}
