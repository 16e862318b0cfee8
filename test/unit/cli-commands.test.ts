// The client commands against an in-process fake coordinator: real gRPC on a random port, so
// metadata, status mapping and streaming are the real thing, with canned answers.

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, afterEach, before, describe, test } from "node:test";
import { Metadata, Server, ServerCredentials, status, type ServerWritableStream, type ServiceError } from "@grpc/grpc-js";
import { Command } from "commander";
import { createClients, type ShoalClients } from "../../cli/client.js";
import { registerClientCommands } from "../../cli/client-commands.js";
import * as commands from "../../cli/commands.js";
import { ClientError } from "../../cli/errors.js";
import { followBatch } from "../../cli/follow.js";
import { formatBytes, formatTime } from "../../cli/format.js";
import { BufferOutput } from "../../cli/output.js";
import {
  Batch,
  BatchServiceService,
  BatchState,
  FleetServiceService,
  ItemResult,
  ItemStatus,
  WorkerState,
  type BatchEvent,
  type BatchServiceServer,
  type FleetServiceServer,
  type GetUsageRequest,
  type GetUsageResponse,
  type SubmitBatchRequest,
} from "../../proto/gen/shoal/v1/shoal.js";
import { withDeadlines } from "../harness/client.js";

/** Every call a test makes, directly or through a command, gives up after 10 s. */
const clientsFor = (target: string, apiKey?: string): ShoalClients => withDeadlines(createClients(target, apiKey), 10_000, 10_000);

const PNG_BYTES = Buffer.from("\x89PNG fake image bytes, long enough to need two chunks".repeat(40));
const PNG_SHA = createHash("sha256").update(PNG_BYTES).digest("hex");

/** What the fake coordinator saw and what it answers with; tests change it per case. */
interface FakeState {
  submitted: SubmitBatchRequest[];
  authorization: string[];
  refuse?: { code: number; details: string };
  /** The events WatchBatch streams, then it ends. */
  events: BatchEvent[];
  batch: Batch;
  artifactSha: string;
  /** GetUsage's answer, and the requests it got. */
  usage: GetUsageResponse;
  usageAsked: GetUsageRequest[];
}

function finishedBatch(state: BatchState): Batch {
  const ok = ItemResult.fromPartial({
    index: 0,
    status: ItemStatus.ITEM_STATUS_SUCCEEDED,
    model: "imagegen-tiny",
    workerId: "w-1",
    attempts: 1,
    runMs: 40,
    artifacts: [{ name: "image", contentType: "image/png", sizeBytes: PNG_BYTES.length, sha256: PNG_SHA, uri: "shoal://artifacts/a0" }],
  });
  const failed = ItemResult.fromPartial({
    index: 1,
    status: ItemStatus.ITEM_STATUS_FAILED,
    model: "imagegen-tiny",
    attempts: 3,
    error: { code: "WORKER_LOST", message: "worker w-2 stopped answering", retryable: true },
  });
  const results = state === BatchState.BATCH_STATE_FAILED ? [{ ...ok, ...failed, index: 0 }, failed] : [ok, failed];
  return Batch.fromPartial({
    id: "b_test",
    state,
    total: 2,
    succeeded: results.filter((r) => r.status === ItemStatus.ITEM_STATUS_SUCCEEDED).length,
    failed: results.filter((r) => r.status === ItemStatus.ITEM_STATUS_FAILED).length,
    createdAt: new Date(1_000),
    completedAt: new Date(3_500),
    results,
  });
}

function freshState(): FakeState {
  const batch = finishedBatch(BatchState.BATCH_STATE_COMPLETED);
  return {
    submitted: [],
    authorization: [],
    events: [...batch.results.map((item) => ({ event: { $case: "item" as const, item } })), { event: { $case: "batch", batch } }],
    batch,
    artifactSha: PNG_SHA,
    usage: { days: [], limits: [] },
    usageAsked: [],
  };
}

let fake: FakeState = freshState();
let server: Server;
let addr: string;
let dir: string;

function record(md: Metadata): void {
  fake.authorization.push(String(md.get("authorization")[0] ?? ""));
}

function refusal(): ServiceError | null {
  if (!fake.refuse) return null;
  return Object.assign(new Error(fake.refuse.details), { ...fake.refuse, metadata: new Metadata() }) as ServiceError;
}

const batchImpl: BatchServiceServer = {
  submitBatch(call, cb) {
    record(call.metadata);
    const err = refusal();
    if (err) return cb(err);
    fake.submitted.push(call.request);
    cb(null, { batchId: "b_test", itemCount: call.request.items.length });
  },
  runBatch(_call, cb) {
    cb(null, fake.batch);
  },
  getBatch(call, cb) {
    record(call.metadata);
    if (call.request.batchId !== fake.batch.id) return cb({ code: status.NOT_FOUND, details: `batch ${call.request.batchId} not found` } as ServiceError);
    cb(null, fake.batch);
  },
  getUsage(call, cb) {
    fake.usageAsked.push(call.request);
    cb(null, fake.usage);
  },
  watchBatch(call: ServerWritableStream<{ batchId: string }, BatchEvent>) {
    for (const event of fake.events) call.write(event);
    call.end();
  },
  cancelBatch(_call, cb) {
    cb(null, { ...fake.batch, state: BatchState.BATCH_STATE_CANCELLED });
  },
  retryBatch(_call, cb) {
    cb(null, { batchId: "b_retry", itemCount: 1 });
  },
  listBatches(_call, cb) {
    cb(null, { batches: [{ ...fake.batch, results: [] }], nextPageToken: "next-1" });
  },
  getArtifact(call) {
    if (fake.artifactSha !== PNG_SHA) {
      call.write({ data: Buffer.from("tampered") });
      return call.end();
    }
    const half = Math.floor(PNG_BYTES.length / 2);
    call.write({ data: PNG_BYTES.subarray(0, half) });
    call.write({ data: PNG_BYTES.subarray(half) });
    call.end();
  },
};

const fleetImpl: FleetServiceServer = {
  listWorkers(_call, cb) {
    cb(null, {
      workers: [
        {
          id: "w-1",
          state: WorkerState.WORKER_STATE_READY,
          gpus: [{ index: 0, name: "NVIDIA H100", vramTotalBytes: 80 * 1024 ** 3, vramFreeBytes: 70 * 1024 ** 3, vramReservedBytes: 1024 ** 3, source: "nvidia-smi" }],
          residentModels: ["imagegen-tiny"],
          itemsInFlight: 2,
          itemsDone: 10,
          hostname: "h",
          lastHeartbeatAt: new Date(),
          models: [],
        },
      ],
    });
  },
  drainWorker(call, cb) {
    cb(null, { id: call.request.workerId, state: WorkerState.WORKER_STATE_DRAINING, gpus: [], residentModels: [], itemsInFlight: 2, itemsDone: 10, hostname: "h", lastHeartbeatAt: undefined, models: [] });
  },
  listModels(_call, cb) {
    cb(null, { models: [] });
  },
};

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "shoal-cli-commands-"));
  server = new Server();
  server.addService(BatchServiceService, batchImpl);
  server.addService(FleetServiceService, fleetImpl);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  addr = `127.0.0.1:${port}`;
});

after(async () => {
  await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
  await rm(dir, { recursive: true, force: true });
});

afterEach(() => {
  fake = freshState();
  // Commands set it on failure; the test process itself must still exit 0.
  process.exitCode = 0;
});

function context(clients: ShoalClients, errIsTTY = false): commands.CommandContext & { out: BufferOutput; err: BufferOutput } {
  return { clients, out: new BufferOutput(), err: new BufferOutput(errIsTTY) };
}

async function withClients<T>(fn: (clients: ShoalClients) => Promise<T>, apiKey?: string): Promise<T> {
  const clients = clientsFor(addr, apiKey);
  try {
    return await fn(clients);
  } finally {
    clients.close();
  }
}

/** Runs `shoal <args>` through commander as cli/main.ts will, capturing both streams. */
async function shoal(args: string[]): Promise<{ out: string; err: string; exitCode: number }> {
  const out = new BufferOutput();
  const err = new BufferOutput();
  const program = new Command("shoal").exitOverride();
  registerClientCommands(program, { out, err, createClients: (target) => clientsFor(target) });
  process.exitCode = 0;
  await program.parseAsync(args, { from: "user" });
  const exitCode = Number(process.exitCode ?? 0);
  process.exitCode = 0;
  return { out: out.text, err: err.text, exitCode };
}

describe("cli commands", () => {
  test("commands - submit prints the batch id and sends items, options and the API key", async () => {
    const file = join(dir, "demo.json");
    await writeFile(file, JSON.stringify({ requests: [{ prompt: "a mug", width: 256 }], labels: { from: "file", keep: "yes" } }));
    const code = await withClients(async (clients) => {
      const ctx = context(clients);
      const code = await commands.submit(ctx, file, { priority: 3, label: ["from=flag", "note=a=b"], idempotencyKey: "k1" });
      assert.equal(ctx.out.text, "b_test\n");
      assert.match(ctx.err.text, /submitted 1 item as batch b_test\n  follow it: +shoal watch b_test/);
      return code;
    }, "sk_test");
    assert.equal(code, 0);
    assert.deepEqual(fake.authorization, ["Bearer sk_test"]);
    assert.deepEqual(fake.submitted[0], {
      items: [{ model: "imagegen-tiny", params: { prompt: "a mug", width: 256 } }],
      idempotencyKey: "k1",
      webhook: undefined,
      priority: 3,
      labels: { from: "flag", keep: "yes", note: "a=b" },
    });
  });

  test("commands - no API key, no authorization header", async () => {
    await withClients((clients) => clients.getBatch("b_test"));
    assert.deepEqual(fake.authorization, [""]);
  });

  test("commands - submit --wait follows the batch with plain progress lines and a summary", async () => {
    const file = join(dir, "two.jsonl");
    await writeFile(file, '{"prompt": "a"}\n{"prompt": "b"}\n');
    await withClients(async (clients) => {
      const ctx = context(clients);
      const code = await commands.submit(ctx, file, { wait: true, progressIntervalMs: 0 });
      assert.equal(code, 0);
      assert.equal(
        ctx.err.text.split("\n").filter((l) => l.startsWith("batch b_test:")).join("\n"),
        ["batch b_test: 1/2 done (1 ok, 0 failed)", "batch b_test: 2/2 done (1 ok, 1 failed)"].join("\n"),
      );
      assert.match(ctx.out.text, /^batch b_test COMPLETED in 2\.5s: 1 succeeded, 1 failed of 2\n/);
      assert.match(ctx.out.text, /failed items:\n  #001  WORKER_LOST: worker w-2 stopped answering \(retryable\)\n/);
      assert.match(ctx.err.text, /shoal retry b_test +\(1 retryable\)/);
    });
  });

  test("commands - submit --wait exits 1 when the batch FAILED", async () => {
    fake.batch = finishedBatch(BatchState.BATCH_STATE_FAILED);
    fake.events = [{ event: { $case: "batch", batch: fake.batch } }];
    const file = join(dir, "one.jsonl");
    await writeFile(file, '{"prompt": "a"}\n{"prompt": "b"}\n');
    const { out, exitCode } = await shoal(["--addr", addr, "submit", file, "--wait"]);
    assert.equal(exitCode, 1);
    assert.match(out, /batch b_test FAILED/);
  });

  test("commands - a refused batch lists each field path with its JSONL line, exit 2", async () => {
    fake.refuse = {
      code: status.INVALID_ARGUMENT,
      details: "items[1].params.width: must be a multiple of 8 between 64 and 1024; items[2].params.prompt: required",
    };
    const file = join(dir, "bad.jsonl");
    await writeFile(file, '# header\n{"prompt": "ok"}\n{"prompt": "w", "width": 13}\n\n{"width": 64}\n');
    const { err, exitCode } = await shoal(["submit", file, "--addr", addr]);
    assert.equal(exitCode, 2);
    assert.equal(
      err,
      [
        "error: refused (INVALID_ARGUMENT), 2 problems:",
        `  items[1].params.width: must be a multiple of 8 between 64 and 1024 (${file}:3)`,
        `  items[2].params.prompt: required (${file}:5)`,
        "",
      ].join("\n"),
    );
  });

  test("commands - a malformed batch file is reported before any call, exit 2", async () => {
    const file = join(dir, "broken.jsonl");
    await writeFile(file, '{"prompt": "ok"}\n{"prompt": \n');
    const { err, exitCode } = await shoal(["submit", file, "--addr", addr]);
    assert.equal(exitCode, 2);
    assert.match(err, new RegExp(`^error: ${file.replace(/[.]/g, "\\.")}:2: not valid JSON: `));
    assert.equal(fake.submitted.length, 0);
  });

  test("commands - bad --label and --priority are usage errors", async () => {
    const file = join(dir, "ok.json");
    await writeFile(file, '[{"params": {"prompt": "a"}}]');
    const label = await shoal(["submit", file, "--label", "novalue", "--addr", addr]);
    assert.equal(label.exitCode, 2);
    assert.equal(label.err, 'error: --label: "novalue" must be key=value\n');
    await assert.rejects(shoal(["submit", file, "--priority", "high"]), /--priority must be an integer/);
  });

  test("commands - results streams artifacts, verifies them and writes a manifest", async () => {
    const outDir = join(dir, "results-ok");
    await withClients(async (clients) => {
      const ctx = context(clients);
      const code = await commands.results(ctx, "b_test", { out: outDir });
      assert.equal(code, 0);
      assert.match(ctx.out.text, /wrote .*000-image\.png \(2\.\d KiB\)\n/);
      assert.match(ctx.out.text, /1 file \(2\.\d KiB\) and results\.json in .*; 1 item without output/);
    });
    assert.deepEqual((await readdir(outDir)).sort(), ["000-image.png", "results.json"]);
    assert.deepEqual(await readFile(join(outDir, "000-image.png")), PNG_BYTES);
    const manifest = JSON.parse(await readFile(join(outDir, "results.json"), "utf8"));
    assert.equal(manifest.batch_id, "b_test");
    assert.deepEqual(manifest.items, [
      {
        index: 0,
        status: "SUCCEEDED",
        model: "imagegen-tiny",
        error: null,
        files: [{ name: "image", path: "000-image.png", content_type: "image/png", size_bytes: PNG_BYTES.length, sha256: PNG_SHA }],
      },
      {
        index: 1,
        status: "FAILED",
        model: "imagegen-tiny",
        error: { code: "WORKER_LOST", message: "worker w-2 stopped answering", retryable: true },
        files: [],
      },
    ]);
  });

  test("commands - results keeps no file whose sha256 does not match, exit 1", async () => {
    fake.artifactSha = "tampered";
    const outDir = join(dir, "results-bad");
    const { err, exitCode } = await shoal(["results", "b_test", "--out", outDir, "--addr", addr]);
    assert.equal(exitCode, 1);
    assert.match(err, /^error: #000 image: shoal:\/\/artifacts\/a0: sha256 mismatch: expected [0-9a-f]{64}, got [0-9a-f]{64}; file not kept\n$/);
    assert.deepEqual(await readdir(outDir), ["results.json"]);
  });

  test("commands - results of an unfinished batch says when to come back", async () => {
    fake.batch = Batch.fromPartial({ id: "b_test", state: BatchState.BATCH_STATE_RUNNING, total: 2 });
    const { err, exitCode } = await shoal(["results", "b_test", "--addr", addr]);
    assert.equal(exitCode, 1);
    assert.match(err, /batch b_test is RUNNING; .*shoal watch b_test/);
  });

  test("commands - get, get --json and watch", async () => {
    const human = await shoal(["get", "b_test", "--addr", addr]);
    assert.match(human.out, /^batch b_test\n  state +COMPLETED\n/);
    const json = await shoal(["get", "b_test", "--json", "--addr", addr]);
    assert.equal(JSON.parse(json.out).results.length, 2);
    const watched = await shoal(["watch", "b_test", "--addr", addr]);
    assert.deepEqual(watched.out.trimEnd().split("\n"), [
      `#000  SUCCEEDED  w-1  run 40ms  image ${formatBytes(PNG_BYTES.length)}`,
      "#001  FAILED     WORKER_LOST: worker w-2 stopped answering (retryable) after 3 attempts",
      "batch b_test COMPLETED in 2.5s: 1 succeeded, 1 failed of 2",
    ]);
  });

  test("commands - watch of a queued batch notes its queue position and ETA on stderr as they change", async () => {
    const done = finishedBatch(BatchState.BATCH_STATE_COMPLETED);
    const eta = new Date(Date.now() + 90_000);
    fake.batch = { ...done, state: BatchState.BATCH_STATE_QUEUED, succeeded: 0, failed: 0, results: [], completedAt: undefined, queuePosition: 2, estimatedCompletionAt: undefined };
    const started = { ...fake.batch, state: BatchState.BATCH_STATE_RUNNING, queuePosition: 0, estimatedCompletionAt: eta };
    fake.events = [{ event: { $case: "batch", batch: started } }, { event: { $case: "item", item: done.results[0]! } }, { event: { $case: "item", item: done.results[1]! } }, { event: { $case: "batch", batch: done } }];
    const watched = await shoal(["watch", "b_test", "--addr", addr]);
    assert.equal(watched.out.trimEnd().split("\n").length, 3, "stdout: the two items and the summary");
    const notes = watched.err.trimEnd().split("\n");
    assert.equal(notes.length, 2, watched.err);
    assert.equal(notes[0], "batch b_test: queue position 2 (1 batch ahead); no estimate of its completion yet");
    // 90 s ahead when the test began; a slow machine may have used a few of them.
    assert.match(notes[1]!, /^batch b_test: expected to finish in 1m[0-3]\ds \((.+)\)$/);
    assert.ok(notes[1]!.endsWith(`(${formatTime(eta)})`));
  });

  test("commands - an unknown batch is NOT_FOUND in one line, no stack", async () => {
    const { err, exitCode } = await shoal(["get", "b_nope", "--addr", addr]);
    assert.equal(exitCode, 1);
    assert.equal(err, "error: NOT_FOUND: batch b_nope not found\n");
  });

  test("commands - workers, drain, cancel, retry and list", async () => {
    const w = await shoal(["workers", "--addr", addr]);
    assert.match(w.out, /w-1 +READY +2 +10 +#0 NVIDIA H100  70\.0\/80\.0 GiB \(reserved 1\.0 GiB\)  imagegen-tiny/);
    const d = await shoal(["drain", "w-1", "--addr", addr]);
    assert.equal(d.out, "worker w-1: DRAINING; no new items go there, 2 in flight will finish first\n");
    const c = await shoal(["cancel", "b_test", "--addr", addr]);
    assert.match(c.out, /^batch b_test CANCELLED/);
    const r = await shoal(["retry", "b_test", "--addr", addr]);
    assert.equal(r.out, "b_retry\n");
    assert.doesNotMatch(r.err, /skipped/, "nothing was left out");
    // A CONTENT_POLICY item is left out, and retry says so.
    const blocked = ItemResult.fromPartial({
      index: 2,
      status: ItemStatus.ITEM_STATUS_FAILED,
      model: "imagegen-tiny",
      error: { code: "CONTENT_POLICY", message: "blocked by the content policy: weapons (rule weapons, params.prompt)", retryable: false },
    });
    const plain = fake.batch;
    fake.batch = { ...fake.batch, total: 3, failed: 2, results: [...fake.batch.results, blocked] };
    const r2 = await shoal(["retry", "b_test", "--addr", addr]);
    fake.batch = plain;
    assert.equal(r2.out, "b_retry\n");
    assert.match(r2.err, /^ {2}skipped: {5}1 failed item not retryable: 1 CONTENT_POLICY \(blocked by the content policy; never retried\)$/m);
    const l = await shoal(["list", "--page-size", "1", "--addr", addr]);
    assert.match(l.out, /^BATCH +STATE/);
    assert.match(l.out, /b_test +COMPLETED +2\/2/);
    assert.equal(l.err, "more: shoal list --page-size 1 --page-token next-1\n");
  });

  test("commands - usage prints the days, then each tenant's plan limits with unlimited for 0; --json has both", async () => {
    fake.usage = {
      days: [
        { tenant: "bob", day: "2026-11-29", accepted: 7, succeeded: 5, failed: 1, contentPolicy: 1, cancelled: 0, gpuSeconds: 12.34 },
        { tenant: "carol", day: "2026-11-30", accepted: 2, succeeded: 2, failed: 0, contentPolicy: 0, cancelled: 0, gpuSeconds: 0.5 },
      ],
      limits: [
        { tenant: "bob", maxItemsPerBatch: 20, itemsPerDay: 100, maxQueuedItems: 0 },
        { tenant: "carol", maxItemsPerBatch: 0, itemsPerDay: 0, maxQueuedItems: 500 },
      ],
    };
    const u = await shoal(["usage", "--since", "2026-11-01", "--tenant", "bob", "--addr", addr]);
    assert.equal(u.exitCode, 0, u.err);
    assert.deepEqual(fake.usageAsked.at(-1), { tenant: "bob", since: "2026-11-01" });
    const lines = u.out.split("\n");
    assert.match(lines[0]!, /^DAY \(UTC\) +TENANT +ACCEPTED/);
    assert.match(lines[1]!, /^2026-11-29 +bob +7 +5 +1 +1 +0 +12\.3$/);
    const at = lines.indexOf("plan limits (--api-keys-file):");
    assert.ok(at > 2, u.out);
    assert.match(lines[at + 1]!, /^TENANT +MAX_ITEMS_PER_BATCH +ITEMS_PER_DAY +MAX_QUEUED_ITEMS$/);
    assert.match(lines[at + 2]!, /^bob +20 +100 +unlimited$/);
    assert.match(lines[at + 3]!, /^carol +unlimited +unlimited +500$/);
    assert.match(lines[at + 4]!, /^\(unlimited: no limit of the tenant's own; the coordinator's --max-items and --max-queued-items still apply\)$/);

    const j = await shoal(["usage", "--json", "--addr", addr]);
    assert.equal(j.exitCode, 0, j.err);
    const json = JSON.parse(j.out) as { days: Record<string, unknown>[]; limits: Record<string, unknown>[] };
    assert.deepEqual(json.days[0], { tenant: "bob", day: "2026-11-29", accepted: 7, succeeded: 5, failed: 1, content_policy: 1, cancelled: 0, gpu_seconds: 12.34 });
    assert.deepEqual(json.limits, [
      { tenant: "bob", max_items_per_batch: 20, items_per_day: 100, max_queued_items: null },
      { tenant: "carol", max_items_per_batch: null, items_per_day: null, max_queued_items: 500 },
    ]);

    // No days and no limits: both said in words.
    fake.usage = { days: [], limits: [] };
    const none = await shoal(["usage", "--addr", addr]);
    assert.equal(none.out, "no usage recorded in that period\n\nplan limits: none (no limits in the keys file for these tenants; only the coordinator's --max-items and --max-queued-items apply)\n");
  });

  test("commands - an unreachable coordinator is named with a hint", async () => {
    const { err, exitCode } = await shoal(["--addr", "127.0.0.1:1", "workers"]);
    assert.equal(exitCode, 1);
    assert.match(err, /^error: cannot reach the Shoal coordinator at 127\.0\.0\.1:1 \(UNAVAILABLE.*\); is it running\?/);
    assert.equal(err.split("\n").length, 2);
  });

  test("commands - grpc errors become ClientError with the status name", async () => {
    await withClients(async (clients) => {
      await assert.rejects(clients.getBatch("b_missing"), (err: unknown) => {
        assert.ok(err instanceof ClientError);
        assert.equal(err.code, "NOT_FOUND");
        assert.equal(err.grpcCode, status.NOT_FOUND);
        assert.equal(err.details, "batch b_missing not found");
        return true;
      });
    });
  });

  test("commands - following a batch survives a dropped stream and reports items once", async () => {
    const batch = finishedBatch(BatchState.BATCH_STATE_COMPLETED);
    const item0 = { event: { $case: "item" as const, item: batch.results[0]! } };
    let watches = 0;
    const clients = {
      watchBatch: async function* () {
        watches++;
        yield item0;
        if (watches === 1) throw new ClientError(status.UNAVAILABLE, "connection reset");
        yield { event: { $case: "item" as const, item: batch.results[1]! } };
        yield { event: { $case: "batch" as const, batch } };
      },
      getBatch: async () => batch,
    } as unknown as ShoalClients;
    const seen: number[] = [];
    const reconnects: string[] = [];
    const final = await followBatch(
      clients,
      "b_test",
      { onItem: (r) => seen.push(r.index), onReconnect: (reason) => reconnects.push(reason) },
      { backoffMs: () => 1 },
    );
    assert.equal(final.state, BatchState.BATCH_STATE_COMPLETED);
    assert.deepEqual(seen, [0, 1]);
    assert.deepEqual(reconnects, ["UNAVAILABLE: connection reset"]);
  });

  test("commands - a first connection failure is not retried", async () => {
    const clients = {
      // eslint-disable-next-line require-yield
      watchBatch: async function* () {
        throw new ClientError(status.UNAVAILABLE, "no connection");
      },
    } as unknown as ShoalClients;
    await assert.rejects(followBatch(clients, "b_x", {}, { backoffMs: () => 1 }), /UNAVAILABLE: no connection/);
  });
});
