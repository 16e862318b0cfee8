import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { ReservationError, VramLedger, gpuKey } from "../../coordinator/vram-ledger.js";

const GB = 1e9;

test("vram ledger - reservations reduce what is available until the worker counts them", () => {
  const l = new VramLedger();
  l.observe("w1", [{ index: 0, name: "g", totalBytes: 24 * GB, freeBytes: 20 * GB, source: "budget" }], []);
  const k = gpuKey("w1", 0);
  l.reserve("t1", k, 6 * GB, "m");
  l.reserve("t2", k, 6 * GB, "m");
  assert.equal(l.available(k), 8 * GB);
  assert.throws(() => l.reserve("t3", k, 9 * GB, "m"), ReservationError);
  // The worker now holds t1 and says so: its free figure includes it, the reservation goes.
  l.observe("w1", [{ index: 0, name: "g", totalBytes: 24 * GB, freeBytes: 14 * GB, source: "budget" }], ["t1"]);
  assert.equal(l.available(k), 8 * GB);
  l.release("t2");
  assert.equal(l.available(k), 14 * GB);
  l.release("t2"); // twice is harmless
  assert.equal(l.available(k), 14 * GB);
  // t1 was counted by the worker: on a budget GPU its room comes back when it ends.
  l.release("t1");
  assert.equal(l.available(k), 20 * GB);
});

test("vram ledger - weights count as warm only while a lease of the model lives on the GPU", () => {
  const l = new VramLedger();
  l.observe("w1", [{ index: 0, name: "g", totalBytes: 24 * GB, freeBytes: 24 * GB, source: "budget" }], []);
  const k = gpuKey("w1", 0);
  assert.equal(l.warm(k, "m"), false);
  l.reserve("t1", k, 10 * GB, "m", 2 * GB, 8 * GB);
  assert.equal(l.warm(k, "m"), true);
  l.reserve("t2", k, 2 * GB, "m", 2 * GB, 8 * GB);
  // The worker reports both held: weights once, two activations.
  l.observe("w1", [{ index: 0, name: "g", totalBytes: 24 * GB, freeBytes: 12 * GB, source: "budget" }], ["t1", "t2"]);
  l.release("t1");
  assert.equal(l.available(k), 14 * GB, "one item's activations back; the weights stay while t2 lives");
  l.release("t2");
  assert.equal(l.warm(k, "m"), false);
  assert.equal(l.available(k), 24 * GB, "the last item of the model gives its weights back too");
});

test("vram ledger - an item a later report no longer lists is not given back twice", () => {
  const l = new VramLedger();
  const k = gpuKey("w1", 0);
  const report = (free: number) => [{ index: 0, name: "g", totalBytes: 24 * GB, freeBytes: free, source: "budget" }];
  l.observe("w1", report(24 * GB), []);
  l.reserve("t1", k, 4 * GB, "m");
  l.observe("w1", report(20 * GB), ["t1"]); // held: counted in free
  l.observe("w1", report(24 * GB), []); // the worker already let go, before its outcome arrived
  l.release("t1");
  assert.equal(l.available(k), 24 * GB);
});

test("vram ledger - a lost worker's GPUs and reservations disappear", () => {
  const l = new VramLedger();
  l.observe("w1", [{ index: 0, name: "g", totalBytes: 8 * GB, freeBytes: 8 * GB, source: "budget" }], []);
  l.reserve("t1", gpuKey("w1", 0), GB, "m");
  l.removeWorker("w1");
  assert.equal(l.all().length, 0);
  assert.equal(l.reservationCount(), 0);
});

test("vram ledger - property: whatever the order of events, no reservation is ever made past free VRAM", () => {
  type Ev =
    | { t: "reserve"; gpu: number; bytes: number }
    | { t: "release"; n: number }
    | { t: "heartbeat"; gpu: number; free: number; held: number[] };
  const ev = fc.oneof(
    fc.record({ t: fc.constant("reserve" as const), gpu: fc.integer({ min: 0, max: 2 }), bytes: fc.integer({ min: 0, max: 30 }) }),
    fc.record({ t: fc.constant("release" as const), n: fc.integer({ min: 0, max: 40 }) }),
    fc.record({ t: fc.constant("heartbeat" as const), gpu: fc.integer({ min: 0, max: 2 }), free: fc.integer({ min: 0, max: 80 }), held: fc.array(fc.integer({ min: 0, max: 40 }), { maxLength: 5 }) }),
  );
  fc.assert(
    fc.property(fc.array(ev, { maxLength: 80 }), (events) => {
      const l = new VramLedger();
      const free = [80, 24, 16];
      const gpus = () => free.map((f, i) => ({ index: i, name: `g${i}`, totalBytes: 80, freeBytes: f, source: "budget" }));
      l.observe("w", gpus(), []);
      let n = 0;
      // Independent model of what is reserved and not yet counted by the worker.
      const open = new Map<string, { gpu: number; bytes: number }>();
      for (const e of events) {
        if (e.t === "reserve") {
          const k = gpuKey("w", e.gpu);
          const before = l.available(k);
          const token = `t${n++}`;
          // Only the ledger's own refusal is caught; an assertion below is never swallowed.
          let refused: unknown;
          try {
            l.reserve(token, k, e.bytes, "m");
          } catch (err) {
            refused = err;
          }
          if (refused === undefined) {
            assert.ok(e.bytes <= before, "reserved more than was available");
            open.set(token, { gpu: e.gpu, bytes: e.bytes });
          } else {
            assert.ok(refused instanceof ReservationError, String(refused));
            assert.ok(e.bytes > before, "refused a reservation that fitted");
          }
        } else if (e.t === "release") {
          l.release(`t${e.n}`);
          open.delete(`t${e.n}`);
        } else {
          free[e.gpu] = e.free;
          const held = e.held.map((h) => `t${h}`);
          l.observe("w", gpus(), held);
          for (const h of held) open.delete(h);
        }
        for (let g = 0; g < 3; g++) {
          const expected = [...open.values()].filter((o) => o.gpu === g).reduce((s, o) => s + o.bytes, 0);
          const view = l.gpusOf("w").find((v) => v.index === g)!;
          assert.equal(view.reservedBytes, expected, "ledger drifted from the reservations it holds");
          assert.ok(view.freeBytes <= view.totalBytes);
        }
      }
    }),
    { numRuns: 300 },
  );
});
