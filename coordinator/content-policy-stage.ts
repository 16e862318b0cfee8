// The content-policy stage of SubmitBatch: the policy file (`--content-policy`) loaded at start,
// reloaded on SIGHUP, and applied to every item before its batch is stored. A blocked item is
// recorded in the batch record (BatchRecord.policy_blocked) and ends FAILED with CONTENT_POLICY
// when the batch is activated, without ever being queued: no worker, no GPU time, no attempt.
//
// Storing the verdicts (rather than screening again after a restart) keeps the batch as it was
// accepted: a policy changed later never changes a batch already running.
//
// Logs name rules and item indexes, never the text that matched: a blocked prompt is what
// the policy exists to keep out of places, logs included.

import { readFileSync } from "node:fs";
import type { ItemError } from "../proto/gen/shoal/v1/shoal.js";
import type { PolicyBlock } from "../proto/gen/shoal/v1/wire.js";
import { ConfigError } from "../shared/errors.js";
import type { Logger } from "../shared/logger.js";
import { screenedTexts, type ModelManifest } from "../shared/manifest.js";
import type { ActiveBatch } from "./batch-state.js";
import { ContentPolicy, PolicyFileError, type PolicyMatch } from "./content-policy.js";

export const CONTENT_POLICY_CODE = "CONTENT_POLICY";

/** Reported to metrics after each load: how many rules are in force, and whether a reload was refused. */
export type PolicyLoadListener = (rules: number, outcome: "loaded" | "refused") => void;

export class ContentPolicyStage {
  private policy = ContentPolicy.EMPTY;

  /**
   * Loads `file` (none: nothing is screened). A file that cannot be used is a ConfigError naming
   * the option and each bad rule, so the coordinator refuses to start.
   */
  constructor(
    readonly file: string | undefined,
    private readonly log: Logger,
    private readonly onLoad?: PolicyLoadListener,
  ) {
    if (!file) return;
    try {
      this.policy = readPolicy(file);
    } catch (err) {
      throw new ConfigError("--content-policy", err instanceof PolicyFileError ? err.message : (err as Error).message);
    }
    this.onLoad?.(this.policy.rules.length, "loaded");
    this.log.info({ file, rules: this.policy.rules.length }, "content policy loaded");
  }

  get rules(): number {
    return this.policy.rules.length;
  }

  /**
   * Reads the file again (SIGHUP). A file that cannot be used keeps the policy in force and
   * logs every problem; items are never screened by half a policy. Returns whether it took.
   */
  reload(): boolean {
    if (!this.file) {
      this.log.warn("SIGHUP: no --content-policy file is configured; nothing to reload");
      return false;
    }
    try {
      this.policy = readPolicy(this.file);
    } catch (err) {
      const problems = err instanceof PolicyFileError ? err.problems : [(err as Error).message];
      this.onLoad?.(this.policy.rules.length, "refused");
      this.log.error({ file: this.file, problems, rulesInForce: this.policy.rules.length }, "content policy not reloaded; the previous one stays in force");
      return false;
    }
    this.onLoad?.(this.policy.rules.length, "loaded");
    this.log.info({ file: this.file, rules: this.policy.rules.length }, "content policy reloaded");
    return true;
  }

  /** The items of one batch the policy refuses, in item order; empty when none (or no policy). */
  screen(tenant: string, items: readonly { model: ModelManifest; params: Record<string, unknown> }[]): PolicyBlock[] {
    const out: PolicyBlock[] = [];
    if (this.policy.rules.length === 0) return out;
    items.forEach((item, index) => {
      const match = this.policy.match(tenant, screenedTexts(item.model.screened_params, item.params));
      if (match) out.push({ index, rule: match.rule, message: blockMessage(match) });
    });
    return out;
  }
}

/** The item's error message: the rule's reason and where it matched, never the matched text. */
export function blockMessage(m: PolicyMatch): string {
  return `blocked by the content policy: ${m.reason} (rule ${m.rule}, params.${m.param})`;
}

export function contentPolicyError(message: string): ItemError {
  return { code: CONTENT_POLICY_CODE, message, retryable: false };
}

/**
 * Ends the items its record says the policy refused, before anything is queued; the same live
 * and when a restarted coordinator resumes the batch. Returns how many it ended now.
 */
export function finishBlockedItems(batch: ActiveBatch): number {
  let n = 0;
  for (const b of batch.record.policyBlocked ?? []) if (batch.failItem(b.index, contentPolicyError(b.message))) n++;
  return n;
}

// Usage (coordinator/usage.ts): an item that ended with CONTENT_POLICY ran no model (the rules
// stop it before it is queued; a prompt-policy classifier stops it before its model runs,
// worker/prompt-policy.ts) and is never charged, as the batch API guide promises ("only charged
// for successfully generated images"): usage charges SUCCEEDED items only and counts these apart
// from failed ones (contentPolicy).

function readPolicy(file: string): ContentPolicy {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new PolicyFileError(file, [`cannot be read: ${(err as Error).message}`]);
  }
  return ContentPolicy.parse(text, file);
}
