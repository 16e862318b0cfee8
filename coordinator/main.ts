import { installCrashGuard } from "../shared/crash-guard.js";
import type { Logger } from "../shared/logger.js";
import { startMetricsServer } from "../shared/metrics-server.js";
import type { Coordinator } from "./coordinator.js";
import { startGrpcServer } from "./grpc/server.js";
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
  stop(): Promise<void>;
  /** Rejects when the process cannot go on (a configuration error found when a term starts). */
  fatal: Promise<never>;
}

/**
 * The coordinator process: the election among standby coordinators and, while active, the
 * coordinator's state; the gRPC API and /metrics all along. Stopped in reverse order.
 */
export async function startCoordinatorProcess(opts: CoordinatorOptions, log: Logger): Promise<RunningCoordinator> {
  const metrics = new CoordinatorMetrics();
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
  const grpc = await startGrpcServer(terms.facade, opts.grpcHost, opts.grpcPort, opts.apiKeys, log, metrics, { gate: () => terms.gate(), serving: () => terms.serving() });
  terms.setPort(grpc.port);
  const http = opts.metricsPort > 0 ? await startMetricsServer(metrics.registry, opts.metricsPort) : undefined;
  log.info({ grpc: `${opts.grpcHost}:${grpc.port}`, metrics: http ? `:${http.port}/metrics` : "off", active: terms.isActive() }, "coordinator serving");
  let stopping: Promise<void> | undefined;
  return {
    coordinator: terms.facade,
    isActive: () => terms.isActive(),
    grpcPort: grpc.port,
    metricsPort: http?.port,
    fatal,
    stop: () =>
      (stopping ??= (async () => {
        await grpc.close(5000);
        await terms.close();
        await http?.close();
        guard.uninstall();
      })()),
  };
}
