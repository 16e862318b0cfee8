// Standby coordinators: which one of several is active, decided by a lease in a JetStream KV
// bucket. The lease is one key whose bucket ages entries out after the lease TTL; the active
// coordinator renews it by compare-and-set on its revision, a standby takes it with a create
// (which only succeeds when the key is gone). So at most one holds it, and a holder that stops
// renewing (dead, paused, cut off from the NATS majority) loses it one TTL after its last
// renewal, as the server counts.
//
// The holder also stops *itself* before that: it counts its lease as ending one TTL (less a
// margin) after it *sent* its last successful renewal, by the monotonic clock, which is earlier
// than the server's expiry of that renewal. Everything the coordinator sends to NATS passes
// `FencedConnection` (fenced-connection.ts), which refuses once that moment has passed, so a
// paused or partitioned coordinator cannot place or write after a standby could have taken over.

import { StorageType } from "@nats-io/jetstream";
import { Kvm, type KV } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { errorMessage } from "../shared/errors.js";
import type { Logger } from "../shared/logger.js";
import { isWrongLastSequence } from "../shared/storage-errors.js";
import { replicasError } from "../shared/jetstream-setup.js";

/** Who holds (or wants) the lease: a unique id per process and the gRPC address clients should use. */
export interface LeaseHolder {
  id: string;
  addr: string;
}

export interface LeadershipOptions {
  /** The KV bucket of the lease (`<prefix>-leader`). */
  bucket: string;
  ttlMs: number;
  replicas: number;
  self: LeaseHolder;
  log: Logger;
  /** Called when this process takes the lease; `term` is the lease's revision at that moment. */
  onElected: (term: number) => void;
  /** Called once when a held lease is lost (taken, expired unrenewed, or released by stop()). */
  onDeposed: (reason: string) => void;
}

const KEY = "active";
const decoder = new TextDecoder();
const encoder = new TextEncoder();

export type LeadershipState = "standby" | "active";

export class Leadership {
  private kv: KV | undefined;
  private state: LeadershipState = "standby";
  private revision = 0;
  private termRevision = 0;
  /** performance.now() until which this process may act as the active one. */
  private validUntil = 0;
  private holder: LeaseHolder | undefined;
  private timer: NodeJS.Timeout | undefined;
  private running = false;
  private stopped: Promise<void> | undefined;
  private busy: Promise<void> = Promise.resolve();

  constructor(
    private readonly nc: NatsConnection,
    private readonly o: LeadershipOptions,
  ) {}

  /** How often a standby looks whether the lease is free (TTL/8: a takeover's delay after expiry). */
  get intervalMs(): number {
    return Math.max(50, Math.floor(this.o.ttlMs / 8));
  }

  /**
   * How often the active coordinator renews: TTL/4. Each renewal is a JetStream write and its
   * reply, so on an idle fleet renewals were the coordinator's most frequent work after
   * heartbeats (docs/performance.md, "The fleet's idle cost"); TTL/8 renewed twice as often for
   * no gain, because how soon a standby takes over depends on the TTL and its own looks, not on
   * this. nextStepInMs keeps the margin a late renewal needs.
   */
  get renewEveryMs(): number {
    return Math.max(50, Math.floor(this.o.ttlMs / 4));
  }

  /**
   * The wait before the next step. A standby looks every intervalMs. The active one renews
   * renewEveryMs after its last step, but sends each renewal at least one look (TTL/8) before
   * its own end of the lease: a renewal whose reply came back late (a loaded machine) moved
   * that end less far, and waiting the full period would let the lease run out.
   */
  nextStepInMs(now = performance.now()): number {
    if (this.state !== "active") return this.intervalMs;
    return Math.max(0, Math.min(this.renewEveryMs, this.validUntil - now - this.intervalMs));
  }

  /**
   * How much earlier than the server this process counts its lease as over: room for the
   * server's clock running a little slower than ours, and for the time a write spends between
   * our check and the server.
   */
  get marginMs(): number {
    return Math.max(100, Math.floor(this.o.ttlMs / 5));
  }

  async start(): Promise<void> {
    try {
      this.kv = await new Kvm(this.nc).create(this.o.bucket, { storage: StorageType.File, history: 1, ttl: this.o.ttlMs, replicas: this.o.replicas });
    } catch (err) {
      throw replicasError(err, this.o.replicas) ?? err;
    }
    this.running = true;
    await this.step();
    this.schedule();
  }

  /** True while this process holds an unexpired lease (by its own, earlier, reckoning). */
  isActive(): boolean {
    return this.state === "active" && performance.now() < this.validUntil;
  }

  /** The revision at which this process took the lease: its term (0 when standby). */
  get term(): number {
    return this.state === "active" ? this.termRevision : 0;
  }

  /** The holder last seen in the lease, this process included; undefined when none is. */
  get active(): LeaseHolder | undefined {
    return this.isActive() ? this.o.self : this.holder;
  }

  private schedule(): void {
    if (!this.running) return;
    this.timer = setTimeout(() => {
      this.busy = this.step().finally(() => this.schedule());
    }, this.nextStepInMs());
  }

  private async step(): Promise<void> {
    if (this.state === "active") await this.renew();
    else await this.campaign();
  }

  private async renew(): Promise<void> {
    // A process resumed after a pause finds its lease over before it tries anything.
    if (!this.isActive()) return this.depose("the lease expired before it was renewed");
    const sentAt = performance.now();
    try {
      this.revision = await this.kv!.update(KEY, encode(this.o.self), this.revision, Math.max(100, this.o.ttlMs / 2));
      if (this.state === "active") this.validUntil = sentAt + this.o.ttlMs - this.marginMs;
    } catch (err) {
      if (isWrongLastSequence(err)) return this.depose("another coordinator holds the lease");
      // NATS is unreachable: keep trying until the lease runs out.
      this.o.log.warn({ err: errorMessage(err), leftMs: Math.round(this.validUntil - performance.now()) }, "lease renewal failed; retrying");
      if (!this.isActive()) this.depose("the lease expired: renewals failed");
    }
  }

  private async campaign(): Promise<void> {
    let entry;
    try {
      entry = await this.kv!.get(KEY);
    } catch (err) {
      this.o.log.debug({ err: errorMessage(err) }, "cannot read the lease");
      return;
    }
    if (entry && entry.operation === "PUT") {
      this.holder = decode(entry.value);
      return;
    }
    this.holder = undefined;
    const sentAt = performance.now();
    try {
      const revision = await this.kv!.create(KEY, encode(this.o.self));
      if (!this.running) return;
      this.revision = revision;
      this.termRevision = revision;
      this.validUntil = sentAt + this.o.ttlMs - this.marginMs;
      this.state = "active";
      this.o.log.info({ term: revision, coordinatorId: this.o.self.id, addr: this.o.self.addr, leaseTtlMs: this.o.ttlMs }, "elected the active coordinator");
      this.o.onElected(revision);
    } catch (err) {
      // Another standby was quicker (wrong last sequence), or NATS is away: look again next time.
      this.o.log.debug({ err: errorMessage(err) }, "lease not taken");
    }
  }

  private depose(reason: string): void {
    if (this.state !== "active") return;
    this.state = "standby";
    this.validUntil = 0;
    this.o.log.warn({ term: this.termRevision, reason }, "no longer the active coordinator");
    this.o.onDeposed(reason);
  }

  /** Gives a held lease back (a term that could not start); the campaign goes on. */
  async resign(): Promise<void> {
    if (this.state !== "active") return;
    const revision = this.revision;
    this.depose("resigned");
    await this.kv?.delete(KEY, { previousSeq: revision }).catch(() => undefined);
  }

  /**
   * Idempotent. An active coordinator gives its lease back (a delete on its revision), so a
   * standby takes over at its next look instead of after a TTL.
   */
  stop(): Promise<void> {
    return (this.stopped ??= (async () => {
      this.running = false;
      if (this.timer) clearTimeout(this.timer);
      await this.busy.catch(() => undefined);
      if (this.state === "active") {
        const revision = this.revision;
        this.depose("stopping");
        await this.kv?.delete(KEY, { previousSeq: revision }).catch((err) => this.o.log.warn({ err: errorMessage(err) }, "lease not released; a standby takes over when it expires"));
      }
    })());
  }
}

function encode(h: LeaseHolder): Uint8Array {
  return encoder.encode(JSON.stringify(h));
}

/** A lease value another process wrote: read defensively, it is only shown to clients. */
function decode(value: Uint8Array): LeaseHolder | undefined {
  try {
    const v = JSON.parse(decoder.decode(value)) as Partial<LeaseHolder>;
    if (typeof v.id === "string" && typeof v.addr === "string") return { id: v.id.slice(0, 200), addr: v.addr.slice(0, 200) };
  } catch {
    /* not ours */
  }
  return undefined;
}
