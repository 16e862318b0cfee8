// Recovery after a restart: the coordinator's memory is rebuilt from what JetStream holds. Every
// batch with an open marker is resumed from its record (KV) and its results log, replayed with
// the same rules as live (a terminal one only has its usage counted, once, and its marker
// removed); then, for one heartbeat timeout, nothing is placed while the attempts
// workers report holding are adopted instead of placed again (their results are still coming).

import type { Batch } from "../proto/gen/shoal/v1/shoal.js";
import type { BatchRecord, Heartbeat, ResultLogEntry } from "../proto/gen/shoal/v1/wire.js";
import { errorMessage } from "../shared/errors.js";
import { leaseAttempt } from "../shared/ids.js";
import type { Infrastructure } from "../shared/jetstream-setup.js";
import type { Logger } from "../shared/logger.js";
import type { Names } from "../shared/subjects.js";
import type { Attempts } from "./attempts.js";
import type { BatchIndex } from "./batch-index.js";
import type { ActiveBatch, Attempt } from "./batch-state.js";
import { isTerminal, type BatchStore, type StoredRecord } from "./batch-store.js";
import { isRecentBatch, rereadWhileMissing } from "./fresh-read.js";
import type { WorkerRecord } from "./fleet.js";
import type { CoordinatorMetrics } from "./metrics.js";
import type { ResultLog } from "./result-log.js";

export interface RecoveryDeps {
  /** Read when used: these exist once the coordinator has connected. */
  infra: () => Infrastructure;
  store: () => BatchStore;
  index: () => BatchIndex;
  resultLog: () => ResultLog;
  names: Names;
  log: Logger;
  metrics: CoordinatorMetrics | undefined;
  active: ReadonlyMap<string, ActiveBatch>;
  attempts: Attempts;
  heartbeatTimeoutMs: number;
  /** Makes a stored record a running batch (its items queued). */
  activate: (record: BatchRecord, revision: number, writtenAtMs?: number) => ActiveBatch;
  /** The worker a lease token was issued to for that item, or undefined (lease-tokens.ts). */
  holder: (token: string, batchId: string, index: number) => string | undefined;
  /** Counts a report refused because its sender was not given the attempt. */
  fenced: (kind: string, reason: string) => void;
  /** Applies one results-log entry, as the live consumer does (`replaying` silences metrics and events). */
  applyEntry: (entry: ResultLogEntry, replaying: boolean, subjectBatchId?: string) => void;
  finalizeInBackground: (batch: ActiveBatch) => void;
  /** Counts a terminal batch's usage (once, by batch id), then removes its open marker (terminal-usage.ts). */
  countUsage: (tenant: string, batch: Batch) => Promise<unknown>;
  /** Asks a worker to stop attempts of items that ended meanwhile (worker-link's cancel). */
  cancel: (batchId: string, running: { index: number; lease: Attempt }[]) => void;
  /** Aborted when the coordinator stops: ends the re-reads of missing records (fresh-read.ts). */
  signal?: AbortSignal;
  /** The wall clock (Date.now when absent): which batches are recent, from their ids. */
  now?: () => number;
  /** The waits between re-reads of a recent batch's missing record (fresh-read.ts REREAD_DELAYS_MS when absent). */
  rereadDelaysMs?: readonly number[];
}

export class Recovery {
  /** Until this time after a restart, items are not placed: workers first report what they hold. */
  private recoveringUntil = 0;

  constructor(private readonly d: RecoveryDeps) {}

  /** The time until which the scheduler waits (0 when nothing was resumed). */
  get until(): number {
    return this.recoveringUntil;
  }

  /** Resumes the batches whose open marker is still there; finished ones stay in storage. */
  async recover(): Promise<void> {
    if (this.d.infra().batchIndexCreated) {
      try {
        await this.indexStoredBatches();
      } catch (err) {
        // Without the index stream the next start indexes them again; with a half-filled one it would not.
        await this.d.infra().jsm.streams.delete(this.d.names.batchIndexStream).catch(() => undefined);
        throw err;
      }
    }
    let resumed = 0;
    let counting = 0;
    const resume = async (id: string, got: StoredRecord): Promise<void> => {
      if (isTerminal(got.record.batch!)) {
        // Finalized just before a crash: its usage may not be counted yet (the marker is removed
        // only once it is). Counting again adds nothing when it was; the marker goes after it.
        void this.d.countUsage(got.record.tenant, got.record.batch!);
        counting++;
        return;
      }
      const active = this.d.activate(got.record, got.revision, got.writtenAtMs);
      for (const entry of await this.d.resultLog().replay(id)) {
        // One entry that cannot be applied must not keep the coordinator from starting.
        try {
          this.d.applyEntry(entry, true, id);
        } catch (err) {
          this.d.log.error({ batchId: id, err: errorMessage(err) }, "skipping a results entry on replay");
        }
      }
      resumed++;
      if (active.isComplete) this.d.finalizeInBackground(active);
    };
    const missing: string[] = [];
    for (const id of await this.d.store().openIds()) {
      const got = await this.d.store().get(id);
      if (got) await resume(id, got);
      else missing.push(id);
    }
    await this.settleMissing(missing, resume);
    this.d.metrics?.batchesInMemory(this.d.active.size);
    if (counting > 0) this.d.log.info({ batches: counting }, "finished batches whose usage may not be counted: counting them (once)");
    if (resumed > 0) {
      // Nothing is placed until the workers were asked to report and had a heartbeat timeout to
      // do it (askedToReport): the rest of the start (the heartbeat subscription, the results
      // consumer) can outlast a whole timeout while JetStream elects leaders, and a window that
      // began here had then closed before the first report, so items still running on their
      // workers were placed again (seen: the netns nats-server kill, 7 items run twice).
      this.recoveringUntil = Infinity;
      this.d.log.info({ resumed, waitMs: this.d.heartbeatTimeoutMs }, "resumed running batches; waiting for workers to report their items");
    }
  }

  /** The workers were just asked to report (the coordinator's hello): the wait for them starts now. */
  askedToReport(nowMs: number): void {
    if (this.recoveringUntil === Infinity) this.recoveringUntil = nowMs + this.d.heartbeatTimeoutMs;
  }

  /**
   * Open markers whose record was not found. Old ones belong to submits that failed after the
   * marker: removed. A recent one may be a batch whose record a stale leader did not have yet
   * (fresh-read.ts): read again for a few seconds, resumed if found; if still missing its marker
   * stays, so a later start looks again instead of losing the batch for good.
   */
  private async settleMissing(ids: string[], resume: (id: string, got: StoredRecord) => Promise<void>): Promise<void> {
    const now = this.d.now?.() ?? Date.now();
    const recent = ids.filter((id) => isRecentBatch(id, now));
    for (const id of ids) {
      if (recent.includes(id)) continue;
      // Never stored (the submit failed after the marker).
      await this.d.store().clearOpen(id).catch((err) => this.d.log.warn({ batchId: id, err: errorMessage(err) }, "stale open marker not removed"));
    }
    if (recent.length === 0) return;
    const signal = this.d.signal ?? new AbortController().signal;
    // A re-read that fails (JetStream still electing after a server loss) counts as missing: it
    // must not fail the term's start, and the marker it keeps is looked at again next time.
    const reread = (id: string) => this.d.store().get(id).catch((err: unknown) => (this.d.log.warn({ batchId: id, err: errorMessage(err) }, "re-reading a recent batch's record failed"), undefined));
    const found = await Promise.all(recent.map((id) => rereadWhileMissing(() => reread(id), signal, this.d.rereadDelaysMs)));
    for (const [i, id] of recent.entries()) {
      const got = found[i];
      if (got) {
        this.d.log.warn({ batchId: id }, "a recent batch's record was missing from one read and found by a later one (a stale read after a JetStream leader change?); resumed");
        await resume(id, got);
      } else {
        this.d.log.warn({ batchId: id }, "an open marker of a recent batch has no record (its submit failed, or the read was stale); marker kept for the next start to look again");
      }
    }
  }

  /**
   * Batches stored before the index and the open markers existed (an older Shoal) are indexed
   * once, oldest first, the first time a coordinator creates the index stream.
   */
  private async indexStoredBatches(): Promise<void> {
    const ids = (await this.d.store().allBatchIds()).sort();
    if (ids.length === 0) return;
    let open = 0;
    for (const id of ids) {
      const got = await this.d.store().get(id);
      if (!got) continue;
      if (!isTerminal(got.record.batch!)) {
        await this.d.store().markOpen(id);
        open++;
      }
      await this.d.index().append(got.record.tenant, id);
    }
    this.d.log.info({ batches: ids.length, open }, "indexed batches stored by an earlier version");
  }

  /** After a restart: items a worker reports holding are leased to it again, not re-placed. */
  adopt(worker: WorkerRecord, hb: Heartbeat, now: number): void {
    if (now >= this.recoveringUntil) return;
    let refused = 0;
    const ended = new Map<string, { index: number; lease: Attempt }[]>();
    for (const l of hb.inFlight) {
      const batch = this.d.active.get(l.batchId);
      const slot = batch?.items[l.index];
      if (!batch || !slot || slot.state === "done") {
        // The item (or its whole batch: every running batch was resumed before workers are
        // heard) ended in the log while this worker still runs a copy of it, e.g. the losing
        // copy of a hedged item whose cancel the restart swallowed: stop it.
        if (slot?.result?.workerId !== worker.id && this.d.holder(l.token, l.batchId, l.index) === worker.id) {
          const list = ended.get(l.batchId) ?? [];
          list.push({ index: l.index, lease: { token: l.token, workerId: worker.id, gpuIndex: 0, assignedAtMs: now } });
          ended.set(l.batchId, list);
        }
        continue;
      }
      if (slot.closed?.has(l.token)) continue;
      // A second worker holding a copy of an item already adopted from another: the item was
      // hedged before the restart, and either copy's outcome may come.
      const hedgeCopy = slot.state === "leased" && slot.lease !== undefined && slot.lease.token !== l.token && slot.lease.workerId !== worker.id && !slot.hedge;
      if (slot.state !== "pending" && !hedgeCopy) continue;
      // A worker adopts only attempts issued to it: claiming another's (or an invented token)
      // would make it the item's assignee and let its outcome count.
      const holder = this.d.holder(l.token, l.batchId, l.index);
      if (holder !== worker.id) {
        this.d.fenced("adoption", holder === undefined ? "forged_token" : "wrong_worker");
        refused++;
        continue;
      }
      if (hedgeCopy) {
        this.d.attempts.adoptHedge(batch, l.index, { token: l.token, workerId: worker.id, gpuIndex: 0, assignedAtMs: Date.now() }, leaseAttempt(l.token));
        continue;
      }
      // The index stays in the queue; schedule() drops entries whose slot is no longer pending.
      this.d.attempts.adopt(batch, l.index, { token: l.token, workerId: worker.id, gpuIndex: 0, assignedAtMs: Date.now() }, leaseAttempt(l.token));
    }
    for (const [batchId, list] of ended) {
      this.d.log.info({ batchId, workerId: worker.id, items: list.map((e) => e.index) }, "cancelling copies of items that ended while the coordinator was away");
      this.d.cancel(batchId, list);
    }
    // One line per report, however many it claims.
    if (refused > 0) this.d.log.warn({ workerId: worker.id, refused }, "not adopting attempts the worker was not given");
  }
}
