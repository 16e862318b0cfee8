import { ConfigError } from "./errors.js";

const BYTE_UNITS: Record<string, number> = {
  "": 1,
  b: 1,
  k: 1e3, kb: 1e3, m: 1e6, mb: 1e6, g: 1e9, gb: 1e9, t: 1e12, tb: 1e12,
  ki: 1024, kib: 1024, mi: 1024 ** 2, mib: 1024 ** 2, gi: 1024 ** 3, gib: 1024 ** 3, ti: 1024 ** 4, tib: 1024 ** 4,
};

/** "8GiB", "512MiB", "24G", "1073741824" → bytes. */
export function parseBytes(option: string, text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = m ? BYTE_UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) {
    throw new ConfigError(option, `"${text}" is not a size; use bytes or a unit like 512MiB, 8GiB, 24GB`);
  }
  const bytes = Math.round(Number(m[1]) * unit);
  if (!Number.isSafeInteger(bytes) || bytes <= 0) throw new ConfigError(option, `"${text}" must be a positive size`);
  return bytes;
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** "500ms", "30s", "5m", "7d", or a plain number of milliseconds → ms. */
export function parseDuration(option: string, text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$/.exec(text);
  if (!m) throw new ConfigError(option, `"${text}" is not a duration; use e.g. 500ms, 30s, 5m, 7d`);
  return Math.round(Number(m[1]) * DURATION_UNITS[m[2] ?? "ms"]!);
}

export function parseIntOption(option: string, text: string, min: number, max: number): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new ConfigError(option, `"${text}" must be an integer between ${min} and ${max}`);
  }
  return n;
}
