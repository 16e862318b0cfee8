// How a batch record becomes the bytes of its KV value without encoding its items more than once.
// A record's items (model and google.protobuf.Struct params each) are fixed at submit, and they
// are most of an open record; the terminal record carries the same items beside every result.
// Protobuf lets a message be written as concatenated parts (fields in any order, repeated fields
// appended), so the items are encoded once at submit, kept as bytes, and each write of the
// record encodes only what changed (the batch with its results, the webhook without its secret)
// and appends them: the same message a reader decodes, without a second Struct encode of every
// item's params at the terminal write.

import type { Item } from "../proto/gen/shoal/v1/shoal.js";
import { BatchRecord } from "../proto/gen/shoal/v1/wire.js";

/** The `items` field of a BatchRecord (field 2, each item once), as bytes to append to the rest. */
export function encodeRecordItems(items: readonly Item[]): Uint8Array {
  const w = BatchRecord.encode({ ...EMPTY_RECORD, items: items as Item[] });
  return w.finish();
}

/**
 * The record's bytes: every field but `items` encoded now, then `itemsBytes` (from
 * encodeRecordItems of the same items). Decodes to the same BatchRecord as encoding it whole.
 */
export function encodeRecord(record: BatchRecord, itemsBytes: Uint8Array): Uint8Array {
  const head = BatchRecord.encode({ ...record, items: [] }).finish();
  const out = new Uint8Array(head.length + itemsBytes.length);
  out.set(head, 0);
  out.set(itemsBytes, head.length);
  return out;
}

const EMPTY_RECORD: BatchRecord = BatchRecord.fromPartial({});
