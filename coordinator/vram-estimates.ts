// What an item really needs, learned from the fleet. Workers report the peak memory an item
// took where the backend can tell (vram_used_bytes); once known, that replaces the manifest's
// estimate for the same model and shape. An OUT_OF_MEMORY failure raises the estimate so the
// item is placed again only where more VRAM is free: to what the worker reports the item
// needed (vram_used_bytes of the failed outcome, where its backend can tell), else by half.
//
// The margin above a measured peak is learned per shape too: it starts at none, since every
// byte of margin is VRAM no other item can use (on a 24 GB GPU a 10 % margin can cost a whole
// item of three), and grows by 10 points, up to 50, each time an item of the shape runs out of
// memory although it had at least the measured peak reserved (the measurements read low, e.g.
// a sampled peak that missed a spike). Pure: no I/O.

const MARGIN_STEP_PERCENT = 10;
const MAX_MARGIN_PERCENT = 50;
const OOM_GROWTH = 1.5;

export function shapeKey(model: string, params: Record<string, unknown>): string {
  const w = typeof params.width === "number" ? params.width : 0;
  const h = typeof params.height === "number" ? params.height : 0;
  return `${model}|${w}x${h}`;
}

export class VramEstimates {
  private readonly learned = new Map<string, number>();
  /** Keys whose estimate is a guess raised after an OUT_OF_MEMORY, not a measured peak yet. */
  private readonly guessed = new Set<string>();
  /** The largest peak measured per key. */
  private readonly peaks = new Map<string, number>();
  /** Margin above the measured peak per key, in percent (0 until a measurement proved too low). */
  private readonly margins = new Map<string, number>();

  /** The activation bytes to reserve for an item: learned when known, else the manifest's. */
  activation(key: string, manifestBytes: number): number {
    return this.learned.get(key) ?? manifestBytes;
  }

  /** The margin (percent) this key's measured peaks are reserved with now. */
  marginPercent(key: string): number {
    return this.margins.get(key) ?? 0;
  }

  /**
   * A measured peak; the estimate follows the largest seen, with the key's margin. The first
   * measurement after an OUT_OF_MEMORY replaces the raised guess (which may be far above the
   * need: an OOM without a reported need raises by half), so items of the shape stop reserving
   * more than they use.
   */
  observe(key: string, usedBytes: number): void {
    if (!(usedBytes > 0)) return;
    const peak = Math.max(this.peaks.get(key) ?? 0, usedBytes);
    this.peaks.set(key, peak);
    const next = this.withMargin(key, peak);
    const prev = this.learned.get(key);
    if (this.guessed.delete(key) || prev === undefined || next > prev) this.learned.set(key, next);
  }

  /**
   * The item ran out of memory with `reservedBytes`: never place it with that little again. With
   * `neededBytes` (what the worker reports it needed, when more than was reserved) the estimate
   * becomes that, with the key's margin, not a guess by half: one OOM per shape instead of
   * several, and no over-reservation until a measurement brings it down.
   */
  raiseAfterOom(key: string, reservedBytes: number, neededBytes = 0): number {
    const peak = this.peaks.get(key);
    if (peak !== undefined && reservedBytes >= peak) this.margins.set(key, Math.min(MAX_MARGIN_PERCENT, this.marginPercent(key) + MARGIN_STEP_PERCENT));
    const raised = neededBytes > reservedBytes ? this.withMargin(key, neededBytes) : Math.ceil(Math.max(reservedBytes, 1) * OOM_GROWTH);
    const next = Math.max(this.learned.get(key) ?? 0, raised, peak !== undefined ? this.withMargin(key, peak) : 0);
    this.learned.set(key, next);
    this.guessed.add(key);
    return next;
  }

  private withMargin(key: string, bytes: number): number {
    return Math.ceil((bytes * (100 + this.marginPercent(key))) / 100);
  }
}

/** What one outcome tells the estimates (the same in the coordinator and in bench/sim's simulator). */
export interface VramOutcome {
  /** The outcome counted (an ignored one's figures are nobody's). */
  counted: boolean;
  /** It failed OUT_OF_MEMORY. */
  oom: boolean;
  /** vram_used_bytes: a success's measured peak, or what an OUT_OF_MEMORY item needed (0: unknown). */
  vramUsedBytes: number;
  /** Activations reserved for the attempt (undefined: not the current attempt; the manifest's is used). */
  reservedBytes: number | undefined;
  /** The manifest's activations for the item. */
  manifestBytes: number;
}

/**
 * Learns from one outcome of an item of shape `key`: a counted success's peak is observed; a
 * counted OUT_OF_MEMORY raises the estimate (to the reported need when there is one). Returns the
 * raised estimate after an OUT_OF_MEMORY, else undefined. The coordinator's results intake and the
 * simulator both call it, so the simulator's estimates learn exactly as the coordinator's do.
 */
export function learnFromOutcome(estimates: VramEstimates, key: string, o: VramOutcome): number | undefined {
  if (!o.counted) return undefined;
  // An OUT_OF_MEMORY's figure is what the item needed (a floor), not a measured peak: it raises the estimate.
  if (o.oom) return estimates.raiseAfterOom(key, o.reservedBytes ?? o.manifestBytes, o.vramUsedBytes);
  if (o.vramUsedBytes > 0) estimates.observe(key, o.vramUsedBytes);
  return undefined;
}
