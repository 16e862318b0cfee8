// `shoal up`: the embedded default. Starts nats-server with JetStream (store under the data dir),
// one coordinator and N workers as child processes, prints where they serve, and on
// SIGINT/SIGTERM stops them all in order (workers drain first), leaving nothing behind.

import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { connect as tcpConnect } from "node:net";
import { delimiter, join, resolve } from "node:path";
import { credentials } from "@grpc/grpc-js";
import { HealthClient, HealthCheckResponse_ServingStatus } from "../proto/gen/grpc/health/v1/health.js";
import { FleetServiceClient, WorkerState } from "../proto/gen/shoal/v1/shoal.js";
import { ConfigError } from "../shared/errors.js";
import type { Logger } from "../shared/logger.js";
import { parseIntOption } from "../shared/units.js";
import { waitForJetStreamCluster } from "./nats-cluster-ready.js";
import {
  DEFAULT_NATS_CLUSTER_PORT,
  formatVersion,
  natsClusterConfig,
  natsClusterNodes,
  natsClusterUrls,
  natsServerConfig,
  natsServerVersion,
  parseFsyncInterval,
  parseFsyncMode,
  parseNatsClusterSize,
  type NatsStorageOptions,
} from "./nats-config.js";

export interface UpOptions {
  workers: number;
  grpcPort: number;
  metricsPort: number;
  /** Port of the HTTP gateway; 0 = none. */
  httpPort: number;
  dataDir: string;
  /** An existing NATS; when absent, up starts its own. */
  natsUrl: string | undefined;
  natsPort: number;
  /** nats-server's HTTP monitoring port (/varz, /jsz); 0 = off. */
  natsMonitorPort: number;
  /** Servers of the embedded NATS: 1, or a local JetStream cluster of 3 or more (--nats-cluster). */
  natsCluster: number;
  /** First route port of the local cluster; node i listens on it + i. */
  natsClusterPort: number;
  /** Durability of the embedded nats-server's JetStream store. */
  storage: NatsStorageOptions;
  /** Flags passed through to every worker / the coordinator. */
  workerArgs: string[];
  coordinatorArgs: string[];
  commonArgs: string[];
}

/** Finds nats-server: $SHOAL_NATS_SERVER, then PATH, then /usr/sbin. */
export function findNatsServer(env: NodeJS.ProcessEnv = process.env, systemDirs = ["/usr/sbin", "/usr/local/sbin"]): string {
  const explicit = env.SHOAL_NATS_SERVER;
  if (explicit) {
    if (!existsSync(explicit)) throw new ConfigError("SHOAL_NATS_SERVER", `${explicit} does not exist`);
    return explicit;
  }
  for (const dir of [...(env.PATH ?? "").split(delimiter), ...systemDirs]) {
    if (dir && existsSync(join(dir, "nats-server"))) return join(dir, "nats-server");
  }
  throw new ConfigError(
    "nats-server",
    "not found on PATH, in /usr/sbin or in $SHOAL_NATS_SERVER. Install it (Debian/Ubuntu: sudo apt-get install nats-server), point SHOAL_NATS_SERVER at the binary, or pass --nats URL of a running server.",
  );
}

function waitForPort(port: number, host: string, child: ChildProcess, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolvePromise, reject) => {
    const attempt = () => {
      if (child.exitCode !== null) return reject(new Error(`exited with code ${child.exitCode} before listening on ${port}`));
      const sock = tcpConnect({ port, host }, () => {
        sock.destroy();
        resolvePromise();
      });
      sock.on("error", () => {
        sock.destroy();
        if (Date.now() > deadline) reject(new Error(`nothing listening on ${host}:${port} after ${timeoutMs} ms`));
        else setTimeout(attempt, 100);
      });
    };
    attempt();
  });
}

async function poll(what: string, timeoutMs: number, check: () => Promise<boolean>, children: ChildProcess[]): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const dead = children.find((c) => c.exitCode !== null);
    if (dead) throw new Error(`${what}: a child process exited with code ${dead.exitCode}; see its log above`);
    if (await check().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`${what}: not ready after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

export class Fleet {
  private readonly children: { name: string; child: ChildProcess }[] = [];
  private stopping: Promise<void> | undefined;

  constructor(
    private readonly opts: UpOptions,
    private readonly log: Logger,
  ) {}

  private spawnChild(name: string, cmd: string, args: string[], env: Record<string, string> = {}): ChildProcess {
    const child = spawn(cmd, args, {
      stdio: ["ignore", "inherit", "inherit"],
      env: { ...process.env, ...env, SHOAL_PARENT_PID: String(process.pid) },
    });
    child.on("exit", (code, signal) => {
      if (!this.stopping) this.log.error({ child: name, code, signal }, "child process exited unexpectedly");
    });
    this.children.push({ name, child });
    this.log.debug({ child: name, pid: child.pid }, "started");
    return child;
  }

  async start(): Promise<{ natsUrl: string; grpcAddr: string; httpUrl: string | undefined; workerMetricsPorts: number[]; durability: string | undefined }> {
    const o = this.opts;
    const dataDir = resolve(o.dataDir);
    mkdirSync(dataDir, { recursive: true });
    let natsUrl = o.natsUrl;
    let durability: string | undefined;
    // On a cluster every stream is kept on three servers, so one can die without losing anything.
    const replicas = !natsUrl && o.natsCluster >= 3 ? ["--replicas", "3"] : [];
    if (!natsUrl && o.natsCluster >= 3) {
      ({ natsUrl, durability } = await this.startNatsCluster(dataDir));
    } else if (!natsUrl) {
      const bin = findNatsServer();
      const version = natsServerVersion(bin);
      const config = natsServerConfig(o.storage, version, bin);
      for (const note of config.notes) this.log.info({ natsServer: bin, version: formatVersion(version), fsync: o.storage.fsync }, note);
      const conf = join(dataDir, "nats-server.conf");
      writeFileSync(conf, config.text);
      durability = config.summary;
      const monitor = o.natsMonitorPort > 0 ? ["-m", String(o.natsMonitorPort)] : [];
      const nats = this.spawnChild("nats-server", bin, ["-js", "-sd", join(dataDir, "jetstream"), "-a", "127.0.0.1", "-p", String(o.natsPort), ...monitor, "-c", conf]);
      await waitForPort(o.natsPort, "127.0.0.1", nats, 15_000);
      natsUrl = `nats://127.0.0.1:${o.natsPort}`;
    }
    const self = process.argv[1]!;
    const coordinator = this.spawnChild("coordinator", process.execPath, [
      self, "coordinator", "--nats", natsUrl, "--grpc-port", String(o.grpcPort), "--metrics-port", String(o.metricsPort), ...replicas, ...o.commonArgs, ...o.coordinatorArgs,
    ]);
    const workerMetricsPorts: number[] = [];
    for (let i = 1; i <= o.workers; i++) {
      const mport = o.metricsPort === 0 ? 0 : o.metricsPort + i;
      workerMetricsPorts.push(mport);
      this.spawnChild(`worker w${i}`, process.execPath, [
        self, "worker", "--nats", natsUrl, "--id", `w${i}`, "--metrics-port", String(mport), ...replicas, ...o.commonArgs, ...o.workerArgs,
      ]);
    }
    const grpcAddr = `127.0.0.1:${o.grpcPort}`;
    const children = this.children.map((c) => c.child);
    const health = new HealthClient(grpcAddr, credentials.createInsecure());
    const fleet = new FleetServiceClient(grpcAddr, credentials.createInsecure());
    try {
      await waitForPort(o.grpcPort, "127.0.0.1", coordinator, 60_000);
      await poll("coordinator", 30_000, () =>
        new Promise((res) => health.check({ service: "" }, (err, r) => res(!err && r.status === HealthCheckResponse_ServingStatus.SERVING))),
      children);
      await poll(`${o.workers} workers`, 120_000, () =>
        new Promise((res) => fleet.listWorkers({}, (err, r) => res(!err && r.workers.filter((w) => w.state === WorkerState.WORKER_STATE_READY).length >= o.workers))),
      children);
    } finally {
      health.close();
      fleet.close();
    }
    let httpUrl: string | undefined;
    if (o.httpPort > 0) {
      // The image URLs' signing key lives in the data dir, so URLs survive a restart of up;
      // one given in SHOAL_URL_SIGNING_KEY wins.
      const env: Record<string, string> = process.env.SHOAL_URL_SIGNING_KEY ? {} : { SHOAL_URL_SIGNING_KEY: gatewaySigningKey(dataDir) };
      const gateway = this.spawnChild("gateway", process.execPath, [
        self, "gateway", "--addr", grpcAddr, "--http-port", String(o.httpPort), ...o.commonArgs,
      ], env);
      await waitForPort(o.httpPort, "127.0.0.1", gateway, 30_000).catch((err: unknown) => {
        throw new Error(`HTTP gateway on port ${o.httpPort}: ${err instanceof Error ? err.message : String(err)} (is the port taken? --http-port picks another, 0 starts none)`);
      });
      httpUrl = `http://127.0.0.1:${o.httpPort}`;
    }
    return { natsUrl, grpcAddr, httpUrl, workerMetricsPorts, durability };
  }

  /**
   * `--nats-cluster N`: N nats-servers, each with its own store under <data-dir>/jetstream/<name>,
   * joined by routes on loopback. Resolves once the JetStream cluster can place a stream of 3
   * replicas, so the coordinator's first writes do not meet a cluster still electing its leader.
   */
  private async startNatsCluster(dataDir: string): Promise<{ natsUrl: string; durability: string }> {
    const o = this.opts;
    const bin = findNatsServer();
    const version = natsServerVersion(bin);
    const base = natsServerConfig(o.storage, version, bin);
    for (const note of base.notes) this.log.info({ natsServer: bin, version: formatVersion(version), fsync: o.storage.fsync }, note);
    const nodes = natsClusterNodes(o.natsCluster, o.natsPort, o.natsClusterPort, o.natsMonitorPort);
    const started = nodes.map((node) => {
      const conf = join(dataDir, `nats-server-${node.name}.conf`);
      writeFileSync(conf, base.text + natsClusterConfig(node, nodes));
      const monitor = node.monitorPort > 0 ? ["-m", String(node.monitorPort)] : [];
      const child = this.spawnChild(`nats-server ${node.name}`, bin, ["-js", "-sd", join(dataDir, "jetstream", node.name), "-a", "127.0.0.1", "-p", String(node.clientPort), ...monitor, "-c", conf]);
      return { node, child };
    });
    await Promise.all(started.map(({ node, child }) => waitForPort(node.clientPort, "127.0.0.1", child, 15_000)));
    const natsUrl = natsClusterUrls(nodes);
    await waitForJetStreamCluster(natsUrl, Math.min(3, nodes.length), 60_000, () => started.find((s) => s.child.exitCode !== null)?.node.name);
    return { natsUrl, durability: `${nodes.length}-node JetStream cluster, 3 replicas, ${base.summary}` };
  }

  /** The gateway first, then workers (they drain), then the coordinator, then nats-server; SIGKILL after grace. */
  stop(graceMs = 40_000): Promise<void> {
    return (this.stopping ??= (async () => {
      const order = [
        this.children.filter((c) => c.name === "gateway"),
        this.children.filter((c) => c.name.startsWith("worker")),
        this.children.filter((c) => c.name === "coordinator"),
        this.children.filter((c) => c.name.startsWith("nats-server")),
      ];
      for (const group of order) await Promise.all(group.map(({ name, child }) => stopChild(name, child, graceMs, this.log)));
    })());
  }
}

/** The gateway's URL signing key kept in the data dir (made once, readable by the owner only). */
function gatewaySigningKey(dataDir: string): string {
  const file = join(dataDir, "gateway-url-signing-key");
  if (existsSync(file)) {
    const key = readFileSync(file, "utf8").trim();
    if (key.length >= 32) return key;
  }
  const key = randomBytes(32).toString("hex");
  writeFileSync(file, key + "\n", { mode: 0o600 });
  return key;
}

function stopChild(name: string, child: ChildProcess, graceMs: number, log: Logger): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((res) => {
    const timer = setTimeout(() => {
      log.warn({ child: name, pid: child.pid }, "did not stop in time; killing");
      child.kill("SIGKILL");
    }, graceMs);
    child.once("exit", () => {
      clearTimeout(timer);
      res();
    });
    child.kill("SIGTERM");
  });
}

export function upOptionsFrom(raw: Record<string, unknown>, passthrough: { worker: string[]; coordinator: string[]; common: string[] }): UpOptions {
  // commander names the value of `--nats` (and SHOAL_NATS_URL) `nats`.
  const natsUrl = typeof raw.nats === "string" && raw.nats !== "" ? raw.nats : undefined;
  const storage: NatsStorageOptions = {
    fsync: parseFsyncMode(String(raw.fsync)),
    fsyncIntervalMs: parseFsyncInterval(String(raw.fsyncInterval)),
  };
  // `always` is a promise about acknowledged writes; with someone else's server up cannot keep it.
  if (natsUrl && storage.fsync === "always") {
    throw new ConfigError("--fsync", "applies to the nats-server that shoal up starts; with --nats, set `jetstream { sync_interval: always }` in that server's config");
  }
  const natsCluster = parseNatsClusterSize(String(raw.natsCluster ?? "1"));
  if (natsUrl && natsCluster > 1) throw new ConfigError("--nats-cluster", "starts a local cluster; with --nats, Shoal uses the servers given there");
  return {
    workers: parseIntOption("--workers", String(raw.workers), 1, 64),
    grpcPort: parseIntOption("--grpc-port", String(raw.grpcPort), 1, 65535),
    metricsPort: parseIntOption("--metrics-port", String(raw.metricsPort), 0, 65535),
    httpPort: parseIntOption("--http-port", String(raw.httpPort ?? "8080"), 0, 65535),
    dataDir: String(raw.dataDir),
    natsUrl,
    natsPort: parseIntOption("--nats-port", String(raw.natsPort), 1, 65535),
    natsMonitorPort: parseIntOption("--nats-monitor-port", String(raw.natsMonitorPort), 0, 65535),
    natsCluster,
    natsClusterPort: parseIntOption("--nats-cluster-port", String(raw.natsClusterPort ?? DEFAULT_NATS_CLUSTER_PORT), 1, 65535),
    storage,
    workerArgs: passthrough.worker,
    coordinatorArgs: passthrough.coordinator,
    commonArgs: passthrough.common,
  };
}
