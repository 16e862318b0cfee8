// The storage parts that decide without NATS: how write failures are classified, how the
// terminal write retries (against a fake store), how big a terminal record may get, page
// tokens, and the storage flags.

import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { JetStreamApiError } from "@nats-io/jetstream";
import { BatchState, ItemStatus, type Batch, type ItemResult } from "../../proto/gen/shoal/v1/shoal.js";
import { BatchRecord } from "../../proto/gen/shoal/v1/wire.js";
import { coordinatorOptionsFrom, coordinatorFlags, commonOptions } from "../../cli/server-commands.js";
import { Command } from "commander";
import { decodePageToken, encodePageToken, tenantToken } from "../../coordinator/batch-index.js";
import { FinalizeConflict, type StoredRecord } from "../../coordinator/batch-store.js";
import { fitTerminalRecord, terminalRecordBound } from "../../coordinator/record-size.js";
import { TerminalWriteStopped, writeTerminal, type TerminalStore } from "../../coordinator/terminal-writer.js";
import { IMAGEGEN_TINY } from "../../shared/builtin-models.js";
import { ConfigError } from "../../shared/errors.js";
import { StorageError, isNothingStored, isWrongLastSequence, retryWhileNothingStored, storageError } from "../../shared/storage-errors.js";
import { parseDuration } from "../../shared/units.js";
import { SIMULATED_MODELS } from "../../worker/simulated-backend.js";

const apiError = (err_code: number, description: string, code = 503) => new JetStreamApiError({ err_code, code, description });

describe("storage - write failures", () => {
  test("storage - full, too large and unavailable are told apart and name what to change", () => {
    const bucket = storageError(apiError(10077, "maximum bytes exceeded"), "the batch records bucket (shoal-batches)", "--batches-max-bytes");
    assert.equal(bucket.code, "STORAGE_FULL");
    assert.equal(bucket.reason, "storage_full");
    assert.match(bucket.message, /the batch records bucket \(shoal-batches\) is full \(maximum bytes exceeded\).*--batches-max-bytes/);
    const server = storageError(apiError(10023, "insufficient resources"), "the results stream", "--results-max-bytes");
    assert.equal(server.code, "STORAGE_FULL");
    assert.match(server.message, /max_file_store/);
    assert.equal(storageError(apiError(10054, "message size exceeds maximum allowed", 400), "x", "y").code, "RECORD_TOO_LARGE");
    const payload = new Error("'payload' max_payload size exceeded");
    payload.name = "InvalidArgumentError";
    assert.equal(storageError(payload, "x", "y").reason, "record_too_large");
    const timeout = new Error("timeout");
    timeout.name = "TimeoutError";
    assert.equal(storageError(timeout, "x", "y").code, "STORAGE_UNAVAILABLE");
    assert.equal(storageError(new Error("connection closed"), "x", "y").reason, "unavailable");
  });

  test("storage - only a wrong last sequence is a lost compare-and-set", () => {
    assert.ok(isWrongLastSequence(apiError(10071, "wrong last sequence: 7", 400)));
    assert.ok(!isWrongLastSequence(apiError(10077, "maximum bytes exceeded")));
    assert.ok(!isWrongLastSequence(new Error("wrong last sequence: 7")));
  });
});

describe("storage - a write that reached no stream", () => {
  const noResponders = () => Object.assign(new Error("jetstream is not enabled"), { name: "JetStreamNotEnabled" });

  test("storage - no responders means nothing stored; a timeout or a full store does not", () => {
    assert.ok(isNothingStored(noResponders()));
    assert.ok(isNothingStored(new Error("no responders: no stream stores shoal.results.x")));
    assert.ok(isNothingStored(storageError(noResponders(), "x", "y")));
    const timeout = Object.assign(new Error("timeout"), { name: "TimeoutError" });
    assert.ok(!isNothingStored(timeout));
    assert.ok(!isNothingStored(storageError(timeout, "x", "y")));
    assert.ok(!isNothingStored(apiError(10077, "maximum bytes exceeded")));
    assert.ok(!isNothingStored("no responders:"));
  });

  test("storage - sent again while nothing is stored (a leader election), within the window; other failures at once", async () => {
    let calls = 0;
    const retried: number[] = [];
    const value = await retryWhileNothingStored(
      async () => {
        if (++calls < 3) throw noResponders();
        return "stored";
      },
      { windowMs: 5000, onRetry: (attempt) => retried.push(attempt) },
    );
    assert.equal(value, "stored");
    assert.deepEqual(retried, [1, 2]);

    let full = 0;
    await assert.rejects(retryWhileNothingStored(async () => { full++; throw apiError(10077, "maximum bytes exceeded"); }, { windowMs: 5000 }), /maximum bytes/);
    assert.equal(full, 1, "a full store is not sent again");

    let endless = 0;
    await assert.rejects(retryWhileNothingStored(async () => { endless++; throw noResponders(); }, { windowMs: 800 }), { name: "JetStreamNotEnabled" });
    assert.ok(endless >= 2 && endless <= 4, `tries within 800 ms: ${endless}`);

    const stopping = new AbortController();
    stopping.abort();
    let stopped = 0;
    await assert.rejects(retryWhileNothingStored(async () => { stopped++; throw noResponders(); }, { windowMs: 5000, signal: stopping.signal }));
    assert.equal(stopped, 1, "a stopping coordinator does not send again");
  });
});

function batch(id: string, state = BatchState.BATCH_STATE_COMPLETED): Batch {
  return { id, state, total: 1, succeeded: 1, failed: 0, cancelled: 0, results: [], createdAt: new Date(0), completedAt: new Date(1), labels: {}, running: 0, priority: 0, queuePosition: 0, estimatedCompletionAt: undefined } as Batch;
}

function record(id: string, state = BatchState.BATCH_STATE_COMPLETED): BatchRecord {
  return BatchRecord.fromPartial({ batch: batch(id, state), tenant: "t" });
}

/** A store whose answers are scripted per call. */
class FakeStore implements TerminalStore {
  replaced: number[] = [];
  created = 0;
  constructor(
    private readonly script: (op: "replace" | "create", revision: number) => number | Error,
    private readonly stored?: StoredRecord,
  ) {}
  async replace(_r: BatchRecord, revision: number): Promise<number> {
    this.replaced.push(revision);
    const out = this.script("replace", revision);
    if (out instanceof Error) throw out;
    return out;
  }
  async create(): Promise<number> {
    this.created++;
    const out = this.script("create", 0);
    if (out instanceof Error) throw out;
    return out;
  }
  async get(): Promise<StoredRecord | undefined> {
    return this.stored;
  }
}

const fast = { initialDelayMs: 1, maxDelayMs: 4 };

describe("storage - the terminal write", () => {
  test("storage - a full store is retried with growing, capped delays until the write succeeds", async () => {
    let calls = 0;
    const store = new FakeStore(() => (++calls <= 4 ? apiError(10077, "maximum bytes exceeded") : 42));
    const failures: { reason: string; retryInMs: number }[] = [];
    const out = await writeTerminal({
      store,
      record: record("b1"),
      revision: () => 7,
      onFailure: (e, _attempt, retryInMs) => failures.push({ reason: e.reason, retryInMs }),
      signal: new AbortController().signal,
      ...fast,
    });
    assert.equal(out.ours, true);
    assert.equal(out.attempts, 5);
    assert.deepEqual(store.replaced, [7, 7, 7, 7, 7]);
    assert.deepEqual(failures.map((f) => f.reason), ["storage_full", "storage_full", "storage_full", "storage_full"]);
    assert.ok(failures.every((f) => f.retryInMs <= 4));
  });

  test("storage - another coordinator's terminal record wins and is not retried", async () => {
    const theirs = record("b1", BatchState.BATCH_STATE_CANCELLED);
    const store = new FakeStore(() => new FinalizeConflict("changed"), { record: theirs, revision: 9, writtenAtMs: 0 });
    let failures = 0;
    const out = await writeTerminal({ store, record: record("b1"), revision: () => 7, onFailure: () => failures++, signal: new AbortController().signal, ...fast });
    assert.equal(out.ours, false);
    assert.equal(out.stored.state, BatchState.BATCH_STATE_CANCELLED);
    assert.equal(failures, 0);
    assert.deepEqual(store.replaced, [7]);
  });

  test("storage - a refreshed running record is written over at its new revision; a vanished one is created", async () => {
    const running = record("b1", BatchState.BATCH_STATE_RUNNING);
    const refreshed = new FakeStore((_op, rev) => (rev === 8 ? 9 : new FinalizeConflict("changed")), { record: running, revision: 8, writtenAtMs: 0 });
    const out = await writeTerminal({ store: refreshed, record: record("b1"), revision: () => 7, onFailure: () => assert.fail("no failure"), signal: new AbortController().signal, ...fast });
    assert.equal(out.ours, true);
    assert.deepEqual(refreshed.replaced, [7, 8]);
    const gone = new FakeStore((op) => (op === "create" ? 1 : new FinalizeConflict("changed")));
    await writeTerminal({ store: gone, record: record("b1"), revision: () => 7, onFailure: () => assert.fail("no failure"), signal: new AbortController().signal, ...fast });
    assert.equal(gone.created, 1);
  });

  test("storage - the webhook is recorded once, before the record, and its failure is retried too", async () => {
    const order: string[] = [];
    let prepares = 0;
    const store = new FakeStore(() => (order.push("record"), 3));
    await writeTerminal({
      store,
      record: record("b1"),
      revision: () => 2,
      prepare: async () => {
        order.push("webhook");
        if (++prepares === 1) throw new StorageError("STORAGE_UNAVAILABLE", "webhooks", "timeout");
      },
      onFailure: () => undefined,
      signal: new AbortController().signal,
      ...fast,
    });
    assert.deepEqual(order, ["webhook", "webhook", "record"]);
  });

  test("storage - stopping the coordinator ends the retries; the record stays for the next start", async () => {
    const stop = new AbortController();
    const store = new FakeStore(() => apiError(10023, "insufficient resources"));
    const writing = writeTerminal({ store, record: record("b1"), revision: () => 1, onFailure: (_e, attempt) => attempt === 3 && stop.abort(), signal: stop.signal, ...fast });
    await assert.rejects(writing, TerminalWriteStopped);
    assert.equal(store.replaced.length, 3);
  });
});

describe("storage - the terminal record's size", () => {
  const result = (index: number, over: Partial<ItemResult> = {}): ItemResult => ({
    index,
    status: ItemStatus.ITEM_STATUS_SUCCEEDED,
    error: undefined,
    artifacts: [],
    workerId: "w".repeat(64),
    attempts: 100,
    queueMs: 7 * 24 * 3600 * 1000,
    runMs: 24 * 3600 * 1000,
    model: "sim-zero",
    ...over,
  });

  test("storage - the bound at submit covers the terminal record of results as workers write them", () => {
    const sim = SIMULATED_MODELS.find((m) => m.name === "sim-zero")!;
    const open = BatchRecord.fromPartial({
      batch: batch("b_0000000000aaaaaaaaaa", BatchState.BATCH_STATE_QUEUED),
      items: Array.from({ length: 100 }, (_, i) => (i % 2 ? { model: sim.name, params: { tag: `t${i}` } } : { model: IMAGEGEN_TINY.name, params: { prompt: "a boat" } })),
      tenant: "alice",
    });
    const bound = terminalRecordBound(open, open.items.map((it) => (it.model === sim.name ? sim : IMAGEGEN_TINY)));
    const results = open.items.map((it, i) =>
      it.model === sim.name
        ? result(i, { status: ItemStatus.ITEM_STATUS_FAILED, error: { code: "INFERENCE_FAILED", message: "m".repeat(96), retryable: true } })
        : result(i, {
            model: IMAGEGEN_TINY.name,
            artifacts: [{ name: "image", contentType: "image/webp", sizeBytes: 4_000_000, sha256: "f".repeat(64), uri: `shoal://artifacts/b_0000000000aaaaaaaaaa/${i}/image` }],
          }),
    );
    const terminal = { ...open, batch: { ...open.batch!, state: BatchState.BATCH_STATE_COMPLETED, completedAt: new Date(), results } };
    const size = BatchRecord.encode(terminal).finish().length;
    assert.ok(size <= bound, `terminal record ${size} bytes within the bound ${bound}`);
  });

  test("storage - long error messages are shortened only as far as the record must shrink", () => {
    const long = { code: "INFERENCE_FAILED", message: "é".repeat(3000), retryable: true };
    const rec = BatchRecord.fromPartial({ batch: { ...batch("b1"), results: Array.from({ length: 20 }, (_, i) => result(i, { status: ItemStatus.ITEM_STATUS_FAILED, error: long })) } });
    const full = BatchRecord.encode(rec).finish().length;
    assert.equal(fitTerminalRecord(rec, full), rec, "a record that fits is left alone");
    const fitted = fitTerminalRecord(rec, 30_000);
    assert.ok(BatchRecord.encode(fitted).finish().length <= 30_000);
    const msg = fitted.batch!.results[0]!.error!.message;
    assert.ok(Buffer.byteLength(msg) <= 1024 && msg.endsWith("(shortened to fit the batch record)"), msg.slice(-60));
    assert.ok(!msg.includes("\uFFFD"), "cut on a character boundary");
    assert.equal(fitted.batch!.results.length, 20, "no result is dropped");
  });
});

describe("storage - ListBatches tokens and the flags", () => {
  test("storage - page tokens round-trip; anything else is refused", () => {
    for (const seq of [1, 50, 123_456_789, 2 ** 40]) assert.equal(decodePageToken(encodePageToken(seq)), seq);
    for (const bad of ["", "b_0000000000aaaaaaaaaa", "s", "s-1", "s0", "x12", "s!!"]) assert.equal(decodePageToken(bad), undefined, bad);
  });

  test("storage - tenant tokens are subject-safe and differ per tenant", () => {
    const tokens = ["", "alice", "bob", "a.b c>*", "ünïcode"].map(tenantToken);
    for (const t of tokens) assert.match(t, /^t[0-9a-f]{32}$/);
    assert.equal(new Set(tokens).size, tokens.length);
  });

  const parse = (args: string[]) => {
    const cmd = commonOptions(coordinatorFlags(new Command("coordinator"))).exitOverride();
    cmd.parse(args, { from: "user" });
    return coordinatorOptionsFrom(cmd.opts());
  };

  test("storage - --retention takes days and defaults to 7d; byte limits take units or 0", () => {
    assert.equal(parseDuration("--retention", "7d"), 7 * 24 * 3600 * 1000);
    const d = parse([]);
    assert.deepEqual(d.storage, { retentionMs: 7 * 24 * 3600 * 1000, batchesMaxBytes: 0, resultsMaxBytes: 0, artifactsMaxBytes: 0 });
    const o = parse(["--retention", "36h", "--batches-max-bytes", "64KiB", "--results-max-bytes", "1GiB", "--artifacts-max-bytes", "2GB"]);
    assert.deepEqual(o.storage, { retentionMs: 36 * 3600 * 1000, batchesMaxBytes: 65536, resultsMaxBytes: 1024 ** 3, artifactsMaxBytes: 2e9 });
    assert.throws(() => parse(["--retention", "500ms"]), (e) => e instanceof ConfigError && e.option === "--retention");
    assert.throws(() => parse(["--retention", "a week"]), (e) => e instanceof ConfigError && /7d/.test(e.message));
    assert.throws(() => parse(["--artifacts-max-bytes", "lots"]), (e) => e instanceof ConfigError && e.option === "--artifacts-max-bytes");
  });
});
