// The CI-sized fuzz run (issue 8): no input reaches a crash or a hang. fast-check drives a live
// coordinator and worker (real processes) with more than 10,000 generated SubmitBatch requests,
// raw bytes and metadata on every gRPC method, and garbage on every NATS subject they listen on.
// Pass: both processes live, every answer is one the contract allows, the garbage was counted
// as protocol errors, every accepted batch ends, and an ordinary batch still completes.
// The seed is printed; SHOAL_FUZZ_SEED repeats a run, and a finding names the replay token
// for `npm run fuzz -- --replay <token>`.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { jetstream } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { WorkerState } from "../../proto/gen/shoal/v1/shoal.js";
import { AssignReply, Assignment, ResultLogEntry } from "../../proto/gen/shoal/v1/wire.js";
import { encodeMessage } from "../../shared/codec.js";
import { Names } from "../../shared/subjects.js";
import { TestClient } from "../harness/client.js";
import { Stack } from "../harness/processes.js";
import { countsFor, formatReport, runCampaign, type Report } from "../fuzz/campaign.js";
import { batchSucceeded, deadProcess, ordinaryBatch, protocolErrors, startFuzzStack, stopFuzzStack, unfinished, type FuzzStack } from "../fuzz/fuzz-stack.js";

const SUBMIT_CASES = 10_000;
/** An answer later than this is a hang (four times as long for requests over 256 KiB). */
const DEADLINE_MS = 60_000;
const seed = process.env.SHOAL_FUZZ_SEED !== undefined ? Number(process.env.SHOAL_FUZZ_SEED) | 0 : Date.now() | 0;
const names = new Names("shoal");

describe("fuzz - generated input never crashes or hangs the coordinator or a worker", { timeout: 600_000 }, () => {
  let f: FuzzStack;
  let report: Report;
  let before0: { coordinator: number; worker: number };

  before(async () => {
    f = await startFuzzStack({ deadlineMs: DEADLINE_MS });
    before0 = { coordinator: await protocolErrors(f.coordinatorMetricsPort), worker: await protocolErrors(f.workerMetricsPort) };
  });

  after(async () => {
    await stopFuzzStack(f);
  });

  test("fuzz - a non-empty drain request that is not a DrainRequest is refused and counted, the worker keeps working", async () => {
    const nc = await connect({ servers: f.stack.natsUrl });
    try {
      const workerBefore = await protocolErrors(f.workerMetricsPort);
      // With a reply subject, as the coordinator sends it: no answer means no drain.
      await assert.rejects(nc.request(names.drain(f.workerId), Uint8Array.of(0x08, 0x01), { timeout: 1000 }));
      nc.publish(names.drain(f.workerId), Uint8Array.of(0xff, 0x00, 0x13));
      await nc.flush();
      await waitFor(async () => (await protocolErrors(f.workerMetricsPort)) >= workerBefore + 2);
      const w = (await f.client.workers()).find((x) => x.id === f.workerId);
      assert.equal(w?.state, WorkerState.WORKER_STATE_READY);
    } finally {
      await nc.close();
    }
  });

  test("fuzz - a forged assignment is checked like a submitted item: bad params fail INVALID_PARAMS, a batch id that is no subject token is refused", async () => {
    const nc = await connect({ servers: f.stack.natsUrl });
    try {
      const js = jetstream(nc);
      const batchId = "b_0000000000zzzzzzzzzz".replace(/z/g, "v");
      // 100000 × 100000 pixels would exhaust the worker's memory if it ran. weightsBytes 0: the
      // worker takes the weights from its own manifest, as from an older coordinator.
      const bad = { lease: { batchId, index: 0, token: "1.fuzzbad" }, model: "imagegen-tiny", params: { prompt: "x", width: 100_000, height: 100_000, steps: 1 }, paramsJson: Buffer.alloc(0), gpuIndex: 0, vramBytes: 1, weightsBytes: 0, attempt: 1, timeoutMs: 0 };
      const badId = { ...bad, lease: { batchId: "x.y *", index: 0, token: "1.fuzzid" }, params: { prompt: "x", width: 64, height: 64, steps: 1 } };
      const reply = await nc.request(names.assign(f.workerId), encodeMessage(Assignment, { items: [bad, badId] }), { timeout: 10_000 });
      const answer = AssignReply.decode(reply.data);
      assert.deepEqual(answer.accepted, ["1.fuzzbad"]);
      assert.match(answer.error, /lease/);
      // The accepted one ends as INVALID_PARAMS in the results stream, without running.
      const consumer = await js.consumers.get(names.resultsStream, { filter_subjects: names.results(batchId) });
      const m = await consumer.next({ expires: 20_000 });
      assert.ok(m, "no outcome was published for the forged item");
      const entry = ResultLogEntry.decode(m.data);
      assert.equal(entry.entry?.$case, "results");
      const outcome = entry.entry.$case === "results" ? entry.entry.results.outcomes[0] : undefined;
      assert.equal(outcome?.error?.code, "INVALID_PARAMS");
      assert.match(outcome?.error?.message ?? "", /params\.width/);
      assert.equal(outcome?.error?.retryable, false);
    } finally {
      await nc.close();
    }
  });

  test(`fuzz - ${SUBMIT_CASES} SubmitBatch requests, raw bytes, metadata and NATS garbage: every answer allowed, nothing hangs, nothing dies`, async () => {
    const counts = countsFor(12_600);
    assert.ok(counts.submit >= SUBMIT_CASES, `the plan has only ${counts.submit} SubmitBatch cases`);
    process.stderr.write(`fuzz: seed ${seed} (repeat with SHOAL_FUZZ_SEED=${seed})\n`);
    report = await runCampaign({ grpc: f.grpc, nats: f.nats, deadlineMs: DEADLINE_MS, seed, counts, concurrency: 32, deadProcess: () => deadProcess(f) });
    process.stderr.write(`${formatReport(report)}\n`);
    assert.equal(report.crash, undefined, `a process died: ${report.crash}`);
    assert.deepEqual(
      report.findings.map((x) => `[${x.replay}] ${x.problem}`).slice(0, 10),
      [],
      `seed ${seed}: ${report.findings.length} findings; first cases:\n${report.findings.slice(0, 5).map((x) => x.sample).join("\n")}`,
    );
    assert.equal(report.hangs, 0);
    assert.ok(report.cases.submit >= SUBMIT_CASES, `only ${report.cases.submit} SubmitBatch cases ran`);
    assert.equal(report.cases.huge, counts.huge);
    assert.equal(report.cases.raw, counts.raw);
    assert.equal(report.cases.metadata, counts.metadata);
    assert.equal(report.cases.nats, counts.nats);
    // The generators reach every kind of answer the contract has for these requests.
    for (const code of ["OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "NOT_FOUND", "UNAUTHENTICATED"]) {
      assert.ok((report.codes[code] ?? 0) > 0, `no answer was ${code}: ${JSON.stringify(report.codes)}`);
    }
    assert.ok(report.accepted.length > 0, "no generated batch was accepted");
  });

  test("fuzz - afterwards both processes live, counted the garbage, end every accepted batch and complete an ordinary one", async () => {
    assert.ok(report, "the campaign did not run");
    assert.equal(f.coordinator.child.exitCode, null);
    assert.equal(f.worker.child.exitCode, null);
    const open = await unfinished(f, report.accepted, 180_000);
    assert.deepEqual(open, [], `${open.length} accepted batches never ended`);
    const b = await ordinaryBatch(f);
    assert.ok(batchSucceeded(b), `the ordinary batch did not succeed: ${JSON.stringify({ state: b.state, errors: b.results.map((r) => r.error) })}`);
    assert.ok((await protocolErrors(f.coordinatorMetricsPort)) > before0.coordinator, "the coordinator counted no protocol errors");
    assert.ok((await protocolErrors(f.workerMetricsPort)) > before0.worker, "the worker counted no protocol errors");
    assert.equal(deadProcess(f), undefined);
  });
});

describe("fuzz - poison entries in the results log do not stop a coordinator from starting", { timeout: 120_000 }, () => {
  const stack = new Stack();
  let client: TestClient;
  let nc: NatsConnection;

  before(async () => {
    await stack.startNats();
    await stack.startCoordinator();
    client = new TestClient(stack.grpcAddr);
    nc = await connect({ servers: stack.natsUrl });
  });

  after(async () => {
    client?.close();
    await nc?.close();
    await stack.stop();
  });

  test("fuzz - a revocation without a lease, or of another batch, in a running batch's log is skipped on replay", async () => {
    // No worker yet: the batch stays queued, so a restart replays its log.
    const { batchId } = await client.submit({ items: [{ model: "imagegen-tiny", params: { prompt: "survives", width: 64, height: 64, steps: 1 } }] });
    const js = jetstream(nc);
    const subject = names.results(batchId);
    await js.publish(subject, encodeMessage(ResultLogEntry, { entry: { $case: "revoked", revoked: { lease: undefined, reason: "forged" } } }));
    await js.publish(subject, encodeMessage(ResultLogEntry, { entry: { $case: "revoked", revoked: { lease: { batchId: "b_other", index: 0, token: "1.x" }, reason: "forged" } } }));
    await js.publish(subject, encodeMessage(ResultLogEntry, { entry: { $case: "revoked", revoked: { lease: { batchId, index: 4_000_000_000, token: "1.x" }, reason: "forged" } } }));
    await js.publish(subject, Uint8Array.of(0xff, 0xff, 0xff));
    await stack.kill(stack.coordinator!);
    await stack.startCoordinator();
    const b = await client.get(batchId);
    assert.equal(b.total, 1);
    await stack.startWorker("w1", ["--vram", "4GiB"]);
    const done = await client.waitTerminal(batchId);
    assert.equal(done.succeeded, 1, JSON.stringify(done.results.map((r) => r.error)));
    assert.equal(stack.coordinator!.child.exitCode, null);
  });
});

async function waitFor(check: () => Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
