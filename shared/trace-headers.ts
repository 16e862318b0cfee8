// Trace context of items in NATS message headers. One NATS message carries many items (an
// assignment of one scheduling pass, a group commit of outcomes), each possibly of another
// trace, so the standard `traceparent` header cannot say it alone: every item gets a value of
// the multi-valued header below, "<lease token> <traceparent>", and, when its trace has a
// `tracestate`, one of a second header, "<lease token> <tracestate>". The tracestate is a
// header of its own so that a peer of an earlier version, which reads only the first, still
// reads every traceparent. The wire messages themselves are untouched, so a coordinator and a
// worker of which only one traces still understand each other. Nothing is added when tracing
// is off.

import { headers, type MsgHdrs } from "@nats-io/transport-node";
import type { TraceContext } from "./tracing.js";

export const ITEM_TRACE_HEADER = "Shoal-Item-Traceparent";
export const ITEM_TRACESTATE_HEADER = "Shoal-Item-Tracestate";

/**
 * Headers with each (token, trace) pair that has a traceparent (a bare string is a traceparent
 * without tracestate); undefined when none has.
 */
export function itemTraceHeaders(pairs: Iterable<[token: string, trace: TraceContext | string | undefined]>): MsgHdrs | undefined {
  let h: MsgHdrs | undefined;
  for (const [token, trace] of pairs) {
    const tc = typeof trace === "string" ? { traceparent: trace } : trace;
    if (!tc?.traceparent) continue;
    (h ??= headers()).append(ITEM_TRACE_HEADER, `${token} ${tc.traceparent}`);
    if (tc.tracestate) h.append(ITEM_TRACESTATE_HEADER, `${token} ${tc.tracestate}`);
  }
  return h;
}

/** Token → trace context from a message's headers (empty when it has none); a tracestate without its traceparent is ignored. */
export function itemTracesFrom(h: MsgHdrs | undefined): Map<string, TraceContext> {
  const out = new Map<string, TraceContext>();
  if (!h) return out;
  for (const [token, traceparent] of tokenValues(h, ITEM_TRACE_HEADER)) out.set(token, { traceparent });
  for (const [token, tracestate] of tokenValues(h, ITEM_TRACESTATE_HEADER)) {
    const tc = out.get(token);
    if (tc && tracestate) tc.tracestate = tracestate;
  }
  return out;
}

/** The "<token> <value>" values of a multi-valued header. */
function* tokenValues(h: MsgHdrs, name: string): Generator<[string, string]> {
  for (const v of h.values(name)) {
    const at = v.indexOf(" ");
    if (at > 0) yield [v.slice(0, at), v.slice(at + 1).trim()];
  }
}
