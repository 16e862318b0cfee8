// `shoal up --otlp-endpoint URL`: up hands the endpoint to the processes it starts (by env), so
// its coordinator, worker and gateway all export their spans there. A real `shoal up` (its own
// nats-server, a coordinator, one simulated worker: its GPU is simulated, items sleep work_ms;
// the HTTP gateway) exports to an OTLP/HTTP receiver in this test process. The test's own
// OTEL_EXPORTER_OTLP_* variables are removed from up's environment, so only the flag can have
// configured them. One batch is submitted with the CLI (its trace starts at the coordinator),
// one over HTTP with a known traceparent and tracestate (its trace starts at the caller); both
// traces must hold the coordinator's and the worker's spans of that batch, the second the
// gateway's too, every one of them carrying the caller's tracestate (passed on through gRPC
// metadata, the batch record and the NATS headers). Then up is stopped with SIGTERM and every
// process it started must be gone.

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { BatchState } from "../../proto/gen/shoal/v1/shoal.js";
import { waitFor } from "../harness/batch-checks.js";
import { TestClient } from "../harness/client.js";
import { newTraceparent, OtlpReceiver, type OtlpSpan } from "../harness/otlp-receiver.js";
import { CLI, ROOT } from "../harness/processes.js";
import { ShoalUp } from "../harness/shoal-up.js";

const ITEMS = 2;

/** Runs the CLI against `addr`; killed (code null) after `timeoutMs`. */
function cli(args: string[], addr: string, timeoutMs: number): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const env: NodeJS.ProcessEnv = { ...process.env, SHOAL_ADDR: addr };
    delete env.SHOAL_API_KEY;
    const c = spawn(process.execPath, [CLI, ...args], { env, cwd: ROOT, timeout: timeoutMs, killSignal: "SIGKILL" });
    let out = "";
    let err = "";
    c.stdout.on("data", (d) => (out += d));
    c.stderr.on("data", (d) => (err += d));
    c.on("exit", (code) => resolve({ code, out, err }));
  });
}

test("tracing - shoal up --otlp-endpoint: its coordinator, worker and gateway export the spans of a batch; SIGTERM ends them all", { timeout: 300_000 }, async () => {
  const receiver = new OtlpReceiver();
  const up = new ShoalUp();
  let client: TestClient | undefined;
  try {
    const port = await receiver.start();
    const env: NodeJS.ProcessEnv = { ...process.env, OTEL_BSP_SCHEDULE_DELAY: "200" };
    // Only the flag may configure the children (the delay above only makes them export sooner).
    for (const k of Object.keys(env)) if (k.startsWith("OTEL_EXPORTER_OTLP_")) delete env[k];
    await up.start({ args: ["--workers", "1", "--simulate", "--gpu", "none", "--vram", "8GiB", "--otlp-endpoint", `http://127.0.0.1:${port}`], env });
    assert.equal(up.children.length, 4, `nats-server, coordinator, worker and gateway: ${up.children.join(", ")}`);
    client = new TestClient(up.grpcAddr);
    await client.waitForWorkers(1, 60_000);

    // With the CLI: no traceparent, so the coordinator starts the trace.
    const batchFile = join(up.dir, "batch.json");
    writeFileSync(batchFile, JSON.stringify(Array.from({ length: ITEMS }, (_, i) => ({ model: "sim-6g", params: { work_ms: 50, tag: `cli ${i}` } }))));
    const submitted = await cli(["submit", batchFile, "--wait"], up.grpcAddr, 120_000);
    assert.equal(submitted.code, 0, submitted.err);
    const cliBatch = /b_[0-9a-v]{20}/.exec(submitted.out)?.[0];
    assert.ok(cliBatch, `no batch id in: ${submitted.out}`);

    // Over HTTP, continuing the caller's trace.
    const caller = newTraceparent();
    const tracestate = "vendor1=opaque-value,vendor2=k:v";
    const res = await fetch(`${up.httpUrl}/v1/batch`, {
      method: "POST",
      headers: { "content-type": "application/json", traceparent: caller.traceparent, tracestate },
      body: JSON.stringify({ requests: Array.from({ length: ITEMS }, (_, i) => ({ model: "sim-6g", work_ms: 50, tag: `http ${i}` })) }),
      signal: AbortSignal.timeout(120_000),
    });
    const body = (await res.json()) as { batch_id: string; results: { status: string }[] };
    assert.equal(res.status, 200, JSON.stringify(body));
    assert.deepEqual(body.results.map((r) => r.status), Array(ITEMS).fill("success"));
    assert.equal((await client.get(body.batch_id)).state, BatchState.BATCH_STATE_COMPLETED);

    // Each process exports on its own schedule: wait for the last spans of every item.
    const ofBatch = (id: string) => receiver.spans.filter((s) => s.attributes["shoal.batch_id"] === id);
    const named = (spans: OtlpSpan[], name: string) => spans.filter((s) => s.name === name);
    const complete = (id: string) => named(ofBatch(id), "shoal.outcome").length === ITEMS && named(ofBatch(id), "shoal.item").length === ITEMS;
    const gatewayExported = () => receiver.spans.some((s) => s.traceId === caller.traceId && s.service === "shoal-gateway");
    await waitFor("the outcome (coordinator) and item (worker) spans of both batches, and the gateway's of the HTTP call", () => complete(cliBatch) && complete(body.batch_id) && gatewayExported(), 60_000).catch((err: unknown) => {
      const exporting = up.stderr.split("\n").filter((l) => l.includes("exporting traces"));
      throw new Error(`${String(err)}; services seen: ${[...new Set(receiver.spans.map((s) => s.service))].join(", ")}; up's children said: ${exporting.join(" | ")}`);
    });

    /** The batch's SubmitBatch, item and outcome spans: one trace, each from the process it names, all with the trace's tracestate. */
    const checkBatch = (batchId: string, traceState: string): OtlpSpan => {
      const spans = ofBatch(batchId);
      const [submit, ...more] = named(spans, "shoal.v1.BatchService/SubmitBatch");
      assert.ok(submit, `a SubmitBatch span of ${batchId}: ${spans.map((s) => `${s.service}/${s.name}`).join(", ")}`);
      assert.equal(more.length, 0);
      assert.equal(submit.service, "shoal-coordinator");
      const trace = receiver.spans.filter((s) => s.traceId === submit.traceId);
      const withState = (s: OtlpSpan) => `${s.service}/${s.name}: ${JSON.stringify(s.traceState)}`;
      assert.deepEqual(trace.filter((s) => s.traceState !== traceState).map(withState), [], `every span of the trace has tracestate ${JSON.stringify(traceState)}`);
      for (const item of named(spans, "shoal.item")) {
        assert.equal(item.service, "shoal-worker");
        assert.equal(item.traceId, submit.traceId, "the worker's item span is in the submitter's trace");
        assert.equal(item.attributes["shoal.worker_id"], "w1");
        const place = trace.find((s) => s.spanId === item.parentSpanId);
        assert.equal(place?.name, "shoal.place");
        assert.equal(place?.service, "shoal-coordinator");
        assert.equal(trace.filter((s) => s.name === "shoal.run" && s.parentSpanId === item.spanId && s.service === "shoal-worker").length, 1, "the run under the item");
        const outcome = named(spans, "shoal.outcome").find((s) => s.parentSpanId === item.spanId);
        assert.equal(outcome?.service, "shoal-coordinator", "the coordinator's outcome span is a child of the worker's item span");
      }
      return submit;
    };
    const cliSubmit = checkBatch(cliBatch, "");
    assert.equal(cliSubmit.parentSpanId, "", "the CLI sends no traceparent: the trace starts at the coordinator");
    const httpSubmit = checkBatch(body.batch_id, tracestate);
    assert.equal(httpSubmit.traceId, caller.traceId, "the HTTP batch stays in the caller's trace");
    const gatewaySpan = receiver.spans.find((s) => s.spanId === httpSubmit.parentSpanId);
    assert.equal(gatewaySpan?.service, "shoal-gateway");
    assert.equal(gatewaySpan?.name, "POST /v1/batch");
    assert.equal(gatewaySpan?.parentSpanId, caller.spanId);

    // Stopping up stops everything it started.
    client.close();
    client = undefined;
    const stopped = await up.stop(60_000);
    assert.equal(stopped.timedOut, false, `shoal up did not exit within 60 s of SIGTERM:\n${up.stderr.slice(-2000)}`);
    assert.equal(stopped.code, 0, `shoal up exit code; stderr:\n${up.stderr.slice(-2000)}`);
    assert.deepEqual(stopped.survivors, [], "processes shoal up started outlived it");
  } finally {
    client?.close();
    await up.stop(30_000);
    await receiver.stop();
  }
});
