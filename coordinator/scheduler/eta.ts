// Queue position and estimated completion of every running batch, from the learned durations
// and the queue's order. Pure: the batches (already summarised), the fleet's concurrency and the
// time come in; positions and times go out. The coordinator runs it about once a second, not
// per item: its cost follows the number of batches (sorting them), not of items.
//
// The model is fluid. The fleet runs `concurrency` items at once (the items running now, or
// recently when the queue just refilled); every running item advances its own remaining time
// at 1 ms per ms, so the fleet does `concurrency` ms of predicted work per ms. A batch whose
// items are all placed only waits for them: it ends when its longest running item does, and
// until then it keeps the slots it holds. The other batches share the remaining slots as the
// queue shares them: it hands out items by turns weighted by priority, so each batch's share
// of the work is its weight times its mean item duration (weighted processor sharing). Between
// two batches ending the shares are constant, so the batch that ends first is the one with the
// least work per share, and one sweep over the batches sorted by that gives every end time.
// A batch with items still waiting also pays for its last wave: its last items start spread
// over about one item's duration, so it ends after the fluid finish by about half an item
// (the mean maximum of its slots' end times).
//
// Queue position: 0 for a batch that has started (an item placed or done) or has nothing
// waiting; otherwise 1 + the batches not started yet ahead of it in the queue's order, so the
// next batch to start is 1.

export interface EtaBatch {
  id: string;
  /** Its turn weight in the queue (BatchQueue's priorityWeight). */
  weight: number;
  /** An item of it has been placed (running or done). */
  started: boolean;
  /** Items waiting for a GPU, and their predicted run time in total (ms). */
  waitingItems: number;
  waitingWorkMs: number;
  /** Predicted remaining run time of each of its items running now (ms, ≥ 0). */
  runningRemainingMs: readonly number[];
  /**
   * Some waiting item's duration is a pure guess (nothing learned for its model): this batch
   * gets no ETA, but its guessed work still counts against the others'.
   */
  unknown?: boolean;
}

export interface EtaInput {
  nowMs: number;
  /** The running batches in the queue's turn order. */
  batches: readonly EtaBatch[];
  /** Items the fleet runs at once; 0 when no worker runs anything (then waiting work has no ETA). */
  concurrency: number;
}

export interface BatchEta {
  queuePosition: number;
  /** Estimated completion time (ms since the epoch); undefined when unknown. */
  completionMs: number | undefined;
}

/** The smallest mean item duration a share is computed with (a batch of 0 ms items still moves). */
const MIN_ITEM_MS = 1;

export function estimateBatches(input: EtaInput): Map<string, BatchEta> {
  const { nowMs, batches } = input;
  const out = new Map<string, BatchEta>();
  let notStartedAhead = 0;
  for (const b of batches) {
    const queued = !b.started && b.waitingItems > 0;
    out.set(b.id, { queuePosition: queued ? 1 + notStartedAhead : 0, completionMs: undefined });
    if (queued) notStartedAhead++;
  }

  const concurrency = Math.max(0, input.concurrency);
  // Batches with nothing waiting: they hold their running items' slots until each ends.
  const holding: { end: number; slots: number }[] = [];
  // Batches with items waiting: they share the free slots.
  const sharing: { b: EtaBatch; share: number; key: number; meanMs: number; longestRunning: number }[] = [];
  let heldSlots = 0;
  for (const b of batches) {
    const longestRunning = b.runningRemainingMs.reduce((m, x) => Math.max(m, x), 0);
    if (b.waitingItems <= 0) {
      out.get(b.id)!.completionMs = nowMs + longestRunning;
      if (b.runningRemainingMs.length > 0) {
        const sum = b.runningRemainingMs.reduce((s, x) => s + x, 0);
        const slots = b.runningRemainingMs.length;
        // The slots drain at the mean end time (fluid): that is when they go to the others.
        holding.push({ end: nowMs + sum / slots, slots });
        heldSlots += slots;
      }
      continue;
    }
    const work = b.waitingWorkMs + b.runningRemainingMs.reduce((s, x) => s + x, 0);
    const meanMs = Math.max(MIN_ITEM_MS, b.waitingWorkMs / b.waitingItems);
    const share = Math.max(1, b.weight) * meanMs;
    sharing.push({ b, share, key: work / share, meanMs, longestRunning });
  }
  if (sharing.length === 0 || concurrency <= 0) return out;

  holding.sort((a, b) => a.end - b.end);
  sharing.sort((a, b) => a.key - b.key);
  let t = nowMs;
  /** Work per unit of share done so far by every sharing batch (they all advance together). */
  let perShare = 0;
  let shareSum = sharing.reduce((s, x) => s + x.share, 0);
  let held = Math.min(heldSlots, concurrency);
  let h = 0;
  for (const s of sharing) {
    for (;;) {
      const free = Math.max(0, concurrency - held);
      const rate = free / shareSum; // perShare per ms
      const endsAt = rate > 0 ? t + (s.key - perShare) / rate : Infinity;
      const freedAt = h < holding.length ? holding[h]!.end : Infinity;
      if (endsAt === Infinity && freedAt === Infinity) return out; // no capacity: the rest stay unknown
      if (endsAt <= freedAt) {
        perShare = s.key;
        t = endsAt;
        break;
      }
      perShare += rate * (freedAt - t);
      t = freedAt;
      held = Math.max(0, held - holding[h]!.slots);
      h++;
    }
    shareSum -= s.share;
    // The last wave: its slots end spread over about one item; their maximum is later than the mean.
    const slots = Math.max(1, Math.min(concurrency, s.b.waitingItems + s.b.runningRemainingMs.length));
    const lastWave = (s.meanMs / 2) * ((slots - 1) / (slots + 1));
    if (!s.b.unknown) out.get(s.b.id)!.completionMs = Math.max(t + lastWave, nowMs + s.longestRunning);
  }
  return out;
}
