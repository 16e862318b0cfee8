import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { BatchState } from "../../proto/gen/shoal/v1/shoal.js";
import { freePort, Stack, type Proc } from "../harness/processes.js";
import { TestClient } from "../harness/client.js";

// Defragmentation on real processes. The worker is SIMULATED with a 14 GB budget and
// --sim-keep-weights: a model's weights stay in the budget after its last item, as cached
// sessions hold a real GPU's memory. sim-6g (4 GB weights + 2 GB) runs first and stays
// resident, idle; sim-12g (8 GB + 4 GB = 12 GB) then fits only once sim-6g is evicted.

const GB = 1e9;
const WORKER_ARGS = ["--simulate", "--vram", "14GB", "--sim-keep-weights", "--threads", "2", "--max-in-flight", "4"];

/** Runs one sim-6g item, then waits until the worker reports its weights resident and idle (10 GB free of 14). */
async function leaveSim6gResident(client: TestClient): Promise<void> {
  const first = await client.waitTerminal((await client.submit({ items: [{ model: "sim-6g", params: { work_ms: 20, tag: "first" } }] })).batchId, 60_000);
  assert.equal(first.state, BatchState.BATCH_STATE_COMPLETED);
  const deadline = Date.now() + 20_000;
  for (;;) {
    const w = (await client.workers()).find((x) => x.id === "w");
    if (w && w.residentModels.includes("sim-6g") && w.itemsInFlight === 0 && w.gpus[0]?.vramFreeBytes === 10 * GB) return;
    if (Date.now() > deadline) throw new Error(`sim-6g never reported resident and idle: ${JSON.stringify(w)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const logged = (p: Proc, msg: string) => p.logs.filter((l) => l.msg === msg);

/** One sample of a Prometheus text exposition (0 when absent). */
async function metric(port: number, name: string, labels: string): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(5000) });
  const line = (await res.text()).split("\n").find((l) => l.startsWith(`${name}{`) && labels.split(",").every((kv) => l.includes(kv)));
  return line ? Number(line.slice(line.lastIndexOf(" ") + 1)) : 0;
}

describe("defrag - an idle resident model is evicted for an item that fits nowhere else", () => {
  const stack = new Stack();
  let client: TestClient;
  let worker: Proc;
  let coordinatorMetrics: number;
  let workerMetrics: number;

  before(async () => {
    await stack.startNats();
    coordinatorMetrics = await freePort();
    workerMetrics = await freePort();
    // A later --metrics-port wins over the harness's "--metrics-port 0".
    await stack.startCoordinator(["--metrics-port", String(coordinatorMetrics)]);
    worker = await stack.startWorker("w", [...WORKER_ARGS, "--metrics-port", String(workerMetrics)]);
    client = new TestClient(stack.grpcAddr);
    await client.waitForWorkers(1);
  });

  after(async () => {
    client?.close();
    await stack.stop();
  });

  test("defrag - sim-6g's idle weights are evicted and the sim-12g item runs", { timeout: 120_000 }, async () => {
    await leaveSim6gResident(client);
    const batch = await client.waitTerminal((await client.submit({ items: [{ model: "sim-12g", params: { work_ms: 20, tag: "needs room" } }] })).batchId, 60_000);
    assert.equal(batch.state, BatchState.BATCH_STATE_COMPLETED);
    assert.equal(batch.results[0]!.workerId, "w");
    assert.equal(batch.results[0]!.attempts, 1);
    // The worker evicted sim-6g, and said so with its ids; the coordinator logged its decision.
    const evicted = logged(worker, "model evicted");
    assert.equal(evicted.length, 1, JSON.stringify(evicted));
    assert.equal(evicted[0]!.model, "sim-6g");
    assert.equal(evicted[0]!.workerId, "w");
    assert.equal(evicted[0]!.reason, "defrag");
    const decided = logged(stack.coordinator!, "defrag: evicting idle weights for an item that fits nowhere");
    assert.ok(decided.length >= 1);
    assert.deepEqual(decided[0]!.models, ["sim-6g"]);
    assert.equal(decided[0]!.forModel, "sim-12g");
    assert.equal(decided[0]!.workerId, "w");
    // Counted on both sides.
    assert.equal(await metric(workerMetrics, "shoal_worker_evictions_total", 'model="sim-6g",reason="defrag"'), 1);
    assert.equal(await metric(coordinatorMetrics, "shoal_defrag_evictions_total", 'result="evicted"'), 1);
    // sim-12g is resident now (kept after its item), sim-6g is not.
    const deadline = Date.now() + 20_000;
    for (;;) {
      const w = (await client.workers()).find((x) => x.id === "w")!;
      if (w.residentModels.includes("sim-12g") && !w.residentModels.includes("sim-6g")) break;
      if (Date.now() > deadline) throw new Error(`resident models after eviction: ${w.residentModels.join(",")}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  });

  test("defrag - a model with an item running is never evicted: the worker refuses and says why", { timeout: 120_000 }, async () => {
    // sim-12g is resident; a long sim-12g item holds it while a sim-6g item waits (4 + 2 GB
    // do not fit beside 8 + 4 GB in 14 GB). Defrag has nothing idle to evict: no eviction is
    // sent for sim-12g, and the sim-6g item runs once the sim-12g one ends (6 GB are free then,
    // beside sim-12g's idle weights).
    const before = logged(worker, "model evicted").length;
    const long = await client.submit({ items: [{ model: "sim-12g", params: { work_ms: 1500, tag: "holds it" } }] });
    const deadline = Date.now() + 20_000;
    while ((await client.workers()).find((x) => x.id === "w")!.itemsInFlight === 0) {
      if (Date.now() > deadline) throw new Error("the sim-12g item never started");
      await new Promise((r) => setTimeout(r, 50));
    }
    const small = await client.submit({ items: [{ model: "sim-6g", params: { work_ms: 20, tag: "after" } }] });
    const [a, b] = await Promise.all([client.waitTerminal(long.batchId, 60_000), client.waitTerminal(small.batchId, 60_000)]);
    assert.equal(a.state, BatchState.BATCH_STATE_COMPLETED);
    assert.equal(b.state, BatchState.BATCH_STATE_COMPLETED);
    // None refused: the model in use was never asked for (the worker refuses a model with an
    // item held, and says so). sim-12g may still be evicted once its item has ended and its
    // weights are idle, when a pass reads the GPU's figures before the worker's next report
    // shows the room its item gave back; that is allowed, a model in use is not.
    assert.deepEqual(logged(worker, "eviction refused"), []);
    for (const e of logged(worker, "model evicted").slice(before)) assert.equal(e.model, "sim-12g", JSON.stringify(e));

    // Asked directly to evict a model with an item held, the worker refuses and says why.
    const held = await client.submit({ items: [{ model: "sim-6g", params: { work_ms: 1500, tag: "held" } }] });
    const until = Date.now() + 20_000;
    while ((await client.workers()).find((x) => x.id === "w")!.itemsInFlight === 0) {
      if (Date.now() > until) throw new Error("the held item never started");
      await new Promise((r) => setTimeout(r, 50));
    }
    const { connect } = await import("@nats-io/transport-node");
    const { EvictReply, EvictRequest } = await import("../../proto/gen/shoal/v1/wire.js");
    const nc = await connect({ servers: stack.natsUrl });
    try {
      const reply = EvictReply.decode((await nc.request("shoal.worker.w.evict", EvictRequest.encode(EvictRequest.fromPartial({ gpuIndex: 0, models: ["sim-6g"], reason: "defrag" })).finish(), { timeout: 5000 })).data);
      assert.deepEqual(reply.evicted, []);
      assert.equal(reply.refused[0]?.model, "sim-6g");
      assert.match(reply.refused[0]!.reason, /1 item\(s\) of sim-6g held here/);
      // A malformed request is refused whole; the worker stays up and keeps working.
      const bad = EvictReply.decode((await nc.request("shoal.worker.w.evict", EvictRequest.encode(EvictRequest.fromPartial({ gpuIndex: 7, models: ["sim-6g"] })).finish(), { timeout: 5000 })).data);
      assert.match(bad.error, /gpu_index: 7 is not a GPU of this worker/);
      const garbage = EvictReply.decode((await nc.request("shoal.worker.w.evict", new Uint8Array([0xff, 0xff, 0xff]), { timeout: 5000 })).data);
      assert.notEqual(garbage.error, "");
      assert.equal(await metric(workerMetrics, "shoal_protocol_errors_total", 'kind="evict"'), 2);
    } finally {
      await nc.close();
    }
    assert.equal((await client.waitTerminal(held.batchId, 60_000)).state, BatchState.BATCH_STATE_COMPLETED);
  });
});

describe("defrag - with --defrag off the item waits", () => {
  const stack = new Stack();
  let client: TestClient;

  before(async () => {
    await stack.startNats();
    await stack.startCoordinator(["--defrag", "off"]);
    await stack.startWorker("w", WORKER_ARGS);
    client = new TestClient(stack.grpcAddr);
    await client.waitForWorkers(1);
  });

  after(async () => {
    client?.close();
    await stack.stop();
  });

  test("defrag - off: the sim-12g item stays queued while sim-6g's idle weights hold the room", { timeout: 120_000 }, async () => {
    await leaveSim6gResident(client);
    const { batchId } = await client.submit({ items: [{ model: "sim-12g", params: { work_ms: 20, tag: "waits" } }] });
    // Observed over a dozen heartbeats (250 ms apart): never placed, sim-6g still resident.
    for (let i = 0; i < 15; i++) {
      const b = await client.get(batchId);
      assert.equal(b.state, BatchState.BATCH_STATE_QUEUED, `poll ${i}: ${JSON.stringify({ ...b, results: undefined })}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    const w = (await client.workers()).find((x) => x.id === "w")!;
    assert.ok(w.residentModels.includes("sim-6g"));
    assert.equal(w.itemsDone, 1);
    const cancelled = await client.cancel(batchId);
    assert.ok([BatchState.BATCH_STATE_CANCELLED, BatchState.BATCH_STATE_QUEUED, BatchState.BATCH_STATE_RUNNING].includes(cancelled.state));
  });
});
