// Processes the bench starts itself (NATS reference peers, the round-robin baseline's GPU
// consumers, simulated fleets, `shoal up`) and the test harness stacks it borrows. Everything is
// registered here and killed by pid: at the end of each case, and on SIGINT/SIGTERM or a crash.

import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Stack } from "../../test/harness/processes.js";

/** dist/bench/ (where the compiled bench scripts live). */
export const BENCH_DIST = fileURLToPath(new URL("../", import.meta.url));

export interface BenchProc {
  name: string;
  child: ChildProcess;
  pid: number;
  /** The last lines of stdout and stderr together. */
  output: string[];
  exited: Promise<number | null>;
  /** Resolves with the first line matching the predicate. */
  waitForLine(match: (line: string) => boolean, timeoutMs: number): Promise<string>;
}

const live = new Set<BenchProc>();
const stacks = new Set<Stack>();
const extraPids = new Set<number>();

export function spawnTracked(name: string, cmd: string, args: string[], env: Record<string, string> = {}): BenchProc {
  const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...env } });
  const output: string[] = [];
  const watchers: { match: (l: string) => boolean; resolve: (l: string) => void }[] = [];
  let buf = "";
  const onData = (d: Buffer) => {
    buf += d.toString();
    let nl: number;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      output.push(line);
      if (output.length > 2000) output.shift();
      if (process.env.SHOAL_BENCH_VERBOSE) process.stderr.write(`[${name}] ${line}\n`);
      for (const w of [...watchers]) {
        if (w.match(line)) {
          watchers.splice(watchers.indexOf(w), 1);
          w.resolve(line);
        }
      }
    }
  };
  child.stdout!.on("data", onData);
  child.stderr!.on("data", onData);
  const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
  const p: BenchProc = {
    name,
    child,
    pid: child.pid!,
    output,
    exited,
    waitForLine(match, timeoutMs) {
      const seen = output.find(match);
      if (seen !== undefined) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`${name}: no expected line after ${timeoutMs} ms; last output:\n${output.slice(-20).join("\n")}`)), timeoutMs);
        const w = { match, resolve: (l: string) => (clearTimeout(timer), resolve(l)) };
        watchers.push(w);
        void exited.then((code) => {
          if (watchers.includes(w)) {
            clearTimeout(timer);
            reject(new Error(`${name} exited (${code}) before the expected line; last output:\n${output.slice(-20).join("\n")}`));
          }
        });
      });
    },
  };
  live.add(p);
  void exited.then(() => live.delete(p));
  return p;
}

/** Runs a compiled bench script (path relative to dist/bench) in its own node process. */
export function spawnBenchScript(name: string, script: string, args: string[], nodeArgs: string[] = []): BenchProc {
  return spawnTracked(name, process.execPath, [...nodeArgs, join(BENCH_DIST, script), ...args]);
}

/** Sends a signal by pid and waits for the exit; SIGKILL after `graceMs`. */
export async function stopProc(p: BenchProc, signal: NodeJS.Signals = "SIGKILL", graceMs = 10_000): Promise<void> {
  if (p.child.exitCode !== null || p.child.signalCode !== null) return;
  try {
    process.kill(p.pid, signal);
  } catch {
    return;
  }
  if (signal === "SIGKILL") {
    await p.exited;
    return;
  }
  let timer: NodeJS.Timeout | undefined;
  const timedOut = await Promise.race([p.exited.then(() => false), new Promise<boolean>((r) => (timer = setTimeout(() => r(true), graceMs)))]);
  clearTimeout(timer);
  if (timedOut) await stopProc(p, "SIGKILL");
}

export function trackStack(s: Stack): Stack {
  stacks.add(s);
  return s;
}

export async function stopStack(s: Stack): Promise<void> {
  stacks.delete(s);
  await s.stop();
}

/** Pids started by a process of ours (e.g. `shoal up`'s children), killed with the rest. */
export function trackPid(pid: number): void {
  extraPids.add(pid);
}

export function untrackPid(pid: number): void {
  extraPids.delete(pid);
}

/** Kills everything still registered (by pid). Safe to call more than once. */
export async function stopEverything(): Promise<void> {
  await Promise.all([...live].map((p) => stopProc(p, "SIGKILL")));
  await Promise.all([...stacks].map((s) => stopStack(s).catch(() => undefined)));
  for (const pid of extraPids) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      /* gone */
    }
  }
  extraPids.clear();
}

/** Direct children of a pid, from /proc (Linux). */
export function childPids(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

// ---------------------------------------------------------------------------------------------
// /proc readers (Linux): CPU time and memory of a process.

const CLK_TCK = 100; // USER_HZ; 100 on every Linux this runs on (getconf CLK_TCK)

/** User + system CPU seconds the process has used so far. */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  // Fields after the command name (which may contain spaces) start at the last ')'.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // utime and stime are fields 14 and 15 of the full line: 12 and 13 after the name.
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

function statusField(pid: number, field: string): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status);
  return m ? Number(m[1]) * 1024 : Number.NaN;
}

/** Resident set size now, in bytes. */
export function rssBytes(pid: number): number {
  return statusField(pid, "VmRSS");
}

/** Peak resident set size, in bytes. */
export function peakRssBytes(pid: number): number {
  return statusField(pid, "VmHWM");
}

/** CPU share (1.0 = one core) a process used over a window of `ms`. */
export async function cpuShare(pid: number, ms: number): Promise<{ share: number; cpuS: number; wallS: number }> {
  const c0 = cpuSeconds(pid);
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, ms));
  const cpuS = cpuSeconds(pid) - c0;
  const wallS = (performance.now() - t0) / 1000;
  return { share: cpuS / wallS, cpuS, wallS };
}
