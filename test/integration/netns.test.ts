// Across hosts: every process in its own Linux network namespace (hosts joined by veth pairs
// and a bridge, test/harness/netns.ts): three nats-servers in a JetStream cluster, two
// coordinators (one active, one standby), four workers and a client host. During 500-item
// batches it kills -9 a nats-server, kills -9 the active coordinator, cuts a worker's link and
// restores it, and cuts the active coordinator off from every nats-server. After each: every item
// has exactly one terminal result, no poll saw a terminal batch with fewer, no item with a
// committed result ran again, and the spans in which coordinators sent assignments never overlap.
// Without CAP_NET_ADMIN the test fails, saying so.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { natsClusterConfig, type NatsClusterNode } from "../../cli/nats-config.js";
import { ItemStatus } from "../../proto/gen/shoal/v1/shoal.js";
import { CLI, ROOT, natsServerBinary, type Proc } from "../harness/processes.js";
import { NetnsLab } from "../harness/netns.js";
import { waitFor } from "../harness/batch-checks.js";

const N = 500;
const WORK_MS = 250;
const NATS = ["n1", "n2", "n3"];
const COORDINATORS = ["c1", "c2"];
const WORKERS = ["w1", "w2", "w3", "w4"];
const DRIVER = join(ROOT, "dist/test/harness/netns-driver.js");
const READY = join(ROOT, "dist/cli/nats-cluster-ready.js");

interface DriverDone {
  event: "done";
  batchId: string;
  total: number;
  succeeded: number;
  failed: number;
  partialTerminalPolls: number;
  results: { index: number; status: number; workerId: string; error: string | null }[];
}

const lab = new NetnsLab();
const dir = mkdtempSync(join(tmpdir(), "shoal-netns-"));
let nodes: NatsClusterNode[] = [];
let natsUrls = "";
const nats = new Map<string, Proc>();
const coordinators = new Map<string, Proc[]>();
const workers = new Map<string, Proc>();
/** Kill times of coordinators killed with -9 (their open placement span ends there). */
const killedAt = new Map<Proc, number>();

function startNats(name: string): Proc {
  const node = nodes.find((n) => n.name === name)!;
  const conf = join(dir, `${name}.conf`);
  writeFileSync(conf, "max_payload: 8MB\n" + natsClusterConfig(node, nodes));
  const p = lab.spawn(name, `nats ${name}`, natsServerBinary(), ["-js", "-sd", join(dir, name), "-a", "0.0.0.0", "-p", "4222", "-c", conf]);
  nats.set(name, p);
  return p;
}

function startCoordinator(name: string): Proc {
  const addr = `${lab.host(name).ip}:50051`;
  const p = lab.spawn(name, `coordinator ${name}`, process.execPath, [
    CLI, "coordinator", "--nats", natsUrls, "--replicas", "3", "--grpc-host", "0.0.0.0", "--grpc-port", "50051", "--advertise-addr", addr,
    "--metrics-port", "0", "--log-format", "json", "--heartbeat-timeout", "1500ms", "--lease-ttl", "2s", "--max-items", "1000",
  ]);
  coordinators.set(name, [...(coordinators.get(name) ?? []), p]);
  return p;
}

function startWorker(name: string): Proc {
  const p = lab.spawn(name, `worker ${name}`, process.execPath, [
    CLI, "worker", "--nats", natsUrls, "--replicas", "3", "--id", name, "--gpu", "none", "--simulate", "--vram", "40GB", "--threads", "4", "--max-in-flight", "4",
    "--heartbeat-interval", "250ms", "--metrics-port", "0", "--log-format", "json", "--log-level", "debug",
  ]);
  workers.set(name, p);
  return p;
}

/** The coordinator process whose last word was that it serves as the active one. */
function activeCoordinator(): { name: string; proc: Proc } | undefined {
  for (const [name, list] of coordinators) {
    const proc = list[list.length - 1]!;
    if (proc.child.exitCode !== null || proc.child.signalCode !== null) continue;
    const life = proc.logs.filter((l) => l.msg === "active coordinator serving" || l.msg === "no longer the active coordinator");
    if (life.at(-1)?.msg === "active coordinator serving") return { name, proc };
  }
  return undefined;
}

/** Runs the driver in the client host: one batch; `onProgress` sees each count of finished items. */
function runBatch(tag: string, onProgress: (done: number) => void): Promise<DriverDone> {
  const addrs = COORDINATORS.map((c) => `${lab.host(c).ip}:50051`).join(",");
  const p = lab.spawn("cl", `driver ${tag}`, process.execPath, [DRIVER, addrs, String(N), String(WORK_MS), tag, "240000"]);
  return new Promise((resolve, reject) => {
    let seen = 0;
    const timer = setInterval(() => {
      for (; seen < p.output.length; seen++) {
        const line = p.output[seen]!;
        if (!line.startsWith("{")) continue;
        const ev = JSON.parse(line) as { event: string; done?: number };
        if (ev.event === "progress") onProgress(ev.done!);
        if (ev.event === "done") {
          clearInterval(timer);
          resolve(ev as DriverDone);
        }
      }
    }, 50);
    void p.exited.then((code) => {
      setTimeout(() => {
        clearInterval(timer);
        reject(new Error(`driver ${tag} exited ${code} without a result:\n${driverFailure(p)}`));
      }, 500);
    });
  });
}

/**
 * What a failed driver said (its events and its error's first lines, not the error's byte dumps)
 * and what every coordinator logged about its batch and its idempotency key: enough to tell a
 * lost batch from a client that asked the wrong coordinator.
 */
function driverFailure(p: Proc): string {
  const events = p.output.filter((l) => l.startsWith("{"));
  const error = p.output.filter((l) => !l.startsWith("{") && !/^\s*[\d,\s]+$/.test(l)).slice(0, 25);
  const batchId = (events.map((l) => JSON.parse(l) as { batchId?: string }).find((e) => e.batchId)?.batchId) ?? /"(b_[0-9a-z]+)"/.exec(p.output.join("\n"))?.[1];
  const said: string[] = [];
  for (const [name, list] of coordinators) {
    for (const c of list) {
      for (const l of c.logs) {
        const text = JSON.stringify(l);
        if ((batchId && text.includes(batchId)) || Number(l.level) >= 40) said.push(`[${name} pid ${c.pid}] ${text.slice(0, 600)}`);
      }
    }
  }
  return [`events:`, ...events, `error:`, ...error, `batch ${batchId ?? "(none)"}: coordinators' lines about it and their warnings (last 60):`, ...said.slice(-60)].join("\n");
}

/** How many times each item ran to success on each worker, from the workers' debug logs. */
function runsOf(batchId: string, exclude: string[] = []): Map<number, number> {
  const runs = new Map<number, number>();
  for (const [name, w] of workers) {
    if (exclude.includes(name)) continue;
    for (const l of w.logs) if (l.batchId === batchId && l.msg === "item succeeded") runs.set(Number(l.item), (runs.get(Number(l.item)) ?? 0) + 1);
  }
  return runs;
}

function checkBatch(done: DriverDone, excludeFromRuns: string[] = []): void {
  assert.equal(done.total, N);
  assert.equal(done.partialTerminalPolls, 0, "a poll saw a terminal batch with fewer results than items");
  assert.deepEqual(done.results.map((r) => r.index), [...Array(N).keys()], "exactly one result per item");
  for (const r of done.results) assert.ok([ItemStatus.ITEM_STATUS_SUCCEEDED, ItemStatus.ITEM_STATUS_FAILED].includes(r.status), `item ${r.index} not terminal`);
  assert.equal(done.succeeded, N, `every item succeeded (failed: ${JSON.stringify(done.results.filter((r) => r.error).slice(0, 5))})`);
  const twice = [...runsOf(done.batchId, excludeFromRuns)].filter(([, n]) => n > 1).map(([i]) => i);
  assert.deepEqual(twice, [], `items that ran again: ${twice.join(", ")}`);
}

/** Every term's span of sending assignments, from the coordinators' logs; none may overlap. */
function checkPlacementSpans(): void {
  const spans: { who: string; term: number; first: number; last: number }[] = [];
  for (const [name, list] of coordinators) {
    for (const p of list) {
      const firsts = p.logs.filter((l) => l.msg === "term placing");
      for (const f of firsts) {
        const ended = p.logs.find((l) => l.msg === "term ended" && l.term === f.term);
        const last = (ended?.lastAssignAt as number | undefined) ?? killedAt.get(p) ?? Date.now();
        spans.push({ who: `${name}/${p.pid}`, term: Number(f.term), first: Number(f.firstAssignAt), last });
      }
    }
  }
  spans.sort((a, b) => a.first - b.first);
  for (let i = 1; i < spans.length; i++) {
    assert.ok(spans[i]!.first > spans[i - 1]!.last, `two coordinators placed at once: ${JSON.stringify(spans[i - 1])} and ${JSON.stringify(spans[i])}`);
  }
}

before(async () => {
  lab.create([...NATS, ...COORDINATORS, ...WORKERS, "cl"]);
  nodes = NATS.map((name) => ({ name, clientPort: 4222, routePort: 6222, monitorPort: 0, host: lab.host(name).ip }));
  natsUrls = nodes.map((n) => `nats://${n.host}:4222`).join(",");
  for (const n of NATS) startNats(n);
  // nats-server 2.10 started as three at once now and then leaves one server out of the
  // JetStream meta group for good ("no suitable peers for placement"); restarting the servers
  // on their stores brings it in (as the NatsCluster harness does). Three tries, then fail.
  for (let attempt = 1; ; attempt++) {
    const ready = lab.spawn("cl", "cluster probe", process.execPath, [
      "--input-type=module", "-e",
      `const m = await import(${JSON.stringify(READY)}); await m.waitForJetStreamCluster(${JSON.stringify(natsUrls)}, 3, 30000, () => undefined); process.exit(0);`,
    ]);
    const code = await ready.exited;
    if (code === 0) break;
    assert.ok(attempt < 3, `the JetStream cluster did not form: ${ready.output.join("\n")}`);
    for (const n of NATS) await lab.kill(nats.get(n)!);
    for (const n of NATS) startNats(n);
  }
  startCoordinator("c1");
  await waitFor("c1 active", () => activeCoordinator()?.name === "c1", 60_000);
  startCoordinator("c2");
  await waitFor("c2 standby", () => coordinators.get("c2")![0]!.logs.some((l) => l.msg === "coordinator serving"), 60_000);
  for (const w of WORKERS) startWorker(w);
  await waitFor("4 workers registered", () => coordinators.get("c1")![0]!.logs.filter((l) => l.msg === "worker registered").length >= 4, 60_000);
});

after(async () => {
  // SHOAL_NETNS_LOGS=DIR keeps every process's output there, for reading a failure.
  const keep = process.env.SHOAL_NETNS_LOGS;
  if (keep) for (const [i, p] of lab.procs.entries()) writeFileSync(join(keep, `${i}-${p.name.replace(/\W+/g, "_")}.log`), p.output.join("\n"));
  await lab.destroy();
  rmSync(dir, { recursive: true, force: true });
});

test("netns - kill -9 a nats-server mid-batch", async () => {
  let killed = false;
  const done = await runBatch("nats-kill", (n) => {
    if (!killed && n >= N / 3) {
      killed = true;
      void lab.kill(nats.get("n2")!);
    }
  });
  assert.ok(killed);
  checkBatch(done);
  startNats("n2");
});

test("netns - kill -9 the active coordinator mid-batch", async () => {
  let victim: { name: string; proc: Proc } | undefined;
  const done = await runBatch("coordinator-kill", (n) => {
    if (!victim && n >= N / 3) {
      victim = activeCoordinator();
      if (victim) {
        killedAt.set(victim.proc, Date.now());
        void lab.kill(victim.proc);
      }
    }
  });
  assert.ok(victim, "an active coordinator was found and killed");
  checkBatch(done);
  checkPlacementSpans();
  startCoordinator(victim.name);
});

test("netns - cut a worker's link mid-batch and restore it", async () => {
  let cut = false;
  let restored: Promise<void> | undefined;
  const done = await runBatch("worker-cut", (n) => {
    if (!cut && n >= N / 3) {
      cut = true;
      lab.cut("w1");
      restored = new Promise((r) => setTimeout(() => r(lab.restore("w1")), 4000));
    }
  });
  await restored;
  assert.ok(cut);
  // Items w1 ran while cut off were never committed from there and ran again elsewhere; what
  // is checked is that no other worker ran an item twice.
  checkBatch(done, ["w1"]);
  checkPlacementSpans();
});

test("netns - cut the active coordinator off from the NATS majority mid-batch", async () => {
  let victim: { name: string; proc: Proc } | undefined;
  const stepDowns = (p: Proc) => p.logs.filter((l) => l.msg === "no longer the active coordinator").length;
  let before = 0;
  const done = await runBatch("coordinator-cut", (n) => {
    if (!victim && n >= N / 3) {
      victim = activeCoordinator();
      if (victim) {
        before = stepDowns(victim.proc);
        lab.cut(victim.name);
      }
    }
  });
  assert.ok(victim, "an active coordinator was found and cut off");
  await waitFor("the cut-off coordinator stepping down", () => stepDowns(victim!.proc) > before, 30_000);
  lab.restore(victim.name);
  checkBatch(done);
  checkPlacementSpans();
});
