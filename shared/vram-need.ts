// What one item needs on a GPU, and the one rule that says whether it fits. Shared by the
// coordinator (placement against its ledger) and the worker (its own admission check against
// what is really resident), so the two can never disagree on the arithmetic; each side decides
// for itself whether the model's weights are already counted on the GPU, because each knows
// different things (the coordinator its live reservations, the worker what it holds and has
// loaded). Pure: no I/O.

import { activationBytes, type ModelManifest } from "./manifest.js";

/**
 * The largest VRAM figure an outcome may carry (vram_used_bytes: a measured peak, or an
 * OUT_OF_MEMORY's need): the coordinator refuses an outcome above it, so a worker caps what it reports.
 */
export const MAX_REPORTED_VRAM_BYTES = 2 ** 50; // 1 PiB

/** An item's VRAM need, split so the weights are paid once per GPU and the activations per item. */
export interface VramNeed {
  /** The model's weights: paid by the first item of the model on a GPU. */
  weightsBytes: number;
  /** This item's activations (depends on its params, e.g. the image size). */
  activationBytes: number;
}

/** The manifest's need for one item; an unknown model needs nothing the coordinator can count. */
export function itemNeed(manifest: ModelManifest | undefined, params: Record<string, unknown>): VramNeed {
  if (!manifest) return { weightsBytes: 0, activationBytes: 0 };
  return { weightsBytes: manifest.vram.weights_bytes, activationBytes: activationBytes(manifest, params) };
}

/** The bytes the item takes on a GPU: its activations, plus the weights unless already counted there. */
export function bytesToReserve(need: VramNeed, weightsAlreadyCounted: boolean): number {
  return need.activationBytes + (weightsAlreadyCounted ? 0 : need.weightsBytes);
}

/**
 * The fit rule: the bytes the item takes there (see bytesToReserve) must not exceed what is
 * free on the GPU less what is reserved and not yet reflected in that free figure. Returns the
 * bytes left over after the item (≥ 0), or undefined when it does not fit.
 */
export function fits(freeBytes: number, reservedBytes: number, need: VramNeed, weightsAlreadyCounted: boolean): number | undefined {
  const left = freeBytes - reservedBytes - bytesToReserve(need, weightsAlreadyCounted);
  return left < 0 ? undefined : left;
}
