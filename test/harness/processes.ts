// Real processes for integration tests: a nats-server with its own port and temp store, and
// coordinator/worker processes of the compiled CLI. Everything is killed by pid in stop().

import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, existsSync, writeFileSync } from "node:fs";
import { createServer, connect as tcpConnect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { credentials, Metadata } from "@grpc/grpc-js";
import { HealthCheckResponse_ServingStatus, HealthClient } from "../../proto/gen/grpc/health/v1/health.js";

export const ROOT = fileURLToPath(new URL("../../../", import.meta.url));
export const CLI = join(ROOT, "dist/cli/main.js");

export function natsServerBinary(): string {
  const candidates = [process.env.SHOAL_NATS_SERVER, ...(process.env.PATH ?? "").split(":").map((d) => join(d, "nats-server")), "/usr/sbin/nats-server"];
  for (const c of candidates) if (c && existsSync(c)) return c;
  throw new Error("nats-server not found: run ./scripts/setup.sh (installs it with apt-get)");
}

/**
 * A port free right now, for a process the test starts next to listen on. Picked at random below
 * the kernel's ephemeral range (32768+ on Linux): a port the kernel hands out for `listen(0)` is
 * also handed out as the local port of outgoing connections, so between this check and the
 * process's own bind another test's connection could take it (seen in CI: `shoal up`'s
 * coordinator failed with EADDRINUSE). Below the range only another test's pick can collide.
 */
export async function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 100; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    if (await canListen(port)) return port;
  }
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once("error", () => resolve(false));
    srv.listen(port, "127.0.0.1", () => srv.close(() => resolve(true)));
  });
}

/** Polls gRPC health until SERVING; fails when the process exits or the deadline passes. */
export async function waitServing(addr: string, child: ChildProcess, timeoutMs: number): Promise<void> {
  const health = new HealthClient(addr, credentials.createInsecure());
  const deadline = Date.now() + timeoutMs;
  let last = "no answer";
  try {
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`coordinator exited (${child.exitCode ?? child.signalCode}) before it served`);
      const status = await new Promise<string>((resolve) =>
        health.check({ service: "" }, new Metadata(), { deadline: Date.now() + 2000 }, (err, res) =>
          resolve(err ? err.message : res!.status === HealthCheckResponse_ServingStatus.SERVING ? "SERVING" : String(res!.status)),
        ),
      );
      if (status === "SERVING") return;
      last = status;
      if (Date.now() > deadline) throw new Error(`coordinator at ${addr} not SERVING after ${timeoutMs} ms (last: ${last})`);
      await new Promise((r) => setTimeout(r, 100));
    }
  } finally {
    health.close();
  }
}

export function waitPort(port: number, child: ChildProcess, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const attempt = () => {
      if (child.exitCode !== null) return reject(new Error(`process exited (${child.exitCode}) before listening on ${port}`));
      const s = tcpConnect({ port, host: "127.0.0.1" }, () => (s.destroy(), resolve()));
      s.on("error", () => {
        s.destroy();
        if (Date.now() > deadline) reject(new Error(`port ${port} not open after ${timeoutMs} ms`));
        else setTimeout(attempt, 50);
      });
    };
    attempt();
  });
}

export interface Proc {
  name: string;
  child: ChildProcess;
  pid: number;
  /** Every log line (stderr, JSON) parsed. */
  logs: Record<string, unknown>[];
  output: string[];
  exited: Promise<number | null>;
}

/** Collects a child's output (and its JSON log lines) as a Proc. */
export function trackProcess(name: string, child: ChildProcess): Proc {
  const logs: Record<string, unknown>[] = [];
  const output: string[] = [];
  let buf = "";
  const onData = (d: Buffer) => {
    buf += d.toString();
    let nl: number;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      output.push(line);
      if (output.length > 5000) output.shift();
      if (line.startsWith("{")) {
        try {
          logs.push(JSON.parse(line));
        } catch {
          /* not JSON */
        }
      }
      if (process.env.SHOAL_TEST_VERBOSE) process.stderr.write(`[${name}] ${line}\n`);
    }
  };
  child.stdout?.on("data", onData);
  child.stderr?.on("data", onData);
  const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
  return { name, child, pid: child.pid!, logs, output, exited };
}

export class Stack {
  readonly dir = mkdtempSync(join(tmpdir(), "shoal-test-"));
  natsPort = 0;
  /** nats-server's HTTP monitoring port (/connz, /jsz). */
  natsMonitorPort = 0;
  natsUrl = "";
  nats: Proc | undefined;
  readonly procs: Proc[] = [];
  grpcAddr = "";
  coordinator: Proc | undefined;
  /** Extra node flags for the coordinator and worker processes (e.g. --cpu-prof in benchmarks). */
  coordinatorNodeArgs: string[] = [];
  workerNodeArgs: string[] = [];
  /** The nats-server config file (the fsync bench swaps in what `shoal up --fsync` writes). */
  natsConfig = "max_payload: 8MB\n";

  /**
   * Starts nats-server (again, on the same port and store, after a kill). `extraConfig` is
   * appended to its config file, e.g. `jetstream { max_file_store: 1MB }` for a small store;
   * a key given there overrides the default above it.
   */
  async startNats(extraConfig = ""): Promise<void> {
    this.natsPort = this.natsPort || (await freePort());
    this.natsMonitorPort = this.natsMonitorPort || (await freePort());
    this.natsUrl = `nats://127.0.0.1:${this.natsPort}`;
    const conf = join(this.dir, "nats.conf");
    writeFileSync(conf, `${this.natsConfig}${extraConfig}\n`);
    const child = spawn(natsServerBinary(), ["-js", "-sd", join(this.dir, "js"), "-a", "127.0.0.1", "-p", String(this.natsPort), "-m", String(this.natsMonitorPort), "-c", conf], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.nats = trackProcess("nats", child);
    this.procs.push(this.nats);
    await waitPort(this.natsPort, child);
  }

  /**
   * Starts the coordinator; resolves once its gRPC port is open and (unless `waitActive` is
   * false, for a coordinator meant to stay standby) its health says SERVING: after a kill -9 of
   * the previous one, a restarted coordinator is standby until the old lease runs out and then
   * recovers before it serves.
   */
  async startCoordinator(args: string[] = [], grpcPort?: number, opts: { waitActive?: boolean; env?: Record<string, string> } = {}): Promise<Proc> {
    const port = grpcPort ?? (this.grpcAddr ? Number(this.grpcAddr.split(":")[1]) : await freePort());
    const child = spawn(process.execPath, [...this.coordinatorNodeArgs, CLI, "coordinator", "--nats", this.natsUrl, "--grpc-port", String(port), "--grpc-host", "127.0.0.1", "--metrics-port", "0", "--log-format", "json", "--heartbeat-timeout", "1500ms", ...args], {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, SHOAL_LOG_LEVEL: process.env.SHOAL_TEST_LOG_LEVEL ?? "info", ...opts.env },
    });
    const p = trackProcess("coordinator", child);
    this.procs.push(p);
    this.coordinator = p;
    await waitPort(port, child, 30_000);
    this.grpcAddr = `127.0.0.1:${port}`;
    // A TLS server cannot be asked in plaintext; its tests wait on their own TLS clients.
    if (opts.waitActive !== false && !args.includes("--tls-cert")) await waitServing(this.grpcAddr, child, 30_000);
    return p;
  }

  async startWorker(id: string, args: string[] = [], env: Record<string, string> = {}): Promise<Proc> {
    const child = spawn(process.execPath, [...this.workerNodeArgs, CLI, "worker", "--nats", this.natsUrl, "--id", id, "--gpu", "none", "--metrics-port", "0", "--log-format", "json", "--heartbeat-interval", "250ms", ...args], {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, SHOAL_LOG_LEVEL: process.env.SHOAL_TEST_LOG_LEVEL ?? "info", ...env },
    });
    const p = trackProcess(`worker ${id}`, child);
    this.procs.push(p);
    return p;
  }

  /**
   * Starts an HTTP gateway in front of this stack's coordinator on a free port; resolves with
   * its base URL once the port is open. Several may run at once.
   */
  async startGateway(args: string[] = [], env: Record<string, string> = {}): Promise<{ proc: Proc; url: string }> {
    const port = await freePort();
    const child = spawn(process.execPath, [CLI, "gateway", "--addr", this.grpcAddr, "--http-host", "127.0.0.1", "--http-port", String(port), "--log-format", "json", ...args], {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, SHOAL_LOG_LEVEL: process.env.SHOAL_TEST_LOG_LEVEL ?? "info", ...env },
    });
    const p = trackProcess("gateway", child);
    this.procs.push(p);
    await waitPort(port, child, 30_000);
    return { proc: p, url: `http://127.0.0.1:${port}` };
  }

  /** Runs the CLI to completion; killed (code null) after `timeoutMs`. */
  cli(args: string[], env: Record<string, string> = {}, timeoutMs = 120_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
    return new Promise((resolve) => {
      const child = spawn(process.execPath, [CLI, ...args], {
        stdio: ["ignore", "pipe", "pipe"],
        env: { ...process.env, SHOAL_ADDR: this.grpcAddr, ...env },
        timeout: timeoutMs,
        killSignal: "SIGKILL",
      });
      let stdout = "";
      let stderr = "";
      child.stdout.on("data", (d) => (stdout += d));
      child.stderr.on("data", (d) => (stderr += d));
      child.on("exit", (code) => resolve({ code, stdout, stderr }));
    });
  }

  async kill(p: Proc, signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    if (p.child.exitCode !== null || p.child.signalCode !== null) return;
    try {
      process.kill(p.pid, signal);
    } catch {
      /* already gone */
    }
    await p.exited;
  }

  async stop(): Promise<void> {
    for (const p of [...this.procs].reverse()) {
      if (p.child.exitCode === null && p.child.signalCode === null) {
        try {
          process.kill(p.pid, "SIGKILL");
        } catch {
          /* gone */
        }
        await p.exited;
      }
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}
