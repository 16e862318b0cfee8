// A coordinator process with standbys: it runs a Coordinator only while it holds the lease
// (leadership.ts). Each term gets a fresh Coordinator, which recovers from JetStream as a
// restart does; when the term ends (the lease is lost or given back) that Coordinator is closed
// behind its fence and the process goes back to standby, ready for a later term. Meanwhile the
// gRPC server stays up: a standby answers health NOT_SERVING and refuses calls with UNAVAILABLE
// naming the active coordinator.

import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { ConfigError, errorMessage } from "../shared/errors.js";
import type { Logger } from "../shared/logger.js";
import { connectNats } from "../shared/nats.js";
import { Names } from "../shared/subjects.js";
import { Coordinator } from "./coordinator.js";
import { unavailable } from "./errors.js";
import { Leadership, type LeaseHolder } from "./leadership.js";
import type { CoordinatorMetrics } from "./metrics.js";
import { COORDINATOR_DEFAULTS, type CoordinatorOptions } from "./options.js";
import type { NatsConnection } from "@nats-io/transport-node";

/** The message of a standby's UNAVAILABLE; clients (cli/client.ts) read the address from it. */
export function standbyMessage(active: LeaseHolder | undefined): string {
  return active
    ? `this coordinator is a standby; the active coordinator is ${active.addr}`
    : "this coordinator is a standby and no coordinator is active right now; one takes over within the lease TTL";
}

/** How long a closing term may take before the process moves on (its writes are fenced anyway). */
const CLOSE_TIMEOUT_MS = 10_000;

export class CoordinatorTerms {
  private leadership: Leadership | undefined;
  private leaseNc: NatsConnection | undefined;
  private current: Coordinator | undefined;
  /** Never started: what the gRPC services see between terms (the gate refuses first anyway). */
  private readonly idle: Coordinator;
  private ready = false;
  private placing: PlacementSpan | undefined;
  private chain: Promise<void> = Promise.resolve();
  private closing: Promise<void> | undefined;
  readonly self: LeaseHolder;
  /** What the gRPC services call: the Coordinator of the current term. */
  readonly facade: Coordinator;

  constructor(
    private readonly opts: CoordinatorOptions,
    private readonly log: Logger,
    private readonly metrics: CoordinatorMetrics,
    private readonly onFatal: (err: unknown) => void,
  ) {
    this.idle = new Coordinator(opts, log, metrics);
    this.self = {
      id: `${hostname().slice(0, 60)}-${process.pid}-${randomBytes(4).toString("hex")}`,
      addr: opts.advertiseAddr ?? `${opts.grpcHost === "0.0.0.0" || opts.grpcHost === "::" ? hostname() : opts.grpcHost}:${opts.grpcPort}`,
    };
    const target = (): Coordinator => this.current ?? this.idle;
    this.facade = new Proxy(this.idle, {
      get: (_t, prop) => {
        const c = target();
        const v = Reflect.get(c, prop, c) as unknown;
        return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(c) : v;
      },
      set: (_t, prop, value) => Reflect.set(target(), prop, value),
    });
  }

  /** Joins the election; resolves after the first look, and after the first term started when this process won it. */
  async start(): Promise<void> {
    this.leaseNc = await connectNats(this.opts.natsUrl, `shoal-coordinator-lease ${process.pid}`, this.log, { security: this.opts.natsSecurity, inboxPrefix: "_INBOX_coordinator" });
    this.leadership = new Leadership(this.leaseNc, {
      bucket: new Names(this.opts.prefix).leaderBucket,
      ttlMs: this.opts.leaseTtlMs ?? COORDINATOR_DEFAULTS.leaseTtlMs,
      replicas: this.opts.replicas ?? 1,
      self: this.self,
      log: this.log.child({ component: "leadership" }),
      onElected: (term) => this.beginTerm(term),
      onDeposed: (reason) => this.endTerm(reason),
    });
    await this.leadership.start();
    await this.chain;
    if (!this.leadership.isActive()) this.log.info({ active: this.leadership.active?.addr ?? null }, "standby: another coordinator is active");
  }

  /** The gRPC port is known once bound; the lease carries it from the next renewal on. */
  setPort(port: number): void {
    if (this.opts.advertiseAddr === undefined) this.self.addr = this.self.addr.replace(/:\d+$/, `:${port}`);
  }

  /** gRPC health: SERVING only for the active coordinator once its term has started. */
  serving(): boolean {
    return this.ready && (this.leadership?.isActive() ?? false);
  }

  /** Before every RPC: a standby refuses with UNAVAILABLE naming the active coordinator. */
  gate(): void {
    if (this.leadership?.isActive()) {
      // Elected but still recovering (the term's coordinator replays the results log first):
      // answering now would show an empty fleet and unknown batches.
      if (this.ready) return;
      throw unavailable("this coordinator was just elected and is recovering its state; try again in a moment");
    }
    throw unavailable(standbyMessage(this.leadership?.active));
  }

  isActive(): boolean {
    return this.leadership?.isActive() ?? false;
  }

  private beginTerm(term: number): void {
    this.chain = this.chain.then(async () => {
      if (!this.leadership?.isActive() || this.closing) return;
      const log = this.log.child({ term });
      const placing = new PlacementSpan(term, log);
      this.placing = placing;
      const c = new Coordinator(this.opts, log, this.metrics, {
        allows: () => this.leadership?.isActive() ?? false,
        refused: (subject) => log.debug({ subject }, "fenced: message not sent"),
        sent: (subject) => placing.sent(subject),
      });
      this.current = c;
      try {
        await c.start();
        if (this.current === c) this.ready = true;
        log.info("active coordinator serving");
      } catch (err) {
        if (this.current === c) this.current = undefined;
        await withTimeout(c.close());
        if (err instanceof ConfigError) return this.onFatal(err);
        // Give the lease back so another coordinator (or this one, at its next look) tries.
        log.error({ err: errorMessage(err) }, "the term could not start; giving the lease back");
        await this.leadership?.resign();
      }
    });
  }

  private endTerm(reason: string): void {
    this.ready = false;
    this.placing?.end();
    this.placing = undefined;
    const c = this.current;
    this.current = undefined;
    if (!c) return;
    this.log.warn({ reason }, "closing this term's coordinator; back to standby");
    this.chain = this.chain.then(() => withTimeout(c.close()));
  }

  /** Idempotent: closes the current term, then gives the lease back. */
  close(): Promise<void> {
    return (this.closing ??= (async () => {
      this.ready = false;
      const c = this.current;
      await withTimeout(this.chain);
      await withTimeout((c ?? this.current)?.close() ?? Promise.resolve());
      await this.leadership?.stop();
      await this.leaseNc?.close().catch(() => undefined);
    })());
  }
}

/**
 * When a term sent its first and last assignment, in wall-clock ms: logged at the first and at
 * the end of the term, so the spans of every term of every coordinator can be checked for
 * overlap (the network-namespace test does).
 */
class PlacementSpan {
  private first = 0;
  private last = 0;
  constructor(
    private readonly term: number,
    private readonly log: Logger,
  ) {}

  sent(subject: string): void {
    if (!subject.endsWith(".assign")) return;
    this.last = Date.now();
    if (this.first === 0) {
      this.first = this.last;
      this.log.info({ term: this.term, firstAssignAt: this.first }, "term placing");
    }
  }

  end(): void {
    this.log.info({ term: this.term, firstAssignAt: this.first || null, lastAssignAt: this.last || null }, "term ended");
  }
}

async function withTimeout(p: Promise<unknown>): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([p.catch(() => undefined), new Promise((r) => (timer = setTimeout(r, CLOSE_TIMEOUT_MS)))]);
  clearTimeout(timer);
}
