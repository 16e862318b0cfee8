// The gateway's errors. Every answer that is not a success is an ApiError, written as
// `{"error": {"code", "message", "fields"}}` in one place (server.ts); codes are stable
// lower-case strings, the same family as the item `error_code`s (`content_policy`, ...).
// Coordinator statuses become ApiErrors here and nowhere else.

import { ClientError } from "../cli/errors.js";

export type ApiErrorCode =
  | "invalid_request"
  | "unauthenticated"
  | "forbidden"
  | "url_invalid"
  | "url_expired"
  | "not_found"
  | "method_not_allowed"
  | "conflict"
  | "payload_too_large"
  | "batch_too_large"
  | "unsupported_media_type"
  | "rate_limited"
  | "not_implemented"
  | "upstream_error"
  | "unavailable"
  | "wait_timeout"
  | "internal";

export class ApiError extends Error {
  override readonly name = "ApiError";
  constructor(
    readonly status: number,
    readonly code: ApiErrorCode,
    message: string,
    /** For invalid_request: each bad field as `path: problem`, paths into the request body. */
    readonly fields: string[] = [],
    /** Extra members of the error object (e.g. the batch id of a wait that timed out). */
    readonly extra: Record<string, unknown> = {},
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  toJSON(): { error: Record<string, unknown> } {
    return { error: { code: this.code, message: this.message, ...(this.fields.length > 0 ? { fields: this.fields } : {}), ...this.extra } };
  }
}

/**
 * A coordinator path (`items[3].params.width`) as the caller wrote it (`requests[3].width`).
 * Paths the HTTP body has no name for are left as they are.
 */
export function toRequestPath(path: string): string {
  return path
    .replace(/^items\[(\d+)\]\.params(?=$|[.[])/, "requests[$1]")
    .replace(/^items(?=$|[.[])/, "requests")
    .replace(/^webhook\.url(?=$|[.[])/, "webhook_url")
    .replace(/^webhook\.events(?=$|[.[])/, "webhook_events")
    .replace(/^webhook\.secret(?=$|[.[])/, "webhook_secret")
    .replace(/^idempotency_key(?=$|[.[])/, "Idempotency-Key");
}

/** `path: problem` with its path translated. */
export function toRequestProblem(problem: string): string {
  const m = /^([^\s:]+)(:\s[\s\S]*)$/.exec(problem);
  return m ? toRequestPath(m[1]!) + m[2]! : problem;
}

/** Coordinator RESOURCE_EXHAUSTED messages about the size of one batch, not the load. */
const TOO_LARGE = /^(items:|batch too large)/;

/** The one place where coordinator statuses become HTTP errors. */
export function fromClientError(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  if (!(err instanceof ClientError)) {
    return new ApiError(500, "internal", "internal error in the gateway", [], {}, { cause: err });
  }
  const message = toRequestProblem(err.details || err.code);
  const opts = { cause: err };
  switch (err.code) {
    case "INVALID_ARGUMENT": {
      const fields = err.fieldProblems.map(toRequestProblem);
      const headline = fields.length > 0 ? "the batch was refused" : message;
      return new ApiError(400, "invalid_request", headline, fields, {}, opts);
    }
    case "UNAUTHENTICATED":
      return new ApiError(401, "unauthenticated", message, [], {}, opts);
    case "PERMISSION_DENIED":
      return new ApiError(403, "forbidden", message, [], {}, opts);
    case "NOT_FOUND":
      return new ApiError(404, "not_found", message, [], {}, opts);
    case "FAILED_PRECONDITION":
    case "ALREADY_EXISTS":
      return new ApiError(409, "conflict", message, [], {}, opts);
    case "RESOURCE_EXHAUSTED":
      return TOO_LARGE.test(err.details)
        ? new ApiError(413, "batch_too_large", message, [], {}, opts)
        : new ApiError(429, "rate_limited", message, [], {}, opts);
    case "UNAVAILABLE":
      return new ApiError(503, "unavailable", `the coordinator is not reachable: ${err.details || "unavailable"}`, [], {}, opts);
    case "DEADLINE_EXCEEDED":
      return new ApiError(504, "wait_timeout", `the coordinator did not answer in time: ${err.details}`, [], {}, opts);
    case "UNIMPLEMENTED":
      return new ApiError(501, "not_implemented", message, [], {}, opts);
    default:
      return new ApiError(502, "upstream_error", `the coordinator answered ${err.code}: ${err.details}`, [], {}, opts);
  }
}
