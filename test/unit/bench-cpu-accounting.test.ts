import { after, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { cpuWindow, fleetOverheadByProcess, fleetOverheadMetric, shoalUpProcesses, type CpuPerItem } from "../../bench/lib/cpu-accounting.js";

// The bench's fleet CPU accounting on real processes: what /proc says a busy and an idle child
// used, and which role each child of a `shoal up`-like parent is given from its command line.

const children: ChildProcess[] = [];
const dir = mkdtempSync(join(tmpdir(), "shoal-cpu-acct-"));
after(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
});

function idleNode(...extraArgs: string[]): ChildProcess {
  const c = spawn(process.execPath, ["-e", "setInterval(() => {}, 1000)", ...extraArgs], { stdio: "ignore" });
  children.push(c);
  return c;
}

function lineFrom(c: ChildProcess, text: string, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no "${text}" after ${timeoutMs} ms`)), timeoutMs);
    let buf = "";
    c.stdout!.on("data", (d) => {
      buf += d;
      if (buf.includes(text)) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
}

test("bench cpu accounting - a child that burns 300 CPU-ms is charged about that; an idle one almost nothing", { timeout: 60_000 }, async () => {
  // The idle child's own start-up (node's boot: 100-200 CPU-ms on a loaded machine) must fall
  // before the window opens, or "idle" measures the boot: it is started, and ready, first.
  const idle = spawn(process.execPath, ["-e", "console.log('READY'); setInterval(() => {}, 1000)"], { stdio: ["ignore", "pipe", "ignore"] });
  children.push(idle);
  await lineFrom(idle, "READY", 30_000);
  // Burns until its own CPU time reaches 300 ms (however busy the machine), then idles.
  const busy = spawn(process.execPath, ["-e", "while (process.cpuUsage().user < 300e3) {} console.log('DONE'); setInterval(() => {}, 1000)"], { stdio: ["ignore", "pipe", "ignore"] });
  children.push(busy);
  const done = lineFrom(busy, "DONE", 50_000);
  await new Promise((r) => setTimeout(r, 50));
  const w = cpuWindow({ busy: [busy.pid!], idle: [idle.pid!] });
  await done;
  const cpu = w.end(100);
  assert.equal(cpu.items, 100);
  // Started before the window opened, so slightly less than 300 ms may fall inside it.
  assert.ok(cpu.byProcess.busy!.cpuMs >= 150 && cpu.byProcess.busy!.cpuMs <= 1000, `busy: ${cpu.byProcess.busy!.cpuMs} CPU-ms`);
  assert.ok(cpu.byProcess.idle!.cpuMs < cpu.byProcess.busy!.cpuMs / 3, `idle: ${cpu.byProcess.idle!.cpuMs} CPU-ms`);
  assert.equal(cpu.byProcess.busy!.msPerItem, cpu.byProcess.busy!.cpuMs / 100);
  assert.equal(cpu.totalMsPerItem, cpu.byProcess.busy!.msPerItem + cpu.byProcess.idle!.msPerItem);
});

test("bench cpu accounting - a process that exits inside the window is an error, not a smaller number", { timeout: 30_000 }, async () => {
  const c = idleNode();
  const w = cpuWindow({ gone: [c.pid!] });
  c.kill("SIGKILL");
  await new Promise((r) => c.once("exit", r));
  assert.throws(() => w.end(1), /exited during the measured window/);
});

test("bench cpu accounting - the children of a shoal up are grouped by role from their command lines", { timeout: 30_000 }, async () => {
  // nats-server is recognised by its executable's name: a link of that name to sleep.
  const fakeNats = join(dir, "nats-server");
  symlinkSync("/bin/sleep", fakeNats);
  const nats = spawn(fakeNats, ["60"], { stdio: "ignore" });
  children.push(nats);
  const coord = idleNode("dist/cli/main.js", "coordinator", "--nats", "nats://127.0.0.1:4222");
  const w1 = idleNode("dist/cli/main.js", "worker", "--nats", "nats://127.0.0.1:4222", "--id", "w1");
  const w2 = idleNode("dist/cli/main.js", "worker", "--id", "w2");
  const gw = idleNode("dist/cli/main.js", "gateway", "--addr", "127.0.0.1:50051");
  // This test process stands in for `shoal up`: the children above are its children.
  await new Promise((r) => setTimeout(r, 300));
  const groups = shoalUpProcesses(process.pid);
  assert.deepEqual(groups["shoal up"], [process.pid]);
  assert.deepEqual(groups["nats-server"], [nats.pid]);
  assert.deepEqual(groups.coordinator, [coord.pid]);
  assert.deepEqual(groups["worker w1"], [w1.pid]);
  assert.deepEqual(groups["worker w2"], [w2.pid]);
  assert.deepEqual(groups.gateway, [gw.pid]);
});

test("bench cpu accounting - overhead outside inference is fleet minus direct per item; workers are charged net of their items' inference", () => {
  const direct: CpuPerItem = { items: 100, wallS: 1, byProcess: { direct: { cpuMs: 1000, msPerItem: 10, cores: 1 } }, totalMsPerItem: 10 };
  const fleet: CpuPerItem = {
    items: 100,
    wallS: 1,
    byProcess: {
      coordinator: { cpuMs: 50, msPerItem: 0.5, cores: 0.05 },
      "nats-server": { cpuMs: 30, msPerItem: 0.3, cores: 0.03 },
      "worker w0": { cpuMs: 640, msPerItem: 6.4, cores: 0.64 },
      "worker w1": { cpuMs: 420, msPerItem: 4.2, cores: 0.42 },
    },
    totalMsPerItem: 11.4,
  };
  const m = fleetOverheadMetric(fleet, direct);
  assert.ok(Math.abs(m.value - 1.4) < 1e-9, String(m.value));
  assert.equal(m.reference?.value, 10);
  assert.ok(Math.abs(m.ratio! - 1.14) < 1e-9);
  assert.equal(m.met, false, "1.4 CPU-ms is over the 1 CPU-ms target");
  const by = fleetOverheadByProcess(fleet, direct, { w0: 60, w1: 40 });
  assert.equal(by.coordinator, 0.5);
  assert.equal(by["nats-server"], 0.3);
  assert.ok(Math.abs(by["worker w0"]! - 0.4) < 1e-9, String(by["worker w0"]));
  assert.ok(Math.abs(by["worker w1"]! - 0.2) < 1e-9, String(by["worker w1"]));
});
