// Follows a batch to its terminal state over WatchBatch. Accepted batches survive coordinator
// restarts, so a dropped stream is not the end: once we have been connected, UNAVAILABLE or an
// early end of the stream means "watch again", and items seen twice are reported once.

import { setTimeout as sleep } from "node:timers/promises";
import { status } from "@grpc/grpc-js";
import type { Batch, ItemResult } from "../proto/gen/shoal/v1/shoal.js";
import type { ShoalClients } from "./client.js";
import { ClientError } from "./errors.js";
import { isTerminal } from "./views.js";

export interface FollowHandlers {
  /** Each finished item, once, in the order the server reports them. */
  onItem?(result: ItemResult): void;
  /** A batch snapshot that is not terminal yet (after a reconnect): counters to catch up on. */
  onSnapshot?(batch: Batch): void;
  /** The stream was lost and is being opened again. */
  onReconnect?(reason: string, attempt: number): void;
}

export interface FollowOptions {
  /** Reconnects allowed in a row without any progress; ~1 minute at the default backoff. */
  maxReconnects?: number;
  backoffMs?: (attempt: number) => number;
  signal?: AbortSignal;
}

const RECONNECT_CODES = new Set(["UNAVAILABLE", "INTERNAL", "UNKNOWN"]);

export async function followBatch(
  clients: ShoalClients,
  batchId: string,
  handlers: FollowHandlers = {},
  options: FollowOptions = {},
): Promise<Batch> {
  const maxReconnects = options.maxReconnects ?? 30;
  const backoff = options.backoffMs ?? ((n: number) => Math.min(250 * 2 ** (n - 1), 2000));
  const seen = new Set<number>();
  let connected = false;
  let attempt = 0;

  for (;;) {
    let reason: string;
    try {
      for await (const event of clients.watchBatch(batchId, { signal: options.signal, progress: true })) {
        connected = true;
        attempt = 0;
        const e = event.event;
        if (e?.$case === "item") {
          if (seen.has(e.item.index)) continue;
          seen.add(e.item.index);
          handlers.onItem?.(e.item);
        } else if (e?.$case === "batch") {
          if (isTerminal(e.batch.state)) return e.batch;
          handlers.onSnapshot?.(e.batch);
        }
      }
      // The server ends the stream after the terminal batch; an end without one means the
      // coordinator went away mid-stream. Ask for the state before watching again.
      const batch = await clients.getBatch(batchId, { signal: options.signal });
      if (isTerminal(batch.state)) return batch;
      handlers.onSnapshot?.(batch);
      reason = "the watch stream ended early";
    } catch (err) {
      if (!connected || !(err instanceof ClientError) || !RECONNECT_CODES.has(err.code)) throw err;
      reason = err.message;
    }
    attempt++;
    if (attempt > maxReconnects) {
      throw new ClientError(status.UNAVAILABLE, `lost the watch stream of ${batchId} ${maxReconnects} times in a row: ${reason}`);
    }
    handlers.onReconnect?.(reason, attempt);
    await sleep(backoff(attempt), undefined, { signal: options.signal });
  }
}
