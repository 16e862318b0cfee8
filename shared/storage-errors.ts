// What went wrong with a write to JetStream, in the three kinds a caller acts on differently:
// the store is full (an operator must make room or raise a limit), the record can never fit as
// it is (a precise error now, not a retry loop), or NATS/JetStream cannot be reached (retry).
// A compare-and-set that lost to another writer is not a storage error and is not mapped here.

import { JetStreamApiError } from "@nats-io/jetstream";
import { errorMessage } from "./errors.js";

export type StorageErrorCode = "STORAGE_FULL" | "RECORD_TOO_LARGE" | "STORAGE_UNAVAILABLE";

/** Metric label of each code (`reason` in shoal_terminal_write_failures_total). */
export const STORAGE_FAILURE_REASONS = ["storage_full", "record_too_large", "unavailable"] as const;
export type StorageFailureReason = (typeof STORAGE_FAILURE_REASONS)[number];

export class StorageError extends Error {
  override readonly name = "StorageError";
  constructor(
    readonly code: StorageErrorCode,
    /** Which store, in words an operator recognises: "the batch records bucket (shoal-batches)". */
    readonly store: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  get reason(): StorageFailureReason {
    return this.code === "STORAGE_FULL" ? "storage_full" : this.code === "RECORD_TOO_LARGE" ? "record_too_large" : "unavailable";
  }
}

// JetStream API error codes (nats-server errors.json) that mean "no room".
const JS_MAX_BYTES = 10077; // "maximum bytes exceeded" (the stream's max_bytes, discard new)
const JS_INSUFFICIENT_RESOURCES = 10023; // "insufficient resources" (the server's max_file_store)
const JS_STORAGE_RESOURCES_EXCEEDED = 10047; // "insufficient storage resources available" (reservation)
const JS_MAX_MESSAGES = 10076; // "maximum messages exceeded"
const JS_MESSAGE_TOO_LARGE = 10054; // "message size exceeds maximum allowed" (max_msg_size)
/** Compare-and-set lost: somebody wrote the key since the revision we hold. */
export const JS_WRONG_LAST_SEQUENCE = 10071;

export function isWrongLastSequence(err: unknown): boolean {
  return err instanceof JetStreamApiError && err.code === JS_WRONG_LAST_SEQUENCE;
}

/**
 * Maps an error from a JetStream write to a StorageError. `store` names what was written to and
 * `raise` the flag (or server setting) that gives it more room, for the operator's message.
 * Anything not recognised as "full" or "too large" counts as unavailable: the write may succeed
 * when retried, and nothing was stored.
 */
export function storageError(err: unknown, store: string, raise: string): StorageError {
  if (err instanceof StorageError) return err;
  const msg = errorMessage(err);
  if (err instanceof JetStreamApiError) {
    if (err.code === JS_MAX_BYTES || err.code === JS_MAX_MESSAGES) {
      return new StorageError("STORAGE_FULL", store, `${store} is full (${msg}); make room with a shorter --retention or raise ${raise}`, { cause: err });
    }
    if (err.code === JS_INSUFFICIENT_RESOURCES || err.code === JS_STORAGE_RESOURCES_EXCEEDED) {
      return new StorageError(
        "STORAGE_FULL",
        store,
        `nats-server has no JetStream storage left for ${store} (${msg}); raise the server's jetstream max_file_store, free disk, or shorten --retention`,
        { cause: err },
      );
    }
    if (err.code === JS_MESSAGE_TOO_LARGE) {
      return new StorageError("RECORD_TOO_LARGE", store, `a record is larger than ${store} accepts (${msg})`, { cause: err });
    }
  }
  // nats.js refuses a message over the server's max_payload before sending it.
  if (err instanceof Error && err.name === "InvalidArgumentError" && /max_payload/.test(msg)) {
    return new StorageError("RECORD_TOO_LARGE", store, `a record is larger than the NATS server's max_payload (${msg})`, { cause: err });
  }
  if (err instanceof Error && err.name === "JetStreamNotEnabled") {
    return new StorageError("STORAGE_UNAVAILABLE", store, `JetStream is not available for ${store} (${msg})`, { cause: err });
  }
  return new StorageError("STORAGE_UNAVAILABLE", store, `${store} could not be written (${msg})`, { cause: err });
}

/**
 * True when the write reached no stream at all: nats-server answered "no responders" (nats.js
 * turns that into JetStreamNotEnabled for js.publish). Nothing was stored, so the same write may
 * simply be sent again. In a cluster this is the gap while a stream whose leader was lost elects
 * another (nats-server's election timeout is 4-9 s); on a single server it is JetStream itself
 * being down. A timeout is not this: the write may have landed.
 */
export function isNothingStored(err: unknown): boolean {
  if (err instanceof StorageError) return err.code === "STORAGE_UNAVAILABLE" && isNothingStored(err.cause);
  if (!(err instanceof Error)) return false;
  if (err.name === "JetStreamNotEnabled" || err.name === "NoRespondersError") return true;
  const withCheck = err as Error & { isNoResponders?: () => boolean };
  if (typeof withCheck.isNoResponders === "function" && withCheck.isNoResponders()) return true;
  // JetStreamPublisher's 503 (shared/jetstream-publisher.ts).
  return err.message.startsWith("no responders:");
}

/**
 * Runs `write` again while it fails with nothing stored, with growing delays, for at most
 * `windowMs`; then the last failure is thrown. Rides through a stream leader election in a
 * cluster instead of refusing the call that happened to land in it.
 */
export async function retryWhileNothingStored<T>(
  write: () => Promise<T>,
  opts: { windowMs: number; signal?: AbortSignal; onRetry?: (attempt: number, err: unknown) => void },
): Promise<T> {
  const until = performance.now() + opts.windowMs;
  for (let attempt = 1; ; attempt++) {
    try {
      return await write();
    } catch (err) {
      const delay = Math.min(250 * 2 ** (attempt - 1), 2000);
      if (!isNothingStored(err) || opts.signal?.aborted || performance.now() + delay > until) throw err;
      opts.onRetry?.(attempt, err);
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}
