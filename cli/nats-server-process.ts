// The nats-server processes `shoal up` runs must not outlive it. Its Node children notice up's end
// through a pipe (cli/server-commands.ts); nats-server cannot, so it is started under
// `setpriv --pdeathsig TERM` (util-linux, on every Debian/Ubuntu), which asks the kernel to send
// it SIGTERM when up dies, even by `kill -9`. Where setpriv is missing, or a server was left by an
// older up, the pid file nats-server writes into the data dir names it, and the next `up` of that
// data dir stops it before starting its own (it holds the port and the store).

import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, rmSync } from "node:fs";
import { delimiter, join } from "node:path";
import type { Logger } from "../shared/logger.js";

/** How up starts nats-server: the command, and the args before nats-server's own. */
export interface Launcher {
  cmd: string;
  prefix: string[];
}

let cachedSetpriv: string | null | undefined;

/** The setpriv binary when it supports --pdeathsig (util-linux 2.33+), else null. */
export function findSetpriv(env: NodeJS.ProcessEnv = process.env): string | null {
  if (cachedSetpriv !== undefined && env === process.env) return cachedSetpriv;
  let found: string | null = null;
  for (const dir of [...(env.PATH ?? "").split(delimiter), "/usr/bin", "/bin"]) {
    if (!dir) continue;
    const bin = join(dir, "setpriv");
    if (!existsSync(bin)) continue;
    const help = spawnSync(bin, ["--help"], { encoding: "utf8", timeout: 5000 });
    if (help.status === 0 && help.stdout.includes("--pdeathsig")) found = bin;
    break;
  }
  if (env === process.env) cachedSetpriv = found;
  return found;
}

/** nats-server run directly, or through setpriv so that it gets SIGTERM when up dies. */
export function natsServerLauncher(bin: string, setpriv: string | null = findSetpriv()): Launcher {
  return setpriv ? { cmd: setpriv, prefix: ["--pdeathsig", "TERM", "--", bin] } : { cmd: bin, prefix: [] };
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    // EPERM: alive, but someone else's.
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
  // A zombie answers signals until its parent reaps it, but it has ended.
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

function commandLine(pid: number): string[] {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").filter(Boolean);
  } catch {
    return [];
  }
}

/**
 * Stops the nats-server a previous `up` of this data dir left running, named by its pid file, when
 * that pid is still a nats-server started with this config file (a pid reused by another process
 * is left alone). Returns the pid it stopped, if any. SIGTERM, then SIGKILL after `graceMs`.
 */
export async function stopLeftoverNatsServer(pidFile: string, confFile: string, log: Logger, graceMs = 10_000): Promise<number | undefined> {
  if (!existsSync(pidFile)) return undefined;
  const pid = Number(readFileSync(pidFile, "utf8").trim());
  if (!Number.isInteger(pid) || pid <= 1 || pid === process.pid || !alive(pid)) {
    rmSync(pidFile, { force: true });
    return undefined;
  }
  const argv = commandLine(pid);
  const ours = argv.some((a) => a.endsWith("nats-server")) && argv.includes(confFile);
  if (!ours) {
    rmSync(pidFile, { force: true });
    return undefined;
  }
  log.warn({ pid, pidFile, conf: confFile }, "a nats-server left running by an earlier `shoal up` of this data dir (was up killed with -9?) holds its port and store: stopping it");
  try {
    process.kill(pid, "SIGTERM");
  } catch {
    return undefined;
  }
  const deadline = Date.now() + graceMs;
  while (alive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  if (alive(pid)) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      /* gone meanwhile */
    }
    const killDeadline = Date.now() + 5000;
    while (alive(pid) && Date.now() < killDeadline) await new Promise((r) => setTimeout(r, 50));
  }
  rmSync(pidFile, { force: true });
  return pid;
}
