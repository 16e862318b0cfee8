// Turns any error into a gRPC status that can always be sent. Every byte of it ends up in HTTP/2
// trailers, where text taken from a request breaks three ways: grpc-js percent-encodes
// `grpc-message` with encodeURI, which throws on a lone UTF-16 surrogate; text metadata values
// must be printable ASCII (Metadata.set throws otherwise, which once took the process down); and
// every gRPC implementation caps the header block a client accepts (8 KiB soft / 16 KiB hard in
// gRPC C-core, 16 KiB in grpc-go), so an oversized status reaches the client as a transport error
// instead of the answer. So: well-formed text, size budgets, and structure only in `-bin`.

import { Metadata, status } from "@grpc/grpc-js";
import type { Any } from "../../proto/gen/google/protobuf/any.js";
import { BadRequest, ErrorInfo } from "../../proto/gen/google/rpc/error_details.js";
import { Status } from "../../proto/gen/google/rpc/status.js";
import { BAD_REQUEST_TYPE, ERROR_DOMAIN, ERROR_INFO_TYPE, STATUS_DETAILS_TRAILER, wellFormed } from "../../shared/status-details.js";
import { ServerError } from "../errors.js";

export interface GrpcStatus {
  code: status;
  details: string;
  metadata: Metadata;
}

/** Budget of the percent-encoded `grpc-message`. */
export const MAX_ENCODED_DETAILS = 4096;
/** Budget of the serialized google.rpc.Status (base64 in the trailer adds a third). */
export const MAX_STATUS_DETAILS_BYTES = 3072;

/** Cuts well-formed `s` so that encodeURI(result) fits in `maxEncoded` characters, marking the cut. */
export function fitEncoded(s: string, maxEncoded: number, marker = " …(truncated)"): string {
  if (encodeURI(s).length <= maxEncoded) return s;
  const room = maxEncoded - encodeURI(marker).length;
  let out = "";
  let used = 0;
  for (const ch of s) {
    const n = encodeURI(ch).length;
    if (used + n > room) break;
    out += ch;
    used += n;
  }
  return out + marker;
}

const more = (n: number) => `; … and ${n} more problem${n === 1 ? "" : "s"}`;

/**
 * The message of a refused request: its problems in order as far as they fit, then how many
 * more there were, so the count is never lost even when the text is.
 */
export function violationsMessage(headline: string, violations: readonly string[]): string {
  let msg = `${headline}: `;
  let shown = 0;
  for (const v of violations) {
    const candidate = msg + (shown > 0 ? "; " : "") + v;
    const left = violations.length - shown - 1;
    if (encodeURI(candidate + (left > 0 ? more(left) : "")).length > MAX_ENCODED_DETAILS) break;
    msg = candidate;
    shown++;
  }
  if (shown === 0 && violations.length > 0) {
    const left = violations.length - 1;
    msg = fitEncoded(msg + violations[0], MAX_ENCODED_DETAILS - (left > 0 ? encodeURI(more(left)).length : 0));
    shown = 1;
  }
  const left = violations.length - shown;
  return left > 0 ? msg + more(left) : msg;
}

/** `items[3].params.width: must be …` → field and description, split at the first ": ". */
export function splitViolation(v: string): { field: string; description: string } {
  const at = v.indexOf(": ");
  return at < 0 ? { field: "", description: v } : { field: v.slice(0, at), description: v.slice(at + 2) };
}

function statusDetails(code: status, message: string, violations: readonly string[]): Buffer {
  const details: Any[] = [];
  if (violations.length > 0) {
    const fieldViolations: BadRequest["fieldViolations"] = [];
    let size = 0;
    for (const v of violations) {
      const fv = splitViolation(v);
      size += Buffer.byteLength(fv.field) + Buffer.byteLength(fv.description) + 8;
      if (size > MAX_STATUS_DETAILS_BYTES - 1024) break;
      fieldViolations.push(fv);
    }
    details.push({ typeUrl: BAD_REQUEST_TYPE, value: Buffer.from(BadRequest.encode({ fieldViolations }).finish()) });
  }
  const reason = status[code] ?? "UNKNOWN";
  details.push({ typeUrl: ERROR_INFO_TYPE, value: Buffer.from(ErrorInfo.encode({ reason, domain: ERROR_DOMAIN, metadata: { violations: String(violations.length) } }).finish()) });
  return Buffer.from(Status.encode({ code, message: fitEncoded(message, 512), details }).finish());
}

function build(code: status, text: string, violations: readonly string[], headline: string | undefined): GrpcStatus {
  const clean = violations.map(wellFormed);
  const details = clean.length > 0 ? violationsMessage(wellFormed(headline ?? "the request was refused"), clean) : fitEncoded(wellFormed(text), MAX_ENCODED_DETAILS);
  const metadata = new Metadata();
  metadata.set(STATUS_DETAILS_TRAILER, statusDetails(code, details, clean));
  return { code, details, metadata };
}

/**
 * The status for any thrown value. Never throws: if building the rich status fails, a plain one
 * with fixed text goes out instead.
 */
export function toGrpcStatus(err: unknown): GrpcStatus {
  try {
    if (err instanceof ServerError) return build(err.code, err.message, err.violations, err.headline);
    return build(status.INTERNAL, `internal error: ${errorText(err)}`, [], undefined);
  } catch {
    return { code: err instanceof ServerError ? err.code : status.INTERNAL, details: "error (its description could not be encoded)", metadata: new Metadata() };
  }
}

function errorText(err: unknown): string {
  try {
    return err instanceof Error ? err.message : String(err);
  } catch {
    return "unprintable error";
  }
}
