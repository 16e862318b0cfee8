// The requests that used to stop or hang the coordinator, against real processes: text that
// cannot go into gRPC metadata, stream errors that never reached the client, params nested past
// the decoder's limit, undecodable bytes, and queue gauges that vanished when the queue emptied.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { Client, credentials, Metadata, status, type ServiceError } from "@grpc/grpc-js";
import { createClients, ClientError, type ShoalClients } from "../../cli/client.js";
import { freePort, Stack } from "../harness/processes.js";

const CALL_MS = 10_000;
const KEY = "hardening-key-0123";

function nest(depth: number): Record<string, unknown> {
  let v: Record<string, unknown> = { leaf: "x" };
  for (let i = 1; i < depth; i++) v = { a: v };
  return v;
}

async function refusal(p: Promise<unknown>): Promise<ClientError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof ClientError, `expected a ClientError, got ${String(e)}`);
    return e;
  }
  assert.fail("the call succeeded");
}

async function drain(it: AsyncIterable<unknown>): Promise<unknown[]> {
  const out: unknown[] = [];
  for await (const x of it) out.push(x);
  return out;
}

describe("hardening - no request stops or hangs the coordinator", () => {
  const stack = new Stack();
  let sdk: ShoalClients;
  let metricsPort = 0;

  before(async () => {
    await stack.startNats();
    metricsPort = await freePort();
    await stack.startCoordinator(["--api-keys", `t1:${KEY}`, "--metrics-port", String(metricsPort)]);
    await stack.startWorker("w1", ["--vram", "4GiB"]);
    sdk = createClients(stack.grpcAddr, KEY, { defaultTimeoutMs: CALL_MS });
    const deadline = Date.now() + 60_000;
    while ((await sdk.listWorkers({ timeoutMs: CALL_MS })).length < 1) {
      if (Date.now() > deadline) throw new Error("worker did not register");
      await new Promise((r) => setTimeout(r, 100));
    }
  });

  after(async () => {
    sdk?.close();
    await stack.stop();
  });

  const alive = () => assert.equal(stack.coordinator!.child.exitCode, null, "the coordinator process exited");

  test("hardening - non-ASCII, newlines and lone surrogates in names are refused, and the coordinator lives", async () => {
    const cases: { model: string; params: Record<string, unknown>; path: RegExp }[] = [
      { model: "modèle", params: {}, path: /^items\[0\]\.model: unknown model "modèle"/ },
      { model: "line\nbreak", params: {}, path: /^items\[0\]\.model: unknown model "line\\nbreak"/ },
      { model: "imagegen-tiny", params: { prompt: "x", "clé": 1 }, path: /^items\[0\]\.params\["clé"\]: unknown param/ },
      { model: "imagegen-tiny", params: { prompt: "x", "new\nline": 1 }, path: /^items\[0\]\.params\["new\\nline"\]: unknown param/ },
      { model: "imagegen-tiny", params: { prompt: "x", constructor: 1 }, path: /^items\[0\]\.params\.constructor: unknown param/ },
      { model: "\uD800lone", params: {}, path: /^items\[0\]\.model: unknown model/ },
    ];
    for (const c of cases) {
      const e = await refusal(sdk.submitBatch({ items: [{ model: c.model, params: c.params }] }));
      assert.equal(e.grpcCode, status.INVALID_ARGUMENT, `${JSON.stringify(c.model)}: ${e.message}`);
      assert.equal(e.fieldProblems.length, 1, e.message);
      assert.match(e.fieldProblems[0]!, c.path);
      alive();
    }
    // The process answers the next call as usual.
    assert.ok((await sdk.listModels()).some((m) => m.name === "imagegen-tiny"));
  });

  test("hardening - a refusal with many huge problems still reaches the client, counted whole", async () => {
    const items = Array.from({ length: 50 }, (_, i) => ({ model: `ü${"x".repeat(100_000)}${i}`, params: {} }));
    const e = await refusal(sdk.submitBatch({ items }));
    assert.equal(e.grpcCode, status.INVALID_ARGUMENT);
    assert.equal(e.problemCount, 50);
    assert.ok(e.fieldProblems.length >= 1 && e.fieldProblems.length <= 50);
    assert.match(e.details, /and \d+ more problems?$/);
    assert.ok(e.details.length < 8192, `status message of ${e.details.length} chars`);
    alive();
  });

  test("hardening - params nested past the limit are INVALID_ARGUMENT naming the path", async () => {
    // 20 levels decode and are refused by validation; 300 exceed the protobuf decoder's own
    // limit and are refused from the raw bytes, with the same message.
    for (const depth of [20, 300]) {
      const e = await refusal(sdk.submitBatch({ items: [{ model: "imagegen-tiny", params: { prompt: "x", deep: nest(depth) } }] }));
      assert.equal(e.grpcCode, status.INVALID_ARGUMENT, `depth ${depth}: ${e.message}`);
      assert.match(e.fieldProblems[0]!, /^items\[0\]\.params\.deep(\.a){16}: nested deeper than 16 levels$/, `depth ${depth}`);
    }
    alive();
  });

  test("hardening - bytes that are no protobuf message are INVALID_ARGUMENT on every method", async () => {
    const raw = new Client(stack.grpcAddr, credentials.createInsecure());
    const md = new Metadata();
    md.set("authorization", `Bearer ${KEY}`);
    const garbage = Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f, 0x12, 0x80]);
    const methods = ["SubmitBatch", "RunBatch", "GetBatch", "CancelBatch", "RetryBatch", "ListBatches"];
    try {
      for (const m of methods) {
        const err = await new Promise<ServiceError | null>((resolve) =>
          raw.makeUnaryRequest(`/shoal.v1.BatchService/${m}`, (b: Buffer) => b, (b: Buffer) => b, garbage, md, { deadline: Date.now() + CALL_MS }, (e) => resolve(e)),
        );
        assert.equal(err?.code, status.INVALID_ARGUMENT, `${m}: ${err?.message}`);
        assert.match(err!.details, /not a valid .*Request message/);
      }
    } finally {
      raw.close();
    }
    alive();
  });

  test("hardening - stream errors reach the client as their status", async () => {
    const notFound = await refusal(drain(sdk.watchBatch("no-such-batch", { timeoutMs: CALL_MS })));
    assert.equal(notFound.grpcCode, status.NOT_FOUND, notFound.message);
    const artifact = await refusal(drain(sdk.getArtifact("shoal://artifacts/no-such-batch/x", { timeoutMs: CALL_MS })));
    assert.equal(artifact.grpcCode, status.NOT_FOUND, artifact.message);
    const badUri = await refusal(drain(sdk.getArtifact("http://elsewhere/\u00e9", { timeoutMs: CALL_MS })));
    assert.equal(badUri.grpcCode, status.NOT_FOUND, badUri.message);
    const anonymous = createClients(stack.grpcAddr, "wrong-key", { defaultTimeoutMs: CALL_MS });
    try {
      const unauth = await refusal(drain(anonymous.watchBatch("no-such-batch", { timeoutMs: CALL_MS })));
      assert.equal(unauth.grpcCode, status.UNAUTHENTICATED, unauth.message);
    } finally {
      anonymous.close();
    }
    alive();
  });

  test("hardening - queue gauges read 0 for served models, before and after a batch", async () => {
    const scrape = async () => {
      const res = await fetch(`http://127.0.0.1:${metricsPort}/metrics`, { signal: AbortSignal.timeout(CALL_MS) });
      return res.text();
    };
    const gauge = (text: string, name: string) => text.match(new RegExp(`^${name}\\{model="imagegen-tiny"\\} (\\S+)$`, "m"))?.[1];
    // Wait for a tick of the coordinator after the worker registered (polled, with a deadline).
    const until = Date.now() + 30_000;
    let before = await scrape();
    while (gauge(before, "shoal_queue_items") === undefined && Date.now() < until) {
      await new Promise((r) => setTimeout(r, 200));
      before = await scrape();
    }
    assert.equal(gauge(before, "shoal_queue_items"), "0", "no series for an idle served model");
    assert.equal(gauge(before, "shoal_queue_vram_bytes"), "0");
    const done = await sdk.runBatch({ items: [{ model: "imagegen-tiny", params: { prompt: "after", width: 64, height: 64, steps: 1 } }] }, { timeoutMs: 60_000 });
    assert.equal(done.succeeded, 1);
    const afterText = await scrape();
    assert.equal(gauge(afterText, "shoal_queue_items"), "0");
    assert.equal(gauge(afterText, "shoal_queue_vram_bytes"), "0");
    assert.match(afterText, /^shoal_unexpected_errors_total\{kind="rpc"\} 0$/m);
  });
});
