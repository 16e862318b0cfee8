// The coordinator's spans of each item, in the trace of the call that submitted its batch (its
// `traceparent` and `tracestate` are stored in the batch record): how long it waited in the queue, its placement
// (the assignment request to the worker, whose span the worker's spans hang under), and the
// outcome when it comes back. Every function returns at once when tracing is off.

import type { MsgHdrs } from "@nats-io/transport-node";
import type { BatchRecord, ResultLogEntry } from "../proto/gen/shoal/v1/wire.js";
import { itemTraceHeaders, itemTracesFrom } from "../shared/trace-headers.js";
import { activeTraceContext, contextFromTrace, contextFromTraceparent, endSpan, SpanKind, startSpan, traceContextOf, tracingOn, type Span } from "../shared/tracing.js";
import type { Placed } from "./scheduler/engine.js";

export interface PlacementSpans {
  /** The NATS headers of the assignment: each item's placement span. */
  headers: MsgHdrs | undefined;
  /** Ends the spans once the worker answered (or did not): taken or not, per token. */
  end(accepted: Set<string>, why: string): void;
}

/** The submitting call's trace context, as the batch record keeps it (nothing when off or untraced). */
export function submitterTrace(): Pick<BatchRecord, "traceparent" | "tracestate"> {
  const tc = activeTraceContext();
  return { traceparent: tc?.traceparent, tracestate: tc?.tracestate };
}

/** Spans `shoal.queue` (queued → placed) and `shoal.place` (open until the worker answers) of each item sent to a worker. */
export function placementSpans(workerId: string, list: Placed[]): PlacementSpans | undefined {
  if (!tracingOn()) return undefined;
  const places = new Map<string, Span>();
  for (const { batch, index, lease } of list) {
    const parent = contextFromTraceparent(batch.record.traceparent, batch.record.tracestate);
    const slot = batch.items[index]!;
    const attrs = { "shoal.batch_id": batch.id, "shoal.item": index, "shoal.attempt": slot.attempts, "shoal.model": slot.model };
    endSpan(startSpan("shoal.queue", { attributes: attrs, startTime: slot.queuedAtMs }, parent), undefined);
    const place = startSpan("shoal.place", { kind: SpanKind.PRODUCER, attributes: { ...attrs, "shoal.worker_id": workerId, "shoal.gpu": lease.gpuIndex }, startTime: lease.assignedAtMs }, parent);
    if (place) places.set(lease.token, place);
  }
  return {
    headers: itemTraceHeaders([...places].map(([token, span]) => [token, traceContextOf(span)])),
    end: (accepted, why) => {
      for (const [token, span] of places) {
        span.setAttribute("shoal.accepted", accepted.has(token));
        endSpan(span, accepted.has(token) ? undefined : new Error(why || "not taken"));
      }
    },
  };
}

/** One `shoal.outcome` span per outcome of a live results entry, child of the worker's item span (its header); end them with the returned function. */
export function outcomeSpans(entry: ResultLogEntry, hdrs: MsgHdrs | undefined): (() => void) | undefined {
  if (!tracingOn() || entry.entry?.$case !== "results") return undefined;
  const traces = itemTracesFrom(hdrs);
  if (traces.size === 0) return undefined;
  const spans: Span[] = [];
  for (const o of entry.entry.results.outcomes) {
    const tc = o.lease ? traces.get(o.lease.token) : undefined;
    if (!tc || !o.lease) continue;
    const span = startSpan(
      "shoal.outcome",
      { kind: SpanKind.CONSUMER, attributes: { "shoal.batch_id": o.lease.batchId, "shoal.item": o.lease.index, "shoal.status": o.status, "shoal.worker_id": entry.entry.results.workerId.slice(0, 64) } },
      contextFromTrace(tc),
    );
    if (span) spans.push(span);
  }
  return () => spans.forEach((s) => s.end());
}
