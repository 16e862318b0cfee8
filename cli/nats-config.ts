// The config file `shoal up` writes for the nats-server it starts, and the version check that
// decides what that file may say. The durability knob lives here: JetStream's `sync_interval`,
// which only nats-server 2.10 and newer understand (2.9 exits with "unknown field").

import { execFileSync } from "node:child_process";
import { ConfigError, errorMessage } from "../shared/errors.js";
import { parseDuration } from "../shared/units.js";

export const FSYNC_MODES = ["always", "interval"] as const;
export type FsyncMode = (typeof FSYNC_MODES)[number];

export const DEFAULT_FSYNC: FsyncMode = "interval";
/** nats-server's own default: `shoal up` writes it explicitly so the README's table stays true if nats-server changes it. */
export const DEFAULT_FSYNC_INTERVAL = "2m";

/** The first nats-server release with `jetstream { sync_interval }`. */
export const SYNC_INTERVAL_SINCE: NatsVersion = { major: 2, minor: 10, patch: 0 };

export interface NatsVersion {
  major: number;
  minor: number;
  patch: number;
}

export interface NatsStorageOptions {
  fsync: FsyncMode;
  /** With `interval`: at most this long between fsyncs of JetStream's files. */
  fsyncIntervalMs: number;
}

export function parseFsyncMode(text: string): FsyncMode {
  const mode = text.trim().toLowerCase();
  if (!(FSYNC_MODES as readonly string[]).includes(mode)) {
    throw new ConfigError("--fsync", `"${text}" is not a mode; use always (fsync every JetStream write before acknowledging it) or interval (fsync every --fsync-interval)`);
  }
  return mode as FsyncMode;
}

// Below 10 ms the server would spend its time in fsync for no durability that `always` does not
// give better; above a day nobody means it.
const MIN_INTERVAL_MS = 10;
const MAX_INTERVAL_MS = 24 * 3_600_000;

export function parseFsyncInterval(text: string): number {
  const ms = parseDuration("--fsync-interval", text);
  if (ms < MIN_INTERVAL_MS || ms > MAX_INTERVAL_MS) {
    throw new ConfigError("--fsync-interval", `"${text}" must be between 10ms and 24h (for an fsync on every write use --fsync always)`);
  }
  return ms;
}

/** "nats-server: v2.10.27" (and "v2.11.0-RC.1", "2.9.10") → version; undefined when there is none. */
export function parseNatsServerVersion(output: string): NatsVersion | undefined {
  const m = /\bv?(\d+)\.(\d+)\.(\d+)/.exec(output);
  return m ? { major: Number(m[1]), minor: Number(m[2]), patch: Number(m[3]) } : undefined;
}

export function versionAtLeast(v: NatsVersion, min: NatsVersion): boolean {
  if (v.major !== min.major) return v.major > min.major;
  if (v.minor !== min.minor) return v.minor > min.minor;
  return v.patch >= min.patch;
}

export const formatVersion = (v: NatsVersion) => `${v.major}.${v.minor}.${v.patch}`;

/** Runs `<bin> --version`. A binary that will not say is a configuration problem, not a crash. */
export function natsServerVersion(bin: string): NatsVersion {
  let out: string;
  try {
    out = execFileSync(bin, ["--version"], { encoding: "utf8", timeout: 10_000, stdio: ["ignore", "pipe", "pipe"] });
  } catch (err) {
    throw new ConfigError("nats-server", `${bin} --version failed: ${errorMessage(err)}`);
  }
  const v = parseNatsServerVersion(out);
  if (!v) throw new ConfigError("nats-server", `${bin} --version printed no version: ${JSON.stringify(out.trim().slice(0, 200))}`);
  return v;
}

/** A duration as Go's time.ParseDuration (which nats-server uses) reads it, in the largest exact unit. */
export function goDuration(ms: number): string {
  for (const [unit, size] of [["h", 3_600_000], ["m", 60_000], ["s", 1000]] as const) {
    if (ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}

export interface NatsServerConfig {
  text: string;
  /** What the config means for durability, for the log. */
  notes: string[];
  /** The same in a few words, for `shoal up`'s banner. */
  summary: string;
}

/**
 * The config for a server of `version`. `always` on a server older than 2.10 is refused here,
 * before anything starts, rather than by nats-server's "unknown field" after the fact.
 */
export function natsServerConfig(opts: NatsStorageOptions, version: NatsVersion, bin: string): NatsServerConfig {
  const lines = [
    // Terminal batches of thousands of items are one KV value: allow 8 MB messages.
    "max_payload: 8MB",
  ];
  const notes: string[] = [];
  let summary: string;
  if (versionAtLeast(version, SYNC_INTERVAL_SINCE)) {
    summary = opts.fsync === "always" ? "fsync on every write" : `fsync every ${goDuration(opts.fsyncIntervalMs)}`;
    const value = opts.fsync === "always" ? "always" : `"${goDuration(opts.fsyncIntervalMs)}"`;
    lines.push("jetstream {", `  sync_interval: ${value}`, "}");
    notes.push(
      opts.fsync === "always"
        ? "JetStream fsyncs every write before acknowledging it (--fsync always): acknowledged writes survive a power loss"
        : `JetStream writes reach the OS before they are acknowledged and are fsynced every ${goDuration(opts.fsyncIntervalMs)} (--fsync interval): a power loss can lose up to that much`,
    );
  } else if (opts.fsync === "always") {
    throw new ConfigError(
      "--fsync",
      `always needs nats-server ${formatVersion(SYNC_INTERVAL_SINCE)} or newer (JetStream's sync_interval), but ${bin} is v${formatVersion(version)}. ` +
        "Run scripts/setup.sh (on Debian it installs a newer nats-server to /usr/local/bin), or put one from https://github.com/nats-io/nats-server/releases " +
        "on PATH or in SHOAL_NATS_SERVER; or use --fsync interval.",
    );
  } else {
    summary = `fsync on nats-server ${formatVersion(version)}'s own schedule`;
    notes.push(
      `nats-server v${formatVersion(version)} predates sync_interval (${formatVersion(SYNC_INTERVAL_SINCE)}), so --fsync-interval is not applied: ` +
        "JetStream writes reach the OS before they are acknowledged and are fsynced on that server's own fixed schedule (every 2 minutes on 2.9.10)",
    );
  }
  return { text: lines.join("\n") + "\n", notes, summary };
}

// ---------------------------------------------------------------------------------------------
// `shoal up --nats-cluster N`: N nats-servers on this machine joined by routes on loopback, one
// JetStream cluster. Kept apart from natsServerConfig (durability, authorization): a node's file
// is that text followed by natsClusterConfig's.

/** One server of the local cluster: its name (JetStream needs one per server) and its ports. */
export interface NatsClusterNode {
  name: string;
  clientPort: number;
  /** Where the other nodes' routes connect. */
  routePort: number;
  /** nats-server's HTTP monitoring port; 0 = off. */
  monitorPort: number;
  /** The address its routes listen on and others dial; 127.0.0.1 when absent. */
  host?: string;
}

export const DEFAULT_NATS_CLUSTER_PORT = 6222;
export const NATS_CLUSTER_NAME = "shoal";

/**
 * `--nats-cluster N` → N, where 1 means one server without a cluster. Two servers cannot
 * elect a JetStream leader when either is down, so they buy nothing over one: refused.
 */
export function parseNatsClusterSize(text: string): number {
  const n = Number(text.trim());
  if (!Number.isInteger(n) || n < 1 || n > 9 || n === 2) {
    throw new ConfigError("--nats-cluster", `"${text}" must be 1 (one nats-server) or 3 to 9 servers (JetStream needs a majority up; 3 survives one down)`);
  }
  return n;
}

/** Consecutive client ports from `clientPort`, route ports from `routePort`, monitor ports from `monitorPort` (0 = none). */
export function natsClusterNodes(size: number, clientPort: number, routePort: number, monitorPort = 0): NatsClusterNode[] {
  return Array.from({ length: size }, (_, i) => ({
    name: `n${i + 1}`,
    clientPort: clientPort + i,
    routePort: routePort + i,
    monitorPort: monitorPort > 0 ? monitorPort + i : 0,
  }));
}

/** The client URLs of every node, comma-separated, as --nats takes them. */
export function natsClusterUrls(nodes: readonly NatsClusterNode[], host = "127.0.0.1"): string {
  return nodes.map((n) => `nats://${host}:${n.clientPort}`).join(",");
}

/** The server name and cluster block of `node`: it listens for routes on loopback and dials every other node. */
export function natsClusterConfig(node: NatsClusterNode, nodes: readonly NatsClusterNode[], clusterName = NATS_CLUSTER_NAME): string {
  const routes = nodes.filter((n) => n.name !== node.name).map((n) => `    nats-route://${n.host ?? "127.0.0.1"}:${n.routePort}`);
  return [
    `server_name: ${node.name}`,
    "cluster {",
    `  name: ${clusterName}`,
    `  listen: ${node.host ?? "127.0.0.1"}:${node.routePort}`,
    // One route per pair of servers. With 2.10's default pool of three, servers started together
    // sometimes drop a "Duplicate Route" in a way that leaves one of them out of the JetStream
    // meta group for good (seen here: it never learns the leader; 3-replica streams then find
    // "no suitable peers for placement").
    "  pool_size: -1", "  routes: [", ...routes, "  ]", "}", ""].join("\n");
}
