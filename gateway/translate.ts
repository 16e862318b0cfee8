// The one mapping between the HTTP API's JSON (the batch image API shape users know:
// `requests`, `webhook_url`, `results[].status = "success" | "failed"`) and Shoal's gRPC
// messages. Pure: no I/O, so it is unit-tested on its own.

import { BatchState, ItemStatus, type Batch, type ItemResult, type SubmitBatchRequest } from "../proto/gen/shoal/v1/shoal.js";
import { ApiError } from "./errors.js";

export interface ImageRequest {
  model?: string;
  [param: string]: unknown;
}

export interface BatchRequestBody {
  requests: ImageRequest[];
  webhook_url?: string;
  webhook_events?: string[];
  webhook_secret?: string;
}

/** Event names users of the guide send, beside Shoal's own. */
const EVENT_ALIASES: Record<string, string> = {
  "batch.complete": "batch.completed",
  "batch.canceled": "batch.cancelled",
};

export function toSubmit(
  body: BatchRequestBody,
  opts: { defaultModel: string; maxRequests: number; idempotencyKey?: string },
): Pick<SubmitBatchRequest, "items" | "webhook" | "idempotencyKey"> {
  if (opts.maxRequests > 0 && body.requests.length > opts.maxRequests) {
    throw new ApiError(413, "batch_too_large", `requests: ${body.requests.length} requests exceed the limit of ${opts.maxRequests} per batch (gateway flag --max-requests)`, [], { limit: opts.maxRequests });
  }
  const items = body.requests.map((r) => {
    // Every other field is a model param, checked by the coordinator against the model's
    // manifest (so `output_format` works as soon as the model has it).
    const { model, ...params } = r;
    return { model: typeof model === "string" && model !== "" ? model : opts.defaultModel, params };
  });
  const webhook =
    body.webhook_url !== undefined || body.webhook_events !== undefined || body.webhook_secret !== undefined
      ? { url: body.webhook_url ?? "", events: (body.webhook_events ?? []).map((e) => EVENT_ALIASES[e] ?? e), secret: body.webhook_secret ?? "" }
      : undefined;
  return { items, webhook, idempotencyKey: opts.idempotencyKey ?? "" };
}

export type ResultStatus = "success" | "failed";

export interface ResultJson {
  index: number;
  status: ResultStatus;
  image_url: string | null;
  content_type: string | null;
  error: string | null;
  error_code: string | null;
}

/** Makes the signed URL of an item's first artifact. */
export type UrlFor = (artifact: ItemResult["artifacts"][number]) => string;

/**
 * One item as the guide shows it. A cancelled item is `failed` with error_code `cancelled`
 * (users of the guide branch on two statuses only); error codes are Shoal's, lower-cased
 * (`content_policy`, `out_of_memory`, ...).
 */
export function resultJson(r: ItemResult, urlFor: UrlFor): ResultJson {
  if (r.status === ItemStatus.ITEM_STATUS_SUCCEEDED) {
    // A model without an image output (not imagegen) succeeds with no URL.
    const art = r.artifacts[0];
    return { index: r.index, status: "success", image_url: art ? urlFor(art) : null, content_type: art?.contentType ?? null, error: null, error_code: null };
  }
  const code = r.error?.code || (r.status === ItemStatus.ITEM_STATUS_CANCELLED ? "CANCELLED" : "INFERENCE_FAILED");
  const message = r.error?.message || code.toLowerCase();
  return { index: r.index, status: "failed", image_url: null, content_type: null, error: message, error_code: code.toLowerCase() };
}

export type BatchStatus = "queued" | "running" | "completed" | "failed" | "cancelled";

export function batchStatus(state: BatchState): BatchStatus {
  switch (state) {
    case BatchState.BATCH_STATE_RUNNING:
      return "running";
    case BatchState.BATCH_STATE_COMPLETED:
      return "completed";
    case BatchState.BATCH_STATE_FAILED:
      return "failed";
    case BatchState.BATCH_STATE_CANCELLED:
      return "cancelled";
    default:
      return "queued";
  }
}

export const isTerminalState = (s: BatchState) =>
  s === BatchState.BATCH_STATE_COMPLETED || s === BatchState.BATCH_STATE_FAILED || s === BatchState.BATCH_STATE_CANCELLED;

export interface BatchJson {
  batch_id: string;
  status: BatchStatus;
  total: number;
  succeeded: number;
  failed: number;
  cancelled: number;
  running: number;
  created_at: string | null;
  completed_at: string | null;
  /** While queued: 1 + the batches not started ahead of it; 0 once started and when finished. */
  queue_position: number;
  /** When the batch is expected to finish; null when unknown and once finished. */
  estimated_completion_at: string | null;
  /** Empty until the batch is finished; then one per request, in request order. */
  results: ResultJson[];
}

/** A batch's state, counts, times and progress: what a list shows and the full answer starts with. */
export function batchHeadJson(b: Batch): Omit<BatchJson, "results"> {
  return {
    batch_id: b.id,
    status: batchStatus(b.state),
    total: b.total,
    succeeded: b.succeeded,
    failed: b.failed,
    cancelled: b.cancelled,
    running: b.running,
    created_at: b.createdAt?.toISOString() ?? null,
    completed_at: b.completedAt?.toISOString() ?? null,
    ...progressJson(b),
  };
}

export function batchJson(b: Batch, urlFor: UrlFor): BatchJson {
  return {
    ...batchHeadJson(b),
    results: [...b.results].sort((x, y) => x.index - y.index).map((r) => resultJson(r, urlFor)),
  };
}

/**
 * Queue position and ETA (Batch.queue_position, Batch.estimated_completion_at of the v0.2
 * contract): 0 and null when not queued, unknown or finished.
 */
export function progressJson(b: Batch): { queue_position: number; estimated_completion_at: string | null } {
  return { queue_position: b.queuePosition, estimated_completion_at: b.estimatedCompletionAt?.toISOString() ?? null };
}

/** The `wait` query parameter: true unless `false` or `0`. */
export function parseWait(raw: unknown): boolean {
  if (raw === undefined) return true;
  const v = Array.isArray(raw) ? raw[raw.length - 1] : raw;
  if (v === "" || v === "true" || v === "1") return true;
  if (v === "false" || v === "0") return false;
  throw new ApiError(400, "invalid_request", "the batch was refused", [`wait: must be true or false, not ${JSON.stringify(String(v)).slice(0, 40)}`]);
}

/** Fastify/ajv validation errors as `path: problem`, paths written as the body spells them. */
export function validationProblems(errors: { instancePath: string; message?: string; keyword: string; params: Record<string, unknown> }[]): string[] {
  const out: string[] = [];
  for (const e of errors) {
    let path = e.instancePath
      .split("/")
      .slice(1)
      .map((seg) => seg.replace(/~1/g, "/").replace(/~0/g, "~"))
      .reduce((acc, seg) => (/^\d+$/.test(seg) ? `${acc}[${seg}]` : acc ? `${acc}.${seg}` : seg), "");
    let message = e.message ?? "is not valid";
    if (e.keyword === "required") {
      path = path ? `${path}.${String(e.params.missingProperty)}` : String(e.params.missingProperty);
      message = "is required";
    } else if (e.keyword === "additionalProperties") {
      path = path ? `${path}.${String(e.params.additionalProperty)}` : String(e.params.additionalProperty);
      message = "is not a known field";
    } else if (e.keyword === "enum" && Array.isArray(e.params.allowedValues)) {
      message = `must be one of ${e.params.allowedValues.join(", ")}`;
    }
    out.push(`${path || "body"}: ${message}`);
  }
  return [...new Set(out)];
}
