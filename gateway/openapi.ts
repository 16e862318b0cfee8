// The HTTP API's OpenAPI 3.1 document. The request schemas here are also what the gateway
// validates bodies with (fastify's ajv), so the document and the server cannot disagree on
// what a valid request is; tests check every response against the response schemas.
// `docs/openapi.json` is this document, committed (`npm run openapi` rewrites it; a test
// checks it is fresh).

const nullable = (type: string, description: string) => ({ type: [type, "null"], description });

export const IMAGE_REQUEST_SCHEMA = {
  type: "object",
  description:
    "One image. Every field but `model` is a param of the model, checked against its manifest (GET /v1/models); the fields below are imagegen-tiny's.",
  properties: {
    prompt: { type: "string", description: "What to draw (1..2000 characters)." },
    width: { type: "integer", description: "Pixels, a multiple of 8 in 64..1024 (default 256)." },
    height: { type: "integer", description: "Pixels, a multiple of 8 in 64..1024 (default 256)." },
    style: { type: "string", description: "A style word, e.g. photorealistic." },
    guidance_scale: { type: "number", description: "0..20 (default 7.5)." },
    seed: { type: "integer", description: "Noise seed (default derived from the prompt)." },
    steps: { type: "integer", description: "Denoising steps, 1..50 (default 4)." },
    output_format: { type: "string", enum: ["png", "jpeg", "webp"], description: "Image format (png by default); passed to the model only when given." },
    quality: { type: "integer", description: "1..100, for jpeg and webp; passed to the model only when given." },
    model: { type: "string", description: "Shoal extension: the model to run (default: the gateway's --model, imagegen-tiny)." },
  },
  additionalProperties: true,
} as const;

export const BATCH_REQUEST_SCHEMA = {
  type: "object",
  required: ["requests"],
  properties: {
    requests: { type: "array", minItems: 1, items: IMAGE_REQUEST_SCHEMA, description: "The images, answered in this order." },
    webhook_url: { type: "string", description: "Called once the batch is finished (Standard Webhooks signed when webhook_secret is given); the POST then answers at once." },
    webhook_events: {
      type: "array",
      items: { type: "string", enum: ["batch.complete", "batch.completed", "batch.failed", "batch.cancelled", "batch.canceled"] },
      description: "Which endings call the webhook (default: all). batch.complete is accepted for batch.completed.",
    },
    webhook_secret: { type: "string", description: "Shoal extension: Standard Webhooks secret (whsec_ + base64) the webhook is signed with." },
  },
  additionalProperties: false,
} as const;

const RESULT = {
  type: "object",
  required: ["status", "image_url", "error", "error_code"],
  properties: {
    index: { type: "integer", minimum: 0, description: "Position of the request in the batch." },
    status: { type: "string", enum: ["success", "failed"] },
    image_url: nullable("string", "Signed URL of the image, valid for the gateway's --url-ttl; no API key needed to fetch it."),
    content_type: nullable("string", "The image's media type."),
    error: nullable("string", "Why the image failed."),
    error_code: nullable("string", "Stable code: invalid_params, model_not_found, out_of_memory, worker_lost, timeout, inference_failed, content_policy, cancelled."),
  },
} as const;

const BATCH = {
  type: "object",
  required: ["batch_id", "status", "total", "succeeded", "failed", "cancelled", "running", "created_at", "completed_at", "queue_position", "estimated_completion_at", "results"],
  properties: {
    batch_id: { type: "string" },
    status: { type: "string", enum: ["queued", "running", "completed", "failed", "cancelled"] },
    total: { type: "integer", minimum: 0 },
    succeeded: { type: "integer", minimum: 0 },
    failed: { type: "integer", minimum: 0 },
    cancelled: { type: "integer", minimum: 0 },
    running: { type: "integer", minimum: 0 },
    created_at: nullable("string", "RFC 3339"),
    completed_at: nullable("string", "RFC 3339"),
    queue_position: { type: "integer", minimum: 0, description: "While the batch waits to start: 1 + the batches not started yet ahead of it (1 = next). 0 once it started, and when finished." },
    estimated_completion_at: nullable("string", "RFC 3339. When the batch is expected to finish, from learned item durations and the queue ahead; refreshed about once a second. Null when unknown and once finished."),
    results: { type: "array", items: { $ref: "#/components/schemas/Result" }, description: "Empty until the batch is finished; then one per request, in order." },
  },
} as const;

const BATCH_SUMMARY = {
  type: "object",
  required: ["batch_id", "status", "total", "succeeded", "failed", "cancelled", "running", "created_at", "completed_at", "queue_position", "estimated_completion_at", "labels"],
  properties: {
    batch_id: { type: "string" },
    status: BATCH.properties.status,
    total: { type: "integer", minimum: 0 },
    succeeded: { type: "integer", minimum: 0 },
    failed: { type: "integer", minimum: 0 },
    cancelled: { type: "integer", minimum: 0 },
    running: { type: "integer", minimum: 0 },
    created_at: nullable("string", "RFC 3339"),
    completed_at: nullable("string", "RFC 3339"),
    queue_position: BATCH.properties.queue_position,
    estimated_completion_at: BATCH.properties.estimated_completion_at,
    labels: { type: "object", additionalProperties: { type: "string" } },
  },
} as const;

const GPU = {
  type: "object",
  required: ["index", "name", "source", "vram_total_bytes", "vram_used_bytes", "vram_reserved_bytes", "vram_available_bytes"],
  properties: {
    index: { type: "integer", minimum: 0 },
    name: { type: "string" },
    source: { type: "string", description: "nvidia-smi when measured, budget when it is the worker's configured --vram." },
    vram_total_bytes: { type: "integer", minimum: 0 },
    vram_used_bytes: { type: "integer", minimum: 0, description: "Total less what the worker reports free (weights of resident models, running items, other processes)." },
    vram_reserved_bytes: { type: "integer", minimum: 0, description: "Of the free VRAM, what the coordinator has reserved for items it placed there." },
    vram_available_bytes: { type: "integer", minimum: 0, description: "Free and not reserved: what new items can be placed into. used + reserved + available = total." },
  },
} as const;

const WORKER = {
  type: "object",
  required: ["worker_id", "state", "hostname", "models", "resident_models", "items_in_flight", "items_done", "last_heartbeat_at", "gpus"],
  properties: {
    worker_id: { type: "string" },
    state: { type: "string", enum: ["ready", "draining", "lost", "unknown"] },
    hostname: { type: "string" },
    models: { type: "array", items: { type: "string" }, description: "Models it serves." },
    resident_models: { type: "array", items: { type: "string" }, description: "Models loaded now." },
    items_in_flight: { type: "integer", minimum: 0 },
    items_done: { type: "integer", minimum: 0 },
    last_heartbeat_at: nullable("string", "RFC 3339"),
    gpus: { type: "array", items: { $ref: "#/components/schemas/Gpu" } },
  },
} as const;

const ERROR = {
  type: "object",
  required: ["error"],
  properties: {
    error: {
      type: "object",
      required: ["code", "message"],
      properties: {
        code: {
          type: "string",
          enum: [
            "invalid_request", "unauthenticated", "forbidden", "url_invalid", "url_expired", "not_found", "method_not_allowed", "conflict",
            "payload_too_large", "batch_too_large", "unsupported_media_type", "rate_limited", "not_implemented", "upstream_error",
            "unavailable", "wait_timeout", "internal",
          ],
        },
        message: { type: "string" },
        fields: { type: "array", items: { type: "string" }, description: "For invalid_request: each bad field as `path: problem`, e.g. `requests[1].width: must be a multiple of 8`." },
        batch_id: { type: "string", description: "For wait_timeout: the batch, still running." },
        limit: { type: "integer", description: "For batch_too_large from the gateway's own limit." },
      },
    },
  },
} as const;

const MODEL = {
  type: "object",
  required: ["name", "version", "description", "params", "served_by", "resident_on"],
  properties: {
    name: { type: "string" },
    version: { type: "string" },
    description: { type: "string" },
    builtin: { type: "boolean" },
    params: {
      type: "array",
      items: {
        type: "object",
        required: ["name", "type", "required"],
        properties: {
          name: { type: "string" },
          type: { type: "string" },
          required: { type: "boolean" },
          description: { type: "string" },
          default: {},
          minimum: { type: "number" },
          maximum: { type: "number" },
          multiple_of: { type: "integer" },
          min_length: { type: "integer" },
          max_length: { type: "integer" },
        },
      },
    },
    served_by: { type: "array", items: { type: "string" }, description: "Workers that serve it." },
    resident_on: { type: "array", items: { type: "string" }, description: "Workers where it is loaded now." },
    queued_items: { type: "integer", minimum: 0, description: "Items of this model waiting for a GPU (the backlog)." },
    queued_vram_bytes: { type: "integer", minimum: 0, description: "Activation VRAM the waiting items will need (the VRAM backlog)." },
  },
} as const;

const json = (ref: string) => ({ "application/json": { schema: { $ref: `#/components/schemas/${ref}` } } });
const err = (description: string) => ({ description, content: json("Error") });
const COMMON_ERRORS = {
  "401": err("Missing or wrong API key (when the coordinator has keys)."),
  "503": err("The coordinator is not reachable."),
};
const BATCH_ID = { name: "id", in: "path", required: true, schema: { type: "string" } };

export const OPENAPI = {
  openapi: "3.1.0",
  info: {
    title: "Shoal HTTP API",
    version: "0.2.0",
    description:
      "Batch image generation over HTTP, served by `shoal gateway`: a stateless client of the coordinator's gRPC API. Send `Authorization: Bearer <key>` when the coordinator has API keys. Errors are `{\"error\": {\"code\", \"message\", \"fields\"}}`.",
    license: { name: "Apache-2.0", identifier: "Apache-2.0" },
  },
  servers: [{ url: "http://127.0.0.1:8080" }],
  components: {
    securitySchemes: { bearer: { type: "http", scheme: "bearer" } },
    schemas: {
      ImageRequest: IMAGE_REQUEST_SCHEMA,
      BatchRequest: { ...BATCH_REQUEST_SCHEMA, properties: { ...BATCH_REQUEST_SCHEMA.properties, requests: { ...BATCH_REQUEST_SCHEMA.properties.requests, items: { $ref: "#/components/schemas/ImageRequest" } } } },
      Result: RESULT,
      BatchResults: {
        type: "object",
        required: ["batch_id", "results"],
        properties: { batch_id: { type: "string" }, status: BATCH.properties.status, results: { type: "array", items: { $ref: "#/components/schemas/Result" } } },
      },
      BatchAccepted: {
        type: "object",
        required: ["batch_id"],
        properties: { batch_id: { type: "string" }, item_count: { type: "integer", minimum: 0 }, retry_of: { type: "string" } },
      },
      Batch: BATCH,
      Models: { type: "object", required: ["models"], properties: { models: { type: "array", items: { $ref: "#/components/schemas/Model" } } } },
      Model: MODEL,
      Workers: { type: "object", required: ["workers"], properties: { workers: { type: "array", items: { $ref: "#/components/schemas/Worker" } } } },
      Worker: WORKER,
      Gpu: GPU,
      Usage: {
        type: "object",
        required: ["days"],
        properties: {
          days: {
            type: "array",
            description: "One row per tenant and UTC day (the day its batches were submitted), oldest first. Only succeeded items are charged; content_policy items are not in failed and never charged.",
            items: {
              type: "object",
              required: ["tenant", "day", "accepted", "succeeded", "failed", "content_policy", "cancelled", "gpu_seconds"],
              properties: {
                tenant: { type: "string" },
                day: { type: "string", description: "YYYY-MM-DD (UTC)" },
                accepted: { type: "integer", description: "Items accepted that day: what items_per_day counts." },
                succeeded: { type: "integer" },
                failed: { type: "integer" },
                content_policy: { type: "integer" },
                cancelled: { type: "integer" },
                gpu_seconds: { type: "number", description: "Sum of the items' run times." },
              },
            },
          },
          limits: {
            type: "array",
            description: "The plan limits (--api-keys-file) of the tenants asked about: the key's own tenant, the one an operator named, or every configured tenant. Tenants without limits are left out; null: no limit of the tenant's own.",
            items: {
              type: "object",
              required: ["tenant", "max_items_per_batch", "items_per_day", "max_queued_items"],
              properties: {
                tenant: { type: "string" },
                max_items_per_batch: { type: ["integer", "null"] },
                items_per_day: { type: ["integer", "null"], description: "Items accepted per UTC day; reset at the next UTC midnight." },
                max_queued_items: { type: ["integer", "null"] },
              },
            },
          },
        },
      },
      Batches: {
        type: "object",
        required: ["batches", "next_page_token"],
        properties: {
          batches: { type: "array", items: { $ref: "#/components/schemas/BatchSummary" }, description: "Newest first." },
          next_page_token: nullable("string", "Pass as page_token for the next page; null on the last."),
        },
      },
      BatchSummary: BATCH_SUMMARY,
      Error: ERROR,
    },
  },
  security: [{ bearer: [] }, {}],
  paths: {
    "/v1/batch": {
      post: {
        operationId: "createBatch",
        summary: "Submit a batch of image requests; wait for the results unless a webhook is given or wait=false",
        parameters: [
          { name: "wait", in: "query", required: false, schema: { type: "boolean", default: true }, description: "false: answer 202 with the batch id at once." },
          { name: "Idempotency-Key", in: "header", required: false, schema: { type: "string", maxLength: 256 }, description: "The same key answers with the first batch instead of a new one." },
        ],
        requestBody: { required: true, content: json("BatchRequest") },
        responses: {
          "200": { description: "The batch finished; one result per request, in order.", content: json("BatchResults") },
          "202": { description: "Accepted (webhook given or wait=false).", content: json("BatchAccepted") },
          "400": err("The body or a request is invalid; `fields` names each problem."),
          ...COMMON_ERRORS,
          "413": err("Too many requests in the batch, or the body is too large."),
          "415": err("The body is not JSON."),
          "429": err("The coordinator's queue (or the tenant's quota) is full; retry later."),
          "504": err("The batch did not finish within the gateway's --wait-timeout; `batch_id` names it."),
        },
      },
    },
    "/v1/batch/{id}": {
      get: {
        operationId: "getBatch",
        summary: "A batch's state; results once it is finished",
        parameters: [BATCH_ID],
        responses: { "200": { description: "The batch.", content: json("Batch") }, "404": err("No such batch (or another tenant's)."), ...COMMON_ERRORS },
      },
    },
    "/v1/batch/{id}/events": {
      get: {
        operationId: "watchBatch",
        summary: "Server-Sent Events: `item` per finished request (data: Result), then `batch` (data: Batch), then the stream ends",
        parameters: [BATCH_ID],
        responses: {
          "200": {
            description: "An event stream. `event: item` carries a Result as data, `event: batch` the finished Batch; comment lines keep idle connections open.",
            content: { "text/event-stream": { schema: { type: "string" } } },
          },
          "404": err("No such batch."),
          ...COMMON_ERRORS,
        },
      },
    },
    "/v1/batch/{id}/cancel": {
      post: {
        operationId: "cancelBatch",
        summary: "Cancel the batch's pending and running requests",
        parameters: [BATCH_ID],
        responses: { "200": { description: "The batch after the cancel (finished).", content: json("Batch") }, "404": err("No such batch."), ...COMMON_ERRORS },
      },
    },
    "/v1/batch/{id}/retry": {
      post: {
        operationId: "retryBatch",
        summary: "A new batch of the failed requests whose error is retryable",
        parameters: [BATCH_ID],
        responses: {
          "202": { description: "The new batch.", content: json("BatchAccepted") },
          "404": err("No such batch."),
          "409": err("The batch is not finished, or has no retryable failures."),
          ...COMMON_ERRORS,
        },
      },
    },
    "/v1/models": {
      get: {
        operationId: "listModels",
        summary: "The models the fleet serves and their params",
        responses: { "200": { description: "Models.", content: json("Models") }, ...COMMON_ERRORS },
      },
    },
    "/v1/workers": {
      get: {
        operationId: "listWorkers",
        summary: "The fleet: each worker, its GPUs' VRAM, resident models and items in flight (FleetService.ListWorkers)",
        responses: { "200": { description: "Workers.", content: json("Workers") }, ...COMMON_ERRORS },
      },
    },
    "/v1/batches": {
      get: {
        operationId: "listBatches",
        summary: "The key's batches, newest first, without results (BatchService.ListBatches)",
        parameters: [
          { name: "page_size", in: "query", required: false, schema: { type: "integer", minimum: 1, maximum: 1000, default: 50 } },
          { name: "page_token", in: "query", required: false, schema: { type: "string" } },
        ],
        responses: { "200": { description: "A page of batches.", content: json("Batches") }, "400": err("A bad page_size or page_token."), ...COMMON_ERRORS },
      },
    },
    "/": {
      get: {
        operationId: "console",
        summary: "The web console (HTML); it asks for the API key and calls the routes above with it",
        security: [{}],
        responses: { "200": { description: "The console page.", content: { "text/html": { schema: { type: "string" } } } } },
      },
    },
    "/v1/images/{token}": {
      get: {
        operationId: "getImage",
        summary: "An image, by the signed URL a result carries; no API key needed",
        security: [{}],
        parameters: [{ name: "token", in: "path", required: true, schema: { type: "string" } }],
        responses: {
          "200": {
            description: "The image bytes, with Content-Type, Content-Length, ETag and Cache-Control.",
            content: { "image/png": { schema: { type: "string", contentMediaType: "image/png" } }, "image/jpeg": { schema: { type: "string" } }, "image/webp": { schema: { type: "string" } } },
          },
          "304": { description: "Not modified (If-None-Match matched the ETag)." },
          "403": err("The URL was altered, signed by another key, or has expired."),
          "404": err("The image is gone (retention) or its batch is not the key's."),
          "503": err("The coordinator is not reachable."),
        },
      },
    },
    "/v1/usage": {
      get: {
        operationId: "getUsage",
        summary: "Items and GPU-seconds per tenant and UTC day (BatchService.GetUsage); a tenant key sees its own, an operator key any tenant's or (no tenant) all",
        parameters: [
          { name: "tenant", in: "query", required: false, schema: { type: "string" } },
          { name: "since", in: "query", required: false, description: "First UTC day, YYYY-MM-DD; default 30 days ago.", schema: { type: "string" } },
        ],
        responses: {
          "200": { description: "Usage days.", content: json("Usage") },
          "400": err("A malformed since."),
          "403": err("A tenant key asked for another tenant's usage."),
          ...COMMON_ERRORS,
        },
      },
    },
    "/v1/openapi.json": {
      get: { operationId: "getOpenApi", summary: "This document", security: [{}], responses: { "200": { description: "OpenAPI 3.1", content: { "application/json": { schema: { type: "object" } } } } } },
    },
  },
} as const;
