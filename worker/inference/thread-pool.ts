// A fixed pool of inference threads with a queue in front. Each thread runs one item at a
// time; items wait in order when all are busy. A thread that dies (process.exit in the thread,
// an uncaught error) fails only the item it was running, with a retryable error, and is
// replaced, so the pool keeps serving.
//
// A thread is never terminated while it may be inside onnxruntime: run() is synchronous native
// code, and stopping a thread's JS environment under it aborts the whole process (napi throws
// from native code). So a cancel the model does not notice in time is answered at once, and
// the thread finishes its computation in the background before it takes new work.

import { Worker } from "node:worker_threads";
import { InferenceError, type ArtifactData } from "./backend.js";
import type { FromThread, RunStats, ThreadInit, ToThread } from "./thread-protocol.js";

/** The subset of pino's Logger the backend uses. */
export interface BackendLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export interface PoolJob {
  id: string;
  model: string;
  params: Record<string, unknown>;
}

export interface PoolResult {
  artifacts: ArtifactData[];
  stats: RunStats;
}

export interface ThreadPoolOptions {
  size: number;
  /** The compiled inference-thread.js. */
  entry: URL;
  init: ThreadInit;
  logger: BackendLogger;
  /** How long a running item may take to notice a cancel before it is answered CANCELLED anyway. */
  cancelGraceMs: number;
  /** How long close() lets running items finish before terminating their threads. */
  closeGraceMs: number;
}

/** Consecutive threads that die before becoming ready, after which the pool gives up. */
const MAX_START_FAILURES = 3;

interface Task {
  job: PoolJob;
  signal: AbortSignal;
  resolve: (result: PoolResult) => void;
  reject: (err: InferenceError) => void;
  settled: boolean;
  /** Shared with the thread while it runs: 1 asks it to stop at its next check. */
  cancelFlag?: Int32Array;
  onAbort?: () => void;
  cancelTimer?: NodeJS.Timeout;
}

interface Slot {
  id: number;
  worker: Worker;
  ready: boolean;
  /** The item it runs; stays set after a cancel was answered early, until the thread reports. */
  current?: Task;
  resident: string[];
  lastError?: Error;
  onReady: { resolve: () => void; reject: (err: Error) => void };
}

export class ThreadPool {
  private readonly slots = new Set<Slot>();
  private readonly queue: Task[] = [];
  private nextId = 0;
  private started = false;
  private startFailures = 0;
  private broken: string | undefined;
  private closing: Promise<void> | undefined;

  constructor(private readonly options: ThreadPoolOptions) {
    if (!Number.isInteger(options.size) || options.size < 1) throw new RangeError(`threads must be a positive integer (got ${options.size})`);
  }

  /** Starts every thread; rejects (and stops them all) if any fails to come up. */
  async start(): Promise<void> {
    try {
      await Promise.all(Array.from({ length: this.options.size }, () => this.spawn()));
      this.started = true;
    } catch (err) {
      await this.close();
      throw err;
    }
  }

  run(job: PoolJob, signal: AbortSignal): Promise<PoolResult> {
    return new Promise<PoolResult>((resolve, reject) => {
      if (this.closing !== undefined) return reject(new InferenceError("INFERENCE_FAILED", "the inference backend is closed", true));
      if (this.broken !== undefined) return reject(new InferenceError("INFERENCE_FAILED", this.broken, true));
      if (signal.aborted) return reject(cancelled(job, "before it was queued"));
      const task: Task = { job, signal, resolve, reject, settled: false };
      task.onAbort = () => {
        const at = this.queue.indexOf(task);
        if (at >= 0) this.queue.splice(at, 1);
        settle(task, cancelled(job, "while queued"));
      };
      signal.addEventListener("abort", task.onAbort, { once: true });
      this.queue.push(task);
      this.dispatch();
    });
  }

  /** The union of the models loaded in live threads. */
  residentModels(): string[] {
    const names = new Set<string>();
    for (const slot of this.slots) for (const name of slot.resident) names.add(name);
    return [...names].sort();
  }

  /** Items waiting for a thread. */
  queued(): number {
    return this.queue.length;
  }

  /** Idempotent. Queued items fail (retryable); running ones get closeGraceMs to finish. */
  close(): Promise<void> {
    return (this.closing ??= (async () => {
      for (const task of this.queue.splice(0)) {
        settle(task, new InferenceError("INFERENCE_FAILED", "the inference backend closed before the item started", true));
      }
      await Promise.all([...this.slots].map((slot) => this.stopSlot(slot)));
    })());
  }

  private spawn(): Promise<void> {
    const id = this.nextId++;
    const worker = new Worker(this.options.entry, { workerData: this.options.init, stdout: false, stderr: false });
    return new Promise<void>((resolve, reject) => {
      const slot: Slot = { id, worker, ready: false, resident: [], onReady: { resolve, reject } };
      this.slots.add(slot);
      worker.on("message", (msg: FromThread) => this.onMessage(slot, msg));
      worker.on("error", (err) => {
        slot.lastError = err;
      });
      worker.on("messageerror", (err) => {
        slot.lastError = err;
      });
      worker.on("exit", (code) => this.onExit(slot, code));
    });
  }

  private onMessage(slot: Slot, msg: FromThread): void {
    switch (msg.type) {
      case "ready":
        slot.ready = true;
        this.startFailures = 0;
        slot.onReady.resolve();
        this.dispatch();
        return;
      case "done":
      case "failed": {
        slot.resident = msg.resident;
        const task = slot.current;
        if (task === undefined || task.job.id !== msg.jobId) return;
        slot.current = undefined;
        if (task.signal.aborted) settle(task, cancelled(task.job, "while running"));
        else if (msg.type === "done") settle(task, { artifacts: msg.artifacts, stats: msg.stats });
        else settle(task, new InferenceError(msg.code, msg.message, msg.retryable));
        this.dispatch();
        return;
      }
      case "log":
        this.options.logger[msg.level]({ ...msg.fields, thread: slot.id }, msg.msg);
        return;
      case "closed":
        void slot.worker.terminate();
        return;
    }
  }

  private onExit(slot: Slot, code: number): void {
    this.slots.delete(slot);
    const why = `inference thread ${slot.id} exited with code ${code}${slot.lastError ? `: ${slot.lastError.message}` : ""}`;
    if (!slot.ready) slot.onReady.reject(new Error(`${why} before it was ready`));
    const task = slot.current;
    slot.current = undefined;
    if (task !== undefined && !task.settled) {
      settle(task, new InferenceError("INFERENCE_FAILED", `${why} while running item ${task.job.id}`, true, { cause: slot.lastError }));
    }
    if (this.closing !== undefined || !this.started) return;
    this.options.logger.error({ thread: slot.id, code, err: slot.lastError?.message, item: task?.job.id }, "inference thread died; starting a replacement");
    if (!slot.ready && ++this.startFailures >= MAX_START_FAILURES) {
      this.broken = `inference threads keep dying before they are ready (${why})`;
      this.options.logger.error({ failures: this.startFailures }, this.broken);
      for (const queued of this.queue.splice(0)) settle(queued, new InferenceError("INFERENCE_FAILED", this.broken, true));
      return;
    }
    const delay = this.startFailures * 200;
    setTimeout(() => {
      if (this.closing === undefined) this.spawn().catch(() => {}); // its exit is handled like this one
    }, delay).unref();
  }

  private dispatch(): void {
    for (const slot of this.slots) {
      if (this.queue.length === 0) return;
      if (!slot.ready || slot.current !== undefined) continue;
      const task = this.queue.shift()!;
      this.assign(slot, task);
    }
  }

  private assign(slot: Slot, task: Task): void {
    if (task.onAbort) task.signal.removeEventListener("abort", task.onAbort);
    const cancel = new SharedArrayBuffer(4);
    const flag = new Int32Array(cancel);
    task.cancelFlag = flag;
    slot.current = task;
    task.onAbort = () => {
      Atomics.store(flag, 0, 1);
      task.cancelTimer = setTimeout(() => {
        if (slot.current !== task || task.settled) return;
        // The model has not reached a cancel check (one long onnxruntime run). Answer now;
        // the thread stays busy until the run ends and its result is dropped.
        settle(task, cancelled(task.job, "(its computation ends in the background)"));
        this.options.logger.warn(
          { thread: slot.id, item: task.job.id, graceMs: this.options.cancelGraceMs },
          "a cancelled item did not stop in time; its thread is busy until the computation ends",
        );
      }, this.options.cancelGraceMs);
      task.cancelTimer.unref();
    };
    task.signal.addEventListener("abort", task.onAbort, { once: true });
    const msg: ToThread = { type: "run", jobId: task.job.id, model: task.job.model, params: task.job.params, cancel };
    slot.worker.postMessage(msg);
  }

  /**
   * Asks a thread to release its sessions and exit once its current item is done. After the
   * grace time the item is asked to stop; a thread still inside onnxruntime after that is left
   * to finish (unref'd) rather than terminated under it.
   */
  private async stopSlot(slot: Slot): Promise<void> {
    const exited = new Promise<void>((resolve) => slot.worker.once("exit", () => resolve()));
    if (!slot.ready) {
      // Still starting: it has loaded no model, so nothing native runs on it.
      await slot.worker.terminate();
      return exited;
    }
    slot.worker.postMessage({ type: "close" } satisfies ToThread);
    if (await within(exited, this.options.closeGraceMs)) return;
    if (slot.current?.cancelFlag) Atomics.store(slot.current.cancelFlag, 0, 1);
    if (await within(exited, this.options.closeGraceMs)) return;
    this.options.logger.warn({ thread: slot.id, item: slot.current?.job.id }, "inference thread still computing at close; leaving it to finish");
    slot.worker.unref();
  }
}

function cancelled(job: PoolJob, when: string): InferenceError {
  return new InferenceError("CANCELLED", `item ${job.id} was cancelled ${when}`, false);
}

function settle(task: Task, outcome: PoolResult | InferenceError): void {
  if (task.settled) return;
  task.settled = true;
  if (task.onAbort) task.signal.removeEventListener("abort", task.onAbort);
  if (task.cancelTimer) clearTimeout(task.cancelTimer);
  if (outcome instanceof InferenceError) task.reject(outcome);
  else task.resolve(outcome);
}

/** Whether `p` settles within `ms`. */
function within(p: Promise<void>, ms: number): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    timer.unref();
    void p.then(() => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}
