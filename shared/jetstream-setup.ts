import { DiscardPolicy, jetstreamManager, RetentionPolicy, StorageType, type JetStreamManager, type StreamConfig } from "@nats-io/jetstream";
import { Kvm, type KV } from "@nats-io/kv";
import { Objm, type ObjectStore } from "@nats-io/obj";
import type { NatsConnection } from "@nats-io/transport-node";
import { ConfigError } from "./errors.js";
import type { Logger } from "./logger.js";
import { storageError } from "./storage-errors.js";
import type { Names } from "./subjects.js";

export interface Infrastructure {
  jsm: JetStreamManager;
  batches: KV;
  idempotency: KV;
  models: KV;
  webhooks: KV;
  /** What the scheduler learned (learned-durations.ts): small, rewritten in place. Coordinator only. */
  scheduler: KV | undefined;
  /** Per-tenant usage by day (coordinator/usage.ts). Coordinator only. */
  usage: KV | undefined;
  artifacts: ObjectStore;
  /** True when this call created the batch index stream (so batches stored before it existed need indexing). */
  batchIndexCreated: boolean;
}

/**
 * How long and how much Shoal keeps. Ages count from a record's last write: a batch record from
 * its terminal write, an index entry from submission, a result entry or artifact from when the
 * worker stored it. A byte limit of 0 leaves the store bounded only by nats-server's own
 * max_file_store; a positive one is reserved on the server when the store is created.
 */
export interface StorageLimits {
  retentionMs: number;
  /** Batch records bucket, the batch index stream and the idempotency bucket, each. */
  batchesMaxBytes: number;
  resultsMaxBytes: number;
  artifactsMaxBytes: number;
}

export const DEFAULT_RETENTION_MS = 7 * 24 * 3600 * 1000;
/** Copies of every stream, bucket and object store: 1 on a single nats-server, 3 on a cluster. */
export const DEFAULT_REPLICAS = 1;
const DEFAULT_LIMITS: StorageLimits = { retentionMs: DEFAULT_RETENTION_MS, batchesMaxBytes: 0, resultsMaxBytes: 0, artifactsMaxBytes: 0 };
const MS_NS = 1e6;
/** JetStream's de-duplication window; the server refuses one longer than the stream's max_age. */
const DUPLICATE_WINDOW_MS = 2 * 60 * 1000;

/**
 * Creates (or binds to) every stream and bucket Shoal uses, all on file storage, so any process
 * can start first. Safe to call concurrently from several processes. With `limits` (the
 * coordinator) the retention and byte limits are also applied to stores that exist already, so
 * changing --retention or a --*-max-bytes flag takes effect at the next coordinator start;
 * without (workers) missing stores are created with the defaults and existing ones left alone.
 */
export async function ensureInfrastructure(nc: NatsConnection, names: Names, limits?: StorageLimits, log?: Logger, replicas = DEFAULT_REPLICAS): Promise<Infrastructure> {
  const l = limits ?? DEFAULT_LIMITS;
  const r = replicas;
  const apply = limits !== undefined;
  const jsm = await jetstreamManager(nc, { timeout: 10_000 });
  const ageNs = l.retentionMs * MS_NS;
  const dupNs = Math.min(DUPLICATE_WINDOW_MS, l.retentionMs) * MS_NS;
  const bytes = (n: number) => (n > 0 ? n : -1);
  await ensureStream(
    jsm,
    {
      name: names.resultsStream,
      subjects: [names.allResults],
      storage: StorageType.File,
      retention: RetentionPolicy.Limits,
      // Entries are only needed until their batch is terminal (or to rebuild it after a restart);
      // the age limit removes them (see ResultLog for why there is no per-batch purge). A full
      // stream refuses new entries (workers retry them) rather than dropping old ones, which may
      // belong to batches still running.
      max_age: ageNs,
      max_bytes: bytes(l.resultsMaxBytes),
      discard: DiscardPolicy.New,
      duplicate_window: dupNs,
      num_replicas: r,
    },
    apply,
    "--results-max-bytes",
    log,
  );
  let batchIndexCreated = false;
  if (apply) {
    batchIndexCreated = await ensureStream(
      jsm,
      {
        name: names.batchIndexStream,
        subjects: [names.allBatchIndex],
        storage: StorageType.File,
        retention: RetentionPolicy.Limits,
        max_age: ageNs,
        max_bytes: bytes(l.batchesMaxBytes),
        discard: DiscardPolicy.New,
        duplicate_window: dupNs,
        num_replicas: r,
      },
      apply,
      "--batches-max-bytes",
      log,
    );
  }
  const kvm = new Kvm(nc);
  // Replicated, a KV read by default is a direct get that any replica may answer, including one
  // that has not applied the latest write yet (JetStream promises no read-after-write for direct
  // gets). A coordinator that reads a record another one just wrote (after a failover: a batch's
  // record, its idempotency key) must see it, so with replicas reads go to the stream leader.
  // With one server there is one copy, and the direct get is as current.
  const consistentReads = r > 1 ? { allow_direct: false } : {};
  const kv = async (bucket: string, ttlMs: number, maxBytes: number, flag: string): Promise<KV> => {
    const store = await createOrExplain(() => kvm.create(bucket, { storage: StorageType.File, history: 1, ttl: ttlMs, max_bytes: bytes(maxBytes), replicas: r, ...consistentReads }), flag, r);
    // A bucket made before it was replicated answered direct gets: it is changed too.
    if (apply) await applyLimits(jsm, `KV_${bucket}`, { max_age: ttlMs * MS_NS, max_bytes: bytes(maxBytes), num_replicas: r, ...consistentReads }, flag, log);
    return store;
  };
  const [batches, idempotency, models, webhooks, scheduler, usage] = await Promise.all([
    kv(names.batchesBucket, l.retentionMs, l.batchesMaxBytes, "--batches-max-bytes"),
    kv(names.idempotencyBucket, l.retentionMs, l.batchesMaxBytes, "--batches-max-bytes"),
    // Model registrations live as long as their workers; pending webhooks until delivered or
    // given up. Both are small and removed by their owners, so neither ages out.
    kv(names.modelsBucket, 0, 0, ""),
    kv(names.webhooksBucket, 0, 0, ""),
    // Learned durations: one small key that must outlive any idle spell, so no age limit either.
    // Only the coordinator uses it, so only the coordinator creates it.
    apply ? kv(names.schedulerBucket, 0, 0, "") : Promise.resolve(undefined),
    // Usage is what tenants are billed from: kept until an operator removes it, never aged out.
    apply ? kv(names.usageBucket, 0, 0, "") : Promise.resolve(undefined),
  ]);
  const artifacts = await createOrExplain(
    () => new Objm(nc).create(names.artifactsBucket, { storage: StorageType.File, ttl: ageNs, max_bytes: bytes(l.artifactsMaxBytes), replicas: r }),
    "--artifacts-max-bytes",
    r,
  );
  if (apply) await applyLimits(jsm, `OBJ_${names.artifactsBucket}`, { max_age: ageNs, max_bytes: bytes(l.artifactsMaxBytes), num_replicas: r }, "--artifacts-max-bytes", log);
  return { jsm, batches, idempotency, models, webhooks, scheduler, usage, artifacts, batchIndexCreated };
}

/** Creates the stream, or brings an existing one to the config's limits; true when created. */
async function ensureStream(jsm: JetStreamManager, config: Partial<StreamConfig> & { name: string }, apply: boolean, flag: string, log?: Logger): Promise<boolean> {
  try {
    await jsm.streams.info(config.name);
  } catch {
    try {
      await createOrExplain(() => jsm.streams.add(config), flag, config.num_replicas);
      return true;
    } catch (err) {
      // Another process created it between our info and add.
      await jsm.streams.info(config.name).catch(() => {
        throw err;
      });
    }
  }
  if (apply) await applyLimits(jsm, config.name, { max_age: config.max_age!, max_bytes: config.max_bytes!, discard: config.discard, num_replicas: config.num_replicas }, flag, log);
  return false;
}

type Limits = Pick<StreamConfig, "max_age" | "max_bytes"> & { discard?: DiscardPolicy; num_replicas?: number; allow_direct?: boolean };

/**
 * Updates a stream whose age or byte limit, or replica count, differs from what is configured
 * now. The de-duplication window is shortened with the age (the server refuses a longer one).
 * A store made on one server (R1) is raised to --replicas when the coordinator starts on a
 * cluster; a server that cannot hold that many copies refuses, and the error names --replicas.
 */
async function applyLimits(jsm: JetStreamManager, stream: string, want: Limits, flag: string, log?: Logger): Promise<void> {
  const { config } = await jsm.streams.info(stream);
  const maxAge = want.max_age;
  const dup = maxAge > 0 ? Math.min(DUPLICATE_WINDOW_MS * MS_NS, maxAge) : config.duplicate_window;
  const changed =
    config.max_age !== maxAge || config.max_bytes !== want.max_bytes || (want.discard !== undefined && config.discard !== want.discard) || config.duplicate_window !== dup;
  const replicasChanged = want.num_replicas !== undefined && (config.num_replicas || 1) !== want.num_replicas;
  const directChanged = want.allow_direct !== undefined && (config.allow_direct ?? false) !== want.allow_direct;
  if (!changed && !replicasChanged && !directChanged) return;
  const update = {
    ...config,
    max_age: maxAge,
    max_bytes: want.max_bytes,
    duplicate_window: dup,
    ...(want.discard !== undefined ? { discard: want.discard } : {}),
    ...(want.num_replicas !== undefined ? { num_replicas: want.num_replicas } : {}),
    ...(want.allow_direct !== undefined ? { allow_direct: want.allow_direct } : {}),
  };
  await createOrExplain(() => jsm.streams.update(stream, update), flag, want.num_replicas);
  log?.info(
    {
      stream,
      maxAgeMs: maxAge / MS_NS,
      maxBytes: want.max_bytes,
      replicas: update.num_replicas,
      before: { maxAgeMs: config.max_age / MS_NS, maxBytes: config.max_bytes, replicas: config.num_replicas },
    },
    "storage limits updated",
  );
}

/**
 * A byte limit the server cannot reserve, or a replica count it cannot place, is a
 * configuration problem: say which flag.
 */
async function createOrExplain<T>(fn: () => Promise<T>, flag: string, replicas?: number): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    const replicaProblem = replicasError(err, replicas);
    if (replicaProblem) throw replicaProblem;
    const e = storageError(err, "a JetStream store", flag || "the server's max_file_store");
    if (e.code === "STORAGE_FULL" && flag) {
      throw new ConfigError(flag, `nats-server cannot reserve this much JetStream storage (${e.message}); lower ${flag} or raise the server's jetstream max_file_store`);
    }
    throw err;
  }
}

// JetStream API errors that mean "cannot have that many copies here".
const JS_REPLICAS_NOT_SUPPORTED = 10074; // "replicas > 1 not supported in non-clustered mode"
const JS_INSUFFICIENT_PEERS = 10005; // "insufficient resources" for a placement: fewer servers than replicas
const JS_REPLICAS_EXCEED_MAX = 10078; // "replicas count cannot be negative" / above the maximum

/** A ConfigError naming --replicas when `err` says the servers cannot keep `replicas` copies. */
export function replicasError(err: unknown, replicas: number | undefined): ConfigError | undefined {
  if (replicas === undefined || replicas <= 1) return undefined;
  const code = (err as { code?: unknown } | null)?.code;
  const message = err instanceof Error ? err.message : String(err);
  if (code === JS_REPLICAS_NOT_SUPPORTED || code === JS_INSUFFICIENT_PEERS || code === JS_REPLICAS_EXCEED_MAX || /replica|peers|non-clustered/i.test(message)) {
    return new ConfigError(
      "--replicas",
      `nats-server cannot keep ${replicas} copies of Shoal's streams (${message}); a single server holds 1 (--replicas 1), a cluster of N servers at most N`,
    );
  }
  return undefined;
}
