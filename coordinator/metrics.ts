import { readFileSync } from "node:fs";
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import { collectProcessMetrics, type ProcessMetricsHandle } from "../shared/process-metrics.js";
import { BatchState, ItemStatus, WorkerState, type Batch, type ItemResult } from "../proto/gen/shoal/v1/shoal.js";
import { STORAGE_FAILURE_REASONS, type StorageFailureReason } from "../shared/storage-errors.js";
import type { WorkerRecord } from "./fleet.js";
import type { GpuView } from "./vram-ledger.js";

const lower = (s: string, prefix: string) => s.replace(prefix, "").toLowerCase();

/** Outcomes of one attempt, as `shoal_item_attempts_total{outcome}` counts them. */
export type AttemptOutcome = "succeeded" | "failed" | "retried" | "stale_ignored";
export const ATTEMPT_OUTCOMES: readonly AttemptOutcome[] = ["succeeded", "failed", "retried", "stale_ignored"];

export type UnexpectedErrorKind = "rpc" | "unhandled_rejection" | "uncaught_exception";
export const UNEXPECTED_ERROR_KINDS: readonly UnexpectedErrorKind[] = ["rpc", "unhandled_rejection", "uncaught_exception"];

/** The package version for `shoal_build_info`; "unknown" where package.json is not beside dist/. */
export function shoalVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version?: unknown };
    return typeof pkg.version === "string" ? pkg.version : "unknown";
  } catch {
    return "unknown";
  }
}

/**
 * The coordinator's registry (`:9464/metrics`). Labels are bounded sets: model, status, code,
 * state, worker, gpu; never a batch id, item index, prompt or key.
 */
export class CoordinatorMetrics {
  readonly registry = new Registry();
  private readonly batches: Counter;
  private readonly items: Counter;
  private readonly attempts: Counter;
  private readonly queueSeconds: Histogram;
  private readonly runSeconds: Histogram;
  private readonly batchSeconds: Histogram;
  private readonly queueItems: Gauge;
  private readonly queueVram: Gauge;
  private readonly inFlight: Gauge;
  private readonly workers: Gauge;
  private readonly vramTotal: Gauge;
  private readonly vramFree: Gauge;
  private readonly vramReserved: Gauge;
  private readonly workersLost: Counter;
  readonly grpcHandled: Counter;
  readonly grpcSeconds: Histogram;
  private knownModels = new Set<string>();
  /** Last state seen per worker id, to count transitions to LOST (bounded by the fleet). */
  private readonly lastState = new Map<string, WorkerState>();

  private readonly protocolErrors: Counter;
  private readonly fencedMessages: Counter;
  private readonly unexpectedErrors: Counter;
  private readonly terminalWriteFailures: Counter;
  private readonly terminalWritesWaiting: Gauge;
  private readonly submitStorageFailures: Counter;
  private readonly inMemory: Gauge;
  private readonly contentPolicyItems: Counter;
  private readonly contentPolicyRules: Gauge;
  private readonly contentPolicyLoads: Counter;
  private readonly placementSeconds: Histogram;
  private readonly replans: Counter;
  private readonly holds: Counter;
  private readonly hedges: Counter;
  private readonly defragEvictions: Counter;
  private readonly tenantItems: Counter;
  private readonly tenantGpuSeconds: Counter;
  private readonly processMetrics: ProcessMetricsHandle;

  /** `eventLoopResolutionMs`: how often the event-loop delay is sampled (shared/process-metrics.ts). */
  constructor(eventLoopResolutionMs?: number) {
    this.processMetrics = collectProcessMetrics(this.registry, eventLoopResolutionMs);
    // Sampled only while batches run (batchesInMemory below): no event-loop timer when idle.
    this.processMetrics.setBusy(false);
    const registers = [this.registry];
    this.batches = new Counter({ name: "shoal_batches_total", help: "Batches by state: submitted, then their terminal state", labelNames: ["state"], registers });
    this.items = new Counter({ name: "shoal_items_total", help: "Items that reached a terminal state", labelNames: ["model", "status", "code"], registers });
    this.attempts = new Counter({
      name: "shoal_item_attempts_total",
      help: "Attempt outcomes: succeeded, failed (the item's last attempt), retried (placed again), stale_ignored (a late or duplicate result that changed nothing)",
      labelNames: ["outcome"],
      registers,
    });
    this.placementSeconds = new Histogram({
      name: "shoal_placement_seconds",
      help: "Time of one placement decision of the scheduling engine (choosing the GPU of one item)",
      buckets: [0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05],
      registers,
    });
    this.replans = new Counter({ name: "shoal_scheduler_replans_total", help: "Times the affinity planner split the fleet between models again", registers });
    this.holds = new Counter({
      name: "shoal_scheduler_holds_total",
      help: "Times a pass left an item queued for a faster GPU predicted to finish it sooner than a free one (earliest-finish holds, once per item per pass)",
      registers,
    });
    this.hedges = new Counter({
      name: "shoal_item_hedges_total",
      help: "Hedged items (a second copy of a straggler on an idle GPU) by how the pair ended: won (the copy ended the item), lost (the original did; the copy was cancelled), cancelled (one copy failed or was taken back, or the batch was cancelled)",
      labelNames: ["model", "outcome"],
      registers,
    });
    this.defragEvictions = new Counter({
      name: "shoal_defrag_evictions_total",
      help: "Models defragmentation asked a worker to evict, by result (evicted, refused, failed: no answer)",
      labelNames: ["result"],
      registers,
    });
    const latency = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600];
    this.queueSeconds = new Histogram({ name: "shoal_item_queue_seconds", help: "Time from submission until the attempt that finished the item was assigned", labelNames: ["model"], buckets: latency, registers });
    this.runSeconds = new Histogram({ name: "shoal_item_run_seconds", help: "Time a worker spent on the item's last attempt", labelNames: ["model"], buckets: latency, registers });
    this.batchSeconds = new Histogram({ name: "shoal_batch_duration_seconds", help: "Time from submission to the terminal batch", buckets: [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600], registers });
    this.queueItems = new Gauge({ name: "shoal_queue_items", help: "Items waiting for a GPU", labelNames: ["model"], registers });
    this.queueVram = new Gauge({ name: "shoal_queue_vram_bytes", help: "VRAM the waiting items need (activations), for autoscaling", labelNames: ["model"], registers });
    this.inFlight = new Gauge({ name: "shoal_items_in_flight", help: "Items assigned to workers and not finished", registers });
    this.workers = new Gauge({ name: "shoal_workers", help: "Workers by state", labelNames: ["state"], registers });
    this.vramTotal = new Gauge({ name: "shoal_worker_vram_total_bytes", help: "VRAM per GPU as reported by its worker", labelNames: ["worker", "gpu"], registers });
    this.vramFree = new Gauge({ name: "shoal_worker_vram_free_bytes", help: "Free VRAM per GPU as last reported", labelNames: ["worker", "gpu"], registers });
    this.vramReserved = new Gauge({ name: "shoal_worker_vram_reserved_bytes", help: "VRAM the coordinator reserved on the GPU and the worker has not counted yet", labelNames: ["worker", "gpu"], registers });
    this.workersLost = new Counter({ name: "shoal_workers_lost_total", help: "Times a worker went LOST (no heartbeat within the timeout)", registers });
    new Gauge({ name: "shoal_build_info", help: "Always 1; labels tell the role and version of the process", labelNames: ["role", "version"], registers }).set(
      { role: "coordinator", version: shoalVersion() },
      1,
    );
    this.grpcHandled = new Counter({ name: "grpc_server_handled_total", help: "RPCs completed", labelNames: ["grpc_service", "grpc_method", "grpc_code"], registers });
    this.protocolErrors = new Counter({ name: "shoal_protocol_errors_total", help: "Messages from workers dropped because they broke the protocol (kind: heartbeat, outcome)", labelNames: ["kind"], registers });
    this.fencedMessages = new Counter({
      name: "shoal_fenced_messages_total",
      help: "Worker messages refused because they claim an attempt their sender was not given (kind: outcome, revocation, adoption; reason: forged_token, wrong_worker)",
      labelNames: ["kind", "reason"],
      registers,
    });
    this.unexpectedErrors = new Counter({
      name: "shoal_unexpected_errors_total",
      help: "Errors no code path expected (kind: rpc, unhandled_rejection, uncaught_exception); the process logged each and kept serving",
      labelNames: ["kind"],
      registers,
    });
    for (const kind of UNEXPECTED_ERROR_KINDS) this.unexpectedErrors.inc({ kind }, 0);
    this.grpcSeconds = new Histogram({ name: "grpc_server_handling_seconds", help: "RPC handling time", labelNames: ["grpc_service", "grpc_method"], buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 300], registers });
    this.terminalWriteFailures = new Counter({
      name: "shoal_terminal_write_failures_total",
      help: "Failed attempts to store a terminal batch (reason: storage_full, record_too_large, unavailable); each is retried with backoff",
      labelNames: ["reason"],
      registers,
    });
    this.terminalWritesWaiting = new Gauge({
      name: "shoal_terminal_writes_waiting",
      help: "Batches whose items are all done but whose terminal write failed and is being retried",
      registers,
    });
    this.submitStorageFailures = new Counter({
      name: "shoal_submit_storage_failures_total",
      help: "Batches refused because they could not be stored (reason: storage_full, record_too_large, unavailable)",
      labelNames: ["reason"],
      registers,
    });
    this.inMemory = new Gauge({
      name: "shoal_batches_in_memory",
      help: "Batches the coordinator holds in memory: running, or waiting for their terminal write. Finished batches live only in JetStream",
      registers,
    });
    // Series that exist from the start, so rate() and increase() count their first events.
    // Content policy (docs/content-policy.md). Labels carry no rule or reason: the model, and
    // which stage refused the item (the coordinator's rules, or a worker's classifier).
    this.contentPolicyItems = new Counter({
      name: "shoal_content_policy_items_total",
      help: "Items that ended FAILED with CONTENT_POLICY, by model and stage (rules: --content-policy at submit; classifier: a worker's prompt-policy model)",
      labelNames: ["model", "stage"],
      registers,
    });
    // Usage (coordinator/usage.ts): counted once per batch, when its outcome is recorded. The
    // tenant label is a configured tenant's name or "other", so it stays bounded.
    this.tenantItems = new Counter({
      name: "shoal_tenant_items_total",
      help: "Items of terminal batches by tenant and status (succeeded, failed, content_policy, cancelled); only succeeded is charged",
      labelNames: ["tenant", "status"],
      registers,
    });
    this.tenantGpuSeconds = new Counter({ name: "shoal_tenant_gpu_seconds_total", help: "Sum of items' run times of terminal batches, by tenant", labelNames: ["tenant"], registers });
    this.contentPolicyRules = new Gauge({ name: "shoal_content_policy_rules", help: "Rules of the --content-policy file in force", registers });
    this.contentPolicyLoads = new Counter({
      name: "shoal_content_policy_loads_total",
      help: "Loads of the --content-policy file (start and SIGHUP) by outcome: loaded, or refused (the previous policy stays in force)",
      labelNames: ["outcome"],
      registers,
    });
    for (const outcome of ["loaded", "refused"]) this.contentPolicyLoads.inc({ outcome }, 0);
    this.contentPolicyRules.set(0);
    for (const reason of STORAGE_FAILURE_REASONS) {
      this.terminalWriteFailures.inc({ reason }, 0);
      this.submitStorageFailures.inc({ reason }, 0);
    }
    this.terminalWritesWaiting.set(0);
    this.inMemory.set(0);
    for (const state of ["submitted", "completed", "failed", "cancelled"]) this.batches.inc({ state }, 0);
    for (const outcome of ATTEMPT_OUTCOMES) this.attempts.inc({ outcome }, 0);
    for (const state of ["ready", "draining", "lost"]) this.workers.set({ state }, 0);
    this.inFlight.set(0);
  }

  batchSubmitted(): void {
    this.batches.inc({ state: "submitted" });
  }

  batchFinished(b: Batch): void {
    this.batches.inc({ state: lower(BatchState[b.state], "BATCH_STATE_") });
    if (b.createdAt && b.completedAt) this.batchSeconds.observe((b.completedAt.getTime() - b.createdAt.getTime()) / 1000);
  }

  /** One batch's usage, counted once (usage.ts); `tenant` is already bounded to configured tenants or "other". */
  tenantUsage(tenant: string, u: { succeeded: number; failed: number; contentPolicy: number; cancelled: number; gpuSeconds: number }): void {
    this.tenantItems.inc({ tenant, status: "succeeded" }, u.succeeded);
    this.tenantItems.inc({ tenant, status: "failed" }, u.failed);
    this.tenantItems.inc({ tenant, status: "content_policy" }, u.contentPolicy);
    this.tenantItems.inc({ tenant, status: "cancelled" }, u.cancelled);
    this.tenantGpuSeconds.inc({ tenant }, u.gpuSeconds);
  }

  itemFinished(r: ItemResult): void {
    const status = lower(ItemStatus[r.status], "ITEM_STATUS_");
    this.items.inc({ model: r.model, status, code: r.error?.code ?? "" });
    if (r.error?.code === "CONTENT_POLICY") this.contentPolicyItems.inc({ model: r.model, stage: r.workerId === "" ? "rules" : "classifier" });
    // Latency of items that ran; one that never reached a worker (cancelled while queued, or
    // failed as unplaceable) has no queue-to-start or run time to record.
    if (r.status !== ItemStatus.ITEM_STATUS_CANCELLED && r.workerId !== "") {
      this.queueSeconds.observe({ model: r.model }, r.queueMs / 1000);
      this.runSeconds.observe({ model: r.model }, r.runMs / 1000);
    }
  }

  terminalWriteFailed(reason: StorageFailureReason): void {
    this.terminalWriteFailures.inc({ reason });
  }

  terminalWriteWaiting(delta: 1 | -1): void {
    this.terminalWritesWaiting.inc(delta);
  }

  submitStorageFailed(reason: StorageFailureReason): void {
    this.submitStorageFailures.inc({ reason });
  }

  contentPolicyLoaded(rules: number, outcome: "loaded" | "refused"): void {
    this.contentPolicyRules.set(rules);
    this.contentPolicyLoads.inc({ outcome });
  }

  /** One placement decision took `seconds` (shoal_placement_seconds). */
  placement(seconds: number): void {
    this.placementSeconds.observe(seconds);
  }

  /** A hedged item's pair of attempts ended (see HedgeEnd in batch-state.ts). */
  hedgeEnded(model: string, outcome: "won" | "lost" | "cancelled"): void {
    this.hedges.inc({ model, outcome });
  }

  defragEviction(result: "evicted" | "refused" | "failed", n = 1): void {
    this.defragEvictions.inc({ result }, n);
  }

  replanned(): void {
    this.replans.inc();
  }

  held(n: number): void {
    if (n > 0) this.holds.inc(n);
  }

  batchesInMemory(n: number): void {
    this.inMemory.set(n);
    this.processMetrics.setBusy(n > 0);
  }

  fenced(kind: string, reason: string): void {
    this.fencedMessages.inc({ kind, reason });
  }

  protocolError(kind: string): void {
    this.protocolErrors.inc({ kind });
  }

  unexpectedError(kind: UnexpectedErrorKind): void {
    this.unexpectedErrors.inc({ kind });
  }

  attempt(outcome: AttemptOutcome): void {
    this.attempts.inc({ outcome });
  }

  /**
   * Queue depth per model. Every model that is served (or was ever queued) gets a series, 0 when
   * nothing waits: an autoscaler or alert must read 0, not an absent series.
   */
  queue(byModel: Map<string, { items: number; bytes: number }>, served: Iterable<string> = []): void {
    for (const m of served) if (!this.knownModels.has(m)) this.firstSeen(m);
    for (const m of this.knownModels) if (!byModel.has(m)) byModel.set(m, { items: 0, bytes: 0 });
    for (const [model, { items, bytes }] of byModel) {
      if (!this.knownModels.has(model)) this.firstSeen(model);
      this.queueItems.set({ model }, items);
      this.queueVram.set({ model }, bytes);
    }
  }

  /** A model's first items: its series start at zero so the first completions are counted by rate(). */
  private firstSeen(model: string): void {
    this.knownModels.add(model);
    this.items.inc({ model, status: "succeeded", code: "" }, 0);
    this.queueSeconds.zero({ model });
    this.runSeconds.zero({ model });
  }

  /** `openOn` is how many attempts this coordinator has open on a worker (see attempts.ts). */
  observeWorkers(workers: readonly WorkerRecord[], gpus: readonly GpuView[], openOn: (workerId: string) => number): void {
    const counts: Record<string, number> = { ready: 0, draining: 0, lost: 0 };
    let inFlight = 0;
    const seen = new Set<string>();
    for (const w of workers) {
      const state = lower(WorkerState[w.state] ?? "unspecified", "WORKER_STATE_");
      counts[state] = (counts[state] ?? 0) + 1;
      inFlight += openOn(w.id);
      seen.add(w.id);
      const before = this.lastState.get(w.id);
      if (w.state === WorkerState.WORKER_STATE_LOST && before !== undefined && before !== WorkerState.WORKER_STATE_LOST) this.workersLost.inc();
      this.lastState.set(w.id, w.state);
    }
    for (const id of this.lastState.keys()) if (!seen.has(id)) this.lastState.delete(id);
    for (const [state, n] of Object.entries(counts)) this.workers.set({ state }, n);
    this.inFlight.set(inFlight);
    this.vramTotal.reset();
    this.vramFree.reset();
    this.vramReserved.reset();
    for (const g of gpus) {
      const labels = { worker: g.workerId, gpu: String(g.index) };
      this.vramTotal.set(labels, g.totalBytes);
      this.vramFree.set(labels, g.freeBytes);
      this.vramReserved.set(labels, g.reservedBytes);
    }
  }
}
