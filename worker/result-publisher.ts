import { ResultLogEntry, type ItemOutcome } from "../proto/gen/shoal/v1/wire.js";
import { encodeMessage } from "../shared/codec.js";
import type { JetStreamPublisher } from "../shared/jetstream-publisher.js";
import type { Logger } from "../shared/logger.js";
import { storageError } from "../shared/storage-errors.js";
import type { Names } from "../shared/subjects.js";
import { itemTraceHeaders } from "../shared/trace-headers.js";
import type { TraceContext } from "../shared/tracing.js";

export interface ResultPublisherOptions {
  workerId: string;
  maxOutcomesPerMessage: number;
  /** How long one write waits for the stream's acknowledgement before it is sent again (default 5000). */
  ackTimeoutMs?: number;
  /** The first retry's delay; each further one waits this much longer, up to 2 s (default 100). */
  retryStepMs?: number;
}

interface Pending {
  outcome: ItemOutcome;
  /** The item's span on this worker, sent in the message's headers (shared/trace-headers.ts). */
  trace: TraceContext | undefined;
  resolve: () => void;
}

/** What the worker hands its results to: the publisher whose acks are gathered on one subscription. */
export type AckedPublisher = Pick<JetStreamPublisher, "publish">;

/**
 * Publishes item outcomes durably to the results stream, many per message (group commit): one
 * JetStream write per item would cap the whole fleet near the stream's write rate. The group is
 * whatever arrived while the previous write was in flight: with none in flight an outcome is
 * written after the current turn of the event loop (the outcomes of that turn share it), else
 * it waits for the write in flight to be stored and goes with everything else that waited. A
 * fixed window (it was 3 ms) added its length to every outcome at low rates and was shorter
 * than one write at high ones; this one costs nothing when idle and grows with the load. An outcome is
 * kept and re-sent until JetStream acknowledges it, so a result survives a nats-server restart
 * or a coordinator that is down; the returned promise resolves only once it is stored.
 *
 * Writes go through the worker's JetStreamPublisher (shared/jetstream-publisher.ts), as artifact
 * writes do: a pending write is a map slot answered on one subscription, not a nats.js request
 * (a promise, a timer and an Error per message). Same guarantee: only the stream's PubAck counts.
 */
export class ResultPublisher {
  private pending = new Map<string, Pending[]>();
  /** A write of what is pending is asked for and has not taken it yet. */
  private scheduled = false;
  private flushing: Promise<void> = Promise.resolve();
  private closed = false;
  private readonly store: string;

  constructor(
    private readonly publisher: AckedPublisher,
    private readonly names: Names,
    private readonly opts: ResultPublisherOptions,
    private readonly log: Logger,
  ) {
    this.store = `the results stream (${names.resultsStream})`;
  }

  publish(batchId: string, outcome: ItemOutcome, trace?: TraceContext): Promise<void> {
    return new Promise((resolve) => {
      let list = this.pending.get(batchId);
      if (!list) this.pending.set(batchId, (list = []));
      list.push({ outcome, trace, resolve });
      this.flushSoon();
    });
  }

  /** Asks for a write of what is pending: after this turn, and after the write in flight. */
  private flushSoon(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.flushing = this.flushing.then(() => this.flush());
    });
  }

  private async flush(): Promise<void> {
    // From here on, new outcomes ask for the next write (they wait for this one).
    this.scheduled = false;
    const batches = this.pending;
    this.pending = new Map();
    const writes: Promise<void>[] = [];
    for (const [batchId, list] of batches) {
      for (let i = 0; i < list.length; i += this.opts.maxOutcomesPerMessage) {
        writes.push(this.publishUntilStored(batchId, list.slice(i, i + this.opts.maxOutcomesPerMessage)));
      }
    }
    await Promise.all(writes);
  }

  private async publishUntilStored(batchId: string, group: Pending[]): Promise<void> {
    const data = encodeMessage(ResultLogEntry, {
      entry: { $case: "results", results: { workerId: this.opts.workerId, outcomes: group.map((p) => p.outcome) } },
    });
    const headers = group.some((p) => p.trace) ? itemTraceHeaders(group.map((p) => [p.outcome.lease?.token ?? "", p.trace])) : undefined;
    const subject = this.names.results(batchId);
    for (let attempt = 1; ; attempt++) {
      try {
        await this.publisher.publish(subject, data, { timeoutMs: this.opts.ackTimeoutMs ?? 5000, ...(headers ? { headers } : {}) });
        for (const p of group) p.resolve();
        return;
      } catch (err) {
        const e = storageError(err, this.store, "the stream's limits on the coordinator (--retention)");
        // A message over the server's max_payload (or the stream's max_msg_size) can never be
        // stored as it is: its halves can. One outcome alone keeps being retried as any write.
        if (e.code === "RECORD_TOO_LARGE" && group.length > 1) {
          this.log.warn({ batchId, outcomes: group.length, bytes: data.length, err: e.message }, "results message too large; splitting it");
          const half = Math.ceil(group.length / 2);
          await Promise.all([this.publishUntilStored(batchId, group.slice(0, half)), this.publishUntilStored(batchId, group.slice(half))]);
          return;
        }
        if (this.closed && attempt > 3) {
          // Giving up only at shutdown: the coordinator will see these leases vanish with the
          // worker and place the items again.
          this.log.error({ batchId, outcomes: group.length, code: e.code, err: e.message }, "results not stored at shutdown");
          for (const p of group) p.resolve();
          return;
        }
        this.log.warn({ batchId, outcomes: group.length, attempt, code: e.code, err: e.message }, "results not stored yet, retrying");
        await new Promise((r) => setTimeout(r, Math.min(2000, (this.opts.retryStepMs ?? 100) * attempt)));
      }
    }
  }

  /** Flushes what is pending and waits until it is stored (or given up at shutdown). */
  async close(): Promise<void> {
    this.closed = true;
    this.flushing = this.flushing.then(() => this.flush());
    await this.flushing;
  }
}
