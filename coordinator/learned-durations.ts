// The coordinator's learned item durations (scheduler/durations.ts) and where they are kept: the
// KV bucket `<prefix>-scheduler`, key `durations`, as JSON. Loaded at start, so a restarted
// coordinator predicts from what it learned before; written back at most every `saveEveryMs`
// when something new was learned, and once more at stop. Only counted outcomes teach it: the
// coordinator calls `observe` for an outcome that finished its item (the current attempt's,
// succeeded), never while replaying the results log after a restart (those were learned, and
// saved, by the process that counted them; a few seconds' worth may be lost in a crash, which
// only costs a little learning).

import type { KV } from "@nats-io/kv";
import { errorMessage } from "../shared/errors.js";
import type { Logger } from "../shared/logger.js";
import { DurationModel, gpuTypeOf, type DurationKey } from "./scheduler/durations.js";
import type { GpuView, VramLedger } from "./vram-ledger.js";

export const DURATIONS_KEY = "durations";

export class LearnedDurations {
  private kv: KV | undefined;
  private savedVersion = 0;
  private lastSaveMs = 0;
  private saving: Promise<void> | undefined;

  constructor(
    private readonly ledger: VramLedger,
    private readonly log: Logger,
    /** Loaded in place at start, so whoever else reads it (the engine) shares what was learned. */
    readonly model: DurationModel = new DurationModel(),
    private readonly saveEveryMs = 5000,
  ) {}

  /** Loads what was saved; with `forget`, deletes it instead and starts from nothing. */
  async start(kv: KV, forget = false): Promise<void> {
    this.kv = kv;
    if (forget) {
      await kv.delete(DURATIONS_KEY);
      this.log.info("learned durations forgotten (--forget-durations)");
      return;
    }
    let entry;
    try {
      entry = await kv.get(DURATIONS_KEY);
    } catch (err) {
      // Not fatal: predictions fall back to guesses until enough is learned again.
      this.log.warn({ err: errorMessage(err) }, "learned durations could not be read; starting without them");
      return;
    }
    if (!entry || entry.operation !== "PUT" || entry.length === 0) return;
    try {
      const keys = this.model.load(JSON.parse(entry.string()));
      this.savedVersion = this.model.version;
      this.log.info({ keys }, "learned durations loaded");
    } catch (err) {
      this.log.warn({ err: errorMessage(err) }, "stored learned durations are unreadable; starting without them");
    }
  }

  /** The GPU type of one GPU of a worker, as heartbeats describe it; undefined when not known. */
  gpuType(workerId: string, gpuIndex: number): string | undefined {
    const g = this.ledger.gpusOf(workerId).find((x) => x.index === gpuIndex);
    return g ? gpuTypeOf(g.name, g.totalBytes) : undefined;
  }

  /** The fleet's GPUs as the ledger knows them (the ETA reads their sizes). */
  gpus(): readonly GpuView[] {
    return this.ledger.all();
  }

  /** One counted outcome: the item of `model`/`shape` ran `runMs` on that worker's GPU. */
  observe(model: string, shape: string, workerId: string, gpuIndex: number, runMs: number): void {
    const key: DurationKey = { model, shape, gpuType: this.gpuType(workerId, gpuIndex) };
    this.model.observe(key, runMs);
  }

  /** Writes the model when it learned something since the last write and `saveEveryMs` passed. */
  maybeSave(nowMs: number): void {
    if (this.saving || this.model.version === this.savedVersion || nowMs - this.lastSaveMs < this.saveEveryMs) return;
    this.lastSaveMs = nowMs;
    this.saving = this.save().finally(() => (this.saving = undefined));
  }

  /** The last write, at stop; waits for one in flight first. */
  async flush(): Promise<void> {
    await this.saving;
    if (this.model.version !== this.savedVersion) await this.save();
  }

  private async save(): Promise<void> {
    if (!this.kv) return;
    const version = this.model.version;
    try {
      await this.kv.put(DURATIONS_KEY, JSON.stringify(this.model.snapshot()));
      this.savedVersion = version;
    } catch (err) {
      this.log.warn({ err: errorMessage(err), keys: this.model.size }, "learned durations not saved; trying again later");
    }
  }
}
