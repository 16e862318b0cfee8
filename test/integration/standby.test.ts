// Standby coordinators, with real processes: two coordinators on one NATS, one active by the
// lease. The standby answers health NOT_SERVING and UNAVAILABLE naming the active one; when the
// active one is killed (-9) the standby takes over and the batch completes with nothing run
// twice; a coordinator paused (SIGSTOP) past its lease sends nothing to NATS once resumed.

import { afterEach, beforeEach, describe, test } from "node:test";
import assert from "node:assert/strict";
import { credentials, Metadata, status } from "@grpc/grpc-js";
import { HealthCheckResponse_ServingStatus, HealthClient } from "../../proto/gen/grpc/health/v1/health.js";
import { createClients } from "../../cli/client.js";
import { Stack, freePort, type Proc } from "../harness/processes.js";
import { TestClient, grpcCode } from "../harness/client.js";
import { assertWholeBatch, executionsPerItem, pollUntilTerminal, waitFor } from "../harness/batch-checks.js";

const N = 150;
const SIM = ["--simulate", "--vram", "40GB", "--threads", "4", "--max-in-flight", "4"];
const items = (workMs: number, tag: string, n = N) => Array.from({ length: n }, (_, i) => ({ model: "sim-6g", params: { work_ms: workMs, tag: `${tag} ${i}` } }));

function health(addr: string): Promise<HealthCheckResponse_ServingStatus | "unreachable"> {
  const c = new HealthClient(addr, credentials.createInsecure());
  return new Promise((resolve) => {
    c.check({ service: "" }, new Metadata(), { deadline: new Date(Date.now() + 3000) }, (err, r) => {
      c.close();
      resolve(err ? "unreachable" : r.status);
    });
  });
}

const SERVING = HealthCheckResponse_ServingStatus.SERVING;
const NOT_SERVING = HealthCheckResponse_ServingStatus.NOT_SERVING;

interface Connz {
  connections: { name?: string; in_msgs: number; cid: number }[];
}

/**
 * Messages nats-server received on the connections named `name` (open or closed), by connection
 * id. A later term of the same process connects again under the same name, so a count "after"
 * is taken over the connections seen "before" only.
 */
async function messagesFrom(monitorPort: number, name: string): Promise<Map<number, number>> {
  const res = await fetch(`http://127.0.0.1:${monitorPort}/connz?state=all&limit=100000`, { signal: AbortSignal.timeout(5000) });
  const connz = (await res.json()) as Connz;
  return new Map(connz.connections.filter((c) => c.name === name).map((c) => [c.cid, c.in_msgs]));
}

const sumOver = (counts: Map<number, number>, cids: Iterable<number>) => [...cids].reduce((sum, cid) => sum + (counts.get(cid) ?? 0), 0);

describe("standby coordinators", () => {
  let stack: Stack;
  let client: TestClient | undefined;
  let addrs: string[];
  let coordinators: Proc[];
  let workers: Proc[];
  const coordinatorArgs = ["--max-items", "1000", "--lease-ttl", "2s"];

  beforeEach(async () => {
    stack = new Stack();
    await stack.startNats();
    const [p1, p2] = [await freePort(), await freePort()];
    const a = await stack.startCoordinator(coordinatorArgs, p1);
    // The first takes the free lease before it opens its port; the second finds it held.
    const b = await stack.startCoordinator(coordinatorArgs, p2, { waitActive: false });
    coordinators = [a, b];
    addrs = [`127.0.0.1:${p1}`, `127.0.0.1:${p2}`];
    workers = await Promise.all(["w1", "w2", "w3"].map((id) => stack.startWorker(id, [...SIM, "--log-level", "debug"])));
    client = new TestClient(addrs.join(","));
    await client.waitForWorkers(3);
  });

  afterEach(async () => {
    client?.close();
    for (const p of coordinators) {
      try {
        process.kill(p.pid, "SIGCONT");
      } catch {
        /* gone */
      }
    }
    await stack.stop();
  });

  test("standby - the standby answers NOT_SERVING and UNAVAILABLE naming the active one; the SDK given both addresses uses the active one", async () => {
    assert.equal(await health(addrs[0]!), SERVING);
    assert.equal(await health(addrs[1]!), NOT_SERVING);
    const direct = createClients(addrs[1]!, undefined, { defaultTimeoutMs: 10_000 });
    try {
      await assert.rejects(direct.listWorkers(), (err: unknown) => {
        assert.equal(grpcCode(err), status.UNAVAILABLE);
        assert.match(String((err as Error).message), new RegExp(`standby; the active coordinator is ${addrs[0]!.replace(/\./g, "\\.")}`));
        return true;
      });
    } finally {
      direct.close();
    }
    // The SDK, given the standby first, moves to the active coordinator.
    const both = new TestClient(`${addrs[1]},${addrs[0]}`);
    try {
      const { batchId } = await both.submit({ items: items(1, "s", 10) });
      assertWholeBatch((await pollUntilTerminal(both, batchId)).batch, 10);
    } finally {
      both.close();
    }
    // So does the CLI.
    const listed = await stack.cli(["workers"], { SHOAL_ADDR: `${addrs[1]},${addrs[0]}` }, 60_000);
    assert.equal(listed.code, 0, listed.stderr);
    assert.match(listed.stdout, /w1/);
  });

  test("standby - kill -9 the active coordinator mid-batch: the standby takes over, every item ends once, nothing runs twice", async () => {
    const { batchId } = await client!.submit({ items: items(100, "f") });
    let killedAt = 0;
    let servingAt = 0;
    const { batch, partialTerminalPolls } = await pollUntilTerminal(client!, batchId, {
      onProgress: (b) => {
        if (!killedAt && b.succeeded >= N / 3) {
          killedAt = Date.now();
          void stack.kill(coordinators[0]!, "SIGKILL").then(async () => {
            await waitFor("the standby serving", async () => (await health(addrs[1]!)) === SERVING, 30_000);
            servingAt = Date.now();
          });
        }
      },
    });
    assert.ok(killedAt > 0, "the active coordinator was killed mid-batch");
    assert.equal(partialTerminalPolls, 0);
    assertWholeBatch(batch, N);
    assert.equal(batch.succeeded, N);
    const runs = executionsPerItem(workers.map((w) => w.logs), batchId);
    const twice = [...runs].filter(([, n]) => n > 1).map(([i]) => i);
    assert.deepEqual(twice, [], `items ran more than once: ${twice.join(", ")}`);
    assert.equal(runs.size, N);
    assert.ok(coordinators[1]!.logs.some((l) => l.msg === "elected the active coordinator"), "the standby was elected");
    assert.ok(coordinators[1]!.logs.some((l) => l.msg === "resumed running batches; waiting for workers to report their items"), "it recovered as a restart does");
    // Reported, not asserted (tests never assert wall-clock times): the takeover time.
    if (servingAt) process.stderr.write(`standby serving ${servingAt - killedAt} ms after kill -9 of the active coordinator\n`);
  });

  test("standby - SIGSTOP the active coordinator past its lease: the standby takes over; resumed, the old one sends nothing more to NATS and steps down", async () => {
    const { batchId } = await client!.submit({ items: items(100, "p") });
    await waitFor("a third of the batch", async () => (await client!.get(batchId)).succeeded >= N / 3, 120_000);
    const old = coordinators[0]!;
    const oldName = `shoal-coordinator ${old.pid}`;
    process.kill(old.pid, "SIGSTOP");
    await waitFor("the standby serving", async () => (await health(addrs[1]!)) === SERVING, 30_000);
    // The standby has recovered and placed; the paused one's connection is still open.
    await waitFor("the new coordinator placing", () => coordinators[1]!.logs.some((l) => l.msg === "active coordinator serving"), 30_000);
    const beforeByConn = await messagesFrom(stack.natsMonitorPort, oldName);
    const before = sumOver(beforeByConn, beforeByConn.keys());
    assert.ok(before > 0, `the paused coordinator's connection ${oldName} is known to nats-server`);
    process.kill(old.pid, "SIGCONT");
    await waitFor("the old coordinator stepping down", () => old.logs.some((l) => l.msg === "no longer the active coordinator"), 30_000);
    await waitFor("its term closed", () => old.logs.some((l) => l.msg === "coordinator stopped"), 30_000);
    // Over the connections of the paused term only: under load the old process may win a later
    // term before this reads, and that term's new connection has the same name.
    const after = sumOver(await messagesFrom(stack.natsMonitorPort, oldName), beforeByConn.keys());
    assert.equal(after, before, `messages nats-server received from the deposed coordinator after it resumed: ${after - before}`);
    assert.equal(await health(addrs[0]!), NOT_SERVING);
    const { batch, partialTerminalPolls } = await pollUntilTerminal(client!, batchId);
    assert.equal(partialTerminalPolls, 0);
    assertWholeBatch(batch, N);
    assert.equal(batch.succeeded, N);
    const runs = executionsPerItem(workers.map((w) => w.logs), batchId);
    const twice = [...runs].filter(([, n]) => n > 1).map(([i]) => i);
    assert.deepEqual(twice, [], `items ran more than once: ${twice.join(", ")}`);
    assert.equal(runs.size, N);
    // Back to standby, it can take over again: stop the active one and the old one serves.
    await stack.kill(coordinators[1]!, "SIGTERM");
    await waitFor("the first coordinator active again", async () => (await health(addrs[0]!)) === SERVING, 30_000);
    const again = await client!.submit({ items: items(1, "p2", 10) });
    assertWholeBatch((await pollUntilTerminal(client!, again.batchId)).batch, 10);
  });
});

describe("standby coordinators - a submit whose term ends while its batch is stored", () => {
  let stack: Stack;
  let coordinators: Proc[] = [];
  let clients: TestClient[] = [];
  const HOLD_MS = 8000;

  beforeEach(async () => {
    stack = new Stack();
    await stack.startNats();
    const [p1, p2] = [await freePort(), await freePort()];
    // The first holds every submit's answer after its batch is stored (test hook), long enough
    // to be paused past its lease in between.
    const a = await stack.startCoordinator(["--max-items", "1000", "--lease-ttl", "2s"], p1, { env: { SHOAL_TEST_HOLD_SUBMIT_ANSWER_MS: String(HOLD_MS) } });
    const b = await stack.startCoordinator(["--max-items", "1000", "--lease-ttl", "2s"], p2, { waitActive: false });
    coordinators = [a, b];
    clients = [new TestClient(`127.0.0.1:${p1}`), new TestClient(`127.0.0.1:${p1},127.0.0.1:${p2}`)];
    await stack.startWorker("w1", SIM);
    await clients[1]!.waitForWorkers(1);
  });

  afterEach(async () => {
    for (const c of clients) c.close();
    for (const p of coordinators) {
      try {
        process.kill(p.pid, "SIGCONT");
      } catch {
        /* gone */
      }
    }
    await stack.stop();
  });

  test("standby - paused past its lease between storing a batch and answering, the old coordinator refuses it (UNAVAILABLE); the same key at the active one gets the batch, which completes", async () => {
    const [old, standby] = coordinators as [Proc, Proc];
    const held = clients[0]!.submit({ items: items(20, "held", 10), idempotencyKey: "held-across-terms" }).then(
      (r) => ({ ok: r }),
      (err: unknown) => ({ err }),
    );
    await waitFor("the batch stored and its answer held", () => old.logs.some((l) => l.msg === "batch stored; holding the answer (test hook)"), 30_000);
    const storedId = String(old.logs.find((l) => l.msg === "batch stored; holding the answer (test hook)")!.batchId);
    process.kill(old.pid, "SIGSTOP");
    await waitFor("the standby serving", () => standby.logs.some((l) => l.msg === "active coordinator serving"), 30_000);
    process.kill(old.pid, "SIGCONT");
    const answer = await held;
    assert.ok("err" in answer, `a coordinator whose term ended answered the submit: ${JSON.stringify((answer as { ok?: unknown }).ok)}`);
    assert.equal(grpcCode(answer.err), status.UNAVAILABLE, String(answer.err));
    assert.match(String((answer.err as Error).message), /stopped being the active one while it stored the batch/);
    // The client's retry with the same key, at whichever coordinator is active now.
    const again = await clients[1]!.submit({ items: items(20, "held", 10), idempotencyKey: "held-across-terms" });
    assert.equal(again.batchId, storedId, "the active coordinator resumed the stored batch and answers with it");
    const { batch, partialTerminalPolls } = await pollUntilTerminal(clients[1]!, again.batchId);
    assert.equal(partialTerminalPolls, 0);
    assertWholeBatch(batch, 10);
    assert.equal(batch.succeeded, 10);
  });
});
