// What a bench case reports, how a metric is checked against its target, the printed table and
// the machine-readable results file.

import { execFileSync } from "node:child_process";
import { cpus, totalmem, availableParallelism, platform, release } from "node:os";
import { round4 } from "./stats.js";

export interface Target {
  /** What is compared: the metric's value or its ratio to the reference. */
  of: "value" | "ratio";
  op: ">=" | "<=" | ">";
  threshold: number;
  /** As printed, e.g. "≥ 20000 items/s". */
  text: string;
}

export interface Metric {
  name: string;
  value: number;
  unit: string;
  /** What the value is compared with, measured in the same run (or the ideal computed for it). */
  reference?: { label: string; value: number; unit: string };
  /** value / reference.value (or as the metric defines it). */
  ratio?: number;
  target?: Target;
  /** Whether the target holds; absent when the metric has no target. */
  met?: boolean;
}

export interface CaseOutcome {
  params: Record<string, unknown>;
  raw: Record<string, unknown>;
  metrics: Metric[];
  notes?: string[];
}

export interface CaseResult extends CaseOutcome {
  name: string;
  title: string;
  /** True where GPUs are simulated (declared VRAM, items that sleep). */
  simulated: boolean;
  /** The case's target as the issue states it. */
  target: string;
  /** Every metric with a target met (false when the case failed). */
  met: boolean;
  durationS: number;
  error?: string;
}

export interface MachineInfo {
  cores: number;
  cpuModel: string;
  memoryGiB: number;
  platform: string;
  nodeVersion: string;
  natsServerVersion: string;
  date: string;
}

export interface BenchResults {
  mode: "quick" | "full";
  machine: MachineInfo;
  cases: CaseResult[];
  allMet: boolean;
}

export function check(m: Metric): Metric {
  if (!m.target) return m;
  const v = m.target.of === "ratio" ? m.ratio : m.value;
  const met = v !== undefined && Number.isFinite(v) && (m.target.op === ">=" ? v >= m.target.threshold : m.target.op === ">" ? v > m.target.threshold : v <= m.target.threshold);
  return { ...m, met };
}

export function machineInfo(natsServer: string): MachineInfo {
  let natsServerVersion = "unknown";
  try {
    natsServerVersion = execFileSync(natsServer, ["--version"], { encoding: "utf8" }).trim();
  } catch {
    /* keep unknown */
  }
  return {
    cores: availableParallelism(),
    cpuModel: cpus()[0]?.model ?? "unknown",
    memoryGiB: Math.round((totalmem() / 1024 ** 3) * 10) / 10,
    platform: `${platform()} ${release()}`,
    nodeVersion: process.version,
    natsServerVersion,
    date: new Date().toISOString(),
  };
}

function fmt(v: number | undefined, unit = ""): string {
  if (v === undefined) return "";
  if (!Number.isFinite(v)) return String(v);
  const r = round4(v);
  const s = Math.abs(r) >= 1e5 ? Math.round(r).toLocaleString("en-US") : String(r);
  return unit ? `${s} ${unit}` : s;
}

/** One row per metric: case, metric, value, baseline/ideal, ratio, target, pass/fail. */
export function tableRows(results: CaseResult[]): string[][] {
  const rows: string[][] = [["case", "metric", "value", "baseline / ideal", "ratio", "target", "pass/fail"]];
  for (const c of results) {
    const label = c.simulated ? `${c.name} (SIMULATED)` : c.name;
    if (c.error) {
      rows.push([label, "error", c.error.split("\n")[0]!.slice(0, 100), "", "", c.target, "FAIL"]);
      continue;
    }
    for (const m of c.metrics) {
      rows.push([
        label,
        m.name,
        fmt(m.value, m.unit),
        m.reference ? `${m.reference.label}: ${fmt(m.reference.value, m.reference.unit)}` : "",
        m.ratio !== undefined ? fmt(m.ratio) : "",
        m.target?.text ?? "",
        m.met === undefined ? "" : m.met ? "pass" : "FAIL",
      ]);
    }
  }
  return rows;
}

export function formatTable(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
  const line = (r: string[]) => r.map((c, i) => (c ?? "").padEnd(widths[i]!)).join("  ").trimEnd();
  return [line(rows[0]!), widths.map((w) => "-".repeat(w)).join("  "), ...rows.slice(1).map(line)].join("\n");
}

/** The same table as Markdown, for docs/performance.md. */
export function markdownTable(rows: string[][]): string {
  const esc = (s: string) => s.replace(/\|/g, "\\|");
  return [
    `| ${rows[0]!.map(esc).join(" | ")} |`,
    `|${rows[0]!.map(() => "---").join("|")}|`,
    ...rows.slice(1).map((r) => `| ${r.map(esc).join(" | ")} |`),
  ].join("\n");
}
