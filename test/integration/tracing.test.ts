// OpenTelemetry traces across real processes: nats-server, a coordinator, an imagegen worker and
// two gateways. An OTLP/HTTP receiver inside this test process takes what they export (JSON, the
// http exporter's encoding). The coordinator is configured by --otlp-endpoint, the worker by
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, the first gateway by OTEL_EXPORTER_OTLP_ENDPOINT; the
// second gateway has no configuration at all.
//
// One batch is submitted over gRPC with a known `traceparent` in the metadata, another over
// HTTP with a known `traceparent` header. Both traces must hold the spans of every process in
// the right parent chain (gateway → SubmitBatch → validate, queue, place → worker item → run,
// upload → outcome). Their items have the same shape and wait behind a slow item on a worker
// with one inference thread, so dynamic batching merges them into one run: its span links to
// items of both traces. A batch submitted while no worker runs, then a kill -9 and restart of
// the coordinator: the new coordinator places its items under the SubmitBatch span of the old
// one (the traceparent is kept in the batch record). The unconfigured gateway sends nothing,
// not even to OTLP's default address (localhost:4318), which this test listens on.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { credentials, Metadata } from "@grpc/grpc-js";
import { BatchServiceClient, BatchState, WorkerState, type SubmitBatchRequest, type SubmitBatchResponse } from "../../proto/gen/shoal/v1/shoal.js";
import { waitFor } from "../harness/batch-checks.js";
import { TestClient } from "../harness/client.js";
import { newTraceparent, OtlpReceiver, type OtlpSpan } from "../harness/otlp-receiver.js";
import { Stack } from "../harness/processes.js";

const SMALL = { width: 64, height: 64, steps: 2 };

describe("tracing - OTLP traces across gateway, coordinator and worker", () => {
  const stack = new Stack();
  const receiver = new OtlpReceiver();
  const defaultAddress = new OtlpReceiver();
  let client: TestClient;
  let raw: BatchServiceClient;
  let gatewayUrl = "";
  let quietGatewayUrl = "";
  let endpoint = "";
  const workerEnv = () => ({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `${endpoint}/v1/traces` });
  const workerArgs = ["--vram", "16GiB", "--threads", "1", "--max-in-flight", "16"];

  before(async () => {
    for (const k of ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]) delete process.env[k];
    // Children inherit it: spans are exported within a fifth of a second instead of 5 s.
    process.env.OTEL_BSP_SCHEDULE_DELAY = "200";
    const port = await receiver.start();
    // Where an exporter without a configured URL would send (OTLP/HTTP's default).
    await defaultAddress.start(4318, "127.0.0.1").catch((err: unknown) => {
      throw new Error(`this test listens on 127.0.0.1:4318 (OTLP's default port) to see that nothing is sent there; it is taken: ${String(err)}`);
    });
    endpoint = `http://127.0.0.1:${port}`;
    await stack.startNats();
    await stack.startCoordinator(["--otlp-endpoint", endpoint]);
    // One inference thread: items queued behind a running one are merged into one run.
    await stack.startWorker("w-trace", workerArgs, workerEnv());
    gatewayUrl = (await stack.startGateway([], { OTEL_EXPORTER_OTLP_ENDPOINT: endpoint })).url;
    quietGatewayUrl = (await stack.startGateway()).url;
    client = new TestClient(stack.grpcAddr);
    raw = new BatchServiceClient(stack.grpcAddr, credentials.createInsecure());
    await client.waitForWorkers(1);
  });

  after(async () => {
    raw?.close();
    await stack.stop();
    await receiver.stop();
    await defaultAddress.stop();
    delete process.env.OTEL_BSP_SCHEDULE_DELAY;
  });

  const submitWithTrace = (req: SubmitBatchRequest, traceparent: string) =>
    new Promise<SubmitBatchResponse>((resolve, reject) => {
      const md = new Metadata();
      md.set("traceparent", traceparent);
      raw.submitBatch(req, md, { deadline: Date.now() + 30_000 }, (err, res) => (err ? reject(err) : resolve(res!)));
    });

  test("one trace from the caller through every process; a merged run links both traces", { timeout: 240_000 }, async () => {
    // The slow item first, running alone on the only thread.
    const blocker = await client.submit({ items: [{ model: "imagegen-tiny", params: { prompt: "slow", width: 512, height: 512, steps: 30 } }] });
    await waitFor("the slow item to run", async () => (await client.get(blocker.batchId)).running === 1, 60_000);

    const grpcTrace = newTraceparent();
    const httpTrace = newTraceparent();
    const [viaGrpc, viaHttp] = await Promise.all([
      submitWithTrace(
        { items: [0, 1].map((i) => ({ model: "imagegen-tiny", params: { prompt: `grpc ${i}`, ...SMALL } })), idempotencyKey: "", webhook: undefined, priority: 0, labels: {} },
        grpcTrace.traceparent,
      ),
      fetch(`${gatewayUrl}/v1/batch?wait=false`, {
        method: "POST",
        headers: { "content-type": "application/json", traceparent: httpTrace.traceparent },
        body: JSON.stringify({ requests: [0, 1].map((i) => ({ prompt: `http ${i}`, ...SMALL })) }),
        signal: AbortSignal.timeout(30_000),
      }).then(async (r) => {
        assert.equal(r.status, 202, await r.clone().text());
        return (await r.json()) as { batch_id: string };
      }),
    ]);
    for (const id of [blocker.batchId, viaGrpc.batchId, viaHttp.batch_id]) {
      assert.equal((await client.waitTerminal(id)).state, BatchState.BATCH_STATE_COMPLETED);
    }

    const inTrace = (traceId: string) => receiver.spans.filter((s) => s.traceId === traceId);
    const named = (spans: OtlpSpan[], name: string) => spans.filter((s) => s.name === name);
    // Each process exports on its own schedule: wait for the last spans of every item from both.
    const complete = (traceId: string) => ["shoal.outcome", "shoal.item", "shoal.upload"].every((n) => named(inTrace(traceId), n).length === 2);
    await waitFor("the outcome (coordinator) and item (worker) spans of all four items", () => complete(grpcTrace.traceId) && complete(httpTrace.traceId), 60_000);

    const checkChain = (traceId: string, rootParent: string, batchId: string) => {
      const spans = inTrace(traceId);
      const byId = new Map(spans.map((s) => [s.spanId, s]));
      const parentOf = (s: OtlpSpan) => byId.get(s.parentSpanId);
      const [submit] = named(spans, "shoal.v1.BatchService/SubmitBatch");
      assert.ok(submit, `SubmitBatch span in trace ${traceId}: ${spans.map((s) => s.name).join(", ")}`);
      assert.equal(submit.service, "shoal-coordinator");
      assert.equal(submit.attributes["shoal.batch_id"], batchId);
      const [validate] = named(spans, "shoal.validate");
      assert.equal(validate?.parentSpanId, submit.spanId);
      for (const name of ["shoal.queue", "shoal.place"]) {
        const list = named(spans, name);
        assert.equal(list.length, 2, name);
        for (const s of list) {
          assert.equal(s.parentSpanId, submit.spanId, `${name} under SubmitBatch`);
          assert.equal(s.service, "shoal-coordinator");
        }
      }
      const items = named(spans, "shoal.item");
      assert.equal(items.length, 2);
      for (const item of items) {
        assert.equal(item.service, "shoal-worker");
        assert.equal(parentOf(item)?.name, "shoal.place", "the worker's item span is a child of its placement");
        assert.equal(parentOf(item)?.attributes["shoal.item"], item.attributes["shoal.item"]);
        for (const child of ["shoal.run", "shoal.upload"]) {
          assert.equal(spans.filter((s) => s.name === child && s.parentSpanId === item.spanId).length, 1, `${child} under item ${String(item.attributes["shoal.item"])}`);
        }
        const outcome = spans.find((s) => s.name === "shoal.outcome" && s.parentSpanId === item.spanId);
        assert.equal(outcome?.service, "shoal-coordinator", "the coordinator's outcome span is a child of the worker's item span");
      }
      return submit;
    };

    const grpcSubmit = checkChain(grpcTrace.traceId, grpcTrace.spanId, viaGrpc.batchId);
    assert.equal(grpcSubmit.parentSpanId, grpcTrace.spanId, "SubmitBatch continues the caller's traceparent from gRPC metadata");
    const httpSubmit = checkChain(httpTrace.traceId, httpTrace.spanId, viaHttp.batch_id);
    const gatewaySpan = receiver.spans.find((s) => s.spanId === httpSubmit.parentSpanId);
    assert.equal(gatewaySpan?.service, "shoal-gateway");
    assert.equal(gatewaySpan?.name, "POST /v1/batch");
    assert.equal(gatewaySpan?.parentSpanId, httpTrace.spanId, "the gateway's span continues the traceparent header");

    // Dynamic batching merged items of both traces into one run: its span links to both.
    const runsOf = (traceId: string) => new Set(named(inTrace(traceId), "shoal.run").map((s) => s.spanId));
    const merged = receiver.spans.filter(
      (s) => s.name === "shoal.inference" && s.links.some((l) => runsOf(grpcTrace.traceId).has(l.spanId)) && s.links.some((l) => runsOf(httpTrace.traceId).has(l.spanId)),
    );
    assert.equal(merged.length, 1, `one inference run links items of both traces; inference spans: ${JSON.stringify(receiver.spans.filter((s) => s.name === "shoal.inference").map((s) => s.attributes))}`);
    assert.equal(merged[0]!.attributes["shoal.inference.batch_size"], 4);
    assert.equal(merged[0]!.service, "shoal-worker");
  });

  test("items placed by a restarted coordinator stay in the submitter's trace (traceparent kept in the batch record)", { timeout: 240_000 }, async () => {
    // No worker: the items wait in the coordinator's queue.
    await stack.kill(stack.procs.find((p) => p.name === "worker w-trace")!);
    await waitFor("the worker to be lost", async () => (await client.workers()).every((w) => w.state !== WorkerState.WORKER_STATE_READY), 30_000);
    const t = newTraceparent();
    const { batchId } = await submitWithTrace(
      { items: [0, 1].map((i) => ({ model: "imagegen-tiny", params: { prompt: `after restart ${i}`, ...SMALL } })), idempotencyKey: "", webhook: undefined, priority: 0, labels: {} },
      t.traceparent,
    );
    await waitFor("the SubmitBatch span to be exported", () => receiver.spans.some((s) => s.traceId === t.traceId && s.name === "shoal.v1.BatchService/SubmitBatch"), 30_000);
    const before = receiver.spans.filter((s) => s.traceId === t.traceId).map((s) => s.name);
    assert.ok(!before.includes("shoal.place"), `nothing placed before the restart: ${before.join(", ")}`);
    const submit = receiver.spans.find((s) => s.traceId === t.traceId && s.name === "shoal.v1.BatchService/SubmitBatch")!;

    await stack.kill(stack.coordinator!);
    await stack.startCoordinator(["--otlp-endpoint", endpoint]);
    await stack.startWorker("w-trace", workerArgs, workerEnv());
    assert.equal((await client.waitTerminal(batchId)).state, BatchState.BATCH_STATE_COMPLETED);
    const inTrace = () => receiver.spans.filter((s) => s.traceId === t.traceId);
    await waitFor("the items' spans after the restart", () => inTrace().filter((s) => s.name === "shoal.outcome").length === 2 && inTrace().filter((s) => s.name === "shoal.item").length === 2, 60_000);
    const places = inTrace().filter((s) => s.name === "shoal.place");
    assert.equal(places.length, 2);
    for (const p of places) assert.equal(p.parentSpanId, submit.spanId, "placed by the new coordinator under the stored SubmitBatch span");
    for (const item of inTrace().filter((s) => s.name === "shoal.item")) assert.ok(places.some((p) => p.spanId === item.parentSpanId));
  });

  test("a gateway without OTLP configuration exports nothing", { timeout: 120_000 }, async () => {
    const quiet = newTraceparent();
    const res = await fetch(`${quietGatewayUrl}/v1/batch`, {
      method: "POST",
      headers: { "content-type": "application/json", traceparent: quiet.traceparent },
      body: JSON.stringify({ requests: [{ prompt: "untraced gateway", ...SMALL }] }),
      signal: AbortSignal.timeout(60_000),
    });
    assert.equal(res.status, 200, await res.clone().text());
    const body = (await res.json()) as { batch_id: string };
    // The coordinator (configured) still traces the call, as a trace of its own: the quiet
    // gateway neither exported its span nor passed the caller's traceparent on.
    await waitFor("the coordinator's spans of that batch", () => receiver.spans.some((s) => s.name === "shoal.outcome" && s.attributes["shoal.batch_id"] === body.batch_id), 60_000);
    const submit = receiver.spans.find((s) => s.name === "shoal.v1.BatchService/SubmitBatch" && s.attributes["shoal.batch_id"] === body.batch_id);
    assert.ok(submit);
    assert.notEqual(submit.traceId, quiet.traceId);
    assert.equal(submit.parentSpanId, "");
    assert.equal(receiver.spans.filter((s) => s.traceId === quiet.traceId).length, 0);
    assert.equal(defaultAddress.requests, 0, "nothing was sent to OTLP's default address");
  });
});
