// The default --max-in-flight, following what the held items can batch. The default holds two
// full batches per thread (options.ts defaultMaxInFlight) so that groups form in the fleet; but
// how many items one batch takes depends on the items, not only on the model: imagegen-tiny
// batches 8 images of 128 × 128 and runs 512 × 512 ones alone (max_batch_pixels). Holding 16
// items that each run alone buys nothing over 2 per thread and costs the fleet its balance: each
// worker drains its own queue at the end of a batch while another worker's thread sits idle
// (1-2 s of 12-20 at 512 × 512 in the onnx bench; docs/performance.md). So the worker reports
// threads × 2 × (the largest batch its held items can form), between 2 × threads and the
// default, in every heartbeat (the coordinator places by the reported figure). With nothing
// held it keeps the last figure: the next items are most likely like the last ones. Only the
// default adapts; an explicit --max-in-flight is what the operator asked for.

export class InFlightLimit {
  /** The largest batch the items held at the last look could form; undefined before any item. */
  private capacity: number | undefined;

  /** `ceiling`: the default for the served models (defaultMaxInFlight), also the figure before any item. */
  constructor(
    private readonly threads: number,
    private readonly ceiling: number,
  ) {}

  /**
   * Updates from the batch capacities (items per batch, 1 for an item that runs alone) of the
   * items held now and not yet run; returns whether the limit changed.
   */
  follow(heldCapacities: Iterable<number>): boolean {
    let largest = 0;
    for (const c of heldCapacities) if (c > largest) largest = c;
    if (largest === 0) return false; // nothing held: keep the last figure
    const before = this.limit();
    this.capacity = largest;
    return this.limit() !== before;
  }

  /** The batch size the limit follows now (0 before any item). */
  largestBatch(): number {
    return this.capacity ?? 0;
  }

  /** What the worker reports as its max_in_flight now. */
  limit(): number {
    if (this.capacity === undefined) return this.ceiling;
    const floor = Math.min(this.ceiling, 2 * this.threads);
    return Math.max(floor, Math.min(this.ceiling, 2 * this.threads * this.capacity));
  }
}
