import type { MsgHdrs, NatsConnection, Subscription } from "@nats-io/transport-node";
import { ItemStatus, WorkerState, type Batch, type BatchEvent, type SubmitBatchRequest } from "../proto/gen/shoal/v1/shoal.js";
import type { BatchRecord, ResultLogEntry } from "../proto/gen/shoal/v1/wire.js";
import { ensureInfrastructure, type Infrastructure } from "../shared/jetstream-setup.js";
import type { Logger } from "../shared/logger.js";
import { connectNats } from "../shared/nats.js";
import { Names } from "../shared/subjects.js";
import { itemNeed, type VramNeed } from "../shared/vram-need.js";
import { Attempts } from "./attempts.js";
import { BatchApi } from "./batch-api.js";
import { BatchIndex } from "./batch-index.js";
import { BatchProgress } from "./batch-progress.js";
import { BatchQueue } from "./batch-queue.js";
import { ActiveBatch, newItemSlot, type HedgeEnd, type ItemSlot } from "./batch-state.js";
import { UsageStore, type DayUsage } from "./usage.js";
import { BatchStore } from "./batch-store.js";
import { ContentPolicyStage, finishBlockedItems } from "./content-policy-stage.js";
import { unavailable } from "./errors.js";
import { errorMessage } from "../shared/errors.js";
import { Fleet, type WorkerRecord } from "./fleet.js";
import { LearnedDurations } from "./learned-durations.js";
import type { CoordinatorMetrics } from "./metrics.js";
import { ModelRegistry } from "./model-registry.js";
import type { CoordinatorOptions } from "./options.js";
import { Recovery } from "./recovery.js";
import { ResultLog } from "./result-log.js";
import { performance } from "node:perf_hooks";
import { AffinityPlanner } from "./scheduler/affinity.js";
import { DurationModel, gpuTypeOf } from "./scheduler/durations.js";
import type { Eviction } from "./scheduler/defrag.js";
import { findUnplaceable, newEnginePolicy, noteNeed, schedulePass, type EnginePolicy } from "./scheduler/engine.js";
import { LearnedPredictor } from "./scheduler/predictor.js";
import { DEFAULT_HEDGE_AFTER_FACTOR } from "./scheduler/hedging.js";
import { VramEstimates, learnFromOutcome } from "./vram-estimates.js";
import { VramLedger } from "./vram-ledger.js";
import { WebhookSender } from "./webhooks.js";
import type { TenantLimits } from "./api-keys.js";
import { WorkerLink } from "./worker-link.js";
import { LeaseTokens, loadLeaseKey } from "./lease-tokens.js";
import { fence } from "./outcome-fence.js";
import { fenceConnection, type Fence } from "./fenced-connection.js";
import { outcomeProblem } from "./wire-validation.js";
import { outcomeSpans } from "./item-tracing.js";
import { PassTrigger } from "./pass-trigger.js";
import { nextTickAtMs } from "./tick-schedule.js";
import { DeadlineTimer } from "../shared/deadline-timer.js";

/**
 * The shortest time between two scheduling passes (ms; pass-trigger.ts): at the fleet's peak the
 * outcome messages of one millisecond share a pass and its assignments, for at most 1 ms more
 * latency on an item freed right after a pass (docs/performance.md, "The item path's CPU").
 */
const MIN_PASS_GAP_MS = 1;

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
  private usage: UsageStore | undefined;
  /** Tenants the API keys name: the only values the usage metrics' tenant label takes (others are "other"). SIGHUP updates it. */
  tenantLabels: Set<string>;
  private resultLog: ResultLog | undefined;
  private webhooks: WebhookSender | undefined;
  /** Issues and checks lease tokens (bound to item and worker by a MAC); set at start. */
  private leaseTokens: LeaseTokens | undefined;
  readonly models: ModelRegistry;
  private readonly names: Names;
  private readonly fleet: Fleet;
  /** Heartbeats in; assignments, cancels and drains out; take-back of lost attempts. */
  private readonly link: WorkerLink;
  /** Submit, get, watch, list, cancel, retry, artifacts, and the terminal write of each batch. */
  private readonly api: BatchApi;
  /** Rebuild at start from KV and the results log; adoption of held items while recovering. */
  private readonly recovery: Recovery;
  /** The --content-policy rules applied at submit; main.ts reloads them on SIGHUP. */
  readonly contentPolicy: ContentPolicyStage;
  private readonly ledger = new VramLedger();
  /** The only writer of attempt state: an attempt, its reservation in the ledger and its worker. */
  private readonly attempts = new Attempts(this.ledger);
  private readonly estimates = new VramEstimates();
  /** Item durations learned from counted outcomes, kept in the scheduler bucket across restarts. */
  private readonly learnedDurations: LearnedDurations;
  /** Queue position and ETA of the running batches, refreshed about once a second. */
  private readonly progress: BatchProgress;
  private lastProgress = 0;
  private lastUnplaceableCheck = 0;
  private lastQueueGauges = 0;
  /** Learned run times per model, shape and GPU type (durations.ts), read by the engine. */
  readonly durations: LearnedPredictor;
  /** Items grouped by model (the affinity planner's backlog), longest predicted first. */
  private readonly queue: BatchQueue;
  /** The engine's policy state: affinity plan, predictor, decision timer. */
  private readonly engine: EnginePolicy;
  private plansCounted = 0;
  private holdsCounted = 0;
  private readonly active = new Map<string, ActiveBatch>();
  private readonly subs: Subscription[] = [];
  /** The tick, armed for its next time (tick-schedule.ts): every timeout / 6 while batches run, at the next heartbeat expiry when idle. */
  private readonly tickTimer = new DeadlineTimer(
    () => {
      try {
        this.tick();
      } catch (err) {
        // Re-armed all the same (an interval went on after a throw, and lost-worker detection
        // hangs on this timer); the error still reaches the crash guard as an uncaught exception.
        queueMicrotask(() => {
          throw err;
        });
      }
      return this.nextTickAt();
    },
    () => Date.now(),
  );
  /** Scheduling passes: requests before a pass share it, passes at least MIN_PASS_GAP_MS apart. */
  private readonly passes = new PassTrigger(() => this.schedule(), MIN_PASS_GAP_MS);
  private closePromise: Promise<void> | undefined;
  private started = false;
  /** Aborted by close(): ends the retries of terminal writes (the next start resumes them). */
  private readonly stopping = new AbortController();

  constructor(
    private readonly opts: CoordinatorOptions,
    private readonly log: Logger,
    private readonly metrics?: CoordinatorMetrics,
    /** With standby coordinators: refuses every message to NATS once this one's lease is over. */
    private readonly fence?: Fence,
  ) {
    this.tenantLabels = new Set(opts.apiKeys.tenants);
    // One duration model: the engine predicts from it, LearnedDurations keeps it in KV.
    const durationModel = new DurationModel();
    this.durations = new LearnedPredictor(durationModel, {
      gpuTypeOf: (workerId) => {
        const g = this.ledger.gpusOf(workerId)[0];
        return g ? gpuTypeOf(g.name, g.totalBytes) : undefined;
      },
      loadBytesPerS: opts.loadBytesPerS ?? 0,
    });
    this.queue = new BatchQueue({
      classify: (batchId, index) => {
        const slot = this.active.get(batchId)?.items[index];
        if (!slot) return { group: "", rank: 0 };
        // The planner knows every waiting model's need before the first pass places any of it.
        noteNeed(this.engine, slot.model, slot.need.weightsBytes, this.estimates.activation(slot.shapeKey!, slot.need.activationBytes));
        return { group: slot.model, rank: this.durations.predictMs(slot) };
      },
      longestFirst: opts.longestFirst ?? true,
    });
    this.engine = newEnginePolicy({
      affinity: (opts.scheduler ?? "affinity") === "affinity" ? new AffinityPlanner() : undefined,
      predictor: this.durations,
      observeDecision: metrics ? (s) => metrics!.placement(s) : undefined,
      timer: () => performance.now(),
      hedging: opts.hedging === false ? undefined : { afterFactor: opts.hedgeAfterFactor ?? DEFAULT_HEDGE_AFTER_FACTOR, minOverrunMs: opts.hedgeMinOverrunMs },
      earliestFinish: opts.earliestFinish ?? true,
      packing: opts.packing ?? true,
    });
    if (opts.defrag ?? true) this.engine.defrag = { busy: new Set(), evictions: [] };
    this.names = new Names(opts.prefix);
    this.contentPolicy = new ContentPolicyStage(opts.contentPolicyFile, log.child({ component: "content-policy" }), (rules, outcome) => metrics?.contentPolicyLoaded(rules, outcome));
    this.fleet = new Fleet(opts.heartbeatTimeoutMs);
    this.models = new ModelRegistry(log.child({ component: "models" }));
    this.learnedDurations = new LearnedDurations(this.ledger, log.child({ component: "durations" }), durationModel);
    this.progress = new BatchProgress(this.learnedDurations, this.durations);
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
      reported: (worker, hb, now) => this.recovery.adopt(worker, hb, now),
      protocolError: (kind, subject, problem) => this.protocolError(kind, subject, problem),
    });
    this.recovery = new Recovery({
      infra: () => this.infra!,
      store: () => this.store!,
      index: () => this.index!,
      resultLog: () => this.resultLog!,
      names: this.names,
      log,
      metrics,
      active: this.active,
      attempts: this.attempts,
      heartbeatTimeoutMs: opts.heartbeatTimeoutMs,
      activate: (record, revision, writtenAtMs) => this.activate(record, revision, writtenAtMs),
      holder: (token, batchId, index) => this.leaseTokens!.holder(token, batchId, index),
      fenced: (kind, reason) => this.fenced(kind, reason),
      applyEntry: (entry, replaying, subjectBatchId) => this.applyEntry(entry, replaying, subjectBatchId),
      finalizeInBackground: (batch) => this.api.finalizeInBackground(batch),
      countUsage: (tenant, batch) => this.api.countUsage(tenant, batch),
      cancel: (batchId, running) => this.link.cancel(batchId, running),
      signal: this.stopping.signal,
    });
    this.api = new BatchApi({
      nc: () => this.nc,
      infra: () => this.infra!,
      store: () => this.store!,
      index: () => this.index!,
      webhooks: () => this.webhooks!,
      names: this.names,
      opts,
      log,
      metrics,
      models: this.models,
      contentPolicy: this.contentPolicy,
      queue: this.queue,
      active: this.active,
      activate: (record, revision, writtenAtMs, needs) => this.activate(record, revision, writtenAtMs, needs),
      cancelOnWorkers: (batchId, running) => this.link.cancel(batchId, running),
      scheduleSoon: () => this.scheduleSoon(),
      ensureStarted: () => this.ensureStarted(),
      stopping: this.stopping.signal,
      holdsTerm: this.fence ? () => this.fence!.allows() : undefined,
      progress: (batchId) => this.progress.get(batchId),
      usage: () => this.usage!,
      tenantLabel: (tenant) => (this.tenantLabels.has(tenant) ? tenant : "other"),
    });
  }

  async start(): Promise<void> {
    this.nc = await connectNats(this.opts.natsUrl, `shoal-coordinator ${process.pid}`, this.log, { security: this.opts.natsSecurity, inboxPrefix: "_INBOX_coordinator" });
    if (this.fence) fenceConnection(this.nc, this.fence);
    this.infra = await ensureInfrastructure(this.nc, this.names, this.opts.storage, this.log.child({ component: "storage" }), this.opts.replicas);
    this.leaseTokens = new LeaseTokens(await loadLeaseKey(this.nc, this.names.leaseKeyBucket, this.opts.replicas ?? 1));
    this.store = new BatchStore(this.infra.batches, this.infra.idempotency, this.names);
    this.usage = new UsageStore(this.infra.usage!, this.names.usageBucket);
    this.index = new BatchIndex(this.nc, this.infra.jsm, this.names);
    this.resultLog = new ResultLog(this.nc, this.infra.jsm, this.names, this.log);
    await this.models.start(this.infra.models);
    await this.learnedDurations.start(this.infra.scheduler!, this.opts.forgetDurations);
    this.webhooks = new WebhookSender(
      this.infra.webhooks,
      async (id) => (await this.store!.get(id))?.record.batch,
      { retryDelaysMs: this.opts.webhookRetryDelaysMs, timeoutMs: 10_000, allowPrivate: this.opts.webhookAllowPrivate, concurrency: this.opts.webhookConcurrency },
      this.log.child({ component: "webhooks" }),
    );
    await this.recovery.recover();
    await this.webhooks.start();
    this.subs.push(this.link.subscribeHeartbeats());
    await this.resultLog.startConsuming(
      (entry, subject, headers, storedAtMs) => this.onLogEntry(entry, subject, headers, storedAtMs),
      (subject, problem) => this.protocolError("outcome", subject, problem),
    );
    // Ask every worker to report now rather than within its next interval.
    this.nc.publish(this.names.coordinatorHello);
    this.recovery.askedToReport(Date.now());
    this.started = true;
    this.tickTimer.add(Date.now() + this.tickPeriodMs());
    this.log.info({ active: this.active.size, retentionMs: this.opts.storage.retentionMs }, "coordinator ready");
  }

  // ---------------------------------------------------------------------------------------
  // Running batches

  /**
   * Makes a stored record a running batch and queues its items; used by submit and by recovery.
   * `needs` are the ones validation computed for a new batch; a resumed batch's come from the
   * manifests registered now (the record stores only model and params).
   */
  private activate(record: BatchRecord, revision: number, writtenAtMs = Date.now(), needs?: VramNeed[]): ActiveBatch {
    const now = Date.now();
    const created = record.batch!.createdAt?.getTime() ?? now;
    const slots: ItemSlot[] = record.items.map((item, i) => {
      const params = item.params ?? {};
      return newItemSlot(item.model, params, needs?.[i] ?? itemNeed(this.models.get(item.model), params), now, created);
    });
    const active = new ActiveBatch(record, revision, slots, this.opts.maxAttempts, writtenAtMs);
    this.active.set(active.id, active);
    // Back to the busy cadence if the tick was armed for an idle coordinator's later time.
    if (this.started) this.tickTimer.add(Date.now() + this.tickPeriodMs());
    this.metrics?.batchesInMemory(this.active.size); // and the event-loop monitor on (shared/process-metrics.ts)
    finishBlockedItems(active); // refused by the content policy at submit: never queued
    for (let i = 0; i < slots.length; i++) if (slots[i]!.state === "pending") this.queue.add(active.id, i, record.batch!.priority);
    return active;
  }

  // ---------------------------------------------------------------------------------------
  // API: the batch calls are the BatchApi's (batch-api.ts)

  submit(req: SubmitBatchRequest, tenant: string, retryOf = "", sourceIndices: number[] = [], limits: TenantLimits = {}): Promise<{ batchId: string; itemCount: number }> {
    return this.api.submit(req, tenant, retryOf, sourceIndices, limits);
  }

  getBatch(batchId: string, tenant: string): Promise<Batch> {
    return this.api.getBatch(batchId, tenant);
  }

  watch(batchId: string, tenant: string, signal: AbortSignal, progress = false): AsyncGenerator<BatchEvent> {
    return this.api.watch(batchId, tenant, signal, progress);
  }

  waitTerminal(batchId: string, tenant: string, signal: AbortSignal): Promise<Batch> {
    return this.api.waitTerminal(batchId, tenant, signal);
  }

  cancel(batchId: string, tenant: string): Promise<Batch> {
    return this.api.cancel(batchId, tenant);
  }

  retry(batchId: string, tenant: string, limits: TenantLimits = {}): Promise<{ batchId: string; itemCount: number }> {
    return this.api.retry(batchId, tenant, limits);
  }

  list(tenant: string, pageSize: number, pageToken: string): Promise<{ batches: Batch[]; nextPageToken: string }> {
    return this.api.list(tenant, pageSize, pageToken);
  }

  /** Stored usage days from `since` on, of one tenant or (undefined) every tenant (usage.ts). */
  async usageSince(since: string, tenant: string | undefined): Promise<DayUsage[]> {
    this.ensureStarted();
    try {
      return await this.usage!.list(since, tenant);
    } catch (err) {
      throw unavailable(`the usage bucket (${this.names.usageBucket}) could not be read: ${errorMessage(err)}`);
    }
  }

  artifact(uri: string, tenant: string): Promise<ReadableStream<Uint8Array>> {
    return this.api.artifact(uri, tenant);
  }

  workers(): { record: WorkerRecord; gpus: ReturnType<VramLedger["gpusOf"]>; attemptsOpen: number }[] {
    return this.fleet.all().map((record) => ({ record, gpus: this.ledger.gpusOf(record.id), attemptsOpen: this.attempts.openOn(record.id) }));
  }

  drainWorker(workerId: string): Promise<WorkerRecord> {
    return this.link.drain(workerId);
  }

  // ---------------------------------------------------------------------------------------
  // Events from NATS

  private onLogEntry(entry: ResultLogEntry, subject: string, headers?: MsgHdrs, storedAtMs?: () => number): void {
    const endSpans = outcomeSpans(entry, headers);
    const batchId = subject.slice(subject.lastIndexOf(".") + 1);
    const stepped = this.active.get(batchId);
    // Step times (step-times.ts): the last results message applied before the batch completes.
    if (stepped?.steps && !stepped.finalizing && storedAtMs) stepped.steps.lastOutcomeStored = storedAtMs();
    this.applyEntry(entry, false, batchId);
    endSpans?.();
    this.scheduleSoon();
  }

  private protocolError(kind: string, subject: string, problem: string, count = 1): void {
    for (let i = 0; i < count; i++) this.metrics?.protocolError(kind);
    this.log.warn({ subject, problem, count }, `dropping a bad ${kind} from a worker`);
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
      // Only a token this fleet issued for the item may close it: a forged revocation (one
      // naming an attempt number past --max-attempts would fail the item at once) changes nothing.
      const f = fence(this.leaseTokens!, r.lease.batchId, r.lease.index, r.lease.token, undefined, batch, false);
      if (!f.ok) {
        if (!replaying) {
          this.fenced("revocation", f.reason);
          this.log.warn({ batchId: r.lease.batchId, item: r.lease.index, reason: f.reason }, "refusing a revocation of an attempt no coordinator issued");
        }
        return;
      }
      const effect = batch.applyRevocation(r.lease.index, r.lease.token, { code: "WORKER_LOST", message: r.reason, retryable: true }, now);
      if (!replaying && (effect.kind === "retry" || effect.kind === "done")) this.metrics?.attempt(effect.kind === "retry" ? "retried" : "failed");
      this.afterEffect(batch, r.lease.index, effect, replaying);
      return;
    }
    if (entry.entry?.$case !== "results") return;
    const { workerId, outcomes } = entry.entry.results;
    let bad = 0;
    let firstProblem: string | undefined;
    let refused = 0;
    let firstRefused: { item: number; reason: string } | undefined;
    for (const o of outcomes) {
      const problem = outcomeProblem(subjectBatchId ?? o.lease?.batchId ?? "", o);
      if (problem) {
        bad++;
        firstProblem ??= problem;
        continue;
      }
      if (!o.lease) continue;
      const batch = this.active.get(o.lease.batchId);
      const f = fence(this.leaseTokens!, o.lease.batchId, o.lease.index, o.lease.token, workerId, batch, !replaying);
      if (!f.ok && f.reason !== "not_current") {
        // Not this sender's attempt: nothing of it may touch the item, the ledger or the estimates.
        if (!replaying) {
          this.fenced("outcome", f.reason);
          refused++;
          firstRefused ??= { item: o.lease.index, reason: f.reason };
        }
        continue;
      }
      // The sender's own attempt ended (counted or not): its reservation and slot come back.
      this.attempts.end(o.lease.token);
      if (!f.ok) {
        if (!replaying) this.countStale("not-current");
        continue;
      }
      if (!batch) {
        if (!replaying) this.countStale("batch-finished");
        continue;
      }
      const slot = batch.items[o.lease.index];
      // Either copy of a hedged item is current (scheduler/hedging.ts).
      const current = slot?.lease?.token === o.lease.token ? slot.lease : slot?.hedge?.token === o.lease.token ? slot.hedge : undefined;
      const reserved = current?.activationBytes;
      const effect = batch.applyOutcome(o, workerId, now);
      if (!replaying && current && effect.kind === "done" && o.status === ItemStatus.ITEM_STATUS_SUCCEEDED && o.runMs > 0) {
        // Only the current attempt's counted success teaches durations (a failure's time says
        // little), and not on replay: what was learned before the restart is loaded from KV.
        this.durations.observe(slot!, current.workerId, o.runMs);
        this.progress.observeSlotTime(current.assignedAtMs, now, o.runMs);
      }
      // Learning takes only outcomes that counted: an ignored one's figures are nobody's.
      // (the same rule as bench/sim's simulator: vram-estimates.ts, learnFromOutcome).
      if (slot?.shapeKey) {
        const oom = o.error?.code === "OUT_OF_MEMORY";
        const raised = learnFromOutcome(this.estimates, slot.shapeKey, { counted: effect.kind !== "ignored", oom, vramUsedBytes: o.vramUsedBytes, reservedBytes: reserved, manifestBytes: slot.need.activationBytes });
        if (raised !== undefined && !replaying) this.log.warn({ batchId: batch.id, item: o.lease.index, workerId, neededBytes: o.vramUsedBytes, raisedTo: raised }, "item ran out of memory; placing it again with a larger estimate");
      }
      if (effect.kind === "ignored") {
        if (!replaying) this.countStale(effect.reason);
        continue;
      }
      // A replay after a restart re-applies outcomes the previous process already counted.
      if (!replaying) this.metrics?.attempt(effect.kind === "retry" ? "retried" : o.status === ItemStatus.ITEM_STATUS_SUCCEEDED ? "succeeded" : "failed");
      this.afterEffect(batch, o.lease.index, effect, replaying);
    }
    // Counted per outcome but logged once per message: a forged message of thousands of
    // outcomes must not become thousands of log lines.
    if (refused > 0) {
      this.log.warn({ batchId: subjectBatchId, workerId: workerId.slice(0, 64), refused, of: outcomes.length, first: firstRefused }, "refusing outcomes for attempts their sender does not hold");
    }
    if (bad > 0 && !replaying) {
      this.protocolError("outcome", this.names.results(subjectBatchId ?? ""), `${bad} of ${outcomes.length} outcomes from "${workerId.slice(0, 64)}"; the first: ${firstProblem}`, bad);
    }
  }

  private afterEffect(batch: ActiveBatch, index: number, effect: ReturnType<ActiveBatch["applyOutcome"]>, replaying: boolean): void {
    const slot = batch.items[index]!;
    if (!replaying && (effect.kind === "done" || effect.kind === "closed") && effect.hedge) this.hedgeEnded(batch, index, effect.hedge);
    if (effect.kind === "retry") {
      if (!replaying) this.log.info({ batchId: batch.id, item: index, attempts: slot.attempts }, "item will be placed again");
      this.queue.add(batch.id, index, batch.record.batch!.priority);
    } else if (effect.kind === "done") {
      const result = slot.result!;
      if (!replaying) {
        this.metrics?.itemFinished(result);
        this.api.emit(batch.id, { event: { $case: "item", item: result } });
        if (batch.isComplete) this.api.finalizeInBackground(batch);
      }
    }
  }

  /**
   * A hedged item's pair ended: the first outcome won. The other copy, when still running, is
   * cancelled on its worker; it stays open (its reservation and worker slot held) until its
   * worker reports it ended, as any cancelled attempt, and that late outcome changes nothing.
   */
  private hedgeEnded(batch: ActiveBatch, index: number, end: HedgeEnd): void {
    const slot = batch.items[index]!;
    this.metrics?.hedgeEnded(slot.model, end.outcome);
    this.log.info(
      { batchId: batch.id, item: index, outcome: end.outcome, winner: end.outcome === "cancelled" ? slot.lease?.workerId : slot.result?.workerId, cancelled: end.other?.workerId },
      end.outcome === "cancelled" ? "a copy of a hedged item ended; the other carries it on" : "hedged item ended by its first outcome; cancelling the other copy",
    );
    if (end.other) this.link.cancel(batch.id, [{ index, lease: end.other }]);
  }

  private fenced(kind: string, reason: string): void {
    this.metrics?.fenced(kind, reason);
  }

  private countStale(reason: string): void {
    this.metrics?.attempt("stale_ignored");
    this.log.debug({ reason }, "stale or duplicate result ignored");
  }

  // ---------------------------------------------------------------------------------------
  // Placement

  private scheduleSoon(): void {
    if (this.started) this.passes.request();
  }

  /** One pass of the pure engine (scheduler/engine.ts); this only sends what it decided. */
  private schedule(): void {
    const outgoing = schedulePass(
      { queue: this.queue, batches: this.active, workers: this.fleet.ready(), ledger: this.ledger, attempts: this.attempts, estimates: this.estimates, engine: this.engine },
      { nowMs: Date.now(), recoveringUntilMs: this.recovery.until, policy: this.opts.policy, newToken: (attempt, batchId, index, workerId) => this.leaseTokens!.issue(batchId, index, attempt, workerId) },
    );
    for (const [workerId, list] of outgoing) {
      for (const p of list) {
        if (!p.hedge) continue;
        const h = p.hedge;
        this.log.info(
          { batchId: p.batch.id, item: p.index, workerId, originalWorkerId: h.originalWorkerId, reason: h.reason, elapsedMs: Math.round(h.elapsedMs), predictedMs: Math.round(h.predictedMs), copyPredictedMs: Math.round(h.copyPredictedMs) },
          "hedging a straggler: a second copy on an idle GPU",
        );
      }
      void this.link.send(workerId, list);
    }
    for (const e of this.engine.defrag?.evictions ?? []) this.sendEviction(e);
    // A pass when the slot an item is held for falls due (scheduler/earliest-finish.ts), if no outcome comes first.
    const holdCheckAtMs = this.engine.holdCheckAtMs;
    if (holdCheckAtMs !== undefined) this.passes.requestIn(holdCheckAtMs - Date.now());
    const plans = this.engine.affinity?.plans ?? 0;
    for (; this.plansCounted < plans; this.plansCounted++) this.metrics?.replanned();
    const holds = this.engine.holds ?? 0;
    this.metrics?.held(holds - this.holdsCounted);
    this.holdsCounted = holds;
  }

  /** Carries one defragmentation decision to its worker; the GPU takes no other until it answers. */
  private sendEviction(e: Eviction): void {
    const busy = this.engine.defrag!.busy;
    busy.add(e.gpuKey);
    const ids = { workerId: e.workerId, gpuIndex: e.gpuIndex, models: e.models, forModel: e.forModel };
    this.log.info({ ...ids, bytes: e.bytes, gainMs: Number.isFinite(e.gainMs) ? Math.round(e.gainMs) : "unbounded", reloadMs: Math.round(e.costMs) }, "defrag: evicting idle weights for an item that fits nowhere");
    void this.link
      .evict(e)
      .then(({ evicted, refused }) => {
        if (evicted.length > 0) this.metrics?.defragEviction("evicted", evicted.length);
        if (refused.length > 0) {
          this.metrics?.defragEviction("refused", refused.length);
          this.log.warn({ ...ids, refused }, "defrag: worker refused to evict");
        }
      })
      .catch((err: unknown) => {
        this.metrics?.defragEviction("failed", e.models.length);
        this.log.warn({ ...ids, err: errorMessage(err) }, "defrag: eviction not done");
      })
      .finally(() => {
        busy.delete(e.gpuKey);
        this.scheduleSoon();
      });
  }

  /** The tick's cadence while batches run: lost workers are found within timeout + this. */
  private tickPeriodMs(): number {
    return Math.max(100, Math.floor(this.opts.heartbeatTimeoutMs / 6));
  }

  private nextTickAt(): number {
    const now = Date.now();
    return nextTickAtMs({
      nowMs: now,
      busy: this.active.size > 0 || now < this.recovery.until,
      periodMs: this.tickPeriodMs(),
      // Not more than the heartbeat timeout: a worker heard from after the tick was armed then
      // expires no earlier than it fires.
      idleMaxMs: Math.max(this.tickPeriodMs(), this.opts.heartbeatTimeoutMs),
      nextLostAtMs: this.fleet.nextLostAtMs(),
    });
  }

  private tick(): void {
    const now = Date.now();
    this.link.sweep(now);
    if (now - this.lastUnplaceableCheck >= 1000 && now >= this.recovery.until) {
      this.lastUnplaceableCheck = now;
      this.failUnplaceable(now);
    }
    // A walk over every waiting item: once a second, as the unplaceable check, but also while
    // recovering so served models show 0 from the start.
    if (now - this.lastQueueGauges >= 1000) {
      this.lastQueueGauges = now;
      this.metrics?.queue(this.queueDepthByModel(), this.servedModels());
    }
    if (now - this.lastProgress >= 1000) {
      this.lastProgress = now;
      for (const id of this.progress.refresh(now, this.active.values())) this.api.emitProgress(id);
      this.learnedDurations.maybeSave(now);
    }
    this.metrics?.observeWorkers(this.fleet.all(), this.ledger.all(), (id) => this.attempts.openOn(id));
    this.metrics?.batchesInMemory(this.active.size);
    this.api.refreshAging(now);
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
      this.api.emit(batch.id, { event: { $case: "item", item: slot.result! } });
    }
    for (const [batch, failed] of failedBy) {
      this.log.warn({ batchId: batch.id, failed, graceMs: this.opts.unplaceableGraceMs }, "items no worker can fit have failed");
      if (batch.isComplete) this.api.finalizeInBackground(batch);
    }
  }

  /** Models registered or served by a live worker: each has queue series, 0 when idle. */
  private servedModels(): Set<string> {
    const out = new Set(this.models.all().map((m) => m.name));
    for (const w of this.fleet.all()) if (w.state !== WorkerState.WORKER_STATE_LOST) for (const m of w.models) out.add(m);
    return out;
  }

  /** Items waiting for a GPU per model and the activation VRAM they need (metrics, ListModels). */
  queueDepthByModel(): Map<string, { items: number; bytes: number }> {
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

  private ensureStarted(): void {
    if (!this.started) throw unavailable("the coordinator is starting");
    if (this.closePromise) throw unavailable("the coordinator is shutting down");
  }


  /** Idempotent. Batches stay durable; a later start resumes them. */
  close(): Promise<void> {
    if (this.closePromise) return this.closePromise;
    this.closePromise = (async () => {
      this.stopping.abort();
      this.tickTimer.stop();
      this.passes.stop();
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
      await this.learnedDurations.flush();
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
