// Sends fuzz cases to a live coordinator as raw bytes over grpc-js (identity serializers), so
// the fuzzer controls every byte of the request message, and judges each answer against what
// the contract allows for that method. The judge is exact: a code outside the allowed set is a
// failure, DEADLINE_EXCEEDED is a hang.

import { Client, credentials, Metadata, status } from "@grpc/grpc-js";
import {
  Batch,
  CancelBatchRequest,
  DrainWorkerRequest,
  GetArtifactRequest,
  GetBatchRequest,
  ListBatchesRequest,
  ListModelsRequest,
  ListWorkersRequest,
  RetryBatchRequest,
  SubmitBatchRequest,
  SubmitBatchResponse,
  WatchBatchRequest,
} from "../../proto/gen/shoal/v1/shoal.js";
import { GRPC_METHODS, type GrpcMethodName, type MetadataCase } from "./arbitraries.js";

export interface Answer {
  code: number;
  details: string;
  /** The response message of a unary OK answer. */
  response: Buffer | undefined;
}

const REQUEST_TYPES: Record<GrpcMethodName, { decode(b: Uint8Array): unknown }> = {
  SubmitBatch: SubmitBatchRequest,
  RunBatch: SubmitBatchRequest,
  GetBatch: GetBatchRequest,
  WatchBatch: WatchBatchRequest,
  CancelBatch: CancelBatchRequest,
  RetryBatch: RetryBatchRequest,
  ListBatches: ListBatchesRequest,
  GetArtifact: GetArtifactRequest,
  ListWorkers: ListWorkersRequest,
  DrainWorker: DrainWorkerRequest,
  ListModels: ListModelsRequest,
};

const S = status;

/**
 * What each method may answer to a request that decodes. Lookups of ids the fuzzer made up are
 * NOT_FOUND (or INVALID_ARGUMENT for an id that cannot be one); nothing may be INTERNAL,
 * UNKNOWN, UNAVAILABLE or DEADLINE_EXCEEDED. The worker ids the fuzzer can produce never name
 * the real worker (its id is random), so DrainWorker never drains it.
 */
export const ALLOWED: Record<GrpcMethodName, readonly number[]> = {
  SubmitBatch: [S.OK, S.INVALID_ARGUMENT, S.RESOURCE_EXHAUSTED],
  RunBatch: [S.OK, S.INVALID_ARGUMENT, S.RESOURCE_EXHAUSTED],
  GetBatch: [S.NOT_FOUND, S.INVALID_ARGUMENT],
  WatchBatch: [S.NOT_FOUND, S.INVALID_ARGUMENT],
  CancelBatch: [S.NOT_FOUND, S.INVALID_ARGUMENT],
  RetryBatch: [S.NOT_FOUND, S.INVALID_ARGUMENT],
  ListBatches: [S.OK, S.INVALID_ARGUMENT],
  GetArtifact: [S.NOT_FOUND, S.INVALID_ARGUMENT],
  ListWorkers: [S.OK],
  DrainWorker: [S.NOT_FOUND, S.INVALID_ARGUMENT],
  ListModels: [S.OK],
};

/**
 * A request the generated decoder throws on (malformed protobuf, or more than 100 levels of
 * message nesting) never reaches a handler. grpc-js alone would answer INTERNAL "Error
 * deserializing request"; the coordinator's lenient deserializers (coordinator/grpc/
 * request-decoding.ts) answer INVALID_ARGUMENT instead, and that is all they may answer.
 */
export const UNDECODABLE = { code: S.INVALID_ARGUMENT };

export function decodes(method: GrpcMethodName, bytes: Uint8Array): boolean {
  try {
    REQUEST_TYPES[method].decode(bytes);
    return true;
  } catch {
    return false;
  }
}

const statusNames = S as unknown as Record<number, string>;
export const statusName = (code: number): string => statusNames[code] ?? `CODE_${code}`;

/** Returns why the answer breaks the contract, or undefined when it is allowed. */
export function judge(method: GrpcMethodName, bytes: Uint8Array, a: Answer, allowed: readonly number[] = ALLOWED[method]): string | undefined {
  if (a.code === S.DEADLINE_EXCEEDED) return `hang: no answer to ${method} within the deadline`;
  if (!decodes(method, bytes)) {
    return a.code === UNDECODABLE.code ? undefined : `${method}: an undecodable request was answered ${statusName(a.code)} "${a.details.slice(0, 200)}", expected INVALID_ARGUMENT`;
  }
  if (!allowed.includes(a.code)) {
    return `${method}: answered ${statusName(a.code)} "${a.details.slice(0, 300)}", allowed ${allowed.map(statusName).join(", ")}`;
  }
  return undefined;
}

/** The batch id in an OK answer of SubmitBatch or RunBatch. */
export function acceptedBatchId(method: GrpcMethodName, a: Answer): string | undefined {
  if (a.code !== S.OK || !a.response) return undefined;
  if (method === "SubmitBatch") return SubmitBatchResponse.decode(a.response).batchId;
  if (method === "RunBatch") return Batch.decode(a.response).id;
  return undefined;
}

const identity = (b: Buffer): Buffer => b;

export class GrpcTarget {
  private readonly client: Client;

  constructor(
    addr: string,
    private readonly apiKey: string,
    private readonly deadlineMs: number,
  ) {
    const max = 64 * 1024 * 1024;
    this.client = new Client(addr, credentials.createInsecure(), { "grpc.max_receive_message_length": max, "grpc.max_send_message_length": max });
  }

  authorized(): Metadata {
    const md = new Metadata();
    md.set("authorization", `Bearer ${this.apiKey}`);
    return md;
  }

  /** Builds the metadata of a metadata case; throws when grpc-js refuses a header. */
  metadataOf(c: MetadataCase): Metadata {
    const md = new Metadata();
    const key = (v: string) => v.replaceAll("$KEY", this.apiKey);
    if (c.authorization !== undefined) md.set("authorization", key(c.authorization));
    if (c.apiKeyHeader !== undefined) md.set("x-api-key", key(c.apiKeyHeader));
    for (const [k, v] of c.extra) md.add(k, typeof v === "string" ? v : Buffer.from(v));
    return md;
  }

  /** Whether the coordinator must accept, must refuse, or may do either with these headers. */
  authVerdict(c: MetadataCase): "accept" | "refuse" | "either" {
    if (c.authorization === "Bearer $KEY") return "accept";
    if (c.authorization === undefined && c.apiKeyHeader === undefined) return "refuse";
    return "either";
  }

  call(method: GrpcMethodName, bytes: Uint8Array, metadata: Metadata = this.authorized(), deadlineMs = this.deadlineMs): Promise<Answer> {
    const m = GRPC_METHODS.find((x) => x.name === method)!;
    const path = `/${m.service}/${m.name}`;
    const arg = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const deadline = new Date(Date.now() + deadlineMs);
    return new Promise<Answer>((resolve) => {
      if (m.stream) {
        const call = this.client.makeServerStreamRequest(path, identity, identity, arg, metadata, { deadline });
        call.on("data", () => undefined);
        call.on("error", () => undefined); // the status event carries the code
        call.on("status", (s) => resolve({ code: s.code, details: s.details, response: undefined }));
      } else {
        this.client.makeUnaryRequest(path, identity, identity, arg, metadata, { deadline }, (err, res) => {
          if (err) resolve({ code: err.code ?? S.UNKNOWN, details: err.details ?? err.message, response: undefined });
          else resolve({ code: S.OK, details: "", response: res });
        });
      }
    });
  }

  close(): void {
    this.client.close();
  }
}
