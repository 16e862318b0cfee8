// Per-tenant usage by UTC day, kept in the KV bucket `<prefix>-usage` (key `<day>.<tenant>`,
// tenant "_" when API keys are off) as JSON. Two things are counted:
// - accepted items, when SubmitBatch stores a batch: what `items_per_day` limits (counting
//   accepted rather than succeeded items is what stops a tenant from flooding the queue with
//   work that then fails or is cancelled);
// - each batch's outcome (succeeded, failed, content-policy, cancelled items and GPU-seconds, the
//   sum of its items' run times), once, just before its terminal record is stored.
// The day is the UTC day the batch was submitted (its created_at), for both: that day is stored
// in the record, so a coordinator restarted after midnight counts the batch under the same key.
// Every update is a compare-and-set on the key's revision, so two coordinators never lose or
// double an update, and each key lists the batch ids already counted, so a restart that writes a
// batch's terminal record again (or a second writer) does not count it twice.

import type { KV } from "@nats-io/kv";
import { ItemStatus, type Batch } from "../proto/gen/shoal/v1/shoal.js";
import { isWrongLastSequence, storageError } from "../shared/storage-errors.js";

export const CONTENT_POLICY = "CONTENT_POLICY";

/** What one batch adds to its tenant's day. CONTENT_POLICY items are apart from `failed` and never charged. */
export interface BatchUsage {
  succeeded: number;
  failed: number;
  contentPolicy: number;
  cancelled: number;
  gpuSeconds: number;
}

export interface DayUsage extends BatchUsage {
  tenant: string;
  /** UTC day, YYYY-MM-DD. */
  day: string;
  /** Items accepted by SubmitBatch (and RetryBatch) that day: what items_per_day limits. */
  accepted: number;
  /** Ids of the batches whose outcome is counted, so none is counted twice. */
  batches: string[];
}

/** YYYY-MM-DD of the instant, in UTC. */
export function utcDay(at: Date): string {
  return at.toISOString().slice(0, 10);
}

/** The next UTC midnight after `at`: when a day's items_per_day allowance starts over. */
export function nextUtcMidnight(at: Date): Date {
  return new Date(Date.UTC(at.getUTCFullYear(), at.getUTCMonth(), at.getUTCDate() + 1));
}

/** Tenant "" (API keys off) is stored as "_", a name no configured tenant can have. */
export function usageKey(tenant: string, day: string): string {
  return `${day}.${tenant === "" ? "_" : tenant}`;
}

export function emptyDay(tenant: string, day: string): DayUsage {
  return { tenant, day, accepted: 0, succeeded: 0, failed: 0, contentPolicy: 0, cancelled: 0, gpuSeconds: 0, batches: [] };
}

/** What a terminal batch adds: each item once, by its final status; GPU time from every item's run_ms. */
export function batchUsage(batch: Batch): BatchUsage {
  const u: BatchUsage = { succeeded: 0, failed: 0, contentPolicy: 0, cancelled: 0, gpuSeconds: 0 };
  let runMs = 0;
  for (const r of batch.results) {
    if (r.status === ItemStatus.ITEM_STATUS_SUCCEEDED) u.succeeded++;
    else if (r.status === ItemStatus.ITEM_STATUS_CANCELLED) u.cancelled++;
    else if (r.error?.code === CONTENT_POLICY) u.contentPolicy++;
    else u.failed++;
    runMs += Number(r.runMs ?? 0);
  }
  u.gpuSeconds = runMs / 1000;
  return u;
}

/** The day with the batch added, or undefined when it is counted already. */
export function addBatch(day: DayUsage, batchId: string, u: BatchUsage): DayUsage | undefined {
  if (day.batches.includes(batchId)) return undefined;
  return {
    ...day,
    succeeded: day.succeeded + u.succeeded,
    failed: day.failed + u.failed,
    contentPolicy: day.contentPolicy + u.contentPolicy,
    cancelled: day.cancelled + u.cancelled,
    gpuSeconds: Math.round((day.gpuSeconds + u.gpuSeconds) * 1000) / 1000,
    batches: [...day.batches, batchId],
  };
}

/** Thrown by reserve() when a tenant's items_per_day would be exceeded. */
export class DailyLimitExceeded extends Error {
  override readonly name = "DailyLimitExceeded";
  constructor(
    readonly acceptedToday: number,
    readonly adding: number,
    readonly limit: number,
    readonly resetsAt: Date,
  ) {
    super(`${acceptedToday} items accepted today and this batch adds ${adding}, over items_per_day = ${limit}; resets at ${resetsAt.toISOString()}`);
  }
}

/** Compare-and-set attempts before an update gives up (each lost one means another writer moved). */
const MAX_CAS_ATTEMPTS = 50;

export class UsageStore {
  private readonly where: string;
  /** The last queued update of each key (see update()). */
  private readonly queues = new Map<string, Promise<void>>();

  constructor(
    private readonly kv: KV,
    bucket: string,
  ) {
    this.where = `the usage bucket (${bucket})`;
  }

  async get(tenant: string, day: string): Promise<DayUsage | undefined> {
    const e = await this.kv.get(usageKey(tenant, day));
    if (!e || e.operation !== "PUT") return undefined;
    return e.json<DayUsage>();
  }

  /**
   * Applies `change` to the key's current value with compare-and-set, retrying when another
   * writer got there first. `change` returning undefined means nothing to write.
   */
  private update(tenant: string, day: string, change: (cur: DayUsage) => DayUsage | undefined): Promise<DayUsage | undefined> {
    // Updates of one key from this process go one at a time: many submits of one tenant at once
    // would otherwise mostly lose their compare-and-set to each other. Only another coordinator
    // can still win a race, and then the loser retries.
    const key = usageKey(tenant, day);
    const prev = this.queues.get(key) ?? Promise.resolve();
    const run = prev.then(() => this.casLoop(key, tenant, day, change));
    const tail = run.then(
      () => undefined,
      () => undefined,
    );
    this.queues.set(key, tail);
    void tail.then(() => {
      if (this.queues.get(key) === tail) this.queues.delete(key);
    });
    return run;
  }

  private async casLoop(key: string, tenant: string, day: string, change: (cur: DayUsage) => DayUsage | undefined): Promise<DayUsage | undefined> {
    for (let attempt = 1; ; attempt++) {
      const e = await this.kv.get(key);
      const exists = e !== null && e.operation === "PUT";
      const cur = exists ? e.json<DayUsage>() : emptyDay(tenant, day);
      const next = change(cur);
      if (next === undefined) return undefined;
      try {
        const data = JSON.stringify(next);
        if (exists) await this.kv.update(key, data, e.revision);
        else await this.kv.create(key, data);
        return next;
      } catch (err) {
        if (isWrongLastSequence(err) && attempt < MAX_CAS_ATTEMPTS) continue;
        throw storageError(err, this.where, "the server's max_file_store");
      }
    }
  }

  /**
   * Counts `items` accepted for the tenant on `now`'s day; with a limit, refuses (throws
   * DailyLimitExceeded, nothing counted) when the day's total would go past it.
   */
  async reserve(tenant: string, items: number, limit: number | undefined, now: Date): Promise<void> {
    const day = utcDay(now);
    await this.update(tenant, day, (cur) => {
      if (limit !== undefined && cur.accepted + items > limit) throw new DailyLimitExceeded(cur.accepted, items, limit, nextUtcMidnight(now));
      return { ...cur, accepted: cur.accepted + items };
    });
  }

  /** Gives back a reservation whose batch was not stored after all. */
  async release(tenant: string, items: number, day: string): Promise<void> {
    await this.update(tenant, day, (cur) => ({ ...cur, accepted: Math.max(0, cur.accepted - items) }));
  }

  /** Counts a terminal batch under its submission day; returns what it added, or undefined when counted already. */
  async recordBatch(tenant: string, batch: Batch): Promise<BatchUsage | undefined> {
    const u = batchUsage(batch);
    const day = utcDay(batch.createdAt ?? new Date());
    const written = await this.update(tenant, day, (cur) => addBatch(cur, batch.id, u));
    return written ? u : undefined;
  }

  /** Every stored day from `since` (YYYY-MM-DD, inclusive) on, for one tenant or (undefined) all, oldest first. */
  async list(since: string, tenant?: string): Promise<DayUsage[]> {
    const keys: string[] = [];
    for await (const k of await this.kv.keys()) {
      const dot = k.indexOf(".");
      const day = k.slice(0, dot);
      const t = k.slice(dot + 1);
      if (day < since) continue;
      if (tenant !== undefined && t !== (tenant === "" ? "_" : tenant)) continue;
      keys.push(k);
    }
    keys.sort();
    const out: DayUsage[] = [];
    for (const k of keys) {
      const e = await this.kv.get(k);
      if (e && e.operation === "PUT") out.push(e.json<DayUsage>());
    }
    return out;
  }
}

const DAY = /^\d{4}-\d{2}-\d{2}$/;
/** How far back GetUsage looks when `since` is empty. */
export const DEFAULT_USAGE_DAYS = 30;

/** The `since` day of a GetUsage call: YYYY-MM-DD as given (a real date), or 30 days before `now`. Undefined when malformed. */
export function usageSince(since: string, now: Date): string | undefined {
  if (since === "") return utcDay(new Date(now.getTime() - DEFAULT_USAGE_DAYS * 86_400_000));
  if (!DAY.test(since)) return undefined;
  const d = new Date(`${since}T00:00:00Z`);
  return !Number.isNaN(d.getTime()) && utcDay(d) === since ? since : undefined;
}
