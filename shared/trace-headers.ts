// Trace context of items in NATS message headers. One NATS message carries many items (an
// assignment of one scheduling pass, a group commit of outcomes), each possibly of another
// trace, so the standard `traceparent` header cannot say it alone: every item gets a value of
// the multi-valued header below, "<lease token> <traceparent>". The wire messages themselves
// are untouched, so a coordinator and a worker of which only one traces still understand
// each other. Nothing is added when tracing is off.

import { headers, type MsgHdrs } from "@nats-io/transport-node";

export const ITEM_TRACE_HEADER = "Shoal-Item-Traceparent";

/** Headers with each (token, traceparent) pair that has a traceparent; undefined when none has. */
export function itemTraceHeaders(pairs: Iterable<[token: string, traceparent: string | undefined]>): MsgHdrs | undefined {
  let h: MsgHdrs | undefined;
  for (const [token, tp] of pairs) {
    if (!tp) continue;
    (h ??= headers()).append(ITEM_TRACE_HEADER, `${token} ${tp}`);
  }
  return h;
}

/** Token → traceparent from a message's headers (empty when it has none). */
export function itemTracesFrom(h: MsgHdrs | undefined): Map<string, string> {
  const out = new Map<string, string>();
  if (!h) return out;
  for (const v of h.values(ITEM_TRACE_HEADER)) {
    const at = v.indexOf(" ");
    if (at > 0) out.set(v.slice(0, at), v.slice(at + 1).trim());
  }
  return out;
}
