#!/usr/bin/env node
// The `shoal` command: servers (up, coordinator, worker) and client commands (submit, get, ...).

import { Command, Option } from "commander";
import { startCoordinatorProcess } from "../coordinator/main.js";
import { startGatewayProcess } from "../gateway/main.js";
import { gatewayOptionsFrom } from "../gateway/options.js";
import { startWorkerProcess } from "../worker/main.js";
import { registerClientCommands } from "./client-commands.js";
import {
  apiKeysFrom,
  commonOptions,
  coordinatorFlags,
  coordinatorOptionsFrom,
  gatewayFlags,
  loggerFrom,
  parseOrExit,
  runUntilSignal,
  tracingFrom,
  workerFlags,
  workerOptionsFrom,
} from "./server-commands.js";
import { DEFAULT_FSYNC, DEFAULT_FSYNC_INTERVAL } from "./nats-config.js";
import { Fleet, upOptionsFrom } from "./up.js";
import { upBanner } from "./up-banner.js";
import { otlpTracesUrl } from "../shared/tracing.js";

// `shoal list | head` closes the pipe early: that is not an error.
for (const stream of [process.stdout, process.stderr]) {
  stream.on("error", (err: NodeJS.ErrnoException) => {
    if (err.code === "EPIPE") process.exit(0);
    throw err;
  });
}

const program = new Command("shoal")
  .description("Shoal: batches of ONNX inference placed on a GPU fleet by free VRAM, over NATS")
  .version("0.1.0")
  .showHelpAfterError();

commonOptions(coordinatorFlags(program.command("coordinator").description("run the coordinator (gRPC API, scheduler)"))).action(async (raw) => {
  const log = loggerFrom(raw, "coordinator");
  const tracing = tracingFrom(raw, "shoal-coordinator", log);
  await runUntilSignal(log, async () => {
    const opts = parseOrExit(() => coordinatorOptionsFrom(raw));
    const running = await startCoordinatorProcess(opts, log);
    // SIGHUP reads --api-keys and --api-keys-file again (keys rotate without a restart).
    process.on("SIGHUP", () => running.reloadApiKeys(() => apiKeysFrom(opts.apiKeySources)));
    // A standby that meets a configuration error only when it becomes active exits as at start.
    running.fatal.catch((err: unknown) => {
      process.stderr.write(`shoal: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(2);
    });
    return { stop: () => running.stop().then(() => tracing.stop()) };
  });
});

commonOptions(workerFlags(program.command("worker").description("run a worker for one GPU (or a CPU VRAM budget)"))).action(async (raw) => {
  const opts = parseOrExit(() => workerOptionsFrom(raw));
  const log = loggerFrom(raw, "worker", { workerId: opts.id });
  const tracing = tracingFrom(raw, "shoal-worker", log);
  await runUntilSignal(log, async () => {
    const running = await startWorkerProcess(opts, log);
    return { stop: () => running.stop().then(() => tracing.stop()), done: running.done.then(() => tracing.stop()) };
  });
});

gatewayFlags(program.command("gateway").description("run the HTTP gateway (the batch image API under /v1) in front of a coordinator")).action(async (raw) => {
  const log = loggerFrom(raw, "gateway");
  // `--addr` is also the client commands' global option, which commander fills first.
  const globals = program.opts() as { addr?: string; ca?: string; cert?: string; key?: string };
  const addr = globals.addr ?? raw.addr;
  const tlsFlags = { ca: globals.ca ?? raw.ca, cert: globals.cert ?? raw.cert, key: globals.key ?? raw.key };
  const tracing = tracingFrom(raw, "shoal-gateway", log);
  await runUntilSignal(log, async () => {
    const running = await startGatewayProcess(parseOrExit(() => gatewayOptionsFrom({ ...raw, addr, ...tlsFlags })), log);
    return { stop: () => running.stop().then(() => tracing.stop()) };
  });
});

const up = program
  .command("up")
  .description("start nats-server (JetStream), a coordinator and N workers on this machine; Ctrl-C stops them all")
  .addOption(new Option("--workers <n>", "workers to start").env("SHOAL_WORKERS").default("2"))
  .addOption(new Option("--grpc-host <host>", "coordinator gRPC listen address (beyond loopback, use --tls-cert and API keys)").env("SHOAL_GRPC_HOST").default("127.0.0.1"))
  .addOption(new Option("--grpc-port <port>", "coordinator gRPC port").env("SHOAL_GRPC_PORT").default("50051"))
  .addOption(new Option("--api-keys <list>", "tenant:key,... for the coordinator (passed by env, not on its command line)").env("SHOAL_API_KEYS"))
  .addOption(new Option("--api-keys-file <file>", "JSON keys file for the coordinator (see docs/security.md)").env("SHOAL_API_KEYS_FILE"))
  .addOption(new Option("--tls-cert <file>", "PEM certificate of the coordinator's gRPC TLS (set SHOAL_CA for up's own checks)").env("SHOAL_TLS_CERT"))
  .addOption(new Option("--tls-key <file>", "PEM private key of --tls-cert").env("SHOAL_TLS_KEY"))
  .addOption(new Option("--tls-client-ca <file>", "PEM CA of client certificates (mTLS; set SHOAL_CERT, SHOAL_KEY for up)").env("SHOAL_TLS_CLIENT_CA"))
  .addOption(new Option("--metrics-port <port>", "coordinator /metrics port; worker i gets port + i (0 = off)").env("SHOAL_METRICS_PORT").default("9464"))
  .addOption(new Option("--http-port <port>", "HTTP gateway port (the batch image API under /v1; 0 = no gateway)").env("SHOAL_HTTP_PORT").default("8080"))
  .addOption(new Option("--data-dir <dir>", "where the embedded nats-server keeps its JetStream store").env("SHOAL_DATA_DIR").default(".shoal"))
  .addOption(new Option("--nats <url>", "use this NATS server instead of starting one").env("SHOAL_NATS_URL"))
  .addOption(new Option("--nats-port <port>", "port of the embedded nats-server").env("SHOAL_NATS_PORT").default("4222"))
  .addOption(new Option("--nats-creds <file>", "with --nats: NATS credentials file for the coordinator and workers").env("SHOAL_NATS_CREDS"))
  .addOption(new Option("--nats-nkey <file>", "with --nats: file holding a NATS user nkey seed").env("SHOAL_NATS_NKEY"))
  .addOption(new Option("--nats-user <name>", "with --nats: NATS user name").env("SHOAL_NATS_USER"))
  .addOption(new Option("--nats-password <password>", "with --nats: NATS password (prefer the env var)").env("SHOAL_NATS_PASSWORD"))
  .addOption(new Option("--nats-token <token>", "with --nats: NATS token (prefer the env var)").env("SHOAL_NATS_TOKEN"))
  .addOption(new Option("--nats-tls-ca <file>", "with --nats: PEM CA bundle for the NATS server's certificate").env("SHOAL_NATS_TLS_CA"))
  .addOption(new Option("--nats-tls-cert <file>", "with --nats: PEM client certificate for NATS").env("SHOAL_NATS_TLS_CERT"))
  .addOption(new Option("--nats-tls-key <file>", "with --nats: PEM key of --nats-tls-cert").env("SHOAL_NATS_TLS_KEY"))
  .addOption(new Option("--nats-monitor-port <port>", "HTTP monitoring port (/varz, /jsz) of the embedded nats-server (0 = off)").env("SHOAL_NATS_MONITOR_PORT").default("0"))
  .addOption(new Option("--nats-cluster <n>", "start a local JetStream cluster of n nats-servers (3: client ports --nats-port and up, 3 replicas) instead of one").env("SHOAL_NATS_CLUSTER").default("1"))
  .addOption(new Option("--nats-cluster-port <port>", "first route port of the local cluster (node i listens on it + i)").env("SHOAL_NATS_CLUSTER_PORT").default("6222"))
  .addOption(new Option("--fsync <mode>", "always: JetStream fsyncs every write before acknowledging it; interval: every --fsync-interval").env("SHOAL_FSYNC").default(DEFAULT_FSYNC))
  .addOption(new Option("--fsync-interval <duration>", "with --fsync interval, the longest time between fsyncs (nats-server's sync_interval)").env("SHOAL_FSYNC_INTERVAL").default(DEFAULT_FSYNC_INTERVAL))
  .addOption(new Option("--max-items <n>", "most items per batch").env("SHOAL_MAX_ITEMS").default("50"))
  .addOption(new Option("--retention <duration>", "how long finished batches, results, artifacts and idempotency keys are kept").env("SHOAL_RETENTION").default("7d"))
  .addOption(new Option("--gpu <which>", "auto, none or an index, for every worker").env("SHOAL_GPU").default("auto"))
  .addOption(new Option("--content-policy <file>", "the coordinator's content policy rules (docs/content-policy.md)").env("SHOAL_CONTENT_POLICY"))
  .addOption(new Option("--otlp-endpoint <url>", "export the coordinator's, workers' and gateway's OpenTelemetry traces to this OTLP/HTTP collector (default: the OTEL_EXPORTER_OTLP_* env, else off)"))
  .addOption(new Option("--log-level <level>", "log level").env("SHOAL_LOG_LEVEL").default("info"))
  .addOption(new Option("--log-format <format>", "json or pretty").env("SHOAL_LOG_FORMAT").choices(["json", "pretty"]));
workerFlags(up, true).action(async (raw) => {
  const log = loggerFrom({ ...raw, logLevel: raw.logLevel }, "up");
  // The children read it as the most specific of the standard variables (shared/tracing.ts).
  const traces = parseOrExit(() => otlpTracesUrl(typeof raw.otlpEndpoint === "string" ? raw.otlpEndpoint : undefined));
  if (traces !== undefined) process.env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT = traces;
  const common = ["--log-level", String(raw.logLevel), ...(raw.logFormat ? ["--log-format", String(raw.logFormat)] : [])];
  const worker = [
    "--gpu", String(raw.gpu),
    "--vram", String(raw.vram ?? "8GiB"),
    "--threads", String(raw.threads),
    "--heartbeat-interval", String(raw.heartbeatInterval),
    "--drain-grace", String(raw.drainGrace),
    "--execution-provider", String(raw.executionProvider),
    ...(raw.maxInFlight ? ["--max-in-flight", String(raw.maxInFlight)] : []),
    ...(raw.modelDir ? ["--model-dir", String(raw.modelDir)] : []),
    ...(raw.simulate ? ["--simulate"] : []),
  ];
  const opts = parseOrExit(() => upOptionsFrom(raw, { worker, coordinator: ["--max-items", String(raw.maxItems), "--retention", String(raw.retention), ...(raw.contentPolicy ? ["--content-policy", String(raw.contentPolicy)] : [])], common }));
  await runUntilSignal(log, async () => {
    const fleet = new Fleet(opts, log);
    // `kill -HUP <up>` rotates the coordinator's API keys, as it does for a coordinator run alone.
    process.on("SIGHUP", () => fleet.reloadKeys());
    try {
      const { natsUrl, grpcAddr, grpcListen, httpUrl, workerMetricsPorts, durability } = await fleet.start();
      process.stdout.write(upBanner({ grpcListen, grpcAddr, httpUrl, natsUrl, dataDir: opts.dataDir, durability, metricsPort: opts.metricsPort, workerMetricsPorts }));
    } catch (err) {
      await fleet.stop(5000);
      throw err;
    }
    return { stop: () => fleet.stop() };
  });
});

registerClientCommands(program);

await program.parseAsync(process.argv);
