import { createHash } from "node:crypto";
import type { KV } from "@nats-io/kv";
import { BatchState, type Batch } from "../proto/gen/shoal/v1/shoal.js";
import { BatchRecord } from "../proto/gen/shoal/v1/wire.js";
import { decodeMessage, encodeMessage } from "../shared/codec.js";
import { BATCH_ID } from "../shared/ids.js";
import { isWrongLastSequence, storageError } from "../shared/storage-errors.js";

export const TERMINAL_STATES = new Set([BatchState.BATCH_STATE_COMPLETED, BatchState.BATCH_STATE_FAILED, BatchState.BATCH_STATE_CANCELLED]);

export function isTerminal(b: Batch): boolean {
  return TERMINAL_STATES.has(b.state);
}

/** The compare-and-set of a terminal write lost: somebody wrote the record since our revision. */
export class FinalizeConflict extends Error {
  override readonly name = "FinalizeConflict";
  readonly code = "FINALIZE_CONFLICT";
}

export interface StoredRecord {
  record: BatchRecord;
  revision: number;
  /** When the record was last written; retention counts from here. */
  writtenAtMs: number;
}

const OPEN_PREFIX = "open.";

/**
 * Durable batch records in a KV bucket. A record is created once (before SubmitBatch answers)
 * and replaced once, by the terminal batch with all its results, through a compare-and-set on
 * the revision it was created with: two coordinators can never both finalize a batch, and no
 * reader ever sees a terminal batch without its results.
 *
 * Beside each record that is not terminal yet lies a marker key `open.<batch id>`, written
 * before the record and removed after its terminal write: a restart resumes the batches the
 * markers name instead of reading every record ever stored.
 *
 * Every write failure other than a lost compare-and-set is a StorageError (full, too large,
 * unavailable) naming the bucket and the flag that gives it room.
 */
export class BatchStore {
  private readonly recordsStore: string;
  private readonly keysStore: string;

  constructor(
    private readonly batches: KV,
    private readonly idempotency: KV,
    names: { batchesBucket: string; idempotencyBucket: string },
  ) {
    this.recordsStore = `the batch records bucket (${names.batchesBucket})`;
    this.keysStore = `the idempotency keys bucket (${names.idempotencyBucket})`;
  }

  /** Stores a new batch; returns its revision. `encoded`: the record's bytes when the caller has them (record-encoding.ts). */
  async create(record: BatchRecord, encoded?: Uint8Array): Promise<number> {
    try {
      return await this.batches.create(record.batch!.id, encoded ?? encodeMessage(BatchRecord, record));
    } catch (err) {
      if (isWrongLastSequence(err)) throw new FinalizeConflict(`batch ${record.batch!.id} is stored already`, { cause: err });
      throw storageError(err, this.recordsStore, "--batches-max-bytes");
    }
  }

  async get(batchId: string): Promise<StoredRecord | undefined> {
    const e = await this.batches.get(batchId);
    if (!e || e.operation !== "PUT") return undefined;
    return { record: decodeMessage(BatchRecord, `kv:${batchId}`, e.value), revision: e.revision, writtenAtMs: e.created.getTime() };
  }

  /** Replaces the record at `revision` (the terminal write, or a refresh of a running one). `encoded` as in create(). */
  async replace(record: BatchRecord, revision: number, encoded?: Uint8Array): Promise<number> {
    try {
      return await this.batches.update(record.batch!.id, encoded ?? encodeMessage(BatchRecord, record), revision);
    } catch (err) {
      if (isWrongLastSequence(err)) throw new FinalizeConflict(`batch ${record.batch!.id} changed since revision ${revision}`, { cause: err });
      throw storageError(err, this.recordsStore, "--batches-max-bytes");
    }
  }

  async markOpen(batchId: string): Promise<void> {
    try {
      await this.batches.put(OPEN_PREFIX + batchId, new Uint8Array());
    } catch (err) {
      throw storageError(err, this.recordsStore, "--batches-max-bytes");
    }
  }

  async clearOpen(batchId: string): Promise<void> {
    await this.batches.purge(OPEN_PREFIX + batchId);
  }

  /** Removes the record of a batch whose submit failed (its write may have landed all the same). */
  async discard(batchId: string): Promise<void> {
    await this.batches.purge(batchId);
  }

  /** Ids of the batches whose marker says they may still be running. */
  async openIds(): Promise<string[]> {
    const out: string[] = [];
    for await (const k of await this.batches.keys(`${OPEN_PREFIX}*`)) {
      const id = k.slice(OPEN_PREFIX.length);
      if (BATCH_ID.test(id)) out.push(id);
    }
    return out;
  }

  /** Every stored batch id (a full listing: only for indexing batches stored by an older version). */
  async allBatchIds(): Promise<string[]> {
    const out: string[] = [];
    for await (const k of await this.batches.keys()) if (BATCH_ID.test(k)) out.push(k);
    return out;
  }

  /**
   * Claims an idempotency key for a batch id; returns the batch id that already owns the key,
   * or undefined when this call claimed it.
   */
  async claimIdempotencyKey(tenant: string, key: string, batchId: string): Promise<string | undefined> {
    const k = idempotencyKvKey(tenant, key);
    const value = new TextEncoder().encode(batchId);
    try {
      try {
        await this.idempotency.create(k, value);
        return undefined;
      } catch (err) {
        if (!isWrongLastSequence(err)) throw err;
      }
      const e = await this.idempotency.get(k);
      if (e && e.operation === "PUT") return e.string();
      await this.idempotency.put(k, value);
      return undefined;
    } catch (err) {
      throw storageError(err, this.keysStore, "--batches-max-bytes");
    }
  }

  /** A key whose batch was never stored (crash between the two writes) is taken over. */
  async overwriteIdempotencyKey(tenant: string, key: string, batchId: string): Promise<void> {
    try {
      await this.idempotency.put(idempotencyKvKey(tenant, key), new TextEncoder().encode(batchId));
    } catch (err) {
      throw storageError(err, this.keysStore, "--batches-max-bytes");
    }
  }

  /**
   * Gives a key back when its batch could not be stored, so the client's retry with the same
   * key is a new submission. Only if the key still names that batch; best effort, because a key
   * left behind is taken over anyway (overwriteIdempotencyKey).
   */
  async releaseIdempotencyKey(tenant: string, key: string, batchId: string): Promise<void> {
    const k = idempotencyKvKey(tenant, key);
    const e = await this.idempotency.get(k);
    if (e && e.operation === "PUT" && e.string() === batchId) await this.idempotency.purge(k, { previousSeq: e.revision });
  }
}

function idempotencyKvKey(tenant: string, key: string): string {
  return createHash("sha256").update(`${tenant}\u0000${key}`).digest("hex");
}
