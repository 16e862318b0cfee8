// Every NATS subject, stream and bucket name in one place, all under a configurable prefix so
// two fleets can share a NATS cluster and permissions can be written per role.

export class Names {
  readonly prefix: string;
  constructor(prefix = "shoal") {
    if (!/^[A-Za-z0-9_-]+$/.test(prefix)) throw new Error(`invalid subject prefix "${prefix}"`);
    this.prefix = prefix;
  }
  heartbeat(workerId: string): string {
    return `${this.prefix}.hb.${workerId}`;
  }
  get heartbeats(): string {
    return `${this.prefix}.hb.*`;
  }
  /** The coordinator announces itself here at start so workers heartbeat at once. */
  get coordinatorHello(): string {
    return `${this.prefix}.coordinator.hello`;
  }
  assign(workerId: string): string {
    return `${this.prefix}.worker.${workerId}.assign`;
  }
  cancel(workerId: string): string {
    return `${this.prefix}.worker.${workerId}.cancel`;
  }
  drain(workerId: string): string {
    return `${this.prefix}.worker.${workerId}.drain`;
  }
  /** Defragmentation: the coordinator asks the worker to drop idle weights (EvictRequest). */
  evict(workerId: string): string {
    return `${this.prefix}.worker.${workerId}.evict`;
  }
  results(batchId: string): string {
    return `${this.prefix}.results.${batchId}`;
  }
  get allResults(): string {
    return `${this.prefix}.results.>`;
  }
  get resultsStream(): string {
    return `${this.prefix.toUpperCase().replace(/-/g, "_")}_RESULTS`;
  }
  get resultsConsumer(): string {
    return "coordinator";
  }
  /** Index of batches per tenant, in submission order: `<prefix>.index.batches.<tenant token>`. */
  batchIndex(tenantToken: string): string {
    return `${this.prefix}.index.batches.${tenantToken}`;
  }
  get allBatchIndex(): string {
    return `${this.prefix}.index.batches.*`;
  }
  get batchIndexStream(): string {
    return `${this.prefix.toUpperCase().replace(/-/g, "_")}_BATCH_INDEX`;
  }
  get batchesBucket(): string {
    return `${this.prefix}-batches`;
  }
  get idempotencyBucket(): string {
    return `${this.prefix}-idempotency`;
  }
  get modelsBucket(): string {
    return `${this.prefix}-models`;
  }
  get webhooksBucket(): string {
    return `${this.prefix}-webhooks`;
  }
  /** The coordinators' key for lease tokens (lease-tokens.ts); no worker identity may read it. */
  get leaseKeyBucket(): string {
    return `${this.prefix}-lease-key`;
  }

  /** What the scheduler learned (item durations), kept across coordinator restarts. */
  get schedulerBucket(): string {
    return `${this.prefix}-scheduler`;
  }
  /** Per-tenant usage by day (coordinator/usage.ts); never ages out. */
  get usageBucket(): string {
    return `${this.prefix}-usage`;
  }
  get artifactsBucket(): string {
    return `${this.prefix}-artifacts`;
  }
  /** The lease that says which coordinator is active (standby coordinators, leadership.ts). */
  get leaderBucket(): string {
    return `${this.prefix}-leader`;
  }
}

export const ARTIFACT_URI_PREFIX = "shoal://artifacts/";
