import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import {
  BatchState,
  ItemStatus,
  WorkerState,
  type Batch,
  type BatchEvent,
  type ItemResult,
  type SubmitBatchRequest,
} from "../proto/gen/shoal/v1/shoal.js";
import type { BatchRecord, Heartbeat, ResultLogEntry } from "../proto/gen/shoal/v1/wire.js";
import { errorMessage } from "../shared/errors.js";
import { BATCH_ID, leaseAttempt, newBatchId, newLeaseToken } from "../shared/ids.js";
import { ensureInfrastructure, type Infrastructure } from "../shared/jetstream-setup.js";
import type { Logger } from "../shared/logger.js";
import { connectNats } from "../shared/nats.js";
import { quoteInput } from "../shared/param-limits.js";
import { StorageError, storageError } from "../shared/storage-errors.js";
import { ARTIFACT_URI_PREFIX, Names } from "../shared/subjects.js";
import { BatchIndex, decodePageToken, encodePageToken, type IndexEntry } from "./batch-index.js";
import { Attempts } from "./attempts.js";
import { ActiveBatch, type ItemSlot } from "./batch-state.js";
import { BatchQueue } from "./batch-queue.js";
import { BatchStore, isTerminal } from "./batch-store.js";
import { failedPrecondition, invalidArgument, notFound, resourceExhausted, ServerError, unavailable } from "./errors.js";
import { Fleet, type WorkerRecord } from "./fleet.js";
import type { CoordinatorMetrics } from "./metrics.js";
import { ModelRegistry } from "./model-registry.js";
import type { CoordinatorOptions } from "./options.js";
import { fitTerminalRecord, KV_OVERHEAD_BYTES, terminalRecordBound } from "./record-size.js";
import { ResultLog } from "./result-log.js";
import { TerminalWriteStopped, writeTerminal } from "./terminal-writer.js";
import { validateSubmit } from "./validation.js";
import { VramLedger } from "./vram-ledger.js";
import { VramEstimates, shapeKey } from "./vram-estimates.js";
import { WebhookSender } from "./webhooks.js";
import { WorkerLink } from "./worker-link.js";
import { findUnplaceable, schedulePass } from "./scheduler/engine.js";
import { itemNeed, type VramNeed } from "../shared/vram-need.js";
import { outcomeProblem } from "./wire-validation.js";

type BatchListener = (ev: BatchEvent) => void;


/**
 * The coordinator: accepts batches, places their items on workers by free VRAM, collects
 * outcomes from the results log and writes each terminal batch once. Its memory is a projection
 * of what JetStream holds (batch records in KV, outcomes in the results stream), rebuilt at start,
 * and holds only the batches that are not terminal yet: finished ones are read from storage
 * (GetBatch, and ListBatches through the batch index) and age out with --retention.
 */
export class Coordinator {
  private nc: NatsConnection | undefined;
  private infra: Infrastructure | undefined;
  private store: BatchStore | undefined;
  private index: BatchIndex | undefined;
  private resultLog: ResultLog | undefined;
  private webhooks: WebhookSender | undefined;
  readonly models: ModelRegistry;
  private readonly names: Names;
  private readonly fleet: Fleet;
  /** Heartbeats in; assignments, cancels and drains out; take-back of lost attempts. */
  private readonly link: WorkerLink;
  private readonly ledger = new VramLedger();
  /** The only writer of attempt state: an attempt, its reservation in the ledger and its worker. */
  private readonly attempts = new Attempts(this.ledger);
  private readonly estimates = new VramEstimates();
  private lastUnplaceableCheck = 0;
  private readonly queue = new BatchQueue();
  private readonly active = new Map<string, ActiveBatch>();
  private readonly listeners = new Map<string, Set<BatchListener>>();
  private readonly subs: Subscription[] = [];
  private tickTimer: NodeJS.Timeout | undefined;
  private scheduleQueued = false;
  /** Until this time after a restart, items are not placed: workers first report what they hold. */
  private recoveringUntil = 0;
  private closePromise: Promise<void> | undefined;
  private started = false;
  /** Aborted by close(): ends the retries of terminal writes (the next start resumes them). */
  private readonly stopping = new AbortController();
  private lastRefreshCheck = 0;

  constructor(
    private readonly opts: CoordinatorOptions,
    private readonly log: Logger,
    private readonly metrics?: CoordinatorMetrics,
  ) {
    this.names = new Names(opts.prefix);
    this.fleet = new Fleet(opts.heartbeatTimeoutMs);
    this.models = new ModelRegistry(log.child({ component: "models" }));
    this.link = new WorkerLink({
      nc: () => this.nc!,
      resultLog: () => this.resultLog!,
      names: this.names,
      opts,
      log,
      fleet: this.fleet,
      ledger: this.ledger,
      attempts: this.attempts,
      queue: this.queue,
      batches: this.active,
      closing: () => this.closePromise !== undefined,
      scheduleSoon: () => this.scheduleSoon(),
      reported: (worker, hb, now) => this.adopt(worker, hb, now),
      protocolError: (kind, subject, problem) => this.protocolError(kind, subject, problem),
    });
  }

  async start(): Promise<void> {
    this.nc = await connectNats(this.opts.natsUrl, "shoal-coordinator", this.log);
    this.infra = await ensureInfrastructure(this.nc, this.names, this.opts.storage, this.log.child({ component: "storage" }));
    this.store = new BatchStore(this.infra.batches, this.infra.idempotency, this.names);
    this.index = new BatchIndex(this.nc, this.infra.jsm, this.names);
    this.resultLog = new ResultLog(this.nc, this.infra.jsm, this.names, this.log);
    await this.models.start(this.infra.models);
    this.webhooks = new WebhookSender(
      this.infra.webhooks,
      async (id) => (await this.store!.get(id))?.record.batch,
      { retryDelaysMs: this.opts.webhookRetryDelaysMs, timeoutMs: 10_000 },
      this.log.child({ component: "webhooks" }),
    );
    await this.recover();
    await this.webhooks.start();
    this.subs.push(this.link.subscribeHeartbeats());
    await this.resultLog.startConsuming((entry, subject) => this.onLogEntry(entry, subject));
    // Ask every worker to report now rather than within its next interval.
    this.nc.publish(this.names.coordinatorHello);
    this.tickTimer = setInterval(() => this.tick(), Math.max(100, Math.floor(this.opts.heartbeatTimeoutMs / 6)));
    this.tickTimer.unref();
    this.started = true;
    this.log.info({ active: this.active.size, retentionMs: this.opts.storage.retentionMs }, "coordinator ready");
  }

  // ---------------------------------------------------------------------------------------
  // Recovery

  /** Resumes the batches whose open marker is still there; finished ones stay in storage. */
  private async recover(): Promise<void> {
    if (this.infra!.batchIndexCreated) {
      try {
        await this.indexStoredBatches();
      } catch (err) {
        // Without the index stream the next start indexes them again; with a half-filled one it would not.
        await this.infra!.jsm.streams.delete(this.names.batchIndexStream).catch(() => undefined);
        throw err;
      }
    }
    let resumed = 0;
    for (const id of await this.store!.openIds()) {
      const got = await this.store!.get(id);
      if (!got || isTerminal(got.record.batch!)) {
        // Finalized just before a crash, or never stored (the submit failed after the marker).
        await this.store!.clearOpen(id).catch((err) => this.log.warn({ batchId: id, err: errorMessage(err) }, "stale open marker not removed"));
        continue;
      }
      const active = this.activate(got.record, got.revision, got.writtenAtMs);
      for (const entry of await this.resultLog!.replay(id)) this.applyEntry(entry, true, id);
      resumed++;
      if (active.isComplete) this.finalizeInBackground(active);
    }
    this.metrics?.batchesInMemory(this.active.size);
    if (resumed > 0) {
      this.recoveringUntil = Date.now() + this.opts.heartbeatTimeoutMs;
      this.log.info({ resumed, waitMs: this.opts.heartbeatTimeoutMs }, "resumed running batches; waiting for workers to report their items");
    }
  }

  /**
   * Batches stored before the index and the open markers existed (an older Shoal) are indexed
   * once, oldest first, the first time a coordinator creates the index stream.
   */
  private async indexStoredBatches(): Promise<void> {
    const ids = (await this.store!.allBatchIds()).sort();
    if (ids.length === 0) return;
    let open = 0;
    for (const id of ids) {
      const got = await this.store!.get(id);
      if (!got) continue;
      if (!isTerminal(got.record.batch!)) {
        await this.store!.markOpen(id);
        open++;
      }
      await this.index!.append(got.record.tenant, id);
    }
    this.log.info({ batches: ids.length, open }, "indexed batches stored by an earlier version");
  }

  /**
   * `needs` are the ones validation computed for a new batch; a resumed batch's come from the
   * manifests registered now (the record stores only model and params).
   */
  private activate(record: BatchRecord, revision: number, writtenAtMs = Date.now(), needs?: VramNeed[]): ActiveBatch {
    const now = Date.now();
    const created = record.batch!.createdAt?.getTime() ?? now;
    const slots: ItemSlot[] = record.items.map((item, i) => {
      const params = item.params ?? {};
      return {
        model: item.model,
        params,
        need: needs?.[i] ?? itemNeed(this.models.get(item.model), params),
        state: "pending",
        attempts: 0,
        lease: undefined,
        closed: undefined,
        result: undefined,
        queuedAtMs: now,
        firstQueuedAtMs: created,
        shapeKey: shapeKey(item.model, params),
      };
    });
    const active = new ActiveBatch(record, revision, slots, this.opts.maxAttempts, writtenAtMs);
    this.active.set(active.id, active);
    for (let i = 0; i < slots.length; i++) this.queue.add(active.id, i, record.batch!.priority);
    return active;
  }

  // ---------------------------------------------------------------------------------------
  // API

  async submit(req: SubmitBatchRequest, tenant: string, retryOf = "", sourceIndices: number[] = []): Promise<{ batchId: string; itemCount: number }> {
    this.ensureStarted();
    const valid = validateSubmit(req, (m) => this.models.get(m), { maxItems: this.opts.maxItems });
    if (this.queue.size + valid.length > this.opts.maxQueuedItems) {
      throw resourceExhausted(
        `queue full: ${this.queue.size} items are waiting and this batch adds ${valid.length}, over the limit of ${this.opts.maxQueuedItems} (coordinator flag --max-queued-items); retry later`,
      );
    }
    const batchId = newBatchId();
    const now = new Date();
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
      },
      // Stored with defaults applied, so a replay does not depend on today's manifest defaults.
      items: valid.map((v) => ({ model: v.model.name, params: v.params })),
      idempotencyKey: req.idempotencyKey,
      webhook: req.webhook,
      tenant,
      retryOf,
      sourceIndices,
    };
    this.checkRecordFits(record, valid.map((v) => v.model));
    if (req.idempotencyKey) {
      const existing = await this.storing(() => this.store!.claimIdempotencyKey(tenant, req.idempotencyKey, batchId));
      if (existing) {
        const total = this.active.get(existing)?.total ?? (await this.storing(() => this.store!.get(existing)))?.record.batch!.total;
        if (total !== undefined) return { batchId: existing, itemCount: total };
        await this.storing(() => this.store!.overwriteIdempotencyKey(tenant, req.idempotencyKey, batchId));
      }
    }
    // Marker and index entry first: a record that exists always has both, and a failure leaves
    // at most a marker (removed at the next start) and an index entry ListBatches skips.
    let revision: number;
    let marked = false;
    try {
      revision = await this.storing(async () => {
        const mark = this.store!.markOpen(batchId).then(() => (marked = true));
        await Promise.all([mark, this.index!.append(tenant, batchId)]);
        return this.store!.create(record);
      });
    } catch (err) {
      if (marked) void this.store!.clearOpen(batchId).catch(() => undefined);
      if (req.idempotencyKey) void this.store!.releaseIdempotencyKey(tenant, req.idempotencyKey, batchId).catch(() => undefined);
      throw err;
    }
    this.activate(record, revision, undefined, valid.map((v) => v.need));
    this.metrics?.batchesInMemory(this.active.size);
    this.metrics?.batchSubmitted();
    this.log.info({ batchId, items: valid.length, priority: req.priority, retryOf: retryOf || undefined }, "batch accepted");
    this.scheduleSoon();
    return { batchId, itemCount: valid.length };
  }

  /**
   * Runs a write of SubmitBatch; a storage failure becomes the status the client acts on:
   * RESOURCE_EXHAUSTED when something is full or too large (the message says what, and which
   * flag gives it room), UNAVAILABLE when NATS cannot be reached. Nothing was accepted either way.
   */
  private async storing<T>(write: () => Promise<T>): Promise<T> {
    try {
      return await write();
    } catch (err) {
      if (err instanceof ServerError) throw err;
      const e = storageError(err, "JetStream", "--batches-max-bytes");
      this.metrics?.submitStorageFailed(e.reason);
      this.log.warn({ code: e.code, err: e.message }, "batch refused: it could not be stored");
      throw storageStatus(e, "the batch was not accepted");
    }
  }

  /** The most bytes one batch record may take: the server's max_payload, and the bucket's limit. */
  private maxRecordBytes(): { bytes: number; why: string } {
    const payload = (this.nc?.info?.max_payload ?? 1024 * 1024) - KV_OVERHEAD_BYTES;
    const bucket = this.opts.storage.batchesMaxBytes > 0 ? this.opts.storage.batchesMaxBytes - KV_OVERHEAD_BYTES : Infinity;
    return bucket < payload
      ? { bytes: bucket, why: `the batch records bucket's limit (--batches-max-bytes ${this.opts.storage.batchesMaxBytes})` }
      : { bytes: payload, why: `the NATS server's max_payload of ${payload + KV_OVERHEAD_BYTES} bytes, less ${KV_OVERHEAD_BYTES} for the KV envelope` };
  }

  /** A batch whose terminal record could never be stored is refused now, not retried later. */
  private checkRecordFits(record: BatchRecord, models: Parameters<typeof terminalRecordBound>[1]): void {
    const bound = terminalRecordBound(record, models);
    const limit = this.maxRecordBytes();
    if (bound <= limit.bytes) return;
    this.metrics?.submitStorageFailed("record_too_large");
    throw resourceExhausted(
      `batch too large to store: with its ${models.length} results its record may take up to ${bound} bytes, more than the ${limit.bytes} bytes allowed by ${limit.why}; ` +
        `submit fewer items (or shorter params) per batch, or raise that limit`,
    );
  }

  async getBatch(batchId: string, tenant: string): Promise<Batch> {
    this.ensureStarted();
    const active = this.active.get(batchId);
    if (active && active.record.tenant === tenant) return active.snapshot();
    const got = BATCH_ID.test(batchId) ? await this.store!.get(batchId) : undefined;
    if (!got || got.record.tenant !== tenant) throw notFound(`batch ${quoteInput(batchId)} not found`);
    return got.record.batch!;
  }

  /**
   * Streams one event per finished item (those already finished first), then the terminal
   * batch. The caller's signal ends the watch early.
   */
  async *watch(batchId: string, tenant: string, signal: AbortSignal): AsyncGenerator<BatchEvent> {
    const first = await this.getBatch(batchId, tenant);
    if (isTerminal(first)) {
      for (const r of first.results) yield { event: { $case: "item", item: r } };
      yield { event: { $case: "batch", batch: first } };
      return;
    }
    const active = this.active.get(batchId)!;
    const buffer: BatchEvent[] = [];
    let wake: (() => void) | undefined;
    const listener: BatchListener = (ev) => {
      buffer.push(ev);
      wake?.();
    };
    this.listen(batchId, listener);
    const onAbort = () => wake?.();
    signal.addEventListener("abort", onAbort);
    try {
      for (const s of active.items) if (s.state === "done") yield { event: { $case: "item", item: s.result! } };
      while (!signal.aborted) {
        if (buffer.length === 0) await new Promise<void>((r) => (wake = r));
        wake = undefined;
        while (buffer.length > 0) {
          const ev = buffer.shift()!;
          yield ev;
          if (ev.event?.$case === "batch") return;
        }
      }
    } finally {
      signal.removeEventListener("abort", onAbort);
      this.unlisten(batchId, listener);
    }
  }

  /** Resolves with the terminal batch. */
  async waitTerminal(batchId: string, tenant: string, signal: AbortSignal): Promise<Batch> {
    for await (const ev of this.watch(batchId, tenant, signal)) if (ev.event?.$case === "batch") return ev.event.batch;
    throw new Error("watch ended before the batch was terminal");
  }

  async cancel(batchId: string, tenant: string): Promise<Batch> {
    const current = await this.getBatch(batchId, tenant);
    const active = this.active.get(batchId);
    if (isTerminal(current) || !active) return current;
    // Every item already done: the terminal write has begun and the batch ends as it ran.
    const what = active.finalizing ? "has finished" : "is cancelled";
    if (!active.finalizing) {
      this.queue.removeBatch(batchId);
      const running = active.cancelAll();
      this.link.cancel(batchId, running);
      this.log.info({ batchId, running: running.length }, "batch cancelled");
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

  async retry(batchId: string, tenant: string): Promise<{ batchId: string; itemCount: number }> {
    const batch = await this.getBatch(batchId, tenant);
    if (!isTerminal(batch)) throw failedPrecondition(`batch ${batchId} is not finished yet; cancel it or wait`);
    const got = await this.store!.get(batchId);
    const retryable = batch.results.filter((r) => r.status === ItemStatus.ITEM_STATUS_FAILED && r.error?.retryable);
    if (retryable.length === 0) throw failedPrecondition(`batch ${batchId} has no failed items with a retryable error`);
    const items = retryable.map((r) => got!.record.items[r.index]!);
    return this.submit(
      { items, idempotencyKey: "", webhook: got!.record.webhook, priority: batch.priority, labels: batch.labels },
      tenant,
      batchId,
      retryable.map((r) => r.index),
    );
  }

  /**
   * Newest first, from the batch index in JetStream: memory and work per call follow the page
   * size, not the number of stored batches. Entries whose record has aged out (or was never
   * stored) are skipped; the token is the index position of the last batch returned.
   */
  async list(tenant: string, pageSize: number, pageToken: string): Promise<{ batches: Batch[]; nextPageToken: string }> {
    this.ensureStarted();
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
      for await (const e of this.index!.newestFirst(tenant, before, size + 1)) {
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
    const active = this.active.get(batchId);
    if (active) return active.record.tenant === tenant ? active.snapshot() : undefined;
    const got = await this.store!.get(batchId);
    if (!got || got.record.tenant !== tenant) return undefined;
    return { ...got.record.batch!, results: [] };
  }

  async artifact(uri: string, tenant: string): Promise<ReadableStream<Uint8Array>> {
    if (!uri.startsWith(ARTIFACT_URI_PREFIX)) throw notFound(`artifact ${quoteInput(uri)}: expected ${ARTIFACT_URI_PREFIX}<name>`);
    const name = uri.slice(ARTIFACT_URI_PREFIX.length);
    const batchId = name.split("/", 1)[0]!;
    await this.getBatch(batchId, tenant); // tenancy check: another tenant's artifact is NOT_FOUND
    // A name the object store refuses (odd characters) names no artifact either.
    const obj = await this.infra!.artifacts.get(name).catch(() => null);
    if (!obj) throw notFound(`artifact ${quoteInput(uri)} not found`);
    return obj.data;
  }

  workers(): { record: WorkerRecord; gpus: ReturnType<VramLedger["gpusOf"]>; attemptsOpen: number }[] {
    return this.fleet.all().map((record) => ({ record, gpus: this.ledger.gpusOf(record.id), attemptsOpen: this.attempts.openOn(record.id) }));
  }

  drainWorker(workerId: string): Promise<WorkerRecord> {
    return this.link.drain(workerId);
  }

  // ---------------------------------------------------------------------------------------
  // Events from NATS

  /** After a restart: items a worker reports holding are leased to it again, not re-placed. */
  private adopt(worker: WorkerRecord, hb: Heartbeat, now: number): void {
    if (now >= this.recoveringUntil) return;
    for (const l of hb.inFlight) {
      const batch = this.active.get(l.batchId);
      const slot = batch?.items[l.index];
      if (!batch || !slot || slot.state !== "pending" || slot.closed?.has(l.token)) continue;
      // The index stays in the queue; schedule() drops entries whose slot is no longer pending.
      this.attempts.adopt(batch, l.index, { token: l.token, workerId: worker.id, gpuIndex: 0, assignedAtMs: Date.now() }, leaseAttempt(l.token));
    }
  }

  private onLogEntry(entry: ResultLogEntry, subject: string): void {
    this.applyEntry(entry, false, subject.slice(subject.lastIndexOf(".") + 1));
    this.scheduleSoon();
  }

  private protocolError(kind: string, subject: string, problem: string): void {
    this.metrics?.protocolError(kind);
    this.log.warn({ subject, problem }, `dropping a bad ${kind} from a worker`);
  }

  private applyEntry(entry: ResultLogEntry, replaying: boolean, subjectBatchId?: string): void {
    const now = Date.now();
    if (entry.entry?.$case === "revoked") {
      const r = entry.entry.revoked;
      if (!r.lease || (subjectBatchId !== undefined && r.lease.batchId !== subjectBatchId)) {
        if (!replaying) this.protocolError("revocation", subjectBatchId ?? "", "a revocation without a lease of its subject's batch");
        return;
      }
      const batch = this.active.get(r.lease.batchId);
      if (!batch) return;
      const effect = batch.applyRevocation(r.lease.index, r.lease.token, { code: "WORKER_LOST", message: r.reason, retryable: true }, now);
      if (!replaying && (effect.kind === "retry" || effect.kind === "done")) this.metrics?.attempt(effect.kind === "retry" ? "retried" : "failed");
      this.afterEffect(batch, r.lease.index, effect, replaying);
      return;
    }
    if (entry.entry?.$case !== "results") return;
    const { workerId, outcomes } = entry.entry.results;
    for (const o of outcomes) {
      const problem = outcomeProblem(subjectBatchId ?? o.lease?.batchId ?? "", o);
      if (problem) {
        if (!replaying) this.protocolError("outcome", `${workerId}`, problem);
        continue;
      }
      if (!o.lease) continue;
      this.attempts.end(o.lease.token);
      const batch = this.active.get(o.lease.batchId);
      if (!batch) {
        if (!replaying) this.countStale("batch-finished");
        continue;
      }
      const slot = batch.items[o.lease.index];
      const reserved = slot?.lease?.token === o.lease.token ? slot.lease.activationBytes : undefined;
      const effect = batch.applyOutcome(o, workerId, now);
      if (slot?.shapeKey && o.vramUsedBytes > 0) this.estimates.observe(slot.shapeKey, o.vramUsedBytes);
      if (slot?.shapeKey && effect.kind !== "ignored" && o.error?.code === "OUT_OF_MEMORY") {
        const raised = this.estimates.raiseAfterOom(slot.shapeKey, reserved ?? slot.need.activationBytes);
        if (!replaying) this.log.warn({ batchId: batch.id, item: o.lease.index, workerId, raisedTo: raised }, "item ran out of memory; placing it again with a larger estimate");
      }
      if (effect.kind === "ignored") {
        if (!replaying) this.countStale(effect.reason);
        continue;
      }
      // A replay after a restart re-applies outcomes the previous process already counted.
      if (!replaying) this.metrics?.attempt(effect.kind === "retry" ? "retried" : o.status === ItemStatus.ITEM_STATUS_SUCCEEDED ? "succeeded" : "failed");
      this.afterEffect(batch, o.lease.index, effect, replaying);
    }
  }

  private afterEffect(batch: ActiveBatch, index: number, effect: ReturnType<ActiveBatch["applyOutcome"]>, replaying: boolean): void {
    const slot = batch.items[index]!;
    if (effect.kind === "retry") {
      if (!replaying) this.log.info({ batchId: batch.id, item: index, attempts: slot.attempts }, "item will be placed again");
      this.queue.add(batch.id, index, batch.record.batch!.priority);
    } else if (effect.kind === "done") {
      const result = slot.result!;
      if (!replaying) {
        this.metrics?.itemFinished(result);
        this.emit(batch.id, { event: { $case: "item", item: result } });
        if (batch.isComplete) this.finalizeInBackground(batch);
      }
    }
  }

  private countStale(reason: string): void {
    this.metrics?.attempt("stale_ignored");
    this.log.debug({ reason }, "stale or duplicate result ignored");
  }

  // ---------------------------------------------------------------------------------------
  // Placement

  private scheduleSoon(): void {
    if (this.scheduleQueued || !this.started) return;
    this.scheduleQueued = true;
    setImmediate(() => {
      this.scheduleQueued = false;
      this.schedule();
    });
  }

  /** One pass of the pure engine (scheduler/engine.ts); this only sends what it decided. */
  private schedule(): void {
    const outgoing = schedulePass(
      { queue: this.queue, batches: this.active, workers: this.fleet.ready(), ledger: this.ledger, attempts: this.attempts, estimates: this.estimates },
      { nowMs: Date.now(), recoveringUntilMs: this.recoveringUntil, policy: this.opts.policy, newToken: newLeaseToken },
    );
    for (const [workerId, list] of outgoing) void this.link.send(workerId, list);
  }

  private tick(): void {
    const now = Date.now();
    this.link.sweep(now);
    if (now - this.lastUnplaceableCheck >= 1000 && now >= this.recoveringUntil) {
      this.lastUnplaceableCheck = now;
      this.failUnplaceable(now);
    }
    this.metrics?.queue(this.queueDepthByModel(), this.servedModels());
    this.metrics?.observeWorkers(this.fleet.all(), this.ledger.all(), (id) => this.attempts.openOn(id));
    this.metrics?.batchesInMemory(this.active.size);
    this.refreshAging(now);
    this.scheduleSoon();
  }

  /** Fails the items the engine finds no worker could ever fit (see findUnplaceable). */
  private failUnplaceable(now: number): void {
    const found = findUnplaceable({ batches: this.active, workers: this.fleet.all(), ledger: this.ledger, estimates: this.estimates }, now, this.opts.unplaceableGraceMs);
    const failedBy = new Map<ActiveBatch, number>();
    for (const { batch, index, error } of found) {
      if (!batch.failItem(index, error)) continue;
      const slot = batch.items[index]!;
      failedBy.set(batch, (failedBy.get(batch) ?? 0) + 1);
      this.metrics?.itemFinished(slot.result!);
      this.emit(batch.id, { event: { $case: "item", item: slot.result! } });
    }
    for (const [batch, failed] of failedBy) {
      this.log.warn({ batchId: batch.id, failed, graceMs: this.opts.unplaceableGraceMs }, "items no worker can fit have failed");
      if (batch.isComplete) this.finalizeInBackground(batch);
    }
  }

  /** Models registered or served by a live worker: each has queue series, 0 when idle. */
  private servedModels(): Set<string> {
    const out = new Set(this.models.all().map((m) => m.name));
    for (const w of this.fleet.all()) if (w.state !== WorkerState.WORKER_STATE_LOST) for (const m of w.models) out.add(m);
    return out;
  }

  private queueDepthByModel(): Map<string, { items: number; bytes: number }> {
    const out = new Map<string, { items: number; bytes: number }>();
    for (const b of this.active.values()) {
      for (const s of b.items) {
        if (s.state !== "pending") continue;
        const e = out.get(s.model) ?? { items: 0, bytes: 0 };
        e.items++;
        e.bytes += this.estimates.activation(s.shapeKey!, s.need.activationBytes);
        out.set(s.model, e);
      }
    }
    return out;
  }

  // ---------------------------------------------------------------------------------------
  // Terminal write

  /** The write retries on its own; it only ends early when the coordinator stops. */
  private finalizeInBackground(batch: ActiveBatch): void {
    this.finalize(batch).catch((err) => {
      if (err instanceof TerminalWriteStopped) this.log.info({ batchId: batch.id }, "terminal write left to the next start");
      else this.log.error({ batchId: batch.id, err: errorMessage(err) }, "finalize failed");
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
   * crash between the two cannot lose the delivery.
   */
  private async writeFinal(batch: ActiveBatch): Promise<Batch> {
    batch.finalizing = true;
    this.queue.removeBatch(batch.id);
    const record = fitTerminalRecord({ ...batch.record, batch: batch.final(new Date()) }, this.maxRecordBytes().bytes);
    let webhook: Awaited<ReturnType<WebhookSender["record"]>>;
    let waiting = false;
    const outcome = await writeTerminal({
      store: this.store!,
      record,
      revision: () => batch.revision,
      prepare: async () => {
        try {
          webhook = await this.webhooks!.record(batch.id, batch.record.webhook);
        } catch (err) {
          throw storageError(err, `the pending webhooks bucket (${this.names.webhooksBucket})`, "the server's max_file_store");
        }
      },
      onFailure: (err, attempt, retryInMs) => {
        if (!waiting) this.metrics?.terminalWriteWaiting(1);
        waiting = true;
        this.metrics?.terminalWriteFailed(err.reason);
        batch.reportWriteFailure(err);
        this.log.error({ batchId: batch.id, attempt, retryInMs, code: err.code, err: err.message }, "terminal write failed; retrying");
      },
      initialDelayMs: this.opts.terminalRetryInitialMs,
      maxDelayMs: this.opts.terminalRetryMaxMs,
      signal: this.stopping.signal,
    }).finally(() => {
      if (waiting) this.metrics?.terminalWriteWaiting(-1);
    });
    const stored = outcome.stored;
    if (!outcome.ours) this.log.warn({ batchId: batch.id }, "batch was already finalized elsewhere; keeping the stored result");
    this.active.delete(batch.id);
    this.metrics?.batchesInMemory(this.active.size);
    void this.store!.clearOpen(batch.id).catch((err) => this.log.warn({ batchId: batch.id, err: errorMessage(err) }, "open marker not removed; the next start removes it"));
    this.metrics?.batchFinished(stored);
    this.log.info(
      { batchId: batch.id, state: BatchState[stored.state], succeeded: stored.succeeded, failed: stored.failed, cancelled: stored.cancelled, attempts: outcome.attempts },
      "batch finished",
    );
    this.emit(batch.id, { event: { $case: "batch", batch: stored } });
    this.listeners.delete(batch.id);
    if (outcome.ours) this.webhooks!.send(webhook);
    return stored;
  }

  /**
   * Rewrites the records of batches running longer than half the retention, so JetStream's age
   * limit never removes a batch that is still running (its open marker too).
   */
  private refreshAging(now: number): void {
    const ageLimit = this.opts.storage.retentionMs / 2;
    if (now - this.lastRefreshCheck < Math.min(60_000, ageLimit / 4)) return;
    this.lastRefreshCheck = now;
    for (const batch of this.active.values()) {
      if (batch.finalizing || batch.refreshing || now - batch.writtenAtMs < ageLimit) continue;
      batch.refreshing = true;
      void (async () => {
        try {
          await this.store!.markOpen(batch.id);
          const revision = await this.store!.replace(batch.record, batch.revision);
          batch.revision = Math.max(batch.revision, revision);
          batch.writtenAtMs = Date.now();
        } catch (err) {
          this.log.warn({ batchId: batch.id, err: errorMessage(err) }, "running batch record not refreshed; trying again later");
        } finally {
          batch.refreshing = false;
        }
      })();
    }
  }

  // ---------------------------------------------------------------------------------------

  private listen(batchId: string, l: BatchListener): void {
    let set = this.listeners.get(batchId);
    if (!set) this.listeners.set(batchId, (set = new Set()));
    set.add(l);
  }

  private unlisten(batchId: string, l: BatchListener): void {
    this.listeners.get(batchId)?.delete(l);
  }

  private emit(batchId: string, ev: BatchEvent): void {
    for (const l of this.listeners.get(batchId) ?? []) l(ev);
  }

  private ensureStarted(): void {
    if (!this.started) throw unavailable("the coordinator is starting");
    if (this.closePromise) throw unavailable("the coordinator is shutting down");
  }


  /** Idempotent. Batches stay durable; a later start resumes them. */
  close(): Promise<void> {
    if (this.closePromise) return this.closePromise;
    this.closePromise = (async () => {
      this.stopping.abort();
      if (this.tickTimer) clearInterval(this.tickTimer);
      this.link.stop();
      this.webhooks?.close();
      for (const s of this.subs) {
        try {
          s.unsubscribe();
        } catch {
          /* closed */
        }
      }
      this.models.stop();
      await this.resultLog?.stop();
      try {
        await this.nc?.drain();
      } catch {
        /* closed */
      }
      this.log.info("coordinator stopped");
    })();
    return this.closePromise;
  }
}


function storageStatus(e: StorageError, context: string): ServerError {
  const message = `${context}: ${e.message}`;
  return e.code === "STORAGE_UNAVAILABLE" ? unavailable(message) : resourceExhausted(message);
}
