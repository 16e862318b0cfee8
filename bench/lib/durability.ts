// The durability a bench fleet runs with, so that latency and rate figures can state it beside
// them: the nats-server config `shoal up` writes by default (cli/nats-config.ts), what the
// running server itself reports on /varz, and the file system under the JetStream store (on
// tmpfs an fsync costs nothing and the figures say nothing about a disk).

import { statfsSync } from "node:fs";
import { DEFAULT_FSYNC, DEFAULT_FSYNC_INTERVAL, natsServerConfig, natsServerVersion, parseFsyncInterval, type FsyncMode } from "../../cli/nats-config.js";
import { natsServerBinary, type Stack } from "../../test/harness/processes.js";

// statfs f_type of file systems on which fsync does nothing durable, or where the number means
// something else than "this disk".
const FS_TYPES: Record<number, string> = {
  0xef53: "ext2/3/4",
  0x58465342: "xfs",
  0x9123683e: "btrfs",
  0x01021994: "tmpfs",
  0x794c7630: "overlayfs",
  0x2fc12fc1: "zfs",
  0x6969: "nfs",
};

export function storeFileSystem(dir: string): string {
  try {
    const type = statfsSync(dir).type;
    return FS_TYPES[type] ?? `0x${type.toString(16)}`;
  } catch {
    return "unknown";
  }
}

export interface JetStreamSync {
  sync_always?: boolean;
  /** Nanoseconds. */
  sync_interval?: number;
}

/** JetStream's sync settings as the running nats-server reports them (/varz on its monitoring port). */
export async function readJetStreamSync(monitorPort: number): Promise<JetStreamSync | undefined> {
  const res = await fetch(`http://127.0.0.1:${monitorPort}/varz`, { signal: AbortSignal.timeout(5000) });
  const v = (await res.json()) as { jetstream?: { config?: JetStreamSync } };
  return v.jetstream?.config;
}

export interface ShoalUpDurability {
  /** `shoal up --fsync` and `--fsync-interval` as set (their defaults). */
  fsync: FsyncMode;
  fsyncInterval: string;
  /** In a few words, as `shoal up` prints it, e.g. "fsync every 2m". */
  summary: string;
  natsServerVersion: string;
  /** What nats-server reported on /varz. */
  natsVarz: { syncAlways: boolean; syncIntervalNs: number };
  storeFileSystem: string;
}

/** Makes `stack`'s next nats-server use exactly the config `shoal up` writes by default. */
export function useShoalUpDefaultNatsConfig(stack: Stack): Pick<ShoalUpDurability, "fsync" | "fsyncInterval" | "summary" | "natsServerVersion"> {
  const bin = natsServerBinary();
  const version = natsServerVersion(bin);
  const config = natsServerConfig({ fsync: DEFAULT_FSYNC, fsyncIntervalMs: parseFsyncInterval(DEFAULT_FSYNC_INTERVAL) }, version, bin);
  stack.natsConfig = config.text;
  return { fsync: DEFAULT_FSYNC, fsyncInterval: DEFAULT_FSYNC_INTERVAL, summary: config.summary, natsServerVersion: `${version.major}.${version.minor}.${version.patch}` };
}

/** After nats-server started: the settings plus what the server says it runs with. */
export async function confirmDurability(stack: Stack, set: ReturnType<typeof useShoalUpDefaultNatsConfig>): Promise<ShoalUpDurability> {
  const varz = await readJetStreamSync(stack.natsMonitorPort);
  const d: ShoalUpDurability = {
    ...set,
    natsVarz: { syncAlways: varz?.sync_always === true, syncIntervalNs: varz?.sync_interval ?? 0 },
    storeFileSystem: storeFileSystem(stack.dir),
  };
  if (d.natsVarz.syncAlways !== (set.fsync === "always")) throw new Error(`nats-server reports sync_always ${varz?.sync_always}, but the config says --fsync ${set.fsync}`);
  return d;
}

/** "fsync every 2m, ext2/3/4": for metric names, so the table states it beside the number. */
export function durabilityLabel(d: ShoalUpDurability): string {
  return `shoal up default: ${d.summary}, store on ${d.storeFileSystem}`;
}
