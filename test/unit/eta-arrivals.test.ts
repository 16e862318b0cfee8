// The ETA with batches still to come (scheduler/eta.ts with arrivals.ts), the turn weights the
// queue gives in effect (turn-weights.ts), pools of models that fit few GPUs, and BatchProgress
// learning all three from what it sees.
import { test } from "node:test";
import assert from "node:assert/strict";
import { estimateBatches, estimateWithPools, type EtaArrivals, type EtaBatch } from "../../coordinator/scheduler/eta.js";
import { RecentArrivals } from "../../coordinator/scheduler/arrivals.js";
import { LearnedTurnWeights } from "../../coordinator/scheduler/turn-weights.js";

const NOW = 1_000_000;

function batch(id: string, over: Partial<EtaBatch> = {}): EtaBatch {
  return { id, weight: 1, started: false, waitingItems: 0, waitingWorkMs: 0, runningRemainingMs: [], ...over };
}

/** A low-priority batch of 1,000 items of 100 ms on 10 slots: 10 s alone. */
const low = batch("low", { started: true, waitingItems: 1000, waitingWorkMs: 100_000 });
/** Small high-priority batches (weight 5, 10 items of 100 ms), one every 200 ms: 5 ms of work per ms, half the fleet. */
const highStream = (horizonMs: number): EtaArrivals => ({ perMs: 1 / 200, horizonMs, samples: Array.from({ length: 8 }, () => ({ workMs: 1000, share: 5 * 100 })) });

test("eta arrivals - a steady stream of higher-priority work makes a low-priority batch later by the share it takes", () => {
  const alone = estimateBatches({ nowMs: NOW, concurrency: 10, batches: [low] }).get("low")!.completionMs! - NOW;
  const withStream = estimateBatches({ nowMs: NOW, concurrency: 10, batches: [low], arrivals: highStream(60_000) }).get("low")!.completionMs! - NOW;
  // Alone: 100 s of work on 10 slots. The stream takes 5 of the 10 slots while it goes on (each
  // small batch is done long before the large one); seen for 60 s, it goes on τ more with chance
  // 60 / (60 + τ), so by T it takes 300·ln(1 + T/60) slot-seconds: 10·T − 300·ln(1 + T/60) = 100 s
  // gives T ≈ 17.8 s (20 s if it surely went on at its full rate).
  assert.ok(alone > 9_900 && alone < 10_200, `alone ${alone}`);
  assert.ok(withStream > 17_000 && withStream < 18_700, `with the stream ${withStream}`);
});

test("eta arrivals - a stream seen briefly is expected to end soon: its share fades", () => {
  const eta = estimateBatches({ nowMs: NOW, concurrency: 10, batches: [low], arrivals: highStream(5000) }).get("low")!.completionMs! - NOW;
  const longSeen = estimateBatches({ nowMs: NOW, concurrency: 10, batches: [low], arrivals: highStream(60_000) }).get("low")!.completionMs! - NOW;
  // Seen for 5 s, it goes on τ more with chance 5 / (5 + τ): by T it takes 25·ln(1 + T/5)
  // slot-seconds of the 10 slots, and 10·T − 25·ln(1 + T/5) = 100 s gives T ≈ 13.2 s.
  assert.ok(eta > 12_700 && eta < 13_800, `eta ${eta}`);
  assert.ok(eta < longSeen - 3000, `a stream seen for 5 s (${eta}) takes less than one seen for 60 s (${longSeen})`);
});

test("eta arrivals - equal-priority arrivals as large as the batch take a fair share; a small batch barely moves", () => {
  const big: EtaArrivals = { perMs: 1 / 1000, horizonMs: 60_000, samples: [{ workMs: 1_000_000, share: 100 }] };
  const a = batch("a", { waitingItems: 100, waitingWorkMs: 10_000 });
  const alone = estimateBatches({ nowMs: NOW, concurrency: 1, batches: [a] }).get("a")!.completionMs! - NOW;
  const shared = estimateBatches({ nowMs: NOW, concurrency: 1, batches: [a], arrivals: big }).get("a")!.completionMs! - NOW;
  // One batch arrives per second and never ends before a: a shares the slot with 1, 2, 3 … of them.
  assert.ok(alone > 9_900 && alone < 10_100, `alone ${alone}`);
  assert.ok(shared > 30_000, `shared ${shared}`);
  const small = batch("s", { waitingItems: 2, waitingWorkMs: 200 });
  const smallAlone = estimateBatches({ nowMs: NOW, concurrency: 1, batches: [small] }).get("s")!.completionMs! - NOW;
  const smallShared = estimateBatches({ nowMs: NOW, concurrency: 1, batches: [small], arrivals: big }).get("s")!.completionMs! - NOW;
  assert.ok(smallShared - smallAlone < 50, `small: ${smallAlone} → ${smallShared}`);
});

test("eta arrivals - no arrivals, no change: the estimate is exactly the one without them", () => {
  const batches = [
    batch("a", { started: true, waitingItems: 36, waitingWorkMs: 36_000, runningRemainingMs: [500, 500] }),
    batch("b", { waitingItems: 3, waitingWorkMs: 3000, weight: 3 }),
    batch("c", { started: true, runningRemainingMs: [700, 100] }),
  ];
  const without = estimateBatches({ nowMs: NOW, concurrency: 4, batches });
  for (const arrivals of [undefined, { perMs: 0, horizonMs: 10_000, samples: [{ workMs: 1000, share: 100 }] }, { perMs: 1, horizonMs: 0, samples: [{ workMs: 1000, share: 100 }] }]) {
    assert.deepEqual(estimateBatches({ nowMs: NOW, concurrency: 4, batches, arrivals }), without);
  }
});

test("eta arrivals - a model that fits few GPUs is a pool of its own: its batches end no earlier than their items there", () => {
  const fleet = { nowMs: NOW, concurrency: 10, batches: [batch("a", { waitingItems: 20, waitingWorkMs: 20_000 })] };
  const alone = estimateWithPools(fleet, []).get("a")!.completionMs! - NOW;
  // 5 of its items are of a model only 1 item of fits at once: 5 s there.
  const pooled = estimateWithPools(fleet, [{ concurrency: 1, batches: [batch("a", { waitingItems: 5, waitingWorkMs: 5000 })] }]).get("a")!.completionMs! - NOW;
  assert.ok(alone < 2500, `fleet ${alone}`);
  assert.ok(pooled >= 5000 && pooled < 5100, `pooled ${pooled}`);
  // A pool that ends first changes nothing.
  assert.equal(estimateWithPools(fleet, [{ concurrency: 10, batches: [batch("a", { waitingItems: 1, waitingWorkMs: 1000 })] }]).get("a")!.completionMs! - NOW, alone);
});

test("eta arrivals - recent arrivals: one batch or one burst is no stream; a steady one has its rate; a long silence ends it", () => {
  const r = new RecentArrivals();
  const sample = (atMs: number) => ({ atMs, workMs: 1000, weight: 1, meanItemMs: 100 });
  r.observe(sample(0));
  assert.equal(r.stream(5000), undefined, "one batch");
  r.observe(sample(10));
  r.observe(sample(500));
  assert.equal(r.stream(5000), undefined, "one burst");
  for (let t = 2000; t <= 20_000; t += 2000) r.observe(sample(t));
  const s = r.stream(20_500)!;
  // 10 arrivals after the first instant in 20.5 s, expected to go on as long as seen.
  assert.ok(Math.abs(s.perMs * 1000 - 10 / 20.5) < 1e-9, `rate ${s.perMs * 1000}/s`);
  assert.equal(s.horizonMs, 20_500);
  assert.equal(s.samples.length, 13);
  assert.deepEqual(s.samples[0], { workMs: 1000, share: 100 });
  assert.equal(r.stream(20_500, (w) => 3 * w)!.samples[0]!.share, 300, "shares take the turn weights as they are now");
  // Silent for more than 5 mean gaps (at the rate counted up to then): the stream has ended.
  assert.ok(r.stream(35_000) !== undefined, "15 s silent at 10 arrivals in 35 s: 4.3 gaps");
  assert.equal(r.stream(50_000), undefined, "30 s silent at 10 arrivals in 50 s: 6 gaps");
});

test("eta arrivals - turn weights: nominal when the queue honours them, equal when it serves one item per turn, nominal with no data", () => {
  const equal = new LearnedTurnWeights();
  const honoured = new LearnedTurnWeights();
  for (let t = 1000; t <= 30_000; t += 1000) {
    equal.observe(t, [{ weight: 1, starts: 3 }, { weight: 5, starts: 3 }, { weight: 5, starts: 3 }]);
    honoured.observe(t, [{ weight: 1, starts: 1 }, { weight: 5, starts: 5 }, { weight: 5, starts: 5 }]);
  }
  // Equal turns: every class tends to the mean nominal weight of the batches seen, (1 + 5 + 5) / 3
  // (the prior of 10 items as expected still pulls weight 1 down a little after 30 refreshes).
  assert.ok(Math.abs(equal.weightOf(1) - 11 / 3) < 0.8, `equal: weight 1 → ${equal.weightOf(1)}`);
  assert.ok(Math.abs(equal.weightOf(5) - 11 / 3) < 0.2, `equal: weight 5 → ${equal.weightOf(5)}`);
  assert.ok(equal.weightOf(5) - equal.weightOf(1) < 1, "nearly equal, not 1 against 5");
  assert.ok(Math.abs(honoured.weightOf(1) - 1) < 1e-9 && Math.abs(honoured.weightOf(5) - 5) < 1e-9);
  assert.equal(equal.weightOf(3), 3, "a class never seen keeps its nominal weight");
  assert.equal(new LearnedTurnWeights().weightOf(2), 2);
  // The window forgets: a minute later with nothing seen, nominal again.
  equal.observe(100_000, []);
  assert.equal(equal.weightOf(5), 5);
});

test("eta arrivals - batch progress: the same batches present, a stream seen arriving makes the large batch's ETA later than one burst does", async () => {
  const { BatchProgress } = await import("../../coordinator/batch-progress.js");
  const { LearnedDurations } = await import("../../coordinator/learned-durations.js");
  const { VramLedger } = await import("../../coordinator/vram-ledger.js");
  const quiet = { info() {}, warn() {} } as unknown as ConstructorParameters<typeof LearnedDurations>[1];
  const learned = new LearnedDurations(new VramLedger(), quiet);
  learned.observe("m", "m|0x0", "w1", 0, 1000);
  const T0 = 1_000_000;
  const slot = (state: "pending" | "leased", queuedAtMs: number, assignedAtMs = queuedAtMs) => ({
    model: "m",
    shapeKey: "m|0x0",
    state,
    firstQueuedAtMs: queuedAtMs,
    lease: state === "leased" ? { workerId: "w1", gpuIndex: 0, assignedAtMs, token: "1.x" } : undefined,
  });
  const activeBatch = (id: string, priority: number, items: ReturnType<typeof slot>[]) =>
    ({ id, items, started: items.some((s) => s.state === "leased"), doneCount: 0, record: { batch: { priority } } }) as never;
  // A large low-priority batch running on 4 slots; a small high-priority batch arrives every second.
  const large = (t: number) => activeBatch("large", 0, [...Array.from({ length: 4 }, () => slot("leased", T0, t)), ...Array.from({ length: 200 }, () => slot("pending", T0))]);
  const small = (i: number) => activeBatch(`h${i}`, 4, Array.from({ length: 4 }, () => slot("pending", T0 + i * 1000)));
  const watching = new BatchProgress(learned);
  for (let i = 0; i <= 20; i++) watching.refresh(T0 + i * 1000, [large(T0 + i * 1000), ...(i > 0 ? [small(i)] : [])]);
  const t = T0 + 20_000;
  const present = [large(t), small(20)];
  watching.refresh(t, present);
  const fresh = new BatchProgress(learned); // sees the same batches once: one burst, no stream
  fresh.refresh(t, present);
  const withStream = watching.get("large")!.estimatedCompletionAt!.getTime() - t;
  const without = fresh.get("large")!.estimatedCompletionAt!.getTime() - t;
  // 200 s of work on 4 slots: about 51 s without arrivals. The stream brings 4 s of work a second,
  // all of the 4 slots, for as long as it has been seen (20 s): the large batch gets little of them meanwhile.
  assert.ok(without > 45_000 && without < 60_000, `without the stream ${without}`);
  assert.ok(withStream > without + 10_000, `with the stream ${withStream} vs ${without}`);
});
