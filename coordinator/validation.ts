// Everything that decides whether a SubmitBatch is accepted. The whole request is checked and
// every problem reported at once, each as a path into the request.

import { MAX_WEBHOOK_SECRET_CHARS, MAX_WEBHOOK_URL_BYTES } from "./webhook-target.js";
import type { SubmitBatchRequest } from "../proto/gen/shoal/v1/shoal.js";
import { validateParams, type ModelManifest } from "../shared/manifest.js";
import { itemNeed, type VramNeed } from "../shared/vram-need.js";
import { paramShapeProblems, quoteInput } from "../shared/param-limits.js";
import { invalidArgument, resourceExhausted } from "./errors.js";

export interface ValidItem {
  model: ModelManifest;
  params: Record<string, unknown>;
  /** Computed here, once: the coordinator places and the worker admits the item by this need. */
  need: VramNeed;
}

export interface SubmitLimits {
  maxItems: number;
}

const LABEL_KEY = /^[a-zA-Z0-9_.\/-]{1,63}$/;
const WEBHOOK_EVENTS = new Set(["batch.completed", "batch.failed", "batch.cancelled"]);

export function validateSubmit(
  req: SubmitBatchRequest,
  lookup: (model: string) => ModelManifest | undefined,
  limits: SubmitLimits,
): ValidItem[] {
  if (req.items.length > limits.maxItems) {
    throw resourceExhausted(`items: ${req.items.length} items exceed the limit of ${limits.maxItems} per batch (coordinator flag --max-items)`);
  }
  const problems: string[] = [];
  if (req.items.length === 0) problems.push("items: at least one item is required");
  const valid: ValidItem[] = [];
  req.items.forEach((item, i) => {
    const at = `items[${i}]`;
    if (!item.model) {
      problems.push(`${at}.model: is required`);
      return;
    }
    const manifest = lookup(item.model);
    if (!manifest) {
      problems.push(`${at}.model: unknown model ${quoteInput(item.model)} (see ListModels / shoal models)`);
      return;
    }
    const shape = paramShapeProblems(at, item.params);
    if (shape.length > 0) {
      problems.push(...shape);
      return;
    }
    const { params, problems: paramProblems } = validateParams(manifest, item.params);
    for (const p of paramProblems) problems.push(`${at}.${p.path}: ${p.message}`);
    valid.push({ model: manifest, params, need: itemNeed(manifest, params) });
  });
  if (req.idempotencyKey.length > 256) problems.push("idempotency_key: must be at most 256 characters");
  if (!Number.isInteger(req.priority) || req.priority < -100 || req.priority > 100) problems.push("priority: must be between -100 and 100");
  const labels = Object.entries(req.labels);
  if (labels.length > 32) problems.push("labels: at most 32 labels");
  for (const [k, v] of labels) {
    const at = LABEL_KEY.test(k) ? `labels.${k}` : `labels[${quoteInput(k)}]`;
    if (!LABEL_KEY.test(k)) problems.push(`${at}: key must be 1-63 of a-z A-Z 0-9 _ . / -`);
    if (v.length > 256) problems.push(`${at}: value must be at most 256 characters`);
  }
  if (req.webhook && (req.webhook.url || req.webhook.events.length || req.webhook.secret)) {
    let url: URL | undefined;
    const urlBytes = Buffer.byteLength(req.webhook.url);
    if (urlBytes > MAX_WEBHOOK_URL_BYTES) problems.push(`webhook.url: must be at most ${MAX_WEBHOOK_URL_BYTES} bytes (got ${urlBytes})`);
    else {
      try {
        url = new URL(req.webhook.url);
      } catch {
        problems.push("webhook.url: must be an absolute http(s) URL");
      }
    }
    if (url && url.protocol !== "http:" && url.protocol !== "https:") problems.push("webhook.url: must be http or https");
    if (url && (url.username || url.password)) problems.push("webhook.url: must not carry a user name or password (sign with webhook.secret instead)");
    req.webhook.events.forEach((e, i) => {
      if (!WEBHOOK_EVENTS.has(e)) problems.push(`webhook.events[${i}]: ${quoteInput(e)} is not one of ${[...WEBHOOK_EVENTS].join(", ")}`);
    });
    if (req.webhook.secret.length > MAX_WEBHOOK_SECRET_CHARS) problems.push(`webhook.secret: must be at most ${MAX_WEBHOOK_SECRET_CHARS} characters (got ${req.webhook.secret.length})`);
    else if (req.webhook.secret && !/^(whsec_)?[A-Za-z0-9+/=]{16,}$/.test(req.webhook.secret)) {
      problems.push("webhook.secret: must be a Standard Webhooks secret (whsec_ + base64, at least 16 chars)");
    }
  }
  if (problems.length > 0) throw invalidArgument(problems);
  return valid;
}
