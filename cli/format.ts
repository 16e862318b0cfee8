// Text formatting for the CLI: sizes, durations, state names and plain-text tables. Pure
// functions, so the look of every command is unit-tested without a server.

import { batchStateToJSON, itemStatusToJSON, workerStateToJSON } from "../proto/gen/shoal/v1/shoal.js";
import type { BatchState, ItemStatus, WorkerState } from "../proto/gen/shoal/v1/shoal.js";

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"] as const;

/** 512 → "512 B", 1536 → "1.5 KiB", 85899345920 → "80 GiB"; binary units, as GPUs report. */
export function formatBytes(bytes: number): string {
  if (!Number.isFinite(bytes)) return "?";
  const sign = bytes < 0 ? "-" : "";
  let value = Math.abs(bytes);
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  if (unit === 0) return `${sign}${Math.round(value)} B`;
  // Three significant digits at most: "1.5 KiB", "12.3 MiB", "512 MiB".
  let text = value < 100 ? value.toFixed(1) : value.toFixed(0);
  // Rounding can reach the next unit (1023.96 KiB → "1024 KiB"): carry it over.
  if (Number(text) >= 1024 && unit < UNITS.length - 1) {
    text = "1.0";
    unit++;
  }
  return `${sign}${text.replace(/\.0$/, "")} ${UNITS[unit]}`;
}

/** Bytes as a GiB figure with one decimal and no unit, for `free/total GiB` columns. */
export function formatGiB(bytes: number): string {
  return (bytes / 1024 ** 3).toFixed(1);
}

/** 412 → "412ms", 1234 → "1.2s", 123000 → "2m03s", 3720000 → "1h02m". */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) return "?";
  if (ms < 1000) return `${Math.round(ms)}ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1).replace(/\.0$/, "")}s`;
  const totalSeconds = Math.round(ms / 1000);
  if (totalSeconds < 3600) {
    return `${Math.floor(totalSeconds / 60)}m${String(totalSeconds % 60).padStart(2, "0")}s`;
  }
  const totalMinutes = Math.floor(totalSeconds / 60);
  return `${Math.floor(totalMinutes / 60)}h${String(totalMinutes % 60).padStart(2, "0")}m`;
}

/** "2025-03-27 11:40:05" in local time: readable, sortable, and short enough for a table. */
export function formatTime(date: Date | undefined): string {
  if (!date || Number.isNaN(date.getTime())) return "-";
  const p = (n: number): string => String(n).padStart(2, "0");
  return (
    `${date.getFullYear()}-${p(date.getMonth() + 1)}-${p(date.getDate())} ` +
    `${p(date.getHours())}:${p(date.getMinutes())}:${p(date.getSeconds())}`
  );
}

// The proto enum names carry a prefix (BATCH_STATE_COMPLETED); people read the short form.
export function batchStateName(state: BatchState): string {
  return batchStateToJSON(state).replace(/^BATCH_STATE_/, "");
}

export function itemStatusName(status: ItemStatus): string {
  return itemStatusToJSON(status).replace(/^ITEM_STATUS_/, "");
}

export function workerStateName(state: WorkerState): string {
  return workerStateToJSON(state).replace(/^WORKER_STATE_/, "");
}

export function formatLabels(labels: Record<string, string> | undefined): string {
  const entries = Object.entries(labels ?? {});
  return entries.length === 0 ? "" : entries.map(([k, v]) => `${k}=${v}`).join(",");
}

/** Zero-padded item index for file names, wide enough that names sort in item order. */
export function padIndex(index: number, total: number): string {
  const width = Math.max(3, String(Math.max(total - 1, 0)).length);
  return String(index).padStart(width, "0");
}

export interface TableOptions {
  /** Columns whose cells are right-aligned (numbers). */
  alignRight?: number[];
  indent?: string;
}

/**
 * A plain-text table: a header row, columns two spaces apart, the last column unpadded so no
 * line carries trailing blanks. A cell with newlines spans several lines, the other cells of
 * its row staying on the first (one worker, several GPUs).
 */
export function formatTable(headers: string[], rows: string[][], options: TableOptions = {}): string {
  const indent = options.indent ?? "";
  const right = new Set(options.alignRight ?? []);
  const columns = headers.length;
  const cellLines = (cell: string | undefined): string[] => (cell ?? "").split("\n");
  const widths = headers.map((h, c) =>
    Math.max(h.length, ...rows.map((row) => Math.max(...cellLines(row[c]).map((l) => l.length)))),
  );

  const renderLine = (cells: string[]): string => {
    const parts = cells.map((text, c) => {
      if (right.has(c)) return text.padStart(widths[c]!);
      return c === columns - 1 ? text : text.padEnd(widths[c]!);
    });
    return (indent + parts.join("  ")).trimEnd();
  };

  const lines = [renderLine(headers)];
  for (const row of rows) {
    const split = Array.from({ length: columns }, (_, c) => cellLines(row[c]));
    const height = Math.max(...split.map((l) => l.length));
    for (let i = 0; i < height; i++) lines.push(renderLine(split.map((l) => l[i] ?? "")));
  }
  return lines.join("\n") + "\n";
}
