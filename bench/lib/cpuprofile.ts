// Reads a V8 .cpuprofile (node --cpu-prof) and sums self time per function: where the profiled
// process actually spent its CPU, heaviest first.

import { existsSync, readFileSync } from "node:fs";
import { SourceMap } from "node:module";
import { dirname, relative, resolve } from "node:path";

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number; columnNumber: number };
  hitCount?: number;
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples?: number[];
  timeDeltas?: number[];
}

export interface SelfTimeEntry {
  function: string;
  /** file:line, relative to the project root where possible. */
  location: string;
  selfMs: number;
  /** Share of the busy (non-idle) time. */
  busyShare: number;
}

export interface ProfileSummary {
  file: string;
  wallMs: number;
  busyMs: number;
  idleMs: number;
  gcMs: number;
  top: SelfTimeEntry[];
  /** Self time per area (project directory, or node_modules package, or node internals). */
  byArea: { area: string; selfMs: number; busyShare: number }[];
}

const sourceMaps = new Map<string, SourceMap | undefined>();

function sourceMapOf(path: string): SourceMap | undefined {
  if (!sourceMaps.has(path)) {
    let map: SourceMap | undefined;
    try {
      if (existsSync(`${path}.map`)) map = new SourceMap(JSON.parse(readFileSync(`${path}.map`, "utf8")));
    } catch {
      map = undefined;
    }
    sourceMaps.set(path, map);
  }
  return sourceMaps.get(path);
}

/** file:line, relative to the root; project code is mapped back to its TypeScript source. */
function location(url: string, line: number, column: number, root: string): string {
  if (!url) return "";
  const path = url.startsWith("file://") ? new URL(url).pathname : url;
  const nm = path.lastIndexOf("/node_modules/");
  if (nm >= 0) return `${path.slice(nm + 1)}:${line + 1}`;
  if (!path.startsWith("/")) return `${path}:${line + 1}`;
  const entry = sourceMapOf(path)?.findEntry(line, column) as { originalSource?: string; originalLine?: number } | undefined;
  if (entry?.originalSource !== undefined && entry.originalLine !== undefined) {
    const original = entry.originalSource.startsWith("file://") ? new URL(entry.originalSource).pathname : resolve(dirname(path), entry.originalSource);
    return `${relative(root, original)}:${entry.originalLine + 1}`;
  }
  return `${relative(root, path)}:${line + 1}`;
}

function area(location: string, fn: string): string {
  if (location === "" && fn.startsWith("(")) return fn;
  if (location.startsWith("node_modules/")) {
    const parts = location.split("/");
    return parts[1]!.startsWith("@") ? `${parts[1]}/${parts[2]}` : parts[1]!;
  }
  if (location.startsWith("node:") || location === "") return "node internals";
  // coordinator/x.ts (or dist/coordinator/x.js) → coordinator/
  const parts = location.replace(/^dist\//, "").split("/");
  return parts.length > 1 ? `${parts[0]}/` : parts[0]!;
}

/**
 * `windows`: only samples taken within these spans count (µs of the monotonic clock V8 stamps
 * profiles with, which is process.hrtime's: a profiled process and the bench share it), e.g. the
 * timed part of a run without start-up; wallMs is then their total length.
 */
export function summarizeProfile(file: string, top = 25, root = process.cwd(), windows?: { fromUs: number; toUs: number }[]): ProfileSummary {
  const profile = JSON.parse(readFileSync(file, "utf8")) as CpuProfile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const selfUs = new Map<number, number>();
  if (profile.samples && profile.timeDeltas) {
    // Each sample's time is the delta to the next sample; a sample is stamped at startTime plus
    // the deltas up to it.
    let at = profile.startTime;
    for (let i = 0; i < profile.samples.length; i++) {
      at += profile.timeDeltas[i] ?? 0;
      if (windows && !windows.some((w) => at >= w.fromUs && at < w.toUs)) continue;
      const dt = profile.timeDeltas[i + 1] ?? 0;
      selfUs.set(profile.samples[i]!, (selfUs.get(profile.samples[i]!) ?? 0) + Math.max(0, dt));
    }
  } else {
    const total = profile.endTime - profile.startTime;
    const hits = profile.nodes.reduce((s, n) => s + (n.hitCount ?? 0), 0) || 1;
    for (const n of profile.nodes) selfUs.set(n.id, ((n.hitCount ?? 0) * total) / hits);
  }
  const byFn = new Map<string, { function: string; location: string; us: number }>();
  let idleUs = 0;
  let gcUs = 0;
  let allUs = 0;
  for (const [id, us] of selfUs) {
    const n = byId.get(id);
    if (!n) continue;
    allUs += us;
    const fn = n.callFrame.functionName || "(anonymous)";
    if (fn === "(idle)") {
      idleUs += us;
      continue;
    }
    if (fn === "(garbage collector)") gcUs += us;
    const loc = location(n.callFrame.url, n.callFrame.lineNumber, n.callFrame.columnNumber, root);
    const key = `${fn}@${loc}`;
    const e = byFn.get(key) ?? { function: fn, location: loc, us: 0 };
    e.us += us;
    byFn.set(key, e);
  }
  const busyUs = allUs - idleUs;
  const entries = [...byFn.values()].sort((a, b) => b.us - a.us);
  const areas = new Map<string, number>();
  for (const e of entries) {
    const a = area(e.location, e.function);
    areas.set(a, (areas.get(a) ?? 0) + e.us);
  }
  return {
    file,
    wallMs: windows ? windows.reduce((t, w) => t + Math.max(0, Math.min(w.toUs, profile.endTime) - Math.max(w.fromUs, profile.startTime)), 0) / 1000 : (profile.endTime - profile.startTime) / 1000,
    busyMs: busyUs / 1000,
    idleMs: idleUs / 1000,
    gcMs: gcUs / 1000,
    top: entries.slice(0, top).map((e) => ({ function: e.function, location: e.location, selfMs: e.us / 1000, busyShare: busyUs > 0 ? e.us / busyUs : 0 })),
    byArea: [...areas].sort((a, b) => b[1] - a[1]).map(([a, us]) => ({ area: a, selfMs: us / 1000, busyShare: busyUs > 0 ? us / busyUs : 0 })),
  };
}

export function formatProfileSummary(s: ProfileSummary): string {
  const pct = (v: number) => `${(v * 100).toFixed(1)}%`.padStart(6);
  const ms = (v: number) => `${v.toFixed(0)} ms`.padStart(9);
  const lines = [
    `${s.file}`,
    `wall ${s.wallMs.toFixed(0)} ms, busy ${s.busyMs.toFixed(0)} ms (${((s.busyMs / Math.max(1, s.wallMs)) * 100).toFixed(0)}% of one core), GC ${s.gcMs.toFixed(0)} ms`,
    "",
    "self time by area (share of busy time):",
    ...s.byArea.slice(0, 12).map((a) => `  ${pct(a.busyShare)} ${ms(a.selfMs)}  ${a.area}`),
    "",
    `top ${s.top.length} functions by self time:`,
    ...s.top.map((e) => `  ${pct(e.busyShare)} ${ms(e.selfMs)}  ${e.function}  ${e.location}`),
  ];
  return lines.join("\n");
}
