// JetStream publishes with their acknowledgements gathered on one subscription. nats.js's
// js.publish() is a request per message: a promise, a timer and an Error object (built to
// carry a stack in case it fails) each, which made the worker's artifact writes cost more CPU
// than the bytes they carry (two publishes per image; docs/performance.md). Here every publish
// has a reply subject under one wildcard subscription on this connection's inbox prefix, its
// pending entry is a map slot, and one sweep times out what the server never answered. The
// guarantee is the same as js.publish(): the promise resolves only with the stream's PubAck
// (the message is stored), and rejects with a JetStreamApiError carrying the server's error
// code (storage-errors.ts reads it) or a timeout.

import { JetStreamApiError } from "@nats-io/jetstream";
import { nuid, type MsgHdrs, type Msg, type NatsConnection, type Subscription } from "@nats-io/transport-node";

export interface PubAck {
  stream: string;
  seq: number;
  duplicate?: boolean;
}

interface Waiting {
  resolve: (ack: PubAck) => void;
  reject: (err: Error) => void;
  deadline: number;
  subject: string;
}

export class JetStreamTimeoutError extends Error {
  override readonly name = "TimeoutError";
}

/** Publishes into JetStream streams, acknowledgements gathered on one subscription. start() first; stop() is idempotent. */
export class JetStreamPublisher {
  private sub: Subscription | undefined;
  private sweepTimer: NodeJS.Timeout | undefined;
  private readonly waiting = new Map<number, Waiting>();
  private readonly replyBase: string;
  private next = 0;

  /** `inboxPrefix`: a subject prefix this connection may subscribe below (the worker's `_INBOX_<id>`). */
  constructor(
    private readonly nc: NatsConnection,
    inboxPrefix: string,
    private readonly sweepMs = 250,
  ) {
    this.replyBase = `${inboxPrefix}.jsack.${nuid.next()}.`;
  }

  start(): void {
    if (this.sub) return;
    this.sub = this.nc.subscribe(`${this.replyBase}*`, { callback: (err, msg) => void (err || this.onAck(msg)) });
  }

  publish(subject: string, data: Uint8Array | string, opts: { timeoutMs: number; headers?: MsgHdrs }): Promise<PubAck> {
    if (!this.sub) return Promise.reject(new Error("JetStreamPublisher is not started"));
    const id = ++this.next;
    return new Promise<PubAck>((resolve, reject) => {
      this.waiting.set(id, { resolve, reject, deadline: performance.now() + opts.timeoutMs, subject });
      // The sweep runs only while writes wait: an idle process is not woken 4 times a second.
      if (!this.sweepTimer) {
        this.sweepTimer = setInterval(() => this.sweep(), this.sweepMs);
        this.sweepTimer.unref();
      }
      try {
        // nats.js refuses a message over max_payload here (InvalidArgumentError), as js.publish does.
        this.nc.publish(subject, data, { reply: `${this.replyBase}${id}`, ...(opts.headers ? { headers: opts.headers } : {}) });
      } catch (err) {
        this.waiting.delete(id);
        reject(err as Error);
      }
    });
  }

  /** Rejects whatever still waits and unsubscribes. */
  stop(): void {
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    this.sweepTimer = undefined;
    this.sub?.unsubscribe();
    this.sub = undefined;
    for (const w of this.waiting.values()) w.reject(new Error(`publish to ${w.subject} abandoned: publisher stopped`));
    this.waiting.clear();
  }

  private onAck(msg: Msg): void {
    const id = Number(msg.subject.slice(this.replyBase.length));
    const w = this.waiting.get(id);
    if (!w) return; // answered after its timeout
    this.waiting.delete(id);
    // A status reply (503: no stream listens on the subject) has headers and no body.
    const code = msg.headers?.code ?? 0;
    if (code >= 300 && msg.data.length === 0) {
      w.reject(new Error(code === 503 ? `no responders: no stream stores ${w.subject}` : `status ${code} publishing to ${w.subject}`));
      return;
    }
    let body: { stream?: string; seq?: number; duplicate?: boolean; error?: { code: number; err_code?: number; description: string } };
    try {
      body = JSON.parse(new TextDecoder().decode(msg.data)) as typeof body;
    } catch {
      w.reject(new Error(`unreadable JetStream acknowledgement for ${w.subject}`));
      return;
    }
    if (body.error) w.reject(new JetStreamApiError({ code: body.error.code, err_code: body.error.err_code ?? 0, description: body.error.description }));
    else if (typeof body.stream === "string" && typeof body.seq === "number") w.resolve({ stream: body.stream, seq: body.seq, ...(body.duplicate ? { duplicate: true } : {}) });
    else w.reject(new Error(`JetStream acknowledgement for ${w.subject} has no stream and sequence`));
  }

  private sweep(): void {
    const now = performance.now();
    for (const [id, w] of this.waiting) {
      if (now > w.deadline) {
        this.waiting.delete(id);
        w.reject(new JetStreamTimeoutError(`no JetStream acknowledgement for ${w.subject} in time`));
      }
    }
    if (this.waiting.size === 0) {
      clearInterval(this.sweepTimer);
      this.sweepTimer = undefined;
    }
  }
}
