// A fixed pool of inference threads with a queue in front. Each thread runs one group at a
// time; items wait in order when all are busy. A thread that dies (process.exit in the thread,
// an uncaught error) fails only the item it was running, with a retryable error, and is
// replaced, so the pool keeps serving.
//
// Dynamic batching: when a thread comes free, the item at the head of the queue decides what it
// runs next. If the item has a batch key (see batch-key.ts), queued items behind it with the same
// key join it, up to the model's max_batch, and the thread runs them as one batch; items of other
// shapes keep their places. A short queue is spread over idle threads rather than piled onto one.
// Cancelling one item of a running group answers it at once and the thread drops its output;
// the thread stops early only when every item of the group is cancelled. A thread that dies
// running a group cannot say which item killed it, so each item of the group runs again alone.
//
// A thread is never terminated while it may be inside onnxruntime: run() is synchronous native
// code, and stopping a thread's JS environment under it aborts the whole process (napi throws
// from native code). So a cancel the model does not notice in time is answered at once, and
// the thread finishes its computation in the background before it takes new work.

import type { CancelSignal } from "./backend.js";
import { Worker } from "node:worker_threads";
import { InferenceError, type ArtifactData } from "./backend.js";
import type { BatchKey } from "./batch-key.js";
import type { FromThread, ThreadInit, ToThread } from "./thread-protocol.js";
import { contextFromTraceparent, endSpan, linkTo, startSpan, tracingOn, type Link, type Span } from "../../shared/tracing.js";

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
  /** The item's run span, when traced: the group's `shoal.inference` span links to it. */
  traceparent?: string;
}

export interface PoolResult {
  artifacts: ArtifactData[];
  /** Items in the group it ran in: 1 when it ran alone. */
  groupSize: number;
}

/** What the pool has run since it started. */
export interface PoolStats {
  /** Groups handed to threads; an item run alone is a group of one. */
  groups: number;
  /** Items handed to threads. */
  items: number;
  /** imagegen-tiny denoiser session runs the threads reported (one per step per group). */
  denoiserCalls: number;
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
  /** Dynamic batching: an item's batch key, or undefined to run it alone. Without it, every item runs alone. */
  batchKey?: (job: PoolJob) => BatchKey | undefined;
  /** Called for every model a thread loaded, with how long the load took. */
  onModelLoad?: (model: string, seconds: number) => void;
}

/** Consecutive threads that die before becoming ready, after which the pool gives up. */
const MAX_START_FAILURES = 3;

interface Task {
  job: PoolJob;
  signal: CancelSignal;
  resolve: (result: PoolResult) => void;
  reject: (err: InferenceError) => void;
  settled: boolean;
  batch: BatchKey | undefined;
  /** Runs alone from now on: it was in a group whose thread died. */
  solo: boolean;
  onAbort?: () => void;
  cancelTimer?: NodeJS.Timeout;
}

/** Items a thread runs as one unit: a single item, or a batch of one model and shape. */
interface Group {
  id: number;
  tasks: Task[];
  /** Shared with the thread, one entry per task: 1 asks it to drop that item at its next check. */
  cancel: Int32Array;
  /** `shoal.inference`, the thread's run of the group (tracing on, traced items only). */
  span?: Span;
}

interface Slot {
  id: number;
  worker: Worker;
  ready: boolean;
  /** The group it runs; stays set after its cancels were answered early, until the thread reports. */
  current?: Group;
  resident: string[];
  /** Evictions sent to the thread and not answered yet: resolved with whether it held the model. */
  evictions?: Map<number, (had: boolean) => void>;
  lastError?: Error;
  onReady: { resolve: () => void; reject: (err: Error) => void };
}

export class ThreadPool {
  private readonly slots = new Set<Slot>();
  private readonly queue: Task[] = [];
  private nextId = 0;
  private nextGroupId = 0;
  private nextEvictionId = 0;
  private readonly counters: PoolStats = { groups: 0, items: 0, denoiserCalls: 0 };
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

  run(job: PoolJob, signal: CancelSignal): Promise<PoolResult> {
    return new Promise<PoolResult>((resolve, reject) => {
      if (this.closing !== undefined) return reject(new InferenceError("INFERENCE_FAILED", "the inference backend is closed", true));
      if (this.broken !== undefined) return reject(new InferenceError("INFERENCE_FAILED", this.broken, true));
      if (signal.aborted) return reject(cancelled(job, "before it was queued"));
      let batch: BatchKey | undefined;
      try {
        batch = this.options.batchKey?.(job);
      } catch {
        batch = undefined; // an item the key cannot be worked out for runs alone
      }
      const task: Task = { job, signal, resolve, reject, settled: false, batch, solo: false };
      this.watchQueued(task);
      this.queue.push(task);
      this.dispatch();
    });
  }

  /** What the pool has run so far. */
  stats(): PoolStats {
    return { ...this.counters };
  }

  /** The union of the models loaded in live threads. */
  residentModels(): string[] {
    const names = new Set<string>();
    for (const slot of this.slots) for (const name of slot.resident) names.add(name);
    return [...names].sort();
  }

  /**
   * Releases a model's sessions in every thread that holds it (defragmentation). Refused while
   * an item of it is queued or running here; a thread busy with another model's group releases
   * it once that group is done.
   */
  async evict(model: string): Promise<"evicted" | "not-loaded" | { refused: string }> {
    let busy = this.queue.filter((t) => t.job.model === model).length;
    for (const s of this.slots) busy += s.current?.tasks.filter((t) => !t.settled && t.job.model === model).length ?? 0;
    if (busy > 0) return { refused: `${busy} item(s) of ${model} queued or running in the inference threads` };
    const holders = [...this.slots].filter((s) => s.ready && s.resident.includes(model));
    if (holders.length === 0) return "not-loaded";
    const had = await Promise.all(
      holders.map(
        (s) =>
          new Promise<boolean>((resolve) => {
            const requestId = this.nextEvictionId++;
            (s.evictions ??= new Map()).set(requestId, resolve);
            s.worker.postMessage({ type: "evict", requestId, model } satisfies ToThread);
          }),
      ),
    );
    return had.some(Boolean) ? "evicted" : "not-loaded";
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
      case "done": {
        slot.resident = msg.resident;
        for (const l of msg.loads ?? []) this.options.onModelLoad?.(l.model, l.seconds);
        const group = slot.current;
        if (group === undefined || group.id !== msg.groupId) return;
        slot.current = undefined;
        endSpan(group.span);
        this.counters.denoiserCalls += msg.stats.denoiserCalls ?? 0;
        group.tasks.forEach((task, k) => {
          const result = msg.items[k];
          if (task.signal.aborted) settle(task, cancelled(task.job, "while running"));
          else if (result === undefined || result.jobId !== task.job.id) {
            settle(task, new InferenceError("INFERENCE_FAILED", `inference thread ${slot.id} sent no result for item ${task.job.id}`, true));
          } else if (result.ok) settle(task, { artifacts: result.artifacts, groupSize: group.tasks.length });
          else settle(task, new InferenceError(result.code, result.message, result.retryable));
        });
        this.dispatch();
        return;
      }
      case "log":
        this.options.logger[msg.level]({ ...msg.fields, thread: slot.id }, msg.msg);
        return;
      case "evicted": {
        slot.resident = msg.resident;
        const resolve = slot.evictions?.get(msg.requestId);
        slot.evictions?.delete(msg.requestId);
        resolve?.(msg.had);
        return;
      }
      case "closed":
        void slot.worker.terminate();
        return;
    }
  }

  private onExit(slot: Slot, code: number): void {
    this.slots.delete(slot);
    // A thread that is gone holds nothing: its pending evictions are answered as done.
    for (const resolve of slot.evictions?.values() ?? []) resolve(true);
    slot.evictions?.clear();
    const why = `inference thread ${slot.id} exited with code ${code}${slot.lastError ? `: ${slot.lastError.message}` : ""}`;
    if (!slot.ready) slot.onReady.reject(new Error(`${why} before it was ready`));
    const group = slot.current;
    slot.current = undefined;
    endSpan(group?.span, new Error(why));
    const live = group?.tasks.filter((t) => !t.settled) ?? [];
    if (group !== undefined && group.tasks.length > 1 && live.length > 0 && this.closing === undefined && this.broken === undefined) {
      // One of them may have killed the thread, and nothing tells which: run each again alone,
      // so that only a poison item fails.
      this.options.logger.warn({ thread: slot.id, items: live.map((t) => t.job.id) }, "an inference thread died running a batch; its items run again one at a time");
      for (const task of [...live].reverse()) {
        task.solo = true;
        if (task.signal.aborted) settle(task, cancelled(task.job, "while running"));
        else {
          this.watchQueued(task);
          this.queue.unshift(task);
        }
      }
      this.dispatch();
    } else {
      for (const task of live) {
        settle(task, new InferenceError("INFERENCE_FAILED", `${why} while running item ${task.job.id}`, true, { cause: slot.lastError }));
      }
    }
    if (this.closing !== undefined || !this.started) return;
    this.options.logger.error(
      { thread: slot.id, code, err: slot.lastError?.message, items: group?.tasks.map((t) => t.job.id) },
      "inference thread died; starting a replacement",
    );
    if (!slot.ready && ++this.startFailures >= MAX_START_FAILURES) {
      this.broken = `inference threads keep dying before they are ready (${why})`;
      this.options.logger.error({ failures: this.startFailures }, this.broken);
      for (const queued of this.queue.splice(0)) settle(queued, new InferenceError("INFERENCE_FAILED", this.broken, true));
      return;
    }
    const delay = this.startFailures * 200;
    const respawn = setTimeout(() => {
      if (this.closing === undefined) this.spawn().catch(() => {}); // its exit is handled like this one
    }, delay);
    // Items waiting for the replacement keep the process up until it comes; nothing else need.
    if (this.queue.length === 0) respawn.unref();
  }

  private dispatch(): void {
    for (const slot of this.slots) {
      if (this.queue.length === 0) return;
      if (!slot.ready || slot.current !== undefined) continue;
      this.assign(slot, this.takeGroup());
    }
  }

  /**
   * Takes the head of the queue and, where it batches, the queued items behind it with the same
   * batch key (FIFO fairness: the head decides; other items keep their places).
   */
  private takeGroup(): Task[] {
    const head = this.queue.shift()!;
    const batch = head.batch;
    if (batch === undefined || batch.maxBatch <= 1 || head.solo) return [head];
    const matching = this.queue.filter((t) => !t.solo && !t.settled && t.batch?.key === batch.key && t.job.model === head.job.model);
    if (matching.length === 0) return [head];
    // A short queue goes to idle threads side by side rather than into one batch.
    const idle = [...this.slots].filter((s) => s.ready && s.current === undefined).length;
    const size = Math.min(batch.maxBatch, Math.ceil((matching.length + 1) / Math.max(1, idle)));
    const joined = new Set(matching.slice(0, size - 1));
    for (let i = this.queue.length - 1; i >= 0; i--) if (joined.has(this.queue[i]!)) this.queue.splice(i, 1);
    return [head, ...joined];
  }

  private assign(slot: Slot, tasks: Task[]): void {
    const group: Group = { id: this.nextGroupId++, tasks, cancel: new Int32Array(new SharedArrayBuffer(4 * tasks.length)), span: tracingOn() ? inferenceSpan(tasks.map((t) => t.job)) : undefined };
    slot.current = group;
    this.counters.groups++;
    this.counters.items += tasks.length;
    tasks.forEach((task, k) => {
      this.unwatch(task);
      task.onAbort = () => {
        Atomics.store(group.cancel, k, 1);
        if (tasks.some((t) => t !== task && !t.settled)) {
          // The rest of the batch carries on; the thread drops this item's output.
          settle(task, cancelled(task.job, "while running in a batch"));
          return;
        }
        task.cancelTimer = setTimeout(() => {
          if (slot.current !== group || task.settled) return;
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
    });
    const msg: ToThread = {
      type: "run",
      groupId: group.id,
      model: tasks[0]!.job.model,
      items: tasks.map((t) => ({ jobId: t.job.id, params: t.job.params })),
      cancel: group.cancel.buffer as SharedArrayBuffer,
    };
    slot.worker.postMessage(msg);
  }

  /** While queued, a cancel takes the item out of the queue and answers it at once. */
  private watchQueued(task: Task): void {
    this.unwatch(task);
    task.onAbort = () => {
      const at = this.queue.indexOf(task);
      if (at >= 0) this.queue.splice(at, 1);
      settle(task, cancelled(task.job, "while queued"));
    };
    task.signal.addEventListener("abort", task.onAbort, { once: true });
  }

  private unwatch(task: Task): void {
    if (task.onAbort) task.signal.removeEventListener("abort", task.onAbort);
    task.onAbort = undefined;
    if (task.cancelTimer) clearTimeout(task.cancelTimer);
    task.cancelTimer = undefined;
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
    const cancel = slot.current?.cancel;
    if (cancel !== undefined) for (let k = 0; k < cancel.length; k++) Atomics.store(cancel, k, 1);
    if (await within(exited, this.options.closeGraceMs)) return;
    this.options.logger.warn({ thread: slot.id, items: slot.current?.tasks.map((t) => t.job.id) }, "inference thread still computing at close; leaving it to finish");
    slot.worker.unref();
  }
}

/**
 * The span of one run of a thread: a child of its first traced item's run span, linked to every
 * item's (dynamic batching merges items of several batches, so of several traces, into one run).
 */
function inferenceSpan(jobs: PoolJob[]): Span | undefined {
  if (!tracingOn()) return undefined;
  const traced = jobs.filter((j) => j.traceparent);
  if (traced.length === 0) return undefined;
  const links = traced.map((j) => linkTo(j.traceparent)).filter((l): l is Link => l !== undefined);
  return startSpan("shoal.inference", { links, attributes: { "shoal.model": jobs[0]!.model, "shoal.inference.batch_size": jobs.length } }, contextFromTraceparent(traced[0]!.traceparent));
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
