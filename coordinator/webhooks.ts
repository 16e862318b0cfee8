// Batch webhooks, signed as the Standard Webhooks specification says (webhook-id,
// webhook-timestamp, webhook-signature). A delivery is recorded in KV before it is attempted and
// removed once the receiver answered 2xx, so a coordinator restart resumes it instead of
// dropping it. Retries back off; the webhook-id is stable, so receivers can de-duplicate.

import type { KV } from "@nats-io/kv";
import { Webhook as Signer } from "standardwebhooks";
import { BatchState, ItemStatus, type Batch, type Webhook } from "../proto/gen/shoal/v1/shoal.js";
import { errorMessage } from "../shared/errors.js";
import type { Logger } from "../shared/logger.js";

export const WEBHOOK_EVENTS: Record<number, string> = {
  [BatchState.BATCH_STATE_COMPLETED]: "batch.completed",
  [BatchState.BATCH_STATE_FAILED]: "batch.failed",
  [BatchState.BATCH_STATE_CANCELLED]: "batch.cancelled",
};

export interface WebhookOptions {
  /** Delays before each retry; the delivery is abandoned (and logged) after the last. */
  retryDelaysMs: number[];
  timeoutMs: number;
}

interface PendingDelivery {
  batchId: string;
  url: string;
  secret: string;
  /** Wanted events; empty means all. The event itself follows from the stored terminal state. */
  events: string[];
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

  constructor(
    private readonly kv: KV,
    private readonly loadBatch: (batchId: string) => Promise<Batch | undefined>,
    private readonly opts: WebhookOptions,
    private readonly log: Logger,
  ) {}

  /** Resumes deliveries a previous coordinator did not finish. */
  async start(): Promise<void> {
    for await (const key of await this.kv.keys()) {
      const e = await this.kv.get(key);
      if (!e || e.operation !== "PUT") continue;
      try {
        const p = JSON.parse(e.string()) as PendingDelivery;
        this.schedule(p, 0, 0);
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
    const pending: PendingDelivery = { batchId, url: webhook.url, secret: webhook.secret, events: webhook.events };
    await this.kv.put(batchId, JSON.stringify(pending));
    return pending;
  }

  /** Called once the terminal batch is stored. */
  send(pending: PendingDelivery | undefined): void {
    if (pending) this.schedule(pending, 0, 0);
  }

  private schedule(p: PendingDelivery, attempt: number, delayMs: number): void {
    if (this.closed) return;
    const t = setTimeout(() => {
      this.timers.delete(t);
      void this.deliver(p, attempt);
    }, delayMs);
    t.unref();
    this.timers.add(t);
  }

  private async deliver(p: PendingDelivery, attempt: number): Promise<void> {
    const log = this.log.child({ batchId: p.batchId, attempt: attempt + 1 });
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
      const res = await fetch(p.url, { method: "POST", headers, body, signal: AbortSignal.timeout(this.opts.timeoutMs) });
      if (res.status < 200 || res.status >= 300) throw new Error(`receiver answered HTTP ${res.status}`);
      await res.body?.cancel();
      await this.kv.delete(p.batchId);
      log.info({ status: res.status }, "webhook delivered");
    } catch (err) {
      const delay = this.opts.retryDelaysMs[attempt];
      if (delay === undefined) {
        log.error({ err: errorMessage(err) }, "webhook not delivered; giving up");
        await this.kv.delete(p.batchId).catch(() => undefined);
        return;
      }
      log.warn({ err: errorMessage(err), retryInMs: delay }, "webhook not delivered; will retry");
      this.schedule(p, attempt + 1, delay);
    }
  }

  close(): void {
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
  }
}
