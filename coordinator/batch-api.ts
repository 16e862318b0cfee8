// The batch API: what the gRPC services call for batches (submit, get, watch, list, cancel,
// retry, artifacts) and the terminal write that ends every batch, with the events watchers
// receive. It reads and writes JetStream storage (records, index, idempotency keys, webhooks,
// artifacts) and the coordinator's in-memory running batches; placement is not its business: a
// new batch's items go into the queue and a pass is asked for.

import type { NatsConnection } from "@nats-io/transport-node";
import { BatchState, ItemStatus, type Batch, type BatchEvent, type SubmitBatchRequest } from "../proto/gen/shoal/v1/shoal.js";
import type { BatchRecord } from "../proto/gen/shoal/v1/wire.js";
import type { TenantLimits } from "./api-keys.js";
import { errorMessage } from "../shared/errors.js";
import { BATCH_ID, newBatchId } from "../shared/ids.js";
import { isRecentBatch, rereadWhileMissing } from "./fresh-read.js";
import type { Infrastructure } from "../shared/jetstream-setup.js";
import type { Logger } from "../shared/logger.js";
import { quoteInput } from "../shared/param-limits.js";
import { retryWhileNothingStored, StorageError, storageError } from "../shared/storage-errors.js";
import { ARTIFACT_URI_PREFIX, type Names } from "../shared/subjects.js";
import type { VramNeed } from "../shared/vram-need.js";
import { decodePageToken, encodePageToken, type BatchIndex, type IndexEntry } from "./batch-index.js";
import type { BatchQueue } from "./batch-queue.js";
import type { ActiveBatch, Attempt } from "./batch-state.js";
import { isTerminal, type BatchStore } from "./batch-store.js";
import { CONTENT_POLICY_CODE, type ContentPolicyStage } from "./content-policy-stage.js";
import { failedPrecondition, invalidArgument, notFound, resourceExhausted, ServerError, TermEndedError, unavailable } from "./errors.js";
import type { CoordinatorMetrics } from "./metrics.js";
import type { ModelRegistry } from "./model-registry.js";
import type { CoordinatorOptions } from "./options.js";
import { encodeRecord, encodeRecordItems } from "./record-encoding.js";
import { submitterTrace } from "./item-tracing.js";
import { stepDurations, wallNowMs, type StepMarks } from "./step-times.js";
import { fitTerminalRecordBytes, KV_OVERHEAD_BYTES, terminalRecordBound } from "./record-size.js";
import { TerminalWriteStopped, writeTerminal } from "./terminal-writer.js";
import { countTerminalUsage, holdMsFromEnv, holdUsageCountMs, type TerminalUsageOutcome } from "./terminal-usage.js";
import { sleepUnlessAborted } from "../shared/sleep.js";
import { DailyLimitExceeded, utcDay, type UsageStore } from "./usage.js";
import { annotateActiveSpan, endSpan, startSpan } from "../shared/tracing.js";
import { validateSubmit } from "./validation.js";
import { withoutSecret, type WebhookSender } from "./webhooks.js";
import { MAX_WEBHOOK_URL_BYTES, webhookTargetProblem } from "./webhook-target.js";

/**
 * TEST HOOK, for failover tests only: when SHOAL_TEST_HOLD_SUBMIT_ANSWER_MS is set, a submit
 * waits that long after its batch is stored and before it checks its term and answers, so a test
 * can pause the coordinator past its lease in between. Nothing else uses this variable.
 */
export const HOLD_SUBMIT_ANSWER_ENV = "SHOAL_TEST_HOLD_SUBMIT_ANSWER_MS";

type BatchListener = (ev: BatchEvent) => void;

export interface BatchApiDeps {
  /** Read when used: these exist once the coordinator has started (ensureStarted guards the calls). */
  nc: () => NatsConnection | undefined;
  infra: () => Infrastructure;
  store: () => BatchStore;
  index: () => BatchIndex;
  webhooks: () => WebhookSender;
  names: Names;
  opts: CoordinatorOptions;
  log: Logger;
  metrics: CoordinatorMetrics | undefined;
  models: ModelRegistry;
  /** Screens each item's text before the batch is stored (content-policy-stage.ts). */
  contentPolicy: ContentPolicyStage;
  queue: BatchQueue;
  /** The running batches, by id; a batch leaves it once its terminal record is stored. */
  active: Map<string, ActiveBatch>;
  /** Makes a stored record a running batch (its items queued); `needs` are validation's. */
  activate: (record: BatchRecord, revision: number, writtenAtMs?: number, needs?: VramNeed[]) => ActiveBatch;
  /** Asks the workers running these attempts to stop them. */
  cancelOnWorkers: (batchId: string, running: { index: number; lease: Attempt }[]) => void;
  scheduleSoon: () => void;
  /** Throws UNAVAILABLE while the coordinator is starting or shutting down. */
  ensureStarted: () => void;
  /** Aborted when the coordinator stops: ends the retries of terminal writes (the next start resumes them). */
  stopping: AbortSignal;
  /**
   * Whether this coordinator still holds its term (the fence's view of the lease); absent: always
   * (a coordinator without standbys). Read when a submit's writes are stored, before it answers.
   */
  holdsTerm?: () => boolean;
  /** A running batch's queue position and ETA (batch-progress.ts); undefined until first estimated. */
  progress?: (batchId: string) => { queuePosition: number; estimatedCompletionAt: Date | undefined } | undefined;
  /** Per-tenant usage by day (usage.ts); exists once the coordinator has started. */
  usage: () => UsageStore;
  /** The tenant label for metrics: a configured tenant's name, or "other" (bounded cardinality). */
  tenantLabel: (tenant: string) => string;
}

export class BatchApi {
  private readonly listeners = new Map<string, Set<BatchListener>>();
  /** The listeners of watches that asked for progress events (emitProgress). */
  private readonly progressListeners = new WeakSet<BatchListener>();
  /** Submits between claiming their id's idempotency key and activating (or failing): settle when done. */
  private readonly storingBatches = new Map<string, Promise<void>>();
  private lastRefreshCheck = 0;
  /** Test hook only (terminal-usage.ts HOLD_USAGE_COUNT_ENV). */
  private readonly holdUsageCountMs = holdUsageCountMs();
  /** Test hook only (HOLD_SUBMIT_ANSWER_ENV). */
  private readonly holdSubmitAnswerMs = holdMsFromEnv(HOLD_SUBMIT_ANSWER_ENV);

  constructor(private readonly d: BatchApiDeps) {}

  async submit(req: SubmitBatchRequest, tenant: string, retryOf = "", sourceIndices: number[] = [], limits: TenantLimits = {}): Promise<{ batchId: string; itemCount: number }> {
    this.d.ensureStarted();
    const steps: StepMarks | undefined = this.d.log.isLevelEnabled("debug") ? { received: wallNowMs() } : undefined;
    if (limits.maxItemsPerBatch !== undefined && req.items.length > limits.maxItemsPerBatch) {
      throw resourceExhausted(
        `batch has ${req.items.length} items, over tenant "${tenant}"'s limit max_items_per_batch = ${limits.maxItemsPerBatch} (--api-keys-file); submit smaller batches`,
      );
    }
    // The webhook's target is resolved and checked (SSRF) before validation, so its problem is
    // listed with every other one; a URL that does not even parse is validation's to name.
    const target = req.webhook?.url && Buffer.byteLength(req.webhook.url) <= MAX_WEBHOOK_URL_BYTES && URL.canParse(req.webhook.url)
      ? await webhookTargetProblem(req.webhook.url, { allowPrivate: this.d.opts.webhookAllowPrivate })
      : undefined;
    let valid: ReturnType<typeof validateSubmit>;
    const validation = startSpan("shoal.validate", { attributes: { "shoal.items": req.items.length } });
    try {
      valid = validateSubmit(req, (m) => this.d.models.get(m), { maxItems: this.d.opts.maxItems });
      endSpan(validation);
    } catch (err) {
      endSpan(validation, err);
      if (target && err instanceof ServerError && err.violations.length > 0) throw invalidArgument([...err.violations, `webhook.url: ${target}`], err.headline);
      throw err;
    }
    if (target) throw invalidArgument([`webhook.url: ${target}`]);
    if (limits.maxQueuedItems !== undefined) {
      const unfinished = this.unfinishedItemsOf(tenant);
      if (unfinished + valid.length > limits.maxQueuedItems) {
        throw resourceExhausted(
          `tenant "${tenant}" has ${unfinished} items queued or running and this batch adds ${valid.length}, over its limit max_queued_items = ${limits.maxQueuedItems} (--api-keys-file); retry once some finish`,
        );
      }
    }
    if (this.d.queue.size + valid.length > this.d.opts.maxQueuedItems) {
      throw resourceExhausted(
        `queue full: ${this.d.queue.size} items are waiting and this batch adds ${valid.length}, over the limit of ${this.d.opts.maxQueuedItems} (coordinator flag --max-queued-items); retry later`,
      );
    }
    const batchId = newBatchId();
    const now = new Date();
    // Refused items are recorded with the batch and end CONTENT_POLICY when it is activated.
    const policyBlocked = this.d.contentPolicy.screen(tenant, valid);
    const record: BatchRecord = {
      batch: {
        id: batchId,
        state: BatchState.BATCH_STATE_QUEUED,
        total: valid.length,
        succeeded: 0,
        failed: 0,
        cancelled: 0,
        results: [],
        createdAt: now,
        completedAt: undefined,
        labels: req.labels,
        running: 0,
        priority: req.priority,
        queuePosition: 0,
        estimatedCompletionAt: undefined,
      },
      // Stored with defaults applied, so a replay does not depend on today's manifest defaults.
      items: valid.map((v) => ({ model: v.model.name, params: v.params })),
      idempotencyKey: req.idempotencyKey,
      webhook: req.webhook,
      tenant,
      retryOf,
      sourceIndices,
      policyBlocked,
      // The submitting call's span: every item's spans join its trace, after a restart too.
      ...submitterTrace(),
    };
    // Encoded once: the items' bytes are kept for the terminal write (record-encoding.ts).
    const itemsBytes = encodeRecordItems(record.items);
    const encoded = encodeRecord(record, itemsBytes);
    this.checkRecordFits(record, valid.map((v) => v.model), encoded.length);
    if (steps) steps.validated = wallNowMs();
    // Until this submit has activated its batch or failed, a call with the same key waits for it.
    let settled!: () => void;
    this.storingBatches.set(batchId, new Promise<void>((r) => (settled = r)));
    try {
      if (req.idempotencyKey) {
        const existing = await this.storing(() => this.d.store().claimIdempotencyKey(tenant, req.idempotencyKey, batchId));
        if (existing) {
          // The first call with this key may still be storing its batch: its outcome decides.
          await this.storingBatches.get(existing);
          const total = this.d.active.get(existing)?.total ?? (await this.storing(() => this.finishedTotal(existing)));
          if (total !== undefined) return { batchId: existing, itemCount: total };
          // Neither running nor finished: that submit failed (and said so), even where its record
          // landed. Not accepted, so this call takes the key.
          await this.storing(() => this.d.store().overwriteIdempotencyKey(tenant, req.idempotencyKey, batchId));
        }
      }
      // Three writes come before the record, at once (none depends on another): the items counted
      // as accepted (and checked against items_per_day), the open marker and the index entry. Only
      // when all three are stored is the record written, so a record that exists always has its
      // marker, its index entry and its count. A failure of any leaves at most a marker (removed
      // here, else at the next start), an index entry ListBatches skips, and a count given back
      // here; the batch is refused and uses none of the tenant's day.
      let revision: number;
      let marked = false;
      let reserved = false;
      try {
        revision = await this.storing(async () => {
          const writes = await Promise.allSettled([
            // Once counted, a retry of these writes (a JetStream election) does not count again.
            reserved ? undefined : this.d.usage().reserve(tenant, valid.length, limits.itemsPerDay, now).then(() => (reserved = true)),
            this.d.store().markOpen(batchId).then(() => (marked = true)),
            this.d.index().append(tenant, batchId),
          ]);
          // Settled all, not the first failure: a count still in flight must be known to give it back.
          const failed = writes.find((w) => w.status === "rejected");
          if (failed) throw failed.reason;
          if (steps) steps.markedIndexed = wallNowMs();
          return this.d.store().create(record, encoded);
        });
      } catch (err) {
        // A write that timed out may still have landed: the record is removed too (best effort),
        // so nothing lists a batch that was refused. A marker or record left behind is harmless:
        // the next start removes the marker, and the batch's key is taken by the next call.
        if (marked) void this.d.store().clearOpen(batchId).catch(() => undefined);
        void this.d.store().discard(batchId).catch(() => undefined);
        if (req.idempotencyKey) void this.d.store().releaseIdempotencyKey(tenant, req.idempotencyKey, batchId).catch(() => undefined);
        if (reserved) void this.d.usage().release(tenant, valid.length, utcDay(now)).catch((e: unknown) => this.d.log.warn({ batchId, err: errorMessage(e) }, "accepted items not given back to the day's usage"));
        throw err;
      }
      if (this.holdSubmitAnswerMs) {
        this.d.log.warn({ batchId, holdMs: this.holdSubmitAnswerMs }, "batch stored; holding the answer (test hook)");
        await sleepUnlessAborted(this.holdSubmitAnswerMs, this.d.stopping);
      }
      // A coordinator whose term ended while it stored the batch must not accept it: the next
      // term's recovery read the open markers when it started, and a write of this term that
      // JetStream applied after that read (sent before the fence closed, applied late under load)
      // is not among them, so the batch would be stored and answered but never run. Refused, the
      // client retries at the active coordinator: with the same idempotency key it gets this
      // batch if that coordinator resumed it, else a new one; nothing it was told is accepted is
      // left unrun. (Acknowledged while the term held, the writes were applied before the fence
      // closed, so before any later term's recovery read them.)
      if (this.d.holdsTerm && !this.d.holdsTerm()) {
        this.d.log.warn({ batchId }, "batch stored as this coordinator's term ended; not accepted here (the client retries at the active coordinator)");
        throw unavailable(
          `this coordinator stopped being the active one while it stored the batch, so it cannot accept it; retry at the active coordinator with the same idempotency_key ` +
            `(it answers with batch ${batchId} if it resumed it; without a key a retry may run the items twice)`,
        );
      }
      const active = this.d.activate(record, revision, undefined, valid.map((v) => v.need));
      active.itemsBytes = itemsBytes;
      if (steps) {
        steps.accepted = wallNowMs();
        active.steps = steps;
      }
      this.d.metrics?.batchesInMemory(this.d.active.size);
      this.d.metrics?.batchSubmitted();
      annotateActiveSpan("shoal.batch_id", batchId);
      this.d.log.info({ batchId, items: valid.length, priority: req.priority, retryOf: retryOf || undefined }, "batch accepted");
      if (policyBlocked.length > 0) {
        for (const b of policyBlocked) this.d.metrics?.itemFinished(active.items[b.index]!.result!);
        // Rule names and indexes only: the text that matched is never logged.
        this.d.log.info({ batchId, blocked: policyBlocked.length, items: policyBlocked.map((b) => b.index), rules: [...new Set(policyBlocked.map((b) => b.rule))] }, "items blocked by the content policy");
        // Every item blocked: nothing will be queued, so the batch ends now (FAILED).
        if (active.isComplete) this.finalizeInBackground(active);
      }
      this.d.scheduleSoon();
      return { batchId, itemCount: valid.length };
    } finally {
      this.storingBatches.delete(batchId);
      settled();
    }
  }

  /** Items of this tenant's running batches not finished yet (queued or running). */
  private unfinishedItemsOf(tenant: string): number {
    let n = 0;
    for (const b of this.d.active.values()) if (b.record.tenant === tenant) n += b.total - b.doneCount;
    return n;
  }

  /**
   * Runs a write of SubmitBatch; a storage failure becomes the status the client acts on:
   * RESOURCE_EXHAUSTED when something is full or too large (the message says what, and which
   * flag gives it room), UNAVAILABLE when NATS cannot be reached. Nothing was accepted either way.
   */
  private async storing<T>(write: () => Promise<T>): Promise<T> {
    try {
      return await retryWhileNothingStored(write, {
        windowMs: SUBMIT_ELECTION_WAIT_MS,
        signal: this.d.stopping,
        onRetry: (attempt, err) => this.d.log.warn({ attempt, err: errorMessage(err) }, "a submit write reached no stream; sending it again (a JetStream leader election?)"),
      });
    } catch (err) {
      if (err instanceof ServerError) throw err;
      if (err instanceof DailyLimitExceeded) {
        throw resourceExhausted(
          `tenant's daily limit reached: ${err.acceptedToday} items accepted today (UTC) and this batch adds ${err.adding}, over its limit items_per_day = ${err.limit} (--api-keys-file); the limit resets at ${err.resetsAt.toISOString()}`,
        );
      }
      const e = storageError(err, "JetStream", "--batches-max-bytes");
      this.d.metrics?.submitStorageFailed(e.reason);
      this.d.log.warn({ code: e.code, err: e.message }, "batch refused: it could not be stored");
      throw storageStatus(e, "the batch was not accepted");
    }
  }

  /** The most bytes one batch record may take: the server's max_payload, and the bucket's limit. */
  private maxRecordBytes(): { bytes: number; why: string } {
    const payload = (this.d.nc()?.info?.max_payload ?? 1024 * 1024) - KV_OVERHEAD_BYTES;
    const bucket = this.d.opts.storage.batchesMaxBytes > 0 ? this.d.opts.storage.batchesMaxBytes - KV_OVERHEAD_BYTES : Infinity;
    return bucket < payload
      ? { bytes: bucket, why: `the batch records bucket's limit (--batches-max-bytes ${this.d.opts.storage.batchesMaxBytes})` }
      : { bytes: payload, why: `the NATS server's max_payload of ${payload + KV_OVERHEAD_BYTES} bytes, less ${KV_OVERHEAD_BYTES} for the KV envelope` };
  }

  /** The item count of a stored batch that has finished; undefined when it is not stored or not finished. */
  private async finishedTotal(batchId: string): Promise<number | undefined> {
    const got = await this.d.store().get(batchId);
    return got && isTerminal(got.record.batch!) ? got.record.batch!.total : undefined;
  }

  /** A batch whose terminal record could never be stored is refused now, not retried later. */
  private checkRecordFits(record: BatchRecord, models: Parameters<typeof terminalRecordBound>[1], encodedBytes: number): void {
    const bound = terminalRecordBound(record, models, encodedBytes);
    const limit = this.maxRecordBytes();
    if (bound <= limit.bytes) return;
    this.d.metrics?.submitStorageFailed("record_too_large");
    throw resourceExhausted(
      `batch too large to store: with its ${models.length} results its record may take up to ${bound} bytes, more than the ${limit.bytes} bytes allowed by ${limit.why}; ` +
        `submit fewer items (or shorter params) per batch, or raise that limit`,
    );
  }

  async getBatch(batchId: string, tenant: string): Promise<Batch> {
    this.d.ensureStarted();
    const active = this.d.active.get(batchId);
    if (active && active.record.tenant === tenant) return this.runningView(active);
    let got = BATCH_ID.test(batchId) ? await this.d.store().get(batchId) : undefined;
    // A batch created moments ago may be missing from a stale leader's answer (fresh-read.ts).
    if (!got && isRecentBatch(batchId, Date.now())) {
      got = await rereadWhileMissing(() => this.d.store().get(batchId), this.d.stopping);
      if (got) this.d.log.warn({ batchId }, "a recent batch's record was missing from one read and found by a later one (a stale read after a JetStream leader change?)");
      else if (this.d.active.get(batchId)?.record.tenant === tenant) return this.runningView(this.d.active.get(batchId)!);
    }
    if (!got || got.record.tenant !== tenant) throw notFound(`batch ${quoteInput(batchId)} not found`);
    return got.record.batch!;
  }

  /**
   * Streams one event per finished item (those already finished first), then the terminal
   * batch. With `progress`, also the running batch whenever its queue position or ETA moves
   * (and once at the start), each a non-terminal Batch event. The caller's signal ends the
   * watch early.
   */
  async *watch(batchId: string, tenant: string, signal: AbortSignal, progress = false): AsyncGenerator<BatchEvent> {
    const found = await this.attach(batchId, tenant);
    if ("terminal" in found) {
      for (const r of found.terminal.results) yield { event: { $case: "item", item: r } };
      yield { event: { $case: "batch", batch: found.terminal } };
      return;
    }
    const { active } = found;
    // Events not yet yielded. Taken whole and replaced, not shifted one at a time: a watcher far
    // behind a large batch holds 100,000 events here, where each Array.shift() copies the rest
    // (about 40 µs each at that length on this machine, seconds of the coordinator's main thread).
    let buffer: BatchEvent[] = [];
    let wake: (() => void) | undefined;
    const listener: BatchListener = (ev) => {
      // Without `progress` the contract's sequence holds: items, then the terminal batch only.
      if (!progress && ev.event?.$case === "batch" && !isTerminal(ev.event.batch)) return;
      buffer.push(ev);
      wake?.();
    };
    this.listen(batchId, listener, progress);
    const onAbort = () => wake?.();
    signal.addEventListener("abort", onAbort);
    // A closing coordinator wakes its watchers too: nothing else would, and a RunBatch waiting
    // here would hang until its deadline (the edge carries it into the next term).
    this.d.stopping.addEventListener("abort", onAbort);
    try {
      for (const s of active.items) if (s.state === "done") yield { event: { $case: "item", item: s.result! } };
      if (progress && !active.finalizing) yield { event: { $case: "batch", batch: this.runningView(active) } };
      while (!signal.aborted) {
        if (buffer.length === 0 && this.d.stopping.aborted) throw new TermEndedError(batchId);
        if (buffer.length === 0) await new Promise<void>((r) => (wake = r));
        wake = undefined;
        while (buffer.length > 0) {
          const ready = buffer;
          buffer = [];
          for (const ev of ready) {
            yield ev;
            // Progress events (emitProgress) are batches too; only the terminal one ends the stream.
            if (ev.event?.$case === "batch" && isTerminal(ev.event.batch)) return;
          }
        }
      }
    } finally {
      signal.removeEventListener("abort", onAbort);
      this.d.stopping.removeEventListener("abort", onAbort);
      this.unlisten(batchId, listener);
    }
  }

  /**
   * Where a watch of the batch starts: its stored terminal record, or the batch running here.
   * Refuses a batch stored as running that does not run here.
   */
  private async attach(batchId: string, tenant: string): Promise<{ terminal: Batch } | { active: ActiveBatch }> {
    let first = await this.getBatch(batchId, tenant);
    // The batch can end between the read and here (its terminal write resolves in a microtask
    // of its own): read it again from the store, where the terminal record now is.
    if (!this.d.active.get(batchId) && !isTerminal(first)) first = await this.getBatch(batchId, tenant);
    if (isTerminal(first)) return { terminal: first };
    const active = this.d.active.get(batchId);
    if (active) return { active };
    // Stored as running, yet not running here. In a term that is ending, the edge carries the
    // watch into the next term, which recovers the batch. Otherwise its SubmitBatch failed after
    // the record landed (a write that timed out, yet was stored) and told its caller so.
    if (this.d.stopping.aborted) throw new TermEndedError(batchId);
    throw failedPrecondition(`batch ${batchId} was not accepted: its submit failed after its record was stored; submit it again`);
  }

  /**
   * Resolves with the terminal batch (RunBatch). The same start as watch() (attach), but it
   * listens for the terminal event alone: going through watch() cost every item's event a buffer
   * slot and a turn of an async generator that RunBatch then dropped.
   */
  async waitTerminal(batchId: string, tenant: string, signal: AbortSignal): Promise<Batch> {
    const found = await this.attach(batchId, tenant);
    if ("terminal" in found) return found.terminal;
    return new Promise<Batch>((resolve, reject) => {
      const end = (settle: () => void) => {
        signal.removeEventListener("abort", onAbort);
        this.d.stopping.removeEventListener("abort", onAbort);
        this.unlisten(batchId, listener);
        settle();
      };
      const listener: BatchListener = (ev) => {
        if (ev.event?.$case === "batch" && isTerminal(ev.event.batch)) {
          const batch = ev.event.batch;
          end(() => resolve(batch));
        }
      };
      // A closing coordinator ends the wait: the edge carries the call into the next term.
      const onAbort = () => end(() => reject(this.d.stopping.aborted ? new TermEndedError(batchId) : new Error("the call ended before the batch was terminal")));
      this.listen(batchId, listener);
      signal.addEventListener("abort", onAbort);
      this.d.stopping.addEventListener("abort", onAbort);
      if (signal.aborted || this.d.stopping.aborted) onAbort();
    });
  }

  async cancel(batchId: string, tenant: string): Promise<Batch> {
    const current = await this.getBatch(batchId, tenant);
    const active = this.d.active.get(batchId);
    if (isTerminal(current) || !active) return current;
    // Every item already done: the terminal write has begun and the batch ends as it ran.
    const what = active.finalizing ? "has finished" : "is cancelled";
    if (!active.finalizing) {
      this.d.queue.removeBatch(batchId);
      const running = active.cancelAll();
      this.d.cancelOnWorkers(batchId, running);
      this.d.log.info({ batchId, running: running.length }, "batch cancelled");
    }
    const outcome = await Promise.race([this.finalize(active).then((b) => ({ b })), active.writeFailure().then((e) => ({ e }))]).catch((err: unknown) => {
      if (err instanceof TerminalWriteStopped) throw unavailable(`batch ${batchId} ${what}, but the coordinator is shutting down before storing it; the next start finishes it`);
      throw err;
    });
    if ("b" in outcome) return outcome.b;
    throw storageStatus(
      storageError(outcome.e, "the batch records bucket", "--batches-max-bytes"),
      `batch ${batchId} ${what}, but its terminal record is not stored yet; the coordinator keeps retrying and GetBatch shows it terminal once it is stored`,
    );
  }

  async retry(batchId: string, tenant: string, limits: TenantLimits = {}): Promise<{ batchId: string; itemCount: number }> {
    const batch = await this.getBatch(batchId, tenant);
    if (!isTerminal(batch)) throw failedPrecondition(`batch ${batchId} is not finished yet; cancel it or wait`);
    const got = await this.d.store().get(batchId);
    // CONTENT_POLICY (and every other error not marked retryable) is left out: resubmitting the
    // same text would be refused again.
    const retryable = batch.results.filter((r) => r.status === ItemStatus.ITEM_STATUS_FAILED && r.error?.retryable);
    if (retryable.length === 0) throw failedPrecondition(`batch ${batchId} has no failed items with a retryable error${skippedNote(batch)}`);
    const items = retryable.map((r) => got!.record.items[r.index]!);
    const webhook = await this.d.webhooks().inheritedWebhook(batchId, got!.record.webhook);
    return this.submit(
      { items, idempotencyKey: "", webhook, priority: batch.priority, labels: batch.labels },
      tenant,
      batchId,
      retryable.map((r) => r.index),
      limits,
    );
  }

  /**
   * Newest first, from the batch index in JetStream: memory and work per call follow the page
   * size, not the number of stored batches. Entries whose record has aged out (or was never
   * stored) are skipped; the token is the index position of the last batch returned.
   */
  async list(tenant: string, pageSize: number, pageToken: string): Promise<{ batches: Batch[]; nextPageToken: string }> {
    this.d.ensureStarted();
    const size = Math.min(Math.max(pageSize || 50, 1), 1000);
    let before = 0;
    if (pageToken) {
      const seq = decodePageToken(pageToken);
      if (seq === undefined) throw invalidArgument([`page_token: ${JSON.stringify(pageToken.slice(0, 40))} is not a next_page_token from ListBatches`]);
      before = seq;
    }
    const batches: Batch[] = [];
    const seen = new Set<string>();
    let lastSeq = 0;
    let more = false;
    let pending: IndexEntry[] = [];
    const load = async (): Promise<void> => {
      const loaded = await Promise.all(pending.map((e) => this.summaryOf(e.batchId, tenant)));
      for (const [i, b] of loaded.entries()) {
        if (batches.length === size) {
          more = true;
          break;
        }
        lastSeq = pending[i]!.seq;
        if (b && !seen.has(b.id)) {
          seen.add(b.id);
          batches.push(b);
        }
      }
      pending = [];
    };
    try {
      for await (const e of this.d.index().newestFirst(tenant, before, size + 1)) {
        if (batches.length === size) {
          more = true;
          break;
        }
        pending.push(e);
        if (pending.length >= size - batches.length) await load();
      }
      if (pending.length > 0) await load();
    } catch (err) {
      if (err instanceof ServerError) throw err;
      throw unavailable(`the batch index could not be read: ${errorMessage(err)}`);
    }
    return { batches, nextPageToken: more ? encodePageToken(lastSeq) : "" };
  }

  /** A batch as ListBatches shows it (no results), if it is the tenant's and still stored. */
  private async summaryOf(batchId: string, tenant: string): Promise<Batch | undefined> {
    const active = this.d.active.get(batchId);
    if (active) return active.record.tenant === tenant ? this.runningView(active) : undefined;
    const got = await this.d.store().get(batchId);
    if (!got || got.record.tenant !== tenant) return undefined;
    return { ...got.record.batch!, results: [] };
  }

  async artifact(uri: string, tenant: string): Promise<ReadableStream<Uint8Array>> {
    if (!uri.startsWith(ARTIFACT_URI_PREFIX)) throw notFound(`artifact ${quoteInput(uri)}: expected ${ARTIFACT_URI_PREFIX}<name>`);
    const name = uri.slice(ARTIFACT_URI_PREFIX.length);
    const batchId = name.split("/", 1)[0]!;
    await this.getBatch(batchId, tenant); // tenancy check: another tenant's artifact is NOT_FOUND
    // A name the object store refuses (odd characters) names no artifact either.
    const obj = await this.d.infra().artifacts.get(name).catch(() => null);
    if (!obj) throw notFound(`artifact ${quoteInput(uri)} not found`);
    return obj.data;
  }

  // ---------------------------------------------------------------------------------------
  // Terminal write

  /** The write retries on its own; it only ends early when the coordinator stops. */
  finalizeInBackground(batch: ActiveBatch): void {
    this.finalize(batch).catch((err) => {
      if (err instanceof TerminalWriteStopped) this.d.log.info({ batchId: batch.id }, "terminal write left to the next start");
      else this.d.log.error({ batchId: batch.id, err: errorMessage(err) }, "finalize failed");
    });
  }

  /** Starts the batch's terminal write once; every caller gets the same promise. */
  private finalize(batch: ActiveBatch): Promise<Batch> {
    batch.terminalWrite ??= this.writeFinal(batch);
    return batch.terminalWrite;
  }

  /**
   * Writes the terminal batch with every result, retried until stored (see terminal-writer.ts),
   * then lets the batch go from memory. The pending webhook is recorded before the record, so a
   * crash between the two cannot lose the delivery; the batch's usage is counted after it, and its
   * open marker removed only then (terminal-usage.ts).
   */
  private async writeFinal(batch: ActiveBatch): Promise<Batch> {
    batch.finalizing = true;
    if (batch.steps) batch.steps.complete = wallNowMs();
    this.d.queue.removeBatch(batch.id);
    // The webhook's secret does not go into the terminal record: the pending delivery holds it
    // until the delivery is done, then it is deleted with it.
    // Only the batch with its results (and the webhook) is encoded here: the items' bytes are
    // the ones stored at submit (record-encoding.ts).
    const itemsBytes = (batch.itemsBytes ??= encodeRecordItems(batch.record.items));
    const { record, bytes: encoded } = fitTerminalRecordBytes(
      { ...batch.record, webhook: withoutSecret(batch.record.webhook), batch: batch.final(new Date()) },
      this.maxRecordBytes().bytes,
      (r) => encodeRecord(r, itemsBytes),
    );
    let webhook: Awaited<ReturnType<WebhookSender["record"]>>;
    let waiting = false;
    const outcome = await writeTerminal({
      store: this.d.store(),
      record,
      encoded,
      revision: () => batch.revision,
      prepare: async () => {
        // The pending webhook is stored before the record, so a crash between the two cannot
        // lose the delivery. The batch's usage is counted after the record (countUsage below).
        webhook = await this.d.webhooks()
          .record(batch.id, batch.record.webhook)
          .catch((err: unknown) => {
            throw storageError(err, `the pending webhooks bucket (${this.d.names.webhooksBucket})`, "the server's max_file_store");
          });
        if (batch.steps) batch.steps.prepared = wallNowMs();
      },
      onFailure: (err, attempt, retryInMs) => {
        if (!waiting) this.d.metrics?.terminalWriteWaiting(1);
        waiting = true;
        this.d.metrics?.terminalWriteFailed(err.reason);
        batch.reportWriteFailure(err);
        this.d.log.error({ batchId: batch.id, attempt, retryInMs, code: err.code, err: err.message }, "terminal write failed; retrying");
      },
      initialDelayMs: this.d.opts.terminalRetryInitialMs,
      maxDelayMs: this.d.opts.terminalRetryMaxMs,
      signal: this.d.stopping,
    }).finally(() => {
      if (waiting) this.d.metrics?.terminalWriteWaiting(-1);
    });
    const stored = outcome.stored;
    if (batch.steps) batch.steps.stored = wallNowMs();
    if (!outcome.ours) this.d.log.warn({ batchId: batch.id }, "batch was already finalized elsewhere; keeping the stored result");
    // The usage count follows the record, off the batch's answer; the open marker is removed only
    // once it is stored (terminal-usage.ts). Asked for before watchers are told, so a GetUsage
    // after the answer waits for it. Counted whoever wrote the record (ours is false too when an
    // earlier try of our own write landed unacknowledged): the count is idempotent by batch id.
    const steps = batch.steps;
    void this.countUsage(batch.record.tenant, stored).then((how) => {
      if (!steps) return;
      if (how !== "stopped") steps.usageCounted = wallNowMs();
      this.d.log.debug({ batchId: batch.id, items: batch.total, steps: stepDurations(steps) }, "batch step times");
    });
    this.d.active.delete(batch.id);
    this.d.metrics?.batchesInMemory(this.d.active.size);
    this.d.metrics?.batchFinished(stored);
    this.d.log.info(
      { batchId: batch.id, state: BatchState[stored.state], succeeded: stored.succeeded, failed: stored.failed, cancelled: stored.cancelled, attempts: outcome.attempts },
      "batch finished",
    );
    this.emit(batch.id, { event: { $case: "batch", batch: stored } });
    this.listeners.delete(batch.id);
    if (outcome.ours) this.d.webhooks().send(webhook);
    return stored;
  }

  /** Counts a stored terminal batch's usage, then removes its open marker (terminal-usage.ts); never rejects. */
  countUsage(tenant: string, stored: Batch): Promise<TerminalUsageOutcome> {
    return countTerminalUsage(
      {
        usage: this.d.usage,
        clearOpen: (id) => this.d.store().clearOpen(id),
        metrics: this.d.metrics,
        tenantLabel: this.d.tenantLabel,
        log: this.d.log,
        signal: this.d.stopping,
        retryInitialMs: this.d.opts.terminalRetryInitialMs,
        retryMaxMs: this.d.opts.terminalRetryMaxMs,
        holdMs: this.holdUsageCountMs,
      },
      tenant,
      stored,
    ).catch((err: unknown) => {
      this.d.log.error({ batchId: stored.id, err: errorMessage(err) }, "usage of a finished batch not counted; the next start counts it");
      return "stopped" as const;
    });
  }

  /**
   * Rewrites the records of batches running longer than half the retention, so JetStream's age
   * limit never removes a batch that is still running (its open marker too).
   */
  refreshAging(now: number): void {
    const ageLimit = this.d.opts.storage.retentionMs / 2;
    if (now - this.lastRefreshCheck < Math.min(60_000, ageLimit / 4)) return;
    this.lastRefreshCheck = now;
    for (const batch of this.d.active.values()) {
      if (batch.finalizing || batch.refreshing || now - batch.writtenAtMs < ageLimit) continue;
      batch.refreshing = true;
      void (async () => {
        try {
          await this.d.store().markOpen(batch.id);
          const revision = await this.d.store().replace(batch.record, batch.revision);
          batch.revision = Math.max(batch.revision, revision);
          batch.writtenAtMs = Date.now();
        } catch (err) {
          this.d.log.warn({ batchId: batch.id, err: errorMessage(err) }, "running batch record not refreshed; trying again later");
        } finally {
          batch.refreshing = false;
        }
      })();
    }
  }

  // ---------------------------------------------------------------------------------------

  private listen(batchId: string, l: BatchListener, progress = false): void {
    let set = this.listeners.get(batchId);
    if (!set) this.listeners.set(batchId, (set = new Set()));
    set.add(l);
    if (progress) this.progressListeners.add(l);
  }

  private wantsProgress(batchId: string): boolean {
    for (const l of this.listeners.get(batchId) ?? []) if (this.progressListeners.has(l)) return true;
    return false;
  }

  private unlisten(batchId: string, l: BatchListener): void {
    this.listeners.get(batchId)?.delete(l);
  }

  /** A running batch as clients see it: its counts, queue position and ETA. */
  private runningView(active: ActiveBatch): Batch {
    const b = active.snapshot();
    const p = this.d.progress?.(active.id);
    if (p) {
      b.queuePosition = p.queuePosition;
      b.estimatedCompletionAt = p.estimatedCompletionAt;
    }
    return b;
  }

  /**
   * Tells the batch's watchers its new queue position or ETA: a Batch event that is not terminal
   * (WatchBatch clients tell it from the final one by its state). Sent only when the estimate
   * moved (batch-progress.ts decides), so a long batch does not flood its watchers.
   */
  emitProgress(batchId: string): void {
    const active = this.d.active.get(batchId);
    // A view of the batch costs a copy of its results: made only for a watcher that asked for
    // progress (RunBatch and plain watches drop these events).
    if (!active || active.finalizing || !this.wantsProgress(batchId)) return;
    this.emit(batchId, { event: { $case: "batch", batch: this.runningView(active) } });
  }

  emit(batchId: string, ev: BatchEvent): void {
    for (const l of this.listeners.get(batchId) ?? []) l(ev);
  }
}

/** "; not retried: 2 CONTENT_POLICY (never retried), 1 INVALID_PARAMS": the failed items RetryBatch leaves out. */
function skippedNote(batch: Batch): string {
  const byCode = new Map<string, number>();
  for (const r of batch.results) {
    if (r.status !== ItemStatus.ITEM_STATUS_FAILED || r.error?.retryable) continue;
    const code = r.error?.code || "UNKNOWN";
    byCode.set(code, (byCode.get(code) ?? 0) + 1);
  }
  if (byCode.size === 0) return "";
  const parts = [...byCode].map(([code, n]) => `${n} ${code}${code === CONTENT_POLICY_CODE ? " (blocked by the content policy; never retried)" : ""}`);
  return `; not retried: ${parts.join(", ")}`;
}

/**
 * How long SubmitBatch's writes are sent again while they reach no stream. A stream that lost
 * its leader (a nats-server of the cluster died) answers nobody until another replica wins the
 * election, 4-9 s in nats-server; the call waits that out rather than refuse the batch. Nothing
 * is stored by a write that reached no stream, so sending it again cannot store it twice.
 */
const SUBMIT_ELECTION_WAIT_MS = 12_000;

function storageStatus(e: StorageError, context: string): ServerError {
  const message = `${context}: ${e.message}`;
  return e.code === "STORAGE_UNAVAILABLE" ? unavailable(message) : resourceExhausted(message);
}
