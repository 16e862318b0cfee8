// The edge every RPC passes: where requests that did not decode are refused, API keys are
// checked, errors become gRPC statuses and RPCs are counted. Handlers are plain async functions
// (or async iterables, for streams) that throw ServerError; nothing they throw or return can
// escape this edge as an unhandled rejection, and every call ends with a status.

import { status, type Metadata, type sendUnaryData, type ServerUnaryCall, type ServerWritableStream } from "@grpc/grpc-js";
import type { Logger } from "../../shared/logger.js";
import type { CoordinatorMetrics } from "../metrics.js";
import type { ApiKeyTable, Principal, Role, TenantLimits } from "../api-keys.js";
import { permissionDenied, ServerError, unauthenticated } from "../errors.js";
import { decodeFailure } from "./request-decoding.js";
import { toGrpcStatus, type GrpcStatus } from "./status-encoding.js";
import { contextFromTraceparent, endSpan, SpanKind, startSpan, tracingOn, withinSpan, type Span } from "../../shared/tracing.js";

export interface CallContext {
  tenant: string;
  /** "operator" may drain workers and see fleet details; with keys off every caller is one. */
  role: Role;
  limits: TenantLimits;
  /** Aborted when the client cancels or the call's deadline passes (grpc-js cancels it). */
  signal: AbortSignal;
}

/**
 * Who is calling, from the `authorization: Bearer <key>` (or `x-api-key`) metadata. The table
 * is swapped whole on reload (SIGHUP), so a call sees either the old keys or the new ones.
 */
export class Auth {
  constructor(private table: ApiKeyTable) {}

  replace(table: ApiKeyTable): void {
    this.table = table;
  }

  get enabled(): boolean {
    return this.table.size > 0;
  }

  /** The keys in force (swapped whole on reload). */
  get keys(): ApiKeyTable {
    return this.table;
  }

  /** The caller; tenant "" with the operator role when keys are not configured. */
  principal(md: Metadata): Principal {
    if (this.table.size === 0) return { tenant: "", role: "operator", limits: {} };
    const raw = md.get("authorization")[0] ?? md.get("x-api-key")[0];
    if (raw === undefined) throw unauthenticated("missing API key: send `authorization: Bearer <key>` (SHOAL_API_KEY)");
    const key = String(raw).replace(/^Bearer\s+/i, "");
    const principal = this.table.lookup(key);
    if (principal === undefined) throw unauthenticated("invalid API key");
    return principal;
  }
}

/** Refuses a tenant key where an operator key is needed. */
export function requireOperator(ctx: CallContext, what: string): void {
  if (ctx.role !== "operator") throw permissionDenied(`${what} needs an operator key (role "operator" in --api-keys-file); tenant "${ctx.tenant}" has role "${ctx.role}"`);
}

function statusName(code: number): string {
  return status[code] ?? String(code);
}

/** The status to answer with; logs errors that are not a deliberate ServerError. */
function answerFor(err: unknown, log: Logger, method: string): GrpcStatus {
  if (!(err instanceof ServerError)) {
    try {
      log.error({ method, err }, "unexpected error in RPC");
    } catch {
      /* a logger failure must not stop the answer */
    }
  }
  return toGrpcStatus(err);
}

/** `<service>/<method>`, kind SERVER, child of the caller's `traceparent` (and `tracestate`) metadata. */
function rpcServerSpan(service: string, method: string, md: Metadata): Span | undefined {
  const first = (k: string) => {
    const v = md.get(k)[0];
    return v === undefined ? undefined : String(v);
  };
  return startSpan(`${service}/${method}`, { kind: SpanKind.SERVER, attributes: { "rpc.system": "grpc", "rpc.service": service, "rpc.method": method } }, contextFromTraceparent(first("traceparent"), first("tracestate")));
}

/** How long a call whose term ended waits for this process's next term before answering UNAVAILABLE. */
const TERM_FOLLOW_MS = 30_000;

export class RpcEdge {
  constructor(
    private readonly service: string,
    readonly auth: Auth,
    private readonly log: Logger,
    private readonly metrics?: CoordinatorMetrics,
    /** Throws (UNAVAILABLE) when this coordinator may not answer: a standby names the active one. */
    private readonly gate?: () => void,
    /** This process's advertised address (standby coordinators), to tell its own lease from another's. */
    private readonly self?: () => string,
  ) {}

  /**
   * After a term ended under a call (TermEndedError): waits until this process serves again (it
   * won the next term and recovered) and resolves true, or false when the call ended, the wait
   * ran `maxMs`, or another coordinator holds the lease (its address is then what to tell the
   * client). Without standbys there is no gate and nothing to wait for.
   */
  async awaitServing(signal: AbortSignal, maxMs = TERM_FOLLOW_MS): Promise<boolean> {
    if (!this.gate) return false;
    const until = performance.now() + maxMs;
    while (!signal.aborted && performance.now() < until) {
      try {
        this.gate();
        return true;
      } catch (err) {
        // A standby refusal that names an active coordinator other than this one: go there.
        const named = err instanceof ServerError ? /the active coordinator is (\S+)$/.exec(err.message)?.[1] : undefined;
        if (named !== undefined && this.self && named !== this.self()) return false;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    return false;
  }

  unary<Req, Res>(method: string, fn: (req: Req, ctx: CallContext) => Promise<Res>) {
    return (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>) => {
      const started = performance.now();
      const controller = new AbortController();
      call.on("cancelled", () => controller.abort());
      // The server span of the call, joined to the caller's trace by its `traceparent` metadata.
      const span = tracingOn() ? rpcServerSpan(this.service, method, call.metadata) : undefined;
      void (async () => {
        let res: Res;
        try {
          const refused = decodeFailure(call.request);
          if (refused) throw refused;
          this.gate?.();
          const who = this.auth.principal(call.metadata);
          res = await withinSpan(span, () => fn(call.request, { ...who, signal: controller.signal }));
        } catch (err) {
          const e = answerFor(err, this.log, method);
          this.count(method, e.code, started);
          span?.setAttribute("rpc.grpc.status_code", e.code);
          endSpan(span, err);
          this.guard(method, () => callback(e, null));
          return;
        }
        span?.setAttribute("rpc.grpc.status_code", status.OK);
        endSpan(span);
        this.count(method, status.OK, started);
        this.guard(method, () => callback(null, res));
      })().catch((err) => this.unexpected(method, err));
    };
  }

  stream<Req, Res>(method: string, fn: (req: Req, ctx: CallContext) => AsyncIterable<Res>) {
    return (call: ServerWritableStream<Req, Res>) => {
      const started = performance.now();
      const controller = new AbortController();
      call.on("cancelled", () => controller.abort());
      // After a cancel grpc-js reports write errors on the call; there is nobody left to tell.
      call.on("error", () => {});
      void (async () => {
        try {
          const refused = decodeFailure(call.request);
          if (refused) throw refused;
          this.gate?.();
          const who = this.auth.principal(call.metadata);
          for await (const msg of fn(call.request, { ...who, signal: controller.signal })) {
            if (controller.signal.aborted) break;
            // Respect flow control: wait when the client reads slower than we write, but not
            // past a cancel, after which "drain" never comes.
            if (!call.write(msg)) await drainedOrAborted(call, controller.signal);
          }
          this.count(method, controller.signal.aborted ? status.CANCELLED : status.OK, started);
          this.guard(method, () => call.end());
        } catch (err) {
          const e = answerFor(err, this.log, method);
          this.count(method, e.code, started);
          // Emitting "error" is how a grpc-js server stream ends with a status: the stream
          // records it and sends it as the trailers. (destroy() would reset the stream without
          // one, leaving the client waiting until its deadline.)
          this.guard(method, () => call.emit("error", { code: e.code, details: e.details, metadata: e.metadata }));
        }
      })().catch((err) => this.unexpected(method, err));
    };
  }

  private count(method: string, code: number, started: number): void {
    this.guard(method, () => {
      this.metrics?.grpcHandled.inc({ grpc_service: this.service, grpc_method: method, grpc_code: statusName(code) });
      this.metrics?.grpcSeconds.observe({ grpc_service: this.service, grpc_method: method }, (performance.now() - started) / 1000);
    });
  }

  /** Runs a step whose failure must not take the call's other steps (or the process) with it. */
  private guard(method: string, step: () => void): void {
    try {
      step();
    } catch (err) {
      this.unexpected(method, err);
    }
  }

  private unexpected(method: string, err: unknown): void {
    try {
      this.metrics?.unexpectedError("rpc");
      this.log.error({ method, err }, "unexpected failure while answering an RPC");
    } catch {
      /* nothing left to report with */
    }
  }
}

function drainedOrAborted(call: ServerWritableStream<unknown, unknown>, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise<void>((resolve) => {
    const done = () => {
      call.off("drain", done);
      signal.removeEventListener("abort", done);
      resolve();
    };
    call.once("drain", done);
    signal.addEventListener("abort", done, { once: true });
  });
}
