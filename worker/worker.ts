import { createHash } from "node:crypto";
import { hostname } from "node:os";
import { jetstream, type JetStreamClient } from "@nats-io/jetstream";
import type { Msg, NatsConnection, Subscription } from "@nats-io/transport-node";
import { ItemStatus, WorkerState, type Artifact } from "../proto/gen/shoal/v1/shoal.js";
import {
  AssignReply,
  Assignment,
  CancelItems,
  EvictReply,
  EvictRequest,
  Heartbeat,
  ModelRegistration,
  type AssignedItem,
  type ItemOutcome,
  type LeaseRef,
  type ResidentWeights,
} from "../proto/gen/shoal/v1/wire.js";
import { decodeMessage, encodeMessage } from "../shared/codec.js";
import { errorMessage, ProtocolError } from "../shared/errors.js";
import { BATCH_ID, MAX_LEASE_TOKEN_LENGTH, randomToken } from "../shared/ids.js";
import type { Logger } from "../shared/logger.js";
import { validateParams, type ModelManifest } from "../shared/manifest.js";
import { connectNats } from "../shared/nats.js";
import { decodeParamsJson } from "../shared/params-wire.js";
import { storageError } from "../shared/storage-errors.js";
import { ARTIFACT_URI_PREFIX, Names } from "../shared/subjects.js";
import { MAX_REPORTED_VRAM_BYTES, fits as fitsVram, itemNeed, type VramNeed } from "../shared/vram-need.js";
import { detectVramSource, type GpuDevice, type VramSource } from "./gpu/vram-source.js";
import { nvidiaSmiSampler, PeakVramSampler } from "./gpu/vram-peak.js";
import { cudaDevice } from "./inference/cuda-provider.js";
import { CancelToken, InferenceError, type InferenceBackend } from "./inference/backend.js";
import { JetStreamPublisher } from "../shared/jetstream-publisher.js";
import { defaultMaxInFlight, type WorkerOptions } from "./options.js";
import { InFlightLimit } from "./in-flight-limit.js";
import { PromptPolicy } from "./prompt-policy.js";
import { ResultPublisher } from "./result-publisher.js";
import { writeArtifact } from "./artifact-writer.js";
import type { ProtocolErrorKind, WorkerMetrics } from "./metrics.js";
import { itemTracesFrom } from "../shared/trace-headers.js";
import { contextFromTrace, endSpan, inChildSpan, SpanKind, startSpan, traceContextOf, traceparentOf, tracingOn, type Span, type TraceContext } from "../shared/tracing.js";
import { DeadlineTimer } from "../shared/deadline-timer.js";

export type WorkerLifecycle = "INITIALIZED" | "RUNNING" | "DRAINING" | "STOPPING" | "STOPPED";

interface HeldItem {
  lease: LeaseRef;
  attempt: number;
  /** performance.now() after which the attempt is aborted with TIMEOUT. */
  deadline: number;
  timedOut: boolean;
  model: ModelManifest;
  gpuIndex: number;
  activation: number;
  controller: CancelToken;
  started: boolean;
  /**
   * The run is over, so its memory is free, while its outcome is still being stored. This
   * worker's own admission check counts no VRAM for it from then: the coordinator frees its
   * reservation when the outcome reaches it, which can be before this process has its PubAck,
   * and the item it places in that room must not be refused. The figures reported to the
   * coordinator still count it until it is let go, as the coordinator's reservation does: a
   * figure without it would be counted free twice there, once reported and once released.
   */
  ran: boolean;
  /** Items one run could hold with it (the backend's batchCapacity; 1 alone): the default max-in-flight follows it. */
  batchCapacity: number;
  /** `shoal.item`, the attempt on this worker, under the coordinator's placement span (tracing on only). */
  span?: Span;
}

/**
 * One worker process: registers with the fleet through heartbeats, takes assignments from the
 * coordinator, runs them on its InferenceBackend and publishes outcomes durably.
 */
export class ShoalWorker {
  private state: WorkerLifecycle = "INITIALIZED";
  private nc: NatsConnection | undefined;
  /** Publishes only: a worker identity may write its outcomes, artifacts and models, and read nothing stored. */
  private js: JetStreamClient | undefined;
  private publisher: ResultPublisher | undefined;
  private jsPublisher: JetStreamPublisher | undefined;
  private vram: VramSource | undefined;
  private devices: GpuDevice[] = [];
  private measuredFree: Map<number, number> | undefined;
  /** Measures each item's peak VRAM; only where items run on a GPU nvidia-smi measures (CUDA). */
  private peak: PeakVramSampler | undefined;
  private readonly held = new Map<string, HeldItem>();
  private readonly subs: Subscription[] = [];
  private heartbeatTimer: NodeJS.Timeout | undefined;
  /** Armed for the earliest deadline of a held item, only while items are held (shared/deadline-timer.ts). */
  private readonly timeouts = new DeadlineTimer((now) => this.sweepTimeouts(now));
  private heartbeatSeq = 0;
  private itemsDone = 0;
  /** What heartbeats offer: --max-in-flight, or its default once the models are known (start()). */
  private maxInFlight: number;
  /** The default --max-in-flight following the held items' batch sizes; undefined when fixed. */
  private inFlightLimit: InFlightLimit | undefined;
  /** An item taken in this assignment can batch more than the reported limit allows: report now. */
  private limitRaised = false;
  private readonly incarnation = randomToken(8);
  private readonly names: Names;
  private manifests = new Map<string, ModelManifest>();
  /** Classifiers from the model directory that screen items before their model runs. */
  private promptPolicy: PromptPolicy | undefined;
  private closePromise: Promise<void> | undefined;
  private drainPromise: Promise<void> | undefined;
  private idleWaiters: (() => void)[] = [];
  /** Resolves when the worker has stopped (drained by the coordinator, or closed). */
  readonly stopped: Promise<void>;
  private resolveStopped!: () => void;

  constructor(
    private readonly opts: WorkerOptions,
    private readonly backend: InferenceBackend,
    private readonly log: Logger,
    private readonly metrics?: WorkerMetrics,
  ) {
    this.names = new Names(opts.prefix);
    this.maxInFlight = opts.maxInFlight;
    this.stopped = new Promise((r) => (this.resolveStopped = r));
  }

  get id(): string {
    return this.opts.id;
  }

  async start(): Promise<void> {
    if (this.state !== "INITIALIZED") throw new Error(`worker cannot start from ${this.state}`);
    const speed = this.opts.simulate && this.opts.simSpeed !== undefined && this.opts.simSpeed !== 1 ? `, speed ×${this.opts.simSpeed}` : "";
    this.vram = await detectVramSource(this.opts.gpu, this.opts.vramBytes, this.opts.nvidiaSmi, speed);
    this.devices = this.vram.devices();
    if (this.devices.some((d) => d.source === "nvidia-smi") && this.opts.executionProviders.some((p) => cudaDevice(p) !== undefined)) {
      const sample = nvidiaSmiSampler(this.opts.nvidiaSmi, process.pid, this.devices.map((d) => d.index));
      this.peak = new PeakVramSampler(sample, 200, (err) => this.log.debug({ err: errorMessage(err) }, "cannot sample VRAM for item peaks"));
    }
    await this.backend.start();
    for (const m of this.backend.models()) this.manifests.set(m.name, m);
    if (this.opts.maxInFlightAuto === true) {
      this.maxInFlight = defaultMaxInFlight(this.opts.threads, [...this.manifests.values()].map((m) => m.max_batch), this.opts.simulate);
      this.log.info({ maxInFlight: this.maxInFlight }, "max in flight (default for the served models)");
      // The default then follows what the held items can batch (in-flight-limit.ts); a backend
      // that does not batch, and a simulated worker, keep the fixed default.
      if (this.backend.batchCapacity !== undefined && !this.opts.simulate) this.inFlightLimit = new InFlightLimit(this.opts.threads, this.maxInFlight);
    }
    this.promptPolicy = new PromptPolicy(this.backend.models(), this.backend, this.log.child({ component: "prompt-policy" }));
    // Replies come to the worker's own inbox prefix, so NATS permissions can give each worker
    // identity its own replies and no one else's (docs/security.md).
    this.nc = await connectNats(this.opts.natsUrl, `shoal-worker-${this.opts.id}`, this.log, { security: this.opts.natsSecurity, inboxPrefix: workerInboxPrefix(this.opts.id) });
    // The coordinator creates the streams and buckets; a worker only publishes into them (its
    // NATS identity may do no more, see docs/security.md).
    this.js = jetstream(this.nc);
    // Artifact chunks and infos, and results messages: acks gathered on one subscription
    // (shared/jetstream-publisher.ts), no nats.js request per write.
    this.jsPublisher = new JetStreamPublisher(this.nc, workerInboxPrefix(this.opts.id));
    this.jsPublisher.start();
    this.publisher = new ResultPublisher(
      this.jsPublisher,
      this.names,
      { workerId: this.opts.id, maxOutcomesPerMessage: 256 },
      this.log,
    );
    await this.registerModels();
    this.subs.push(
      this.nc.subscribe(this.names.assign(this.opts.id), { callback: (err, msg) => void (err || this.onAssign(msg)) }),
      this.nc.subscribe(this.names.cancel(this.opts.id), { callback: (err, msg) => void (err || this.onCancel(msg)) }),
      this.nc.subscribe(this.names.drain(this.opts.id), { callback: (err, msg) => void (err || this.onDrain(msg)) }),
      this.nc.subscribe(this.names.evict(this.opts.id), { callback: (err, msg) => void (err || this.onEvict(msg)) }),
      this.nc.subscribe(this.names.coordinatorHello, { callback: () => void this.heartbeat() }),
    );
    this.state = "RUNNING";
    this.metrics?.setDevices(this.devices);
    this.log.info(
      { gpus: this.devices.map((d) => ({ index: d.index, name: d.name, totalBytes: d.totalBytes, source: d.source })), models: [...this.manifests.keys()] },
      "worker ready",
    );
    await this.heartbeat();
    this.heartbeatTimer = setInterval(() => void this.heartbeat(), this.opts.heartbeatIntervalMs);
    this.heartbeatTimer.unref();
  }

  /** Models that are not built in are published so the coordinator can validate their items. */
  private async registerModels(): Promise<void> {
    for (const m of this.manifests.values()) {
      if (m.builtin) continue;
      const value = encodeMessage(ModelRegistration, { manifestJson: JSON.stringify(m), servedBy: [this.opts.id] });
      // A KV put is a JetStream publish on `$KV.<bucket>.<key>`. Until the coordinator has made
      // the bucket there is no stream to answer: wait for it.
      for (let waitMs = 250; ; waitMs = Math.min(waitMs * 2, 5000)) {
        try {
          await this.js!.publish(`$KV.${this.names.modelsBucket}.${m.name}`, value, { timeout: 5000 });
          break;
        } catch (err) {
          if (this.closePromise) throw err;
          this.log.warn({ model: m.name, err: errorMessage(err), retryInMs: waitMs }, "model not registered yet (is the coordinator up?); retrying");
          await new Promise((r) => setTimeout(r, waitMs));
        }
      }
    }
  }

  private onAssign(msg: Msg): void {
    let reply: Partial<AssignReply>;
    try {
      const assignment = decodeMessage(Assignment, msg.subject, msg.data);
      const accepted: string[] = [];
      let refused = 0;
      let badLeases = 0;
      let firstBadLease: string | undefined;
      if (this.state === "RUNNING") {
        const room = this.room();
        const traces = tracingOn() ? itemTracesFrom(msg.headers) : undefined;
        for (const item of assignment.items) {
          const problem = leaseProblem(item.lease);
          if (problem) {
            badLeases++;
            firstBadLease ??= problem;
          } else if (this.held.has(item.lease!.token)) accepted.push(item.lease!.token); // re-sent: already ours
          else {
            const params = paramsOf(item);
            if (this.fits(item, params.params, room) && this.accept(item, params, traces?.get(item.lease!.token))) accepted.push(item.lease!.token);
            else refused++;
          }
        }
      }
      if (badLeases > 0) this.protocolError("assign", msg.subject, `${badLeases} item(s) with a bad lease; the first: ${firstBadLease}`);
      const errors: string[] = [];
      if (this.state !== "RUNNING") errors.push(`worker is ${this.state.toLowerCase()}`);
      if (badLeases > 0) errors.push(`${badLeases} item(s) refused for a bad lease (${firstBadLease})`);
      if (refused > 0) errors.push(`${refused} item(s) do not fit the VRAM left here`);
      reply = { accepted, error: errors.join("; "), gpus: this.gpuStatus(), residentWeights: this.residentWeights() };
      if (this.limitRaised) {
        this.limitRaised = false;
        void this.heartbeat();
      }
    } catch (err) {
      if (err instanceof ProtocolError) this.protocolError("assign", msg.subject, err.message);
      else this.log.error({ err: errorMessage(err) }, "bad assignment");
      reply = { accepted: [], error: errorMessage(err) };
    }
    msg.respond(encodeMessage(AssignReply, reply));
  }

  /**
   * A DrainRequest has no fields, so the coordinator's request is empty. Anything else did not
   * come from a coordinator of this version: it is refused without an answer (the coordinator
   * takes any answer as "draining") and counted, so stray bytes cannot stop a worker.
   */
  private onDrain(msg: Msg): void {
    if (msg.data.length > 0) {
      this.protocolError("drain", msg.subject, `a drain request is empty; got ${msg.data.length} bytes`);
      return;
    }
    msg.respond(new Uint8Array());
    this.log.info("drain requested by the coordinator");
    void this.drain().then(() => this.close());
  }

  /**
   * Defragmentation: the coordinator asks to drop idle models' weights from a GPU. Each model is
   * evicted only when no item of it is held here (running or queued); otherwise it is refused
   * with the reason, as is a model this worker does not serve. A malformed request is refused
   * whole and counted, never thrown: stray bytes cannot stop a worker.
   */
  private async onEvict(msg: Msg): Promise<void> {
    let reply: Partial<EvictReply>;
    try {
      const req = decodeMessage(EvictRequest, msg.subject, msg.data);
      const problem = evictProblem(req, this.devices);
      if (problem) {
        this.protocolError("evict", msg.subject, problem);
        reply = { error: problem };
      } else {
        const evicted: string[] = [];
        const refused: { model: string; reason: string }[] = [];
        const reason = req.reason === "defrag" ? "defrag" : "other";
        for (const model of new Set(req.models)) {
          const r = await this.evictOne(model, reason);
          const ids = { workerId: this.opts.id, model, gpuIndex: req.gpuIndex, reason };
          if (typeof r === "object") {
            refused.push({ model, reason: r.refused });
            this.log.info({ ...ids, refused: r.refused }, "eviction refused");
          } else {
            // Not loaded: nothing to free, and nothing left of it to count either.
            evicted.push(model);
            this.log.info(ids, r === "evicted" ? "model evicted" : "eviction asked for a model not loaded");
          }
        }
        reply = { evicted, refused, gpus: this.gpuStatus(), residentWeights: this.residentWeights() };
      }
    } catch (err) {
      if (err instanceof ProtocolError) this.protocolError("evict", msg.subject, err.message);
      else this.log.error({ err: errorMessage(err) }, "bad evict request");
      reply = { error: errorMessage(err) };
    }
    try {
      if (msg.reply) msg.respond(encodeMessage(EvictReply, reply));
    } catch (err) {
      this.log.warn({ err: errorMessage(err) }, "evict reply not sent");
    }
  }

  /** Evicts one model, or says why not. */
  private async evictOne(model: string, reason: string): Promise<"evicted" | "not-loaded" | { refused: string }> {
    if (!this.manifests.has(model)) return { refused: `model ${model} is not served by worker ${this.opts.id}` };
    let held = 0;
    for (const h of this.held.values()) if (h.model.name === model) held++;
    if (held > 0) return { refused: `${held} item(s) of ${model} held here (running or queued)` };
    if (!this.backend.evict) return { refused: "this inference backend cannot evict models" };
    const r = await this.backend.evict(model);
    if (r === "evicted") this.metrics?.evicted(model, reason);
    return r;
  }

  /**
   * Weights kept loaded and counted as used in a GPU's free figure whether or not an item of
   * them runs (Heartbeat.resident_weights): what an eviction gives back. On a budget device,
   * what the backend says it keeps (SIMULATED --sim-keep-weights); on a measured GPU, the
   * sessions of a backend running on it (CUDA execution provider), which nvidia-smi counts.
   */
  private residentWeights(): ResidentWeights[] {
    const out: ResidentWeights[] = [];
    const add = (model: string, gpuIndex: number) => {
      const m = this.manifests.get(model);
      if (m) out.push({ model, gpuIndex, weightsBytes: m.vram.weights_bytes });
    };
    const budget = this.devices.find((d) => d.source === "budget");
    if (budget && this.opts.simulate && this.opts.simKeepWeights) {
      // Kept after their items end: the loaded models, and those of the items held (loading
      // now or soon), so the coordinator never takes their weights as given back.
      const kept = new Set(this.backend.keptWeights?.() ?? []);
      for (const h of this.held.values()) if (h.gpuIndex === budget.index) kept.add(h.model.name);
      for (const m of kept) add(m, budget.index);
    }
    const cuda = this.opts.executionProviders.map((p) => cudaDevice(p)).find((d) => d !== undefined);
    if (this.devices.some((d) => d.source === "nvidia-smi" && d.index === cuda)) for (const m of this.backend.residentModels()) add(m, cuda!);
    return out;
  }

  private protocolError(kind: ProtocolErrorKind, subject: string, problem: string): void {
    this.metrics?.protocolError(kind);
    this.log.warn({ subject, problem }, `refusing a bad ${kind} request`);
  }

  /** Free VRAM per device right now (unclamped), and which models' weights are counted. */
  private room(): Map<number, { free: number; models: Set<string> }> {
    const resident = new Set(this.backend.residentModels());
    const out = new Map<number, { free: number; models: Set<string> }>();
    for (const g of this.gpuStatus(false, true)) {
      const models = new Set<string>();
      for (const h of this.held.values()) if (h.gpuIndex === g.index && !h.ran) models.add(h.model.name);
      // A measured GPU already holds the sessions the backend has loaded; a budget device the
      // weights the backend keeps (SIMULATED --sim-keep-weights).
      if (g.source !== "budget") for (const m of resident) models.add(m);
      else for (const m of this.backend.keptWeights?.() ?? []) models.add(m);
      out.set(g.index, { free: g.vramFreeBytes, models });
    }
    return out;
  }

  /**
   * The worker's own guard for guarantee 5: an item is refused (and the coordinator places it
   * again, without counting an attempt) unless this GPU has room for it now, whatever the
   * coordinator's possibly stale view said.
   */
  private fits(item: AssignedItem, params: Record<string, unknown>, room: Map<number, { free: number; models: Set<string> }>): boolean {
    const r = room.get(item.gpuIndex);
    if (!r) return false;
    const model = this.manifests.get(item.model);
    const need = this.needOf(item, model, params);
    // Weights count as paid only where this worker really has them: an item it holds on this GPU,
    // or (measured GPUs) a session the backend has loaded. An unknown model has none to pay.
    const weightsCounted = !model || r.models.has(model.name);
    const left = fitsVram(r.free, 0, need, weightsCounted);
    if (left === undefined) return false;
    r.free = left;
    if (model) r.models.add(model.name);
    return true;
  }

  /**
   * The item's need as the coordinator sent it, so both sides check the same figures: its
   * activations may be a learned estimate, larger than the manifest's. A figure the coordinator
   * left at 0 (an older coordinator, or a model it has no manifest for) is the manifest's here.
   */
  private needOf(item: AssignedItem, model: ModelManifest | undefined, params: Record<string, unknown>): VramNeed {
    const fromManifest = itemNeed(model, params);
    return {
      weightsBytes: item.weightsBytes > 0 ? item.weightsBytes : fromManifest.weightsBytes,
      activationBytes: item.vramBytes > 0 ? item.vramBytes : fromManifest.activationBytes,
    };
  }

  /** `item.lease` has passed leaseProblem(). */
  private accept(item: AssignedItem, wire: WireParams, trace?: TraceContext): boolean {
    const lease = item.lease!;
    const model = this.manifests.get(item.model);
    const controller = new CancelToken();
    const held: HeldItem = {
      lease,
      attempt: item.attempt,
      deadline: performance.now() + (item.timeoutMs || this.opts.itemTimeoutMs),
      timedOut: false,
      model: model ?? { name: item.model, version: "?", params: {}, vram: { weights_bytes: 0, activation_bytes: 0 } },
      gpuIndex: item.gpuIndex,
      // The coordinator's figure may be a learned one, larger than the manifest's.
      activation: this.needOf(item, model, wire.params).activationBytes,
      controller,
      started: false,
      ran: false,
      batchCapacity: this.inFlightLimit !== undefined && model !== undefined ? (this.backend.batchCapacity?.(model.name, wire.params) ?? 1) : 1,
      span: trace
        ? startSpan("shoal.item", { kind: SpanKind.CONSUMER, attributes: { "shoal.batch_id": lease.batchId, "shoal.item": lease.index, "shoal.attempt": item.attempt, "shoal.model": item.model, "shoal.worker_id": this.opts.id } }, contextFromTrace(trace))
        : undefined,
    };
    this.held.set(lease.token, held);
    this.timeouts.add(held.deadline);
    this.metrics?.inFlight(this.held.size);
    // Items that batch more than the last ones: say so at once rather than at the next
    // heartbeat, so the coordinator sends enough of them for groups to form. (A lower figure
    // waits for the heartbeat: the items already sent are held either way.)
    // (Before any item the figure is the default already: nothing to raise.)
    const limit = this.inFlightLimit;
    if (limit !== undefined && limit.largestBatch() > 0 && held.batchCapacity > limit.largestBatch()) this.limitRaised = true;
    // Debug only (one line per item): where an item went, before it ran.
    if (this.log.isLevelEnabled("debug")) this.log.debug({ batchId: lease.batchId, item: lease.index, attempt: item.attempt, model: item.model }, "item accepted");
    void this.execute(held, wire, item.timeoutMs || this.opts.itemTimeoutMs);
    return true;
  }

  /** One timer for every held item's timeout, not one per item (thousands are held at scale). */
  /** Aborts the held items past their deadline; returns the next deadline still pending. */
  private sweepTimeouts(now: number): number | undefined {
    let next: number | undefined;
    for (const h of this.held.values()) {
      if (h.timedOut) continue;
      if (now >= h.deadline) {
        h.timedOut = true;
        h.controller.abort();
      } else if (next === undefined || h.deadline < next) next = h.deadline;
    }
    return next;
  }


  private async execute(held: HeldItem, wire: WireParams, timeoutMs: number): Promise<void> {
    const { lease } = held;
    // Per-item lines carry batch and item ids; bindings are built only when a line is written.
    const ids = () => ({ batchId: lease.batchId, item: lease.index, attempt: held.attempt, model: held.model.name });
    const started = performance.now();
    let outcome: ItemOutcome;
    try {
      if (!this.manifests.has(held.model.name)) {
        throw new InferenceError("MODEL_NOT_FOUND", `model ${held.model.name} is not served by worker ${this.opts.id}`, true);
      }
      // The coordinator validated these params, but anything can be published on the assign
      // subject: a garbled or forged item must not reach the model (100000×100000 pixels would
      // take the process down), so it ends as the coordinator would have refused it.
      if (wire.problem !== undefined) throw new InferenceError("INVALID_PARAMS", wire.problem, false);
      const checked = validateParams(held.model, wire.params);
      if (checked.problems.length > 0) {
        throw new InferenceError("INVALID_PARAMS", checked.problems.map((p) => `${p.path}: ${p.message}`).join("; "), false);
      }
      // A prompt-policy classifier for this model screens the item first (prompt-policy.ts); a
      // flagged item ends here and its model never runs.
      if (this.promptPolicy?.screens(held.model.name)) {
        const verdict = await this.promptPolicy.screen({ token: lease.token, batchId: lease.batchId, index: lease.index, model: held.model, params: checked.params }, held.controller);
        this.metrics?.promptPolicy(held.model.name, verdict ? "blocked" : "allowed");
        if (verdict) throw new InferenceError("CONTENT_POLICY", verdict.message, false);
      }
      this.metrics?.itemStarted(held.gpuIndex);
      held.started = true;
      this.peak?.begin(lease.token);
      // `shoal.run`: waiting for a thread and running; a run that merges items of several
      // traces (dynamic batching) links to each item's run span (thread-pool.ts).
      const output = await inChildSpan(held.span, "shoal.run", (span) =>
        this.backend.run({ id: lease.token, model: held.model.name, params: checked.params, batchId: lease.batchId, index: lease.index, vramBytes: held.activation, traceparent: traceparentOf(span) }, held.controller),
      );
      held.ran = true;
      const measured = this.peak ? await this.peak.end(lease.token) : 0;
      const peakBytes = output.peakBytes > 0 ? output.peakBytes : measured;
      if (peakBytes > 0) {
        this.metrics?.itemPeakVram(held.model.name, peakBytes);
        this.log.info({ ...ids(), peakVramBytes: peakBytes }, "item peak VRAM measured");
      }
      const artifacts = await inChildSpan(held.span, "shoal.upload", (span) => {
        span?.setAttribute("shoal.artifacts", output.artifacts.length);
        return Promise.all(output.artifacts.map((a) => this.storeArtifact(lease, a.name, a.contentType, a.data, a.sha256)));
      });
      const runMs = Math.round(performance.now() - started);
      outcome = { lease, status: ItemStatus.ITEM_STATUS_SUCCEEDED, error: undefined, artifacts, runMs, vramUsedBytes: Math.min(peakBytes, MAX_REPORTED_VRAM_BYTES) };
      if (this.log.isLevelEnabled("debug")) this.log.debug({ ...ids(), runMs }, "item succeeded");
    } catch (err) {
      held.ran = true;
      void this.peak?.end(lease.token);
      const runMs = Math.round(performance.now() - started);
      const e =
        err instanceof InferenceError
          ? held.timedOut && err.code === "CANCELLED"
            ? new InferenceError("TIMEOUT", `item ran longer than ${timeoutMs} ms`, true)
            : err
          : new InferenceError("INFERENCE_FAILED", errorMessage(err), true);
      const status = e.code === "CANCELLED" ? ItemStatus.ITEM_STATUS_CANCELLED : ItemStatus.ITEM_STATUS_FAILED;
      // An OUT_OF_MEMORY carries what the item needed where the backend can tell (the coordinator
      // raises its estimate to it); capped so the figure never gets the outcome refused.
      const needed = e.code === "OUT_OF_MEMORY" ? Math.min(e.neededBytes, MAX_REPORTED_VRAM_BYTES) : 0;
      outcome = { lease, status, error: { code: e.code, message: e.message, retryable: e.retryable }, artifacts: [], runMs, vramUsedBytes: needed };
      (e.code === "CANCELLED" || e.code === "CONTENT_POLICY" ? this.log.info.bind(this.log) : this.log.warn.bind(this.log))({ ...ids(), code: e.code, err: e.message, runMs }, "item did not succeed");
    }
    // Model names from the wire are unbounded: only served models get their own label. An item
    // the prompt policy blocked never ran its model: it is counted by promptPolicy() above only.
    if (outcome.error?.code !== "CONTENT_POLICY") {
      this.metrics?.itemDone(this.manifests.has(held.model.name) ? held.model.name : "(unknown)", outcome.status, outcome.runMs / 1000, held.gpuIndex, held.started);
    }
    await this.publisher!.publish(lease.batchId, outcome, traceContextOf(held.span));
    held.span?.setAttribute("shoal.status", outcome.error?.code ?? "SUCCEEDED");
    endSpan(held.span, outcome.error ? new Error(`${outcome.error.code}: ${outcome.error.message}`) : undefined);
    // Only now, with the outcome stored, does the item stop appearing in heartbeats.
    this.held.delete(lease.token);
    this.itemsDone++;
    this.metrics?.inFlight(this.held.size);
    if (this.held.size === 0) for (const w of this.idleWaiters.splice(0)) w();
  }

  private async storeArtifact(lease: LeaseRef, name: string, contentType: string, data: Uint8Array, digest: Uint8Array | undefined): Promise<Artifact> {
    // The attempt's token is part of the name: only the coordinator and this worker know it, so
    // no other worker can name (let alone replace) this artifact, and the coordinator accepts an
    // outcome only with artifacts under its own attempt's name (wire-validation.ts).
    const objectName = `${lease.batchId}/${lease.index}/${lease.token}/${name}`;
    // One digest for the object's info and the outcome: the inference thread's where it made one
    // (the ONNX backend's threads hash what they produce), else computed here.
    const sha256 = digest?.length === 32 ? digest : createHash("sha256").update(data).digest();
    try {
      await writeArtifact(this.jsPublisher!, this.names.artifactsBucket, objectName, contentType, data, this.nc!.info?.max_payload ?? 1024 * 1024, 5000, sha256);
    } catch (err) {
      // A full store fails this attempt with a message that says what to change; retryable,
      // because --retention frees room as old artifacts age out.
      const e = storageError(err, `the artifact store (${this.names.artifactsBucket})`, "--artifacts-max-bytes on the coordinator");
      throw new InferenceError("INFERENCE_FAILED", `artifact ${name} (${data.length} bytes) not stored: ${e.message}`, true);
    }
    return { name, contentType, sizeBytes: data.length, sha256: Buffer.from(sha256).toString("hex"), uri: ARTIFACT_URI_PREFIX + objectName };
  }

  private onCancel(msg: Msg): void {
    try {
      const cancel = decodeMessage(CancelItems, msg.subject, msg.data);
      let n = 0;
      for (const lease of cancel.leases) {
        const held = this.held.get(lease.token);
        if (held) {
          held.controller.abort();
          n++;
        }
      }
      this.log.info({ requested: cancel.leases.length, cancelled: n }, "cancel requested");
      if (msg.reply) msg.respond(new Uint8Array());
    } catch (err) {
      if (err instanceof ProtocolError) this.protocolError("cancel", msg.subject, err.message);
      else this.log.error({ err: errorMessage(err) }, "bad cancel request");
    }
  }

  /**
   * Free VRAM per device: measured where nvidia-smi is, otherwise accounted from the budget.
   * `withoutRan`: the room for admission, without items whose run has ended (see HeldItem.ran).
   */
  private gpuStatus(clamp = true, withoutRan = false) {
    return this.devices.map((d) => {
      const mine = [...this.held.values()].filter((h) => h.gpuIndex === d.index && !(withoutRan && h.ran));
      let free: number;
      if (d.source === "budget") {
        const models = new Set(mine.map((h) => h.model));
        // Weights the backend keeps loaded while idle hold the budget too, until evicted.
        for (const name of this.backend.keptWeights?.() ?? []) {
          const m = this.manifests.get(name);
          if (m && !mine.some((h) => h.model.name === name)) models.add(m);
        }
        const weights = [...models].reduce((s, m) => s + m.vram.weights_bytes, 0);
        free = d.totalBytes - weights - mine.reduce((s, h) => s + h.activation, 0);
      } else {
        // Measured free already includes running items; queued ones are not on the card yet.
        const queued = mine.filter((h) => !h.started).reduce((s, h) => s + h.activation, 0);
        free = (this.measuredFree?.get(d.index) ?? d.totalBytes) - queued;
      }
      return { index: d.index, name: d.name, vramTotalBytes: d.totalBytes, vramFreeBytes: clamp ? Math.max(0, free) : free, source: d.source };
    });
  }

  /** The max_in_flight heartbeats report: the fixed figure, or the default following the held items. */
  private reportedMaxInFlight(): number {
    const limit = this.inFlightLimit;
    if (limit === undefined) return this.maxInFlight;
    limit.follow(this.unrunCapacities());
    return limit.limit();
  }

  private *unrunCapacities(): Iterable<number> {
    for (const h of this.held.values()) if (!h.ran) yield h.batchCapacity;
  }

  private async heartbeat(): Promise<void> {
    if (!this.nc || this.nc.isClosed() || this.state === "STOPPED") return;
    try {
      this.measuredFree = (await this.vram!.measureFree()) ?? undefined;
    } catch (err) {
      this.log.warn({ err: errorMessage(err) }, "cannot measure free VRAM; keeping the last reading");
    }
    const gpus = this.gpuStatus();
    this.metrics?.vram(gpus);
    this.metrics?.resident(this.backend.residentModels());
    const hb: Partial<Heartbeat> = {
      workerId: this.opts.id,
      seq: ++this.heartbeatSeq,
      incarnation: this.incarnation,
      state: this.state === "RUNNING" ? WorkerState.WORKER_STATE_READY : WorkerState.WORKER_STATE_DRAINING,
      gpus,
      residentModels: this.backend.residentModels(),
      residentWeights: this.residentWeights(),
      inFlight: [...this.held.values()].map((h) => h.lease),
      itemsDone: this.itemsDone,
      maxInFlight: this.reportedMaxInFlight(),
      hostname: hostname(),
      models: [...this.manifests.keys()],
      heartbeatIntervalMs: this.opts.heartbeatIntervalMs,
      readsParamsJson: true,
    };
    try {
      this.nc.publish(this.names.heartbeat(this.opts.id), encodeMessage(Heartbeat, hb));
    } catch (err) {
      this.log.warn({ err: errorMessage(err) }, "heartbeat not sent");
    }
  }

  /**
   * Stops taking items, lets in-flight ones finish within the grace period, then gives back
   * what is left: those items end with a retryable WORKER_LOST so the coordinator places them
   * again at once instead of waiting for the heartbeat timeout.
   */
  drain(graceMs = this.opts.drainGraceMs): Promise<void> {
    if (this.drainPromise) return this.drainPromise;
    if (this.state === "RUNNING") this.state = "DRAINING";
    this.drainPromise = (async () => {
      this.log.info({ inFlight: this.held.size, graceMs }, "draining");
      await this.heartbeat();
      if (this.held.size > 0) {
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([
          new Promise<void>((r) => this.idleWaiters.push(r)),
          new Promise<void>((r) => (timer = setTimeout(r, graceMs))),
        ]);
        clearTimeout(timer);
      }
      if (this.held.size > 0) {
        this.log.warn({ left: this.held.size }, "drain grace over; giving remaining items back");
        await Promise.all(
          [...this.held.values()].map(async (h) => {
            h.controller.abort();
            this.held.delete(h.lease.token);
            await this.publisher!.publish(h.lease.batchId, {
              lease: h.lease,
              status: ItemStatus.ITEM_STATUS_FAILED,
              error: { code: "WORKER_LOST", message: `worker ${this.opts.id} drained before the item finished`, retryable: true },
              artifacts: [],
              runMs: 0,
              vramUsedBytes: 0,
            });
          }),
        );
      }
      this.log.info("drained");
    })();
    return this.drainPromise;
  }

  /** Idempotent: releases NATS, threads and timers. Does not wait for items; drain() first. */
  close(): Promise<void> {
    if (this.closePromise) return this.closePromise;
    this.state = "STOPPING";
    this.closePromise = (async () => {
      if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
      this.timeouts.stop();
      this.peak?.stop();
      for (const s of this.subs) {
        try {
          s.unsubscribe();
        } catch {
          /* already closed */
        }
      }
      for (const h of this.held.values()) h.controller.abort();
      try {
        await this.publisher?.close();
      } catch (err) {
        this.log.warn({ err: errorMessage(err) }, "closing result publisher");
      }
      try {
        await this.backend.close();
      } catch (err) {
        this.log.warn({ err: errorMessage(err) }, "closing inference backend");
      }
      this.jsPublisher?.stop();
      try {
        await this.nc?.drain();
      } catch {
        /* connection already closed */
      }
      this.state = "STOPPED";
      this.log.info("worker stopped");
      this.resolveStopped();
    })();
    return this.closePromise;
  }
}

/** Why an assigned item's lease cannot be taken: its batch id becomes a subject token. */
/** `_INBOX_<worker id>`: what a worker's NATS permissions allow it to subscribe to for replies. */
export function workerInboxPrefix(workerId: string): string {
  return `_INBOX_${workerId}`;
}

/** Why an evict request cannot be acted on at all (a model this worker does not serve is refused per model instead). */
function evictProblem(req: EvictRequest, devices: GpuDevice[]): string | undefined {
  if (!devices.some((d) => d.index === req.gpuIndex)) return `gpu_index: ${req.gpuIndex} is not a GPU of this worker`;
  if (req.models.length === 0 || req.models.length > 64) return `models: must list 1..64 models (got ${req.models.length})`;
  const bad = req.models.findIndex((m) => m.length === 0 || m.length > 128);
  if (bad >= 0) return `models[${bad}]: must be 1..128 characters`;
  if (req.reason.length > 64) return "reason: longer than 64 characters";
  return undefined;
}

/** An assigned item's params as the worker reads them; `problem` when params_json cannot be read. */
interface WireParams {
  params: Record<string, unknown>;
  problem?: string;
}

/**
 * params_json when the coordinator sent it (this version), else the Struct (an older
 * coordinator). Unreadable JSON leaves the params empty: the item is taken and ends
 * INVALID_PARAMS with the reason, as params that fail validation do.
 */
function paramsOf(item: AssignedItem): WireParams {
  if (item.paramsJson.length === 0) return { params: item.params ?? {} };
  const decoded = decodeParamsJson(item.paramsJson);
  return "problem" in decoded ? { params: {}, problem: decoded.problem } : decoded;
}

function leaseProblem(lease: LeaseRef | undefined): string | undefined {
  if (!lease) return "lease: is required";
  if (!BATCH_ID.test(lease.batchId)) return `lease.batch_id: ${JSON.stringify(lease.batchId.slice(0, 40))} is not a batch id`;
  if (!lease.token || lease.token.length > MAX_LEASE_TOKEN_LENGTH) return `lease.token: must be 1..${MAX_LEASE_TOKEN_LENGTH} characters`;
  return undefined;
}
