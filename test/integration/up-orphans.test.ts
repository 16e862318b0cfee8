import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { createServer, type AddressInfo } from "node:net";
import { ShoalUp, alive } from "../harness/shoal-up.js";
import { natsServerBinary } from "../harness/processes.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function commandOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ");
  } catch {
    return "";
  }
}

test("shoal up - after kill -9 of up its coordinator, worker and gateway see their stdin pipe close and exit (no pid polling)", async () => {
  const up = new ShoalUp();
  try {
    await up.start({ args: ["--workers", "1", "--vram", "2GiB", "--gpu", "none"], env: process.env });
    const shoalChildren = up.children.filter((pid) => !commandOf(pid).includes("nats-server"));
    assert.equal(shoalChildren.length, 3, "coordinator, worker and gateway");
    process.kill(up.pid!, "SIGKILL");
    const deadline = Date.now() + 60_000;
    while (shoalChildren.some(alive) && Date.now() < deadline) await sleep(200);
    assert.deepEqual(shoalChildren.filter(alive), [], "every Shoal child exited");
    // The children inherited up's stdout and stderr, which this test still reads: each says why.
    const lines = (up.stdout + up.stderr).split("\n").filter((l) => l.includes("parent process is gone"));
    assert.equal(lines.length, 3, `one line per child:\n${lines.join("\n")}`);
    for (const l of lines) assert.equal((JSON.parse(l) as { via?: string }).via, "pipe closed", l);
  } finally {
    // stop() kills by pid whatever a failed check left, and removes the data dir.
    await up.stop();
  }
});

test("shoal up - after kill -9 of up its nats-server ends too (started under setpriv --pdeathsig)", async () => {
  const up = new ShoalUp();
  try {
    await up.start({ args: ["--workers", "1", "--vram", "2GiB", "--gpu", "none", "--http-port", "0"], env: process.env });
    const nats = up.children.filter((pid) => commandOf(pid).includes("nats-server"));
    assert.equal(nats.length, 1, "one nats-server");
    assert.equal(Number(readFileSync(join(up.dataDir, "nats-server.pid"), "utf8").trim()), nats[0], "its pid file names it");
    process.kill(up.pid!, "SIGKILL");
    const deadline = Date.now() + 30_000;
    while (alive(nats[0]!) && Date.now() < deadline) await sleep(200);
    assert.equal(alive(nats[0]!), false, "nats-server still running 30 s after up was killed");
  } finally {
    await up.stop();
  }
});

test("shoal up - a nats-server an earlier up of the data dir left running is stopped before its own starts, and says so", async () => {
  const first = new ShoalUp();
  let leftover: ChildProcess | undefined;
  try {
    // The data dir's config and identities come from a first up, stopped cleanly.
    await first.start({ args: ["--workers", "1", "--vram", "2GiB", "--gpu", "none", "--http-port", "0"], env: process.env, keepDataDir: true });
    const natsPort = first.natsPort;
    await first.stop();
    // What an up killed where setpriv is missing (or an older up) leaves: a server on the data
    // dir's config, port and store, its pid in the pid file, its parent gone.
    const dataDir = first.dataDir;
    const conf = join(dataDir, "nats-server.conf");
    const pidFile = join(dataDir, "nats-server.pid");
    leftover = spawn(natsServerBinary(), ["-js", "-sd", join(dataDir, "jetstream"), "-a", "127.0.0.1", "-p", String(natsPort), "-c", conf, "-P", pidFile], { stdio: "ignore", detached: true });
    const leftoverPid = leftover.pid!;
    const ready = Date.now() + 15_000;
    while (!existsSync(pidFile) && Date.now() < ready) await sleep(100);
    assert.ok(existsSync(pidFile), "the leftover wrote its pid file");
    const second = new ShoalUp(first.dir);
    try {
      await second.start({ args: ["--workers", "1", "--vram", "2GiB", "--gpu", "none", "--http-port", "0"], env: process.env, natsPort });
      assert.equal(alive(leftoverPid), false, "the leftover nats-server was stopped");
      const warned = (second.stdout + second.stderr).split("\n").find((l) => l.includes("left running by an earlier `shoal up`"));
      assert.ok(warned, "up says it stopped the leftover");
      assert.equal((JSON.parse(warned!) as { pid?: number }).pid, leftoverPid);
      const now = natsServersOf(second);
      assert.equal(now.length, 1);
      assert.notEqual(now[0], leftoverPid, "up runs its own nats-server");
    } finally {
      await second.stop();
    }
  } finally {
    if (leftover?.pid && alive(leftover.pid)) process.kill(leftover.pid, "SIGKILL");
    await first.stop();
    rmSync(first.dir, { recursive: true, force: true });
  }
});

function natsServersOf(up: ShoalUp): number[] {
  return up.children.filter((pid) => commandOf(pid).includes("nats-server"));
}

test("shoal up - a --nats-port another process holds is refused with the flag named, before anything starts", async () => {
  const holder = createServer(() => {});
  await new Promise<void>((r) => holder.listen(0, "127.0.0.1", () => r()));
  const port = (holder.address() as AddressInfo).port;
  const up = new ShoalUp();
  try {
    await assert.rejects(
      up.start({ args: ["--workers", "1", "--gpu", "none", "--http-port", "0"], env: process.env, natsPort: port, readyTimeoutMs: 60_000 }),
      (err: Error) => err.message.includes(`--nats-port: 127.0.0.1:${port} is already in use by another process`),
    );
  } finally {
    await up.stop();
    holder.close();
  }
});
