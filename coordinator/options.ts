import { DEFAULT_RETENTION_MS, type StorageLimits } from "../shared/jetstream-setup.js";
import type { PlacementPolicy } from "./placement.js";

/** Every field present, durations in ms: what the coordinator runs with. */
export interface CoordinatorOptions {
  natsUrl: string;
  prefix: string;
  grpcHost: string;
  grpcPort: number;
  metricsPort: number;
  maxItems: number;
  maxAttempts: number;
  /** A worker is lost after this long without a heartbeat. */
  heartbeatTimeoutMs: number;
  itemTimeoutMs: number;
  policy: PlacementPolicy;
  /** API keys as tenant → key; empty means no authentication. */
  apiKeys: Map<string, string>;
  /** How long an assignment request waits for the worker's answer. */
  assignTimeoutMs: number;
  /** Items waiting in the queue beyond which SubmitBatch answers RESOURCE_EXHAUSTED. */
  maxQueuedItems: number;
  /** An item that no registered worker could ever fit fails after this long. */
  unplaceableGraceMs: number;
  /** Delays between webhook delivery attempts. */
  webhookRetryDelaysMs: number[];
  /** Retention and byte limits of the streams and buckets, applied at start. */
  storage: StorageLimits;
  /** First delay before a failed terminal write is tried again; it doubles up to the max. */
  terminalRetryInitialMs: number;
  terminalRetryMaxMs: number;
  /** Copies of each stream, bucket and object store (--replicas); 1 when absent. */
  replicas?: number;
  /** Standby coordinators: how long the active one's lease lasts unrenewed (--lease-ttl); default LEASE_TTL_MS. */
  leaseTtlMs?: number;
  /** The gRPC address standbys name when they refuse a call (--advertise-addr); default host:port. */
  advertiseAddr?: string;
}

export const COORDINATOR_DEFAULTS = {
  grpcHost: "0.0.0.0",
  grpcPort: 50051,
  metricsPort: 9464,
  maxItems: 50,
  maxAttempts: 3,
  heartbeatTimeoutMs: 3000,
  itemTimeoutMs: 600_000,
  policy: "best-fit" as PlacementPolicy,
  assignTimeoutMs: 5000,
  maxQueuedItems: 100_000,
  unplaceableGraceMs: 60_000,
  webhookRetryDelaysMs: [1000, 5000, 30_000, 120_000, 600_000],
  storage: { retentionMs: DEFAULT_RETENTION_MS, batchesMaxBytes: 0, resultsMaxBytes: 0, artifactsMaxBytes: 0 } satisfies StorageLimits,
  terminalRetryInitialMs: 200,
  terminalRetryMaxMs: 30_000,
  replicas: 1,
  leaseTtlMs: 2000,
};
