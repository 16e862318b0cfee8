// A redis-server of the bench's own (for the BullMQ peer): its own port on loopback, its own
// temporary directory, registered with the bench's process list and killed by pid. A missing
// binary is an error with the way to get one, never a skipped case.

import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort, waitPort } from "../../test/harness/processes.js";
import { spawnTracked, stopProc, type BenchProc } from "./procs.js";

/** $SHOAL_REDIS_SERVER, then PATH, then /usr/bin (Debian's redis-server package). */
export function redisServerBinary(): string {
  const candidates = [process.env.SHOAL_REDIS_SERVER, ...(process.env.PATH ?? "").split(":").map((d) => join(d, "redis-server")), "/usr/bin/redis-server"];
  for (const c of candidates) if (c && existsSync(c)) return c;
  throw new Error(
    "redis-server not found (on PATH, in /usr/bin or in $SHOAL_REDIS_SERVER): the peer case runs BullMQ on it. " +
      "Run ./scripts/setup.sh (installs Debian's redis-server with apt-get) or set SHOAL_REDIS_SERVER to a redis-server binary.",
  );
}

export interface RedisServer {
  proc: BenchProc;
  port: number;
  dir: string;
  version: string;
  /** The persistence settings it was started with, as redis.conf directives. */
  persistence: Record<string, string>;
  stop(): Promise<void>;
}

/**
 * Durability next to `shoal up`'s default (acknowledged writes survive a kill -9 of the server;
 * a power loss may lose the last moments): an append-only file, written before each reply goes
 * out and fsynced every second; no RDB snapshots (they would fork mid-measurement).
 */
export const REDIS_PERSISTENCE: Record<string, string> = { appendonly: "yes", appendfsync: "everysec", save: "" };

export async function startRedis(): Promise<RedisServer> {
  const bin = redisServerBinary();
  const version = /v=(\S+)/.exec(execFileSync(bin, ["--version"], { encoding: "utf8", timeout: 10_000 }))?.[1] ?? "unknown";
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "shoal-bench-redis-"));
  const args = ["--port", String(port), "--bind", "127.0.0.1", "--dir", dir, "--daemonize", "no", "--protected-mode", "no", "--logfile", ""];
  for (const [k, v] of Object.entries(REDIS_PERSISTENCE)) args.push(`--${k}`, v);
  const proc = spawnTracked("redis-server", bin, args);
  const stop = async () => {
    await stopProc(proc, "SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await waitPort(port, proc.child, 15_000);
  } catch (err) {
    await stop();
    throw new Error(`redis-server did not start: ${(err as Error).message}; last output:\n${proc.output.slice(-10).join("\n")}`);
  }
  return { proc, port, dir, version, persistence: REDIS_PERSISTENCE, stop };
}
