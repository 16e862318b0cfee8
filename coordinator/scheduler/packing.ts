// Packing: whether an item would strand VRAM on the GPU placement chose for it. Items of one
// model come in several sizes (image widths, sequence lengths); a size that does not divide a
// GPU's room leaves a remainder no item of that size can use for as long as they run there. Two
// 6.4 GB items fill the 16 GB a 24 GB GPU has after an 8 GB model's weights to 12.8 GB (3.2 GB,
// a fifth, idle), where three 5.2 GB items fill it to 15.6 GB and the 72 GB of an 80 GB GPU holds
// eleven 6.4 GB items with 1.6 GB (2 %) left. Best fit picks the tightest GPU, so left alone the
// 6.4 GB items settle on the 24 GB GPUs.
//
// The engine's pass therefore treats an item whose chosen GPU it would strand (more than
// STRAND_SHARE of the room) in two steps (scheduler/engine.ts, placeQueued): it goes to a GPU
// the plan accepts where it packs, as warm as the one chosen, when one has room now (a fleet scan,
// only for such items; a need that finds none is not looked for again in the pass); otherwise
// it is passed over and the items behind it are placed first (a smaller item of the model takes
// the room). Items passed over are placed in a second walk of the same pass wherever they fit
// then, so no GPU is left idle for them: the rule only reorders within a pass. Pure.

/** Above this share of a GPU's room stranded, an item waits for the rest of the pass. */
export const STRAND_SHARE = 0.1;

/**
 * The share of a GPU's room for a model (its VRAM less the model's weights) that items of
 * `needBytes` cannot use when it holds only them: ((total − weights) mod need) / (total − weights).
 * 0 when the room is a multiple of the need, or the item needs no activations.
 */
export function strandedShare(totalBytes: number, weightsBytes: number, needBytes: number): number {
  const room = totalBytes - weightsBytes;
  if (needBytes <= 0 || room <= 0) return 0;
  return (room % needBytes) / room;
}

/** Whether an item of `needBytes` strands more than `limit` of the GPU's room for its model. */
export function strands(totalBytes: number, weightsBytes: number, needBytes: number, limit = STRAND_SHARE): boolean {
  return strandedShare(totalBytes, weightsBytes, needBytes) > limit;
}
