// The structured error a Shoal server attaches to every non-OK status: google.rpc.Status in the
// standard `grpc-status-details-bin` trailer, with a google.rpc.BadRequest listing each bad
// field of a refused request and a google.rpc.ErrorInfo naming the reason. Clients in other
// languages read it with their usual helpers; ours reads it here.

import type { Metadata } from "@grpc/grpc-js";
import { BadRequest, ErrorInfo } from "../proto/gen/google/rpc/error_details.js";
import { Status } from "../proto/gen/google/rpc/status.js";

export const STATUS_DETAILS_TRAILER = "grpc-status-details-bin";
export const ERROR_DOMAIN = "shoal.v1";
export const BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest";
export const ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo";

export interface StatusDetails {
  status: Status;
  badRequest?: BadRequest;
  errorInfo?: ErrorInfo;
}

/** Replaces lone UTF-16 surrogates, which neither UTF-8 nor encodeURI can carry, with U+FFFD. */
export function wellFormed(s: string): string {
  return s.replace(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g, "\uFFFD");
}

/** The trailer's content; undefined when absent or not decodable (a non-Shoal server). */
export function decodeStatusDetails(md: Metadata | undefined): StatusDetails | undefined {
  const raw = md?.get(STATUS_DETAILS_TRAILER)[0];
  if (!raw || typeof raw === "string") return undefined;
  try {
    const status = Status.decode(raw);
    const out: StatusDetails = { status };
    for (const d of status.details) {
      if (d.typeUrl === BAD_REQUEST_TYPE) out.badRequest = BadRequest.decode(d.value);
      else if (d.typeUrl === ERROR_INFO_TYPE) out.errorInfo = ErrorInfo.decode(d.value);
    }
    return out;
  } catch {
    return undefined;
  }
}
