import { installCrashGuard } from "../shared/crash-guard.js";
import type { Logger } from "../shared/logger.js";
import { startMetricsServer } from "../shared/metrics-server.js";
import type { Coordinator } from "./coordinator.js";
import { Auth } from "./grpc/rpc-edge.js";
import { startGrpcServer } from "./grpc/server.js";
import { warnIfExposed } from "../shared/exposure.js";
import { errorMessage } from "../shared/errors.js";
import type { ApiKeyTable } from "./api-keys.js";
import { CoordinatorMetrics } from "./metrics.js";
import type { CoordinatorOptions } from "./options.js";
import { CoordinatorTerms } from "./standby.js";

export interface RunningCoordinator {
  /** The Coordinator of the current term (standby.ts); between terms one that refuses everything. */
  coordinator: Coordinator;
  /** True while this process is the active coordinator (it holds the lease). */
  isActive(): boolean;
  grpcPort: number;
  metricsPort: number | undefined;
  /**
   * Swaps in keys read again from their sources (SIGHUP). A bad file keeps the old keys and
   * logs why; returns whether the new keys are in use.
   */
  reloadApiKeys(read: () => ApiKeyTable): boolean;
  stop(): Promise<void>;
  /** Rejects when the process cannot go on (a configuration error found when a term starts). */
  fatal: Promise<never>;
}

/**
 * The coordinator process: the election among standby coordinators and, while active, the
 * coordinator's state; the gRPC API and /metrics all along. Stopped in reverse order.
 */
export async function startCoordinatorProcess(opts: CoordinatorOptions, log: Logger): Promise<RunningCoordinator> {
  const metrics = new CoordinatorMetrics(opts.eventLoopResolutionMs);
  const guard = installCrashGuard(log, (kind) => metrics.unexpectedError(kind));
  let rejectFatal: (err: unknown) => void = () => undefined;
  const fatal = new Promise<never>((_, reject) => (rejectFatal = reject));
  fatal.catch(() => undefined);
  let firstTerm = true;
  const terms = new CoordinatorTerms(opts, log, metrics, (err) => {
    // At the first start a configuration error ends startCoordinatorProcess itself.
    if (firstTerm) startError = err;
    else rejectFatal(err);
  });
  let startError: unknown;
  await terms.start();
  firstTerm = false;
  if (startError !== undefined) {
    await terms.close();
    guard.uninstall();
    throw startError;
  }
  const auth = new Auth(opts.apiKeys);
  const grpc = await startGrpcServer(terms.facade, opts.grpcHost, opts.grpcPort, auth, log, metrics, opts.tls, { gate: () => terms.gate(), serving: () => terms.serving(), self: () => terms.self.addr });
  terms.setPort(grpc.port);
  const http = opts.metricsPort > 0 ? await startMetricsServer(metrics.registry, opts.metricsPort, opts.metricsHost) : undefined;
  warnIfExposed(log, "the gRPC API", opts.grpcHost, [
    { condition: opts.apiKeys.size === 0, why: "with no API keys: anyone who can reach it may submit, read every batch and drain workers (--api-keys-file)" },
    { condition: !opts.tls, why: "without TLS: API keys, prompts and results cross the network in the clear (--tls-cert, --tls-key)" },
  ]);
  if (http) warnIfExposed(log, "/metrics", opts.metricsHost, [{ condition: true, why: "without authentication: anyone who can reach it reads the fleet's metrics" }]);
  log.info(
    { grpc: `${opts.grpcHost}:${grpc.port}`, tls: opts.tls ? (opts.tls.clientCa ? "mtls" : "tls") : "off", apiKeys: opts.apiKeys.size, metrics: http ? `${opts.metricsHost}:${http.port}/metrics` : "off", active: terms.isActive() },
    "coordinator serving",
  );
  // SIGHUP reloads the content policy file of the current term's coordinator; a bad file keeps
  // the policy in force (logged). Handled even without a file, so a stray SIGHUP never ends it.
  const onHangup = () => void terms.facade.contentPolicy.reload();
  process.on("SIGHUP", onHangup);
  let stopping: Promise<void> | undefined;
  return {
    coordinator: terms.facade,
    isActive: () => terms.isActive(),
    grpcPort: grpc.port,
    metricsPort: http?.port,
    reloadApiKeys: (read) => {
      try {
        const table = read();
        auth.replace(table);
        // Tenant labels of the metrics: the current term's coordinator now, later terms from opts.
        opts.apiKeys = table;
        terms.facade.tenantLabels = new Set(table.tenants);
        log.info({ apiKeys: table.size, tenants: table.tenants.length }, "API keys reloaded");
        return true;
      } catch (err) {
        log.error({ err: errorMessage(err) }, "API keys not reloaded: keeping the previous keys");
        return false;
      }
    },
    fatal,
    stop: () =>
      (stopping ??= (async () => {
        process.off("SIGHUP", onHangup);
        await grpc.close(5000);
        await terms.close();
        await http?.close();
        guard.uninstall();
      })()),
  };
}
