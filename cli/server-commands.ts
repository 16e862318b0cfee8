// The long-running commands: `shoal coordinator`, `shoal worker`, `shoal up`. Every flag has an
// env var (commander's .env()) and a default; the values are parsed and checked once here, and
// the components receive complete, typed options. Signals are handled here and nowhere else.

import { Command, Option } from "commander";
import { readPem } from "./client-tls.js";
import { COORDINATOR_DEFAULTS, type CoordinatorOptions } from "../coordinator/options.js";
import { readFileSync } from "node:fs";
import { ApiKeyTable, readKeysFile } from "../coordinator/api-keys.js";
import type { ServerTls } from "../coordinator/grpc/server.js";
import { ConfigError, errorMessage } from "../shared/errors.js";
import { createLogger, defaultLogFormat, LOG_LEVELS, type LogFormat, type Logger } from "../shared/logger.js";
import { parseBytes, parseDuration, parseIntOption } from "../shared/units.js";
import { GATEWAY_DEFAULTS } from "../gateway/options.js";
import { natsSecurityFrom } from "../shared/nats-security.js";
import { otlpTracesUrl, startTracing, type ServiceName, type TracingHandle } from "../shared/tracing.js";
import { checkWorkerOptions, defaultWorkerId, parseGpuSelection, type WorkerOptions } from "../worker/options.js";

export const DEFAULT_NATS_URL = "nats://127.0.0.1:4222";

export function commonOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option("--nats <url>", "NATS server URL(s), comma-separated").env("SHOAL_NATS_URL").default(DEFAULT_NATS_URL))
    .addOption(new Option("--nats-creds <file>", "NATS credentials file (JWT + nkey seed, as nsc writes it)").env("SHOAL_NATS_CREDS"))
    .addOption(new Option("--nats-nkey <file>", "file holding a NATS user nkey seed (SU...)").env("SHOAL_NATS_NKEY"))
    .addOption(new Option("--nats-user <name>", "NATS user name (with --nats-password)").env("SHOAL_NATS_USER"))
    .addOption(new Option("--nats-password <password>", "NATS password (prefer the env var: flags show in ps)").env("SHOAL_NATS_PASSWORD"))
    .addOption(new Option("--nats-token <token>", "NATS authentication token (prefer the env var)").env("SHOAL_NATS_TOKEN"))
    .addOption(new Option("--nats-tls-ca <file>", "PEM CA bundle to check the NATS server's certificate (turns TLS on)").env("SHOAL_NATS_TLS_CA"))
    .addOption(new Option("--nats-tls-cert <file>", "PEM client certificate for NATS (with --nats-tls-key)").env("SHOAL_NATS_TLS_CERT"))
    .addOption(new Option("--nats-tls-key <file>", "PEM key of --nats-tls-cert").env("SHOAL_NATS_TLS_KEY"))
    .addOption(new Option("--prefix <name>", "subject/stream prefix, so fleets can share a NATS cluster").env("SHOAL_PREFIX").default("shoal"))
    .addOption(new Option("--replicas <n>", "copies of each JetStream stream, bucket and object store (1 on one nats-server, 3 on a cluster)").env("SHOAL_REPLICAS").default("1"))
    .addOption(new Option("--otlp-endpoint <url>", "export OpenTelemetry traces over OTLP/HTTP to this collector (spans go to <url>/v1/traces; default: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT, else off)"))
    .addOption(new Option("--log-level <level>", "log level").env("SHOAL_LOG_LEVEL").choices(LOG_LEVELS).default("info"))
    .addOption(new Option("--log-format <format>", "json, or pretty for people (default: pretty on a terminal)").env("SHOAL_LOG_FORMAT").choices(["json", "pretty"]));
}

export function coordinatorFlags(cmd: Command): Command {
  const d = COORDINATOR_DEFAULTS;
  return cmd
    .addOption(new Option("--grpc-host <host>", "gRPC listen address (beyond loopback, use --tls-cert and --api-keys)").env("SHOAL_GRPC_HOST").default(d.grpcHost))
    .addOption(new Option("--tls-cert <file>", "PEM certificate (chain) of the gRPC server; with --tls-key turns on TLS").env("SHOAL_TLS_CERT"))
    .addOption(new Option("--tls-key <file>", "PEM private key of --tls-cert").env("SHOAL_TLS_KEY"))
    .addOption(new Option("--tls-client-ca <file>", "PEM CA: clients must present a certificate it signed (mTLS)").env("SHOAL_TLS_CLIENT_CA"))
    .addOption(new Option("--metrics-host <host>", "/metrics listen address").env("SHOAL_METRICS_HOST").default(d.metricsHost))
    .addOption(new Option("--grpc-port <port>", "gRPC port").env("SHOAL_GRPC_PORT").default(String(d.grpcPort)))
    .addOption(new Option("--metrics-port <port>", "Prometheus /metrics port (0 = off)").env("SHOAL_METRICS_PORT").default(String(d.metricsPort)))
    .addOption(new Option("--event-loop-resolution <duration>", "how often the event-loop delay metrics (nodejs_eventloop_lag_*) sample; finer costs idle CPU").env("SHOAL_EVENT_LOOP_RESOLUTION").default("250ms"))
    .addOption(new Option("--max-items <n>", "most items per batch").env("SHOAL_MAX_ITEMS").default(String(d.maxItems)))
    .addOption(new Option("--max-attempts <n>", "attempts per item before it fails").env("SHOAL_MAX_ATTEMPTS").default(String(d.maxAttempts)))
    .addOption(new Option("--heartbeat-timeout <duration>", "a worker silent this long is lost").env("SHOAL_HEARTBEAT_TIMEOUT").default("3s"))
    .addOption(new Option("--item-timeout <duration>", "an attempt running longer fails with TIMEOUT (retryable)").env("SHOAL_ITEM_TIMEOUT").default("10m"))
    .addOption(new Option("--placement <policy>", "best-fit packs GPUs, spread balances them").env("SHOAL_PLACEMENT").choices(["best-fit", "spread"]).default(d.policy))
    .addOption(new Option("--scheduler <policy>", "affinity splits GPUs between models by their backlog; greedy places in queue order").env("SHOAL_SCHEDULER").choices(["affinity", "greedy"]).default(d.scheduler))
    .addOption(new Option("--longest-first <on|off>", "within each batch's share, the longest predicted items first").env("SHOAL_LONGEST_FIRST").choices(["on", "off"]).default("on"))
    .addOption(new Option("--hedging <on|off>", "straggler hedging: a second copy of a batch's last items that overrun their predicted time, on an idle GPU").env("SHOAL_HEDGING").choices(["on", "off"]).default("on"))
    .addOption(new Option("--hedge-after-factor <k>", "hedge an item once it runs past k × its predicted time (or its GPU is predicted k × slower than an idle one)").env("SHOAL_HEDGE_AFTER_FACTOR").default("2"))
    .addOption(new Option("--hedge-min-overrun <duration>", "an item counts as overrunning its predicted time only once it is also this much past it").env("SHOAL_HEDGE_MIN_OVERRUN").default("1s"))
    .addOption(new Option("--load-bandwidth <size>", "bytes per second GPUs load model weights at, the cost of switching a GPU to another model (0 = unknown)").env("SHOAL_LOAD_BANDWIDTH").default("0"))
    .addOption(new Option("--earliest-finish <on|off>", "let a batch's last items wait for a faster GPU that frees soon when it would finish them sooner than a free slower one").env("SHOAL_EARLIEST_FINISH").choices(["on", "off"]).default("on"))
    .addOption(new Option("--packing <on|off>", "send an item whose size would strand more than a tenth of its GPU's room to a GPU where it packs, or place the smaller items behind it first").env("SHOAL_PACKING").choices(["on", "off"]).default("on"))
    .addOption(new Option("--defrag <on|off>", "evict idle resident weights when that opens room for a waiting item that fits nowhere and the wait saved beats the reload").env("SHOAL_DEFRAG").choices(["on", "off"]).default("on"))
    .addOption(new Option("--api-keys <list>", "tenant:key,... ; when set, clients must send a key").env("SHOAL_API_KEYS"))
    .addOption(new Option("--api-keys-file <file>", "JSON keys file (tenants, roles, limits; see docs/security.md); reloaded on SIGHUP").env("SHOAL_API_KEYS_FILE"))
    .addOption(new Option("--max-queued-items <n>", "waiting items beyond which SubmitBatch is refused (RESOURCE_EXHAUSTED)").env("SHOAL_MAX_QUEUED_ITEMS").default(String(d.maxQueuedItems)))
    .addOption(new Option("--unplaceable-grace <duration>", "items no registered worker could ever fit fail after this long").env("SHOAL_UNPLACEABLE_GRACE").default("60s"))
    .addOption(new Option("--webhook-retries <durations>", "comma-separated delays between webhook delivery attempts").env("SHOAL_WEBHOOK_RETRIES").default("1s,5s,30s,2m,10m"))
    .addOption(new Option("--webhook-allow-private", "let webhooks reach loopback, private and link-local addresses (local development, tests)").env("SHOAL_WEBHOOK_ALLOW_PRIVATE"))
    .addOption(new Option("--webhook-concurrency <n>", "webhook deliveries in flight at once").env("SHOAL_WEBHOOK_CONCURRENCY").default(String(d.webhookConcurrency)))
    .addOption(new Option("--retention <duration>", "how long finished batches, results, artifacts and idempotency keys are kept").env("SHOAL_RETENTION").default("7d"))
    .addOption(new Option("--batches-max-bytes <size>", "byte limit of the batch records bucket, the batch index and the idempotency keys, each (0 = only the server's max_file_store)").env("SHOAL_BATCHES_MAX_BYTES").default("0"))
    .addOption(new Option("--results-max-bytes <size>", "byte limit of the results stream (0 = only the server's max_file_store)").env("SHOAL_RESULTS_MAX_BYTES").default("0"))
    .addOption(new Option("--artifacts-max-bytes <size>", "byte limit of the artifact object store (0 = only the server's max_file_store)").env("SHOAL_ARTIFACTS_MAX_BYTES").default("0"))
    .addOption(new Option("--terminal-retry-max <duration>", "longest wait between attempts of a failed terminal batch write").env("SHOAL_TERMINAL_RETRY_MAX").default("30s"))
    .addOption(new Option("--content-policy <file>", "JSON rules screening items' text before they are queued (docs/content-policy.md); reloaded on SIGHUP").env("SHOAL_CONTENT_POLICY"))
    .addOption(new Option("--forget-durations", "delete the learned item durations at start (they are learned again from outcomes)").env("SHOAL_FORGET_DURATIONS"))
    .addOption(new Option("--lease-ttl <duration>", "standby coordinators: the active one's lease ends this long after its last renewal").env("SHOAL_LEASE_TTL").default("5s"))
    .addOption(new Option("--advertise-addr <host:port>", "the gRPC address standbys name when they send clients to this coordinator (default host:port)").env("SHOAL_ADVERTISE_ADDR"));
}

/** `shoal gateway`'s flags; `shoal up` takes --http-port only and passes the rest by env. */
export function gatewayFlags(cmd: Command): Command {
  const d = GATEWAY_DEFAULTS;
  return cmd
    .addOption(new Option("--addr <host:port>", "the coordinator's gRPC address").env("SHOAL_ADDR").default(d.addr))
    .addOption(new Option("--http-host <host>", "HTTP listen address").env("SHOAL_HTTP_HOST").default(d.httpHost))
    .addOption(new Option("--ca <file>", "PEM CA of the coordinator's TLS certificate; turns TLS on toward it").env("SHOAL_CA"))
    .addOption(new Option("--cert <file>", "PEM client certificate for a coordinator that requires one (mTLS)").env("SHOAL_CERT"))
    .addOption(new Option("--key <file>", "PEM private key of --cert").env("SHOAL_KEY"))
    .addOption(new Option("--http-port <port>", "HTTP port (0 = any free port)").env("SHOAL_HTTP_PORT").default(String(d.httpPort)))
    .addOption(new Option("--public-url <url>", "base of the image URLs handed out (default: from each request's Host header)").env("SHOAL_PUBLIC_URL"))
    .addOption(new Option("--url-signing-key <key>", "HMAC key of image URLs, at least 32 characters; the same on every gateway (default: random per process)").env("SHOAL_URL_SIGNING_KEY"))
    .addOption(new Option("--url-ttl <duration>", "how long an image URL stays valid").env("SHOAL_URL_TTL").default(d.urlTtl))
    .addOption(new Option("--model <name>", "model of a request that names none").env("SHOAL_GATEWAY_MODEL").default(d.defaultModel))
    .addOption(new Option("--wait-timeout <duration>", "how long POST /v1/batch waits for the results before answering 504 with the batch id").env("SHOAL_WAIT_TIMEOUT").default(d.waitTimeout))
    .addOption(new Option("--max-requests <n>", "most requests per batch checked by the gateway (0 = the coordinator's --max-items decides)").env("SHOAL_MAX_REQUESTS").default(String(d.maxRequests)))
    .addOption(new Option("--max-body <size>", "largest request body (413 beyond)").env("SHOAL_MAX_BODY").default(d.maxBody))
    .addOption(new Option("--max-clients <n>", "gRPC clients kept, one per distinct API key (least recently used closed first)").env("SHOAL_MAX_CLIENTS").default(String(d.maxClients)))
    .addOption(new Option("--rpc-timeout <duration>", "deadline of the gateway's unary calls to the coordinator").env("SHOAL_RPC_TIMEOUT").default(d.rpcTimeout))
    .addOption(new Option("--otlp-endpoint <url>", "export OpenTelemetry traces over OTLP/HTTP to this collector (spans go to <url>/v1/traces; default: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT, else off)"))
    .addOption(new Option("--log-level <level>", "log level").env("SHOAL_LOG_LEVEL").choices(LOG_LEVELS).default("info"))
    .addOption(new Option("--log-format <format>", "json, or pretty for people (default: pretty on a terminal)").env("SHOAL_LOG_FORMAT").choices(["json", "pretty"]));
}

export function workerFlags(cmd: Command, forUp = false): Command {
  if (!forUp) {
    cmd
      .addOption(new Option("--id <id>", "worker id (stable across restarts of the same GPU)").env("SHOAL_WORKER_ID"))
      .addOption(new Option("--gpu <which>", "auto, none or a GPU index").env("SHOAL_GPU").default("auto"))
      .addOption(new Option("--metrics-port <port>", "Prometheus /metrics port (0 = off)").env("SHOAL_WORKER_METRICS_PORT").default("9465"))
      .addOption(new Option("--event-loop-resolution <duration>", "how often the event-loop delay metrics (nodejs_eventloop_lag_*) sample; finer costs idle CPU").env("SHOAL_EVENT_LOOP_RESOLUTION").default("250ms"))
      .addOption(new Option("--metrics-host <host>", "/metrics listen address").env("SHOAL_WORKER_METRICS_HOST").default("127.0.0.1"));
  }
  return cmd
    .addOption(new Option("--vram <size>", "VRAM budget when no GPU is measured, e.g. 8GiB").env("SHOAL_VRAM"))
    .addOption(new Option("--model-dir <dir>", "directory of extra models (<name>/manifest.json + .onnx)").env("SHOAL_MODEL_DIR"))
    .addOption(new Option("--threads <n>", "inference threads per worker").env("SHOAL_THREADS").default("1"))
    .addOption(new Option("--max-in-flight <n>", "items a worker holds at once (default 2 × threads; threads × max_batch × 2, at most 256, where a served model batches)").env("SHOAL_MAX_IN_FLIGHT"))
    .addOption(new Option("--heartbeat-interval <duration>", "how often workers report").env("SHOAL_HEARTBEAT_INTERVAL").default("1s"))
    .addOption(new Option("--drain-grace <duration>", "on SIGTERM/drain, how long in-flight items may finish").env("SHOAL_DRAIN_GRACE").default("30s"))
    .addOption(new Option("--execution-provider <ep>", "onnxruntime execution provider").env("SHOAL_EXECUTION_PROVIDER").choices(["cpu", "cuda"]).default("cpu"))
    .addOption(new Option("--simulate", "SIMULATION: run the sim-* models (sleep instead of compute), for load tests").env("SHOAL_SIMULATE"))
    .addOption(new Option("--sim-speed <factor>", "SIMULATION: items take work_ms / factor (a GPU this many times as fast)").env("SHOAL_SIM_SPEED").default("1"))
    .addOption(new Option("--sim-load-bandwidth <size>", "SIMULATION: bytes per second model weights load at, paid the first time a model runs (0 = instantly)").env("SHOAL_SIM_LOAD_BANDWIDTH").default("0"))
    .addOption(new Option("--sim-keep-weights", "SIMULATION: loaded models keep their weights in the VRAM budget after their last item, until the coordinator evicts them").env("SHOAL_SIM_KEEP_WEIGHTS"))
    .addOption(new Option("--nvidia-smi <path>", "nvidia-smi binary").env("SHOAL_NVIDIA_SMI").default("nvidia-smi"));
}

type Raw = Record<string, string | boolean | undefined>;

export function loggerFrom(raw: Raw, component: string, base?: Record<string, unknown>): Logger {
  return createLogger({
    level: raw.logLevel as never,
    format: (raw.logFormat as LogFormat | undefined) ?? defaultLogFormat(),
    component,
    base,
  });
}

function port(option: string, v: unknown): number {
  return parseIntOption(option, String(v), 0, 65535);
}

/** A byte limit: "0" means none. */
function optionalBytes(option: string, v: unknown): number {
  return String(v).trim() === "0" ? 0 : parseBytes(option, String(v));
}

function hedgeAfterFactor(v: unknown): number {
  const n = Number(v);
  if (String(v).trim() === "" || !Number.isFinite(n) || n < 1 || n > 100) throw new ConfigError("--hedge-after-factor", `"${String(v)}" must be a number from 1 to 100`);
  return n;
}

function simSpeed(v: unknown): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0 || n > 1000) throw new ConfigError("--sim-speed", `"${String(v)}" must be a number above 0 (at most 1000)`);
  return n;
}

/** Shorter than a second, JetStream's de-duplication and expiry stop making sense. */
function retention(v: unknown): number {
  const ms = parseDuration("--retention", String(v));
  if (ms < 1000) throw new ConfigError("--retention", `"${String(v)}" is shorter than the minimum of 1s`);
  return ms;
}

/** A boolean flag that commander fills from its env var as a string. */
function flagOn(v: unknown): boolean {
  return v === true || v === "true" || v === "1" || v === "yes";
}

/** JetStream keeps 1 to 5 copies of a stream. */
export function replicas(v: unknown): number {
  return parseIntOption("--replicas", String(v ?? "1"), 1, 5);
}

/** `--event-loop-resolution`: Node's event-loop monitor takes whole milliseconds (parseDuration rounds), at least 1. */
function eventLoopResolution(v: unknown): number {
  const ms = parseDuration("--event-loop-resolution", String(v ?? "250ms"));
  if (!Number.isInteger(ms) || ms < 1 || ms > 60_000) throw new ConfigError("--event-loop-resolution", `"${String(v)}" must be between 1ms and 60s`);
  return ms;
}

/** Below 500 ms a renewal cannot keep up with a busy NATS; above a minute nobody wants the failover. */
function leaseTtl(v: unknown): number {
  const ms = parseDuration("--lease-ttl", String(v ?? "5s"));
  if (ms < 500 || ms > 60_000) throw new ConfigError("--lease-ttl", `"${String(v)}" must be between 500ms and 60s`);
  return ms;
}

function serverTlsFrom(raw: Raw): ServerTls | undefined {
  const cert = typeof raw.tlsCert === "string" && raw.tlsCert !== "" ? raw.tlsCert : undefined;
  const key = typeof raw.tlsKey === "string" && raw.tlsKey !== "" ? raw.tlsKey : undefined;
  const ca = typeof raw.tlsClientCa === "string" && raw.tlsClientCa !== "" ? raw.tlsClientCa : undefined;
  if (!cert && !key) {
    if (ca) throw new ConfigError("--tls-client-ca", "needs --tls-cert and --tls-key (mTLS is TLS with client certificates)");
    return undefined;
  }
  if (!cert) throw new ConfigError("--tls-cert", "--tls-key was given without its certificate");
  if (!key) throw new ConfigError("--tls-key", "--tls-cert was given without its private key");
  return { cert: readPem("--tls-cert", cert), key: readPem("--tls-key", key), clientCa: ca ? readPem("--tls-client-ca", ca) : undefined };
}

/** The key table from --api-keys and --api-keys-file (also what SIGHUP reloads). */
export function apiKeysFrom(sources: { list?: string; file?: string }): ApiKeyTable {
  return ApiKeyTable.from({ list: sources.list, file: sources.file ? readKeysFile(sources.file) : undefined });
}

export function coordinatorOptionsFrom(raw: Raw): CoordinatorOptions {
  const apiKeySources = {
    list: typeof raw.apiKeys === "string" ? raw.apiKeys : undefined,
    file: typeof raw.apiKeysFile === "string" && raw.apiKeysFile !== "" ? raw.apiKeysFile : undefined,
  };
  const apiKeys = apiKeysFrom(apiKeySources);
  return {
    natsUrl: String(raw.nats),
    natsSecurity: natsSecurityFrom(raw),
    prefix: String(raw.prefix),
    grpcHost: String(raw.grpcHost),
    grpcPort: port("--grpc-port", raw.grpcPort),
    tls: serverTlsFrom(raw),
    metricsHost: String(raw.metricsHost ?? COORDINATOR_DEFAULTS.metricsHost),
    metricsPort: port("--metrics-port", raw.metricsPort),
    eventLoopResolutionMs: eventLoopResolution(raw.eventLoopResolution),
    maxItems: parseIntOption("--max-items", String(raw.maxItems), 1, 100_000),
    maxAttempts: parseIntOption("--max-attempts", String(raw.maxAttempts), 1, 100),
    heartbeatTimeoutMs: parseDuration("--heartbeat-timeout", String(raw.heartbeatTimeout)),
    itemTimeoutMs: parseDuration("--item-timeout", String(raw.itemTimeout)),
    policy: raw.placement as CoordinatorOptions["policy"],
    apiKeys,
    apiKeySources,
    assignTimeoutMs: COORDINATOR_DEFAULTS.assignTimeoutMs,
    maxQueuedItems: parseIntOption("--max-queued-items", String(raw.maxQueuedItems), 1, 100_000_000),
    unplaceableGraceMs: parseDuration("--unplaceable-grace", String(raw.unplaceableGrace)),
    webhookRetryDelaysMs: String(raw.webhookRetries)
      .split(",")
      .filter((d) => d.trim() !== "")
      .map((d) => parseDuration("--webhook-retries", d)),
    webhookAllowPrivate: flagOn(raw.webhookAllowPrivate),
    webhookConcurrency: parseIntOption("--webhook-concurrency", String(raw.webhookConcurrency ?? COORDINATOR_DEFAULTS.webhookConcurrency), 1, 1000),
    storage: {
      retentionMs: retention(raw.retention ?? "7d"),
      batchesMaxBytes: optionalBytes("--batches-max-bytes", raw.batchesMaxBytes ?? "0"),
      resultsMaxBytes: optionalBytes("--results-max-bytes", raw.resultsMaxBytes ?? "0"),
      artifactsMaxBytes: optionalBytes("--artifacts-max-bytes", raw.artifactsMaxBytes ?? "0"),
    },
    scheduler: raw.scheduler === "greedy" ? "greedy" : "affinity",
    longestFirst: raw.longestFirst !== "off",
    hedging: raw.hedging !== "off",
    hedgeAfterFactor: hedgeAfterFactor(raw.hedgeAfterFactor ?? "2"),
    hedgeMinOverrunMs: parseDuration("--hedge-min-overrun", String(raw.hedgeMinOverrun ?? "1s")),
    defrag: raw.defrag !== "off",
    earliestFinish: raw.earliestFinish !== "off",
    packing: raw.packing !== "off",
    loadBytesPerS: optionalBytes("--load-bandwidth", raw.loadBandwidth ?? "0"),
    terminalRetryInitialMs: COORDINATOR_DEFAULTS.terminalRetryInitialMs,
    terminalRetryMaxMs: Math.max(COORDINATOR_DEFAULTS.terminalRetryInitialMs, parseDuration("--terminal-retry-max", String(raw.terminalRetryMax ?? "30s"))),
    contentPolicyFile: typeof raw.contentPolicy === "string" && raw.contentPolicy.trim() !== "" ? raw.contentPolicy : undefined,
    forgetDurations: raw.forgetDurations === true,
    replicas: replicas(raw.replicas),
    leaseTtlMs: leaseTtl(raw.leaseTtl),
    ...(typeof raw.advertiseAddr === "string" && raw.advertiseAddr.trim() !== "" ? { advertiseAddr: raw.advertiseAddr.trim() } : {}),
  };
}

export function workerOptionsFrom(raw: Raw): WorkerOptions {
  const threads = parseIntOption("--threads", String(raw.threads), 1, 256);
  return checkWorkerOptions({
    natsUrl: String(raw.nats),
    natsSecurity: natsSecurityFrom(raw),
    id: typeof raw.id === "string" ? raw.id : defaultWorkerId(),
    prefix: String(raw.prefix),
    gpu: parseGpuSelection(String(raw.gpu ?? "auto")),
    vramBytes: typeof raw.vram === "string" ? parseBytes("--vram", raw.vram) : undefined,
    modelDir: typeof raw.modelDir === "string" ? raw.modelDir : undefined,
    threads,
    maxInFlight: raw.maxInFlight !== undefined ? parseIntOption("--max-in-flight", String(raw.maxInFlight), 1, 100_000) : threads * 2,
    // Replaced once the worker knows its models (worker/options.ts defaultMaxInFlight).
    maxInFlightAuto: raw.maxInFlight === undefined,
    heartbeatIntervalMs: parseDuration("--heartbeat-interval", String(raw.heartbeatInterval)),
    itemTimeoutMs: 600_000,
    drainGraceMs: parseDuration("--drain-grace", String(raw.drainGrace)),
    metricsPort: port("--metrics-port", raw.metricsPort ?? 9465),
    metricsHost: String(raw.metricsHost ?? "127.0.0.1"),
    eventLoopResolutionMs: eventLoopResolution(raw.eventLoopResolution),
    executionProviders: [String(raw.executionProvider ?? "cpu")],
    simulate: raw.simulate === true || raw.simulate === "true" || raw.simulate === "1",
    simSpeed: simSpeed(raw.simSpeed ?? "1"),
    simLoadBytesPerS: optionalBytes("--sim-load-bandwidth", raw.simLoadBandwidth ?? "0"),
    simKeepWeights: flagOn(raw.simKeepWeights),
    nvidiaSmi: String(raw.nvidiaSmi ?? "nvidia-smi"),
    replicas: replicas(raw.replicas),
  });
}

/**
 * Runs a component until SIGINT/SIGTERM, then stops it once (a second signal forces exit).
 * Configuration errors exit 2 with a one-line message naming the option.
 */
export async function runUntilSignal(log: Logger | undefined, start: () => Promise<{ stop: () => Promise<void>; done?: Promise<void> }>): Promise<void> {
  let stopping = false;
  let handle: { stop: () => Promise<void>; done?: Promise<void> } | undefined;
  const onSignal = (sig: NodeJS.Signals) => {
    if (stopping) {
      log?.warn({ signal: sig }, "second signal: exiting now");
      process.exit(130);
    }
    stopping = true;
    log?.info({ signal: sig }, "stopping");
    void (handle?.stop() ?? Promise.resolve()).then(() => process.exit(0));
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  watchParent(log);
  try {
    handle = await start();
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`shoal: ${err.message}\n`);
      process.exit(2);
    }
    log?.fatal({ err: errorMessage(err) }, "failed to start");
    process.stderr.write(`shoal: failed to start: ${errorMessage(err)}\n`);
    process.exit(1);
  }
  if (stopping) await handle.stop();
  if (handle.done) {
    await handle.done;
    process.exit(0);
  }
}

/**
 * `shoal up` sets SHOAL_PARENT_PID for its children: if `up` dies without cleaning up
 * (kill -9), its coordinator and workers notice and exit instead of living on as orphans.
 * With SHOAL_PARENT_PIPE=stdin (up ≥ this version) stdin is a pipe up holds open and never
 * writes: its EOF is the news, with no timer. A 1 s poll of the pid woke every idle child once a
 * second (docs/performance.md, "The fleet's idle cost"); it stays for a parent without the pipe.
 */
function watchParent(log: Logger | undefined): void {
  const parent = Number(process.env.SHOAL_PARENT_PID);
  if (!Number.isInteger(parent) || parent <= 1) return;
  let gone = false;
  const exit = (via: string) => {
    if (gone) return;
    gone = true;
    log?.warn({ parent, via }, "parent process is gone; exiting");
    process.kill(process.pid, "SIGTERM");
  };
  const stdin = process.stdin as NodeJS.ReadStream & { unref?: () => void };
  if (process.env.SHOAL_PARENT_PIPE === "stdin" && !stdin.isTTY) {
    stdin.on("data", () => undefined); // up writes nothing; anything that comes is dropped
    stdin.once("end", () => exit("pipe closed"));
    stdin.once("error", () => exit("pipe error"));
    stdin.resume();
    // The pipe alone does not keep the process running.
    stdin.unref?.();
    return;
  }
  const timer = setInterval(() => {
    try {
      process.kill(parent, 0);
    } catch {
      exit("pid poll");
    }
  }, 1000);
  timer.unref();
}

/**
 * Starts exporting this process's traces when --otlp-endpoint or the OTEL_EXPORTER_OTLP_* env
 * names a collector (shared/tracing.ts); otherwise nothing is started. A bad URL exits 2.
 */
export function tracingFrom(raw: Raw, service: ServiceName, log: Logger): TracingHandle {
  const url = parseOrExit(() => otlpTracesUrl(typeof raw.otlpEndpoint === "string" ? raw.otlpEndpoint : undefined));
  const handle = startTracing(service, url);
  if (handle.url) log.info({ otlp: handle.url, service }, "exporting traces");
  return handle;
}

/** Parses options; a ConfigError ends the process with a one-line message and exit code 2. */
export function parseOrExit<T>(parse: () => T): T {
  try {
    return parse();
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`shoal: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
}
