import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import { ItemStatus, itemStatusToJSON } from "../proto/gen/shoal/v1/shoal.js";
import type { GpuDevice } from "./gpu/vram-source.js";

/** The worker's own registry (`:9465/metrics`). Labels stay bounded: worker, gpu, model. */
export class WorkerMetrics {
  readonly registry = new Registry();
  private readonly total: Gauge;
  private readonly free: Gauge;
  private readonly busy: Counter;
  private readonly items: Counter;
  private readonly run: Histogram;
  private readonly inFlightGauge: Gauge;

  constructor(private readonly workerId: string) {
    this.registry.setDefaultLabels({});
    collectDefaultMetrics({ register: this.registry });
    const r = [this.registry];
    this.total = new Gauge({ name: "shoal_worker_vram_total_bytes", help: "VRAM of each GPU", labelNames: ["worker", "gpu"], registers: r });
    this.free = new Gauge({ name: "shoal_worker_vram_free_bytes", help: "Free VRAM of each GPU as last measured or accounted", labelNames: ["worker", "gpu"], registers: r });
    this.busy = new Counter({ name: "shoal_worker_busy_seconds_total", help: "Seconds spent running items, per GPU", labelNames: ["worker", "gpu"], registers: r });
    this.items = new Counter({ name: "shoal_worker_items_total", help: "Items finished on this worker", labelNames: ["worker", "model", "status"], registers: r });
    this.run = new Histogram({
      name: "shoal_worker_item_run_seconds",
      help: "Time to compute one item on this worker",
      labelNames: ["worker", "model"],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers: r,
    });
    this.inFlightGauge = new Gauge({ name: "shoal_worker_items_in_flight", help: "Items held by this worker", labelNames: ["worker"], registers: r });
  }

  setDevices(devices: GpuDevice[]): void {
    for (const d of devices) this.total.set({ worker: this.workerId, gpu: String(d.index) }, d.totalBytes);
  }

  vram(gpus: { index: number; vramFreeBytes: number }[]): void {
    for (const g of gpus) this.free.set({ worker: this.workerId, gpu: String(g.index) }, g.vramFreeBytes);
  }

  itemDone(model: string, status: ItemStatus, runSeconds: number, gpu = 0): void {
    const s = itemStatusToJSON(status).replace("ITEM_STATUS_", "").toLowerCase();
    this.items.inc({ worker: this.workerId, model, status: s });
    this.run.observe({ worker: this.workerId, model }, runSeconds);
    this.busy.inc({ worker: this.workerId, gpu: String(gpu) }, runSeconds);
  }

  inFlight(n: number): void {
    this.inFlightGauge.set({ worker: this.workerId }, n);
  }
}
