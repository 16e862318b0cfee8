// Per-tenant usage by UTC day, kept in the KV bucket `<prefix>-usage` as JSON, tenant "_" when
// API keys are off. Two things are counted, each in its own key of the tenant's day:
// - accepted items (key `<day>.<tenant>`), when SubmitBatch stores a batch: what `items_per_day`
//   limits (counting accepted rather than succeeded items is what stops a tenant from flooding
//   the queue with work that then fails or is cancelled);
// - each batch's outcome (key `<day>._done.<tenant>`: succeeded, failed, content-policy, cancelled
//   items and GPU-seconds, the sum of its items' run times), once, just after its terminal record
//   is stored (terminal-usage.ts: its open marker stays until the count is stored, so a crash in
//   between is counted by the next start).
// Two keys because each key's writes go one at a time: with one, every submit waited behind the
// tenant's terminal counts. A day as read (get, list, GetUsage) is the two summed.
// The day is the UTC day the batch was submitted (its created_at), for both: that day is stored
// in the record, so a coordinator restarted after midnight counts the batch under the same key.
// Every update is a compare-and-set on the key's revision, so two coordinators never lose or
// double an update, and the outcome key lists the batch ids counted whose open marker may still be
// there, so a restart that counts a batch again (its marker is what tells it to) adds nothing.
// Once the marker is removed nothing counts that batch again (recovery counts only batches with a
// marker, and a deposed coordinator's writes are fenced), so its id leaves the list with the key's
// next write: the list holds the tenant's batches finishing now, not every batch of the day
// (which would outgrow a KV value within hours at 50 batches a second).

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
  /** Ids of the batches whose outcome is counted and whose open marker may still be there, so none is counted twice. */
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
function tenantInKey(tenant: string): string {
  return tenant === "" ? "_" : tenant;
}

/** The key of a tenant's day where submits count the items accepted (what items_per_day checks). */
export function usageKey(tenant: string, day: string): string {
  return `${day}.${tenantInKey(tenant)}`;
}

/**
 * What comes after `<day>.` in the key where a tenant's finished batches are counted: no
 * configured tenant name starts with "_" (api-keys.ts), so `<day>._done.<tenant>` never names
 * another tenant's accepted key. Apart from the accepted key so that a submit never waits behind
 * the tenant's terminal counts (each key's writes go one at a time); a day is the two summed.
 */
const OUTCOME_PART = "_done.";

/** The key of a tenant's day where finished batches are counted (succeeded, failed, ..., the batch ids). */
export function outcomeKey(tenant: string, day: string): string {
  return `${day}.${OUTCOME_PART}${tenantInKey(tenant)}`;
}

/** The day and the tenant (as in the key: "_" for none) a usage key counts for. */
export function parseUsageKey(key: string): { day: string; tenant: string } {
  const dot = key.indexOf(".");
  const rest = key.slice(dot + 1);
  return { day: key.slice(0, dot), tenant: rest.startsWith(OUTCOME_PART) ? rest.slice(OUTCOME_PART.length) : rest };
}

/** One day of a tenant from its two keys (either may be missing), summed. */
export function mergeDays(a: DayUsage | undefined, b: DayUsage | undefined): DayUsage | undefined {
  if (!a || !b) return a ?? b;
  return {
    tenant: a.tenant,
    day: a.day,
    accepted: a.accepted + b.accepted,
    succeeded: a.succeeded + b.succeeded,
    failed: a.failed + b.failed,
    contentPolicy: a.contentPolicy + b.contentPolicy,
    cancelled: a.cancelled + b.cancelled,
    gpuSeconds: Math.round((a.gpuSeconds + b.gpuSeconds) * 1000) / 1000,
    batches: [...a.batches, ...b.batches],
  };
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
/** Keys (tenant × day) whose last stored value is kept between updates. */
const MAX_KNOWN_KEYS = 1024;

/** One caller's change to a key, waiting for the write that carries it. */
interface QueuedChange {
  change: (cur: DayUsage) => DayUsage | undefined;
  resolve: (v: DayUsage | undefined) => void;
  reject: (err: unknown) => void;
}

/** A key's updates from this process: those waiting, whether a write is in flight, and what this process last stored. */
interface KeyQueue {
  waiting: QueuedChange[];
  writing: boolean;
  /** The value and revision this process last read or wrote; a compare-and-set proves it current. */
  known: { value: DayUsage; revision: number } | undefined;
  /** Ids of counted batches whose open marker is removed: dropped from `batches` by the key's next write. */
  stored: Set<string>;
}

export class UsageStore {
  private readonly where: string;
  private readonly keys = new Map<string, KeyQueue>();
  /** Updates asked for and not settled yet: a read (list) waits for them, so it sees what was asked before it. */
  private readonly inFlight = new Set<Promise<unknown>>();

  constructor(
    private readonly kv: KV,
    bucket: string,
  ) {
    this.where = `the usage bucket (${bucket})`;
  }

  /** The tenant's day as stored: its accepted key and its outcome key, summed. */
  async get(tenant: string, day: string): Promise<DayUsage | undefined> {
    const [a, b] = await Promise.all([this.read(usageKey(tenant, day)), this.read(outcomeKey(tenant, day))]);
    return mergeDays(a, b);
  }

  private async read(key: string): Promise<DayUsage | undefined> {
    const e = await this.kv.get(key);
    return e && e.operation === "PUT" ? e.json<DayUsage>() : undefined;
  }

  /**
   * Applies `change` to the key's current value with compare-and-set, retrying when another
   * writer got there first. `change` returning undefined means nothing to write; `change`
   * throwing refuses this update alone (e.g. DailyLimitExceeded), and nothing of it is written.
   *
   * Updates of one key from this process are group-committed: every change asked for while a
   * write of the key is in flight goes, in order, into the next single write (the tenant's every
   * submit and every terminal write share one key a day; one read and one write each, one at a
   * time, made that key a queue that every batch waited in twice). Each caller's promise settles
   * only once the write carrying its change is stored, so "counted before it is accepted" holds
   * as before. The next write starts from the value this process stored last, without reading it
   * again: the compare-and-set on its revision proves nobody else wrote since, and when another
   * coordinator did, the key is read and the whole group applied again on top of its value.
   */
  private update(key: string, tenant: string, day: string, change: (cur: DayUsage) => DayUsage | undefined): Promise<DayUsage | undefined> {
    const queue = this.queueOf(key);
    const p = new Promise<DayUsage | undefined>((resolve, reject) => {
      queue.waiting.push({ change, resolve, reject });
      if (!queue.writing) void this.drain(key, tenant, day, queue);
    });
    const tracked: Promise<void> = p.then(
      () => void this.inFlight.delete(tracked),
      () => void this.inFlight.delete(tracked),
    );
    this.inFlight.add(tracked);
    return p;
  }

  /** Resolves once every update asked for before this call is settled (stored or failed). */
  async settled(): Promise<void> {
    if (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight]);
  }

  private queueOf(key: string): KeyQueue {
    let q = this.keys.get(key);
    if (!q) this.keys.set(key, (q = { waiting: [], writing: false, known: undefined, stored: new Set() }));
    return q;
  }

  /** Writes the key's waiting changes, a group at a time, until none is left. */
  private async drain(key: string, tenant: string, day: string, q: KeyQueue): Promise<void> {
    q.writing = true;
    while (q.waiting.length > 0) {
      const group = q.waiting;
      q.waiting = [];
      await this.writeGroup(key, tenant, day, q, group);
    }
    q.writing = false;
    // What this process stored is kept for the key's next update (a tenant's day); past
    // MAX_KNOWN_KEYS idle ones are forgotten and read again when next updated.
    // (Ids it would have dropped then stay in the key: harmless, and few.)
    if (this.keys.size > MAX_KNOWN_KEYS) for (const [k, other] of this.keys) if (!other.writing && other.waiting.length === 0) this.keys.delete(k);
  }

  private async writeGroup(key: string, tenant: string, day: string, q: KeyQueue, group: QueuedChange[]): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      let base = q.known;
      let exists = true;
      try {
        if (!base) {
          const e = await this.kv.get(key);
          exists = e !== null && e.operation === "PUT";
          base = exists ? { value: e!.json<DayUsage>(), revision: e!.revision } : { value: emptyDay(tenant, day), revision: 0 };
        }
      } catch (err) {
        this.settleAll(group, storageError(err, this.where, "the server's max_file_store"));
        return;
      }
      // Each change sees the value with the changes before it applied; a refused one is skipped.
      let cur = base.value;
      let changed = false;
      const outcomes: ({ ok: DayUsage | undefined } | { err: unknown })[] = [];
      for (const c of group) {
        try {
          const next = c.change(cur);
          if (next !== undefined) {
            cur = next;
            changed = true;
          }
          outcomes.push({ ok: next });
        } catch (err) {
          outcomes.push({ err });
        }
      }
      if (!changed) {
        this.settle(group, outcomes);
        return;
      }
      // Batches whose open marker is removed since the last write leave the list with this one.
      const dropped = q.stored.size > 0 ? new Set(q.stored) : undefined;
      if (dropped) cur = { ...cur, batches: cur.batches.filter((id) => !dropped.has(id)) };
      try {
        const data = JSON.stringify(cur);
        const revision = exists && base.revision > 0 ? await this.kv.update(key, data, base.revision) : await this.kv.create(key, data);
        q.known = { value: cur, revision };
        if (dropped) for (const id of dropped) q.stored.delete(id);
        this.settle(group, outcomes);
        return;
      } catch (err) {
        // Another writer moved the key (or what this process knew is stale): read it, apply again.
        q.known = undefined;
        if (isWrongLastSequence(err) && attempt < MAX_CAS_ATTEMPTS) continue;
        this.settleAll(group, storageError(err, this.where, "the server's max_file_store"));
        return;
      }
    }
  }

  private settle(group: QueuedChange[], outcomes: ({ ok: DayUsage | undefined } | { err: unknown })[]): void {
    group.forEach((c, i) => {
      const o = outcomes[i]!;
      if ("err" in o) c.reject(o.err);
      else c.resolve(o.ok);
    });
  }

  private settleAll(group: QueuedChange[], err: unknown): void {
    for (const c of group) c.reject(err);
  }

  /**
   * Counts `items` accepted for the tenant on `now`'s day; with a limit, refuses (throws
   * DailyLimitExceeded, nothing counted) when the day's total would go past it.
   */
  async reserve(tenant: string, items: number, limit: number | undefined, now: Date): Promise<void> {
    const day = utcDay(now);
    await this.update(usageKey(tenant, day), tenant, day, (cur) => {
      if (limit !== undefined && cur.accepted + items > limit) throw new DailyLimitExceeded(cur.accepted, items, limit, nextUtcMidnight(now));
      return { ...cur, accepted: cur.accepted + items };
    });
  }

  /** Gives back a reservation whose batch was not stored after all. */
  async release(tenant: string, items: number, day: string): Promise<void> {
    await this.update(usageKey(tenant, day), tenant, day, (cur) => ({ ...cur, accepted: Math.max(0, cur.accepted - items) }));
  }

  /** Counts a terminal batch under its submission day; returns what it added, or undefined when counted already. */
  async recordBatch(tenant: string, batch: Batch): Promise<BatchUsage | undefined> {
    const u = batchUsage(batch);
    const day = utcDay(batch.createdAt ?? new Date());
    const written = await this.update(outcomeKey(tenant, day), tenant, day, (cur) => addBatch(cur, batch.id, u));
    return written ? u : undefined;
  }

  /**
   * The counted batch's open marker is removed: nothing counts it again, so its id can leave the
   * key's list. No write of its own: the key's next update (the tenant's next submit or terminal
   * write) carries it.
   */
  countSettled(tenant: string, batch: Batch): void {
    this.queueOf(outcomeKey(tenant, utcDay(batch.createdAt ?? new Date()))).stored.add(batch.id);
  }

  /**
   * Every stored day from `since` (YYYY-MM-DD, inclusive) on, for one tenant or (undefined) all,
   * oldest first. Waits first for the updates this process was asked for before the call (e.g.
   * the count of a batch whose answer the caller has just had), so a reader of this coordinator
   * sees them.
   */
  async list(since: string, tenant?: string): Promise<DayUsage[]> {
    await this.settled();
    // Each tenant-day's keys (accepted, outcome), by the day and tenant they count for.
    const byDay = new Map<string, string[]>();
    for await (const k of await this.kv.keys()) {
      const { day, tenant: t } = parseUsageKey(k);
      if (day < since) continue;
      if (tenant !== undefined && t !== tenantInKey(tenant)) continue;
      const at = `${day}.${t}`;
      byDay.set(at, [...(byDay.get(at) ?? []), k]);
    }
    const out: DayUsage[] = [];
    for (const at of [...byDay.keys()].sort()) {
      let day: DayUsage | undefined;
      for (const k of byDay.get(at)!) day = mergeDays(day, await this.read(k));
      if (day) out.push(day);
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
