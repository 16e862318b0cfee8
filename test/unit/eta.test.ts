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
