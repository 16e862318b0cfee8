import { installCrashGuard } from "../shared/crash-guard.js";
import type { Logger } from "../shared/logger.js";
import { startMetricsServer } from "../shared/metrics-server.js";
import { Coordinator } from "./coordinator.js";
import { Auth } from "./grpc/rpc-edge.js";
import { startGrpcServer } from "./grpc/server.js";
import { warnIfExposed } from "../shared/exposure.js";
import { errorMessage } from "../shared/errors.js";
import type { ApiKeyTable } from "./api-keys.js";
import { CoordinatorMetrics } from "./metrics.js";
import type { CoordinatorOptions } from "./options.js";

export interface RunningCoordinator {
  coordinator: Coordinator;
  grpcPort: number;
  metricsPort: number | undefined;
  /**
   * Swaps in keys read again from their sources (SIGHUP). A bad file keeps the old keys and
   * logs why; returns whether the new keys are in use.
   */
  reloadApiKeys(read: () => ApiKeyTable): boolean;
  stop(): Promise<void>;
}

/** The coordinator process: state, gRPC API and /metrics, stopped in reverse order. */
export async function startCoordinatorProcess(opts: CoordinatorOptions, log: Logger): Promise<RunningCoordinator> {
  const metrics = new CoordinatorMetrics();
  const guard = installCrashGuard(log, (kind) => metrics.unexpectedError(kind));
  const coordinator = new Coordinator(opts, log, metrics);
  await coordinator.start();
  const auth = new Auth(opts.apiKeys);
  const grpc = await startGrpcServer(coordinator, opts.grpcHost, opts.grpcPort, auth, log, metrics, opts.tls);
  const http = opts.metricsPort > 0 ? await startMetricsServer(metrics.registry, opts.metricsPort, opts.metricsHost) : undefined;
  warnIfExposed(log, "the gRPC API", opts.grpcHost, [
    { condition: opts.apiKeys.size === 0, why: "with no API keys: anyone who can reach it may submit, read every batch and drain workers (--api-keys-file)" },
    { condition: !opts.tls, why: "without TLS: API keys, prompts and results cross the network in the clear (--tls-cert, --tls-key)" },
  ]);
  if (http) warnIfExposed(log, "/metrics", opts.metricsHost, [{ condition: true, why: "without authentication: anyone who can reach it reads the fleet's metrics" }]);
  log.info(
    { grpc: `${opts.grpcHost}:${grpc.port}`, tls: opts.tls ? (opts.tls.clientCa ? "mtls" : "tls") : "off", apiKeys: opts.apiKeys.size, metrics: http ? `${opts.metricsHost}:${http.port}/metrics` : "off" },
    "coordinator serving",
  );
  // SIGHUP reloads the content policy file; a bad file keeps the policy in force (logged).
  // Handled even without a file, so a stray SIGHUP never ends the coordinator.
  const onHangup = () => void coordinator.contentPolicy.reload();
  process.on("SIGHUP", onHangup);
  let stopping: Promise<void> | undefined;
  return {
    coordinator,
    grpcPort: grpc.port,
    metricsPort: http?.port,
    reloadApiKeys: (read) => {
      try {
        const table = read();
        auth.replace(table);
        coordinator.tenantLabels = new Set(table.tenants);
        log.info({ apiKeys: table.size, tenants: table.tenants.length }, "API keys reloaded");
        return true;
      } catch (err) {
        log.error({ err: errorMessage(err) }, "API keys not reloaded: keeping the previous keys");
        return false;
      }
    },
    stop: () =>
      (stopping ??= (async () => {
        process.off("SIGHUP", onHangup);
        await grpc.close(5000);
        await coordinator.close();
        await http?.close();
        guard.uninstall();
      })()),
  };
}
