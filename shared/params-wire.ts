// An item's params on the internal coordinator → worker wire (AssignedItem.params_json): UTF-8
// JSON of the params object the coordinator validated at submit. The public API and the stored
// batch record keep google.protobuf.Struct; between coordinator and worker a Struct would cost a
// wrap, a field-by-field encode, a decode and an unwrap on every assignment of every item, where
// JSON bytes are built once per item and parsed once by the worker.
//
// The params validated at submit hold only strings, finite numbers, booleans and arrays of
// finite numbers (shared/manifest.ts validateParams), which JSON carries exactly. The worker
// validates what it parses again, as it does a Struct: anything can be published on an assign
// subject.

const UTF8 = new TextDecoder("utf-8", { fatal: true });

/** The params as the bytes of AssignedItem.params_json. */
export function encodeParamsJson(params: Record<string, unknown>): Buffer {
  return Buffer.from(JSON.stringify(params), "utf8");
}

/**
 * The params in AssignedItem.params_json, or why they cannot be read: not UTF-8 JSON, or JSON
 * that is not an object. The problem names the field, for the item's INVALID_PARAMS error.
 */
export function decodeParamsJson(bytes: Uint8Array): { params: Record<string, unknown> } | { problem: string } {
  let value: unknown;
  try {
    value = JSON.parse(UTF8.decode(bytes));
  } catch (err) {
    return { problem: `params_json: ${bytes.length} bytes are not UTF-8 JSON (${err instanceof Error ? err.message : String(err)})` };
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    return { problem: `params_json: must be a JSON object (got ${value === null ? "null" : Array.isArray(value) ? "an array" : typeof value})` };
  }
  return { params: value as Record<string, unknown> };
}
