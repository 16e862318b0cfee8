// The one place where errors become gRPC statuses, where API keys are checked and where RPCs
// are counted. Handlers are plain async functions that throw ServerError.

import { Metadata, status, type sendUnaryData, type ServerUnaryCall, type ServerWritableStream } from "@grpc/grpc-js";
import type { Logger } from "../../shared/logger.js";
import type { CoordinatorMetrics } from "../metrics.js";
import { ServerError, unauthenticated } from "../errors.js";

export interface CallContext {
  tenant: string;
  /** Aborted when the client cancels or the call's deadline passes (grpc-js cancels it). */
  signal: AbortSignal;
}

export class Auth {
  private readonly byKey = new Map<string, string>();
  constructor(keys: Map<string, string>) {
    for (const [tenant, key] of keys) this.byKey.set(key, tenant);
  }
  /** The caller's tenant; "" when keys are not configured. */
  tenant(md: Metadata): string {
    if (this.byKey.size === 0) return "";
    const raw = md.get("authorization")[0] ?? md.get("x-api-key")[0];
    if (raw === undefined) throw unauthenticated("missing API key: send `authorization: Bearer <key>` (SHOAL_API_KEY)");
    const key = String(raw).replace(/^Bearer\s+/i, "");
    const tenant = this.byKey.get(key);
    if (tenant === undefined) throw unauthenticated("invalid API key");
    return tenant;
  }
}

function statusName(code: number): string {
  return status[code] ?? String(code);
}

function toServiceError(err: unknown, log: Logger, method: string): { code: number; details: string; metadata?: Metadata } {
  if (err instanceof ServerError) {
    const metadata = new Metadata();
    err.violations.forEach((v, i) => metadata.set(`shoal-violation-${i}`, v));
    return { code: err.code, details: err.message, metadata };
  }
  log.error({ method, err }, "unexpected error in RPC");
  return { code: status.INTERNAL, details: `internal error: ${err instanceof Error ? err.message : String(err)}` };
}

export class RpcEdge {
  constructor(
    private readonly service: string,
    private readonly auth: Auth,
    private readonly log: Logger,
    private readonly metrics?: CoordinatorMetrics,
  ) {}

  unary<Req, Res>(method: string, fn: (req: Req, ctx: CallContext) => Promise<Res>) {
    return (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>) => {
      const started = performance.now();
      const controller = new AbortController();
      call.on("cancelled", () => controller.abort());
      void (async () => {
        try {
          const tenant = this.auth.tenant(call.metadata);
          const res = await fn(call.request, { tenant, signal: controller.signal });
          this.count(method, status.OK, started);
          callback(null, res);
        } catch (err) {
          const e = toServiceError(err, this.log, method);
          this.count(method, e.code, started);
          callback(e, null);
        }
      })();
    };
  }

  stream<Req, Res>(method: string, fn: (req: Req, ctx: CallContext) => AsyncIterable<Res>) {
    return (call: ServerWritableStream<Req, Res>) => {
      const started = performance.now();
      const controller = new AbortController();
      call.on("cancelled", () => controller.abort());
      void (async () => {
        try {
          const tenant = this.auth.tenant(call.metadata);
          for await (const msg of fn(call.request, { tenant, signal: controller.signal })) {
            if (controller.signal.aborted) break;
            // Respect flow control: wait when the client reads slower than we write.
            if (!call.write(msg)) await new Promise<void>((r) => call.once("drain", () => r()));
          }
          this.count(method, controller.signal.aborted ? status.CANCELLED : status.OK, started);
          call.end();
        } catch (err) {
          const e = toServiceError(err, this.log, method);
          this.count(method, e.code, started);
          call.destroy(Object.assign(new Error(e.details), e));
        }
      })();
    };
  }

  private count(method: string, code: number, started: number): void {
    this.metrics?.grpcHandled.inc({ grpc_service: this.service, grpc_method: method, grpc_code: statusName(code) });
    this.metrics?.grpcSeconds.observe({ grpc_service: this.service, grpc_method: method }, (performance.now() - started) / 1000);
  }
}
