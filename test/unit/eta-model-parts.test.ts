// The fleet as the affinity planner splits it between models (scheduler/eta.ts, splitConcurrency):
// each model holds a part of the fleet's slots in proportion to its backlog (capped by what the
// VRAM lets it run), and a batch ends no earlier than its items of each model do in that part.
import { test } from "node:test";
import assert from "node:assert/strict";
import { splitConcurrency } from "../../coordinator/scheduler/eta.js";

test("eta model parts - the slots split in proportion to each model's work; none for a model without work", () => {
  const parts = splitConcurrency(12, [
    { workMs: 200_000, most: Infinity },
    { workMs: 100_000, most: Infinity },
    { workMs: 0, most: Infinity },
  ]);
  assert.deepEqual(parts.map((p) => Math.round(p * 1000) / 1000), [8, 4, 0]);
});

test("eta model parts - a model the VRAM caps holds at most its cap; the rest go to the others in proportion", () => {
  // Proportionally the first would get 60 of 100, but only 24 of its items fit at once.
  const parts = splitConcurrency(100, [
    { workMs: 600, most: 24 },
    { workMs: 300, most: Infinity },
    { workMs: 100, most: 80 },
  ]);
  assert.equal(parts[0], 24);
  assert.ok(Math.abs(parts[1]! - 57) < 1e-9, `second ${parts[1]}`);
  assert.ok(Math.abs(parts[2]! - 19) < 1e-9, `third ${parts[2]}`);
  // Every cap binding: each holds its cap, whatever slots are left over.
  assert.deepEqual(splitConcurrency(100, [{ workMs: 1, most: 10 }, { workMs: 1, most: 20 }]), [10, 20]);
  assert.deepEqual(splitConcurrency(0, [{ workMs: 1, most: 10 }]), [0]);
});

test("eta model parts - batch progress: a high-priority batch of one model ends with that model's part of the fleet, not the fleet's", async () => {
  const { BatchProgress } = await import("../../coordinator/batch-progress.js");
  const { LearnedDurations } = await import("../../coordinator/learned-durations.js");
  const { VramLedger } = await import("../../coordinator/vram-ledger.js");
  const quiet = { info() {}, warn() {} } as unknown as ConstructorParameters<typeof LearnedDurations>[1];
  const learned = new LearnedDurations(new VramLedger(), quiet);
  for (const m of ["a", "b"]) learned.observe(m, `${m}|0x0`, "w1", 0, 1000);
  const T0 = 1_000_000;
  const slot = (model: string, state: "pending" | "leased") => ({
    model,
    shapeKey: `${model}|0x0`,
    state,
    firstQueuedAtMs: T0,
    lease: state === "leased" ? { workerId: "w1", gpuIndex: 0, assignedAtMs: T0, token: "1.x" } : undefined,
  });
  const activeBatch = (id: string, priority: number, model: string, leased: number, pending: number) =>
    ({
      id,
      items: [...Array.from({ length: leased }, () => slot(model, "leased")), ...Array.from({ length: pending }, () => slot(model, "pending"))],
      started: true,
      doneCount: 0,
      record: { batch: { priority } },
    }) as never;
  // 6 items run at once: 4 of model a (200 s of work waiting), 2 of model b (100 s), as the planner
  // splits the fleet by backlog. Batch "hi" (priority 3) has all of b's work.
  const progress = new BatchProgress(learned);
  progress.refresh(T0, [activeBatch("lo", 0, "a", 4, 196), activeBatch("hi", 3, "b", 2, 98)]);
  const hi = progress.get("hi")!.estimatedCompletionAt!.getTime() - T0;
  const lo = progress.get("lo")!.estimatedCompletionAt!.getTime() - T0;
  // Its turns would give it 4/5 of the 6 slots (about 21 s), but b's part of the fleet is 2 slots: about 50 s.
  assert.ok(hi > 45_000 && hi < 56_000, `hi ${hi}`);
  assert.ok(lo > 45_000 && lo < 56_000, `lo ${lo}`);
});
