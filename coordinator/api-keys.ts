// API keys: who may call, as which tenant and role, within which limits. Keys come from
// `--api-keys tenant:key,...` and/or `--api-keys-file F` (JSON, reloaded on SIGHUP). Only
// SHA-256 digests of keys are kept in memory; a presented key is hashed and compared with every
// stored digest in constant time (crypto.timingSafeEqual over equal-length digests, no early
// exit), so neither the time taken nor a memory dump gives a key away.

import { createHash, timingSafeEqual } from "node:crypto";
import { readFileSync } from "node:fs";
import { ConfigError, errorMessage } from "../shared/errors.js";

export type Role = "tenant" | "operator";

/** Per-tenant limits from the keys file; absent means only the coordinator-wide limits apply. */
export interface TenantLimits {
  maxItemsPerBatch?: number;
  /** Items accepted per UTC day; enforced at submit from the usage bucket (usage.ts). */
  itemsPerDay?: number;
  maxQueuedItems?: number;
}

export interface Principal {
  tenant: string;
  role: Role;
  limits: TenantLimits;
}

interface KeyEntry extends Principal {
  digest: Buffer;
}

/** The shortest key accepted in plain form (a stored digest says nothing about its key's length). */
export const MIN_KEY_LENGTH = 8;
const TENANT_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const SHA256_HEX = /^[0-9a-f]{64}$/;

export function sha256(key: string): Buffer {
  return createHash("sha256").update(key, "utf8").digest();
}

/** An immutable set of keys. Empty means authentication is off (every caller is tenant ""). */
export class ApiKeyTable {
  private constructor(private readonly entries: readonly KeyEntry[]) {}

  static readonly EMPTY = new ApiKeyTable([]);

  get size(): number {
    return this.entries.length;
  }

  get tenants(): string[] {
    return [...new Set(this.entries.map((e) => e.tenant))];
  }

  /** The principal holding this key, or undefined. Looks at every entry whatever matches. */
  lookup(key: string): Principal | undefined {
    const digest = sha256(key);
    let found: KeyEntry | undefined;
    for (const e of this.entries) {
      if (timingSafeEqual(e.digest, digest) && !found) found = e;
    }
    return found && { tenant: found.tenant, role: found.role, limits: found.limits };
  }

  /** The limits of a tenant's keys (the first key's: the file gives limits per tenant); undefined for a tenant not here. */
  limitsOf(tenant: string): TenantLimits | undefined {
    return this.entries.find((e) => e.tenant === tenant)?.limits;
  }

  /**
   * Builds the table from the flag's list and the file's content (either may be absent);
   * throws ConfigError naming the source and the entry for empty keys, duplicate keys (within
   * or across sources), bad names, roles and limits.
   */
  static from(sources: { list?: string; file?: { path: string; text: string } }): ApiKeyTable {
    const entries: KeyEntry[] = [];
    const seen = new Map<string, string>(); // digest hex → where it was first given
    const fileTenants = new Set<string>();
    const add = (e: KeyEntry, where: string, option: string): void => {
      const hex = e.digest.toString("hex");
      const first = seen.get(hex);
      if (first !== undefined) throw new ConfigError(option, `${where}: duplicate key (the same key as ${first}); every key must be distinct`);
      seen.set(hex, where);
      entries.push(e);
    };
    if (sources.file) {
      for (const { entry, where } of parseKeysFile(sources.file.path, sources.file.text)) {
        fileTenants.add(entry.tenant);
        add(entry, where, "--api-keys-file");
      }
    }
    if (sources.list !== undefined && sources.list.trim() !== "") {
      for (const [i, raw] of sources.list.split(",").entries()) {
        const where = `--api-keys entry ${i + 1}`;
        const pair = raw.trim();
        if (pair === "") throw new ConfigError("--api-keys", `entry ${i + 1} is empty (two commas in a row, or a trailing comma)`);
        // "tenant:key"; a bare key (older form) gets the tenant name tenant<i>.
        const colon = pair.indexOf(":");
        const tenant = colon >= 0 ? pair.slice(0, colon).trim() : `tenant${i}`;
        const key = colon >= 0 ? pair.slice(colon + 1).trim() : pair;
        if (key === "") throw new ConfigError("--api-keys", `entry ${i + 1} (tenant "${tenant}") has an empty key`);
        if (key.length < MIN_KEY_LENGTH) throw new ConfigError("--api-keys", `entry ${i + 1} (tenant "${tenant}") needs a key of at least ${MIN_KEY_LENGTH} characters`);
        if (!TENANT_NAME.test(tenant)) throw new ConfigError("--api-keys", `entry ${i + 1}: tenant name "${tenant.slice(0, 64)}" must be 1..64 of A-Z a-z 0-9 . _ - (starting with a letter or digit)`);
        if (fileTenants.has(tenant)) throw new ConfigError("--api-keys", `entry ${i + 1}: tenant "${tenant}" is also defined in --api-keys-file; define each tenant in one place`);
        add({ tenant, role: "tenant", limits: {}, digest: sha256(key) }, where, "--api-keys");
      }
    }
    return new ApiKeyTable(entries);
  }
}

/** Reads and parses a keys file; a read or parse failure is a ConfigError naming the file. */
export function readKeysFile(path: string): { path: string; text: string } {
  try {
    return { path, text: readFileSync(path, "utf8") };
  } catch (err) {
    throw new ConfigError("--api-keys-file", `cannot read ${path}: ${errorMessage(err)}`);
  }
}

const TENANT_FIELDS = new Set(["name", "keys", "key_sha256s", "role", "limits"]);
const LIMIT_FIELDS = new Set(["max_items_per_batch", "items_per_day", "max_queued_items"]);

/**
 * The file's format (docs/security.md): {"tenants": [{"name", "keys": [...] or "key_sha256s":
 * [...], "role": "tenant" | "operator", "limits": {...}}]}. Unknown fields are refused, so a
 * typo (`"limit"`, `"max_item_per_batch"`) does not silently leave a tenant unlimited.
 */
function parseKeysFile(path: string, text: string): { entry: KeyEntry; where: string }[] {
  const fail = (what: string): never => {
    throw new ConfigError("--api-keys-file", `${path}: ${what}`);
  };
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    return fail(`not valid JSON (${errorMessage(err)})`);
  }
  if (!isObject(doc)) return fail(`must be a JSON object {"tenants": [...]}`);
  for (const k of Object.keys(doc)) if (k !== "tenants") fail(`unknown field "${k.slice(0, 40)}" (expected only "tenants")`);
  const tenants = doc.tenants;
  if (!Array.isArray(tenants)) return fail(`"tenants" must be an array`);
  const out: { entry: KeyEntry; where: string }[] = [];
  const names = new Set<string>();
  tenants.forEach((t: unknown, i) => {
    const at = `tenants[${i}]`;
    if (!isObject(t)) return fail(`${at}: must be an object`);
    for (const k of Object.keys(t)) if (!TENANT_FIELDS.has(k)) fail(`${at}: unknown field "${k.slice(0, 40)}" (expected name, keys or key_sha256s, role, limits)`);
    const name = t.name;
    if (typeof name !== "string" || !TENANT_NAME.test(name)) fail(`${at}.name: must be 1..64 of A-Z a-z 0-9 . _ - (starting with a letter or digit)`);
    if (names.has(name as string)) fail(`${at}.name: tenant "${name as string}" is defined twice`);
    names.add(name as string);
    const role = t.role ?? "tenant";
    if (role !== "tenant" && role !== "operator") fail(`${at}.role: must be "tenant" or "operator" (got ${JSON.stringify(role).slice(0, 40)})`);
    const limits = parseLimits(t.limits, `${at}.limits`, fail);
    const hasKeys = t.keys !== undefined;
    const hasDigests = t.key_sha256s !== undefined;
    if (hasKeys === hasDigests) fail(`${at}: give exactly one of "keys" or "key_sha256s"`);
    const principal = { tenant: name as string, role: role as Role, limits };
    if (hasKeys) {
      if (!Array.isArray(t.keys) || t.keys.length === 0) fail(`${at}.keys: must be a non-empty array of strings`);
      (t.keys as unknown[]).forEach((k, j) => {
        if (typeof k !== "string" || k.trim() === "") fail(`${at}.keys[${j}]: must be a non-empty string`);
        if ((k as string).trim().length < MIN_KEY_LENGTH) fail(`${at}.keys[${j}]: must be at least ${MIN_KEY_LENGTH} characters`);
        out.push({ entry: { ...principal, digest: sha256((k as string).trim()) }, where: `${path} ${at}.keys[${j}]` });
      });
    } else {
      if (!Array.isArray(t.key_sha256s) || t.key_sha256s.length === 0) fail(`${at}.key_sha256s: must be a non-empty array of hex SHA-256 digests`);
      (t.key_sha256s as unknown[]).forEach((h, j) => {
        const hex = typeof h === "string" ? h.trim().toLowerCase() : "";
        if (!SHA256_HEX.test(hex)) fail(`${at}.key_sha256s[${j}]: must be 64 hex digits (e.g. \`printf %s "$KEY" | sha256sum\`)`);
        out.push({ entry: { ...principal, digest: Buffer.from(hex, "hex") }, where: `${path} ${at}.key_sha256s[${j}]` });
      });
    }
  });
  return out;
}

function parseLimits(raw: unknown, at: string, fail: (what: string) => never): TenantLimits {
  if (raw === undefined) return {};
  if (!isObject(raw)) return fail(`${at}: must be an object`);
  const limits: TenantLimits = {};
  for (const [k, v] of Object.entries(raw)) {
    if (!LIMIT_FIELDS.has(k)) fail(`${at}: unknown field "${k.slice(0, 40)}" (expected max_items_per_batch, items_per_day, max_queued_items)`);
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 1) fail(`${at}.${k}: must be a whole number of at least 1 (got ${JSON.stringify(v).slice(0, 40)})`);
    if (k === "max_items_per_batch") limits.maxItemsPerBatch = v as number;
    else if (k === "items_per_day") limits.itemsPerDay = v as number;
    else limits.maxQueuedItems = v as number;
  }
  return limits;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
