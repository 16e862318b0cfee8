// The coordinator's link to its workers over NATS: heartbeats in (the fleet and the ledger
// follow them), assignments out and their replies, cancel and drain requests, and the take-back
// of attempts from a worker that is lost, restarted or did not confirm an assignment. What to
// place where is decided elsewhere (scheduler/engine.ts); what an outcome means is decided by
// the batch rules (batch-state.ts). This part only carries decisions to workers and brings
// their reports back.

import { RequestError, type NatsConnection, type Subscription } from "@nats-io/transport-node";
import { WorkerState } from "../proto/gen/shoal/v1/shoal.js";
import { AssignReply, Assignment, CancelItems, EvictReply, EvictRequest, Heartbeat } from "../proto/gen/shoal/v1/wire.js";
import { decodeMessage, encodeMessage } from "../shared/codec.js";
import { errorMessage, ProtocolError } from "../shared/errors.js";
import { encodeParamsJson } from "../shared/params-wire.js";
import type { Logger } from "../shared/logger.js";
import { quoteInput } from "../shared/param-limits.js";
import type { Names } from "../shared/subjects.js";
import type { Attempts } from "./attempts.js";
import type { ActiveBatch, Attempt } from "./batch-state.js";
import type { BatchQueue } from "./batch-queue.js";
import { notFound, unavailable } from "./errors.js";
import type { Fleet, WorkerRecord } from "./fleet.js";
import type { CoordinatorOptions } from "./options.js";
import type { ResultLog } from "./result-log.js";
import type { Eviction } from "./scheduler/defrag.js";
import type { Placed } from "./scheduler/engine.js";
import type { VramLedger } from "./vram-ledger.js";
import { heartbeatProblem, residentWeightsProblem } from "./wire-validation.js";
import { placementSpans } from "./item-tracing.js";
import { wallNowMs } from "./step-times.js";

const NO_BYTES = Buffer.alloc(0);

export interface WorkerLinkDeps {
  /** Read when used: the connection exists once the coordinator has started. */
  nc: () => NatsConnection;
  resultLog: () => ResultLog;
  names: Names;
  opts: Pick<CoordinatorOptions, "assignTimeoutMs" | "itemTimeoutMs">;
  log: Logger;
  fleet: Fleet;
  ledger: VramLedger;
  attempts: Attempts;
  queue: BatchQueue;
  batches: ReadonlyMap<string, ActiveBatch>;
  /** True once the coordinator is closing: retries of revocations stop. */
  closing: () => boolean;
  /** Asks for a scheduling pass soon (room was freed or items went back to the queue). */
  scheduleSoon: () => void;
  /** A worker's report was applied to the fleet and the ledger (recovery adopts what it holds). */
  reported: (worker: WorkerRecord, hb: Heartbeat, nowMs: number) => void;
  protocolError: (kind: string, subject: string, problem: string) => void;
}

export class WorkerLink {
  private heartbeatPass: NodeJS.Timeout | undefined;

  constructor(private readonly d: WorkerLinkDeps) {}

  /** Heartbeat intake: every worker's reports, checked before they touch any state. */
  subscribeHeartbeats(): Subscription {
    return this.d.nc().subscribe(this.d.names.heartbeats, {
      callback: (err, msg) => {
        if (err) return;
        try {
          const hb = decodeMessage(Heartbeat, msg.subject, msg.data);
          const problem = heartbeatProblem(msg.subject.slice(msg.subject.lastIndexOf(".") + 1), hb);
          if (problem) return this.d.protocolError("heartbeat", msg.subject, problem);
          this.onHeartbeat(hb);
        } catch (e) {
          if (e instanceof ProtocolError) this.d.protocolError("heartbeat", msg.subject, e.message);
          else this.d.log.error({ subject: msg.subject, err: errorMessage(e) }, "heartbeat not applied");
        }
      },
    });
  }

  private onHeartbeat(hb: Heartbeat): void {
    const now = Date.now();
    const { worker, change } = this.d.fleet.observe(hb, now);
    if (change === "stale") return;
    if (change === "joined" || change === "restarted") {
      this.d.log.info({ workerId: worker.id, change, gpus: hb.gpus.length, models: hb.models }, "worker registered");
      if (change === "restarted") this.takeBack(worker, "the worker restarted");
    }
    const held = new Set(hb.inFlight.map((l) => l.token));
    this.d.ledger.observe(
      worker.id,
      hb.gpus.map((g) => ({ index: g.index, name: g.name, totalBytes: g.vramTotalBytes, freeBytes: g.vramFreeBytes, source: g.source })),
      held,
    );
    this.d.ledger.observeResident(worker.id, hb.residentWeights);
    this.d.reported(worker, hb, now);
    // A heartbeat can free room; many arrive per second in a large fleet, so their passes are
    // coalesced on a short timer instead of running one pass per heartbeat.
    this.scheduleAfterHeartbeats();
  }

  private scheduleAfterHeartbeats(): void {
    if (this.heartbeatPass || this.d.queue.size === 0) return;
    this.heartbeatPass = setTimeout(() => {
      this.heartbeatPass = undefined;
      this.d.scheduleSoon();
    }, 5);
  }

  /** Workers silent past the heartbeat timeout are LOST: their GPUs leave the ledger, their attempts are taken back. */
  sweep(nowMs: number): void {
    for (const w of this.d.fleet.sweep(nowMs)) {
      this.d.log.warn({ workerId: w.id, silentMs: nowMs - w.lastSeenMs }, "worker lost (no heartbeat)");
      this.d.ledger.removeWorker(w.id);
      this.takeBack(w, `no heartbeat for ${nowMs - w.lastSeenMs} ms`);
    }
    this.d.fleet.forget(nowMs, 10 * 60_000);
  }

  /** Sends one worker the attempts a pass placed there, and settles those it did not take. */
  async send(workerId: string, list: Placed[]): Promise<void> {
    // Params go as JSON bytes, encoded once per item, to workers that read them; as a Struct to a
    // worker of an older version (a rolling upgrade), which knows no other form.
    const asJson = this.d.fleet.get(workerId)?.readsParamsJson === true;
    const assignment = encodeMessage(Assignment, {
      items: list.map(({ batch, index, lease }) => {
        const slot = batch.items[index]!;
        return {
          lease: { batchId: batch.id, index, token: lease.token },
          model: slot.model,
          params: asJson ? undefined : slot.params,
          paramsJson: asJson ? (slot.paramsJson ??= encodeParamsJson(slot.params)) : NO_BYTES,
          gpuIndex: lease.gpuIndex,
          vramBytes: lease.activationBytes ?? slot.need.activationBytes,
          // The need fixed at validation: the worker checks the same one (see shared/vram-need.ts).
          weightsBytes: slot.need.weightsBytes,
          attempt: slot.attempts,
          timeoutMs: this.d.opts.itemTimeoutMs,
        };
      }),
    });
    let accepted = new Set<string>();
    let answered = false;
    let why = "";
    const spans = placementSpans(workerId, list);
    const stepped = this.d.log.isLevelEnabled("debug") ? batchesWithSteps(list) : undefined;
    if (stepped) for (const b of stepped) b.steps!.lastAssignSent = wallNowMs();
    try {
      const reply = await this.d.nc().request(this.d.names.assign(workerId), assignment, { timeout: this.d.opts.assignTimeoutMs, headers: spans?.headers });
      const decoded = decodeMessage(AssignReply, reply.subject, reply.data);
      accepted = new Set(decoded.accepted);
      answered = true;
      if (stepped) for (const b of stepped) b.steps!.lastAssignTaken = wallNowMs();
      why = decoded.error;
      // The worker's VRAM with the accepted items counted: the ledger is exact again at once.
      if (decoded.gpus.length > 0 && this.d.fleet.get(workerId)) {
        this.d.ledger.observe(
          workerId,
          decoded.gpus.map((g) => ({ index: g.index, name: g.name, totalBytes: g.vramTotalBytes, freeBytes: g.vramFreeBytes, source: g.source })),
          accepted,
          true, // the answer lists only the items just taken, not all the worker holds
        );
        if (!residentWeightsProblem(decoded.residentWeights, decoded.gpus)) this.d.ledger.observeResident(workerId, decoded.residentWeights);
      }
    } catch (err) {
      why = errorMessage(err);
      // "No responders" is NATS saying nobody subscribes to the worker's subject: the process is
      // gone (killed, restarting), and certainly never saw these items. Not an attempt; and no
      // more items for it until it heartbeats again, or a worker that crashed and comes back
      // under the same id would burn every item's attempts in the seconds it takes to restart.
      if (err instanceof RequestError && err.isNoResponders()) {
        answered = true;
        this.d.fleet.markUnreachable(workerId);
      }
    }
    spans?.end(accepted, why);
    const refused = list.filter((p) => !accepted.has(p.lease.token));
    if (refused.length === 0) return;
    this.d.log.warn({ workerId, refused: refused.length, why }, "assignment not taken; items go back to the queue");
    if (answered) {
      // The worker said no (draining), or is not there at all: it never held them, so this was
      // no attempt.
      for (const { batch, index, lease } of refused) {
        if (this.d.attempts.withdraw(batch, index, lease)) this.d.queue.add(batch.id, index, batch.record.batch!.priority);
      }
    } else {
      // No answer: the worker may have taken them and lost the reply, so close those attempts
      // durably before placing the items again.
      await Promise.all(refused.map((p) => this.takeBackAttempt(p.batch, p.index, p.lease, `assignment to ${workerId} not confirmed: ${why}`)));
    }
    this.d.scheduleSoon();
  }

  /**
   * Takes an attempt back from a worker: logged as revoked before the item is placed again, so
   * a late result from that attempt is ignored now and after any restart.
   */
  private async takeBackAttempt(batch: ActiveBatch, index: number, lease: Attempt, reason: string): Promise<void> {
    const slot = batch.items[index]!;
    this.d.attempts.end(lease.token);
    // Either copy of a hedged item: its revocation closes that copy, the other carries on.
    const current = () => slot.state === "leased" && (slot.lease?.token === lease.token || slot.hedge?.token === lease.token);
    if (!current()) return;
    // The revocation takes effect when it comes back through the results consumer, in the log's
    // order (applyEntry): a result the worker stored before it counts and one stored after it
    // does not, live exactly as in a replay after a restart. Until it is stored the item stays
    // leased, so a NATS outage delays the re-placement but never loses the item.
    for (let delayMs = 200; ; delayMs = Math.min(delayMs * 2, 10_000)) {
      try {
        await this.d.resultLog().revoke(batch.id, { lease: { batchId: batch.id, index, token: lease.token }, reason });
        return;
      } catch (err) {
        if (this.d.closing() || !current()) return;
        this.d.log.warn({ batchId: batch.id, item: index, err: errorMessage(err), retryInMs: delayMs }, "revocation not stored; retrying");
        await new Promise((r) => setTimeout(r, delayMs).unref());
      }
    }
  }

  private takeBack(worker: WorkerRecord, reason: string): void {
    const tokens = this.d.attempts.forgetWorker(worker.id);
    if (tokens.size === 0) return;
    this.d.log.warn({ workerId: worker.id, items: tokens.size, reason }, "taking items back from a worker");
    for (const batch of this.d.batches.values()) {
      for (const [index, slot] of batch.items.entries()) {
        for (const a of [slot.lease, slot.hedge]) {
          if (!a || !tokens.has(a.token)) continue;
          tokens.delete(a.token);
          void this.takeBackAttempt(batch, index, a, `worker ${worker.id} lost: ${reason}`);
        }
      }
    }
    // Attempts of items that ended meanwhile (a cancelled batch, the losing copy of a hedged
    // item) whose worker never reported them ended: nothing to take back, only their reservations.
    for (const t of tokens) this.d.attempts.end(t);
  }

  /** Asks the workers running a cancelled batch's attempts to stop them (best effort: their outcomes still end the attempts). */
  cancel(batchId: string, running: { index: number; lease: Attempt }[]): void {
    const byWorker = new Map<string, { batchId: string; index: number; token: string }[]>();
    for (const { index, lease } of running) {
      let list = byWorker.get(lease.workerId);
      if (!list) byWorker.set(lease.workerId, (list = []));
      list.push({ batchId, index, token: lease.token });
    }
    for (const [workerId, leases] of byWorker) {
      try {
        this.d.nc().publish(this.d.names.cancel(workerId), encodeMessage(CancelItems, { leases }));
      } catch (err) {
        this.d.log.warn({ workerId, err: errorMessage(err) }, "cancel not sent");
      }
    }
  }

  /**
   * Defragmentation: asks a worker to drop idle models' weights from one GPU (the decision is
   * scheduler/defrag.ts's). Its answer carries its VRAM and resident weights after the eviction,
   * applied to the ledger at once. Returns what it evicted and what it refused, and why; throws
   * when it did not answer or refused the request whole.
   */
  async evict(e: Eviction): Promise<{ evicted: string[]; refused: { model: string; reason: string }[] }> {
    const request = encodeMessage(EvictRequest, { gpuIndex: e.gpuIndex, models: e.models, reason: "defrag" });
    const msg = await this.d.nc().request(this.d.names.evict(e.workerId), request, { timeout: this.d.opts.assignTimeoutMs });
    const reply = decodeMessage(EvictReply, msg.subject, msg.data);
    if (reply.error) throw new Error(`worker ${e.workerId} refused the eviction: ${reply.error}`);
    const problem = reply.gpus.length > 0 ? residentWeightsProblem(reply.residentWeights, reply.gpus) : undefined;
    if (problem) {
      this.d.protocolError("evict_reply", msg.subject, problem);
    } else if (reply.gpus.length > 0 && this.d.fleet.get(e.workerId)) {
      this.d.ledger.observe(
        e.workerId,
        reply.gpus.map((g) => ({ index: g.index, name: g.name, totalBytes: g.vramTotalBytes, freeBytes: g.vramFreeBytes, source: g.source })),
        [],
        true, // lists no items: those it holds stay as they are
      );
      this.d.ledger.observeResident(e.workerId, reply.residentWeights);
    }
    return { evicted: reply.evicted, refused: reply.refused.map((r) => ({ model: r.model, reason: r.reason })) };
  }

  /** DrainWorker: no new items for the worker from now on; it finishes what it holds and leaves. */
  async drain(workerId: string): Promise<WorkerRecord> {
    const w = this.d.fleet.get(workerId);
    if (!w) throw notFound(`worker ${quoteInput(workerId)} not found`);
    if (w.state === WorkerState.WORKER_STATE_LOST) return w;
    w.state = WorkerState.WORKER_STATE_DRAINING;
    try {
      await this.d.nc().request(this.d.names.drain(workerId), new Uint8Array(), { timeout: this.d.opts.assignTimeoutMs });
    } catch (err) {
      throw unavailable(`worker ${workerId} did not answer the drain request: ${errorMessage(err)}`);
    }
    this.d.log.info({ workerId }, "worker draining");
    return w;
  }

  stop(): void {
    if (this.heartbeatPass) clearTimeout(this.heartbeatPass);
  }
}

/** The batches of an assignment that keep step times (step-times.ts). */
function batchesWithSteps(list: Placed[]): Set<ActiveBatch> {
  const out = new Set<ActiveBatch>();
  for (const p of list) if (p.batch.steps) out.add(p.batch);
  return out;
}
