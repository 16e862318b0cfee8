import { status } from "@grpc/grpc-js";

/**
 * What a handler throws to answer with a gRPC status. Every other error becomes INTERNAL at the
 * edge (grpc/handlers.ts) and is logged with its stack.
 */
export class ServerError extends Error {
  override readonly name = "ServerError";
  constructor(
    readonly code: status,
    message: string,
    /** For INVALID_ARGUMENT: each bad field as `path: problem`. */
    readonly violations: string[] = [],
    /** For INVALID_ARGUMENT: what was refused, put before the violations in the status message. */
    readonly headline?: string,
  ) {
    super(message);
  }
}

export const invalidArgument = (violations: string[], headline = "the batch was refused") =>
  new ServerError(status.INVALID_ARGUMENT, `${headline}: ${violations.join("; ")}`, violations, headline);
export const notFound = (what: string) => new ServerError(status.NOT_FOUND, what);
export const resourceExhausted = (what: string) => new ServerError(status.RESOURCE_EXHAUSTED, what);
export const unauthenticated = (what: string) => new ServerError(status.UNAUTHENTICATED, what);
export const permissionDenied = (what: string) => new ServerError(status.PERMISSION_DENIED, what);
export const unavailable = (what: string) => new ServerError(status.UNAVAILABLE, what);
/**
 * A watch (WatchBatch, RunBatch's wait) ended because this term's coordinator closed: its lease
 * was lost or the process is stopping. The batch is durable and keeps running; the gRPC edge
 * follows it into this process's next term when there is one (grpc/server.ts), and otherwise
 * answers UNAVAILABLE with this message.
 */
export class TermEndedError extends ServerError {
  constructor(readonly batchId: string) {
    super(status.UNAVAILABLE, `the coordinator stopped serving while batch ${batchId} ran (its term ended); the batch is stored and keeps running: GetBatch or WatchBatch ${batchId} at the active coordinator`);
  }
}
export const failedPrecondition = (what: string) => new ServerError(status.FAILED_PRECONDITION, what);
