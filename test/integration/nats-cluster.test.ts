// Shoal on a real three-node JetStream cluster: several --nats URLs, --replicas 3 on every
// store, a nats-server killed (-9) mid-batch, stores made R1 raised to R3, a refusal that names
// --replicas on a single server, and `shoal up --nats-cluster 3`.

import { afterEach, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { Names } from "../../shared/subjects.js";
import { CLI, ROOT, Stack, type Proc } from "../harness/processes.js";
import { NatsCluster } from "../harness/nats-cluster.js";
import { TestClient, isTransient } from "../harness/client.js";
import { assertWholeBatch, executionsPerItem, pollUntilTerminal, waitFor } from "../harness/batch-checks.js";

const N = 150;
const SIM = ["--simulate", "--vram", "40GB", "--threads", "4", "--max-in-flight", "4"];
const items = (workMs: number, tag: string, n = N) => Array.from({ length: n }, (_, i) => ({ model: "sim-6g", params: { work_ms: workMs, tag: `${tag} ${i}` } }));

/** Replicas of every stream behind Shoal's streams, buckets and object store. */
async function replicasOf(servers: string, auth?: { user: string; password: string }): Promise<Map<string, number>> {
  return new Map([...(await streamsOf(servers, auth))].map(([name, c]) => [name, c.num_replicas]));
}

/**
 * The KV buckets whose reads may still be answered by any replica (direct gets): with replicas
 * none may be, so a coordinator reads what another one just wrote (jetstream-setup.ts).
 */
async function directKvOf(servers: string, auth?: { user: string; password: string }): Promise<string[]> {
  return [...(await streamsOf(servers, auth))].filter(([name, c]) => name.startsWith("KV_") && c.allow_direct).map(([name]) => name);
}

async function streamsOf(servers: string, auth?: { user: string; password: string }): Promise<Map<string, { num_replicas: number; allow_direct?: boolean }>> {
  const names = new Names("shoal");
  const nc = await connect({ servers: servers.split(","), timeout: 10_000, ...(auth ? { user: auth.user, pass: auth.password, inboxPrefix: "_INBOX_coordinator" } : {}) });
  try {
    const jsm = await jetstreamManager(nc, { timeout: 10_000 });
    const out = new Map<string, { num_replicas: number; allow_direct?: boolean }>();
    for (const stream of [
      names.resultsStream,
      names.batchIndexStream,
      `KV_${names.batchesBucket}`,
      `KV_${names.idempotencyBucket}`,
      `KV_${names.modelsBucket}`,
      `KV_${names.webhooksBucket}`,
      `OBJ_${names.artifactsBucket}`,
    ]) {
      // The batch index is made by the coordinator only; before it starts there is none.
      const info = await jsm.streams.info(stream).catch(() => undefined);
      if (info) out.set(stream, { num_replicas: info.config.num_replicas, allow_direct: info.config.allow_direct });
    }
    return out;
  } finally {
    await nc.close();
  }
}

describe("NATS cluster", () => {
  let cluster: NatsCluster | undefined;
  let stack: Stack | undefined;
  let client: TestClient | undefined;

  afterEach(async () => {
    client?.close();
    await stack?.stop();
    await cluster?.stop();
    client = undefined;
    stack = undefined;
    cluster = undefined;
  });

  test("cluster - 3 nodes, --replicas 3: every store has 3 copies; kill -9 a nats-server mid-batch and the batch completes, nothing runs twice", async () => {
    cluster = new NatsCluster(3);
    await cluster.start();
    stack = new Stack();
    stack.natsUrl = cluster.urls;
    // nats-server 2.10 right after a cluster forms now and then refuses to place a 3-replica
    // stream for a moment, and the coordinator stops at start (exit 1) rather than run without
    // its stores. One more start, with the first one's last words in the log if it fails too.
    try {
      await stack.startCoordinator(["--max-items", "1000", "--replicas", "3"]);
    } catch (err) {
      const first = stack.coordinator?.output.slice(-5).join("\n") ?? "";
      await new Promise((r) => setTimeout(r, 3000));
      try {
        await stack.startCoordinator(["--max-items", "1000", "--replicas", "3"]);
      } catch (again) {
        throw new Error(`the coordinator did not start twice: ${String(err)}; first start's output:\n${first}\nsecond: ${String(again)}`);
      }
    }
    const workers: Proc[] = await Promise.all(["w1", "w2", "w3"].map((id) => stack!.startWorker(id, [...SIM, "--replicas", "3"])));
    client = new TestClient(stack.grpcAddr);
    await client.waitForWorkers(3);
    const replicas = await replicasOf(cluster.urls);
    assert.deepEqual([...replicas.values()], Array(replicas.size).fill(3), `replicas: ${JSON.stringify([...replicas])}`);
    assert.deepEqual(await directKvOf(cluster.urls), [], "KV buckets whose reads any replica may answer");

    const { batchId } = await client.submit({ items: items(100, "k") });
    let killed = "";
    const { batch, partialTerminalPolls } = await pollUntilTerminal(client, batchId, {
      onProgress: (b) => {
        if (!killed && b.succeeded >= N / 3) {
          // The meta leader is the hardest one to lose: streams and consumers elect again.
          killed = "pending";
          void cluster!.metaLeader().then(async (leader) => {
            killed = leader ?? "n1";
            await cluster!.kill(killed);
          });
        }
      },
    });
    assert.ok(killed && killed !== "pending", "a nats-server was killed mid-batch");
    assert.equal(partialTerminalPolls, 0);
    assertWholeBatch(batch, N);
    assert.equal(batch.succeeded, N);
    const runs = executionsPerItem(workers.map((w) => w.logs), batchId);
    const twice = [...runs].filter(([, n]) => n > 1).map(([i]) => i);
    assert.deepEqual(twice, [], `items ran more than once: ${twice.join(", ")}`);
    // With two of three servers the cluster still takes new batches.
    // As a client does: a submit that meets the coordinator's connection moving off the killed
    // server answers UNAVAILABLE, and is sent again under the same idempotency key.
    let after: { batchId: string } | undefined;
    // Up to 60 s: on a loaded machine the coordinator may lose its lease while JetStream elects
    // new leaders, and a term's start waits for those elections (seen: over 30 s in CI).
    for (const until = Date.now() + 60_000; !after; ) {
      try {
        after = await client.submit({ items: items(1, "k2", 10), idempotencyKey: "cluster-after-kill" });
      } catch (err) {
        if (!isTransient(err) || Date.now() > until) {
          // What the coordinator said about its terms and storage since the kill, for the reader.
          const said = stack.coordinator!.logs.filter((l) => Number(l.level) >= 40 || /term|elected|recover|resumed|serving/.test(String(l.msg)));
          throw new Error(`the submit after the kill: ${String(err)}\ncoordinator (last 40 lines of warnings and terms):\n${said.slice(-40).map((l) => JSON.stringify(l).slice(0, 400)).join("\n")}`);
        }
        await new Promise((r) => setTimeout(r, 500));
      }
    }
    assertWholeBatch((await pollUntilTerminal(client, after.batchId)).batch, 10);
  });

  test("cluster - stores made with 1 replica are raised to --replicas 3 when the coordinator starts again with it", async () => {
    cluster = new NatsCluster(3);
    await cluster.start();
    stack = new Stack();
    stack.natsUrl = cluster.urls;
    // Only coordinators create stores (workers publish into them): the first one makes them R1.
    const first = await stack.startCoordinator(["--replicas", "1"]);
    await waitFor("the stores", async () => (await replicasOf(cluster!.urls).catch(() => new Map())).size >= 6, 30_000);
    const before = await replicasOf(cluster.urls);
    assert.equal(before.get(new Names("shoal").resultsStream), 1);
    assert.ok((await directKvOf(cluster.urls)).length > 0, "made with 1 replica, the KV buckets answer direct gets");
    await stack.kill(first);
    // Raising the stores to 3 replicas keeps a loaded cluster busy for seconds; a longer lease
    // keeps the renewals from running out meanwhile (see docs/cluster.md, known issues).
    const coordinator = await stack.startCoordinator(["--replicas", "3", "--lease-ttl", "10s"]);
    const w = await stack.startWorker("w1", [...SIM, "--replicas", "3"]);
    client = new TestClient(stack.grpcAddr);
    await client.waitForWorkers(1);
    const after = await replicasOf(cluster.urls);
    assert.deepEqual([...after.values()], Array(after.size).fill(3), `replicas: ${JSON.stringify([...after])}`);
    assert.deepEqual(await directKvOf(cluster.urls), [], "KV buckets made with 1 replica still answer direct gets from any replica");
    assert.ok(coordinator.logs.some((l) => l.msg === "storage limits updated" && l.replicas === 3), "the coordinator logged the change");
    const { batchId } = await client.submit({ items: items(1, "r", 5) });
    assertWholeBatch((await pollUntilTerminal(client, batchId)).batch, 5);
    assert.equal(w.child.exitCode, null, "the worker runs");
  });

  test("cluster - --replicas 3 on a single nats-server: the coordinator exits 2 with a message naming --replicas", async () => {
    stack = new Stack();
    await stack.startNats();
    const p = await stack.startCoordinator(["--replicas", "3"]).catch(() => stack!.coordinator!);
    const code = await Promise.race([p.exited, new Promise<"hung">((r) => setTimeout(() => r("hung"), 30_000).unref())]);
    assert.equal(code, 2, p.output.join("\n").slice(-2000));
    assert.match(p.output.join("\n"), /--replicas: nats-server cannot keep 3 copies/);
  });
});

/** n consecutive free loopback ports (shoal up's cluster takes --nats-port and the next ones). */
async function freeRun(n: number): Promise<number> {
  const isFree = (port: number) =>
    new Promise<boolean>((resolve) => {
      const s = createServer();
      s.once("error", () => resolve(false));
      s.listen(port, "127.0.0.1", () => s.close(() => resolve(true)));
    });
  for (let tries = 0; tries < 200; tries++) {
    // Below Linux's ephemeral range (32768 and up), where outgoing connections could take a port first.
    const base = 10_000 + Math.floor(Math.random() * 20_000);
    let ok = true;
    for (let i = 0; i < n && ok; i++) ok = await isFree(base + i);
    if (ok) return base;
  }
  throw new Error(`no ${n} consecutive free ports`);
}

function childrenOf(pid: number): { pid: number; comm: string }[] {
  const out: { pid: number; comm: string }[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid === pid) out.push({ pid: Number(entry), comm: stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")")) });
    } catch {
      /* exited meanwhile */
    }
  }
  return out;
}

test("cluster - shoal up --nats-cluster 3 starts three nats-servers with routes on loopback, stores with 3 replicas, and stops them all", async () => {
  const dir = mkdtempSync(join(tmpdir(), "shoal-up-cluster-"));
  const natsPort = await freeRun(3);
  const routePort = await freeRun(3);
  const grpcPort = await freeRun(1);
  const up = spawn(
    process.execPath,
    [CLI, "up", "--nats-cluster", "3", "--workers", "2", "--simulate", "--vram", "40GB", "--grpc-port", String(grpcPort), "--nats-port", String(natsPort), "--nats-cluster-port", String(routePort), "--http-port", "0", "--metrics-port", "0", "--data-dir", join(dir, "data"), "--log-format", "json"],
    { stdio: ["ignore", "pipe", "pipe"], cwd: ROOT },
  );
  let stdout = "";
  let stderr = "";
  up.stdout.on("data", (d) => (stdout += d));
  up.stderr.on("data", (d) => (stderr += d));
  const exited = new Promise<number | null>((r) => up.once("exit", (code) => r(code)));
  let children: { pid: number; comm: string }[] = [];
  try {
    const deadline = Date.now() + 120_000;
    while (!stdout.includes("Shoal is up")) {
      assert.ok(up.exitCode === null, `shoal up exited early:\n${stderr.slice(-3000)}`);
      assert.ok(Date.now() < deadline, `shoal up not ready:\n${stderr.slice(-3000)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    const urls = [0, 1, 2].map((i) => `nats://127.0.0.1:${natsPort + i}`).join(",");
    assert.ok(stdout.includes(urls), `every node's URL printed: ${stdout}`);
    children = childrenOf(up.pid!);
    assert.equal(children.filter((c) => c.comm === "nats-server").length, 3, JSON.stringify(children));
    for (const n of ["n1", "n2", "n3"]) {
      const conf = readFileSync(join(dir, "data", `nats-server-${n}.conf`), "utf8");
      assert.match(conf, new RegExp(`server_name: ${n}`));
      assert.match(conf, /listen: 127\.0\.0\.1:\d+/);
      assert.ok(existsSync(join(dir, "data", "jetstream", n)), `store of ${n}`);
    }
    // up's servers refuse anonymous clients: look as its coordinator, with the identity it keeps.
    const ids = JSON.parse(readFileSync(join(dir, "data", "nats-identities.json"), "utf8")) as { coordinator: { user: string; password: string } };
    const replicas = await replicasOf(urls, ids.coordinator);
    assert.deepEqual([...replicas.values()], Array(replicas.size).fill(3), `replicas: ${JSON.stringify([...replicas])}`);
    const batchFile = join(dir, "batch.json");
    writeFileSync(batchFile, JSON.stringify(items(1, "up", 20)));
    const submitted = await new Promise<{ code: number | null; out: string }>((resolve) => {
      const c = spawn(process.execPath, [CLI, "submit", batchFile, "--wait"], { env: { ...process.env, SHOAL_ADDR: `127.0.0.1:${grpcPort}` }, timeout: 120_000, killSignal: "SIGKILL" });
      let out = "";
      c.stdout.on("data", (d) => (out += d));
      c.stderr.on("data", (d) => (out += d));
      c.on("exit", (code) => resolve({ code, out }));
    });
    assert.equal(submitted.code, 0, submitted.out);
    up.kill("SIGTERM");
    const code = await Promise.race([exited, new Promise<"hung">((r) => setTimeout(() => r("hung"), 60_000).unref())]);
    assert.equal(code, 0, stderr.slice(-3000));
    for (const c of children) assert.ok(!existsSync(`/proc/${c.pid}`) || readFileSync(`/proc/${c.pid}/stat`, "utf8").includes(") Z "), `child ${c.comm} ${c.pid} still running`);
  } finally {
    if (up.exitCode === null) up.kill("SIGKILL");
    for (const c of children) {
      try {
        process.kill(c.pid, "SIGKILL");
      } catch {
        /* gone */
      }
    }
    rmSync(dir, { recursive: true, force: true });
  }
});
