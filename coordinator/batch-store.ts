import { createHash } from "node:crypto";
import type { KV } from "@nats-io/kv";
import { BatchState, type Batch } from "../proto/gen/shoal/v1/shoal.js";
import { BatchRecord } from "../proto/gen/shoal/v1/wire.js";
import { decodeMessage, encodeMessage } from "../shared/codec.js";

export const TERMINAL_STATES = new Set([BatchState.BATCH_STATE_COMPLETED, BatchState.BATCH_STATE_FAILED, BatchState.BATCH_STATE_CANCELLED]);

export function isTerminal(b: Batch): boolean {
  return TERMINAL_STATES.has(b.state);
}

export class FinalizeConflict extends Error {
  override readonly name = "FinalizeConflict";
  readonly code = "FINALIZE_CONFLICT";
}

/**
 * Durable batch records in a KV bucket. A record is created once (before SubmitBatch answers)
 * and replaced once, by the terminal batch with all its results, through a compare-and-set on
 * the revision it was created with: two coordinators can never both finalize a batch, and no
 * reader ever sees a terminal batch without its results.
 */
export class BatchStore {
  constructor(
    private readonly batches: KV,
    private readonly idempotency: KV,
  ) {}

  /** Stores a new batch; returns its revision. */
  create(record: BatchRecord): Promise<number> {
    return this.batches.create(record.batch!.id, encodeMessage(BatchRecord, record));
  }

  async get(batchId: string): Promise<{ record: BatchRecord; revision: number } | undefined> {
    const e = await this.batches.get(batchId);
    if (!e || e.operation !== "PUT") return undefined;
    return { record: decodeMessage(BatchRecord, `kv:${batchId}`, e.value), revision: e.revision };
  }

  /** Replaces the running record with the terminal one, if nobody else did first. */
  async finalize(record: BatchRecord, revision: number): Promise<number> {
    try {
      return await this.batches.update(record.batch!.id, encodeMessage(BatchRecord, record), revision);
    } catch (err) {
      throw new FinalizeConflict(`batch ${record.batch!.id} changed since revision ${revision}`, { cause: err });
    }
  }

  async keys(): Promise<string[]> {
    const out: string[] = [];
    for await (const k of await this.batches.keys()) out.push(k);
    return out;
  }

  /**
   * Claims an idempotency key for a batch id; returns the batch id that already owns the key,
   * or undefined when this call claimed it.
   */
  async claimIdempotencyKey(tenant: string, key: string, batchId: string): Promise<string | undefined> {
    const k = idempotencyKvKey(tenant, key);
    try {
      await this.idempotency.create(k, new TextEncoder().encode(batchId));
      return undefined;
    } catch {
      const e = await this.idempotency.get(k);
      if (e && e.operation === "PUT") return e.string();
      await this.idempotency.put(k, new TextEncoder().encode(batchId));
      return undefined;
    }
  }

  /** A key whose batch was never stored (crash between the two writes) is taken over. */
  async overwriteIdempotencyKey(tenant: string, key: string, batchId: string): Promise<void> {
    await this.idempotency.put(idempotencyKvKey(tenant, key), new TextEncoder().encode(batchId));
  }
}

function idempotencyKvKey(tenant: string, key: string): string {
  return createHash("sha256").update(`${tenant}\u0000${key}`).digest("hex");
}
