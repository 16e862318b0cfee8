// The terminal write of one batch, kept trying until it is stored. A batch whose items are all
// done must not stay RUNNING until somebody restarts the coordinator because the store was full
// or NATS was away for a moment: every failure other than a lost compare-and-set is retried with
// exponential backoff (capped), for as long as the coordinator runs. A lost compare-and-set
// means another coordinator wrote the record: if that record is terminal it wins and is kept;
// if it is not (a refresh of the running record), the write is tried again on top of it.

import type { Batch } from "../proto/gen/shoal/v1/shoal.js";
import type { BatchRecord } from "../proto/gen/shoal/v1/wire.js";
import { StorageError, storageError } from "../shared/storage-errors.js";
import { FinalizeConflict, isTerminal, type StoredRecord } from "./batch-store.js";
import { sleepUnlessAborted } from "../shared/sleep.js";

export interface TerminalStore {
  replace(record: BatchRecord, revision: number, encoded?: Uint8Array): Promise<number>;
  create(record: BatchRecord, encoded?: Uint8Array): Promise<number>;
  get(batchId: string): Promise<StoredRecord | undefined>;
}

export interface TerminalWrite {
  store: TerminalStore;
  record: BatchRecord;
  /** The record's bytes, when the caller encoded it already (record-encoding.ts). */
  encoded?: Uint8Array;
  /** The revision the write must replace; read at every attempt (a refresh may have moved it). */
  revision: () => number;
  /** Done once before the first successful write (e.g. recording the pending webhook). */
  prepare?: () => Promise<void>;
  onFailure: (err: StorageError, attempt: number, retryInMs: number) => void;
  initialDelayMs: number;
  maxDelayMs: number;
  /** Aborted when the coordinator stops: the record stays running and the next start resumes it. */
  signal: AbortSignal;
}

export interface TerminalOutcome {
  /** The terminal batch as stored. */
  stored: Batch;
  /** False when another coordinator's terminal record was there first. */
  ours: boolean;
  attempts: number;
}

export class TerminalWriteStopped extends Error {
  override readonly name = "TerminalWriteStopped";
  readonly code = "TERMINAL_WRITE_STOPPED";
}

export async function writeTerminal(w: TerminalWrite): Promise<TerminalOutcome> {
  const id = w.record.batch!.id;
  let prepared = w.prepare === undefined;
  let revision = w.revision();
  let known = revision;
  let delay = w.initialDelayMs;
  for (let attempt = 1; ; attempt++) {
    if (w.signal.aborted) throw new TerminalWriteStopped(`batch ${id}: the coordinator is stopping; the next start finishes it`);
    try {
      if (!prepared) {
        await w.prepare!();
        prepared = true;
      }
      if (revision > 0) await w.store.replace(w.record, revision, w.encoded);
      else await w.store.create(w.record, w.encoded);
      return { stored: w.record.batch!, ours: true, attempts: attempt };
    } catch (err) {
      let failure: StorageError;
      if (err instanceof FinalizeConflict) {
        const current = await w.store.get(id).catch((e: unknown) => e as Error);
        if (!(current instanceof Error)) {
          if (current && isTerminal(current.record.batch!)) return { stored: current.record.batch!, ours: false, attempts: attempt };
          // The running record was rewritten (refreshed), or has gone: write over what is there now.
          const next = current?.revision ?? 0;
          if (next !== revision) {
            revision = next;
            continue;
          }
        }
        failure = storageError(current instanceof Error ? current : err, "the batch records bucket", "--batches-max-bytes");
      } else {
        failure = storageError(err, "the batch records bucket", "--batches-max-bytes");
      }
      // Full jitter keeps many batches that failed together from retrying in lockstep.
      const wait = Math.round(delay / 2 + Math.random() * (delay / 2));
      w.onFailure(failure, attempt, wait);
      await sleepUnlessAborted(wait, w.signal);
      delay = Math.min(w.maxDelayMs, delay * 2);
      // A refresh of the running record that landed meanwhile moved the revision to replace.
      if (w.revision() !== known) revision = known = w.revision();
    }
  }
}
