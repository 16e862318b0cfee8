import { Server, ServerCredentials, status } from "@grpc/grpc-js";
import { HealthCheckResponse_ServingStatus, HealthService, type HealthServer } from "../../proto/gen/grpc/health/v1/health.js";
import {
  BatchServiceService,
  FleetServiceService,
  WorkerState,
  type Batch,
  type BatchEvent,
  type BatchServiceServer,
  type FleetServiceServer,
  type Worker,
  type TenantPlanLimits,
} from "../../proto/gen/shoal/v1/shoal.js";
import type { Logger } from "../../shared/logger.js";
import type { Coordinator } from "../coordinator.js";
import type { CoordinatorMetrics } from "../metrics.js";
import { lenientService } from "./request-decoding.js";
import { addReflection } from "./reflection.js";
import { type Auth, RpcEdge, requireOperator } from "./rpc-edge.js";
import type { WorkerRecord } from "../fleet.js";
import type { GpuView } from "../vram-ledger.js";
import { invalidArgument, permissionDenied, TermEndedError } from "../errors.js";
import { usageSince } from "../usage.js";
import type { ApiKeyTable } from "../api-keys.js";

const MAX_MESSAGE = 64 * 1024 * 1024;
const CHUNK = 64 * 1024;

function toWorker({ record, gpus, attemptsOpen }: { record: WorkerRecord; gpus: readonly GpuView[]; attemptsOpen: number }): Worker {
  return {
    id: record.id,
    state: record.state,
    gpus: gpus.map((g) => ({ index: g.index, name: g.name, vramTotalBytes: g.totalBytes, vramFreeBytes: g.freeBytes, vramReservedBytes: g.reservedBytes, source: g.source })),
    residentModels: [...record.resident].sort(),
    itemsInFlight: Math.max(attemptsOpen, record.heldReported),
    itemsDone: record.itemsDone,
    hostname: record.hostname,
    lastHeartbeatAt: new Date(record.lastSeenMs),
    models: [...record.models].sort(),
  };
}

export function batchServiceImpl(c: Coordinator, edge: RpcEdge): BatchServiceServer {
  return {
    submitBatch: edge.unary("SubmitBatch", (req, ctx) => c.submit(req, ctx.tenant, "", [], ctx.limits)),
    runBatch: edge.unary("RunBatch", async (req, ctx): Promise<Batch> => {
      const { batchId } = await c.submit(req, ctx.tenant, "", [], ctx.limits);
      // The call's deadline and cancellation end the wait; the batch itself keeps running. A
      // term that ends under the wait (a lease lost to a stalled event loop, say) is followed
      // into this process's next term, which recovered the batch from JetStream.
      for (;;) {
        try {
          return await c.waitTerminal(batchId, ctx.tenant, ctx.signal);
        } catch (err) {
          if (!(err instanceof TermEndedError) || !(await edge.awaitServing(ctx.signal))) throw err;
        }
      }
    }),
    getBatch: edge.unary("GetBatch", (req, ctx) => c.getBatch(req.batchId, ctx.tenant)),
    watchBatch: edge.stream("WatchBatch", (req, ctx) => watchAcrossTerms(c, edge, req.batchId, ctx.tenant, ctx.signal, req.progress)),
    cancelBatch: edge.unary("CancelBatch", (req, ctx) => c.cancel(req.batchId, ctx.tenant)),
    retryBatch: edge.unary("RetryBatch", (req, ctx) => c.retry(req.batchId, ctx.tenant, ctx.limits)),
    listBatches: edge.unary("ListBatches", (req, ctx) => c.list(ctx.tenant, req.pageSize, req.pageToken)),
    getUsage: edge.unary("GetUsage", async (req, ctx) => {
      const since = usageSince(req.since, new Date());
      if (since === undefined) throw invalidArgument([`since: ${JSON.stringify(req.since.slice(0, 40))} is not a date YYYY-MM-DD`], "usage not read");
      // A tenant sees its own usage only; an operator names a tenant, or gets every one.
      if (ctx.role !== "operator" && req.tenant !== "" && req.tenant !== ctx.tenant) {
        throw permissionDenied(`tenant "${ctx.tenant}" may read only its own usage; another tenant's needs an operator key`);
      }
      const tenant = req.tenant !== "" ? req.tenant : ctx.role === "operator" ? undefined : ctx.tenant;
      const days = await c.usageSince(since, tenant);
      return {
        days: days.map((d) => ({ tenant: d.tenant, day: d.day, accepted: d.accepted, succeeded: d.succeeded, failed: d.failed, contentPolicy: d.contentPolicy, cancelled: d.cancelled, gpuSeconds: d.gpuSeconds })),
        limits: planLimits(edge.auth.keys, tenant === undefined ? edge.auth.keys.tenants : [tenant]),
      };
    }),
    getArtifact: edge.stream("GetArtifact", async function* (req, ctx) {
      const stream = await c.artifact(req.uri, ctx.tenant);
      for await (const chunk of stream) {
        for (let i = 0; i < chunk.length; i += CHUNK) yield { data: Buffer.from(chunk.subarray(i, i + CHUNK)) };
      }
    }),
  };
}

/** The plan limits of these tenants, in their order; tenants without any limit are left out. */
function planLimits(keys: ApiKeyTable, tenants: string[]): TenantPlanLimits[] {
  const out: TenantPlanLimits[] = [];
  for (const tenant of [...new Set(tenants)]) {
    const l = keys.limitsOf(tenant);
    if (!l || (l.maxItemsPerBatch === undefined && l.itemsPerDay === undefined && l.maxQueuedItems === undefined)) continue;
    out.push({ tenant, maxItemsPerBatch: l.maxItemsPerBatch ?? 0, itemsPerDay: l.itemsPerDay ?? 0, maxQueuedItems: l.maxQueuedItems ?? 0 });
  }
  return out;
}

/**
 * What a tenant key sees of a worker: its id, state, GPUs' names and total VRAM, and the models
 * it serves (enough to know what can run and where it may go). Free and reserved VRAM, items in
 * flight and done, hostname and last heartbeat are left out: they show other tenants' load and
 * the fleet's layout, which are the operator's business.
 */
export function tenantView(w: Worker): Worker {
  return {
    id: w.id,
    state: w.state,
    gpus: w.gpus.map((g) => ({ index: g.index, name: g.name, vramTotalBytes: g.vramTotalBytes, vramFreeBytes: 0, vramReservedBytes: 0, source: g.source })),
    residentModels: w.residentModels,
    itemsInFlight: 0,
    itemsDone: 0,
    hostname: "",
    lastHeartbeatAt: undefined,
    models: w.models,
  };
}

export function fleetServiceImpl(c: Coordinator, edge: RpcEdge): FleetServiceServer {
  return {
    listWorkers: edge.unary("ListWorkers", async (_req, ctx) => {
      const workers = c.workers().map(toWorker);
      return { workers: ctx.role === "operator" ? workers : workers.map(tenantView) };
    }),
    drainWorker: edge.unary("DrainWorker", async (req, ctx) => {
      requireOperator(ctx, "DrainWorker");
      const w = await c.drainWorker(req.workerId);
      return toWorker(c.workers().find((x) => x.record.id === w.id) ?? { record: w, gpus: [], attemptsOpen: 0 });
    }),
    listModels: edge.unary("ListModels", async () => {
      const workers = c.workers().filter((w) => w.record.state !== WorkerState.WORKER_STATE_LOST);
      const queued = c.queueDepthByModel();
      return {
        models: c.models.all().map((m) => ({
          name: m.name,
          version: m.version,
          description: m.description ?? "",
          builtin: m.builtin ?? false,
          params: Object.entries(m.params).map(([name, p]) => ({
            name,
            type: p.type,
            required: p.required ?? false,
            description: p.description ?? "",
            defaultValue: p.default,
            minimum: p.minimum ?? 0,
            maximum: p.maximum ?? 0,
            multipleOf: p.multipleOf ?? 0,
            minLength: p.minLength ?? 0,
            maxLength: p.maxLength ?? 0,
          })),
          weightsBytes: m.vram.weights_bytes,
          activationBytes: m.vram.activation_bytes,
          activationBytesPerPixel: m.vram.activation_bytes_per_pixel ?? 0,
          residentOn: workers.filter((w) => w.record.resident.has(m.name)).map((w) => w.record.id),
          servedBy: workers.filter((w) => w.record.models.has(m.name)).map((w) => w.record.id),
          queuedItems: queued.get(m.name)?.items ?? 0,
          queuedVramBytes: queued.get(m.name)?.bytes ?? 0,
        })),
      };
    }),
  };
}

function healthImpl(isServing: () => boolean): HealthServer {
  const known = new Set(["", "shoal.v1.BatchService", "shoal.v1.FleetService"]);
  return {
    check: (call, cb) => {
      if (!known.has(call.request.service)) {
        cb({ code: status.NOT_FOUND, details: `unknown service ${call.request.service}` }, null);
        return;
      }
      cb(null, { status: isServing() ? HealthCheckResponse_ServingStatus.SERVING : HealthCheckResponse_ServingStatus.NOT_SERVING });
    },
    watch: (call) => {
      call.write({ status: isServing() ? HealthCheckResponse_ServingStatus.SERVING : HealthCheckResponse_ServingStatus.NOT_SERVING });
    },
  };
}

export interface GrpcServerHandle {
  port: number;
  close(graceMs?: number): Promise<void>;
}

/** Server-side TLS: PEM contents. With `clientCa`, clients must present a certificate it signed (mTLS). */
export interface ServerTls {
  cert: Buffer;
  key: Buffer;
  clientCa?: Buffer;
}

export function serverCredentials(tls: ServerTls | undefined): ServerCredentials {
  if (!tls) return ServerCredentials.createInsecure();
  return ServerCredentials.createSsl(tls.clientCa ?? null, [{ cert_chain: tls.cert, private_key: tls.key }], tls.clientCa !== undefined);
}

/**
 * WatchBatch that outlives a term of this process: when the term ends under it, the watch goes on
 * in the next term, which sends the items already finished first again; those the client has
 * are left out, so it sees each item once and then the terminal batch.
 */
async function* watchAcrossTerms(c: Coordinator, edge: RpcEdge, batchId: string, tenant: string, signal: AbortSignal, progress: boolean): AsyncGenerator<BatchEvent> {
  const sent = new Set<number>();
  for (;;) {
    try {
      for await (const ev of c.watch(batchId, tenant, signal, progress)) {
        if (ev.event?.$case === "item") {
          if (sent.has(ev.event.item.index)) continue;
          sent.add(ev.event.item.index);
        }
        yield ev;
      }
      return;
    } catch (err) {
      if (!(err instanceof TermEndedError) || !(await edge.awaitServing(signal))) throw err;
    }
  }
}

export async function startGrpcServer(
  c: Coordinator,
  host: string,
  port: number,
  auth: Auth,
  log: Logger,
  metrics?: CoordinatorMetrics,
  tls?: ServerTls,
  /** Standby coordinators: `gate` refuses calls while standby, `serving` is what health reports. */
  standby?: { gate: () => void; serving: () => boolean; self: () => string },
): Promise<GrpcServerHandle> {
  const server = new Server({ "grpc.max_receive_message_length": MAX_MESSAGE, "grpc.max_send_message_length": MAX_MESSAGE });
  let serving = true;
  server.addService(lenientService(BatchServiceService), batchServiceImpl(c, new RpcEdge("shoal.v1.BatchService", auth, log, metrics, standby?.gate, standby?.self)));
  server.addService(lenientService(FleetServiceService), fleetServiceImpl(c, new RpcEdge("shoal.v1.FleetService", auth, log, metrics, standby?.gate)));
  server.addService(HealthService, healthImpl(() => serving && (standby?.serving() ?? true)));
  addReflection(server);
  // An IPv6 literal needs brackets in the address grpc-js parses.
  const hostPart = host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
  const bound = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`${hostPart}:${port}`, serverCredentials(tls), (err, p) => (err ? reject(err) : resolve(p))),
  );
  let closing: Promise<void> | undefined;
  return {
    port: bound,
    close: (graceMs = 5000) =>
      (closing ??= new Promise<void>((resolve) => {
        serving = false;
        // Drain: let running calls finish within the grace period, then force.
        const timer = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, graceMs);
        timer.unref();
        server.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
      })),
  };
}

