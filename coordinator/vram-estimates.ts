// What an item really needs, learned from the fleet. Workers report the peak memory an item
// took where the backend can tell (vram_used_bytes); once known, that replaces the manifest's
// estimate for the same model and shape. An OUT_OF_MEMORY failure raises the estimate so the
// item is placed again only where more VRAM is free. Pure: no I/O.

const MARGIN_PERCENT = 110;
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

  /** The activation bytes to reserve for an item: learned when known, else the manifest's. */
  activation(key: string, manifestBytes: number): number {
    return this.learned.get(key) ?? manifestBytes;
  }

  /**
   * A measured peak; the estimate follows the largest seen, with a safety margin. The first
   * measurement after an OUT_OF_MEMORY replaces the raised guess (which may be far above the
   * need: each OOM raises by half), so items of the shape stop reserving more than they use.
   */
  observe(key: string, usedBytes: number): void {
    if (!(usedBytes > 0)) return;
    const next = Math.ceil((usedBytes * MARGIN_PERCENT) / 100);
    const prev = this.learned.get(key);
    if (this.guessed.delete(key) || prev === undefined || next > prev) this.learned.set(key, next);
  }

  /** The item ran out of memory with `reservedBytes`: never place it with that little again. */
  raiseAfterOom(key: string, reservedBytes: number): number {
    const next = Math.max(this.learned.get(key) ?? 0, Math.ceil(Math.max(reservedBytes, 1) * OOM_GROWTH));
    this.learned.set(key, next);
    this.guessed.add(key);
    return next;
  }
}
