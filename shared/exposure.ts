// Whether a listen address is reachable from other machines, and the loud warning given when a
// process listens beyond loopback without what protects it there (API keys, TLS).

import { isIP } from "node:net";
import type { Logger } from "./logger.js";

/** True for addresses only this machine can reach: 127.0.0.0/8, ::1, localhost. */
export function isLoopbackHost(host: string): boolean {
  const h = host.trim().toLowerCase().replace(/^\[|\]$/g, "");
  if (h === "localhost" || h.endsWith(".localhost")) return true;
  if (isIP(h) === 4) return h.startsWith("127.");
  if (isIP(h) === 6) return h === "::1" || /^::ffff:127\./.test(h);
  return false;
}

/**
 * Logs at warn level, once per missing protection, when `host` is not loopback. The message
 * starts with "INSECURE" so it stands out in a wall of JSON logs.
 */
export function warnIfExposed(log: Logger, what: string, host: string, missing: { condition: boolean; why: string }[]): string[] {
  if (isLoopbackHost(host)) return [];
  const problems = missing.filter((m) => m.condition).map((m) => m.why);
  for (const why of problems) log.warn({ listen: host, exposure: what }, `INSECURE: ${what} listens on ${host}, beyond loopback, ${why}`);
  return problems;
}
