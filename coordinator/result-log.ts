import { AckPolicy, DeliverPolicy, jetstream, type ConsumerMessages, type JetStreamClient, type JetStreamManager, type JsMsg } from "@nats-io/jetstream";
import type { MsgHdrs, NatsConnection } from "@nats-io/transport-node";
import { ResultLogEntry, type LeaseRevoked } from "../proto/gen/shoal/v1/wire.js";
import { decodeMessage, encodeMessage } from "../shared/codec.js";
import { errorMessage } from "../shared/errors.js";
import type { Logger } from "../shared/logger.js";
import type { Names } from "../shared/subjects.js";

/**
 * `headers`: the message's NATS headers (the items' trace context, shared/trace-headers.ts);
 * `storedAtMs`: when nats-server stored the message (its JetStream timestamp, wall clock in ms).
 */
export type LogEntryHandler = (entry: ResultLogEntry, subject: string, headers?: MsgHdrs, storedAtMs?: () => number) => void;
/** Told about each live entry that does not decode, so it is counted as a protocol error. */
export type UnreadableEntryHandler = (subject: string, problem: string) => void;

/**
 * The results stream seen from the coordinator: a durable consumer for live outcomes (so
 * results published while the coordinator was down are not lost), a per-batch replay for
 * rebuilding state at start, and revocations written before an item is placed again.
 *
 * Entries of finished batches are not purged by subject: on nats-server before 2.9.15 (Debian 12
 * ships 2.9.10) a filtered purge moves durable consumers past unread messages of *other*
 * subjects, which lost results of running batches (nats-io/nats-server#3838). The stream's age
 * limit removes old entries instead.
 */
export class ResultLog {
  private readonly js: JetStreamClient;
  private messages: ConsumerMessages | undefined;
  private loop: Promise<void> | undefined;
  private stopped = false;
  /** Handled entries whose acks go out together (ackSoon). */
  private unacked: JsMsg[] = [];

  constructor(
    nc: NatsConnection,
    private readonly jsm: JetStreamManager,
    private readonly names: Names,
    private readonly log: Logger,
  ) {
    this.js = jetstream(nc);
  }

  /** Reads every entry stored for one batch, in order. */
  async replay(batchId: string): Promise<ResultLogEntry[]> {
    const subject = this.names.results(batchId);
    const consumer = await this.js.consumers.get(this.names.resultsStream, { filter_subjects: subject, deliver_policy: DeliverPolicy.All });
    const info = await consumer.info(true);
    const out: ResultLogEntry[] = [];
    if (info.num_pending === 0) {
      await consumer.delete().catch(() => undefined);
      return out;
    }
    const iter = await consumer.consume();
    for await (const m of iter) {
      try {
        out.push(decodeMessage(ResultLogEntry, m.subject, m.data));
      } catch (err) {
        this.log.error({ batchId, seq: m.seq, err: errorMessage(err) }, "skipping an unreadable results entry");
      }
      if (m.info.pending === 0) break;
    }
    await iter.close().catch(() => undefined);
    return out;
  }

  async startConsuming(handler: LogEntryHandler, onUnreadable?: UnreadableEntryHandler): Promise<void> {
    const stream = this.names.resultsStream;
    const durable = this.names.resultsConsumer;
    try {
      await this.jsm.consumers.info(stream, durable);
    } catch {
      await this.jsm.consumers.add(stream, {
        durable_name: durable,
        ack_policy: AckPolicy.Explicit,
        deliver_policy: DeliverPolicy.All,
        filter_subject: this.names.allResults,
        max_ack_pending: 10_000,
        ack_wait: 30 * 1e9,
      });
    }
    const consumer = await this.js.consumers.get(stream, durable);
    this.messages = await consumer.consume({ max_messages: 512 });
    const messages = this.messages;
    this.loop = (async () => {
      for await (const m of messages) {
        // Anything can be published into the stream: neither a garbled entry nor a bug in
        // handling one may stop the consumer, or results would stop arriving.
        let entry: ResultLogEntry | undefined;
        try {
          entry = decodeMessage(ResultLogEntry, m.subject, m.data);
        } catch (err) {
          if (onUnreadable) onUnreadable(m.subject, errorMessage(err));
          else this.log.error({ subject: m.subject, seq: m.seq, err: errorMessage(err) }, "dropping an unreadable results entry");
        }
        if (entry) {
          try {
            handler(entry, m.subject, m.headers, () => Number(m.timestampNanos) / 1e6);
          } catch (err) {
            this.log.error({ subject: m.subject, seq: m.seq, err: errorMessage(err) }, "results entry not applied");
          }
        }
        this.ackSoon(m);
      }
    })();
  }

  /**
   * Acks are sent together once the messages that arrived in this turn of the event loop are
   * handled: nats.js writes to the socket once per turn that published something, and each entry
   * handled would otherwise be a turn (a write, and a wake-up of nats-server) of its own. An ack
   * only stops redelivery, and is still sent only after its entry was applied; one lost at a
   * stop means a redelivery to the next coordinator, which the batch rules ignore.
   */
  private ackSoon(m: JsMsg): void {
    this.unacked.push(m);
    if (this.unacked.length === 1) setImmediate(() => this.flushAcks());
  }

  private flushAcks(): void {
    const list = this.unacked;
    this.unacked = [];
    for (const m of list) {
      try {
        m.ack();
      } catch (err) {
        this.log.debug({ subject: m.subject, seq: m.seq, err: errorMessage(err) }, "results entry not acked; it will be delivered again");
      }
    }
  }

  /** Durable before the item is placed again, so a replay ignores the old attempt too. */
  async revoke(batchId: string, revoked: LeaseRevoked): Promise<void> {
    const data = encodeMessage(ResultLogEntry, { entry: { $case: "revoked", revoked } });
    for (let attempt = 1; ; attempt++) {
      try {
        await this.js.publish(this.names.results(batchId), data, { timeout: 5000 });
        return;
      } catch (err) {
        // Stopped (or fenced, no longer the active coordinator): the next coordinator finds the
        // attempt unrevoked and treats the item as a restart does.
        if (this.stopped) throw err;
        this.log.warn({ batchId, attempt, err: errorMessage(err) }, "revocation not stored yet, retrying");
        await new Promise((r) => setTimeout(r, Math.min(2000, 100 * attempt)));
      }
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.messages?.close().catch(() => undefined);
    await this.loop?.catch(() => undefined);
    this.flushAcks();
  }
}
