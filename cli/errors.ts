// Errors the client side raises. Each has a stable `code`, so the command runner decides the
// message and exit status from the code and never has to parse message text.

import { status as GrpcStatus, type Metadata, type ServiceError } from "@grpc/grpc-js";
import { decodeStatusDetails } from "../shared/status-details.js";

/** The gRPC status names a client can see, e.g. "INVALID_ARGUMENT". */
export type GrpcStatusName = keyof typeof GrpcStatus;

/** A call the coordinator answered with a non-OK status, or could not be made at all. */
export class ClientError extends Error {
  override readonly name = "ClientError";
  readonly code: GrpcStatusName;
  readonly grpcCode: number;
  readonly details: string;
  readonly metadata: Metadata | undefined;

  constructor(grpcCode: number, details: string, options?: { cause?: unknown; metadata?: Metadata }) {
    const code = statusName(grpcCode);
    super(details ? `${code}: ${details}` : code, { cause: options?.cause });
    this.code = code;
    this.grpcCode = grpcCode;
    this.details = details;
    this.metadata = options?.metadata;
  }

  /**
   * For INVALID_ARGUMENT: one entry per bad field (`items[3].params.width: must be …`). Read
   * from the structured google.rpc.BadRequest the server sends; from an older server, split
   * from the status message where a new `path:` starts, so a problem containing "; " stays whole.
   */
  get fieldProblems(): string[] {
    const structured = decodeStatusDetails(this.metadata)?.badRequest?.fieldViolations;
    if (structured && structured.length > 0) return structured.map((v) => (v.field ? `${v.field}: ${v.description}` : v.description));
    return splitFieldProblems(this.details);
  }

  /** How many problems the server found; may exceed fieldProblems when the list was cut to fit. */
  get problemCount(): number {
    const counted = Number(decodeStatusDetails(this.metadata)?.errorInfo?.metadata["violations"]);
    return Number.isSafeInteger(counted) && counted > 0 ? counted : this.fieldProblems.length;
  }
}

export function statusName(code: number): GrpcStatusName {
  const name = (GrpcStatus as unknown as Record<number, string>)[code];
  return (name ?? "UNKNOWN") as GrpcStatusName;
}

export function isServiceError(err: unknown): err is ServiceError {
  return err instanceof Error && typeof (err as Partial<ServiceError>).code === "number" && "details" in err;
}

/** The one place where grpc-js errors become ClientErrors. */
export function toClientError(err: unknown): unknown {
  if (err instanceof ClientError || !isServiceError(err)) return err;
  return new ClientError(err.code, err.details ?? "", { cause: err, metadata: err.metadata });
}

// A path: `items[3].params.width`, with odd keys quoted as `params["a b"]`.
const PROBLEM_START = /(?:\r?\n|;\s+)(?=[A-Za-z_$][\w$]*(?:\[\d+\]|\["(?:[^"\\]|\\.)*"\]|\.[\w$]+)*:\s)/;

export function splitFieldProblems(details: string): string[] {
  return details
    .split(PROBLEM_START)
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
}

/** The batch file can't be read or its shape is wrong; every problem names file and place. */
export class BatchFileError extends Error {
  override readonly name = "BatchFileError";
  readonly code = "BATCH_FILE_INVALID";
  constructor(
    readonly file: string,
    readonly problems: string[],
    options?: { cause?: unknown },
  ) {
    super(problems.join("\n"), options);
  }
}

/** A flag or argument the user gave is wrong; the message names it. */
export class UsageError extends Error {
  override readonly name = "UsageError";
  readonly code = "USAGE";
  constructor(message: string) {
    super(message);
  }
}

/** Artifact bytes that do not match the digest or size the batch recorded. */
export class ArtifactIntegrityError extends Error {
  override readonly name = "ArtifactIntegrityError";
  readonly code = "ARTIFACT_INTEGRITY";
  constructor(
    readonly uri: string,
    message: string,
  ) {
    super(`${uri}: ${message}`);
  }
}
