// The recent arrival of work, for the ETA (eta.ts): which batches were submitted over the last
// window, how much predicted work each brought and what share of the fleet it takes by turns. A
// batch's ETA must count the share of the fleet that batches submitted after it will take while
// it runs; the recent past is the estimate of that future.
//
// Pure, with an injected clock: the caller says when each batch arrived and asks at `nowMs`.
//
// The rate counts the arrivals after the window's first instant over the time since it: a batch
// (or a burst of batches submitted together) seen alone is not a stream, so a fleet given one
// batch, or a coordinator that just recovered its batches, expects no arrivals and its ETAs are
// those of the batches present. The horizon is how long the stream has been seen (at most the
// window): eta.ts expects it to go on τ more with chance horizon / (horizon + τ), so a burst of
// submissions is not taken to last for ever at its full rate. A stream silent for many of its
// mean gaps has ended.

import type { EtaArrivals } from "./eta.js";

export interface ArrivalSample {
  /** When the batch was submitted (ms since the epoch). */
  atMs: number;
  /** Its predicted work in total (ms of GPU time). */
  workMs: number;
  /** Its turn weight in the queue (BatchQueue's priorityWeight) and its mean item duration (ms): its share (eta.ts). */
  weight: number;
  meanItemMs: number;
}

/** Arrivals within this long of the window's first one are one instant with it (one burst). */
export const BURST_MS = 1000;
/** How far back arrivals are remembered by default (ms): also the longest a stream is expected to go on. */
const WINDOW_MS = 60_000;
/** A stream silent for this many of its mean gaps has ended (a Poisson stream is, by chance, less than once in 150). */
const SILENT_GAPS = 5;

export interface RecentArrivalsOptions {
  /** How far back arrivals are remembered (ms). */
  windowMs?: number;
  /** At most this many are kept (the newest), so a flood of tiny batches costs a bounded sort. */
  maxSamples?: number;
}

export class RecentArrivals {
  private samples: ArrivalSample[] = [];
  private readonly windowMs: number;
  private readonly maxSamples: number;

  constructor(opts: RecentArrivalsOptions = {}) {
    this.windowMs = opts.windowMs ?? WINDOW_MS;
    this.maxSamples = opts.maxSamples ?? 256;
  }

  observe(s: ArrivalSample): void {
    if (!(s.workMs > 0) || !(s.weight > 0) || !(s.meanItemMs > 0) || !Number.isFinite(s.atMs)) return;
    this.samples.push(s);
    if (this.samples.length > this.maxSamples) this.samples.splice(0, this.samples.length - this.maxSamples);
  }

  /**
   * The expected arrivals from `nowMs` on; undefined when the window holds no stream. Their
   * shares take the turn weights as `weightOf` says they are now (turn-weights.ts), as the
   * batches present do.
   */
  stream(nowMs: number, weightOf: (weight: number) => number = (w) => w): EtaArrivals | undefined {
    const from = nowMs - this.windowMs;
    if (this.samples.length > 0 && this.samples[0]!.atMs < from) this.samples = this.samples.filter((s) => s.atMs >= from);
    if (this.samples.length < 2) return undefined;
    let first = Infinity;
    let last = -Infinity;
    for (const s of this.samples) {
      first = Math.min(first, s.atMs);
      last = Math.max(last, s.atMs);
    }
    let later = 0;
    for (const s of this.samples) if (s.atMs > first + BURST_MS) later++;
    const span = nowMs - first;
    if (later === 0 || !(span > 0)) return undefined;
    const perMs = later / span;
    if ((nowMs - last) * perMs > SILENT_GAPS) return undefined;
    return { perMs, horizonMs: span, samples: this.samples.map((x) => ({ workMs: x.workMs, share: weightOf(x.weight) * x.meanItemMs })) };
  }
}
