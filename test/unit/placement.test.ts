import { test } from "node:test";
import assert from "node:assert/strict";
import { placeItem, type PlaceableWorker } from "../../coordinator/placement.js";
import { VramLedger } from "../../coordinator/vram-ledger.js";

const GB = 1e9;
const worker = (id: string, over: Partial<PlaceableWorker> = {}): PlaceableWorker => ({ id, slotsFree: 4, resident: new Set(), models: new Set(["m"]), ...over });

function ledgerWith(free: Record<string, number>): VramLedger {
  const l = new VramLedger();
  for (const [id, f] of Object.entries(free)) l.observe(id, [{ index: 0, name: id, totalBytes: f, freeBytes: f, source: "budget" }], []);
  return l;
}

test("placement - never places where free VRAM minus reservations is too small", () => {
  const l = ledgerWith({ small: 8 * GB, big: 24 * GB });
  const need = { model: "m", activationBytes: 4 * GB, weightsBytes: 8 * GB };
  const p = placeItem(need, [worker("small"), worker("big")], l, "best-fit");
  assert.equal(p?.workerId, "big");
  l.reserve("a", p!.gpuKey, p!.bytes, "m", 4 * GB);
  // 12 of 24 GB left; a lease of the model lives there, so the next item only needs 4 GB.
  const q = placeItem(need, [worker("small"), worker("big")], l, "best-fit");
  assert.equal(q?.workerId, "big");
  assert.equal(q?.bytes, 4 * GB);
  assert.equal(placeItem({ ...need, activationBytes: 30 * GB }, [worker("small"), worker("big")], l, "best-fit"), undefined);
});

test("placement - best-fit picks the tightest GPU, spread the emptiest", () => {
  const l = ledgerWith({ a: 16 * GB, b: 80 * GB, c: 24 * GB });
  const need = { model: "m", activationBytes: 2 * GB, weightsBytes: 10 * GB };
  const ws = [worker("a"), worker("b"), worker("c")];
  assert.equal(placeItem(need, ws, l, "best-fit")?.workerId, "a");
  assert.equal(placeItem(need, ws, l, "spread")?.workerId, "b");
});

test("placement - prefers the GPU where the model is resident; counts its weights unless a lease keeps them", () => {
  const l = ledgerWith({ a: 16 * GB, b: 80 * GB });
  const need = { model: "m", activationBytes: 2 * GB, weightsBytes: 10 * GB };
  const p = placeItem(need, [worker("a"), worker("b", { resident: new Set(["m"]) })], l, "best-fit");
  assert.equal(p?.workerId, "b");
  // Loaded but idle: the worker may evict it, so its weights are counted again.
  assert.equal(p?.bytes, 12 * GB);
  l.reserve("t", p!.gpuKey, p!.bytes, "m", 2 * GB);
  const q = placeItem(need, [worker("a"), worker("b", { resident: new Set(["m"]) })], l, "best-fit");
  assert.equal(q?.workerId, "b");
  assert.equal(q?.bytes, 2 * GB);
  assert.equal(q?.loads, undefined);
});

test("placement - skips workers without free slots or without the model", () => {
  const l = ledgerWith({ a: 16 * GB, b: 16 * GB });
  const need = { model: "m", activationBytes: GB, weightsBytes: GB };
  assert.equal(placeItem(need, [worker("a", { slotsFree: 0 }), worker("b", { models: new Set(["other"]) })], l, "best-fit"), undefined);
});
