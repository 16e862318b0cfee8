// The worker's prompt-policy hook: a classifier model from the model directory whose manifest
// declares `prompt_policy` screens the items of the models it applies to, inside the item's own
// attempt and before the item's model runs. A score at or above the threshold ends the item
// FAILED with CONTENT_POLICY (not retryable), and the model never runs: no GPU time is spent on
// it beyond the classifier's own small run.
//
// Why on the worker, in the same attempt (rather than the coordinator placing a classification
// item first): the classifier is "a model run by workers like any model" (same backend, same
// threads, same model directory, registered like any model), and the item needs no second trip
// through the queue, no second lease and no new state in the coordinator's records: the verdict
// comes back as an ordinary outcome, which the results log, replay after a restart, RetryBatch
// and webhooks already handle. The cost: every worker that may run a screened model must load
// the same classifier (deploy one model directory to all of them), and the classifier's own
// VRAM is not reserved by the scheduler (keep it small; prompt-guard-tiny's is 16 KiB).
//
// Text is tokenized with the tokenizer the manifest names; a text longer than one window of
// the tokenizer is screened window by window, and the highest score counts, so nothing past the
// first 75 words goes unscreened. A classifier that fails fails the item (INFERENCE_FAILED,
// retryable): an item is never let through unscreened.

import { errorMessage } from "../shared/errors.js";
import type { Logger } from "../shared/logger.js";
import { screenedTexts, type ModelManifest, type PromptPolicySpec } from "../shared/manifest.js";
import { InferenceError, type CancelSignal, type InferenceBackend } from "./inference/backend.js";
import { MAX_TOKENS, tokenize } from "./inference/imagegen/tokenizer.js";

const WORD = /[\p{L}\p{N}]+/gu;
/** Words per window: the tokenizer's context less its start and end tokens. */
const WINDOW_WORDS = MAX_TOKENS - 2;

export interface PolicyVerdict {
  classifier: string;
  score: number;
  threshold: number;
  /** The error message of a blocked item: reason, classifier, score; never the text. */
  message: string;
}

export interface ScreenJob {
  /** The attempt's lease token: classifier runs are named after it (to cancel them with it). */
  token: string;
  batchId: string;
  index: number;
  model: ModelManifest;
  params: Record<string, unknown>;
}

type Classifier = ModelManifest & { prompt_policy: PromptPolicySpec };

export class PromptPolicy {
  private readonly byModel = new Map<string, Classifier[]>();

  constructor(
    manifests: readonly ModelManifest[],
    private readonly backend: InferenceBackend,
    log: Logger,
  ) {
    const classifiers = manifests.filter((m): m is Classifier => m.prompt_policy !== undefined);
    for (const m of manifests) {
      if (m.prompt_policy || !m.screened_params?.length) continue;
      const mine = classifiers.filter((c) => c.prompt_policy.applies_to.includes("*") || c.prompt_policy.applies_to.includes(m.name));
      if (mine.length > 0) this.byModel.set(m.name, mine);
    }
    for (const c of classifiers) {
      const screens = [...this.byModel].filter(([, cs]) => cs.includes(c)).map(([model]) => model);
      // A classifier named for a model that has no text to screen (or is not served here) would
      // silently screen nothing: say so once.
      const idle = c.prompt_policy.applies_to.filter((a) => a !== "*" && !screens.includes(a));
      if (idle.length > 0) log.warn({ classifier: c.name, models: idle }, "prompt-policy classifier applies to models this worker does not serve or that declare no screened_params; their items are not screened by it");
      log.info({ classifier: c.name, screens, threshold: c.prompt_policy.threshold }, "prompt-policy classifier loaded");
    }
  }

  /** Whether items of this model are screened here. */
  screens(model: string): boolean {
    return this.byModel.has(model);
  }

  /**
   * Runs every classifier that applies to the item's model on its screened text. Resolves with
   * the first verdict that blocks it, or undefined when it may run. Rejects with an
   * InferenceError when a classifier cannot give a score (or the item is cancelled).
   */
  async screen(job: ScreenJob, signal: CancelSignal): Promise<PolicyVerdict | undefined> {
    const classifiers = this.byModel.get(job.model.name);
    if (!classifiers) return undefined;
    const windows = windowsOf(screenedTexts(job.model.screened_params, job.params).map((t) => t.text));
    for (const c of classifiers) {
      let score = -Infinity;
      for (const [k, tokens] of windows.entries()) {
        score = Math.max(score, await this.score(c, job, tokens, k, signal));
      }
      if (score >= c.prompt_policy.threshold) {
        const reason = c.prompt_policy.reason ?? `flagged by the prompt classifier ${c.name}`;
        return { classifier: c.name, score, threshold: c.prompt_policy.threshold, message: `blocked by the content policy: ${reason} (score ${score.toFixed(4)} ≥ threshold ${c.prompt_policy.threshold})` };
      }
    }
    return undefined;
  }

  private async score(c: Classifier, job: ScreenJob, tokens: number[], window: number, signal: CancelSignal): Promise<number> {
    const spec = c.prompt_policy;
    let output;
    try {
      output = await this.backend.run(
        { id: `${job.token}#policy.${c.name}.${window}`, model: c.name, params: { [spec.input_param]: tokens }, batchId: job.batchId, index: job.index },
        signal,
      );
    } catch (err) {
      if (err instanceof InferenceError && (err.code === "CANCELLED" || err.code === "TIMEOUT")) throw err;
      throw new InferenceError("INFERENCE_FAILED", `prompt classifier ${c.name} failed, so the item was not run: ${errorMessage(err)}`, true, { cause: err });
    }
    const artifact = output.artifacts.find((a) => a.name === spec.output);
    let value: unknown;
    try {
      value = artifact && (JSON.parse(new TextDecoder().decode(artifact.data)) as { data?: unknown[] }).data?.[0];
    } catch {
      value = undefined;
    }
    if (typeof value !== "number" || !Number.isFinite(value)) {
      throw new InferenceError("INFERENCE_FAILED", `prompt classifier ${c.name} gave no numeric score in its output ${spec.output}`, false);
    }
    return value;
  }
}

/**
 * Token ids ("shoal-words-4096") of the texts, in windows of the tokenizer's context: every
 * word is screened, not only the first 75. Texts are NFKC-normalized first, as the
 * coordinator's rules are. At least one window (of an empty text) so a classifier always runs.
 */
export function windowsOf(texts: readonly string[]): number[][] {
  const out: number[][] = [];
  for (const text of texts) {
    const words = text.normalize("NFKC").toLowerCase().match(WORD) ?? [];
    for (let i = 0; i < words.length; i += WINDOW_WORDS) out.push(Array.from(tokenize(words.slice(i, i + WINDOW_WORDS).join(" ")), Number));
  }
  if (out.length === 0) out.push(Array.from(tokenize(""), Number));
  return out;
}
