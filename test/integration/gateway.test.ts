// The HTTP gateway (`shoal gateway`), as users of the batch image API guide call it: the
// guide's Python and JavaScript examples translated literally to fetch, against real processes
// (nats-server, coordinator with API keys, a real imagegen worker and a simulated one, and the
// gateway itself). Every response is checked against the committed OpenAPI document.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { decode } from "fast-png";
import { UrlSigner } from "../../gateway/url-signer.js";
import { checkResponse, checkSchema } from "../harness/openapi.js";
import { Stack } from "../harness/processes.js";

const KEY = "sk_live_alice_0123456789";
const OTHER_KEY = "sk_live_bob_0123456789";
const SIGNING_KEY = "gateway-test-signing-key-0123456789abcdef";
/** Deadline of one HTTP call; waiting POSTs and event streams get LONG_MS. */
const CALL_MS = 30_000;
const LONG_MS = 240_000;

let stack: Stack;
let base = "";
/** An image URL from a finished batch, fetched again once the coordinator is down. */
let savedImageUrl = "";

interface Answer {
  res: Response;
  json: any;
}

/** One HTTP call with a deadline, its answer checked against the OpenAPI document. */
async function call(method: string, url: string, opts: { body?: unknown; key?: string | null; headers?: Record<string, string>; timeoutMs?: number } = {}): Promise<Answer> {
  const headers: Record<string, string> = { ...opts.headers };
  const key = opts.key === undefined ? KEY : opts.key;
  if (key !== null) headers.authorization = `Bearer ${key}`;
  if (opts.body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(url.startsWith("http") ? url : base + url, {
    method,
    headers,
    body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
    signal: AbortSignal.timeout(opts.timeoutMs ?? CALL_MS),
  });
  const type = res.headers.get("content-type") ?? "";
  const json = type.startsWith("application/json") ? await res.json() : undefined;
  checkResponse(method, res.url, res, json);
  return { res, json };
}

async function waitFinished(batchId: string): Promise<any> {
  const deadline = Date.now() + LONG_MS;
  for (;;) {
    const { res, json } = await call("GET", `/v1/batch/${batchId}`);
    assert.equal(res.status, 200);
    if (["completed", "failed", "cancelled"].includes(json.status)) return json;
    assert.ok(Date.now() < deadline, `batch ${batchId} not finished: ${JSON.stringify(json)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Downloads an image URL as a browser would: no key. */
async function download(url: string, headers: Record<string, string> = {}): Promise<{ res: Response; bytes: Buffer }> {
  const res = await fetch(url, { headers, signal: AbortSignal.timeout(CALL_MS) });
  const type = res.headers.get("content-type") ?? "";
  const bytes = Buffer.from(await res.arrayBuffer());
  checkResponse("GET", url, res, type.startsWith("application/json") ? JSON.parse(bytes.toString()) : undefined);
  return { res, bytes };
}

describe("gateway", () => {
  before(async () => {
    stack = new Stack();
    await stack.startNats();
    await stack.startCoordinator(["--api-keys", `alice:${KEY},bob:${OTHER_KEY}`, "--max-items", "8", "--unplaceable-grace", "2s", "--webhook-allow-private"]);
    await stack.startWorker("w-img", ["--vram", "4GiB"]);
    await stack.startWorker("w-sim", ["--vram", "8GiB", "--simulate"]);
    const gw = await stack.startGateway(["--url-ttl", "1h"], { SHOAL_URL_SIGNING_KEY: SIGNING_KEY });
    base = gw.url;
    // Ready once both workers serve their models.
    const deadline = Date.now() + 90_000;
    for (;;) {
      const { res, json } = await call("GET", "/v1/models");
      // 503 while the coordinator is still starting; anything else is an answer.
      if (res.status === 503 && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 200));
        continue;
      }
      assert.equal(res.status, 200, JSON.stringify(json));
      const served = (name: string) => json.models.find((m: any) => m.name === name)?.served_by.length > 0;
      if (served("imagegen-tiny") && served("sim-zero")) break;
      assert.ok(Date.now() < deadline, `workers not ready: ${JSON.stringify(json)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  });

  after(async () => {
    await stack?.stop();
  });

  test("gateway - the guide's Python example: 3 requests wait and answer 3 results whose image_urls download as PNGs", async () => {
    const response = await call("POST", "/v1/batch", {
      body: {
        requests: [
          { prompt: "Modern living room, minimalist design, natural light", width: 1024, height: 768, style: "photorealistic" },
          { prompt: "Cozy bedroom, warm lighting, plants", width: 1024, height: 768, style: "photorealistic" },
          { prompt: "Sleek kitchen, marble countertops, pendant lights", width: 1024, height: 768, style: "photorealistic" },
        ],
      },
      timeoutMs: LONG_MS,
    });
    assert.equal(response.res.status, 200, JSON.stringify(response.json));
    const results = response.json["results"];
    assert.equal(results.length, 3);
    assert.match(response.json.batch_id, /^b_/);
    for (const [i, result] of results.entries()) {
      assert.equal(result.status, "success", JSON.stringify(result));
      assert.equal(result.index, i);
      savedImageUrl = result.image_url;
      const { res, bytes } = await download(result.image_url);
      assert.equal(res.status, 200);
      assert.equal(res.headers.get("content-type"), "image/png");
      assert.equal(res.headers.get("content-length"), String(bytes.length));
      assert.match(res.headers.get("cache-control") ?? "", /max-age=\d+/);
      const etag = res.headers.get("etag");
      assert.ok(etag, "an ETag");
      const png = decode(bytes);
      assert.deepEqual([png.width, png.height], [1024, 768]);
      // A second fetch with the ETag is answered 304 without the bytes.
      const again = await download(result.image_url, { "if-none-match": etag });
      assert.equal(again.res.status, 304);
    }
  });

  test("gateway - the guide's JavaScript example: 5 requests of 1024 × 1024", async () => {
    const API_KEY = KEY;
    const response = await fetch(`${base}/v1/batch`, {
      method: "POST",
      headers: {
        "Authorization": `Bearer ${API_KEY}`,
        "Content-Type": "application/json",
      },
      body: JSON.stringify({
        requests: [
          { prompt: "Sunset over the ocean, golden hour", width: 1024, height: 1024 },
          { prompt: "Mountain peak above the clouds", width: 1024, height: 1024 },
          { prompt: "Dense forest after rain, misty", width: 1024, height: 1024 },
          { prompt: "Desert sand dunes at twilight", width: 1024, height: 1024 },
          { prompt: "Tropical waterfall in lush jungle", width: 1024, height: 1024 },
        ],
      }),
      signal: AbortSignal.timeout(LONG_MS),
    });
    const body = await response.json();
    checkResponse("POST", response.url, response, body);
    const { results } = body;
    const lines: string[] = [];
    results.forEach((result: any, i: number) => {
      lines.push(`Image ${i + 1}: ${result.status === "success" ? result.image_url : result.error}`);
    });
    assert.equal(lines.length, 5);
    for (const [i, result] of results.entries()) {
      assert.equal(result.status, "success", lines[i]);
      const { res, bytes } = await download(result.image_url);
      assert.equal(res.headers.get("content-type"), "image/png");
      const png = decode(bytes);
      assert.deepEqual([png.width, png.height], [1024, 1024]);
    }
  });

  test("gateway - output_format reaches the model: the image URL serves jpeg and webp with their content types", async () => {
    const { res, json } = await call("POST", "/v1/batch", {
      body: { requests: [{ prompt: "a harbour", width: 64, height: 64, output_format: "jpeg", quality: 80 }, { prompt: "a harbour", width: 64, height: 64, output_format: "webp" }] },
      timeoutMs: LONG_MS,
    });
    assert.equal(res.status, 200, JSON.stringify(json));
    const want = [["image/jpeg", [0xff, 0xd8, 0xff]], ["image/webp", [0x52, 0x49, 0x46, 0x46]]] as const;
    for (const [i, [type, magic]] of want.entries()) {
      assert.equal(json.results[i].content_type, type);
      const image = await download(json.results[i].image_url);
      assert.equal(image.res.headers.get("content-type"), type);
      assert.equal(image.res.headers.get("content-length"), String(image.bytes.length));
      assert.deepEqual([...image.bytes.subarray(0, magic.length)], [...magic]);
    }
  });

  test("gateway - results come in request order", async () => {
    const response = await fetch(`${base}/v1/batch`, {
      method: "POST",
      headers: { Authorization: `Bearer ${KEY}`, "Content-Type": "application/json" },
      body: JSON.stringify({
        requests: [
          { prompt: "Sunset over the ocean, golden hour", width: 256, height: 256 },
          { prompt: "Mountain peak above the clouds", width: 256, height: 128 },
          { prompt: "Dense forest after rain, misty", width: 128, height: 256 },
          { prompt: "Desert sand dunes at twilight", width: 64, height: 64 },
          { prompt: "Tropical waterfall in lush jungle", width: 128, height: 128 },
        ],
      }),
      signal: AbortSignal.timeout(LONG_MS),
    });
    const body = await response.json();
    checkResponse("POST", response.url, response, body);
    const { results } = body;
    assert.equal(results.length, 5);
    const sizes = [[256, 256], [256, 128], [128, 256], [64, 64], [128, 128]];
    for (const [i, result] of results.entries()) {
      assert.equal(result.status, "success", JSON.stringify(result));
      const png = decode((await download(result.image_url)).bytes);
      assert.deepEqual([png.width, png.height], sizes[i], `result ${i} is request ${i}`);
    }
  });

  test("gateway - wait=false and a webhook answer the batch_id at once; GET shows the batch, then its results", async () => {
    const quick = await call("POST", "/v1/batch?wait=false", { body: { requests: [{ prompt: "a red circle", width: 64, height: 64 }] } });
    assert.equal(quick.res.status, 202);
    assert.match(quick.json.batch_id, /^b_/);
    const hooked = await call("POST", "/v1/batch", {
      body: {
        requests: [{ prompt: "a blue square", width: 64, height: 64 }],
        // The guide's event name, beside Shoal's; nobody listens there, which is fine here.
        webhook_url: "http://127.0.0.1:9/batch-complete",
        webhook_events: ["batch.complete", "batch.failed"],
      },
    });
    assert.equal(hooked.res.status, 202, JSON.stringify(hooked.json));
    assert.deepEqual(Object.keys(hooked.json).sort(), ["batch_id", "item_count"]);
    const status = await call("GET", `/v1/batch/${quick.json.batch_id}`);
    assert.equal(status.res.status, 200);
    assert.equal(status.json.batch_id, quick.json.batch_id);
    assert.equal(status.json.total, 1);
    const done = await waitFinished(quick.json.batch_id);
    assert.equal(done.status, "completed");
    assert.equal(done.results.length, 1);
    assert.equal(done.results[0].status, "success");
    assert.equal((await download(done.results[0].image_url)).res.status, 200);
  });

  test("gateway - the events stream sends one event per finished item, then the batch, then ends", async () => {
    // The simulated item takes a while, so the stream is open before the batch finishes.
    const sub = await call("POST", "/v1/batch?wait=false", { body: { requests: [{ prompt: "one", width: 64, height: 64 }, { model: "sim-zero", work_ms: 1500 }] } });
    const res = await fetch(`${base}/v1/batch/${sub.json.batch_id}/events`, { headers: { authorization: `Bearer ${KEY}` }, signal: AbortSignal.timeout(LONG_MS) });
    checkResponse("GET", res.url, res, undefined);
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type") ?? "", /^text\/event-stream/);
    const text = await res.text(); // resolves only once the server ends the stream
    const events = text
      .split("\n\n")
      .filter((block) => block.split("\n").some((l) => l.startsWith("event:")))
      .map((block) => {
        const lines = block.split("\n");
        return { event: lines.find((l) => l.startsWith("event: "))!.slice(7), data: JSON.parse(lines.find((l) => l.startsWith("data: "))!.slice(6)) };
      });
    assert.deepEqual(events.map((e) => e.event), ["item", "item", "batch"], text);
    for (const e of events.slice(0, 2)) checkSchema("Result", e.data, "item event");
    checkSchema("Batch", events[2]!.data, "batch event");
    assert.deepEqual(events.slice(0, 2).map((e) => e.data.index).sort(), [0, 1]);
    assert.equal(events[2]!.data.status, "completed");
    assert.equal(events[2]!.data.results.length, 2);
    // An unknown batch is an ordinary JSON error, before any event.
    const missing = await call("GET", "/v1/batch/b_00000000000000000000/events");
    assert.equal(missing.res.status, 404);
    assert.equal(missing.json.error.code, "not_found");
  });

  test("gateway - cancel stops a running batch; its results are failed with error_code cancelled", async () => {
    const sub = await call("POST", "/v1/batch?wait=false", { body: { requests: [{ model: "sim-zero", work_ms: 120_000 }, { model: "sim-zero", work_ms: 120_000 }] } });
    assert.equal(sub.res.status, 202, JSON.stringify(sub.json));
    const cancelled = await call("POST", `/v1/batch/${sub.json.batch_id}/cancel`);
    assert.equal(cancelled.res.status, 200);
    assert.equal(cancelled.json.status, "cancelled");
    assert.equal(cancelled.json.results.length, 2);
    for (const r of cancelled.json.results) assert.deepEqual([r.status, r.error_code, r.image_url], ["failed", "cancelled", null]);
  });

  test("gateway - retry of a failed batch resubmits the retryable failures as a new batch", async () => {
    // sim-6g with use_bytes beyond its reservation fails OUT_OF_MEMORY (retryable); fail:true is
    // a non-retryable INFERENCE_FAILED.
    const first = await call("POST", "/v1/batch", {
      body: { requests: [{ model: "sim-6g", use_bytes: 30e9 }, { model: "sim-6g", fail: true }] },
      timeoutMs: LONG_MS,
    });
    assert.equal(first.res.status, 200, JSON.stringify(first.json));
    assert.equal(first.json.status, "failed");
    assert.deepEqual(first.json.results.map((r: any) => r.error_code), ["out_of_memory", "inference_failed"]);
    const retry = await call("POST", `/v1/batch/${first.json.batch_id}/retry`);
    assert.equal(retry.res.status, 202, JSON.stringify(retry.json));
    assert.notEqual(retry.json.batch_id, first.json.batch_id);
    assert.equal(retry.json.item_count, 1);
    const again = await waitFinished(retry.json.batch_id);
    assert.equal(again.total, 1);
    assert.equal(again.results[0].error_code, "out_of_memory");
    // A batch without retryable failures cannot be retried.
    const fatal = await call("POST", "/v1/batch", { body: { requests: [{ model: "sim-zero", fail: true }] }, timeoutMs: LONG_MS });
    assert.deepEqual(fatal.json.results.map((r: any) => r.error_code), ["inference_failed"]);
    const nothing = await call("POST", `/v1/batch/${fatal.json.batch_id}/retry`);
    assert.equal(nothing.res.status, 409, JSON.stringify(nothing.json));
    assert.equal(nothing.json.error.code, "conflict");
  });

  test("gateway - a bad width is a 400 naming requests[1].width; shape errors are named the same way", async () => {
    const bad = await call("POST", "/v1/batch", { body: { requests: [{ prompt: "fine", width: 64, height: 64 }, { prompt: "bad", width: 100, height: 64 }] } });
    assert.equal(bad.res.status, 400);
    assert.equal(bad.json.error.code, "invalid_request");
    assert.equal(bad.json.error.fields.length, 1, JSON.stringify(bad.json));
    assert.match(bad.json.error.fields[0], /^requests\[1\]\.width: /);
    const shapes = await call("POST", "/v1/batch", { body: { requests: [{ prompt: "x" }, { prompt: "y", width: "big" }], webhook_events: ["batch.exploded"], extra: 1 } });
    assert.equal(shapes.res.status, 400);
    assert.deepEqual([...shapes.json.error.fields].sort(), ["extra: is not a known field", "requests[1].width: must be integer", "webhook_events[0]: must be one of batch.complete, batch.completed, batch.failed, batch.cancelled, batch.canceled"].sort());
    const missing = await call("POST", "/v1/batch", { body: { requests: [{ width: 64 }] } });
    assert.equal(missing.res.status, 400);
    assert.deepEqual(missing.json.error.fields, ["requests[0].prompt: is required"]);
    const empty = await call("POST", "/v1/batch", { body: { requests: [] } });
    assert.equal(empty.res.status, 400);
    assert.match(empty.json.error.fields[0], /^requests: /);
  });

  test("gateway - a missing or wrong key is 401; another tenant's batch is 404", async () => {
    const body = { requests: [{ prompt: "x", width: 64, height: 64 }] };
    for (const key of [null, "sk_live_wrong_0000000"]) {
      const { res, json } = await call("POST", "/v1/batch", { body, key });
      assert.equal(res.status, 401, `key ${key}`);
      assert.equal(json.error.code, "unauthenticated");
      assert.match(res.headers.get("www-authenticate") ?? "", /^Bearer/);
    }
    const basic = await call("GET", "/v1/models", { key: null, headers: { authorization: "Basic YWxpY2U6eA==" } });
    assert.equal(basic.res.status, 401);
    const mine = await call("POST", "/v1/batch?wait=false", { body });
    const theirs = await call("GET", `/v1/batch/${mine.json.batch_id}`, { key: OTHER_KEY });
    assert.equal(theirs.res.status, 404);
    assert.equal(theirs.json.error.code, "not_found");
  });

  test("gateway - more requests than the limit is a 413 naming the limit", async () => {
    const requests = Array.from({ length: 9 }, (_, i) => ({ prompt: `p${i}`, width: 64, height: 64 }));
    const { res, json } = await call("POST", "/v1/batch", { body: { requests } });
    assert.equal(res.status, 413);
    assert.equal(json.error.code, "batch_too_large");
    assert.match(json.error.message, /limit of 8/);
  });

  test("gateway - a tampered, foreign or expired image URL is 403", async () => {
    const { json } = await call("POST", "/v1/batch", { body: { requests: [{ prompt: "tamper", width: 64, height: 64 }] }, timeoutMs: LONG_MS });
    const url = new URL(json.results[0].image_url);
    assert.equal((await download(url.href)).res.status, 200);
    const token = url.pathname.split("/").pop()!;
    const [body, sig] = token.split(".") as [string, string];
    const flip = (s: string, i: number) => s.slice(0, i) + (s[i] === "A" ? "B" : "A") + s.slice(i + 1);
    for (const bad of [`${body}.${flip(sig, 3)}`, `${flip(body, 10)}.${sig}`, body]) {
      const { res, bytes } = await download(`${url.origin}/v1/images/${bad}`);
      assert.equal(res.status, 403, bad);
      assert.equal(JSON.parse(bytes.toString()).error.code, "url_invalid");
    }
    // The same artifact, signed with the right key but already expired; and with another key.
    const payload = JSON.parse(Buffer.from(body, "base64url").toString());
    const ref = { uri: payload.u, contentType: payload.t, sizeBytes: payload.n, sha256: payload.h };
    const expired = new UrlSigner(Buffer.from(SIGNING_KEY)).sign(ref, Date.now() - 60_000, KEY);
    const gone = await download(`${url.origin}/v1/images/${expired}`);
    assert.equal(gone.res.status, 403);
    assert.equal(JSON.parse(gone.bytes.toString()).error.code, "url_expired");
    const foreign = new UrlSigner(Buffer.from("another-signing-key-0123456789abcdefgh")).sign(ref, Date.now() + 60_000, KEY);
    assert.equal((await download(`${url.origin}/v1/images/${foreign}`)).res.status, 403);
  });

  test("gateway - the OpenAPI document is served; /v1/usage answers the key's usage; unknown routes are JSON 404s", async () => {
    const doc = await call("GET", "/v1/openapi.json", { key: null });
    assert.equal(doc.res.status, 200);
    assert.equal(doc.json.openapi, "3.1.0");
    const usage = await call("GET", "/v1/usage");
    assert.equal(usage.res.status, 200);
    assert.ok(Array.isArray(usage.json.days), "usage days (details in usage.test.ts)");
    const nowhere = await fetch(`${base}/v1/nowhere`, { signal: AbortSignal.timeout(CALL_MS) });
    assert.equal(nowhere.status, 404);
    assert.equal((await nowhere.json()).error.code, "not_found");
    const text = await fetch(`${base}/v1/batch`, { method: "POST", headers: { authorization: `Bearer ${KEY}`, "content-type": "text/plain" }, body: "hi", signal: AbortSignal.timeout(CALL_MS) });
    assert.equal(text.status, 415);
    checkResponse("POST", text.url, text, await text.json());
  });

  test("gateway - SIGTERM ends open event streams and the gateway exits 0", async () => {
    const gw = await stack.startGateway([], { SHOAL_URL_SIGNING_KEY: SIGNING_KEY });
    const sub = await call("POST", `${gw.url}/v1/batch?wait=false`, { body: { requests: [{ model: "sim-zero", work_ms: 120_000 }] } });
    const res = await fetch(`${gw.url}/v1/batch/${sub.json.batch_id}/events`, { headers: { authorization: `Bearer ${KEY}` }, signal: AbortSignal.timeout(LONG_MS) });
    assert.equal(res.status, 200);
    const text = res.text().catch((err: unknown) => `(stream error: ${String(err)})`);
    await stack.kill(gw.proc, "SIGTERM");
    assert.equal(await gw.proc.exited, 0);
    assert.doesNotMatch(await text, /event: batch/, "the batch had not finished");
    await call("POST", `/v1/batch/${sub.json.batch_id}/cancel`);
  });

  test("gateway - with the coordinator down, the API answers 503", async () => {
    await stack.kill(stack.coordinator!);
    const post = await call("POST", "/v1/batch", { body: { requests: [{ prompt: "x", width: 64, height: 64 }] } });
    assert.equal(post.res.status, 503);
    assert.equal(post.json.error.code, "unavailable");
    const models = await call("GET", "/v1/models");
    assert.equal(models.res.status, 503);
    assert.ok(savedImageUrl, "an image URL from an earlier test");
    const image = await download(savedImageUrl);
    assert.equal(image.res.status, 503);
  });
});
