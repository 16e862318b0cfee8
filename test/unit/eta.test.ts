import { test } from "node:test";
import assert from "node:assert/strict";
import { estimateBatches, type EtaBatch } from "../../coordinator/scheduler/eta.js";

const NOW = 1_000_000;

function batch(id: string, over: Partial<EtaBatch> = {}): EtaBatch {
  return { id, weight: 1, started: false, waitingItems: 0, waitingWorkMs: 0, runningRemainingMs: [], ...over };
}

test("eta - queue position: 0 once started or with nothing waiting, else 1 + the batches not started ahead", () => {
  const out = estimateBatches({
    nowMs: NOW,
    concurrency: 2,
    batches: [
      batch("a", { started: true, waitingItems: 5, waitingWorkMs: 5000, runningRemainingMs: [500, 500] }),
      batch("b", { waitingItems: 3, waitingWorkMs: 3000 }),
      batch("c", { started: true, runningRemainingMs: [100] }),
      batch("d", { waitingItems: 1, waitingWorkMs: 1000, weight: 9 }),
      batch("e"),
    ],
  });
  assert.deepEqual(
    [...out].map(([id, e]) => [id, e.queuePosition]),
    [
      ["a", 0],
      ["b", 1],
      ["c", 0],
      ["d", 2],
      ["e", 0],
    ],
  );
});

test("eta - one batch alone: its work over the fleet's concurrency, plus about half an item for the last wave", () => {
  const out = estimateBatches({ nowMs: NOW, concurrency: 4, batches: [batch("a", { started: true, waitingItems: 36, waitingWorkMs: 36_000, runningRemainingMs: [500, 500, 500, 500] })] });
  const eta = out.get("a")!.completionMs! - NOW;
  // 38 s of work on 4 slots: 9.5 s, and the last wave ends 0.3 s after the mean.
  assert.ok(Math.abs(eta - 9800) < 1, `eta ${eta}`);
});

test("eta - a batch with nothing waiting ends with its longest running item", () => {
  const out = estimateBatches({ nowMs: NOW, concurrency: 3, batches: [batch("a", { started: true, runningRemainingMs: [100, 2500, 40] }), batch("b", { started: true })] });
  assert.equal(out.get("a")!.completionMs, NOW + 2500);
  assert.equal(out.get("b")!.completionMs, NOW);
});

test("eta - without capacity or with a guessed duration, waiting work has no ETA", () => {
  const none = estimateBatches({ nowMs: NOW, concurrency: 0, batches: [batch("a", { waitingItems: 3, waitingWorkMs: 3000 })] });
  assert.equal(none.get("a")!.completionMs, undefined);
  const guessed = estimateBatches({
    nowMs: NOW,
    concurrency: 1,
    batches: [batch("a", { waitingItems: 10, waitingWorkMs: 10_000, unknown: true }), batch("b", { waitingItems: 1, waitingWorkMs: 1000 })],
  });
  assert.equal(guessed.get("a")!.completionMs, undefined);
  // The unknown batch's guessed work still takes turns with b: b shares the slot with it.
  assert.equal(guessed.get("b")!.completionMs, NOW + 2000);
});

test("eta - a small batch behind a large one shares the fleet by turns and ends first", () => {
  const out = estimateBatches({
    nowMs: NOW,
    concurrency: 10,
    batches: [batch("big", { started: true, waitingItems: 1000, waitingWorkMs: 1_000_000 }), batch("small", { waitingItems: 10, waitingWorkMs: 10_000 })],
  });
  const small = out.get("small")!.completionMs! - NOW;
  const big = out.get("big")!.completionMs! - NOW;
  // Half the fleet each until small is done (10 s of work at 5 slots: 2 s), then big has it all.
  assert.ok(small >= 2000 && small < 2500, `small ${small}`);
  assert.ok(big >= 101_000 && big < 101_500, `big ${big}`);
});

test("eta - priority weights the shares", () => {
  const eq = estimateBatches({ nowMs: NOW, concurrency: 4, batches: [batch("a", { waitingItems: 40, waitingWorkMs: 40_000 }), batch("b", { waitingItems: 40, waitingWorkMs: 40_000 })] });
  const pri = estimateBatches({ nowMs: NOW, concurrency: 4, batches: [batch("a", { waitingItems: 40, waitingWorkMs: 40_000 }), batch("b", { waitingItems: 40, waitingWorkMs: 40_000, weight: 3 })] });
  assert.ok(pri.get("b")!.completionMs! < eq.get("b")!.completionMs!);
  assert.ok(pri.get("b")!.completionMs! < pri.get("a")!.completionMs!);
});

test("eta - slots held by a batch with nothing waiting go to the others when its items end", () => {
  const out = estimateBatches({
    nowMs: NOW,
    concurrency: 4,
    batches: [batch("a", { started: true, runningRemainingMs: [1000, 1000, 1000, 1000] }), batch("b", { waitingItems: 4, waitingWorkMs: 4000 })],
  });
  const b = out.get("b")!.completionMs! - NOW;
  assert.ok(b >= 2000 && b < 2400, `b ${b}`);
});

// A small discrete-event check of the model against what a fleet of slots filled by weighted
// turns really does, with skewed item durations: the ETA given at 25 % of a batch's progress
// is compared with when it really ends (the accuracy target of the bench, on a toy fleet).
function simulate(seed: number): number[] {
  let s = seed;
  const rand = () => ((s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  const lognormal = () => Math.exp(0.6 * Math.sqrt(-2 * Math.log(rand() || 1e-9)) * Math.cos(2 * Math.PI * rand()));
  const slots = 16;
  const meanMs = 1000 * Math.exp(0.18);
  const batches = Array.from({ length: 4 }, (_, i) => ({
    id: `b${i}`,
    weight: 1 + (i % 2),
    durations: Array.from({ length: 50 + Math.floor(rand() * 200) }, () => 1000 * lognormal()),
    next: 0,
    done: 0,
    running: [] as { start: number; end: number }[],
    endMs: undefined as number | undefined,
    etaAtQuarter: undefined as { at: number; eta: number } | undefined,
  }));
  const running: { end: number; b: (typeof batches)[number]; start: number }[] = [];
  let t = 0;
  let turn = 0;
  let credit = 0;
  const fill = () => {
    while (running.length < slots) {
      const waiting = batches.filter((b) => b.next < b.durations.length);
      if (waiting.length === 0) return;
      const b = waiting[turn % waiting.length]!;
      const r = { start: t, end: t + b.durations[b.next++]!, b };
      running.push(r);
      b.running.push(r);
      if (++credit >= b.weight) {
        credit = 0;
        turn++;
      }
    }
  };
  fill();
  while (running.length > 0) {
    running.sort((a, b) => a.end - b.end);
    const r = running.shift()!;
    t = r.end;
    const b = r.b;
    b.running.splice(b.running.indexOf(r), 1);
    b.done++;
    if (b.done === b.durations.length) b.endMs = t;
    fill();
    if (!b.etaAtQuarter && b.done >= b.durations.length / 4) {
      const eta = estimateBatches({
        nowMs: t,
        concurrency: running.length,
        batches: batches.map((x) => ({
          id: x.id,
          weight: x.weight,
          started: x.next > 0,
          waitingItems: x.durations.length - x.next,
          waitingWorkMs: (x.durations.length - x.next) * meanMs,
          runningRemainingMs: x.running.map((q) => Math.max(meanMs - (t - q.start), 0.1 * meanMs)),
        })),
      });
      b.etaAtQuarter = { at: t, eta: eta.get(b.id)!.completionMs! };
    }
  }
  return batches.map((b) => Math.abs(b.etaAtQuarter!.eta - b.endMs!) / (b.endMs! - b.etaAtQuarter!.at));
}

test("eta - at 25 % progress the ETA is within 20 % of the remaining time (median, simulated slots)", () => {
  const errors = [1, 2, 3, 4, 5, 6, 7, 8].flatMap(simulate).sort((a, b) => a - b);
  const median = errors[Math.floor(errors.length / 2)]!;
  assert.ok(median < 0.2, `median relative error ${median.toFixed(3)} (all: ${errors.map((e) => e.toFixed(2)).join(" ")})`);
});

test("eta - the bench's accuracy rule: the first sample at 25 % with an ETA, error over the time left", async () => {
  const { etaErrorAt } = await import("../../bench/lib/eta-accuracy.js");
  const samples = [
    { atMs: 0, done: 0, total: 100, etaMs: undefined },
    { atMs: 100, done: 20, total: 100, etaMs: 900 },
    { atMs: 200, done: 25, total: 100, etaMs: undefined },
    { atMs: 300, done: 30, total: 100, etaMs: 1300 },
    { atMs: 400, done: 40, total: 100, etaMs: 1000 },
  ];
  // At 300 ms the ETA said 1300; the batch ended at 1100: 200 off of 800 left.
  assert.equal(etaErrorAt(samples, 1100), 0.25);
  assert.equal(etaErrorAt(samples.slice(0, 3), 1100), undefined);
  assert.equal(etaErrorAt(samples, 250), undefined, "ended before the sample: no remaining time to compare");
});

test("eta - batch progress: summaries from the learned durations, slot overhead added, watchers told only of real moves", async () => {
  const { BatchProgress } = await import("../../coordinator/batch-progress.js");
  const { LearnedDurations } = await import("../../coordinator/learned-durations.js");
  const { VramLedger } = await import("../../coordinator/vram-ledger.js");
  const ledger = new VramLedger();
  const quiet = { info() {}, warn() {} } as unknown as ConstructorParameters<typeof LearnedDurations>[1];
  const learned = new LearnedDurations(ledger, quiet);
  const slot = (state: "pending" | "leased" | "done", model = "m", assignedAtMs = 0) => ({
    model,
    shapeKey: `${model}|0x0`,
    state,
    lease: state === "leased" ? { workerId: "w1", gpuIndex: 0, assignedAtMs, token: "1.x" } : undefined,
  });
  const batch = (id: string, items: ReturnType<typeof slot>[], started: boolean) =>
    ({ id, items, started, doneCount: items.filter((s) => s.state === "done").length, record: { batch: { priority: 0 } } }) as never;
  const progress = new BatchProgress(learned);
  const t = 1_000_000;
  // Nothing learned for m: running work, no ETA for the batch whose waiting items are guesses.
  let a = batch("a", [slot("leased", "m", t - 100), slot("pending"), slot("pending")], true);
  let b = batch("b", [slot("pending"), slot("pending")], false);
  assert.deepEqual(progress.refresh(t, [a, b]), ["a", "b"], "new estimates are news");
  assert.equal(progress.get("a")!.estimatedCompletionAt, undefined);
  assert.equal(progress.get("b")!.queuePosition, 1);
  assert.equal(progress.get("a")!.queuePosition, 0);
  // Learned: m takes 1 s, and a slot is held 100 ms longer than the run (assignment, commit).
  learned.observe("m", "m|0x0", "w1", 0, 1000);
  progress.observeSlotTime(t - 1100, t, 1000);
  assert.deepEqual(progress.refresh(t, [a, b]).sort(), ["a", "b"], "an ETA appeared");
  const etaA = progress.get("a")!.estimatedCompletionAt!.getTime() - t;
  // One slot: a's running item has 1.1 s − 0.1 s left, then a's two and b's two share the slot.
  assert.ok(etaA > 3000 && etaA < 5500, `a ends in ${etaA} ms`);
  // 100 ms later nothing moved enough to tell anyone.
  assert.deepEqual(progress.refresh(t + 100, [a, b]), []);
  // b started: its position changes.
  b = batch("b", [slot("leased", "m", t + 200), slot("pending")], true);
  a = batch("a", [slot("done"), slot("leased", "m", t + 200), slot("pending")], true);
  assert.ok(progress.refresh(t + 300, [a, b]).includes("b"));
  assert.equal(progress.get("b")!.queuePosition, 0);
  // A batch gone from the running set has no estimate any more.
  progress.refresh(t + 400, [a]);
  assert.equal(progress.get("b"), undefined);
});

test("eta - batch progress predicts items that declare their run time with the engine's predictor (as the queue ranks them)", async () => {
  const { BatchProgress } = await import("../../coordinator/batch-progress.js");
  const { LearnedDurations } = await import("../../coordinator/learned-durations.js");
  const { VramLedger } = await import("../../coordinator/vram-ledger.js");
  const { DurationModel } = await import("../../coordinator/scheduler/durations.js");
  const { LearnedPredictor } = await import("../../coordinator/scheduler/predictor.js");
  const ledger = new VramLedger();
  ledger.observe("w1", [{ index: 0, name: "SIMULATED x2", totalBytes: 1e10, freeBytes: 1e10, source: "budget" }], []);
  const quiet = { info() {}, warn() {} } as unknown as ConstructorParameters<typeof LearnedDurations>[1];
  const model = new DurationModel();
  const learned = new LearnedDurations(ledger, quiet, model);
  const engine = new LearnedPredictor(model, { gpuTypeOf: (id) => learned.gpuType(id, 0) });
  const slot = (state: "pending" | "leased", workMs: number, assignedAtMs = 0) =>
    ({ model: "sim-6g", shapeKey: "sim-6g|0x0", params: { work_ms: workMs }, state, lease: state === "leased" ? { workerId: "w1", gpuIndex: 0, assignedAtMs, token: "1.x" } : undefined }) as never;
  // The longest items ran first and taught the learned model a mean of 4 s; the four waiting ones declare 1 s.
  for (let i = 0; i < 4; i++) learned.observe("sim-6g", "sim-6g|0x0", "w1", 0, 4000);
  engine.observe(slot("leased", 8000), "w1", 4000); // a declared 8 s item ran in 4 s here: this GPU is 2× nominal
  const t = 1_000_000;
  const batch = { id: "a", items: [slot("leased", 4000, t), ...[1, 2, 3, 4].map(() => slot("pending", 1000))], started: true, doneCount: 4, record: { batch: { priority: 0 } } } as never;
  const withEngine = new BatchProgress(learned, engine);
  withEngine.refresh(t - 1000, [batch]); // the pace of the GPUs running items is the last refresh's
  withEngine.refresh(t, [batch]);
  const eta = withEngine.get("a")!.estimatedCompletionAt!.getTime() - t;
  // One slot (one item running): its 4 s at 2× is 2 s, then 4 × 1 s of declared work at the pace of
  // the GPU running items (2×): 2 s more. Before the pace was counted the waiting items were taken
  // at speed 1 (6-7 s), so on the simulator's mixed-speeds fleet the ETA was off by the fleet's mean speed.
  assert.ok(eta >= 4000 && eta < 5000, `declared: ETA in ${eta} ms`);
  const withoutEngine = new BatchProgress(learned);
  withoutEngine.refresh(t, [batch]);
  const learnedEta = withoutEngine.get("a")!.estimatedCompletionAt!.getTime() - t;
  assert.ok(learnedEta > 15_000, `learned mean only: ETA in ${learnedEta} ms (4 s per item)`);
});

test("eta - an item that declares its run time measures its GPU's speed from the first outcome", async () => {
  const { DurationModel } = await import("../../coordinator/scheduler/durations.js");
  const { LearnedPredictor } = await import("../../coordinator/scheduler/predictor.js");
  const types: Record<string, string> = { fast: "A", slow: "B" };
  const p = new LearnedPredictor(new DurationModel(), { gpuTypeOf: (id) => types[id] });
  const slot = (workMs: number) => ({ model: "sim-6g", shapeKey: "sim-6g|0x0", params: { work_ms: workMs } }) as never;
  assert.equal(p.speedOf("fast"), 1, "unknown until something ran there");
  p.observe(slot(1000), "fast", 500);
  p.observe(slot(1000), "slow", 2000);
  assert.equal(p.speedOf("fast"), 2);
  assert.equal(p.speedOf("slow"), 0.5);
  assert.equal(p.predictMs(slot(1000), "slow"), 2000);
  // A second predictor over the same model learns the speeds alone (the simulator's ETA path):
  // the model is not taught twice.
  const model = new DurationModel();
  const second = new LearnedPredictor(model, { gpuTypeOf: (id) => types[id] });
  second.observeSpeed(slot(1000), "fast", 500);
  assert.equal(second.speedOf("fast"), 2);
  assert.equal(model.predict({ model: "sim-6g", shape: "sim-6g|0x0" }).samples, 0);
  // Without declared durations the speeds wait for learned ratios between types.
  const q = new LearnedPredictor(new DurationModel(), { gpuTypeOf: (id) => types[id], useDeclared: false });
  q.observe(slot(1000), "fast", 500);
  assert.equal(q.speedOf("fast"), 1);
});
