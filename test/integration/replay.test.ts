// Guarantee 2 across a coordinator restart: replaying the results log gives the results that
// applying the same entries live gives. Logs are generated with fast-check (fixed seed): outcomes
// of every kind, revocations, duplicates and late results of revoked attempts. Each log is
// recorded the way workers and the coordinator write it (batch record in the batches KV bucket,
// ResultLogEntry messages on the batch's results subject, in order), then a real coordinator
// process starts on that store, rebuilds its state through its recovery path, and its GetBatch
// and WatchBatch answers are compared with ActiveBatch fed the same entries one by one.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { AckPolicy, DeliverPolicy, jetstream } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import fc from "fast-check";
import { ActiveBatch, type ItemSlot } from "../../coordinator/batch-state.js";
import { BatchStore } from "../../coordinator/batch-store.js";
import { LeaseTokens, loadLeaseKey } from "../../coordinator/lease-tokens.js";
import { fence } from "../../coordinator/outcome-fence.js";
import { BatchState, ItemStatus, type Batch, type ItemResult } from "../../proto/gen/shoal/v1/shoal.js";
import { ResultLogEntry, type BatchRecord, type ItemOutcome } from "../../proto/gen/shoal/v1/wire.js";
import { encodeMessage } from "../../shared/codec.js";
import { newBatchId } from "../../shared/ids.js";
import { ensureInfrastructure } from "../../shared/jetstream-setup.js";
import { Names } from "../../shared/subjects.js";
import { Stack } from "../harness/processes.js";
import { TestClient } from "../harness/client.js";

const MAX_ATTEMPTS = 3;
const SEED = 8_2024;
const LOGS = 150;
const MODEL = "imagegen-tiny";
const COORDINATOR_ARGS = ["--max-attempts", String(MAX_ATTEMPTS), "--unplaceable-grace", "1h"];

// ---------------------------------------------------------------------------------------------
// Generated logs

type Kind = "ok" | "retryable" | "oom" | "fatal" | "cancelled";
interface GenOutcome {
  index: number;
  attempt: number;
  /** Which coordinator incarnation made the lease: tokens of the same attempt may differ. */
  epoch: "a" | "b";
  kind: Kind;
  runMs: number;
}
type GenMsg =
  | { t: "results"; worker: "w1" | "w2" | "w3"; outcomes: GenOutcome[] }
  | { t: "revoked"; index: number; attempt: number; epoch: "a" | "b" }
  /** The message `back` places earlier, stored again (a redelivery, a worker resending). */
  | { t: "dup"; back: number };
interface GenLog {
  n: number;
  msgs: GenMsg[];
}

const logArb: fc.Arbitrary<GenLog> = fc.integer({ min: 1, max: 5 }).chain((n) => {
  // Mostly real items; now and then an index past the end, which must change nothing.
  const index = fc.oneof({ weight: 12, arbitrary: fc.integer({ min: 0, max: n - 1 }) }, { weight: 1, arbitrary: fc.constant(n) });
  const attempt = fc.integer({ min: 1, max: 4 });
  const epoch = fc.constantFrom("a" as const, "b" as const);
  const outcome: fc.Arbitrary<GenOutcome> = fc.record({
    index,
    attempt,
    epoch,
    kind: fc.constantFrom<Kind>("ok", "ok", "retryable", "retryable", "oom", "fatal", "cancelled"),
    runMs: fc.integer({ min: 0, max: 5000 }),
  });
  const msg: fc.Arbitrary<GenMsg> = fc.oneof(
    { weight: 6, arbitrary: fc.record({ t: fc.constant("results" as const), worker: fc.constantFrom("w1" as const, "w2" as const, "w3" as const), outcomes: fc.array(outcome, { minLength: 1, maxLength: 3 }) }) },
    { weight: 3, arbitrary: fc.record({ t: fc.constant("revoked" as const), index, attempt, epoch }) },
    { weight: 2, arbitrary: fc.record({ t: fc.constant("dup" as const), back: fc.integer({ min: 1, max: 6 }) }) },
  );
  return fc.record({ n: fc.constant(n), msgs: fc.array(msg, { minLength: 1, maxLength: 25 }) });
});

/** The log as stored: duplicates resolved to copies of the earlier message (or dropped). */
function entries(batchId: string, log: GenLog, tokens: LeaseTokens): ResultLogEntry[] {
  const out: ResultLogEntry[] = [];
  // Tokens as the coordinator issues them (bound to item and worker under the fleet's lease
  // key). A revocation names w1's attempt: w1's later outcome of it is a late result.
  const tokenOf = (index: number, attempt: number, epoch: string, worker: string) => tokens.issue(batchId, index, attempt, worker, `epoch${epoch}`);
  for (const m of log.msgs) {
    if (m.t === "dup") {
      const earlier = out[out.length - m.back];
      if (earlier) out.push(earlier);
    } else if (m.t === "revoked") {
      out.push({ entry: { $case: "revoked", revoked: { lease: { batchId, index: m.index, token: tokenOf(m.index, m.attempt, m.epoch, "w1") }, reason: `worker lost (attempt ${m.attempt}${m.epoch})` } } });
    } else {
      const outcomes = m.outcomes.map((o) => outcomeOf(batchId, o, tokenOf(o.index, o.attempt, o.epoch, m.worker)));
      out.push({ entry: { $case: "results", results: { workerId: m.worker, outcomes } } });
    }
  }
  return out;
}

function outcomeOf(batchId: string, o: GenOutcome, token: string): ItemOutcome {
  const lease = { batchId, index: o.index, token };
  const base = { lease, artifacts: [], runMs: o.runMs, vramUsedBytes: 0 };
  switch (o.kind) {
    case "ok":
      return {
        ...base,
        status: ItemStatus.ITEM_STATUS_SUCCEEDED,
        error: undefined,
        artifacts: [{ name: "image", contentType: "image/png", sizeBytes: 100 + o.index, sha256: `${o.index}${o.attempt}`.padEnd(64, "a"), uri: `shoal://artifacts/${batchId}/${o.index}/${token}/image` }],
        vramUsedBytes: 1e6,
      };
    case "retryable":
      return { ...base, status: ItemStatus.ITEM_STATUS_FAILED, error: { code: "TIMEOUT", message: `ran too long (${token})`, retryable: true } };
    case "oom":
      return { ...base, status: ItemStatus.ITEM_STATUS_FAILED, error: { code: "OUT_OF_MEMORY", message: `needed more (${token})`, retryable: true } };
    case "fatal":
      return { ...base, status: ItemStatus.ITEM_STATUS_FAILED, error: { code: "CONTENT_POLICY", message: `refused (${token})`, retryable: false } };
    case "cancelled":
      return { ...base, status: ItemStatus.ITEM_STATUS_CANCELLED, error: { code: "CANCELLED", message: "cancelled", retryable: false } };
  }
}

function recordOf(batchId: string, n: number): BatchRecord {
  return {
    batch: { id: batchId, state: BatchState.BATCH_STATE_QUEUED, total: n, succeeded: 0, failed: 0, cancelled: 0, results: [], createdAt: new Date(), completedAt: undefined, labels: { suite: "replay" }, running: 0, priority: 0, queuePosition: 0, estimatedCompletionAt: undefined },
    items: Array.from({ length: n }, (_, i) => ({ model: MODEL, params: { prompt: `item ${i}`, width: 64, height: 64, steps: 1 } })),
    idempotencyKey: "",
    webhook: undefined,
    tenant: "",
    retryOf: "",
    sourceIndices: [],
    policyBlocked: [],
  };
}

// ---------------------------------------------------------------------------------------------
// The live side: the same entries applied one at a time to ActiveBatch

function live(record: BatchRecord, log: ResultLogEntry[], tokens: LeaseTokens, opts: { ignoreRevocations?: boolean } = {}): ActiveBatch {
  const slots: ItemSlot[] = record.items.map((item) => ({
    model: item.model,
    params: item.params ?? {},
    need: { activationBytes: 0, weightsBytes: 0 },
    state: "pending",
    attempts: 0,
    lease: undefined,
    closed: undefined,
    result: undefined,
    queuedAtMs: 0,
    firstQueuedAtMs: 0,
  }));
  const b = new ActiveBatch(record, 1, slots, MAX_ATTEMPTS);
  for (const e of log) {
    if (e.entry?.$case === "revoked") {
      if (opts.ignoreRevocations) continue;
      const { lease, reason } = e.entry.revoked;
      // The fence the coordinator applies first (no current attempts: none are in the log).
      if (!fence(tokens, b.id, lease!.index, lease!.token, undefined, b, false).ok) continue;
      b.applyRevocation(lease!.index, lease!.token, { code: "WORKER_LOST", message: reason, retryable: true }, 0);
    } else if (e.entry?.$case === "results") {
      for (const o of e.entry.results.outcomes) {
        if (fence(tokens, b.id, o.lease!.index, o.lease!.token, e.entry.results.workerId, b, false).ok) b.applyOutcome(o, e.entry.results.workerId, 0);
      }
    }
  }
  return b;
}

/** What must agree: everything but times (queue_ms and completed_at depend on the clock). */
function comparable(r: ItemResult) {
  return {
    index: r.index,
    status: ItemStatus[r.status],
    error: r.error ? { code: r.error.code, message: r.error.message, retryable: r.error.retryable } : undefined,
    artifacts: r.artifacts.map((a) => ({ name: a.name, contentType: a.contentType, sizeBytes: Number(a.sizeBytes), sha256: a.sha256, uri: a.uri })),
    workerId: r.workerId,
    attempts: r.attempts,
    runMs: Number(r.runMs),
    model: r.model,
  };
}

interface Expected {
  state: BatchState;
  counts: [number, number, number];
  /** Every result when terminal; the finished items (in item order) otherwise. */
  results: ReturnType<typeof comparable>[];
}

function expectedOf(b: ActiveBatch): Expected {
  const terminal = b.isComplete;
  return {
    state: terminal ? b.terminalState() : b.doneCount > 0 ? BatchState.BATCH_STATE_RUNNING : BatchState.BATCH_STATE_QUEUED,
    counts: [b.succeeded, b.failed, b.cancelled],
    results: b.items.filter((s) => s.state === "done").map((s) => comparable(s.result!)),
  };
}

interface Observed {
  batch: Batch;
  /** Finished items from WatchBatch when the batch is not terminal. */
  watched: ItemResult[];
}

/** The differences between what the coordinator answered and what was expected; [] when none. */
function differences(obs: Observed, exp: Expected): string[] {
  const out: string[] = [];
  const b = obs.batch;
  if (b.state !== exp.state) out.push(`state ${BatchState[b.state]}, expected ${BatchState[exp.state]}`);
  const counts = [b.succeeded, b.failed, b.cancelled];
  if (JSON.stringify(counts) !== JSON.stringify(exp.counts)) out.push(`counts ${JSON.stringify(counts)}, expected ${JSON.stringify(exp.counts)}`);
  const terminal = exp.state === BatchState.BATCH_STATE_COMPLETED || exp.state === BatchState.BATCH_STATE_FAILED || exp.state === BatchState.BATCH_STATE_CANCELLED;
  const got = (terminal ? b.results : obs.watched).map(comparable);
  if (terminal && b.results.length !== b.total) out.push(`${b.results.length} results of ${b.total}`);
  if (!terminal && b.results.length !== 0) out.push(`a running batch with ${b.results.length} results`);
  try {
    assert.deepEqual(got, exp.results);
  } catch (err) {
    out.push(`results differ: ${(err as Error).message}`);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

describe("replay - a restarted coordinator rebuilds from the results log what live application gave", () => {
  const stack = new Stack();
  const names = new Names();
  let nc: NatsConnection;
  let client: TestClient;
  let tokens: LeaseTokens;
  const logs = fc.sample(logArb, { seed: SEED, numRuns: LOGS });
  const recorded: { batchId: string; record: BatchRecord; log: ResultLogEntry[]; expected: Expected }[] = [];

  async function observe(batchId: string): Promise<Observed> {
    const batch = await client.get(batchId);
    const watched: ItemResult[] = [];
    const done = batch.succeeded + batch.failed + batch.cancelled;
    if (batch.state === BatchState.BATCH_STATE_RUNNING && done > 0) {
      // A running batch's finished items are the first events of a watch; then it waits.
      for await (const ev of client.sdk.watchBatch(batchId, { timeoutMs: 20_000 })) {
        if (ev.event?.$case === "item") watched.push(ev.event.item);
        if (watched.length === done || ev.event?.$case === "batch") break;
      }
    }
    return { batch, watched };
  }

  async function checkAll(): Promise<void> {
    const failures: string[] = [];
    for (const r of recorded) {
      const diff = differences(await observe(r.batchId), r.expected);
      if (diff.length > 0) failures.push(`batch ${r.batchId} (${r.record.items.length} items, log ${JSON.stringify(r.log)}):\n  ${diff.join("\n  ")}`);
    }
    assert.deepEqual(failures.slice(0, 3), [], `${failures.length} of ${recorded.length} replayed batches differ from live application`);
  }

  before(async () => {
    await stack.startNats();
    nc = await connect({ servers: stack.natsUrl, timeout: 10_000 });
    const infra = await ensureInfrastructure(nc, names);
    const store = new BatchStore(infra.batches, infra.idempotency, names);
    const js = jetstream(nc);
    // The fleet's lease key, made as the coordinator makes it; the coordinator started below reads it.
    tokens = new LeaseTokens(await loadLeaseKey(nc, names.leaseKeyBucket));
    for (const log of logs) {
      const batchId = newBatchId();
      const record = recordOf(batchId, log.n);
      const entriesOfLog = entries(batchId, log, tokens);
      recorded.push({ batchId, record, log: entriesOfLog, expected: expectedOf(live(record, entriesOfLog, tokens)) });
    }
    // Recorded as they are in production: the open marker and the record first (what a restart
    // resumes from), then the entries in order.
    await Promise.all(
      recorded.map(async ({ batchId, record, log }) => {
        await store.markOpen(batchId);
        await store.create(record);
        for (const e of log) await js.publish(names.results(batchId), encodeMessage(ResultLogEntry, e), { timeout: 10_000 });
      }),
    );
    // The previous coordinator had consumed and acknowledged all of it: its durable consumer
    // stands at the end of the stream, so the new one learns these entries only by replay.
    await infra.jsm.consumers.add(names.resultsStream, {
      durable_name: names.resultsConsumer,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.New,
      filter_subject: names.allResults,
    });
    await stack.startCoordinator(COORDINATOR_ARGS);
    client = new TestClient(stack.grpcAddr);
  });

  after(async () => {
    client?.close();
    await nc?.close();
    await stack.stop();
  });

  test("replay - the generated logs cover what the replay must get right", (t) => {
    const all = recorded.map((r) => r.log);
    const late = all.filter((log) => {
      const revoked = new Set<string>();
      return log.some((e) => {
        if (e.entry?.$case === "revoked") revoked.add(`${e.entry.revoked.lease!.index}/${e.entry.revoked.lease!.token}`);
        return e.entry?.$case === "results" && e.entry.results.outcomes.some((o) => revoked.has(`${o.lease!.index}/${o.lease!.token}`));
      });
    });
    const dups = all.filter((log) => log.some((e, i) => log.indexOf(e) !== i));
    const terminal = recorded.filter((r) => r.expected.state !== BatchState.BATCH_STATE_QUEUED && r.expected.state !== BatchState.BATCH_STATE_RUNNING);
    const running = recorded.filter((r) => r.expected.state === BatchState.BATCH_STATE_RUNNING);
    const exhausted = recorded.filter((r) => r.expected.results.some((x) => x.error?.message.includes(`after ${MAX_ATTEMPTS} attempts`)));
    const byState = (s: BatchState) => terminal.filter((r) => r.expected.state === s).length;
    const coverage = {
      lateResultsOfRevokedAttempts: late.length,
      duplicates: dups.length,
      running: running.length,
      completed: byState(BatchState.BATCH_STATE_COMPLETED),
      failed: byState(BatchState.BATCH_STATE_FAILED),
      cancelled: byState(BatchState.BATCH_STATE_CANCELLED),
      retriesExhausted: exhausted.length,
    };
    t.diagnostic(`${recorded.length} logs: ${JSON.stringify(coverage)}`);
    for (const [what, count] of Object.entries(coverage)) assert.ok(count >= 5, `only ${count} generated logs with ${what}: ${JSON.stringify(coverage)}`);
  });

  test("replay - GetBatch and WatchBatch after recovery equal the entries applied live", async () => {
    await checkAll();
  });

  test("replay - the comparison catches a wrong expectation", async (t) => {
    // The same check against expectations that are wrong in one place each must fail.
    const terminal = recorded.find((r) => r.expected.state === BatchState.BATCH_STATE_COMPLETED)!;
    const running = recorded.find((r) => r.expected.state === BatchState.BATCH_STATE_RUNNING)!;
    const obsTerminal = await observe(terminal.batchId);
    const obsRunning = await observe(running.batchId);
    assert.deepEqual(differences(obsTerminal, terminal.expected), []);
    assert.deepEqual(differences(obsRunning, running.expected), []);
    const wrong = (e: Expected, change: (r: Expected["results"][number]) => void): Expected => {
      const copy = structuredClone(e);
      change(copy.results[0]!);
      return copy;
    };
    const flip = (r: Expected["results"][number]) => (r.status = r.status === "ITEM_STATUS_SUCCEEDED" ? "ITEM_STATUS_FAILED" : "ITEM_STATUS_SUCCEEDED");
    const caught = (what: string, diff: string[]) => assert.notDeepEqual(diff, [], `a wrong ${what} was not caught`);
    caught("attempt count", differences(obsTerminal, wrong(terminal.expected, (r) => r.attempts++)));
    caught("worker id", differences(obsTerminal, wrong(terminal.expected, (r) => (r.workerId += "x"))));
    caught("item status", differences(obsTerminal, wrong(terminal.expected, flip)));
    caught("batch state", differences(obsTerminal, { ...terminal.expected, state: BatchState.BATCH_STATE_FAILED }));
    caught("item status of a running batch", differences(obsRunning, wrong(running.expected, flip)));
    caught("count", differences(obsRunning, { ...running.expected, counts: [running.expected.counts[0] + 1, running.expected.counts[1], running.expected.counts[2]] }));
    // And a replay that ignored revocations would be told apart on these logs.
    const told = [];
    for (const r of recorded) {
      const naive = expectedOf(live(r.record, r.log, tokens, { ignoreRevocations: true }));
      if (differences(await observe(r.batchId), naive).length > 0) told.push(r.batchId);
    }
    assert.ok(told.length >= 5, `only ${told.length} logs tell a replay that ignores revocations apart`);
    t.diagnostic(`${told.length} of ${recorded.length} logs tell apart a replay that ignores revocations`);
  });

  test("replay - a second restart replays to the same state", async () => {
    await stack.kill(stack.coordinator!, "SIGKILL");
    await stack.startCoordinator(COORDINATOR_ARGS);
    await client.waitForWorkers(0);
    await checkAll();
  });
});
