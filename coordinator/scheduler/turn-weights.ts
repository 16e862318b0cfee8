// What the queue's turns really give each priority, for the ETA (eta.ts). BatchQueue hands out
// items by turns of `priorityWeight` items per batch, a turn spanning passes, so the nominal
// weights should hold; but what a class gets in effect also depends on things the weights do not
// see (a batch whose model's GPUs are full is skipped; a batch with fewer items waiting than its
// weight takes fewer), and before the turns spanned passes a busy fleet shared equally whatever
// the priority. So it is measured: per refresh interval, the items started by the batches that
// had items waiting all along, against what the nominal weights would have given each of them
// of that interval's starts; summed per weight class over a sliding window, the ratio corrects
// the class's weight. Comparing within each interval keeps a class seen only early
// (when few batches shared the fleet and each started many items) from looking favoured. A class
// seen little leans on its nominal weight (PRIOR_ITEMS started as expected).
//
// Pure, with an injected clock.

/** Items started as the nominal weight says that a class's correction starts from. */
const PRIOR_ITEMS = 10;

interface ClassSums {
  /** Items its batches started. */
  started: number;
  /** Items the nominal weights would have given them of the same intervals' starts. */
  expected: number;
}

export class LearnedTurnWeights {
  private readonly log: { atMs: number; byWeight: Map<number, ClassSums> }[] = [];
  private readonly sums = new Map<number, ClassSums>();

  constructor(private readonly windowMs = 60_000) {}

  /** One refresh interval ending at `atMs`: per batch that had items waiting all along, its nominal weight and the items it started. */
  observe(atMs: number, batches: readonly { weight: number; starts: number }[]): void {
    let started = 0;
    let weights = 0;
    for (const b of batches) {
      if (!(b.weight > 0) || !(b.starts >= 0)) continue;
      started += b.starts;
      weights += b.weight;
    }
    // An interval with one class only, or nothing started, says nothing about the classes' shares.
    const byWeight = new Map<number, ClassSums>();
    if (started > 0) {
      for (const b of batches) {
        if (!(b.weight > 0) || !(b.starts >= 0)) continue;
        const c = byWeight.get(b.weight) ?? { started: 0, expected: 0 };
        c.started += b.starts;
        c.expected += (started * b.weight) / weights;
        byWeight.set(b.weight, c);
      }
    }
    if (byWeight.size > 1) {
      this.log.push({ atMs, byWeight });
      this.add(byWeight, 1);
    }
    while (this.log.length > 0 && this.log[0]!.atMs <= atMs - this.windowMs) this.add(this.log.shift()!.byWeight, -1);
  }

  private add(byWeight: Map<number, ClassSums>, sign: number): void {
    for (const [w, c] of byWeight) {
      const s = this.sums.get(w) ?? { started: 0, expected: 0 };
      s.started += sign * c.started;
      s.expected += sign * c.expected;
      if (s.expected <= 1e-9) this.sums.delete(w);
      else this.sums.set(w, s);
    }
  }

  /** The turn weight a batch of nominal weight `nominal` gets in effect. */
  weightOf(nominal: number): number {
    const c = this.sums.get(nominal);
    if (!c) return nominal;
    return (nominal * (Math.max(0, c.started) + PRIOR_ITEMS)) / (c.expected + PRIOR_ITEMS);
  }
}
