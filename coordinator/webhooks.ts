// Batch webhooks, signed as the Standard Webhooks specification says (webhook-id,
// webhook-timestamp, webhook-signature). A delivery is recorded in KV before it is attempted and
// removed once the receiver answered 2xx, so a coordinator restart resumes it instead of
// dropping it. Retries back off with jitter and their count is stored with the delivery; the
// webhook-id is stable, so receivers can de-duplicate. Targets are checked against SSRF in
// webhook-target.ts; the secret lives only in the pending delivery and goes with it.

import type { KV } from "@nats-io/kv";
import { Webhook as Signer } from "standardwebhooks";
import { BatchState, ItemStatus, type Batch, type Webhook } from "../proto/gen/shoal/v1/shoal.js";
import { errorMessage } from "../shared/errors.js";
import type { Logger } from "../shared/logger.js";
import { postWebhook } from "./webhook-target.js";

export const WEBHOOK_EVENTS: Record<number, string> = {
  [BatchState.BATCH_STATE_COMPLETED]: "batch.completed",
  [BatchState.BATCH_STATE_FAILED]: "batch.failed",
  [BatchState.BATCH_STATE_CANCELLED]: "batch.cancelled",
};

export interface WebhookOptions {
  /** Delays before each retry (each jittered by ±25 %); the delivery is abandoned (and logged) after the last. */
  retryDelaysMs: number[];
  timeoutMs: number;
  /** --webhook-allow-private: let deliveries reach loopback, private, link-local addresses. */
  allowPrivate: boolean;
  /** Deliveries in flight at once; the others wait their turn. */
  concurrency: number;
}

/** Put in a stored record's webhook in place of the secret, once the secret is out of it. */
export const SECRET_REMOVED = "(removed)";

/** The webhook as the terminal record keeps it: the secret is marked removed, not kept. */
export function withoutSecret(webhook: Webhook | undefined): Webhook | undefined {
  if (!webhook?.url) return webhook;
  return { ...webhook, secret: webhook.secret ? SECRET_REMOVED : "" };
}

interface PendingDelivery {
  batchId: string;
  url: string;
  secret: string;
  /** Wanted events; empty means all. The event itself follows from the stored terminal state. */
  events: string[];
  /** Attempts started so far, stored before each one, so a restart neither resets nor repeats the count. */
  attempts?: number;
}

/** A delay of `ms` ± 25 %, so receivers coming back are not hit by every retry at once. */
export function jittered(ms: number, random: () => number = Math.random): number {
  return Math.round(ms * (0.75 + random() * 0.5));
}

/** The JSON body: the batch and each item's outcome, in item order. */
export function webhookPayload(event: string, batch: Batch, now = new Date()): string {
  return JSON.stringify({
    type: event,
    timestamp: now.toISOString(),
    data: {
      batch_id: batch.id,
      state: BatchState[batch.state].replace("BATCH_STATE_", "").toLowerCase(),
      total: batch.total,
      succeeded: batch.succeeded,
      failed: batch.failed,
      cancelled: batch.cancelled,
      labels: batch.labels,
      created_at: batch.createdAt?.toISOString(),
      completed_at: batch.completedAt?.toISOString(),
      results: batch.results.map((r) => ({
        index: r.index,
        status: ItemStatus[r.status].replace("ITEM_STATUS_", "").toLowerCase(),
        error: r.error ? { code: r.error.code, message: r.error.message, retryable: r.error.retryable } : undefined,
        artifacts: r.artifacts.map((a) => ({ name: a.name, content_type: a.contentType, size_bytes: a.sizeBytes, sha256: a.sha256, uri: a.uri })),
      })),
    },
  });
}

export class WebhookSender {
  private readonly timers = new Set<NodeJS.Timeout>();
  private closed = false;
  private inFlight = 0;
  private readonly waiting: (() => void)[] = [];

  constructor(
    private readonly kv: KV,
    private readonly loadBatch: (batchId: string) => Promise<Batch | undefined>,
    private readonly opts: WebhookOptions,
    private readonly log: Logger,
  ) {}

  /** Resumes deliveries a previous coordinator did not finish, from their stored attempt count. */
  async start(): Promise<void> {
    for await (const key of await this.kv.keys()) {
      const e = await this.kv.get(key);
      if (!e || e.operation !== "PUT") continue;
      try {
        const p = JSON.parse(e.string()) as PendingDelivery;
        this.schedule(p, 0);
      } catch (err) {
        this.log.warn({ key, err: errorMessage(err) }, "dropping an unreadable pending webhook");
        await this.kv.delete(key);
      }
    }
  }

  /**
   * Recorded before the terminal batch is written, so a crash between the two cannot lose the
   * delivery: at restart, a record whose batch is not terminal yet is kept for its finalize.
   */
  async record(batchId: string, webhook: Webhook | undefined): Promise<PendingDelivery | undefined> {
    if (!webhook?.url) return undefined;
    const pending: PendingDelivery = { batchId, url: webhook.url, secret: webhook.secret, events: webhook.events, attempts: 0 };
    await this.kv.put(batchId, JSON.stringify(pending));
    return pending;
  }

  /** Called once the terminal batch is stored. */
  send(pending: PendingDelivery | undefined): void {
    if (pending) this.schedule(pending, 0);
  }

  /**
   * The webhook a RetryBatch of `batchId` carries: the original's, with its secret while the
   * original's delivery still holds it. Once that delivery is done the secret is gone, and so
   * is the retry's webhook (it could only be sent unsigned); the caller logs nothing secret.
   */
  async inheritedWebhook(batchId: string, stored: Webhook | undefined): Promise<Webhook | undefined> {
    if (!stored?.url || stored.secret !== SECRET_REMOVED) return stored;
    const e = await this.kv.get(batchId).catch(() => null);
    if (e && e.operation === "PUT") {
      try {
        const p = JSON.parse(e.string()) as PendingDelivery;
        return { ...stored, secret: p.secret };
      } catch {
        /* unreadable: treated as gone */
      }
    }
    this.log.info({ batchId }, "the webhook secret of the original batch was deleted after its delivery; the retry batch has no webhook");
    return undefined;
  }

  private schedule(p: PendingDelivery, delayMs: number): void {
    if (this.closed) return;
    const t = setTimeout(() => {
      this.timers.delete(t);
      void this.withSlot(() => this.deliver(p));
    }, delayMs);
    t.unref();
    this.timers.add(t);
  }

  /** At most `concurrency` deliveries run at once; the rest wait in order. */
  private async withSlot(run: () => Promise<void>): Promise<void> {
    if (this.inFlight >= this.opts.concurrency) await new Promise<void>((r) => this.waiting.push(r));
    if (this.closed) return;
    this.inFlight++;
    try {
      await run();
    } finally {
      this.inFlight--;
      this.waiting.shift()?.();
    }
  }

  private async deliver(p: PendingDelivery): Promise<void> {
    const attempt = (p.attempts ?? 0) + 1;
    const log = this.log.child({ batchId: p.batchId, attempt });
    try {
      const batch = await this.loadBatch(p.batchId);
      if (!batch) {
        log.warn("batch of a pending webhook is gone; dropping the delivery");
        await this.kv.delete(p.batchId);
        return;
      }
      const event = WEBHOOK_EVENTS[batch.state];
      if (!event) return; // not terminal yet: its finalize will send it
      if (p.events.length > 0 && !p.events.includes(event)) {
        await this.kv.delete(p.batchId);
        return;
      }
      if (attempt > this.opts.retryDelaysMs.length + 1) {
        log.error({ attempts: attempt - 1 }, "webhook not delivered; giving up (no attempts left)");
        await this.kv.delete(p.batchId);
        return;
      }
      // The count is stored before the attempt: a crash mid-attempt still counts it.
      p.attempts = attempt;
      await this.kv.put(p.batchId, JSON.stringify(p));
      const body = webhookPayload(event, batch);
      const id = `${p.batchId}.${event}`;
      const now = new Date();
      const headers: Record<string, string> = {
        "content-type": "application/json",
        "user-agent": "shoal-webhooks/1",
        "webhook-id": id,
        "webhook-timestamp": String(Math.floor(now.getTime() / 1000)),
      };
      if (p.secret) headers["webhook-signature"] = new Signer(p.secret).sign(id, now, body);
      const code = await postWebhook(p.url, headers, body, { allowPrivate: this.opts.allowPrivate, timeoutMs: this.opts.timeoutMs });
      if (code >= 300 && code < 400) throw new Error(`receiver answered HTTP ${code}; redirects are not followed`);
      if (code < 200 || code >= 300) throw new Error(`receiver answered HTTP ${code}`);
      await this.kv.delete(p.batchId);
      log.info({ status: code }, "webhook delivered; its secret is deleted");
    } catch (err) {
      const delay = this.opts.retryDelaysMs[attempt - 1];
      if (delay === undefined || this.closed) {
        if (this.closed) return; // the next start resumes it from the stored count
        log.error({ err: errorMessage(err) }, "webhook not delivered; giving up");
        await this.kv.delete(p.batchId).catch(() => undefined);
        return;
      }
      const wait = jittered(delay);
      log.warn({ err: errorMessage(err), retryInMs: wait }, "webhook not delivered; will retry");
      this.schedule(p, wait);
    }
  }

  close(): void {
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    for (const w of this.waiting.splice(0)) w();
  }
}
