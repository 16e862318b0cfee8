// The packing rule (coordinator/scheduler/packing.ts) with the real coordinator, NATS and
// simulated workers (`--simulate`: declared VRAM, items sleep; the GPUs are SIMULATED). sim-12g
// needs 8 GB of weights; its items here really use 6.4 GB of activations (use_bytes), which the
// coordinator learns from the first OUT_OF_MEMORY. Two 6.4 GB items fill the 16 GB a 24 GB GPU
// has after the weights to 12.8 GB (a fifth stranded); the 72 GB of an 80 GB GPU holds eleven
// with 2 % left. Best fit alone takes the 24 GB GPU first (the tightest, the model resident
// there); with the rule the items go where they pack while the 80 GB GPU has room (both warm
// with the model: the rule never trades a warm GPU for a load).

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { BatchState, ItemStatus } from "../../proto/gen/shoal/v1/shoal.js";
import { Stack } from "../harness/processes.js";
import { TestClient } from "../harness/client.js";

const GB = 1e9;
const USE = 6.4 * GB;

/** A stack with a 24 GB and an 80 GB simulated worker; the coordinator gets `flags`. */
function packingStack(flags: string[]) {
  const stack = new Stack();
  let client: TestClient;
  return {
    stack,
    get client() {
      return client;
    },
    async start() {
      await stack.startNats();
      await stack.startCoordinator(flags);
      // The 24 GB worker first, alone: it learns the real need (the first attempt reserves the
      // manifest's 4 GB, runs out of memory and reports 6.4 GB; the retry reserves that) and
      // keeps the model's weights resident.
      await stack.startWorker("tight", ["--simulate", "--vram", "24GB", "--threads", "4", "--max-in-flight", "16"]);
      client = new TestClient(stack.grpcAddr);
      await client.waitForWorkers(1);
      const learn = await client.run({ items: [{ model: "sim-12g", params: { use_bytes: USE, work_ms: 10, tag: "learn" } }] });
      assert.equal(learn.results[0]!.status, ItemStatus.ITEM_STATUS_SUCCEEDED, JSON.stringify(learn.results[0]!.error));
      assert.equal(learn.results[0]!.attempts, 2, "one OUT_OF_MEMORY, then the learned need");
      assert.equal(learn.results[0]!.workerId, "tight");
      await stack.startWorker("roomy", ["--simulate", "--vram", "80GB", "--threads", "4", "--max-in-flight", "16"]);
      await client.waitForWorkers(2);
      // The 80 GB worker takes the model too (more items than the 24 GB one holds; with the
      // rule, all of them), so both hold its weights: the rule then chooses between two GPUs
      // where the model is loaded, not between a load and none.
      const warmUp = Array.from({ length: 6 }, (_, i) => ({ model: "sim-12g", params: { use_bytes: USE, work_ms: 1000, tag: `warm ${i}` } }));
      const warm = await client.waitTerminal((await client.submit({ items: warmUp })).batchId, 60_000);
      assert.equal(warm.succeeded, 6);
      assert.ok(warm.results.some((r) => r.workerId === "roomy"), `the 80 GB worker ran none: ${warm.results.map((r) => r.workerId).join(", ")}`);
    },
    async stop() {
      client?.close();
      await stack.stop();
    },
  };
}

/** Eight 6.4 GB items at once, each running long enough that all are placed while the others run. */
async function runEight(client: TestClient) {
  const items = Array.from({ length: 8 }, (_, i) => ({ model: "sim-12g", params: { use_bytes: USE, work_ms: 1500, tag: `pack ${i}` } }));
  const { batchId } = await client.submit({ items });
  const batch = await client.waitTerminal(batchId, 60_000);
  assert.equal(batch.state, BatchState.BATCH_STATE_COMPLETED);
  assert.equal(batch.succeeded, 8);
  return batch;
}

describe("packing - items that would strand a GPU's VRAM go where they pack", () => {
  const on = packingStack([]);
  before(() => on.start());
  after(() => on.stop());

  test("packing - 6.4 GB items go to the 80 GB worker while it has room, none strands the 24 GB one", async () => {
    const batch = await runEight(on.client);
    const byWorker = batch.results.map((r) => r.workerId);
    assert.deepEqual(new Set(byWorker), new Set(["roomy"]), `placed on ${byWorker.join(", ")}`);
    // Learned need reserved at the first try: no attempt ran out of memory, none was refused.
    assert.deepEqual(batch.results.map((r) => r.attempts), Array(8).fill(1));
  });
});

// The control: the same fleet and items with the rule off place the first items on the 24 GB
// worker (best fit), so the test above fails without the rule.
describe("packing - off, as a control", () => {
  const off = packingStack(["--packing", "off"]);
  before(() => off.start());
  after(() => off.stop());

  test("packing - with --packing off best fit puts 6.4 GB items on the 24 GB worker, stranding a fifth of its room", async () => {
    const batch = await runEight(off.client);
    const tight = batch.results.filter((r) => r.workerId === "tight").length;
    assert.ok(tight >= 1 && tight <= 2, `${tight} items on the 24 GB worker (16 GB of room holds two of 6.4 GB)`);
  });
});
