// shared/tracing.ts and shared/trace-headers.ts: where spans go (flag and standard env, in
// their order), that nothing happens while tracing is off, the per-item NATS header values, and
// one start/stop against a real OTLP/HTTP listener in this process (the export request, the
// flush at stop, stop's idempotence).

import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { ConfigError } from "../../shared/errors.js";
import { headers } from "@nats-io/transport-node";
import { ITEM_TRACE_HEADER, ITEM_TRACESTATE_HEADER, itemTraceHeaders, itemTracesFrom } from "../../shared/trace-headers.js";
import { activeTraceContext, activeTraceparent, contextFromTrace, contextFromTraceparent, inChildSpan, linkTo, otlpTracesUrl, startSpan, startTracing, traceContextOf, traceparentOf, tracingOn, withinSpan } from "../../shared/tracing.js";

const TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const TS = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";

describe("tracing", () => {
  test("tracing - the OTLP URL: flag, then OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as is, then OTEL_EXPORTER_OTLP_ENDPOINT; none is off", () => {
    assert.equal(otlpTracesUrl(undefined, {}), undefined);
    assert.equal(otlpTracesUrl("", { OTEL_EXPORTER_OTLP_ENDPOINT: "  " }), undefined);
    assert.equal(otlpTracesUrl("http://collector:4318/", {}), "http://collector:4318/v1/traces");
    assert.equal(otlpTracesUrl(undefined, { OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318" }), "http://c:4318/v1/traces");
    assert.equal(otlpTracesUrl(undefined, { OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "https://c/custom/path" }), "https://c/custom/path");
    assert.equal(otlpTracesUrl(undefined, { OTEL_EXPORTER_OTLP_ENDPOINT: "http://a:1", OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "http://b:2/t" }), "http://b:2/t");
    assert.equal(otlpTracesUrl("http://flag:3", { OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "http://b:2/t" }), "http://flag:3/v1/traces");
    assert.throws(() => otlpTracesUrl("collector:4318:x", {}), (e: unknown) => e instanceof ConfigError && /--otlp-endpoint/.test(e.message));
    assert.throws(() => otlpTracesUrl("grpc://collector:4317", {}), (e: unknown) => e instanceof ConfigError && /http\(s\)/.test(e.message));
  });

  test("tracing - off: no spans, no traceparents, functions run as they are", async () => {
    assert.equal(tracingOn(), false);
    assert.equal(startTracing("shoal-worker", undefined).url, undefined);
    assert.equal(tracingOn(), false);
    assert.equal(startSpan("x"), undefined);
    assert.equal(activeTraceparent(), undefined);
    assert.equal(traceparentOf(contextFromTraceparent(TP)), undefined);
    assert.equal(traceContextOf(contextFromTraceparent(TP, TS)), undefined);
    assert.equal(activeTraceContext(), undefined);
    assert.equal(await inChildSpan(undefined, "y", (s) => (s === undefined ? 7 : 0)), 7);
    assert.equal(withinSpan(undefined, () => 8), 8);
  });

  test("tracing - each item's traceparent in one multi-valued NATS header, by lease token", () => {
    assert.equal(itemTraceHeaders([["t1", undefined]]), undefined, "no header when no item is traced");
    const h = itemTraceHeaders([["1.abc", TP], ["2.def", undefined], ["3.ghi", TP.replace("b7ad", "c7ad")]]);
    assert.ok(h);
    assert.equal(h.values(ITEM_TRACE_HEADER).length, 2);
    const back = itemTracesFrom(h);
    assert.deepEqual([...back], [["1.abc", { traceparent: TP }], ["3.ghi", { traceparent: TP.replace("b7ad", "c7ad") }]]);
    assert.equal(h.values(ITEM_TRACESTATE_HEADER).length, 0, "no tracestate header without a tracestate");
    assert.deepEqual([...itemTracesFrom(undefined)], []);
  });

  test("tracing - an item's tracestate travels beside its traceparent, in a header of its own", () => {
    const h = itemTraceHeaders([["1.abc", { traceparent: TP, tracestate: TS }], ["2.def", { traceparent: TP }], ["3.ghi", undefined]])!;
    // The traceparent header is what it was (a peer of an earlier version reads it unchanged).
    assert.deepEqual(h.values(ITEM_TRACE_HEADER), [`1.abc ${TP}`, `2.def ${TP}`]);
    assert.deepEqual(h.values(ITEM_TRACESTATE_HEADER), [`1.abc ${TS}`]);
    assert.deepEqual([...itemTracesFrom(h)], [["1.abc", { traceparent: TP, tracestate: TS }], ["2.def", { traceparent: TP }]]);
    // A tracestate whose item has no traceparent names no trace: ignored.
    const orphan = headers();
    orphan.append(ITEM_TRACE_HEADER, `1.abc ${TP}`);
    orphan.append(ITEM_TRACESTATE_HEADER, `9.zzz ${TS}`);
    assert.deepEqual([...itemTracesFrom(orphan)], [["1.abc", { traceparent: TP }]]);
  });

  test("tracing - started: spans continue a traceparent, links name it, stop() flushes them over OTLP/HTTP once", async () => {
    const bodies: { url: string; body: any }[] = [];
    const server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        bodies.push({ url: req.url ?? "", body: JSON.parse(Buffer.concat(chunks).toString("utf8")) });
        res.writeHead(200, { "content-type": "application/json" }).end("{}");
      });
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    const port = (server.address() as { port: number }).port;
    try {
      const handle = startTracing("shoal-coordinator", otlpTracesUrl(`http://127.0.0.1:${port}`, {}));
      assert.equal(tracingOn(), true);
      const parent = startSpan("parent", {}, contextFromTraceparent(TP))!;
      const tp = traceparentOf(parent)!;
      assert.match(tp, /^00-0af7651916cd43dd8448eb211c80319c-[0-9a-f]{16}-01$/, "same trace, new span");
      const inner = await inChildSpan(parent, "child", () => activeTraceparent());
      assert.match(inner ?? "", /^00-0af7651916cd43dd8448eb211c80319c-/);
      // A tracestate comes in with the traceparent and goes out with every descendant's.
      const stated = startSpan("stated", {}, contextFromTrace({ traceparent: TP, tracestate: TS }))!;
      const statedChild = await inChildSpan(stated, "stated-child", () => activeTraceContext());
      assert.equal(statedChild?.tracestate, TS);
      assert.match(statedChild?.traceparent ?? "", /^00-0af7651916cd43dd8448eb211c80319c-/);
      assert.deepEqual(traceContextOf(stated), { traceparent: traceparentOf(stated), tracestate: TS });
      assert.deepEqual(traceContextOf(parent), { traceparent: tp }, "no tracestate: none made up");
      // Not a tracestate (a member without '='): the SDK's parser drops it, nothing is passed on.
      assert.deepEqual(traceContextOf(contextFromTrace({ traceparent: TP, tracestate: "no equals sign" })), { traceparent: TP });
      stated.end();
      const linked = startSpan("merged", { links: [linkTo(TP)!] })!;
      linked.end();
      parent.end();
      await handle.stop();
      await handle.stop();
      assert.equal(tracingOn(), false);
      const spans = bodies.flatMap((b) => b.body.resourceSpans.flatMap((rs: any) => rs.scopeSpans.flatMap((ss: any) => ss.spans.map((s: any) => ({ ...s, service: rs.resource.attributes.find((a: any) => a.key === "service.name").value.stringValue })))));
      assert.deepEqual(bodies.map((b) => b.url).filter((u) => u !== "/v1/traces"), []);
      assert.deepEqual(spans.map((s: any) => s.name).sort(), ["child", "merged", "parent", "stated", "stated-child"]);
      assert.equal(spans.find((s: any) => s.name === "stated-child").traceState, TS, "the exported span carries the tracestate");
      const byName = (n: string) => spans.find((s: any) => s.name === n);
      assert.equal(byName("parent").parentSpanId, "b7ad6b7169203331");
      assert.equal(byName("child").parentSpanId, byName("parent").spanId);
      assert.deepEqual(byName("merged").links.map((l: any) => [l.traceId, l.spanId]), [["0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"]]);
      assert.ok(spans.every((s: any) => s.service === "shoal-coordinator"));
    } finally {
      await new Promise<void>((r) => server.close(() => r()));
    }
  });
});
