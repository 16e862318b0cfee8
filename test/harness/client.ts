import { status } from "@grpc/grpc-js";
import type { ClientTls } from "../../cli/client-tls.js";
import { createClients, type CallOpts, type ShoalClients, type SubmitInput } from "../../cli/client.js";
import { BatchState, WorkerState, type Batch, type BatchEvent, type Worker } from "../../proto/gen/shoal/v1/shoal.js";

/** Deadline of a unary call in tests: a coordinator that hangs fails the test instead. */
export const RPC_TIMEOUT_MS = 30_000;
/** Deadline of calls that last as long as a batch: RunBatch, WatchBatch, GetArtifact. */
export const LONG_CALL_TIMEOUT_MS = 180_000;

/**
 * The same clients, with a deadline on every call that gives none: unary calls get `unaryMs`,
 * RunBatch and the streams `longMs`. Tests use the SDK only through this.
 */
export function withDeadlines(clients: ShoalClients, unaryMs = RPC_TIMEOUT_MS, longMs = LONG_CALL_TIMEOUT_MS): ShoalClients {
  const d = <O extends CallOpts>(opts: O | undefined, ms: number): O => ({ ...opts, timeoutMs: opts?.timeoutMs ?? ms }) as O;
  return {
    get addr() {
      return clients.addr;
    },
    submitBatch: (req, opts) => clients.submitBatch(req, d(opts, unaryMs)),
    runBatch: (req, opts) => clients.runBatch(req, d(opts, longMs)),
    getBatch: (batchId, opts) => clients.getBatch(batchId, d(opts, unaryMs)),
    watchBatch: (batchId, opts) => clients.watchBatch(batchId, d(opts, longMs)),
    cancelBatch: (batchId, opts) => clients.cancelBatch(batchId, d(opts, unaryMs)),
    retryBatch: (batchId, opts) => clients.retryBatch(batchId, d(opts, unaryMs)),
    listBatches: (opts) => clients.listBatches(d(opts, unaryMs)),
    getArtifact: (uri, opts) => clients.getArtifact(uri, d(opts, longMs)),
    listWorkers: (opts) => clients.listWorkers(d(opts, unaryMs)),
    drainWorker: (workerId, opts) => clients.drainWorker(workerId, d(opts, unaryMs)),
    listModels: (opts) => clients.listModels(d(opts, unaryMs)),
    getUsage: (req, opts) => clients.getUsage(req, d(opts, unaryMs)),
    getUsageReport: (req, opts) => clients.getUsageReport(req, d(opts, unaryMs)),
    close: () => clients.close(),
  };
}

/** The numeric gRPC status of an error from the SDK. */
export function grpcCode(err: unknown): number | undefined {
  const e = err as { grpcCode?: number; code?: unknown };
  return e?.grpcCode ?? (typeof e?.code === "number" ? e.code : undefined);
}

/**
 * Errors a coordinator (or the nats-server behind it) that is restarting answers for a while.
 * Anything else, NOT_FOUND above all, is an answer and must not be waited out.
 */
export function isTransient(err: unknown): boolean {
  const code = grpcCode(err);
  return code === status.UNAVAILABLE || code === status.DEADLINE_EXCEEDED || code === status.INTERNAL;
}

const TERMINAL = new Set([BatchState.BATCH_STATE_COMPLETED, BatchState.BATCH_STATE_FAILED, BatchState.BATCH_STATE_CANCELLED]);

/** The SDK's clients plus the waiting and collecting that tests need; every call has a deadline. */
export class TestClient {
  readonly sdk: ShoalClients;
  constructor(addr: string, apiKey?: string, opts: { unaryTimeoutMs?: number; longCallTimeoutMs?: number; tls?: ClientTls | null } = {}) {
    this.sdk = withDeadlines(createClients(addr, apiKey, { tls: opts.tls }), opts.unaryTimeoutMs, opts.longCallTimeoutMs);
  }
  submit(req: SubmitInput) {
    return this.sdk.submitBatch(req);
  }
  run(req: SubmitInput, timeoutMs?: number) {
    return this.sdk.runBatch(req, { timeoutMs });
  }
  get(batchId: string): Promise<Batch> {
    return this.sdk.getBatch(batchId);
  }
  cancel(batchId: string): Promise<Batch> {
    return this.sdk.cancelBatch(batchId);
  }
  list(pageSize = 50, pageToken = "") {
    return this.sdk.listBatches({ pageSize, pageToken });
  }
  workers(): Promise<Worker[]> {
    return this.sdk.listWorkers();
  }
  async watch(batchId: string, timeoutMs?: number): Promise<BatchEvent[]> {
    const events: BatchEvent[] = [];
    for await (const ev of this.sdk.watchBatch(batchId, { timeoutMs })) events.push(ev);
    return events;
  }
  async artifact(uri: string, timeoutMs?: number): Promise<Buffer> {
    const chunks: Buffer[] = [];
    for await (const c of this.sdk.getArtifact(uri, { timeoutMs })) chunks.push(c);
    return Buffer.concat(chunks);
  }
  /** Waits until n workers are READY; only a coordinator that is not up yet is waited out. */
  async waitForWorkers(n: number, timeoutMs = 60_000): Promise<Worker[]> {
    const deadline = Date.now() + timeoutMs;
    let last: unknown;
    for (;;) {
      let ws: Worker[] = [];
      let answered = true;
      try {
        ws = await this.workers();
      } catch (err) {
        if (!isTransient(err)) throw err;
        last = err;
        answered = false;
      }
      const ready = ws.filter((w) => w.state === WorkerState.WORKER_STATE_READY);
      // Only an answer counts (a standby's or a restarting coordinator's UNAVAILABLE is none),
      // so waitForWorkers(0) waits for a coordinator that serves.
      if (answered && ready.length >= n) return ready;
      if (Date.now() > deadline) throw new Error(`only ${ready.length} of ${n} workers ready after ${timeoutMs} ms${last ? ` (last error: ${String(last)})` : ""}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  /** Polls GetBatch until terminal; `onPoll` sees every answer (to check atomicity). */
  async waitTerminal(batchId: string, timeoutMs = 120_000, onPoll?: (b: Batch) => void): Promise<Batch> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const b = await this.get(batchId);
      onPoll?.(b);
      if (TERMINAL.has(b.state)) return b;
      if (Date.now() > deadline) throw new Error(`batch ${batchId} not terminal after ${timeoutMs} ms: ${JSON.stringify({ ...b, results: undefined })}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  close(): void {
    this.sdk.close();
  }
}
