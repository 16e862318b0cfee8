// The HTTP gateway: the batch image API (routes under /v1) on fastify, as a stateless client
// of the coordinator's gRPC API. Any number can run side by side; what a request needs that
// outlives it (the artifact behind an image URL) travels in signed URLs (url-signer.ts).
//
// Lifecycle: new Gateway(opts, log) → start() (listening) → stop() (idempotent: ends open
// event streams and waits, answers in flight get a grace period, then the clients close).

import { Readable } from "node:stream";
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import type { ShoalClients } from "../cli/client.js";
import { ClientError } from "../cli/errors.js";
import { usageReportJson } from "../cli/views.js";
import type { Batch, Model } from "../proto/gen/shoal/v1/shoal.js";
import type { Logger } from "../shared/logger.js";
import { ClientPool } from "./client-pool.js";
import { registerConsole } from "./console/routes.js";
import { batchSummaryJson, workerJson } from "./fleet-json.js";
import { ApiError, fromClientError } from "./errors.js";
import { BATCH_REQUEST_SCHEMA, OPENAPI } from "./openapi.js";
import type { GatewayOptions } from "./options.js";
import { batchJson, batchStatus, isTerminalState, parseWait, resultJson, toSubmit, validationProblems, type BatchRequestBody, type UrlFor } from "./translate.js";
import { UrlSigner } from "./url-signer.js";
import { contextFromTraceparent, endSpan, SpanKind, startSpan, tracingOn, withinSpan, type Span } from "../shared/tracing.js";

/** The server span of each traced request (tracing on only). */
const requestSpans = new WeakMap<FastifyRequest, Span>();

/** A comment line every so often keeps idle event streams open through proxies. */
const SSE_KEEPALIVE_MS = 15_000;
/** How long stop() lets answers in flight finish before closing their connections. */
const STOP_GRACE_MS = 5_000;
/** Between attempts to re-watch a batch while the coordinator restarts (waiting POSTs). */
const REWATCH_DELAY_MS = 500;

type IdParams = { id: string };

export class Gateway {
  private readonly app: FastifyInstance;
  private readonly pool: ClientPool;
  private readonly signer: UrlSigner;
  /** Aborted by stop(): ends event streams and waits for batches. */
  private readonly stopping = new AbortController();
  private stopped: Promise<void> | undefined;
  private port = 0;

  constructor(
    private readonly opts: GatewayOptions,
    private readonly log: Logger,
  ) {
    this.pool = new ClientPool(opts.addr, opts.maxClients, opts.rpcTimeoutMs, opts.tls);
    this.signer = new UrlSigner(opts.urlSigningKey);
    this.app = Fastify({
      loggerInstance: log.child({ component: "http" }) as unknown as FastifyBaseLogger,
      // One line per request from the onResponse hook below (with the batch id, without URLs
      // that carry image tokens) instead of fastify's own.
      logController: new LogController({ disableRequestLogging: true }),
      bodyLimit: opts.maxBodyBytes,
      // The request schemas are the OpenAPI document's; no coercion or stripping, every problem.
      ajv: { customOptions: { coerceTypes: false, allErrors: true, removeAdditional: false, useDefaults: false, strict: false } },
      return503OnClosing: true,
      // Image URL tokens are long (the signed payload is in the path).
      routerOptions: { maxParamLength: 4096 },
      // Errors the router raises before any route (a bad URL) in the API's error shape too.
      frameworkErrors: (err, req, reply) => {
        this.sendError(req, reply, err);
      },
    });
    // JSON only: a text/plain body is refused (415) rather than parsed as a string.
    this.app.removeContentTypeParser("text/plain");
    this.routes();
  }

  /** The port it listens on (the one picked when --http-port is 0). */
  get httpPort(): number {
    return this.port;
  }

  async start(): Promise<number> {
    await this.app.listen({ host: this.opts.httpHost, port: this.opts.httpPort });
    const addr = this.app.server.address();
    this.port = typeof addr === "object" && addr ? addr.port : this.opts.httpPort;
    return this.port;
  }

  stop(): Promise<void> {
    return (this.stopped ??= (async () => {
      this.log.debug("gateway stopping: ending event streams and waits");
      this.stopping.abort();
      // Answers cut short by the abort (event streams, waits) leave keep-alive connections
      // idle a moment later: close those as they become idle, and every one after the grace.
      const idle = setInterval(() => this.app.server.closeIdleConnections(), 100);
      const force = setTimeout(() => this.app.server.closeAllConnections(), STOP_GRACE_MS);
      idle.unref();
      force.unref();
      try {
        await this.app.close();
      } catch (err) {
        this.log.warn({ err }, "HTTP server did not close cleanly");
      } finally {
        clearInterval(idle);
        clearTimeout(force);
        this.pool.close();
      }
    })());
  }

  // ---------------------------------------------------------------------------------------

  private routes(): void {
    const app = this.app;
    app.setErrorHandler((err, req, reply) => this.sendError(req, reply, err));
    app.setNotFoundHandler((req, reply) => this.sendError(req, reply, new ApiError(404, "not_found", `no route ${req.method} ${req.url.split("?")[0]}`)));
    // A server span per API request, joined to the caller's trace by its `traceparent` header.
    if (tracingOn()) {
      app.addHook("onRequest", async (req) => {
        const route = req.routeOptions.url;
        if (route === undefined || !route.startsWith("/v1/") || route.startsWith("/v1/images")) return;
        const header = (k: string) => (typeof req.headers[k] === "string" ? (req.headers[k] as string) : undefined);
        const span = startSpan(`${req.method} ${route}`, { kind: SpanKind.SERVER, attributes: { "http.request.method": req.method, "http.route": route, "url.path": req.url.split("?")[0]! } }, contextFromTraceparent(header("traceparent"), header("tracestate")));
        if (span) requestSpans.set(req, span);
      });
    }
    app.addHook("onResponse", async (req, reply) => {
      const span = requestSpans.get(req);
      if (span) {
        span.setAttribute("http.response.status_code", reply.statusCode);
        endSpan(span, reply.statusCode >= 500 ? new Error(`HTTP ${reply.statusCode}`) : undefined);
      }
      const route = req.routeOptions.url ?? "(none)";
      const batchId = (req.params as Partial<IdParams> | undefined)?.id ?? (reply as FastifyReply & { batchId?: string }).batchId;
      const line = { method: req.method, route, status: reply.statusCode, ms: Math.round(reply.elapsedTime), batchId };
      // Images and the console's own files are many and say little: debug.
      if (route.startsWith("/v1/images") || route === "/" || route === "/favicon.ico" || route.startsWith("/console/")) req.log.debug(line, "request");
      else req.log.info(line, "request");
    });

    app.get("/v1/openapi.json", async () => OPENAPI);
    app.get<{ Querystring: { tenant?: string; since?: string } }>("/v1/usage", async (req) => {
      const tenant = typeof req.query.tenant === "string" ? req.query.tenant : "";
      const since = typeof req.query.since === "string" ? req.query.since : "";
      return this.withClients(req, apiKeyOf(req), async (c) => {
        // 0 from the coordinator is "no limit of the tenant's own": null here.
        return usageReportJson(await c.getUsageReport({ tenant, since }));
      });
    });

    app.post<{ Body: BatchRequestBody; Querystring: Record<string, unknown> }>("/v1/batch", { schema: { body: BATCH_REQUEST_SCHEMA } }, async (req, reply) => {
      const wait = parseWait(req.query.wait);
      const idem = req.headers["idempotency-key"];
      const submit = toSubmit(req.body, {
        defaultModel: this.opts.defaultModel,
        maxRequests: this.opts.maxRequests,
        idempotencyKey: typeof idem === "string" ? idem : undefined,
      });
      const key = apiKeyOf(req);
      return this.withClients(req, key, async (clients) => {
        const { batchId, itemCount } = await clients.submitBatch(submit);
        (reply as FastifyReply & { batchId?: string }).batchId = batchId;
        if (!wait || submit.webhook !== undefined) return reply.code(202).send({ batch_id: batchId, item_count: itemCount });
        const batch = await this.waitFor(clients, batchId, abortOnClose(reply, this.stopping.signal));
        const urlFor = this.urlFor(req, key);
        return reply.code(200).send({ batch_id: batch.id, status: batchStatus(batch.state), results: batchJson(batch, urlFor).results });
      });
    });

    app.get<{ Params: IdParams }>("/v1/batch/:id", async (req) => {
      const key = apiKeyOf(req);
      return this.withClients(req, key, async (c) => batchJson(await c.getBatch(req.params.id), this.urlFor(req, key)));
    });

    app.post<{ Params: IdParams }>("/v1/batch/:id/cancel", async (req) => {
      const key = apiKeyOf(req);
      return this.withClients(req, key, async (c) => {
        const b = await c.cancelBatch(req.params.id);
        req.log.info({ batchId: b.id }, "batch cancelled through the gateway");
        return batchJson(b, this.urlFor(req, key));
      });
    });

    app.post<{ Params: IdParams }>("/v1/batch/:id/retry", async (req, reply) => {
      return this.withClients(req, apiKeyOf(req), async (c) => {
        const r = await c.retryBatch(req.params.id);
        req.log.info({ batchId: r.batchId, retryOf: req.params.id }, "batch retried through the gateway");
        return reply.code(202).send({ batch_id: r.batchId, item_count: r.itemCount, retry_of: req.params.id });
      });
    });

    app.get<{ Params: IdParams }>("/v1/batch/:id/events", async (req, reply) => this.events(req, reply));

    app.get("/v1/models", async (req) => this.withClients(req, apiKeyOf(req), async (c) => ({ models: (await c.listModels()).map(modelJson) })));

    app.get("/v1/workers", async (req) => this.withClients(req, apiKeyOf(req), async (c) => ({ workers: (await c.listWorkers()).map(workerJson) })));

    app.get<{ Querystring: { page_size?: string; page_token?: string } }>("/v1/batches", async (req) => {
      const pageSize = parsePageSize(req.query.page_size);
      const pageToken = typeof req.query.page_token === "string" ? req.query.page_token : "";
      return this.withClients(req, apiKeyOf(req), async (c) => {
        const page = await c.listBatches({ pageSize, pageToken });
        return { batches: page.batches.map(batchSummaryJson), next_page_token: page.nextPageToken || null };
      });
    });

    // The web console (static files; its data comes from the routes above with the user's key).
    registerConsole(app, { publicUrl: this.opts.publicUrl });

    app.get<{ Params: { token: string } }>("/v1/images/:token", async (req, reply) => this.image(req, reply));
  }

  /** Runs `fn` with the SDK clients of this key; coordinator errors become ApiErrors. */
  private async withClients<T>(req: FastifyRequest, apiKey: string | undefined, fn: (c: ShoalClients) => Promise<T>): Promise<T> {
    const lease = this.pool.acquire(apiKey);
    try {
      // Inside the request's span: the SDK sends it to the coordinator as `traceparent` metadata.
      return await withinSpan(requestSpans.get(req), () => fn(lease.clients));
    } catch (err) {
      throw fromClientError(err);
    } finally {
      lease.release();
    }
  }

  /** Watches until the batch is finished; survives coordinator restarts until the wait deadline. */
  private async waitFor(clients: ShoalClients, batchId: string, signal: AbortSignal): Promise<Batch> {
    const deadline = Date.now() + this.opts.waitTimeoutMs;
    for (;;) {
      const left = deadline - Date.now();
      if (left <= 0) break;
      try {
        for await (const ev of clients.watchBatch(batchId, { timeoutMs: left, signal })) {
          // Non-terminal batches are progress updates (queue position, ETA): keep waiting.
          if (ev.event?.$case === "batch" && isTerminalState(ev.event.batch.state)) return ev.event.batch;
        }
        // The stream ended without the batch (an older coordinator): ask for it.
        const b = await clients.getBatch(batchId);
        if (b.results.length === b.total && b.total > 0) return b;
      } catch (err) {
        if (signal.aborted) throw new ApiError(503, "unavailable", "the gateway is shutting down or the client went away", [], { batch_id: batchId });
        if (err instanceof ClientError && err.code === "DEADLINE_EXCEEDED") break;
        if (!(err instanceof ClientError && err.code === "UNAVAILABLE")) throw err;
      }
      await new Promise((r) => setTimeout(r, REWATCH_DELAY_MS));
    }
    throw new ApiError(504, "wait_timeout", `batch ${batchId} did not finish within ${this.opts.waitTimeoutMs} ms (gateway flag --wait-timeout); it goes on: GET /v1/batch/${batchId}`, [], { batch_id: batchId });
  }

  /** Server-Sent Events: `item` per finished request, then `batch`, then the stream ends. */
  private async events(req: FastifyRequest<{ Params: IdParams }>, reply: FastifyReply): Promise<void> {
    const key = apiKeyOf(req);
    const signal = abortOnClose(reply, this.stopping.signal);
    const lease = this.pool.acquire(key);
    let hijacked = false;
    try {
      // Checked first, so a wrong id or key is an ordinary JSON error; then the headers go out
      // at once, before any item has finished.
      await lease.clients.getBatch(req.params.id).catch((err: unknown) => {
        throw fromClientError(err);
      });
      const it = lease.clients.watchBatch(req.params.id, { signal })[Symbol.asyncIterator]();
      reply.hijack();
      hijacked = true;
      const raw = reply.raw;
      raw.writeHead(200, { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache", connection: "keep-alive", "x-accel-buffering": "no" });
      raw.flushHeaders();
      const keepalive = setInterval(() => raw.write(": keep-alive\n\n"), SSE_KEEPALIVE_MS);
      keepalive.unref();
      const urlFor = this.urlFor(req, key);
      try {
        for (let next = await it.next(); !next.done; next = await it.next()) {
          const ev = next.value.event;
          if (ev?.$case === "item") raw.write(sse("item", resultJson(ev.item, urlFor), String(ev.item.index)));
          // Progress updates (non-terminal batches) are not events of this stream: `batch` is the end.
          else if (ev?.$case === "batch" && isTerminalState(ev.batch.state)) raw.write(sse("batch", batchJson(ev.batch, urlFor)));
        }
      } catch (err) {
        req.log.debug({ batchId: req.params.id, aborted: signal.aborted, err: String(err) }, "event stream: watch ended");
        if (!signal.aborted) {
          const e = fromClientError(err);
          req.log.warn({ batchId: req.params.id, code: e.code }, "event stream ended early");
          raw.write(sse("error", e.toJSON()));
        }
      } finally {
        clearInterval(keepalive);
        raw.end();
      }
    } catch (err) {
      if (hijacked) throw err;
      throw fromClientError(err);
    } finally {
      lease.release();
    }
  }

  /** An image by its signed URL, streamed from the object store through GetArtifact. */
  private async image(req: FastifyRequest<{ Params: { token: string } }>, reply: FastifyReply): Promise<FastifyReply> {
    const url = this.signer.verify(req.params.token);
    const etag = `"${url.sha256}"`;
    const maxAge = Math.max(0, Math.floor((url.expiresAtMs - Date.now()) / 1000));
    reply.header("etag", etag).header("cache-control", `private, max-age=${maxAge}, immutable`).header("x-content-type-options", "nosniff");
    if (url.sha256 && req.headers["if-none-match"] === etag) return reply.code(304).send();
    const lease = this.pool.acquire(url.apiKey);
    const controller = new AbortController();
    const stopOnClose = () => controller.abort();
    reply.raw.once("close", stopOnClose);
    try {
      const it = lease.clients.getArtifact(url.uri, { signal: controller.signal, timeoutMs: this.opts.waitTimeoutMs })[Symbol.asyncIterator]();
      const first = await it.next();
      const body = Readable.from(
        (async function* () {
          try {
            if (!first.done) yield first.value;
            for (let n = await it.next(); !n.done; n = await it.next()) yield n.value;
          } finally {
            lease.release();
          }
        })(),
      );
      // shoal://artifacts/<batch>/<index>/<token>/<name> → <batch>-<index>-<name>
      const parts = url.uri.split("/");
      const name = [...parts.slice(-4, -2), parts.at(-1)].join("-");
      return reply
        .code(200)
        .header("content-type", url.contentType || "application/octet-stream")
        .header("content-length", String(url.sizeBytes))
        .header("content-disposition", `inline; filename="${name.replace(/[^\w.-]/g, "_")}${extensionOf(url.contentType)}"`)
        .send(body);
    } catch (err) {
      lease.release();
      throw fromClientError(err);
    }
  }

  private urlFor(req: FastifyRequest, apiKey: string | undefined): UrlFor {
    const base = this.opts.publicUrl || `${req.protocol}://${req.host}`;
    const expires = Date.now() + this.opts.urlTtlMs;
    return (a) => `${base}/v1/images/${this.signer.sign({ uri: a.uri, contentType: a.contentType, sizeBytes: Number(a.sizeBytes), sha256: a.sha256 }, expires, apiKey)}`;
  }

  private sendError(req: FastifyRequest, reply: FastifyReply, err: unknown): FastifyReply {
    const e = toApiError(err);
    if (e.status >= 500 && e.code === "internal") req.log.error({ err: e.cause ?? err }, "unexpected error");
    else if (e.status >= 500) req.log.warn({ code: e.code, err: e.message }, "request failed");
    if (e.status === 401) reply.header("www-authenticate", 'Bearer realm="shoal"');
    if (e.code === "rate_limited") reply.header("retry-after", "1");
    return reply.code(e.status).type("application/json; charset=utf-8").send(e.toJSON());
  }
}

/** Fastify's own errors (validation, body parsing) and coordinator errors as ApiErrors. */
function toApiError(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  const f = err as { validation?: Parameters<typeof validationProblems>[0]; code?: string; statusCode?: number; message?: string };
  if (Array.isArray(f.validation)) return new ApiError(400, "invalid_request", "the batch was refused", validationProblems(f.validation));
  switch (f.code) {
    case "FST_ERR_CTP_BODY_TOO_LARGE":
      return new ApiError(413, "payload_too_large", `${f.message ?? "request body is too large"} (gateway flag --max-body)`);
    case "FST_ERR_CTP_INVALID_MEDIA_TYPE":
      return new ApiError(415, "unsupported_media_type", "send the body as application/json");
  }
  if (typeof f.statusCode === "number" && f.statusCode >= 400 && f.statusCode < 500) {
    return new ApiError(f.statusCode === 405 ? 405 : 400, f.statusCode === 405 ? "method_not_allowed" : "invalid_request", f.message ?? "bad request");
  }
  return fromClientError(err);
}

/** The caller's key from `Authorization: Bearer <key>`; undefined when none is sent. */
function apiKeyOf(req: FastifyRequest): string | undefined {
  const h = req.headers.authorization;
  if (h === undefined || h === "") return undefined;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(h);
  if (!m) throw new ApiError(401, "unauthenticated", "send the API key as `Authorization: Bearer <key>`");
  return m[1];
}

/**
 * A signal that aborts when the exchange ends (the response is done or the client went away)
 * or the gateway stops. (Not AbortSignal.any, whose signal Node 20 may collect while only
 * listeners hold it.)
 */
function abortOnClose(reply: FastifyReply, stopping: AbortSignal): AbortSignal {
  const controller = new AbortController();
  const abort = () => controller.abort();
  if (stopping.aborted) abort();
  stopping.addEventListener("abort", abort, { once: true });
  reply.raw.once("close", () => {
    stopping.removeEventListener("abort", abort);
    abort();
  });
  return controller.signal;
}

/** `page_size` of GET /v1/batches: 1..1000, default 50 (the coordinator's). */
function parsePageSize(raw: unknown): number {
  if (raw === undefined) return 0;
  const v = Array.isArray(raw) ? raw[raw.length - 1] : raw;
  const n = Number(v);
  if (typeof v !== "string" || !/^\d+$/.test(v) || n < 1 || n > 1000) {
    throw new ApiError(400, "invalid_request", "bad query", [`page_size: must be an integer in 1..1000, not ${JSON.stringify(String(v)).slice(0, 40)}`]);
  }
  return n;
}

function sse(event: string, data: unknown, id?: string): string {
  return `event: ${event}\n${id !== undefined ? `id: ${id}\n` : ""}data: ${JSON.stringify(data)}\n\n`;
}

function extensionOf(contentType: string): string {
  return { "image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp" }[contentType] ?? "";
}

function modelJson(m: Model) {
  return {
    name: m.name,
    version: m.version,
    description: m.description,
    builtin: m.builtin,
    params: m.params.map((p) => ({
      name: p.name,
      type: p.type,
      required: p.required,
      description: p.description,
      ...(p.defaultValue !== undefined ? { default: p.defaultValue } : {}),
      ...(p.minimum !== 0 || p.maximum !== 0 ? { minimum: p.minimum, maximum: p.maximum } : {}),
      ...(p.multipleOf > 0 ? { multiple_of: p.multipleOf } : {}),
      ...(p.maxLength > 0 ? { min_length: p.minLength, max_length: p.maxLength } : {}),
    })),
    served_by: m.servedBy,
    resident_on: m.residentOn,
    queued_items: m.queuedItems,
    queued_vram_bytes: m.queuedVramBytes,
  };
}
