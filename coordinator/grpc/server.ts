import { Server, ServerCredentials, status } from "@grpc/grpc-js";
import { HealthCheckResponse_ServingStatus, HealthService, type HealthServer } from "../../proto/gen/grpc/health/v1/health.js";
import {
  BatchServiceService,
  FleetServiceService,
  WorkerState,
  type Batch,
  type BatchServiceServer,
  type FleetServiceServer,
  type Worker,
} from "../../proto/gen/shoal/v1/shoal.js";
import type { Logger } from "../../shared/logger.js";
import type { Coordinator } from "../coordinator.js";
import type { CoordinatorMetrics } from "../metrics.js";
import { lenientService } from "./request-decoding.js";
import { Auth, RpcEdge } from "./rpc-edge.js";
import type { WorkerRecord } from "../fleet.js";
import type { GpuView } from "../vram-ledger.js";

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
    submitBatch: edge.unary("SubmitBatch", (req, ctx) => c.submit(req, ctx.tenant)),
    runBatch: edge.unary("RunBatch", async (req, ctx): Promise<Batch> => {
      const { batchId } = await c.submit(req, ctx.tenant);
      // The call's deadline and cancellation end the wait; the batch itself keeps running.
      return c.waitTerminal(batchId, ctx.tenant, ctx.signal);
    }),
    getBatch: edge.unary("GetBatch", (req, ctx) => c.getBatch(req.batchId, ctx.tenant)),
    watchBatch: edge.stream("WatchBatch", (req, ctx) => c.watch(req.batchId, ctx.tenant, ctx.signal)),
    cancelBatch: edge.unary("CancelBatch", (req, ctx) => c.cancel(req.batchId, ctx.tenant)),
    retryBatch: edge.unary("RetryBatch", (req, ctx) => c.retry(req.batchId, ctx.tenant)),
    listBatches: edge.unary("ListBatches", (req, ctx) => c.list(ctx.tenant, req.pageSize, req.pageToken)),
    getArtifact: edge.stream("GetArtifact", async function* (req, ctx) {
      const stream = await c.artifact(req.uri, ctx.tenant);
      for await (const chunk of stream) {
        for (let i = 0; i < chunk.length; i += CHUNK) yield { data: Buffer.from(chunk.subarray(i, i + CHUNK)) };
      }
    }),
  };
}

export function fleetServiceImpl(c: Coordinator, edge: RpcEdge): FleetServiceServer {
  return {
    listWorkers: edge.unary("ListWorkers", async () => ({ workers: c.workers().map(toWorker) })),
    drainWorker: edge.unary("DrainWorker", async (req) => {
      const w = await c.drainWorker(req.workerId);
      return toWorker(c.workers().find((x) => x.record.id === w.id) ?? { record: w, gpus: [], attemptsOpen: 0 });
    }),
    listModels: edge.unary("ListModels", async () => {
      const workers = c.workers().filter((w) => w.record.state !== WorkerState.WORKER_STATE_LOST);
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

export async function startGrpcServer(
  c: Coordinator,
  host: string,
  port: number,
  apiKeys: Map<string, string>,
  log: Logger,
  metrics?: CoordinatorMetrics,
  /** Standby coordinators: `gate` refuses calls while standby, `serving` is what health reports. */
  standby?: { gate: () => void; serving: () => boolean },
): Promise<GrpcServerHandle> {
  const server = new Server({ "grpc.max_receive_message_length": MAX_MESSAGE, "grpc.max_send_message_length": MAX_MESSAGE });
  const auth = new Auth(apiKeys);
  let serving = true;
  server.addService(lenientService(BatchServiceService), batchServiceImpl(c, new RpcEdge("shoal.v1.BatchService", auth, log, metrics, standby?.gate)));
  server.addService(lenientService(FleetServiceService), fleetServiceImpl(c, new RpcEdge("shoal.v1.FleetService", auth, log, metrics, standby?.gate)));
  server.addService(HealthService, healthImpl(() => serving && (standby?.serving() ?? true)));
  const bound = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`${host}:${port}`, ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
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

