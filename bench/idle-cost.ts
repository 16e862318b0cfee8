// The fleet's idle cost: `shoal up --workers N` up with no batch, CPU-ms per second and
// voluntary context switches (wake-ups) per second of every process and of each main thread,
// over a window of N seconds. Issue 13: at 512 × 512 (~10 items/s over the fleet) every idle
// ms/s is ~0.1 CPU-ms per item, so this is a per-item cost as much as a standby one.
//
//   node dist/bench/idle-cost.js [--workers 2] [--seconds 20] [--settle 5] [--batches 0] [--json out.json] [--cpu-prof DIR] [-- extra `shoal up` args]
//
// --batches N: before the settle, N RunBatch calls of 50 imagegen-tiny items (128 × 128, 4 steps)
// one after another, so the window shows the idle of a fleet that has worked (what the onnx case's
// idle row reads) rather than a fresh one: after a burst of allocation V8 keeps collecting for a
// while, which a fresh fleet never does.
//
// --cpu-prof DIR: every Node process of the `shoal up` profiles its main thread (as the bench's
// --cpu-prof, bench/lib/cpu-profile-preload.ts); the window's JavaScript is summarized per process.
//
// The window starts `--settle` seconds after "Shoal is up" (start-up work, the recovery window
// and the first heartbeats left out). Run it on a quiet machine: other processes' load shows up
// here only as longer wake-ups, not as more of them, so the switch counts are the steadier row.

import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CLI, freePort } from "../test/harness/processes.js";
import { formatProfileSummary, summarizeProfile } from "./lib/cpuprofile.js";
import { childPids, spawnTracked, stopEverything, stopProc, trackPid } from "./lib/procs.js";
import { runBatch } from "./lib/shoal.js";
import { TestClient } from "../test/harness/client.js";

interface Counters {
  cpuS: number;
  voluntary: number;
  involuntary: number;
}

/** CPU seconds and context switches of one thread (`tid`) or, summed over its threads, of a process. */
function threadCounters(pid: number, tid: number): Counters {
  // schedstat's first field: nanoseconds on a CPU (stat's utime + stime count 10 ms ticks, too
  // coarse for a few ms per second).
  const onCpuNs = Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, "utf8").split(" ")[0]);
  const status = readFileSync(`/proc/${pid}/task/${tid}/status`, "utf8");
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+)`, "m").exec(status)?.[1] ?? NaN);
  return { cpuS: onCpuNs / 1e9, voluntary: field("voluntary_ctxt_switches"), involuntary: field("nonvoluntary_ctxt_switches") };
}

function processCounters(pid: number): { byThread: Map<number, Counters>; main: Counters; threads: number } {
  const byThread = new Map<number, Counters>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      byThread.set(Number(tid), threadCounters(pid, Number(tid)));
    } catch {
      /* the thread ended between the listing and the read */
    }
  }
  return { byThread, main: threadCounters(pid, pid), threads: byThread.size };
}

/**
 * A process's counters over the window, thread by thread: a sum over the live threads drops when
 * one ends (see bench/lib/thread-cpu.ts), so a thread ended in the window counts nothing and one
 * started in it counts all it used.
 */
function wholeDelta(before: Map<number, Counters>, after: Map<number, Counters>): Counters {
  const d: Counters = { cpuS: 0, voluntary: 0, involuntary: 0 };
  for (const [tid, a] of after) {
    const b = before.get(tid);
    d.cpuS += Math.max(0, a.cpuS - (b?.cpuS ?? 0));
    d.voluntary += Math.max(0, a.voluntary - (b?.voluntary ?? 0));
    d.involuntary += Math.max(0, a.involuntary - (b?.involuntary ?? 0));
  }
  return d;
}

function roleOf(pid: number): string {
  const cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ");
  if (cmd.includes("nats-server")) return "nats-server";
  if (/\scoordinator(\s|$)/.test(cmd)) return "coordinator";
  if (/\sworker(\s|$)/.test(cmd)) return "worker";
  if (/\sgateway(\s|$)/.test(cmd)) return "gateway";
  return "other";
}

export interface IdleRow {
  role: string;
  pid: number;
  cpuMsPerS: number;
  mainCpuMsPerS: number;
  wakeupsPerS: number;
  mainWakeupsPerS: number;
  threads: number;
}

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i > 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : fallback;
}

async function main(): Promise<void> {
  const workers = Number(arg("--workers", "2"));
  const seconds = Number(arg("--seconds", "20"));
  const settle = Number(arg("--settle", "5"));
  const batches = Number(arg("--batches", "0"));
  const jsonOut = process.argv.includes("--json") ? arg("--json", "") : "";
  const profileDir = process.argv.includes("--cpu-prof") ? arg("--cpu-prof", "") : "";
  const preload = new URL("./lib/cpu-profile-preload.js", import.meta.url).href;
  const env: Record<string, string> = profileDir ? { NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ""} --import=${preload}`.trim(), SHOAL_BENCH_CPU_PROFILE_DIR: profileDir } : {};
  let window: { fromUs: number; toUs: number } | undefined;
  let rows: IdleRow[] = [];
  if (profileDir) mkdirSync(profileDir, { recursive: true });
  const dash = process.argv.indexOf("--");
  const extra = dash > 0 ? process.argv.slice(dash + 1) : [];
  const dataDir = mkdtempSync(join(tmpdir(), "shoal-idle-"));
  const grpcPort = await freePort();
  const natsPort = await freePort();
  // The onnx case's `shoal up` (bench/cases/real-onnx.ts), without its metrics and HTTP ports.
  const up = spawnTracked("shoal up", process.execPath, [
    CLI, "up", "--workers", String(workers), "--grpc-port", String(grpcPort), "--nats-port", String(natsPort),
    "--metrics-port", "0", "--http-port", "0", "--data-dir", dataDir, "--gpu", "none", "--log-level", "warn", "--log-format", "json", ...extra,
  ], env);
  try {
    await up.waitForLine((l) => l.includes("Shoal is up"), 180_000);
    const pids = [up.pid, ...childPids(up.pid)];
    pids.slice(1).forEach(trackPid);
    if (batches > 0) {
      await runWarmBatches(grpcPort, batches);
      console.log(`${batches} batches of 50 items run; settling ${settle} s`);
    }
    await new Promise((r) => setTimeout(r, settle * 1000));
    const before = new Map(pids.map((p) => [p, processCounters(p)]));
    const t0 = performance.now();
    const fromUs = Number(process.hrtime.bigint() / 1000n);
    await new Promise((r) => setTimeout(r, seconds * 1000));
    window = { fromUs, toUs: Number(process.hrtime.bigint() / 1000n) };
    const wallS = (performance.now() - t0) / 1000;
    rows = pids.map((pid) => {
      const a = processCounters(pid);
      const b = before.get(pid)!;
      const whole = wholeDelta(b.byThread, a.byThread);
      return {
        role: pid === up.pid ? "shoal up" : roleOf(pid),
        pid,
        cpuMsPerS: (whole.cpuS * 1000) / wallS,
        mainCpuMsPerS: ((a.main.cpuS - b.main.cpuS) * 1000) / wallS,
        wakeupsPerS: whole.voluntary / wallS,
        mainWakeupsPerS: (a.main.voluntary - b.main.voluntary) / wallS,
        threads: a.threads,
      };
    });
    const total = rows.reduce((s, r) => s + r.cpuMsPerS, 0);
    const totalWakeups = rows.reduce((s, r) => s + r.wakeupsPerS, 0);
    const f = (n: number) => n.toFixed(1).padStart(8);
    console.log(`idle ${wallS.toFixed(1)} s, ${workers} workers; CPU from /proc/<pid>/task/*/schedstat, wake-ups are voluntary context switches`);
    console.log(`${"process".padEnd(12)} ${"pid".padStart(7)} ${"ms/s".padStart(8)} ${"main ms/s".padStart(9)} ${"wake/s".padStart(8)} ${"main wake/s".padStart(11)} threads`);
    for (const r of rows) console.log(`${r.role.padEnd(12)} ${String(r.pid).padStart(7)} ${f(r.cpuMsPerS)} ${f(r.mainCpuMsPerS).padStart(9)} ${f(r.wakeupsPerS)} ${f(r.mainWakeupsPerS).padStart(11)} ${r.threads}`);
    console.log(`${"fleet".padEnd(12)} ${"".padStart(7)} ${f(total)} ${"".padStart(9)} ${f(totalWakeups)}`);
    if (jsonOut) writeFileSync(jsonOut, JSON.stringify({ workers, seconds: wallS, extraArgs: extra, rows, fleetCpuMsPerS: total, fleetWakeupsPerS: totalWakeups }, null, 2));
  } finally {
    await stopProc(up, "SIGTERM", 30_000);
    await stopEverything();
    rmSync(dataDir, { recursive: true, force: true });
  }
  if (profileDir && window) {
    for (const r of rows) {
      if (r.role !== "coordinator" && r.role !== "worker") continue;
      const file = join(profileDir, `${r.pid}.cpuprofile`);
      if (existsSync(file)) console.log(`\n${r.role} ${r.pid}\n${formatProfileSummary(summarizeProfile(file, 15, process.cwd(), [window]))}`);
    }
  }
}

async function runWarmBatches(grpcPort: number, batches: number): Promise<void> {
  const client = new TestClient(`127.0.0.1:${grpcPort}`);
  try {
    for (let b = 0; b < batches; b++) {
      const items = Array.from({ length: 50 }, (_, i) => ({
        model: "imagegen-tiny",
        params: { prompt: `idle bench ${b}.${i}: a red ceramic mug on a wooden table`, width: 128, height: 128, steps: 4, seed: 1000 + i },
      }));
      const done = await runBatch(client, { items }, 300_000);
      if (!done || done.succeeded !== items.length) throw new Error(`warm batch ${b + 1}: ${done ? `${done.succeeded} of ${items.length} succeeded` : "did not finish in 300 s"}`);
    }
  } finally {
    client.close();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
