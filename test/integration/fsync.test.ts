// `shoal up --fsync`: the setting reaches the real nats-server (its own /varz says so, not just
// the file Shoal wrote), and a fleet on `always` still completes batches. Needs nats-server
// >= 2.10 (scripts/setup.sh installs it): on an older one these tests fail, they never skip.

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { formatVersion, natsServerConfig, natsServerVersion, SYNC_INTERVAL_SINCE, versionAtLeast } from "../../cli/nats-config.js";
import { findNatsServer } from "../../cli/up.js";
import { BatchState } from "../../proto/gen/shoal/v1/shoal.js";
import { TestClient } from "../harness/client.js";
import { CLI, ROOT, freePort } from "../harness/processes.js";
import { alive, childrenOf } from "../harness/shoal-up.js";

interface Varz {
  version: string;
  jetstream?: { config?: { sync_interval?: number; sync_always?: boolean } };
}

/** The nats-server `shoal up` would start, checked to be new enough (failing, not skipping, when it is not). */
function natsServer(): string {
  const bin = findNatsServer();
  const v = natsServerVersion(bin);
  assert.ok(
    versionAtLeast(v, SYNC_INTERVAL_SINCE),
    `${bin} is v${formatVersion(v)}; --fsync needs nats-server >= ${formatVersion(SYNC_INTERVAL_SINCE)}: run scripts/setup.sh`,
  );
  return bin;
}

async function varz(port: number): Promise<Varz> {
  const res = await fetch(`http://127.0.0.1:${port}/varz`, { signal: AbortSignal.timeout(5000) });
  assert.equal(res.status, 200);
  return (await res.json()) as Varz;
}

/**
 * /varz once it shows JetStream: the monitor port answers before JetStream has started, and a
 * /varz read then has no `jetstream` yet. Past the deadline the last answer is returned as it is.
 */
async function waitForVarz(port: number, child: ChildProcess, timeoutMs: number): Promise<Varz> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    assert.equal(child.exitCode, null, "nats-server exited before serving /varz");
    try {
      const v = await varz(port);
      if (v.jetstream?.config || Date.now() > deadline) return v;
    } catch (err) {
      if (Date.now() > deadline) throw err;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

const NS_PER_MS = 1_000_000;

test("fsync - nats-server reports the sync settings of each config shoal up writes", async () => {
  const bin = natsServer();
  const version = natsServerVersion(bin);
  const cases = [
    { storage: { fsync: "always" as const, fsyncIntervalMs: 120_000 }, syncAlways: true },
    { storage: { fsync: "interval" as const, fsyncIntervalMs: 120_000 }, syncAlways: false, intervalMs: 120_000 },
    { storage: { fsync: "interval" as const, fsyncIntervalMs: 1500 }, syncAlways: false, intervalMs: 1500 },
  ];
  for (const c of cases) {
    const dir = mkdtempSync(join(tmpdir(), "shoal-fsync-conf-"));
    const conf = join(dir, "nats-server.conf");
    writeFileSync(conf, natsServerConfig(c.storage, version, bin).text);
    const [port, monitor] = [await freePort(), await freePort()];
    const child = spawn(bin, ["-js", "-sd", join(dir, "js"), "-a", "127.0.0.1", "-p", String(port), "-m", String(monitor), "-c", conf], { stdio: "ignore" });
    const exited = new Promise((r) => child.once("exit", r));
    try {
      const v = await waitForVarz(monitor, child, 15_000);
      const js = v.jetstream?.config;
      assert.ok(js, `no jetstream config in /varz of ${bin} v${v.version}`);
      assert.equal(js.sync_always === true, c.syncAlways, `${JSON.stringify(c.storage)}: sync_always ${js.sync_always}`);
      if (c.intervalMs !== undefined) assert.equal(js.sync_interval, c.intervalMs * NS_PER_MS, `${JSON.stringify(c.storage)}: sync_interval`);
    } finally {
      if (child.exitCode === null) child.kill("SIGKILL");
      await exited;
      rmSync(dir, { recursive: true, force: true });
    }
  }
});

test("fsync - shoal up --fsync always runs nats-server with sync always, and a batch completes", async () => {
  natsServer();
  const dir = mkdtempSync(join(tmpdir(), "shoal-fsync-up-"));
  const [grpcPort, natsPort, monitorPort] = [await freePort(), await freePort(), await freePort()];
  const up = spawn(
    process.execPath,
    [CLI, "up", "--fsync", "always", "--workers", "1", "--simulate", "--vram", "2GiB", "--grpc-port", String(grpcPort), "--nats-port", String(natsPort),
      "--nats-monitor-port", String(monitorPort), "--metrics-port", "0", "--http-port", "0", "--data-dir", join(dir, "data"), "--log-format", "json"],
    { stdio: ["ignore", "pipe", "pipe"], cwd: ROOT },
  );
  let stdout = "";
  let stderr = "";
  up.stdout.on("data", (d) => (stdout += d));
  up.stderr.on("data", (d) => (stderr += d));
  const exited = new Promise<number | null>((r) => up.once("exit", (code) => r(code)));
  let children: number[] = [];
  const client = new TestClient(`127.0.0.1:${grpcPort}`);
  try {
    const deadline = Date.now() + 120_000;
    while (!stdout.includes("Shoal is up")) {
      assert.ok(up.exitCode === null, `shoal up exited early:\n${stderr.slice(-3000)}`);
      assert.ok(Date.now() < deadline, `shoal up not ready:\n${stderr.slice(-3000)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    children = childrenOf(up.pid!);
    assert.match(stdout, /JetStream store in .*, fsync on every write\)/);
    assert.match(readFileSync(join(dir, "data", "nats-server.conf"), "utf8"), /jetstream \{\n {2}sync_interval: always\n\}/);
    assert.match(stderr, /JetStream fsyncs every write before acknowledging it/);

    // The running server's own account of its options: false if the config were not applied.
    const v = await varz(monitorPort);
    assert.equal(v.jetstream?.config?.sync_always, true, `/varz jetstream.config: ${JSON.stringify(v.jetstream?.config)}`);

    const items = Array.from({ length: 20 }, (_, i) => ({ model: "sim-zero", params: { tag: `i${i}` } }));
    const batch = await client.sdk.runBatch({ items }, { timeoutMs: 60_000 });
    assert.equal(batch.state, BatchState.BATCH_STATE_COMPLETED);
    assert.equal(batch.succeeded, items.length);
    assert.equal(batch.results.length, items.length);
  } finally {
    client.close();
    if (up.exitCode === null) up.kill("SIGTERM");
    const code = await exited;
    try {
      assert.equal(code, 0, `shoal up exit code; stderr:\n${stderr.slice(-2000)}`);
      for (const pid of children) assert.ok(!alive(pid), `child ${pid} outlived shoal up`);
    } finally {
      for (const pid of children) if (alive(pid)) process.kill(pid, "SIGKILL");
      rmSync(dir, { recursive: true, force: true });
    }
  }
});
