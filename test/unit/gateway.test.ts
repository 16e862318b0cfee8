import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Metadata, status } from "@grpc/grpc-js";
import { ClientError } from "../../cli/errors.js";
import { ClientPool } from "../../gateway/client-pool.js";
import { ApiError, fromClientError, toRequestPath } from "../../gateway/errors.js";
import { OPENAPI } from "../../gateway/openapi.js";
import { gatewayOptionsFrom } from "../../gateway/options.js";
import { batchJson, parseWait, resultJson, toSubmit, validationProblems } from "../../gateway/translate.js";
import { UrlSigner } from "../../gateway/url-signer.js";
import { BadRequest } from "../../proto/gen/google/rpc/error_details.js";
import { Status } from "../../proto/gen/google/rpc/status.js";
import { BatchState, ItemStatus, type ItemResult } from "../../proto/gen/shoal/v1/shoal.js";
import { BAD_REQUEST_TYPE, STATUS_DETAILS_TRAILER } from "../../shared/status-details.js";
import { ROOT } from "../harness/processes.js";

test("gateway paths - coordinator paths become the request body's", () => {
  assert.equal(toRequestPath("items[3].params.width"), "requests[3].width");
  assert.equal(toRequestPath('items[0].params["odd key"]'), 'requests[0]["odd key"]');
  assert.equal(toRequestPath("items[2].params"), "requests[2]");
  assert.equal(toRequestPath("items[2].model"), "requests[2].model");
  assert.equal(toRequestPath("items"), "requests");
  assert.equal(toRequestPath("webhook.url"), "webhook_url");
  assert.equal(toRequestPath("webhook.events[1]"), "webhook_events[1]");
  assert.equal(toRequestPath("labels.x"), "labels.x");
  assert.equal(toRequestPath("itemsx"), "itemsx");
});

test("gateway errors - INVALID_ARGUMENT's structured field violations become 400 fields", () => {
  const md = new Metadata();
  const bad = BadRequest.encode({ fieldViolations: [{ field: "items[1].params.width", description: "must be a multiple of 8" }] }).finish();
  md.set(STATUS_DETAILS_TRAILER, Buffer.from(Status.encode({ code: 3, message: "refused", details: [{ typeUrl: BAD_REQUEST_TYPE, value: Buffer.from(bad) }] }).finish()));
  const e = fromClientError(new ClientError(status.INVALID_ARGUMENT, "the batch was refused: items[1].params.width: must be a multiple of 8", { metadata: md }));
  assert.equal(e.status, 400);
  assert.equal(e.code, "invalid_request");
  assert.deepEqual(e.fields, ["requests[1].width: must be a multiple of 8"]);
});

test("gateway errors - each coordinator status has its HTTP status", () => {
  const cases: [number, string, number, string][] = [
    [status.UNAUTHENTICATED, "invalid API key", 401, "unauthenticated"],
    [status.NOT_FOUND, "batch x not found", 404, "not_found"],
    [status.FAILED_PRECONDITION, "not finished", 409, "conflict"],
    [status.RESOURCE_EXHAUSTED, "items: 9 items exceed the limit of 8 per batch (coordinator flag --max-items)", 413, "batch_too_large"],
    [status.RESOURCE_EXHAUSTED, "batch too large to store: ...", 413, "batch_too_large"],
    [status.RESOURCE_EXHAUSTED, "queue full: 10 items are waiting", 429, "rate_limited"],
    [status.UNAVAILABLE, "connect ECONNREFUSED", 503, "unavailable"],
    [status.INTERNAL, "boom", 502, "upstream_error"],
  ];
  for (const [code, details, http, name] of cases) {
    const e = fromClientError(new ClientError(code, details));
    assert.deepEqual([e.status, e.code], [http, name], details);
  }
  assert.match(fromClientError(new ClientError(status.RESOURCE_EXHAUSTED, "items: 9 items exceed the limit of 8 per batch")).message, /^requests: .*limit of 8/);
  const internal = fromClientError(new Error("a bug"));
  assert.deepEqual([internal.status, internal.code], [500, "internal"]);
});

test("gateway translate - the guide's body becomes items of the default model; event names are aliased", () => {
  const s = toSubmit(
    { requests: [{ prompt: "a", width: 64, output_format: "png" }, { model: "other", x: 1 }], webhook_url: "https://h/x", webhook_events: ["batch.complete", "batch.failed"] },
    { defaultModel: "imagegen-tiny", maxRequests: 0, idempotencyKey: "k1" },
  );
  assert.deepEqual(s.items, [
    { model: "imagegen-tiny", params: { prompt: "a", width: 64, output_format: "png" } },
    { model: "other", params: { x: 1 } },
  ]);
  assert.deepEqual(s.webhook, { url: "https://h/x", events: ["batch.completed", "batch.failed"], secret: "" });
  assert.equal(s.idempotencyKey, "k1");
  assert.equal(toSubmit({ requests: [{ prompt: "a" }] }, { defaultModel: "m", maxRequests: 0 }).webhook, undefined);
  assert.throws(() => toSubmit({ requests: [{}, {}, {}] }, { defaultModel: "m", maxRequests: 2 }), (e) => e instanceof ApiError && e.status === 413 && /limit of 2/.test(e.message));
});

test("gateway translate - results as the guide shows them, in request order", () => {
  const url = () => "http://gw/v1/images/t";
  const ok: ItemResult = { index: 1, status: ItemStatus.ITEM_STATUS_SUCCEEDED, error: undefined, artifacts: [{ name: "image", contentType: "image/png", sizeBytes: 10, sha256: "ab", uri: "shoal://artifacts/b/1/image" }], workerId: "w", attempts: 1, queueMs: 0, runMs: 0, model: "imagegen-tiny" };
  const failed: ItemResult = { ...ok, index: 0, status: ItemStatus.ITEM_STATUS_FAILED, artifacts: [], error: { code: "CONTENT_POLICY", message: "refused", retryable: false } };
  const cancelled: ItemResult = { ...ok, index: 2, status: ItemStatus.ITEM_STATUS_CANCELLED, artifacts: [], error: undefined };
  assert.deepEqual(resultJson(ok, url), { index: 1, status: "success", image_url: "http://gw/v1/images/t", content_type: "image/png", error: null, error_code: null });
  assert.deepEqual(resultJson(failed, url), { index: 0, status: "failed", image_url: null, content_type: null, error: "refused", error_code: "content_policy" });
  assert.equal(resultJson(cancelled, url).error_code, "cancelled");
  const b = batchJson(
    { id: "b_1", state: BatchState.BATCH_STATE_COMPLETED, total: 3, succeeded: 1, failed: 1, cancelled: 1, results: [cancelled, ok, failed], createdAt: new Date(0), completedAt: undefined, labels: {}, running: 0, priority: 0, queuePosition: 0, estimatedCompletionAt: undefined },
    url,
  );
  assert.deepEqual(b.results.map((r) => r.index), [0, 1, 2]);
  assert.equal(b.status, "completed");
  assert.equal(b.completed_at, null);
  assert.equal(b.queue_position, 0);
  assert.equal(b.estimated_completion_at, null);
  const queued = batchJson(
    { id: "b_2", state: BatchState.BATCH_STATE_QUEUED, total: 3, succeeded: 0, failed: 0, cancelled: 0, results: [], createdAt: new Date(0), completedAt: undefined, labels: {}, running: 0, priority: 0, queuePosition: 2, estimatedCompletionAt: new Date(90_000) },
    url,
  );
  assert.equal(queued.status, "queued");
  assert.equal(queued.queue_position, 2);
  assert.equal(queued.estimated_completion_at, "1970-01-01T00:01:30.000Z");
});

test("gateway translate - wait and validation problems", () => {
  assert.equal(parseWait(undefined), true);
  assert.equal(parseWait("false"), false);
  assert.equal(parseWait("0"), false);
  assert.equal(parseWait("true"), true);
  assert.throws(() => parseWait("later"), (e) => e instanceof ApiError && e.fields[0]!.startsWith("wait: "));
  assert.deepEqual(
    validationProblems([
      { instancePath: "/requests/1/width", message: "must be integer", keyword: "type", params: {} },
      { instancePath: "/requests/0", message: "x", keyword: "required", params: { missingProperty: "prompt" } },
      { instancePath: "", message: "x", keyword: "additionalProperties", params: { additionalProperty: "extra" } },
    ]),
    ["requests[1].width: must be integer", "requests[0].prompt: is required", "extra: is not a known field"],
  );
});

test("gateway url signer - a URL verifies until it expires; any change, or another key, is refused", () => {
  const signer = new UrlSigner(Buffer.from("k".repeat(40)));
  const ref = { uri: "shoal://artifacts/b_1/0/image", contentType: "image/png", sizeBytes: 123, sha256: "ff" };
  const token = signer.sign(ref, 2_000_000, "sk_secret_key");
  const got = signer.verify(token, 1_000_000);
  assert.deepEqual({ ...got }, { ...ref, expiresAtMs: 2_000_000, apiKey: "sk_secret_key" });
  assert.ok(!Buffer.from(token.split(".")[0]!, "base64url").toString().includes("sk_secret_key"), "the key is sealed, not readable");
  const refused = (t: string, now = 1_000_000) => {
    try {
      signer.verify(t, now);
      return "accepted";
    } catch (e) {
      return e instanceof ApiError && e.status === 403 ? e.code : String(e);
    }
  };
  assert.equal(refused(token, 2_000_000), "url_expired");
  const [body, sig] = token.split(".") as [string, string];
  const forged = Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(body, "base64url").toString()), u: "shoal://artifacts/b_2/0/image" })).toString("base64url");
  assert.equal(refused(`${forged}.${sig}`), "url_invalid");
  assert.equal(refused(`${body}.${sig.slice(1)}`), "url_invalid");
  assert.equal(refused(body), "url_invalid");
  assert.equal(refused(new UrlSigner(Buffer.from("j".repeat(40))).sign(ref, 2_000_000, undefined)), "url_invalid");
  assert.equal(signer.verify(signer.sign(ref, 2_000_000, undefined), 0).apiKey, undefined);
});

test("gateway client pool - one client per key, least recently used closed once idle", () => {
  const pool = new ClientPool("127.0.0.1:1", 2, 1000);
  const a = pool.acquire("key-a");
  const a2 = pool.acquire("key-a");
  assert.equal(a.clients, a2.clients);
  a2.release();
  const b = pool.acquire("key-b");
  b.release();
  let closedA = false;
  const close = a.clients.close.bind(a.clients);
  a.clients.close = () => ((closedA = true), close());
  pool.acquire(undefined).release(); // a third key: evicts key-a, still in use
  assert.equal(pool.size, 2);
  assert.equal(closedA, false, "not closed while a call holds it");
  a.release();
  a.release(); // idempotent
  assert.equal(closedA, true);
  pool.close();
  pool.close();
});

test("gateway options - defaults, and bad values named by their flag", () => {
  const o = gatewayOptionsFrom({});
  assert.equal(o.httpPort, 8080);
  assert.equal(o.urlTtlMs, 3_600_000);
  assert.equal(o.urlSigningKeyGenerated, true);
  assert.equal(o.defaultModel, "imagegen-tiny");
  assert.throws(() => gatewayOptionsFrom({ urlSigningKey: "short" }), /--url-signing-key/);
  assert.throws(() => gatewayOptionsFrom({ httpPort: "70000" }), /--http-port/);
  assert.throws(() => gatewayOptionsFrom({ urlTtl: "soon" }), /--url-ttl/);
  assert.throws(() => gatewayOptionsFrom({ publicUrl: "ftp://x" }), /--public-url/);
  assert.equal(gatewayOptionsFrom({ publicUrl: "https://img.example.com/" }).publicUrl, "https://img.example.com");
});

test("gateway openapi - docs/openapi.json is the document the gateway serves (run `npm run openapi`)", () => {
  const committed = readFileSync(join(ROOT, "docs/openapi.json"), "utf8");
  assert.equal(committed, JSON.stringify(OPENAPI, null, 2) + "\n", "docs/openapi.json is stale: run `npm run openapi` and commit");
});
