import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { BatchState, type Batch } from "../../proto/gen/shoal/v1/shoal.js";
import { Stack } from "../harness/processes.js";
import { TestClient } from "../harness/client.js";

// The scheduling policy for real: a coordinator, NATS and SIMULATED worker processes (declared
// VRAM, items sleep for work_ms). Two 24 GB workers and a batch of 96 items that interleaves two models (long enough that greedy
// placement's alternations stay well apart from affinity's few switches on a loaded machine):
// placed greedily in submission order, each GPU alternates between the models (paying both
// weights); with model affinity (the default) each GPU keeps to a model while its backlog lasts.

const ITEMS = [
  ...Array.from({ length: 96 }, (_, i) =>
    i % 3 === 2 ? { model: "sim-12g", params: { work_ms: 600, tag: `twelve ${i}` } } : { model: "sim-6g", params: { work_ms: 250, tag: `six ${i}` } },
  ),
];

/** How many times consecutive items (by start) on the same worker are of different models. */
function modelChanges(batch: Batch): number {
  const byWorker = new Map<string, { start: number; model: string }[]>();
  for (const r of batch.results) {
    const list = byWorker.get(r.workerId) ?? [];
    list.push({ start: Number(r.queueMs), model: r.model });
    byWorker.set(r.workerId, list);
  }
  let changes = 0;
  for (const list of byWorker.values()) {
    list.sort((a, b) => a.start - b.start);
    for (let i = 1; i < list.length; i++) if (list[i]!.model !== list[i - 1]!.model) changes++;
  }
  return changes;
}

async function runOnFleet(schedulerArgs: string[]): Promise<Batch> {
  const stack = new Stack();
  const client = { c: undefined as TestClient | undefined };
  try {
    await stack.startNats();
    await stack.startCoordinator(["--max-items", "1000", ...schedulerArgs]);
    await Promise.all(["gpu-a", "gpu-b"].map((id) => stack.startWorker(id, ["--simulate", "--vram", "24GB", "--threads", "10", "--max-in-flight", "10"])));
    client.c = new TestClient(stack.grpcAddr);
    await client.c.waitForWorkers(2);
    const { batchId } = await client.c.submit({ items: ITEMS });
    const batch = await client.c.waitTerminal(batchId, 120_000);
    assert.equal(batch.state, BatchState.BATCH_STATE_COMPLETED);
    assert.equal(batch.succeeded, ITEMS.length);
    return batch;
  } finally {
    client.c?.close();
    await stack.stop();
  }
}

describe("scheduler policy - model affinity with real processes", () => {
  let affinity: Batch;
  let greedy: Batch;

  before(async () => {
    affinity = await runOnFleet([]);
    greedy = await runOnFleet(["--scheduler", "greedy", "--longest-first", "off"]);
  });

  after(() => undefined);

  test("scheduler policy - with affinity each GPU keeps to a model; greedy placement alternates", () => {
    const a = modelChanges(affinity);
    const g = modelChanges(greedy);
    // 96 items interleaved 2:1: greedy switches models on a GPU again and again.
    assert.ok(g >= 10, `greedy placement changed models only ${g} times: the workload does not exercise affinity`);
    assert.ok(a <= 8, `with affinity the GPUs changed models ${a} times (greedy: ${g})`);
    assert.ok(a < g / 2, `affinity ${a} vs greedy ${g} model changes`);
    // Every item once, at its first attempt: affinity never placed where the worker refused.
    assert.deepEqual(affinity.results.map((r) => r.attempts), Array(ITEMS.length).fill(1));
  });
});

describe("scheduler policy - the simulated worker pays model loads and honours its speed", () => {
  const stack = new Stack();
  let client: TestClient;

  before(async () => {
    await stack.startNats();
    await stack.startCoordinator(["--max-items", "1000"]);
    // sim-6g's weights are 4 GB: at 4 GB/s the first item pays a 1 s load; the GPU is 4 × as fast.
    await stack.startWorker("fast", ["--simulate", "--vram", "16GB", "--threads", "1", "--max-in-flight", "1", "--sim-speed", "4", "--sim-load-bandwidth", "4GB"]);
    client = new TestClient(stack.grpcAddr);
    await client.waitForWorkers(1);
  });

  after(async () => {
    client?.close();
    await stack.stop();
  });

  test("scheduler policy - the first item of a model pays the load, the next ones only work_ms / speed", async () => {
    const items = Array.from({ length: 3 }, (_, i) => ({ model: "sim-6g", params: { work_ms: 2000, tag: `s${i}` } }));
    const batch = await client.waitTerminal((await client.submit({ items })).batchId, 60_000);
    assert.equal(batch.succeeded, 3);
    const runs = [...batch.results].sort((x, y) => Number(x.queueMs) - Number(y.queueMs)).map((r) => Number(r.runMs));
    // 2000 ms of work at speed 4 is 500 ms; the first also loads 4 GB at 4 GB/s (1000 ms).
    assert.ok(runs[0]! >= 1450, `the first item ran ${runs[0]} ms: the load was not paid`);
    for (const ms of runs.slice(1)) {
      assert.ok(ms >= 480, `an item ran ${ms} ms, less than work_ms / speed`);
      assert.ok(ms < 1450, `an item ran ${ms} ms: the model was loaded again, or the speed ignored`);
    }
  });
});
