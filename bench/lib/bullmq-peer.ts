// BullMQ on redis-server as the peer Shoal is compared with: what a team would otherwise use for
// a queue of jobs. Worker processes (bench/procs/bullmq-worker.ts) take zero-work jobs; this side
// adds a "batch" of jobs in bulk (Queue.addBulk) and counts it done when the completion of every
// job of it has come back through QueueEvents: the same "call start → every result available to
// the caller" that Shoal's RunBatch latency measures.

import { Queue, QueueEvents } from "bullmq";
import { spawnBenchScript, stopProc, type BenchProc } from "./procs.js";
import type { BatchRunner } from "./zero-work.js";

const QUEUE = "shoal-bench-zero";

interface PendingBatch {
  left: number;
  resolve(ok: boolean): void;
  reject(err: Error): void;
}

export class BullmqPeer {
  readonly workers: BenchProc[] = [];
  private queue: Queue | undefined;
  private events: QueueEvents | undefined;
  /** Job id → its batch, for jobs added and not yet completed. */
  private readonly batchOf = new Map<string, PendingBatch>();
  /** Completions that arrived before addBulk returned their job ids. */
  private readonly earlyDone = new Set<string>();
  private readonly earlyFailed = new Map<string, string>();

  constructor(
    private readonly redisPort: number,
    private readonly workerProcesses: number,
    private readonly concurrency: number,
  ) {}

  async start(): Promise<void> {
    const connection = { host: "127.0.0.1", port: this.redisPort, maxRetriesPerRequest: null };
    // The events stream is capped (10,000 by default): a reader lagging further behind during the
    // peak would miss completions. The cap is set by the queue and stored in redis for the workers.
    this.queue = new Queue(QUEUE, { connection, streams: { events: { maxLen: 2_000_000 } } });
    await this.queue.waitUntilReady();
    // From the start of the (fresh) stream: no completion is missed while the reader starts.
    this.events = new QueueEvents(QUEUE, { connection, lastEventId: "0-0" });
    this.events.on("completed", ({ jobId }) => this.settle(jobId));
    this.events.on("failed", ({ jobId, failedReason }) => this.settle(jobId, failedReason));
    await this.events.waitUntilReady();
    for (let i = 0; i < this.workerProcesses; i++) {
      this.workers.push(spawnBenchScript(`bullmq-worker ${i + 1}`, "procs/bullmq-worker.js", [String(this.redisPort), QUEUE, String(this.concurrency)]));
    }
    await Promise.all(this.workers.map((w) => w.waitForLine((l) => l === "READY", 30_000)));
  }

  private settle(jobId: string, failedReason?: string): void {
    const b = this.batchOf.get(jobId);
    if (!b) {
      if (failedReason === undefined) this.earlyDone.add(jobId);
      else this.earlyFailed.set(jobId, failedReason);
      return;
    }
    this.batchOf.delete(jobId);
    if (failedReason !== undefined) b.reject(new Error(`BullMQ job ${jobId} failed: ${failedReason}`));
    else if (--b.left === 0) b.resolve(true);
  }

  /** Adds `size` zero-work jobs in one addBulk; resolves true once all completed, false at the deadline. */
  runner(timeoutMs: number): BatchRunner {
    return async (size) => {
      const queue = this.queue;
      if (!queue) throw new Error("BullMQ peer not started");
      let timer: NodeJS.Timeout | undefined;
      const ids: string[] = [];
      const done = new Promise<boolean>((resolve, reject) => {
        const b: PendingBatch = { left: size, resolve, reject };
        timer = setTimeout(() => {
          for (const id of ids) this.batchOf.delete(id);
          resolve(false);
        }, timeoutMs);
        void queue
          .addBulk(Array.from({ length: size }, () => ({ name: "zero", data: {} })))
          .then((jobs) => {
            for (const j of jobs) {
              const id = j.id!;
              ids.push(id);
              const failed = this.earlyFailed.get(id);
              if (failed !== undefined) {
                this.earlyFailed.delete(id);
                return reject(new Error(`BullMQ job ${id} failed: ${failed}`));
              }
              if (this.earlyDone.delete(id)) b.left--;
              else this.batchOf.set(id, b);
            }
            if (b.left === 0) resolve(true);
          }, reject);
      });
      try {
        return await done;
      } finally {
        clearTimeout(timer);
      }
    };
  }

  get workerPids(): number[] {
    return this.workers.map((w) => w.pid);
  }

  /** Closes the producer's connections and kills the worker processes by pid. Idempotent. */
  async stop(): Promise<void> {
    await Promise.all(this.workers.map((w) => stopProc(w, "SIGKILL")));
    const closing = [this.events?.close(), this.queue?.close()];
    this.events = undefined;
    this.queue = undefined;
    await Promise.all(closing.map((c) => c?.catch(() => undefined)));
  }
}
