import { installCrashGuard } from "../shared/crash-guard.js";
import type { Logger } from "../shared/logger.js";
import { startMetricsServer } from "../shared/metrics-server.js";
import { Coordinator } from "./coordinator.js";
import { startGrpcServer } from "./grpc/server.js";
import { CoordinatorMetrics } from "./metrics.js";
import type { CoordinatorOptions } from "./options.js";

export interface RunningCoordinator {
  coordinator: Coordinator;
  grpcPort: number;
  metricsPort: number | undefined;
  stop(): Promise<void>;
}

/** The coordinator process: state, gRPC API and /metrics, stopped in reverse order. */
export async function startCoordinatorProcess(opts: CoordinatorOptions, log: Logger): Promise<RunningCoordinator> {
  const metrics = new CoordinatorMetrics();
  const guard = installCrashGuard(log, (kind) => metrics.unexpectedError(kind));
  const coordinator = new Coordinator(opts, log, metrics);
  await coordinator.start();
  const grpc = await startGrpcServer(coordinator, opts.grpcHost, opts.grpcPort, opts.apiKeys, log, metrics);
  const http = opts.metricsPort > 0 ? await startMetricsServer(metrics.registry, opts.metricsPort) : undefined;
  log.info({ grpc: `${opts.grpcHost}:${grpc.port}`, metrics: http ? `:${http.port}/metrics` : "off" }, "coordinator serving");
  // SIGHUP reloads the content policy file; a bad file keeps the policy in force (logged).
  // Handled even without a file, so a stray SIGHUP never ends the coordinator.
  const onHangup = () => void coordinator.contentPolicy.reload();
  process.on("SIGHUP", onHangup);
  let stopping: Promise<void> | undefined;
  return {
    coordinator,
    grpcPort: grpc.port,
    metricsPort: http?.port,
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
