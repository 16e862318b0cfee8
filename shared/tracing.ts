// OpenTelemetry traces for every Shoal process (coordinator, worker, gateway): the tracer
// provider and its OTLP/HTTP exporter, started only when an endpoint is configured, and the
// few helpers the call sites use to carry a W3C `traceparent` across gRPC metadata, HTTP
// headers, NATS headers and the stored batch record.
//
// Off (the default): no provider is registered, so @opentelemetry/api hands out its no-op
// tracer, and every helper below returns before touching headers or strings. The cost at a call
// site is one boolean check (`tracingOn()`), nothing is exported and no connection is opened.

import { context, propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Context, type Link, type Span, type SpanOptions } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { BasicTracerProvider, BatchSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { ATTR_SERVICE_NAME, ATTR_SERVICE_VERSION } from "@opentelemetry/semantic-conventions";
import { ConfigError } from "./errors.js";

export { SpanKind, type Context, type Link, type Span };

export type ServiceName = "shoal-coordinator" | "shoal-worker" | "shoal-gateway";

/** The W3C header, also the key of Shoal's per-item NATS headers' values. */
export const TRACEPARENT = "traceparent";

const TRACER_NAME = "shoal";
const w3c = new W3CTraceContextPropagator();

let provider: BasicTracerProvider | undefined;

/** True while this process exports traces; call sites skip all trace work otherwise. */
export function tracingOn(): boolean {
  return provider !== undefined;
}

/**
 * Where spans go: `--otlp-endpoint` (a base URL: `/v1/traces` is appended, as for
 * OTEL_EXPORTER_OTLP_ENDPOINT), else OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (used as is), else
 * OTEL_EXPORTER_OTLP_ENDPOINT + `/v1/traces`. Undefined: tracing is off.
 */
export function otlpTracesUrl(flag: string | undefined, env: NodeJS.ProcessEnv = process.env): string | undefined {
  const base = (s: string) => `${s.replace(/\/+$/, "")}/v1/traces`;
  const given = (s: string | undefined) => (s !== undefined && s.trim() !== "" ? s.trim() : undefined);
  const flagged = given(flag);
  const url = flagged !== undefined ? base(flagged) : (given(env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) ?? (given(env.OTEL_EXPORTER_OTLP_ENDPOINT) !== undefined ? base(given(env.OTEL_EXPORTER_OTLP_ENDPOINT)!) : undefined));
  if (url === undefined) return undefined;
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new ConfigError("--otlp-endpoint", `"${url.slice(0, 200)}" is not a URL (expected e.g. http://127.0.0.1:4318)`);
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") throw new ConfigError("--otlp-endpoint", `"${url.slice(0, 200)}" must be an http(s) URL (OTLP over HTTP)`);
  return url;
}

export interface TracingHandle {
  /** The OTLP traces URL spans go to; undefined when tracing is off. */
  url: string | undefined;
  /** Flushes what is buffered and stops exporting; idempotent. */
  stop(): Promise<void>;
}

/**
 * Starts exporting this process's spans to `url` (from otlpTracesUrl); with no url, does
 * nothing and returns a handle whose stop() is free. One provider per process.
 */
export function startTracing(service: ServiceName, url: string | undefined): TracingHandle {
  if (url === undefined || provider !== undefined) return { url: provider ? url : undefined, stop: async () => {} };
  const p = new BasicTracerProvider({
    resource: resourceFromAttributes({ [ATTR_SERVICE_NAME]: service, [ATTR_SERVICE_VERSION]: "0.1.0" }),
    spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter({ url }))],
  });
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  propagation.setGlobalPropagator(w3c);
  trace.setGlobalTracerProvider(p);
  provider = p;
  let stopping: Promise<void> | undefined;
  return {
    url,
    stop: () =>
      (stopping ??= (async () => {
        try {
          await p.shutdown();
        } catch {
          /* an unreachable collector must not stop the process from ending */
        }
        trace.disable();
        context.disable();
        propagation.disable();
        provider = undefined;
      })()),
  };
}

export function tracer() {
  return trace.getTracer(TRACER_NAME);
}

/** The context a `traceparent` (and optional `tracestate`) describe; the root context when absent or malformed. */
export function contextFromTraceparent(traceparent: string | undefined, tracestate?: string): Context {
  if (!traceparent) return ROOT_CONTEXT;
  const carrier: Record<string, string> = { traceparent };
  if (tracestate) carrier.tracestate = tracestate;
  return w3c.extract(ROOT_CONTEXT, carrier, { get: (c, k) => c[k], keys: (c) => Object.keys(c) });
}

/**
 * A W3C trace context as it travels: `traceparent`, and `tracestate` when the trace has one
 * (vendors' entries, which every hop must pass on unchanged: Shoal adds none of its own).
 */
export interface TraceContext {
  traceparent: string;
  tracestate?: string;
}

/** The context a TraceContext describes; the root context when there is none. */
export function contextFromTrace(tc: TraceContext | undefined): Context {
  return contextFromTraceparent(tc?.traceparent, tc?.tracestate);
}

/** The `traceparent` of the active span; undefined when off or when there is none. */
export function activeTraceparent(): string | undefined {
  return tracingOn() ? traceparentOf(context.active()) : undefined;
}

/** The trace context of the active span (with its `tracestate`, if any); undefined when off or when there is none. */
export function activeTraceContext(): TraceContext | undefined {
  return tracingOn() ? traceContextOf(context.active()) : undefined;
}

/**
 * The trace context of a span (or of a context's span): a child span keeps its parent's
 * tracestate (the SDK copies it), so this is what the caller sent, re-serialised by the SDK's
 * parser (at most 32 entries, 512 characters). Undefined when off or when there is none.
 */
export function traceContextOf(ctxOrSpan: Context | Span | undefined): TraceContext | undefined {
  const carrier = injected(ctxOrSpan);
  if (carrier?.traceparent === undefined) return undefined;
  return carrier.tracestate ? { traceparent: carrier.traceparent, tracestate: carrier.tracestate } : { traceparent: carrier.traceparent };
}

/** The `traceparent` of a span (or of a context's span); undefined when off or when there is none. */
export function traceparentOf(ctxOrSpan: Context | Span | undefined): string | undefined {
  return injected(ctxOrSpan)?.traceparent;
}

/** The W3C headers (`traceparent`, `tracestate`) of a span or a context's span; undefined when off. */
function injected(ctxOrSpan: Context | Span | undefined): Record<string, string> | undefined {
  if (!tracingOn() || ctxOrSpan === undefined) return undefined;
  const ctx = "spanContext" in ctxOrSpan ? trace.setSpan(ROOT_CONTEXT, ctxOrSpan) : ctxOrSpan;
  const carrier: Record<string, string> = {};
  w3c.inject(ctx, carrier, { set: (c, k, v) => (c[k] = v) });
  return carrier;
}

/** A link to the span a `traceparent` names (for a run that merges several traces' items). */
export function linkTo(traceparent: string | undefined): Link | undefined {
  const sc = trace.getSpanContext(contextFromTraceparent(traceparent));
  return sc && trace.isSpanContextValid(sc) ? { context: sc } : undefined;
}

/**
 * Runs fn inside a new span, child of `parent`, ending it after; an error marks the span and is
 * rethrown. Without a parent span (tracing off, or an item nobody traces) fn runs alone.
 */
export async function inChildSpan<T>(parent: Span | undefined, name: string, fn: (span: Span | undefined) => Promise<T> | T, opts: SpanOptions = {}): Promise<T> {
  if (parent === undefined || !tracingOn()) return fn(undefined);
  const ctx = trace.setSpan(ROOT_CONTEXT, parent);
  const span = tracer().startSpan(name, opts, ctx);
  try {
    return await context.with(trace.setSpan(ctx, span), () => fn(span));
  } catch (err) {
    failSpan(span, err);
    throw err;
  } finally {
    span.end();
  }
}

/** Marks a span failed with the error's message. */
export function failSpan(span: Span, err: unknown): void {
  span.setStatus({ code: SpanStatusCode.ERROR, message: err instanceof Error ? err.message : String(err) });
}

export { context, trace, SpanStatusCode, ROOT_CONTEXT };

/** A new span (child of `parent`, else of the active context); undefined when tracing is off, so call sites pay one check. */
export function startSpan(name: string, opts: SpanOptions = {}, parent?: Context): Span | undefined {
  if (!tracingOn()) return undefined;
  return tracer().startSpan(name, opts, parent ?? context.active());
}

/** Runs fn with `span` as the active span (so spans and traceparents made inside are its children); just fn when there is none. */
export function withinSpan<T>(span: Span | undefined, fn: () => T): T {
  if (span === undefined) return fn();
  return context.with(trace.setSpan(context.active(), span), fn);
}

/** Ends a span, marking it failed when `err` is given. Nothing when there is no span. */
export function endSpan(span: Span | undefined, err?: unknown): void {
  if (span === undefined) return;
  if (err !== undefined) failSpan(span, err);
  span.end();
}

/** Sets an attribute on the active span, if any (e.g. the batch id once a submit has one). */
export function annotateActiveSpan(key: string, value: string | number | boolean): void {
  if (tracingOn()) trace.getActiveSpan()?.setAttribute(key, value);
}
