import { createHash } from "node:crypto";
import { DeliverPolicy, jetstream, type JetStreamClient, type JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { storageError } from "../shared/storage-errors.js";
import type { Names } from "../shared/subjects.js";

export interface IndexEntry {
  /** Stream sequence: the order batches were stored in, and the ListBatches page token. */
  seq: number;
  batchId: string;
}

/** How long one fetch of index entries waits for entries that were pending when it started. */
const FETCH_EXPIRES_MS = 2000;

/**
 * The list of batches, kept in JetStream so the coordinator's memory does not grow with every
 * batch it has ever seen. One stream, one subject per tenant, one small message (the batch id)
 * per stored batch, appended at submit and aged out with --retention like the records.
 *
 * Newest first is a tenant's subject read backwards. JetStream reads forwards only, so a page
 * reads the window of sequences just below the cursor with a filtered consumer (the server skips
 * other tenants' entries) and widens the window fourfold while the page is not full. A page
 * therefore costs about its own size when one tenant dominates, and a few windows when many
 * tenants interleave; never the number of stored batches.
 */
export class BatchIndex {
  private readonly js: JetStreamClient;

  constructor(
    nc: NatsConnection,
    private readonly jsm: JetStreamManager,
    private readonly names: Names,
  ) {
    this.js = jetstream(nc);
  }

  private get store(): string {
    return `the batch index stream (${this.names.batchIndexStream})`;
  }

  async append(tenant: string, batchId: string): Promise<void> {
    try {
      // The batch id as message id: a retried append within the duplicate window is stored once.
      await this.js.publish(this.names.batchIndex(tenantToken(tenant)), new TextEncoder().encode(batchId), { msgID: batchId, timeout: 5000 });
    } catch (err) {
      throw storageError(err, this.store, "--batches-max-bytes");
    }
  }

  /**
   * A tenant's entries newest first, starting below `beforeSeq` (0: from the newest).
   * `firstWindow` is how many sequences the first read covers: a page size is a good guess.
   */
  async *newestFirst(tenant: string, beforeSeq: number, firstWindow: number): AsyncGenerator<IndexEntry> {
    const stream = this.names.batchIndexStream;
    const subject = this.names.batchIndex(tenantToken(tenant));
    let hi: number;
    if (beforeSeq > 0) {
      hi = beforeSeq - 1;
    } else {
      const last = await this.jsm.streams.getMessage(stream, { last_by_subj: subject });
      if (!last) return;
      hi = last.seq;
    }
    const first = (await this.jsm.streams.info(stream)).state.first_seq;
    let window = Math.max(16, firstWindow);
    while (hi >= first && hi > 0) {
      const lo = Math.max(first, hi - window + 1);
      const entries = await this.readRange(stream, subject, lo, hi, window);
      for (let i = entries.length - 1; i >= 0; i--) yield entries[i]!;
      hi = lo - 1;
      window *= 4;
    }
  }

  /** The subject's entries with lo <= seq <= hi, in order. */
  private async readRange(stream: string, subject: string, lo: number, hi: number, window: number): Promise<IndexEntry[]> {
    const consumer = await this.js.consumers.get(stream, { filter_subjects: subject, deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: lo });
    const info = await consumer.info(true);
    const out: IndexEntry[] = [];
    if (info.num_pending === 0) {
      await consumer.delete().catch(() => undefined);
      return out;
    }
    // Bounded fetches, not an open-ended consume: entries counted pending a moment ago may age
    // out (--retention) before they are delivered, and a consume would then wait for ever for
    // a message that no longer exists (a ListBatches hung to its deadline that way). A fetch
    // that comes back empty ends the range.
    for (;;) {
      const iter = await consumer.fetch({ max_messages: Math.min(window, 1000), expires: FETCH_EXPIRES_MS });
      let got = 0;
      let done = false;
      try {
        for await (const m of iter) {
          got++;
          if (m.seq > hi) {
            done = true;
            break;
          }
          out.push({ seq: m.seq, batchId: m.string() });
          if (m.seq >= hi || m.info.pending === 0) {
            done = true;
            break;
          }
        }
      } finally {
        await iter.close().catch(() => undefined);
      }
      if (done || got === 0) break;
    }
    await consumer.delete().catch(() => undefined);
    return out;
  }
}

/**
 * A tenant's subject token. Tenant names are free text and subjects are not, so the name is
 * hashed; a collision would at worst list a batch to the wrong tenant's page load, where the
 * record's own tenant check still hides it.
 */
export function tenantToken(tenant: string): string {
  return "t" + createHash("sha256").update(tenant).digest("hex").slice(0, 32);
}

/** Page tokens are the sequence of the last entry returned, opaque to clients. */
export function encodePageToken(seq: number): string {
  return `s${seq.toString(36)}`;
}

/** The sequence in a page token; undefined when it is not one of ours. */
export function decodePageToken(token: string): number | undefined {
  if (!/^s[0-9a-z]{1,12}$/.test(token)) return undefined;
  const seq = Number.parseInt(token.slice(1), 36);
  return Number.isSafeInteger(seq) && seq > 0 ? seq : undefined;
}
