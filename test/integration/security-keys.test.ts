// API keys, roles and tenant isolation with real processes: a keys file (plain keys, a SHA-256
// digest, an operator, limits) next to --api-keys; every RPC refuses another tenant's key; only
// an operator drains workers or sees fleet details; limits answer RESOURCE_EXHAUSTED naming
// themselves; SIGHUP reloads the file and a bad file keeps the old keys; listening beyond
// loopback without keys or TLS is warned about; `shoal up` runs with keys set.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { BatchState, ItemStatus, WorkerState } from "../../proto/gen/shoal/v1/shoal.js";
import { CLI, ROOT, Stack, freePort } from "../harness/processes.js";
import { TestClient, grpcCode } from "../harness/client.js";
import { pollUntilTerminal, waitFor } from "../harness/batch-checks.js";

const ALICE = "alice-key-0001";
const BOB = "bob-key-0002";
const OPS = "ops-key-0003";
const CAROL = "carol-key-0004";
const sha = (k: string) => createHash("sha256").update(k).digest("hex");

function keysFile(aliceKey: string) {
  return JSON.stringify({
    tenants: [
      { name: "alice", keys: [aliceKey], role: "tenant" },
      { name: "bob", key_sha256s: [sha(BOB)], limits: { max_items_per_batch: 3, max_queued_items: 4, items_per_day: 10000 } },
      { name: "ops", keys: [OPS], role: "operator" },
    ],
  });
}

const is = (code: number) => (e: unknown) => grpcCode(e) === code;

describe("security - API keys and roles", () => {
  const stack = new Stack();
  let alice: TestClient;
  let bob: TestClient;
  let ops: TestClient;
  let carol: TestClient;
  let keysPath = "";

  before(async () => {
    keysPath = join(stack.dir, "keys.json");
    writeFileSync(keysPath, keysFile(ALICE));
    await stack.startNats();
    // A short unplaceable grace: the item that needs more than any GPU fails soon.
    await stack.startCoordinator(["--api-keys-file", keysPath, "--api-keys", `carol:${CAROL}`, "--unplaceable-grace", "1s"]);
    await stack.startWorker("w-img", ["--vram", "8GiB"]);
    await stack.startWorker("w-sim", ["--simulate", "--vram", "40GB"]);
    await stack.startWorker("w-drain", ["--simulate", "--vram", "40GB"]);
    alice = new TestClient(stack.grpcAddr, ALICE);
    bob = new TestClient(stack.grpcAddr, BOB);
    ops = new TestClient(stack.grpcAddr, OPS);
    carol = new TestClient(stack.grpcAddr, CAROL);
    await ops.waitForWorkers(3, 120_000);
  });

  after(async () => {
    for (const c of [alice, bob, ops, carol]) c?.close();
    await stack.stop();
  });

  test("security keys - every batch RPC refuses another tenant's key; the owner gets the answer", async () => {
    const { batchId } = await alice.submit({
      items: [{ model: "imagegen-tiny", params: { prompt: "a lighthouse", width: 64, height: 64, steps: 1 } }, { model: "sim-6g", params: { use_bytes: 100e9 } }],
      idempotencyKey: "order-1",
    });
    const { batch } = await pollUntilTerminal(alice, batchId);
    assert.equal(batch.results[0]!.status, ItemStatus.ITEM_STATUS_SUCCEEDED);
    assert.equal(batch.results[1]!.error?.retryable, true, "a retryable failure, so RetryBatch has something to retry");
    const uri = batch.results[0]!.artifacts[0]!.uri;

    // GetBatch
    await assert.rejects(bob.get(batchId), is(status.NOT_FOUND));
    assert.equal((await alice.get(batchId)).id, batchId);
    // ListBatches
    assert.ok(!(await bob.list()).batches.some((b) => b.id === batchId));
    assert.ok((await alice.list()).batches.some((b) => b.id === batchId));
    // WatchBatch
    await assert.rejects(bob.watch(batchId), is(status.NOT_FOUND));
    assert.equal((await alice.watch(batchId)).at(-1)?.event?.$case, "batch");
    // GetArtifact
    await assert.rejects(bob.artifact(uri), is(status.NOT_FOUND));
    const png = await alice.artifact(uri);
    assert.equal(png.subarray(1, 4).toString(), "PNG");
    // RetryBatch
    await assert.rejects(bob.sdk.retryBatch(batchId), is(status.NOT_FOUND));
    const retried = await alice.sdk.retryBatch(batchId);
    assert.equal(retried.itemCount, 1);
    // CancelBatch
    await assert.rejects(bob.cancel(batchId), is(status.NOT_FOUND));
    assert.equal((await alice.cancel(batchId)).state, batch.state, "cancelling a finished batch leaves it as it was");
    // RunBatch (and SubmitBatch): alice's idempotency key is not bob's; bob gets a batch of his own.
    const bobs = await bob.run({ items: [{ model: "sim-zero", params: {} }], idempotencyKey: "order-1" });
    assert.notEqual(bobs.id, batchId);
    assert.equal(bobs.total, 1);
    assert.equal((await bob.submit({ items: [{ model: "sim-zero", params: {} }], idempotencyKey: "order-1" })).batchId, bobs.id);
    // A tenant from --api-keys next to the file, and an operator, are tenants of their own too.
    await assert.rejects(carol.get(batchId), is(status.NOT_FOUND));
    await assert.rejects(ops.get(batchId), is(status.NOT_FOUND));
  });

  test("security keys - without a key, or with a wrong one, every call is UNAUTHENTICATED", async () => {
    for (const key of [undefined, "not-a-key-at-all", sha(ALICE)]) {
      const c = new TestClient(stack.grpcAddr, key);
      try {
        await assert.rejects(c.list(), is(status.UNAUTHENTICATED), String(key));
        await assert.rejects(c.workers(), is(status.UNAUTHENTICATED), String(key));
      } finally {
        c.close();
      }
    }
  });

  test("security keys - DrainWorker needs an operator key; tenants see workers without fleet details", async () => {
    await assert.rejects(alice.sdk.drainWorker("w-drain"), (e) => grpcCode(e) === status.PERMISSION_DENIED && /needs an operator key/.test(String(e)));
    await assert.rejects(carol.sdk.drainWorker("w-drain"), is(status.PERMISSION_DENIED));
    const tenantView = await alice.workers();
    const opsView = await ops.workers();
    assert.deepEqual(tenantView.map((w) => w.id).sort(), opsView.map((w) => w.id).sort());
    const sim = tenantView.find((w) => w.id === "w-sim")!;
    assert.equal(sim.hostname, "");
    assert.equal(sim.itemsDone, 0);
    assert.ok(sim.gpus.length > 0 && sim.gpus.every((g) => g.vramFreeBytes === 0 && g.vramTotalBytes > 0));
    assert.ok(sim.models.includes("sim-zero"));
    const full = opsView.find((w) => w.id === "w-sim")!;
    assert.notEqual(full.hostname, "");
    // Items ran on some worker (which one is placement's choice): only the operator sees it.
    assert.ok(opsView.reduce((n, w) => n + Number(w.itemsDone), 0) > 0, "the operator sees the work done");
    assert.ok(tenantView.every((w) => Number(w.itemsDone) === 0 && w.itemsInFlight === 0 && w.lastHeartbeatAt === undefined));
    assert.ok(full.gpus.some((g) => g.vramFreeBytes > 0));
    const drained = await ops.sdk.drainWorker("w-drain");
    assert.equal(drained.id, "w-drain");
    assert.notEqual(drained.state, WorkerState.WORKER_STATE_READY);
  });

  test("security keys - a tenant's limits answer RESOURCE_EXHAUSTED naming the limit", async () => {
    const four = Array.from({ length: 4 }, (_, i) => ({ model: "sim-zero", params: { tag: `${i}` } }));
    await assert.rejects(bob.submit({ items: four }), (e) => grpcCode(e) === status.RESOURCE_EXHAUSTED && /max_items_per_batch = 3/.test(String(e)));
    const slow = (n: number) => Array.from({ length: n }, (_, i) => ({ model: "sim-zero", params: { work_ms: 120_000, tag: `slow${n}-${i}` } }));
    const first = await bob.submit({ items: slow(3) });
    await assert.rejects(bob.submit({ items: slow(2) }), (e) => grpcCode(e) === status.RESOURCE_EXHAUSTED && /has 3 items queued or running and this batch adds 2, over its limit max_queued_items = 4/.test(String(e)));
    // Another tenant is not held back by bob's limit; bob is again once his batch is done.
    await alice.submit({ items: slow(2) }).then(({ batchId }) => alice.cancel(batchId));
    const one = await bob.submit({ items: slow(1) });
    assert.equal((await bob.cancel(first.batchId)).state, BatchState.BATCH_STATE_CANCELLED);
    await bob.cancel(one.batchId);
    const again = await bob.submit({ items: slow(3) });
    await bob.cancel(again.batchId);
  });

  test("security keys - SIGHUP reloads the keys file; a bad file keeps the keys in use", async () => {
    const newAlice = "alice-key-rotated-1";
    writeFileSync(keysPath, keysFile(newAlice));
    const logsBefore = stack.coordinator!.logs.length;
    process.kill(stack.coordinator!.pid, "SIGHUP");
    await waitFor("the reload", () => stack.coordinator!.logs.slice(logsBefore).some((l) => l.msg === "API keys reloaded"), 20_000);
    await assert.rejects(alice.list(), is(status.UNAUTHENTICATED));
    const rotated = new TestClient(stack.grpcAddr, newAlice);
    try {
      assert.ok((await rotated.list()).batches.length > 0, "the same tenant under its new key");
      // A file with a duplicate key is refused whole: the previous keys stay.
      writeFileSync(keysPath, JSON.stringify({ tenants: [{ name: "alice", keys: [newAlice] }, { name: "mallory", keys: [newAlice] }] }));
      const mark = stack.coordinator!.logs.length;
      process.kill(stack.coordinator!.pid, "SIGHUP");
      await waitFor("the refused reload", () => stack.coordinator!.logs.slice(mark).some((l) => l.msg === "API keys not reloaded: keeping the previous keys"), 20_000);
      const refusal = stack.coordinator!.logs.slice(mark).find((l) => l.msg === "API keys not reloaded: keeping the previous keys")!;
      assert.match(String(refusal.err), /tenants\[1\].keys\[0\]: duplicate key/);
      assert.ok((await rotated.list()).batches.length > 0);
      assert.ok((await bob.list()).batches.length > 0);
    } finally {
      rotated.close();
    }
  });

  test("security keys - duplicate or empty keys stop the coordinator at start with a precise message", async () => {
    const dup = await stack.cli(["coordinator", "--nats", stack.natsUrl, "--grpc-port", "0", "--api-keys", "a:same-key-1234,b:same-key-1234"], {}, 30_000);
    assert.equal(dup.code, 2);
    assert.match(dup.stderr, /--api-keys: --api-keys entry 2: duplicate key \(the same key as --api-keys entry 1\)/);
    const empty = await stack.cli(["coordinator", "--nats", stack.natsUrl, "--grpc-port", "0", "--api-keys", "a:"], {}, 30_000);
    assert.equal(empty.code, 2);
    assert.match(empty.stderr, /entry 1 \(tenant "a"\) has an empty key/);
    const missing = await stack.cli(["coordinator", "--nats", stack.natsUrl, "--grpc-port", "0", "--api-keys-file", join(stack.dir, "nope.json")], {}, 30_000);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /--api-keys-file: cannot read .*nope.json/);
  });

  test("security keys - listening beyond loopback without keys or TLS is warned about at start", async () => {
    const port = await freePort();
    const child = spawn(process.execPath, [CLI, "coordinator", "--nats", stack.natsUrl, "--prefix", "exposed", "--grpc-host", "0.0.0.0", "--grpc-port", String(port), "--metrics-port", "0", "--log-format", "json"], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (out += d));
    try {
      await waitFor("the coordinator to serve", () => out.includes("coordinator serving"), 30_000);
      const warnings = out.split("\n").filter((l) => l.includes("INSECURE"));
      assert.equal(warnings.length, 2, out);
      assert.ok(warnings.some((l) => /with no API keys/.test(l)));
      assert.ok(warnings.some((l) => /without TLS/.test(l)));
      assert.ok(!stack.coordinator!.output.some((l) => l.includes("INSECURE")), "the loopback coordinator warns about nothing");
    } finally {
      child.kill("SIGKILL");
    }
  });
});

test("security keys - shoal up runs with API keys set and prints where it listens", async () => {
  const dir = mkdtempSync(join(tmpdir(), "shoal-up-keys-"));
  const [grpcPort, natsPort] = [await freePort(), await freePort()];
  writeFileSync(join(dir, "keys.json"), JSON.stringify({ tenants: [{ name: "ops", keys: [OPS], role: "operator" }] }));
  const up = spawn(process.execPath, [CLI, "up", "--workers", "1", "--simulate", "--grpc-port", String(grpcPort), "--nats-port", String(natsPort), "--http-port", "0", "--metrics-port", "0", "--data-dir", join(dir, "data"), "--log-format", "json"], {
    stdio: ["ignore", "pipe", "pipe"],
    cwd: ROOT,
    env: { ...process.env, SHOAL_API_KEYS: `alice:${ALICE}`, SHOAL_API_KEYS_FILE: join(dir, "keys.json") },
  });
  let stdout = "";
  let stderr = "";
  up.stdout.on("data", (d) => (stdout += d));
  up.stderr.on("data", (d) => (stderr += d));
  const exited = new Promise<number | null>((r) => up.once("exit", (code) => r(code)));
  try {
    await waitFor("shoal up", () => {
      assert.equal(up.exitCode, null, `shoal up exited early:\n${stderr.slice(-3000)}`);
      return stdout.includes("Shoal is up");
    }, 120_000);
    assert.match(stdout, new RegExp(`gRPC API\\s+127\\.0\\.0\\.1:${grpcPort}\\s`));
    const addr = `127.0.0.1:${grpcPort}`;
    const anonymous = new TestClient(addr);
    const a = new TestClient(addr, ALICE);
    const o = new TestClient(addr, OPS);
    try {
      await assert.rejects(anonymous.workers(), is(status.UNAUTHENTICATED));
      assert.equal((await a.run({ items: [{ model: "sim-zero", params: {} }] })).state, BatchState.BATCH_STATE_COMPLETED);
      assert.equal((await o.workers()).length, 1);
    } finally {
      for (const c of [anonymous, a, o]) c.close();
    }
    assert.ok(!stdout.includes(ALICE) && !stderr.includes(ALICE), "keys are not printed or logged");
  } finally {
    if (up.exitCode === null) up.kill("SIGTERM");
    assert.equal(await exited, 0, stderr.slice(-2000));
    rmSync(dir, { recursive: true, force: true });
  }
});
