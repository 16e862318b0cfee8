// `shoal up`: the embedded default. Starts nats-server with JetStream (store under the data dir),
// one coordinator and N workers as child processes, prints where they serve, and on
// SIGINT/SIGTERM stops them all in order (workers drain first), leaving nothing behind.

import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { connect as tcpConnect } from "node:net";
import { delimiter, join, resolve } from "node:path";
import { Metadata } from "@grpc/grpc-js";
import { isIP } from "node:net";
import { channelCredentials, clientTlsPaths, loadClientTls } from "./client-tls.js";
import { HealthClient, HealthCheckResponse_ServingStatus } from "../proto/gen/grpc/health/v1/health.js";
import { FleetServiceClient, WorkerState } from "../proto/gen/shoal/v1/shoal.js";
import { ConfigError, errorMessage } from "../shared/errors.js";
import type { Logger } from "../shared/logger.js";
import { natsSecurityFrom } from "../shared/nats-security.js";
import { parseIntOption } from "../shared/units.js";
import { fleetIdentities, natsAuthorizationConfig, type FleetIdentities, type NatsUser } from "./nats-auth.js";
import { waitForJetStreamCluster } from "./nats-cluster-ready.js";
import { natsServerLauncher, stopLeftoverNatsServer } from "./nats-server-process.js";
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
  /** The coordinator's gRPC listen address (loopback unless asked otherwise). */
  grpcHost: string;
  grpcPort: number;
  /** --api-keys / --api-keys-file for the coordinator; passed by env so keys stay out of `ps`. */
  apiKeys: string | undefined;
  apiKeysFile: string | undefined;
  /** --tls-cert, --tls-key, --tls-client-ca for the coordinator (paths). */
  tls: { cert?: string; key?: string; clientCa?: string };
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
  /** With --nats: the NATS identity/TLS settings for the children, as env vars (SHOAL_NATS_*). */
  natsSecurityEnv: Record<string, string>;
}

/** How many times `up --nats-cluster` starts its servers before it gives up on the cluster forming. */
const CLUSTER_FORM_ATTEMPTS = 3;

/** Every env var of the NATS identity flags: cleared for children that get an identity from up. */
export const NATS_SECURITY_ENV = {
  natsCreds: "SHOAL_NATS_CREDS",
  natsNkey: "SHOAL_NATS_NKEY",
  natsUser: "SHOAL_NATS_USER",
  natsPassword: "SHOAL_NATS_PASSWORD",
  natsToken: "SHOAL_NATS_TOKEN",
  natsTlsCa: "SHOAL_NATS_TLS_CA",
  natsTlsCert: "SHOAL_NATS_TLS_CERT",
  natsTlsKey: "SHOAL_NATS_TLS_KEY",
} as const;

/** A child's NATS identity as env vars: its own user, and none of the parent's other settings. */
function identityEnv(u: NatsUser): Record<string, string> {
  const env: Record<string, string> = {};
  for (const name of Object.values(NATS_SECURITY_ENV)) env[name] = "";
  return { ...env, SHOAL_NATS_USER: u.user, SHOAL_NATS_PASSWORD: u.password };
}

/** The tenant name of the key `shoal up` makes for its own readiness poll. */
export const UP_TENANT = "shoal-up";

/**
 * Where the coordinator listens, as people should read it, and where up (and the gateway it
 * starts) connect: a wildcard address is reached through loopback.
 */
export function listenAddress(host: string, port: number): { shown: string; connect: string; connectHost: string } {
  const h = host.replace(/^\[|\]$/g, "");
  const wildcard = h === "0.0.0.0" || h === "::" || h === "";
  const connectHost = wildcard ? "127.0.0.1" : h;
  const fmt = (x: string) => (isIP(x) === 6 ? `[${x}]:${port}` : `${x}:${port}`);
  return { shown: wildcard ? `${fmt(h || "0.0.0.0")} (every interface)` : fmt(h), connect: fmt(connectHost), connectHost };
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

/** Whether something already accepts connections on host:port (a port up is about to give a server). */
function portAnswers(port: number, host: string): Promise<boolean> {
  return new Promise((resolvePromise) => {
    const sock = tcpConnect({ port, host }, () => {
      sock.destroy();
      resolvePromise(true);
    });
    sock.on("error", () => {
      sock.destroy();
      resolvePromise(false);
    });
  });
}

/**
 * Starts nats-server on its pid file, after stopping one an earlier up of this data dir left
 * (cli/nats-server-process.ts), and refuses a port another process holds: a server answering
 * there would pass the readiness check while ours failed to bind.
 */
async function checkNatsPortFree(port: number, pidFile: string, conf: string, log: Logger): Promise<void> {
  await stopLeftoverNatsServer(pidFile, conf, log);
  if (await portAnswers(port, "127.0.0.1")) {
    throw new ConfigError("--nats-port", `127.0.0.1:${port} is already in use by another process; stop it, or pick another port (--nats-port, SHOAL_NATS_PORT), or give --nats to use a running nats-server`);
  }
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
    // Shoal's own children get a pipe as stdin that up never writes: the kernel closes it when up
    // exits, however it dies, and the child's watchParent (cli/server-commands.ts) sees the EOF
    // without polling. nats-server keeps no stdin.
    const shoalChild = cmd === process.execPath;
    const child = spawn(cmd, args, {
      stdio: [shoalChild ? "pipe" : "ignore", "inherit", "inherit"],
      env: { ...process.env, ...env, SHOAL_PARENT_PID: String(process.pid), ...(shoalChild ? { SHOAL_PARENT_PIPE: "stdin" } : {}) },
    });
    child.on("exit", (code, signal) => {
      // A child stopped on purpose (stopChild) has left the list first.
      if (!this.stopping && this.children.some((c) => c.child === child)) this.log.error({ child: name, code, signal }, "child process exited unexpectedly");
    });
    this.children.push({ name, child });
    this.log.debug({ child: name, pid: child.pid }, "started");
    return child;
  }

  /** Stops one child on purpose (SIGTERM, then SIGKILL after 10 s) and forgets it. */
  private async stopChild(child: ChildProcess): Promise<void> {
    const i = this.children.findIndex((c) => c.child === child);
    if (i >= 0) this.children.splice(i, 1);
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((r) => child.once("exit", () => r()));
    child.kill("SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
    await exited;
    clearTimeout(timer);
  }

  async start(): Promise<{ natsUrl: string; grpcAddr: string; grpcListen: string; httpUrl: string | undefined; workerMetricsPorts: number[]; durability: string | undefined }> {
    const o = this.opts;
    const dataDir = resolve(o.dataDir);
    mkdirSync(dataDir, { recursive: true });
    let natsUrl = o.natsUrl;
    let durability: string | undefined;
    const workerIds = Array.from({ length: o.workers }, (_, i) => `w${i + 1}`);
    // Our own server gets users per role (cli/nats-auth.ts); someone else's, the settings given.
    let identities: FleetIdentities | undefined;
    // On a cluster every stream is kept on three servers, so one can die without losing anything.
    const replicas = !natsUrl && o.natsCluster >= 3 ? ["--replicas", "3"] : [];
    if (!natsUrl && o.natsCluster >= 3) {
      identities = fleetIdentities(dataDir, workerIds);
      ({ natsUrl, durability } = await this.startNatsCluster(dataDir, identities));
    } else if (!natsUrl) {
      const bin = findNatsServer();
      const version = natsServerVersion(bin);
      const config = natsServerConfig(o.storage, version, bin);
      for (const note of config.notes) this.log.info({ natsServer: bin, version: formatVersion(version), fsync: o.storage.fsync }, note);
      identities = fleetIdentities(dataDir, workerIds);
      const conf = join(dataDir, "nats-server.conf");
      // It holds the passwords: readable by the owner only.
      writeFileSync(conf, config.text + natsAuthorizationConfig(process.env.SHOAL_PREFIX || "shoal", identities), { mode: 0o600 });
      chmodSync(conf, 0o600);
      this.log.info({ identities: join(dataDir, "nats-identities.json"), users: 1 + workerIds.length }, "nats-server requires a user per role (coordinator, each worker); anonymous connections are refused");
      durability = config.summary;
      const monitor = o.natsMonitorPort > 0 ? ["-m", String(o.natsMonitorPort)] : [];
      const pidFile = join(dataDir, "nats-server.pid");
      await checkNatsPortFree(o.natsPort, pidFile, conf, this.log);
      const run = natsServerLauncher(bin);
      const nats = this.spawnChild("nats-server", run.cmd, [...run.prefix, "-js", "-sd", join(dataDir, "jetstream"), "-a", "127.0.0.1", "-p", String(o.natsPort), ...monitor, "-c", conf, "-P", pidFile]);
      await waitForPort(o.natsPort, "127.0.0.1", nats, 15_000);
      natsUrl = `nats://127.0.0.1:${o.natsPort}`;
    }
    const self = process.argv[1]!;
    // With keys configured, up needs one of its own for its readiness poll (ListWorkers): a
    // random tenant key that lives only in this process and the coordinator's environment.
    const keysOn = (o.apiKeys ?? "").trim() !== "" || o.apiKeysFile !== undefined;
    const upKey = keysOn ? randomBytes(24).toString("hex") : undefined;
    const coordinatorEnv: Record<string, string> = {};
    if (keysOn) {
      coordinatorEnv.SHOAL_API_KEYS = [o.apiKeys?.trim(), `${UP_TENANT}:${upKey}`].filter(Boolean).join(",");
      if (o.apiKeysFile) coordinatorEnv.SHOAL_API_KEYS_FILE = o.apiKeysFile;
    }
    const tlsArgs = [
      ...(o.tls.cert ? ["--tls-cert", o.tls.cert] : []),
      ...(o.tls.key ? ["--tls-key", o.tls.key] : []),
      ...(o.tls.clientCa ? ["--tls-client-ca", o.tls.clientCa] : []),
    ];
    const coordinator = this.spawnChild("coordinator", process.execPath, [
      self, "coordinator", "--nats", natsUrl, "--grpc-host", o.grpcHost, "--grpc-port", String(o.grpcPort), "--metrics-port", String(o.metricsPort), ...tlsArgs, ...replicas, ...o.commonArgs, ...o.coordinatorArgs,
    ], { ...(identities ? identityEnv(identities.coordinator) : o.natsSecurityEnv), ...coordinatorEnv });
    const workerMetricsPorts: number[] = [];
    for (let i = 1; i <= o.workers; i++) {
      const mport = o.metricsPort === 0 ? 0 : o.metricsPort + i;
      workerMetricsPorts.push(mport);
      this.spawnChild(`worker w${i}`, process.execPath, [
        self, "worker", "--nats", natsUrl, "--id", `w${i}`, "--metrics-port", String(mport), ...replicas, ...o.commonArgs, ...o.workerArgs,
      ], identities ? identityEnv(identities.workers[`w${i}`]!) : o.natsSecurityEnv);
    }
    const listen = listenAddress(o.grpcHost, o.grpcPort);
    const grpcAddr = listen.connect;
    const children = this.children.map((c) => c.child);
    const creds = channelCredentials(loadClientTls(clientTlsPaths()));
    const health = new HealthClient(grpcAddr, creds);
    const fleet = new FleetServiceClient(grpcAddr, creds);
    const md = new Metadata();
    if (upKey) md.set("authorization", `Bearer ${upKey}`);
    try {
      await waitForPort(o.grpcPort, listen.connectHost, coordinator, 60_000);
      await poll("coordinator", 30_000, () =>
        new Promise((res) => health.check({ service: "" }, (err, r) => res(!err && r.status === HealthCheckResponse_ServingStatus.SERVING))),
      children);
      await poll(`${o.workers} workers`, 120_000, () =>
        new Promise((res) => fleet.listWorkers({}, md, (err, r) => res(!err && r.workers.filter((w) => w.state === WorkerState.WORKER_STATE_READY).length >= o.workers))),
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
    return { natsUrl, grpcAddr, grpcListen: listen.shown, httpUrl, workerMetricsPorts, durability };
  }

  /** Passes SIGHUP on to the coordinator, which reads its API keys again. */
  reloadKeys(): void {
    const c = this.children.find((x) => x.name === "coordinator")?.child;
    if (c && c.exitCode === null) c.kill("SIGHUP");
  }

  /**
   * `--nats-cluster N`: N nats-servers, each with its own store under <data-dir>/jetstream/<name>,
   * joined by routes on loopback. Resolves once the JetStream cluster can place a stream of 3
   * replicas, so the coordinator's first writes do not meet a cluster still electing its leader.
   */
  private async startNatsCluster(dataDir: string, identities: FleetIdentities): Promise<{ natsUrl: string; durability: string }> {
    const o = this.opts;
    const bin = findNatsServer();
    const version = natsServerVersion(bin);
    const base = natsServerConfig(o.storage, version, bin);
    for (const note of base.notes) this.log.info({ natsServer: bin, version: formatVersion(version), fsync: o.storage.fsync }, note);
    const nodes = natsClusterNodes(o.natsCluster, o.natsPort, o.natsClusterPort, o.natsMonitorPort);
    const natsUrl = natsClusterUrls(nodes);
    // One at a time, each listening before the next starts: servers dialling each other at the
    // same moment are what races their routes (below).
    const startNodes = async () => {
      const started: { node: (typeof nodes)[number]; child: ChildProcess }[] = [];
      for (const node of nodes) {
        const conf = join(dataDir, `nats-server-${node.name}.conf`);
        // Each node holds the passwords (the same users on every node): readable by the owner only.
        writeFileSync(conf, base.text + natsClusterConfig(node, nodes) + natsAuthorizationConfig(process.env.SHOAL_PREFIX || "shoal", identities), { mode: 0o600 });
        chmodSync(conf, 0o600);
        const monitor = node.monitorPort > 0 ? ["-m", String(node.monitorPort)] : [];
        const pidFile = join(dataDir, `nats-server-${node.name}.pid`);
        await checkNatsPortFree(node.clientPort, pidFile, conf, this.log);
        const run = natsServerLauncher(bin);
        const child = this.spawnChild(`nats-server ${node.name}`, run.cmd, [...run.prefix, "-js", "-sd", join(dataDir, "jetstream", node.name), "-a", "127.0.0.1", "-p", String(node.clientPort), ...monitor, "-c", conf, "-P", pidFile]);
        started.push({ node, child });
        await waitForPort(node.clientPort, "127.0.0.1", child, 15_000);
      }
      return started;
    };
    let started = await startNodes();
    // nats-server 2.10 now and then leaves one server of a freshly formed cluster out of the
    // JetStream meta group for good ("no suitable peers for placement" until it restarts; see
    // natsClusterConfig). Starting the servers again on their stores brings it in, so a cluster
    // that has not formed in 20 s is restarted, twice at most, before `up` gives up.
    for (let attempt = 1; ; attempt++) {
      const last = attempt >= CLUSTER_FORM_ATTEMPTS;
      try {
        await waitForJetStreamCluster(natsUrl, Math.min(3, nodes.length), last ? 40_000 : 20_000, () => started.find((s) => s.child.exitCode !== null)?.node.name, identities.coordinator);
        break;
      } catch (err) {
        if (last || started.some((s) => s.child.exitCode !== null)) throw err;
        this.log.warn({ attempt, err: errorMessage(err) }, "the JetStream cluster did not form; starting its nats-servers again on their stores");
        await Promise.all(started.map(({ child }) => this.stopChild(child)));
        started = await startNodes();
      }
    }
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

/** The NATS identity flags given to `up --nats`, checked, as env vars for the children. */
function natsSecurityEnv(raw: Record<string, unknown>): Record<string, string> {
  natsSecurityFrom(raw);
  const env: Record<string, string> = {};
  for (const [key, name] of Object.entries(NATS_SECURITY_ENV)) if (typeof raw[key] === "string" && raw[key] !== "") env[name] = raw[key] as string;
  return env;
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
  const path = (v: unknown): string | undefined => (typeof v === "string" && v.trim() !== "" ? v.trim() : undefined);
  const tls = { cert: path(raw.tlsCert), key: path(raw.tlsKey), clientCa: path(raw.tlsClientCa) };
  // up checks the coordinator over the same TLS: without the CA it could not tell it is there.
  if (tls.cert && !process.env.SHOAL_CA) {
    throw new ConfigError("--tls-cert", "shoal up talks to its coordinator over TLS too: set SHOAL_CA to the CA that signed the certificate (and SHOAL_CERT, SHOAL_KEY with --tls-client-ca)");
  }
  if (tls.clientCa && (!process.env.SHOAL_CERT || !process.env.SHOAL_KEY)) {
    throw new ConfigError("--tls-client-ca", "with mTLS shoal up needs a client certificate for itself and its gateway: set SHOAL_CERT and SHOAL_KEY");
  }
  const natsCluster = parseNatsClusterSize(String(raw.natsCluster ?? "1"));
  if (natsUrl && natsCluster > 1) throw new ConfigError("--nats-cluster", "starts a local cluster; with --nats, Shoal uses the servers given there");
  return {
    workers: parseIntOption("--workers", String(raw.workers), 1, 64),
    grpcHost: path(raw.grpcHost) ?? "127.0.0.1",
    apiKeys: path(raw.apiKeys),
    apiKeysFile: path(raw.apiKeysFile),
    tls,
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
    natsSecurityEnv: natsUrl ? natsSecurityEnv(raw) : {},
    workerArgs: passthrough.worker,
    coordinatorArgs: passthrough.coordinator,
    commonArgs: passthrough.common,
  };
}
