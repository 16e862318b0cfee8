// The long-running commands: `shoal coordinator`, `shoal worker`, `shoal up`. Every flag has an
// env var (commander's .env()) and a default; the values are parsed and checked once here, and
// the components receive complete, typed options. Signals are handled here and nowhere else.

import { Command, Option } from "commander";
import { COORDINATOR_DEFAULTS, type CoordinatorOptions } from "../coordinator/options.js";
import { ConfigError, errorMessage } from "../shared/errors.js";
import { createLogger, defaultLogFormat, LOG_LEVELS, type LogFormat, type Logger } from "../shared/logger.js";
import { parseBytes, parseDuration, parseIntOption } from "../shared/units.js";
import { GATEWAY_DEFAULTS } from "../gateway/options.js";
import { checkWorkerOptions, defaultWorkerId, parseGpuSelection, type WorkerOptions } from "../worker/options.js";

export const DEFAULT_NATS_URL = "nats://127.0.0.1:4222";

export function commonOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option("--nats <url>", "NATS server URL(s), comma-separated").env("SHOAL_NATS_URL").default(DEFAULT_NATS_URL))
    .addOption(new Option("--prefix <name>", "subject/stream prefix, so fleets can share a NATS cluster").env("SHOAL_PREFIX").default("shoal"))
    .addOption(new Option("--replicas <n>", "copies of each JetStream stream, bucket and object store (1 on one nats-server, 3 on a cluster)").env("SHOAL_REPLICAS").default("1"))
    .addOption(new Option("--log-level <level>", "log level").env("SHOAL_LOG_LEVEL").choices(LOG_LEVELS).default("info"))
    .addOption(new Option("--log-format <format>", "json, or pretty for people (default: pretty on a terminal)").env("SHOAL_LOG_FORMAT").choices(["json", "pretty"]));
}

export function coordinatorFlags(cmd: Command): Command {
  const d = COORDINATOR_DEFAULTS;
  return cmd
    .addOption(new Option("--grpc-host <host>", "gRPC listen address").env("SHOAL_GRPC_HOST").default(d.grpcHost))
    .addOption(new Option("--grpc-port <port>", "gRPC port").env("SHOAL_GRPC_PORT").default(String(d.grpcPort)))
    .addOption(new Option("--metrics-port <port>", "Prometheus /metrics port (0 = off)").env("SHOAL_METRICS_PORT").default(String(d.metricsPort)))
    .addOption(new Option("--max-items <n>", "most items per batch").env("SHOAL_MAX_ITEMS").default(String(d.maxItems)))
    .addOption(new Option("--max-attempts <n>", "attempts per item before it fails").env("SHOAL_MAX_ATTEMPTS").default(String(d.maxAttempts)))
    .addOption(new Option("--heartbeat-timeout <duration>", "a worker silent this long is lost").env("SHOAL_HEARTBEAT_TIMEOUT").default("3s"))
    .addOption(new Option("--item-timeout <duration>", "an attempt running longer fails with TIMEOUT (retryable)").env("SHOAL_ITEM_TIMEOUT").default("10m"))
    .addOption(new Option("--placement <policy>", "best-fit packs GPUs, spread balances them").env("SHOAL_PLACEMENT").choices(["best-fit", "spread"]).default(d.policy))
    .addOption(new Option("--api-keys <list>", "tenant:key,... ; when set, clients must send a key").env("SHOAL_API_KEYS"))
    .addOption(new Option("--max-queued-items <n>", "waiting items beyond which SubmitBatch is refused (RESOURCE_EXHAUSTED)").env("SHOAL_MAX_QUEUED_ITEMS").default(String(d.maxQueuedItems)))
    .addOption(new Option("--unplaceable-grace <duration>", "items no registered worker could ever fit fail after this long").env("SHOAL_UNPLACEABLE_GRACE").default("60s"))
    .addOption(new Option("--webhook-retries <durations>", "comma-separated delays between webhook delivery attempts").env("SHOAL_WEBHOOK_RETRIES").default("1s,5s,30s,2m,10m"))
    .addOption(new Option("--retention <duration>", "how long finished batches, results, artifacts and idempotency keys are kept").env("SHOAL_RETENTION").default("7d"))
    .addOption(new Option("--batches-max-bytes <size>", "byte limit of the batch records bucket, the batch index and the idempotency keys, each (0 = only the server's max_file_store)").env("SHOAL_BATCHES_MAX_BYTES").default("0"))
    .addOption(new Option("--results-max-bytes <size>", "byte limit of the results stream (0 = only the server's max_file_store)").env("SHOAL_RESULTS_MAX_BYTES").default("0"))
    .addOption(new Option("--artifacts-max-bytes <size>", "byte limit of the artifact object store (0 = only the server's max_file_store)").env("SHOAL_ARTIFACTS_MAX_BYTES").default("0"))
    .addOption(new Option("--terminal-retry-max <duration>", "longest wait between attempts of a failed terminal batch write").env("SHOAL_TERMINAL_RETRY_MAX").default("30s"))
    .addOption(new Option("--lease-ttl <duration>", "standby coordinators: the active one's lease ends this long after its last renewal").env("SHOAL_LEASE_TTL").default("2s"))
    .addOption(new Option("--advertise-addr <host:port>", "the gRPC address standbys name when they send clients to this coordinator (default host:port)").env("SHOAL_ADVERTISE_ADDR"));
}

/** `shoal gateway`'s flags; `shoal up` takes --http-port only and passes the rest by env. */
export function gatewayFlags(cmd: Command): Command {
  const d = GATEWAY_DEFAULTS;
  return cmd
    .addOption(new Option("--addr <host:port>", "the coordinator's gRPC address").env("SHOAL_ADDR").default(d.addr))
    .addOption(new Option("--http-host <host>", "HTTP listen address").env("SHOAL_HTTP_HOST").default(d.httpHost))
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
    .addOption(new Option("--log-level <level>", "log level").env("SHOAL_LOG_LEVEL").choices(LOG_LEVELS).default("info"))
    .addOption(new Option("--log-format <format>", "json, or pretty for people (default: pretty on a terminal)").env("SHOAL_LOG_FORMAT").choices(["json", "pretty"]));
}

export function workerFlags(cmd: Command, forUp = false): Command {
  if (!forUp) {
    cmd
      .addOption(new Option("--id <id>", "worker id (stable across restarts of the same GPU)").env("SHOAL_WORKER_ID"))
      .addOption(new Option("--gpu <which>", "auto, none or a GPU index").env("SHOAL_GPU").default("auto"))
      .addOption(new Option("--metrics-port <port>", "Prometheus /metrics port (0 = off)").env("SHOAL_WORKER_METRICS_PORT").default("9465"));
  }
  return cmd
    .addOption(new Option("--vram <size>", "VRAM budget when no GPU is measured, e.g. 8GiB").env("SHOAL_VRAM"))
    .addOption(new Option("--model-dir <dir>", "directory of extra models (<name>/manifest.json + .onnx)").env("SHOAL_MODEL_DIR"))
    .addOption(new Option("--threads <n>", "inference threads per worker").env("SHOAL_THREADS").default("1"))
    .addOption(new Option("--max-in-flight <n>", "items a worker holds at once (default 2 × threads)").env("SHOAL_MAX_IN_FLIGHT"))
    .addOption(new Option("--heartbeat-interval <duration>", "how often workers report").env("SHOAL_HEARTBEAT_INTERVAL").default("1s"))
    .addOption(new Option("--drain-grace <duration>", "on SIGTERM/drain, how long in-flight items may finish").env("SHOAL_DRAIN_GRACE").default("30s"))
    .addOption(new Option("--execution-provider <ep>", "onnxruntime execution provider").env("SHOAL_EXECUTION_PROVIDER").choices(["cpu", "cuda"]).default("cpu"))
    .addOption(new Option("--simulate", "SIMULATION: run the sim-* models (sleep instead of compute), for load tests").env("SHOAL_SIMULATE"))
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

/** Shorter than a second, JetStream's de-duplication and expiry stop making sense. */
function retention(v: unknown): number {
  const ms = parseDuration("--retention", String(v));
  if (ms < 1000) throw new ConfigError("--retention", `"${String(v)}" is shorter than the minimum of 1s`);
  return ms;
}

/** JetStream keeps 1 to 5 copies of a stream. */
export function replicas(v: unknown): number {
  return parseIntOption("--replicas", String(v ?? "1"), 1, 5);
}

/** Below 500 ms a renewal cannot keep up with a busy NATS; above a minute nobody wants the failover. */
function leaseTtl(v: unknown): number {
  const ms = parseDuration("--lease-ttl", String(v ?? "2s"));
  if (ms < 500 || ms > 60_000) throw new ConfigError("--lease-ttl", `"${String(v)}" must be between 500ms and 60s`);
  return ms;
}

export function coordinatorOptionsFrom(raw: Raw): CoordinatorOptions {
  const apiKeys = new Map<string, string>();
  if (typeof raw.apiKeys === "string" && raw.apiKeys.trim() !== "") {
    for (const [i, pair] of raw.apiKeys.split(",").entries()) {
      const [tenant, key] = pair.includes(":") ? pair.split(/:(.*)/s, 2) : [`tenant${i}`, pair];
      if (!key || key.length < 8) throw new ConfigError("--api-keys", `entry ${i + 1} needs tenant:key with a key of at least 8 characters`);
      apiKeys.set(tenant!.trim(), key.trim());
    }
  }
  return {
    natsUrl: String(raw.nats),
    prefix: String(raw.prefix),
    grpcHost: String(raw.grpcHost),
    grpcPort: port("--grpc-port", raw.grpcPort),
    metricsPort: port("--metrics-port", raw.metricsPort),
    maxItems: parseIntOption("--max-items", String(raw.maxItems), 1, 100_000),
    maxAttempts: parseIntOption("--max-attempts", String(raw.maxAttempts), 1, 100),
    heartbeatTimeoutMs: parseDuration("--heartbeat-timeout", String(raw.heartbeatTimeout)),
    itemTimeoutMs: parseDuration("--item-timeout", String(raw.itemTimeout)),
    policy: raw.placement as CoordinatorOptions["policy"],
    apiKeys,
    assignTimeoutMs: COORDINATOR_DEFAULTS.assignTimeoutMs,
    maxQueuedItems: parseIntOption("--max-queued-items", String(raw.maxQueuedItems), 1, 100_000_000),
    unplaceableGraceMs: parseDuration("--unplaceable-grace", String(raw.unplaceableGrace)),
    webhookRetryDelaysMs: String(raw.webhookRetries)
      .split(",")
      .filter((d) => d.trim() !== "")
      .map((d) => parseDuration("--webhook-retries", d)),
    storage: {
      retentionMs: retention(raw.retention ?? "7d"),
      batchesMaxBytes: optionalBytes("--batches-max-bytes", raw.batchesMaxBytes ?? "0"),
      resultsMaxBytes: optionalBytes("--results-max-bytes", raw.resultsMaxBytes ?? "0"),
      artifactsMaxBytes: optionalBytes("--artifacts-max-bytes", raw.artifactsMaxBytes ?? "0"),
    },
    terminalRetryInitialMs: COORDINATOR_DEFAULTS.terminalRetryInitialMs,
    terminalRetryMaxMs: Math.max(COORDINATOR_DEFAULTS.terminalRetryInitialMs, parseDuration("--terminal-retry-max", String(raw.terminalRetryMax ?? "30s"))),
    replicas: replicas(raw.replicas),
    leaseTtlMs: leaseTtl(raw.leaseTtl),
    ...(typeof raw.advertiseAddr === "string" && raw.advertiseAddr.trim() !== "" ? { advertiseAddr: raw.advertiseAddr.trim() } : {}),
  };
}

export function workerOptionsFrom(raw: Raw): WorkerOptions {
  const threads = parseIntOption("--threads", String(raw.threads), 1, 256);
  return checkWorkerOptions({
    natsUrl: String(raw.nats),
    id: typeof raw.id === "string" ? raw.id : defaultWorkerId(),
    prefix: String(raw.prefix),
    gpu: parseGpuSelection(String(raw.gpu ?? "auto")),
    vramBytes: typeof raw.vram === "string" ? parseBytes("--vram", raw.vram) : undefined,
    modelDir: typeof raw.modelDir === "string" ? raw.modelDir : undefined,
    threads,
    maxInFlight: raw.maxInFlight !== undefined ? parseIntOption("--max-in-flight", String(raw.maxInFlight), 1, 100_000) : threads * 2,
    heartbeatIntervalMs: parseDuration("--heartbeat-interval", String(raw.heartbeatInterval)),
    itemTimeoutMs: 600_000,
    drainGraceMs: parseDuration("--drain-grace", String(raw.drainGrace)),
    metricsPort: port("--metrics-port", raw.metricsPort ?? 9465),
    executionProviders: [String(raw.executionProvider ?? "cpu")],
    simulate: raw.simulate === true || raw.simulate === "true" || raw.simulate === "1",
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
 */
function watchParent(log: Logger | undefined): void {
  const parent = Number(process.env.SHOAL_PARENT_PID);
  if (!Number.isInteger(parent) || parent <= 1) return;
  const timer = setInterval(() => {
    try {
      process.kill(parent, 0);
    } catch {
      log?.warn({ parent }, "parent process is gone; exiting");
      process.kill(process.pid, "SIGTERM");
    }
  }, 1000);
  timer.unref();
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
