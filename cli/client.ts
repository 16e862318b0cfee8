// Promise-shaped wrappers over the generated grpc-js clients. The CLI (and anyone scripting
// Shoal from Node) gets async functions and async iterables, API-key metadata on every call,
// and one error type, ClientError, carrying the gRPC status name.

import { activeTraceContext } from "../shared/tracing.js";
import { Metadata, type CallOptions, type ClientReadableStream, type ServiceError } from "@grpc/grpc-js";
import {
  BatchServiceClient,
  FleetServiceClient,
  type Batch,
  type BatchEvent,
  type ListBatchesResponse,
  type Model,
  type TenantDayUsage,
  type GetUsageResponse,
  type SubmitBatchRequest,
  type SubmitBatchResponse,
  type Worker,
} from "../proto/gen/shoal/v1/shoal.js";
import { channelCredentials, clientTlsPaths, loadClientTls, type ClientTls } from "./client-tls.js";
import { toClientError } from "./errors.js";
import { createFailoverClients, splitAddrs } from "./failover.js";

export { ClientError } from "./errors.js";

export const DEFAULT_ADDR = "127.0.0.1:50051";

export interface CallOpts {
  /** Give up after this long; the server sees it as the call deadline (RunBatch honours it). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface ListBatchesOpts extends CallOpts {
  pageSize?: number;
  pageToken?: string;
}

/** What a submit needs; fields left out take their proto defaults. */
export type SubmitInput = Pick<SubmitBatchRequest, "items"> & Partial<Omit<SubmitBatchRequest, "items">>;

export interface ShoalClients {
  readonly addr: string;
  submitBatch(req: SubmitInput, opts?: CallOpts): Promise<SubmitBatchResponse>;
  runBatch(req: SubmitInput, opts?: CallOpts): Promise<Batch>;
  getBatch(batchId: string, opts?: CallOpts): Promise<Batch>;
  /** One event per finished item, then the terminal batch; ends when the server ends it. */
  /** `progress`: also non-terminal Batch events as the queue position or ETA moves. */
  watchBatch(batchId: string, opts?: CallOpts & { progress?: boolean }): AsyncIterable<BatchEvent>;
  cancelBatch(batchId: string, opts?: CallOpts): Promise<Batch>;
  retryBatch(batchId: string, opts?: CallOpts): Promise<SubmitBatchResponse>;
  listBatches(opts?: ListBatchesOpts): Promise<ListBatchesResponse>;
  getArtifact(uri: string, opts?: CallOpts): AsyncIterable<Buffer>;
  listWorkers(opts?: CallOpts): Promise<Worker[]>;
  drainWorker(workerId: string, opts?: CallOpts): Promise<Worker>;
  listModels(opts?: CallOpts): Promise<Model[]>;
  /** Usage days (oldest first); tenant "" is the caller's own (an operator's: every tenant). */
  getUsage(req: { tenant?: string; since?: string }, opts?: CallOpts): Promise<TenantDayUsage[]>;
  /** GetUsage's whole answer: the days and the plan limits of the tenants asked about. */
  getUsageReport(req: { tenant?: string; since?: string }, opts?: CallOpts): Promise<GetUsageResponse>;
  /** Closes both channels; safe to call more than once. */
  close(): void;
}

type UnaryFn<Req, Res> = (
  req: Req,
  md: Metadata,
  options: Partial<CallOptions>,
  cb: (err: ServiceError | null, res: Res) => void,
) => { cancel(): void };

export interface ClientOptions {
  /**
   * Deadline of unary calls that give none, so a hung coordinator can't hang a script. Not
   * applied to RunBatch or the streams, which last as long as the batch.
   */
  defaultTimeoutMs?: number;
  /**
   * TLS toward the coordinator. Absent: from SHOAL_CA, SHOAL_CERT, SHOAL_KEY (files), plaintext
   * when none is set; `null`: plaintext whatever the environment says.
   */
  tls?: ClientTls | null;
}

/** `addr` may list several coordinators, comma-separated (`a:50051,b:50051`): the active one answers. */
export function createClients(
  addr: string = process.env.SHOAL_ADDR ?? DEFAULT_ADDR,
  apiKey: string | undefined = process.env.SHOAL_API_KEY,
  options: ClientOptions = {},
): ShoalClients {
  // Several coordinators (one active, standbys): calls go to the active one (failover.ts).
  const addrs = splitAddrs(addr);
  if (addrs.length > 1) return createFailoverClients(addrs, (one) => createClients(one, apiKey, options));
  if (addrs.length === 1) addr = addrs[0]!;
  const defaultTimeoutMs = options.defaultTimeoutMs ?? 60_000;
  const creds = channelCredentials(options.tls === undefined ? loadClientTls(clientTlsPaths()) : (options.tls ?? undefined));
  // Streams of artifacts can be large; lift grpc-js's 4 MiB default on what we receive.
  const channelOptions = { "grpc.max_receive_message_length": 64 * 1024 * 1024 };
  const batch = new BatchServiceClient(addr, creds, channelOptions);
  const fleet = new FleetServiceClient(addr, creds, channelOptions);

  const metadata = (): Metadata => {
    const md = new Metadata();
    if (apiKey) md.set("authorization", `Bearer ${apiKey}`);
    // The caller's trace, where its process traces (the gateway): the coordinator's spans join it.
    const tc = activeTraceContext();
    if (tc) md.set("traceparent", tc.traceparent);
    if (tc?.tracestate) md.set("tracestate", tc.tracestate);
    return md;
  };

  const callOptions = (opts: CallOpts | undefined): Partial<CallOptions> =>
    opts?.timeoutMs !== undefined ? { deadline: new Date(Date.now() + opts.timeoutMs) } : {};

  function unary<Req, Res>(
    fn: UnaryFn<Req, Res>,
    req: Req,
    opts?: CallOpts,
    timeoutMs: number | null = defaultTimeoutMs,
  ): Promise<Res> {
    if (timeoutMs !== null) opts = { timeoutMs, ...opts };
    return new Promise<Res>((resolve, reject) => {
      if (opts?.signal?.aborted) {
        reject(opts.signal.reason);
        return;
      }
      const call = fn(req, metadata(), callOptions(opts), (err, res) => {
        opts?.signal?.removeEventListener("abort", onAbort);
        if (err) reject(toClientError(err));
        else resolve(res);
      });
      function onAbort(): void {
        call.cancel();
      }
      opts?.signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  async function* stream<T>(call: ClientReadableStream<T>, opts?: CallOpts): AsyncGenerator<T> {
    const onAbort = (): void => call.cancel();
    opts?.signal?.addEventListener("abort", onAbort, { once: true });
    let done = false;
    try {
      for await (const msg of call) yield msg as T;
      done = true;
    } catch (err) {
      throw toClientError(err);
    } finally {
      opts?.signal?.removeEventListener("abort", onAbort);
      if (!done) {
        // The consumer stopped early (break, error): tell the server, and swallow the
        // CANCELLED status grpc-js then emits, which nobody is listening for any more.
        call.on("error", () => {});
        call.cancel();
      }
    }
  }

  let closed = false;
  return {
    addr,
    submitBatch: (req, opts) => unary(batch.submitBatch.bind(batch), fullRequest(req), opts),
    runBatch: (req, opts) => unary(batch.runBatch.bind(batch), fullRequest(req), opts, null),
    getBatch: (batchId, opts) => unary(batch.getBatch.bind(batch), { batchId }, opts),
    watchBatch: (batchId, opts) => stream(batch.watchBatch({ batchId, progress: opts?.progress ?? false }, metadata(), callOptions(opts)), opts),
    cancelBatch: (batchId, opts) => unary(batch.cancelBatch.bind(batch), { batchId }, opts),
    retryBatch: (batchId, opts) => unary(batch.retryBatch.bind(batch), { batchId }, opts),
    listBatches: (opts) =>
      unary(batch.listBatches.bind(batch), { pageSize: opts?.pageSize ?? 0, pageToken: opts?.pageToken ?? "" }, opts),
    getArtifact: (uri, opts) => {
      const chunks = stream(batch.getArtifact({ uri }, metadata(), callOptions(opts)), opts);
      return (async function* () {
        for await (const chunk of chunks) yield Buffer.from(chunk.data);
      })();
    },
    listWorkers: async (opts) => (await unary(fleet.listWorkers.bind(fleet), {}, opts)).workers,
    drainWorker: (workerId, opts) => unary(fleet.drainWorker.bind(fleet), { workerId }, opts),
    listModels: async (opts) => (await unary(fleet.listModels.bind(fleet), {}, opts)).models,
    getUsage: async (req, opts) => (await unary(batch.getUsage.bind(batch), { tenant: req.tenant ?? "", since: req.since ?? "" }, opts)).days,
    getUsageReport: (req, opts) => unary(batch.getUsage.bind(batch), { tenant: req.tenant ?? "", since: req.since ?? "" }, opts),
    close() {
      if (closed) return;
      closed = true;
      batch.close();
      fleet.close();
    },
  };
}

function fullRequest(req: SubmitInput): SubmitBatchRequest {
  return {
    items: req.items,
    idempotencyKey: req.idempotencyKey ?? "",
    webhook: req.webhook,
    priority: req.priority ?? 0,
    labels: req.labels ?? {},
  };
}
