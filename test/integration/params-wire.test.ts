// Params on the internal wire (issue 13): a coordinator sends an item's params as JSON bytes
// (AssignedItem.params_json) to workers whose heartbeats say they read them, and as a
// google.protobuf.Struct to a worker of an older version, so a rolling upgrade in either order
// runs every item with its params. Real nats-server, coordinator and worker processes; the
// "older worker" is this test speaking the worker protocol of the previous version over NATS
// (heartbeats without reads_params_json, an AssignReply, outcomes into the results stream).

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { jetstream } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { BatchState, ItemStatus, WorkerState } from "../../proto/gen/shoal/v1/shoal.js";
import { Kvm } from "@nats-io/kv";
import { AssignReply, Assignment, Heartbeat, ModelRegistration, ResultLogEntry, type AssignedItem } from "../../proto/gen/shoal/v1/wire.js";
import { decodeMessage, encodeMessage } from "../../shared/codec.js";
import { Names } from "../../shared/subjects.js";
import { TestClient } from "../harness/client.js";
import { Stack } from "../harness/processes.js";
import { SIMULATED_MODELS } from "../../worker/simulated-backend.js";

const names = new Names("shoal");
const GPU = { index: 0, name: "older worker's GPU", vramTotalBytes: 8e9, vramFreeBytes: 8e9, source: "budget" };

async function until<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined> | T | undefined): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe("params wire - JSON bytes to workers that read them, a Struct to older workers", { timeout: 240_000 }, () => {
  const stack = new Stack();
  let client: TestClient;
  let nc: NatsConnection;

  before(async () => {
    await stack.startNats();
    await stack.startCoordinator();
    client = new TestClient(stack.grpcAddr);
    nc = await connect({ servers: stack.natsUrl, timeout: 10_000 });
  });

  after(async () => {
    await nc?.close().catch(() => undefined);
    client?.close();
    await stack.stop();
  });

  test("params wire - an older worker (no reads_params_json in its heartbeats) gets params as a Struct and its outcomes count", async () => {
    const js = jetstream(nc);
    const seen: AssignedItem[] = [];
    // The previous version's worker: takes every item, "runs" it at once and publishes a success.
    const sub = nc.subscribe(names.assign("old1"), {
      callback: (err, msg) => {
        if (err) return;
        const a = decodeMessage(Assignment, msg.subject, msg.data);
        seen.push(...a.items);
        msg.respond(encodeMessage(AssignReply, { accepted: a.items.map((i) => i.lease!.token), error: "", gpus: [GPU] }));
        for (const item of a.items) {
          const entry = encodeMessage(ResultLogEntry, {
            entry: { $case: "results", results: { workerId: "old1", outcomes: [{ lease: item.lease, status: ItemStatus.ITEM_STATUS_SUCCEEDED, error: undefined, artifacts: [], runMs: 1, vramUsedBytes: 0 }] } },
          });
          void js.publish(names.results(item.lease!.batchId), entry, { timeout: 10_000 });
        }
      },
    });
    let seq = 0;
    const beat = () =>
      nc.publish(
        names.heartbeat("old1"),
        encodeMessage(Heartbeat, {
          workerId: "old1", seq: ++seq, incarnation: "older-version", state: WorkerState.WORKER_STATE_READY, gpus: [GPU],
          residentModels: [], inFlight: [], itemsDone: 0, maxInFlight: 8, hostname: "old", models: ["sim-zero"], heartbeatIntervalMs: 250,
        }),
      );
    // Registers sim-zero as a --simulate worker does, so its items validate.
    const sim = SIMULATED_MODELS.find((m) => m.name === "sim-zero")!;
    await (await new Kvm(nc).open(names.modelsBucket)).put(sim.name, encodeMessage(ModelRegistration, { manifestJson: JSON.stringify(sim), servedBy: ["old1"] }));
    beat();
    const timer = setInterval(beat, 250);
    try {
      await client.waitForWorkers(1, 30_000);
      await until("sim-zero registered", 30_000, async () => ((await client.sdk.listModels()).some((m) => m.name === "sim-zero") ? true : undefined));
      const batch = await client.run({ items: [{ model: "sim-zero", params: { tag: "über ✓ \"quoted\"", work_ms: 5 } }, { model: "sim-zero", params: {} }] }, 60_000);
      assert.equal(batch.state, BatchState.BATCH_STATE_COMPLETED, JSON.stringify(batch.results.map((r) => r.error)));
      assert.equal(seen.length, 2);
      const byIndex = [...seen].sort((a, b) => a.lease!.index - b.lease!.index);
      for (const item of byIndex) assert.equal(item.paramsJson.length, 0, "params_json sent to a worker that does not read it");
      // Stored with the manifest's defaults applied, and sent as stored.
      assert.deepEqual(byIndex[0]!.params, { tag: "über ✓ \"quoted\"", work_ms: 5, busy: false, fail: false });
      assert.deepEqual(byIndex[1]!.params, { work_ms: 0, busy: false, fail: false });
    } finally {
      clearInterval(timer);
      sub.unsubscribe();
    }
    // Silent now: LOST after the heartbeat timeout, so the next test's items go to the real worker.
    await until("old1 LOST", 30_000, async () => ((await client.workers()).find((w) => w.id === "old1")?.state === WorkerState.WORKER_STATE_LOST ? true : undefined));
  });

  test("params wire - a worker of this version gets params_json (no Struct) and runs each item with its params", async () => {
    const seen: AssignedItem[] = [];
    // Core NATS gives every subscriber a copy: this one watches what the coordinator sends w1.
    const spy = nc.subscribe(names.assign("w1"), { callback: (err, msg) => void (err || seen.push(...decodeMessage(Assignment, msg.subject, msg.data).items)) });
    try {
      await stack.startWorker("w1", ["--simulate", "--vram", "8GiB"]);
      await until("w1 ready", 60_000, async () => ((await client.workers()).some((w) => w.id === "w1" && w.state === WorkerState.WORKER_STATE_READY) ? true : undefined));
      const tag = "ünïcode ✓ \"quoted\" \\ back\nslash";
      const batch = await client.run({ items: [{ model: "sim-zero", params: { tag, work_ms: 3 } }, { model: "sim-zero", params: { tag, fail: true } }] }, 60_000);
      const results = [...batch.results].sort((a, b) => a.index - b.index);
      assert.equal(results[0]!.status, ItemStatus.ITEM_STATUS_SUCCEEDED, JSON.stringify(results[0]!.error));
      // fail: true reached the worker through params_json: the simulated model failed as asked.
      assert.equal(results[1]!.status, ItemStatus.ITEM_STATUS_FAILED);
      assert.equal(results[1]!.error?.message, "simulated failure");
      const byIndex = [...seen].sort((a, b) => a.lease!.index - b.lease!.index);
      assert.equal(byIndex.length, 2);
      for (const item of byIndex) assert.equal(item.params, undefined, "a Struct was sent beside params_json");
      assert.deepEqual(JSON.parse(Buffer.from(byIndex[0]!.paramsJson).toString("utf8")), { tag, work_ms: 3, busy: false, fail: false });
      assert.deepEqual(JSON.parse(Buffer.from(byIndex[1]!.paramsJson).toString("utf8")), { tag, work_ms: 0, busy: false, fail: true });
    } finally {
      spy.unsubscribe();
    }
  });

  test("params wire - forged params_json (not UTF-8, not JSON, not an object, a bad value) ends INVALID_PARAMS naming the problem; a Struct still works beside it", async () => {
    const js = jetstream(nc);
    const batchId = "b_0000params0forged000";
    const lease = (i: number) => ({ batchId, index: i, token: `1.forged${i}` });
    const item = (i: number, paramsJson: Buffer | undefined, params?: Record<string, unknown>): AssignedItem & { lease: { token: string } } => ({
      lease: lease(i), model: "sim-zero", gpuIndex: 0, vramBytes: 1, weightsBytes: 0, attempt: 1, timeoutMs: 0,
      paramsJson: paramsJson ?? Buffer.alloc(0), params,
    });
    const forged = [
      item(0, Buffer.from([0xff, 0xfe, 0x7b, 0x7d])),
      item(1, Buffer.from("{\"work_ms\": ")),
      item(2, Buffer.from("[1, 2]")),
      item(3, Buffer.from(JSON.stringify({ work_ms: -5 }))),
      item(4, Buffer.from(JSON.stringify({ no_such_param: 1 }))),
      // The older coordinator's form: a Struct, params_json empty.
      item(5, undefined, { work_ms: 1 }),
    ];
    const consumer = await js.consumers.get(names.resultsStream, { filter_subjects: names.results(batchId) });
    const reply = AssignReply.decode((await nc.request(names.assign("w1"), encodeMessage(Assignment, { items: forged }), { timeout: 10_000 })).data);
    assert.deepEqual([...reply.accepted].sort(), forged.map((f) => f.lease.token).sort(), reply.error);
    const outcomes = new Map<number, { code: string | undefined; message: string | undefined; status: ItemStatus }>();
    const deadline = Date.now() + 30_000;
    while (outcomes.size < forged.length && Date.now() < deadline) {
      const m = await consumer.next({ expires: 5_000 });
      if (!m) continue;
      const entry = ResultLogEntry.decode(m.data);
      if (entry.entry?.$case !== "results") continue;
      for (const o of entry.entry.results.outcomes) outcomes.set(o.lease!.index, { code: o.error?.code, message: o.error?.message, status: o.status });
    }
    assert.equal(outcomes.size, forged.length, `outcomes for ${[...outcomes.keys()].join(", ")} only`);
    for (const i of [0, 1, 2, 3, 4]) assert.equal(outcomes.get(i)!.code, "INVALID_PARAMS", `item ${i}: ${JSON.stringify(outcomes.get(i))}`);
    assert.match(outcomes.get(0)!.message!, /params_json: 4 bytes are not UTF-8 JSON/);
    assert.match(outcomes.get(1)!.message!, /params_json: \d+ bytes are not UTF-8 JSON/);
    assert.match(outcomes.get(2)!.message!, /params_json: must be a JSON object \(got an array\)/);
    assert.match(outcomes.get(3)!.message!, /params\.work_ms/);
    assert.match(outcomes.get(4)!.message!, /params\.no_such_param: unknown param/);
    assert.equal(outcomes.get(5)!.status, ItemStatus.ITEM_STATUS_SUCCEEDED, JSON.stringify(outcomes.get(5)));
    // The worker is still serving.
    const after = await client.run({ items: [{ model: "sim-zero", params: { work_ms: 1 } }] }, 60_000);
    assert.equal(after.state, BatchState.BATCH_STATE_COMPLETED);
  });
});
