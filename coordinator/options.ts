import { DEFAULT_RETENTION_MS, type StorageLimits } from "../shared/jetstream-setup.js";
import type { NatsSecurity } from "../shared/nats-security.js";
import type { ApiKeyTable } from "./api-keys.js";
import type { ServerTls } from "./grpc/server.js";
import type { PlacementPolicy } from "./placement.js";

/** Every field present, durations in ms: what the coordinator runs with. */
export interface CoordinatorOptions {
  natsUrl: string;
  /** NATS identity and TLS; absent: anonymous. */
  natsSecurity?: NatsSecurity;
  prefix: string;
  grpcHost: string;
  grpcPort: number;
  /** TLS of the gRPC server (mTLS with a client CA); absent: plaintext. */
  tls: ServerTls | undefined;
  metricsHost: string;
  metricsPort: number;
  /** How often the event-loop delay metrics sample (shared/process-metrics.ts); default 250 ms. */
  eventLoopResolutionMs?: number;
  maxItems: number;
  maxAttempts: number;
  /** A worker is lost after this long without a heartbeat. */
  heartbeatTimeoutMs: number;
  itemTimeoutMs: number;
  policy: PlacementPolicy;
  /** API keys (digests only); empty means no authentication. */
  apiKeys: ApiKeyTable;
  /** Where the keys came from, read again on SIGHUP. */
  apiKeySources: { list?: string; file?: string };
  /** How long an assignment request waits for the worker's answer. */
  assignTimeoutMs: number;
  /** Items waiting in the queue beyond which SubmitBatch answers RESOURCE_EXHAUSTED. */
  maxQueuedItems: number;
  /** An item that no registered worker could ever fit fails after this long. */
  unplaceableGraceMs: number;
  /** Delays between webhook delivery attempts. */
  webhookRetryDelaysMs: number[];
  /** Let webhooks reach loopback, private, link-local addresses (local development, tests). */
  webhookAllowPrivate: boolean;
  /** Deliveries in flight at once. */
  webhookConcurrency: number;
  /** Retention and byte limits of the streams and buckets, applied at start. */
  storage: StorageLimits;
  /** First delay before a failed terminal write is tried again; it doubles up to the max. */
  terminalRetryInitialMs: number;
  terminalRetryMaxMs: number;
  /** The content policy file (docs/content-policy.md); unset or "": nothing is screened. */
  contentPolicyFile?: string;
  /** Delete the learned item durations at start (they are learned again from outcomes). */
  forgetDurations: boolean;
  /** affinity: GPUs split between models by backlog (default); greedy: queue order only. */
  scheduler?: "affinity" | "greedy";
  /** Longest predicted items first within each batch's share (default on). */
  longestFirst?: boolean;
  /** Straggler hedging at the end of batches (scheduler/hedging.ts); default on. */
  hedging?: boolean;
  /** k: a hedge is placed once an item runs past k × its predicted time (default 2). */
  hedgeAfterFactor?: number;
  /** ... and only once it is at least this late (ms; default 1000). */
  hedgeMinOverrunMs?: number;
  /** Bytes per second GPUs load model weights at, for the cost of switching models (0 = unknown). */
  loadBytesPerS?: number;
  /** Evict idle resident weights to fit a waiting item (scheduler/defrag.ts); default on. */
  defrag?: boolean;
  /** Hold a tail item for a faster GPU that finishes it sooner than a free one (scheduler/earliest-finish.ts); default on. */
  earliestFinish?: boolean;
  /** Items whose size would strand their GPU's VRAM go where they pack, or after the smaller ones (scheduler/packing.ts); default on. */
  packing?: boolean;
  /** Copies of each stream, bucket and object store (--replicas); 1 when absent. */
  replicas?: number;
  /** Standby coordinators: how long the active one's lease lasts unrenewed (--lease-ttl); default LEASE_TTL_MS. */
  leaseTtlMs?: number;
  /** The gRPC address standbys name when they refuse a call (--advertise-addr); default host:port. */
  advertiseAddr?: string;
}

export const COORDINATOR_DEFAULTS = {
  grpcHost: "127.0.0.1",
  grpcPort: 50051,
  metricsHost: "127.0.0.1",
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
  webhookConcurrency: 8,
  storage: { retentionMs: DEFAULT_RETENTION_MS, batchesMaxBytes: 0, resultsMaxBytes: 0, artifactsMaxBytes: 0 } satisfies StorageLimits,
  terminalRetryInitialMs: 200,
  terminalRetryMaxMs: 30_000,
  forgetDurations: false,
  scheduler: "affinity" as "affinity" | "greedy",
  longestFirst: true,
  defrag: true,
  earliestFinish: true,
  packing: true,
  loadBytesPerS: 0,
  replicas: 1,
  leaseTtlMs: 5000,
};
