// `shoal up` as a real process for integration tests: started on free ports with its own data
// dir, ready when it prints "Shoal is up", and stopped with SIGTERM while a deadline runs; the
// processes it started are found in /proc (its children) so a test can check they all ended.

import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CLI, ROOT, freePort } from "./processes.js";

/** The pids whose parent is `pid` (from /proc/<pid>/stat). */
export function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid === pid) out.push(Number(entry));
    } catch {
      /* exited meanwhile */
    }
  }
  return out;
}

/** Running (a zombie is not). */
export function alive(pid: number): boolean {
  try {
    return existsSync(`/proc/${pid}`) && !readFileSync(`/proc/${pid}/stat`, "utf8").includes(") Z ");
  } catch {
    return false;
  }
}

export interface ShoalUpOptions {
  /** Flags after `up` besides the ports and the data dir, which are chosen here. */
  args: string[];
  /** The whole environment of the process (the test's own is not added). */
  env: NodeJS.ProcessEnv;
  /** How long `up` may take to print "Shoal is up". */
  readyTimeoutMs?: number;
  /** The embedded nats-server's port (default: a free one). */
  natsPort?: number;
  /** stop() leaves the data dir for a later `up` of it (`new ShoalUp(dir)`), which removes it. */
  keepDataDir?: boolean;
}

export class ShoalUp {
  readonly dir: string;
  grpcPort = 0;
  natsPort = 0;
  httpPort = 0;
  stdout = "";
  stderr = "";
  /** The processes `up` started (nats-server, coordinator, workers, gateway), once it is up. */
  children: number[] = [];
  private child: ChildProcess | undefined;
  private exited: Promise<number | null> = Promise.resolve(null);
  private keepDataDir = false;

  /** `dir`: the directory of an earlier ShoalUp started with keepDataDir (its data dir is reused). */
  constructor(dir?: string) {
    this.dir = dir ?? mkdtempSync(join(tmpdir(), "shoal-up-"));
  }

  /** The data dir `up` runs on. */
  get dataDir(): string {
    return join(this.dir, "data");
  }

  /** The pid of `up` itself (undefined before start and after stop). */
  get pid(): number | undefined {
    return this.child?.pid;
  }

  get grpcAddr(): string {
    return `127.0.0.1:${this.grpcPort}`;
  }

  get httpUrl(): string {
    return `http://127.0.0.1:${this.httpPort}`;
  }

  async start(opts: ShoalUpOptions): Promise<void> {
    [this.grpcPort, this.natsPort, this.httpPort] = [await freePort(), opts.natsPort ?? (await freePort()), await freePort()];
    this.keepDataDir = opts.keepDataDir ?? false;
    const args = [CLI, "up", "--grpc-port", String(this.grpcPort), "--nats-port", String(this.natsPort), "--http-port", String(this.httpPort), "--metrics-port", "0", "--data-dir", this.dataDir, "--log-format", "json", ...opts.args];
    const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe"], cwd: ROOT, env: opts.env });
    this.child = child;
    child.stdout!.on("data", (d) => (this.stdout += d));
    child.stderr!.on("data", (d) => (this.stderr += d));
    this.exited = new Promise((r) => child.once("exit", (code) => r(code)));
    const deadline = Date.now() + (opts.readyTimeoutMs ?? 120_000);
    while (!this.stdout.includes("Shoal is up")) {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`shoal up exited early (${child.exitCode ?? child.signalCode}):\n${this.stderr.slice(-3000)}`);
      if (Date.now() > deadline) throw new Error(`shoal up not ready after ${opts.readyTimeoutMs ?? 120_000} ms:\n${this.stderr.slice(-3000)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    this.children = childrenOf(child.pid!);
  }

  /**
   * SIGTERM, then waits up to `timeoutMs` for `up` to exit. Returns its exit code (null when it
   * had to be killed) and the children still running then; whatever is left is then killed by
   * pid and the data dir removed, so a failed check leaves nothing behind. Idempotent.
   */
  async stop(timeoutMs = 60_000): Promise<{ code: number | null; survivors: number[]; timedOut: boolean }> {
    const child = this.child;
    this.child = undefined;
    if (!child) return { code: null, survivors: [], timedOut: false };
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      this.exited.then(() => false),
      new Promise<boolean>((r) => (timer = setTimeout(() => r(true), timeoutMs))),
    ]);
    clearTimeout(timer);
    if (timedOut) {
      child.kill("SIGKILL");
      await this.exited;
    }
    const survivors = this.children.filter(alive);
    for (const pid of survivors) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        /* gone meanwhile */
      }
    }
    if (!this.keepDataDir) rmSync(this.dir, { recursive: true, force: true });
    return { code: timedOut ? null : child.exitCode, survivors, timedOut };
  }
}
