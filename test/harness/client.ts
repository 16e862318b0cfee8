import { createClients, type ShoalClients, type SubmitInput } from "../../cli/client.js";
import { WorkerState, type Batch, type BatchEvent, type Worker } from "../../proto/gen/shoal/v1/shoal.js";

/** The SDK's clients plus the waiting and collecting that tests need. */
export class TestClient {
  readonly sdk: ShoalClients;
  constructor(addr: string, apiKey?: string) {
    this.sdk = createClients(addr, apiKey);
  }
  submit(req: SubmitInput) {
    return this.sdk.submitBatch(req);
  }
  run(req: SubmitInput) {
    return this.sdk.runBatch(req);
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
  async watch(batchId: string): Promise<BatchEvent[]> {
    const events: BatchEvent[] = [];
    for await (const ev of this.sdk.watchBatch(batchId)) events.push(ev);
    return events;
  }
  async artifact(uri: string): Promise<Buffer> {
    const chunks: Buffer[] = [];
    for await (const c of this.sdk.getArtifact(uri)) chunks.push(c);
    return Buffer.concat(chunks);
  }
  async waitForWorkers(n: number, timeoutMs = 60_000): Promise<Worker[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const ws = await this.workers().catch(() => [] as Worker[]);
      const ready = ws.filter((w) => w.state === WorkerState.WORKER_STATE_READY);
      if (ready.length >= n) return ready;
      if (Date.now() > deadline) throw new Error(`only ${ready.length} of ${n} workers ready after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  /** Polls GetBatch until terminal; `onPoll` sees every answer (to check atomicity). */
  async waitTerminal(batchId: string, timeoutMs = 120_000, onPoll?: (b: Batch) => void): Promise<Batch> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const b = await this.get(batchId);
      onPoll?.(b);
      if (b.state >= 3) return b;
      if (Date.now() > deadline) throw new Error(`batch ${batchId} not terminal after ${timeoutMs} ms: ${JSON.stringify({ ...b, results: undefined })}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  close(): void {
    this.sdk.close();
  }
}

/** The numeric gRPC status of an error from the SDK. */
export function grpcCode(err: unknown): number | undefined {
  const e = err as { grpcCode?: number; code?: unknown };
  return e?.grpcCode ?? (typeof e?.code === "number" ? e.code : undefined);
}
