import type { JetStreamClient } from "@nats-io/jetstream";
import { ResultLogEntry, type ItemOutcome } from "../proto/gen/shoal/v1/wire.js";
import { encodeMessage } from "../shared/codec.js";
import { errorMessage } from "../shared/errors.js";
import type { Logger } from "../shared/logger.js";
import type { Names } from "../shared/subjects.js";
import { itemTraceHeaders } from "../shared/trace-headers.js";
import type { TraceContext } from "../shared/tracing.js";

export interface ResultPublisherOptions {
  workerId: string;
  /** How long outcomes wait to share one JetStream write. */
  flushIntervalMs: number;
  maxOutcomesPerMessage: number;
}

interface Pending {
  outcome: ItemOutcome;
  /** The item's span on this worker, sent in the message's headers (shared/trace-headers.ts). */
  trace: TraceContext | undefined;
  resolve: () => void;
}

/**
 * Publishes item outcomes durably to the results stream, many per message (group commit): one
 * JetStream write per item would cap the whole fleet near the stream's write rate. An outcome is
 * kept and re-sent until JetStream acknowledges it, so a result survives a nats-server restart
 * or a coordinator that is down; the returned promise resolves only once it is stored.
 */
export class ResultPublisher {
  private pending = new Map<string, Pending[]>();
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> = Promise.resolve();
  private closed = false;

  constructor(
    private readonly js: JetStreamClient,
    private readonly names: Names,
    private readonly opts: ResultPublisherOptions,
    private readonly log: Logger,
  ) {}

  publish(batchId: string, outcome: ItemOutcome, trace?: TraceContext): Promise<void> {
    return new Promise((resolve) => {
      let list = this.pending.get(batchId);
      if (!list) this.pending.set(batchId, (list = []));
      list.push({ outcome, trace, resolve });
      if (list.length >= this.opts.maxOutcomesPerMessage) this.flushSoon(0);
      else this.flushSoon(this.opts.flushIntervalMs);
    });
  }

  private flushSoon(delay: number): void {
    if (this.timer && delay > 0) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.flushing = this.flushing.then(() => this.flush());
    }, delay);
  }

  private async flush(): Promise<void> {
    const batches = this.pending;
    this.pending = new Map();
    await Promise.all(
      [...batches].map(async ([batchId, list]) => {
        for (let i = 0; i < list.length; i += this.opts.maxOutcomesPerMessage) {
          await this.publishUntilStored(batchId, list.slice(i, i + this.opts.maxOutcomesPerMessage));
        }
      }),
    );
  }

  private async publishUntilStored(batchId: string, group: Pending[]): Promise<void> {
    const data = encodeMessage(ResultLogEntry, {
      entry: { $case: "results", results: { workerId: this.opts.workerId, outcomes: group.map((p) => p.outcome) } },
    });
    const headers = group.some((p) => p.trace) ? itemTraceHeaders(group.map((p) => [p.outcome.lease?.token ?? "", p.trace])) : undefined;
    for (let attempt = 1; ; attempt++) {
      try {
        await this.js.publish(this.names.results(batchId), data, { timeout: 5000, headers });
        for (const p of group) p.resolve();
        return;
      } catch (err) {
        if (this.closed && attempt > 3) {
          // Giving up only at shutdown: the coordinator will see these leases vanish with the
          // worker and place the items again.
          this.log.error({ batchId, outcomes: group.length, err: errorMessage(err) }, "results not stored at shutdown");
          for (const p of group) p.resolve();
          return;
        }
        this.log.warn({ batchId, outcomes: group.length, attempt, err: errorMessage(err) }, "results not stored yet, retrying");
        await new Promise((r) => setTimeout(r, Math.min(2000, 100 * attempt)));
      }
    }
  }

  /** Flushes what is pending and waits until it is stored (or given up at shutdown). */
  async close(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.closed = true;
    this.flushing = this.flushing.then(() => this.flush());
    await this.flushing;
  }
}
