// prompt-guard-tiny: a tiny, deterministic prompt-policy classifier built by our own ONNX writer,
// for tests and as a template for a real one. It is an ordinary model of the model directory
// (manifest + model.onnx) whose manifest declares `prompt_policy`, so workers that load it
// screen imagegen-tiny's items with it before they run (worker/prompt-policy.ts).
//
// The network: token ids (imagegen-tiny's hashed-word tokenizer, "shoal-words-4096") → a
// per-token logit looked up in a [4096, 1] table → the largest over the sequence → sigmoid.
// The table is +8 for the rows of a few blocked words and -8 elsewhere, so the score is about
// 0.9997 when any blocked word occurs and 0.0003 otherwise. It is a stand-in, not a model of
// anything: words are hashed into 4094 rows, so a word that happens to share a row with a
// blocked one is flagged too; a real classifier learns its table (or is a real network) and
// only has to keep the same inputs and output.
//
// Write one with: node dist/worker/inference/prompt-guard.js <model-dir> [word ...]

import { mkdir, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import type { ModelManifest } from "../../shared/manifest.js";
import { tokenize, MAX_TOKENS, VOCAB_SIZE } from "./imagegen/tokenizer.js";
import { GraphBuilder, int, ints } from "./onnx-builder.js";

export const PROMPT_GUARD_NAME = "prompt-guard-tiny";
export const PROMPT_GUARD_FILE = "model.onnx";
/** What the classifier blocks unless told otherwise: words no test prompt uses by accident. */
export const DEFAULT_BLOCKED_WORDS = ["contraband", "forbidden"] as const;
const LOGIT = 8;

export interface PromptGuardOptions {
  /** Model name and directory name; default prompt-guard-tiny. */
  name?: string;
  /** Words whose presence gives a score near 1; default DEFAULT_BLOCKED_WORDS. */
  blockedWords?: readonly string[];
  /** The manifest's prompt_policy.applies_to; default ["imagegen-tiny"]. */
  appliesTo?: string[];
  /** The manifest's prompt_policy.threshold; default 0.5. */
  threshold?: number;
}

/** The token id of one word, as imagegen-tiny's tokenizer gives it (between BOS and EOS). */
function wordId(word: string): number {
  const ids = tokenize(word);
  if (ids.length !== 3) throw new RangeError(`blocked word ${JSON.stringify(word)} must be exactly one word of letters and digits`);
  return Number(ids[1]);
}

/** The .onnx bytes: tokens int64 [1, n] → score float32 [1, 1]. */
export function buildPromptGuardModel(blockedWords: readonly string[] = DEFAULT_BLOCKED_WORDS): Uint8Array {
  const table = new Float32Array(VOCAB_SIZE).fill(-LOGIT);
  for (const w of blockedWords) table[wordId(w)] = LOGIT;
  const g = new GraphBuilder("prompt_guard");
  const tokens = g.input("tokens", "int64", [1, "n"]);
  const logits = g.op("Gather", [g.initializer("word_logit", "float32", [VOCAB_SIZE, 1], table), tokens], { axis: int(0) }); // [1, n, 1]
  const top = g.op("ReduceMax", [logits], { axes: ints([1]), keepdims: int(0) }); // [1, 1]
  const score = g.op("Sigmoid", [top], {}, "score");
  g.output(score, "float32", [1, 1]);
  return g.serialize({ docString: "prompt-guard-tiny: a toy prompt-policy classifier (hashed words, max logit, sigmoid)", producerName: "shoal-prompt-guard" });
}

export function promptGuardManifest(options: PromptGuardOptions = {}): ModelManifest {
  const name = options.name ?? PROMPT_GUARD_NAME;
  return {
    name,
    version: "1",
    description: "A toy prompt-policy classifier built by Shoal: flags prompts containing a few fixed words. For tests; see docs/content-policy.md.",
    file: PROMPT_GUARD_FILE,
    params: { tokens: { type: "tensor", required: true, maxElements: MAX_TOKENS, description: "Token ids (shoal-words-4096)." } },
    inputs: [{ name: "tokens", param: "tokens", dtype: "int64", shape: [1, -1] }],
    outputs: [{ name: "score", artifact: "score" }],
    vram: { weights_bytes: VOCAB_SIZE * 4, activation_bytes: 64 * 1024 },
    prompt_policy: {
      applies_to: options.appliesTo ?? ["imagegen-tiny"],
      threshold: options.threshold ?? 0.5,
      tokenizer: "shoal-words-4096",
      input_param: "tokens",
      output: "score",
      reason: `flagged by the prompt classifier ${name}`,
    },
  };
}

/** Writes `<modelDir>/<name>/manifest.json` and `model.onnx`; returns the model's directory. */
export async function writePromptGuardModel(modelDir: string, options: PromptGuardOptions = {}): Promise<string> {
  const manifest = promptGuardManifest(options);
  const dir = join(modelDir, manifest.name);
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, PROMPT_GUARD_FILE), buildPromptGuardModel(options.blockedWords));
  await writeFile(join(dir, "manifest.json"), JSON.stringify(manifest, null, 2) + "\n");
  return dir;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  const target = process.argv[2] ?? "models";
  const words = process.argv.slice(3);
  const dir = await writePromptGuardModel(target, words.length > 0 ? { blockedWords: words } : {});
  process.stdout.write(`wrote ${dir}\n`);
}
