// The prompt tokenizer: lower-cased words hashed into a fixed vocabulary, between a start and
// an end token. Real pipelines use a learned BPE vocabulary; a hashed one keeps the model
// self-contained while still giving every distinct word its own embedding row.

import { fnv1a32 } from "./prng.js";

export const VOCAB_SIZE = 4096;
export const BOS_TOKEN = 0;
export const EOS_TOKEN = 1;
/** Like CLIP's 77-token context: words past it are ignored. */
export const MAX_TOKENS = 77;

const WORD = /[\p{L}\p{N}]+/gu;

export function tokenize(text: string): BigInt64Array {
  const words = text.toLowerCase().match(WORD) ?? [];
  const ids = [BOS_TOKEN];
  for (const word of words.slice(0, MAX_TOKENS - 2)) ids.push(2 + (fnv1a32(word) % (VOCAB_SIZE - 2)));
  ids.push(EOS_TOKEN);
  return BigInt64Array.from(ids, (v) => BigInt(v));
}
