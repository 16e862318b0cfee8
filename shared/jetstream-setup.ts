import { jetstreamManager, RetentionPolicy, StorageType, type JetStreamManager } from "@nats-io/jetstream";
import { Kvm, type KV } from "@nats-io/kv";
import { Objm, type ObjectStore } from "@nats-io/obj";
import type { NatsConnection } from "@nats-io/transport-node";
import type { Names } from "./subjects.js";

export interface Infrastructure {
  jsm: JetStreamManager;
  batches: KV;
  idempotency: KV;
  models: KV;
  webhooks: KV;
  artifacts: ObjectStore;
}

const DAY_NS = 24 * 3600 * 1e9;

/**
 * Creates (or binds to) every stream and bucket Shoal uses, all on file storage, so any process
 * can start first. Safe to call concurrently from several processes.
 */
export async function ensureInfrastructure(nc: NatsConnection, names: Names): Promise<Infrastructure> {
  const jsm = await jetstreamManager(nc, { timeout: 10_000 });
  await ensureResultsStream(jsm, names);
  const kvm = new Kvm(nc);
  const [batches, idempotency, models, webhooks] = await Promise.all([
    kvm.create(names.batchesBucket, { storage: StorageType.File, history: 1 }),
    kvm.create(names.idempotencyBucket, { storage: StorageType.File, history: 1, ttl: 7 * 24 * 3600 * 1000 }),
    kvm.create(names.modelsBucket, { storage: StorageType.File, history: 1 }),
    kvm.create(names.webhooksBucket, { storage: StorageType.File, history: 1 }),
  ]);
  const artifacts = await new Objm(nc).create(names.artifactsBucket, { storage: StorageType.File });
  return { jsm, batches, idempotency, models, webhooks, artifacts };
}

async function ensureResultsStream(jsm: JetStreamManager, names: Names): Promise<void> {
  const config = {
    name: names.resultsStream,
    subjects: [names.allResults],
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    // Entries are only needed until their batch is terminal (or to rebuild it after a restart);
    // the age limit removes them (see ResultLog for why there is no per-batch purge). A batch
    // running longer than this would lose its history on a coordinator restart.
    max_age: 7 * DAY_NS,
    duplicate_window: 2 * 60 * 1e9,
  };
  try {
    await jsm.streams.info(names.resultsStream);
  } catch {
    try {
      await jsm.streams.add(config);
    } catch (err) {
      // Another process created it between our info and add.
      await jsm.streams.info(names.resultsStream).catch(() => {
        throw err;
      });
    }
  }
}
