// Fleet overhead per item: CPU time each process of a fleet used over a measured window
// (utime + stime from /proc/<pid>/stat, all threads), divided by the items the window moved.
// Used by the dispatch case (0-work items: all of it is overhead) and the onnx case (real
// imagegen items: the CPU the same items cost run directly is subtracted).

import { readFileSync } from "node:fs";
import { check, type Metric } from "./report.js";
import { childPids, cpuSeconds } from "./procs.js";

/** A role in the fleet ("coordinator", "nats-server", "worker a") → its pids. */
export type ProcessGroups = Record<string, number[]>;

export interface ProcessCpu {
  cpuMs: number;
  msPerItem: number;
  /** Average cores the group used over the window (1.0 = one core). */
  cores: number;
}

export interface CpuPerItem {
  items: number;
  wallS: number;
  byProcess: Record<string, ProcessCpu>;
  /** Sum over every group. */
  totalMsPerItem: number;
}

export interface CpuWindow {
  /** Closes the window: CPU used since it opened, per group and per item. */
  end(items: number): CpuPerItem;
}

/** CPU seconds of a pid, or NaN once it is gone (a process that died mid-window). */
function cpuOf(pid: number): number {
  try {
    return cpuSeconds(pid);
  } catch {
    return Number.NaN;
  }
}

/** Opens a window now: snapshots every group's CPU time. */
export function cpuWindow(groups: ProcessGroups): CpuWindow {
  const before = Object.fromEntries(Object.entries(groups).map(([name, pids]) => [name, pids.map(cpuOf)]));
  const t0 = performance.now();
  return {
    end(items) {
      const wallS = (performance.now() - t0) / 1000;
      const byProcess: Record<string, ProcessCpu> = {};
      for (const [name, pids] of Object.entries(groups)) {
        const cpuS = pids.reduce((s, pid, i) => s + (cpuOf(pid) - before[name]![i]!), 0);
        if (!Number.isFinite(cpuS)) throw new Error(`cpu accounting: a process of ${name} (${pids.join(", ")}) exited during the measured window`);
        byProcess[name] = { cpuMs: cpuS * 1000, msPerItem: (cpuS * 1000) / items, cores: cpuS / wallS };
      }
      const totalMsPerItem = Object.values(byProcess).reduce((s, p) => s + p.msPerItem, 0);
      return { items, wallS, byProcess, totalMsPerItem };
    },
  };
}

/** The command line of a pid as its arguments ([] when it is gone). */
function argv(pid: number): string[] {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").filter(Boolean);
  } catch {
    return [];
  }
}

/**
 * The processes of a `shoal up` started as `upPid`, by role: the `shoal up` supervisor itself,
 * its nats-server, its coordinator, each worker (by --id) and the gateway, read from
 * /proc/<pid>/cmdline of its children.
 */
export function shoalUpProcesses(upPid: number): ProcessGroups {
  const groups: ProcessGroups = { "shoal up": [upPid] };
  for (const pid of childPids(upPid)) {
    const args = argv(pid);
    const exe = args[0] ?? "";
    let role: string;
    if (exe.endsWith("nats-server")) role = "nats-server";
    else if (args.includes("coordinator")) role = "coordinator";
    else if (args.includes("worker")) {
      const id = args[args.indexOf("--id") + 1];
      role = args.includes("--id") && id ? `worker ${id}` : `worker ${pid}`;
    } else if (args.includes("gateway")) role = "gateway";
    else role = `other ${pid}`;
    (groups[role] ??= []).push(pid);
  }
  return groups;
}

/** The table row of one group's CPU-ms per item. */
export function cpuPerItemMetric(name: string, cpu: CpuPerItem, group: string): Metric {
  const g = cpu.byProcess[group];
  if (!g) throw new Error(`cpu accounting: no group ${group} (have ${Object.keys(cpu.byProcess).join(", ")})`);
  return { name: `${name}: ${group}`, value: g.msPerItem, unit: "CPU-ms/item" };
}

export const FLEET_OVERHEAD_TARGET_MS = 1;

/**
 * CPU-ms per real item the fleet spends outside inference: everything every fleet process used
 * over the measured window, minus what the same items cost when run directly (inference and
 * image encoding in one process, nothing else), per item. Target ≤ 1 CPU-ms.
 */
export function fleetOverheadMetric(fleet: CpuPerItem, direct: CpuPerItem): Metric {
  const overhead = fleet.totalMsPerItem - direct.totalMsPerItem;
  return check({
    name: "fleet CPU-ms per item outside inference (fleet − direct)",
    value: overhead,
    unit: "CPU-ms/item",
    reference: { label: "direct CPU per item", value: direct.totalMsPerItem, unit: "CPU-ms/item" },
    ratio: fleet.totalMsPerItem / direct.totalMsPerItem,
    target: { of: "value", op: "<=", threshold: FLEET_OVERHEAD_TARGET_MS, text: `≤ ${FLEET_OVERHEAD_TARGET_MS} CPU-ms/item` },
  });
}

/** Per process: what it used per item, the workers' share net of the direct run's CPU per item. */
export function fleetOverheadByProcess(fleet: CpuPerItem, direct: CpuPerItem, itemsByWorker: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [name, g] of Object.entries(fleet.byProcess)) {
    const workerId = name.startsWith("worker ") ? name.slice("worker ".length) : undefined;
    const inference = workerId !== undefined ? (itemsByWorker[workerId] ?? 0) * direct.totalMsPerItem : 0;
    out[name] = (g.cpuMs - inference) / fleet.items;
  }
  return out;
}
