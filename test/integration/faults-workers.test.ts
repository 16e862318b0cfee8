// Guarantees 1, 2 and 4 under worker faults, with real processes: kill -9 a worker mid-batch,
// and SIGSTOP one past the heartbeat timeout then SIGCONT it. Simulated workers (items sleep
// for work_ms) keep the batches short; coordinator, NATS, JetStream and workers are real.

import { afterEach, beforeEach, describe, test } from "node:test";
import assert from "node:assert/strict";
import { ItemStatus } from "../../proto/gen/shoal/v1/shoal.js";
import { Stack, freePort } from "../harness/processes.js";
import { TestClient } from "../harness/client.js";
import { assertWholeBatch, pollUntilTerminal, waitFor } from "../harness/batch-checks.js";

const N = 200;
const items = (workMs: number) => Array.from({ length: N }, (_, i) => ({ model: "sim-6g", params: { work_ms: workMs, tag: `item ${i}` } }));
const SIM = ["--simulate", "--vram", "40GB", "--threads", "4", "--max-in-flight", "4"];

async function metric(port: number, line: RegExp): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(10_000) })).text();
  const m = text.split("\n").find((l) => line.test(l));
  return m ? Number(m.split(" ").pop()) : 0;
}

describe("faults - workers", () => {
  let stack: Stack;
  let client: TestClient;
  let metricsPort: number;

  beforeEach(async () => {
    stack = new Stack();
    metricsPort = await freePort();
    await stack.startNats();
    await stack.startCoordinator(["--max-items", "1000", "--heartbeat-timeout", "1s", "--metrics-port", String(metricsPort)]);
    client = new TestClient(stack.grpcAddr);
  });

  afterEach(async () => {
    client?.close();
    await stack.stop();
  });

  test("faults - kill -9 one of four workers at half the batch: every item ends once, the lost items run elsewhere", async () => {
    const workers = await Promise.all(["w1", "w2", "w3", "w4"].map((id) => stack.startWorker(id, SIM)));
    await client.waitForWorkers(4);
    const { batchId } = await client.submit({ items: items(150) });
    let killed = false;
    const { batch, partialTerminalPolls } = await pollUntilTerminal(client, batchId, {
      onProgress: (b) => {
        if (!killed && b.succeeded + b.failed >= N / 2) {
          killed = true;
          process.kill(workers[1]!.pid, "SIGKILL");
        }
      },
    });
    assert.ok(killed, "the batch ended before the kill");
    assert.equal(partialTerminalPolls, 0);
    assertWholeBatch(batch, N);
    assert.equal(batch.succeeded, N, JSON.stringify(batch.results.filter((r) => r.status !== ItemStatus.ITEM_STATUS_SUCCEEDED).slice(0, 3)));
    const retried = batch.results.filter((r) => r.attempts >= 2);
    assert.ok(retried.length > 0, "no item was placed again after the kill");
    for (const r of retried) assert.notEqual(r.workerId, "w2", `item ${r.index} retried but finished on the dead worker`);
    const ws = await client.workers();
    assert.equal(ws.find((w) => w.id === "w2")?.state, 3 /* LOST */);
  });

  test("faults - SIGSTOP a worker past the heartbeat timeout, then SIGCONT: its late results change nothing", async () => {
    const workers = await Promise.all(["w1", "w2", "w3"].map((id) => stack.startWorker(id, SIM)));
    await client.waitForWorkers(3);
    const { batchId } = await client.submit({ items: items(300) });
    let stopped = false;
    let resumed = false;
    let notLost: unknown;
    let terminal = false;
    // w1 is lost once the coordinator has taken back every item it held (each revoked in the
    // results log, then queued again): only from then on are its results late ones.
    const lost = () => {
      const logs = stack.coordinator!.logs;
      const at = logs.findIndex((l) => l.msg === "taking items back from a worker" && l.workerId === "w1");
      if (at < 0) return false;
      const held = Number(logs[at]!.items);
      // (A result w1 sent just before it stopped may have ended one of them instead; the batch
      // ending shows every item was dealt with too.)
      return terminal || logs.slice(at).filter((l) => l.msg === "item will be placed again").length >= held;
    };
    const { batch, partialTerminalPolls } = await pollUntilTerminal(client, batchId, {
      onProgress: (b) => {
        if (!stopped && b.succeeded >= 40) {
          stopped = true;
          process.kill(workers[0]!.pid, "SIGSTOP");
          // Once the coordinator has declared w1 lost (1 s heartbeat timeout) and re-placed its
          // items, w1 wakes up, finishes them and publishes stale results.
          void waitFor("the coordinator to take w1's items back", lost, 30_000)
            .catch((err: unknown) => (notLost = err))
            .finally(() => {
              process.kill(workers[0]!.pid, "SIGCONT");
              resumed = true;
            });
        }
      },
    });
    terminal = true;
    assert.ok(stopped);
    await waitFor("w1 to be resumed", () => resumed, 60_000);
    assert.equal(notLost, undefined, String(notLost));
    assert.equal(partialTerminalPolls, 0);
    assertWholeBatch(batch, N);
    assert.equal(batch.succeeded, N);
    // w1 wakes up, finishes what it held and publishes results the coordinator must ignore.
    await waitFor("the late results of the stopped worker to be counted as stale", async () => (await metric(metricsPort, /^shoal_item_attempts_total\{outcome="stale/)) > 0, 30_000);
    // The stored batch is the same after w1's late results arrived.
    const after = await client.get(batchId);
    assert.deepEqual(after.results, batch.results);
  });
});
