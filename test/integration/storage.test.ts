// Bounded durable state with real processes and a real nats-server given small limits:
// retention ages batches out of GetBatch and ListBatches; a full store refuses SubmitBatch with
// RESOURCE_EXHAUSTED (UNAVAILABLE while NATS is down) and keeps nothing it refused; a terminal
// write that fails is retried until it is stored, without a coordinator restart; ListBatches
// pages from storage, and finished batches do not stay in the coordinator's memory.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { status } from "@grpc/grpc-js";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { BatchState, ItemStatus, WorkerState } from "../../proto/gen/shoal/v1/shoal.js";
import { BatchRecord } from "../../proto/gen/shoal/v1/wire.js";
import { encodeMessage } from "../../shared/codec.js";
import { newBatchId } from "../../shared/ids.js";
import { ensureInfrastructure } from "../../shared/jetstream-setup.js";
import { Names } from "../../shared/subjects.js";
import { Stack, freePort } from "../harness/processes.js";
import { TestClient, grpcCode } from "../harness/client.js";
import { assertWholeBatch, pollUntilTerminal, waitFor } from "../harness/batch-checks.js";

const SIM = ["--simulate", "--vram", "40GB"];
const CALL = { timeoutMs: 30_000 };

async function metric(port: number, line: RegExp): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(10_000) })).text();
  const m = text.split("\n").find((l) => line.test(l));
  assert.ok(m, `no series matches ${line}`);
  return Number(m.split(" ").pop());
}

/** What the failed call said: its gRPC code and message. */
async function refusal(p: Promise<unknown>): Promise<{ code: number | undefined; message: string }> {
  try {
    await p;
  } catch (err) {
    return { code: grpcCode(err), message: (err as Error).message };
  }
  assert.fail("the call was expected to fail");
}

async function withNats<T>(url: string, fn: (jsm: Awaited<ReturnType<typeof jetstreamManager>>) => Promise<T>): Promise<T> {
  const nc = await connect({ servers: url, timeout: 10_000 });
  try {
    return await fn(await jetstreamManager(nc, { timeout: 10_000 }));
  } finally {
    await nc.close();
  }
}

/**
 * Starts a worker so its models are registered, then kills it and waits until the coordinator
 * has marked it lost: batches submitted now stay queued.
 */
async function registerSimModels(stack: Stack, client: TestClient): Promise<void> {
  const w = await stack.startWorker("registrar", SIM);
  await client.waitForWorkers(1);
  await stack.kill(w);
  await waitFor("the registrar to be lost", async () => (await client.sdk.listWorkers(CALL)).every((x) => x.state !== WorkerState.WORKER_STATE_READY), 30_000);
}

describe("storage - retention", () => {
  const stack = new Stack();
  let client: TestClient;

  before(async () => {
    await stack.startNats();
    await stack.startCoordinator(["--retention", "2s"]);
    await stack.startWorker("w1", SIM);
    client = new TestClient(stack.grpcAddr);
    await client.waitForWorkers(1);
  });

  after(async () => {
    client?.close();
    await stack.stop();
  });

  test("storage - every stream and bucket gets the retention; a restart with another one updates them", async () => {
    const expect = async (ms: number) =>
      withNats(stack.natsUrl, async (jsm) => {
        for (const name of ["SHOAL_RESULTS", "SHOAL_BATCH_INDEX", "KV_shoal-batches", "KV_shoal-idempotency", "OBJ_shoal-artifacts"]) {
          const { config } = await jsm.streams.info(name);
          assert.equal(config.max_age, ms * 1e6, `${name} max_age`);
          assert.ok(config.duplicate_window <= config.max_age, `${name} duplicate window within max_age`);
        }
        for (const name of ["KV_shoal-models", "KV_shoal-webhooks"]) assert.equal((await jsm.streams.info(name)).config.max_age, 0, `${name} never ages out`);
        assert.equal((await jsm.streams.info("SHOAL_RESULTS")).config.discard, "new", "a full results stream refuses, never drops");
      });
    await expect(2000);
    await stack.kill(stack.coordinator!, "SIGTERM");
    await stack.startCoordinator(["--retention", "1h"]);
    await expect(3_600_000);
    await stack.kill(stack.coordinator!, "SIGTERM");
    await stack.startCoordinator(["--retention", "2s"]);
    await expect(2000);
  });

  test("storage - a finished batch and its idempotency key age out of GetBatch and ListBatches", async (t) => {
    const { batchId } = await client.sdk.submitBatch({ items: [{ model: "sim-zero", params: { tag: "old" } }], idempotencyKey: "aging-key" }, CALL);
    const done = await pollUntilTerminal(client, batchId, { timeoutMs: 30_000 });
    assert.equal(done.batch.state, BatchState.BATCH_STATE_COMPLETED);
    const finishedAt = Date.now();
    assert.ok((await client.sdk.listBatches({ pageSize: 100, ...CALL })).batches.some((b) => b.id === batchId), "listed while kept");
    await waitFor(
      "the batch to age out",
      async () => {
        const gone = await client.sdk.getBatch(batchId, CALL).then(
          () => false,
          (e) => grpcCode(e) === status.NOT_FOUND,
        );
        const listed = (await client.sdk.listBatches({ pageSize: 100, ...CALL })).batches.some((b) => b.id === batchId);
        return gone && !listed;
      },
      30_000,
    );
    t.diagnostic(`retention 2s: NOT_FOUND and unlisted ${Date.now() - finishedAt} ms after the batch finished`);
    // The key went with it: the same key now makes a new batch.
    const again = await client.sdk.submitBatch({ items: [{ model: "sim-zero", params: { tag: "new" } }], idempotencyKey: "aging-key" }, CALL);
    assert.notEqual(again.batchId, batchId);
  });

  test("storage - a batch running longer than the retention is kept until it finishes", async () => {
    const { batchId } = await client.sdk.submitBatch({ items: [{ model: "sim-zero", params: { work_ms: 5000 } }] }, CALL);
    const done = await pollUntilTerminal(client, batchId, { timeoutMs: 30_000 });
    assert.equal(done.batch.state, BatchState.BATCH_STATE_COMPLETED);
    assertWholeBatch(done.batch, 1);
  });
});

describe("storage - a full store", () => {
  const stack = new Stack();
  let client: TestClient;
  let metricsPort: number;

  before(async () => {
    metricsPort = await freePort();
    // A tiny server: 256 KB per message and 512 KB of JetStream file storage in all.
    await stack.startNats("max_payload: 256KB\njetstream { max_file_store: 512KB }");
    await stack.startCoordinator(["--max-items", "5000", "--unplaceable-grace", "10m", "--metrics-port", String(metricsPort)]);
    client = new TestClient(stack.grpcAddr);
    await registerSimModels(stack, client);
  });

  after(async () => {
    client?.close();
    await stack.stop();
  });

  test("storage - a batch whose record could never be stored is refused at once", async () => {
    const items = Array.from({ length: 2000 }, (_, i) => ({ model: "sim-zero", params: { tag: `big ${i}` } }));
    const r = await refusal(client.sdk.submitBatch({ items }, CALL));
    assert.equal(r.code, status.RESOURCE_EXHAUSTED);
    assert.match(r.message, /batch too large to store/);
    assert.match(r.message, /max_payload/);
    assert.equal((await client.sdk.listBatches({ pageSize: 10, ...CALL })).batches.length, 0, "nothing was kept");
    assert.ok((await metric(metricsPort, /^shoal_submit_storage_failures_total\{reason="record_too_large"\}/)) >= 1);
  });

  test("storage - when the server's store is full SubmitBatch answers RESOURCE_EXHAUSTED, keeps serving, and keeps nothing it refused", async (t) => {
    const filler = (n: number) => ({ items: Array.from({ length: 50 }, (_, i) => ({ model: "sim-zero", params: { tag: `${n}.${i} ${"x".repeat(150)}` } })) });
    const accepted: string[] = [];
    let full: { code: number | undefined; message: string } | undefined;
    for (let n = 0; n < 200 && !full; n++) {
      try {
        accepted.push((await client.sdk.submitBatch(filler(n), CALL)).batchId);
      } catch (err) {
        full = { code: grpcCode(err), message: (err as Error).message };
      }
    }
    assert.ok(full, "the store filled up");
    t.diagnostic(`accepted ${accepted.length} batches of 50 items, then: ${full.message}`);
    assert.equal(full.code, status.RESOURCE_EXHAUSTED);
    assert.match(full.message, /the batch was not accepted/);
    assert.match(full.message, /max_file_store/);
    assert.ok(accepted.length > 0);
    // Still serving: reads work, and exactly the accepted batches are there.
    assert.equal((await client.sdk.getBatch(accepted[0]!, CALL)).total, 50);
    const listed = (await client.sdk.listBatches({ pageSize: 1000, ...CALL })).batches.map((b) => b.id);
    assert.deepEqual(listed, [...accepted].reverse());
    const keyed = await refusal(client.sdk.submitBatch({ ...filler(999), idempotencyKey: "after-full" }, CALL));
    assert.equal(keyed.code, status.RESOURCE_EXHAUSTED);
    assert.ok((await metric(metricsPort, /^shoal_submit_storage_failures_total\{reason="storage_full"\}/)) >= 2);

    // nats-server down: UNAVAILABLE, not a hang or a crash.
    await stack.kill(stack.nats!);
    const downAt = Date.now();
    const down = await refusal(client.sdk.submitBatch(filler(1000), CALL));
    assert.equal(down.code, status.UNAVAILABLE, down.message);
    t.diagnostic(`with nats-server down, after ${Date.now() - downAt} ms: ${down.message}`);

    // The operator gives the server more room; the refused key was given back, so it is new.
    await stack.startNats("max_payload: 256KB\njetstream { max_file_store: 8MB }");
    let fresh: string | undefined;
    await waitFor(
      "a submit after the restart",
      async () => {
        fresh = await client.sdk.submitBatch({ ...filler(1001), idempotencyKey: "after-full" }, CALL).then(
          (r) => r.batchId,
          () => undefined,
        );
        return fresh !== undefined;
      },
      60_000,
    );
    assert.ok(!accepted.includes(fresh!));
    const after = (await client.sdk.listBatches({ pageSize: 1000, ...CALL })).batches.map((b) => b.id);
    assert.deepEqual(after, [fresh!, ...[...accepted].reverse()]);
    assert.ok((await metric(metricsPort, /^shoal_submit_storage_failures_total\{reason="unavailable"\}/)) >= 1);
  });
});

describe("storage - a failed terminal write", () => {
  const stack = new Stack();
  let client: TestClient;
  let metricsPort: number;

  before(async () => {
    metricsPort = await freePort();
    await stack.startNats();
    await stack.startCoordinator([
      "--batches-max-bytes", "32KiB", "--terminal-retry-max", "500ms", "--unplaceable-grace", "10m", "--metrics-port", String(metricsPort),
    ]);
    client = new TestClient(stack.grpcAddr);
    await registerSimModels(stack, client);
  });

  after(async () => {
    client?.close();
    await stack.stop();
  });

  test("storage - is retried until stored, without a restart, and counted", async (t) => {
    const forty = (tag: string) => ({ items: Array.from({ length: 40 }, (_, i) => ({ model: "sim-zero", params: { tag: `${tag} ${i}` } })) });
    const toCancel = (await client.sdk.submitBatch(forty("cancel"), CALL)).batchId;
    const toRun = (await client.sdk.submitBatch(forty("run"), CALL)).batchId;
    // Fill the batch records bucket with small batches until it refuses one.
    let fillers = 0;
    for (; fillers < 500; fillers++) {
      const r = await client.sdk.submitBatch({ items: [{ model: "sim-zero", params: { tag: `filler ${fillers} ${"y".repeat(150)}` } }] }, CALL).then(
        () => undefined,
        (e) => e as Error,
      );
      if (r) {
        assert.equal(grpcCode(r), status.RESOURCE_EXHAUSTED, r.message);
        assert.match(r.message, /--batches-max-bytes/);
        t.diagnostic(`full bucket: ${r.message}`);
        break;
      }
    }
    t.diagnostic(`the 32 KiB bucket took 2 batches of 40 items and ${fillers} of 1`);

    // The cancelled batch's 40 results do not fit: the cancel says so, and it is retried.
    const cancel = await refusal(client.sdk.cancelBatch(toCancel, CALL));
    assert.equal(cancel.code, status.RESOURCE_EXHAUSTED, cancel.message);
    assert.match(cancel.message, /is cancelled, but its terminal record is not stored yet/);
    t.diagnostic(`cancel: ${cancel.message}`);

    // The other batch runs to the end; its terminal record does not fit either.
    await stack.startWorker("w1", [...SIM, "--max-in-flight", "64"]);
    await waitFor("the run batch's items to finish", async () => (await client.sdk.getBatch(toRun, CALL)).succeeded === 40, 60_000);
    await waitFor("failed terminal writes", async () => (await metric(metricsPort, /^shoal_terminal_write_failures_total\{reason="storage_full"\}/)) >= 2, 30_000);
    const stuck = await client.sdk.getBatch(toRun, CALL);
    assert.equal(stuck.state, BatchState.BATCH_STATE_RUNNING, "not terminal until its record with every result is stored");
    assert.equal(stuck.results.length, 0);
    assert.ok((await metric(metricsPort, /^shoal_terminal_writes_waiting /)) >= 2);
    const failuresBefore = await metric(metricsPort, /^shoal_terminal_write_failures_total\{reason="storage_full"\}/);

    // The operator raises the bucket's limit (as `nats stream edit` would); no restart.
    const raisedAt = Date.now();
    await withNats(stack.natsUrl, async (jsm) => {
      const { config } = await jsm.streams.info("KV_shoal-batches");
      await jsm.streams.update("KV_shoal-batches", { ...config, max_bytes: 4 * 1024 * 1024 });
    });
    const ran = await pollUntilTerminal(client, toRun, { timeoutMs: 30_000 });
    t.diagnostic(`terminal ${Date.now() - raisedAt} ms after the limit was raised`);
    assert.equal(ran.batch.state, BatchState.BATCH_STATE_COMPLETED);
    assertWholeBatch(ran.batch, 40);
    assert.equal(ran.partialTerminalPolls, 0);
    const cancelled = await pollUntilTerminal(client, toCancel, { timeoutMs: 30_000 });
    assert.equal(cancelled.batch.state, BatchState.BATCH_STATE_CANCELLED);
    assert.ok(cancelled.batch.results.every((r) => r.status === ItemStatus.ITEM_STATUS_CANCELLED));
    await waitFor("no terminal write waiting", async () => (await metric(metricsPort, /^shoal_terminal_writes_waiting /)) === 0, 30_000);
    t.diagnostic(`terminal write failures counted: ${failuresBefore} (storage_full)`);
    const coordinatorStarts = stack.coordinator!.logs.filter((l) => l.msg === "coordinator ready").length;
    assert.equal(coordinatorStarts, 1, "the coordinator was never restarted");
  });
});

describe("storage - ListBatches from storage", () => {
  const stack = new Stack();
  let alice: TestClient;
  let bob: TestClient;
  let metricsPort: number;
  const startArgs = () => ["--api-keys", "alice:alice-key-123,bob:bob-key-4567", "--metrics-port", String(metricsPort)];

  before(async () => {
    metricsPort = await freePort();
    await stack.startNats();
    await stack.startCoordinator(startArgs());
    await stack.startWorker("w1", [...SIM, "--max-in-flight", "32"]);
    alice = new TestClient(stack.grpcAddr, "alice-key-123");
    bob = new TestClient(stack.grpcAddr, "bob-key-4567");
    await alice.waitForWorkers(1);
  });

  after(async () => {
    alice?.close();
    bob?.close();
    await stack.stop();
  });

  async function pages(client: TestClient, size: number): Promise<string[][]> {
    const out: string[][] = [];
    let token = "";
    do {
      const page = await client.sdk.listBatches({ pageSize: size, pageToken: token, ...CALL });
      out.push(page.batches.map((b) => b.id));
      token = page.nextPageToken;
      assert.ok(out.length <= 10, "pages end");
    } while (token);
    return out;
  }

  test("storage - 120 batches page 50, 50, 20, newest first, per tenant, and none stays in memory", async () => {
    const aliceIds: string[] = [];
    const bobIds: string[] = [];
    for (let i = 0; i < 120; i++) {
      aliceIds.push((await alice.sdk.submitBatch({ items: [{ model: "sim-zero", params: { tag: `a${i}` } }] }, CALL)).batchId);
      if (i % 4 === 0) bobIds.push((await bob.sdk.submitBatch({ items: [{ model: "sim-zero", params: { tag: `b${i}` } }] }, CALL)).batchId);
    }
    for (const id of [...aliceIds.slice(-3)]) await pollUntilTerminal(alice, id, { timeoutMs: 60_000 });
    await waitFor("every batch finished", async () => (await metric(metricsPort, /^shoal_batches_in_memory /)) === 0, 60_000);

    const check = async () => {
      const a = await pages(alice, 50);
      assert.deepEqual(a.map((p) => p.length), [50, 50, 20]);
      assert.deepEqual(a.flat(), [...aliceIds].reverse(), "newest first, each once");
      const b = await pages(bob, 50);
      assert.deepEqual(b.flat(), [...bobIds].reverse(), "another tenant sees only its own");
      assert.deepEqual((await pages(alice, 40)).map((p) => p.length), [40, 40, 40], "a last full page has no next token");
    };
    await check();
    // A restart loads no finished batch into memory and lists the same pages from storage.
    await stack.kill(stack.coordinator!, "SIGTERM");
    await stack.startCoordinator(startArgs());
    await alice.waitForWorkers(1);
    assert.equal(await metric(metricsPort, /^shoal_batches_in_memory /), 0);
    await check();
    const bad = await refusal(alice.sdk.listBatches({ pageSize: 10, pageToken: "not-a-token", ...CALL }));
    assert.equal(bad.code, status.INVALID_ARGUMENT);
  });
});

describe("storage - a full artifact store", () => {
  const stack = new Stack();
  let client: TestClient;

  before(async () => {
    await stack.startNats();
    await stack.startCoordinator(["--artifacts-max-bytes", "1KiB", "--max-attempts", "1"]);
    await stack.startWorker("w1", ["--vram", "8GiB"]);
    client = new TestClient(stack.grpcAddr);
    await client.waitForWorkers(1, 120_000);
  });

  after(async () => {
    client?.close();
    await stack.stop();
  });

  test("storage - fails the item with a clear error and the worker keeps serving", async () => {
    const { batchId } = await client.sdk.submitBatch({ items: [{ model: "imagegen-tiny", params: { prompt: "a red boat", width: 64, height: 64, steps: 1 } }] }, CALL);
    const done = await pollUntilTerminal(client, batchId, { timeoutMs: 120_000 });
    assert.equal(done.batch.state, BatchState.BATCH_STATE_FAILED);
    const err = done.batch.results[0]!.error!;
    assert.equal(err.code, "INFERENCE_FAILED");
    assert.equal(err.retryable, true);
    assert.match(err.message, /artifact image \(\d+ bytes\) not stored/);
    assert.match(err.message, /--artifacts-max-bytes/);
    const workers = await client.sdk.listWorkers(CALL);
    assert.equal(workers.length, 1);
    assert.equal(stack.procs.find((p) => p.name === "worker w1")!.child.exitCode, null, "the worker did not crash");
  });
});

describe("storage - batches stored by an earlier version", () => {
  const stack = new Stack();
  let client: TestClient;

  before(async () => {
    await stack.startNats();
  });

  after(async () => {
    client?.close();
    await stack.stop();
  });

  test("storage - are indexed at the first start: listed, and a running one resumed", async () => {
    // The old layout: records keyed by batch id, no open markers, no index stream.
    const names = new Names("shoal");
    const ids = [newBatchId(Date.now() - 2000), newBatchId(Date.now() - 1000)];
    const nc = await connect({ servers: stack.natsUrl, timeout: 10_000 });
    try {
      const infra = await ensureInfrastructure(nc, names);
      const base = { succeeded: 0, failed: 0, cancelled: 0, results: [], labels: {}, running: 0, priority: 0, queuePosition: 0, estimatedCompletionAt: undefined, completedAt: undefined };
      const done = { ...base, id: ids[0]!, state: BatchState.BATCH_STATE_COMPLETED, total: 1, succeeded: 1, createdAt: new Date(Date.now() - 2000), completedAt: new Date() };
      const terminal = { ...done, results: [{ index: 0, status: ItemStatus.ITEM_STATUS_SUCCEEDED, error: undefined, artifacts: [], workerId: "old", attempts: 1, queueMs: 1, runMs: 1, model: "sim-zero" }] };
      await infra.batches.create(ids[0]!, encodeMessage(BatchRecord, { batch: terminal, items: [{ model: "sim-zero", params: {} }], tenant: "" }));
      const queued = { ...base, id: ids[1]!, state: BatchState.BATCH_STATE_QUEUED, total: 2, createdAt: new Date(Date.now() - 1000) };
      const items = [{ model: "sim-zero", params: { tag: "a" } }, { model: "sim-zero", params: { tag: "b" } }];
      await infra.batches.create(ids[1]!, encodeMessage(BatchRecord, { batch: queued, items, tenant: "" }));
    } finally {
      await nc.close();
    }
    await stack.startCoordinator();
    await stack.startWorker("w1", SIM);
    client = new TestClient(stack.grpcAddr);
    await client.waitForWorkers(1);
    assert.deepEqual((await client.sdk.listBatches({ pageSize: 10, ...CALL })).batches.map((b) => b.id), [...ids].reverse());
    const resumed = await pollUntilTerminal(client, ids[1]!, { timeoutMs: 30_000 });
    assert.equal(resumed.batch.state, BatchState.BATCH_STATE_COMPLETED);
    assertWholeBatch(resumed.batch, 2);
    assert.equal((await client.sdk.getBatch(ids[0]!, CALL)).results[0]!.workerId, "old");
  });
});

describe("storage - a byte limit the server cannot reserve", () => {
  const stack = new Stack();

  before(async () => {
    await stack.startNats("jetstream { max_file_store: 1MB }");
  });

  after(async () => {
    await stack.stop();
  });

  test("storage - stops the coordinator at start with exit code 2, naming the flag", async () => {
    await assert.rejects(stack.startCoordinator(["--batches-max-bytes", "64MiB"]), /exited \(2\)/);
    const out = stack.coordinator!.output.join("\n");
    assert.match(out, /--batches-max-bytes: nats-server cannot reserve this much JetStream storage/);
    assert.match(out, /max_file_store/);
  });
});
