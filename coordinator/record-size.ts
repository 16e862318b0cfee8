// The terminal record holds every item's result, so it is the largest write of a batch and it
// happens last, long after the batch was accepted. SubmitBatch therefore checks that the
// terminal record will fit in one KV value (the NATS server's max_payload, and the bucket's byte
// limit) before accepting anything, using an allowance per item; at the terminal write, long
// error messages are shortened if that is what it takes to stay within it. Only a model that
// writes more artifacts than its manifest lists can still exceed it, and that write is then
// retried (and alerted on) like any other failed terminal write.

import type { ItemResult } from "../proto/gen/shoal/v1/shoal.js";
import { BatchRecord } from "../proto/gen/shoal/v1/wire.js";
import type { ModelManifest } from "../shared/manifest.js";

/** Subject, headers and framing that a KV put adds around the value. */
export const KV_OVERHEAD_BYTES = 512;
/** index, status, attempts, queue and run times, worker id (up to 64 chars), framing. */
const RESULT_BASE_BYTES = 112;
/** code, retryable flag and a message of up to ERROR_MESSAGE_FLOOR bytes. */
const ERROR_BYTES = 32 + 96;
const ERROR_MESSAGE_FLOOR = 96;
/** content type, size, sha256 and the uri around the artifact's name (which appears twice). */
const ARTIFACT_BASE_BYTES = 180;
/** Counters, states and timestamps the terminal batch sets. */
const TERMINAL_FIELDS_BYTES = 64;

/**
 * What one item's result may take in the terminal record. A result carries artifacts (it
 * succeeded) or an error (it did not), never both; a model without declared outputs is counted
 * as writing one artifact, as the image models do.
 */
export function resultAllowance(model: ModelManifest): number {
  const artifacts = model.outputs?.map((o) => o.artifact) ?? ["image"];
  const artifactBytes = artifacts.reduce((n, a) => n + ARTIFACT_BASE_BYTES + 2 * a.length, 0);
  return RESULT_BASE_BYTES + model.name.length + Math.max(ERROR_BYTES, artifactBytes);
}

/** An upper bound of the terminal record's size, given the running record and each item's model. */
export function terminalRecordBound(open: BatchRecord, models: readonly ModelManifest[], openBytes = BatchRecord.encode(open).finish().length): number {
  let bytes = openBytes + TERMINAL_FIELDS_BYTES;
  for (const m of models) bytes += resultAllowance(m);
  return bytes;
}

/**
 * Returns the record, or a copy whose longer error messages are cut until it fits `limit`
 * bytes, down to ERROR_MESSAGE_FLOOR bytes each; past that it is returned as small as it gets.
 */
export function fitTerminalRecord(record: BatchRecord, limit: number): BatchRecord {
  return fitTerminalRecordBytes(record, limit).record;
}

/** fitTerminalRecord, with the bytes of the record returned, encoded by `encode`. */
export function fitTerminalRecordBytes(
  record: BatchRecord,
  limit: number,
  encode: (r: BatchRecord) => Uint8Array = (r) => BatchRecord.encode(r).finish(),
): { record: BatchRecord; bytes: Uint8Array } {
  let bytes = encode(record);
  if (bytes.length <= limit) return { record, bytes };
  let fitted = record;
  for (const cap of [1024, 256, ERROR_MESSAGE_FLOOR]) {
    fitted = { ...record, batch: { ...record.batch!, results: record.batch!.results.map((r) => capMessage(r, cap)) } };
    bytes = encode(fitted);
    if (bytes.length <= limit) return { record: fitted, bytes };
  }
  return { record: fitted, bytes };
}

function capMessage(r: ItemResult, capBytes: number): ItemResult {
  if (!r.error || Buffer.byteLength(r.error.message) <= capBytes) return r;
  const marker = " …(shortened to fit the batch record)";
  const keep = Buffer.from(r.error.message).subarray(0, Math.max(0, capBytes - Buffer.byteLength(marker))).toString("utf8").replace(/\uFFFD$/, "");
  return { ...r, error: { ...r.error, message: keep + marker } };
}
