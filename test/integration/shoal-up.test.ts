import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect } from "@nats-io/transport-node";
import { decode } from "fast-png";
import { CLI, ROOT, freePort } from "../harness/processes.js";
import { alive, childrenOf } from "../harness/shoal-up.js";

test("shoal up - starts nats-server, a coordinator, 2 workers and the HTTP gateway, serves the CLI, and stops them all on SIGTERM", async () => {
  const dir = mkdtempSync(join(tmpdir(), "shoal-up-"));
  const [grpcPort, natsPort, httpPort] = [await freePort(), await freePort(), await freePort()];
  const up = spawn(process.execPath, [CLI, "up", "--workers", "2", "--grpc-port", String(grpcPort), "--nats-port", String(natsPort), "--http-port", String(httpPort), "--metrics-port", "0", "--data-dir", join(dir, "data"), "--log-format", "json", "--vram", "2GiB"], {
    stdio: ["ignore", "pipe", "pipe"],
    cwd: ROOT,
  });
  let stdout = "";
  let stderr = "";
  up.stdout.on("data", (d) => (stdout += d));
  up.stderr.on("data", (d) => (stderr += d));
  const exited = new Promise<number | null>((r) => up.once("exit", (code) => r(code)));
  let children: number[] = [];
  try {
    const deadline = Date.now() + 120_000;
    while (!stdout.includes("Shoal is up")) {
      assert.ok(up.exitCode === null, `shoal up exited early:\n${stderr.slice(-3000)}`);
      assert.ok(Date.now() < deadline, `shoal up not ready:\n${stderr.slice(-3000)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.match(stdout, new RegExp(`gRPC API\\s+127\\.0\\.0\\.1:${grpcPort}`));
    assert.match(stdout, new RegExp(`NATS\\s+nats://127\\.0\\.0\\.1:${natsPort}`));
    assert.match(stdout, new RegExp(`HTTP API\\s+http://127\\.0\\.0\\.1:${httpPort}/v1`));
    children = childrenOf(up.pid!);
    assert.equal(children.length, 5, "nats-server, coordinator, 2 workers and the gateway");
    // The gateway answers in front of the coordinator; its URL signing key is kept in the data dir.
    const models = await fetch(`http://127.0.0.1:${httpPort}/v1/models`, { signal: AbortSignal.timeout(30_000) });
    assert.equal(models.status, 200);
    assert.ok(((await models.json()) as { models: { name: string }[] }).models.some((m) => m.name === "imagegen-tiny"));
    assert.ok(existsSync(join(dir, "data", "gateway-url-signing-key")));
    assert.ok(existsSync(join(dir, "data", "jetstream")), "JetStream store under the data dir");
    // Its nats-server is secured: no anonymous access, a user per role, secrets readable by the owner only.
    await assert.rejects(connect({ servers: `127.0.0.1:${natsPort}`, timeout: 10_000 }), /Authorization Violation/);
    for (const f of ["nats-server.conf", "nats-identities.json"]) assert.equal(statSync(join(dir, "data", f)).mode & 0o777, 0o600, `${f} mode`);
    const identities = JSON.parse(readFileSync(join(dir, "data", "nats-identities.json"), "utf8")) as { workers: Record<string, { password: string }> };
    assert.deepEqual(Object.keys(identities.workers).sort(), ["w1", "w2"]);
    // A worker's identity may not act as the other worker.
    const w1 = await connect({ servers: `127.0.0.1:${natsPort}`, user: "w1", pass: identities.workers.w1!.password, inboxPrefix: "_INBOX_w1", timeout: 10_000 });
    try {
      await assert.rejects(w1.request("shoal.worker.w2.drain", new Uint8Array(), { timeout: 5000 }), /Permissions Violation/);
    } finally {
      await w1.close();
    }

    const env = { ...process.env, SHOAL_ADDR: `127.0.0.1:${grpcPort}` };
    const run = (args: string[]) =>
      new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
        // Killed after 2 minutes: a hung command fails the test instead of hanging it.
        const c = spawn(process.execPath, [CLI, ...args], { env, cwd: ROOT, timeout: 120_000, killSignal: "SIGKILL" });
        let out = "";
        let err = "";
        c.stdout.on("data", (d) => (out += d));
        c.stderr.on("data", (d) => (err += d));
        c.on("exit", (code) => resolve({ code, out, err }));
      });
    const workers = await run(["workers"]);
    assert.equal(workers.code, 0, workers.err);
    assert.match(workers.out, /w1/);
    assert.match(workers.out, /w2/);
    const submitted = await run(["submit", "examples/items.json", "--wait"]);
    assert.equal(submitted.code, 0, submitted.err);
    const batchId = /b_[0-9a-v]{20}/.exec(submitted.out + submitted.err)?.[0];
    assert.ok(batchId, `no batch id in: ${submitted.out} ${submitted.err}`);
    const outDir = join(dir, "out");
    const results = await run(["results", batchId, "--out", outDir]);
    assert.equal(results.code, 0, results.err);
    // examples/items.json holds 4 imagegen-tiny items: one PNG each, at the size it asked for.
    const items = JSON.parse(readFileSync(join(ROOT, "examples/items.json"), "utf8")) as { params: { width: number; height: number } }[];
    assert.equal(items.length, 4);
    const pngs = readdirSync(outDir).filter((f) => f.endsWith(".png")).sort();
    assert.equal(pngs.length, items.length, `PNGs written: ${pngs.join(", ")}`);
    pngs.forEach((f, i) => {
      const png = decode(readFileSync(join(outDir, f)));
      assert.deepEqual([png.width, png.height], [items[i]!.params.width, items[i]!.params.height], f);
    });
  } finally {
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
