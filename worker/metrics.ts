import { readFileSync } from "node:fs";
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import { collectProcessMetrics, type ProcessMetricsHandle } from "../shared/process-metrics.js";
import { ItemStatus, itemStatusToJSON } from "../proto/gen/shoal/v1/shoal.js";
import type { GpuDevice } from "./gpu/vram-source.js";

function shoalVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version?: unknown };
    return typeof pkg.version === "string" ? pkg.version : "unknown";
  } catch {
    return "unknown";
  }
}

export const PROTOCOL_ERROR_KINDS = ["assign", "cancel", "drain", "evict"] as const;
export type ProtocolErrorKind = (typeof PROTOCOL_ERROR_KINDS)[number];

interface BusyClock {
  /** Items started on the GPU and not finished. */
  running: number;
  /** The clock's time (ms) up to which busy time has been counted. */
  countedUntil: number;
}

/**
 * The worker's own registry (`:9465/metrics`). Labels stay bounded: worker, gpu, model, status.
 *
 * Busy time is wall-clock time during which a GPU holds at least one started item (not the sum
 * of item run times, which exceeds the wall clock when items overlap), brought up to date at
 * every scrape, so `rate(shoal_worker_busy_seconds_total[5m])` is the fraction of time the GPU
 * was busy, between 0 and 1, even while one long item runs.
 */
export class WorkerMetrics {
  readonly registry = new Registry();
  private readonly total: Gauge;
  private readonly free: Gauge;
  private readonly busy: Counter;
  private readonly items: Counter;
  private readonly run: Histogram;
  private readonly peakVram: Histogram;
  private readonly inFlightGauge: Gauge;
  private readonly loads: Counter;
  private readonly loadSeconds: Histogram;
  private readonly residentGauge: Gauge;
  private readonly protocolErrors: Counter;
  private readonly unexpectedErrors: Counter;
  private readonly promptPolicyItems: Counter;
  private readonly evictions: Counter;
  private readonly busyClocks = new Map<string, BusyClock>();
  private readonly processMetrics: ProcessMetricsHandle;
  private residentNow = new Set<string>();
  /** Loads already counted by modelLoaded() that resident() has not seen appear yet. */
  private readonly timedLoads = new Set<string>();

  /** `nowMs` is the clock of busy time (tests inject one). */
  constructor(
    private readonly workerId: string,
    private readonly nowMs: () => number = () => performance.now(),
    /** How often the event-loop delay is sampled (shared/process-metrics.ts). */
    eventLoopResolutionMs?: number,
  ) {
    this.processMetrics = collectProcessMetrics(this.registry, eventLoopResolutionMs);
    // Sampled only while items are held (inFlight below): no event-loop timer on an idle worker.
    this.processMetrics.setBusy(false);
    const r = [this.registry];
    this.total = new Gauge({ name: "shoal_worker_vram_total_bytes", help: "VRAM of each GPU", labelNames: ["worker", "gpu"], registers: r });
    this.free = new Gauge({ name: "shoal_worker_vram_free_bytes", help: "Free VRAM of each GPU as last measured or accounted", labelNames: ["worker", "gpu"], registers: r });
    this.unexpectedErrors = new Counter({
      name: "shoal_unexpected_errors_total",
      help: "Errors no code path expected (kind: unhandled_rejection, uncaught_exception); the process logged each and kept serving",
      labelNames: ["kind"],
      registers: r,
    });
    for (const kind of ["unhandled_rejection", "uncaught_exception"]) this.unexpectedErrors.inc({ kind }, 0);
    this.busy = new Counter({
      name: "shoal_worker_busy_seconds_total",
      help: "Wall-clock seconds during which the GPU held at least one started item",
      labelNames: ["worker", "gpu"],
      registers: r,
      collect: () => this.accrueAll(),
    });
    this.items = new Counter({ name: "shoal_worker_items_total", help: "Items finished on this worker", labelNames: ["worker", "model", "status"], registers: r });
    this.peakVram = new Histogram({
      name: "shoal_worker_item_peak_vram_bytes",
      help: "VRAM an item took on the GPU (peak during it above what was in use when it started; measured with nvidia-smi, CUDA provider only)",
      labelNames: ["worker", "model"],
      buckets: [16, 64, 256, 1024, 4096, 16384, 65536].map((mib) => mib * 1024 * 1024),
      registers: r,
    });
    this.run = new Histogram({
      name: "shoal_worker_item_run_seconds",
      help: "Time to compute one item on this worker",
      labelNames: ["worker", "model"],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers: r,
    });
    this.inFlightGauge = new Gauge({ name: "shoal_worker_items_in_flight", help: "Items held by this worker", labelNames: ["worker"], registers: r });
    this.loads = new Counter({
      name: "shoal_worker_model_loads_total",
      help: "Model loads (sessions created) on this worker, timed or seen as a model becoming resident",
      labelNames: ["worker", "model"],
      registers: r,
    });
    this.loadSeconds = new Histogram({
      name: "shoal_worker_model_load_seconds",
      help: "Time to load a model, where the inference backend reports it",
      labelNames: ["worker", "model"],
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
      registers: r,
    });
    this.residentGauge = new Gauge({
      name: "shoal_worker_resident_models",
      help: "1 while the model is loaded on this worker, 0 after it was released",
      labelNames: ["worker", "model"],
      registers: r,
    });
    new Gauge({ name: "shoal_build_info", help: "Always 1; labels tell the role and version of the process", labelNames: ["role", "version"], registers: r }).set(
      { role: "worker", version: shoalVersion() },
      1,
    );
    this.protocolErrors = new Counter({
      name: "shoal_protocol_errors_total",
      help: "Requests from NATS refused because they broke the protocol (kind: assign, cancel, drain, evict)",
      labelNames: ["worker", "kind"],
      registers: r,
    });
    for (const kind of PROTOCOL_ERROR_KINDS) this.protocolErrors.inc({ worker: this.workerId, kind }, 0);
    this.promptPolicyItems = new Counter({
      name: "shoal_worker_prompt_policy_items_total",
      help: "Items a prompt-policy classifier screened before their model ran, by model and verdict (blocked items never ran their model)",
      labelNames: ["worker", "model", "verdict"],
      registers: r,
    });
    this.evictions = new Counter({
      name: "shoal_worker_evictions_total",
      help: "Models whose idle weights this worker dropped at the coordinator's request, by model and reason (defrag)",
      labelNames: ["worker", "model", "reason"],
      registers: r,
    });
    this.inFlightGauge.set({ worker: this.workerId }, 0);
  }

  /** A model's idle weights were evicted (`model` is a served model's name: bounded). */
  evicted(model: string, reason: string): void {
    this.evictions.inc({ worker: this.workerId, model, reason });
  }

  unexpectedError(kind: "unhandled_rejection" | "uncaught_exception"): void {
    this.unexpectedErrors.inc({ kind });
  }

  /** A request on one of the worker's subjects was refused as malformed. */
  protocolError(kind: ProtocolErrorKind): void {
    this.protocolErrors.inc({ worker: this.workerId, kind });
  }

  setDevices(devices: GpuDevice[]): void {
    for (const d of devices) {
      const labels = { worker: this.workerId, gpu: String(d.index) };
      this.total.set(labels, d.totalBytes);
      this.busy.inc(labels, 0); // present from the start, so rate() sees the first busy second
    }
  }

  vram(gpus: { index: number; vramFreeBytes: number }[]): void {
    for (const g of gpus) this.free.set({ worker: this.workerId, gpu: String(g.index) }, g.vramFreeBytes);
  }

  /** An item starts on a GPU: the GPU counts as busy until the matching itemDone(). */
  itemStarted(gpu = 0): void {
    const key = String(gpu);
    const now = this.nowMs();
    const clock = this.busyClocks.get(key);
    if (!clock) {
      this.busyClocks.set(key, { running: 1, countedUntil: now });
      return;
    }
    this.accrue(key, clock, now);
    if (clock.running === 0) clock.countedUntil = now;
    clock.running++;
  }

  /** A measured peak (bytes) of one item. */
  itemPeakVram(model: string, bytes: number): void {
    this.peakVram.observe({ worker: this.workerId, model }, bytes);
  }

  /**
   * An item ended (any status). With a matching itemStarted() the GPU's busy clock stops when its
   * last item ends; without one, the item's run time is added as busy time. `started` false: the
   * item ended before its model ran (bad params, a classifier that failed), so no GPU time counts.
   */
  itemDone(model: string, status: ItemStatus, runSeconds: number, gpu = 0, started?: boolean): void {
    const s = itemStatusToJSON(status).replace("ITEM_STATUS_", "").toLowerCase();
    this.items.inc({ worker: this.workerId, model, status: s });
    this.run.observe({ worker: this.workerId, model }, runSeconds);
    if (started === false) return;
    const key = String(gpu);
    const clock = this.busyClocks.get(key);
    if (clock && clock.running > 0) {
      this.accrue(key, clock, this.nowMs());
      clock.running--;
    } else {
      this.busy.inc({ worker: this.workerId, gpu: key }, runSeconds);
    }
  }

  /** A prompt-policy classifier screened an item of `model` (worker/prompt-policy.ts). */
  promptPolicy(model: string, verdict: "blocked" | "allowed"): void {
    this.promptPolicyItems.inc({ worker: this.workerId, model, verdict });
  }

  inFlight(n: number): void {
    this.inFlightGauge.set({ worker: this.workerId }, n);
    this.processMetrics.setBusy(n > 0);
  }

  /** A backend that times its loads reports each one here. */
  modelLoaded(model: string, seconds: number): void {
    this.loads.inc({ worker: this.workerId, model });
    this.loadSeconds.observe({ worker: this.workerId, model }, seconds);
    if (!this.residentNow.has(model)) this.timedLoads.add(model);
  }

  /**
   * The models loaded now (from each heartbeat). A model that appears here without a timed
   * modelLoaded() is counted as a load too, so the count is right for every backend; loads and
   * evictions that both happen between two calls are not seen.
   */
  resident(models: readonly string[]): void {
    const now = new Set(models);
    for (const m of now) {
      if (this.residentNow.has(m)) continue;
      if (!this.timedLoads.delete(m)) this.loads.inc({ worker: this.workerId, model: m });
    }
    for (const m of this.residentNow) if (!now.has(m)) this.residentGauge.set({ worker: this.workerId, model: m }, 0);
    for (const m of now) this.residentGauge.set({ worker: this.workerId, model: m }, 1);
    this.residentNow = now;
  }

  private accrueAll(): void {
    const now = this.nowMs();
    for (const [key, clock] of this.busyClocks) this.accrue(key, clock, now);
  }

  private accrue(key: string, clock: BusyClock, now: number): void {
    if (clock.running > 0 && now > clock.countedUntil) this.busy.inc({ worker: this.workerId, gpu: key }, (now - clock.countedUntil) / 1000);
    clock.countedUntil = now;
  }
}
