// Where one item goes. Pure: takes the fleet as seen now, returns a decision or nothing (the item
// waits in the queue).

import { bytesToReserve, fits, type VramNeed } from "../shared/vram-need.js";
import type { VramLedger } from "./vram-ledger.js";

export type PlacementPolicy = "best-fit" | "spread";

export interface PlaceableWorker {
  id: string;
  /** How many more items the worker may take now. */
  slotsFree: number;
  resident: ReadonlySet<string>;
  models: ReadonlySet<string>;
}

/** An item's need (activations as the coordinator estimates them now) and its model. */
export interface ItemNeed extends VramNeed {
  model: string;
}

export interface Placement {
  workerId: string;
  gpuKey: string;
  gpuIndex: number;
  /** What to reserve: activations, plus the weights where the model is not counted yet. */
  bytes: number;
  /** The model whose weights this placement counts, if any. */
  loads: string | undefined;
}

/**
 * Best-fit (default) picks the GPU that leaves the least VRAM unused, keeping large holes for
 * large items; spread picks the one that leaves the most. Either way a GPU where the model is
 * resident (or already being loaded) wins over one that would have to load it.
 */
export function placeItem(
  item: ItemNeed,
  workers: Iterable<PlaceableWorker>,
  ledger: VramLedger,
  policy: PlacementPolicy,
  /** Only GPUs it accepts are considered (the scheduler's affinity plan). */
  gpuFilter?: (gpuKey: string) => boolean,
): Placement | undefined {
  let best: Placement | undefined;
  let bestCat = Infinity;
  let bestFit = Infinity;
  for (const w of workers) {
    if (w.slotsFree <= 0 || !w.models.has(item.model)) continue;
    const resident = w.resident.has(item.model);
    for (const g of ledger.gpusOf(w.id)) {
      if (gpuFilter && !gpuFilter(g.key)) continue;
      // Weights are free only where a live lease of the model keeps them counted, or where the
      // worker reports keeping them resident and counted in its free figure (until evicted); a
      // model the worker merely has loaded elsewhere may be evicted, so its weights are counted
      // again (safe). The worker's own check decides on what it really holds.
      const warm = ledger.warm(g.key, item.model) || ledger.residentWeights(g.key).has(item.model);
      const left = fits(g.freeBytes, g.reservedBytes, item, warm);
      if (left === undefined) continue;
      const bytes = bytesToReserve(item, warm);
      // Lower is better; a GPU with the model in use or loaded (no load time) outweighs any
      // difference in leftover bytes.
      // Compared as a pair, not summed: a sum with 1e18 would round away differences below 128 bytes.
      const fit = policy === "best-fit" ? left : -left;
      const cat = warm || resident ? 0 : 1;
      if (cat < bestCat || (cat === bestCat && fit < bestFit)) {
        bestCat = cat;
        bestFit = fit;
        best = { workerId: w.id, gpuKey: g.key, gpuIndex: g.index, bytes, loads: warm ? undefined : item.model };
      }
    }
  }
  return best;
}
